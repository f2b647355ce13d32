package rpc

import (
	"context"
	"errors"
	"slices"
	"testing"
)

type addReq struct {
	A int `json:"a"`
	B int `json:"b"`
}

type addResp struct {
	Sum int `json:"sum"`
}

// otherAddReq is a caller's own type with the same JSON shape as addReq.
type otherAddReq struct {
	X int `json:"a"`
	Y int `json:"b"`
}

func add(_ context.Context, req *addReq) (*addResp, error) {
	return &addResp{Sum: req.A + req.B}, nil
}

func echoRaw(_ context.Context, req *Raw) (*Raw, error) {
	return req, nil
}

func mustPanic(t *testing.T, name string, f func()) {
	t.Helper()
	defer func() {
		if recover() == nil {
			t.Errorf("%s did not panic", name)
		}
	}()
	f()
}

func TestHandlePanicsOnBadRegistration(t *testing.T) {
	r := NewRegistry()
	Handle(r, "calc", "add", add)
	mustPanic(t, "duplicate", func() { Handle(r, "calc", "add", add) })
	mustPanic(t, "empty module", func() { Handle(r, "", "add", add) })
	mustPanic(t, "empty fn", func() { Handle(r, "calc", "", add) })
	mustPanic(t, "nil handler", func() { Handle[addReq, addResp](r, "calc", "sub", nil) })
}

func TestRegistryListing(t *testing.T) {
	r := NewRegistry()
	Handle(r, "zeta", "b", add)
	Handle(r, "zeta", "a", add)
	Handle(r, "alpha", "x", add)

	if got, want := r.Modules(), []string{"alpha", "zeta"}; !slices.Equal(got, want) {
		t.Errorf("Modules() = %v, want %v", got, want)
	}
	if got, want := r.Handlers("zeta"), []string{"a", "b"}; !slices.Equal(got, want) {
		t.Errorf("Handlers(zeta) = %v, want %v", got, want)
	}
	if got := r.Handlers("nope"); got != nil {
		t.Errorf("Handlers(nope) = %v, want nil", got)
	}
	if !r.HasModule("alpha") || r.HasModule("beta") {
		t.Error("HasModule gave the wrong answer")
	}
	if _, ok := r.Lookup("zeta", "a"); !ok {
		t.Error("Lookup(zeta, a) missed")
	}
	if _, ok := r.Lookup("zeta", "c"); ok {
		t.Error("Lookup(zeta, c) found a handler")
	}
	if _, ok := r.Lookup("beta", "a"); ok {
		t.Error("Lookup(beta, a) found a handler")
	}
}

func lookup(t *testing.T, r *Registry, module, fn string) HandlerFunc {
	t.Helper()
	h, ok := r.Lookup(module, fn)
	if !ok {
		t.Fatalf("no handler %s.%s", module, fn)
	}
	return h
}

func TestHandlerArgumentForms(t *testing.T) {
	r := NewRegistry()
	var seen *addReq
	Handle(r, "calc", "add", func(ctx context.Context, req *addReq) (*addResp, error) {
		seen = req
		return add(ctx, req)
	})
	h := lookup(t, r, "calc", "add")
	ctx := context.Background()

	t.Run("own pointer is passed through", func(t *testing.T) {
		req := &addReq{A: 1, B: 2}
		res, err := h(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		if seen != req {
			t.Error("handler received a different *addReq than the caller passed")
		}
		if got := res.(*addResp).Sum; got != 3 {
			t.Errorf("Sum = %d, want 3", got)
		}
	})

	tests := []struct {
		name string
		arg  any
		want int
	}{
		{"raw", Raw(`{"a":2,"b":5}`), 7},
		{"raw pointer", &Raw{'{', '"', 'a', '"', ':', '4', '}'}, 4},
		{"empty raw is zero", Raw(nil), 0},
		{"nil is zero", nil, 0},
		{"compatible struct", &otherAddReq{X: 10, Y: 20}, 30},
		{"compatible struct value", otherAddReq{X: 1, Y: 1}, 2},
		{"map", map[string]int{"a": 6, "b": 1}, 7},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res, err := h(ctx, tt.arg)
			if err != nil {
				t.Fatal(err)
			}
			if got := res.(*addResp).Sum; got != tt.want {
				t.Errorf("Sum = %d, want %d", got, tt.want)
			}
		})
	}

	t.Run("invalid json is bad request", func(t *testing.T) {
		seen = nil
		_, err := h(ctx, Raw(`{"a":`))
		if !errors.Is(err, ErrBadRequest) {
			t.Fatalf("err = %v, want bad_request", err)
		}
		if seen != nil {
			t.Error("handler ran on an undecodable argument")
		}
	})
	t.Run("wrong json type is bad request", func(t *testing.T) {
		_, err := h(ctx, Raw(`{"a":"one"}`))
		if !errors.Is(err, ErrBadRequest) {
			t.Fatalf("err = %v, want bad_request", err)
		}
	})
	t.Run("unencodable value is bad request", func(t *testing.T) {
		_, err := h(ctx, make(chan int))
		if !errors.Is(err, ErrBadRequest) {
			t.Fatalf("err = %v, want bad_request", err)
		}
	})
}

func TestRawHandler(t *testing.T) {
	r := NewRegistry()
	Handle(r, "echo", "raw", echoRaw)
	h := lookup(t, r, "echo", "raw")
	ctx := context.Background()

	in := Raw(`[1, 2,  "not reformatted"]`)
	res, err := h(ctx, in)
	if err != nil {
		t.Fatal(err)
	}
	b, err := Encode(res)
	if err != nil {
		t.Fatal(err)
	}
	if string(b) != string(in) {
		t.Errorf("Encode(result) = %s, want %s unchanged", b, in)
	}

	// Invalid JSON is not this package's business when the handler asked
	// for raw bytes.
	res, err = h(ctx, Raw("not json"))
	if err != nil || string(*res.(*Raw)) != "not json" {
		t.Errorf("raw passthrough = %v, %v", res, err)
	}

	// A Go value sent to a raw handler arrives encoded.
	res, err = h(ctx, &addReq{A: 1, B: 2})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := string(*res.(*Raw)), `{"a":1,"b":2}`; got != want {
		t.Errorf("encoded arg = %s, want %s", got, want)
	}
}

func TestEncode(t *testing.T) {
	tests := []struct {
		name string
		v    any
		want string
	}{
		{"nil", nil, "null"},
		{"raw", Raw(`{"x":1}`), `{"x":1}`},
		{"raw pointer", &Raw{'1'}, "1"},
		{"nil raw pointer", (*Raw)(nil), "null"},
		{"struct", &addResp{Sum: 3}, `{"sum":3}`},
		{"nil struct pointer", (*addResp)(nil), "null"},
		{"struct with raw field", struct {
			R Raw `json:"r"`
		}{Raw(`[1]`)}, `{"r":[1]}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := Encode(tt.v)
			if err != nil {
				t.Fatal(err)
			}
			if string(b) != tt.want {
				t.Errorf("Encode = %s, want %s", b, tt.want)
			}
		})
	}
	if _, err := Encode(make(chan int)); err == nil {
		t.Error("Encode(chan) succeeded")
	}
}
