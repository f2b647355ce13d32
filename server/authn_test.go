package server_test

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/eclipse/paho.golang/paho"
	pahov3 "github.com/eclipse/paho.mqtt.golang"

	"github.com/colonymq/colony/app"
	"github.com/colonymq/colony/app/apptest"
	"github.com/colonymq/colony/server"
)

// gadgets is a module that admits "gadget-*" clients by its own secret,
// confines them to gadget/<name>/#, and refuses the name "blocked".
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
		case string(c.Password) != "open-"+name:
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
