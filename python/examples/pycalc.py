#!/usr/bin/python3
"""pycalc: a Colony module written in Python.

Serve it (until SIGINT or SIGTERM) next to a Go node:

    /usr/bin/python3 python/examples/pycalc.py --amqp amqp://guest:guest@127.0.0.1:5672/

or call any module once and print one JSON line per call, {"result": ...}
or {"error_code": ..., "error": ...} (exit status 1 if any call failed):

    /usr/bin/python3 python/examples/pycalc.py --call im.info '{}' --call pycalc.add '{"a":1,"b":2}'

Handlers of module pycalc:

    add       {"a": 1, "b": 2} -> {"sum": 3, "node": "<this node>"}
    div       {"a": 1, "b": 2} -> {"quotient": 0.5}; b = 0 fails with bad_request
    boom      always fails: an exception, which callers see as internal
    describe  {"module": "im"} -> calls the Go module's info handler and
              returns {"module", "served_by", "handlers", "asked_by"}
    relay     {"module", "fn", "arg"} -> {"result": <that call's result>, "via": "<this node>"};
              errors of the nested call come back with their codes

Options default to the environment: COLONY_AMQP, COLONY_PREFIX, COLONY_NODE.
"""

import argparse
import json
import logging
import os
import signal
import socket
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from colony import BAD_REQUEST, DEFAULT_PREFIX, DEFAULT_URL, ColonyRPCError, Peer  # noqa: E402

MODULE = "pycalc"


def serve(peer):
    """Register pycalc's handlers on peer."""

    @peer.handler(MODULE)
    def add(arg, call):
        return {"sum": arg["a"] + arg["b"], "node": peer.node}

    @peer.handler(MODULE)
    def div(arg, call):
        if arg["b"] == 0:
            raise ColonyRPCError(BAD_REQUEST, "division by zero")
        return {"quotient": arg["a"] / arg["b"]}

    @peer.handler(MODULE)
    def boom(arg, call):
        raise RuntimeError("boom")

    @peer.handler(MODULE)
    def describe(arg, call):
        module = (arg or {}).get("module", "im")
        info = call.call(module, "info", {})  # a Go module's conventional info handler
        return {"module": info["module"], "served_by": info["node"],
                "handlers": len(info["handlers"]), "asked_by": peer.node}

    @peer.handler(MODULE)
    def relay(arg, call):
        # call.call keeps the trace, the original caller and the deadline.
        return {"result": call.call(arg["module"], arg["fn"], arg.get("arg")), "via": peer.node}


def main():
    p = argparse.ArgumentParser(description="pycalc, an example Colony module in Python")
    p.add_argument("--amqp", default=os.environ.get("COLONY_AMQP", DEFAULT_URL), help="RabbitMQ URL")
    p.add_argument("--prefix", default=os.environ.get("COLONY_PREFIX", DEFAULT_PREFIX),
                   help="cluster name prefix (Go: cluster.prefix)")
    p.add_argument("--node", default=os.environ.get("COLONY_NODE", f"py-{socket.gethostname()}-{os.getpid()}"),
                   help="node id, unique in the cluster")
    p.add_argument("--beat", type=float, default=2.0, help="presence interval, seconds")
    p.add_argument("--timeout", type=float, default=10.0, help="call timeout, seconds")
    p.add_argument("--call", nargs=2, action="append", metavar=("MODULE.FN", "JSON"),
                   help="call a handler and print the result instead of serving (repeatable)")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("pika").setLevel(logging.WARNING)  # one line per connection step otherwise

    peer = Peer(args.node, args.amqp, args.prefix, beat=args.beat, timeout=args.timeout)
    if args.call:
        with peer:
            failed = False
            for target, arg in args.call:
                module, _, fn = target.partition(".")
                try:
                    out = {"result": peer.call(module, fn, json.loads(arg))}
                except ColonyRPCError as e:
                    out, failed = {"error_code": e.code, "error": e.message}, True
                print(json.dumps(out), flush=True)
        return 1 if failed else 0

    serve(peer)
    # SIGTERM (systemd, docker, the Go test) leaves as gracefully as Ctrl-C.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    peer.start()
    print(f"pycalc serving as node {peer.node}", flush=True)
    peer.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
