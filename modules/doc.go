// Package modules lists Colony's built-in modules.
package modules

import (
	"github.com/colonymq/colony/app"
	"github.com/colonymq/colony/modules/device"
	"github.com/colonymq/colony/modules/game"
	"github.com/colonymq/colony/modules/im"
)

// Builtin returns a fresh instance of every built-in module.
func Builtin() []app.Module {
	return []app.Module{im.New(im.Options{}), device.New(device.Options{}), game.New(game.Options{})}
}
