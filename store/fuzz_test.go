package store

import (
	"errors"
	"testing"

	"github.com/mochi-mqtt/server/v2/hooks/storage"
)

// FuzzDecodeRecord feeds arbitrary bytes to the record decoder for every
// record type the MQTT hook reads back from disk: a corrupt file must give
// ErrCorrupt or ErrUnknownVersion, never a panic, and what decodes must
// convert to an engine packet.
func FuzzDecodeRecord(f *testing.F) {
	for _, v := range []any{
		storage.Client{ID: "c1", Remote: "127.0.0.1:1", Listener: "mqtt", Username: []byte("u"), Clean: false},
		storage.Subscription{Client: "c1", Filter: "a/+/#", Qos: 1, Identifier: 3},
		storage.Message{ID: "m", Client: "c1", TopicName: "a/b", Payload: []byte("p"), PacketID: 7, FixedHeader: storage.Message{}.FixedHeader},
		storage.SystemInfo{},
	} {
		b, err := encode(v)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte{})
	f.Add([]byte{2, '{', '}'})
	f.Add([]byte{1, '{'})
	f.Fuzz(func(t *testing.T, data []byte) {
		check := func(err error) bool {
			if err != nil && !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrUnknownVersion) {
				t.Fatalf("decode error %v is neither ErrCorrupt nor ErrUnknownVersion", err)
			}
			return err == nil
		}
		var c storage.Client
		check(decode(data, &c))
		var s storage.Subscription
		check(decode(data, &s))
		var m storage.Message
		if check(decode(data, &m)) {
			_ = m.ToPacket()
		}
		var si storage.SystemInfo
		check(decode(data, &si))
	})
}
