package mqttsn_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/colonymq/colony/app"
	"github.com/colonymq/colony/app/apptest"
	"github.com/colonymq/colony/server/mqttsn"
	"github.com/colonymq/colony/server/mqttsn/client"
	"github.com/colonymq/colony/server/mqttsn/packet"
)

func writeFile(t *testing.T, name, text string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// deviceACL lets each device (user) write only its own topics; anonymous
// MQTT clients (the test's paho) read everything under d/.
const deviceACL = `topic read d/#
pattern readwrite d/%u/#
`

func dialDTLS(t *testing.T, a *app.App, o client.Options) (*client.Client, error) {
	t.Helper()
	if o.RetryInterval == 0 {
		o.RetryInterval = retry
	}
	o.MaxRetries = 10
	c, err := client.Dial(ctx(t), a.Addr(mqttsn.ListenerDTLS), o)
	if err == nil {
		t.Cleanup(func() {
			if err := c.Close(); err != nil {
				t.Logf("close: %v", err)
			}
		})
	}
	return c, err
}

// TestDTLSPSK: devices authenticate with their PSK identity, which becomes
// their user for the ACL; a wrong key or an unknown identity is refused
// in the handshake.
func TestDTLSPSK(t *testing.T) {
	psk := writeFile(t, "psk", "# devices\ndev1:00112233445566778899aabbccddeeff\ndev2:ffeeddccbbaa99887766554433221100\n")
	acl := writeFile(t, "acl", deviceACL)
	a := runSN(t, func(c *app.Config) {
		c.MQTTSN.Listen = app.Off
		c.MQTTSN.DTLSListen = "127.0.0.1:0"
		c.MQTTSN.PSKFile = psk
		c.MQTTSN.Predefined["8"] = "d/dev1/minus"
		c.MQTTSN.HandshakeTimeout = app.Duration(2 * time.Second)
		c.Auth.ACLFile = acl
	})
	msgs, sink := apptest.Sink()
	sub := apptest.V3(t, apptest.URL(a), "paho-sub")
	apptest.Done(t, sub.Subscribe("d/#", 2, sink))

	key := []byte{0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff}
	dev, err := dialDTLS(t, a, client.Options{ClientID: "c-dev1", CleanSession: true,
		Predefined: map[string]uint16{"d/dev1/minus": 8}, DTLS: &client.DTLS{PSKIdentity: "dev1", PSK: key}})
	if err != nil {
		t.Fatalf("dtls dial with the right key: %v", err)
	}
	if err := dev.Connect(ctx(t)); err != nil {
		t.Fatal(err)
	}
	// The engine binds the user after it has sent the CONNACK
	// (OnSessionEstablished), so the device may be told first.
	apptest.Eventually(t, func() error {
		if got := a.Server().ClientsOf("dev1"); !slices.Equal(got, []string{"c-dev1"}) {
			return fmt.Errorf("user dev1's clients: %v", got)
		}
		return nil
	})
	for _, qos := range []packet.QoS{-1, 0, 1, 2} {
		topic := "d/dev1/t"
		if qos == -1 {
			topic = "d/dev1/minus" // predefined: QoS -1 names its topic by a predefined id or a short name
		}
		if err := dev.Publish(ctx(t), topic, qos, false, []byte{byte('0' + qos)}); err != nil {
			t.Fatalf("publish qos %d: %v", qos, err)
		}
		if m := apptest.Next(t, msgs); m.Topic() != topic || m.Payload()[0] != byte('0'+qos) {
			t.Fatalf("paho got %s %q", m.Topic(), m.Payload())
		}
	}
	if err := dev.Publish(ctx(t), "d/dev2/t", 1, false, []byte("spoof")); !errors.Is(err, client.ErrRejected) {
		t.Fatalf("publish to another device's topic: %v", err)
	}
	// And back: MQTT to the device over DTLS.
	if _, _, err := dev.Subscribe(ctx(t), "d/dev1/cmd", 1); err != nil {
		t.Fatal(err)
	}
	if err := a.Server().Publish("d/dev1/cmd", []byte("reboot"), false, 1); err != nil {
		t.Fatal(err)
	}
	if m := nextSN(t, dev); m.Topic != "d/dev1/cmd" || string(m.Payload) != "reboot" {
		t.Fatalf("device got %+v", m)
	}

	before := a.MQTTSN().Stats().HandshakeFailures
	// A wrong key makes the client's Finished undecryptable, which DTLS
	// drops without an answer: the client's handshake times out, and the
	// gateway gives the association up after handshake_timeout.
	short, cancel := context.WithTimeout(ctx(t), 2*time.Second)
	defer cancel()
	if c, err := client.Dial(short, a.Addr(mqttsn.ListenerDTLS), client.Options{ClientID: "x",
		DTLS: &client.DTLS{PSKIdentity: "dev1", PSK: []byte("wrong key")}}); err == nil {
		c.Close()
		t.Fatal("handshake with a wrong key succeeded")
	}
	if _, err := dialDTLS(t, a, client.Options{ClientID: "y", DTLS: &client.DTLS{PSKIdentity: "nobody", PSK: key}}); err == nil {
		t.Fatal("handshake with an unknown identity succeeded")
	}
	deadline := time.Now().Add(apptest.Wait)
	for a.MQTTSN().Stats().HandshakeFailures < before+2 {
		if time.Now().After(deadline) {
			t.Fatalf("handshake failures counted: %d", a.MQTTSN().Stats().HandshakeFailures-before)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestDTLSCertificate: the gateway presents a certificate; a device with a
// client certificate is its common name for the ACL, one without is
// anonymous (admitted on loopback).
func TestDTLSCertificate(t *testing.T) {
	pki := newPKI(t)
	acl := writeFile(t, "acl", deviceACL+"topic readwrite anon/#\n")
	a := runSN(t, func(c *app.Config) {
		c.MQTTSN.DTLSListen = "127.0.0.1:0"
		c.MQTTSN.CertFile, c.MQTTSN.KeyFile, c.MQTTSN.ClientCAFile = pki.serverCert, pki.serverKey, pki.caFile
		c.Auth.ACLFile = acl
	})
	msgs, sink := apptest.Sink()
	sub := apptest.V3(t, apptest.URL(a), "paho-sub")
	apptest.Done(t, sub.Subscribe("d/#", 1, sink)) // what the ACL lets anonymous clients read
	apptest.Done(t, sub.Subscribe("anon/#", 1, sink))

	withCert, err := dialDTLS(t, a, client.Options{ClientID: "cert-dev", CleanSession: true,
		DTLS: &client.DTLS{RootCAs: pki.pool, ServerName: "localhost", Certificates: []tls.Certificate{pki.client}}})
	if err != nil {
		t.Fatal(err)
	}
	if err := withCert.Connect(ctx(t)); err != nil {
		t.Fatal(err)
	}
	if err := withCert.Publish(ctx(t), "d/sensor-9/t", 1, false, []byte("hot")); err != nil {
		t.Fatal(err)
	}
	if m := apptest.Next(t, msgs); m.Topic() != "d/sensor-9/t" || string(m.Payload()) != "hot" {
		t.Fatalf("paho got %s %q", m.Topic(), m.Payload())
	}
	if err := withCert.Publish(ctx(t), "anon/x", 1, false, []byte("no")); err == nil {
		t.Fatal("a device with a certificate used the anonymous rules")
	}

	anon, err := dialDTLS(t, a, client.Options{ClientID: "anon-dev", CleanSession: true,
		DTLS: &client.DTLS{RootCAs: pki.pool, ServerName: "localhost"}})
	if err != nil {
		t.Fatal(err)
	}
	if err := anon.Connect(ctx(t)); err != nil {
		t.Fatal(err)
	}
	if err := anon.Publish(ctx(t), "anon/x", 0, false, []byte("hello")); err != nil {
		t.Fatal(err)
	}
	if m := apptest.Next(t, msgs); m.Topic() != "anon/x" {
		t.Fatalf("paho got %s %q", m.Topic(), m.Payload())
	}
	// A client that does not trust the gateway's CA refuses it.
	if _, err := dialDTLS(t, a, client.Options{ClientID: "z", DTLS: &client.DTLS{RootCAs: x509.NewCertPool(), ServerName: "localhost"}}); err == nil {
		t.Fatal("handshake with an untrusted gateway certificate succeeded")
	}
}

type pki struct {
	caFile, serverCert, serverKey string
	pool                          *x509.CertPool
	client                        tls.Certificate
}

func newPKI(t *testing.T) pki {
	t.Helper()
	dir := t.TempDir()
	key := func() *ecdsa.PrivateKey {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	caKey := key()
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test ca"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	issue := func(cn string, usage x509.ExtKeyUsage, dns []string) ([]byte, *ecdsa.PrivateKey) {
		k := key()
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: cn},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), DNSNames: dns,
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage}}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &k.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		return der, k
	}
	pemFile := func(name, typ string, der []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	srvDER, srvKey := issue("gateway", x509.ExtKeyUsageServerAuth, []string{"localhost"})
	srvKeyDER, err := x509.MarshalECPrivateKey(srvKey)
	if err != nil {
		t.Fatal(err)
	}
	cliDER, cliKey := issue("sensor-9", x509.ExtKeyUsageClientAuth, nil)
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	return pki{
		caFile: pemFile("ca.pem", "CERTIFICATE", caDER), serverCert: pemFile("srv.pem", "CERTIFICATE", srvDER),
		serverKey: pemFile("srv.key", "EC PRIVATE KEY", srvKeyDER), pool: pool,
		client: tls.Certificate{Certificate: [][]byte{cliDER}, PrivateKey: cliKey},
	}
}

// TestDTLSRefusedConnectKeepsAssociation: a CONNECT the broker refuses is
// answered with a refusing CONNACK over an association that stays open,
// so the device reads the answer (a close_notify right behind it could
// make its DTLS reader drop it), and every CONNECT it sends again on it
// gets its answer too. Stopping the node closes such an association: the
// DTLS listener's close leaves accepted ones open, and the gateway used
// to wait for them until handshake_timeout.
func TestDTLSRefusedConnectKeepsAssociation(t *testing.T) {
	pki := newPKI(t)
	no := false
	a := runSN(t, func(c *app.Config) {
		c.MQTTSN.Listen = app.Off
		c.MQTTSN.DTLSListen = "127.0.0.1:0"
		c.MQTTSN.CertFile, c.MQTTSN.KeyFile, c.MQTTSN.ClientCAFile = pki.serverCert, pki.serverKey, pki.caFile
		c.MQTTSN.HandshakeTimeout = app.Duration(10 * time.Minute)
		c.Auth.AllowAnonymous = &no
	})
	// No client certificate: anonymous, which this node does not admit.
	dev, err := dialDTLS(t, a, client.Options{ClientID: "anon", DTLS: &client.DTLS{RootCAs: pki.pool, ServerName: "localhost"}})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if err := dev.Connect(ctx(t)); !errors.Is(err, client.ErrRejected) {
			t.Fatalf("anonymous CONNECT %d: %v, want rejected", i+1, err)
		}
	}
	if got := a.MQTTSN().Stats().Rejected; got != 3 {
		t.Fatalf("rejected: %d, want 3", got)
	}
	// The association is still open (the device did not close it, and
	// handshake_timeout is far off): stopping the node closes it, rather
	// than waiting for it.
	stop, cancel := context.WithTimeout(context.Background(), apptest.Wait)
	defer cancel()
	if err := a.Stop(stop); err != nil {
		t.Fatalf("stop with a refused device's association open: %v", err)
	}
}

// TestDTLSMovedDeviceLeavesNoAssociation: a device whose session moves to
// a new DTLS association (it resumes it from a new address, as after a
// NAT rebinding or a reboot, or another association connects with its
// client id and a clean session) never closes its old association, which
// no session uses any more. The gateway closed an association only when
// its session ended otherwise, so every such move left one open, with its
// goroutine and buffers, until the node stopped.
func TestDTLSMovedDeviceLeavesNoAssociation(t *testing.T) {
	psk := writeFile(t, "psk", "dev1:00112233445566778899aabbccddeeff\n")
	a := runSN(t, func(c *app.Config) {
		c.MQTTSN.Listen = app.Off
		c.MQTTSN.DTLSListen = "127.0.0.1:0"
		c.MQTTSN.PSKFile = psk
		c.MQTTSN.HandshakeTimeout = app.Duration(10 * time.Minute)
	})
	key := []byte{0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff}
	device := func(clean bool) *client.Client {
		t.Helper()
		dev, err := dialDTLS(t, a, client.Options{ClientID: "mover", CleanSession: clean,
			DTLS: &client.DTLS{PSKIdentity: "dev1", PSK: key}})
		if err != nil {
			t.Fatal(err)
		}
		if err := dev.Connect(ctx(t)); err != nil {
			t.Fatal(err)
		}
		return dev
	}
	associations := func(want int) {
		t.Helper()
		apptest.Eventually(t, func() error {
			if n := mqttsn.Associations(a.MQTTSN()); n != want {
				return fmt.Errorf("%d dtls associations open, want %d", n, want)
			}
			return nil
		})
	}
	device(false)
	associations(1)
	device(false) // resumes the session from a new association
	associations(1)
	if st := a.MQTTSN().Stats(); st.Sessions != 1 {
		t.Fatalf("sessions: %d", st.Sessions)
	}
	device(true) // takes the client id with a clean session: the old one ends
	associations(1)
	if st := a.MQTTSN().Stats(); st.Sessions != 1 {
		t.Fatalf("sessions: %d", st.Sessions)
	}
}

// TestDTLSClientIDTakenOnlyByAnAcceptedNewcomer: a CONNECT naming a
// device's client id from another principal ends the device's session
// only once the broker has accepted the newcomer. The gateway used to end
// it first, so an anonymous peer that the broker then refused disconnected
// any device whose client id it knew.
func TestDTLSClientIDTakenOnlyByAnAcceptedNewcomer(t *testing.T) {
	pki := newPKI(t)
	for _, anonymous := range []bool{false, true} {
		t.Run(fmt.Sprintf("allow_anonymous=%v", anonymous), func(t *testing.T) {
			a := runSN(t, func(c *app.Config) {
				c.MQTTSN.Listen = app.Off
				c.MQTTSN.DTLSListen = "127.0.0.1:0"
				c.MQTTSN.CertFile, c.MQTTSN.KeyFile, c.MQTTSN.ClientCAFile = pki.serverCert, pki.serverKey, pki.caFile
				c.Auth.AllowAnonymous = &anonymous
			})
			dev, err := dialDTLS(t, a, client.Options{ClientID: "sensor", DTLS: &client.DTLS{RootCAs: pki.pool,
				ServerName: "localhost", Certificates: []tls.Certificate{pki.client}}})
			if err != nil {
				t.Fatal(err)
			}
			if err := dev.Connect(ctx(t)); err != nil {
				t.Fatal(err)
			}
			if _, _, err := dev.Subscribe(ctx(t), "cmd/sensor", 1); err != nil {
				t.Fatal(err)
			}
			// No certificate: anonymous, a principal other than the device's.
			intruder, err := dialDTLS(t, a, client.Options{ClientID: "sensor", DTLS: &client.DTLS{RootCAs: pki.pool, ServerName: "localhost"}})
			if err != nil {
				t.Fatal(err)
			}
			err = intruder.Connect(ctx(t))
			if anonymous {
				// Accepted: the broker takes the client id over, and the
				// device is told its session is gone.
				if err != nil {
					t.Fatalf("anonymous CONNECT where anonymous clients are allowed: %v", err)
				}
				select {
				case <-dev.Gone():
				case <-time.After(apptest.Wait):
					t.Fatal("the device was not told that its client id was taken over")
				}
				if err := intruder.Publish(ctx(t), "anon/x", 1, false, []byte("mine now")); err != nil {
					t.Fatalf("publish by the new holder of the client id: %v", err)
				}
			} else {
				if !errors.Is(err, client.ErrRejected) {
					t.Fatalf("anonymous CONNECT where anonymous clients are not allowed: %v, want rejected", err)
				}
				// The device's session goes on, in both directions.
				if err := a.Server().Publish("cmd/sensor", []byte("still yours"), false, 1); err != nil {
					t.Fatal(err)
				}
				if m := nextSN(t, dev); string(m.Payload) != "still yours" {
					t.Fatalf("device got %+v", m)
				}
				if err := dev.Publish(ctx(t), "d/sensor-9/t", 1, false, []byte("ok")); err != nil {
					t.Fatalf("device publish after a refused newcomer named its client id: %v", err)
				}
				select {
				case <-dev.Gone():
					t.Fatal("the device's session ended")
				default:
				}
			}
			if st := a.MQTTSN().Stats(); st.Sessions != 1 {
				t.Fatalf("sessions: %d, want 1", st.Sessions)
			}
		})
	}
}

// runUDPAndDTLS runs a node with both MQTT-SN listeners, anonymous
// devices allowed (on loopback), and a DTLS certificate.
func runUDPAndDTLS(t *testing.T) (*app.App, pki) {
	t.Helper()
	pk := newPKI(t)
	a := runSN(t, func(c *app.Config) {
		c.MQTTSN.DTLSListen = "127.0.0.1:0"
		c.MQTTSN.CertFile, c.MQTTSN.KeyFile, c.MQTTSN.ClientCAFile = pk.serverCert, pk.serverKey, pk.caFile
	})
	return a, pk
}

// TestAcceptedChallengerEndsASessionStillConnecting: the session that
// holds a client id, still in its will flow (unknown to the broker), ends
// when a device of another principal is accepted under that id: the last
// accepted CONNECT wins, as in MQTT. Left alone, it connected later, took
// the id back from the newcomer at the broker and, when the newcomer's
// session ended, was live without its client id: no PINGREQ wake-up, not
// counted, and not ended by the gateway's Close, which then hung.
func TestAcceptedChallengerEndsASessionStillConnecting(t *testing.T) {
	a, pk := runUDPAndDTLS(t)
	x := newRaw(t, a.Addr(mqttsn.ListenerUDP))
	x.send(&packet.Connect{Flags: packet.Flags{CleanSession: true, Will: true}, Duration: 60, ClientID: "dev"})
	if p := x.recv(); !isType[*packet.WillTopicReq](p) {
		t.Fatalf("got %#v, want WILLTOPICREQ", p)
	}
	y, err := dialDTLS(t, a, client.Options{ClientID: "dev", CleanSession: true,
		DTLS: &client.DTLS{RootCAs: pk.pool, ServerName: "localhost"}})
	if err != nil {
		t.Fatal(err)
	}
	if err := y.Connect(ctx(t)); err != nil {
		t.Fatalf("challenger connect: %v", err)
	}
	if p := x.recv(); !isType[*packet.Disconnect](p) {
		t.Fatalf("the session still in its will flow got %#v, want DISCONNECT", p)
	}
	x.send(&packet.WillTopic{Topic: "w/dev"})
	if p := x.recv(); !isType[*packet.Disconnect](p) {
		t.Fatalf("its will flow went on: got %#v, want DISCONNECT", p)
	}
	if err := y.Ping(ctx(t)); err != nil {
		t.Fatalf("the newcomer's session: %v", err)
	}
	if n := a.MQTTSN().Stats().Sessions; n != 1 {
		t.Fatalf("sessions: %d, want 1", n)
	}
	stop, cancel := context.WithTimeout(context.Background(), apptest.Wait)
	defer cancel()
	if err := a.MQTTSN().Close(stop); err != nil {
		t.Fatalf("gateway close: %v", err)
	}
	select {
	case <-y.Gone():
	case <-time.After(apptest.Wait):
		t.Fatal("the newcomer was not told DISCONNECT on close")
	}
}

// TestCloseEndsChallengers: a challenger (a device of another principal
// naming a client id in use, not yet accepted by the broker) is ended by
// the gateway's Close like every other session: told DISCONNECT in its
// will flow, and ended while its broker CONNECT is under way, where Close
// used to wait for it until its deadline.
func TestCloseEndsChallengers(t *testing.T) {
	pk := newPKI(t)
	for round := range 10 {
		a := runSN(t, func(c *app.Config) {
			c.MQTTSN.DTLSListen = "127.0.0.1:0"
			c.MQTTSN.CertFile, c.MQTTSN.KeyFile, c.MQTTSN.ClientCAFile = pk.serverCert, pk.serverKey, pk.caFile
		})
		holder, err := dialDTLS(t, a, client.Options{ClientID: "dev", CleanSession: true,
			DTLS: &client.DTLS{RootCAs: pk.pool, ServerName: "localhost"}})
		if err != nil {
			t.Fatal(err)
		}
		if err := holder.Connect(ctx(t)); err != nil {
			t.Fatal(err)
		}
		b := newRaw(t, a.Addr(mqttsn.ListenerUDP)) // another listener: another principal
		b.send(&packet.Connect{Flags: packet.Flags{CleanSession: true, Will: true}, Duration: 60, ClientID: "dev"})
		if p := b.recv(); !isType[*packet.WillTopicReq](p) {
			t.Fatalf("got %#v, want WILLTOPICREQ", p)
		}
		if round > 0 { // the first round closes during the will flow
			b.send(&packet.WillTopic{Topic: "w/dev"})
			b.recv()
			b.send(&packet.WillMsg{Msg: []byte("bye")}) // the broker CONNECT starts
			time.Sleep(time.Duration(round%5) * 200 * time.Microsecond)
		}
		stop, cancel := context.WithTimeout(context.Background(), apptest.Wait)
		err = a.MQTTSN().Close(stop)
		cancel()
		if err != nil {
			t.Fatalf("round %d: gateway close: %v", round, err)
		}
		if round == 0 {
			if p := b.recv(); !isType[*packet.Disconnect](p) {
				t.Fatalf("the challenger in its will flow got %#v on close, want DISCONNECT", p)
			}
		}
		apptest.Stop(t, a)
	}
}

// TestChallengerAndSamePrincipalRace: a device's session is replaced at
// the same moment by a clean CONNECT from its own principal (which takes
// the client id at once) and by a challenger of another principal (which
// takes it when the broker accepts it). Whichever wins, a device whose
// session is live holds the client id: a PINGREQ naming it is answered.
// Before claim ended the session it replaced, the winner was now and then
// live without it.
func TestChallengerAndSamePrincipalRace(t *testing.T) {
	a, pk := runUDPAndDTLS(t)
	for i := range 20 {
		id := fmt.Sprintf("dev-%d", i)
		conn := &packet.Connect{Flags: packet.Flags{CleanSession: true}, Duration: 60, ClientID: id}
		holder := newRaw(t, a.Addr(mqttsn.ListenerUDP))
		holder.send(conn)
		holder.recv()
		b, err := dialDTLS(t, a, client.Options{ClientID: id, DTLS: &client.DTLS{RootCAs: pk.pool, ServerName: "localhost"}})
		if err != nil {
			t.Fatal(err)
		}
		enc, err := packet.Encode(conn)
		if err != nil {
			t.Fatal(err)
		}
		again := newRaw(t, a.Addr(mqttsn.ListenerUDP)) // the holder's principal: UDP, no identity
		if i%2 == 0 {
			_ = b.SendRaw(enc)
			again.send(conn)
		} else {
			again.send(conn)
			_ = b.SendRaw(enc)
		}
		// Until the broker has settled who holds the id (under load the
		// answers can take a while), a live session may be waiting for
		// its CONNACK; a settled one that is live must hold the id.
		answer := func() packet.Packet { // the next PINGRESP or DISCONNECT; nil: none (still connecting)
			for {
				p, ok := again.recvWithin(100 * time.Millisecond)
				switch p.(type) {
				case *packet.Pingresp, *packet.Disconnect:
					return p
				}
				if !ok {
					return nil
				}
			}
		}
		for deadline := time.Now().Add(apptest.Wait); ; time.Sleep(20 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("round %d: a live session without its client id: a PINGREQ naming it is not answered PINGRESP", i)
			}
			again.send(&packet.Pingreq{})
			p := answer()
			if isType[*packet.Disconnect](p) {
				break // its session is gone
			}
			if p == nil {
				continue // waiting for its CONNACK
			}
			again.send(&packet.Pingreq{ClientID: id})
			if isType[*packet.Pingresp](answer()) {
				break // live, and holds the id
			}
		}
		b.Close()
	}
}

// isType reports whether p is a T.
func isType[T packet.Packet](p packet.Packet) bool {
	_, ok := p.(T)
	return ok
}

// slowBroker delays the first broker connection of the plain UDP
// listener, as a slow authenticator or a starved engine goroutine would:
// the session's CONNECT is in its engine connection, not yet read.
type slowBroker struct {
	mqttsn.Broker
	delay time.Duration
	done  atomic.Bool
}

func (b *slowBroker) ServeConn(l string, c net.Conn, id string) error {
	if l == mqttsn.ListenerUDP && b.done.CompareAndSwap(false, true) {
		time.Sleep(b.delay)
	}
	return b.Broker.ServeConn(l, c, id)
}

// TestSessionConnectingWhenAChallengerIsAccepted: a device's CONNECT is on
// its way to the broker (slowly: a slow authenticator) when a device of
// another principal is accepted under the same client id. The broker
// accepts the first one after, and takes the id over from the newcomer:
// the last CONNECT the broker accepts wins, and holds the client id. The
// gateway used to end the first session when the newcomer was accepted;
// its CONNECT still reached the broker, which took the id from the
// newcomer, and both devices were told DISCONNECT: nobody held the id.
func TestSessionConnectingWhenAChallengerIsAccepted(t *testing.T) {
	a, pk := runUDPAndDTLS(t)
	g, err := mqttsn.New(&slowBroker{Broker: a.Server(), delay: time.Second}, mqttsn.Options{
		Listen: "127.0.0.1:0", DTLSListen: "127.0.0.1:0", RetryInterval: retry, MaxRetries: 10,
		CertFile: pk.serverCert, KeyFile: pk.serverKey, Logger: zerolog.Nop(),
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := g.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c, cancel := context.WithTimeout(context.Background(), apptest.Wait)
		defer cancel()
		_ = g.Close(c)
	})
	x := newRaw(t, g.Addr(mqttsn.ListenerUDP))
	x.send(&packet.Connect{Flags: packet.Flags{CleanSession: true}, Duration: 60, ClientID: "dev"})
	time.Sleep(50 * time.Millisecond) // x's session is waiting for the broker
	y, err := client.Dial(ctx(t), g.Addr(mqttsn.ListenerDTLS), client.Options{ClientID: "dev", CleanSession: true,
		RetryInterval: retry, MaxRetries: 10, DTLS: &client.DTLS{RootCAs: pk.pool, ServerName: "localhost"}})
	if err != nil {
		t.Fatal(err)
	}
	defer y.Close()
	if err := y.Connect(ctx(t)); err != nil { // accepted while x's CONNECT waits
		t.Fatalf("challenger connect: %v", err)
	}
	// x's CONNECT reaches the broker after y's: x is accepted, y is taken
	// over, and x holds the client id.
	if p := x.recv(); !isType[*packet.Connack](p) || p.(*packet.Connack).ReturnCode != packet.Accepted {
		t.Fatalf("the first device got %#v, want CONNACK accepted", p)
	}
	select {
	case <-y.Gone():
	case <-time.After(apptest.Wait):
		t.Fatal("the newcomer was not told that the client id was taken over")
	}
	x.send(&packet.Pingreq{ClientID: "dev"})
	if p := x.recv(); !isType[*packet.Pingresp](p) {
		t.Fatalf("PINGREQ naming the client id from its holder got %#v", p)
	}
	if n := g.Stats().Sessions; n != 1 {
		t.Fatalf("sessions: %d, want 1", n)
	}
}
