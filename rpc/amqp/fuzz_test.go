package amqp

import (
	"testing"

	"github.com/rabbitmq/amqp091-go"

	"github.com/colonymq/colony/rpc"
)

// FuzzReplyHeaders: whatever headers a peer puts on a reply or a call (in
// any AMQP type), the error it carries and its TTL decode without a panic.
func FuzzReplyHeaders(f *testing.F) {
	f.Add("not_found", "no module \"x\"", "1500", []byte(nil))
	f.Add("", "", "", []byte("x"))
	f.Add("timeout", "late", "-1", []byte{0xff})
	f.Add("bad_request", "", "99999999999999999999", []byte(`{"a":1}`))
	f.Fuzz(func(t *testing.T, code, msg, ttl string, body []byte) {
		for _, h := range []amqp091.Table{
			{HeaderErrorCode: code, HeaderError: msg},
			{HeaderErrorCode: []byte(code), HeaderError: int32(len(msg))},
			{HeaderErrorCode: int64(len(code))},
		} {
			if err := replyError(h); err != nil {
				if rpc.AsError(err).Code == "" {
					t.Fatalf("reply error without a code from %v", h)
				}
			}
		}
		if d, ok := parseExpiration(ttl); ok && d < 0 {
			t.Fatalf("ttl %q gave negative %v", ttl, d)
		}
		switch contentType(body) {
		case ContentTypeJSON, ContentTypeBytes:
		default:
			t.Fatal("unknown content type")
		}
	})
}
