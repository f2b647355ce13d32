// Package amqptest finds the RabbitMQ that cluster tests run against.
//
// Tests that need the broker call URL: on a machine without one they skip
// with a message saying how to run them, unless COLONY_TEST_AMQP=require (as
// in CI), which turns a missing broker into a failure.
package amqptest

import (
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
