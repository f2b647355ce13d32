package server_test

import (
	"fmt"
	"io"
	"net"
	"runtime"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/colonymq/colony/app"
	"github.com/colonymq/colony/app/apptest"
)

// dialIdle opens n raw MQTT 3.1.1 connections (CONNECT, wait for CONNACK)
// and leaves them idle.
func dialIdle(tb testing.TB, addr string, n int) []net.Conn {
	tb.Helper()
	conns := make([]net.Conn, 0, n)
	for i := range n {
		c, err := net.DialTimeout("tcp", addr, apptest.Wait)
		if err != nil {
			tb.Fatal(err)
		}
		id := fmt.Sprintf("idle%06d", i)
		pk := append([]byte{0x10, byte(12 + len(id)), 0, 4, 'M', 'Q', 'T', 'T', 4, 2, 1, 44, 0, byte(len(id))}, id...)
		if _, err := c.Write(pk); err != nil {
			tb.Fatal(err)
		}
		if err := c.SetReadDeadline(time.Now().Add(apptest.Wait)); err != nil {
			tb.Fatal(err)
		}
		ack := make([]byte, 4)
		if _, err := io.ReadFull(c, ack); err != nil || ack[0] != 0x20 || ack[3] != 0 {
			tb.Fatalf("connack %x: %v", ack, err)
		}
		conns = append(conns, c)
	}
	return conns
}

// TestShutdownWhileClientsLeave stops the server while a thousand clients
// disconnect at the same moment. The engine used to deadlock here (a nested
// read lock on its client map, PATCHES.md P8); the race is narrow, so this
// guard catches it only some of the time, as did the 2,000-client probe that
// found it (about one run in two).
func TestShutdownWhileClientsLeave(t *testing.T) {
	for round := range 3 {
		a := app.New(apptest.Config(t), apptest.Logger(t))
		if err := a.Start(apptest.Ctx(t)); err != nil {
			t.Fatal(err)
		}
		conns := dialIdle(t, a.Addr("mqtt"), 1000)
		// Close every client, then stop at once: their disconnects race the shutdown.
		for _, c := range conns {
			c.Close()
		}
		stopped := make(chan error, 1)
		go func() { stopped <- a.Stop(apptest.Ctx(t)) }()
		select {
		case err := <-stopped:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(3 * apptest.Wait):
			buf := make([]byte, 1<<20)
			t.Fatalf("round %d: shutdown hung:\n%s", round, buf[:runtime.Stack(buf, true)])
		}
	}
}

// BenchmarkIdleConnectionMemory reports what one idle MQTT connection costs
// the server process (Go heap and goroutine stacks; the client sockets live
// in the same process, so their Go-side cost counts too: a net.Conn over
// TCP, a gorilla WebSocket connection and its buffers over WebSocket).
// Plain TCP connections are parked by the engine (PATCHES.md P16);
// WebSocket connections keep a goroutine blocked in a read.
func BenchmarkIdleConnectionMemory(b *testing.B) {
	a := apptest.Run(b, apptest.Config(b))
	b.Run("tcp", func(b *testing.B) {
		benchIdle(b, 2000, func() []io.Closer {
			var cs []io.Closer
			for _, c := range dialIdle(b, a.Addr("mqtt"), 2000) {
				cs = append(cs, c)
			}
			return cs
		})
	})
	b.Run("ws", func(b *testing.B) {
		benchIdle(b, 500, func() []io.Closer {
			var cs []io.Closer
			for i := range 500 {
				ws, _, err := websocket.DefaultDialer.Dial(apptest.WSURL(a), nil)
				if err != nil {
					b.Fatal(err)
				}
				id := fmt.Sprintf("ws%06d", i)
				pk := append([]byte{0x10, byte(12 + len(id)), 0, 4, 'M', 'Q', 'T', 'T', 4, 2, 1, 44, 0, byte(len(id))}, id...)
				if err := ws.WriteMessage(websocket.BinaryMessage, pk); err != nil {
					b.Fatal(err)
				}
				if err := ws.SetReadDeadline(time.Now().Add(apptest.Wait)); err != nil {
					b.Fatal(err)
				}
				if _, ack, err := ws.ReadMessage(); err != nil || len(ack) != 4 || ack[0] != 0x20 || ack[3] != 0 {
					b.Fatalf("connack %x: %v", ack, err)
				}
				cs = append(cs, ws.NetConn())
			}
			return cs
		})
	})
}

func benchIdle(b *testing.B, n int, dial func() []io.Closer) {
	for range b.N {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		g0 := runtime.NumGoroutine()
		conns := dial()
		time.Sleep(200 * time.Millisecond)
		for range 4 {
			runtime.GC() // stacks shrink one halving per GC
		}
		runtime.ReadMemStats(&after)
		b.ReportMetric(float64(int64(after.HeapInuse)-int64(before.HeapInuse))/float64(n), "heap-B/conn")
		b.ReportMetric(float64(int64(after.StackInuse)-int64(before.StackInuse))/float64(n), "stack-B/conn")
		b.ReportMetric(float64(runtime.NumGoroutine()-g0)/float64(n), "goroutines/conn")
		for _, c := range conns {
			c.Close()
		}
	}
}
