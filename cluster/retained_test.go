package cluster

import "testing"

func TestRetainedLastWriterWins(t *testing.T) {
	r := newRetainedIndex()
	ts := r.local("x", "b", true)
	if newer, held := r.remote("x", stamp{ts: ts - 1, origin: "z", present: true}); newer || !held {
		t.Fatalf("older message replaced a newer one: %v %v", newer, held)
	}
	if newer, _ := r.remote("x", stamp{ts: ts, origin: "a", present: true}); newer {
		t.Fatal("equal time, smaller origin must lose")
	}
	if newer, held := r.remote("x", stamp{ts: ts, origin: "c", present: false}); !newer || !held {
		t.Fatal("equal time, greater origin must win")
	}
	if newer, held := r.remote("x", stamp{ts: ts - 5, origin: "z", present: true}); newer || held {
		t.Fatal("a clear must not be undone by an older message")
	}
	// A peer clock far ahead: the next local stamp still comes after it.
	r.remote("y", stamp{ts: ts + 1e12, origin: "z", present: true})
	if next := r.local("y", "b", true); next <= ts+1e12 {
		t.Fatalf("local stamp %d not after the remote one seen", next)
	}
	r.seed("y", "b", 1)
	if s, _ := r.get("y"); s.ts == 1 {
		t.Fatal("seed overwrote a known stamp")
	}
	if tomb := r.tombstones(); len(tomb) != 1 || tomb["x"].origin != "c" {
		t.Fatalf("tombstones %v", tomb)
	}
}
