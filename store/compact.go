package store

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"
)

// CompactResult reports what Compact did.
type CompactResult struct {
	Before, After int64 // file sizes in bytes
}

// Compact rewrites the data file at path into a new file holding only live
// pages, checks it, and renames it over the old one. bbolt never shrinks a
// file: space freed by expired sessions and delivered messages is reused
// but not returned, so a burst of persistent sessions leaves a large file.
// The file must not be in use: a running node holds its lock, and Compact
// then fails at once with an error wrapping ErrLocked. On any error the
// original file is left as it was.
func Compact(path string) (CompactResult, error) {
	var res CompactResult
	fi, err := os.Stat(path)
	if err != nil {
		return res, fmt.Errorf("compact: %w", err)
	}
	res.Before = fi.Size()
	// Opened for writing, so the lock is exclusive: no node can open the
	// file while it is being rewritten.
	src, err := bbolt.Open(path, 0o600, &bbolt.Options{Timeout: 200 * time.Millisecond, NoFreelistSync: true, FreelistType: bbolt.FreelistMapType})
	if err != nil {
		if errors.Is(err, bolterrors.ErrTimeout) {
			return res, fmt.Errorf("compact %s: %w (stop colony serve first)", path, ErrLocked)
		}
		return res, fmt.Errorf("compact: open %s: %w", path, err)
	}
	defer src.Close()
	tmp := path + ".compact"
	if err := os.Remove(tmp); err != nil && !errors.Is(err, os.ErrNotExist) {
		return res, fmt.Errorf("compact: remove stale %s: %w", tmp, err)
	}
	dst, err := bbolt.Open(tmp, fi.Mode().Perm(), &bbolt.Options{NoFreelistSync: true, FreelistType: bbolt.FreelistMapType})
	if err != nil {
		return res, fmt.Errorf("compact: create %s: %w", tmp, err)
	}
	fail := func(err error) (CompactResult, error) {
		if cerr := dst.Close(); cerr != nil {
			err = errors.Join(err, cerr)
		}
		if rerr := os.Remove(tmp); rerr != nil && !errors.Is(rerr, os.ErrNotExist) {
			err = errors.Join(err, rerr)
		}
		return res, err
	}
	if err := bbolt.Compact(dst, src, 64<<20); err != nil {
		return fail(fmt.Errorf("compact %s: %w", path, err))
	}
	if err := dst.View(func(tx *bbolt.Tx) error {
		var first error
		for err := range tx.Check() { // drained: the checker blocks on it
			if first == nil {
				first = err
			}
		}
		return first
	}); err != nil {
		return fail(fmt.Errorf("compact %s: the new file fails its check, original kept: %w", path, err))
	}
	if err := dst.Sync(); err != nil {
		return fail(fmt.Errorf("compact: sync %s: %w", tmp, err))
	}
	if err := dst.Close(); err != nil {
		return res, fmt.Errorf("compact: close %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return res, fmt.Errorf("compact: replace %s: %w", path, err)
	}
	if d, err := os.Open(filepath.Dir(path)); err == nil { // make the rename durable
		if err := d.Sync(); err != nil {
			d.Close()
			return res, fmt.Errorf("compact: sync directory: %w", err)
		}
		d.Close()
	}
	if fi, err := os.Stat(path); err == nil {
		res.After = fi.Size()
	}
	return res, nil
}
