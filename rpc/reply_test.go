package rpc

import (
	"errors"
	"testing"
)

func TestDecodeReply(t *testing.T) {
	var v struct{ N int }
	if err := DecodeReply([]byte(`{"result":{"N":3}}`), &v); err != nil || v.N != 3 {
		t.Fatalf("result: %v, %+v", err, v)
	}
	err := DecodeReply([]byte(`{"error":{"code":"not_found","message":"no module \"x\""}}`), &v)
	if !errors.Is(err, ErrNotFound) || err.Error() != `not_found: no module "x"` {
		t.Fatalf("error reply: %v", err)
	}
	if err := DecodeReply([]byte(`{"result":1}`), nil); err != nil {
		t.Fatalf("result ignored: %v", err)
	}
	for _, bad := range []string{`nope`, `{"result":"text"}`} {
		if err := DecodeReply([]byte(bad), &v); !errors.Is(err, ErrBadReply) {
			t.Errorf("%s: %v, want ErrBadReply", bad, err)
		}
	}
}
