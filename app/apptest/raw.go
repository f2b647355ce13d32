package apptest

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"slices"
	"testing"
	"time"
)

// RawClient connects a raw MQTT client, for tests that need packets no
// client library sends (a chosen packet id, a repeat, a refusal): version 4
// (3.1.1) or 5 (with a session expiry of expiry seconds if not 0, no other
// properties), keep-alive 60, clean session (clean start) or not. It checks
// the CONNACK's session present flag, closes the connection at test end,
// and returns it with a reader for what the server sends; every read has
// a deadline of Wait from the connect.
func RawClient(t testing.TB, addr, id string, version byte, clean, present bool, expiry uint32) (net.Conn, *bufio.Reader) {
	t.Helper()
	var props []byte
	if version == 5 && expiry > 0 {
		props = []byte{0x11, byte(expiry >> 24), byte(expiry >> 16), byte(expiry >> 8), byte(expiry)}
	}
	return RawClientWith(t, addr, id, version, clean, present, props)
}

// RawClientWith is RawClient with the CONNECT properties of an MQTT 5
// client given encoded (under 128 bytes, without their length).
func RawClientWith(t testing.TB, addr, id string, version byte, clean, present bool, props []byte) (net.Conn, *bufio.Reader) {
	t.Helper()
	var flags byte
	if clean {
		flags = 2
	}
	return rawConnect(t, addr, version, flags, props, present, lengthPrefixed(id))
}

// RawWillClient connects a raw MQTT 5 client id with a QoS qos will on
// topic (payload), delayed by delay seconds, and the session expiry
// expiry; it checks the CONNACK's session present flag.
func RawWillClient(t testing.TB, addr, id string, clean, present bool, expiry, delay uint32, topic, payload string, qos byte) (net.Conn, *bufio.Reader) {
	t.Helper()
	flags := byte(0x04) | qos<<3
	if clean {
		flags |= 0x02
	}
	props := []byte{0x11, byte(expiry >> 24), byte(expiry >> 16), byte(expiry >> 8), byte(expiry)}
	willProps := []byte{5, 0x18, byte(delay >> 24), byte(delay >> 16), byte(delay >> 8), byte(delay)}
	return rawConnect(t, addr, 5, flags, props, present,
		lengthPrefixed(id), willProps, lengthPrefixed(topic), lengthPrefixed(payload))
}

// rawConnect dials addr, sends a CONNECT (all of it under 128 bytes) with
// the connect flags, the MQTT 5 properties props and the payload fields,
// and checks that the CONNACK accepts it with session present or not.
func rawConnect(t testing.TB, addr string, version, flags byte, props []byte, present bool, payload ...[]byte) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, Wait)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if err := c.SetReadDeadline(time.Now().Add(Wait)); err != nil {
		t.Fatal(err)
	}
	body := []byte{0, 4, 'M', 'Q', 'T', 'T', version, flags, 0, 60}
	if version == 5 {
		body = append(append(body, byte(len(props))), props...)
	}
	body = slices.Concat(append([][]byte{body}, payload...)...)
	if _, err := c.Write(append([]byte{0x10, byte(len(body))}, body...)); err != nil {
		t.Fatal(err)
	}
	var want byte
	if present {
		want = 1
	}
	r := bufio.NewReader(c)
	typ, ack, err := ReadRawPacket(r, nil)
	if err != nil || typ != 0x20 || len(ack) < 2 || ack[0] != want || ack[1] != 0 {
		t.Fatalf("connack %x %x: %v (want session present %d)", typ, ack, err, want)
	}
	return c, r
}

// lengthPrefixed encodes s as an MQTT string: two bytes of length, then s.
func lengthPrefixed(s string) []byte {
	return append([]byte{byte(len(s) >> 8), byte(len(s))}, s...)
}

// ReadRawPacket reads one MQTT packet: its first byte and its body, into
// buf when it is large enough.
func ReadRawPacket(r *bufio.Reader, buf []byte) (byte, []byte, error) {
	typ, err := r.ReadByte()
	if err != nil {
		return 0, nil, err
	}
	n, shift := 0, 0
	for {
		c, err := r.ReadByte()
		if err != nil {
			return 0, nil, err
		}
		n |= int(c&0x7f) << shift
		if c&0x80 == 0 {
			break
		}
		shift += 7
	}
	if cap(buf) < n {
		buf = make([]byte, n)
	}
	body := buf[:n]
	_, err = io.ReadFull(r, body)
	return typ, body, err
}

// RawStep is a packet a raw client sends, and the packet it expects back
// next, as on the wire (under 128 bytes: a one-byte remaining length).
type RawStep struct{ Send, Want []byte }

// RawExchange sends each step's packet on c and fails t unless the next
// packet read from r is the step's Want.
func RawExchange(t testing.TB, c net.Conn, r *bufio.Reader, steps ...RawStep) {
	t.Helper()
	for _, step := range steps {
		if err := c.SetReadDeadline(time.Now().Add(Wait)); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Write(step.Send); err != nil {
			t.Fatal(err)
		}
		typ, body, err := ReadRawPacket(r, nil)
		if got := append([]byte{typ, byte(len(body))}, body...); err != nil || len(body) > 127 || !bytes.Equal(got, step.Want) {
			t.Fatalf("after %x: want %x, got %x: %v", step.Send[0], step.Want, got, err)
		}
	}
}
