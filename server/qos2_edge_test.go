package server_test

import (
	"context"
	"fmt"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/colonymq/colony/app"
	"github.com/colonymq/colony/app/apptest"
	"github.com/colonymq/colony/rpc"
	"github.com/colonymq/colony/server"
	"github.com/colonymq/colony/store"
)

// storedServer runs a server (no app) persisting into the store at path
// with durability d; hooks come before the store's hook, so a hook that
// pauses holds up the store's call of the same event. stop shuts the
// server down and closes the store, in that order; it is also a cleanup.
func storedServer(t *testing.T, path string, d store.Durability, hooks ...mqtt.Hook) (srv *server.Server, stop func()) {
	t.Helper()
	db, err := store.Open(path, store.Options{Durability: d})
	if err != nil {
		t.Fatal(err)
	}
	srv, stopServer := runServer(t, server.Options{
		Limits: server.Limits{SlowClientTimeout: apptest.Wait},
		Hooks:  append(hooks, db.MQTTHook()),
	})
	var once sync.Once
	stop = func() {
		once.Do(func() {
			stopServer()
			if err := db.Close(); err != nil {
				t.Error(err)
			}
		})
	}
	t.Cleanup(stop)
	return srv, stop
}

// recordPauseHook holds up the in-flight hooks' OnQosPublish of one
// delivery (payload "x" to client id) until released, or a while passed:
// it widens the window between the message going in flight (setLive) and
// storage hearing of it, which every delivery has.
type recordPauseHook struct {
	mqtt.HookBase
	id string
	*gate
}

func (*recordPauseHook) ID() string { return "record-pause" }
func (*recordPauseHook) Provides(b byte) bool {
	return b == mqtt.OnQosPublish
}
func (h *recordPauseHook) OnQosPublish(cl *mqtt.Client, pk packets.Packet, _ int64, _ int) {
	if cl.ID == h.id && pk.FixedHeader.Type == packets.Publish && string(pk.Payload) == "x" {
		h.hold()
	}
}

// TestTakeOverBeforeTheMessageIsRecorded: a QoS 2 message goes in flight
// to a persistent subscriber's session, and before storage is told of it
// (OnQosPublish) the subscriber reconnects. The take-over moves the
// message to the new connection (P31), which resends it; the subscriber
// completes its QoS 2 flow, and storage is told to delete the record
// (OnQosComplete). Only then did the delivering publisher write the record
// (sync mode: committed), after its delete: it outlived the flow, and a
// restart delivered the message a second time, a QoS 2 message the
// subscriber had completed (once only [MQTT-4.3.3]).
func TestTakeOverBeforeTheMessageIsRecorded(t *testing.T) {
	path := filepath.Join(t.TempDir(), "colony.db")
	h := &recordPauseHook{id: "tr-sub", gate: newGate(true)}
	h.holdFor = 2 * time.Second // the take-over waits for the record under way: it lets the CONNACK go
	srv, stop := storedServer(t, path, store.DurabilitySync, h)
	addr := srv.Addr(server.ListenerMQTT)

	c, r := apptest.RawClient(t, addr, "tr-sub", 4, false, false, 0)
	rawSubscribe(t, c, r, 4, "tr/t", 2)
	pub := apptest.V3(t, "tcp://"+addr, "tr-pub")
	tok := pub.Publish("tr/t", 2, false, "x")
	h.reached(t, "the message never went in flight")

	// The subscriber reconnects: the message is resent, and completed.
	c, r = apptest.RawClient(t, addr, "tr-sub", 4, false, true, 0)
	typ, body, err := apptest.ReadRawPacket(r, nil)
	if err != nil || typ&0xf6 != 0x34 || string(body[8:]) != "x" {
		t.Fatalf("want the QoS 2 PUBLISH resent, got %x %q: %v", typ, body, err)
	}
	qos2Flow(t, c, r, body)
	apptest.RawExchange(t, c, r, apptest.RawStep{Send: []byte{0xc0, 0}, Want: []byte{0xd0, 0}}) // the PUBCOMP was read
	h.open()
	apptest.Done(t, tok)
	pub.Disconnect(50)
	c.Close()
	stop()

	srv, _ = storedServer(t, path, store.DurabilitySync)
	c, r = apptest.RawClient(t, srv.Addr(server.ListenerMQTT), "tr-sub", 4, false, true, 0)
	rawSend(t, c, 0xc0, 0)
	if typ, body, err := apptest.ReadRawPacket(r, nil); err != nil || typ != 0xd0 {
		t.Fatalf("after the restart, want nothing before the PINGRESP, got %x %q: %v (a QoS 2 message delivered twice)", typ, body, err)
	}
}

// counter is a module whose "block" handler waits for unblock and whose
// "count" handler counts its calls; "mark" signals that it ran.
type counter struct {
	app.Base
	unblock chan struct{}
	mark    chan struct{}
	calls   atomic.Int32
}

func (*counter) ID() string { return "cnt" }
func (m *counter) Init(_ context.Context, h *app.Host) error {
	rpc.Handle(h.Registry, "cnt", "block", func(context.Context, *struct{}) (*struct{}, error) {
		<-m.unblock
		return &struct{}{}, nil
	})
	rpc.Handle(h.Registry, "cnt", "count", func(context.Context, *struct{}) (*struct{}, error) {
		m.calls.Add(1)
		return &struct{}{}, nil
	})
	rpc.Handle(h.Registry, "cnt", "mark", func(context.Context, *struct{}) (*struct{}, error) {
		close(m.mark)
		return &struct{}{}, nil
	})
	return nil
}

// TestQoS2RequestResentDuringOnPublish: a QoS 2 $rpc request waits in
// the gateway's OnPublish for a free request slot (RPCConcurrency 1, taken
// by a blocked request) before its packet id is recorded. The client
// reconnects and resends it (DUP) as it must [MQTT-4.3.3-10]: the id was
// not recorded, so the resend is a new request, and once the slot frees
// the handler runs twice for one QoS 2 request.
func TestQoS2RequestResentDuringOnPublish(t *testing.T) {
	cfg := apptest.Config(t)
	cfg.Limits.RPCConcurrency = 1
	m := &counter{unblock: make(chan struct{}), mark: make(chan struct{})}
	a := apptest.Run(t, cfg, m)
	addr := a.Addr("mqtt")
	stats := func() int64 { return a.Server().Stats().Info.MessagesReceived }
	received := stats()
	waitReceived := func(n int64) {
		apptest.Eventually(t, func() error {
			if got := stats() - received; got < n {
				return fmt.Errorf("the server read %d publishes", got)
			}
			return nil
		})
	}
	request := func(fn string, flags byte, id byte) []byte {
		topic := "$rpc/cnt/" + fn
		b := []byte{0x30 | flags, 0, 0, byte(len(topic))}
		b = append(b, topic...)
		if flags&0x06 != 0 {
			b = append(b, 0, id)
		}
		b = append(b, '{', '}')
		b[1] = byte(len(b) - 2)
		return b
	}
	c, _ := apptest.RawClient(t, addr, "rq-cl", 4, false, false, 0)
	rawSend(t, c, request("block", 0, 0)...) // QoS 0: takes the slot
	waitReceived(1)
	rawSend(t, c, request("count", 0x04, 5)...) // QoS 2, id 5: waits for the slot
	waitReceived(2)
	c, r := apptest.RawClient(t, addr, "rq-cl", 4, false, true, 0)
	rawSend(t, c, request("count", 0x0c, 5)...) // the resend (DUP)
	waitReceived(3)
	close(m.unblock)
	// Replies (QoS 1 PUBLISHes on the request topic) may come between.
	want := func(typ byte) {
		t.Helper()
		for {
			got, body, err := apptest.ReadRawPacket(r, nil)
			if err != nil {
				t.Fatal(err)
			}
			if got&0xf0 == 0x30 {
				if got&0x06 != 0 {
					tl := int(body[0])<<8 | int(body[1])
					rawSend(t, c, 0x40, 2, body[2+tl], body[3+tl])
				}
				continue
			}
			if got != typ {
				t.Fatalf("want %x, got %x %x", typ, got, body)
			}
			return
		}
	}
	want(0x50)
	rawSend(t, c, 0x62, 2, 0, 5)
	want(0x70)
	apptest.Eventually(t, func() error { // the old connection's reader is done
		if n := a.Server().Stats().Info.ClientsConnected; n != 1 {
			return fmt.Errorf("%d clients connected", n)
		}
		return nil
	})
	rawSend(t, c, request("mark", 0, 0)...) // runs after every request before it
	select {
	case <-m.mark:
	case <-time.After(apptest.Wait):
		t.Fatal("mark never ran")
	}
	if n := m.calls.Load(); n != 1 {
		t.Fatalf("one QoS 2 request ran its handler %d times", n)
	}
}

// refuseHook refuses publishes to no/t with "not authorized".
type refuseHook struct{ mqtt.HookBase }

func (*refuseHook) ID() string           { return "refuse" }
func (*refuseHook) Provides(b byte) bool { return b == mqtt.OnPublish }
func (*refuseHook) OnPublish(_ *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if pk.TopicName == "no/t" {
		return pk, packets.ErrNotAuthorized
	}
	return pk, nil
}

// TestRefusedQoS2PublishGetsAPubrec: a QoS 2 publish an OnPublish hook
// refuses is answered with a PUBREC carrying the reason (upstream sent a
// PUBACK, which the client cannot match to its QoS 2 flow), and its id is
// forgotten: the flow ended, so a later publish under the id, even with
// DUP set, is a new message and is delivered.
func TestRefusedQoS2PublishGetsAPubrec(t *testing.T) {
	srv := hookedServer(t, server.Limits{}, new(refuseHook))
	addr := srv.Addr(server.ListenerMQTT)
	_, sr := rawSubscriber(t, addr, "rf-sub", nil, "ok/t", 2)
	c, r := apptest.RawClientWith(t, addr, "rf-pub", 5, true, false, nil)
	publish := func(flags byte, topic string) []byte {
		b := append([]byte{0x30 | flags, 0, 0, byte(len(topic))}, topic...)
		b = append(b, 0, 7, 0, 'p') // id 7, no properties, payload "p"
		b[1] = byte(len(b) - 2)
		return b
	}
	rawSend(t, c, publish(0x04, "no/t")...)
	if typ, body, err := apptest.ReadRawPacket(r, nil); err != nil || typ != 0x50 || len(body) < 3 || body[2] != 0x87 {
		t.Fatalf("want PUBREC 0x87 for the refused publish, got %x %x: %v", typ, body, err)
	}
	rawSend(t, c, publish(0x0c, "ok/t")...) // DUP, same id: a new message now
	if typ, body, err := apptest.ReadRawPacket(r, nil); err != nil || typ != 0x50 {
		t.Fatalf("want PUBREC, got %x %x: %v", typ, body, err)
	}
	rawPublish(t, sr, "p", false)
}

// TestRestartResendsPubrel: a QoS 2 message the subscriber has PUBRECed is
// resent after a restart as the PUBREL it was waiting for, not as the
// PUBLISH again (MQTT 4.4: what is resent is the unacknowledged PUBLISH
// and PUBREL packets). Upstream told storage nothing of the PUBREL, so a
// restart loaded the PUBLISH: a client that had already delivered it and
// forgotten its id (after its own restart) delivered it twice.
func TestRestartResendsPubrel(t *testing.T) {
	cfg := apptest.Config(t)
	cfg.Store.Durability = "sync"
	a := apptest.Run(t, cfg)
	c, r := apptest.RawClient(t, a.Addr("mqtt"), "rel-sub", 4, false, false, 0)
	rawSubscribe(t, c, r, 4, "rel/t", 2)
	pub := apptest.V3(t, apptest.URL(a), "rel-pub")
	apptest.Done(t, pub.Publish("rel/t", 2, false, "once"))
	if err := c.SetReadDeadline(time.Now().Add(apptest.Wait)); err != nil {
		t.Fatal(err)
	}
	typ, body, err := apptest.ReadRawPacket(r, nil)
	if err != nil || typ != 0x34 || string(body[9:]) != "once" {
		t.Fatalf("want PUBLISH qos 2 \"once\", got %x %q: %v", typ, body, err)
	}
	id := [2]byte{body[7], body[8]}
	apptest.RawExchange(t, c, r, apptest.RawStep{
		Send: []byte{0x50, 2, id[0], id[1]}, // PUBREC
		Want: []byte{0x62, 2, id[0], id[1]}, // PUBREL; no PUBCOMP comes
	})
	c.Close()
	pub.Disconnect(50)
	apptest.Stop(t, a)

	a = apptest.Run(t, cfg)
	c, r = apptest.RawClient(t, a.Addr("mqtt"), "rel-sub", 4, false, true, 0)
	if err := c.SetReadDeadline(time.Now().Add(apptest.Wait)); err != nil {
		t.Fatal(err)
	}
	if typ, body, err := apptest.ReadRawPacket(r, nil); err != nil || typ != 0x62 || string(body) != string(id[:]) {
		t.Fatalf("after the restart: want PUBREL %x, got %x %x: %v", id, typ, body, err)
	}
	rawSend(t, c, 0x70, 2, id[0], id[1]) // PUBCOMP ends the flow
	apptest.RawExchange(t, c, r, apptest.RawStep{Send: []byte{0xc0, 0}, Want: []byte{0xd0, 0}})
	c.Close()
	apptest.Stop(t, a)

	// Nor is anything resent after the next restart.
	a = apptest.Run(t, cfg)
	c, r = apptest.RawClient(t, a.Addr("mqtt"), "rel-sub", 4, false, true, 0)
	apptest.RawExchange(t, c, r, apptest.RawStep{Send: []byte{0xc0, 0}, Want: []byte{0xd0, 0}})
}
