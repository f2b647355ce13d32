package main

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	pahov3 "github.com/eclipse/paho.mqtt.golang"
)

// startChild runs `colony serve` in a child process (see TestMain) and
// returns it with its MQTT address once it has started.
func startChild(t *testing.T, args ...string) (*exec.Cmd, string) {
	t.Helper()
	cmd := exec.Command(os.Args[0], append([]string{"serve"}, args...)...)
	cmd.Env = append(os.Environ(), "COLONY_RUN_MAIN=1")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			if err := cmd.Process.Kill(); err == nil {
				if err := cmd.Wait(); err != nil {
					t.Logf("child: %v", err)
				}
			}
		}
	})
	addr := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			var m map[string]any
			if json.Unmarshal(sc.Bytes(), &m) == nil && m["message"] == "colony started" {
				a, _ := m["mqtt"].(string)
				addr <- a
			}
		}
	}()
	select {
	case a := <-addr:
		return cmd, a
	case <-time.After(20 * time.Second):
		t.Fatal("colony did not start")
	}
	return nil, ""
}

// TestSIGKILLInSyncModeLosesNoAcknowledgedMessage floods a persistent
// session with QoS 1 messages, kills the server with SIGKILL in the middle,
// restarts it on the same data and checks that every message whose PUBACK
// the publisher received reaches the subscriber.
func TestSIGKILLInSyncModeLosesNoAcknowledgedMessage(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "colony.toml")
	if err := os.WriteFile(cfg, []byte("[store]\ndurability = \"sync\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	args := []string{"-c", cfg, "--data", filepath.Join(dir, "data"), "--mqtt", "127.0.0.1:0", "--ws", "off", "--http", "off"}
	server, addr := startChild(t, args...)

	opts := func(id string, clean bool) *pahov3.ClientOptions {
		return pahov3.NewClientOptions().AddBroker("tcp://" + addr).SetClientID(id).SetCleanSession(clean).
			SetAutoReconnect(false).SetConnectRetry(false).SetMaxResumePubInFlight(256)
	}
	sub := pahov3.NewClient(opts("durable-sub", false))
	if tok := sub.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("subscriber: %v", tok.Error())
	}
	if tok := sub.Subscribe("crash/#", 1, nil); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe: %v", tok.Error())
	}
	sub.Disconnect(100)

	pub := pahov3.NewClient(opts("flooder", true))
	if tok := pub.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("publisher: %v", tok.Error())
	}
	// Publish with a window of 64 outstanding messages; record each PUBACK.
	var mu sync.Mutex
	acked := map[uint32]bool{}
	killed := make(chan struct{})
	var wg sync.WaitGroup
	window := make(chan struct{}, 64)
	const total = 5000
	for seq := uint32(0); seq < total; seq++ {
		select {
		case <-killed:
		case window <- struct{}{}:
		}
		if isClosed(killed) {
			break
		}
		payload := make([]byte, 64)
		binary.BigEndian.PutUint32(payload, seq)
		tok := pub.Publish("crash/x", 1, false, payload)
		wg.Go(func() {
			defer func() { <-window }()
			if tok.WaitTimeout(5*time.Second) && tok.Error() == nil {
				mu.Lock()
				acked[seq] = true
				n := len(acked)
				mu.Unlock()
				if n == 1500 {
					// Mid-flood: no shutdown, no flush, no goodbye.
					if err := server.Process.Kill(); err != nil {
						t.Errorf("kill: %v", err)
					}
					close(killed)
				}
			}
		})
	}
	wg.Wait()
	if err := server.Wait(); err == nil {
		t.Fatal("server exited cleanly; it should have been killed")
	}
	mu.Lock()
	nAcked := len(acked)
	mu.Unlock()
	if nAcked < 1500 || nAcked >= total {
		t.Fatalf("%d messages acknowledged; the kill must land mid-flood", nAcked)
	}

	_, addr = startChild(t, args...)
	got := map[uint32]int{}
	var gmu sync.Mutex
	all := make(chan struct{})
	var once sync.Once
	sub = pahov3.NewClient(pahov3.NewClientOptions().AddBroker("tcp://" + addr).SetClientID("durable-sub").
		SetCleanSession(false).SetAutoReconnect(false).SetDefaultPublishHandler(func(_ pahov3.Client, m pahov3.Message) {
		gmu.Lock()
		defer gmu.Unlock()
		got[binary.BigEndian.Uint32(m.Payload())]++
		complete := true
		for seq := range acked {
			if got[seq] == 0 {
				complete = false
				break
			}
		}
		if complete {
			once.Do(func() { close(all) })
		}
	}))
	if tok := sub.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("subscriber after restart: %v", tok.Error())
	}
	defer sub.Disconnect(100)
	select {
	case <-all:
	case <-time.After(30 * time.Second):
	}
	gmu.Lock()
	defer gmu.Unlock()
	var lost []uint32
	for seq := range acked {
		if got[seq] == 0 {
			lost = append(lost, seq)
		}
	}
	if len(lost) > 0 {
		t.Fatalf("%d of %d acknowledged messages lost after SIGKILL (e.g. %v)", len(lost), nAcked, lost[:min(5, len(lost))])
	}
	t.Logf("%d acknowledged before the kill, all delivered after restart (%d delivered in all)", nAcked, len(got))
}

func isClosed(c chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}
