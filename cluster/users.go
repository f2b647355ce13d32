package cluster

import (
	"context"
	"encoding/json"
	"fmt"
	"hash/maphash"
	"strconv"
	"strings"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/colonymq/colony/server"
)

// Routing key classes of users and clients, next to the topic classes "t"
// and "s": a node binds "user.<uid>" while the user has a connection there
// and "client.<cid>" while it holds the client's session (connected or
// not), so pushes, kicks and takeovers reach exactly the nodes concerned.
const (
	classUser   = "user"
	classClient = "client"
)

// Control message types (HeaderType) for users and sessions.
const (
	// TypePush carries a push to a user's (key user.<uid>) or a client's
	// (key client.<cid>) connections: headers topic, qos; body the payload.
	TypePush = "push"
	// TypeKick disconnects a user's or a client's connections: header reason.
	TypeKick = "kick"
	// TypeTakeover asks the node holding a client's session to release it
	// (key client.<cid>, header client). With reply_to and correlation_id
	// the node answers with TypeSession; with header clean=true it drops
	// the session and does not answer.
	TypeTakeover = "takeover"
	// TypeSession answers a takeover: the session as JSON (the records the
	// store keeps: client, subscriptions, inflight), or an empty body when
	// the node had no session to hand over.
	TypeSession = "session"
)

// Header names of the control messages.
const (
	HeaderUser   = "user"
	HeaderClient = "client"
	HeaderReason = "reason"
	HeaderClean  = "clean"
	// HeaderWait is how long, in milliseconds, the node asking for a
	// session waits for it (takeover): the holder gives the session up
	// only if it can do so well within that, since one that arrives after
	// the asker gave up is lost.
	HeaderWait = "wait_ms"
)

// DefaultTakeoverWait bounds how long a connecting client waits for
// another node to hand its persistent session over.
const DefaultTakeoverWait = 3 * time.Second

// UserKey returns the routing key of pushes and kicks for a user; ok is
// false when it would exceed 255 bytes.
func UserKey(userID string) (string, bool) { return idKey(classUser, userID) }

// ClientKey returns the routing key of pushes, kicks and takeovers for a
// client id; ok is false when it would exceed 255 bytes.
func ClientKey(clientID string) (string, bool) { return idKey(classClient, clientID) }

func idKey(class, id string) (string, bool) {
	if id == "" {
		return "", false
	}
	k := class + "." + EscapeLevel(id)
	return k, len(k) <= maxKey
}

// isIDKey reports whether a binding key is a user's or a client's rather
// than a subscription filter's.
func isIDKey(key string) bool {
	return strings.HasPrefix(key, classUser+".") || strings.HasPrefix(key, classClient+".")
}

var _ server.Cluster = (*Federation)(nil)

// UserPresent binds the node's queue for a user's pushes and kicks while
// the user has a connection here, and tells the other nodes (see
// UsersKey).
func (f *Federation) UserPresent(userID string, present bool) {
	f.dir.present(userID, present)
	key, ok := UserKey(userID)
	if !ok {
		return
	}
	r := subRef{client: classUser, raw: key}
	if present {
		f.in.add(r)
	} else {
		f.in.remove(r)
	}
}

// PushUser sends a push to the user's connections on the other nodes.
func (f *Federation) PushUser(userID, topic string, payload []byte, qos byte) {
	key, ok := UserKey(userID)
	f.push(key, ok, amqp091.Table{HeaderUser: userID}, topic, payload, qos)
}

// PushClient sends a push to the client on whichever other node has it.
func (f *Federation) PushClient(clientID, topic string, payload []byte, qos byte) {
	key, ok := ClientKey(clientID)
	f.push(key, ok, amqp091.Table{HeaderClient: clientID}, topic, payload, qos)
}

func (f *Federation) push(key string, ok bool, h amqp091.Table, topic string, payload []byte, qos byte) {
	if !ok {
		return
	}
	h[HeaderTopic], h[HeaderQoS] = topic, int32(qos)
	mode := amqp091.Transient
	if qos > 0 {
		mode = amqp091.Persistent
	}
	f.control(key, TypePush, h, amqp091.Publishing{Body: payload, DeliveryMode: mode})
}

// KickUser disconnects the user's connections on the other nodes.
func (f *Federation) KickUser(userID, reason string) {
	if key, ok := UserKey(userID); ok {
		f.control(key, TypeKick, amqp091.Table{HeaderUser: userID, HeaderReason: reason}, amqp091.Publishing{})
	}
}

// KickClient disconnects the client on whichever other node has it.
func (f *Federation) KickClient(clientID, reason string) {
	if key, ok := ClientKey(clientID); ok {
		f.control(key, TypeKick, amqp091.Table{HeaderClient: clientID, HeaderReason: reason}, amqp091.Publishing{})
	}
}

// control publishes a control message to colony.msg; without a connection
// it is counted as unsent, like a message.
func (f *Federation) control(key, typ string, h amqp091.Table, msg amqp091.Publishing) {
	s := f.sess.Load()
	if s == nil {
		f.stats.unsent.Add(1)
		return
	}
	h[HeaderOrigin], h[HeaderType] = f.opts.Node, typ
	msg.Headers = h
	if err := s.publish(f.msgEx, key, msg); err != nil {
		f.stats.unsent.Add(1)
	}
}

// track binds the node's queue for a client's key while the engine holds
// its session here. owners remembers which engine client that is, so the
// end of a connection another local connection has taken over does not
// unbind the key.
func (f *Federation) track(cl *mqtt.Client) {
	key, ok := ClientKey(cl.ID)
	if !ok || cl.Net.Inline {
		return
	}
	f.ownersMu.Lock()
	f.owners[cl.ID] = cl
	f.ownersMu.Unlock()
	f.in.add(subRef{client: cl.ID, raw: key})
}

// untrack unbinds a client's key once its session has left the engine.
func (f *Federation) untrack(cl *mqtt.Client) {
	key, ok := ClientKey(cl.ID)
	if !ok {
		return
	}
	f.ownersMu.Lock()
	mine := f.owners[cl.ID] == cl
	if mine {
		delete(f.owners, cl.ID)
	}
	f.ownersMu.Unlock()
	if mine {
		f.in.remove(subRef{client: cl.ID, raw: key})
	}
}

// claim runs when a client connects (authenticated, before the engine looks
// for its session): another node holding a connection or session with the
// same client id gives it up. A clean start just tells that node to drop
// it; otherwise the node hands the session over and claim installs it
// here, waiting at most TakeoverWait. A client id no node holds is
// unroutable, which RabbitMQ reports at once, so a new client never waits.
func (f *Federation) claim(clientID string, keep bool) {
	key, ok := ClientKey(clientID)
	s := f.sess.Load()
	if !ok || s == nil {
		return
	}
	// Two connections of one client id here claim in turn: the second
	// finds the session the first adopted (and takes it over locally).
	// Side by side, the other node handed the session to one of them, and
	// when that answer came after the other had started afresh, it was
	// dropped with its queued messages.
	unlock := f.lockClaim(clientID)
	defer unlock()
	if f.broker.HasSession(clientID) {
		return
	}
	h := amqp091.Table{HeaderOrigin: f.opts.Node, HeaderType: TypeTakeover, HeaderClient: clientID}
	if !keep {
		// A clean start waits too, for the other node to have ended the
		// session: told and not waited for, it still had the session when
		// the client, CONNACKed here, reconnected there, which gave the
		// client the ended session back, or the late takeover then closed
		// that newest connection.
		h[HeaderClean] = true
	}
	h[HeaderWait] = f.opts.TakeoverWait.Milliseconds()
	corr := strconv.FormatUint(f.corr.Add(1), 36)
	ch := make(chan *server.SessionState, 1)
	f.ownersMu.Lock()
	f.waiters[corr] = ch
	f.ownersMu.Unlock()
	defer func() {
		f.ownersMu.Lock()
		delete(f.waiters, corr)
		f.ownersMu.Unlock()
		select { // an answer that came as the wait ended (resolve sends under ownersMu)
		case st := <-ch:
			f.lateSession(st)
		default:
		}
	}()
	msg := amqp091.Publishing{Headers: h, ReplyTo: f.queue, CorrelationId: corr}
	if err := s.publishMandatory(f.msgEx, key, msg); err != nil {
		f.log.Debug().Err(err).Str("client", clientID).Msg("federation: takeover not sent")
		return
	}
	tm := time.NewTimer(f.opts.TakeoverWait)
	defer tm.Stop()
	select {
	case st := <-ch:
		if st == nil || !keep {
			return
		}
		if !f.broker.AdoptSession(st) {
			f.lostSession(st, "a connection started afresh here meanwhile")
			return
		}
		refs := make([]subRef, 0, len(st.Subscriptions))
		for _, sub := range st.Subscriptions {
			refs = append(refs, subRef{client: clientID, filter: sub.Filter})
		}
		if round := f.in.add(refs...); round != nil {
			f.awaitBinding(round)
		}
		f.stats.takeovers.Add(1)
		f.log.Info().Str("client", clientID).Int("subscriptions", len(st.Subscriptions)).
			Int("queued", len(st.Inflight)).Msg("session taken over from another node")
	case <-tm.C:
		f.log.Warn().Str("client", clientID).Dur("waited", f.opts.TakeoverWait).
			Msg("federation: no answer to a session takeover; the client starts without its old session")
	case <-s.dead:
	case <-f.life.Done():
	}
}

// resolve hands a takeover answer (nil: no session) to the waiting claim.
// A session that comes after its claim gave up is lost: the other node no
// longer has it, and the client started afresh here. releaseBudget makes
// that rare; it is logged and counted, never silent.
func (f *Federation) resolve(corr string, st *server.SessionState) {
	f.ownersMu.Lock()
	// Sent under the lock: claim, which removes its waiter under it and
	// then looks in the channel, sees every answer it did not take.
	ch := f.waiters[corr]
	sent := false
	if ch != nil {
		select {
		case ch <- st:
			sent = true
		default:
		}
	}
	f.ownersMu.Unlock()
	if !sent {
		f.lateSession(st)
	}
}

// lateSession reports a session handed over after its claim stopped
// waiting (nil: an answer without one, nothing lost).
func (f *Federation) lateSession(st *server.SessionState) {
	f.lostSession(st, "handed over after the takeover wait: the client had started without it")
}

// lostSession logs and counts a session handed over here that could not be
// installed (nil: none was, nothing lost).
func (f *Federation) lostSession(st *server.SessionState, why string) {
	if st == nil {
		return
	}
	f.stats.lateSessions.Add(1)
	f.log.Error().Str("client", st.Client.ID).Int("queued", len(st.Inflight)).Int("subscriptions", len(st.Subscriptions)).
		Str("why", why).Msg("federation: a session handed over is lost")
}

// lockClaim locks the stripe of clientID's claims and returns its unlock.
func (f *Federation) lockClaim(clientID string) (unlock func()) {
	mu := &f.claimLocks[stripe(clientID, len(f.claimLocks))]
	mu.Lock()
	return mu.Unlock
}

// lockRelease locks the stripe of clientID's releases and returns its
// unlock. Claims and releases have stripes of their own: a node claiming
// a client id while another claims it from this node must not wait for
// its own claim to release.
func (f *Federation) lockRelease(clientID string) (unlock func()) {
	mu := &f.releaseLocks[stripe(clientID, len(f.releaseLocks))]
	mu.Lock()
	return mu.Unlock
}

var stripeSeed = maphash.MakeSeed()

// stripe maps id to one of n stripes.
func stripe(id string, n int) int { return int(maphash.String(stripeSeed, id) % uint64(n)) }

// control handles the user and session control messages; it reports false
// for deliveries of other kinds.
func (s *session) control(d *amqp091.Delivery) bool {
	f := s.f
	typ := headerString(d.Headers, HeaderType)
	switch typ {
	case TypePush, TypeKick, TypeTakeover, TypeSession:
	default:
		return false
	}
	origin := headerString(d.Headers, HeaderOrigin)
	if origin == "" || origin == f.opts.Node {
		return true
	}
	user, client := headerString(d.Headers, HeaderUser), headerString(d.Headers, HeaderClient)
	switch typ {
	case TypePush:
		topic := headerString(d.Headers, HeaderTopic)
		qos, _ := headerInt(d.Headers, HeaderQoS)
		q := byte(min(max(qos, 0), 1))
		var err error
		if user != "" {
			_, err = f.broker.PushUserLocal(user, topic, d.Body, q)
		} else if client != "" {
			err = f.broker.PushClientLocal(client, topic, d.Body, q)
		}
		if err != nil {
			f.log.Debug().Err(err).Str("origin", origin).Msg("federation: push from another node not delivered")
		}
	case TypeKick:
		reason := headerString(d.Headers, HeaderReason)
		if user != "" {
			f.broker.KickUserLocal(user, reason)
		} else if client != "" {
			_ = f.broker.KickClientLocal(client, reason) // gone already: nothing to do
		}
	case TypeTakeover:
		if client == "" {
			return true
		}
		clean, _ := d.Headers[HeaderClean].(bool)
		wait, _ := d.Headers[HeaderWait].(int64)
		// Releasing waits for the old connection to close: not on the
		// consumer, which would hold up every other delivery.
		s.bg.Add(1)
		budget := f.opts.TakeoverWait // a clean start on an older node: nobody waits for an answer
		if d.ReplyTo != "" {
			budget = releaseBudget(f.opts.TakeoverWait, time.Duration(wait)*time.Millisecond)
		}
		go s.release(client, !clean, d.ReplyTo, d.CorrelationId, origin, budget)
	case TypeSession:
		var st *server.SessionState
		if len(d.Body) > 0 {
			st = new(server.SessionState)
			if err := json.Unmarshal(d.Body, st); err != nil {
				f.stats.malformed.Add(1)
				f.log.Warn().Err(err).Str("origin", origin).Msg("federation: malformed session handed over; the client starts without it")
				st = nil
			}
		}
		f.resolve(d.CorrelationId, st)
	}
	return true
}

// releaseBudget is how long a node may take to give a session up (the old
// connection to close) for a takeover whose asker waits asked (0: not
// said; an older node): three quarters of the shorter wait, so that the
// answer has the last quarter to get there. Past it the node keeps the
// session and answers that it has none: the client starts afresh there,
// and its session stays here, for its next connection to take over.
func releaseBudget(own, asked time.Duration) time.Duration {
	if asked > 0 && asked < own {
		own = asked
	}
	return own * 3 / 4
}

// release gives up this node's session of a client that connected to
// another node and, when asked, sends it there, within budget.
func (s *session) release(clientID string, keep bool, replyTo, corr, to string, budget time.Duration) {
	defer s.bg.Done()
	f := s.f
	ctx, cancel := context.WithTimeout(f.life, budget)
	defer cancel()
	// Two takeovers of one client (from two nodes, or a resume and a
	// clean start) release in turn: the second finds nothing to release.
	unlock := f.lockRelease(clientID)
	st, err := f.broker.ReleaseSession(ctx, clientID, keep)
	unlock()
	if err != nil {
		f.log.Warn().Err(err).Str("client", clientID).Str("to", to).Msg("federation: session not handed over")
	}
	if replyTo == "" {
		return
	}
	msg := amqp091.Publishing{Headers: amqp091.Table{HeaderOrigin: f.opts.Node, HeaderType: TypeSession}, CorrelationId: corr}
	if st != nil {
		body, err := json.Marshal(st)
		if err != nil {
			f.log.Warn().Err(err).Str("client", clientID).Msg("federation: session not handed over")
		} else {
			msg.Body, msg.DeliveryMode = body, amqp091.Persistent
		}
	}
	if err := s.publish("", replyTo, msg); err != nil {
		f.log.Warn().Err(err).Str("client", clientID).Str("to", to).Msg("federation: session handover not sent; its messages are lost")
	}
}

// returned resolves takeovers RabbitMQ could not route: no other node
// holds the client's session.
func (s *session) returned(returns <-chan amqp091.Return) {
	defer s.bg.Done()
	for r := range returns {
		if headerString(r.Headers, HeaderType) == TypeTakeover {
			s.f.resolve(r.CorrelationId, nil)
		}
	}
}

// publishMandatory is publish for messages whose absence of a route the
// caller must learn about (basic.return, see returned).
func (s *session) publishMandatory(exchange, key string, msg amqp091.Publishing) error {
	if err := s.acquire(s.window, "confirms"); err != nil {
		return err
	}
	if err := s.pub.PublishWithContext(s.f.life, exchange, key, true, false, msg); err != nil {
		<-s.window
		return fmt.Errorf("publish to %s: %w", exchange, err)
	}
	s.published.Add(1)
	return nil
}
