package bench

import (
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

// deliver feeds one synthetic delivery of (pub, seq), sent lat before now.
func deliver(t *tracker, pub, seq uint64, lat time.Duration) {
	now := time.Now().UnixNano()
	t.record(header{pub: pub, seq: seq, sent: now - int64(lat)}.encode(64), now)
}

func TestTrackerAccounting(t *testing.T) {
	tr := newTracker(0, 2, 5)                     // publishers 0 and 1, five messages each
	for _, seq := range []uint64{0, 1, 1, 3, 2} { // a duplicate of 1, 2 after 3, 4 never comes
		deliver(tr, 0, seq, time.Millisecond)
	}
	for seq := range uint64(5) {
		deliver(tr, 1, seq, 2*time.Millisecond)
	}
	tr.record([]byte("short"), time.Now().UnixNano())                      // not ours
	deliver(tr, 7, 0, time.Millisecond)                                    // unknown publisher
	deliver(tr, 1, 5, time.Millisecond)                                    // beyond Count
	tr.record(header{pub: 0, seq: 4}.encode(HeaderSize)[:HeaderSize-1], 0) // truncated header

	var s tally
	s.add(tr)
	var r Result
	s.fill(&r)
	want := Result{Expected: 10, Received: 9, Lost: 1, Duplicates: 1, OutOfOrder: 1, Invalid: 4}
	if r.Expected != want.Expected || r.Received != want.Received || r.Lost != want.Lost ||
		r.Duplicates != want.Duplicates || r.OutOfOrder != want.OutOfOrder || r.Invalid != want.Invalid {
		t.Fatalf("got expected %d received %d lost %d dup %d ooo %d invalid %d, want %+v",
			r.Expected, r.Received, r.Lost, r.Duplicates, r.OutOfOrder, r.Invalid, want)
	}
	if tr.done() {
		t.Fatal("done with a message missing")
	}
	deliver(tr, 0, 4, time.Millisecond)
	if !tr.done() {
		t.Fatal("not done with every message in")
	}
	l := r.Latency
	if !(l.P50 >= time.Millisecond && l.P50 <= l.P90 && l.P90 <= l.P99 && l.P99 <= l.Max && l.Max < time.Second) {
		t.Fatalf("latency %+v", l)
	}
}

func TestTrackerOffsetPublishers(t *testing.T) {
	tr := newTracker(3, 1, 2) // pairs: receiver 3 only expects publisher 3
	deliver(tr, 3, 0, 0)
	deliver(tr, 3, 1, 0)
	deliver(tr, 2, 0, 0)
	if tr.unique.Load() != 2 || tr.invalid.Load() != 1 || !tr.done() {
		t.Fatalf("unique %d invalid %d", tr.unique.Load(), tr.invalid.Load())
	}
}

func TestTallySumsTrackers(t *testing.T) {
	a, b := newTracker(0, 1, 3), newTracker(0, 1, 3)
	deliver(a, 0, 0, time.Microsecond)
	deliver(b, 0, 0, time.Microsecond)
	deliver(b, 0, 0, time.Microsecond)
	var s tally
	s.add(a)
	s.add(b)
	var r Result
	s.fill(&r)
	if r.Expected != 6 || r.Received != 2 || r.Lost != 4 || r.Duplicates != 1 {
		t.Fatalf("%+v", r)
	}
}

// exactPercentile is the nearest-rank percentile of sorted values.
func exactPercentile(sorted []int64, p float64) int64 {
	rank := int(p/100*float64(len(sorted)) + 0.999999999)
	return sorted[min(max(rank, 1), len(sorted))-1]
}

func TestPercentileSmallValuesAreExact(t *testing.T) {
	var h histogram
	for v := int64(1); v <= 100; v++ {
		h.add(v)
	}
	for _, c := range []struct {
		p    float64
		want int64
	}{{50, 50}, {90, 90}, {99, 99}, {100, 100}, {0.5, 1}, {1, 1}, {1.5, 2}} {
		if got := h.percentile(c.p); got != c.want {
			t.Errorf("p%v = %d, want %d", c.p, got, c.want)
		}
	}
	var empty histogram
	if empty.percentile(50) != 0 || empty.latency() != (Latency{}) {
		t.Error("empty histogram should report zeros")
	}
}

func TestPercentileWithinResolution(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	var h, h2 histogram
	vals := make([]int64, 20_000)
	for i := range vals {
		// log-uniform from 1µs to 1s, like latencies
		vals[i] = int64(1e3 * float64(int64(1)<<rng.IntN(20)) * (1 + rng.Float64()))
		if i%2 == 0 {
			h.add(vals[i])
		} else {
			h2.add(vals[i])
		}
	}
	h.merge(&h2)
	slices.Sort(vals)
	for _, p := range []float64{50, 90, 99, 99.9, 100} {
		want := exactPercentile(vals, p)
		got := h.percentile(p)
		if got < want || float64(got-want) > float64(want)/histSub {
			t.Errorf("p%v = %d, exact %d: outside the bucket resolution", p, got, want)
		}
	}
	if h.max != vals[len(vals)-1] || h.percentile(100) != h.max {
		t.Errorf("max %d, want %d", h.max, vals[len(vals)-1])
	}
}

func TestBucketsAreContiguous(t *testing.T) {
	prev := -1
	for _, v := range []int64{0, 1, 255, 256, 257, 511, 512, 1 << 20, 1<<40 + 12345, 1<<62 + 7} {
		i := bucketOf(v)
		if i < prev {
			t.Fatalf("bucket of %d = %d, below the previous %d", v, i, prev)
		}
		if up := bucketUpper(i); up < v || (i > 0 && bucketUpper(i-1) >= v) {
			t.Fatalf("value %d in bucket %d with upper bound %d (previous %d)", v, i, up, bucketUpper(i-1))
		}
		prev = i
	}
}

func TestHeaderRoundTrip(t *testing.T) {
	h := header{pub: 3, seq: 1 << 40, sent: time.Now().UnixNano()}
	b := h.encode(100)
	if len(b) != 100 {
		t.Fatalf("payload of %d bytes", len(b))
	}
	got, err := decodeHeader(b)
	if err != nil || got != h {
		t.Fatalf("decoded %+v, %v; want %+v", got, err, h)
	}
	if _, err := decodeHeader(b[:HeaderSize-1]); err == nil {
		t.Fatal("short payload decoded")
	}
}
