// Package smoke checks a running Colony binary from outside: what
// scripts/arm64-smoke.sh runs against the arm64 build under qemu. It
// skips unless COLONY_SMOKE_ADDR names the node's MQTT address.
package smoke

import (
	"context"
	"encoding/json"
	"os"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/colonymq/colony/app/apptest"
)

func TestSmoke(t *testing.T) {
	addr := os.Getenv("COLONY_SMOKE_ADDR")
	if addr == "" {
		t.Skip("COLONY_SMOKE_ADDR not set: run by scripts/arm64-smoke.sh against a running node")
	}
	sub := apptest.V5(t, addr, &paho.Connect{ClientID: "smoke-sub", CleanStart: true})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := sub.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "smoke/#", QoS: 1}, {Topic: "smoke-replies", QoS: 1}}}); err != nil {
		t.Fatal(err)
	}
	pub := apptest.V3(t, "tcp://"+addr, "smoke-pub")
	apptest.Done(t, pub.Publish("smoke/hello", 1, false, "from amd64"))
	if m := apptest.Next(t, sub.Msgs); m.Topic != "smoke/hello" || string(m.Payload) != "from amd64" {
		t.Fatalf("got %q on %s", m.Payload, m.Topic)
	}
	if _, err := sub.Publish(ctx, &paho.Publish{Topic: "$rpc/game/info", QoS: 1, Payload: []byte("{}"),
		Properties: &paho.PublishProperties{ResponseTopic: "smoke-replies", CorrelationData: []byte("c1")}}); err != nil {
		t.Fatal(err)
	}
	m := apptest.Next(t, sub.Msgs)
	var reply struct {
		Result struct {
			Module   string   `json:"module"`
			Node     string   `json:"node"`
			Handlers []string `json:"handlers"`
		} `json:"result"`
	}
	if err := json.Unmarshal(m.Payload, &reply); err != nil || m.Topic != "smoke-replies" || string(m.Properties.CorrelationData) != "c1" {
		t.Fatalf("reply %q on %s: %v", m.Payload, m.Topic, err)
	}
	if reply.Result.Module != "game" || reply.Result.Node == "" {
		t.Fatalf("reply %q", m.Payload)
	}
	t.Logf("$rpc/game/info answered by node %s: %s", reply.Result.Node, m.Payload)
}
