package device

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"

	"github.com/colonymq/colony/rpc"
)

// Job states.
const (
	JobInProgress = "in_progress"
	JobCompleted  = "completed" // every execution ended
	JobCanceled   = "canceled"
)

// Execution states; the last four are terminal.
const (
	ExecQueued     = "queued"
	ExecInProgress = "in_progress"
	ExecSucceeded  = "succeeded"
	ExecFailed     = "failed"
	ExecRejected   = "rejected"
	ExecCanceled   = "canceled"
)

func terminal(status string) bool {
	return status == ExecSucceeded || status == ExecFailed || status == ExecRejected || status == ExecCanceled
}

// JobReq creates a job: a document (e.g. {"firmware": url, "sha256": …})
// for the devices named and those whose labels match, fixed at creation.
type JobReq struct {
	ID          string            `json:"id,omitempty"` // default: generated
	Document    json.RawMessage   `json:"document"`
	Description string            `json:"description,omitempty"`
	Devices     []string          `json:"devices,omitempty"`
	Labels      map[string]string `json:"labels,omitempty"` // all must match; empty: no device by label
}

// Job is a job with its rolled-up progress.
type Job struct {
	ID          string            `json:"id"`
	Document    json.RawMessage   `json:"document"`
	Description string            `json:"description,omitempty"`
	Devices     []string          `json:"devices"`
	Labels      map[string]string `json:"labels,omitempty"`
	Status      string            `json:"status"`
	CreatedAt   int64             `json:"created_at"`
	UpdatedAt   int64             `json:"updated_at"`
	// Summary counts executions by status and Progress averages them
	// (terminal ones count as 100); both filled in answers only.
	Summary  map[string]int `json:"summary,omitempty"`
	Progress int            `json:"progress"`
}

// JobExecution is one device's part of a job.
type JobExecution struct {
	JobID     string         `json:"job_id"`
	Device    string         `json:"device"`
	Status    string         `json:"status"`
	Progress  int            `json:"progress"` // 0..100, as the device reports it
	Details   map[string]any `json:"details,omitempty"`
	UpdatedAt int64          `json:"updated_at"`
}

// JobDetail is a job and its executions.
type JobDetail struct {
	Job        *Job           `json:"job"`
	Executions []JobExecution `json:"executions"`
}

// JobList lists jobs, newest first.
type JobList struct {
	Jobs []*Job `json:"jobs"`
}

// ExecUpdate is a device's progress report on dev/<id>/jobs/<job>/update.
type ExecUpdate struct {
	Status      string         `json:"status"` // in_progress, succeeded, failed or rejected
	Progress    int            `json:"progress,omitempty"`
	Details     map[string]any `json:"details,omitempty"`
	ClientToken string         `json:"clientToken,omitempty"`
}

// PendingJob is a job a device has yet to finish, as notifications show it.
type PendingJob struct {
	JobID    string          `json:"job_id"`
	Status   string          `json:"status"`
	Progress int             `json:"progress"`
	Document json.RawMessage `json:"document"`
}

// jobs keeps every job in memory (they are few) and executions in the store.
type jobs struct {
	m    *Module
	mu   sync.Mutex // serializes job writers
	all  map[string]*Job
	allM sync.RWMutex
}

func newJobs(m *Module) *jobs { return &jobs{m: m, all: map[string]*Job{}} }

func (js *jobs) load() error {
	return js.m.st.jobs.Scan("", func(id string, j Job) bool {
		js.all[id] = &j
		return true
	})
}

func (js *jobs) get(id string) (*Job, bool) {
	js.allM.RLock()
	defer js.allM.RUnlock()
	j, ok := js.all[id]
	return j, ok
}

func (js *jobs) put(j *Job) {
	js.allM.Lock()
	js.all[j.ID] = j
	js.allM.Unlock()
}

func (m *Module) jobCreate(ctx context.Context, req *JobReq) (*Job, error) {
	if err := m.admin(ctx); err != nil {
		return nil, err
	}
	js := m.jobs
	if req.ID == "" {
		req.ID = "job-" + newRequestID()[:12]
	}
	if err := checkName("job id", req.ID); err != nil {
		return nil, err
	}
	if len(req.Document) == 0 || !json.Valid(req.Document) {
		return nil, rpc.Errorf(rpc.CodeBadRequest, "document must be JSON: %w", ErrInvalid)
	}
	targets := map[string]bool{}
	for _, id := range req.Devices {
		if _, ok := m.device(id); !ok {
			return nil, notFound("device", id)
		}
		targets[id] = true
	}
	if len(req.Labels) > 0 {
		m.mu.RLock()
		for id, r := range m.devs {
			if matches(r, "", req.Labels) {
				targets[id] = true
			}
		}
		m.mu.RUnlock()
	}
	if len(targets) == 0 {
		return nil, rpc.Errorf(rpc.CodeBadRequest, "job targets no device: %w", ErrInvalid)
	}
	devs := make([]string, 0, len(targets))
	for id := range targets {
		devs = append(devs, id)
	}
	sort.Strings(devs)
	js.mu.Lock()
	if _, ok := js.get(req.ID); ok {
		js.mu.Unlock()
		return nil, rpc.Errorf(rpc.CodeBadRequest, "job %q: %w", req.ID, ErrExists)
	}
	t := now()
	j := &Job{ID: req.ID, Document: req.Document, Description: req.Description, Devices: devs, Labels: req.Labels,
		Status: JobInProgress, CreatedAt: t, UpdatedAt: t}
	b := m.st.db.NewBatch()
	m.st.jobs.PutIn(b, j.ID, *j)
	for _, d := range devs {
		m.st.execs.PutIn(b, j.ID+sep+d, JobExecution{JobID: j.ID, Device: d, Status: ExecQueued, UpdatedAt: t})
	}
	if err := b.Commit(ctx); err != nil {
		js.mu.Unlock()
		return nil, err
	}
	js.put(j)
	js.mu.Unlock()
	m.log.Info().Str("job", j.ID).Int("devices", len(devs)).Msg("job created")
	for _, d := range devs {
		js.notify(ctx, d)
	}
	return js.rollup(j)
}

// rollup returns a copy of j with its summary and progress.
func (js *jobs) rollup(j *Job) (*Job, error) {
	out := *j
	out.Summary = map[string]int{}
	total := 0
	err := js.m.st.execs.Scan(j.ID+sep, func(_ string, e JobExecution) bool {
		out.Summary[e.Status]++
		if terminal(e.Status) {
			total += 100
		} else {
			total += e.Progress
		}
		return true
	})
	if err != nil {
		return nil, fmt.Errorf("read executions of job %s: %w", j.ID, err)
	}
	if n := len(j.Devices); n > 0 {
		out.Progress = total / n
	}
	return &out, nil
}

func (m *Module) jobGet(ctx context.Context, req *NameReq) (*JobDetail, error) {
	if err := m.admin(ctx); err != nil {
		return nil, err
	}
	j, ok := m.jobs.get(req.Name)
	if !ok {
		return nil, notFound("job", req.Name)
	}
	r, err := m.jobs.rollup(j)
	if err != nil {
		return nil, err
	}
	out := &JobDetail{Job: r, Executions: []JobExecution{}}
	err = m.st.execs.Scan(j.ID+sep, func(_ string, e JobExecution) bool {
		out.Executions = append(out.Executions, e)
		return true
	})
	return out, err
}

func (m *Module) jobList(ctx context.Context, _ *struct{}) (*JobList, error) {
	if err := m.admin(ctx); err != nil {
		return nil, err
	}
	m.jobs.allM.RLock()
	all := make([]*Job, 0, len(m.jobs.all))
	for _, j := range m.jobs.all {
		all = append(all, j)
	}
	m.jobs.allM.RUnlock()
	sort.Slice(all, func(i, k int) bool {
		if all[i].CreatedAt != all[k].CreatedAt {
			return all[i].CreatedAt > all[k].CreatedAt
		}
		return all[i].ID > all[k].ID
	})
	out := &JobList{Jobs: make([]*Job, 0, len(all))}
	for _, j := range all {
		r, err := m.jobs.rollup(j)
		if err != nil {
			return nil, err
		}
		out.Jobs = append(out.Jobs, r)
	}
	return out, nil
}

func (m *Module) jobCancel(ctx context.Context, req *NameReq) (*Job, error) {
	if err := m.admin(ctx); err != nil {
		return nil, err
	}
	js := m.jobs
	js.mu.Lock()
	j, ok := js.get(req.Name)
	if !ok {
		js.mu.Unlock()
		return nil, notFound("job", req.Name)
	}
	if j.Status != JobInProgress {
		js.mu.Unlock()
		return js.rollup(j)
	}
	n := *j
	n.Status, n.UpdatedAt = JobCanceled, now()
	b := m.st.db.NewBatch()
	m.st.jobs.PutIn(b, n.ID, n)
	for _, d := range n.Devices {
		m.st.execs.UpdateIn(b, n.ID+sep+d, func(e JobExecution, ok bool) (JobExecution, bool) {
			if !ok || terminal(e.Status) {
				return e, false
			}
			e.Status, e.UpdatedAt = ExecCanceled, n.UpdatedAt
			return e, true
		})
	}
	if err := b.Commit(ctx); err != nil {
		js.mu.Unlock()
		return nil, err
	}
	js.put(&n)
	js.mu.Unlock()
	m.log.Info().Str("job", n.ID).Msg("job canceled")
	for _, d := range n.Devices {
		js.notify(ctx, d)
	}
	return js.rollup(&n)
}

// pending returns the jobs device has yet to finish, oldest first.
func (js *jobs) pending(device string) ([]PendingJob, error) {
	js.allM.RLock()
	var active []*Job
	for _, j := range js.all {
		if j.Status == JobInProgress && slices.Contains(j.Devices, device) {
			active = append(active, j)
		}
	}
	js.allM.RUnlock()
	sort.Slice(active, func(i, k int) bool { return active[i].CreatedAt < active[k].CreatedAt })
	out := []PendingJob{}
	for _, j := range active {
		e, ok, err := js.m.st.execs.Get(j.ID + sep + device)
		if err != nil {
			return nil, err
		}
		if ok && !terminal(e.Status) {
			out = append(out, PendingJob{JobID: j.ID, Status: e.Status, Progress: e.Progress, Document: j.Document})
		}
	}
	return out, nil
}

// notify publishes device's pending jobs on dev/<id>/jobs/notify.
func (js *jobs) notify(_ context.Context, device string) {
	p, err := js.pending(device)
	if err != nil {
		js.m.log.Error().Err(err).Str("device", device).Msg("read pending jobs")
		return
	}
	js.m.publishJSON(TopicRoot+device+"/jobs/notify", map[string]any{"jobs": p, "timestamp": now()})
}

// message handles dev/<id>/jobs/get and dev/<id>/jobs/<job>/update; rest
// follows dev/<id>/jobs/.
func (js *jobs) message(ctx context.Context, device, rest string, payload []byte) {
	base := TopicRoot + device + "/jobs/"
	tok := struct{ ClientToken string }{clientToken(payload)}
	if rest == "get" {
		p, err := js.pending(device)
		if err != nil {
			js.m.publishJSON(base+"get/rejected", ShadowError{Code: 500, Message: err.Error(), ClientToken: tok.ClientToken, Timestamp: now()})
			return
		}
		js.m.publishJSON(base+"get/accepted", map[string]any{"jobs": p, "clientToken": tok.ClientToken, "timestamp": now()})
		return
	}
	jobID, op, ok := strings.Cut(rest, "/")
	if !ok || op != "update" || !validName(jobID) {
		return
	}
	reject := func(code int, err error) {
		js.m.publishJSON(base+jobID+"/update/rejected", ShadowError{Code: code, Message: err.Error(), ClientToken: tok.ClientToken, Timestamp: now()})
	}
	var u ExecUpdate
	if err := json.Unmarshal(payload, &u); err != nil {
		reject(400, fmt.Errorf("update is not JSON: %w", err))
		return
	}
	e, err := js.update(ctx, device, jobID, &u)
	switch {
	case errors.Is(err, ErrNotFound):
		reject(404, err)
	case errors.Is(err, ErrTerminal), errors.Is(err, ErrInvalid):
		reject(400, err)
	case err != nil:
		reject(500, err)
	default:
		js.m.publishJSON(base+jobID+"/update/accepted", map[string]any{"execution": e, "clientToken": u.ClientToken, "timestamp": now()})
	}
}

// update records a device's progress and completes the job when every
// execution has ended.
func (js *jobs) update(ctx context.Context, device, jobID string, u *ExecUpdate) (*JobExecution, error) {
	switch u.Status {
	case ExecInProgress, ExecSucceeded, ExecFailed, ExecRejected:
	default:
		return nil, fmt.Errorf("status %q: want in_progress, succeeded, failed or rejected: %w", u.Status, ErrInvalid)
	}
	if u.Progress < 0 || u.Progress > 100 {
		return nil, fmt.Errorf("progress %d: want 0..100: %w", u.Progress, ErrInvalid)
	}
	j, ok := js.get(jobID)
	if !ok || !slices.Contains(j.Devices, device) {
		return nil, fmt.Errorf("job %s for device %s: %w", jobID, device, ErrNotFound)
	}
	var out JobExecution
	err := js.m.st.execs.Update(ctx, jobID+sep+device, func(e JobExecution, ok bool) (JobExecution, bool, error) {
		if !ok {
			return e, false, fmt.Errorf("job %s for device %s: %w", jobID, device, ErrNotFound)
		}
		if terminal(e.Status) {
			return e, false, fmt.Errorf("job %s on %s is %s: %w", jobID, device, e.Status, ErrTerminal)
		}
		e.Status, e.Progress, e.UpdatedAt = u.Status, u.Progress, now()
		if terminal(u.Status) && u.Status == ExecSucceeded {
			e.Progress = 100
		}
		if u.Details != nil {
			e.Details = u.Details
		}
		out = e
		return e, false, nil
	})
	if err != nil {
		return nil, err
	}
	if terminal(out.Status) {
		js.complete(ctx, jobID)
	}
	return &out, nil
}

// complete marks a job completed once all its executions ended.
func (js *jobs) complete(ctx context.Context, jobID string) {
	js.mu.Lock()
	defer js.mu.Unlock()
	j, ok := js.get(jobID)
	if !ok || j.Status != JobInProgress {
		return
	}
	r, err := js.rollup(j)
	if err != nil {
		js.m.log.Error().Err(err).Msg("job rollup")
		return
	}
	for s := range r.Summary {
		if !terminal(s) {
			return
		}
	}
	n := *j
	n.Status, n.UpdatedAt = JobCompleted, now()
	if err := js.m.st.jobs.Put(ctx, n.ID, n); err != nil {
		js.m.log.Error().Err(err).Msg("store job")
		return
	}
	js.put(&n)
	js.m.log.Info().Str("job", n.ID).Msg("job completed")
}
