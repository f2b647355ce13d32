package im

import (
	"context"
	"testing"
	"time"

	"github.com/colonymq/colony/app"
	"github.com/colonymq/colony/app/apptest"
	"github.com/colonymq/colony/rpc"
)

// Age-based retention, with the sweep's clock moved instead of waiting.
func TestSweepByAge(t *testing.T) {
	m := New(Options{MaxAge: app.Duration(time.Hour), MaxMessages: -1})
	a := apptest.Run(t, apptest.Config(t), m)
	ctx := rpc.WithCaller(context.Background(), rpc.Caller{UserID: "alice"})
	conv, err := rpc.Call[Conversation](ctx, a.RPC(), ID, "direct", &DirectReq{User: "bob"})
	if err != nil {
		t.Fatal(err)
	}
	for _, text := range []string{"old", "older"} {
		if _, err := rpc.Call[SendResult](ctx, a.RPC(), ID, "send", &SendReq{Conv: conv.ID, ClientID: text, Text: text}); err != nil {
			t.Fatal(err)
		}
	}
	if err := m.sweepAt(ctx, time.Now().Add(30*time.Minute)); err != nil { // nothing is an hour old yet
		t.Fatal(err)
	}
	if v, _ := rpc.Call[Conversation](ctx, a.RPC(), ID, "get", &ConvReq{Conv: conv.ID}); v.FirstSeq != 1 {
		t.Fatalf("swept too early: %+v", v)
	}
	if err := m.sweepAt(ctx, time.Now().Add(2*time.Hour)); err != nil {
		t.Fatal(err)
	}
	h, err := rpc.Call[HistoryResp](ctx, a.RPC(), ID, "history", &HistoryReq{Conv: conv.ID})
	if err != nil || len(h.Messages) != 0 || h.More {
		t.Fatalf("history after sweeping everything: %+v, %v", h, err)
	}
	// Numbering goes on: a seq is never reused, even when nothing is kept.
	r, err := rpc.Call[SendResult](ctx, a.RPC(), ID, "send", &SendReq{Conv: conv.ID, ClientID: "old", Text: "new"})
	if err != nil || r.Seq != 3 || r.Duplicate {
		t.Fatalf("send after the sweep: %+v, %v", r, err)
	}
	v, err := rpc.Call[Conversation](ctx, a.RPC(), ID, "get", &ConvReq{Conv: conv.ID})
	if err != nil || v.FirstSeq != 3 || v.LastSeq != 3 {
		t.Fatalf("after the sweep and a send: %+v, %v", v, err)
	}
}
