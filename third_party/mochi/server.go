// SPDX-License-Identifier: MIT
// SPDX-FileCopyrightText: 2022 mochi-mqtt, mochi-co
// SPDX-FileContributor: mochi-co

// Package mqtt provides a high performance, fully compliant MQTT v5 broker server with v3.1.1 backward compatibility.
package mqtt

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"net"
	"os"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mochi-mqtt/server/v2/hooks/storage"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/mochi-mqtt/server/v2/system"

	"log/slog"
)

const (
	Version                       = "2.7.9" // the current server version.
	defaultSysTopicInterval int64 = 1       // the interval between $SYS topic publishes
	LocalListener                 = "local"
	InlineClientId                = "inline"
)

var (
	// Deprecated: Use NewDefaultServerCapabilities to avoid data race issue.
	DefaultServerCapabilities = NewDefaultServerCapabilities()

	ErrListenerIDExists       = errors.New("listener id already exists")                               // a listener with the same id already exists
	ErrConnectionClosed       = errors.New("connection not open")                                      // connection is closed
	ErrInlineClientNotEnabled = errors.New("please set Options.InlineClient=true to use this feature") // inline client is not enabled by default
	ErrOptionsUnreadable      = errors.New("unable to read options from bytes")
)

// Capabilities indicates the capabilities and features provided by the server.
type Capabilities struct {
	MaximumClients               int64           `yaml:"maximum_clients" json:"maximum_clients"`                                 // maximum number of connected clients
	MaximumMessageExpiryInterval int64           `yaml:"maximum_message_expiry_interval" json:"maximum_message_expiry_interval"` // maximum message expiry if message expiry is 0 or over
	MaximumClientWritesPending   int32           `yaml:"maximum_client_writes_pending" json:"maximum_client_writes_pending"`     // maximum number of pending message writes for a client
	MaximumSessionExpiryInterval uint32          `yaml:"maximum_session_expiry_interval" json:"maximum_session_expiry_interval"` // maximum number of seconds to keep disconnected sessions
	MaximumPacketSize            uint32          `yaml:"maximum_packet_size" json:"maximum_packet_size"`                         // maximum packet size, no limit if 0
	maximumPacketID              uint32          // unexported, used for testing only
	ReceiveMaximum               uint16          `yaml:"receive_maximum" json:"receive_maximum"`                   // maximum number of concurrent qos messages per client
	MaximumInflight              uint16          `yaml:"maximum_inflight" json:"maximum_inflight"`                 // maximum number of qos > 0 messages can be stored, 0(=8192)-65535
	TopicAliasMaximum            uint16          `yaml:"topic_alias_maximum" json:"topic_alias_maximum"`           // maximum topic alias value
	SharedSubAvailable           byte            `yaml:"shared_sub_available" json:"shared_sub_available"`         // support of shared subscriptions
	MinimumProtocolVersion       byte            `yaml:"minimum_protocol_version" json:"minimum_protocol_version"` // minimum supported mqtt version
	Compatibilities              Compatibilities `yaml:"compatibilities" json:"compatibilities"`                   // version compatibilities the server provides
	MaximumQos                   byte            `yaml:"maximum_qos" json:"maximum_qos"`                           // maximum qos value available to clients
	RetainAvailable              byte            `yaml:"retain_available" json:"retain_available"`                 // support of retain messages
	WildcardSubAvailable         byte            `yaml:"wildcard_sub_available" json:"wildcard_sub_available"`     // support of wildcard subscriptions
	SubIDAvailable               byte            `yaml:"sub_id_available" json:"sub_id_available"`                 // support of subscription identifiers
	// COLONY PATCH P1: how long a publisher may wait for room in a slow
	// subscriber's queue (or in-flight window) before that subscriber counts
	// as stalled: QoS 0 is then dropped (counted) and a QoS 1/2 subscriber is
	// disconnected, its message kept in-flight for its session. 0 never waits.
	SlowClientPatience time.Duration `yaml:"-" json:"-"`
	// COLONY PATCH P9: QoS 1/2 messages kept for a disconnected persistent
	// session; MaximumInflight is then only the window of a connected
	// client. 0 means MaximumInflight (upstream behaviour).
	MaximumSessionQueue int `yaml:"-" json:"-"`
	// COLONY PATCH P15: limits against hostile clients. 0 means no limit.
	MaximumTopicLevels         int     `yaml:"-" json:"-"` // levels of a topic name or filter; more: 0x90 / 0x8F
	MaximumClientSubscriptions int     `yaml:"-" json:"-"` // filters one client holds; more: SUBACK 0x97
	MaximumPublishRate         float64 `yaml:"-" json:"-"` // PUBLISH packets per second per client; faster ones wait
	PublishBurst               int     `yaml:"-" json:"-"` // publishes a client may send at once above the rate
}

// NewDefaultServerCapabilities defines the default features and capabilities provided by the server.
func NewDefaultServerCapabilities() *Capabilities {
	return &Capabilities{
		MaximumClients:               math.MaxInt64,  // maximum number of connected clients
		MaximumMessageExpiryInterval: 60 * 60 * 24,   // maximum message expiry if message expiry is 0 or over
		MaximumClientWritesPending:   1024 * 8,       // maximum number of pending message writes for a client
		MaximumSessionExpiryInterval: math.MaxUint32, // maximum number of seconds to keep disconnected sessions
		MaximumPacketSize:            0,              // no maximum packet size
		maximumPacketID:              math.MaxUint16,
		ReceiveMaximum:               1024,           // maximum number of concurrent qos messages per client
		MaximumInflight:              1024 * 8,       // maximum number of qos > 0 messages can be stored
		TopicAliasMaximum:            math.MaxUint16, // maximum topic alias value
		SharedSubAvailable:           1,              // shared subscriptions are available
		MinimumProtocolVersion:       3,              // minimum supported mqtt version (3.0.0)
		MaximumQos:                   2,              // maximum qos value available to clients
		RetainAvailable:              1,              // retain messages is available
		WildcardSubAvailable:         1,              // wildcard subscriptions are available
		SubIDAvailable:               1,              // subscription identifiers are available
	}
}

// Compatibilities provides flags for using compatibility modes.
type Compatibilities struct {
	ObscureNotAuthorized       bool `yaml:"obscure_not_authorized" json:"obscure_not_authorized"`                 // return unspecified errors instead of not authorized
	PassiveClientDisconnect    bool `yaml:"passive_client_disconnect" json:"passive_client_disconnect"`           // don't disconnect the client forcefully after sending disconnect packet (paho - spec violation)
	AlwaysReturnResponseInfo   bool `yaml:"always_return_response_info" json:"always_return_response_info"`       // always return response info (useful for testing)
	RestoreSysInfoOnRestart    bool `yaml:"restore_sys_info_on_restart" json:"restore_sys_info_on_restart"`       // restore system info from store as if server never stopped
	NoInheritedPropertiesOnAck bool `yaml:"no_inherited_properties_on_ack" json:"no_inherited_properties_on_ack"` // don't allow inherited user properties on ack (paho - spec violation)
}

// Options contains configurable options for the server.
type Options struct {
	// Listeners specifies any listeners which should be dynamically added on serve. Used when setting listeners by config.
	Listeners []listeners.Config `yaml:"listeners" json:"listeners"`

	// Hooks specifies any hooks which should be dynamically added on serve. Used when setting hooks by config.
	Hooks []HookLoadConfig `yaml:"hooks" json:"hooks"`

	// Capabilities defines the server features and behaviour. If you only wish to modify
	// several of these values, set them explicitly - e.g.
	// 	server.Options.Capabilities.MaximumClientWritesPending = 16 * 1024
	Capabilities *Capabilities `yaml:"capabilities" json:"capabilities"`

	// ClientNetWriteBufferSize specifies the size of the client *bufio.Writer write buffer.
	ClientNetWriteBufferSize int `yaml:"client_net_write_buffer_size" json:"client_net_write_buffer_size"`

	// ClientNetReadBufferSize specifies the size of the client *bufio.Reader read buffer.
	ClientNetReadBufferSize int `yaml:"client_net_read_buffer_size" json:"client_net_read_buffer_size"`

	// Logger specifies a custom configured implementation of log/slog to override
	// the servers default logger configuration. If you wish to change the log level,
	// of the default logger, you can do so by setting:
	// server := mqtt.New(nil)
	// level := new(slog.LevelVar)
	// server.Slog = slog.New(slog.NewTextHandler(os.Stdout, &slog.HandlerOptions{
	// 	Level: level,
	// }))
	// level.Set(slog.LevelDebug)
	Logger *slog.Logger `yaml:"-" json:"-"`

	// SysTopicResendInterval specifies the interval between $SYS topic updates in seconds.
	SysTopicResendInterval int64 `yaml:"sys_topic_resend_interval" json:"sys_topic_resend_interval"`

	// Enable Inline client to allow direct subscribing and publishing from the parent codebase,
	// with negligible performance difference (disabled by default to prevent confusion in statistics).
	InlineClient bool `yaml:"inline_client" json:"inline_client"`
}

// Server is an MQTT broker server. It should be created with server.New()
// in order to ensure all the internal fields are correctly populated.
type Server struct {
	Options      *Options             // configurable server options
	Listeners    *listeners.Listeners // listeners are network interfaces which listen for new connections
	Clients      *Clients             // clients known to the broker
	Topics       *TopicsIndex         // an index of topic filter subscriptions and retained messages
	Info         *system.Info         // values about the server commonly known as $SYS topics
	loop         *loop                // loop contains tickers for the system event loop
	done         chan bool            // indicate that the server is ending
	Log          *slog.Logger         // minimal no-alloc logger
	hooks        *Hooks               // hooks contains hooks for extra functionality such as auth and persistent storage
	inlineClient *Client              // inlineClient is a special client used for inline subscriptions and inline Publish
	Refused      Refusals             // COLONY PATCH P15: what limits refused
	idLocks      [64]sync.Mutex       // COLONY PATCH P48: see lockClientID
}

// loop contains interval tickers for the system events loop.
type loop struct {
	sysTopics      *time.Ticker     // interval ticker for sending updating $SYS topics
	clientExpiry   *time.Ticker     // interval ticker for cleaning expired clients
	inflightExpiry *time.Ticker     // interval ticker for cleaning up expired inflight messages
	retainedExpiry *time.Ticker     // interval ticker for cleaning retained messages
	willDelaySend  *time.Ticker     // interval ticker for sending Will Messages with a delay
	willDelayed    *packets.Packets // activate LWT packets which will be sent after a delay
}

// ops contains server values which can be propagated to other structs.
type ops struct {
	options *Options     // a pointer to the server options and capabilities, for referencing in clients
	info    *system.Info // pointers to server system info
	hooks   *Hooks       // pointer to the server hooks
	log     *slog.Logger // a structured logger for the client
}

// New returns a new instance of mochi mqtt broker. Optional parameters
// can be specified to override some default settings (see Options).
func New(opts *Options) *Server {
	if opts == nil {
		opts = new(Options)
	}

	opts.ensureDefaults()

	s := &Server{
		done:      make(chan bool),
		Clients:   NewClients(),
		Topics:    NewTopicsIndex(),
		Listeners: listeners.New(),
		loop: &loop{
			sysTopics:      time.NewTicker(time.Second * time.Duration(opts.SysTopicResendInterval)),
			clientExpiry:   time.NewTicker(time.Second),
			inflightExpiry: time.NewTicker(time.Second),
			retainedExpiry: time.NewTicker(time.Second),
			willDelaySend:  time.NewTicker(time.Second),
			willDelayed:    packets.NewPackets(),
		},
		Options: opts,
		Info: &system.Info{
			Version: Version,
			Started: time.Now().Unix(),
		},
		Log: opts.Logger,
		hooks: &Hooks{
			Log: opts.Logger,
		},
	}

	if s.Options.InlineClient {
		s.inlineClient = s.NewClient(nil, LocalListener, InlineClientId, true)
		s.Clients.Add(s.inlineClient)
	}

	return s
}

// ensureDefaults ensures that the server starts with sane default values, if none are provided.
func (o *Options) ensureDefaults() {
	if o.Capabilities == nil {
		o.Capabilities = NewDefaultServerCapabilities()
	}

	o.Capabilities.maximumPacketID = math.MaxUint16 // spec maximum is 65535

	if o.Capabilities.MaximumInflight == 0 {
		o.Capabilities.MaximumInflight = 1024 * 8
	}

	if o.SysTopicResendInterval == 0 {
		o.SysTopicResendInterval = defaultSysTopicInterval
	}

	if o.ClientNetWriteBufferSize == 0 {
		o.ClientNetWriteBufferSize = 1024 * 2
	}

	if o.ClientNetReadBufferSize == 0 {
		o.ClientNetReadBufferSize = 1024 * 2
	}

	if o.Logger == nil {
		log := slog.New(slog.NewTextHandler(os.Stdout, nil))
		o.Logger = log
	}
}

// NewClient returns a new Client instance, populated with all the required values and
// references to be used with the server. If you are using this client to directly publish
// messages from the embedding application, set the inline flag to true to bypass ACL and
// topic validation checks.
func (s *Server) NewClient(c net.Conn, listener string, id string, inline bool) *Client {
	cl := newClient(c, &ops{ // [MQTT-3.1.2-6] implicit
		options: s.Options,
		info:    s.Info,
		hooks:   s.hooks,
		log:     s.Log,
	})

	cl.ID = id
	cl.Net.Listener = listener

	if inline { // inline clients bypass acl and some validity checks.
		cl.Net.Inline = true
		// By default, we don't want to restrict developer publishes,
		// but if you do, reset this after creating inline client.
		cl.State.Inflight.ResetReceiveQuota(math.MaxInt32)
	}

	return cl
}

// AddHook attaches a new Hook to the server. Ideally, this should be called
// before the server is started with s.Serve().
func (s *Server) AddHook(hook Hook, config any) error {
	nl := s.Log.With("hook", hook.ID())
	hook.SetOpts(nl, &HookOptions{
		Capabilities: s.Options.Capabilities,
	})

	s.Log.Info("added hook", "hook", hook.ID())
	return s.hooks.Add(hook, config)
}

// AddHooksFromConfig adds hooks to the server which were specified in the hooks config (usually from a config file).
// New built-in hooks should be added to this list.
func (s *Server) AddHooksFromConfig(hooks []HookLoadConfig) error {
	for _, h := range hooks {
		if err := s.AddHook(h.Hook, h.Config); err != nil {
			return err
		}
	}
	return nil
}

// AddListener adds a new network listener to the server, for receiving incoming client connections.
func (s *Server) AddListener(l listeners.Listener) error {
	if _, ok := s.Listeners.Get(l.ID()); ok {
		return ErrListenerIDExists
	}

	nl := s.Log.With(slog.String("listener", l.ID()))
	err := l.Init(nl)
	if err != nil {
		return err
	}

	s.Listeners.Add(l)

	s.Log.Info("attached listener", "id", l.ID(), "protocol", l.Protocol(), "address", l.Address())
	return nil
}

// AddListenersFromConfig adds listeners to the server which were specified in the listeners config (usually from a config file).
// New built-in listeners should be added to this list.
func (s *Server) AddListenersFromConfig(configs []listeners.Config) error {
	for _, conf := range configs {
		var l listeners.Listener
		switch strings.ToLower(conf.Type) {
		case listeners.TypeTCP:
			l = listeners.NewTCP(conf)
		case listeners.TypeWS:
			l = listeners.NewWebsocket(conf)
		case listeners.TypeUnix:
			l = listeners.NewUnixSock(conf)
		case listeners.TypeHealthCheck:
			l = listeners.NewHTTPHealthCheck(conf)
		case listeners.TypeSysInfo:
			l = listeners.NewHTTPStats(conf, s.Info)
		case listeners.TypeMock:
			l = listeners.NewMockListener(conf.ID, conf.Address)
		default:
			s.Log.Error("listener type unavailable by config", "listener", conf.Type)
			continue
		}
		if err := s.AddListener(l); err != nil {
			return err
		}
	}
	return nil
}

// Serve starts the event loops responsible for establishing client connections
// on all attached listeners, publishing the system topics, and starting all hooks.
func (s *Server) Serve() error {
	s.Log.Info("mochi mqtt starting", "version", Version)
	defer s.Log.Info("mochi mqtt server started")

	if len(s.Options.Listeners) > 0 {
		err := s.AddListenersFromConfig(s.Options.Listeners)
		if err != nil {
			return err
		}
	}

	if len(s.Options.Hooks) > 0 {
		err := s.AddHooksFromConfig(s.Options.Hooks)
		if err != nil {
			return err
		}
	}

	if s.hooks.Provides(
		StoredClients,
		StoredInflightMessages,
		StoredRetainedMessages,
		StoredSubscriptions,
		StoredSysInfo,
	) {
		err := s.readStore()
		if err != nil {
			return err
		}
	}

	go s.eventLoop()                            // spin up event loop for issuing $SYS values and closing server.
	s.Listeners.ServeAll(s.EstablishConnection) // start listening on all listeners.
	s.publishSysTopics()                        // begin publishing $SYS system values.
	s.hooks.OnStarted()

	return nil
}

// eventLoop loops forever, running various server housekeeping methods at different intervals.
func (s *Server) eventLoop() {
	s.Log.Debug("system event loop started")
	defer s.Log.Debug("system event loop halted")

	for {
		select {
		case <-s.done:
			s.loop.sysTopics.Stop()
			return
		case <-s.loop.sysTopics.C:
			s.publishSysTopics()
		case <-s.loop.clientExpiry.C:
			s.clearExpiredClients(time.Now().Unix())
		case <-s.loop.retainedExpiry.C:
			s.clearExpiredRetainedMessages(time.Now().Unix())
		case <-s.loop.willDelaySend.C:
			s.sendDelayedLWT(time.Now().Unix())
		case <-s.loop.inflightExpiry.C:
			s.clearExpiredInflights(time.Now().Unix())
		}
	}
}

// EstablishConnection establishes a new client when a listener accepts a new connection.
func (s *Server) EstablishConnection(listener string, c net.Conn) error {
	cl := s.NewClient(c, listener, "", false)
	return s.attachClient(cl, listener)
}

// attachClient validates an incoming client connection and if viable, attaches the client
// to the server, performs session housekeeping, and reads incoming packets.
func (s *Server) attachClient(cl *Client, listener string) error {
	return s.attachClientWith(cl, listener, nil)
}

// attachClientWith is attachClient for a listener that lets the engine
// choose the goroutines serving the connection (spawn non-nil, see
// EstablishParkable). COLONY PATCH P16: the CONNECT handling and the reading
// of what follows are split (connectClient, serveClient), so that the
// reading can go on, or resume after a park, on a goroutine of its own.
func (s *Server) attachClientWith(cl *Client, listener string, spawn SpawnFn) error {
	s.Listeners.ClientsWg.Add(1)
	connected := false
	defer func() {
		if !connected { // serveClient does this once the client is connected
			cl.Stop(nil) // COLONY PATCH P1: no WriteLoop goroutine; the outbound queue starts its writer on demand
			s.Listeners.ClientsWg.Done()
		}
	}()

	if err := s.connectClient(cl, listener); err != nil {
		return err
	}
	connected = true

	if spawn != nil && s.parkingFor(cl, spawn) == nil {
		// The CONNECT handling grew this goroutine's stack (16 KB), and the
		// runtime would keep most of it for the life of the connection.
		spawn(func() error { return s.serveClient(cl, spawn, false) })
		return ErrParked
	}
	return s.serveClient(cl, spawn, false)
}

// connectClient handles the CONNECT packet: validation, authentication,
// session, CONNACK. Once it returns nil the client counts as connected.
func (s *Server) connectClient(cl *Client, listener string) error {
	pk, err := s.readConnectionPacket(cl)
	if err != nil {
		s.countConnectError(err) // COLONY PATCH P15
		var code packets.Code
		if pk.FixedHeader.Type == packets.Connect && pk.ProtocolVersion == 5 && errors.As(err, &code) && code.Code >= packets.ErrUnspecifiedError.Code {
			// COLONY PATCH P15: an MQTT 5 client learns why its CONNECT was refused [MQTT-4.13].
			cl.Properties.ProtocolVersion = 5
			_ = s.SendConnack(cl, code, false, nil) // closing anyway
		}
		return fmt.Errorf("read connection: %w", err)
	}

	cl.ParseConnect(listener, pk)
	if atomic.LoadInt64(&s.Info.ClientsConnected) >= s.Options.Capabilities.MaximumClients {
		s.Refused.ConnectionsRefused.Add(1) // COLONY PATCH P15
		if cl.Properties.ProtocolVersion < 5 {
			s.SendConnack(cl, packets.ErrServerUnavailable, false, nil)
		} else {
			s.SendConnack(cl, packets.ErrServerBusy, false, nil)
		}

		return packets.ErrServerBusy
	}

	code := s.validateConnect(cl, pk) // [MQTT-3.1.4-1] [MQTT-3.1.4-2]
	if code != packets.CodeSuccess {
		if err := s.SendConnack(cl, code, false, nil); err != nil {
			return fmt.Errorf("invalid connection send ack: %w", err)
		}
		return code // [MQTT-3.2.2-7] [MQTT-3.1.4-6]
	}

	err = s.hooks.OnConnect(cl, pk)
	if err != nil {
		return err
	}

	cl.refreshDeadline(cl.State.Keepalive)
	if !s.hooks.OnConnectAuthenticate(cl, pk) { // [MQTT-3.1.4-2]
		err := s.SendConnack(cl, packets.ErrBadUsernameOrPassword, false, nil)
		if err != nil {
			return fmt.Errorf("invalid connection send ack: %w", err)
		}

		return packets.ErrBadUsernameOrPassword
	}

	atomic.AddInt64(&s.Info.ClientsConnected, 1)
	connected := false
	defer func() {
		if !connected { // serveClient counts it down once the client is connected
			atomic.AddInt64(&s.Info.ClientsConnected, -1)
		}
	}()

	s.hooks.OnSessionEstablish(cl, pk)

	// COLONY PATCH P23: deliveries that find the client from here on wait
	// until its CONNACK (and any resent in-flight messages) went first.
	cl.State.outbound.hold()
	defer cl.State.outbound.release()

	// COLONY PATCH P48: one client id's CONNECTs take over in turn; see
	// lockClientID.
	unlock := s.lockClientID(cl.ID)
	sessionPresent := s.inheritClientSession(pk, cl)
	s.Clients.Add(cl) // [MQTT-4.1.0-1]
	unlock()

	err = s.SendConnack(cl, code, sessionPresent, nil) // [MQTT-3.1.4-5] [MQTT-3.2.0-1] [MQTT-3.2.0-2] &[MQTT-3.14.0-1]
	if err != nil {
		return fmt.Errorf("ack connection packet: %w", err)
	}

	// COLONY PATCH P38: a will waiting for its delay is cancelled by a
	// connection that resumes its session [MQTT-3.1.3-9]; one that starts a
	// new session ended the will's session, so the will goes out now
	// [MQTT-3.1.2-8]. Upstream cancelled it either way.
	if will, ok := s.loop.willDelayed.TakeIf(cl.ID, nil); ok && !sessionPresent {
		s.publishWill(will, s.Options.Capabilities.SlowClientPatience)
	}

	if sessionPresent {
		err = cl.ResendInflightMessages(true)
		if err != nil {
			return fmt.Errorf("resend inflight: %w", err)
		}
		if cl.State.Inflight.nheld.Load() > 0 {
			s.sendHeld(cl) // COLONY PATCH P26: held since the client could be found, behind the resend
		}
	}

	s.hooks.OnSessionEstablished(cl, pk)
	connected = true
	return nil
}

// serveClient reads and handles a connected client's packets until the
// connection ends, then disconnects the client. It returns ErrParked, and
// leaves the client as it is, when the connection was parked (resumed: it
// is served again after a park, see readClient).
func (s *Server) serveClient(cl *Client, spawn SpawnFn, resumed bool) (err error) {
	defer func() {
		if err == ErrParked {
			return
		}
		cl.Net.rbuf.reset()
		atomic.AddInt64(&s.Info.ClientsConnected, -1)
		cl.Stop(nil)
		s.Listeners.ClientsWg.Done()
	}()

	err = s.readClient(cl, spawn, resumed)
	if err == ErrParked {
		return err
	}
	if err != nil {
		s.countReadError(cl, err) // COLONY PATCH P15: count, and tell an MQTT 5 client why
		s.sendLWT(cl)
		cl.Stop(err)
	} else {
		cl.Properties.Will = Will{} // [MQTT-3.14.4-3] [MQTT-3.1.2-10]
	}
	s.Log.Debug("client disconnected", "error", err, "client", cl.ID, "remote", cl.Net.Remote, "listener", cl.Net.Listener)

	expire := (cl.Properties.ProtocolVersion == 5 && cl.Properties.Props.SessionExpiryInterval == 0) || (cl.Properties.ProtocolVersion < 5 && cl.Properties.Clean)
	s.hooks.OnDisconnect(cl, err, expire)

	if expire && !cl.IsTakenOver() {
		cl.ClearInflights()
		s.UnsubscribeClient(cl)
		// COLONY PATCH P48: only if still this client; a connection that
		// took the id over just after the check above is in its place.
		s.Clients.deleteIf(cl.ID, cl) // [MQTT-4.1.0-2] ![MQTT-3.1.2-23]
	}

	return err
}

// readClient reads incoming packets and hands them to receivePacket, like
// Client.Read. A connection the engine may park (parkingFor) is parked when
// nothing more has arrived, and readClient returns ErrParked. A resumed
// connection reads at once: it was woken because bytes arrived, its
// deadline passed or it was closed, and the read says which. After that it
// waits parkLinger for more before it parks again, so that a client in a
// conversation (requests and replies, QoS flows, a steady stream) is served
// as before, without a park and a wake-up per packet; the goroutine that
// ran CONNECT parks at once, to give back the stack CONNECT grew.
func (s *Server) readClient(cl *Client, spawn SpawnFn, resumed bool) error {
	p := s.parkingFor(cl, spawn)
	var deadline time.Time
	if resumed && p != nil {
		if d := p.deadline.Load(); d != 0 {
			deadline = monoStart.Add(time.Duration(d))
		}
	}
	var fh packets.FixedHeader
	linger, lingers := false, resumed
	for {
		if !resumed {
			if cl.Closed() {
				return nil
			}
			deadline = cl.refreshDeadline(cl.State.Keepalive)
		}
		resumed = false

		if p != nil && cl.Net.rbuf.buffered() == 0 {
			ready := true
			if linger {
				var err error
				if ready, err = cl.Net.rbuf.readWithin(time.Now().Add(parkLinger), deadline); err != nil {
					return err
				}
			} else {
				ready = cl.Net.rbuf.readNow(p.rc)
			}
			if !ready {
				cl.Net.rbuf.release()
				if p.park(deadline) {
					return ErrParked
				}
			}
		}
		linger = lingers

		if err := cl.ReadFixedHeader(&fh); err != nil {
			return err
		}
		pk, err := cl.ReadPacket(&fh)
		if err != nil {
			return err
		}
		if err := s.receivePacket(cl, pk); err != nil {
			return err
		}
		cl.Net.rbuf.release()
	}
}

// readConnectionPacket reads the first incoming header for a connection, and if
// acceptable, returns the valid connection packet.
func (s *Server) readConnectionPacket(cl *Client) (pk packets.Packet, err error) {
	fh := new(packets.FixedHeader)
	err = cl.ReadFixedHeader(fh)
	if err != nil {
		return
	}

	if fh.Type != packets.Connect {
		return pk, packets.ErrProtocolViolationRequireFirstConnect // [MQTT-3.1.0-1]
	}

	pk, err = cl.ReadPacket(fh)
	if err != nil {
		return
	}

	return
}

// receivePacket processes an incoming packet for a client, and issues a disconnect to the client
// if an error has occurred (if mqtt v5).
func (s *Server) receivePacket(cl *Client, pk packets.Packet) error {
	err := s.processPacket(cl, pk)
	if err != nil {
		if code, ok := err.(packets.Code); ok &&
			cl.Properties.ProtocolVersion == 5 &&
			code.Code >= packets.ErrUnspecifiedError.Code {
			_ = s.DisconnectClient(cl, code)
		}

		s.Log.Warn("error processing packet", "error", err, "client", cl.ID, "listener", cl.Net.Listener, "packet", packetSummary(pk))

		return err
	}

	return nil
}

// validateConnect validates that a connect packet is compliant.
func (s *Server) validateConnect(cl *Client, pk packets.Packet) packets.Code {
	code := pk.ConnectValidate() // [MQTT-3.1.4-1] [MQTT-3.1.4-2]
	if code == packets.ErrProtocolViolationProtocolVersion {
		// COLONY PATCH P15: an unknown protocol level gets 3.1.1's CONNACK
		// 0x01 [MQTT-3.1.2-2], which clients of every version can read.
		cl.Properties.ProtocolVersion = 4
		return packets.ErrUnsupportedProtocolVersion
	}
	if code != packets.CodeSuccess {
		return code
	}

	if cl.Properties.ProtocolVersion < 5 && !pk.Connect.Clean && pk.Connect.ClientIdentifier == "" {
		return packets.ErrClientIdentifierNotValid // COLONY PATCH P15: 3.1.1's 0x02 [MQTT-3.1.3-8]
	}

	if cl.Properties.ProtocolVersion < s.Options.Capabilities.MinimumProtocolVersion {
		return packets.ErrUnsupportedProtocolVersion // [MQTT-3.1.2-2]
	} else if cl.Properties.Will.Qos > s.Options.Capabilities.MaximumQos {
		return packets.ErrQosNotSupported // [MQTT-3.2.2-12]
	} else if cl.Properties.Will.Retain && s.Options.Capabilities.RetainAvailable == 0x00 {
		return packets.ErrRetainNotSupported // [MQTT-3.2.2-13]
	}

	return code
}

// inheritClientSession inherits the state of an existing client sharing the same
// connection ID. If clean is true, the state of any previously existing client
// session is abandoned.
func (s *Server) inheritClientSession(pk packets.Packet, cl *Client) bool {
	existing, ok := s.Clients.Get(cl.ID)
	if ok && !existing.State.claimed.CompareAndSwap(false, true) {
		// COLONY PATCH P35: the session expired meanwhile (or another
		// connection is taking it): once it has ended, start afresh.
		existing.State.endMu.Lock() // held by expireClient until the session has ended
		existing.State.endMu.Unlock()
		ok = false
	}
	if ok {
		ended := pk.Connect.Clean || (existing.Properties.Clean && existing.Properties.ProtocolVersion < 5)
		// COLONY PATCH P38: the old connection's goroutine schedules its
		// delayed will when it sees its end, which may be after this
		// connection's CONNACK, where a pending will is dealt with: told
		// first, it sends the will now if the session ends, or drops it if
		// the session goes on. Upstream scheduled it anyway: published
		// while the client was connected, it also wiped the new
		// connection's will.
		existing.State.willMu.Lock()
		existing.State.willFate = willResumed
		if ended {
			existing.State.willFate = willEnded
		}
		existing.State.willMu.Unlock()
		_ = s.DisconnectClient(existing, packets.ErrSessionTakenOver) // [MQTT-3.1.4-3]
		if ended {                                                    // [MQTT-3.1.2-4] [MQTT-3.1.4-4]
			s.UnsubscribeClient(existing)
			// COLONY PATCH P31: the session ended; nothing more goes into it.
			// Sealed before it is cleared, so that a message a publisher
			// puts in it meanwhile is not wiped without the hooks hearing
			// of it (P32: storage kept it, the in-flight gauge counted it).
			existing.State.Inflight.moveTo(nil)
			existing.ClearInflights()
			existing.State.isTakenOver.Store(true) // only set isTakenOver after unsubscribe has occurred
			return false                           // [MQTT-3.2.2-3]
		}

		existing.State.isTakenOver.Store(true)
		// COLONY PATCH P33: packet ids go on from the session's last one, so
		// that their order is the order of the messages (loadInflight).
		atomic.StoreUint32(&cl.State.packetID, atomic.LoadUint32(&existing.State.packetID))
		// COLONY PATCH P31: moved, not cloned and then dropped (storage
		// forgot them), and publishers that still hold the old connection
		// deliver to this one (P25: the client's pending QoS 2 ids too).
		existing.State.Inflight.moveTo(cl) // [MQTT-3.1.2-5]

		for _, sub := range existing.State.Subscriptions.GetAll() {
			existed := !s.Topics.Subscribe(cl.ID, sub) // [MQTT-3.8.4-3]
			if !existed {
				atomic.AddInt64(&s.Info.Subscriptions, 1)
			}
			cl.State.Subscriptions.Add(sub.Filter, sub)
		}

		// Clean the state of the existing client to prevent sequential take-overs
		// from increasing memory usage by inflights + subs * client-id.
		s.UnsubscribeClient(existing)
		existing.ClearInflights()

		s.Log.Debug("session taken over", "client", cl.ID, "old_remote", existing.Net.Remote, "new_remote", cl.Net.Remote)

		return true // [MQTT-3.2.2-3]
	}

	if atomic.LoadInt64(&s.Info.ClientsConnected) > atomic.LoadInt64(&s.Info.ClientsMaximum) {
		atomic.AddInt64(&s.Info.ClientsMaximum, 1)
	}

	return false // [MQTT-3.2.2-2]
}

// SendConnack returns a Connack packet to a client.
func (s *Server) SendConnack(cl *Client, reason packets.Code, present bool, properties *packets.Properties) error {
	if properties == nil {
		properties = &packets.Properties{
			ReceiveMaximum: s.Options.Capabilities.ReceiveMaximum,
		}
	}

	properties.ReceiveMaximum = s.Options.Capabilities.ReceiveMaximum // 3.2.2.3.3 Receive Maximum
	if cl.State.ServerKeepalive {                                     // You can set this dynamically using the OnConnect hook.
		properties.ServerKeepAlive = cl.State.Keepalive // [MQTT-3.1.2-21]
		properties.ServerKeepAliveFlag = true
	}

	if reason.Code >= packets.ErrUnspecifiedError.Code {
		if cl.Properties.ProtocolVersion < 5 {
			v3reason, ok := packets.V5CodesToV3[reason] // NB v3 3.2.2.3 Connack return codes
			if !ok {
				// COLONY PATCH P15: 3.1.1 has no code for it (values above 5
				// are reserved), so the connection just closes.
				return nil
			}
			reason = v3reason
		}

		properties.ReasonString = reason.Reason
		ack := packets.Packet{
			FixedHeader: packets.FixedHeader{
				Type: packets.Connack,
			},
			SessionPresent: false,       // [MQTT-3.2.2-6]
			ReasonCode:     reason.Code, // [MQTT-3.2.2-8]
			Properties:     *properties,
		}
		return cl.WritePacket(ack)
	}

	if s.Options.Capabilities.MaximumPacketSize > 0 { // COLONY PATCH P15: [MQTT-3.2.2-15] clients must know the limit
		properties.MaximumPacketSize = s.Options.Capabilities.MaximumPacketSize
	}

	if s.Options.Capabilities.MaximumQos < 2 {
		properties.MaximumQos = s.Options.Capabilities.MaximumQos // [MQTT-3.2.2-9]
		properties.MaximumQosFlag = true
	}

	if cl.Properties.Props.AssignedClientID != "" {
		properties.AssignedClientID = cl.Properties.Props.AssignedClientID // [MQTT-3.1.3-7] [MQTT-3.2.2-16]
	}

	if cl.Properties.Props.SessionExpiryInterval > s.Options.Capabilities.MaximumSessionExpiryInterval {
		properties.SessionExpiryInterval = s.Options.Capabilities.MaximumSessionExpiryInterval
		properties.SessionExpiryIntervalFlag = true
		cl.Properties.Props.SessionExpiryInterval = properties.SessionExpiryInterval
		cl.Properties.Props.SessionExpiryIntervalFlag = true
	}

	ack := packets.Packet{
		FixedHeader: packets.FixedHeader{
			Type: packets.Connack,
		},
		SessionPresent: present,
		ReasonCode:     reason.Code, // [MQTT-3.2.2-8]
		Properties:     *properties,
	}
	return cl.WritePacket(ack)
}

// processPacket processes an inbound packet for a client. Since the method is
// typically called as a goroutine, errors are primarily for test checking purposes.
func (s *Server) processPacket(cl *Client, pk packets.Packet) error {
	var err error

	switch pk.FixedHeader.Type {
	case packets.Connect:
		err = s.processConnect(cl, pk)
	case packets.Disconnect:
		err = s.processDisconnect(cl, pk)
	case packets.Pingreq:
		err = s.processPingreq(cl, pk)
	case packets.Publish:
		code := pk.PublishValidate(s.Options.Capabilities.TopicAliasMaximum)
		if code != packets.CodeSuccess {
			return code
		}
		err = s.processPublish(cl, pk)
	case packets.Puback:
		err = s.processPuback(cl, pk)
	case packets.Pubrec:
		err = s.processPubrec(cl, pk)
	case packets.Pubrel:
		err = s.processPubrel(cl, pk)
	case packets.Pubcomp:
		err = s.processPubcomp(cl, pk)
	case packets.Subscribe:
		code := pk.SubscribeValidate()
		if code != packets.CodeSuccess {
			return code
		}
		err = s.processSubscribe(cl, pk)
	case packets.Unsubscribe:
		code := pk.UnsubscribeValidate()
		if code != packets.CodeSuccess {
			return code
		}
		err = s.processUnsubscribe(cl, pk)
	case packets.Auth:
		code := pk.AuthValidate()
		if code != packets.CodeSuccess {
			return code
		}
		err = s.processAuth(cl, pk)
	default:
		return fmt.Errorf("no valid packet available; %v", pk.FixedHeader.Type)
	}

	s.hooks.OnPacketProcessed(cl, pk, err)
	if err != nil {
		return err
	}

	// COLONY PATCH P26: an acknowledgement gave send quota back; messages
	// held for it go out, in order, behind whatever is queued already.
	if cl.State.Inflight.nheld.Load() > 0 {
		s.sendHeld(cl)
	}

	return nil
}

// sendHeld queues the messages held for send quota that the quota now
// lets through. They stay in flight: acknowledged, they free the quota
// again; not, they are resent on reconnect. COLONY PATCH P26.
func (s *Server) sendHeld(cl *Client) {
	pks := cl.State.Inflight.releaseHeld(nil)
	for k, pk := range pks {
		if err := s.enqueue(cl, outItem{pk: pk}, pk.FixedHeader.Qos, pk, s.Options.Capabilities.SlowClientPatience, false); err != nil {
			// disconnected or stalled: the session keeps them in flight,
			// never sent (COLONY PATCH P42: so not resent as DUP)
			for _, pk := range pks[k:] {
				cl.State.Inflight.holdUnsent(pk.PacketID, pk)
			}
			return
		}
	}
}

// processConnect processes a Connect packet. The packet cannot be used to establish
// a new connection on an existing connection. See EstablishConnection instead.
func (s *Server) processConnect(cl *Client, _ packets.Packet) error {
	s.sendLWT(cl)
	return packets.ErrProtocolViolationSecondConnect // [MQTT-3.1.0-2]
}

// processPingreq processes a Pingreq packet.
func (s *Server) processPingreq(cl *Client, _ packets.Packet) error {
	return cl.WritePacket(packets.Packet{
		FixedHeader: packets.FixedHeader{
			Type: packets.Pingresp, // [MQTT-3.12.4-1]
		},
	})
}

// Publish publishes a publish packet into the broker as if it were sent from the specified client.
// This is a convenience function which wraps InjectPacket. As such, this method can publish packets
// to any topic (including $SYS) and bypass ACL checks. The qos byte is used for limiting the
// outbound qos (mqtt v5) rather than issuing to the broker (we assume qos 2 complete).
func (s *Server) Publish(topic string, payload []byte, retain bool, qos byte) error {
	if !s.Options.InlineClient {
		return ErrInlineClientNotEnabled
	}

	return s.InjectPacket(s.inlineClient, packets.Packet{
		FixedHeader: packets.FixedHeader{
			Type:   packets.Publish,
			Qos:    qos,
			Retain: retain,
		},
		TopicName: topic,
		Payload:   payload,
		PacketID:  uint16(qos), // we never process the inbound qos, but we need a packet id for validity checks.
	})
}

// Subscribe adds an inline subscription for the specified topic filter and subscription identifier
// with the provided handler function.
func (s *Server) Subscribe(filter string, subscriptionId int, handler InlineSubFn) error {
	if !s.Options.InlineClient {
		return ErrInlineClientNotEnabled
	}

	if handler == nil {
		return packets.ErrInlineSubscriptionHandlerInvalid
	}

	if !IsValidFilter(filter, false) {
		return packets.ErrTopicFilterInvalid
	}

	subscription := packets.Subscription{
		Identifier: subscriptionId,
		Filter:     filter,
	}

	pk := s.hooks.OnSubscribe(s.inlineClient, packets.Packet{ // subscribe like a normal client.
		Origin:      s.inlineClient.ID,
		FixedHeader: packets.FixedHeader{Type: packets.Subscribe},
		Filters:     packets.Subscriptions{subscription},
	})

	inlineSubscription := InlineSubscription{
		Subscription: subscription,
		Handler:      handler,
	}

	s.Topics.InlineSubscribe(inlineSubscription)
	s.hooks.OnSubscribed(s.inlineClient, pk, []byte{packets.CodeSuccess.Code})

	// Handling retained messages.
	for _, pkv := range s.Topics.Messages(filter) { // [MQTT-3.8.4-4]
		handler(s.inlineClient, inlineSubscription.Subscription, pkv)
	}
	return nil
}

// Unsubscribe removes an inline subscription for the specified subscription and topic filter.
// It allows you to unsubscribe a specific subscription from the internal subscription
// associated with the given topic filter.
func (s *Server) Unsubscribe(filter string, subscriptionId int) error {
	if !s.Options.InlineClient {
		return ErrInlineClientNotEnabled
	}

	if !IsValidFilter(filter, false) {
		return packets.ErrTopicFilterInvalid
	}

	pk := s.hooks.OnUnsubscribe(s.inlineClient, packets.Packet{
		Origin:      s.inlineClient.ID,
		FixedHeader: packets.FixedHeader{Type: packets.Unsubscribe},
		Filters: packets.Subscriptions{
			{
				Identifier: subscriptionId,
				Filter:     filter,
			},
		},
	})

	s.Topics.InlineUnsubscribe(subscriptionId, filter)
	s.hooks.OnUnsubscribed(s.inlineClient, pk)
	return nil
}

// InjectPacket injects a packet into the broker as if it were sent from the specified client.
// InlineClients using this method can publish packets to any topic (including $SYS) and bypass ACL checks.
func (s *Server) InjectPacket(cl *Client, pk packets.Packet) error {
	pk.ProtocolVersion = cl.Properties.ProtocolVersion

	err := s.processPacket(cl, pk)
	if err != nil {
		return err
	}

	atomic.AddInt64(&cl.ops.info.PacketsReceived, 1)
	if pk.FixedHeader.Type == packets.Publish {
		atomic.AddInt64(&cl.ops.info.MessagesReceived, 1)
	}

	return nil
}

// processPublish processes a Publish packet.
func (s *Server) processPublish(cl *Client, pk packets.Packet) error {
	if !cl.Net.Inline && !IsValidFilter(pk.TopicName, true) {
		// COLONY PATCH P6: upstream ignored such a publish silently, so a
		// QoS 1 publisher to $SYS waited forever for its PUBACK. A client may
		// not write $SYS: answer as for an ACL denial. Wildcards in a topic
		// name are a protocol error [MQTT-3.3.2-2].
		if !isSysTopic(pk.TopicName) {
			return packets.ErrTopicNameInvalid
		}
		return s.denyPublish(cl, pk)
	}

	if !cl.Net.Inline && tooManyLevels(pk.TopicName, s.Options.Capabilities.MaximumTopicLevels) { // COLONY PATCH P15
		s.Refused.TopicLevels.Add(1)
		return packets.ErrTopicNameInvalid
	}

	// COLONY PATCH P25: a QoS 2 publish sent again before its PUBREL (the
	// client did not get the PUBREC; a resend has DUP set [MQTT-3.3.1-1])
	// gets its PUBREC again and is not delivered again [MQTT-4.3.3-10]; it
	// is no new message, so neither the publish rate nor the receive
	// maximum count it. Without DUP it is a new message under an id whose
	// flow the client saw complete: the pending record is stale (the
	// server went down between its PUBCOMP and forgetting the id), and is
	// replaced. The client's ids are looked up among its own publishes
	// only: upstream also found, and deleted, the server's message in
	// flight to it under the same id, and answered a repeat with 0x91
	// (packet identifier in use), with which an MQTT 5 client ends the
	// exchange as failed.
	if pk.FixedHeader.Qos == 2 && !cl.Net.Inline && cl.State.Inflight.inboundInUse(pk.PacketID) {
		if pk.FixedHeader.Dup {
			return cl.WritePacket(s.buildAck(pk.PacketID, packets.Pubrec, 0, pk.Properties, packets.CodeSuccess))
		}
		cl.endInbound(pk.PacketID, false) // storage forgets it too, should this publish be refused below
	}
	s.throttle(cl) // COLONY PATCH P15

	if atomic.LoadInt32(&cl.State.Inflight.receiveQuota) == 0 {
		return s.DisconnectClient(cl, packets.ErrReceiveMaximum) // ~[MQTT-3.3.4-7] ~[MQTT-3.3.4-8]
	}

	if !cl.Net.Inline && !s.hooks.OnACLCheck(cl, pk.TopicName, true) {
		return s.denyPublish(cl, pk)
	}

	pk.Origin = cl.ID
	pk.Created = time.Now().Unix()

	if expiry := minimum(s.Options.Capabilities.MaximumMessageExpiryInterval,
		int64(pk.Properties.MessageExpiryInterval)); expiry > 0 {
		pk.Expiry = pk.Created + expiry
	}

	if pk.Properties.TopicAliasFlag && pk.Properties.TopicAlias > 0 { // [MQTT-3.3.2-11]
		pk.TopicName = cl.State.TopicAliases.Inbound.Set(pk.Properties.TopicAlias, pk.TopicName)
	}

	if pk.FixedHeader.Qos > s.Options.Capabilities.MaximumQos {
		pk.FixedHeader.Qos = s.Options.Capabilities.MaximumQos // [MQTT-3.2.2-9] Reduce qos based on server max qos capability
	}

	// COLONY PATCH P32, P37: a QoS 2 publish's id is recorded before
	// anything acts on the publish: the OnPublish hooks (Colony's $rpc
	// gateway starts the request there, and may wait for a free slot) and
	// the delivery, which may wait long for slow subscribers (P3).
	// Recorded after them, a take-over meanwhile (the client reconnecting,
	// as one that waits long for its PUBREC may) found nothing to move,
	// and the PUBLISH the client must send again was delivered, or its
	// request run, a second time [MQTT-4.3.3-10]. A publish read on a
	// connection taken over before it was recorded is not acted on here:
	// the client sends it again on the new one.
	inbound := pk.FixedHeader.Qos == 2 && !cl.Net.Inline
	if inbound {
		at := time.Now().Unix()
		set := cl.State.Inflight
		if !set.setInboundLive(pk.PacketID, at) {
			return packets.ErrSessionTakenOver
		}
		func() {
			defer set.recorded() // COLONY PATCH P36
			s.hooks.OnQosPublish(cl, inboundState(pk.PacketID, at), at, 0)
		}()
	}
	// forget drops the record of a QoS 2 publish that gets no successful
	// PUBREC (its flow ends here). The receive quota was not taken yet.
	forget := func() {
		if inbound && cl.State.Inflight.deleteInbound(pk.PacketID) {
			cl.ops.hooks.OnQosDropped(cl, inboundState(pk.PacketID, 0))
		}
	}

	pkx, err := s.hooks.OnPublish(cl, pk)
	if err == nil {
		pk = pkx
	} else if errors.Is(err, packets.ErrRejectPacket) {
		forget()
		return nil
	} else if errors.Is(err, packets.CodeSuccessIgnore) {
		pk.Ignore = true
	} else if cl.Properties.ProtocolVersion == 5 && pk.FixedHeader.Qos > 0 && errors.As(err, new(packets.Code)) {
		forget()
		// COLONY PATCH P37: a QoS 2 publish is answered with a PUBREC
		// (upstream sent a PUBACK, which the client cannot match).
		ackType := packets.Puback
		if pk.FixedHeader.Qos == 2 {
			ackType = packets.Pubrec
		}
		err = cl.WritePacket(s.buildAck(pk.PacketID, ackType, 0, pk.Properties, err.(packets.Code)))
		if err != nil {
			return err
		}
		return nil
	}
	if inbound && pk.FixedHeader.Qos != 2 { // a hook lowered it: acknowledged with a PUBACK
		forget()
	}

	if pk.FixedHeader.Retain { // [MQTT-3.3.1-5] ![MQTT-3.3.1-8]
		s.retainMessage(cl, pk)
	}

	// If it's inlineClient, it can't handle PUBREC and PUBREL.
	// When it publishes a package with a qos > 0, the server treats
	// the package as qos=0, and the client receives it as qos=1 or 2.
	if pk.FixedHeader.Qos == 0 || cl.Net.Inline {
		s.publishFrom(cl, pk)
		s.hooks.OnPublished(cl, pk)
		return nil
	}

	// COLONY PATCH P3: deliver first, acknowledge after, so that an ack
	// means the message is with every subscriber (queued, or in-flight and,
	// in sync durability, committed to the store). Waiting here on slow
	// subscribers is the back-pressure that slows this publisher.
	s.publishFrom(cl, pk)
	s.hooks.OnPublished(cl, pk)

	// COLONY PATCH P25: the client's publish is not put among the
	// messages in flight to it: a QoS 1 publish is done once acknowledged,
	// and a QoS 2 one waits for its PUBREL among the client's own ids,
	// which the in-flight hooks hear of as PUBRECs (inboundState; the store
	// keeps them apart, and in sync mode has committed this one before the
	// PUBREC goes out). Upstream's PUBACK replaced and then deleted the
	// server's message in flight under the same id, in memory and, through
	// OnQosComplete, in the store: a message lost.
	cl.State.Inflight.DecreaseReceiveQuota()
	if pk.FixedHeader.Qos == 2 {
		ack := s.buildAck(pk.PacketID, packets.Pubrec, 0, pk.Properties, packets.CodeSuccess) // [MQTT-3.3.4-1] [MQTT-4.3.3-8]
		return cl.WritePacket(ack)
	}

	ack := s.buildAck(pk.PacketID, packets.Puback, 0, pk.Properties, packets.QosCodes[pk.FixedHeader.Qos]) // [MQTT-4.3.2-4]
	err = cl.WritePacket(ack)
	cl.State.Inflight.IncreaseReceiveQuota()
	return err
}

// denyPublish refuses a publish the client may not make: QoS 0 is dropped,
// MQTT 5 gets a PUBACK/PUBREC with 0x87, MQTT 3 is disconnected (it has no
// way to learn of the refusal otherwise).
func (s *Server) denyPublish(cl *Client, pk packets.Packet) error {
	if pk.FixedHeader.Qos == 0 {
		return nil
	}

	if cl.Properties.ProtocolVersion != 5 {
		return s.DisconnectClient(cl, packets.ErrNotAuthorized)
	}

	ackType := packets.Puback
	if pk.FixedHeader.Qos == 2 {
		ackType = packets.Pubrec
	}

	ack := s.buildAck(pk.PacketID, ackType, 0, pk.Properties, packets.ErrNotAuthorized)
	return cl.WritePacket(ack)
}

// isSysTopic reports whether a topic is in the $SYS space. COLONY PATCH P6.
func isSysTopic(topic string) bool {
	return len(topic) >= len(SysPrefix) && strings.EqualFold(topic[:len(SysPrefix)], SysPrefix)
}

// retainMessage adds a message to a topic, and if a persistent store is provided,
// adds the message to the store to be reloaded if necessary.
func (s *Server) retainMessage(cl *Client, pk packets.Packet) {
	if s.Options.Capabilities.RetainAvailable == 0 || pk.Ignore {
		return
	}

	out := pk.Copy(false)
	r := s.Topics.RetainMessage(out)
	s.hooks.OnRetainMessage(cl, pk, r)
	atomic.StoreInt64(&s.Info.Retained, int64(s.Topics.Retained.Len()))
}

// publishToSubscribers publishes a publish packet to all subscribers with matching topic filters.
// COLONY PATCH P1: a slow subscriber makes the publisher wait (back-pressure).
func (s *Server) publishToSubscribers(pk packets.Packet) {
	s.publishToSubscribersWait(pk, s.Options.Capabilities.SlowClientPatience)
}

// publishToSubscribersNoWait is for the server's own housekeeping loop,
// which must never wait on a client. COLONY PATCH P1.
func (s *Server) publishToSubscribersNoWait(pk packets.Packet) {
	s.publishToSubscribersWait(pk, 0)
}

func (s *Server) publishToSubscribersWait(pk packets.Packet, patience time.Duration) {
	s.deliver(pk, patience, false)
}

// publishFrom publishes what cl published. COLONY PATCH P20: when cl sent
// nothing more that was read already, the message is not part of a burst,
// and its only delivery may be written at once (outQueue.push); in a burst
// the subscriber's writer gathers deliveries into fewer, larger writes.
func (s *Server) publishFrom(cl *Client, pk packets.Packet) {
	s.deliver(pk, s.Options.Capabilities.SlowClientPatience, cl.Net.rbuf.buffered() == 0)
}

// deliver is publishToSubscribersWait; mayDirect allows P20's direct write.
func (s *Server) deliver(pk packets.Packet, patience time.Duration, mayDirect bool) {
	if pk.Ignore {
		return
	}

	if pk.Created == 0 {
		pk.Created = time.Now().Unix()
	}

	if pk.Expiry == 0 {
		if expiry := minimum(s.Options.Capabilities.MaximumMessageExpiryInterval,
			int64(pk.Properties.MessageExpiryInterval)); expiry > 0 {
			pk.Expiry = pk.Created + expiry
		}
	}

	subscribers := s.Topics.subscribersOf(pk.TopicName) // COLONY PATCH P24: pooled
	pooled := len(subscribers.Shared) == 0
	if !pooled {
		// Hooks may keep what they are given, or return another: this
		// one does not go back to the pool.
		// They get the maps upstream always made (P24 makes them only
		// when something matched).
		if subscribers.Subscriptions == nil {
			subscribers.Subscriptions = map[string]packets.Subscription{}
		}
		if subscribers.SharedSelected == nil {
			subscribers.SharedSelected = map[string]packets.Subscription{}
		}
		if subscribers.InlineSubscriptions == nil {
			subscribers.InlineSubscriptions = map[int]InlineSubscription{}
		}
		subscribers = s.hooks.OnSelectSubscribers(subscribers, pk)
		if len(subscribers.SharedSelected) == 0 {
			subscribers.selectSharedOnline(func(id string) bool { // COLONY PATCH P39
				cl, ok := s.Clients.Get(id)
				return ok && !cl.Closed()
			})
		}
		subscribers.MergeSharedSelected()
	}

	for _, inlineSubscription := range subscribers.InlineSubscriptions {
		inlineSubscription.Handler(s.inlineClient, inlineSubscription.Subscription, pk)
	}

	var shared sharedPublishes // COLONY PATCH P13: QoS 0 encoded once per form
	// COLONY PATCH P20: the only delivery of a publish is written from this
	// goroutine when its subscriber's queue is idle; more are left to their
	// writers, which write them in parallel.
	direct := mayDirect && len(subscribers.Subscriptions) == 1
	for id, subs := range subscribers.Subscriptions {
		if cl, ok := s.Clients.Get(id); ok {
			if !cl.enterDelivery() { // COLONY PATCH P34: leaving for another node
				continue
			}
			err := func() error {
				defer cl.leaveDelivery() // even through a panic: ReleaseSession waits for it
				return s.publishToClient(cl, subs, &pk, patience, &shared, direct)
			}()
			if err != nil {
				s.Log.Debug("failed publishing packet", "error", err, "client", cl.ID, "packet", packetSummary(pk))
			}
		}
	}
	if pooled {
		putSubscribers(subscribers)
	}
}

// sharedPublish is a QoS 0 PUBLISH encoded once and written as is to every
// subscriber that receives it in the same form. COLONY PATCH P13: upstream
// copied the packet (payload and properties included) and encoded it again
// for every subscriber. It is read-only once built.
type sharedPublish struct {
	b []byte // the encoding
	// P24: only a message with an MQTT 5 expiry interval keeps its packet,
	// as encoded, for writers that must encode it afresh (writeShared);
	// others keep no copy of it (a packet is about 800 bytes).
	pk       *packets.Packet
	interval uint32 // the message expiry interval encoded (MQTT 5)
}

// summary describes the packet for logs, as packetSummary does.
func (sp *sharedPublish) summary() string {
	if sp.pk != nil {
		return packetSummary(*sp.pk)
	}
	// The topic, read back from the encoding: fixed header, remaining
	// length (1 to 4 bytes), topic length, topic.
	topic, i := "", 1
	for i < len(sp.b) && i < 5 && sp.b[i]&0x80 != 0 {
		i++
	}
	if i+3 <= len(sp.b) {
		n := int(sp.b[i+1])<<8 | int(sp.b[i+2])
		topic = string(sp.b[i+3 : min(i+3+n, len(sp.b))])
	}
	return fmt.Sprintf("%s id=0 qos=0 topic=%q", packets.PacketNames[packets.Publish], topic)
}

// sharedPublishes holds the encodings of one publish, by form: MQTT 5 or
// earlier, retain flag, problem information allowed or not. COLONY PATCH P13.
type sharedPublishes [8]*sharedPublish

// shareable reports whether the QoS 0 delivery of a publish to cl would be
// the same bytes for every subscriber of the same form, and returns the
// form. Per-subscriber content rules it out: MQTT 5 topic aliases and
// subscription identifiers, hooks that see or change each client's packet,
// a packet size limit. COLONY PATCH P13.
func (s *Server) shareable(cl *Client, sub packets.Subscription, pk *packets.Packet, retain bool) (form int, ok bool) {
	if cl.Net.Conn == nil || pk.Mods.MaxSize > 0 || cl.Properties.Props.TopicAliasMaximum > 0 ||
		s.hooks.Provides(OnPacketEncode, OnPacketSent) {
		return 0, false
	}
	if cl.Properties.ProtocolVersion == 5 {
		if subscriptionIDs(sub) {
			return 0, false
		}
		form |= 4
		if cl.Properties.Props.RequestProblemInfoFlag && cl.Properties.Props.RequestProblemInfo == 0x0 {
			form |= 1
		}
	}
	if retain {
		form |= 2
	}
	return form, true
}

// subscriptionIDs reports whether a delivery for sub carries subscription
// identifiers. COLONY PATCH P13.
func subscriptionIDs(sub packets.Subscription) bool {
	if sub.Identifier > 0 {
		return true
	}
	for _, id := range sub.Identifiers {
		if id > 0 {
			return true
		}
	}
	return false
}

// sharedFor returns the shared encoding of pk in form, building it on first
// use, as Client.WritePacket would encode it for a client of that form, or
// nil if pk cannot be encoded so. COLONY PATCH P13.
func (s *Server) sharedFor(pk *packets.Packet, form int, shared *sharedPublishes) *sharedPublish {
	if sp := shared[form]; sp != nil {
		return sp
	}
	// COLONY PATCH P24: encoded from a shallow copy with Copy(false)'s
	// header, which lives only for the encoding; the encoding reads the
	// payload and properties, which are not copied (Copy copied both).
	c := *pk
	c.FixedHeader.Dup = false // [MQTT-4.3.1-1]
	c.FixedHeader.Qos = 0
	c.FixedHeader.Retain = form&2 != 0
	c.PacketID = 0
	c.Properties.TopicAlias, c.Properties.TopicAliasFlag = 0, false // [MQTT-3.3.2-7]
	c.ProtocolVersion = 4                                           // MQTT 3.1 and 3.1.1 encode a PUBLISH alike
	if form&4 != 0 {
		c.ProtocolVersion = 5
	}
	sp := new(sharedPublish)
	if c.Expiry > 0 {
		sp.interval = expiryInterval(c.Expiry)
		c.Properties.MessageExpiryInterval = sp.interval // [MQTT-3.3.2-6]
	}
	c.Mods = packets.Mods{
		MaxSize:             pk.Mods.MaxSize,
		DisallowProblemInfo: form&1 != 0, // [MQTT-3.1.2-29]
		AllowResponseInfo:   true,        // [MQTT-3.1.2-28]
	}
	buf := encodeBuffers.Get()
	defer encodeBuffers.Put(buf)
	if err := c.PublishEncode(buf); err != nil {
		return nil
	}
	sp.b = bytes.Clone(buf.Bytes())
	if c.Expiry > 0 && c.ProtocolVersion == 5 {
		kept := c.Copy(false)
		kept.Mods = c.Mods
		sp.pk = &kept
	}
	shared[form] = sp
	return sp
}

// publishToClient delivers pk to cl under its subscription sub. shared, when
// not nil, collects the encodings of pk that subscribers can share
// (COLONY PATCH P13).
func (s *Server) publishToClient(cl *Client, sub packets.Subscription, pk *packets.Packet, patience time.Duration, shared *sharedPublishes, direct bool) error {
	return s.deliverTo(cl, sub, pk, patience, shared, direct, pk.Origin == cl.ID)
}

// deliverTo is publishToClient; own says that the caller is cl's own packet
// handler (COLONY PATCH P29), which cannot wait for cl's acknowledgements.
func (s *Server) deliverTo(cl *Client, sub packets.Subscription, pk *packets.Packet, patience time.Duration, shared *sharedPublishes, direct, own bool) error {
	if sub.NoLocal && pk.Origin == cl.ID {
		return nil // [MQTT-3.8.3-3]
	}

	if !s.hooks.OnACLCheck(cl, pk.TopicName, false) {
		return packets.ErrNotAuthorized
	}
	retain := pk.FixedHeader.Retain &&
		(sub.FwdRetainedFlag || (cl.Properties.ProtocolVersion == 5 && sub.RetainAsPublished)) // ![MQTT-3.3.1-13] [v3 MQTT-3.3.1-9] [MQTT-3.3.1-12]
	qos := min(pk.FixedHeader.Qos, sub.Qos, s.Options.Capabilities.MaximumQos) // [MQTT-3.2.2-9]

	if cl.State.dropWarned.Load() {
		patience = 0 // COLONY PATCH P1: already stalled; don't make every publisher wait again
	}

	if qos == 0 && shared != nil {
		if form, ok := s.shareable(cl, sub, pk, retain); ok {
			if sp := s.sharedFor(pk, form, shared); sp != nil &&
				(cl.Properties.Props.MaximumPacketSize == 0 || uint32(len(sp.b)) <= cl.Properties.Props.MaximumPacketSize) {
				return s.enqueue(cl, outItem{shared: sp}, 0, pk, patience, direct)
			}
		}
	}

	out := pk.Copy(false)
	out.FixedHeader.Retain = retain
	out.FixedHeader.Qos = qos

	if ids := subscriptionIDs(sub); ids && len(sub.Identifiers) > 0 { // [MQTT-3.3.4-3]
		out.Properties.SubscriptionIdentifier = make([]int, 0, len(sub.Identifiers))
		for _, id := range sub.Identifiers {
			out.Properties.SubscriptionIdentifier = append(out.Properties.SubscriptionIdentifier, id) // [MQTT-3.3.4-4] ![MQTT-3.3.4-5]
		}
		sort.Ints(out.Properties.SubscriptionIdentifier)
	} else if ids {
		out.Properties.SubscriptionIdentifier = []int{sub.Identifier} // COLONY PATCH P14: a single match has no Identifiers map
	}

	// COLONY PATCH P27, P32: no topic alias here. The message kept in
	// flight keeps its topic name (a resend on another connection, where
	// an alias means nothing [MQTT-3.3.2-7], needs it, as does storage),
	// and the alias is chosen by the writer (Client.writePacket), in the
	// order the packets go out: given here, it was set up by a message
	// that then went out later (held for the Receive Maximum, P26) or
	// never (discarded as too large, P28; dropped), and the next one on
	// the topic went out first by an alias the client had not been told.

	if out.FixedHeader.Qos > 0 {
		// COLONY PATCH P1: an online client whose in-flight window is full
		// gets time to acknowledge before anything is given up; an offline
		// session's queue is full for good (P4: logged once, counted).
		if !s.roomInFlight(cl, patience, own) {
			atomic.AddInt64(&s.Info.InflightDropped, 1)
			cl.ops.hooks.OnPublishDropped(cl, *pk)
			if cl.State.dropWarned.CompareAndSwap(false, true) {
				s.Log.Warn("client in-flight limit reached; dropping its QoS 1/2 messages until it catches up (logged once)",
					"client", cl.ID, "listener", cl.Net.Listener, "limit", s.inflightLimit(cl), "connected", !cl.Closed())
			}
			return packets.ErrQuotaExceeded
		}

		i, err := cl.NextPacketID() // [MQTT-4.3.2-1] [MQTT-4.3.3-1]
		if err != nil {
			s.hooks.OnPacketIDExhausted(cl, *pk)
			atomic.AddInt64(&s.Info.InflightDropped, 1)
			s.Log.Warn("packet ids exhausted", "error", err, "client", cl.ID, "listener", cl.Net.Listener)
			return packets.ErrQuotaExceeded
		}

		out.PacketID = uint16(i) // [MQTT-2.2.1-4]

		if cl.tooLarge(&out) { // COLONY PATCH P28: discarded as if delivered [MQTT-3.1.2-25]
			atomic.AddInt64(&s.Info.TooLargeDropped, 1)
			cl.ops.hooks.OnPublishDropped(cl, *pk)
			return packets.ErrPacketTooLarge
		}

		// COLONY PATCH P24: in flight and in the queue, one copy; out is
		// not changed after this.
		set := cl.State.Inflight
		ok, sealed, next := set.setLive(&out) // [MQTT-4.3.2-3] [MQTT-4.3.3-3]
		if sealed {
			// COLONY PATCH P31: a new connection took the session over
			// since cl was looked up; it has the session's messages and
			// gets this one too.
			if next == nil {
				return packets.CodeDisconnect // the session ended (clean start)
			}
			return s.deliverTo(next, sub, pk, patience, nil, false, own)
		}
		func() {
			defer set.recorded() // COLONY PATCH P36: a take-over may move it now
			if ok {
				atomic.AddInt64(&s.Info.Inflight, 1)
				s.hooks.OnQosPublish(cl, out, out.Created, 0)
			}
		}()

		// COLONY PATCH P26: over the client's Receive Maximum, the message
		// waits in flight, in order, for acknowledgements (sendHeld).
		if !set.admit(out.PacketID) {
			return nil
		}
		err = s.enqueue(cl, outItem{pk: &out}, out.FixedHeader.Qos, pk, patience, direct)
		if err != nil {
			// COLONY PATCH P42: the client is gone (or stalled and being
			// disconnected) and the message stays in flight, never sent:
			// its first sending, on a later connection, is not a DUP.
			set.holdUnsent(out.PacketID, &out)
		}
		return err
	}

	return s.enqueue(cl, outItem{pk: &out}, out.FixedHeader.Qos, pk, patience, direct)
}

// enqueue queues a delivery of pk (QoS qos) for cl. COLONY PATCH P1: it
// waits for room instead of dropping (back-pressure). With direct (P20) it
// may write it at once instead, from the caller's goroutine.
func (s *Server) enqueue(cl *Client, it outItem, qos byte, pk *packets.Packet, patience time.Duration, direct bool) error {
	if cl.Net.Conn == nil || cl.Closed() {
		return packets.CodeDisconnect
	}

	switch cl.State.outbound.push(it, patience, cl.State.open.Done(), direct) {
	case pushed:
	case closed:
		// A QoS 1/2 message stays in-flight: the session resends it on reconnect.
		return packets.CodeDisconnect
	case stalled:
		if qos > 0 {
			// Never drop an accepted QoS 1/2 message: the stalled subscriber
			// is disconnected and its session keeps the message in-flight.
			s.Log.Warn("subscriber stalled: disconnecting it; its session keeps the undelivered messages",
				"client", cl.ID, "listener", cl.Net.Listener, "patience", patience)
			cl.Stop(packets.ErrQuotaExceeded)
			return packets.ErrPendingClientWritesExceeded
		}
		atomic.AddInt64(&s.Info.MessagesDropped, 1)
		cl.ops.hooks.OnPublishDropped(cl, *pk)
		if cl.State.dropWarned.CompareAndSwap(false, true) {
			s.Log.Warn("subscriber too slow: dropping QoS 0 messages to it until its queue drains (logged once)",
				"client", cl.ID, "listener", cl.Net.Listener, "queue", s.Options.Capabilities.MaximumClientWritesPending)
		}
		return packets.ErrPendingClientWritesExceeded
	}

	return nil
}

// inflightLimit is how many QoS 1/2 messages a client may hold: its window
// while connected, its session queue while away. COLONY PATCH P9.
func (s *Server) inflightLimit(cl *Client) int {
	if cl.Closed() && s.Options.Capabilities.MaximumSessionQueue > 0 {
		return s.Options.Capabilities.MaximumSessionQueue
	}
	return int(s.Options.Capabilities.MaximumInflight)
}

// roomInFlight reports whether cl may take one more QoS 1/2 message. A
// connected client at its window is given patience to acknowledge.
// COLONY PATCH P29: upstream (and P4) then dropped the message, which its
// publisher had acknowledged. Now a client that acknowledged nothing for
// the whole patience counts as stalled and is disconnected, as one whose
// queue does not drain is (P1), and its session keeps the message within
// the session queue (P9). A caller that cannot wait (patience 0: the
// server's own loop, or a client already found stalled) or must not (own:
// cl's own packet handler, for cl's publish to itself or the retained
// messages of its subscribe, which holds up the reading of the very
// acknowledgements it would wait for) puts the message past the window,
// within the session queue.
func (s *Server) roomInFlight(cl *Client, patience time.Duration, own bool) bool {
	n := cl.State.Inflight.Len()
	if n < s.inflightLimit(cl) {
		return true
	}
	if own || patience <= 0 {
		return n < max(s.inflightLimit(cl), s.Options.Capabilities.MaximumSessionQueue)
	}
	if s.waitInflight(cl, patience) {
		return true
	}
	if !cl.Closed() {
		s.Log.Warn("subscriber acknowledged nothing while its in-flight window was full: disconnecting it; its session keeps the undelivered messages",
			"client", cl.ID, "listener", cl.Net.Listener, "patience", patience, "window", s.Options.Capabilities.MaximumInflight)
		cl.Stop(packets.ErrQuotaExceeded)
	}
	return cl.State.Inflight.Len() < s.inflightLimit(cl)
}

// waitInflight waits, at most patience, for a connected client to free
// in-flight slots by acknowledging. COLONY PATCH P1.
func (s *Server) waitInflight(cl *Client, patience time.Duration) bool {
	if cl.Closed() || patience <= 0 {
		return false
	}
	deadline := time.Now().Add(patience)
	pause := 100 * time.Microsecond
	inflight := cl.State.Inflight
	last := inflight.freed.Load()
	for inflight.Len() >= int(s.Options.Capabilities.MaximumInflight) {
		if cl.Closed() {
			// Gone while we waited: its session queue decides now (P9).
			return cl.State.Inflight.Len() < s.inflightLimit(cl)
		}
		// COLONY PATCH P32: a client that acknowledges is not stalled,
		// however long its backlog (a resumed session's can be as long
		// as the session queue, beyond the window): patience runs from
		// its last acknowledgement (P29 disconnected it after patience).
		// COLONY PATCH P41: counted, not seen in the set's length, which
		// another waiting publisher's message may have filled again
		// between two looks.
		if n := inflight.freed.Load(); n != last {
			deadline, last = time.Now().Add(patience), n
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(pause)
		pause = min(2*pause, 10*time.Millisecond)
	}
	return true
}

func (s *Server) publishRetainedToClient(cl *Client, sub packets.Subscription, existed bool) {
	if IsSharedFilter(sub.Filter) {
		return // 4.8.2 Non-normative - Shared Subscriptions - No Retained Messages are sent to the Session when it first subscribes.
	}

	if sub.RetainHandling == 1 && existed || sub.RetainHandling == 2 { // [MQTT-3.3.1-10] [MQTT-3.3.1-11]
		return
	}

	sub.FwdRetainedFlag = true
	for _, pkv := range s.Topics.Messages(sub.Filter) { // [MQTT-3.8.4-4]
		err := s.deliverTo(cl, sub, &pkv, s.Options.Capabilities.SlowClientPatience, nil, false, true) // COLONY PATCH P29: cl's own handler
		if err != nil {
			s.Log.Debug("failed to publish retained message", "error", err, "client", cl.ID, "listener", cl.Net.Listener, "packet", packetSummary(pkv))
			continue
		}
		s.hooks.OnRetainPublished(cl, pkv)
	}
}

// buildAck builds a standardised ack message for Puback, Pubrec, Pubrel, Pubcomp packets.
func (s *Server) buildAck(packetID uint16, pkt, qos byte, properties packets.Properties, reason packets.Code) packets.Packet {
	if s.Options.Capabilities.Compatibilities.NoInheritedPropertiesOnAck {
		properties = packets.Properties{}
	}
	if reason.Code >= packets.ErrUnspecifiedError.Code {
		properties.ReasonString = reason.Reason
	}

	pk := packets.Packet{
		FixedHeader: packets.FixedHeader{
			Type: pkt,
			Qos:  qos,
		},
		PacketID:   packetID,    // [MQTT-2.2.1-5]
		ReasonCode: reason.Code, // [MQTT-3.4.2-1]
		Properties: properties,
		Created:    time.Now().Unix(),
		Expiry:     time.Now().Unix() + s.Options.Capabilities.MaximumMessageExpiryInterval,
	}

	return pk
}

// processPuback processes a Puback packet, denoting completion of a QOS 1 packet sent from the server.
func (s *Server) processPuback(cl *Client, pk packets.Packet) error {
	if _, ok := cl.State.Inflight.Get(pk.PacketID); !ok {
		return nil // omit, but would be packets.ErrPacketIdentifierNotFound
	}

	if ok := cl.State.Inflight.Delete(pk.PacketID); ok { // [MQTT-4.3.2-5]
		cl.State.Inflight.IncreaseSendQuota()
		atomic.AddInt64(&s.Info.Inflight, -1)
		s.hooks.OnQosComplete(cl, pk)
	}

	return nil
}

// processPubrec processes a Pubrec packet, denoting receipt of a QOS 2 packet sent from the server.
func (s *Server) processPubrec(cl *Client, pk packets.Packet) error {
	out, ok := cl.State.Inflight.Get(pk.PacketID)
	if !ok { // [MQTT-4.3.3-7] [MQTT-4.3.3-13]
		return cl.WritePacket(s.buildAck(pk.PacketID, packets.Pubrel, 1, pk.Properties, packets.ErrPacketIdentifierNotFound))
	}

	if pk.ReasonCode >= packets.ErrUnspecifiedError.Code || !pk.ReasonCodeValid() { // [MQTT-4.3.3-4]
		if ok := cl.State.Inflight.Delete(pk.PacketID); ok {
			atomic.AddInt64(&s.Info.Inflight, -1)
		}
		// COLONY PATCH P25: the hooks are given the message dropped, not
		// the client's PUBREC: a PUBREC is how they hear of the client's
		// own QoS 2 publishes (inboundState). And a refusing PUBREC gives
		// the send quota back, as every end of a flow does (MQTT 5 4.9);
		// upstream did not, so refusals used the quota up.
		cl.State.Inflight.IncreaseSendQuota()
		cl.ops.hooks.OnQosDropped(cl, out)
		return nil // as per MQTT5 Section 4.13.2 paragraph 2
	}

	ack := s.buildAck(pk.PacketID, packets.Pubrel, 1, pk.Properties, packets.CodeSuccess) // [MQTT-4.3.3-4] ![MQTT-4.3.3-6]
	cl.State.Inflight.DecreaseReceiveQuota()                                              // -1 RECV QUOTA
	// COLONY PATCH P40: the PUBREL takes the PUBLISH's place (upstream: Set
	// after the Get, so a take-over in between left it in the sealed set)
	// and storage hears of it before it goes out (in sync mode committed).
	// Upstream told storage nothing, so a restart resent the PUBLISH the
	// client had already received, and a client that had released the id
	// (it got the PUBREL and sent its PUBCOMP) delivered it twice.
	if !cl.State.Inflight.promote(&ack) { // [MQTT-4.3.3-5]
		return nil // taken over meanwhile: the new connection resends the PUBLISH
	}
	s.hooks.OnQosPublish(cl, ack, time.Now().Unix(), 0)
	cl.State.Inflight.recorded()
	return cl.WritePacket(ack)
}

// processPubrel processes a Pubrel packet, denoting completion of a QOS 2 packet sent from the client.
// COLONY PATCH P25: it ends the client's own QoS 2 publish (inbound), not
// a message in flight to the client that has the same id; the in-flight
// hooks are told of it as a PUBREC (inboundState).
func (s *Server) processPubrel(cl *Client, pk packets.Packet) error {
	if !cl.State.Inflight.inboundInUse(pk.PacketID) { // [MQTT-4.3.3-7] [MQTT-4.3.3-13]
		return cl.WritePacket(s.buildAck(pk.PacketID, packets.Pubcomp, 0, pk.Properties, packets.ErrPacketIdentifierNotFound))
	}

	if pk.ReasonCode >= packets.ErrUnspecifiedError.Code || !pk.ReasonCodeValid() { // [MQTT-4.3.3-9]
		cl.endInbound(pk.PacketID, false)
		return nil
	}

	// The id is forgotten, by storage too (in sync mode committed), before
	// the PUBCOMP goes out [MQTT-4.3.3-12]: a record that outlived the
	// PUBCOMP would take the client's next publish under that id for a
	// repeat.
	cl.endInbound(pk.PacketID, true)
	return cl.WritePacket(s.buildAck(pk.PacketID, packets.Pubcomp, 0, pk.Properties, packets.CodeSuccess)) // [MQTT-4.3.3-11]
}

// processPubcomp processes a Pubcomp packet, denoting completion of a QOS 2 packet sent from the server.
func (s *Server) processPubcomp(cl *Client, pk packets.Packet) error {
	// regardless of whether the pubcomp is a success or failure, we end the qos flow, delete inflight, and restore the quotas.
	cl.State.Inflight.IncreaseReceiveQuota() // +1 RECV QUOTA
	cl.State.Inflight.IncreaseSendQuota()    // +1 SENT QUOTA
	if ok := cl.State.Inflight.Delete(pk.PacketID); ok {
		atomic.AddInt64(&s.Info.Inflight, -1)
		s.hooks.OnQosComplete(cl, pk)
	}

	return nil
}

// processSubscribe processes a Subscribe packet.
func (s *Server) processSubscribe(cl *Client, pk packets.Packet) error {
	pk = s.hooks.OnSubscribe(cl, pk)
	code := packets.CodeSuccess
	if cl.State.Inflight.inboundInUse(pk.PacketID) { // COLONY PATCH P25: the client's ids, not the server's
		code = packets.ErrPacketIdentifierInUse
	}

	filterExisted := make([]bool, len(pk.Filters))
	reasonCodes := make([]byte, len(pk.Filters))
	for i, sub := range pk.Filters {
		if code != packets.CodeSuccess {
			reasonCodes[i] = code.Code // NB 3.9.3 Non-normative 0x91; COLONY PATCH P25: 0x80 for MQTT 3 below
		} else if !IsValidFilter(sub.Filter, false) {
			reasonCodes[i] = packets.ErrTopicFilterInvalid.Code
		} else if tooManyLevels(sub.Filter, s.Options.Capabilities.MaximumTopicLevels) { // COLONY PATCH P15
			s.Refused.TopicLevels.Add(1)
			reasonCodes[i] = packets.ErrTopicFilterInvalid.Code
		} else if limit := s.Options.Capabilities.MaximumClientSubscriptions; limit > 0 &&
			cl.State.Subscriptions.Len() >= limit && !cl.holds(sub.Filter) { // COLONY PATCH P15
			s.Refused.SubscriptionQuota.Add(1)
			reasonCodes[i] = packets.ErrQuotaExceeded.Code
		} else if sub.NoLocal && IsSharedFilter(sub.Filter) {
			reasonCodes[i] = packets.ErrProtocolViolationInvalidSharedNoLocal.Code // [MQTT-3.8.3-4]
		} else if !s.hooks.OnACLCheck(cl, sub.Filter, false) {
			reasonCodes[i] = packets.ErrNotAuthorized.Code
			if s.Options.Capabilities.Compatibilities.ObscureNotAuthorized {
				reasonCodes[i] = packets.ErrUnspecifiedError.Code
			}
		} else {
			isNew := s.Topics.Subscribe(cl.ID, sub) // [MQTT-3.8.4-3]
			if isNew {
				atomic.AddInt64(&s.Info.Subscriptions, 1)
			}
			cl.State.Subscriptions.Add(sub.Filter, sub) // [MQTT-3.2.2-10]

			if sub.Qos > s.Options.Capabilities.MaximumQos {
				sub.Qos = s.Options.Capabilities.MaximumQos // [MQTT-3.2.2-9]
			}

			filterExisted[i] = !isNew
			reasonCodes[i] = sub.Qos // [MQTT-3.9.3-1] [MQTT-3.8.4-7]
		}

		if reasonCodes[i] > packets.CodeGrantedQos2.Code && cl.Properties.ProtocolVersion < 5 { // MQTT3
			reasonCodes[i] = packets.ErrUnspecifiedError.Code
		}
	}

	ack := packets.Packet{ // [MQTT-3.8.4-1] [MQTT-3.8.4-5]
		FixedHeader: packets.FixedHeader{
			Type: packets.Suback,
		},
		PacketID:    pk.PacketID, // [MQTT-2.2.1-6] [MQTT-3.8.4-2]
		ReasonCodes: reasonCodes, // [MQTT-3.8.4-6]
		Properties: packets.Properties{
			User: pk.Properties.User,
		},
	}

	if code.Code >= packets.ErrUnspecifiedError.Code {
		ack.Properties.ReasonString = code.Reason
	}

	s.hooks.OnSubscribed(cl, pk, reasonCodes)
	err := cl.WritePacket(ack)
	if err != nil {
		return err
	}

	for i, sub := range pk.Filters { // [MQTT-3.3.1-9]
		if reasonCodes[i] >= packets.ErrUnspecifiedError.Code {
			continue
		}

		s.publishRetainedToClient(cl, sub, filterExisted[i])
	}

	return nil
}

// processUnsubscribe processes an unsubscribe packet.
func (s *Server) processUnsubscribe(cl *Client, pk packets.Packet) error {
	code := packets.CodeSuccess
	if cl.State.Inflight.inboundInUse(pk.PacketID) { // COLONY PATCH P25: the client's ids, not the server's
		code = packets.ErrPacketIdentifierInUse
	}

	pk = s.hooks.OnUnsubscribe(cl, pk)
	reasonCodes := make([]byte, len(pk.Filters))
	for i, sub := range pk.Filters { // [MQTT-3.10.4-6] [MQTT-3.11.3-1]
		if code != packets.CodeSuccess {
			reasonCodes[i] = code.Code // NB 3.11.3 Non-normative 0x91
			continue
		}

		if q := s.Topics.Unsubscribe(sub.Filter, cl.ID); q {
			atomic.AddInt64(&s.Info.Subscriptions, -1)
			reasonCodes[i] = packets.CodeSuccess.Code
		} else {
			reasonCodes[i] = packets.CodeNoSubscriptionExisted.Code
		}

		cl.State.Subscriptions.Delete(sub.Filter) // [MQTT-3.10.4-2] [MQTT-3.10.4-2] ~[MQTT-3.10.4-3]
	}

	ack := packets.Packet{ // [MQTT-3.10.4-4]
		FixedHeader: packets.FixedHeader{
			Type: packets.Unsuback,
		},
		PacketID:    pk.PacketID, // [MQTT-2.2.1-6]  [MQTT-3.10.4-5]
		ReasonCodes: reasonCodes, // [MQTT-3.11.3-2]
		Properties: packets.Properties{
			User: pk.Properties.User,
		},
	}

	if code.Code >= packets.ErrUnspecifiedError.Code {
		ack.Properties.ReasonString = code.Reason
	}

	s.hooks.OnUnsubscribed(cl, pk)
	return cl.WritePacket(ack)
}

// UnsubscribeClient unsubscribes a client from all of their subscriptions.
func (s *Server) UnsubscribeClient(cl *Client) {
	i := 0
	filterMap := cl.State.Subscriptions.GetAll()
	filters := make([]packets.Subscription, len(filterMap))
	for k := range filterMap {
		cl.State.Subscriptions.Delete(k)
	}

	if cl.IsTakenOver() {
		return
	}

	for k, v := range filterMap {
		if s.Topics.Unsubscribe(k, cl.ID) {
			atomic.AddInt64(&s.Info.Subscriptions, -1)
		}
		filters[i] = v
		i++
	}
	s.hooks.OnUnsubscribed(cl, packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Unsubscribe}, Filters: filters})
}

// processAuth processes an Auth packet.
func (s *Server) processAuth(cl *Client, pk packets.Packet) error {
	_, err := s.hooks.OnAuthPacket(cl, pk)
	if err != nil {
		return err
	}

	return nil
}

// processDisconnect processes a Disconnect packet.
func (s *Server) processDisconnect(cl *Client, pk packets.Packet) error {
	if pk.Properties.SessionExpiryIntervalFlag {
		if pk.Properties.SessionExpiryInterval > 0 && cl.Properties.Props.SessionExpiryInterval == 0 {
			return packets.ErrProtocolViolationZeroNonZeroExpiry
		}

		cl.Properties.Props.SessionExpiryInterval = pk.Properties.SessionExpiryInterval
		cl.Properties.Props.SessionExpiryIntervalFlag = true
	}

	if pk.ReasonCode == packets.CodeDisconnectWillMessage.Code { // [MQTT-3.1.2.5] Non-normative comment
		return packets.CodeDisconnectWillMessage
	}

	s.loop.willDelayed.Delete(cl.ID) // [MQTT-3.1.3-9] [MQTT-3.1.2-8]
	cl.Stop(packets.CodeDisconnect)  // [MQTT-3.14.4-2]

	return nil
}

// DisconnectClient sends a Disconnect packet to a client and then closes the client connection.
func (s *Server) DisconnectClient(cl *Client, code packets.Code) error {
	out := packets.Packet{
		FixedHeader: packets.FixedHeader{
			Type: packets.Disconnect,
		},
		ReasonCode: code.Code,
		Properties: packets.Properties{},
	}

	if code.Code >= packets.ErrUnspecifiedError.Code {
		out.Properties.ReasonString = code.Reason //  // [MQTT-3.14.2-1]
	}

	// We already have a code we are using to disconnect the client, so we are not
	// interested if the write packet fails due to a closed connection (as we are closing it).
	var err error
	if cl.Properties.ProtocolVersion == 5 { // COLONY PATCH P15: 3.1.1 servers send no DISCONNECT; they close
		err = cl.WritePacket(out)
	}
	if !s.Options.Capabilities.Compatibilities.PassiveClientDisconnect {
		cl.Stop(code)
		if code.Code >= packets.ErrUnspecifiedError.Code {
			return code
		}
	}

	return err
}

// publishSysTopics publishes the current values to the server $SYS topics.
// Due to the int to string conversions this method is not as cheap as
// some of the others so the publishing interval should be set appropriately.
func (s *Server) publishSysTopics() {
	pk := packets.Packet{
		FixedHeader: packets.FixedHeader{
			Type:   packets.Publish,
			Retain: true,
		},
		Created: time.Now().Unix(),
	}

	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	atomic.StoreInt64(&s.Info.MemoryAlloc, int64(m.HeapInuse))
	atomic.StoreInt64(&s.Info.Threads, int64(runtime.NumGoroutine()))
	atomic.StoreInt64(&s.Info.Time, time.Now().Unix())
	atomic.StoreInt64(&s.Info.Uptime, time.Now().Unix()-atomic.LoadInt64(&s.Info.Started))
	atomic.StoreInt64(&s.Info.ClientsTotal, int64(s.Clients.Len()))
	atomic.StoreInt64(&s.Info.ClientsDisconnected, atomic.LoadInt64(&s.Info.ClientsTotal)-atomic.LoadInt64(&s.Info.ClientsConnected))

	info := s.Info.Clone()
	topics := map[string]string{
		SysPrefix + "/broker/version":              s.Info.Version,
		SysPrefix + "/broker/time":                 Int64toa(info.Time),
		SysPrefix + "/broker/uptime":               Int64toa(info.Uptime),
		SysPrefix + "/broker/started":              Int64toa(info.Started),
		SysPrefix + "/broker/load/bytes/received":  Int64toa(info.BytesReceived),
		SysPrefix + "/broker/load/bytes/sent":      Int64toa(info.BytesSent),
		SysPrefix + "/broker/clients/connected":    Int64toa(info.ClientsConnected),
		SysPrefix + "/broker/clients/disconnected": Int64toa(info.ClientsDisconnected),
		SysPrefix + "/broker/clients/maximum":      Int64toa(info.ClientsMaximum),
		SysPrefix + "/broker/clients/total":        Int64toa(info.ClientsTotal),
		SysPrefix + "/broker/packets/received":     Int64toa(info.PacketsReceived),
		SysPrefix + "/broker/packets/sent":         Int64toa(info.PacketsSent),
		SysPrefix + "/broker/messages/received":    Int64toa(info.MessagesReceived),
		SysPrefix + "/broker/messages/sent":        Int64toa(info.MessagesSent),
		SysPrefix + "/broker/messages/dropped":     Int64toa(info.MessagesDropped),
		SysPrefix + "/broker/messages/inflight":    Int64toa(info.Inflight),
		SysPrefix + "/broker/retained":             Int64toa(info.Retained),
		SysPrefix + "/broker/subscriptions":        Int64toa(info.Subscriptions),
		SysPrefix + "/broker/system/memory":        Int64toa(info.MemoryAlloc),
		SysPrefix + "/broker/system/threads":       Int64toa(info.Threads),
	}

	for topic, payload := range topics {
		pk.TopicName = topic
		pk.Payload = []byte(payload)
		s.Topics.RetainMessage(pk.Copy(false))
		s.publishToSubscribersNoWait(pk)
	}

	s.hooks.OnSysInfoTick(info)
}

// Close attempts to gracefully shut down the server, all listeners, clients, and stores.
func (s *Server) Close() error {
	close(s.done)
	s.Log.Info("gracefully stopping server")
	s.Listeners.CloseAll(s.closeListenerClients)
	s.hooks.OnStopped()
	s.hooks.Stop()

	s.Log.Info("mochi mqtt server stopped")
	return nil
}

// closeListenerClients closes all clients on the specified listener.
func (s *Server) closeListenerClients(listener string) {
	clients := s.Clients.GetByListener(listener)
	for _, cl := range clients {
		_ = s.DisconnectClient(cl, packets.ErrServerShuttingDown)
	}
}

// willPacket is the PUBLISH of cl's will w; a delayed one carries the time
// it is due in Expiry (COLONY PATCH P38: factored out of sendLWT).
func (s *Server) willPacket(cl *Client, w Will) packets.Packet {
	pk := packets.Packet{
		FixedHeader: packets.FixedHeader{
			Type:   packets.Publish,
			Retain: w.Retain, // [MQTT-3.1.2-14] [MQTT-3.1.2-15]
			Qos:    w.Qos,
		},
		TopicName: w.TopicName,
		Payload:   w.Payload,
		Properties: packets.Properties{
			User: w.User,
		},
		Origin:  cl.ID,
		Created: time.Now().Unix(),
	}
	if cl.Properties.Will.WillDelayInterval > 0 {
		pk.Connect.WillProperties.WillDelayInterval = cl.Properties.Will.WillDelayInterval
		pk.Expiry = time.Now().Unix() + int64(pk.Connect.WillProperties.WillDelayInterval)
	}
	return pk
}

// sendLWT issues an LWT message to a topic when a client disconnects.
func (s *Server) sendLWT(cl *Client) {
	if atomic.LoadUint32(&cl.Properties.Will.Flag) == 0 {
		return
	}

	pk := s.willPacket(cl, s.hooks.OnWill(cl, cl.Properties.Will))

	if cl.Properties.Will.WillDelayInterval > 0 {
		// COLONY PATCH P38: unless a take-over decided its fate already.
		cl.State.willMu.Lock()
		fate := cl.State.willFate
		if fate == 0 && cl.Properties.ProtocolVersion == 5 && cl.Properties.Props.SessionExpiryInterval == 0 {
			// COLONY PATCH P44: the session ends with this connection (a
			// DISCONNECT set its expiry to 0; the cut of the delay to the
			// expiry is made only at CONNECT), so the will goes out now
			// [MQTT-3.1.2-8]; upstream waited for the whole delay.
			fate = willEnded
		}
		if fate == 0 {
			s.loop.willDelayed.Add(cl.ID, pk)
		}
		cl.State.willMu.Unlock()
		if fate != willEnded {
			if fate == willResumed {
				atomic.StoreUint32(&cl.Properties.Will.Flag, 0) // [MQTT-3.1.3-9]
			}
			return
		}
		// the session ended within the delay: the will goes out now [MQTT-3.1.2-8]
	}

	s.sendWill(cl, pk, s.Options.Capabilities.SlowClientPatience, true)
}

// sendWill publishes the will pk, retained by cl if it asks so; sent says
// that cl is the disconnected session the will belongs to, which is told
// it was sent.
func (s *Server) sendWill(cl *Client, pk packets.Packet, patience time.Duration, sent bool) {
	if pk.FixedHeader.Retain {
		s.retainMessage(cl, pk)
	}
	s.publishToSubscribersWait(pk, patience) // [MQTT-3.1.2-8]
	if sent {
		atomic.StoreUint32(&cl.Properties.Will.Flag, 0) // [MQTT-3.1.2-10]
		s.hooks.OnWillSent(cl, pk)
	}
}

// readStore reads in any data from the persistent datastore (if applicable).
func (s *Server) readStore() error {
	if s.hooks.Provides(StoredClients) {
		clients, err := s.hooks.StoredClients()
		if err != nil {
			return fmt.Errorf("failed to load clients; %w", err)
		}
		s.loadClients(clients)
		s.Log.Debug("loaded clients from store", "len", len(clients))
	}

	if s.hooks.Provides(StoredSubscriptions) {
		subs, err := s.hooks.StoredSubscriptions()
		if err != nil {
			return fmt.Errorf("load subscriptions; %w", err)
		}
		s.loadSubscriptions(subs)
		s.Log.Debug("loaded subscriptions from store", "len", len(subs))
	}

	if s.hooks.Provides(StoredInflightMessages) {
		inflight, err := s.hooks.StoredInflightMessages()
		if err != nil {
			return fmt.Errorf("load inflight; %w", err)
		}
		s.loadInflight(inflight)
		s.Log.Debug("loaded inflights from store", "len", len(inflight))
	}

	if s.hooks.Provides(StoredRetainedMessages) {
		retained, err := s.hooks.StoredRetainedMessages()
		if err != nil {
			return fmt.Errorf("load retained; %w", err)
		}
		s.loadRetained(retained)
		s.Log.Debug("loaded retained messages from store", "len", len(retained))
	}

	if s.hooks.Provides(StoredSysInfo) {
		sysInfo, err := s.hooks.StoredSysInfo()
		if err != nil {
			return fmt.Errorf("load server info; %w", err)
		}
		s.loadServerInfo(sysInfo.Info)
		s.Log.Debug("loaded $SYS info from store")
	}

	return nil
}

// loadServerInfo restores server info from the datastore.
func (s *Server) loadServerInfo(v system.Info) {
	if s.Options.Capabilities.Compatibilities.RestoreSysInfoOnRestart {
		atomic.StoreInt64(&s.Info.BytesReceived, v.BytesReceived)
		atomic.StoreInt64(&s.Info.BytesSent, v.BytesSent)
		atomic.StoreInt64(&s.Info.ClientsMaximum, v.ClientsMaximum)
		atomic.StoreInt64(&s.Info.ClientsTotal, v.ClientsTotal)
		atomic.StoreInt64(&s.Info.ClientsDisconnected, v.ClientsDisconnected)
		atomic.StoreInt64(&s.Info.MessagesReceived, v.MessagesReceived)
		atomic.StoreInt64(&s.Info.MessagesSent, v.MessagesSent)
		atomic.StoreInt64(&s.Info.MessagesDropped, v.MessagesDropped)
		atomic.StoreInt64(&s.Info.PacketsReceived, v.PacketsReceived)
		atomic.StoreInt64(&s.Info.PacketsSent, v.PacketsSent)
		atomic.StoreInt64(&s.Info.InflightDropped, v.InflightDropped)
	}
	atomic.StoreInt64(&s.Info.Retained, v.Retained)
	atomic.StoreInt64(&s.Info.Inflight, v.Inflight)
	atomic.StoreInt64(&s.Info.Subscriptions, v.Subscriptions)
}

// loadSubscriptions restores subscriptions from the datastore.
func (s *Server) loadSubscriptions(v []storage.Subscription) {
	for _, sub := range v {
		sb := packets.Subscription{
			Filter:            sub.Filter,
			RetainHandling:    sub.RetainHandling,
			Qos:               sub.Qos,
			RetainAsPublished: sub.RetainAsPublished,
			NoLocal:           sub.NoLocal,
			Identifier:        sub.Identifier,
		}
		if s.Topics.Subscribe(sub.Client, sb) {
			if cl, ok := s.Clients.Get(sub.Client); ok {
				cl.State.Subscriptions.Add(sub.Filter, sb)
			}
		}
	}
}

// loadClients restores clients from the datastore.
func (s *Server) loadClients(v []storage.Client) {
	for _, c := range v {
		cl := s.NewClient(nil, c.Listener, c.ID, false)
		cl.Properties.Username = c.Username
		cl.Properties.Clean = c.Clean
		cl.Properties.ProtocolVersion = c.ProtocolVersion
		cl.Properties.Props = packets.Properties{
			SessionExpiryInterval:     c.Properties.SessionExpiryInterval,
			SessionExpiryIntervalFlag: c.Properties.SessionExpiryIntervalFlag,
			AuthenticationMethod:      c.Properties.AuthenticationMethod,
			AuthenticationData:        c.Properties.AuthenticationData,
			RequestProblemInfoFlag:    c.Properties.RequestProblemInfoFlag,
			RequestProblemInfo:        c.Properties.RequestProblemInfo,
			RequestResponseInfo:       c.Properties.RequestResponseInfo,
			ReceiveMaximum:            c.Properties.ReceiveMaximum,
			TopicAliasMaximum:         c.Properties.TopicAliasMaximum,
			User:                      c.Properties.User,
			MaximumPacketSize:         c.Properties.MaximumPacketSize,
		}
		cl.Properties.Will = Will(c.Will)

		// cancel the context, update cl.State such as disconnected time and stopCause.
		cl.Stop(packets.ErrServerShuttingDown)

		expire := (cl.Properties.ProtocolVersion == 5 && cl.Properties.Props.SessionExpiryInterval == 0) || (cl.Properties.ProtocolVersion < 5 && cl.Properties.Clean)
		s.hooks.OnDisconnect(cl, packets.ErrServerShuttingDown, expire)
		if expire {
			cl.ClearInflights()
			s.UnsubscribeClient(cl)
		} else {
			s.Clients.Add(cl)
			// COLONY PATCH P38: a will not sent (its connection ended
			// without DISCONNECT, and its delay had not passed, or the
			// server stopped first) is part of the session [MQTT 5 4.1]:
			// it waits for its delay again. Upstream kept delayed wills
			// only in memory, and never sent them after a restart.
			if atomic.LoadUint32(&cl.Properties.Will.Flag) == 1 {
				s.loop.willDelayed.Add(cl.ID, s.willPacket(cl, cl.Properties.Will))
			}
		}
	}
}

// loadInflight restores inflight messages from the datastore.
func (s *Server) loadInflight(v []storage.Message) {
	outbound := map[*Client][]packets.Packet{}
	for _, msg := range v {
		if client, ok := s.Clients.Get(msg.Client); ok {
			switch { // COLONY PATCH P25
			case msg.FixedHeader.Type == packets.Pubrec: // the client's own QoS 2 publish
				client.State.Inflight.setInbound(msg.PacketID, msg.Created)
			case outboundFlow(msg.FixedHeader.Type):
				outbound[client] = append(outbound[client], msg.ToPacket())
			}
		}
	}
	// COLONY PATCH P33: the store returns a session's messages by packet
	// id, not in the order they were sent, which the resend keeps (P11).
	// Packet ids are given out in increasing order, wrapping (the counter
	// is carried across take-overs and set here), so the oldest message
	// is the one after the largest gap between the ids in use.
	for client, pks := range outbound {
		sort.Slice(pks, func(a, b int) bool { return pks[a].PacketID < pks[b].PacketID })
		start, gap := 0, -1
		for k := range pks {
			prev := int(pks[(k+len(pks)-1)%len(pks)].PacketID)
			d := int(pks[k].PacketID) - prev
			if d <= 0 {
				d += int(s.Options.Capabilities.maximumPacketID)
			}
			if d > gap {
				start, gap = k, d
			}
		}
		for k := range pks {
			client.State.Inflight.Set(pks[(start+k)%len(pks)])
		}
		atomic.StoreUint32(&client.State.packetID, uint32(pks[(start+len(pks)-1)%len(pks)].PacketID))
	}
}

// loadRetained restores retained messages from the datastore.
func (s *Server) loadRetained(v []storage.Message) {
	for _, msg := range v {
		s.Topics.RetainMessage(msg.ToPacket())
	}
}

// clearExpiredClients deletes all clients which have been disconnected for longer
// than their given expiry intervals.
func (s *Server) clearExpiredClients(dt int64) {
	for id, client := range s.Clients.GetAll() {
		disconnected := client.StopTime()
		if disconnected == 0 {
			continue
		}

		expire := s.Options.Capabilities.MaximumSessionExpiryInterval
		if client.Properties.ProtocolVersion == 5 && client.Properties.Props.SessionExpiryIntervalFlag {
			expire = client.Properties.Props.SessionExpiryInterval
		}

		if disconnected+int64(expire) < dt {
			s.expireClient(id, client)
		}
	}
}

// expireClient ends the disconnected session cl, whose expiry passed,
// unless a connection took it over first. COLONY PATCH P35: upstream told
// the hooks and deleted the client id with nothing to stop a reconnect
// taking the session over in between: the sweep then deleted the new,
// connected client (publishers no longer found it), storage forgot the
// session the client had just resumed, and the expired session's
// subscriptions stayed in the topic tree, where a later connection under
// the id, even with a clean start, got their messages. Now the sweep and a
// take-over claim the session, one of them only; a connection that finds
// it claimed waits for the end (endMu) and starts afresh.
func (s *Server) expireClient(id string, cl *Client) {
	cl.State.endMu.Lock()
	defer cl.State.endMu.Unlock()
	if !cl.State.claimed.CompareAndSwap(false, true) {
		return
	}
	// COLONY PATCH P46: the session ends, so a will still waiting for its
	// delay goes out now, as the session's [MQTT-3.1.2-8]. The delay is
	// cut to the session expiry at CONNECT, so both fall due in the same
	// tick, and when this sweep ran first the will sweep found no client:
	// it published the will as the server's, and the hooks were not told
	// (OnWillSent), so the cluster did not carry it to the other nodes.
	cl.State.willMu.Lock()
	cl.State.willFate = willEnded
	will, due := s.loop.willDelayed.TakeIf(id, func(pk packets.Packet) bool { return pk.Origin == cl.ID })
	cl.State.willMu.Unlock()
	s.UnsubscribeClient(cl)
	cl.State.Inflight.moveTo(nil) // P31: sealed, nothing more goes in
	cl.ClearInflights()
	if due {
		// before the hooks forget the session: told after, storage
		// would write its record back (OnWillSent)
		s.sendWill(cl, will, 0, true)
	}
	s.hooks.OnClientExpired(cl)
	s.Clients.deleteIf(id, cl) // [MQTT-4.1.0-2]
}

// clearExpiredRetainedMessage deletes retained messages from topics if they have expired.
func (s *Server) clearExpiredRetainedMessages(now int64) {
	for filter, pk := range s.Topics.Retained.GetAll() {
		expired := pk.ProtocolVersion == 5 && pk.Expiry > 0 && pk.Expiry < now // [MQTT-3.3.2-5]

		// If the maximum message expiry interval is set (greater than 0), and the message
		// retention period exceeds the maximum expiry, the message will be forcibly removed.
		enforced := s.Options.Capabilities.MaximumMessageExpiryInterval > 0 &&
			now-pk.Created > s.Options.Capabilities.MaximumMessageExpiryInterval

		if expired || enforced {
			s.Topics.Retained.Delete(filter)
			s.hooks.OnRetainedExpired(filter)
		}
	}
}

// clearExpiredInflights deletes any inflight messages which have expired.
func (s *Server) clearExpiredInflights(now int64) {
	for _, client := range s.Clients.GetAll() {
		if deleted := client.ClearExpiredInflights(now, s.Options.Capabilities.MaximumMessageExpiryInterval); len(deleted) > 0 {
			for _, id := range deleted {
				s.hooks.OnQosDropped(client, packets.Packet{PacketID: id})
			}
		}
	}
}

// sendDelayedLWT sends any LWT messages which have reached their issue time.
func (s *Server) sendDelayedLWT(dt int64) {
	for id, pk := range s.loop.willDelayed.GetAll() {
		if dt > pk.Expiry {
			// COLONY PATCH P38: taken, not read and deleted later: a
			// connection resuming the session meanwhile cancels it.
			pk, ok := s.loop.willDelayed.TakeIf(id, func(pk packets.Packet) bool { return dt > pk.Expiry })
			if ok {
				s.publishWill(pk, 0)
			}
		}
	}
}

// Fates of a connection's delayed will decided by a take-over. COLONY PATCH P38.
const (
	willResumed uint8 = 1 + iota // the session goes on: the will is cancelled [MQTT-3.1.3-9]
	willEnded                    // the session ended: the will goes out at once [MQTT-3.1.2-8]
)

// publishWill publishes a delayed will taken from willDelayed. COLONY
// PATCH P38: the client found under its id is told it was sent only if it
// is still the disconnected session the will belongs to; upstream cleared
// the will of whatever client had the id, a new connection's included.
func (s *Server) publishWill(pk packets.Packet, patience time.Duration) {
	cl, ok := s.Clients.Get(pk.Origin)
	if !ok {
		cl = s.inlineClient
	}
	s.sendWill(cl, pk, patience, ok && cl.Closed())
}

// Int64toa converts an int64 to a string.
func Int64toa(v int64) string {
	return strconv.FormatInt(v, 10)
}

// minimum differs from built-in min, it returns minimum of the non-zero value a and b.
// If both a and b are zero value, it reutrns 0.
func minimum(a, b int64) (m int64) {
	if a != 0 {
		m = a
		if b != 0 && b < a {
			m = b
		}
		return
	}

	if b != 0 {
		m = b
	}
	return
}
