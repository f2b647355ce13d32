package grid_test

import (
	"encoding/json"
	"strconv"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/colonymq/colony/app/apptest"
	"github.com/colonymq/colony/examples/grid"
	"github.com/colonymq/colony/modules/game"
	"github.com/colonymq/colony/rpc"
)

// A bot plays the example game to the end over MQTT: it reads the board
// from each frame and publishes the move towards the nearest coin.
func TestBotWinsAGame(t *testing.T) {
	clock := game.NewManualClock(time.Unix(0, 0))
	m := game.New(game.Options{Guests: true, Clock: clock})
	if err := m.Register(grid.Game()); err != nil {
		t.Fatal(err)
	}
	a := apptest.Run(t, apptest.Config(t), m)
	c := apptest.V5(t, a.Addr("mqtt"), &paho.Connect{ClientID: "bot-1", CleanStart: true})
	if _, err := c.Subscribe(apptest.Ctx(t), &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "r/bot", QoS: 1}}}); err != nil {
		t.Fatal(err)
	}
	n := 0
	call := func(fn string, req, resp any) {
		t.Helper()
		n++
		b, _ := json.Marshal(req)
		if _, err := c.Publish(apptest.Ctx(t), &paho.Publish{Topic: "$rpc/game/" + fn, QoS: 1, Payload: b,
			Properties: &paho.PublishProperties{ResponseTopic: "r/bot", CorrelationData: []byte(strconv.Itoa(n))}}); err != nil {
			t.Fatal(err)
		}
		for {
			p := apptest.Next(t, c.Msgs)
			if p.Topic != "r/bot" {
				continue
			}
			if err := rpc.DecodeReply(p.Payload, resp); err != nil {
				t.Fatalf("%s: %v: %s", fn, err, p.Payload)
			}
			return
		}
	}
	call("login", game.LoginReq{Name: "bot"}, &game.LoginResp{})
	var jr game.JoinResp
	call("create", game.CreateReq{Game: grid.Name, Settings: json.RawMessage(`{"width":8,"height":6,"target":3,"coins":2,"seed":42}`)}, &jr)
	for range 200 {
		clock.Advance(100 * time.Millisecond)
		var msg game.Msg
		for msg.Type != game.MsgFrame && msg.Type != game.MsgEnded {
			p := apptest.Next(t, c.Msgs)
			if err := json.Unmarshal(p.Payload, &msg); err != nil {
				t.Fatal(err)
			}
		}
		if msg.Type == game.MsgEnded {
			var res game.Result
			if err := json.Unmarshal(msg.Data, &res); err != nil || res.Scores["bot"] != 3 {
				t.Fatalf("result %s", msg.Data)
			}
			return
		}
		var s grid.State
		if err := json.Unmarshal(msg.State, &s); err != nil {
			t.Fatal(err)
		}
		me, coin := s.Players["bot"], s.Coins[0]
		dir := "left"
		switch {
		case coin.X > me.X:
			dir = "right"
		case coin.Y > me.Y:
			dir = "down"
		case coin.Y < me.Y:
			dir = "up"
		}
		b, _ := json.Marshal(game.InputReq{Data: json.RawMessage(`{"dir":"` + dir + `"}`)})
		if _, err := c.Publish(apptest.Ctx(t), &paho.Publish{Topic: game.TopicInput + "bot/" + jr.Room.ID, QoS: 1, Payload: b}); err != nil {
			t.Fatal(err)
		}
	}
	t.Fatal("no win in 200 ticks")
}
