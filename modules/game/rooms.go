package game

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"time"

	"github.com/colonymq/colony/rpc"
)

// Requests between game nodes.
type (
	roomCreateReq struct {
		Game     string          `json:"game"`
		Mode     string          `json:"mode,omitempty"`
		Private  bool            `json:"private,omitempty"`
		Settings json.RawMessage `json:"settings,omitempty"`
		Reserved []string        `json:"reserved,omitempty"` // matchmade: the only players who may sit
		// The creator, seated at once (none for matchmade rooms).
		Player string `json:"player,omitempty"`
		Client string `json:"client,omitempty"`
		Home   string `json:"home,omitempty"`
	}
	roomJoinReq struct {
		Room      string `json:"room"`
		Code      string `json:"code,omitempty"`
		Player    string `json:"player"`
		Client    string `json:"client"`
		Home      string `json:"home"`
		Spectator bool   `json:"spectator,omitempty"`
		Since     uint64 `json:"since,omitempty"`
	}
	roomLeaveReq struct {
		Room   string `json:"room"`
		Player string `json:"player"`
	}
	roomAwayReq struct {
		Room   string `json:"room"`
		Player string `json:"player"`
		Client string `json:"client"`
	}
	roomInputReq struct {
		Player string   `json:"player"`
		Input  InputReq `json:"input"`
	}
	roomsReq struct {
		Game string `json:"game,omitempty"`
		Code string `json:"code,omitempty"`
	}
	leftReq struct {
		Player string `json:"player"`
		Room   string `json:"room"`
		Reason Reason `json:"reason"`
	}
)

// codeAlphabet has no look-alikes (0/O, 1/I/L).
const codeAlphabet = "ABCDEFGHJKMNPQRSTUVWXYZ23456789"

func randomString(n int, alphabet string) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err) // crypto/rand does not fail on supported platforms
	}
	for i := range b {
		b[i] = alphabet[int(b[i])%len(alphabet)]
	}
	return string(b)
}

// newRoom makes a room of game g on this node and starts its goroutine.
func (m *Module) newRoom(g *Game, req *roomCreateReq) (*Room, error) {
	logic, err := g.New(req.Settings)
	if err != nil {
		return nil, rpc.Errorf(rpc.CodeBadRequest, "game %s refused the settings: %w", g.Name, err)
	}
	replay := m.opts.ReplayBuffer
	if replay == 0 {
		replay = min(8192, int(time.Duration(m.opts.Grace)/g.interval())+64)
	}
	rate, burst := m.opts.InputRate, float64(m.opts.InputBurst)
	if rate == 0 {
		rate = 2 * float64(g.TickRate)
	}
	if burst == 0 {
		burst = float64(g.TickRate + 10)
	}
	now := m.clock.Now()
	r := &Room{
		m: m, game: g, mode: req.Mode, private: req.Private, logic: logic,
		inbox: make(chan func(), 1024), done: make(chan struct{}),
		interval: g.interval(), start: now, now: now, replay: replay, rate: rate, burst: burst,
	}
	if len(req.Reserved) > 0 {
		r.reserved = map[string]bool{}
		for _, p := range req.Reserved {
			r.reserved[p] = true
		}
	}
	m.mu.Lock()
	if len(m.rooms) >= m.opts.MaxRooms {
		m.mu.Unlock()
		return nil, rpc.Errorf(rpc.CodeUnavailable, "node %s holds its maximum of %d rooms", m.host.Node, m.opts.MaxRooms)
	}
	for {
		r.id = m.host.Node + ":" + randomString(10, "abcdefghijkmnpqrstuvwxyz23456789")
		if _, dup := m.rooms[r.id]; !dup {
			break
		}
	}
	if r.private {
		for {
			r.code = randomString(6, codeAlphabet)
			if _, dup := m.codes[r.code]; !dup {
				break
			}
		}
		m.codes[r.code] = r
	}
	m.rooms[r.id] = r
	m.mu.Unlock()
	r.log = m.log.With().Str("room", r.id).Str("game", g.Name).Logger()
	r.publishInfo()
	t := m.clock.NewTicker(r.interval) // before returning: a manual clock must see it
	go r.run(t)
	return r, nil
}

// unregister removes a closed room from the node's tables.
func (m *Module) unregister(r *Room) {
	m.mu.Lock()
	delete(m.rooms, r.id)
	if r.code != "" {
		delete(m.codes, r.code)
	}
	m.mu.Unlock()
	m.nodes.changed()
}

func (m *Module) localRoom(id string) (*Room, error) {
	m.mu.RLock()
	r := m.rooms[id]
	m.mu.RUnlock()
	if r == nil {
		return nil, errNoRoom(id)
	}
	return r, nil
}

// localRooms returns this node's public rooms with a free seat (of game
// if not ""), or with code the private room that has it.
func (m *Module) localRooms(game, code string) []RoomInfo {
	m.mu.RLock()
	defer m.mu.RUnlock()
	var out []RoomInfo
	if code != "" {
		if r := m.codes[code]; r != nil {
			in := *r.info.Load()
			in.Tick = r.curTick.Load()
			out = append(out, in)
		}
		return out
	}
	for _, r := range m.rooms {
		in := *r.info.Load()
		if in.Private || (game != "" && in.Game != game) || len(in.Players) >= in.Capacity || r.reserved != nil {
			continue
		}
		in.Tick = r.curTick.Load()
		out = append(out, in)
	}
	return out
}

// nodeCreate makes a room here and seats its creator, if any.
func (m *Module) nodeCreate(ctx context.Context, req *roomCreateReq) (*JoinResp, error) {
	g, ok := m.gameOf(req.Game)
	if !ok {
		return nil, rpc.Errorf(rpc.CodeNotFound, "game %q on node %s: %w", req.Game, m.host.Node, ErrUnknownGame)
	}
	r, err := m.newRoom(g, req)
	if err != nil {
		return nil, err
	}
	m.nodes.changed()
	if req.Player == "" {
		return &JoinResp{Room: *r.info.Load()}, nil
	}
	return m.nodeJoin(ctx, &roomJoinReq{Room: r.id, Code: r.code, Player: req.Player, Client: req.Client, Home: req.Home})
}

func (m *Module) nodeJoin(ctx context.Context, req *roomJoinReq) (*JoinResp, error) {
	r, err := m.localRoom(req.Room)
	if err != nil {
		return nil, err
	}
	var resp *JoinResp
	err = r.do(ctx, func() (err error) {
		resp, err = r.join(req)
		return err
	})
	return resp, err
}

func (m *Module) nodeLeave(ctx context.Context, req *roomLeaveReq) (*OK, error) {
	r, err := m.localRoom(req.Room)
	if err != nil {
		return nil, err
	}
	err = r.do(ctx, func() error {
		s := r.seatOf(req.Player)
		if s == nil {
			return rpc.Errorf(rpc.CodeNotFound, "not in room %s: %w", r.id, ErrNoSeat)
		}
		r.remove(s, ReasonLeft, false)
		if len(r.seats) == 0 && len(r.specs) == 0 && r.reserved == nil {
			r.closing = ReasonClosed // the last one out closes the room
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return &OK{OK: true}, nil
}

func (m *Module) nodeInput(ctx context.Context, req *roomInputReq) (*InputResp, error) {
	r, err := m.localRoom(req.Input.Room)
	if err != nil {
		return nil, err
	}
	var tick uint64
	err = r.do(ctx, func() (err error) {
		tick, err = r.input(req.Player, &req.Input)
		return err
	})
	if err != nil {
		return nil, err
	}
	return &InputResp{Tick: tick}, nil
}

func (m *Module) nodeAway(ctx context.Context, req *roomAwayReq) (*OK, error) {
	r, err := m.localRoom(req.Room)
	if err != nil {
		return nil, err
	}
	if !r.post(func() { r.away(req.Player, req.Client) }) {
		// Full inbox: wait for room rather than lose the grace window.
		if err := r.do(ctx, func() error { r.away(req.Player, req.Client); return nil }); err != nil {
			return nil, err
		}
	}
	return &OK{OK: true}, nil
}

func (m *Module) nodeRooms(_ context.Context, req *roomsReq) (*ListResp, error) {
	return &ListResp{Rooms: m.localRooms(req.Game, req.Code)}, nil
}
