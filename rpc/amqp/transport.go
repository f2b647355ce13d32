package amqp

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"github.com/colonymq/colony/internal/amqpconn"
	"github.com/colonymq/colony/rpc"
)

// Transport is the AMQP transport of module RPC. It serves the modules of
// its Registry to other nodes and carries this node's calls to modules that
// other nodes announce. Install it with rpc.Client.SetRemote.
//
// Call order: New, Start, then any number of concurrent Call, Notify,
// Serves, Nodes and Connected, then Close. All methods are safe for
// concurrent use. Calls made before Start or while RabbitMQ is unreachable
// fail at once with rpc.ErrUnavailable.
type Transport struct {
	opts     Options
	log      zerolog.Logger
	connName string
	exchange string // RPCExchange(prefix), computed once

	sess atomic.Pointer[session] // nil while disconnected
	seq  atomic.Uint64           // correlation ids

	// served counts deliveries being executed, across sessions, so that
	// Close can wait for them; inflight is the same number, readable.
	served   sync.WaitGroup
	inflight atomic.Int64

	mu       sync.Mutex // guards started and the closing of life
	started  bool
	shut     atomic.Bool
	life     context.Context // canceled by Close: stops the retry loop and dials
	cancel   context.CancelFunc
	loopDone chan struct{} // closed when the run loop has exited

	peers peerTable
	stats counters
}

var _ rpc.Transport = (*Transport)(nil)

// New validates opts and returns a Transport. It does no I/O.
func New(opts Options) (*Transport, error) {
	opts, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	life, cancel := context.WithCancel(context.Background())
	t := &Transport{
		opts:     opts,
		log:      opts.Logger.With().Str("component", "rpc.amqp").Str("node", opts.Node).Logger(),
		connName: opts.Prefix + " " + opts.Node,
		exchange: RPCExchange(opts.Prefix),
		life:     life,
		cancel:   cancel,
		loopDone: make(chan struct{}),
	}
	t.peers.init()
	return t, nil
}

// Name returns "amqp".
func (t *Transport) Name() string { return "amqp" }

// Connected reports whether the transport holds a working connection to
// RabbitMQ right now.
func (t *Transport) Connected() bool { return t.sess.Load() != nil }

// Start connects to RabbitMQ, declares the topology, starts consuming the
// queues of the served modules and announces the node. If RabbitMQ cannot
// be reached, Start still returns nil: the transport reports not connected
// and keeps retrying in the background, as it does after losing a
// connection. ctx bounds only the first attempt.
func (t *Transport) Start(ctx context.Context) error {
	t.mu.Lock()
	switch {
	case t.shut.Load():
		t.mu.Unlock()
		return fmt.Errorf("start amqp transport: %w", ErrClosed)
	case t.started:
		t.mu.Unlock()
		return fmt.Errorf("start amqp transport: %w", ErrStarted)
	}
	t.started = true
	t.mu.Unlock()

	// Close cancels life; an attempt in progress must give up then too.
	actx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(t.life, cancel)
	s, err := t.connect(actx)
	stop()
	cancel()
	switch {
	case err != nil && t.life.Err() == nil:
		t.log.Warn().Err(err).Msg("rabbitmq unreachable, retrying in the background")
	case err == nil:
		t.sess.Store(s)
		t.log.Info().Strs("modules", s.modules).Msg("connected to rabbitmq")
	}
	go t.run(s)
	return nil
}

// Close announces that the node leaves, stops consuming, waits for the
// calls it is executing to be answered (or for ctx to end), fails this
// node's pending calls with rpc.ErrUnavailable and closes the connection.
// Close stops neither Local nor the Registry; stop Local afterwards.
func (t *Transport) Close(ctx context.Context) error {
	if !t.halt() {
		return nil
	}
	s := t.sess.Load()
	if s == nil {
		return nil
	}
	if err := s.shutdown(ctx); err != nil {
		return fmt.Errorf("close amqp transport: %w", err)
	}
	t.log.Info().Msg("amqp transport closed")
	return nil
}

// halt stops the run loop and waits for it. It reports whether the loop
// ran and this call stopped it, so that exactly one caller cleans up.
func (t *Transport) halt() bool {
	t.mu.Lock()
	if t.shut.Load() {
		t.mu.Unlock()
		return false
	}
	t.shut.Store(true)
	t.cancel()
	started := t.started
	t.mu.Unlock()
	if !started {
		return false
	}
	<-t.loopDone
	return true
}

// run keeps the transport connected until Close: it waits for the session
// to die, fails it, and reconnects with a jittered exponential backoff.
// When Close is called it returns at once and leaves the current session,
// if any, for Close to shut down gracefully.
func (t *Transport) run(s *session) {
	defer close(t.loopDone)
	var backoff amqpconn.Backoff
	for {
		if s == nil {
			if !backoff.Sleep(t.life) {
				return
			}
			var err error
			s, err = t.connect(t.life)
			if err != nil {
				if t.life.Err() != nil {
					return
				}
				t.log.Warn().Err(err).Dur("retry_in", backoff.Failed()).Msg("connect to rabbitmq failed")
				continue
			}
			backoff.Reset()
			t.stats.reconnects.Add(1)
			t.sess.Store(s)
			t.log.Info().Strs("modules", s.modules).Msg("connected to rabbitmq")
		}
		select {
		case <-s.dead:
			t.sess.Store(nil)
			t.log.Warn().Err(s.err).Msg("connection to rabbitmq lost")
			s.teardown(rpc.Errorf(rpc.CodeUnavailable, "connection to rabbitmq lost: %w", s.err))
			s = nil
		case <-t.life.Done():
			return
		}
	}
}

// connect opens a connection and a session on it.
func (t *Transport) connect(ctx context.Context) (*session, error) {
	conn, err := amqpconn.Dial(ctx, t.opts.URL, t.connName, t.opts.ConnectTimeout)
	if err != nil {
		return nil, err
	}
	s := newSession(t, conn)
	if err := s.open(); err != nil {
		s.teardown(rpc.Errorf(rpc.CodeUnavailable, "connection setup failed"))
		return nil, err
	}
	// Peers could not announce themselves to a node that was away; give
	// each of them a fresh 3 beats before counting it gone.
	t.peers.refresh(time.Now())
	return s, nil
}

// Stats counts what a Transport did since it was created.
type Stats struct {
	Calls      uint64 // calls sent
	Notifies   uint64 // notifies sent
	Returned   uint64 // calls returned unroutable by RabbitMQ (not_found)
	Served     uint64 // calls and notifies received and executed
	Expired    uint64 // received calls whose deadline had passed on arrival
	Dropped    uint64 // received notifies Local refused (unknown handler, stopping, full past ServeTimeout)
	Lost       uint64 // replies or acks that could not be sent: the channel was gone
	Reconnects uint64 // connections made by the background loop, after a failed Start or a lost connection
}

type counters struct {
	calls, notifies, returned, served, expired, dropped, lost, reconnects atomic.Uint64
}

// Stats returns the transport's counters.
func (t *Transport) Stats() Stats {
	c := &t.stats
	return Stats{
		Calls: c.calls.Load(), Notifies: c.notifies.Load(), Returned: c.returned.Load(),
		Served: c.served.Load(), Expired: c.expired.Load(), Dropped: c.dropped.Load(), Lost: c.lost.Load(),
		Reconnects: c.reconnects.Load(),
	}
}
