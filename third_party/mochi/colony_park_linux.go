// COLONY PATCH (see PATCHES.md, P16): the poller that watches parked
// connections, an epoll set of its own next to the Go runtime's.

package mqtt

import (
	"sync"
	"syscall"
	"time"
)

// poller watches parked sockets with one-shot, level-triggered epoll
// registrations, so a socket that already has data when it is parked is
// reported at once. A socket stays registered (disarmed) while its
// connection is served and is re-armed at the next park; closing the socket
// removes it from the set. Events carry the parking's token, never a
// pointer or the descriptor, so an event for a connection that is gone or
// already awake is ignored.
type poller struct {
	once   sync.Once
	epfd   int
	err    error
	mu     sync.Mutex
	parked map[uint64]*parking
}

var thePoller poller

func pollerAvailable() bool {
	thePoller.once.Do(thePoller.start)
	return thePoller.err == nil
}

func (pl *poller) start() {
	pl.epfd, pl.err = syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
	if pl.err != nil {
		return
	}
	pl.parked = make(map[uint64]*parking)
	go pl.run() // one per process, for its lifetime
}

func (pl *poller) run() {
	events := make([]syscall.EpollEvent, 256)
	for {
		n, err := syscall.EpollWait(pl.epfd, events, -1)
		if err != nil {
			if err != syscall.EINTR {
				time.Sleep(10 * time.Millisecond) // cannot happen with a valid set; do not spin
			}
			continue
		}
		for _, ev := range events[:n] {
			token := uint64(uint32(ev.Fd)) | uint64(uint32(ev.Pad))<<32
			pl.mu.Lock()
			p := pl.parked[token]
			pl.mu.Unlock()
			if p != nil {
				p.wake()
			}
		}
	}
}

// add records p as parked, before it can be woken.
func (pl *poller) add(p *parking) {
	pl.mu.Lock()
	pl.parked[p.token] = p
	pl.mu.Unlock()
}

// forget removes p from the parked connections.
func (pl *poller) forget(p *parking) {
	pl.mu.Lock()
	delete(pl.parked, p.token)
	pl.mu.Unlock()
}

// arm asks for one event when p's socket is readable or hung up. It fails
// if the socket is closed.
func (pl *poller) arm(p *parking) bool {
	var err error
	cerr := p.rc.Control(func(fd uintptr) {
		ev := syscall.EpollEvent{
			Events: syscall.EPOLLIN | syscall.EPOLLRDHUP | syscall.EPOLLONESHOT,
			Fd:     int32(uint32(p.token)),
			Pad:    int32(uint32(p.token >> 32)),
		}
		err = syscall.EpollCtl(pl.epfd, syscall.EPOLL_CTL_MOD, int(fd), &ev)
		if err == syscall.ENOENT { // first park of this socket
			err = syscall.EpollCtl(pl.epfd, syscall.EPOLL_CTL_ADD, int(fd), &ev)
		}
	})
	return cerr == nil && err == nil
}

// readNow reads what has already arrived on a socket, without waiting. It
// returns false if nothing has; true if bytes were buffered or the read
// failed (the failure comes back from the next blocking read).
func (rb *readBuf) readNow(rc syscall.RawConn) bool {
	b := rb.acquire()
	if rb.r == rb.w {
		rb.r, rb.w = 0, 0
	}
	var n int
	var rerr error
	err := rc.Read(func(fd uintptr) bool {
		n, rerr = sysRead(fd, b[rb.w:])
		return true
	})
	if err != nil || (rerr != nil && rerr != syscall.EAGAIN) {
		return true
	}
	if n > 0 {
		rb.w += n
		return true
	}
	return n == 0 && rerr == nil // end of stream: the next read reports it
}
