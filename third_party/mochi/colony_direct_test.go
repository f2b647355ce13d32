// Tests of Colony's direct-write patch (PATCHES.md P20). Run from the
// repository root: go test github.com/mochi-mqtt/server/v2/...

package mqtt

import (
	"bufio"
	"encoding/binary"
	"io"
	"net"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
)

// tcpSubscriber is subscribe over a real loopback TCP connection, whose
// server end can be written without blocking (P20), with small socket
// buffers so that a subscriber that does not read fills them quickly.
func tcpSubscriber(t *testing.T, s *Server, id string, sub packets.Subscription) *testSubscriber {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	cli, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	srv, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close(); srv.Close() })
	// Small enough to fill, not so small that TCP's silly-window avoidance
	// slows the transfer to a crawl.
	_ = srv.(*net.TCPConn).SetWriteBuffer(32 << 10)
	_ = cli.(*net.TCPConn).SetReadBuffer(32 << 10)
	cl := s.NewClient(srv, "test", id, false)
	if cl.Net.rawConn() == nil {
		t.Skip("no non-blocking writes on this system")
	}
	cl.Properties.ProtocolVersion = 4
	s.Clients.Add(cl)
	s.Topics.Subscribe(id, sub)
	cl.State.Subscriptions.Add(sub.Filter, sub)
	return &testSubscriber{cl: cl, r: bufio.NewReader(cli), c: cli}
}

// TestDirectWrite delivers messages of a publisher that sends one at a
// time (mayDirect) to a single subscriber over TCP. The first, to an idle
// queue, is written before deliver returns, with no writer goroutine left
// running. Then the subscriber stops reading: deliveries keep returning
// (a direct write never blocks on a full socket: this test would hang if
// it did), and once it reads again every message arrives once, in order.
func TestDirectWrite(t *testing.T) {
	for _, qos := range []byte{0, 1} {
		s := testServer(t)
		s.Options.Capabilities.MaximumClientWritesPending = 4096
		s.Options.Capabilities.MaximumInflight = 4096
		s.Options.Capabilities.SlowClientPatience = time.Hour
		ts := tcpSubscriber(t, s, "sub", packets.Subscription{Filter: "a/#", Qos: qos})
		ts.cl.Properties.Props.ReceiveMaximum = 4096
		ts.cl.State.Inflight.ResetSendQuota(4096)

		msg := func(seq int) packets.Packet {
			payload := make([]byte, 1000)
			binary.BigEndian.PutUint32(payload, uint32(seq))
			return packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: qos},
				TopicName: "a/b", Payload: payload, PacketID: uint16(seq + 1), Origin: "pub"}
		}
		s.deliver(msg(0), time.Hour, true)
		if !ts.cl.State.outbound.idle() {
			t.Fatalf("qos %d: a delivery to an idle queue left a writer running: not written directly", qos)
		}
		if pk := ts.next(t); binary.BigEndian.Uint32(pk.Payload) != 0 {
			t.Fatalf("qos %d: first delivery is message %d", qos, binary.BigEndian.Uint32(pk.Payload))
		}

		// 2,000 KB against socket buffers of a few KB: most of it waits in
		// the queue, behind a write that the socket only partly took.
		const n = 2000
		for seq := 1; seq <= n; seq++ {
			s.deliver(msg(seq), time.Hour, true)
		}
		if ts.cl.State.outbound.len() == 0 {
			t.Fatalf("qos %d: the socket took everything: nothing tested", qos)
		}
		ids := map[uint16]bool{}
		for seq := 1; seq <= n; seq++ {
			pk, err := ts.read(10 * time.Second)
			if err != nil {
				t.Fatalf("qos %d: message %d: %v", qos, seq, err)
			}
			if got := binary.BigEndian.Uint32(pk.Payload); int(got) != seq || len(pk.Payload) != 1000 {
				t.Fatalf("qos %d: got message %d (%d bytes), want %d", qos, got, len(pk.Payload), seq)
			}
			if qos == 1 {
				if ids[pk.PacketID] {
					t.Fatalf("packet id %d twice", pk.PacketID)
				}
				ids[pk.PacketID] = true
			}
		}
		if _, err := ts.read(50 * time.Millisecond); err == nil {
			t.Fatalf("qos %d: a message more than was published", qos)
		}
		if ts.cl.Closed() {
			t.Fatalf("qos %d: subscriber disconnected", qos)
		}
	}
}

// TestDirectWriteNeverWaitsForTheClientLock: the subscriber's own goroutine
// is stuck in a blocking write to it (a large packet to a client that
// stopped reading), holding the client's lock. A delivery that may be
// written directly must not wait for that lock: it is queued behind the
// write instead, and arrives after it once the client reads again.
func TestDirectWriteNeverWaitsForTheClientLock(t *testing.T) {
	s := testServer(t)
	s.Options.Capabilities.SlowClientPatience = time.Hour
	ts := tcpSubscriber(t, s, "sub", packets.Subscription{Filter: "a/#"})

	big := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish}, TopicName: "a/big", Payload: make([]byte, 8<<20)}
	blocked := make(chan error, 1)
	go func() { blocked <- ts.cl.WritePacket(big) }()
	// Wait until that write holds the lock (it cannot finish: nobody reads).
	for ts.cl.TryLock() {
		ts.cl.Unlock()
		time.Sleep(time.Millisecond)
	}

	s.deliver(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish}, TopicName: "a/b", Payload: []byte("small"), Origin: "pub"}, time.Hour, true)
	// Reaching this line is the test: a direct write that waited for the
	// lock would still be blocked.
	if ts.cl.State.outbound.idle() {
		t.Fatal("the delivery was neither written nor queued")
	}

	if pk, err := ts.read(10 * time.Second); err != nil || pk.TopicName != "a/big" || len(pk.Payload) != 8<<20 {
		t.Fatalf("first packet: %v %q (%d bytes), want the large one", err, pk.TopicName, len(pk.Payload))
	}
	if err := <-blocked; err != nil {
		t.Fatalf("large write: %v", err)
	}
	if pk, err := ts.read(10 * time.Second); err != nil || pk.TopicName != "a/b" || string(pk.Payload) != "small" {
		t.Fatalf("second packet: %v %q %q, want the delivery", err, pk.TopicName, pk.Payload)
	}
}

// TestHeldQueueWritesAfterConnack: while a connecting client's queue is
// held (P23), a delivery, even one that could be written directly, waits;
// what the server writes meanwhile (the CONNACK, here a PINGRESP standing
// in for it) goes first, and the delivery follows on release.
func TestHeldQueueWritesAfterConnack(t *testing.T) {
	s := testServer(t)
	ts := tcpSubscriber(t, s, "sub", packets.Subscription{Filter: "a/#"})
	ts.cl.State.outbound.hold()
	s.deliver(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish}, TopicName: "a/b", Payload: []byte("x"), Origin: "pub"}, time.Hour, true)
	if n := ts.cl.State.outbound.len(); n != 1 {
		t.Fatalf("%d packets queued while held, want 1", n)
	}
	if err := ts.cl.WritePacket(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pingresp}}); err != nil {
		t.Fatal(err)
	}
	ts.cl.State.outbound.release()
	_ = ts.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	first := make([]byte, 2)
	if _, err := io.ReadFull(ts.r, first); err != nil || first[0] != packets.Pingresp<<4 || first[1] != 0 {
		t.Fatalf("first bytes % x, %v: want the packet written while held", first, err)
	}
	if pk := ts.next(t); pk.TopicName != "a/b" {
		t.Fatalf("then %q, want the delivery", pk.TopicName)
	}
}
