package server_test

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/colonymq/colony/app/apptest"
	"github.com/colonymq/colony/server"
)

// runServer starts a server (no app) with o, silent, its MQTT listener on
// a free loopback port unless o names one. stop shuts it down, once; it
// is also a cleanup.
func runServer(t *testing.T, o server.Options) (srv *server.Server, stop func()) {
	t.Helper()
	if o.Listeners.MQTT == "" {
		o.Listeners.MQTT = "127.0.0.1:0"
	}
	o.Logger = zerolog.Nop()
	srv, err := server.New(o)
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	stop = func() {
		once.Do(func() {
			ctx, cancel := context.WithTimeout(context.Background(), apptest.Wait)
			defer cancel()
			if err := srv.Shutdown(ctx); err != nil {
				t.Error(err)
			}
		})
	}
	t.Cleanup(stop)
	return srv, stop
}

// gate holds up one of the server's goroutines at a point a test hook
// chooses, to widen a window every delivery or session change has: the
// first goroutine to reach it while armed reports entered and waits until
// the test opens the gate, or holdFor passed.
type gate struct {
	holdFor  time.Duration
	armed    atomic.Bool
	entered  chan struct{}
	opened   chan struct{}
	openOnce sync.Once
}

// newGate returns a gate, armed or to be armed later, that holds for
// apptest.Wait at most.
func newGate(armed bool) *gate {
	g := &gate{holdFor: apptest.Wait, entered: make(chan struct{}), opened: make(chan struct{})}
	g.armed.Store(armed)
	return g
}

func (g *gate) arm() { g.armed.Store(true) }

// hold is called by the hook: it holds up the first goroutine that comes
// while the gate is armed.
func (g *gate) hold() {
	if !g.armed.CompareAndSwap(true, false) {
		return
	}
	close(g.entered)
	select {
	case <-g.opened:
	case <-time.After(g.holdFor):
	}
}

// reached waits until a goroutine is held, failing t with why if none
// comes.
func (g *gate) reached(t *testing.T, why string) {
	t.Helper()
	select {
	case <-g.entered:
	case <-time.After(apptest.Wait):
		t.Fatal(why)
	}
}

// open lets the held goroutine go on.
func (g *gate) open() { g.openOnce.Do(func() { close(g.opened) }) }
