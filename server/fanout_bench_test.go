package server_test

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/colonymq/colony/app/apptest"
)

// rawConnect opens a raw MQTT 3.1.1 connection (CONNECT, wait for CONNACK).
func rawConnect(tb testing.TB, addr, id string) net.Conn {
	tb.Helper()
	c, err := net.DialTimeout("tcp", addr, apptest.Wait)
	if err != nil {
		tb.Fatal(err)
	}
	pk := append([]byte{0x10, byte(12 + len(id)), 0, 4, 'M', 'Q', 'T', 'T', 4, 2, 0, 60, 0, byte(len(id))}, id...)
	if _, err := c.Write(pk); err != nil {
		tb.Fatal(err)
	}
	ack := make([]byte, 4)
	_ = c.SetReadDeadline(time.Now().Add(apptest.Wait))
	if _, err := io.ReadFull(c, ack); err != nil || ack[0] != 0x20 || ack[3] != 0 {
		tb.Fatalf("connack %x: %v", ack, err)
	}
	_ = c.SetReadDeadline(time.Time{})
	return c
}

// rawPublish0 encodes a QoS 0 MQTT 3.1.1 PUBLISH (remaining length < 128).
func rawPublish0(topic string, payload []byte) []byte {
	pk := []byte{0x30, byte(2 + len(topic) + len(payload)), 0, byte(len(topic))}
	pk = append(pk, topic...)
	return append(pk, payload...)
}

// BenchmarkFanOutQoS0 publishes QoS 0 messages of 64 bytes from one raw
// MQTT 3.1.1 client to ten raw subscribers on the same topic, through a
// real node with its default hooks, and waits for every delivery. One op is
// one publish (ten deliveries). The clients only copy bytes, so the time
// and allocations are mostly the server's.
func BenchmarkFanOutQoS0(b *testing.B) {
	const subs = 10
	a := apptest.Run(b, apptest.Config(b))
	addr := a.Addr("mqtt")
	topic := "bench/fanout"
	msg := rawPublish0(topic, make([]byte, 64))

	var received atomic.Int64 // bytes received by all subscribers
	var wg sync.WaitGroup
	conns := make([]net.Conn, 0, subs+1)
	for i := range subs {
		c := rawConnect(b, addr, fmt.Sprintf("fsub%d", i))
		conns = append(conns, c)
		sub := append([]byte{0x82, byte(5 + len(topic)), 0, 1, 0, byte(len(topic))}, topic...)
		sub = append(sub, 0)
		if _, err := c.Write(sub); err != nil {
			b.Fatal(err)
		}
		suback := make([]byte, 5)
		if _, err := io.ReadFull(c, suback); err != nil || suback[0] != 0x90 {
			b.Fatalf("suback %x: %v", suback, err)
		}
		wg.Go(func() {
			buf := make([]byte, 64<<10)
			for {
				n, err := c.Read(buf)
				received.Add(int64(n))
				if err != nil {
					return
				}
			}
		})
	}
	pub := rawConnect(b, addr, "fpub")
	conns = append(conns, pub)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
		wg.Wait()
	}()
	w := bufio.NewWriterSize(pub, 32<<10)

	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	base := received.Load()
	for range b.N {
		if _, err := w.Write(msg); err != nil {
			b.Fatal(err)
		}
	}
	if err := w.Flush(); err != nil {
		b.Fatal(err)
	}
	want := base + int64(b.N)*int64(len(msg))*subs
	deadline := time.Now().Add(30 * time.Second)
	for received.Load() < want {
		if time.Now().After(deadline) {
			b.Fatalf("received %d of %d bytes", received.Load()-base, want-base)
		}
		time.Sleep(100 * time.Microsecond)
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N*subs)/time.Since(start).Seconds(), "deliveries/s")
}
