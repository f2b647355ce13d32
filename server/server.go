package server

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/mochi-mqtt/server/v2/system"
	"github.com/rs/zerolog"

	"github.com/colonymq/colony/rpc"
)

// ErrNotStarted is returned by calls that need a running server.
var ErrNotStarted = errors.New("server not started")

// ErrInvalidOptions reports options that cannot work together.
var ErrInvalidOptions = errors.New("invalid server options")

// Listener names, as used by Options.Listeners, Addr and log lines.
const (
	ListenerMQTT = "mqtt"
	ListenerTLS  = "tls"
	ListenerWS   = "ws"
)

// Off disables a listener when used as its address.
const Off = "off"

// Listeners holds the address of each client-facing listener ("off" or "" disables it).
type Listeners struct {
	MQTT string // MQTT over TCP
	TLS  string // MQTT over TLS; needs TLS.CertFile and TLS.KeyFile
	WS   string // MQTT over WebSocket
}

// TLS holds the certificate for the TLS listener.
type TLS struct {
	CertFile string
	KeyFile  string
	// ClientCAFile, when set, requests client certificates signed by this CA.
	ClientCAFile string
}

// Auth configures authentication and access control.
type Auth struct {
	// AllowAnonymous lets clients connect without credentials. nil means:
	// only on listeners bound to a loopback address (Mosquitto 2's rule).
	AllowAnonymous *bool
	PasswordFile   string // "user:bcrypt-hash" lines; empty: no users
	ACLFile        string // Mosquitto acl_file syntax; empty: all topics allowed
}

// Limits bounds what one client or the whole server may use.
type Limits struct {
	MaxPacketSize     uint32        // bytes; larger packets close the connection (0x95)
	MaxConnections    int64         // concurrent clients; more are refused (0x89 / 3)
	ConnectTimeout    time.Duration // time from TCP accept to CONNECT
	MaxInflight       uint16        // unacknowledged QoS 1/2 messages per connected client
	MaxSessionQueue   int           // QoS 1/2 messages kept for a disconnected persistent session
	ReceiveMaximum    uint16        // unacknowledged inbound QoS 1/2 per client
	ClientWriteQueue  int32         // outbound packets queued per client
	MaxSessionExpiry  uint32        // seconds a disconnected persistent session is kept
	RPCTimeout        time.Duration // deadline of a client request to a module
	RPCConcurrency    int           // client requests executing at once, server-wide
	MaxTopicAliasSize uint16        // topic aliases per client (MQTT 5)
	// SlowClientTimeout is how long publishers wait for a subscriber whose
	// queue is full to drain before it counts as stalled (QoS 0 to it is
	// then dropped and counted; a QoS 1/2 subscriber is disconnected and its
	// session keeps the messages).
	SlowClientTimeout time.Duration
	MaxTopicLevels    int     // levels of a topic or filter; more: PUBLISH closes (0x90), SUBSCRIBE refused (0x8F); < 0: no limit
	MaxSubscriptions  int     // filters one client may hold; more are refused (SUBACK 0x97); < 0: no limit
	PublishRate       float64 // PUBLISH packets per second per client; a faster client is read more slowly; < 0: no limit
	PublishBurst      int     // publishes a client may send at once above PublishRate
	// MaxKeepalive caps the keep-alive a client may ask for. MQTT 5 clients
	// asking for more (or 0) are told this one (CONNACK Server Keep Alive);
	// 3.1.1 clients asking for more are refused (0x02, as Mosquitto does),
	// and those asking for 0 are closed after 1.5 x MaxKeepalive of silence.
	MaxKeepalive time.Duration
}

// Options configures a Server. Zero values take the defaults named on each field of Limits via DefaultLimits.
type Options struct {
	Node      string
	Listeners Listeners
	TLS       TLS
	Auth      Auth
	Limits    Limits
	// SingleLogin disconnects a user's older connections when a new one is bound to the same user id.
	SingleLogin bool
	// MQANTTopics also accepts mqant-style requests "<module>/<handler>/<msgid>" for served modules.
	MQANTTopics bool
	// RPC serves client requests to modules; nil answers every request with unavailable.
	RPC *rpc.Client
	// Serves reports whether a module exists, for mqant-style topics; nil: none.
	Serves func(module string) bool
	// Cluster reaches users and clients connected to other nodes; nil on a
	// single node. Pushes, kicks and single login then span the cluster.
	Cluster Cluster
	// Gateways names the listeners of protocol gateways that feed clients
	// in through ServeConn (the MQTT-SN gateway's "mqttsn" and
	// "mqttsn-dtls"), each with the address it binds, so that the
	// anonymous rule of the server's own listeners (loopback only unless
	// Auth.AllowAnonymous) applies to them too.
	Gateways map[string]string
	// Hooks are added to the engine after Colony's own (e.g. the store hook).
	Hooks  []mqtt.Hook
	Logger zerolog.Logger
}

// DefaultLimits returns the limits used where Options.Limits leaves zeros.
func DefaultLimits() Limits {
	return Limits{
		MaxPacketSize:     1 << 20,
		MaxConnections:    100_000,
		ConnectTimeout:    10 * time.Second,
		MaxInflight:       1024,
		MaxSessionQueue:   10_000,
		ReceiveMaximum:    1024,
		ClientWriteQueue:  1024,
		MaxSessionExpiry:  7 * 24 * 3600,
		RPCTimeout:        10 * time.Second,
		RPCConcurrency:    1024,
		MaxTopicAliasSize: 1024,
		SlowClientTimeout: 5 * time.Second,
		MaxTopicLevels:    128,
		MaxSubscriptions:  1000,
		PublishRate:       20_000,
		PublishBurst:      20_000,
		MaxKeepalive:      time.Hour,
	}
}

func (l *Limits) fill() {
	d := DefaultLimits()
	orDefault(&l.MaxPacketSize, d.MaxPacketSize)
	orDefault(&l.MaxConnections, d.MaxConnections)
	orDefault(&l.ConnectTimeout, d.ConnectTimeout)
	orDefault(&l.MaxInflight, d.MaxInflight)
	orDefault(&l.MaxSessionQueue, d.MaxSessionQueue)
	orDefault(&l.ReceiveMaximum, d.ReceiveMaximum)
	orDefault(&l.ClientWriteQueue, d.ClientWriteQueue)
	orDefault(&l.MaxSessionExpiry, d.MaxSessionExpiry)
	orDefault(&l.RPCTimeout, d.RPCTimeout)
	orDefault(&l.RPCConcurrency, d.RPCConcurrency)
	orDefault(&l.MaxTopicAliasSize, d.MaxTopicAliasSize)
	orDefault(&l.SlowClientTimeout, d.SlowClientTimeout)
	orDefault(&l.MaxTopicLevels, d.MaxTopicLevels)
	orDefault(&l.MaxSubscriptions, d.MaxSubscriptions)
	orDefault(&l.PublishRate, d.PublishRate)
	orDefault(&l.PublishBurst, max(1, int(l.PublishRate)))
	orDefault(&l.MaxKeepalive, d.MaxKeepalive)
	l.MaxKeepalive = min(l.MaxKeepalive, 65535*time.Second)
	// A negative limit switches it off (the engine's 0).
	l.MaxTopicLevels, l.MaxSubscriptions, l.PublishRate = max(l.MaxTopicLevels, 0), max(l.MaxSubscriptions, 0), max(l.PublishRate, 0)
}

// orDefault sets *v to d when *v is the zero value.
func orDefault[T comparable](v *T, d T) {
	var zero T
	if *v == zero {
		*v = d
	}
}

// Server is Colony's MQTT gateway: the embedded engine, its listeners,
// authentication, the user/session layer and client requests to modules.
type Server struct {
	opts      Options
	log       zerolog.Logger
	mq        *mqtt.Server
	listeners []*listener
	sessions  *sessions
	gateway   *gateway
	auth      *authHook
	inline    *mqtt.Client
	remote    *mqtt.Client // publishes messages from other nodes (PublishRemote)
	subID     atomic.Int64
	started   atomic.Bool
	closeOnce sync.Once
	gwConns   gatewayConns // connections of in-process protocol gateways (ServeConn)

	panics          atomic.Int64
	refusedConnects atomic.Int64 // CONNECTs refused by limitsHook
	denied          atomic.Int64
}

// New builds a server from opts: it validates them and reads the password and
// ACL files, but binds nothing until Start.
func New(opts Options) (*Server, error) {
	opts.Limits.fill()
	s := &Server{opts: opts, log: opts.Logger.With().Str("component", "server").Logger()}

	caps := mqtt.NewDefaultServerCapabilities()
	caps.MaximumPacketSize = opts.Limits.MaxPacketSize
	caps.MaximumClients = opts.Limits.MaxConnections
	caps.MaximumInflight = opts.Limits.MaxInflight
	caps.MaximumSessionQueue = opts.Limits.MaxSessionQueue
	caps.ReceiveMaximum = opts.Limits.ReceiveMaximum
	caps.MaximumClientWritesPending = opts.Limits.ClientWriteQueue
	caps.MaximumSessionExpiryInterval = opts.Limits.MaxSessionExpiry
	caps.TopicAliasMaximum = opts.Limits.MaxTopicAliasSize
	caps.SlowClientPatience = opts.Limits.SlowClientTimeout
	caps.MaximumTopicLevels = opts.Limits.MaxTopicLevels
	caps.MaximumClientSubscriptions = opts.Limits.MaxSubscriptions
	caps.MaximumPublishRate = opts.Limits.PublishRate
	caps.PublishBurst = opts.Limits.PublishBurst
	// Strict MQTT 5 clients (paho) reject acks that echo the publisher's user properties.
	caps.Compatibilities.NoInheritedPropertiesOnAck = true

	// The engine narrates routine steps (hooks added, listeners attached) at
	// info; Colony logs its own version of those, so below debug only the
	// engine's warnings and errors get through.
	engineLog := opts.Logger.With().Str("component", "engine").Logger()
	if engineLog.GetLevel() > zerolog.DebugLevel {
		engineLog = engineLog.Level(max(engineLog.GetLevel(), zerolog.WarnLevel))
	}
	s.mq = mqtt.New(&mqtt.Options{
		Capabilities:           caps,
		Logger:                 slog.New(zerolog.NewSlogHandler(engineLog)),
		InlineClient:           true,
		SysTopicResendInterval: 10,
	})
	s.inline, _ = s.mq.Clients.Get(mqtt.InlineClientId)
	// Not added to the engine's clients: it never subscribes and has no session.
	s.remote = s.mq.NewClient(nil, mqtt.LocalListener, ClusterClientID, true)
	s.remote.Properties.ProtocolVersion = 5 // keeps MQTT 5 properties and message expiry

	ah, err := s.newAuthHook()
	if err != nil {
		return nil, err
	}
	s.auth = ah
	ah.vouched = s.vouchedIdentity
	s.sessions = newSessions(s)
	ah.user = s.sessions.guardUser
	s.gateway = newGateway(s)
	for _, h := range append([]mqtt.Hook{&limitsHook{s: s}, ah, s.sessions, s.gateway}, opts.Hooks...) {
		if err := s.mq.AddHook(h, nil); err != nil {
			return nil, fmt.Errorf("add hook %s: %w", h.ID(), err)
		}
	}

	tlsConf, err := loadTLS(opts)
	if err != nil {
		return nil, err
	}
	for _, l := range []struct{ id, proto, addr string }{
		{ListenerMQTT, "tcp", opts.Listeners.MQTT},
		{ListenerTLS, "tls", opts.Listeners.TLS},
		{ListenerWS, "ws", opts.Listeners.WS},
	} {
		if l.addr == "" || l.addr == Off {
			continue
		}
		var tc *tls.Config
		if l.proto == "tls" {
			tc = tlsConf
		}
		ln := newListener(l.id, l.proto, l.addr, tc, opts.Limits.ConnectTimeout, opts.Logger, func() { s.panics.Add(1) })
		ln.parkable = s.mq.EstablishParkable
		s.listeners = append(s.listeners, ln)
	}
	return s, nil
}

func (s *Server) newAuthHook() (*authHook, error) {
	a := s.opts.Auth
	h := &authHook{onDenied: func() { s.denied.Add(1) }}
	if a.PasswordFile != "" {
		p, err := LoadPasswords(a.PasswordFile)
		if err != nil {
			return nil, err
		}
		h.passwords = p
	}
	if a.ACLFile != "" {
		acl, err := LoadACL(a.ACLFile)
		if err != nil {
			return nil, err
		}
		h.acl = acl
	}
	loopback := map[string]bool{
		ListenerMQTT: isLoopback(s.opts.Listeners.MQTT),
		ListenerTLS:  isLoopback(s.opts.Listeners.TLS),
		ListenerWS:   isLoopback(s.opts.Listeners.WS),
	}
	for name, addr := range s.opts.Gateways {
		loopback[name] = isLoopback(addr)
	}
	h.anonymous = func(listener string) bool {
		if a.AllowAnonymous != nil {
			return *a.AllowAnonymous
		}
		return loopback[listener]
	}
	h.claims = func(listener string) bool {
		return h.passwords == nil && loopback[listener] && h.anonymous(listener)
	}
	if a.AllowAnonymous == nil && h.passwords == nil {
		for id, addr := range map[string]string{ListenerMQTT: s.opts.Listeners.MQTT, ListenerTLS: s.opts.Listeners.TLS, ListenerWS: s.opts.Listeners.WS} {
			if addr != "" && addr != Off && !loopback[id] {
				return nil, fmt.Errorf("listener %s on %s is not loopback, so clients must authenticate, but no password file is set "+
					"(set auth.password_file, or auth.allow_anonymous = true): %w", id, addr, ErrInvalidOptions)
			}
		}
	}
	return h, nil
}

// isLoopback reports whether addr binds only loopback interfaces.
func isLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func loadTLS(opts Options) (*tls.Config, error) {
	if opts.Listeners.TLS == "" || opts.Listeners.TLS == Off {
		return nil, nil
	}
	if opts.TLS.CertFile == "" || opts.TLS.KeyFile == "" {
		return nil, fmt.Errorf("tls listener needs tls.cert_file and tls.key_file: %w", ErrInvalidOptions)
	}
	cert, err := tls.LoadX509KeyPair(opts.TLS.CertFile, opts.TLS.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("load tls certificate: %w", err)
	}
	conf := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12,
		// TLS 1.2 with forward secrecy and AEAD only (TLS 1.3's suites are all such);
		// Go's defaults still include CBC suites with SHA-1 MACs.
		CipherSuites: []uint16{
			tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
			tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384, tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
			tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256, tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
		}}
	if opts.TLS.ClientCAFile != "" {
		pool, err := loadCertPool(opts.TLS.ClientCAFile)
		if err != nil {
			return nil, err
		}
		conf.ClientCAs = pool
		conf.ClientAuth = tls.VerifyClientCertIfGiven
	}
	return conf, nil
}

// Start binds every listener, restores stored sessions and begins serving.
// If any listener cannot bind, those already bound are closed again.
func (s *Server) Start() error {
	for i, l := range s.listeners {
		if err := s.mq.AddListener(l); err != nil {
			for _, done := range s.listeners[:i] {
				done.Close(func(string) {})
			}
			return err
		}
		s.log.Info().Str("listener", l.id).Str("addr", l.Address()).Msg("listening")
	}
	if err := s.mq.Serve(); err != nil {
		s.closeListeners()
		return fmt.Errorf("start engine: %w", err)
	}
	s.started.Store(true)
	return nil
}

func (s *Server) closeListeners() {
	for _, l := range s.listeners {
		l.Close(func(string) {})
	}
}

// Shutdown lets executing client requests finish and answer (new ones are
// refused with unavailable) until ctx ends, then disconnects every client,
// closes the listeners and stops the engine's hooks, which flushes the store
// hook. It returns ctx's error if requests had to be cut short.
func (s *Server) Shutdown(ctx context.Context) error {
	var err error
	s.closeOnce.Do(func() {
		if !s.started.Load() {
			s.closeListeners()
			return
		}
		s.closeGateways()
		err = s.gateway.drain(ctx)
		// Replies and pushes are queued, not written by their callers
		// (PATCHES.md, P19): let them out before the connections close,
		// for no longer than a client may take to drain before it counts
		// as stalled.
		fctx, cancel := context.WithTimeout(ctx, s.opts.Limits.SlowClientTimeout)
		if ferr := s.mq.FlushClients(fctx); ferr != nil {
			s.log.Warn().Err(ferr).Msg("closing connections with messages still queued for them")
		}
		cancel()
		if cerr := s.mq.Close(); cerr != nil {
			err = errors.Join(err, fmt.Errorf("close engine: %w", cerr))
		}
		for _, l := range s.listeners {
			l.conns.Wait()
		}
	})
	return err
}

// Addr returns the bound address of a listener (ListenerMQTT, ListenerTLS,
// ListenerWS), or "" if it is off.
func (s *Server) Addr(name string) string {
	for _, l := range s.listeners {
		if l.id == name {
			return l.Address()
		}
	}
	return ""
}

// Stats is a snapshot of the gateway's counters.
type Stats struct {
	Info           system.Info
	Panics         int64 // connections closed by a recovered panic
	ACLDenied      int64 // publishes/subscriptions/deliveries refused by the ACL
	RPCRequests    int64 // client requests to modules
	RPCErrors      int64 // requests answered with an error
	RPCInFlight    int64 // requests executing now
	UsersBound     int64 // connections bound to a user id
	PushesDropped  int64 // pushes that found no connection
	PushesRefused  int64 // QoS 1 pushes refused by a client's full queue (ErrSlowClient)
	RepliesDropped int64 // replies that could not be sent
	Limits         LimitStats
}

// LimitStats counts what the limits refused or closed.
type LimitStats struct {
	ConnectTimeouts    int64 // sockets closed for sending no CONNECT within Limits.ConnectTimeout
	ConnectionsRefused int64 // CONNECTs refused at Limits.MaxConnections
	ConnectsRefused    int64 // CONNECTs refused for a reserved client id or a keep-alive above Limits.MaxKeepalive
	PacketsTooLarge    int64 // connections closed for a packet above Limits.MaxPacketSize
	MalformedPackets   int64 // connections closed for a malformed packet or a protocol error
	ReceiveMaximum     int64 // connections closed for too many unacknowledged inbound QoS 2 messages
	TopicLevels        int64 // topics and filters refused for more than Limits.MaxTopicLevels levels
	SubscriptionQuota  int64 // filters refused at Limits.MaxSubscriptions
	PublishesThrottled int64 // publishes that had to wait for Limits.PublishRate
}

// Stats returns the current counters.
func (s *Server) Stats() Stats {
	st := Stats{
		Info:      *s.mq.Info.Clone(),
		Panics:    s.panics.Load(),
		ACLDenied: s.denied.Load(),
	}
	r := &s.mq.Refused
	st.Limits = LimitStats{
		ConnectTimeouts: r.ConnectTimeouts.Load(), ConnectionsRefused: r.ConnectionsRefused.Load(),
		ConnectsRefused: s.refusedConnects.Load(), PacketsTooLarge: r.PacketsTooLarge.Load(),
		MalformedPackets: r.MalformedPackets.Load(), ReceiveMaximum: r.ReceiveMaximum.Load(),
		TopicLevels: r.TopicLevels.Load(), SubscriptionQuota: r.SubscriptionQuota.Load(),
		PublishesThrottled: r.PublishesThrottled.Load(),
	}
	st.RPCRequests, st.RPCErrors, st.RPCInFlight, st.RepliesDropped = s.gateway.stats()
	st.UsersBound, st.PushesDropped, st.PushesRefused = s.sessions.stats()
	return st
}

// Publish sends a message to the topic's subscribers as the server itself,
// bypassing the ACL (module code is trusted).
func (s *Server) Publish(topic string, payload []byte, retain bool, qos byte) error {
	if err := s.mq.Publish(topic, payload, retain, qos); err != nil {
		return fmt.Errorf("publish %s: %w", topic, err)
	}
	return nil
}

// Outgoing is a message the server publishes with MQTT 5 properties
// (PublishMessage). MQTT 3.1.1 subscribers get topic and payload only.
type Outgoing struct {
	Topic           string
	Payload         []byte
	QoS             byte
	Retain          bool
	ResponseTopic   string // where the receiver should answer
	CorrelationData []byte // echoed in the answer, to match it to this message
	ContentType     string
	MessageExpiry   uint32 // seconds; 0: does not expire
}

// PublishMessage sends m to the topic's subscribers as the server itself,
// bypassing the ACL, with its MQTT 5 properties.
func (s *Server) PublishMessage(m Outgoing) error {
	if !mqtt.IsValidFilter(m.Topic, true) {
		return fmt.Errorf("publish %s: %w", m.Topic, packets.ErrTopicNameInvalid)
	}
	if m.ResponseTopic != "" && !mqtt.IsValidFilter(m.ResponseTopic, true) {
		return fmt.Errorf("publish %s: response topic %q: %w", m.Topic, m.ResponseTopic, packets.ErrTopicNameInvalid)
	}
	qos := min(m.QoS, 2)
	err := s.mq.InjectPacket(s.inline, packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: qos, Retain: m.Retain},
		TopicName:   m.Topic,
		Payload:     m.Payload,
		Properties: packets.Properties{ResponseTopic: m.ResponseTopic, CorrelationData: m.CorrelationData,
			ContentType: m.ContentType, MessageExpiryInterval: m.MessageExpiry},
		PacketID: uint16(qos),
	})
	if err != nil {
		return fmt.Errorf("publish %s: %w", m.Topic, err)
	}
	return nil
}

// Message is a publish seen by a module subscription.
type Message struct {
	Topic    string
	Payload  []byte
	QoS      byte
	Retain   bool
	ClientID string // publisher's client id; "inline" for the server itself
	// ResponseTopic and CorrelationData are the MQTT 5 request/response
	// properties of the publish, if it had them.
	ResponseTopic   string
	CorrelationData []byte
}

// Subscribe delivers matching publishes to fn, which runs on the publisher's
// goroutine and must not block. It returns a function that cancels the subscription.
func (s *Server) Subscribe(filter string, fn func(Message)) (cancel func(), err error) {
	id := int(s.subID.Add(1))
	err = s.mq.Subscribe(filter, id, func(_ *mqtt.Client, _ packets.Subscription, pk packets.Packet) {
		fn(Message{Topic: pk.TopicName, Payload: pk.Payload, QoS: pk.FixedHeader.Qos, Retain: pk.FixedHeader.Retain, ClientID: pk.Origin,
			ResponseTopic: pk.Properties.ResponseTopic, CorrelationData: pk.Properties.CorrelationData})
	})
	if err != nil {
		return nil, fmt.Errorf("subscribe %s: %w", filter, err)
	}
	var once sync.Once
	return func() {
		once.Do(func() {
			if err := s.mq.Unsubscribe(filter, id); err != nil {
				s.log.Debug().Err(err).Str("filter", filter).Msg("unsubscribe")
			}
		})
	}, nil
}
