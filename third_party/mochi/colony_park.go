// COLONY PATCH (see PATCHES.md, P16): idle connections without goroutines.
//
// Upstream serves every connection with a goroutine blocked in a read for as
// long as the connection is open. That goroutine ran the CONNECT handling,
// whose deep frames grew its stack to 16 KB, and the runtime never shrinks a
// stack that much: 16 KB of an idle connection's 22 KB. Here the engine
// parks a plain TCP (or Unix socket) connection whose client has nothing
// more to say: its goroutine ends, a poller (colony_park_linux.go) watches
// the socket, and when bytes arrive, the keep-alive deadline passes or the
// server stops the client, the connection is served again on a new
// goroutine, whose stack starts small. Other connections (TLS, WebSocket,
// other systems) continue after CONNECT on a new goroutine too, for the same
// reason, and block in a read as before.

package mqtt

import (
	"errors"
	"net"
	"sync/atomic"
	"syscall"
	"time"
)

// ErrParked is returned by EstablishParkable, and by the functions it hands
// to its spawn function, when the connection is not finished but is served
// on another goroutine from now on: the caller must leave it open.
var ErrParked = errors.New("connection continues on another goroutine")

// SpawnFn runs fn on a new goroutine, with whatever per-connection care the
// listener gives the goroutine that called EstablishParkable (panic
// recovery, bookkeeping when the connection ends); fn returns like
// EstablishParkable.
type SpawnFn func(fn func() error)

// EstablishParkable is EstablishConnection for listeners that let the engine
// serve the connection on goroutines of its choosing: it returns ErrParked
// once the connection is established and handed on, and the engine calls
// spawn each time the connection needs a goroutine again. Whichever call
// returns an error other than ErrParked ended the connection.
func (s *Server) EstablishParkable(listener string, c net.Conn, spawn SpawnFn) error {
	cl := s.NewClient(c, listener, "", false)
	return s.attachClientWith(cl, listener, spawn)
}

// parking is the state of a connection that can be parked, made when it
// is first served and reused for every park.
type parking struct {
	cl       *Client
	srv      *Server
	token    uint64 // identifies the connection to the poller
	rc       syscall.RawConn
	spawn    SpawnFn
	timer    *time.Timer  // wakes the connection at its keep-alive deadline
	deadline atomic.Int64 // of the current park, as monotonic ns since monoStart; 0: none
	state    atomic.Int32 // parkActive or parkParked
}

const (
	parkActive int32 = iota
	parkParked
)

// parkLinger is how long a resumed connection waits for its client's next
// packet before it parks again. A park and a wake-up cost about 12 µs more
// than a read that was waiting already (a PINGREQ/PINGRESP round trip on
// loopback took 20-27 µs against 8.5-13 µs), which a client in a
// conversation would pay per packet; a lingering connection holds a
// goroutine, with a small stack.
const parkLinger = 100 * time.Millisecond

var (
	parkTokens atomic.Uint64
	monoStart  = time.Now()
)

// parkingFor returns the parking of a connection the engine may park, or
// nil: no spawn function, not a plain socket, or no poller on this system.
func (s *Server) parkingFor(cl *Client, spawn SpawnFn) *parking {
	if spawn == nil {
		return nil
	}
	if p := cl.Net.park.Load(); p != nil {
		return p
	}
	rc := cl.Net.rawConn() // a plain TCP or Unix socket
	if rc == nil || !pollerAvailable() {
		return nil
	}
	p := &parking{cl: cl, srv: s, token: parkTokens.Add(1), rc: rc, spawn: spawn}
	p.timer = time.AfterFunc(time.Hour, p.expire)
	p.timer.Stop()
	cl.Net.park.Store(p)
	return p
}

// park hands an idle connection to the poller until it has data, its
// keep-alive deadline passes or the server stops it. It returns false if
// the connection could not be parked (the caller reads on). After true the
// connection may already be served on another goroutine, and the caller
// must not touch the client again.
func (p *parking) park(deadline time.Time) bool {
	var d int64
	if !deadline.IsZero() {
		d = max(int64(deadline.Sub(monoStart)), 1)
	}
	p.deadline.Store(d)
	thePoller.add(p)
	p.state.Store(parkParked)
	// From here on the connection may be woken (Stop, a timer armed for an
	// earlier park), so only p's atomics, its timer's methods and the
	// poller are touched.
	if d != 0 {
		p.timer.Reset(time.Until(deadline))
	}
	if !thePoller.arm(p) {
		if p.state.CompareAndSwap(parkParked, parkActive) {
			p.timer.Stop()
			thePoller.forget(p)
			return false
		}
		return true
	}
	// Stop wakes a parked client; one stopped before it was parked is woken
	// here (Stop cancels the client before it looks for a parking).
	if p.cl.Closed() {
		p.wake()
	}
	return true
}

// expire runs when the timer fires. The timer may have been armed for an
// earlier park: then it is set again for the current deadline.
func (p *parking) expire() {
	d := p.deadline.Load()
	if d == 0 || p.state.Load() != parkParked {
		return
	}
	if left := time.Duration(d) - time.Since(monoStart); left > 0 {
		p.timer.Reset(left)
		return
	}
	p.wake()
}

// wake serves a parked connection again, once per park.
func (p *parking) wake() {
	if !p.state.CompareAndSwap(parkParked, parkActive) {
		return
	}
	p.timer.Stop()
	thePoller.forget(p)
	p.spawn(p.resume)
}

// resume serves the connection again after a park.
func (p *parking) resume() error { return p.srv.serveClient(p.cl, p.spawn, true) }
