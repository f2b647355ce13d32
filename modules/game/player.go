package game

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"time"

	"github.com/colonymq/colony/rpc"
	"github.com/colonymq/colony/server"
)

// ReasonReplaced is the disconnect reason a player's older connection gets
// when the player logs in on another one.
const ReasonReplaced = "game: logged in on another connection"

// login binds the calling connection to a player id and ends the player's
// other connections (single login).
func (m *Module) login(ctx context.Context, req *LoginReq) (*LoginResp, error) {
	c, _ := rpc.CallerFrom(ctx)
	if c.ClientID == "" {
		return nil, rpc.Errorf(rpc.CodeForbidden, "login is for MQTT clients")
	}
	m.cfgMu.RLock()
	auth := m.auth
	m.cfgMu.RUnlock()
	var player string
	switch {
	case auth != nil:
		p, err := auth(ctx, c, req.Token)
		if err != nil {
			var re *rpc.Error
			if errors.As(err, &re) {
				return nil, err
			}
			return nil, rpc.Errorf(rpc.CodeForbidden, "login refused: %w", err)
		}
		player = p
	case c.UserID != "":
		player = c.UserID
	case m.opts.Guests && req.Name != "":
		player = req.Name
	default:
		return nil, rpc.Errorf(rpc.CodeForbidden, "login needs an authenticated user (or a name where guests are allowed): %w", ErrNotLoggedIn)
	}
	if !validID(player) {
		return nil, rpc.Errorf(rpc.CodeBadRequest, "player id %q cannot be a topic level", player)
	}
	srv := m.host.Server
	// Single login: unbind this connection (it may carry the player's
	// name already, from password authentication), end every other one
	// of the player on every node, then bind this one.
	if c.UserID != "" {
		if err := srv.BindUser(c.ClientID, ""); err != nil && !errors.Is(err, server.ErrNoClient) {
			return nil, rpc.Errorf(rpc.CodeInternal, "unbind: %w", err)
		}
	}
	srv.KickUser(player, ReasonReplaced)
	if err := srv.BindUser(c.ClientID, player); err != nil {
		return nil, rpc.Errorf(rpc.CodeForbidden, "log in through a node that runs the game module: %w", err)
	}
	m.mu.Lock()
	s := m.players[player]
	var old string
	if s == nil {
		s = &session{}
		m.players[player] = s
	}
	if s.client == "" {
		m.stats.online.Add(1)
	}
	old, s.client = s.client, c.ClientID
	room := s.room
	m.mu.Unlock()
	if room != "" && old != "" && old != c.ClientID {
		// The old connection may be gone before its disconnect reaches us:
		// start the seat's grace window now; rejoining ends it.
		m.away(player, old, room)
	}
	m.log.Debug().Str("player", player).Str("client", c.ClientID).Msg("login")
	return &LoginResp{Player: player, Topic: TopicRoot + player + "/#", Room: room, Node: m.host.Node}, nil
}

// player returns the caller's player id, which must have logged in on
// this connection.
func (m *Module) player(ctx context.Context) (string, string, error) {
	c, _ := rpc.CallerFrom(ctx)
	if c.UserID != "" && c.ClientID != "" {
		m.mu.RLock()
		s := m.players[c.UserID]
		ok := s != nil && s.client == c.ClientID
		m.mu.RUnlock()
		if ok {
			return c.UserID, c.ClientID, nil
		}
	}
	return "", "", rpc.Errorf(rpc.CodeForbidden, "call game/login first: %w", ErrNotLoggedIn)
}

// connEvent follows connections: a player whose connection ends is away
// from their room (grace window) and leaves the matchmaking queue.
func (m *Module) connEvent(ev server.Event) {
	if ev.Kind != server.Disconnected || ev.UserID == "" {
		return
	}
	m.mu.Lock()
	s := m.players[ev.UserID]
	if s == nil || s.client != ev.ClientID {
		m.mu.Unlock()
		return
	}
	s.client = ""
	m.stats.online.Add(-1)
	room := s.room
	if room == "" {
		delete(m.players, ev.UserID)
	}
	m.mu.Unlock()
	if room != "" {
		m.away(ev.UserID, ev.ClientID, room)
	}
	m.wg.Add(1)
	go func() { // Watch callbacks must not block
		defer m.wg.Done()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if _, err := m.mmCall(ctx, &mmReq{Op: "gone", Player: ev.UserID}); err != nil && !errors.Is(err, ErrNoTicket) {
			m.log.Debug().Err(err).Str("player", ev.UserID).Msg("leave queue on disconnect")
		}
	}()
}

// away tells a room that a player's connection client is gone.
func (m *Module) away(player, client, room string) {
	node, ok := nodeOf(room)
	if !ok {
		return
	}
	req := &roomAwayReq{Room: room, Player: player, Client: client}
	if node == m.host.Node {
		if _, err := m.nodeAway(nodeCtx(context.Background()), req); err != nil {
			m.log.Debug().Err(err).Msg("away")
		}
		return
	}
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		ctx, cancel := context.WithTimeout(nodeCtx(context.Background()), 10*time.Second)
		defer cancel()
		if err := m.host.RPC.SendOn(ctx, node, ID, "node_away", req); err != nil {
			m.log.Warn().Err(err).Str("room", room).Str("player", player).Msg("could not tell the room its player is away")
		}
	}()
}

// setRoom records the room a player sits in, "" for none; with ifRoom,
// only if they sit in that one.
func (m *Module) setRoom(player, room, ifRoom string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	s := m.players[player]
	if s == nil || (ifRoom != "" && s.room != ifRoom) {
		return
	}
	s.room = room
	if room == "" && s.client == "" {
		delete(m.players, player)
	}
}

func (m *Module) roomOf(player string) string {
	m.mu.RLock()
	defer m.mu.RUnlock()
	if s := m.players[player]; s != nil {
		return s.room
	}
	return ""
}

// create places a new room on the least loaded game node and seats the
// caller in it.
func (m *Module) create(ctx context.Context, req *CreateReq) (*JoinResp, error) {
	p, client, err := m.player(ctx)
	if err != nil {
		return nil, err
	}
	if r := m.roomOf(p); r != "" {
		return nil, rpc.Errorf(rpc.CodeForbidden, "already in room %s: leave it first: %w", r, ErrSeated)
	}
	if _, ok := m.gameOf(req.Game); !ok {
		return nil, rpc.Errorf(rpc.CodeNotFound, "game %q: %w", req.Game, ErrUnknownGame)
	}
	node := m.nodes.place(req.Game)
	resp, err := callNode(ctx, m, node, "node_create", &roomCreateReq{Game: req.Game, Private: req.Private,
		Settings: req.Settings, Player: p, Client: client, Home: m.host.Node}, m.nodeCreate)
	if err != nil {
		return nil, err
	}
	m.setRoom(p, resp.Room.ID, "")
	return resp, nil
}

// join seats the caller in a room (by id or private code), as a player or
// spectator, or gives them back their seat.
func (m *Module) join(ctx context.Context, req *JoinReq) (*JoinResp, error) {
	p, client, err := m.player(ctx)
	if err != nil {
		return nil, err
	}
	room := req.Room
	if room == "" {
		if req.Code == "" {
			return nil, rpc.Errorf(rpc.CodeBadRequest, "join needs a room or a code")
		}
		if room, err = m.findCode(ctx, req.Code); err != nil {
			return nil, err
		}
	}
	node, ok := nodeOf(room)
	if !ok {
		return nil, rpc.Errorf(rpc.CodeBadRequest, "invalid room id %q", room)
	}
	if cur := m.roomOf(p); cur != "" && cur != room && !req.Spectator {
		return nil, rpc.Errorf(rpc.CodeForbidden, "already in room %s: leave it first: %w", cur, ErrSeated)
	}
	resp, err := callNode(ctx, m, node, "node_join", &roomJoinReq{Room: room, Code: req.Code, Player: p, Client: client,
		Home: m.host.Node, Spectator: req.Spectator, Since: req.Since}, m.nodeJoin)
	if err != nil {
		if rpc.CodeOf(err) == rpc.CodeNotFound {
			m.setRoom(p, "", room)
		}
		return nil, err
	}
	if !req.Spectator {
		m.setRoom(p, room, "")
	}
	return resp, nil
}

// leave gives up the caller's seat (or spectator place) in a room.
func (m *Module) leave(ctx context.Context, req *RoomReq) (*OK, error) {
	p, _, err := m.player(ctx)
	if err != nil {
		return nil, err
	}
	room := req.Room
	if room == "" {
		room = m.roomOf(p)
	}
	node, ok := nodeOf(room)
	if !ok {
		return nil, rpc.Errorf(rpc.CodeBadRequest, "leave which room?")
	}
	m.setRoom(p, "", room)
	return callNode(ctx, m, node, "node_leave", &roomLeaveReq{Room: room, Player: p}, m.nodeLeave)
}

// list returns the public rooms with a free seat on every game node.
func (m *Module) list(ctx context.Context, req *ListReq) (*ListResp, error) {
	if _, _, err := m.player(ctx); err != nil {
		return nil, err
	}
	out := m.localRooms(req.Game, "")
	for _, n := range m.nodes.others() {
		resp, err := rpc.CallOn[ListResp](nodeCtx(ctx), m.host.RPC, n, ID, "node_rooms", &roomsReq{Game: req.Game})
		if err != nil {
			m.log.Debug().Err(err).Str("node", n).Msg("list rooms")
			continue
		}
		out = append(out, resp.Rooms...)
	}
	slices.SortFunc(out, func(a, b RoomInfo) int { return strings.Compare(a.ID, b.ID) })
	return &ListResp{Rooms: out}, nil
}

// findCode returns the id of the private room with code, on any node.
func (m *Module) findCode(ctx context.Context, code string) (string, error) {
	if rs := m.localRooms("", code); len(rs) > 0 {
		return rs[0].ID, nil
	}
	for _, n := range m.nodes.others() {
		resp, err := rpc.CallOn[ListResp](nodeCtx(ctx), m.host.RPC, n, ID, "node_rooms", &roomsReq{Code: code})
		if err == nil && len(resp.Rooms) > 0 {
			return resp.Rooms[0].ID, nil
		}
	}
	return "", rpc.Errorf(rpc.CodeNotFound, "no room with code %q: %w", code, ErrNoRoom)
}

// inputCall queues an input and answers with the tick it lands on.
func (m *Module) inputCall(ctx context.Context, req *InputReq) (*InputResp, error) {
	p, _, err := m.player(ctx)
	if err != nil {
		return nil, err
	}
	node, ok := nodeOf(req.Room)
	if !ok {
		return nil, rpc.Errorf(rpc.CodeBadRequest, "invalid room id %q", req.Room)
	}
	return callNode(ctx, m, node, "node_input", &roomInputReq{Player: p, Input: *req}, m.nodeInput)
}

// inputMessage takes inputs published on game/in/<player>/<room>. The
// topic guard lets only <player> publish there; every game node of a
// cluster sees the message (federation) and the room's own node takes it,
// in the publisher's order. It runs on the publisher's goroutine.
func (m *Module) inputMessage(msg server.Message) {
	rest := strings.TrimPrefix(msg.Topic, TopicInput)
	player, room, ok := strings.Cut(rest, "/")
	if !ok {
		return
	}
	node, ok := nodeOf(room)
	if !ok || node != m.host.Node {
		return
	}
	var in InputReq
	if err := json.Unmarshal(msg.Payload, &in); err != nil {
		m.stats.dropped("bad_input")
		return
	}
	in.Room = room
	m.mu.RLock()
	r := m.rooms[room]
	m.mu.RUnlock()
	if r == nil {
		m.stats.dropped("no_room")
		return
	}
	if !r.post(func() {
		if _, err := r.input(player, &in); err != nil {
			r.log.Debug().Err(err).Str("player", player).Msg("input dropped")
		}
	}) {
		m.stats.dropped("inbox_full")
	}
}

// nodeLeft is a room telling a player's home that the seat is gone.
func (m *Module) nodeLeft(_ context.Context, req *leftReq) (*OK, error) {
	m.setRoom(req.Player, "", req.Room)
	return &OK{OK: true}, nil
}

// tellHome tells a player's node that the player lost their seat.
func (m *Module) tellHome(home, player, room string, reason Reason) {
	req := &leftReq{Player: player, Room: room, Reason: reason}
	if home == m.host.Node || home == "" {
		m.setRoom(player, "", room)
		return
	}
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		ctx, cancel := context.WithTimeout(nodeCtx(context.Background()), 10*time.Second)
		defer cancel()
		if err := m.host.RPC.SendOn(ctx, home, ID, "node_left", req); err != nil {
			m.log.Debug().Err(err).Str("node", home).Msg("tell home a seat is gone")
		}
	}()
}
