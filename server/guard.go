package server

import (
	"fmt"
	"strings"

	mqtt "github.com/mochi-mqtt/server/v2"
)

// TopicGuard reserves a topic space for the server and its modules, such
// as the im module's per-user delivery topics. Inside the space the guard
// alone decides what clients may do: the ACL file is not consulted there,
// so a module's topics are protected on a node without one, and operators
// need not repeat its rules. The server's own publishes and pushes are
// never checked.
type TopicGuard struct {
	// Filter is the guarded space, e.g. "im/u/#". A topic is inside when
	// Filter matches it, and a subscription filter when every topic it can
	// match is. A wider filter ("#", "im/#") may still be subscribed to
	// (the ACL file decides), but each message it would carry from inside
	// the space is checked on delivery like a topic inside.
	Filter string
	// Read lists the filters clients may subscribe to and receive from
	// inside the space. In them "%u" stands for the client's user id and
	// "%c" for its client id. The user id is the one bound to the
	// connection (BindUser); for a persistent session whose client is
	// away, the one it was bound to, so deliveries queue for it; where
	// passwords are checked, the username of a connection no module has
	// unbound (bindings do not survive a restart, usernames do). A rule
	// with %u does not apply to a client without a user id, and no rule
	// applies for an id holding "/", "+" or "#", which could widen it.
	// Empty: no client reads.
	Read []string
	// Write lists the topics clients may publish to inside the space, with
	// the same substitutions. Empty: no client publishes.
	Write []string
}

// guard is a TopicGuard ready for checks.
type guard struct {
	TopicGuard
	literal string // Filter up to its first wildcard: a cheap first test
}

// Guard installs g for every client, from its next packet on. It is safe
// to call at any time; modules usually call it in Init, before clients can
// connect. Guards cannot be removed. A topic inside several guards must
// pass all of them. An invalid filter is an error wrapping
// ErrInvalidOptions.
func (s *Server) Guard(g TopicGuard) error {
	if !mqtt.IsValidFilter(g.Filter, false) {
		return fmt.Errorf("guard %q: invalid topic filter: %w", g.Filter, ErrInvalidOptions)
	}
	for _, f := range append(append([]string(nil), g.Read...), g.Write...) {
		if !mqtt.IsValidFilter(strings.NewReplacer("%u", "u", "%c", "c").Replace(f), false) {
			return fmt.Errorf("guard %q: invalid rule %q: %w", g.Filter, f, ErrInvalidOptions)
		}
	}
	ng := guard{TopicGuard: g, literal: g.Filter}
	if i := strings.IndexAny(g.Filter, "+#"); i >= 0 {
		ng.literal = strings.TrimSuffix(g.Filter[:i], "/")
	}
	h := s.auth
	h.guardMu.Lock()
	defer h.guardMu.Unlock()
	var next []guard
	if cur := h.guards.Load(); cur != nil {
		next = append(next, *cur...)
	}
	next = append(next, ng)
	h.guards.Store(&next)
	return nil
}

// checkGuards decides access to topic (a topic name, or a filter being
// subscribed to) for cl when topic lies inside some guard: decided is
// false when no guard covers it. user resolves cl's user id, and is only
// called when a rule needs it.
func checkGuards(gs []guard, cl *mqtt.Client, topic string, write bool, user func(*mqtt.Client) string) (ok, decided bool) {
	resolved, uid := false, ""
	for i := range gs {
		g := &gs[i]
		if !strings.HasPrefix(topic, g.literal) || !covers(g.Filter, topic) {
			continue
		}
		decided = true
		rules := g.Read
		if write {
			rules = g.Write
		}
		allowed := false
		for _, r := range rules {
			if strings.Contains(r, "%u") && !resolved {
				uid, resolved = user(cl), true
			}
			filter, ok := substitute(r, uid, cl.ID)
			if ok && covers(filter, topic) {
				allowed = true
				break
			}
		}
		if !allowed {
			return false, true
		}
	}
	return decided, decided
}
