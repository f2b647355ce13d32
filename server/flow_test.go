package server_test

import (
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	pahov3 "github.com/eclipse/paho.mqtt.golang"

	"github.com/colonymq/colony/app"
	"github.com/colonymq/colony/app/apptest"
)

// TestSlowSubscriberLosesNothing floods a subscriber that reads slowly from
// four publishers through a deliberately tiny queue: every message of every
// publisher must arrive exactly once, at QoS 0 and at QoS 1, because the
// server slows the publishers down instead of dropping.
func TestSlowSubscriberLosesNothing(t *testing.T) {
	for _, qos := range []byte{0, 1} {
		t.Run(fmt.Sprintf("qos%d", qos), func(t *testing.T) {
			cfg := apptest.Config(t)
			cfg.Limits.ClientWriteQueue = 8
			a := apptest.Run(t, cfg)
			const pubs, each = 4, 2000

			var mu sync.Mutex
			seen := make([][]int, pubs)
			for i := range seen {
				seen[i] = make([]int, each)
			}
			got := make(chan struct{}, pubs*each*2)
			sub := apptest.V3(t, apptest.URL(a), fmt.Sprintf("slow-%d", qos), func(o *pahov3.ClientOptions) {
				o.SetOrderMatters(true) // the handler runs on paho's reading goroutine, so a slow handler slows the socket
			})
			apptest.Done(t, sub.Subscribe("flood/#", qos, func(_ pahov3.Client, m pahov3.Message) {
				p := m.Payload()
				pub, seq := binary.BigEndian.Uint32(p), binary.BigEndian.Uint32(p[4:])
				if seq%200 == 0 {
					time.Sleep(2 * time.Millisecond) // a slow consumer
				}
				mu.Lock()
				seen[pub][seq]++
				mu.Unlock()
				got <- struct{}{}
			}))

			var wg sync.WaitGroup
			for p := range pubs {
				c := apptest.V3(t, apptest.URL(a), fmt.Sprintf("flooder-%d-%d", qos, p), func(o *pahov3.ClientOptions) {
					o.SetMaxResumePubInFlight(1000)
				})
				wg.Go(func() {
					var last pahov3.Token
					for seq := range each {
						payload := make([]byte, 64)
						binary.BigEndian.PutUint32(payload, uint32(p))
						binary.BigEndian.PutUint32(payload[4:], uint32(seq))
						last = c.Publish(fmt.Sprintf("flood/%d", p), qos, false, payload)
						if qos > 0 && seq%100 == 99 {
							last.WaitTimeout(apptest.Wait) // keep a bounded window of unacknowledged publishes
						}
					}
					last.WaitTimeout(apptest.Wait)
				})
			}
			wg.Wait()
			for n := range pubs * each {
				select {
				case <-got:
				case <-time.After(apptest.Wait):
					t.Fatalf("only %d of %d messages arrived", n, pubs*each)
				}
			}
			mu.Lock()
			defer mu.Unlock()
			for p := range pubs {
				for seq, n := range seen[p] {
					if n != 1 {
						t.Fatalf("publisher %d message %d arrived %d times", p, seq, n)
					}
				}
			}
			if st := a.Server().Stats(); st.Info.MessagesDropped != 0 || st.Info.InflightDropped != 0 {
				t.Fatalf("server dropped messages: %d queue, %d in-flight", st.Info.MessagesDropped, st.Info.InflightDropped)
			}
		})
	}
}

// TestStalledSubscriberKeepsItsMessages connects a persistent subscriber
// that stops reading altogether. Publishers must not hang behind it for
// ever: once it counts as stalled it is disconnected, and when it comes
// back its session delivers every QoS 1 message it missed.
func TestStalledSubscriberKeepsItsMessages(t *testing.T) {
	cfg := apptest.Config(t)
	cfg.Limits.ClientWriteQueue = 4
	cfg.Limits.SlowClientTimeout = app.Duration(300 * time.Millisecond)
	a := apptest.Run(t, cfg)

	// A raw 3.1.1 client: CONNECT clean=false id "stuck", SUBSCRIBE stall/# QoS 1, then never read again.
	conn, err := net.DialTimeout("tcp", a.Addr("mqtt"), apptest.Wait)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	connect := []byte{0x10, 17, 0, 4, 'M', 'Q', 'T', 'T', 4, 0x00, 0, 60, 0, 5, 's', 't', 'u', 'c', 'k'}
	subscribe := []byte{0x82, 12, 0, 1, 0, 7, 's', 't', 'a', 'l', 'l', '/', '#', 1}
	if _, err := conn.Write(append(connect, subscribe...)); err != nil {
		t.Fatal(err)
	}
	if err := conn.SetReadDeadline(time.Now().Add(apptest.Wait)); err != nil {
		t.Fatal(err)
	}
	acks := make([]byte, 4+5)
	if _, err := io.ReadFull(conn, acks); err != nil || acks[0] != 0x20 || acks[4] != 0x90 {
		t.Fatalf("connack/suback: %x %v", acks, err)
	}

	const count = 400
	payload := make([]byte, 32<<10) // big enough to fill the socket buffers quickly
	pub := apptest.V3(t, apptest.URL(a), "pusher")
	for i := range count {
		payload[0], payload[1] = byte(i>>8), byte(i)
		apptest.Done(t, pub.Publish("stall/x", 1, false, payload))
	}

	// Every publish was acknowledged; the stuck client is gone.
	conn.Close()
	got := map[int]int{}
	done := make(chan struct{})
	var once sync.Once
	apptest.V3(t, apptest.URL(a), "stuck", func(o *pahov3.ClientOptions) {
		o.SetCleanSession(false).SetDefaultPublishHandler(func(_ pahov3.Client, m pahov3.Message) {
			p := m.Payload()
			got[int(p[0])<<8|int(p[1])]++
			if len(got) == count {
				once.Do(func() { close(done) })
			}
		}).SetOrderMatters(true)
	})
	select {
	case <-done:
	case <-time.After(3 * apptest.Wait):
		t.Fatalf("after reconnecting, %d of %d messages arrived", len(got), count)
	}

	if st := a.Server().Stats(); st.Info.InflightDropped != 0 {
		t.Fatalf("%d QoS 1 messages dropped", st.Info.InflightDropped)
	}
}

// TestSessionQueueIsNotTheWindow checks that a disconnected persistent
// session keeps up to max_session_queue messages even when the connected
// window (max_inflight) is much smaller, that the excess is counted, and
// that the queue comes back in order.
func TestSessionQueueIsNotTheWindow(t *testing.T) {
	cfg := apptest.Config(t)
	cfg.Limits.MaxInflight = 16
	cfg.Limits.MaxSessionQueue = 200
	a := apptest.Run(t, cfg)
	sub := apptest.V3(t, apptest.URL(a), "away", func(o *pahov3.ClientOptions) { o.SetCleanSession(false) })
	apptest.Done(t, sub.Subscribe("q/#", 1, nil))
	sub.Disconnect(50)

	pub := apptest.V3(t, apptest.URL(a), "filler")
	for i := range 250 {
		apptest.Done(t, pub.Publish("q/x", 1, false, []byte{byte(i >> 8), byte(i)}))
	}
	if d := a.Server().Stats().Info.InflightDropped; d != 50 {
		t.Fatalf("%d messages dropped beyond the session queue, want 50", d)
	}
	got := make(chan int, 300)
	apptest.V3(t, apptest.URL(a), "away", func(o *pahov3.ClientOptions) {
		o.SetCleanSession(false).SetDefaultPublishHandler(func(_ pahov3.Client, m pahov3.Message) {
			got <- int(m.Payload()[0])<<8 | int(m.Payload()[1])
		})
	})
	// The first 200, in the order they were published (MQTT 4.6; engine
	// patch P11: upstream resent them in random order).
	var order []int
	for range 200 {
		order = append(order, apptest.Next(t, got))
	}
	for i, n := range order {
		if n != i {
			t.Fatalf("message %d arrived as number %d: %v", n, i, order)
		}
	}
}
