package app_test

import (
	"context"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/colonymq/colony/app"
	"github.com/colonymq/colony/app/apptest"
	"github.com/colonymq/colony/internal/amqptest"
	"github.com/colonymq/colony/rpc"
)

// clusterNode is a test node joined to a private cluster (random prefix).
func clusterNode(t *testing.T, url, prefix, id string, mods ...app.Module) *app.App {
	cfg := apptest.Config(t)
	cfg.Node.ID = id
	cfg.Cluster = app.ClusterConfig{AMQPURL: url, Prefix: prefix, Beat: app.Duration(200 * time.Millisecond)}
	return apptest.Run(t, cfg, mods...)
}

// TestModuleOnAnotherNode is mqant's promise: the same module, the same
// client code, only the config says which process runs what. The module
// runs on node a; a client of node b and module code on node b call it
// unchanged, over RabbitMQ.
func TestModuleOnAnotherNode(t *testing.T) {
	url := amqptest.URL(t)
	prefix := amqptest.Prefix(t, url)
	nodeA := clusterNode(t, url, prefix, "a", &back{release: make(chan struct{}), ran: &counter{}})
	nodeB := clusterNode(t, url, prefix, "b", &front{})

	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	// Node b learns of node a through presence.
	for !nodeB.Cluster().Serves("back") {
		select {
		case <-ctx.Done():
			t.Fatal("node b never saw node a's module")
		case <-time.After(20 * time.Millisecond):
		}
	}
	// Module code on b calls back on a: the same front module as in the single-node test.
	res, err := rpc.Call[sumResp](ctx, nodeB.RPC(), "front", "sum_of_squares", &sumReq{N: 10})
	if err != nil || res.Total != 385 {
		t.Fatalf("cross-node sum_of_squares: %v %+v", err, res)
	}
	// Errors keep their codes across the wire.
	if _, err := rpc.Call[squareResp](ctx, nodeB.RPC(), "back", "nosuch", &squareReq{}); !errors.Is(err, rpc.ErrNotFound) {
		t.Fatalf("unknown handler on a remote module: %v", err)
	}
	if _, err := rpc.Call[squareResp](ctx, nodeB.RPC(), "nobody", "serves", &squareReq{}); !errors.Is(err, rpc.ErrNotFound) {
		t.Fatalf("module nobody serves: %v", err)
	}
	// An MQTT 5 client of node b calls the module that runs on node a.
	c := apptest.V5(t, nodeB.Addr("mqtt"), &paho.Connect{ClientID: "roamer", CleanStart: true})
	if _, err := c.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "r/roamer", QoS: 1}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Publish(ctx, &paho.Publish{Topic: "$rpc/back/square", QoS: 1, Payload: []byte(`{"N":12}`),
		Properties: &paho.PublishProperties{ResponseTopic: "r/roamer", CorrelationData: []byte("1")}}); err != nil {
		t.Fatal(err)
	}
	m := apptest.Next(t, c.Msgs)
	var reply struct {
		Result squareResp `json:"result"`
	}
	if err := json.Unmarshal(m.Payload, &reply); err != nil || reply.Result.Square != 144 {
		t.Fatalf("reply %s: %v", m.Payload, err)
	}
	if nodeA.Cluster().Stats().Served == 0 {
		t.Fatal("node a served nothing: the calls did not cross the wire")
	}
}
