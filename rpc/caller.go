package rpc

import "context"

// Caller identifies whoever made a call. The MQTT gateway (or the remote
// transport, from the request metadata) puts it in the context; handlers
// must take identities from here and never from ids in payloads, which the
// client controls.
type Caller struct {
	ClientID string // MQTT client id, "" for calls made by server code
	UserID   string // authenticated user id, "" when anonymous
	Username string // login name the user authenticated with
	Node     string // node that sent the call: over RabbitMQ the immediate caller's, not the first hop's
	Module   string // calling module, "" when the call came from a client
}

type callerKey struct{}

// WithCaller returns a copy of ctx carrying c.
func WithCaller(ctx context.Context, c Caller) context.Context {
	return context.WithValue(ctx, callerKey{}, c)
}

// CallerFrom returns the Caller carried by ctx and whether there was one.
func CallerFrom(ctx context.Context) (Caller, bool) {
	c, ok := ctx.Value(callerKey{}).(Caller)
	return c, ok
}
