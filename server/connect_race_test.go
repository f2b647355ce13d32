package server_test

import (
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/colonymq/colony/app/apptest"
	"github.com/colonymq/colony/server"
)

// TestConcurrentConnectsWithOneClientID: two connections CONNECT with one
// client id at the same moment. One takes over from the other, whichever
// the engine serves last: exactly one stays open, and it is the client the
// server knows by that id. The engine looked for the id's client and added
// its own in two steps, so two CONNECTs side by side each missed the
// other: both stayed open, and when the unfindable one closed, its
// clean-up removed the other, live, client.
func TestConcurrentConnectsWithOneClientID(t *testing.T) {
	srv := hookedServer(t, server.Limits{})
	addr := srv.Addr(server.ListenerMQTT)
	connect := func(id string) net.Conn {
		c, err := net.DialTimeout("tcp", addr, apptest.Wait)
		if err != nil {
			t.Error(err)
			return nil
		}
		t.Cleanup(func() { c.Close() })
		body := append([]byte{0, 4, 'M', 'Q', 'T', 'T', 4, 0x02, 0, 60, 0, byte(len(id))}, id...)
		if _, err := c.Write(append([]byte{0x10, byte(len(body))}, body...)); err != nil {
			t.Error(err)
		}
		return c
	}
	open := func(c net.Conn) bool { // after its CONNACK, if any: still open a while later
		buf := make([]byte, 64)
		if err := c.SetReadDeadline(time.Now().Add(300 * time.Millisecond)); err != nil {
			t.Fatal(err)
		}
		for {
			if _, err := c.Read(buf); err != nil {
				return errors.Is(err, os.ErrDeadlineExceeded)
			}
		}
	}
	for round := range 40 {
		id := fmt.Sprintf("race-%d", round)
		conns := make([]net.Conn, 2)
		var wg sync.WaitGroup
		for i := range conns {
			wg.Add(1)
			go func() {
				defer wg.Done()
				conns[i] = connect(id)
			}()
		}
		wg.Wait()
		if t.Failed() {
			return
		}
		// Both CONNECTs are served by now, or soon: wait until the server
		// has the id's client, then see which connections stay open.
		apptest.Eventually(t, func() error {
			if !srv.HasSession(id) {
				return fmt.Errorf("no client %s", id)
			}
			return nil
		})
		n := 0
		for _, c := range conns {
			if open(c) {
				n++
			}
		}
		if n != 1 {
			t.Fatalf("round %d: %d connections with client id %s stayed open, want 1", round, n, id)
		}
	}
}
