package server_test

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	pahov3 "github.com/eclipse/paho.mqtt.golang"

	"github.com/colonymq/colony/app"
	"github.com/colonymq/colony/app/apptest"
	"github.com/colonymq/colony/server"
)

// pushPayload is large enough that a client that stops reading fills the
// socket buffers after some hundreds of pushes.
const pushPayload = 64 << 10

// seqPayload is a push payload carrying seq in its first four bytes.
func seqPayload(seq int) []byte {
	p := make([]byte, pushPayload)
	binary.BigEndian.PutUint32(p, uint32(seq))
	return p
}

// pushUntilRefused pushes to a stalled client with push until want pushes
// were refused with ErrSlowClient, at most limit pushes in all, on a
// goroutine of its own so that a push that blocks fails the test instead
// of hanging it. It returns the sequence numbers of the pushes accepted.
// each, when not nil, runs after every push.
func pushUntilRefused(t *testing.T, want, limit int, push func(seq int) error, each func(seq int)) (accepted []int, refused int) {
	t.Helper()
	done := make(chan error, 1)
	go func() {
		for seq := 0; seq < limit && refused < want; seq++ {
			err := push(seq)
			switch {
			case err == nil:
				accepted = append(accepted, seq)
			case errors.Is(err, server.ErrSlowClient):
				refused++
			default:
				done <- fmt.Errorf("push %d: %w", seq, err)
				return
			}
			if each != nil {
				each(seq)
			}
		}
		done <- nil
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(6 * apptest.Wait):
		t.Fatal("pushes to a client that does not read blocked their caller")
	}
	if refused < want {
		t.Fatalf("%d pushes accepted, %d refused: the client's queue never filled", len(accepted), refused)
	}
	return accepted, refused
}

// TestPushNeverWaitsForAStalledClient pushes to a user whose only client
// has stopped reading (its message handler blocks) and, after each push,
// to another user. The pushes to the stalled client fill its bounded queue
// and are then refused with ErrSlowClient at once, counted as QoS 0 drops
// or refused QoS 1 pushes; the other user gets every push meanwhile, and
// nothing is disconnected (the slow-client patience is long).
func TestPushNeverWaitsForAStalledClient(t *testing.T) {
	for _, qos := range []byte{0, 1} {
		t.Run(fmt.Sprintf("qos%d", qos), func(t *testing.T) {
			cfg := apptest.Config(t)
			cfg.Limits.ClientWriteQueue = 8
			cfg.Limits.SlowClientTimeout = app.Duration(time.Hour)
			a := apptest.Run(t, cfg)
			srv := a.Server()

			release := make(chan struct{})
			var blocked sync.Once
			stuck := apptest.V3(t, apptest.URL(a), "stuck", func(o *pahov3.ClientOptions) {
				o.SetKeepAlive(time.Hour).SetOrderMatters(true).
					SetDefaultPublishHandler(func(pahov3.Client, pahov3.Message) {
						blocked.Do(func() { <-release }) // the first push stops it reading for good
					})
			})
			t.Cleanup(func() { close(release) }) // before the client's own cleanup disconnects it
			got := make(chan int, 8192)
			apptest.V3(t, apptest.URL(a), "fine", func(o *pahov3.ClientOptions) {
				o.SetDefaultPublishHandler(func(_ pahov3.Client, m pahov3.Message) {
					got <- int(binary.BigEndian.Uint32(m.Payload()))
				})
			})
			// The server registers a connection just after its CONNACK.
			apptest.Eventually(t, func() error { return srv.BindUser("stuck", "sam") })
			apptest.Eventually(t, func() error { return srv.BindUser("fine", "fay") })

			others := 0
			accepted, refused := pushUntilRefused(t, 50, 5000, func(seq int) error {
				n, err := srv.PushUser("sam", "push/sam", seqPayload(seq), qos)
				if (n == 1) != (err == nil) {
					return fmt.Errorf("PushUser counted %d connections with error %v", n, err)
				}
				return err
			}, func(seq int) {
				// The other user's client reads: its push arrives before the next one.
				n, err := srv.PushUser("fay", "push/fay", binary.BigEndian.AppendUint32(nil, uint32(seq)), qos)
				if n != 1 || err != nil {
					t.Errorf("push %d to a reading client: %d, %v", seq, n, err)
					return
				}
				select {
				case got := <-got:
					if got != seq {
						t.Errorf("the reading client got push %d, want %d", got, seq)
					}
					others++
				case <-time.After(apptest.Wait):
					t.Errorf("push %d to the reading client did not arrive", seq)
				}
			})
			t.Logf("stalled client: %d pushes accepted before the queue was full, %d refused", len(accepted), refused)
			if others != len(accepted)+refused {
				t.Fatalf("the reading client got %d of %d pushes", others, len(accepted)+refused)
			}
			st := srv.Stats()
			if qos == 0 && st.Info.MessagesDropped != int64(refused) {
				t.Fatalf("%d QoS 0 pushes refused, %d counted as dropped", refused, st.Info.MessagesDropped)
			}
			if qos == 1 && (st.PushesRefused != int64(refused) || st.Info.MessagesDropped != 0 || st.Info.InflightDropped != 0) {
				t.Fatalf("%d QoS 1 pushes refused; stats: %d refused, %d dropped, %d in-flight dropped",
					refused, st.PushesRefused, st.Info.MessagesDropped, st.Info.InflightDropped)
			}
			if qos == 1 && st.Info.Inflight < int64(len(accepted)) {
				t.Fatalf("%d QoS 1 pushes accepted but %d in flight", len(accepted), st.Info.Inflight)
			}
			if !stuck.IsConnectionOpen() || len(srv.ClientsOf("sam")) != 1 {
				t.Fatal("the stalled client was disconnected within its patience")
			}
		})
	}
}

// TestPushStalledSessionGetsItsQoS1 pushes QoS 1 to a persistent session's
// client that never reads. Once its queue has stayed full for the
// slow-client patience the client is disconnected; when it comes back,
// its session delivers every push that was accepted, and none that was
// refused.
func TestPushStalledSessionGetsItsQoS1(t *testing.T) {
	cfg := apptest.Config(t)
	cfg.Limits.ClientWriteQueue = 4
	cfg.Limits.SlowClientTimeout = app.Duration(200 * time.Millisecond)
	a := apptest.Run(t, cfg)
	srv := a.Server()
	connected, gone := make(chan struct{}), make(chan struct{})
	var connectedOnce, goneOnce sync.Once
	defer srv.Watch(func(ev server.Event) {
		if ev.ClientID != "mute" {
			return
		}
		switch ev.Kind {
		case server.Connected:
			connectedOnce.Do(func() { close(connected) })
		case server.Disconnected:
			goneOnce.Do(func() { close(gone) })
		}
	})()

	// A raw 3.1.1 client: CONNECT clean=false id "mute", keep-alive 600 s, then never read again.
	conn, err := net.DialTimeout("tcp", a.Addr("mqtt"), apptest.Wait)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte{0x10, 16, 0, 4, 'M', 'Q', 'T', 'T', 4, 0x00, 0x02, 0x58, 0, 4, 'm', 'u', 't', 'e'}); err != nil {
		t.Fatal(err)
	}
	if err := conn.SetReadDeadline(time.Now().Add(apptest.Wait)); err != nil {
		t.Fatal(err)
	}
	ack := make([]byte, 4)
	if _, err := io.ReadFull(conn, ack); err != nil || ack[0] != 0x20 || ack[3] != 0 {
		t.Fatalf("connack: %x %v", ack, err)
	}
	apptest.Next(t, connected) // the server registers a connection just after its CONNACK

	// Push until the server gives up on the client: pushes are refused
	// while its queue is full, and once it has been full for the
	// patience the client is disconnected (ErrNoClient from then on).
	var accepted []int
	refused := 0
	disconnected := false
	for seq := 0; !disconnected; seq++ {
		err := srv.PushClient("mute", "push/mute", seqPayload(seq), 1)
		switch {
		case err == nil:
			accepted = append(accepted, seq)
		case errors.Is(err, server.ErrSlowClient):
			refused++
			select {
			case <-gone:
				disconnected = true
			case <-time.After(20 * time.Millisecond): // pace the refusals while the patience runs out
			}
		case errors.Is(err, server.ErrNoClient):
			disconnected = true
		default:
			t.Fatalf("push %d: %v", seq, err)
		}
		if refused > 1500 {
			t.Fatalf("the stalled client was not disconnected after %d refused pushes", refused)
		}
	}
	if refused == 0 || len(accepted) == 0 {
		t.Fatalf("%d pushes accepted, %d refused", len(accepted), refused)
	}
	t.Logf("%d pushes accepted, %d refused before the client was disconnected", len(accepted), refused)
	<-gone
	conn.Close()

	want := map[int]bool{}
	for _, seq := range accepted {
		want[seq] = true
	}
	var mu sync.Mutex
	got := map[int]int{}
	all := make(chan struct{})
	var allOnce sync.Once
	apptest.V3(t, apptest.URL(a), "mute", func(o *pahov3.ClientOptions) {
		o.SetCleanSession(false).SetOrderMatters(true).SetDefaultPublishHandler(func(_ pahov3.Client, m pahov3.Message) {
			mu.Lock()
			defer mu.Unlock()
			got[int(binary.BigEndian.Uint32(m.Payload()))]++
			if len(got) == len(want) {
				allOnce.Do(func() { close(all) })
			}
		})
	})
	select {
	case <-all:
	case <-time.After(3 * apptest.Wait):
		mu.Lock()
		defer mu.Unlock()
		t.Fatalf("after reconnecting, %d of %d accepted pushes arrived", len(got), len(want))
	}
	mu.Lock()
	defer mu.Unlock()
	for seq, n := range got {
		if !want[seq] || n != 1 {
			t.Fatalf("push %d arrived %d times (accepted: %v)", seq, n, want[seq])
		}
	}
	if st := srv.Stats(); st.PushesRefused != int64(refused) || st.Info.InflightDropped != 0 {
		t.Fatalf("%d pushes refused; stats: %d refused, %d in-flight dropped", refused, st.PushesRefused, st.Info.InflightDropped)
	}
}
