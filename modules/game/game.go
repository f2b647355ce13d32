// Package game is Colony's built-in game module (games: rooms, tick loops and matchmaking).
//
// It is registered and served today with one handler, "info"; its features
// arrive in their own issues.
package game

import (
	"context"

	"github.com/colonymq/colony/app"
	"github.com/colonymq/colony/rpc"
)

// ID is the module id used in config, logs and request topics ($rpc/game/…).
const ID = "game"

// Version is the module's own version.
const Version = "0.1.0"

// Module is the game module.
type Module struct {
	app.Base
	host *app.Host
}

var _ app.Module = (*Module)(nil)

// New returns the module; it has no side effects until the App initialises it.
func New() *Module { return &Module{} }

// ID returns "game".
func (m *Module) ID() string { return ID }

// Info describes the module.
type Info struct {
	Module   string   `json:"module"`
	Version  string   `json:"version"`
	Node     string   `json:"node"`
	Handlers []string `json:"handlers"`
}

// Init registers the module's handlers.
func (m *Module) Init(_ context.Context, h *app.Host) error {
	m.host = h
	rpc.Handle(h.Registry, ID, "info", func(context.Context, *struct{}) (*Info, error) {
		return &Info{Module: ID, Version: Version, Node: h.Node, Handlers: h.Registry.Handlers(ID)}, nil
	})
	return nil
}
