// COLONY PATCH P10: persistent sessions move between cluster nodes.
//
// A node hands a session over with ReleaseSession and the node the client
// reconnected to installs it with AdoptSession, in the same records the
// storage hooks keep, so both sides use the restore-from-storage path the
// engine already has.

package mqtt

import (
	"sync/atomic"
	"time"

	"github.com/mochi-mqtt/server/v2/hooks/storage"
	"github.com/mochi-mqtt/server/v2/packets"
)

// ReleaseSession removes a disconnected client's session from the engine
// and returns it: its client record, subscriptions and in-flight messages
// (those queued while it was away included). Hooks see the subscriptions
// end (OnUnsubscribed), the messages dropped (OnQosDropped) and the
// session expire (OnClientExpired), so storage forgets it. The
// subscriptions are removed first, so no message is routed to the session
// after its in-flight set is read.
//
// unsent lists, in order, the packet ids of the messages never sent to
// the client (held for its Receive Maximum, or queued while it was away),
// which the adopting node is to send without DUP (COLONY PATCH P42).
//
// resumed says whether the client resumes the session on the other node
// (clean start 0) or starts afresh there, which ends the session. A will
// waiting for its delay is dropped here in the first case (it moves with
// the client record, and the resuming connection cancels it
// [MQTT-3.1.3-9]) and published now in the second [MQTT-3.1.2-8]
// (COLONY PATCH P43: it stayed scheduled here, and was published when its
// delay passed, session resumed or not, and then only to this node's
// subscribers: its client, released, was no longer found, so the hooks
// that federate a will never heard of it).
//
// ok is false, and nothing is released, when the session expired or was
// taken over by a connection here first (COLONY PATCH P35).
func (s *Server) ReleaseSession(cl *Client, resumed bool) (rec storage.Client, subRecs []storage.Subscription, msgs []storage.Message, unsent []uint16, ok bool) {
	var will packets.Packet
	var due bool
	defer func() { // COLONY PATCH P43: published once the session is gone, outside its lock
		if due {
			s.sendWill(cl, will, s.Options.Capabilities.SlowClientPatience, true)
		}
	}()
	cl.State.endMu.Lock()
	defer cl.State.endMu.Unlock()
	if !cl.State.claimed.CompareAndSwap(false, true) {
		return rec, nil, nil, nil, false
	}
	// COLONY PATCH P43: decided under the lock that scheduling takes, so a
	// connection ending only now (sendLWT) follows the decision too.
	cl.State.willMu.Lock()
	cl.State.willFate = willResumed
	if !resumed {
		cl.State.willFate = willEnded
	}
	will, due = s.loop.willDelayed.TakeIf(cl.ID, nil)
	cl.State.willMu.Unlock()
	due = due && !resumed
	subs := cl.State.Subscriptions.GetAll()
	s.UnsubscribeClient(cl)
	// COLONY PATCH P34: a publisher that found the session before it was
	// unsubscribed may be about to put its message in the in-flight set
	// (acknowledged to its publisher all the same); read after that, the
	// message stayed behind in this released client, which nobody sends,
	// and in this node's storage. Deliveries under way end first, later
	// ones do not start, and the set is sealed (P31) for any other path.
	cl.State.released.Store(true)
	for cl.State.delivering.Load() > 0 {
		time.Sleep(50 * time.Microsecond)
	}
	cl.State.Inflight.moveTo(nil)
	inflight := cl.State.Inflight.GetAll(false)
	unsent = cl.State.Inflight.unsentIDs()               // COLONY PATCH P42: the seal keeps the holds
	for id, at := range cl.State.Inflight.inboundAll() { // COLONY PATCH P25: the client's own QoS 2 publishes
		inflight = append(inflight, inboundState(id, at))
	}
	cl.ClearInflights()
	s.Clients.deleteIf(cl.ID, cl) // COLONY PATCH P48: not a connection that took the id meanwhile
	s.hooks.OnClientExpired(cl)
	// COLONY PATCH P43: taken over, by the other node: the will's hooks
	// (sent below when the session ended) do not store it again here.
	cl.State.isTakenOver.Store(true)

	rec = storage.Client{
		ID:              cl.ID,
		T:               storage.ClientKey,
		Remote:          cl.Net.Remote,
		Listener:        cl.Net.Listener,
		Username:        cl.Properties.Username,
		Clean:           cl.Properties.Clean,
		ProtocolVersion: cl.Properties.ProtocolVersion,
		Properties: storage.ClientProperties{
			SessionExpiryInterval:     cl.Properties.Props.SessionExpiryInterval,
			SessionExpiryIntervalFlag: cl.Properties.Props.SessionExpiryIntervalFlag,
			AuthenticationMethod:      cl.Properties.Props.AuthenticationMethod,
			AuthenticationData:        cl.Properties.Props.AuthenticationData,
			RequestProblemInfoFlag:    cl.Properties.Props.RequestProblemInfoFlag,
			RequestProblemInfo:        cl.Properties.Props.RequestProblemInfo,
			RequestResponseInfo:       cl.Properties.Props.RequestResponseInfo,
			ReceiveMaximum:            cl.Properties.Props.ReceiveMaximum,
			TopicAliasMaximum:         cl.Properties.Props.TopicAliasMaximum,
			User:                      cl.Properties.Props.User,
			MaximumPacketSize:         cl.Properties.Props.MaximumPacketSize,
		},
		Will: storage.ClientWill(cl.Properties.Will),
	}
	subRecs = make([]storage.Subscription, 0, len(subs))
	for _, sub := range subs {
		subRecs = append(subRecs, storage.Subscription{
			T:                 storage.SubscriptionKey,
			ID:                cl.ID + ":" + sub.Filter,
			Client:            cl.ID,
			Filter:            sub.Filter,
			Identifier:        sub.Identifier,
			RetainHandling:    sub.RetainHandling,
			Qos:               sub.Qos,
			RetainAsPublished: sub.RetainAsPublished,
			NoLocal:           sub.NoLocal,
		})
	}
	msgs = make([]storage.Message, 0, len(inflight))
	for _, pk := range inflight {
		msgs = append(msgs, storage.Message{
			T:           storage.InflightKey,
			Client:      cl.ID,
			Origin:      pk.Origin,
			TopicName:   pk.TopicName,
			Payload:     pk.Payload,
			FixedHeader: pk.FixedHeader,
			Created:     pk.Created,
			PacketID:    pk.PacketID,
			Properties: storage.MessageProperties{
				PayloadFormat:          pk.Properties.PayloadFormat,
				PayloadFormatFlag:      pk.Properties.PayloadFormatFlag,
				MessageExpiryInterval:  pk.Properties.MessageExpiryInterval,
				ContentType:            pk.Properties.ContentType,
				ResponseTopic:          pk.Properties.ResponseTopic,
				CorrelationData:        pk.Properties.CorrelationData,
				SubscriptionIdentifier: pk.Properties.SubscriptionIdentifier,
				TopicAlias:             pk.Properties.TopicAlias,
				User:                   pk.Properties.User,
			},
		})
	}
	return rec, subRecs, msgs, unsent, true
}

// AdoptSession installs a session another node released as a disconnected
// client, as if restored from storage, so that the connection about to
// attach with its id inherits it (session present). Hooks are told of its
// subscriptions (OnSubscribed) and in-flight messages (OnQosPublish) so
// that storage keeps them here from now on. unsent are the packet ids of
// the messages never sent to the client (ReleaseSession), which go out
// without DUP (COLONY PATCH P42); nil treats every message as sent.
func (s *Server) AdoptSession(c storage.Client, subs []storage.Subscription, msgs []storage.Message, unsent []uint16) {
	cl := s.NewClient(nil, c.Listener, c.ID, false)
	cl.Properties.Username = c.Username
	cl.Properties.Clean = c.Clean
	cl.Properties.ProtocolVersion = c.ProtocolVersion
	cl.Properties.Props = packets.Properties{
		SessionExpiryInterval:     c.Properties.SessionExpiryInterval,
		SessionExpiryIntervalFlag: c.Properties.SessionExpiryIntervalFlag,
		AuthenticationMethod:      c.Properties.AuthenticationMethod,
		AuthenticationData:        c.Properties.AuthenticationData,
		RequestProblemInfoFlag:    c.Properties.RequestProblemInfoFlag,
		RequestProblemInfo:        c.Properties.RequestProblemInfo,
		RequestResponseInfo:       c.Properties.RequestResponseInfo,
		ReceiveMaximum:            c.Properties.ReceiveMaximum,
		TopicAliasMaximum:         c.Properties.TopicAliasMaximum,
		User:                      c.Properties.User,
		MaximumPacketSize:         c.Properties.MaximumPacketSize,
	}
	cl.Properties.Will = Will(c.Will)
	cl.Stop(packets.ErrSessionTakenOver)
	// COLONY PATCH P45: the moved messages, their packet ids and holds go
	// in before the client can be found (Clients.Add, and its
	// subscriptions): a local publisher that found it first took packet id
	// 1 (the counter was not carried on yet), and a moved message put in
	// under the same id replaced that delivery, acknowledged to its
	// publisher, and came before it.
	for _, msg := range msgs {
		switch { // COLONY PATCH P25
		case msg.FixedHeader.Type == packets.Pubrec: // the client's own QoS 2 publish
			cl.State.Inflight.setInbound(msg.PacketID, msg.Created)
			s.hooks.OnQosPublish(cl, inboundState(msg.PacketID, msg.Created), msg.Created, 0)
			continue
		case !outboundFlow(msg.FixedHeader.Type):
			continue
		}
		mp := msg.ToPacket()
		if cl.State.Inflight.Set(mp) {
			atomic.AddInt64(&s.Info.Inflight, 1)
		}
		s.hooks.OnQosPublish(cl, mp, mp.Created, 0)
		// COLONY PATCH P34: packet ids go on from the session's newest
		// (ReleaseSession gives the messages oldest first), as P33 has
		// them across a take-over on one node: from 0, the messages given
		// the session here took lower ids than the moved ones, and a
		// restart (loadInflight) resent them first.
		atomic.StoreUint32(&cl.State.packetID, uint32(mp.PacketID))
	}
	// COLONY PATCH P42: without this, the new connection's resend marked
	// every moved message DUP, the ones the client never got included.
	for _, id := range unsent {
		cl.State.Inflight.holdUnsent(id, nil)
	}
	unlock := s.lockClientID(cl.ID) // COLONY PATCH P48
	s.Clients.Add(cl)
	unlock()

	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe}}
	codes := make([]byte, 0, len(subs))
	for _, sub := range subs {
		sb := packets.Subscription{
			Filter:            sub.Filter,
			RetainHandling:    sub.RetainHandling,
			Qos:               sub.Qos,
			RetainAsPublished: sub.RetainAsPublished,
			NoLocal:           sub.NoLocal,
			Identifier:        sub.Identifier,
		}
		if s.Topics.Subscribe(cl.ID, sb) {
			atomic.AddInt64(&s.Info.Subscriptions, 1)
		}
		cl.State.Subscriptions.Add(sb.Filter, sb)
		pk.Filters = append(pk.Filters, sb)
		codes = append(codes, sb.Qos)
	}
	if len(pk.Filters) > 0 {
		s.hooks.OnSubscribed(cl, pk, codes)
	}
	// COLONY PATCH P43: a will still waiting for its delay (the releasing
	// node dropped it) waits here, as after a restore from storage
	// (loadClients): the connection about to resume the session cancels
	// it [MQTT-3.1.3-9]; should it never come, the will goes out.
	if atomic.LoadUint32(&cl.Properties.Will.Flag) == 1 && cl.Properties.Will.WillDelayInterval > 0 {
		s.loop.willDelayed.Add(cl.ID, s.willPacket(cl, cl.Properties.Will))
	}
}
