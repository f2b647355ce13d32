package mqttsn

import (
	"bytes"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/colonymq/colony/server/mqttsn/packet"
)

// state is where a device's session stands (MQTT-SN section 6.14).
type state int

const (
	stWillTopic  state = iota // CONNECT with the will flag: WILLTOPICREQ sent
	stWillMsg                 // WILLMSGREQ sent
	stConnecting              // waiting for the broker's CONNACK
	stActive
	stAsleep
	stAwake // woken by PINGREQ: buffered messages go out, then PINGRESP
	stGone
)

// endKind says why a session ended.
type endKind int

const (
	endDisconnect endKind = iota // the device sent DISCONNECT
	endReplaced                  // a new CONNECT took its client id or address
	endShutdown                  // the gateway is stopping
	endLost                      // keep-alive, sleep or retries expired: the will is published
	endBroker                    // the broker ended the connection (kick, takeover, shutdown)
	endRefused                   // the broker refused the CONNECT
)

// registry holds a session's normal topic ids, both the device's (REGISTER)
// and the gateway's (REGISTER to the device, SUBACK).
type registry struct {
	names map[uint16]string
	ids   map[string]uint16
	next  uint16
}

func (r *registry) register(name string, limit int) (uint16, bool) {
	if id, ok := r.ids[name]; ok {
		return id, true
	}
	if len(r.names) >= limit {
		return 0, false
	}
	if r.names == nil {
		r.names, r.ids = map[uint16]string{}, map[string]uint16{}
	}
	for {
		r.next++
		if r.next == 0 || r.next == 0xFFFF {
			continue
		}
		if _, used := r.names[r.next]; !used {
			break
		}
	}
	r.names[r.next], r.ids[name] = name, r.next
	return r.next, true
}

func (r *registry) forget(name string) {
	if id, ok := r.ids[name]; ok {
		delete(r.ids, name)
		delete(r.names, id)
	}
}

// inMsg is a device's QoS 1/2 publish the broker has not finished with.
type inMsg struct {
	msgID, topicID uint16
	recd           bool // QoS 2: PUBREC passed on, waiting for PUBREL
}

type pendingSub struct {
	msgID, topicID uint16
}

// outMsg is a broker message on its way to the device.
type outMsg struct {
	topic   string
	payload []byte
	qos     byte
	retain  bool
	pid     uint16 // the broker's packet id, acknowledged once the device has it
}

type outKind int

const (
	outRegister outKind = iota
	outPublish
	outPubrel
)

// outstanding is the one message sent to the device and not yet answered.
type outstanding struct {
	kind  outKind
	msgID uint16
	pkt   packet.Packet
	tries int
}

// session is one device: its state, its topic ids, its will, and its
// connection to the broker. Messages to the device go one at a time
// (a QoS 1/2 publish or a REGISTER waits for its answer before the next
// is sent), so delivery keeps the broker's order.
type session struct {
	g        *Gateway
	mu       sync.Mutex
	peer     peer // nil for an anonymous QoS -1 publisher
	lst      string
	ident    string
	cert     []byte // the DER of the device's certificate, if it used one
	clientID string
	clean    bool
	state    state

	keepAlive time.Duration
	sleep     time.Duration
	lastSeen  time.Time
	alive     *time.Timer
	retry     *time.Timer

	willTopic  string
	willQoS    byte
	willRetain bool
	willMsg    []byte
	resuming   bool   // will flow of a CONNECT that resumes an open session
	claimed    uint64 // when the broker accepted it (Gateway.claims); 0: not yet. Guarded by Gateway.mu

	eng     *engineConn
	reg     registry
	pid     uint16
	in      map[uint16]*inMsg // broker packet id -> device publish
	inByMsg map[uint16]uint16 // device msg id -> broker packet id
	subs    map[uint16]pendingSub
	queue   []outMsg
	queued0 int // QoS 0 messages in queue
	out     *outstanding
	msgID   uint16
	warned  bool // queue overflow logged
}

func newSession(g *Gateway, p peer, c *packet.Connect) *session {
	s := &session{g: g, peer: p, clientID: c.ClientID, clean: c.Flags.CleanSession,
		keepAlive: time.Duration(c.Duration) * time.Second, lastSeen: time.Now()}
	if p != nil {
		s.lst, s.ident, s.cert = p.listener(), p.identity(), leaf(p)
	}
	return s
}

// leaf returns the DER of the certificate p's transport verified, if any.
func leaf(p peer) []byte {
	if cs := p.certificates(); len(cs) > 0 {
		return cs[0].Raw
	}
	return nil
}

func (s *session) send(p packet.Packet) { s.g.send(s.peer, p) }

// samePrincipal reports whether from may act for this session: the same
// listener and the same authenticated identity, by the same certificate
// when it used one (another certificate with the same name must pass the
// broker's authentication afresh, which may pin the certificate).
func (s *session) samePrincipal(from peer) bool {
	return from.listener() == s.lst && from.identity() == s.ident && bytes.Equal(leaf(from), s.cert)
}

// start begins a new session: the will flow or straight to the broker.
func (s *session) start(c *packet.Connect) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.state == stGone {
		return // the gateway closed between making it and starting it
	}
	if c.Flags.Will {
		s.state = stWillTopic
		s.send(&packet.WillTopicReq{})
		s.armAlive()
		return
	}
	s.connectEngine()
}

// reconnect serves a CONNECT for this session's client id. It reports
// false when a new session must replace this one.
func (s *session) reconnect(from peer, c *packet.Connect) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.state == stGone || !s.samePrincipal(from) {
		return false
	}
	if s.peer != nil && s.peer.key() == from.key() {
		switch s.state {
		case stWillTopic: // the device sent CONNECT again before answering
			s.send(&packet.WillTopicReq{})
			return true
		case stWillMsg:
			s.send(&packet.WillMsgReq{})
			return true
		case stConnecting:
			return true
		}
	}
	if c.Flags.CleanSession || s.eng == nil || s.eng.isClosed() || s.state < stActive {
		return false
	}
	// Resume: the broker session, subscriptions, topic ids and queued
	// messages stay; the will is set afresh.
	if s.peer == nil || s.peer.key() != from.key() {
		s.g.rebind(s, s.peer, from)
		s.peer = from
	}
	if s.state == stAsleep {
		s.g.st.asleep.Add(-1)
	}
	s.keepAlive = time.Duration(c.Duration) * time.Second
	s.lastSeen = time.Now()
	s.willTopic, s.willMsg = "", nil
	if c.Flags.Will {
		s.resuming = true
		s.state = stWillTopic
		s.send(&packet.WillTopicReq{})
		s.armAlive()
		return true
	}
	s.activate()
	return true
}

// activate answers CONNACK and starts delivering.
func (s *session) activate() {
	s.state = stActive
	s.resuming = false
	s.send(&packet.Connack{ReturnCode: packet.Accepted})
	s.armAlive()
	if s.out != nil {
		s.resend()
	}
	s.pump()
}

// connectEngine opens the device's broker connection.
func (s *session) connectEngine() {
	s.state = stConnecting
	var remote = pipeAddr("anonymous")
	if s.peer != nil {
		remote = pipeAddr(s.peer.addr().String())
	}
	var conn *engineConn
	conn = newEngineConn(remote, func(pk packets.Packet) { s.onEngine(conn, pk) })
	if s.peer != nil {
		conn.certs = s.peer.certificates()
	}
	s.eng = conn
	ka := uint16(s.keepAlive / time.Second)
	if ka <= 5 {
		ka = 0xFFFF // the engine warns about short keep-alives; the gateway enforces the device's own
	}
	pk := packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Connect},
		Connect: packets.ConnectParams{
			ProtocolName: []byte("MQTT"), ClientIdentifier: s.clientID, Clean: s.clean, Keepalive: ka,
		},
		Properties: packets.Properties{ReceiveMaximum: s.g.opts.Window},
	}
	if !s.clean {
		pk.Properties.SessionExpiryInterval = 0xFFFFFFFF // the broker caps it at limits.max_session_expiry
		pk.Properties.SessionExpiryIntervalFlag = true
	}
	if s.ident != "" {
		pk.Connect.UsernameFlag, pk.Connect.Username = true, []byte(s.ident)
	}
	if err := conn.push(pk); err != nil {
		s.g.log.Error().Err(err).Str("client", s.clientID).Msg("connect to broker")
		s.endLocked(endRefused)
		return
	}
	s.armAlive()
	s.g.wg.Add(1)
	go func() {
		defer s.g.wg.Done()
		err := s.g.broker.ServeConn(s.lst, conn, s.ident)
		s.engineEnded(conn, err)
	}()
}

// engineEnded runs when the broker connection has ended.
func (s *session) engineEnded(conn *engineConn, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.eng != conn || s.state == stGone {
		return
	}
	s.g.log.Debug().Err(err).Str("client", s.clientID).Msg("broker ended the mqtt-sn session")
	s.endLocked(endBroker)
}

// currentPeer returns the association or address the session uses.
func (s *session) currentPeer() peer {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.peer
}

// endBeforeConnect ends the session if its CONNECT has not gone to the
// broker yet (it is in its will flow): another CONNECT of its client id
// has been accepted.
func (s *session) endBeforeConnect() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.state == stWillTopic || s.state == stWillMsg {
		s.endLocked(endBroker)
	}
}

func (s *session) end(kind endKind) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.endLocked(kind)
}

// endLocked ends the session once.
func (s *session) endLocked(kind endKind) {
	if s.state == stGone {
		return
	}
	if s.state == stAsleep {
		s.g.st.asleep.Add(-1)
	}
	s.state = stGone
	if s.alive != nil {
		s.alive.Stop()
	}
	if s.retry != nil {
		s.retry.Stop()
	}
	switch kind {
	case endDisconnect, endShutdown, endBroker:
		s.send(&packet.Disconnect{})
	case endLost:
		s.g.st.lost.Add(1)
		s.publishWill()
	}
	if s.eng != nil {
		if kind != endBroker && kind != endRefused {
			// Normal disconnect: a persistent broker session stays, and
			// what the device had not acknowledged is resent when it returns.
			if err := s.eng.push(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Disconnect}}); err != nil {
				s.g.log.Debug().Err(err).Str("client", s.clientID).Msg("disconnect from broker")
			}
		}
		if err := s.eng.Close(); err != nil {
			s.g.log.Debug().Err(err).Msg("close broker connection")
		}
	}
	s.queue, s.out = nil, nil
	s.g.forget(s)
	if dp, ok := s.peer.(*dtlsPeer); ok && kind != endReplaced && s.g.sessionOf(dp) == nil {
		switch kind {
		case endRefused, endDisconnect:
			dp.closeIfIdle(s.g) // the device must read our answer first
		default:
			dp.close()
		}
	}
	s.g.log.Debug().Str("client", s.clientID).Int("reason", int(kind)).Msg("mqtt-sn session ended")
}

// publishWill sends the will through the device's own broker connection,
// so the ACL applies to it as to the device's other publishes.
func (s *session) publishWill() {
	if s.willTopic == "" || s.eng == nil {
		return
	}
	pk := packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: s.willQoS, Retain: s.willRetain},
		TopicName:   s.willTopic, Payload: s.willMsg,
	}
	if s.willQoS > 0 {
		pk.PacketID = s.nextPID()
	}
	// Counted first: the engine may deliver it before push returns, and
	// whoever got it may look at the counters.
	s.g.st.wills.Add(1)
	if err := s.eng.push(pk); err != nil {
		s.g.st.wills.Add(-1)
		s.g.log.Warn().Err(err).Str("client", s.clientID).Msg("will not published")
	}
}

// handle serves a datagram from the device.
func (s *session) handle(p packet.Packet) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.state == stGone {
		return
	}
	s.lastSeen = time.Now()
	switch s.state {
	case stWillTopic, stWillMsg:
		s.willFlow(p)
		return
	case stConnecting:
		return // the device waits for CONNACK
	}
	switch m := p.(type) {
	case *packet.Publish:
		s.onPublish(m)
	case *packet.Pubrel:
		s.onPubrel(m)
	case *packet.Puback:
		s.onPuback(m)
	case *packet.Pubrec:
		s.onPubrec(m)
	case *packet.Pubcomp:
		s.onPubcomp(m)
	case *packet.Register:
		s.onRegister(m)
	case *packet.Regack:
		s.onRegack(m)
	case *packet.Subscribe:
		s.onSubscribe(m)
	case *packet.Unsubscribe:
		s.onUnsubscribe(m)
	case *packet.Pingreq:
		if s.state == stAsleep {
			s.wakeLocked()
		} else if s.state == stActive {
			s.send(&packet.Pingresp{})
		}
	case *packet.Disconnect:
		if m.HasDuration && m.Duration > 0 {
			s.goToSleep(time.Duration(m.Duration) * time.Second)
		} else {
			s.endLocked(endDisconnect)
		}
	case *packet.WillTopicUpd:
		if m.Topic != "" && !validTopic(m.Topic) {
			s.g.st.rejected.Add(1)
			s.send(&packet.WillTopicResp{ReturnCode: packet.RejectedNotSupport})
			return
		}
		s.willTopic, s.willQoS, s.willRetain = m.Topic, byte(max(m.Flags.QoS, 0)), m.Flags.Retain
		if m.Topic == "" {
			s.willMsg = nil
		}
		s.send(&packet.WillTopicResp{ReturnCode: packet.Accepted})
	case *packet.WillMsgUpd:
		s.willMsg = m.Msg
		s.send(&packet.WillMsgResp{ReturnCode: packet.Accepted})
	}
}

// willFlow serves WILLTOPIC and WILLMSG during CONNECT.
func (s *session) willFlow(p packet.Packet) {
	switch m := p.(type) {
	case *packet.WillTopic:
		if s.state != stWillTopic {
			if s.state == stWillMsg {
				s.send(&packet.WillMsgReq{}) // our request was lost
			}
			return
		}
		if m.Topic == "" { // no will after all
			s.willTopic = ""
			s.finishWill()
			return
		}
		if !validTopic(m.Topic) {
			s.g.st.rejected.Add(1)
			s.send(&packet.Connack{ReturnCode: packet.RejectedNotSupport})
			s.endLocked(endRefused)
			return
		}
		s.willTopic, s.willQoS, s.willRetain = m.Topic, byte(max(m.Flags.QoS, 0)), m.Flags.Retain
		s.state = stWillMsg
		s.send(&packet.WillMsgReq{})
	case *packet.WillMsg:
		if s.state != stWillMsg {
			return
		}
		s.willMsg = m.Msg
		s.finishWill()
	}
}

func (s *session) finishWill() {
	if s.resuming {
		s.activate()
		return
	}
	s.connectEngine()
}

// onEngine serves a packet the broker wrote to the device's connection.
// It runs with the broker's client lock held and never blocks.
func (s *session) onEngine(conn *engineConn, pk packets.Packet) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.eng != conn || s.state == stGone {
		return
	}
	switch pk.FixedHeader.Type {
	case packets.Connack:
		if s.state != stConnecting {
			return
		}
		if pk.ReasonCode < 0x80 {
			if s.peer == nil { // the anonymous QoS -1 publisher
				s.state = stActive
				return
			}
			s.g.claim(s)
			s.activate()
			return
		}
		rc := packet.RejectedNotSupport
		if pk.ReasonCode == packets.ErrServerBusy.Code || pk.ReasonCode == packets.ErrServerUnavailable.Code ||
			pk.ReasonCode == packets.ErrQuotaExceeded.Code {
			rc = packet.RejectedCongestion
		}
		s.g.st.rejected.Add(1)
		s.g.log.Info().Str("client", s.clientID).Str("listener", s.lst).Str("identity", s.ident).
			Uint8("reason", pk.ReasonCode).Msg("mqtt-sn connect refused by the broker")
		s.send(&packet.Connack{ReturnCode: rc})
		s.endLocked(endRefused)
	case packets.Publish:
		s.onEnginePublish(pk)
	case packets.Puback, packets.Pubrec, packets.Pubcomp:
		s.onEngineAck(pk)
	case packets.Pubrel:
		s.pushAck(packets.Pubcomp, pk.PacketID)
	case packets.Suback:
		ps, ok := s.subs[pk.PacketID]
		if !ok {
			return
		}
		delete(s.subs, pk.PacketID)
		if len(pk.ReasonCodes) == 0 || pk.ReasonCodes[0] >= 0x80 {
			s.g.st.rejected.Add(1)
			s.send(&packet.Suback{MsgID: ps.msgID, ReturnCode: packet.RejectedNotSupport})
			return
		}
		s.send(&packet.Suback{Flags: packet.Flags{QoS: packet.QoS(pk.ReasonCodes[0])}, TopicID: ps.topicID, MsgID: ps.msgID})
	case packets.Unsuback:
		if ps, ok := s.subs[pk.PacketID]; ok {
			delete(s.subs, pk.PacketID)
			s.send(&packet.Unsuback{MsgID: ps.msgID})
		}
	case packets.Disconnect:
		s.endLocked(endBroker)
	}
}

func (s *session) pushAck(t byte, pid uint16) {
	fh := packets.FixedHeader{Type: t}
	if t == packets.Pubrel {
		fh.Qos = 1 // PUBREL's fixed header flags are 0b0010
	}
	if err := s.eng.push(packets.Packet{FixedHeader: fh, PacketID: pid}); err != nil {
		s.g.log.Debug().Err(err).Str("client", s.clientID).Msg("ack to broker")
	}
}

// nextPID returns a broker packet id not in use by this session.
func (s *session) nextPID() uint16 {
	for {
		s.pid++
		if s.pid == 0 {
			continue
		}
		if _, used := s.in[s.pid]; used {
			continue
		}
		if _, used := s.subs[s.pid]; used {
			continue
		}
		return s.pid
	}
}

func (s *session) nextMsgID() uint16 {
	s.msgID++
	if s.msgID == 0 {
		s.msgID = 1
	}
	return s.msgID
}

// --- device to broker ---

func (s *session) onPublish(m *packet.Publish) {
	topic, ok := s.g.topicOf(m.Flags.TopicIDType, m.TopicID, &s.reg)
	if !ok {
		s.g.st.rejected.Add(1)
		s.send(&packet.Puback{TopicID: m.TopicID, MsgID: m.MsgID, ReturnCode: packet.RejectedTopicID})
		return
	}
	qos := byte(max(m.Flags.QoS, 0))
	if qos == 0 {
		s.publishRawLocked(topic, m.Data, m.Flags.Retain)
		return
	}
	if pid, dup := s.inByMsg[m.MsgID]; dup {
		if in := s.in[pid]; in != nil && in.recd {
			s.send(&packet.Pubrec{MsgID: m.MsgID})
		}
		return // the broker's answer to the first copy is on its way
	}
	pid := s.nextPID()
	err := s.eng.push(packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: qos, Retain: m.Flags.Retain},
		TopicName:   topic, Payload: m.Data, PacketID: pid,
	})
	if err != nil {
		s.g.st.congestion.Add(1)
		s.send(&packet.Puback{TopicID: m.TopicID, MsgID: m.MsgID, ReturnCode: packet.RejectedCongestion})
		return
	}
	if s.in == nil {
		s.in, s.inByMsg = map[uint16]*inMsg{}, map[uint16]uint16{}
	}
	s.in[pid] = &inMsg{msgID: m.MsgID, topicID: m.TopicID}
	s.inByMsg[m.MsgID] = pid
}

func (s *session) publishRaw(topic string, data []byte, retain bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.state == stGone {
		return
	}
	s.publishRawLocked(topic, data, retain)
}

// publishRawLocked publishes at QoS 0; a broker that is behind drops it (counted).
func (s *session) publishRawLocked(topic string, data []byte, retain bool) {
	if s.eng == nil {
		return
	}
	err := s.eng.push(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Retain: retain}, TopicName: topic, Payload: data})
	if err != nil {
		s.g.st.congestion.Add(1)
	}
}

func (s *session) onEngineAck(pk packets.Packet) {
	in := s.in[pk.PacketID]
	if in == nil {
		return
	}
	if pk.FixedHeader.Type == packets.Pubrec && pk.ReasonCode < 0x80 {
		in.recd = true
		s.send(&packet.Pubrec{MsgID: in.msgID})
		return
	}
	delete(s.in, pk.PacketID)
	delete(s.inByMsg, in.msgID)
	switch {
	case pk.ReasonCode >= 0x80: // refused (ACL, reserved topic): SN has no "not authorized"
		s.g.st.rejected.Add(1)
		s.send(&packet.Puback{TopicID: in.topicID, MsgID: in.msgID, ReturnCode: packet.RejectedNotSupport})
	case pk.FixedHeader.Type == packets.Pubcomp:
		s.send(&packet.Pubcomp{MsgID: in.msgID})
	default:
		s.send(&packet.Puback{TopicID: in.topicID, MsgID: in.msgID, ReturnCode: packet.Accepted})
	}
}

func (s *session) onPubrel(m *packet.Pubrel) {
	pid, ok := s.inByMsg[m.MsgID]
	if !ok {
		s.send(&packet.Pubcomp{MsgID: m.MsgID}) // finished before; our PUBCOMP was lost
		return
	}
	s.pushAck(packets.Pubrel, pid)
}

func (s *session) onRegister(m *packet.Register) {
	if !validTopic(m.TopicName) {
		s.g.st.rejected.Add(1)
		s.send(&packet.Regack{MsgID: m.MsgID, ReturnCode: packet.RejectedNotSupport})
		return
	}
	id, ok := s.reg.register(m.TopicName, s.g.opts.MaxTopics)
	if !ok {
		s.g.st.rejected.Add(1)
		s.send(&packet.Regack{MsgID: m.MsgID, ReturnCode: packet.RejectedCongestion})
		return
	}
	s.send(&packet.Regack{TopicID: id, MsgID: m.MsgID, ReturnCode: packet.Accepted})
}

// subTopic resolves the topic of SUBSCRIBE or UNSUBSCRIBE into a filter,
// and the topic id SUBACK returns.
func (s *session) subTopic(f packet.Flags, name string, id uint16, register bool) (string, uint16, packet.ReturnCode) {
	switch f.TopicIDType {
	case packet.TopicPredefined:
		n, ok := s.g.opts.Predefined[id]
		if !ok {
			return "", 0, packet.RejectedTopicID
		}
		return n, id, packet.Accepted
	case packet.TopicShort:
		n := packet.ShortTopic(id)
		if !mqtt.IsValidFilter(n, false) {
			return "", 0, packet.RejectedNotSupport
		}
		return n, id, packet.Accepted
	}
	if !mqtt.IsValidFilter(name, false) {
		return "", 0, packet.RejectedNotSupport
	}
	if !register || strings.ContainsAny(name, "+#") {
		return name, 0, packet.Accepted
	}
	tid, ok := s.reg.register(name, s.g.opts.MaxTopics)
	if !ok {
		return "", 0, packet.RejectedCongestion
	}
	return name, tid, packet.Accepted
}

func (s *session) subPending(msgID uint16) bool {
	for _, ps := range s.subs {
		if ps.msgID == msgID {
			return true
		}
	}
	return false
}

func (s *session) onSubscribe(m *packet.Subscribe) {
	if s.subPending(m.MsgID) {
		return // a retransmission: SUBACK follows the first copy
	}
	if m.Flags.QoS < 0 {
		s.g.st.rejected.Add(1)
		s.send(&packet.Suback{MsgID: m.MsgID, ReturnCode: packet.RejectedNotSupport})
		return
	}
	filter, tid, rc := s.subTopic(m.Flags, m.TopicName, m.TopicID, true)
	if rc != packet.Accepted {
		s.g.st.rejected.Add(1)
		s.send(&packet.Suback{MsgID: m.MsgID, ReturnCode: rc})
		return
	}
	pid := s.nextPID()
	err := s.eng.push(packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, PacketID: pid,
		Filters: packets.Subscriptions{{Filter: filter, Qos: byte(m.Flags.QoS)}},
	})
	if err != nil {
		s.send(&packet.Suback{MsgID: m.MsgID, ReturnCode: packet.RejectedCongestion})
		return
	}
	if s.subs == nil {
		s.subs = map[uint16]pendingSub{}
	}
	s.subs[pid] = pendingSub{msgID: m.MsgID, topicID: tid}
}

func (s *session) onUnsubscribe(m *packet.Unsubscribe) {
	if s.subPending(m.MsgID) {
		return
	}
	filter, _, rc := s.subTopic(m.Flags, m.TopicName, m.TopicID, false)
	if rc != packet.Accepted {
		s.send(&packet.Unsuback{MsgID: m.MsgID}) // nothing to end
		return
	}
	pid := s.nextPID()
	err := s.eng.push(packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Unsubscribe, Qos: 1}, PacketID: pid,
		Filters: packets.Subscriptions{{Filter: filter}},
	})
	if err != nil {
		return // the device sends it again
	}
	if s.subs == nil {
		s.subs = map[uint16]pendingSub{}
	}
	s.subs[pid] = pendingSub{msgID: m.MsgID}
}

// --- broker to device ---

func (s *session) onEnginePublish(pk packets.Packet) {
	qos := pk.FixedHeader.Qos
	if qos > 0 && pk.FixedHeader.Dup {
		for _, m := range s.queue {
			if m.qos > 0 && m.pid == pk.PacketID {
				return // already queued
			}
		}
	}
	if qos == 0 {
		if s.queued0 >= s.g.opts.QueueSize {
			s.g.st.queueFull.Add(1)
			if !s.warned {
				s.warned = true
				s.g.log.Warn().Str("client", s.clientID).Int("queue", s.g.opts.QueueSize).
					Msg("mqtt-sn device queue full: dropping QoS 0 messages to it until it drains (logged once)")
			}
			return
		}
		s.queued0++
	}
	s.queue = append(s.queue, outMsg{topic: pk.TopicName, payload: pk.Payload, qos: qos, retain: pk.FixedHeader.Retain, pid: pk.PacketID})
	s.pump()
}

// topicFor picks how to name topic to the device: predefined id, short
// name, or an id already registered.
func (s *session) topicFor(topic string) (packet.TopicIDType, uint16, bool) {
	if id, ok := s.g.predef[topic]; ok {
		return packet.TopicPredefined, id, true
	}
	if id, ok := packet.ShortID(topic); ok {
		return packet.TopicShort, id, true
	}
	if id, ok := s.reg.ids[topic]; ok {
		return packet.TopicNormal, id, true
	}
	return 0, 0, false
}

// pump sends queued messages while nothing waits for an answer.
func (s *session) pump() {
	if s.state != stActive && s.state != stAwake {
		return
	}
	for s.out == nil && len(s.queue) > 0 {
		m := &s.queue[0]
		tt, id, ok := s.topicFor(m.topic)
		if !ok {
			id, ok = s.reg.register(m.topic, s.g.opts.MaxTopics)
			if !ok {
				s.g.st.rejected.Add(1)
				s.dropHead()
				continue
			}
			msgID := s.nextMsgID()
			s.setOut(outRegister, msgID, &packet.Register{TopicID: id, MsgID: msgID, TopicName: m.topic})
			return
		}
		p := &packet.Publish{Flags: packet.Flags{QoS: packet.QoS(m.qos), Retain: m.retain, TopicIDType: tt}, TopicID: id, Data: m.payload}
		if m.qos == 0 {
			s.send(p)
			s.popHead()
			continue
		}
		p.MsgID = s.nextMsgID()
		s.setOut(outPublish, p.MsgID, p)
		return
	}
	if s.state == stAwake && s.out == nil && len(s.queue) == 0 {
		// Everything buffered is delivered: back to sleep.
		s.send(&packet.Pingresp{})
		s.state = stAsleep
		s.g.st.asleep.Add(1)
		s.lastSeen = time.Now()
		s.armAlive()
	}
}

func (s *session) popHead() {
	if s.queue[0].qos == 0 {
		s.queued0--
		if s.queued0 == 0 {
			s.warned = false
		}
	}
	s.queue[0] = outMsg{}
	s.queue = s.queue[1:]
	if len(s.queue) == 0 {
		s.queue = nil
	}
}

// dropHead gives up the message at the head of the queue; the broker is
// told it was received, so it does not send it again.
func (s *session) dropHead() {
	switch m := s.queue[0]; m.qos {
	case 1:
		s.pushAck(packets.Puback, m.pid)
	case 2:
		s.pushAck(packets.Pubrec, m.pid)
	}
	s.popHead()
}

func (s *session) setOut(kind outKind, msgID uint16, p packet.Packet) {
	s.out = &outstanding{kind: kind, msgID: msgID, pkt: p, tries: 1}
	s.send(p)
	s.armRetry()
}

func (s *session) clearOut() {
	s.out = nil
	if s.retry != nil {
		s.retry.Stop()
	}
}

func (s *session) onPuback(m *packet.Puback) {
	if s.out == nil || s.out.kind != outPublish || s.out.msgID != m.MsgID || len(s.queue) == 0 {
		return
	}
	s.clearOut()
	if m.ReturnCode == packet.RejectedTopicID {
		s.reg.forget(s.queue[0].topic) // the device lost it: register again, then resend
		s.pump()
		return
	}
	if m.ReturnCode != packet.Accepted {
		s.g.st.rejected.Add(1)
	}
	s.dropHead() // delivered (or refused by the device): the broker may forget it
	s.pump()
}

func (s *session) onPubrec(m *packet.Pubrec) {
	switch {
	case s.out != nil && s.out.kind == outPublish && s.out.msgID == m.MsgID && len(s.queue) > 0 && s.queue[0].qos == 2:
		s.pushAck(packets.Pubrec, s.queue[0].pid)
		s.popHead()
		s.clearOut()
		s.setOut(outPubrel, m.MsgID, &packet.Pubrel{MsgID: m.MsgID})
	case s.out != nil && s.out.kind == outPubrel && s.out.msgID == m.MsgID:
		s.send(s.out.pkt)
	}
}

func (s *session) onPubcomp(m *packet.Pubcomp) {
	if s.out != nil && s.out.kind == outPubrel && s.out.msgID == m.MsgID {
		s.clearOut()
		s.pump()
	}
}

func (s *session) onRegack(m *packet.Regack) {
	if s.out == nil || s.out.kind != outRegister || s.out.msgID != m.MsgID || len(s.queue) == 0 {
		return
	}
	s.clearOut()
	if m.ReturnCode != packet.Accepted {
		s.g.st.rejected.Add(1)
		s.reg.forget(s.queue[0].topic)
		s.dropHead()
	}
	s.pump()
}

// --- timers, sleep ---

// armRetry (re)starts Tretry for the outstanding message.
func (s *session) armRetry() {
	if s.retry == nil {
		s.retry = time.AfterFunc(s.g.opts.RetryInterval, s.onRetry)
		return
	}
	s.retry.Reset(s.g.opts.RetryInterval)
}

func (s *session) onRetry() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.out == nil || (s.state != stActive && s.state != stAwake) {
		return
	}
	if s.out.tries >= s.g.opts.MaxRetries {
		s.g.log.Info().Str("client", s.clientID).Int("tries", s.out.tries).Msg("mqtt-sn client lost: no answer to retransmissions")
		s.endLocked(endLost)
		return
	}
	s.out.tries++
	s.resend()
}

// resend sends the outstanding message again (PUBLISH with DUP).
func (s *session) resend() {
	if p, ok := s.out.pkt.(*packet.Publish); ok {
		p.Flags.DUP = true
	}
	s.g.st.retransmits.Add(1)
	s.send(s.out.pkt)
	s.armRetry()
}

// deadline is how long the device may stay silent in its state.
func (s *session) deadline() time.Duration {
	switch s.state {
	case stWillTopic, stWillMsg, stConnecting:
		return s.g.opts.RetryInterval * time.Duration(s.g.opts.MaxRetries)
	case stActive, stAwake:
		return s.keepAlive * 3 / 2
	case stAsleep:
		return s.sleep * 3 / 2
	}
	return 0
}

func (s *session) armAlive() {
	d := s.deadline()
	if d <= 0 || s.peer == nil {
		if s.alive != nil {
			s.alive.Stop()
		}
		return
	}
	wait := time.Until(s.lastSeen.Add(d))
	if s.alive == nil {
		s.alive = time.AfterFunc(wait, s.checkAlive)
		return
	}
	s.alive.Reset(wait)
}

func (s *session) checkAlive() {
	s.mu.Lock()
	defer s.mu.Unlock()
	d := s.deadline()
	if s.state == stGone || d <= 0 {
		return
	}
	if time.Since(s.lastSeen) < d {
		s.armAlive()
		return
	}
	what := "keep-alive"
	if s.state == stAsleep {
		what = "sleep"
	}
	s.g.log.Info().Str("client", s.clientID).Str("expired", what).Dur("after", d).Msg("mqtt-sn client lost")
	s.endLocked(endLost)
}

func (s *session) goToSleep(d time.Duration) {
	if s.state != stActive && s.state != stAwake {
		return
	}
	if s.state == stActive || s.state == stAwake {
		s.g.st.asleep.Add(1)
	}
	s.state = stAsleep
	s.sleep = d
	if s.retry != nil {
		s.retry.Stop() // resumed on wake-up
	}
	s.send(&packet.Disconnect{})
	s.armAlive()
}

// wake serves PINGREQ with this session's client id, possibly from a new address.
func (s *session) wake(from peer) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.state == stGone {
		return
	}
	if s.peer == nil || s.peer.key() != from.key() {
		s.g.rebind(s, s.peer, from)
		s.peer = from
	}
	s.lastSeen = time.Now()
	switch s.state {
	case stAsleep:
		s.wakeLocked()
	case stActive:
		s.send(&packet.Pingresp{})
	}
}

func (s *session) wakeLocked() {
	s.g.st.asleep.Add(-1)
	s.state = stAwake
	s.armAlive()
	if s.out != nil {
		s.resend()
	}
	s.pump()
}

// validTopic reports whether name can be published to: non-empty UTF-8
// without wildcards or NUL.
func validTopic(name string) bool {
	return name != "" && utf8.ValidString(name) && !strings.ContainsAny(name, "+#\x00")
}
