// Package packet encodes and decodes MQTT-SN v1.2 messages, every type
// from ADVERTISE to WILLMSGRESP, one message per datagram. Decode is
// strict: the length field, the fixed size of each message, the protocol
// id, the reserved topic id type and the text of strings are all checked,
// and anything else is an error wrapping ErrMalformed, never a panic
// (FuzzDecode keeps it so). A decoded message encodes back to the same
// bytes.
package packet
