package amqp

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/colonymq/colony/internal/amqptest"
	"github.com/colonymq/colony/rpc"
)

// amqpURL returns the test broker, skipping or failing as amqptest.URL says.
func amqpURL(tb testing.TB) string { return amqptest.URL(tb) }

// testLogger discards logs unless COLONY_LOG=debug.
func testLogger(tb testing.TB) zerolog.Logger {
	if os.Getenv("COLONY_LOG") == "debug" {
		zerolog.TimeFieldFormat = time.RFC3339Nano // global, but only in debug runs
		return zerolog.New(zerolog.ConsoleWriter{Out: os.Stderr, TimeFormat: "15:04:05.000"}).Level(zerolog.DebugLevel).With().
			Timestamp().Str("test", tb.Name()).Logger()
	}
	return zerolog.Nop()
}

// randomPrefix isolates a test's exchanges and queues from every other
// test's on the same broker, and deletes the exchanges when the test ends
// (the queues delete themselves).
func randomPrefix(tb testing.TB) string {
	tb.Helper()
	return amqptest.Prefix(tb, amqpURL(tb))
}

// node is one Colony node inside the test process: its own registry,
// local transport, client and AMQP transport.
type node struct {
	id     string
	reg    *rpc.Registry
	local  *rpc.Local
	client *rpc.Client
	tr     *Transport
}

// nodeOpts tweaks startNode.
type nodeOpts struct {
	beat     time.Duration
	prefetch int
	url      string
}

// startNode starts a node serving what register registers (register may
// be nil for a node that only calls), and stops it when the test ends.
func startNode(tb testing.TB, prefix, id string, no nodeOpts, register func(reg *rpc.Registry)) *node {
	tb.Helper()
	url := no.url
	if url == "" {
		url = amqpURL(tb)
	}
	n := &node{id: id, reg: rpc.NewRegistry()}
	if register != nil {
		register(n.reg)
	}
	n.local = rpc.NewLocal(n.reg, rpc.LocalOptions{Node: id})
	if err := n.local.Start(); err != nil {
		tb.Fatalf("start local %s: %v", id, err)
	}
	tr, err := New(Options{
		URL: url, Node: id, Prefix: prefix, Registry: n.reg, Local: n.local,
		Beat: no.beat, Prefetch: no.prefetch, Version: "test", Logger: testLogger(tb),
	})
	if err != nil {
		tb.Fatalf("new transport %s: %v", id, err)
	}
	n.tr = tr
	n.client = rpc.NewClient(rpc.ClientOptions{Local: n.local, Remote: tr})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := tr.Start(ctx); err != nil {
		tb.Fatalf("start transport %s: %v", id, err)
	}
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := tr.Close(ctx); err != nil {
			tb.Errorf("close transport %s: %v", id, err)
		}
		if err := n.local.Stop(ctx); err != nil {
			tb.Errorf("stop local %s: %v", id, err)
		}
	})
	return n
}

// waitFor polls cond until it holds or the bound passes.
func waitFor(tb testing.TB, what string, bound time.Duration, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(bound)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("%s: not within %v", what, bound)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// waitServes waits until n sees a peer serving module.
func waitServes(tb testing.TB, n *node, module string) {
	tb.Helper()
	waitFor(tb, n.id+" sees "+module, 10*time.Second, func() bool { return n.tr.Serves(module) })
}

// kill drops the transport's connection without saying bye and without
// reconnecting, as a crashed process would.
func (t *Transport) kill() {
	if !t.halt() {
		return
	}
	if s := t.sess.Swap(nil); s != nil {
		s.teardown(rpc.Errorf(rpc.CodeUnavailable, "killed"))
	}
}

// closeConnections makes RabbitMQ close every connection of the nodes
// using prefix, as `rabbitmqctl close_all_connections` would but without
// disturbing anyone else using the broker. It returns how many it closed.
func closeConnections(tb testing.TB, prefix string) int {
	tb.Helper()
	out, err := exec.Command("rabbitmqctl", "-q", "list_connections", "--no-table-headers", "pid", "client_properties").Output()
	if err != nil {
		tb.Fatalf("rabbitmqctl list_connections: %v", err)
	}
	// Lines read: <pid> TAB [{"connection_name","<prefix> <node>"},...]
	mark := fmt.Sprintf(`{"connection_name","%s `, prefix)
	n := 0
	for line := range strings.Lines(string(out)) {
		pid, props, ok := strings.Cut(strings.TrimSpace(line), "\t")
		if !ok || !strings.Contains(props, mark) {
			continue
		}
		if out, err := exec.Command("rabbitmqctl", "-q", "close_connection", pid, "test").CombinedOutput(); err != nil {
			tb.Fatalf("rabbitmqctl close_connection %s: %v\n%s", pid, err, out)
		}
		n++
	}
	return n
}
