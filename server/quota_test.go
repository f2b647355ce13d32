package server_test

import (
	"bufio"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/colonymq/colony/app/apptest"
)

// TestSmallReceiveMaximumGetsEverything: an MQTT 5 subscriber that accepts
// only a few unacknowledged messages at once (Receive Maximum) still gets
// every message, in order, however many more are published meanwhile. The
// messages over its quota wait in flight and go out as acknowledgements
// free the quota.
func TestSmallReceiveMaximumGetsEverything(t *testing.T) {
	for _, qos := range []byte{1, 2} {
		t.Run(fmt.Sprintf("qos%d", qos), func(t *testing.T) {
			a := apptest.Run(t, apptest.Config(t))
			rm := uint16(2)
			sub := apptest.V5(t, a.Addr("mqtt"), &paho.Connect{ClientID: "rm-sub", CleanStart: true,
				Properties: &paho.ConnectProperties{ReceiveMaximum: &rm}})
			if _, err := sub.Subscribe(apptest.Ctx(t), &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "rm/t", QoS: qos}}}); err != nil {
				t.Fatal(err)
			}
			pub := apptest.V3(t, apptest.URL(a), "rm-pub")
			const n = 50
			for i := range n {
				apptest.Done(t, pub.Publish("rm/t", qos, false, fmt.Sprint(i)))
			}
			for i := range n {
				m := apptest.Next(t, sub.Msgs)
				if string(m.Payload) != fmt.Sprint(i) {
					t.Fatalf("message %d: got %q", i, m.Payload)
				}
			}
		})
	}
}

// rawSubscriber connects an MQTT 5 raw client with the CONNECT properties
// props (clean start) and subscribes it to the one-level topic at qos.
func rawSubscriber(t *testing.T, addr, id string, props []byte, topic string, qos byte) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, r := apptest.RawClientWith(t, addr, id, 5, true, false, props)
	sub := append([]byte{0x82, byte(2 + 1 + 2 + len(topic) + 1), 0, 1, 0, 0, byte(len(topic))}, topic...)
	apptest.RawExchange(t, c, r, apptest.RawStep{Send: append(sub, qos), Want: []byte{0x90, 4, 0, 1, 0, qos}})
	return c, r
}

// rawPublish reads an MQTT 5 PUBLISH (QoS 1 or 2, properties under 128
// bytes) and checks its payload and DUP flag; it returns its packet id.
func rawPublish(t *testing.T, r *bufio.Reader, payload string, dup bool) (id [2]byte) {
	t.Helper()
	typ, body, err := apptest.ReadRawPacket(r, nil)
	if err != nil || typ&0xf0 != 0x30 {
		t.Fatalf("want PUBLISH %s, got %x %x: %v", payload, typ, body, err)
	}
	tl := int(body[0])<<8 | int(body[1])
	props := int(body[4+tl])
	if got := string(body[5+tl+props:]); got != payload || (typ&0x08 != 0) != dup {
		t.Fatalf("want PUBLISH %s (dup %v), got %q (flags %x)", payload, dup, got, typ&0x0f)
	}
	return [2]byte{body[2+tl], body[3+tl]}
}

// rawSend writes b to c.
func rawSend(t *testing.T, c net.Conn, b ...byte) {
	t.Helper()
	if _, err := c.Write(b); err != nil {
		t.Fatal(err)
	}
}

// TestReceiveMaximumAcrossReconnect: a subscriber with Receive Maximum 2
// gets two messages, and the three published after them wait. It leaves
// without acknowledging and comes back: the two are resent (DUP) and the
// three still wait, since the quota counts the resent ones; each
// acknowledgement then lets the next one through, in order, without DUP:
// they were never sent. Upstream mochi resent all five at once and, before
// that, deleted a held message from the session once it was sent, so its
// acknowledgement was ignored.
func TestReceiveMaximumAcrossReconnect(t *testing.T) {
	a := apptest.Run(t, apptest.Config(t))
	props := []byte{0x11, 0, 0, 0x0e, 0x10, 0x21, 0, 2} // session expiry 3600 s, Receive Maximum 2
	c, r := rawSubscriber(t, a.Addr("mqtt"), "rmx", props, "rm/t", 1)
	pub := apptest.V3(t, apptest.URL(a), "rmx-pub")
	for i := range 5 {
		apptest.Done(t, pub.Publish("rm/t", 1, false, fmt.Sprint(i)))
	}
	quiet := func(c net.Conn) { // nothing sent beyond the quota: PINGRESP comes next
		t.Helper()
		apptest.RawExchange(t, c, r, apptest.RawStep{Send: []byte{0xc0, 0}, Want: []byte{0xd0, 0}})
	}
	rawPublish(t, r, "0", false)
	rawPublish(t, r, "1", false)
	quiet(c)
	c.Close()

	c, r = apptest.RawClientWith(t, a.Addr("mqtt"), "rmx", 5, false, true, props)
	unacked := [][2]byte{rawPublish(t, r, "0", true), rawPublish(t, r, "1", true)}
	quiet(c)
	for i := 2; i < 5; i++ {
		rawSend(t, c, 0x40, 2, unacked[0][0], unacked[0][1])                  // PUBACK
		unacked = append(unacked[1:], rawPublish(t, r, fmt.Sprint(i), false)) // never sent before
	}
	for _, id := range unacked {
		rawSend(t, c, 0x40, 2, id[0], id[1])
	}
	quiet(c)
}

// TestSentMessageOutlivesItsExpiry: a message sent to a connected client
// is not expired while it waits for its acknowledgement (its delivery has
// started, MQTT-3.3.2-5), so the acknowledgement, however late, gives the
// send quota back and the held message behind it goes out. Upstream
// deleted it at expiry, the late PUBACK was ignored and, with Receive
// Maximum 1, nothing was ever sent to the client again.
func TestSentMessageOutlivesItsExpiry(t *testing.T) {
	a := apptest.Run(t, apptest.Config(t))
	c, r := rawSubscriber(t, a.Addr("mqtt"), "exp", []byte{0x21, 0, 1}, "ex/t", 1) // Receive Maximum 1
	pub := apptest.V5(t, a.Addr("mqtt"), &paho.Connect{ClientID: "exp-pub", CleanStart: true})
	second := uint32(1)
	for i, props := range []*paho.PublishProperties{{MessageExpiry: &second}, nil} {
		if _, err := pub.Publish(apptest.Ctx(t), &paho.Publish{Topic: "ex/t", QoS: 1, Payload: []byte{'0' + byte(i)}, Properties: props}); err != nil {
			t.Fatal(err)
		}
	}
	id := rawPublish(t, r, "0", false)
	// Past the expiry and the server's once-a-second sweep of in-flight
	// messages, acknowledge it.
	time.Sleep(3200 * time.Millisecond)
	rawSend(t, c, 0x40, 2, id[0], id[1])
	rawPublish(t, r, "1", false)
}

// TestRefusedPubrecGivesQuotaBack: a PUBREC that refuses a QoS 2 message
// ends its flow, so it gives the send quota back (MQTT 5 4.9): with
// Receive Maximum 1 the next message goes out. Upstream kept the quota
// used up, and the client got nothing more.
func TestRefusedPubrecGivesQuotaBack(t *testing.T) {
	a := apptest.Run(t, apptest.Config(t))
	c, r := rawSubscriber(t, a.Addr("mqtt"), "rq", []byte{0x21, 0, 1}, "rq/t", 2) // Receive Maximum 1
	pub := apptest.V3(t, apptest.URL(a), "rq-pub")
	apptest.Done(t, pub.Publish("rq/t", 2, false, "0"))
	apptest.Done(t, pub.Publish("rq/t", 2, false, "1"))
	id := rawPublish(t, r, "0", false)
	rawSend(t, c, 0x50, 4, id[0], id[1], 0x80, 0) // PUBREC: unspecified error
	rawPublish(t, r, "1", false)
}
