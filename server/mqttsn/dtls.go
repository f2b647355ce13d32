package mqttsn

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"time"

	"github.com/pion/dtls/v3"
)

// dtlsPeer is one DTLS association: one device.
type dtlsPeer struct {
	c     *dtls.Conn
	id    string
	certs []*x509.Certificate // verified client chain; nil with PSK
	k     string
	once  sync.Once
}

func (p *dtlsPeer) send(b []byte) error {
	_, err := p.c.Write(b)
	return err
}
func (p *dtlsPeer) key() string                       { return p.k }
func (p *dtlsPeer) listener() string                  { return ListenerDTLS }
func (p *dtlsPeer) identity() string                  { return p.id }
func (p *dtlsPeer) certificates() []*x509.Certificate { return p.certs }
func (p *dtlsPeer) addr() net.Addr                    { return p.c.RemoteAddr() }
func (p *dtlsPeer) close() {
	p.once.Do(func() { closeQuietly(p.c) })
}

// closeIfIdle closes the association after the gateway's HandshakeTimeout
// unless a session holds it by then. It is how an association whose
// session ended with an answer (a refusing CONNACK, the DISCONNECT) ends:
// closing at once would send close_notify right behind that answer, and
// the device's DTLS reader may drop a record it has decrypted but not yet
// returned when close_notify arrives (pion's Conn.Read does), leaving the
// device waiting for an answer it never gets. A device closes its end
// itself, which ends the association here at once.
func (p *dtlsPeer) closeIfIdle(g *Gateway) *time.Timer {
	return time.AfterFunc(g.opts.HandshakeTimeout, func() {
		if g.sessionOf(p) == nil {
			p.close()
		}
	})
}

// closeQuietly closes an association that is being given up; an error
// means it was gone already.
func closeQuietly(c net.Conn) {
	if err := c.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
		return
	}
}

// startDTLS binds the DTLS listener: PSK suites when a PSKStore is set,
// certificate suites when a certificate is, both when both are.
func (g *Gateway) startDTLS() error {
	a, err := net.ResolveUDPAddr("udp", g.opts.DTLSListen)
	if err != nil {
		return fmt.Errorf("mqttsn dtls_listen %q: %w", g.opts.DTLSListen, err)
	}
	opts := []dtls.ServerOption{dtls.WithExtendedMasterSecret(dtls.RequireExtendedMasterSecret)}
	var suites []dtls.CipherSuiteID
	if g.opts.PSK != nil {
		// CCM_8 is what constrained stacks (tinydtls, mbedTLS profiles for CoAP/LwM2M) usually have.
		suites = append(suites, dtls.TLS_PSK_WITH_AES_128_CCM_8, dtls.TLS_PSK_WITH_AES_128_CCM,
			dtls.TLS_PSK_WITH_AES_128_GCM_SHA256, dtls.TLS_PSK_WITH_CHACHA20_POLY1305_SHA256)
	}
	if g.opts.CertFile != "" {
		suites = append(suites, dtls.TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8, dtls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
			dtls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256, dtls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
			dtls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256, dtls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
			dtls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384)
	}
	opts = append(opts, dtls.WithCipherSuites(suites...))
	if store := g.opts.PSK; store != nil {
		opts = append(opts,
			dtls.WithPSK(func(identity []byte) ([]byte, error) { return store.PSK(string(identity)) }),
			dtls.WithPSKIdentityHint([]byte("colony")))
	}
	if g.opts.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(g.opts.CertFile, g.opts.KeyFile)
		if err != nil {
			return fmt.Errorf("mqttsn dtls certificate: %w", err)
		}
		opts = append(opts, dtls.WithCertificates(cert))
	}
	if g.opts.ClientCAFile != "" {
		pem, err := os.ReadFile(g.opts.ClientCAFile)
		if err != nil {
			return fmt.Errorf("mqttsn client_ca_file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return fmt.Errorf("mqttsn client_ca_file %s: no PEM certificate: %w", g.opts.ClientCAFile, ErrInvalidOptions)
		}
		opts = append(opts, dtls.WithClientCAs(pool), dtls.WithClientAuth(dtls.VerifyClientCertIfGiven))
	}
	ln, err := dtls.ListenWithOptions("udp", a, opts...)
	if err != nil {
		return fmt.Errorf("mqttsn dtls_listen %q: %w", g.opts.DTLSListen, err)
	}
	g.dtls = ln
	g.log.Info().Str("listener", ListenerDTLS).Str("addr", ln.Addr().String()).Bool("psk", g.opts.PSK != nil).
		Bool("certificate", g.opts.CertFile != "").Msg("listening")
	g.wg.Add(1)
	go g.acceptDTLS()
	return nil
}

func (g *Gateway) acceptDTLS() {
	defer g.wg.Done()
	for {
		c, err := g.dtls.Accept()
		if err != nil {
			select {
			case <-g.closing:
				return
			default:
			}
			if errors.Is(err, net.ErrClosed) {
				return
			}
			g.log.Debug().Err(err).Msg("dtls accept")
			continue
		}
		dc, ok := c.(*dtls.Conn)
		if !ok {
			closeQuietly(c) // not a DTLS association; nothing to serve
			continue
		}
		g.wg.Add(1)
		go g.serveDTLS(dc)
	}
}

// serveDTLS runs one association: the handshake, then its datagrams.
func (g *Gateway) serveDTLS(c *dtls.Conn) {
	defer g.wg.Done()
	if !g.trackAssoc(c, true) {
		closeQuietly(c) // the gateway is closing
		return
	}
	defer g.trackAssoc(c, false)
	ctx, cancel := context.WithTimeout(context.Background(), g.opts.HandshakeTimeout)
	err := c.HandshakeContext(ctx)
	cancel()
	if err != nil {
		g.st.handshakeFails.Add(1)
		g.log.Debug().Err(err).Str("peer", c.RemoteAddr().String()).Msg("dtls handshake failed")
		closeQuietly(c)
		return
	}
	p := &dtlsPeer{c: c, k: "d" + c.RemoteAddr().String()}
	if st, ok := c.ConnectionState(); ok {
		switch {
		case len(st.IdentityHint) > 0:
			p.id = string(st.IdentityHint)
		case len(st.PeerCertificates) > 0:
			// The handshake verified the chain against client_ca_file
			// (VerifyClientCertIfGiven), so it names the device.
			for _, der := range st.PeerCertificates {
				cert, err := x509.ParseCertificate(der)
				if err != nil {
					p.certs = nil
					break
				}
				p.certs = append(p.certs, cert)
			}
			if len(p.certs) > 0 {
				p.id = p.certs[0].Subject.CommonName
			}
		}
	}
	// An association that never gets a session is closed; one whose
	// session ends is closed by the session.
	defer p.closeIfIdle(g).Stop()
	// A DTLS record carries at most 2^14 octets of plaintext.
	buf := make([]byte, 1<<14+1)
	for {
		n, err := c.Read(buf)
		if err != nil {
			p.close()
			return
		}
		g.handle(p, buf[:n])
	}
}

// trackAssoc adds c to the associations Close closes (add) or removes it;
// it reports false when the gateway is closed already.
func (g *Gateway) trackAssoc(c net.Conn, add bool) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if !add {
		delete(g.assocs, c)
		return true
	}
	if g.closed {
		return false
	}
	if g.assocs == nil {
		g.assocs = map[net.Conn]struct{}{}
	}
	g.assocs[c] = struct{}{}
	return true
}
