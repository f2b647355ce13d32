package app

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/VictoriaMetrics/metrics"
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/rs/zerolog"

	"github.com/colonymq/colony/cluster"
	"github.com/colonymq/colony/rpc"
	"github.com/colonymq/colony/rpc/amqp"
	"github.com/colonymq/colony/server"
	"github.com/colonymq/colony/server/mqttsn"
	"github.com/colonymq/colony/store"
)

// ErrStarted is returned by Use and Start on an App that has already started.
var ErrStarted = errors.New("app already started")

// App is one Colony node: the store, the module RPC, the MQTT gateway, the
// enabled modules and the operations HTTP endpoint, started and stopped as one.
type App struct {
	cfg     Config
	log     zerolog.Logger
	all     []Module // every module offered, in Use order
	running []Module // enabled modules in start order

	mu       sync.Mutex
	started  bool
	stopped  bool
	db       *store.DB
	reg      *rpc.Registry
	local    *rpc.Local
	client   *rpc.Client
	cluster  *amqp.Transport     // nil on a single node
	fed      *cluster.Federation // message federation; nil on a single node
	srv      *server.Server
	sn       *mqttsn.Gateway // nil when both MQTT-SN listeners are off
	ops      *opsServer
	modStats *metrics.Set // the modules' own metrics (Host.Metrics)
	startAt  time.Time
	stopping chan struct{}
}

// New makes an App from cfg, applying defaults. It does no I/O; Start
// validates the config against the modules given to Use.
func New(cfg Config, log zerolog.Logger) *App {
	cfg.SetDefaults()
	return &App{cfg: cfg, log: log, stopping: make(chan struct{})}
}

// Use offers modules to the App. Which of them run is decided by
// modules.enabled (all of them when it is empty). Call before Start.
func (a *App) Use(mods ...Module) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.started {
		return ErrStarted
	}
	for _, m := range mods {
		if m == nil || m.ID() == "" {
			return fmt.Errorf("use module: empty id: %w", ErrConfig)
		}
		if slices.ContainsFunc(a.all, func(o Module) bool { return o.ID() == m.ID() }) {
			return fmt.Errorf("use module %q: registered twice: %w", m.ID(), ErrConfig)
		}
		a.all = append(a.all, m)
	}
	return nil
}

// Config returns the effective configuration (defaults applied).
func (a *App) Config() Config { return a.cfg }

// ModuleIDs returns the ids of all modules offered with Use.
func (a *App) ModuleIDs() []string {
	ids := make([]string, len(a.all))
	for i, m := range a.all {
		ids[i] = m.ID()
	}
	return ids
}

// Start validates the config, opens the store, initialises the enabled
// modules, binds the listeners and starts the modules. On failure everything
// already started is stopped again, in reverse order.
func (a *App) Start(ctx context.Context) (err error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.started {
		return ErrStarted
	}
	if err := a.cfg.Validate(a.ModuleIDs()); err != nil {
		return err
	}
	enabled := a.all
	if len(a.cfg.Modules.Enabled) > 0 {
		enabled = nil
		for _, m := range a.all {
			if slices.Contains(a.cfg.Modules.Enabled, m.ID()) {
				enabled = append(enabled, m)
			}
		}
	}
	mods, err := order(enabled, a.cfg.Cluster.AMQPURL != "")
	if err != nil {
		return err
	}
	for _, m := range a.all {
		table, ok := a.cfg.Modules.Settings[m.ID()]
		if !ok {
			continue
		}
		c, ok := m.(Configurable)
		if !ok {
			return fmt.Errorf("modules.%s: the module takes no settings: %w", m.ID(), ErrConfig)
		}
		if err := DecodeSettings(m.ID(), table, c.Settings()); err != nil {
			return err
		}
	}

	var undo []func(context.Context) error
	defer func() {
		if err == nil {
			return
		}
		for i := len(undo) - 1; i >= 0; i-- {
			if uerr := undo[i](context.WithoutCancel(ctx)); uerr != nil {
				a.log.Error().Err(uerr).Msg("rollback after failed start")
			}
		}
	}()

	dbPath := filepath.Join(a.cfg.Node.DataDir, "colony.db")
	a.db, err = store.Open(dbPath, store.Options{
		Durability:    store.Durability(a.cfg.Store.Durability),
		BatchInterval: time.Duration(a.cfg.Store.BatchInterval),
		Logger:        a.log.With().Str("component", "store").Logger(),
	})
	if err != nil {
		return fmt.Errorf("open store (node.data_dir %q): %w", a.cfg.Node.DataDir, err)
	}
	undo = append(undo, func(context.Context) error { return a.db.Close() })

	a.reg = rpc.NewRegistry()
	limits := map[string]rpc.Limits{}
	for id, o := range a.cfg.RPC.Modules {
		limits[id] = rpc.Limits{Workers: o.Workers, Queue: o.Queue}
	}
	a.local = rpc.NewLocal(a.reg, rpc.LocalOptions{
		Default: rpc.Limits{Workers: a.cfg.RPC.Workers, Queue: a.cfg.RPC.Queue},
		Modules: limits,
		Node:    a.cfg.Node.ID,
		OnPanic: func(module string, v any, stack []byte) {
			a.log.Error().Str("module", module).Str("panic", fmt.Sprint(v)).Str("stack", string(stack)).
				Msg("recovered panic in module handler; caller got an internal error")
		},
	})
	a.client = rpc.NewClient(rpc.ClientOptions{Local: a.local, DefaultTimeout: time.Duration(a.cfg.Limits.RPCTimeout)})

	if c := a.cfg.Cluster; c.AMQPURL != "" {
		// Before the server: its hook must see every subscription, from
		// the modules' Init on.
		a.fed, err = cluster.New(cluster.Options{
			URL: c.AMQPURL, Node: a.cfg.Node.ID, Prefix: c.Prefix,
			Logger: a.log,
		})
		if err != nil {
			return fmt.Errorf("configure message federation (cluster.amqp_url): %w", err)
		}
	}
	a.srv, err = server.New(a.serverOptions())
	if err != nil {
		return fmt.Errorf("configure server: %w", err)
	}
	for _, m := range a.all { // enabled here or not: see Guarded
		if g, ok := m.(Guarded); ok {
			for _, tg := range g.Guards() {
				if err := a.srv.Guard(tg); err != nil {
					return fmt.Errorf("module %s: %w", m.ID(), err)
				}
			}
		}
	}

	a.modStats = metrics.NewSet()
	for _, m := range mods {
		host := &Host{
			Node: a.cfg.Node.ID, Module: m.ID(),
			Log:      a.log.With().Str("module", m.ID()).Logger(),
			Registry: a.reg, RPC: a.client, Server: a.srv, Store: a.db,
			Metrics: a.modStats,
		}
		if err := m.Init(ctx, host); err != nil {
			return fmt.Errorf("init module %s: %w", m.ID(), err)
		}
	}
	if err := a.local.Start(); err != nil {
		return fmt.Errorf("start module rpc: %w", err)
	}
	undo = append(undo, a.local.Stop)

	if c := a.cfg.Cluster; c.AMQPURL != "" {
		a.cluster, err = amqp.New(amqp.Options{
			URL: c.AMQPURL, Node: a.cfg.Node.ID, Prefix: c.Prefix, Registry: a.reg, Local: a.local,
			Prefetch: c.Prefetch, Beat: time.Duration(c.Beat), Version: Version,
			Logger: a.log,
		})
		if err != nil {
			return fmt.Errorf("configure cluster (cluster.amqp_url): %w", err)
		}
		// A broker that is down does not stop the node: it serves its local
		// clients and joins the cluster when RabbitMQ comes back.
		if err := a.cluster.Start(ctx); err != nil {
			return fmt.Errorf("start cluster transport: %w", err)
		}
		undo = append(undo, a.cluster.Close)
		a.client.SetRemote(a.cluster)
	}

	if err := a.srv.Start(); err != nil {
		return a.listenError(err)
	}
	undo = append(undo, a.srv.Shutdown)

	if a.sn, err = a.startMQTTSN(mods); err != nil {
		return a.listenError(err)
	}
	if a.sn != nil {
		undo = append(undo, a.sn.Close)
	}

	if a.fed != nil {
		// After the engine has restored stored sessions, whose
		// subscriptions the federation binds too. Like the RPC transport,
		// it does not fail when RabbitMQ is down.
		if err := a.fed.Start(ctx, a.srv); err != nil {
			return fmt.Errorf("start message federation: %w", err)
		}
		undo = append(undo, a.fed.Close)
	}

	for _, m := range mods {
		if err := m.Start(ctx); err != nil {
			return fmt.Errorf("start module %s: %w", m.ID(), err)
		}
		a.running = append(a.running, m)
		undo = append(undo, m.Stop)
	}

	if a.cfg.Listeners.HTTP != Off {
		a.ops, err = startOps(a, a.cfg.Listeners.HTTP)
		if err != nil {
			return a.listenError(err)
		}
	}
	a.started = true
	a.startAt = time.Now()
	ids := make([]string, len(mods))
	for i, m := range mods {
		ids[i] = m.ID()
	}
	a.log.Info().Str("node", a.cfg.Node.ID).Strs("modules", ids).Str("data", dbPath).
		Str("mqtt", a.Addr("mqtt")).Str("ws", a.Addr("ws")).Str("tls", a.Addr("tls")).Str("http", a.Addr("http")).
		Str("mqttsn", a.Addr(mqttsn.ListenerUDP)).Str("mqttsn_dtls", a.Addr(mqttsn.ListenerDTLS)).
		Msg("colony started")
	return nil
}

// listenError turns a bind failure into one line naming the config key to change.
func (a *App) listenError(err error) error {
	var le *server.ListenError
	if !errors.As(err, &le) {
		return err
	}
	for _, o := range Overrides {
		if o.Key == "listeners."+le.Listener {
			return fmt.Errorf("%w (change %s in the config file, or use --%s / %s)", err, o.Key, o.Flag, o.Env)
		}
	}
	return err
}

func (a *App) serverOptions() server.Options {
	c := a.cfg
	o := server.Options{
		Node:      c.Node.ID,
		Listeners: server.Listeners{MQTT: c.Listeners.MQTT, TLS: c.Listeners.TLS, WS: c.Listeners.WS},
		TLS:       server.TLS{CertFile: c.TLS.CertFile, KeyFile: c.TLS.KeyFile, ClientCAFile: c.TLS.ClientCAFile},
		Auth:      server.Auth{AllowAnonymous: c.Auth.AllowAnonymous, PasswordFile: c.Auth.PasswordFile, ACLFile: c.Auth.ACLFile},
		Limits: server.Limits{
			MaxPacketSize:     c.Limits.MaxPacketSize,
			MaxConnections:    c.Limits.MaxConnections,
			ConnectTimeout:    time.Duration(c.Limits.ConnectTimeout),
			MaxInflight:       c.Limits.MaxInflight,
			MaxSessionQueue:   c.Limits.MaxSessionQueue,
			ReceiveMaximum:    c.Limits.ReceiveMaximum,
			ClientWriteQueue:  c.Limits.ClientWriteQueue,
			MaxSessionExpiry:  uint32(time.Duration(c.Limits.MaxSessionExpiry) / time.Second),
			RPCTimeout:        time.Duration(c.Limits.RPCTimeout),
			RPCConcurrency:    c.Limits.RPCConcurrency,
			SlowClientTimeout: time.Duration(c.Limits.SlowClientTimeout),
			MaxTopicLevels:    c.Limits.MaxTopicLevels,
			MaxSubscriptions:  c.Limits.MaxSubscriptions,
			PublishRate:       float64(c.Limits.PublishRate),
			PublishBurst:      c.Limits.PublishBurst,
			MaxKeepalive:      time.Duration(c.Limits.MaxKeepalive),
		},
		SingleLogin: c.Sessions.SingleLogin,
		MQANTTopics: c.Gateway.MQANTTopics,
		RPC:         a.client,
		Serves:      a.reg.HasModule,
		Hooks:       a.hooks(),
		Logger:      a.log,
	}
	if a.fed != nil { // never a typed nil in the interface
		o.Cluster = a.fed
	}
	o.Gateways = map[string]string{}
	if c.MQTTSN.Listen != Off {
		o.Gateways[mqttsn.ListenerUDP] = c.MQTTSN.Listen
	}
	if c.MQTTSN.DTLSListen != Off {
		o.Gateways[mqttsn.ListenerDTLS] = c.MQTTSN.DTLSListen
	}
	return o
}

// startMQTTSN starts the MQTT-SN gateway when a listener of it is on;
// mods are the enabled modules, one of which may serve the PSKs.
func (a *App) startMQTTSN(mods []Module) (*mqttsn.Gateway, error) {
	c := a.cfg.MQTTSN
	if c.Listen == Off && c.DTLSListen == Off {
		return nil, nil
	}
	o := mqttsn.Options{
		Listen: c.Listen, DTLSListen: c.DTLSListen, GatewayID: c.GatewayID,
		Advertise: time.Duration(c.Advertise), AdvertiseAddr: c.AdvertiseAddr,
		CertFile: c.CertFile, KeyFile: c.KeyFile, ClientCAFile: c.ClientCAFile,
		RetryInterval: time.Duration(c.RetryInterval), MaxRetries: c.MaxRetries, QueueSize: c.Queue, Window: c.Window,
		HandshakeTimeout: time.Duration(c.HandshakeTimeout), Logger: a.log,
	}
	if c.AdvertiseAddr == "" {
		o.Advertise = 0
	}
	if len(c.Predefined) > 0 {
		o.Predefined = map[uint16]string{}
		for id, name := range c.Predefined {
			n, err := strconv.ParseUint(id, 10, 16)
			if err != nil {
				return nil, fmt.Errorf("mqttsn.predefined %q: %w", id, ErrConfig)
			}
			o.Predefined[uint16(n)] = name
		}
	}
	var file *mqttsn.PSKFile
	if c.PSKFile != "" {
		var err error
		if file, err = mqttsn.LoadPSKFile(c.PSKFile); err != nil {
			return nil, fmt.Errorf("mqttsn.psk_file: %w", err)
		}
		o.PSK = file
	}
	if c.PSKFrom != "" {
		src, err := pskSource(mods, c.PSKFrom)
		if err != nil {
			return nil, err
		}
		o.PSK = modulePSK(src, file)
	}
	g, err := mqttsn.New(a.srv, o)
	if err != nil {
		return nil, fmt.Errorf("configure mqtt-sn gateway: %w", err)
	}
	if err := g.Start(); err != nil {
		return nil, err
	}
	return g, nil
}

// MQTTSN returns the MQTT-SN gateway, nil when its listeners are off.
func (a *App) MQTTSN() *mqttsn.Gateway { return a.sn }

// hooks returns the engine hooks beyond the server's own: the store's and,
// in a cluster, message federation's.
func (a *App) hooks() []mqtt.Hook {
	hs := []mqtt.Hook{a.db.MQTTHook()}
	if a.fed != nil {
		hs = append(hs, a.fed.Hook())
	}
	return hs
}

// Stop shuts the node down gracefully: the ops endpoint reports unhealthy,
// client requests already executing finish and answer, clients are
// disconnected, queued module calls finish, modules stop in reverse order and
// the store is flushed and closed. ctx bounds the whole sequence.
func (a *App) Stop(ctx context.Context) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if !a.started || a.stopped {
		return nil
	}
	a.stopped = true
	close(a.stopping)
	var errs []error
	if a.sn != nil {
		// Before the server: devices get DISCONNECT and their broker
		// sessions end the gateway's way.
		if err := a.sn.Close(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	if err := a.srv.Shutdown(ctx); err != nil {
		errs = append(errs, fmt.Errorf("stop server: %w", err))
	}
	if a.fed != nil {
		// After the server: the wills of the clients it disconnected
		// still reach the other nodes.
		if err := a.fed.Close(ctx); err != nil {
			errs = append(errs, fmt.Errorf("stop message federation: %w", err))
		}
	}
	if a.cluster != nil {
		// Before the local transport: remote calls being served here finish
		// and answer, and peers hear this node leave.
		if err := a.cluster.Close(ctx); err != nil {
			errs = append(errs, fmt.Errorf("stop cluster transport: %w", err))
		}
	}
	if err := a.local.Stop(ctx); err != nil {
		errs = append(errs, fmt.Errorf("stop module rpc: %w", err))
	}
	for i := len(a.running) - 1; i >= 0; i-- {
		m := a.running[i]
		if err := m.Stop(ctx); err != nil {
			errs = append(errs, fmt.Errorf("stop module %s: %w", m.ID(), err))
		}
	}
	if a.ops != nil {
		if err := a.ops.close(ctx); err != nil {
			errs = append(errs, fmt.Errorf("stop http: %w", err))
		}
	}
	if err := a.db.Close(); err != nil {
		errs = append(errs, fmt.Errorf("close store: %w", err))
	}
	a.log.Info().Msg("colony stopped")
	return errors.Join(errs...)
}

// Run starts the App, blocks until ctx is done (e.g. on SIGINT/SIGTERM), then
// stops it, allowing grace for the shutdown.
func (a *App) Run(ctx context.Context, grace time.Duration) error {
	if err := a.Start(ctx); err != nil {
		return err
	}
	<-ctx.Done()
	a.log.Info().Dur("grace", grace).Msg("shutting down")
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), grace)
	defer cancel()
	return a.Stop(sctx)
}

// Addr returns the bound address of a listener ("mqtt", "tls", "ws", "http",
// "mqttsn", "mqttsn-dtls"), "" when off.
func (a *App) Addr(name string) string {
	if name == "http" {
		if a.ops == nil {
			return ""
		}
		return a.ops.ln.Addr().String()
	}
	if name == mqttsn.ListenerUDP || name == mqttsn.ListenerDTLS {
		if a.sn == nil {
			return ""
		}
		return a.sn.Addr(name)
	}
	if a.srv == nil {
		return ""
	}
	return a.srv.Addr(name)
}

// Cluster returns the RabbitMQ transport, nil on a single node.
func (a *App) Cluster() *amqp.Transport { return a.cluster }

// Federation returns message federation, nil on a single node.
func (a *App) Federation() *cluster.Federation { return a.fed }

// Server returns the MQTT gateway (nil before Start).
func (a *App) Server() *server.Server { return a.srv }

// RPC returns the module RPC client (nil before Start).
func (a *App) RPC() *rpc.Client { return a.client }

// Store returns the store (nil before Start).
func (a *App) Store() *store.DB { return a.db }

// opsServer serves /healthz and /metrics.
type opsServer struct {
	ln  net.Listener
	srv *http.Server
}

func (o *opsServer) close(ctx context.Context) error { return o.srv.Shutdown(ctx) }
