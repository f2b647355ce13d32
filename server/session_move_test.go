package server_test

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/colonymq/colony/app/apptest"
	"github.com/colonymq/colony/server"
)

// readPauseHook decides the read ACL (the server's ACL file grants
// anonymous clients writes only, so the decision falls to this hook, which
// allows everything) and, when armed, holds up one delivery to client id
// on topic: it reports entered, then waits for resume. It widens the
// window between a publisher finding a subscriber (deliverTo) and its
// message going into the subscriber's in-flight set.
type readPauseHook struct {
	mqtt.HookBase
	id, topic string
	*gate
}

func (*readPauseHook) ID() string { return "read-pause" }
func (*readPauseHook) Provides(b byte) bool {
	return b == mqtt.OnACLCheck
}
func (h *readPauseHook) OnACLCheck(cl *mqtt.Client, topic string, write bool) bool {
	if !write && cl.ID == h.id && topic == h.topic {
		h.hold()
	}
	return true
}

// TestReleaseSessionKeepsALateDelivery: a persistent session, away, is
// handed to another cluster node (ReleaseSession here, AdoptSession
// there) while a publisher on this node is delivering a QoS 1 message to
// it: the publisher found the session (subscriptions and client) before
// the release, and its message goes into the session's in-flight set after
// the release read it. The publisher gets its PUBACK; the message must
// reach the client on the new node. It stayed in the released client's
// set, which nobody sends (and in this node's store, an orphan). P31 fixed
// this window for a take-over on one node, not for a move (PATCHES.md).
func TestReleaseSessionKeepsALateDelivery(t *testing.T) {
	acl := filepath.Join(t.TempDir(), "acl")
	if err := os.WriteFile(acl, []byte("topic write mv/#\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	h := &readPauseHook{id: "mv-sub", topic: "mv/t", gate: newGate(false)}
	a, _ := runServer(t, server.Options{Auth: server.Auth{ACLFile: acl}, Hooks: []mqtt.Hook{h}})
	b := hookedServer(t, server.Limits{})

	c, r := apptest.RawClient(t, a.Addr(server.ListenerMQTT), "mv-sub", 4, false, false, 0)
	rawSubscribe(t, c, r, 4, "mv/t", 1)
	c.Close()
	apptest.Eventually(t, func() error {
		if a.Stats().Info.ClientsConnected != 0 {
			return context.DeadlineExceeded
		}
		return nil
	})

	pub := apptest.V3(t, "tcp://"+a.Addr(server.ListenerMQTT), "mv-pub")
	apptest.Done(t, pub.Publish("mv/t", 1, false, "0"))
	h.arm()
	late := pub.Publish("mv/t", 1, false, "1")
	h.reached(t, "the delivery of message 1 did not start")
	ctx, cancel := context.WithTimeout(context.Background(), apptest.Wait)
	defer cancel()
	type released struct {
		st  *server.SessionState
		err error
	}
	done := make(chan released, 1)
	go func() {
		st, err := a.ReleaseSession(ctx, "mv-sub", true)
		done <- released{st, err}
	}()
	apptest.Eventually(t, func() error { // the release has begun
		if a.SubscribedTo("mv-sub", "mv/t") {
			return context.DeadlineExceeded
		}
		return nil
	})
	// The delivery resumes once the release is done or, if the release
	// waits for it, after a moment (no timing is asserted).
	var rel released
	select {
	case rel = <-done:
		h.open()
	case <-time.After(200 * time.Millisecond):
		h.open()
		rel = <-done
	}
	st, err := rel.st, rel.err
	if err != nil || st == nil {
		t.Fatalf("release: %v %v", st, err)
	}
	apptest.Done(t, late) // acknowledged to its publisher
	b.AdoptSession(st)

	c, r = apptest.RawClient(t, b.Addr(server.ListenerMQTT), "mv-sub", 4, false, true, 0)
	ackInOrder(t, c, r, 2, func() string {
		return fmt.Sprintf("(the session moved with %d messages)", len(st.Inflight))
	})
}

// TestMovedSessionKeepsResendOrderAfterRestart: a persistent session moves
// to another node (ReleaseSession, AdoptSession) with two QoS 1 messages
// queued, whose packet ids follow the session's earlier deliveries (here 6
// and 7). The client comes back on the new node, reads the two and
// leaves; two more are queued there, and the new node restarts (sync durability). The four must come
// in the order they were published (MQTT 4.6): the new node's packet ids
// started again at 1 (P33 carries the counter only within a node), so
// the restart (which restores a session's messages from the one after the
// largest gap between ids) resent the newer two first.
func TestMovedSessionKeepsResendOrderAfterRestart(t *testing.T) {
	src := hookedServer(t, server.Limits{})
	c, r := apptest.RawClient(t, src.Addr(server.ListenerMQTT), "mo-sub", 4, false, false, 0)
	rawSubscribe(t, c, r, 4, "mo/t", 1)
	pub := apptest.V3(t, "tcp://"+src.Addr(server.ListenerMQTT), "mo-pub")
	for i := range 5 { // the session's packet ids advance to 5
		apptest.Done(t, pub.Publish("mo/t", 1, false, fmt.Sprint(i)))
	}
	ackInOrder(t, c, r, 5, func() string { return "" })
	c.Close()
	apptest.Eventually(t, func() error {
		if src.Stats().Info.ClientsConnected != 1 { // the publisher
			return context.DeadlineExceeded
		}
		return nil
	})
	apptest.Done(t, pub.Publish("mo/t", 1, false, "0"))
	apptest.Done(t, pub.Publish("mo/t", 1, false, "1"))
	ctx, cancel := context.WithTimeout(context.Background(), apptest.Wait)
	defer cancel()
	st, err := src.ReleaseSession(ctx, "mo-sub", true)
	if err != nil || st == nil || len(st.Inflight) != 2 {
		t.Fatalf("release: %+v %v", st, err)
	}

	cfg := apptest.Config(t)
	cfg.Store.Durability = "sync"
	a := apptest.Run(t, cfg)
	a.Server().AdoptSession(st)
	c, r = apptest.RawClient(t, a.Addr("mqtt"), "mo-sub", 4, false, true, 0)
	for range 2 { // resent, not acknowledged
		if typ, body, err := apptest.ReadRawPacket(r, nil); err != nil || typ&0xf6 != 0x32 {
			t.Fatalf("want a QoS 1 PUBLISH, got %x %x: %v", typ, body, err)
		}
	}
	c.Close()
	apptest.Eventually(t, func() error {
		if a.Server().Stats().Info.ClientsConnected != 0 {
			return context.DeadlineExceeded
		}
		return nil
	})
	pub2 := apptest.V3(t, apptest.URL(a), "mo-pub2")
	apptest.Done(t, pub2.Publish("mo/t", 1, false, "2"))
	apptest.Done(t, pub2.Publish("mo/t", 1, false, "3"))
	pub2.Disconnect(50)
	apptest.Stop(t, a)

	a = apptest.Run(t, cfg)
	c, r = apptest.RawClient(t, a.Addr("mqtt"), "mo-sub", 4, false, true, 0)
	ackInOrder(t, c, r, 4, func() string { return "after the move and a restart" })
}

// expiryPauseHook holds up the expiry of client id's session, once armed,
// in OnClientExpired (called before the engine deletes the client): it
// widens the moment between the expiry sweep picking a disconnected
// session and removing it, in which the client may come back.
type expiryPauseHook struct {
	mqtt.HookBase
	id string
	*gate
}

func (*expiryPauseHook) ID() string { return "expiry-pause" }
func (*expiryPauseHook) Provides(b byte) bool {
	return b == mqtt.OnClientExpired
}
func (h *expiryPauseHook) OnClientExpired(cl *mqtt.Client) {
	if cl.ID == h.id {
		h.hold()
	}
}

// TestSessionResumedAsItExpires: an MQTT 5 session (expiry 1 s) expires
// while its client reconnects: the sweep has picked it and is ending it
// when the CONNECT arrives. The session is gone (CONNACK session present
// 0, as the expiry came first), and the new connection must work: the
// sweep deleted the client id from the engine's clients, the new,
// connected client's, so publishers no longer found it, and the session's
// subscriptions stayed behind.
func TestSessionResumedAsItExpires(t *testing.T) {
	h := &expiryPauseHook{id: "ex-sub", gate: newGate(false)}
	srv := hookedServer(t, server.Limits{}, h)
	addr := srv.Addr(server.ListenerMQTT)
	c, _ := rawSubscriber(t, addr, "ex-sub", []byte{0x11, 0, 0, 0, 1}, "ex/t", 1) // session expiry 1 s
	pub := apptest.V3(t, "tcp://"+addr, "ex-pub")
	h.arm()
	c.Close()
	h.reached(t, "the session did not expire")
	// CONNECT (session expiry 3600 s, no clean start) while the sweep is
	// in OnClientExpired; the server has it once it counts the connection.
	c, err := net.DialTimeout("tcp", addr, apptest.Wait)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	connect := []byte{0x10, 10 + 6 + 2 + 6, 0, 4, 'M', 'Q', 'T', 'T', 5, 0, 0, 60, 5, 0x11, 0, 0, 0x0e, 0x10, 0, 6}
	rawSend(t, c, append(connect, "ex-sub"...)...)
	apptest.Eventually(t, func() error {
		if n := srv.Stats().Info.ClientsConnected; n != 2 {
			return fmt.Errorf("%d connected", n)
		}
		return nil
	})
	h.open()
	if err := c.SetReadDeadline(time.Now().Add(apptest.Wait)); err != nil {
		t.Fatal(err)
	}
	r := bufio.NewReader(c)
	if typ, body, err := apptest.ReadRawPacket(r, nil); err != nil || typ != 0x20 || body[0] != 0 || body[1] != 0 {
		t.Fatalf("connack %x %x: %v (want session present 0: the expiry came first)", typ, body, err)
	}
	rawSubscribe(t, c, r, 5, "ex/t", 1)
	apptest.Done(t, pub.Publish("ex/t", 1, false, "0"))
	rawPublish(t, r, "0", false)
}

// TestExpiredSessionLeavesNoSubscriptions: a session that expired takes
// its subscriptions with it, so a later connection under the same client
// id, with a clean start, gets no message for them. Upstream's expiry left
// them in the topic tree.
func TestExpiredSessionLeavesNoSubscriptions(t *testing.T) {
	srv := hookedServer(t, server.Limits{})
	addr := srv.Addr(server.ListenerMQTT)
	c, _ := rawSubscriber(t, addr, "gone-sub", []byte{0x11, 0, 0, 0, 1}, "gone/t", 1) // session expiry 1 s
	c.Close()
	apptest.Eventually(t, func() error { // the sweep ended the session
		if n := srv.Stats().Info.Subscriptions; n != 0 {
			return fmt.Errorf("%d subscriptions", n)
		}
		return nil
	})
	c, r := apptest.RawClientWith(t, addr, "gone-sub", 5, true, false, nil)
	pub := apptest.V3(t, "tcp://"+addr, "gone-pub")
	apptest.Done(t, pub.Publish("gone/t", 1, false, "stale"))
	apptest.RawExchange(t, c, r, apptest.RawStep{Send: []byte{0xc0, 0}, Want: []byte{0xd0, 0}}) // PINGRESP, no PUBLISH
}

// subscribedPauseHook holds up the OnSubscribed of client id until resume
// (or a while passed), having reported entered: for an adopted session,
// the moment its subscriptions are live and storage is being told of them.
type subscribedPauseHook struct {
	mqtt.HookBase
	id string
	*gate
}

func (*subscribedPauseHook) ID() string { return "subscribed-pause" }
func (*subscribedPauseHook) Provides(b byte) bool {
	return b == mqtt.OnSubscribed
}
func (h *subscribedPauseHook) OnSubscribed(cl *mqtt.Client, _ packets.Packet, _ []byte) {
	if cl.ID == h.id {
		h.hold()
	}
}

// TestAdoptionKeepsADeliveryMadeMeanwhile: a session that moved from
// another node with a queued QoS 1 message (packet id 1) is adopted here,
// and a local publisher's QoS 1 message reaches it while the adoption is
// under way (in sync mode OnSubscribed waits for a commit). Both must be
// delivered, the moved one first. The adoption installed the client and
// its subscriptions before the moved messages, with its packet ids not yet
// carried on: the local message took id 1 and the moved message, put in
// under the same id, replaced it, though its publisher had its PUBACK.
func TestAdoptionKeepsADeliveryMadeMeanwhile(t *testing.T) {
	src := hookedServer(t, server.Limits{})
	c, r := apptest.RawClient(t, src.Addr(server.ListenerMQTT), "ad-sub", 4, false, false, 0)
	rawSubscribe(t, c, r, 4, "ad/t", 1)
	c.Close()
	apptest.Eventually(t, func() error {
		if src.Stats().Info.ClientsConnected != 0 {
			return context.DeadlineExceeded
		}
		return nil
	})
	pub := apptest.V3(t, "tcp://"+src.Addr(server.ListenerMQTT), "ad-pub")
	apptest.Done(t, pub.Publish("ad/t", 1, false, "0"))
	ctx, cancel := context.WithTimeout(context.Background(), apptest.Wait)
	defer cancel()
	st, err := src.ReleaseSession(ctx, "ad-sub", true)
	if err != nil || st == nil || len(st.Inflight) != 1 {
		t.Fatalf("release: %+v %v", st, err)
	}

	h := &subscribedPauseHook{id: "ad-sub", gate: newGate(true)}
	dst := hookedServer(t, server.Limits{}, h)
	adopted := make(chan struct{})
	go func() {
		defer close(adopted)
		dst.AdoptSession(st)
	}()
	h.reached(t, "the adoption never told the hooks of the subscriptions")
	pub2 := apptest.V3(t, "tcp://"+dst.Addr(server.ListenerMQTT), "ad-pub2")
	apptest.Done(t, pub2.Publish("ad/t", 1, false, "1")) // acknowledged
	h.open()
	<-adopted

	c, r = apptest.RawClient(t, dst.Addr(server.ListenerMQTT), "ad-sub", 4, false, true, 0)
	ackInOrder(t, c, r, 2, func() string { return "" })
}
