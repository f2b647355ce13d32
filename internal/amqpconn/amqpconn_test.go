package amqpconn

import (
	"context"
	"strings"
	"testing"
	"time"
)

func TestBackoffDoublesUpToMax(t *testing.T) {
	var b Backoff
	want := []time.Duration{200 * time.Millisecond, 400 * time.Millisecond, 800 * time.Millisecond, 1600 * time.Millisecond, 3200 * time.Millisecond, MaxBackoff, MaxBackoff}
	for i, w := range want {
		if got := b.Failed(); got != w {
			t.Fatalf("attempt %d: wait %v, want %v", i+1, got, w)
		}
	}
	b.Reset()
	if got := b.current(); got != MinBackoff {
		t.Fatalf("after Reset: %v, want %v", got, MinBackoff)
	}
}

func TestSleepStopsWithContext(t *testing.T) {
	b := Backoff{d: time.Hour}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if b.Sleep(ctx) {
		t.Fatal("Sleep reported a full wait after its context ended")
	}
}

func TestRedactHidesPassword(t *testing.T) {
	got := Redact("amqp://user:s3cret@rabbit.example:5673/vh")
	if strings.Contains(got, "s3cret") || !strings.Contains(got, "user:xxx@rabbit.example:5673") {
		t.Fatalf("Redact = %q", got)
	}
	if got := Redact("::not a url"); got != "(invalid url)" {
		t.Fatalf("Redact(invalid) = %q", got)
	}
}

func TestDialErrorNamesURLWithoutPassword(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // nothing is dialled
	_, err := Dial(ctx, "amqp://guest:hunter2@127.0.0.1:1/", "test", time.Second)
	if err == nil || strings.Contains(err.Error(), "hunter2") || !strings.Contains(err.Error(), "guest:xxx@") {
		t.Fatalf("Dial error = %v", err)
	}
}
