package store

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
	"go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"
)

// Durability selects when a write counts as done and whether commits fsync.
type Durability string

const (
	// DurabilitySync makes a waiting write return only after the commit
	// (fsync) that holds it; commits start as soon as work is queued.
	DurabilitySync Durability = "sync"
	// DurabilityBatch queues writes and commits them every BatchInterval;
	// hook writers do not wait. It is the default.
	DurabilityBatch Durability = "batch"
	// DurabilityNone behaves like DurabilityBatch but never fsyncs: the data
	// survives a process crash but not a power loss.
	DurabilityNone Durability = "none"
)

var (
	// ErrClosed is returned by operations on a DB that has been closed.
	ErrClosed = errors.New("store closed")
	// ErrLocked is returned by Open when another process (or another Open in
	// this process) holds the data file.
	ErrLocked = errors.New("data file locked by another process")
	// ErrInvalidOptions is returned by Open for options it cannot use.
	ErrInvalidOptions = errors.New("invalid store options")
	// ErrInvalidName is returned by NewBucket for an empty module or bucket name.
	ErrInvalidName = errors.New("invalid bucket name")
	// ErrUnknownVersion is returned when a stored value has a format version
	// this build cannot decode.
	ErrUnknownVersion = errors.New("unknown record version")
	// ErrCorrupt is returned when a stored value cannot be decoded.
	ErrCorrupt = errors.New("corrupt record")
)

const (
	defaultBatchInterval = 5 * time.Millisecond
	defaultMaxBatch      = 4096
	// defaultQueue is two full batches. The queue's buffer is allocated up
	// front (88 B an operation), and the garbage collector counts all of it
	// as live heap, so it lets as much garbage pile up before collecting:
	// 65536 (5.5 MB) cost about 7 MB of peak RSS in a QoS 0 flood and 10 MB
	// in a persistent QoS 1 flood, which 8192 did not slow (BENCHMARKS.md).
	defaultQueue = 8192

	// openTimeout bounds the wait for bbolt's file lock, so that a second
	// process fails fast with ErrLocked instead of hanging at startup.
	openTimeout = time.Second
)

// Options configures a DB. The zero value is valid and selects the defaults.
type Options struct {
	// Durability is the commit mode; default DurabilityBatch.
	Durability Durability
	// BatchInterval is how long the committer collects writes before a
	// commit in batch and none modes; default 5ms. A write somebody waits
	// for (Flush, Bucket writes, OnQosPublish in sync mode) is committed
	// without waiting out the interval.
	BatchInterval time.Duration
	// MaxBatch caps the operations in one transaction; default 4096.
	MaxBatch int
	// Queue is the number of operations that may wait for the committer;
	// default 8192. When it is full, writers block rather than drop.
	Queue int
	// Logger receives commit errors; the zero value disables logging. The
	// caller names the component, as Colony does for every child logger.
	Logger zerolog.Logger
}

// withDefaults fills zero fields and rejects values that cannot work.
func (o Options) withDefaults() (Options, error) {
	switch o.Durability {
	case "":
		o.Durability = DurabilityBatch
	case DurabilitySync, DurabilityBatch, DurabilityNone:
	default:
		return o, fmt.Errorf("%w: unknown durability %q (want sync, batch or none)", ErrInvalidOptions, string(o.Durability))
	}
	if o.BatchInterval < 0 {
		return o, fmt.Errorf("%w: negative batch interval %s", ErrInvalidOptions, o.BatchInterval)
	}
	if o.BatchInterval == 0 {
		o.BatchInterval = defaultBatchInterval
	}
	if o.MaxBatch < 0 {
		return o, fmt.Errorf("%w: negative max batch %d", ErrInvalidOptions, o.MaxBatch)
	}
	if o.MaxBatch == 0 {
		o.MaxBatch = defaultMaxBatch
	}
	if o.Queue < 0 {
		return o, fmt.Errorf("%w: negative queue %d", ErrInvalidOptions, o.Queue)
	}
	if o.Queue == 0 {
		o.Queue = defaultQueue
	}
	return o, nil
}

// Bucket names. The MQTT sub-buckets are addressed by index in commit ops so
// the hot path does not carry names around.
var (
	rootMQTT   = []byte("mqtt")
	rootModule = []byte("mod")
)

const (
	bucketClients uint8 = iota
	bucketSubs
	bucketInflight
	bucketRetained
	bucketSys
	bucketInbound // the clients' own QoS 2 publishes waiting for their PUBREL, keyed as in-flight messages
	numMQTTBuckets
)

var mqttBucketNames = [numMQTTBuckets][]byte{
	bucketClients:  []byte("clients"),
	bucketSubs:     []byte("subs"),
	bucketInflight: []byte("inflight"),
	bucketRetained: []byte("retained"),
	bucketSys:      []byte("sys"),
	bucketInbound:  []byte("inbound"),
}

// DB is an open data file plus the committer goroutine that writes to it.
// All methods are safe for concurrent use.
type DB struct {
	path string
	opts Options
	bolt *bbolt.DB
	log  zerolog.Logger

	// mu guards closed and the send side of queue: senders hold it for
	// reading, Close takes it for writing before closing the channel, so a
	// send never hits a closed channel.
	mu     sync.RWMutex
	closed atomic.Bool
	queue  chan op

	committerDone chan struct{}
	closeOnce     sync.Once
	closeErr      error

	hookOnce sync.Once
	hook     *MQTTHook

	stats counters
}

// Open opens or creates the data file at path and starts its committer.
// A file held by another process yields an error wrapping ErrLocked.
func Open(path string, opts Options) (*DB, error) {
	opts, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	if dir := filepath.Dir(path); dir != "" {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, fmt.Errorf("create data directory %s: %w", dir, err)
		}
	}
	bdb, err := bbolt.Open(path, 0o600, &bbolt.Options{
		Timeout: openTimeout,
		NoSync:  opts.Durability == DurabilityNone,
		// The freelist is rebuilt on open instead of written on every
		// commit: commits stay small under the put/delete churn of in-flight
		// messages, at the cost of a scan at startup.
		NoFreelistSync: true,
		FreelistType:   bbolt.FreelistMapType,
	})
	if err != nil {
		if errors.Is(err, bolterrors.ErrTimeout) {
			return nil, fmt.Errorf("open %s: %w", path, ErrLocked)
		}
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	err = bdb.Update(func(tx *bbolt.Tx) error {
		root, err := tx.CreateBucketIfNotExists(rootMQTT)
		if err != nil {
			return err
		}
		for _, name := range mqttBucketNames {
			if _, err := root.CreateBucketIfNotExists(name); err != nil {
				return err
			}
		}
		_, err = tx.CreateBucketIfNotExists(rootModule)
		return err
	})
	if err != nil {
		if cerr := bdb.Close(); cerr != nil {
			err = errors.Join(err, cerr)
		}
		return nil, fmt.Errorf("create buckets in %s: %w", path, err)
	}

	db := &DB{
		path:          path,
		opts:          opts,
		bolt:          bdb,
		log:           opts.Logger,
		queue:         make(chan op, opts.Queue),
		committerDone: make(chan struct{}),
	}
	go db.commitLoop()
	return db, nil
}

// Path returns the file path the DB was opened with.
func (db *DB) Path() string { return db.path }

// Flush blocks until every write queued before the call is committed, or
// until ctx ends. It returns the commit error, if the commit failed.
func (db *DB) Flush(ctx context.Context) error {
	done := make(chan error, 1)
	if err := db.enqueue(ctx, op{kind: opBarrier, done: done}); err != nil {
		return err
	}
	return wait(ctx, done)
}

// Close commits every queued write, stops the committer and closes the file.
// It is idempotent; later calls return the first call's result.
func (db *DB) Close() error {
	db.closeOnce.Do(func() {
		db.mu.Lock()
		db.closed.Store(true)
		close(db.queue)
		db.mu.Unlock()
		<-db.committerDone
		if err := db.bolt.Close(); err != nil {
			db.closeErr = fmt.Errorf("close %s: %w", db.path, err)
		}
	})
	return db.closeErr
}

// Stats is a snapshot of the committer's counters.
type Stats struct {
	// Commits is the number of successful transactions.
	Commits uint64
	// Ops is the number of operations committed, counting those removed by
	// coalescing.
	Ops uint64
	// Coalesced is the number of operations that never reached the B+tree
	// because a later operation in the same batch superseded them.
	Coalesced uint64
	// Errors is the number of failed commits, hook writes the B+tree
	// refused, and hook writes refused because the DB was closed.
	Errors uint64
	// LastCommit is the duration of the latest commit, fsync included.
	LastCommit time.Duration
	// MaxCommit is the longest commit seen.
	MaxCommit time.Duration
	// Pending is the number of operations queued or being committed now.
	Pending int
}

type counters struct {
	commits    atomic.Uint64
	ops        atomic.Uint64
	coalesced  atomic.Uint64
	errors     atomic.Uint64
	lastCommit atomic.Int64
	maxCommit  atomic.Int64
	pending    atomic.Int64
}

// Stats returns the committer's counters. It only reads atomics.
func (db *DB) Stats() Stats {
	return Stats{
		Commits:    db.stats.commits.Load(),
		Ops:        db.stats.ops.Load(),
		Coalesced:  db.stats.coalesced.Load(),
		Errors:     db.stats.errors.Load(),
		LastCommit: time.Duration(db.stats.lastCommit.Load()),
		MaxCommit:  time.Duration(db.stats.maxCommit.Load()),
		Pending:    int(db.stats.pending.Load()),
	}
}

// Check runs bbolt's consistency check and returns the first problem found.
// It holds the writer lock meanwhile, because bbolt's check reads the
// freelist that a concurrent commit mutates, so commits pause until it ends.
func (db *DB) Check() (err error) {
	if db.closed.Load() {
		return ErrClosed
	}
	tx, err := db.bolt.Begin(true)
	if err != nil {
		return fmt.Errorf("check %s: %w", db.path, err)
	}
	defer func() {
		// Nothing was written; rolling back just releases the writer lock.
		if rerr := tx.Rollback(); rerr != nil && err == nil {
			err = fmt.Errorf("check %s: %w", db.path, rerr)
		}
	}()
	var first error
	// Drain the channel fully: the checker goroutine blocks on it.
	for err := range tx.Check() {
		if first == nil {
			first = err
		}
	}
	if first != nil {
		return fmt.Errorf("check %s: %w", db.path, first)
	}
	return nil
}

// view runs fn in a read transaction, refusing once the DB is closed.
func (db *DB) view(fn func(tx *bbolt.Tx) error) error {
	if db.closed.Load() {
		return ErrClosed
	}
	err := db.bolt.View(fn)
	if errors.Is(err, bolterrors.ErrDatabaseNotOpen) {
		return ErrClosed
	}
	return err
}

// wait returns the result delivered on done, or ctx's error if it ends first.
func wait(ctx context.Context, done <-chan error) error {
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}
