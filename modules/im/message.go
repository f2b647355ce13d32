package im

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"unicode/utf8"

	"github.com/colonymq/colony/rpc"
	"github.com/colonymq/colony/store"
)

// Paging limits, in entries.
const (
	defaultHistory = 50
	maxHistory     = 500
	defaultSync    = 100
	maxSync        = 1000
	maxSyncTotal   = 5000 // entries in one sync reply, all conversations together
	maxDeleteSeqs  = 1000 // seqs in one delete_for_me
)

// checkContent validates a message's content.
func (m *Module) checkContent(text string, data json.RawMessage, bin []byte) error {
	n := len(text) + len(data) + len(bin)
	switch {
	case n == 0:
		return rpc.Errorf(rpc.CodeBadRequest, "empty message: give text, data or bin")
	case n > m.opts.MaxMessageBytes:
		return rpc.Errorf(rpc.CodeBadRequest, "%d bytes of content, at most %d: %w", n, m.opts.MaxMessageBytes, ErrTooLarge)
	case !utf8.ValidString(text):
		return rpc.Errorf(rpc.CodeBadRequest, "text is not UTF-8 (send bytes as bin)")
	case len(data) > 0 && !json.Valid(data):
		return rpc.Errorf(rpc.CodeBadRequest, "data is not JSON")
	}
	return nil
}

// runHooks passes msg through the send hooks; see SendHook.
func (m *Module) runHooks(ctx context.Context, msg *Message) error {
	m.hookMu.RLock()
	hooks := m.hooks
	m.hookMu.RUnlock()
	for _, h := range hooks {
		draft := *msg
		if err := h(ctx, &draft); err != nil {
			var re *rpc.Error
			if errors.As(err, &re) {
				return err
			}
			// One %w for rpc.Errorf, which keeps a single cause; the
			// cause keeps both, so errors.Is finds either.
			return rpc.Errorf(rpc.CodeForbidden, "%w", fmt.Errorf("%w: %w", ErrRejected, err))
		}
		msg.Text, msg.Data, msg.Bin = draft.Text, draft.Data, draft.Bin
	}
	if len(hooks) > 0 {
		return m.checkContent(msg.Text, msg.Data, msg.Bin)
	}
	return nil
}

// beginAppend takes conversation id's appendMu for user, who must be a
// member and, when write is set, allowed to write there. It returns the
// conversation and a copy of user's membership; the caller unlocks
// c.appendMu. While appendMu is held c.rec may be read without mu: every
// writer of c.rec holds both locks.
func (m *Module) beginAppend(id, user string, write bool) (*conv, Member, error) {
	c, err := m.conv(id)
	if err != nil {
		return nil, Member{}, err
	}
	c.appendMu.Lock()
	c.mu.Lock()
	mem, err := c.member(user)
	var mc Member
	if err == nil {
		mc = *mem
		if write && !c.canWrite(mem) {
			err = rpc.Errorf(rpc.CodeForbidden, "only the owner and admins post in channel %s: %w", c.rec.ID, ErrNotAllowed)
		}
	}
	c.mu.Unlock()
	if err == nil && write {
		err = m.checkBlocked(c.rec, user)
	}
	if err != nil {
		c.appendMu.Unlock()
		return nil, Member{}, err
	}
	return c, mc, nil
}

// appendEntry gives e the next sequence number of c, whose appendMu the
// caller holds, and the server's time; stores it with the writes extra
// adds; and publishes it to every member, the writer's devices included.
// Publishing before appendMu is released keeps deliveries in log order.
func (m *Module) appendEntry(ctx context.Context, c *conv, e *Message, extra func(b *store.Batch)) error {
	rec := c.rec
	e.Conv, e.Seq, e.TS = rec.ID, rec.LastSeq+1, now()
	rec.LastSeq, rec.LastTS = e.Seq, e.TS
	if rec.FirstSeq == 0 {
		rec.FirstSeq = e.Seq
	}
	b := m.st.db.NewBatch()
	m.st.msgs.PutIn(b, msgKey(rec.ID, e.Seq), *e)
	m.st.convs.PutIn(b, rec.ID, rec)
	if extra != nil {
		extra(b)
	}
	if err := b.Commit(ctx); err != nil {
		return fmt.Errorf("store entry %d of %s: %w", e.Seq, rec.ID, err)
	}
	c.mu.Lock()
	c.rec.LastSeq, c.rec.LastTS, c.rec.FirstSeq = rec.LastSeq, rec.LastTS, rec.FirstSeq
	if mem := c.members[e.From]; mem != nil { // one has read what one wrote
		m.advance(c, mem, e.Seq, e.Seq)
	}
	users := c.users()
	c.mu.Unlock()
	m.publish(users, TopicMsg, e, 1)
	return nil
}

// allowSend charges user's send rate.
func (m *Module) allowSend(user string) error {
	if wait, ok := m.sends.allow(user); !ok {
		return rpc.Errorf(rpc.CodeRateLimited, "more than %g sends a second (burst %d): retry in %s",
			m.opts.SendRate, m.opts.SendBurst, wait.Round(msRound))
	}
	return nil
}

// send stores a message and delivers it to every member, the sender's
// devices included. A send repeating the sender's client id in the
// conversation returns the stored message instead, with Duplicate set.
func (m *Module) send(ctx context.Context, req *SendReq) (*SendResult, error) {
	u, err := caller(ctx)
	if err != nil {
		return nil, err
	}
	if err := m.checkContent(req.Text, req.Data, req.Bin); err != nil {
		return nil, err
	}
	if len(req.ClientID) > maxIDLen {
		return nil, rpc.Errorf(rpc.CodeBadRequest, "client_id longer than %d bytes", maxIDLen)
	}
	msg := &Message{Conv: req.Conv, Type: TypeMsg, From: u, ClientID: req.ClientID, Text: req.Text, Data: req.Data, Bin: req.Bin}
	if err := m.runHooks(ctx, msg); err != nil {
		return nil, err
	}
	c, _, err := m.beginAppend(req.Conv, u, true)
	if err != nil {
		return nil, err
	}
	defer c.appendMu.Unlock()
	dk := key(c.rec.ID, u, req.ClientID)
	if req.ClientID != "" {
		// Under appendMu, so a resend racing the original waits for it.
		seq, ok, err := m.st.dedup.Get(dk)
		if err != nil {
			return nil, fmt.Errorf("look up client id: %w", err)
		}
		if ok {
			orig, found, err := m.st.msgs.Get(msgKey(c.rec.ID, seq))
			if err != nil {
				return nil, fmt.Errorf("read message %d: %w", seq, err)
			}
			if found {
				return &SendResult{Message: orig, Duplicate: true}, nil
			}
		}
	}
	if err := m.allowSend(u); err != nil {
		return nil, err
	}
	err = m.appendEntry(ctx, c, msg, func(b *store.Batch) {
		if req.ClientID != "" {
			m.st.dedup.PutIn(b, dk, msg.Seq)
		}
	})
	if err != nil {
		return nil, err
	}
	return &SendResult{Message: *msg}, nil
}

// message returns entry seq of c (appendMu held), which must be a message.
func (m *Module) message(c *conv, seq uint64) (Message, error) {
	orig, ok, err := m.st.msgs.Get(msgKey(c.rec.ID, seq))
	if err != nil {
		return orig, fmt.Errorf("read message %d: %w", seq, err)
	}
	if !ok || orig.Type != TypeMsg {
		return orig, rpc.Errorf(rpc.CodeBadRequest, "conversation %s has no message %d", c.rec.ID, seq)
	}
	if orig.Revoked {
		return orig, rpc.Errorf(rpc.CodeBadRequest, "message %d was revoked", seq)
	}
	return orig, nil
}

// edit replaces the content of one of the caller's messages: the message
// is updated in place and an edit entry carrying the new content goes to
// every member. It returns the edit entry.
func (m *Module) edit(ctx context.Context, req *EditReq) (*Message, error) {
	u, err := caller(ctx)
	if err != nil {
		return nil, err
	}
	if err := m.checkContent(req.Text, req.Data, req.Bin); err != nil {
		return nil, err
	}
	e := &Message{Conv: req.Conv, Type: TypeEdit, From: u, Ref: req.Seq, Text: req.Text, Data: req.Data, Bin: req.Bin}
	if err := m.runHooks(ctx, e); err != nil {
		return nil, err
	}
	c, _, err := m.beginAppend(req.Conv, u, true)
	if err != nil {
		return nil, err
	}
	defer c.appendMu.Unlock()
	orig, err := m.message(c, req.Seq)
	if err != nil {
		return nil, err
	}
	if orig.From != u {
		return nil, rpc.Errorf(rpc.CodeForbidden, "only its sender edits message %d: %w", req.Seq, ErrNotAllowed)
	}
	if err := m.allowSend(u); err != nil {
		return nil, err
	}
	err = m.appendEntry(ctx, c, e, func(b *store.Batch) {
		orig.Text, orig.Data, orig.Bin, orig.EditedTS = e.Text, e.Data, e.Bin, e.TS
		m.st.msgs.PutIn(b, msgKey(c.rec.ID, orig.Seq), orig)
	})
	if err != nil {
		return nil, err
	}
	return e, nil
}

// revoke deletes a message for everyone: its content, and that of its
// edits, is wiped from the store, and a revoke entry goes to every member.
// The sender may revoke their messages; in groups and channels the owner
// and admins may revoke anyone's. It returns the revoke entry.
func (m *Module) revoke(ctx context.Context, req *SeqReq) (*Message, error) {
	u, err := caller(ctx)
	if err != nil {
		return nil, err
	}
	// Revoking is not writing: a channel's members cannot revoke others'
	// messages anyway, and a block does not keep one's own messages there.
	c, mem, err := m.beginAppend(req.Conv, u, false)
	if err != nil {
		return nil, err
	}
	defer c.appendMu.Unlock()
	orig, err := m.message(c, req.Seq)
	if err != nil {
		return nil, err
	}
	moderator := c.rec.Kind != KindDirect && (mem.Role == RoleOwner || mem.Role == RoleAdmin)
	if orig.From != u && !moderator {
		return nil, rpc.Errorf(rpc.CodeForbidden, "only its sender, or the owner and admins of a group or channel, revoke message %d: %w",
			req.Seq, ErrNotAllowed)
	}
	// Edits carry content too. They come after the message; retention
	// bounds how far to look.
	later, err := m.st.entries(c.rec.ID, orig.Seq+1, c.rec.LastSeq, nil)
	if err != nil {
		return nil, err
	}
	e := &Message{Type: TypeRevoke, From: u, Ref: orig.Seq}
	err = m.appendEntry(ctx, c, e, func(b *store.Batch) {
		orig.Text, orig.Data, orig.Bin, orig.Revoked = "", nil, nil, true
		m.st.msgs.PutIn(b, msgKey(c.rec.ID, orig.Seq), orig)
		for _, l := range later {
			if l.Type == TypeEdit && l.Ref == orig.Seq {
				l.Text, l.Data, l.Bin = "", nil, nil
				m.st.msgs.PutIn(b, msgKey(c.rec.ID, l.Seq), l)
			}
		}
	})
	if err != nil {
		return nil, err
	}
	return e, nil
}

// deleteForMe hides entries from the caller alone: history and sync leave
// them out from now on, and the caller's devices hear of it on …/conv.
func (m *Module) deleteForMe(ctx context.Context, req *DeleteForMeReq) (*OK, error) {
	u, err := caller(ctx)
	if err != nil {
		return nil, err
	}
	if len(req.Seqs) == 0 || len(req.Seqs) > maxDeleteSeqs {
		return nil, rpc.Errorf(rpc.CodeBadRequest, "give 1 to %d seqs", maxDeleteSeqs)
	}
	c, _, err := m.lockMember(req.Conv, u)
	if err != nil {
		return nil, err
	}
	last := c.rec.LastSeq
	c.mu.Unlock()
	t := now()
	b := m.st.db.NewBatch()
	for _, s := range req.Seqs {
		if s == 0 || s > last {
			return nil, rpc.Errorf(rpc.CodeBadRequest, "conversation %s has no entry %d", req.Conv, s)
		}
		m.st.hidden.PutIn(b, hiddenKey(req.Conv, u, s), t)
	}
	if err := b.Commit(ctx); err != nil {
		return nil, fmt.Errorf("store deletion: %w", err)
	}
	m.publishConv([]string{u}, ConvEvent{Type: EventDeleted, Conv: req.Conv, Seqs: req.Seqs, TS: t})
	return &OK{}, nil
}

// visible returns the first and last entry user may see in c (locked):
// nothing before they joined a group, nothing retention deleted.
func visible(c *conv, mem *Member) (lo, hi uint64) {
	return max(c.rec.FirstSeq, mem.JoinedSeq+1, 1), c.rec.LastSeq
}

// history returns one page of a conversation's log; see HistoryReq.
func (m *Module) history(ctx context.Context, req *HistoryReq) (*HistoryResp, error) {
	u, err := caller(ctx)
	if err != nil {
		return nil, err
	}
	limit := uint64(pageLimit(req.Limit, defaultHistory, maxHistory))
	c, mem, err := m.lockMember(req.Conv, u)
	if err != nil {
		return nil, err
	}
	lo, hi := visible(c, mem)
	c.mu.Unlock()

	resp := &HistoryResp{}
	if req.After != nil {
		resp.From = max(addSat(*req.After, 1), lo)
		resp.To = min(addSat(resp.From, limit-1), hi)
		resp.More = resp.To < hi
	} else {
		before := req.Before
		if before == 0 || before > hi+1 {
			before = hi + 1
		}
		resp.To = before - 1
		resp.From = lo
		if resp.To >= lo+limit {
			resp.From = resp.To - limit + 1
		}
		resp.More = resp.From > lo
	}
	resp.Messages, err = m.visibleEntries(c.rec.ID, u, resp.From, resp.To)
	if err != nil {
		return nil, err
	}
	return resp, nil
}

// visibleEntries returns the entries from..to of conv that user has not
// deleted for themselves.
func (m *Module) visibleEntries(conv, user string, from, to uint64) ([]Message, error) {
	if from > to {
		return []Message{}, nil
	}
	hidden, err := m.st.hiddenSet(conv, user, from, to)
	if err != nil {
		return nil, err
	}
	return m.st.entries(conv, from, to, hidden)
}

// sync returns every conversation of the caller with what this device
// missed; see SyncReq.
func (m *Module) sync(ctx context.Context, req *SyncReq) (*SyncResp, error) {
	u, err := caller(ctx)
	if err != nil {
		return nil, err
	}
	limit := uint64(pageLimit(req.Limit, defaultSync, maxSync))
	views, err := m.views(u)
	if err != nil {
		return nil, err
	}
	resp := &SyncResp{Conversations: make([]SyncConv, 0, len(views))}
	budget := uint64(maxSyncTotal) // keeps one reply a sane size for a user in many conversations
	for _, v := range views {
		lo, hi := max(v.FirstSeq, v.JoinedSeq+1, 1), v.LastSeq
		from := lo
		if seen, ok := req.Since[v.ID]; ok {
			from = max(addSat(seen, 1), lo)
		}
		sc := SyncConv{Conversation: v, Messages: []Message{}, More: from <= hi}
		if n := min(limit, budget); n > 0 && from <= hi {
			to := min(addSat(from, n-1), hi)
			budget -= to - from + 1
			if sc.Messages, err = m.visibleEntries(v.ID, u, from, to); err != nil {
				return nil, err
			}
			sc.More = to < hi
		}
		resp.Conversations = append(resp.Conversations, sc)
	}
	return resp, nil
}

// addSat adds without wrapping around: sequence numbers from clients can
// be anything.
func addSat(a, b uint64) uint64 {
	if a > math.MaxUint64-b {
		return math.MaxUint64
	}
	return a + b
}

func pageLimit(asked, def, most int) int {
	if asked <= 0 {
		return def
	}
	return min(asked, most)
}
