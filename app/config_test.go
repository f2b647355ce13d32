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
