// Package rpc is how Colony modules call each other.
//
// A module registers typed handlers in a [Registry] with [Handle], and code
// anywhere in the node calls them through a [Client] with [Call] or [Notify].
// The Client picks a [Transport] per call: the in-process [Local] transport
// when the module runs in this process, otherwise a remote transport (AMQP)
// when another node announces the module. Module code is the same either way.
//
// On the local path arguments and results travel as Go values and are never
// encoded: the handler receives the very pointer the caller passed. Values
// that come off a wire arrive as [Raw] JSON and are decoded by the handler
// wrapper that Handle builds, so a handler never needs to know where a call
// came from.
//
// Deadlines come from the context. Errors carry a [Code] that survives the
// wire, and errors.Is matches any error against the sentinels such as
// [ErrNotFound] by code. The identity of whoever made a call travels in the
// context as a [Caller]; handlers must trust it rather than ids in payloads.
package rpc
