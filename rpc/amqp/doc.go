// Package amqp is the RabbitMQ transport of module RPC. When a module does
// not run in this process but another node (or a Python process) serves it,
// rpc.Client routes the call here, and the calling code does not change.
//
// A node creates one Transport with New, starts it, and installs it with
// rpc.Client.SetRemote. The Transport serves the modules of its
// rpc.Registry through an rpc.Local, and calls the modules other nodes
// announce. It keeps one connection: a channel for this node's calls and
// their replies, one channel per served module, and one for presence.
//
// # Wire format
//
// The format is plain AMQP 0-9-1 and JSON so that any client (pika, for
// the Python peers) can speak it. Names below use the default prefix
// "colony"; Options.Prefix replaces it everywhere. The constants and name
// functions of this package spell them out.
//
// Topology, declared by every node with these exact arguments (a peer
// declaring them differently gets PRECONDITION_FAILED):
//
//	exchange colony.rpc                 direct, durable=false, auto_delete=false
//	exchange colony.presence            fanout, durable=false, auto_delete=false
//	queue    colony.rpc.<module>        durable=false, auto_delete=true, exclusive=false, no arguments;
//	                                    bound to colony.rpc with key <module>; every node serving
//	                                    the module consumes it, so calls are load-balanced
//	queue    colony.rpc.<module>@<node> durable=false, auto_delete=true, exclusive=true;
//	                                    bound with key <module>@<node>, for calls pinned to a node
//	queue    (server-named)             exclusive, auto_delete; bound to colony.presence, one per node
//
// Nothing is durable: every node re-declares everything when it
// (re)connects, and calls are not worth keeping across a broker restart.
// The shared queue is auto-delete so that once no node serves a module, a
// call to it is unroutable and comes back at once.
//
// Request, published to colony.rpc with routing key <module> (or
// <module>@<node>) and mandatory=true:
//
//	body            the JSON argument (bytes that are not JSON pass through unchanged)
//	content_type    application/json, or application/octet-stream when the body is not valid JSON
//	correlation_id  unique per call on the calling connection
//	reply_to        amq.rabbitmq.reply-to (RabbitMQ direct reply-to); absent for a notify
//	expiration      milliseconds left until the caller's deadline, when it has one
//	headers         fn: handler name; src: calling node; trace: trace id;
//	                cid, uid, uname: client id, user id and username of the original
//	                caller, each only when known
//
// Header values are AMQP long strings (type S; byte arrays are accepted
// too). A caller without a trace id gets "<node>-<n>"; a handler's own
// calls carry on its caller's trace, identity and deadline. expiration is
// at least "1": a request that arrives past its deadline is acknowledged
// and dropped without a reply, the caller having given up already.
//
// A request no queue is bound for is returned by RabbitMQ (basic.return,
// 312 NO_ROUTE) and the caller fails at once: with unavailable while a
// node that announced the module (or the node the call was pinned to) is
// still counted alive, its queue missing only until it reconnects, and
// with not_found otherwise; expiration
// makes RabbitMQ drop a request nobody took before the caller gave up. A
// notify is published with mandatory=false and no reply_to.
//
// Reply, published by the serving node to the default exchange with
// routing key reply_to exactly as received (RabbitMQ rewrites
// amq.rabbitmq.reply-to into a per-channel name) and the request's
// correlation_id:
//
//	success  body = the JSON result, content_type as for requests
//	failure  empty body, no content_type, headers error_code: the rpc.Code ("not_found", "timeout",
//	         "bad_request", "internal", "unavailable", "canceled", "forbidden",
//	         "rate_limited"), error: the message
//
// The caller rebuilds an *rpc.Error with the same code, so errors.Is(err,
// rpc.ErrForbidden) holds across the wire; a result comes back as rpc.Raw.
//
// The serving node runs a request with a deadline of now + expiration (or
// Options.ServeTimeout when there is none) and the caller identity from
// the headers (rpc.Caller with Node = src), replies, and acknowledges the
// request only after replying. A node that dies mid-call leaves the
// request to RabbitMQ, which hands it to another node: handlers should be
// idempotent where a repeat matters.
//
// Presence: every node publishes an Announcement to colony.presence (as
// JSON, routing key empty) when it connects, every Options.Beat (default
// 2s) and when it leaves:
//
//	{"node": "a", "modules": ["calc"], "load": 0, "version": "1.2.0",
//	 "beat_ms": 2000, "hello": true, "bye": false}
//
// node and modules are required (a bye sends "modules": []); the others
// optional, and Go nodes leave hello and bye out when false. Each node
// consumes presence from its own server-named queue, bound with key "",
// exclusive and without acknowledgements. A node missing 3
// beats (of its own beat_ms, else of the receiver's Beat) is gone; "bye":
// true removes it at once. "hello": true, sent on (re)connecting, asks the
// peers to announce themselves right away rather than at their next beat;
// a peer also announces itself when it hears from a node it did not know.
//
// # Faults
//
// If RabbitMQ is down when Start runs, Start still succeeds: the transport
// reports not connected and retries in the background with a jittered
// backoff from 100ms doubling to 5s. When the connection (or any of its
// channels) fails, every pending call fails at once with unavailable, and
// the transport reconnects, re-declares, consumes again and re-announces.
// While disconnected, Call fails with unavailable at once, and Serves keeps
// reporting the modules peers announced before, so callers see unavailable
// rather than not_found.
package amqp
