package app

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestDecodeConfig(t *testing.T) {
	var c Config
	err := DecodeConfig("colony.toml", []byte(`
[node]
id = "a"

[listeners]
mqtt = "127.0.0.1:1884"

[limits]
rpc_timeout = "3s"

[rpc.modules.im]
workers = 4
`), &c)
	if err != nil {
		t.Fatal(err)
	}
	if c.Node.ID != "a" || c.Listeners.MQTT != "127.0.0.1:1884" || time.Duration(c.Limits.RPCTimeout) != 3*time.Second ||
		c.RPC.Modules["im"].Workers != 4 {
		t.Fatalf("decoded %+v", c)
	}
}

func TestDecodeConfigErrorsNameKeyAndLine(t *testing.T) {
	for _, tc := range []struct{ text, want string }{
		{"[node]\nid = \"a\"\nnmae = \"b\"\n", `colony.toml:3: unknown key "node.nmae"`},
		{"[listeners]\nmqtt = \"x:1\"\n\n[nope]\nx = 1\n", `colony.toml:4: unknown key "nope"`},
		{"[limits]\nrpc_timeout = \"soon\"\n", `colony.toml:2`},
		{"[limits]\nmax_connections = \"many\"\n", `colony.toml:2`},
		{"[node\n", `colony.toml:1`},
	} {
		var c Config
		err := DecodeConfig("colony.toml", []byte(tc.text), &c)
		if !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("config %q: got %v, want an ErrConfig containing %q", tc.text, err, tc.want)
		}
	}
}

func TestValidate(t *testing.T) {
	c := Config{}
	c.SetDefaults()
	if err := c.Validate([]string{"im"}); err != nil {
		t.Fatalf("defaults invalid: %v", err)
	}
	c.Listeners.WS = "8083"
	c.Store.Durability = "eventually"
	c.Modules.Enabled = []string{"im", "chess"}
	c.Log.Level = "loud"
	err := c.Validate([]string{"im"})
	for _, want := range []string{"listeners.ws", "store.durability", `unknown module "chess"`, "log.level"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("validation error %v does not mention %s", err, want)
		}
	}
}

func TestOverridesPrecedence(t *testing.T) {
	c := Config{Listeners: ListenersConfig{MQTT: "127.0.0.1:1"}}
	env := map[string]string{"COLONY_MQTT": "127.0.0.1:2", "COLONY_NODE": "n2", "COLONY_AMQP": "amqp://x"}
	c.ApplyEnv(func(k string) (string, bool) { v, ok := env[k]; return v, ok })
	if c.Listeners.MQTT != "127.0.0.1:2" || c.Node.ID != "n2" || c.Cluster.AMQPURL != "amqp://x" {
		t.Fatalf("env not applied: %+v", c)
	}
	c.SetDefaults()
	if c.Listeners.WS != DefaultWSAddr || c.Listeners.TLS != Off || c.Node.DataDir != "./data" || c.Store.Durability != "batch" {
		t.Fatalf("defaults: %+v", c)
	}
}

func TestDecodeConfigModuleSettings(t *testing.T) {
	var c Config
	err := DecodeConfig("colony.toml", []byte(`
[modules]
enabled = ["im"]

[modules.im]
max_age = "24h"
send_rate = 2.5

[modules.im.limits]
depth = 3
`), &c)
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Modules.Enabled) != 1 || c.Modules.Settings["im"]["send_rate"] != 2.5 || c.Modules.Settings["im"]["max_age"] != "24h" {
		t.Fatalf("decoded modules %+v", c.Modules)
	}
	type settings struct {
		MaxAge   Duration `toml:"max_age"`
		SendRate float64  `toml:"send_rate"`
		Keep     string   `toml:"keep"`
		Limits   struct {
			Depth int `toml:"depth"`
		} `toml:"limits"`
	}
	s := settings{Keep: "default"}
	if err := DecodeSettings("im", c.Modules.Settings["im"], &s); err != nil {
		t.Fatal(err)
	}
	if time.Duration(s.MaxAge) != 24*time.Hour || s.SendRate != 2.5 || s.Keep != "default" || s.Limits.Depth != 3 {
		t.Fatalf("settings %+v", s)
	}

	// A typo in a module's table is the module's to find, with the key named.
	var narrow struct {
		MaxAge Duration `toml:"max_age"`
	}
	err = DecodeSettings("im", map[string]any{"max_age": "1h", "sendrate": 3}, &narrow)
	if !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), `modules.im: unknown key "sendrate"`) {
		t.Errorf("unknown key: got %v", err)
	}
	err = DecodeSettings("im", map[string]any{"max_age": "soon"}, &narrow)
	if !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), "modules.im") || !strings.Contains(err.Error(), `key "max_age"`) {
		t.Errorf("bad duration: got %v", err)
	}

	// A scalar where a module's table belongs, and a typo outside module
	// tables, are errors of the file.
	for _, tc := range []struct{ text, want string }{
		{"[modules]\nim = 3\n", `"modules.im" is neither "enabled" nor a module's table`},
		{"[modules]\nenabeld = [\"im\"]\n[modules.im]\nx = 1\n[node]\nidd = \"a\"\n", `colony.toml:6: unknown key "node.idd"`},
	} {
		var c Config
		err := DecodeConfig("colony.toml", []byte(tc.text), &c)
		if !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("config %q: got %v, want an ErrConfig containing %q", tc.text, err, tc.want)
		}
	}
}
