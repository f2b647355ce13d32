package server_test

import (
	"context"
	"fmt"
	"net"
	"strings"
	"testing"

	"github.com/eclipse/paho.golang/paho"
	pahov3 "github.com/eclipse/paho.mqtt.golang"

	"github.com/colonymq/colony/app"
	"github.com/colonymq/colony/app/apptest"
	"github.com/colonymq/colony/server"
)

// gadgets is a module that admits "gadget-*" clients by its own secret
// (or a gateway transport's word), confines them to gadget/<name>/#, and
// refuses the name "blocked".
type gadgets struct{ app.Base }

func (*gadgets) ID() string { return "gadgets" }

func (*gadgets) Init(_ context.Context, h *app.Host) error {
	h.Server.AddAuthenticator(server.AuthenticatorFunc(func(c *server.ConnectInfo) (server.Verdict, server.Identity) {
		name, ok := strings.CutPrefix(c.Username, "gadget-")
		switch {
		case c.Username == "blocked":
			return server.Deny, server.Identity{}
		case !ok:
			return server.Pass, server.Identity{}
		case c.Vouched == "" && string(c.Password) != "open-"+name:
			// A gateway's transport that vouched for the name replaces the secret.
			return server.Deny, server.Identity{}
		}
		own := "gadget/" + name + "/"
		return server.Allow, server.Identity{UserID: "gadget:" + name, Access: func(topic string, _ bool) bool {
			return strings.HasPrefix(topic, own)
		}}
	}))
	return nil
}

func TestAuthenticatorExtension(t *testing.T) {
	a := apptest.Run(t, authConfig(t), &gadgets{})
	url := apptest.URL(a)

	// Admitted by the module, bound to the identity's user id.
	g := apptest.V3(t, url, "g1", withCreds("gadget-one", "open-one"))
	apptest.Eventually(t, func() error {
		if u, _ := a.Server().UserOf("g1"); u != "gadget:one" {
			return fmt.Errorf("g1 bound to %q", u)
		}
		return nil
	})
	// Confined by Access: its own topics only, whatever the ACL file says.
	ch, h := apptest.Sink()
	apptest.Done(t, g.Subscribe("gadget/one/#", 1, h))
	tok := g.Subscribe("chat/#", 1, nil)
	apptest.Done(t, tok)
	if res := tok.(*pahov3.SubscribeToken).Result()["chat/#"]; res != 0x80 {
		t.Fatalf("confined client subscribing outside its space: %#x", res)
	}
	bob := apptest.V3(t, url, "bob-1", withCreds("bob", "builder"))
	apptest.Done(t, bob.Publish("chat/x", 1, false, "not for gadgets"))
	// The ACL file does not cover gadget/#, so bob cannot write there, but
	// the server (PublishMessage) can, with MQTT 5 properties.
	if err := a.Server().PublishMessage(server.Outgoing{Topic: "gadget/one/cmd", Payload: []byte("go"), QoS: 1,
		ResponseTopic: "gadget/one/res", CorrelationData: []byte("c1")}); err != nil {
		t.Fatal(err)
	}
	if m := apptest.Next(t, ch); string(m.Payload()) != "go" || m.Topic() != "gadget/one/cmd" {
		t.Fatalf("got %s %q", m.Topic(), m.Payload())
	}

	// An MQTT 5 gadget sees the properties.
	g5 := apptest.V5(t, a.Addr("mqtt"), &paho.Connect{ClientID: "g2", CleanStart: true,
		Username: "gadget-two", UsernameFlag: true, Password: []byte("open-two"), PasswordFlag: true})
	if _, err := g5.Subscribe(apptest.Ctx(t), &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "gadget/two/#", QoS: 1}}}); err != nil {
		t.Fatal(err)
	}
	if err := a.Server().PublishMessage(server.Outgoing{Topic: "gadget/two/cmd", Payload: []byte("go"), QoS: 1,
		ResponseTopic: "gadget/two/res", CorrelationData: []byte("c2")}); err != nil {
		t.Fatal(err)
	}
	p := apptest.Next(t, g5.Msgs)
	if p.Properties == nil || p.Properties.ResponseTopic != "gadget/two/res" || string(p.Properties.CorrelationData) != "c2" {
		t.Fatalf("properties %+v", p.Properties)
	}
	res, err := g5.Publish(apptest.Ctx(t), &paho.Publish{Topic: "gadget/one/x", QoS: 1, Payload: []byte("forged")})
	if res == nil || res.ReasonCode != 0x87 {
		t.Fatalf("publish to another gadget's topic: %v %+v, want PUBACK 0x87", err, res)
	}

	// Deny ends the CONNECT; Pass leaves it to the password file.
	for _, c := range []struct{ user, pass string }{{"gadget-one", "wrong"}, {"blocked", "x"}, {"mallory", "x"}} {
		if _, err := apptest.V3Try(url, "x-"+c.user, withCreds(c.user, c.pass)); err == nil {
			t.Fatalf("%s/%s admitted", c.user, c.pass)
		}
	}
	apptest.V3(t, url, "alice-1", withCreds("alice", "wonderland"))
}

// gatewayClient connects an MQTT 5 client through Server.ServeConn, as a
// protocol gateway's device whose transport vouched for identity.
func gatewayClient(t *testing.T, s *server.Server, identity string, cp *paho.Connect) (*paho.Client, *paho.Connack, error) {
	t.Helper()
	// A loopback TCP pair, not net.Pipe: paho writes one packet in several
	// Writes from more than one goroutine, which a socket's writev keeps
	// whole and net.Pipe interleaves (the server then rightly answers
	// DISCONNECT 0x81, malformed packet).
	dev, gw := tcpPair(t)
	served := make(chan error, 1)
	go func() { served <- s.ServeConn("test-gw", gw, identity) }()
	c := paho.NewClient(paho.ClientConfig{Conn: dev})
	t.Cleanup(func() {
		if err := dev.Close(); err != nil {
			t.Logf("close %s: %v", cp.ClientID, err)
		}
		<-served // its error says how the connection ended, which the test checked already
	})
	ctx, cancel := context.WithTimeout(context.Background(), apptest.Wait)
	defer cancel()
	ack, err := c.Connect(ctx, cp)
	return c, ack, err
}

// TestAuthenticatorVouched: authenticators see the identity a gateway's
// transport vouched for (ConnectInfo.Vouched) and may confine it, refuse
// it or pass it on to the ACL file; the CONNECT must name it.
func TestAuthenticatorVouched(t *testing.T) {
	a := apptest.Run(t, authConfig(t), &gadgets{})
	s := a.Server()
	connect := func(id, user string) *paho.Connect {
		return &paho.Connect{ClientID: id, CleanStart: true, KeepAlive: 30, Username: user, UsernameFlag: user != ""}
	}
	publish := func(c *paho.Client, topic string) byte {
		t.Helper()
		res, err := c.Publish(apptest.Ctx(t), &paho.Publish{Topic: topic, QoS: 1, Payload: []byte("x")})
		if res == nil {
			t.Fatalf("publish %s: %v", topic, err)
		}
		return res.ReasonCode
	}

	// Allowed by the module without a secret: its user id and confinement.
	g, _, err := gatewayClient(t, s, "gadget-three", connect("vg3", "gadget-three"))
	if err != nil {
		t.Fatalf("vouched gadget: %v", err)
	}
	apptest.Eventually(t, func() error {
		if u, _ := s.UserOf("vg3"); u != "gadget:three" {
			return fmt.Errorf("vg3 bound to %q", u)
		}
		return nil
	})
	if rc := publish(g, "gadget/three/t"); rc != 0 {
		t.Fatalf("publish to its own topic: %#x", rc)
	}
	if rc := publish(g, "gadget/one/t"); rc != 0x87 {
		t.Fatalf("publish to another gadget's topic: %#x, want 0x87", rc)
	}

	// Passed by the module: admitted as vouched, held to the ACL file.
	b, _, err := gatewayClient(t, s, "bob", connect("vbob", "bob"))
	if err != nil {
		t.Fatalf("vouched bob: %v", err)
	}
	apptest.Eventually(t, func() error { // bound once the session is established, just after CONNACK
		if u, _ := s.UserOf("vbob"); u != "bob" {
			return fmt.Errorf("vbob bound to %q", u)
		}
		return nil
	})
	if rc := publish(b, "chat/x"); rc != 0 {
		t.Fatalf("bob publishing by the ACL file: %#x", rc)
	}
	if rc := publish(b, "gadget/three/t"); rc != 0x87 {
		t.Fatalf("bob publishing outside the ACL file: %#x, want 0x87", rc)
	}

	// Denied by the module, or a CONNECT naming someone else: refused.
	for _, c := range []struct{ identity, user string }{{"blocked", "blocked"}, {"gadget-three", "gadget-one"}, {"carol", ""}} {
		_, ack, err := gatewayClient(t, s, c.identity, connect("v-"+c.identity+"-"+c.user, c.user))
		if err == nil || ack == nil || ack.ReasonCode != 0x86 {
			t.Fatalf("vouched %q as %q: %v %+v, want CONNACK 0x86", c.identity, c.user, err, ack)
		}
	}
}

// tcpPair returns the two ends of a loopback TCP connection.
func tcpPair(t *testing.T) (net.Conn, net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			c = nil
		}
		accepted <- c
	}()
	dev, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	gw := <-accepted
	if gw == nil {
		t.Fatal("accept failed")
	}
	return dev, gw
}
