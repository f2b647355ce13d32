package server

import (
	"crypto/tls"
	"crypto/x509"
	"sync"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// ConnectInfo is what an Authenticator learns of a CONNECT.
type ConnectInfo struct {
	ClientID        string
	Username        string
	Password        []byte
	Listener        string // ListenerMQTT, ListenerTLS, ListenerWS, or a gateway's own name
	Remote          string
	ProtocolVersion byte // 3, 4 (3.1.1) or 5
	// Certificates is the client's certificate chain as presented on the
	// TLS listener, leaf first. It is set only when the server verified
	// it against tls.client_ca_file, so the leaf's subject can be trusted;
	// or, for a gateway's client (Vouched), when the gateway's transport
	// verified it against its own CA (CertifiedConn).
	Certificates []*x509.Certificate
	// Vouched is the identity a protocol gateway's transport has already
	// authenticated for this connection (Server.ServeConn: an MQTT-SN
	// device's DTLS PSK identity or certificate name); empty for every
	// other client. Username equals it and there is no password. An
	// authenticator that knows the name may Allow it without credentials
	// (to confine it and choose its user id) or Deny it; one that does not
	// should Pass, and the client is then admitted as the transport
	// vouched, held to the ACL file with the name as its user.
	Vouched string
}

// CertifiedConn is implemented by the connection a protocol gateway
// hands to Server.ServeConn when its transport verified the client's
// certificate chain against a CA (the MQTT-SN gateway's DTLS with
// client_ca_file): authenticators then see the chain in
// ConnectInfo.Certificates, as for the TLS listener.
type CertifiedConn interface {
	// VerifiedCertificates returns the verified chain, leaf first; nil
	// when the client presented none (e.g. a PSK).
	VerifiedCertificates() []*x509.Certificate
}

// Verdict is an Authenticator's answer to a CONNECT.
type Verdict int

// Verdicts of an Authenticator.
const (
	// Pass means the client is not this authenticator's to decide: the
	// next authenticator is asked, then the password file and the
	// anonymous rule, as if there were no authenticator.
	Pass Verdict = iota
	// Allow admits the client with the returned Identity.
	Allow
	// Deny refuses the client (CONNACK "not authorized"); nothing else is asked.
	Deny
)

// Identity is what an Authenticator vouches for when it admits a client.
type Identity struct {
	// UserID is the user id the connection is bound to (as with
	// BindUser) once its session is established; it stands for %u in
	// topic guards and reaches module handlers as rpc.Caller.UserID.
	// Empty: the connection is not bound.
	UserID string
	// Access, when set, decides alone which topics the client may
	// publish to (write) and subscribe to or receive from (read): the
	// ACL file is not consulted for it. Reserved topics and topic guards
	// still apply. It runs on hot paths (every publish and delivery) and
	// must be quick and safe for concurrent use. Nil: the client is held
	// to the ACL file like any other.
	Access func(topic string, write bool) bool
}

// Authenticator admits clients by credentials the server does not hold
// itself, such as a module's device tokens or client certificates. Add
// one with Server.AddAuthenticator.
//
// Authenticate runs on the connecting client's goroutine, during CONNECT
// and before the password file is consulted (for a gateway's client
// whose transport vouched for it, see ConnectInfo.Vouched, instead of
// admitting it outright); authenticators are asked in
// the order they were added until one answers Allow or Deny. It may read
// a store but should not take long, since the client waits, and it must
// be safe for concurrent use.
type Authenticator interface {
	Authenticate(info *ConnectInfo) (Verdict, Identity)
}

// AuthenticatorFunc adapts a function to Authenticator.
type AuthenticatorFunc func(info *ConnectInfo) (Verdict, Identity)

// Authenticate calls f.
func (f AuthenticatorFunc) Authenticate(info *ConnectInfo) (Verdict, Identity) { return f(info) }

// AddAuthenticator adds a to the authenticators consulted on every
// CONNECT, after those added before it. Modules usually call it in Init,
// before clients can connect; it is safe to call at any time and affects
// CONNECTs from then on.
func (s *Server) AddAuthenticator(a Authenticator) {
	h := s.auth
	h.authnMu.Lock()
	defer h.authnMu.Unlock()
	var next []Authenticator
	if cur := h.authns.Load(); cur != nil {
		next = append(next, *cur...)
	}
	next = append(next, a)
	h.authns.Store(&next)
}

// admitted is the identity an authenticator gave one connection.
type admitted struct {
	cl *mqtt.Client
	id Identity
}

// identities remembers, per client id, the identity the connection (or
// the persistent session it left behind) was admitted with.
type identities struct {
	m sync.Map // client id -> *admitted
}

// of returns the identity cl was admitted with, if an authenticator admitted it.
func (ids *identities) of(cl *mqtt.Client) (Identity, bool) {
	v, ok := ids.m.Load(cl.ID)
	if !ok {
		return Identity{}, false
	}
	a := v.(*admitted)
	if a.cl != cl {
		return Identity{}, false
	}
	return a.id, true
}

// forget drops cl's identity unless a newer connection with its id took over.
func (ids *identities) forget(cl *mqtt.Client) {
	if v, ok := ids.m.Load(cl.ID); ok && v.(*admitted).cl == cl {
		ids.m.CompareAndDelete(cl.ID, v)
	}
}

// connectInfo gathers what authenticators see of a CONNECT; vouched is
// the identity a gateway's transport authenticated, if any.
func connectInfo(cl *mqtt.Client, pk packets.Packet, vouched string) *ConnectInfo {
	info := &ConnectInfo{
		ClientID: cl.ID, Username: string(pk.Connect.Username), Password: pk.Connect.Password,
		Listener: cl.Net.Listener, Remote: cl.Net.Remote, ProtocolVersion: pk.ProtocolVersion,
		Vouched: vouched,
	}
	switch c := cl.Net.Conn.(type) {
	case *tls.Conn:
		st := c.ConnectionState()
		// VerifiedChains is set only when the chain checked out against
		// the client CA; a certificate merely presented does not count.
		if len(st.VerifiedChains) > 0 {
			info.Certificates = st.PeerCertificates
		}
	case CertifiedConn:
		if vouched != "" {
			info.Certificates = c.VerifiedCertificates()
		}
	}
	return info
}

// authenticate asks the authenticators; decided is false when all passed.
func (h *authHook) authenticate(cl *mqtt.Client, pk packets.Packet, vouched string) (ok, decided bool) {
	as := h.authns.Load()
	if as == nil || len(*as) == 0 {
		return false, false
	}
	info := connectInfo(cl, pk, vouched)
	for _, a := range *as {
		switch v, id := a.Authenticate(info); v {
		case Allow:
			h.ids.m.Store(cl.ID, &admitted{cl: cl, id: id})
			return true, true
		case Deny:
			return false, true
		}
	}
	return false, false
}
