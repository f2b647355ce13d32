package server

import (
	"errors"
	"strings"
	"testing"
)

// FuzzParseACL: any acl_file text parses or fails with ErrBadACLFile, a
// parsed ACL answers every question without a panic, and a %c/%u rule never
// grants anything to ids holding a separator or wildcard.
func FuzzParseACL(f *testing.F) {
	f.Add("topic read public/#\nuser alice\ntopic readwrite chat/alice/#\npattern readwrite dev/%c/#\n", "alice", "c1", "dev/c1/x", true)
	f.Add("pattern write users/%u/+/in\ntopic deny #\n", "a/b", "+", "users/a/b/x/in", true)
	f.Add("user\n", "", "", "", false)
	f.Add("topic bogus x\n", "u", "c", "x", false)
	f.Add("pattern readwrite $rpc/%u/#\n", "#", "c", "$rpc/x/y", true)
	f.Fuzz(func(t *testing.T, text, user, client, topic string, write bool) {
		acl, err := ParseACL("fuzz", text)
		if err != nil {
			if !errors.Is(err, ErrBadACLFile) {
				t.Fatalf("error %v does not wrap ErrBadACLFile", err)
			}
			return
		}
		_ = acl.Allowed(user, client, topic, write)
		// A pattern rule made only of %u or %c grants nothing to an id that
		// holds a separator or wildcard (or is empty).
		for _, rule := range []string{"%u", "%c", "%u/#", "dev/%c/#"} {
			only, err := ParseACL("fuzz", "pattern readwrite "+rule)
			if err != nil {
				t.Fatal(err)
			}
			id := user
			if strings.Contains(rule, "%c") {
				id = client
			}
			if (id == "" || strings.ContainsAny(id, "/+#")) && only.Allowed(user, client, topic, write) {
				t.Fatalf("pattern %s granted %q to user %q client %q", rule, topic, user, client)
			}
		}
	})
}

// FuzzRequestTopic: every topic parses into a request or not, and a request's
// module and handler are non-empty single levels.
func FuzzRequestTopic(f *testing.F) {
	for _, s := range []string{"$rpc/game/info", "$rpc/im/send/42", "$rpc//x", "$rpc/", "game/info/1", "a/b", "$rpc/a/b/c/d"} {
		f.Add(s, true)
	}
	f.Fuzz(func(t *testing.T, topic string, mqant bool) {
		g := &gateway{s: &Server{opts: Options{MQANTTopics: mqant, Serves: func(m string) bool { return m == "game" }}}}
		module, fn, ok := g.parseTopic(topic)
		if !ok || module == "" && fn == "" {
			return
		}
		if module == "" || fn == "" || strings.Contains(module, "/") || strings.Contains(fn, "/") {
			t.Fatalf("topic %q: module %q handler %q", topic, module, fn)
		}
	})
}
