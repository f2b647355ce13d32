package device_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	pahov3 "github.com/eclipse/paho.mqtt.golang"

	"github.com/colonymq/colony/app/apptest"
	"github.com/colonymq/colony/modules/device"
	"github.com/colonymq/colony/rpc"
)

func TestProvisioningByClaim(t *testing.T) {
	n := start(t, secured(t), device.Options{})
	a := admin(t, n, "ops")
	var cl device.Claim
	a.must("claim_create", &device.ClaimReq{Name: "factory", Type: "thermostat", Labels: map[string]string{"batch": "7"}, MaxDevices: 1}, &cl)
	if cl.Secret == "" || cl.Username != "claim:factory" {
		t.Fatalf("claim %+v", cl)
	}
	// A wrong claim secret is refused.
	if c := apptest.V5Try(t, n.Addr("mqtt"), &paho.Connect{ClientID: "th-1", CleanStart: true, Username: "claim:factory", UsernameFlag: true,
		Password: []byte("dc_nope"), PasswordFlag: true}); c.ConnectErr == nil {
		t.Fatal("wrong claim secret admitted")
	}
	// First connect with the fleet claim (MQTT 5): the device provisions itself.
	claim := connectRPC(t, n.Addr("mqtt"), &paho.Connect{ClientID: "th-1", CleanStart: true, Username: "claim:factory", UsernameFlag: true,
		Password: []byte(cl.Secret), PasswordFlag: true}, "claim/th-1/reply")
	// A claim connection can do nothing else.
	if codes := claim.subscribe("dev/#"); codes[0] != 0x87 {
		t.Fatalf("claim subscribing dev/#: %#v", codes)
	}
	var got device.Created
	claim.must("provision", &device.ProvisionReq{}, &got)
	if got.Device.ID != "th-1" || got.Token == "" || got.Device.Type != "thermostat" || got.Device.Labels["batch"] != "7" || got.Device.Claim != "factory" {
		t.Fatalf("provisioned %+v", got)
	}
	if res, err := claim.c.Publish(apptest.Ctx(t), &paho.Publish{Topic: "$rpc/device/list", QoS: 1, Payload: []byte("{}")}); res == nil || res.ReasonCode != 0x87 {
		t.Fatalf("claim calling list: %v %+v, want PUBACK 0x87", err, res)
	}
	// MaxDevices: the claim has done its one device.
	wantErr(t, claim.call("provision", &device.ProvisionReq{ID: "th-2"}, nil), rpc.CodeForbidden, "provisioned its 1")

	// Then it connects with its own credential (MQTT 3.1.1).
	d, _ := v3Device(t, n, "th-1", got.Token)
	apptest.Done(t, d.Publish("dev/th-1/telemetry", 1, false, `{"temp":20}`))
	// Only admins make claims; devices cannot provision.
	wantErr(t, a.call("provision", &device.ProvisionReq{ID: "x"}, nil), rpc.CodeForbidden, "fleet claim")
}

// pki is a test CA with a server certificate for 127.0.0.1.
type pki struct {
	ca      *x509.Certificate
	caKey   *ecdsa.PrivateKey
	caFile  string
	srvCert string
	srvKey  string
	pool    *x509.CertPool
}

func newPKI(t *testing.T) *pki {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test ca"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(der)
	p := &pki{ca: ca, caKey: key, pool: x509.NewCertPool()}
	p.pool.AddCert(ca)
	dir := t.TempDir()
	p.caFile = filepath.Join(dir, "ca.pem")
	writePEM(t, p.caFile, "CERTIFICATE", der)
	srv, srvKey := p.issue(t, "127.0.0.1", x509.ExtKeyUsageServerAuth)
	p.srvCert, p.srvKey = filepath.Join(dir, "srv.pem"), filepath.Join(dir, "srv.key")
	writePEM(t, p.srvCert, "CERTIFICATE", srv.Certificate[0])
	kb, _ := x509.MarshalECPrivateKey(srvKey)
	writePEM(t, p.srvKey, "EC PRIVATE KEY", kb)
	return p
}

func writePEM(t *testing.T, path, typ string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

var serial int64 = 10

// issue signs a certificate for cn.
func (p *pki) issue(t *testing.T, cn string, usage x509.ExtKeyUsage) (tls.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial++
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage}}
	if ip := net.ParseIP(cn); ip != nil {
		tmpl.IPAddresses = []net.IP{ip}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.ca, &key.PublicKey, p.caKey)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, key
}

func TestCertificateLogin(t *testing.T) {
	p := newPKI(t)
	cfg := secured(t)
	cfg.Listeners.TLS = "127.0.0.1:0"
	cfg.TLS.CertFile, cfg.TLS.KeyFile, cfg.TLS.ClientCAFile = p.srvCert, p.srvKey, p.caFile
	n := start(t, cfg, device.Options{})
	a := admin(t, n, "ops")
	a.must("create", &device.CreateReq{ID: "cam-1", NoToken: true}, nil)

	good, _ := p.issue(t, "cam-1", x509.ExtKeyUsageClientAuth)
	tlsWith := func(cert tls.Certificate) func(*pahov3.ClientOptions) {
		return func(o *pahov3.ClientOptions) {
			o.SetTLSConfig(&tls.Config{RootCAs: p.pool, Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12})
		}
	}
	url := "ssl://" + n.Addr("tls")
	// The certificate alone identifies the device: no username.
	c := apptest.V3(t, url, "cam-1", tlsWith(good))
	apptest.Eventually(t, func() error {
		if u, _ := n.Server().UserOf("cam-1"); u != "dev:cam-1" {
			return rpc.Errorf(rpc.CodeNotFound, "bound to %q", u)
		}
		return nil
	})
	// …and confines it like a token does.
	tok := c.Subscribe("dev/cam-2/#", 1, nil)
	apptest.Done(t, tok)
	if res := tok.(*pahov3.SubscribeToken).Result()["dev/cam-2/#"]; res != 0x80 {
		t.Fatalf("cam-1 subscribing to cam-2: %#x", res)
	}
	// A pinned fingerprint refuses another certificate with the same name.
	other, _ := p.issue(t, "cam-1", x509.ExtKeyUsageClientAuth)
	sum := sha256.Sum256(good.Certificate[0])
	fp := hex.EncodeToString(sum[:])
	a.must("update", &device.UpdateReq{ID: "cam-1", CertFingerprint: &fp}, nil)
	if _, err := apptest.V3Try(url, "cam-1b", tlsWith(other)); err == nil {
		t.Fatal("unpinned certificate admitted")
	}
	apptest.V3(t, url, "cam-1c", tlsWith(good))
	// A disabled device's certificate is refused.
	a.must("disable", &device.IDReq{ID: "cam-1"}, nil)
	if _, err := apptest.V3Try(url, "cam-1d", tlsWith(good)); err == nil {
		t.Fatal("disabled device admitted by certificate")
	}
	// A certificate naming no device is left to the password file: refused without credentials.
	stranger, _ := p.issue(t, "stranger", x509.ExtKeyUsageClientAuth)
	if _, err := apptest.V3Try(url, "stranger", tlsWith(stranger)); err == nil {
		t.Fatal("certificate for an unknown device admitted")
	}
}
