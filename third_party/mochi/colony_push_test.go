// Tests of Colony's push patch (PATCHES.md P19). Run from the repository
// root: go test github.com/mochi-mqtt/server/v2/...

package mqtt

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
)

func testPush(qos byte, seq int) packets.Packet {
	return packets.Packet{FixedHeader: packets.FixedHeader{Qos: qos}, TopicName: "push/x", Payload: []byte{byte(seq)}}
}

// TestPushNeverWaits pushes to a client on a pipe nobody reads, so its
// writer blocks on the first packet: the next MaximumClientWritesPending
// pushes are queued, the rest refused at once (QoS 1: nothing kept in
// flight, QoS 0: counted as dropped). Once the client reads, everything
// accepted arrives in order, and pushes are accepted again.
func TestPushNeverWaits(t *testing.T) {
	for _, qos := range []byte{0, 1} {
		s := testServer(t)
		s.Options.Capabilities.MaximumClientWritesPending = 4
		s.Options.Capabilities.SlowClientPatience = time.Hour
		ts := subscribe(t, s, "slow", 4, packets.Properties{}, packets.Subscription{Filter: "other"})

		var accepted []int
		refused := 0
		for seq := 0; seq < 50; seq++ {
			err := s.Push(ts.cl, testPush(qos, seq))
			switch {
			case err == nil:
				accepted = append(accepted, seq)
			case errors.Is(err, packets.ErrPendingClientWritesExceeded):
				refused++
			default:
				t.Fatalf("qos %d push %d: %v", qos, seq, err)
			}
		}
		// The queue holds 4; the writer, blocked on the pipe, holds what it
		// took before it blocked (it gathers a batch in a buffer first).
		if len(accepted) < 4 || refused == 0 || refused != 50-len(accepted) {
			t.Fatalf("qos %d: %d accepted, %d refused", qos, len(accepted), refused)
		}
		if qos == 1 && (ts.cl.State.Inflight.Len() != len(accepted) || atomic.LoadInt64(&s.Info.Inflight) != int64(len(accepted))) {
			t.Fatalf("%d accepted, %d in flight (info %d)", len(accepted), ts.cl.State.Inflight.Len(), s.Info.Inflight)
		}
		if qos == 0 && atomic.LoadInt64(&s.Info.MessagesDropped) != int64(refused) {
			t.Fatalf("%d refused, %d counted as dropped", refused, s.Info.MessagesDropped)
		}
		ids := map[uint16]bool{}
		for _, seq := range accepted {
			pk := ts.next(t)
			if int(pk.Payload[0]) != seq || pk.FixedHeader.Qos != qos || pk.TopicName != "push/x" {
				t.Fatalf("qos %d: got %+v %v, want push %d", qos, pk.FixedHeader, pk.Payload, seq)
			}
			if qos == 1 {
				if _, ok := ts.cl.State.Inflight.Get(pk.PacketID); !ok || ids[pk.PacketID] {
					t.Fatalf("packet id %d not in flight or reused", pk.PacketID)
				}
				ids[pk.PacketID] = true
			}
		}
		if err := s.Push(ts.cl, testPush(qos, 99)); err != nil {
			t.Fatalf("qos %d: push after the queue drained: %v", qos, err)
		}
		if pk := ts.next(t); pk.Payload[0] != 99 {
			t.Fatalf("qos %d: got push %d after draining, want 99", qos, pk.Payload[0])
		}
		if ts.cl.Closed() {
			t.Fatalf("qos %d: client disconnected within its patience", qos)
		}
	}
}

// TestPushDisconnectsAStuckClient: a client whose queue stays full, nothing
// taken, past SlowClientPatience while QoS 1 pushes are refused is
// disconnected, keeping its accepted pushes in flight for its session.
func TestPushDisconnectsAStuckClient(t *testing.T) {
	s := testServer(t)
	s.Options.Capabilities.MaximumClientWritesPending = 2
	s.Options.Capabilities.SlowClientPatience = time.Nanosecond
	ts := subscribe(t, s, "stuck", 4, packets.Properties{}, packets.Subscription{Filter: "other"})
	accepted := 0
	for seq := 0; !ts.cl.Closed(); seq++ {
		if seq > 1000 {
			t.Fatal("a client stuck past its patience was not disconnected")
		}
		switch err := s.Push(ts.cl, testPush(1, seq)); {
		case err == nil:
			accepted++
		case errors.Is(err, packets.ErrPendingClientWritesExceeded), errors.Is(err, ErrConnectionClosed):
		default:
			t.Fatalf("push %d: %v", seq, err)
		}
	}
	if n := ts.cl.State.Inflight.Len(); n != accepted || accepted == 0 {
		t.Fatalf("%d pushes accepted, %d kept in flight for the session", accepted, n)
	}
	if err := s.Push(ts.cl, testPush(1, 0)); !errors.Is(err, ErrConnectionClosed) {
		t.Fatalf("push to a disconnected client: %v", err)
	}
}

// TestFlushClients: FlushClients returns once what was queued for the
// clients has been written, or with ctx's error while a client reads
// nothing.
func TestFlushClients(t *testing.T) {
	s := testServer(t)
	ts := subscribe(t, s, "reader", 4, packets.Properties{}, packets.Subscription{Filter: "other"})
	for seq := 0; seq < 3; seq++ {
		if err := s.Push(ts.cl, testPush(1, seq)); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := s.FlushClients(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("flush while the client reads nothing: %v", err)
	}
	read := make(chan error, 1)
	go func() {
		for seq := 0; seq < 3; seq++ {
			if _, err := ts.read(time.Second); err != nil {
				read <- err
				return
			}
		}
		read <- nil
	}()
	ctx, cancel = context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.FlushClients(ctx); err != nil {
		t.Fatalf("flush while the client reads: %v", err)
	}
	if err := <-read; err != nil {
		t.Fatal(err)
	}
	if !ts.cl.State.outbound.idle() {
		t.Fatal("flushed, but the queue is not idle")
	}
}
