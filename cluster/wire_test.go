package cluster

import (
	"bytes"
	"reflect"
	"testing"

	"github.com/mochi-mqtt/server/v2/packets"
	amqp091 "github.com/rabbitmq/amqp091-go"
)

// TestWireNames pins the names other nodes rely on.
func TestWireNames(t *testing.T) {
	for got, want := range map[string]string{
		MessageExchange(DefaultPrefix):  "colony.msg",
		RetainedExchange(DefaultPrefix): "colony.retained",
		NodeQueue(DefaultPrefix, "n1"):  "colony.node.n1",
		HeaderOrigin + " " + HeaderWriter + " " + HeaderTopic + " " + HeaderQoS + " " + HeaderRetain + " " + HeaderTime + " " + HeaderType: "origin writer topic qos retain ts type",
		HeaderContentType + " " + HeaderResponseTopic + " " + HeaderCorrelationData:                                                        "content_type response_topic correlation_data",
		HeaderUserProperties + " " + HeaderPayloadFormat + " " + HeaderExpiry:                                                              "user_properties payload_format expiry",
		TypeSync + " " + TypeSyncRequest + " " + LongKey:                                                                                   "sync sync_request long",
	} {
		if got != want {
			t.Errorf("got %q, want %q", got, want)
		}
	}
}

// roundTrip encodes pk, passes the headers through AMQP's table encoding
// as a real broker would, and decodes the result.
func roundTrip(t *testing.T, pk packets.Packet, typ, writer string) message {
	t.Helper()
	pub := encode("a", &pk, 42, typ, writer)
	if err := pub.Headers.Validate(); err != nil {
		t.Fatalf("headers not valid for AMQP: %v", err)
	}
	m, err := decode(&amqp091.Delivery{Headers: pub.Headers, Body: pub.Body})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestEncodeDecode(t *testing.T) {
	pk := packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1, Retain: true},
		TopicName:   "a/b.c",
		Payload:     []byte("hello"),
		Properties: packets.Properties{
			ContentType:           "text/plain",
			ResponseTopic:         "reply/me",
			CorrelationData:       []byte{0, 1, 2, 255},
			User:                  []packets.UserProperty{{Key: "k", Val: "1"}, {Key: "k", Val: "2"}, {Key: "z", Val: ""}},
			PayloadFormat:         1,
			PayloadFormatFlag:     true,
			MessageExpiryInterval: 60,
		},
	}
	m := roundTrip(t, pk, "", "")
	if m.origin != "a" || m.writer != "a" || m.ts != 42 || m.typ != "" {
		t.Fatalf("meta %+v", m)
	}
	if !reflect.DeepEqual(m.pk, pk) {
		t.Fatalf("decoded\n%+v\nwant\n%+v", m.pk, pk)
	}
	if pub := encode("a", &pk, 1, "", ""); pub.DeliveryMode != amqp091.Persistent {
		t.Fatal("QoS 1 must be persistent")
	}

	plain := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish}, TopicName: "x", Payload: []byte{}}
	m = roundTrip(t, plain, TypeSync, "b")
	if m.writer != "b" || m.typ != TypeSync || m.ts != 42 || m.pk.FixedHeader.Qos != 0 || m.pk.FixedHeader.Retain || !bytes.Equal(m.pk.Payload, nil) {
		t.Fatalf("plain %+v", m)
	}
	if pub := encode("a", &plain, 1, "", ""); pub.DeliveryMode != amqp091.Transient || len(pub.Headers) != 4 {
		t.Fatalf("QoS 0 without properties: mode %d, headers %v", pub.DeliveryMode, pub.Headers)
	}
}

func TestDecodeRejects(t *testing.T) {
	for _, h := range []amqp091.Table{
		{},
		{HeaderTopic: "x"},
		{HeaderOrigin: "a"},
	} {
		if _, err := decode(&amqp091.Delivery{Headers: h}); err == nil {
			t.Errorf("decoded %v", h)
		}
	}
	m, err := decode(&amqp091.Delivery{Headers: amqp091.Table{HeaderOrigin: "a", HeaderType: TypeSyncRequest}, ReplyTo: "q"})
	if err != nil || m.typ != TypeSyncRequest {
		t.Fatalf("sync request: %v %+v", err, m)
	}
	// Integers of any width, as other clients may encode them.
	m, err = decode(&amqp091.Delivery{Headers: amqp091.Table{HeaderOrigin: "a", HeaderTopic: "x", HeaderQoS: int8(2), HeaderTime: int32(7)}})
	if err != nil || m.pk.FixedHeader.Qos != 2 || m.ts != 7 {
		t.Fatalf("widths: %v %+v", err, m)
	}
}
