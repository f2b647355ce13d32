package server_test

import (
	"context"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	pahov3 "github.com/eclipse/paho.mqtt.golang"

	"github.com/colonymq/colony/app"
	"github.com/colonymq/colony/app/apptest"
	"github.com/colonymq/colony/rpc"
	"github.com/colonymq/colony/server"
)

// calc is a test module exercising each way a request can end.
type calc struct {
	app.Base
	host *app.Host
}

func (*calc) ID() string { return "calc" }

type addReq struct{ A, B int }
type addResp struct{ Sum int }
type who struct {
	ClientID string `json:"client_id"`
	UserID   string `json:"user_id"`
	Node     string `json:"node"`
}
type loginReq struct{ User string }
type pushReq struct {
	User, Topic, Text string
}
type pushResp struct{ Delivered int }

func (m *calc) Init(_ context.Context, h *app.Host) error {
	m.host = h
	rpc.Handle(h.Registry, "calc", "add", func(_ context.Context, r *addReq) (*addResp, error) {
		return &addResp{Sum: r.A + r.B}, nil
	})
	rpc.Handle(h.Registry, "calc", "whoami", func(ctx context.Context, _ *struct{}) (*who, error) {
		c, ok := rpc.CallerFrom(ctx)
		if !ok {
			return nil, errors.New("no caller in context")
		}
		return &who{ClientID: c.ClientID, UserID: c.UserID, Node: c.Node}, nil
	})
	rpc.Handle(h.Registry, "calc", "fail", func(context.Context, *struct{}) (*struct{}, error) {
		return nil, rpc.Errorf(rpc.CodeForbidden, "not for you")
	})
	rpc.Handle(h.Registry, "calc", "slow", func(ctx context.Context, _ *struct{}) (*struct{}, error) {
		<-ctx.Done()
		return nil, ctx.Err()
	})
	rpc.Handle(h.Registry, "calc", "boom", func(context.Context, *struct{}) (*struct{}, error) {
		panic("kaboom")
	})
	rpc.Handle(h.Registry, "calc", "login", func(ctx context.Context, r *loginReq) (*who, error) {
		c, _ := rpc.CallerFrom(ctx)
		if err := h.Server.BindUser(c.ClientID, r.User); err != nil {
			return nil, err
		}
		return &who{ClientID: c.ClientID, UserID: r.User}, nil
	})
	rpc.Handle(h.Registry, "calc", "push", func(_ context.Context, r *pushReq) (*pushResp, error) {
		n, err := h.Server.PushUser(r.User, r.Topic, []byte(r.Text), 1)
		return &pushResp{Delivered: n}, err
	})
	rpc.Handle(h.Registry, "calc", "echo", func(_ context.Context, r *rpc.Raw) (*rpc.Raw, error) {
		return r, nil
	})
	return nil
}

type envelope struct {
	Result json.RawMessage `json:"result"`
	Error  *rpc.Error      `json:"error"`
}

func decodeReply(t *testing.T, b []byte) envelope {
	t.Helper()
	var e envelope
	if err := json.Unmarshal(b, &e); err != nil {
		t.Fatalf("reply %q is not JSON: %v", b, err)
	}
	return e
}

func rpcNode(t *testing.T) *app.App {
	cfg := apptest.Config(t)
	cfg.Limits.RPCTimeout = app.Duration(300 * time.Millisecond)
	return apptest.Run(t, cfg, &calc{})
}

func TestRequestResponseMQTT5(t *testing.T) {
	a := rpcNode(t)
	c := apptest.V5(t, a.Addr("mqtt"), &paho.Connect{ClientID: "caller5", CleanStart: true})
	if _, err := c.Subscribe(apptest.Ctx(t), &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "replies/caller5", QoS: 1}}}); err != nil {
		t.Fatal(err)
	}
	call := func(topic, body string) envelope {
		t.Helper()
		corr := []byte(topic)
		if _, err := c.Publish(apptest.Ctx(t), &paho.Publish{Topic: topic, QoS: 1, Payload: []byte(body),
			Properties: &paho.PublishProperties{ResponseTopic: "replies/caller5", CorrelationData: corr}}); err != nil {
			t.Fatalf("publish %s: %v", topic, err)
		}
		m := apptest.Next(t, c.Msgs)
		if m.Topic != "replies/caller5" || string(m.Properties.CorrelationData) != string(corr) {
			t.Fatalf("reply on %q with correlation %q, want replies/caller5 and %q", m.Topic, m.Properties.CorrelationData, corr)
		}
		if m.Properties.ContentType != "application/json" {
			t.Fatalf("content type %q", m.Properties.ContentType)
		}
		return decodeReply(t, m.Payload)
	}

	if e := call("$rpc/calc/add", `{"A":2,"B":40}`); string(e.Result) != `{"Sum":42}` || e.Error != nil {
		t.Fatalf("add: %+v", e)
	}
	e := call("$rpc/calc/whoami", ``)
	var w who
	if err := json.Unmarshal(e.Result, &w); err != nil || w.ClientID != "caller5" || w.Node != "test" {
		t.Fatalf("whoami: %s %v", e.Result, err)
	}
	for _, tc := range []struct{ topic, body, code string }{
		{"$rpc/nosuch/add", `{}`, "not_found"},
		{"$rpc/calc/nosuch", `{}`, "not_found"},
		{"$rpc/calc/add", `{"A":`, "bad_request"},
		{"$rpc/calc/fail", `{}`, "forbidden"},
		{"$rpc/calc/slow", `{}`, "timeout"},
		{"$rpc/calc/boom", `{}`, "internal"},
		{"$rpc/calc", `{}`, "bad_request"},
	} {
		e := call(tc.topic, tc.body)
		if e.Error == nil || string(e.Error.Code) != tc.code || e.Error.Message == "" {
			t.Errorf("%s %s: got %+v, want error %s with a message", tc.topic, tc.body, e, tc.code)
		}
	}
	// The module keeps serving after a panic.
	if e := call("$rpc/calc/add", `{"A":1,"B":1}`); string(e.Result) != `{"Sum":2}` {
		t.Fatalf("add after panic: %+v", e)
	}
}

func TestRequestResponseMQTT311(t *testing.T) {
	a := rpcNode(t)
	c := apptest.V3(t, apptest.URL(a), "caller3")
	replies, h := apptest.Sink()
	apptest.Done(t, c.Subscribe("$rpc/calc/+/+", 1, h))
	other := apptest.V3(t, apptest.URL(a), "eavesdropper")
	spied, sh := apptest.Sink()
	apptest.Done(t, other.Subscribe("$rpc/#", 1, sh))

	apptest.Done(t, c.Publish("$rpc/calc/add/m1", 1, false, `{"A":20,"B":22}`))
	m := apptest.Next(t, replies)
	if m.Topic() != "$rpc/calc/add/m1" {
		t.Fatalf("reply topic %q", m.Topic())
	}
	if e := decodeReply(t, m.Payload()); string(e.Result) != `{"Sum":42}` {
		t.Fatalf("add: %s", m.Payload())
	}
	apptest.Done(t, c.Publish("$rpc/calc/fail/m2", 1, false, `{}`))
	if e := decodeReply(t, apptest.Next(t, replies).Payload()); e.Error == nil || e.Error.Code != rpc.CodeForbidden {
		t.Fatalf("fail: %+v", e)
	}
	apptest.Done(t, c.Publish("$rpc/calc/echo/m3", 0, false, `not json at all`))
	if m := apptest.Next(t, replies); string(m.Payload()) != "not json at all" {
		t.Fatalf("raw echo: %q", m.Payload())
	}
	// Neither the requests nor the replies reach anyone else.
	apptest.None(t, spied, 200*time.Millisecond)
}

func TestMQANTTopics(t *testing.T) {
	cfg := apptest.Config(t)
	cfg.Gateway.MQANTTopics = true
	a := apptest.Run(t, cfg, &calc{})
	c := apptest.V3(t, apptest.URL(a), "mqant")
	replies, h := apptest.Sink()
	apptest.Done(t, c.Subscribe("calc/add/+", 1, h))
	apptest.Done(t, c.Subscribe("plain/topic/x", 1, h))
	apptest.Done(t, c.Publish("calc/add/7", 1, false, `{"A":1,"B":2}`))
	m := apptest.Next(t, replies)
	if m.Topic() != "calc/add/7" || string(decodeReply(t, m.Payload()).Result) != `{"Sum":3}` {
		t.Fatalf("mqant-style reply %q on %q", m.Payload(), m.Topic())
	}
	// Topics of unknown modules stay ordinary pub/sub.
	apptest.Done(t, c.Publish("plain/topic/x", 1, false, "just a message"))
	if m := apptest.Next(t, replies); string(m.Payload()) != "just a message" {
		t.Fatalf("ordinary publish became a request: %q", m.Payload())
	}
}

func TestUsersPushAndKick(t *testing.T) {
	cfg := apptest.Config(t)
	a := apptest.Run(t, cfg, &calc{})
	url := apptest.URL(a)
	phone, laptop := apptest.V3(t, url, "phone"), apptest.V3(t, url, "laptop")
	stranger := apptest.V3(t, url, "stranger")
	replies, rh := apptest.Sink()
	for _, c := range []pahov3.Client{phone, laptop, stranger} {
		apptest.Done(t, c.Subscribe("$rpc/#", 1, rh))
	}
	apptest.Done(t, phone.Publish("$rpc/calc/login/1", 1, false, `{"User":"alice"}`))
	apptest.Next(t, replies)
	apptest.Done(t, laptop.Publish("$rpc/calc/login/2", 1, false, `{"User":"alice"}`))
	apptest.Next(t, replies)
	if got := a.Server().ClientsOf("alice"); len(got) != 2 || got[0] != "laptop" || got[1] != "phone" {
		t.Fatalf("alice's clients: %v", got)
	}
	apptest.Done(t, phone.Publish("$rpc/calc/whoami/3", 1, false, ``))
	var w who
	if err := json.Unmarshal(decodeReply(t, apptest.Next(t, replies).Payload()).Result, &w); err != nil || w.UserID != "alice" {
		t.Fatalf("user id did not reach the handler: %+v %v", w, err)
	}

	// Push reaches both of alice's connections, without any subscription, and nobody else.
	got := make(chan string, 8)
	for _, c := range []pahov3.Client{phone, laptop, stranger} {
		id := map[pahov3.Client]string{phone: "phone", laptop: "laptop", stranger: "stranger"}[c]
		c.AddRoute("notice/#", func(_ pahov3.Client, m pahov3.Message) { got <- id + ":" + string(m.Payload()) })
	}
	apptest.Done(t, stranger.Publish("$rpc/calc/push/4", 1, false, `{"User":"alice","Topic":"notice/1","Text":"hi"}`))
	if e := decodeReply(t, apptest.Next(t, replies).Payload()); string(e.Result) != `{"Delivered":2}` {
		t.Fatalf("push result %+v", e)
	}
	seen := map[string]bool{apptest.Next(t, got): true, apptest.Next(t, got): true}
	if !seen["phone:hi"] || !seen["laptop:hi"] {
		t.Fatalf("pushes went to %v", seen)
	}
	apptest.None(t, got, 200*time.Millisecond)

	// Kick disconnects all of alice's connections.
	if n := a.Server().KickUser("alice", "account suspended"); n != 2 {
		t.Fatalf("kicked %d connections, want 2", n)
	}
	deadline := time.Now().Add(apptest.Wait)
	for (phone.IsConnectionOpen() || laptop.IsConnectionOpen()) && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if phone.IsConnectionOpen() || laptop.IsConnectionOpen() || !stranger.IsConnectionOpen() {
		t.Fatalf("after kick: phone %v laptop %v stranger %v", phone.IsConnectionOpen(), laptop.IsConnectionOpen(), stranger.IsConnectionOpen())
	}
	if n := len(a.Server().ClientsOf("alice")); n != 0 {
		t.Fatalf("alice still has %d bound connections", n)
	}
}

func TestKickMQTT5ReasonAndSingleLogin(t *testing.T) {
	cfg := apptest.Config(t)
	cfg.Sessions.SingleLogin = true
	a := apptest.Run(t, cfg, &calc{})
	first := apptest.V5(t, a.Addr("mqtt"), &paho.Connect{ClientID: "first", CleanStart: true})
	second := apptest.V5(t, a.Addr("mqtt"), &paho.Connect{ClientID: "second", CleanStart: true})
	// The session layer learns of a connection just after its CONNACK is
	// written, so a bind from outside may have to apptest.Wait a moment.
	apptest.Eventually(t, func() error { return a.Server().BindUser("first", "carol") })
	apptest.Eventually(t, func() error { return a.Server().BindUser("second", "carol") })
	d := apptest.Next(t, first.Disconn)
	if d.ReasonCode != 0x98 || d.Properties == nil || d.Properties.ReasonString == "" {
		t.Fatalf("single login disconnect: %+v, want 0x98 with a reason", d)
	}
	if got := a.Server().ClientsOf("carol"); len(got) != 1 || got[0] != "second" {
		t.Fatalf("carol's clients after single login: %v", got)
	}
	if err := a.Server().KickClient("second", "bye"); err != nil {
		t.Fatal(err)
	}
	if d := apptest.Next(t, second.Disconn); d.ReasonCode != 0x98 || d.Properties.ReasonString != "bye" {
		t.Fatalf("kick: %+v", d)
	}
}

func TestSessionValuesAndEvents(t *testing.T) {
	a := apptest.Run(t, apptest.Config(t))
	events := make(chan string, 16)
	cancel := a.Server().Watch(func(ev server.Event) { events <- ev.Kind.String() + ":" + ev.ClientID })
	defer cancel()
	c := apptest.V3(t, apptest.URL(a), "valued")
	if ev := apptest.Next(t, events); ev != "connected:valued" {
		t.Fatalf("event %q", ev)
	}
	if err := a.Server().SetValue("valued", "room", 7); err != nil {
		t.Fatal(err)
	}
	if v, ok := a.Server().Value("valued", "room"); !ok || v != 7 {
		t.Fatalf("value %v %v", v, ok)
	}
	if err := a.Server().SetValue("ghost", "k", 1); err == nil {
		t.Fatal("value set on a client that is not connected")
	}
	c.Disconnect(50)
	if ev := apptest.Next(t, events); ev != "disconnected:valued" {
		t.Fatalf("event %q", ev)
	}
	if _, ok := a.Server().Value("valued", "room"); ok {
		t.Fatal("value outlived its clean session")
	}
}
