package main

import (
	"bytes"
	"encoding/json"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/colonymq/colony/app/apptest"
	"github.com/colonymq/colony/server/mqttsn"
)

// syncBuffer is a bytes.Buffer safe for the subscriber's goroutine and the test.
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

func TestSNCommand(t *testing.T) {
	cfg := apptest.Config(t)
	cfg.MQTTSN.Listen = "127.0.0.1:0"
	a := apptest.Run(t, cfg)
	addr := a.Addr(mqttsn.ListenerUDP)

	var out, errb syncBuffer
	done := make(chan int)
	go func() {
		done <- run([]string{"sn", "sub", "-i", "cli-sub", "-a", addr, "-t", "cli/#", "-q", "1", "-v", "-C", "1"}, nil, &out, &errb)
	}()
	// Publish until the subscriber, which needs a moment to subscribe, has its message.
	deadline := time.Now().Add(apptest.Wait)
	for !strings.Contains(out.String(), "cli/x hello") {
		if time.Now().After(deadline) {
			t.Fatalf("subscriber output %q, errors %q", out.String(), errb.String())
		}
		var pe bytes.Buffer
		if code := run([]string{"sn", "pub", "-i", "cli-pub", "-a", addr, "-t", "cli/x", "-m", "hello", "-q", "1"}, nil, &pe, &pe); code != 0 {
			t.Fatalf("pub exit %d: %s", code, pe.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if code := <-done; code != 0 {
		t.Fatalf("sub exit %d: %s", code, errb.String())
	}

	// colony bench --sn: MQTT-SN publishers, an MQTT subscriber, nothing lost.
	var bo, be bytes.Buffer
	if code := run([]string{"bench", "--url", apptest.URL(a), "--sn", addr, "--pubs", "2", "--count", "200", "--qos", "1", "--json"}, nil, &bo, &be); code != 0 {
		t.Fatalf("bench --sn exit %d: %s", code, be.String())
	}
	var r struct{ Sent, Received, Lost, Duplicates int64 }
	if err := json.Unmarshal(bo.Bytes(), &r); err != nil {
		t.Fatalf("bench output %q: %v", bo.String(), err)
	}
	if r.Sent != 400 || r.Received != 400 || r.Lost != 0 || r.Duplicates != 0 {
		t.Fatalf("bench --sn counts %+v", r)
	}
}
