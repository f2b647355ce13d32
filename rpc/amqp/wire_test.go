package amqp

import (
	"encoding/json"
	"errors"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/colonymq/colony/rpc"
)

// TestWireNames pins the names Python peers rely on.
func TestWireNames(t *testing.T) {
	for got, want := range map[string]string{
		RPCExchange(DefaultPrefix):               "colony.rpc",
		PresenceExchange(DefaultPrefix):          "colony.presence",
		ModuleQueue(DefaultPrefix, "im"):         "colony.rpc.im",
		NodeQueue(DefaultPrefix, "im", "n1"):     "colony.rpc.im@n1",
		NodeKey("im", "n1"):                      "im@n1",
		ReplyTo:                                  "amq.rabbitmq.reply-to",
		HeaderFn + HeaderSrc + HeaderTrace:       "fnsrctrace",
		HeaderClientID + HeaderUserID:            "ciduid",
		HeaderUsername:                           "uname",
		HeaderErrorCode + " " + HeaderError:      "error_code error",
		ContentTypeJSON + " " + ContentTypeBytes: "application/json application/octet-stream",
	} {
		if got != want {
			t.Errorf("got %q, want %q", got, want)
		}
	}
}

// TestAnnouncementJSON pins the presence message shape.
func TestAnnouncementJSON(t *testing.T) {
	b, err := json.Marshal(Announcement{Node: "a", Modules: []string{"calc"}, Load: 2, Version: "1", BeatMS: 2000, Hello: true})
	if err != nil {
		t.Fatal(err)
	}
	const want = `{"node":"a","modules":["calc"],"load":2,"version":"1","beat_ms":2000,"hello":true}`
	if string(b) != want {
		t.Errorf("got  %s\nwant %s", b, want)
	}
	// What a minimal peer sends, with a float load and an unknown field.
	var a Announcement
	if err := json.Unmarshal([]byte(`{"node":"py","modules":["x"],"load":0.5,"pid":7}`), &a); err != nil {
		t.Fatal(err)
	}
	if a.Node != "py" || len(a.Modules) != 1 || a.Load != 0.5 || a.Bye {
		t.Errorf("decoded %+v", a)
	}
}

func TestExpiration(t *testing.T) {
	ttl, ok := expiration(time.Now().Add(1500*time.Microsecond + 10*time.Millisecond))
	if !ok || (ttl != "12" && ttl != "11") {
		t.Errorf("expiration = %q, %v; want 11.5ms rounded up", ttl, ok)
	}
	if _, ok := expiration(time.Now().Add(-time.Millisecond)); ok {
		t.Error("a past deadline gave a ttl")
	}
	for in, want := range map[string]time.Duration{"250": 250 * time.Millisecond, "0": 0} {
		if d, ok := parseExpiration(in); !ok || d != want {
			t.Errorf("parseExpiration(%q) = %v, %v", in, d, ok)
		}
	}
	for _, in := range []string{"", "-1", "soon"} {
		if _, ok := parseExpiration(in); ok {
			t.Errorf("parseExpiration(%q) accepted", in)
		}
	}
}

func TestErrorHeaders(t *testing.T) {
	h := errorHeaders(rpc.Errorf(rpc.CodeForbidden, "no"))
	if h[HeaderErrorCode] != "forbidden" || h[HeaderError] != "no" {
		t.Errorf("headers = %v", h)
	}
	// A peer that sends headers as byte arrays.
	err := replyError(amqp091.Table{HeaderErrorCode: []byte("bad_request"), HeaderError: []byte("x")})
	var re *rpc.Error
	if !errors.Is(err, rpc.ErrBadRequest) || !errors.As(err, &re) || re.Message != "x" {
		t.Errorf("replyError = %v", err)
	}
	if replyError(amqp091.Table{}) != nil {
		t.Error("a reply without error_code is an error")
	}
	var tr Transport
	tr.opts.Beat = time.Minute
	tr.peers.init()
	if !errors.Is(tr.returnError(amqp091.Return{ReplyCode: amqp091.NoRoute, RoutingKey: "m"}), rpc.ErrNotFound) {
		t.Error("NO_ROUTE for a module nobody announced is not not_found")
	}
	tr.observe(Announcement{Node: "n", Modules: []string{"m"}}, time.Now())
	for key, want := range map[string]error{"m": rpc.ErrUnavailable, "m@n": rpc.ErrUnavailable, "m@other": rpc.ErrNotFound, "x": rpc.ErrNotFound} {
		if err := tr.returnError(amqp091.Return{ReplyCode: amqp091.NoRoute, RoutingKey: key}); !errors.Is(err, want) {
			t.Errorf("NO_ROUTE for %s while n announces m: %v, want %v", key, err, want)
		}
	}
}

func TestContentType(t *testing.T) {
	for body, want := range map[string]string{`{"a":1}`: ContentTypeJSON, `"s"`: ContentTypeJSON, "\xff": ContentTypeBytes, "": ContentTypeBytes} {
		if got := contentType([]byte(body)); got != want {
			t.Errorf("contentType(%q) = %s, want %s", body, got, want)
		}
	}
}
