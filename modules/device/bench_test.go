package device_test

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	pahov3 "github.com/eclipse/paho.mqtt.golang"

	"github.com/colonymq/colony/app/apptest"
	"github.com/colonymq/colony/modules/device"
	"github.com/colonymq/colony/rpc"
)

// mqttString encodes a length-prefixed MQTT string.
func mqttString(s string) []byte {
	return append(binary.BigEndian.AppendUint16(nil, uint16(len(s))), s...)
}

// remaining encodes an MQTT remaining length.
func remaining(n int) []byte {
	var out []byte
	for {
		b := byte(n % 128)
		n /= 128
		if n > 0 {
			b |= 0x80
		}
		out = append(out, b)
		if n == 0 {
			return out
		}
	}
}

// rawDevice opens a raw MQTT 3.1.1 connection with username and password.
func rawDevice(tb testing.TB, addr, id, token string) net.Conn {
	tb.Helper()
	c, err := net.DialTimeout("tcp", addr, apptest.Wait)
	if err != nil {
		tb.Fatal(err)
	}
	body := append(mqttString("MQTT"), 4, 0xC2, 0, 60) // 3.1.1, username + password + clean session, keepalive 60
	body = append(body, mqttString(id)...)
	body = append(body, mqttString(id)...)
	body = append(body, mqttString(token)...)
	pk := append(append([]byte{0x10}, remaining(len(body))...), body...)
	if _, err := c.Write(pk); err != nil {
		tb.Fatal(err)
	}
	ack := make([]byte, 4)
	if err := c.SetReadDeadline(time.Now().Add(apptest.Wait)); err != nil {
		tb.Fatal(err)
	}
	if _, err := io.ReadFull(c, ack); err != nil || ack[0] != 0x20 || ack[3] != 0 {
		tb.Fatalf("connack %x: %v", ack, err)
	}
	if err := c.SetReadDeadline(time.Time{}); err != nil {
		tb.Fatal(err)
	}
	return c
}

// publish0 encodes a QoS 0 PUBLISH.
func publish0(topic string, payload []byte) []byte {
	body := append(mqttString(topic), payload...)
	return append(append([]byte{0x30}, remaining(len(body))...), body...)
}

// asModule is a context whose caller is another module (allowed to manage).
func asModule() context.Context {
	return rpc.WithCaller(context.Background(), rpc.Caller{Module: "bench"})
}

// BenchmarkTelemetryIngest: 1,000 devices, each on its own raw MQTT 3.1.1
// connection authenticated by token, publish QoS 0 telemetry
// ({"temp":…,"hum":…}, server-stamped) as fast as they can; an op is one
// point, and the clock stops when the last point is committed to the
// store. Run with -benchtime=Nx for a fixed number of points.
func BenchmarkTelemetryIngest(b *testing.B) {
	const devices = 1000
	n := start(b, apptest.Config(b), device.Options{})
	ctx := asModule()
	conns := make([]net.Conn, devices)
	for i := range devices {
		id := fmt.Sprintf("bench-%04d", i)
		cr, err := rpc.Call[device.Created](ctx, n.RPC(), "device", "create", &device.CreateReq{ID: id})
		if err != nil {
			b.Fatal(err)
		}
		conns[i] = rawDevice(b, n.Addr("mqtt"), id, cr.Token)
	}
	b.Cleanup(func() {
		for _, c := range conns {
			c.Close()
		}
	})
	per := (b.N + devices - 1) / devices
	total := int64(per * devices)
	base := n.dev.Stats().Points
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	var wg sync.WaitGroup
	for i, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			topic := fmt.Sprintf("dev/bench-%04d/telemetry", i)
			var buf []byte
			for k := range per {
				buf = append(buf, publish0(topic, fmt.Appendf(nil, `{"temp":%d.5,"hum":%d}`, k%40, k%100))...)
				if len(buf) > 16<<10 || k == per-1 {
					if _, err := c.Write(buf); err != nil {
						b.Error(err)
						return
					}
					buf = buf[:0]
				}
			}
		}()
	}
	wg.Wait()
	for n.dev.Stats().Points-base < total {
		if time.Since(start) > 5*time.Minute {
			b.Fatalf("only %d of %d points stored", n.dev.Stats().Points-base, total)
		}
		time.Sleep(time.Millisecond)
	}
	el := time.Since(start)
	b.StopTimer()
	b.ReportMetric(float64(total)/el.Seconds(), "points/s")
}

// BenchmarkQueryDay queries one device's day of 1 Hz telemetry (86,400
// points of two fields): downsampled to 1-minute and 1-hour buckets, and
// the raw points of one hour.
func BenchmarkQueryDay(b *testing.B) {
	n := start(b, apptest.Config(b), device.Options{})
	cr, err := rpc.Call[device.Created](asModule(), n.RPC(), "device", "create", &device.CreateReq{ID: "day"})
	if err != nil {
		b.Fatal(err)
	}
	c, err := apptest.V3Try(apptest.URL(n.App), "day", func(o *pahov3.ClientOptions) { o.SetUsername("day").SetPassword(cr.Token) })
	if err != nil {
		b.Fatal(err)
	}
	defer c.Disconnect(50)
	const day, base = 86_400, int64(1_700_000_000_000)
	for start := 0; start < day; start += 1000 {
		var items []string
		for i := start; i < start+1000; i++ {
			items = append(items, fmt.Sprintf(`{"ts":%d,"temp":%d,"hum":%d}`, base+int64(i)*1000, i%50, i%100))
		}
		if tok := c.Publish("dev/day/telemetry", 1, false, "["+strings.Join(items, ",")+"]"); !tok.WaitTimeout(apptest.Wait) || tok.Error() != nil {
			b.Fatalf("publish: %v", tok.Error())
		}
	}
	for n.dev.Stats().Points < day {
		time.Sleep(10 * time.Millisecond)
	}
	for _, q := range []struct {
		name string
		req  device.QueryReq
		want int
	}{
		{"day-1m-buckets", device.QueryReq{ID: "day", From: base, To: base + day*1000, Step: 60_000}, 1440},
		{"day-1h-buckets", device.QueryReq{ID: "day", From: base, To: base + day*1000, Step: 3_600_000}, 24},
		{"hour-raw", device.QueryReq{ID: "day", From: base, To: base + 3_600_000, Limit: 3600}, 3600},
	} {
		b.Run(q.name, func(b *testing.B) {
			b.ReportAllocs()
			for range b.N {
				s, err := n.dev.Query(context.Background(), &q.req)
				if err != nil {
					b.Fatal(err)
				}
				if got := len(s.Buckets) + len(s.Points); got != q.want {
					b.Fatalf("%d rows, want %d", got, q.want)
				}
			}
		})
	}
}
