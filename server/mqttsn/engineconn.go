package mqttsn

import (
	"bytes"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
)

// errCongested is returned by push when the engine has not yet read what a
// device sent before: the gateway answers with "rejected: congestion".
var errCongested = errors.New("engine connection congested")

// errConnClosed is returned by push once the connection is closed.
var errConnClosed = errors.New("engine connection closed")

// maxPending bounds the bytes a device may have waiting for the engine to read.
const maxPending = 256 << 10

// engineConn is one device's MQTT connection to the engine, in memory. The
// engine reads what the gateway pushes (Read) and its writes are decoded
// into packets handed to onPacket at once (Write), so the engine's side
// costs the engine's own reader goroutine and nothing else: no pipe and no
// goroutine of the gateway's. Deadlines are ignored: the gateway enforces
// the device's keep-alive itself.
type engineConn struct {
	mu     sync.Mutex
	cond   sync.Cond
	in     []byte // pushed by the gateway, not yet read by the engine
	closed bool

	wmu      sync.Mutex
	out      []byte // bytes written by the engine that do not yet make a packet
	onPacket func(packets.Packet)
	remote   net.Addr
	certs    []*x509.Certificate // the device's verified certificate chain
}

// VerifiedCertificates returns the client certificate chain the DTLS
// handshake verified, so that authenticators can check it (a device
// module's pinned fingerprint); nil for PSK and plain UDP devices. It
// makes the connection a server.CertifiedConn (not asserted here: the
// gateway needs nothing else of package server).
func (c *engineConn) VerifiedCertificates() []*x509.Certificate { return c.certs }

func newEngineConn(remote net.Addr, onPacket func(packets.Packet)) *engineConn {
	c := &engineConn{onPacket: onPacket, remote: remote}
	c.cond.L = &c.mu
	return c
}

// push queues an encoded MQTT packet for the engine to read.
func (c *engineConn) push(pk packets.Packet) error {
	var buf bytes.Buffer
	if err := encode(&pk, &buf); err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return errConnClosed
	}
	if len(c.in)+buf.Len() > maxPending && pk.FixedHeader.Type == packets.Publish {
		return errCongested
	}
	c.in = append(c.in, buf.Bytes()...)
	c.cond.Signal()
	return nil
}

func encode(pk *packets.Packet, buf *bytes.Buffer) error {
	pk.ProtocolVersion = 5
	switch pk.FixedHeader.Type {
	case packets.Connect:
		return pk.ConnectEncode(buf)
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
	case packets.Unsubscribe:
		return pk.UnsubscribeEncode(buf)
	case packets.Disconnect:
		return pk.DisconnectEncode(buf)
	case packets.Pingreq:
		return pk.PingreqEncode(buf)
	}
	return fmt.Errorf("encode mqtt packet type %d: not used by the gateway", pk.FixedHeader.Type)
}

// Read blocks until the gateway has pushed bytes or closed the connection.
func (c *engineConn) Read(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for len(c.in) == 0 && !c.closed {
		c.cond.Wait()
	}
	if len(c.in) == 0 {
		return 0, io.EOF
	}
	n := copy(p, c.in)
	c.in = c.in[n:]
	if len(c.in) == 0 {
		c.in = nil // let a burst's buffer go
	}
	return n, nil
}

// Write takes the engine's packets: it is called with the engine's client
// lock held and must not block, so onPacket only queues and sends datagrams.
func (c *engineConn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.out = append(c.out, p...)
	for {
		pk, n, err := decodeOne(c.out)
		if err != nil {
			return 0, err
		}
		if n == 0 {
			break
		}
		c.out = c.out[n:]
		c.onPacket(pk)
	}
	if len(c.out) == 0 {
		c.out = nil
	}
	return len(p), nil
}

// decodeOne decodes the first complete MQTT 5 packet in b; n is 0 when b
// does not hold one yet.
func decodeOne(b []byte) (pk packets.Packet, n int, err error) {
	if len(b) < 2 {
		return pk, 0, nil
	}
	var fh packets.FixedHeader
	if err := fh.Decode(b[0]); err != nil {
		return pk, 0, err
	}
	rem, mul, i := 0, 1, 1
	for ; ; i++ {
		if i >= len(b) {
			return pk, 0, nil
		}
		rem += int(b[i]&0x7f) * mul
		if b[i]&0x80 == 0 {
			break
		}
		mul *= 128
		if i >= 4 {
			return pk, 0, packets.ErrMalformedVariableByteInteger
		}
	}
	start := i + 1
	if len(b) < start+rem {
		return pk, 0, nil
	}
	fh.Remaining = rem
	pk = packets.Packet{FixedHeader: fh, ProtocolVersion: 5}
	body := bytes.Clone(b[start : start+rem])
	switch fh.Type {
	case packets.Connack:
		err = pk.ConnackDecode(body)
	case packets.Publish:
		err = pk.PublishDecode(body)
	case packets.Puback:
		err = pk.PubackDecode(body)
	case packets.Pubrec:
		err = pk.PubrecDecode(body)
	case packets.Pubrel:
		err = pk.PubrelDecode(body)
	case packets.Pubcomp:
		err = pk.PubcompDecode(body)
	case packets.Suback:
		err = pk.SubackDecode(body)
	case packets.Unsuback:
		err = pk.UnsubackDecode(body)
	case packets.Disconnect:
		err = pk.DisconnectDecode(body)
	case packets.Pingresp:
	default:
		err = fmt.Errorf("unexpected mqtt packet type %d from the engine", fh.Type)
	}
	return pk, start + rem, err
}

// Close ends the connection: the engine reads EOF once it has read what was pushed.
func (c *engineConn) Close() error {
	c.mu.Lock()
	c.closed = true
	c.cond.Broadcast()
	c.mu.Unlock()
	return nil
}

// isClosed reports whether Close has been called.
func (c *engineConn) isClosed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closed
}

type pipeAddr string

func (a pipeAddr) Network() string { return "mqttsn" }
func (a pipeAddr) String() string  { return string(a) }

func (c *engineConn) LocalAddr() net.Addr              { return pipeAddr("gateway") }
func (c *engineConn) RemoteAddr() net.Addr             { return c.remote }
func (c *engineConn) SetDeadline(time.Time) error      { return nil }
func (c *engineConn) SetReadDeadline(time.Time) error  { return nil }
func (c *engineConn) SetWriteDeadline(time.Time) error { return nil }

var _ net.Conn = (*engineConn)(nil)
