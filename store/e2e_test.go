package store

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/storage"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"
	"go.etcd.io/bbolt"
)

// e2eTimeout bounds every wait for the network; generous because CI
// machines stall, and never an assertion about speed.
const e2eTimeout = 10 * time.Second

// allowAll admits every client and topic. It stands in for mochi's
// auth.AllowHook, whose package imports gopkg.in/yaml.v3, which this
// module's go.sum does not list.
type allowAll struct{ mqtt.HookBase }

func (h *allowAll) ID() string { return "allow-all" }

func (h *allowAll) Provides(b byte) bool {
	return b == mqtt.OnConnectAuthenticate || b == mqtt.OnACLCheck
}

func (h *allowAll) OnConnectAuthenticate(*mqtt.Client, packets.Packet) bool { return true }

func (h *allowAll) OnACLCheck(*mqtt.Client, string, bool) bool { return true }

// broker is a mochi server persisting into a DB, on an ephemeral port.
type broker struct {
	t      *testing.T
	srv    *mqtt.Server
	db     *DB
	addr   string
	closed bool
}

// startBroker opens the DB at path and serves MQTT on 127.0.0.1:0 with it.
func startBroker(t *testing.T, path string, d Durability) *broker {
	t.Helper()
	db, err := Open(path, Options{Durability: d, Logger: testLogger()})
	if err != nil {
		t.Fatal(err)
	}
	srv := mqtt.New(&mqtt.Options{InlineClient: false, Logger: slog.New(slog.DiscardHandler)})
	if err := srv.AddHook(new(allowAll), nil); err != nil {
		t.Fatal(err)
	}
	if err := srv.AddHook(db.MQTTHook(), nil); err != nil {
		t.Fatal(err)
	}
	l := listeners.NewTCP(listeners.Config{ID: "t", Address: "127.0.0.1:0"})
	if err := srv.AddListener(l); err != nil {
		t.Fatal(err)
	}
	if err := srv.Serve(); err != nil {
		t.Fatal(err)
	}
	b := &broker{t: t, srv: srv, db: db, addr: l.Address()}
	t.Cleanup(b.stop)
	return b
}

// stop closes the server, which flushes the hook, then the DB, in the
// order the server owner must use.
func (b *broker) stop() {
	if b.closed {
		return
	}
	b.closed = true
	if err := b.srv.Close(); err != nil {
		b.t.Errorf("close server: %v", err)
	}
	if err := b.db.Close(); err != nil {
		b.t.Errorf("close db: %v", err)
	}
}

// inbox collects the messages a client receives.
type inbox struct {
	mu   sync.Mutex
	msgs []paho.Message
}

func (in *inbox) add(_ paho.Client, m paho.Message) {
	in.mu.Lock()
	defer in.mu.Unlock()
	in.msgs = append(in.msgs, m)
}

// payloads returns how often each payload arrived.
func (in *inbox) payloads() map[string]int {
	in.mu.Lock()
	defer in.mu.Unlock()
	n := map[string]int{}
	for _, m := range in.msgs {
		n[string(m.Payload())]++
	}
	return n
}

// connect dials the broker as MQTT 3.1.1 client id; messages that match no
// subscription of this client object (such as those of a restored session)
// land in the returned inbox.
func connect(t *testing.T, addr, id string, clean bool) (paho.Client, *inbox) {
	t.Helper()
	in := new(inbox)
	opts := paho.NewClientOptions().
		AddBroker("tcp://" + addr).
		SetClientID(id).
		SetProtocolVersion(4).
		SetCleanSession(clean).
		SetAutoReconnect(false).
		SetConnectRetry(false).
		SetConnectTimeout(e2eTimeout).
		SetDefaultPublishHandler(in.add)
	c := paho.NewClient(opts)
	await(t, "connect "+id, c.Connect())
	t.Cleanup(func() {
		if c.IsConnected() {
			c.Disconnect(0)
		}
	})
	return c, in
}

func await(t *testing.T, what string, tok paho.Token) {
	t.Helper()
	if !tok.WaitTimeout(e2eTimeout) {
		t.Fatalf("%s: no answer within %s", what, e2eTimeout)
	}
	if err := tok.Error(); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

// eventually polls cond until it holds or e2eTimeout passes.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(e2eTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// storedInflight returns the committed in-flight records of client id.
func storedInflight(t *testing.T, db *DB, id string) []storage.Message {
	t.Helper()
	flush(t, db)
	var out []storage.Message
	prefix := sessionPrefix(id)
	err := db.view(func(tx *bbolt.Tx) error {
		c := tx.Bucket(rootMQTT).Bucket(mqttBucketNames[bucketInflight]).Cursor()
		for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
			var m storage.Message
			if err := decode(v, &m); err != nil {
				return err
			}
			out = append(out, m)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestE2EPersistentSessionSurvivesRestart(t *testing.T) {
	for _, d := range []Durability{DurabilityBatch, DurabilitySync} {
		t.Run(string(d), func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "colony.db")
			b := startBroker(t, path, d)

			sub, _ := connect(t, b.addr, "sub", false)
			await(t, "subscribe", sub.Subscribe("a/#", 1, nil))
			sub.Disconnect(250)

			pub, _ := connect(t, b.addr, "pub", true)
			want := []string{"m1", "m2", "m3", "m4", "m5"}
			for _, p := range want {
				await(t, "publish "+p, pub.Publish("a/x", 1, false, p))
			}
			pub.Disconnect(250)

			// The offline messages are stored as in-flight records, each
			// under the packet ID mochi assigned.
			var recs []storage.Message
			eventually(t, "5 in-flight records", func() bool {
				recs = storedInflight(t, b.db, "sub")
				return len(recs) == 5
			})
			ids := map[uint16]bool{}
			var payloads []string
			for _, r := range recs {
				if r.PacketID == 0 || ids[r.PacketID] {
					t.Fatalf("packet id %d zero or repeated in %+v", r.PacketID, recs)
				}
				ids[r.PacketID] = true
				payloads = append(payloads, string(r.Payload))
			}
			slices.Sort(payloads)
			if !slices.Equal(payloads, want) {
				t.Fatalf("stored payloads %q, want %q", payloads, want)
			}

			b.stop()
			b = startBroker(t, path, d)

			sub, got := connect(t, b.addr, "sub", false) // no re-subscribe
			eventually(t, "the 5 offline messages", func() bool { return len(got.payloads()) >= 5 })

			pub, _ = connect(t, b.addr, "pub", true)
			await(t, "publish after", pub.Publish("a/x", 1, false, "after"))
			eventually(t, "a message published after the restart", func() bool { return got.payloads()["after"] == 1 })

			counts := got.payloads()
			for _, p := range append(want, "after") {
				if counts[p] != 1 {
					t.Errorf("payload %q arrived %d times, want once (all: %v)", p, counts[p], counts)
				}
			}
			if len(counts) != len(want)+1 {
				t.Errorf("unexpected payloads: %v", counts)
			}
			// The acks remove the records.
			eventually(t, "acked records deleted", func() bool { return len(storedInflight(t, b.db, "sub")) == 0 })
			sub.Disconnect(250)
			pub.Disconnect(250)
			if err := b.db.Check(); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestE2ERetainedSurvivesRestart(t *testing.T) {
	path := filepath.Join(t.TempDir(), "colony.db")
	b := startBroker(t, path, DurabilityBatch)
	pub, _ := connect(t, b.addr, "pub", true)
	await(t, "publish retained", pub.Publish("r/t", 1, true, "keep"))
	await(t, "publish cleared", pub.Publish("r/gone", 1, true, "x"))
	await(t, "clear retained", pub.Publish("r/gone", 1, true, ""))
	pub.Disconnect(250)
	b.stop()

	b = startBroker(t, path, DurabilityBatch)
	c, _ := connect(t, b.addr, "reader", true)
	got := make(chan paho.Message, 8)
	await(t, "subscribe", c.Subscribe("r/#", 1, func(_ paho.Client, m paho.Message) { got <- m }))
	select {
	case m := <-got:
		if m.Topic() != "r/t" || string(m.Payload()) != "keep" || !m.Retained() {
			t.Fatalf("got %s %q retained=%v", m.Topic(), m.Payload(), m.Retained())
		}
	case <-time.After(e2eTimeout):
		t.Fatal("retained message not delivered after restart")
	}
	// A flush is a round trip through the committer; the cleared topic
	// must not come back.
	flush(t, b.db)
	select {
	case m := <-got:
		t.Fatalf("unexpected retained message %s %q", m.Topic(), m.Payload())
	default:
	}
}

func TestE2ECleanSessionLeavesNoRecords(t *testing.T) {
	path := filepath.Join(t.TempDir(), "colony.db")
	b := startBroker(t, path, DurabilitySync)
	c, _ := connect(t, b.addr, "clean", true)
	got := make(chan paho.Message, 8)
	await(t, "subscribe", c.Subscribe("c/#", 1, func(_ paho.Client, m paho.Message) { got <- m }))
	for i := range 3 {
		await(t, "publish", c.Publish("c/1", 1, false, fmt.Sprint(i)))
	}
	for range 3 {
		select {
		case <-got:
		case <-time.After(e2eTimeout):
			t.Fatal("message not delivered")
		}
	}
	c.Disconnect(250)
	b.stop() // drains every hook write

	db := openAt(t, path, Options{})
	clients, subs, inflight := sessionKeys(t, db)
	if len(clients)+len(subs)+len(inflight) != 0 {
		t.Fatalf("clean session left records: %q %q %q", clients, subs, inflight)
	}
}

// TestE2ECleanReconnectDropsSession checks that a clean-session reconnect
// of a formerly persistent ID discards the stored session, so a restart
// does not bring it back.
func TestE2ECleanReconnectDropsSession(t *testing.T) {
	path := filepath.Join(t.TempDir(), "colony.db")
	b := startBroker(t, path, DurabilityBatch)
	c, _ := connect(t, b.addr, "dev", false)
	await(t, "subscribe", c.Subscribe("d/#", 1, nil))
	c.Disconnect(250)
	pub, _ := connect(t, b.addr, "pub", true)
	await(t, "publish", pub.Publish("d/1", 1, false, "queued"))
	eventually(t, "queued message stored", func() bool { return len(storedInflight(t, b.db, "dev")) == 1 })

	c, _ = connect(t, b.addr, "dev", true)
	c.Disconnect(250)
	b.stop()

	db := openAt(t, path, Options{})
	clients, subs, inflight := sessionKeys(t, db)
	if len(clients)+len(subs)+len(inflight) != 0 {
		t.Fatalf("dropped session left records: %q %q %q", clients, subs, inflight)
	}
	if err := db.Check(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), e2eTimeout)
	defer cancel()
	if err := db.Flush(ctx); err != nil {
		t.Fatal(err)
	}
}
