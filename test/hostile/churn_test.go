package hostile_test

import (
	"fmt"
	"os"
	"runtime"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/colonymq/colony/app/apptest"
)

// churnCycles is how many connect/disconnect cycles TestConnectionChurn runs
// (COLONY_CHURN overrides it).
func churnCycles() int {
	if n, err := strconv.Atoi(os.Getenv("COLONY_CHURN")); err == nil && n > 0 {
		return n
	}
	return 10_000
}

// TestConnectionChurn opens and closes 10k real TCP connections (CONNECT,
// CONNACK, then half a clean DISCONNECT, half dropped sockets, MQTT 3.1.1
// and 5 mixed) and checks that nothing stays behind: goroutines return to
// their count before the churn, the heap to a bound, the engine's client
// and session counts to zero.
func TestConnectionChurn(t *testing.T) {
	a := apptest.Run(t, apptest.Config(t))
	addr := a.Addr("mqtt")
	cycle := func(i int) error {
		c, err := dialErr(addr)
		if err != nil {
			return err
		}
		defer c.Close()
		o := connectOpts{id: fmt.Sprint("churn-", i)}
		if i%2 == 1 {
			o.level = 4
		}
		if _, err := c.Write(connect(o)); err != nil {
			return err
		}
		buf := make([]byte, 64)
		if err := c.SetReadDeadline(time.Now().Add(apptest.Wait)); err != nil {
			return err
		}
		if n, err := c.Read(buf); err != nil || n < 4 || buf[0] != 0x20 {
			return fmt.Errorf("cycle %d: connack % x: %v", i, buf[:n], err)
		}
		if i%4 < 2 {
			if _, err := c.Write([]byte{0xe0, 0}); err != nil {
				return err
			}
		}
		return nil
	}
	run := func(from, n int) {
		const workers = 8
		var wg sync.WaitGroup
		errs := make(chan error, workers)
		for w := range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := from + w; i < from+n; i += workers {
					if err := cycle(i); err != nil {
						errs <- err
						return
					}
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
	}
	settle := func() {
		apptest.Eventually(t, func() error {
			if n := a.Server().Stats().Info.ClientsConnected; n != 0 {
				return fmt.Errorf("%d clients still connected", n)
			}
			return nil
		})
	}
	heap := func() uint64 {
		runtime.GC()
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return m.HeapInuse
	}

	run(0, 500) // warm up pools, buffers and the first goroutines of every kind
	settle()
	g0, h0 := runtime.NumGoroutine(), heap()
	sessions0 := a.Server().Stats().Info.ClientsTotal // the server's own client

	n := churnCycles()
	run(500, n)
	settle()
	// Goroutines end asynchronously after a socket closes: wait for the count, not for a time.
	apptest.Eventually(t, func() error {
		if g := runtime.NumGoroutine(); g > g0+5 {
			return fmt.Errorf("%d goroutines after %d cycles, %d before", g, n, g0)
		}
		return nil
	})
	st := a.Server().Stats()
	if st.Info.ClientsTotal != sessions0 || st.UsersBound != 0 {
		t.Fatalf("sessions %d after the churn, %d before; users bound: %d", st.Info.ClientsTotal, sessions0, st.UsersBound)
	}
	// Clean sessions leave nothing; 8 MB is room for pools and GC timing, far
	// below what 10k leaked clients (tens of KB each) would hold.
	if h := heap(); h > h0+8<<20 {
		t.Fatalf("heap in use grew from %d to %d bytes over %d cycles", h0, h, n)
	}
	t.Logf("%d cycles: goroutines %d -> %d, heap in use %d -> %d KB", n, g0, runtime.NumGoroutine(), h0>>10, heap()>>10)
}
