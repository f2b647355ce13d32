package store

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/storage"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/mochi-mqtt/server/v2/system"
	"github.com/rs/zerolog"
	"go.etcd.io/bbolt"
)

// sysKey is the only key of the mqtt/sys bucket.
var sysKey = []byte("info")

// MQTTHook persists the mochi engine's state in a DB: sessions that outlive
// their connection (with their subscriptions, in-flight messages and
// wills), retained messages and $SYS info. Add it with
// server.AddHook(db.MQTTHook(), nil) before server.Serve.
//
// Writes are queued to the DB's committer in call order. In sync mode the
// hooks mochi calls before acknowledging something wait for the commit:
// OnQosPublish, OnSubscribed, and OnRetainMessage for QoS 1 and 2; the
// rest never wait. Sessions of clients that do not
// keep state across connections (clean session, or MQTT 5 session expiry 0)
// are never written, which keeps ordinary clients off the store entirely.
// All methods are safe for concurrent use, as mochi requires.
type MQTTHook struct {
	mqtt.HookBase
	db   *DB
	log  zerolog.Logger
	wait bool // sync mode: OnQosPublish returns after its commit

	// known holds the IDs of clients that may have records in the store, so
	// that deletes for everybody else are skipped without a queue round
	// trip. mu orders adding an ID with its first write and removing it with
	// the session delete, so the set never misses an ID with records.
	mu    sync.Mutex
	known sync.Map // client ID -> struct{}

	refused atomic.Bool // a write was refused after Close; logged once
}

var _ mqtt.Hook = (*MQTTHook)(nil)

// MQTTHook returns the hook persisting the broker state in this DB. Every
// call returns the same hook.
func (db *DB) MQTTHook() *MQTTHook {
	db.hookOnce.Do(func() {
		h := &MQTTHook{
			db:   db,
			log:  db.log.With().Str("hook", "colony-store").Logger(),
			wait: db.opts.Durability == DurabilitySync,
		}
		if err := h.loadKnown(); err != nil {
			// Without the set, deletes for stored sessions are skipped until
			// they are written again; log loudly but keep the broker usable.
			h.log.Error().Err(err).Msg("store could not list stored sessions")
		}
		db.hook = h
	})
	return db.hook
}

// loadKnown fills the known set from every client ID in the store.
func (h *MQTTHook) loadKnown() error {
	return h.db.view(func(tx *bbolt.Tx) error {
		root := tx.Bucket(rootMQTT)
		for _, b := range [...]uint8{bucketClients, bucketSubs, bucketInflight, bucketInbound} {
			err := root.Bucket(mqttBucketNames[b]).ForEach(func(k, _ []byte) error {
				id := string(k)
				if b != bucketClients {
					var ok bool
					if id, _, ok = splitKey(k); !ok {
						return nil
					}
				}
				h.known.Store(id, struct{}{})
				return nil
			})
			if err != nil {
				return err
			}
		}
		return nil
	})
}

// ID returns the hook's ID, "colony-store".
func (h *MQTTHook) ID() string { return "colony-store" }

// Provides reports whether the hook handles event b.
func (h *MQTTHook) Provides(b byte) bool {
	return bytes.Contains([]byte{
		mqtt.OnSessionEstablish,
		mqtt.OnSessionEstablished,
		mqtt.OnDisconnect,
		mqtt.OnSubscribed,
		mqtt.OnUnsubscribed,
		mqtt.OnRetainMessage,
		mqtt.OnWillSent,
		mqtt.OnQosPublish,
		mqtt.OnQosComplete,
		mqtt.OnQosDropped,
		mqtt.OnSysInfoTick,
		mqtt.OnClientExpired,
		mqtt.OnRetainedExpired,
		mqtt.StoredClients,
		mqtt.StoredSubscriptions,
		mqtt.StoredInflightMessages,
		mqtt.StoredRetainedMessages,
		mqtt.StoredSysInfo,
	}, []byte{b})
}

// Init accepts only a nil config: the hook is configured through its DB.
func (h *MQTTHook) Init(config any) error {
	if config != nil {
		return mqtt.ErrInvalidConfigType
	}
	return nil
}

// Stop commits the writes queued so far. It leaves the DB open because
// modules may still use it; the DB's owner closes it.
func (h *MQTTHook) Stop() error {
	err := h.db.Flush(context.Background())
	if errors.Is(err, ErrClosed) {
		return nil // Close already committed everything
	}
	return err
}

// persistent reports whether cl's session outlives its connection, the
// only case in which its state is worth writing: mochi discards
// non-persistent sessions when it loads the store anyway.
func persistent(cl *mqtt.Client) bool {
	if !validClient(cl) {
		return false
	}
	if cl.Properties.ProtocolVersion == 5 {
		return cl.Properties.Props.SessionExpiryInterval > 0
	}
	return !cl.Properties.Clean
}

// validClient excludes the inline client, which has no session, and IDs
// containing 0x00, which would corrupt the ID 0x00 suffix key layout.
func validClient(cl *mqtt.Client) bool {
	return cl != nil && !cl.Net.Inline && cl.ID != "" && strings.IndexByte(cl.ID, 0) < 0
}

// tracked reports whether the store may hold records for cl.
func (h *MQTTHook) tracked(cl *mqtt.Client) bool {
	if !validClient(cl) {
		return false
	}
	_, ok := h.known.Load(cl.ID)
	return ok
}

// OnSessionEstablish drops the stored session of a client that connects
// with clean start. It runs before mochi attaches the new connection, so no
// message for the new session can have been written yet, whereas a delete
// from OnSessionEstablished could erase in-flight messages routed to the
// client between its attach and that hook.
func (h *MQTTHook) OnSessionEstablish(cl *mqtt.Client, pk packets.Packet) {
	if pk.Connect.Clean && h.tracked(cl) {
		h.deleteSession(cl.ID)
	}
}

// OnSessionEstablished writes the client record of a persistent session.
func (h *MQTTHook) OnSessionEstablished(cl *mqtt.Client, pk packets.Packet) {
	if persistent(cl) {
		h.putClient(cl)
	}
}

// OnDisconnect deletes a session that ends with its connection, or
// rewrites the record of one that lives on, whose will may have changed.
func (h *MQTTHook) OnDisconnect(cl *mqtt.Client, err error, expire bool) {
	if !validClient(cl) || takenOver(cl) {
		return // the new connection owns the session now
	}
	if expire {
		if h.tracked(cl) {
			h.deleteSession(cl.ID)
		}
		return
	}
	if cl.Net.Conn == nil {
		// mochi's loadClients reports each restored session as disconnected;
		// the record it came from is already current.
		return
	}
	if persistent(cl) {
		h.putClient(cl)
	}
}

// takenOver reports whether a newer connection with the same ID replaced cl.
func takenOver(cl *mqtt.Client) bool {
	return cl.IsTakenOver() || errors.Is(cl.StopCause(), packets.ErrSessionTakenOver)
}

// OnClientExpired deletes the session mochi has expired.
func (h *MQTTHook) OnClientExpired(cl *mqtt.Client) {
	if h.tracked(cl) {
		h.deleteSession(cl.ID)
	}
}

// OnWillSent rewrites the client record, whose will mochi has just cleared.
func (h *MQTTHook) OnWillSent(cl *mqtt.Client, pk packets.Packet) {
	if persistent(cl) && !takenOver(cl) {
		h.putClient(cl)
	}
}

// OnSubscribed writes the granted subscriptions of a persistent session.
// mochi calls it before sending SUBACK, so in sync mode it waits for the
// commit of the last one: an acknowledged subscription survives a crash.
func (h *MQTTHook) OnSubscribed(cl *mqtt.Client, pk packets.Packet, reasonCodes []byte) {
	if !persistent(cl) {
		return
	}
	last := -1
	for i := range pk.Filters {
		if i < len(reasonCodes) && reasonCodes[i] < packets.ErrUnspecifiedError.Code {
			last = i
		}
	}
	for i, f := range pk.Filters {
		if i >= len(reasonCodes) || reasonCodes[i] >= packets.ErrUnspecifiedError.Code {
			continue
		}
		h.put(cl.ID, bucketSubs, subKey(cl.ID, f.Filter), storage.Subscription{
			T:                 storage.SubscriptionKey,
			ID:                cl.ID + ":" + f.Filter,
			Client:            cl.ID,
			Filter:            f.Filter,
			Identifier:        f.Identifier,
			RetainHandling:    f.RetainHandling,
			Qos:               reasonCodes[i],
			RetainAsPublished: f.RetainAsPublished,
			NoLocal:           f.NoLocal,
		}, h.wait && i == last)
	}
}

// OnUnsubscribed deletes the client's stored subscriptions to pk's filters.
func (h *MQTTHook) OnUnsubscribed(cl *mqtt.Client, pk packets.Packet) {
	if !h.tracked(cl) {
		return
	}
	for _, f := range pk.Filters {
		h.submit(op{kind: opDelete, bucket: bucketSubs, key: subKey(cl.ID, f.Filter)}, false)
	}
}

// OnQosPublish writes an in-flight message, keyed and tagged with its
// packet ID so a restart redelivers it under the same ID. In sync mode it
// returns only after the commit. A PUBREC is the client's own QoS 2 publish
// waiting for its PUBREL (engine patch P25): the client's packet ids are
// its own, so it goes to a bucket of its own, where a restart finds it and
// knows the publish, sent again, for one already delivered. PUBACK and
// PUBCOMP are skipped, should any come.
func (h *MQTTHook) OnQosPublish(cl *mqtt.Client, pk packets.Packet, sent int64, resends int) {
	if !persistent(cl) {
		return
	}
	switch pk.FixedHeader.Type {
	case packets.Puback, packets.Pubcomp:
		return
	case packets.Pubrec:
		h.put(cl.ID, bucketInbound, inflightKey(cl.ID, pk.PacketID), storage.Message{
			T:           storage.InflightKey,
			Client:      cl.ID,
			FixedHeader: packets.FixedHeader{Type: packets.Pubrec},
			Created:     pk.Created,
			PacketID:    pk.PacketID,
		}, h.wait)
		return
	}
	h.put(cl.ID, bucketInflight, inflightKey(cl.ID, pk.PacketID), storage.Message{
		T:           storage.InflightKey,
		ID:          cl.ID + ":" + strconv.Itoa(int(pk.PacketID)),
		Client:      cl.ID,
		Origin:      pk.Origin,
		TopicName:   pk.TopicName,
		Payload:     pk.Payload,
		FixedHeader: pk.FixedHeader,
		Created:     pk.Created,
		Sent:        sent,
		PacketID:    pk.PacketID,
		Properties:  messageProperties(pk.Properties),
	}, h.wait)
}

// OnQosComplete deletes an in-flight message once its flow has finished
// (a PUBREC: the client's own QoS 2 publish, once its PUBREL came).
func (h *MQTTHook) OnQosComplete(cl *mqtt.Client, pk packets.Packet) {
	h.deleteInflight(cl, pk)
}

// OnQosDropped deletes an in-flight message mochi gave up on.
func (h *MQTTHook) OnQosDropped(cl *mqtt.Client, pk packets.Packet) {
	h.deleteInflight(cl, pk)
}

// deleteInflight deletes an in-flight message, or a client's pending QoS 2
// publish (a PUBREC); in sync mode the latter waits for its commit, since
// the engine sends the PUBCOMP after it, and a record outliving that would
// take the client's next publish under the id for a repeat.
func (h *MQTTHook) deleteInflight(cl *mqtt.Client, pk packets.Packet) {
	if persistent(cl) || h.tracked(cl) {
		if pk.FixedHeader.Type == packets.Pubrec {
			h.submit(op{kind: opDelete, bucket: bucketInbound, key: inflightKey(cl.ID, pk.PacketID)}, h.wait)
			return
		}
		h.submit(op{kind: opDelete, bucket: bucketInflight, key: inflightKey(cl.ID, pk.PacketID)}, false)
	}
}

// OnRetainMessage writes or, for an empty payload, deletes the retained
// message of pk's topic. Retained messages are written for every client.
// mochi calls it before acknowledging the publish, so in sync mode a QoS
// 1 or 2 publish waits for the commit.
func (h *MQTTHook) OnRetainMessage(cl *mqtt.Client, pk packets.Packet, r int64) {
	key := []byte(pk.TopicName)
	wait := h.wait && pk.FixedHeader.Qos > 0
	if r == -1 || len(pk.Payload) == 0 {
		h.submit(op{kind: opDelete, bucket: bucketRetained, key: key}, wait)
		return
	}
	msg := storage.Message{
		T:           storage.RetainedKey,
		ID:          pk.TopicName,
		Origin:      pk.Origin,
		TopicName:   pk.TopicName,
		Payload:     pk.Payload,
		FixedHeader: pk.FixedHeader,
		Created:     pk.Created,
		Properties:  messageProperties(pk.Properties),
	}
	if cl != nil {
		msg.Client = cl.ID
	}
	data, err := encode(msg)
	if err != nil {
		h.log.Error().Err(err).Str("topic", pk.TopicName).Msg("store cannot encode retained message")
		return
	}
	h.submit(op{kind: opPut, bucket: bucketRetained, key: key, value: data}, wait)
}

// OnRetainedExpired deletes a retained message mochi has expired.
func (h *MQTTHook) OnRetainedExpired(topic string) {
	h.submit(op{kind: opDelete, bucket: bucketRetained, key: []byte(topic)}, false)
}

// OnSysInfoTick writes the latest $SYS counters.
func (h *MQTTHook) OnSysInfoTick(sys *system.Info) {
	if sys == nil {
		return
	}
	data, err := encode(storage.SystemInfo{Info: *sys, T: storage.SysInfoKey, ID: storage.SysInfoKey})
	if err != nil {
		h.log.Error().Err(err).Msg("store cannot encode sys info")
		return
	}
	h.submit(op{kind: opPut, bucket: bucketSys, key: sysKey, value: data}, false)
}

// StoredClients returns every stored client record.
func (h *MQTTHook) StoredClients() ([]storage.Client, error) {
	out := []storage.Client{}
	err := h.load(bucketClients, false, func(k, v []byte) error {
		var c storage.Client
		if err := decode(v, &c); err != nil {
			return err
		}
		c.ID = string(k) // the key is authoritative
		out = append(out, c)
		return nil
	})
	return out, err
}

// StoredSubscriptions returns every stored subscription whose client
// record exists.
func (h *MQTTHook) StoredSubscriptions() ([]storage.Subscription, error) {
	out := []storage.Subscription{}
	err := h.load(bucketSubs, true, func(k, v []byte) error {
		var s storage.Subscription
		if err := decode(v, &s); err != nil {
			return err
		}
		id, filter, _ := splitKey(k)
		s.Client, s.Filter = id, string(filter)
		out = append(out, s)
		return nil
	})
	return out, err
}

// StoredInflightMessages returns every stored in-flight message whose
// client record exists, each with the packet ID it was sent under, and the
// clients' own QoS 2 publishes waiting for their PUBREL, as PUBRECs.
//
// Stores written before engine patch P25 kept those PUBRECs among the
// in-flight messages, where the server's own messages under the same ids
// overwrote them: they are returned too, and moved to their bucket.
func (h *MQTTHook) StoredInflightMessages() ([]storage.Message, error) {
	out := []storage.Message{}
	var moved []op
	for _, bucket := range [...]uint8{bucketInflight, bucketInbound} {
		err := h.load(bucket, true, func(k, v []byte) error {
			var m storage.Message
			if err := decode(v, &m); err != nil {
				return err
			}
			id, rest, _ := splitKey(k)
			if len(rest) != 2 {
				return errors.New("malformed in-flight key")
			}
			m.Client, m.PacketID = id, binary.BigEndian.Uint16(rest)
			if bucket == bucketInflight && m.FixedHeader.Type == packets.Pubrec {
				key := bytes.Clone(k)
				moved = append(moved, op{kind: opPut, bucket: bucketInbound, key: key, value: bytes.Clone(v)},
					op{kind: opDelete, bucket: bucketInflight, key: key})
			}
			out = append(out, m)
			return nil
		})
		if err != nil {
			return out, err
		}
	}
	// Queued after the read transactions, as load's deletes are.
	for _, o := range moved {
		h.submit(o, false)
	}
	return out, nil
}

// StoredRetainedMessages returns every stored retained message.
func (h *MQTTHook) StoredRetainedMessages() ([]storage.Message, error) {
	out := []storage.Message{}
	err := h.load(bucketRetained, false, func(k, v []byte) error {
		var m storage.Message
		if err := decode(v, &m); err != nil {
			return err
		}
		out = append(out, m)
		return nil
	})
	return out, err
}

// StoredSysInfo returns the stored $SYS counters, or zeros if there are none.
func (h *MQTTHook) StoredSysInfo() (storage.SystemInfo, error) {
	var info storage.SystemInfo
	err := h.db.view(func(tx *bbolt.Tx) error {
		raw := tx.Bucket(rootMQTT).Bucket(mqttBucketNames[bucketSys]).Get(sysKey)
		if raw == nil {
			return nil
		}
		if err := decode(raw, &info); err != nil {
			h.log.Warn().Err(err).Msg("store skipped unreadable sys info")
			info = storage.SystemInfo{}
		}
		return nil
	})
	return info, err
}

// load calls fn for each record of an MQTT sub-bucket. A record fn cannot
// decode is skipped and logged rather than failing startup over one bad
// value. With orphans set, records keyed by a client ID without a client
// record are skipped and deleted: mochi could not attach them to a session,
// and they can only come from a crash between two writes of one session.
func (h *MQTTHook) load(bucket uint8, orphans bool, fn func(k, v []byte) error) error {
	var bad, orphaned [][]byte
	var firstErr error
	err := h.db.view(func(tx *bbolt.Tx) error {
		root := tx.Bucket(rootMQTT)
		clients := root.Bucket(mqttBucketNames[bucketClients])
		return root.Bucket(mqttBucketNames[bucket]).ForEach(func(k, v []byte) error {
			if orphans {
				id, _, ok := splitKey(k)
				if !ok || clients.Get([]byte(id)) == nil {
					orphaned = append(orphaned, bytes.Clone(k))
					return nil
				}
			}
			if err := fn(k, v); err != nil {
				if firstErr == nil {
					firstErr = err
				}
				bad = append(bad, bytes.Clone(k))
			}
			return nil
		})
	})
	if err != nil {
		return err
	}
	name := string(mqttBucketNames[bucket])
	if len(bad) > 0 {
		h.log.Warn().Err(firstErr).Str("bucket", name).Bytes("first_key", bad[0]).Int("skipped", len(bad)).
			Msg("store skipped unreadable records")
	}
	if len(orphaned) > 0 {
		h.log.Warn().Str("bucket", name).Int("deleted", len(orphaned)).
			Msg("store deleted records of sessions without a client record")
		// Queued after the read transaction: blocking on a full queue while
		// holding it could stall the committer's file remap.
		for _, k := range orphaned {
			h.submit(op{kind: opDelete, bucket: bucket, key: k}, false)
		}
	}
	return nil
}

// putClient writes cl's client record.
func (h *MQTTHook) putClient(cl *mqtt.Client) {
	h.put(cl.ID, bucketClients, []byte(cl.ID), clientRecord(cl), false)
}

// put encodes v and queues it under key, adding id to the known set first
// so a concurrent delete of the session cannot miss the record.
func (h *MQTTHook) put(id string, bucket uint8, key []byte, v any, wait bool) {
	data, err := encode(v)
	if err != nil {
		h.log.Error().Err(err).Str("client", id).Str("bucket", string(mqttBucketNames[bucket])).Msg("store cannot encode record")
		return
	}
	o := op{kind: opPut, bucket: bucket, key: key, value: data}
	if _, ok := h.known.Load(id); ok {
		h.submit(o, wait)
		return
	}
	h.mu.Lock()
	h.known.Store(id, struct{}{})
	if !wait {
		h.submit(o, false)
		h.mu.Unlock()
		return
	}
	// Queue under the lock but wait outside it, so a slow fsync does not
	// hold up other clients' first writes.
	done := waiters.Get().(chan error)
	o.done = done
	err = h.db.enqueue(context.Background(), o)
	h.mu.Unlock()
	if err != nil {
		waiters.Put(done)
		h.refuse(err)
		return
	}
	err = <-done
	waiters.Put(done)
	if err != nil {
		h.log.Debug().Err(err).Str("client", id).Msg("store write failed")
	}
}

// deleteSession queues the removal of everything stored for id.
func (h *MQTTHook) deleteSession(id string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.submit(op{kind: opDeleteSession, key: []byte(id)}, false)
	h.known.Delete(id)
}

// submit queues o, waiting for its commit if asked. Commit failures are
// logged by the committer, so only refusals are reported here.
func (h *MQTTHook) submit(o op, wait bool) {
	if err := h.db.submit(o, wait); err != nil {
		if errors.Is(err, ErrClosed) {
			h.refuse(err)
			return
		}
		h.log.Debug().Err(err).Msg("store write failed")
	}
}

// refuse counts a write the closed DB turned away and logs the first one.
func (h *MQTTHook) refuse(err error) {
	h.db.stats.errors.Add(1)
	if h.refused.CompareAndSwap(false, true) {
		h.log.Error().Err(err).Msg("store refused broker writes after close; close the broker before the store")
	}
}

// clientRecord converts cl to mochi's storable form. Unlike mochi's own
// storage hooks it keeps SessionExpiryIntervalFlag and RequestProblemInfoFlag,
// which mochi's loadClients reads: without the flag a restored MQTT 5 session
// would fall back to the server's maximum expiry.
func clientRecord(cl *mqtt.Client) storage.Client {
	p := &cl.Properties.Props
	return storage.Client{
		ID:              cl.ID,
		T:               storage.ClientKey,
		Remote:          cl.Net.Remote,
		Listener:        cl.Net.Listener,
		Username:        cl.Properties.Username,
		Clean:           cl.Properties.Clean,
		ProtocolVersion: cl.Properties.ProtocolVersion,
		Properties: storage.ClientProperties{
			AuthenticationData:        p.AuthenticationData,
			User:                      p.User,
			AuthenticationMethod:      p.AuthenticationMethod,
			SessionExpiryInterval:     p.SessionExpiryInterval,
			MaximumPacketSize:         p.MaximumPacketSize,
			ReceiveMaximum:            p.ReceiveMaximum,
			TopicAliasMaximum:         p.TopicAliasMaximum,
			SessionExpiryIntervalFlag: p.SessionExpiryIntervalFlag,
			RequestProblemInfo:        p.RequestProblemInfo,
			RequestProblemInfoFlag:    p.RequestProblemInfoFlag,
			RequestResponseInfo:       p.RequestResponseInfo,
		},
		Will: storage.ClientWill(cl.Properties.Will),
	}
}

// messageProperties keeps the publish properties mochi's storage carries.
func messageProperties(p packets.Properties) storage.MessageProperties {
	return storage.MessageProperties{
		CorrelationData:        p.CorrelationData,
		SubscriptionIdentifier: p.SubscriptionIdentifier,
		User:                   p.User,
		ContentType:            p.ContentType,
		ResponseTopic:          p.ResponseTopic,
		MessageExpiryInterval:  p.MessageExpiryInterval,
		TopicAlias:             p.TopicAlias,
		PayloadFormat:          p.PayloadFormat,
		PayloadFormatFlag:      p.PayloadFormatFlag,
	}
}

// sessionPrefix is the key prefix of a client's subscriptions and in-flight
// messages.
func sessionPrefix(id string) []byte {
	b := make([]byte, 0, len(id)+1)
	b = append(b, id...)
	return append(b, 0)
}

// subKey is the key of one subscription: client ID, 0x00, filter.
func subKey(id, filter string) []byte {
	b := make([]byte, 0, len(id)+1+len(filter))
	b = append(b, id...)
	b = append(b, 0)
	return append(b, filter...)
}

// inflightKey is the key of one in-flight message: client ID, 0x00, packet
// ID big-endian, so a client's messages sort by packet ID.
func inflightKey(id string, packetID uint16) []byte {
	b := make([]byte, 0, len(id)+3)
	b = append(b, id...)
	b = append(b, 0)
	return binary.BigEndian.AppendUint16(b, packetID)
}

// splitKey splits a session key at its first 0x00 into client ID and rest.
func splitKey(k []byte) (id string, rest []byte, ok bool) {
	i := bytes.IndexByte(k, 0)
	if i < 0 {
		return "", nil, false
	}
	return string(k[:i]), k[i+1:], true
}
