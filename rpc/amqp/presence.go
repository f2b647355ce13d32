package amqp

import (
	"encoding/json"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
)

// missedBeats is how many announcement intervals a peer may stay silent
// before it counts as gone.
const missedBeats = 3

// NodeInfo describes a live peer as it last announced itself.
type NodeInfo struct {
	Node     string    // the peer's node id
	Modules  []string  // modules it serves, sorted
	Load     float64   // calls it was executing for its peers
	Version  string    // its software version
	LastSeen time.Time // when its last announcement arrived
}

// peer is one remote node. seen and life are atomic because Serves reads
// them on every call without taking the table's lock.
type peer struct {
	id   string       // the node's id; never changes
	info NodeInfo     // guarded by peerTable.mu
	seen atomic.Int64 // unix nanoseconds of the last announcement
	life atomic.Int64 // nanoseconds of silence after which the peer is gone
}

func (p *peer) alive(now int64) bool { return now-p.seen.Load() <= p.life.Load() }

// peerTable is what this node knows about the others. It outlives
// sessions: during an outage the last known peers are kept, so calls fail
// as unavailable rather than not_found.
type peerTable struct {
	mu    sync.Mutex
	nodes map[string]*peer
	// byModule maps a module to the peers announcing it. It is rebuilt
	// whenever membership changes, which is rare, and read without locks.
	byModule atomic.Pointer[map[string][]*peer]
}

func (pt *peerTable) init() {
	pt.nodes = make(map[string]*peer)
	pt.byModule.Store(&map[string][]*peer{})
}

// rebuild recomputes byModule; pt.mu must be held.
func (pt *peerTable) rebuild() {
	m := make(map[string][]*peer)
	for _, p := range pt.nodes {
		for _, mod := range p.info.Modules {
			m[mod] = append(m[mod], p)
		}
	}
	pt.byModule.Store(&m)
}

// serves reports whether a live peer announced module. While disconnected
// no announcement can arrive, so liveness is not checked.
func (pt *peerTable) serves(module string, connected bool) bool {
	ps := (*pt.byModule.Load())[module]
	if len(ps) == 0 {
		return false
	}
	if !connected {
		return true
	}
	now := time.Now().UnixNano()
	for _, p := range ps {
		if p.alive(now) {
			return true
		}
	}
	return false
}

// alive reports whether a live peer announced module; with node set, that
// peer must be node.
func (pt *peerTable) alive(module, node string) bool {
	now := time.Now().UnixNano()
	for _, p := range (*pt.byModule.Load())[module] {
		if p.alive(now) && (node == "" || p.id == node) {
			return true
		}
	}
	return false
}

// observe records an announcement. It reports whether the sender is new
// or asked to hear from its peers, in which case this node should announce
// itself without waiting for its next beat.
func (t *Transport) observe(a Announcement, now time.Time) (answer bool) {
	if a.Node == "" || a.Node == t.opts.Node {
		return false
	}
	pt := &t.peers
	pt.mu.Lock()
	defer pt.mu.Unlock()
	p := pt.nodes[a.Node]
	if a.Bye {
		if p != nil {
			delete(pt.nodes, a.Node)
			pt.rebuild()
			t.log.Info().Str("peer", a.Node).Msg("node left")
		}
		return false
	}
	beat := t.opts.Beat
	if a.BeatMS > 0 {
		beat = time.Duration(a.BeatMS) * time.Millisecond
	}
	mods := slices.Clone(a.Modules)
	slices.Sort(mods)
	mods = slices.Compact(mods)
	joined := p == nil
	if joined {
		p = &peer{id: a.Node}
		pt.nodes[a.Node] = p
	}
	changed := joined || !slices.Equal(p.info.Modules, mods)
	p.info = NodeInfo{Node: a.Node, Modules: mods, Load: a.Load, Version: a.Version, LastSeen: now}
	p.life.Store(int64(missedBeats * beat))
	p.seen.Store(now.UnixNano())
	if changed {
		pt.rebuild()
	}
	switch {
	case joined:
		t.log.Info().Str("peer", a.Node).Strs("modules", mods).Str("version", a.Version).Msg("node joined")
	case changed:
		t.log.Info().Str("peer", a.Node).Strs("modules", mods).Msg("node changed modules")
	}
	return joined || a.Hello
}

// sweep forgets the peers that missed their beats.
func (t *Transport) sweep(now time.Time) {
	pt := &t.peers
	pt.mu.Lock()
	defer pt.mu.Unlock()
	gone := false
	for id, p := range pt.nodes {
		if !p.alive(now.UnixNano()) {
			delete(pt.nodes, id)
			gone = true
			t.log.Warn().Str("peer", id).Time("last_seen", p.info.LastSeen).Msg("node gone: missed its beats")
		}
	}
	if gone {
		pt.rebuild()
	}
}

// refresh gives every known peer a fresh start, after this node was away.
func (pt *peerTable) refresh(now time.Time) {
	pt.mu.Lock()
	defer pt.mu.Unlock()
	for _, p := range pt.nodes {
		p.seen.Store(now.UnixNano())
		p.info.LastSeen = now
	}
}

// Nodes returns the live peers, sorted by node id; this node is not among
// them. While disconnected it returns the peers known before, and after
// Close none.
func (t *Transport) Nodes() []NodeInfo {
	if t.shut.Load() {
		return nil
	}
	pt := &t.peers
	now := time.Now().UnixNano()
	connected := t.Connected()
	pt.mu.Lock()
	out := make([]NodeInfo, 0, len(pt.nodes))
	for _, p := range pt.nodes {
		if !connected || p.alive(now) {
			info := p.info
			info.Modules = slices.Clone(info.Modules)
			out = append(out, info)
		}
	}
	pt.mu.Unlock()
	slices.SortFunc(out, func(a, b NodeInfo) int {
		switch {
		case a.Node < b.Node:
			return -1
		case a.Node > b.Node:
			return 1
		}
		return 0
	})
	return out
}

// openPresence declares the presence exchange, consumes it on a queue of
// this connection's own and starts the beat loop, which announces the node
// at once.
func (s *session) openPresence() error {
	ch, err := s.channel("presence")
	if err != nil {
		return err
	}
	ex := PresenceExchange(s.t.opts.Prefix)
	if err := ch.ExchangeDeclare(ex, amqp091.ExchangeFanout, false, false, false, false, nil); err != nil {
		return fmt.Errorf("declare exchange %s: %w", ex, err)
	}
	// A server-named, exclusive, auto-delete queue: nobody else needs
	// to know its name, and it goes away with the connection.
	q, err := ch.QueueDeclare("", false, true, true, false, nil)
	if err != nil {
		return fmt.Errorf("declare presence queue: %w", err)
	}
	if err := ch.QueueBind(q.Name, "", ex, false, nil); err != nil {
		return fmt.Errorf("bind presence queue: %w", err)
	}
	deliveries, err := ch.Consume(q.Name, "", true, true, false, false, nil)
	if err != nil {
		return fmt.Errorf("consume presence queue: %w", err)
	}
	s.presCh = ch
	s.bg.Add(2)
	go s.listen(deliveries)
	go s.beat()
	return nil
}

// listen records the announcements of the peers.
func (s *session) listen(deliveries <-chan amqp091.Delivery) {
	defer s.bg.Done()
	for d := range deliveries {
		var a Announcement
		if err := json.Unmarshal(d.Body, &a); err != nil {
			// Logged at debug only: a broken peer would repeat it every beat.
			s.t.log.Debug().Err(err).Msg("bad presence announcement")
			continue
		}
		if s.t.observe(a, time.Now()) {
			select {
			case s.poke <- struct{}{}:
			default: // an announcement is already due
			}
		}
	}
}

// beat announces the node at once, then every Beat and whenever a new
// peer shows up, and forgets the peers that fell silent.
func (s *session) beat() {
	defer s.bg.Done()
	defer close(s.beatDone)
	hello := true
	announce := func() {
		if err := s.announce(hello, false); err != nil {
			// Only a closed channel fails a publish: the session is
			// dying and that is logged once.
			s.t.log.Debug().Err(err).Msg("announce")
			return
		}
		hello = false
	}
	announce()
	tick := time.NewTicker(s.t.opts.Beat)
	defer tick.Stop()
	for {
		select {
		case <-s.quit:
			return
		case now := <-tick.C:
			s.t.sweep(now)
			announce()
		case <-s.poke:
			announce()
		}
	}
}

// announce publishes this node's presence; bye announces that it leaves.
func (s *session) announce(hello, bye bool) error {
	t := s.t
	a := Announcement{
		Node:    t.opts.Node,
		Modules: s.modules,
		Load:    float64(t.inflight.Load()),
		Version: t.opts.Version,
		BeatMS:  t.opts.Beat.Milliseconds(),
		Hello:   hello,
		Bye:     bye,
	}
	if bye || a.Modules == nil {
		a.Modules = []string{}
	}
	body, err := json.Marshal(a)
	if err != nil {
		return fmt.Errorf("encode announcement: %w", err)
	}
	err = s.presCh.Publish(PresenceExchange(t.opts.Prefix), "", false, false, amqp091.Publishing{
		ContentType: ContentTypeJSON,
		Body:        body,
	})
	if err != nil {
		return fmt.Errorf("publish announcement: %w", err)
	}
	return nil
}
