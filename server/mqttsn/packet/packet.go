package packet

import (
	"encoding/binary"
	"errors"
	"fmt"
	"unicode/utf8"
)

// ErrMalformed is wrapped by every error Decode returns for bytes that are
// not a valid MQTT-SN v1.2 message; the wrapping error says what is wrong.
var ErrMalformed = errors.New("malformed mqtt-sn message")

// ErrUnsupported reports a well-framed message of a type this codec does
// not handle (0xFE, a forwarder's encapsulation, and the reserved types).
var ErrUnsupported = errors.New("unsupported mqtt-sn message type")

// ErrTooLarge reports a message that does not fit MQTT-SN's 16-bit length.
var ErrTooLarge = errors.New("mqtt-sn message too large")

// MaxLen is the largest message MQTT-SN can frame: its length field is 16 bits.
const MaxLen = 65535

// MaxClientIDLen bounds a client id. The spec says 1-23 characters, as MQTT
// 3.1 did; like MQTT 3.1.1 brokers, Colony accepts longer ones up to this.
const MaxClientIDLen = 64

// Type is an MQTT-SN message type.
type Type byte

// The message types of MQTT-SN v1.2 (section 5.2.2).
const (
	TypeAdvertise     Type = 0x00
	TypeSearchGW      Type = 0x01
	TypeGWInfo        Type = 0x02
	TypeConnect       Type = 0x04
	TypeConnack       Type = 0x05
	TypeWillTopicReq  Type = 0x06
	TypeWillTopic     Type = 0x07
	TypeWillMsgReq    Type = 0x08
	TypeWillMsg       Type = 0x09
	TypeRegister      Type = 0x0A
	TypeRegack        Type = 0x0B
	TypePublish       Type = 0x0C
	TypePuback        Type = 0x0D
	TypePubcomp       Type = 0x0E
	TypePubrec        Type = 0x0F
	TypePubrel        Type = 0x10
	TypeSubscribe     Type = 0x12
	TypeSuback        Type = 0x13
	TypeUnsubscribe   Type = 0x14
	TypeUnsuback      Type = 0x15
	TypePingreq       Type = 0x16
	TypePingresp      Type = 0x17
	TypeDisconnect    Type = 0x18
	TypeWillTopicUpd  Type = 0x1A
	TypeWillTopicResp Type = 0x1B
	TypeWillMsgUpd    Type = 0x1C
	TypeWillMsgResp   Type = 0x1D
	TypeEncapsulated  Type = 0xFE
)

var typeNames = map[Type]string{
	TypeAdvertise: "ADVERTISE", TypeSearchGW: "SEARCHGW", TypeGWInfo: "GWINFO", TypeConnect: "CONNECT",
	TypeConnack: "CONNACK", TypeWillTopicReq: "WILLTOPICREQ", TypeWillTopic: "WILLTOPIC", TypeWillMsgReq: "WILLMSGREQ",
	TypeWillMsg: "WILLMSG", TypeRegister: "REGISTER", TypeRegack: "REGACK", TypePublish: "PUBLISH", TypePuback: "PUBACK",
	TypePubcomp: "PUBCOMP", TypePubrec: "PUBREC", TypePubrel: "PUBREL", TypeSubscribe: "SUBSCRIBE", TypeSuback: "SUBACK",
	TypeUnsubscribe: "UNSUBSCRIBE", TypeUnsuback: "UNSUBACK", TypePingreq: "PINGREQ", TypePingresp: "PINGRESP",
	TypeDisconnect: "DISCONNECT", TypeWillTopicUpd: "WILLTOPICUPD", TypeWillTopicResp: "WILLTOPICRESP",
	TypeWillMsgUpd: "WILLMSGUPD", TypeWillMsgResp: "WILLMSGRESP", TypeEncapsulated: "ENCAPSULATED",
}

// String returns the spec's name of the type.
func (t Type) String() string {
	if n, ok := typeNames[t]; ok {
		return n
	}
	return fmt.Sprintf("TYPE(0x%02X)", byte(t))
}

// ReturnCode is the outcome carried by CONNACK, REGACK, PUBACK, SUBACK and the will responses.
type ReturnCode byte

// Return codes (section 5.3.10).
const (
	Accepted           ReturnCode = 0x00
	RejectedCongestion ReturnCode = 0x01
	RejectedTopicID    ReturnCode = 0x02 // invalid topic id: the client should register again
	RejectedNotSupport ReturnCode = 0x03
)

// String names the code.
func (rc ReturnCode) String() string {
	switch rc {
	case Accepted:
		return "accepted"
	case RejectedCongestion:
		return "rejected: congestion"
	case RejectedTopicID:
		return "rejected: invalid topic id"
	case RejectedNotSupport:
		return "rejected: not supported"
	}
	return fmt.Sprintf("return code 0x%02X", byte(rc))
}

// QoS is an MQTT-SN quality of service: -1 (publish without connection), 0, 1 or 2.
type QoS int8

// TopicIDType says what a message's topic field holds (flags bits 1-0).
type TopicIDType byte

// Topic id types. The fourth value (0b11) is reserved and never decodes in
// PUBLISH, SUBSCRIBE or UNSUBSCRIBE.
const (
	TopicNormal     TopicIDType = 0 // a registered topic id (PUBLISH) or a topic name (SUBSCRIBE)
	TopicPredefined TopicIDType = 1 // an id both sides know beforehand
	TopicShort      TopicIDType = 2 // a two-character topic name in the id field
	topicReserved   TopicIDType = 3
)

// Flags is the flags octet (section 5.3.4). Every bit is kept, so a
// decoded message encodes back to the same bytes.
type Flags struct {
	DUP          bool
	QoS          QoS
	Retain       bool
	Will         bool
	CleanSession bool
	TopicIDType  TopicIDType
}

func (f Flags) byte() byte {
	var b byte
	if f.DUP {
		b |= 0x80
	}
	switch f.QoS {
	case 1:
		b |= 0x20
	case 2:
		b |= 0x40
	case -1:
		b |= 0x60
	}
	if f.Retain {
		b |= 0x10
	}
	if f.Will {
		b |= 0x08
	}
	if f.CleanSession {
		b |= 0x04
	}
	return b | byte(f.TopicIDType&3)
}

func parseFlags(b byte) Flags {
	f := Flags{DUP: b&0x80 != 0, Retain: b&0x10 != 0, Will: b&0x08 != 0, CleanSession: b&0x04 != 0, TopicIDType: TopicIDType(b & 3)}
	switch (b >> 5) & 3 {
	case 1:
		f.QoS = 1
	case 2:
		f.QoS = 2
	case 3:
		f.QoS = -1
	}
	return f
}

// ShortTopic returns the two-character topic name a short topic id stands for.
func ShortTopic(id uint16) string { return string([]byte{byte(id >> 8), byte(id)}) }

// ShortID returns the topic id field for a two-character topic name.
func ShortID(name string) (uint16, bool) {
	if len(name) != 2 {
		return 0, false
	}
	return uint16(name[0])<<8 | uint16(name[1]), true
}

// Packet is one MQTT-SN message. The concrete types are the pointer types
// of this package (*Connect, *Publish, …).
type Packet interface {
	// Type returns the message type.
	Type() Type
	appendBody(b []byte) []byte
}

// Messages without a variable part.
type (
	// WillTopicReq asks a connecting client for its will topic.
	WillTopicReq struct{}
	// WillMsgReq asks a connecting client for its will message.
	WillMsgReq struct{}
	// Pingresp answers a PINGREQ; to a sleeping client it also means "nothing more buffered".
	Pingresp struct{}
)

// Advertise is broadcast by a gateway every Duration seconds.
type Advertise struct {
	GatewayID uint8
	Duration  uint16 // seconds until the next ADVERTISE
}

// SearchGW is broadcast by a client looking for a gateway.
type SearchGW struct{ Radius uint8 }

// GWInfo answers SEARCHGW. Addr is set only when a client answers on a gateway's behalf.
type GWInfo struct {
	GatewayID uint8
	Addr      []byte
}

// Connect opens a session. Flags.Will asks for the will flow,
// Flags.CleanSession discards the previous session.
type Connect struct {
	Flags    Flags
	Duration uint16 // keep-alive, seconds
	ClientID string
}

// Connack answers CONNECT.
type Connack struct{ ReturnCode ReturnCode }

// WillTopic carries the will topic; an empty Topic (a two-octet message) deletes the will.
type WillTopic struct {
	Flags Flags // QoS and Retain of the will
	Topic string
}

// WillMsg carries the will payload.
type WillMsg struct{ Msg []byte }

// Register binds a topic name to an id (client to gateway: TopicID is 0 and the gateway assigns it).
type Register struct {
	TopicID   uint16
	MsgID     uint16
	TopicName string
}

// Regack answers REGISTER.
type Regack struct {
	TopicID    uint16
	MsgID      uint16
	ReturnCode ReturnCode
}

// Publish carries an application message. The topic is TopicID read as Flags.TopicIDType says.
type Publish struct {
	Flags   Flags
	TopicID uint16
	MsgID   uint16
	Data    []byte
}

// Puback acknowledges a QoS 1 PUBLISH or refuses any PUBLISH (ReturnCode).
type Puback struct {
	TopicID    uint16
	MsgID      uint16
	ReturnCode ReturnCode
}

// Pubrec is the first answer to a QoS 2 PUBLISH.
type Pubrec struct{ MsgID uint16 }

// Pubrel answers PUBREC.
type Pubrel struct{ MsgID uint16 }

// Pubcomp answers PUBREL and ends a QoS 2 exchange.
type Pubcomp struct{ MsgID uint16 }

// Subscribe asks for messages on TopicName (TopicNormal, wildcards allowed) or TopicID (predefined or short).
type Subscribe struct {
	Flags     Flags
	MsgID     uint16
	TopicName string // when Flags.TopicIDType is TopicNormal
	TopicID   uint16 // otherwise
}

// Suback answers SUBSCRIBE: granted QoS in Flags, the topic id for a name without wildcards.
type Suback struct {
	Flags      Flags
	TopicID    uint16
	MsgID      uint16
	ReturnCode ReturnCode
}

// Unsubscribe ends a subscription; the topic is given as in Subscribe.
type Unsubscribe struct {
	Flags     Flags
	MsgID     uint16
	TopicName string
	TopicID   uint16
}

// Unsuback answers UNSUBSCRIBE.
type Unsuback struct{ MsgID uint16 }

// Pingreq keeps a session alive; with ClientID it wakes a sleeping client up.
type Pingreq struct{ ClientID string }

// Disconnect ends a session, or with HasDuration puts the client to sleep for Duration seconds.
type Disconnect struct {
	HasDuration bool
	Duration    uint16
}

// WillTopicUpd replaces the will topic; an empty Topic deletes the will.
type WillTopicUpd struct {
	Flags Flags
	Topic string
}

// WillTopicResp answers WILLTOPICUPD.
type WillTopicResp struct{ ReturnCode ReturnCode }

// WillMsgUpd replaces the will payload.
type WillMsgUpd struct{ Msg []byte }

// WillMsgResp answers WILLMSGUPD.
type WillMsgResp struct{ ReturnCode ReturnCode }

// Type methods.
func (*Advertise) Type() Type     { return TypeAdvertise }
func (*SearchGW) Type() Type      { return TypeSearchGW }
func (*GWInfo) Type() Type        { return TypeGWInfo }
func (*Connect) Type() Type       { return TypeConnect }
func (*Connack) Type() Type       { return TypeConnack }
func (*WillTopicReq) Type() Type  { return TypeWillTopicReq }
func (*WillTopic) Type() Type     { return TypeWillTopic }
func (*WillMsgReq) Type() Type    { return TypeWillMsgReq }
func (*WillMsg) Type() Type       { return TypeWillMsg }
func (*Register) Type() Type      { return TypeRegister }
func (*Regack) Type() Type        { return TypeRegack }
func (*Publish) Type() Type       { return TypePublish }
func (*Puback) Type() Type        { return TypePuback }
func (*Pubrec) Type() Type        { return TypePubrec }
func (*Pubrel) Type() Type        { return TypePubrel }
func (*Pubcomp) Type() Type       { return TypePubcomp }
func (*Subscribe) Type() Type     { return TypeSubscribe }
func (*Suback) Type() Type        { return TypeSuback }
func (*Unsubscribe) Type() Type   { return TypeUnsubscribe }
func (*Unsuback) Type() Type      { return TypeUnsuback }
func (*Pingreq) Type() Type       { return TypePingreq }
func (*Pingresp) Type() Type      { return TypePingresp }
func (*Disconnect) Type() Type    { return TypeDisconnect }
func (*WillTopicUpd) Type() Type  { return TypeWillTopicUpd }
func (*WillTopicResp) Type() Type { return TypeWillTopicResp }
func (*WillMsgUpd) Type() Type    { return TypeWillMsgUpd }
func (*WillMsgResp) Type() Type   { return TypeWillMsgResp }

func u16(b []byte, v uint16) []byte { return binary.BigEndian.AppendUint16(b, v) }

func (p *Advertise) appendBody(b []byte) []byte { return u16(append(b, p.GatewayID), p.Duration) }
func (p *SearchGW) appendBody(b []byte) []byte  { return append(b, p.Radius) }
func (p *GWInfo) appendBody(b []byte) []byte    { return append(append(b, p.GatewayID), p.Addr...) }
func (p *Connect) appendBody(b []byte) []byte {
	return append(u16(append(b, p.Flags.byte(), 0x01), p.Duration), p.ClientID...)
}
func (p *Connack) appendBody(b []byte) []byte      { return append(b, byte(p.ReturnCode)) }
func (*WillTopicReq) appendBody(b []byte) []byte   { return b }
func (*WillMsgReq) appendBody(b []byte) []byte     { return b }
func (*Pingresp) appendBody(b []byte) []byte       { return b }
func (p *WillTopic) appendBody(b []byte) []byte    { return appendWillTopic(b, p.Flags, p.Topic) }
func (p *WillTopicUpd) appendBody(b []byte) []byte { return appendWillTopic(b, p.Flags, p.Topic) }
func appendWillTopic(b []byte, f Flags, topic string) []byte {
	if topic == "" {
		return b
	}
	return append(append(b, f.byte()), topic...)
}
func (p *WillMsg) appendBody(b []byte) []byte    { return append(b, p.Msg...) }
func (p *WillMsgUpd) appendBody(b []byte) []byte { return append(b, p.Msg...) }
func (p *Register) appendBody(b []byte) []byte {
	return append(u16(u16(b, p.TopicID), p.MsgID), p.TopicName...)
}
func (p *Regack) appendBody(b []byte) []byte {
	return append(u16(u16(b, p.TopicID), p.MsgID), byte(p.ReturnCode))
}
func (p *Publish) appendBody(b []byte) []byte {
	return append(u16(u16(append(b, p.Flags.byte()), p.TopicID), p.MsgID), p.Data...)
}
func (p *Puback) appendBody(b []byte) []byte {
	return append(u16(u16(b, p.TopicID), p.MsgID), byte(p.ReturnCode))
}
func (p *Pubrec) appendBody(b []byte) []byte  { return u16(b, p.MsgID) }
func (p *Pubrel) appendBody(b []byte) []byte  { return u16(b, p.MsgID) }
func (p *Pubcomp) appendBody(b []byte) []byte { return u16(b, p.MsgID) }
func (p *Subscribe) appendBody(b []byte) []byte {
	return appendTopic(u16(append(b, p.Flags.byte()), p.MsgID), p.Flags, p.TopicName, p.TopicID)
}
func (p *Unsubscribe) appendBody(b []byte) []byte {
	return appendTopic(u16(append(b, p.Flags.byte()), p.MsgID), p.Flags, p.TopicName, p.TopicID)
}
func appendTopic(b []byte, f Flags, name string, id uint16) []byte {
	if f.TopicIDType == TopicNormal {
		return append(b, name...)
	}
	return u16(b, id)
}
func (p *Suback) appendBody(b []byte) []byte {
	return append(u16(u16(append(b, p.Flags.byte()), p.TopicID), p.MsgID), byte(p.ReturnCode))
}
func (p *Unsuback) appendBody(b []byte) []byte { return u16(b, p.MsgID) }
func (p *Pingreq) appendBody(b []byte) []byte  { return append(b, p.ClientID...) }
func (p *Disconnect) appendBody(b []byte) []byte {
	if !p.HasDuration {
		return b
	}
	return u16(b, p.Duration)
}
func (p *WillTopicResp) appendBody(b []byte) []byte { return append(b, byte(p.ReturnCode)) }
func (p *WillMsgResp) appendBody(b []byte) []byte   { return append(b, byte(p.ReturnCode)) }

// Append encodes p after dst. Lengths of 256 octets and more take the
// three-octet length form, shorter ones the one-octet form, as the spec
// requires. It returns ErrTooLarge for a message over MaxLen.
func Append(dst []byte, p Packet) ([]byte, error) {
	start := len(dst)
	dst = append(dst, 0, byte(p.Type()))
	dst = p.appendBody(dst)
	n := len(dst) - start
	if n < 256 {
		dst[start] = byte(n)
		return dst, nil
	}
	n += 2
	if n > MaxLen {
		return dst[:start], fmt.Errorf("%s of %d octets: %w", p.Type(), n, ErrTooLarge)
	}
	dst = append(dst, 0, 0)
	copy(dst[start+3:], dst[start+1:len(dst)-2])
	dst[start] = 0x01
	binary.BigEndian.PutUint16(dst[start+1:], uint16(n))
	return dst, nil
}

// Encode returns p's encoding.
func Encode(p Packet) ([]byte, error) { return Append(nil, p) }

// Decode parses one datagram holding exactly one message. Every field is
// checked against the spec: the length field must equal the datagram's
// length (and use the short form below 256 octets), each type must have
// its fixed fields and nothing more, strings must be UTF-8 without NUL,
// topic id types must not be the reserved value. Errors wrap ErrMalformed
// or ErrUnsupported. The result does not reference b.
func Decode(b []byte) (Packet, error) {
	if len(b) < 2 {
		return nil, malformed("datagram of %d octets is shorter than any message", len(b))
	}
	hdr := 1
	n := int(b[0])
	if b[0] == 0x01 {
		if len(b) < 4 {
			return nil, malformed("three-octet length field truncated")
		}
		n = int(binary.BigEndian.Uint16(b[1:3]))
		hdr = 3
		if n < 256 {
			return nil, malformed("three-octet length form for a %d-octet message", n)
		}
	} else if n < 2 {
		return nil, malformed("length field %d", n)
	}
	if n != len(b) {
		return nil, malformed("length field says %d octets, datagram has %d", n, len(b))
	}
	t := Type(b[hdr])
	body := b[hdr+1:]
	p, err := decodeBody(t, body)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", t, err)
	}
	return p, nil
}

func malformed(format string, args ...any) error {
	return fmt.Errorf(format+": %w", append(args, ErrMalformed)...)
}

func exact(body []byte, n int) error {
	if len(body) != n {
		return malformed("body of %d octets, want %d", len(body), n)
	}
	return nil
}

func atLeast(body []byte, n int) error {
	if len(body) < n {
		return malformed("body of %d octets, want at least %d", len(body), n)
	}
	return nil
}

func be16(b []byte) uint16 { return binary.BigEndian.Uint16(b) }

// text checks an MQTT string: UTF-8 without U+0000.
func text(b []byte, what string) (string, error) {
	if !utf8.Valid(b) {
		return "", malformed("%s is not UTF-8", what)
	}
	for _, c := range b {
		if c == 0 {
			return "", malformed("%s holds U+0000", what)
		}
	}
	return string(b), nil
}

func clone(b []byte) []byte {
	if len(b) == 0 {
		return nil
	}
	return append([]byte(nil), b...)
}

func topicType(f Flags) error {
	if f.TopicIDType == topicReserved {
		return malformed("reserved topic id type 0b11")
	}
	return nil
}

func decodeBody(t Type, body []byte) (Packet, error) {
	switch t {
	case TypeAdvertise:
		if err := exact(body, 3); err != nil {
			return nil, err
		}
		return &Advertise{GatewayID: body[0], Duration: be16(body[1:])}, nil
	case TypeSearchGW:
		if err := exact(body, 1); err != nil {
			return nil, err
		}
		return &SearchGW{Radius: body[0]}, nil
	case TypeGWInfo:
		if err := atLeast(body, 1); err != nil {
			return nil, err
		}
		return &GWInfo{GatewayID: body[0], Addr: clone(body[1:])}, nil
	case TypeConnect:
		if err := atLeast(body, 5); err != nil {
			return nil, malformed("client id missing: %w", err)
		}
		if body[1] != 0x01 {
			return nil, malformed("protocol id 0x%02X, want 0x01", body[1])
		}
		id := body[4:]
		if len(id) > MaxClientIDLen {
			return nil, malformed("client id of %d octets, at most %d", len(id), MaxClientIDLen)
		}
		cid, err := text(id, "client id")
		if err != nil {
			return nil, err
		}
		return &Connect{Flags: parseFlags(body[0]), Duration: be16(body[2:]), ClientID: cid}, nil
	case TypeConnack, TypeWillTopicResp, TypeWillMsgResp:
		if err := exact(body, 1); err != nil {
			return nil, err
		}
		rc := ReturnCode(body[0])
		switch t {
		case TypeConnack:
			return &Connack{ReturnCode: rc}, nil
		case TypeWillTopicResp:
			return &WillTopicResp{ReturnCode: rc}, nil
		}
		return &WillMsgResp{ReturnCode: rc}, nil
	case TypeWillTopicReq, TypeWillMsgReq, TypePingresp:
		if err := exact(body, 0); err != nil {
			return nil, err
		}
		switch t {
		case TypeWillTopicReq:
			return &WillTopicReq{}, nil
		case TypeWillMsgReq:
			return &WillMsgReq{}, nil
		}
		return &Pingresp{}, nil
	case TypeWillTopic, TypeWillTopicUpd:
		var f Flags
		var topic string
		switch len(body) {
		case 0: // empty: delete the will
		case 1:
			return nil, malformed("flags without a will topic")
		default:
			var err error
			if topic, err = text(body[1:], "will topic"); err != nil {
				return nil, err
			}
			f = parseFlags(body[0])
			if f.QoS < 0 {
				return nil, malformed("will qos -1")
			}
		}
		if t == TypeWillTopic {
			return &WillTopic{Flags: f, Topic: topic}, nil
		}
		return &WillTopicUpd{Flags: f, Topic: topic}, nil
	case TypeWillMsg:
		return &WillMsg{Msg: clone(body)}, nil
	case TypeWillMsgUpd:
		return &WillMsgUpd{Msg: clone(body)}, nil
	case TypeRegister:
		if err := atLeast(body, 5); err != nil {
			return nil, malformed("topic name missing: %w", err)
		}
		name, err := text(body[4:], "topic name")
		if err != nil {
			return nil, err
		}
		return &Register{TopicID: be16(body), MsgID: be16(body[2:]), TopicName: name}, nil
	case TypeRegack, TypePuback:
		if err := exact(body, 5); err != nil {
			return nil, err
		}
		if t == TypeRegack {
			return &Regack{TopicID: be16(body), MsgID: be16(body[2:]), ReturnCode: ReturnCode(body[4])}, nil
		}
		return &Puback{TopicID: be16(body), MsgID: be16(body[2:]), ReturnCode: ReturnCode(body[4])}, nil
	case TypePublish:
		if err := atLeast(body, 5); err != nil {
			return nil, err
		}
		f := parseFlags(body[0])
		if err := topicType(f); err != nil {
			return nil, err
		}
		return &Publish{Flags: f, TopicID: be16(body[1:]), MsgID: be16(body[3:]), Data: clone(body[5:])}, nil
	case TypePubrec, TypePubrel, TypePubcomp, TypeUnsuback:
		if err := exact(body, 2); err != nil {
			return nil, err
		}
		id := be16(body)
		switch t {
		case TypePubrec:
			return &Pubrec{MsgID: id}, nil
		case TypePubrel:
			return &Pubrel{MsgID: id}, nil
		case TypePubcomp:
			return &Pubcomp{MsgID: id}, nil
		}
		return &Unsuback{MsgID: id}, nil
	case TypeSubscribe, TypeUnsubscribe:
		if err := atLeast(body, 4); err != nil {
			return nil, malformed("topic missing: %w", err)
		}
		f := parseFlags(body[0])
		if err := topicType(f); err != nil {
			return nil, err
		}
		msgID := be16(body[1:])
		var name string
		var id uint16
		if f.TopicIDType == TopicNormal {
			var err error
			if name, err = text(body[3:], "topic name"); err != nil {
				return nil, err
			}
		} else {
			if err := exact(body, 5); err != nil {
				return nil, malformed("topic id field: %w", err)
			}
			id = be16(body[3:])
		}
		if t == TypeSubscribe {
			return &Subscribe{Flags: f, MsgID: msgID, TopicName: name, TopicID: id}, nil
		}
		return &Unsubscribe{Flags: f, MsgID: msgID, TopicName: name, TopicID: id}, nil
	case TypeSuback:
		if err := exact(body, 6); err != nil {
			return nil, err
		}
		return &Suback{Flags: parseFlags(body[0]), TopicID: be16(body[1:]), MsgID: be16(body[3:]), ReturnCode: ReturnCode(body[5])}, nil
	case TypePingreq:
		if len(body) > MaxClientIDLen {
			return nil, malformed("client id of %d octets, at most %d", len(body), MaxClientIDLen)
		}
		cid, err := text(body, "client id")
		if err != nil {
			return nil, err
		}
		return &Pingreq{ClientID: cid}, nil
	case TypeDisconnect:
		switch len(body) {
		case 0:
			return &Disconnect{}, nil
		case 2:
			return &Disconnect{HasDuration: true, Duration: be16(body)}, nil
		}
		return nil, malformed("body of %d octets, want 0 or 2", len(body))
	}
	return nil, ErrUnsupported
}
