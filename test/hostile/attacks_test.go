package hostile_test

import (
	"encoding/binary"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/colonymq/colony/app"
)

// attacks are the malformed-packet corpus over TCP: each names the attack
// class (most after a broker CVE class) and checks how the connection ends.
func attacks(addr string) []attack {
	v5 := connectOpts{id: "attacker"}
	v3 := connectOpts{id: "attacker3", level: 4}
	return []attack{
		{"huge remaining length before CONNECT", func(t *testing.T, _ *app.App) {
			c := dial(t, addr)
			c.sendMaybe([]byte{0x10}, varint(268_435_455))
			c.closedSilently()
		}},
		{"remaining length of five bytes", func(t *testing.T, _ *app.App) {
			c := dial(t, addr)
			c.sendMaybe([]byte{0x10, 0xff, 0xff, 0xff, 0xff, 0x7f})
			c.closedSilently()
		}},
		{"huge remaining length after CONNECT v5", func(t *testing.T, _ *app.App) {
			c := dial(t, addr)
			if rc := c.connack(v5); rc != 0 {
				t.Fatalf("connack %#x", rc)
			}
			c.sendMaybe([]byte{0x30}, varint(268_435_455), []byte("x"))
			c.closedWith(0x95)
		}},
		{"oversized PUBLISH v3", func(t *testing.T, _ *app.App) {
			c := dial(t, addr)
			if rc := c.connack(v3); rc != 0 {
				t.Fatalf("connack %#x", rc)
			}
			c.sendMaybe(publish(false, 0, 0, "big", nil, strings.Repeat("x", maxPacket)))
			c.closedSilently()
		}},
		{"PUBLISH before CONNECT", func(t *testing.T, _ *app.App) {
			c := dial(t, addr)
			c.sendMaybe(publish(false, 0, 0, "witness/spoof", nil, "x"))
			c.closedSilently()
		}},
		{"PINGREQ before CONNECT", func(t *testing.T, _ *app.App) {
			c := dial(t, addr)
			c.sendMaybe([]byte{0xc0, 0})
			c.closedSilently()
		}},
		{"CONNECT twice v5", func(t *testing.T, _ *app.App) {
			c := dial(t, addr)
			if rc := c.connack(v5); rc != 0 {
				t.Fatalf("connack %#x", rc)
			}
			c.sendMaybe(connect(v5))
			c.closedWith(0x82)
		}},
		{"CONNECT twice v3", func(t *testing.T, _ *app.App) {
			c := dial(t, addr)
			if rc := c.connack(v3); rc != 0 {
				t.Fatalf("connack %#x", rc)
			}
			c.sendMaybe(connect(v3))
			c.closedSilently()
		}},
		{"bad protocol name", func(t *testing.T, _ *app.App) {
			// 3.1.1 has no CONNACK code for it: the server just closes.
			c := dial(t, addr)
			o := v3
			o.name = "MQTX"
			c.sendMaybe(connect(o))
			c.closedSilently()
		}},
		{"unsupported protocol level", func(t *testing.T, _ *app.App) {
			// [MQTT-3.1.2-2]: CONNACK 0x01, then close.
			c := dial(t, addr)
			o := v3
			o.level = 6
			if rc := c.connack(o); rc != 0x01 {
				t.Fatalf("connack %#x, want 0x01", rc)
			}
			c.closedSilently()
		}},
		{"CONNECT reserved flag set", func(t *testing.T, _ *app.App) {
			c := dial(t, addr)
			o := v5
			o.reserved = true
			if rc := c.connack(o); rc != 0x82 {
				t.Fatalf("connack %#x, want 0x82 [MQTT-3.1.2-3]", rc)
			}
			c.closedSilently()
		}},
		{"duplicate property in CONNECT", func(t *testing.T, _ *app.App) {
			c := dial(t, addr)
			o := v5
			o.props = []byte{0x11, 0, 0, 0, 10, 0x11, 0, 0, 0, 20} // session expiry twice
			if rc := c.connack(o); rc != 0x82 {
				t.Fatalf("connack %#x, want 0x82 (protocol error)", rc)
			}
			c.closedSilently()
		}},
		{"unknown property in CONNECT", func(t *testing.T, _ *app.App) {
			c := dial(t, addr)
			o := v5
			o.props = []byte{0x7f, 1}
			if rc := c.connack(o); rc < 0x80 {
				t.Fatalf("connack %#x accepted an unknown property", rc)
			}
			c.closedSilently()
		}},
		{"property length past the packet", func(t *testing.T, _ *app.App) {
			c := dial(t, addr)
			c.connack(v5)
			// PUBLISH whose property length claims 100 bytes of a 3-byte rest.
			c.sendMaybe(packet(0x30, cat(str("witness/x"), varint(100), []byte{0x01, 0x01, 'x'})))
			c.closedWith(0x81)
		}},
		{"duplicate property in PUBLISH", func(t *testing.T, _ *app.App) {
			c := dial(t, addr)
			c.connack(v5)
			c.sendMaybe(publish(true, 0, 0, "witness/x", []byte{0x01, 0, 0x01, 1}, "dup"))
			c.closedWith(0x82)
		}},
		{"property not allowed in PUBLISH", func(t *testing.T, _ *app.App) {
			c := dial(t, addr)
			c.connack(v5)
			c.sendMaybe(publish(true, 0, 0, "witness/x", []byte{0x11, 0, 0, 0, 1}, "session expiry")) // CONNECT-only
			c.closedWith(0x82)
		}},
		{"truncated property in PUBLISH", func(t *testing.T, _ *app.App) {
			c := dial(t, addr)
			c.connack(v5)
			c.sendMaybe(publish(true, 0, 0, "witness/x", []byte{0x02, 0, 0}, "")) // expiry needs 4 bytes
			c.closedWith(0x81)
		}},
		{"truncated MQTT 5 SUBSCRIBE (upstream #501)", func(t *testing.T, _ *app.App) {
			c := dial(t, addr)
			c.connack(v5)
			c.sendMaybe([]byte{0x82, 6, 0, 1, 0, 0, 1, 'a'})
			c.closedWith(0x81)
		}},
		{"QoS 2 packet ids never released", func(t *testing.T, _ *app.App) {
			c := dial(t, addr)
			c.connack(v5)
			for id := uint16(1); id <= receiveMax+1; id++ {
				c.sendMaybe(publish(true, 2, id, "q2/exhaust", nil, "x"))
			}
			// Every PUBREC is answered until the receive maximum is spent.
			c.closedWith(0x93)
		}},
		{"QoS 2 packet ids never released v3", func(t *testing.T, _ *app.App) {
			c := dial(t, addr)
			c.connack(v3)
			for id := uint16(1); id <= receiveMax+1; id++ {
				c.sendMaybe(publish(false, 2, id, "q2/exhaust", nil, "x"))
			}
			c.closedSilently()
		}},
		{"invalid UTF-8 topic", func(t *testing.T, _ *app.App) {
			c := dial(t, addr)
			c.connack(v5)
			c.sendMaybe(publish(true, 0, 0, "witness/\xff\xfe", nil, "x"))
			c.closedWith(0x81)
		}},
		{"NUL in topic", func(t *testing.T, _ *app.App) {
			c := dial(t, addr)
			c.connack(v5)
			c.sendMaybe(publish(true, 0, 0, "witness/a\x00b", nil, "x"))
			c.closedWith(0x81)
		}},
		{"wildcard in PUBLISH topic", func(t *testing.T, _ *app.App) {
			c := dial(t, addr)
			c.connack(v5)
			c.sendMaybe(publish(true, 1, 1, "witness/#", nil, "x"))
			c.closedWith(0x82) // [MQTT-3.3.2-2] is a protocol error
		}},
		{"wildcard in PUBLISH topic v3", func(t *testing.T, _ *app.App) {
			c := dial(t, addr)
			c.connack(v3)
			c.sendMaybe(publish(false, 1, 1, "witness/+", nil, "x"))
			c.closedSilently()
		}},
		{"too many topic levels in PUBLISH", func(t *testing.T, _ *app.App) {
			c := dial(t, addr)
			c.connack(v5)
			c.sendMaybe(publish(true, 1, 1, "witness"+strings.Repeat("/a", maxLevels), nil, "x"))
			c.closedWith(0x90)
		}},
		{"too many topic levels in SUBSCRIBE", func(t *testing.T, _ *app.App) {
			c := dial(t, addr)
			c.connack(v5)
			c.send(subscribe5(1, "ok/+", strings.Repeat("a/", maxLevels)+"#"))
			p, err := c.next()
			if err != nil || p.typ != tSuback {
				t.Fatalf("suback: %v %v", p, err)
			}
			if codes := p.body[3:]; codes[0] != 1 || codes[1] != 0x8f {
				t.Fatalf("suback codes % x, want 01 8f", codes)
			}
		}},
		{"too many subscriptions", func(t *testing.T, _ *app.App) {
			c := dial(t, addr)
			c.connack(v5)
			var filters []string
			for i := range maxSubs + 2 {
				filters = append(filters, fmt.Sprint("many/", i))
			}
			c.send(subscribe5(1, filters...))
			p, err := c.next()
			if err != nil || p.typ != tSuback {
				t.Fatalf("suback: %v %v", p, err)
			}
			codes := p.body[3:]
			for i, code := range codes {
				want := byte(1)
				if i >= maxSubs {
					want = 0x97
				}
				if code != want {
					t.Fatalf("suback codes % x: filter %d got %#x, want %#x", codes, i, code, want)
				}
			}
			// Subscribing again to a filter it holds is not a new subscription.
			c.send(subscribe5(2, "many/0"))
			if p, err := c.next(); err != nil || p.typ != tSuback || p.body[3] != 1 {
				t.Fatalf("resubscribe: %v %v", p, err)
			}
		}},
		{"zero-length client id, persistent session v3", func(t *testing.T, _ *app.App) {
			// [MQTT-3.1.3-8]: CONNACK 0x02 (identifier rejected), then close.
			c := dial(t, addr)
			if rc := c.connack(connectOpts{level: 4, persistent: true}); rc != 0x02 {
				t.Fatalf("connack %#x, want 0x02", rc)
			}
			c.closedSilently()
		}},
		{"zero-length client id v5 gets one assigned", func(t *testing.T, _ *app.App) {
			c := dial(t, addr)
			c.send(connect(connectOpts{}))
			p, err := c.next()
			if err != nil || p.typ != tConnack || p.body[1] != 0 {
				t.Fatalf("connack: %v %v", p, err)
			}
			if id := props(p.body[2:])[0x12]; len(id) <= 2 {
				t.Fatalf("no assigned client identifier in % x", p.body)
			}
		}},
		{"client id of the server's own clients", func(t *testing.T, a *app.App) {
			for _, id := range []string{"inline", "cluster"} {
				c := dial(t, addr)
				o := v5
				o.id = id
				if rc := c.connack(o); rc != 0x85 {
					t.Fatalf("client id %q: connack %#x, want 0x85", id, rc)
				}
				c.closedSilently()
			}
			// The server's own client still publishes.
			if err := a.Server().Publish("witness/inline", []byte("mine"), false, 1); err != nil {
				t.Fatal(err)
			}
		}},
		{"keep-alive 0 gets the server's maximum v5", func(t *testing.T, _ *app.App) {
			c := dial(t, addr)
			o := v5
			o.keepalive = -1
			c.send(connect(o))
			p, err := c.next()
			if err != nil || p.typ != tConnack || p.body[1] != 0 {
				t.Fatalf("connack: %v %v", p, err)
			}
			ka := props(p.body[2:])[0x13]
			if len(ka) != 2 || binary.BigEndian.Uint16(ka) != uint16(maxKeepalive/time.Second) {
				t.Fatalf("server keep alive % x, want %v", ka, maxKeepalive)
			}
		}},
		{"keep-alive above the maximum v3", func(t *testing.T, _ *app.App) {
			c := dial(t, addr)
			o := v3
			o.keepalive = int(maxKeepalive/time.Second) + 1
			if rc := c.connack(o); rc != 0x02 {
				t.Fatalf("connack %#x, want 0x02 (identifier rejected, as Mosquitto does)", rc)
			}
			c.closedSilently()
		}},
		{"CONNACK announces the maximum packet size", func(t *testing.T, _ *app.App) {
			c := dial(t, addr)
			c.send(connect(v5))
			p, err := c.next()
			if err != nil || p.typ != tConnack {
				t.Fatalf("connack: %v %v", p, err)
			}
			if mp := props(p.body[2:])[0x27]; len(mp) != 4 || binary.BigEndian.Uint32(mp) != maxPacket {
				t.Fatalf("maximum packet size % x, want %d", mp, maxPacket)
			}
		}},
		{"keep-alive expires", func(t *testing.T, _ *app.App) {
			c := dial(t, addr)
			o := v5
			o.keepalive = 1
			c.connack(o)
			// Silent past 1.5 × keep-alive: the server must close.
			c.closed()
		}},
		{"slowloris: no CONNECT", func(t *testing.T, _ *app.App) {
			c := dial(t, addr)
			c.closedSilently()
		}},
		{"slowloris: CONNECT dribbled byte by byte", func(t *testing.T, _ *app.App) {
			c := dial(t, addr)
			b := connect(v5)
			stop := make(chan struct{})
			go func() {
				for _, x := range b[:len(b)-1] {
					select {
					case <-stop:
						return
					case <-time.After(connectWindow / 4):
					}
					if _, err := c.conn.Write([]byte{x}); err != nil {
						return
					}
				}
			}()
			defer close(stop)
			c.closedSilently()
		}},
	}
}
