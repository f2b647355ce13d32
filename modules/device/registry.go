package device

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/colonymq/colony/app"
	"github.com/colonymq/colony/rpc"
)

// Device is a registered device as the handlers show it; credentials
// appear only as counts and flags.
type Device struct {
	ID     string            `json:"id"`
	Type   string            `json:"type,omitempty"`
	Labels map[string]string `json:"labels,omitempty"`
	Meta   map[string]any    `json:"meta,omitempty"`
	// Disabled devices are refused at CONNECT and disconnected when disabled.
	Disabled bool `json:"disabled,omitempty"`
	// CertFingerprint pins the device's client certificate (SHA-256 of its
	// DER, hex); empty: any certificate from the client CA whose common
	// name is the device id.
	CertFingerprint string  `json:"cert_fingerprint,omitempty"`
	Claim           string  `json:"claim,omitempty"` // the fleet claim that provisioned it
	CreatedAt       int64   `json:"created_at"`      // Unix ms
	UpdatedAt       int64   `json:"updated_at"`      // Unix ms
	Tokens          int     `json:"tokens"`          // tokens that work now (shown, not stored)
	PSK             bool    `json:"psk"`             // has a PSK for MQTT-SN/DTLS (shown, not stored)
	Status          *Status `json:"status,omitempty"`
}

// deviceRecord is a device as stored, secrets included. Cached records
// are never changed in place: writers store a copy.
type deviceRecord struct {
	Device
	TokenHashes []tokenHash `json:"token_hashes,omitempty"`
	// PSKKey is kept as is, not hashed: DTLS needs the key itself.
	PSKKey []byte `json:"psk_key,omitempty"`
}

// tokenHash is the SHA-256 of a token: tokens are 256 random bits, so a
// fast hash is as safe as bcrypt here and keeps reconnect storms cheap.
type tokenHash struct {
	Hash    string `json:"hash"`
	Expires int64  `json:"expires,omitempty"` // Unix ms; 0: until rotated
}

func (r *deviceRecord) clone() *deviceRecord {
	c := *r
	c.Labels = maps.Clone(r.Labels)
	c.Meta = maps.Clone(r.Meta)
	c.TokenHashes = slices.Clone(r.TokenHashes)
	c.Status = nil
	return &c
}

// view returns what handlers show of r.
func (m *Module) view(r *deviceRecord) *Device {
	d := r.Device
	d.Labels, d.Meta = maps.Clone(r.Labels), maps.Clone(r.Meta)
	t := now()
	for _, h := range r.TokenHashes {
		if h.Expires == 0 || h.Expires > t {
			d.Tokens++
		}
	}
	d.PSK = len(r.PSKKey) > 0
	st := m.presence.status(r.ID)
	d.Status = &st
	return &d
}

// load fills the caches from the store.
func (m *Module) load() error {
	err := m.st.devices.Scan("", func(id string, r deviceRecord) bool {
		m.devs[id] = &r
		return true
	})
	if err != nil {
		return fmt.Errorf("load devices: %w", err)
	}
	err = m.st.claims.Scan("", func(name string, c claimRecord) bool {
		m.claims[name] = &c
		return true
	})
	if err != nil {
		return fmt.Errorf("load claims: %w", err)
	}
	return nil
}

// device returns the cached record of id.
func (m *Module) device(id string) (*deviceRecord, bool) {
	m.mu.RLock()
	r, ok := m.devs[id]
	m.mu.RUnlock()
	return r, ok
}

// save stores r and makes it the cached record.
func (m *Module) save(ctx context.Context, r *deviceRecord) error {
	if err := m.st.devices.Put(ctx, r.ID, *r); err != nil {
		return err
	}
	m.mu.Lock()
	m.devs[r.ID] = r
	m.mu.Unlock()
	return nil
}

// modify applies fn to a copy of device id's record and saves it, one
// writer at a time.
func (m *Module) modify(ctx context.Context, id string, fn func(r *deviceRecord) error) (*deviceRecord, error) {
	m.writeMu.Lock()
	defer m.writeMu.Unlock()
	cur, ok := m.device(id)
	if !ok {
		return nil, notFound("device", id)
	}
	r := cur.clone()
	if err := fn(r); err != nil {
		return nil, err
	}
	r.UpdatedAt = now()
	if err := m.save(ctx, r); err != nil {
		return nil, err
	}
	return r, nil
}

// newSecret returns a random credential with a readable prefix.
func newSecret(prefix string) string {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		panic("crypto/rand failed: " + err.Error()) // cannot happen on supported platforms
	}
	return prefix + base64.RawURLEncoding.EncodeToString(b)
}

func hashSecret(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}

// matchToken reports whether token is one of r's working tokens.
func matchToken(hashes []tokenHash, token []byte) bool {
	sum := sha256.Sum256(token)
	want := []byte(hex.EncodeToString(sum[:]))
	t := now()
	ok := false
	for _, h := range hashes {
		if (h.Expires == 0 || h.Expires > t) && subtle.ConstantTimeCompare([]byte(h.Hash), want) == 1 {
			ok = true
		}
	}
	return ok
}

// CreateReq registers a device.
type CreateReq struct {
	ID              string            `json:"id"`
	Type            string            `json:"type,omitempty"`
	Labels          map[string]string `json:"labels,omitempty"`
	Meta            map[string]any    `json:"meta,omitempty"`
	CertFingerprint string            `json:"cert_fingerprint,omitempty"`
	// NoToken registers the device without a token (certificate or PSK only).
	NoToken bool `json:"no_token,omitempty"`
}

// Created is a new device with its first token, shown only this once.
type Created struct {
	Device *Device `json:"device"`
	Token  string  `json:"token,omitempty"`
}

// IDReq names a device.
type IDReq struct {
	ID string `json:"id"`
}

// UpdateReq changes a device; absent fields stay as they are, and a
// label or meta key set to null (meta) or "" (labels) is removed.
type UpdateReq struct {
	ID              string            `json:"id"`
	Type            *string           `json:"type,omitempty"`
	Labels          map[string]string `json:"labels,omitempty"`
	Meta            map[string]any    `json:"meta,omitempty"`
	CertFingerprint *string           `json:"cert_fingerprint,omitempty"`
}

// ListReq filters and pages the registry.
type ListReq struct {
	Type   string            `json:"type,omitempty"`
	Labels map[string]string `json:"labels,omitempty"` // all must match
	After  string            `json:"after,omitempty"`  // page after this id
	Limit  int               `json:"limit,omitempty"`  // default 100, at most 1000
}

// List is a page of devices in id order; Next is set when more follow.
type List struct {
	Devices []*Device `json:"devices"`
	Next    string    `json:"next,omitempty"`
}

// TokenReq rotates a device's token.
type TokenReq struct {
	ID string `json:"id"`
	// Grace is how long the previous tokens keep working, as a Go
	// duration ("10m"); default modules.device.token_grace; "0s" revokes
	// them now.
	Grace string `json:"grace,omitempty"`
}

// Token is a new device token, shown only this once.
type Token struct {
	ID       string `json:"id"`
	Token    string `json:"token"`
	OldUntil int64  `json:"old_until,omitempty"` // when the previous tokens stop working (Unix ms)
}

// PSK is a device's pre-shared key for the MQTT-SN/DTLS gateway.
type PSK struct {
	Identity string `json:"identity"` // the device id
	Key      string `json:"key"`      // hex
}

// Summary counts the fleet.
type Summary struct {
	Devices  int            `json:"devices"`
	Online   int            `json:"online"`
	Disabled int            `json:"disabled"`
	ByType   map[string]int `json:"by_type"`
}

func (m *Module) create(ctx context.Context, req *CreateReq) (*Created, error) {
	if err := m.admin(ctx); err != nil {
		return nil, err
	}
	return m.createDevice(ctx, req, "")
}

func (m *Module) createDevice(ctx context.Context, req *CreateReq, claim string) (*Created, error) {
	if err := checkName("device id", req.ID); err != nil {
		return nil, err
	}
	if err := checkFingerprint(req.CertFingerprint); err != nil {
		return nil, err
	}
	m.writeMu.Lock()
	defer m.writeMu.Unlock()
	if _, ok := m.device(req.ID); ok {
		return nil, rpc.Errorf(rpc.CodeBadRequest, "device %q: %w", req.ID, ErrExists)
	}
	t := now()
	r := &deviceRecord{Device: Device{ID: req.ID, Type: req.Type, Labels: req.Labels, Meta: req.Meta,
		CertFingerprint: strings.ToLower(req.CertFingerprint), Claim: claim, CreatedAt: t, UpdatedAt: t}}
	out := &Created{}
	if !req.NoToken {
		out.Token = newSecret("dt_")
		r.TokenHashes = []tokenHash{{Hash: hashSecret(out.Token)}}
	}
	if err := m.save(ctx, r); err != nil {
		return nil, err
	}
	m.log.Info().Str("device", r.ID).Str("claim", claim).Msg("device registered")
	out.Device = m.view(r)
	return out, nil
}

func checkFingerprint(fp string) error {
	if fp == "" {
		return nil
	}
	if b, err := hex.DecodeString(fp); err != nil || len(b) != sha256.Size {
		return rpc.Errorf(rpc.CodeBadRequest, "cert_fingerprint: want 64 hex digits (SHA-256 of the certificate's DER): %w", ErrInvalid)
	}
	return nil
}

func (m *Module) get(ctx context.Context, req *IDReq) (*Device, error) {
	if err := m.admin(ctx); err != nil {
		return nil, err
	}
	r, ok := m.device(req.ID)
	if !ok {
		return nil, notFound("device", req.ID)
	}
	return m.view(r), nil
}

func (m *Module) list(ctx context.Context, req *ListReq) (*List, error) {
	if err := m.admin(ctx); err != nil {
		return nil, err
	}
	limit := req.Limit
	if limit <= 0 {
		limit = 100
	}
	limit = min(limit, 1000)
	m.mu.RLock()
	ids := make([]string, 0, len(m.devs))
	for id, r := range m.devs {
		if id > req.After && matches(r, req.Type, req.Labels) {
			ids = append(ids, id)
		}
	}
	m.mu.RUnlock()
	sort.Strings(ids)
	out := &List{Devices: []*Device{}}
	for i, id := range ids {
		if i == limit {
			out.Next = ids[i-1]
			break
		}
		if r, ok := m.device(id); ok {
			out.Devices = append(out.Devices, m.view(r))
		}
	}
	return out, nil
}

func matches(r *deviceRecord, typ string, labels map[string]string) bool {
	if typ != "" && r.Type != typ {
		return false
	}
	for k, v := range labels {
		if r.Labels[k] != v {
			return false
		}
	}
	return true
}

func (m *Module) update(ctx context.Context, req *UpdateReq) (*Device, error) {
	if err := m.admin(ctx); err != nil {
		return nil, err
	}
	if req.CertFingerprint != nil {
		if err := checkFingerprint(*req.CertFingerprint); err != nil {
			return nil, err
		}
	}
	r, err := m.modify(ctx, req.ID, func(r *deviceRecord) error {
		if req.Type != nil {
			r.Type = *req.Type
		}
		if req.CertFingerprint != nil {
			r.CertFingerprint = strings.ToLower(*req.CertFingerprint)
		}
		for k, v := range req.Labels {
			if r.Labels == nil {
				r.Labels = map[string]string{}
			}
			if v == "" {
				delete(r.Labels, k)
			} else {
				r.Labels[k] = v
			}
		}
		for k, v := range req.Meta {
			if r.Meta == nil {
				r.Meta = map[string]any{}
			}
			if v == nil {
				delete(r.Meta, k)
			} else {
				r.Meta[k] = v
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return m.view(r), nil
}

func (m *Module) setDisabled(disabled bool) func(ctx context.Context, req *IDReq) (*Device, error) {
	return func(ctx context.Context, req *IDReq) (*Device, error) {
		if err := m.admin(ctx); err != nil {
			return nil, err
		}
		r, err := m.modify(ctx, req.ID, func(r *deviceRecord) error {
			r.Disabled = disabled
			return nil
		})
		if err != nil {
			return nil, err
		}
		if disabled {
			m.host.Server.KickUser(userPrefix+req.ID, "device disabled")
		}
		m.log.Info().Str("device", req.ID).Bool("disabled", disabled).Msg("device access changed")
		return m.view(r), nil
	}
}

func (m *Module) remove(ctx context.Context, req *IDReq) (*struct{}, error) {
	if err := m.admin(ctx); err != nil {
		return nil, err
	}
	m.writeMu.Lock()
	if _, ok := m.device(req.ID); !ok {
		m.writeMu.Unlock()
		return nil, notFound("device", req.ID)
	}
	if err := m.st.devices.Delete(ctx, req.ID); err != nil {
		m.writeMu.Unlock()
		return nil, err
	}
	m.mu.Lock()
	delete(m.devs, req.ID)
	m.mu.Unlock()
	m.writeMu.Unlock()
	m.host.Server.KickUser(userPrefix+req.ID, "device deleted")
	if err := m.purge(ctx, req.ID); err != nil {
		return nil, fmt.Errorf("delete data of device %s: %w", req.ID, err)
	}
	m.log.Info().Str("device", req.ID).Msg("device deleted")
	return &struct{}{}, nil
}

// purge deletes a deleted device's telemetry, shadows, status and queue.
func (m *Module) purge(ctx context.Context, id string) error {
	if err := deletePrefix(ctx, m.st.db, m.st.points, id+sep); err != nil {
		return err
	}
	if err := deletePrefix(ctx, m.st.db, m.st.shadows, id+sep); err != nil {
		return err
	}
	if err := deletePrefix(ctx, m.st.db, m.st.queue, id+sep); err != nil {
		return err
	}
	b := m.st.db.NewBatch()
	m.st.latest.DeleteIn(b, id)
	m.st.counts.DeleteIn(b, id)
	m.st.status.DeleteIn(b, id)
	m.ingest.forget(id)
	m.presence.forget(id)
	return b.Commit(ctx)
}

func (m *Module) rotate(ctx context.Context, req *TokenReq) (*Token, error) {
	if err := m.admin(ctx); err != nil {
		return nil, err
	}
	grace := time.Duration(m.opts.TokenGrace)
	if req.Grace != "" {
		d, err := time.ParseDuration(req.Grace)
		if err != nil || d < 0 {
			return nil, rpc.Errorf(rpc.CodeBadRequest, "grace %q: want a duration like \"10m\": %w", req.Grace, ErrInvalid)
		}
		grace = d
	}
	tok := newSecret("dt_")
	out := &Token{ID: req.ID, Token: tok}
	_, err := m.modify(ctx, req.ID, func(r *deviceRecord) error {
		until := now() + grace.Milliseconds()
		keep := r.TokenHashes[:0]
		for _, h := range r.TokenHashes {
			if h.Expires != 0 && h.Expires <= now() {
				continue
			}
			if grace == 0 {
				continue
			}
			if h.Expires == 0 || h.Expires > until {
				h.Expires = until
			}
			keep = append(keep, h)
			out.OldUntil = until
		}
		r.TokenHashes = append(keep, tokenHash{Hash: hashSecret(tok)})
		return nil
	})
	if err != nil {
		return nil, err
	}
	m.log.Info().Str("device", req.ID).Dur("grace", grace).Msg("device token rotated")
	return out, nil
}

func (m *Module) newPSK(ctx context.Context, req *IDReq) (*PSK, error) {
	if err := m.admin(ctx); err != nil {
		return nil, err
	}
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		return nil, fmt.Errorf("make psk: %w", err)
	}
	if _, err := m.modify(ctx, req.ID, func(r *deviceRecord) error {
		r.PSKKey = key
		return nil
	}); err != nil {
		return nil, err
	}
	return &PSK{Identity: req.ID, Key: hex.EncodeToString(key)}, nil
}

// LookupPSK returns the pre-shared key of the device whose id is
// identity, for the MQTT-SN gateway's DTLS handshakes (app.PSKSource,
// wired by mqttsn.psk_from = "device"). It fails for disabled devices
// (ErrDisabled), and for unknown devices and devices without a PSK (make
// one with the psk handler or `colony device psk`) with ErrNotFound and
// app.ErrNoPSK, which lets the gateway ask its psk_file next.
func (m *Module) LookupPSK(identity string) ([]byte, error) {
	r, ok := m.device(identity)
	switch {
	case !ok:
		return nil, fmt.Errorf("psk identity %q: %w: %w", identity, ErrNotFound, app.ErrNoPSK)
	case r.Disabled:
		return nil, fmt.Errorf("psk identity %q: %w", identity, ErrDisabled)
	case len(r.PSKKey) == 0:
		return nil, fmt.Errorf("psk identity %q: device has no psk: %w: %w", identity, ErrNotFound, app.ErrNoPSK)
	}
	return slices.Clone(r.PSKKey), nil
}

func (m *Module) summary(ctx context.Context, _ *struct{}) (*Summary, error) {
	if err := m.admin(ctx); err != nil {
		return nil, err
	}
	s := &Summary{ByType: map[string]int{}}
	m.mu.RLock()
	defer m.mu.RUnlock()
	for id, r := range m.devs {
		s.Devices++
		if r.Disabled {
			s.Disabled++
		}
		if m.presence.online(id) {
			s.Online++
		}
		s.ByType[r.Type]++
	}
	return s, nil
}

// claimRecord is a fleet claim credential: devices that connect with it
// may register themselves once each.
type claimRecord struct {
	Name       string            `json:"name"`
	Hash       string            `json:"hash"`
	Type       string            `json:"type,omitempty"`
	Labels     map[string]string `json:"labels,omitempty"`
	Expires    int64             `json:"expires,omitempty"` // Unix ms; 0: never
	MaxDevices int               `json:"max_devices,omitempty"`
	Used       int               `json:"used"`
	CreatedAt  int64             `json:"created_at"`
}

// ClaimReq creates a fleet claim.
type ClaimReq struct {
	Name       string            `json:"name"`
	Type       string            `json:"type,omitempty"`   // given to the devices it provisions
	Labels     map[string]string `json:"labels,omitempty"` // given to the devices it provisions
	TTL        string            `json:"ttl,omitempty"`    // how long it works ("720h"); default: until deleted
	MaxDevices int               `json:"max_devices,omitempty"`
}

// Claim is a fleet claim; Secret is shown only when it is created.
type Claim struct {
	Name       string            `json:"name"`
	Username   string            `json:"username"` // what devices connect with: claim:<name>
	Secret     string            `json:"secret,omitempty"`
	Type       string            `json:"type,omitempty"`
	Labels     map[string]string `json:"labels,omitempty"`
	Expires    int64             `json:"expires,omitempty"`
	MaxDevices int               `json:"max_devices,omitempty"`
	Used       int               `json:"used"`
}

// Claims lists the fleet claims.
type Claims struct {
	Claims []Claim `json:"claims"`
}

// ProvisionReq asks a claim connection for a device of its own.
type ProvisionReq struct {
	ID string `json:"id,omitempty"` // default: the caller's client id
}

func claimView(c *claimRecord) Claim {
	return Claim{Name: c.Name, Username: claimUser + c.Name, Type: c.Type, Labels: c.Labels, Expires: c.Expires,
		MaxDevices: c.MaxDevices, Used: c.Used}
}

func (m *Module) claimCreate(ctx context.Context, req *ClaimReq) (*Claim, error) {
	if err := m.admin(ctx); err != nil {
		return nil, err
	}
	if err := checkName("claim name", req.Name); err != nil {
		return nil, err
	}
	var ttl time.Duration
	if req.TTL != "" {
		d, err := time.ParseDuration(req.TTL)
		if err != nil || d <= 0 {
			return nil, rpc.Errorf(rpc.CodeBadRequest, "ttl %q: want a positive duration: %w", req.TTL, ErrInvalid)
		}
		ttl = d
	}
	m.writeMu.Lock()
	defer m.writeMu.Unlock()
	m.mu.RLock()
	_, exists := m.claims[req.Name]
	m.mu.RUnlock()
	if exists {
		return nil, rpc.Errorf(rpc.CodeBadRequest, "claim %q: %w", req.Name, ErrExists)
	}
	secret := newSecret("dc_")
	c := &claimRecord{Name: req.Name, Hash: hashSecret(secret), Type: req.Type, Labels: req.Labels,
		MaxDevices: req.MaxDevices, CreatedAt: now()}
	if ttl > 0 {
		c.Expires = now() + ttl.Milliseconds()
	}
	if err := m.st.claims.Put(ctx, c.Name, *c); err != nil {
		return nil, err
	}
	m.mu.Lock()
	m.claims[c.Name] = c
	m.mu.Unlock()
	v := claimView(c)
	v.Secret = secret
	return &v, nil
}

func (m *Module) claimList(ctx context.Context, _ *struct{}) (*Claims, error) {
	if err := m.admin(ctx); err != nil {
		return nil, err
	}
	out := &Claims{Claims: []Claim{}}
	m.mu.RLock()
	for _, c := range m.claims {
		out.Claims = append(out.Claims, claimView(c))
	}
	m.mu.RUnlock()
	sort.Slice(out.Claims, func(i, j int) bool { return out.Claims[i].Name < out.Claims[j].Name })
	return out, nil
}

// NameReq names a claim or job.
type NameReq struct {
	Name string `json:"name"`
}

func (m *Module) claimDelete(ctx context.Context, req *NameReq) (*struct{}, error) {
	if err := m.admin(ctx); err != nil {
		return nil, err
	}
	m.writeMu.Lock()
	defer m.writeMu.Unlock()
	m.mu.RLock()
	_, ok := m.claims[req.Name]
	m.mu.RUnlock()
	if !ok {
		return nil, notFound("claim", req.Name)
	}
	if err := m.st.claims.Delete(ctx, req.Name); err != nil {
		return nil, err
	}
	m.mu.Lock()
	delete(m.claims, req.Name)
	m.mu.Unlock()
	m.host.Server.KickUser(claimUser+req.Name, "claim deleted")
	return &struct{}{}, nil
}

// provision registers the calling claim connection's device and returns
// its token: fleet provisioning by claim.
func (m *Module) provision(ctx context.Context, req *ProvisionReq) (*Created, error) {
	c, _ := rpc.CallerFrom(ctx)
	name, ok := strings.CutPrefix(c.UserID, claimUser)
	if !ok {
		return nil, rpc.Errorf(rpc.CodeForbidden, "provision is for connections made with a fleet claim (username claim:<name>)")
	}
	id := req.ID
	if id == "" {
		id = c.ClientID
	}
	if err := checkName("device id", id); err != nil {
		return nil, err
	}
	m.mu.RLock()
	cl, ok := m.claims[name]
	m.mu.RUnlock()
	if !ok || (cl.Expires != 0 && cl.Expires <= now()) {
		return nil, rpc.Errorf(rpc.CodeForbidden, "claim %q is gone or expired", name)
	}
	if cl.MaxDevices > 0 && cl.Used >= cl.MaxDevices {
		return nil, rpc.Errorf(rpc.CodeForbidden, "claim %q has provisioned its %d devices", name, cl.MaxDevices)
	}
	out, err := m.createDevice(ctx, &CreateReq{ID: id, Type: cl.Type, Labels: maps.Clone(cl.Labels)}, name)
	if err != nil {
		return nil, err
	}
	m.writeMu.Lock()
	defer m.writeMu.Unlock()
	m.mu.RLock()
	cur, ok := m.claims[name]
	m.mu.RUnlock()
	if ok {
		n := *cur
		n.Used++
		if err := m.st.claims.Put(ctx, n.Name, n); err != nil {
			return nil, err
		}
		m.mu.Lock()
		m.claims[name] = &n
		m.mu.Unlock()
	}
	return out, nil
}
