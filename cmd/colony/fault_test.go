package main

import (
	"bytes"
	"crypto/sha256"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/colonymq/colony/store"
)

// An unwritable data directory stops `colony serve` at once with one line
// naming the file and the cause, and leaves an existing store untouched.
// Root ignores permission bits, so as root the child runs as nobody.
func TestServeUnwritableDataDir(t *testing.T) {
	// Not t.TempDir: its parent is private to root, and the child must
	// reach the data directory to find it read-only.
	data, err := os.MkdirTemp("", "colony-ro-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = os.Chmod(data, 0o700) // so it can be removed
		if err := os.RemoveAll(data); err != nil {
			t.Log(err)
		}
	})
	dbPath := filepath.Join(data, "colony.db")
	db, err := store.Open(dbPath, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	before := fileSum(t, dbPath)

	bin := os.Args[0]
	if os.Geteuid() == 0 {
		bin = copyExecutable(t, data)
		if err := os.Chmod(data, 0o755); err != nil { // readable, not writable, for nobody
			t.Fatal(err)
		}
		if err := os.Chmod(dbPath, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command(bin, "serve", "--data", data, "--mqtt", "127.0.0.1:0", "--ws", "off", "--http", "off", "--node", "ro")
	cmd.Env = append(os.Environ(), "COLONY_RUN_MAIN=1")
	if os.Geteuid() == 0 {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		cmd.Dir = "/"
	} else {
		if err := os.Chmod(dbPath, 0o400); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(data, 0o500); err != nil {
			t.Fatal(err)
		}
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	done := make(chan error, 1)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("colony served with an unwritable data directory")
		}
	case <-time.After(30 * time.Second):
		_ = cmd.Process.Kill()
		t.Fatal("colony did not exit")
	}
	lines := strings.Split(strings.TrimSpace(stderr.String()), "\n")
	last := lines[len(lines)-1]
	if !strings.Contains(last, dbPath) || !strings.Contains(last, "permission denied") {
		t.Fatalf("last stderr line %q: want the file and the cause", last)
	}
	if fileSum(t, dbPath) != before {
		t.Fatal("the store file changed")
	}
	db, err = store.Open(dbPath, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := db.Check(); err != nil {
		t.Fatalf("store inconsistent afterwards: %v", err)
	}
}

// A data directory that cannot be created (a file is in the way) is one clear line too.
func TestServeDataDirIsAFile(t *testing.T) {
	file := filepath.Join(t.TempDir(), "plain")
	if err := os.WriteFile(file, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	var out, errb bytes.Buffer
	if code := run([]string{"serve", "--data", filepath.Join(file, "data"), "--mqtt", "127.0.0.1:0", "--ws", "off", "--http", "off"}, nil, &out, &errb); code != 1 {
		t.Fatalf("exit %d, want 1", code)
	}
	lines := strings.Split(strings.TrimSpace(errb.String()), "\n")
	if last := lines[len(lines)-1]; !strings.Contains(last, "data directory") || !strings.Contains(last, "not a directory") {
		t.Fatalf("last stderr line %q", last)
	}
}

// copyExecutable copies this test binary where another user can run it.
func copyExecutable(t *testing.T, dir string) string {
	t.Helper()
	b, err := os.ReadFile(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "colony.test")
	if err := os.WriteFile(bin, b, 0o755); err != nil {
		t.Fatal(err)
	}
	return bin
}

func fileSum(t *testing.T, path string) [32]byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return sha256.Sum256(b)
}

// `colony store compact` refuses a store a node is using, with one line
// that says so, and compacts it once the node has stopped.
func TestStoreCompactCommand(t *testing.T) {
	data := t.TempDir()
	db, err := store.Open(filepath.Join(data, "colony.db"), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	var out, errb bytes.Buffer
	if code := run([]string{"store", "compact", "--data", data}, nil, &out, &errb); code != 1 {
		t.Fatalf("exit %d with the store open, want 1", code)
	}
	if line := strings.TrimSpace(errb.String()); !strings.Contains(line, "locked") || !strings.Contains(line, "stop colony serve") {
		t.Fatalf("stderr %q", line)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	out.Reset()
	if code := run([]string{"store", "compact", "--data", data}, nil, &out, &errb); code != 0 {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	if !strings.Contains(out.String(), "bytes") {
		t.Fatalf("stdout %q", out.String())
	}
}
