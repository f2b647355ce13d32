// Package cluster federates MQTT messages between the nodes of a Colony
// cluster over RabbitMQ: a message published on one node reaches the
// subscribers of every node, and retained messages are kept on all nodes.
//
// A node creates one Federation with New, adds its Hook to the MQTT
// server's hooks, starts it once the server serves, and closes it after
// the server has shut down. The hook tells the Federation which filters
// the node's clients and modules subscribe to and which messages are
// published on the node; the Federation publishes those to RabbitMQ and
// publishes what other nodes send into the local server
// (server.PublishRemote), marked so that it is never sent on again.
//
// # Topology
//
// Names below use the default prefix "colony"; Options.Prefix replaces it.
//
//	exchange colony.msg           topic,  durable=false, auto_delete=false
//	exchange colony.retained      fanout, durable=false, auto_delete=false
//	queue    colony.node.<node>   durable=false, auto_delete=true, exclusive=true
//	                              bound to colony.retained (every node gets every retained message),
//	                              to colony.msg with keys "long" and "users" (see below), and to colony.msg
//	                              with one binding key per distinct local subscription filter
//
// Interest decides routing: a node binds a filter's key when the first
// local subscription with it appears (clients, modules, and persistent
// sessions restored from the store, which the engine restores without
// telling hooks) and unbinds it when the last one goes (unsubscribe, end
// of a clean session, expiry of a persistent one). RabbitMQ delivers one
// copy of a message per queue however many of its bindings match, so a
// node gets a message once and its engine hands it to each local
// subscriber by MQTT's rules. A SUBACK is sent only once the binding is
// in place (or after Options.BindWait), so from then on the client also
// receives what other nodes publish.
//
// # Routing keys
//
// TopicKey and FilterKey map MQTT topics and filters to AMQP routing and
// binding keys so that RabbitMQ's topic matching agrees with MQTT's: a
// class word, "t" or, for topics starting with "$", "s"; then the levels
// joined by ".", each level percent-escaped for "%", ".", "*" and "#"
// ("%25", "%2E", "%2A", "%23"; nothing else is touched); in filters "+"
// becomes "*" and "#" stays "#". Empty levels are empty words ("a//b" is
// "t.a..b"), which RabbitMQ matches like any word. A filter whose first
// level is a wildcard binds class "t" only, so "#" and "+/…" never receive
// "$" topics (MQTT 4.7.2). The shared subscription prefix "$share/<group>/"
// is dropped: a group is served among each node's own members. The
// $SYS, $rpc and $colony spaces (case-insensitive) never leave a node.
// Keys are limited to 255 bytes: a longer topic is published with key
// "long", which every node binds, and a longer filter binds a shorter,
// wider key ending in "#"; the receiving engine's own matching then
// drops what it does not want.
//
// # Messages
//
// A message published on a node by a client, a module or as a will goes
// to colony.msg with its topic's key (retained ones, and clears, to
// colony.retained with an empty key):
//
//	body           the payload
//	delivery_mode  2 (persistent) for QoS 1 and 2, 1 for QoS 0
//	headers        origin: the sending node's id
//	               topic: the exact MQTT topic
//	               qos: 0, 1 or 2 (the QoS it was published with); retain: bool
//	               ts: on retained messages, publish time in Unix nanoseconds
//	               content_type, response_topic (strings), correlation_data (bytes),
//	               user_properties (array of [key, value] arrays, in order),
//	               payload_format (0 or 1), expiry (message expiry interval, seconds):
//	               each only when the MQTT 5 publish had it
//
// Consecutive local messages to the same exchange may travel as one AMQP
// message, a batch, built from what queued up while the previous publish
// was under way, so light traffic is never delayed and a message that
// finds nothing queued goes alone, with its own key. RabbitMQ's cost is
// mostly per AMQP message, so batching is what lets federation keep up
// with a busy node. A batch is published with its first message's key and
// lists its other distinct keys (at most 128, 16 KiB in all) in RabbitMQ's
// BCC header, which RabbitMQ routes by and removes before delivery:
//
//	headers        origin; type: "batch"; count: number of messages; BCC (array of keys)
//	body           per message: a 4-byte big-endian length and a JSON object with the
//	               header names above (topic, qos, retain, ts, content_type, …; bytes
//	               base64 as JSON does), then a 4-byte length and the payload
//
// RabbitMQ delivers a batch once to every node bound to any of its keys,
// and to no other node. Such a node may thus receive, in a batch with
// messages it wants, messages it has no binding for; its engine hands each
// message to the local subscriptions that match it, as always, so these go
// to no one. Subscribers get what they would without batches; under load,
// interest decides where traffic goes per batch rather than per message.
//
// A receiving node ignores messages whose origin is itself, publishes the
// others to its local subscribers (each at the lower of its subscription's
// QoS and the message's) and acknowledges them after that, in batches.
//
// # Retained messages
//
// Every node keeps every retained message. Versions of one topic's
// retained message are ordered by (ts, writer node id): a node stores a
// version only if it is newer than the one it holds, a clear included (a
// clear is remembered, so an older message arriving late does not undo
// it); an older version still reaches current subscribers as an ordinary
// message. Local stamps never go backwards behind stamps seen from peers.
// The order is decided just before the engine stores a message, not in
// one step with it: a local and a remote version of one topic handled by
// a node at the same instant can be stored in the opposite order (a known
// limitation; closing it needs the engine to store under the decision).
//
// When a node connects (at start and after every reconnect) it publishes a
// sync request to colony.retained (headers origin, type "sync_request";
// reply_to: its queue) and offers its own retained messages and clears to
// all nodes as sync messages (type "sync"; writer: the node that published
// that version, when not the sender; ts). Every other node answers a
// request with its retained messages and clears, sent to the requester's
// queue through the default exchange, followed by a message of type
// "sync_done". A sync message is stored if newer, and then also reaches
// current subscribers; an older one is dropped. Start waits for the first
// "sync_done" (at most Options.SyncWait), so clients of a node that joins
// later find the cluster's retained messages. Clears are remembered in
// memory only: a clear made while a node was away reaches it when it
// rejoins only if a node that saw the clear is still running.
//
// # Users and sessions
//
// Federation also implements server.Cluster, so that the gateway's
// PushUser, PushClient, KickUser, KickClient and single login reach the
// whole cluster. The node's queue is bound on colony.msg with
// "user.<uid>" while the user has a connection on the node and with
// "client.<cid>" while the node holds the client's session (connected or
// persistent and away), ids escaped like topic levels. Control messages
// carry headers origin and type:
//
//	push      key user.<uid> or client.<cid>; headers user or client, topic, qos;
//	          body the payload. Each receiving node pushes to its own connections.
//	kick      key user.<uid> or client.<cid>; headers user or client, reason.
//	takeover  key client.<cid>, mandatory; headers client and wait_ms (int64:
//	          how long the asker waits for the answer), reply_to and
//	          correlation_id; with clean=true the holder drops the session (a
//	          clean start elsewhere) and answers with an empty body once it has,
//	          else it hands the session over. (A clean takeover without reply_to,
//	          from an older node, is not answered.)
//	session   the answer, sent to the asker's queue through the default
//	          exchange with the correlation_id: the session as JSON (client,
//	          subscriptions, inflight: the records the store keeps; unsent:
//	          the packet ids of the inflight messages never sent to the
//	          client, which go out without DUP), or an empty body when the
//	          node had none to give (or dropped it).
//
// When a client connects (after authentication, before the engine looks
// for its session) to a node that does not hold its session, the node
// publishes a takeover. Nobody holds it: RabbitMQ returns the unroutable
// message at once and the client starts fresh. A node holds it: that
// node closes the client's connection there (MQTT 5 reason 0x8E, session
// taken over), removes the session (subscriptions first, so nothing more
// is routed to it, then the queued messages) and sends it; the new node
// installs it as if restored from its store, binds its filters, and only
// then answers CONNACK with session present, then resends the queued
// messages in order. An MQTT 5 will waiting for its Will Delay Interval
// moves with the session, and the resuming connection cancels it; after a
// clean start the old node publishes it at once, as the session ended.
// The connecting client waits at most Options.TakeoverWait for the
// answer, after a clean start too (until the old node has dropped the
// session, so that a reconnection there does not find it). Two takeovers
// of one client release in turn. The holder gives a session up for a takeover that waits for it
// only within three quarters of the shorter of its own TakeoverWait and
// wait_ms (its old connection
// still closing then, it keeps the session and answers with an empty
// body), so the answer has time to arrive; one that still comes too late
// is lost, logged and counted (colony_federation_sessions_lost_total).
// Connections of one client id to one node claim in turn, so a second
// finds the session the first adopted. A node that releases a session
// while its client is reconnecting there ends that connection too, once
// the engine has established it.
// Messages published on a third
// node between the old node's unbinding and the new node's binding (a
// few milliseconds) miss the session, and a client that reconnects
// elsewhere before its first node has bound its key is not found there.
// A client connecting to the node holding its session and to another at
// the same moment can stay connected on both: the holder, seeing its own
// session, does not claim, and the other node's takeover may take the
// session before the holder's new connection inherits it.
//
// Every node also tells the others which users have connections on it,
// so that each gateway can report users online elsewhere to its modules
// (server.Watch events RemoteOnline and RemoteOffline; the im module's
// presence counts them). Reports go to colony.msg with key "users", which
// every node binds; headers origin and type "users", a JSON body:
//
//	{"online":["carol"],"offline":["bob"],"ttl_ms":30000}     changes, sent as they happen
//	{"full":true,"users":["alice","carol"],"ttl_ms":30000}    every user connected there
//
// A full report goes out every Options.UsersInterval (10 s), after the
// node (re)joins, and when another node asks with type "users_request"
// (which a node sends when it joins); a stopping node sends an empty full
// report. A receiver replaces what it knew of the sender on a full
// report, and forgets the sender's users when it has heard nothing from
// it for ttl_ms (three intervals): after a crash or a lost RabbitMQ
// connection, a node's users count as offline elsewhere after at most
// that long. A full report lists every user of the node, so its size
// grows with the node's users (about 10 bytes each).
//
// # Guarantees
//
// Messages between two nodes keep the order of each publisher. A message
// is published to RabbitMQ before its publisher's PUBACK (QoS 1) but
// without waiting for RabbitMQ's confirmation: confirmations are counted
// asynchronously (a refusal is counted as Nacked and logged once per
// connection; publishes unconfirmed when a connection drops as
// Unconfirmed), which keeps a QoS 1 publisher's throughput at RabbitMQ's
// pace instead of one round trip per message. At most Options.Window
// publishes await confirmation; beyond that publishers wait (back-pressure,
// as for a slow subscriber) for at most Options.PublishPatience, after
// which RabbitMQ counts as stalled and messages stay local (counted as
// Unsent) until it confirms again. The receiving node acknowledges a
// message only after its engine has handed it to every local subscriber.
// While both nodes and RabbitMQ stay up, a QoS 1 message therefore reaches
// every subscriber of every node. The node queues are exclusive and not
// durable: messages queued for a node are lost when its connection drops
// or RabbitMQ restarts, and messages published while a node is
// disconnected from RabbitMQ are not federated (counted as Unsent).
//
// # Faults
//
// If RabbitMQ is unreachable, local publishing and delivery go on;
// federation retries with a jittered backoff from 100ms to 5s, then
// declares its queue again, binds every current filter, and syncs
// retained messages with its peers. While RabbitMQ blocks publishers
// (connection.blocked) messages stay local. Each of these events is one
// log line.
package cluster
