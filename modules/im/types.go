package im

import "encoding/json"

// Kind is what sort of conversation one is.
type Kind string

// Conversation kinds.
const (
	KindDirect  Kind = "direct"  // two users, both writing; made by the direct handler
	KindGroup   Kind = "group"   // members with roles, every member writes
	KindChannel Kind = "channel" // broadcast: the owner and admins write, members read
)

// Role is a member's standing in a conversation.
type Role string

// Member roles. A direct conversation has two members of RoleMember.
const (
	RoleOwner  Role = "owner"  // one per group or channel: everything an admin can, plus roles
	RoleAdmin  Role = "admin"  // invites, kicks members, revokes anyone's messages, writes in channels
	RoleMember Role = "member" // reads; writes in direct conversations and groups
)

// EntryType says what an entry of a conversation's log is. Edits and
// revocations are entries of their own, with their own sequence numbers,
// so a client that pulls the entries after its last seen sequence learns
// about them too.
type EntryType string

// Entry types.
const (
	TypeMsg    EntryType = "msg"    // a message
	TypeEdit   EntryType = "edit"   // Ref's content is now this entry's
	TypeRevoke EntryType = "revoke" // Ref was deleted for everyone
)

// Message is one entry of a conversation's log, as stored, answered and
// delivered on im/u/<uid>/msg. A message entry (type "msg") is kept up to
// date: after an edit it holds the new content and EditedTS, after a
// revocation no content and Revoked.
type Message struct {
	Conv     string    `json:"conv"`
	Seq      uint64    `json:"seq"`                 // assigned by the server, from 1, per conversation
	Type     EntryType `json:"type"`                // msg, edit or revoke
	From     string    `json:"from"`                // the sender's user id
	TS       int64     `json:"ts"`                  // server time, Unix milliseconds
	ClientID string    `json:"client_id,omitempty"` // the sender's id for this message: a resend with it is not stored twice
	// Content: any of the three, within Options.MaxMessageBytes together.
	Text     string          `json:"text,omitempty"`
	Data     json.RawMessage `json:"data,omitempty"` // any JSON value
	Bin      []byte          `json:"bin,omitempty"`  // bytes; base64 in JSON
	Ref      uint64          `json:"ref,omitempty"`  // edit, revoke: the message they change
	EditedTS int64           `json:"edited_ts,omitempty"`
	Revoked  bool            `json:"revoked,omitempty"`
}

// Conversation is a conversation as one member sees it.
type Conversation struct {
	ID        string `json:"id"`
	Kind      Kind   `json:"kind"`
	Title     string `json:"title,omitempty"`
	Public    bool   `json:"public,omitempty"` // anyone may join
	Peer      string `json:"peer,omitempty"`   // direct: the other user
	CreatedBy string `json:"created_by"`
	CreatedAt int64  `json:"created_at"` // Unix milliseconds
	Members   int    `json:"members"`    // how many
	FirstSeq  uint64 `json:"first_seq"`  // oldest entry kept (retention): 0 before the first entry, last_seq+1 when none is kept
	LastSeq   uint64 `json:"last_seq"`   // newest entry
	LastTS    int64  `json:"last_ts"`    // when the newest entry was added, Unix ms; 0 before the first
	// The caller's own standing.
	Role         Role   `json:"role"`
	JoinedSeq    uint64 `json:"joined_seq"` // entries up to this one were before the caller joined: not visible
	ReadSeq      uint64 `json:"read_seq"`
	DeliveredSeq uint64 `json:"delivered_seq"`
	Muted        bool   `json:"muted,omitempty"`
}

// Member is one member of a conversation, with their receipts.
type Member struct {
	User         string `json:"user"`
	Role         Role   `json:"role"`
	JoinedAt     int64  `json:"joined_at"` // Unix milliseconds
	JoinedSeq    uint64 `json:"joined_seq"`
	ReadSeq      uint64 `json:"read_seq"`
	DeliveredSeq uint64 `json:"delivered_seq"`
}

// Receipt is a member's positions in a conversation.
type Receipt struct {
	Conv         string `json:"conv"`
	User         string `json:"user"`
	ReadSeq      uint64 `json:"read_seq"`
	DeliveredSeq uint64 `json:"delivered_seq"`
	TS           int64  `json:"ts"`
}

// ReceiptEvent reports members whose positions moved, with their current
// positions; delivered on im/u/<uid>/receipt. Several acks may arrive as
// one event.
type ReceiptEvent struct {
	Conv     string    `json:"conv"`
	Receipts []Receipt `json:"receipts"`
}

// Typing says a member started or stopped typing; delivered on
// im/u/<uid>/typing, never stored.
type Typing struct {
	Conv   string `json:"conv"`
	User   string `json:"user"`
	Typing bool   `json:"typing"`
	TS     int64  `json:"ts"`
}

// Presence is a user's online state; delivered on im/u/<uid>/presence.
type Presence struct {
	User     string `json:"user"`
	Online   bool   `json:"online"`
	LastSeen int64  `json:"last_seen,omitempty"` // when offline: the end of their last connection, Unix ms; 0 never seen
}

// ConvEventType says what changed in a conversation.
type ConvEventType string

// Conversation events, delivered on im/u/<uid>/conv.
const (
	EventCreated ConvEventType = "created"        // a conversation with you in it was made
	EventJoined  ConvEventType = "joined"         // User joined (By: who invited them, if anyone)
	EventLeft    ConvEventType = "left"           // User left
	EventKicked  ConvEventType = "kicked"         // User was removed By someone
	EventRole    ConvEventType = "role"           // User's role is now Role
	EventMuted   ConvEventType = "muted"          // you (un)muted it, on one of your devices
	EventDeleted ConvEventType = "deleted_for_me" // you deleted Seqs for yourself, on one of your devices
)

// ConvEvent is a change of a conversation or of your view of it. It names
// the conversation only: fetch it with get when the details matter.
type ConvEvent struct {
	Type  ConvEventType `json:"type"`
	Conv  string        `json:"conv"`
	User  string        `json:"user,omitempty"`
	By    string        `json:"by,omitempty"`
	Role  Role          `json:"role,omitempty"`
	Muted bool          `json:"muted,omitempty"`
	Seqs  []uint64      `json:"seqs,omitempty"`
	TS    int64         `json:"ts"`
}

// OK is the result of handlers that have nothing to report: {}.
type OK struct{}

// Me is the result of the me handler.
type Me struct {
	User  string `json:"user"`  // the caller's user id
	Topic string `json:"topic"` // the filter to subscribe to for deliveries
}

// LoginReq chooses the caller's user id (login).
type LoginReq struct {
	User string `json:"user"`
}

// ConvReq names a conversation: get, join, leave, members.
type ConvReq struct {
	Conv string `json:"conv"`
}

// DirectReq asks for the direct conversation with User.
type DirectReq struct {
	User string `json:"user"`
}

// CreateReq makes a group or channel; the caller becomes its owner.
type CreateReq struct {
	Kind    Kind     `json:"kind"` // "group" or "channel"
	Title   string   `json:"title,omitempty"`
	Public  bool     `json:"public,omitempty"`
	Members []string `json:"members,omitempty"` // user ids besides the caller
}

// ListResp lists the caller's conversations.
type ListResp struct {
	Conversations []Conversation `json:"conversations"`
}

// MembersResp lists a conversation's members.
type MembersResp struct {
	Members []Member `json:"members"`
}

// InviteReq adds users to a group or channel.
type InviteReq struct {
	Conv  string   `json:"conv"`
	Users []string `json:"users"`
}

// UserReq names a member of a conversation: kick.
type UserReq struct {
	Conv string `json:"conv"`
	User string `json:"user"`
}

// RoleReq sets a member's role; RoleOwner hands the conversation over.
type RoleReq struct {
	Conv string `json:"conv"`
	User string `json:"user"`
	Role Role   `json:"role"`
}

// MuteReq mutes or unmutes a conversation for the caller.
type MuteReq struct {
	Conv  string `json:"conv"`
	Muted bool   `json:"muted"`
}

// SendReq sends a message.
type SendReq struct {
	Conv     string          `json:"conv"`
	ClientID string          `json:"client_id,omitempty"`
	Text     string          `json:"text,omitempty"`
	Data     json.RawMessage `json:"data,omitempty"`
	Bin      []byte          `json:"bin,omitempty"`
}

// SendResult is the stored message; Duplicate is set when the send
// repeated an earlier one's client id, which is returned instead.
type SendResult struct {
	Message
	Duplicate bool `json:"duplicate,omitempty"`
}

// EditReq replaces the content of the caller's message Seq.
type EditReq struct {
	Conv string          `json:"conv"`
	Seq  uint64          `json:"seq"`
	Text string          `json:"text,omitempty"`
	Data json.RawMessage `json:"data,omitempty"`
	Bin  []byte          `json:"bin,omitempty"`
}

// SeqReq names one entry: revoke.
type SeqReq struct {
	Conv string `json:"conv"`
	Seq  uint64 `json:"seq"`
}

// DeleteForMeReq deletes entries for the caller alone.
type DeleteForMeReq struct {
	Conv string   `json:"conv"`
	Seqs []uint64 `json:"seqs"`
}

// HistoryReq asks for one page of a conversation's log. With After set,
// the page is the window of Limit sequence numbers after it; otherwise the
// window of Limit numbers before Before (0: after the newest entry, i.e.
// the latest page).
type HistoryReq struct {
	Conv   string  `json:"conv"`
	Before uint64  `json:"before,omitempty"`
	After  *uint64 `json:"after,omitempty"`
	Limit  int     `json:"limit,omitempty"` // default 50, at most 500
}

// HistoryResp is one page: the entries of the window From..To (inclusive)
// that exist and are visible to the caller, oldest first. More says that
// the log goes on beyond the window in the direction asked: continue with
// before = From, or after = To.
type HistoryResp struct {
	Messages []Message `json:"messages"`
	From     uint64    `json:"from"`
	To       uint64    `json:"to"`
	More     bool      `json:"more"`
}

// SyncReq asks for what the caller missed: Since maps conversation ids to
// the last sequence number this device has; conversations it does not
// list are sent from the start of what the caller may see.
type SyncReq struct {
	Since map[string]uint64 `json:"since,omitempty"`
	Limit int               `json:"limit,omitempty"` // entries per conversation; default 100, at most 1000
}

// SyncResp has every conversation of the caller with the entries after its
// Since position, oldest first: at most Limit per conversation and 5000 in
// all. More says there are more: sync again with the new positions.
type SyncResp struct {
	Conversations []SyncConv `json:"conversations"`
}

// SyncConv is one conversation in a sync.
type SyncConv struct {
	Conversation Conversation `json:"conversation"`
	Messages     []Message    `json:"messages"`
	More         bool         `json:"more"`
}

// AckReq moves the caller's delivered or read position forward to Seq.
type AckReq struct {
	Conv string `json:"conv"`
	Seq  uint64 `json:"seq"`
}

// TypingReq says the caller started (true) or stopped typing.
type TypingReq struct {
	Conv   string `json:"conv"`
	Typing bool   `json:"typing"`
}

// BlockReq names the user to block or unblock.
type BlockReq struct {
	User string `json:"user"`
}

// BlocksResp lists the users the caller blocks.
type BlocksResp struct {
	Users []string `json:"users"`
}

// PresenceReq asks for the presence of users.
type PresenceReq struct {
	Users []string `json:"users"`
}

// PresenceResp answers PresenceReq, in the order asked.
type PresenceResp struct {
	Users []Presence `json:"users"`
}
