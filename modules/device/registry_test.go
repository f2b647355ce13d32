package device_test

import (
	"errors"
	"testing"

	"github.com/eclipse/paho.golang/paho"
	pahov3 "github.com/eclipse/paho.mqtt.golang"

	"github.com/colonymq/colony/app/apptest"
	"github.com/colonymq/colony/modules/device"
	"github.com/colonymq/colony/rpc"
)

func TestRegistryAndTokenLogin(t *testing.T) {
	n := start(t, secured(t), device.Options{Admins: []string{"ops"}})
	a := admin(t, n, "ops")
	wantErr(t, admin(t, n, "viewer").call("list", nil, nil), rpc.CodeForbidden, "admins")
	tok := register(t, a, "sensor-1", map[string]string{"site": "north"})
	register(t, a, "sensor-2", map[string]string{"site": "south"})
	wantErr(t, a.call("create", &device.CreateReq{ID: "sensor-1"}, nil), rpc.CodeBadRequest, "already exists")
	wantErr(t, a.call("create", &device.CreateReq{ID: "a/b"}, nil), rpc.CodeBadRequest, "device id")

	var l device.List
	a.must("list", &device.ListReq{Labels: map[string]string{"site": "north"}}, &l)
	if len(l.Devices) != 1 || l.Devices[0].ID != "sensor-1" {
		t.Fatalf("list by label: %+v", l)
	}
	a.must("list", &device.ListReq{Limit: 1}, &l)
	if len(l.Devices) != 1 || l.Next != "sensor-1" {
		t.Fatalf("first page: %+v", l)
	}
	var l2 device.List
	a.must("list", &device.ListReq{After: l.Next}, &l2)
	if len(l2.Devices) != 1 || l2.Devices[0].ID != "sensor-2" || l2.Next != "" {
		t.Fatalf("second page: %+v", l2)
	}

	// Token login (MQTT 3.1.1); a wrong token is refused.
	apptest.V3(t, apptest.URL(n.App), "sensor-1", func(o *pahov3.ClientOptions) { o.SetUsername("sensor-1").SetPassword(tok) })
	if _, err := apptest.V3Try(apptest.URL(n.App), "sensor-1b", func(o *pahov3.ClientOptions) { o.SetUsername("sensor-1").SetPassword("dt_wrong") }); err == nil {
		t.Fatal("wrong token admitted")
	}
	var d device.Device
	apptest.Eventually(t, func() error {
		a.must("get", &device.IDReq{ID: "sensor-1"}, &d)
		if d.Status == nil || !d.Status.Online || d.Status.LastSeen == 0 {
			return errors.New("sensor-1 not online yet")
		}
		return nil
	})
	var sum device.Summary
	a.must("summary", nil, &sum)
	if sum.Devices != 2 || sum.Online != 1 || sum.ByType["sensor"] != 2 {
		t.Fatalf("summary %+v", sum)
	}

	// One device's token does not open another.
	tok3 := register(t, a, "sensor-3", nil)
	if c := apptest.V5Try(t, n.Addr("mqtt"), &paho.Connect{ClientID: "x", CleanStart: true, Username: "sensor-2", UsernameFlag: true,
		Password: []byte(tok3), PasswordFlag: true}); c.ConnectErr == nil {
		t.Fatal("sensor-3's token opened sensor-2")
	}
	// Disabling disconnects and refuses the device; enabling lets it back.
	d3 := v5Device(t, n, "sensor-3", tok3)
	a.must("disable", &device.IDReq{ID: "sensor-3"}, &d)
	if !d.Disabled {
		t.Fatalf("disable: %+v", d)
	}
	apptest.Next(t, d3.c.Disconn)
	refused := func(id, token string) {
		t.Helper()
		if _, err := apptest.V3Try(apptest.URL(n.App), id+"-probe", func(o *pahov3.ClientOptions) { o.SetUsername(id).SetPassword(token) }); err == nil {
			t.Fatalf("%s admitted with token %.8s…", id, token)
		}
	}
	refused("sensor-3", tok3)
	a.must("enable", &device.IDReq{ID: "sensor-3"}, &d)
	v5Device(t, n, "sensor-3", tok3)

	// Rotation: with a grace period both tokens work, without it only the new one.
	var t1, t2 device.Token
	a.must("token", &device.TokenReq{ID: "sensor-3", Grace: "1h"}, &t1)
	if t1.OldUntil == 0 || t1.Token == tok3 {
		t.Fatalf("rotation %+v", t1)
	}
	apptest.V3(t, apptest.URL(n.App), "s3-old", func(o *pahov3.ClientOptions) { o.SetUsername("sensor-3").SetPassword(tok3) })
	apptest.V3(t, apptest.URL(n.App), "s3-new", func(o *pahov3.ClientOptions) { o.SetUsername("sensor-3").SetPassword(t1.Token) })
	a.must("token", &device.TokenReq{ID: "sensor-3", Grace: "0s"}, &t2)
	refused("sensor-3", tok3)
	refused("sensor-3", t1.Token)
	apptest.V3(t, apptest.URL(n.App), "s3-newest", func(o *pahov3.ClientOptions) { o.SetUsername("sensor-3").SetPassword(t2.Token) })

	// Deleted devices are gone, credentials and all.
	a.must("delete", &device.IDReq{ID: "sensor-3"}, nil)
	refused("sensor-3", t2.Token)
	wantErr(t, a.call("get", &device.IDReq{ID: "sensor-3"}, nil), rpc.CodeNotFound, "sensor-3")
}

func TestDeviceConfinedToItsOwnTopics(t *testing.T) {
	n := start(t, secured(t), device.Options{})
	a := admin(t, n, "ops")
	tokA := register(t, a, "dev-a", nil)
	register(t, a, "dev-b", nil)
	da := v5Device(t, n, "dev-a", tokA)
	if codes := da.subscribe("dev/dev-b/#", "dev/+/telemetry", "#", "dev/dev-a/#"); string(codes) != string([]byte{0x87, 0x87, 0x87, 1}) {
		t.Fatalf("subscribe reason codes %#v", codes)
	}
	for _, topic := range []string{"dev/dev-b/telemetry", "dev/dev-b/shadow/update", "dev/dev-a/cmd/reboot/1", "dev/dev-a/status", "other/topic", "$rpc/device/list"} {
		res, err := da.c.Publish(apptest.Ctx(t), &paho.Publish{Topic: topic, QoS: 1, Payload: []byte(`{"x":1}`)})
		if res == nil || res.ReasonCode != 0x87 {
			t.Fatalf("publish to %s: %v %+v, want PUBACK 0x87", topic, err, res)
		}
	}
	res, err := da.c.Publish(apptest.Ctx(t), &paho.Publish{Topic: "dev/dev-a/telemetry", QoS: 1, Payload: []byte(`{"x":1}`)})
	if err != nil || res.ReasonCode != 0 {
		t.Fatalf("publish own telemetry: %v %+v", err, res)
	}
	// An application holds the device to its space too: the ops user may
	// read every device's telemetry (no ACL file here).
	a.subscribe("dev/+/telemetry")
	mustPub(t, da, "dev/dev-a/telemetry", `{"x":2}`)
	if p := a.next("dev/dev-a/telemetry"); string(p.Payload) != `{"x":2}` {
		t.Fatalf("app got %s", p.Payload)
	}
}

func mustPub(t *testing.T, c *rpcClient, topic, payload string) {
	t.Helper()
	if _, err := c.c.Publish(apptest.Ctx(t), &paho.Publish{Topic: topic, QoS: 1, Payload: []byte(payload)}); err != nil {
		t.Fatalf("publish %s: %v", topic, err)
	}
}
