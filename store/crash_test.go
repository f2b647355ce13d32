package store

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestCrashKeepsAcknowledgedWrites kills a writing process with SIGKILL
// and checks that the file is consistent and that every write the process
// saw acknowledged is there. Acknowledged means committed, so this holds
// in every mode for a process crash; only a power loss tells the modes apart.
func TestCrashKeepsAcknowledgedWrites(t *testing.T) {
	if testing.Short() {
		t.Skip("spawns a process")
	}
	for _, d := range []Durability{DurabilitySync, DurabilityBatch, DurabilityNone} {
		t.Run(string(d), func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "colony.db")
			cmd := exec.Command(os.Args[0], "-test.run=^TestCrashChild$")
			cmd.Env = append(os.Environ(), "STORE_CRASH_PATH="+path, "STORE_CRASH_DURABILITY="+string(d))
			cmd.Stderr = os.Stderr
			out, err := cmd.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			var acked []int
			killed := false
			deadline := time.AfterFunc(60*time.Second, func() {
				if err := cmd.Process.Kill(); err != nil {
					t.Error(err)
				}
			})
			defer deadline.Stop()
			sc := bufio.NewScanner(out)
			for sc.Scan() {
				n, ok := strings.CutPrefix(sc.Text(), "ack ")
				if !ok {
					continue
				}
				i, err := strconv.Atoi(n)
				if err != nil {
					t.Fatal(err)
				}
				acked = append(acked, i)
				if len(acked) == 300 && !killed {
					killed = true
					if err := cmd.Process.Kill(); err != nil { // SIGKILL
						t.Fatal(err)
					}
				}
			}
			if err := cmd.Wait(); err == nil {
				t.Fatal("child exited normally")
			}
			if len(acked) < 300 {
				t.Fatalf("child acknowledged only %d writes", len(acked))
			}

			db := openAt(t, path, Options{})
			if err := db.Check(); err != nil {
				t.Fatal(err)
			}
			b := newBucket[int](t, db, "crash", "acked")
			for _, i := range acked {
				if v, ok, err := b.Get(strconv.Itoa(i)); err != nil || !ok || v != i {
					t.Fatalf("acknowledged write %d lost: %d, %v, %v", i, v, ok, err)
				}
			}
			// Waited hook writes are acknowledged too.
			if keys := mqttKeys(t, db, bucketRetained); len(keys) < len(acked) {
				t.Fatalf("%d waited hook writes survived, want at least %d", len(keys), len(acked))
			}
		})
	}
}

// TestCrashChild is the process TestCrashKeepsAcknowledgedWrites kills. It
// writes until killed, printing "ack N" after write N has returned, with
// unacknowledged hook churn in every commit.
func TestCrashChild(t *testing.T) {
	path := os.Getenv("STORE_CRASH_PATH")
	if path == "" {
		t.Skip("helper process for TestCrashKeepsAcknowledgedWrites")
	}
	db, err := Open(path, Options{Durability: Durability(os.Getenv("STORE_CRASH_DURABILITY"))})
	if err != nil {
		t.Fatal(err)
	}
	b, err := NewBucket[int](db, "crash", "acked")
	if err != nil {
		t.Fatal(err)
	}
	value := []byte(strings.Repeat("x", 512))
	churn := func(i int) {
		for j := range 20 {
			key := inflightKey(fmt.Sprintf("churn-%d", j), uint16(i))
			if err := db.submit(op{kind: opPut, bucket: bucketInflight, key: key, value: value}, false); err != nil {
				t.Fatal(err)
			}
			if (i+j)%3 != 0 {
				if err := db.submit(op{kind: opDelete, bucket: bucketInflight, key: key}, false); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	ctx := context.Background()
	for i := 0; ; i++ {
		churn(i)
		if err := b.Put(ctx, strconv.Itoa(i), i); err != nil {
			t.Fatal(err)
		}
		if err := db.submit(op{kind: opPut, bucket: bucketRetained, key: []byte(strconv.Itoa(i)), value: []byte{1}}, true); err != nil {
			t.Fatal(err)
		}
		if _, err := fmt.Fprintf(os.Stdout, "ack %d\n", i); err != nil {
			t.Fatal(err)
		}
	}
}
