package device_test

import (
	"encoding/json"
	"fmt"
	"testing"

	"github.com/colonymq/colony/modules/device"
)

// pendingIn decodes a jobs/notify or jobs/get/accepted payload.
func pendingIn(t *testing.T, b []byte) []device.PendingJob {
	t.Helper()
	var v struct {
		Jobs []device.PendingJob `json:"jobs"`
	}
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatalf("decode %s: %v", b, err)
	}
	return v.Jobs
}

func TestJobRollout(t *testing.T) {
	n := start(t, secured(t), device.Options{})
	a := admin(t, n, "ops")
	var devs []*rpcClient
	for i := range 3 {
		id := fmt.Sprintf("gw-%d", i)
		d := v5Device(t, n, id, register(t, a, id, map[string]string{"ring": "beta"}))
		d.subscribe("dev/" + id + "/jobs/#")
		// Subscribing brings the pending jobs: none yet.
		if p := pendingIn(t, d.next("dev/"+id+"/jobs/notify").Payload); len(p) != 0 {
			t.Fatalf("%s pending before any job: %+v", id, p)
		}
		devs = append(devs, d)
	}
	register(t, a, "gw-other", map[string]string{"ring": "stable"})

	doc := json.RawMessage(`{"firmware":"https://fw.example/gw-2.1.bin","sha256":"ab12"}`)
	var j device.Job
	a.must("job_create", &device.JobReq{ID: "ota-2.1", Document: doc, Labels: map[string]string{"ring": "beta"}}, &j)
	if len(j.Devices) != 3 || j.Status != device.JobInProgress || j.Summary[device.ExecQueued] != 3 || j.Progress != 0 {
		t.Fatalf("job %+v", j)
	}
	for i, d := range devs {
		id := fmt.Sprintf("gw-%d", i)
		// Notifications are the whole pending list, so a repeated one
		// (connect and subscribe racing) is harmless: wait for the job.
		p := waitPending(t, d, id, 1)
		if p[0].JobID != "ota-2.1" || string(p[0].Document) != string(doc) {
			t.Fatalf("%s notified %+v", id, p)
		}
		mustPub(t, d, "dev/"+id+"/jobs/ota-2.1/update", `{"status":"in_progress","progress":50,"clientToken":"t`+id+`"}`)
		acc := decode(t, d.next("dev/"+id+"/jobs/ota-2.1/update/accepted").Payload)
		if acc["clientToken"] != "t"+id {
			t.Fatalf("accepted %v", acc)
		}
	}
	var det device.JobDetail
	a.must("job_get", &device.NameReq{Name: "ota-2.1"}, &det)
	if det.Job.Progress != 50 || det.Job.Summary[device.ExecInProgress] != 3 || len(det.Executions) != 3 {
		t.Fatalf("rollup at 50%%: %+v", det.Job)
	}
	// Two succeed, one fails: the job completes.
	for i, status := range []string{"succeeded", "succeeded", "failed"} {
		id := fmt.Sprintf("gw-%d", i)
		mustPub(t, devs[i], "dev/"+id+"/jobs/ota-2.1/update", `{"status":"`+status+`","details":{"reason":"r`+id+`"}}`)
		devs[i].next("dev/" + id + "/jobs/ota-2.1/update/accepted")
	}
	a.must("job_get", &device.NameReq{Name: "ota-2.1"}, &det)
	if det.Job.Status != device.JobCompleted || det.Job.Summary["succeeded"] != 2 || det.Job.Summary["failed"] != 1 || det.Job.Progress != 100 {
		t.Fatalf("completed job %+v", det.Job)
	}
	// An ended execution takes no more updates.
	mustPub(t, devs[0], "dev/gw-0/jobs/ota-2.1/update", `{"status":"in_progress","progress":10}`)
	if r := decode(t, devs[0].next("dev/gw-0/jobs/ota-2.1/update/rejected").Payload); r["code"] != 400.0 {
		t.Fatalf("update after end: %v", r)
	}

	// Cancel: executions still running end as canceled; devices hear of it.
	a.must("job_create", &device.JobReq{ID: "ota-2.2", Document: doc, Devices: []string{"gw-0", "gw-1"}}, &j)
	devs[0].next("dev/gw-0/jobs/notify")
	mustPub(t, devs[0], "dev/gw-0/jobs/ota-2.2/update", `{"status":"succeeded"}`)
	devs[0].next("dev/gw-0/jobs/ota-2.2/update/accepted")
	a.must("job_cancel", &device.NameReq{Name: "ota-2.2"}, &j)
	if j.Status != device.JobCanceled || j.Summary["canceled"] != 1 || j.Summary["succeeded"] != 1 {
		t.Fatalf("canceled %+v", j)
	}
	waitPending(t, devs[1], "gw-1", 1) // ota-2.2
	waitPending(t, devs[1], "gw-1", 0) // canceled
	// jobs/get agrees.
	mustPub(t, devs[1], "dev/gw-1/jobs/get", `{}`)
	if p := pendingIn(t, devs[1].next("dev/gw-1/jobs/get/accepted").Payload); len(p) != 0 {
		t.Fatalf("get after cancel %+v", p)
	}
	var jl device.JobList
	a.must("job_list", nil, &jl)
	if len(jl.Jobs) != 2 || jl.Jobs[0].ID != "ota-2.2" {
		t.Fatalf("job list %+v", jl)
	}
}

// waitPending reads id's job notifications until one lists n jobs.
func waitPending(t *testing.T, d *rpcClient, id string, n int) []device.PendingJob {
	t.Helper()
	for {
		if p := pendingIn(t, d.next("dev/"+id+"/jobs/notify").Payload); len(p) == n {
			return p
		}
	}
}
