package app_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	pahov3 "github.com/eclipse/paho.mqtt.golang"

	"github.com/colonymq/colony/app"
	"github.com/colonymq/colony/app/apptest"
	"github.com/colonymq/colony/rpc"
)

func connectV3(t *testing.T, url, id string, clean bool, onMsg pahov3.MessageHandler) pahov3.Client {
	t.Helper()
	return apptest.V3(t, url, id, func(o *pahov3.ClientOptions) { o.SetCleanSession(clean).SetDefaultPublishHandler(onMsg) })
}

func ok(t *testing.T, tok pahov3.Token) {
	t.Helper()
	apptest.Done(t, tok)
}

func TestPersistentSessionSurvivesRestart(t *testing.T) {
	cfg := apptest.Config(t) // same data dir for both runs
	first := app.New(cfg, apptest.Logger(t))
	if err := first.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	url := apptest.URL(first)

	// A persistent subscriber (3.1.1 clean session = false) subscribes, then goes away.
	sub := connectV3(t, url, "keeper", false, func(pahov3.Client, pahov3.Message) {})
	ok(t, sub.Subscribe("orders/#", 1, nil))
	sub.Disconnect(50)
	// And an MQTT 5 one with a session expiry.
	s5 := apptest.V5(t, first.Addr("mqtt"), &paho.Connect{ClientID: "keeper5", CleanStart: true,
		Properties: &paho.ConnectProperties{SessionExpiryInterval: ptr[uint32](3600)}})
	if _, err := s5.Subscribe(context.Background(), &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "orders/#", QoS: 1}}}); err != nil {
		t.Fatal(err)
	}
	if err := s5.Disconnect(&paho.Disconnect{}); err != nil {
		t.Fatal(err)
	}

	// While both are offline, five QoS 1 messages are accepted, plus a retained one.
	pub := connectV3(t, url, "pub", true, nil)
	for i := range 5 {
		ok(t, pub.Publish("orders/new", 1, false, fmt.Sprintf("order-%d", i)))
	}
	ok(t, pub.Publish("status/shop", 1, true, "open"))
	pub.Disconnect(50)

	// A full server restart on the same data dir.
	if err := first.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	second := apptest.Run(t, cfg)
	url = apptest.URL(second)

	got := make(chan string, 64)
	sub = connectV3(t, url, "keeper", false, func(_ pahov3.Client, m pahov3.Message) { got <- string(m.Payload()) })
	defer sub.Disconnect(50)
	seen := map[string]int{}
	for range 5 {
		select {
		case p := <-got:
			seen[p]++
		case <-time.After(wait):
			t.Fatalf("3.1.1 session: only %v arrived after restart", seen)
		}
	}
	for i := range 5 {
		if seen[fmt.Sprintf("order-%d", i)] != 1 {
			t.Fatalf("3.1.1 session after restart: %v", seen)
		}
	}

	s5 = apptest.V5(t, second.Addr("mqtt"), &paho.Connect{ClientID: "keeper5", CleanStart: false,
		Properties: &paho.ConnectProperties{SessionExpiryInterval: ptr[uint32](3600)}})
	seen = map[string]int{}
	for range 5 {
		select {
		case p := <-s5.Msgs:
			seen[string(p.Payload)]++
		case <-time.After(wait):
			t.Fatalf("MQTT 5 session: only %v arrived after restart", seen)
		}
	}
	if len(seen) != 5 {
		t.Fatalf("MQTT 5 session after restart: %v", seen)
	}

	// The subscription itself survived: a new message arrives without re-subscribing.
	pub = connectV3(t, url, "pub2", true, nil)
	defer pub.Disconnect(50)
	ok(t, pub.Publish("orders/new", 1, false, "after-restart"))
	if p := <-got; p != "after-restart" {
		t.Fatalf("got %q", p)
	}
	// And the retained message.
	late := make(chan string, 1)
	l := connectV3(t, url, "late", true, nil)
	defer l.Disconnect(50)
	ok(t, l.Subscribe("status/#", 1, func(_ pahov3.Client, m pahov3.Message) { late <- string(m.Payload()) }))
	select {
	case p := <-late:
		if p != "open" {
			t.Fatalf("retained %q", p)
		}
	case <-time.After(wait):
		t.Fatal("retained message lost in restart")
	}
}

// slowpoke answers a client request only when told to.
type slowpoke struct {
	app.Base
	entered chan struct{}
	release chan struct{}
}

func (*slowpoke) ID() string { return "slow" }
func (s *slowpoke) Init(_ context.Context, h *app.Host) error {
	rpc.Handle(h.Registry, "slow", "work", func(context.Context, *struct{}) (*struct{ Done bool }, error) {
		close(s.entered)
		<-s.release
		return &struct{ Done bool }{true}, nil
	})
	return nil
}

func TestGracefulStopFinishesInflightRequests(t *testing.T) {
	s := &slowpoke{entered: make(chan struct{}), release: make(chan struct{})}
	a := app.New(apptest.Config(t), apptest.Logger(t))
	if err := a.Use(s); err != nil {
		t.Fatal(err)
	}
	if err := a.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	replies := make(chan string, 4)
	c := connectV3(t, apptest.URL(a), "patient", true, func(_ pahov3.Client, m pahov3.Message) { replies <- string(m.Payload()) })
	ok(t, c.Subscribe("$rpc/slow/#", 1, nil))
	ok(t, c.Publish("$rpc/slow/work/1", 1, false, "{}"))
	<-s.entered

	stopped := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), wait)
		defer cancel()
		stopped <- a.Stop(ctx)
	}()
	select {
	case err := <-stopped:
		t.Fatalf("stop returned while a request was executing: %v", err)
	case <-time.After(100 * time.Millisecond):
	}
	close(s.release)
	select {
	case r := <-replies:
		if r != `{"result":{"Done":true}}` {
			t.Fatalf("reply %s", r)
		}
	case <-time.After(wait):
		t.Fatal("the in-flight request never got its reply")
	}
	if err := <-stopped; err != nil {
		t.Fatal(err)
	}
}

func ptr[T any](v T) *T { return &v }
