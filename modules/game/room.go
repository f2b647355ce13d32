package game

import (
	"container/heap"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"runtime/debug"
	"slices"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"github.com/colonymq/colony/rpc"
)

// maxCatchUp bounds how many ticks a room that fell behind runs in a row;
// beyond, ticks are skipped (counted as late) and their inputs applied at
// the next tick run.
const maxCatchUp = 5

// Room is one game room. Its state is owned by one goroutine, which runs
// the tick loop and every call into its Logic; the methods below are for
// Logic and may be called only from those calls.
type Room struct {
	m       *Module
	id      string
	code    string
	game    *Game
	mode    string
	private bool
	logic   Logic
	log     zerolog.Logger
	inbox   chan func()
	done    chan struct{}
	info    atomic.Pointer[RoomInfo] // for lists, read by any goroutine
	curTick atomic.Uint64

	// Owned by the room's goroutine.
	reserved map[string]bool // matchmade rooms: who may sit
	seats    []*seat         // players, in join order
	specs    []*seat
	tick     uint64
	n        uint64
	interval time.Duration
	start    time.Time
	now      time.Time
	pending  map[uint64][]Input
	timers   timerHeap
	timerSeq uint64
	emptyAt  time.Time // when the room became empty; zero while occupied
	closing  Reason    // set: close after the current call
	closed   bool
	replay   int
	rate     float64
	burst    float64
}

// seat is a player's (or a spectator's) place in a room.
type seat struct {
	p      *Player
	client string // the connection the room pushes to; "" while away
	home   string // the node of that connection
	awayAt time.Time
	ring   ring
	tokens float64
	filled time.Time
	drops  map[string]int
	noted  time.Time
}

// TimerID names a timer of a room, for Cancel.
type TimerID uint64

type timer struct {
	id    TimerID
	at    time.Time
	every time.Duration
	fn    func()
}

type timerHeap []*timer

func (h timerHeap) Len() int { return len(h) }
func (h timerHeap) Less(i, j int) bool {
	if h[i].at.Equal(h[j].at) {
		return h[i].id < h[j].id
	}
	return h[i].at.Before(h[j].at)
}
func (h timerHeap) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *timerHeap) Push(x any)   { *h = append(*h, x.(*timer)) }
func (h *timerHeap) Pop() any {
	old := *h
	t := old[len(old)-1]
	*h = old[:len(old)-1]
	return t
}

// ID returns the room id.
func (r *Room) ID() string { return r.id }

// GameName returns the room's game type.
func (r *Room) GameName() string { return r.game.Name }

// Mode returns the matchmaking mode that made the room, "" otherwise.
func (r *Room) Mode() string { return r.mode }

// Tick returns the current tick: 0 before the first, then the tick being
// run (during OnInput and OnTick) or last run.
func (r *Room) Tick() uint64 { return r.tick }

// Now returns the room's time: the time its current tick was due.
func (r *Room) Now() time.Time { return r.now }

// Log returns the room's logger.
func (r *Room) Log() *zerolog.Logger { return &r.log }

// Players returns the seated players in join order (spectators excluded).
func (r *Room) Players() []*Player {
	out := make([]*Player, len(r.seats))
	for i, s := range r.seats {
		out[i] = s.p
	}
	return out
}

// Spectators returns the spectators.
func (r *Room) Spectators() []*Player {
	out := make([]*Player, len(r.specs))
	for i, s := range r.specs {
		out[i] = s.p
	}
	return out
}

// Player returns the seated player or spectator id, nil if none.
func (r *Room) Player(id string) *Player {
	if s := r.seatOf(id); s != nil {
		return s.p
	}
	return nil
}

// Broadcast sends a message of type typ with data to everyone in the room.
func (r *Room) Broadcast(typ string, data any) {
	r.emitData(typ, data, r.everyone())
}

// Send sends a message to one player or spectator.
func (r *Room) Send(player, typ string, data any) {
	if s := r.seatOf(player); s != nil {
		r.emitData(typ, data, []*seat{s})
	}
}

// SendExcept sends a message to everyone in the room but one.
func (r *Room) SendExcept(player, typ string, data any) {
	r.emitData(typ, data, slices.DeleteFunc(r.everyone(), func(s *seat) bool { return s.p.ID == player }))
}

// After runs fn on the room's goroutine once d has passed, at the first
// tick at or after that time.
func (r *Room) After(d time.Duration, fn func()) TimerID { return r.addTimer(d, 0, fn) }

// Every runs fn every d (at tick resolution) until cancelled.
func (r *Room) Every(d time.Duration, fn func()) TimerID {
	return r.addTimer(d, max(d, r.interval), fn)
}

// Cancel stops a timer; cancelling a fired or unknown one does nothing.
func (r *Room) Cancel(id TimerID) {
	for i, t := range r.timers {
		if t.id == id {
			heap.Remove(&r.timers, i)
			return
		}
	}
}

func (r *Room) addTimer(d, every time.Duration, fn func()) TimerID {
	r.timerSeq++
	t := &timer{id: TimerID(r.timerSeq), at: r.now.Add(d), every: every, fn: fn}
	heap.Push(&r.timers, t)
	return t.id
}

// Kick removes a player or spectator from the room.
func (r *Room) Kick(player string) {
	if s := r.seatOf(player); s != nil {
		r.remove(s, ReasonKicked, true)
	}
}

// End ends the game: everyone gets an "ended" message with res, the
// result is stored (ratings updated for matchmade rooms), and the room
// closes once the current call returns.
func (r *Room) End(res Result) {
	if r.closing != "" {
		return
	}
	r.emitData(MsgEnded, res, r.everyone())
	players := make([]string, len(r.seats))
	for i, s := range r.seats {
		players[i] = s.p.ID
	}
	r.m.recordResult(Record{Room: r.id, Game: r.game.Name, Mode: r.mode, Players: players,
		Result: res, Ended: r.now.UnixMilli(), Ticks: r.tick})
	r.closing = ReasonEnded
}

// everyone returns players then spectators.
func (r *Room) everyone() []*seat {
	out := make([]*seat, 0, len(r.seats)+len(r.specs))
	return append(append(out, r.seats...), r.specs...)
}

func (r *Room) seatOf(id string) *seat {
	for _, s := range r.seats {
		if s.p.ID == id {
			return s
		}
	}
	for _, s := range r.specs {
		if s.p.ID == id {
			return s
		}
	}
	return nil
}

func (r *Room) emitData(typ string, data any, to []*seat) {
	b, err := json.Marshal(data)
	if err != nil {
		r.log.Error().Err(err).Str("type", typ).Msg("encode room message")
		return
	}
	r.emit(&Msg{Type: typ, Data: b}, to)
}

// emit numbers msg, encodes it once and sends it to every seat in to,
// keeping it for players to replay.
func (r *Room) emit(msg *Msg, to []*seat) {
	if len(to) == 0 {
		return
	}
	r.n++
	msg.Room, msg.N, msg.Tick = r.id, r.n, r.tick
	b, err := json.Marshal(msg)
	if err != nil {
		r.log.Error().Err(err).Str("type", msg.Type).Msg("encode room message")
		return
	}
	e := entry{n: r.n, b: b}
	for _, s := range to {
		if !s.p.Spectator {
			s.ring.push(e)
		}
		if s.client != "" {
			r.m.push(s.p.ID, s.home, TopicRoom, b)
		}
	}
}

// run is the room's goroutine.
func (r *Room) run(t Ticker) {
	defer t.Stop()
	for !r.closed {
		select {
		case f := <-r.inbox:
			r.safely("command", f)
		case now := <-t.C():
			// Inputs queued before the tick belong to it: take them first.
			r.drain()
			r.safely("tick", func() { r.advance(now) })
		case <-r.m.stop:
			r.close(ReasonClosed)
		}
		if r.closing != "" && !r.closed {
			r.close(r.closing)
		}
	}
}

// drain runs the commands already queued.
func (r *Room) drain() {
	for {
		select {
		case f := <-r.inbox:
			r.safely("command", f)
		default:
			return
		}
	}
}

// safely runs f; a panic (in game code, most likely) is logged and closes
// the room, whose state can no longer be trusted. The node serves on.
func (r *Room) safely(what string, f func()) {
	defer func() {
		if v := recover(); v != nil {
			r.m.stats.panics.Add(1)
			r.log.Error().Str("panic", fmt.Sprint(v)).Str("in", what).Str("stack", string(debug.Stack())).
				Msg("recovered panic in room; closing it")
			if !r.closed {
				r.closing = ReasonClosed
			}
		}
	}()
	f()
}

// logicSafely calls into Logic outside the tick, where a panic must not
// stop the rest of the work (closing, removing a seat).
func (r *Room) logicSafely(f func()) {
	defer func() {
		if v := recover(); v != nil {
			r.m.stats.panics.Add(1)
			r.log.Error().Str("panic", fmt.Sprint(v)).Str("stack", string(debug.Stack())).Msg("recovered panic in game logic")
			if !r.closed {
				r.closing = ReasonClosed
			}
		}
	}()
	f()
}

// advance runs the ticks due by now.
func (r *Room) advance(now time.Time) {
	due := uint64(max(0, now.Sub(r.start)) / r.interval)
	if due <= r.tick {
		return
	}
	if behind := due - r.tick; behind > maxCatchUp {
		skip := behind - maxCatchUp
		r.tick += skip
		r.m.stats.skipped.Add(skip)
	}
	for r.tick < due && r.closing == "" {
		r.step()
	}
}

// step runs one tick.
func (r *Room) step() {
	wall := time.Now()
	r.tick++
	r.curTick.Store(r.tick)
	r.now = r.start.Add(time.Duration(r.tick) * r.interval)
	for len(r.timers) > 0 && !r.timers[0].at.After(r.now) && r.closing == "" {
		t := r.timers[0]
		if t.every > 0 {
			t.at = t.at.Add(t.every)
			heap.Fix(&r.timers, 0)
		} else {
			heap.Pop(&r.timers)
		}
		t.fn()
	}
	ins := r.takeInputs()
	for _, in := range ins {
		r.logic.OnInput(r, in)
	}
	state := r.logic.OnTick(r)
	switch r.game.Sync {
	case SyncLockStep:
		fi := make([]FrameInput, len(ins))
		for i, in := range ins {
			fi[i] = FrameInput{Player: in.Player, Seq: in.Seq, Data: in.Data}
		}
		r.emit(&Msg{Type: MsgFrame, Inputs: fi}, r.everyone())
	case SyncState:
		if state != nil {
			b, err := json.Marshal(state)
			if err != nil {
				r.log.Error().Err(err).Msg("encode state")
				break
			}
			r.emit(&Msg{Type: MsgFrame, State: b}, r.everyone())
		}
	}
	r.housekeeping()
	r.m.stats.tick(time.Since(wall), r.m.clock.Now().Sub(r.now) > r.interval)
}

// takeInputs returns the inputs of this tick and of any tick skipped.
func (r *Room) takeInputs() []Input {
	if len(r.pending) == 0 {
		return nil
	}
	ins := r.pending[r.tick]
	delete(r.pending, r.tick)
	var older []uint64
	for t := range r.pending {
		if t < r.tick {
			older = append(older, t)
		}
	}
	if len(older) > 0 {
		slices.Sort(older)
		var all []Input
		for _, t := range older {
			all = append(all, r.pending[t]...)
			delete(r.pending, t)
		}
		ins = append(all, ins...)
		for i := range ins {
			ins[i].Tick = r.tick
		}
	}
	return ins
}

// housekeeping ends lost seats, tells players about dropped inputs and
// closes a room left empty.
func (r *Room) housekeeping() {
	grace := time.Duration(r.m.opts.Grace)
	for _, s := range slices.Clone(r.seats) {
		if s.client == "" && !s.awayAt.IsZero() && r.now.Sub(s.awayAt) >= grace {
			r.remove(s, ReasonTimeout, true)
		}
	}
	for _, s := range r.seats {
		if len(s.drops) > 0 && r.now.Sub(s.noted) >= time.Second {
			for reason, n := range s.drops {
				r.emitData(MsgNotice, Notice{Dropped: n, Reason: reason}, []*seat{s})
			}
			clear(s.drops)
			s.noted = r.now
		}
	}
	if len(r.seats) == 0 && r.closing == "" {
		if r.emptyAt.IsZero() {
			r.emptyAt = r.now
		}
		if r.now.Sub(r.emptyAt) >= time.Duration(r.m.opts.EmptyTimeout) {
			r.closing = ReasonClosed
		}
	}
}

// join seats a player or spectator, or gives a player their seat back.
func (r *Room) join(req *roomJoinReq) (*JoinResp, error) {
	if r.closing != "" {
		return nil, errNoRoom(r.id)
	}
	if s := r.seatOf(req.Player); s != nil && s.p.Spectator == req.Spectator {
		return r.rejoin(s, req), nil
	} else if s != nil {
		return nil, rpc.Errorf(rpc.CodeForbidden, "already in room %s as a %s: %w", r.id, kind(s.p), ErrSeated)
	}
	if r.private && req.Code != r.code && !r.reserved[req.Player] {
		return nil, rpc.Errorf(rpc.CodeForbidden, "room %s is private: join with its code: %w", r.id, ErrPrivate)
	}
	p := &Player{ID: req.Player, Spectator: req.Spectator}
	s := &seat{p: p, client: req.Client, home: req.Home, ring: newRing(r.replay), tokens: r.burst,
		filled: r.m.clock.Now(), drops: map[string]int{}}
	if req.Spectator {
		if len(r.specs) >= r.game.Spectators {
			return nil, rpc.Errorf(rpc.CodeForbidden, "room %s has no free spectator place: %w", r.id, ErrFull)
		}
	} else {
		if r.reserved != nil && !r.reserved[req.Player] {
			return nil, rpc.Errorf(rpc.CodeForbidden, "room %s seats only its matched players: %w", r.id, ErrReserved)
		}
		if len(r.seats) >= r.game.Players {
			return nil, rpc.Errorf(rpc.CodeForbidden, "room %s is full: %w", r.id, ErrFull)
		}
	}
	var err error
	r.logicSafely(func() { err = r.logic.OnJoin(r, p) })
	if err != nil {
		var re *rpc.Error
		if errors.As(err, &re) {
			return nil, err
		}
		return nil, rpc.Errorf(rpc.CodeForbidden, "the game refused: %w", err)
	}
	if req.Spectator {
		r.specs = append(r.specs, s)
	} else {
		r.seats = append(r.seats, s)
		r.emptyAt = time.Time{}
		r.m.stats.players.Add(1)
	}
	r.publishInfo()
	data, _ := json.Marshal(map[string]bool{"spectator": req.Spectator})
	r.emit(&Msg{Type: MsgJoined, Player: p.ID, Data: data}, r.everyone())
	return &JoinResp{Room: r.memberInfo()}, nil
}

func kind(p *Player) string {
	if p.Spectator {
		return "spectator"
	}
	return "player"
}

// rejoin gives a seat to its player's new connection and replays what
// the player missed.
func (r *Room) rejoin(s *seat, req *roomJoinReq) *JoinResp {
	wasAway := s.client == ""
	old := s.client
	s.client, s.home, s.awayAt = req.Client, req.Home, time.Time{}
	s.p.Away = false
	if wasAway {
		if rt, ok := r.logic.(Returner); ok {
			r.logicSafely(func() { rt.OnReturn(r, s.p) })
		}
	}
	resp := &JoinResp{Room: r.memberInfo(), Rejoined: true}
	if !s.p.Spectator {
		missed, lost := s.ring.since(req.Since)
		for _, e := range missed {
			r.m.push(s.p.ID, s.home, TopicRoom, e.b)
		}
		resp.Replayed, resp.Missed = len(missed), lost
	}
	if wasAway || old != req.Client {
		r.emit(&Msg{Type: MsgBack, Player: s.p.ID}, slices.DeleteFunc(r.everyone(), func(o *seat) bool { return o == s }))
	}
	return resp
}

// away marks a player's seat as waiting for them; a spectator just goes.
func (r *Room) away(player, client string) {
	s := r.seatOf(player)
	if s == nil || s.client != client || client == "" {
		return // a newer connection has the seat, or it is already away
	}
	if s.p.Spectator {
		r.remove(s, ReasonLeft, false)
		return
	}
	s.client, s.awayAt, s.p.Away = "", r.now, true
	if a, ok := r.logic.(Awayer); ok {
		r.logicSafely(func() { a.OnAway(r, s.p) })
	}
	r.emit(&Msg{Type: MsgAway, Player: player}, slices.DeleteFunc(r.everyone(), func(o *seat) bool { return o == s }))
}

// remove ends a seat. tellHome: the player's node must forget the room
// (the player did not ask to leave).
func (r *Room) remove(s *seat, reason Reason, tellHome bool) {
	i := slices.Index(r.seats, s)
	if i >= 0 {
		r.seats = slices.Delete(r.seats, i, i+1)
		r.m.stats.players.Add(-1)
	} else if i = slices.Index(r.specs, s); i >= 0 {
		r.specs = slices.Delete(r.specs, i, i+1)
	} else {
		return
	}
	if tellHome && !s.p.Spectator {
		// First: by the time anyone hears of it, the player's node knows.
		r.m.tellHome(s.home, s.p.ID, r.id, reason)
	}
	r.logicSafely(func() { r.logic.OnLeave(r, s.p, reason) })
	r.publishInfo()
	r.emit(&Msg{Type: MsgLeft, Player: s.p.ID, Reason: reason}, r.everyone())
	if reason != ReasonLeft {
		r.emit(&Msg{Type: MsgSeatLost, Player: s.p.ID, Reason: reason}, []*seat{s})
	}
}

// close ends the room: every seat goes, the room leaves the node's tables.
func (r *Room) close(reason Reason) {
	if r.closed {
		return
	}
	r.closing = reason
	for _, s := range append(slices.Clone(r.seats), r.specs...) {
		r.remove(s, reason, true)
	}
	r.closed = true
	r.m.unregister(r)
	close(r.done)
	r.log.Debug().Str("reason", string(reason)).Uint64("ticks", r.tick).Msg("room closed")
}

// input queues an input for its tick and returns that tick.
func (r *Room) input(player string, in *InputReq) (uint64, error) {
	s := r.seatOf(player)
	if s == nil || s.p.Spectator {
		r.m.stats.dropped("no_seat")
		return 0, rpc.Errorf(rpc.CodeForbidden, "no seat in room %s: %w", r.id, ErrNoSeat)
	}
	if !r.allow(s) {
		return 0, r.drop(s, "rate_limited", rpc.CodeRateLimited, "too many inputs: %w", ErrRateLimited)
	}
	next := r.tick + 1
	target := next
	switch {
	case in.Tick == 0 || in.Tick == next:
	case in.Tick < next:
		if r.game.Late == LateDrop || (r.game.MaxLag >= 0 && next-in.Tick > uint64(r.game.MaxLag)) {
			return 0, r.drop(s, "late", rpc.CodeBadRequest, "input for tick %d arrived at tick %d: %w", in.Tick, r.tick, ErrLate)
		}
	default:
		if r.game.MaxLead >= 0 {
			if in.Tick-next > uint64(r.game.MaxLead) {
				return 0, r.drop(s, "too_early", rpc.CodeBadRequest, "input for tick %d is more than %d ticks ahead of %d: %w",
					in.Tick, r.game.MaxLead, next, ErrEarly)
			}
			target = in.Tick
		}
	}
	if r.pending == nil {
		r.pending = map[uint64][]Input{}
	}
	r.pending[target] = append(r.pending[target], Input{Player: player, Tick: target, Seq: in.Seq, Data: in.Data})
	r.m.stats.inputs.Add(1)
	return target, nil
}

func (r *Room) drop(s *seat, reason string, code rpc.Code, format string, args ...any) error {
	s.drops[reason]++
	r.m.stats.dropped(reason)
	return rpc.Errorf(code, format, args...)
}

// allow takes a token from the seat's bucket.
func (r *Room) allow(s *seat) bool {
	if r.rate <= 0 {
		return true
	}
	now := r.m.clock.Now()
	if el := now.Sub(s.filled).Seconds(); el > 0 {
		s.tokens = min(r.burst, s.tokens+el*r.rate)
		s.filled = now
	}
	if s.tokens < 1 {
		return false
	}
	s.tokens--
	return true
}

// publishInfo refreshes the snapshot lists read.
func (r *Room) publishInfo() {
	in := &RoomInfo{ID: r.id, Game: r.game.Name, Node: r.m.host.Node, Mode: r.mode, Private: r.private,
		Capacity: r.game.Players, Spectators: len(r.specs), TickRate: r.game.TickRate, Sync: r.game.Sync,
		Players: make([]string, len(r.seats))}
	for i, s := range r.seats {
		in.Players[i] = s.p.ID
	}
	r.info.Store(in)
}

// memberInfo is the room's info with its code, for members.
func (r *Room) memberInfo() RoomInfo {
	in := *r.info.Load()
	in.Code, in.Tick = r.code, r.tick
	return in
}

// do runs f on the room's goroutine and returns its error.
func (r *Room) do(ctx context.Context, f func() error) error {
	res := make(chan error, 1)
	select {
	case r.inbox <- func() { res <- f() }:
	case <-r.done:
		return errNoRoom(r.id)
	case <-ctx.Done():
		return rpc.Errorf(rpc.CodeTimeout, "room %s busy: %w", r.id, ctx.Err())
	}
	select {
	case err := <-res:
		return err
	case <-r.done:
		select {
		case err := <-res:
			return err
		default:
			return rpc.Errorf(rpc.CodeInternal, "room %s closed while serving the call", r.id)
		}
	case <-ctx.Done():
		return rpc.Errorf(rpc.CodeTimeout, "room %s busy: %w", r.id, ctx.Err())
	}
}

// post queues f without waiting; false when the inbox is full or the
// room closed.
func (r *Room) post(f func()) bool {
	select {
	case <-r.done:
		return false
	default:
	}
	select {
	case r.inbox <- f:
		return true
	default:
		return false
	}
}

// entry is one message kept for replay.
type entry struct {
	n uint64
	b []byte
}

// ring keeps a player's last messages.
type ring struct {
	buf   []entry
	head  int // index of the oldest
	count int
	lost  uint64 // n of the newest message pushed out
}

func newRing(size int) ring { return ring{buf: make([]entry, size)} }

func (q *ring) push(e entry) {
	if len(q.buf) == 0 {
		q.lost = e.n
		return
	}
	if q.count == len(q.buf) {
		q.lost = q.buf[q.head].n
		q.buf[q.head] = e
		q.head = (q.head + 1) % len(q.buf)
		return
	}
	q.buf[(q.head+q.count)%len(q.buf)] = e
	q.count++
}

// since returns the kept messages numbered above n, and whether some
// above n were pushed out already.
func (q *ring) since(n uint64) ([]entry, bool) {
	var out []entry
	for i := 0; i < q.count; i++ {
		e := q.buf[(q.head+i)%len(q.buf)]
		if e.n > n {
			out = append(out, e)
		}
	}
	return out, q.lost > n
}
