package cluster_test

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	pahov3 "github.com/eclipse/paho.mqtt.golang"
	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/colonymq/colony/app/apptest"
	"github.com/colonymq/colony/cluster"
	"github.com/colonymq/colony/server"
)

// TestLateSessionIsCounted: a session handed over after the connecting
// node stopped waiting for it is lost (the client started afresh there),
// and the node says so: an error log line and Stats.LateSessions
// (colony_federation_sessions_lost_total). The holder here is an older
// node, played by a bare AMQP client: it does not read wait_ms, and
// answers after the asker's TakeoverWait.
func TestLateSessionIsCounted(t *testing.T) {
	c := newCluster(t)
	b := c.node("b")

	conn, err := amqp091.Dial(c.url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	q, err := ch.QueueDeclare("", false, true, true, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	key, _ := cluster.ClientKey("slowpoke")
	if err := ch.QueueBind(q.Name, key, cluster.MessageExchange(c.prefix), false, nil); err != nil {
		t.Fatal(err)
	}
	takeovers, err := ch.Consume(q.Name, "", true, true, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}

	o := pahov3.NewClientOptions().AddBroker(apptest.URL(b)).SetClientID("slowpoke").SetCleanSession(false).
		SetAutoReconnect(false)
	p := pahov3.NewClient(o)
	tok := p.Connect()
	var d amqp091.Delivery
	select {
	case d = <-takeovers:
	case <-time.After(apptest.Wait):
		t.Fatal("node b asked nobody for the session")
	}
	if got := d.Headers[cluster.HeaderType]; got != cluster.TypeTakeover || d.ReplyTo == "" {
		t.Fatalf("node b sent %v (reply to %q), want a takeover to answer", got, d.ReplyTo)
	}
	if !tok.WaitTimeout(apptest.Wait) || tok.Error() != nil {
		t.Fatalf("connect to b: %v", tok.Error())
	}
	t.Cleanup(func() { p.Disconnect(50) })
	if tok.(*pahov3.ConnectToken).SessionPresent() {
		t.Fatal("CONNACK: session present, though no session came in time")
	}
	if st := b.Federation().Stats(); st.LateSessions != 0 {
		t.Fatalf("late sessions before the answer: %d", st.LateSessions)
	}

	// The old node's answer, now that node b has stopped waiting.
	st := server.SessionState{}
	st.Client.ID = "slowpoke"
	body, err := json.Marshal(st)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), apptest.Wait)
	defer cancel()
	if err := ch.PublishWithContext(ctx, "", d.ReplyTo, false, false, amqp091.Publishing{
		Headers:       amqp091.Table{cluster.HeaderOrigin: "old-node", cluster.HeaderType: cluster.TypeSession},
		CorrelationId: d.CorrelationId, Body: body,
	}); err != nil {
		t.Fatal(err)
	}
	apptest.Eventually(t, func() error {
		if st := b.Federation().Stats(); st.LateSessions != 1 {
			return fmt.Errorf("late sessions: %d, want 1", st.LateSessions)
		}
		return nil
	})
	if st := b.Federation().Stats(); st.Takeovers != 0 {
		t.Fatalf("takeovers: %d, want 0 (nothing was taken over)", st.Takeovers)
	}
	time.Sleep(grace)
	if !p.IsConnected() {
		t.Fatal("the late session disturbed the client's fresh one")
	}
}
