package mqttsn_test

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/colonymq/colony/app"
	"github.com/colonymq/colony/app/apptest"
	"github.com/colonymq/colony/server/mqttsn"
	"github.com/colonymq/colony/server/mqttsn/client"
	"github.com/colonymq/colony/server/mqttsn/packet"
)

// retry is the gateway's and the clients' Tretry in tests: short, so that
// retransmissions happen within a test, but not so short that a busy
// machine retransmits what is merely slow.
const retry = 500 * time.Millisecond

// runSN starts a node with the MQTT-SN gateway on an ephemeral UDP port.
func runSN(t testing.TB, tweak ...func(*app.Config)) *app.App {
	t.Helper()
	cfg := apptest.Config(t)
	cfg.MQTTSN.Listen = "127.0.0.1:0"
	cfg.MQTTSN.RetryInterval = app.Duration(retry)
	cfg.MQTTSN.Predefined = map[string]string{"7": "sensors/predef/temp"}
	for _, f := range tweak {
		f(&cfg)
	}
	return apptest.Run(t, cfg)
}

func ctx(t testing.TB) context.Context {
	c, cancel := context.WithTimeout(context.Background(), apptest.Wait)
	t.Cleanup(cancel)
	return c
}

// dial opens an MQTT-SN client to the node's UDP listener, closed at test end.
func dial(t *testing.T, a *app.App, o client.Options) *client.Client {
	t.Helper()
	return dialAddr(t, a.Addr(mqttsn.ListenerUDP), o)
}

func dialAddr(t *testing.T, addr string, o client.Options) *client.Client {
	t.Helper()
	if o.RetryInterval == 0 {
		o.RetryInterval = retry
	}
	if o.MaxRetries == 0 {
		o.MaxRetries = 10
	}
	if o.Predefined == nil {
		o.Predefined = map[string]uint16{"sensors/predef/temp": 7}
	}
	c, err := client.Dial(ctx(t), addr, o)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Logf("close %s: %v", o.ClientID, err)
		}
	})
	return c
}

func connect(t *testing.T, a *app.App, o client.Options) *client.Client {
	t.Helper()
	c := dial(t, a, o)
	if err := c.Connect(ctx(t)); err != nil {
		t.Fatalf("connect %s: %v", o.ClientID, err)
	}
	return c
}

func nextSN(t *testing.T, c *client.Client) client.Message {
	t.Helper()
	return apptest.Next(t, c.Messages())
}

// TestSNPublishToMQTT: an MQTT-SN device publishes at every QoS and with
// every kind of topic; a paho (MQTT 3.1.1) subscriber gets each message.
func TestSNPublishToMQTT(t *testing.T) {
	a := runSN(t)
	msgs, sink := apptest.Sink()
	sub := apptest.V3(t, apptest.URL(a), "paho-sub")
	apptest.Done(t, sub.Subscribe("#", 2, sink))

	dev := connect(t, a, client.Options{ClientID: "dev-pub", CleanSession: true})
	cases := []struct {
		topic string
		qos   packet.QoS
		want  byte // QoS the subscriber sees
	}{
		{"sensors/a/temp", 0, 0}, // registered topic id
		{"sensors/a/temp", 1, 1},
		{"sensors/a/hum", 2, 2},
		{"sensors/predef/temp", 1, 1}, // predefined id
		{"ab", 1, 1},                  // short topic name
		{"sensors/predef/temp", -1, 0},
		{"cd", -1, 0},
	}
	for i, c := range cases {
		payload := []byte{byte('0' + i)}
		if err := dev.Publish(ctx(t), c.topic, c.qos, false, payload); err != nil {
			t.Fatalf("publish %s qos %d: %v", c.topic, c.qos, err)
		}
		m := apptest.Next(t, msgs)
		if m.Topic() != c.topic || string(m.Payload()) != string(payload) || m.Qos() != c.want {
			t.Fatalf("case %d: paho got %s %q qos %d, want %s %q qos %d", i, m.Topic(), m.Payload(), m.Qos(), c.topic, payload, c.want)
		}
	}
}

// TestQoSMinusOneWithoutConnection: QoS -1 needs no CONNECT at all.
func TestQoSMinusOneWithoutConnection(t *testing.T) {
	a := runSN(t)
	msgs, sink := apptest.Sink()
	sub := apptest.V3(t, apptest.URL(a), "paho-sub")
	apptest.Done(t, sub.Subscribe("sensors/#", 0, sink))
	dev := dial(t, a, client.Options{ClientID: "unused"})
	if err := dev.Publish(ctx(t), "sensors/predef/temp", -1, false, []byte("21.5")); err != nil {
		t.Fatal(err)
	}
	m := apptest.Next(t, msgs)
	if m.Topic() != "sensors/predef/temp" || string(m.Payload()) != "21.5" {
		t.Fatalf("got %s %q", m.Topic(), m.Payload())
	}
}

// TestMQTTToSNSubscriber: paho publishes at QoS 0/1/2; the device gets the
// messages on a wildcard (the gateway REGISTERs each topic first), on a
// plain topic (the id from SUBACK), on a short topic and a predefined one.
func TestMQTTToSNSubscriber(t *testing.T) {
	a := runSN(t)
	dev := connect(t, a, client.Options{ClientID: "dev-sub", CleanSession: true})
	tid, granted, err := dev.Subscribe(ctx(t), "cmd/dev-sub/conf", 1)
	if err != nil || tid == 0 || granted != 1 {
		t.Fatalf("subscribe plain: id %d qos %d err %v", tid, granted, err)
	}
	if tid, _, err := dev.Subscribe(ctx(t), "cmd/+/all/#", 2); err != nil || tid != 0 {
		t.Fatalf("subscribe wildcard: id %d err %v", tid, err)
	}
	for _, f := range []string{"xy", "sensors/predef/temp"} {
		if _, _, err := dev.Subscribe(ctx(t), f, 2); err != nil {
			t.Fatalf("subscribe %s: %v", f, err)
		}
	}
	pub := apptest.V3(t, apptest.URL(a), "paho-pub")
	cases := []struct {
		topic string
		qos   byte
	}{
		{"cmd/dev-sub/conf", 1},
		{"cmd/x/all/a", 0},
		{"cmd/y/all/b/c", 1},
		{"cmd/z/all", 2},
		{"cmd/y/all/b/c", 2}, // a topic the gateway has registered already
		{"xy", 1},
		{"sensors/predef/temp", 2},
	}
	for i, c := range cases {
		payload := []byte{byte('a' + i)}
		apptest.Done(t, pub.Publish(c.topic, c.qos, false, payload))
		m := nextSN(t, dev)
		if m.Topic != c.topic || string(m.Payload) != string(payload) || m.QoS != packet.QoS(c.qos) {
			t.Fatalf("case %d: device got %s %q qos %d, want %s %q qos %d", i, m.Topic, m.Payload, m.QoS, c.topic, payload, c.qos)
		}
	}
	if err := dev.Unsubscribe(ctx(t), "cmd/+/all/#"); err != nil {
		t.Fatal(err)
	}
	apptest.Done(t, pub.Publish("cmd/x/all/after", 1, false, "not for the device"))
	apptest.Done(t, pub.Publish("cmd/dev-sub/conf", 1, false, "still subscribed"))
	if m := nextSN(t, dev); m.Topic != "cmd/dev-sub/conf" {
		t.Fatalf("after unsubscribe got %s %q", m.Topic, m.Payload)
	}
}

// TestSNToSN: two devices through the gateway, both directions of REGISTER.
func TestSNToSN(t *testing.T) {
	a := runSN(t)
	rx := connect(t, a, client.Options{ClientID: "rx", CleanSession: true})
	if _, _, err := rx.Subscribe(ctx(t), "room/#", 1); err != nil {
		t.Fatal(err)
	}
	tx := connect(t, a, client.Options{ClientID: "tx", CleanSession: true})
	for i := range 20 {
		if err := tx.Publish(ctx(t), "room/1/light", 1, false, []byte{byte(i)}); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 20 {
		m := nextSN(t, rx)
		if m.Topic != "room/1/light" || m.Payload[0] != byte(i) {
			t.Fatalf("message %d: %s % x", i, m.Topic, m.Payload)
		}
	}
}

// TestRetainedOnSubscribe: a retained message set over MQTT reaches a device subscribing later.
func TestRetainedOnSubscribe(t *testing.T) {
	a := runSN(t)
	pub := apptest.V3(t, apptest.URL(a), "paho-pub")
	apptest.Done(t, pub.Publish("state/lamp", 1, true, "on"))
	dev := connect(t, a, client.Options{ClientID: "late", CleanSession: true})
	if _, _, err := dev.Subscribe(ctx(t), "state/+", 1); err != nil {
		t.Fatal(err)
	}
	m := nextSN(t, dev)
	if m.Topic != "state/lamp" || string(m.Payload) != "on" || !m.Retain {
		t.Fatalf("got %+v", m)
	}
}

// TestSleepingClientBuffered: messages for a sleeping device wait in the
// gateway and arrive, in order, when it wakes with PINGREQ; then PINGRESP.
func TestSleepingClientBuffered(t *testing.T) {
	a := runSN(t)
	dev := connect(t, a, client.Options{ClientID: "sleeper", CleanSession: false, KeepAlive: 30 * time.Second})
	if _, _, err := dev.Subscribe(ctx(t), "wake/#", 2); err != nil {
		t.Fatal(err)
	}
	pub := apptest.V3(t, apptest.URL(a), "paho-pub")
	apptest.Done(t, pub.Publish("wake/awake", 1, false, "before"))
	if m := nextSN(t, dev); string(m.Payload) != "before" {
		t.Fatalf("awake delivery: %+v", m)
	}
	if err := dev.Sleep(ctx(t), 60*time.Second); err != nil {
		t.Fatal(err)
	}
	if st := a.MQTTSN().Stats(); st.Asleep != 1 {
		t.Fatalf("asleep sessions: %d", st.Asleep)
	}
	want := []struct {
		p   string
		qos byte
	}{{"one", 1}, {"two", 0}, {"three", 2}, {"four", 1}}
	for _, w := range want {
		apptest.Done(t, pub.Publish("wake/x", w.qos, false, w.p)) // QoS 1/2: acknowledged by the broker while the device sleeps
	}
	apptest.None(t, dev.Messages(), 300*time.Millisecond)
	if err := dev.Wake(ctx(t)); err != nil { // returns at PINGRESP: after the buffered messages
		t.Fatal(err)
	}
	for _, w := range want {
		select {
		case m := <-dev.Messages():
			if string(m.Payload) != w.p || m.QoS != packet.QoS(w.qos) {
				t.Fatalf("woke to %q qos %d, want %q qos %d", m.Payload, m.QoS, w.p, w.qos)
			}
		default:
			t.Fatalf("message %q had not arrived by PINGRESP", w.p)
		}
	}
	// Asleep again: the next message waits for the next wake-up.
	apptest.Done(t, pub.Publish("wake/x", 1, false, "five"))
	apptest.None(t, dev.Messages(), 300*time.Millisecond)
	if err := dev.Wake(ctx(t)); err != nil {
		t.Fatal(err)
	}
	if m := nextSN(t, dev); string(m.Payload) != "five" {
		t.Fatalf("second wake-up: %+v", m)
	}
	// CONNECT ends the sleep: the session (subscriptions) is still there.
	if err := dev.Connect(ctx(t)); err != nil {
		t.Fatal(err)
	}
	apptest.Done(t, pub.Publish("wake/x", 1, false, "active"))
	if m := nextSN(t, dev); string(m.Payload) != "active" {
		t.Fatalf("after reconnect: %+v", m)
	}
}

// TestWillOnKeepAliveExpiry: a device that falls silent past 1.5 × its
// keep-alive is lost and its will is published; one that disconnects is not.
func TestWillOnKeepAliveExpiry(t *testing.T) {
	a := runSN(t)
	msgs, sink := apptest.Sink()
	sub := apptest.V3(t, apptest.URL(a), "watcher")
	apptest.Done(t, sub.Subscribe("status/#", 1, sink))

	polite := connect(t, a, client.Options{ClientID: "polite", CleanSession: true, KeepAlive: time.Second,
		Will: &client.Will{Topic: "status/polite", Payload: []byte("gone"), QoS: 1}})
	if err := polite.Disconnect(ctx(t)); err != nil {
		t.Fatal(err)
	}
	dev := connect(t, a, client.Options{ClientID: "mortal", CleanSession: true, KeepAlive: time.Second,
		Will: &client.Will{Topic: "status/mortal", Payload: []byte("lost"), QoS: 1, Retain: true}})
	if err := dev.Publish(ctx(t), "status/mortal", 1, true, []byte("alive")); err != nil {
		t.Fatal(err)
	}
	if m := apptest.Next(t, msgs); string(m.Payload()) != "alive" {
		t.Fatalf("first message %s %q", m.Topic(), m.Payload())
	}
	if err := dev.Close(); err != nil { // silent from now on
		t.Fatal(err)
	}
	m := apptest.Next(t, msgs)
	for m.Topic() == "status/mortal" && string(m.Payload()) == "alive" {
		// QoS 1 is at least once: a second "alive" is allowed (seen once in
		// CI, right after the first; cause not found, see the stop note).
		m = apptest.Next(t, msgs)
	}
	if m.Topic() != "status/mortal" || string(m.Payload()) != "lost" {
		t.Fatalf("will: %s %q (the polite client's will must never come)", m.Topic(), m.Payload())
	}
	if st := a.MQTTSN().Stats(); st.Lost != 1 || st.WillsPublished != 1 {
		t.Fatalf("stats: %+v", st)
	}
	// Retained like the will said.
	late := apptest.V3(t, apptest.URL(a), "late")
	got, sink2 := apptest.Sink()
	apptest.Done(t, late.Subscribe("status/mortal", 1, sink2))
	if m := apptest.Next(t, got); string(m.Payload()) != "lost" || !m.Retained() {
		t.Fatalf("retained will: %q retained %v", m.Payload(), m.Retained())
	}
}

// TestWillUpdate: WILLTOPICUPD and WILLMSGUPD replace the will a lost device leaves.
func TestWillUpdate(t *testing.T) {
	a := runSN(t)
	msgs, sink := apptest.Sink()
	sub := apptest.V3(t, apptest.URL(a), "watcher")
	apptest.Done(t, sub.Subscribe("w/#", 1, sink))
	dev := connect(t, a, client.Options{ClientID: "changer", CleanSession: true, KeepAlive: time.Second,
		Will: &client.Will{Topic: "w/old", Payload: []byte("old")}})
	if err := dev.UpdateWill(ctx(t), client.Will{Topic: "w/new", Payload: []byte("new"), QoS: 1}); err != nil {
		t.Fatal(err)
	}
	if err := dev.Close(); err != nil {
		t.Fatal(err)
	}
	if m := apptest.Next(t, msgs); m.Topic() != "w/new" || string(m.Payload()) != "new" {
		t.Fatalf("will: %s %q", m.Topic(), m.Payload())
	}
}

// TestACLAppliesToDevices: devices pass the same ACL as MQTT clients.
func TestACLAppliesToDevices(t *testing.T) {
	acl := filepath.Join(t.TempDir(), "acl")
	if err := os.WriteFile(acl, []byte("topic readwrite open/#\ntopic read ro/#\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	a := runSN(t, func(c *app.Config) { c.Auth.ACLFile = acl })
	dev := connect(t, a, client.Options{ClientID: "limited", CleanSession: true})
	if err := dev.Publish(ctx(t), "open/x", 1, false, []byte("ok")); err != nil {
		t.Fatalf("allowed publish: %v", err)
	}
	if err := dev.Publish(ctx(t), "ro/x", 1, false, []byte("no")); err == nil {
		t.Fatal("publish to a read-only topic was accepted")
	}
	if _, _, err := dev.Subscribe(ctx(t), "secret/#", 1); err == nil {
		t.Fatal("subscription to a topic outside the ACL was accepted")
	}
	if err := dev.Publish(ctx(t), "$SYS/x", 1, false, []byte("no")); err == nil {
		t.Fatal("publish to $SYS was accepted")
	}
}

// TestMalformedDatagram: garbage is dropped and counted, and the gateway serves on.
func TestMalformedDatagram(t *testing.T) {
	a := runSN(t)
	dev := connect(t, a, client.Options{ClientID: "sane", CleanSession: true})
	for _, b := range [][]byte{{0xff}, {9, 0x0C, 0}, {0x01, 0, 3, 0x0C}, {4, 0x04, 0, 0x07}} {
		if err := dev.SendRaw(b); err != nil {
			t.Fatal(err)
		}
	}
	if err := dev.Ping(ctx(t)); err != nil { // after the garbage, on the same socket
		t.Fatal(err)
	}
	if st := a.MQTTSN().Stats(); st.Malformed != 4 {
		t.Fatalf("malformed: %d", st.Malformed)
	}
}

// rawDevice is a socket that speaks MQTT-SN by hand, to see exactly what
// the gateway sends.
type rawDevice struct {
	t *testing.T
	c *net.UDPConn
}

func newRaw(t *testing.T, addr string) *rawDevice {
	ra, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.DialUDP("udp", nil, ra)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &rawDevice{t: t, c: c}
}

func (r *rawDevice) send(p packet.Packet) {
	r.t.Helper()
	b, err := packet.Encode(p)
	if err != nil {
		r.t.Fatal(err)
	}
	if _, err := r.c.Write(b); err != nil {
		r.t.Fatal(err)
	}
}

func (r *rawDevice) recv() packet.Packet {
	r.t.Helper()
	p, ok := r.recvWithin(apptest.Wait)
	if !ok {
		r.t.Fatal("read: no datagram within the Wait")
	}
	return p
}

// recvWithin returns the next datagram, or false if none came within d.
func (r *rawDevice) recvWithin(d time.Duration) (packet.Packet, bool) {
	r.t.Helper()
	buf := make([]byte, 2048)
	if err := r.c.SetReadDeadline(time.Now().Add(d)); err != nil {
		r.t.Fatal(err)
	}
	n, err := r.c.Read(buf)
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return nil, false
	}
	if err != nil {
		r.t.Fatalf("read: %v", err)
	}
	p, err := packet.Decode(buf[:n])
	if err != nil {
		r.t.Fatalf("decode: %v", err)
	}
	return p, true
}

// TestRetransmission: a device that does not answer gets the PUBLISH again
// with DUP set, and is lost after MaxRetries sends.
func TestRetransmission(t *testing.T) {
	a := runSN(t, func(c *app.Config) { c.MQTTSN.MaxRetries = 3 })
	r := newRaw(t, a.Addr(mqttsn.ListenerUDP))
	r.send(&packet.Connect{Flags: packet.Flags{CleanSession: true}, Duration: 60, ClientID: "deaf"})
	if ack, ok := r.recv().(*packet.Connack); !ok || ack.ReturnCode != packet.Accepted {
		t.Fatalf("connack: %#v", ack)
	}
	r.send(&packet.Subscribe{Flags: packet.Flags{QoS: 1, TopicIDType: packet.TopicShort}, MsgID: 1, TopicID: 0x6869}) // "hi"
	if sa, ok := r.recv().(*packet.Suback); !ok || sa.ReturnCode != packet.Accepted {
		t.Fatalf("suback: %#v", sa)
	}
	pub := apptest.V3(t, apptest.URL(a), "paho-pub")
	apptest.Done(t, pub.Publish("hi", 1, false, "x"))
	first, ok := r.recv().(*packet.Publish)
	if !ok || first.Flags.DUP || first.Flags.TopicIDType != packet.TopicShort {
		t.Fatalf("first send: %#v", first)
	}
	again, ok := r.recv().(*packet.Publish) // not answered: sent again after Tretry
	if !ok || !again.Flags.DUP || again.MsgID != first.MsgID || string(again.Data) != "x" {
		t.Fatalf("retransmission: %#v", again)
	}
	third, ok := r.recv().(*packet.Publish)
	if !ok || !third.Flags.DUP {
		t.Fatalf("third send: %#v", third)
	}
	// Third send unanswered: the device is lost.
	deadline := time.Now().Add(apptest.Wait)
	for a.MQTTSN().Stats().Lost == 0 {
		if time.Now().After(deadline) {
			t.Fatal("device not lost after its retries")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if st := a.MQTTSN().Stats(); st.Retransmissions != 2 {
		t.Fatalf("retransmissions: %d", st.Retransmissions)
	}
}

// TestNoSessionAnswersDisconnect: a device the gateway does not know is told to connect.
func TestNoSessionAnswersDisconnect(t *testing.T) {
	a := runSN(t)
	r := newRaw(t, a.Addr(mqttsn.ListenerUDP))
	r.send(&packet.Publish{Flags: packet.Flags{QoS: 1}, TopicID: 1, MsgID: 1, Data: []byte("x")})
	if _, ok := r.recv().(*packet.Disconnect); !ok {
		t.Fatal("no DISCONNECT for a publish without a session")
	}
	// An unknown topic id in a session: PUBACK "invalid topic id".
	r.send(&packet.Connect{Flags: packet.Flags{CleanSession: true}, Duration: 60, ClientID: "forgetful"})
	r.recv()
	r.send(&packet.Publish{Flags: packet.Flags{QoS: 1}, TopicID: 99, MsgID: 2, Data: []byte("x")})
	if ack, ok := r.recv().(*packet.Puback); !ok || ack.ReturnCode != packet.RejectedTopicID || ack.MsgID != 2 {
		t.Fatalf("puback: %#v", ack)
	}
}

// TestSearchGWAndAdvertise: SEARCHGW is answered with GWINFO, and ADVERTISE
// is broadcast every interval to advertise_addr.
func TestSearchGWAndAdvertise(t *testing.T) {
	listen, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer listen.Close()
	a := runSN(t, func(c *app.Config) {
		c.MQTTSN.GatewayID = 42
		c.MQTTSN.Advertise = app.Duration(time.Second)
		c.MQTTSN.AdvertiseAddr = listen.LocalAddr().String()
	})
	dev := dial(t, a, client.Options{ClientID: "seeker"})
	id, err := dev.SearchGW(ctx(t))
	if err != nil || id != 42 {
		t.Fatalf("searchgw: id %d err %v", id, err)
	}
	buf := make([]byte, 64)
	for range 2 { // the first at start, the second an interval later
		if err := listen.SetReadDeadline(time.Now().Add(apptest.Wait)); err != nil {
			t.Fatal(err)
		}
		n, err := listen.Read(buf)
		if err != nil {
			t.Fatal(err)
		}
		p, err := packet.Decode(buf[:n])
		adv, ok := p.(*packet.Advertise)
		if err != nil || !ok || adv.GatewayID != 42 || adv.Duration != 1 {
			t.Fatalf("advertise: %#v %v", p, err)
		}
	}
}

// TestResumeFromNewAddress: a device whose address changed (NAT, reboot)
// CONNECTs again without CleanSession and keeps its subscriptions.
func TestResumeFromNewAddress(t *testing.T) {
	a := runSN(t)
	first := connect(t, a, client.Options{ClientID: "roamer", CleanSession: false})
	if _, _, err := first.Subscribe(ctx(t), "roam/+", 1); err != nil {
		t.Fatal(err)
	}
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}
	second := connect(t, a, client.Options{ClientID: "roamer", CleanSession: false})
	pub := apptest.V3(t, apptest.URL(a), "paho-pub")
	apptest.Done(t, pub.Publish("roam/here", 1, false, "found"))
	if m := nextSN(t, second); m.Topic != "roam/here" || string(m.Payload) != "found" {
		t.Fatalf("got %+v", m)
	}
	if st := a.MQTTSN().Stats(); st.Sessions != 1 {
		t.Fatalf("sessions: %d", st.Sessions)
	}
}
