package amqp

import (
	"context"
	"errors"
	"fmt"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/colonymq/colony/rpc"
)

// serveModule declares the two queues of module, binds them and consumes
// them on a channel of their own, so that a busy module's acks and replies
// do not queue behind another's.
//
// The shared queue is auto-delete: RabbitMQ deletes it when its last
// consumer goes, so a mandatory publish to a module no node serves any
// more is returned instead of piling up. The pinned queue is exclusive to
// this connection and goes with it.
func (s *session) serveModule(module string) error {
	ch, err := s.channel("serve " + module)
	if err != nil {
		return err
	}
	opts := &s.t.opts
	// global=false: RabbitMQ applies the limit to each consumer of the
	// channel, so both queues get the full prefetch.
	if err := ch.Qos(opts.prefetch(module), 0, false); err != nil {
		return fmt.Errorf("set prefetch for %s: %w", module, err)
	}
	cancels := ch.NotifyCancel(make(chan string, 2))
	s.bg.Add(1)
	go func() {
		defer s.bg.Done()
		for tag := range cancels {
			// The broker cancels a consumer when its queue is deleted
			// (by an operator, or a peer declaring it differently);
			// starting over re-declares it.
			s.die(fmt.Errorf("rabbitmq cancelled consumer %s", tag))
		}
	}()
	queues := []struct {
		name, key string
		exclusive bool
	}{
		{ModuleQueue(opts.Prefix, module), module, false},
		{NodeQueue(opts.Prefix, module, opts.Node), NodeKey(module, opts.Node), true},
	}
	for _, q := range queues {
		if _, err := ch.QueueDeclare(q.name, false, true, q.exclusive, false, nil); err != nil {
			var ae *amqp091.Error
			if q.exclusive && errors.As(err, &ae) && ae.Code == amqp091.ResourceLocked {
				// Another connection owns the node's queue: the same node
				// id twice, or our previous connection not yet reaped.
				return fmt.Errorf("declare queue %s: node id %q may be in use by another process: %w", q.name, opts.Node, err)
			}
			return fmt.Errorf("declare queue %s: %w", q.name, err)
		}
		if err := ch.QueueBind(q.name, q.key, s.t.exchange, false, nil); err != nil {
			return fmt.Errorf("bind queue %s: %w", q.name, err)
		}
		tag := opts.Node + " " + q.name
		deliveries, err := ch.Consume(q.name, tag, false, false, false, false, nil)
		if err != nil {
			return fmt.Errorf("consume queue %s: %w", q.name, err)
		}
		s.consumers = append(s.consumers, consumer{ch: ch, tag: tag})
		s.loops.Add(1)
		go s.consume(ch, module, deliveries)
	}
	return nil
}

// consume hands every delivery to a goroutine of its own. Their number is
// bounded by the prefetch, and the handler's own concurrency by Local's
// worker pool.
func (s *session) consume(ch *amqp091.Channel, module string, deliveries <-chan amqp091.Delivery) {
	defer s.loops.Done()
	for d := range deliveries {
		s.t.served.Add(1)
		s.t.inflight.Add(1)
		go s.serve(ch, module, d)
	}
}

// serve executes one delivery on Local, replies to it unless it is a
// notify, and acknowledges it. The ack comes last, so that if this node
// dies mid-call RabbitMQ hands the request to another node still
// consuming the module's queue.
func (s *session) serve(ch *amqp091.Channel, module string, d amqp091.Delivery) {
	t := s.t
	defer t.served.Done()
	defer t.inflight.Add(-1)
	t.stats.served.Add(1)

	timeout := t.opts.ServeTimeout
	if ttl, ok := parseExpiration(d.Expiration); ok {
		// The TTL counts from publishing, so this deadline is a little
		// late by the time spent in the queue; the caller enforces its own.
		timeout = ttl
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	ctx = rpc.WithCaller(ctx, rpc.Caller{
		ClientID: headerString(d.Headers, HeaderClientID),
		UserID:   headerString(d.Headers, HeaderUserID),
		Username: headerString(d.Headers, HeaderUsername),
		Node:     headerString(d.Headers, HeaderSrc),
	})
	if tr := headerString(d.Headers, HeaderTrace); tr != "" {
		ctx = WithTrace(ctx, tr)
	}
	req := &rpc.Request{Module: module, Fn: headerString(d.Headers, HeaderFn), Arg: rpc.Raw(d.Body)}

	if d.ReplyTo == "" {
		// A notify: queue it on Local and let the handler run on its own.
		// Its failure reaches nobody, as on the local path.
		if err := t.opts.Local.Notify(ctx, req); err != nil {
			t.stats.dropped.Add(1)
		}
		s.ack(d)
		return
	}

	if timeout <= 0 {
		// Expired on arrival: the caller has given up, so don't run it.
		t.stats.expired.Add(1)
		s.ack(d)
		return
	}
	res, err := t.opts.Local.Call(ctx, req)
	var pub amqp091.Publishing
	if err == nil {
		var body []byte
		if body, err = rpc.Encode(res); err == nil {
			pub = amqp091.Publishing{ContentType: contentType(body), Body: body}
		} else {
			err = rpc.Errorf(rpc.CodeInternal, "encode %s.%s result: %w", module, req.Fn, err)
		}
	}
	if err != nil {
		pub = amqp091.Publishing{Headers: errorHeaders(err)}
	}
	pub.CorrelationId = d.CorrelationId
	if err := ch.Publish("", d.ReplyTo, false, false, pub); err != nil {
		// Only a closed channel fails a publish; the session is dying and
		// its death is logged once. The caller fails on its own.
		t.stats.lost.Add(1)
	}
	s.ack(d)
}

func (s *session) ack(d amqp091.Delivery) {
	if err := d.Ack(false); err != nil {
		// The channel is gone and RabbitMQ requeues the request itself.
		s.t.stats.lost.Add(1)
	}
}
