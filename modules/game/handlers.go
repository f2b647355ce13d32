package game

import (
	"context"
	"strings"

	"github.com/colonymq/colony/rpc"
)

// register registers every handler; README.md documents the client ones
// with their requests and results. Handlers whose names start with "node_"
// serve the game nodes of a cluster and refuse clients.
func (m *Module) register(reg *rpc.Registry, id string) {
	// Players and rooms (served by the player's own node).
	rpc.Handle(reg, id, "login", m.login)
	rpc.Handle(reg, id, "create", m.create)
	rpc.Handle(reg, id, "join", m.join)
	rpc.Handle(reg, id, "leave", m.leave)
	rpc.Handle(reg, id, "list", m.list)
	rpc.Handle(reg, id, "input", m.inputCall)
	// Matchmaking and parties (forwarded to the matchmaker node).
	rpc.Handle(reg, id, "queue", m.queue)
	rpc.Handle(reg, id, "cancel", m.cancel)
	rpc.Handle(reg, id, "status", m.status)
	rpc.Handle(reg, id, "party_create", m.partyCreate)
	rpc.Handle(reg, id, "party_join", m.partyJoin)
	rpc.Handle(reg, id, "party_leave", m.partyLeave)
	rpc.Handle(reg, id, "rating", m.rating)
	// Between game nodes.
	rpc.Handle(reg, id, "node_create", internal(m.nodeCreate))
	rpc.Handle(reg, id, "node_join", internal(m.nodeJoin))
	rpc.Handle(reg, id, "node_leave", internal(m.nodeLeave))
	rpc.Handle(reg, id, "node_input", internal(m.nodeInput))
	rpc.Handle(reg, id, "node_away", internal(m.nodeAway))
	rpc.Handle(reg, id, "node_rooms", internal(m.nodeRooms))
	rpc.Handle(reg, id, "node_left", internal(m.nodeLeft))
	rpc.Handle(reg, id, "node_mm", internal(m.nodeMM))
}

// internal wraps a handler meant for game nodes: a call from a client
// (which always has a client id) is refused.
func internal[Req, Resp any](h func(context.Context, *Req) (*Resp, error)) func(context.Context, *Req) (*Resp, error) {
	return func(ctx context.Context, req *Req) (*Resp, error) {
		if c, _ := rpc.CallerFrom(ctx); c.ClientID != "" {
			return nil, rpc.Errorf(rpc.CodeForbidden, "game nodes only: %w", ErrInternalOnly)
		}
		return h(ctx, req)
	}
}

// nodeCtx is ctx for a call to another game node: it carries no client,
// which is what internal handlers check.
func nodeCtx(ctx context.Context) context.Context {
	return rpc.WithCaller(ctx, rpc.Caller{Module: ID})
}

// callNode calls internal handler fn on node: directly when it is this
// one, else pinned over the cluster.
func callNode[Req, Resp any](ctx context.Context, m *Module, node, fn string, req *Req,
	local func(context.Context, *Req) (*Resp, error)) (*Resp, error) {
	if node == m.host.Node {
		return local(nodeCtx(ctx), req)
	}
	return rpc.CallOn[Resp](nodeCtx(ctx), m.host.RPC, node, ID, fn, req)
}

// nodeOf returns the node a room lives on: room ids are <node>:<random>.
func nodeOf(room string) (string, bool) {
	i := strings.LastIndexByte(room, ':')
	if i <= 0 || !validID(room) {
		return "", false
	}
	return room[:i], true
}

func errNoRoom(room string) error {
	return rpc.Errorf(rpc.CodeNotFound, "room %q: %w", room, ErrNoRoom)
}
