package store

import (
	"errors"
	"testing"
)

func TestCodecRoundTrip(t *testing.T) {
	type rec struct {
		Name string
		Data []byte
		N    int
	}
	in := rec{Name: "a<b>", Data: []byte{0, 1, 2}, N: 7}
	b, err := encode(in)
	if err != nil {
		t.Fatal(err)
	}
	if b[0] != formatVersion {
		t.Fatalf("version byte = %d", b[0])
	}
	var out rec
	if err := decode(b, &out); err != nil {
		t.Fatal(err)
	}
	if out.Name != in.Name || string(out.Data) != string(in.Data) || out.N != in.N {
		t.Fatalf("round trip = %+v, want %+v", out, in)
	}
}

func TestCodecRejects(t *testing.T) {
	var v map[string]int
	cases := []struct {
		name string
		data []byte
		want error
	}{
		{"empty", nil, ErrCorrupt},
		{"version", []byte{9, '{', '}'}, ErrUnknownVersion},
		{"json", []byte{formatVersion, '{'}, ErrCorrupt},
	}
	for _, c := range cases {
		if err := decode(c.data, &v); !errors.Is(err, c.want) {
			t.Errorf("%s: %v, want %v", c.name, err, c.want)
		}
	}
	if _, err := encode(func() {}); err == nil {
		t.Error("encode accepted a func")
	}
}
