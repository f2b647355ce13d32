package server_test

import (
	"errors"
	"fmt"
	"net"
	"testing"

	"github.com/colonymq/colony/app/apptest"
	"github.com/colonymq/colony/server"
)

func TestClaimUserOnLoopbackWithoutPasswords(t *testing.T) {
	a := apptest.Run(t, apptest.Config(t))
	apptest.V3(t, apptest.URL(a), "c1")
	srv := a.Server()
	// The CONNACK may reach the client just before the server registers
	// the connection: the first claim can find no client yet.
	apptest.Eventually(t, func() error { return srv.ClaimUser("c1", "alice") })
	if u, ok := srv.UserOf("c1"); !ok || u != "alice" {
		t.Fatalf("UserOf(c1) = %q, %v; want alice", u, ok)
	}
	if err := srv.ClaimUser("c1", ""); !errors.Is(err, server.ErrInvalidOptions) {
		t.Fatalf("empty user id: %v", err)
	}
	if err := srv.ClaimUser("nobody", "bob"); !errors.Is(err, server.ErrNoClient) {
		t.Fatalf("unknown client: %v", err)
	}
}

func TestClaimUserRefusedWithPasswords(t *testing.T) {
	a := apptest.Run(t, authConfig(t))
	apptest.V3(t, apptest.URL(a), "alice-1", withCreds("alice", "wonderland"))
	srv := a.Server()
	apptest.Eventually(t, func() error { return refused(srv.ClaimUser("alice-1", "bob")) })
	if u, _ := srv.UserOf("alice-1"); u != "alice" {
		t.Fatalf("a refused claim changed the user to %q", u)
	}
}

func TestClaimUserRefusedOffLoopback(t *testing.T) {
	cfg := apptest.Config(t)
	cfg.Listeners.MQTT = "0.0.0.0:0"
	yes := true
	cfg.Auth.AllowAnonymous = &yes
	a := apptest.Run(t, cfg)
	_, port, err := net.SplitHostPort(a.Addr("mqtt"))
	if err != nil {
		t.Fatal(err)
	}
	apptest.V3(t, "tcp://127.0.0.1:"+port, "c1")
	apptest.Eventually(t, func() error { return refused(a.Server().ClaimUser("c1", "alice")) })
	if u, ok := a.Server().UserOf("c1"); ok {
		t.Fatalf("a refused claim bound %q", u)
	}
}

// refused returns nil for ErrNotTrusted, and an error otherwise.
func refused(err error) error {
	if errors.Is(err, server.ErrNotTrusted) {
		return nil
	}
	return fmt.Errorf("claim: %v, want ErrNotTrusted", err)
}
