// Tests of Colony's fan-out patches (PATCHES.md P12, P13, P14). Run from the
// repository root: go test github.com/mochi-mqtt/server/v2/...

package mqtt

import (
	"bufio"
	"io"
	"log/slog"
	"net"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/hooks/storage"
	"github.com/mochi-mqtt/server/v2/packets"
)

// allowHook lets every client connect and use every topic.
type allowHook struct{ HookBase }

func (h *allowHook) ID() string { return "allow" }
func (h *allowHook) Provides(b byte) bool {
	return b == OnConnectAuthenticate || b == OnACLCheck
}
func (h *allowHook) OnConnectAuthenticate(*Client, packets.Packet) bool { return true }
func (h *allowHook) OnACLCheck(*Client, string, bool) bool              { return true }

func testServer(t *testing.T, hooks ...Hook) *Server {
	t.Helper()
	s := New(&Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	for _, h := range append([]Hook{&allowHook{}}, hooks...) {
		if err := s.AddHook(h, nil); err != nil {
			t.Fatal(err)
		}
	}
	return s
}

// testSubscriber is a client of s on one end of a pipe, subscribed to
// sub; the test reads what the server writes from the other end.
type testSubscriber struct {
	cl *Client
	r  *bufio.Reader
	c  net.Conn
}

func subscribe(t *testing.T, s *Server, id string, version byte, props packets.Properties, sub packets.Subscription) *testSubscriber {
	t.Helper()
	srv, cli := net.Pipe()
	t.Cleanup(func() { cli.Close(); srv.Close() })
	cl := s.NewClient(srv, "test", id, false)
	cl.Properties.ProtocolVersion = version
	cl.Properties.Props = props
	cl.State.TopicAliases.Outbound = NewOutboundTopicAliases(props.TopicAliasMaximum)
	s.Clients.Add(cl)
	s.Topics.Subscribe(id, sub)
	cl.State.Subscriptions.Add(sub.Filter, sub)
	return &testSubscriber{cl: cl, r: bufio.NewReader(cli), c: cli}
}

// next reads the next PUBLISH, or fails after a second.
func (ts *testSubscriber) next(t *testing.T) packets.Packet {
	t.Helper()
	pk, err := ts.read(time.Second)
	if err != nil {
		t.Fatalf("%s: %v", ts.cl.ID, err)
	}
	return pk
}

func (ts *testSubscriber) read(wait time.Duration) (packets.Packet, error) {
	_ = ts.c.SetReadDeadline(time.Now().Add(wait))
	b, err := ts.r.ReadByte()
	if err != nil {
		return packets.Packet{}, err
	}
	pk := packets.Packet{ProtocolVersion: ts.cl.Properties.ProtocolVersion}
	if err := pk.FixedHeader.Decode(b); err != nil {
		return pk, err
	}
	n, _, err := packets.DecodeLength(ts.r)
	if err != nil {
		return pk, err
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(ts.r, body); err != nil {
		return pk, err
	}
	return pk, pk.PublishDecode(body)
}

func testPublish(retain bool) packets.Packet {
	return packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish, Retain: retain},
		TopicName:   "a/b",
		Payload:     []byte("hello"),
		Properties: packets.Properties{
			ContentType: "text/plain",
			User:        []packets.UserProperty{{Key: "k", Val: "v"}},
		},
		Origin: "publisher",
	}
}

// TestFanOutQoS0PerSubscriberForms publishes one retained QoS 0 message to
// subscribers whose deliveries differ (protocol version, retain as
// published, subscription identifier, topic alias, problem information,
// packet size limit): each must get exactly what it would get from its
// own encoding (P13 shares one encoding per form).
func TestFanOutQoS0PerSubscriberForms(t *testing.T) {
	s := testServer(t)
	f := "a/b"
	v3 := subscribe(t, s, "v3", 4, packets.Properties{}, packets.Subscription{Filter: f, Qos: 1})
	v3b := subscribe(t, s, "v3b", 4, packets.Properties{}, packets.Subscription{Filter: "a/+"})
	v5 := subscribe(t, s, "v5", 5, packets.Properties{}, packets.Subscription{Filter: f})
	rap := subscribe(t, s, "rap", 5, packets.Properties{}, packets.Subscription{Filter: f, RetainAsPublished: true})
	id := subscribe(t, s, "id", 5, packets.Properties{}, packets.Subscription{Filter: f, Identifier: 7})
	alias := subscribe(t, s, "alias", 5, packets.Properties{TopicAliasMaximum: 5}, packets.Subscription{Filter: f})
	noInfo := subscribe(t, s, "noinfo", 5, packets.Properties{RequestProblemInfoFlag: true}, packets.Subscription{Filter: f})
	small := subscribe(t, s, "small", 5, packets.Properties{MaximumPacketSize: 20}, packets.Subscription{Filter: f})

	s.publishToSubscribers(testPublish(true))

	for _, ts := range []*testSubscriber{v3, v3b} {
		pk := ts.next(t)
		if pk.TopicName != f || string(pk.Payload) != "hello" || pk.FixedHeader.Qos != 0 || pk.FixedHeader.Retain || pk.FixedHeader.Dup {
			t.Errorf("%s: got %+v", ts.cl.ID, pk.FixedHeader)
		}
	}
	check := func(ts *testSubscriber, retain bool, ids []int, alias uint16, user bool) {
		t.Helper()
		pk := ts.next(t)
		if pk.FixedHeader.Retain != retain || pk.FixedHeader.Qos != 0 || string(pk.Payload) != "hello" {
			t.Errorf("%s: header %+v payload %q", ts.cl.ID, pk.FixedHeader, pk.Payload)
		}
		if !slices.Equal(pk.Properties.SubscriptionIdentifier, ids) {
			t.Errorf("%s: subscription identifiers %v, want %v", ts.cl.ID, pk.Properties.SubscriptionIdentifier, ids)
		}
		if pk.Properties.TopicAlias != alias || pk.TopicName != f {
			t.Errorf("%s: topic %q alias %d, want %q alias %d", ts.cl.ID, pk.TopicName, pk.Properties.TopicAlias, f, alias)
		}
		if got := len(pk.Properties.User) == 1; got != user {
			t.Errorf("%s: user properties %v", ts.cl.ID, pk.Properties.User)
		}
		if pk.Properties.ContentType != "text/plain" {
			t.Errorf("%s: content type %q", ts.cl.ID, pk.Properties.ContentType)
		}
		// No expiry was asked for, so the server's maximum applies [MQTT-3.3.2-6].
		if e := pk.Properties.MessageExpiryInterval; e < 86399 || e > 86400 {
			t.Errorf("%s: message expiry interval %d", ts.cl.ID, e)
		}
	}
	check(v5, false, nil, 0, true)
	check(rap, true, nil, 0, true)
	check(id, false, []int{7}, 0, true)
	check(alias, false, nil, 1, true)
	check(noInfo, false, nil, 0, false)
	if pk, err := small.read(100 * time.Millisecond); err == nil {
		t.Errorf("small: got a %d-byte publish over its 20-byte limit: %+v", len(pk.Payload), pk)
	}

	// The alias is known now: the second delivery has no topic name.
	s.publishToSubscribers(testPublish(false))
	if pk := alias.next(t); pk.Properties.TopicAlias != 1 || pk.TopicName != "" {
		t.Errorf("alias: second delivery topic %q alias %d", pk.TopicName, pk.Properties.TopicAlias)
	}
	if pk := v3.next(t); string(pk.Payload) != "hello" {
		t.Errorf("v3: second delivery %q", pk.Payload)
	}
	// 7 deliveries of the first message (not to small), 2 read of the second.
	deadline := time.Now().Add(time.Second)
	for atomic.LoadInt64(&s.Info.MessagesSent) < 9 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if got := atomic.LoadInt64(&s.Info.MessagesSent); got != 9 {
		t.Errorf("messages sent %d, want 9", got)
	}
}

// TestFanOutSharedEncodingIsStaleSafe makes the expiry interval encoded
// for MQTT 5 subscribers out of date: the writer must encode afresh.
func TestFanOutSharedEncodingIsStaleSafe(t *testing.T) {
	s := testServer(t)
	v5 := subscribe(t, s, "v5", 5, packets.Properties{}, packets.Subscription{Filter: "a/b"})
	pk := testPublish(false)
	pk.Created = time.Now().Unix()
	pk.Expiry = pk.Created + 100
	var shared sharedPublishes
	form, ok := s.shareable(v5.cl, packets.Subscription{Filter: "a/b"}, &pk, false)
	if !ok {
		t.Fatal("a plain MQTT 5 delivery is not shareable")
	}
	sp := s.sharedFor(&pk, form, &shared)
	if sp2 := s.sharedFor(&pk, form, &shared); sp2 != sp {
		t.Fatal("the same form was encoded twice")
	}
	sp.interval += 50 // as if encoded 50 s ago
	go func() { _ = v5.cl.writeShared(sp, false) }()
	if got := v5.next(t).Properties.MessageExpiryInterval; got < 99 || got > 100 {
		t.Fatalf("message expiry interval %d, want 100 (encoded afresh)", got)
	}
}

// encodeHook changes the payload of every packet for one client.
type encodeHook struct {
	HookBase
	client string
}

func (h *encodeHook) ID() string           { return "encode" }
func (h *encodeHook) Provides(b byte) bool { return b == OnPacketEncode }
func (h *encodeHook) OnPacketEncode(cl *Client, pk packets.Packet) packets.Packet {
	if cl.ID == h.client && pk.FixedHeader.Type == packets.Publish {
		pk.Payload = append(append([]byte{}, pk.Payload...), '!')
	}
	return pk
}

// TestFanOutEncodeHookSeesEveryClient: with a hook that changes packets
// per client, nothing is shared.
func TestFanOutEncodeHookSeesEveryClient(t *testing.T) {
	s := testServer(t, &encodeHook{client: "b"})
	a := subscribe(t, s, "a", 4, packets.Properties{}, packets.Subscription{Filter: "a/b"})
	b := subscribe(t, s, "b", 4, packets.Properties{}, packets.Subscription{Filter: "a/b"})
	s.publishToSubscribers(testPublish(false))
	if got := string(a.next(t).Payload); got != "hello" {
		t.Errorf("a got %q", got)
	}
	if got := string(b.next(t).Payload); got != "hello!" {
		t.Errorf("b got %q, want the hook's change", got)
	}
}

// countingHook counts how often it is asked what it provides.
type countingHook struct {
	HookBase
	asked atomic.Int64
	seen  atomic.Int64
}

func (h *countingHook) ID() string { return "counting" }
func (h *countingHook) Provides(b byte) bool {
	h.asked.Add(1)
	return b == OnPublished
}
func (h *countingHook) OnPublished(*Client, packets.Packet) { h.seen.Add(1) }

// TestHooksProvidesAskedOnce: P12 asks a hook what it provides when it is
// added, not on every event, and still calls it for its events only.
func TestHooksProvidesAskedOnce(t *testing.T) {
	h := &countingHook{}
	s := testServer(t, h)
	asked := h.asked.Load()
	for i := 0; i < 100; i++ {
		s.hooks.OnPublished(nil, packets.Packet{})
		s.hooks.OnPublish(nil, packets.Packet{})
		s.hooks.OnPacketSent(nil, packets.Packet{}, nil)
	}
	if h.asked.Load() != asked {
		t.Errorf("Provides asked %d more times after Add", h.asked.Load()-asked)
	}
	if h.seen.Load() != 100 {
		t.Errorf("OnPublished called %d times, want 100", h.seen.Load())
	}
	if !s.hooks.Provides(OnPublished) || s.hooks.Provides(OnPacketSent) || !s.hooks.Provides(OnPacketSent, OnACLCheck) {
		t.Error("Hooks.Provides disagrees with the hooks")
	}
}

// TestMergeIdentifiers: P14 leaves a subscription merged with itself
// without an Identifiers map; merging two filters keeps both identifiers.
func TestMergeIdentifiers(t *testing.T) {
	a := packets.Subscription{Filter: "a/+", Identifier: 3, Qos: 0}
	if m := a.Merge(a); m.Identifiers != nil || m.Identifier != 3 {
		t.Errorf("self merge: %+v", m)
	}
	b := packets.Subscription{Filter: "a/#", Identifier: 5, Qos: 1, NoLocal: true}
	m := a.Merge(a).Merge(b)
	if m.Identifiers["a/+"] != 3 || m.Identifiers["a/#"] != 5 || m.Qos != 1 || m.NoLocal {
		t.Errorf("merge: %+v", m) // P30: a/+ still takes the client's own messages
	}
	a.NoLocal = true
	if m := a.Merge(a).Merge(b); !m.NoLocal {
		t.Errorf("merge of two No Local subscriptions: %+v", m)
	}
}

// TestLoadInflightOrderAcrossWrap: the store returns a session's in-flight
// messages by packet id; loadInflight restores them in the order they were
// sent, with ids given out in increasing order that wrapped past 65535
// (P33), and the session's next id follows the newest.
func TestLoadInflightOrderAcrossWrap(t *testing.T) {
	s := testServer(t)
	cl := s.NewClient(nil, "test", "wrap", false)
	s.Clients.Add(cl)
	var msgs []storage.Message
	for _, id := range []uint16{5, 6, 65534, 65535} { // sent 65534, 65535, 5, 6
		msgs = append(msgs, storage.Message{Client: "wrap", PacketID: id, TopicName: "t",
			FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}})
	}
	s.loadInflight(msgs)
	var got []uint16
	for _, pk := range cl.State.Inflight.GetAll(false) {
		got = append(got, pk.PacketID)
	}
	if !slices.Equal(got, []uint16{65534, 65535, 5, 6}) {
		t.Errorf("resend order %v, want [65534 65535 5 6]", got)
	}
	if id, err := cl.NextPacketID(); err != nil || id != 7 {
		t.Errorf("next packet id %d (%v), want 7", id, err)
	}
}
