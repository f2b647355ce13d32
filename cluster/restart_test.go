package cluster_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	pahov3 "github.com/eclipse/paho.mqtt.golang"

	"github.com/colonymq/colony/app"
	"github.com/colonymq/colony/app/apptest"
	"github.com/colonymq/colony/rpc"
)

// pinger is a module whose one handler says which node answered.
type pinger struct {
	app.Base
	id string
}

type pingReq struct{}
type pong struct{ Node string }

func (p *pinger) ID() string { return p.id }
func (p *pinger) Init(_ context.Context, h *app.Host) error {
	rpc.Handle(h.Registry, p.id, "ping", func(context.Context, *pingReq) (*pong, error) {
		return &pong{Node: h.Node}, nil
	})
	return nil
}

// rabbitmqctl runs rabbitmqctl with args and fails the test on error.
func rabbitmqctl(t *testing.T, args ...string) time.Duration {
	t.Helper()
	start := time.Now()
	out, err := exec.Command("rabbitmqctl", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("rabbitmqctl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return time.Since(start)
}

// brokerUp reports whether RabbitMQ accepts connections on 127.0.0.1:5672.
func brokerUp() bool {
	c, err := net.DialTimeout("tcp", "127.0.0.1:5672", time.Second)
	if err != nil {
		return false
	}
	_ = c.Close()
	return true
}

// restartWait bounds the waits for reconnection after the broker is back:
// the nodes retry with a backoff of up to 5 s, on a shared machine.
const restartWait = 90 * time.Second

// callFar calls module far (on node a) from node b's module code, with a
// deadline far above anything a working or failing-fast call takes.
func callFar(b *app.App) (*pong, error) {
	ctx, cancel := context.WithTimeout(context.Background(), apptest.Wait)
	defer cancel()
	return rpc.Call[pong](ctx, b.RPC(), "far", "ping", &pingReq{})
}

// mqttCall makes a 3.1.1 request/response call from c and returns the
// reply's error code ("" for a result).
func mqttCall(t *testing.T, c pahov3.Client, in *inbox, module string, n int) string {
	t.Helper()
	topic := fmt.Sprintf("$rpc/%s/ping/%d", module, n)
	publish(t, c, topic, 1, false, `{}`)
	m := apptest.Next(t, in.ch)
	if m.Topic() != topic {
		t.Fatalf("reply on %q, want %q", m.Topic(), topic)
	}
	var r struct {
		Result *pong
		Error  *struct{ Code string }
	}
	if err := json.Unmarshal(m.Payload(), &r); err != nil {
		t.Fatalf("reply %s: %v", m.Payload(), err)
	}
	if r.Error != nil {
		return r.Error.Code
	}
	if r.Result == nil {
		t.Fatalf("reply %s: neither result nor error", m.Payload())
	}
	return ""
}

// traffic publishes count QoS 1 messages from pub to topic and waits
// until in has count more of them.
func traffic(t *testing.T, pub pahov3.Client, in *inbox, topic string, count int) {
	t.Helper()
	before := in.count(topic)
	for i := range count {
		publish(t, pub, topic, 1, false, fmt.Sprint(i))
	}
	apptest.Eventually(t, func() error {
		if n := in.count(topic) - before; n != count {
			return fmt.Errorf("%d of %d messages on %s arrived", n, count, topic)
		}
		return nil
	})
}

// TestBrokerRestart restarts RabbitMQ itself (rabbitmqctl stop_app, then
// start_app: its non-durable exchanges and queues, and every connection,
// are gone) under cluster traffic between two nodes: QoS 1 publishes
// across nodes and cross-node RPC calls, from background clients and in
// checked steps. While the broker is down, local clients keep being
// served (local pub/sub and local modules), cross-node calls fail with
// unavailable (never a timeout), and cross-node publishes are still
// acknowledged to their publishers. Once it is back, both nodes reconnect
// and rebuild their topology by themselves, and cross-node traffic and
// calls work again.
//
// Restarting the broker breaks every other test using it, so this test
// runs only with COLONY_TEST_BROKER_RESTART=1, alone (.ci/run does so
// after the other tests). It leaves RabbitMQ started.
func TestBrokerRestart(t *testing.T) {
	if os.Getenv("COLONY_TEST_BROKER_RESTART") != "1" {
		t.Skip("restarts RabbitMQ under every other test that uses it: run alone with COLONY_TEST_BROKER_RESTART=1 (.ci/run does)")
	}
	if _, err := exec.LookPath("rabbitmqctl"); err != nil {
		t.Fatalf("COLONY_TEST_BROKER_RESTART=1 but no rabbitmqctl: %v", err)
	}
	c := newCluster(t)
	a := apptest.Run(t, c.config("a"), &pinger{id: "far"})
	b := apptest.Run(t, c.config("b"), &pinger{id: "near"})

	// Clients: a subscriber on each node for the other node's messages and
	// for its own node's, publishers, and an RPC caller on node b.
	_, inA := client(t, a, "sub-a", "x/from-b/#", "local/a/#")
	_, inB := client(t, b, "sub-b", "x/from-a/#", "local/b/#")
	pubA, _ := client(t, a, "pub-a")
	pubB, _ := client(t, b, "pub-b")
	caller, inCaller := client(t, b, "caller")
	// The subscribers' inboxes are read by count only: keep their channels
	// from filling up and blocking paho.
	for _, in := range []*inbox{inA, inB} {
		done := make(chan struct{})
		t.Cleanup(func() { close(done) })
		go func() {
			for {
				select {
				case <-in.ch:
				case <-done:
					return
				}
			}
		}()
	}

	apptest.Eventually(t, func() error {
		if !b.Cluster().Serves("far") {
			return errors.New("node b does not see module far on node a")
		}
		return nil
	})
	// Bindings are made asynchronously: wait until each direction carries.
	for _, d := range []struct {
		pub pahov3.Client
		in  *inbox
		to  string
	}{{pubB, inA, "x/from-b/probe"}, {pubA, inB, "x/from-a/probe"}} {
		apptest.Eventually(t, func() error {
			publish(t, d.pub, d.to, 1, false, "probe")
			if d.in.count(d.to) == 0 {
				return fmt.Errorf("nothing on %s yet", d.to)
			}
			return nil
		})
	}
	traffic(t, pubB, inA, "x/from-b/before", 50)
	traffic(t, pubA, inB, "x/from-a/before", 50)
	for range 10 {
		if r, err := callFar(b); err != nil || r.Node != "a" {
			t.Fatalf("cross-node call before the restart: %+v %v", r, err)
		}
	}
	wantBindings := a.Federation().Stats().Bindings
	recA, recB := a.Federation().Stats().Reconnects, b.Federation().Stats().Reconnects
	rpcRecB := b.Cluster().Stats().Reconnects

	// Background traffic through the whole restart: QoS 1 publishes, local
	// and cross-node, from both nodes, and cross-node calls from node b.
	// Every publish must be acknowledged and every local one delivered;
	// every call must succeed or fail fast (unavailable; not_found only if
	// node a missed its short test beats before declaring its queues
	// again), never reach its deadline.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var localSent [2]atomic.Int64
	var callsOK, callsUnavailable, callsNotFound atomic.Int64
	var bgErr = make(chan error, 16)
	for i, p := range []struct {
		pub   pahov3.Client
		local string
		cross string
	}{{pubA, "local/a/bg", "x/from-a/bg"}, {pubB, "local/b/bg", "x/from-b/bg"}} {
		wg.Go(func() {
			for n := 0; ; n++ {
				select {
				case <-stop:
					return
				default:
				}
				for _, topic := range []string{p.local, p.cross} {
					tok := p.pub.Publish(topic, 1, false, fmt.Sprint(n))
					if !tok.WaitTimeout(apptest.Wait) || tok.Error() != nil {
						bgErr <- fmt.Errorf("publish %d on %s not acknowledged: %v", n, topic, tok.Error())
						return
					}
				}
				localSent[i].Add(1)
				time.Sleep(5 * time.Millisecond)
			}
		})
	}
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			_, err := callFar(b)
			switch {
			case err == nil:
				callsOK.Add(1)
			case errors.Is(err, rpc.ErrUnavailable):
				callsUnavailable.Add(1)
			case errors.Is(err, rpc.ErrNotFound):
				callsNotFound.Add(1)
			default:
				bgErr <- fmt.Errorf("cross-node call during the restart: %w", err)
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	})
	stopBackground := func() {
		close(stop)
		wg.Wait()
		close(bgErr)
		for err := range bgErr {
			t.Error(err)
		}
	}

	// The restart. Whatever happens, RabbitMQ is started again before the
	// nodes stop and the cluster's exchanges are deleted (cleanups run
	// last first).
	t.Cleanup(func() {
		if !brokerUp() {
			if out, err := exec.Command("rabbitmqctl", "start_app").CombinedOutput(); err != nil {
				t.Errorf("rabbitmqctl start_app: %v\n%s", err, out)
			}
		}
	})
	time.Sleep(300 * time.Millisecond) // some background traffic first
	took := rabbitmqctl(t, "stop_app")
	t.Logf("rabbitmqctl stop_app took %v", took.Round(time.Millisecond))
	if brokerUp() {
		t.Fatal("port 5672 still accepts connections after stop_app")
	}

	// Down: both nodes notice.
	apptest.Eventually(t, func() error {
		for _, n := range []*app.App{a, b} {
			if n.Federation().Connected() || n.Cluster().Connected() {
				return fmt.Errorf("node %s still counts as connected", n.Config().Node.ID)
			}
		}
		return nil
	})
	// Cross-node calls fail at once with unavailable, from module code and
	// from an MQTT client; local calls and local pub/sub go on; cross-node
	// publishes are acknowledged (and stay local).
	for range 5 {
		if _, err := callFar(b); !errors.Is(err, rpc.ErrUnavailable) {
			t.Fatalf("cross-node call while RabbitMQ is down: %v, want unavailable", err)
		}
	}
	if code := mqttCall(t, caller, inCaller, "far", 1); code != "unavailable" {
		t.Fatalf("MQTT call to a module on the other node while RabbitMQ is down: %q, want unavailable", code)
	}
	if code := mqttCall(t, caller, inCaller, "near", 2); code != "" {
		t.Fatalf("MQTT call to a local module while RabbitMQ is down: error %q", code)
	}
	if r, err := rpc.Call[pong](apptest.Ctx(t), b.RPC(), "near", "ping", &pingReq{}); err != nil || r.Node != "b" {
		t.Fatalf("local call while RabbitMQ is down: %+v %v", r, err)
	}
	traffic(t, pubA, inA, "local/a/down", 50)
	traffic(t, pubB, inB, "local/b/down", 50)
	unsent := b.Federation().Stats().Unsent
	publish(t, pubB, "x/from-b/down", 1, false, "stays local")
	if got := b.Federation().Stats().Unsent; got <= unsent {
		t.Fatalf("a publish while RabbitMQ is down was not counted as unsent (%d, then %d)", unsent, got)
	}

	took = rabbitmqctl(t, "start_app")
	t.Logf("rabbitmqctl start_app took %v", took.Round(time.Millisecond))
	if !brokerUp() {
		t.Fatal("port 5672 closed after start_app")
	}

	// Back: both nodes reconnect by themselves and rebuild their queues,
	// bindings and RPC topology.
	apptest.EventuallyWithin(t, restartWait, func() error {
		for _, n := range []*app.App{a, b} {
			if !n.Federation().Connected() || !n.Cluster().Connected() {
				return fmt.Errorf("node %s not reconnected", n.Config().Node.ID)
			}
		}
		if a.Federation().Stats().Reconnects == recA || b.Federation().Stats().Reconnects == recB || b.Cluster().Stats().Reconnects == rpcRecB {
			return errors.New("no reconnect counted")
		}
		if got := a.Federation().Stats().Bindings; got != wantBindings {
			return fmt.Errorf("node a has %d bindings, want %d", got, wantBindings)
		}
		return nil
	})
	apptest.EventuallyWithin(t, restartWait, func() error {
		if _, err := callFar(b); err != nil {
			return fmt.Errorf("cross-node call after the restart: %w", err)
		}
		return nil
	})
	for _, d := range []struct {
		pub pahov3.Client
		in  *inbox
		to  string
	}{{pubB, inA, "x/from-b/probe-after"}, {pubA, inB, "x/from-a/probe-after"}} {
		apptest.EventuallyWithin(t, restartWait, func() error {
			publish(t, d.pub, d.to, 1, false, "probe")
			if d.in.count(d.to) == 0 {
				return fmt.Errorf("nothing on %s yet", d.to)
			}
			return nil
		})
	}
	stopBackground()

	traffic(t, pubB, inA, "x/from-b/after", 50)
	traffic(t, pubA, inB, "x/from-a/after", 50)
	for range 10 {
		if r, err := callFar(b); err != nil || r.Node != "a" {
			t.Fatalf("cross-node call after the restart: %+v %v", r, err)
		}
	}
	if code := mqttCall(t, caller, inCaller, "far", 3); code != "" {
		t.Fatalf("MQTT call to a module on the other node after the restart: error %q", code)
	}

	// Every background local publish was delivered, once.
	for i, l := range []struct {
		in    *inbox
		topic string
	}{{inA, "local/a/bg"}, {inB, "local/b/bg"}} {
		sent := int(localSent[i].Load())
		apptest.Eventually(t, func() error {
			if got := l.in.count(l.topic); got != sent {
				return fmt.Errorf("%d of %d background publishes on %s delivered", got, sent, l.topic)
			}
			return nil
		})
	}
	if callsUnavailable.Load() == 0 || callsOK.Load() == 0 {
		t.Fatalf("background calls: %d ok, %d unavailable, %d not_found: the restart was not seen",
			callsOK.Load(), callsUnavailable.Load(), callsNotFound.Load())
	}
	t.Logf("background: %d+%d local publishes, calls %d ok, %d unavailable, %d not_found; cross-node from b: %d on a",
		localSent[0].Load(), localSent[1].Load(), callsOK.Load(), callsUnavailable.Load(), callsNotFound.Load(), inA.count("x/from-b/bg"))
}
