package amqp

import (
	"context"
	"encoding/json"
	"math"
	"strconv"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/colonymq/colony/rpc"
)

// The wire names below are the contract with peers in other languages (the
// Python package speaks them with pika); changing one breaks every peer.
const (
	// DefaultPrefix starts every exchange and queue name unless
	// Options.Prefix says otherwise.
	DefaultPrefix = "colony"

	// ReplyTo is RabbitMQ's direct reply-to pseudo queue, set as the
	// reply_to of every call that expects an answer.
	ReplyTo = "amq.rabbitmq.reply-to"

	// ContentTypeJSON marks a body that is a JSON document.
	ContentTypeJSON = "application/json"
	// ContentTypeBytes marks a body that is not valid JSON (raw bytes
	// passed through unchanged).
	ContentTypeBytes = "application/octet-stream"

	// HeaderFn names the handler a request is for.
	HeaderFn = "fn"
	// HeaderSrc is the id of the node that sent a request.
	HeaderSrc = "src"
	// HeaderTrace is the trace id of a request, kept across nested calls.
	HeaderTrace = "trace"
	// HeaderClientID is the MQTT client id of the original caller.
	HeaderClientID = "cid"
	// HeaderUserID is the authenticated user id of the original caller.
	HeaderUserID = "uid"
	// HeaderUsername is the login name of the original caller.
	HeaderUsername = "uname"
	// HeaderErrorCode is the rpc.Code of a failed call, set on its reply.
	HeaderErrorCode = "error_code"
	// HeaderError is the error message of a failed call, set on its reply.
	HeaderError = "error"
)

// RPCExchange returns the name of the direct exchange requests are
// published to: "<prefix>.rpc".
func RPCExchange(prefix string) string { return prefix + ".rpc" }

// PresenceExchange returns the name of the fanout exchange nodes announce
// themselves on: "<prefix>.presence".
func PresenceExchange(prefix string) string { return prefix + ".presence" }

// ModuleQueue returns the name of the queue shared by every node serving
// module: "<prefix>.rpc.<module>". It is bound with routing key module.
func ModuleQueue(prefix, module string) string { return prefix + ".rpc." + module }

// NodeQueue returns the name of the queue for calls to module pinned to
// node: "<prefix>.rpc.<module>@<node>". It is bound with NodeKey.
func NodeQueue(prefix, module, node string) string {
	return prefix + ".rpc." + NodeKey(module, node)
}

// NodeKey returns the routing key of calls to module pinned to node:
// "<module>@<node>".
func NodeKey(module, node string) string { return module + "@" + node }

// Announcement is the JSON body of a presence message. Fields other than
// node and modules are optional for peers; unknown fields are ignored.
type Announcement struct {
	// Node is the announcing node's id.
	Node string `json:"node"`
	// Modules are the modules the node serves, sorted.
	Modules []string `json:"modules"`
	// Load is the number of calls the node is executing for its peers.
	Load float64 `json:"load"`
	// Version is the node's software version.
	Version string `json:"version,omitempty"`
	// BeatMS is the node's announcement interval in milliseconds; peers
	// consider it gone after 3 of them without an announcement. When
	// missing, a peer uses its own interval.
	BeatMS int64 `json:"beat_ms,omitempty"`
	// Bye says the node is leaving; peers forget it at once.
	Bye bool `json:"bye,omitempty"`
	// Hello says the node has just (re)joined; peers answer with their
	// own announcement so it learns of them without waiting for a beat.
	Hello bool `json:"hello,omitempty"`
}

type traceKey struct{}

// WithTrace returns a copy of ctx carrying trace id, which calls made with
// it send in their trace header. Served calls get the incoming trace id in
// their ctx, so nested calls across nodes keep one trace.
func WithTrace(ctx context.Context, id string) context.Context {
	return context.WithValue(ctx, traceKey{}, id)
}

// TraceFrom returns the trace id carried by ctx, or "".
func TraceFrom(ctx context.Context) string {
	id, _ := ctx.Value(traceKey{}).(string)
	return id
}

// headerString reads a string header. pika sends str values as AMQP long
// strings, which arrive as string, but byte arrays are accepted as well.
func headerString(h amqp091.Table, key string) string {
	switch v := h[key].(type) {
	case string:
		return v
	case []byte:
		return string(v)
	}
	return ""
}

// expiration renders the time left until deadline as a per-message TTL in
// whole milliseconds, rounded up so the message never expires before the
// caller gives up. ok is false when no time is left.
func expiration(deadline time.Time) (ttl string, ok bool) {
	left := time.Until(deadline)
	if left <= 0 {
		return "", false
	}
	ms := int64(math.Ceil(float64(left) / float64(time.Millisecond)))
	return strconv.FormatInt(ms, 10), true
}

// parseExpiration reads a per-message TTL in milliseconds.
func parseExpiration(s string) (time.Duration, bool) {
	if s == "" {
		return 0, false
	}
	ms, err := strconv.ParseInt(s, 10, 64)
	if err != nil || ms < 0 {
		return 0, false
	}
	if ms > math.MaxInt64/int64(time.Millisecond) { // beyond 292 years: as good as none
		return math.MaxInt64, true
	}
	return time.Duration(ms) * time.Millisecond, true
}

// contentType labels body: JSON unless it is not valid JSON.
func contentType(body []byte) string {
	if json.Valid(body) {
		return ContentTypeJSON
	}
	return ContentTypeBytes
}

// errorHeaders encodes err for a reply.
func errorHeaders(err error) amqp091.Table {
	e := rpc.AsError(err)
	return amqp091.Table{HeaderErrorCode: string(e.Code), HeaderError: e.Message}
}

// replyError rebuilds the error a reply carries, or returns nil when it
// carries none.
func replyError(h amqp091.Table) error {
	code := headerString(h, HeaderErrorCode)
	if code == "" {
		return nil
	}
	return &rpc.Error{Code: rpc.Code(code), Message: headerString(h, HeaderError)}
}
