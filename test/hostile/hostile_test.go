package hostile_test

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"github.com/gorilla/websocket"

	"github.com/colonymq/colony/app"
	"github.com/colonymq/colony/app/apptest"
)

// Limits of the node under attack: small, so that every limit is reached
// in a few packets.
const (
	maxPacket     = 4096
	receiveMax    = 8
	maxLevels     = 8
	maxSubs       = 4
	connectWindow = 400 * time.Millisecond
	maxKeepalive  = 60 * time.Second
)

func hostileConfig(t *testing.T) app.Config {
	cfg := apptest.Config(t)
	cfg.Limits.MaxPacketSize = maxPacket
	cfg.Limits.ReceiveMaximum = receiveMax
	cfg.Limits.MaxTopicLevels = maxLevels
	cfg.Limits.MaxSubscriptions = maxSubs
	cfg.Limits.ConnectTimeout = app.Duration(connectWindow)
	cfg.Limits.MaxKeepalive = app.Duration(maxKeepalive)
	return cfg
}

// witness is a well-behaved MQTT 5 subscriber and an MQTT 3.1.1 publisher
// that must keep working whatever the attacker does.
type witness struct {
	sub  *apptest.V5Client
	pub  func(topic, payload string)
	seen atomic.Int64
}

func newWitness(t *testing.T, a *app.App) *witness {
	w := &witness{sub: apptest.V5(t, a.Addr("mqtt"), &paho.Connect{ClientID: "witness-sub", CleanStart: true})}
	if _, err := w.sub.Subscribe(apptest.Ctx(t), &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "witness/#", QoS: 1}}}); err != nil {
		t.Fatal(err)
	}
	pub := apptest.V3(t, apptest.URL(a), "witness-pub")
	w.pub = func(topic, payload string) { apptest.Done(t, pub.Publish(topic, 1, false, payload)) }
	return w
}

// alive proves the well-behaved clients are still served.
func (w *witness) alive(t *testing.T) {
	t.Helper()
	n := w.seen.Add(1)
	want := fmt.Sprint("still here ", n)
	w.pub("witness/ping", want)
	for {
		m := apptest.Next(t, w.sub.Msgs)
		if string(m.Payload) == want {
			return
		}
	}
}

type attack struct {
	name string
	run  func(t *testing.T, a *app.App)
}

func TestHostileInput(t *testing.T) {
	a := apptest.Run(t, hostileConfig(t))
	w := newWitness(t, a)
	addr := a.Addr("mqtt")
	for _, at := range append(attacks(addr), wsAttacks(a.Addr("ws"))...) {
		t.Run(at.name, func(t *testing.T) {
			at.run(t, a)
			w.alive(t)
		})
	}
	st := a.Server().Stats()
	if st.Panics != 0 {
		t.Fatalf("%d connections ended in a recovered panic", st.Panics)
	}
	// Every refusal is counted, and /metrics shows the counts.
	l := st.Limits
	for name, n := range map[string]int64{
		"connect timeouts": l.ConnectTimeouts, "packets too large": l.PacketsTooLarge,
		"malformed packets": l.MalformedPackets, "receive maximum": l.ReceiveMaximum,
		"topic levels": l.TopicLevels, "subscription quota": l.SubscriptionQuota, "refused connects": l.ConnectsRefused,
	} {
		if n == 0 {
			t.Errorf("%s: not counted", name)
		}
	}
	body := metrics(t, a)
	for _, want := range []string{`colony_mqtt_limit_refusals_total{reason="malformed"} `, `colony_mqtt_limit_refusals_total{reason="topic_levels"} `} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}

func metrics(t *testing.T, a *app.App) string {
	t.Helper()
	resp, err := http.Get("http://" + a.Addr("http") + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func wsAttacks(addr string) []attack {
	return []attack{
		{"ws: truncated MQTT 5 SUBSCRIBE", func(t *testing.T, _ *app.App) {
			c := dialWS(t, addr)
			c.connack(connectOpts{id: "ws-attacker"})
			c.sendMaybe([]byte{0x82, 6, 0, 1, 0, 0, 1, 'a'})
			c.closedWith(0x81)
		}},
		{"ws: text frame", func(t *testing.T, _ *app.App) {
			c := dialWS(t, addr)
			if err := c.conn.(*wsStream).c.WriteMessage(websocket.TextMessage, connect(connectOpts{id: "ws-text"})); err != nil {
				t.Fatal(err)
			}
			c.closedSilently()
		}},
		{"ws: PUBLISH before CONNECT", func(t *testing.T, _ *app.App) {
			c := dialWS(t, addr)
			c.sendMaybe(publish(false, 0, 0, "witness/spoof", nil, "x"))
			c.closedSilently()
		}},
		{"ws: upgraded, no CONNECT", func(t *testing.T, _ *app.App) {
			c := dialWS(t, addr)
			c.closedSilently()
		}},
		{"ws: HTTP request never finished", func(t *testing.T, _ *app.App) {
			c := dial(t, addr)
			c.send([]byte("GET /mqtt HTTP/1.1\r\nHost: x\r\n"))
			// The server answers 408 or just closes; either way it must close.
			buf := make([]byte, 512)
			if err := c.conn.SetReadDeadline(time.Now().Add(apptest.Wait)); err != nil {
				t.Fatal(err)
			}
			for {
				if _, err := c.conn.Read(buf); err != nil {
					var ne net.Error
					if errors.As(err, &ne) && ne.Timeout() {
						t.Fatal("server kept a half-sent HTTP request open")
					}
					return
				}
			}
		}},
	}
}

func TestMaxConnections(t *testing.T) {
	cfg := apptest.Config(t)
	cfg.Limits.MaxConnections = 2
	a := apptest.Run(t, cfg)
	w := apptest.V5(t, a.Addr("mqtt"), &paho.Connect{ClientID: "first", CleanStart: true})
	apptest.V3(t, apptest.URL(a), "second")
	c := dial(t, a.Addr("mqtt"))
	if rc := c.connack(connectOpts{id: "third"}); rc != 0x89 {
		t.Fatalf("v5 connack %#x, want 0x89 (server busy)", rc)
	}
	c.closedSilently()
	c = dial(t, a.Addr("mqtt"))
	if rc := c.connack(connectOpts{id: "third", level: 4}); rc != 0x03 {
		t.Fatalf("v3 connack %#x, want 0x03 (server unavailable)", rc)
	}
	c.closedSilently()
	if n := a.Server().Stats().Limits.ConnectionsRefused; n != 2 {
		t.Fatalf("counted %d refusals, want 2", n)
	}
	// Those inside the limit are served.
	if _, err := w.Subscribe(apptest.Ctx(t), &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "x", QoS: 1}}}); err != nil {
		t.Fatal(err)
	}
}

// A client publishing faster than limits.publish_rate is read more slowly:
// it waits, and loses nothing.
func TestPublishRateThrottlesWithoutLoss(t *testing.T) {
	const rate, burst, sent = 10, 2, 8
	cfg := apptest.Config(t)
	cfg.Limits.PublishRate = rate
	cfg.Limits.PublishBurst = burst
	a := apptest.Run(t, cfg)
	sub := apptest.V3(t, apptest.URL(a), "sub")
	ch, h := apptest.Sink()
	apptest.Done(t, sub.Subscribe("rate/#", 1, h))
	c := dial(t, a.Addr("mqtt"))
	c.connack(connectOpts{id: "fast", level: 4})
	var burstOf [][]byte
	for i := range sent {
		burstOf = append(burstOf, publish(false, 0, 0, "rate/x", nil, fmt.Sprint(i)))
	}
	c.send(burstOf...) // one write: the server has them all at once
	for i := range sent {
		if m := apptest.Next(t, ch); string(m.Payload()) != fmt.Sprint(i) {
			t.Fatalf("message %d: got %q", i, m.Payload())
		}
	}
	// Without the limit none would wait; with it, every publish past the
	// burst that arrives within 1/rate of the previous one does.
	if n := a.Server().Stats().Limits.PublishesThrottled; n == 0 {
		t.Fatal("no publish waited")
	}
}
