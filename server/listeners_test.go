package server

import (
	"errors"
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

func TestListenerContainsPanics(t *testing.T) {
	var panics atomic.Int64
	l := newListener("mqtt", "tcp", "127.0.0.1:0", nil, time.Second, zerolog.Nop(), func() { panics.Add(1) })
	if err := l.Init(nil); err != nil {
		t.Fatal(err)
	}
	served := make(chan string, 4)
	go l.Serve(func(_ string, c net.Conn) error {
		buf := make([]byte, 1)
		if _, err := io.ReadFull(c, buf); err != nil {
			return err
		}
		if buf[0] == 'p' {
			panic("engine bug")
		}
		served <- string(buf)
		return nil
	})
	defer l.Close(func(string) {})

	bad, err := net.Dial("tcp", l.Address())
	if err != nil {
		t.Fatal(err)
	}
	defer bad.Close()
	if _, err := bad.Write([]byte("p")); err != nil {
		t.Fatal(err)
	}
	if err := bad.SetReadDeadline(time.Now().Add(10 * time.Second)); err != nil {
		t.Fatal(err)
	}
	if _, err := bad.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("panicking connection not closed: %v", err)
	}
	if panics.Load() != 1 {
		t.Fatalf("panics counted: %d", panics.Load())
	}

	good, err := net.Dial("tcp", l.Address())
	if err != nil {
		t.Fatal(err)
	}
	defer good.Close()
	if _, err := good.Write([]byte("g")); err != nil {
		t.Fatal(err)
	}
	select {
	case got := <-served:
		if got != "g" {
			t.Fatalf("served %q", got)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("listener stopped serving after a panic")
	}
}

func TestListenerAddrInUse(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	l := newListener("ws", "ws", busy.Addr().String(), nil, time.Second, zerolog.Nop(), nil)
	err = l.Init(nil)
	var le *ListenError
	if !errors.As(err, &le) || le.Listener != "ws" || le.Addr != busy.Addr().String() || !errors.Is(err, ErrAddrInUse) {
		t.Fatalf("got %v, want a ListenError for ws wrapping ErrAddrInUse", err)
	}
}
