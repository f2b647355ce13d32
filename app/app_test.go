package app_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	pahov3 "github.com/eclipse/paho.mqtt.golang"

	"github.com/colonymq/colony/app"
	"github.com/colonymq/colony/app/apptest"
	"github.com/colonymq/colony/rpc"
	"github.com/colonymq/colony/server"
)

const wait = 10 * time.Second

// recorder is a module that logs its lifecycle calls into a shared journal.
type recorder struct {
	id       string
	requires []string
	failAt   string
	journal  *journal
}

type journal struct {
	mu    sync.Mutex
	lines []string
}

func (j *journal) add(s string) {
	j.mu.Lock()
	j.lines = append(j.lines, s)
	j.mu.Unlock()
}

func (j *journal) String() string {
	j.mu.Lock()
	defer j.mu.Unlock()
	return strings.Join(j.lines, " ")
}

func (r *recorder) ID() string         { return r.id }
func (r *recorder) Requires() []string { return r.requires }
func (r *recorder) step(s string) error {
	r.journal.add(s + ":" + r.id)
	if r.failAt == s {
		return errors.New("planned failure")
	}
	return nil
}
func (r *recorder) Init(context.Context, *app.Host) error { return r.step("init") }
func (r *recorder) Start(context.Context) error           { return r.step("start") }
func (r *recorder) Stop(context.Context) error            { return r.step("stop") }

func TestLifecycleDependencyOrder(t *testing.T) {
	j := &journal{}
	a := app.New(apptest.Config(t), apptest.Logger(t))
	// web requires api requires db; declared out of order on purpose.
	if err := a.Use(&recorder{id: "web", requires: []string{"api"}, journal: j},
		&recorder{id: "api", requires: []string{"db"}, journal: j},
		&recorder{id: "db", journal: j}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	if err := a.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := a.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	want := "init:db init:api init:web start:db start:api start:web stop:web stop:api stop:db"
	if j.String() != want {
		t.Fatalf("lifecycle\n got %s\nwant %s", j, want)
	}
}

func TestStartFailureRollsBack(t *testing.T) {
	j := &journal{}
	cfg := apptest.Config(t)
	a := app.New(cfg, apptest.Logger(t))
	if err := a.Use(&recorder{id: "a", journal: j}, &recorder{id: "b", requires: []string{"a"}, failAt: "start", journal: j}); err != nil {
		t.Fatal(err)
	}
	err := a.Start(context.Background())
	if err == nil || !strings.Contains(err.Error(), "start module b") {
		t.Fatalf("start error %v", err)
	}
	if want := "init:a init:b start:a start:b stop:a"; j.String() != want {
		t.Fatalf("rollback\n got %s\nwant %s", j, want)
	}
	// The store was closed again: a second node can open the same data dir.
	b := apptest.Run(t, cfg)
	if b.Addr("mqtt") == "" {
		t.Fatal("second node has no mqtt listener")
	}
}

func TestDependencyErrors(t *testing.T) {
	for name, mods := range map[string][]app.Module{
		"missing": {&recorder{id: "a", requires: []string{"ghost"}, journal: &journal{}}},
		"cycle": {&recorder{id: "a", requires: []string{"b"}, journal: &journal{}},
			&recorder{id: "b", requires: []string{"a"}, journal: &journal{}}},
	} {
		a := app.New(apptest.Config(t), apptest.Logger(t))
		if err := a.Use(mods...); err != nil {
			t.Fatal(err)
		}
		if err := a.Start(context.Background()); !errors.Is(err, app.ErrConfig) {
			t.Errorf("%s: got %v, want ErrConfig", name, err)
		}
	}
	a := app.New(apptest.Config(t), apptest.Logger(t))
	if err := a.Use(&recorder{id: "x", journal: &journal{}}, &recorder{id: "x", journal: &journal{}}); err == nil {
		t.Error("duplicate module id accepted")
	}
}

func TestPortInUseNamesTheKey(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	cfg := apptest.Config(t)
	cfg.Listeners.WS = busy.Addr().String()
	a := app.New(cfg, apptest.Logger(t))
	err = a.Start(context.Background())
	if !errors.Is(err, server.ErrAddrInUse) {
		t.Fatalf("got %v, want ErrAddrInUse", err)
	}
	for _, want := range []string{busy.Addr().String(), "listeners.ws", "--ws", "COLONY_WS"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %s", err, want)
		}
	}
	// The MQTT listener bound before the failure was released: the data dir and ports can be reused.
	cfg.Listeners.WS = "127.0.0.1:0"
	apptest.Run(t, cfg)
}

// front and back are two modules: front's handler calls back over the local transport.
type back struct {
	app.Base
	release chan struct{}
	ran     *counter
}

type counter struct {
	mu sync.Mutex
	n  int
}

func (c *counter) inc() { c.mu.Lock(); c.n++; c.mu.Unlock() }
func (c *counter) get() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n
}

type squareReq struct{ N int }
type squareResp struct{ Square int }

func (*back) ID() string { return "back" }
func (b *back) Init(_ context.Context, h *app.Host) error {
	rpc.Handle(h.Registry, "back", "square", func(_ context.Context, r *squareReq) (*squareResp, error) {
		return &squareResp{Square: r.N * r.N}, nil
	})
	rpc.Handle(h.Registry, "back", "hold", func(ctx context.Context, _ *struct{}) (*struct{}, error) {
		b.ran.inc()
		select {
		case <-b.release:
			return &struct{}{}, nil
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	})
	return nil
}

type front struct {
	app.Base
	host *app.Host
}

type sumReq struct {
	N         int
	TimeoutMS int
}
type sumResp struct{ Total int }

func (*front) ID() string         { return "front" }
func (*front) Requires() []string { return []string{"back"} }
func (f *front) Init(_ context.Context, h *app.Host) error {
	f.host = h
	rpc.Handle(h.Registry, "front", "sum_of_squares", func(ctx context.Context, r *sumReq) (*sumResp, error) {
		total := 0
		for i := 1; i <= r.N; i++ {
			sq, err := rpc.Call[squareResp](ctx, h.RPC, "back", "square", &squareReq{N: i})
			if err != nil {
				return nil, fmt.Errorf("square %d: %w", i, err)
			}
			total += sq.Square
		}
		return &sumResp{Total: total}, nil
	})
	rpc.Handle(h.Registry, "front", "hold", func(ctx context.Context, r *sumReq) (*struct{}, error) {
		ctx, cancel := context.WithTimeout(ctx, time.Duration(r.TimeoutMS)*time.Millisecond)
		defer cancel()
		return rpc.Call[struct{}](ctx, h.RPC, "back", "hold", &struct{}{})
	})
	return nil
}

func TestModulesCallEachOtherLocally(t *testing.T) {
	cfg := apptest.Config(t)
	// back gets one worker and a one-slot inbox so back-pressure is easy to reach.
	cfg.RPC.Modules = map[string]app.RPCOverride{"back": {Workers: 1, Queue: 1}}
	b := &back{release: make(chan struct{}), ran: &counter{}}
	a := apptest.Run(t, cfg, &front{}, b)
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()

	res, err := rpc.Call[sumResp](ctx, a.RPC(), "front", "sum_of_squares", &sumReq{N: 10})
	if err != nil || res.Total != 385 {
		t.Fatalf("sum_of_squares: %v %+v", err, res)
	}

	// Timeout: back holds; front's call to it has a 100ms deadline.
	_, err = rpc.Call[struct{}](ctx, a.RPC(), "front", "hold", &sumReq{TimeoutMS: 100})
	if !errors.Is(err, rpc.ErrTimeout) {
		t.Fatalf("hold with deadline: got %v, want timeout", err)
	}

	// Back-pressure: the worker is busy with one call, one waits in the inbox,
	// and a third caller blocks (it is neither dropped nor failed) until room is made.
	results := make(chan error, 3)
	for range 2 {
		go func() {
			_, err := rpc.Call[struct{}](ctx, a.RPC(), "back", "hold", &struct{}{})
			results <- err
		}()
	}
	for b.ran.get() < 2 { // the timed-out call above plus the first of these
		time.Sleep(time.Millisecond)
	}
	third := make(chan error, 1)
	go func() {
		_, err := rpc.Call[struct{}](ctx, a.RPC(), "back", "hold", &struct{}{})
		third <- err
	}()
	select {
	case err := <-third:
		t.Fatalf("third call returned while the inbox was full: %v", err)
	case <-time.After(100 * time.Millisecond):
	}
	for range 3 {
		b.release <- struct{}{}
	}
	for range 2 {
		if err := <-results; err != nil {
			t.Fatalf("queued call: %v", err)
		}
	}
	if err := <-third; err != nil {
		t.Fatalf("blocked call: %v", err)
	}
	if got := b.ran.get(); got != 4 {
		t.Fatalf("back ran %d calls, want 4 (1 timed out + 3 completed)", got)
	}
}

func TestHealthAndMetrics(t *testing.T) {
	a := apptest.Run(t, apptest.Config(t))
	c := pahov3.NewClient(pahov3.NewClientOptions().AddBroker(apptest.URL(a)).SetClientID("m"))
	if tok := c.Connect(); !tok.WaitTimeout(wait) || tok.Error() != nil {
		t.Fatalf("connect: %v", tok.Error())
	}
	defer c.Disconnect(10)

	resp, err := http.Get("http://" + a.Addr("http") + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	var h struct {
		Status string `json:"status"`
		Node   string `json:"node"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&h); err != nil || resp.StatusCode != 200 || h.Status != "ok" || h.Node != "test" {
		t.Fatalf("healthz %d %+v %v", resp.StatusCode, h, err)
	}
	resp.Body.Close()

	resp, err = http.Get("http://" + a.Addr("http") + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"colony_mqtt_clients_connected 1", "colony_store_commits_total", "colony_rpc_calls_total{transport=\"local\"}", "go_goroutines"} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}

// vault reserves vault/# for each client's own vault/<client id>/….
type vault struct{ app.Base }

func (*vault) ID() string { return "vault" }
func (*vault) Guards() []server.TopicGuard {
	return []server.TopicGuard{{Filter: "vault/#", Read: []string{"vault/%c/#"}}}
}

var _ app.Guarded = (*vault)(nil)

// A module's guard holds on every node that offers the module, running it
// or not: in a cluster its deliveries reach the other nodes' clients.
func TestGuardsOfModulesNotEnabledHere(t *testing.T) {
	cfg := apptest.Config(t)
	cfg.Modules.Enabled = []string{"db"}
	a := apptest.Run(t, cfg, &vault{}, &recorder{id: "db", journal: &journal{}})
	c := apptest.V3(t, apptest.URL(a), "c1")
	for filter, want := range map[string]byte{"vault/c1/#": 1, "vault/c2/#": 0x80} {
		tok := c.Subscribe(filter, 1, nil)
		if !tok.WaitTimeout(wait) {
			t.Fatal("subscribe timed out")
		}
		if got := tok.(*pahov3.SubscribeToken).Result()[filter]; got != want {
			t.Errorf("subscribe %s: SUBACK %#x, want %#x", filter, got, want)
		}
	}
}

// tuned takes settings from its [modules.tuned] table.
type tuned struct {
	app.Base
	opts struct {
		Greeting string       `toml:"greeting"`
		Every    app.Duration `toml:"every"`
	}
	seen string // the greeting Init saw
}

func (*tuned) ID() string      { return "tuned" }
func (m *tuned) Settings() any { return &m.opts }
func (m *tuned) Init(context.Context, *app.Host) error {
	m.seen = m.opts.Greeting
	return nil
}

var _ app.Configurable = (*tuned)(nil)

func TestModuleSettings(t *testing.T) {
	start := func(settings map[string]map[string]any, mods ...app.Module) error {
		cfg := apptest.Config(t)
		cfg.Modules.Settings = settings
		a := app.New(cfg, apptest.Logger(t))
		if err := a.Use(mods...); err != nil {
			t.Fatal(err)
		}
		err := a.Start(context.Background())
		if err == nil {
			t.Cleanup(func() { _ = a.Stop(context.Background()) })
		}
		return err
	}

	m := &tuned{}
	m.opts.Greeting = "hi"
	if err := start(nil, m); err != nil || m.seen != "hi" {
		t.Fatalf("without a table: err %v, Init saw %q, want the default", err, m.seen)
	}
	m = &tuned{}
	if err := start(map[string]map[string]any{"tuned": {"greeting": "hello", "every": "2s"}}, m); err != nil {
		t.Fatal(err)
	}
	if m.seen != "hello" || time.Duration(m.opts.Every) != 2*time.Second {
		t.Errorf("settings %+v, Init saw %q", m.opts, m.seen)
	}

	for _, tc := range []struct {
		settings map[string]map[string]any
		want     string
	}{
		{map[string]map[string]any{"tuned": {"greting": "x"}}, `modules.tuned: unknown key "greting"`},
		{map[string]map[string]any{"tuned": {"every": "often"}}, `modules.tuned: key "every"`},
		{map[string]map[string]any{"chess": {"x": 1}}, `unknown module "chess"`},
		{map[string]map[string]any{"db": {"x": 1}}, "modules.db: the module takes no settings"},
	} {
		m := &tuned{}
		err := start(tc.settings, m, &recorder{id: "db", journal: &journal{}})
		if !errors.Is(err, app.ErrConfig) || !strings.Contains(err.Error(), tc.want) || m.seen != "" {
			t.Errorf("settings %v: start error %v (Init saw %q), want an ErrConfig containing %q", tc.settings, err, m.seen, tc.want)
		}
	}
}
