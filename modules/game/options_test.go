package game_test

import (
	"strings"
	"testing"
	"time"

	"github.com/colonymq/colony/app"
	"github.com/colonymq/colony/modules/game"
)

func TestSettingsFromTOML(t *testing.T) {
	var cfg app.Config
	err := app.DecodeConfig("colony.toml", []byte(`
[modules.game]
guests = true
grace = "10s"
[[modules.game.modes]]
name = "duel"
game = "duo"
window = 50.0
timeout = "30s"
`), &cfg)
	if err != nil {
		t.Fatal(err)
	}
	m := game.New(game.Options{})
	if err := app.DecodeSettings("game", cfg.Modules.Settings["game"], m.Settings()); err != nil {
		t.Fatal(err)
	}
	o := m.Settings().(*game.Options)
	if !o.Guests || time.Duration(o.Grace) != 10*time.Second || len(o.Modes) != 1 || o.Modes[0].Window != 50 ||
		time.Duration(o.Modes[0].Timeout) != 30*time.Second {
		t.Fatalf("options %+v", o)
	}
	err = app.DecodeSettings("game", map[string]any{"grase": "1s"}, game.New(game.Options{}).Settings())
	if err == nil || !strings.Contains(err.Error(), "grase") {
		t.Fatalf("unknown key: %v", err)
	}
}
