package packet

import (
	"bytes"
	"errors"
	"reflect"
	"strings"
	"testing"
)

// samples holds one message of every type, with the bytes the spec gives it.
var samples = []struct {
	p    Packet
	wire []byte
}{
	{&Advertise{GatewayID: 7, Duration: 900}, []byte{5, 0x00, 7, 0x03, 0x84}},
	{&SearchGW{Radius: 1}, []byte{3, 0x01, 1}},
	{&GWInfo{GatewayID: 7}, []byte{3, 0x02, 7}},
	{&GWInfo{GatewayID: 7, Addr: []byte{10, 0, 0, 1}}, []byte{7, 0x02, 7, 10, 0, 0, 1}},
	{&Connect{Flags: Flags{Will: true, CleanSession: true}, Duration: 60, ClientID: "dev1"}, []byte{10, 0x04, 0x0C, 0x01, 0, 60, 'd', 'e', 'v', '1'}},
	{&Connack{ReturnCode: RejectedCongestion}, []byte{3, 0x05, 1}},
	{&WillTopicReq{}, []byte{2, 0x06}},
	{&WillTopic{Flags: Flags{QoS: 1, Retain: true}, Topic: "w/t"}, []byte{6, 0x07, 0x30, 'w', '/', 't'}},
	{&WillTopic{}, []byte{2, 0x07}},
	{&WillMsgReq{}, []byte{2, 0x08}},
	{&WillMsg{Msg: []byte("gone")}, []byte{6, 0x09, 'g', 'o', 'n', 'e'}},
	{&Register{TopicID: 0, MsgID: 3, TopicName: "a/b"}, []byte{9, 0x0A, 0, 0, 0, 3, 'a', '/', 'b'}},
	{&Regack{TopicID: 1, MsgID: 3, ReturnCode: Accepted}, []byte{7, 0x0B, 0, 1, 0, 3, 0}},
	{&Publish{Flags: Flags{QoS: 2, DUP: true}, TopicID: 1, MsgID: 9, Data: []byte("hi")}, []byte{9, 0x0C, 0xC0, 0, 1, 0, 9, 'h', 'i'}},
	{&Publish{Flags: Flags{QoS: -1, TopicIDType: TopicPredefined}, TopicID: 5, Data: []byte("x")}, []byte{8, 0x0C, 0x61, 0, 5, 0, 0, 'x'}},
	{&Publish{Flags: Flags{TopicIDType: TopicShort}, TopicID: 0x6162}, []byte{7, 0x0C, 0x02, 'a', 'b', 0, 0}},
	{&Puback{TopicID: 1, MsgID: 9, ReturnCode: RejectedTopicID}, []byte{7, 0x0D, 0, 1, 0, 9, 2}},
	{&Pubcomp{MsgID: 9}, []byte{4, 0x0E, 0, 9}},
	{&Pubrec{MsgID: 9}, []byte{4, 0x0F, 0, 9}},
	{&Pubrel{MsgID: 9}, []byte{4, 0x10, 0, 9}},
	{&Subscribe{Flags: Flags{QoS: 1}, MsgID: 4, TopicName: "s/#"}, []byte{8, 0x12, 0x20, 0, 4, 's', '/', '#'}},
	{&Subscribe{Flags: Flags{TopicIDType: TopicPredefined}, MsgID: 4, TopicID: 2}, []byte{7, 0x12, 0x01, 0, 4, 0, 2}},
	{&Suback{Flags: Flags{QoS: 1}, TopicID: 0, MsgID: 4, ReturnCode: Accepted}, []byte{8, 0x13, 0x20, 0, 0, 0, 4, 0}},
	{&Unsubscribe{Flags: Flags{TopicIDType: TopicShort}, MsgID: 5, TopicID: 0x6162}, []byte{7, 0x14, 0x02, 0, 5, 'a', 'b'}},
	{&Unsuback{MsgID: 5}, []byte{4, 0x15, 0, 5}},
	{&Pingreq{}, []byte{2, 0x16}},
	{&Pingreq{ClientID: "dev1"}, []byte{6, 0x16, 'd', 'e', 'v', '1'}},
	{&Pingresp{}, []byte{2, 0x17}},
	{&Disconnect{}, []byte{2, 0x18}},
	{&Disconnect{HasDuration: true, Duration: 300}, []byte{4, 0x18, 0x01, 0x2C}},
	{&WillTopicUpd{Flags: Flags{QoS: 2}, Topic: "w"}, []byte{4, 0x1A, 0x40, 'w'}},
	{&WillTopicResp{ReturnCode: Accepted}, []byte{3, 0x1B, 0}},
	{&WillMsgUpd{Msg: []byte("z")}, []byte{3, 0x1C, 'z'}},
	{&WillMsgResp{ReturnCode: RejectedNotSupport}, []byte{3, 0x1D, 3}},
}

func TestEncodeDecodeEveryType(t *testing.T) {
	for _, s := range samples {
		got, err := Encode(s.p)
		if err != nil {
			t.Fatalf("encode %s: %v", s.p.Type(), err)
		}
		if !bytes.Equal(got, s.wire) {
			t.Errorf("encode %s = % x, want % x", s.p.Type(), got, s.wire)
		}
		p, err := Decode(s.wire)
		if err != nil {
			t.Fatalf("decode %s: %v", s.p.Type(), err)
		}
		if !reflect.DeepEqual(p, s.p) {
			t.Errorf("decode % x = %#v, want %#v", s.wire, p, s.p)
		}
	}
}

func TestLongFormLength(t *testing.T) {
	data := bytes.Repeat([]byte{'x'}, 300)
	b, err := Encode(&Publish{Flags: Flags{QoS: 1}, TopicID: 1, MsgID: 2, Data: data})
	if err != nil {
		t.Fatal(err)
	}
	if len(b) != 309 || b[0] != 0x01 || int(b[1])<<8|int(b[2]) != 309 || Type(b[3]) != TypePublish {
		t.Fatalf("long form header % x, len %d", b[:4], len(b))
	}
	p, err := Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	if got := p.(*Publish).Data; !bytes.Equal(got, data) {
		t.Fatalf("payload of %d octets back", len(got))
	}
	// 249 octets of payload makes a 256-octet message in the short form's
	// place: the boundary where the long form starts.
	b, _ = Encode(&Publish{Data: make([]byte, 249)})
	if b[0] != 0x01 || len(b) != 258 {
		t.Fatalf("256-octet message: header % x, len %d", b[:3], len(b))
	}
	b, _ = Encode(&Publish{Data: make([]byte, 248)})
	if b[0] != 255 || len(b) != 255 {
		t.Fatalf("255-octet message: header % x, len %d", b[:1], len(b))
	}
	if _, err := Encode(&Publish{Data: make([]byte, MaxLen)}); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("oversized publish: %v", err)
	}
}

func TestDecodeRejects(t *testing.T) {
	cases := map[string][]byte{
		"empty":                    {},
		"one octet":                {2},
		"length too short":         {1 + 0, 0x16},
		"length mismatch":          {5, 0x16, 'a'},
		"length beyond datagram":   {9, 0x0D, 0, 1, 0, 9, 2},
		"long form for short":      {0x01, 0, 5, 0x18, 0},
		"long form truncated":      {0x01, 1},
		"advertise short":          {4, 0x00, 1, 2},
		"connect bad protocol":     {7, 0x04, 0, 0x02, 0, 60, 'a'},
		"connect no client id":     {6, 0x04, 0, 0x01, 0, 60},
		"connect client id nul":    {7, 0x04, 0, 0x01, 0, 60, 0},
		"connect client id utf8":   {7, 0x04, 0, 0x01, 0, 60, 0xff},
		"connect client id long":   append([]byte{6 + 65, 0x04, 0, 0x01, 0, 60}, []byte(strings.Repeat("c", 65))...),
		"connack long":             {4, 0x05, 0, 0},
		"willtopicreq body":        {3, 0x06, 0},
		"willtopic flags only":     {3, 0x07, 0x20},
		"willtopic qos -1":         {4, 0x07, 0x60, 'w'},
		"register no name":         {6, 0x0A, 0, 0, 0, 1},
		"regack short":             {6, 0x0B, 0, 1, 0, 1},
		"publish reserved type":    {7, 0x0C, 0x03, 0, 1, 0, 1},
		"publish short":            {6, 0x0C, 0, 0, 1, 0},
		"puback long":              {8, 0x0D, 0, 1, 0, 9, 0, 0},
		"pubrel short":             {3, 0x10, 0},
		"subscribe no topic":       {5, 0x12, 0, 0, 1},
		"subscribe id too long":    {8, 0x12, 0x01, 0, 1, 0, 2, 3},
		"subscribe reserved":       {7, 0x12, 0x03, 0, 1, 0, 2},
		"subscribe topic utf8":     {6, 0x12, 0, 0, 1, 0xc3},
		"suback short":             {7, 0x13, 0, 0, 0, 0, 1},
		"disconnect odd":           {3, 0x18, 0},
		"disconnect long":          {5, 0x18, 0, 1, 2},
		"pingreq long client id":   append([]byte{2 + 65, 0x16}, []byte(strings.Repeat("c", 65))...),
		"unknown type":             {2, 0x03},
		"encapsulated unsupported": {4, 0xFE, 0x01, 0x01},
	}
	for name, b := range cases {
		p, err := Decode(b)
		if err == nil {
			t.Errorf("%s: decoded % x as %#v", name, b, p)
			continue
		}
		if !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrUnsupported) {
			t.Errorf("%s: error %v wraps neither ErrMalformed nor ErrUnsupported", name, err)
		}
	}
}

func TestDecodeDoesNotAlias(t *testing.T) {
	b := []byte{7, 0x0C, 0, 0, 1, 0, 0, 'x'}
	b[0] = 8
	p, err := Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	b[7] = 'y'
	if d := p.(*Publish).Data; string(d) != "x" {
		t.Fatalf("payload changed with the buffer: %q", d)
	}
}

func TestShortTopic(t *testing.T) {
	id, ok := ShortID("ab")
	if !ok || ShortTopic(id) != "ab" {
		t.Fatalf("ShortID/ShortTopic round trip: %v %q", ok, ShortTopic(id))
	}
	if _, ok := ShortID("abc"); ok {
		t.Fatal("three characters made a short topic")
	}
}
