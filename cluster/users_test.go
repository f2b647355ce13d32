package cluster_test

import (
	"bytes"
	"errors"
	"fmt"
	"testing"
	"time"

	pahov3 "github.com/eclipse/paho.mqtt.golang"

	"github.com/colonymq/colony/app"
	"github.com/colonymq/colony/app/apptest"
	"github.com/colonymq/colony/server"
)

// routes waits until a node's queue has n user and client bindings, so a
// test acts only once RabbitMQ routes to it.
func routes(t *testing.T, a *app.App, n int) {
	t.Helper()
	apptest.Eventually(t, func() error {
		if st := a.Federation().Stats(); st.Routes != n {
			return fmt.Errorf("node %s: %d routes, want %d", a.Config().Node.ID, st.Routes, n)
		}
		return nil
	})
}

// bindUser binds a client to a user id once the node has registered the
// connection, which it does just after sending CONNACK.
func bindUser(t *testing.T, a *app.App, clientID, userID string) {
	t.Helper()
	apptest.Eventually(t, func() error { return a.Server().BindUser(clientID, userID) })
}

// lost returns a channel that receives when the client's connection drops.
func lost(o *pahov3.ClientOptions) <-chan error {
	ch := make(chan error, 1)
	o.SetConnectionLostHandler(func(_ pahov3.Client, err error) { ch <- err })
	return ch
}

// watched connects a client that reports its lost connection.
func watched(t *testing.T, a *app.App, id string, tweak ...func(*pahov3.ClientOptions)) (pahov3.Client, *inbox, <-chan error) {
	t.Helper()
	var gone <-chan error
	b := newInbox()
	c := apptest.V3(t, apptest.URL(a), id, append(tweak, func(o *pahov3.ClientOptions) {
		o.SetDefaultPublishHandler(b.handler)
		gone = lost(o)
	})...)
	return c, b, gone
}

// TestPushAcrossNodes: a push to a user reaches every connection of the
// user, on its own node and on others, exactly once; a push to a client
// id reaches it on the node it is connected to.
func TestPushAcrossNodes(t *testing.T) {
	c := newCluster(t)
	a, b := c.node("a"), c.node("b")
	_, onA, _ := watched(t, a, "phone")
	_, onB, _ := watched(t, b, "laptop")
	for _, n := range []struct {
		node   *app.App
		client string
	}{{a, "phone"}, {b, "laptop"}} {
		bindUser(t, n.node, n.client, "u1")
	}
	routes(t, a, 2) // user.u1 and client.phone
	routes(t, b, 2)

	n, err := b.Server().PushUser("u1", "inbox/u1", []byte("hello"), 1)
	if err != nil || n != 1 {
		t.Fatalf("PushUser = %d, %v; want 1 local connection", n, err)
	}
	expect(t, onA, "inbox/u1", "hello")
	expect(t, onB, "inbox/u1", "hello")

	if err := b.Server().PushClient("phone", "direct", []byte("just you"), 1); err != nil {
		t.Fatalf("PushClient to a client on another node: %v", err)
	}
	expect(t, onA, "direct", "just you")
	time.Sleep(grace)
	if onA.count("inbox/u1") != 1 || onB.count("inbox/u1") != 1 || onB.count("direct") != 0 {
		t.Fatalf("duplicates or strays: a %d/%d, b %d/%d", onA.count("inbox/u1"), onA.count("direct"), onB.count("inbox/u1"), onB.count("direct"))
	}
	// Nobody connected anywhere: no error, nothing delivered.
	if n, err := a.Server().PushUser("nobody", "inbox/x", []byte("x"), 1); n != 0 || err != nil {
		t.Fatalf("push to an absent user: %d, %v", n, err)
	}
}

// TestKickAcrossNodes: kicking a user or a client id from one node
// disconnects the connections on the others, and with single login a
// user's login on one node ends the older connection on another.
func TestKickAcrossNodes(t *testing.T) {
	c := newCluster(t)
	cfg := c.config("a")
	cfg.Sessions.SingleLogin = true
	a := apptest.Run(t, cfg)
	cfg = c.config("b")
	cfg.Sessions.SingleLogin = true
	b := apptest.Run(t, cfg)

	_, _, userGone := watched(t, a, "u2-phone")
	bindUser(t, a, "u2-phone", "u2")
	_, _, clientGone := watched(t, a, "kiosk")
	routes(t, a, 3) // user.u2, client.u2-phone, client.kiosk

	if n := b.Server().KickUser("u2", "banned"); n != 0 {
		t.Fatalf("KickUser counted %d connections on b, want 0", n)
	}
	apptest.Next(t, userGone)
	if err := b.Server().KickClient("kiosk", "maintenance"); err != nil {
		t.Fatalf("KickClient of a client on another node: %v", err)
	}
	apptest.Next(t, clientGone)
	routes(t, a, 0) // so the counts below are the new keys'

	// Single login: u3 on a, then u3 on b.
	_, _, olderGone := watched(t, a, "u3-old")
	bindUser(t, a, "u3-old", "u3")
	routes(t, a, 2) // user.u3, client.u3-old
	newer, newerIn, newerGone := watched(t, b, "u3-new")
	bindUser(t, b, "u3-new", "u3")
	apptest.Next(t, olderGone)
	if !newer.IsConnected() {
		t.Fatal("the newer connection was disconnected too")
	}
	apptest.None(t, newerGone, grace)
	routes(t, b, 2)
	if _, err := a.Server().PushUser("u3", "inbox/u3", []byte("to the new one"), 1); err != nil {
		t.Fatal(err)
	}
	expect(t, newerIn, "inbox/u3", "to the new one")
}

// TestSessionTakeover: a client with a persistent session on node a that
// reconnects to node b finds its session there: CONNACK session present,
// the messages queued on a while it was away, and its subscriptions,
// which now bring it messages published on a through b. Node a no longer
// holds the session.
func TestSessionTakeover(t *testing.T) {
	c := newCluster(t)
	a, b := c.node("a"), c.node("b")
	persistent := func(o *pahov3.ClientOptions) { o.SetCleanSession(false) }

	p, _, _ := watched(t, a, "p", persistent)
	apptest.Done(t, p.Subscribe("s/#", 1, nil))
	left := make(chan struct{}, 1)
	cancel := a.Server().Watch(func(ev server.Event) {
		if ev.Kind == server.Disconnected && ev.ClientID == "p" {
			left <- struct{}{}
		}
	})
	defer cancel()
	p.Disconnect(50)
	apptest.Next(t, left)
	if !a.Server().HasSession("p") {
		t.Fatal("node a dropped the persistent session")
	}
	pub, _ := client(t, a, "pub")
	publish(t, pub, "s/1", 1, false, "queued while away")
	publish(t, pub, "s/2", 1, false, "queued too")

	in := newInbox()
	o := pahov3.NewClientOptions().AddBroker(apptest.URL(b)).SetClientID("p").SetCleanSession(false).
		SetAutoReconnect(false).SetDefaultPublishHandler(in.handler)
	p2 := pahov3.NewClient(o)
	tok := p2.Connect()
	if !tok.WaitTimeout(apptest.Wait) || tok.Error() != nil {
		t.Fatalf("connect to b: %v", tok.Error())
	}
	t.Cleanup(func() { p2.Disconnect(50) })
	if !tok.(*pahov3.ConnectToken).SessionPresent() {
		t.Fatal("CONNACK on b: session not present")
	}
	expect(t, in, "s/1", "queued while away")
	expect(t, in, "s/2", "queued too")
	if a.Server().HasSession("p") {
		t.Fatal("node a still holds the session")
	}
	if st := b.Federation().Stats(); st.Takeovers != 1 {
		t.Fatalf("node b: %+v", st)
	}

	publish(t, pub, "s/3", 1, false, "after the move")
	expect(t, in, "s/3", "after the move")
	time.Sleep(grace)
	if n := in.count("s/1") + in.count("s/2") + in.count("s/3"); n != 3 {
		t.Fatalf("got %d messages, want 3 (no duplicates)", n)
	}
}

// TestSessionMoveKeepsPendingQoS2: a client's own QoS 2 publish that node
// a acknowledged with a PUBREC, and that the client has not released yet,
// moves with its persistent session to node b: sent again there (DUP) it
// gets its PUBREC and is not delivered again, and its PUBREL completes it.
func TestSessionMoveKeepsPendingQoS2(t *testing.T) {
	c := newCluster(t)
	a, b := c.node("a"), c.node("b")
	left := make(chan struct{}, 1)
	cancel := a.Server().Watch(func(ev server.Event) {
		if ev.Kind == server.Disconnected && ev.ClientID == "q2" {
			left <- struct{}{}
		}
	})
	defer cancel()

	publish := append([]byte{0x34, 2 + 6 + 2 + 4, 0, 6, 'm', 'o', 'v', 'e', '/', 't', 0, 9}, "once"...)
	conn, r := apptest.RawClient(t, a.Addr("mqtt"), "q2", 4, false, false, 0)
	if _, err := conn.Write(publish); err != nil {
		t.Fatal(err)
	}
	if typ, body, err := apptest.ReadRawPacket(r, nil); err != nil || typ != 0x50 || !bytes.Equal(body, []byte{0, 9}) {
		t.Fatalf("want PUBREC 9 from a, got %x %x: %v", typ, body, err)
	}
	conn.Close()
	apptest.Next(t, left)

	_, in := client(t, b, "watcher", "move/t")
	conn, r = apptest.RawClient(t, b.Addr("mqtt"), "q2", 4, false, true, 0)
	publish[0] |= 0x08 // DUP
	end := append([]byte{0x32, 2 + 6 + 2 + 3, 0, 6, 'm', 'o', 'v', 'e', '/', 't', 0, 10}, "end"...)
	apptest.RawExchange(t, conn, r,
		apptest.RawStep{Send: publish, Want: []byte{0x50, 2, 0, 9}},
		apptest.RawStep{Send: []byte{0x62, 2, 0, 9}, Want: []byte{0x70, 2, 0, 9}},
		apptest.RawStep{Send: end, Want: []byte{0x40, 2, 0, 10}})
	expect(t, in, "move/t", "end") // not "once" first: the repeat was not delivered again
}

// TestLiveTakeover: the same client id connecting to another node ends
// the connection on the first, which is told why (session taken over),
// and the session continues on the new node.
func TestLiveTakeover(t *testing.T) {
	c := newCluster(t)
	a, b := c.node("a"), c.node("b")
	persistent := func(o *pahov3.ClientOptions) { o.SetCleanSession(false) }
	p, _, gone := watched(t, a, "dup", persistent)
	apptest.Done(t, p.Subscribe("live/#", 1, nil))
	routes(t, a, 1)

	_, in, _ := watched(t, b, "dup", persistent)
	apptest.Next(t, gone)
	if a.Server().HasSession("dup") || !b.Server().HasSession("dup") {
		t.Fatalf("session on a %v, on b %v; want only on b", a.Server().HasSession("dup"), b.Server().HasSession("dup"))
	}
	routes(t, a, 0)
	pub, _ := client(t, a, "pub")
	publish(t, pub, "live/1", 1, false, "follows the client")
	expect(t, in, "live/1", "follows the client")

	// A clean start elsewhere ends the connection without moving anything.
	_, _, gone2 := watched(t, a, "dup2")
	routes(t, a, 2) // client.dup2 and client.pub
	watched(t, b, "dup2")
	apptest.Next(t, gone2)
	apptest.Eventually(t, func() error {
		if a.Server().HasSession("dup2") {
			return errors.New("a still holds dup2")
		}
		return nil
	})
}
