package cluster

import (
	"encoding/binary"
	"testing"

	"github.com/rabbitmq/amqp091-go"

	mqtt "github.com/mochi-mqtt/server/v2"
)

func batchOf(parts ...string) []byte {
	var b []byte
	for _, p := range parts {
		b = binary.BigEndian.AppendUint32(b, uint32(len(p)))
		b = append(b, p...)
	}
	return b
}

// FuzzDecodeBatch: a batch from another node (or anyone who can publish to
// the exchange) decodes into messages with valid topic names, or fails.
func FuzzDecodeBatch(f *testing.F) {
	f.Add(batchOf(`{"topic":"a/b","qos":1,"user_properties":[["k","v"]],"payload_format":1,"expiry":60}`, "payload"))
	f.Add(batchOf(`{"topic":"a","qos":0}`, "", `{"topic":"b/c","qos":2,"retain":true,"ts":5}`, "x"))
	f.Add(batchOf(`{"topic":"a/+","qos":1}`, "wild"))
	f.Add(batchOf(`{"qos":1}`, "no topic"))
	f.Add([]byte{0, 0, 0, 9, '{'})
	f.Fuzz(func(t *testing.T, body []byte) {
		msgs, err := decodeBatch("n2", body)
		if err != nil {
			return
		}
		for _, m := range msgs {
			if !mqtt.IsValidFilter(m.pk.TopicName, true) || m.pk.FixedHeader.Qos > 2 {
				t.Fatalf("decoded an unusable message: topic %q qos %d", m.pk.TopicName, m.pk.FixedHeader.Qos)
			}
		}
	})
}

// FuzzDecodeDelivery: a single federated message's headers, as arbitrary
// as AMQP allows, decode into a usable message or an error.
func FuzzDecodeDelivery(f *testing.F) {
	f.Add("n2", "a/b", int64(1), "ct", "resp/x", []byte("corr"), "k", "v", int64(1), int64(60), []byte("body"))
	f.Add("", "a/b", int64(3), "", "", []byte(nil), "", "", int64(-1), int64(-5), []byte(nil))
	f.Add("n2", "#", int64(0), "", "", []byte(nil), "", "", int64(0), int64(0), []byte(nil))
	f.Fuzz(func(t *testing.T, origin, topic string, qos int64, ct, resp string, corr []byte, uk, uv string, pf, exp int64, body []byte) {
		d := &amqp091.Delivery{Body: body, Headers: amqp091.Table{
			HeaderOrigin: origin, HeaderTopic: topic, HeaderQoS: qos, HeaderContentType: ct, HeaderResponseTopic: resp,
			HeaderCorrelationData: corr, HeaderUserProperties: []any{[]any{uk, uv}, "junk"}, HeaderPayloadFormat: pf, HeaderExpiry: exp,
		}}
		m, err := decode(d)
		if err != nil || m.typ != "" {
			return
		}
		if !mqtt.IsValidFilter(m.pk.TopicName, true) || m.pk.FixedHeader.Qos > 2 {
			t.Fatalf("decoded an unusable message: topic %q qos %d", m.pk.TopicName, m.pk.FixedHeader.Qos)
		}
	})
}
