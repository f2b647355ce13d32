// Command colony runs a Colony node and its tools.
//
//	colony serve [-c colony.toml] [--mqtt addr] [--ws addr] [--tls addr] [--http addr] [--data dir] [--node id] [--amqp url]
//	colony passwd [-f users] <user>
//	colony device [--url url] [-u user] add|list|show|disable|enable|delete|token|psk …
//	colony bench [--url url] [--scenario fan-in|fan-out|pairs|rpc|idle] [flags]
//	colony sn pub|sub [-a addr] -t topic [flags]
//	colony version
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"golang.org/x/term"

	"github.com/colonymq/colony/app"
	"github.com/colonymq/colony/modules"
	"github.com/colonymq/colony/server"
)

const usage = `colony: an MQTT-first application server

usage:
  colony serve [flags]        run a node (no config needed; see colony serve -h)
  colony passwd [-f file] U   add or change user U in a password file
  colony device <cmd> …       manage devices on a running node (see colony device -h)
  colony bench [flags]        load-test a broker by URL (see colony bench -h)
  colony store compact [-c colony.toml] [--data DIR]
                              rewrite the store file without its free space (node stopped)
  colony sn pub|sub [flags]   publish or subscribe over MQTT-SN (see colony sn pub -h)
  colony version              print version, commit, Go version and platform
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

func run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	var err error
	switch args[0] {
	case "serve":
		err = serve(args[1:], stderr)
	case "passwd":
		err = passwd(args[1:], stdin, stdout, stderr)
	case "bench":
		err = benchCmd(args[1:], stdout, stderr)
	case "store":
		err = storeCmd(args[1:], stdout, stderr)
	case "sn":
		err = snCmd(args[1:], stdout, stderr)
	case "device":
		err = deviceCmd(args[1:], stdout, stderr)
	case "version", "--version", "-v":
		fmt.Fprintln(stdout, app.VersionString())
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
	default:
		fmt.Fprintf(stderr, "colony: unknown command %q\n\n%s", args[0], usage)
		return 2
	}
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "colony: %v\n", err)
		return 1
	}
	return 0
}

func serve(args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var configPath string
	fs.StringVar(&configPath, "config", os.Getenv("COLONY_CONFIG"), "TOML config file (env COLONY_CONFIG)")
	fs.StringVar(&configPath, "c", os.Getenv("COLONY_CONFIG"), "shorthand for --config")
	grace := fs.Duration("grace", 15*time.Second, "how long shutdown waits for in-flight requests")
	flagVals := map[string]*string{}
	for _, o := range app.Overrides {
		flagVals[o.Flag] = fs.String(o.Flag, "", fmt.Sprintf("sets %s (env %s)", o.Key, o.Env))
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("serve: unexpected argument %q", fs.Arg(0))
	}

	var cfg app.Config
	if configPath != "" {
		if err := app.LoadConfig(configPath, &cfg); err != nil {
			return err
		}
	}
	cfg.ApplyEnv(os.LookupEnv)
	for _, o := range app.Overrides {
		if v := *flagVals[o.Flag]; v != "" {
			o.Set(&cfg, v)
		}
	}
	cfg.SetDefaults()
	log := app.NewLogger(cfg.Log, stderr)

	a := app.New(cfg, log)
	if err := a.Use(modules.Builtin()...); err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	return a.Run(ctx, *grace)
}

func passwd(args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("passwd", flag.ContinueOnError)
	fs.SetOutput(stderr)
	file := fs.String("f", "users", "password file to create or update")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return errors.New("passwd: want exactly one user name (colony passwd [-f file] <user>)")
	}
	user := fs.Arg(0)
	var password string
	if f, ok := stdin.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		fmt.Fprintf(stdout, "password for %s: ", user)
		b, err := term.ReadPassword(int(f.Fd()))
		fmt.Fprintln(stdout)
		if err != nil {
			return fmt.Errorf("read password: %w", err)
		}
		password = string(b)
	} else {
		// Scripts pipe the password in; reading it from argv would leak it into ps and history.
		line, err := bufio.NewReader(stdin).ReadString('\n')
		if err != nil && !errors.Is(err, io.EOF) {
			return fmt.Errorf("read password: %w", err)
		}
		password = strings.TrimRight(line, "\r\n")
	}
	if err := server.SetPassword(*file, user, password); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "user %s written to %s\n", user, *file)
	return nil
}
