package rpc

import (
	"context"
	"encoding/json"
	"sync/atomic"
	"time"
)

// Request is one call as it travels through a Transport.
type Request struct {
	Module string
	Fn     string
	// Node pins the call to one node; "" lets the transport pick any node
	// serving Module. Only remote transports look at it.
	Node string
	// Arg is a Go value on the local path, or Raw when it came off a wire.
	Arg any
}

// Transport carries calls to modules. Implementations are *Local (in this
// package) and a remote AMQP transport. All methods are safe for concurrent
// use. Serves may be asked before every call, so it must be cheap.
type Transport interface {
	// Name identifies the transport: "local", "amqp".
	Name() string
	// Serves reports whether calls to module can be routed now.
	Serves(module string) bool
	// Call runs a call and returns its result, a Go value or Raw. It must
	// return by the time ctx ends.
	Call(ctx context.Context, req *Request) (any, error)
	// Notify queues or sends a call without waiting for its result. It
	// fails only if the call could not be queued or sent.
	Notify(ctx context.Context, req *Request) error
}

// ClientOptions configures a Client.
type ClientOptions struct {
	// Local serves modules running in this process. May be nil.
	Local *Local
	// Remote serves modules of other nodes. May be nil, and may be set
	// later with SetRemote.
	Remote Transport
	// DefaultTimeout bounds calls whose ctx has no deadline. Default 10s.
	DefaultTimeout time.Duration
}

// Client routes calls to the transport that serves the module: Local when
// the module runs in this process, otherwise Remote. It is safe for
// concurrent use.
type Client struct {
	local   *Local
	remote  atomic.Pointer[remoteBox]
	timeout time.Duration
}

// remoteBox lets an interface value live in an atomic.Pointer.
type remoteBox struct{ t Transport }

// NewClient returns a Client using opts.
func NewClient(opts ClientOptions) *Client {
	c := &Client{local: opts.Local, timeout: opts.DefaultTimeout}
	if c.timeout <= 0 {
		c.timeout = 10 * time.Second
	}
	c.SetRemote(opts.Remote)
	return c
}

// SetRemote installs the transport for modules of other nodes, or removes
// it when t is nil. Calls already in flight keep the transport they picked.
func (c *Client) SetRemote(t Transport) {
	if t == nil {
		c.remote.Store(nil)
		return
	}
	c.remote.Store(&remoteBox{t: t})
}

// route picks the transport for a call to module, pinned to node unless node
// is "". It returns a nil Transport for Local, so that callers can call Local
// directly and keep the Request on their stack. A call pinned to a node never goes to Local, which does not know
// node ids; the remote transport recognizes its own node.
func (c *Client) route(module, node string) (Transport, error) {
	if c.local != nil && node == "" && c.local.Serves(module) {
		return nil, nil
	}
	if rb := c.remote.Load(); rb != nil && rb.t.Serves(module) {
		return rb.t, nil
	}
	if c.local != nil && c.local.stopped.Load() && c.local.reg.HasModule(module) {
		return nil, Errorf(CodeUnavailable, "module %q stopping", module)
	}
	return nil, Errorf(CodeNotFound, "no module %q", module)
}

// Invoke calls handler fn of module with arg and returns its result: the
// handler's *Resp on the local path, Raw from a remote one. The MQTT gateway
// uses it with arg = Raw(payload). When ctx has no deadline the Client's
// DefaultTimeout applies.
func (c *Client) Invoke(ctx context.Context, module, fn string, arg any) (any, error) {
	t, err := c.route(module, "")
	if err != nil {
		return nil, err
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.timeout)
		defer cancel()
	}
	if t == nil {
		return c.local.Call(ctx, &Request{Module: module, Fn: fn, Arg: arg})
	}
	return t.Call(ctx, &Request{Module: module, Fn: fn, Arg: arg})
}

// Send calls handler fn of module with arg without waiting for its result.
// The DefaultTimeout bounds only the wait for the call to be queued.
func (c *Client) Send(ctx context.Context, module, fn string, arg any) error {
	t, err := c.route(module, "")
	if err != nil {
		return err
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.timeout)
		defer cancel()
	}
	if t == nil {
		return c.local.Notify(ctx, &Request{Module: module, Fn: fn, Arg: arg})
	}
	return t.Notify(ctx, &Request{Module: module, Fn: fn, Arg: arg})
}

// Call calls handler fn of module with req and returns the typed result.
// Locally the handler's *Resp comes back as is; a Raw result from a wire is
// decoded into a new Resp, and any other type is converted through JSON.
func Call[Resp any](ctx context.Context, c *Client, module, fn string, req any) (*Resp, error) {
	v, err := c.Invoke(ctx, module, fn, req)
	if err != nil {
		return nil, err
	}
	return typedResult[Resp](module, fn, v)
}

// typedResult turns what a transport returned into the typed result.
func typedResult[Resp any](module, fn string, v any) (*Resp, error) {
	switch r := v.(type) {
	case *Resp:
		return r, nil
	case nil:
		return nil, nil
	case Raw:
		return decodeResult[Resp](module, fn, r)
	case *Raw:
		if r == nil {
			return nil, nil
		}
		return decodeResult[Resp](module, fn, *r)
	}
	b, err := json.Marshal(v)
	if err != nil {
		return nil, Errorf(CodeInternal, "encode %s.%s result %T: %w", module, fn, v, err)
	}
	return decodeResult[Resp](module, fn, b)
}

func decodeResult[Resp any](module, fn string, b []byte) (*Resp, error) {
	resp := new(Resp)
	if len(b) == 0 {
		return resp, nil
	}
	if err := json.Unmarshal(b, resp); err != nil {
		return nil, Errorf(CodeInternal, "decode %s.%s result: %w", module, fn, err)
	}
	return resp, nil
}

// Notify calls handler fn of module with req without waiting for its
// result; see Client.Send.
func Notify(ctx context.Context, c *Client, module, fn string, req any) error {
	return c.Send(ctx, module, fn, req)
}

// InvokeOn is Invoke pinned to one node: the call runs on that node's
// instance of module, or fails with not_found when the node does not serve
// it. Modules that keep state on one node (a game room, say) use it to
// reach that state from every other node. A call pinned to this node runs
// on the local transport. node "" is Invoke.
func (c *Client) InvokeOn(ctx context.Context, node, module, fn string, arg any) (any, error) {
	if node == "" || (c.local != nil && node == c.local.opts.Node) {
		return c.Invoke(ctx, module, fn, arg)
	}
	t, err := c.route(module, node)
	if err != nil {
		return nil, err
	}
	if t == nil { // unreachable: pinned calls never route to Local
		return nil, Errorf(CodeNotFound, "no module %q on node %q", module, node)
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.timeout)
		defer cancel()
	}
	return t.Call(ctx, &Request{Module: module, Fn: fn, Node: node, Arg: arg})
}

// SendOn is Send pinned to one node; see InvokeOn.
func (c *Client) SendOn(ctx context.Context, node, module, fn string, arg any) error {
	if node == "" || (c.local != nil && node == c.local.opts.Node) {
		return c.Send(ctx, module, fn, arg)
	}
	t, err := c.route(module, node)
	if err != nil {
		return err
	}
	if t == nil {
		return Errorf(CodeNotFound, "no module %q on node %q", module, node)
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.timeout)
		defer cancel()
	}
	return t.Notify(ctx, &Request{Module: module, Fn: fn, Node: node, Arg: arg})
}

// CallOn is Call pinned to one node; see Client.InvokeOn.
func CallOn[Resp any](ctx context.Context, c *Client, node, module, fn string, req any) (*Resp, error) {
	v, err := c.InvokeOn(ctx, node, module, fn, req)
	if err != nil {
		return nil, err
	}
	return typedResult[Resp](module, fn, v)
}
