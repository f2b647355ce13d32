package cluster_test

import (
	"fmt"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	pahov3 "github.com/eclipse/paho.mqtt.golang"

	"github.com/colonymq/colony/app"
	"github.com/colonymq/colony/app/apptest"
	"github.com/colonymq/colony/internal/amqptest"
)

// testCluster is a private cluster: a random prefix on the shared broker,
// whose exchanges are deleted when the test ends (queues delete
// themselves with their connections).
type testCluster struct {
	t      testing.TB
	url    string
	prefix string
}

func newCluster(t testing.TB) *testCluster {
	t.Helper()
	url := amqptest.URL(t)
	c := &testCluster{t: t, url: url, prefix: amqptest.Prefix(t, url)}
	return c
}

// config returns a node's config: ephemeral ports, its own data dir.
func (c *testCluster) config(id string) app.Config {
	cfg := apptest.Config(c.t)
	cfg.Node.ID = id
	cfg.Cluster = app.ClusterConfig{AMQPURL: c.url, Prefix: c.prefix, Beat: app.Duration(200 * time.Millisecond)}
	return cfg
}

// node starts a node of the cluster; it stops when the test ends.
func (c *testCluster) node(id string) *app.App {
	return apptest.Run(c.t, c.config(id))
}

// closeFederation makes RabbitMQ close the federation connections of the
// cluster's nodes, as a broker restart would, without touching anybody
// else's connections. It returns how many it closed.
func (c *testCluster) closeFederation(t *testing.T) int {
	t.Helper()
	out, err := exec.Command("rabbitmqctl", "-q", "list_connections", "--no-table-headers", "pid", "client_properties").Output()
	if err != nil {
		t.Skipf("rabbitmqctl list_connections: %v", err)
	}
	n := 0
	for line := range strings.Lines(string(out)) {
		pid, props, ok := strings.Cut(strings.TrimSpace(line), "\t")
		if !ok || !strings.Contains(props, fmt.Sprintf(`{"connection_name","%s `, c.prefix)) || !strings.Contains(props, ` federation"}`) {
			continue
		}
		if out, err := exec.Command("rabbitmqctl", "-q", "close_connection", pid, "test").CombinedOutput(); err != nil {
			t.Fatalf("rabbitmqctl close_connection %s: %v\n%s", pid, err, out)
		}
		n++
	}
	return n
}

// inbox counts what one MQTT 3.1.1 client receives, whatever the
// subscription: the client's subscriptions have no handlers of their own,
// so paho calls the default handler exactly once per PUBLISH received.
type inbox struct {
	mu   sync.Mutex
	msgs []pahov3.Message
	ch   chan pahov3.Message
}

func newInbox() *inbox { return &inbox{ch: make(chan pahov3.Message, 4096)} }

func (b *inbox) handler(_ pahov3.Client, m pahov3.Message) {
	b.mu.Lock()
	b.msgs = append(b.msgs, m)
	b.mu.Unlock()
	b.ch <- m
}

// count returns how many messages on topic arrived so far.
func (b *inbox) count(topic string) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	n := 0
	for _, m := range b.msgs {
		if m.Topic() == topic {
			n++
		}
	}
	return n
}

// client connects an MQTT 3.1.1 client to a node, subscribed to filters
// at QoS 1, and returns its inbox.
func client(t *testing.T, a *app.App, id string, filters ...string) (pahov3.Client, *inbox) {
	t.Helper()
	b := newInbox()
	c := apptest.V3(t, apptest.URL(a), id, func(o *pahov3.ClientOptions) { o.SetDefaultPublishHandler(b.handler) })
	for _, f := range filters {
		apptest.Done(t, c.Subscribe(f, 1, nil))
	}
	if len(filters) > 0 {
		// The engine sends SUBACK before it looks for the retained
		// messages a subscription brings; a retained publish made right
		// after the SUBACK could then come twice, live and retained. The
		// client's packets are handled in order, so once this UNSUBACK
		// (of nothing) is back, that look is over.
		apptest.Done(t, c.Unsubscribe("barrier/none"))
	}
	return c, b
}

// publish publishes from c and waits for the publish to complete.
func publish(t *testing.T, c pahov3.Client, topic string, qos byte, retained bool, payload string) {
	t.Helper()
	apptest.Done(t, c.Publish(topic, qos, retained, payload))
}

// expect waits for the next message and checks its topic and payload.
func expect(t *testing.T, b *inbox, topic, payload string) pahov3.Message {
	t.Helper()
	m := apptest.Next(t, b.ch)
	if m.Topic() != topic || string(m.Payload()) != payload {
		t.Fatalf("got %q %q (retained %v, dup %v), want %q %q", m.Topic(), m.Payload(), m.Retained(), m.Duplicate(), topic, payload)
	}
	return m
}

// grace is how long tests watch for a message that must not arrive, after
// the path it would take was shown to work.
const grace = 300 * time.Millisecond
