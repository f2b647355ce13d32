package server_test

import (
	"bufio"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	pahov3 "github.com/eclipse/paho.mqtt.golang"

	"github.com/colonymq/colony/app"
	"github.com/colonymq/colony/app/apptest"
)

// pub5 is an MQTT 5 PUBLISH as a raw test client reads it.
type pub5 struct {
	flags   byte
	topic   string
	id      uint16
	alias   uint16
	payload string
}

// readPub5 reads the next packet, which must be an MQTT 5 PUBLISH.
func readPub5(t *testing.T, r *bufio.Reader) pub5 {
	t.Helper()
	typ, body, err := apptest.ReadRawPacket(r, nil)
	if err != nil || typ&0xf0 != 0x30 {
		t.Fatalf("want PUBLISH, got %x %x: %v", typ, body, err)
	}
	p := pub5{flags: typ & 0x0f}
	tl := int(body[0])<<8 | int(body[1])
	p.topic = string(body[2 : 2+tl])
	i := 2 + tl
	if typ&0x06 != 0 {
		p.id = uint16(body[i])<<8 | uint16(body[i+1])
		i += 2
	}
	n, shift := 0, 0
	for {
		c := body[i]
		i++
		n |= int(c&0x7f) << shift
		if c&0x80 == 0 {
			break
		}
		shift += 7
	}
	end := i + n
	for i < end {
		id := body[i]
		i++
		switch id {
		case 0x01:
			i++
		case 0x02:
			i += 4
		case 0x23:
			p.alias = uint16(body[i])<<8 | uint16(body[i+1])
			i += 2
		case 0x03, 0x08, 0x09:
			i += 2 + (int(body[i])<<8 | int(body[i+1]))
		case 0x26:
			i += 2 + (int(body[i])<<8 | int(body[i+1]))
			i += 2 + (int(body[i])<<8 | int(body[i+1]))
		case 0x0b:
			for body[i]&0x80 != 0 {
				i++
			}
			i++
		default:
			t.Fatalf("unexpected property %x", id)
		}
	}
	p.payload = string(body[end:])
	return p
}

// ackInOrder reads n MQTT 3.1.1 QoS 1 PUBLISHes on a 4-byte topic, with
// payloads "0" to n-1 in order, and acknowledges each; why adds to a
// failure.
func ackInOrder(t *testing.T, c net.Conn, r *bufio.Reader, n int, why func() string) {
	t.Helper()
	for i := range n {
		if err := c.SetReadDeadline(time.Now().Add(apptest.Wait)); err != nil {
			t.Fatal(err)
		}
		typ, body, err := apptest.ReadRawPacket(r, nil)
		if err != nil || typ&0xf6 != 0x32 || string(body[8:]) != fmt.Sprint(i) {
			t.Fatalf("message %d: want a QoS 1 PUBLISH, got %x %q: %v %s", i, typ, body, err, why())
		}
		rawSend(t, c, 0x40, 2, body[6], body[7])
	}
}

// TestResentPublishCarriesItsTopic: an MQTT 5 subscriber that allows topic
// aliases gets two QoS 1 messages on one topic, the second by alias only,
// and leaves having acknowledged only the first. Topic aliases end with
// their connection [MQTT-3.3.2-7], so the second must come back with its
// topic name: a PUBLISH with an empty topic and an alias the connection
// never set up is a protocol error, and the message is never delivered.
func TestResentPublishCarriesItsTopic(t *testing.T) {
	a := apptest.Run(t, apptest.Config(t))
	props := []byte{0x11, 0, 0, 0x0e, 0x10, 0x22, 0, 10} // session expiry 3600 s, Topic Alias Maximum 10
	c, r := apptest.RawClientWith(t, a.Addr("mqtt"), "ta-sub", 5, true, false, props)
	rawSubscribe(t, c, r, 5, "ta/t", 1)
	pub := apptest.V3(t, apptest.URL(a), "ta-pub")
	apptest.Done(t, pub.Publish("ta/t", 1, false, "0"))
	apptest.Done(t, pub.Publish("ta/t", 1, false, "1"))
	for i := range 2 {
		if p := readPub5(t, r); p.payload != fmt.Sprint(i) || p.id != uint16(i+1) || (i == 1 && (p.topic != "" || p.alias != 1)) {
			t.Fatalf("message %d: got %+v", i, p) // the second by alias only
		}
	}
	// The first is acknowledged (PINGRESP: its PUBACK was processed).
	apptest.RawExchange(t, c, r,
		apptest.RawStep{Send: []byte{0x40, 2, 0, 1, 0xc0, 0}, Want: []byte{0xd0, 0}})
	c.Close()

	c, r = apptest.RawClientWith(t, a.Addr("mqtt"), "ta-sub", 5, false, true, props)
	if p := readPub5(t, r); p.topic != "ta/t" || p.payload != "1" {
		t.Fatalf("resent: topic %q alias %d (unknown to this connection) payload %q", p.topic, p.alias, p.payload)
	}
}

// TestOversizedMessageDoesNotStallTheSession: an MQTT 5 subscriber with a
// Maximum Packet Size smaller than a QoS 1 message. The server must discard
// that message and behave as if it had completed sending it
// [MQTT-3.1.2-25]: it must not keep it in flight, holding the client's
// send quota (Receive Maximum 1 here) and its place in the session, so the
// next, small, message still arrives, and so does one published after a
// reconnect of the session.
func TestOversizedMessageDoesNotStallTheSession(t *testing.T) {
	for _, reconnect := range []bool{false, true} {
		t.Run(fmt.Sprintf("reconnect=%v", reconnect), func(t *testing.T) {
			a := apptest.Run(t, apptest.Config(t))
			// session expiry 3600 s, Receive Maximum 1, Maximum Packet Size 64
			props := []byte{0x11, 0, 0, 0x0e, 0x10, 0x21, 0, 1, 0x27, 0, 0, 0, 64}
			c, r := apptest.RawClientWith(t, a.Addr("mqtt"), "mp-sub", 5, true, false, props)
			rawSubscribe(t, c, r, 5, "mp/t", 1)
			pub := apptest.V3(t, apptest.URL(a), "mp-pub")
			apptest.Done(t, pub.Publish("mp/t", 1, false, strings.Repeat("x", 200)))
			if reconnect {
				c.Close()
				c, r = apptest.RawClientWith(t, a.Addr("mqtt"), "mp-sub", 5, false, true, props)
			}
			apptest.Done(t, pub.Publish("mp/t", 1, false, "small"))
			if err := c.SetReadDeadline(time.Now().Add(apptest.Wait)); err != nil {
				t.Fatal(err)
			}
			if p := readPub5(t, r); p.payload != "small" {
				t.Fatalf("got %+v", p)
			}
			if n := a.Server().Stats().Info.TooLargeDropped; n != 1 {
				t.Fatalf("discards counted: %d, want 1", n)
			}
		})
	}
}

// TestHeldMessagesSurviveReconnectAndRestart: a persistent MQTT 5 session
// with Receive Maximum 1 gets three QoS 1 messages while away. It comes
// back: the first is resent, the other two wait for its acknowledgement
// (held). The server restarts (sync durability) before the client
// acknowledges anything: all three are still the session's, and come
// after the restart, one per acknowledgement.
func TestHeldMessagesSurviveReconnectAndRestart(t *testing.T) {
	cfg := apptest.Config(t)
	cfg.Store.Durability = "sync"
	a := apptest.Run(t, cfg)
	props := []byte{0x11, 0, 0, 0x0e, 0x10, 0x21, 0, 1} // session expiry 3600 s, Receive Maximum 1
	c, r := apptest.RawClientWith(t, a.Addr("mqtt"), "hr-sub", 5, true, false, props)
	rawSubscribe(t, c, r, 5, "hr/t", 1)
	c.Close()
	pub := apptest.V3(t, apptest.URL(a), "hr-pub")
	for i := range 3 {
		apptest.Done(t, pub.Publish("hr/t", 1, false, fmt.Sprint(i)))
	}
	c, r = apptest.RawClientWith(t, a.Addr("mqtt"), "hr-sub", 5, false, true, props)
	if p := readPub5(t, r); p.payload != "0" {
		t.Fatalf("got %+v", p)
	}
	apptest.RawExchange(t, c, r, apptest.RawStep{Send: []byte{0xc0, 0}, Want: []byte{0xd0, 0}}) // nothing more: held
	c.Close()
	pub.Disconnect(50)
	apptest.Stop(t, a)

	a = apptest.Run(t, cfg)
	c, r = apptest.RawClientWith(t, a.Addr("mqtt"), "hr-sub", 5, false, true, props)
	for i := range 3 {
		if err := c.SetReadDeadline(time.Now().Add(apptest.Wait)); err != nil {
			t.Fatal(err)
		}
		p := readPub5(t, r)
		if p.payload != fmt.Sprint(i) {
			t.Fatalf("after the restart, message %d: got %+v", i, p)
		}
		if _, err := c.Write([]byte{0x40, 2, byte(p.id >> 8), byte(p.id)}); err != nil {
			t.Fatal(err)
		}
	}
}

// TestTakeOverWhileAPublisherWaitsForTheWindow: a persistent subscriber's
// in-flight window (Limits.MaxInflight 2) is full, and a publisher's third
// QoS 1 message waits for room in it. The subscriber reconnects, taking its
// session over from the old connection. The third message, acknowledged to
// its publisher, must reach the new connection once it acknowledges the two
// resent ones.
func TestTakeOverWhileAPublisherWaitsForTheWindow(t *testing.T) {
	cfg := apptest.Config(t)
	cfg.Limits.MaxInflight = 2
	cfg.Limits.SlowClientTimeout = app.Duration(apptest.Wait)
	a := apptest.Run(t, cfg)
	c, r := apptest.RawClient(t, a.Addr("mqtt"), "to-sub", 4, false, false, 0)
	rawSubscribe(t, c, r, 4, "to/t", 1)
	pub := apptest.V3(t, apptest.URL(a), "to-pub")
	received := a.Server().Stats().Info.MessagesReceived
	apptest.Done(t, pub.Publish("to/t", 1, false, "0"))
	apptest.Done(t, pub.Publish("to/t", 1, false, "1"))
	third := pub.Publish("to/t", 1, false, "2")
	for range 2 {
		if typ, body, err := apptest.ReadRawPacket(r, nil); err != nil || typ&0xf6 != 0x32 {
			t.Fatalf("want a QoS 1 PUBLISH, got %x %x: %v", typ, body, err)
		}
	}
	// The server has read the third publish: it waits for the window.
	apptest.Eventually(t, func() error {
		if n := a.Server().Stats().Info.MessagesReceived - received; n < 3 {
			return fmt.Errorf("the server read %d publishes", n)
		}
		return nil
	})

	c, r = apptest.RawClient(t, a.Addr("mqtt"), "to-sub", 4, false, true, 0)
	ackInOrder(t, c, r, 3, func() string { return "" })
	apptest.Done(t, third)
}

// TestFullWindowKeepsTheMessage: a connected persistent subscriber reads
// its messages but does not acknowledge them, so its in-flight window
// (Limits.MaxInflight 2) stays full past the slow-client timeout while a
// third QoS 1 message waits for it. The publisher gets its PUBACK; the
// message must then be the session's (the subscriber stalled, as one whose
// queue does not drain), and arrive when it reconnects.
func TestFullWindowKeepsTheMessage(t *testing.T) {
	cfg := apptest.Config(t)
	cfg.Limits.MaxInflight = 2
	cfg.Limits.SlowClientTimeout = app.Duration(300 * time.Millisecond)
	a := apptest.Run(t, cfg)
	c, r := apptest.RawClient(t, a.Addr("mqtt"), "fw-sub", 4, false, false, 0)
	rawSubscribe(t, c, r, 4, "fw/t", 1)
	pub := apptest.V3(t, apptest.URL(a), "fw-pub")
	for i := range 3 {
		apptest.Done(t, pub.Publish("fw/t", 1, false, fmt.Sprint(i)))
	}
	c.Close()
	c, r = apptest.RawClient(t, a.Addr("mqtt"), "fw-sub", 4, false, true, 0)
	ackInOrder(t, c, r, 3, func() string { return fmt.Sprintf("(dropped: %d)", a.Server().Stats().Info.InflightDropped) })
}

// TestOwnMessagesPastTheWindow: a client subscribed to the topic it
// publishes to, with a small in-flight window (Limits.MaxInflight 2),
// publishes three QoS 1 messages at once and acknowledges each delivery at
// once. The server handles the client's packets in order, so the third
// publish, waiting for room in the client's own window, holds up the
// PUBACKs that would make room: it must not be dropped for that (nor the
// client disconnected). The same holds for the retained messages a
// SUBSCRIBE brings while the window is full.
func TestOwnMessagesPastTheWindow(t *testing.T) {
	t.Run("publish", func(t *testing.T) {
		cfg := apptest.Config(t)
		cfg.Limits.MaxInflight = 2
		cfg.Limits.SlowClientTimeout = app.Duration(300 * time.Millisecond)
		a := apptest.Run(t, cfg)
		msgs, handler := apptest.Sink()
		c := apptest.V3(t, apptest.URL(a), "echo")
		apptest.Done(t, c.Subscribe("echo/t", 1, handler))
		var toks []pahov3.Token
		for i := range 3 {
			toks = append(toks, c.Publish("echo/t", 1, false, fmt.Sprint(i)))
		}
		for _, tok := range toks {
			apptest.Done(t, tok)
		}
		for i := range 3 {
			if m := apptest.Next(t, msgs); string(m.Payload()) != fmt.Sprint(i) {
				t.Fatalf("message %d: got %q", i, m.Payload())
			}
		}
	})
	t.Run("retained", func(t *testing.T) {
		cfg := apptest.Config(t)
		cfg.Limits.MaxInflight = 2
		cfg.Limits.SlowClientTimeout = app.Duration(300 * time.Millisecond)
		a := apptest.Run(t, cfg)
		pub := apptest.V3(t, apptest.URL(a), "rw-pub")
		apptest.Done(t, pub.Publish("rw/r", 1, true, "retained"))
		c, r := apptest.RawClient(t, a.Addr("mqtt"), "rw-sub", 4, true, false, 0)
		rawSubscribe(t, c, r, 4, "rw/t", 1)
		apptest.Done(t, pub.Publish("rw/t", 1, false, "a"))
		apptest.Done(t, pub.Publish("rw/t", 1, false, "b"))
		// The window is full; SUBSCRIBE rw/r, then acknowledge both.
		send := []byte{0x82, 9, 0, 2, 0, 4, 'r', 'w', '/', 'r', 1}
		for range 2 {
			typ, body, err := apptest.ReadRawPacket(r, nil)
			if err != nil || typ&0xf6 != 0x32 {
				t.Fatalf("want a QoS 1 PUBLISH, got %x %x: %v", typ, body, err)
			}
			send = append(send, 0x40, 2, body[6], body[7])
		}
		if _, err := c.Write(send); err != nil {
			t.Fatal(err)
		}
		for {
			typ, body, err := apptest.ReadRawPacket(r, nil)
			if err != nil {
				t.Fatalf("no retained message: %v (dropped: %d)", err, a.Server().Stats().Info.InflightDropped)
			}
			if typ&0xf0 == 0x30 {
				if string(body[8:]) != "retained" {
					t.Fatalf("got %x %q", typ, body)
				}
				return
			}
		}
	})
}

// TestNoLocalIsPerSubscription: No Local belongs to its subscription
// [MQTT-3.8.3-3]. A client that is the only member of a shared group
// (which may not set No Local [MQTT-3.8.3-4]) and also subscribes to the
// topic with No Local gets its own QoS 1 message through the group, or
// the group's message reaches nobody; likewise through an overlapping
// plain subscription without No Local.
func TestNoLocalIsPerSubscription(t *testing.T) {
	for _, filter := range []string{"$share/g/nl/t", "nl/#"} {
		t.Run(filter, func(t *testing.T) {
			a := apptest.Run(t, apptest.Config(t))
			c := apptest.V5(t, a.Addr("mqtt"), &paho.Connect{ClientID: "nl", CleanStart: true})
			if _, err := c.Subscribe(apptest.Ctx(t), &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{
				{Topic: filter, QoS: 1}, {Topic: "nl/t", QoS: 1, NoLocal: true}}}); err != nil {
				t.Fatal(err)
			}
			if _, err := c.Publish(apptest.Ctx(t), &paho.Publish{Topic: "nl/t", QoS: 1, Payload: []byte("own")}); err != nil {
				t.Fatal(err)
			}
			// A marker from another client, after it: the own message, if
			// delivered at all, was delivered first.
			other := apptest.V3(t, apptest.URL(a), "nl-other")
			apptest.Done(t, other.Publish("nl/t", 1, false, "marker"))
			if m := apptest.Next(t, c.Msgs); string(m.Payload) != "own" {
				t.Fatalf("got %q first: the own message was not delivered through %s", m.Payload, filter)
			}
		})
	}
}

// TestRestartKeepsResendOrder: a persistent subscriber's session holds
// "0", "1", "2" (packet ids 1, 2, 3). It reconnects, acknowledges the
// resent "0" and "1" only, and leaves. "3" is published to the session: the
// new connection's packet id counter started again at 0, so "3" takes the
// freed id 1, while "2" keeps id 3. In memory the order is right, but the
// store returns a session's messages by packet id, and a restart resent
// "3" before "2" [MQTT-4.6.0-2] (the messages of one topic, in order).
func TestRestartKeepsResendOrder(t *testing.T) {
	cfg := apptest.Config(t)
	cfg.Store.Durability = "sync"
	a := apptest.Run(t, cfg)
	c, r := apptest.RawClient(t, a.Addr("mqtt"), "ro-sub", 4, false, false, 0)
	rawSubscribe(t, c, r, 4, "ro/t", 1)
	c.Close()
	pub := apptest.V3(t, apptest.URL(a), "ro-pub")
	for i := range 3 {
		apptest.Done(t, pub.Publish("ro/t", 1, false, fmt.Sprint(i)))
	}

	c, r = apptest.RawClient(t, a.Addr("mqtt"), "ro-sub", 4, false, true, 0)
	for i := range 3 {
		if err := c.SetReadDeadline(time.Now().Add(apptest.Wait)); err != nil {
			t.Fatal(err)
		}
		typ, body, err := apptest.ReadRawPacket(r, nil)
		if err != nil || typ&0xf0 != 0x30 || string(body[8:]) != fmt.Sprint(i) {
			t.Fatalf("message %d: got %x %q: %v", i, typ, body, err)
		}
		if i < 2 {
			rawSend(t, c, 0x40, 2, body[6], body[7]) // "2" stays unacknowledged
		}
	}
	apptest.RawExchange(t, c, r, apptest.RawStep{Send: []byte{0xc0, 0}, Want: []byte{0xd0, 0}}) // the acks were read
	c.Close()
	apptest.Eventually(t, func() error { // the server saw the subscriber go
		if n := a.Server().Stats().Info.ClientsConnected; n != 1 {
			return fmt.Errorf("%d clients connected", n)
		}
		return nil
	})
	apptest.Done(t, pub.Publish("ro/t", 1, false, "3"))
	pub.Disconnect(50)
	apptest.Stop(t, a)

	a = apptest.Run(t, cfg)
	c, r = apptest.RawClient(t, a.Addr("mqtt"), "ro-sub", 4, false, true, 0)
	got := []string{}
	for range 2 {
		if err := c.SetReadDeadline(time.Now().Add(apptest.Wait)); err != nil {
			t.Fatal(err)
		}
		typ, body, err := apptest.ReadRawPacket(r, nil)
		if err != nil || typ&0xf0 != 0x30 {
			t.Fatalf("after %q: got %x %q: %v", got, typ, body, err)
		}
		got = append(got, string(body[8:]))
		rawSend(t, c, 0x40, 2, body[6], body[7])
	}
	if got[0] != "2" || got[1] != "3" {
		t.Fatalf("after the restart the session's messages came as %q, want [\"2\" \"3\"]", got)
	}
}

// TestSharedGroupPrefersConnectedMembers: a shared group with a member
// whose persistent session is offline and a connected member: the
// connected one gets every message. Upstream picked members in map order,
// so about half went to the offline session, to wait for its return or be
// dropped when it expired (MQTT 5 4.8.2: the server SHOULD send them to
// another member).
func TestSharedGroupPrefersConnectedMembers(t *testing.T) {
	a := apptest.Run(t, apptest.Config(t))
	away, _ := rawSubscriber(t, a.Addr("mqtt"), "sh-away", []byte{0x11, 0, 0, 0x0e, 0x10}, "$share/g/sh/t", 1) // session expiry 3600 s
	away.Close()
	apptest.Eventually(t, func() error {
		if n := a.Server().Stats().Info.ClientsConnected; n != 0 {
			return fmt.Errorf("%d connected", n)
		}
		return nil
	})
	msgs, handler := apptest.Sink()
	here := apptest.V3(t, apptest.URL(a), "sh-here")
	apptest.Done(t, here.Subscribe("$share/g/sh/t", 1, handler))
	pub := apptest.V3(t, apptest.URL(a), "sh-pub")
	for i := range 20 {
		apptest.Done(t, pub.Publish("sh/t", 1, false, fmt.Sprint(i)))
	}
	for i := range 20 {
		if m := apptest.Next(t, msgs); string(m.Payload()) != fmt.Sprint(i) {
			t.Fatalf("message %d: got %q", i, m.Payload())
		}
	}
}

// TestSlowSteadySubscriberKeepsItsConnection: 48 publishers share a
// subscriber's one-message in-flight window (Limits.MaxInflight 1), and the
// subscriber acknowledges each message after 30 ms, well within
// slow_client_timeout (1.5 s). It is slow, not stalled: it must get every
// message and keep its connection. Each waiting publisher watched the
// window's length for a change, which the publisher that took the freed
// slot first hid from the others, so a publisher waiting its turn behind
// the others for longer than slow_client_timeout (about 48 × 30 ms)
// disconnected the subscriber.
func TestSlowSteadySubscriberKeepsItsConnection(t *testing.T) {
	cfg := apptest.Config(t)
	cfg.Limits.MaxInflight = 1
	cfg.Limits.SlowClientTimeout = app.Duration(1500 * time.Millisecond)
	a := apptest.Run(t, cfg)
	c, r := apptest.RawClient(t, a.Addr("mqtt"), "ss-sub", 4, true, false, 0)
	rawSubscribe(t, c, r, 4, "ss/t", 1)
	const pubs, each = 48, 2
	errs := make(chan error, pubs)
	for p := range pubs {
		pub := apptest.V3(t, apptest.URL(a), fmt.Sprintf("ss-pub-%d", p))
		go func() {
			for i := range each {
				tok := pub.Publish("ss/t", 1, false, fmt.Sprintf("%d-%d", p, i))
				if !tok.WaitTimeout(apptest.Wait) || tok.Error() != nil {
					errs <- fmt.Errorf("publisher %d message %d: %v", p, i, tok.Error())
					return
				}
			}
			errs <- nil
		}()
	}
	got := map[string]bool{}
	for len(got) < pubs*each {
		if err := c.SetReadDeadline(time.Now().Add(apptest.Wait)); err != nil {
			t.Fatal(err)
		}
		typ, body, err := apptest.ReadRawPacket(r, nil)
		if err != nil || typ&0xf6 != 0x32 {
			t.Fatalf("after %d messages: want a QoS 1 PUBLISH, got %x %q: %v", len(got), typ, body, err)
		}
		got[string(body[8:])] = true
		time.Sleep(30 * time.Millisecond)
		rawSend(t, c, 0x40, 2, body[6], body[7])
	}
	for range pubs {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
}
