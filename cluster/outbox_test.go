package cluster

import (
	"reflect"
	"testing"

	"github.com/mochi-mqtt/server/v2/packets"
	amqp091 "github.com/rabbitmq/amqp091-go"
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
	pub := s.encodeBatch(run)
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
