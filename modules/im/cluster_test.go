package im_test

import (
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/colonymq/colony/app"
	"github.com/colonymq/colony/app/apptest"
	"github.com/colonymq/colony/internal/amqptest"
	"github.com/colonymq/colony/modules"
	"github.com/colonymq/colony/modules/im"
)

// In a cluster im runs on one node; clients of the others reach it over
// RPC, get their deliveries through message federation, and are held to
// its topic guard by their own node.
func TestIMOnAnotherNode(t *testing.T) {
	a, b := twoNodes(t)

	alice := login(t, a, "alice", "alice-a")
	bob := login(t, b, "bob", "bob-b") // connected to node b
	var d im.Conversation
	bob.must("direct", &im.DirectReq{User: "alice"}, &d) // served by node a
	if d.Peer != "alice" {
		t.Fatalf("direct = %+v", d)
	}
	sent := bob.send(d.ID, "b-1", "hello from b")
	if m := alice.nextMsg(); m.Seq != sent.Seq || m.From != "bob" || m.Text != "hello from b" {
		t.Fatalf("alice got %+v", m)
	}
	if m := bob.nextMsg(); m.Seq != sent.Seq { // bob's echo crossed back to node b
		t.Fatalf("bob's echo %+v", m)
	}
	alice.send(d.ID, "a-1", "hi bob")
	if m := bob.nextMsg(); m.Text != "hi bob" || m.Seq != 2 {
		t.Fatalf("bob got %+v", m)
	}
	bob.must("read", &im.AckReq{Conv: d.ID, Seq: 2}, nil)
	for _, c := range []*client{alice, bob} {
		c.waitReceipt(d.ID, "bob", 2, 2)
	}

	// Node b guards im/u/ although im does not run there.
	mallory := login(t, b, "mallory", "mallory-b")
	if codes := mallory.subscribe("im/u/bob/#"); !slices.Equal(codes, []byte{0x87}) {
		t.Fatalf("mallory on node b subscribing to bob's topics: %#v", codes)
	}
}

// twoNodes starts a private cluster of two nodes: a runs im, b offers the
// built-in modules, im included, but runs only game.
func twoNodes(t *testing.T) (a, b *node) {
	t.Helper()
	url := amqptest.URL(t)
	prefix := amqptest.Prefix(t, url)
	clusterCfg := func(id string, enabled ...string) app.Config {
		cfg := apptest.Config(t)
		cfg.Node.ID = id
		cfg.Cluster = app.ClusterConfig{AMQPURL: url, Prefix: prefix, Beat: app.Duration(200 * time.Millisecond)}
		cfg.Modules.Enabled = enabled
		return cfg
	}
	a = start(t, clusterCfg("a", "im"), im.Options{})
	b = &node{App: apptest.Run(t, clusterCfg("b", "game"), modules.Builtin()...)}
	apptest.Eventually(t, func() error {
		if !b.Cluster().Serves("im") {
			return errors.New("node b does not see im on node a yet")
		}
		return nil
	})
	return a, b
}

// Presence spans the cluster: a user connected to a node that does not
// run im is online for the users of the node that does, and goes offline
// when the connection ends or the node stops.
func TestPresenceAcrossNodes(t *testing.T) {
	a, b := twoNodes(t)
	alice := login(t, a, "alice", "alice-a")
	var d im.Conversation
	alice.must("direct", &im.DirectReq{User: "bob"}, &d)
	var pr im.PresenceResp
	alice.must("presence", &im.PresenceReq{Users: []string{"bob"}}, &pr)
	if pr.Users[0].Online {
		t.Fatalf("bob online before he connected: %+v", pr)
	}

	bob := login(t, b, "bob", "bob-b")
	if p := nextPresence(t, alice, "bob"); !p.Online {
		t.Fatalf("alice saw %+v, want bob online", p)
	}
	alice.must("presence", &im.PresenceReq{Users: []string{"bob"}}, &pr)
	if !pr.Users[0].Online {
		t.Fatalf("presence of bob, connected to node b: %+v", pr)
	}
	bob.offline(b)
	p := nextPresence(t, alice, "bob")
	if p.Online || p.LastSeen == 0 {
		t.Fatalf("alice saw %+v, want bob offline with a last-seen time", p)
	}
	alice.must("presence", &im.PresenceReq{Users: []string{"bob"}}, &pr)
	if pr.Users[0].Online || pr.Users[0].LastSeen != p.LastSeen {
		t.Fatalf("presence of bob after he left node b: %+v, want offline, last seen %d", pr, p.LastSeen)
	}

	// Connected on both nodes: online until the last connection ends.
	login(t, b, "bob", "bob-b2")
	if p := nextPresence(t, alice, "bob"); !p.Online {
		t.Fatalf("alice saw %+v, want bob online again", p)
	}
	bobA := login(t, a, "bob", "bob-a")
	bobA.offline(a)
	alice.must("presence", &im.PresenceReq{Users: []string{"bob"}}, &pr)
	if !pr.Users[0].Online {
		t.Fatalf("bob left node a but is still on node b: %+v", pr)
	}

	// Node b stops: its users are gone.
	apptest.Stop(t, b.App)
	if p := nextPresence(t, alice, "bob"); p.Online {
		t.Fatalf("alice saw %+v after node b stopped, want bob offline", p)
	}
}

// nextPresence returns the next presence event c gets about user.
func nextPresence(t *testing.T, c *client, user string) im.Presence {
	t.Helper()
	for {
		p := apptest.Next(t, c.presence)
		if p.User == user {
			return p
		}
	}
}
