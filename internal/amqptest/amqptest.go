// Package amqptest finds the RabbitMQ that cluster tests run against.
//
// Tests that need the broker call URL: on a machine without one they skip
// with a message saying how to run them, unless COLONY_TEST_AMQP=require (as
// in CI), which turns a missing broker into a failure.
package amqptest

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
)

// DefaultURL is the broker tests use unless COLONY_TEST_AMQP_URL says otherwise.
const DefaultURL = "amqp://guest:guest@127.0.0.1:5672/"

// URL returns the broker URL, skipping (or, under COLONY_TEST_AMQP=require,
// failing) the test when nothing listens there.
func URL(tb testing.TB) string {
	tb.Helper()
	url := os.Getenv("COLONY_TEST_AMQP_URL")
	if url == "" {
		url = DefaultURL
	}
	u, err := amqp091.ParseURI(url)
	if err != nil {
		tb.Fatalf("COLONY_TEST_AMQP_URL: %v", err)
	}
	addr := net.JoinHostPort(u.Host, fmt.Sprint(u.Port))
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		msg := fmt.Sprintf("no RabbitMQ at %s (%v): start one (e.g. `rabbitmq-server -detached`) "+
			"or point COLONY_TEST_AMQP_URL at one; COLONY_TEST_AMQP=require makes this a failure", addr, err)
		if os.Getenv("COLONY_TEST_AMQP") == "require" {
			tb.Fatal(msg)
		}
		tb.Skip(msg)
	}
	if err := c.Close(); err != nil {
		tb.Logf("close probe connection: %v", err)
	}
	return url
}

// Prefix returns a random name prefix ("colonytest-<hex>") that keeps a
// test's exchanges and queues apart from every other test's on the shared
// broker, and deletes the exchanges Colony declares under it (RPC,
// presence, messages, retained) when the test ends; queues delete
// themselves with their connections.
func Prefix(tb testing.TB, url string) string {
	tb.Helper()
	b := make([]byte, 6)
	if _, err := rand.Read(b); err != nil {
		tb.Fatal(err)
	}
	prefix := "colonytest-" + hex.EncodeToString(b)
	tb.Cleanup(func() { DeleteExchanges(tb, url, Exchanges(prefix)...) })
	return prefix
}

// Exchanges names the exchanges Colony's nodes declare under prefix (the
// rpc/amqp and cluster packages' names; a test in this package checks
// they agree).
func Exchanges(prefix string) []string {
	return []string{prefix + ".rpc", prefix + ".presence", prefix + ".msg", prefix + ".retained"}
}

// DeleteExchanges deletes the named exchanges; one that does not exist
// (never declared by the test) is no error.
func DeleteExchanges(tb testing.TB, url string, names ...string) {
	tb.Helper()
	conn, err := amqp091.Dial(url)
	if err != nil {
		tb.Errorf("delete exchanges: %v", err)
		return
	}
	defer func() {
		if err := conn.Close(); err != nil {
			tb.Errorf("delete exchanges: close: %v", err)
		}
	}()
	for _, name := range names {
		// A channel per name: RabbitMQ closes the channel of a failed delete.
		ch, err := conn.Channel()
		if err != nil {
			tb.Errorf("delete exchanges: %v", err)
			return
		}
		err = ch.ExchangeDelete(name, false, false)
		var ae *amqp091.Error
		if err != nil && !(errors.As(err, &ae) && ae.Code == amqp091.NotFound) {
			tb.Errorf("delete exchange %s: %v", name, err)
			return
		}
		_ = ch.Close() // already closed after a 404
	}
}
