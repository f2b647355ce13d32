package apptest

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	pahov3 "github.com/eclipse/paho.mqtt.golang"
)

// Wait bounds every blocking step of a test; generous because CI machines are shared.
const Wait = 10 * time.Second

// V3 connects a paho.mqtt.golang (MQTT 3.1.1) client and disconnects it at test end.
func V3(t *testing.T, url, id string, tweak ...func(*pahov3.ClientOptions)) pahov3.Client {
	t.Helper()
	c, err := V3Try(url, id, tweak...)
	if err != nil {
		t.Fatalf("connect %s: %v", id, err)
	}
	t.Cleanup(func() { c.Disconnect(50) })
	return c
}

// V3Try connects like V3 but returns the error instead of failing the test.
func V3Try(url, id string, tweak ...func(*pahov3.ClientOptions)) (pahov3.Client, error) {
	o := pahov3.NewClientOptions().AddBroker(url).SetClientID(id).SetProtocolVersion(4).
		SetAutoReconnect(false).SetConnectRetry(false).SetConnectTimeout(Wait).SetWriteTimeout(Wait)
	for _, f := range tweak {
		f(o)
	}
	c := pahov3.NewClient(o)
	tok := c.Connect()
	if !tok.WaitTimeout(Wait) {
		return nil, context.DeadlineExceeded
	}
	return c, tok.Error()
}

// Done waits for a paho v3 token and fails the test on error.
func Done(t *testing.T, tok pahov3.Token) {
	t.Helper()
	if !tok.WaitTimeout(Wait) {
		t.Fatal("mqtt operation timed out")
	}
	if err := tok.Error(); err != nil {
		t.Fatalf("mqtt operation: %v", err)
	}
}

// Sink collects v3 messages on a channel.
func Sink() (chan pahov3.Message, pahov3.MessageHandler) {
	ch := make(chan pahov3.Message, 1024)
	return ch, func(_ pahov3.Client, m pahov3.Message) { ch <- m }
}

// Next returns the next value from ch, failing the test after Wait.
func Next[T any](t *testing.T, ch <-chan T) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(Wait):
		t.Fatal("no message within the Wait")
	}
	var zero T
	return zero
}

// None asserts nothing arrives on ch while a short grace passes. It can only
// prove absence up to that point, so tests use it after a positive check
// that already proved the path works.
func None[T any](t *testing.T, ch <-chan T, grace time.Duration) {
	t.Helper()
	select {
	case v := <-ch:
		t.Fatalf("unexpected message: %v", v)
	case <-time.After(grace):
	}
}

// V5Client is a connected paho.golang (MQTT 5) client with its inbox.
type V5Client struct {
	*paho.Client
	Msgs       chan *paho.Publish
	Disconn    chan *paho.Disconnect
	Conn       net.Conn
	Connack    *paho.Connack
	ConnectErr error
}

// V5 dials addr and sends cp; the connection closes at test end.
func V5(t *testing.T, addr string, cp *paho.Connect) *V5Client {
	t.Helper()
	c := V5Try(t, addr, cp)
	if c.ConnectErr != nil {
		t.Fatalf("connect %s: %v", cp.ClientID, c.ConnectErr)
	}
	return c
}

// V5Try connects like V5 but leaves the outcome in ConnectErr and Connack.
func V5Try(t *testing.T, addr string, cp *paho.Connect) *V5Client {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, Wait)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	c := &V5Client{Msgs: make(chan *paho.Publish, 1024), Disconn: make(chan *paho.Disconnect, 4), Conn: conn}
	c.Client = paho.NewClient(paho.ClientConfig{
		Conn: conn,
		OnPublishReceived: []func(paho.PublishReceived) (bool, error){func(p paho.PublishReceived) (bool, error) {
			c.Msgs <- p.Packet
			return true, nil
		}},
		OnServerDisconnect: func(d *paho.Disconnect) { c.Disconn <- d },
	})
	if cp.KeepAlive == 0 {
		cp.KeepAlive = 30
	}
	ctx, cancel := context.WithTimeout(context.Background(), Wait)
	defer cancel()
	c.Connack, c.ConnectErr = c.Connect(ctx, cp)
	t.Cleanup(func() {
		if c.ConnectErr == nil {
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

// Ctx returns a context that ends after Wait or with the test.
func Ctx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), Wait)
	t.Cleanup(cancel)
	return ctx
}

// Eventually retries f until it succeeds or the Wait runs out.
func Eventually(t *testing.T, f func() error) {
	t.Helper()
	EventuallyWithin(t, Wait, f)
}

// EventuallyWithin is Eventually with a wait of its own, for what takes
// longer than Wait (reconnecting after a broker restart).
func EventuallyWithin(t *testing.T, wait time.Duration, f func() error) {
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
