package server_test

import (
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/colonymq/colony/app"
	"github.com/colonymq/colony/app/apptest"
)

func TestPubSubQoSLevels(t *testing.T) {
	a := apptest.Run(t, apptest.Config(t))
	url := apptest.URL(a)
	pub := apptest.V3(t, url, "pub")
	for _, subQoS := range []byte{0, 1, 2} {
		for _, pubQoS := range []byte{0, 1, 2} {
			t.Run(fmt.Sprintf("sub%d_pub%d", subQoS, pubQoS), func(t *testing.T) {
				sub := apptest.V3(t, url, fmt.Sprintf("sub-%d-%d", subQoS, pubQoS))
				ch, h := apptest.Sink()
				topic := fmt.Sprintf("q/%d/%d", subQoS, pubQoS)
				apptest.Done(t, sub.Subscribe(topic, subQoS, h))
				apptest.Done(t, pub.Publish(topic, pubQoS, false, "hello"))
				m := apptest.Next(t, ch)
				if string(m.Payload()) != "hello" || m.Topic() != topic {
					t.Fatalf("got %q on %q", m.Payload(), m.Topic())
				}
				if want := min(subQoS, pubQoS); m.Qos() != want {
					t.Fatalf("delivered at QoS %d, want %d", m.Qos(), want)
				}
			})
		}
	}
}

func TestWildcards(t *testing.T) {
	a := apptest.Run(t, apptest.Config(t))
	url := apptest.URL(a)
	plus, hash := apptest.V3(t, url, "plus"), apptest.V3(t, url, "hash")
	plusCh, ph := apptest.Sink()
	hashCh, hh := apptest.Sink()
	apptest.Done(t, plus.Subscribe("w/+/x", 1, ph))
	apptest.Done(t, hash.Subscribe("w/#", 1, hh))
	pub := apptest.V3(t, url, "pub")
	for _, topic := range []string{"w/a/x", "w/a/y", "w/a/x/z", "w", "other/a/x"} {
		apptest.Done(t, pub.Publish(topic, 1, false, topic))
	}
	if got := apptest.Next(t, plusCh).Topic(); got != "w/a/x" {
		t.Fatalf("w/+/x got %q", got)
	}
	var hashed []string
	for range 4 {
		hashed = append(hashed, apptest.Next(t, hashCh).Topic())
	}
	want := []string{"w/a/x", "w/a/y", "w/a/x/z", "w"}
	if fmt.Sprint(hashed) != fmt.Sprint(want) {
		t.Fatalf("w/# got %v, want %v", hashed, want)
	}
	apptest.None(t, plusCh, 200*time.Millisecond)
	apptest.None(t, hashCh, 50*time.Millisecond)
}

func TestRetained(t *testing.T) {
	a := apptest.Run(t, apptest.Config(t))
	url := apptest.URL(a)
	pub := apptest.V3(t, url, "pub")
	apptest.Done(t, pub.Publish("r/state", 1, true, "on"))
	sub := apptest.V3(t, url, "late")
	ch, h := apptest.Sink()
	apptest.Done(t, sub.Subscribe("r/#", 1, h))
	m := apptest.Next(t, ch)
	if string(m.Payload()) != "on" || !m.Retained() {
		t.Fatalf("got %q retained=%v", m.Payload(), m.Retained())
	}
	// An empty retained publish clears it.
	apptest.Done(t, pub.Publish("r/state", 1, true, ""))
	apptest.Next(t, ch) // the clearing publish itself is delivered live
	sub2 := apptest.V3(t, url, "later")
	ch2, h2 := apptest.Sink()
	apptest.Done(t, sub2.Subscribe("r/#", 1, h2))
	apptest.Done(t, pub.Publish("r/marker", 1, false, "m"))
	if got := apptest.Next(t, ch2); got.Topic() != "r/marker" {
		t.Fatalf("cleared retained message still delivered: %q on %q", got.Payload(), got.Topic())
	}
}

func TestWillOnAbruptDisconnect(t *testing.T) {
	a := apptest.Run(t, apptest.Config(t))
	watcher := apptest.V3(t, apptest.URL(a), "watcher")
	ch, h := apptest.Sink()
	apptest.Done(t, watcher.Subscribe("wills/#", 1, h))

	dying := apptest.V5(t, a.Addr("mqtt"), &paho.Connect{ClientID: "dying", CleanStart: true,
		WillMessage: &paho.WillMessage{Topic: "wills/dying", Payload: []byte("gone"), QoS: 1}})
	// A clean DISCONNECT must not send the will; closing the socket must.
	if err := dying.Conn.Close(); err != nil {
		t.Fatal(err)
	}
	m := apptest.Next(t, ch)
	if m.Topic() != "wills/dying" || string(m.Payload()) != "gone" {
		t.Fatalf("got %q on %q", m.Payload(), m.Topic())
	}

	polite := apptest.V5(t, a.Addr("mqtt"), &paho.Connect{ClientID: "polite", CleanStart: true,
		WillMessage: &paho.WillMessage{Topic: "wills/polite", Payload: []byte("gone"), QoS: 1}})
	if err := polite.Disconnect(&paho.Disconnect{}); err != nil {
		t.Fatal(err)
	}
	pub := apptest.V3(t, apptest.URL(a), "pub")
	apptest.Done(t, pub.Publish("wills/marker", 1, false, "m"))
	if got := apptest.Next(t, ch); got.Topic() != "wills/marker" {
		t.Fatalf("will sent after a clean disconnect: %q", got.Topic())
	}
}

func TestMQTT5PubSub(t *testing.T) {
	a := apptest.Run(t, apptest.Config(t))
	sub := apptest.V5(t, a.Addr("mqtt"), &paho.Connect{ClientID: "s5", CleanStart: true})
	if _, err := sub.Subscribe(apptest.Ctx(t), &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "v5/#", QoS: 2}}}); err != nil {
		t.Fatal(err)
	}
	pub := apptest.V5(t, a.Addr("mqtt"), &paho.Connect{ClientID: "p5", CleanStart: true})
	for q := byte(0); q <= 2; q++ {
		if _, err := pub.Publish(apptest.Ctx(t), &paho.Publish{Topic: "v5/t", QoS: q, Payload: []byte{q},
			Properties: &paho.PublishProperties{User: paho.UserProperties{{Key: "k", Value: "v"}}}}); err != nil {
			t.Fatalf("publish qos %d: %v", q, err)
		}
		m := apptest.Next(t, sub.Msgs)
		if m.QoS != q || len(m.Payload) != 1 || m.Payload[0] != q || m.Properties.User.Get("k") != "v" {
			t.Fatalf("qos %d: got qos %d payload %v props %+v", q, m.QoS, m.Payload, m.Properties)
		}
	}
}

func TestWebSocketClient(t *testing.T) {
	a := apptest.Run(t, apptest.Config(t))
	ws := apptest.V3(t, apptest.WSURL(a), "ws-client")
	tcp := apptest.V3(t, apptest.URL(a), "tcp-client")
	ch, h := apptest.Sink()
	apptest.Done(t, ws.Subscribe("bridge/+", 1, h))
	apptest.Done(t, tcp.Publish("bridge/x", 1, false, "over tcp"))
	if m := apptest.Next(t, ch); string(m.Payload()) != "over tcp" {
		t.Fatalf("ws got %q", m.Payload())
	}
	back, bh := apptest.Sink()
	apptest.Done(t, tcp.Subscribe("back/+", 1, bh))
	apptest.Done(t, ws.Publish("back/y", 1, false, "over ws"))
	if m := apptest.Next(t, back); string(m.Payload()) != "over ws" {
		t.Fatalf("tcp got %q", m.Payload())
	}
}

func TestClientsCannotPublishReservedTopics(t *testing.T) {
	a := apptest.Run(t, apptest.Config(t))
	watcher := apptest.V3(t, apptest.URL(a), "watcher")
	ch, h := apptest.Sink()
	apptest.Done(t, watcher.Subscribe("$colony/#", 0, h))
	apptest.Done(t, watcher.Subscribe("$SYS/fake/#", 0, h))
	c := apptest.V5(t, a.Addr("mqtt"), &paho.Connect{ClientID: "sneaky", CleanStart: true})
	for _, topic := range []string{"$SYS/fake/x", "$colony/u/alice"} {
		res, err := c.Publish(apptest.Ctx(t), &paho.Publish{Topic: topic, QoS: 1, Payload: []byte("x")})
		if err == nil && (res == nil || res.ReasonCode != 0x87) {
			t.Fatalf("publish to %s: want PUBACK 0x87 not authorized, got %+v", topic, res)
		}
		if err != nil && res != nil && res.ReasonCode != 0x87 {
			t.Fatalf("publish to %s: %v (reason %#x)", topic, err, res.ReasonCode)
		}
	}
	apptest.None(t, ch, 300*time.Millisecond)
	// The client is still connected and served.
	if _, err := c.Publish(apptest.Ctx(t), &paho.Publish{Topic: "ok/topic", QoS: 1, Payload: []byte("x")}); err != nil {
		t.Fatalf("ordinary publish after denial: %v", err)
	}
}

func TestTruncatedMQTT5SubscribeDoesNotKillServer(t *testing.T) {
	a := apptest.Run(t, apptest.Config(t))
	good := apptest.V3(t, apptest.URL(a), "good")
	ch, h := apptest.Sink()
	apptest.Done(t, good.Subscribe("alive", 1, h))

	conn, err := net.DialTimeout("tcp", a.Addr("mqtt"), apptest.Wait)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	connect := []byte{0x10, 15, 0, 4, 'M', 'Q', 'T', 'T', 5, 0x02, 0, 60, 0, 0, 2, 'e', 'v'}
	// SUBSCRIBE, packet id 1, no properties, filter "a" with its options byte missing.
	subscribe := []byte{0x82, 6, 0, 1, 0, 0, 1, 'a'}
	if _, err := conn.Write(connect); err != nil {
		t.Fatal(err)
	}
	ack := make([]byte, 64)
	if err := conn.SetReadDeadline(time.Now().Add(apptest.Wait)); err != nil {
		t.Fatal(err)
	}
	if n, err := conn.Read(ack); err != nil || n < 4 || ack[0] != 0x20 {
		t.Fatalf("connack: %v %x", err, ack[:n])
	}
	if _, err := conn.Write(subscribe); err != nil {
		t.Fatal(err)
	}
	// The server must drop this connection (reading returns EOF or a DISCONNECT)…
	for {
		n, err := conn.Read(ack)
		if err != nil {
			break
		}
		if n > 0 && ack[0] == 0xE0 {
			break
		}
	}
	// …and keep serving everyone else.
	pub := apptest.V3(t, apptest.URL(a), "pub")
	apptest.Done(t, pub.Publish("alive", 1, false, "yes"))
	if m := apptest.Next(t, ch); string(m.Payload()) != "yes" {
		t.Fatalf("got %q", m.Payload())
	}
}

func TestConnectTimeoutClosesSilentSockets(t *testing.T) {
	cfg := apptest.Config(t)
	cfg.Limits.ConnectTimeout = app.Duration(300 * time.Millisecond)
	a := apptest.Run(t, cfg)
	conn, err := net.DialTimeout("tcp", a.Addr("mqtt"), apptest.Wait)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if err := conn.SetReadDeadline(time.Now().Add(apptest.Wait)); err != nil {
		t.Fatal(err)
	}
	// Sending nothing, the socket must be closed by the server well before our own deadline.
	if _, err := conn.Read(make([]byte, 1)); err == nil {
		t.Fatal("server sent data to a client that never sent CONNECT")
	} else if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatal("server kept a silent socket open past the connect timeout")
	}
}
