package server_test

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	pahov3 "github.com/eclipse/paho.mqtt.golang"

	"github.com/colonymq/colony/app"
	"github.com/colonymq/colony/app/apptest"
)

// wait bounds every blocking step of a test; generous because CI machines are shared.
const wait = 10 * time.Second

// v3 connects a paho.mqtt.golang (MQTT 3.1.1) client and disconnects it at test end.
func v3(t *testing.T, url, id string, tweak ...func(*pahov3.ClientOptions)) pahov3.Client {
	t.Helper()
	c, err := v3try(url, id, tweak...)
	if err != nil {
		t.Fatalf("connect %s: %v", id, err)
	}
	t.Cleanup(func() { c.Disconnect(50) })
	return c
}

func v3try(url, id string, tweak ...func(*pahov3.ClientOptions)) (pahov3.Client, error) {
	o := pahov3.NewClientOptions().AddBroker(url).SetClientID(id).SetProtocolVersion(4).
		SetAutoReconnect(false).SetConnectRetry(false).SetConnectTimeout(wait).SetWriteTimeout(wait)
	for _, f := range tweak {
		f(o)
	}
	c := pahov3.NewClient(o)
	tok := c.Connect()
	if !tok.WaitTimeout(wait) {
		return nil, context.DeadlineExceeded
	}
	return c, tok.Error()
}

// done waits for a paho v3 token and fails the test on error.
func done(t *testing.T, tok pahov3.Token) {
	t.Helper()
	if !tok.WaitTimeout(wait) {
		t.Fatal("mqtt operation timed out")
	}
	if err := tok.Error(); err != nil {
		t.Fatalf("mqtt operation: %v", err)
	}
}

// sink collects v3 messages on a channel.
func sink() (chan pahov3.Message, pahov3.MessageHandler) {
	ch := make(chan pahov3.Message, 1024)
	return ch, func(_ pahov3.Client, m pahov3.Message) { ch <- m }
}

func next[T any](t *testing.T, ch <-chan T) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(wait):
		t.Fatal("no message within the wait")
	}
	var zero T
	return zero
}

// none asserts nothing arrives on ch while a short grace passes. It can only
// prove absence up to that point, so tests use it after a positive check
// that already proved the path works.
func none[T any](t *testing.T, ch <-chan T, grace time.Duration) {
	t.Helper()
	select {
	case v := <-ch:
		t.Fatalf("unexpected message: %v", v)
	case <-time.After(grace):
	}
}

// v5client is a connected paho.golang (MQTT 5) client with its inbox.
type v5client struct {
	*paho.Client
	msgs      chan *paho.Publish
	disconn   chan *paho.Disconnect
	conn      net.Conn
	connack   *paho.Connack
	connectEr error
}

// v5 dials addr and sends cp; the connection closes at test end.
func v5(t *testing.T, addr string, cp *paho.Connect) *v5client {
	t.Helper()
	c := v5try(t, addr, cp)
	if c.connectEr != nil {
		t.Fatalf("connect %s: %v", cp.ClientID, c.connectEr)
	}
	return c
}

func v5try(t *testing.T, addr string, cp *paho.Connect) *v5client {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, wait)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	c := &v5client{msgs: make(chan *paho.Publish, 1024), disconn: make(chan *paho.Disconnect, 4), conn: conn}
	c.Client = paho.NewClient(paho.ClientConfig{
		Conn: conn,
		OnPublishReceived: []func(paho.PublishReceived) (bool, error){func(p paho.PublishReceived) (bool, error) {
			c.msgs <- p.Packet
			return true, nil
		}},
		OnServerDisconnect: func(d *paho.Disconnect) { c.disconn <- d },
	})
	if cp.KeepAlive == 0 {
		cp.KeepAlive = 30
	}
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	c.connack, c.connectEr = c.Connect(ctx, cp)
	t.Cleanup(func() {
		if c.connectEr == nil {
			if err := c.Disconnect(&paho.Disconnect{}); err != nil {
				t.Logf("disconnect %s: %v", cp.ClientID, err)
			}
		}
		if err := conn.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
			t.Logf("close %s: %v", cp.ClientID, err)
		}
	})
	return c
}

func ctxWait(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	t.Cleanup(cancel)
	return ctx
}

func newApp(t *testing.T, cfg app.Config) *app.App {
	return app.New(cfg, apptest.Logger(t))
}

// eventually retries f until it succeeds or the wait runs out.
func eventually(t *testing.T, f func() error) {
	t.Helper()
	deadline := time.Now().Add(wait)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal(err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
