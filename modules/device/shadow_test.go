package device_test

import (
	"slices"
	"strings"
	"testing"

	"github.com/colonymq/colony/app/apptest"
	"github.com/colonymq/colony/modules/device"
	"github.com/colonymq/colony/rpc"
)

func TestShadow(t *testing.T) {
	n := start(t, secured(t), device.Options{MaxShadowBytes: 512})
	a := admin(t, n, "ops")
	lamp := v5Device(t, n, "lamp", register(t, a, "lamp", nil))
	lamp.subscribe("dev/lamp/shadow/#")

	// The app sets desired state; the device gets the delta with the
	// app's clientToken.
	var acc device.Shadow
	a.must("shadow_update", &device.ShadowUpdate{ID: "lamp", ClientToken: "app-1",
		State: map[string]any{"desired": map[string]any{"color": "red", "brightness": 80, "mode": map[string]any{"night": true}}}}, &acc)
	if acc.Version != 1 || acc.ClientToken != "app-1" {
		t.Fatalf("accepted %+v", acc)
	}
	d := decode(t, lamp.next("dev/lamp/shadow/update/delta").Payload)
	if st := d["state"].(map[string]any); st["color"] != "red" || st["brightness"] != 80.0 || d["clientToken"] != "app-1" || d["version"] != 1.0 {
		t.Fatalf("delta %v", d)
	}

	// The device reports at the current version: accepted, token echoed.
	mustPub(t, lamp, "dev/lamp/shadow/update", `{"state":{"reported":{"color":"red","mode":{"night":true}}},"version":1,"clientToken":"dev-1"}`)
	ok := decode(t, lamp.next("dev/lamp/shadow/update/accepted").Payload)
	if ok["version"] != 2.0 || ok["clientToken"] != "dev-1" {
		t.Fatalf("accepted %v", ok)
	}
	// A stale version is rejected with 409, token echoed, nothing changed.
	mustPub(t, lamp, "dev/lamp/shadow/update", `{"state":{"reported":{"brightness":80}},"version":1,"clientToken":"dev-2"}`)
	rej := decode(t, lamp.next("dev/lamp/shadow/update/rejected").Payload)
	if rej["code"] != 409.0 || rej["clientToken"] != "dev-2" || !strings.Contains(rej["message"].(string), "version") {
		t.Fatalf("rejected %v", rej)
	}
	wantErr(t, a.call("shadow_update", &device.ShadowUpdate{ID: "lamp", Version: 1,
		State: map[string]any{"desired": map[string]any{"color": "blue"}}}, nil), rpc.CodeBadRequest, "version conflict")

	// get: the delta is what reported still lacks; metadata has per-field times.
	mustPub(t, lamp, "dev/lamp/shadow/get", `{"clientToken":"dev-3"}`)
	g := decode(t, lamp.next("dev/lamp/shadow/get/accepted").Payload)
	st := g["state"].(map[string]any)
	if dl := st["delta"].(map[string]any); len(dl) != 1 || dl["brightness"] != 80.0 || g["version"] != 2.0 || g["clientToken"] != "dev-3" {
		t.Fatalf("get %v", g)
	}
	meta := g["metadata"].(map[string]any)["reported"].(map[string]any)
	if ts := meta["color"].(map[string]any)["timestamp"].(float64); ts <= 0 {
		t.Fatalf("metadata %v", meta)
	}
	// A null field deletes it.
	a.must("shadow_update", &device.ShadowUpdate{ID: "lamp", State: map[string]any{"desired": map[string]any{"brightness": nil}}}, &acc)
	var sh device.Shadow
	a.must("shadow_get", &device.ShadowReq{ID: "lamp"}, &sh)
	if sh.Version != 3 || sh.State.Delta != nil || sh.State.Desired["brightness"] != nil || sh.State.Desired["color"] != "red" {
		t.Fatalf("after delete of a field: %+v", sh)
	}

	// Named shadows, over MQTT 3.1.1 too.
	c3, got := v3Device(t, n, "lamp-3", register(t, a, "lamp-3", nil))
	apptest.Done(t, c3.Subscribe("dev/lamp-3/shadow/#", 1, nil))
	apptest.Done(t, c3.Publish("dev/lamp-3/shadow/name/firmware/update", 1, false, `{"state":{"reported":{"version":"1.0.2"}},"clientToken":"fw"}`))
	for m := apptest.Next(t, got); m.Topic() != "dev/lamp-3/shadow/name/firmware/update/accepted"; m = apptest.Next(t, got) {
	}
	a.must("shadow_update", &device.ShadowUpdate{ID: "lamp-3", State: map[string]any{"desired": map[string]any{"on": true}}}, nil)
	for m := apptest.Next(t, got); ; m = apptest.Next(t, got) {
		if m.Topic() == "dev/lamp-3/shadow/update/delta" {
			if !strings.Contains(string(m.Payload()), `"on":true`) {
				t.Fatalf("v3 delta %s", m.Payload())
			}
			break
		}
	}
	var names device.ShadowNames
	a.must("shadow_list", &device.IDReq{ID: "lamp-3"}, &names)
	if !slices.Equal(names.Names, []string{"", "firmware"}) {
		t.Fatalf("names %q", names.Names)
	}

	// Documents are size-limited (413).
	big := strings.Repeat("x", 600)
	mustPub(t, lamp, "dev/lamp/shadow/update", `{"state":{"reported":{"blob":"`+big+`"}},"clientToken":"big"}`)
	if r := decode(t, lamp.next("dev/lamp/shadow/update/rejected").Payload); r["code"] != 413.0 || r["clientToken"] != "big" {
		t.Fatalf("too large: %v", r)
	}
	// Growing a document past the limit by small updates is refused too.
	for i := range 10 {
		k := string(rune('a' + i))
		err := a.call("shadow_update", &device.ShadowUpdate{ID: "lamp", State: map[string]any{"reported": map[string]any{k: strings.Repeat("y", 60)}}}, nil)
		if err != nil {
			wantErr(t, err, rpc.CodeBadRequest, "too large")
			return
		}
	}
	t.Fatal("shadow grew past max_shadow_bytes")
}
