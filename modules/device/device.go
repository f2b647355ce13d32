// Package device is Colony's built-in device module (device management: registry, credentials, shadows, telemetry and commands).
//
// It is registered and served today with the "info" handler only; its
// features arrive in their own issues.
package device

import (
	"context"

	"github.com/colonymq/colony/app"
)

// ID is the module id used in config, logs and request topics ($rpc/device/…).
const ID = "device"

// Version is the module's own version.
const Version = "0.1.0"

// Module is the device module.
type Module struct{ app.Base }

var _ app.Module = (*Module)(nil)

// New returns the module; it has no side effects until the App initialises it.
func New() *Module { return &Module{} }

// ID returns "device".
func (*Module) ID() string { return ID }

// Init registers the module's handlers.
func (*Module) Init(_ context.Context, h *app.Host) error {
	app.HandleInfo(h, Version)
	return nil
}
