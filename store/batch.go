package store

import (
	"context"
	"errors"
	"fmt"

	"go.etcd.io/bbolt"
)

// ErrInvalidKey is returned (by Batch.Commit) for a key bbolt cannot store:
// empty or longer than bbolt.MaxKeySize.
var ErrInvalidKey = errors.New("invalid key")

// Batch collects writes to one or more buckets of a DB and commits them in
// one transaction: readers see all of them or none, and so does the file
// after a crash. Build it with DB.NewBatch and Bucket.PutIn, DeleteIn and
// UpdateIn, then Commit it once. A Batch is not safe for concurrent use.
type Batch struct {
	db     *DB
	writes []batchWrite
	err    error // first encoding or key error; Commit returns it
}

// batchWrite is one write of a Batch. Inside the transaction Commit first
// finds every write's bucket and prepares every write (reads and encodings
// included), and only then mutates anything: a missing bucket or a corrupt
// record fails the batch before it has written a thing, since the
// transaction is shared with other writers and cannot be rolled back for
// one of them.
type batchWrite struct {
	find    func(tx *bbolt.Tx) (*bbolt.Bucket, error)
	prepare func(bk *bbolt.Bucket) (mutate func() error, err error)
}

// NewBatch returns an empty Batch for db.
func (db *DB) NewBatch() *Batch { return &Batch{db: db} }

// Len returns the number of writes in the batch.
func (bt *Batch) Len() int { return len(bt.writes) }

func (bt *Batch) add(key string, find func(tx *bbolt.Tx) (*bbolt.Bucket, error), prepare func(bk *bbolt.Bucket) (func() error, error)) {
	if bt.err != nil {
		return
	}
	// bbolt refuses these keys inside the transaction, after other writes
	// of the batch went in; refusing them here keeps the batch whole.
	if key == "" || len(key) > bbolt.MaxKeySize {
		bt.err = fmt.Errorf("key of %d bytes: %w", len(key), ErrInvalidKey)
		return
	}
	bt.writes = append(bt.writes, batchWrite{find: find, prepare: prepare})
}

// Commit writes the batch in one transaction and returns after its commit.
// It returns the first error met while building the batch without writing
// anything. If ctx ends first, Commit returns ctx's error and the batch may
// still be committed. An empty batch commits nothing.
func (bt *Batch) Commit(ctx context.Context) error {
	if bt.err != nil {
		return fmt.Errorf("commit batch: %w", bt.err)
	}
	if len(bt.writes) == 0 {
		return nil
	}
	writes := bt.writes
	bt.writes = nil // a second Commit writes nothing again
	fn := func(tx *bbolt.Tx) error {
		mutations := make([]func() error, len(writes))
		for i, w := range writes {
			bk, err := w.find(tx)
			if err != nil {
				return err
			}
			if mutations[i], err = w.prepare(bk); err != nil {
				return err
			}
		}
		for _, m := range mutations {
			if m == nil {
				continue
			}
			if err := m(); err != nil {
				return err
			}
		}
		return nil
	}
	done := make(chan error, 1)
	if err := bt.db.enqueue(ctx, op{kind: opFunc, fn: fn, done: done}); err != nil {
		return fmt.Errorf("commit batch of %d writes: %w", len(writes), err)
	}
	if err := wait(ctx, done); err != nil {
		return fmt.Errorf("commit batch of %d writes: %w", len(writes), err)
	}
	return nil
}

// PutIn adds a write of v under key to batch.
func (b *Bucket[T]) PutIn(batch *Batch, key string, v T) {
	data, err := encode(v)
	if err != nil {
		if batch.err == nil {
			batch.err = fmt.Errorf("put %s key %q: %w", b.label, key, err)
		}
		return
	}
	k := []byte(key)
	batch.add(key, b.bucket, func(bk *bbolt.Bucket) (func() error, error) {
		return func() error { return bk.Put(k, data) }, nil
	})
}

// DeleteIn adds the removal of key, if present, to batch.
func (b *Bucket[T]) DeleteIn(batch *Batch, key string) {
	k := []byte(key)
	batch.add(key, b.bucket, func(bk *bbolt.Bucket) (func() error, error) {
		return func() error { return bk.Delete(k) }, nil
	})
}

// UpdateIn adds a read-modify-write of key to batch. At commit, fn gets the
// value then stored (ok is false if absent) and returns the new value, or
// write false to leave the key as it is. Like Update's, fn runs on the
// committer goroutine: it must be quick and must not call the DB. It sees
// the value stored before the batch, so a batch should write a key once.
func (b *Bucket[T]) UpdateIn(batch *Batch, key string, fn func(v T, ok bool) (nv T, write bool)) {
	k := []byte(key)
	batch.add(key, b.bucket, func(bk *bbolt.Bucket) (func() error, error) {
		var cur T
		ok := false
		if raw := bk.Get(k); raw != nil {
			if err := decode(raw, &cur); err != nil {
				return nil, fmt.Errorf("update %s key %q: %w", b.label, k, err)
			}
			ok = true
		}
		nv, write := fn(cur, ok)
		if !write {
			return nil, nil
		}
		data, err := encode(nv)
		if err != nil {
			return nil, fmt.Errorf("update %s key %q: %w", b.label, k, err)
		}
		return func() error { return bk.Put(k, data) }, nil
	})
}
