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
	benchDeliveries(b, 1, 10, func(int) string { return "bench/fanout" }, "bench/fanout")
}

// BenchmarkFanInQoS0 is issue 4's fan-in at QoS 0: four raw publishers, each
// on its own topic, flood one subscriber on a wildcard. One op is one
// publish (one delivery); allocs/op is the server's garbage per message.
func BenchmarkFanInQoS0(b *testing.B) {
	benchDeliveries(b, 4, 1, func(i int) string { return fmt.Sprintf("bench/fanin/%d", i) }, "bench/fanin/+")
}

// benchDeliveries runs b.N QoS 0 publishes of 64 bytes, spread over pubs
// publishers (publisher i on topic(i)), to subs subscribers of filter, and
// waits until every delivery has arrived. The publish rate limit is off: it
// is what would be measured otherwise.
func benchDeliveries(b *testing.B, pubs, subs int, topic func(int) string, filter string) {
	cfg := apptest.Config(b)
	cfg.Limits.PublishRate = -1
	a := apptest.Run(b, cfg)
	addr := a.Addr("mqtt")

	var received atomic.Int64 // bytes received by all subscribers
	var wg sync.WaitGroup
	conns := make([]net.Conn, 0, subs+pubs)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
		wg.Wait()
	}()
	for i := range subs {
		c := rawConnect(b, addr, fmt.Sprintf("bsub%d", i))
		conns = append(conns, c)
		sub := append([]byte{0x82, byte(5 + len(filter)), 0, 1, 0, byte(len(filter))}, filter...)
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
	msgs := make([][]byte, pubs)
	writers := make([]*bufio.Writer, pubs)
	for i := range pubs {
		c := rawConnect(b, addr, fmt.Sprintf("bpub%d", i))
		conns = append(conns, c)
		msgs[i] = rawPublish0(topic(i), make([]byte, 64))
		writers[i] = bufio.NewWriterSize(c, 32<<10)
	}
	var want int64 // bytes all subscribers will have received
	for i := range pubs {
		want += int64(share(b.N, pubs, i)) * int64(len(msgs[i])) * int64(subs)
	}

	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	base := received.Load()
	runPublishers(b, pubs, func(i int) error {
		for range share(b.N, pubs, i) {
			if _, err := writers[i].Write(msgs[i]); err != nil {
				return err
			}
		}
		return writers[i].Flush()
	})
	want += base
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

// BenchmarkFanInQoS1 is issue 4's fan-in at QoS 1: four raw publishers, each
// keeping at most 1,024 publishes unacknowledged (as colony bench does),
// flood one subscriber on a wildcard, which acknowledges every delivery.
// One op is one publish, acknowledged to its publisher and delivered.
func BenchmarkFanInQoS1(b *testing.B) {
	const pubs, window = 4, 1024
	cfg := apptest.Config(b)
	cfg.Limits.PublishRate = -1
	a := apptest.Run(b, cfg)
	addr := a.Addr("mqtt")

	var delivered atomic.Int64
	var wg sync.WaitGroup
	conns := make([]net.Conn, 0, 1+pubs)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
		wg.Wait()
	}()
	sub := rawConnect(b, addr, "bsub")
	conns = append(conns, sub)
	filter := "bench/fanin/+"
	pk := append([]byte{0x82, byte(5 + len(filter)), 0, 1, 0, byte(len(filter))}, filter...)
	if _, err := sub.Write(append(pk, 1)); err != nil {
		b.Fatal(err)
	}
	suback := make([]byte, 5)
	if _, err := io.ReadFull(sub, suback); err != nil || suback[0] != 0x90 || suback[4] != 1 {
		b.Fatalf("suback %x: %v", suback, err)
	}
	wg.Go(func() { // acknowledges every QoS 1 PUBLISH
		w := bufio.NewWriterSize(sub, 8<<10)
		eachRawPacket(sub, 64<<10, func(typ byte, body []byte, more bool) bool {
			if typ&0xf6 == 0x32 { // PUBLISH, QoS 1
				tl := int(body[0])<<8 | int(body[1])
				w.Write([]byte{0x40, 2, body[2+tl], body[3+tl]})
				delivered.Add(1)
			}
			return more || w.Flush() == nil
		})
	})

	type publisher struct {
		w     *bufio.Writer
		msg   []byte
		idAt  int           // where msg's packet id is
		acks  chan struct{} // one token per publish in flight
		acked sync.WaitGroup
	}
	ps := make([]*publisher, pubs)
	for i := range pubs {
		c := rawConnect(b, addr, fmt.Sprintf("bpub%d", i))
		conns = append(conns, c)
		topic := fmt.Sprintf("bench/fanin/%d", i)
		msg := []byte{0x32, byte(2 + len(topic) + 2 + 64), 0, byte(len(topic))}
		msg = append(msg, topic...)
		p := &publisher{w: bufio.NewWriterSize(c, 32<<10), idAt: len(msg), acks: make(chan struct{}, window)}
		p.msg = append(append(msg, 0, 0), make([]byte, 64)...) // the packet id is set per publish
		ps[i] = p
		wg.Go(func() { // takes a token back for every PUBACK
			eachRawPacket(c, 16<<10, func(typ byte, _ []byte, _ bool) bool {
				if typ == 0x40 {
					<-p.acks
					p.acked.Done()
				}
				return true
			})
		})
	}
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	base := delivered.Load()
	runPublishers(b, pubs, func(i int) error {
		p := ps[i]
		for n := range share(b.N, pubs, i) {
			select {
			case p.acks <- struct{}{}:
			default: // window full: send what is gathered, then wait
				if err := p.w.Flush(); err != nil {
					return err
				}
				p.acks <- struct{}{}
			}
			p.acked.Add(1)
			id := n%65535 + 1
			p.msg[p.idAt], p.msg[p.idAt+1] = byte(id>>8), byte(id)
			if _, err := p.w.Write(p.msg); err != nil {
				return err
			}
		}
		return p.w.Flush()
	})
	for _, p := range ps {
		p.acked.Wait()
	}
	deadline := time.Now().Add(30 * time.Second)
	for delivered.Load()-base < int64(b.N) {
		if time.Now().After(deadline) {
			b.Fatalf("delivered %d of %d", delivered.Load()-base, b.N)
		}
		time.Sleep(100 * time.Microsecond)
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "deliveries/s")
}

// share is publisher i's part of n publishes spread over pubs publishers.
func share(n, pubs, i int) int {
	if i < n%pubs {
		return n/pubs + 1
	}
	return n / pubs
}

// runPublishers runs publish for each of pubs publishers at once, and fails
// b with the first error any returns.
func runPublishers(b *testing.B, pubs int, publish func(i int) error) {
	var wg sync.WaitGroup
	errs := make(chan error, pubs)
	for i := range pubs {
		wg.Go(func() {
			if err := publish(i); err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
}

// eachRawPacket reads packets from c, through a buffer of size bytes, and
// hands each to fn (more: the buffer holds more) until reading fails or fn
// returns false. body is only valid during the call.
func eachRawPacket(c net.Conn, size int, fn func(typ byte, body []byte, more bool) bool) {
	r := bufio.NewReaderSize(c, size)
	var buf []byte
	for {
		typ, body, err := apptest.ReadRawPacket(r, buf)
		if err != nil || !fn(typ, body, r.Buffered() > 0) {
			return
		}
		buf = body
	}
}
