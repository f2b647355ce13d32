package im

import (
	"encoding/binary"
	"fmt"
	"strings"

	"github.com/colonymq/colony/store"
)

// convRecord is a conversation as stored. LastSeq is written in the same
// batch as each entry, so after a crash it never lags the log.
type convRecord struct {
	ID        string   `json:"id"`
	Kind      Kind     `json:"kind"`
	Title     string   `json:"title,omitempty"`
	Public    bool     `json:"public,omitempty"`
	Users     []string `json:"users,omitempty"` // direct: the two users, sorted
	CreatedBy string   `json:"created_by"`
	CreatedAt int64    `json:"created_at"`
	FirstSeq  uint64   `json:"first_seq"`
	LastSeq   uint64   `json:"last_seq"`
	LastTS    int64    `json:"last_ts,omitempty"` // time of the last entry
}

// inboxRecord is the per-user side of a membership.
type inboxRecord struct {
	Muted bool `json:"muted,omitempty"`
}

// stores holds the module's buckets. Keys join their parts with 0x00,
// which user ids (checked by validUser), conversation ids (generated) and
// the separators of MQTT topics never contain; sequence numbers are 8
// bytes big-endian so that key order is log order.
type stores struct {
	db      *store.DB
	convs   *store.Bucket[convRecord]  // conv -> record
	direct  *store.Bucket[string]      // user a 0 user b (sorted) -> conv
	members *store.Bucket[Member]      // conv 0 user -> member
	inbox   *store.Bucket[inboxRecord] // user 0 conv -> the user's side
	msgs    *store.Bucket[Message]     // conv 0 seq -> entry
	dedup   *store.Bucket[uint64]      // conv 0 user 0 client id -> seq
	hidden  *store.Bucket[int64]       // conv 0 user 0 seq -> when hidden (delete-for-me)
	blocks  *store.Bucket[int64]       // blocker 0 blocked -> since when
	seen    *store.Bucket[int64]       // user -> end of their last connection
}

func openStores(db *store.DB, module string) (*stores, error) {
	s := &stores{db: db}
	o := &store.Opener{DB: db, Module: module}
	s.convs = store.OpenBucket[convRecord](o, "convs")
	s.direct = store.OpenBucket[string](o, "direct")
	s.members = store.OpenBucket[Member](o, "members")
	s.inbox = store.OpenBucket[inboxRecord](o, "inbox")
	s.msgs = store.OpenBucket[Message](o, "msgs")
	s.dedup = store.OpenBucket[uint64](o, "dedup")
	s.hidden = store.OpenBucket[int64](o, "hidden")
	s.blocks = store.OpenBucket[int64](o, "blocks")
	s.seen = store.OpenBucket[int64](o, "seen")
	return s, o.Err
}

const sep = "\x00"

func key(parts ...string) string { return strings.Join(parts, sep) }

func seqKey(seq uint64) string {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], seq)
	return string(b[:])
}

func keySeq(k string) uint64 {
	if len(k) < 8 {
		return 0
	}
	return binary.BigEndian.Uint64([]byte(k[len(k)-8:]))
}

func msgKey(conv string, seq uint64) string { return conv + sep + seqKey(seq) }

func hiddenKey(conv, user string, seq uint64) string { return key(conv, user, seqKey(seq)) }

// directKey is the same whichever user asks.
func directKey(a, b string) string {
	if b < a {
		a, b = b, a
	}
	return key(a, b)
}

// entries returns the stored entries of conv with from <= seq <= to, in
// order, leaving out those in skip.
func (s *stores) entries(conv string, from, to uint64, skip map[uint64]bool) ([]Message, error) {
	out := []Message{}
	if from > to {
		return out, nil
	}
	end := ""
	if to < ^uint64(0) {
		end = msgKey(conv, to+1)
	}
	err := s.msgs.ScanRange(msgKey(conv, from), end, func(_ string, m Message) bool {
		if !skip[m.Seq] {
			out = append(out, m)
		}
		return true
	})
	if err != nil {
		return nil, fmt.Errorf("read entries %d..%d of %s: %w", from, to, conv, err)
	}
	return out, nil
}

// hiddenSet returns the seqs of conv in from..to that user deleted for
// themselves.
func (s *stores) hiddenSet(conv, user string, from, to uint64) (map[uint64]bool, error) {
	var set map[uint64]bool
	err := s.hidden.ScanRange(hiddenKey(conv, user, from), hiddenKey(conv, user, to)+sep, func(k string, _ int64) bool {
		if set == nil {
			set = map[uint64]bool{}
		}
		set[keySeq(k)] = true
		return true
	})
	if err != nil {
		return nil, fmt.Errorf("read hidden entries of %s: %w", conv, err)
	}
	return set, nil
}

// blocked reports whether blocker blocks user.
func (s *stores) blocked(blocker, user string) (bool, error) {
	_, ok, err := s.blocks.Get(key(blocker, user))
	if err != nil {
		return false, fmt.Errorf("read blocks of %s: %w", blocker, err)
	}
	return ok, nil
}

// blockedBy returns the users user blocks.
func (s *stores) blockedBy(user string) ([]string, error) {
	out := []string{}
	err := s.blocks.Scan(user+sep, func(k string, _ int64) bool {
		out = append(out, k[len(user)+1:])
		return true
	})
	if err != nil {
		return nil, fmt.Errorf("read blocks of %s: %w", user, err)
	}
	return out, nil
}

// convsOf returns the ids of user's conversations with their inbox records.
func (s *stores) convsOf(user string) (map[string]inboxRecord, error) {
	out := map[string]inboxRecord{}
	err := s.inbox.Scan(user+sep, func(k string, r inboxRecord) bool {
		out[k[len(user)+1:]] = r
		return true
	})
	if err != nil {
		return nil, fmt.Errorf("read conversations of %s: %w", user, err)
	}
	return out, nil
}
