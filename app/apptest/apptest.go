// Package apptest starts real Colony nodes inside tests: every listener on
// 127.0.0.1:0, data in a temporary directory, logs discarded unless
// COLONY_LOG=debug, and a t.Cleanup that stops the node.
package apptest

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/colonymq/colony/app"
)

// Logger returns the logger tests should use: silent unless COLONY_LOG=debug.
func Logger(t testing.TB) zerolog.Logger {
	if os.Getenv("COLONY_LOG") == "debug" {
		return zerolog.New(zerolog.ConsoleWriter{Out: os.Stderr}).Level(zerolog.DebugLevel).With().
			Timestamp().Str("test", t.Name()).Logger()
	}
	return zerolog.Nop()
}

// Config returns a config for a test node: ephemeral ports on loopback for
// MQTT, WebSocket and HTTP, TLS off, data in a fresh temporary directory.
func Config(t testing.TB) app.Config {
	return app.Config{
		Node:      app.NodeConfig{ID: "test", DataDir: t.TempDir()},
		Listeners: app.ListenersConfig{MQTT: "127.0.0.1:0", WS: "127.0.0.1:0", HTTP: "127.0.0.1:0", TLS: app.Off},
	}
}

// Run starts a node with cfg and mods and stops it when the test ends.
// Start returns only after every listener is bound, so the node is ready.
func Run(t testing.TB, cfg app.Config, mods ...app.Module) *app.App {
	t.Helper()
	a := app.New(cfg, Logger(t))
	if err := a.Use(mods...); err != nil {
		t.Fatalf("use modules: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := a.Start(ctx); err != nil {
		t.Fatalf("start colony: %v", err)
	}
	t.Cleanup(func() { Stop(t, a) })
	return a
}

// Stop stops a node started by Run (idempotent), failing the test on error.
func Stop(t testing.TB, a *app.App) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := a.Stop(ctx); err != nil {
		t.Errorf("stop colony: %v", err)
	}
}

// URL returns the tcp:// URL of the node's MQTT listener, for client libraries.
func URL(a *app.App) string { return "tcp://" + a.Addr("mqtt") }

// WSURL returns the ws:// URL of the node's WebSocket listener.
func WSURL(a *app.App) string { return "ws://" + a.Addr("ws") + "/mqtt" }
