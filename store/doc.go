// Package store keeps all of Colony's durable state in one bbolt file.
//
// The file has two kinds of users. The MQTT engine persists sessions,
// subscriptions, in-flight messages, retained messages and $SYS info through
// the hook returned by [DB.MQTTHook]; those writes go through a group-commit
// loop so that durability costs one fsync per batch rather than one per
// message. Modules keep their own records through [Bucket], a small typed
// key/value API whose writes return only once committed; a [Batch] commits
// writes to several buckets in one transaction.
//
// Layout inside the file:
//
//	mqtt/clients   client ID                      -> storage.Client
//	mqtt/subs      client ID 0x00 filter           -> storage.Subscription
//	mqtt/inflight  client ID 0x00 packet ID (BE16)  -> storage.Message
//	mqtt/inbound   client ID 0x00 packet ID (BE16)  -> storage.Message (a PUBREC: the client's QoS 2 publish awaiting its PUBREL)
//	mqtt/retained  topic                           -> storage.Message
//	mqtt/sys       "info"                          -> storage.SystemInfo
//	mod/<module>/<name>                            -> module records
//
// Every value starts with a format version byte followed by JSON, so the
// encoding can change later without a migration of old records.
//
// Durability modes trade latency for the size of the loss window. Hook
// writes are queued in memory before the committer writes them, so a crash
// in any mode loses what is still queued, except writes whose caller waits.
// In [DurabilitySync] commits start as soon as work is queued and the hooks
// that precede an acknowledgement (OnQosPublish, OnSubscribed, retained
// QoS 1/2, the PUBREC of a client's QoS 2 publish) wait for the fsync, so a
// crash loses only unacknowledged work. In
// [DurabilityBatch] the committer gathers writes for BatchInterval before
// each commit and fsync, so a crash (process or power) loses about one
// interval plus one commit of hook writes, more if the queue has backed up.
// [DurabilityNone] batches the same way but never fsyncs: a process crash
// loses the same window as batch mode, while a power loss can also lose
// committed data the operating system had not yet written out. [Bucket]
// writes return only after their commit in every mode.
package store
