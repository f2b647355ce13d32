package amqp

import (
	"context"
	"errors"
	"sync"

	"github.com/colonymq/colony/rpc"
)

// The "calc" test module. Its handlers report the node that ran them, so
// tests can tell where a call went.

type addReq struct {
	A int `json:"a"`
	B int `json:"b"`
}

type addResp struct {
	Sum  int    `json:"sum"`
	Node string `json:"node"`
}

type whoResp struct {
	ClientID string `json:"cid"`
	UserID   string `json:"uid"`
	Username string `json:"uname"`
	Node     string `json:"node"`
	Trace    string `json:"trace"`
	HasDL    bool   `json:"has_deadline"`
}

type empty struct{}

// calc holds what the module's handlers need from the test.
type calc struct {
	node    string
	release chan struct{} // closed to unblock "block"
	blocked chan struct{} // receives once per "block" call that started

	mu    sync.Mutex
	notes []string
}

func newCalc(node string) *calc {
	return &calc{node: node, release: make(chan struct{}), blocked: make(chan struct{}, 100)}
}

func (c *calc) register(reg *rpc.Registry) {
	rpc.Handle(reg, "calc", "add", func(ctx context.Context, r *addReq) (*addResp, error) {
		return &addResp{Sum: r.A + r.B, Node: c.node}, nil
	})
	rpc.Handle(reg, "calc", "who", func(ctx context.Context, _ *empty) (*whoResp, error) {
		cl, _ := rpc.CallerFrom(ctx)
		_, dl := ctx.Deadline()
		return &whoResp{ClientID: cl.ClientID, UserID: cl.UserID, Username: cl.Username, Node: cl.Node, Trace: TraceFrom(ctx), HasDL: dl}, nil
	})
	rpc.Handle(reg, "calc", "forbid", func(ctx context.Context, _ *empty) (*empty, error) {
		return nil, rpc.Errorf(rpc.CodeForbidden, "calc is not for you")
	})
	rpc.Handle(reg, "calc", "boom", func(ctx context.Context, _ *empty) (*empty, error) {
		panic("boom")
	})
	rpc.Handle(reg, "calc", "fail", func(ctx context.Context, _ *empty) (*empty, error) {
		return nil, errors.New("plain failure")
	})
	rpc.Handle(reg, "calc", "block", func(ctx context.Context, _ *empty) (*empty, error) {
		c.blocked <- struct{}{}
		select {
		case <-c.release:
			return &empty{}, nil
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	})
	rpc.Handle(reg, "calc", "note", func(ctx context.Context, r *string) (*empty, error) {
		c.mu.Lock()
		c.notes = append(c.notes, *r)
		c.mu.Unlock()
		return &empty{}, nil
	})
	rpc.Handle(reg, "calc", "echo", func(ctx context.Context, r *rpc.Raw) (*rpc.Raw, error) {
		return r, nil
	})
}

func (c *calc) noted() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.notes...)
}
