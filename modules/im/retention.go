package im

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// sweepChunk bounds the entries deleted in one batch.
const sweepChunk = 1000

// Sweep applies retention now (it also runs every Options.SweepInterval):
// each conversation keeps its last Options.MaxMessages entries and those
// younger than Options.MaxAge. Deleting an entry also forgets its client
// id, so a resend of a message that retention deleted is stored again.
func (m *Module) Sweep(ctx context.Context) error {
	return m.sweepAt(ctx, time.Now())
}

func (m *Module) sweepAt(ctx context.Context, t time.Time) error {
	m.sends.prune()
	m.typing.prune()
	if m.opts.MaxMessages <= 0 && m.opts.MaxAge <= 0 {
		return nil
	}
	cutoff := t.Add(-time.Duration(m.opts.MaxAge)).UnixMilli()
	var ids []string
	var errs []error
	err := m.st.convs.Scan("", func(id string, rec convRecord) bool {
		if rec.FirstSeq == 0 || rec.FirstSeq > rec.LastSeq {
			return true // nothing kept
		}
		if m.opts.MaxMessages > 0 && rec.LastSeq-rec.FirstSeq >= uint64(m.opts.MaxMessages) {
			ids = append(ids, id)
			return true
		}
		if m.opts.MaxAge > 0 {
			first, ok, err := m.st.msgs.Get(msgKey(id, rec.FirstSeq))
			if err != nil {
				errs = append(errs, err)
			} else if !ok || first.TS < cutoff {
				ids = append(ids, id)
			}
		}
		return true
	})
	if err != nil {
		return fmt.Errorf("sweep conversations: %w", err)
	}
	for _, id := range ids {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := m.trim(ctx, id, cutoff); err != nil {
			errs = append(errs, fmt.Errorf("trim %s: %w", id, err))
		}
	}
	return errors.Join(errs...)
}

// trim deletes the entries of conversation id that retention no longer
// keeps, with their client ids and delete-for-me marks, and then moves its
// FirstSeq. A crash midway leaves FirstSeq behind; the next sweep goes on.
func (m *Module) trim(ctx context.Context, id string, cutoff int64) error {
	c, err := m.conv(id)
	if err != nil {
		return err
	}
	c.appendMu.Lock() // no entry is added meanwhile; c.rec is ours to read
	defer c.appendMu.Unlock()
	rec := c.rec
	keep := rec.FirstSeq // the first entry kept
	if n := uint64(m.opts.MaxMessages); m.opts.MaxMessages > 0 && rec.LastSeq-keep >= n {
		keep = rec.LastSeq - n + 1
	}
	if m.opts.MaxAge > 0 {
		err := m.st.msgs.ScanRange(msgKey(id, keep), msgKey(id, rec.LastSeq)+sep, func(_ string, e Message) bool {
			if e.TS >= cutoff {
				return false
			}
			keep = e.Seq + 1
			return true
		})
		if err != nil {
			return err
		}
	}
	if keep <= rec.FirstSeq {
		return nil
	}
	for from := rec.FirstSeq; from < keep; from += sweepChunk {
		to := min(from+sweepChunk, keep) - 1
		gone, err := m.st.entries(id, from, to, nil)
		if err != nil {
			return err
		}
		b := m.st.db.NewBatch()
		for _, e := range gone {
			m.st.msgs.DeleteIn(b, msgKey(id, e.Seq))
			if e.Type == TypeMsg && e.ClientID != "" {
				m.st.dedup.DeleteIn(b, key(id, e.From, e.ClientID))
			}
		}
		if err := b.Commit(ctx); err != nil {
			return err
		}
	}
	b := m.st.db.NewBatch()
	err = m.st.hidden.Scan(id+sep, func(k string, _ int64) bool {
		if keySeq(k) < keep {
			m.st.hidden.DeleteIn(b, k)
		}
		return true
	})
	if err != nil {
		return err
	}
	rec.FirstSeq = keep
	m.st.convs.PutIn(b, id, rec)
	if err := b.Commit(ctx); err != nil {
		return err
	}
	c.mu.Lock()
	c.rec.FirstSeq = keep
	c.mu.Unlock()
	return nil
}
