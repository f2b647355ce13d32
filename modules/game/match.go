package game

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/colonymq/colony/rpc"
)

// defaultRating is a player's rating before their first rated game.
const defaultRating = 1500

// maxParty bounds the members of a party.
const maxParty = 16

// QueueReq queues the caller (or, from its leader, the caller's whole
// party) for a match of Mode in Region.
type QueueReq struct {
	Mode   string `json:"mode"`
	Region string `json:"region,omitempty"`
}

// TicketInfo describes a queued ticket: its players, their (average)
// rating, how long it has waited and the rating window it accepts now.
type TicketInfo struct {
	Ticket  string   `json:"ticket"`
	Mode    string   `json:"mode"`
	Region  string   `json:"region,omitempty"`
	Players []string `json:"players"`
	Rating  float64  `json:"rating"`
	Waited  float64  `json:"waited"` // seconds
	Window  float64  `json:"window"`
}

// PartyReq names a party.
type PartyReq struct {
	Party string `json:"party"`
}

// Party is a group of players who queue together; the leader queues it.
type Party struct {
	ID      string   `json:"id"`
	Leader  string   `json:"leader"`
	Members []string `json:"members"`
}

// RatingReq asks for the caller's rating in Mode.
type RatingReq struct {
	Mode string `json:"mode"`
}

// RatingResp is a player's rating in a mode.
type RatingResp struct {
	Mode   string  `json:"mode"`
	Rating float64 `json:"rating"`
}

// MatchEvent is pushed on game/u/<player>/match. Type "matched": a room
// was made for the match (Room; join it). "timeout": the ticket waited
// Mode.Timeout. "canceled": a player of the ticket canceled or
// disconnected. "failed": the room could not be made. "party": the
// party changed (Party).
type MatchEvent struct {
	Type    string   `json:"type"`
	Mode    string   `json:"mode,omitempty"`
	Room    string   `json:"room,omitempty"`
	Players []string `json:"players,omitempty"`
	Party   *Party   `json:"party,omitempty"`
	Error   string   `json:"error,omitempty"`
}

// mmReq is a call to the matchmaker node.
type mmReq struct {
	Op     string  `json:"op"` // queue, cancel, status, gone, party_create, party_join, party_leave, rating, result
	Player string  `json:"player,omitempty"`
	Mode   string  `json:"mode,omitempty"`
	Region string  `json:"region,omitempty"`
	Party  string  `json:"party,omitempty"`
	Record *Record `json:"record,omitempty"`
}

type mmResp struct {
	Ticket *TicketInfo `json:"ticket,omitempty"`
	Party  *Party      `json:"party,omitempty"`
	Rating float64     `json:"rating,omitempty"`
}

type ticket struct {
	id      string
	mode    *Mode
	region  string
	players []string
	rating  float64
	at      time.Time
	party   *Party
}

// matchmaker owns the queues and parties of the cluster; it runs on one
// node (nodes.matchmaker), whose store also keeps ratings and results.
type matchmaker struct {
	m       *Module
	mu      sync.Mutex
	tickets map[string]*ticket   // player -> their ticket
	queues  map[string][]*ticket // mode 0 region -> tickets by arrival
	parties map[string]*Party    // id -> party
	partyOf map[string]*Party
	count   atomic.Int64
}

func newMatchmaker(m *Module) *matchmaker {
	return &matchmaker{m: m, tickets: map[string]*ticket{}, queues: map[string][]*ticket{},
		parties: map[string]*Party{}, partyOf: map[string]*Party{}}
}

func (mm *matchmaker) queued() int64 { return mm.count.Load() }

// run matches the queues again every MatchInterval, as windows widen.
func (mm *matchmaker) run(stop <-chan struct{}) {
	t := mm.m.clock.NewTicker(time.Duration(mm.m.opts.MatchInterval))
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case now := <-t.C():
			mm.pass(now)
		}
	}
}

// window is the rating distance t accepts at now.
func (t *ticket) window(now time.Time) float64 {
	w := t.mode.Window + t.mode.Widen*now.Sub(t.at).Seconds()
	return min(w, t.mode.MaxWindow)
}

func (t *ticket) info(now time.Time) *TicketInfo {
	return &TicketInfo{Ticket: t.id, Mode: t.mode.Name, Region: t.region, Players: slices.Clone(t.players),
		Rating: t.rating, Waited: now.Sub(t.at).Seconds(), Window: t.window(now)}
}

type match struct {
	mode    *Mode
	players []string
}

// pass expires old tickets and forms every match it can; rooms are made
// and players told outside the lock.
func (mm *matchmaker) pass(now time.Time) {
	mm.mu.Lock()
	var matches []match
	var expired []*ticket
	for key, q := range mm.queues {
		taken := map[*ticket]bool{}
		for _, t := range q {
			if now.Sub(t.at) >= time.Duration(t.mode.Timeout) {
				taken[t] = true
				expired = append(expired, t)
			}
		}
		// The longest waiting ticket chooses first, within its window,
		// the closest ratings (earlier arrivals on a tie).
		for i, a := range q {
			if taken[a] {
				continue
			}
			need := a.mode.Players - len(a.players)
			group := []*ticket{a}
			if need > 0 {
				w := a.window(now)
				var cands []*ticket
				for j, c := range q {
					if j != i && !taken[c] && math.Abs(c.rating-a.rating) <= w {
						cands = append(cands, c)
					}
				}
				slices.SortStableFunc(cands, func(x, y *ticket) int {
					dx, dy := math.Abs(x.rating-a.rating), math.Abs(y.rating-a.rating)
					switch {
					case dx < dy:
						return -1
					case dx > dy:
						return 1
					}
					return 0
				})
				for _, c := range cands {
					if len(c.players) <= need {
						group = append(group, c)
						need -= len(c.players)
						if need == 0 {
							break
						}
					}
				}
			}
			if need != 0 {
				continue
			}
			mt := match{mode: a.mode}
			for _, t := range group {
				taken[t] = true
				mt.players = append(mt.players, t.players...)
			}
			matches = append(matches, mt)
		}
		if len(taken) > 0 {
			q = slices.DeleteFunc(q, func(t *ticket) bool { return taken[t] })
			for t := range taken {
				mm.forget(t)
			}
			if len(q) == 0 {
				delete(mm.queues, key)
			} else {
				mm.queues[key] = q
			}
		}
	}
	mm.mu.Unlock()
	for _, t := range expired {
		mm.tell(t.players, MatchEvent{Type: "timeout", Mode: t.mode.Name, Players: t.players})
	}
	for _, mt := range matches {
		mm.m.stats.matches.Add(1)
		mm.m.wg.Add(1)
		go func() {
			defer mm.m.wg.Done()
			mm.launch(mt)
		}()
	}
}

// forget drops a ticket's players from the index; mm.mu held.
func (mm *matchmaker) forget(t *ticket) {
	for _, p := range t.players {
		if mm.tickets[p] == t {
			delete(mm.tickets, p)
			mm.count.Add(-1)
		}
	}
}

// launch makes the match's room, placed by load, and tells its players.
func (mm *matchmaker) launch(mt match) {
	m := mm.m
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	node := m.nodes.place(mt.mode.Game)
	resp, err := callNode(ctx, m, node, "node_create", &roomCreateReq{Game: mt.mode.Game, Mode: mt.mode.Name,
		Reserved: mt.players}, m.nodeCreate)
	if err != nil {
		m.log.Error().Err(err).Str("mode", mt.mode.Name).Str("node", node).Msg("make room for match")
		mm.tell(mt.players, MatchEvent{Type: "failed", Mode: mt.mode.Name, Players: mt.players, Error: err.Error()})
		return
	}
	m.log.Debug().Str("mode", mt.mode.Name).Str("room", resp.Room.ID).Strs("players", mt.players).Msg("match")
	mm.tell(mt.players, MatchEvent{Type: "matched", Mode: mt.mode.Name, Room: resp.Room.ID, Players: mt.players})
}

func (mm *matchmaker) tell(players []string, ev MatchEvent) {
	b, err := json.Marshal(ev)
	if err != nil {
		return
	}
	for _, p := range players {
		mm.m.pushEvent(p, TopicMatch, b)
	}
}

func (mm *matchmaker) rating(mode, player string) (float64, error) {
	r, ok, err := mm.m.st.ratings.Get(ratingKey(mode, player))
	if err != nil {
		return 0, rpc.Errorf(rpc.CodeInternal, "read rating: %w", err)
	}
	if !ok {
		return defaultRating, nil
	}
	return r, nil
}

// serve runs a matchmaker operation on this (the matchmaker) node.
func (mm *matchmaker) serve(ctx context.Context, req *mmReq) (*mmResp, error) {
	now := mm.m.clock.Now()
	switch req.Op {
	case "queue":
		md, ok := mm.m.modeOf(req.Mode)
		if !ok {
			return nil, rpc.Errorf(rpc.CodeNotFound, "mode %q: %w", req.Mode, ErrUnknownGame)
		}
		mm.mu.Lock()
		players := []string{req.Player}
		pt := mm.partyOf[req.Player]
		if pt != nil {
			if pt.Leader != req.Player {
				mm.mu.Unlock()
				return nil, rpc.Errorf(rpc.CodeForbidden, "only the party's leader %s queues it: %w", pt.Leader, ErrParty)
			}
			players = slices.Clone(pt.Members)
		}
		mm.mu.Unlock()
		if len(players) > md.Players {
			return nil, rpc.Errorf(rpc.CodeForbidden, "a party of %d does not fit a match of %d: %w", len(players), md.Players, ErrParty)
		}
		sum := 0.0
		for _, p := range players {
			r, err := mm.rating(md.Name, p)
			if err != nil {
				return nil, err
			}
			sum += r
		}
		mm.mu.Lock()
		for _, p := range players {
			if mm.tickets[p] != nil {
				mm.mu.Unlock()
				return nil, rpc.Errorf(rpc.CodeForbidden, "%s is already queued: %w", p, ErrQueued)
			}
		}
		t := &ticket{id: randomString(8, "abcdefghijkmnpqrstuvwxyz23456789"), mode: md, region: req.Region,
			players: players, rating: sum / float64(len(players)), at: now, party: pt}
		for _, p := range players {
			mm.tickets[p] = t
			mm.count.Add(1)
		}
		key := md.Name + "\x00" + req.Region
		mm.queues[key] = append(mm.queues[key], t)
		info := t.info(now)
		mm.mu.Unlock()
		mm.pass(now)
		return &mmResp{Ticket: info}, nil
	case "status":
		mm.pass(now)
		mm.mu.Lock()
		defer mm.mu.Unlock()
		t := mm.tickets[req.Player]
		if t == nil {
			return nil, rpc.Errorf(rpc.CodeNotFound, "%w", ErrNoTicket)
		}
		return &mmResp{Ticket: t.info(now)}, nil
	case "cancel", "gone":
		if !mm.drop(req.Player) {
			return nil, rpc.Errorf(rpc.CodeNotFound, "%w", ErrNoTicket)
		}
		return &mmResp{}, nil
	case "party_create":
		mm.mu.Lock()
		defer mm.mu.Unlock()
		if pt := mm.partyOf[req.Player]; pt != nil {
			return nil, rpc.Errorf(rpc.CodeForbidden, "already in party %s: %w", pt.ID, ErrParty)
		}
		pt := &Party{Leader: req.Player, Members: []string{req.Player}}
		for {
			pt.ID = randomString(6, codeAlphabet)
			if mm.parties[pt.ID] == nil {
				break
			}
		}
		mm.parties[pt.ID], mm.partyOf[req.Player] = pt, pt
		cp := *pt
		return &mmResp{Party: &cp}, nil
	case "party_join":
		mm.mu.Lock()
		pt := mm.parties[req.Party]
		var err error
		switch {
		case pt == nil:
			err = rpc.Errorf(rpc.CodeNotFound, "no party %q: %w", req.Party, ErrParty)
		case mm.partyOf[req.Player] != nil:
			err = rpc.Errorf(rpc.CodeForbidden, "already in party %s: %w", mm.partyOf[req.Player].ID, ErrParty)
		case mm.tickets[pt.Leader] != nil || mm.tickets[req.Player] != nil:
			err = rpc.Errorf(rpc.CodeForbidden, "the party or the player is queued: %w", ErrQueued)
		case len(pt.Members) >= maxParty:
			err = rpc.Errorf(rpc.CodeForbidden, "party %s is full: %w", pt.ID, ErrParty)
		}
		if err != nil {
			mm.mu.Unlock()
			return nil, err
		}
		pt.Members = append(pt.Members, req.Player)
		mm.partyOf[req.Player] = pt
		cp := Party{ID: pt.ID, Leader: pt.Leader, Members: slices.Clone(pt.Members)}
		mm.mu.Unlock()
		mm.tell(cp.Members, MatchEvent{Type: "party", Party: &cp})
		return &mmResp{Party: &cp}, nil
	case "party_leave":
		mm.drop(req.Player)
		mm.mu.Lock()
		pt := mm.partyOf[req.Player]
		if pt == nil {
			mm.mu.Unlock()
			return nil, rpc.Errorf(rpc.CodeNotFound, "not in a party: %w", ErrParty)
		}
		delete(mm.partyOf, req.Player)
		pt.Members = slices.DeleteFunc(pt.Members, func(p string) bool { return p == req.Player })
		if len(pt.Members) == 0 {
			delete(mm.parties, pt.ID)
			mm.mu.Unlock()
			return &mmResp{}, nil
		}
		if pt.Leader == req.Player {
			pt.Leader = pt.Members[0]
		}
		cp := Party{ID: pt.ID, Leader: pt.Leader, Members: slices.Clone(pt.Members)}
		mm.mu.Unlock()
		mm.tell(cp.Members, MatchEvent{Type: "party", Party: &cp})
		return &mmResp{}, nil
	case "rating":
		r, err := mm.rating(req.Mode, req.Player)
		if err != nil {
			return nil, err
		}
		return &mmResp{Rating: r}, nil
	case "result":
		if req.Record == nil {
			return nil, rpc.Errorf(rpc.CodeBadRequest, "no record")
		}
		return &mmResp{}, mm.store(ctx, req.Record)
	}
	return nil, rpc.Errorf(rpc.CodeBadRequest, "unknown matchmaker op %q", req.Op)
}

// drop removes the player's ticket, telling all its players.
func (mm *matchmaker) drop(player string) bool {
	mm.mu.Lock()
	t := mm.tickets[player]
	if t == nil {
		mm.mu.Unlock()
		return false
	}
	key := t.mode.Name + "\x00" + t.region
	q := slices.DeleteFunc(mm.queues[key], func(o *ticket) bool { return o == t })
	if len(q) == 0 {
		delete(mm.queues, key)
	} else {
		mm.queues[key] = q
	}
	mm.forget(t)
	mm.mu.Unlock()
	mm.tell(t.players, MatchEvent{Type: "canceled", Mode: t.mode.Name, Players: t.players})
	return true
}

// store keeps a finished game and, for a matchmade one with ranks,
// updates the players' ratings (Elo, K=32, each pair of places a game).
func (mm *matchmaker) store(ctx context.Context, rec *Record) error {
	if rec.Mode != "" && len(rec.Result.Ranks) > 1 {
		place := map[string]int{}
		var ps []string
		for i, group := range rec.Result.Ranks {
			for _, p := range group {
				place[p] = i
				ps = append(ps, p)
			}
		}
		old := map[string]float64{}
		for _, p := range ps {
			r, err := mm.rating(rec.Mode, p)
			if err != nil {
				return err
			}
			old[p] = r
		}
		rec.Ratings = map[string]float64{}
		const k = 32
		for _, a := range ps {
			delta := 0.0
			for _, b := range ps {
				if a == b {
					continue
				}
				exp := 1 / (1 + math.Pow(10, (old[b]-old[a])/400))
				score := 0.5
				if place[a] < place[b] {
					score = 1
				} else if place[a] > place[b] {
					score = 0
				}
				delta += k * (score - exp) / float64(len(ps)-1)
			}
			rec.Ratings[a] = math.Round((old[a]+delta)*100) / 100
		}
	}
	b := mm.m.st.db.NewBatch()
	mm.m.st.results.PutIn(b, rec.Room, *rec)
	for p, r := range rec.Ratings {
		mm.m.st.ratings.PutIn(b, ratingKey(rec.Mode, p), r)
	}
	if err := b.Commit(ctx); err != nil {
		return rpc.Errorf(rpc.CodeInternal, "store result: %w", err)
	}
	return nil
}

// mmCall runs a matchmaker operation on the matchmaker node.
func (m *Module) mmCall(ctx context.Context, req *mmReq) (*mmResp, error) {
	return callNode(ctx, m, m.nodes.matchmaker(), "node_mm", req, m.nodeMM)
}

func (m *Module) nodeMM(ctx context.Context, req *mmReq) (*mmResp, error) {
	return m.mm.serve(ctx, req)
}

// recordResult sends a finished game to the matchmaker node for storing.
func (m *Module) recordResult(rec Record) {
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if _, err := m.mmCall(ctx, &mmReq{Op: "result", Record: &rec}); err != nil {
			m.log.Error().Err(err).Str("room", rec.Room).Msg("store game result")
		}
	}()
}

// Client handlers, forwarded to the matchmaker node.

func (m *Module) queue(ctx context.Context, req *QueueReq) (*TicketInfo, error) {
	p, _, err := m.player(ctx)
	if err != nil {
		return nil, err
	}
	if req.Region != "" && !validID(req.Region) {
		return nil, rpc.Errorf(rpc.CodeBadRequest, "invalid region %q", req.Region)
	}
	resp, err := m.mmCall(ctx, &mmReq{Op: "queue", Player: p, Mode: req.Mode, Region: req.Region})
	if err != nil {
		return nil, err
	}
	return resp.Ticket, nil
}

func (m *Module) cancel(ctx context.Context, _ *struct{}) (*OK, error) {
	p, _, err := m.player(ctx)
	if err != nil {
		return nil, err
	}
	if _, err := m.mmCall(ctx, &mmReq{Op: "cancel", Player: p}); err != nil {
		return nil, err
	}
	return &OK{OK: true}, nil
}

func (m *Module) status(ctx context.Context, _ *struct{}) (*TicketInfo, error) {
	p, _, err := m.player(ctx)
	if err != nil {
		return nil, err
	}
	resp, err := m.mmCall(ctx, &mmReq{Op: "status", Player: p})
	if err != nil {
		return nil, err
	}
	return resp.Ticket, nil
}

func (m *Module) partyCreate(ctx context.Context, _ *struct{}) (*Party, error) {
	p, _, err := m.player(ctx)
	if err != nil {
		return nil, err
	}
	resp, err := m.mmCall(ctx, &mmReq{Op: "party_create", Player: p})
	if err != nil {
		return nil, err
	}
	return resp.Party, nil
}

func (m *Module) partyJoin(ctx context.Context, req *PartyReq) (*Party, error) {
	p, _, err := m.player(ctx)
	if err != nil {
		return nil, err
	}
	resp, err := m.mmCall(ctx, &mmReq{Op: "party_join", Player: p, Party: req.Party})
	if err != nil {
		return nil, err
	}
	return resp.Party, nil
}

func (m *Module) partyLeave(ctx context.Context, _ *struct{}) (*OK, error) {
	p, _, err := m.player(ctx)
	if err != nil {
		return nil, err
	}
	if _, err := m.mmCall(ctx, &mmReq{Op: "party_leave", Player: p}); err != nil {
		return nil, err
	}
	return &OK{OK: true}, nil
}

func (m *Module) rating(ctx context.Context, req *RatingReq) (*RatingResp, error) {
	p, _, err := m.player(ctx)
	if err != nil {
		return nil, err
	}
	if _, ok := m.modeOf(req.Mode); !ok {
		return nil, rpc.Errorf(rpc.CodeNotFound, "mode %q: %w", req.Mode, ErrUnknownGame)
	}
	resp, err := m.mmCall(ctx, &mmReq{Op: "rating", Player: p, Mode: req.Mode})
	if err != nil {
		return nil, err
	}
	return &RatingResp{Mode: req.Mode, Rating: resp.Rating}, nil
}

// Rating returns a player's rating in mode as the matchmaker node has it.
func (m *Module) Rating(ctx context.Context, mode, player string) (float64, error) {
	resp, err := m.mmCall(ctx, &mmReq{Op: "rating", Player: player, Mode: mode})
	if err != nil {
		return 0, err
	}
	return resp.Rating, nil
}

// SetRating sets a player's rating in mode (on this node's store: call it
// on the matchmaker node), e.g. to import ratings or seed tests.
func (m *Module) SetRating(ctx context.Context, mode, player string, rating float64) error {
	if err := m.st.ratings.Put(ctx, ratingKey(mode, player), rating); err != nil {
		return fmt.Errorf("set rating of %s in %s: %w", player, mode, err)
	}
	return nil
}
