package rpc

import (
	"context"
	"encoding/json"
	"slices"
	"sync"
	"sync/atomic"
)

// Raw is a JSON-encoded argument or result as it comes off a wire (an MQTT
// payload, an AMQP body). Like json.RawMessage it is embedded verbatim when
// marshaled, so a Raw field or result is never base64-encoded.
type Raw []byte

// MarshalJSON returns r itself, or null when r is empty.
func (r Raw) MarshalJSON() ([]byte, error) {
	if len(r) == 0 {
		return []byte("null"), nil
	}
	return r, nil
}

// UnmarshalJSON stores a copy of data, since the decoder reuses its buffer.
func (r *Raw) UnmarshalJSON(data []byte) error {
	*r = append((*r)[:0], data...)
	return nil
}

// HandlerFunc is the type-erased form every handler is stored as. arg is the
// handler's own *Req (the local fast path), a Raw to decode, or any other Go
// value, which is converted through JSON so that a caller's own
// JSON-compatible type behaves exactly as it would over a wire. The result is
// the handler's *Resp.
type HandlerFunc func(ctx context.Context, arg any) (any, error)

// Registry maps module and handler names to handlers. It is safe for
// concurrent use. Registration is rare and lookups are on every call, so the
// table is copied on write and read without locks.
type Registry struct {
	mu    sync.Mutex // serializes writers
	table atomic.Pointer[map[string]map[string]HandlerFunc]
}

// NewRegistry returns an empty Registry.
func NewRegistry() *Registry {
	r := &Registry{}
	r.table.Store(&map[string]map[string]HandlerFunc{})
	return r
}

// Handle registers h as handler fn of module. It panics on empty names or
// when module already has a handler named fn, because both are programming
// errors that should stop the node at startup.
//
// When Req is Raw the handler receives the argument's JSON undecoded; a Go
// value sent to such a handler is encoded first.
func Handle[Req, Resp any](r *Registry, module, fn string, h func(ctx context.Context, req *Req) (*Resp, error)) {
	if module == "" || fn == "" {
		panic("rpc: handler registered with an empty module or handler name")
	}
	if h == nil {
		panic("rpc: nil handler for " + module + "." + fn)
	}
	r.register(module, fn, wrap(module, fn, h))
}

func (r *Registry) register(module, fn string, h HandlerFunc) {
	r.mu.Lock()
	defer r.mu.Unlock()
	old := *r.table.Load()
	if _, dup := old[module][fn]; dup {
		panic("rpc: handler " + module + "." + fn + " registered twice")
	}
	next := make(map[string]map[string]HandlerFunc, len(old)+1)
	for m, fns := range old {
		next[m] = fns
	}
	fns := make(map[string]HandlerFunc, len(old[module])+1)
	for f, fh := range old[module] {
		fns[f] = fh
	}
	fns[fn] = h
	next[module] = fns
	r.table.Store(&next)
}

// wrap erases the types of h. The *Req case comes first: it is the local
// fast path, where the caller's pointer reaches the handler untouched.
func wrap[Req, Resp any](module, fn string, h func(context.Context, *Req) (*Resp, error)) HandlerFunc {
	if _, raw := any((*Req)(nil)).(*Raw); raw {
		return func(ctx context.Context, arg any) (any, error) {
			var req *Req
			switch a := arg.(type) {
			case *Req:
				req = a
				if req == nil {
					req = new(Req)
				}
			case Raw:
				req = any(&a).(*Req)
			case nil:
				req = new(Req)
			default:
				b, err := Encode(arg)
				if err != nil {
					return nil, Errorf(CodeBadRequest, "encode %s.%s argument: %w", module, fn, err)
				}
				req = any((*Raw)(&b)).(*Req)
			}
			return h(ctx, req)
		}
	}
	return func(ctx context.Context, arg any) (any, error) {
		switch a := arg.(type) {
		case *Req:
			if a == nil {
				a = new(Req)
			}
			return h(ctx, a)
		case Raw:
			return decodeCall(ctx, module, fn, h, a)
		case *Raw:
			if a == nil {
				return h(ctx, new(Req))
			}
			return decodeCall(ctx, module, fn, h, *a)
		case nil:
			return h(ctx, new(Req))
		default:
			b, err := json.Marshal(arg)
			if err != nil {
				return nil, Errorf(CodeBadRequest, "encode %s.%s argument %T: %w", module, fn, arg, err)
			}
			return decodeCall(ctx, module, fn, h, b)
		}
	}
}

func decodeCall[Req, Resp any](ctx context.Context, module, fn string, h func(context.Context, *Req) (*Resp, error), b []byte) (any, error) {
	req := new(Req)
	if len(b) > 0 {
		if err := json.Unmarshal(b, req); err != nil {
			return nil, Errorf(CodeBadRequest, "decode %s.%s argument: %w", module, fn, err)
		}
	}
	return h(ctx, req)
}

// Lookup returns handler fn of module.
func (r *Registry) Lookup(module, fn string) (HandlerFunc, bool) {
	h, ok := (*r.table.Load())[module][fn]
	return h, ok
}

// HasModule reports whether module has at least one handler.
func (r *Registry) HasModule(module string) bool {
	_, ok := (*r.table.Load())[module]
	return ok
}

// Modules returns the names of all modules with handlers, sorted.
func (r *Registry) Modules() []string {
	t := *r.table.Load()
	out := make([]string, 0, len(t))
	for m := range t {
		out = append(out, m)
	}
	slices.Sort(out)
	return out
}

// Handlers returns the handler names of module, sorted; nil for an unknown
// module.
func (r *Registry) Handlers(module string) []string {
	fns, ok := (*r.table.Load())[module]
	if !ok {
		return nil
	}
	out := make([]string, 0, len(fns))
	for f := range fns {
		out = append(out, f)
	}
	slices.Sort(out)
	return out
}

// Encode turns a handler result (or argument) into JSON bytes for a wire.
// Raw and *Raw pass through unchanged, nil becomes null and anything else
// goes through json.Marshal.
func Encode(v any) ([]byte, error) {
	switch x := v.(type) {
	case nil:
		return []byte("null"), nil
	case Raw:
		return x, nil
	case *Raw:
		if x == nil {
			return []byte("null"), nil
		}
		return *x, nil
	}
	return json.Marshal(v)
}
