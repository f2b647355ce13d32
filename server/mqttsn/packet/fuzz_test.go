package packet

import (
	"bytes"
	"errors"
	"reflect"
	"testing"
)

// FuzzDecode checks that no input panics Decode, that every error wraps
// ErrMalformed or ErrUnsupported, and that whatever decodes encodes back to
// exactly the bytes it came from. The seed corpus is in testdata/fuzz/FuzzDecode.
func FuzzDecode(f *testing.F) {
	for _, s := range samples {
		f.Add(s.wire)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := Decode(b)
		if err != nil {
			if !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrUnsupported) {
				t.Fatalf("error %v wraps neither ErrMalformed nor ErrUnsupported", err)
			}
			return
		}
		out, err := Encode(p)
		if err != nil {
			t.Fatalf("re-encode %#v: %v", p, err)
		}
		if !bytes.Equal(out, b) {
			t.Fatalf("% x decoded to %#v, which encodes to % x", b, p, out)
		}
		again, err := Decode(out)
		if err != nil || !reflect.DeepEqual(again, p) {
			t.Fatalf("second decode: %#v, %v", again, err)
		}
	})
}
