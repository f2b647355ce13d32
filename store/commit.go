package store

import (
	"bytes"
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/rs/zerolog"
	"go.etcd.io/bbolt"
)

// opKind says what a queued operation does.
type opKind uint8

const (
	// opPut writes value under key in an MQTT sub-bucket.
	opPut opKind = iota
	// opDelete removes key from an MQTT sub-bucket.
	opDelete
	// opDeletePrefix removes every key starting with key from an MQTT sub-bucket.
	opDeletePrefix
	// opDeleteSession removes everything stored for the client ID in key:
	// its client record, subscriptions, in-flight messages and pending QoS 2
	// publishes. One op rather than four so that a crash can never leave
	// half a session behind.
	opDeleteSession
	// opFunc runs fn inside the transaction; used by module buckets.
	opFunc
	// opBarrier writes nothing; its waiter learns that everything queued
	// before it is committed.
	opBarrier
)

// op is one queued write. Hook ops are coalesced per key within a batch;
// opFunc ops run in queue order.
type op struct {
	kind   opKind
	bucket uint8 // MQTT sub-bucket index, for hook ops
	key    []byte
	value  []byte
	fn     func(tx *bbolt.Tx) error
	// done, when set, receives the op's result after its commit. It must be
	// buffered (capacity 1) so the committer never blocks on a gone waiter.
	done chan error
	err  error // op-local failure, filled in by the committer
}

// waiters recycles the result channels of writers that wait for a commit,
// which would otherwise cost an allocation per in-flight message in sync mode.
var waiters = sync.Pool{New: func() any { return make(chan error, 1) }}

// enqueue hands o to the committer, blocking while the queue is full so that
// overload slows writers down instead of dropping their writes.
func (db *DB) enqueue(ctx context.Context, o op) error {
	db.mu.RLock()
	defer db.mu.RUnlock()
	if db.closed.Load() {
		return ErrClosed
	}
	db.stats.pending.Add(1)
	select {
	case db.queue <- o:
		return nil
	default:
	}
	select {
	case db.queue <- o:
		return nil
	case <-ctx.Done():
		db.stats.pending.Add(-1)
		return ctx.Err()
	}
}

// submit queues a hook op; with wait it returns only after the commit that
// holds the op and reports that commit's error.
func (db *DB) submit(o op, wait bool) error {
	if !wait {
		return db.enqueue(context.Background(), o)
	}
	done := waiters.Get().(chan error)
	o.done = done
	if err := db.enqueue(context.Background(), o); err != nil {
		waiters.Put(done)
		return err
	}
	err := <-done
	waiters.Put(done)
	return err
}

// commitLoop is the single writer: it takes a batch of ops off the queue,
// commits them in one transaction and reports to waiters, until the queue
// is closed and drained.
func (db *DB) commitLoop() {
	defer close(db.committerDone)
	c := committer{
		db:    db,
		batch: make([]op, 0, min(db.opts.MaxBatch, 1024)),
		last:  make(map[pendingKey]int),
	}
	var timer *time.Timer
	if db.opts.Durability != DurabilitySync {
		timer = time.NewTimer(time.Hour)
		timer.Stop()
	}
	for {
		first, ok := <-db.queue
		if !ok {
			return
		}
		c.batch = append(c.batch[:0], first)
		var open bool
		if timer == nil || first.done != nil {
			open = c.drain()
		} else {
			open = c.collect(timer)
		}
		c.commit()
		clear(c.batch) // drop references to values and waiters
		if !open {
			return
		}
	}
}

// committer holds the committer goroutine's reusable state.
type committer struct {
	db       *DB
	batch    []op
	last     map[pendingKey]int // last hook op per key in the batch, by index
	prefixes []prefixDelete
	failed   burst // failed commits
	opFailed burst // hook ops the B+tree refused
}

// pendingKey identifies a key in one MQTT sub-bucket.
type pendingKey struct {
	bucket uint8
	key    string
}

type prefixDelete struct {
	bucket uint8
	prefix []byte
}

// drain adds whatever is queued right now, without waiting: in sync mode the
// next batch accumulates while the current one fsyncs, which groups commits
// under load without adding latency when idle. It reports false once the
// queue is closed.
func (c *committer) drain() bool {
	for len(c.batch) < c.db.opts.MaxBatch {
		select {
		case o, ok := <-c.db.queue:
			if !ok {
				return false
			}
			c.batch = append(c.batch, o)
		default:
			return true
		}
	}
	return true
}

// collect adds ops for up to BatchInterval or MaxBatch ops, whichever comes
// first. An op with a waiter (a Flush, a module write) ends the wait early:
// the interval exists to amortise fsyncs over writers that do not wait, and
// for a blocked caller it would be pure latency. Waiters still share
// commits, as in sync mode, because the next batch fills while one commits.
// It reports false once the queue is closed.
func (c *committer) collect(timer *time.Timer) bool {
	timer.Reset(c.db.opts.BatchInterval)
	defer timer.Stop()
	for len(c.batch) < c.db.opts.MaxBatch {
		select {
		case o, ok := <-c.db.queue:
			if !ok {
				return false
			}
			c.batch = append(c.batch, o)
			if o.done != nil {
				return c.drain()
			}
		case <-timer.C:
			return true
		}
	}
	return true
}

// commit writes the batch in one transaction and reports to its waiters.
func (c *committer) commit() {
	db := c.db
	if !c.hasWrites() {
		// Only barriers: everything queued before them is already committed.
		c.finish(nil)
		return
	}
	var ops, coalesced int
	start := time.Now()
	err := db.bolt.Update(func(tx *bbolt.Tx) error {
		var err error
		ops, coalesced, err = c.apply(tx)
		return err
	})
	elapsed := time.Since(start)

	if err != nil {
		err = fmt.Errorf("commit %d ops to %s: %w", ops, db.path, err)
		db.stats.errors.Add(1)
		c.failed.fail(db.log, err, "store commit failed; the writes in this batch are lost")
	} else {
		c.failed.recover(db.log, "store commits succeed again")
		db.stats.commits.Add(1)
		db.stats.ops.Add(uint64(ops))
		db.stats.coalesced.Add(uint64(coalesced))
		db.stats.lastCommit.Store(int64(elapsed))
		if int64(elapsed) > db.stats.maxCommit.Load() { // only this goroutine stores it
			db.stats.maxCommit.Store(int64(elapsed))
		}
	}
	c.finish(err)
}

// finish reports the batch's outcome to its waiters: the commit error if
// the commit failed, else each op's own result.
func (c *committer) finish(commitErr error) {
	c.db.stats.pending.Add(-int64(len(c.batch)))
	for i := range c.batch {
		o := &c.batch[i]
		if o.done == nil {
			continue
		}
		if commitErr != nil {
			o.done <- commitErr
		} else {
			o.done <- o.err
		}
	}
}

// hasWrites reports whether the batch holds anything but barriers.
func (c *committer) hasWrites() bool {
	for i := range c.batch {
		if c.batch[i].kind != opBarrier {
			return true
		}
	}
	return false
}

// apply performs the batch inside tx. Hook ops are coalesced: only the last
// op per key reaches the B+tree, after all prefix deletes of the batch, which
// gives the same end state as applying every op in order because a prefix
// delete also discards the pending ops it covers. Module ops touch other
// buckets, so running them afterwards in queue order keeps their semantics.
func (c *committer) apply(tx *bbolt.Tx) (ops, coalesced int, err error) {
	clear(c.last)
	c.prefixes = c.prefixes[:0]
	hasFunc := false
	opFailed := false
	defer func() {
		if !opFailed {
			c.opFailed.recover(c.db.log, "store hook writes succeed again")
		}
	}()
	for i := range c.batch {
		o := &c.batch[i]
		switch o.kind {
		case opPut, opDelete:
			coalesced += c.setLast(o.bucket, o.key, i)
		case opDeletePrefix:
			coalesced += c.dropPending(o.bucket, o.key)
			c.prefixes = append(c.prefixes, prefixDelete{o.bucket, o.key})
		case opDeleteSession:
			coalesced += c.setLast(bucketClients, o.key, i)
			prefix := sessionPrefix(string(o.key))
			for _, b := range [...]uint8{bucketSubs, bucketInflight, bucketInbound} {
				coalesced += c.dropPending(b, prefix)
				c.prefixes = append(c.prefixes, prefixDelete{b, prefix})
			}
		case opFunc:
			hasFunc = true
		case opBarrier:
			continue
		}
		ops++
	}

	if len(c.last) > 0 || len(c.prefixes) > 0 {
		root := tx.Bucket(rootMQTT)
		if root == nil {
			return ops, coalesced, fmt.Errorf("bucket %s missing", rootMQTT)
		}
		var buckets [numMQTTBuckets]*bbolt.Bucket
		for i, name := range mqttBucketNames {
			if buckets[i] = root.Bucket(name); buckets[i] == nil {
				return ops, coalesced, fmt.Errorf("bucket %s/%s missing", rootMQTT, name)
			}
		}
		for _, p := range c.prefixes {
			if err := deletePrefix(buckets[p.bucket], p.prefix); err != nil {
				opFailed = true
				c.db.stats.errors.Add(1)
				c.opFailed.fail(c.db.log, fmt.Errorf("%s: %w", mqttBucketNames[p.bucket], err), "store dropped a hook delete")
			}
		}
		for k, i := range c.last {
			o := &c.batch[i]
			b := buckets[k.bucket]
			var err error
			if o.kind == opPut {
				err = b.Put(o.key, o.value)
			} else {
				err = b.Delete(o.key)
			}
			if err != nil {
				opFailed = true
				c.db.stats.errors.Add(1)
				c.opFailed.fail(c.db.log, fmt.Errorf("%s key %q: %w", mqttBucketNames[k.bucket], o.key, err), "store dropped a hook write")
			}
		}
	}

	if hasFunc {
		for i := range c.batch {
			if o := &c.batch[i]; o.kind == opFunc {
				o.err = safeCall(o.fn, tx)
			}
		}
	}
	return ops, coalesced, nil
}

// setLast records op i as the latest for a key and reports 1 if it
// superseded an earlier op of the batch.
func (c *committer) setLast(bucket uint8, key []byte, i int) int {
	k := pendingKey{bucket, string(key)}
	_, had := c.last[k]
	c.last[k] = i
	if had {
		return 1
	}
	return 0
}

// dropPending forgets pending ops under prefix, which a prefix delete is
// about to supersede, and reports how many it dropped. It scans the whole
// map, which is fine because prefix deletes only come with session ends.
func (c *committer) dropPending(bucket uint8, prefix []byte) int {
	n := 0
	for k := range c.last {
		if k.bucket == bucket && len(k.key) >= len(prefix) && k.key[:len(prefix)] == string(prefix) {
			delete(c.last, k)
			n++
		}
	}
	return n
}

// deletePrefix removes every key starting with prefix from b. Keys are
// collected first because deleting under a moving cursor can skip entries.
func deletePrefix(b *bbolt.Bucket, prefix []byte) error {
	var keys [][]byte
	cur := b.Cursor()
	for k, _ := cur.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = cur.Next() {
		keys = append(keys, bytes.Clone(k))
	}
	for _, k := range keys {
		if err := b.Delete(k); err != nil {
			return fmt.Errorf("delete %q: %w", k, err)
		}
	}
	return nil
}

// safeCall runs a module's function, turning a panic into an error so one
// bad callback cannot take the committer, and with it the server, down.
func safeCall(fn func(tx *bbolt.Tx) error, tx *bbolt.Tx) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("store callback panicked: %v", r)
		}
	}()
	return fn(tx)
}

// burst logs the first failure of a run of failures and the recovery after
// it, so a broken disk produces two log lines rather than one per write.
type burst struct {
	failing bool
	count   int
}

func (b *burst) fail(log zerolog.Logger, err error, msg string) {
	b.count++
	if b.failing {
		return
	}
	b.failing = true
	log.Error().Err(err).Msg(msg)
}

func (b *burst) recover(log zerolog.Logger, msg string) {
	if !b.failing {
		return
	}
	log.Warn().Int("failures", b.count).Msg(msg)
	b.failing = false
	b.count = 0
}
