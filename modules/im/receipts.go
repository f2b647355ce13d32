package im

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"

	"github.com/colonymq/colony/rpc"
)

// flushChunk bounds the member records of one flush batch.
const flushChunk = 1000

// delivered moves the caller's delivered position forward.
func (m *Module) delivered(ctx context.Context, req *AckReq) (*Receipt, error) {
	return m.ack(ctx, req, false)
}

// read moves the caller's read position (and delivered, which is never
// behind it) forward.
func (m *Module) read(ctx context.Context, req *AckReq) (*Receipt, error) {
	return m.ack(ctx, req, true)
}

// ack moves a position and queues the news for the receipts worker.
// Positions only move forward and never past the last entry; an ack that
// moves nothing tells nobody.
func (m *Module) ack(ctx context.Context, req *AckReq, read bool) (*Receipt, error) {
	u, err := caller(ctx)
	if err != nil {
		return nil, err
	}
	c, mem, err := m.lockMember(req.Conv, u)
	if err != nil {
		return nil, err
	}
	defer c.mu.Unlock()
	seq := min(req.Seq, c.rec.LastSeq)
	readTo := mem.ReadSeq
	if read {
		readTo = max(readTo, seq)
	}
	if m.advance(c, mem, readTo, seq) {
		m.receipts.add(c, u)
	}
	return &Receipt{Conv: c.rec.ID, User: u, ReadSeq: mem.ReadSeq, DeliveredSeq: mem.DeliveredSeq, TS: now()}, nil
}

// receipts collects the members whose positions moved, per conversation,
// for a worker that publishes them. Acks that arrive while the worker is
// busy merge into its next round, so a busy group costs one event per
// member and round rather than one per member and ack: without that, 100
// members reading every message would send 10,000 receipts per message.
type receipts struct {
	m       *Module
	mu      sync.Mutex
	pending map[*conv]map[string]bool
	wake    chan struct{}
}

func newReceipts(m *Module) *receipts {
	return &receipts{m: m, pending: map[*conv]map[string]bool{}, wake: make(chan struct{}, 1)}
}

func (r *receipts) add(c *conv, user string) {
	r.mu.Lock()
	users := r.pending[c]
	if users == nil {
		users = map[string]bool{}
		r.pending[c] = users
	}
	users[user] = true
	r.mu.Unlock()
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// run publishes rounds until stop is closed.
func (r *receipts) run(stop <-chan struct{}) {
	for {
		select {
		case <-stop:
			return
		case <-r.wake:
			r.process()
		}
	}
}

// process publishes one round: for each conversation the current positions
// of the members that moved. In a direct conversation and a group of up
// to smallGroup members everyone hears of everyone; in a larger group or a
// channel each member hears only of their own (their other devices do),
// and asks the members handler for the others'.
func (r *receipts) process() {
	r.mu.Lock()
	round := r.pending
	r.pending = map[*conv]map[string]bool{}
	r.mu.Unlock()
	for c, users := range round {
		c.mu.Lock()
		ev := ReceiptEvent{Conv: c.rec.ID}
		t := now()
		for u := range users {
			if mem := c.members[u]; mem != nil {
				ev.Receipts = append(ev.Receipts, Receipt{Conv: c.rec.ID, User: u, ReadSeq: mem.ReadSeq, DeliveredSeq: mem.DeliveredSeq, TS: t})
			}
		}
		everyone := c.rec.Kind == KindDirect || c.rec.Kind == KindGroup && len(c.members) <= smallGroup
		var to []string
		if everyone {
			to = c.users()
		}
		c.mu.Unlock()
		if len(ev.Receipts) == 0 {
			continue
		}
		slices.SortFunc(ev.Receipts, func(a, b Receipt) int { return strings.Compare(a.User, b.User) })
		if everyone {
			r.m.publish(to, TopicReceipt, &ev, 1)
			continue
		}
		for _, rc := range ev.Receipts {
			r.m.publish([]string{rc.User}, TopicReceipt, &ReceiptEvent{Conv: ev.Conv, Receipts: []Receipt{rc}}, 1)
		}
	}
}

// advance moves mem's positions (c locked) to at least read and delivered,
// keeping delivered >= read, and reports whether either moved. Positions
// reach the store at the next flush.
func (m *Module) advance(c *conv, mem *Member, read, delivered uint64) bool {
	nr := max(mem.ReadSeq, read)
	nd := max(mem.DeliveredSeq, delivered, nr)
	if nr == mem.ReadSeq && nd == mem.DeliveredSeq {
		return false
	}
	mem.ReadSeq, mem.DeliveredSeq = nr, nd
	c.dirty[mem.User] = true
	m.mu.Lock()
	m.dirty[c.rec.ID] = c
	m.mu.Unlock()
	return true
}

// flush writes the positions that moved since the last flush. They merge
// into the stored records (each keeps the larger value), so a record that
// a kick or a leave deleted meanwhile stays deleted, and a stale flush
// never moves a position back.
func (m *Module) flush(ctx context.Context) error {
	m.mu.Lock()
	dirty := m.dirty
	m.dirty = map[string]*conv{}
	m.mu.Unlock()
	type pos struct {
		c               *conv
		key             string
		user            string
		read, delivered uint64
	}
	var all []pos
	for _, c := range dirty {
		c.mu.Lock()
		for u := range c.dirty {
			if mem := c.members[u]; mem != nil {
				all = append(all, pos{c, key(c.rec.ID, u), u, mem.ReadSeq, mem.DeliveredSeq})
			}
		}
		clear(c.dirty)
		c.mu.Unlock()
	}
	for len(all) > 0 {
		chunk := all[:min(len(all), flushChunk)]
		all = all[len(chunk):]
		b := m.st.db.NewBatch()
		for _, p := range chunk {
			m.st.members.UpdateIn(b, p.key, func(v Member, ok bool) (Member, bool) {
				v.ReadSeq, v.DeliveredSeq = max(v.ReadSeq, p.read), max(v.DeliveredSeq, p.delivered)
				return v, ok
			})
		}
		if err := b.Commit(ctx); err != nil {
			// Keep what was not saved for the next flush.
			for _, p := range slices.Concat(chunk, all) {
				p.c.mu.Lock()
				if mem := p.c.members[p.user]; mem != nil {
					p.c.dirty[p.user] = true
					m.mu.Lock()
					m.dirty[p.c.rec.ID] = p.c
					m.mu.Unlock()
				}
				p.c.mu.Unlock()
			}
			return fmt.Errorf("save %d positions: %w", len(chunk)+len(all), err)
		}
	}
	return nil
}

// typingNow tells the other members that the caller started or stopped
// typing. Nothing is stored, and events beyond a few a second per
// conversation are dropped without an error: they are only hints.
func (m *Module) typingNow(ctx context.Context, req *TypingReq) (*OK, error) {
	u, err := caller(ctx)
	if err != nil {
		return nil, err
	}
	c, mem, err := m.lockMember(req.Conv, u)
	if err != nil {
		return nil, err
	}
	rec, write := c.rec, c.canWrite(mem)
	others := make([]string, 0, len(c.members))
	for o := range c.members {
		if o != u {
			others = append(others, o)
		}
	}
	c.mu.Unlock()
	if !write {
		return nil, rpc.Errorf(rpc.CodeForbidden, "only the owner and admins post in channel %s: %w", rec.ID, ErrNotAllowed)
	}
	if err := m.checkBlocked(rec, u); err != nil {
		return nil, err
	}
	if _, ok := m.typing.allow(key(u, req.Conv)); ok {
		m.publish(others, TopicTyping, &Typing{Conv: req.Conv, User: u, Typing: req.Typing, TS: now()}, 0)
	}
	return &OK{}, nil
}
