package app_test

import (
	"errors"
	"testing"

	"github.com/colonymq/colony/app"
)

// FuzzDecodeConfig: any colony.toml either decodes or fails with ErrConfig,
// and a decoded one survives SetDefaults and Validate without a panic.
func FuzzDecodeConfig(f *testing.F) {
	f.Add([]byte("[node]\nid = \"n1\"\n[limits]\nmax_packet_size = 4096\nconnect_timeout = \"2s\"\n"))
	f.Add([]byte("[listeners]\nmqtt = \"0.0.0.0:1883\"\nws = \"off\"\n[cluster]\namqp_url = \"amqp://u:p@h/\"\n"))
	f.Add([]byte("[rpc.modules.im]\nworkers = 8\n[modules]\nenabled = [\"im\"]\n"))
	f.Add([]byte("[limits]\nrpc_timeout = \"-1s\"\n"))
	f.Add([]byte("[nope]\nx = 1\n"))
	f.Add([]byte("[auth]\nallow_anonymous = true\n[store]\ndurability = \"sync\"\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		var cfg app.Config
		if err := app.DecodeConfig("fuzz.toml", data, &cfg); err != nil {
			if !errors.Is(err, app.ErrConfig) {
				t.Fatalf("error %v does not wrap ErrConfig", err)
			}
			return
		}
		cfg.SetDefaults()
		if err := cfg.Validate([]string{"im", "device", "game"}); err != nil && !errors.Is(err, app.ErrConfig) {
			t.Fatalf("validate error %v does not wrap ErrConfig", err)
		}
	})
}
