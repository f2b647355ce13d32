package server_test

import (
	"fmt"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	pahov3 "github.com/eclipse/paho.mqtt.golang"
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/colonymq/colony/app/apptest"
	"github.com/colonymq/colony/server"
	"github.com/colonymq/colony/store"
)

// willSubscriber subscribes a 3.1.1 client to topic at QoS 1.
func willSubscriber(t *testing.T, addr, topic string) chan pahov3.Message {
	t.Helper()
	ch, h := apptest.Sink()
	s := apptest.V3(t, "tcp://"+addr, "will-watch")
	apptest.Done(t, s.Subscribe(topic, 1, h))
	return ch
}

// willPauseHook holds up the first OnWill of client id until released:
// it widens the window between a connection's end and its will being
// scheduled, which a taken-over connection's goroutine always has (it
// runs sendLWT after the new connection was told its CONNACK or before).
type willPauseHook struct {
	mqtt.HookBase
	id string
	*gate
}

func (*willPauseHook) ID() string { return "will-pause" }
func (*willPauseHook) Provides(b byte) bool {
	return b == mqtt.OnWill
}
func (h *willPauseHook) OnWill(cl *mqtt.Client, will mqtt.Will) (mqtt.Will, error) {
	if cl.ID == h.id {
		h.hold()
	}
	return will, nil
}

// TestDelayedWillCancelledByTakeOver: a persistent MQTT 5 session's
// connection has a will delayed by 1 s, and a new connection resumes the
// session (take-over). The new connection came within the delay, so the
// old will must not be sent [MQTT-3.1.3-9]; the new connection's own will
// is then sent when it drops. The old connection's goroutine schedules its
// delayed will when it notices its end, which may be after the new
// connection's CONNACK, where the pending will of the id is cancelled: the
// old will then stayed scheduled, was published while the client was
// connected, and wiped the new connection's will (Clients.Get finds the new
// client), so the new connection's end published nothing.
func TestDelayedWillCancelledByTakeOver(t *testing.T) {
	h := &willPauseHook{id: "wt", gate: newGate(true)}
	srv := hookedServer(t, server.Limits{}, h)
	addr := srv.Addr(server.ListenerMQTT)
	wills := willSubscriber(t, addr, "w/t")

	apptest.RawWillClient(t, addr, "wt", false, false, 3600, 1, "w/t", "old", 1)
	c2, _ := apptest.RawWillClient(t, addr, "wt", false, true, 3600, 0, "w/t", "new", 1)
	h.reached(t, "the old connection's will was never considered")
	h.open()

	select { // the old will's delay (1 s) passes, twice over
	case m := <-wills:
		t.Fatalf("will %q published, though the session was resumed within its delay", m.Payload())
	case <-time.After(3 * time.Second):
	}
	c2.Close()
	if m := apptest.Next(t, wills); string(m.Payload()) != "new" {
		t.Fatalf("got will %q, want the new connection's", m.Payload())
	}
}

// disconnectHook reports each OnDisconnect of client id.
type disconnectHook struct {
	mqtt.HookBase
	id   string
	gone chan struct{}
}

func (*disconnectHook) ID() string { return "disconnect-probe" }
func (*disconnectHook) Provides(b byte) bool {
	return b == mqtt.OnDisconnect
}
func (h *disconnectHook) OnDisconnect(cl *mqtt.Client, _ error, _ bool) {
	if cl.ID == h.id {
		h.gone <- struct{}{}
	}
}

// TestDelayedWillSentWhenTheSessionEnds: MQTT 5 publishes a will "after
// the Will Delay Interval has passed or the Session ends, whichever
// happens first" [MQTT-3.1.2-8] (3.1.3.2.2). A persistent session's
// connection drops with a will delayed by an hour, and a new connection
// under its id starts with clean start: the session ends [MQTT-3.1.2-4],
// so the will must go out now. The engine cancelled it instead, as if the
// session had been resumed [MQTT-3.1.3-9]: it was never published.
// (A will delay beyond the session expiry is cut to it at CONNECT, so an
// expiring session's will is not late.)
func TestDelayedWillSentWhenTheSessionEnds(t *testing.T) {
	h := &disconnectHook{id: "we", gone: make(chan struct{}, 4)}
	srv := hookedServer(t, server.Limits{}, h)
	addr := srv.Addr(server.ListenerMQTT)
	wills := willSubscriber(t, addr, "w/e")
	c, _ := apptest.RawWillClient(t, addr, "we", false, false, 3600, 3600, "w/e", "bye", 1)
	c.Close()
	<-h.gone
	apptest.RawClient(t, addr, "we", 5, true, false, 0)
	if m := apptest.Next(t, wills); string(m.Payload()) != "bye" {
		t.Fatalf("got %q", m.Payload())
	}
}

// TestDelayedWillSentWhenDisconnectEndsTheSession: a client with a will
// delayed by an hour leaves with DISCONNECT 0x04 (disconnect with will
// message) and sets the session expiry to 0 in it, so its session ends
// with the connection: the will must go out now [MQTT-3.1.2-8], not an
// hour later (the cut of the delay to the session expiry happens only at
// CONNECT, where the expiry was an hour).
func TestDelayedWillSentWhenDisconnectEndsTheSession(t *testing.T) {
	srv := hookedServer(t, server.Limits{})
	addr := srv.Addr(server.ListenerMQTT)
	wills := willSubscriber(t, addr, "w/d")
	c, _ := apptest.RawWillClient(t, addr, "wd", true, false, 3600, 3600, "w/d", "bye", 1)
	rawSend(t, c, 0xe0, 7, 0x04, 5, 0x11, 0, 0, 0, 0) // DISCONNECT 0x04, session expiry 0
	if m := apptest.Next(t, wills); string(m.Payload()) != "bye" {
		t.Fatalf("got %q", m.Payload())
	}
}

// TestDelayedWillSurvivesRestart: a persistent session's connection drops
// with a will delayed by 2 s, and the server restarts within the delay.
// The will is part of the session state [MQTT 5 4.1] and the store keeps
// it, but the delayed will lived only in memory: after the restart
// nothing published it, and a client that never came back never had its
// will sent.
func TestDelayedWillSurvivesRestart(t *testing.T) {
	path := filepath.Join(t.TempDir(), "colony.db")
	h := &disconnectHook{id: "wr", gone: make(chan struct{}, 4)}
	srv, stop := storedServer(t, path, store.DurabilitySync, h)
	addr := srv.Addr(server.ListenerMQTT)
	// a persistent 3.1.1 watcher, away during the restart
	s := apptest.V3(t, "tcp://"+addr, "wr-watch", func(o *pahov3.ClientOptions) { o.SetCleanSession(false) })
	apptest.Done(t, s.Subscribe("w/r", 1, nil))
	s.Disconnect(50)

	c, _ := apptest.RawWillClient(t, addr, "wr", false, false, 3600, 2, "w/r", "bye", 1)
	c.Close()
	<-h.gone
	stop()

	srv, _ = storedServer(t, path, store.DurabilitySync)
	ch, hd := apptest.Sink()
	apptest.V3(t, "tcp://"+srv.Addr(server.ListenerMQTT), "wr-watch", func(o *pahov3.ClientOptions) {
		o.SetCleanSession(false).SetDefaultPublishHandler(hd)
	})
	if m := apptest.Next(t, ch); string(m.Payload()) != "bye" {
		t.Fatalf("got %q", m.Payload())
	}
}

// willSentHook counts the engine's OnWillSent calls for client id.
type willSentHook struct {
	mqtt.HookBase
	id   string
	sent atomic.Int32
}

func (*willSentHook) ID() string { return "will-sent-probe" }
func (*willSentHook) Provides(b byte) bool {
	return b == mqtt.OnWillSent
}
func (h *willSentHook) OnWillSent(cl *mqtt.Client, _ packets.Packet) {
	if cl.ID == h.id {
		h.sent.Add(1)
	}
}

// TestWillOfAnExpiringSessionIsTheSessions: a connection with a session
// expiry of 1 s and a will delayed by an hour (cut to the expiry at
// CONNECT) drops; session expiry and will fall due in the same tick of
// the server's loop. The will must go out once, as the session's: the
// hooks are told (OnWillSent), which is how the cluster carries a will to
// the other nodes. When the expiry sweep ran first, the will sweep found
// no client and published the will as the server's, and no hook heard of
// it. The two sweeps run in either order, so three rounds.
func TestWillOfAnExpiringSessionIsTheSessions(t *testing.T) {
	for round := range 3 {
		id := fmt.Sprintf("wx-%d", round)
		h := &willSentHook{id: id}
		srv := hookedServer(t, server.Limits{}, h)
		addr := srv.Addr(server.ListenerMQTT)
		wills := willSubscriber(t, addr, "w/x")
		c, _ := apptest.RawWillClient(t, addr, id, true, false, 1, 3600, "w/x", "bye", 1)
		c.Close()
		if m := apptest.Next(t, wills); string(m.Payload()) != "bye" {
			t.Fatalf("round %d: got %q", round, m.Payload())
		}
		apptest.Eventually(t, func() error {
			if srv.HasSession(id) {
				return fmt.Errorf("round %d: the session has not expired", round)
			}
			return nil
		})
		if n := h.sent.Load(); n != 1 {
			t.Fatalf("round %d: the hooks heard of the will %d times, want once", round, n)
		}
	}
}
