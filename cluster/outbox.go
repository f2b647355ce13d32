package cluster

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"sync"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
	amqp091 "github.com/rabbitmq/amqp091-go"
)

// Batch limits: a batch closes at whichever comes first.
const (
	maxBatchCount = 1000
	maxBatchBytes = 256 << 10 // payloads
	// maxBatchKeys bounds the distinct routing keys of a batch. RabbitMQ
	// routes by each (a key costs it about a quarter of what a message of
	// its own does), and a batch reaches every node bound to any of them.
	maxBatchKeys = 128
	// maxBatchKeyBytes bounds the BCC header, which must fit in one AMQP
	// frame (RabbitMQ's frame_max is 128 KiB by default).
	maxBatchKeyBytes = 16 << 10
)

// headerBCC is RabbitMQ's sender-selected distribution header: further
// routing keys the message is routed with, one copy per queue however
// many of them match; RabbitMQ removes it before delivery.
const headerBCC = "BCC"

// outMsg is a local message waiting to be federated.
type outMsg struct {
	exchange string
	key      string
	pk       packets.Packet // its payload and properties are never written again by the engine
	ts       int64
}

// outbox queues local messages for the session's sender, in publish
// order. Its size is bounded: a publisher finding it full waits for room
// (back-pressure), at most PublishPatience.
type outbox struct {
	mu    sync.Mutex
	items []outMsg
	wake  chan struct{} // capacity 1: there are items
	room  chan struct{} // a token per queued message
}

func newOutbox(size int) *outbox {
	return &outbox{wake: make(chan struct{}, 1), room: make(chan struct{}, size)}
}

// take removes and returns every queued message. The queue goes on in
// spare, a slice take returned before and the caller is done with: under
// load the queue holds hundreds of large items, and growing a new slice
// for each round costs more than the rest of enqueueing.
func (o *outbox) take(spare []outMsg) []outMsg {
	clear(spare) // no payloads kept alive
	o.mu.Lock()
	defer o.mu.Unlock()
	items := o.items
	o.items = spare[:0]
	return items
}

// enqueue queues a message for the sender, waiting for room if the outbox
// is full; see session.publish for the patience rules.
func (s *session) enqueue(m outMsg) error {
	if err := s.acquire(s.out.room, "outbox"); err != nil {
		return err
	}
	o := s.out
	o.mu.Lock()
	o.items = append(o.items, m)
	o.mu.Unlock()
	select {
	case o.wake <- struct{}{}:
	default:
	}
	return nil
}

// acquire takes a token from sem (a bounded channel), waiting up to
// PublishPatience. A session that has already waited in vain does not make
// the next publisher wait again until room comes back.
func (s *session) acquire(sem chan struct{}, what string) error {
	select {
	case sem <- struct{}{}:
		return nil
	default:
	}
	if s.stalled.Load() {
		return ErrStalled
	}
	tm := time.NewTimer(s.f.opts.PublishPatience)
	defer tm.Stop()
	select {
	case sem <- struct{}{}:
		return nil
	case <-s.dead:
		return fmt.Errorf("%s: connection lost: %w", what, s.err)
	case <-tm.C:
		if s.stalled.CompareAndSwap(false, true) {
			s.f.log.Warn().Dur("patience", s.f.opts.PublishPatience).Str("waiting_for", what).
				Msg("federation: rabbitmq takes nothing; local messages stay local until it catches up")
		}
		return ErrStalled
	}
}

// send publishes what the outbox holds, in order. Consecutive messages
// to the same exchange go as one AMQP message (a batch), whatever their
// routing keys: RabbitMQ's cost is mostly per message. The batch is
// published with the first message's key and lists its other keys in the
// BCC header, so RabbitMQ routes it, once, to every node bound to any of
// them; a receiving node's engine delivers each message to the local
// subscriptions that match it, which drops those the node has no binding
// for. Batching takes what has queued up while the previous publish was
// under way, so it adds no delay when traffic is light, and a message
// alone goes with its own key only.
func (s *session) send() {
	defer s.bg.Done()
	seen := make(map[string]struct{})
	var spare []outMsg
	for {
		select {
		case <-s.out.wake:
		case <-s.dead:
			if n := len(s.out.take(nil)); n > 0 {
				s.f.stats.unsent.Add(uint64(n))
			}
			return
		}
		items := s.out.take(spare)
		spare = items
		for len(items) > 0 {
			n, size, bcc := cut(items, seen)
			run := items[:n]
			items = items[n:]
			var err error
			if n == 1 {
				m := &run[0]
				err = s.publish(m.exchange, m.key, encode(s.f.opts.Node, &m.pk, m.ts, "", ""))
			} else {
				msg := s.encodeBatch(run, size)
				if len(bcc) > 0 {
					msg.Headers[headerBCC] = bcc
				}
				err = s.publish(run[0].exchange, run[0].key, msg)
				if err == nil {
					s.f.stats.batches.Add(1)
				}
			}
			for range run {
				<-s.out.room
			}
			if err != nil {
				s.f.stats.unsent.Add(uint64(n))
				continue
			}
			s.f.stats.out.Add(uint64(n))
		}
	}
}

// cut returns how many of the leading items go in one batch (at least
// one), the size of their payloads, and their distinct routing keys other
// than the first one's, in order of appearance (nil when they share one).
// seen is scratch space.
func cut(items []outMsg, seen map[string]struct{}) (n, size int, bcc []any) {
	clear(seen)
	first := &items[0]
	seen[first.key] = struct{}{}
	n, size = 1, len(first.pk.Payload)
	keyBytes := 0
	for ; n < len(items) && n < maxBatchCount && size < maxBatchBytes; n++ {
		m := &items[n]
		if m.exchange != first.exchange {
			break
		}
		if _, ok := seen[m.key]; !ok {
			if len(seen) == maxBatchKeys || keyBytes+len(m.key) > maxBatchKeyBytes {
				break
			}
			seen[m.key] = struct{}{}
			keyBytes += len(m.key)
			bcc = append(bcc, m.key)
		}
		size += len(m.pk.Payload)
	}
	return n, size, bcc
}

// batchRecord is the JSON header of one message inside a batch; the names
// are those of the AMQP headers of a single message.
type batchRecord struct {
	Topic           string     `json:"topic"`
	QoS             byte       `json:"qos"`
	Retain          bool       `json:"retain,omitempty"`
	Time            int64      `json:"ts,omitempty"`
	ContentType     string     `json:"content_type,omitempty"`
	ResponseTopic   string     `json:"response_topic,omitempty"`
	CorrelationData []byte     `json:"correlation_data,omitempty"`
	UserProperties  [][]string `json:"user_properties,omitempty"`
	PayloadFormat   *byte      `json:"payload_format,omitempty"`
	Expiry          uint32     `json:"expiry,omitempty"`
}

// encodeBatch builds one AMQP message carrying several messages: headers
// origin, type "batch" and count; the body is, per message, a 4-byte
// big-endian length and the JSON batchRecord, then a 4-byte length and
// the payload. size, the payloads' total, sizes the body.
func (s *session) encodeBatch(run []outMsg, size int) amqp091.Publishing {
	body := make([]byte, 0, size+len(run)*96)
	mode := amqp091.Transient
	for i := range run {
		pk := &run[i].pk
		p := &pk.Properties
		r := batchRecord{
			Topic: pk.TopicName, QoS: pk.FixedHeader.Qos, Retain: pk.FixedHeader.Retain,
			ContentType: p.ContentType, ResponseTopic: p.ResponseTopic, CorrelationData: p.CorrelationData,
			Expiry: p.MessageExpiryInterval,
		}
		if r.Retain {
			r.Time = run[i].ts
		}
		for _, u := range p.User {
			r.UserProperties = append(r.UserProperties, []string{u.Key, u.Val})
		}
		if p.PayloadFormatFlag {
			r.PayloadFormat = &p.PayloadFormat
		}
		if pk.FixedHeader.Qos > 0 {
			mode = amqp091.Persistent
		}
		hdr, err := json.Marshal(&r)
		if err != nil { // cannot happen: strings, numbers and bytes
			panic(fmt.Sprintf("encode batch record: %v", err))
		}
		body = binary.BigEndian.AppendUint32(body, uint32(len(hdr)))
		body = append(body, hdr...)
		body = binary.BigEndian.AppendUint32(body, uint32(len(pk.Payload)))
		body = append(body, pk.Payload...)
	}
	return amqp091.Publishing{
		Headers:      amqp091.Table{HeaderOrigin: s.f.opts.Node, HeaderType: TypeBatch, HeaderCount: int32(len(run))},
		Body:         body,
		DeliveryMode: mode,
	}
}

// decodeBatch splits a batch into its messages.
func decodeBatch(origin string, body []byte) ([]message, error) {
	var out []message
	next := func() ([]byte, error) {
		if len(body) < 4 {
			return nil, fmt.Errorf("batch from %s: truncated length", origin)
		}
		n := binary.BigEndian.Uint32(body)
		body = body[4:]
		if uint64(n) > uint64(len(body)) {
			return nil, fmt.Errorf("batch from %s: length %d past the end", origin, n)
		}
		part := body[:n:n]
		body = body[n:]
		return part, nil
	}
	for len(body) > 0 {
		hdr, err := next()
		if err != nil {
			return out, err
		}
		payload, err := next()
		if err != nil {
			return out, err
		}
		var r batchRecord
		if err := json.Unmarshal(hdr, &r); err != nil {
			return out, fmt.Errorf("batch from %s: record: %w", origin, err)
		}
		if r.Topic == "" {
			return out, fmt.Errorf("batch from %s: record without topic", origin)
		}
		if !validTopic(r.Topic) {
			return out, fmt.Errorf("batch from %s: invalid topic name %q", origin, r.Topic)
		}
		pk := packets.Packet{
			FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: min(r.QoS, 2), Retain: r.Retain},
			TopicName:   r.Topic,
			Payload:     payload,
			Properties: packets.Properties{
				ContentType: r.ContentType, ResponseTopic: r.ResponseTopic, CorrelationData: r.CorrelationData,
				MessageExpiryInterval: r.Expiry,
			},
		}
		for _, kv := range r.UserProperties {
			if len(kv) == 2 {
				pk.Properties.User = append(pk.Properties.User, packets.UserProperty{Key: kv[0], Val: kv[1]})
			}
		}
		if r.PayloadFormat != nil {
			pk.Properties.PayloadFormat, pk.Properties.PayloadFormatFlag = *r.PayloadFormat, true
		}
		out = append(out, message{origin: origin, writer: origin, ts: r.Time, pk: pk})
	}
	return out, nil
}
