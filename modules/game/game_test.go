package game_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/colonymq/colony/app"
	"github.com/colonymq/colony/app/apptest"
	"github.com/colonymq/colony/modules/game"
	"github.com/colonymq/colony/rpc"
)

// setupRoom logs in names and seats them all in one new room of g,
// created by the first; it returns the room id.
func setupRoom(t *testing.T, n *node, g string, names ...string) (string, []*player) {
	t.Helper()
	var ps []*player
	for _, name := range names {
		ps = append(ps, login(t, n, name, name+"-1"))
	}
	var created game.JoinResp
	ps[0].must("create", &game.CreateReq{Game: g}, &created)
	room := created.Room.ID
	for _, p := range ps[1:] {
		var j game.JoinResp
		p.must("join", &game.JoinReq{Room: room}, &j)
	}
	// Everyone has seen the last join.
	for _, p := range ps {
		for {
			if m := p.next(game.MsgJoined); m.Player == names[len(names)-1] {
				break
			}
		}
	}
	return room, ps
}

func TestFourPlayersGetConsistentFramesInTickOrder(t *testing.T) {
	n := start(t, apptest.Config(t), game.Options{})
	room, ps := setupRoom(t, n, "lock", "ann", "bob", "cat", "dan")
	n.advance(10)
	var first []game.Msg
	for i, p := range ps {
		fs := p.frames(10)
		if want := []uint64{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}; !slices.Equal(ticks(fs), want) {
			t.Fatalf("%s: frame ticks %v, want %v", p.name, ticks(fs), want)
		}
		for _, f := range fs {
			if f.Room != room || f.Inputs != nil {
				t.Fatalf("%s: frame %+v", p.name, f)
			}
		}
		if i == 0 {
			first = fs
		} else if !reflect.DeepEqual(fs, first) {
			t.Fatalf("%s got frames %+v, ann %+v", p.name, fs, first)
		}
	}
	var list game.ListResp
	ps[0].must("list", &game.ListReq{Game: "lock"}, &list)
	if len(list.Rooms) != 0 {
		t.Fatalf("a full room is listed: %+v", list)
	}
}

func TestInputsBetweenTicksLandOnTheNextTickInOrder(t *testing.T) {
	n := start(t, apptest.Config(t), game.Options{})
	room, ps := setupRoom(t, n, "lock", "ann", "bob", "cat", "dan")
	ann, bob, cat := ps[0], ps[1], ps[2]
	n.advance(3)
	for _, p := range ps {
		p.frames(3)
	}
	// Between tick 3 and 4: published inputs (QoS 1: acknowledged once
	// the room has them) and one by request, whose reply names the tick.
	for i := 1; i <= 3; i++ {
		if rc := ann.publishInput(room, game.InputReq{Seq: uint64(i), Data: json.RawMessage(fmt.Sprint(i))}); rc != 0 {
			t.Fatalf("publish input: reason code %#x", rc)
		}
	}
	var at game.InputResp
	bob.must("input", &game.InputReq{Room: room, Seq: 1, Data: json.RawMessage(`"b"`)}, &at)
	if at.Tick != 4 {
		t.Fatalf("bob's input lands on tick %d, want 4", at.Tick)
	}
	cat.publishInput(room, game.InputReq{Seq: 1, Data: json.RawMessage(`"c"`)})
	// Aimed ahead: waits for its tick. Too late: refused.
	cat.must("input", &game.InputReq{Room: room, Tick: 6, Seq: 2, Data: json.RawMessage(`"c6"`)}, &at)
	if at.Tick != 6 {
		t.Fatalf("input aimed at tick 6 lands on %d", at.Tick)
	}
	n.advance(1)
	n.advance(2)
	want := [][]game.FrameInput{
		{{Player: "ann", Seq: 1, Data: json.RawMessage("1")}, {Player: "ann", Seq: 2, Data: json.RawMessage("2")},
			{Player: "ann", Seq: 3, Data: json.RawMessage("3")}, {Player: "bob", Seq: 1, Data: json.RawMessage(`"b"`)},
			{Player: "cat", Seq: 1, Data: json.RawMessage(`"c"`)}},
		nil,
		{{Player: "cat", Seq: 2, Data: json.RawMessage(`"c6"`)}},
	}
	for _, p := range ps {
		fs := p.frames(3)
		if !slices.Equal(ticks(fs), []uint64{4, 5, 6}) {
			t.Fatalf("%s: ticks %v", p.name, ticks(fs))
		}
		for i, f := range fs {
			if !reflect.DeepEqual(f.Inputs, want[i]) {
				t.Fatalf("%s: tick %d inputs %+v, want %+v", p.name, f.Tick, f.Inputs, want[i])
			}
		}
	}
	// An input aimed at tick 1 (MaxLag 20 ticks) after tick 30 is refused.
	n.advance(24)
	for _, p := range ps {
		p.frames(24)
	}
	err := bob.call("input", &game.InputReq{Room: room, Tick: 1}, nil)
	wantErr(t, err, rpc.CodeBadRequest, "too late")
	// Spectators and strangers have no seat.
	eve := login(t, n, "eve", "eve-1")
	var j game.JoinResp
	eve.must("join", &game.JoinReq{Room: room, Spectator: true}, &j)
	wantErr(t, eve.call("input", &game.InputReq{Room: room}, nil), rpc.CodeForbidden, "no seat")
	n.advance(1)
	if f := eve.next(game.MsgFrame); f.Tick != 31 {
		t.Fatalf("spectator's first frame: %+v", f)
	}
	// Nobody may publish inputs as someone else.
	if rc := eve.publishInput(room, game.InputReq{}); rc != 0 {
		t.Fatalf("own input topic: reason code %#x", rc)
	}
	b, _ := json.Marshal(game.InputReq{Data: json.RawMessage(`"forged"`)})
	ack, err := eve.c.Publish(apptest.Ctx(t), &paho.Publish{Topic: game.TopicInput + "ann/" + room, QoS: 1, Payload: b})
	if ack == nil || ack.ReasonCode != 0x87 {
		t.Fatalf("publishing as ann: ack %+v, %v", ack, err)
	}
}

func TestReconnectWithinGraceReplaysMissedFramesAfterItSeatIsLost(t *testing.T) {
	n := start(t, apptest.Config(t), game.Options{Grace: app.Duration(time.Second)})
	room, ps := setupRoom(t, n, "duo", "ann", "bob")
	ann, bob := ps[0], ps[1]
	n.advance(2)
	ann.frames(2)
	bob.frames(2)
	seen := bob.last.Load()

	// Within the grace window (1 s = 20 ticks): 5 ticks away.
	bob.offline(n)
	if m := ann.next(game.MsgAway); m.Player != "bob" {
		t.Fatalf("ann: %+v", m)
	}
	n.advance(5)
	ann.frames(5)
	bob2 := connect(t, n, "bob", "bob-2")
	var lr game.LoginResp
	bob2.must("login", &game.LoginReq{Name: "bob"}, &lr)
	if lr.Room != room {
		t.Fatalf("login after a drop: %+v, want room %s", lr, room)
	}
	var j game.JoinResp
	bob2.must("join", &game.JoinReq{Room: room, Since: seen}, &j)
	if !j.Rejoined || j.Replayed != 5 || j.Missed {
		t.Fatalf("rejoin: %+v, want the 5 frames missed replayed", j)
	}
	// The frames bob missed, then live ones, in order.
	n.advance(1)
	if got := ticks(bob2.frames(6)); !slices.Equal(got, []uint64{3, 4, 5, 6, 7, 8}) {
		t.Fatalf("bob's frames after rejoining: %v", got)
	}
	if m := ann.next(game.MsgBack); m.Player != "bob" {
		t.Fatalf("ann: %+v", m)
	}

	// Beyond the window the seat goes, and someone else can take it.
	bob2.offline(n)
	ann.next(game.MsgAway)
	n.advance(21)
	if m := ann.next(game.MsgLeft); m.Player != "bob" || m.Reason != game.ReasonTimeout {
		t.Fatalf("ann: %+v", m)
	}
	cat := login(t, n, "cat", "cat-1")
	cat.must("join", &game.JoinReq{Room: room}, &j)
	bob3 := connect(t, n, "bob", "bob-3")
	var lr3 game.LoginResp
	bob3.must("login", &game.LoginReq{Name: "bob"}, &lr3)
	if lr3.Room != "" {
		t.Fatalf("login after losing the seat: %+v", lr3)
	}
	wantErr(t, bob3.call("join", &game.JoinReq{Room: room, Since: seen}, nil), rpc.CodeForbidden, "full")
}

func TestSecondLoginKicksTheFirst(t *testing.T) {
	n := start(t, apptest.Config(t), game.Options{})
	first := login(t, n, "ann", "ann-phone")
	second := login(t, n, "ann", "ann-laptop")
	d := apptest.Next(t, first.c.Disconn)
	if d.ReasonCode != 0x98 || d.Properties == nil || d.Properties.ReasonString != game.ReasonReplaced {
		t.Fatalf("first connection's disconnect: %+v %+v", d, d.Properties)
	}
	if got := n.Server().ClientsOf("ann"); !slices.Equal(got, []string{"ann-laptop"}) {
		t.Fatalf("ann's connections: %v", got)
	}
	var r game.JoinResp
	second.must("create", &game.CreateReq{Game: "duo"}, &r)
	// Without login, nothing works; a connection cannot read another
	// player's deliveries.
	mallory := connect(t, n, "mallory", "mallory-1")
	wantErr(t, mallory.call("create", &game.CreateReq{Game: "duo"}, nil), rpc.CodeForbidden, "login")
	ack, err := mallory.c.Subscribe(apptest.Ctx(t), &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{
		{Topic: game.TopicRoot + "ann/#", QoS: 0}}})
	if ack == nil || !slices.Equal(ack.Reasons, []byte{0x87}) {
		t.Fatalf("subscribing to ann's topics: %+v, %v", ack, err)
	}
	wantErr(t, mallory.call("node_join", map[string]string{"room": r.Room.ID, "player": "mallory"}, nil),
		rpc.CodeForbidden, "game nodes only")
}

func TestRoomsPrivateCodesSpectatorsAndMessages(t *testing.T) {
	n := start(t, apptest.Config(t), game.Options{})
	ann := login(t, n, "ann", "ann-1")
	bob := login(t, n, "bob", "bob-1")
	cat := login(t, n, "cat", "cat-1")
	var priv, pub game.JoinResp
	ann.must("create", &game.CreateReq{Game: "lock", Private: true}, &priv)
	if priv.Room.Code == "" || !priv.Room.Private {
		t.Fatalf("private room: %+v", priv.Room)
	}
	bob.must("create", &game.CreateReq{Game: "lock"}, &pub)
	var list game.ListResp
	cat.must("list", &game.ListReq{}, &list)
	if len(list.Rooms) != 1 || list.Rooms[0].ID != pub.Room.ID || list.Rooms[0].Code != "" {
		t.Fatalf("list: %+v", list)
	}
	wantErr(t, cat.call("join", &game.JoinReq{Room: priv.Room.ID}, nil), rpc.CodeForbidden, "private")
	wantErr(t, cat.call("join", &game.JoinReq{Code: "NOSUCH"}, nil), rpc.CodeNotFound, "no room")
	var j game.JoinResp
	cat.must("join", &game.JoinReq{Code: priv.Room.Code}, &j)
	if j.Room.ID != priv.Room.ID {
		t.Fatalf("joined by code: %+v", j)
	}
	wantErr(t, cat.call("join", &game.JoinReq{Room: pub.Room.ID}, nil), rpc.CodeForbidden, "already in room")
	refused := login(t, n, "refused", "refused-1")
	wantErr(t, refused.call("join", &game.JoinReq{Room: pub.Room.ID}, nil), rpc.CodeForbidden, "game refused")

	// Messages from the game: to all but one.
	ann.next(game.MsgJoined) // ann
	ann.next(game.MsgJoined) // cat
	cat.next(game.MsgJoined)
	cat.must("input", &game.InputReq{Room: priv.Room.ID, Data: json.RawMessage(`"hello"`)}, nil)
	n.advance(1)
	if m := ann.next("hello"); string(m.Data) != `"cat"` {
		t.Fatalf("ann: %+v", m)
	}
	if m := cat.next(); m.Type != game.MsgFrame {
		t.Fatalf("cat got %+v, want its frame only", m)
	}

	// Leaving frees the seat; the last one out closes the room.
	cat.must("leave", &game.RoomReq{}, nil)
	if m := ann.next(game.MsgLeft); m.Player != "cat" || m.Reason != game.ReasonLeft {
		t.Fatalf("ann: %+v", m)
	}
	bob.must("leave", &game.RoomReq{Room: pub.Room.ID}, nil)
	apptest.Eventually(t, func() error {
		if s := n.game.Stats(); s.Rooms != 1 || s.Players != 1 {
			return fmt.Errorf("stats %+v, want 1 room with 1 player", s)
		}
		return nil
	})
	wantErr(t, cat.call("join", &game.JoinReq{Room: pub.Room.ID}, nil), rpc.CodeNotFound, "no such room")
}

func TestEndStoresResultAndRatings(t *testing.T) {
	n := start(t, apptest.Config(t), game.Options{Modes: []game.Mode{{Name: "duel", Game: "duo"}}})
	ann := login(t, n, "ann", "ann-1")
	bob := login(t, n, "bob", "bob-1")
	ann.must("queue", &game.QueueReq{Mode: "duel"}, nil)
	bob.must("queue", &game.QueueReq{Mode: "duel"}, nil)
	ev := apptest.Next(t, ann.match)
	if ev.Type != "matched" || !slices.Equal(ev.Players, []string{"ann", "bob"}) {
		t.Fatalf("ann: %+v", ev)
	}
	if ev2 := apptest.Next(t, bob.match); ev2.Room != ev.Room {
		t.Fatalf("bob: %+v", ev2)
	}
	eve := login(t, n, "eve", "eve-1")
	wantErr(t, eve.call("join", &game.JoinReq{Room: ev.Room}, nil), rpc.CodeForbidden, "matched players")
	ann.must("join", &game.JoinReq{Room: ev.Room}, nil)
	bob.must("join", &game.JoinReq{Room: ev.Room}, nil)
	ann.must("input", &game.InputReq{Room: ev.Room, Data: json.RawMessage(`"end"`)}, nil)
	n.advance(1)
	if m := bob.next(game.MsgEnded); m.Room != ev.Room {
		t.Fatalf("bob: %+v", m)
	}
	if m := bob.next(game.MsgSeatLost); m.Reason != game.ReasonEnded {
		t.Fatalf("bob: %+v", m)
	}
	apptest.Eventually(t, func() error {
		var r game.RatingResp
		ann.must("rating", &game.RatingReq{Mode: "duel"}, &r)
		if r.Rating != 1516 {
			return fmt.Errorf("ann's rating %v, want 1516 after beating an equal", r.Rating)
		}
		return nil
	})
	if r, err := n.game.Rating(apptest.Ctx(t), "duel", "bob"); err != nil || r != 1484 {
		t.Fatalf("bob's rating %v, %v", r, err)
	}
	var lr game.LoginResp
	ann.must("login", &game.LoginReq{Name: "ann"}, &lr)
	if lr.Room != "" {
		t.Fatalf("ann still in the ended room: %+v", lr)
	}
}

func TestMatchmakingFormsMatchesAndWidensForALonelyPlayer(t *testing.T) {
	n := start(t, apptest.Config(t), game.Options{Modes: []game.Mode{
		{Name: "trio", Game: "trio", Window: 50, Widen: 100, MaxWindow: 2000, Timeout: app.Duration(time.Minute)}}})
	ratings := map[string]float64{"a1": 1000, "a2": 1010, "a3": 1020, "b1": 1500, "b2": 1520, "b3": 1540,
		"c1": 2000, "c2": 2010, "c3": 2030, "lonely": 2600, "d1": 2100, "d2": 2150}
	ctx := apptest.Ctx(t)
	for p, r := range ratings {
		if err := n.game.SetRating(ctx, "trio", p, r); err != nil {
			t.Fatal(err)
		}
	}
	ps := map[string]*player{}
	for _, name := range []string{"a1", "b1", "c1", "lonely", "a2", "b2", "c2", "a3", "b3", "c3"} {
		ps[name] = login(t, n, name, name+"-1")
		var ti game.TicketInfo
		ps[name].must("queue", &game.QueueReq{Mode: "trio", Region: "eu"}, &ti)
		if ti.Rating != ratings[name] || ti.Window != 50 {
			t.Fatalf("%s's ticket: %+v", name, ti)
		}
	}
	rooms := map[string]bool{}
	for _, group := range [][]string{{"a1", "a2", "a3"}, {"b1", "b2", "b3"}, {"c1", "c2", "c3"}} {
		var room string
		for _, name := range group {
			ev := apptest.Next(t, ps[name].match)
			if ev.Type != "matched" || !slices.Equal(ev.Players, group) || (room != "" && ev.Room != room) {
				t.Fatalf("%s: %+v, want a match of %v", name, ev, group)
			}
			room = ev.Room
		}
		rooms[room] = true
	}
	if len(rooms) != 3 {
		t.Fatalf("rooms %v", rooms)
	}
	lonely := ps["lonely"]
	var ti game.TicketInfo
	lonely.must("status", nil, &ti)
	if ti.Window != 50 {
		t.Fatalf("lonely: %+v", ti)
	}
	for _, name := range []string{"d1", "d2"} {
		ps[name] = login(t, n, name, name+"-1")
		ps[name].must("queue", &game.QueueReq{Mode: "trio", Region: "eu"}, nil)
	}
	// Elsewhere, the same ratings do not count.
	us := login(t, n, "us1", "us1-1")
	us.must("queue", &game.QueueReq{Mode: "trio", Region: "us"}, nil)
	n.clock.Advance(2 * time.Second)
	lonely.must("status", nil, &ti)
	if ti.Window != 250 || ti.Waited != 2 {
		t.Fatalf("lonely after 2 s: %+v, want window 250", ti)
	}
	n.clock.Advance(2500 * time.Millisecond) // window 500: d1 (500 away) and d2 fit
	for _, name := range []string{"lonely", "d1", "d2"} {
		ev := apptest.Next(t, ps[name].match)
		// At 4 s (window 450) d2, in the middle, reaches both.
		if ev.Type != "matched" || !slices.Equal(ev.Players, []string{"d2", "d1", "lonely"}) {
			t.Fatalf("%s: %+v", name, ev)
		}
	}
	us.must("status", nil, &ti)
	wantErr(t, ps["d1"].call("status", nil, nil), rpc.CodeNotFound, "not queued")
	// Cancel, and timeouts.
	us.must("cancel", nil, nil)
	if ev := apptest.Next(t, us.match); ev.Type != "canceled" {
		t.Fatalf("us1: %+v", ev)
	}
	us.must("queue", &game.QueueReq{Mode: "trio", Region: "us"}, nil)
	n.clock.Advance(time.Minute)
	if ev := apptest.Next(t, us.match); ev.Type != "timeout" {
		t.Fatalf("us1: %+v", ev)
	}
}

func TestPartyQueuesTogether(t *testing.T) {
	n := start(t, apptest.Config(t), game.Options{Modes: []game.Mode{{Name: "quad", Game: "quad"}}})
	names := []string{"solo1", "lead", "m1", "m2", "solo2", "solo3", "solo4", "solo5"}
	ps := map[string]*player{}
	for _, name := range names {
		ps[name] = login(t, n, name, name+"-1")
	}
	var pt game.Party
	ps["lead"].must("party_create", nil, &pt)
	ps["m1"].must("party_join", &game.PartyReq{Party: pt.ID}, nil)
	ps["m2"].must("party_join", &game.PartyReq{Party: pt.ID}, &pt)
	if !slices.Equal(pt.Members, []string{"lead", "m1", "m2"}) || pt.Leader != "lead" {
		t.Fatalf("party %+v", pt)
	}
	wantErr(t, ps["m1"].call("queue", &game.QueueReq{Mode: "quad"}, nil), rpc.CodeForbidden, "leader")
	// Two solo players queue first: the party of 3 cannot fit beside both,
	// so the match is the party + solo1, never the party split.
	ps["solo1"].must("queue", &game.QueueReq{Mode: "quad"}, nil)
	ps["solo2"].must("queue", &game.QueueReq{Mode: "quad"}, nil)
	var ti game.TicketInfo
	ps["lead"].must("queue", &game.QueueReq{Mode: "quad"}, &ti)
	if !slices.Equal(ti.Players, []string{"lead", "m1", "m2"}) {
		t.Fatalf("party ticket %+v", ti)
	}
	var room string
	for _, name := range []string{"solo1", "lead", "m1", "m2"} {
		for {
			ev := apptest.Next(t, ps[name].match)
			if ev.Type == "party" {
				continue
			}
			if ev.Type != "matched" || !slices.Equal(ev.Players, []string{"lead", "m1", "m2", "solo1"}) ||
				(room != "" && ev.Room != room) {
				t.Fatalf("%s: %+v", name, ev)
			}
			room = ev.Room
			break
		}
	}
	for _, name := range []string{"solo3", "solo4", "solo5"} {
		ps[name].must("queue", &game.QueueReq{Mode: "quad"}, nil)
	}
	for _, name := range []string{"solo2", "solo3", "solo4", "solo5"} {
		if ev := apptest.Next(t, ps[name].match); ev.Type != "matched" || ev.Room == room {
			t.Fatalf("%s: %+v", name, ev)
		}
	}
	// A disconnected player's ticket goes.
	ps["solo1"].must("queue", &game.QueueReq{Mode: "quad"}, nil)
	ps["solo1"].offline(n)
	apptest.Eventually(t, func() error {
		if q := n.game.Stats(); q.Online != int64(len(names)-1) {
			return errors.New("solo1 still online")
		}
		return nil
	})
}

func TestInputRateLimit(t *testing.T) {
	n := start(t, apptest.Config(t), game.Options{InputRate: 1, InputBurst: 3})
	room, ps := setupRoom(t, n, "duo", "ann", "bob")
	for i := range 3 {
		ps[0].must("input", &game.InputReq{Room: room, Seq: uint64(i)}, nil)
	}
	wantErr(t, ps[0].call("input", &game.InputReq{Room: room}, nil), rpc.CodeRateLimited, "too many")
	ps[0].publishInput(room, game.InputReq{Seq: 9})
	n.advance(1)
	if f := ps[0].next(game.MsgFrame); len(f.Inputs) != 3 {
		t.Fatalf("frame %+v, want the 3 inputs within the burst", f)
	}
	// The sender hears about what was dropped, once a second at most.
	n.advance(20)
	if m := ps[0].next(game.MsgNotice); string(m.Data) != `{"dropped":2,"reason":"rate_limited"}` {
		t.Fatalf("notice %+v %s", m, m.Data)
	}
	// And /metrics shows it, with the rest (the tick's own count lands
	// just after its last message).
	apptest.Eventually(t, func() error {
		resp, err := http.Get("http://" + n.Addr("http") + "/metrics")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if err != nil {
			return err
		}
		for _, line := range []string{
			"colony_game_rooms 1", "colony_game_players 2", "colony_game_players_online 2", "colony_game_ticks_total 21",
			"colony_game_ticks_late_total 0", "colony_game_inputs_total 3",
			`colony_game_inputs_dropped_total{reason="rate_limited"} 2`, `colony_game_tick_duration_seconds{quantile="0.99"} `,
		} {
			if !strings.Contains(string(body), "\n"+line) {
				return fmt.Errorf("/metrics lacks %q", line)
			}
		}
		return nil
	})
}
