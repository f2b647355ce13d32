// Package game is Colony's built-in game module (games: rooms, tick loops and matchmaking).
//
// It is registered and served today with the "info" handler only; its
// features arrive in their own issues.
package game

import (
	"context"

	"github.com/colonymq/colony/app"
)

// ID is the module id used in config, logs and request topics ($rpc/game/…).
const ID = "game"

// Version is the module's own version.
const Version = "0.1.0"

// Module is the game module.
type Module struct{ app.Base }

var _ app.Module = (*Module)(nil)

// New returns the module; it has no side effects until the App initialises it.
func New() *Module { return &Module{} }

// ID returns "game".
func (*Module) ID() string { return ID }

// Init registers the module's handlers.
func (*Module) Init(_ context.Context, h *app.Host) error {
	app.HandleInfo(h, Version)
	return nil
}
