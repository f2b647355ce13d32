package server

import (
	"errors"
	"fmt"
	"net"
	"sync"

	mqtt "github.com/mochi-mqtt/server/v2"
)

// ErrClosed is returned by ServeConn once Shutdown has begun.
var ErrClosed = errors.New("server shutting down")

// gatewayConns tracks the in-process connections of protocol gateways and
// the identities their transports vouch for.
type gatewayConns struct {
	mu     sync.Mutex
	closed bool
	wg     sync.WaitGroup
	conns  map[net.Conn]string // open connection -> vouched identity ("" for none)
}

// ServeConn serves conn, an in-process connection speaking MQTT (3.1.1 or
// 5), as a client that came in through the named listener, and returns
// when the connection ends. Protocol gateways running in this process (the
// MQTT-SN gateway) use it so that each of their devices is an ordinary
// client of the engine: authenticated, checked by the ACL and the topic
// guards, bound to a user, reachable by pushes and kicks, federated.
//
// identity, when not empty, is a name the gateway's transport has already
// authenticated, such as a DTLS PSK identity or a client certificate's
// name. The CONNECT on conn must then carry it as its username: the
// password file is not consulted, and the identity becomes the
// connection's user id, as a checked username does. Authenticators
// (AddAuthenticator) see it as ConnectInfo.Vouched and may still admit
// it with an identity of their own (its user id and confinement) or
// refuse it. With an empty
// identity the CONNECT is authenticated like any other, and anonymous
// clients are admitted by the rule of the listener's address (see
// Options.Gateways).
//
// conn must not block the engine: its Write is called with the client's
// lock held, by publishers' goroutines. The gateway closes conn to end the
// client (abruptly, or after writing a DISCONNECT). ServeConn returns
// ErrClosed once Shutdown has begun; Shutdown closes the connections still
// open and waits for every ServeConn to return, so gateways should be
// stopped first to end their clients their own way.
func (s *Server) ServeConn(listener string, conn net.Conn, identity string) error {
	g := &s.gwConns
	g.mu.Lock()
	if g.closed {
		g.mu.Unlock()
		return ErrClosed
	}
	if !s.started.Load() {
		g.mu.Unlock()
		return ErrNotStarted
	}
	g.wg.Add(1)
	if g.conns == nil {
		g.conns = map[net.Conn]string{}
	}
	g.conns[conn] = identity
	g.mu.Unlock()
	defer func() {
		g.mu.Lock()
		delete(g.conns, conn)
		g.mu.Unlock()
		g.wg.Done()
	}()
	if err := s.mq.EstablishConnection(listener, conn); err != nil {
		return fmt.Errorf("serve %s connection: %w", listener, err)
	}
	return nil
}

// vouchedIdentity returns the identity ServeConn was given for cl's connection.
func (s *Server) vouchedIdentity(cl *mqtt.Client) (string, bool) {
	if cl.Net.Conn == nil {
		return "", false
	}
	g := &s.gwConns
	g.mu.Lock()
	defer g.mu.Unlock()
	id := g.conns[cl.Net.Conn]
	return id, id != ""
}

// closeGateways refuses new gateway connections, closes the open ones
// (gateways normally have ended them already) and waits for them to end.
func (s *Server) closeGateways() {
	g := &s.gwConns
	g.mu.Lock()
	g.closed = true
	for c := range g.conns {
		if err := c.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
			s.log.Debug().Err(err).Msg("close gateway connection")
		}
	}
	g.mu.Unlock()
	g.wg.Wait()
}

// AllowsAnonymous reports whether clients without credentials may connect
// through the named listener: auth.allow_anonymous when set, else whether
// the listener (or the gateway listener of Options.Gateways) binds only
// loopback addresses.
func (s *Server) AllowsAnonymous(listener string) bool { return s.auth.anonymous(listener) }
