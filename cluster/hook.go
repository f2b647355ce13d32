package cluster

import (
	"bytes"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/colonymq/colony/server"
)

// hook is the Federation's view of the engine: subscriptions coming and
// going (interest) and messages published here (to federate).
type hook struct {
	mqtt.HookBase
	f *Federation
}

var _ mqtt.Hook = (*hook)(nil)

// ID names the hook in the engine's logs.
func (h *hook) ID() string { return "colony-federation" }

// Provides reports the events the hook handles.
func (h *hook) Provides(b byte) bool {
	return bytes.Contains([]byte{mqtt.OnSubscribe, mqtt.OnSubscribed, mqtt.OnUnsubscribed, mqtt.OnClientExpired,
		mqtt.OnPublish, mqtt.OnPublished, mqtt.OnWillSent,
		mqtt.OnSessionEstablish, mqtt.OnSessionEstablished, mqtt.OnDisconnect}, []byte{b})
}

// ref identifies a subscription. The engine's inline client holds every
// module subscription, told apart by their ids.
func ref(cl *mqtt.Client, sub packets.Subscription) subRef {
	r := subRef{client: cl.ID, filter: sub.Filter}
	if cl.Net.Inline {
		r.id = sub.Identifier
	}
	return r
}

// OnSubscribe binds the node's queue for filters new to this node. It runs
// before the engine adds the subscription and sends the SUBACK, and waits
// (up to BindWait) for the binding: a client that has its SUBACK receives
// what other nodes publish from then on, and the engine's own short gap
// between adding a subscription and sending the retained messages it
// matches is not widened by the wait.
func (h *hook) OnSubscribe(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	refs := make([]subRef, 0, len(pk.Filters))
	for _, sub := range pk.Filters {
		refs = append(refs, ref(cl, sub))
	}
	if round := h.f.in.add(refs...); round != nil {
		h.f.awaitBinding(round)
	}
	return pk
}

// OnSubscribed takes back the interest OnSubscribe recorded for filters the
// engine refused (ACL, invalid), unless the client held them already.
func (h *hook) OnSubscribed(cl *mqtt.Client, pk packets.Packet, codes []byte) {
	var refused []subRef
	for i, sub := range pk.Filters {
		if i < len(codes) && codes[i] < packets.ErrUnspecifiedError.Code {
			continue
		}
		if _, held := cl.State.Subscriptions.Get(sub.Filter); !held {
			refused = append(refused, ref(cl, sub))
		}
	}
	h.f.in.remove(refused...)
}

// OnUnsubscribed forgets subscriptions: explicit UNSUBSCRIBEs, and every
// subscription of a session that ends (clean session, taken over clean).
func (h *hook) OnUnsubscribed(cl *mqtt.Client, pk packets.Packet) {
	refs := make([]subRef, 0, len(pk.Filters))
	for _, sub := range pk.Filters {
		refs = append(refs, ref(cl, sub))
	}
	h.f.in.remove(refs...)
}

// OnSessionEstablish runs once a connecting client is authenticated and
// before the engine looks for its session: another node that has a
// connection or a session with its client id gives it up (and hands a
// persistent session over), so a client id is connected once in the
// cluster and finds its session on whichever node it connects to.
func (h *hook) OnSessionEstablish(cl *mqtt.Client, pk packets.Packet) {
	if !cl.Net.Inline {
		h.f.claim(cl.ID, !pk.Connect.Clean)
	}
}

// OnSessionEstablished makes the node reachable by the client's key.
func (h *hook) OnSessionEstablished(cl *mqtt.Client, _ packets.Packet) { h.f.track(cl) }

// OnDisconnect stops listening on the key of a client whose session ends
// with its connection.
func (h *hook) OnDisconnect(cl *mqtt.Client, _ error, expire bool) {
	if expire {
		h.f.untrack(cl)
	}
}

// OnClientExpired forgets the subscriptions of an expired persistent
// session, which the engine drops without unsubscribing, and its key.
func (h *hook) OnClientExpired(cl *mqtt.Client) {
	h.f.untrack(cl)
	subs := cl.State.Subscriptions.GetAll()
	refs := make([]subRef, 0, len(subs))
	for _, sub := range subs {
		refs = append(refs, ref(cl, sub))
	}
	h.f.in.remove(refs...)
}

// OnPublish orders retained messages. The engine stores a retained
// message right after this hook, so deciding here, rather than before
// injecting or after publishing, leaves next to no room for a local and a
// remote version of one topic to be stored in the opposite order to their
// stamps. A local one is stamped now; a remote one is kept only if its
// stamp is newer than the node's: else it still reaches current
// subscribers, as an ordinary message, unless it was only sent to bring
// the node up to date.
func (h *hook) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if !pk.FixedHeader.Retain || !Federated(pk.TopicName) {
		return pk, nil
	}
	f := h.f
	if !server.IsClusterClient(cl) {
		f.ret.local(pk.TopicName, f.opts.Node, len(pk.Payload) > 0)
		return pk, nil
	}
	in := f.incoming.Load()
	if in == nil {
		return pk, nil
	}
	newer, held := f.ret.remote(pk.TopicName, in.stamp)
	switch {
	case in.sync && (!newer || (!in.stamp.present && !held)):
		// State the node has already, or a clear of nothing: no news.
		return pk, packets.ErrRejectPacket
	case !newer:
		pk.FixedHeader.Retain = false
	}
	in.kept = newer
	return pk, nil
}

// OnPublished federates a message published on this node by a client or a
// module, unless it came from another node or went to no subscriber by
// design (client requests to modules).
func (h *hook) OnPublished(cl *mqtt.Client, pk packets.Packet) {
	if pk.Ignore || server.IsClusterClient(cl) {
		return
	}
	ts, ok := int64(0), false
	if pk.FixedHeader.Retain {
		ts, ok = h.f.ret.take(pk.TopicName)
	}
	if !ok {
		ts = time.Now().UnixNano()
	}
	h.f.federate(&pk, ts)
}

// OnWillSent federates a will message, which the engine publishes without
// OnPublished.
func (h *hook) OnWillSent(cl *mqtt.Client, pk packets.Packet) {
	if server.IsClusterClient(cl) {
		return
	}
	// The engine stores a retained will without OnPublish: stamp it now.
	ts := time.Now().UnixNano()
	if pk.FixedHeader.Retain && Federated(pk.TopicName) {
		ts = h.f.ret.local(pk.TopicName, h.f.opts.Node, len(pk.Payload) > 0)
		h.f.ret.take(pk.TopicName)
	}
	h.f.federate(&pk, ts)
}
