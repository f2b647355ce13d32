//go:build unix

// Tests of Colony's raw socket I/O (PATCHES.md P21). Run from the
// repository root: go test github.com/mochi-mqtt/server/v2/...

package mqtt

import (
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"
)

// TestRawSocketBehavesAsConn: what the engine reads and writes through a
// raw socket ends, times out and fails as net.Conn's methods do, since the
// engine and Colony's listeners tell a closed connection, a keep-alive
// timeout and a reset apart by those errors.
func TestRawSocketBehavesAsConn(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	peer, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	s := sockOf(c)
	if _, ok := s.(*rawSocket); !ok {
		t.Fatalf("a TCP connection got %T, not a raw socket", s)
	}

	// Bytes both ways, a large write included (it waits for room).
	big := make([]byte, 8<<20)
	for i := range big {
		big[i] = byte(i)
	}
	done := make(chan error, 1)
	go func() {
		_, err := s.Write(big)
		done <- err
	}()
	got := make([]byte, len(big))
	if _, err := io.ReadFull(peer, got); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("write: %v", err)
	}
	for i := range got {
		if got[i] != big[i] {
			t.Fatalf("byte %d differs", i)
		}
	}
	if _, err := peer.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 16)
	if n, err := io.ReadAtLeast(s, b, 5); err != nil || string(b[:n]) != "hello" {
		t.Fatalf("read %q, %v", b[:n], err)
	}

	// A read deadline is a timeout, as net.Conn reports it.
	_ = c.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	_, err = s.Read(b)
	var ne net.Error
	if !errors.Is(err, os.ErrDeadlineExceeded) || !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("read past the deadline: %v, want a timeout", err)
	}
	var oe *net.OpError
	if !errors.As(err, &oe) || oe.Op != "read" || oe.Addr.String() != peer.LocalAddr().String() {
		t.Fatalf("error %v is not net.Conn's read error", err)
	}
	_ = c.SetReadDeadline(time.Time{})

	// The peer closes: end of stream.
	peer.Close()
	if _, err := s.Read(b); err != io.EOF {
		t.Fatalf("read after the peer closed: %v, want io.EOF", err)
	}

	// The connection is closed here: net.ErrClosed both ways.
	c.Close()
	if _, err := s.Read(b); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("read after close: %v, want net.ErrClosed", err)
	}
	if _, err := s.Write(b); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("write after close: %v, want net.ErrClosed", err)
	}
}
