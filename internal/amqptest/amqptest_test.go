package amqptest_test

import (
	"slices"
	"testing"

	"github.com/colonymq/colony/cluster"
	"github.com/colonymq/colony/internal/amqptest"
	"github.com/colonymq/colony/rpc/amqp"
)

// TestExchangesAreColonys: the cleanup deletes exactly the exchanges the
// transport and federation declare.
func TestExchangesAreColonys(t *testing.T) {
	want := []string{amqp.RPCExchange("p"), amqp.PresenceExchange("p"), cluster.MessageExchange("p"), cluster.RetainedExchange("p")}
	if got := amqptest.Exchanges("p"); !slices.Equal(got, want) {
		t.Fatalf("Exchanges = %v, want %v", got, want)
	}
}

// TestDeleteMissingExchange: cleaning up after a test that never declared
// some of them is no error.
func TestDeleteMissingExchange(t *testing.T) {
	url := amqptest.URL(t)
	amqptest.DeleteExchanges(t, url, amqptest.Exchanges(amqptest.Prefix(t, url))...)
}
