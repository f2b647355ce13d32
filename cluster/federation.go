package cluster

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
	amqp091 "github.com/rabbitmq/amqp091-go"
	"github.com/rs/zerolog"

	"github.com/colonymq/colony/internal/amqpconn"
	"github.com/colonymq/colony/server"
)

// Sentinel errors of the federation's lifecycle.
var (
	// ErrInvalidOptions is wrapped by New for options it cannot accept.
	ErrInvalidOptions = errors.New("invalid federation options")
	// ErrClosed is returned by Start after Close.
	ErrClosed = errors.New("federation closed")
	// ErrStarted is returned by a second Start.
	ErrStarted = errors.New("federation already started")
	// ErrStalled reports a message not federated because RabbitMQ took
	// nothing for Options.PublishPatience.
	ErrStalled = errors.New("rabbitmq is not taking messages")
)

// Defaults applied by New to zero fields of Options.
const (
	// DefaultURL is a RabbitMQ on this host with its stock guest account.
	DefaultURL = "amqp://guest:guest@127.0.0.1:5672/"
	// DefaultPrefetch is how many unacknowledged messages RabbitMQ hands
	// the node at once.
	DefaultPrefetch = 1024
	// DefaultConnectTimeout bounds each connection attempt.
	DefaultConnectTimeout = 5 * time.Second
	// DefaultBindWait bounds how long a subscription waits for its new
	// binding before its SUBACK is sent anyway.
	DefaultBindWait = 5 * time.Second
	// DefaultSyncWait bounds how long Start waits for a peer's retained
	// messages.
	DefaultSyncWait = 500 * time.Millisecond
	// DefaultWindow is how many published messages may await RabbitMQ's
	// confirmation at once.
	DefaultWindow = 512
	// DefaultPublishPatience is how long a publisher waits for room in
	// the window.
	DefaultPublishPatience = 5 * time.Second
)

// ackBatch is how many deliveries are acknowledged with one basic.ack at
// most; fewer when the queue runs dry.
const ackBatch = 128

// outboxSize is how many local messages may wait for the sender.
const outboxSize = 4096

// Options configures a Federation. New applies the defaults to zero fields.
type Options struct {
	// URL is the RabbitMQ URL. Default DefaultURL.
	URL string
	// Node is this node's id, unique in the cluster. Required.
	Node string
	// Prefix starts every exchange and queue name. Default "colony"; tests
	// use random prefixes to keep out of each other's way.
	Prefix string
	// Prefetch is how many unacknowledged messages RabbitMQ hands this
	// node at once. Default 1024.
	Prefetch int
	// ConnectTimeout bounds the TCP connect and AMQP handshake of each
	// connection attempt. Default 5s.
	ConnectTimeout time.Duration
	// BindWait bounds how long a SUBACK waits for the binding of a filter
	// new to this node to reach RabbitMQ. Default 5s.
	BindWait time.Duration
	// SyncWait bounds how long Start waits for the first peer to send its
	// retained messages, so that clients connecting after Start find them.
	// The first node of a cluster, which nobody answers, waits it in full.
	// Default 500ms.
	SyncWait time.Duration
	// Window is how many federated messages may await RabbitMQ's
	// confirmation at once; more make their publishers wait, which slows
	// MQTT publishers down to what RabbitMQ takes. Default 512.
	Window int
	// PublishPatience is how long a publisher waits for room in the
	// window. After that RabbitMQ counts as stalled and local messages are
	// not federated (counted as unsent) until it confirms again, so a
	// broker that hangs does not stop local service. Default 5s.
	PublishPatience time.Duration
	// TakeoverWait bounds how long a client connecting with a persistent
	// session waits for another node to hand that session over, and how
	// long a node waits for the old connection to close when it hands one
	// over. Default DefaultTakeoverWait.
	TakeoverWait time.Duration
	// UsersInterval is how often the node sends the others the full list
	// of users connected here (changes go out at once); a node that has
	// sent nothing for three intervals counts as having no users. Default
	// DefaultUsersInterval.
	UsersInterval time.Duration
	// Logger receives one line per event (connected, connection lost,
	// blocked), never one per message. The zero value logs nothing.
	Logger zerolog.Logger
}

func (o Options) withDefaults() (Options, error) {
	if o.URL == "" {
		o.URL = DefaultURL
	}
	if o.Prefix == "" {
		o.Prefix = DefaultPrefix
	}
	if o.Prefetch <= 0 {
		o.Prefetch = DefaultPrefetch
	}
	if o.ConnectTimeout <= 0 {
		o.ConnectTimeout = DefaultConnectTimeout
	}
	if o.BindWait <= 0 {
		o.BindWait = DefaultBindWait
	}
	if o.SyncWait <= 0 {
		o.SyncWait = DefaultSyncWait
	}
	if o.Window <= 0 {
		o.Window = DefaultWindow
	}
	if o.PublishPatience <= 0 {
		o.PublishPatience = DefaultPublishPatience
	}
	if o.TakeoverWait <= 0 {
		o.TakeoverWait = DefaultTakeoverWait
	}
	if o.UsersInterval <= 0 {
		o.UsersInterval = DefaultUsersInterval
	}
	if o.Node == "" {
		return o, fmt.Errorf("%w: node id is required", ErrInvalidOptions)
	}
	// Names end up in queue names, which RabbitMQ limits to 255 bytes.
	if len(o.Node) > 100 || len(o.Prefix) > 50 {
		return o, fmt.Errorf("%w: node id or prefix too long", ErrInvalidOptions)
	}
	if _, err := amqp091.ParseURI(o.URL); err != nil {
		return o, fmt.Errorf("%w: url: %w", ErrInvalidOptions, err)
	}
	return o, nil
}

// Broker is the part of the MQTT gateway federation needs; *server.Server
// implements it.
type Broker interface {
	// PublishRemote publishes a message from another node to local
	// subscribers, so that hooks see it from server.ClusterClientID.
	PublishRemote(pk packets.Packet) error
	// Subscriptions lists every client subscription the engine holds.
	Subscriptions(fn func(clientID, filter string))
	// Retained returns the retained messages held on this node.
	Retained() []packets.Packet
	// Sessions lists the client sessions the engine holds.
	Sessions(fn func(cl *mqtt.Client))

	// PushUserLocal, PushClientLocal, KickUserLocal and KickClientLocal
	// act on this node's connections only.
	PushUserLocal(userID, topic string, payload []byte, qos byte) (int, error)
	PushClientLocal(clientID, topic string, payload []byte, qos byte) error
	KickUserLocal(userID, reason string) int
	KickClientLocal(clientID, reason string) error

	// HasSession reports whether the engine holds the client's session.
	HasSession(clientID string) bool
	// ReleaseSession gives up a client's session for another node.
	ReleaseSession(ctx context.Context, clientID string, keep bool) (*server.SessionState, error)
	// AdoptSession installs a session another node released; false if
	// this node has a session for the id already.
	AdoptSession(st *server.SessionState) bool
	// RemoteUser reports a user online or offline on another node.
	RemoteUser(node, userID string, online bool)
}

var _ Broker = (*server.Server)(nil)

// Federation carries MQTT messages between the nodes of a cluster over
// RabbitMQ (see the package documentation for the wire format).
//
// Call order: New; add Hook to the server's hooks before the server
// starts; Start once the server serves; Close after the server has shut
// down (so that the wills of its departing clients still go out). Stats
// and Connected may be called at any time from any goroutine.
type Federation struct {
	opts     Options
	log      zerolog.Logger
	connName string
	msgEx    string
	retEx    string
	queue    string

	in  *interest
	ret *retainedIndex

	broker Broker                  // set by Start, before any session exists
	sess   atomic.Pointer[session] // nil while disconnected
	// incoming describes the retained message being injected, for the
	// hook's OnPublish, which runs on the injecting goroutine.
	incoming atomic.Pointer[incoming]

	// ownersMu guards owners and waiters.
	ownersMu sync.Mutex
	owners   map[string]*mqtt.Client              // client id -> engine client whose session is here
	waiters  map[string]chan *server.SessionState // takeover correlation id -> waiting claim
	// claimLocks and releaseLocks serialise one client id's claims, and
	// its releases (striped by id).
	claimLocks, releaseLocks [64]sync.Mutex
	corr                     atomic.Uint64

	dir       *directory    // users here and on the other nodes
	usersDone chan struct{} // closed when usersLoop has returned

	mu       sync.Mutex // guards started and the closing of life
	started  bool
	shut     atomic.Bool
	life     context.Context // canceled by Close
	cancel   context.CancelFunc
	loopDone chan struct{}

	stats counters
}

// New validates opts and returns a Federation. It does no I/O.
func New(opts Options) (*Federation, error) {
	opts, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	life, cancel := context.WithCancel(context.Background())
	return &Federation{
		opts:      opts,
		log:       opts.Logger.With().Str("component", "federation").Str("node", opts.Node).Logger(),
		connName:  opts.Prefix + " " + opts.Node + " federation",
		msgEx:     MessageExchange(opts.Prefix),
		retEx:     RetainedExchange(opts.Prefix),
		queue:     NodeQueue(opts.Prefix, opts.Node),
		in:        newInterest(),
		ret:       newRetainedIndex(),
		owners:    make(map[string]*mqtt.Client),
		waiters:   make(map[string]chan *server.SessionState),
		dir:       newDirectory(),
		usersDone: make(chan struct{}),
		life:      life,
		cancel:    cancel,
		loopDone:  make(chan struct{}),
	}, nil
}

// Hook returns the engine hook that tells the Federation about local
// subscriptions and publishes. Add it to the server (server.Options.Hooks)
// before the server starts, so it sees every subscription.
func (f *Federation) Hook() mqtt.Hook { return &hook{f: f} }

// Connected reports whether the Federation holds a working connection to
// RabbitMQ right now.
func (f *Federation) Connected() bool { return f.sess.Load() != nil }

// Start takes the subscriptions and retained messages the server already
// holds (restored sessions included), connects to RabbitMQ, declares the
// node's queue, binds it for those subscriptions, starts consuming, asks
// the other nodes for their retained messages and waits (up to SyncWait)
// for the first answer. If RabbitMQ cannot be reached, Start still returns
// nil and keeps retrying in the background, as after a lost connection.
// ctx bounds only the first attempt.
func (f *Federation) Start(ctx context.Context, b Broker) error {
	f.mu.Lock()
	switch {
	case f.shut.Load():
		f.mu.Unlock()
		return fmt.Errorf("start federation: %w", ErrClosed)
	case f.started:
		f.mu.Unlock()
		return fmt.Errorf("start federation: %w", ErrStarted)
	}
	f.started = true
	f.broker = b
	f.mu.Unlock()
	go f.usersLoop()

	// The engine restores persistent sessions without calling hooks; their
	// subscriptions count as much as live ones. Hooks wait meanwhile, so
	// no change is lost between the listing and the hooks.
	f.in.load(func(add func(subRef)) {
		b.Subscriptions(func(clientID, filter string) { add(subRef{client: clientID, filter: filter}) })
	})
	b.Sessions(f.track)
	for _, pk := range b.Retained() {
		if Federated(pk.TopicName) {
			f.ret.seed(pk.TopicName, f.opts.Node, pk.Created*int64(time.Second))
		}
	}

	actx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(f.life, cancel)
	s, err := f.connect(actx)
	stop()
	cancel()
	switch {
	case err != nil && f.life.Err() == nil:
		f.log.Warn().Err(err).Msg("rabbitmq unreachable, message federation retrying in the background")
	case err == nil:
		f.joined(s)
	}
	go f.run(s)
	if s != nil {
		tm := time.NewTimer(f.opts.SyncWait)
		defer tm.Stop()
		select {
		case <-s.synced:
		case <-s.dead:
		case <-tm.C:
		case <-ctx.Done():
		}
	}
	return nil
}

// Close stops consuming, waits until RabbitMQ has confirmed the messages
// already published (or ctx ends) and closes the connection. Messages from
// other nodes not yet delivered here are dropped with the node's queue.
func (f *Federation) Close(ctx context.Context) error {
	f.mu.Lock()
	if f.shut.Load() {
		f.mu.Unlock()
		return nil
	}
	f.shut.Store(true)
	f.cancel()
	started := f.started
	f.mu.Unlock()
	if !started {
		return nil
	}
	<-f.loopDone
	<-f.usersDone
	s := f.sess.Swap(nil)
	if s == nil {
		return nil
	}
	f.leaveUsers(s)
	err := s.shutdown(ctx)
	f.log.Info().Msg("message federation closed")
	if err != nil {
		return fmt.Errorf("close federation: %w", err)
	}
	return nil
}

// joined installs a new session and brings the retained messages of this
// node and of its peers up to date with each other.
func (f *Federation) joined(s *session) {
	f.sess.Store(s)
	f.log.Info().Int("bindings", s.bindings()).Str("queue", f.queue).Msg("joined message federation")
	if err := s.sync(); err != nil {
		s.die(fmt.Errorf("retained sync: %w", err))
	}
	f.joinedUsers(s)
}

// run keeps the Federation connected until Close, reconnecting with a
// jittered exponential backoff.
func (f *Federation) run(s *session) {
	defer close(f.loopDone)
	var backoff amqpconn.Backoff
	for {
		if s == nil {
			if !backoff.Sleep(f.life) {
				return
			}
			var err error
			s, err = f.connect(f.life)
			if err != nil {
				if f.life.Err() != nil {
					return
				}
				f.log.Warn().Err(err).Dur("retry_in", backoff.Failed()).Msg("federation: connect to rabbitmq failed")
				continue
			}
			backoff.Reset()
			f.stats.reconnects.Add(1)
			f.joined(s)
		}
		select {
		case <-s.dead:
			f.sess.Store(nil)
			f.log.Warn().Err(s.err).Msg("federation: connection to rabbitmq lost, local delivery continues")
			s.teardown()
			s = nil
		case <-f.life.Done():
			return
		}
	}
}

// connect opens a connection and a session on it.
func (f *Federation) connect(ctx context.Context) (*session, error) {
	conn, err := amqpconn.Dial(ctx, f.opts.URL, f.connName, f.opts.ConnectTimeout)
	if err != nil {
		return nil, err
	}
	s := newSession(f, conn)
	if err := s.open(); err != nil {
		s.teardown()
		return nil, err
	}
	return s, nil
}

// incoming is a retained message on its way into the local engine.
type incoming struct {
	stamp stamp
	sync  bool // sent to bring the node up to date, not a live publish
	kept  bool // set by the hook: the engine stored it
}

// federate publishes a local message to the other nodes: ordinary
// messages to the topic exchange under their topic's key, retained ones
// (and clears) to the fanout exchange, which every node receives. ts is
// its publish time (for a retained message, its stamp, taken even while
// disconnected: the node offers its retained messages, with these stamps,
// when it joins again).
func (f *Federation) federate(pk *packets.Packet, ts int64) {
	key, ok := TopicKey(pk.TopicName)
	if !ok {
		return
	}
	ex := f.msgEx
	if pk.FixedHeader.Retain {
		// The fanout ignores keys; one key lets retained runs batch.
		ex, key = f.retEx, ""
	}
	s := f.sess.Load()
	if s == nil || s.blocked.Load() {
		f.stats.unsent.Add(1)
		return
	}
	if err := s.enqueue(outMsg{exchange: ex, key: key, pk: *pk, ts: ts}); err != nil {
		// The session is dying (and says so once) or RabbitMQ stalls
		// (logged once): local delivery goes on without federation.
		f.stats.unsent.Add(1)
	}
}

// deliver publishes a message from another node to local subscribers. A
// retained one is also stored, unless the node holds a newer version
// (the hook's OnPublish decides).
func (f *Federation) deliver(m *message) {
	f.inject(m, false)
	f.stats.in.Add(1)
}

// adopt applies a retained message sent to bring this node up to date:
// stored (and passed to current subscribers) only if it is newer than
// what the node holds, and a clear only if there is something to clear.
func (f *Federation) adopt(m *message) {
	m.pk.FixedHeader.Retain = true
	if f.inject(m, true) {
		f.stats.synced.Add(1)
	}
}

// inject publishes m locally and reports whether the engine stored it as
// retained.
func (f *Federation) inject(m *message, sync bool) bool {
	var in *incoming
	if m.pk.FixedHeader.Retain {
		in = &incoming{stamp: stamp{ts: m.ts, origin: m.writer, present: len(m.pk.Payload) > 0}, sync: sync}
		f.incoming.Store(in)
		defer f.incoming.Store(nil)
	}
	if err := f.broker.PublishRemote(m.pk); err != nil {
		f.stats.failed.Add(1)
		f.log.Debug().Err(err).Str("topic", m.pk.TopicName).Msg("federated message not delivered")
		return false
	}
	return in != nil && in.kept
}

// awaitBinding waits until round is done, the session dies or BindWait
// passes, whichever comes first; with no session it returns at once.
func (f *Federation) awaitBinding(round <-chan struct{}) {
	s := f.sess.Load()
	if s == nil {
		return
	}
	tm := time.NewTimer(f.opts.BindWait)
	defer tm.Stop()
	select {
	case <-round:
	case <-s.dead:
	case <-tm.C:
		if s.slowBind.CompareAndSwap(false, true) {
			f.log.Warn().Dur("waited", f.opts.BindWait).
				Msg("federation: binding new filters is slow, subscriptions are acknowledged before their bindings (logged once per connection)")
		}
	case <-f.life.Done():
	}
}

// Stats counts what a Federation did since it was created.
type Stats struct {
	Out         uint64 // local messages published to the other nodes
	Batches     uint64 // AMQP messages that carried several of them (what queued up while the previous one went out)
	In          uint64 // messages from other nodes published here
	Synced      uint64 // retained messages adopted from other nodes' sync answers
	Unsent      uint64 // local messages not federated: disconnected, or RabbitMQ blocking publishers
	Nacked      uint64 // publishes RabbitMQ refused (basic.nack)
	Unconfirmed uint64 // publishes whose confirmation was lost with the connection
	Failed      uint64 // messages from other nodes the local engine refused
	Malformed   uint64 // deliveries that were not federated messages (dropped)
	Reconnects  uint64 // connections made by the background loop
	Takeovers   uint64 // persistent sessions taken over from other nodes
	// LateSessions counts sessions handed over that could not be
	// installed: after the takeover had given up waiting, or when a
	// connection had started afresh here meanwhile. Lost, with their
	// queued messages.
	LateSessions uint64
	Bindings     int // subscription bindings of the node's queue right now
	Routes       int // user and client bindings of the node's queue right now (users connected, sessions held)
	Filters      int // distinct binding keys local subscriptions want
}

type counters struct {
	out, batches, in, synced, unsent, nacked, unconfirmed, failed, malformed, reconnects, takeovers, lateSessions atomic.Uint64
	bindings, routes                                                                                              atomic.Int64
}

// Stats returns the Federation's counters.
func (f *Federation) Stats() Stats {
	c := &f.stats
	return Stats{
		Out: c.out.Load(), Batches: c.batches.Load(), In: c.in.Load(), Synced: c.synced.Load(), Unsent: c.unsent.Load(),
		Nacked: c.nacked.Load(), Unconfirmed: c.unconfirmed.Load(), Failed: c.failed.Load(),
		Malformed: c.malformed.Load(), Reconnects: c.reconnects.Load(), Takeovers: c.takeovers.Load(), LateSessions: c.lateSessions.Load(),
		Bindings: int(c.bindings.Load()), Routes: int(c.routes.Load()), Filters: f.in.wanted(),
	}
}
