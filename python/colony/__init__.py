"""Python peers for Colony module RPC.

A Python process joins a Colony cluster as one more node: it serves module
handlers that Go nodes (and MQTT clients, through them) call, and it calls
the modules Go nodes serve. It speaks the JSON-over-AMQP wire format of the
Go package github.com/colonymq/colony/rpc/amqp (see its doc.go) through
RabbitMQ, with pika as the only dependency (Debian: python3-pika).

    from colony import Peer, ColonyRPCError

    peer = Peer("py1", url="amqp://guest:guest@127.0.0.1:5672/")

    @peer.handler("pycalc")
    def add(arg, call):
        return {"sum": arg["a"] + arg["b"]}

    peer.start()
    print(peer.call("im", "info", {}))   # a Go module
    peer.serve_forever()                 # until SIGINT (or close())
"""

from .rpc import (
    BAD_REQUEST,
    CANCELED,
    DEFAULT_PREFIX,
    DEFAULT_URL,
    FORBIDDEN,
    INTERNAL,
    NOT_FOUND,
    RATE_LIMITED,
    TIMEOUT,
    UNAVAILABLE,
    Call,
    ColonyRPCError,
    NodeInfo,
    Peer,
    __version__,
)

__all__ = [
    "BAD_REQUEST",
    "CANCELED",
    "DEFAULT_PREFIX",
    "DEFAULT_URL",
    "FORBIDDEN",
    "INTERNAL",
    "NOT_FOUND",
    "RATE_LIMITED",
    "TIMEOUT",
    "UNAVAILABLE",
    "Call",
    "ColonyRPCError",
    "NodeInfo",
    "Peer",
    "__version__",
]
