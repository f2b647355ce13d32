package server_test

import (
	"errors"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	pahov3 "github.com/eclipse/paho.mqtt.golang"

	"github.com/colonymq/colony/app"
	"github.com/colonymq/colony/app/apptest"
	"github.com/colonymq/colony/server"
)

// inbox is the guard the im module installs: users read their own
// im/u/<uid>/… and nobody publishes there.
var inbox = server.TopicGuard{Filter: "im/u/#", Read: []string{"im/u/%u/#"}}

// bound connects a v3 client and binds it to user, as a login module would.
func bound(t *testing.T, a *app.App, id, user string) pahov3.Client {
	t.Helper()
	c := apptest.V3(t, apptest.URL(a), id)
	// The CONNACK can reach the client a moment before the server has
	// registered the connection, so the first bind may find no client.
	apptest.Eventually(t, func() error { return a.Server().BindUser(id, user) })
	return c
}

func subCode(t *testing.T, c pahov3.Client, filter string, h pahov3.MessageHandler) byte {
	t.Helper()
	tok := c.Subscribe(filter, 1, h)
	if !tok.WaitTimeout(apptest.Wait) {
		t.Fatal("subscribe timed out")
	}
	return tok.(*pahov3.SubscribeToken).Result()[filter]
}

func TestGuardWithoutACLFile(t *testing.T) {
	a := apptest.Run(t, apptest.Config(t))
	if err := a.Server().Guard(inbox); err != nil {
		t.Fatal(err)
	}
	alice := bound(t, a, "alice-1", "alice")
	anon := apptest.V3(t, apptest.URL(a), "anon")

	aliceCh, ah := apptest.Sink()
	for filter, want := range map[string]byte{
		"im/u/alice/#":   1,
		"im/u/bob/#":     0x80,
		"im/u/+/msg":     0x80, // inside the space, but wider than alice's own
		"im/u/alice":     1,    // "#" in the rule also matches its parent level, as in MQTT
		"elsewhere/#":    1,
		"im/other/topic": 1, // outside the guard
	} {
		// paho routes to a handler by filter whatever the SUBACK said, so
		// only the two filters whose messages the test reads get one.
		var h pahov3.MessageHandler
		if filter == "im/u/alice/#" || filter == "elsewhere/#" {
			h = ah
		}
		if got := subCode(t, alice, filter, h); got != want {
			t.Errorf("alice subscribing %s: SUBACK %#x, want %#x", filter, got, want)
		}
	}
	if got := subCode(t, anon, "im/u/alice/#", nil); got != 0x80 {
		t.Errorf("unbound client subscribing im/u/alice/#: SUBACK %#x, want 0x80", got)
	}
	// A filter wider than the space may be subscribed, but carries nothing
	// from inside it to those who may not read it.
	anonCh, nh := apptest.Sink()
	if got := subCode(t, anon, "#", nh); got != 1 {
		t.Fatalf("anon subscribing #: SUBACK %#x", got)
	}

	if err := a.Server().Publish("im/u/alice/msg", []byte("for alice"), false, 1); err != nil {
		t.Fatal(err)
	}
	if err := a.Server().Publish("elsewhere/x", []byte("public"), false, 1); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"for alice", "public"} {
		if m := apptest.Next(t, aliceCh); string(m.Payload()) != want {
			t.Fatalf("alice got %q on %s, want %q", m.Payload(), m.Topic(), want)
		}
	}
	// Both went to anon's "#" in this order: the public one proves the
	// first was withheld rather than late.
	if m := apptest.Next(t, anonCh); m.Topic() != "elsewhere/x" {
		t.Fatalf("anon's # got %s (%q), want only elsewhere/x", m.Topic(), m.Payload())
	}

	// Clients never publish inside the space, not even to their own topics.
	a5 := apptest.V5(t, a.Addr("mqtt"), &paho.Connect{ClientID: "alice-5", CleanStart: true})
	apptest.Eventually(t, func() error { return a.Server().BindUser("alice-5", "alice") })
	for _, topic := range []string{"im/u/alice/msg", "im/u/bob/msg"} {
		res, err := a5.Publish(apptest.Ctx(t), &paho.Publish{Topic: topic, QoS: 1, Payload: []byte("forged")})
		if res == nil || res.ReasonCode != 0x87 {
			t.Fatalf("publish to %s: %v %+v, want PUBACK 0x87", topic, err, res)
		}
	}
	apptest.None(t, aliceCh, 100*time.Millisecond)

	// Rebinding changes what the connection may read, from the next delivery on.
	if err := a.Server().BindUser("alice-1", "mallory"); err != nil {
		t.Fatal(err)
	}
	if err := a.Server().Publish("im/u/alice/msg", []byte("after rebind"), false, 1); err != nil {
		t.Fatal(err)
	}
	if err := a.Server().Publish("elsewhere/y", []byte("marker"), false, 1); err != nil {
		t.Fatal(err)
	}
	if m := apptest.Next(t, aliceCh); string(m.Payload()) != "marker" {
		t.Fatalf("rebound connection got %q on %s, want only the marker", m.Payload(), m.Topic())
	}
}

func TestGuardWriteRulesAndClientIDs(t *testing.T) {
	a := apptest.Run(t, apptest.Config(t))
	if err := a.Server().Guard(server.TopicGuard{Filter: "dev/#", Read: []string{"dev/%c/cmd"}, Write: []string{"dev/%c/state"}}); err != nil {
		t.Fatal(err)
	}
	d5 := apptest.V5(t, a.Addr("mqtt"), &paho.Connect{ClientID: "d1", CleanStart: true})
	for topic, want := range map[string]byte{"dev/d1/state": 0, "dev/d2/state": 0x87, "dev/d1/cmd": 0x87} {
		res, err := d5.Publish(apptest.Ctx(t), &paho.Publish{Topic: topic, QoS: 1, Payload: []byte("x")})
		if res == nil || res.ReasonCode != want {
			t.Errorf("d1 publishing %s: %v %+v, want PUBACK %#x", topic, err, res, want)
		}
	}
	d := apptest.V3(t, apptest.URL(a), "d2")
	if got := subCode(t, d, "dev/d2/cmd", nil); got != 1 {
		t.Errorf("d2 subscribing its own cmd: %#x", got)
	}
	if got := subCode(t, d, "dev/d1/cmd", nil); got != 0x80 {
		t.Errorf("d2 subscribing d1's cmd: %#x, want 0x80", got)
	}
}

func TestGuardRejectsInvalidFilters(t *testing.T) {
	a := apptest.Run(t, apptest.Config(t))
	for _, g := range []server.TopicGuard{
		{Filter: "im/#/x"},
		{Filter: "im/u/#", Read: []string{"im/u/%u/#/x"}},
		{Filter: "im/u/#", Write: []string{""}},
	} {
		if err := a.Server().Guard(g); !errors.Is(err, server.ErrInvalidOptions) {
			t.Errorf("Guard(%+v) = %v, want ErrInvalidOptions", g, err)
		}
	}
}

// A persistent session whose client is away keeps receiving what the
// guard lets its user read, and gets it on reconnecting.
func TestGuardQueuesForAwaySession(t *testing.T) {
	a := apptest.Run(t, apptest.Config(t))
	if err := a.Server().Guard(inbox); err != nil {
		t.Fatal(err)
	}
	persistent := func(o *pahov3.ClientOptions) { o.SetCleanSession(false) }
	bob := apptest.V3(t, apptest.URL(a), "bob-phone", persistent)
	apptest.Eventually(t, func() error { return a.Server().BindUser("bob-phone", "bob") })
	apptest.Done(t, bob.Subscribe("im/u/bob/#", 1, nil))
	bob.Disconnect(50)
	apptest.Eventually(t, func() error {
		if len(a.Server().ClientsOf("bob")) != 0 {
			return errors.New("bob still connected")
		}
		return nil
	})
	if err := a.Server().Publish("im/u/bob/msg", []byte("while away"), false, 1); err != nil {
		t.Fatal(err)
	}
	ch, h := apptest.Sink()
	apptest.V3(t, apptest.URL(a), "bob-phone", persistent, func(o *pahov3.ClientOptions) { o.SetDefaultPublishHandler(h) })
	if m := apptest.Next(t, ch); string(m.Payload()) != "while away" || m.Topic() != "im/u/bob/msg" {
		t.Fatalf("got %q on %s", m.Payload(), m.Topic())
	}
}

// With passwords and an ACL file, the username is the user id, and inside
// the guarded space the guard alone decides.
func TestGuardOverridesACLFileInsideItsSpace(t *testing.T) {
	a := apptest.Run(t, authConfig(t)) // alice's ACL says nothing about im/…
	if err := a.Server().Guard(inbox); err != nil {
		t.Fatal(err)
	}
	alice := apptest.V3(t, apptest.URL(a), "alice-1", withCreds("alice", "wonderland"))
	ch, h := apptest.Sink()
	if got := subCode(t, alice, "im/u/alice/#", h); got != 1 {
		t.Fatalf("alice subscribing her inbox: SUBACK %#x", got)
	}
	if got := subCode(t, alice, "im/u/bob/#", nil); got != 0x80 {
		t.Fatalf("alice subscribing bob's inbox: SUBACK %#x", got)
	}
	if got := subCode(t, alice, "chat/bob/#", nil); got != 0x80 { // the ACL file still rules outside
		t.Fatalf("alice subscribing chat/bob/#: SUBACK %#x", got)
	}
	if err := a.Server().Publish("im/u/alice/msg", []byte("hi"), false, 1); err != nil {
		t.Fatal(err)
	}
	if m := apptest.Next(t, ch); string(m.Payload()) != "hi" {
		t.Fatalf("got %q", m.Payload())
	}
}
