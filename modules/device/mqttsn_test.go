package device_test

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/colonymq/colony/app"
	"github.com/colonymq/colony/app/apptest"
	"github.com/colonymq/colony/modules/device"
	"github.com/colonymq/colony/server/mqttsn"
	"github.com/colonymq/colony/server/mqttsn/client"
	"github.com/colonymq/colony/server/mqttsn/packet"
)

// snConfig is a secured node (no anonymous clients) with the MQTT-SN
// gateway on plain UDP and DTLS; tweak sets where the PSKs come from.
func snConfig(t *testing.T, tweak func(*app.MQTTSNConfig)) app.Config {
	t.Helper()
	cfg := secured(t)
	cfg.MQTTSN.Listen = "127.0.0.1:0"
	cfg.MQTTSN.DTLSListen = "127.0.0.1:0"
	cfg.MQTTSN.RetryInterval = app.Duration(500 * time.Millisecond)
	// A refused handshake shows to the gateway as one that never ends.
	cfg.MQTTSN.HandshakeTimeout = app.Duration(2 * time.Second)
	tweak(&cfg.MQTTSN)
	return cfg
}

// pskFile writes a Mosquitto-format psk_file.
func pskFile(t *testing.T, lines ...string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "psk")
	if err := os.WriteFile(p, []byte(strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// newPSK makes the device's PSK with the psk handler, as `colony device psk` does.
func newPSK(t *testing.T, a *rpcClient, id string) []byte {
	t.Helper()
	var p device.PSK
	a.must("psk", &device.IDReq{ID: id}, &p)
	key, err := hex.DecodeString(p.Key)
	if p.Identity != id || err != nil || len(key) == 0 {
		t.Fatalf("psk of %s: %+v (%v)", id, p, err)
	}
	return key
}

// snTry opens a DTLS association with the PSK and, when that works, an
// MQTT-SN session with client id clientID. A refused handshake fails
// within its own short bound, since DTLS drops what it cannot decrypt.
func snTry(t *testing.T, n *node, identity string, key []byte, clientID string, tweak ...func(*client.Options)) (*client.Client, error) {
	t.Helper()
	hctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	o := client.Options{ClientID: clientID, CleanSession: true,
		RetryInterval: 500 * time.Millisecond, MaxRetries: 10, DTLS: &client.DTLS{PSKIdentity: identity, PSK: key}}
	for _, f := range tweak {
		f(&o)
	}
	c, err := client.Dial(hctx, n.Addr(mqttsn.ListenerDTLS), o)
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Logf("close %s: %v", clientID, err)
		}
	})
	if err := c.Connect(apptest.Ctx(t)); err != nil {
		return c, err
	}
	return c, nil
}

func snDevice(t *testing.T, n *node, identity string, key []byte) *client.Client {
	t.Helper()
	c, err := snTry(t, n, identity, key, identity)
	if err != nil {
		t.Fatalf("mqtt-sn device %s: %v", identity, err)
	}
	return c
}

// boundTo waits for the client's user id: the server binds it once the
// session is established, just after CONNACK.
func boundTo(t *testing.T, n *node, clientID, user string) {
	t.Helper()
	apptest.Eventually(t, func() error {
		if u, _ := n.Server().UserOf(clientID); u != user {
			return fmt.Errorf("%s bound to %q, want %q", clientID, u, user)
		}
		return nil
	})
}

// nextOn returns the device's next message on topic, skipping others.
func nextOn(t *testing.T, c *client.Client, topic string) client.Message {
	t.Helper()
	for {
		if m := apptest.Next(t, c.Messages()); m.Topic == topic {
			return m
		}
	}
}

// TestMQTTSNDevice: an MQTT-SN device authenticated over DTLS by the PSK
// the registry holds (mqttsn.psk_from = "device") is that device: bound
// to dev:<id>, confined to dev/<id>/…, its telemetry stored, its shadow
// and commands served like an MQTT device's.
func TestMQTTSNDevice(t *testing.T) {
	n := start(t, snConfig(t, func(c *app.MQTTSNConfig) { c.PSKFrom = device.ID }), device.Options{})
	a := admin(t, n, "ops")
	a.must("create", &device.CreateReq{ID: "sn-1", Type: "sensor", NoToken: true}, nil)
	a.must("create", &device.CreateReq{ID: "sn-2", Type: "sensor", NoToken: true}, nil)
	key := newPSK(t, a, "sn-1")
	newPSK(t, a, "sn-2")

	dev := snDevice(t, n, "sn-1", key)
	boundTo(t, n, "sn-1", "dev:sn-1")
	apptest.Eventually(t, func() error {
		var d device.Device
		a.must("get", &device.IDReq{ID: "sn-1"}, &d)
		if d.Status == nil || !d.Status.Online {
			return fmt.Errorf("status %+v", d.Status)
		}
		return nil
	})

	// Telemetry (REGISTER, then PUBLISH QoS 1 and 0) is stored and queried.
	const base = int64(1_700_000_000_000)
	for i := range 10 {
		qos := packet.QoS(i % 2)
		if err := dev.Publish(apptest.Ctx(t), "dev/sn-1/telemetry", qos, false,
			fmt.Appendf(nil, `{"ts":%d,"temp":%d}`, base+int64(i)*1000, 20+i)); err != nil {
			t.Fatalf("telemetry %d: %v", i, err)
		}
	}
	var s device.Series
	apptest.Eventually(t, func() error {
		a.must("telemetry", &device.QueryReq{ID: "sn-1", From: base, To: base + 10_000, Limit: 100}, &s)
		if len(s.Points) != 10 {
			return fmt.Errorf("%d points stored", len(s.Points))
		}
		return nil
	})
	if s.Points[0].TS != base || s.Points[9].Values["temp"] != 29 {
		t.Fatalf("points: first %+v, last %+v", s.Points[0], s.Points[9])
	}
	var ds device.Series
	a.must("telemetry", &device.QueryReq{ID: "sn-1", From: base, To: base + 10_000, Step: 5_000, Fields: []string{"temp"}}, &ds)
	if len(ds.Buckets) != 2 || ds.Buckets[1].Fields["temp"] != (device.Agg{Min: 25, Max: 29, Avg: 27, Count: 5}) {
		t.Fatalf("buckets %+v", ds.Buckets)
	}

	// Confined: not another device's topics, not what only the server
	// sends, not outside dev/sn-1/.
	for _, topic := range []string{"dev/sn-2/telemetry", "dev/sn-1/cmd/reboot/x", "dev/sn-1/status", "alerts"} {
		if err := dev.Publish(apptest.Ctx(t), topic, 1, false, []byte(`{"temp":99}`)); !errors.Is(err, client.ErrRejected) {
			t.Fatalf("publish to %s: %v, want rejected", topic, err)
		}
	}
	for _, filter := range []string{"dev/sn-2/#", "dev/+/telemetry", "#"} {
		if _, _, err := dev.Subscribe(apptest.Ctx(t), filter, 1); !errors.Is(err, client.ErrRejected) {
			t.Fatalf("subscribe to %s: %v, want rejected", filter, err)
		}
	}
	var other device.Series
	a.must("telemetry", &device.QueryReq{ID: "sn-2", Limit: 10}, &other)
	if len(other.Points) != 0 {
		t.Fatalf("sn-2 has points %+v", other.Points)
	}

	// Shadow: the app's desired state reaches the device as a delta (the
	// gateway REGISTERs each topic the wildcard brings); the device
	// reports it, with compare-and-set on the version.
	if _, _, err := dev.Subscribe(apptest.Ctx(t), "dev/sn-1/shadow/#", 1); err != nil {
		t.Fatal(err)
	}
	a.must("shadow_update", &device.ShadowUpdate{ID: "sn-1", ClientToken: "app-1",
		State: map[string]any{"desired": map[string]any{"led": "on", "period": 30}}}, nil)
	d := decode(t, nextOn(t, dev, "dev/sn-1/shadow/update/delta").Payload)
	if st := d["state"].(map[string]any); st["led"] != "on" || st["period"] != 30.0 || d["clientToken"] != "app-1" || d["version"] != 1.0 {
		t.Fatalf("delta %v", d)
	}
	if err := dev.Publish(apptest.Ctx(t), "dev/sn-1/shadow/update", 1, false,
		[]byte(`{"state":{"reported":{"led":"on","period":30}},"version":1,"clientToken":"sn-a"}`)); err != nil {
		t.Fatal(err)
	}
	if acc := decode(t, nextOn(t, dev, "dev/sn-1/shadow/update/accepted").Payload); acc["version"] != 2.0 || acc["clientToken"] != "sn-a" {
		t.Fatalf("accepted %v", acc)
	}
	if err := dev.Publish(apptest.Ctx(t), "dev/sn-1/shadow/update", 1, false,
		[]byte(`{"state":{"reported":{"led":"off"}},"version":1,"clientToken":"sn-b"}`)); err != nil {
		t.Fatal(err)
	}
	if rej := decode(t, nextOn(t, dev, "dev/sn-1/shadow/update/rejected").Payload); rej["code"] != 409.0 || rej["clientToken"] != "sn-b" {
		t.Fatalf("rejected %v", rej)
	}
	var sh device.Shadow
	a.must("shadow_get", &device.ShadowReq{ID: "sn-1"}, &sh)
	if sh.Version != 2 || sh.State.Delta != nil || sh.State.Reported["led"] != "on" {
		t.Fatalf("shadow %+v", sh)
	}

	// A command: the device listens on dev/sn-1/cmd/# and answers on
	// dev/sn-1/res/<request id> (MQTT-SN has no MQTT 5 properties, so it
	// uses the MQTT 3.1.1 convention).
	if _, _, err := dev.Subscribe(apptest.Ctx(t), "dev/sn-1/cmd/#", 1); err != nil {
		t.Fatal(err)
	}
	answered := make(chan error, 1)
	go func() {
		for m := range dev.Messages() {
			parts := strings.Split(m.Topic, "/") // dev/sn-1/cmd/<name>/<request id>
			if len(parts) != 5 || parts[2] != "cmd" {
				continue
			}
			ctx, cancel := context.WithTimeout(context.Background(), apptest.Wait)
			answered <- dev.Publish(ctx, "dev/sn-1/res/"+parts[4], 1, false, fmt.Appendf(nil, `{"did":%q,"got":%s}`, parts[3], m.Payload))
			cancel()
			return
		}
	}()
	var c device.Command
	a.must("invoke", &device.InvokeReq{ID: "sn-1", Name: "blink", Payload: json.RawMessage(`{"times":3}`), Timeout: 30}, &c)
	if err := apptest.Next(t, answered); err != nil {
		t.Fatalf("answer: %v", err)
	}
	if c.Status != device.CmdDone || string(c.Response) != `{"did":"blink","got":{"times":3}}` {
		t.Fatalf("command %+v (response %s)", c, c.Response)
	}

	// Disabling the device ends its session (the gateway sends DISCONNECT),
	// and its key no longer opens a DTLS association; nor does a wrong key.
	a.must("disable", &device.IDReq{ID: "sn-1"}, nil)
	apptest.Next(t, dev.Gone())
	if _, err := snTry(t, n, "sn-1", key, "sn-1-again"); err == nil {
		t.Fatal("disabled device admitted")
	}
	a.must("enable", &device.IDReq{ID: "sn-1"}, nil)
	wrong := append([]byte(nil), key...)
	wrong[0] ^= 0xff
	if _, err := snTry(t, n, "sn-1", wrong, "sn-1-wrong"); err == nil {
		t.Fatal("wrong psk admitted")
	}
	if _, err := snTry(t, n, "nobody", key, "nobody"); err == nil {
		t.Fatal("unknown identity admitted")
	}
	snDevice(t, n, "sn-1", key) // enabled again: the same key works
}

// TestMQTTSNDeviceRefusals: what the device module cannot vouch for is
// refused or left to the ACL file. Deleted devices and devices without a
// PSK fail the handshake unless the psk_file has their identity; a
// psk_file identity that is a device id is confined as that device, and
// refused at CONNECT when it is disabled; plain UDP devices, which have
// no credentials, are anonymous and refused on a secured node.
func TestMQTTSNDeviceRefusals(t *testing.T) {
	legacyKey := []byte("legacy-key-0123456789")
	fileKey := []byte("file-key-for-sn-9")
	file := pskFile(t, "legacy:"+hex.EncodeToString(legacyKey), "sn-9:"+hex.EncodeToString(fileKey))
	n := start(t, snConfig(t, func(c *app.MQTTSNConfig) { c.PSKFrom = device.ID; c.PSKFile = file }), device.Options{})
	a := admin(t, n, "ops")

	// A psk_file identity the registry does not know: admitted by the
	// file, bound to its name, held to the ACL file (none here).
	legacy := snDevice(t, n, "legacy", legacyKey)
	boundTo(t, n, "legacy", "legacy")
	if err := legacy.Publish(apptest.Ctx(t), "plant/legacy/temp", 1, false, []byte("20")); err != nil {
		t.Fatalf("legacy publishing by the ACL file: %v", err)
	}

	// A device without a PSK of its own falls back to the psk_file, and
	// is confined as the device.
	a.must("create", &device.CreateReq{ID: "sn-9", NoToken: true}, nil)
	sn9 := snDevice(t, n, "sn-9", fileKey)
	boundTo(t, n, "sn-9", "dev:sn-9")
	if err := sn9.Publish(apptest.Ctx(t), "plant/x", 1, false, []byte("1")); !errors.Is(err, client.ErrRejected) {
		t.Fatalf("psk_file device outside its space: %v", err)
	}
	// Once the registry has a key for it, that key and only that one works.
	regKey := newPSK(t, a, "sn-9")
	if _, err := snTry(t, n, "sn-9", fileKey, "sn-9-file"); err == nil {
		t.Fatal("psk_file key admitted although the registry has one")
	}
	snDevice(t, n, "sn-9", regKey)

	// Deleted: its key is gone with it.
	a.must("create", &device.CreateReq{ID: "sn-gone", NoToken: true}, nil)
	goneKey := newPSK(t, a, "sn-gone")
	a.must("delete", &device.IDReq{ID: "sn-gone"}, nil)
	if _, err := snTry(t, n, "sn-gone", goneKey, "sn-gone"); err == nil {
		t.Fatal("deleted device admitted")
	}

	// Plain UDP: an MQTT-SN CONNECT carries no credentials, so a device
	// there is anonymous, whatever its client id; this node admits none.
	udp, err := client.Dial(apptest.Ctx(t), n.Addr(mqttsn.ListenerUDP), client.Options{ClientID: "sn-9", CleanSession: true,
		RetryInterval: 500 * time.Millisecond, MaxRetries: 10})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := udp.Close(); err != nil {
			t.Logf("close udp: %v", err)
		}
	})
	if err := udp.Connect(apptest.Ctx(t)); !errors.Is(err, client.ErrRejected) {
		t.Fatalf("plain udp connect: %v, want rejected", err)
	}
}

// TestMQTTSNPSKFileDeviceDisabled: without psk_from the gateway's
// psk_file vouches for the identity, and the device module still has
// the last word at CONNECT: a disabled device is refused there.
func TestMQTTSNPSKFileDeviceDisabled(t *testing.T) {
	key := []byte("psk-of-sn-7-in-a-file")
	file := pskFile(t, "sn-7:"+hex.EncodeToString(key))
	n := start(t, snConfig(t, func(c *app.MQTTSNConfig) { c.PSKFile = file }), device.Options{})
	a := admin(t, n, "ops")
	a.must("create", &device.CreateReq{ID: "sn-7", NoToken: true}, nil)
	dev := snDevice(t, n, "sn-7", key)
	boundTo(t, n, "sn-7", "dev:sn-7")
	if err := dev.Publish(apptest.Ctx(t), "dev/sn-8/telemetry", 1, false, []byte(`{"t":1}`)); !errors.Is(err, client.ErrRejected) {
		t.Fatalf("another device's topic: %v", err)
	}
	a.must("disable", &device.IDReq{ID: "sn-7"}, nil)
	apptest.Next(t, dev.Gone())
	c, err := snTry(t, n, "sn-7", key, "sn-7-b")
	if c == nil {
		t.Fatalf("handshake by the psk_file failed: %v", err)
	}
	if !errors.Is(err, client.ErrRejected) {
		t.Fatalf("disabled device at CONNECT: %v, want rejected", err)
	}
}

// TestMQTTSNDeviceAfterRestart: the registry's PSK survives a restart,
// and the device reconnects with it.
func TestMQTTSNDeviceAfterRestart(t *testing.T) {
	cfg := snConfig(t, func(c *app.MQTTSNConfig) { c.PSKFrom = device.ID })
	first := start(t, cfg, device.Options{})
	a := admin(t, first, "ops")
	a.must("create", &device.CreateReq{ID: "sn-r", NoToken: true}, nil)
	key := newPSK(t, a, "sn-r")
	apptest.Stop(t, first.App)

	second := start(t, cfg, device.Options{})
	dev := snDevice(t, second, "sn-r", key)
	if err := dev.Publish(apptest.Ctx(t), "dev/sn-r/telemetry", 1, false, []byte(`{"ts":1700000000000,"v":1}`)); err != nil {
		t.Fatal(err)
	}
	a = admin(t, second, "ops")
	apptest.Eventually(t, func() error {
		var s device.Series
		a.must("telemetry", &device.QueryReq{ID: "sn-r", From: 1700000000000, To: 1700000001000}, &s)
		if len(s.Points) != 1 || s.Points[0].Values["v"] != 1 {
			return fmt.Errorf("points %+v", s.Points)
		}
		return nil
	})
}

// TestMQTTSNSleepingDeviceCommand: a sleeping MQTT-SN device keeps its
// broker session, so it counts as listening: a command is sent at once,
// waits in the gateway until the device wakes, and the device answers
// once it is active again, within the command's timeout.
func TestMQTTSNSleepingDeviceCommand(t *testing.T) {
	n := start(t, snConfig(t, func(c *app.MQTTSNConfig) { c.PSKFrom = device.ID }), device.Options{})
	a := admin(t, n, "ops")
	a.must("create", &device.CreateReq{ID: "sn-z", NoToken: true}, nil)
	key := newPSK(t, a, "sn-z")
	dev, err := snTry(t, n, "sn-z", key, "sn-z", func(o *client.Options) { o.CleanSession = false })
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := dev.Subscribe(apptest.Ctx(t), "dev/sn-z/cmd/#", 1); err != nil {
		t.Fatal(err)
	}
	if err := dev.Sleep(apptest.Ctx(t), 10*time.Minute); err != nil {
		t.Fatal(err)
	}

	type outcome struct {
		c   *device.Command
		err error
	}
	done := make(chan outcome, 1)
	go func() {
		c, err := n.dev.Invoke(context.Background(), &device.InvokeReq{ID: "sn-z", Name: "calibrate", Timeout: 120})
		done <- outcome{c, err}
	}()
	// Wake until the gateway has the command buffered.
	var cmd client.Message
	apptest.Eventually(t, func() error {
		if err := dev.Wake(apptest.Ctx(t)); err != nil {
			return err
		}
		select {
		case cmd = <-dev.Messages():
			return nil
		default:
			return errors.New("nothing buffered yet")
		}
	})
	parts := strings.Split(cmd.Topic, "/")
	if len(parts) != 5 || parts[3] != "calibrate" {
		t.Fatalf("command on %s", cmd.Topic)
	}
	// Active again (CONNECT resumes the session), it answers.
	if err := dev.Connect(apptest.Ctx(t)); err != nil {
		t.Fatal(err)
	}
	if err := dev.Publish(apptest.Ctx(t), "dev/sn-z/res/"+parts[4], 1, false, []byte(`{"offset":0.4}`)); err != nil {
		t.Fatal(err)
	}
	o := apptest.Next(t, done)
	if o.err != nil || o.c.Status != device.CmdDone || string(o.c.Response) != `{"offset":0.4}` {
		t.Fatalf("command %+v: %v", o.c, o.err)
	}
}

// TestMQTTSNDeviceCertificate: over DTLS with a client certificate
// signed by mqttsn.client_ca_file, the certificate reaches the module as
// on the TLS listener: its common name is the device, and a pinned
// fingerprint refuses another certificate with the same name.
func TestMQTTSNDeviceCertificate(t *testing.T) {
	p := newPKI(t)
	n := start(t, snConfig(t, func(c *app.MQTTSNConfig) {
		c.CertFile, c.KeyFile, c.ClientCAFile = p.srvCert, p.srvKey, p.caFile
	}), device.Options{})
	a := admin(t, n, "ops")
	a.must("create", &device.CreateReq{ID: "sn-c", NoToken: true}, nil)
	good, _ := p.issue(t, "sn-c", x509.ExtKeyUsageClientAuth)
	other, _ := p.issue(t, "sn-c", x509.ExtKeyUsageClientAuth)
	withCert := func(cert tls.Certificate) func(*client.Options) {
		return func(o *client.Options) {
			o.DTLS = &client.DTLS{Certificates: []tls.Certificate{cert}, RootCAs: p.pool, ServerName: "127.0.0.1"}
		}
	}

	dev, err := snTry(t, n, "", nil, "sn-c", withCert(good))
	if err != nil {
		t.Fatal(err)
	}
	boundTo(t, n, "sn-c", "dev:sn-c")
	if err := dev.Publish(apptest.Ctx(t), "dev/sn-d/telemetry", 1, false, []byte(`{"t":1}`)); !errors.Is(err, client.ErrRejected) {
		t.Fatalf("another device's topic: %v", err)
	}

	sum := sha256.Sum256(good.Certificate[0])
	fp := hex.EncodeToString(sum[:])
	a.must("update", &device.UpdateReq{ID: "sn-c", CertFingerprint: &fp}, nil)
	c, err := snTry(t, n, "", nil, "sn-c-other", withCert(other))
	if c == nil {
		t.Fatalf("handshake with a certificate of the CA failed: %v", err)
	}
	if !errors.Is(err, client.ErrRejected) {
		t.Fatalf("unpinned certificate at CONNECT: %v, want rejected", err)
	}
	// Nor may it resume the open session of the pinned certificate.
	_, err = snTry(t, n, "", nil, "sn-c", withCert(other), func(o *client.Options) { o.CleanSession = false })
	if !errors.Is(err, client.ErrRejected) {
		t.Fatalf("unpinned certificate resuming the device's session: %v, want rejected", err)
	}
	if _, err := snTry(t, n, "", nil, "sn-c-again", withCert(good)); err != nil {
		t.Fatalf("pinned certificate: %v", err)
	}
}
