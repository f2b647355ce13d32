package device

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"github.com/colonymq/colony/app"
	"github.com/colonymq/colony/rpc"
	"github.com/colonymq/colony/server"
)

// ID is the module id used in config, logs and request topics ($rpc/device/…).
const ID = "device"

// Version is the module's own version.
const Version = "0.2.0"

// Topic roots. A device's own space is dev/<id>/…; a claim client's
// replies go under claim/<client id>/….
const (
	TopicRoot  = "dev/"
	ClaimRoot  = "claim/"
	userPrefix = "dev:"   // user id of a device connection: dev:<id>
	claimUser  = "claim:" // user id of a claim connection: claim:<name>
)

// Sentinel errors. Handlers return them inside an *rpc.Error whose code
// crosses the wire (named in each comment); in the same process errors.Is
// matches both the code's sentinel and these.
var (
	// ErrNotFound means no such device, shadow, command, job or claim (not_found).
	ErrNotFound = errors.New("not found")
	// ErrExists means a device, job or claim with that id exists (bad_request).
	ErrExists = errors.New("already exists")
	// ErrInvalid means a malformed id, name or value (bad_request).
	ErrInvalid = errors.New("invalid")
	// ErrDisabled means the device is disabled (forbidden).
	ErrDisabled = errors.New("device disabled")
	// ErrNotAdmin means the caller may not manage devices: it is a device
	// or a claim, or not in Options.Admins (forbidden).
	ErrNotAdmin = errors.New("caller may not manage devices")
	// ErrVersionConflict means a shadow update named a version other than
	// the current one (bad_request; MQTT replies use code 409).
	ErrVersionConflict = errors.New("version conflict")
	// ErrTooLarge means a shadow document or update exceeds
	// Options.MaxShadowBytes (bad_request; MQTT replies use code 413).
	ErrTooLarge = errors.New("document too large")
	// ErrOffline means the device is not connected and the command was
	// not to be queued (unavailable).
	ErrOffline = errors.New("device offline")
	// ErrCommandTimeout means the device did not answer a command in time (timeout).
	ErrCommandTimeout = errors.New("device did not answer in time")
	// ErrTerminal means a job execution already ended (bad_request).
	ErrTerminal = errors.New("job execution already ended")
)

// Module is the device module. Make it with New; its exported methods are
// safe for concurrent use.
type Module struct {
	opts Options
	host *app.Host
	log  zerolog.Logger
	st   *stores

	writeMu sync.Mutex // serializes registry and claim writers
	mu      sync.RWMutex
	devs    map[string]*deviceRecord // the registry, cached whole
	claims  map[string]*claimRecord

	presence *presence
	ingest   *ingest
	cmds     *commands
	jobs     *jobs
	shards   []chan server.Message

	unwatch func()
	unsub   func()
	stop    chan struct{}
	wg      sync.WaitGroup
	stats   counters
}

// counters are the module's running totals (Stats).
type counters struct {
	points, rejected, shadowUpdates, commands atomic.Int64
}

var (
	_ app.Module       = (*Module)(nil)
	_ app.Configurable = (*Module)(nil)
	_ app.PSKSource    = (*Module)(nil)
)

// New returns the module with opts, defaults applied. It has no side
// effects until the App initialises it; Init reports invalid options.
func New(opts Options) *Module {
	opts.setDefaults()
	return &Module{opts: opts, devs: map[string]*deviceRecord{}, claims: map[string]*claimRecord{}, stop: make(chan struct{})}
}

// ID returns "device".
func (*Module) ID() string { return ID }

// Settings returns the module's options for the App to decode the
// [modules.device] table of colony.toml into (app.Configurable).
func (m *Module) Settings() any { return &m.opts }

// shardCount is how many goroutines handle device messages (shadows,
// command answers, job updates); each device's messages go to one, in order.
const shardCount = 4

// Init opens the buckets, loads the registry, installs the authenticator,
// subscribes to the devices' topics and registers the handlers.
func (m *Module) Init(_ context.Context, h *app.Host) error {
	m.opts.setDefaults()
	if err := m.opts.validate(); err != nil {
		return err
	}
	m.host, m.log = h, h.Log
	st, err := openStores(h.Store, h.Module)
	if err != nil {
		return err
	}
	m.st = st
	if err := m.load(); err != nil {
		return err
	}
	m.presence = newPresence(m)
	m.ingest = newIngest(m)
	m.cmds = newCommands(m)
	m.jobs = newJobs(m)
	if err := m.jobs.load(); err != nil {
		return err
	}
	if err := m.presence.load(context.Background()); err != nil {
		return err
	}
	h.Server.AddAuthenticator(server.AuthenticatorFunc(m.authenticate))
	m.unwatch = h.Server.Watch(m.presence.event)
	m.shards = make([]chan server.Message, shardCount)
	for i := range m.shards {
		m.shards[i] = make(chan server.Message, 1024)
	}
	m.unsub, err = h.Server.Subscribe(TopicRoot+"+/#", m.route)
	if err != nil {
		return err
	}
	m.register(h.Registry, h.Module)
	app.HandleInfo(h, Version)
	return nil
}

// Start runs the background work: the telemetry writer, the message
// shards, the presence recorder and the retention sweep.
func (m *Module) Start(context.Context) error {
	m.wg.Add(3 + len(m.shards))
	go func() {
		defer m.wg.Done()
		m.ingest.run()
	}()
	for _, ch := range m.shards {
		go func() {
			defer m.wg.Done()
			for {
				select {
				case msg := <-ch:
					m.handle(msg)
				case <-m.stop:
					return
				}
			}
		}()
	}
	go func() {
		defer m.wg.Done()
		m.presence.run(m.stop)
	}()
	go func() {
		defer m.wg.Done()
		t := time.NewTicker(time.Duration(m.opts.SweepInterval))
		defer t.Stop()
		for {
			select {
			case <-m.stop:
				return
			case <-t.C:
				ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
				if err := m.Sweep(ctx); err != nil {
					m.log.Error().Err(err).Msg("device sweep")
				}
				cancel()
			}
		}
	}()
	return nil
}

// Stop ends the background work, writing the telemetry still queued and
// the last-seen times.
func (m *Module) Stop(ctx context.Context) error {
	m.unsub()
	m.unwatch()
	close(m.stop)
	m.wg.Wait()
	m.cmds.stop()
	var errs []error
	if err := m.ingest.drain(ctx); err != nil {
		errs = append(errs, fmt.Errorf("write queued telemetry: %w", err))
	}
	if err := m.presence.flush(ctx, true); err != nil {
		errs = append(errs, fmt.Errorf("write device status: %w", err))
	}
	return errors.Join(errs...)
}

// Stats is a snapshot of the module's counters.
type Stats struct {
	Points        int64 `json:"points"`         // telemetry points stored
	Rejected      int64 `json:"rejected"`       // telemetry payloads refused
	ShadowUpdates int64 `json:"shadow_updates"` // accepted shadow updates
	Commands      int64 `json:"commands"`       // commands sent to devices
}

// Stats returns the module's counters.
func (m *Module) Stats() Stats {
	return Stats{Points: m.stats.points.Load(), Rejected: m.stats.rejected.Load(),
		ShadowUpdates: m.stats.shadowUpdates.Load(), Commands: m.stats.commands.Load()}
}

// route runs on the publisher's goroutine: telemetry goes to the writer,
// everything else to the device's shard. Both wait when full, which slows
// the publishers (back-pressure) rather than dropping.
func (m *Module) route(msg server.Message) {
	if msg.ClientID == "inline" {
		return // the module's own replies and pushes
	}
	id, rest, ok := splitTopic(msg.Topic)
	if !ok {
		return
	}
	if rest == "telemetry" {
		m.ingest.accept(id, msg.Payload)
		return
	}
	if !routed(rest) {
		return
	}
	select {
	case m.shards[shardOf(id)] <- msg:
	case <-m.stop:
	}
}

// routed reports whether the rest of a device topic is something the
// module handles on a shard.
func routed(rest string) bool {
	switch {
	case strings.HasPrefix(rest, "shadow/"), rest == "res", strings.HasPrefix(rest, "res/"), strings.HasPrefix(rest, "jobs/"):
		return !strings.HasSuffix(rest, "/accepted") && !strings.HasSuffix(rest, "/rejected") &&
			!strings.HasSuffix(rest, "/delta") && !strings.HasSuffix(rest, "/documents") && rest != "jobs/notify"
	}
	return false
}

func shardOf(id string) int {
	h := uint32(2166136261)
	for i := 0; i < len(id); i++ {
		h = (h ^ uint32(id[i])) * 16777619
	}
	return int(h % shardCount)
}

// handle processes one device message on its shard.
func (m *Module) handle(msg server.Message) {
	defer func() {
		if p := recover(); p != nil {
			m.log.Error().Str("panic", fmt.Sprint(p)).Str("topic", msg.Topic).Msg("recovered panic handling device message")
		}
	}()
	id, rest, _ := splitTopic(msg.Topic)
	if _, ok := m.device(id); !ok {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	switch {
	case strings.HasPrefix(rest, "shadow/"):
		m.shadowMessage(ctx, id, strings.TrimPrefix(rest, "shadow/"), msg.Payload)
	case rest == "res" || strings.HasPrefix(rest, "res/"):
		m.cmds.answer(ctx, id, strings.TrimPrefix(strings.TrimPrefix(rest, "res"), "/"), msg.CorrelationData, msg.Payload)
	case strings.HasPrefix(rest, "jobs/"):
		m.jobs.message(ctx, id, strings.TrimPrefix(rest, "jobs/"), msg.Payload)
	}
}

// splitTopic splits dev/<id>/<rest>.
func splitTopic(topic string) (id, rest string, ok bool) {
	after, ok := strings.CutPrefix(topic, TopicRoot)
	if !ok {
		return "", "", false
	}
	id, rest, ok = strings.Cut(after, "/")
	return id, rest, ok && id != ""
}

// admin checks that the caller may manage devices.
func (m *Module) admin(ctx context.Context) error {
	c, _ := rpc.CallerFrom(ctx)
	if strings.HasPrefix(c.UserID, userPrefix) || strings.HasPrefix(c.UserID, claimUser) {
		return rpc.Errorf(rpc.CodeForbidden, "%s: %w", c.UserID, ErrNotAdmin)
	}
	if len(m.opts.Admins) > 0 && c.ClientID != "" && !slices.Contains(m.opts.Admins, c.UserID) {
		return rpc.Errorf(rpc.CodeForbidden, "user %q is not in modules.device.admins: %w", c.UserID, ErrNotAdmin)
	}
	return nil
}

// maxIDLen bounds device, job, claim and shadow names.
const maxIDLen = 128

// validName reports whether s can be one topic level and a store key part.
func validName(s string) bool {
	return s != "" && len(s) <= maxIDLen && !strings.ContainsAny(s, "/+#\x00$ ") && s != "." && s != ".."
}

func checkName(what, s string) error {
	if !validName(s) {
		return rpc.Errorf(rpc.CodeBadRequest, "%s %q: want 1..%d characters without / + # $ space: %w", what, s, maxIDLen, ErrInvalid)
	}
	return nil
}

func notFound(what, id string) error {
	return rpc.Errorf(rpc.CodeNotFound, "%s %q: %w", what, id, ErrNotFound)
}

func now() int64 { return time.Now().UnixMilli() }
