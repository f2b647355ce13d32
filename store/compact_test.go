package store

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

func TestCompactShrinksAndKeepsData(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "colony.db")
	db, err := Open(path, Options{Logger: testLogger()})
	if err != nil {
		t.Fatal(err)
	}
	b := newBucket[account](t, db, "bank", "accounts")
	name := strings.Repeat("n", 1000)
	// Writers in parallel share commits (group commit), which keeps this quick.
	each := func(f func(i int) error) {
		var wg sync.WaitGroup
		errs := make(chan error, 3000)
		for w := range 16 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := w; i < 3000; i += 16 {
					if err := f(i); err != nil {
						errs <- err
					}
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
	}
	each(func(i int) error { return b.Put(ctx, fmt.Sprint("acct-", i), account{name, i}) })
	each(func(i int) error {
		if i%100 == 0 {
			return nil
		}
		return b.Delete(ctx, fmt.Sprint("acct-", i))
	})
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	res, err := Compact(path)
	if err != nil {
		t.Fatal(err)
	}
	if res.After >= res.Before/2 {
		t.Fatalf("compact: %d -> %d bytes, want less than half", res.Before, res.After)
	}
	if _, err := os.Stat(path + ".compact"); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("temporary file left behind: %v", err)
	}
	db = openAt(t, path, Options{})
	b = newBucket[account](t, db, "bank", "accounts")
	if n, err := b.Len(); err != nil || n != 30 {
		t.Fatalf("%d records after compact (%v), want 30", n, err)
	}
	if v, ok, err := b.Get("acct-2900"); err != nil || !ok || v.Balance != 2900 {
		t.Fatalf("Get = %+v, %v, %v", v, ok, err)
	}
	if err := db.Check(); err != nil {
		t.Fatal(err)
	}
}

func TestCompactRefusesFileInUse(t *testing.T) {
	path := filepath.Join(t.TempDir(), "colony.db")
	db := openAt(t, path, Options{})
	newBucket[account](t, db, "bank", "accounts")
	if err := db.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	before, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Compact(path); !errors.Is(err, ErrLocked) {
		t.Fatalf("compact of an open store: %v, want ErrLocked", err)
	}
	after, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if sha256.Sum256(before) != sha256.Sum256(after) {
		t.Fatal("a refused compact changed the file")
	}
}
