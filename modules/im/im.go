// Package im is Colony's built-in im module (chat: conversations, messages, receipts and presence).
//
// It is registered and served today with the "info" handler only; its
// features arrive in their own issues.
package im

import (
	"context"

	"github.com/colonymq/colony/app"
)

// ID is the module id used in config, logs and request topics ($rpc/im/…).
const ID = "im"

// Version is the module's own version.
const Version = "0.1.0"

// Module is the im module.
type Module struct{ app.Base }

var _ app.Module = (*Module)(nil)

// New returns the module; it has no side effects until the App initialises it.
func New() *Module { return &Module{} }

// ID returns "im".
func (*Module) ID() string { return ID }

// Init registers the module's handlers.
func (*Module) Init(_ context.Context, h *app.Host) error {
	app.HandleInfo(h, Version)
	return nil
}
