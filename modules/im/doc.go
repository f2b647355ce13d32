// Package im is Colony's instant-messaging module: direct conversations,
// groups and broadcast channels; messages with server-assigned sequence
// numbers, idempotent resends, edits, revocations and delete-for-me;
// paged history and offline sync; delivered and read receipts, typing
// indicators and presence; blocks, mutes, a send rate limit and a hook
// that may rewrite or refuse messages.
//
// # API
//
// Clients call handlers with MQTT request/response on $rpc/im/<handler>
// and receive deliveries on their own topics im/u/<uid>/{msg, receipt,
// typing, presence, conv}. Other modules call the same handlers with
// rpc.Call and the request types of this package. Either way the user is
// the caller's rpc.Caller.UserID (the username with password
// authentication, or whatever a module bound with server.API.BindUser);
// callers without one get forbidden. README.md, next to this file,
// documents every handler and topic with example JSON.
//
// The module guards im/u/# (Module.Guards, a server.TopicGuard): a client
// may subscribe only to its own user's topics, and no client may publish
// under im/u/, with or without an ACL file. The App installs the guard on
// every node that offers the module, also where it is not enabled.
//
// # Web demo
//
// Module.Web serves a chat page (web/, embedded) that the App mounts at
// /im/ on the node's HTTP listener: plain JavaScript on MQTT.js over the
// WebSocket listener, logging in with the login handler on a node that
// trusts its loopback clients, or with a password. README.md tells how
// to open it and how its browser test runs.
//
// # Model
//
// Every conversation is a log of entries numbered 1, 2, 3, … by the
// server. A message is an entry; so are its edits and revocations, which
// also update the message in place. A device that remembers the last
// sequence number it saw per conversation gets exactly what it missed from
// the sync handler, edits and revocations included. Delivered and read
// positions are sequence numbers too, one pair per member (shared by the
// member's devices).
//
// # Storage and clusters
//
// Everything lives in the node's store (buckets mod/im/*); an entry, its
// client id and its conversation's new last sequence number are committed
// in one batch, so a crash never leaves a duplicate or a gap behind.
// Receipt positions are written behind, every Options.FlushInterval and
// at Stop. Loaded conversations stay cached in memory, which is sound
// because the module is their only writer: run im on one node of a
// cluster (modules.enabled) and reach it from the others over RPC, which
// is what keeps sequence numbers unique per conversation. Deliveries are
// ordinary publishes, which message federation carries to users connected
// to other nodes. Presence counts the connections of every node: message
// federation reports users connected elsewhere (server.RemoteOnline and
// server.RemoteOffline).
package im
