package rpc

import (
	"encoding/json"
	"errors"
	"fmt"
)

// Reply is the envelope of every answer to a client's request over MQTT
// ($rpc/<module>/<handler>): {"result": …} or {"error": {"code", "message"}}.
type Reply struct {
	Result json.RawMessage `json:"result,omitempty"`
	Error  *Error          `json:"error,omitempty"`
}

// DecodeReply decodes a reply payload: an error reply comes back as its
// *Error (errors.Is matches the code's sentinel), a result is decoded into
// v unless v is nil. A payload that is not a reply is an error wrapping
// ErrBadReply.
func DecodeReply(payload []byte, v any) error {
	var r Reply
	if err := json.Unmarshal(payload, &r); err != nil {
		return fmt.Errorf("%w: %w", ErrBadReply, err)
	}
	if r.Error != nil {
		return r.Error
	}
	if v == nil {
		return nil
	}
	if err := json.Unmarshal(r.Result, v); err != nil {
		return fmt.Errorf("%w: result: %w", ErrBadReply, err)
	}
	return nil
}

// ErrBadReply means a reply payload is not a reply envelope, or its result
// does not decode into the value asked for.
var ErrBadReply = errors.New("bad reply")
