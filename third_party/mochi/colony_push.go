// COLONY PATCH P19: pushes, messages the server sends to one client outside
// its subscriptions (Colony's PushUser and PushClient), go through the
// client's outbound queue and never wait for room.
//
// Colony used to write them with Client.WritePacket on the caller's
// goroutine, so a client that stopped reading stalled the caller (a game
// room's only goroutine, the cluster's consumer) until the socket's
// deadline. A pusher cannot be slowed down the way a publisher is (P1:
// its socket is not read meanwhile), so a push that finds no room is
// refused at once and the caller is told.

package mqtt

import (
	"context"
	"sync/atomic"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
)

// Push queues pk for cl alone, whatever its subscriptions and without an
// ACL check, and returns without waiting for room in cl's queue:
//
//   - QoS 0 that finds the queue full is dropped and counted as a QoS 0
//     delivery to a stalled subscriber is (Info.MessagesDropped,
//     OnPublishDropped, logged once until the queue drains); the error is
//     packets.ErrPendingClientWritesExceeded.
//   - QoS 1/2 is kept in cl's in-flight set under a new packet id
//     (OnQosPublish, so storage keeps it for a persistent session), which
//     matches the acknowledgement and resends it when the client resumes
//     its session. Past the client's in-flight window (packets.ErrQuotaExceeded)
//     or to a full queue (packets.ErrPendingClientWritesExceeded) it is
//     refused: nothing is kept, logged once until the queue drains, and
//     the caller decides. Beyond the client's Receive Maximum it waits in
//     the in-flight set, as a subscriber's message does, until an
//     acknowledgement frees the quota.
//
// A client whose queue stays full, nothing taken from it, for
// SlowClientPatience while QoS 1/2 pushes are refused is disconnected, as a
// stalled QoS 1/2 subscriber is (P1): its session keeps what is in flight
// and resends it when it reconnects. ErrConnectionClosed: cl is not connected.
func (s *Server) Push(cl *Client, pk packets.Packet) error {
	if cl.Net.Conn == nil || cl.Closed() {
		return ErrConnectionClosed
	}
	now := time.Now()
	pk.FixedHeader.Type = packets.Publish
	pk.FixedHeader.Dup = false
	pk.FixedHeader.Qos = min(pk.FixedHeader.Qos, s.Options.Capabilities.MaximumQos)
	if pk.Created == 0 {
		pk.Created = now.Unix()
	}
	if pk.Expiry == 0 {
		if expiry := minimum(s.Options.Capabilities.MaximumMessageExpiryInterval,
			int64(pk.Properties.MessageExpiryInterval)); expiry > 0 {
			pk.Expiry = pk.Created + expiry
		}
	}

	out := pk.Copy(false) // queued: the caller keeps its packet
	if out.FixedHeader.Qos == 0 {
		if err := s.enqueue(cl, outItem{pk: &out}, 0, &pk, 0, false); err != nil {
			if err == packets.CodeDisconnect {
				return ErrConnectionClosed
			}
			return err
		}
		return nil
	}

	if cl.State.Inflight.Len() >= s.inflightLimit(cl) {
		return s.refusePush(cl, &pk, packets.ErrQuotaExceeded)
	}
	if cl.State.outbound.full() {
		s.checkStuck(cl, now)
		return s.refusePush(cl, &pk, packets.ErrPendingClientWritesExceeded)
	}

	i, err := cl.NextPacketID() // [MQTT-4.3.2-1] [MQTT-4.3.3-1]
	if err != nil {
		s.hooks.OnPacketIDExhausted(cl, pk)
		return s.refusePush(cl, &pk, packets.ErrQuotaExceeded)
	}
	out.PacketID = uint16(i) // [MQTT-2.2.1-4]
	if cl.tooLarge(&out) {   // COLONY PATCH P28: never deliverable to this client [MQTT-3.1.2-25]
		return packets.ErrPacketTooLarge
	}
	set := cl.State.Inflight
	added, sealed, next := set.setLive(&out) // [MQTT-4.3.2-3] [MQTT-4.3.3-3]
	if sealed {
		// P31: the session was taken over since cl was looked up.
		if next == nil {
			return ErrConnectionClosed
		}
		return s.Push(next, pk)
	}
	func() {
		defer set.recorded() // COLONY PATCH P36
		if added {
			atomic.AddInt64(&s.Info.Inflight, 1)
			s.hooks.OnQosPublish(cl, out, out.Created, 0)
		}
	}()
	if !set.admit(out.PacketID) {
		return nil // sent when acknowledgements free the quota (P26)
	}

	switch cl.State.outbound.push(outItem{pk: &out}, 0, nil, false) {
	case pushed:
		return nil
	default: // the queue filled up since full() said no
		if cl.State.Inflight.Delete(out.PacketID) {
			atomic.AddInt64(&s.Info.Inflight, -1)
			// The quota goes back without sendHeld, which may wait for
			// room in the queue (a push never waits): a message held
			// meanwhile goes out with the client's next packet.
			cl.State.Inflight.IncreaseSendQuota()
			s.hooks.OnQosDropped(cl, out)
		}
		s.checkStuck(cl, now)
		return s.refusePush(cl, &pk, packets.ErrPendingClientWritesExceeded)
	}
}

// refusePush reports a QoS 1/2 push refused for want of room, logged once
// until cl's queue drains.
func (s *Server) refusePush(cl *Client, pk *packets.Packet, code packets.Code) error {
	if cl.State.dropWarned.CompareAndSwap(false, true) {
		s.Log.Warn("client too slow: refusing QoS 1/2 pushes to it until its queue drains (logged once)",
			"client", cl.ID, "listener", cl.Net.Listener, "reason", code.Reason,
			"queue", s.Options.Capabilities.MaximumClientWritesPending, "inflight_limit", s.inflightLimit(cl))
	}
	return code
}

// checkStuck disconnects cl when its queue has stayed full, nothing taken,
// for SlowClientPatience: the same rule as for a stalled subscriber, so a
// client that reads nothing does not hold its queue for good.
func (s *Server) checkStuck(cl *Client, now time.Time) {
	d := cl.State.outbound.stuck(now)
	if d <= 0 || d < s.Options.Capabilities.SlowClientPatience {
		return
	}
	s.Log.Warn("client stalled: disconnecting it; its session keeps the undelivered messages",
		"client", cl.ID, "listener", cl.Net.Listener, "stalled", d.String())
	cl.Stop(packets.ErrQuotaExceeded)
}

// FlushClients waits until what is queued for every connected client has
// been written, at most until ctx ends; it returns ctx's error then. A
// graceful stop calls it before Close, so that replies and pushes already
// queued (which upstream wrote on the caller's goroutine) reach their
// clients before the connections close.
func (s *Server) FlushClients(ctx context.Context) error {
	for _, cl := range s.Clients.GetAll() {
		for cl.Net.Conn != nil && !cl.Closed() && !cl.State.outbound.idle() {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(time.Millisecond):
			}
		}
	}
	return nil
}
