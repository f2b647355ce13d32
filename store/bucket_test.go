package store

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"sync"
	"testing"
)

type account struct {
	Name    string `json:"name"`
	Balance int    `json:"balance"`
}

func newBucket[T any](t *testing.T, db *DB, module, name string) *Bucket[T] {
	t.Helper()
	b, err := NewBucket[T](db, module, name)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestBucketPutGetDelete(t *testing.T) {
	ctx := context.Background()
	db := openTest(t, Options{})
	b := newBucket[account](t, db, "bank", "accounts")

	if _, ok, err := b.Get("alice"); ok || err != nil {
		t.Fatalf("Get before Put: ok=%v err=%v", ok, err)
	}
	if err := b.Put(ctx, "alice", account{"Alice", 10}); err != nil {
		t.Fatal(err)
	}
	// Read-your-writes without a Flush.
	v, ok, err := b.Get("alice")
	if err != nil || !ok || v != (account{"Alice", 10}) {
		t.Fatalf("Get = %+v, %v, %v", v, ok, err)
	}
	if err := b.Delete(ctx, "alice"); err != nil {
		t.Fatal(err)
	}
	if _, ok, err := b.Get("alice"); ok || err != nil {
		t.Fatalf("Get after Delete: ok=%v err=%v", ok, err)
	}
	if err := b.Delete(ctx, "nobody"); err != nil {
		t.Fatalf("Delete of a missing key: %v", err)
	}
	if err := b.Put(ctx, "", account{}); err == nil {
		t.Fatal("Put accepted an empty key")
	}
}

func TestBucketsAreSeparate(t *testing.T) {
	ctx := context.Background()
	db := openTest(t, Options{})
	a := newBucket[int](t, db, "m1", "n")
	b := newBucket[int](t, db, "m2", "n")
	c := newBucket[int](t, db, "m1", "o")
	for i, bk := range []*Bucket[int]{a, b, c} {
		if err := bk.Put(ctx, "k", i); err != nil {
			t.Fatal(err)
		}
	}
	for i, bk := range []*Bucket[int]{a, b, c} {
		if v, _, err := bk.Get("k"); err != nil || v != i {
			t.Errorf("bucket %d: Get = %d, %v", i, v, err)
		}
	}
	if _, err := NewBucket[int](db, "", "n"); !errors.Is(err, ErrInvalidName) {
		t.Errorf("empty module: %v", err)
	}
	if _, err := NewBucket[int](db, "m", ""); !errors.Is(err, ErrInvalidName) {
		t.Errorf("empty name: %v", err)
	}
}

func TestBucketUpdate(t *testing.T) {
	ctx := context.Background()
	db := openTest(t, Options{})
	b := newBucket[int](t, db, "m", "counters")

	inc := func(v int, ok bool) (int, bool, error) { return v + 1, false, nil }
	if err := b.Update(ctx, "c", func(v int, ok bool) (int, bool, error) {
		if ok {
			t.Error("ok for a missing key")
		}
		return 41, false, nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := b.Update(ctx, "c", inc); err != nil {
		t.Fatal(err)
	}
	if v, _, _ := b.Get("c"); v != 42 {
		t.Fatalf("c = %d, want 42", v)
	}

	errNo := errors.New("no")
	if err := b.Update(ctx, "c", func(v int, ok bool) (int, bool, error) { return 0, true, errNo }); err != errNo {
		t.Fatalf("Update error = %v, want the callback's error unwrapped", err)
	}
	if v, ok, _ := b.Get("c"); !ok || v != 42 {
		t.Fatalf("failed Update changed c to %d, %v", v, ok)
	}

	if err := b.Update(ctx, "c", func(v int, ok bool) (int, bool, error) { panic("boom") }); err == nil {
		t.Fatal("panicking Update returned nil")
	}
	if err := b.Update(ctx, "c", inc); err != nil {
		t.Fatalf("committer unusable after a panic: %v", err)
	}

	if err := b.Update(ctx, "c", func(v int, ok bool) (int, bool, error) { return 0, true, nil }); err != nil {
		t.Fatal(err)
	}
	if _, ok, _ := b.Get("c"); ok {
		t.Fatal("c present after Update with del")
	}
}

func TestBucketUpdateIsAtomic(t *testing.T) {
	for _, d := range []Durability{DurabilitySync, DurabilityBatch} {
		t.Run(string(d), func(t *testing.T) {
			ctx := context.Background()
			db := openTest(t, Options{Durability: d})
			b := newBucket[int](t, db, "m", "counters")
			const workers, each = 16, 50
			var wg sync.WaitGroup
			for range workers {
				wg.Go(func() {
					for range each {
						if err := b.Update(ctx, "n", func(v int, ok bool) (int, bool, error) { return v + 1, false, nil }); err != nil {
							t.Error(err)
							return
						}
					}
				})
			}
			wg.Wait()
			if v, _, err := b.Get("n"); err != nil || v != workers*each {
				t.Fatalf("n = %d, %v; want %d", v, err, workers*each)
			}
		})
	}
}

func TestBucketScanAndLen(t *testing.T) {
	ctx := context.Background()
	db := openTest(t, Options{})
	b := newBucket[int](t, db, "m", "scan")
	// More than one chunk under the prefix, plus keys either side of it.
	const n = scanChunk*2 + 17
	for i := range n {
		if err := b.Put(ctx, fmt.Sprintf("user/%04d", i), i); err != nil {
			t.Fatal(err)
		}
	}
	for _, k := range []string{"aaa", "user", "userz", "zzz"} {
		if err := b.Put(ctx, k, -1); err != nil {
			t.Fatal(err)
		}
	}
	if got, err := b.Len(); err != nil || got != n+4 {
		t.Fatalf("Len = %d, %v; want %d", got, err, n+4)
	}

	var keys []string
	err := b.Scan("user/", func(k string, v int) bool {
		if k != fmt.Sprintf("user/%04d", v) {
			t.Errorf("key %q holds %d", k, v)
		}
		keys = append(keys, k)
		// Writing from the callback must neither deadlock nor disturb the scan.
		if err := b.Put(ctx, "zzz", v); err != nil {
			t.Error(err)
		}
		return true
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) != n || !slices.IsSorted(keys) {
		t.Fatalf("scanned %d keys (sorted %v), want %d in order", len(keys), slices.IsSorted(keys), n)
	}

	count := 0
	if err := b.Scan("", func(string, int) bool { count++; return count < 3 }); err != nil {
		t.Fatal(err)
	}
	if count != 3 {
		t.Fatalf("Scan went on after false: %d calls", count)
	}
	if err := b.Scan("none/", func(string, int) bool { t.Error("called"); return true }); err != nil {
		t.Fatal(err)
	}
}

func TestBucketSurvivesReopen(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "colony.db")
	db, err := Open(path, Options{Logger: testLogger()})
	if err != nil {
		t.Fatal(err)
	}
	b := newBucket[account](t, db, "bank", "accounts")
	if err := b.Put(ctx, "bob", account{"Bob", 5}); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	db = openAt(t, path, Options{})
	b = newBucket[account](t, db, "bank", "accounts")
	if v, ok, err := b.Get("bob"); err != nil || !ok || v.Balance != 5 {
		t.Fatalf("Get after reopen = %+v, %v, %v", v, ok, err)
	}
	if err := db.Check(); err != nil {
		t.Fatal(err)
	}
}

func TestBucketRejectsUndecodableValue(t *testing.T) {
	ctx := context.Background()
	db := openTest(t, Options{})
	s := newBucket[string](t, db, "m", "n")
	if err := s.Put(ctx, "k", "not a number"); err != nil {
		t.Fatal(err)
	}
	n := newBucket[int](t, db, "m", "n")
	if _, _, err := n.Get("k"); !errors.Is(err, ErrCorrupt) {
		t.Errorf("Get = %v, want ErrCorrupt", err)
	}
	if err := n.Scan("", func(string, int) bool { return true }); !errors.Is(err, ErrCorrupt) {
		t.Errorf("Scan = %v, want ErrCorrupt", err)
	}
	if err := n.Update(ctx, "k", func(v int, ok bool) (int, bool, error) { return 1, false, nil }); !errors.Is(err, ErrCorrupt) {
		t.Errorf("Update = %v, want ErrCorrupt", err)
	}
}

func TestOpenerKeepsTheFirstError(t *testing.T) {
	ctx := context.Background()
	db := openTest(t, Options{})
	o := &Opener{DB: db, Module: "bank"}
	accounts := OpenBucket[account](o, "accounts")
	if o.Err != nil || accounts == nil {
		t.Fatalf("open: %v", o.Err)
	}
	if err := accounts.Put(ctx, "alice", account{"Alice", 1}); err != nil {
		t.Fatal(err)
	}
	if b := OpenBucket[int](o, ""); b != nil || !errors.Is(o.Err, ErrInvalidName) {
		t.Fatalf("empty name: %v, %v", b, o.Err)
	}
	first := o.Err
	if b := OpenBucket[int](o, "later"); b != nil || o.Err != first {
		t.Fatalf("after a failure: %v, %v", b, o.Err)
	}
}
