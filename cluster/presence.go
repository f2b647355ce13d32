package cluster

import (
	"encoding/json"
	"slices"
	"sync"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
)

// Users across the cluster: every node tells the others which users have
// a connection on it, so that each node's server can tell its modules
// about users online elsewhere (server.Watch: RemoteOnline and
// RemoteOffline; the im module's presence uses them). Reports go to
// colony.msg with key UsersKey, which every node binds:
//
//   - a change report as soon as users come online or go offline here
//     (batched: what changed while the previous report was being sent);
//   - a full report every UsersInterval, after (re)joining, and when a
//     node asks with TypeUsersRequest (which a node sends when it joins);
//   - an empty full report when the node stops.
//
// A receiver forgets a node's users when its full report no longer lists
// them, and all of them when the node has sent nothing for the report's
// TTL (three intervals): a node that crashed or lost RabbitMQ stops
// counting after that long.
const (
	// UsersKey is the routing key of user reports.
	UsersKey = "users"
	// TypeUsers is a user report; the body is JSON (see usersReport).
	TypeUsers = "users"
	// TypeUsersRequest asks every node for a full user report now.
	TypeUsersRequest = "users_request"
	// DefaultUsersInterval is how often a node sends a full user report.
	DefaultUsersInterval = 10 * time.Second
)

// usersReport is the body of a TypeUsers message:
//
//	{"full":true,"users":["alice","bob"],"ttl_ms":30000}
//	{"online":["carol"],"offline":["bob"],"ttl_ms":30000}
type usersReport struct {
	Full    bool     `json:"full,omitempty"`
	Users   []string `json:"users,omitempty"`   // full: every user with a connection on the origin
	Online  []string `json:"online,omitempty"`  // change: users who got their first connection there
	Offline []string `json:"offline,omitempty"` // change: users who lost their last one
	TTLms   int64    `json:"ttl_ms"`            // how long the report holds without another
}

// directory is what the Federation knows of users: those connected here,
// what to report next, and those connected on the other nodes.
type directory struct {
	mu      sync.Mutex
	local   map[string]bool       // users with a connection on this node
	changes map[string]bool       // user -> online, not yet reported
	full    bool                  // a full report is due
	remote  map[string]*nodeUsers // node id -> its users
	wake    chan struct{}         // capacity 1: a report is due
}

type nodeUsers struct {
	users   map[string]bool
	expires time.Time
}

// userEvent is a change to announce to the server.
type userEvent struct {
	node, user string
	online     bool
}

func newDirectory() *directory {
	return &directory{local: map[string]bool{}, changes: map[string]bool{}, remote: map[string]*nodeUsers{},
		wake: make(chan struct{}, 1)}
}

func (d *directory) poke() {
	select {
	case d.wake <- struct{}{}:
	default:
	}
}

// present records a local user's first connection or last disconnection.
// It runs with the server's sessions lock held: it only records.
func (d *directory) present(user string, online bool) {
	d.mu.Lock()
	if online {
		d.local[user] = true
	} else {
		delete(d.local, user)
	}
	d.changes[user] = online
	d.mu.Unlock()
	d.poke()
}

// dueFull marks a full report as due.
func (d *directory) dueFull() {
	d.mu.Lock()
	d.full = true
	d.mu.Unlock()
	d.poke()
}

// next returns the report to send now, if any.
func (d *directory) next(ttl time.Duration) (usersReport, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	r := usersReport{TTLms: ttl.Milliseconds()}
	switch {
	case d.full:
		r.Full = true
		r.Users = make([]string, 0, len(d.local))
		for u := range d.local {
			r.Users = append(r.Users, u)
		}
		slices.Sort(r.Users)
		d.full = false
	case len(d.changes) > 0:
		for u, on := range d.changes {
			if on {
				r.Online = append(r.Online, u)
			} else {
				r.Offline = append(r.Offline, u)
			}
		}
	default:
		return r, false
	}
	clear(d.changes)
	return r, true
}

// apply takes in a report from node and returns what changed.
func (d *directory) apply(node string, r *usersReport, now time.Time) []userEvent {
	d.mu.Lock()
	defer d.mu.Unlock()
	n := d.remote[node]
	if n == nil {
		n = &nodeUsers{users: map[string]bool{}}
		d.remote[node] = n
	}
	var evs []userEvent
	on := func(u string) {
		if u != "" && !n.users[u] {
			n.users[u] = true
			evs = append(evs, userEvent{node, u, true})
		}
	}
	off := func(u string) {
		if n.users[u] {
			delete(n.users, u)
			evs = append(evs, userEvent{node, u, false})
		}
	}
	if r.Full {
		listed := make(map[string]bool, len(r.Users))
		for _, u := range r.Users {
			listed[u] = true
		}
		for u := range n.users {
			if !listed[u] {
				off(u)
			}
		}
		for _, u := range r.Users {
			on(u)
		}
	}
	for _, u := range r.Online {
		on(u)
	}
	for _, u := range r.Offline {
		off(u)
	}
	n.expires = now.Add(time.Duration(max(r.TTLms, 1)) * time.Millisecond)
	if len(n.users) == 0 {
		delete(d.remote, node)
	}
	return evs
}

// expire forgets the users of nodes not heard from within their TTL.
func (d *directory) expire(now time.Time) []userEvent {
	d.mu.Lock()
	defer d.mu.Unlock()
	var evs []userEvent
	for node, n := range d.remote {
		if now.Before(n.expires) {
			continue
		}
		for u := range n.users {
			evs = append(evs, userEvent{node, u, false})
		}
		delete(d.remote, node)
	}
	return evs
}

// usersLoop sends this node's user reports and expires other nodes'
// until Close.
func (f *Federation) usersLoop() {
	defer close(f.usersDone)
	t := time.NewTicker(f.opts.UsersInterval)
	defer t.Stop()
	for {
		select {
		case <-f.life.Done():
			return
		case <-t.C:
			f.dir.dueFull()
			f.announce(f.dir.expire(time.Now()))
			f.sendUsers()
		case <-f.dir.wake:
			f.sendUsers()
		}
	}
}

// sendUsers publishes the due report. Without a connection the report is
// dropped: joining again sends a full one.
func (f *Federation) sendUsers() {
	r, ok := f.dir.next(3 * f.opts.UsersInterval)
	if !ok {
		return
	}
	s := f.sess.Load()
	if s == nil {
		return
	}
	if err := f.publishUsers(s, &r); err != nil {
		f.log.Debug().Err(err).Msg("federation: user report not sent")
		f.dir.dueFull()
	}
}

func (f *Federation) publishUsers(s *session, r *usersReport) error {
	body, err := json.Marshal(r)
	if err != nil {
		return err
	}
	return s.publish(f.msgEx, UsersKey, amqp091.Publishing{
		Headers: amqp091.Table{HeaderOrigin: f.opts.Node, HeaderType: TypeUsers}, ContentType: "application/json", Body: body,
	})
}

// joinedUsers runs when the node (re)joins: it sends a full report and
// asks the others for theirs.
func (f *Federation) joinedUsers(s *session) {
	req := amqp091.Publishing{Headers: amqp091.Table{HeaderOrigin: f.opts.Node, HeaderType: TypeUsersRequest}}
	if err := s.publish(f.msgEx, UsersKey, req); err != nil {
		f.log.Debug().Err(err).Msg("federation: user report request not sent")
	}
	f.dir.dueFull()
}

// leaveUsers tells the other nodes, as the node stops, that its users are
// gone.
func (f *Federation) leaveUsers(s *session) {
	if err := f.publishUsers(s, &usersReport{Full: true, TTLms: 1}); err != nil {
		f.log.Debug().Err(err).Msg("federation: last user report not sent")
	}
}

// users handles user reports and requests; it reports false for
// deliveries of other kinds.
func (s *session) users(d *amqp091.Delivery) bool {
	f := s.f
	typ := headerString(d.Headers, HeaderType)
	if typ != TypeUsers && typ != TypeUsersRequest {
		return false
	}
	origin := headerString(d.Headers, HeaderOrigin)
	if origin == "" || origin == f.opts.Node {
		return true
	}
	if typ == TypeUsersRequest {
		f.dir.dueFull()
		return true
	}
	var r usersReport
	if err := json.Unmarshal(d.Body, &r); err != nil {
		f.stats.malformed.Add(1)
		f.log.Debug().Err(err).Str("origin", origin).Msg("federation: malformed user report")
		return true
	}
	f.announce(f.dir.apply(origin, &r, time.Now()))
	return true
}

// announce tells the server about users online or offline elsewhere.
func (f *Federation) announce(evs []userEvent) {
	for _, e := range evs {
		f.broker.RemoteUser(e.node, e.user, e.online)
	}
}
