package hostile_test

import (
	"bytes"
	"testing"

	"github.com/mochi-mqtt/server/v2/packets"
)

// FuzzPacketDecode runs the engine's packet decoders (carried and patched in
// third_party/mochi) over arbitrary bodies of every packet type, as MQTT
// 3.1.1 and 5: a body decodes or fails, never panics (upstream #501 was a
// panic here), and what decodes and validates can be encoded again.
func FuzzPacketDecode(f *testing.F) {
	f.Add(byte(tSubscribe), byte(2), true, []byte{0, 1, 0, 0, 1, 'a'})        // #501
	f.Add(byte(tSubscribe), byte(2), true, []byte{0, 1, 0, 0, 1, 'a', 1})     // well-formed
	f.Add(byte(tConnect), byte(0), true, connect(connectOpts{id: "c"})[2:])   // CONNECT v5
	f.Add(byte(tConnect), byte(0), false, connect(connectOpts{level: 4})[2:]) // CONNECT 3.1.1
	f.Add(byte(tPublish), byte(2), true, publish(true, 1, 7, "a/b", []byte{0x01, 1, 0x23, 0, 3}, "hi")[2:])
	f.Add(byte(tPublish), byte(0), true, []byte{0, 3, 'a', '/', 'b', 0x05, 0x01, 0, 0x01, 1, 'x'}) // duplicate property
	f.Add(byte(tPuback), byte(0), true, []byte{0, 1, 0x10, 0})
	f.Add(byte(10), byte(2), true, []byte{0, 1, 0, 0, 1, 'a'}) // UNSUBSCRIBE
	f.Add(byte(tDisconnect), byte(0), true, []byte{0x8e, 0})
	f.Add(byte(15), byte(0), true, []byte{0x18, 0}) // AUTH
	f.Fuzz(func(t *testing.T, typ, flags byte, v5 bool, body []byte) {
		var fh packets.FixedHeader
		if fh.Decode(typ<<4|flags&0x0f) != nil {
			return
		}
		fh.Remaining = len(body)
		pk := packets.Packet{FixedHeader: fh, ProtocolVersion: 4}
		if v5 {
			pk.ProtocolVersion = 5
		}
		var err error
		valid := packets.CodeSuccess
		switch fh.Type {
		case packets.Connect:
			if err = pk.ConnectDecode(body); err == nil {
				valid = pk.ConnectValidate()
			}
		case packets.Publish:
			if err = pk.PublishDecode(body); err == nil {
				valid = pk.PublishValidate(16)
			}
		case packets.Subscribe:
			if err = pk.SubscribeDecode(body); err == nil {
				valid = pk.SubscribeValidate()
			}
		case packets.Unsubscribe:
			if err = pk.UnsubscribeDecode(body); err == nil {
				valid = pk.UnsubscribeValidate()
			}
		case packets.Auth:
			if err = pk.AuthDecode(body); err == nil {
				valid = pk.AuthValidate()
			}
		case packets.Connack:
			err = pk.ConnackDecode(body)
		case packets.Disconnect:
			err = pk.DisconnectDecode(body)
		case packets.Puback:
			err = pk.PubackDecode(body)
		case packets.Pubrec:
			err = pk.PubrecDecode(body)
		case packets.Pubrel:
			err = pk.PubrelDecode(body)
		case packets.Pubcomp:
			err = pk.PubcompDecode(body)
		case packets.Suback:
			err = pk.SubackDecode(body)
		case packets.Unsuback:
			err = pk.UnsubackDecode(body)
		default:
			return
		}
		if err != nil || valid != packets.CodeSuccess {
			return
		}
		// What the server accepted, it can write back (it echoes filters,
		// properties and packets to other clients and to the store).
		var buf bytes.Buffer
		pk.Mods.AllowResponseInfo = true
		switch fh.Type {
		case packets.Connect:
			err = pk.ConnectEncode(&buf)
		case packets.Publish:
			err = pk.PublishEncode(&buf)
		case packets.Subscribe:
			err = pk.SubscribeEncode(&buf)
		case packets.Unsubscribe:
			err = pk.UnsubscribeEncode(&buf)
		}
		_ = err // encoding may refuse (e.g. oversize); it must not panic
	})
}
