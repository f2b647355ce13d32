package im

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/colonymq/colony/app"
	"github.com/colonymq/colony/rpc"
	"github.com/colonymq/colony/server"
)

// ID is the module id used in config, logs and request topics ($rpc/im/…).
const ID = "im"

// Version is the module's own version.
const Version = "0.2.0"

// Sentinel errors. Handlers return them inside an *rpc.Error whose code
// crosses the wire (named in each comment); in the same process errors.Is
// matches both the code's sentinel and these.
var (
	// ErrNoUser means the caller has no user id, or one that cannot be a
	// topic level (forbidden).
	ErrNoUser = errors.New("caller has no usable user id")
	// ErrNotMember means the conversation does not exist or the caller is
	// not in it (forbidden).
	ErrNotMember = errors.New("not a member of the conversation")
	// ErrNotAllowed means the caller's role does not allow the call, such
	// as posting in a channel as a member (forbidden).
	ErrNotAllowed = errors.New("not allowed in this conversation")
	// ErrBlocked means one of two users blocks the other (forbidden).
	ErrBlocked = errors.New("blocked")
	// ErrRejected means a send hook refused the message (forbidden, unless
	// the hook returned an *rpc.Error).
	ErrRejected = errors.New("rejected")
	// ErrTooLarge means the content exceeds Options.MaxMessageBytes
	// (bad_request).
	ErrTooLarge = errors.New("message too large")
)

// SendHook vets a message before it is stored. It gets the message with
// its content, Conv, From, Type (TypeMsg, or TypeEdit with Ref) and
// ClientID, but no Seq or TS yet, and may change the content (Text, Data,
// Bin) or return an error to refuse it: an *rpc.Error reaches the sender
// as it is, any other error as forbidden wrapping ErrRejected. Changes to
// the other fields are ignored.
//
// Hooks run on the sender's call, in the order added, before the module
// checks the sender's rights or looks for a resent client id, and with no
// lock held: they may be slow (that sender waits) and may call other
// modules, im included. They run concurrently for different senders.
type SendHook func(ctx context.Context, msg *Message) error

// Module is the im module: conversations, messages, receipts and presence.
// Make it with New; its exported methods are safe for concurrent use.
type Module struct {
	opts Options
	host *app.Host
	log  zerolog.Logger
	st   *stores

	hookMu sync.RWMutex
	hooks  []SendHook

	mu     sync.Mutex
	convs  map[string]*conv // loaded conversations
	dirty  map[string]*conv // conversations with unsaved positions
	create sync.Mutex       // serializes the creation of direct conversations

	sends    *limiter
	typing   *limiter
	presence *presence
	receipts *receipts

	unwatch func()
	stop    chan struct{}
	wg      sync.WaitGroup
}

var (
	_ app.Module  = (*Module)(nil)
	_ app.Guarded = (*Module)(nil)
)

// New returns the module with opts, defaults applied. It has no side
// effects until the App initialises it; Init reports invalid options.
func New(opts Options) *Module {
	opts.setDefaults()
	return &Module{
		opts:   opts,
		convs:  map[string]*conv{},
		dirty:  map[string]*conv{},
		typing: newLimiter(typingRate, typingBurst),
		stop:   make(chan struct{}),
	}
}

// Settings returns the module's options for the App to decode the
// [modules.im] table of colony.toml into (app.Configurable).
func (m *Module) Settings() any { return &m.opts }

var _ app.Configurable = (*Module)(nil)

// ID returns "im".
func (*Module) ID() string { return ID }

// OnSend adds a hook that may rewrite or refuse messages and edits; see
// SendHook. Call it before the App starts, usually from another module's
// constructor or Init.
func (m *Module) OnSend(h SendHook) {
	m.hookMu.Lock()
	m.hooks = append(m.hooks, h)
	m.hookMu.Unlock()
}

// Guards closes the delivery topics: a client may read only its own user's
// im/u/<uid>/… and no client may publish there, with or without an ACL
// file. The App installs it on every node that offers the module, so that
// clients of nodes not running im are held to it too.
func (*Module) Guards() []server.TopicGuard {
	return []server.TopicGuard{{Filter: TopicRoot + "#", Read: []string{TopicRoot + "%u/#"}}}
}

// Init opens the module's buckets, starts watching connections for
// presence and registers the handlers.
func (m *Module) Init(_ context.Context, h *app.Host) error {
	m.opts.setDefaults()
	if err := m.opts.validate(); err != nil {
		return err
	}
	m.sends = newLimiter(m.opts.SendRate, m.opts.SendBurst)
	m.host, m.log = h, h.Log
	st, err := openStores(h.Store, h.Module)
	if err != nil {
		return err
	}
	m.st = st
	// Watching from Init, before listeners open, sees every connection.
	m.presence = newPresence(m)
	m.receipts = newReceipts(m)
	m.unwatch = h.Server.Watch(m.presence.event)
	m.register(h.Registry, h.Module)
	app.HandleInfo(h, Version)
	return nil
}

// Start runs the background work: presence and receipt announcements,
// the position flusher and the retention sweep.
func (m *Module) Start(context.Context) error {
	m.wg.Add(4)
	go func() {
		defer m.wg.Done()
		m.presence.run(m.stop)
	}()
	go func() {
		defer m.wg.Done()
		m.receipts.run(m.stop)
	}()
	go func() {
		defer m.wg.Done()
		m.every(time.Duration(m.opts.FlushInterval), func(ctx context.Context) {
			if err := m.flush(ctx); err != nil {
				m.log.Error().Err(err).Msg("save read positions")
			}
		})
	}()
	go func() {
		defer m.wg.Done()
		m.every(time.Duration(m.opts.SweepInterval), func(ctx context.Context) {
			if err := m.Sweep(ctx); err != nil {
				m.log.Error().Err(err).Msg("retention sweep")
			}
		})
	}()
	return nil
}

// every runs fn every d until Stop.
func (m *Module) every(d time.Duration, fn func(ctx context.Context)) {
	t := time.NewTicker(d)
	defer t.Stop()
	for {
		select {
		case <-m.stop:
			return
		case <-t.C:
			ctx, cancel := context.WithTimeout(context.Background(), max(d, 10*time.Second))
			fn(ctx)
			cancel()
		}
	}
}

// Stop ends the background work and saves read positions and last-seen
// times.
func (m *Module) Stop(ctx context.Context) error {
	m.unwatch()
	close(m.stop)
	m.wg.Wait()
	m.presence.process() // the disconnects of the shutdown
	if err := m.flush(ctx); err != nil {
		return fmt.Errorf("save read positions: %w", err)
	}
	return nil
}

// caller returns the user id of the caller, which every handler needs.
func caller(ctx context.Context) (string, error) {
	c, _ := rpc.CallerFrom(ctx)
	if c.UserID == "" {
		return "", rpc.Errorf(rpc.CodeForbidden, "im needs a user: authenticate, or have a module bind the connection to a user id: %w", ErrNoUser)
	}
	if !validUser(c.UserID) {
		return "", rpc.Errorf(rpc.CodeForbidden, "user id %q cannot be a topic level: %w", c.UserID, ErrNoUser)
	}
	return c.UserID, nil
}

// maxIDLen bounds user, conversation and client message ids.
const maxIDLen = 256

// validUser reports whether id can name a user: it must fit in one topic
// level of im/u/<uid>/… and in a store key.
func validUser(id string) bool {
	return id != "" && len(id) <= maxIDLen && !strings.ContainsAny(id, "/+#\x00")
}

// checkUsers returns a bad_request error for the first invalid user id.
func checkUsers(ids ...string) error {
	for _, id := range ids {
		if !validUser(id) {
			return rpc.Errorf(rpc.CodeBadRequest, "invalid user id %q", id)
		}
	}
	return nil
}

func now() int64 { return time.Now().UnixMilli() }
