package server_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	pahov3 "github.com/eclipse/paho.mqtt.golang"

	"github.com/colonymq/colony/app"
	"github.com/colonymq/colony/app/apptest"
	"github.com/colonymq/colony/server"
)

// authConfig returns a node that requires passwords (alice/wonderland,
// bob/builder) and applies an ACL.
func authConfig(t *testing.T) app.Config {
	t.Helper()
	dir := t.TempDir()
	users := filepath.Join(dir, "users")
	for u, p := range map[string]string{"alice": "wonderland", "bob": "builder"} {
		if err := server.SetPassword(users, u, p); err != nil {
			t.Fatal(err)
		}
	}
	acl := filepath.Join(dir, "acl")
	if err := os.WriteFile(acl, []byte(strings.Join([]string{
		"user alice",
		"topic readwrite chat/alice/#",
		"topic read chat/all",
		"user bob",
		"topic readwrite chat/#",
		"pattern readwrite inbox/%u/#",
	}, "\n")), 0o600); err != nil {
		t.Fatal(err)
	}
	no := false
	cfg := apptest.Config(t)
	cfg.Auth = app.AuthConfig{PasswordFile: users, ACLFile: acl, AllowAnonymous: &no}
	return cfg
}

func withCreds(user, pass string) func(*pahov3.ClientOptions) {
	return func(o *pahov3.ClientOptions) { o.SetUsername(user).SetPassword(pass) }
}

func TestAuthRejectsWithReasonCodes(t *testing.T) {
	a := apptest.Run(t, authConfig(t))
	url := apptest.URL(a)

	// MQTT 3.1.1: CONNACK return code 5, "not authorized" (what Mosquitto answers too).
	for name, tweak := range map[string]func(*pahov3.ClientOptions){
		"wrong password": withCreds("alice", "nope"),
		"unknown user":   withCreds("mallory", "x"),
		"anonymous":      func(*pahov3.ClientOptions) {},
	} {
		_, err := apptest.V3Try(url, "c-"+strings.ReplaceAll(name, " ", "-"), tweak)
		if err == nil || !strings.Contains(err.Error(), "not Authorized") {
			t.Errorf("%s: got %v, want not authorized", name, err)
		}
	}
	// MQTT 5: CONNACK reason 0x86.
	c := apptest.V5Try(t, a.Addr("mqtt"), &paho.Connect{ClientID: "v5bad", CleanStart: true,
		Username: "alice", UsernameFlag: true, Password: []byte("nope"), PasswordFlag: true})
	if c.ConnectErr == nil || c.Connack == nil || c.Connack.ReasonCode != 0x86 {
		t.Fatalf("v5 wrong password: err %v connack %+v, want reason 0x86", c.ConnectErr, c.Connack)
	}
	// The right password works.
	apptest.V3(t, url, "alice-ok", withCreds("alice", "wonderland"))
}

func TestAnonymousAllowedOnlyOnLoopbackByDefault(t *testing.T) {
	cfg := apptest.Config(t)
	cfg.Listeners.MQTT = "0.0.0.0:0"
	a := app.New(cfg, apptest.Logger(t))
	err := a.Start(apptest.Ctx(t))
	if err == nil {
		apptest.Stop(t, a)
		t.Fatal("a non-loopback listener without a password file started with anonymous access")
	}
	if !strings.Contains(err.Error(), "allow_anonymous") || !strings.Contains(err.Error(), "password_file") {
		t.Fatalf("error does not say how to fix it: %v", err)
	}
	// Loopback with defaults: anonymous clients welcome.
	b := apptest.Run(t, apptest.Config(t))
	apptest.V3(t, apptest.URL(b), "anon")
}

func TestACLEnforced(t *testing.T) {
	a := apptest.Run(t, authConfig(t))
	url := apptest.URL(a)
	alice := apptest.V3(t, url, "alice-1", withCreds("alice", "wonderland"))
	bob := apptest.V3(t, url, "bob-1", withCreds("bob", "builder"))

	// Subscribing beyond the ACL: SUBACK 0x80 in 3.1.1.
	tok := alice.Subscribe("chat/bob/#", 1, nil)
	if !tok.WaitTimeout(apptest.Wait) {
		t.Fatal("subscribe timed out")
	}
	if res := tok.(*pahov3.SubscribeToken).Result()["chat/bob/#"]; res != 0x80 {
		t.Fatalf("denied subscription got return code %#x, want 0x80", res)
	}
	aliceCh, ah := apptest.Sink()
	apptest.Done(t, alice.Subscribe("chat/all", 1, ah))
	apptest.Done(t, alice.Subscribe("chat/alice/#", 1, ah))

	// Bob may write chat/all; alice may only read it.
	apptest.Done(t, bob.Publish("chat/all", 1, false, "from bob"))
	if m := apptest.Next(t, aliceCh); string(m.Payload()) != "from bob" {
		t.Fatalf("alice got %q", m.Payload())
	}
	// Delivery is checked too: bob's own inbox pattern is not alice's.
	bobInbox, bh := apptest.Sink()
	apptest.Done(t, bob.Subscribe("inbox/bob/#", 1, bh))
	apptest.Done(t, bob.Publish("chat/alice/dm", 1, false, "hi alice"))
	if m := apptest.Next(t, aliceCh); string(m.Payload()) != "hi alice" {
		t.Fatalf("alice got %q", m.Payload())
	}

	// MQTT 5 publish beyond the ACL: PUBACK 0x87 and nothing delivered.
	a5 := apptest.V5(t, a.Addr("mqtt"), &paho.Connect{ClientID: "alice-5", CleanStart: true,
		Username: "alice", UsernameFlag: true, Password: []byte("wonderland"), PasswordFlag: true})
	res, err := a5.Publish(apptest.Ctx(t), &paho.Publish{Topic: "chat/all", QoS: 1, Payload: []byte("forged")})
	if res == nil || res.ReasonCode != 0x87 {
		t.Fatalf("publish to read-only topic: %v %+v, want PUBACK 0x87", err, res)
	}
	res, err = a5.Publish(apptest.Ctx(t), &paho.Publish{Topic: "inbox/bob/x", QoS: 1, Payload: []byte("forged")})
	if res == nil || res.ReasonCode != 0x87 {
		t.Fatalf("publish to another user's pattern topic: %v %+v, want PUBACK 0x87", err, res)
	}
	apptest.None(t, aliceCh, 200*time.Millisecond)
	apptest.None(t, bobInbox, 10*time.Millisecond)
}
