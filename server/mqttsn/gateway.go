package mqttsn

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"github.com/colonymq/colony/server/mqttsn/packet"
)

// Broker is what the gateway needs from the MQTT server: *server.Server
// implements it.
type Broker interface {
	// ServeConn serves an in-process MQTT connection as a client of the
	// named listener until it ends; identity is a name the transport
	// authenticated ("" for none).
	ServeConn(listener string, conn net.Conn, identity string) error
	// AllowsAnonymous reports whether clients without credentials may
	// connect through the named listener.
	AllowsAnonymous(listener string) bool
}

// Gateway is the MQTT-SN gateway: it owns the UDP and DTLS sockets and one
// session per device, each mapped to a client of the broker.
type Gateway struct {
	opts    Options
	log     zerolog.Logger
	broker  Broker
	predef  map[string]uint16 // topic name -> predefined id
	udp     *net.UDPConn
	dtls    net.Listener
	advAddr *net.UDPAddr

	// connectMu serialises CONNECTs, so two for one client id (from the
	// UDP listener and a DTLS association, each with its own reader) see
	// each other's session.
	connectMu sync.Mutex

	mu     sync.Mutex // a leaf lock: nothing else is locked while it is held
	byPeer map[string]*session
	byID   map[string]*session
	// named lists the sessions of each client id not yet forgotten
	// (usually one; more while a CONNECT replaces another), challengers
	// and sessions whose address another took included: with anon, every
	// session Close ends. claims numbers the broker's acceptances: when
	// the session holding an id ends, the last one accepted of those left
	// takes the id (forget).
	named  map[string][]*session
	claims uint64
	anon   map[string]*session   // listener -> publisher of QoS -1 messages from devices without a session
	warned map[string]struct{}   // peers already logged for a malformed datagram
	assocs map[net.Conn]struct{} // DTLS associations being served, closed by Close
	closed bool

	closing chan struct{}
	wg      sync.WaitGroup
	st      counters
}

// counters are the gateway's statistics, read by Stats.
type counters struct {
	datagramsIn, datagramsOut, malformed       atomic.Int64
	noSession, congestion, queueFull, rejected atomic.Int64
	lost, retransmits, wills, handshakeFails   atomic.Int64
	asleep                                     atomic.Int64
}

// Stats is a snapshot of the gateway's counters.
type Stats struct {
	Sessions          int64 // devices with a session, asleep or not
	Asleep            int64 // sessions of sleeping devices
	DatagramsIn       int64
	DatagramsOut      int64
	Malformed         int64 // datagrams dropped because they do not decode
	DroppedNoSession  int64 // datagrams from a peer without a session that needs one
	DroppedCongestion int64 // publishes refused while the broker was behind (PUBACK "congestion" or dropped QoS 0)
	DroppedQueueFull  int64 // QoS 0 messages to a device dropped because its queue was full
	Rejected          int64 // publishes, subscriptions or registrations refused (unknown topic id, ACL, …)
	Lost              int64 // sessions ended by keep-alive, sleep or retry expiry
	Retransmissions   int64 // messages sent again to a device that did not answer in time
	WillsPublished    int64
	HandshakeFailures int64 // DTLS handshakes that failed (wrong key, unknown identity, bad certificate)
}

// New checks opts and builds a gateway that feeds broker; it binds
// nothing until Start.
func New(broker Broker, opts Options) (*Gateway, error) {
	opts.fill()
	if err := opts.validate(); err != nil {
		return nil, err
	}
	g := &Gateway{
		opts: opts, broker: broker, log: opts.Logger.With().Str("component", "mqttsn").Logger(),
		predef: map[string]uint16{}, byPeer: map[string]*session{}, byID: map[string]*session{}, named: map[string][]*session{},
		anon: map[string]*session{}, warned: map[string]struct{}{}, closing: make(chan struct{}),
	}
	for id, name := range opts.Predefined {
		g.predef[name] = id
	}
	if opts.Advertise > 0 && opts.AdvertiseAddr != "" {
		a, err := net.ResolveUDPAddr("udp", opts.AdvertiseAddr)
		if err != nil {
			return nil, fmt.Errorf("advertise_addr %q: %w", opts.AdvertiseAddr, err)
		}
		g.advAddr = a
	}
	return g, nil
}

// Start binds the sockets and starts serving. If a socket cannot bind,
// what was bound is closed again.
func (g *Gateway) Start() error {
	if on(g.opts.Listen) {
		a, err := net.ResolveUDPAddr("udp", g.opts.Listen)
		if err != nil {
			return fmt.Errorf("mqttsn listen %q: %w", g.opts.Listen, err)
		}
		g.udp, err = listenUDP(a, g.advAddr != nil)
		if err != nil {
			return fmt.Errorf("mqttsn listen %q: %w", g.opts.Listen, err)
		}
		// Bursts from many devices arrive faster than one reader drains
		// them; a bigger socket buffer (the kernel caps it at
		// net.core.rmem_max) loses fewer of them.
		if err := g.udp.SetReadBuffer(4 << 20); err != nil {
			g.log.Debug().Err(err).Msg("udp receive buffer")
		}
		g.log.Info().Str("listener", ListenerUDP).Str("addr", g.udp.LocalAddr().String()).Msg("listening")
		if !g.broker.AllowsAnonymous(ListenerUDP) {
			g.log.Warn().Str("addr", g.udp.LocalAddr().String()).Msg("mqtt-sn over plain UDP carries no credentials and this address " +
				"is not loopback: every device will be refused unless auth.allow_anonymous = true (or use DTLS)")
		}
		g.wg.Add(1)
		go g.readUDP()
		if g.advAddr != nil {
			g.wg.Add(1)
			go g.advertise()
		}
	}
	if on(g.opts.DTLSListen) {
		if err := g.startDTLS(); err != nil {
			g.closeSockets()
			g.wg.Wait()
			return err
		}
	}
	return nil
}

// Addr returns the bound address of ListenerUDP or ListenerDTLS, "" when off.
func (g *Gateway) Addr(listener string) string {
	switch {
	case listener == ListenerUDP && g.udp != nil:
		return g.udp.LocalAddr().String()
	case listener == ListenerDTLS && g.dtls != nil:
		return g.dtls.Addr().String()
	}
	return ""
}

func (g *Gateway) closeSockets() {
	if g.udp != nil {
		if err := g.udp.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
			g.log.Debug().Err(err).Msg("close udp")
		}
	}
	if g.dtls != nil {
		if err := g.dtls.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
			g.log.Debug().Err(err).Msg("close dtls")
		}
	}
}

// Close stops the gateway: devices are told DISCONNECT, their broker
// sessions end without wills (persistent ones stay in the broker), and the
// sockets close. It returns when every goroutine has ended, or with ctx's
// error.
func (g *Gateway) Close(ctx context.Context) error {
	g.mu.Lock()
	if g.closed {
		g.mu.Unlock()
		return nil
	}
	g.closed = true
	close(g.closing)
	var all []*session
	for _, ss := range g.named {
		all = append(all, ss...)
	}
	all = slices.AppendSeq(all, maps.Values(g.anon))
	g.mu.Unlock()
	for _, s := range all {
		s.end(endShutdown)
	}
	g.closeSockets()
	// Accepted associations outlive the DTLS listener; those without a
	// session (not connected yet, refused, disconnected) would otherwise
	// keep their goroutine until handshake_timeout.
	g.mu.Lock()
	assocs := slices.Collect(maps.Keys(g.assocs))
	g.mu.Unlock()
	for _, c := range assocs {
		closeQuietly(c)
	}
	done := make(chan struct{})
	go func() { g.wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("stop mqtt-sn gateway: %w", ctx.Err())
	}
}

// Stats returns the current counters.
func (g *Gateway) Stats() Stats {
	g.mu.Lock()
	n := int64(len(g.byID))
	g.mu.Unlock()
	c := &g.st
	return Stats{
		Sessions: n, Asleep: c.asleep.Load(), DatagramsIn: c.datagramsIn.Load(), DatagramsOut: c.datagramsOut.Load(),
		Malformed: c.malformed.Load(), DroppedNoSession: c.noSession.Load(), DroppedCongestion: c.congestion.Load(),
		DroppedQueueFull: c.queueFull.Load(), Rejected: c.rejected.Load(), Lost: c.lost.Load(),
		Retransmissions: c.retransmits.Load(), WillsPublished: c.wills.Load(), HandshakeFailures: c.handshakeFails.Load(),
	}
}

// peer is where a device's datagrams come from and go to.
type peer interface {
	send(b []byte) error
	key() string      // unique per transport address
	listener() string // ListenerUDP or ListenerDTLS
	identity() string // authenticated by the transport; "" on plain UDP
	// certificates is the client certificate chain the transport
	// verified against client_ca_file, leaf first; nil for PSK and UDP.
	certificates() []*x509.Certificate
	addr() net.Addr
}

type udpPeer struct {
	g *Gateway
	a netip.AddrPort
}

func (p udpPeer) send(b []byte) error {
	_, err := p.g.udp.WriteToUDPAddrPort(b, p.a)
	return err
}
func (p udpPeer) key() string                     { return "u" + p.a.String() }
func (p udpPeer) listener() string                { return ListenerUDP }
func (p udpPeer) identity() string                { return "" }
func (udpPeer) certificates() []*x509.Certificate { return nil }
func (p udpPeer) addr() net.Addr                  { return net.UDPAddrFromAddrPort(p.a) }

func (g *Gateway) readUDP() {
	defer g.wg.Done()
	buf := make([]byte, packet.MaxLen+1)
	for {
		n, a, err := g.udp.ReadFromUDPAddrPort(buf)
		if err != nil {
			select {
			case <-g.closing:
				return
			default:
			}
			if errors.Is(err, net.ErrClosed) {
				return
			}
			g.log.Warn().Err(err).Msg("udp read")
			time.Sleep(5 * time.Millisecond)
			continue
		}
		g.handle(udpPeer{g: g, a: netip.AddrPortFrom(a.Addr().Unmap(), a.Port())}, buf[:n])
	}
}

// send encodes p for a peer; errors are counted and logged at debug, as a
// datagram lost on the way would be.
func (g *Gateway) send(to peer, p packet.Packet) {
	if to == nil {
		return
	}
	b, err := packet.Encode(p)
	if err != nil {
		g.log.Warn().Err(err).Str("peer", to.addr().String()).Msg("encode mqtt-sn message")
		return
	}
	if err := to.send(b); err != nil {
		g.log.Debug().Err(err).Str("peer", to.addr().String()).Msg("send datagram")
		return
	}
	g.st.datagramsOut.Add(1)
}

// handle serves one datagram. It never blocks on the broker: what a
// device sends is queued to its engine connection, and answers go out as
// datagrams.
func (g *Gateway) handle(from peer, b []byte) {
	g.st.datagramsIn.Add(1)
	p, err := packet.Decode(b)
	if err != nil {
		g.st.malformed.Add(1)
		g.warnOnce(from, err)
		return
	}
	switch m := p.(type) {
	case *packet.SearchGW:
		g.send(from, &packet.GWInfo{GatewayID: g.opts.GatewayID})
		return
	case *packet.Advertise, *packet.GWInfo:
		return // another gateway's, or a client answering for us
	case *packet.Connect:
		g.connect(from, m)
		return
	case *packet.Publish:
		if m.Flags.QoS == -1 {
			g.publishMinusOne(from, m)
			return
		}
	case *packet.Pingreq:
		if m.ClientID != "" {
			g.wake(from, m.ClientID)
			return
		}
	}
	s := g.sessionOf(from)
	if s == nil {
		g.st.noSession.Add(1)
		switch p.(type) {
		case *packet.Disconnect, *packet.Pingresp, *packet.Puback, *packet.Pubrec, *packet.Pubcomp, *packet.Regack:
		default:
			// Tells a device whose session is gone (gateway restart, expiry) to connect again.
			g.send(from, &packet.Disconnect{})
		}
		return
	}
	s.handle(p)
}

func (g *Gateway) sessionOf(from peer) *session {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.byPeer[from.key()]
}

// warnOnce logs a malformed datagram once per peer; the set is bounded so
// a flood of spoofed sources cannot grow it.
func (g *Gateway) warnOnce(from peer, err error) {
	g.mu.Lock()
	_, seen := g.warned[from.key()]
	if !seen {
		if len(g.warned) >= 4096 {
			clear(g.warned)
		}
		g.warned[from.key()] = struct{}{}
	}
	g.mu.Unlock()
	if !seen {
		g.log.Warn().Err(err).Str("peer", from.addr().String()).Str("listener", from.listener()).
			Msg("malformed mqtt-sn datagram dropped (logged once per peer; colony_mqttsn_malformed_total counts all)")
	}
}

// connect serves CONNECT: it resumes the device's session when it is
// still open and CleanSession is not set, else starts a new one.
//
// A CONNECT from another principal (listener, identity or certificate)
// with a client id in use does not end that id's session: the newcomer is
// a challenger, which takes the id only once the broker has accepted it
// (the broker then ends the old session's connection, a takeover, and the
// old device is told DISCONNECT). Ending the old session first let any
// peer that could send a datagram, anonymous or refused, disconnect a
// device by naming its client id.
func (g *Gateway) connect(from peer, c *packet.Connect) {
	g.connectMu.Lock()
	defer g.connectMu.Unlock()
	g.mu.Lock()
	if g.closed {
		g.mu.Unlock()
		return
	}
	cur := g.byPeer[from.key()]
	old := g.byID[c.ClientID]
	g.mu.Unlock()
	if cur != nil && cur != old {
		if cur.clientID == c.ClientID && cur.reconnect(from, c) {
			return // a challenger's CONNECT again, while the broker decides
		}
		cur.end(endReplaced) // another client id from this address
	}
	challenger := false
	if old != nil {
		if old.reconnect(from, c) {
			return
		}
		if old.samePrincipal(from) {
			old.end(endReplaced)
			g.release(old.currentPeer(), from)
		} else {
			challenger = true
		}
	}
	s := newSession(g, from, c)
	g.mu.Lock()
	if g.closed {
		g.mu.Unlock()
		return
	}
	g.byPeer[from.key()] = s
	g.named[c.ClientID] = append(g.named[c.ClientID], s)
	if !challenger {
		g.byID[c.ClientID] = s
	}
	g.mu.Unlock()
	s.start(c)
}

// claim gives s, a session the broker has just accepted, its client id:
// byID follows the order in which the broker accepted CONNECTs, as the
// broker's own takeovers do. A session that held the id and had sent its
// CONNECT to the broker is the broker's to end (taken over, or taking the
// id back later, when it claims again); one still in its will flow has
// not, and would connect later and take the id from s, so it ends now.
func (g *Gateway) claim(s *session) {
	g.mu.Lock()
	g.claims++
	s.claimed = g.claims
	prev := g.byID[s.clientID]
	g.byID[s.clientID] = s
	g.mu.Unlock()
	if prev != nil && prev != s {
		go prev.endBeforeConnect() // not under s.mu: prev may be claiming too
	}
}

// wake serves PINGREQ with a client id: a sleeping device is awake until
// its buffered messages are delivered.
func (g *Gateway) wake(from peer, clientID string) {
	g.mu.Lock()
	s := g.byID[clientID]
	g.mu.Unlock()
	if s == nil || !s.samePrincipal(from) {
		g.st.noSession.Add(1)
		g.send(from, &packet.Disconnect{})
		return
	}
	s.wake(from)
}

// rebind points a session's entries at a new peer address.
func (g *Gateway) rebind(s *session, old, now peer) {
	g.mu.Lock()
	if old != nil && g.byPeer[old.key()] == s {
		delete(g.byPeer, old.key())
	}
	if prev := g.byPeer[now.key()]; prev != nil && prev != s {
		// Another session at this address has lost it; it stays reachable by client id.
		delete(g.byPeer, now.key())
	}
	g.byPeer[now.key()] = s
	g.mu.Unlock()
	g.release(old, now)
}

// release closes old, the DTLS association a device's session has just
// left for now (it resumed the session, or connected with its client id,
// from another association), unless a session uses it. Its device will
// not close it (it lost the address, or rebooted), nor has it an answer
// to read on it: left open, it kept its goroutine and buffers until the
// node stopped.
func (g *Gateway) release(old, now peer) {
	dp, ok := old.(*dtlsPeer)
	if !ok || (now != nil && dp.key() == now.key()) || g.sessionOf(dp) != nil {
		return
	}
	dp.close()
}

// forget removes a session that has ended.
func (g *Gateway) forget(s *session) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if named := slices.DeleteFunc(g.named[s.clientID], func(o *session) bool { return o == s }); len(named) > 0 {
		g.named[s.clientID] = named
	} else {
		delete(g.named, s.clientID)
	}
	if s.peer != nil && g.byPeer[s.peer.key()] == s {
		delete(g.byPeer, s.peer.key())
	}
	if g.byID[s.clientID] == s {
		delete(g.byID, s.clientID)
		// The gateway sees CONNACKs in its sessions' own order, not
		// always the broker's: the session the broker accepted last may
		// have claimed the id before the one it took it over from, whose
		// end is now. It takes the id back.
		var next *session
		for _, o := range g.named[s.clientID] {
			if o.claimed > 0 && (next == nil || o.claimed > next.claimed) {
				next = o
			}
		}
		if next != nil {
			g.byID[s.clientID] = next
		}
	}
	for l, a := range g.anon {
		if a == s {
			delete(g.anon, l)
		}
	}
}

// publishMinusOne serves a QoS -1 PUBLISH: through the device's own
// session when it has one, else through the listener's anonymous publisher.
func (g *Gateway) publishMinusOne(from peer, m *packet.Publish) {
	topic, ok := g.topicOf(m.Flags.TopicIDType, m.TopicID, nil)
	if !ok {
		g.st.rejected.Add(1)
		return
	}
	if s := g.sessionOf(from); s != nil {
		s.publishRaw(topic, m.Data, m.Flags.Retain)
		return
	}
	g.mu.Lock()
	if g.closed {
		g.mu.Unlock()
		return
	}
	key := from.listener() + "\x00" + from.identity()
	a := g.anon[key]
	if a == nil {
		var rnd [6]byte
		if _, err := rand.Read(rnd[:]); err != nil {
			g.mu.Unlock()
			return
		}
		a = newSession(g, nil, &packet.Connect{ClientID: "mqttsn-anon-" + hex.EncodeToString(rnd[:]), Flags: packet.Flags{CleanSession: true}})
		a.lst, a.ident = from.listener(), from.identity()
		g.anon[key] = a
		g.mu.Unlock()
		a.start(&packet.Connect{Flags: packet.Flags{CleanSession: true}})
	} else {
		g.mu.Unlock()
	}
	a.publishRaw(topic, m.Data, m.Flags.Retain)
}

// topicOf resolves a topic id of PUBLISH, SUBSCRIBE or UNSUBSCRIBE;
// registered ids need the session's registry.
func (g *Gateway) topicOf(t packet.TopicIDType, id uint16, reg *registry) (string, bool) {
	switch t {
	case packet.TopicPredefined:
		name, ok := g.opts.Predefined[id]
		return name, ok
	case packet.TopicShort:
		name := packet.ShortTopic(id)
		return name, validTopic(name)
	case packet.TopicNormal:
		if reg != nil {
			name, ok := reg.names[id]
			return name, ok
		}
	}
	return "", false
}

// advertise broadcasts ADVERTISE every opts.Advertise until Close.
func (g *Gateway) advertise() {
	defer g.wg.Done()
	t := time.NewTicker(g.opts.Advertise)
	defer t.Stop()
	msg, err := packet.Encode(&packet.Advertise{GatewayID: g.opts.GatewayID, Duration: uint16(g.opts.Advertise / time.Second)})
	if err != nil {
		return
	}
	warned := false
	for {
		if _, err := g.udp.WriteToUDP(msg, g.advAddr); err != nil {
			if !warned {
				g.log.Warn().Err(err).Str("to", g.advAddr.String()).Msg("advertise failed (logged once)")
				warned = true
			}
		} else {
			g.st.datagramsOut.Add(1)
		}
		select {
		case <-g.closing:
			return
		case <-t.C:
		}
	}
}
