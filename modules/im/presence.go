package im

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/colonymq/colony/rpc"
	"github.com/colonymq/colony/server"
)

// presence follows connection events (server.Watch) to know which users
// are online and announces changes to their contacts: the users they
// share a direct conversation or a group of up to smallGroup members
// with, except those they block. It counts the connections of the node
// the module runs on and, in a cluster, the other nodes where a user has
// connections (RemoteOnline, RemoteOffline).
type presence struct {
	m        *Module
	mu       sync.Mutex
	byClient map[string]string          // client id -> user id bound to it
	conns    map[string]int             // user id -> connections here
	remote   map[string]map[string]bool // user id -> other nodes where it has connections
	pending  map[string]presenceChange  // users to announce, latest change
	wake     chan struct{}
}

type presenceChange struct {
	online bool
	at     int64 // Unix ms
}

func newPresence(m *Module) *presence {
	return &presence{m: m, byClient: map[string]string{}, conns: map[string]int{}, remote: map[string]map[string]bool{},
		pending: map[string]presenceChange{}, wake: make(chan struct{}, 1)}
}

// event runs on connection goroutines: it only updates the maps and wakes
// the announcer.
func (p *presence) event(ev server.Event) {
	p.mu.Lock()
	switch ev.Kind {
	case server.Connected, server.Disconnected:
		// A Connected client id that had a user is a session taken over by
		// a new connection: the old one is gone without a Disconnected.
		if u, ok := p.byClient[ev.ClientID]; ok {
			delete(p.byClient, ev.ClientID)
			p.down(u, ev.Time)
		}
	case server.UserBound:
		prev, ok := p.byClient[ev.ClientID]
		if ok && prev == ev.UserID || !validUser(ev.UserID) {
			break
		}
		if ok {
			p.down(prev, ev.Time)
		}
		p.byClient[ev.ClientID] = ev.UserID
		if p.conns[ev.UserID]++; p.conns[ev.UserID] == 1 && len(p.remote[ev.UserID]) == 0 {
			p.pending[ev.UserID] = presenceChange{online: true, at: ev.Time.UnixMilli()}
		}
	case server.RemoteOnline:
		if !validUser(ev.UserID) {
			break
		}
		was := p.online(ev.UserID)
		nodes := p.remote[ev.UserID]
		if nodes == nil {
			nodes = map[string]bool{}
			p.remote[ev.UserID] = nodes
		}
		nodes[ev.Node] = true
		if !was {
			p.pending[ev.UserID] = presenceChange{online: true, at: ev.Time.UnixMilli()}
		}
	case server.RemoteOffline:
		nodes := p.remote[ev.UserID]
		if !nodes[ev.Node] {
			break
		}
		delete(nodes, ev.Node)
		if len(nodes) == 0 {
			delete(p.remote, ev.UserID)
		}
		if !p.online(ev.UserID) {
			p.pending[ev.UserID] = presenceChange{online: false, at: ev.Time.UnixMilli()}
		}
	}
	p.mu.Unlock()
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

func (p *presence) down(user string, t time.Time) {
	if p.conns[user]--; p.conns[user] <= 0 {
		delete(p.conns, user)
		if len(p.remote[user]) == 0 {
			p.pending[user] = presenceChange{online: false, at: t.UnixMilli()}
		}
	}
}

// online reports whether user has a connection here or elsewhere; p.mu
// is held.
func (p *presence) online(user string) bool { return p.conns[user] > 0 || len(p.remote[user]) > 0 }

// run announces changes until stop is closed.
func (p *presence) run(stop <-chan struct{}) {
	for {
		select {
		case <-stop:
			return
		case <-p.wake:
			p.process()
		}
	}
}

// process saves the last-seen times of users who went offline and
// announces every pending change.
func (p *presence) process() {
	p.mu.Lock()
	changes := p.pending
	p.pending = map[string]presenceChange{}
	p.mu.Unlock()
	if len(changes) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	b := p.m.st.db.NewBatch()
	for u, ch := range changes {
		if !ch.online {
			p.m.st.seen.PutIn(b, u, ch.at)
		}
	}
	if err := b.Commit(ctx); err != nil {
		p.m.log.Error().Err(err).Msg("save last-seen times")
	}
	for u, ch := range changes {
		to, err := p.m.contacts(u)
		if err != nil {
			p.m.log.Error().Err(err).Str("user", u).Msg("announce presence")
			continue
		}
		pr := &Presence{User: u, Online: ch.online}
		if !ch.online {
			pr.LastSeen = ch.at
		}
		p.m.publish(to, TopicPresence, pr, 0)
	}
}

// of returns user's presence.
func (p *presence) of(user string) (Presence, error) {
	p.mu.Lock()
	online := p.online(user)
	ch, pending := p.pending[user]
	p.mu.Unlock()
	pr := Presence{User: user, Online: online}
	switch {
	case online:
	case pending:
		pr.LastSeen = ch.at
	default:
		seen, _, err := p.m.st.seen.Get(user)
		if err != nil {
			return pr, fmt.Errorf("read last seen of %s: %w", user, err)
		}
		pr.LastSeen = seen
	}
	return pr, nil
}

// contacts returns whom user's presence goes to.
func (m *Module) contacts(user string) ([]string, error) {
	ids, err := m.st.convsOf(user)
	if err != nil {
		return nil, err
	}
	blocked, err := m.st.blockedBy(user)
	if err != nil {
		return nil, err
	}
	set := map[string]bool{}
	for id := range ids {
		c, err := m.lockConv(id)
		if err != nil {
			continue // gone meanwhile
		}
		if c.rec.Kind == KindDirect || c.rec.Kind == KindGroup && len(c.members) <= smallGroup {
			for o := range c.members {
				set[o] = true
			}
		}
		c.mu.Unlock()
	}
	delete(set, user)
	for _, b := range blocked {
		delete(set, b)
	}
	out := make([]string, 0, len(set))
	for o := range set {
		out = append(out, o)
	}
	return out, nil
}

// presenceOf answers the presence handler.
func (m *Module) presenceOf(ctx context.Context, req *PresenceReq) (*PresenceResp, error) {
	if _, err := caller(ctx); err != nil {
		return nil, err
	}
	if len(req.Users) > maxPresence {
		return nil, rpc.Errorf(rpc.CodeBadRequest, "at most %d users at once", maxPresence)
	}
	if err := checkUsers(req.Users...); err != nil {
		return nil, err
	}
	out := make([]Presence, 0, len(req.Users))
	for _, u := range req.Users {
		pr, err := m.presence.of(u)
		if err != nil {
			return nil, err
		}
		out = append(out, pr)
	}
	return &PresenceResp{Users: out}, nil
}

// maxPresence bounds the users of one presence call.
const maxPresence = 1000
