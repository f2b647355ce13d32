package server_test

import (
	"crypto/tls"
	"testing"

	pahov3 "github.com/eclipse/paho.mqtt.golang"

	"github.com/colonymq/colony/app"
	"github.com/colonymq/colony/app/apptest"
)

func TestTLSListener(t *testing.T) {
	certFile, keyFile, pool := apptest.SelfSigned(t)
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
