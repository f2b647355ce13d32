package store

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"go.etcd.io/bbolt"
)

// testLogger discards logs unless COLONY_LOG=debug.
func testLogger() zerolog.Logger {
	if os.Getenv("COLONY_LOG") == "debug" {
		return zerolog.New(zerolog.ConsoleWriter{Out: os.Stderr}).Level(zerolog.DebugLevel)
	}
	return zerolog.Nop()
}

// openTest opens a DB in a fresh temporary directory and closes it at the
// end of the test.
func openTest(t testing.TB, opts Options) *DB {
	t.Helper()
	return openAt(t, filepath.Join(t.TempDir(), "colony.db"), opts)
}

// openAt opens the DB at path and closes it at the end of the test.
func openAt(t testing.TB, path string, opts Options) *DB {
	t.Helper()
	opts.Logger = testLogger()
	db, err := Open(path, opts)
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	t.Cleanup(func() {
		if err := db.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
	})
	return db
}

// flush commits everything queued, failing the test on error.
func flush(t testing.TB, db *DB) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := db.Flush(ctx); err != nil {
		t.Fatalf("flush: %v", err)
	}
}

// mqttKeys returns the keys of one MQTT sub-bucket, after a flush.
func mqttKeys(t testing.TB, db *DB, bucket uint8) []string {
	t.Helper()
	flush(t, db)
	var keys []string
	err := db.view(func(tx *bbolt.Tx) error {
		return tx.Bucket(rootMQTT).Bucket(mqttBucketNames[bucket]).ForEach(func(k, _ []byte) error {
			keys = append(keys, string(k))
			return nil
		})
	})
	if err != nil {
		t.Fatalf("list %s: %v", mqttBucketNames[bucket], err)
	}
	return keys
}

func TestOpenCreatesDirectoryAndFile(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "nested", "data")
	path := filepath.Join(dir, "colony.db")
	db := openAt(t, path, Options{})
	if db.Path() != path {
		t.Errorf("Path() = %q, want %q", db.Path(), path)
	}
	for p, want := range map[string]os.FileMode{dir: 0o700 | os.ModeDir, path: 0o600} {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode() != want {
			t.Errorf("mode of %s = %v, want %v", p, fi.Mode(), want)
		}
	}
	if err := db.Check(); err != nil {
		t.Errorf("check: %v", err)
	}
}

func TestOpenRejectsBadOptions(t *testing.T) {
	cases := map[string]Options{
		"durability": {Durability: "fsync-maybe"},
		"interval":   {BatchInterval: -time.Second},
		"max batch":  {MaxBatch: -1},
		"queue":      {Queue: -1},
	}
	for name, opts := range cases {
		t.Run(name, func(t *testing.T) {
			db, err := Open(filepath.Join(t.TempDir(), "x.db"), opts)
			if err == nil {
				if cerr := db.Close(); cerr != nil {
					t.Error(cerr)
				}
				t.Fatal("Open accepted bad options")
			}
			if !errors.Is(err, ErrInvalidOptions) {
				t.Errorf("error %v does not wrap ErrInvalidOptions", err)
			}
		})
	}
	_, err := Open(filepath.Join(t.TempDir(), "x.db"), Options{Durability: "fsync-maybe"})
	if err == nil || !strings.Contains(err.Error(), "fsync-maybe") {
		t.Errorf("error %v does not name the bad durability", err)
	}
}

func TestOpenLockedFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "colony.db")
	openAt(t, path, Options{})

	done := make(chan error, 1)
	go func() {
		db, err := Open(path, Options{})
		if err == nil {
			err = errors.Join(errors.New("second open succeeded"), db.Close())
		}
		done <- err
	}()
	select {
	case err := <-done:
		if !errors.Is(err, ErrLocked) {
			t.Fatalf("second open: %v, want ErrLocked", err)
		}
		if !strings.Contains(err.Error(), path) {
			t.Errorf("error %q does not name the path", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("second open hangs")
	}
}

func TestCloseIsIdempotentAndRefusesLaterUse(t *testing.T) {
	db, err := Open(filepath.Join(t.TempDir(), "colony.db"), Options{Logger: testLogger()})
	if err != nil {
		t.Fatal(err)
	}
	b, err := NewBucket[int](db, "m", "n")
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatalf("second close: %v", err)
	}
	ctx := context.Background()
	if err := db.Flush(ctx); !errors.Is(err, ErrClosed) {
		t.Errorf("Flush after close: %v", err)
	}
	if err := b.Put(ctx, "k", 1); !errors.Is(err, ErrClosed) {
		t.Errorf("Put after close: %v", err)
	}
	if _, _, err := b.Get("k"); !errors.Is(err, ErrClosed) {
		t.Errorf("Get after close: %v", err)
	}
	if _, err := NewBucket[int](db, "m", "o"); !errors.Is(err, ErrClosed) {
		t.Errorf("NewBucket after close: %v", err)
	}
	if err := db.Check(); !errors.Is(err, ErrClosed) {
		t.Errorf("Check after close: %v", err)
	}
}

func TestCloseCommitsQueuedHookWrites(t *testing.T) {
	path := filepath.Join(t.TempDir(), "colony.db")
	// A long interval: only Close can be what commits these writes.
	db, err := Open(path, Options{BatchInterval: time.Hour, Logger: testLogger()})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 100 {
		if err := db.submit(op{kind: opPut, bucket: bucketRetained, key: []byte{byte(i)}, value: []byte{1}}, false); err != nil {
			t.Fatal(err)
		}
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	db = openAt(t, path, Options{})
	if n := len(mqttKeys(t, db, bucketRetained)); n != 100 {
		t.Fatalf("%d retained keys after reopen, want 100", n)
	}
	if err := db.Check(); err != nil {
		t.Fatal(err)
	}
}

func TestDurabilityModesPersist(t *testing.T) {
	for _, d := range []Durability{DurabilitySync, DurabilityBatch, DurabilityNone} {
		t.Run(string(d), func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "colony.db")
			db, err := Open(path, Options{Durability: d, Logger: testLogger()})
			if err != nil {
				t.Fatal(err)
			}
			b, err := NewBucket[string](db, "m", "n")
			if err != nil {
				t.Fatal(err)
			}
			if err := b.Put(context.Background(), "k", string(d)); err != nil {
				t.Fatal(err)
			}
			if err := db.Close(); err != nil {
				t.Fatal(err)
			}
			db = openAt(t, path, Options{Durability: d})
			b, err = NewBucket[string](db, "m", "n")
			if err != nil {
				t.Fatal(err)
			}
			v, ok, err := b.Get("k")
			if err != nil || !ok || v != string(d) {
				t.Fatalf("Get = %q, %v, %v", v, ok, err)
			}
		})
	}
}
