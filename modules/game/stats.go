package game

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/valyala/histogram"
)

// stats counts what the module does. Tick durations go to a summary on
// /metrics and to a histogram Stats reads (and resets) for benchmarks.
type stats struct {
	players  atomic.Int64 // seated in this node's rooms
	online   atomic.Int64 // logged in on this node
	ticks    atomic.Uint64
	late     atomic.Uint64
	skipped  atomic.Uint64
	inputs   atomic.Uint64
	messages atomic.Uint64
	panics   atomic.Uint64
	matches  atomic.Uint64
	drops    sync.Map // reason -> *atomic.Uint64

	summary *metrics.Summary
	mu      sync.Mutex
	hist    *histogram.Fast
}

func newStats() *stats { return &stats{hist: histogram.NewFast()} }

func (s *stats) tick(d time.Duration, late bool) {
	s.ticks.Add(1)
	if late {
		s.late.Add(1)
	}
	sec := d.Seconds()
	if s.summary != nil {
		s.summary.Update(sec)
	}
	s.mu.Lock()
	s.hist.Update(sec)
	s.mu.Unlock()
}

func (s *stats) dropped(reason string) {
	c, _ := s.drops.LoadOrStore(reason, new(atomic.Uint64))
	c.(*atomic.Uint64).Add(1)
}

func (s *stats) droppedCount(reason string) uint64 {
	if c, ok := s.drops.Load(reason); ok {
		return c.(*atomic.Uint64).Load()
	}
	return 0
}

// dropReasons are the reasons inputs are dropped for, as metric labels.
var dropReasons = []string{"rate_limited", "late", "too_early", "no_seat", "no_room", "inbox_full", "bad_input"}

// register exposes the counters on set.
func (s *stats) register(set *metrics.Set, m *Module) {
	if set == nil {
		return
	}
	g := func(name string, f func() float64) { set.NewGauge(name, f) }
	g("colony_game_rooms", func() float64 { return float64(m.roomCount()) })
	g("colony_game_players", func() float64 { return float64(s.players.Load()) })
	g("colony_game_players_online", func() float64 { return float64(s.online.Load()) })
	g("colony_game_ticks_total", func() float64 { return float64(s.ticks.Load()) })
	g("colony_game_ticks_late_total", func() float64 { return float64(s.late.Load()) })
	g("colony_game_ticks_skipped_total", func() float64 { return float64(s.skipped.Load()) })
	g("colony_game_inputs_total", func() float64 { return float64(s.inputs.Load()) })
	for _, r := range dropReasons {
		g(`colony_game_inputs_dropped_total{reason="`+r+`"}`, func() float64 { return float64(s.droppedCount(r)) })
	}
	g("colony_game_messages_total", func() float64 { return float64(s.messages.Load()) })
	g("colony_game_panics_total", func() float64 { return float64(s.panics.Load()) })
	g("colony_game_matches_total", func() float64 { return float64(s.matches.Load()) })
	g("colony_game_queued_players", func() float64 { return float64(m.mm.queued()) })
	s.summary = set.NewSummaryExt("colony_game_tick_duration_seconds", time.Minute, []float64{0.5, 0.9, 0.99, 1})
}

// Stats is a snapshot of the module's counters on this node.
type Stats struct {
	Rooms    int
	Players  int64  // seated in this node's rooms
	Online   int64  // logged in on this node
	Ticks    uint64 // ticks run
	Late     uint64 // ticks that ended more than one interval after they were due
	Skipped  uint64 // ticks skipped by rooms too far behind
	Inputs   uint64 // inputs accepted
	Messages uint64 // messages pushed to players
	Matches  uint64 // matches formed here
	// Tick duration quantiles (seconds) since the last ResetTickStats.
	TickP50, TickP99, TickMax float64
}

// Stats returns the module's counters on this node.
func (m *Module) Stats() Stats {
	s := m.stats
	s.mu.Lock()
	p50, p99, pmax := s.hist.Quantile(0.5), s.hist.Quantile(0.99), s.hist.Quantile(1)
	s.mu.Unlock()
	return Stats{Rooms: m.roomCount(), Players: s.players.Load(), Online: s.online.Load(), Ticks: s.ticks.Load(),
		Late: s.late.Load(), Skipped: s.skipped.Load(), Inputs: s.inputs.Load(), Messages: s.messages.Load(),
		Matches: s.matches.Load(), TickP50: p50, TickP99: p99, TickMax: pmax}
}

// ResetTickStats starts the tick duration quantiles afresh (benchmarks
// call it after their warm-up).
func (m *Module) ResetTickStats() {
	m.stats.mu.Lock()
	m.stats.hist.Reset()
	m.stats.mu.Unlock()
}
