// Command server runs a Colony node with the grid example game: MQTT on
// 127.0.0.1:1884, WebSocket on 127.0.0.1:8084, guests allowed, and a
// "duel" matchmaking mode. Play with ../client.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/colonymq/colony/app"
	"github.com/colonymq/colony/examples/grid"
	"github.com/colonymq/colony/modules/game"
)

func main() {
	mqttAddr := flag.String("mqtt", "127.0.0.1:1884", "MQTT listener")
	ws := flag.String("ws", "127.0.0.1:8084", "MQTT over WebSocket listener")
	httpAddr := flag.String("http", "127.0.0.1:8094", "/healthz and /metrics")
	data := flag.String("data", "data/grid", "data directory")
	flag.Parse()
	cfg := app.Config{
		Node:      app.NodeConfig{ID: "grid", DataDir: *data},
		Listeners: app.ListenersConfig{MQTT: *mqttAddr, WS: *ws, HTTP: *httpAddr, TLS: app.Off},
	}
	cfg.SetDefaults()
	log := app.NewLogger(cfg.Log, os.Stderr)
	m := game.New(game.Options{Guests: true})
	if err := m.Register(grid.Game()); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	if err := m.AddMode(game.Mode{Name: "duel", Game: grid.Name, Players: 2}); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	a := app.New(cfg, log)
	if err := a.Use(m); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := a.Run(ctx, 5*time.Second); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
