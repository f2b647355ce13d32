package im_test

import (
	"context"
	"testing"
	"time"

	"github.com/colonymq/colony/app/apptest"
	"github.com/colonymq/colony/modules/im"
	"github.com/colonymq/colony/rpc"
)

var fuzzHandlers = []string{
	"me", "direct", "create", "get", "list", "members", "invite", "join", "leave", "kick", "role", "mute",
	"send", "edit", "revoke", "delete_for_me", "history", "sync", "delivered", "read", "typing", "presence",
	"block", "unblock", "blocks",
}

// FuzzRequests sends arbitrary bodies to every im handler as one of three
// users (the way a client's $rpc/im/<handler> PUBLISH arrives): each call
// succeeds or fails with a client error, never internal (a handler error
// or panic). The node lives for the whole fuzz run, so inputs build state
// on each other as real clients would.
func FuzzRequests(f *testing.F) {
	a := apptest.Run(f, apptest.Config(f), im.New(im.Options{}))
	seeds := []struct {
		h    int
		body string
	}{
		{1, `{"user":"bob"}`},
		{2, `{"kind":"group","title":"g","members":["bob","carol"]}`},
		{12, `{"conv":"d:alice:bob","text":"hi","client_msg_id":"m1"}`},
		{12, `{"conv":"d:alice:bob","bin":"AAEC","client_msg_id":"m2"}`},
		{16, `{"conv":"d:alice:bob","before":99999,"limit":1000000}`},
		{17, `{"since":{"d:alice:bob":-1}}`},
		{19, `{"conv":"d:alice:bob","seq":18446744073709551615}`},
		{10, `{"conv":"x","user":"bob","role":"owner"}`},
		{0, `null`},
		{5, `[`},
	}
	for _, s := range seeds {
		f.Add(uint8(s.h), uint8(0), []byte(s.body))
	}
	users := []string{"alice", "bob", "carol"}
	f.Fuzz(func(t *testing.T, h, u uint8, body []byte) {
		handler := fuzzHandlers[int(h)%len(fuzzHandlers)]
		ctx, cancel := context.WithTimeout(rpc.WithCaller(context.Background(),
			rpc.Caller{UserID: users[int(u)%len(users)], ClientID: "fuzz", Module: "gateway"}), 10*time.Second)
		defer cancel()
		_, err := rpc.Call[rpc.Raw](ctx, a.RPC(), "im", handler, rpc.Raw(body))
		if c := rpc.CodeOf(err); c == rpc.CodeInternal || c == rpc.CodeTimeout {
			t.Fatalf("im.%s(%q): %v", handler, body, err)
		}
	})
}
