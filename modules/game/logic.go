package game

import (
	"encoding/json"
	"fmt"
	"time"
)

// Logic is a game developer's code for one room. The module creates one
// per room with Game.New and calls its methods from the room's goroutine
// only, one at a time, so game state needs no locks; the *Room they get
// is valid only during the call. A method must not block: it holds up the
// room's tick.
//
// Call order: OnJoin for each player or spectator taking a seat (an error
// refuses them), then at every tick the inputs of that tick in arrival
// order (OnInput) followed by OnTick; OnLeave when a player leaves, loses
// their seat after the grace window, or the room closes. Optional
// interfaces add calls: Awayer, Returner.
type Logic interface {
	// OnJoin is called when p takes a seat (p.Spectator: watches). An
	// error refuses the join and reaches the client as forbidden.
	OnJoin(r *Room, p *Player) error
	// OnLeave is called when p leaves for good.
	OnLeave(r *Room, p *Player, reason Reason)
	// OnInput is called for each input of the current tick, in order.
	OnInput(r *Room, in Input)
	// OnTick advances the game by one tick, after the tick's inputs. With
	// SyncState its result is the frame's state (nil: no frame this
	// tick); otherwise it is ignored.
	OnTick(r *Room) any
}

// Awayer is implemented by Logic that wants to know when a player's
// connection drops; the player keeps the seat for Options.Grace.
type Awayer interface {
	OnAway(r *Room, p *Player)
}

// Returner is implemented by Logic that wants to know when an away player
// is back (before the missed messages are replayed to them).
type Returner interface {
	OnReturn(r *Room, p *Player)
}

// Sync says what a room sends at every tick.
type Sync string

// Frame delivery modes.
const (
	// SyncLockStep sends every tick a frame with the inputs applied at
	// that tick (possibly none); clients simulate deterministically.
	SyncLockStep Sync = "lockstep"
	// SyncState sends the state OnTick returns; clients render it.
	SyncState Sync = "state"
	// SyncNone sends no frames: the game talks with Broadcast and Send
	// (turn-based games).
	SyncNone Sync = "none"
)

// Late says what happens to an input aimed at a tick already simulated.
type Late string

// Late-input policies.
const (
	// LateNext applies it at the next tick (within Game.MaxLag ticks).
	LateNext Late = "next"
	// LateDrop drops it and tells the sender.
	LateDrop Late = "drop"
)

// Reason says why a player left.
type Reason string

// Why players leave.
const (
	ReasonLeft    Reason = "left"    // the player asked to
	ReasonTimeout Reason = "timeout" // away longer than the grace window
	ReasonKicked  Reason = "kicked"  // the game kicked them (Room.Kick)
	ReasonEnded   Reason = "ended"   // the game ended (Room.End)
	ReasonClosed  Reason = "closed"  // the room closed (module stopping)
)

// Game describes a game type: how to make its rooms' Logic and how they
// run. Register it with Module.Register before the App starts.
type Game struct {
	// Name identifies the game type in requests ("pong").
	Name string
	// New makes the Logic of a new room from the settings the creator
	// sent (JSON, possibly empty). An error refuses the creation
	// (bad_request).
	New func(settings json.RawMessage) (Logic, error)
	// TickRate is the number of ticks per second; default 20.
	TickRate int
	// Sync is the frame delivery mode; default SyncState.
	Sync Sync
	// Players is the room's capacity in players; default 2.
	Players int
	// Spectators is how many may watch besides; default 0.
	Spectators int
	// Late is the late-input policy; default LateNext.
	Late Late
	// MaxLag is how many ticks late an input may be and still be applied
	// (LateNext); default TickRate (one second), negative: no limit.
	MaxLag int
	// MaxLead is how many ticks ahead an input may aim; it waits for its
	// tick. Default TickRate; negative: none (applied at the next tick).
	MaxLead int
}

func (g *Game) setDefaults() error {
	if g.Name == "" || g.New == nil {
		return fmt.Errorf("game type needs a Name and New: %w", ErrOptions)
	}
	if !validID(g.Name) {
		return fmt.Errorf("game type %q: name cannot be a topic level: %w", g.Name, ErrOptions)
	}
	if g.TickRate == 0 {
		g.TickRate = 20
	}
	if g.TickRate < 0 || g.TickRate > 1000 {
		return fmt.Errorf("game type %q: tick rate %d outside 1..1000: %w", g.Name, g.TickRate, ErrOptions)
	}
	if g.Sync == "" {
		g.Sync = SyncState
	}
	switch g.Sync {
	case SyncLockStep, SyncState, SyncNone:
	default:
		return fmt.Errorf("game type %q: unknown sync %q: %w", g.Name, g.Sync, ErrOptions)
	}
	if g.Players == 0 {
		g.Players = 2
	}
	if g.Players < 1 || g.Spectators < 0 {
		return fmt.Errorf("game type %q: capacity below 1 or negative spectators: %w", g.Name, ErrOptions)
	}
	if g.Late == "" {
		g.Late = LateNext
	}
	if g.Late != LateNext && g.Late != LateDrop {
		return fmt.Errorf("game type %q: unknown late-input policy %q: %w", g.Name, g.Late, ErrOptions)
	}
	if g.MaxLag == 0 {
		g.MaxLag = g.TickRate
	}
	if g.MaxLead == 0 {
		g.MaxLead = g.TickRate
	}
	return nil
}

func (g *Game) interval() time.Duration { return time.Second / time.Duration(g.TickRate) }

// Player is a seat in a room, or a spectator. Logic may keep its own
// per-player state in Data.
type Player struct {
	ID        string
	Spectator bool
	Away      bool // connection lost; the seat is kept for the grace window
	Data      any
}

// Input is one player input, as Logic sees it.
type Input struct {
	Player string          // who sent it
	Tick   uint64          // the tick it is applied at
	Seq    uint64          // the sender's own sequence number, if any
	Data   json.RawMessage // what the client sent
}

// Result is how a game ended, for Room.End: the module stores it and,
// for matchmade rooms, updates the players' ratings from Ranks.
type Result struct {
	// Ranks lists the players from first place down; players sharing a
	// place are in one inner list. Optional.
	Ranks [][]string `json:"ranks,omitempty"`
	// Scores are game-defined figures per player. Optional.
	Scores map[string]float64 `json:"scores,omitempty"`
	// Data is anything else worth keeping.
	Data any `json:"data,omitempty"`
}
