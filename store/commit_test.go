package store

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"go.etcd.io/bbolt"
)

// oneBatch opens a DB whose committer waits an hour per batch, so every op
// queued before a Flush lands in the same transaction.
func oneBatch(t *testing.T) *DB {
	t.Helper()
	return openTest(t, Options{BatchInterval: time.Hour})
}

func mustSubmit(t *testing.T, db *DB, o op) {
	t.Helper()
	if err := db.submit(o, false); err != nil {
		t.Fatal(err)
	}
}

func put(b uint8, k, v string) op {
	return op{kind: opPut, bucket: b, key: []byte(k), value: []byte(v)}
}

func del(b uint8, k string) op { return op{kind: opDelete, bucket: b, key: []byte(k)} }

func delPrefix(b uint8, p string) op { return op{kind: opDeletePrefix, bucket: b, key: []byte(p)} }

func TestCoalescePutThenDelete(t *testing.T) {
	db := oneBatch(t)
	mustSubmit(t, db, put(bucketInflight, "c\x00\x00\x01", "msg"))
	mustSubmit(t, db, del(bucketInflight, "c\x00\x00\x01"))
	mustSubmit(t, db, put(bucketInflight, "c\x00\x00\x02", "kept"))
	if keys := mqttKeys(t, db, bucketInflight); !slices.Equal(keys, []string{"c\x00\x00\x02"}) {
		t.Fatalf("keys = %q", keys)
	}
	s := db.Stats()
	if s.Commits != 1 || s.Ops != 3 || s.Coalesced != 1 || s.Pending != 0 {
		t.Fatalf("stats = %+v, want 1 commit, 3 ops, 1 coalesced, 0 pending", s)
	}
}

func TestCoalesceDeleteThenPutKeepsPut(t *testing.T) {
	db := oneBatch(t)
	mustSubmit(t, db, put(bucketRetained, "t", "old"))
	flush(t, db)
	mustSubmit(t, db, del(bucketRetained, "t"))
	mustSubmit(t, db, put(bucketRetained, "t", "new"))
	mustSubmit(t, db, put(bucketRetained, "t", "newer"))
	flush(t, db)
	if v := rawGet(t, db, bucketRetained, "t"); v != "newer" {
		t.Fatalf("value = %q, want newer", v)
	}
}

func TestDeletePrefixOrdersWithPuts(t *testing.T) {
	db := oneBatch(t)
	// Committed before the batch: must be removed by the prefix delete.
	mustSubmit(t, db, put(bucketSubs, "a\x00old", "1"))
	mustSubmit(t, db, put(bucketSubs, "ab\x00other", "1"))
	flush(t, db)

	mustSubmit(t, db, put(bucketSubs, "a\x00before", "1")) // superseded by the prefix delete
	mustSubmit(t, db, delPrefix(bucketSubs, "a\x00"))
	mustSubmit(t, db, put(bucketSubs, "a\x00after", "1")) // must survive it
	mustSubmit(t, db, put(bucketInflight, "a\x00x", "1")) // other bucket, same prefix
	got := mqttKeys(t, db, bucketSubs)
	if want := []string{"a\x00after", "ab\x00other"}; !slices.Equal(got, want) {
		t.Fatalf("subs = %q, want %q", got, want)
	}
	if got := mqttKeys(t, db, bucketInflight); len(got) != 1 {
		t.Fatalf("inflight = %q", got)
	}
	if s := db.Stats(); s.Coalesced != 1 {
		t.Errorf("coalesced = %d, want 1", s.Coalesced)
	}
}

func TestDeleteSession(t *testing.T) {
	db := oneBatch(t)
	for _, o := range []op{
		put(bucketClients, "a", "c"), put(bucketClients, "ab", "c"),
		put(bucketSubs, "a\x00f", "s"), put(bucketSubs, "ab\x00f", "s"),
		put(bucketInflight, "a\x00\x00\x01", "m"), put(bucketInflight, "ab\x00\x00\x01", "m"),
	} {
		mustSubmit(t, db, o)
	}
	flush(t, db)
	mustSubmit(t, db, put(bucketInflight, "a\x00\x00\x02", "m")) // in the same batch as the delete
	mustSubmit(t, db, op{kind: opDeleteSession, key: []byte("a")})
	mustSubmit(t, db, put(bucketSubs, "a\x00g", "s")) // a new session's first subscription
	for b, want := range map[uint8][]string{
		bucketClients:  {"ab"},
		bucketSubs:     {"a\x00g", "ab\x00f"},
		bucketInflight: {"ab\x00\x00\x01"},
	} {
		if got := mqttKeys(t, db, b); !slices.Equal(got, want) {
			t.Errorf("%s = %q, want %q", mqttBucketNames[b], got, want)
		}
	}
}

// TestSequentialSemantics checks coalescing against a plain in-order
// replay for a scripted mix of ops in a single batch.
func TestSequentialSemantics(t *testing.T) {
	db := oneBatch(t)
	script := []op{
		put(bucketSubs, "x\x001", "a"), put(bucketSubs, "x\x002", "a"), put(bucketSubs, "y\x001", "a"),
		del(bucketSubs, "x\x001"), put(bucketSubs, "x\x001", "b"), delPrefix(bucketSubs, "x\x00"),
		put(bucketSubs, "x\x002", "c"), del(bucketSubs, "y\x001"), put(bucketSubs, "y\x001", "d"),
		put(bucketSubs, "z\x001", "e"), delPrefix(bucketSubs, "z\x00"), delPrefix(bucketSubs, "q\x00"),
	}
	want := map[string]string{}
	for _, o := range script {
		mustSubmit(t, db, o)
		switch o.kind {
		case opPut:
			want[string(o.key)] = string(o.value)
		case opDelete:
			delete(want, string(o.key))
		case opDeletePrefix:
			for k := range want {
				if len(k) >= len(o.key) && k[:len(o.key)] == string(o.key) {
					delete(want, k)
				}
			}
		}
	}
	flush(t, db)
	got := map[string]string{}
	for _, k := range mqttKeys(t, db, bucketSubs) {
		got[k] = rawGet(t, db, bucketSubs, k)
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("got %q, want %q", got, want)
	}
	if s := db.Stats(); s.Commits != 1 {
		t.Errorf("commits = %d, want the script in one batch", s.Commits)
	}
}

func rawGet(t *testing.T, db *DB, b uint8, k string) string {
	t.Helper()
	var v string
	err := db.view(func(tx *bbolt.Tx) error {
		v = string(tx.Bucket(rootMQTT).Bucket(mqttBucketNames[b]).Get([]byte(k)))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func TestFlushWaitsForEarlierWrites(t *testing.T) {
	for _, d := range []Durability{DurabilitySync, DurabilityBatch, DurabilityNone} {
		t.Run(string(d), func(t *testing.T) {
			db := openTest(t, Options{Durability: d})
			var wg sync.WaitGroup
			for w := range 8 {
				wg.Go(func() {
					for i := range 200 {
						if err := db.submit(put(bucketRetained, fmt.Sprintf("%d/%d", w, i), "v"), false); err != nil {
							t.Error(err)
							return
						}
					}
				})
			}
			wg.Wait()
			flush(t, db)
			if n := len(mqttKeys(t, db, bucketRetained)); n != 1600 {
				t.Fatalf("%d keys after flush, want 1600", n)
			}
			if s := db.Stats(); s.Ops != 1600 || s.Pending != 0 {
				t.Fatalf("stats = %+v", s)
			}
		})
	}
}

func TestFlushHonoursContext(t *testing.T) {
	db := openTest(t, Options{})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	// The barrier may still be queued, so a cancelled Flush either finishes
	// at once or reports the cancellation; it must not block.
	if err := db.Flush(ctx); err != nil && !errors.Is(err, context.Canceled) {
		t.Fatalf("flush: %v", err)
	}
}

func TestSyncWaiterSeesCommit(t *testing.T) {
	db := openTest(t, Options{Durability: DurabilitySync})
	if err := db.submit(put(bucketInflight, "c\x00\x00\x07", "m"), true); err != nil {
		t.Fatal(err)
	}
	// No flush: a waiting submit returns only after its commit.
	if v := rawGet(t, db, bucketInflight, "c\x00\x00\x07"); v != "m" {
		t.Fatalf("value after waited submit = %q", v)
	}
}

func TestBackPressureNeverDrops(t *testing.T) {
	db := openTest(t, Options{Queue: 1, MaxBatch: 3, Durability: DurabilityNone})
	var wg sync.WaitGroup
	for w := range 16 {
		wg.Go(func() {
			for i := range 100 {
				if err := db.submit(put(bucketRetained, fmt.Sprintf("%02d/%03d", w, i), "v"), false); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	if n := len(mqttKeys(t, db, bucketRetained)); n != 1600 {
		t.Fatalf("%d keys, want 1600", n)
	}
}

func TestHookOpErrorDoesNotFailBatch(t *testing.T) {
	db := openTest(t, Options{})
	// bbolt refuses an empty key; the other write of the batch must land.
	mustSubmit(t, db, put(bucketRetained, "", "bad"))
	mustSubmit(t, db, put(bucketRetained, "good", "v"))
	if keys := mqttKeys(t, db, bucketRetained); !slices.Equal(keys, []string{"good"}) {
		t.Fatalf("keys = %q", keys)
	}
	if s := db.Stats(); s.Errors != 1 {
		t.Errorf("errors = %d, want 1", s.Errors)
	}
}

func TestCommitFailureIsReportedOncePerBurst(t *testing.T) {
	var logs syncBuffer
	path := filepath.Join(t.TempDir(), "colony.db")
	db, err := Open(path, Options{Durability: DurabilitySync, Logger: zerolog.New(&logs)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := db.Close(); err != nil {
			t.Error(err)
		}
	})
	// Pull the MQTT buckets out from under the committer so commits fail.
	if err := db.bolt.Update(func(tx *bbolt.Tx) error { return tx.DeleteBucket(rootMQTT) }); err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		if err := db.submit(put(bucketRetained, fmt.Sprint(i), "v"), true); err == nil {
			t.Fatal("waiter got no error from a failed commit")
		}
	}
	if s := db.Stats(); s.Errors != 5 || s.Commits != 0 {
		t.Fatalf("stats = %+v, want 5 errors, 0 commits", s)
	}
	if err := db.bolt.Update(func(tx *bbolt.Tx) error {
		root, err := tx.CreateBucket(rootMQTT)
		if err != nil {
			return err
		}
		for _, name := range mqttBucketNames {
			if _, err := root.CreateBucket(name); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := db.submit(put(bucketRetained, "ok", "v"), true); err != nil {
		t.Fatalf("commit after repair: %v", err)
	}
	out := logs.String()
	if n := strings.Count(out, "store commit failed"); n != 1 {
		t.Errorf("%d failure lines, want 1:\n%s", n, out)
	}
	if !strings.Contains(out, `"failures":5`) {
		t.Errorf("no recovery line counting 5 failures:\n%s", out)
	}
}

// syncBuffer is a bytes.Buffer safe for the committer to log into while
// the test reads it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
