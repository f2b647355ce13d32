package server_test

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/colonymq/colony/app/apptest"
	"github.com/colonymq/colony/server"
)

// The engine parks idle plain-TCP connections (PATCHES.md P16): no goroutine
// serves them until bytes arrive, the keep-alive deadline passes or the
// server ends them. These tests check each way out of a park.

// connectRaw opens a raw MQTT 3.1.1 connection with the given keep-alive and
// an optional will, and waits for a successful CONNACK.
func connectRaw(t *testing.T, addr, id string, keepalive uint16, will string) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, apptest.Wait)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	flags := byte(2) // clean session
	body := []byte{0, 4, 'M', 'Q', 'T', 'T', 4, 0, byte(keepalive >> 8), byte(keepalive)}
	body = appendString(body, id)
	if will != "" {
		flags |= 4 // will, QoS 0
		body = appendString(body, will)
		body = appendString(body, "gone")
	}
	body[7] = flags
	if _, err := c.Write(append([]byte{0x10, byte(len(body))}, body...)); err != nil {
		t.Fatal(err)
	}
	expect(t, c, []byte{0x20, 2, 0, 0})
	return c
}

func appendString(b []byte, s string) []byte {
	return append(append(b, byte(len(s)>>8), byte(len(s))), s...)
}

// expect reads exactly want from c.
func expect(t *testing.T, c net.Conn, want []byte) {
	t.Helper()
	if err := c.SetReadDeadline(time.Now().Add(apptest.Wait)); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(want))
	if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("read %x, want %x: %v", got, want, err)
	}
}

// expectClosed waits until the server closes c (after what it still sends,
// such as a DISCONNECT).
func expectClosed(t *testing.T, c net.Conn) {
	t.Helper()
	if err := c.SetReadDeadline(time.Now().Add(apptest.Wait)); err != nil {
		t.Fatal(err)
	}
	_, err := io.Copy(io.Discard, c)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatal("connection still open")
	}
}

// waitParked waits until at most slack goroutines more than g0 are running,
// i.e. the idle connections opened since hold none.
func waitParked(t *testing.T, g0, slack int) {
	t.Helper()
	if runtime.GOOS != "linux" {
		return // no poller: an idle connection keeps its goroutine
	}
	apptest.Eventually(t, func() error {
		if g := runtime.NumGoroutine(); g > g0+slack {
			return fmt.Errorf("%d goroutines, %d before the idle connections", g, g0)
		}
		return nil
	})
}

func TestIdleConnectionsHoldNoGoroutine(t *testing.T) {
	a := apptest.Run(t, apptest.Config(t))
	g0 := runtime.NumGoroutine()
	conns := dialIdle(t, a.Addr("mqtt"), 200)
	waitParked(t, g0, 20)

	// Every parked connection is served again when it speaks: PINGREQ.
	for _, c := range conns {
		if _, err := c.Write([]byte{0xc0, 0}); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range conns {
		expect(t, c, []byte{0xd0, 0})
	}
	// And parks again.
	waitParked(t, g0, 20)
}

func TestParkedConnectionSubscribesReceivesAndPublishes(t *testing.T) {
	a := apptest.Run(t, apptest.Config(t))
	g0 := runtime.NumGoroutine()
	c := connectRaw(t, a.Addr("mqtt"), "parked", 60, "")
	waitParked(t, g0, 2)

	// SUBSCRIBE to "p/t" at QoS 1, id 7: SUBACK.
	sub := append([]byte{0x82, 0}, 0, 7)
	sub = append(appendString(sub, "p/t"), 1)
	sub[1] = byte(len(sub) - 2)
	if _, err := c.Write(sub); err != nil {
		t.Fatal(err)
	}
	expect(t, c, []byte{0x90, 3, 0, 7, 1})
	waitParked(t, g0, 2)

	// A message published by another client reaches the parked subscriber.
	pub := apptest.V3(t, apptest.URL(a), "pub")
	apptest.Done(t, pub.Publish("p/t", 0, false, "hi"))
	want := append(appendString([]byte{0x30, 0}, "p/t"), "hi"...)
	want[1] = byte(len(want) - 2)
	expect(t, c, want)

	// A QoS 1 PUBLISH from it, after it parked again, is acknowledged.
	waitParked(t, g0, 12) // paho's goroutines
	p := append(appendString([]byte{0x32, 0}, "p/u"), 0, 9, 'x')
	p[1] = byte(len(p) - 2)
	if _, err := c.Write(p); err != nil {
		t.Fatal(err)
	}
	expect(t, c, []byte{0x40, 2, 0, 9})
}

func TestParkedConnectionKeepAliveExpires(t *testing.T) {
	a := apptest.Run(t, apptest.Config(t))
	watcher := apptest.V3(t, apptest.URL(a), "watcher")
	ch, h := apptest.Sink()
	apptest.Done(t, watcher.Subscribe("wills/#", 0, h))

	// Keep-alive 1 s: the server must close the silent connection after
	// 1.5 × (rounded down, 1 s) and publish its will, as for a dead client.
	c := connectRaw(t, a.Addr("mqtt"), "silent", 1, "wills/silent")
	expectClosed(t, c)
	if m := apptest.Next(t, ch); m.Topic() != "wills/silent" || string(m.Payload()) != "gone" {
		t.Fatalf("got %q on %q", m.Payload(), m.Topic())
	}

	// The same after one PINGREQ: the connection is served again, lingers,
	// parks, and its deadline (renewed by the PINGREQ) still ends it.
	// Keep-alive 2 s (3 s deadline) leaves a loaded machine time to answer
	// the PINGREQ first.
	c = connectRaw(t, a.Addr("mqtt"), "pinged", 2, "wills/pinged")
	if _, err := c.Write([]byte{0xc0, 0}); err != nil {
		t.Fatal(err)
	}
	expect(t, c, []byte{0xd0, 0})
	expectClosed(t, c)
	if m := apptest.Next(t, ch); m.Topic() != "wills/pinged" {
		t.Fatalf("got %q on %q", m.Payload(), m.Topic())
	}
}

func TestParkedConnectionTakenOver(t *testing.T) {
	a := apptest.Run(t, apptest.Config(t))
	g0 := runtime.NumGoroutine()
	old := connectRaw(t, a.Addr("mqtt"), "same", 0, "")
	waitParked(t, g0, 2)
	connectRaw(t, a.Addr("mqtt"), "same", 0, "")
	expectClosed(t, old)
}

func TestParkedConnectionsEndOnShutdown(t *testing.T) {
	a := apptest.Run(t, apptest.Config(t))
	g0 := runtime.NumGoroutine()
	var conns []net.Conn
	for i := range 50 {
		conns = append(conns, connectRaw(t, a.Addr("mqtt"), fmt.Sprintf("ka0-%d", i), 0, ""))
	}
	waitParked(t, g0, 10)
	// Without keep-alive no timer would ever wake them: the stop must.
	apptest.Stop(t, a)
	for _, c := range conns {
		expectClosed(t, c)
	}
}

func TestParkedConnectionClosedByClient(t *testing.T) {
	a := apptest.Run(t, apptest.Config(t))
	watcher := apptest.V3(t, apptest.URL(a), "watcher")
	ch, h := apptest.Sink()
	apptest.Done(t, watcher.Subscribe("wills/#", 0, h))
	g0 := runtime.NumGoroutine()
	c := connectRaw(t, a.Addr("mqtt"), "leaver", 0, "wills/leaver")
	waitParked(t, g0, 2)
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if m := apptest.Next(t, ch); m.Topic() != "wills/leaver" {
		t.Fatalf("got %q on %q", m.Payload(), m.Topic())
	}
	apptest.Eventually(t, func() error {
		if n := a.Server().Stats().Info.ClientsConnected; n != 1 {
			return fmt.Errorf("%d clients connected, want the watcher only", n)
		}
		return nil
	})
}

// panicHook panics reading a PUBLISH to "boom".
type panicHook struct{ mqtt.HookBase }

func (panicHook) ID() string { return "panic" }
func (panicHook) Provides(b byte) bool {
	return b == mqtt.OnPacketRead
}
func (panicHook) OnPacketRead(_ *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if pk.FixedHeader.Type == packets.Publish && pk.TopicName == "boom" {
		panic("hook bug")
	}
	return pk, nil
}

func TestPanicAfterParkIsContained(t *testing.T) {
	srv := hookedServer(t, server.Limits{}, new(panicHook))
	g0 := runtime.NumGoroutine()
	c := connectRaw(t, srv.Addr(server.ListenerMQTT), "bomb", 0, "")
	waitParked(t, g0, 2)
	p := appendString([]byte{0x30, 0}, "boom")
	p[1] = byte(len(p) - 2)
	if _, err := c.Write(p); err != nil {
		t.Fatal(err)
	}
	expectClosed(t, c)
	// The engine closes the socket while the panic unwinds, before the
	// listener recovers and counts it.
	apptest.Eventually(t, func() error {
		if n := srv.Stats().Panics; n != 1 {
			return fmt.Errorf("panics counted: %d", n)
		}
		return nil
	})
	// The server serves on.
	c2 := connectRaw(t, srv.Addr(server.ListenerMQTT), "next", 0, "")
	if _, err := c2.Write([]byte{0xc0, 0}); err != nil {
		t.Fatal(err)
	}
	expect(t, c2, []byte{0xd0, 0})
}

// BenchmarkPingRoundTrip measures a PINGREQ/PINGRESP round trip on one
// connection: the cost of serving a client in a conversation, which a
// connection that parked between packets would pay a park and a wake-up
// on (PATCHES.md P16, parkLinger).
func BenchmarkPingRoundTrip(b *testing.B) {
	a := apptest.Run(b, apptest.Config(b))
	c := dialIdle(b, a.Addr("mqtt"), 1)[0]
	defer c.Close()
	if err := c.SetReadDeadline(time.Time{}); err != nil {
		b.Fatal(err)
	}
	buf := make([]byte, 2)
	b.ResetTimer()
	for range b.N {
		if _, err := c.Write([]byte{0xc0, 0}); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(c, buf); err != nil || buf[0] != 0xd0 {
			b.Fatalf("read %x: %v", buf, err)
		}
	}
}
