package server_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/colonymq/colony/app/apptest"
	"github.com/colonymq/colony/server"
)

// connackFire calls fire (once, when armed) as the engine sends client
// id's CONNACK: the connection is in the engine's client list, and its
// session is not established (OnSessionEstablished) yet.
type connackFire struct {
	mqtt.HookBase
	id    string
	armed atomic.Bool
	fire  func()
}

func (*connackFire) ID() string           { return "connack-fire" }
func (*connackFire) Provides(b byte) bool { return b == mqtt.OnPacketSent }
func (h *connackFire) OnPacketSent(cl *mqtt.Client, pk packets.Packet, _ []byte) {
	if pk.FixedHeader.Type == packets.Connack && cl.ID == h.id && h.armed.CompareAndSwap(true, false) {
		h.fire()
	}
}

// TestReleaseWhileTheClientConnects: another node takes a persistent
// session over (ReleaseSession) just as its client reconnects here, its
// CONNACK on the way. The release must end that connection too, as it
// ends any connection of the session: it released the session at once
// and left the connection open, without its session, subscribed to
// nothing, while the other node also had the client.
func TestReleaseWhileTheClientConnects(t *testing.T) {
	h := &connackFire{id: "rl"}
	a := hookedServer(t, server.Limits{}, h)
	addr := a.Addr(server.ListenerMQTT)
	c, r := apptest.RawClient(t, addr, "rl", 4, false, false, 0)
	rawSubscribe(t, c, r, 4, "rl/t", 1)
	c.Close()
	apptest.Eventually(t, func() error {
		if a.Stats().Info.ClientsConnected != 0 {
			return context.DeadlineExceeded
		}
		return nil
	})

	type released struct {
		st  *server.SessionState
		err error
	}
	done := make(chan released, 1)
	h.fire = func() {
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			st, err := a.ReleaseSession(ctx, "rl", true)
			done <- released{st, err}
		}()
		select { // let the release run (or start waiting) while this connection is held here
		case rel := <-done:
			done <- rel
		case <-time.After(300 * time.Millisecond):
		}
	}
	h.armed.Store(true)
	c, r = apptest.RawClient(t, addr, "rl", 4, false, true, 0)
	rel := <-done
	t.Logf("release: state %v, err %v", rel.st != nil, rel.err)
	if rel.st == nil {
		return // the session stayed here: fine
	}
	// Handed over: the connection here must end.
	_ = c.SetReadDeadline(time.Now().Add(time.Second))
	if _, err := c.Write([]byte{0xc0, 0}); err == nil {
		if typ, _, err := apptest.ReadRawPacket(r, nil); err == nil {
			t.Fatalf("session handed over (%d subscriptions) but the connection here is still open (answered %x); HasSession here %v",
				len(rel.st.Subscriptions), typ, a.HasSession("rl"))
		}
	}
}
