package game_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/colonymq/colony/app"
	"github.com/colonymq/colony/app/apptest"
	"github.com/colonymq/colony/modules/game"
	"github.com/colonymq/colony/rpc"
)

// t0 is where test clocks start.
var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

// tick is the interval of the 20 Hz test games.
const tick = 50 * time.Millisecond

// node is a running Colony with the game module on a manual clock.
type node struct {
	*app.App
	game  *game.Module
	clock *game.ManualClock
}

// echo is a test game: it records the inputs of each tick and, in state
// mode, sends them as the state; "end" input ends the game ranking
// players by join order.
type echo struct {
	ticks [][]string
}

func (e *echo) OnJoin(r *game.Room, p *game.Player) error {
	if p.ID == "refused" {
		return errors.New("not this one")
	}
	return nil
}
func (e *echo) OnLeave(*game.Room, *game.Player, game.Reason) {}
func (e *echo) OnInput(r *game.Room, in game.Input) {
	if string(in.Data) == `"end"` {
		var ranks [][]string
		for _, p := range r.Players() {
			ranks = append(ranks, []string{p.ID})
		}
		r.End(game.Result{Ranks: ranks})
		return
	}
	if string(in.Data) == `"hello"` {
		r.SendExcept(in.Player, "hello", in.Player)
	}
	if len(e.ticks) == 0 || r.Tick() != uint64(len(e.ticks)) {
		e.ticks = append(e.ticks, nil)
	}
	e.ticks[len(e.ticks)-1] = append(e.ticks[len(e.ticks)-1], in.Player+":"+string(in.Data))
}
func (e *echo) OnTick(r *game.Room) any { return map[string]uint64{"tick": r.Tick()} }

// games registers the test game types: "lock" (lock-step, 4 seats, 2
// spectators), "duo" (state, 2 seats), "trio" (state, 3 seats) and "quad".
func games(t *testing.T, m *game.Module) {
	t.Helper()
	mk := func(json.RawMessage) (game.Logic, error) { return &echo{}, nil }
	for _, g := range []game.Game{
		{Name: "lock", New: mk, Sync: game.SyncLockStep, Players: 4, Spectators: 2},
		{Name: "duo", New: mk, Sync: game.SyncLockStep, Players: 2},
		{Name: "trio", New: mk, Sync: game.SyncNone, Players: 3},
		{Name: "quad", New: mk, Sync: game.SyncNone, Players: 4},
	} {
		if err := m.Register(g); err != nil {
			t.Fatal(err)
		}
	}
}

// start runs a node with the game module and the test games.
func start(t *testing.T, cfg app.Config, opts game.Options) *node {
	t.Helper()
	clock := game.NewManualClock(t0)
	if opts.Clock == nil {
		opts.Clock = clock
	} else {
		clock = opts.Clock.(*game.ManualClock)
	}
	opts.Guests = true
	m := game.New(opts)
	games(t, m)
	return &node{App: apptest.Run(t, cfg, m), game: m, clock: clock}
}

// advance runs n ticks of the 20 Hz games.
func (n *node) advance(ticks int) {
	for range ticks {
		n.clock.Advance(tick)
	}
}

// player is one MQTT 5 client logged in as a player.
type player struct {
	t     *testing.T
	name  string
	id    string
	c     *apptest.V5Client
	room  chan game.Msg
	match chan game.MatchEvent
	last  atomic.Uint64 // N of the last room message

	req  apptest.Requests
	done chan struct{}
}

// connect opens client id without logging in.
func connect(t *testing.T, n *node, name, id string) *player {
	t.Helper()
	p := &player{t: t, name: name, id: id, c: apptest.V5(t, n.Addr("mqtt"), &paho.Connect{ClientID: id, CleanStart: true}),
		room: make(chan game.Msg, 4096), match: make(chan game.MatchEvent, 256),
		done: make(chan struct{})}
	go p.route()
	t.Cleanup(func() { close(p.done) })
	if _, err := p.c.Subscribe(apptest.Ctx(t), &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{
		{Topic: "replies/" + id, QoS: 1}}}); err != nil {
		t.Fatalf("%s: subscribe: %v", id, err)
	}
	return p
}

// login connects a client and logs it in as name.
func login(t *testing.T, n *node, name, id string) *player {
	t.Helper()
	p := connect(t, n, name, id)
	var r game.LoginResp
	p.must("login", &game.LoginReq{Name: name}, &r)
	if r.Player != name {
		t.Fatalf("login as %s: %+v", name, r)
	}
	return p
}

func (p *player) route() {
	for {
		var m *paho.Publish
		select {
		case m = <-p.c.Msgs:
		case <-p.done:
			return
		}
		switch {
		case strings.HasPrefix(m.Topic, "replies/"):
			p.req.Deliver(m)
		case m.Topic == game.Topic(p.name, game.TopicRoom):
			var msg game.Msg
			if err := json.Unmarshal(m.Payload, &msg); err != nil {
				p.t.Errorf("%s: room message %s: %v", p.id, m.Payload, err)
				continue
			}
			p.last.Store(msg.N)
			p.room <- msg
		case m.Topic == game.Topic(p.name, game.TopicMatch):
			var ev game.MatchEvent
			if err := json.Unmarshal(m.Payload, &ev); err != nil {
				p.t.Errorf("%s: match event %s: %v", p.id, m.Payload, err)
				continue
			}
			p.match <- ev
		default:
			p.t.Errorf("%s got a message on %s", p.id, m.Topic)
		}
	}
}

// call makes a request to game/<fn>; an error reply is an *rpc.Error.
func (p *player) call(fn string, req, resp any) error {
	p.t.Helper()
	return p.req.Call(p.t, p.c.Client, "replies/"+p.id, "game", fn, req, resp)
}

func (p *player) must(fn string, req, resp any) {
	p.t.Helper()
	if err := p.call(fn, req, resp); err != nil {
		p.t.Fatalf("%s: %s: %v", p.id, fn, err)
	}
}

// publishInput publishes an input on game/in/<player>/<room> at QoS 1 and
// returns the PUBACK's reason code.
func (p *player) publishInput(room string, in game.InputReq) byte {
	p.t.Helper()
	b, _ := json.Marshal(in)
	ack, err := p.c.Publish(apptest.Ctx(p.t), &paho.Publish{Topic: game.TopicInput + p.name + "/" + room, QoS: 1, Payload: b})
	if ack == nil {
		p.t.Fatalf("%s: publish input: %v", p.id, err)
	}
	return ack.ReasonCode
}

// next returns the next room message of a type in types (others are skipped).
func (p *player) next(types ...string) game.Msg {
	p.t.Helper()
	for {
		m := apptest.Next(p.t, p.room)
		if len(types) == 0 || slices.Contains(types, m.Type) {
			return m
		}
	}
}

// frames returns the next k frames.
func (p *player) frames(k int) []game.Msg {
	p.t.Helper()
	out := make([]game.Msg, 0, k)
	for len(out) < k {
		out = append(out, p.next(game.MsgFrame))
	}
	return out
}

// offline disconnects and waits until the node has let go of the client.
func (p *player) offline(n *node) {
	p.t.Helper()
	if err := p.c.Disconnect(&paho.Disconnect{}); err != nil {
		p.t.Fatalf("%s: disconnect: %v", p.id, err)
	}
	apptest.Eventually(p.t, func() error {
		if slices.Contains(n.Server().ClientsOf(p.name), p.id) {
			return errors.New(p.id + " still connected")
		}
		return nil
	})
}

func wantErr(t *testing.T, err error, code rpc.Code, what string) {
	t.Helper()
	if rpc.CodeOf(err) != code || !strings.Contains(fmt.Sprint(err), what) {
		t.Fatalf("got error %v, want %s mentioning %q", err, code, what)
	}
}

func ticks(ms []game.Msg) []uint64 {
	out := make([]uint64, len(ms))
	for i, m := range ms {
		out[i] = m.Tick
	}
	return out
}

var _ = context.Background
