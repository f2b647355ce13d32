package cluster

import (
	"sync"
	"time"
)

// stamp orders the versions of one topic's retained message across nodes:
// the later time wins, and on equal times the greater origin node id, so
// every node picks the same winner.
type stamp struct {
	ts      int64  // Unix nanoseconds, on the origin's clock
	origin  string // node id
	present bool   // false: the retained message was cleared (a tombstone)
}

func (a stamp) after(b stamp) bool {
	return a.ts > b.ts || (a.ts == b.ts && a.origin > b.origin)
}

// retainedIndex remembers, per topic, the stamp of the retained message
// this node holds, tombstones included, so that a late or repeated copy
// never replaces a newer one (last writer wins) and a clear is not undone
// by an older message arriving afterwards.
type retainedIndex struct {
	mu sync.Mutex
	m  map[string]stamp
	// pending holds the stamp of a local retained publish from the moment
	// the engine is about to store it until it is federated.
	pending map[string]int64
	// clock is the latest time handed out or seen. Local stamps are taken
	// after it, so a node that has seen a message from a peer whose clock
	// runs ahead still orders its own later publish after it.
	clock int64
}

func newRetainedIndex() *retainedIndex {
	return &retainedIndex{m: make(map[string]stamp), pending: make(map[string]int64)}
}

// local stamps a retained publish (or, without a payload, a clear) made
// on this node and returns its time. The stamp is also kept for take, so
// that the message is federated with it even if a newer one from another
// node has replaced it here meanwhile.
func (r *retainedIndex) local(topic, node string, present bool) int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	ts := max(time.Now().UnixNano(), r.clock+1)
	r.clock = ts
	r.m[topic] = stamp{ts: ts, origin: node, present: present}
	r.pending[topic] = ts
	return ts
}

// take returns and forgets the stamp local gave the latest retained
// publish on topic.
func (r *retainedIndex) take(topic string) (int64, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	ts, ok := r.pending[topic]
	delete(r.pending, topic)
	return ts, ok
}

// remote records s for topic if it is newer than what this node holds. It
// reports whether it was, and whether the node held a retained message
// for the topic before.
func (r *retainedIndex) remote(topic string, s stamp) (newer, held bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	cur, ok := r.m[topic]
	if ok && !s.after(cur) {
		return false, cur.present
	}
	r.m[topic] = s
	r.clock = max(r.clock, s.ts)
	return true, ok && cur.present
}

// seed records a retained message the node already holds (restored from
// its store) unless a stamp for the topic is known; such a message is
// dated by its creation, which is what the store keeps.
func (r *retainedIndex) seed(topic, node string, created int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.m[topic]; !ok {
		r.m[topic] = stamp{ts: created, origin: node, present: true}
	}
}

// get returns the stamp known for topic.
func (r *retainedIndex) get(topic string) (stamp, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	s, ok := r.m[topic]
	return s, ok
}

// tombstones returns the cleared topics with their stamps.
func (r *retainedIndex) tombstones() map[string]stamp {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make(map[string]stamp)
	for t, s := range r.m {
		if !s.present {
			out[t] = s
		}
	}
	return out
}
