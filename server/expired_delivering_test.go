package server_test

import (
	"fmt"
	"path/filepath"
	"slices"
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"

	"github.com/colonymq/colony/app/apptest"
	"github.com/colonymq/colony/server"
	"github.com/colonymq/colony/store"
)

// TestSessionExpiredWhileDeliveringStaysGone: a publisher with a short
// session expiry is kicked while its connection's goroutine waits for room
// at a subscriber that acknowledges nothing (for up to
// slow_client_timeout, longer than the expiry). Its session expires
// meanwhile; when the wait ends, the connection's end must not write the
// session back to the store, or it would return after a restart.
func TestSessionExpiredWhileDeliveringStaysGone(t *testing.T) {
	path := filepath.Join(t.TempDir(), "colony.db")
	start := func() (*server.Server, func()) {
		db, err := store.Open(path, store.Options{Durability: store.DurabilitySync})
		if err != nil {
			t.Fatal(err)
		}
		srv, stop := runServer(t, server.Options{
			Limits: server.Limits{SlowClientTimeout: 3 * time.Second},
			Hooks:  []mqtt.Hook{db.MQTTHook()},
		})
		return srv, func() {
			stop()
			if err := db.Close(); err != nil {
				t.Error(err)
			}
		}
	}
	srv, stop := start()
	addr := srv.Addr(server.ListenerMQTT)
	rawSubscriber(t, addr, "ex-sub", []byte{0x21, 0, 1}, "ex/t", 1)  // Receive Maximum 1; never acknowledges
	c, r := apptest.RawClient(t, addr, "ex-pub", 5, false, false, 1) // session expiry 1 s
	publish := func(id byte) []byte {
		body := slices.Concat([]byte{0, 4}, []byte("ex/t"), []byte{0, id, 0}, []byte("m"))
		return append([]byte{0x32, byte(len(body))}, body...)
	}
	apptest.RawExchange(t, c, r, apptest.RawStep{Send: publish(1), Want: []byte{0x40, 2, 0, 1}}) // delivered: the window is full
	blocked := time.Now()
	if _, err := c.Write(publish(2)); err != nil { // waits for room
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	if err := srv.KickClientLocal("ex-pub", "test"); err != nil {
		t.Fatal(err)
	}
	apptest.Eventually(t, func() error {
		if srv.HasSession("ex-pub") {
			return fmt.Errorf("the kicked publisher's session has not expired")
		}
		return nil
	})
	// Past slow_client_timeout the wait is over, however it ended, and so
	// is the connection (OnDisconnect).
	time.Sleep(time.Until(blocked.Add(3*time.Second + 500*time.Millisecond)))
	stop()
	srv, _ = start()
	if srv.HasSession("ex-pub") {
		t.Fatal("the expired session came back after a restart")
	}
}
