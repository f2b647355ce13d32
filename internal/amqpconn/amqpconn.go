// Package amqpconn holds what Colony's two RabbitMQ users, the RPC
// transport (rpc/amqp) and message federation (cluster), do alike with a
// connection: dial it with bounded time and a name, and retry with a
// jittered exponential backoff.
package amqpconn

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
)

// Reconnection backoff: the first retry comes after about MinBackoff, each
// failed attempt doubles the wait up to MaxBackoff, and every wait is
// jittered so that nodes cut off together do not reconnect in lockstep.
const (
	MinBackoff = 100 * time.Millisecond
	MaxBackoff = 5 * time.Second
)

// Dial opens a connection named name (it shows in the management UI and
// rabbitmqctl, and lets tests close exactly their own connections). It
// gives up when ctx ends, and timeout bounds both the TCP connect and the
// AMQP handshake. Errors name the URL without its password.
func Dial(ctx context.Context, url, name string, timeout time.Duration) (*amqp091.Connection, error) {
	cfg := amqp091.Config{
		Properties: amqp091.NewConnectionProperties(),
		Dial: func(network, addr string) (net.Conn, error) {
			d := net.Dialer{Timeout: timeout}
			c, err := d.DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			// Bounds the handshake, as amqp091.DefaultDial does; amqp091
			// clears the deadline once the connection is open.
			if err := c.SetDeadline(time.Now().Add(timeout)); err != nil {
				return nil, errors.Join(err, c.Close())
			}
			return c, nil
		},
	}
	cfg.Properties.SetClientConnectionName(name)
	conn, err := amqp091.DialConfig(url, cfg)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", Redact(url), err)
	}
	return conn, nil
}

// Redact hides the password of an AMQP URL for logs and errors.
func Redact(url string) string {
	u, err := amqp091.ParseURI(url)
	if err != nil {
		return "(invalid url)"
	}
	u.Password = "xxx"
	return u.String()
}

// Backoff is the wait before the next connection attempt. The zero value
// starts at MinBackoff.
type Backoff struct{ d time.Duration }

// Failed doubles the wait (up to MaxBackoff) and returns the new one.
func (b *Backoff) Failed() time.Duration {
	b.d = min(2*b.current(), MaxBackoff)
	return b.d
}

// Reset starts again from MinBackoff, after a successful connection.
func (b *Backoff) Reset() { b.d = MinBackoff }

func (b *Backoff) current() time.Duration {
	if b.d == 0 {
		return MinBackoff
	}
	return b.d
}

// Sleep waits about the current wait, jittered to between half of it and
// all of it, and reports false if ctx ended first.
func (b *Backoff) Sleep(ctx context.Context) bool {
	d := b.current()
	d = d/2 + rand.N(d/2+1)
	tm := time.NewTimer(d)
	defer tm.Stop()
	select {
	case <-tm.C:
		return true
	case <-ctx.Done():
		return false
	}
}
