package server

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
	"golang.org/x/crypto/bcrypt"
)

// ErrBadPasswordFile reports a password file line that cannot be used.
var ErrBadPasswordFile = errors.New("bad password file")

// ErrBadACLFile reports an ACL file line that cannot be used.
var ErrBadACLFile = errors.New("bad acl file")

// Passwords holds the users allowed to connect, keyed by name, with bcrypt hashes.
type Passwords struct {
	mu     sync.Mutex
	hashes map[string][]byte
	// verified remembers the SHA-256 of each user's last accepted password, so
	// reconnect storms do not pay bcrypt's deliberate cost on every CONNECT.
	verified map[string][32]byte
}

// LoadPasswords reads a password file: one "user:bcrypt-hash" per line, '#' comments.
func LoadPasswords(path string) (*Passwords, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open password file: %w", err)
	}
	defer f.Close()
	p := &Passwords{hashes: map[string][]byte{}, verified: map[string][32]byte{}}
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		user, hash, ok := strings.Cut(line, ":")
		if !ok || user == "" {
			return nil, fmt.Errorf("%s:%d: want user:hash: %w", path, n, ErrBadPasswordFile)
		}
		if _, err := bcrypt.Cost([]byte(hash)); err != nil {
			return nil, fmt.Errorf("%s:%d: user %q: hash is not bcrypt (make it with colony passwd): %w", path, n, user, ErrBadPasswordFile)
		}
		p.hashes[user] = []byte(hash)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read password file: %w", err)
	}
	return p, nil
}

// Check reports whether password is the user's.
func (p *Passwords) Check(user string, password []byte) bool {
	sum := sha256.Sum256(password)
	p.mu.Lock()
	hash, ok := p.hashes[user]
	last, seen := p.verified[user]
	p.mu.Unlock()
	if !ok {
		return false
	}
	if seen && last == sum {
		return true
	}
	if bcrypt.CompareHashAndPassword(hash, password) != nil {
		return false
	}
	p.mu.Lock()
	p.verified[user] = sum
	p.mu.Unlock()
	return true
}

// Len returns the number of users.
func (p *Passwords) Len() int { return len(p.hashes) }

// SetPassword adds or replaces a user in a password file, creating the file
// (mode 0600) if needed. It is what `colony passwd` runs.
func SetPassword(path, user, password string) error {
	if user == "" || strings.ContainsAny(user, ":\n\r") {
		return fmt.Errorf("user name %q: must be non-empty without ':' or newlines", user)
	}
	if password == "" {
		return errors.New("empty password")
	}
	hash, err := bcrypt.GenerateFromPassword([]byte(password), bcrypt.DefaultCost)
	if err != nil {
		return fmt.Errorf("hash password: %w", err)
	}
	var out bytes.Buffer
	replaced := false
	old, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("read password file: %w", err)
	}
	for _, line := range strings.Split(string(old), "\n") {
		if line == "" {
			continue
		}
		if u, _, ok := strings.Cut(line, ":"); ok && u == user {
			if !replaced {
				fmt.Fprintf(&out, "%s:%s\n", user, hash)
				replaced = true
			}
			continue
		}
		out.WriteString(line + "\n")
	}
	if !replaced {
		fmt.Fprintf(&out, "%s:%s\n", user, hash)
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, out.Bytes(), 0o600); err != nil {
		return fmt.Errorf("write password file: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("replace password file: %w", err)
	}
	return nil
}

// access is what an ACL rule grants.
type access uint8

const (
	accessRead access = 1 << iota
	accessWrite
	accessDeny
)

type aclRule struct {
	pattern bool // %u/%c substitution; applies to every client
	user    string
	anon    bool // topic line before any user line: anonymous clients only
	access  access
	topic   string
}

// ACL holds access rules in Mosquitto's acl_file syntax:
//
//	topic [read|write|readwrite|deny] <filter>    (before any user line: anonymous clients)
//	user <name>                                   (following topic lines apply to that user)
//	pattern [read|write|readwrite|deny] <filter>  (every client; %u = username, %c = client id)
//
// A matching deny wins; otherwise some matching rule must grant the access.
type ACL struct {
	rules []aclRule
}

// LoadACL parses an ACL file.
func LoadACL(path string) (*ACL, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("open acl file: %w", err)
	}
	return ParseACL(path, string(b))
}

// ParseACL parses ACL rules from text; name is used in error messages.
func ParseACL(name, text string) (*ACL, error) {
	acl := &ACL{}
	user, anon := "", true
	for n, line := range strings.Split(text, "\n") {
		fields := strings.Fields(line)
		if len(fields) == 0 || strings.HasPrefix(fields[0], "#") {
			continue
		}
		bad := func(msg string) error { return fmt.Errorf("%s:%d: %s: %w", name, n+1, msg, ErrBadACLFile) }
		switch fields[0] {
		case "user":
			if len(fields) != 2 {
				return nil, bad("want: user <name>")
			}
			user, anon = fields[1], false
		case "topic", "pattern":
			r := aclRule{pattern: fields[0] == "pattern", user: user, anon: anon, access: accessRead | accessWrite}
			args := fields[1:]
			if len(args) == 2 {
				switch args[0] {
				case "read":
					r.access = accessRead
				case "write":
					r.access = accessWrite
				case "readwrite":
				case "deny":
					r.access = accessDeny
				default:
					return nil, bad(fmt.Sprintf("unknown access %q (want read, write, readwrite or deny)", args[0]))
				}
				args = args[1:]
			}
			if len(args) != 1 {
				return nil, bad("want: " + fields[0] + " [read|write|readwrite|deny] <topic>")
			}
			if !mqtt.IsValidFilter(args[0], false) {
				return nil, bad(fmt.Sprintf("invalid topic filter %q", args[0]))
			}
			r.topic = args[0]
			acl.rules = append(acl.rules, r)
		default:
			return nil, bad(fmt.Sprintf("unknown keyword %q", fields[0]))
		}
	}
	return acl, nil
}

// Allowed reports whether a client may read (subscribe/receive) or write
// (publish) the topic or filter.
func (a *ACL) Allowed(username, clientID, topic string, write bool) bool {
	want := accessRead
	if write {
		want = accessWrite
	}
	granted := false
	for i := range a.rules {
		r := &a.rules[i]
		filter := r.topic
		switch {
		case r.pattern:
			var ok bool
			if filter, ok = substitute(filter, username, clientID); !ok {
				continue
			}
		case r.anon:
			if username != "" {
				continue
			}
		default:
			if r.user != username || username == "" {
				continue
			}
		}
		if !covers(filter, topic) {
			continue
		}
		if r.access&accessDeny != 0 {
			return false
		}
		if r.access&want != 0 {
			granted = true
		}
	}
	return granted
}

// substitute expands %u and %c. An id holding a topic separator or wildcard
// could widen the rule to other clients' topics, so such a rule does not apply.
func substitute(filter, username, clientID string) (string, bool) {
	if strings.Contains(filter, "%u") {
		if username == "" || strings.ContainsAny(username, "/+#") {
			return "", false
		}
		filter = strings.ReplaceAll(filter, "%u", username)
	}
	if strings.Contains(filter, "%c") {
		if clientID == "" || strings.ContainsAny(clientID, "/+#") {
			return "", false
		}
		filter = strings.ReplaceAll(filter, "%c", clientID)
	}
	return filter, true
}

// covers reports whether every topic matched by filter is also matched by
// rule. A plain topic name is a filter matching itself, so this serves both
// subscriptions and individual messages.
func covers(rule, filter string) bool {
	r := strings.Split(rule, "/")
	f := strings.Split(filter, "/")
	for i, rl := range r {
		if rl == "#" {
			// "#" at the top level does not match "$..." topics [MQTT-4.7.2-1].
			return !(i == 0 && len(f) > 0 && strings.HasPrefix(f[0], "$"))
		}
		if i >= len(f) {
			return false
		}
		fl := f[i]
		switch rl {
		case "+":
			if fl == "#" || (i == 0 && strings.HasPrefix(fl, "$")) {
				return false
			}
		default:
			if fl != rl {
				return false
			}
		}
	}
	return len(r) == len(f)
}

// reservedPrefixes are topic spaces clients may never publish to.
var reservedPrefixes = []string{"$SYS", "$colony"}

func reservedForWrite(topic string) bool {
	for _, p := range reservedPrefixes {
		if len(topic) >= len(p) && strings.EqualFold(topic[:len(p)], p) && (len(topic) == len(p) || topic[len(p)] == '/') {
			return true
		}
	}
	return false
}

// authHook authenticates CONNECTs and enforces the ACL, topic guards and
// reserved topics.
type authHook struct {
	mqtt.HookBase
	passwords *Passwords // nil: no password file
	acl       *ACL       // nil: every authenticated client may use every topic
	anonymous func(listener string) bool
	// claims reports whether clients of a listener may choose their own
	// user id (Server.ClaimUser).
	claims   func(listener string) bool
	onDenied func()
	// guards are the modules' reserved topic spaces (Server.Guard), copied
	// on write: every delivery reads them, a module adds one at startup.
	guards  atomic.Pointer[[]guard]
	guardMu sync.Mutex // serializes writers of guards
	// user resolves the user id the %u of a guard rule stands for.
	user func(cl *mqtt.Client) string
	// vouched returns the identity a gateway's transport authenticated
	// for cl's connection (Server.ServeConn).
	vouched func(cl *mqtt.Client) (string, bool)
	// authns are the modules' authenticators (Server.AddAuthenticator),
	// copied on write like guards; ids what they admitted.
	authns  atomic.Pointer[[]Authenticator]
	authnMu sync.Mutex
	ids     identities
}

var _ mqtt.Hook = (*authHook)(nil)

func (h *authHook) ID() string { return "colony-auth" }

func (h *authHook) Provides(b byte) bool {
	return b == mqtt.OnConnectAuthenticate || b == mqtt.OnACLCheck
}

func (h *authHook) OnConnectAuthenticate(cl *mqtt.Client, pk packets.Packet) bool {
	user := string(pk.Connect.Username)
	// A gateway's transport (DTLS) has already authenticated the device:
	// the CONNECT must name it, and the password file has nothing to add.
	// Module authenticators still see it (ConnectInfo.Vouched), so a
	// module that knows the name can confine it or refuse it.
	if h.vouched != nil {
		if id, ok := h.vouched(cl); ok {
			if user != id {
				return false
			}
			if ok, decided := h.authenticate(cl, pk, id); decided {
				return ok
			}
			return true
		}
	}
	if ok, decided := h.authenticate(cl, pk, ""); decided {
		return ok
	}
	if user == "" && !pk.Connect.PasswordFlag {
		return h.anonymous(cl.Net.Listener)
	}
	if h.passwords == nil {
		// No password file: credentials cannot be checked, so they count for nothing.
		return h.anonymous(cl.Net.Listener)
	}
	return h.passwords.Check(user, pk.Connect.Password)
}

func (h *authHook) OnACLCheck(cl *mqtt.Client, topic string, write bool) bool {
	if write && reservedForWrite(topic) {
		h.denied()
		return false
	}
	guarded := false
	if gs := h.guards.Load(); gs != nil {
		ok, decided := checkGuards(*gs, cl, topic, write, h.user)
		if decided && !ok {
			h.denied()
			return false
		}
		guarded = decided
	}
	// A client an authenticator confined (Identity.Access) is held to
	// that alone, inside guarded spaces as well as outside.
	if id, ok := h.ids.of(cl); ok && id.Access != nil {
		if !id.Access(topic, write) {
			h.denied()
			return false
		}
		return true
	}
	if guarded {
		return true
	}
	if h.acl == nil {
		return true
	}
	ok := h.acl.Allowed(string(cl.Properties.Username), cl.ID, topic, write)
	if !ok {
		h.denied()
	}
	return ok
}

func (h *authHook) denied() {
	if h.onDenied != nil {
		h.onDenied()
	}
}
