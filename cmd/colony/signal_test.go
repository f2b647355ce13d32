package main

import (
	"bufio"
	"encoding/json"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	pahov3 "github.com/eclipse/paho.mqtt.golang"
)

// TestMain lets a test run this binary's main in a child process: the test
// executable re-runs itself with COLONY_RUN_MAIN=1, which is a real colony
// process that real signals can be sent to.
func TestMain(m *testing.M) {
	if os.Getenv("COLONY_RUN_MAIN") == "1" {
		main()
		return
	}
	os.Exit(m.Run())
}

func TestSIGTERMShutsDownGracefully(t *testing.T) {
	data := t.TempDir()
	cmd := exec.Command(os.Args[0], "serve", "--data", data, "--mqtt", "127.0.0.1:0", "--ws", "off", "--http", "127.0.0.1:0", "--node", "sig")
	cmd.Env = append(os.Environ(), "COLONY_RUN_MAIN=1")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()

	lines := make(chan map[string]any, 64)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			var m map[string]any
			if json.Unmarshal(sc.Bytes(), &m) == nil {
				lines <- m
			}
		}
		close(lines)
	}()
	var addr string
	for addr == "" {
		select {
		case m, ok := <-lines:
			if !ok {
				t.Fatal("colony exited before starting")
			}
			if m["message"] == "colony started" {
				addr, _ = m["mqtt"].(string)
			}
		case <-time.After(20 * time.Second):
			t.Fatal("colony did not start")
		}
	}
	c := pahov3.NewClient(pahov3.NewClientOptions().AddBroker("tcp://" + addr).SetClientID("sig-client").SetAutoReconnect(false))
	if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("connect: %v", tok.Error())
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	var msgs []string
	for m := range lines {
		if s, ok := m["message"].(string); ok {
			msgs = append(msgs, s)
		}
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("exit after SIGTERM: %v (log: %v)", err, msgs)
	}
	joined := strings.Join(msgs, " | ")
	if !strings.Contains(joined, "shutting down") || !strings.Contains(joined, "colony stopped") {
		t.Fatalf("shutdown not logged: %s", joined)
	}
	deadline := time.Now().Add(10 * time.Second)
	for c.IsConnectionOpen() && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if c.IsConnectionOpen() {
		t.Fatal("client still connected after the server exited")
	}
	if fi, err := os.Stat(data + "/colony.db"); err != nil || fi.Size() == 0 {
		t.Fatalf("store file: %v", err)
	}
}
