package cluster_test

import (
	"bufio"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	pahov3 "github.com/eclipse/paho.mqtt.golang"

	"github.com/colonymq/colony/app"
	"github.com/colonymq/colony/app/apptest"
)

// rawConnect311 connects an MQTT 3.1.1 client id with clean session 0 and
// returns the connection and its CONNACK's session present flag.
func rawConnect311(addr, id string) (net.Conn, *bufio.Reader, bool, error) {
	c, err := net.DialTimeout("tcp", addr, apptest.Wait)
	if err != nil {
		return nil, nil, false, err
	}
	body := append([]byte{0, 4, 'M', 'Q', 'T', 'T', 4, 0, 0, 60, 0, byte(len(id))}, id...)
	if _, err := c.Write(append([]byte{0x10, byte(len(body))}, body...)); err != nil {
		c.Close()
		return nil, nil, false, err
	}
	r := bufio.NewReader(c)
	_ = c.SetReadDeadline(time.Now().Add(apptest.Wait))
	typ, b, err := apptest.ReadRawPacket(r, nil)
	if err != nil || typ != 0x20 || len(b) < 2 || b[1] != 0 {
		c.Close()
		return nil, nil, false, fmt.Errorf("connack %x %x: %v", typ, b, err)
	}
	return c, r, b[0]&1 == 1, nil
}

// awayWithQueued leaves a persistent session of client id on node a,
// subscribed to topic at QoS 1, away, with a QoS 1 message ("queued")
// published to it by pub.
func awayWithQueued(t *testing.T, a *app.App, pub pahov3.Client, id, topic string) {
	t.Helper()
	gone := leaving(t, a, id)
	time.Sleep(200 * time.Millisecond)
	before := a.Federation().Stats().Routes
	p, r, _, err := rawConnect311(a.Addr("mqtt"), id)
	if err != nil {
		t.Fatal(err)
	}
	sub := append([]byte{0, 1, 0, byte(len(topic))}, topic...)
	sub = append(sub, 1)
	apptest.RawExchange(t, p, r, apptest.RawStep{Send: append([]byte{0x82, byte(len(sub))}, sub...), Want: []byte{0x90, 3, 0, 1, 1}})
	routes(t, a, before+1)
	p.Close()
	apptest.Next(t, gone)
	publish(t, pub, topic, 1, false, "queued")
}

// drain reads what a raw connection gets for a moment: the payloads of
// the PUBLISH packets, and whether the connection is still open after.
func drain(c net.Conn, r *bufio.Reader) (payloads []string, open bool) {
	_ = c.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
	for {
		typ, b, err := apptest.ReadRawPacket(r, nil)
		if err != nil {
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				return payloads, true
			}
			return payloads, false
		}
		if typ&0xf0 == 0x30 {
			tl := int(b[0])<<8 | int(b[1])
			payloads = append(payloads, string(b[2+tl+2:]))
		}
	}
}

// TestTwoConnectionsToOneNodeAtOnce: node a holds a client's persistent
// session (away) with an acknowledged QoS 1 message queued; the client
// connects to node b twice at about the same time (a reconnect storm).
// The message must reach the client, and only one connection stays open.
// Both connections claimed the session from a side by side: a handed it
// to one, and when that answer came after the other had started afresh,
// b dropped it with the message (7 of 30 rounds in review); and the engine could
// accept both connections (8 of 30).
func TestTwoConnectionsToOneNodeAtOnce(t *testing.T) {
	c := newCluster(t)
	a, b := c.node("a"), c.node("b")
	pub, _ := client(t, a, "two-pub")
	bad, both := 0, 0
	for round := range 20 {
		id := fmt.Sprintf("two-%d", round)
		awayWithQueued(t, a, pub, id, "two/"+id)

		type res struct {
			c       net.Conn
			r       *bufio.Reader
			present bool
			err     error
			got     []string
			open    bool
		}
		var wg sync.WaitGroup
		rs := make([]res, 2)
		for i := range rs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				time.Sleep(time.Duration(i*(round%6)) * 200 * time.Microsecond)
				x := &rs[i]
				x.c, x.r, x.present, x.err = rawConnect311(b.Addr("mqtt"), id)
				if x.err == nil {
					x.got, x.open = drain(x.c, x.r)
				}
			}()
		}
		wg.Wait()
		n := 0
		for _, x := range rs {
			n += len(x.got)
		}
		t.Logf("round %d: conn1 present %v got %v open %v err %v; conn2 present %v got %v open %v err %v; a has %v, b has %v",
			round, rs[0].present, rs[0].got, rs[0].open, rs[0].err, rs[1].present, rs[1].got, rs[1].open, rs[1].err,
			a.Server().HasSession(id), b.Server().HasSession(id))
		if rs[0].open && rs[1].open {
			both++
			t.Logf("round %d: both connections to b are still open", round)
		}
		if n == 0 && !a.Server().HasSession(id) {
			bad++
			t.Logf("round %d: the queued message was lost", round)
		}
		for _, x := range rs {
			if x.c != nil {
				x.c.Close()
			}
		}
	}
	if bad > 0 || both > 0 {
		t.Fatalf("of 20 rounds, %d lost an acknowledged QoS 1 message, %d left both connections open", bad, both)
	}
}

// TestBackAfterCleanStartElsewhere: node a holds a client's persistent
// session (away, a QoS 1 message queued). The client connects to node b
// with clean start, which ends that session, gets its CONNACK, and then
// connects to node a resuming. It must not get the ended session back
// (session present, its queued message), and its newest connection, on a,
// must stay up. Node b told node a of the clean start without waiting for
// it, so a still had the session (5 of 10 rounds in review), or its late
// takeover closed the newest connection.
func TestBackAfterCleanStartElsewhere(t *testing.T) {
	c := newCluster(t)
	a, b := c.node("a"), c.node("b")
	pub, _ := client(t, a, "bc-pub")
	bad := 0
	for round := range 10 {
		id := fmt.Sprintf("bc-%d", round)
		awayWithQueued(t, a, pub, id, "bc/"+id)

		// Clean start on b (MQTT 3.1.1, clean session 1).
		cb, err := net.DialTimeout("tcp", b.Addr("mqtt"), apptest.Wait)
		if err != nil {
			t.Fatal(err)
		}
		body := append([]byte{0, 4, 'M', 'Q', 'T', 'T', 4, 2, 0, 60, 0, byte(len(id))}, id...)
		if _, err := cb.Write(append([]byte{0x10, byte(len(body))}, body...)); err != nil {
			t.Fatal(err)
		}
		rb := bufio.NewReader(cb)
		if typ, _, err := apptest.ReadRawPacket(rb, nil); err != nil || typ != 0x20 {
			t.Fatalf("connack on b: %x %v", typ, err)
		}
		cb.Close()
		// Back to a, resuming.
		ca, ra, present, err := rawConnect311(a.Addr("mqtt"), id)
		if err != nil {
			t.Fatal(err)
		}
		got, open := drain(ca, ra)
		if present || len(got) > 0 || !open {
			bad++
			t.Logf("round %d: on a present %v got %v open %v", round, present, got, open)
		}
		ca.Close()
	}
	if bad > 0 {
		t.Fatalf("%d of 10 rounds: the connection after a clean start got the ended session or was closed", bad)
	}
}
