package amqp

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/colonymq/colony/rpc"
)

// openCalls opens the channel this node calls through: it declares the RPC
// exchange, consumes direct replies and listens for returned (unroutable)
// requests.
func (s *session) openCalls() error {
	ch, err := s.channel("call")
	if err != nil {
		return err
	}
	// durable=false, auto-delete=false: the exchange costs nothing when
	// idle, every node re-declares it after a broker restart, and an
	// auto-deleted exchange could vanish under a node about to publish.
	if err := ch.ExchangeDeclare(s.t.exchange, amqp091.ExchangeDirect, false, false, false, false, nil); err != nil {
		return fmt.Errorf("declare exchange %s: %w", s.t.exchange, err)
	}
	// amqp091 delivers returns synchronously from its reader goroutine,
	// so the buffer only smooths bursts; dispatch drains it.
	returns := ch.NotifyReturn(make(chan amqp091.Return, 64))
	// Direct reply-to requires no-ack, and a consumer on the channel
	// that publishes the requests.
	replies, err := ch.Consume(ReplyTo, "", true, false, false, false, nil)
	if err != nil {
		return fmt.Errorf("consume %s: %w", ReplyTo, err)
	}
	s.callCh = ch
	s.bg.Add(1)
	go s.dispatch(replies, returns)
	return nil
}

// dispatch hands replies and returned requests to the calls waiting for
// them. Replies for calls that gave up are dropped.
func (s *session) dispatch(replies <-chan amqp091.Delivery, returns <-chan amqp091.Return) {
	defer s.bg.Done()
	for replies != nil || returns != nil {
		select {
		case d, ok := <-replies:
			if !ok {
				replies = nil
				continue
			}
			s.resolve(d.CorrelationId, result{body: d.Body, err: replyError(d.Headers)})
		case r, ok := <-returns:
			if !ok {
				returns = nil
				continue
			}
			s.t.stats.returned.Add(1)
			s.resolve(r.CorrelationId, result{err: s.t.returnError(r)})
		}
	}
}

// returnError explains why RabbitMQ returned a request. NO_ROUTE means no
// queue is bound for the routing key: nobody serves the module (or the
// node the call was pinned to does not), unless a node that announced it
// is still counted alive. Then its queue is only missing for now: the node
// is reconnecting after a RabbitMQ restart, or just died and may come
// back, so the call is unavailable (worth retrying), not not_found, until
// the node re-declares its queue or misses its beats.
func (t *Transport) returnError(r amqp091.Return) error {
	if r.ReplyCode == amqp091.NoRoute {
		module, node, _ := strings.Cut(r.RoutingKey, "@")
		if t.peers.alive(module, node) {
			return rpc.Errorf(rpc.CodeUnavailable, "no queue bound for %q: its node is reconnecting to rabbitmq or has just stopped", r.RoutingKey)
		}
		return rpc.Errorf(rpc.CodeNotFound, "no node serves %q", r.RoutingKey)
	}
	return rpc.Errorf(rpc.CodeUnavailable, "rabbitmq returned call to %q: %d %s", r.RoutingKey, r.ReplyCode, r.ReplyText)
}

// Serves reports whether some other live node announced module. While
// RabbitMQ is unreachable it keeps reporting the modules known before, so
// that calls fail with rpc.ErrUnavailable rather than rpc.ErrNotFound; after
// Close it reports false. It is cheap enough to ask before every call.
func (t *Transport) Serves(module string) bool {
	if t.shut.Load() {
		return false
	}
	return t.peers.serves(module, t.sess.Load() != nil)
}

// Call publishes req and waits for the reply or for ctx to end, whichever
// comes first. The result is rpc.Raw JSON; errors are *rpc.Error with the
// code the serving node gave (or timeout, canceled, not_found when no node
// serves the module, unavailable when RabbitMQ cannot be reached). A call
// pinned to this node (req.Node) runs on Local directly.
func (t *Transport) Call(ctx context.Context, req *rpc.Request) (any, error) {
	if req.Node != "" && req.Node == t.opts.Node && t.opts.Local != nil {
		return t.opts.Local.Call(ctx, req)
	}
	s := t.sess.Load()
	if s == nil {
		return nil, t.unavailable(req)
	}
	pub, err := t.request(ctx, req, true)
	if err != nil {
		return nil, err
	}
	id := strconv.FormatUint(t.seq.Add(1), 36)
	pub.CorrelationId = id
	pub.ReplyTo = ReplyTo
	if pub.Headers[HeaderTrace] == nil {
		pub.Headers[HeaderTrace] = t.opts.Node + "-" + id
	}
	reply := make(chan result, 1)
	if err := s.register(id, reply); err != nil {
		return nil, err
	}
	t.stats.calls.Add(1)
	// mandatory: a request no queue takes comes back as basic.return,
	// which dispatch turns into not_found at once.
	if err := s.callCh.Publish(t.exchange, routingKey(req), true, false, pub); err != nil {
		s.forget(id)
		return nil, rpc.Errorf(rpc.CodeUnavailable, "call %s.%s: publish: %w", req.Module, req.Fn, err)
	}
	select {
	case r := <-reply:
		return r.value()
	case <-ctx.Done():
		s.forget(id)
		select {
		case r := <-reply: // the reply won the race after all
			return r.value()
		default:
		}
		return nil, ctxError(ctx, req)
	}
}

func (r result) value() (any, error) {
	if r.err != nil {
		return nil, r.err
	}
	return rpc.Raw(r.body), nil
}

// Notify publishes req without a reply_to: the serving node runs it and
// answers nothing. It fails only if the request could not be published; a
// request no node takes is dropped silently, like a local notify to a
// module that stops right after.
func (t *Transport) Notify(ctx context.Context, req *rpc.Request) error {
	if req.Node != "" && req.Node == t.opts.Node && t.opts.Local != nil {
		return t.opts.Local.Notify(ctx, req)
	}
	s := t.sess.Load()
	if s == nil {
		return t.unavailable(req)
	}
	if ctx.Err() != nil {
		return ctxError(ctx, req)
	}
	pub, err := t.request(ctx, req, false)
	if err != nil {
		return err
	}
	if pub.Headers[HeaderTrace] == nil {
		pub.Headers[HeaderTrace] = t.opts.Node + "-" + strconv.FormatUint(t.seq.Add(1), 36)
	}
	s.mu.Lock()
	closed, blocked := s.closed, s.blocked
	s.mu.Unlock()
	if closed || blocked {
		return t.unavailable(req)
	}
	t.stats.notifies.Add(1)
	if err := s.callCh.Publish(t.exchange, routingKey(req), false, false, pub); err != nil {
		return rpc.Errorf(rpc.CodeUnavailable, "notify %s.%s: publish: %w", req.Module, req.Fn, err)
	}
	return nil
}

// request builds the message of req: the encoded argument, its content
// type, and the headers carrying the handler name, this node, the trace id
// and the caller's identity. With withTTL the remaining time of ctx becomes
// the message's expiration, so RabbitMQ drops a request nobody took in time.
func (t *Transport) request(ctx context.Context, req *rpc.Request, withTTL bool) (amqp091.Publishing, error) {
	body, err := rpc.Encode(req.Arg)
	if err != nil {
		return amqp091.Publishing{}, rpc.Errorf(rpc.CodeBadRequest, "encode %s.%s argument: %w", req.Module, req.Fn, err)
	}
	h := amqp091.Table{HeaderFn: req.Fn, HeaderSrc: t.opts.Node}
	if tr := TraceFrom(ctx); tr != "" {
		h[HeaderTrace] = tr
	}
	if c, ok := rpc.CallerFrom(ctx); ok {
		setHeader(h, HeaderClientID, c.ClientID)
		setHeader(h, HeaderUserID, c.UserID)
		setHeader(h, HeaderUsername, c.Username)
	}
	pub := amqp091.Publishing{ContentType: contentType(body), Headers: h, Body: body}
	if withTTL {
		if dl, ok := ctx.Deadline(); ok {
			ttl, ok := expiration(dl)
			if !ok {
				return amqp091.Publishing{}, ctxError(ctx, req)
			}
			pub.Expiration = ttl
		}
	}
	return pub, nil
}

func setHeader(h amqp091.Table, key, v string) {
	if v != "" {
		h[key] = v
	}
}

// routingKey is the module, or module@node for a pinned call.
func routingKey(req *rpc.Request) string {
	if req.Node != "" {
		return NodeKey(req.Module, req.Node)
	}
	return req.Module
}

func (t *Transport) unavailable(req *rpc.Request) error {
	if t.shut.Load() {
		return rpc.Errorf(rpc.CodeUnavailable, "call %s.%s: amqp transport closed", req.Module, req.Fn)
	}
	return rpc.Errorf(rpc.CodeUnavailable, "call %s.%s: not connected to rabbitmq", req.Module, req.Fn)
}

// ctxError reports why ctx ended as a timeout or canceled error.
func ctxError(ctx context.Context, req *rpc.Request) error {
	err := ctx.Err()
	code := rpc.CodeCanceled
	switch {
	case err == nil:
		// The deadline is too close to express as a TTL but has not
		// passed yet: it will have by the time anyone could answer.
		err = context.DeadlineExceeded
		code = rpc.CodeTimeout
	case errors.Is(err, context.DeadlineExceeded):
		code = rpc.CodeTimeout
	}
	return rpc.Errorf(code, "call %s.%s: %w", req.Module, req.Fn, err)
}
