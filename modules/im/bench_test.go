package im_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	pahov3 "github.com/eclipse/paho.mqtt.golang"

	"github.com/colonymq/colony/app"
	"github.com/colonymq/colony/app/apptest"
	"github.com/colonymq/colony/modules/im"
	"github.com/colonymq/colony/rpc"
)

// BenchmarkGroup100 sends messages into a group of 100 members, each a
// real MQTT client (in this process) subscribed to its im/u/<uid>/#. With
// receipts on, every member answers every message with a read receipt (a
// $rpc/im/read request) the moment it arrives, as a chat app with the
// conversation open does. One member sends, one message after another
// (the module orders a conversation's entries, so its sends do not run in
// parallel). ns/op is the sender's latency per message; msgs/s counts
// from the first send until all 100 members have every message and, with
// receipts, the module has every receipt.
func BenchmarkGroup100(b *testing.B) {
	b.Run("receipts", func(b *testing.B) { benchGroup(b, true) })
	b.Run("no-receipts", func(b *testing.B) { benchGroup(b, false) })
}

func benchGroup(b *testing.B, withReceipts bool) {
	const members = 100
	a := apptest.Run(b, apptest.Config(b), im.New(im.Options{SendRate: -1}))
	users := make([]string, members)
	for i := range users {
		users[i] = fmt.Sprintf("u%03d", i)
	}
	g, err := rpc.Call[im.Conversation](as(users[0]), a.RPC(), "im", "create", &im.CreateReq{Kind: im.KindGroup, Members: users[1:]})
	if err != nil {
		b.Fatal(err)
	}
	got := make([]atomic.Uint64, members) // last seq each member received
	var receipts atomic.Int64             // receipt events members got
	for i, u := range users {
		var c pahov3.Client
		c = benchV3(b, a, "dev-"+u, u, func(_ pahov3.Client, m pahov3.Message) {
			if strings.HasSuffix(m.Topic(), "/"+im.TopicReceipt) {
				receipts.Add(1)
			}
			if !strings.HasSuffix(m.Topic(), "/"+im.TopicMsg) {
				return // receipts, and the replies to our read requests
			}
			var e im.Message
			if err := json.Unmarshal(m.Payload(), &e); err != nil {
				b.Error(err)
				return
			}
			got[i].Store(e.Seq)
			if withReceipts {
				ack, _ := json.Marshal(&im.AckReq{Conv: e.Conv, Seq: e.Seq})
				c.Publish(fmt.Sprintf("$rpc/im/read/%d", e.Seq), 0, false, ack)
			}
		})
		if tok := c.Subscribe(im.TopicRoot+u+"/#", 1, nil); !tok.WaitTimeout(apptest.Wait) || tok.Error() != nil {
			b.Fatalf("subscribe %s: %v", u, tok.Error())
		}
	}

	ctx := as(users[0])
	req := &im.SendReq{Conv: g.ID, Text: "a message of moderate length, like most chat messages are"}
	var sent uint64
	t0 := time.Now()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := rpc.Call[im.SendResult](ctx, a.RPC(), "im", "send", req); err != nil {
			b.Fatal(err)
		}
		sent++
	}
	waitFor(b, func() error {
		for i := range got {
			if s := got[i].Load(); s != sent {
				return fmt.Errorf("%s has %d of %d messages", users[i], s, sent)
			}
		}
		ms, err := rpc.Call[im.MembersResp](ctx, a.RPC(), "im", "members", &im.ConvReq{Conv: g.ID})
		if err != nil {
			return err
		}
		for _, m := range ms.Members {
			if withReceipts && m.ReadSeq != sent {
				return fmt.Errorf("%s read up to %d of %d", m.User, m.ReadSeq, sent)
			}
		}
		return nil
	})
	secs := time.Since(t0).Seconds()
	b.ReportMetric(float64(sent)/secs, "msgs/s")
	b.ReportMetric(float64(sent*members)/secs, "deliveries/s")
	if withReceipts {
		b.ReportMetric(float64(sent*members)/secs, "acks/s")
		b.ReportMetric(float64(receipts.Load())/secs, "receipt-events/s")
	}
}

// benchV3 connects a paho 3.1.1 client as user.
func benchV3(b *testing.B, a *app.App, id, user string, h pahov3.MessageHandler) pahov3.Client {
	b.Helper()
	c, err := apptest.V3Try(apptest.URL(a), id, func(o *pahov3.ClientOptions) { o.SetDefaultPublishHandler(h) })
	if err != nil {
		b.Fatalf("connect %s: %v", id, err)
	}
	b.Cleanup(func() { c.Disconnect(10) })
	waitFor(b, func() error { return a.Server().BindUser(id, user) })
	return c
}

// waitFor retries f until it succeeds or apptest.Wait has passed.
func waitFor(b *testing.B, f func() error) {
	b.Helper()
	deadline := time.Now().Add(apptest.Wait)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			b.Fatal(err)
		}
		time.Sleep(time.Millisecond)
	}
}

// BenchmarkOnlineUsers brings 1000 users online, each a bare MQTT 3.1.1
// connection bound to its user id and subscribed to its im/u/<uid>/#, and
// reports the memory (heap and goroutine stacks, in this process, so the
// clients' sockets too) each costs: B/user on a node with the im module,
// im-B/user the module's part of it (the difference from the same
// population on a node without it). A first population on a throwaway
// node warms the runtime's caches, which would otherwise flatter whichever
// node came first. The timed operation is a presence query.
func BenchmarkOnlineUsers(b *testing.B) {
	const users = 1000
	online := func(a *app.App) float64 {
		before := memInUse()
		for i := range users {
			rawOnline(b, a, fmt.Sprintf("c%d", i), fmt.Sprintf("user%d", i))
		}
		return float64(memInUse()-before) / users
	}
	warm := apptest.Run(b, apptest.Config(b))
	online(warm)
	apptest.Stop(b, warm)
	base := online(apptest.Run(b, apptest.Config(b)))
	a := apptest.Run(b, apptest.Config(b), im.New(im.Options{}))
	with := online(a)

	ctx := as("user0")
	req := &im.PresenceReq{Users: []string{"user1"}}
	for b.Loop() {
		pr, err := rpc.Call[im.PresenceResp](ctx, a.RPC(), "im", "presence", req)
		if err != nil || !pr.Users[0].Online {
			b.Fatalf("presence = %+v, %v", pr, err)
		}
	}
	// After the loop: b.Loop resets what was reported before it.
	b.ReportMetric(with, "B/user")
	b.ReportMetric(with-base, "im-B/user")
}

// memInUse returns heap and stack bytes in use after a collection.
func memInUse() uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc + ms.StackInuse
}

// rawOnline brings one user online over a hand-written MQTT 3.1.1
// connection: CONNECT (keep-alive off), bind, SUBSCRIBE im/u/<uid>/#. It
// keeps no reader or buffers, so the client side costs little more than
// its socket.
func rawOnline(b *testing.B, a *app.App, id, user string) {
	b.Helper()
	conn, err := net.Dial("tcp", a.Addr("mqtt"))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { conn.Close() })
	vh := append(mqttString("MQTT"), 4, 0x02, 0, 0) // level 4, clean session, keep-alive 0
	if err := rawExchange(conn, 0x10, append(vh, mqttString(id)...), []byte{0x20, 2, 0, 0}); err != nil {
		b.Fatalf("connect %s: %v", id, err)
	}
	waitFor(b, func() error { return a.Server().BindUser(id, user) })
	sub := append([]byte{0, 1}, mqttString(im.TopicRoot+user+"/#")...)
	if err := rawExchange(conn, 0x82, append(sub, 1), []byte{0x90, 3, 0, 1, 1}); err != nil {
		b.Fatalf("subscribe %s: %v", id, err)
	}
}

// rawExchange writes one packet and checks the reply is exactly want.
func rawExchange(conn net.Conn, header byte, body, want []byte) error {
	if len(body) > 127 {
		return errors.New("packet too long for this helper")
	}
	if _, err := conn.Write(append([]byte{header, byte(len(body))}, body...)); err != nil {
		return err
	}
	got := make([]byte, len(want))
	if err := conn.SetReadDeadline(time.Now().Add(apptest.Wait)); err != nil {
		return err
	}
	if _, err := io.ReadFull(conn, got); err != nil {
		return err
	}
	if string(got) != string(want) {
		return fmt.Errorf("got % x, want % x", got, want)
	}
	return nil
}

func mqttString(s string) []byte { return append([]byte{byte(len(s) >> 8), byte(len(s))}, s...) }
