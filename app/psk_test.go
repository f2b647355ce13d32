package app_test

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/colonymq/colony/app"
	"github.com/colonymq/colony/app/apptest"
	"github.com/colonymq/colony/server/mqttsn"
	"github.com/colonymq/colony/server/mqttsn/client"
)

// keyring is a module serving PSKs: "k1" has a key, "off" is refused,
// every other identity it does not know.
type keyring struct{ app.Base }

func (*keyring) ID() string { return "keyring" }

var errRefused = errors.New("identity refused")

func (*keyring) LookupPSK(identity string) ([]byte, error) {
	switch identity {
	case "k1":
		return []byte("module-key-k1"), nil
	case "off":
		return nil, fmt.Errorf("%s: %w", identity, errRefused)
	}
	return nil, fmt.Errorf("%s: %w", identity, app.ErrNoPSK)
}

var _ app.PSKSource = (*keyring)(nil)

// plain is a module that serves no PSKs.
type plain struct{ app.Base }

func (*plain) ID() string { return "plain" }

func pskConfig(t *testing.T, from string, enabled ...string) app.Config {
	t.Helper()
	file := filepath.Join(t.TempDir(), "psk")
	lines := []string{"f1:" + hex.EncodeToString([]byte("file-key-f1")), "k1:" + hex.EncodeToString([]byte("file-key-k1")),
		"off:" + hex.EncodeToString([]byte("file-key-off"))}
	if err := os.WriteFile(file, []byte(strings.Join(lines, "\n")), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := apptest.Config(t)
	cfg.MQTTSN.DTLSListen = "127.0.0.1:0"
	cfg.MQTTSN.PSKFile = file
	cfg.MQTTSN.PSKFrom = from
	cfg.MQTTSN.HandshakeTimeout = app.Duration(2 * time.Second)
	cfg.Modules.Enabled = enabled
	return cfg
}

// TestPSKFromModule: mqttsn.psk_from hands the DTLS gateway a module's
// keys, with psk_file for the identities the module does not know; an
// identity the module refuses stays refused.
func TestPSKFromModule(t *testing.T) {
	a := apptest.Run(t, pskConfig(t, "keyring"), &keyring{}, &plain{})
	handshake := func(identity, key string) error {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		c, err := client.Dial(ctx, a.Addr(mqttsn.ListenerDTLS), client.Options{ClientID: identity,
			DTLS: &client.DTLS{PSKIdentity: identity, PSK: []byte(key)}})
		if err != nil {
			return err
		}
		return c.Close()
	}
	for _, c := range []struct {
		identity, key string
		ok            bool
	}{
		{"k1", "module-key-k1", true}, // the module's key ...
		{"k1", "file-key-k1", false},  // ... wins over the file's
		{"f1", "file-key-f1", true},   // unknown to the module: the file's
		{"off", "file-key-off", false},
		{"nobody", "x", false},
	} {
		if err := handshake(c.identity, c.key); (err == nil) != c.ok {
			t.Errorf("handshake as %s with %q: %v, want ok=%v", c.identity, c.key, err, c.ok)
		}
	}
}

// TestPSKFromErrors: psk_from must name a module of the binary that is
// enabled on this node and serves PSKs.
func TestPSKFromErrors(t *testing.T) {
	for _, c := range []struct {
		from    string
		enabled []string
		want    string
	}{
		{"nope", nil, `unknown module "nope"`},
		{"plain", nil, `module "plain" serves no PSKs`},
		{"keyring", []string{"plain"}, `module "keyring" is not enabled`},
	} {
		a := app.New(pskConfig(t, c.from, c.enabled...), apptest.Logger(t))
		if err := a.Use(&keyring{}, &plain{}); err != nil {
			t.Fatal(err)
		}
		err := a.Start(context.Background())
		if err == nil {
			apptest.Stop(t, a)
		}
		if !errors.Is(err, app.ErrConfig) || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "mqttsn.psk_from") {
			t.Errorf("psk_from %q: %v, want an ErrConfig naming mqttsn.psk_from: %s", c.from, err, c.want)
		}
	}
}
