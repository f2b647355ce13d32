package cluster_test

import (
	"bytes"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	pahov3 "github.com/eclipse/paho.mqtt.golang"

	"github.com/colonymq/colony/app"
	"github.com/colonymq/colony/app/apptest"
	"github.com/colonymq/colony/server"
)

// TestAcrossNodes: a client of node a subscribed to f/# gets QoS 0 and
// QoS 1 messages published by a client of node b exactly once each, and
// a client with two overlapping subscriptions (f/# and f/x) gets one copy
// too: RabbitMQ delivers one copy per node, and the engine one per client.
func TestAcrossNodes(t *testing.T) {
	c := newCluster(t)
	a, b := c.node("a"), c.node("b")
	_, one := client(t, a, "one", "f/#")
	_, both := client(t, a, "both", "f/#", "f/x")
	pub, _ := client(t, b, "pub")

	publish(t, pub, "f/x", 0, false, "zero")
	publish(t, pub, "f/x", 1, false, "one")
	for _, in := range []*inbox{one, both} {
		expect(t, in, "f/x", "zero")
		if m := expect(t, in, "f/x", "one"); m.Qos() != 1 {
			t.Fatalf("QoS 1 message arrived at QoS %d", m.Qos())
		}
	}
	time.Sleep(grace)
	if n, m := one.count("f/x"), both.count("f/x"); n != 2 || m != 2 {
		t.Fatalf("duplicates: %d and %d messages, want 2 each", n, m)
	}
	if st := a.Federation().Stats(); st.In != 2 || st.Bindings != 2 || st.Filters != 2 { // f/# and f/x: two bindings, one copy
		t.Fatalf("node a: %+v", st)
	}
	if st := b.Federation().Stats(); st.Out != 2 || st.In != 0 {
		t.Fatalf("node b: %+v", st)
	}
}

// TestInterestBased: a node receives only the topics its clients want,
// and stops receiving a filter's messages once its last local
// subscription to it goes.
func TestInterestBased(t *testing.T) {
	c := newCluster(t)
	a, b := c.node("a"), c.node("b")
	pub, _ := client(t, b, "pub")
	_, local := client(t, b, "local", "g/#")

	publish(t, pub, "g/1", 1, false, "nobody on a")
	expect(t, local, "g/1", "nobody on a") // it was published, and federated
	apptest.Eventually(t, func() error {   // counted once RabbitMQ has it, after the local delivery
		if st := b.Federation().Stats(); st.Out != 1 {
			return fmt.Errorf("node b did not federate: %+v", st)
		}
		return nil
	})

	sub1, in1 := client(t, a, "sub1", "g/#")
	sub2, in2 := client(t, a, "sub2", "g/#", "g/+")
	publish(t, pub, "g/2", 1, false, "wanted")
	expect(t, in1, "g/2", "wanted")
	expect(t, in2, "g/2", "wanted")
	if st := a.Federation().Stats(); st.In != 1 || st.Bindings != 2 {
		t.Fatalf("node a after one wanted message: %+v", st)
	}

	// One of two subscribers to g/# leaves: the binding stays.
	apptest.Done(t, sub1.Unsubscribe("g/#"))
	publish(t, pub, "g/3", 1, false, "still wanted")
	expect(t, in2, "g/3", "still wanted")

	// The last ones go: no more traffic for g/… reaches node a.
	apptest.Done(t, sub2.Unsubscribe("g/#", "g/+"))
	apptest.Eventually(t, func() error {
		if st := a.Federation().Stats(); st.Bindings != 0 || st.Filters != 0 {
			return fmt.Errorf("bindings left: %+v", st)
		}
		return nil
	})
	publish(t, pub, "g/4", 1, false, "unwanted again")
	expect(t, local, "g/2", "wanted")
	expect(t, local, "g/3", "still wanted")
	expect(t, local, "g/4", "unwanted again")
	time.Sleep(grace)
	if st := a.Federation().Stats(); st.In != 2 {
		t.Fatalf("node a received %d messages, want 2", st.In)
	}
	apptest.None(t, in1.ch, 0)
	apptest.None(t, in2.ch, 0)
}

// TestNoLoops: with three nodes all interested, one publish reaches every
// node once, and nobody sends it on again.
func TestNoLoops(t *testing.T) {
	c := newCluster(t)
	nodes := []*app.App{c.node("a"), c.node("b"), c.node("c")}
	var inboxes []*inbox
	for i, n := range nodes {
		_, in := client(t, n, "sub"+string(rune('a'+i)), "loop/#")
		inboxes = append(inboxes, in)
	}
	pub, _ := client(t, nodes[0], "pub")
	publish(t, pub, "loop/1", 1, false, "once")
	for _, in := range inboxes {
		expect(t, in, "loop/1", "once")
	}
	time.Sleep(2 * grace)
	for i, in := range inboxes {
		if n := in.count("loop/1"); n != 1 {
			t.Errorf("node %d's subscriber got %d copies", i, n)
		}
	}
	var in, out []uint64
	for _, n := range nodes {
		st := n.Federation().Stats()
		in, out = append(in, st.In), append(out, st.Out)
	}
	if !slices.Equal(in, []uint64{0, 1, 1}) || !slices.Equal(out, []uint64{1, 0, 0}) {
		t.Fatalf("federated in %v, out %v", in, out)
	}
}

// TestRetained: a retained message reaches every node, also one that
// joins later, and clearing it clears it everywhere.
func TestRetained(t *testing.T) {
	c := newCluster(t)
	a, b := c.node("a"), c.node("b")
	pub, _ := client(t, a, "pub")
	_, onA := client(t, a, "watch-a", "r/state")
	publish(t, pub, "r/state", 1, true, "on")
	publish(t, pub, "r/other", 0, true, "x")
	expect(t, onA, "r/state", "on")
	// Retained on b although nobody there subscribes to r/…. (Subscribing
	// while it arrives could bring it twice, live and retained, as with
	// any broker where a retained publish and a subscription cross.)
	apptest.Eventually(t, func() error {
		if in := b.Federation().Stats().In; in != 2 {
			return fmt.Errorf("%d of 2 retained messages on b", in)
		}
		return nil
	})
	_, onB := client(t, b, "late-b", "r/state")
	expect(t, onB, "r/state", "on")

	// Node c joins afterwards and catches up from its peers.
	cNode := c.node("c")
	_, onC := client(t, cNode, "late-c", "r/#")
	got := map[string]string{}
	for range 2 {
		m := apptest.Next(t, onC.ch)
		got[m.Topic()] = string(m.Payload())
	}
	if got["r/state"] != "on" || got["r/other"] != "x" {
		t.Fatalf("node c has retained %v", got)
	}
	time.Sleep(grace)
	if n := onC.count("r/state"); n != 1 {
		t.Fatalf("node c's client got r/state %d times", n)
	}

	// A newer value from b replaces it everywhere.
	pubB, _ := client(t, b, "pub-b")
	publish(t, pubB, "r/state", 1, true, "off")
	expect(t, onB, "r/state", "off")
	// Node a has it too before a clears it. Versions are ordered by stamp
	// (doc.go), but a remote version and a local one that a node handles
	// at the same instant can still be stored in the wrong order (hook.go,
	// OnPublish): seen once here under heavy CI load. Known limitation.
	expect(t, onA, "r/state", "off")
	m := apptest.Next(t, onC.ch)
	if m.Topic() != "r/state" || string(m.Payload()) != "off" {
		t.Fatalf("node c got %s %q", m.Topic(), m.Payload())
	}
	// Cleared on a: gone on every node for new subscribers.
	publish(t, pub, "r/state", 1, true, "")
	expect(t, onB, "r/state", "")
	expect(t, onC, "r/state", "")
	for i, n := range []*app.App{a, b, cNode} {
		_, fresh := client(t, n, "fresh"+string(rune('a'+i)), "r/#")
		expect(t, fresh, "r/other", "x")
		apptest.None(t, fresh.ch, grace)
	}
}

// TestModules: what a module publishes (server.Publish) is federated, and
// a module's subscription (server.Subscribe) draws other nodes' messages.
func TestModules(t *testing.T) {
	c := newCluster(t)
	a, b := c.node("a"), c.node("b")
	_, sub := client(t, b, "sub", "mod/#")
	if err := a.Server().Publish("mod/x", []byte("from a module"), false, 1); err != nil {
		t.Fatal(err)
	}
	expect(t, sub, "mod/x", "from a module")

	got := make(chan server.Message, 16)
	cancel, err := a.Server().Subscribe("dev/+/up", func(m server.Message) { got <- m })
	if err != nil {
		t.Fatal(err)
	}
	pub, _ := client(t, b, "pub")
	publish(t, pub, "dev/7/up", 1, false, "reading")
	if m := apptest.Next(t, got); m.Topic != "dev/7/up" || string(m.Payload) != "reading" || m.ClientID != server.ClusterClientID {
		t.Fatalf("module got %+v", m)
	}
	cancel()
	apptest.Eventually(t, func() error {
		if n := a.Federation().Stats().Bindings; n != 0 {
			return fmt.Errorf("%d bindings left on a", n)
		}
		return nil
	})
}

// TestReservedTopicsStayLocal: $SYS, $rpc and $colony never leave a node,
// and other "$" topics travel but do not match a "#" subscription.
func TestReservedTopicsStayLocal(t *testing.T) {
	c := newCluster(t)
	a, b := c.node("a"), c.node("b")
	_, all := client(t, a, "all", "#")
	_, sys := client(t, a, "sys", "$SYS/test/#", "$colony/#", "$rpc/x/#", "$other/#")
	if st := a.Federation().Stats(); st.Bindings != 2 { // "#" and "$other/#"
		t.Fatalf("bindings on a: %+v", st)
	}
	for _, topic := range []string{"$SYS/test/x", "$colony/x", "$rpc/x/y"} {
		if err := b.Server().Publish(topic, []byte("local"), false, 0); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.Server().Publish("$other/x", []byte("travels"), false, 0); err != nil {
		t.Fatal(err)
	}
	expect(t, sys, "$other/x", "travels")
	apptest.None(t, sys.ch, grace)
	apptest.None(t, all.ch, 0)
	if out := b.Federation().Stats().Out; out != 1 {
		t.Fatalf("node b federated %d messages, want only $other/x", out)
	}
}

// TestMQTT5Properties: content type, response topic, correlation data and
// user properties cross nodes unchanged.
func TestMQTT5Properties(t *testing.T) {
	c := newCluster(t)
	a, b := c.node("a"), c.node("b")
	ctx := apptest.Ctx(t)
	sub := apptest.V5(t, a.Addr("mqtt"), &paho.Connect{ClientID: "sub5", CleanStart: true})
	if _, err := sub.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "p5/#", QoS: 1}}}); err != nil {
		t.Fatal(err)
	}
	pub := apptest.V5(t, b.Addr("mqtt"), &paho.Connect{ClientID: "pub5", CleanStart: true})
	props := &paho.PublishProperties{
		ContentType: "application/json", ResponseTopic: "p5/reply", CorrelationData: []byte{0, 42, 255},
		User: paho.UserProperties{{Key: "trace", Value: "t1"}, {Key: "trace", Value: "t2"}},
	}
	if _, err := pub.Publish(ctx, &paho.Publish{Topic: "p5/req", QoS: 1, Payload: []byte(`{}`), Properties: props}); err != nil {
		t.Fatal(err)
	}
	m := apptest.Next(t, sub.Msgs)
	p := m.Properties
	if m.Topic != "p5/req" || m.QoS != 1 || p == nil || p.ContentType != props.ContentType || p.ResponseTopic != props.ResponseTopic ||
		!bytes.Equal(p.CorrelationData, props.CorrelationData) || !slices.Equal(p.User, props.User) {
		t.Fatalf("got %+v with %+v", m, p)
	}
}

// TestRestoredSessionKeepsInterest: after a restart, a node binds the
// filters of persistent sessions restored from its store (which the
// engine restores without telling any hook), so a disconnected session
// keeps receiving what other nodes publish.
func TestRestoredSessionKeepsInterest(t *testing.T) {
	c := newCluster(t)
	cfgA := c.config("a")
	a := apptest.Run(t, cfgA)
	b := c.node("b")
	persistent := func(o *pahov3.ClientOptions) { o.SetCleanSession(false) }
	s := apptest.V3(t, apptest.URL(a), "keeper", persistent)
	apptest.Done(t, s.Subscribe("keep/#", 1, nil))
	s.Disconnect(50)
	apptest.Stop(t, a)

	a = apptest.Run(t, cfgA)
	if st := a.Federation().Stats(); st.Bindings != 1 {
		t.Fatalf("restored node binds %d keys, want 1", st.Bindings)
	}
	pub, _ := client(t, b, "pub")
	publish(t, pub, "keep/1", 1, false, "while away")
	apptest.Eventually(t, func() error {
		if a.Federation().Stats().In == 0 {
			return fmt.Errorf("not arrived on a")
		}
		return nil
	})
	in := newInbox()
	apptest.V3(t, apptest.URL(a), "keeper", persistent, func(o *pahov3.ClientOptions) { o.SetDefaultPublishHandler(in.handler) })
	expect(t, in, "keep/1", "while away")
}

// TestBrokerOutage: while RabbitMQ is unreachable, local pub/sub keeps
// working; afterwards the node reconnects by itself, declares its queue
// and binds its filters again.
func TestBrokerOutage(t *testing.T) {
	c := newCluster(t)
	a, b := c.node("a"), c.node("b")
	_, sub := client(t, a, "sub", "o/#")
	pubA, _ := client(t, a, "pub-a")
	pubB, _ := client(t, b, "pub-b")
	publish(t, pubB, "o/before", 1, false, "1")
	expect(t, sub, "o/before", "1")

	if n := c.closeFederation(t); n != 2 {
		t.Fatalf("closed %d federation connections, want 2", n)
	}
	publish(t, pubA, "o/local", 1, false, "2")
	expect(t, sub, "o/local", "2")

	apptest.Eventually(t, func() error {
		for _, n := range []*app.App{a, b} {
			if st := n.Federation().Stats(); !n.Federation().Connected() || st.Reconnects == 0 {
				return fmt.Errorf("%s not back: %+v", n.Config().Node.ID, st)
			}
		}
		return nil
	})
	if st := a.Federation().Stats(); st.Bindings != 1 {
		t.Fatalf("bindings after reconnect: %+v", st)
	}
	publish(t, pubB, "o/after", 1, false, "3")
	expect(t, sub, "o/after", "3")
}

// TestBurstInOrder: a burst from one publisher crosses in batches, every
// message once and in order, retained ones included.
func TestBurstInOrder(t *testing.T) {
	c := newCluster(t)
	a, b := c.node("a"), c.node("b")
	var mu sync.Mutex
	var got []string
	done := make(chan struct{})
	const n = 3000
	sub := apptest.V3(t, apptest.URL(a), "sub", func(o *pahov3.ClientOptions) {
		o.SetDefaultPublishHandler(func(_ pahov3.Client, m pahov3.Message) {
			mu.Lock()
			got = append(got, string(m.Payload()))
			if len(got) == n {
				close(done)
			}
			mu.Unlock()
		})
	})
	apptest.Done(t, sub.Subscribe("burst/#", 1, nil))
	pub, _ := client(t, b, "pub")
	var last pahov3.Token
	for i := range n {
		topic := "burst/x"
		if i%500 == 499 {
			topic = "burst/y" // breaks a run: a batch ends, a single message goes alone
		}
		last = pub.Publish(topic, byte(i%2), false, fmt.Sprint(i))
	}
	apptest.Done(t, last)
	apptest.Next(t, done)
	mu.Lock()
	defer mu.Unlock()
	for i, p := range got {
		if p != fmt.Sprint(i) {
			t.Fatalf("message %d is %q", i, p)
		}
	}
	time.Sleep(grace)
	if len(got) != n {
		t.Fatalf("%d messages, want %d", len(got), n)
	}
	if st := a.Federation().Stats(); st.In != n || st.Malformed != 0 {
		t.Fatalf("node a: %+v", st)
	}
	t.Logf("node b sent %d batches for %d messages", b.Federation().Stats().Batches, n)
}

// TestWillFederates: the will of a client that vanishes reaches other nodes.
func TestWillFederates(t *testing.T) {
	c := newCluster(t)
	a, b := c.node("a"), c.node("b")
	_, sub := client(t, b, "sub", "wills/#")
	conn := apptest.V5(t, a.Addr("mqtt"), &paho.Connect{ClientID: "mortal", CleanStart: true, WillMessage: &paho.WillMessage{Topic: "wills/mortal", QoS: 1, Payload: []byte("gone")}})
	if err := conn.Conn.Close(); err != nil {
		t.Fatal(err)
	}
	expect(t, sub, "wills/mortal", "gone")
}

// BenchmarkCrossNode measures QoS 0 throughput, publish to delivery, of
// one paho publisher and one paho subscriber (64-byte payloads): on a
// standalone node without RabbitMQ, on a cluster node with both clients on
// it (every publish is federated too, so RabbitMQ's pace counts), and with
// the publisher on node b and the subscriber on node a, on one topic, then
// cycling through 100 topics (a batch's keys repeat once it holds 100
// messages) and 1000 topics (every key of a batch is one more for RabbitMQ
// to route), and the cluster node alone again with 100 topics (every
// publish is federated whether or not another node wants it, so
// RabbitMQ's pace counts). All are measured in one run on the same
// machine; it reports each, the cross-node figures relative to the
// standalone one, and how many messages node b's batches carried on
// average (messages sent alone counted in).
func BenchmarkCrossNode(b *testing.B) {
	c := newCluster(b)
	cfg := func(id string, clustered bool) app.Config {
		cfg := apptest.Config(b)
		cfg.Node.ID = id
		if clustered {
			cfg.Cluster = app.ClusterConfig{AMQPURL: c.url, Prefix: c.prefix}
		}
		return cfg
	}
	alone := apptest.Run(b, cfg("alone", false))
	a, other := apptest.Run(b, cfg("a", true)), apptest.Run(b, cfg("b", true))
	payload := bytes.Repeat([]byte("x"), 64)
	topics := make([]string, 1000)
	for i := range topics {
		topics[i] = fmt.Sprintf("bench/%d", i)
	}
	run := func(subNode, pubNode *app.App, name string, ntopics int) float64 {
		var got atomic.Int64
		done := make(chan struct{})
		sub := connectBench(b, apptest.URL(subNode), "bench-sub-"+name, func(o *pahov3.ClientOptions) {
			o.SetDefaultPublishHandler(func(pahov3.Client, pahov3.Message) {
				if got.Add(1) == int64(b.N) {
					close(done)
				}
			})
		})
		defer sub.Disconnect(50)
		if tok := sub.Subscribe("bench/#", 0, nil); !tok.WaitTimeout(apptest.Wait) || tok.Error() != nil {
			b.Fatalf("subscribe: %v", tok.Error())
		}
		pub := connectBench(b, apptest.URL(pubNode), "bench-pub-"+name)
		defer pub.Disconnect(50)
		start := time.Now()
		for i := range b.N {
			pub.Publish(topics[i%ntopics], 0, false, payload)
		}
		select {
		case <-done:
		case <-time.After(time.Minute):
			b.Fatalf("%s: %d of %d messages arrived", name, got.Load(), b.N)
		}
		return float64(b.N) / time.Since(start).Seconds()
	}
	// perBatch runs fn and returns how many messages node b's batches
	// carried meanwhile, on average (1 if it sent none).
	perBatch := func(fn func()) float64 {
		st0 := other.Federation().Stats()
		fn()
		st1 := other.Federation().Stats()
		if st1.Batches == st0.Batches {
			return 1
		}
		return float64(st1.Out-st0.Out) / float64(st1.Batches-st0.Batches)
	}
	b.ResetTimer()
	standalone := run(alone, alone, "standalone", 1)
	member := run(a, a, "member", 1)
	var cross, crossMany, crossMost float64
	crossBatch := perBatch(func() { cross = run(a, other, "cross", 1) })
	crossManyBatch := perBatch(func() { crossMany = run(a, other, "cross-100", 100) })
	crossMostBatch := perBatch(func() { crossMost = run(a, other, "cross-1000", 1000) })
	memberMany := run(a, a, "member-100", 100)
	b.StopTimer()
	b.ReportMetric(standalone, "standalone-msgs/s")
	b.ReportMetric(member, "member-msgs/s")
	b.ReportMetric(cross, "cross-msgs/s")
	b.ReportMetric(crossMany, "cross-100topics-msgs/s")
	b.ReportMetric(crossMost, "cross-1000topics-msgs/s")
	b.ReportMetric(memberMany, "member-100topics-msgs/s")
	b.ReportMetric(cross/standalone, "cross/standalone")
	b.ReportMetric(crossMany/standalone, "cross-100topics/standalone")
	b.ReportMetric(crossMost/standalone, "cross-1000topics/standalone")
	b.ReportMetric(crossBatch, "cross-msgs/batch")
	b.ReportMetric(crossManyBatch, "cross-100topics-msgs/batch")
	b.ReportMetric(crossMostBatch, "cross-1000topics-msgs/batch")
	b.ReportMetric(0, "ns/op")
}

func connectBench(b *testing.B, url, id string, tweak ...func(*pahov3.ClientOptions)) pahov3.Client {
	c, err := apptest.V3Try(url, id, tweak...)
	if err != nil {
		b.Fatalf("connect %s: %v", id, err)
	}
	b.Cleanup(func() { c.Disconnect(50) })
	return c
}
