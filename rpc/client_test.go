package rpc

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"
)

// fakeRemote stands in for the AMQP transport: it serves a fixed set of
// modules and answers every call with result.
type fakeRemote struct {
	modules map[string]bool
	result  any
	err     error

	mu   sync.Mutex
	reqs []Request
}

var _ Transport = (*fakeRemote)(nil)

func (f *fakeRemote) Name() string              { return "fake" }
func (f *fakeRemote) Serves(module string) bool { return f.modules[module] }

func (f *fakeRemote) Call(_ context.Context, req *Request) (any, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.reqs = append(f.reqs, *req)
	return f.result, f.err
}

func (f *fakeRemote) Notify(_ context.Context, req *Request) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.reqs = append(f.reqs, *req)
	return f.err
}

func (f *fakeRemote) requests() []Request {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]Request(nil), f.reqs...)
}

func newTestClient(t *testing.T, opts ClientOptions) *Client {
	t.Helper()
	reg := NewRegistry()
	Handle(reg, "calc", "add", add)
	Handle(reg, "echo", "raw", echoRaw)
	opts.Local = newTestLocal(t, reg, LocalOptions{})
	return NewClient(opts)
}

func TestCallTyped(t *testing.T) {
	c := newTestClient(t, ClientOptions{})
	ctx := context.Background()

	resp, err := Call[addResp](ctx, c, "calc", "add", &addReq{A: 1, B: 2})
	if err != nil || resp.Sum != 3 {
		t.Fatalf("Call = %+v, %v", resp, err)
	}

	// A Raw result (what a remote transport returns) is decoded.
	got, err := Call[addResp](ctx, c, "echo", "raw", Raw(`{"sum":9}`))
	if err != nil || got.Sum != 9 {
		t.Errorf("Call with raw result = %+v, %v", got, err)
	}

	// A result of another JSON-compatible type is converted.
	type sumOnly struct {
		Sum int `json:"sum"`
	}
	conv, err := Call[sumOnly](ctx, c, "calc", "add", &addReq{A: 4, B: 4})
	if err != nil || conv.Sum != 8 {
		t.Errorf("Call with converted result = %+v, %v", conv, err)
	}

	// Raw out of a raw handler, asked for as Raw.
	raw, err := Call[Raw](ctx, c, "echo", "raw", Raw(`[1,2]`))
	if err != nil || string(*raw) != "[1,2]" {
		t.Errorf("Call[Raw] = %s, %v", *raw, err)
	}

	_, err = Call[addResp](ctx, c, "echo", "raw", Raw(`{"sum":"nine"}`))
	if !errors.Is(err, ErrInternal) {
		t.Errorf("undecodable result: err = %v, want internal", err)
	}

	_, err = Call[addResp](ctx, c, "nope", "add", &addReq{})
	if !errors.Is(err, ErrNotFound) {
		t.Errorf("unknown module: err = %v, want not_found", err)
	}
	_, err = Call[addResp](ctx, c, "calc", "nope", &addReq{})
	if !errors.Is(err, ErrNotFound) {
		t.Errorf("unknown handler: err = %v, want not_found", err)
	}
}

func TestClientDefaultTimeout(t *testing.T) {
	reg := NewRegistry()
	g := newGate()
	deadline := make(chan bool, 1)
	Handle(reg, "slow", "add", func(ctx context.Context, req *addReq) (*addResp, error) {
		_, ok := ctx.Deadline()
		deadline <- ok
		return g.handle(ctx, req)
	})
	l := newTestLocal(t, reg, LocalOptions{})
	defer close(g.release)
	c := NewClient(ClientOptions{Local: l, DefaultTimeout: 20 * time.Millisecond})

	_, err := Call[addResp](context.Background(), c, "slow", "add", &addReq{})
	if !errors.Is(err, ErrTimeout) {
		t.Fatalf("err = %v, want timeout from DefaultTimeout", err)
	}
	if !<-deadline {
		t.Error("handler ctx had no deadline")
	}
}

func TestClientKeepsCallerDeadline(t *testing.T) {
	reg := NewRegistry()
	got := make(chan time.Time, 1)
	Handle(reg, "m", "dl", func(ctx context.Context, _ *addReq) (*addResp, error) {
		d, _ := ctx.Deadline()
		got <- d
		return &addResp{}, nil
	})
	c := NewClient(ClientOptions{Local: newTestLocal(t, reg, LocalOptions{}), DefaultTimeout: time.Millisecond})

	want := time.Now().Add(time.Hour)
	ctx, cancel := context.WithDeadline(context.Background(), want)
	defer cancel()
	if _, err := c.Invoke(ctx, "m", "dl", nil); err != nil {
		t.Fatal(err)
	}
	if d := <-got; !d.Equal(want) {
		t.Errorf("handler deadline = %v, want the caller's %v", d, want)
	}
}

func TestClientRoutesToRemote(t *testing.T) {
	remote := &fakeRemote{modules: map[string]bool{"game": true, "calc": true}, result: Raw(`{"sum":100}`)}
	c := newTestClient(t, ClientOptions{})
	ctx := context.Background()

	if _, err := Call[addResp](ctx, c, "game", "add", &addReq{}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("before SetRemote: err = %v, want not_found", err)
	}
	c.SetRemote(remote)

	resp, err := Call[addResp](ctx, c, "game", "add", &addReq{A: 1})
	if err != nil || resp.Sum != 100 {
		t.Fatalf("remote call = %+v, %v", resp, err)
	}
	// A module served locally stays local even when a remote serves it too.
	resp, err = Call[addResp](ctx, c, "calc", "add", &addReq{A: 1, B: 1})
	if err != nil || resp.Sum != 2 {
		t.Fatalf("local call = %+v, %v", resp, err)
	}
	if err := Notify(ctx, c, "game", "tick", Raw(`{}`)); err != nil {
		t.Fatal(err)
	}
	reqs := remote.requests()
	if len(reqs) != 2 || reqs[0].Module != "game" || reqs[0].Fn != "add" || reqs[1].Fn != "tick" {
		t.Errorf("remote saw %+v, want game.add then game.tick", reqs)
	}

	remote.err = Errorf(CodeForbidden, "remote says no")
	if _, err := c.Invoke(ctx, "game", "add", nil); !errors.Is(err, ErrForbidden) {
		t.Errorf("remote error: err = %v, want forbidden", err)
	}

	c.SetRemote(nil)
	if _, err := c.Invoke(ctx, "game", "add", nil); !errors.Is(err, ErrNotFound) {
		t.Errorf("after SetRemote(nil): err = %v, want not_found", err)
	}
}

func TestClientWithoutLocal(t *testing.T) {
	c := NewClient(ClientOptions{})
	if _, err := c.Invoke(context.Background(), "calc", "add", nil); !errors.Is(err, ErrNotFound) {
		t.Errorf("err = %v, want not_found", err)
	}
	c.SetRemote(&fakeRemote{modules: map[string]bool{"calc": true}, result: &addResp{Sum: 1}})
	resp, err := Call[addResp](context.Background(), c, "calc", "add", nil)
	if err != nil || resp.Sum != 1 {
		t.Errorf("remote-only call = %+v, %v", resp, err)
	}
}

func TestClientNotify(t *testing.T) {
	reg := NewRegistry()
	got := make(chan int, 1)
	Handle(reg, "m", "note", func(_ context.Context, req *addReq) (*addResp, error) {
		got <- req.A
		return nil, nil
	})
	// The DefaultTimeout ctx is canceled as soon as Send returns; the
	// handler must run regardless.
	c := NewClient(ClientOptions{Local: newTestLocal(t, reg, LocalOptions{})})
	if err := Notify(context.Background(), c, "m", "note", &addReq{A: 3}); err != nil {
		t.Fatal(err)
	}
	if a := <-got; a != 3 {
		t.Errorf("handler got %d, want 3", a)
	}
	if err := Notify(context.Background(), c, "nope", "note", nil); !errors.Is(err, ErrNotFound) {
		t.Errorf("notify unknown module: err = %v, want not_found", err)
	}
}

func TestClientAfterLocalStop(t *testing.T) {
	reg := NewRegistry()
	Handle(reg, "calc", "add", add)
	l := NewLocal(reg, LocalOptions{})
	c := NewClient(ClientOptions{Local: l})
	if err := l.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, err := Call[addResp](context.Background(), c, "calc", "add", &addReq{}); !errors.Is(err, ErrUnavailable) {
		t.Errorf("err = %v, want unavailable", err)
	}
}

func TestClientTypedNilResult(t *testing.T) {
	reg := NewRegistry()
	Handle(reg, "m", "nil", func(context.Context, *addReq) (*addResp, error) { return nil, nil })
	c := NewClient(ClientOptions{Local: newTestLocal(t, reg, LocalOptions{})})
	resp, err := Call[addResp](context.Background(), c, "m", "nil", nil)
	if err != nil || resp != nil {
		t.Errorf("Call = %+v, %v; want nil, nil", resp, err)
	}
}

func TestClientSetRemoteConcurrent(t *testing.T) {
	c := newTestClient(t, ClientOptions{})
	remote := &fakeRemote{modules: map[string]bool{"game": true}, result: Raw(`{"sum":1}`)}
	var wg sync.WaitGroup
	wg.Go(func() {
		for i := range 200 {
			if i%2 == 0 {
				c.SetRemote(remote)
			} else {
				c.SetRemote(nil)
			}
		}
	})
	for range 4 {
		wg.Go(func() {
			for range 200 {
				_, err := c.Invoke(context.Background(), "game", "add", nil)
				if err != nil && !errors.Is(err, ErrNotFound) {
					t.Errorf("err = %v", err)
					return
				}
			}
		})
	}
	wg.Wait()
}

func TestClientPinnedCalls(t *testing.T) {
	reg := NewRegistry()
	Handle(reg, "calc", "add", func(_ context.Context, req *addReq) (*addResp, error) {
		return &addResp{Sum: req.A + req.B}, nil
	})
	c := NewClient(ClientOptions{Local: newTestLocal(t, reg, LocalOptions{Node: "n1"})})
	ctx := context.Background()
	// Pinned to this node: the local transport, even without a remote.
	resp, err := CallOn[addResp](ctx, c, "n1", "calc", "add", &addReq{A: 1, B: 2})
	if err != nil || resp.Sum != 3 {
		t.Fatalf("call pinned to this node = %+v, %v", resp, err)
	}
	if _, err := CallOn[addResp](ctx, c, "n2", "calc", "add", &addReq{}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("pinned to an unknown node without a remote: err = %v, want not_found", err)
	}
	remote := &fakeRemote{modules: map[string]bool{"calc": true}, result: Raw(`{"sum":7}`)}
	c.SetRemote(remote)
	// Pinned to another node: the remote, although calc runs here too.
	resp, err = CallOn[addResp](ctx, c, "n2", "calc", "add", &addReq{A: 1})
	if err != nil || resp.Sum != 7 {
		t.Fatalf("call pinned to n2 = %+v, %v", resp, err)
	}
	if err := c.SendOn(ctx, "n2", "calc", "add", &addReq{}); err != nil {
		t.Fatal(err)
	}
	reqs := remote.requests()
	if len(reqs) != 2 || reqs[0].Node != "n2" || reqs[1].Node != "n2" || reqs[1].Fn != "add" {
		t.Fatalf("remote saw %+v, want two calls pinned to n2", reqs)
	}
}
