package rpc

import (
	"context"
	"errors"
	"fmt"
	"io"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// newTestLocal starts a Local over reg and stops it when the test ends.
func newTestLocal(t testing.TB, reg *Registry, opts LocalOptions) *Local {
	t.Helper()
	l := NewLocal(reg, opts)
	if err := l.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := l.Stop(ctx); err != nil {
			t.Errorf("stop: %v", err)
		}
	})
	return l
}

// waitFor polls cond, failing the test if it never holds. It waits for
// state changes made by other goroutines; it never judges speed.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	for range 1000 {
		if cond() {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("timed out waiting for %s", what)
}

// recv returns the next value from ch, failing the test if none arrives in a
// generous while, so that a bug shows up as a failure rather than a hang.
func recv[T any](t testing.TB, ch <-chan T) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(10 * time.Second):
		t.Fatal("nothing received")
		var zero T
		return zero
	}
}

// checkNoLeak fails if goroutines started during the test outlive it.
func checkNoLeak(t *testing.T, before int) {
	t.Helper()
	for range 200 {
		if runtime.NumGoroutine() <= before {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Errorf("goroutines: %d at start, %d now", before, runtime.NumGoroutine())
}

// gate is a handler that blocks until the test releases it.
type gate struct {
	started chan struct{}
	release chan struct{}
	runs    atomic.Int64
	done    atomic.Int64 // handlers that got past release
}

func newGate() *gate {
	return &gate{started: make(chan struct{}, 100), release: make(chan struct{})}
}

func (g *gate) handle(ctx context.Context, req *addReq) (*addResp, error) {
	g.runs.Add(1)
	g.started <- struct{}{}
	<-g.release
	g.done.Add(1)
	return add(ctx, req)
}

type result struct {
	v   any
	err error
}

func goCall(l *Local, ctx context.Context, req *Request) <-chan result {
	ch := make(chan result, 1)
	go func() {
		v, err := l.Call(ctx, req)
		ch <- result{v, err}
	}()
	return ch
}

func TestLocalCallTyped(t *testing.T) {
	reg := NewRegistry()
	var seen *addReq
	Handle(reg, "calc", "add", func(ctx context.Context, req *addReq) (*addResp, error) {
		seen = req
		return add(ctx, req)
	})
	l := newTestLocal(t, reg, LocalOptions{})

	req := &addReq{A: 2, B: 3}
	v, err := l.Call(context.Background(), &Request{Module: "calc", Fn: "add", Arg: req})
	if err != nil {
		t.Fatal(err)
	}
	if seen != req {
		t.Error("handler got a different pointer: the argument was copied or encoded")
	}
	if got := v.(*addResp).Sum; got != 5 {
		t.Errorf("Sum = %d, want 5", got)
	}
	if s := l.Stats(); s.Calls != 1 || s.Errors != 0 {
		t.Errorf("Stats = %+v, want 1 call and no errors", s)
	}
}

func TestLocalCallRaw(t *testing.T) {
	reg := NewRegistry()
	Handle(reg, "calc", "add", add)
	Handle(reg, "echo", "raw", echoRaw)
	l := newTestLocal(t, reg, LocalOptions{})
	ctx := context.Background()

	v, err := l.Call(ctx, &Request{Module: "calc", Fn: "add", Arg: Raw(`{"a":40,"b":2}`)})
	if err != nil {
		t.Fatal(err)
	}
	b, err := Encode(v)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := string(b), `{"sum":42}`; got != want {
		t.Errorf("encoded result = %s, want %s", got, want)
	}

	_, err = l.Call(ctx, &Request{Module: "calc", Fn: "add", Arg: Raw(`{`)})
	if !errors.Is(err, ErrBadRequest) {
		t.Errorf("invalid json: err = %v, want bad_request", err)
	}

	v, err = l.Call(ctx, &Request{Module: "echo", Fn: "raw", Arg: Raw(`"hi"`)})
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := Encode(v); string(b) != `"hi"` {
		t.Errorf("raw echo = %s, want \"hi\"", b)
	}

	v, err = l.Call(ctx, &Request{Module: "calc", Fn: "add", Arg: &otherAddReq{X: 1, Y: 2}})
	if err != nil {
		t.Fatal(err)
	}
	if got := v.(*addResp).Sum; got != 3 {
		t.Errorf("compatible struct: Sum = %d, want 3", got)
	}
}

func TestLocalNotFound(t *testing.T) {
	reg := NewRegistry()
	Handle(reg, "calc", "add", add)
	l := newTestLocal(t, reg, LocalOptions{})
	ctx := context.Background()

	_, err := l.Call(ctx, &Request{Module: "nope", Fn: "add"})
	if !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), `"nope"`) {
		t.Errorf("unknown module: err = %v, want not_found naming the module", err)
	}
	_, err = l.Call(ctx, &Request{Module: "calc", Fn: "mul"})
	if !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), `"mul"`) {
		t.Errorf("unknown handler: err = %v, want not_found naming the handler", err)
	}
	if err := l.Notify(ctx, &Request{Module: "nope", Fn: "add"}); !errors.Is(err, ErrNotFound) {
		t.Errorf("notify unknown module: err = %v, want not_found", err)
	}
	if l.Serves("nope") || !l.Serves("calc") {
		t.Error("Serves gave the wrong answer")
	}
}

func TestLocalHandlerErrors(t *testing.T) {
	reg := NewRegistry()
	Handle(reg, "m", "forbidden", func(context.Context, *addReq) (*addResp, error) {
		return nil, Errorf(CodeForbidden, "not your room")
	})
	Handle(reg, "m", "plain", func(context.Context, *addReq) (*addResp, error) {
		return nil, fmt.Errorf("read config: %w", io.ErrUnexpectedEOF)
	})
	Handle(reg, "m", "wrapped", func(context.Context, *addReq) (*addResp, error) {
		return nil, fmt.Errorf("user x: %w", ErrNotFound)
	})
	l := newTestLocal(t, reg, LocalOptions{})
	call := func(fn string) error {
		_, err := l.Call(context.Background(), &Request{Module: "m", Fn: fn, Arg: &addReq{}})
		return err
	}

	err := call("forbidden")
	if CodeOf(err) != CodeForbidden || !errors.Is(err, ErrForbidden) {
		t.Errorf("forbidden: err = %v (code %q)", err, CodeOf(err))
	}

	err = call("plain")
	if CodeOf(err) != CodeInternal || !errors.Is(err, ErrInternal) {
		t.Errorf("plain: err = %v (code %q), want internal", err, CodeOf(err))
	}
	if !strings.Contains(err.Error(), "read config: unexpected EOF") {
		t.Errorf("plain: message %q lost the handler's text", err)
	}
	if !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Error("plain: the handler's error chain was lost")
	}

	err = call("wrapped")
	if !errors.Is(err, ErrNotFound) || CodeOf(err) != CodeNotFound {
		t.Errorf("wrapped: err = %v (code %q), want not_found", err, CodeOf(err))
	}
	if got := AsError(err).Error(); got != "not_found: user x: not found" {
		t.Errorf("wrapped on the wire = %q", got)
	}

	if s := l.Stats(); s.Errors != 3 || s.Calls != 3 {
		t.Errorf("Stats = %+v, want 3 calls and 3 errors", s)
	}
}

func TestLocalPanicKeepsServing(t *testing.T) {
	reg := NewRegistry()
	Handle(reg, "m", "boom", func(context.Context, *addReq) (*addResp, error) {
		panic("boom")
	})
	Handle(reg, "m", "add", add)
	// One worker, so the call after the panic must be served by the very
	// worker that recovered.
	type report struct {
		module string
		value  any
		stack  string
	}
	reports := make(chan report, 1)
	l := newTestLocal(t, reg, LocalOptions{Default: Limits{Workers: 1}, OnPanic: func(m string, v any, stack []byte) {
		reports <- report{m, v, string(stack)}
	}})
	ctx := context.Background()

	_, err := l.Call(ctx, &Request{Module: "m", Fn: "boom"})
	if r := <-reports; r.module != "m" || r.value != "boom" || !strings.Contains(r.stack, "TestLocalPanicKeepsServing") {
		t.Fatalf("OnPanic got module %q value %v, stack without the handler:\n%s", r.module, r.value, r.stack)
	}
	if !errors.Is(err, ErrInternal) || !strings.Contains(err.Error(), "handler panicked: boom") {
		t.Fatalf("err = %v, want internal handler panicked: boom", err)
	}
	v, err := l.Call(ctx, &Request{Module: "m", Fn: "add", Arg: &addReq{A: 1, B: 1}})
	if err != nil || v.(*addResp).Sum != 2 {
		t.Fatalf("call after panic = %v, %v", v, err)
	}
	if s := l.Stats(); s.Panics != 1 || s.Errors != 1 || s.Calls != 2 {
		t.Errorf("Stats = %+v, want 2 calls, 1 error, 1 panic", s)
	}
}

func TestLocalCallerReachesHandler(t *testing.T) {
	reg := NewRegistry()
	got := make(chan Caller, 1)
	Handle(reg, "m", "who", func(ctx context.Context, _ *addReq) (*addResp, error) {
		c, ok := CallerFrom(ctx)
		if !ok {
			return nil, Errorf(CodeForbidden, "no caller")
		}
		got <- c
		return &addResp{}, nil
	})
	l := newTestLocal(t, reg, LocalOptions{})

	want := Caller{ClientID: "c1", UserID: "u1", Username: "ann", Node: "n1"}
	ctx := WithCaller(context.Background(), want)
	if _, err := l.Call(ctx, &Request{Module: "m", Fn: "who"}); err != nil {
		t.Fatal(err)
	}
	if c := <-got; c != want {
		t.Errorf("handler saw %+v, want %+v", c, want)
	}
}

func TestLocalTimeout(t *testing.T) {
	before := runtime.NumGoroutine()
	reg := NewRegistry()
	g := newGate()
	Handle(reg, "slow", "add", g.handle)
	l := NewLocal(reg, LocalOptions{})
	if err := l.Start(); err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	_, err := l.Call(ctx, &Request{Module: "slow", Fn: "add", Arg: &addReq{}})
	if !errors.Is(err, ErrTimeout) || CodeOf(err) != CodeTimeout {
		t.Fatalf("err = %v, want timeout", err)
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Error("timeout error does not wrap context.DeadlineExceeded")
	}
	<-g.started // the handler did run; the caller just stopped waiting
	close(g.release)

	if err := l.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	checkNoLeak(t, before)
}

func TestLocalCanceled(t *testing.T) {
	reg := NewRegistry()
	g := newGate()
	Handle(reg, "slow", "add", g.handle)
	l := newTestLocal(t, reg, LocalOptions{})
	defer close(g.release)

	ctx, cancel := context.WithCancel(context.Background())
	res := goCall(l, ctx, &Request{Module: "slow", Fn: "add", Arg: &addReq{}})
	<-g.started
	cancel()
	r := <-res
	if !errors.Is(r.err, ErrCanceled) || !errors.Is(r.err, context.Canceled) {
		t.Errorf("err = %v, want canceled", r.err)
	}
}

// TestLocalBackPressureTimeout fills the worker and the queue; a third call
// must wait, time out, and never run.
func TestLocalBackPressureTimeout(t *testing.T) {
	reg := NewRegistry()
	g := newGate()
	Handle(reg, "m", "add", g.handle)
	l := newTestLocal(t, reg, LocalOptions{Modules: map[string]Limits{"m": {Workers: 1, Queue: 1}}})
	bg := context.Background()

	first := goCall(l, bg, &Request{Module: "m", Fn: "add", Arg: &addReq{A: 1}})
	<-g.started
	second := goCall(l, bg, &Request{Module: "m", Fn: "add", Arg: &addReq{A: 2}})
	b, _ := l.inbox("m")
	waitFor(t, "second call to be queued", func() bool { return len(b.ch) == 1 })

	ctx, cancel := context.WithTimeout(bg, 30*time.Millisecond)
	defer cancel()
	_, err := l.Call(ctx, &Request{Module: "m", Fn: "add", Arg: &addReq{A: 3}})
	if !errors.Is(err, ErrTimeout) {
		t.Fatalf("third call: err = %v, want timeout", err)
	}

	close(g.release)
	for i, ch := range []<-chan result{first, second} {
		r := <-ch
		if r.err != nil || r.v.(*addResp).Sum != i+1 {
			t.Errorf("accepted call %d = %v, %v", i+1, r.v, r.err)
		}
	}
	if n := g.runs.Load(); n != 2 {
		t.Errorf("handler ran %d times, want 2: the rejected call must never run", n)
	}
	if s := l.Stats(); s.Calls != 2 {
		t.Errorf("Stats.Calls = %d, want 2", s.Calls)
	}
}

// TestLocalBackPressureWaits shows that a call finding the inbox full waits
// for room instead of failing or being dropped.
func TestLocalBackPressureWaits(t *testing.T) {
	reg := NewRegistry()
	g := newGate()
	Handle(reg, "m", "add", g.handle)
	l := newTestLocal(t, reg, LocalOptions{Modules: map[string]Limits{"m": {Workers: 1, Queue: 1}}})
	bg := context.Background()

	first := goCall(l, bg, &Request{Module: "m", Fn: "add", Arg: &addReq{A: 1}})
	<-g.started
	second := goCall(l, bg, &Request{Module: "m", Fn: "add", Arg: &addReq{A: 2}})
	b, _ := l.inbox("m")
	waitFor(t, "second call to be queued", func() bool { return len(b.ch) == 1 })
	third := goCall(l, bg, &Request{Module: "m", Fn: "add", Arg: &addReq{A: 3}})
	// The gate counts callers inside enqueue; the first two are past it.
	waitFor(t, "third call to block on the full inbox", func() bool { return b.gate.Load() == 1 })
	select {
	case r := <-third:
		t.Fatalf("third call returned while the inbox was full: %v, %v", r.v, r.err)
	default:
	}

	close(g.release)
	for i, ch := range []<-chan result{first, second, third} {
		r := <-ch
		if r.err != nil || r.v.(*addResp).Sum != i+1 {
			t.Errorf("call %d = %v, %v", i+1, r.v, r.err)
		}
	}
	if n := g.runs.Load(); n != 3 {
		t.Errorf("handler ran %d times, want 3", n)
	}
}

// TestLocalExpiredInQueue checks that a worker skips a call whose caller
// gave up while it was queued.
func TestLocalExpiredInQueue(t *testing.T) {
	reg := NewRegistry()
	g := newGate()
	Handle(reg, "m", "add", g.handle)
	l := newTestLocal(t, reg, LocalOptions{Default: Limits{Workers: 1}})
	bg := context.Background()

	first := goCall(l, bg, &Request{Module: "m", Fn: "add", Arg: &addReq{}})
	<-g.started
	ctx, cancel := context.WithCancel(bg)
	second := goCall(l, ctx, &Request{Module: "m", Fn: "add", Arg: &addReq{}})
	b, _ := l.inbox("m")
	waitFor(t, "second call to be queued", func() bool { return len(b.ch) == 1 })
	cancel()
	if r := <-second; !errors.Is(r.err, ErrCanceled) {
		t.Errorf("second call: err = %v, want canceled", r.err)
	}
	close(g.release)
	if r := <-first; r.err != nil {
		t.Fatal(r.err)
	}
	waitFor(t, "queue to drain", func() bool { return l.Stats().Calls == 2 })
	if n := g.runs.Load(); n != 1 {
		t.Errorf("handler ran %d times, want 1", n)
	}
	if s := l.Stats(); s.Errors != 1 {
		t.Errorf("Stats.Errors = %d, want 1", s.Errors)
	}
}

func TestLocalStopWaitsForInFlight(t *testing.T) {
	before := runtime.NumGoroutine()
	reg := NewRegistry()
	g := newGate()
	Handle(reg, "m", "add", g.handle)
	l := NewLocal(reg, LocalOptions{})
	if err := l.Start(); err != nil {
		t.Fatal(err)
	}
	bg := context.Background()

	inflight := goCall(l, bg, &Request{Module: "m", Fn: "add", Arg: &addReq{A: 7}})
	<-g.started
	stopped := make(chan error, 1)
	go func() { stopped <- l.Stop(bg) }()
	waitFor(t, "Stop to begin", func() bool { return !l.Serves("m") })

	_, err := l.Call(bg, &Request{Module: "m", Fn: "add", Arg: &addReq{}})
	if !errors.Is(err, ErrUnavailable) {
		t.Errorf("call during Stop: err = %v, want unavailable", err)
	}
	select {
	case err := <-stopped:
		t.Fatalf("Stop returned %v while a handler was still running", err)
	default:
	}

	close(g.release)
	if err := <-stopped; err != nil {
		t.Fatalf("Stop = %v", err)
	}
	if n := g.done.Load(); n != 1 {
		t.Fatalf("Stop returned before the in-flight handler finished")
	}
	if r := <-inflight; r.err != nil || r.v.(*addResp).Sum != 7 {
		t.Errorf("in-flight call = %v, %v", r.v, r.err)
	}

	if _, err := l.Call(bg, &Request{Module: "m", Fn: "add"}); !errors.Is(err, ErrUnavailable) {
		t.Errorf("call after Stop: err = %v, want unavailable", err)
	}
	if err := l.Notify(bg, &Request{Module: "m", Fn: "add"}); !errors.Is(err, ErrUnavailable) {
		t.Errorf("notify after Stop: err = %v, want unavailable", err)
	}
	if err := l.Start(); err == nil {
		t.Error("Start after Stop succeeded")
	}
	if s := l.Stats(); s.Rejected < 3 {
		t.Errorf("Stats.Rejected = %d, want at least 3", s.Rejected)
	}
	if err := l.Stop(bg); err != nil {
		t.Errorf("second Stop = %v", err)
	}
	checkNoLeak(t, before)
}

func TestLocalStopDrainsQueue(t *testing.T) {
	reg := NewRegistry()
	g := newGate()
	Handle(reg, "m", "add", g.handle)
	l := NewLocal(reg, LocalOptions{Default: Limits{Workers: 1, Queue: 8}})
	bg := context.Background()

	running := goCall(l, bg, &Request{Module: "m", Fn: "add", Arg: &addReq{A: 1}})
	<-g.started
	queued := goCall(l, bg, &Request{Module: "m", Fn: "add", Arg: &addReq{A: 2}})
	b, _ := l.inbox("m")
	waitFor(t, "second call to be queued", func() bool { return len(b.ch) == 1 })

	stopped := make(chan error, 1)
	go func() { stopped <- l.Stop(bg) }()
	waitFor(t, "Stop to begin", func() bool { return !l.Serves("m") })
	close(g.release)
	if err := <-stopped; err != nil {
		t.Fatal(err)
	}
	for i, ch := range []<-chan result{running, queued} {
		if r := <-ch; r.err != nil || r.v.(*addResp).Sum != i+1 {
			t.Errorf("call %d = %v, %v", i+1, r.v, r.err)
		}
	}
}

func TestLocalStopGivesUpWithCtx(t *testing.T) {
	reg := NewRegistry()
	g := newGate()
	Handle(reg, "m", "add", g.handle)
	l := NewLocal(reg, LocalOptions{})
	res := goCall(l, context.Background(), &Request{Module: "m", Fn: "add", Arg: &addReq{}})
	<-g.started

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	err := l.Stop(ctx)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Stop = %v, want a deadline error", err)
	}
	close(g.release)
	if r := <-res; r.err != nil {
		t.Errorf("in-flight call = %v", r.err)
	}
	if err := l.Stop(context.Background()); err != nil {
		t.Errorf("second Stop = %v", err)
	}
}

func TestLocalNotify(t *testing.T) {
	reg := NewRegistry()
	got := make(chan string, 1)
	Handle(reg, "m", "note", func(ctx context.Context, req *addReq) (*addResp, error) {
		c, _ := CallerFrom(ctx)
		if err := ctx.Err(); err != nil {
			got <- "ctx done: " + err.Error()
			return nil, err
		}
		got <- fmt.Sprintf("%s %d", c.UserID, req.A)
		return nil, errors.New("nobody sees this")
	})
	g := newGate()
	Handle(reg, "m", "block", g.handle)
	l := newTestLocal(t, reg, LocalOptions{Default: Limits{Workers: 1}})
	bg := context.Background()

	// Occupy the only worker so the notify is still queued when its
	// caller's ctx is canceled: the handler must run anyway.
	blocked := goCall(l, bg, &Request{Module: "m", Fn: "block", Arg: &addReq{}})
	<-g.started
	ctx, cancel := context.WithCancel(WithCaller(bg, Caller{UserID: "u9"}))
	if err := l.Notify(ctx, &Request{Module: "m", Fn: "note", Arg: &addReq{A: 5}}); err != nil {
		t.Fatal(err)
	}
	cancel()
	close(g.release)
	if s := recv(t, got); s != "u9 5" {
		t.Errorf("notify handler saw %q, want %q", s, "u9 5")
	}
	if r := <-blocked; r.err != nil {
		t.Fatal(r.err)
	}
	waitFor(t, "notify error to be counted", func() bool { return l.Stats().Errors == 1 })
	if s := l.Stats(); s.Notifies != 1 || s.Calls != 1 {
		t.Errorf("Stats = %+v, want 1 call and 1 notify", s)
	}
}

func TestLocalLazyModule(t *testing.T) {
	reg := NewRegistry()
	Handle(reg, "early", "add", add)
	l := newTestLocal(t, reg, LocalOptions{})
	Handle(reg, "late", "add", add)

	if !l.Serves("late") {
		t.Fatal("module registered after Start is not served")
	}
	v, err := l.Call(context.Background(), &Request{Module: "late", Fn: "add", Arg: &addReq{A: 1, B: 2}})
	if err != nil || v.(*addResp).Sum != 3 {
		t.Errorf("late module call = %v, %v", v, err)
	}
}

func TestLocalLimits(t *testing.T) {
	reg := NewRegistry()
	Handle(reg, "a", "add", add)
	Handle(reg, "b", "add", add)
	Handle(reg, "c", "add", add)
	l := newTestLocal(t, reg, LocalOptions{
		Default: Limits{Queue: 16},
		Modules: map[string]Limits{"b": {Workers: 3}, "c": {Workers: -1, Queue: 5}},
	})
	def := max(2, 2*runtime.GOMAXPROCS(0))
	tests := []struct {
		module         string
		workers, queue int
	}{
		{"a", def, 16},
		{"b", 3, 16},
		{"c", def, 5},
	}
	for _, tt := range tests {
		b, err := l.inbox(tt.module)
		if err != nil {
			t.Fatal(err)
		}
		if len(b.stats) != tt.workers || cap(b.ch) != tt.queue {
			t.Errorf("module %s: %d workers, queue %d; want %d, %d", tt.module, len(b.stats), cap(b.ch), tt.workers, tt.queue)
		}
	}
}

func TestLocalConcurrent(t *testing.T) {
	reg := NewRegistry()
	Handle(reg, "calc", "add", add)
	Handle(reg, "calc", "fail", func(_ context.Context, req *addReq) (*addResp, error) {
		return nil, Errorf(CodeBadRequest, "fail %d", req.A)
	})
	Handle(reg, "other", "add", add)
	l := newTestLocal(t, reg, LocalOptions{Default: Limits{Workers: 3, Queue: 4}})

	const goroutines, calls = 64, 300
	var wg sync.WaitGroup
	errs := make(chan error, goroutines)
	for g := range goroutines {
		wg.Go(func() {
			ctx := context.Background()
			for i := range calls {
				module := "calc"
				if i%3 == 0 {
					module = "other"
				}
				if i%7 == 0 {
					_, err := l.Call(ctx, &Request{Module: "calc", Fn: "fail", Arg: &addReq{A: g}})
					if CodeOf(err) != CodeBadRequest || !strings.Contains(err.Error(), fmt.Sprintf("fail %d", g)) {
						errs <- fmt.Errorf("fail call: %v", err)
						return
					}
					continue
				}
				v, err := l.Call(ctx, &Request{Module: module, Fn: "add", Arg: &addReq{A: g, B: i}})
				if err != nil {
					errs <- err
					return
				}
				if got := v.(*addResp).Sum; got != g+i {
					errs <- fmt.Errorf("goroutine %d call %d: sum %d, want %d", g, i, got, g+i)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if s := l.Stats(); s.Calls != goroutines*calls {
		t.Errorf("Stats.Calls = %d, want %d", s.Calls, goroutines*calls)
	}
}

func TestLocalExpiredBeforeCall(t *testing.T) {
	reg := NewRegistry()
	g := newGate()
	Handle(reg, "m", "add", g.handle)
	l := newTestLocal(t, reg, LocalOptions{Default: Limits{Workers: 1}})
	// Keep the only worker busy so that anything queued stays visible.
	blocked := goCall(l, context.Background(), &Request{Module: "m", Fn: "add", Arg: &addReq{}})
	<-g.started

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := l.Call(ctx, &Request{Module: "m", Fn: "add"}); !errors.Is(err, ErrCanceled) {
		t.Errorf("call: err = %v, want canceled", err)
	}
	if err := l.Notify(ctx, &Request{Module: "m", Fn: "add"}); !errors.Is(err, ErrCanceled) {
		t.Errorf("notify: err = %v, want canceled", err)
	}
	b, _ := l.inbox("m")
	if n := len(b.ch); n != 0 {
		t.Errorf("%d expired calls were queued", n)
	}
	close(g.release)
	if r := <-blocked; r.err != nil {
		t.Fatal(r.err)
	}
}
