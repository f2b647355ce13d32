package cluster

import (
	"slices"
	"testing"
	"time"
)

func TestDirectoryReports(t *testing.T) {
	d := newDirectory()
	if _, ok := d.next(time.Second); ok {
		t.Fatal("a report with nothing to say")
	}
	d.present("alice", true)
	d.present("bob", true)
	d.present("bob", false)
	r, ok := d.next(time.Second)
	slices.Sort(r.Online)
	if !ok || r.Full || !slices.Equal(r.Online, []string{"alice"}) || !slices.Equal(r.Offline, []string{"bob"}) || r.TTLms != 1000 {
		t.Fatalf("change report %+v", r)
	}
	d.dueFull()
	if r, ok := d.next(time.Second); !ok || !r.Full || !slices.Equal(r.Users, []string{"alice"}) {
		t.Fatalf("full report %+v", r)
	}
	if _, ok := d.next(time.Second); ok {
		t.Fatal("a report after everything was said")
	}
}

func TestDirectoryAppliesAndExpires(t *testing.T) {
	d := newDirectory()
	t0 := time.Unix(1000, 0)
	ev := func(evs []userEvent) []userEvent {
		slices.SortFunc(evs, func(a, b userEvent) int {
			if a.user < b.user {
				return -1
			}
			return 1
		})
		return evs
	}
	got := ev(d.apply("b", &usersReport{Full: true, Users: []string{"alice", "bob"}, TTLms: 3000}, t0))
	if !slices.Equal(got, []userEvent{{"b", "alice", true}, {"b", "bob", true}}) {
		t.Fatalf("first full report: %v", got)
	}
	got = d.apply("b", &usersReport{Online: []string{"carol", "alice"}, Offline: []string{"bob", "dan"}, TTLms: 3000}, t0)
	if !slices.Equal(ev(got), []userEvent{{"b", "bob", false}, {"b", "carol", true}}) {
		t.Fatalf("change report: %v", got)
	}
	// A full report replaces what was known: alice is gone.
	got = d.apply("b", &usersReport{Full: true, Users: []string{"carol"}, TTLms: 3000}, t0.Add(time.Second))
	if !slices.Equal(got, []userEvent{{"b", "alice", false}}) {
		t.Fatalf("second full report: %v", got)
	}
	d.apply("c", &usersReport{Full: true, Users: []string{"erin"}, TTLms: 10000}, t0)
	if got := d.expire(t0.Add(3999 * time.Millisecond)); len(got) != 0 {
		t.Fatalf("expired early: %v", got)
	}
	if got := d.expire(t0.Add(4 * time.Second)); !slices.Equal(got, []userEvent{{"b", "carol", false}}) {
		t.Fatalf("expiry of node b: %v", got)
	}
	// An empty full report (a node stopping) says everyone is gone.
	if got := d.apply("c", &usersReport{Full: true, TTLms: 1}, t0); !slices.Equal(got, []userEvent{{"c", "erin", false}}) {
		t.Fatalf("last report of node c: %v", got)
	}
	if len(d.remote) != 0 {
		t.Fatalf("nodes left: %v", d.remote)
	}
}
