package server

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"runtime/debug"
	"sync"
	"time"

	"github.com/gorilla/websocket"
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/rs/zerolog"
)

// ErrAddrInUse reports that a listener could not bind because its address is taken.
var ErrAddrInUse = errors.New("address already in use")

// ListenError reports a listener that could not bind its address.
type ListenError struct {
	Listener string // "mqtt", "tls", "ws", "http"
	Addr     string
	Err      error
}

// Error names the listener, the address and the cause.
func (e *ListenError) Error() string {
	return fmt.Sprintf("listen %s on %s: %v", e.Listener, e.Addr, e.Err)
}

// Unwrap returns ErrAddrInUse for a taken port, else the cause.
func (e *ListenError) Unwrap() error { return e.Err }

// Listen binds a TCP address, reporting failures as *ListenError.
func Listen(name, addr string) (net.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		if errors.Is(err, errAddrInUseSys) {
			err = ErrAddrInUse
		}
		return nil, &ListenError{Listener: name, Addr: addr, Err: err}
	}
	return ln, nil
}

// listener is one network endpoint feeding connections into the engine. It
// implements mochi's listeners.Listener, and differs from mochi's own in three
// ways Colony needs: the socket is bound in Init (so ":0" resolves and a port
// clash fails at startup), a connection that sends no CONNECT in time is closed,
// and a panic while serving one connection is recovered and logged instead of
// killing the process.
type listener struct {
	id        string
	proto     string // "tcp", "tls", "ws"
	address   string
	tls       *tls.Config
	timeout   time.Duration // connect timeout
	log       zerolog.Logger
	onPanic   func()
	ln        net.Listener
	http      *http.Server
	establish listeners.EstablishFn                                       // set by Serve before the WebSocket server accepts
	parkable  func(listener string, c net.Conn, spawn mqtt.SpawnFn) error // the engine's EstablishParkable, if set
	upgrader  websocket.Upgrader
	conns     sync.WaitGroup
	openMu    sync.Mutex
	open      map[net.Conn]struct{} // sockets being served, CONNECT or not
	closing   chan struct{}
	once      sync.Once
}

var _ listeners.Listener = (*listener)(nil)

func newListener(id, proto, address string, tlsConf *tls.Config, connectTimeout time.Duration, log zerolog.Logger, onPanic func()) *listener {
	return &listener{
		id: id, proto: proto, address: address, tls: tlsConf, timeout: connectTimeout,
		log: log.With().Str("listener", id).Logger(), onPanic: onPanic, closing: make(chan struct{}),
		open: map[net.Conn]struct{}{},
		upgrader: websocket.Upgrader{
			Subprotocols: []string{"mqtt"},
			// MQTT over WebSocket is authenticated by the MQTT CONNECT, not by cookies,
			// so cross-origin pages are as welcome as native clients.
			CheckOrigin: func(*http.Request) bool { return true },
		},
	}
}

// ID returns the listener's name ("mqtt", "tls", "ws").
func (l *listener) ID() string { return l.id }

// Protocol returns the transport protocol of the listener.
func (l *listener) Protocol() string { return l.proto }

// Address returns the bound address once Init has run, so ":0" reads back the chosen port.
func (l *listener) Address() string {
	if l.ln != nil {
		return l.ln.Addr().String()
	}
	return l.address
}

// Init binds the socket.
func (l *listener) Init(*slog.Logger) error {
	ln, err := Listen(l.id, l.address)
	if err != nil {
		return err
	}
	if l.tls != nil {
		ln = tls.NewListener(ln, l.tls)
	}
	l.ln = ln
	if l.proto == "ws" {
		// Built here, not in Serve, because Close (another goroutine) reads it.
		mux := http.NewServeMux()
		mux.HandleFunc("/", l.serveWS)
		l.http = &http.Server{Handler: mux, ReadHeaderTimeout: l.timeout}
	}
	return nil
}

// Serve accepts connections until Close.
func (l *listener) Serve(establish listeners.EstablishFn) {
	if l.http != nil {
		l.establish = establish
		if err := l.http.Serve(l.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			l.log.Error().Err(err).Msg("websocket listener stopped")
		}
		return
	}
	for {
		conn, err := l.ln.Accept()
		if err != nil {
			select {
			case <-l.closing:
				return
			default:
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				time.Sleep(5 * time.Millisecond) // e.g. out of file descriptors: back off, keep serving
				continue
			}
			l.log.Error().Err(err).Msg("accept failed, listener stopped")
			return
		}
		l.conns.Add(1)
		go l.handle(conn, establish)
	}
}

// handle runs one connection through the engine, bounding the wait for
// CONNECT and containing any panic to this connection. The caller has
// counted the connection in l.conns. With the engine's EstablishParkable,
// the connection is served on goroutines the engine asks for (an idle one
// on none at all, see third_party/mochi/colony_park.go), each of them
// protected like this one.
func (l *listener) handle(conn net.Conn, establish listeners.EstablishFn) {
	if !l.track(conn) {
		l.conns.Done()
		return
	}
	spawn := func(fn func() error) { go l.step(conn, fn) }
	l.step(conn, func() error {
		if l.timeout > 0 {
			// The engine sets its keep-alive deadline after CONNECT; until then this
			// deadline stops idle sockets from holding a goroutine forever.
			if err := conn.SetReadDeadline(time.Now().Add(l.timeout)); err != nil {
				return err
			}
		}
		if l.parkable != nil {
			return l.parkable(l.id, conn, spawn)
		}
		return establish(l.id, conn)
	})
}

// step runs fn, one stretch of a connection's service. Unless the engine
// handed the connection on to another goroutine (mqtt.ErrParked), the
// connection has ended: step closes it and counts it done.
func (l *listener) step(conn net.Conn, fn func() error) {
	handedOn := false
	defer func() {
		if r := recover(); r != nil {
			l.log.Error().Str("remote", conn.RemoteAddr().String()).Str("panic", fmt.Sprint(r)).
				Str("stack", string(debug.Stack())).Msg("recovered panic while serving connection; connection closed")
			if l.onPanic != nil {
				l.onPanic()
			}
		} else if handedOn {
			return
		}
		if err := conn.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
			l.log.Debug().Err(err).Msg("close connection")
		}
		l.untrack(conn)
		l.conns.Done()
	}()
	err := fn()
	if errors.Is(err, mqtt.ErrParked) {
		handedOn = true
		return
	}
	if err != nil && !isQuietDisconnect(err) {
		l.log.Debug().Err(err).Str("remote", conn.RemoteAddr().String()).Msg("connection ended")
	}
}

func (l *listener) serveWS(w http.ResponseWriter, r *http.Request) {
	if !websocket.IsWebSocketUpgrade(r) {
		http.Error(w, "this endpoint speaks MQTT over WebSocket", http.StatusBadRequest)
		return
	}
	c, err := l.upgrader.Upgrade(w, r, nil)
	if err != nil {
		return // the upgrader has already answered with an HTTP error
	}
	l.conns.Add(1)
	l.handle(&wsConn{Conn: c.NetConn(), c: c}, l.establish)
}

// track registers a socket being served; false once the listener is closing.
func (l *listener) track(c net.Conn) bool {
	l.openMu.Lock()
	defer l.openMu.Unlock()
	select {
	case <-l.closing:
		if err := c.Close(); err != nil {
			l.log.Debug().Err(err).Msg("close connection")
		}
		return false
	default:
	}
	l.open[c] = struct{}{}
	return true
}

func (l *listener) untrack(c net.Conn) {
	l.openMu.Lock()
	delete(l.open, c)
	l.openMu.Unlock()
}

// Close stops accepting, lets the engine disconnect this listener's clients,
// closes sockets that never finished CONNECT, and returns once every
// connection goroutine has ended: the engine waits on its client group next,
// which must not grow while it waits.
func (l *listener) Close(closeClients listeners.CloseFn) {
	defer l.conns.Wait()
	defer func() {
		l.openMu.Lock()
		for c := range l.open {
			if err := c.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
				l.log.Debug().Err(err).Msg("close connection")
			}
		}
		l.openMu.Unlock()
	}()
	l.once.Do(func() {
		l.openMu.Lock()
		close(l.closing)
		l.openMu.Unlock()
		if l.http != nil {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			if err := l.http.Shutdown(ctx); err != nil {
				l.log.Debug().Err(err).Msg("websocket shutdown")
			}
		}
		if l.ln != nil {
			if err := l.ln.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
				l.log.Debug().Err(err).Msg("close listener")
			}
		}
	})
	closeClients(l.id)
}

func isQuietDisconnect(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed)
}

// wsConn adapts a WebSocket to the byte stream the engine reads: MQTT packets
// may span or share binary frames.
type wsConn struct {
	net.Conn
	c   *websocket.Conn
	r   io.Reader
	wmu sync.Mutex
}

var errNotBinary = errors.New("websocket frame is not binary")

func (ws *wsConn) Read(p []byte) (int, error) {
	for {
		if ws.r == nil {
			op, r, err := ws.c.NextReader()
			if err != nil {
				return 0, err
			}
			if op != websocket.BinaryMessage {
				return 0, errNotBinary
			}
			ws.r = r
		}
		n, err := ws.r.Read(p)
		if errors.Is(err, io.EOF) {
			ws.r = nil
			if n == 0 {
				continue
			}
			return n, nil
		}
		return n, err
	}
}

func (ws *wsConn) Write(p []byte) (int, error) {
	ws.wmu.Lock()
	defer ws.wmu.Unlock()
	if err := ws.c.WriteMessage(websocket.BinaryMessage, p); err != nil {
		return 0, err
	}
	return len(p), nil
}

// SetDeadline is called by the engine's reader while its writer may be
// sending; gorilla's write deadline is not safe against a concurrent write,
// hence the lock.
func (ws *wsConn) SetDeadline(t time.Time) error {
	if err := ws.c.SetReadDeadline(t); err != nil {
		return err
	}
	return ws.SetWriteDeadline(t)
}

func (ws *wsConn) SetReadDeadline(t time.Time) error { return ws.c.SetReadDeadline(t) }

func (ws *wsConn) SetWriteDeadline(t time.Time) error {
	ws.wmu.Lock()
	defer ws.wmu.Unlock()
	return ws.c.SetWriteDeadline(t)
}
