package store

import (
	"bytes"
	"context"
	"errors"
	"fmt"

	"go.etcd.io/bbolt"
)

// scanChunk is how many records Scan decodes per read transaction. Holding
// a read transaction while calling back into module code would deadlock if
// the callback wrote to a growing file (bbolt's remap waits for readers), so
// Scan reads a chunk, closes the transaction, then calls back.
const scanChunk = 256

// errBucketMissing means a module bucket vanished after NewBucket created it,
// which only happens if the file was edited behind the DB's back.
var errBucketMissing = errors.New("bucket missing")

// Bucket is a module's typed key/value bucket, stored under
// mod/<module>/<name>. Values are JSON behind a format version byte, so T
// must round-trip through encoding/json. Writes go through the DB's
// committer and return only once committed; reads see every write that has
// returned. A Bucket is safe for concurrent use.
type Bucket[T any] struct {
	db     *DB
	module []byte
	name   []byte
	label  string
}

// NewBucket returns the bucket mod/<module>/<name>, creating it if needed.
func NewBucket[T any](db *DB, module, name string) (*Bucket[T], error) {
	if module == "" || name == "" {
		return nil, fmt.Errorf("%w: module %q, name %q", ErrInvalidName, module, name)
	}
	if db.closed.Load() {
		return nil, ErrClosed
	}
	b := &Bucket[T]{db: db, module: []byte(module), name: []byte(name), label: "mod/" + module + "/" + name}
	err := db.bolt.Update(func(tx *bbolt.Tx) error {
		root, err := tx.CreateBucketIfNotExists(rootModule)
		if err != nil {
			return err
		}
		mod, err := root.CreateBucketIfNotExists(b.module)
		if err != nil {
			return err
		}
		_, err = mod.CreateBucketIfNotExists(b.name)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("create bucket %s: %w", b.label, err)
	}
	return b, nil
}

// bucket finds the bbolt bucket inside tx.
func (b *Bucket[T]) bucket(tx *bbolt.Tx) (*bbolt.Bucket, error) {
	if root := tx.Bucket(rootModule); root != nil {
		if mod := root.Bucket(b.module); mod != nil {
			if bk := mod.Bucket(b.name); bk != nil {
				return bk, nil
			}
		}
	}
	return nil, fmt.Errorf("%s: %w", b.label, errBucketMissing)
}

// Get returns the value stored under key; ok is false if there is none.
func (b *Bucket[T]) Get(key string) (v T, ok bool, err error) {
	err = b.db.view(func(tx *bbolt.Tx) error {
		bk, err := b.bucket(tx)
		if err != nil {
			return err
		}
		raw := bk.Get([]byte(key))
		if raw == nil {
			return nil
		}
		if err := decode(raw, &v); err != nil {
			return fmt.Errorf("get %s key %q: %w", b.label, key, err)
		}
		ok = true
		return nil
	})
	return v, ok, err
}

// Put stores v under key and returns after the commit that holds it. If ctx
// ends first, Put returns ctx's error and the write may still be committed.
func (b *Bucket[T]) Put(ctx context.Context, key string, v T) error {
	data, err := encode(v)
	if err != nil {
		return fmt.Errorf("put %s key %q: %w", b.label, key, err)
	}
	k := []byte(key)
	return b.write(ctx, "put", key, func(tx *bbolt.Tx) error {
		bk, err := b.bucket(tx)
		if err != nil {
			return err
		}
		return bk.Put(k, data)
	})
}

// Delete removes key, if present, and returns after the commit that holds
// the removal. Context handling is as for Put.
func (b *Bucket[T]) Delete(ctx context.Context, key string) error {
	k := []byte(key)
	return b.write(ctx, "delete", key, func(tx *bbolt.Tx) error {
		bk, err := b.bucket(tx)
		if err != nil {
			return err
		}
		return bk.Delete(k)
	})
}

// Update atomically reads, changes and writes one key. fn gets the current
// value (ok is false if absent) and returns the new value, or del true to
// delete the key. An error from fn aborts the update, writes nothing and is
// returned unwrapped so callers can match their own sentinels.
//
// fn runs on the committer goroutine while it holds the write transaction:
// it must be quick and must not call the DB, or it deadlocks. Unlike bbolt's
// Batch, fn is called exactly once.
func (b *Bucket[T]) Update(ctx context.Context, key string, fn func(v T, ok bool) (nv T, del bool, err error)) error {
	k := []byte(key)
	return b.write(ctx, "update", key, func(tx *bbolt.Tx) error {
		bk, err := b.bucket(tx)
		if err != nil {
			return err
		}
		var cur T
		ok := false
		if raw := bk.Get(k); raw != nil {
			if err := decode(raw, &cur); err != nil {
				return err
			}
			ok = true
		}
		nv, del, err := fn(cur, ok)
		if err != nil {
			return userError{err}
		}
		if del {
			return bk.Delete(k)
		}
		data, err := encode(nv)
		if err != nil {
			return err
		}
		return bk.Put(k, data)
	})
}

// userError marks an error returned by an Update callback, which write
// passes through without adding context.
type userError struct{ err error }

func (e userError) Error() string { return e.err.Error() }
func (e userError) Unwrap() error { return e.err }

// write queues fn as a module op and waits for its commit.
func (b *Bucket[T]) write(ctx context.Context, what, key string, fn func(tx *bbolt.Tx) error) error {
	done := make(chan error, 1)
	if err := b.db.enqueue(ctx, op{kind: opFunc, fn: fn, done: done}); err != nil {
		return fmt.Errorf("%s %s key %q: %w", what, b.label, key, err)
	}
	err := wait(ctx, done)
	var ue userError
	if errors.As(err, &ue) {
		return ue.err
	}
	if err != nil {
		return fmt.Errorf("%s %s key %q: %w", what, b.label, key, err)
	}
	return nil
}

// Scan calls fn for each key starting with prefix, in key order, until fn
// returns false. Records are read in chunks, each from its own snapshot, so
// fn may write to the DB; a Scan running alongside writes sees each key at
// most once but not one point-in-time view of the whole range.
func (b *Bucket[T]) Scan(prefix string, fn func(key string, v T) bool) error {
	p := []byte(prefix)
	return b.scan(p, func(k []byte) bool { return bytes.HasPrefix(k, p) }, fn)
}

// ScanRange calls fn for each key k with start <= k < end, in key order,
// until fn returns false; an empty end means no upper bound. It reads in
// chunks like Scan, so it suits paging through keys that sort by a
// big-endian number, starting anywhere without reading what comes before.
func (b *Bucket[T]) ScanRange(start, end string, fn func(key string, v T) bool) error {
	e := []byte(end)
	return b.scan([]byte(start), func(k []byte) bool { return len(e) == 0 || bytes.Compare(k, e) < 0 }, fn)
}

// scan calls fn for the records from the first key >= seek while in(key).
func (b *Bucket[T]) scan(seek []byte, in func(k []byte) bool, fn func(key string, v T) bool) error {
	type entry struct {
		key string
		v   T
	}
	var after []byte
	chunk := make([]entry, 0, scanChunk)
	for {
		chunk = chunk[:0]
		more := false
		err := b.db.view(func(tx *bbolt.Tx) error {
			bk, err := b.bucket(tx)
			if err != nil {
				return err
			}
			cur := bk.Cursor()
			var k, raw []byte
			if after == nil {
				k, raw = cur.Seek(seek)
			} else if k, raw = cur.Seek(after); k != nil && bytes.Equal(k, after) {
				k, raw = cur.Next()
			}
			for ; k != nil && in(k); k, raw = cur.Next() {
				if len(chunk) == scanChunk {
					more = true
					break
				}
				if raw == nil {
					continue // a nested bucket, not a record
				}
				var v T
				if err := decode(raw, &v); err != nil {
					return fmt.Errorf("scan %s key %q: %w", b.label, k, err)
				}
				chunk = append(chunk, entry{string(k), v})
			}
			return nil
		})
		if err != nil {
			return err
		}
		for _, e := range chunk {
			if !fn(e.key, e.v) {
				return nil
			}
		}
		if !more {
			return nil
		}
		after = []byte(chunk[len(chunk)-1].key)
	}
}

// Len returns the number of keys in the bucket. It walks the bucket's
// pages, so it costs time proportional to the bucket's size.
func (b *Bucket[T]) Len() (int, error) {
	n := 0
	err := b.db.view(func(tx *bbolt.Tx) error {
		bk, err := b.bucket(tx)
		if err != nil {
			return err
		}
		n = bk.Stats().KeyN
		return nil
	})
	return n, err
}

// Opener opens a module's buckets one after another and keeps the first
// error, so a module with many buckets opens them in a plain list (see
// OpenBucket) and checks Err once.
type Opener struct {
	DB     *DB
	Module string
	Err    error // the first failure; later OpenBucket calls do nothing
}

// OpenBucket is NewBucket through o: after a failure it returns nil and leaves
// o.Err as it is.
func OpenBucket[T any](o *Opener, name string) *Bucket[T] {
	if o.Err != nil {
		return nil
	}
	b, err := NewBucket[T](o.DB, o.Module, name)
	if err != nil {
		o.Err = err
	}
	return b
}
