package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/colonymq/colony/app"
	"github.com/colonymq/colony/store"
)

// storeCmd runs `colony store compact`: the data file is found as serve
// finds it (config file, COLONY_DATA, --data, default ./data).
func storeCmd(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] != "compact" {
		return errors.New("store: want a subcommand: colony store compact [-c colony.toml] [--data DIR]")
	}
	fs := flag.NewFlagSet("store compact", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var configPath string
	fs.StringVar(&configPath, "config", os.Getenv("COLONY_CONFIG"), "TOML config file (env COLONY_CONFIG)")
	fs.StringVar(&configPath, "c", os.Getenv("COLONY_CONFIG"), "shorthand for --config")
	data := fs.String("data", "", "data directory (sets node.data_dir; env COLONY_DATA)")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	var cfg app.Config
	if configPath != "" {
		if err := app.LoadConfig(configPath, &cfg); err != nil {
			return err
		}
	}
	cfg.ApplyEnv(os.LookupEnv)
	if *data != "" {
		cfg.Node.DataDir = *data
	}
	cfg.SetDefaults()
	path := filepath.Join(cfg.Node.DataDir, "colony.db")
	res, err := store.Compact(path)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%s: %d -> %d bytes\n", path, res.Before, res.After)
	return nil
}
