package mqttsn_test

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"runtime"
	"testing"
	"time"

	mpackets "github.com/mochi-mqtt/server/v2/packets"

	"github.com/colonymq/colony/server/mqttsn"
	"github.com/colonymq/colony/server/mqttsn/packet"
)

// BenchmarkSleepingClientMemory measures what a sleeping device costs the
// node: each device connects with a persistent session, subscribes, and
// sleeps (DISCONNECT with a duration). Reported: Go heap plus goroutine
// stacks per device, and goroutines per device. The devices are bare UDP
// sockets without goroutines, and their own cost is measured first and
// left out. Run with -benchtime=1x.
func BenchmarkSleepingClientMemory(b *testing.B) {
	const n = 2000
	a := runSN(b)
	addr, err := net.ResolveUDPAddr("udp", a.Addr(mqttsn.ListenerUDP))
	if err != nil {
		b.Fatal(err)
	}
	mem := func() (uint64, int) {
		runtime.GC()
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return m.HeapAlloc + m.StackInuse, runtime.NumGoroutine()
	}
	for b.Loop() {
		socks := make([]*net.UDPConn, n)
		for i := range socks {
			if socks[i], err = net.DialUDP("udp", nil, addr); err != nil {
				b.Fatal(err)
			}
		}
		before, g0 := mem()
		buf := make([]byte, 256)
		exchange := func(c *net.UDPConn, p packet.Packet, want packet.Type) {
			enc, err := packet.Encode(p)
			if err != nil {
				b.Fatal(err)
			}
			for try := 0; ; try++ {
				if _, err := c.Write(enc); err != nil {
					b.Fatal(err)
				}
				if err := c.SetReadDeadline(time.Now().Add(time.Second)); err != nil {
					b.Fatal(err)
				}
				k, err := c.Read(buf)
				if err == nil {
					if r, err := packet.Decode(buf[:k]); err == nil && r.Type() == want {
						return
					}
				}
				if try == 5 {
					b.Fatalf("no %s for %s", want, p.Type())
				}
			}
		}
		for i, c := range socks {
			id := fmt.Sprintf("sleeper-%d", i)
			exchange(c, &packet.Connect{Duration: 3600, ClientID: id}, packet.TypeConnack)
			exchange(c, &packet.Subscribe{Flags: packet.Flags{QoS: 1}, MsgID: 1, TopicName: "cmd/" + id}, packet.TypeSuback)
			exchange(c, &packet.Disconnect{HasDuration: true, Duration: 3600}, packet.TypeDisconnect)
		}
		after, g1 := mem()
		if st := a.MQTTSN().Stats(); st.Asleep != n {
			b.Fatalf("asleep: %d", st.Asleep)
		}
		b.ReportMetric(float64(after-before)/n, "B/client")
		b.ReportMetric(float64(g1-g0)/n, "goroutines/client")
		for _, c := range socks {
			c.Close()
		}
	}
}

// BenchmarkIdleMQTTClientMemory is the same-run anchor of
// BenchmarkSleepingClientMemory: an MQTT 3.1.1 client over TCP with a
// persistent session and one subscription, measured the same way (its
// socket's cost on the client side included, which is small).
func BenchmarkIdleMQTTClientMemory(b *testing.B) {
	const n = 2000
	a := runSN(b)
	mem := func() (uint64, int) {
		runtime.GC()
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return m.HeapAlloc + m.StackInuse, runtime.NumGoroutine()
	}
	for b.Loop() {
		before, g0 := mem()
		conns := make([]net.Conn, n)
		buf := make([]byte, 256)
		for i := range conns {
			c, err := net.Dial("tcp", a.Addr("mqtt"))
			if err != nil {
				b.Fatal(err)
			}
			conns[i] = c
			id := fmt.Sprintf("idle-%d", i)
			var out bytes.Buffer
			cp := mpackets.Packet{FixedHeader: mpackets.FixedHeader{Type: mpackets.Connect}, ProtocolVersion: 4,
				Connect: mpackets.ConnectParams{ProtocolName: []byte("MQTT"), ClientIdentifier: id, Keepalive: 3600}}
			sp := mpackets.Packet{FixedHeader: mpackets.FixedHeader{Type: mpackets.Subscribe, Qos: 1}, ProtocolVersion: 4, PacketID: 1,
				Filters: mpackets.Subscriptions{{Filter: "cmd/" + id, Qos: 1}}}
			if err := cp.ConnectEncode(&out); err != nil {
				b.Fatal(err)
			}
			if err := sp.SubscribeEncode(&out); err != nil {
				b.Fatal(err)
			}
			if _, err := c.Write(out.Bytes()); err != nil {
				b.Fatal(err)
			}
			if err := c.SetReadDeadline(time.Now().Add(5 * time.Second)); err != nil {
				b.Fatal(err)
			}
			if _, err := io.ReadFull(c, buf[:4+5]); err != nil { // CONNACK (4) and SUBACK (5)
				b.Fatal(err)
			}
		}
		after, g1 := mem()
		b.ReportMetric(float64(after-before)/n, "B/client")
		b.ReportMetric(float64(g1-g0)/n, "goroutines/client")
		for _, c := range conns {
			c.Close()
		}
	}
}
