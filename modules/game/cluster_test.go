package game_test

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/colonymq/colony/app"
	"github.com/colonymq/colony/app/apptest"
	"github.com/colonymq/colony/internal/amqptest"
	"github.com/colonymq/colony/modules/game"
)

// Two game nodes: a room lives on one; players of the other reach it
// (pinned calls, pushes and federated inputs), new rooms go to the less
// loaded node, and matchmaking spans both.
func TestRoomsAcrossNodes(t *testing.T) {
	url := amqptest.URL(t)
	prefix := amqptest.Prefix(t, url)
	cfg := func(id string) app.Config {
		c := apptest.Config(t)
		c.Node.ID = id
		c.Cluster = app.ClusterConfig{AMQPURL: url, Prefix: prefix, Beat: app.Duration(200 * time.Millisecond)}
		return c
	}
	clock := game.NewManualClock(t0)
	opts := game.Options{Clock: clock, Announce: app.Duration(100 * time.Millisecond),
		Modes: []game.Mode{{Name: "duel", Game: "duo"}}}
	a := start(t, cfg("a"), opts)
	b := start(t, cfg("b"), opts)
	for _, n := range []*node{a, b} {
		apptest.Eventually(t, func() error {
			if len(n.game.Nodes()) != 1 || !n.Cluster().Serves("game") {
				return errors.New("the nodes do not see each other yet")
			}
			return nil
		})
	}

	ann := login(t, a, "ann", "ann-a")
	// Pushes from other nodes reach bob once node b has bound his routing
	// key at RabbitMQ, which happens asynchronously after his login.
	bob := login(t, b, "bob", "bob-b")
	reachable(t, a, bob)
	var created, joined game.JoinResp
	ann.must("create", &game.CreateReq{Game: "duo"}, &created)
	room := created.Room.ID
	if created.Room.Node != "a" || !strings.HasPrefix(room, "a:") {
		t.Fatalf("room %+v, want it on a (both empty: the creator's node)", created.Room)
	}
	bob.must("join", &game.JoinReq{Room: room}, &joined) // node b calls node a
	if m := bob.next(game.MsgJoined); m.Player != "bob" || m.Room != room {
		t.Fatalf("bob on b: %+v", m)
	}
	a.advance(2)
	for _, p := range []*player{ann, bob} {
		if fs := p.frames(2); fs[0].Tick != 1 || fs[1].Tick != 2 {
			t.Fatalf("%s: %+v", p.name, fs)
		}
	}
	// An input by request from b lands on the next tick; published ones
	// cross by federation, in order.
	var at game.InputResp
	bob.must("input", &game.InputReq{Room: room, Seq: 1, Data: json.RawMessage(`"r"`)}, &at)
	if at.Tick != 3 {
		t.Fatalf("input lands on %d", at.Tick)
	}
	bob.publishInput(room, game.InputReq{Seq: 2, Data: json.RawMessage(`"p1"`)})
	bob.publishInput(room, game.InputReq{Seq: 3, Data: json.RawMessage(`"p2"`)})
	var seqs []uint64
	for deadline := time.Now().Add(apptest.Wait); time.Now().Before(deadline); { // until they have crossed
		a.advance(1)
		f := ann.next(game.MsgFrame)
		for _, in := range f.Inputs {
			seqs = append(seqs, in.Seq)
		}
		if len(seqs) == 3 {
			break
		}
	}
	if len(seqs) != 3 || seqs[0] != 1 || seqs[1] != 2 || seqs[2] != 3 {
		t.Fatalf("inputs arrived as %v, want 1 2 3", seqs)
	}
	// Bob's node tells a when his connection drops.
	bob.offline(b)
	if m := ann.next(game.MsgAway); m.Player != "bob" {
		t.Fatalf("ann: %+v", m)
	}

	// a holds a room of two: a new room goes to b, even when asked on a.
	apptest.Eventually(t, func() error {
		if l := b.game.Nodes(); len(l) != 1 || l[0].Rooms != 1 || l[0].Players != 2 {
			return errors.New("b has not heard a's load yet")
		}
		return nil
	})
	cat := login(t, a, "cat", "cat-a")
	var other game.JoinResp
	cat.must("create", &game.CreateReq{Game: "duo"}, &other)
	if other.Room.Node != "b" {
		t.Fatalf("room %+v placed on %s, want b", other.Room, other.Room.Node)
	}
	a.advance(1)
	if f := cat.next(game.MsgFrame); f.Room != other.Room.ID {
		t.Fatalf("cat: %+v", f)
	}

	// Matchmaking runs on a (smallest id) for players of both nodes.
	dan := login(t, b, "dan", "dan-b")
	reachable(t, a, dan)
	eve := login(t, a, "eve", "eve-a")
	dan.must("queue", &game.QueueReq{Mode: "duel"}, nil)
	eve.must("queue", &game.QueueReq{Mode: "duel"}, nil)
	ev := apptest.Next(t, dan.match)
	if ev.Type != "matched" || apptest.Next(t, eve.match).Room != ev.Room {
		t.Fatalf("dan: %+v", ev)
	}
	dan.must("join", &game.JoinReq{Room: ev.Room}, nil)
	eve.must("join", &game.JoinReq{Room: ev.Room}, nil)
}

// reachable waits until pushes from node n reach p on another node: a
// node binds a user's routing key asynchronously after login.
func reachable(t *testing.T, n *node, p *player) {
	t.Helper()
	probe, _ := json.Marshal(game.Msg{Type: "probe"})
	apptest.Eventually(t, func() error {
		if _, err := n.Server().PushUser(p.name, game.Topic(p.name, game.TopicRoom), probe, 0); err != nil {
			return err
		}
		select {
		case m := <-p.room:
			if m.Type == "probe" {
				return nil
			}
			t.Fatalf("%s: unexpected %+v", p.name, m)
		case <-time.After(20 * time.Millisecond):
		}
		return errors.New(p.name + " not reachable from node " + n.Config().Node.ID + " yet")
	})
}
