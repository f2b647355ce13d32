// SPDX-License-Identifier: MIT
// SPDX-FileCopyrightText: 2023 mochi-mqtt, mochi-co
// SPDX-FileContributor: mochi-co

package mqtt

import (
	"maps"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
)

// Inflight is a map of InflightMessage keyed on packet id.
type Inflight struct {
	sync.RWMutex
	internal            map[uint16]*packets.Packet // internal contains the inflight packets; COLONY PATCH P24: by pointer, never changed in place
	order               map[uint16]uint64          // COLONY PATCH P11: insertion sequence per packet id
	seq                 uint64                     // COLONY PATCH P11: last sequence given out
	receiveQuota        int32                      // remaining inbound qos quota for flow control
	sendQuota           int32                      // remaining outbound qos quota for flow control
	maximumReceiveQuota int32                      // maximum allowed receive quota
	maximumSendQuota    int32                      // maximum allowed send quota

	// COLONY PATCH P25: the client's own QoS 2 publishes acknowledged with
	// a PUBREC and waiting for their PUBREL: when each PUBREC was sent, by
	// the client's packet id. Packet ids are per direction, and the
	// client's are not the server's: upstream kept both in internal, so a
	// client's publish, subscribe or unsubscribe with the id of a message
	// in flight to it replaced, deleted or was refused because of that
	// message. The in-flight hooks hear of them as inboundState packets.
	inbound map[uint16]int64

	// COLONY PATCH P26: messages in internal that wait for send quota (the
	// client's Receive Maximum), in the order they are to go out, and how
	// many, for the check after every packet without the lock. Upstream
	// marked them with Expiry -1, sent one per packet the client sent,
	// before messages queued meanwhile, and then deleted it from the map:
	// its PUBACK was ignored, so the quota never came back and delivery
	// stopped, and a reconnect did not resend it.
	held  []heldMessage
	nheld atomic.Int32

	// COLONY PATCH P26: a new connection is to resend the session's messages, the
	// ones up to resendSeq, before anything newer goes out (moveTo,
	// resendPlan); admit holds every message until then.
	resending bool
	resendSeq uint64

	// COLONY PATCH P31: set when a new connection took the session over
	// (moveTo): the set is empty for good, and a publisher that found the
	// old connection before the take-over delivers to next instead (nil:
	// the session ended with a clean start).
	sealed bool
	next   *Client

	// COLONY PATCH P36: messages (and the client's QoS 2 ids) put in the
	// set by setLive or setInboundLive whose OnQosPublish has not returned
	// yet (recorded). moveTo waits for them after sealing: a take-over
	// otherwise moved such a message to the new connection, which resent
	// it, and its acknowledgement told storage to delete the record before
	// the delivering goroutine wrote it; the record outlived the flow and a
	// restart delivered the message again (QoS 2: twice).
	recording atomic.Int32

	// COLONY PATCH P41: messages that left the set (acknowledged, dropped,
	// expired), which a publisher waiting for room watches (waitInflight):
	// the set's length hid a slot freed and taken at once by another
	// publisher.
	freed atomic.Uint64
}

// heldMessage identifies a held message: the sequence tells a packet id
// given out again (the message was acknowledged or expired) from the
// message that was held. COLONY PATCH P26.
type heldMessage struct {
	id  uint16
	seq uint64
}

// NewInflights returns a new instance of an Inflight packets map.
// COLONY PATCH P18: its maps are made by the first Set, so an idle client
// that never had a message in flight holds none.
func NewInflights() *Inflight {
	return &Inflight{}
}

// Set adds or updates an inflight packet by packet id.
func (i *Inflight) Set(m packets.Packet) bool {
	return i.setShared(&m)
}

// setShared is Set for a packet that others may read too (the outbound
// queue, which writes it) but that nobody changes any more. COLONY PATCH
// P24: the map held packets (about 800 bytes each) by value, which Go's
// maps keep in an allocation of their own: with the queue's, two copies of
// every QoS 1/2 delivery.
func (i *Inflight) setShared(m *packets.Packet) bool {
	i.Lock()
	defer i.Unlock()
	return i.setLocked(m)
}

// setLocked is setShared; the lock is held.
func (i *Inflight) setLocked(m *packets.Packet) bool {
	if i.internal == nil { // COLONY PATCH P18
		i.internal = map[uint16]*packets.Packet{}
		i.order = map[uint16]uint64{}
	}
	_, ok := i.internal[m.PacketID]
	i.internal[m.PacketID] = m
	if !ok { // COLONY PATCH P11: an update (PUBREC -> PUBREL) keeps its place
		i.seq++
		i.order[m.PacketID] = i.seq
	}
	return !ok
}

// Get returns an inflight packet by packet id.
func (i *Inflight) Get(id uint16) (packets.Packet, bool) {
	i.RLock()
	defer i.RUnlock()

	if m, ok := i.internal[id]; ok {
		return *m, true
	}

	return packets.Packet{}, false
}

// Len returns the size of the inflight messages map.
func (i *Inflight) Len() int {
	i.RLock()
	defer i.RUnlock()
	return len(i.internal)
}

// Clone returns a new instance of Inflight with the same message data.
// This is used when transferring inflights from a taken-over session.
func (i *Inflight) Clone() *Inflight {
	i.RLock()
	defer i.RUnlock()
	return i.cloneLocked()
}

// moveTo hands the session's messages in flight and the client's pending
// QoS 2 ids to next, the connection that takes the session over, and
// leaves this set empty and sealed, in one step under the lock (nil: a
// clean start ends the session; the set is sealed and the caller clears
// it, telling the hooks). COLONY PATCH P31: upstream cloned the set and then
// cleared it, telling the hooks the messages were dropped, so storage
// forgot them (the resend wrote back only those it sent: held ones were
// lost by a restart); and a publisher that had found the old connection
// just before added its message to the old set after the clone, where
// nobody would ever send it (acknowledged to its publisher all the same).
// Publishers now find the set sealed and deliver to next. Next's quotas
// are kept; next.State.Inflight is set only if there is something to move.
func (i *Inflight) moveTo(next *Client) {
	i.sealAndMove(next)
	// COLONY PATCH P36: sealed, so no new recording starts; those under
	// way finish telling the hooks before the caller resends or clears
	// what moved.
	for pause := 20 * time.Microsecond; ; pause = min(2*pause, time.Millisecond) {
		if i.recording.Load() == 0 {
			return
		}
		time.Sleep(pause)
	}
}

// sealAndMove is moveTo without the wait for recordings under way.
func (i *Inflight) sealAndMove(next *Client) {
	i.Lock()
	defer i.Unlock()
	i.sealed, i.next = true, next
	if next == nil {
		// COLONY PATCH P32: sealed only; the caller drops what is left and
		// tells the hooks (ClearInflights). Emptied here, a message a
		// publisher put in between the caller's clearing and this was
		// lost without OnQosDropped: storage kept it for good.
		return
	}
	if len(i.internal) == 0 && len(i.inbound) == 0 {
		// COLONY PATCH P32: nothing to resend, but publishers find next
		// before its resend all the same, and what they give it is not
		// the session's to resend (it is queued already): without the
		// boundary the resend wrote it a second time, before its queued
		// copy.
		f := next.State.Inflight
		f.Lock()
		f.resending, f.resendSeq = true, f.seq
		f.Unlock()
	} else {
		c := i.cloneLocked()
		fresh := next.State.Inflight // set up by ParseConnect for the new connection
		c.ResetReceiveQuota(atomic.LoadInt32(&fresh.maximumReceiveQuota))
		c.ResetSendQuota(atomic.LoadInt32(&fresh.maximumSendQuota))
		// COLONY PATCH P26: the new connection resends these before
		// anything publishers give it from now on (admit holds that until
		// resendPlan).
		c.resending, c.resendSeq = true, c.seq
		next.State.Inflight = c // [MQTT-3.1.2-5]
	}
	i.internal, i.order, i.inbound, i.held = nil, nil, nil, nil
	i.nheld.Store(0)
}

// setLive is setShared for a delivery: it reports whether the message was
// added (false: it replaced one under its id), or, when the set was sealed
// by a take-over, sealed true and the connection that has the session now
// (nil: none). COLONY PATCH P31.
func (i *Inflight) setLive(m *packets.Packet) (added, sealed bool, next *Client) {
	i.Lock()
	defer i.Unlock()
	if i.sealed {
		return false, true, i.next
	}
	i.recording.Add(1) // COLONY PATCH P36: until the caller's recorded
	return i.setLocked(m), false, nil
}

// promote replaces the message in flight under ack's packet id with ack,
// the PUBREL answering its PUBREC, in its place. It reports false when the
// id is not in flight (any more) or a take-over sealed the set; on true a
// recording is under way until the caller's recorded. COLONY PATCH P40.
func (i *Inflight) promote(ack *packets.Packet) bool {
	i.Lock()
	defer i.Unlock()
	if i.sealed {
		return false
	}
	if _, ok := i.internal[ack.PacketID]; !ok {
		return false
	}
	i.setLocked(ack)
	i.recording.Add(1)
	return true
}

// beginRecording starts a recording of a message already in the set (a
// resend rewrites its record), unless a take-over sealed the set: false
// then, and the caller writes nothing. COLONY PATCH P47.
func (i *Inflight) beginRecording() bool {
	i.Lock()
	defer i.Unlock()
	if i.sealed {
		return false
	}
	i.recording.Add(1)
	return true
}

// recorded ends a recording that setLive, setInboundLive, promote or beginRecording started: the
// hooks have been told of the message (or id). COLONY PATCH P36.
func (i *Inflight) recorded() {
	i.recording.Add(-1) // started under the lock that sealing takes, so none starts after the seal
}

// cloneLocked is Clone; the lock is held.
func (i *Inflight) cloneLocked() *Inflight {
	c := &Inflight{internal: map[uint16]*packets.Packet{}, order: map[uint16]uint64{}}
	for k, v := range i.internal {
		c.internal[k] = v
		c.order[k] = i.order[k]
	}
	c.seq = i.seq
	if len(i.inbound) > 0 { // COLONY PATCH P25
		c.inbound = maps.Clone(i.inbound)
	}
	for _, h := range i.held { // COLONY PATCH P26: never sent, so not resent as duplicates
		if i.isHeld(h) {
			c.held = append(c.held, h)
		}
	}
	c.nheld.Store(int32(len(c.held)))
	return c
}

// setInbound records that the client's QoS 2 publish id was acknowledged
// with a PUBREC at the Unix time at. COLONY PATCH P25.
func (i *Inflight) setInbound(id uint16, at int64) {
	i.Lock()
	defer i.Unlock()
	if i.inbound == nil {
		i.inbound = map[uint16]int64{}
	}
	i.inbound[id] = at
}

// setInboundLive is setInbound for a publish being received: it records
// nothing and returns false once a take-over sealed the set (the client
// sends the publish again on the new connection). COLONY PATCH P32.
func (i *Inflight) setInboundLive(id uint16, at int64) bool {
	i.Lock()
	defer i.Unlock()
	if i.sealed {
		return false
	}
	if i.inbound == nil {
		i.inbound = map[uint16]int64{}
	}
	i.inbound[id] = at
	i.recording.Add(1) // COLONY PATCH P36: until the caller's recorded
	return true
}

// inboundLen returns how many of the client's QoS 2 publishes wait for
// their PUBREL. COLONY PATCH P25.
func (i *Inflight) inboundLen() int {
	i.RLock()
	defer i.RUnlock()
	return len(i.inbound)
}

// inboundInUse reports whether the client's packet id id belongs to a QoS 2
// publish of its own still waiting for its PUBREL. COLONY PATCH P25.
func (i *Inflight) inboundInUse(id uint16) bool {
	i.RLock()
	defer i.RUnlock()
	_, ok := i.inbound[id]
	return ok
}

// dropInbound forgets the client's QoS 2 publishes waiting for their
// PUBREL that were acknowledged before the Unix time before (all of them
// for before 0), and returns their ids. COLONY PATCH P25.
func (i *Inflight) dropInbound(before int64) []uint16 {
	i.Lock()
	defer i.Unlock()
	var ids []uint16
	for id, at := range i.inbound {
		if before == 0 || at < before {
			delete(i.inbound, id)
			ids = append(ids, id)
		}
	}
	return ids
}

// inboundAll returns the client's QoS 2 publishes waiting for their PUBREL:
// when each was acknowledged, by packet id. COLONY PATCH P25.
func (i *Inflight) inboundAll() map[uint16]int64 {
	i.RLock()
	defer i.RUnlock()
	return maps.Clone(i.inbound)
}

// inboundState is how the in-flight hooks see the client's own QoS 2
// publish id, acknowledged at the Unix time at and waiting for its PUBREL:
// as the PUBREC the server sent. Messages sent to the client never have
// that type, so a hook (the store) can tell the two apart. COLONY PATCH P25.
func inboundState(id uint16, at int64) packets.Packet {
	return packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pubrec}, PacketID: id, Created: at}
}

// outboundFlow reports whether an in-flight record of packet type typ is a
// state of a message sent to the client (PUBLISH, or PUBREL once the client
// sent its PUBREC); a PUBREC record is the client's own QoS 2 publish
// (inboundState). COLONY PATCH P25.
func outboundFlow(typ byte) bool {
	return typ == packets.Publish || typ == packets.Pubrel
}

// deleteInbound ends the client's QoS 2 publish id. COLONY PATCH P25.
func (i *Inflight) deleteInbound(id uint16) bool {
	i.Lock()
	defer i.Unlock()
	_, ok := i.inbound[id]
	delete(i.inbound, id)
	return ok
}

// GetAll returns all the inflight messages.
func (i *Inflight) GetAll(immediate bool) []packets.Packet {
	i.RLock()
	defer i.RUnlock()

	m := []packets.Packet{}
	for _, v := range i.internal {
		if !immediate || (immediate && v.Expiry < 0) {
			m = append(m, *v)
		}
	}

	// COLONY PATCH P11: upstream sorted by uint16(Created), seconds cut to
	// 16 bits, with an unstable sort, so messages of one second (and all
	// of them after the cut wraps) were resent in random order; MQTT 4.6
	// wants them in the order they were first sent.
	sort.Slice(m, func(a, b int) bool {
		return i.order[m[a].PacketID] < i.order[m[b].PacketID]
	})

	return m
}

// admit takes send quota for the message id, just set, or holds it until
// acknowledgements free some: it reports whether the message may be sent
// now. Once one message is held, later ones wait behind it, so that they
// go out in order. Without a Receive Maximum there is no quota to take.
// COLONY PATCH P26.
func (i *Inflight) admit(id uint16) bool {
	if atomic.LoadInt32(&i.maximumSendQuota) <= 0 {
		return true
	}
	i.Lock()
	defer i.Unlock()
	for len(i.held) > 0 && !i.isHeld(i.held[0]) {
		i.popHeld()
	}
	if len(i.held) == 0 && !i.resending && atomic.LoadInt32(&i.sendQuota) > 0 {
		atomic.AddInt32(&i.sendQuota, -1)
		return true
	}
	i.held = append(i.held, heldMessage{id: id, seq: i.order[id]})
	i.nheld.Store(int32(len(i.held)))
	return false
}

// releaseHeld takes send quota for held messages, in order, while there is
// some, and appends them to dst for sending. COLONY PATCH P26.
func (i *Inflight) releaseHeld(dst []*packets.Packet) []*packets.Packet {
	if i.nheld.Load() == 0 {
		return dst
	}
	i.Lock()
	defer i.Unlock()
	for len(i.held) > 0 {
		if h := i.held[0]; i.isHeld(h) {
			if atomic.LoadInt32(&i.sendQuota) <= 0 {
				break
			}
			atomic.AddInt32(&i.sendQuota, -1)
			dst = append(dst, i.internal[h.id])
		}
		i.popHeld()
	}
	return dst
}

// dropHeld deletes the held messages that drop selects and returns them.
// It looks and deletes under one lock, so that a message released
// meanwhile (sent, holding send quota until its acknowledgement) is not
// among them. COLONY PATCH P26.
func (i *Inflight) dropHeld(drop func(*packets.Packet) bool) []packets.Packet {
	if i.nheld.Load() == 0 {
		return nil
	}
	i.Lock()
	defer i.Unlock()
	var dropped []packets.Packet
	for _, h := range i.held {
		if i.isHeld(h) && drop(i.internal[h.id]) {
			dropped = append(dropped, *i.internal[h.id])
			delete(i.internal, h.id)
			delete(i.order, h.id)
		}
	}
	return dropped
}

// resendPlan returns, in order, what a new connection (its send quota just
// reset) resends at once: PUBLISH (DUP unless held and never sent) and
// PUBREL, taking send quota. The messages its Receive Maximum does not let
// through are held, before those set since the session moved (moveTo).
// Messages drop selects (too large for this connection) are deleted and
// returned apart. COLONY PATCH P26, P27 (no topic alias: the old
// connection's are gone [MQTT-3.3.2-7]), P28.
func (i *Inflight) resendPlan(drop func(*packets.Packet) bool) (out, dropped []packets.Packet) {
	i.Lock()
	defer i.Unlock()
	cut := i.seq
	if i.resending {
		cut = i.resendSeq
	}
	unsent := map[uint16]bool{}
	var later []heldMessage
	for _, h := range i.held {
		if !i.isHeld(h) {
			continue
		}
		if h.seq <= cut {
			unsent[h.id] = true // held by the old connection: never sent
		} else {
			later = append(later, h) // held since the move: goes after
		}
	}
	ids := make([]uint16, 0, len(i.internal))
	for id := range i.internal {
		if i.order[id] <= cut {
			ids = append(ids, id)
		}
	}
	sort.Slice(ids, func(a, b int) bool { return i.order[ids[a]] < i.order[ids[b]] })
	limited := atomic.LoadInt32(&i.maximumSendQuota) > 0
	var held []heldMessage
	for _, id := range ids {
		pk := *i.internal[id]
		switch pk.FixedHeader.Type {
		case packets.Publish:
			changed := !pk.FixedHeader.Dup && !unsent[id] || pk.Properties.TopicAlias > 0 || pk.Properties.TopicAliasFlag
			pk.FixedHeader.Dup = pk.FixedHeader.Dup || !unsent[id] // [MQTT-3.3.1-1] [MQTT-3.3.1-3]
			pk.Properties.TopicAlias, pk.Properties.TopicAliasFlag = 0, false
			if drop(&pk) {
				delete(i.internal, id)
				delete(i.order, id)
				dropped = append(dropped, pk)
				continue
			}
			if changed {
				i.internal[id] = &pk // replaced, not changed: P24
			}
			if limited && (len(held) > 0 || atomic.LoadInt32(&i.sendQuota) <= 0) {
				held = append(held, heldMessage{id: id, seq: i.order[id]}) // goes out later, as a resend too
				continue
			}
			if limited {
				atomic.AddInt32(&i.sendQuota, -1)
			}
		case packets.Pubrel:
			if limited && atomic.LoadInt32(&i.sendQuota) > 0 {
				atomic.AddInt32(&i.sendQuota, -1) // its PUBCOMP gives it back
			}
		}
		out = append(out, pk)
	}
	i.held = append(held, later...)
	if len(i.held) == 0 {
		i.held = nil
	}
	i.nheld.Store(int32(len(i.held)))
	i.resending = false
	return out, dropped
}

// isHeld reports whether h is still the message it held (not acknowledged,
// expired or replaced by a new message under its id). The lock is held.
func (i *Inflight) isHeld(h heldMessage) bool {
	_, ok := i.internal[h.id]
	return ok && i.order[h.id] == h.seq
}

// holdUnsent records the message in flight under id as never sent: its
// delivery found the client gone (disconnected, or stalled and being
// disconnected), so a later connection's resend must not mark it DUP
// [MQTT-3.3.1-1] (resendPlan sends held messages without it). pk, when
// not nil, is the delivery's packet: a message that has replaced it under
// the id since is left alone. Nothing is recorded once a take-over sealed
// the set (the message moved with a resend boundary already drawn; it
// goes out as DUP). COLONY PATCH P42: upstream (and P26) knew only
// messages held for the Receive Maximum as unsent, so messages queued for
// a session while its client was away came back with DUP set.
func (i *Inflight) holdUnsent(id uint16, pk *packets.Packet) {
	i.Lock()
	defer i.Unlock()
	cur, ok := i.internal[id]
	if i.sealed || !ok || (pk != nil && cur != pk) {
		return
	}
	for len(i.held) > 0 && !i.isHeld(i.held[0]) {
		i.popHeld() // acknowledged or expired: a session away long does not pile them up
	}
	h := heldMessage{id: id, seq: i.order[id]}
	k := len(i.held)
	for ; k > 0 && i.held[k-1].seq >= h.seq; k-- {
		if i.held[k-1] == h {
			return // held already
		}
	}
	i.held = slices.Insert(i.held, k, h) // in the order the messages are to go out
	i.nheld.Store(int32(len(i.held)))
}

// unsentIDs returns the packet ids of the messages in flight that were
// never sent (held), in order, for a session leaving for another node.
// COLONY PATCH P42.
func (i *Inflight) unsentIDs() []uint16 {
	i.RLock()
	defer i.RUnlock()
	var ids []uint16
	for _, h := range i.held {
		if i.isHeld(h) {
			ids = append(ids, h.id)
		}
	}
	return ids
}

// popHeld drops the first hold. The lock is held.
func (i *Inflight) popHeld() {
	i.held[0] = heldMessage{}
	i.held = i.held[1:]
	if len(i.held) == 0 {
		i.held = nil // the backing array goes with the burst
	}
	i.nheld.Store(int32(len(i.held)))
}

// Delete removes an in-flight message from the map. Returns true if the message existed.
func (i *Inflight) Delete(id uint16) bool {
	i.Lock()
	defer i.Unlock()

	_, ok := i.internal[id]
	delete(i.internal, id)
	delete(i.order, id) // COLONY PATCH P11
	if ok {
		i.freed.Add(1) // COLONY PATCH P41
	}
	return ok
}

// TakeRecieveQuota reduces the receive quota by 1.
func (i *Inflight) DecreaseReceiveQuota() {
	if atomic.LoadInt32(&i.receiveQuota) > 0 {
		atomic.AddInt32(&i.receiveQuota, -1)
	}
}

// TakeRecieveQuota increases the receive quota by 1.
func (i *Inflight) IncreaseReceiveQuota() {
	if atomic.LoadInt32(&i.receiveQuota) < atomic.LoadInt32(&i.maximumReceiveQuota) {
		atomic.AddInt32(&i.receiveQuota, 1)
	}
}

// ResetReceiveQuota resets the receive quota to the maximum allowed value.
func (i *Inflight) ResetReceiveQuota(n int32) {
	atomic.StoreInt32(&i.receiveQuota, n)
	atomic.StoreInt32(&i.maximumReceiveQuota, n)
}

// DecreaseSendQuota reduces the send quota by 1.
func (i *Inflight) DecreaseSendQuota() {
	if atomic.LoadInt32(&i.sendQuota) > 0 {
		atomic.AddInt32(&i.sendQuota, -1)
	}
}

// IncreaseSendQuota increases the send quota by 1.
func (i *Inflight) IncreaseSendQuota() {
	if atomic.LoadInt32(&i.maximumSendQuota) <= 0 {
		return // no Receive Maximum: no quota
	}
	// COLONY PATCH P26: under the lock that admit holds, so that a message
	// it holds for want of quota is either given this quota or is seen held
	// (nheld) by whoever gave it, which then releases it (sendHeld): with
	// the quota given outside the lock, a hold could land between the two
	// and wait for the client's next packet.
	i.Lock()
	defer i.Unlock()
	if atomic.LoadInt32(&i.sendQuota) < atomic.LoadInt32(&i.maximumSendQuota) {
		atomic.AddInt32(&i.sendQuota, 1)
	}
}

// ResetSendQuota resets the send quota to the maximum allowed value.
func (i *Inflight) ResetSendQuota(n int32) {
	atomic.StoreInt32(&i.sendQuota, n)
	atomic.StoreInt32(&i.maximumSendQuota, n)
}
