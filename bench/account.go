package bench

import (
	"math"
	"math/bits"
	"sync"
	"sync/atomic"
	"time"
)

// histSub is the number of buckets per power of two in a histogram: values
// below 2*histSub are exact, larger ones are within 1/histSub (0.8%).
const histSub = 128

// histogram is a log-linear histogram of non-negative int64 values
// (nanoseconds). Its bucket slice grows only as far as the largest value
// seen, a few tens of KB for latencies up to seconds. Not safe for
// concurrent use.
type histogram struct {
	counts []uint64
	n      uint64
	max    int64
}

// bucketOf returns the bucket index of v.
func bucketOf(v int64) int {
	u := uint64(max(v, 0))
	if u < 2*histSub {
		return int(u)
	}
	shift := bits.Len64(u) - 8 // leaves the top 8 bits: v>>shift is in [128, 256)
	return shift*histSub + int(u>>shift)
}

// bucketUpper returns the largest value that falls into bucket i.
func bucketUpper(i int) int64 {
	if i < 2*histSub {
		return int64(i)
	}
	shift := i/histSub - 1
	m := int64(i - shift*histSub)
	return (m+1)<<shift - 1
}

// add records one value.
func (h *histogram) add(v int64) {
	i := bucketOf(v)
	if i >= len(h.counts) {
		h.counts = append(h.counts, make([]uint64, i+1-len(h.counts))...)
	}
	h.counts[i]++
	h.n++
	h.max = max(h.max, v)
}

// merge adds every value recorded in o.
func (h *histogram) merge(o *histogram) {
	if len(o.counts) > len(h.counts) {
		h.counts = append(h.counts, make([]uint64, len(o.counts)-len(h.counts))...)
	}
	for i, c := range o.counts {
		h.counts[i] += c
	}
	h.n += o.n
	h.max = max(h.max, o.max)
}

// percentile returns the nearest-rank p-th percentile (0 < p ≤ 100): the
// smallest recorded value such that at least p% of the values are at or
// below it, rounded up to its bucket's upper bound and never above the
// maximum. It returns 0 when nothing was recorded.
func (h *histogram) percentile(p float64) int64 {
	if h.n == 0 {
		return 0
	}
	rank := uint64(math.Ceil(p / 100 * float64(h.n)))
	rank = min(max(rank, 1), h.n)
	var cum uint64
	for i, c := range h.counts {
		cum += c
		if cum >= rank {
			return min(bucketUpper(i), h.max)
		}
	}
	return h.max
}

// latency summarises h as a Latency.
func (h *histogram) latency() Latency {
	if h.n == 0 {
		return Latency{}
	}
	return Latency{
		P50: time.Duration(h.percentile(50)),
		P90: time.Duration(h.percentile(90)),
		P99: time.Duration(h.percentile(99)),
		Max: time.Duration(h.max),
	}
}

// tracker is one receiver's accounting: which (publisher, sequence) pairs it
// has seen, duplicates, out-of-order arrivals, payloads that are not ours,
// and a latency histogram. record is called from the client library's
// delivery goroutine; the counters are read concurrently for progress.
type tracker struct {
	mu     sync.Mutex
	pubLo  uint64     // first publisher index this receiver expects
	count  uint64     // messages per publisher
	seen   [][]uint64 // per expected publisher, one bit per sequence number
	high   []int64    // per expected publisher, highest sequence seen (-1: none)
	hist   histogram
	notify chan uint64 // optional: each new sequence number is offered here (rpc callers)

	want       atomic.Int64 // unique messages expected: planned, then what was actually sent
	unique     atomic.Int64
	duplicates atomic.Int64
	outOfOrder atomic.Int64
	invalid    atomic.Int64
	lastAt     atomic.Int64 // Unix nanoseconds of the latest valid delivery
}

// newTracker returns a tracker expecting count messages from each of the
// publishers pubLo … pubLo+pubs-1.
func newTracker(pubLo uint64, pubs int, count int) *tracker {
	t := &tracker{pubLo: pubLo, count: uint64(count), seen: make([][]uint64, pubs), high: make([]int64, pubs)}
	for i := range t.seen {
		t.seen[i] = make([]uint64, (count+63)/64)
		t.high[i] = -1
	}
	t.want.Store(int64(pubs) * int64(count))
	return t
}

// expected returns how many unique messages this receiver should get: all
// that were planned, until sentBy has corrected that.
func (t *tracker) expected() int64 { return t.want.Load() }

// sentBy sets the expectation to what the publishers actually sent, given
// per publisher index, so that a publisher that stopped early or an
// interrupted run does not count unsent messages as lost.
func (t *tracker) sentBy(sent []atomic.Int64) {
	var n int64
	for p := range t.seen {
		n += sent[t.pubLo+uint64(p)].Load()
	}
	t.want.Store(n)
}

// record accounts for one delivered payload received at now (Unix nanoseconds).
func (t *tracker) record(payload []byte, now int64) {
	h, err := decodeHeader(payload)
	if err != nil || h.pub < t.pubLo || h.pub-t.pubLo >= uint64(len(t.seen)) || h.seq >= t.count {
		t.invalid.Add(1)
		return
	}
	p := h.pub - t.pubLo
	word, bit := h.seq/64, uint64(1)<<(h.seq%64)
	t.mu.Lock()
	if t.seen[p][word]&bit != 0 {
		t.mu.Unlock()
		t.duplicates.Add(1)
		t.lastAt.Store(now)
		return
	}
	t.seen[p][word] |= bit
	if int64(h.seq) < t.high[p] {
		t.outOfOrder.Add(1)
	} else {
		t.high[p] = int64(h.seq)
	}
	t.hist.add(now - h.sent)
	t.mu.Unlock()
	t.unique.Add(1)
	t.lastAt.Store(now)
	if t.notify != nil {
		select {
		case t.notify <- h.seq:
		default: // the caller gave up on this one; it is counted all the same
		}
	}
}

// done reports whether every expected message has arrived.
func (t *tracker) done() bool { return t.unique.Load() >= t.expected() }

// tally is the sum of several trackers.
type tally struct {
	expected, unique, duplicates, outOfOrder, invalid int64
	lastAt                                            int64
	hist                                              histogram
}

// add folds t into the tally.
func (s *tally) add(t *tracker) {
	t.mu.Lock()
	s.hist.merge(&t.hist)
	t.mu.Unlock()
	s.expected += t.expected()
	s.unique += t.unique.Load()
	s.duplicates += t.duplicates.Load()
	s.outOfOrder += t.outOfOrder.Load()
	s.invalid += t.invalid.Load()
	s.lastAt = max(s.lastAt, t.lastAt.Load())
}

// fill writes the tally's counts into r.
func (s *tally) fill(r *Result) {
	r.Expected = s.expected
	r.Received = s.unique
	r.Lost = max(s.expected-s.unique, 0)
	r.Duplicates = s.duplicates
	r.OutOfOrder = s.outOfOrder
	r.Invalid = s.invalid
	r.Latency = s.hist.latency()
}
