package server

import (
	"errors"
	"fmt"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// ErrNoClient reports that no connection with that client id is open.
var ErrNoClient = errors.New("no such connected client")

// ErrSlowClient reports a push that found the client's outbound queue (or,
// at QoS 1, its window of unacknowledged messages) full: the client reads
// more slowly than it is sent to. Nothing waited and nothing was kept: a
// QoS 0 push was dropped (counted with the other QoS 0 drops, Stats.Info.
// MessagesDropped), a QoS 1 push was refused (Stats.PushesRefused), and
// the caller decides whether it matters, e.g. sends the state again later.
var ErrSlowClient = errors.New("client too slow: its queue is full")

// EventKind says what happened to a connection.
type EventKind int

// Connection events delivered to Watch callbacks.
const (
	Connected    EventKind = iota + 1 // a client finished CONNECT
	Disconnected                      // a client's connection ended
	UserBound                         // a connection was bound to a user id
	// RemoteOnline: in a cluster, a user got its first connection on
	// another node (Event.Node); ClientID is empty.
	RemoteOnline
	// RemoteOffline: a user lost its last connection on another node,
	// or that node stopped, or was not heard from for too long.
	RemoteOffline
	Subscribed // a client's SUBSCRIBE was granted for Event.Filters
)

// String returns the event name.
func (k EventKind) String() string {
	switch k {
	case Connected:
		return "connected"
	case Disconnected:
		return "disconnected"
	case UserBound:
		return "user_bound"
	case RemoteOnline:
		return "remote_online"
	case RemoteOffline:
		return "remote_offline"
	case Subscribed:
		return "subscribed"
	}
	return fmt.Sprintf("event(%d)", int(k))
}

// Event describes a connection change.
type Event struct {
	Kind     EventKind
	ClientID string
	UserID   string // "" when not bound
	Username string // from CONNECT
	Listener string
	Remote   string
	Time     time.Time
	Node     string   // RemoteOnline, RemoteOffline: the other node; "" for this node's events
	Filters  []string // Subscribed: the filters granted
}

// conn is Colony's view of one open connection.
type conn struct {
	cl      *mqtt.Client
	user    string
	unbound bool           // a module unbound it: its username no longer counts (guardUser)
	values  map[string]any // made by the first SetValue: most connections have none
	// ended is set, and gone (made only for someone waiting, to keep idle
	// connections small) closed, once the engine has reported the
	// disconnect; both under sessions.mu.
	ended bool
	gone  chan struct{}
}

// done returns a channel closed once the engine has reported c's
// disconnect. The caller holds h.mu.
func (c *conn) done() <-chan struct{} {
	if c.gone == nil {
		c.gone = make(chan struct{})
		if c.ended {
			close(c.gone)
		}
	}
	return c.gone
}

// sessions binds connections to user ids and keeps per-session values. It is
// a hook so it sees connections come and go in the engine's own order.
type sessions struct {
	mqtt.HookBase
	s        *Server
	mu       sync.RWMutex
	conns    map[string]*conn            // client id -> open connection
	users    map[string]map[string]*conn // user id -> client id -> connection
	watchers map[int]func(Event)
	nextW    int
	bound    atomic.Int64
	dropped  atomic.Int64
	refused  atomic.Int64 // QoS 1 pushes refused by a full queue (ErrSlowClient)
	// away maps the client id of a persistent session whose connection
	// ended to the user it was bound to, so topic guards still know whose
	// deliveries the session may queue; forgotten when the session
	// expires, is taken over or connects again.
	away map[string]string
}

func newSessions(s *Server) *sessions {
	return &sessions{s: s, conns: map[string]*conn{}, users: map[string]map[string]*conn{}, away: map[string]string{},
		watchers: map[int]func(Event){}}
}

var _ mqtt.Hook = (*sessions)(nil)

func (h *sessions) ID() string { return "colony-sessions" }

func (h *sessions) Provides(b byte) bool {
	return b == mqtt.OnSessionEstablished || b == mqtt.OnDisconnect || b == mqtt.OnClientExpired || b == mqtt.OnSubscribed
}

// OnSubscribed tells watchers which filters a client was granted, so a
// module can send what waited for the client once it listens.
func (h *sessions) OnSubscribed(cl *mqtt.Client, pk packets.Packet, codes []byte) {
	if cl.Net.Inline {
		return
	}
	var filters []string
	for i, sub := range pk.Filters {
		if i < len(codes) && codes[i] < 0x80 {
			filters = append(filters, sub.Filter)
		}
	}
	if len(filters) > 0 {
		h.emitFilters(Subscribed, cl, "", filters)
	}
}

func (h *sessions) OnSessionEstablished(cl *mqtt.Client, _ packets.Packet) {
	c := &conn{cl: cl}
	h.mu.Lock()
	if old, ok := h.conns[cl.ID]; ok {
		h.unbindLocked(old)
		if !cl.Properties.Clean { // a resumed session keeps its values
			c.values = old.values
		}
	}
	h.conns[cl.ID] = c
	delete(h.away, cl.ID)
	h.mu.Unlock()
	h.emit(Connected, cl, "")
	// An authenticator's identity, or else a username checked against the
	// password file or vouched for by a gateway's transport, is one the server vouches for, so it becomes the user
	// id until a module rebinds.
	if id, ok := h.s.auth.ids.of(cl); ok {
		if id.UserID != "" {
			if err := h.bind(cl.ID, id.UserID, nil); err != nil {
				h.s.log.Debug().Err(err).Str("client", cl.ID).Msg("bind user")
			}
		}
	} else if user := string(cl.Properties.Username); user != "" && h.s.checkedUsername(cl) {
		if err := h.bind(cl.ID, user, nil); err != nil {
			h.s.log.Debug().Err(err).Str("client", cl.ID).Msg("bind user")
		}
	}
}

func (h *sessions) OnDisconnect(cl *mqtt.Client, _ error, expire bool) {
	if expire {
		defer h.s.auth.ids.forget(cl)
	}
	h.mu.Lock()
	c, ok := h.conns[cl.ID]
	if !ok || c.cl != cl { // already replaced by a newer connection with this id
		h.mu.Unlock()
		return
	}
	delete(h.conns, cl.ID)
	user := c.user
	if expire || user == "" {
		delete(h.away, cl.ID)
	} else {
		h.away[cl.ID] = user
	}
	h.unbindLocked(c)
	c.ended = true
	if c.gone != nil {
		close(c.gone)
	}
	h.mu.Unlock()
	h.emit(Disconnected, cl, user)
}

func (h *sessions) OnClientExpired(cl *mqtt.Client) {
	h.s.auth.ids.forget(cl)
	h.mu.Lock()
	delete(h.away, cl.ID)
	h.mu.Unlock()
}

// guardUser returns the user id that %u stands for in topic guards (see
// TopicGuard) for cl: the user bound to its connection; for a persistent
// session whose client is away, the user it was bound to, so deliveries
// queued for it meanwhile pass; and where the server checks passwords, the
// username, which is what the connection is (or is about to be) bound to
// unless a module unbound it. That last rule also covers sessions restored
// from the store, whose bindings did not survive the restart.
func (h *sessions) guardUser(cl *mqtt.Client) string {
	h.mu.RLock()
	c, connected := h.conns[cl.ID]
	var user string
	unbound := false
	if connected {
		user, unbound = c.user, c.unbound
	} else {
		user = h.away[cl.ID]
	}
	h.mu.RUnlock()
	if user == "" && !unbound {
		if id, ok := h.s.auth.ids.of(cl); ok {
			return id.UserID
		}
	}
	if user == "" && !unbound && h.s.checkedUsername(cl) {
		user = string(cl.Properties.Username)
	}
	return user
}

func (h *sessions) unbindLocked(c *conn) {
	if c.user == "" {
		return
	}
	if m := h.users[c.user]; m != nil && m[c.cl.ID] == c {
		delete(m, c.cl.ID)
		h.bound.Add(-1)
		if len(m) == 0 {
			delete(h.users, c.user)
			if h.s.opts.Cluster != nil {
				h.s.opts.Cluster.UserPresent(c.user, false)
			}
		}
	}
	// c.user stays: a connection on its way out still reports who it was.
}

// bind binds a connection to user ("" unbinds); check, when not nil,
// vets the connection first, under the lock.
func (h *sessions) bind(clientID, user string, check func(*conn) error) error {
	h.mu.Lock()
	c, ok := h.conns[clientID]
	if !ok {
		h.mu.Unlock()
		return fmt.Errorf("bind %q to user %q: %w", clientID, user, ErrNoClient)
	}
	if check != nil {
		if err := check(c); err != nil {
			h.mu.Unlock()
			return err
		}
	}
	h.unbindLocked(c)
	c.user = ""
	c.unbound = user == ""
	var others []*mqtt.Client
	if h.s.opts.SingleLogin && user != "" {
		// Unbind now rather than when their sockets close, so pushes and
		// ClientsOf see only the new connection from this moment on.
		for _, o := range h.users[user] {
			others = append(others, o.cl)
			h.unbindLocked(o)
		}
	}
	if user != "" {
		m := h.users[user]
		if m == nil {
			m = map[string]*conn{}
			h.users[user] = m
			if h.s.opts.Cluster != nil {
				h.s.opts.Cluster.UserPresent(user, true)
			}
		}
		m[clientID] = c
		c.user = user
		h.bound.Add(1)
	}
	h.mu.Unlock()
	for _, o := range others {
		h.s.kick(o, reasonSingleLogin)
	}
	if h.s.opts.SingleLogin && user != "" && h.s.opts.Cluster != nil {
		h.s.opts.Cluster.KickUser(user, reasonSingleLogin)
	}
	if user != "" {
		h.emit(UserBound, c.cl, user)
	}
	return nil
}

// reasonSingleLogin is the disconnect reason of a user's older connections.
const reasonSingleLogin = "logged in on another connection"

func (h *sessions) emit(kind EventKind, cl *mqtt.Client, user string) {
	h.emitFilters(kind, cl, user, nil)
}

func (h *sessions) emitFilters(kind EventKind, cl *mqtt.Client, user string, filters []string) {
	h.mu.RLock()
	if user == "" {
		if c, ok := h.conns[cl.ID]; ok && c.cl == cl {
			user = c.user
		}
	}
	ws := make([]func(Event), 0, len(h.watchers))
	for _, w := range h.watchers {
		ws = append(ws, w)
	}
	h.mu.RUnlock()
	if len(ws) == 0 {
		return
	}
	ev := Event{Kind: kind, ClientID: cl.ID, UserID: user, Username: string(cl.Properties.Username),
		Listener: cl.Net.Listener, Remote: cl.Net.Remote, Time: time.Now(), Filters: filters}
	for _, w := range ws {
		w(ev)
	}
}

func (h *sessions) stats() (bound, dropped, refused int64) {
	return h.bound.Load(), h.dropped.Load(), h.refused.Load()
}

func (s *Server) authenticatesUsers() bool { return s.opts.Auth.PasswordFile != "" }

// checkedUsername reports whether cl's username is an identity the server
// vouches for: checked against the password file, or authenticated by a
// gateway's transport (ServeConn).
func (s *Server) checkedUsername(cl *mqtt.Client) bool {
	if s.authenticatesUsers() {
		return true
	}
	_, ok := s.vouchedIdentity(cl)
	return ok
}

// Watch calls fn for every connection event until cancel is called, and
// in a cluster for users coming online and going offline on the other
// nodes (RemoteOnline, RemoteOffline). fn runs on the connection's (or
// message federation's) goroutine and must not block.
func (s *Server) Watch(fn func(Event)) (cancel func()) {
	h := s.sessions
	h.mu.Lock()
	h.nextW++
	id := h.nextW
	h.watchers[id] = fn
	h.mu.Unlock()
	return func() {
		h.mu.Lock()
		delete(h.watchers, id)
		h.mu.Unlock()
	}
}

// RemoteUser tells Watch callbacks that a user got its first connection
// (online) or lost its last one on another node of the cluster; message
// federation calls it.
func (s *Server) RemoteUser(node, userID string, online bool) {
	h := s.sessions
	h.mu.RLock()
	ws := make([]func(Event), 0, len(h.watchers))
	for _, w := range h.watchers {
		ws = append(ws, w)
	}
	h.mu.RUnlock()
	kind := RemoteOffline
	if online {
		kind = RemoteOnline
	}
	ev := Event{Kind: kind, UserID: userID, Node: node, Time: time.Now()}
	for _, w := range ws {
		w(ev)
	}
}

// BindUser binds a connected client to a user id ("" unbinds). With
// SingleLogin, the user's other connections are disconnected.
func (s *Server) BindUser(clientID, userID string) error {
	return s.sessions.bind(clientID, userID, nil)
}

// ErrNotTrusted reports that a client may not choose its own user id
// (ClaimUser).
var ErrNotTrusted = errors.New("client may not choose its user id")

// ClaimUser binds a connected client to a user id of the client's own
// choosing, as BindUser does, but only where the server trusts its
// clients with that: it checks no passwords (no password file) and the
// client came in anonymously on a listener bound to loopback, where every
// client is the machine's own user (the trust Mosquitto 2 gives anonymous
// loopback clients). Elsewhere it returns ErrNotTrusted: identities come
// from the password file or from a module's BindUser. It serves demos and
// local tools, such as the im module's web page.
func (s *Server) ClaimUser(clientID, userID string) error {
	if userID == "" {
		return fmt.Errorf("claim user for %q: empty user id: %w", clientID, ErrInvalidOptions)
	}
	return s.sessions.bind(clientID, userID, func(c *conn) error {
		if !s.auth.claims(c.cl.Net.Listener) {
			return fmt.Errorf("claim user %q for %q: the server checks passwords or the listener is not loopback: %w",
				userID, clientID, ErrNotTrusted)
		}
		return nil
	})
}

// UserOf returns the user id bound to a connected client.
func (s *Server) UserOf(clientID string) (string, bool) {
	s.sessions.mu.RLock()
	defer s.sessions.mu.RUnlock()
	c, ok := s.sessions.conns[clientID]
	if !ok || c.user == "" {
		return "", false
	}
	return c.user, true
}

// SubscribedTo reports whether a connected client holds a subscription
// matching topic, such as one its persistent session brought back.
func (s *Server) SubscribedTo(clientID, topic string) bool {
	s.sessions.mu.RLock()
	c, ok := s.sessions.conns[clientID]
	s.sessions.mu.RUnlock()
	if !ok {
		return false
	}
	for filter := range c.cl.State.Subscriptions.GetAll() {
		if covers(filter, topic) {
			return true
		}
	}
	return false
}

// ClientsOf returns the client ids of a user's open connections, sorted.
func (s *Server) ClientsOf(userID string) []string {
	s.sessions.mu.RLock()
	ids := make([]string, 0, len(s.sessions.users[userID]))
	for id := range s.sessions.users[userID] {
		ids = append(ids, id)
	}
	s.sessions.mu.RUnlock()
	sort.Strings(ids)
	return ids
}

// SetValue stores a per-session value; a resumed persistent session keeps its values.
func (s *Server) SetValue(clientID, key string, v any) error {
	s.sessions.mu.Lock()
	defer s.sessions.mu.Unlock()
	c, ok := s.sessions.conns[clientID]
	if !ok {
		return fmt.Errorf("set %q on %q: %w", key, clientID, ErrNoClient)
	}
	if c.values == nil {
		c.values = map[string]any{}
	}
	c.values[key] = v
	return nil
}

// Value reads a per-session value.
func (s *Server) Value(clientID, key string) (any, bool) {
	s.sessions.mu.RLock()
	defer s.sessions.mu.RUnlock()
	c, ok := s.sessions.conns[clientID]
	if !ok {
		return nil, false
	}
	v, ok := c.values[key]
	return v, ok
}

// PushClient sends a message to one connected client alone, whatever its
// subscriptions. QoS above 1 is sent as 1. It never waits for the client:
// the message joins the client's outbound queue, and when that queue is
// full the push fails with ErrSlowClient (QoS 0 dropped, QoS 1 refused and
// not kept). A QoS 1 push that was queued stays in the client's in-flight
// set until acknowledged, so a persistent session gets it again when it
// reconnects. In a cluster, a client not connected here gets it on
// whichever node it is connected to (nil error: the push went out;
// delivery is not confirmed, and the other node's refusals are only
// logged there).
func (s *Server) PushClient(clientID, topic string, payload []byte, qos byte) error {
	err := s.PushClientLocal(clientID, topic, payload, qos)
	if errors.Is(err, ErrNoClient) && s.opts.Cluster != nil {
		s.opts.Cluster.PushClient(clientID, topic, payload, qos)
		return nil
	}
	return err
}

// PushClientLocal is PushClient for this node's connections only; message
// federation uses it for pushes from other nodes.
func (s *Server) PushClientLocal(clientID, topic string, payload []byte, qos byte) error {
	s.sessions.mu.RLock()
	c, ok := s.sessions.conns[clientID]
	s.sessions.mu.RUnlock()
	if !ok {
		s.sessions.dropped.Add(1)
		return fmt.Errorf("push to %q: %w", clientID, ErrNoClient)
	}
	if err := s.push(c.cl, topic, payload, qos); err != nil {
		return fmt.Errorf("push to %q: %w", clientID, err)
	}
	return nil
}

// PushUser sends a message to every open connection of a user and returns
// how many connections on this node it was queued for; a connection whose
// queue is full counts an ErrSlowClient in the error instead (as
// PushClient), without holding up the others. In a cluster it also goes
// to every other node where the user is connected.
func (s *Server) PushUser(userID, topic string, payload []byte, qos byte) (int, error) {
	if s.opts.Cluster != nil {
		s.opts.Cluster.PushUser(userID, topic, payload, qos)
	}
	return s.PushUserLocal(userID, topic, payload, qos)
}

// PushUserLocal is PushUser for this node's connections only.
func (s *Server) PushUserLocal(userID, topic string, payload []byte, qos byte) (int, error) {
	cls := s.connsOf(userID)
	if len(cls) == 0 {
		if s.opts.Cluster == nil {
			s.sessions.dropped.Add(1)
		}
		return 0, nil
	}
	n := 0
	var errs []error
	for _, cl := range cls {
		err := s.push(cl, topic, payload, qos)
		if err != nil {
			errs = append(errs, fmt.Errorf("push to %q: %w", cl.ID, err))
			continue
		}
		n++
	}
	return n, errors.Join(errs...)
}

// KickClient disconnects a client (MQTT 5: reason 0x98 administrative
// action, with reason as text). In a cluster, a client not connected here
// is disconnected on whichever node it is connected to.
func (s *Server) KickClient(clientID, reason string) error {
	err := s.KickClientLocal(clientID, reason)
	if errors.Is(err, ErrNoClient) && s.opts.Cluster != nil {
		s.opts.Cluster.KickClient(clientID, reason)
		return nil
	}
	return err
}

// KickClientLocal is KickClient for this node's connections only.
func (s *Server) KickClientLocal(clientID, reason string) error {
	s.sessions.mu.RLock()
	c, ok := s.sessions.conns[clientID]
	s.sessions.mu.RUnlock()
	if !ok {
		return fmt.Errorf("kick %q: %w", clientID, ErrNoClient)
	}
	s.kick(c.cl, reason)
	return nil
}

// KickUser disconnects every connection of a user, in a cluster on every
// node, and returns how many there were on this node.
func (s *Server) KickUser(userID, reason string) int {
	if s.opts.Cluster != nil {
		s.opts.Cluster.KickUser(userID, reason)
	}
	return s.KickUserLocal(userID, reason)
}

// KickUserLocal is KickUser for this node's connections only.
func (s *Server) KickUserLocal(userID, reason string) int {
	cls := s.connsOf(userID)
	for _, cl := range cls {
		s.kick(cl, reason)
	}
	return len(cls)
}

// connsOf returns the open connections of a user on this node.
func (s *Server) connsOf(userID string) []*mqtt.Client {
	s.sessions.mu.RLock()
	defer s.sessions.mu.RUnlock()
	cls := make([]*mqtt.Client, 0, len(s.sessions.users[userID]))
	for _, c := range s.sessions.users[userID] {
		cls = append(cls, c.cl)
	}
	return cls
}

func (s *Server) kick(cl *mqtt.Client, reason string) {
	// Unbind at once, so pushes and ClientsOf stop counting the connection
	// before its socket has finished closing.
	s.sessions.mu.Lock()
	if c, ok := s.sessions.conns[cl.ID]; ok && c.cl == cl {
		s.sessions.unbindLocked(c)
	}
	s.sessions.mu.Unlock()
	code := packets.ErrAdministrativeAction
	if reason != "" {
		code.Reason = reason
	}
	s.log.Info().Str("client", cl.ID).Str("reason", code.Reason).Msg("disconnecting client")
	if err := s.mq.DisconnectClient(cl, code); err != nil && !errors.Is(err, code) {
		s.log.Debug().Err(err).Str("client", cl.ID).Msg("kick")
	}
}

// deliver queues a publish for one client, bypassing subscriptions, in the
// engine's outbound queue for it, without waiting for room (PATCHES.md,
// P19). A QoS 1 message is tracked in the client's in-flight set, so the
// engine matches its PUBACK and resends it if the client reconnects to its
// session.
func (s *Server) deliver(cl *mqtt.Client, pk packets.Packet) error {
	pk.FixedHeader.Qos = min(pk.FixedHeader.Qos, 1)
	err := s.mq.Push(cl, pk)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, mqtt.ErrConnectionClosed):
		return ErrNoClient
	}
	return fmt.Errorf("%w: %w", ErrSlowClient, err)
}

// push delivers a module's push and counts the QoS 1 ones refused.
func (s *Server) push(cl *mqtt.Client, topic string, payload []byte, qos byte) error {
	err := s.deliver(cl, packets.Packet{TopicName: topic, Payload: payload, FixedHeader: packets.FixedHeader{Qos: qos}})
	if qos > 0 && errors.Is(err, ErrSlowClient) {
		s.sessions.refused.Add(1)
	}
	return err
}
