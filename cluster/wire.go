package cluster

import (
	"fmt"
	"strings"
	"unicode/utf8"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
	amqp091 "github.com/rabbitmq/amqp091-go"
)

// The wire names below are the contract with other nodes (and with
// processes in other languages that want to take part); changing one
// breaks mixed-version clusters.
const (
	// DefaultPrefix starts every exchange and queue name unless
	// Options.Prefix says otherwise.
	DefaultPrefix = "colony"

	// HeaderOrigin is the id of the node that sent the message: where it
	// was published, or the node answering a sync request.
	HeaderOrigin = "origin"
	// HeaderWriter is, on a sync message, the id of the node where that
	// version of the retained message was published, when it is not the
	// origin. Together with HeaderTime it orders versions.
	HeaderWriter = "writer"
	// HeaderTopic is the exact MQTT topic (the routing key is an encoding of it).
	HeaderTopic = "topic"
	// HeaderQoS is the QoS the message was published with (0, 1 or 2).
	HeaderQoS = "qos"
	// HeaderRetain is true for a retained message.
	HeaderRetain = "retain"
	// HeaderTime is, on retained messages, when the message was
	// published, in nanoseconds since the Unix epoch on the writer's clock
	// (see HeaderWriter): of two versions of a topic's retained message,
	// the later one wins. Ordinary messages go without it: every header
	// costs RabbitMQ time.
	HeaderTime = "ts"
	// HeaderType marks control messages; absent on ordinary messages.
	HeaderType = "type"
	// HeaderContentType carries the MQTT 5 content type.
	HeaderContentType = "content_type"
	// HeaderResponseTopic carries the MQTT 5 response topic.
	HeaderResponseTopic = "response_topic"
	// HeaderCorrelationData carries the MQTT 5 correlation data, as bytes.
	HeaderCorrelationData = "correlation_data"
	// HeaderUserProperties carries the MQTT 5 user properties, in order,
	// as an array of [key, value] arrays (keys may repeat).
	HeaderUserProperties = "user_properties"
	// HeaderPayloadFormat carries the MQTT 5 payload format indicator (0 or 1).
	HeaderPayloadFormat = "payload_format"
	// HeaderExpiry carries the MQTT 5 message expiry interval in seconds.
	HeaderExpiry = "expiry"
	// HeaderCount is the number of messages in a batch.
	HeaderCount = "count"
)

// Values of HeaderType.
const (
	// TypeSyncRequest asks every other node to send its retained messages
	// to the queue named in reply_to.
	TypeSyncRequest = "sync_request"
	// TypeSync is a retained message sent to bring a node up to date: it
	// is stored if it is newer than what the node has, like a live
	// retained publish, but a stale one is not delivered.
	TypeSync = "sync"
	// TypeSyncDone follows the last sync message a node sends in answer
	// to a sync request.
	TypeSyncDone = "sync_done"
	// TypeBatch carries several consecutive messages of one node, in its
	// body, routed by all their keys (see the package documentation).
	TypeBatch = "batch"
)

// MessageExchange returns the name of the topic exchange ordinary messages
// are published to: "<prefix>.msg".
func MessageExchange(prefix string) string { return prefix + ".msg" }

// RetainedExchange returns the name of the fanout exchange retained
// messages and sync requests are published to: "<prefix>.retained".
func RetainedExchange(prefix string) string { return prefix + ".retained" }

// NodeQueue returns the name of a node's federation queue:
// "<prefix>.node.<node>".
func NodeQueue(prefix, node string) string { return prefix + ".node." + node }

// message is a federated message decoded from a delivery.
type message struct {
	origin string // sending node
	writer string // node that published this version (retained ordering)
	typ    string
	ts     int64
	pk     packets.Packet
}

// encode turns a packet into its AMQP form. node is the sending node, ts
// the publish time in Unix nanoseconds; typ and writer are empty for a
// live message.
func encode(node string, pk *packets.Packet, ts int64, typ, writer string) amqp091.Publishing {
	h := amqp091.Table{
		HeaderOrigin: node,
		HeaderTopic:  pk.TopicName,
		HeaderQoS:    int32(pk.FixedHeader.Qos),
		HeaderRetain: pk.FixedHeader.Retain,
	}
	if pk.FixedHeader.Retain || typ != "" {
		h[HeaderTime] = ts
	}
	if typ != "" {
		h[HeaderType] = typ
	}
	if writer != "" && writer != node {
		h[HeaderWriter] = writer
	}
	p := &pk.Properties
	if p.ContentType != "" {
		h[HeaderContentType] = p.ContentType
	}
	if p.ResponseTopic != "" {
		h[HeaderResponseTopic] = p.ResponseTopic
	}
	if len(p.CorrelationData) > 0 {
		h[HeaderCorrelationData] = p.CorrelationData
	}
	if len(p.User) > 0 {
		ups := make([]any, len(p.User))
		for i, u := range p.User {
			ups[i] = []any{u.Key, u.Val}
		}
		h[HeaderUserProperties] = ups
	}
	if p.PayloadFormatFlag {
		h[HeaderPayloadFormat] = int32(p.PayloadFormat)
	}
	if p.MessageExpiryInterval > 0 {
		h[HeaderExpiry] = int64(p.MessageExpiryInterval)
	}
	mode := amqp091.Transient
	if pk.FixedHeader.Qos > 0 {
		mode = amqp091.Persistent
	}
	return amqp091.Publishing{Headers: h, Body: pk.Payload, DeliveryMode: mode}
}

// decode rebuilds a message from a delivery. It fails on deliveries that
// lack the origin or the topic, which no Colony node sends.
func decode(d *amqp091.Delivery) (message, error) {
	h := d.Headers
	m := message{origin: headerString(h, HeaderOrigin), writer: headerString(h, HeaderWriter), typ: headerString(h, HeaderType)}
	if m.origin == "" {
		return m, fmt.Errorf("federated message without %s header", HeaderOrigin)
	}
	if m.writer == "" {
		m.writer = m.origin
	}
	if m.typ == TypeSyncRequest || m.typ == TypeSyncDone || m.typ == TypeBatch {
		return m, nil
	}
	topic := headerString(h, HeaderTopic)
	if topic == "" {
		return m, fmt.Errorf("federated message from %s without %s header", m.origin, HeaderTopic)
	}
	if !validTopic(topic) {
		return m, fmt.Errorf("federated message from %s: invalid topic name %q", m.origin, topic)
	}
	qos, _ := headerInt(h, HeaderQoS)
	m.ts, _ = headerInt(h, HeaderTime)
	retain, _ := h[HeaderRetain].(bool)
	pk := packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: byte(min(max(qos, 0), 2)), Retain: retain},
		TopicName:   topic,
		Payload:     d.Body,
	}
	p := &pk.Properties
	p.ContentType = headerString(h, HeaderContentType)
	p.ResponseTopic = headerString(h, HeaderResponseTopic)
	switch v := h[HeaderCorrelationData].(type) {
	case []byte:
		p.CorrelationData = v
	case string:
		p.CorrelationData = []byte(v)
	}
	if ups, ok := h[HeaderUserProperties].([]any); ok {
		for _, u := range ups {
			kv, ok := u.([]any)
			if !ok || len(kv) != 2 {
				continue
			}
			p.User = append(p.User, packets.UserProperty{Key: asString(kv[0]), Val: asString(kv[1])})
		}
	}
	if pf, ok := headerInt(h, HeaderPayloadFormat); ok {
		p.PayloadFormat, p.PayloadFormatFlag = byte(pf), true
	}
	if exp, ok := headerInt(h, HeaderExpiry); ok && exp > 0 {
		p.MessageExpiryInterval = uint32(min(exp, 1<<32-1))
	}
	m.pk = pk
	return m, nil
}

func headerString(h amqp091.Table, key string) string { return asString(h[key]) }

// validTopic reports whether a topic from the wire is one an MQTT client
// could publish: no wildcards, valid UTF-8 without U+0000. The engine trusts
// what federation hands it, so a peer's bad topic would otherwise reach
// subscribers and the retained store.
func validTopic(topic string) bool {
	return mqtt.IsValidFilter(topic, true) && utf8.ValidString(topic) && !strings.ContainsRune(topic, 0)
}

func asString(v any) string {
	switch v := v.(type) {
	case string:
		return v
	case []byte:
		return string(v)
	}
	return ""
}

// headerInt reads an integer header whatever width the sender encoded it in.
func headerInt(h amqp091.Table, key string) (int64, bool) {
	switch v := h[key].(type) {
	case int8:
		return int64(v), true
	case uint8:
		return int64(v), true
	case int16:
		return int64(v), true
	case uint16:
		return int64(v), true
	case int32:
		return int64(v), true
	case uint32:
		return int64(v), true
	case int64:
		return v, true
	case int:
		return int64(v), true
	}
	return 0, false
}
