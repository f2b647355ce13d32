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
	url := amqptest.URL(t)
	prefix := amqptest.Prefix(t, url)
	clusterCfg := func(id string, enabled ...string) app.Config {
		cfg := apptest.Config(t)
		cfg.Node.ID = id
		cfg.Cluster = app.ClusterConfig{AMQPURL: url, Prefix: prefix, Beat: app.Duration(200 * time.Millisecond)}
		cfg.Modules.Enabled = enabled
		return cfg
	}
	a := start(t, clusterCfg("a", "im"), im.Options{})
	// Node b offers the built-in modules, im included, but runs only game.
	b := &node{App: apptest.Run(t, clusterCfg("b", "game"), modules.Builtin()...)}
	apptest.Eventually(t, func() error {
		if !b.Cluster().Serves("im") {
			return errors.New("node b does not see im on node a yet")
		}
		return nil
	})

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
