package amqp

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/colonymq/colony/rpc"
)

// TestCall runs the same module code once locally and once across the
// wire: typed results, error codes and the caller's identity must not
// depend on where the module runs.
func TestCall(t *testing.T) {
	prefix := randomPrefix(t)
	ca := newCalc("a")
	a := startNode(t, prefix, "a", nodeOpts{}, ca.register)
	b := startNode(t, prefix, "b", nodeOpts{}, nil)
	waitServes(t, b, "calc")

	for _, tc := range []struct {
		name   string
		caller *node
		remote bool
	}{
		{"local", a, false},
		{"remote", b, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			c := tc.caller.client

			sum, err := rpc.Call[addResp](ctx, c, "calc", "add", &addReq{A: 2, B: 3})
			if err != nil || sum.Sum != 5 || sum.Node != "a" {
				t.Fatalf("add = %+v, %v; want sum 5 from a", sum, err)
			}

			ictx := rpc.WithCaller(ctx, rpc.Caller{ClientID: "c1", UserID: "u1", Username: "alice"})
			ictx = WithTrace(ictx, "trace-1")
			who, err := rpc.Call[whoResp](ictx, c, "calc", "who", &empty{})
			if err != nil {
				t.Fatalf("who: %v", err)
			}
			if who.ClientID != "c1" || who.UserID != "u1" || who.Username != "alice" || who.Trace != "trace-1" || !who.HasDL {
				t.Errorf("who = %+v; want the caller's identity, trace and a deadline", who)
			}
			if tc.remote && who.Node != "b" {
				t.Errorf("remote caller node = %q, want b", who.Node)
			}

			for _, ec := range []struct {
				fn   string
				arg  any
				want error
			}{
				{"forbid", &empty{}, rpc.ErrForbidden},
				{"add", rpc.Raw(`{"a": oops`), rpc.ErrBadRequest},
				{"boom", &empty{}, rpc.ErrInternal},
				{"fail", &empty{}, rpc.ErrInternal},
				{"nope", &empty{}, rpc.ErrNotFound},
			} {
				_, err := c.Invoke(ctx, "calc", ec.fn, ec.arg)
				if !errors.Is(err, ec.want) {
					t.Errorf("%s: err = %v, want %v", ec.fn, err, ec.want)
				}
				var re *rpc.Error
				if !errors.As(err, &re) || re.Message == "" {
					t.Errorf("%s: err = %#v, want an *rpc.Error with a message", ec.fn, err)
				}
			}
		})
	}
	if s := b.tr.Stats(); s.Calls == 0 {
		t.Errorf("remote case sent no calls over the wire: %+v", s)
	}
}

// TestRawPassThrough sends bytes that are not JSON to a Raw handler and
// gets them back unchanged.
func TestRawPassThrough(t *testing.T) {
	prefix := randomPrefix(t)
	startNode(t, prefix, "a", nodeOpts{}, newCalc("a").register)
	b := startNode(t, prefix, "b", nodeOpts{}, nil)
	waitServes(t, b, "calc")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, in := range []string{`{"x":[1,2,3]}`, "not json \x00\xff", ""} {
		res, err := b.client.Invoke(ctx, "calc", "echo", rpc.Raw(in))
		if err != nil {
			t.Fatalf("echo %q: %v", in, err)
		}
		got, ok := res.(rpc.Raw)
		if !ok || string(got) != in {
			t.Errorf("echo %q = %T %q", in, res, res)
		}
	}
}

// TestTimeout: a remote handler that never answers makes the caller fail
// with a timeout when its ctx ends.
func TestTimeout(t *testing.T) {
	prefix := randomPrefix(t)
	ca := newCalc("a")
	startNode(t, prefix, "a", nodeOpts{}, ca.register)
	t.Cleanup(func() { close(ca.release) })
	b := startNode(t, prefix, "b", nodeOpts{}, nil)
	waitServes(t, b, "calc")

	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	_, err := rpc.Call[empty](ctx, b.client, "calc", "block", &empty{})
	if !errors.Is(err, rpc.ErrTimeout) {
		t.Fatalf("err = %v, want timeout", err)
	}
}

// TestNotFound: a call to a module nobody serves, or pinned to a node that
// does not exist, comes back as not_found at once rather than timing out.
func TestNotFound(t *testing.T) {
	prefix := randomPrefix(t)
	startNode(t, prefix, "a", nodeOpts{}, newCalc("a").register)
	b := startNode(t, prefix, "b", nodeOpts{}, nil)
	waitServes(t, b, "calc")

	for _, req := range []*rpc.Request{
		{Module: "ghost", Fn: "x", Arg: &empty{}},
		{Module: "calc", Fn: "add", Node: "nobody", Arg: &addReq{}},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		// Straight to the transport: rpc.Client would not route to a
		// module no peer announced.
		_, err := b.tr.Call(ctx, req)
		cancel()
		if !errors.Is(err, rpc.ErrNotFound) {
			t.Errorf("%s@%s: err = %v, want not_found", req.Module, req.Node, err)
		}
	}
	if s := b.tr.Stats(); s.Returned != 2 {
		t.Errorf("returned = %d, want 2", s.Returned)
	}

	// The client agrees without touching the wire.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := b.client.Invoke(ctx, "ghost", "x", nil); !errors.Is(err, rpc.ErrNotFound) {
		t.Errorf("client: err = %v, want not_found", err)
	}
}

// TestPinned: with two nodes serving a module, a call pinned to one of
// them runs there.
func TestPinned(t *testing.T) {
	prefix := randomPrefix(t)
	a := startNode(t, prefix, "a", nodeOpts{}, newCalc("a").register)
	startNode(t, prefix, "c", nodeOpts{}, newCalc("c").register)
	b := startNode(t, prefix, "b", nodeOpts{}, nil)
	waitFor(t, "b sees a and c", 10*time.Second, func() bool { return len(b.tr.Nodes()) == 2 })

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// Pinned to the calling node itself: Local runs it, no wire.
	res, err := a.tr.Call(ctx, &rpc.Request{Module: "calc", Fn: "add", Node: "a", Arg: &addReq{A: 1}})
	if r, ok := res.(*addResp); err != nil || !ok || r.Node != "a" {
		t.Fatalf("call pinned to own node = %#v, %v", res, err)
	}
	for i := range 10 {
		for _, target := range []string{"a", "c"} {
			res, err := b.tr.Call(ctx, &rpc.Request{Module: "calc", Fn: "add", Node: target, Arg: &addReq{A: i}})
			if err != nil {
				t.Fatalf("call pinned to %s: %v", target, err)
			}
			var r addResp
			if err := decode(res, &r); err != nil || r.Node != target {
				t.Fatalf("call pinned to %s ran on %q (%v)", target, r.Node, err)
			}
		}
	}
}

// TestLoadBalance: calls to a module two nodes serve are spread over both.
func TestLoadBalance(t *testing.T) {
	prefix := randomPrefix(t)
	startNode(t, prefix, "a", nodeOpts{}, newCalc("a").register)
	startNode(t, prefix, "c", nodeOpts{}, newCalc("c").register)
	b := startNode(t, prefix, "b", nodeOpts{}, nil)
	waitFor(t, "b sees a and c", 10*time.Second, func() bool { return len(b.tr.Nodes()) == 2 })

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var mu sync.Mutex
	got := map[string]int{}
	var wg sync.WaitGroup
	for w := range 10 {
		wg.Go(func() {
			for i := range 20 {
				r, err := rpc.Call[addResp](ctx, b.client, "calc", "add", &addReq{A: w, B: i})
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				got[r.Node]++
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if got["a"] == 0 || got["c"] == 0 || got["a"]+got["c"] != 200 {
		t.Errorf("calls per node = %v, want 200 spread over a and c", got)
	}
	t.Logf("calls per node: %v", got)
}

// TestNotify: a notify runs the remote handler.
func TestNotify(t *testing.T) {
	prefix := randomPrefix(t)
	ca := newCalc("a")
	startNode(t, prefix, "a", nodeOpts{}, ca.register)
	b := startNode(t, prefix, "b", nodeOpts{}, nil)
	waitServes(t, b, "calc")

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	note := "hello"
	if err := rpc.Notify(ctx, b.client, "calc", "note", &note); err != nil {
		t.Fatalf("notify: %v", err)
	}
	waitFor(t, "note arrives", 10*time.Second, func() bool {
		n := ca.noted()
		return len(n) == 1 && n[0] == "hello"
	})
}

// TestPresence: peers appear with what they announce, disappear at once
// when they leave, and within 3 beats when they die without a word.
func TestPresence(t *testing.T) {
	prefix := randomPrefix(t)
	fast := nodeOpts{beat: 200 * time.Millisecond}
	a := startNode(t, prefix, "a", fast, newCalc("a").register)
	b := startNode(t, prefix, "b", fast, nil)
	c := startNode(t, prefix, "c", fast, func(reg *rpc.Registry) {
		rpc.Handle(reg, "other", "x", func(ctx context.Context, _ *empty) (*empty, error) { return &empty{}, nil })
	})
	waitFor(t, "b sees a and c", 10*time.Second, func() bool { return len(b.tr.Nodes()) == 2 })

	nodes := b.tr.Nodes()
	if nodes[0].Node != "a" || strings.Join(nodes[0].Modules, ",") != "calc" || nodes[0].Version != "test" ||
		nodes[1].Node != "c" || strings.Join(nodes[1].Modules, ",") != "other" {
		t.Errorf("nodes = %+v", nodes)
	}
	if !b.tr.Serves("calc") || !b.tr.Serves("other") || b.tr.Serves("nothing") {
		t.Errorf("serves calc %v other %v nothing %v", b.tr.Serves("calc"), b.tr.Serves("other"), b.tr.Serves("nothing"))
	}
	if a.tr.Serves("calc") {
		t.Error("a reports serving calc itself: Serves is for other nodes")
	}
	if len(a.tr.Nodes()) != 2 || !a.tr.Connected() {
		t.Errorf("a sees %+v", a.tr.Nodes())
	}

	// Leaving with bye.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := a.tr.Close(ctx); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a gone after bye", 5*time.Second, func() bool { return !b.tr.Serves("calc") })
	if a.tr.Connected() || a.tr.Serves("other") {
		t.Error("a still connected or serving after Close")
	}
	if _, err := a.tr.Call(ctx, &rpc.Request{Module: "other", Fn: "x"}); !errors.Is(err, rpc.ErrUnavailable) {
		t.Errorf("call after close: %v, want unavailable", err)
	}

	// Dying without bye: c disappears once it missed its beats.
	c.tr.kill()
	// Its queues went with its connection, so a call fails at once: as
	// unavailable while b still counts c as alive (it may be back soon, as
	// after a RabbitMQ restart), as not_found once c missed its beats.
	if _, err := b.tr.Call(ctx, &rpc.Request{Module: "other", Fn: "x", Arg: &empty{}}); !errors.Is(err, rpc.ErrUnavailable) {
		t.Errorf("call to the module of a node just dead: %v, want unavailable", err)
	}
	waitFor(t, "c gone after missing beats", 5*time.Second, func() bool {
		return !b.tr.Serves("other") && len(b.tr.Nodes()) == 0
	})
	if _, err := b.tr.Call(ctx, &rpc.Request{Module: "other", Fn: "x", Arg: &empty{}}); !errors.Is(err, rpc.ErrNotFound) {
		t.Errorf("call to the module of a node gone: %v, want not_found", err)
	}
}

// TestOutage: when RabbitMQ drops the connections, pending calls fail with
// unavailable at once, and the transports reconnect by themselves.
func TestOutage(t *testing.T) {
	prefix := randomPrefix(t)
	ca := newCalc("a")
	fast := nodeOpts{beat: 200 * time.Millisecond}
	startNode(t, prefix, "a", fast, ca.register)
	t.Cleanup(func() { close(ca.release) })
	b := startNode(t, prefix, "b", fast, nil)
	waitServes(t, b, "calc")

	// Fewer than Local's workers (2*GOMAXPROCS, at least 2), so that all
	// of them are running at once.
	const pending = 2
	errs := make(chan error, pending)
	for range pending {
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			_, err := rpc.Call[empty](ctx, b.client, "calc", "block", &empty{})
			errs <- err
		}()
	}
	for range pending {
		<-ca.blocked
	}
	if n := closeConnections(t, prefix); n != 2 {
		t.Fatalf("closed %d connections, want 2", n)
	}
	for range pending {
		select {
		case err := <-errs:
			if !errors.Is(err, rpc.ErrUnavailable) {
				t.Errorf("pending call: %v, want unavailable", err)
			}
		case <-time.After(30 * time.Second):
			t.Fatal("pending call still hanging after the connection closed")
		}
	}

	// Back by itself: calls succeed again.
	waitFor(t, "calls work again", 30*time.Second, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		r, err := rpc.Call[addResp](ctx, b.client, "calc", "add", &addReq{A: 1, B: 1})
		if err != nil && !errors.Is(err, rpc.ErrUnavailable) && !errors.Is(err, rpc.ErrNotFound) {
			t.Logf("while reconnecting: %v", err)
		}
		return err == nil && r.Sum == 2
	})
	if s := b.tr.Stats(); s.Reconnects == 0 {
		t.Errorf("stats %+v: no reconnect counted", s)
	}
}

// TestUnavailableWhileDown: a transport whose broker is down starts
// anyway, fails calls at once with unavailable, and connects as soon as
// the broker is there.
func TestUnavailableWhileDown(t *testing.T) {
	upstream := amqpURL(t)
	px := newProxy(t, upstream)
	prefix := randomPrefix(t)
	b := startNode(t, prefix, "b", nodeOpts{url: px.url}, nil)
	if b.tr.Connected() {
		t.Fatal("connected through a proxy that is down")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := b.tr.Call(ctx, &rpc.Request{Module: "calc", Fn: "add"}); !errors.Is(err, rpc.ErrUnavailable) {
		t.Errorf("call while down: %v, want unavailable", err)
	}
	if err := b.tr.Notify(ctx, &rpc.Request{Module: "calc", Fn: "add"}); !errors.Is(err, rpc.ErrUnavailable) {
		t.Errorf("notify while down: %v, want unavailable", err)
	}

	startNode(t, prefix, "a", nodeOpts{}, newCalc("a").register)
	px.up()
	waitFor(t, "b connects", 20*time.Second, b.tr.Connected)
	waitServes(t, b, "calc")
	r, err := rpc.Call[addResp](ctx, b.client, "calc", "add", &addReq{A: 20, B: 22})
	if err != nil || r.Sum != 42 {
		t.Fatalf("call after connecting: %+v, %v", r, err)
	}
}

// TestCloseWaitsForServed: Close lets a call being served finish and
// answer before the connection goes.
func TestCloseWaitsForServed(t *testing.T) {
	prefix := randomPrefix(t)
	ca := newCalc("a")
	a := startNode(t, prefix, "a", nodeOpts{}, ca.register)
	b := startNode(t, prefix, "b", nodeOpts{}, nil)
	waitServes(t, b, "calc")

	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_, err := rpc.Call[empty](ctx, b.client, "calc", "block", &empty{})
		done <- err
	}()
	<-ca.blocked
	closed := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		closed <- a.tr.Close(ctx)
	}()
	select {
	case err := <-closed:
		t.Fatalf("Close returned (%v) while a served call was running", err)
	case <-time.After(100 * time.Millisecond):
	}
	close(ca.release)
	if err := <-done; err != nil {
		t.Errorf("served call during Close: %v", err)
	}
	if err := <-closed; err != nil {
		t.Errorf("close: %v", err)
	}
}

func TestNewValidates(t *testing.T) {
	for _, o := range []Options{
		{},
		{Node: "n", URL: "http://nope"},
		{Node: "n", Registry: rpc.NewRegistry()},
		{Node: strings.Repeat("n", 101)},
	} {
		if _, err := New(o); !errors.Is(err, ErrInvalidOptions) {
			t.Errorf("New(%+v) = %v, want ErrInvalidOptions", o, err)
		}
	}
	tr, err := New(Options{Node: "n"})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := tr.Close(ctx); err != nil {
		t.Errorf("close before start: %v", err)
	}
	if err := tr.Start(ctx); !errors.Is(err, ErrClosed) {
		t.Errorf("start after close: %v, want ErrClosed", err)
	}
	if _, err := tr.Call(ctx, &rpc.Request{Module: "m", Fn: "f"}); !errors.Is(err, rpc.ErrUnavailable) {
		t.Errorf("call on a closed transport: %v", err)
	}
}

func decode(res any, v any) error {
	raw, ok := res.(rpc.Raw)
	if !ok {
		return fmt.Errorf("result %T, want rpc.Raw", res)
	}
	return json.Unmarshal(raw, v)
}
