package amqp

import (
	"context"
	"errors"
	"fmt"
	"sync"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/colonymq/colony/rpc"
)

// session is one connection to RabbitMQ and everything built on it: the
// call channel, one serving channel per module, the presence channel and
// their goroutines. A session never reconnects; when it dies the run loop
// tears it down and builds a new one, so no state leaks between
// connections.
type session struct {
	t    *Transport
	conn *amqp091.Connection

	// callCh publishes this node's requests and consumes their direct
	// replies: RabbitMQ requires both on the same channel.
	callCh *amqp091.Channel
	presCh *amqp091.Channel

	modules   []string   // served on this session, sorted
	consumers []consumer // serving consumers, cancelled by shutdown

	blocked bool // RabbitMQ blocked publishing (resource alarm); guarded by mu

	mu      sync.Mutex // guards pending, closed and blocked
	pending map[string]chan<- result
	closed  bool

	dead     chan struct{} // closed by die
	err      error         // why the session died; set before dead closes
	dieOnce  sync.Once
	quit     chan struct{} // closed by stop: ends the beat loop
	quitOnce sync.Once
	poke     chan struct{} // asks the beat loop for an early announcement
	beatDone chan struct{}

	loops sync.WaitGroup // serving consumer loops
	bg    sync.WaitGroup // every other goroutine of the session
}

// consumer is one serving consumer, remembered so shutdown can cancel it.
type consumer struct {
	ch  *amqp091.Channel
	tag string
}

// result is what a pending call receives: a reply body or an error.
type result struct {
	body []byte
	err  error
}

func newSession(t *Transport, conn *amqp091.Connection) *session {
	return &session{
		t:        t,
		conn:     conn,
		pending:  make(map[string]chan<- result),
		dead:     make(chan struct{}),
		quit:     make(chan struct{}),
		poke:     make(chan struct{}, 1),
		beatDone: make(chan struct{}),
	}
}

// open builds the session: watchers first, so that no failure goes
// unnoticed, then the call channel, the served modules and presence.
func (s *session) open() error {
	closes := s.conn.NotifyClose(make(chan *amqp091.Error, 1))
	blocks := s.conn.NotifyBlocked(make(chan amqp091.Blocking, 1))
	s.bg.Add(1)
	go s.watchConn(closes, blocks)

	if err := s.openCalls(); err != nil {
		return err
	}
	if reg := s.t.opts.Registry; reg != nil {
		s.modules = reg.Modules()
	}
	for _, m := range s.modules {
		if err := s.serveModule(m); err != nil {
			return err
		}
	}
	return s.openPresence()
}

// watchConn ends the session when the connection closes, and tracks
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
			s.mu.Lock()
			s.blocked = b.Active
			s.mu.Unlock()
			if b.Active {
				s.t.log.Warn().Str("reason", b.Reason).Msg("rabbitmq blocked publishing, calls fail until it unblocks")
			} else {
				s.t.log.Info().Msg("rabbitmq unblocked publishing")
			}
		}
	}
	// Keep draining blocked notifications until amqp091 closes the channel.
	for range blocks {
	}
}

// channel opens a channel whose abnormal closing (a channel exception)
// ends the session: the run loop then rebuilds everything from scratch,
// which is simpler and safer than repairing one channel.
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

// stop ends the beat loop.
func (s *session) stop() {
	s.quitOnce.Do(func() { close(s.quit) })
}

// teardown abandons the session at once: pending calls fail with err, the
// connection is closed and the session's goroutines are waited for. Calls
// still being served finish on their own; their replies are lost.
func (s *session) teardown(err error) {
	s.stop()
	if n := s.failAll(err); n > 0 {
		s.t.log.Warn().Int("calls", n).Msg("failed pending calls")
	}
	if cerr := s.conn.Close(); cerr != nil && !errors.Is(cerr, amqp091.ErrClosed) {
		s.t.log.Debug().Err(cerr).Msg("close connection")
	}
	s.loops.Wait()
	s.bg.Wait()
}

// shutdown leaves gracefully: bye to the peers, no new deliveries, the
// deliveries already received served and answered (until ctx ends), then
// the connection closes. This node's own calls keep working until the
// served calls are done, since a handler may call other modules.
func (s *session) shutdown(ctx context.Context) error {
	s.stop()
	<-s.beatDone
	if err := s.announce(false, true); err != nil {
		s.t.log.Warn().Err(err).Msg("announce bye")
	}
	for _, c := range s.consumers {
		if err := c.ch.Cancel(c.tag, false); err != nil {
			s.t.log.Debug().Err(err).Str("consumer", c.tag).Msg("cancel consumer")
		}
	}
	// Deliveries prefetched before the cancel still arrive; the loops end
	// once they have all been handed to a goroutine.
	s.loops.Wait()
	done := make(chan struct{})
	go func() {
		s.t.served.Wait()
		close(done)
	}()
	var err error
	select {
	case <-done:
	case <-ctx.Done():
		err = fmt.Errorf("waiting for served calls: %w", ctx.Err())
	}
	s.t.sess.Store(nil)
	s.teardown(rpc.Errorf(rpc.CodeUnavailable, "amqp transport closed"))
	return err
}

// register adds a pending call. It fails when the session is closing.
func (s *session) register(id string, ch chan<- result) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.closed:
		return rpc.Errorf(rpc.CodeUnavailable, "not connected to rabbitmq")
	case s.blocked:
		return rpc.Errorf(rpc.CodeUnavailable, "rabbitmq is blocking publishers (resource alarm)")
	}
	s.pending[id] = ch
	return nil
}

// forget removes a pending call whose caller stopped waiting.
func (s *session) forget(id string) {
	s.mu.Lock()
	delete(s.pending, id)
	s.mu.Unlock()
}

// resolve hands r to the pending call id, if it is still waiting. The
// channel has room for one result, so this never blocks.
func (s *session) resolve(id string, r result) bool {
	s.mu.Lock()
	ch, ok := s.pending[id]
	if ok {
		delete(s.pending, id)
	}
	s.mu.Unlock()
	if ok {
		ch <- r
	}
	return ok
}

// failAll fails every pending call with err and refuses new ones. It
// returns how many calls it failed.
func (s *session) failAll(err error) int {
	s.mu.Lock()
	pending := s.pending
	s.pending = nil
	s.closed = true
	s.mu.Unlock()
	for _, ch := range pending {
		ch <- result{err: err}
	}
	return len(pending)
}
