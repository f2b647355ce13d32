package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	"github.com/eclipse/paho.golang/packets"
	"github.com/eclipse/paho.golang/paho"
	"github.com/eclipse/paho.golang/paho/session"
	"github.com/eclipse/paho.golang/paho/session/state"
	pahov3 "github.com/eclipse/paho.mqtt.golang"
	"github.com/gorilla/websocket"
)

// connectTimeout bounds dialing and the CONNECT/CONNACK exchange of one client.
const connectTimeout = 10 * time.Second

// errStalled is returned by publish when an acknowledgement did not come
// within Config.Timeout; the publisher stops.
var errStalled = errors.New("no acknowledgement within the timeout")

// message is one outgoing publish.
type message struct {
	topic    string
	payload  []byte
	response string // MQTT 5 response topic
	corr     []byte // MQTT 5 correlation data
}

// handler receives each delivery: topic, payload and (MQTT 5) correlation data.
type handler func(topic string, payload, corr []byte)

// clientOpts are the per-client settings of connect.
type clientOpts struct {
	id         string
	persistent bool    // keep the session (and resume it if one exists)
	onMessage  handler // also gets deliveries no subscription of the client matches
	sn         bool    // an MQTT-SN device through Config.SN (publishers only)
}

// client is one MQTT connection of either protocol version. publish and
// flush are called from one goroutine; the handler runs on the library's
// delivery goroutine.
type client interface {
	// publish sends m; with QoS 1/2 it first waits while Window publishes
	// are unacknowledged, and returns errStalled when that wait times out.
	publish(m message) error
	// flush waits, at most Config.Timeout, for every outstanding acknowledgement.
	flush()
	// subscribe subscribes to filter at Config.QoS and waits for the SUBACK.
	subscribe(filter string) error
	// disconnect sends DISCONNECT and closes the connection.
	disconnect()
}

// errLog counts errors and keeps the first one's message.
type errLog struct {
	n     atomic.Int64
	mu    sync.Mutex
	first string
}

// add records err.
func (l *errLog) add(err error) {
	if l.n.Add(1) == 1 {
		l.mu.Lock()
		l.first = err.Error()
		l.mu.Unlock()
	}
}

// firstMsg returns the first error's message, or "".
func (l *errLog) firstMsg() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.first
}

// connect opens one client to cfg.URL with the protocol cfg.MQTTVersion asks for.
func connect(ctx context.Context, cfg *Config, o clientOpts, errs *errLog) (client, error) {
	if o.sn {
		return connectSN(ctx, cfg, o, errs)
	}
	if cfg.MQTTVersion == 5 {
		return connectV5(ctx, cfg, o, errs)
	}
	return connectV3(cfg, o, errs)
}

// v3Client is a paho.mqtt.golang (MQTT 3.1.1) client.
type v3Client struct {
	c       pahov3.Client
	qos     byte
	timeout time.Duration
	errs    *errLog
	onMsg   pahov3.MessageHandler
	ring    []pahov3.Token // outstanding publish tokens, oldest at next
	next    int
}

func connectV3(cfg *Config, o clientOpts, errs *errLog) (*v3Client, error) {
	opts := pahov3.NewClientOptions().AddBroker(cfg.URL).SetClientID(o.id).SetProtocolVersion(4).
		SetCleanSession(!o.persistent).SetKeepAlive(cfg.KeepAlive).SetAutoReconnect(false).SetConnectRetry(false).
		SetConnectTimeout(connectTimeout).SetWriteTimeout(cfg.Timeout).SetOrderMatters(true).
		SetConnectionLostHandler(func(_ pahov3.Client, err error) { errs.add(fmt.Errorf("client %s lost its connection: %w", o.id, err)) })
	if cfg.Username != "" {
		opts.SetUsername(cfg.Username).SetPassword(cfg.Password)
	}
	v := &v3Client{qos: cfg.QoS, timeout: cfg.Timeout, errs: errs, ring: make([]pahov3.Token, cfg.Window)}
	if o.onMessage != nil {
		v.onMsg = func(_ pahov3.Client, m pahov3.Message) { o.onMessage(m.Topic(), m.Payload(), nil) }
		opts.SetDefaultPublishHandler(v.onMsg)
	}
	v.c = pahov3.NewClient(opts)
	tok := v.c.Connect()
	if !tok.WaitTimeout(connectTimeout + time.Second) {
		return nil, fmt.Errorf("connect %s: %w", o.id, context.DeadlineExceeded)
	}
	if err := tok.Error(); err != nil {
		return nil, fmt.Errorf("connect %s: %w", o.id, err)
	}
	return v, nil
}

// wait waits for tok at most d and records its error; it reports false when
// the wait timed out.
func (v *v3Client) wait(tok pahov3.Token, d time.Duration) bool {
	if !tok.WaitTimeout(d) {
		return false
	}
	if err := tok.Error(); err != nil {
		v.errs.add(fmt.Errorf("publish: %w", err))
	}
	return true
}

func (v *v3Client) publish(m message) error {
	if old := v.ring[v.next]; old != nil {
		if !v.wait(old, v.timeout) {
			return errStalled
		}
	}
	v.ring[v.next] = v.c.Publish(m.topic, v.qos, false, m.payload)
	v.next = (v.next + 1) % len(v.ring)
	return nil
}

func (v *v3Client) flush() {
	deadline := time.Now().Add(v.timeout)
	for i := range v.ring {
		tok := v.ring[(v.next+i)%len(v.ring)]
		if tok == nil {
			continue
		}
		if !v.wait(tok, max(time.Until(deadline), 0)) {
			v.errs.add(fmt.Errorf("publish: %w", errStalled))
			break
		}
	}
	clear(v.ring)
}

func (v *v3Client) subscribe(filter string) error {
	tok := v.c.Subscribe(filter, v.qos, v.onMsg)
	if !tok.WaitTimeout(connectTimeout) {
		return fmt.Errorf("subscribe %s: %w", filter, context.DeadlineExceeded)
	}
	if err := tok.Error(); err != nil {
		return fmt.Errorf("subscribe %s: %w", filter, err)
	}
	if st, ok := tok.(*pahov3.SubscribeToken); ok {
		if code := st.Result()[filter]; code >= 0x80 {
			return fmt.Errorf("subscribe %s: refused (return code %#x)", filter, code)
		}
	}
	return nil
}

func (v *v3Client) disconnect() { v.c.Disconnect(100) }

// v5Client is a paho.golang (MQTT 5) client.
type v5Client struct {
	c           *paho.Client
	qos         byte
	timeout     time.Duration
	errs        *errLog
	sess        *ackSession // nil unless the client publishes at QoS 1/2
	outstanding int
	closing     atomic.Bool // set by disconnect: errors after it are expected
}

// ackSession is paho's in-memory session state, except that the outcome of
// every PUBLISH goes to one channel. That lets a publisher send with
// PublishMethod_AsyncSend, in order, and still count negative
// acknowledgements, with at most cap(acks) unacknowledged.
type ackSession struct {
	session.SessionManager
	acks chan packets.ControlPacket
}

// AddToSession redirects the response of a PUBLISH to s.acks.
func (s *ackSession) AddToSession(ctx context.Context, p session.Packet, resp chan<- packets.ControlPacket) error {
	if p.Type() == packets.PUBLISH {
		resp = s.acks
	}
	return s.SessionManager.AddToSession(ctx, p, resp)
}

func connectV5(ctx context.Context, cfg *Config, o clientOpts, errs *errLog) (*v5Client, error) {
	ctx, cancel := context.WithTimeout(ctx, connectTimeout)
	defer cancel()
	conn, err := dial(ctx, cfg.URL)
	if err != nil {
		return nil, fmt.Errorf("connect %s: %w", o.id, err)
	}
	v := &v5Client{qos: cfg.QoS, timeout: cfg.Timeout, errs: errs}
	cc := paho.ClientConfig{
		Conn:          conn,
		PacketTimeout: cfg.Timeout,
		OnClientError: func(err error) {
			if !v.closing.Load() {
				errs.add(fmt.Errorf("client %s: %w", o.id, err))
			}
		},
		OnServerDisconnect: func(d *paho.Disconnect) {
			errs.add(fmt.Errorf("client %s: server sent DISCONNECT (reason %#x)", o.id, d.ReasonCode))
		},
	}
	if cfg.QoS > 0 {
		v.sess = &ackSession{SessionManager: state.NewInMemory(), acks: make(chan packets.ControlPacket, cfg.Window)}
		cc.Session = v.sess
	}
	if o.onMessage != nil {
		cc.OnPublishReceived = []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
			var corr []byte
			if pr.Packet.Properties != nil {
				corr = pr.Packet.Properties.CorrelationData
			}
			o.onMessage(pr.Packet.Topic, pr.Packet.Payload, corr)
			return true, nil
		}}
	}
	v.c = paho.NewClient(cc)
	cp := &paho.Connect{ClientID: o.id, KeepAlive: uint16(cfg.KeepAlive / time.Second), CleanStart: !o.persistent}
	if o.persistent {
		expiry := uint32(300)
		cp.Properties = &paho.ConnectProperties{SessionExpiryInterval: &expiry}
	}
	if cfg.Username != "" {
		cp.Username, cp.UsernameFlag = cfg.Username, true
		cp.Password, cp.PasswordFlag = []byte(cfg.Password), true
	}
	if _, err := v.c.Connect(ctx, cp); err != nil {
		v.closeSession()
		if cerr := conn.Close(); cerr != nil && !errors.Is(cerr, net.ErrClosed) {
			errs.add(fmt.Errorf("close %s: %w", o.id, cerr))
		}
		return nil, fmt.Errorf("connect %s: %w", o.id, err)
	}
	return v, nil
}

// takeAck waits at most d for one publish outcome and records its error.
func (v *v5Client) takeAck(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case p := <-v.sess.acks:
		v.outstanding--
		if err := ackError(p); err != nil {
			v.errs.add(err)
		}
		return true
	case <-t.C:
		return false
	}
}

// ackError turns a PUBLISH outcome into an error, or nil for success.
func ackError(p packets.ControlPacket) error {
	switch c := p.Content.(type) {
	case *packets.Puback:
		if c.ReasonCode >= 0x80 {
			return fmt.Errorf("publish refused: %s", c.Reason())
		}
	case *packets.Pubrec:
		if c.ReasonCode >= 0x80 {
			return fmt.Errorf("publish refused: %s", c.Reason())
		}
	case *packets.Pubcomp:
		if c.ReasonCode >= 0x80 {
			return fmt.Errorf("publish release failed: %s", c.Reason())
		}
	default:
		return errors.New("publish not acknowledged before the connection closed")
	}
	return nil
}

func (v *v5Client) publish(m message) error {
	p := &paho.Publish{Topic: m.topic, QoS: v.qos, Payload: m.payload}
	if m.response != "" || m.corr != nil {
		p.Properties = &paho.PublishProperties{ResponseTopic: m.response, CorrelationData: m.corr}
	}
	if v.qos == 0 {
		if _, err := v.c.Publish(context.Background(), p); err != nil {
			return fmt.Errorf("publish: %w", err)
		}
		return nil
	}
	for v.outstanding >= cap(v.sess.acks) {
		if !v.takeAck(v.timeout) {
			return errStalled
		}
	}
	_, err := v.c.PublishWithOptions(context.Background(), p, paho.PublishOptions{Method: paho.PublishMethod_AsyncSend})
	switch {
	case err == nil:
		v.outstanding++
	case errors.Is(err, paho.ErrNetworkErrorAfterStored):
		v.outstanding++ // its outcome still arrives, when the session closes
		return fmt.Errorf("publish: %w", err)
	default:
		return fmt.Errorf("publish: %w", err)
	}
	return nil
}

func (v *v5Client) flush() {
	if v.sess == nil {
		return
	}
	deadline := time.Now().Add(v.timeout)
	for v.outstanding > 0 {
		if !v.takeAck(max(time.Until(deadline), 0)) {
			v.errs.add(fmt.Errorf("publish: %w", errStalled))
			return
		}
	}
}

func (v *v5Client) subscribe(filter string) error {
	ctx, cancel := context.WithTimeout(context.Background(), connectTimeout)
	defer cancel()
	sa, err := v.c.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: filter, QoS: v.qos}}})
	if err != nil {
		return fmt.Errorf("subscribe %s: %w", filter, err)
	}
	if len(sa.Reasons) != 1 || sa.Reasons[0] >= 0x80 {
		return fmt.Errorf("subscribe %s: refused (reasons %v)", filter, sa.Reasons)
	}
	return nil
}

func (v *v5Client) disconnect() {
	v.closing.Store(true)
	if err := v.c.Disconnect(&paho.Disconnect{ReasonCode: 0}); err != nil {
		v.errs.add(fmt.Errorf("disconnect: %w", err))
	}
	select {
	case <-v.c.Done():
	case <-time.After(time.Second):
	}
	v.closeSession()
}

// closeSession releases the session state this client created, if any.
func (v *v5Client) closeSession() {
	if v.sess == nil {
		return
	}
	if err := v.sess.Close(); err != nil {
		v.errs.add(fmt.Errorf("close session: %w", err))
	}
}

// dial opens a byte stream to rawURL: TCP for tcp:// and mqtt://, a
// WebSocket with the "mqtt" subprotocol for ws://.
func dial(ctx context.Context, rawURL string) (net.Conn, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, fmt.Errorf("parse url: %w", err)
	}
	switch u.Scheme {
	case "tcp", "mqtt":
		host := u.Host
		if u.Port() == "" {
			host = net.JoinHostPort(u.Hostname(), "1883")
		}
		var d net.Dialer
		c, err := d.DialContext(ctx, "tcp", host)
		if err != nil {
			return nil, fmt.Errorf("dial: %w", err)
		}
		return c, nil
	case "ws":
		d := websocket.Dialer{Subprotocols: []string{"mqtt"}, HandshakeTimeout: connectTimeout}
		ws, _, err := d.DialContext(ctx, u.String(), nil)
		if err != nil {
			return nil, fmt.Errorf("dial websocket: %w", err)
		}
		return &wsConn{Conn: ws}, nil
	}
	return nil, fmt.Errorf("unsupported url scheme %q", u.Scheme)
}

// wsConn makes a WebSocket connection a net.Conn carrying an MQTT byte
// stream in binary messages. paho.golang locks its embedded Mutex (a
// sync.Locker) around each packet it writes.
type wsConn struct {
	*websocket.Conn
	sync.Mutex
	wmu sync.Mutex // one writer at a time, as gorilla/websocket requires
	r   io.Reader  // the current message; used by the one reading goroutine
}

var _ net.Conn = (*wsConn)(nil)

// Read reads from the current WebSocket message, moving on to the next one
// when it is exhausted.
func (c *wsConn) Read(p []byte) (int, error) {
	for {
		if c.r == nil {
			_, r, err := c.NextReader()
			if err != nil {
				return 0, err
			}
			c.r = r
		}
		n, err := c.r.Read(p)
		if errors.Is(err, io.EOF) {
			c.r = nil
			if n > 0 {
				return n, nil
			}
			continue
		}
		return n, err
	}
}

// Write sends p as one binary message.
func (c *wsConn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if err := c.WriteMessage(websocket.BinaryMessage, p); err != nil {
		return 0, err
	}
	return len(p), nil
}

// SetDeadline sets the read and write deadlines.
func (c *wsConn) SetDeadline(t time.Time) error {
	if err := c.SetReadDeadline(t); err != nil {
		return err
	}
	return c.SetWriteDeadline(t)
}
