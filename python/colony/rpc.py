"""Colony module RPC over RabbitMQ, for Python peers.

This module speaks the wire format documented in the Go package
github.com/colonymq/colony/rpc/amqp (rpc/amqp/doc.go), with the same names,
declare arguments, headers and error codes, so a Peer is just one more node
of the cluster to the Go nodes:

* exchanges <prefix>.rpc (direct) and <prefix>.presence (fanout), neither
  durable nor auto-delete;
* for each served module, the shared queue <prefix>.rpc.<module> (bound with
  key <module>) and the pinned queue <prefix>.rpc.<module>@<node> (exclusive,
  bound with key <module>@<node>), both auto-delete, not durable;
* requests carry the JSON argument and the headers fn, src, trace (and cid,
  uid, uname when known); replies carry the JSON result, or an empty body
  and the headers error_code and error;
* calls use RabbitMQ direct reply-to and mandatory publishing, so a call to
  a module nobody serves fails at once with not_found (unavailable while a
  node that announced it still counts as alive: it is reconnecting);
* the node announces itself on <prefix>.presence: hello when it connects,
  every beat, and bye when it closes.

Threading: pika connections are not thread-safe, so one background thread
owns the connection and everything on it. Handlers run on a thread pool;
other threads (callers, handlers making nested calls) hand their work to
the connection thread with add_callback_threadsafe and wait for the answer.
Every public method of Peer may be called from any thread, except that a
handler must not call close().
"""

import functools
import itertools
import json
import logging
import math
import random
import threading
import time
from collections import namedtuple
from concurrent.futures import ThreadPoolExecutor

import pika
import pika.exceptions

__version__ = "0.1.0"

log = logging.getLogger("colony")

DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/"
DEFAULT_PREFIX = "colony"
REPLY_TO = "amq.rabbitmq.reply-to"
CONTENT_JSON = "application/json"
CONTENT_BYTES = "application/octet-stream"

# Error codes (rpc.Code in Go). They cross the wire in the error_code header.
NOT_FOUND = "not_found"
TIMEOUT = "timeout"
BAD_REQUEST = "bad_request"
INTERNAL = "internal"
UNAVAILABLE = "unavailable"
CANCELED = "canceled"
FORBIDDEN = "forbidden"
RATE_LIMITED = "rate_limited"

_NO_ROUTE = 312  # basic.return reply code: no queue is bound for the key
_RESOURCE_LOCKED = 405  # an exclusive queue belongs to another connection
_MISSED_BEATS = 3  # a peer silent for this many of its beats is gone
_MIN_BACKOFF, _MAX_BACKOFF = 0.1, 5.0  # reconnection backoff, seconds


class ColonyRPCError(Exception):
    """An RPC error carrying a Colony error code (NOT_FOUND, INTERNAL, ...).

    Peer.call raises it for error replies, returned (unroutable) calls,
    timeouts and lost connections. A handler raises it to answer with a code
    of its choice; any other exception a handler raises answers INTERNAL.
    """

    def __init__(self, code, message=""):
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code
        self.message = message


NodeInfo = namedtuple("NodeInfo", "node modules load version last_seen")
NodeInfo.__doc__ = """A live peer as it last announced itself.

node and version are strings, modules a sorted list, load the number of
calls it was serving, last_seen a time.monotonic() value."""


class Call:
    """What a handler knows about the request it serves.

    Attributes: module and fn (the handler), src (the calling node), trace
    (the trace id), client_id, user_id and username (the MQTT client and
    user the call started from, "" when unknown) and deadline (a
    time.monotonic() value: when the caller gives up).

    Nested calls should go through Call.call, which keeps the trace, the
    caller's identity and the deadline.
    """

    def __init__(self, peer, module, fn, headers, deadline):
        self._peer = peer
        self.module = module
        self.fn = fn
        self.src = _hstr(headers, "src")
        self.trace = _hstr(headers, "trace")
        self.client_id = _hstr(headers, "cid")
        self.user_id = _hstr(headers, "uid")
        self.username = _hstr(headers, "uname")
        self.deadline = deadline

    def remaining(self):
        """Seconds left until the caller gives up (0 when it has)."""
        return max(0.0, self.deadline - time.monotonic())

    def call(self, module, fn, arg=None, timeout=None, node=None):
        """Peer.call on behalf of this request: same trace and caller
        identity, and a timeout no later than this request's deadline."""
        left = self.remaining()
        timeout = left if timeout is None else min(timeout, left)
        return self._peer.call(module, fn, arg, timeout=timeout, node=node, within=self)


class _Waiter:
    """A call waiting for its reply."""

    def __init__(self):
        self.event = threading.Event()
        self.error = None
        self.body = None
        self.content_type = None

    def done(self, body=None, content_type=None, error=None):
        self.body, self.content_type, self.error = body, content_type, error
        self.event.set()


class _Session:
    """One connection and everything built on it. A session is never
    repaired: when it fails, the peer builds a new one from scratch."""

    def __init__(self, conn):
        self.conn = conn
        self.ch = None
        self.modules = set()  # modules served on this connection
        self.consumers = []  # tags of the serving consumers
        self.inflight = 0  # requests taken and not yet acked; guarded by Peer._lock
        self.hello = True  # until the first announcement went out
        self.timer = None  # the next beat
        self.lost = None  # set by callbacks to end the session


class Peer:
    """A Colony node in a Python process: serves handlers, calls modules.

    node is the node id, unique in the cluster; url the RabbitMQ URL;
    prefix the name prefix shared by the cluster (Go: cluster.prefix).
    beat is the presence interval in seconds; timeout the default call
    timeout; serve_timeout bounds served calls that arrive without an
    expiration; workers is the size of the handler thread pool; prefetch
    the unacknowledged requests each served queue hands this peer at once.

    Register handlers (handle or handler), then start(); call() and
    notify() work once started; close() leaves the cluster. A Peer is also
    a context manager (start on enter, close on exit). When the connection
    to RabbitMQ is lost, pending calls fail with UNAVAILABLE and the peer
    reconnects in the background (jittered backoff, 0.1s doubling to 5s).
    """

    def __init__(self, node, url=DEFAULT_URL, prefix=DEFAULT_PREFIX, *, beat=2.0, timeout=10.0,
                 serve_timeout=30.0, workers=16, prefetch=64, connect_timeout=5.0,
                 version=__version__):
        if not node or not prefix:
            raise ValueError("node id and prefix are required")
        if len(node) > 100 or len(prefix) > 50:  # queue names are at most 255 bytes
            raise ValueError("node id or prefix too long")
        self.node, self.url, self.prefix, self.version = node, url, prefix, version
        self.beat, self.timeout, self.serve_timeout = beat, timeout, serve_timeout
        self.prefetch, self.connect_timeout = prefetch, connect_timeout
        self._exchange = prefix + ".rpc"
        self._presence = prefix + ".presence"
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)  # peers changed
        self._handlers = {}  # module -> {fn: (callable, raw)}; replaced, never mutated
        self._pending = {}  # correlation id -> _Waiter
        self._peers = {}  # node id -> (NodeInfo, life in seconds)
        self._sess = None  # the current session, None while disconnected
        self._ids = itertools.count(1)
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="colony-handler")
        self._thread = None
        self._ready = threading.Event()  # the first connection attempt ended
        self._closing = threading.Event()
        self._done = threading.Event()  # the connection thread ended
        self._start_error = None
        self._grace = 10.0

    # Serving.

    def handle(self, module, fn, func, *, raw=False):
        """Serve func as handler fn of module.

        func(arg, call) gets the decoded JSON argument (None for an empty
        body; the body as bytes if raw) and a Call, and returns a JSON-able
        result (bytes are sent as they are). It runs on the thread pool.
        A module registered after start() is served from then on.
        """
        if not module or not fn:
            raise ValueError("module and handler names are required")
        with self._lock:
            fns = dict(self._handlers.get(module, {}))
            if fn in fns:
                raise ValueError(f"handler {module}.{fn} registered twice")
            fns[fn] = (func, raw)
            new = module not in self._handlers
            self._handlers = {**self._handlers, module: fns}
            sess = self._sess
        if new and sess is not None:
            self._io(sess, functools.partial(self._serve_new, sess, module))

    def handler(self, module, fn=None, *, raw=False):
        """Decorator form of handle; fn defaults to the function's name."""

        def register(func):
            self.handle(module, fn or func.__name__, func, raw=raw)
            return func

        return register

    # Lifecycle.

    def start(self):
        """Connect, declare the topology, serve the registered modules and
        announce this node. Raises ColonyRPCError(UNAVAILABLE) if RabbitMQ
        cannot be reached or refuses the topology; after a first success the
        peer reconnects by itself. Returns self."""
        if self._thread is not None or self._closing.is_set():
            raise RuntimeError("peer already started or closed")
        self._thread = threading.Thread(target=self._run, name="colony-io", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._start_error is not None:
            self._thread.join()
            self._pool.shutdown(wait=False)
            err = self._start_error
            raise ColonyRPCError(UNAVAILABLE, f"connect to rabbitmq: {err!r}") from err
        return self

    def close(self, grace=10.0):
        """Leave the cluster: announce bye, stop taking requests, give those
        being served up to grace seconds to be answered, fail pending calls
        with UNAVAILABLE and disconnect. Idempotent."""
        self._grace = grace
        self._closing.set()
        with self._lock:
            sess = self._sess
        if sess is not None:
            self._io(sess, lambda: None)  # wake the connection thread
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        self._pool.shutdown(wait=False)

    def serve_forever(self):
        """Start if needed, then serve until close() or KeyboardInterrupt;
        close on the way out."""
        if self._thread is None:
            self.start()
        try:
            while not self._done.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass
        finally:
            self.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()

    @property
    def connected(self):
        """Whether the peer holds a working connection right now."""
        return self._sess is not None

    # Calling.

    def call(self, module, fn, arg=None, timeout=None, node=None, *, within=None):
        """Call handler fn of module with arg (JSON-able, or bytes sent as
        they are) and return the decoded JSON result (bytes when the reply
        is not JSON). node pins the call to one node. within is the Call
        being served, to keep its trace and caller identity (Call.call does
        this). Raises ColonyRPCError: the serving node's code, NOT_FOUND at
        once when no node serves the module, TIMEOUT after timeout seconds
        (default self.timeout), UNAVAILABLE when disconnected."""
        if threading.current_thread() is self._thread:
            raise RuntimeError("call from the connection thread would deadlock")
        timeout = self.timeout if timeout is None else timeout
        what = f"call {module}.{fn}"
        if timeout <= 0:
            raise ColonyRPCError(TIMEOUT, f"{what}: deadline exceeded")
        body, ctype = _encode(arg, BAD_REQUEST, f"encode {module}.{fn} argument")
        cid = format(next(self._ids), "x")
        props = pika.BasicProperties(
            content_type=ctype, correlation_id=cid, reply_to=REPLY_TO,
            expiration=str(math.ceil(timeout * 1000)), headers=self._headers(fn, cid, within))
        w = _Waiter()
        with self._lock:
            sess = self._sess
            if sess is not None:
                self._pending[cid] = w
        if sess is None or not self._io(sess, functools.partial(
                self._publish, sess, cid, _key(module, node), props, body, True)):
            self._resolve(cid)
            raise ColonyRPCError(UNAVAILABLE, f"{what}: not connected to rabbitmq")
        if not w.event.wait(timeout) and self._resolve(cid):
            raise ColonyRPCError(TIMEOUT, f"{what}: deadline exceeded")
        w.event.wait()  # the reply won the race with the timeout
        if w.error is not None:
            raise w.error
        if w.content_type == CONTENT_BYTES:
            return bytes(w.body)
        if not w.body:
            return None
        try:
            return json.loads(w.body)
        except ValueError as e:
            raise ColonyRPCError(INTERNAL, f"decode {module}.{fn} result: {e}") from e

    def notify(self, module, fn, arg=None, node=None, *, within=None):
        """Send a call without waiting: no reply, and a call nobody takes is
        dropped. Raises ColonyRPCError(UNAVAILABLE) when disconnected."""
        body, ctype = _encode(arg, BAD_REQUEST, f"encode {module}.{fn} argument")
        props = pika.BasicProperties(content_type=ctype,
                                     headers=self._headers(fn, format(next(self._ids), "x"), within))
        with self._lock:
            sess = self._sess
        if sess is None or not self._io(sess, functools.partial(
                self._publish, sess, None, _key(module, node), props, body, False)):
            raise ColonyRPCError(UNAVAILABLE, f"notify {module}.{fn}: not connected to rabbitmq")

    # Presence.

    def serves(self, module):
        """Whether some other live node announced module."""
        with self._lock:
            return self._serves(module)

    def nodes(self):
        """The live peers (this node excluded), as NodeInfo sorted by id."""
        now = time.monotonic()
        with self._lock:
            return sorted((i for i, life in self._peers.values() if now - i.last_seen <= life),
                          key=lambda i: i.node)

    def wait_for(self, module, timeout=10.0):
        """Wait until another node announces module; returns whether one did."""
        with self._changed:
            return self._changed.wait_for(lambda: self._serves(module), timeout)

    def _serves(self, module):
        now = time.monotonic()
        return any(module in i.modules and now - i.last_seen <= life for i, life in self._peers.values())

    # Everything below runs on the connection thread unless it says otherwise.

    def _run(self):
        try:
            self._loop()
        finally:  # whatever happens, start() and serve_forever() must not wait forever
            self._ready.set()
            self._done.set()

    def _loop(self):
        backoff, retry = _MIN_BACKOFF, False
        while not self._closing.is_set():
            if retry:  # jittered, so peers cut off together do not return in lockstep
                self._closing.wait(random.uniform(backoff / 2, backoff))
                if self._closing.is_set():
                    break
            try:
                sess = self._connect()
            except Exception as e:  # noqa: BLE001 - any failure means: try again later
                if not self._ready.is_set():
                    self._start_error = e
                    break
                backoff, retry = min(2 * backoff, _MAX_BACKOFF), True
                log.warning("connect to rabbitmq failed, retrying: %r", e)
                continue
            backoff, retry = _MIN_BACKOFF, True
            self._ready.set()
            why = "peer closed"
            try:
                while not self._closing.is_set():
                    sess.conn.process_data_events(time_limit=1.0)
                    if sess.lost is not None:
                        raise sess.lost
                    if not sess.ch.is_open:
                        raise ConnectionError("channel closed")
                self._shutdown(sess)
            except Exception as e:  # noqa: BLE001
                why = f"connection to rabbitmq lost: {e!r}"
                if not self._closing.is_set():
                    log.warning("%s", why)
            finally:
                self._drop(sess, why)

    def _connect(self):
        params = pika.URLParameters(self.url)
        # The name shows in rabbitmqctl and the management UI, as for Go nodes.
        params.client_properties = {"connection_name": f"{self.prefix} {self.node}",
                                    "product": "colony-py", "version": __version__}
        params.socket_timeout = self.connect_timeout
        params.connection_attempts = 1
        sess = _Session(pika.BlockingConnection(params))
        try:
            ch = sess.ch = sess.conn.channel()
            ch.exchange_declare(self._exchange, "direct", durable=False, auto_delete=False)
            ch.exchange_declare(self._presence, "fanout", durable=False, auto_delete=False)
            ch.add_on_return_callback(self._on_return)
            ch.add_on_cancel_callback(functools.partial(self._on_cancel, sess))
            # Direct reply-to: consume (no-ack) before publishing, same channel.
            ch.basic_consume(REPLY_TO, self._on_reply, auto_ack=True)
            ch.basic_qos(prefetch_count=self.prefetch)  # per consumer
            with self._lock:
                modules = sorted(self._handlers)
            for m in modules:
                self._serve_module(sess, m)
            q = ch.queue_declare("", exclusive=True, auto_delete=True).method.queue
            ch.queue_bind(q, self._presence, routing_key="")
            ch.basic_consume(q, functools.partial(self._on_presence, sess), auto_ack=True, exclusive=True)
            now = time.monotonic()
            with self._lock:
                self._sess = sess
                # Peers could not reach us while we were away: fresh start.
                self._peers = {n: (i._replace(last_seen=now), life) for n, (i, life) in self._peers.items()}
                late = sorted(set(self._handlers) - sess.modules)
            for m in late:  # registered while we were connecting
                self._serve_module(sess, m)
            self._beat(sess)
        except BaseException:
            with self._lock:
                if self._sess is sess:
                    self._sess = None
            _close_quietly(sess.conn)
            raise
        log.info("connected to rabbitmq as node %s, serving %s", self.node, sorted(sess.modules))
        return sess

    def _serve_module(self, sess, module):
        ch = sess.ch
        for queue, key, exclusive in ((f"{self.prefix}.rpc.{module}", module, False),
                                      (f"{self.prefix}.rpc.{module}@{self.node}", f"{module}@{self.node}", True)):
            try:
                ch.queue_declare(queue, durable=False, exclusive=exclusive, auto_delete=True)
            except pika.exceptions.ChannelClosedByBroker as e:
                if exclusive and e.reply_code == _RESOURCE_LOCKED:
                    raise ColonyRPCError(UNAVAILABLE, f"declare queue {queue}: node id {self.node!r} "
                                                      f"may be in use by another process: {e!r}") from e
                raise
            ch.queue_bind(queue, self._exchange, routing_key=key)
            tag = f"{self.node} {queue}"
            ch.basic_consume(queue, functools.partial(self._on_request, sess, module), consumer_tag=tag)
            sess.consumers.append(tag)
        with self._lock:
            sess.modules.add(module)

    def _serve_new(self, sess, module):
        if sess is self._sess and module not in sess.modules and not self._closing.is_set():
            self._serve_module(sess, module)
            self._announce(sess)

    def _shutdown(self, sess):
        """Graceful leave: bye, cancel the serving consumers (pika requeues
        what it had not dispatched), and wait for the requests being served.
        Calls keep working meanwhile: a handler may be making one."""
        if sess.timer is not None:
            sess.conn.remove_timeout(sess.timer)
        self._announce(sess, bye=True)
        for tag in sess.consumers:
            sess.ch.basic_cancel(tag)
        end = time.monotonic() + self._grace
        while sess.inflight > 0 and time.monotonic() < end and sess.ch.is_open:
            sess.conn.process_data_events(time_limit=0.1)

    def _drop(self, sess, why):
        with self._lock:
            if self._sess is sess:
                self._sess = None
            pending, self._pending = self._pending, {}
        for w in pending.values():
            w.done(error=ColonyRPCError(UNAVAILABLE, why))
        _close_quietly(sess.conn)

    def _io(self, sess, fn):
        """Run fn on the connection thread (any thread may call this).
        Returns False when the session's connection is closed."""
        try:
            sess.conn.add_callback_threadsafe(fn)
            return True
        except pika.exceptions.AMQPError:
            return False

    def _headers(self, fn, cid, within):
        h = {"fn": fn, "src": self.node, "trace": f"{self.node}-{cid}"}
        if within is not None:
            for key, v in (("trace", within.trace), ("cid", within.client_id),
                           ("uid", within.user_id), ("uname", within.username)):
                if v:
                    h[key] = v
        return h

    def _publish(self, sess, cid, key, props, body, mandatory):
        try:
            if sess is not self._sess or not sess.ch.is_open:
                raise ConnectionError("not connected")
            sess.ch.basic_publish(self._exchange, key, body, props, mandatory=mandatory)
        except Exception as e:  # noqa: BLE001 - the session's death is handled by _run
            self._resolve(cid, error=ColonyRPCError(UNAVAILABLE, f"publish to {key!r}: {e!r}"))

    def _resolve(self, cid, body=None, content_type=None, error=None):
        """Hand a result to the pending call cid (any thread). Returns
        whether the call was still pending; done() is skipped when neither
        a result nor an error is given (the caller gave up)."""
        with self._lock:
            w = self._pending.pop(cid, None)
        if w is not None and (body is not None or error is not None):
            w.done(body, content_type, error)
        return w is not None

    def _on_reply(self, _ch, _method, props, body):
        code = _hstr(props.headers, "error_code")
        if code:
            self._resolve(props.correlation_id, error=ColonyRPCError(code, _hstr(props.headers, "error")))
        else:
            self._resolve(props.correlation_id, body=body, content_type=props.content_type)

    def _on_return(self, _ch, method, props, _body):
        if method.reply_code == _NO_ROUTE:
            # No queue for the key. If a node that announced the module (or
            # the node the call was pinned to) still counts as alive, its
            # queue is missing only until it reconnects: unavailable.
            module, _, node = method.routing_key.partition("@")
            now = time.monotonic()
            with self._lock:
                alive = any(module in i.modules and now - i.last_seen <= life and node in ("", i.node)
                            for i, life in self._peers.values())
            if alive:
                err = ColonyRPCError(UNAVAILABLE, f'no queue bound for "{method.routing_key}": '
                                                  "its node is reconnecting to rabbitmq or has just stopped")
            else:
                err = ColonyRPCError(NOT_FOUND, f'no node serves "{method.routing_key}"')
        else:
            err = ColonyRPCError(UNAVAILABLE, f'rabbitmq returned call to "{method.routing_key}": '
                                              f"{method.reply_code} {method.reply_text}")
        self._resolve(props.correlation_id, error=err)

    def _on_cancel(self, sess, frame):
        # The broker cancels a consumer whose queue was deleted; starting
        # over re-declares it.
        sess.lost = ConnectionError(f"rabbitmq cancelled consumer {frame.method.consumer_tag}")

    def _on_request(self, sess, module, ch, method, props, body):
        ttl = _parse_expiration(props.expiration)
        if props.reply_to and ttl == 0:
            ch.basic_ack(method.delivery_tag)  # expired on arrival: the caller gave up
            return
        deadline = time.monotonic() + (ttl / 1000 if ttl is not None else self.serve_timeout)
        with self._lock:
            sess.inflight += 1
        self._pool.submit(self._serve, sess, module, method.delivery_tag, props, body, deadline)

    def _serve(self, sess, module, tag, props, body, deadline):
        """Run one request on a pool thread, then reply and ack on the
        connection thread: the ack comes last, so a request whose peer dies
        mid-call goes to another node."""
        fn = _hstr(props.headers, "fn")
        call = Call(self, module, fn, props.headers, deadline)
        reply = None
        if props.reply_to and call.remaining() > 0:  # else the caller gave up: skip it
            try:
                out, ctype = _encode(self._invoke(module, fn, body, call), INTERNAL,
                                     f"encode {module}.{fn} result")
                reply = pika.BasicProperties(correlation_id=props.correlation_id, content_type=ctype), out
            except Exception as e:  # noqa: BLE001 - every failure becomes an error reply
                if not isinstance(e, ColonyRPCError):
                    log.exception("handler %s.%s failed", module, fn)
                    e = ColonyRPCError(INTERNAL, f"{type(e).__name__}: {e}")
                reply = pika.BasicProperties(correlation_id=props.correlation_id,
                                             headers={"error_code": e.code, "error": e.message}), b""
        elif not props.reply_to:  # a notify: run it, answer nothing
            try:
                self._invoke(module, fn, body, call)
            except Exception:  # noqa: BLE001
                log.exception("notify %s.%s failed", module, fn)
        if not self._io(sess, functools.partial(self._finish, sess, tag, props.reply_to, reply)):
            with self._lock:
                sess.inflight -= 1  # the connection is gone; RabbitMQ requeues the request

    def _invoke(self, module, fn, body, call):
        entry = self._handlers.get(module, {}).get(fn)
        if entry is None:
            raise ColonyRPCError(NOT_FOUND, f'module "{module}" has no handler "{fn}"')
        func, raw = entry
        if raw:
            arg = bytes(body)
        elif not body:
            arg = None
        else:
            try:
                arg = json.loads(body)
            except ValueError as e:
                raise ColonyRPCError(BAD_REQUEST, f"decode {module}.{fn} argument: {e}") from e
        return func(arg, call)

    def _finish(self, sess, tag, reply_to, reply):
        try:
            if sess.ch.is_open:
                if reply is not None:
                    sess.ch.basic_publish("", reply_to, reply[1], reply[0])
                sess.ch.basic_ack(tag)
        finally:
            with self._lock:
                sess.inflight -= 1

    def _on_presence(self, sess, _ch, _method, _props, body):
        try:
            a = json.loads(body)
            node, modules = a["node"], sorted(set(a.get("modules") or []))
        except (ValueError, TypeError, KeyError, AttributeError) as e:
            log.debug("bad presence announcement %r: %r", body, e)
            return
        if not node or node == self.node:
            return
        now = time.monotonic()
        with self._changed:
            known = self._peers.get(node)
            if a.get("bye"):
                if self._peers.pop(node, None) is not None:
                    log.info("node %s left", node)
                return
            beat = (a.get("beat_ms") or self.beat * 1000) / 1000
            info = NodeInfo(node, modules, a.get("load", 0), a.get("version", ""), now)
            self._peers[node] = (info, _MISSED_BEATS * beat)
            self._changed.notify_all()
        if known is None:
            log.info("node %s joined, serving %s", node, modules)
        if (known is None or a.get("hello")) and not self._closing.is_set():
            self._announce(sess)  # so it learns of us without waiting for a beat

    def _beat(self, sess):
        if sess is not self._sess or self._closing.is_set():
            return
        now = time.monotonic()
        with self._lock:
            gone = [n for n, (i, life) in self._peers.items() if now - i.last_seen > life]
            for n in gone:
                del self._peers[n]
        for n in gone:
            log.warning("node %s gone: missed its beats", n)
        self._announce(sess)
        sess.timer = sess.conn.call_later(self.beat, functools.partial(self._beat, sess))

    def _announce(self, sess, bye=False):
        with self._lock:
            modules, load = sorted(sess.modules), sess.inflight
        a = {"node": self.node, "modules": [] if bye else modules, "load": load, "version": self.version,
             "beat_ms": int(self.beat * 1000), "hello": sess.hello and not bye, "bye": bye}
        sess.ch.basic_publish(self._presence, "", json.dumps(a).encode(),
                              pika.BasicProperties(content_type=CONTENT_JSON))
        sess.hello = False


def _key(module, node):
    """The routing key of a call: module, or module@node when pinned."""
    return f"{module}@{node}" if node else module


def _hstr(headers, key):
    """A string header; pika decodes AMQP long strings to str, or to bytes
    when they are not UTF-8."""
    v = (headers or {}).get(key)
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    return v if isinstance(v, str) else ""


def _parse_expiration(s):
    """A per-message TTL in milliseconds, or None when absent or invalid."""
    try:
        ms = int(s)
    except (TypeError, ValueError):
        return None
    return ms if ms >= 0 else None


def _encode(v, code, what):
    """Encode a value for a body: bytes as they are, anything else as
    JSON. Returns (body, content type); Go labels a body that is not valid
    JSON application/octet-stream, and so do we."""
    if isinstance(v, (bytes, bytearray, memoryview)):
        body = bytes(v)
        try:
            json.loads(body)
            return body, CONTENT_JSON
        except ValueError:
            return body, CONTENT_BYTES
    try:
        return json.dumps(v, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode(), CONTENT_JSON
    except (TypeError, ValueError) as e:
        raise ColonyRPCError(code, f"{what}: {e}") from e


def _close_quietly(conn):
    try:
        if conn.is_open:
            conn.close()
    except Exception:  # noqa: BLE001 - already broken
        pass
