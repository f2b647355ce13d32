package server

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestCovers(t *testing.T) {
	cases := []struct {
		rule, filter string
		want         bool
	}{
		{"a/b", "a/b", true},
		{"a/b", "a/c", false},
		{"a/+", "a/b", true},
		{"a/+", "a/+", true},
		{"a/+", "a/#", false},
		{"a/+", "a/b/c", false},
		{"a/#", "a", true},
		{"a/#", "a/b/c", true},
		{"a/#", "a/+/c", true},
		{"a/b", "a/+", false}, // a wider subscription than the rule allows
		{"#", "x/y", true},
		{"#", "$SYS/x", false}, // [MQTT-4.7.2-1]
		{"+/x", "$SYS/x", false},
		{"$SYS/#", "$SYS/broker/x", true},
	}
	for _, c := range cases {
		if got := covers(c.rule, c.filter); got != c.want {
			t.Errorf("covers(%q, %q) = %v, want %v", c.rule, c.filter, got, c.want)
		}
	}
}

const aclText = `
# anonymous clients
topic read public/#

user alice
topic readwrite chat/alice/#
topic read chat/all
topic deny chat/alice/secret

user bob
topic chat/bob/#

pattern readwrite dev/%c/#
pattern read inbox/%u/#
`

func TestACLRules(t *testing.T) {
	acl, err := ParseACL("acl", aclText)
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		user, client, topic string
		write, want         bool
	}{
		{"", "anon", "public/news", false, true},
		{"", "anon", "public/news", true, false},
		{"alice", "a1", "public/news", false, false}, // anonymous lines are for anonymous clients only
		{"alice", "a1", "chat/alice/x", true, true},
		{"alice", "a1", "chat/alice/#", false, true},
		{"alice", "a1", "chat/all", false, true},
		{"alice", "a1", "chat/all", true, false},
		{"alice", "a1", "chat/bob/x", false, false},
		{"alice", "a1", "chat/alice/secret", false, false}, // deny wins
		{"bob", "b1", "chat/bob/x", true, true},            // no access word: readwrite
		{"bob", "b1", "chat/alice/x", false, false},
		{"alice", "dev42", "dev/dev42/telemetry", true, true},
		{"alice", "dev42", "dev/dev43/telemetry", true, false},
		{"alice", "a1", "inbox/alice/1", false, true},
		{"alice", "a1", "inbox/bob/1", false, false},
		// Wildcards or separators in ids must not widen a pattern.
		{"alice", "+", "dev/+/telemetry", false, false},
		{"alice", "#", "dev/#", false, false},
		{"alice", "x/y", "dev/x/y/z", true, false},
		{"+", "c", "inbox/+/1", false, false},
		{"", "c", "inbox//1", false, false},
	}
	for _, c := range cases {
		if got := acl.Allowed(c.user, c.client, c.topic, c.write); got != c.want {
			t.Errorf("Allowed(user=%q client=%q %q write=%v) = %v, want %v", c.user, c.client, c.topic, c.write, got, c.want)
		}
	}
}

func TestACLParseErrors(t *testing.T) {
	for _, text := range []string{
		"topic nonsense a b",
		"user",
		"frobnicate x",
		"topic read a/#/b",
		"pattern",
	} {
		if _, err := ParseACL("f", text); !errors.Is(err, ErrBadACLFile) {
			t.Errorf("ParseACL(%q) = %v, want ErrBadACLFile", text, err)
		}
	}
	_, err := ParseACL("acl.conf", "user a\ntopic read x\nbogus line")
	if err == nil || err.Error() != `acl.conf:3: unknown keyword "bogus": bad acl file` {
		t.Fatalf("error does not name file and line: %v", err)
	}
}

func TestPasswords(t *testing.T) {
	path := filepath.Join(t.TempDir(), "users")
	if err := SetPassword(path, "alice", "s3cret"); err != nil {
		t.Fatal(err)
	}
	if err := SetPassword(path, "bob", "hunter2"); err != nil {
		t.Fatal(err)
	}
	if err := SetPassword(path, "alice", "changed"); err != nil { // replace, not append
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("password file mode %v, want 0600", fi.Mode().Perm())
	}
	p, err := LoadPasswords(path)
	if err != nil {
		t.Fatal(err)
	}
	if p.Len() != 2 {
		t.Fatalf("%d users, want 2", p.Len())
	}
	for _, c := range []struct {
		user, pw string
		ok       bool
	}{
		{"alice", "changed", true},
		{"alice", "changed", true}, // second time from the cache
		{"alice", "s3cret", false},
		{"bob", "hunter2", true},
		{"bob", "", false},
		{"carol", "x", false},
	} {
		if got := p.Check(c.user, []byte(c.pw)); got != c.ok {
			t.Errorf("Check(%s, %s) = %v", c.user, c.pw, got)
		}
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, secret := range []string{"changed", "hunter2"} {
		if contains(string(raw), secret) {
			t.Fatalf("password %q stored in clear", secret)
		}
	}
	if err := os.WriteFile(path, []byte("alice:plaintext\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadPasswords(path); !errors.Is(err, ErrBadPasswordFile) {
		t.Fatalf("plain text password accepted: %v", err)
	}
	if err := SetPassword(path, "a:b", "x"); err == nil {
		t.Fatal("user name with ':' accepted")
	}
}

func contains(s, sub string) bool { return strings.Contains(s, sub) }
