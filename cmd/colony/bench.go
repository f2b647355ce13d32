package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/term"

	"github.com/colonymq/colony/bench"
)

const benchUsage = `usage: colony bench [flags]

Load-tests an MQTT broker (Colony or any other) and reports sent, received,
lost, duplicated and out-of-order messages, latency percentiles and, with
--pid, the server's memory. Scenarios:

  fan-in    --pubs publishers, each on its own topic -> --subs subscribers on a wildcard (default 4 -> 1)
  fan-out   --pubs publishers on one topic -> every one of --subs subscribers (default 1 -> 10)
  pairs     --pubs independent publisher -> subscriber pairs (default 10)
  rpc       --pubs callers making --count calls each to $rpc/<module>/<handler>, one at a time
  idle      --clients bare connections held for --hold; reports server RSS per connection

--count is per publisher: --pubs 4 --count 25000 publishes 100,000 messages.
Lost messages are a result, not a failure: the exit status is non-zero only
for bad flags and clients that cannot connect.

flags:
`

// benchCmd runs `colony bench`.
func benchCmd(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, benchUsage)
		fs.PrintDefaults()
	}
	var cfg bench.Config
	scenario := fs.String("scenario", string(bench.FanIn), "fan-in, fan-out, pairs, rpc or idle")
	qos := fs.Uint("qos", 0, "QoS of publishes and subscriptions: 0, 1 or 2")
	fs.StringVar(&cfg.URL, "url", "tcp://127.0.0.1:1883", "broker URL: tcp://host:port or ws://host:port/path")
	fs.IntVar(&cfg.Publishers, "pubs", 0, "publishers (rpc: callers); 0 = the scenario's default")
	fs.IntVar(&cfg.Subscribers, "subs", 0, "subscribers; 0 = the scenario's default")
	fs.IntVar(&cfg.Count, "count", 0, "messages per publisher (rpc: calls per caller); 0 = 10000 (rpc: 1000)")
	fs.IntVar(&cfg.Size, "size", 64, fmt.Sprintf("payload bytes, at least the %d-byte header", bench.HeaderSize))
	fs.Float64Var(&cfg.Rate, "rate", 0, "messages (rpc: calls) per second per publisher; 0 = as fast as possible")
	fs.IntVar(&cfg.MQTTVersion, "mqtt", 3, "MQTT version: 3 (3.1.1) or 5")
	fs.StringVar(&cfg.Username, "user", "", "username for every client")
	fs.StringVar(&cfg.Password, "password", "", "password (default: env COLONY_BENCH_PASSWORD, which keeps it out of ps)")
	fs.StringVar(&cfg.Topic, "topic", "", "topic prefix (default bench/<random>, unique per run)")
	fs.DurationVar(&cfg.Timeout, "timeout", 5*time.Second, "how long to wait for late deliveries, an RPC reply or an acknowledgement")
	fs.IntVar(&cfg.Clients, "clients", 1000, "idle: connections to open")
	fs.DurationVar(&cfg.Hold, "hold", 0, "idle: how long to keep the connections open after measuring")
	fs.DurationVar(&cfg.KeepAlive, "keepalive", 0, "MQTT keepalive (default 300s for idle, 30s otherwise)")
	fs.IntVar(&cfg.PID, "pid", 0, "server process id: sample its memory from /proc (Linux)")
	fs.DurationVar(&cfg.SubDelay, "sub-delay", 0, "sleep per delivery in each subscriber (a slow subscriber)")
	fs.BoolVar(&cfg.Persistent, "persistent", false, "subscribers keep their session (clean session false / session expiry); removed after the run")
	fs.StringVar(&cfg.Module, "module", "game", "rpc: module to call")
	fs.StringVar(&cfg.Handler, "handler", "info", "rpc: handler to call")
	fs.IntVar(&cfg.Window, "window", 1024, "most unacknowledged QoS 1/2 publishes per publisher")
	fs.StringVar(&cfg.SN, "sn", "", "MQTT-SN gateway host:port: publishers are MQTT-SN devices through it (subscribers stay on --url)")
	fs.StringVar(&cfg.SNPSKIdentity, "sn-psk-identity", "", "with --sn: DTLS with this PSK identity")
	fs.StringVar(&cfg.SNPSK, "sn-psk", "", "with --sn-psk-identity: the key, hex")
	asJSON := fs.Bool("json", false, "print the result as one JSON object")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("bench: unexpected argument %q", fs.Arg(0))
	}
	if *qos > 2 {
		return fmt.Errorf("bench: --qos %d (want 0, 1 or 2)", *qos)
	}
	cfg.QoS = byte(*qos)
	cfg.Scenario = bench.Scenario(*scenario)
	if cfg.Password == "" {
		cfg.Password = os.Getenv("COLONY_BENCH_PASSWORD")
	}
	checkFileLimit(cfg, stderr)

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	var bar *progressBar
	if f, ok := stderr.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		bar = &progressBar{w: stderr, width: 80}
		if w, _, err := term.GetSize(int(f.Fd())); err == nil && w > 20 {
			bar.width = w
		}
	}
	var progress func(bench.Progress)
	if bar != nil {
		progress = bar.draw
	}
	res, err := bench.Run(ctx, cfg, progress)
	if bar != nil {
		bar.clear()
	}
	if err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		if err := enc.Encode(res); err != nil {
			return fmt.Errorf("bench: write result: %w", err)
		}
		return nil
	}
	if err := res.WriteTable(stdout); err != nil {
		return fmt.Errorf("bench: write result: %w", err)
	}
	return nil
}

// checkFileLimit raises the open-file limit as far as allowed and warns on
// stderr when it is still too low for the connections cfg opens.
func checkFileLimit(cfg bench.Config, stderr io.Writer) {
	need := uint64(cfg.Publishers+cfg.Subscribers) + 100
	if cfg.Scenario == bench.Idle {
		need = uint64(cfg.Clients) + 100
	}
	limit, err := bench.RaiseFileLimit()
	if err != nil {
		fmt.Fprintf(stderr, "colony bench: %v\n", err)
	}
	if limit < need {
		fmt.Fprintf(stderr, "colony bench: the open-file limit is %d, below the %d this run needs; raise the hard limit (ulimit -Hn) as root\n", limit, need)
	}
}

// progressBar draws Progress on one terminal line.
type progressBar struct {
	w     io.Writer
	width int
	drawn bool
}

// draw redraws the bar for p. Its text has a fixed width for a given run,
// so the bar does not jump.
func (b *progressBar) draw(p bench.Progress) {
	var done, total int64
	var text string
	switch {
	case p.Total == 0: // idle
		done, total = p.Connected, p.Clients
		w := len(strconv.FormatInt(total, 10))
		text = fmt.Sprintf("connected %*d/%d", w, done, total)
	default:
		done, total = p.Sent, p.Total
		if p.Phase != "publish" && p.Phase != "connect" {
			done, total = p.Received, p.Expected
		}
		ws, wr := len(strconv.FormatInt(p.Total, 10)), len(strconv.FormatInt(p.Expected, 10))
		text = fmt.Sprintf("sent %*d/%d  received %*d/%d", ws, p.Sent, p.Total, wr, p.Received, p.Expected)
	}
	frac := 0.0
	if total > 0 {
		frac = min(float64(done)/float64(total), 1)
	}
	if p.Phase == "done" {
		frac = 1
	}
	text = fmt.Sprintf(" %3.0f%% %-7s %s %7.1fs", 100*frac, p.Phase, text, p.Elapsed.Seconds())
	cells := max(b.width-len(text)-3, 10)
	full := int(frac * float64(cells))
	fmt.Fprintf(b.w, "\r[%s%s]%s\x1b[K", strings.Repeat("#", full), strings.Repeat(".", cells-full), text)
	b.drawn = true
}

// clear erases the bar.
func (b *progressBar) clear() {
	if b.drawn {
		fmt.Fprint(b.w, "\r\x1b[K")
	}
}
