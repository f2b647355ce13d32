package cluster

import "testing"

func TestInterestCountsSubscriptions(t *testing.T) {
	in := newInterest()
	if in.add(subRef{client: "c1", filter: "a/#"}) == nil {
		t.Fatal("first subscription to a key must wait for its binding")
	}
	if in.add(subRef{client: "c2", filter: "a/#"}, subRef{client: "c1", filter: "$share/g/a/#"}) != nil {
		t.Fatal("a key already wanted needs no new binding")
	}
	if in.add(subRef{client: "c1", filter: "$SYS/#"}) != nil {
		t.Fatal("reserved filters bind nothing")
	}
	keys, done := in.take(false)
	if len(keys) != 1 || !keys["t.a.#"] {
		t.Fatalf("dirty keys %v", keys)
	}
	select {
	case <-done:
		t.Fatal("round closed before it was applied")
	default:
	}
	in.remove(subRef{client: "c2", filter: "a/#"}, subRef{client: "c1", filter: "a/#"})
	if keys, _ := in.take(false); len(keys) != 0 {
		t.Fatalf("key still wanted by the shared subscription, got dirty %v", keys)
	}
	in.remove(subRef{client: "c1", filter: "$share/g/a/#"}, subRef{client: "nobody", filter: "b"})
	keys, _ = in.take(false)
	if want, dirty := keys["t.a.#"]; !dirty || want || len(keys) != 1 {
		t.Fatalf("last subscription gone: dirty %v", keys)
	}
	// Module subscriptions share the inline client, told apart by id.
	in.add(subRef{client: "inline", id: 1, filter: "m"}, subRef{client: "inline", id: 2, filter: "m"})
	in.remove(subRef{client: "inline", id: 1, filter: "m"})
	if in.wanted() != 1 {
		t.Fatal("module subscription 2 still wants m")
	}
	keys, _ = in.take(true)
	if len(keys) != 1 || !keys["t.m"] {
		t.Fatalf("take all: %v", keys)
	}
}
