package server_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	pahov3 "github.com/eclipse/paho.mqtt.golang"

	"github.com/colonymq/colony/app"
	"github.com/colonymq/colony/app/apptest"
)

// selfSigned writes a certificate for 127.0.0.1 and its key, returning their paths and a pool trusting it.
func selfSigned(t *testing.T) (certFile, keyFile string, pool *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "colony test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600); err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool = x509.NewCertPool()
	pool.AddCert(cert)
	return certFile, keyFile, pool
}

func TestTLSListener(t *testing.T) {
	certFile, keyFile, pool := selfSigned(t)
	cfg := apptest.Config(t)
	cfg.Listeners.TLS = "127.0.0.1:0"
	cfg.TLS.CertFile, cfg.TLS.KeyFile = certFile, keyFile
	a := apptest.Run(t, cfg)

	sec := apptest.V3(t, "ssl://"+a.Addr("tls"), "secure", func(o *pahov3.ClientOptions) {
		o.SetTLSConfig(&tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12})
	})
	plain := apptest.V3(t, apptest.URL(a), "plain")
	ch, h := apptest.Sink()
	apptest.Done(t, plain.Subscribe("tls/#", 1, h))
	apptest.Done(t, sec.Publish("tls/x", 1, false, "encrypted hop"))
	if m := apptest.Next(t, ch); string(m.Payload()) != "encrypted hop" {
		t.Fatalf("got %q", m.Payload())
	}

	// Old protocol versions are refused.
	conn, err := tls.Dial("tcp", a.Addr("tls"), &tls.Config{RootCAs: pool, MaxVersion: tls.VersionTLS11, MinVersion: tls.VersionTLS10})
	if err == nil {
		conn.Close()
		t.Fatal("TLS 1.1 handshake accepted")
	}
}

func TestTLSListenerNeedsCertificate(t *testing.T) {
	cfg := apptest.Config(t)
	cfg.Listeners.TLS = "127.0.0.1:0"
	a := app.New(cfg, apptest.Logger(t))
	if err := a.Start(apptest.Ctx(t)); err == nil {
		t.Fatal("tls listener started without a certificate")
	}
}

func TestSysTopics(t *testing.T) {
	a := apptest.Run(t, apptest.Config(t))
	c := apptest.V3(t, apptest.URL(a), "sys-reader")
	ch, h := apptest.Sink()
	apptest.Done(t, c.Subscribe("$SYS/broker/clients/connected", 0, h))
	if m := apptest.Next(t, ch); string(m.Payload()) == "" {
		t.Fatal("empty $SYS value")
	}
}
