package game

import (
	"errors"
	"fmt"
	"time"

	"github.com/colonymq/colony/app"
)

// ErrOptions reports Options (or a Game, or a Mode) that cannot be used;
// Init and Register return it wrapped, naming the field.
var ErrOptions = errors.New("bad game options")

// Options configures the module. A zero field takes the default it
// names; the toml names are the keys of colony.toml's [modules.game].
type Options struct {
	// Guests lets clients log in with a name of their choosing when no
	// Authenticator is set and the connection has no user id (for
	// development and trusted networks). Default false.
	Guests bool `toml:"guests"`
	// Grace is how long a player whose connection dropped keeps the seat;
	// default 30s.
	Grace app.Duration `toml:"grace"`
	// ReplayBuffer is how many messages a room keeps per player to replay
	// on rejoin; default 0: the grace window's worth of ticks plus 64, at
	// most 8192.
	ReplayBuffer int `toml:"replay_buffer"`
	// InputRate is how many inputs a player may send per second on
	// average, InputBurst how many in a row; the excess is dropped.
	// Defaults: twice the game's tick rate, and that rate plus 10.
	InputRate  float64 `toml:"input_rate"`
	InputBurst int     `toml:"input_burst"`
	// MaxRooms bounds the rooms of this node; default 10000.
	MaxRooms int `toml:"max_rooms"`
	// EmptyTimeout closes a room nobody has sat in for this long;
	// default 60s.
	EmptyTimeout app.Duration `toml:"empty_timeout"`
	// Announce is how often the node tells the other game nodes its load
	// (rooms placement); default 2s.
	Announce app.Duration `toml:"announce"`
	// Matchmaker is the node that runs matchmaking, parties and ratings;
	// default "": the live game node with the smallest id.
	Matchmaker string `toml:"matchmaker"`
	// MatchInterval is how often queues are matched again as windows
	// widen; default 250ms. Every queue call also matches at once.
	MatchInterval app.Duration `toml:"match_interval"`
	// Modes are the matchmaking queues (more with Module.AddMode).
	Modes []Mode `toml:"modes"`
	// Clock is the time source; default the system clock. Not from toml.
	Clock Clock `toml:"-"`
}

// Mode is a matchmaking queue.
type Mode struct {
	// Name identifies the queue ("duel").
	Name string `toml:"name"`
	// Game is the game type a match plays.
	Game string `toml:"game"`
	// Players is the number of players per match; default: the game's
	// capacity.
	Players int `toml:"players"`
	// Window is the rating distance a new ticket accepts; default 100.
	Window float64 `toml:"window"`
	// Widen is how much the window grows per second of waiting; default 50.
	Widen float64 `toml:"widen"`
	// MaxWindow caps the window; default 1000.
	MaxWindow float64 `toml:"max_window"`
	// Timeout ends a ticket that waited this long; default 60s.
	Timeout app.Duration `toml:"timeout"`
}

func (o *Options) setDefaults() {
	if o.Grace == 0 {
		o.Grace = app.Duration(30 * time.Second)
	}
	if o.MaxRooms == 0 {
		o.MaxRooms = 10_000
	}
	if o.EmptyTimeout == 0 {
		o.EmptyTimeout = app.Duration(time.Minute)
	}
	if o.Announce == 0 {
		o.Announce = app.Duration(2 * time.Second)
	}
	if o.MatchInterval == 0 {
		o.MatchInterval = app.Duration(250 * time.Millisecond)
	}
	if o.Clock == nil {
		o.Clock = SystemClock()
	}
}

func (o *Options) validate() error {
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, fmt.Errorf("game: %s: %s: %w", field, fmt.Sprintf(format, args...), ErrOptions))
	}
	if o.Grace < 0 || o.EmptyTimeout < 0 || o.Announce < 0 || o.MatchInterval < 0 {
		bad("Grace, EmptyTimeout, Announce, MatchInterval", "durations must not be negative")
	}
	if o.ReplayBuffer < 0 {
		bad("ReplayBuffer", "%d is negative", o.ReplayBuffer)
	}
	if o.InputRate < 0 || o.InputBurst < 0 {
		bad("InputRate, InputBurst", "must not be negative")
	}
	if o.MaxRooms < 1 {
		bad("MaxRooms", "%d is less than 1", o.MaxRooms)
	}
	return errors.Join(errs...)
}

func (md *Mode) setDefaults(g *Game) error {
	if !validID(md.Name) {
		return fmt.Errorf("mode %q: name cannot be a topic level: %w", md.Name, ErrOptions)
	}
	if md.Players == 0 {
		md.Players = g.Players
	}
	if md.Players < 1 || md.Players > g.Players {
		return fmt.Errorf("mode %q: %d players for a game of %d seats: %w", md.Name, md.Players, g.Players, ErrOptions)
	}
	if md.Window == 0 {
		md.Window = 100
	}
	if md.Widen == 0 {
		md.Widen = 50
	}
	if md.MaxWindow == 0 {
		md.MaxWindow = 1000
	}
	if md.Timeout == 0 {
		md.Timeout = app.Duration(time.Minute)
	}
	if md.Window < 0 || md.Widen < 0 || md.MaxWindow < md.Window || md.Timeout < 0 {
		return fmt.Errorf("mode %q: negative window, widening or timeout, or max_window below window: %w", md.Name, ErrOptions)
	}
	return nil
}
