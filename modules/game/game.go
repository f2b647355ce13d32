package game

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/rs/zerolog"

	"github.com/colonymq/colony/app"
	"github.com/colonymq/colony/rpc"
	"github.com/colonymq/colony/server"
)

// ID is the module id used in config, logs and request topics ($rpc/game/…).
const ID = "game"

// Version is the module's own version.
const Version = "0.2.0"

// Sentinel errors. Handlers return them inside an *rpc.Error whose code
// crosses the wire (named in each comment); in the same process errors.Is
// matches both.
var (
	// ErrNotLoggedIn means the connection has not called login (forbidden).
	ErrNotLoggedIn = errors.New("not logged in")
	// ErrUnknownGame means no game type or mode of that name (not_found).
	ErrUnknownGame = errors.New("unknown game")
	// ErrNoRoom means the room does not exist (any more) (not_found).
	ErrNoRoom = errors.New("no such room")
	// ErrFull means the room has no free seat of the kind asked (forbidden).
	ErrFull = errors.New("room full")
	// ErrPrivate means a private room was joined without its code (forbidden).
	ErrPrivate = errors.New("private room")
	// ErrReserved means the matchmade room's seats are someone else's (forbidden).
	ErrReserved = errors.New("seats reserved")
	// ErrSeated means the player is already in a room (forbidden).
	ErrSeated = errors.New("already seated")
	// ErrNoSeat means the player has no seat in the room (forbidden).
	ErrNoSeat = errors.New("no seat")
	// ErrRateLimited means the player sent inputs too fast (rate_limited).
	ErrRateLimited = errors.New("inputs rate limited")
	// ErrLate means an input aimed at a tick too long past (bad_request).
	ErrLate = errors.New("input too late")
	// ErrEarly means an input aimed too far ahead (bad_request).
	ErrEarly = errors.New("input too early")
	// ErrQueued means the player is already queued or in a party that is (forbidden).
	ErrQueued = errors.New("already queued")
	// ErrNoTicket means the player is not queued (not_found).
	ErrNoTicket = errors.New("not queued")
	// ErrParty means a party call that cannot be done (forbidden, or not_found).
	ErrParty = errors.New("party")
	// ErrInternalOnly means a client called a handler meant for game nodes (forbidden).
	ErrInternalOnly = errors.New("internal handler")
)

// Authenticator turns a login token into a player id; an error refuses
// the login (an *rpc.Error reaches the client as it is, any other as
// forbidden). It runs on the login call and may block.
type Authenticator func(ctx context.Context, c rpc.Caller, token string) (player string, err error)

// Module is the game module. Make it with New, add game types with
// Register (and modes with AddMode) before the App starts; its exported
// methods are safe for concurrent use.
type Module struct {
	opts  Options
	clock Clock
	host  *app.Host
	log   zerolog.Logger
	stats *stats
	st    *stores
	nodes *nodes
	mm    *matchmaker

	cfgMu sync.RWMutex
	games map[string]*Game
	modes map[string]*Mode
	auth  Authenticator

	mu      sync.RWMutex
	rooms   map[string]*Room
	codes   map[string]*Room
	players map[string]*session // logged in here (this node is their home)

	pushLocal func(user, topic string, payload []byte, qos byte) (int, error)
	stop      chan struct{}
	wg        sync.WaitGroup
	cancels   []func()
}

// session is a player logged in on this node.
type session struct {
	client string // "" while disconnected (kept while the player holds a seat)
	room   string // the room the player sits in, "" if none
}

var (
	_ app.Module       = (*Module)(nil)
	_ app.Guarded      = (*Module)(nil)
	_ app.Configurable = (*Module)(nil)
)

// New returns the module with opts, defaults applied. It has no side
// effects until the App initialises it; Init reports invalid options.
func New(opts Options) *Module {
	opts.setDefaults()
	m := &Module{
		opts: opts, stats: newStats(),
		games: map[string]*Game{}, modes: map[string]*Mode{},
		rooms: map[string]*Room{}, codes: map[string]*Room{}, players: map[string]*session{},
		stop: make(chan struct{}),
	}
	m.mm = newMatchmaker(m)
	return m
}

// ID returns "game".
func (*Module) ID() string { return ID }

// Settings returns the module's options for the App to decode the
// [modules.game] table of colony.toml into (app.Configurable).
func (m *Module) Settings() any { return &m.opts }

// Register adds a game type. Call it before the App starts; every game
// node of a cluster must register the same types.
func (m *Module) Register(g Game) error {
	if err := g.setDefaults(); err != nil {
		return err
	}
	m.cfgMu.Lock()
	defer m.cfgMu.Unlock()
	if _, dup := m.games[g.Name]; dup {
		return fmt.Errorf("game type %q registered twice: %w", g.Name, ErrOptions)
	}
	m.games[g.Name] = &g
	return nil
}

// AddMode adds a matchmaking queue for a registered game type.
func (m *Module) AddMode(md Mode) error {
	m.cfgMu.Lock()
	defer m.cfgMu.Unlock()
	g, ok := m.games[md.Game]
	if !ok {
		return fmt.Errorf("mode %q: game %q is not registered: %w", md.Name, md.Game, ErrOptions)
	}
	if err := md.setDefaults(g); err != nil {
		return err
	}
	if _, dup := m.modes[md.Name]; dup {
		return fmt.Errorf("mode %q added twice: %w", md.Name, ErrOptions)
	}
	m.modes[md.Name] = &md
	return nil
}

// Authenticate sets how login tokens become player ids; see Authenticator.
func (m *Module) Authenticate(a Authenticator) {
	m.cfgMu.Lock()
	m.auth = a
	m.cfgMu.Unlock()
}

func (m *Module) gameOf(name string) (*Game, bool) {
	m.cfgMu.RLock()
	defer m.cfgMu.RUnlock()
	g, ok := m.games[name]
	return g, ok
}

func (m *Module) modeOf(name string) (*Mode, bool) {
	m.cfgMu.RLock()
	defer m.cfgMu.RUnlock()
	md, ok := m.modes[name]
	return md, ok
}

// Guards closes the module's topics: a client reads only its own
// game/u/<player>/…, publishes inputs only as itself on
// game/in/<player>/…, and nothing else under game/.
func (*Module) Guards() []server.TopicGuard {
	return []server.TopicGuard{{
		Filter: "game/#",
		Read:   []string{TopicRoot + "%u/#"},
		Write:  []string{TopicInput + "%u/+"},
	}}
}

// Init validates the options, adds the configured modes, opens the
// buckets, watches connections and registers the handlers.
func (m *Module) Init(_ context.Context, h *app.Host) error {
	m.opts.setDefaults()
	if err := m.opts.validate(); err != nil {
		return err
	}
	for _, md := range m.opts.Modes {
		if err := m.AddMode(md); err != nil {
			return err
		}
	}
	m.clock = m.opts.Clock
	m.host, m.log = h, h.Log
	if pl, ok := h.Server.(interface {
		PushUserLocal(userID, topic string, payload []byte, qos byte) (int, error)
	}); ok {
		m.pushLocal = pl.PushUserLocal
	}
	st, err := openStores(h.Store, h.Module)
	if err != nil {
		return err
	}
	m.st = st
	m.nodes = newNodes(m)
	m.stats.register(h.Metrics, m)
	m.cancels = append(m.cancels, h.Server.Watch(m.connEvent))
	unsub, err := h.Server.Subscribe(TopicInput+"+/+", m.inputMessage)
	if err != nil {
		return fmt.Errorf("subscribe to inputs: %w", err)
	}
	m.cancels = append(m.cancels, unsub)
	unsub, err = h.Server.Subscribe(topicNodes+"+", m.nodes.message)
	if err != nil {
		return fmt.Errorf("subscribe to node loads: %w", err)
	}
	m.cancels = append(m.cancels, unsub)
	m.register(h.Registry, h.Module)
	app.HandleInfo(h, Version)
	return nil
}

// Start runs the load announcements and the matchmaker.
func (m *Module) Start(context.Context) error {
	m.nodes.announce()
	m.wg.Add(2)
	go func() {
		defer m.wg.Done()
		m.nodes.run(m.stop)
	}()
	go func() {
		defer m.wg.Done()
		m.mm.run(m.stop)
	}()
	return nil
}

// Stop closes every room (players get seat_lost, reason closed) and
// withdraws the node's load announcement.
func (m *Module) Stop(context.Context) error {
	for _, c := range m.cancels {
		c()
	}
	close(m.stop)
	m.mu.RLock()
	rooms := make([]*Room, 0, len(m.rooms))
	for _, r := range m.rooms {
		rooms = append(rooms, r)
	}
	m.mu.RUnlock()
	for _, r := range rooms {
		<-r.done
	}
	m.wg.Wait()
	m.nodes.withdraw()
	return nil
}

func (m *Module) roomCount() int {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return len(m.rooms)
}

// push sends a message to a player, straight to this node's connections
// when the player's home is here, else through the cluster.
func (m *Module) push(player, home, topic string, b []byte) {
	m.stats.messages.Add(1)
	t := Topic(player, topic)
	var err error
	if home == m.host.Node && m.pushLocal != nil {
		_, err = m.pushLocal(player, t, b, 0)
	} else {
		_, err = m.host.Server.PushUser(player, t, b, 0)
	}
	if err != nil {
		m.log.Debug().Err(err).Str("player", player).Msg("push not delivered")
	}
}

// pushEvent pushes v to a player's topic kind wherever they are.
func (m *Module) pushEvent(player, kind string, b []byte) {
	m.stats.messages.Add(1)
	if _, err := m.host.Server.PushUser(player, Topic(player, kind), b, 1); err != nil {
		m.log.Debug().Err(err).Str("player", player).Msg("push not delivered")
	}
}
