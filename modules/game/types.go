package game

import (
	"encoding/json"
	"strings"
)

// Topics. Every player reads their own TopicRoot+"<player>/#"; the
// module pushes to them whether they subscribed or not (server pushes go
// to a user's connections directly). Inputs may be published to
// TopicInput+"<player>/<room>" by that player alone.
const (
	TopicRoot  = "game/u/"  // per-player delivery: game/u/<player>/{room, match}
	TopicRoom  = "room"     // Msg: everything a room sends to the player
	TopicMatch = "match"    // MatchEvent: matchmaking and parties
	TopicInput = "game/in/" // game/in/<player>/<room>: InputReq body, no reply
	topicNodes = "game/nodes/"
)

// Topic returns the delivery topic of kind (TopicRoom, TopicMatch) for player.
func Topic(player, kind string) string { return TopicRoot + player + "/" + kind }

// Message types of Msg.Type set by the module; games add their own.
const (
	MsgFrame    = "frame"     // one tick: Inputs (lock-step) or State
	MsgJoined   = "joined"    // Player took a seat (or watches: Data.spectator)
	MsgLeft     = "left"      // Player left; Reason says why
	MsgAway     = "away"      // Player's connection dropped; seat kept
	MsgBack     = "back"      // Player is back
	MsgEnded    = "ended"     // the game ended; Data is the Result
	MsgSeatLost = "seat_lost" // to the player: the seat is gone (Reason)
	MsgNotice   = "notice"    // to the player: dropped inputs (Data: Notice)
)

// Msg is what a room sends to a player on game/u/<player>/room. N numbers
// everything the room sends, to anyone: a player sees an increasing
// subsequence, remembers the last N, and gets what came after it replayed
// when rejoining within the grace window (JoinReq.Since).
type Msg struct {
	Room   string          `json:"room"`
	N      uint64          `json:"n"`
	Tick   uint64          `json:"tick"`
	Type   string          `json:"type"`
	Player string          `json:"player,omitempty"`
	Reason Reason          `json:"reason,omitempty"`
	Inputs []FrameInput    `json:"inputs,omitempty"`
	State  json.RawMessage `json:"state,omitempty"`
	Data   json.RawMessage `json:"data,omitempty"`
}

// FrameInput is one input in a lock-step frame.
type FrameInput struct {
	Player string          `json:"player"`
	Seq    uint64          `json:"seq,omitempty"`
	Data   json.RawMessage `json:"data,omitempty"`
}

// Notice tells a player about inputs the room dropped, at most once a
// second: Dropped counts them since the last notice, by Reason
// ("rate_limited", "late", "too_early").
type Notice struct {
	Dropped int    `json:"dropped"`
	Reason  string `json:"reason"`
}

// LoginReq logs a connection in as a player. Name is used only where
// Options.Guests allows; Token only by an Authenticator.
type LoginReq struct {
	Name  string `json:"name,omitempty"`
	Token string `json:"token,omitempty"`
}

// LoginResp tells the client who it is, where its deliveries arrive and
// the room it holds a seat in, if any (rejoin it with JoinReq.Room).
type LoginResp struct {
	Player string `json:"player"`
	Topic  string `json:"topic"`
	Room   string `json:"room,omitempty"`
	Node   string `json:"node"`
}

// CreateReq creates a room of Game; the creator takes the first seat.
// A Private room is not listed and is joined by its code.
type CreateReq struct {
	Game     string          `json:"game"`
	Private  bool            `json:"private,omitempty"`
	Settings json.RawMessage `json:"settings,omitempty"`
}

// JoinReq joins a room by Room id or by Code (private rooms), as a player
// or a Spectator. A player who already holds a seat there (back within
// the grace window) gets it again, and the messages after Since replayed.
type JoinReq struct {
	Room      string `json:"room,omitempty"`
	Code      string `json:"code,omitempty"`
	Spectator bool   `json:"spectator,omitempty"`
	Since     uint64 `json:"since,omitempty"`
}

// JoinResp describes the room joined. Replayed counts the messages sent
// again; Missed is true when some after Since were no longer buffered.
type JoinResp struct {
	Room     RoomInfo `json:"room"`
	Rejoined bool     `json:"rejoined,omitempty"`
	Replayed int      `json:"replayed,omitempty"`
	Missed   bool     `json:"missed,omitempty"`
}

// RoomInfo describes a room. Code is shown to its members only.
type RoomInfo struct {
	ID         string   `json:"id"`
	Game       string   `json:"game"`
	Node       string   `json:"node"`
	Mode       string   `json:"mode,omitempty"`
	Private    bool     `json:"private,omitempty"`
	Code       string   `json:"code,omitempty"`
	Players    []string `json:"players"`
	Capacity   int      `json:"capacity"`
	Spectators int      `json:"spectators"`
	Tick       uint64   `json:"tick"`
	TickRate   int      `json:"tick_rate"`
	Sync       Sync     `json:"sync"`
}

// RoomReq names a room.
type RoomReq struct {
	Room string `json:"room"`
}

// ListReq lists the public rooms with a free seat, of Game if not "".
type ListReq struct {
	Game string `json:"game,omitempty"`
}

// ListResp is the rooms found, on every node.
type ListResp struct {
	Rooms []RoomInfo `json:"rooms"`
}

// InputReq is one input for Room. Tick, if not 0, is the tick the client
// aims at (late and early inputs follow the game's policy); Seq is the
// client's own numbering, passed on to Logic and frames.
type InputReq struct {
	Room string          `json:"room"`
	Tick uint64          `json:"tick,omitempty"`
	Seq  uint64          `json:"seq,omitempty"`
	Data json.RawMessage `json:"data,omitempty"`
}

// InputResp tells the tick the input is applied at.
type InputResp struct {
	Tick uint64 `json:"tick"`
}

// OK is the result of calls that return nothing else.
type OK struct {
	OK bool `json:"ok"`
}

// validID reports whether id can be a player id, game name or room id:
// it must fit in one topic level and in a store key.
func validID(id string) bool {
	return id != "" && len(id) <= 128 && !strings.ContainsAny(id, "/+#\x00")
}
