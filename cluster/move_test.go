package cluster_test

import (
	"bufio"
	"fmt"
	"net"
	"slices"
	"testing"
	"time"

	"github.com/colonymq/colony/app"
	"github.com/colonymq/colony/app/apptest"
	"github.com/colonymq/colony/server"
)

// leaving returns a channel that receives each time client id's
// connection to node a ends (the engine reported its disconnect).
func leaving(t *testing.T, a *app.App, id string) <-chan struct{} {
	t.Helper()
	ch := make(chan struct{}, 4)
	cancel := a.Server().Watch(func(ev server.Event) {
		if ev.Kind == server.Disconnected && ev.ClientID == id {
			ch <- struct{}{}
		}
	})
	t.Cleanup(cancel)
	return ch
}

// rawSubscribe5 subscribes the raw MQTT 5 client to topic at QoS 1.
func rawSubscribe5(t *testing.T, c net.Conn, r *bufio.Reader, topic string) {
	t.Helper()
	sub := slices.Concat([]byte{0, 1, 0, 0, byte(len(topic))}, []byte(topic), []byte{1})
	apptest.RawExchange(t, c, r, apptest.RawStep{
		Send: append([]byte{0x82, byte(len(sub))}, sub...),
		Want: []byte{0x90, 4, 0, 1, 0, 1},
	})
}

// rawPublish5 reads an MQTT 5 QoS 1 PUBLISH (properties under 128 bytes)
// and checks its payload and DUP flag; it returns its packet id.
func rawPublish5(t *testing.T, r *bufio.Reader, payload string, dup bool) [2]byte {
	t.Helper()
	typ, body, err := apptest.ReadRawPacket(r, nil)
	if err != nil || typ&0xf0 != 0x30 {
		t.Fatalf("want PUBLISH %s, got %x %x: %v", payload, typ, body, err)
	}
	tl := int(body[0])<<8 | int(body[1])
	got, gotDup := string(body[5+tl+int(body[4+tl]):]), typ&0x08 != 0
	if got != payload || gotDup != dup {
		t.Fatalf("want PUBLISH %s (dup %v), got %q (dup %v)", payload, dup, got, gotDup)
	}
	return [2]byte{body[2+tl], body[3+tl]}
}

// rawQuiet checks that nothing more was sent to the raw client: a PINGREQ
// is answered by the next packet.
func rawQuiet(t *testing.T, c net.Conn, r *bufio.Reader) {
	t.Helper()
	apptest.RawExchange(t, c, r, apptest.RawStep{Send: []byte{0xc0, 0}, Want: []byte{0xd0, 0}})
}

// TestMovedSessionSendsUnsentWithoutDup: a persistent MQTT 5 session moves
// from node a to node b with messages sent on a and not acknowledged, and
// messages never sent: held back on a by the client's Receive Maximum, or
// queued while the client was away. On b the sent ones are resent with
// DUP [MQTT-3.3.1-1], the others go out for the first time, without DUP
// [MQTT-3.3.1-2 in 3.1.1; 3.3.1.1 in 5]: the move handed over the session's
// messages but not which of them had been sent, so b resent all as DUP (a
// node also marked messages queued for a client away as sent).
func TestMovedSessionSendsUnsentWithoutDup(t *testing.T) {
	c := newCluster(t)
	a, b := c.node("a"), c.node("b")
	pub, _ := client(t, a, "mv-pub")
	for _, tc := range []struct {
		name  string
		props []byte   // the subscriber's CONNECT properties
		live  int      // messages published while it is connected
		sent  []string // of those, the ones it gets (and does not acknowledge)
		away  int      // messages published while it is away
	}{
		// Receive Maximum 2: "0" and "1" are sent, "2" held; "3" queued while away.
		{"receive maximum", []byte{0x11, 0, 0, 0x0e, 0x10, 0x21, 0, 2}, 3, []string{"0", "1"}, 1},
		// No Receive Maximum: "0" is sent; "1" and "2" queued while away.
		{"away", []byte{0x11, 0, 0, 0x0e, 0x10}, 1, []string{"0"}, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id := fmt.Sprintf("mv-%d", len(tc.props))
			topic := "mv/" + id
			gone := leaving(t, a, id)
			conn, r := apptest.RawClientWith(t, a.Addr("mqtt"), id, 5, true, false, tc.props)
			rawSubscribe5(t, conn, r, topic)
			routes(t, a, 2) // client.mv-pub and client.<id>: b's takeover finds the session
			n := 0
			for range tc.live {
				publish(t, pub, topic, 1, false, fmt.Sprint(n))
				n++
			}
			for _, p := range tc.sent {
				rawPublish5(t, r, p, false)
			}
			rawQuiet(t, conn, r) // the rest is held
			conn.Close()
			apptest.Next(t, gone)
			for range tc.away {
				publish(t, pub, topic, 1, false, fmt.Sprint(n))
				n++
			}

			// Back on b with Receive Maximum 8: everything comes at once.
			props := slices.Concat(tc.props[:5], []byte{0x21, 0, 8})
			conn, r = apptest.RawClientWith(t, b.Addr("mqtt"), id, 5, false, true, props)
			var ids [][2]byte
			for k := range n {
				ids = append(ids, rawPublish5(t, r, fmt.Sprint(k), k < len(tc.sent)))
			}
			for _, pid := range ids {
				if _, err := conn.Write([]byte{0x40, 2, pid[0], pid[1]}); err != nil {
					t.Fatal(err)
				}
			}
			rawQuiet(t, conn, r)
			if a.Server().HasSession(id) {
				t.Fatal("node a still holds the session")
			}
			routes(t, a, 1)
		})
	}
}

// willConnect5 connects a raw MQTT 5 client id with a QoS 1 will on topic
// (payload) delayed by delay seconds, session expiry an hour, clean start
// or not; it checks the CONNACK's session present flag.
func willConnect5(t *testing.T, addr, id string, clean, present bool, delay uint32, topic, payload string) net.Conn {
	t.Helper()
	c, _ := apptest.RawWillClient(t, addr, id, clean, present, 3600, delay, topic, payload, 1)
	return c
}

// TestDelayedWillAcrossNodes: a client's connection to node a drops with
// a will delayed by its Will Delay Interval (MQTT 5), and the client
// connects to node b within the delay. Resuming its session there (clean
// start 0) cancels the will [MQTT-3.1.3-9]; starting afresh (clean start
// 1) ends the old session, so the will goes out at once [MQTT-3.1.2-8],
// once. Node a kept the pending will when the session moved: it published
// it when its delay passed although the session was resumed, and after a
// clean start only then (an hour later here) and only to a's own
// subscribers, as the session's client, released, was no longer found.
func TestDelayedWillAcrossNodes(t *testing.T) {
	c := newCluster(t)
	a, b := c.node("a"), c.node("b")
	pub, _ := client(t, a, "will-pub")
	// watchers subscribes a client on each node to the subtest's wills.
	watchers := func(t *testing.T, topic string) (onA, onB *inbox) {
		t.Helper()
		_, onA = client(t, a, "watch-a-"+topic[len("will/"):], topic)
		_, onB = client(t, b, "watch-b-"+topic[len("will/"):], topic)
		publish(t, pub, topic, 1, false, "ready") // b's subscription reaches a
		expect(t, onA, topic, "ready")
		expect(t, onB, topic, "ready")
		return onA, onB
	}

	t.Run("resumed", func(t *testing.T) {
		onA, onB := watchers(t, "will/r")
		gone := leaving(t, a, "wr")
		willConnect5(t, a.Addr("mqtt"), "wr", true, false, 1, "will/r", "bye").Close()
		apptest.Next(t, gone)
		routes(t, a, 3) // will-pub, watch-a-r, wr: b's takeover finds the session
		willConnect5(t, b.Addr("mqtt"), "wr", false, true, 3600, "will/r2", "later")
		if a.Server().HasSession("wr") {
			t.Fatal("node a still holds the session")
		}
		// The old will's delay (1 s) passes twice over; then a marker
		// shows what came before it.
		time.Sleep(2500 * time.Millisecond)
		publish(t, pub, "will/r", 1, false, "marker")
		expect(t, onA, "will/r", "marker")
		expect(t, onB, "will/r", "marker")
		routes(t, a, 2)
	})

	t.Run("clean start", func(t *testing.T) {
		onA, onB := watchers(t, "will/e")
		gone := leaving(t, a, "we")
		willConnect5(t, a.Addr("mqtt"), "we", true, false, 3600, "will/e", "bye").Close()
		apptest.Next(t, gone)
		routes(t, a, 3) // will-pub, watch-a-e (watch-a-r left with its subtest), we
		willConnect5(t, b.Addr("mqtt"), "we", true, false, 3600, "will/e2", "later")
		expect(t, onA, "will/e", "bye")
		expect(t, onB, "will/e", "bye")
		publish(t, pub, "will/e", 1, false, "marker") // after the will: only one came
		expect(t, onA, "will/e", "marker")
		expect(t, onB, "will/e", "marker")
	})
}
