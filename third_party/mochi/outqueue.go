// COLONY PATCH (see PATCHES.md, P1): a client's pending outbound packets.
//
// Upstream uses a channel with MaximumClientWritesPending slots reserved per
// client up front (8,192 pointers = 64 KB for every idle connection) and
// drops a packet, QoS 1 included, the moment it is full. outQueue grows with
// demand, shrinks when drained, and lets a publisher wait for room instead
// of dropping: back-pressure, which stops reading the publisher's socket.

package mqtt

import (
	"slices"
	"sync"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
)

// outQueue is safe for concurrent use: publishers push, and a writer
// goroutine, started when the queue gets its first packet and ending when it
// is empty again, writes everything queued in batches. An idle connection
// therefore costs no writer goroutine at all.
type outQueue struct {
	mu      sync.Mutex
	items   []outItem
	spare   []outItem // the slice handed back by the writer, reused
	limit   int
	running bool          // a writer goroutine is active
	held    bool          // COLONY PATCH P23: nothing is written until release
	space   chan struct{} // closed when room frees up; nil while nobody waits
	write   func([]outItem)
	drained func() // called each time the writer empties the queue
	runFn   func() // run, made once: COLONY PATCH P24 (go q.runFn() allocated a closure per writer started)
	// COLONY PATCH P20: writeNow writes one packet without blocking, or
	// reports that it could not (written false), and whether bytes of it
	// are left for flush, which writes them blocking; nil when the
	// connection cannot be written without blocking.
	writeNow func(outItem) (written, left bool)
	flush    func()
	// COLONY PATCH P19: progress, so pushes that never wait can tell a
	// queue that stays full from one that is merely busy.
	taken    uint64    // batches the writer has taken
	fullGen  uint64    // taken when the queue was first seen full
	fullSeen time.Time // when the queue was first seen full at fullGen
}

// outItem is one packet waiting to be written: a packet to encode for this
// client, or (COLONY PATCH P13) a QoS 0 PUBLISH encoded once for all the
// subscribers that receive it in the same form.
type outItem struct {
	pk     *packets.Packet
	shared *sharedPublish
}

// summary describes the packet for logs.
func (it outItem) summary() string {
	if it.shared != nil {
		return it.shared.summary()
	}
	return packetSummary(*it.pk)
}

func newOutQueue(limit int, write func([]outItem), drained func()) *outQueue {
	if limit < 1 {
		limit = 1
	}
	q := &outQueue{limit: limit, write: write, drained: drained}
	q.runFn = q.run
	return q
}

// run writes batches until the queue is empty.
func (q *outQueue) run() {
	for {
		batch := q.take()
		if batch == nil {
			return
		}
		q.write(batch)
		q.giveBack(batch)
	}
}

// pushResult says what became of a pushed packet.
type pushResult int

const (
	pushed  pushResult = iota
	stalled            // the queue stayed full for the whole patience
	closed             // the client went away while we waited
)

// push queues it. When the queue is full it waits, at most patience, for
// the writer to make room; done ends the wait early (client gone).
// A patience of 0 never waits.
//
// COLONY PATCH P20: with direct, a packet that finds the queue idle (empty,
// no writer) is written at once from the caller's goroutine, without
// blocking: upstream's channel, and the queue before this patch, handed
// every packet to another goroutine, and waking it cost more than the write
// (tens of µs on a VM, the bulk of a QoS 1 delivery's latency at moderate
// rates). Whatever the socket does not take at once, and whatever others
// queue meanwhile, is left to a writer goroutine as before.
func (q *outQueue) push(it outItem, patience time.Duration, done <-chan struct{}, direct bool) pushResult {
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for {
		q.mu.Lock()
		if direct && q.writeNow != nil && len(q.items) == 0 && !q.running && !q.held {
			q.running = true // the caller is the writer until it returns
			q.mu.Unlock()
			q.pushNow(it)
			return pushed
		}
		if len(q.items) < q.limit {
			q.items = append(q.items, it)
			start := !q.running && !q.held
			if start {
				q.running = true
			}
			q.mu.Unlock()
			if start {
				go q.runFn()
			}
			return pushed
		}
		if patience <= 0 {
			q.mu.Unlock()
			return stalled
		}
		if q.space == nil {
			q.space = make(chan struct{})
		}
		space := q.space
		q.mu.Unlock()
		if timer == nil {
			timer = time.NewTimer(patience)
		}
		select {
		case <-space:
		case <-done:
			return closed
		case <-timer.C:
			return stalled
		}
	}
}

// pushNow writes it from the caller's goroutine, which holds the writer's
// role (running), and hands the role to a writer goroutine if bytes or
// packets are left. COLONY PATCH P20.
func (q *outQueue) pushNow(it outItem) {
	written, left := q.writeNow(it)
	if left {
		go func() {
			q.flush()
			q.run()
		}()
		return
	}
	q.mu.Lock()
	if !written {
		// First in line: whatever others queued meanwhile came after it. The
		// queue may hold one more than its limit for as long as that lasts.
		q.items = slices.Insert(q.items, 0, it)
	}
	if len(q.items) > 0 {
		q.mu.Unlock()
		go q.runFn()
		return
	}
	q.running = false
	if q.drained != nil {
		q.drained()
	}
	q.mu.Unlock()
}

// hold stops the queue from writing: packets pushed meanwhile wait, and
// none is written directly, until release. COLONY PATCH P23: a connecting
// client is in the server's client list, and so gets deliveries, a moment
// before its CONNACK is written; they must not go out before it.
func (q *outQueue) hold() {
	q.mu.Lock()
	q.held = true
	q.mu.Unlock()
}

// release ends a hold and starts a writer for what waited. COLONY PATCH P23.
func (q *outQueue) release() {
	q.mu.Lock()
	q.held = false
	if len(q.items) == 0 || q.running {
		q.mu.Unlock()
		return
	}
	q.running = true
	q.mu.Unlock()
	go q.runFn()
}

// take returns everything queued and empties the queue, waking publishers
// that wait for room. The caller hands the slice back with giveBack. When
// nothing is queued it returns nil and the writer must end.
func (q *outQueue) take() []outItem {
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.items) == 0 {
		q.running = false
		if q.drained != nil {
			q.drained()
		}
		return nil
	}
	items := q.items
	q.taken++ // COLONY PATCH P19
	q.items = q.spare[:0]
	q.spare = nil
	if q.space != nil {
		close(q.space)
		q.space = nil
	}
	return items
}

// giveBack returns a slice from take for reuse; a large one is dropped so an
// idle client does not keep the memory of a past burst.
func (q *outQueue) giveBack(items []outItem) {
	clear(items)
	if cap(items) > 64 {
		return
	}
	q.mu.Lock()
	if q.spare == nil {
		q.spare = items[:0]
	}
	q.mu.Unlock()
}

// len returns the number of packets waiting.
func (q *outQueue) len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.items)
}

// stuck reports how long the queue has been full without the writer taking
// anything from it, as far as callers of stuck have seen: 0 when it is not
// full or was first seen full now. COLONY PATCH P19.
func (q *outQueue) stuck(now time.Time) time.Duration {
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.items) < q.limit {
		return 0
	}
	if q.fullSeen.IsZero() || q.fullGen != q.taken {
		q.fullGen, q.fullSeen = q.taken, now
		return 0
	}
	return now.Sub(q.fullSeen)
}

// full reports whether a push would find no room now. COLONY PATCH P19.
func (q *outQueue) full() bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.items) >= q.limit
}

// idle reports whether everything queued has been written: nothing queued
// and no writer running. COLONY PATCH P19.
func (q *outQueue) idle() bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.items) == 0 && !q.running
}
