// Package python tests the Python peer (python/colony, python/examples)
// against a live Go node over RabbitMQ: calls in both directions, error
// codes across the wire, presence (hello, answers, bye).
//
// It needs RabbitMQ (see internal/amqptest) and a Python 3 with pika:
// /usr/bin/python3 with Debian's python3-pika, or the interpreter named by
// COLONY_TEST_PYTHON. Without them the test skips, unless
// COLONY_TEST_AMQP=require (as in CI), which makes it fail.
package python

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/colonymq/colony/app"
	"github.com/colonymq/colony/app/apptest"
	"github.com/colonymq/colony/internal/amqptest"
	"github.com/colonymq/colony/rpc"
	"github.com/colonymq/colony/rpc/amqp"
)

// bound caps every wait of this test: only a hang reaches it.
const bound = 30 * time.Second

// The example module, run by the Python interpreter from this directory.
const example = "examples/pycalc.py"

// TestPythonPeer runs examples/pycalc.py next to a Go node and checks
// every direction of the wire format.
func TestPythonPeer(t *testing.T) {
	py := pythonWithPika(t)
	url := amqptest.URL(t)
	prefix := amqptest.Prefix(t, url)
	t.Logf("cluster prefix %s", prefix)

	// The Python node starts first, with a beat far longer than the test:
	// the Go node can only learn of it by the Python node answering the
	// Go node's hello, and forget it only by its bye.
	peer := startPeer(t, py, "--amqp", url, "--prefix", prefix, "--node", "py1", "--beat", "600")

	cfg := apptest.Config(t)
	cfg.Node.ID = "go1"
	cfg.Cluster = app.ClusterConfig{AMQPURL: url, Prefix: prefix, Beat: app.Duration(200 * time.Millisecond)}
	goNode := apptest.Run(t, cfg, &gocalc{})
	waitFor(t, "go1 sees pycalc, announced by py1 in answer to go1's hello", func() bool {
		return goNode.Cluster().Serves("pycalc")
	})
	nodes := goNode.Cluster().Nodes()
	i := slices.IndexFunc(nodes, func(n amqp.NodeInfo) bool { return n.Node == "py1" })
	if i < 0 || !slices.Equal(nodes[i].Modules, []string{"pycalc"}) || nodes[i].Version == "" {
		t.Fatalf("py1 as go1 sees it: %+v", nodes)
	}
	c := goNode.RPC()

	t.Run("GoCallsPython", func(t *testing.T) {
		ctx := callCtx(t)
		res, err := rpc.Call[addResp](ctx, c, "pycalc", "add", &addReq{A: 2, B: 40})
		if err != nil || res.Sum != 42 || res.Node != "py1" {
			t.Fatalf("pycalc.add: %+v %v", res, err)
		}
		// Pinned to the Python node: its queue <prefix>.rpc.pycalc@py1.
		raw, err := goNode.Cluster().Call(ctx, &rpc.Request{Module: "pycalc", Fn: "add", Node: "py1", Arg: &addReq{A: 1, B: 1}})
		if err != nil || !strings.Contains(string(raw.(rpc.Raw)), `"sum":2`) {
			t.Fatalf("pycalc.add pinned to py1: %s %v", raw, err)
		}
		if _, err := goNode.Cluster().Call(ctx, &rpc.Request{Module: "pycalc", Fn: "add", Node: "ghost", Arg: &addReq{}}); !errors.Is(err, rpc.ErrNotFound) {
			t.Fatalf("pycalc.add pinned to a node that does not exist: %v", err)
		}
	})

	t.Run("PythonErrorsKeepTheirCodes", func(t *testing.T) {
		ctx := callCtx(t)
		for _, tc := range []struct {
			fn   string
			arg  any
			want *rpc.Error
			msg  string
		}{
			{"nosuch", &addReq{}, rpc.ErrNotFound, `has no handler "nosuch"`},
			{"add", rpc.Raw("{not json"), rpc.ErrBadRequest, "decode pycalc.add argument"},
			{"div", &addReq{A: 1}, rpc.ErrBadRequest, "division by zero"},
			{"boom", nil, rpc.ErrInternal, "RuntimeError: boom"},
		} {
			_, err := c.Invoke(ctx, "pycalc", tc.fn, tc.arg)
			if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.msg) {
				t.Errorf("pycalc.%s: got %v, want %s containing %q", tc.fn, err, tc.want.Code, tc.msg)
			}
		}
		res, err := rpc.Call[struct {
			Quotient float64 `json:"quotient"`
		}](ctx, c, "pycalc", "div", &addReq{A: 1, B: 4})
		if err != nil || res.Quotient != 0.25 {
			t.Errorf("pycalc.div: %+v %v", res, err)
		}
	})

	t.Run("PythonHandlerCallsGo", func(t *testing.T) {
		ctx := callCtx(t)
		// describe asks gocalc.info over the wire and derives its answer.
		info, err := rpc.Call[app.ModuleInfo](ctx, c, "gocalc", "info", nil)
		if err != nil {
			t.Fatal(err)
		}
		d, err := rpc.Call[struct {
			Module   string `json:"module"`
			ServedBy string `json:"served_by"`
			Handlers int    `json:"handlers"`
			AskedBy  string `json:"asked_by"`
		}](ctx, c, "pycalc", "describe", map[string]string{"module": "gocalc"})
		if err != nil || d.Module != "gocalc" || d.ServedBy != "go1" || d.Handlers != len(info.Handlers) || d.AskedBy != "py1" {
			t.Fatalf("pycalc.describe: %+v %v (gocalc.info: %+v)", d, err, info)
		}
		// relay returns what the Go handler produced.
		m, err := rpc.Call[relayResp[mulResp]](ctx, c, "pycalc", "relay", relayReq{"gocalc", "mul", &mulReq{A: 6, B: 7}})
		if err != nil || m.Result.Product != 42 || m.Result.Node != "go1" || m.Via != "py1" {
			t.Fatalf("pycalc.relay to gocalc.mul: %+v %v", m, err)
		}
		// The nested call keeps the trace and the original caller, and
		// carries a deadline.
		cctx := amqp.WithTrace(rpc.WithCaller(ctx, rpc.Caller{ClientID: "c1", UserID: "u1", Username: "ann"}), "trace-42")
		w, err := rpc.Call[relayResp[whoResp]](cctx, c, "pycalc", "relay", relayReq{"gocalc", "who", nil})
		want := whoResp{ClientID: "c1", UserID: "u1", Username: "ann", Node: "py1", Trace: "trace-42", HasDeadline: true}
		if err != nil || w.Result != want {
			t.Fatalf("pycalc.relay to gocalc.who: %+v %v, want %+v", w, err, want)
		}
	})

	t.Run("NestedErrorsKeepTheirCodes", func(t *testing.T) {
		ctx := callCtx(t)
		for _, tc := range []struct {
			module, fn string
			want       *rpc.Error
			msg        string
		}{
			{"gocalc", "fail", rpc.ErrInternal, "plain failure"},
			{"gocalc", "nosuch", rpc.ErrNotFound, `has no handler "nosuch"`},
			// Returned by RabbitMQ at once: had the Python call waited for
			// its timeout instead, ctx would have ended first (timeout).
			{"nobody", "x", rpc.ErrNotFound, `no node serves "nobody"`},
		} {
			_, err := c.Invoke(ctx, "pycalc", "relay", relayReq{tc.module, tc.fn, nil})
			if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.msg) {
				t.Errorf("pycalc.relay to %s.%s: got %v, want %s containing %q", tc.module, tc.fn, err, tc.want.Code, tc.msg)
			}
		}
	})

	t.Run("MQTTClientCallsPython", func(t *testing.T) {
		// An MQTT 5 client of go1 calls pycalc: the gateway's caller
		// identity reaches py1, and py1's nested call carries it to go1.
		ctx := callCtx(t)
		cl := apptest.V5(t, goNode.Addr("mqtt"), &paho.Connect{ClientID: "roamer", CleanStart: true})
		if _, err := cl.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "r/roamer", QoS: 1}}}); err != nil {
			t.Fatal(err)
		}
		ask := func(topic, payload string) string {
			t.Helper()
			if _, err := cl.Publish(ctx, &paho.Publish{Topic: topic, QoS: 1, Payload: []byte(payload),
				Properties: &paho.PublishProperties{ResponseTopic: "r/roamer"}}); err != nil {
				t.Fatal(err)
			}
			return string(apptest.Next(t, cl.Msgs).Payload)
		}
		var reply struct {
			Result relayResp[whoResp] `json:"result"`
		}
		got := ask("$rpc/pycalc/relay", `{"module":"gocalc","fn":"who"}`)
		if err := json.Unmarshal([]byte(got), &reply); err != nil || reply.Result.Result.ClientID != "roamer" ||
			reply.Result.Result.Node != "py1" || reply.Result.Via != "py1" {
			t.Fatalf("$rpc/pycalc/relay to gocalc.who: %s (%v)", got, err)
		}
		if got, want := ask("$rpc/pycalc/div", `{"a":1,"b":0}`), `{"error":{"code":"bad_request","message":"division by zero"}}`; got != want {
			t.Fatalf("$rpc/pycalc/div by zero: got %s, want %s", got, want)
		}
	})

	t.Run("Concurrent", func(t *testing.T) {
		// More calls at once than py1 has handler threads, half of them
		// making a nested call back to go1 while they hold a thread.
		ctx := callCtx(t)
		const n = 64
		errs := make(chan error, n)
		for i := range n {
			go func() {
				if i%2 == 0 {
					res, err := rpc.Call[addResp](ctx, c, "pycalc", "add", &addReq{A: i, B: 1000})
					if err == nil && res.Sum != i+1000 {
						err = fmt.Errorf("pycalc.add(%d, 1000) = %d", i, res.Sum)
					}
					errs <- err
					return
				}
				res, err := rpc.Call[relayResp[mulResp]](ctx, c, "pycalc", "relay", relayReq{"gocalc", "mul", &mulReq{A: i, B: 3}})
				if err == nil && res.Result.Product != 3*i {
					err = fmt.Errorf("relay gocalc.mul(%d, 3) = %d", i, res.Result.Product)
				}
				errs <- err
			}()
		}
		for range n {
			if err := <-errs; err != nil {
				t.Error(err)
			}
		}
	})

	t.Run("PythonCallsGo", func(t *testing.T) {
		served := goNode.Cluster().Stats().Served
		// --timeout far beyond the test's bound: a call that waited for
		// its timeout instead of failing at once would hang the test.
		lines, stderr := callPython(t, py, "--amqp", url, "--prefix", prefix, "--node", "py-cli", "--timeout", "3600",
			"--call", "gocalc.mul", `{"a":3,"b":5}`,
			"--call", "gocalc.nosuch", `{}`,
			"--call", "gocalc.fail", `null`,
			"--call", "nobody.x", `{}`,
			"--call", "pycalc.add", `{"a":1,"b":2}`)
		want := []string{
			`{"result": {"product": 15, "node": "go1"}}`,
			`{"error_code": "not_found", "error": "module \"gocalc\" has no handler \"nosuch\""}`,
			`{"error_code": "internal", "error": "plain failure"}`,
			`{"error_code": "not_found", "error": "no node serves \"nobody\""}`,
			`{"result": {"sum": 3, "node": "py1"}}`,
		}
		if !slices.Equal(lines, want) {
			t.Fatalf("python calls:\n got %q\nwant %q\nstderr:\n%s", lines, want, stderr)
		}
		if got := goNode.Cluster().Stats().Served; got < served+3 {
			t.Fatalf("go1 served %d calls from py-cli, want 3", got-served)
		}
	})

	t.Run("Reconnect", func(t *testing.T) {
		if _, err := exec.LookPath("rabbitmqctl"); err != nil {
			t.Skip("rabbitmqctl not found: cannot cut the Python node's connection")
		}
		if n := closeConnection(t, prefix+" py1"); n != 1 {
			t.Fatalf("closed %d connections named %q, want 1", n, prefix+" py1")
		}
		// py1 reconnects, declares its queues and consumes them again. Until
		// then go1, which still counts py1 alive (its beat is long), gets
		// unavailable (not not_found: py1 is coming back), or a timeout for a
		// call that raced the queue's deletion.
		waitFor(t, "py1 serves pycalc again", func() bool {
			ctx, cancel := context.WithTimeout(t.Context(), time.Second)
			defer cancel()
			res, err := rpc.Call[addResp](ctx, c, "pycalc", "add", &addReq{A: 1, B: 2})
			if err != nil && !errors.Is(err, rpc.ErrUnavailable) && !errors.Is(err, rpc.ErrTimeout) {
				t.Fatalf("pycalc.add while py1 reconnects: %v", err)
			}
			return err == nil && res.Sum == 3 && res.Node == "py1"
		})
		// Its own calls work again too.
		m, err := rpc.Call[relayResp[mulResp]](callCtx(t), c, "pycalc", "relay", relayReq{"gocalc", "mul", &mulReq{A: 2, B: 3}})
		if err != nil || m.Result.Product != 6 {
			t.Fatalf("pycalc.relay to gocalc.mul after reconnecting: %+v %v", m, err)
		}
	})

	t.Run("Bye", func(t *testing.T) {
		if err := peer.stop(); err != nil {
			t.Fatalf("pycalc did not exit cleanly on SIGTERM: %v", err)
		}
		// py1's beat is 600s: only its bye explains go1 forgetting it now.
		waitFor(t, "go1 forgets py1 after its bye", func() bool { return !goNode.Cluster().Serves("pycalc") })
		if _, err := c.Invoke(callCtx(t), "pycalc", "add", &addReq{}); !errors.Is(err, rpc.ErrNotFound) {
			t.Fatalf("pycalc.add after py1 left: %v", err)
		}
	})
}

// The Go test module, "gocalc".

type gocalc struct{ app.Base }

type addReq struct {
	A int `json:"a"`
	B int `json:"b"`
}

type addResp struct {
	Sum  int    `json:"sum"`
	Node string `json:"node"`
}

type mulReq struct {
	A int `json:"a"`
	B int `json:"b"`
}

type mulResp struct {
	Product int    `json:"product"`
	Node    string `json:"node"`
}

type whoResp struct {
	ClientID    string `json:"cid"`
	UserID      string `json:"uid"`
	Username    string `json:"uname"`
	Node        string `json:"node"`
	Trace       string `json:"trace"`
	HasDeadline bool   `json:"has_deadline"`
}

type relayReq struct {
	Module string `json:"module"`
	Fn     string `json:"fn"`
	Arg    any    `json:"arg"`
}

type relayResp[T any] struct {
	Result T      `json:"result"`
	Via    string `json:"via"`
}

func (*gocalc) ID() string { return "gocalc" }

func (*gocalc) Init(_ context.Context, h *app.Host) error {
	app.HandleInfo(h, "test")
	rpc.Handle(h.Registry, "gocalc", "mul", func(_ context.Context, r *mulReq) (*mulResp, error) {
		return &mulResp{Product: r.A * r.B, Node: h.Node}, nil
	})
	rpc.Handle(h.Registry, "gocalc", "who", func(ctx context.Context, _ *struct{}) (*whoResp, error) {
		cl, _ := rpc.CallerFrom(ctx)
		_, dl := ctx.Deadline()
		return &whoResp{ClientID: cl.ClientID, UserID: cl.UserID, Username: cl.Username, Node: cl.Node,
			Trace: amqp.TraceFrom(ctx), HasDeadline: dl}, nil
	})
	rpc.Handle(h.Registry, "gocalc", "fail", func(context.Context, *struct{}) (*struct{}, error) {
		return nil, errors.New("plain failure")
	})
	return nil
}

// Helpers.

// pythonWithPika returns the interpreter to run the example with, skipping
// (or failing, under COLONY_TEST_AMQP=require) when it or pika is missing.
func pythonWithPika(t *testing.T) string {
	t.Helper()
	py := os.Getenv("COLONY_TEST_PYTHON")
	if py == "" {
		// Debian's interpreter: the one that sees python3-pika, whatever
		// python3 comes first on PATH (pyenv, a venv).
		py = "/usr/bin/python3"
	}
	out, err := exec.Command(py, "-c", "import pika").CombinedOutput()
	if err != nil {
		why := err.Error()
		if lines := strings.Split(strings.TrimSpace(string(out)), "\n"); lines[len(lines)-1] != "" {
			why = lines[len(lines)-1] // ModuleNotFoundError: No module named 'pika'
		}
		msg := fmt.Sprintf("no Python with pika at %s (%s): install Debian's python3-pika "+
			"(apt-get install python3-pika) or point COLONY_TEST_PYTHON at an interpreter that has pika; "+
			"COLONY_TEST_AMQP=require makes this a failure", py, why)
		if os.Getenv("COLONY_TEST_AMQP") == "require" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return py
}

func callCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), bound)
	t.Cleanup(cancel)
	return ctx
}

// waitFor polls cond until it holds, failing the test after bound.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(bound)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, bound)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// pythonCmd runs the example with args, writing no bytecode into the tree.
func pythonCmd(ctx context.Context, py string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, py, append([]string{example}, args...)...)
	cmd.Env = append(os.Environ(), "PYTHONDONTWRITEBYTECODE=1", "PYTHONUNBUFFERED=1")
	return cmd
}

// closeConnection makes RabbitMQ close the connections named name (Colony
// names them "<prefix> <node>", Go and Python alike), as a broker restart
// would, without touching anyone else's. It returns how many it closed.
func closeConnection(t *testing.T, name string) int {
	t.Helper()
	out, err := exec.Command("rabbitmqctl", "-q", "list_connections", "--no-table-headers", "pid", "client_properties").Output()
	if err != nil {
		t.Fatalf("rabbitmqctl list_connections: %v", err)
	}
	// Lines read: <pid> TAB [{"connection_name","<name>"},...]
	mark := fmt.Sprintf(`{"connection_name","%s"}`, name)
	n := 0
	for line := range strings.Lines(string(out)) {
		pid, props, ok := strings.Cut(strings.TrimSpace(line), "\t")
		if !ok || !strings.Contains(props, mark) {
			continue
		}
		if out, err := exec.Command("rabbitmqctl", "-q", "close_connection", pid, "test").CombinedOutput(); err != nil {
			t.Fatalf("rabbitmqctl close_connection %s: %v\n%s", pid, err, out)
		}
		n++
	}
	return n
}

// syncBuffer collects a process's stderr for the test log.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// peerProc is the example serving pycalc in a subprocess.
type peerProc struct {
	cmd    *exec.Cmd
	stderr *syncBuffer
	exited chan struct{} // closed when the process has been waited for
	err    error         // its exit status; read after exited closes
	once   sync.Once
}

// startPeer starts the example serving pycalc and waits until it says it
// is serving. It is stopped (SIGTERM, then killed) when the test ends, and
// its stderr goes to the test log if the test failed.
func startPeer(t *testing.T, py string, args ...string) *peerProc {
	t.Helper()
	p := &peerProc{cmd: pythonCmd(context.Background(), py, args...), stderr: &syncBuffer{}, exited: make(chan struct{})}
	p.cmd.Stderr = p.stderr
	stdout, err := p.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", example, err)
	}
	ready := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if strings.HasPrefix(sc.Text(), "pycalc serving as node") {
				close(ready)
				break
			}
		}
		_, _ = io.Copy(io.Discard, stdout) // Wait must not find the pipe full
		p.err = p.cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() {
		if err := p.stop(); err != nil {
			t.Logf("pycalc exit: %v", err)
		}
		if t.Failed() {
			t.Logf("pycalc stderr:\n%s", p.stderr.String())
		}
	})
	select {
	case <-ready:
	case <-p.exited:
		t.Fatalf("pycalc exited before serving: %v\n%s", p.err, p.stderr.String())
	case <-time.After(bound):
		t.Fatalf("pycalc not serving within %v\n%s", bound, p.stderr.String())
	}
	return p
}

// stop asks the process to leave (SIGTERM), kills it if it has not exited
// within bound, and returns its exit status.
func (p *peerProc) stop() error {
	p.once.Do(func() {
		if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
			p.err = err
		}
		select {
		case <-p.exited:
		case <-time.After(bound):
			_ = p.cmd.Process.Kill()
			<-p.exited
		}
	})
	<-p.exited
	return p.err
}

// callPython runs the example's one-shot call mode and returns its output
// lines, one JSON object per call, and its stderr.
func callPython(t *testing.T, py string, args ...string) (lines []string, stderr string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), bound)
	defer cancel()
	cmd := pythonCmd(ctx, py, args...)
	var errBuf syncBuffer
	cmd.Stderr = &errBuf
	out, err := cmd.Output()
	var exit *exec.ExitError
	if err != nil && !(errors.As(err, &exit) && exit.ExitCode() == 1) { // 1: some call failed, as expected here
		t.Fatalf("%s --call: %v\n%s", example, err, errBuf.String())
	}
	for line := range strings.Lines(string(out)) {
		line = strings.TrimSpace(line)
		if !json.Valid([]byte(line)) {
			t.Fatalf("%s --call printed %q, not JSON\n%s", example, line, errBuf.String())
		}
		lines = append(lines, line)
	}
	return lines, errBuf.String()
}
