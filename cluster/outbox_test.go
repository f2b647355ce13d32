package cluster

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/colonymq/colony/internal/amqptest"
)

func TestBatchRoundTrip(t *testing.T) {
	f, err := New(Options{Node: "a"})
	if err != nil {
		t.Fatal(err)
	}
	s := newSession(f, nil)
	run := []outMsg{
		{pk: packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish}, TopicName: "a/b", Payload: []byte("one")}},
		{pk: packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1, Retain: true}, TopicName: "a/b", Payload: []byte{}}, ts: 99},
		{pk: packets.Packet{
			FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 2}, TopicName: "a/b", Payload: []byte{0, 1, 2},
			Properties: packets.Properties{
				ContentType: "x/y", ResponseTopic: "r", CorrelationData: []byte{9, 0},
				User:          []packets.UserProperty{{Key: "k", Val: "v"}, {Key: "k", Val: "w"}},
				PayloadFormat: 0, PayloadFormatFlag: true, MessageExpiryInterval: 5,
			},
		}},
	}
	pub := s.encodeBatch(run, 0)
	if err := pub.Headers.Validate(); err != nil {
		t.Fatal(err)
	}
	if pub.DeliveryMode != amqp091.Persistent {
		t.Fatal("a batch holding QoS 1 must be persistent")
	}
	m, err := decode(&amqp091.Delivery{Headers: pub.Headers, Body: pub.Body})
	if err != nil || m.typ != TypeBatch {
		t.Fatalf("batch header: %v %+v", err, m)
	}
	msgs, err := decodeBatch("a", pub.Body)
	if err != nil || len(msgs) != len(run) {
		t.Fatalf("decoded %d messages: %v", len(msgs), err)
	}
	for i, m := range msgs {
		want := run[i].pk
		if len(want.Payload) == 0 {
			want.Payload = []byte{}
		}
		if !reflect.DeepEqual(m.pk, want) || m.origin != "a" || m.writer != "a" || m.ts != run[i].ts {
			t.Errorf("message %d:\n%+v\nwant\n%+v (ts %d)", i, m.pk, want, m.ts)
		}
	}
	for _, bad := range [][]byte{{0, 0, 0}, {0, 0, 0, 9, '{'}, {0, 0, 0, 2, '{', '}', 0, 0, 0, 0}} {
		if _, err := decodeBatch("a", bad); err == nil {
			t.Errorf("decoded %v", bad)
		}
	}
}

// outMsgs builds ordinary messages to ex with the given topics, payload
// "0", "1", … in order.
func outMsgs(t *testing.T, ex string, topics ...string) []outMsg {
	t.Helper()
	out := make([]outMsg, len(topics))
	for i, topic := range topics {
		key, ok := TopicKey(topic)
		if !ok {
			t.Fatalf("no key for %q", topic)
		}
		out[i] = outMsg{exchange: ex, key: key, pk: packets.Packet{
			FixedHeader: packets.FixedHeader{Type: packets.Publish}, TopicName: topic, Payload: []byte(fmt.Sprint(i)),
		}}
	}
	return out
}

// TestCut: a batch takes consecutive messages to one exchange whatever
// their keys, and lists each other key once, in order of appearance; it
// ends at the exchange, key, count and size limits.
func TestCut(t *testing.T) {
	seen := map[string]struct{}{}
	items := outMsgs(t, "m", "a", "b", "a", "c", "b")
	items = append(items, outMsgs(t, "r", "a")...)
	n, size, bcc := cut(items, seen)
	if n != 5 || size != 5 || !reflect.DeepEqual(bcc, []any{"t.b", "t.c"}) {
		t.Fatalf("cut = %d, %d, %v", n, size, bcc)
	}
	if n, _, bcc := cut(items[5:], seen); n != 1 || bcc != nil {
		t.Fatalf("last: %d, %v", n, bcc)
	}
	if n, _, bcc := cut(outMsgs(t, "m", "a", "a", "a"), seen); n != 3 || bcc != nil {
		t.Fatalf("one key: %d, %v", n, bcc)
	}

	topics := make([]string, maxBatchKeys+10)
	for i := range topics {
		topics[i] = fmt.Sprint("k/", i%(maxBatchKeys+1))
	}
	if n, _, bcc := cut(outMsgs(t, "m", topics...), seen); n != maxBatchKeys || len(bcc) != maxBatchKeys-1 {
		t.Fatalf("key limit: %d messages, %d keys", n, len(bcc))
	}
	long := strings.Repeat("x", 250)
	for i := range topics {
		topics[i] = fmt.Sprint(long, i)
	}
	n, _, bcc = cut(outMsgs(t, "m", topics...), seen)
	keyBytes := 0
	for _, k := range bcc {
		keyBytes += len(k.(string))
	}
	if keyBytes > maxBatchKeyBytes || keyBytes+len(topics[n])+2 <= maxBatchKeyBytes || n != len(bcc)+1 {
		t.Fatalf("key bytes limit: %d messages, %d keys of %d bytes", n, len(bcc), keyBytes)
	}
	many := outMsgs(t, "m", slices.Repeat([]string{"a"}, maxBatchCount+1)...)
	if n, _, _ := cut(many, seen); n != maxBatchCount {
		t.Fatalf("count limit: %d", n)
	}
	many[0].pk.Payload = make([]byte, maxBatchBytes)
	if n, _, _ := cut(many, seen); n != 1 {
		t.Fatalf("size limit: %d", n)
	}
}

// TestBatchRouting checks on the real broker what batches across keys
// rely on: RabbitMQ routes a batch to every queue bound to any of its
// keys (routing key or BCC), one copy per queue however many match, to no
// other queue, and delivers it without the BCC header.
func TestBatchRouting(t *testing.T) {
	url := amqptest.URL(t)
	conn, err := amqp091.Dial(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := conn.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
	})
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 6)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	ex := "colonytest-batch-" + hex.EncodeToString(b)
	if err := ch.ExchangeDeclare(ex, "topic", false, true, false, false, nil); err != nil {
		t.Fatal(err)
	}
	bindings := map[string][]string{ // queue -> filters
		"first":  {"x/1"},
		"later":  {"z"},
		"twice":  {"x/+", "y", "#"},
		"nobody": {"w", "x/2/#"},
	}
	queues := map[string]string{}
	for name, filters := range bindings {
		q, err := ch.QueueDeclare("", false, true, true, false, nil)
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range filters {
			key, _ := FilterKey(f)
			if err := ch.QueueBind(q.Name, key, ex, false, nil); err != nil {
				t.Fatal(err)
			}
		}
		queues[name] = q.Name
	}
	f, err := New(Options{Node: "n"})
	if err != nil {
		t.Fatal(err)
	}
	s := newSession(f, nil)
	run := outMsgs(t, ex, "x/1", "y", "x/1", "z", "y")
	if err := ch.Confirm(false); err != nil {
		t.Fatal(err)
	}
	publish := func(run []outMsg, size int, bcc []any) {
		t.Helper()
		msg := s.encodeBatch(run, size)
		msg.Headers[headerBCC] = bcc
		dc, err := ch.PublishWithDeferredConfirm(ex, run[0].key, false, false, msg)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if ok, err := dc.WaitContext(ctx); !ok || err != nil {
			t.Fatalf("batch not confirmed: %v", err)
		}
	}

	// The largest BCC header a batch can have fits RabbitMQ's frames.
	long := make([]string, maxBatchKeys)
	for i := range long {
		long[i] = fmt.Sprint("nobody/", strings.Repeat("x", 240), i)
	}
	big := outMsgs(t, ex, long...)
	n, size, bcc := cut(big, map[string]struct{}{})
	publish(big[:n], size, bcc)
	if d, ok, err := ch.Get(queues["twice"], true); err != nil || !ok || d.Headers[HeaderCount] != int32(n) {
		t.Fatalf("batch with %d long keys: %v %v %v", n, ok, err, d.Headers)
	}

	n, size, bcc = cut(run, map[string]struct{}{})
	if n != len(run) || len(bcc) != 2 {
		t.Fatalf("cut: %d messages, keys %v", n, bcc)
	}
	publish(run, size, bcc)
	for name, q := range queues {
		var got []amqp091.Delivery
		for {
			d, ok, err := ch.Get(q, true)
			if err != nil {
				t.Fatal(err)
			}
			if !ok {
				break
			}
			got = append(got, d)
		}
		want := 1
		if name == "nobody" {
			want = 0
		}
		if len(got) != want {
			t.Fatalf("queue %s bound to %v got %d copies, want %d", name, bindings[name], len(got), want)
		}
		if want == 0 {
			continue
		}
		if _, ok := got[0].Headers[headerBCC]; ok {
			t.Errorf("queue %s: BCC header delivered: %v", name, got[0].Headers)
		}
		msgs, err := decodeBatch("n", got[0].Body)
		if err != nil || len(msgs) != len(run) {
			t.Fatalf("queue %s: decoded %d messages: %v", name, len(msgs), err)
		}
		for i, m := range msgs {
			if m.pk.TopicName != run[i].pk.TopicName || string(m.pk.Payload) != fmt.Sprint(i) {
				t.Errorf("queue %s: message %d is %q %q", name, i, m.pk.TopicName, m.pk.Payload)
			}
		}
	}
}
