package im_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	pahov3 "github.com/eclipse/paho.mqtt.golang"

	"github.com/colonymq/colony/app"
	"github.com/colonymq/colony/app/apptest"
	"github.com/colonymq/colony/modules/im"
	"github.com/colonymq/colony/rpc"
)

// grace is how long tests watch for something that must not arrive, after
// a positive check has shown the path works.
const grace = 100 * time.Millisecond

func TestDirectChat(t *testing.T) {
	n := start(t, apptest.Config(t), im.Options{})
	alice, bob := login(t, n, "alice", "alice-phone"), login(t, n, "bob", "bob-laptop")

	var me im.Me
	alice.must("me", struct{}{}, &me)
	if me.User != "alice" || me.Topic != "im/u/alice/#" {
		t.Fatalf("me = %+v", me)
	}
	var conv im.Conversation
	alice.must("direct", &im.DirectReq{User: "bob"}, &conv)
	if conv.Kind != im.KindDirect || conv.Peer != "bob" || conv.Members != 2 || conv.LastSeq != 0 {
		t.Fatalf("direct = %+v", conv)
	}
	var again im.Conversation
	bob.must("direct", &im.DirectReq{User: "alice"}, &again)
	if again.ID != conv.ID || again.Peer != "alice" {
		t.Fatalf("bob's direct = %+v, want the same conversation %s", again, conv.ID)
	}
	for _, c := range []*client{alice, bob} {
		if ev := apptest.Next(t, c.convs); ev.Type != im.EventCreated || ev.Conv != conv.ID {
			t.Fatalf("%s: conv event %+v", c.id, ev)
		}
	}

	sent := alice.send(conv.ID, "a-1", "hi bob")
	if sent.Seq != 1 || sent.From != "alice" || sent.Type != im.TypeMsg || sent.TS == 0 || sent.Duplicate {
		t.Fatalf("send = %+v", sent)
	}
	for _, c := range []*client{bob, alice} { // the sender's devices get it too
		if got := c.nextMsg(); got.Seq != 1 || got.Text != "hi bob" || got.From != "alice" || got.Conv != conv.ID {
			t.Fatalf("%s got %+v", c.id, got)
		}
	}
	if reply := bob.send(conv.ID, "b-1", "hello alice"); reply.Seq != 2 {
		t.Fatalf("reply seq %d, want 2", reply.Seq)
	}
	if echo := bob.nextMsg(); echo.Seq != 2 {
		t.Fatalf("bob's echo %+v", echo)
	}
	if got := alice.nextMsg(); got.Seq != 2 || got.Text != "hello alice" || got.From != "bob" {
		t.Fatalf("alice got %+v", got)
	}

	// JSON and binary payloads travel as they are.
	var rich im.SendResult
	alice.must("send", &im.SendReq{Conv: conv.ID, Data: []byte(`{"sticker":42}`), Bin: []byte{0, 1, 2, 255}}, &rich)
	got := bob.nextMsg()
	if string(got.Data) != `{"sticker":42}` || !slices.Equal(got.Bin, []byte{0, 1, 2, 255}) || got.Seq != 3 {
		t.Fatalf("bob got %+v", got)
	}

	var list im.ListResp
	bob.must("list", struct{}{}, &list)
	if len(list.Conversations) != 1 || list.Conversations[0].LastSeq != 3 || list.Conversations[0].ReadSeq != 2 {
		t.Fatalf("bob's list = %+v (read_seq should be 2: his own message)", list)
	}
	// Bad requests name what is wrong.
	wantErr(t, alice.call("send", &im.SendReq{Conv: conv.ID}, nil), rpc.CodeBadRequest, "empty")
	wantErr(t, alice.call("send", &im.SendReq{Conv: conv.ID, Text: strings.Repeat("x", 20000)}, nil), rpc.CodeBadRequest, "too large")
	wantErr(t, alice.call("send", &im.SendReq{Conv: "d_nosuchthing", Text: "x"}, nil), rpc.CodeForbidden, "not a member")
	wantErr(t, alice.call("direct", &im.DirectReq{User: "a/b"}, nil), rpc.CodeBadRequest, "invalid user")
	// A third user cannot read or write the conversation.
	carol := login(t, n, "carol", "carol-1")
	wantErr(t, carol.call("send", &im.SendReq{Conv: conv.ID, Text: "x"}, nil), rpc.CodeForbidden, "not a member")
	wantErr(t, carol.call("history", &im.HistoryReq{Conv: conv.ID}, nil), rpc.CodeForbidden, "not a member")
}

func TestGroupMemberCatchesUpAfterBeingOffline(t *testing.T) {
	n := start(t, apptest.Config(t), im.Options{})
	names := []string{"alice", "bob", "carol", "dave", "erin"}
	cs := map[string]*client{}
	for _, u := range names {
		cs[u] = login(t, n, u, u+"-1")
	}
	// dave's phone keeps a persistent session: MQTT queues for it.
	cs["dave"].offline(n)
	cs["dave"] = login(t, n, "dave", "dave-1", persistent)

	var g im.Conversation
	cs["alice"].must("create", &im.CreateReq{Kind: im.KindGroup, Title: "five", Members: names[1:]}, &g)
	if g.Members != 5 || g.Role != im.RoleOwner {
		t.Fatalf("create = %+v", g)
	}
	first := cs["bob"].send(g.ID, "b-0", "before")
	for _, u := range names {
		if m := cs[u].nextMsg(); m.Seq != first.Seq {
			t.Fatalf("%s got %+v", u, m)
		}
	}
	// erin's device remembers seq 1 and goes away; so does dave's.
	erinSeen := first.Seq
	cs["erin"].offline(n)
	cs["dave"].offline(n)

	var want []string
	for i := range 6 {
		from := names[i%3]
		text := fmt.Sprintf("%s says %d", from, i)
		cs[from].send(g.ID, fmt.Sprintf("%s-%d", from, i), text)
		want = append(want, text)
	}
	for _, u := range names[:3] {
		for _, w := range want {
			if m := cs[u].nextMsg(); m.Text != w {
				t.Fatalf("%s got %q, want %q", u, m.Text, w)
			}
		}
	}

	erin := login(t, n, "erin", "erin-2")
	var s im.SyncResp
	erin.must("sync", &im.SyncReq{Since: map[string]uint64{g.ID: erinSeen}}, &s)
	if len(s.Conversations) != 1 || s.Conversations[0].More {
		t.Fatalf("sync = %+v", s)
	}
	sc := s.Conversations[0]
	if got := texts(sc.Messages); !slices.Equal(got, want) {
		t.Fatalf("erin synced %q, want %q", got, want)
	}
	if got := seqs(sc.Messages); !slices.Equal(got, []uint64{2, 3, 4, 5, 6, 7}) {
		t.Fatalf("erin synced seqs %v", got)
	}
	if sc.Conversation.LastSeq != 7 || sc.Conversation.ReadSeq != 0 {
		t.Fatalf("erin's view %+v", sc.Conversation)
	}
	// Having caught up, erin says so; in a small group everyone hears.
	erin.must("read", &im.AckReq{Conv: g.ID, Seq: 7}, nil)
	for _, u := range []string{"alice", "carol"} {
		cs[u].waitReceipt(g.ID, "erin", 7, 7)
	}
	// A small limit pages the gap.
	erin.must("sync", &im.SyncReq{Since: map[string]uint64{g.ID: erinSeen}, Limit: 4}, &s)
	if sc := s.Conversations[0]; !sc.More || !slices.Equal(seqs(sc.Messages), []uint64{2, 3, 4, 5}) {
		t.Fatalf("limited sync = %+v", sc)
	}

	// dave's persistent session kept the deliveries, in order.
	dave := login(t, n, "dave", "dave-1", persistent)
	if dave.c.Connack == nil || !dave.c.Connack.SessionPresent {
		t.Fatal("dave's session was not kept")
	}
	for _, w := range want {
		if m := dave.nextMsg(); m.Text != w {
			t.Fatalf("dave got %q, want %q", m.Text, w)
		}
	}
}

func TestResendMakesNoDuplicate(t *testing.T) {
	n := start(t, apptest.Config(t), im.Options{})
	alice, bob := login(t, n, "alice", "a1"), login(t, n, "bob", "b1")
	var conv im.Conversation
	alice.must("direct", &im.DirectReq{User: "bob"}, &conv)

	first := alice.send(conv.ID, "msg-1", "once")
	again := alice.send(conv.ID, "msg-1", "once")
	if again.Seq != first.Seq || !again.Duplicate || first.Duplicate || again.TS != first.TS {
		t.Fatalf("first %+v, resend %+v", first, again)
	}
	// The same client id from another user is another message.
	if b := bob.send(conv.ID, "msg-1", "mine"); b.Seq != 2 || b.Duplicate {
		t.Fatalf("bob's send with alice's client id: %+v", b)
	}
	// Concurrent resends, as a flaky network makes them, store one message.
	var wg sync.WaitGroup
	results := make([]*im.SendResult, 16)
	for i := range results {
		wg.Go(func() {
			r, err := rpc.Call[im.SendResult](as("alice"), n.RPC(), "im", "send", &im.SendReq{Conv: conv.ID, ClientID: "msg-2", Text: "racy"})
			if err != nil {
				t.Error(err)
				return
			}
			results[i] = r
		})
	}
	wg.Wait()
	dups := 0
	for _, r := range results {
		if r == nil || r.Seq != 3 {
			t.Fatalf("concurrent resend got %+v, want seq 3", r)
		}
		if r.Duplicate {
			dups++
		}
	}
	if dups != len(results)-1 {
		t.Fatalf("%d duplicates, want %d", dups, len(results)-1)
	}
	// bob got each message once.
	for _, want := range []string{"once", "mine", "racy"} {
		if m := bob.nextMsg(); m.Text != want {
			t.Fatalf("bob got %q, want %q", m.Text, want)
		}
	}
	apptest.None(t, bob.msgs, grace)
	var h im.HistoryResp
	bob.must("history", &im.HistoryReq{Conv: conv.ID}, &h)
	if !slices.Equal(texts(h.Messages), []string{"once", "mine", "racy"}) {
		t.Fatalf("history %q", texts(h.Messages))
	}
}

func TestReceiptsTypingAndPresence(t *testing.T) {
	n := start(t, apptest.Config(t), im.Options{})
	alice, bob := login(t, n, "alice", "a1"), login(t, n, "bob", "b1")
	alicePad := login(t, n, "alice", "a2") // alice's second device
	var conv im.Conversation
	alice.must("direct", &im.DirectReq{User: "bob"}, &conv)
	for i := 1; i <= 3; i++ {
		alice.send(conv.ID, "", fmt.Sprint("m", i))
	}

	var r im.Receipt
	bob.must("delivered", &im.AckReq{Conv: conv.ID, Seq: 3}, &r)
	if r.DeliveredSeq != 3 || r.ReadSeq != 0 {
		t.Fatalf("delivered = %+v", r)
	}
	bob.must("read", &im.AckReq{Conv: conv.ID, Seq: 2}, &r)
	for _, c := range []*client{alice, alicePad, bob} { // both of alice's devices, and bob's own
		c.waitReceipt(conv.ID, "bob", 2, 3)
	}
	// Positions never move back, and an ack that moves nothing tells nobody.
	bob.must("read", &im.AckReq{Conv: conv.ID, Seq: 1}, &r)
	if r.ReadSeq != 2 {
		t.Fatalf("read went back: %+v", r)
	}
	var ms im.MembersResp
	alice.must("members", &im.ConvReq{Conv: conv.ID}, &ms)
	if len(ms.Members) != 2 || ms.Members[1].User != "bob" || ms.Members[1].ReadSeq != 2 || ms.Members[0].ReadSeq != 3 {
		t.Fatalf("members = %+v", ms)
	}

	// Typing reaches the others only, and is never stored.
	bob.must("typing", &im.TypingReq{Conv: conv.ID, Typing: true}, nil)
	for _, c := range []*client{alice, alicePad} {
		if ty := apptest.Next(t, c.typing); ty.User != "bob" || !ty.Typing || ty.Conv != conv.ID {
			t.Fatalf("%s: typing %+v", c.id, ty)
		}
	}
	apptest.None(t, bob.typing, grace)

	// Presence: bob goes away and comes back.
	var pr im.PresenceResp
	alice.must("presence", &im.PresenceReq{Users: []string{"bob", "nobody"}}, &pr)
	if !pr.Users[0].Online || pr.Users[1].Online || pr.Users[1].LastSeen != 0 {
		t.Fatalf("presence = %+v", pr)
	}
	before := time.Now().UnixMilli()
	bob.offline(n)
	off := apptest.Next(t, alice.presence)
	if off.User != "bob" || off.Online || off.LastSeen < before {
		t.Fatalf("offline presence %+v", off)
	}
	alice.must("presence", &im.PresenceReq{Users: []string{"bob"}}, &pr)
	if pr.Users[0].Online || pr.Users[0].LastSeen != off.LastSeen {
		t.Fatalf("presence after leaving = %+v, want last seen %d", pr, off.LastSeen)
	}
	login(t, n, "bob", "b2")
	if on := apptest.Next(t, alice.presence); on.User != "bob" || !on.Online {
		t.Fatalf("online presence %+v", on)
	}
	// A second device changes nothing: bob was online already.
	login(t, n, "bob", "b3")
	alicePad.offline(n) // alice is still online on a1: nothing for bob either
	apptest.None(t, alice.presence, grace)
}

func TestBlockedUserCannotReachBlocker(t *testing.T) {
	n := start(t, apptest.Config(t), im.Options{})
	alice, bob := login(t, n, "alice", "a1"), login(t, n, "bob", "b1")
	var conv im.Conversation
	alice.must("direct", &im.DirectReq{User: "bob"}, &conv)
	alice.send(conv.ID, "", "hi")
	bob.nextMsg()

	bob.must("block", &im.BlockReq{User: "alice"}, nil)
	var bl im.BlocksResp
	bob.must("blocks", struct{}{}, &bl)
	if !slices.Equal(bl.Users, []string{"alice"}) {
		t.Fatalf("blocks = %v", bl.Users)
	}
	err := alice.call("send", &im.SendReq{Conv: conv.ID, Text: "let me in"}, nil)
	wantErr(t, err, rpc.CodeForbidden, "bob does not accept messages from you")
	wantErr(t, alice.call("typing", &im.TypingReq{Conv: conv.ID, Typing: true}, nil), rpc.CodeForbidden, "does not accept")
	wantErr(t, bob.call("send", &im.SendReq{Conv: conv.ID, Text: "x"}, nil), rpc.CodeForbidden, "unblock them first")
	wantErr(t, alice.call("create", &im.CreateReq{Kind: im.KindGroup, Members: []string{"bob"}}, nil), rpc.CodeForbidden, "bob does not accept")
	// The same over RPC from a module, where the sentinel is visible too.
	_, err = rpc.Call[im.SendResult](as("alice"), n.RPC(), "im", "send", &im.SendReq{Conv: conv.ID, Text: "x"})
	if !errors.Is(err, im.ErrBlocked) || !errors.Is(err, rpc.ErrForbidden) {
		t.Fatalf("module call: %v, want ErrBlocked and forbidden", err)
	}
	apptest.None(t, bob.msgs, grace)

	bob.must("unblock", &im.BlockReq{User: "alice"}, nil)
	alice.send(conv.ID, "", "thanks")
	if m := bob.nextMsg(); m.Text != "thanks" {
		t.Fatalf("bob got %q", m.Text)
	}
}

func TestSendRateLimit(t *testing.T) {
	// 0.01/s: the bucket does not refill noticeably during the test. The
	// limits come from colony.toml's [modules.im] table, over the defaults.
	cfg := apptest.Config(t)
	if err := app.DecodeConfig("colony.toml", []byte("[modules.im]\nsend_rate = 0.01\nsend_burst = 3\n"), &cfg); err != nil {
		t.Fatal(err)
	}
	n := start(t, cfg, im.Options{})
	alice := login(t, n, "alice", "a1")
	var conv im.Conversation
	alice.must("direct", &im.DirectReq{User: "bob"}, &conv)
	for i := range 3 {
		alice.send(conv.ID, fmt.Sprint("c", i), "ok")
	}
	err := alice.call("send", &im.SendReq{Conv: conv.ID, ClientID: "c3", Text: "too many"}, nil)
	wantErr(t, err, rpc.CodeRateLimited, "retry in")
	if !errors.Is(err, rpc.ErrRateLimited) {
		t.Fatalf("%v does not match rpc.ErrRateLimited", err)
	}
	// A resend of a stored message costs nothing and still answers.
	if r := alice.send(conv.ID, "c0", "ok"); !r.Duplicate || r.Seq != 1 {
		t.Fatalf("resend under the limit: %+v", r)
	}
	// Other users have their own budget.
	bob := login(t, n, "bob", "b1")
	bob.send(conv.ID, "", "fine")
}

func TestHistoryPagesAreCompleteAndOrdered(t *testing.T) {
	n := start(t, apptest.Config(t), im.Options{SendRate: -1})
	alice := login(t, n, "alice", "a1")
	var conv im.Conversation
	alice.must("direct", &im.DirectReq{User: "bob"}, &conv)
	const total = 25
	for i := 1; i <= total; i++ {
		if _, err := rpc.Call[im.SendResult](as("alice"), n.RPC(), "im", "send", &im.SendReq{Conv: conv.ID, Text: fmt.Sprint(i)}); err != nil {
			t.Fatal(err)
		}
	}
	var want []uint64
	for i := uint64(1); i <= total; i++ {
		want = append(want, i)
	}

	// Backwards from the latest page, as a chat view scrolls up.
	var got []uint64
	var h im.HistoryResp
	before, pages := uint64(0), 0
	for {
		alice.must("history", &im.HistoryReq{Conv: conv.ID, Before: before, Limit: 10}, &h)
		got = append(seqs(h.Messages), got...)
		pages++
		if !h.More {
			break
		}
		before = h.From
	}
	if !slices.Equal(got, want) || pages != 3 {
		t.Fatalf("backward pages gave %v in %d pages", got, pages)
	}
	// Forwards from the start.
	got, after := nil, uint64(0)
	for {
		alice.must("history", &im.HistoryReq{Conv: conv.ID, After: &after, Limit: 7}, &h)
		if !slices.IsSorted(seqs(h.Messages)) {
			t.Fatalf("page not in order: %v", seqs(h.Messages))
		}
		got = append(got, seqs(h.Messages)...)
		if !h.More {
			break
		}
		after = h.To
	}
	if !slices.Equal(got, want) {
		t.Fatalf("forward pages gave %v", got)
	}
	for i, m := range h.Messages { // the last page, with content
		if m.Text != fmt.Sprint(m.Seq) || m.Conv != conv.ID || m.From != "alice" {
			t.Fatalf("entry %d: %+v", i, m)
		}
	}
	// Past either end: empty pages that say so.
	end := uint64(total)
	alice.must("history", &im.HistoryReq{Conv: conv.ID, After: &end}, &h)
	if len(h.Messages) != 0 || h.More {
		t.Fatalf("after the end: %+v", h)
	}
}

func TestEditRevokeAndDeleteForMe(t *testing.T) {
	n := start(t, apptest.Config(t), im.Options{})
	alice, bob := login(t, n, "alice", "a1"), login(t, n, "bob", "b1")
	bobPad := login(t, n, "bob", "b2")
	var g im.Conversation
	alice.must("create", &im.CreateReq{Kind: im.KindGroup, Members: []string{"bob"}}, &g)
	m1 := alice.send(g.ID, "", "helo")
	m2 := alice.send(g.ID, "", "secret")
	m3 := bob.send(g.ID, "", "bob's")
	for range 3 {
		bob.nextMsg()
	}

	var e im.Message
	alice.must("edit", &im.EditReq{Conv: g.ID, Seq: m1.Seq, Text: "hello"}, &e)
	if e.Type != im.TypeEdit || e.Ref != m1.Seq || e.Seq != 4 || e.Text != "hello" {
		t.Fatalf("edit entry %+v", e)
	}
	if got := bob.nextMsg(); got.Type != im.TypeEdit || got.Ref != m1.Seq || got.Text != "hello" {
		t.Fatalf("bob got %+v", got)
	}
	wantErr(t, bob.call("edit", &im.EditReq{Conv: g.ID, Seq: m1.Seq, Text: "x"}, nil), rpc.CodeForbidden, "only its sender")
	wantErr(t, alice.call("edit", &im.EditReq{Conv: g.ID, Seq: e.Seq, Text: "x"}, nil), rpc.CodeBadRequest, "no message 4")

	// Revoke: the owner may revoke bob's message; bob may not revoke alice's.
	wantErr(t, bob.call("revoke", &im.SeqReq{Conv: g.ID, Seq: m2.Seq}, nil), rpc.CodeForbidden, "revoke")
	var rv im.Message
	alice.must("revoke", &im.SeqReq{Conv: g.ID, Seq: m3.Seq}, &rv)
	if rv.Type != im.TypeRevoke || rv.Ref != m3.Seq || rv.From != "alice" {
		t.Fatalf("revoke entry %+v", rv)
	}
	if got := bob.nextMsg(); got.Type != im.TypeRevoke || got.Ref != m3.Seq {
		t.Fatalf("bob got %+v", got)
	}
	alice.must("edit", &im.EditReq{Conv: g.ID, Seq: m2.Seq, Text: "still secret"}, &e)
	alice.must("revoke", &im.SeqReq{Conv: g.ID, Seq: m2.Seq}, &rv)
	wantErr(t, alice.call("revoke", &im.SeqReq{Conv: g.ID, Seq: m2.Seq}, nil), rpc.CodeBadRequest, "revoked")

	// History shows messages as they are now; revoked content is gone,
	// from the edits of a revoked message too.
	var h im.HistoryResp
	bob.must("history", &im.HistoryReq{Conv: g.ID}, &h)
	if len(h.Messages) != 7 {
		t.Fatalf("history has %d entries: %+v", len(h.Messages), h.Messages)
	}
	byseq := map[uint64]im.Message{}
	for _, m := range h.Messages {
		byseq[m.Seq] = m
	}
	if m := byseq[m1.Seq]; m.Text != "hello" || m.EditedTS == 0 || m.Revoked {
		t.Fatalf("edited message %+v", m)
	}
	if m := byseq[m2.Seq]; m.Text != "" || !m.Revoked {
		t.Fatalf("revoked message %+v", m)
	}
	if m := byseq[e.Seq]; m.Type != im.TypeEdit || m.Text != "" {
		t.Fatalf("edit of a revoked message kept its content: %+v", m)
	}
	if m := byseq[m3.Seq]; m.Text != "" || !m.Revoked {
		t.Fatalf("revoked message %+v", m)
	}

	// Delete for me: gone from bob's history and sync, not from alice's.
	bob.must("delete_for_me", &im.DeleteForMeReq{Conv: g.ID, Seqs: []uint64{m1.Seq, 4}}, nil)
	for _, c := range []*client{bob, bobPad} {
		if ev := apptest.Next(t, c.convs); ev.Type != im.EventCreated {
			t.Fatalf("%s: %+v", c.id, ev)
		}
		if ev := apptest.Next(t, c.convs); ev.Type != im.EventDeleted || !slices.Equal(ev.Seqs, []uint64{1, 4}) {
			t.Fatalf("%s: deletion event %+v", c.id, ev)
		}
	}
	bob.must("history", &im.HistoryReq{Conv: g.ID}, &h)
	if got := seqs(h.Messages); !slices.Equal(got, []uint64{2, 3, 5, 6, 7}) {
		t.Fatalf("bob's history after delete_for_me: %v", got)
	}
	var s im.SyncResp
	bob.must("sync", &im.SyncReq{}, &s)
	if got := seqs(s.Conversations[0].Messages); !slices.Equal(got, []uint64{2, 3, 5, 6, 7}) {
		t.Fatalf("bob's sync after delete_for_me: %v", got)
	}
	alice.must("history", &im.HistoryReq{Conv: g.ID}, &h)
	if len(h.Messages) != 7 {
		t.Fatalf("alice's history lost entries: %v", seqs(h.Messages))
	}
}

func TestDeliveryTopicsAreGuarded(t *testing.T) {
	n := start(t, apptest.Config(t), im.Options{})
	alice := login(t, n, "alice", "a1")
	mallory := login(t, n, "mallory", "m1")

	// MQTT 5: SUBACK 0x87, not authorized.
	if codes := mallory.subscribe("im/u/alice/#"); !slices.Equal(codes, []byte{0x87}) {
		t.Fatalf("subscribing to alice's topics: reason codes %#v", codes)
	}
	if codes := mallory.subscribe("im/u/+/msg"); !slices.Equal(codes, []byte{0x87}) {
		t.Fatalf("subscribing to everyone's messages: %#v", codes)
	}
	// MQTT 3.1.1: SUBACK 0x80.
	v3 := apptest.V3(t, apptest.URL(n.App), "m-v3")
	apptest.Eventually(t, func() error { return n.Server().BindUser("m-v3", "mallory") })
	tok := v3.Subscribe("im/u/alice/#", 1, nil)
	if !tok.WaitTimeout(apptest.Wait) {
		t.Fatal("subscribe timed out")
	}
	if code := tok.(*pahov3.SubscribeToken).Result()["im/u/alice/#"]; code != 0x80 {
		t.Fatalf("v3 SUBACK %#x, want 0x80", code)
	}
	// Nobody publishes there, not even to their own topics.
	for _, topic := range []string{"im/u/alice/msg", "im/u/mallory/msg"} {
		res, err := mallory.c.Publish(apptest.Ctx(t), &paho.Publish{Topic: topic, QoS: 1, Payload: []byte(`{"text":"forged"}`)})
		if res == nil || res.ReasonCode != 0x87 {
			t.Fatalf("publish to %s: %v %+v, want PUBACK 0x87", topic, err, res)
		}
	}
	// And a wide filter carries nothing of alice's to mallory.
	if codes := mallory.subscribe("#"); !slices.Equal(codes, []byte{1}) {
		t.Fatalf("subscribing to #: %#v", codes)
	}
	var conv im.Conversation
	alice.must("direct", &im.DirectReq{User: "bob"}, &conv)
	alice.send(conv.ID, "", "private")
	if m := alice.nextMsg(); m.Text != "private" {
		t.Fatalf("alice got %+v", m)
	}
	apptest.None(t, mallory.msgs, grace)
}

func TestBroadcastChannel(t *testing.T) {
	n := start(t, apptest.Config(t), im.Options{})
	owner, r1, r2 := login(t, n, "news", "n1"), login(t, n, "reader1", "r1"), login(t, n, "reader2", "r2")
	var ch im.Conversation
	owner.must("create", &im.CreateReq{Kind: im.KindChannel, Title: "news", Public: true, Members: []string{"reader1"}}, &ch)

	err := r1.call("send", &im.SendReq{Conv: ch.ID, Text: "me too"}, nil)
	wantErr(t, err, rpc.CodeForbidden, "only the owner and admins post")
	wantErr(t, r1.call("typing", &im.TypingReq{Conv: ch.ID, Typing: true}, nil), rpc.CodeForbidden, "only the owner")
	wantErr(t, r2.call("history", &im.HistoryReq{Conv: ch.ID}, nil), rpc.CodeForbidden, "not a member")

	owner.send(ch.ID, "", "headline")
	if m := r1.nextMsg(); m.Text != "headline" {
		t.Fatalf("reader1 got %+v", m)
	}
	// Anyone may join a public channel, and sees its history.
	var joined im.Conversation
	r2.must("join", &im.ConvReq{Conv: ch.ID}, &joined)
	if joined.Role != im.RoleMember || joined.Members != 3 {
		t.Fatalf("join = %+v", joined)
	}
	var h im.HistoryResp
	r2.must("history", &im.HistoryReq{Conv: ch.ID}, &h)
	if !slices.Equal(texts(h.Messages), []string{"headline"}) {
		t.Fatalf("reader2's history %q", texts(h.Messages))
	}
	wantErr(t, r2.call("send", &im.SendReq{Conv: ch.ID, Text: "x"}, nil), rpc.CodeForbidden, "only the owner and admins post")

	// An admin writes.
	owner.must("role", &im.RoleReq{Conv: ch.ID, User: "reader1", Role: im.RoleAdmin}, nil)
	r1.send(ch.ID, "", "second writer")
	if m := r2.nextMsg(); m.Text != "second writer" {
		t.Fatalf("reader2 got %+v", m)
	}
	// Receipts in a channel go to the reader's devices only.
	r2.must("read", &im.AckReq{Conv: ch.ID, Seq: 2}, nil)
	r2.waitReceipt(ch.ID, "reader2", 2, 2)
	apptest.None(t, owner.receipts, grace)
}

func TestGroupRoles(t *testing.T) {
	n := start(t, apptest.Config(t), im.Options{})
	owner, admin, mem := login(t, n, "olga", "o1"), login(t, n, "adam", "a1"), login(t, n, "mia", "m1")
	var g im.Conversation
	owner.must("create", &im.CreateReq{Kind: im.KindGroup, Title: "team", Members: []string{"adam"}}, &g)
	m1 := owner.send(g.ID, "", "before mia")

	wantErr(t, admin.call("invite", &im.InviteReq{Conv: g.ID, Users: []string{"mia"}}, nil), rpc.CodeForbidden, "only the owner and admins invite")
	owner.must("role", &im.RoleReq{Conv: g.ID, User: "adam", Role: im.RoleAdmin}, nil)
	admin.must("invite", &im.InviteReq{Conv: g.ID, Users: []string{"mia", "max"}}, nil)
	wantErr(t, mem.call("invite", &im.InviteReq{Conv: g.ID, Users: []string{"zoe"}}, nil), rpc.CodeForbidden, "invite")
	wantErr(t, mem.call("join", &im.ConvReq{Conv: "g_nothere"}, nil), rpc.CodeForbidden, "not a member")

	// A group's history before one joined stays private.
	var h im.HistoryResp
	mem.must("history", &im.HistoryReq{Conv: g.ID}, &h)
	if len(h.Messages) != 0 {
		t.Fatalf("mia sees history from before she joined: %+v", h.Messages)
	}
	owner.send(g.ID, "", "welcome")
	mem.must("history", &im.HistoryReq{Conv: g.ID}, &h)
	if !slices.Equal(texts(h.Messages), []string{"welcome"}) || h.Messages[0].Seq != m1.Seq+1 {
		t.Fatalf("mia's history %+v", h.Messages)
	}

	var ms im.MembersResp
	mem.must("members", &im.ConvReq{Conv: g.ID}, &ms)
	roles := map[string]im.Role{}
	for _, m := range ms.Members {
		roles[m.User] = m.Role
	}
	if fmt.Sprint(roles) != "map[adam:admin max:member mia:member olga:owner]" {
		t.Fatalf("roles %v", roles)
	}
	wantErr(t, mem.call("kick", &im.UserReq{Conv: g.ID, User: "max"}, nil), rpc.CodeForbidden, "members cannot kick members")
	wantErr(t, admin.call("kick", &im.UserReq{Conv: g.ID, User: "olga"}, nil), rpc.CodeForbidden, "admins cannot kick owners")
	admin.must("kick", &im.UserReq{Conv: g.ID, User: "max"}, nil)
	// mia's device heard of everything that changed, in order.
	wantEvents := []string{"joined mia by adam", "joined max by adam", "kicked max by adam"}
	for _, w := range wantEvents {
		ev := apptest.Next(t, mem.convs)
		if got := fmt.Sprintf("%s %s by %s", ev.Type, ev.User, ev.By); got != w || ev.Conv != g.ID {
			t.Fatalf("mia's event %q, want %q", got, w)
		}
	}
	// When the owner leaves, the longest-standing admin takes over.
	owner.must("leave", &im.ConvReq{Conv: g.ID}, nil)
	for _, w := range []string{"left olga", "role adam owner"} {
		ev := apptest.Next(t, mem.convs)
		if got := strings.TrimSpace(fmt.Sprintf("%s %s %s", ev.Type, ev.User, ev.Role)); got != w {
			t.Fatalf("mia's event %q, want %q", got, w)
		}
	}
	wantErr(t, owner.call("send", &im.SendReq{Conv: g.ID, Text: "x"}, nil), rpc.CodeForbidden, "not a member")
	var v im.Conversation
	admin.must("get", &im.ConvReq{Conv: g.ID}, &v)
	if v.Role != im.RoleOwner || v.Members != 2 {
		t.Fatalf("after the owner left: %+v", v)
	}
	// Muting is per user and per conversation, shared by the user's devices.
	admin.must("mute", &im.MuteReq{Conv: g.ID, Muted: true}, nil)
	admin.must("get", &im.ConvReq{Conv: g.ID}, &v)
	if !v.Muted {
		t.Fatal("mute did not stick")
	}
	var mv im.Conversation
	mem.must("get", &im.ConvReq{Conv: g.ID}, &mv)
	if mv.Muted {
		t.Fatal("mute leaked to another member")
	}
}

func TestRestartKeepsEverything(t *testing.T) {
	cfg := apptest.Config(t) // one data dir for both runs
	n := start(t, cfg, im.Options{})
	alice, bob := login(t, n, "alice", "a1"), login(t, n, "bob", "b1")
	var d, g im.Conversation
	alice.must("direct", &im.DirectReq{User: "bob"}, &d)
	alice.must("create", &im.CreateReq{Kind: im.KindGroup, Title: "club", Members: []string{"bob", "carol"}}, &g)
	alice.send(d.ID, "d-1", "one")
	alice.send(d.ID, "d-2", "two")
	bob.send(g.ID, "g-1", "in the group")
	bob.must("read", &im.AckReq{Conv: d.ID, Seq: 2}, nil)
	bob.must("block", &im.BlockReq{User: "mallory"}, nil)
	bob.must("mute", &im.MuteReq{Conv: g.ID, Muted: true}, nil)
	bob.must("delete_for_me", &im.DeleteForMeReq{Conv: d.ID, Seqs: []uint64{1}}, nil)
	bob.offline(n)
	apptest.Stop(t, n.App)

	n = start(t, cfg, im.Options{})
	alice, bob = login(t, n, "alice", "a1"), login(t, n, "bob", "b1")
	var list im.ListResp
	bob.must("list", struct{}{}, &list)
	views := map[string]im.Conversation{}
	for _, c := range list.Conversations {
		views[c.ID] = c
	}
	if len(list.Conversations) != 2 || list.Conversations[0].LastTS < list.Conversations[1].LastTS {
		t.Fatalf("list after restart: %+v, want the latest activity first", list.Conversations)
	}
	if v := views[d.ID]; v.LastSeq != 2 || v.ReadSeq != 2 || v.Peer != "alice" {
		t.Fatalf("direct after restart: %+v", v)
	}
	if v := views[g.ID]; v.LastSeq != 1 || !v.Muted || v.Title != "club" || v.Members != 3 || v.ReadSeq != 1 {
		t.Fatalf("group after restart: %+v", v)
	}
	var h im.HistoryResp
	bob.must("history", &im.HistoryReq{Conv: d.ID}, &h)
	if !slices.Equal(texts(h.Messages), []string{"two"}) {
		t.Fatalf("bob's history after restart: %q", texts(h.Messages))
	}
	// Client ids are remembered: a resend after the restart is no duplicate.
	if r := alice.send(d.ID, "d-2", "two"); !r.Duplicate || r.Seq != 2 {
		t.Fatalf("resend after restart: %+v", r)
	}
	if r := alice.send(d.ID, "d-3", "three"); r.Seq != 3 {
		t.Fatalf("next seq after restart: %d", r.Seq)
	}
	var bl im.BlocksResp
	bob.must("blocks", struct{}{}, &bl)
	if !slices.Equal(bl.Users, []string{"mallory"}) {
		t.Fatalf("blocks after restart: %v", bl.Users)
	}
	var pr im.PresenceResp
	alice.must("presence", &im.PresenceReq{Users: []string{"carol"}}, &pr)
	if pr.Users[0].Online {
		t.Fatalf("carol never connected: %+v", pr)
	}
	wantErr(t, alice.call("direct", &im.DirectReq{User: "alice"}, nil), rpc.CodeBadRequest, "another user")
	var again im.Conversation
	alice.must("direct", &im.DirectReq{User: "bob"}, &again)
	if again.ID != d.ID {
		t.Fatalf("direct after restart made a new conversation %s, want %s", again.ID, d.ID)
	}
}

func TestLastSeenSurvivesRestart(t *testing.T) {
	cfg := apptest.Config(t)
	n := start(t, cfg, im.Options{})
	alice, bob := login(t, n, "alice", "a1"), login(t, n, "bob", "b1")
	var d im.Conversation
	alice.must("direct", &im.DirectReq{User: "bob"}, &d)
	bob.offline(n)
	off := apptest.Next(t, alice.presence)
	apptest.Stop(t, n.App)

	n = start(t, cfg, im.Options{})
	alice = login(t, n, "alice", "a1")
	var pr im.PresenceResp
	alice.must("presence", &im.PresenceReq{Users: []string{"bob"}}, &pr)
	if pr.Users[0].Online || pr.Users[0].LastSeen != off.LastSeen {
		t.Fatalf("bob's presence after restart %+v, want last seen %d", pr.Users[0], off.LastSeen)
	}
}

func TestCallsFromModulesAndSendHooks(t *testing.T) {
	m := im.New(im.Options{})
	m.OnSend(func(_ context.Context, msg *im.Message) error {
		if strings.Contains(msg.Text, "spam") {
			return errors.New("looks like spam")
		}
		if strings.Contains(msg.Text, "buy") {
			return rpc.Errorf(rpc.CodeBadRequest, "no selling here")
		}
		msg.Text = strings.ReplaceAll(msg.Text, "darn", "d*rn")
		msg.From = "someone else" // ignored: hooks change content only
		return nil
	})
	n := &node{App: apptest.Run(t, apptest.Config(t), m), im: m}
	ctx := as("bot")
	conv, err := rpc.Call[im.Conversation](ctx, n.RPC(), "im", "direct", &im.DirectReq{User: "alice"})
	if err != nil {
		t.Fatal(err)
	}
	sent, err := rpc.Call[im.SendResult](ctx, n.RPC(), "im", "send", &im.SendReq{Conv: conv.ID, Text: "darn it"})
	if err != nil || sent.Text != "d*rn it" || sent.From != "bot" {
		t.Fatalf("send = %+v, %v", sent, err)
	}
	_, err = rpc.Call[im.SendResult](ctx, n.RPC(), "im", "send", &im.SendReq{Conv: conv.ID, Text: "spam spam"})
	if !errors.Is(err, im.ErrRejected) || rpc.CodeOf(err) != rpc.CodeForbidden || !strings.Contains(err.Error(), "looks like spam") {
		t.Fatalf("spam: %v", err)
	}
	_, err = rpc.Call[im.SendResult](ctx, n.RPC(), "im", "send", &im.SendReq{Conv: conv.ID, Text: "buy now"})
	wantErr(t, err, rpc.CodeBadRequest, "no selling here")
	// Edits go through the hooks too.
	e, err := rpc.Call[im.Message](ctx, n.RPC(), "im", "edit", &im.EditReq{Conv: conv.ID, Seq: sent.Seq, Text: "darn again"})
	if err != nil || e.Text != "d*rn again" {
		t.Fatalf("edit = %+v, %v", e, err)
	}
	// Without a user there is nobody to act for.
	for _, ctx := range []context.Context{context.Background(), rpc.WithCaller(context.Background(), rpc.Caller{Module: "x"})} {
		_, err = rpc.Call[im.ListResp](ctx, n.RPC(), "im", "list", nil)
		if !errors.Is(err, im.ErrNoUser) || rpc.CodeOf(err) != rpc.CodeForbidden {
			t.Fatalf("anonymous call: %v", err)
		}
	}
	// The same for an MQTT client nobody bound to a user.
	anon := &client{t: t, id: "anon", c: apptest.V5(t, n.Addr("mqtt"), &paho.Connect{ClientID: "anon", CleanStart: true}),
		done: make(chan struct{})}
	t.Cleanup(func() { close(anon.done) })
	go anon.route()
	if codes := anon.subscribe("replies/anon"); codes[0] != 1 {
		t.Fatalf("subscribe: %v", codes)
	}
	wantErr(t, anon.call("list", struct{}{}, nil), rpc.CodeForbidden, "im needs a user")
}

func TestRetentionSweep(t *testing.T) {
	n := start(t, apptest.Config(t), im.Options{MaxMessages: 5, SendRate: -1})
	alice := login(t, n, "alice", "a1")
	var d im.Conversation
	alice.must("direct", &im.DirectReq{User: "bob"}, &d)
	for i := 1; i <= 8; i++ {
		alice.send(d.ID, fmt.Sprint("c", i), fmt.Sprint(i))
	}
	if err := n.im.Sweep(context.Background()); err != nil {
		t.Fatal(err)
	}
	var h im.HistoryResp
	alice.must("history", &im.HistoryReq{Conv: d.ID}, &h)
	if got := seqs(h.Messages); !slices.Equal(got, []uint64{4, 5, 6, 7, 8}) || h.More {
		t.Fatalf("history after sweep: %v (more %v)", got, h.More)
	}
	var v im.Conversation
	alice.must("get", &im.ConvReq{Conv: d.ID}, &v)
	if v.FirstSeq != 4 || v.LastSeq != 8 {
		t.Fatalf("after sweep: %+v", v)
	}
	var s im.SyncResp
	alice.must("sync", &im.SyncReq{Since: map[string]uint64{d.ID: 1}}, &s)
	if got := seqs(s.Conversations[0].Messages); !slices.Equal(got, []uint64{4, 5, 6, 7, 8}) {
		t.Fatalf("sync from before the kept entries: %v", got)
	}
	// A deleted message's client id is forgotten with it; a kept one's is not.
	if r := alice.send(d.ID, "c8", "8"); !r.Duplicate {
		t.Fatalf("resend of a kept message: %+v", r)
	}
	if r := alice.send(d.ID, "c1", "1"); r.Duplicate || r.Seq != 9 {
		t.Fatalf("resend of a swept message: %+v", r)
	}
}
