package server_test

import (
	"bufio"
	"bytes"
	"testing"
	"time"

	pahov3 "github.com/eclipse/paho.mqtt.golang"

	"github.com/colonymq/colony/app/apptest"
)

// TestClientPacketIDsAreTheirOwn: packet ids are per direction, so a client
// may publish QoS 1 with the id of a message the server has in flight to it
// (clients and the server both start at 1, so this is the common case).
// Neither its publishes nor a subscribe with that id are refused, and
// acknowledging them must not end the server's message: when
// the client comes back without having acknowledged it, after a reconnect
// or after a restart of the server, it is sent again. Upstream mochi kept
// both in one in-flight map keyed by id, and its PUBACK replaced and then
// deleted the server's message, in memory and in the store, and refused the
// subscribe.
func TestClientPacketIDsAreTheirOwn(t *testing.T) {
	for _, restart := range []bool{false, true} {
		name := "reconnect"
		if restart {
			name = "restart"
		}
		t.Run(name, func(t *testing.T) {
			cfg := apptest.Config(t)
			a := apptest.Run(t, cfg)

			// A persistent raw 3.1.1 client subscribed to both/in at QoS 1.
			c, r := apptest.RawClient(t, a.Addr("mqtt"), "both", 4, false, false, 0)
			sub := []byte{0x82, 12, 0, 1, 0, 7, 'b', 'o', 't', 'h', '/', 'i', 'n', 1}
			if _, err := c.Write(sub); err != nil {
				t.Fatal(err)
			}
			if typ, body, err := apptest.ReadRawPacket(r, nil); err != nil || typ != 0x90 || body[2] != 1 {
				t.Fatalf("suback %x %x: %v", typ, body, err)
			}
			pub := apptest.V3(t, apptest.URL(a), "sender")
			apptest.Done(t, pub.Publish("both/in", 1, false, "m1"))

			// The server's message arrives; the client does not acknowledge it.
			typ, body, err := apptest.ReadRawPacket(r, nil)
			if err != nil || typ&0xf6 != 0x32 {
				t.Fatalf("want a QoS 1 PUBLISH, got %x %x: %v", typ, body, err)
			}
			id := body[9:11] // after the topic length (2) and "both/in" (7)

			// The client uses that same id for a subscribe, a QoS 1 publish
			// and a QoS 2 publish of its own: each is answered as usual.
			more := append([]byte{0x82, 2 + 2 + 9 + 1, id[0], id[1], 0, 9}, "both/more"...)
			own1 := append([]byte{0x32, 2 + 8 + 2 + 1, 0, 8}, "both/out"...)
			own1 = append(own1, id[0], id[1], 'x')
			own2 := append([]byte{0x34}, own1[1:]...)
			for _, step := range []struct {
				send []byte
				want byte // the answer's first byte
			}{
				{append(more, 1), 0x90},
				{own1, 0x40},
				{own2, 0x50},
				{[]byte{0x62, 2, id[0], id[1]}, 0x70}, // PUBREL -> PUBCOMP
			} {
				if _, err := c.Write(step.send); err != nil {
					t.Fatal(err)
				}
				typ, body, err := apptest.ReadRawPacket(r, nil)
				if err != nil || typ != step.want || !bytes.Equal(body[:2], id) || (typ == 0x90 && body[2] != 1) {
					t.Fatalf("after %x: want %x for id %x, got %x %x: %v", step.send[0], step.want, id, typ, body, err)
				}
			}
			c.Close()

			if restart {
				apptest.Stop(t, a)
				a = apptest.Run(t, cfg)
			}
			c, r = apptest.RawClient(t, a.Addr("mqtt"), "both", 4, false, true, 0)
			typ, body, err = apptest.ReadRawPacket(r, nil)
			if err != nil || typ != 0x3a || !bytes.Equal(body[9:11], id) || string(body[11:]) != "m1" {
				t.Fatalf("want m1 again (DUP, QoS 1, id %x), got %x %x: %v", id, typ, body, err)
			}
		})
	}
}

// TestQoS2ResendIsAcknowledgedNotDelivered: an MQTT 5 client that sends a
// QoS 2 publish again (DUP) before its PUBREL, as it does on reconnecting
// when it did not get the PUBREC (and a 3.1.1 client may at any time), gets
// a successful PUBREC again, and the message is not delivered a second time
// [MQTT-4.3.3-10], on the same connection or on one that took its session
// over. The repeat is no new message: with a receive maximum of 1, which the
// first send used up, it is still answered, not refused. Upstream answered
// 0x91 (packet identifier in use), a failure with which the client ends the
// exchange.
func TestQoS2ResendIsAcknowledgedNotDelivered(t *testing.T) {
	for _, takeover := range []bool{false, true} {
		name := "same connection"
		if takeover {
			name = "session taken over"
		}
		t.Run(name, func(t *testing.T) {
			cfg := apptest.Config(t)
			cfg.Limits.ReceiveMaximum = 1
			a := apptest.Run(t, cfg)
			got := make(chan string, 10)
			watcher := apptest.V3(t, apptest.URL(a), "watcher")
			apptest.Done(t, watcher.Subscribe("dup/t", 2, func(_ pahov3.Client, m pahov3.Message) { got <- string(m.Payload()) }))

			c, r := apptest.RawClient(t, a.Addr("mqtt"), "q2", 5, true, false, 0)
			publish := func(first byte, id byte, payload string) []byte { // topic "dup/t", no properties
				pk := []byte{first, byte(2 + 5 + 2 + 1 + len(payload)), 0, 5, 'd', 'u', 'p', '/', 't', 0, id, 0}
				return append(pk, payload...)
			}
			for i, step := range []struct {
				send []byte
				want byte // the answer's type, for packet id id, with success
				id   byte
			}{
				{publish(0x34, 7, "once"), 0x50, 7}, // QoS 2 -> PUBREC
				{publish(0x3c, 7, "once"), 0x50, 7}, // the same, DUP -> PUBREC again
				{[]byte{0x62, 2, 0, 7}, 0x70, 7},    // PUBREL -> PUBCOMP
				{publish(0x32, 8, "end"), 0x40, 8},  // QoS 1 -> PUBACK
			} {
				if i == 1 && takeover {
					c, r = apptest.RawClient(t, a.Addr("mqtt"), "q2", 5, false, true, 0)
				}
				if _, err := c.Write(step.send); err != nil {
					t.Fatal(err)
				}
				typ, body, err := apptest.ReadRawPacket(r, nil)
				if err != nil || typ != step.want || len(body) < 2 || body[1] != step.id || (len(body) > 2 && body[2] != 0) {
					t.Fatalf("after %x: want %x with success, got %x %x: %v", step.send[0], step.want, typ, body, err)
				}
			}
			// One publisher's messages arrive in order: when "end" is in, so
			// is every delivery of "once".
			var seen []string
			for len(seen) == 0 || seen[len(seen)-1] != "end" {
				select {
				case m := <-got:
					seen = append(seen, m)
				case <-time.After(apptest.Wait):
					t.Fatalf("watcher got %q, and not \"end\"", seen)
				}
			}
			if len(seen) != 2 || seen[0] != "once" {
				t.Fatalf("watcher got %q, want [once end]", seen)
			}
		})
	}
}

// TestQoS2ResendAfterRestart: the client's QoS 2 publish acknowledged with
// a PUBREC survives a restart of the node with its persistent session, in
// sync mode (the PUBREC goes out after the commit): sent again after the
// restart, it gets a PUBREC and is not delivered again, and its PUBREL
// completes it.
func TestQoS2ResendAfterRestart(t *testing.T) {
	cfg := apptest.Config(t)
	cfg.Store.Durability = "sync"
	a := apptest.Run(t, cfg)
	c, r := apptest.RawClient(t, a.Addr("mqtt"), "q2r", 4, false, false, 0)
	publish := append([]byte{0x34, 2 + 5 + 2 + 4, 0, 5, 'r', 'e', 's', '/', 't', 0, 9}, "once"...)
	if _, err := c.Write(publish); err != nil {
		t.Fatal(err)
	}
	if typ, body, err := apptest.ReadRawPacket(r, nil); err != nil || typ != 0x50 || !bytes.Equal(body, []byte{0, 9}) {
		t.Fatalf("want PUBREC 9, got %x %x: %v", typ, body, err)
	}
	c.Close()
	apptest.Stop(t, a)

	a = apptest.Run(t, cfg)
	got := make(chan string, 10)
	watcher := apptest.V3(t, apptest.URL(a), "watcher")
	apptest.Done(t, watcher.Subscribe("res/t", 2, func(_ pahov3.Client, m pahov3.Message) { got <- string(m.Payload()) }))
	c, r = apptest.RawClient(t, a.Addr("mqtt"), "q2r", 4, false, true, 0)
	publish[0] |= 0x08 // DUP
	end := append([]byte{0x32, 2 + 5 + 2 + 3, 0, 5, 'r', 'e', 's', '/', 't', 0, 10}, "end"...)
	apptest.RawExchange(t, c, r,
		apptest.RawStep{Send: publish, Want: []byte{0x50, 2, 0, 9}},
		apptest.RawStep{Send: []byte{0x62, 2, 0, 9}, Want: []byte{0x70, 2, 0, 9}},
		apptest.RawStep{Send: end, Want: []byte{0x40, 2, 0, 10}})
	select {
	case m := <-got:
		if m != "end" {
			t.Fatalf("watcher got %q first: the publish sent again was delivered again", m)
		}
	case <-time.After(apptest.Wait):
		t.Fatal("watcher got nothing")
	}
}

// TestQoS2NewPublishUnderPendingID: a QoS 2 publish without DUP under an id
// still waiting for its PUBREL is a new message (a resend has DUP set), as
// after a server that went down between its PUBCOMP and forgetting the id:
// it is delivered, not taken for the old one.
func TestQoS2NewPublishUnderPendingID(t *testing.T) {
	cfg := apptest.Config(t)
	cfg.Limits.ReceiveMaximum = 1 // the replaced publish gives its place back
	a := apptest.Run(t, cfg)
	got := make(chan string, 10)
	watcher := apptest.V3(t, apptest.URL(a), "watcher")
	apptest.Done(t, watcher.Subscribe("new/t", 2, func(_ pahov3.Client, m pahov3.Message) { got <- string(m.Payload()) }))
	c, r := apptest.RawClient(t, a.Addr("mqtt"), "q2n", 4, true, false, 0)
	for _, payload := range []string{"first", "second"} {
		publish := append([]byte{0x34, byte(2 + 5 + 2 + len(payload)), 0, 5, 'n', 'e', 'w', '/', 't', 0, 9}, payload...)
		if _, err := c.Write(publish); err != nil {
			t.Fatal(err)
		}
		if typ, body, err := apptest.ReadRawPacket(r, nil); err != nil || typ != 0x50 || !bytes.Equal(body, []byte{0, 9}) {
			t.Fatalf("want PUBREC 9, got %x %x: %v", typ, body, err)
		}
		select {
		case m := <-got:
			if m != payload {
				t.Fatalf("watcher got %q, want %q", m, payload)
			}
		case <-time.After(apptest.Wait):
			t.Fatalf("%q was not delivered", payload)
		}
	}
}

// TestRefusedQoS2DeliveryIsForgotten: a QoS 2 message that an MQTT 5 client
// refuses with a failed PUBREC is dropped, in the store too: after a restart
// its persistent session does not get it again. (The store once took the
// client's PUBREC for a QoS 2 publish of the client's own.)
func TestRefusedQoS2DeliveryIsForgotten(t *testing.T) {
	cfg := apptest.Config(t)
	cfg.Store.Durability = "sync"
	a := apptest.Run(t, cfg)
	nextPublish := func(r *bufio.Reader) (id []byte, payload string) {
		typ, body, err := apptest.ReadRawPacket(r, nil)
		if err != nil || typ&0xf0 != 0x30 || typ&0x06 != 0x04 {
			t.Fatalf("want a QoS 2 PUBLISH, got %x %x: %v", typ, body, err)
		}
		tl := int(body[0])<<8 | int(body[1])
		props := int(body[4+tl]) // property length, below 128 here
		return body[2+tl : 4+tl], string(body[5+tl+props:])
	}

	c, r := apptest.RawClient(t, a.Addr("mqtt"), "rej", 5, true, false, 3600) // a session of an hour
	// SUBSCRIBE id 1, no properties, rej/t at QoS 2.
	if _, err := c.Write(append(append([]byte{0x82, 2 + 1 + 2 + 5 + 1, 0, 1, 0, 0, 5}, "rej/t"...), 2)); err != nil {
		t.Fatal(err)
	}
	if typ, body, err := apptest.ReadRawPacket(r, nil); err != nil || typ != 0x90 || body[len(body)-1] != 2 {
		t.Fatalf("suback %x %x: %v", typ, body, err)
	}
	pub := apptest.V3(t, apptest.URL(a), "sender")
	apptest.Done(t, pub.Publish("rej/t", 2, false, "refused"))
	id, payload := nextPublish(r)
	if payload != "refused" {
		t.Fatalf("got %q", payload)
	}
	// PUBREC with reason 0x80 (unspecified error), no properties, then a
	// PINGREQ: its PINGRESP says the server has handled the PUBREC (one
	// connection's packets are handled in order).
	if _, err := c.Write([]byte{0x50, 4, id[0], id[1], 0x80, 0, 0xc0, 0}); err != nil {
		t.Fatal(err)
	}
	if typ, body, err := apptest.ReadRawPacket(r, nil); err != nil || typ != 0xd0 {
		t.Fatalf("want PINGRESP, got %x %x: %v", typ, body, err)
	}
	c.Close()
	pub.Disconnect(0)
	apptest.Stop(t, a)

	a = apptest.Run(t, cfg)
	c, r = apptest.RawClient(t, a.Addr("mqtt"), "rej", 5, false, true, 3600)
	// A session resends what it has in flight before anything new: the
	// first message must be this one, not "refused".
	pub = apptest.V3(t, apptest.URL(a), "sender")
	apptest.Done(t, pub.Publish("rej/t", 2, false, "after"))
	if _, payload := nextPublish(r); payload != "after" {
		t.Fatalf("after the restart the session got %q first, want after: the refused message came back", payload)
	}
}

// TestSubscribeWithAnIDInUse: a SUBSCRIBE with the id of the client's own
// QoS 2 publish still waiting for its PUBREL is refused, with 0x80 for an
// MQTT 3.1.1 client (upstream sent 0x91, which 3.1.1 does not have), and
// the same id subscribes once the publish is complete.
func TestSubscribeWithAnIDInUse(t *testing.T) {
	a := apptest.Run(t, apptest.Config(t))
	c, r := apptest.RawClient(t, a.Addr("mqtt"), "inuse", 4, true, false, 0)
	subscribe := append([]byte{0x82, 2 + 2 + 5 + 1, 0, 5, 0, 5}, "use/t"...)
	subscribe = append(subscribe, 1)
	apptest.RawExchange(t, c, r,
		apptest.RawStep{Send: append([]byte{0x34, 2 + 5 + 2 + 1, 0, 5, 'u', 's', 'e', '/', 'x', 0, 5}, 'p'), Want: []byte{0x50, 2, 0, 5}},
		apptest.RawStep{Send: subscribe, Want: []byte{0x90, 3, 0, 5, 0x80}},
		apptest.RawStep{Send: []byte{0x62, 2, 0, 5}, Want: []byte{0x70, 2, 0, 5}},
		apptest.RawStep{Send: subscribe, Want: []byte{0x90, 3, 0, 5, 1}})
}
