package rpc

import (
	"context"
	"encoding/json"
	"errors"
	"testing"
)

type fuzzReq struct {
	Name  string            `json:"name"`
	N     int               `json:"n"`
	Tags  []string          `json:"tags"`
	Extra map[string]string `json:"extra"`
	Bin   []byte            `json:"bin"`
}

// FuzzHandlerArgument sends arbitrary request bodies (as a client's $rpc
// PUBLISH or a remote call delivers them) through a typed handler: the
// handler runs with a decoded argument or the caller gets bad_request.
func FuzzHandlerArgument(f *testing.F) {
	f.Add([]byte(`{"name":"ann","n":3,"tags":["a"],"extra":{"k":"v"},"bin":"AAE="}`))
	f.Add([]byte(`{}`))
	f.Add([]byte(`null`))
	f.Add([]byte(`{"n":"x"}`))
	f.Add([]byte(`[1,2`))
	f.Add([]byte{0xff, 0xfe})
	reg := NewRegistry()
	Handle(reg, "fz", "typed", func(_ context.Context, r *fuzzReq) (*fuzzReq, error) { return r, nil })
	Handle(reg, "fz", "raw", func(_ context.Context, r *Raw) (*Raw, error) { return r, nil })
	typed, _ := reg.Lookup("fz", "typed")
	raw, _ := reg.Lookup("fz", "raw")
	f.Fuzz(func(t *testing.T, body []byte) {
		res, err := typed(context.Background(), Raw(body))
		if err != nil {
			if CodeOf(err) != CodeBadRequest {
				t.Fatalf("code %s for an undecodable body: %v", CodeOf(err), err)
			}
		} else if _, err := Encode(res); err != nil {
			t.Fatalf("result does not encode: %v", err)
		}
		res, err = raw(context.Background(), Raw(body))
		if err != nil || string(*res.(*Raw)) != string(body) {
			t.Fatalf("raw handler changed the body: %v", err)
		}
	})
}

// FuzzErrorJSON decodes error replies as a caller reads them off the wire:
// whatever arrives becomes an *Error with some code, and survives a round trip.
func FuzzErrorJSON(f *testing.F) {
	f.Add([]byte(`{"code":"not_found","message":"no module \"x\""}`))
	f.Add([]byte(`{"code":"","message":""}`))
	f.Add([]byte(`{"code":1}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		var e Error
		if json.Unmarshal(data, &e) != nil {
			return
		}
		b, err := json.Marshal(&e)
		if err != nil {
			t.Fatal(err)
		}
		var back Error
		if err := json.Unmarshal(b, &back); err != nil || back.Code != e.Code || back.Message != e.Message {
			t.Fatalf("round trip %q -> %q: %v", data, b, err)
		}
		if !errors.Is(&e, &Error{Code: e.Code}) {
			t.Fatal("an error does not match its own code")
		}
		_ = e.Error()
		_ = AsError(&e)
	})
}
