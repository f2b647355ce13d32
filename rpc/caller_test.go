package rpc

import (
	"context"
	"testing"
)

func TestCallerRoundTrip(t *testing.T) {
	if _, ok := CallerFrom(context.Background()); ok {
		t.Error("CallerFrom(empty ctx) reported a caller")
	}
	want := Caller{ClientID: "c1", UserID: "u1", Username: "ann", Node: "n1", Module: "im"}
	ctx := WithCaller(context.Background(), want)
	got, ok := CallerFrom(ctx)
	if !ok || got != want {
		t.Errorf("CallerFrom = %+v, %v; want %+v, true", got, ok, want)
	}
	inner := WithCaller(ctx, Caller{UserID: "u2"})
	if got, _ := CallerFrom(inner); got.UserID != "u2" {
		t.Errorf("inner caller UserID = %q, want u2", got.UserID)
	}
}
