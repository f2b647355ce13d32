// SPDX-License-Identifier: MIT
// SPDX-FileCopyrightText: 2023 mochi-mqtt, mochi-co
// SPDX-FileContributor: mochi-co

package mqtt

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/xid"

	"github.com/mochi-mqtt/server/v2/mempool"
	"github.com/mochi-mqtt/server/v2/packets"
)

const (
	defaultKeepalive             uint16 = 10 // the default connection keepalive value in seconds.
	defaultClientProtocolVersion byte   = 4  // the default mqtt protocol version of connecting clients (if somehow unspecified).
	minimumKeepalive             uint16 = 5  // the minimum recommended keepalive - values under with display a warning.
)

var (
	ErrMinimumKeepalive = errors.New("client keepalive is below minimum recommended value and may exhibit connection instability")
)

// ReadFn is the function signature for the function used for reading and processing new packets.
type ReadFn func(*Client, packets.Packet) error

// Clients contains a map of the clients known by the broker.
type Clients struct {
	internal map[string]*Client // clients known by the broker, keyed on client id.
	sync.RWMutex
}

// NewClients returns an instance of Clients.
func NewClients() *Clients {
	return &Clients{
		internal: make(map[string]*Client),
	}
}

// Add adds a new client to the clients map, keyed on client id.
func (cl *Clients) Add(val *Client) {
	cl.Lock()
	defer cl.Unlock()
	cl.internal[val.ID] = val
}

// GetAll returns all the clients.
func (cl *Clients) GetAll() map[string]*Client {
	cl.RLock()
	defer cl.RUnlock()
	m := map[string]*Client{}
	for k, v := range cl.internal {
		m[k] = v
	}
	return m
}

// Get returns the value of a client if it exists.
func (cl *Clients) Get(id string) (*Client, bool) {
	cl.RLock()
	defer cl.RUnlock()
	val, ok := cl.internal[id]
	return val, ok
}

// Len returns the length of the clients map.
func (cl *Clients) Len() int {
	cl.RLock()
	defer cl.RUnlock()
	val := len(cl.internal)
	return val
}

// Delete removes a client from the internal map.
func (cl *Clients) Delete(id string) {
	cl.Lock()
	defer cl.Unlock()
	delete(cl.internal, id)
}

// deleteIf removes the client id if it is still c, not a newer connection
// under the same id. COLONY PATCH P35.
func (cl *Clients) deleteIf(id string, c *Client) {
	cl.Lock()
	defer cl.Unlock()
	if cl.internal[id] == c {
		delete(cl.internal, id)
	}
}

// GetByListener returns clients matching a listener id.
func (cl *Clients) GetByListener(id string) []*Client {
	cl.RLock()
	defer cl.RUnlock()
	// COLONY PATCH P8: upstream called cl.Len() here, a second RLock while
	// holding one; with a writer (a disconnecting client's Delete) queued in
	// between, that deadlocks server shutdown.
	clients := make([]*Client, 0, len(cl.internal))
	for _, client := range cl.internal {
		if client.Net.Listener == id && !client.Closed() {
			clients = append(clients, client)
		}
	}
	return clients
}

// Client contains information about a client known by the broker.
type Client struct {
	Properties   ClientProperties // client properties
	State        ClientState      // the operational state of the client.
	Net          ClientConnection // network connection state of the client
	ID           string           // the client id.
	ops          *ops             // ops provides a reference to server ops.
	sync.RWMutex                  // mutex
}

// ClientConnection contains the connection transport and metadata for the client.
type ClientConnection struct {
	Conn     net.Conn                // the net.Conn used to establish the connection
	rbuf     readBuf                 // COLONY PATCH P17: buffers what the client sends, from a pool while there is something to read
	park     atomic.Pointer[parking] // COLONY PATCH P16: set once the connection has been parked while idle
	outbuf   *bytes.Buffer           // a buffer for writing packets
	sock     io.ReadWriter           // COLONY PATCH P20/P21: the connection's bytes; a *rawSocket (non-blocking writes, raw system calls) where it is a plain socket
	Remote   string                  // the remote address of the client
	Listener string                  // listener id of the client
	Inline   bool                    // if true, the client is the built-in 'inline' embedded client
}

// ClientProperties contains the properties which define the client behaviour.
type ClientProperties struct {
	Props           packets.Properties
	Will            Will
	Username        []byte
	ProtocolVersion byte
	Clean           bool
}

// Will contains the last will and testament details for a client connection.
type Will struct {
	Payload           []byte                 // -
	User              []packets.UserProperty // -
	TopicName         string                 // -
	Flag              uint32                 // 0,1
	WillDelayInterval uint32                 // -
	Qos               byte                   // -
	Retain            bool                   // -
}

// ClientState tracks the state of the client.
type ClientState struct {
	TopicAliases    TopicAliases       // a map of topic aliases
	stopCause       atomic.Value       // reason for stopping
	Inflight        *Inflight          // a map of in-flight qos messages
	Subscriptions   *Subscriptions     // a map of the subscription filters a client maintains
	disconnected    int64              // the time the client disconnected in unix time, for calculating expiry
	outbound        *outQueue          // COLONY PATCH P1: queue for pending outbound packets
	endOnce         sync.Once          // only end once
	isTakenOver     atomic.Bool        // used to identify orphaned clients
	packetID        uint32             // the current highest packetID
	open            context.Context    // indicate that the client is open for packet exchange
	cancelOpen      context.CancelFunc // cancel function for open context
	dropWarned      atomic.Bool        // COLONY PATCH P4: a drop was logged since the queue last drained
	writing         atomic.Int32       // COLONY PATCH P1: packets of the current batch not yet written
	packetIDMu      sync.Mutex         // COLONY PATCH P7: guards packetID allocation
	Keepalive       uint16             // the number of seconds the connection can wait
	ServerKeepalive bool               // keepalive was set by the server
	publishRate     publishBucket      // COLONY PATCH P15: MaximumPublishRate
	delivering      atomic.Int32       // COLONY PATCH P34: deliveries that found the client and are under way
	released        atomic.Bool        // COLONY PATCH P34: the session is leaving for another node (ReleaseSession)
	claimed         atomic.Bool        // COLONY PATCH P35: the session was ended by expiry or taken over, whichever came first
	endMu           sync.Mutex         // COLONY PATCH P35: held while the expiry sweep claims and ends the session
	willMu          sync.Mutex         // COLONY PATCH P38: orders scheduling this connection's delayed will against a take-over
	willFate        uint8              // COLONY PATCH P38: set by a take-over (under willMu): willResumed or willEnded
}

// newClient returns a new instance of Client. This is almost exclusively used by Server
// for creating new clients, but it lives here because it's not dependent.
func newClient(c net.Conn, o *ops) *Client {
	ctx, cancel := context.WithCancel(context.Background())
	cl := &Client{
		State: ClientState{
			Inflight:      NewInflights(),
			Subscriptions: NewSubscriptions(),
			TopicAliases:  NewTopicAliases(o.options.Capabilities.TopicAliasMaximum),
			open:          ctx,
			cancelOpen:    cancel,
			Keepalive:     defaultKeepalive,
		},
		Properties: ClientProperties{
			ProtocolVersion: defaultClientProtocolVersion, // default protocol version
		},
		ops: o,
	}
	cl.State.outbound = newOutQueue(int(o.options.Capabilities.MaximumClientWritesPending), cl.writeBatch,
		func() { cl.State.dropWarned.Store(false) })

	if c != nil {
		sock := sockOf(c) // COLONY PATCH P20/P21
		cl.Net = ClientConnection{
			Conn:   c,
			rbuf:   newReadBuf(c, sock, o.options.ClientNetReadBufferSize),
			Remote: c.RemoteAddr().String(),
			sock:   sock,
		}
		if _, ok := sock.(*rawSocket); ok {
			cl.State.outbound.writeNow, cl.State.outbound.flush = cl.writeNow, cl.flushLeft
		}
	}

	return cl
}

// WriteLoop is kept for API compatibility and returns at once.
// COLONY PATCH P1: outbound packets are written by a goroutine that the
// client's queue starts when it gets work and that ends when it is empty.
func (cl *Client) WriteLoop() {}

// writeBatch writes packets taken from the outbound queue. COLONY PATCH P1.
func (cl *Client) writeBatch(batch []outItem) {
	for i, it := range batch {
		cl.State.writing.Store(int32(len(batch) - i))
		cl.writeItem(it, false)
	}
	cl.State.writing.Store(0)

	// Bytes gathered for packets that were to follow must not wait for a
	// later write when the last packet of the batch was not sent (an
	// encoding error, a packet too large for the client).
	cl.Lock()
	if cl.Net.outbuf != nil && cl.State.outbound.len() == 0 && !cl.Closed() {
		if err := cl.flushOutbuf(); err != nil {
			cl.ops.log.Debug("failed flushing packets", "error", err, "client", cl.ID)
		}
	}
	cl.Unlock()
}

// writeItem writes one queued packet (nb: without blocking, P20); a failure
// is the connection's, which its reader sees, so it is only logged.
func (cl *Client) writeItem(it outItem, nb bool) {
	var err error
	if it.shared != nil {
		err = cl.writeShared(it.shared, nb) // COLONY PATCH P13
	} else {
		err = cl.writePacket(*it.pk, nb)
	}
	if err != nil {
		cl.ops.log.Debug("failed publishing packet", "error", err, "client", cl.ID, "packet", it.summary())
	}
}

// writeNow writes one packet for a caller that holds the outbound queue's
// writer role, without blocking, and reports whether it did (written) and
// whether bytes of it were left in outbuf for flushLeft. COLONY PATCH P20.
//
// It does not wait for the client's lock either: whoever holds it may be
// in a blocking write to this socket (the client's own goroutine sending a
// PINGRESP or an ack to a client that stopped reading), and the caller is
// a publisher that must not wait on it. Nor does it run encode or sent
// hooks under that lock. In either case nothing is written and the queue's
// writer goroutine writes the packet instead.
func (cl *Client) writeNow(it outItem) (written, left bool) {
	if cl.ops.hooks.Provides(OnPacketEncode, OnPacketSent) || !cl.TryLock() {
		return false, false
	}
	defer cl.Unlock()
	cl.writeItem(it, true)
	return true, cl.Net.outbuf != nil && !cl.Closed()
}

// flushLeft writes, blocking, the bytes writeNow left. COLONY PATCH P20.
func (cl *Client) flushLeft() {
	cl.Lock()
	defer cl.Unlock()
	if cl.Net.outbuf != nil && !cl.Closed() {
		if err := cl.flushOutbuf(); err != nil {
			cl.ops.log.Debug("failed flushing packets", "error", err, "client", cl.ID)
		}
	}
}

// ParseConnect parses the connect parameters and properties for a client.
func (cl *Client) ParseConnect(lid string, pk packets.Packet) {
	cl.Net.Listener = lid

	cl.Properties.ProtocolVersion = pk.ProtocolVersion
	cl.Properties.Username = pk.Connect.Username
	cl.Properties.Clean = pk.Connect.Clean
	cl.Properties.Props = pk.Properties.Copy(false)

	if cl.Properties.Props.ReceiveMaximum > cl.ops.options.Capabilities.MaximumInflight { // 3.3.4 Non-normative
		cl.Properties.Props.ReceiveMaximum = cl.ops.options.Capabilities.MaximumInflight
	}

	if pk.Connect.Keepalive <= minimumKeepalive {
		cl.ops.log.Warn(
			ErrMinimumKeepalive.Error(),
			"client", cl.ID,
			"keepalive", pk.Connect.Keepalive,
			"recommended", minimumKeepalive,
		)
	}

	cl.State.Keepalive = pk.Connect.Keepalive                                              // [MQTT-3.2.2-22]
	cl.State.Inflight.ResetReceiveQuota(int32(cl.ops.options.Capabilities.ReceiveMaximum)) // server receive max per client
	cl.State.Inflight.ResetSendQuota(int32(cl.Properties.Props.ReceiveMaximum))            // client receive max
	cl.State.TopicAliases.Outbound = NewOutboundTopicAliases(cl.Properties.Props.TopicAliasMaximum)

	cl.ID = pk.Connect.ClientIdentifier
	if cl.ID == "" {
		cl.ID = xid.New().String() // [MQTT-3.1.3-6] [MQTT-3.1.3-7]
		cl.Properties.Props.AssignedClientID = cl.ID
	}

	if pk.Connect.WillFlag {
		cl.Properties.Will = Will{
			Qos:               pk.Connect.WillQos,
			Retain:            pk.Connect.WillRetain,
			Payload:           pk.Connect.WillPayload,
			TopicName:         pk.Connect.WillTopic,
			WillDelayInterval: pk.Connect.WillProperties.WillDelayInterval,
			User:              pk.Connect.WillProperties.User,
		}
		if pk.Properties.SessionExpiryIntervalFlag &&
			pk.Properties.SessionExpiryInterval < pk.Connect.WillProperties.WillDelayInterval {
			cl.Properties.Will.WillDelayInterval = pk.Properties.SessionExpiryInterval
		}
		if pk.Connect.WillFlag {
			cl.Properties.Will.Flag = 1 // atomic for checking
		}
	}
}

// refreshDeadline refreshes the read/write deadline for the net.Conn connection,
// and returns it (zero: none).
func (cl *Client) refreshDeadline(keepalive uint16) time.Time {
	var expiry time.Time // nil time can be used to disable deadline if keepalive = 0
	if keepalive > 0 {
		// COLONY PATCH P15: in int, not uint16, which wrapped for keep-alives above 43,690 s.
		expiry = time.Now().Add(time.Duration(int(keepalive)+int(keepalive)/2) * time.Second) // [MQTT-3.1.2-22]
	}

	if cl.Net.Conn != nil {
		_ = cl.Net.Conn.SetDeadline(expiry) // [MQTT-3.1.2-22]
	}
	return expiry
}

// NextPacketID returns the next available (unused) packet id for the client.
// If no unused packet ids are available, an error is returned and the client
// should be disconnected.
func (cl *Client) NextPacketID() (i uint32, err error) {
	// COLONY PATCH P7: its own lock. Upstream shared the lock held across
	// network writes, so a publisher stalled on a subscriber with a full
	// socket until that write's deadline (keep-alive x 1.5).
	cl.State.packetIDMu.Lock()
	defer cl.State.packetIDMu.Unlock()

	i = atomic.LoadUint32(&cl.State.packetID)
	started := i
	overflowed := false
	for {
		if overflowed && i == started {
			return 0, packets.ErrQuotaExceeded
		}

		if i >= cl.ops.options.Capabilities.maximumPacketID {
			overflowed = true
			i = 0
			continue
		}

		i++

		if _, ok := cl.State.Inflight.Get(uint16(i)); !ok {
			atomic.StoreUint32(&cl.State.packetID, i)
			return i, nil
		}
	}
}

// ResendInflightMessages attempts to resend any pending inflight messages to connected clients.
func (cl *Client) ResendInflightMessages(force bool) error {
	// COLONY PATCH P26: the resend counts against the new connection's
	// Receive Maximum (MQTT 5 4.9: the quota starts afresh); what it does
	// not let through is held, in order, for the acknowledgements, and so
	// is what publishers gave the client since it could be found: it goes
	// after the session's messages. Messages the old connection held were
	// never sent: not duplicates (unless sent on one before). COLONY PATCH
	// P27: the old connection's topic aliases are gone. COLONY PATCH P28:
	// a message over this connection's Maximum Packet Size is discarded as
	// if delivered [MQTT-3.1.2-25].
	out, dropped := cl.State.Inflight.resendPlan(cl.tooLarge)
	for _, tk := range dropped {
		cl.ops.hooks.OnQosDropped(cl, tk)
		atomic.AddInt64(&cl.ops.info.Inflight, -1)
		atomic.AddInt64(&cl.ops.info.TooLargeDropped, 1)
	}
	for _, tk := range out {
		// COLONY PATCH P47: counted as a recording (P36), and not begun once
		// a take-over sealed the set: written after the next connection
		// had resent the message and seen it acknowledged, the record
		// outlived its flow, and a restart delivered the message again.
		if !cl.State.Inflight.beginRecording() {
			return packets.ErrSessionTakenOver
		}
		cl.ops.hooks.OnQosPublish(cl, tk, tk.Created, 0)
		cl.State.Inflight.recorded()
		err := cl.WritePacket(tk)
		if err != nil {
			return err
		}
	}

	return nil
}

// ClearInflights deletes all inflight messages for the client, e.g. for a disconnected user with a clean session.
func (cl *Client) ClearInflights() {
	for _, tk := range cl.State.Inflight.GetAll(false) {
		if ok := cl.State.Inflight.Delete(tk.PacketID); ok {
			cl.ops.hooks.OnQosDropped(cl, tk)
			atomic.AddInt64(&cl.ops.info.Inflight, -1)
		}
	}
	for _, id := range cl.State.Inflight.dropInbound(0) { // COLONY PATCH P25
		cl.ops.hooks.OnQosDropped(cl, inboundState(id, 0))
	}
}

// enterDelivery counts a delivery to cl that found it among the clients;
// false: the session is being released to another node, and the delivery
// is not to start (it is as if the message came after the session left).
// leaveDelivery ends it. ReleaseSession waits for the deliveries under
// way before it reads the session's messages. Both sides write before
// they read (sequentially consistent atomics), so either the release sees
// the delivery or the delivery sees the release. COLONY PATCH P34.
func (cl *Client) enterDelivery() bool {
	cl.State.delivering.Add(1)
	if cl.State.released.Load() {
		cl.State.delivering.Add(-1)
		return false
	}
	return true
}

// leaveDelivery ends a delivery enterDelivery started. COLONY PATCH P34.
func (cl *Client) leaveDelivery() {
	cl.State.delivering.Add(-1)
}

// endInbound ends the client's own QoS 2 publish id, if it was waiting for
// its PUBREL: its place in the receive maximum is given back, and the
// in-flight hooks hear of it as completed (the PUBREL came) or dropped.
// COLONY PATCH P25.
func (cl *Client) endInbound(id uint16, completed bool) {
	if !cl.State.Inflight.deleteInbound(id) {
		return
	}
	cl.State.Inflight.IncreaseReceiveQuota()
	if completed {
		cl.ops.hooks.OnQosComplete(cl, inboundState(id, 0))
	} else {
		cl.ops.hooks.OnQosDropped(cl, inboundState(id, 0))
	}
}

// ClearExpiredInflights deletes any inflight messages which have expired.
func (cl *Client) ClearExpiredInflights(now, maximumExpiry int64) []uint16 {
	deleted := []uint16{}
	expired := func(tk *packets.Packet) bool {
		return tk.ProtocolVersion == 5 && tk.Expiry > 0 && tk.Expiry < now || // [MQTT-3.3.2-5]
			// If the maximum message expiry interval is set (greater than 0), and the message
			// retention period exceeds the maximum expiry, the message will be forcibly removed.
			maximumExpiry > 0 && now-tk.Created > maximumExpiry
	}
	if !cl.Closed() {
		// COLONY PATCH P26: a connected client's messages sent and not yet
		// acknowledged do not expire: their delivery has started
		// [MQTT-3.3.2-5], and deleting them lost the send quota they hold.
		// Held ones may: looked at and deleted under one lock, so that one
		// released meanwhile is not taken for held.
		for _, tk := range cl.State.Inflight.dropHeld(expired) {
			cl.ops.hooks.OnQosDropped(cl, tk)
			atomic.AddInt64(&cl.ops.info.Inflight, -1)
			deleted = append(deleted, tk.PacketID)
		}
	} else {
		for _, tk := range cl.State.Inflight.GetAll(false) {
			if expired(&tk) {
				if ok := cl.State.Inflight.Delete(tk.PacketID); ok {
					cl.ops.hooks.OnQosDropped(cl, tk)
					atomic.AddInt64(&cl.ops.info.Inflight, -1)
					deleted = append(deleted, tk.PacketID)
				}
			}
		}
	}
	if maximumExpiry > 0 { // COLONY PATCH P25: a PUBREL that never came
		for _, id := range cl.State.Inflight.dropInbound(now - maximumExpiry) {
			cl.State.Inflight.IncreaseReceiveQuota()
			cl.ops.hooks.OnQosDropped(cl, inboundState(id, 0))
		}
	}

	return deleted
}

// Read reads incoming packets from the connected client and transforms them into
// packets to be handled by the packetHandler.
func (cl *Client) Read(packetHandler ReadFn) error {
	var err error

	for {
		if cl.Closed() {
			return nil
		}

		cl.refreshDeadline(cl.State.Keepalive)
		fh := new(packets.FixedHeader)
		err = cl.ReadFixedHeader(fh)
		if err != nil {
			return err
		}

		pk, err := cl.ReadPacket(fh)
		if err != nil {
			return err
		}

		err = packetHandler(cl, pk) // Process inbound packet.
		if err != nil {
			return err
		}
		cl.Net.rbuf.release() // COLONY PATCH P17
	}
}

// Stop instructs the client to shut down all processing goroutines and disconnect.
func (cl *Client) Stop(err error) {
	cl.State.endOnce.Do(func() {

		if cl.Net.Conn != nil {
			_ = cl.Net.Conn.Close() // omit close error
		}

		if err != nil {
			cl.State.stopCause.Store(err)
		}

		if cl.State.cancelOpen != nil {
			cl.State.cancelOpen()
		}

		if p := cl.Net.park.Load(); p != nil {
			p.wake() // COLONY PATCH P16: a parked connection is served again, to end
		}

		atomic.StoreInt64(&cl.State.disconnected, time.Now().Unix())
	})
}

// StopCause returns the reason the client connection was stopped, if any.
func (cl *Client) StopCause() error {
	if cl.State.stopCause.Load() == nil {
		return nil
	}
	return cl.State.stopCause.Load().(error)
}

// StopTime returns the the time the client disconnected in unix time, else zero.
func (cl *Client) StopTime() int64 {
	return atomic.LoadInt64(&cl.State.disconnected)
}

// Closed returns true if client connection is closed.
func (cl *Client) Closed() bool {
	return cl.State.open == nil || cl.State.open.Err() != nil
}

func (cl *Client) IsTakenOver() bool {
	return cl.State.isTakenOver.Load()
}

// ReadFixedHeader reads in the values of the next packet's fixed header.
func (cl *Client) ReadFixedHeader(fh *packets.FixedHeader) error {
	if cl.Net.rbuf.conn == nil {
		return ErrConnectionClosed
	}

	b, err := cl.Net.rbuf.firstByte()
	if err != nil {
		return err
	}

	err = fh.Decode(b)
	if err != nil {
		return err
	}

	var bu int
	fh.Remaining, bu, err = packets.DecodeLength(&cl.Net.rbuf)
	if err != nil {
		return err
	}

	if cl.ops.options.Capabilities.MaximumPacketSize > 0 && uint32(fh.Remaining+1) > cl.ops.options.Capabilities.MaximumPacketSize {
		return packets.ErrPacketTooLarge // [MQTT-3.2.2-15]
	}

	atomic.AddInt64(&cl.ops.info.BytesReceived, int64(bu+1))
	return nil
}

// ReadPacket reads the remaining buffer into an MQTT packet.
func (cl *Client) ReadPacket(fh *packets.FixedHeader) (pk packets.Packet, err error) {
	atomic.AddInt64(&cl.ops.info.PacketsReceived, 1)

	pk.ProtocolVersion = cl.Properties.ProtocolVersion // inherit client protocol version for decoding
	pk.FixedHeader = *fh

	// COLONY PATCH P24: an ack that is only its packet id (any MQTT 3 ack,
	// and an MQTT 5 one with success and no properties) is decoded as it
	// is read, without a buffer of its own: at QoS 1 one comes in for
	// every delivery.
	if pk.FixedHeader.Remaining == 2 {
		switch pk.FixedHeader.Type {
		case packets.Puback, packets.Pubrec, packets.Pubrel, packets.Pubcomp:
			hi, err := cl.Net.rbuf.ReadByte()
			if err != nil {
				return pk, err
			}
			lo, err := cl.Net.rbuf.ReadByte()
			if err == io.EOF {
				err = io.ErrUnexpectedEOF // as io.ReadFull has it
			}
			if err != nil {
				return pk, err
			}
			atomic.AddInt64(&cl.ops.info.BytesReceived, 2)
			pk.PacketID = uint16(hi)<<8 | uint16(lo)
			return cl.ops.hooks.OnPacketRead(cl, pk)
		}
	}

	p := make([]byte, pk.FixedHeader.Remaining)
	n, err := io.ReadFull(&cl.Net.rbuf, p)
	if err != nil {
		return pk, err
	}

	atomic.AddInt64(&cl.ops.info.BytesReceived, int64(n))

	// COLONY PATCH P13: p is this packet's own buffer, so the packet is
	// decoded from it. Upstream copied it once more "so that the next packet
	// does not change this one", a second allocation per packet received.
	px := p
	switch pk.FixedHeader.Type {
	case packets.Connect:
		err = pk.ConnectDecode(px)
	case packets.Disconnect:
		err = pk.DisconnectDecode(px)
	case packets.Connack:
		err = pk.ConnackDecode(px)
	case packets.Publish:
		err = pk.PublishDecode(px)
		if err == nil {
			atomic.AddInt64(&cl.ops.info.MessagesReceived, 1)
		}
	case packets.Puback:
		err = pk.PubackDecode(px)
	case packets.Pubrec:
		err = pk.PubrecDecode(px)
	case packets.Pubrel:
		err = pk.PubrelDecode(px)
	case packets.Pubcomp:
		err = pk.PubcompDecode(px)
	case packets.Subscribe:
		err = pk.SubscribeDecode(px)
	case packets.Suback:
		err = pk.SubackDecode(px)
	case packets.Unsubscribe:
		err = pk.UnsubscribeDecode(px)
	case packets.Unsuback:
		err = pk.UnsubackDecode(px)
	case packets.Pingreq:
	case packets.Pingresp:
	case packets.Auth:
		err = pk.AuthDecode(px)
	default:
		err = fmt.Errorf("invalid packet type; %v", pk.FixedHeader.Type)
	}

	if err != nil {
		return pk, err
	}

	pk, err = cl.ops.hooks.OnPacketRead(cl, pk)
	return
}

// WritePacket encodes and writes a packet to the client.
func (cl *Client) WritePacket(pk packets.Packet) error {
	return cl.writePacket(pk, false)
}

// writePacket is WritePacket; with nb (COLONY PATCH P20) it does not block:
// what the socket does not take at once is left in outbuf.
func (cl *Client) writePacket(pk packets.Packet, nb bool) error {
	if cl.Closed() {
		return ErrConnectionClosed
	}

	if cl.Net.Conn == nil {
		return nil
	}

	pk = cl.prepare(pk)
	aliasTopic := cl.outboundAlias(&pk) // COLONY PATCH P32
	pk = cl.ops.hooks.OnPacketEncode(cl, pk)

	// COLONY PATCH P13: a pooled buffer instead of a new one per packet.
	buf := encodeBuffers.Get()
	defer encodeBuffers.Put(buf)
	err := encodePacket(&pk, buf)
	if err != nil {
		return err
	}

	if pk.Mods.MaxSize > 0 && uint32(buf.Len()) > pk.Mods.MaxSize {
		return packets.ErrPacketTooLarge // [MQTT-3.1.2-24] [MQTT-3.1.2-25]
	}
	if aliasTopic != "" {
		cl.State.TopicAliases.Outbound.Set(aliasTopic) // this packet sets the alias up
	}

	n, err := cl.send(buf.Bytes(), nb)
	if err != nil {
		return err
	}

	atomic.AddInt64(&cl.ops.info.BytesSent, n)
	atomic.AddInt64(&cl.ops.info.PacketsSent, 1)
	if pk.FixedHeader.Type == packets.Publish {
		atomic.AddInt64(&cl.ops.info.MessagesSent, 1)
	}

	if hooks := cl.ops.hooks.providing(OnPacketSent); len(hooks) > 0 {
		// The buffer goes back to the pool: hooks get bytes of their own, as upstream.
		cl.ops.hooks.OnPacketSent(cl, pk, bytes.Clone(buf.Bytes()))
	}

	return err
}

// prepare sets what writePacket encodes pk with for this client: its
// protocol version, limits and the message expiry interval left.
func (cl *Client) prepare(pk packets.Packet) packets.Packet {
	if pk.Expiry > 0 {
		expiry := pk.Expiry - time.Now().Unix()
		if expiry < 1 {
			expiry = 1
		}
		pk.Properties.MessageExpiryInterval = uint32(expiry) // [MQTT-3.3.2-6]
	}

	pk.ProtocolVersion = cl.Properties.ProtocolVersion
	if pk.Mods.MaxSize == 0 { // NB we use this statement to embed client packet sizes in tests
		pk.Mods.MaxSize = cl.Properties.Props.MaximumPacketSize
	}

	if cl.Properties.Props.RequestProblemInfoFlag && cl.Properties.Props.RequestProblemInfo == 0x0 {
		pk.Mods.DisallowProblemInfo = true // [MQTT-3.1.2-29] strict, no problem info on any packet if set
	}

	if pk.FixedHeader.Type != packets.Connack || cl.Properties.Props.RequestResponseInfo == 0x1 || cl.ops.options.Capabilities.Compatibilities.AlwaysReturnResponseInfo {
		pk.Mods.AllowResponseInfo = true // [MQTT-3.1.2-28] we need to know which properties we can encode
	}
	return pk
}

// outboundAlias gives the PUBLISH pk the topic alias of its topic on this
// connection: by alias only if the client was told it, else with its topic
// name and the alias it sets up; it returns the topic whose alias the
// write sets up (empty: none), which the caller gives out once the packet
// is sure to be written. COLONY PATCH P32: the alias is chosen as packets
// are written, in the order the client gets them. It was chosen when a
// message was delivered, so a message held for the Receive Maximum (P26),
// discarded as too large (P28) or dropped set up an alias it did not carry
// out first, or at all, and the next message on the topic went out by an
// alias the client had never been told [MQTT-3.3.2-12]. Any alias a packet
// came with (from another connection, P27) is dropped.
func (cl *Client) outboundAlias(pk *packets.Packet) string {
	if pk.FixedHeader.Type != packets.Publish {
		return ""
	}
	pk.Properties.TopicAlias, pk.Properties.TopicAliasFlag = 0, false // [MQTT-3.3.2-7]
	if cl.Properties.ProtocolVersion < 5 || cl.Properties.Props.TopicAliasMaximum == 0 || pk.TopicName == "" {
		return ""
	}
	alias, told := cl.State.TopicAliases.Outbound.peek(pk.TopicName)
	if alias == 0 {
		return ""
	}
	pk.Properties.TopicAlias, pk.Properties.TopicAliasFlag = alias, true
	if told {
		pk.TopicName = ""
		return ""
	}
	return pk.TopicName
}

// tooLarge reports whether the PUBLISH pk, with its topic name, is larger
// than the client's Maximum Packet Size. COLONY PATCH P28: such a QoS 1/2
// message must be discarded as if its delivery had completed
// [MQTT-3.1.2-25]; upstream put it in flight, where its write failed every
// time: it kept its place in the session and its send quota for good (a
// Receive Maximum stalled), and its resend on reconnect failed the
// connection. Hooks that change packets as they are encoded
// (OnPacketEncode) are not asked; the write still checks.
func (cl *Client) tooLarge(pk *packets.Packet) bool {
	limit := cl.Properties.Props.MaximumPacketSize
	if limit == 0 || pk.Mods.MaxSize > 0 || cl.Properties.ProtocolVersion < 5 {
		return false
	}
	c := cl.prepare(*pk)
	buf := encodeBuffers.Get()
	defer encodeBuffers.Put(buf)
	if err := c.PublishEncode(buf); err != nil {
		return false
	}
	return uint32(buf.Len()) > limit
}

// encodePacket encodes pk into buf according to its type.
func encodePacket(pk *packets.Packet, buf *bytes.Buffer) error {
	switch pk.FixedHeader.Type {
	case packets.Connect:
		return pk.ConnectEncode(buf)
	case packets.Connack:
		return pk.ConnackEncode(buf)
	case packets.Publish:
		return pk.PublishEncode(buf)
	case packets.Puback:
		return pk.PubackEncode(buf)
	case packets.Pubrec:
		return pk.PubrecEncode(buf)
	case packets.Pubrel:
		return pk.PubrelEncode(buf)
	case packets.Pubcomp:
		return pk.PubcompEncode(buf)
	case packets.Subscribe:
		return pk.SubscribeEncode(buf)
	case packets.Suback:
		return pk.SubackEncode(buf)
	case packets.Unsubscribe:
		return pk.UnsubscribeEncode(buf)
	case packets.Unsuback:
		return pk.UnsubackEncode(buf)
	case packets.Pingreq:
		return pk.PingreqEncode(buf)
	case packets.Pingresp:
		return pk.PingrespEncode(buf)
	case packets.Disconnect:
		return pk.DisconnectEncode(buf)
	case packets.Auth:
		return pk.AuthEncode(buf)
	default:
		return fmt.Errorf("%w: %v", packets.ErrNoValidPacketAvailable, pk.FixedHeader.Type)
	}
}

// writeShared writes a QoS 0 PUBLISH encoded once for many subscribers.
// COLONY PATCH P13. When the message expiry interval it carries (MQTT 5) is
// no longer the one this moment calls for, the packet is encoded afresh.
func (cl *Client) writeShared(sp *sharedPublish, nb bool) error {
	if cl.Closed() {
		return ErrConnectionClosed
	}

	if cl.Net.Conn == nil {
		return nil
	}

	if sp.pk != nil && sp.interval != expiryInterval(sp.pk.Expiry) { // P24: pk is kept for MQTT 5 expiry only
		return cl.writePacket(*sp.pk, nb)
	}

	n, err := cl.send(sp.b, nb)
	if err != nil {
		return err
	}

	atomic.AddInt64(&cl.ops.info.BytesSent, n)
	atomic.AddInt64(&cl.ops.info.PacketsSent, 1)
	atomic.AddInt64(&cl.ops.info.MessagesSent, 1)
	return nil
}

// expiryInterval is the message expiry interval, in seconds, of a message
// that expires at the Unix time expiry [MQTT-3.3.2-6].
func expiryInterval(expiry int64) uint32 {
	return uint32(max(expiry-time.Now().Unix(), 1))
}

// send writes the bytes of one encoded packet: at once when nothing else is
// waiting to be written, else gathered with the packets that follow, up to
// ClientNetWriteBufferSize, so that a burst costs few system calls. With nb
// (COLONY PATCH P20) the caller (writeNow) holds the client's lock, and it
// writes at once without blocking, leaving in outbuf what the socket does
// not take.
func (cl *Client) send(b []byte, nb bool) (int64, error) {
	if nb {
		return cl.sendNow(b)
	}
	cl.Lock()
	defer cl.Unlock()
	if cl.State.writing.Load() <= 1 && cl.State.outbound.len() == 0 { // COLONY PATCH P1: nothing else pending: flush now
		if cl.Net.outbuf == nil {
			n, err := cl.Net.out().Write(b)
			return int64(n), err
		}

		// first write to buffer, then flush buffer
		n, _ := cl.Net.outbuf.Write(b) // will always be successful
		return int64(n), cl.flushOutbuf()
	}

	// there are more writes in the queue
	if cl.Net.outbuf == nil {
		if len(b) >= cl.ops.options.ClientNetWriteBufferSize {
			n, err := cl.Net.out().Write(b)
			return int64(n), err
		}
		cl.Net.outbuf = outBuffers.Get() // COLONY PATCH P13: reused, not allocated per burst
	}

	n, _ := cl.Net.outbuf.Write(b) // will always be successful
	if cl.Net.outbuf.Len() < cl.ops.options.ClientNetWriteBufferSize {
		return int64(n), nil
	}

	return int64(n), cl.flushOutbuf()
}

// COLONY PATCH P13: buffers reused across packets and clients. Upstream
// allocated a buffer for every packet encoded and one for every burst
// gathered; at tens of thousands of deliveries a second that garbage cost
// more than the encoding. Buffers that grew large are not kept.
var (
	encodeBuffers = mempool.NewBuffer(64 << 10)
	outBuffers    = mempool.NewBuffer(64 << 10)
)

// sendNow writes b after any bytes left before it, as much as the socket
// takes without blocking, and keeps the rest in outbuf. The caller holds
// the client's lock. COLONY PATCH P20.
func (cl *Client) sendNow(b []byte) (int64, error) {
	rs := cl.Net.sock.(*rawSocket) // writeNow is set only for these
	if cl.Net.outbuf == nil {
		n, err := rs.WriteNow(b)
		if err != nil {
			return int64(n), err
		}
		if n < len(b) {
			cl.Net.outbuf = outBuffers.Get()
			cl.Net.outbuf.Write(b[n:])
		}
		return int64(len(b)), nil
	}
	cl.Net.outbuf.Write(b)
	n, err := rs.WriteNow(cl.Net.outbuf.Bytes())
	cl.Net.outbuf.Next(n)
	if err != nil {
		return 0, err
	}
	if cl.Net.outbuf.Len() == 0 {
		outBuffers.Put(cl.Net.outbuf)
		cl.Net.outbuf = nil
	}
	return int64(len(b)), nil
}

// out is where the engine writes the connection's bytes: its raw socket
// (P21) or, for connections set up by hand, the connection.
func (cn *ClientConnection) out() io.Writer {
	if cn.sock != nil {
		return cn.sock
	}
	return cn.Conn
}

func (cl *Client) flushOutbuf() (err error) {
	if cl.Net.outbuf == nil {
		return
	}

	_, err = cl.Net.outbuf.WriteTo(cl.Net.out())
	if err == nil {
		outBuffers.Put(cl.Net.outbuf) // COLONY PATCH P13: an idle client keeps no buffer
		cl.Net.outbuf = nil
	}
	return
}
