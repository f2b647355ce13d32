package cluster

import (
	"sync"
)

// subRef identifies one subscription: a client's filter. Module
// subscriptions all belong to the engine's one inline client, so for them
// the subscription id tells them apart.
type subRef struct {
	client string
	id     int
	filter string
	raw    string // a binding key of its own (user or client keys) instead of the filter's
}

// key returns the binding key the subscription wants.
func (r subRef) key() (string, bool) {
	if r.raw != "" {
		return r.raw, true
	}
	return FilterKey(r.filter)
}

// interest is the set of binding keys this node wants, with the
// subscriptions that want each key. Hooks change it as subscriptions come
// and go; a session's binder makes the queue's bindings follow it.
//
// Changes are marked dirty and applied in rounds. Whoever needs a change
// to have reached RabbitMQ (a SUBACK should mean the node now receives the
// filter's messages from other nodes) waits for the round channel that was
// current when it made the change: the binder closes it after the round
// that includes the change.
type interest struct {
	mu    sync.Mutex
	refs  map[string]map[subRef]struct{} // binding key -> subscriptions wanting it
	dirty map[string]struct{}            // keys whose binding may be wrong
	round chan struct{}                  // closed when the dirty keys are applied
	kick  chan struct{}                  // wakes the binder; capacity 1
}

func newInterest() *interest {
	return &interest{
		refs:  make(map[string]map[subRef]struct{}),
		dirty: make(map[string]struct{}),
		round: make(chan struct{}),
		kick:  make(chan struct{}, 1),
	}
}

// add records subscriptions. It returns the round to wait for when a key
// was wanted for the first time, else nil: an existing binding already
// carries the messages.
func (in *interest) add(refs ...subRef) <-chan struct{} {
	in.mu.Lock()
	defer in.mu.Unlock()
	var wait <-chan struct{}
	for _, r := range refs {
		key, ok := r.key()
		if !ok {
			continue
		}
		subs := in.refs[key]
		if subs == nil {
			subs = make(map[subRef]struct{})
			in.refs[key] = subs
			in.dirty[key] = struct{}{}
			wait = in.round
		}
		subs[r] = struct{}{}
	}
	if wait != nil {
		in.poke()
	}
	return wait
}

// remove forgets subscriptions; a key nobody wants any more is unbound.
func (in *interest) remove(refs ...subRef) {
	in.mu.Lock()
	defer in.mu.Unlock()
	changed := false
	for _, r := range refs {
		key, ok := r.key()
		if !ok {
			continue
		}
		subs := in.refs[key]
		if subs == nil {
			continue
		}
		delete(subs, r)
		if len(subs) == 0 {
			delete(in.refs, key)
			in.dirty[key] = struct{}{}
			changed = true
		}
	}
	if changed {
		in.poke()
	}
}

// poke wakes the binder without blocking; in.mu must be held.
func (in *interest) poke() {
	select {
	case in.kick <- struct{}{}:
	default:
	}
}

// take returns the dirty keys, each with whether it is wanted now, and the
// round channel to close once they are applied. all takes every wanted
// key instead, for a new session whose queue has no bindings yet.
func (in *interest) take(all bool) (map[string]bool, chan struct{}) {
	in.mu.Lock()
	defer in.mu.Unlock()
	keys := make(map[string]bool, len(in.dirty))
	if all {
		for k := range in.refs {
			keys[k] = true
		}
	}
	for k := range in.dirty {
		_, want := in.refs[k]
		keys[k] = want
	}
	in.dirty = make(map[string]struct{})
	done := in.round
	in.round = make(chan struct{})
	return keys, done
}

// wanted returns the number of distinct subscription filter keys wanted
// (user and client keys not included).
func (in *interest) wanted() int {
	in.mu.Lock()
	defer in.mu.Unlock()
	n := 0
	for k := range in.refs {
		if !isIDKey(k) {
			n++
		}
	}
	return n
}

// load records the subscriptions fn lists while holding the lock, so that
// no hook's change can slip in between the listing and its recording.
func (in *interest) load(fn func(add func(subRef))) {
	in.mu.Lock()
	defer in.mu.Unlock()
	fn(func(r subRef) {
		key, ok := r.key()
		if !ok {
			return
		}
		subs := in.refs[key]
		if subs == nil {
			subs = make(map[subRef]struct{})
			in.refs[key] = subs
			in.dirty[key] = struct{}{}
		}
		subs[r] = struct{}{}
	})
	in.poke()
}
