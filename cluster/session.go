package cluster

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
	amqp091 "github.com/rabbitmq/amqp091-go"
)

// session is one connection to RabbitMQ and everything built on it. A
// session never reconnects: when it dies, the run loop tears it down and
// builds a new one, which declares the queue and binds every wanted key
// again, so no state leaks from one connection to the next.
type session struct {
	f    *Federation
	conn *amqp091.Connection

	// pub publishes messages in confirm mode; amqp091 serialises
	// concurrent publishers on it.
	pub *amqp091.Channel
	// ctl carries declarations and bindings, used by open and then only
	// by the binder goroutine.
	ctl *amqp091.Channel
	// cons consumes the node's queue and acknowledges its deliveries.
	cons *amqp091.Channel
	tag  string

	bound     map[string]bool // binding keys in place; binder only
	idKeys    int             // how many of them are user or client keys; binder only
	blocked   atomic.Bool     // RabbitMQ blocks publishers (resource alarm)
	published atomic.Uint64   // publishes handed to the channel
	settled   atomic.Uint64   // publishes RabbitMQ confirmed or refused
	// window holds a token per publish RabbitMQ has not confirmed yet. It
	// bounds how far publishers run ahead of the broker (they wait for
	// room: back-pressure), and with it amqp091's table of pending
	// confirmations, which it scans on every acknowledgement.
	window   chan struct{}
	stalled  atomic.Bool // publishers waited a whole PublishPatience in vain
	slowBind atomic.Bool // a subscription waited a whole BindWait (logged)
	out      *outbox     // local messages on their way to the sender

	dead     chan struct{} // closed by die
	err      error         // why the session died; set before dead closes
	dieOnce  sync.Once
	consDone chan struct{} // closed when the consume loop has returned
	synced   chan struct{} // closed when the first peer has answered the sync request
	syncOnce sync.Once
	bg       sync.WaitGroup
}

func newSession(f *Federation, conn *amqp091.Connection) *session {
	return &session{
		f:        f,
		conn:     conn,
		tag:      f.opts.Node + " federation",
		bound:    make(map[string]bool),
		window:   make(chan struct{}, f.opts.Window),
		out:      newOutbox(outboxSize),
		dead:     make(chan struct{}),
		consDone: make(chan struct{}),
		synced:   make(chan struct{}),
	}
}

// open declares the topology, binds the node's queue for every wanted key,
// and starts the binder, the confirmation counter and the consumer.
func (s *session) open() error {
	f := s.f
	closes := s.conn.NotifyClose(make(chan *amqp091.Error, 1))
	blocks := s.conn.NotifyBlocked(make(chan amqp091.Blocking, 1))
	s.bg.Add(1)
	go s.watchConn(closes, blocks)

	var err error
	if s.ctl, err = s.channel("control"); err != nil {
		return err
	}
	if err := s.ctl.ExchangeDeclare(f.msgEx, amqp091.ExchangeTopic, false, false, false, false, nil); err != nil {
		return fmt.Errorf("declare exchange %s: %w", f.msgEx, err)
	}
	if err := s.ctl.ExchangeDeclare(f.retEx, amqp091.ExchangeFanout, false, false, false, false, nil); err != nil {
		return fmt.Errorf("declare exchange %s: %w", f.retEx, err)
	}
	if _, err := s.ctl.QueueDeclare(f.queue, false, true, true, false, nil); err != nil {
		var ae *amqp091.Error
		if errors.As(err, &ae) && ae.Code == amqp091.ResourceLocked {
			// Another connection owns it: the same node id twice, or our
			// previous connection not yet reaped by RabbitMQ.
			return fmt.Errorf("declare queue %s: node id %q may be in use by another process: %w", f.queue, f.opts.Node, err)
		}
		return fmt.Errorf("declare queue %s: %w", f.queue, err)
	}
	if err := s.ctl.QueueBind(f.queue, "", f.retEx, false, nil); err != nil {
		return fmt.Errorf("bind queue %s to %s: %w", f.queue, f.retEx, err)
	}
	for _, key := range []string{LongKey, UsersKey} {
		if err := s.ctl.QueueBind(f.queue, key, f.msgEx, false, nil); err != nil {
			return fmt.Errorf("bind queue %s to %s: %w", f.queue, f.msgEx, err)
		}
	}
	// The queue is new, so every key wanted now is bound here; changes
	// from now on are the binder's.
	keys, done := f.in.take(true)
	err = s.apply(keys)
	close(done)
	if err != nil {
		return err
	}
	s.bg.Add(1)
	go s.binder()

	if s.pub, err = s.channel("publish"); err != nil {
		return err
	}
	if err := s.pub.Confirm(false); err != nil {
		return fmt.Errorf("confirm mode: %w", err)
	}
	confirms := s.pub.NotifyPublish(make(chan amqp091.Confirmation, 4096))
	returns := s.pub.NotifyReturn(make(chan amqp091.Return, 16))
	s.bg.Add(3)
	go s.count(confirms)
	go s.send()
	go s.returned(returns)

	if s.cons, err = s.channel("consume"); err != nil {
		return err
	}
	if err := s.cons.Qos(f.opts.Prefetch, 0, false); err != nil {
		return fmt.Errorf("set prefetch: %w", err)
	}
	deliveries, err := s.cons.Consume(f.queue, s.tag, false, true, false, false, nil)
	if err != nil {
		return fmt.Errorf("consume queue %s: %w", f.queue, err)
	}
	s.bg.Add(1)
	go s.consume(deliveries)
	return nil
}

// watchConn ends the session when the connection closes and tracks
// connection.blocked. amqp091 sends on these channels synchronously, so
// they are drained until the connection is gone.
func (s *session) watchConn(closes <-chan *amqp091.Error, blocks <-chan amqp091.Blocking) {
	defer s.bg.Done()
	for closes != nil {
		select {
		case e, ok := <-closes:
			if ok && e != nil {
				s.die(e)
			}
			closes = nil
		case b, ok := <-blocks:
			if !ok {
				blocks = nil
				continue
			}
			s.blocked.Store(b.Active)
			if b.Active {
				s.f.log.Warn().Str("reason", b.Reason).Msg("federation: rabbitmq blocked publishing, local messages stay local until it unblocks")
			} else {
				s.f.log.Info().Msg("federation: rabbitmq unblocked publishing")
			}
		}
	}
	for range blocks {
	}
}

// channel opens a channel whose abnormal closing ends the session.
func (s *session) channel(what string) (*amqp091.Channel, error) {
	ch, err := s.conn.Channel()
	if err != nil {
		return nil, fmt.Errorf("open %s channel: %w", what, err)
	}
	closes := ch.NotifyClose(make(chan *amqp091.Error, 1))
	s.bg.Add(1)
	go func() {
		defer s.bg.Done()
		if e, ok := <-closes; ok && e != nil {
			s.die(fmt.Errorf("%s channel: %w", what, e))
		}
	}()
	return ch, nil
}

// die marks the session dead; the run loop notices and tears it down.
func (s *session) die(err error) {
	s.dieOnce.Do(func() {
		s.err = err
		close(s.dead)
	})
}

// teardown closes the connection and waits for the session's goroutines.
// Publishes not yet confirmed are counted as unconfirmed: they may or may
// not have reached the other nodes.
func (s *session) teardown() {
	s.die(errors.New("session closed"))
	if err := s.conn.Close(); err != nil && !errors.Is(err, amqp091.ErrClosed) {
		s.f.log.Debug().Err(err).Msg("federation: close connection")
	}
	s.bg.Wait()
	if p, c := s.published.Load(), s.settled.Load(); p > c {
		s.f.stats.unconfirmed.Add(p - c)
	}
}

// shutdown leaves gracefully: no new deliveries, the ones being handled
// finished and acknowledged, the outbox sent and its publishes confirmed
// (until ctx ends), then the connection closes.
func (s *session) shutdown(ctx context.Context) error {
	var err error
	if cerr := s.cons.Cancel(s.tag, false); cerr != nil {
		s.f.log.Debug().Err(cerr).Msg("federation: cancel consumer")
	}
	select {
	case <-s.consDone:
	case <-ctx.Done():
		err = fmt.Errorf("waiting for the consumer: %w", ctx.Err())
	case <-s.dead:
	}
	// The sender and the confirmations finish on their own; polling them
	// is simpler than a notification for the one time anybody waits.
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for err == nil && (len(s.out.room) > 0 || s.settled.Load() < s.published.Load()) {
		select {
		case <-ctx.Done():
			err = fmt.Errorf("waiting for publisher confirms: %w", ctx.Err())
		case <-s.dead:
			err = fmt.Errorf("connection lost while closing: %w", s.err)
		case <-tick.C:
		}
	}
	s.teardown()
	return err
}

// publish hands a message to RabbitMQ without waiting for its
// confirmation, which count tallies. When Window publishes await
// confirmation it waits for room, up to PublishPatience (see acquire).
func (s *session) publish(exchange, key string, msg amqp091.Publishing) error {
	if err := s.acquire(s.window, "confirms"); err != nil {
		return err
	}
	if err := s.pub.PublishWithContext(s.f.life, exchange, key, false, false, msg); err != nil {
		<-s.window
		return fmt.Errorf("publish to %s: %w", exchange, err)
	}
	s.published.Add(1)
	return nil
}

// count tallies publisher confirmations. A nack means RabbitMQ could not
// take the message (an internal error in a queue): it is counted, and the
// first one of a session is logged.
func (s *session) count(confirms <-chan amqp091.Confirmation) {
	defer s.bg.Done()
	logged := false
	for c := range confirms {
		s.settled.Add(1)
		<-s.window
		if s.stalled.CompareAndSwap(true, false) {
			s.f.log.Info().Msg("federation: rabbitmq confirms again")
		}
		if !c.Ack {
			s.f.stats.nacked.Add(1)
			if !logged {
				logged = true
				s.f.log.Warn().Uint64("delivery_tag", c.DeliveryTag).Msg("federation: rabbitmq refused a message (nack); counting further ones without logging")
			}
		}
	}
}

// binder makes the queue's bindings follow the wanted keys.
func (s *session) binder() {
	defer s.bg.Done()
	for {
		select {
		case <-s.f.in.kick:
		case <-s.dead:
			return
		}
		keys, done := s.f.in.take(false)
		err := s.apply(keys)
		close(done)
		if err != nil {
			s.die(err)
			return
		}
	}
}

// apply binds the wanted keys and unbinds the others.
func (s *session) apply(keys map[string]bool) error {
	f := s.f
	defer func() {
		f.stats.bindings.Store(int64(len(s.bound) - s.idKeys))
		f.stats.routes.Store(int64(s.idKeys))
	}()
	for key, want := range keys {
		switch {
		case want && !s.bound[key]:
			if err := s.ctl.QueueBind(f.queue, key, f.msgEx, false, nil); err != nil {
				return fmt.Errorf("bind %s: %w", key, err)
			}
			s.bound[key] = true
			if isIDKey(key) {
				s.idKeys++
			}
		case !want && s.bound[key]:
			if err := s.ctl.QueueUnbind(f.queue, key, f.msgEx, nil); err != nil {
				return fmt.Errorf("unbind %s: %w", key, err)
			}
			delete(s.bound, key)
			if isIDKey(key) {
				s.idKeys--
			}
		}
	}
	return nil
}

// bindings returns the number of subscription bindings in place.
func (s *session) bindings() int { return int(s.f.stats.bindings.Load()) }

// consume handles deliveries one after the other, which keeps each
// publisher's order, and acknowledges them in batches: after ackBatch of
// them, or as soon as no further delivery is waiting. A message is
// acknowledged only after the local engine has handed it to every
// subscriber.
func (s *session) consume(deliveries <-chan amqp091.Delivery) {
	defer s.bg.Done()
	defer close(s.consDone)
	var last uint64
	pending := 0
	flush := func() {
		if pending == 0 {
			return
		}
		if err := s.cons.Ack(last, true); err != nil {
			s.die(fmt.Errorf("acknowledge deliveries: %w", err))
		}
		pending = 0
	}
	for {
		var d amqp091.Delivery
		var ok bool
		select {
		case d, ok = <-deliveries:
		default:
			flush()
			d, ok = <-deliveries
		}
		if !ok {
			flush()
			return
		}
		s.handle(&d)
		last = d.DeliveryTag
		pending++
		if pending >= ackBatch {
			flush()
		}
	}
}

// handle dispatches one delivery.
func (s *session) handle(d *amqp091.Delivery) {
	f := s.f
	if s.control(d) || s.users(d) {
		return
	}
	m, err := decode(d)
	if err != nil {
		f.stats.malformed.Add(1)
		f.log.Debug().Err(err).Msg("federation: dropped a delivery")
		return
	}
	if m.origin == f.opts.Node {
		// The node's own message back (its fanout copies, or a binding
		// made by hand): delivered here already.
		return
	}
	switch m.typ {
	case "":
		f.deliver(&m)
	case TypeSync:
		f.adopt(&m)
	case TypeSyncRequest:
		if err := s.answer(d.ReplyTo); err != nil {
			s.die(fmt.Errorf("answer retained sync request of %s: %w", m.origin, err))
		}
	case TypeSyncDone:
		s.syncOnce.Do(func() { close(s.synced) })
	case TypeBatch:
		msgs, err := decodeBatch(m.origin, d.Body)
		if err != nil {
			f.stats.malformed.Add(1)
			f.log.Debug().Err(err).Msg("federation: dropped part of a batch")
		}
		for i := range msgs {
			f.deliver(&msgs[i])
		}
	default:
		f.stats.malformed.Add(1)
	}
}

// sync brings the retained messages of this node and its peers up to
// date with each other after the node (re)joins: it asks every peer for
// its retained messages, and offers its own, tombstones included, to all
// of them. Each side keeps, per topic, the latest version.
func (s *session) sync() error {
	f := s.f
	req := amqp091.Publishing{Headers: amqp091.Table{HeaderOrigin: f.opts.Node, HeaderType: TypeSyncRequest}, ReplyTo: f.queue}
	if err := s.publish(f.retEx, "", req); err != nil {
		return err
	}
	return s.offer(f.retEx, "")
}

// answer sends this node's retained messages to the queue of a node that
// asked for them.
func (s *session) answer(queue string) error {
	if queue == "" {
		return nil
	}
	if err := s.offer("", queue); err != nil {
		return err
	}
	done := amqp091.Publishing{Headers: amqp091.Table{HeaderOrigin: s.f.opts.Node, HeaderType: TypeSyncDone}}
	return s.publish("", queue, done)
}

// offer publishes every retained message and tombstone this node knows,
// with its stamp, as sync messages.
func (s *session) offer(exchange, key string) error {
	f := s.f
	for _, pk := range f.broker.Retained() {
		if !Federated(pk.TopicName) || len(pk.Payload) == 0 {
			continue
		}
		st, ok := f.ret.get(pk.TopicName)
		if !ok || !st.present {
			// Retained before the Federation learnt of it (an engine
			// race with a concurrent clear): date it by its creation.
			st = stamp{ts: pk.Created * 1e9, origin: f.opts.Node}
		}
		pk.FixedHeader.Retain = true
		if err := s.publish(exchange, key, encode(f.opts.Node, &pk, st.ts, TypeSync, st.origin)); err != nil {
			return err
		}
	}
	for topic, st := range f.ret.tombstones() {
		pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Retain: true}, TopicName: topic}
		if err := s.publish(exchange, key, encode(f.opts.Node, &pk, st.ts, TypeSync, st.origin)); err != nil {
			return err
		}
	}
	return nil
}
