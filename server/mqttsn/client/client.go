// Package client is a small MQTT-SN v1.2 client over UDP or DTLS. Colony's
// tests, `colony bench` and `colony sn` use it to drive the gateway; it
// also shows a device's side of every exchange the gateway supports.
//
// A Client is safe for concurrent use: requests from several goroutines
// are matched to their answers by message id. Requests are sent again
// every RetryInterval, up to MaxRetries times (the spec's Tretry and
// Nretry), then fail with ErrTimeout.
package client

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/pion/dtls/v3"

	"github.com/colonymq/colony/server/mqttsn/packet"
)

// ErrTimeout is returned when the gateway does not answer after MaxRetries sends.
var ErrTimeout = errors.New("mqtt-sn gateway did not answer")

// ErrRejected is wrapped by errors for requests the gateway refused; the
// error names the return code.
var ErrRejected = errors.New("mqtt-sn request rejected")

// ErrDisconnected is returned once the gateway has sent DISCONNECT or Close was called.
var ErrDisconnected = errors.New("mqtt-sn client disconnected")

// Will is the message the gateway publishes if the client is lost.
type Will struct {
	Topic   string
	Payload []byte
	QoS     packet.QoS
	Retain  bool
}

// DTLS configures a DTLS association; nil in Options means plain UDP.
type DTLS struct {
	PSKIdentity        string // PSK mode: the identity
	PSK                []byte // PSK mode: the key
	Certificates       []tls.Certificate
	RootCAs            *x509.CertPool
	ServerName         string
	InsecureSkipVerify bool // tests only
}

// Options configures a Client.
type Options struct {
	ClientID     string
	KeepAlive    time.Duration // default 60s
	CleanSession bool
	Will         *Will
	// Predefined maps topic names to ids the gateway is configured with.
	Predefined map[string]uint16
	// RetryInterval is Tretry; default 2s. MaxRetries is Nretry; default 4.
	RetryInterval time.Duration
	MaxRetries    int
	// DTLS, when set, secures the association.
	DTLS *DTLS
	// Buffer is the capacity of Messages; default 1024. A full buffer
	// holds up the client's reader (the gateway then retransmits).
	Buffer int
}

// Message is a message received from the gateway.
type Message struct {
	Topic   string
	Payload []byte
	QoS     packet.QoS
	Retain  bool
}

type waitKey struct {
	t  packet.Type
	id uint16
}

// Client is one MQTT-SN device.
type Client struct {
	opts Options
	conn net.Conn
	msgs chan Message

	mu       sync.Mutex
	waiters  map[waitKey]chan packet.Packet
	topics   map[uint16]string // registered ids, both ways
	ids      map[string]uint16
	predefID map[uint16]string
	qos2     map[uint16]bool // incoming QoS 2 msg ids awaiting PUBREL
	msgID    uint16
	closed   bool
	gone     chan struct{} // closed on DISCONNECT from the gateway or Close
	goneOnce sync.Once
	done     chan struct{} // reader ended
}

// Dial opens a UDP socket (or DTLS association) to the gateway at addr.
// It does not CONNECT; call Connect, or publish at QoS -1 right away.
func Dial(ctx context.Context, addr string, opts Options) (*Client, error) {
	if opts.KeepAlive == 0 {
		opts.KeepAlive = 60 * time.Second
	}
	if opts.RetryInterval <= 0 {
		opts.RetryInterval = 2 * time.Second
	}
	if opts.MaxRetries <= 0 {
		opts.MaxRetries = 4
	}
	if opts.Buffer <= 0 {
		opts.Buffer = 1024
	}
	ra, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return nil, fmt.Errorf("resolve %s: %w", addr, err)
	}
	var conn net.Conn
	if d := opts.DTLS; d != nil {
		var o []dtls.ClientOption
		if d.PSK != nil {
			key := d.PSK
			o = append(o, dtls.WithPSK(func([]byte) ([]byte, error) { return key, nil }),
				dtls.WithPSKIdentityHint([]byte(d.PSKIdentity)),
				dtls.WithCipherSuites(dtls.TLS_PSK_WITH_AES_128_GCM_SHA256, dtls.TLS_PSK_WITH_AES_128_CCM_8))
		}
		if len(d.Certificates) > 0 {
			o = append(o, dtls.WithCertificates(d.Certificates...))
		}
		if d.RootCAs != nil {
			o = append(o, dtls.WithRootCAs(d.RootCAs))
		}
		if d.ServerName != "" {
			o = append(o, dtls.WithServerName(d.ServerName))
		}
		o = append(o, dtls.WithInsecureSkipVerify(d.InsecureSkipVerify), dtls.WithExtendedMasterSecret(dtls.RequireExtendedMasterSecret))
		dc, err := dtls.DialWithOptions("udp", ra, o...)
		if err != nil {
			return nil, fmt.Errorf("dtls dial %s: %w", addr, err)
		}
		if err := dc.HandshakeContext(ctx); err != nil {
			if cerr := dc.Close(); cerr != nil {
				err = errors.Join(err, cerr)
			}
			return nil, fmt.Errorf("dtls handshake with %s: %w", addr, err)
		}
		conn = dc
	} else {
		uc, err := net.DialUDP("udp", nil, ra)
		if err != nil {
			return nil, fmt.Errorf("dial %s: %w", addr, err)
		}
		conn = uc
	}
	c := &Client{
		opts: opts, conn: conn, msgs: make(chan Message, opts.Buffer),
		waiters: map[waitKey]chan packet.Packet{}, topics: map[uint16]string{}, ids: map[string]uint16{},
		predefID: map[uint16]string{}, qos2: map[uint16]bool{}, gone: make(chan struct{}), done: make(chan struct{}),
	}
	for name, id := range opts.Predefined {
		c.predefID[id] = name
	}
	go c.read()
	return c, nil
}

// Messages returns the channel of received messages.
func (c *Client) Messages() <-chan Message { return c.msgs }

// LocalAddr returns the client's socket address.
func (c *Client) LocalAddr() net.Addr { return c.conn.LocalAddr() }

// Close closes the socket without DISCONNECT: to the gateway the client is
// lost once its keep-alive expires.
func (c *Client) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	c.mu.Unlock()
	c.goneOnce.Do(func() { close(c.gone) })
	err := c.conn.Close()
	<-c.done
	return err
}

func (c *Client) send(p packet.Packet) error {
	b, err := packet.Encode(p)
	if err != nil {
		return err
	}
	_, err = c.conn.Write(b)
	return err
}

// SendRaw writes bytes as one datagram, for tests of malformed input.
func (c *Client) SendRaw(b []byte) error {
	_, err := c.conn.Write(b)
	return err
}

func (c *Client) read() {
	defer close(c.done)
	buf := make([]byte, packet.MaxLen+1)
	for {
		n, err := c.conn.Read(buf)
		if err != nil {
			c.mu.Lock()
			closed := c.closed
			c.mu.Unlock()
			if closed || errors.Is(err, net.ErrClosed) {
				return
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			if errors.Is(err, errConnRefused) {
				continue // ICMP port unreachable: the gateway is down for now
			}
			return
		}
		p, err := packet.Decode(buf[:n])
		if err != nil {
			continue
		}
		c.dispatch(p)
	}
}

func (c *Client) dispatch(p packet.Packet) {
	switch m := p.(type) {
	case *packet.Register:
		c.mu.Lock()
		c.topics[m.TopicID], c.ids[m.TopicName] = m.TopicName, m.TopicID
		c.mu.Unlock()
		c.sendQuiet(&packet.Regack{TopicID: m.TopicID, MsgID: m.MsgID, ReturnCode: packet.Accepted})
		return
	case *packet.Publish:
		c.onPublish(m)
		return
	case *packet.Pubrel:
		c.mu.Lock()
		delete(c.qos2, m.MsgID)
		c.mu.Unlock()
		c.sendQuiet(&packet.Pubcomp{MsgID: m.MsgID})
		return
	}
	var k waitKey
	switch m := p.(type) {
	case *packet.Regack:
		k = waitKey{packet.TypeRegack, m.MsgID}
	case *packet.Puback:
		k = waitKey{packet.TypePuback, m.MsgID}
	case *packet.Pubrec:
		k = waitKey{packet.TypePubrec, m.MsgID}
	case *packet.Pubcomp:
		k = waitKey{packet.TypePubcomp, m.MsgID}
	case *packet.Suback:
		k = waitKey{packet.TypeSuback, m.MsgID}
	case *packet.Unsuback:
		k = waitKey{packet.TypeUnsuback, m.MsgID}
	case *packet.Disconnect:
		c.mu.Lock()
		ch := c.waiters[waitKey{packet.TypeDisconnect, 0}]
		c.mu.Unlock()
		if ch == nil { // not asked for: the gateway ended the session
			c.goneOnce.Do(func() { close(c.gone) })
			return
		}
		k = waitKey{packet.TypeDisconnect, 0}
	default:
		k = waitKey{p.Type(), 0}
	}
	c.mu.Lock()
	ch := c.waiters[k]
	c.mu.Unlock()
	if ch != nil {
		select {
		case ch <- p:
		default: // a duplicate answer
		}
	}
}

func (c *Client) sendQuiet(p packet.Packet) {
	if err := c.send(p); err != nil {
		return // the gateway sends again
	}
}

func (c *Client) onPublish(m *packet.Publish) {
	c.mu.Lock()
	var topic string
	ok := true
	switch m.Flags.TopicIDType {
	case packet.TopicNormal:
		topic, ok = c.topics[m.TopicID]
	case packet.TopicPredefined:
		topic, ok = c.predefID[m.TopicID]
	case packet.TopicShort:
		topic = packet.ShortTopic(m.TopicID)
	}
	dup := false
	if ok && m.Flags.QoS == 2 {
		dup = c.qos2[m.MsgID]
		c.qos2[m.MsgID] = true
	}
	c.mu.Unlock()
	if !ok {
		c.sendQuiet(&packet.Puback{TopicID: m.TopicID, MsgID: m.MsgID, ReturnCode: packet.RejectedTopicID})
		return
	}
	if !dup {
		c.msgs <- Message{Topic: topic, Payload: m.Data, QoS: m.Flags.QoS, Retain: m.Flags.Retain}
	}
	switch m.Flags.QoS {
	case 1:
		c.sendQuiet(&packet.Puback{TopicID: m.TopicID, MsgID: m.MsgID, ReturnCode: packet.Accepted})
	case 2:
		c.sendQuiet(&packet.Pubrec{MsgID: m.MsgID})
	}
}

func (c *Client) nextMsgID() uint16 {
	c.mu.Lock()
	defer c.mu.Unlock()
	for {
		c.msgID++
		if c.msgID == 0 {
			continue
		}
		if _, used := c.waiters[waitKey{packet.TypePuback, c.msgID}]; !used {
			return c.msgID
		}
	}
}

// call is a request sent once and waiting for its answer.
type call struct {
	c    *Client
	p    packet.Packet
	keys []waitKey
	ch   chan packet.Packet
	err  error
}

// begin registers the answer's keys and sends p the first time.
func (c *Client) begin(p packet.Packet, keys ...waitKey) *call {
	k := &call{c: c, p: p, keys: keys, ch: make(chan packet.Packet, 1)}
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		k.err = ErrDisconnected
		return k
	}
	for _, key := range keys {
		c.waiters[key] = k.ch
	}
	c.mu.Unlock()
	if err := c.send(p); err != nil {
		k.err = fmt.Errorf("send %s: %w", p.Type(), err)
	}
	return k
}

// wait waits for the answer, sending p again every RetryInterval, up to MaxRetries sends in all.
func (k *call) wait(ctx context.Context) (packet.Packet, error) {
	c := k.c
	defer func() {
		c.mu.Lock()
		for _, key := range k.keys {
			if c.waiters[key] == k.ch {
				delete(c.waiters, key)
			}
		}
		c.mu.Unlock()
	}()
	if k.err != nil {
		return nil, k.err
	}
	t := time.NewTimer(c.opts.RetryInterval)
	defer t.Stop()
	for try := 1; ; try++ {
		select {
		case r := <-k.ch:
			return r, nil
		case <-c.gone:
			return nil, ErrDisconnected
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-t.C:
		}
		if try >= c.opts.MaxRetries {
			return nil, fmt.Errorf("%s after %d sends: %w", k.p.Type(), try, ErrTimeout)
		}
		if pub, ok := k.p.(*packet.Publish); ok {
			pub.Flags.DUP = true
		}
		if err := c.send(k.p); err != nil {
			return nil, fmt.Errorf("send %s: %w", k.p.Type(), err)
		}
		t.Reset(c.opts.RetryInterval)
	}
}

// request sends p until one of keys is answered, up to MaxRetries sends.
func (c *Client) request(ctx context.Context, p packet.Packet, keys ...waitKey) (packet.Packet, error) {
	return c.begin(p, keys...).wait(ctx)
}

// Connect opens the session, with the will flow when Options.Will is set.
func (c *Client) Connect(ctx context.Context) error {
	conn := &packet.Connect{
		Flags:    packet.Flags{CleanSession: c.opts.CleanSession, Will: c.opts.Will != nil},
		Duration: uint16(c.opts.KeepAlive / time.Second), ClientID: c.opts.ClientID,
	}
	keys := []waitKey{{packet.TypeConnack, 0}, {packet.TypeWillTopicReq, 0}, {packet.TypeWillMsgReq, 0}}
	var req packet.Packet = conn
	for {
		r, err := c.request(ctx, req, keys...)
		if err != nil {
			return fmt.Errorf("connect: %w", err)
		}
		switch m := r.(type) {
		case *packet.Connack:
			if m.ReturnCode != packet.Accepted {
				return fmt.Errorf("connect: %s: %w", m.ReturnCode, ErrRejected)
			}
			return nil
		case *packet.WillTopicReq:
			w := c.opts.Will
			req = &packet.WillTopic{Flags: packet.Flags{QoS: w.QoS, Retain: w.Retain}, Topic: w.Topic}
		case *packet.WillMsgReq:
			req = &packet.WillMsg{Msg: c.opts.Will.Payload}
		}
	}
}

// Register asks the gateway for a topic id for name.
func (c *Client) Register(ctx context.Context, name string) (uint16, error) {
	id := c.nextMsgID()
	r, err := c.request(ctx, &packet.Register{MsgID: id, TopicName: name}, waitKey{packet.TypeRegack, id})
	if err != nil {
		return 0, fmt.Errorf("register %s: %w", name, err)
	}
	ack := r.(*packet.Regack)
	if ack.ReturnCode != packet.Accepted {
		return 0, fmt.Errorf("register %s: %s: %w", name, ack.ReturnCode, ErrRejected)
	}
	c.mu.Lock()
	c.topics[ack.TopicID], c.ids[name] = name, ack.TopicID
	c.mu.Unlock()
	return ack.TopicID, nil
}

// Publish sends payload to topic: as a predefined id when Options.Predefined
// has it, as a short name when it has two characters, else as a registered
// id (registering it first). QoS -1 needs a predefined or short topic.
func (c *Client) Publish(ctx context.Context, topic string, qos packet.QoS, retain bool, payload []byte) error {
	tt, id, err := c.topicRef(ctx, topic, qos)
	if err != nil {
		return err
	}
	return c.PublishID(ctx, tt, id, qos, retain, payload)
}

func (c *Client) topicRef(ctx context.Context, topic string, qos packet.QoS) (packet.TopicIDType, uint16, error) {
	if id, ok := c.opts.Predefined[topic]; ok {
		return packet.TopicPredefined, id, nil
	}
	if id, ok := packet.ShortID(topic); ok {
		return packet.TopicShort, id, nil
	}
	if qos == -1 {
		return 0, 0, fmt.Errorf("publish %s: qos -1 needs a predefined or two-character topic: %w", topic, ErrRejected)
	}
	c.mu.Lock()
	id, ok := c.ids[topic]
	c.mu.Unlock()
	if ok {
		return packet.TopicNormal, id, nil
	}
	id, err := c.Register(ctx, topic)
	return packet.TopicNormal, id, err
}

// PublishID sends payload to a topic given by id and type. QoS 0 and -1
// return once sent; QoS 1 once PUBACK arrives, QoS 2 once PUBCOMP does.
func (c *Client) PublishID(ctx context.Context, tt packet.TopicIDType, topicID uint16, qos packet.QoS, retain bool, payload []byte) error {
	return c.PublishAsync(tt, topicID, qos, retain, payload)(ctx)
}

// PublishAsync sends the PUBLISH at once, so that publishes leave in the
// order of the calls, and returns a function that waits for its
// acknowledgement (and retransmits) as PublishID does.
func (c *Client) PublishAsync(tt packet.TopicIDType, topicID uint16, qos packet.QoS, retain bool, payload []byte) func(context.Context) error {
	p := &packet.Publish{Flags: packet.Flags{QoS: qos, Retain: retain, TopicIDType: tt}, TopicID: topicID, Data: payload}
	if qos <= 0 {
		err := c.send(p)
		return func(context.Context) error { return err }
	}
	p.MsgID = c.nextMsgID()
	keys := []waitKey{{packet.TypePuback, p.MsgID}}
	if qos == 2 {
		keys = append(keys, waitKey{packet.TypePubrec, p.MsgID})
	}
	k := c.begin(p, keys...)
	return func(ctx context.Context) error {
		r, err := k.wait(ctx)
		if err != nil {
			return fmt.Errorf("publish: %w", err)
		}
		if ack, ok := r.(*packet.Puback); ok {
			if ack.ReturnCode != packet.Accepted {
				if ack.ReturnCode == packet.RejectedTopicID && tt == packet.TopicNormal {
					c.mu.Lock()
					if name, ok := c.topics[topicID]; ok {
						delete(c.ids, name)
					}
					c.mu.Unlock()
				}
				return fmt.Errorf("publish: %s: %w", ack.ReturnCode, ErrRejected)
			}
			return nil
		}
		if _, err := c.request(ctx, &packet.Pubrel{MsgID: p.MsgID}, waitKey{packet.TypePubcomp, p.MsgID}); err != nil {
			return fmt.Errorf("publish: pubrel: %w", err)
		}
		return nil
	}
}

// TopicRef returns how Publish names topic: a predefined id, a short name,
// or a registered id (registering it first).
func (c *Client) TopicRef(ctx context.Context, topic string, qos packet.QoS) (packet.TopicIDType, uint16, error) {
	return c.topicRef(ctx, topic, qos)
}

// Subscribe subscribes to filter (a topic name, possibly with wildcards,
// a predefined name or a short name) and returns the topic id the gateway
// will use for it (0 for wildcards) and the granted QoS.
func (c *Client) Subscribe(ctx context.Context, filter string, qos packet.QoS) (uint16, packet.QoS, error) {
	s := &packet.Subscribe{Flags: packet.Flags{QoS: qos}, MsgID: c.nextMsgID(), TopicName: filter}
	if id, ok := c.opts.Predefined[filter]; ok {
		s.Flags.TopicIDType, s.TopicID, s.TopicName = packet.TopicPredefined, id, ""
	} else if id, ok := packet.ShortID(filter); ok {
		s.Flags.TopicIDType, s.TopicID, s.TopicName = packet.TopicShort, id, ""
	}
	r, err := c.request(ctx, s, waitKey{packet.TypeSuback, s.MsgID})
	if err != nil {
		return 0, 0, fmt.Errorf("subscribe %s: %w", filter, err)
	}
	ack := r.(*packet.Suback)
	if ack.ReturnCode != packet.Accepted {
		return 0, 0, fmt.Errorf("subscribe %s: %s: %w", filter, ack.ReturnCode, ErrRejected)
	}
	if s.Flags.TopicIDType == packet.TopicNormal && ack.TopicID != 0 {
		c.mu.Lock()
		c.topics[ack.TopicID], c.ids[filter] = filter, ack.TopicID
		c.mu.Unlock()
	}
	return ack.TopicID, ack.Flags.QoS, nil
}

// Unsubscribe ends a subscription made with Subscribe.
func (c *Client) Unsubscribe(ctx context.Context, filter string) error {
	u := &packet.Unsubscribe{MsgID: c.nextMsgID(), TopicName: filter}
	if id, ok := c.opts.Predefined[filter]; ok {
		u.Flags.TopicIDType, u.TopicID, u.TopicName = packet.TopicPredefined, id, ""
	} else if id, ok := packet.ShortID(filter); ok {
		u.Flags.TopicIDType, u.TopicID, u.TopicName = packet.TopicShort, id, ""
	}
	if _, err := c.request(ctx, u, waitKey{packet.TypeUnsuback, u.MsgID}); err != nil {
		return fmt.Errorf("unsubscribe %s: %w", filter, err)
	}
	return nil
}

// Ping sends PINGREQ and waits for PINGRESP.
func (c *Client) Ping(ctx context.Context) error {
	if _, err := c.request(ctx, &packet.Pingreq{}, waitKey{packet.TypePingresp, 0}); err != nil {
		return fmt.Errorf("ping: %w", err)
	}
	return nil
}

// Sleep tells the gateway the client sleeps for d (DISCONNECT with a
// duration); the gateway buffers messages until Wake.
func (c *Client) Sleep(ctx context.Context, d time.Duration) error {
	if _, err := c.request(ctx, &packet.Disconnect{HasDuration: true, Duration: uint16(d / time.Second)},
		waitKey{packet.TypeDisconnect, 0}); err != nil {
		return fmt.Errorf("sleep: %w", err)
	}
	return nil
}

// Wake sends PINGREQ with the client id: the gateway delivers what it
// buffered (to Messages) and answers PINGRESP when it is done; the client
// is then asleep again until Wake, Connect or the sleep duration ends.
func (c *Client) Wake(ctx context.Context) error {
	if _, err := c.request(ctx, &packet.Pingreq{ClientID: c.opts.ClientID}, waitKey{packet.TypePingresp, 0}); err != nil {
		return fmt.Errorf("wake: %w", err)
	}
	return nil
}

// Disconnect ends the session (no will) and closes the socket.
func (c *Client) Disconnect(ctx context.Context) error {
	_, err := c.request(ctx, &packet.Disconnect{}, waitKey{packet.TypeDisconnect, 0})
	if cerr := c.Close(); cerr != nil && err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("disconnect: %w", err)
	}
	return nil
}

// UpdateWill replaces the will topic (WILLTOPICUPD) and message (WILLMSGUPD).
func (c *Client) UpdateWill(ctx context.Context, w Will) error {
	r, err := c.request(ctx, &packet.WillTopicUpd{Flags: packet.Flags{QoS: w.QoS, Retain: w.Retain}, Topic: w.Topic},
		waitKey{packet.TypeWillTopicResp, 0})
	if err != nil {
		return fmt.Errorf("update will topic: %w", err)
	}
	if rc := r.(*packet.WillTopicResp).ReturnCode; rc != packet.Accepted {
		return fmt.Errorf("update will topic: %s: %w", rc, ErrRejected)
	}
	if w.Topic == "" {
		return nil
	}
	r, err = c.request(ctx, &packet.WillMsgUpd{Msg: w.Payload}, waitKey{packet.TypeWillMsgResp, 0})
	if err != nil {
		return fmt.Errorf("update will message: %w", err)
	}
	if rc := r.(*packet.WillMsgResp).ReturnCode; rc != packet.Accepted {
		return fmt.Errorf("update will message: %s: %w", rc, ErrRejected)
	}
	return nil
}

// SearchGW sends SEARCHGW to the address the client was dialled to and
// returns the gateway id of the GWINFO answer.
func (c *Client) SearchGW(ctx context.Context) (uint8, error) {
	r, err := c.request(ctx, &packet.SearchGW{Radius: 1}, waitKey{packet.TypeGWInfo, 0})
	if err != nil {
		return 0, fmt.Errorf("searchgw: %w", err)
	}
	return r.(*packet.GWInfo).GatewayID, nil
}

// Gone is closed when the gateway ends the session with DISCONNECT, or on Close.
func (c *Client) Gone() <-chan struct{} { return c.gone }
