package store

import (
	"context"
	"errors"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestBatchCommitsAcrossBuckets(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "colony.db")
	db := openAt(t, path, Options{})
	accounts := newBucket[account](t, db, "bank", "accounts")
	totals := newBucket[int](t, db, "bank", "totals")
	if err := accounts.Put(ctx, "gone", account{"Gone", 1}); err != nil {
		t.Fatal(err)
	}
	if err := totals.Put(ctx, "sum", 5); err != nil {
		t.Fatal(err)
	}

	bt := db.NewBatch()
	accounts.PutIn(bt, "alice", account{"Alice", 10})
	accounts.DeleteIn(bt, "gone")
	totals.UpdateIn(bt, "sum", func(v int, ok bool) (int, bool) { return v + 10, ok })
	totals.UpdateIn(bt, "absent", func(v int, ok bool) (int, bool) { return 1, ok }) // not written
	if bt.Len() != 4 {
		t.Fatalf("Len = %d, want 4", bt.Len())
	}
	if err := bt.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if err := bt.Commit(ctx); err != nil { // nothing left to write
		t.Fatalf("second Commit: %v", err)
	}
	if v, ok, _ := accounts.Get("alice"); !ok || v.Balance != 10 {
		t.Errorf("alice = %+v, %v", v, ok)
	}
	if _, ok, _ := accounts.Get("gone"); ok {
		t.Error("deleted key still there")
	}
	if v, _, _ := totals.Get("sum"); v != 15 {
		t.Errorf("sum = %d, want 15", v)
	}
	if _, ok, _ := totals.Get("absent"); ok {
		t.Error("UpdateIn wrote a key it was told not to")
	}
	if err := db.NewBatch().Commit(ctx); err != nil {
		t.Errorf("empty batch: %v", err)
	}
}

func TestBatchWithBadKeyWritesNothing(t *testing.T) {
	ctx := context.Background()
	db := openTest(t, Options{})
	b := newBucket[int](t, db, "m", "n")
	for name, key := range map[string]string{"empty": "", "too long": strings.Repeat("k", 40000)} {
		bt := db.NewBatch()
		b.PutIn(bt, "first", 1)
		b.PutIn(bt, key, 2)
		if err := bt.Commit(ctx); !errors.Is(err, ErrInvalidKey) {
			t.Errorf("%s key: Commit = %v, want ErrInvalidKey", name, err)
		}
		if _, ok, _ := b.Get("first"); ok {
			t.Errorf("%s key: the batch's other write was committed", name)
		}
	}
}

func TestBatchWithCorruptRecordWritesNothing(t *testing.T) {
	ctx := context.Background()
	db := openTest(t, Options{})
	strs := newBucket[string](t, db, "m", "n")
	if err := strs.Put(ctx, "word", "not a number"); err != nil {
		t.Fatal(err)
	}
	ints := newBucket[int](t, db, "m", "n") // same bucket, read as the wrong type
	bt := db.NewBatch()
	ints.PutIn(bt, "a", 1)
	ints.UpdateIn(bt, "word", func(v int, ok bool) (int, bool) { return v + 1, true })
	if err := bt.Commit(ctx); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Commit = %v, want ErrCorrupt", err)
	}
	if _, ok, _ := ints.Get("a"); ok {
		t.Error("a write before the failing one was committed")
	}
}

func TestScanRange(t *testing.T) {
	ctx := context.Background()
	db := openTest(t, Options{})
	b := newBucket[int](t, db, "m", "n")
	// More keys than one scan chunk, so the range crosses chunk borders.
	const n = scanChunk*2 + 10
	bt := db.NewBatch()
	for i := range n {
		b.PutIn(bt, key4(i), i)
	}
	if err := bt.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	collect := func(start, end string, stop int) []int {
		var got []int
		if err := b.ScanRange(start, end, func(_ string, v int) bool {
			got = append(got, v)
			return len(got) != stop
		}); err != nil {
			t.Fatal(err)
		}
		return got
	}
	if got := collect(key4(5), key4(scanChunk+200), -1); !slices.Equal(got, seq(5, scanChunk+200)) {
		t.Errorf("range [5,%d): got %d values from %v", scanChunk+200, len(got), got[:min(3, len(got))])
	}
	if got := collect(key4(n-3), "", -1); !slices.Equal(got, seq(n-3, n)) {
		t.Errorf("open range = %v", got)
	}
	if got := collect(key4(10), key4(10), -1); len(got) != 0 {
		t.Errorf("empty range = %v", got)
	}
	if got := collect(key4(0), "", 3); !slices.Equal(got, []int{0, 1, 2}) {
		t.Errorf("stopped range = %v", got)
	}
}

func key4(i int) string { return string([]byte{0, 0, byte(i >> 8), byte(i)}) }

func seq(from, to int) []int {
	var out []int
	for i := from; i < to; i++ {
		out = append(out, i)
	}
	return out
}
