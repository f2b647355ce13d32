package bench_test

import (
	"bytes"
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/colonymq/colony/app"
	"github.com/colonymq/colony/app/apptest"
	"github.com/colonymq/colony/bench"
	"github.com/colonymq/colony/modules"
	"github.com/colonymq/colony/server"
)

// node starts a Colony node with the built-in modules for one test.
func node(t *testing.T) *app.App {
	t.Helper()
	return apptest.Run(t, apptest.Config(t), modules.Builtin()...)
}

// run runs cfg with a deadline and fails the test on error.
func run(t *testing.T, cfg bench.Config) *bench.Result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	r, err := bench.Run(ctx, cfg, nil)
	if err != nil {
		t.Fatalf("run %s: %v", cfg.Scenario, err)
	}
	return r
}

// exact asserts a lossless run with the expected number of deliveries.
func exact(t *testing.T, r *bench.Result, sent, expected int64) {
	t.Helper()
	if r.Sent != sent || r.Expected != expected || r.Received != expected || r.Lost != 0 ||
		r.Duplicates != 0 || r.OutOfOrder != 0 || r.Invalid != 0 || r.Errors != 0 {
		t.Fatalf("sent %d expected %d received %d lost %d dup %d ooo %d invalid %d errors %d (%s); want sent %d, expected = received = %d, no loss or errors",
			r.Sent, r.Expected, r.Received, r.Lost, r.Duplicates, r.OutOfOrder, r.Invalid, r.Errors, r.FirstError, sent, expected)
	}
	l := r.Latency
	if !(l.P50 > 0 && l.P50 <= l.P90 && l.P90 <= l.P99 && l.P99 <= l.Max) {
		t.Fatalf("latency percentiles out of order: %+v", l)
	}
	if r.Duration <= 0 || r.MsgsPerSec <= 0 {
		t.Fatalf("duration %v, rate %v", r.Duration, r.MsgsPerSec)
	}
}

// haveProc reports whether /proc/<pid>/status can be read (Linux).
func haveProc(t *testing.T) bool {
	if _, _, err := bench.ReadRSS(os.Getpid()); err != nil {
		t.Logf("no RSS sampling here: %v", err)
		return false
	}
	return true
}

func TestFanIn(t *testing.T) {
	a := node(t)
	for _, c := range []struct {
		name    string
		version int
		qos     byte
		rate    float64
	}{
		// QoS 0 is paced: the engine as shipped may drop QoS 0 under a flood.
		{"v3-qos0", 3, 0, 4000},
		{"v3-qos1", 3, 1, 0},
		{"v5-qos0", 5, 0, 4000},
		{"v5-qos1", 5, 1, 0},
		{"v3-qos2", 3, 2, 0},
		{"v5-qos2", 5, 2, 0},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := run(t, bench.Config{URL: apptest.URL(a), Scenario: bench.FanIn, Publishers: 4, Subscribers: 1,
				Count: 500, QoS: c.qos, Rate: c.rate, MQTTVersion: c.version, Window: 64})
			exact(t, r, 2000, 2000)
		})
	}
}

func TestFanInSamplesServerMemory(t *testing.T) {
	if !haveProc(t) {
		t.Skip("needs /proc")
	}
	a := node(t)
	r := run(t, bench.Config{URL: apptest.URL(a), Scenario: bench.FanIn, Count: 300, QoS: 1, PID: os.Getpid()})
	exact(t, r, 1200, 1200)
	m := r.ServerRSS
	if m == nil || m.PID != os.Getpid() || m.BeforeKB <= 0 || m.PeakKB < m.BeforeKB || m.EndKB <= 0 || m.HWMKB <= 0 ||
		m.BeforeAnonKB <= 0 || m.PeakAnonKB < m.BeforeAnonKB || m.PeakAnonKB > m.PeakKB {
		t.Fatalf("server rss %+v", m)
	}
}

func TestFanOut(t *testing.T) {
	a := node(t)
	for _, version := range []int{3, 5} {
		r := run(t, bench.Config{URL: apptest.URL(a), Scenario: bench.FanOut, Publishers: 1, Subscribers: 5,
			Count: 400, Rate: 4000, MQTTVersion: version})
		exact(t, r, 400, 2000)
	}
}

func TestPairs(t *testing.T) {
	a := node(t)
	r := run(t, bench.Config{URL: apptest.URL(a), Scenario: bench.Pairs, Publishers: 3, Count: 300, QoS: 1})
	exact(t, r, 900, 900)
	if r.Subscribers != 3 {
		t.Fatalf("pairs ran with %d subscribers", r.Subscribers)
	}
}

func TestOverWebSocket(t *testing.T) {
	a := node(t)
	for _, version := range []int{3, 5} {
		r := run(t, bench.Config{URL: apptest.WSURL(a), Scenario: bench.FanIn, Publishers: 2, Count: 200, QoS: 1, MQTTVersion: version})
		exact(t, r, 400, 400)
	}
}

func TestSlowPersistentSubscriber(t *testing.T) {
	a := node(t)
	for _, version := range []int{3, 5} {
		r := run(t, bench.Config{URL: apptest.URL(a), Scenario: bench.FanIn, Publishers: 2, Count: 100, QoS: 1,
			MQTTVersion: version, Persistent: true, SubDelay: 500 * time.Microsecond})
		exact(t, r, 200, 200)
	}
}

func TestRPC(t *testing.T) {
	a := node(t)
	for _, version := range []int{3, 5} {
		for _, qos := range []byte{0, 1} {
			r := run(t, bench.Config{URL: apptest.URL(a), Scenario: bench.RPC, Publishers: 2, Count: 100, QoS: qos, MQTTVersion: version})
			exact(t, r, 200, 200)
			if r.RPCErrors != 0 {
				t.Fatalf("v%d qos %d: %d error replies (%s)", version, qos, r.RPCErrors, r.FirstRPCError)
			}
		}
	}
}

func TestRPCErrorReplies(t *testing.T) {
	a := node(t)
	for _, version := range []int{3, 5} {
		r := run(t, bench.Config{URL: apptest.URL(a), Scenario: bench.RPC, Publishers: 1, Count: 20, MQTTVersion: version, Handler: "nope"})
		if r.Received != 20 || r.RPCErrors != 20 || !strings.Contains(r.FirstRPCError, "not_found") {
			t.Fatalf("v%d: replies %d, error replies %d (%s); want 20 not_found replies", version, r.Received, r.RPCErrors, r.FirstRPCError)
		}
	}
}

func TestIdle(t *testing.T) {
	if !haveProc(t) {
		t.Skip("needs /proc")
	}
	a := node(t)
	r := run(t, bench.Config{URL: apptest.URL(a), Scenario: bench.Idle, Clients: 50, PID: os.Getpid()})
	if r.Connected != 50 || r.Clients != 50 || r.Dropped != 0 || r.Errors != 0 {
		t.Fatalf("connected %d of %d, dropped %d, errors %d (%s)", r.Connected, r.Clients, r.Dropped, r.Errors, r.FirstError)
	}
	if m := r.ServerRSS; m == nil || m.BeforeKB <= 0 || m.AfterKB <= 0 || m.PeakKB < m.BeforeKB {
		t.Fatalf("server rss %+v", m)
	}
}

func TestIdleHoldPingsBeforeKeepaliveExpires(t *testing.T) {
	a := node(t)
	for _, c := range []struct {
		url     string
		version int
	}{{apptest.URL(a), 5}, {apptest.WSURL(a), 3}} {
		// The server may close a connection after 1.5 keepalives (1.5 s)
		// without a packet; held for 2.5 s, they survive only by pinging.
		r := run(t, bench.Config{URL: c.url, Scenario: bench.Idle, Clients: 20, MQTTVersion: c.version,
			KeepAlive: time.Second, Hold: 2500 * time.Millisecond})
		if r.Connected != 20 || r.Dropped != 0 || r.Errors != 0 {
			t.Fatalf("%s v%d: connected %d, dropped %d, errors %d (%s)", c.url, c.version, r.Connected, r.Dropped, r.Errors, r.FirstError)
		}
	}
}

func TestCredentials(t *testing.T) {
	cfg := apptest.Config(t)
	cfg.Auth.PasswordFile = filepath.Join(t.TempDir(), "users")
	if err := server.SetPassword(cfg.Auth.PasswordFile, "bench", "secret"); err != nil {
		t.Fatal(err)
	}
	no := false
	cfg.Auth.AllowAnonymous = &no
	a := apptest.Run(t, cfg, modules.Builtin()...)
	for _, version := range []int{3, 5} {
		r := run(t, bench.Config{URL: apptest.URL(a), Publishers: 1, Count: 50, QoS: 1, MQTTVersion: version, Username: "bench", Password: "secret"})
		exact(t, r, 50, 50)
		_, err := bench.Run(context.Background(), bench.Config{URL: apptest.URL(a), Count: 5, MQTTVersion: version, Username: "bench", Password: "wrong"}, nil)
		if !errors.Is(err, bench.ErrConnect) {
			t.Fatalf("v%d wrong password: %v, want ErrConnect", version, err)
		}
		_, err = bench.Run(context.Background(), bench.Config{URL: apptest.URL(a), Scenario: bench.Idle, Clients: 3, MQTTVersion: version}, nil)
		if !errors.Is(err, bench.ErrConnect) {
			t.Fatalf("v%d idle without credentials: %v, want ErrConnect", version, err)
		}
	}
}

func TestNoBroker(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	url := "tcp://" + l.Addr().String()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	for _, version := range []int{3, 5} {
		_, err := bench.Run(context.Background(), bench.Config{URL: url, MQTTVersion: version}, nil)
		if !errors.Is(err, bench.ErrConnect) {
			t.Fatalf("v%d: %v, want ErrConnect", version, err)
		}
	}
}

func TestInvalidConfig(t *testing.T) {
	for _, cfg := range []bench.Config{
		{Size: 10},
		{QoS: 3},
		{MQTTVersion: 4},
		{Scenario: "fan-sideways"},
		{Scenario: bench.Pairs, Publishers: 2, Subscribers: 3},
		{URL: "http://127.0.0.1:1883"},
		{Count: -1},
		{Rate: -5},
		{PID: -1},
	} {
		if _, err := bench.Run(context.Background(), cfg, nil); !errors.Is(err, bench.ErrInvalidConfig) {
			t.Errorf("%+v: %v, want ErrInvalidConfig", cfg, err)
		}
	}
}

func TestProgressAndTable(t *testing.T) {
	a := node(t)
	var mu sync.Mutex
	var seen []bench.Progress
	r, err := bench.Run(context.Background(), bench.Config{URL: apptest.URL(a), Publishers: 2, Count: 200, Rate: 500, QoS: 1},
		func(p bench.Progress) {
			mu.Lock()
			seen = append(seen, p)
			mu.Unlock()
		})
	if err != nil {
		t.Fatal(err)
	}
	exact(t, r, 400, 400)
	mu.Lock()
	defer mu.Unlock()
	if len(seen) < 2 {
		t.Fatalf("%d progress calls", len(seen))
	}
	last := seen[len(seen)-1]
	if last.Phase != "done" || last.Sent != 400 || last.Total != 400 || last.Received != 400 || last.Expected != 400 {
		t.Fatalf("last progress %+v", last)
	}
	var b bytes.Buffer
	if err := r.WriteTable(&b); err != nil {
		t.Fatal(err)
	}
	table := strings.Join(strings.Fields(b.String()), " ")
	for _, want := range []string{"fan-in", "received 400 of 400", "lost 0 (0.00%)", "p99"} {
		if !strings.Contains(table, want) {
			t.Errorf("table lacks %q:\n%s", want, b.String())
		}
	}
}

func TestInterruptedRunReportsWhatWasSent(t *testing.T) {
	a := node(t)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	r, err := bench.Run(ctx, bench.Config{URL: apptest.URL(a), Publishers: 2, Subscribers: 2, Count: 100_000, Rate: 200, QoS: 1}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !r.Interrupted || r.Sent == 0 || r.Sent >= 200_000 || r.Expected != 2*r.Sent {
		t.Fatalf("interrupted %v, sent %d, expected %d: want an interrupted run expecting what was sent, once per subscriber",
			r.Interrupted, r.Sent, r.Expected)
	}
}
