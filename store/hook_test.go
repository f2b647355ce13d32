package store

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"slices"
	"sync/atomic"
	"testing"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/storage"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/mochi-mqtt/server/v2/system"
	"go.etcd.io/bbolt"
)

// v3Client returns an MQTT 3.1.1 client as mochi would after CONNECT.
func v3Client(id string, clean bool) *mqtt.Client {
	cl := &mqtt.Client{ID: id}
	cl.Properties.ProtocolVersion = 4
	cl.Properties.Clean = clean
	return cl
}

// v5Client returns an MQTT 5 client with the given session expiry.
func v5Client(id string, expiry uint32) *mqtt.Client {
	cl := &mqtt.Client{ID: id}
	cl.Properties.ProtocolVersion = 5
	cl.Properties.Clean = true
	cl.Properties.Props.SessionExpiryInterval = expiry
	cl.Properties.Props.SessionExpiryIntervalFlag = true
	return cl
}

// connected gives cl a live connection, as a client attached by mochi has.
func connected(t *testing.T, cl *mqtt.Client) *mqtt.Client {
	t.Helper()
	a, b := net.Pipe()
	t.Cleanup(func() {
		if err := a.Close(); err != nil {
			t.Error(err)
		}
		if err := b.Close(); err != nil {
			t.Error(err)
		}
	})
	cl.Net.Conn = a
	return cl
}

func publish(id uint16, topic, payload string) packets.Packet {
	return packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1},
		PacketID:    id,
		TopicName:   topic,
		Payload:     []byte(payload),
		Origin:      "pub",
		Created:     1700000000,
		Properties: packets.Properties{
			ContentType: "text/plain",
			User:        []packets.UserProperty{{Key: "k", Val: "v"}},
		},
	}
}

func subscribe(filters ...string) packets.Packet {
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe}}
	for _, f := range filters {
		pk.Filters = append(pk.Filters, packets.Subscription{Filter: f, Qos: 1})
	}
	return pk
}

// establish runs the hooks mochi calls for a new session.
func establish(h *MQTTHook, cl *mqtt.Client, clean bool) {
	pk := packets.Packet{Connect: packets.ConnectParams{Clean: clean}}
	h.OnSessionEstablish(cl, pk)
	h.OnSessionEstablished(cl, pk)
}

// sessionKeys counts the keys of the session buckets.
func sessionKeys(t *testing.T, db *DB) (clients, subs, inflight []string) {
	t.Helper()
	return mqttKeys(t, db, bucketClients), mqttKeys(t, db, bucketSubs), mqttKeys(t, db, bucketInflight)
}

func TestHookPersistenceRule(t *testing.T) {
	inline := &mqtt.Client{ID: mqtt.InlineClientId}
	inline.Net.Inline = true
	cases := []struct {
		cl    *mqtt.Client
		write bool
	}{
		{v3Client("v3-clean", true), false},
		{v3Client("v3-persistent", false), true},
		{v5Client("v5-expiry-0", 0), false},
		{v5Client("v5-expiry-60", 60), true},
		{inline, false},
		{v3Client("nul\x00id", false), false},
	}
	for _, c := range cases {
		t.Run(fmt.Sprintf("%q", c.cl.ID), func(t *testing.T) {
			db := openTest(t, Options{})
			h := db.MQTTHook()
			establish(h, c.cl, c.cl.Properties.Clean)
			h.OnSubscribed(c.cl, subscribe("a/#"), []byte{1})
			h.OnQosPublish(c.cl, publish(1, "a/b", "x"), 1, 0)
			h.OnQosPublish(c.cl, publish(2, "a/b", "x"), 1, 0)
			h.OnQosComplete(c.cl, packets.Packet{PacketID: 2})
			clients, subs, inflight := sessionKeys(t, db)
			got := len(clients) + len(subs) + len(inflight)
			if c.write && got != 3 {
				t.Errorf("persistent client stored %d records, want 3", got)
			}
			if !c.write {
				if got != 0 {
					t.Errorf("non-persistent client stored %d records", got)
				}
				if s := db.Stats(); s.Ops != 0 {
					t.Errorf("non-persistent client queued %d ops, want none", s.Ops)
				}
			}
		})
	}
}

func TestHookInflightKeepsPacketIDs(t *testing.T) {
	db := openTest(t, Options{})
	h := db.MQTTHook()
	cl := v3Client("sub", false)
	establish(h, cl, false)

	out := publish(7, "a/b", "hello")
	out.FixedHeader.Dup = true
	h.OnQosPublish(cl, out, 1700000005, 0)
	h.OnQosPublish(cl, packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pubrec}, PacketID: 9, Created: 1}, 1, 0)
	h.OnQosPublish(cl, packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, PacketID: 11}, 1, 0)
	flush(t, db)

	msgs, err := h.StoredInflightMessages()
	if err != nil {
		t.Fatal(err)
	}
	if len(msgs) != 2 {
		t.Fatalf("%d in-flight records, want 2 (PUBACK entries are not stored): %+v", len(msgs), msgs)
	}
	m := msgs[0]
	if m.Client != "sub" || m.Sent != 1700000005 {
		t.Errorf("record = %+v", m)
	}
	pk := m.ToPacket()
	if pk.PacketID != 7 || pk.FixedHeader.Type != packets.Publish || pk.FixedHeader.Qos != 1 || !pk.FixedHeader.Dup ||
		pk.TopicName != "a/b" || string(pk.Payload) != "hello" || pk.Origin != "pub" || pk.Created != 1700000000 ||
		pk.Properties.ContentType != "text/plain" || len(pk.Properties.User) != 1 {
		t.Errorf("restored packet = %+v", pk)
	}
	if msgs[1].PacketID != 9 || msgs[1].FixedHeader.Type != packets.Pubrec || msgs[1].Created != 1 {
		t.Errorf("second record = %+v", msgs[1])
	}
	if in := mqttKeys(t, db, bucketInbound); len(in) != 1 {
		t.Errorf("inbound keys %q: the client's QoS 2 publish (a PUBREC) is kept apart", in)
	}

	h.OnQosComplete(cl, packets.Packet{PacketID: 7})
	h.OnQosDropped(cl, packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pubrec}, PacketID: 9})
	flush(t, db)
	if _, _, inflight := sessionKeys(t, db); len(inflight) != 0 {
		t.Fatalf("in-flight keys left: %q", inflight)
	}
	if in := mqttKeys(t, db, bucketInbound); len(in) != 0 {
		t.Fatalf("inbound keys left: %q", in)
	}
}

// TestHookClientPacketIDsAreTheirOwn: the client's QoS 2 publish waiting
// for its PUBREL and the server's message in flight to the client under the
// same packet id are two records; ending one leaves the other.
func TestHookClientPacketIDsAreTheirOwn(t *testing.T) {
	db := openTest(t, Options{})
	h := db.MQTTHook()
	cl := v3Client("both", false)
	establish(h, cl, false)
	h.OnQosPublish(cl, publish(1, "a/b", "to the client"), 1, 0)
	h.OnQosPublish(cl, packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pubrec}, PacketID: 1, Created: 2}, 2, 0)
	h.OnQosComplete(cl, packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pubrec}, PacketID: 1})
	flush(t, db)
	msgs, err := h.StoredInflightMessages()
	if err != nil {
		t.Fatal(err)
	}
	if len(msgs) != 1 || msgs[0].FixedHeader.Type != packets.Publish || string(msgs[0].Payload) != "to the client" {
		t.Fatalf("after the client's publish completed: %+v, want the server's message only", msgs)
	}
}

// TestHookMovesOldPubrecs: stores written before engine patch P25 kept the
// PUBREC of a client's QoS 2 publish among the in-flight messages. Loading
// returns it as such, and moves it to the inbound bucket.
func TestHookMovesOldPubrecs(t *testing.T) {
	db := openTest(t, Options{})
	h := db.MQTTHook()
	cl := v3Client("old", false)
	establish(h, cl, false)
	flush(t, db)
	old, err := encode(storage.Message{T: storage.InflightKey, Client: "old", FixedHeader: packets.FixedHeader{Type: packets.Pubrec}, PacketID: 5, Created: 3})
	if err != nil {
		t.Fatal(err)
	}
	err = db.bolt.Update(func(tx *bbolt.Tx) error {
		return tx.Bucket(rootMQTT).Bucket(mqttBucketNames[bucketInflight]).Put(inflightKey("old", 5), old)
	})
	if err != nil {
		t.Fatal(err)
	}
	msgs, err := h.StoredInflightMessages()
	if err != nil {
		t.Fatal(err)
	}
	if len(msgs) != 1 || msgs[0].FixedHeader.Type != packets.Pubrec || msgs[0].PacketID != 5 || msgs[0].Created != 3 {
		t.Fatalf("loaded %+v, want the PUBREC of id 5", msgs)
	}
	flush(t, db)
	if _, _, inflight := sessionKeys(t, db); len(inflight) != 0 {
		t.Errorf("in-flight keys left: %q", inflight)
	}
	if in := mqttKeys(t, db, bucketInbound); len(in) != 1 {
		t.Errorf("inbound keys %q, want the moved PUBREC", in)
	}
}

func TestHookSubscriptions(t *testing.T) {
	db := openTest(t, Options{})
	h := db.MQTTHook()
	cl := v5Client("c", 3600)
	establish(h, cl, true)
	pk := subscribe("a/#", "denied", "$share/g/b")
	pk.Filters[2].NoLocal = false
	pk.Filters[2].Identifier = 5
	pk.Filters[2].RetainHandling = 2
	h.OnSubscribed(cl, pk, []byte{1, packets.ErrNotAuthorized.Code, 2})
	flush(t, db)

	subs, err := h.StoredSubscriptions()
	if err != nil {
		t.Fatal(err)
	}
	if len(subs) != 2 {
		t.Fatalf("subscriptions = %+v, want the 2 granted ones", subs)
	}
	byFilter := map[string]int{}
	for i, s := range subs {
		byFilter[s.Filter] = i
		if s.Client != "c" {
			t.Errorf("subscription %+v has client %q", s, s.Client)
		}
	}
	if s := subs[byFilter["a/#"]]; s.Qos != 1 {
		t.Errorf("a/# = %+v", s)
	}
	if s := subs[byFilter["$share/g/b"]]; s.Qos != 2 || s.Identifier != 5 || s.RetainHandling != 2 {
		t.Errorf("$share/g/b = %+v", s)
	}

	h.OnUnsubscribed(cl, subscribe("a/#"))
	if _, subs, _ := sessionKeys(t, db); !slices.Equal(subs, []string{"c\x00$share/g/b"}) {
		t.Fatalf("subs after unsubscribe = %q", subs)
	}
}

func TestHookDisconnect(t *testing.T) {
	t.Run("expire deletes the session", func(t *testing.T) {
		db := openTest(t, Options{})
		h := db.MQTTHook()
		cl := connected(t, v5Client("c", 60))
		establish(h, cl, true)
		h.OnSubscribed(cl, subscribe("a"), []byte{0})
		h.OnQosPublish(cl, publish(1, "a", "x"), 1, 0)
		flush(t, db)
		// A v5 DISCONNECT may set the expiry to 0, ending the session.
		cl.Properties.Props.SessionExpiryInterval = 0
		h.OnDisconnect(cl, nil, true)
		if c, s, i := sessionKeys(t, db); len(c)+len(s)+len(i) != 0 {
			t.Fatalf("left %q %q %q", c, s, i)
		}
	})
	t.Run("persistent rewrites the record", func(t *testing.T) {
		db := openTest(t, Options{})
		h := db.MQTTHook()
		cl := connected(t, v3Client("c", false))
		cl.Properties.Will = mqtt.Will{TopicName: "will", Payload: []byte("bye"), Flag: 1}
		establish(h, cl, false)
		flush(t, db)
		if got := storedClient(t, h, "c"); got.Will.TopicName != "will" {
			t.Fatalf("will not stored: %+v", got.Will)
		}
		cl.Properties.Will = mqtt.Will{} // mochi clears it on a clean disconnect
		h.OnDisconnect(cl, nil, false)
		flush(t, db)
		if got := storedClient(t, h, "c"); got.Will.TopicName != "" {
			t.Fatalf("will survived disconnect: %+v", got.Will)
		}
	})
	t.Run("taken over leaves the session", func(t *testing.T) {
		db := openTest(t, Options{})
		h := db.MQTTHook()
		old := connected(t, v3Client("c", true))
		h.OnSessionEstablished(connected(t, v3Client("c", false)), packets.Packet{})
		old.Stop(packets.ErrSessionTakenOver)
		h.OnDisconnect(old, packets.ErrSessionTakenOver, true)
		if clients, _, _ := sessionKeys(t, db); len(clients) != 1 {
			t.Fatalf("taken-over disconnect deleted the new session: %q", clients)
		}
	})
	t.Run("restored client is not rewritten", func(t *testing.T) {
		db := openTest(t, Options{})
		h := db.MQTTHook()
		h.OnDisconnect(v3Client("c", false), packets.ErrServerShuttingDown, false)
		if s := db.Stats(); s.Ops != 0 {
			t.Fatalf("restored client queued %d ops", s.Ops)
		}
	})
}

func storedClient(t *testing.T, h *MQTTHook, id string) storage.Client {
	t.Helper()
	clients, err := h.StoredClients()
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range clients {
		if c.ID == id {
			return c
		}
	}
	t.Fatalf("client %q not stored", id)
	return storage.Client{}
}

func TestHookCleanStartDropsStoredSession(t *testing.T) {
	db := openTest(t, Options{})
	h := db.MQTTHook()
	cl := v5Client("c", 60)
	establish(h, cl, false)
	h.OnSubscribed(cl, subscribe("old"), []byte{1})
	h.OnQosPublish(cl, publish(3, "old", "x"), 1, 0)
	flush(t, db)

	// Same ID reconnects with clean start and a lasting session.
	again := v5Client("c", 60)
	establish(h, again, true)
	clients, subs, inflight := sessionKeys(t, db)
	if !slices.Equal(clients, []string{"c"}) || len(subs) != 0 || len(inflight) != 0 {
		t.Fatalf("after clean start: %q %q %q", clients, subs, inflight)
	}

	// Same ID reconnects with clean start and no lasting session.
	establish(h, v5Client("c", 0), true)
	if c, s, i := sessionKeys(t, db); len(c)+len(s)+len(i) != 0 {
		t.Fatalf("after non-persistent clean start: %q %q %q", c, s, i)
	}
}

func TestHookClientExpiredAfterReopen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "colony.db")
	db, err := Open(path, Options{Logger: testLogger()})
	if err != nil {
		t.Fatal(err)
	}
	h := db.MQTTHook()
	cl := v3Client("c", false)
	establish(h, cl, false)
	h.OnSubscribed(cl, subscribe("a"), []byte{1})
	if err := h.Stop(); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	if err := h.Stop(); err != nil {
		t.Fatalf("Stop after Close: %v", err)
	}

	db = openAt(t, path, Options{})
	h = db.MQTTHook()
	if h != db.MQTTHook() {
		t.Fatal("MQTTHook returned two hooks for one DB")
	}
	// A restored client: mochi builds it from the record, without the
	// session ever being established in this process.
	h.OnClientExpired(v3Client("c", false))
	if c, s, i := sessionKeys(t, db); len(c)+len(s)+len(i) != 0 {
		t.Fatalf("expired session left %q %q %q", c, s, i)
	}
}

func TestHookRetained(t *testing.T) {
	db := openTest(t, Options{})
	h := db.MQTTHook()
	cl := v3Client("pub", true)
	for _, topic := range []string{"r/1", "r/2", "r/3", "r/4"} {
		pk := publish(0, topic, "v-"+topic)
		pk.FixedHeader.Retain = true
		h.OnRetainMessage(cl, pk, 1)
	}
	h.OnRetainMessage(cl, publish(0, "r/2", ""), -1)
	h.OnRetainMessage(cl, publish(0, "r/3", ""), 0) // empty payload clears too
	h.OnRetainedExpired("r/4")
	flush(t, db)
	msgs, err := h.StoredRetainedMessages()
	if err != nil {
		t.Fatal(err)
	}
	if len(msgs) != 1 {
		t.Fatalf("retained = %+v", msgs)
	}
	if pk := msgs[0].ToPacket(); pk.TopicName != "r/1" || string(pk.Payload) != "v-r/1" || !pk.FixedHeader.Retain {
		t.Fatalf("restored = %+v", pk)
	}
}

func TestHookSysInfo(t *testing.T) {
	db := openTest(t, Options{})
	h := db.MQTTHook()
	if info, err := h.StoredSysInfo(); err != nil || info.Info.MessagesReceived != 0 {
		t.Fatalf("empty store: %+v, %v", info, err)
	}
	h.OnSysInfoTick(&system.Info{Version: "x", MessagesReceived: 42})
	h.OnSysInfoTick(&system.Info{Version: "x", MessagesReceived: 43})
	flush(t, db)
	info, err := h.StoredSysInfo()
	if err != nil || info.Info.MessagesReceived != 43 {
		t.Fatalf("sys info = %+v, %v", info, err)
	}
}

func TestHookSkipsBadRecordsAndOrphans(t *testing.T) {
	db := openTest(t, Options{})
	h := db.MQTTHook()
	good := v3Client("good", false)
	establish(h, good, false)
	h.OnSubscribed(good, subscribe("a"), []byte{1})
	h.OnQosPublish(good, publish(1, "a", "x"), 1, 0)
	flush(t, db)
	err := db.bolt.Update(func(tx *bbolt.Tx) error {
		root := tx.Bucket(rootMQTT)
		for b, kv := range map[uint8][2]string{
			bucketClients:  {"bad", "\x01{not json"},
			bucketSubs:     {"ghost\x00a", "\x01{}"},
			bucketInflight: {"ghost\x00\x00\x01", "\x01{}"},
			bucketRetained: {"t", "\x07future format"},
		} {
			if err := root.Bucket(mqttBucketNames[b]).Put([]byte(kv[0]), []byte(kv[1])); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}

	clients, err := h.StoredClients()
	if err != nil || len(clients) != 1 || clients[0].ID != "good" {
		t.Fatalf("clients = %+v, %v", clients, err)
	}
	subs, err := h.StoredSubscriptions()
	if err != nil || len(subs) != 1 || subs[0].Client != "good" {
		t.Fatalf("subs = %+v, %v", subs, err)
	}
	inflight, err := h.StoredInflightMessages()
	if err != nil || len(inflight) != 1 || inflight[0].Client != "good" {
		t.Fatalf("inflight = %+v, %v", inflight, err)
	}
	retained, err := h.StoredRetainedMessages()
	if err != nil || len(retained) != 0 {
		t.Fatalf("retained = %+v, %v", retained, err)
	}
	// The orphans are deleted; the undecodable records are kept for a human.
	if _, s, i := sessionKeys(t, db); len(s) != 1 || len(i) != 1 {
		t.Fatalf("orphans not deleted: %q %q", s, i)
	}
}

func TestHookSyncModeWaitsForCommit(t *testing.T) {
	db := openTest(t, Options{Durability: DurabilitySync})
	h := db.MQTTHook()
	cl := v3Client("c", false)
	h.OnQosPublish(cl, publish(5, "a", "x"), 1, 0) // before the session record, as on a resend
	if v := rawGet(t, db, bucketInflight, string(inflightKey("c", 5))); v == "" {
		t.Fatal("OnQosPublish returned before its commit")
	}
	h.OnSubscribed(cl, subscribe("x", "y"), []byte{1, 1})
	if v := rawGet(t, db, bucketSubs, string(subKey("c", "y"))); v == "" {
		t.Fatal("OnSubscribed returned before its commit")
	}
	pk := publish(0, "r", "v")
	pk.FixedHeader.Retain = true
	h.OnRetainMessage(cl, pk, 1)
	if v := rawGet(t, db, bucketRetained, "r"); v == "" {
		t.Fatal("OnRetainMessage (QoS 1) returned before its commit")
	}
}

func TestHookWritesAfterCloseAreRefused(t *testing.T) {
	db, err := Open(filepath.Join(t.TempDir(), "colony.db"), Options{Logger: testLogger()})
	if err != nil {
		t.Fatal(err)
	}
	h := db.MQTTHook()
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	cl := v3Client("c", false)
	establish(h, cl, false)
	h.OnQosPublish(cl, publish(1, "a", "x"), 1, 0)
	if s := db.Stats(); s.Errors != 2 {
		t.Fatalf("errors = %d, want 2 refused writes", s.Errors)
	}
	if _, err := h.StoredClients(); err == nil {
		t.Fatal("StoredClients on a closed DB returned no error")
	}
}

func TestHookInit(t *testing.T) {
	h := openTest(t, Options{}).MQTTHook()
	if err := h.Init(nil); err != nil {
		t.Fatal(err)
	}
	if err := h.Init(struct{}{}); err == nil {
		t.Fatal("Init accepted a config")
	}
	if h.ID() != "colony-store" || !h.Provides(mqtt.OnQosPublish) || h.Provides(mqtt.OnPublish) {
		t.Fatal("ID or Provides wrong")
	}
}

// BenchmarkHookQosPublish measures the hook path of a QoS 1 message to a
// persistent subscriber: OnQosPublish then OnQosComplete, as when the
// subscriber acks within the batch. Parallel goroutines stand in for
// connections (conns per CPU); in sync mode each OnQosPublish waits for its
// commit, so throughput there comes from group commit across connections.
func BenchmarkHookQosPublish(b *testing.B) {
	for _, d := range []Durability{DurabilityBatch, DurabilityNone, DurabilitySync} {
		for _, conns := range []int{1, 32} {
			b.Run(fmt.Sprintf("%s/conns=%dxCPU", d, conns), func(b *testing.B) {
				benchmarkHookQosPublish(b, d, conns)
			})
		}
	}
}

func benchmarkHookQosPublish(b *testing.B, d Durability, conns int) {
	db := openTest(b, Options{Durability: d})
	h := db.MQTTHook()
	b.SetParallelism(conns)
	b.ReportAllocs()
	b.ResetTimer()
	var n atomicCounter
	b.RunParallel(func(pb *testing.PB) {
		cl := v3Client(fmt.Sprintf("sub-%d", n.next()), false)
		pk := publish(0, "bench/topic", "0123456789abcdef0123456789abcdef")
		var id uint16
		for pb.Next() {
			if id++; id == 0 {
				id = 1
			}
			pk.PacketID = id
			h.OnQosPublish(cl, pk, 1, 0)
			h.OnQosComplete(cl, pk)
		}
	})
	if err := db.Flush(context.Background()); err != nil {
		b.Fatal(err)
	}
	b.StopTimer()
	s := db.Stats()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
	b.ReportMetric(float64(s.Ops)/float64(max(s.Commits, 1)), "ops/commit")
	b.ReportMetric(float64(s.Coalesced)/float64(max(s.Ops, 1))*100, "%coalesced")
}

// atomicCounter hands out distinct numbers to parallel benchmark workers.
type atomicCounter struct{ n atomic.Int64 }

func (c *atomicCounter) next() int64 { return c.n.Add(1) }
