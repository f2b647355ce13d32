package device

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"fmt"
	"strings"

	"github.com/colonymq/colony/server"
	"github.com/colonymq/colony/store"
)

// authenticate admits devices and claim connections (server.Authenticator):
//
//   - a client certificate verified against tls.client_ca_file (or the
//     MQTT-SN gateway's client_ca_file) whose common name is a
//     registered device id (and, when the device pins one, whose
//     fingerprint matches) is that device, whatever the username says;
//   - username = a device id with password = one of its tokens;
//   - username = claim:<name> with password = the claim's secret is a
//     claim connection, which may only call $rpc/device/provision;
//   - a gateway client whose transport vouched for a registered device id
//     (an MQTT-SN device's DTLS PSK identity, see
//     server.ConnectInfo.Vouched) is that device, without a token; one
//     vouched for by a DTLS certificate is judged as a TLS certificate is.
//
// Disabled devices and wrong secrets are refused. Any other username is
// passed on to the password file, and any other vouched name to the ACL
// file.
func (m *Module) authenticate(c *server.ConnectInfo) (server.Verdict, server.Identity) {
	if len(c.Certificates) > 0 {
		leaf := c.Certificates[0]
		if r, ok := m.device(leaf.Subject.CommonName); ok {
			sum := sha256.Sum256(leaf.Raw)
			if r.Disabled || (r.CertFingerprint != "" && r.CertFingerprint != hex.EncodeToString(sum[:])) {
				m.log.Info().Str("device", r.ID).Str("remote", c.Remote).Bool("disabled", r.Disabled).Msg("device certificate refused")
				return server.Deny, server.Identity{}
			}
			return server.Allow, m.deviceIdentity(r.ID)
		}
	}
	if c.Vouched != "" {
		r, ok := m.device(c.Vouched)
		if !ok {
			return server.Pass, server.Identity{}
		}
		if r.Disabled {
			m.log.Info().Str("device", r.ID).Str("remote", c.Remote).Str("listener", c.Listener).Msg("disabled device refused")
			return server.Deny, server.Identity{}
		}
		return server.Allow, m.deviceIdentity(r.ID)
	}
	if name, ok := strings.CutPrefix(c.Username, claimUser); ok {
		m.mu.RLock()
		cl, ok := m.claims[name]
		m.mu.RUnlock()
		if !ok || (cl.Expires != 0 && cl.Expires <= now()) ||
			subtle.ConstantTimeCompare([]byte(cl.Hash), []byte(hashSecret(string(c.Password)))) != 1 {
			return server.Deny, server.Identity{}
		}
		return server.Allow, claimIdentity(c.ClientID, name)
	}
	r, ok := m.device(c.Username)
	if !ok {
		return server.Pass, server.Identity{}
	}
	if r.Disabled || !matchToken(r.TokenHashes, c.Password) {
		m.log.Info().Str("device", r.ID).Str("remote", c.Remote).Bool("disabled", r.Disabled).Msg("device login refused")
		return server.Deny, server.Identity{}
	}
	return server.Allow, m.deviceIdentity(r.ID)
}

// deviceIdentity confines a device to dev/<id>/…: it reads everything
// there and writes everything but what only the server sends (commands,
// job notifications, its status).
func (m *Module) deviceIdentity(id string) server.Identity {
	own := TopicRoot + id + "/"
	serverOnly := []string{own + "cmd/", own + "status", own + "jobs/notify"}
	return server.Identity{UserID: userPrefix + id, Access: func(topic string, write bool) bool {
		if !strings.HasPrefix(topic, own) {
			return false
		}
		if write {
			for _, p := range serverOnly {
				if strings.HasPrefix(topic, p) {
					return false
				}
			}
		}
		return true
	}}
}

// claimIdentity lets a claim connection call provision and read the
// replies: on the request topic (MQTT 3.1.1) or under claim/<client id>/
// (an MQTT 5 response topic).
func claimIdentity(clientID, name string) server.Identity {
	replies := ClaimRoot + clientID + "/"
	const req = server.RPCPrefix + ID + "/provision"
	return server.Identity{UserID: claimUser + name, Access: func(topic string, write bool) bool {
		if write {
			return topic == req || (strings.HasPrefix(topic, req+"/") && strings.Count(topic, "/") == 3)
		}
		return validName(clientID) && strings.HasPrefix(topic, replies)
	}}
}

// deletePrefix deletes every key of b starting with prefix, in batches.
func deletePrefix[T any](ctx context.Context, db *store.DB, b *store.Bucket[T], prefix string) error {
	for {
		var keys []string
		if err := b.Scan(prefix, func(k string, _ T) bool {
			keys = append(keys, k)
			return len(keys) < 10_000
		}); err != nil {
			return err
		}
		if len(keys) == 0 {
			return nil
		}
		bt := db.NewBatch()
		for _, k := range keys {
			b.DeleteIn(bt, k)
		}
		if err := bt.Commit(ctx); err != nil {
			return fmt.Errorf("delete %d keys: %w", len(keys), err)
		}
	}
}
