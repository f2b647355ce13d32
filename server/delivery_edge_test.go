package server_test

import (
	"bufio"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/colonymq/colony/app"
	"github.com/colonymq/colony/app/apptest"
	"github.com/colonymq/colony/server"
)

// aliasReader reads MQTT 5 PUBLISH packets as a client that keeps the
// connection's topic aliases must: a PUBLISH with a topic name and an alias
// sets the alias up, one with an empty topic name must use an alias set up
// before on this connection [MQTT-3.3.2-12] (else: protocol error 0x82).
type aliasReader struct {
	t       *testing.T
	r       *bufio.Reader
	aliases map[uint16]string
}

func (a *aliasReader) next() pub5 {
	a.t.Helper()
	p := readPub5(a.t, a.r)
	switch {
	case p.topic != "" && p.alias > 0:
		a.aliases[p.alias] = p.topic
	case p.topic == "":
		topic, ok := a.aliases[p.alias]
		if !ok {
			a.t.Fatalf("PUBLISH %q with an empty topic and alias %d, which this connection never set up (protocol error)", p.payload, p.alias)
		}
		p.topic = topic
	}
	return p
}

// TestAliasOfADiscardedMessage: a QoS 1 message larger than the client's
// Maximum Packet Size is discarded (P28), but its topic had been given an
// outbound topic alias already. The next message on that topic went out by
// alias only, an alias the client was never told.
func TestAliasOfADiscardedMessage(t *testing.T) {
	a := apptest.Run(t, apptest.Config(t))
	// Topic Alias Maximum 10, Maximum Packet Size 64
	_, r := rawSubscriber(t, a.Addr("mqtt"), "ad-sub", []byte{0x22, 0, 10, 0x27, 0, 0, 0, 64}, "ad/t", 1)
	pub := apptest.V3(t, apptest.URL(a), "ad-pub")
	apptest.Done(t, pub.Publish("ad/t", 1, false, strings.Repeat("x", 200)))
	apptest.Done(t, pub.Publish("ad/t", 1, false, "small"))
	ar := &aliasReader{t: t, r: r, aliases: map[uint16]string{}}
	if p := ar.next(); p.payload != "small" || p.topic != "ad/t" {
		t.Fatalf("got %+v", p)
	}
}

// TestAliasOfAHeldMessage: with Receive Maximum 1, a QoS 1 message waits
// held (P26) behind an unacknowledged one, and its topic already got an
// alias. A QoS 0 message on that topic is not held: it went out first, by
// the alias only, which the client had never been told.
func TestAliasOfAHeldMessage(t *testing.T) {
	a := apptest.Run(t, apptest.Config(t))
	// Receive Maximum 1, Topic Alias Maximum 10
	c, r := rawSubscriber(t, a.Addr("mqtt"), "ah-sub", []byte{0x21, 0, 1, 0x22, 0, 10}, "ah/+", 1)
	pub := apptest.V3(t, apptest.URL(a), "ah-pub")
	apptest.Done(t, pub.Publish("ah/x", 1, false, "0")) // sent: the quota is used up
	apptest.Done(t, pub.Publish("ah/y", 1, false, "1")) // held
	apptest.Done(t, pub.Publish("ah/y", 0, false, "2")) // QoS 0: not held
	ar := &aliasReader{t: t, r: r, aliases: map[uint16]string{}}
	first := ar.next()
	if first.payload != "0" {
		t.Fatalf("got %+v", first)
	}
	got := map[string]string{}
	p := ar.next() // "2" (QoS 0, not held)
	got[p.payload] = p.topic
	rawSend(t, c, 0x40, 2, byte(first.id>>8), byte(first.id)) // PUBACK "0": "1" goes out
	p = ar.next()
	got[p.payload] = p.topic
	if got["1"] != "ah/y" || got["2"] != "ah/y" {
		t.Fatalf("got %v", got)
	}
}

// connackHook calls fire once, when armed, right after the CONNACK to the
// client id was written: in the moment between the session's take-over and
// the resend of its in-flight messages, when publishers already find the
// new connection. It only widens a window every reconnect has.
type connackHook struct {
	mqtt.HookBase
	id    string
	armed atomic.Bool
	fire  func()
}

func (*connackHook) ID() string { return "connack-probe" }
func (*connackHook) Provides(b byte) bool {
	return b == mqtt.OnPacketSent
}
func (h *connackHook) OnPacketSent(cl *mqtt.Client, pk packets.Packet, _ []byte) {
	if pk.FixedHeader.Type == packets.Connack && cl.ID == h.id && h.armed.CompareAndSwap(true, false) {
		h.fire()
	}
}

// hookedServer runs a server (no store) with hooks and limits.
func hookedServer(t *testing.T, limits server.Limits, hooks ...mqtt.Hook) *server.Server {
	t.Helper()
	srv, _ := runServer(t, server.Options{Limits: limits, Hooks: hooks})
	return srv
}

// TestResendDoesNotRepeatANewDelivery: a persistent session with nothing
// in flight reconnects, and a QoS 1 message is published to it between its
// take-over and the resend of its in-flight messages. The message is
// queued for the new connection and must be sent once: moveTo set up no
// resend boundary (resending) when there was nothing to move, so the
// resend took the new message for one of the session's and wrote it too
// (DUP), ahead of the queued copy: the client got it twice, the second
// time as a new message under a packet id still in use.
func TestResendDoesNotRepeatANewDelivery(t *testing.T) {
	h := &connackHook{id: "rd-sub"}
	srv := hookedServer(t, server.Limits{}, h)
	h.fire = func() {
		if err := srv.Publish("rd/t", []byte("new"), false, 1); err != nil {
			t.Error(err)
		}
	}
	addr := srv.Addr(server.ListenerMQTT)
	c, r := apptest.RawClient(t, addr, "rd-sub", 4, false, false, 0)
	rawSubscribe(t, c, r, 4, "rd/t", 1)
	c.Close()

	h.armed.Store(true)
	c, r = apptest.RawClient(t, addr, "rd-sub", 4, false, true, 0)
	publishes := 0
	var id [2]byte
	roundTrip := func() { // PINGREQ, reading everything up to its PINGRESP
		t.Helper()
		rawSend(t, c, 0xc0, 0)
		for {
			typ, body, err := apptest.ReadRawPacket(r, nil)
			if err != nil {
				t.Fatal(err)
			}
			if typ == 0xd0 {
				return
			}
			if typ&0xf0 == 0x30 {
				publishes++
				id = [2]byte{body[6], body[7]}
				t.Logf("PUBLISH flags %x id %x payload %q", typ&0x0f, body[6:8], body[8:])
				rawSend(t, c, 0x40, 2, id[0], id[1])
			}
		}
	}
	roundTrip()
	roundTrip()
	if publishes != 1 {
		t.Fatalf("the message was sent %d times", publishes)
	}
}

// TestAcknowledgingClientIsNotStalled: a session comes back to a backlog
// larger than the in-flight window (Limits.MaxInflight 2; the session
// queue holds more) and acknowledges it steadily, one message every 50 ms.
// A publisher's message waits for room in the window meanwhile. P29
// disconnects a client that "acknowledged nothing for the whole patience";
// this one acknowledged all the time, and must not be disconnected.
func TestAcknowledgingClientIsNotStalled(t *testing.T) {
	cfg := apptest.Config(t)
	cfg.Limits.MaxInflight = 2
	cfg.Limits.SlowClientTimeout = app.Duration(time.Second)
	a := apptest.Run(t, cfg)
	c, r := apptest.RawClient(t, a.Addr("mqtt"), "bk-sub", 4, false, false, 0)
	rawSubscribe(t, c, r, 4, "bk/t", 1)
	c.Close()
	pub := apptest.V3(t, apptest.URL(a), "bk-pub")
	const backlog = 60
	for i := range backlog {
		apptest.Done(t, pub.Publish("bk/t", 1, false, fmt.Sprint(i)))
	}
	c, r = apptest.RawClient(t, a.Addr("mqtt"), "bk-sub", 4, false, true, 0)
	last := pub.Publish("bk/t", 1, false, fmt.Sprint(backlog)) // waits for the window
	for i := range backlog + 1 {
		if err := c.SetReadDeadline(time.Now().Add(apptest.Wait)); err != nil {
			t.Fatal(err)
		}
		typ, body, err := apptest.ReadRawPacket(r, nil)
		if err != nil || typ&0xf6 != 0x32 || string(body[8:]) != fmt.Sprint(i) {
			t.Fatalf("message %d: want a QoS 1 PUBLISH, got %x %q: %v", i, typ, body, err)
		}
		time.Sleep(50 * time.Millisecond) // a steady, not fast, consumer
		if _, err := c.Write([]byte{0x40, 2, body[6], body[7]}); err != nil {
			t.Fatal(err)
		}
	}
	apptest.Done(t, last)
}

// dropWaitHook holds up the take-over's drop of the old session's message
// "0" until a publisher has put message "1" in that session (or a while
// passed): it widens the window between ClearInflights and moveTo(nil).
type dropWaitHook struct {
	mqtt.HookBase
	id        string
	once      sync.Once
	published chan struct{}
}

func (*dropWaitHook) ID() string { return "drop-wait" }
func (*dropWaitHook) Provides(b byte) bool {
	return b == mqtt.OnQosPublish || b == mqtt.OnQosDropped
}
func (h *dropWaitHook) OnQosPublish(cl *mqtt.Client, pk packets.Packet, _ int64, _ int) {
	if cl.ID == h.id && string(pk.Payload) == "1" {
		h.once.Do(func() { close(h.published) })
	}
}
func (h *dropWaitHook) OnQosDropped(cl *mqtt.Client, pk packets.Packet) {
	if cl.ID == h.id && string(pk.Payload) == "0" {
		select {
		case <-h.published:
		case <-time.After(2 * time.Second):
		}
	}
}

// TestCleanStartForgetsLateMessages: a client reconnects with a clean
// session while a publisher waits for room in its old connection's
// in-flight window (Limits.MaxInflight 1). The take-over closes the old
// connection, the publisher goes on and puts its message in the old
// session, which the take-over then clears (ClearInflights) and seals
// (moveTo(nil)). A message that landed between the two was wiped by
// moveTo without the hooks hearing of it: storage keeps it for good (a
// restart loads it into the client's new session) and the in-flight gauge
// ($SYS messages/inflight) never comes down.
func TestCleanStartForgetsLateMessages(t *testing.T) {
	h := &dropWaitHook{id: "cs-sub", published: make(chan struct{})}
	srv := hookedServer(t, server.Limits{MaxInflight: 1, SlowClientTimeout: apptest.Wait}, h)
	addr := srv.Addr(server.ListenerMQTT)
	c, r := apptest.RawClient(t, addr, "cs-sub", 4, false, false, 0)
	rawSubscribe(t, c, r, 4, "cs/t", 1)
	pub := apptest.V3(t, "tcp://"+addr, "cs-pub")
	apptest.Done(t, pub.Publish("cs/t", 1, false, "0"))
	if typ, body, err := apptest.ReadRawPacket(r, nil); err != nil || typ&0xf6 != 0x32 {
		t.Fatalf("want a QoS 1 PUBLISH, got %x %x: %v", typ, body, err)
	}
	received := srv.Stats().Info.MessagesReceived
	second := pub.Publish("cs/t", 1, false, "1") // waits for the window
	apptest.Eventually(t, func() error {
		if n := srv.Stats().Info.MessagesReceived - received; n < 1 {
			return fmt.Errorf("the server read %d publishes", n)
		}
		return nil
	})
	apptest.RawClient(t, addr, "cs-sub", 4, true, false, 0)
	apptest.Done(t, second)
	apptest.Eventually(t, func() error {
		if n := srv.Stats().Info.Inflight; n != 0 {
			return fmt.Errorf("%d messages in flight, none in any session", n)
		}
		return nil
	})
}

// qos2Flow completes, as a raw subscriber, the QoS 2 flow of the PUBLISH
// it just read (body): PUBREC, the server's PUBREL, PUBCOMP.
func qos2Flow(t *testing.T, c net.Conn, r *bufio.Reader, body []byte) {
	t.Helper()
	id0, id1 := body[2+int(body[0])<<8|int(body[1])], body[3+int(body[0])<<8|int(body[1])]
	rawSend(t, c, 0x50, 2, id0, id1)
	apptest.RawExchange(t, c, r, apptest.RawStep{Send: nil, Want: []byte{0x62, 2, id0, id1}})
	rawSend(t, c, 0x70, 2, id0, id1)
}

// TestQoS2PublishResentDuringItsDelivery: a QoS 2 publisher's message
// waits for room in a subscriber's in-flight window (Limits.MaxInflight 1)
// before its PUBREC (P3: the ack follows the delivery). The publisher's
// connection is taken over by its reconnect, which resends the PUBLISH
// (DUP) as it must. The server had not recorded the packet id yet (P25
// records it after the delivery), so the take-over found nothing to move
// (P31) and the resend was delivered as a new message: the subscriber (QoS
// 2) got the message twice [MQTT-4.3.3-10].
func TestQoS2PublishResentDuringItsDelivery(t *testing.T) {
	cfg := apptest.Config(t)
	cfg.Limits.MaxInflight = 1
	cfg.Limits.SlowClientTimeout = app.Duration(apptest.Wait)
	a := apptest.Run(t, cfg)
	s, sr := apptest.RawClient(t, a.Addr("mqtt"), "q2-sub", 4, false, false, 0)
	rawSubscribe(t, s, sr, 4, "q2/t", 2)
	other := apptest.V3(t, apptest.URL(a), "q2-other")
	apptest.Done(t, other.Publish("q2/t", 2, false, "0")) // fills the window
	typ, first, err := apptest.ReadRawPacket(sr, nil)
	if err != nil || typ&0xf6 != 0x34 {
		t.Fatalf("want a QoS 2 PUBLISH, got %x %x: %v", typ, first, err)
	}

	publish := func(dup byte) []byte { // QoS 2, id 5, "1"
		return []byte{0x34 | dup, 9, 0, 4, 'q', '2', '/', 't', 0, 5, '1'}
	}
	received := a.Server().Stats().Info.MessagesReceived
	p, _ := apptest.RawClient(t, a.Addr("mqtt"), "q2-pub", 4, false, false, 0)
	rawSend(t, p, publish(0)...)
	apptest.Eventually(t, func() error { // read, and waiting for the window
		if n := a.Server().Stats().Info.MessagesReceived - received; n < 1 {
			return fmt.Errorf("the server read %d publishes", n)
		}
		return nil
	})
	p, pr := apptest.RawClient(t, a.Addr("mqtt"), "q2-pub", 4, false, true, 0)
	rawSend(t, p, publish(0x08)...) // the resend [MQTT-4.3.3-10]
	apptest.Eventually(t, func() error {
		if n := a.Server().Stats().Info.MessagesReceived - received; n < 2 {
			return fmt.Errorf("the server read %d publishes", n)
		}
		return nil
	})

	// The subscriber completes "0"; "1" comes, once.
	qos2Flow(t, s, sr, first)
	got := []string{}
	done := false
	for !done {
		if err := s.SetReadDeadline(time.Now().Add(apptest.Wait)); err != nil {
			t.Fatal(err)
		}
		typ, body, err := apptest.ReadRawPacket(sr, nil)
		if err != nil || typ&0xf6 != 0x34 {
			t.Fatalf("want a QoS 2 PUBLISH, got %x %x: %v", typ, body, err)
		}
		got = append(got, string(body[8:]))
		qos2Flow(t, s, sr, body)
		if len(got) == 1 {
			// The publisher's flow completes on its new connection.
			apptest.RawExchange(t, p, pr,
				apptest.RawStep{Want: []byte{0x50, 2, 0, 5}},
				apptest.RawStep{Send: []byte{0x62, 2, 0, 5}, Want: []byte{0x70, 2, 0, 5}})
			// The old connection's reader has finished with its PUBLISH
			// (it ends once it has), and the subscriber has got whatever
			// it delivered before these PINGRESPs.
			apptest.Eventually(t, func() error {
				if n := a.Server().Stats().Info.ClientsConnected; n != 3 {
					return fmt.Errorf("%d clients connected", n)
				}
				return nil
			})
			for range 2 {
				rawSend(t, s, 0xc0, 0)
				if typ, body, err := apptest.ReadRawPacket(sr, nil); err != nil || typ != 0xd0 {
					if err == nil && typ&0xf6 == 0x34 {
						got = append(got, string(body[8:]))
					}
					t.Fatalf("the subscriber got %q and then %x %q: %v", got, typ, body, err)
				}
			}
			done = true
		}
	}
	if len(got) != 1 || got[0] != "1" {
		t.Fatalf("got %q", got)
	}
}
