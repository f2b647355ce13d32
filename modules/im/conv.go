package im

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/base32"
	"fmt"
	"slices"
	"strings"
	"sync"

	"github.com/colonymq/colony/rpc"
	"github.com/colonymq/colony/store"
)

// smallGroup is the largest group whose members hear of each other's
// presence and receipts: beyond, each of them would cost a publish per
// member, as in a channel, where they are not spread either.
const smallGroup = 256

// conv is a loaded conversation. The module is the only writer of its
// conversations, so the cache never goes stale; conversations stay loaded
// until the module stops.
//
// Two locks, taken in this order. appendMu serializes what adds to the
// log (and retention, which removes from it): an entry gets its sequence
// number, reaches the store and is published before the next one starts,
// so deliveries follow the log's order. mu guards the fields and is held
// only briefly, never while publishing an entry, so acks, which outnumber
// entries a hundredfold in a busy group, do not queue behind deliveries.
type conv struct {
	appendMu sync.Mutex
	mu       sync.Mutex
	loaded   bool
	rec      convRecord
	members  map[string]*Member
	dirty    map[string]bool // members whose positions are not saved yet
}

// lockConv returns conversation id loaded, with its mu locked; the caller
// unlocks it. A conversation that does not exist yields not-a-member, like
// one the caller is not in, so that ids cannot be probed.
func (m *Module) lockConv(id string) (*conv, error) {
	c, err := m.conv(id)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	return c, nil
}

// conv returns conversation id loaded, with no lock held.
func (m *Module) conv(id string) (*conv, error) {
	if id == "" || len(id) > maxIDLen || strings.Contains(id, sep) {
		return nil, rpc.Errorf(rpc.CodeBadRequest, "invalid conversation id %q", id)
	}
	m.mu.Lock()
	c := m.convs[id]
	if c == nil {
		c = &conv{}
		m.convs[id] = c
	}
	m.mu.Unlock()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.loaded {
		return c, nil
	}
	err := m.load(c, id)
	if err == nil {
		return c, nil
	}
	m.mu.Lock()
	if m.convs[id] == c {
		delete(m.convs, id)
	}
	m.mu.Unlock()
	return nil, err
}

func (m *Module) load(c *conv, id string) error {
	rec, ok, err := m.st.convs.Get(id)
	if err != nil {
		return fmt.Errorf("load conversation %s: %w", id, err)
	}
	if !ok {
		return notMember(id)
	}
	members := map[string]*Member{}
	err = m.st.members.Scan(id+sep, func(_ string, mem Member) bool {
		members[mem.User] = &mem
		return true
	})
	if err != nil {
		return fmt.Errorf("load members of %s: %w", id, err)
	}
	c.rec, c.members, c.dirty, c.loaded = rec, members, map[string]bool{}, true
	return nil
}

func notMember(id string) error {
	return rpc.Errorf(rpc.CodeForbidden, "conversation %s: %w", id, ErrNotMember)
}

// member returns the caller's membership of c, or not-a-member.
func (c *conv) member(user string) (*Member, error) {
	mem, ok := c.members[user]
	if !ok {
		return nil, notMember(c.rec.ID)
	}
	return mem, nil
}

// lockMember locks conversation id and returns it with user's membership.
func (m *Module) lockMember(id, user string) (*conv, *Member, error) {
	c, err := m.lockConv(id)
	if err != nil {
		return nil, nil, err
	}
	mem, err := c.member(user)
	if err != nil {
		c.mu.Unlock()
		return nil, nil, err
	}
	return c, mem, nil
}

// view is c as user sees it. c is locked.
func (c *conv) view(user string, in inboxRecord) Conversation {
	v := Conversation{
		ID: c.rec.ID, Kind: c.rec.Kind, Title: c.rec.Title, Public: c.rec.Public,
		CreatedBy: c.rec.CreatedBy, CreatedAt: c.rec.CreatedAt, Members: len(c.members),
		FirstSeq: c.rec.FirstSeq, LastSeq: c.rec.LastSeq, LastTS: c.rec.LastTS, Muted: in.Muted,
	}
	if c.rec.Kind == KindDirect {
		for _, u := range c.rec.Users {
			if u != user {
				v.Peer = u
			}
		}
	}
	if mem, ok := c.members[user]; ok {
		v.Role, v.JoinedSeq, v.ReadSeq, v.DeliveredSeq = mem.Role, mem.JoinedSeq, mem.ReadSeq, mem.DeliveredSeq
	}
	return v
}

// users returns the member ids of c, sorted. c is locked.
func (c *conv) users() []string {
	out := make([]string, 0, len(c.members))
	for u := range c.members {
		out = append(out, u)
	}
	slices.Sort(out)
	return out
}

// staff returns the owner and admins of c. c is locked.
func (c *conv) staff() []string {
	var out []string
	for u, mem := range c.members {
		if mem.Role == RoleOwner || mem.Role == RoleAdmin {
			out = append(out, u)
		}
	}
	return out
}

// canWrite reports whether mem may add entries to c.
func (c *conv) canWrite(mem *Member) bool {
	return c.rec.Kind != KindChannel || mem.Role == RoleOwner || mem.Role == RoleAdmin
}

// notice is a conversation event and who gets it.
type notice struct {
	to []string
	ev ConvEvent
}

// release unlocks c, then publishes the events gathered while it was
// locked: a publish may wait for slow subscribers, and acks need c's lock.
func (m *Module) release(c *conv, out *[]notice) {
	c.mu.Unlock()
	for _, n := range *out {
		m.publishConv(n.to, n.ev)
	}
}

// audience returns who hears of membership changes: everyone, except in a
// channel, where only its staff and the users concerned do.
func (c *conv) audience(concerned ...string) []string {
	if c.rec.Kind != KindChannel {
		return append(c.users(), concerned...)
	}
	return append(c.staff(), concerned...)
}

// newConvID returns a fresh random conversation id such as "g_3kx…".
func newConvID(k Kind) string {
	var b [10]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic("im: no randomness: " + err.Error()) // crypto/rand does not fail on supported systems
	}
	return string(k[0]) + "_" + strings.ToLower(base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(b[:]))
}

// viewFor is c as user sees it, mute included. c is locked.
func (m *Module) viewFor(c *conv, user string) (*Conversation, error) {
	in, _, err := m.st.inbox.Get(key(user, c.rec.ID))
	if err != nil {
		return nil, fmt.Errorf("read inbox of %s: %w", user, err)
	}
	v := c.view(user, in)
	return &v, nil
}

// direct returns the direct conversation of the caller and req.User,
// making it on first use.
func (m *Module) direct(ctx context.Context, req *DirectReq) (*Conversation, error) {
	u, err := caller(ctx)
	if err != nil {
		return nil, err
	}
	if err := checkUsers(req.User); err != nil {
		return nil, err
	}
	if req.User == u {
		return nil, rpc.Errorf(rpc.CodeBadRequest, "a direct conversation needs another user")
	}
	m.create.Lock()
	defer m.create.Unlock()
	dk := directKey(u, req.User)
	id, ok, err := m.st.direct.Get(dk)
	if err != nil {
		return nil, fmt.Errorf("find direct conversation: %w", err)
	}
	if !ok {
		users := []string{u, req.User}
		slices.Sort(users)
		rec := convRecord{ID: newConvID(KindDirect), Kind: KindDirect, Users: users, CreatedBy: u, CreatedAt: now()}
		c, err := m.newConv(ctx, rec, users, func(b *store.Batch) { m.st.direct.PutIn(b, dk, rec.ID) })
		if err != nil {
			return nil, err
		}
		v := c.view(u, inboxRecord{})
		c.mu.Unlock()
		m.publishConv(users, ConvEvent{Type: EventCreated, Conv: rec.ID, By: u, TS: rec.CreatedAt})
		return &v, nil
	}
	return m.get(ctx, &ConvReq{Conv: id})
}

// createConv makes a group or channel owned by the caller.
func (m *Module) createConv(ctx context.Context, req *CreateReq) (*Conversation, error) {
	u, err := caller(ctx)
	if err != nil {
		return nil, err
	}
	if req.Kind != KindGroup && req.Kind != KindChannel {
		return nil, rpc.Errorf(rpc.CodeBadRequest, "kind must be %q or %q (direct conversations come from the direct handler)", KindGroup, KindChannel)
	}
	if len(req.Title) > maxTitle {
		return nil, rpc.Errorf(rpc.CodeBadRequest, "title longer than %d bytes", maxTitle)
	}
	if err := checkUsers(req.Members...); err != nil {
		return nil, err
	}
	users := []string{u}
	seen := map[string]bool{u: true}
	for _, o := range req.Members {
		if !seen[o] {
			seen[o] = true
			users = append(users, o)
		}
	}
	if len(users) > m.opts.MaxMembers {
		return nil, rpc.Errorf(rpc.CodeBadRequest, "%d members, at most %d", len(users), m.opts.MaxMembers)
	}
	if err := m.checkInvitable(u, users[1:]); err != nil {
		return nil, err
	}
	rec := convRecord{ID: newConvID(req.Kind), Kind: req.Kind, Title: req.Title, Public: req.Public, CreatedBy: u, CreatedAt: now()}
	c, err := m.newConv(ctx, rec, users, nil)
	if err != nil {
		return nil, err
	}
	v := c.view(u, inboxRecord{})
	c.mu.Unlock()
	m.publishConv(users, ConvEvent{Type: EventCreated, Conv: rec.ID, By: u, TS: rec.CreatedAt})
	return &v, nil
}

// maxTitle bounds conversation titles, in bytes.
const maxTitle = 256

// newConv stores a new conversation with its members (the first user is
// the creator: the owner of a group or channel) and returns it loaded and
// locked.
func (m *Module) newConv(ctx context.Context, rec convRecord, users []string, extra func(*store.Batch)) (*conv, error) {
	c := &conv{loaded: true, rec: rec, members: map[string]*Member{}, dirty: map[string]bool{}}
	b := m.st.db.NewBatch()
	m.st.convs.PutIn(b, rec.ID, rec)
	for i, usr := range users {
		mem := &Member{User: usr, Role: RoleMember, JoinedAt: rec.CreatedAt}
		if i == 0 && rec.Kind != KindDirect {
			mem.Role = RoleOwner
		}
		c.members[usr] = mem
		m.st.members.PutIn(b, key(rec.ID, usr), *mem)
		m.st.inbox.PutIn(b, key(usr, rec.ID), inboxRecord{})
	}
	if extra != nil {
		extra(b)
	}
	if err := b.Commit(ctx); err != nil {
		return nil, fmt.Errorf("store new conversation: %w", err)
	}
	c.mu.Lock()
	m.mu.Lock()
	m.convs[rec.ID] = c
	m.mu.Unlock()
	return c, nil
}

// checkInvitable refuses to add users who block the inviter.
func (m *Module) checkInvitable(by string, users []string) error {
	for _, o := range users {
		if o == by {
			continue
		}
		blocked, err := m.st.blocked(o, by)
		if err != nil {
			return err
		}
		if blocked {
			return rpc.Errorf(rpc.CodeForbidden, "%s does not accept conversations from you: %w", o, ErrBlocked)
		}
	}
	return nil
}

// get returns one of the caller's conversations.
func (m *Module) get(ctx context.Context, req *ConvReq) (*Conversation, error) {
	u, err := caller(ctx)
	if err != nil {
		return nil, err
	}
	c, _, err := m.lockMember(req.Conv, u)
	if err != nil {
		return nil, err
	}
	defer c.mu.Unlock()
	return m.viewFor(c, u)
}

// list returns the caller's conversations, the most recently active first.
func (m *Module) list(ctx context.Context, _ *struct{}) (*ListResp, error) {
	u, err := caller(ctx)
	if err != nil {
		return nil, err
	}
	views, err := m.views(u)
	if err != nil {
		return nil, err
	}
	return &ListResp{Conversations: views}, nil
}

// views returns user's conversations, the most recently active (or made)
// first.
func (m *Module) views(user string) ([]Conversation, error) {
	ids, err := m.st.convsOf(user)
	if err != nil {
		return nil, err
	}
	out := make([]Conversation, 0, len(ids))
	for id, in := range ids {
		c, err := m.lockConv(id)
		if err != nil {
			if rpc.CodeOf(err) == rpc.CodeForbidden {
				continue // an inbox entry whose conversation is gone
			}
			return nil, err
		}
		if _, ok := c.members[user]; ok {
			out = append(out, c.view(user, in))
		}
		c.mu.Unlock()
	}
	slices.SortFunc(out, func(a, b Conversation) int {
		return cmp.Or(cmp.Compare(max(b.LastTS, b.CreatedAt), max(a.LastTS, a.CreatedAt)), strings.Compare(a.ID, b.ID))
	})
	return out, nil
}

// membersOf lists the members of one of the caller's conversations.
func (m *Module) membersOf(ctx context.Context, req *ConvReq) (*MembersResp, error) {
	u, err := caller(ctx)
	if err != nil {
		return nil, err
	}
	c, _, err := m.lockMember(req.Conv, u)
	if err != nil {
		return nil, err
	}
	defer c.mu.Unlock()
	out := make([]Member, 0, len(c.members))
	for _, usr := range c.users() {
		out = append(out, *c.members[usr])
	}
	return &MembersResp{Members: out}, nil
}

// addMembers stores users as new members of c, which is locked.
func (m *Module) addMembers(ctx context.Context, c *conv, users []string) error {
	if len(c.members)+len(users) > m.opts.MaxMembers {
		return rpc.Errorf(rpc.CodeBadRequest, "%s would have %d members, at most %d", c.rec.ID, len(c.members)+len(users), m.opts.MaxMembers)
	}
	joinedSeq := uint64(0)
	if c.rec.Kind == KindGroup {
		joinedSeq = c.rec.LastSeq // a group's history before joining stays private
	}
	t := now()
	b := m.st.db.NewBatch()
	added := make([]*Member, 0, len(users))
	for _, usr := range users {
		mem := &Member{User: usr, Role: RoleMember, JoinedAt: t, JoinedSeq: joinedSeq, ReadSeq: joinedSeq, DeliveredSeq: joinedSeq}
		added = append(added, mem)
		m.st.members.PutIn(b, key(c.rec.ID, usr), *mem)
		m.st.inbox.PutIn(b, key(usr, c.rec.ID), inboxRecord{})
	}
	if err := b.Commit(ctx); err != nil {
		return fmt.Errorf("store new members: %w", err)
	}
	for _, mem := range added {
		c.members[mem.User] = mem
	}
	return nil
}

// invite adds users to a group or channel; its owner and admins may.
func (m *Module) invite(ctx context.Context, req *InviteReq) (*Conversation, error) {
	u, err := caller(ctx)
	if err != nil {
		return nil, err
	}
	if err := checkUsers(req.Users...); err != nil {
		return nil, err
	}
	c, mem, err := m.lockMember(req.Conv, u)
	if err != nil {
		return nil, err
	}
	var out []notice
	defer m.release(c, &out)
	if c.rec.Kind == KindDirect {
		return nil, rpc.Errorf(rpc.CodeBadRequest, "a direct conversation has two members: make a group")
	}
	if mem.Role == RoleMember {
		return nil, rpc.Errorf(rpc.CodeForbidden, "only the owner and admins invite: %w", ErrNotAllowed)
	}
	var users []string
	seen := map[string]bool{}
	for _, o := range req.Users {
		if _, in := c.members[o]; !in && !seen[o] {
			seen[o] = true
			users = append(users, o)
		}
	}
	if err := m.checkInvitable(u, users); err != nil {
		return nil, err
	}
	if err := m.addMembers(ctx, c, users); err != nil {
		return nil, err
	}
	t := now()
	to := c.audience()
	for _, o := range users {
		out = append(out, notice{to, ConvEvent{Type: EventJoined, Conv: c.rec.ID, User: o, By: u, TS: t}})
	}
	return m.viewFor(c, u)
}

// join adds the caller to a public group or channel.
func (m *Module) join(ctx context.Context, req *ConvReq) (*Conversation, error) {
	u, err := caller(ctx)
	if err != nil {
		return nil, err
	}
	c, err := m.lockConv(req.Conv)
	if err != nil {
		return nil, err
	}
	var out []notice
	defer m.release(c, &out)
	if _, in := c.members[u]; !in {
		if !c.rec.Public || c.rec.Kind == KindDirect {
			return nil, notMember(c.rec.ID) // a private conversation is not there for outsiders
		}
		if err := m.addMembers(ctx, c, []string{u}); err != nil {
			return nil, err
		}
		out = append(out, notice{c.audience(u), ConvEvent{Type: EventJoined, Conv: c.rec.ID, User: u, TS: now()}})
	}
	return m.viewFor(c, u)
}

// removeMember deletes user from c (locked); when the owner goes, the
// longest-standing admin, or else member, takes over.
func (m *Module) removeMember(ctx context.Context, c *conv, user string) (newOwner string, err error) {
	gone := c.members[user]
	b := m.st.db.NewBatch()
	m.st.members.DeleteIn(b, key(c.rec.ID, user))
	m.st.inbox.DeleteIn(b, key(user, c.rec.ID))
	var heir *Member
	if gone.Role == RoleOwner {
		for _, mem := range c.members {
			if mem.User == user {
				continue
			}
			if heir == nil || abler(mem, heir) {
				heir = mem
			}
		}
		if heir != nil {
			h := *heir
			h.Role = RoleOwner
			m.st.members.PutIn(b, key(c.rec.ID, h.User), h)
		}
	}
	if err := b.Commit(ctx); err != nil {
		return "", fmt.Errorf("remove member: %w", err)
	}
	delete(c.members, user)
	delete(c.dirty, user)
	if heir != nil {
		heir.Role = RoleOwner
		return heir.User, nil
	}
	return "", nil
}

// abler reports whether a should inherit ownership before b: admins
// before members, then the longest-standing, then by user id.
func abler(a, b *Member) bool {
	if (a.Role == RoleAdmin) != (b.Role == RoleAdmin) {
		return a.Role == RoleAdmin
	}
	return cmp.Or(cmp.Compare(a.JoinedAt, b.JoinedAt), strings.Compare(a.User, b.User)) < 0
}

// leave removes the caller from a group or channel.
func (m *Module) leave(ctx context.Context, req *ConvReq) (*OK, error) {
	u, err := caller(ctx)
	if err != nil {
		return nil, err
	}
	c, _, err := m.lockMember(req.Conv, u)
	if err != nil {
		return nil, err
	}
	var out []notice
	defer m.release(c, &out)
	if c.rec.Kind == KindDirect {
		return nil, rpc.Errorf(rpc.CodeBadRequest, "direct conversations cannot be left: block the user, or mute it")
	}
	heir, err := m.removeMember(ctx, c, u)
	if err != nil {
		return nil, err
	}
	t := now()
	out = append(out, notice{c.audience(u), ConvEvent{Type: EventLeft, Conv: c.rec.ID, User: u, TS: t}})
	if heir != "" {
		out = append(out, notice{c.audience(), ConvEvent{Type: EventRole, Conv: c.rec.ID, User: heir, Role: RoleOwner, TS: t}})
	}
	return &OK{}, nil
}

// kick removes a member: the owner may remove anyone, an admin members.
func (m *Module) kick(ctx context.Context, req *UserReq) (*OK, error) {
	u, err := caller(ctx)
	if err != nil {
		return nil, err
	}
	c, mem, err := m.lockMember(req.Conv, u)
	if err != nil {
		return nil, err
	}
	var out []notice
	defer m.release(c, &out)
	target, ok := c.members[req.User]
	switch {
	case c.rec.Kind == KindDirect:
		return nil, rpc.Errorf(rpc.CodeBadRequest, "nobody is kicked from a direct conversation")
	case !ok:
		return nil, rpc.Errorf(rpc.CodeBadRequest, "%q is not a member", req.User)
	case req.User == u:
		return nil, rpc.Errorf(rpc.CodeBadRequest, "use leave to leave")
	case mem.Role == RoleMember, mem.Role == RoleAdmin && target.Role != RoleMember:
		return nil, rpc.Errorf(rpc.CodeForbidden, "%ss cannot kick %ss: %w", mem.Role, target.Role, ErrNotAllowed)
	}
	if _, err := m.removeMember(ctx, c, req.User); err != nil {
		return nil, err
	}
	out = append(out, notice{c.audience(req.User), ConvEvent{Type: EventKicked, Conv: c.rec.ID, User: req.User, By: u, TS: now()}})
	return &OK{}, nil
}

// setRole changes a member's role; only the owner may. Making someone
// else the owner hands the conversation over: the old owner becomes an
// admin.
func (m *Module) setRole(ctx context.Context, req *RoleReq) (*OK, error) {
	u, err := caller(ctx)
	if err != nil {
		return nil, err
	}
	if req.Role != RoleOwner && req.Role != RoleAdmin && req.Role != RoleMember {
		return nil, rpc.Errorf(rpc.CodeBadRequest, "role must be owner, admin or member")
	}
	c, mem, err := m.lockMember(req.Conv, u)
	if err != nil {
		return nil, err
	}
	var out []notice
	defer m.release(c, &out)
	target, ok := c.members[req.User]
	switch {
	case c.rec.Kind == KindDirect:
		return nil, rpc.Errorf(rpc.CodeBadRequest, "direct conversations have no roles")
	case mem.Role != RoleOwner:
		return nil, rpc.Errorf(rpc.CodeForbidden, "only the owner sets roles: %w", ErrNotAllowed)
	case !ok:
		return nil, rpc.Errorf(rpc.CodeBadRequest, "%q is not a member", req.User)
	case req.User == u:
		return nil, rpc.Errorf(rpc.CodeBadRequest, "the owner hands over by making another member owner")
	}
	changed := []*Member{target}
	nt := *target
	nt.Role = req.Role
	b := m.st.db.NewBatch()
	m.st.members.PutIn(b, key(c.rec.ID, nt.User), nt)
	if req.Role == RoleOwner {
		nm := *mem
		nm.Role = RoleAdmin
		m.st.members.PutIn(b, key(c.rec.ID, u), nm)
		changed = append(changed, mem)
	}
	if err := b.Commit(ctx); err != nil {
		return nil, fmt.Errorf("store role: %w", err)
	}
	target.Role = req.Role
	if req.Role == RoleOwner {
		mem.Role = RoleAdmin
	}
	t := now()
	for _, ch := range changed {
		out = append(out, notice{c.audience(ch.User), ConvEvent{Type: EventRole, Conv: c.rec.ID, User: ch.User, Role: ch.Role, By: u, TS: t}})
	}
	return &OK{}, nil
}

// mute mutes or unmutes one of the caller's conversations for the caller.
// The server keeps delivering: muting is a setting the user's devices
// share (they hear of it on …/conv) and act on by not notifying.
func (m *Module) mute(ctx context.Context, req *MuteReq) (*OK, error) {
	u, err := caller(ctx)
	if err != nil {
		return nil, err
	}
	c, _, err := m.lockMember(req.Conv, u)
	if err != nil {
		return nil, err
	}
	var out []notice
	defer m.release(c, &out) // held across the write, so a concurrent leave cannot race it
	if err := m.st.inbox.Put(ctx, key(u, req.Conv), inboxRecord{Muted: req.Muted}); err != nil {
		return nil, fmt.Errorf("store mute: %w", err)
	}
	out = append(out, notice{[]string{u}, ConvEvent{Type: EventMuted, Conv: req.Conv, Muted: req.Muted, TS: now()}})
	return &OK{}, nil
}
