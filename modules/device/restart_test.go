package device_test

import (
	"encoding/json"
	"fmt"
	"testing"

	"github.com/colonymq/colony/app/apptest"
	"github.com/colonymq/colony/modules/device"
)

// Everything the module keeps survives a restart on the same data dir:
// registry and credentials, telemetry, shadows with their versions,
// queued commands, jobs with progress, claims and last-seen times.
func TestSurvivesRestart(t *testing.T) {
	cfg := secured(t)
	first := start(t, cfg, device.Options{})
	a := admin(t, first, "ops")
	tok := register(t, a, "boiler", map[string]string{"site": "x"})
	var cl device.Claim
	a.must("claim_create", &device.ClaimReq{Name: "line-1"}, &cl)
	b, _ := v3Device(t, first, "boiler", tok)
	apptest.Done(t, b.Publish("dev/boiler/telemetry", 1, false, `[{"ts":1700000000000,"t":60},{"ts":1700000001000,"t":61}]`))
	a.must("shadow_update", &device.ShadowUpdate{ID: "boiler", State: map[string]any{"desired": map[string]any{"target": 65}}}, nil)
	a.must("shadow_update", &device.ShadowUpdate{ID: "boiler", State: map[string]any{"reported": map[string]any{"target": 60}}}, nil)
	var j device.Job
	a.must("job_create", &device.JobReq{ID: "fw-9", Document: json.RawMessage(`{"v":9}`), Devices: []string{"boiler"}}, &j)
	apptest.Done(t, b.Publish("dev/boiler/jobs/fw-9/update", 1, false, `{"status":"in_progress","progress":30}`))
	apptest.Eventually(t, func() error {
		var d device.JobDetail
		a.must("job_get", &device.NameReq{Name: "fw-9"}, &d)
		if d.Job.Progress != 30 {
			return fmt.Errorf("progress %d", d.Job.Progress)
		}
		return nil
	})
	b.Disconnect(50)
	var q device.Command
	apptest.Eventually(t, func() error {
		q = device.Command{}
		if err := a.call("invoke", &device.InvokeReq{ID: "boiler", Name: "purge", TTL: 3600}, &q); err != nil {
			return err
		}
		if q.Status != device.CmdQueued {
			return fmt.Errorf("not queued: %+v", q) // the device was still connected
		}
		return nil
	})
	apptest.Eventually(t, func() error {
		if first.dev.Stats().Points != 2 {
			return fmt.Errorf("%d points", first.dev.Stats().Points)
		}
		return nil
	})
	apptest.Stop(t, first.App)

	second := start(t, cfg, device.Options{})
	a = admin(t, second, "ops")
	var d device.Device
	a.must("get", &device.IDReq{ID: "boiler"}, &d)
	if d.Labels["site"] != "x" || d.Tokens != 1 || d.Status == nil || d.Status.Online || d.Status.LastSeen == 0 {
		t.Fatalf("after restart %+v status %+v", d, d.Status)
	}
	var s device.Series
	a.must("telemetry", &device.QueryReq{ID: "boiler", From: 1700000000000, To: 1700000002000}, &s)
	if len(s.Points) != 2 || s.Points[1].Values["t"] != 61 {
		t.Fatalf("telemetry after restart %+v", s.Points)
	}
	var sh device.Shadow
	a.must("shadow_update", &device.ShadowUpdate{ID: "boiler", Version: 2, State: map[string]any{"reported": map[string]any{"target": 65}}}, &sh)
	if sh.Version != 3 {
		t.Fatalf("shadow version after restart %d", sh.Version)
	}
	// The device logs in with its token and gets its queued command and job.
	b, msgs := v3Device(t, second, "boiler", tok)
	apptest.Done(t, b.Subscribe("dev/boiler/cmd/#", 1, nil))
	if m := apptest.Next(t, msgs); m.Topic() != "dev/boiler/cmd/purge/"+q.RequestID {
		t.Fatalf("after restart got %s", m.Topic())
	}
	apptest.Done(t, b.Subscribe("dev/boiler/jobs/notify", 1, nil))
	m := apptest.Next(t, msgs)
	p := pendingIn(t, m.Payload())
	if len(p) != 1 || p[0].JobID != "fw-9" || p[0].Progress != 30 {
		t.Fatalf("jobs after restart %s", m.Payload())
	}
	// The claim still provisions.
	claim := connectRPC(t, second.Addr("mqtt"), claimConnect("boiler-2", cl.Secret, "line-1"), "claim/boiler-2/r")
	var got device.Created
	claim.must("provision", &device.ProvisionReq{}, &got)
	if got.Device.ID != "boiler-2" {
		t.Fatalf("provisioned %+v", got)
	}
}
