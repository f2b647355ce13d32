package cluster

import (
	"testing"
	"time"
)

// TestReleaseBudget: a node gives a session up for a takeover only within
// three quarters of the shorter of its own wait and the asker's (header
// wait_ms; absent from an older node), so that the answer arrives before
// the asker gives up and the session is not lost between the two.
func TestReleaseBudget(t *testing.T) {
	for _, c := range []struct{ own, asked, want time.Duration }{
		{3 * time.Second, 0, 2250 * time.Millisecond},
		{3 * time.Second, 2 * time.Second, 1500 * time.Millisecond},
		{3 * time.Second, 10 * time.Second, 2250 * time.Millisecond},
	} {
		if got := releaseBudget(c.own, c.asked); got != c.want {
			t.Errorf("releaseBudget(%v, %v) = %v, want %v", c.own, c.asked, got, c.want)
		}
	}
}
