package hostile_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"github.com/rs/zerolog"

	"github.com/colonymq/colony/app"
	"github.com/colonymq/colony/app/apptest"
	"github.com/colonymq/colony/server"
)

// Ids and usernames holding "/", "+" or "#" must not widen %c/%u rules to
// other clients' topics (a CVE class of brokers that substitute blindly).
func TestACLPatternsIgnoreWildcardIDs(t *testing.T) {
	dir := t.TempDir()
	users := filepath.Join(dir, "users")
	for _, u := range []string{"alice", "a#", "+", "a/b"} {
		if err := server.SetPassword(users, u, "pw"); err != nil {
			t.Fatal(err)
		}
	}
	acl := filepath.Join(dir, "acl")
	if err := os.WriteFile(acl, []byte("pattern readwrite dev/%c/#\npattern readwrite users/%u/#\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	no := false
	cfg := apptest.Config(t)
	cfg.Auth = app.AuthConfig{PasswordFile: users, ACLFile: acl, AllowAnonymous: &no}
	a := apptest.Run(t, cfg)
	addr := a.Addr("mqtt")

	alice := apptest.V5(t, addr, &paho.Connect{ClientID: "alice-dev", CleanStart: true, Username: "alice", UsernameFlag: true, Password: []byte("pw"), PasswordFlag: true})
	// The rules work for a plain id.
	if _, err := alice.Subscribe(apptest.Ctx(t), &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "dev/alice-dev/#", QoS: 1}, {Topic: "users/alice/#", QoS: 1}}}); err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct{ id, user string }{
		{"+", "alice"}, {"#", "alice"}, {"x/y", "alice"}, {"ok-id", "a#"}, {"ok-id2", "+"}, {"ok-id3", "a/b"},
	} {
		c := dial(t, addr)
		if rc := c.connack(connectOpts{id: tc.id, user: tc.user, password: "pw"}); rc != 0 {
			t.Fatalf("id %q user %q: connack %#x", tc.id, tc.user, rc)
		}
		c.send(subscribe5(1, "dev/+/#", "dev/#", "users/+/#", "users/#", "dev/alice-dev/#", "users/alice/#"))
		p, err := c.next()
		if err != nil || p.typ != tSuback {
			t.Fatalf("suback: %v %v", p, err)
		}
		for i, code := range p.body[3:] {
			// users/alice/# is alice's own for the "+"/"#"/"x/y" client ids, whose username is alice.
			if i == 5 && tc.user == "alice" {
				continue
			}
			if code != 0x87 {
				t.Fatalf("id %q user %q: filter %d granted (% x)", tc.id, tc.user, i, p.body[3:])
			}
		}
		// Nor may such a client publish into alice's device space.
		c.send(publish(true, 1, 2, "dev/alice-dev/cmd", nil, "pwned"))
		if p, err := c.next(); err != nil || p.typ != tPuback || len(p.body) < 3 || p.body[2] != 0x87 {
			t.Fatalf("id %q user %q: publish into dev/alice-dev: %v %v", tc.id, tc.user, p, err)
		}
	}
	select {
	case m := <-alice.Msgs:
		t.Fatalf("alice received %q on %s", m.Payload, m.Topic)
	default:
	}
}

// Clients may not publish to $SYS or $colony, whatever the ACL grants.
func TestReservedTopicsRefusedWithReadwriteAll(t *testing.T) {
	dir := t.TempDir()
	acl := filepath.Join(dir, "acl")
	if err := os.WriteFile(acl, []byte("topic readwrite #\ntopic readwrite $SYS/#\ntopic readwrite $colony/#\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := apptest.Config(t)
	cfg.Auth.ACLFile = acl
	a := apptest.Run(t, cfg)
	for _, topic := range []string{"$SYS/broker/clients/connected", "$sys/x", "$colony/events", "$SYS"} {
		c := dial(t, a.Addr("mqtt"))
		c.connack(connectOpts{id: "sys-writer"})
		c.send(publish(true, 1, 1, topic, nil, "forged"))
		if p, err := c.next(); err != nil || p.typ != tPuback || p.body[2] != 0x87 {
			t.Fatalf("%s: %v %v", topic, p, err)
		}
	}
}

// The TLS listener speaks TLS 1.2 and 1.3 only, with AEAD suites.
func TestTLSModernDefaults(t *testing.T) {
	certFile, keyFile, pool := apptest.SelfSigned(t)
	cfg := apptest.Config(t)
	cfg.Listeners.TLS = "127.0.0.1:0"
	cfg.TLS.CertFile, cfg.TLS.KeyFile = certFile, keyFile
	a := apptest.Run(t, cfg)
	addr := a.Addr("tls")
	dialTLS := func(c *tls.Config) error {
		c.RootCAs = pool
		conn, err := tls.DialWithDialer(&net.Dialer{Timeout: apptest.Wait}, "tcp", addr, c)
		if err == nil {
			conn.Close()
		}
		return err
	}
	if err := dialTLS(&tls.Config{MinVersion: tls.VersionTLS13}); err != nil {
		t.Fatalf("TLS 1.3: %v", err)
	}
	if err := dialTLS(&tls.Config{MaxVersion: tls.VersionTLS12}); err != nil {
		t.Fatalf("TLS 1.2: %v", err)
	}
	for name, c := range map[string]*tls.Config{
		"TLS 1.0": {MinVersion: tls.VersionTLS10, MaxVersion: tls.VersionTLS10},
		"TLS 1.1": {MinVersion: tls.VersionTLS11, MaxVersion: tls.VersionTLS11},
		// CBC with SHA-1 MACs (Lucky13-class); Go still accepts them by default.
		"TLS 1.2 CBC-SHA": {MaxVersion: tls.VersionTLS12, CipherSuites: []uint16{
			tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA, tls.TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA}},
	} {
		if err := dialTLS(c); err == nil {
			t.Errorf("%s handshake accepted", name)
		}
	}
}

// syncBuffer is a log sink safe for the server's goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// Passwords and the RabbitMQ URL's credentials never reach the logs, at
// debug level, whatever the clients send.
func TestSecretsNeverLogged(t *testing.T) {
	const clientSecret, wrongSecret, amqpSecret = "pw-Secret-4711", "pw-Wrong-0815", "amqp-Secret-9944"
	dir := t.TempDir()
	users := filepath.Join(dir, "users")
	if err := server.SetPassword(users, "alice", clientSecret); err != nil {
		t.Fatal(err)
	}
	cfg := apptest.Config(t)
	cfg.Auth.PasswordFile = users
	// A broker that is not there: the node logs its dial failures.
	cfg.Cluster.AMQPURL = "amqp://colony:" + amqpSecret + "@127.0.0.1:1/"
	logs := &syncBuffer{}
	a := app.New(cfg, zerolog.New(logs).Level(zerolog.DebugLevel))
	ctx, cancel := context.WithTimeout(context.Background(), apptest.Wait)
	defer cancel()
	if err := a.Start(ctx); err != nil {
		t.Logf("start: %v", err) // may fail without the broker; its error is checked below too
		if strings.Contains(err.Error(), amqpSecret) {
			t.Fatalf("start error shows the amqp password: %v", err)
		}
	} else {
		t.Cleanup(func() { apptest.Stop(t, a) })
		addr := a.Addr("mqtt")
		for _, pw := range []string{clientSecret, wrongSecret} {
			c := dial(t, addr)
			o := connectOpts{id: "alice-" + pw[:5], user: "alice", password: pw}
			c.send(connect(o))
			if _, err := c.next(); err != nil {
				t.Fatal(err)
			}
			c.sendMaybe(connect(o)) // a second CONNECT: a protocol error, logged with its packet
			c.closed()
			c3 := dial(t, addr)
			o.level = 4
			c3.send(connect(o))
			if _, err := c3.next(); err != nil {
				t.Fatal(err)
			}
			c3.sendMaybe(connect(o))
			c3.closed()
		}
		time.Sleep(100 * time.Millisecond) // let the cluster's dial attempt log
		apptest.Stop(t, a)
	}
	out := logs.String()
	if os.Getenv("COLONY_LOG") == "debug" {
		t.Log(out)
	}
	if out == "" {
		t.Fatal("nothing logged: the test proves nothing")
	}
	for _, secret := range []string{clientSecret, wrongSecret, amqpSecret} {
		// JSON logs write []byte as base64; %v writes it as decimal bytes.
		for _, form := range []string{secret, base64.StdEncoding.EncodeToString([]byte(secret)),
			base64.RawStdEncoding.EncodeToString([]byte(secret)), hex.EncodeToString([]byte(secret)),
			strings.Trim(fmt.Sprint([]byte(secret)), "[]")} {
			if i := strings.Index(out, form); i >= 0 {
				t.Errorf("log shows secret %q as %q: …%s…", secret, form, out[max(0, i-200):min(len(out), i+50)])
			}
		}
	}
}
