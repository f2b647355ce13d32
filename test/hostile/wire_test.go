package hostile_test

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/colonymq/colony/app/apptest"
)

// Packet types (first nibble of the fixed header).
const (
	tConnect    = 1
	tConnack    = 2
	tPublish    = 3
	tPuback     = 4
	tPubrec     = 5
	tSubscribe  = 8
	tSuback     = 9
	tPingreq    = 12
	tPingresp   = 13
	tDisconnect = 14
)

// varint encodes an MQTT variable byte integer without range checks, so
// tests can also write lengths the spec forbids.
func varint(n int) []byte {
	var b []byte
	for {
		d := byte(n % 128)
		n /= 128
		if n > 0 {
			d |= 0x80
		}
		b = append(b, d)
		if n == 0 {
			return b
		}
	}
}

func str(s string) []byte { return append(binary.BigEndian.AppendUint16(nil, uint16(len(s))), s...) }

func u16(v uint16) []byte { return binary.BigEndian.AppendUint16(nil, v) }

func cat(parts ...[]byte) []byte {
	var b []byte
	for _, p := range parts {
		b = append(b, p...)
	}
	return b
}

// packet frames a body with a fixed header.
func packet(first byte, body []byte) []byte { return cat([]byte{first}, varint(len(body)), body) }

// connectOpts describes a CONNECT the tests may break on purpose.
type connectOpts struct {
	name       string // protocol name; default "MQTT"
	level      byte   // 4 or 5; default 5
	persistent bool   // no clean start / clean session flag
	reserved   bool   // set the reserved flag bit
	keepalive  int    // seconds; 0 means 30, -1 sends 0
	props      []byte // MQTT 5 properties, without their length; nil: none
	id         string
	user       string
	password   string
}

func connect(o connectOpts) []byte {
	if o.name == "" {
		o.name = "MQTT"
	}
	if o.level == 0 {
		o.level = 5
	}
	var flags byte
	if !o.persistent {
		flags |= 0x02
	}
	if o.reserved {
		flags |= 0x01
	}
	switch o.keepalive {
	case 0:
		o.keepalive = 30
	case -1:
		o.keepalive = 0
	}
	if o.user != "" {
		flags |= 0x80
	}
	if o.password != "" {
		flags |= 0x40
	}
	body := cat(str(o.name), []byte{o.level, flags}, u16(uint16(o.keepalive)))
	if o.level == 5 {
		body = cat(body, varint(len(o.props)), o.props)
	}
	body = cat(body, str(o.id))
	if o.user != "" {
		body = cat(body, str(o.user))
	}
	if o.password != "" {
		body = cat(body, str(o.password))
	}
	return packet(0x10, body)
}

// publish builds a PUBLISH; props are MQTT 5 properties (nil for 3.1.1).
func publish(v5 bool, qos byte, id uint16, topic string, props []byte, payload string) []byte {
	body := str(topic)
	if qos > 0 {
		body = cat(body, u16(id))
	}
	if v5 {
		body = cat(body, varint(len(props)), props)
	}
	return packet(0x30|qos<<1, cat(body, []byte(payload)))
}

// subscribe builds an MQTT 5 SUBSCRIBE (no properties) of filters at QoS 1.
func subscribe5(id uint16, filters ...string) []byte {
	body := cat(u16(id), []byte{0})
	for _, f := range filters {
		body = cat(body, str(f), []byte{1})
	}
	return packet(0x82, body)
}

// raw is a client that writes bytes and reads packets by hand.
type raw struct {
	t    testing.TB
	conn stream
	r    *bufio.Reader
}

// stream is a TCP socket or a WebSocket carrying MQTT.
type stream interface {
	io.ReadWriteCloser
	SetReadDeadline(time.Time) error
	SetWriteDeadline(time.Time) error
}

// wsStream carries MQTT in binary WebSocket messages.
type wsStream struct {
	c *websocket.Conn
	r io.Reader
}

func (w *wsStream) Read(p []byte) (int, error) {
	for {
		if w.r == nil {
			_, r, err := w.c.NextReader()
			if err != nil {
				return 0, err
			}
			w.r = r
		}
		n, err := w.r.Read(p)
		if errors.Is(err, io.EOF) {
			w.r = nil
			if n == 0 {
				continue
			}
			err = nil
		}
		return n, err
	}
}

func (w *wsStream) Write(p []byte) (int, error) {
	if err := w.c.WriteMessage(websocket.BinaryMessage, p); err != nil {
		return 0, err
	}
	return len(p), nil
}

func (w *wsStream) Close() error                       { return w.c.Close() }
func (w *wsStream) SetReadDeadline(t time.Time) error  { return w.c.SetReadDeadline(t) }
func (w *wsStream) SetWriteDeadline(t time.Time) error { return w.c.SetWriteDeadline(t) }

// dialWS opens an MQTT-over-WebSocket connection.
func dialWS(t *testing.T, addr string) *raw {
	t.Helper()
	d := websocket.Dialer{Subprotocols: []string{"mqtt"}, HandshakeTimeout: apptest.Wait}
	c, _, err := d.Dial("ws://"+addr+"/mqtt", nil)
	if err != nil {
		t.Fatalf("dial ws %s: %v", addr, err)
	}
	t.Cleanup(func() { c.Close() })
	ws := &wsStream{c: c}
	return &raw{t: t, conn: ws, r: bufio.NewReader(ws)}
}

func dialErr(addr string) (net.Conn, error) { return net.DialTimeout("tcp", addr, apptest.Wait) }

func dial(t testing.TB, addr string) *raw {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, apptest.Wait)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	t.Cleanup(func() { c.Close() })
	return &raw{t: t, conn: c, r: bufio.NewReader(c)}
}

func (c *raw) send(b ...[]byte) {
	c.t.Helper()
	if err := c.conn.SetWriteDeadline(time.Now().Add(apptest.Wait)); err != nil {
		c.t.Fatal(err)
	}
	if _, err := c.conn.Write(cat(b...)); err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

// sendMaybe writes, tolerating a server that has already closed the socket.
func (c *raw) sendMaybe(b ...[]byte) {
	if err := c.conn.SetWriteDeadline(time.Now().Add(apptest.Wait)); err != nil {
		c.t.Fatal(err)
	}
	_, _ = c.conn.Write(cat(b...)) // the server may close first; what it answered is what the test checks
}

type pkt struct {
	typ   byte
	flags byte
	body  []byte
}

func (p pkt) String() string { return fmt.Sprintf("type %d body % x", p.typ, p.body) }

// next reads one packet; io.EOF (or a reset) means the server closed.
func (c *raw) next() (pkt, error) {
	if err := c.conn.SetReadDeadline(time.Now().Add(apptest.Wait)); err != nil {
		return pkt{}, err
	}
	h, err := c.r.ReadByte()
	if err != nil {
		return pkt{}, err
	}
	n, mul := 0, 1
	for i := 0; ; i++ {
		b, err := c.r.ReadByte()
		if err != nil {
			return pkt{}, err
		}
		n += int(b&0x7f) * mul
		mul *= 128
		if b&0x80 == 0 {
			break
		}
		if i == 3 {
			return pkt{}, errors.New("bad length from server")
		}
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(c.r, body); err != nil {
		return pkt{}, err
	}
	return pkt{typ: h >> 4, flags: h & 0x0f, body: body}, nil
}

// connack sends a CONNECT and returns the CONNACK reason code.
func (c *raw) connack(o connectOpts) byte {
	c.t.Helper()
	c.send(connect(o))
	p, err := c.next()
	if err != nil {
		c.t.Fatalf("no connack: %v", err)
	}
	if p.typ != tConnack || len(p.body) < 2 {
		c.t.Fatalf("want connack, got %v", p)
	}
	return p.body[1]
}

// closed reads until the server closes, returning the reason code of a
// DISCONNECT seen on the way (-1 if none). A read timeout fails the test:
// the server kept the connection open.
func (c *raw) closed() int {
	c.t.Helper()
	reason := -1
	for {
		p, err := c.next()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() && !websocket.IsUnexpectedCloseError(err) {
				c.t.Fatal("server kept the offending connection open")
			}
			return reason
		}
		if p.typ == tDisconnect {
			reason = 0
			if len(p.body) > 0 {
				reason = int(p.body[0])
			}
		}
	}
}

// closedWith asserts the connection ends with a DISCONNECT carrying code.
func (c *raw) closedWith(code byte) {
	c.t.Helper()
	if got := c.closed(); got != int(code) {
		c.t.Fatalf("disconnect reason %#x, want %#x", got, code)
	}
}

// closedSilently asserts the connection ends without a DISCONNECT.
func (c *raw) closedSilently() {
	c.t.Helper()
	if got := c.closed(); got != -1 {
		c.t.Fatalf("got disconnect %#x, want the socket closed", got)
	}
}

// props parses an MQTT 5 property block (length first) into id -> raw value
// (user properties and unknown ids are not needed by the tests and stop the parse).
func props(b []byte) map[byte][]byte {
	n, i, mul := 0, 0, 1
	for ; i < len(b); i++ {
		n += int(b[i]&0x7f) * mul
		mul *= 128
		if b[i]&0x80 == 0 {
			i++
			break
		}
	}
	end := min(i+n, len(b))
	out := map[byte][]byte{}
	for i < end {
		id := b[i]
		i++
		var size int
		switch id {
		case 0x01, 0x17, 0x19, 0x24, 0x25, 0x28, 0x29, 0x2a:
			size = 1
		case 0x13, 0x21, 0x22, 0x23:
			size = 2
		case 0x02, 0x11, 0x18, 0x27:
			size = 4
		case 0x03, 0x08, 0x09, 0x12, 0x15, 0x16, 0x1a, 0x1c, 0x1f:
			if i+2 > end {
				return out
			}
			size = 2 + int(binary.BigEndian.Uint16(b[i:]))
		default:
			return out
		}
		if i+size > end {
			return out
		}
		out[id] = b[i : i+size]
		i += size
	}
	return out
}
