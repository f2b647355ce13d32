package device

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math"
	"sort"
	"sync"
	"time"

	"github.com/colonymq/colony/rpc"
)

// Values are the numeric fields of one telemetry point: numbers as they
// are, booleans as 0 and 1, nested objects flattened with "." ("gps.lat").
type Values map[string]float64

// Latest is a device's most recent telemetry.
type Latest struct {
	TS     int64           `json:"ts"`     // Unix ms
	Values Values          `json:"values"` // numeric fields
	Raw    json.RawMessage `json:"raw"`    // the payload as published, strings included
}

// point is one telemetry point on its way to the store.
type point struct {
	dev    string
	ts     int64
	values Values
	raw    []byte
}

// ingest decodes telemetry on the publisher's goroutine and writes it in
// batches from one goroutine: one commit holds up to maxBatch points.
type ingest struct {
	m    *Module
	ch   chan point
	mu   sync.Mutex
	last map[string]int64 // device -> last server-assigned ts, to keep keys unique
	warn sync.Map         // devices whose bad payload was logged
}

const maxBatch = 8192

func newIngest(m *Module) *ingest {
	return &ingest{m: m, ch: make(chan point, m.opts.IngestQueue), last: map[string]int64{}}
}

// accept decodes a payload of dev/<id>/telemetry and queues its points,
// waiting while the queue is full.
func (in *ingest) accept(id string, payload []byte) {
	r, ok := in.m.device(id)
	if !ok || r.Disabled {
		return
	}
	pts, err := in.decode(id, payload)
	if err != nil {
		in.m.stats.rejected.Add(1)
		if _, logged := in.warn.LoadOrStore(id, true); !logged {
			in.m.log.Warn().Err(err).Str("device", id).Msg("telemetry refused (logged once per device)")
		}
		return
	}
	for _, p := range pts {
		select {
		case in.ch <- p:
		case <-in.m.stop:
			return
		}
	}
}

// decode reads one point ({"temp":21.5} or {"ts":…, "values":{…}} or
// {"ts":…, "temp":…}) or an array of them.
func (in *ingest) decode(id string, payload []byte) ([]point, error) {
	payload = bytes.TrimSpace(payload)
	if len(payload) > 0 && payload[0] == '[' {
		var items []json.RawMessage
		if err := json.Unmarshal(payload, &items); err != nil {
			return nil, fmt.Errorf("telemetry array: %w", err)
		}
		out := make([]point, 0, len(items))
		for _, it := range items {
			p, err := in.decodeOne(id, it)
			if err != nil {
				return nil, err
			}
			out = append(out, p)
		}
		return out, nil
	}
	p, err := in.decodeOne(id, payload)
	if err != nil {
		return nil, err
	}
	return []point{p}, nil
}

func (in *ingest) decodeOne(id string, raw []byte) (point, error) {
	var doc map[string]any
	d := json.NewDecoder(bytes.NewReader(raw))
	d.UseNumber()
	if err := d.Decode(&doc); err != nil || doc == nil {
		return point{}, fmt.Errorf("telemetry must be a JSON object or array of objects: %w", ErrInvalid)
	}
	p := point{dev: id, values: Values{}, raw: raw}
	if ts, ok := doc["ts"].(json.Number); ok {
		v, err := ts.Int64()
		if err != nil || v <= 0 {
			return point{}, fmt.Errorf("ts %q: want Unix milliseconds: %w", ts, ErrInvalid)
		}
		p.ts = v
		delete(doc, "ts")
	}
	if vals, ok := doc["values"].(map[string]any); ok && len(doc) == 1 {
		doc = vals
	}
	flatten("", doc, p.values)
	if len(p.values) == 0 {
		return point{}, fmt.Errorf("telemetry has no numeric field: %w", ErrInvalid)
	}
	if p.ts == 0 {
		p.ts = in.stamp(id)
	}
	return p, nil
}

// stamp returns the server's time for a point, later than the device's
// previous server-stamped one so that keys stay unique.
func (in *ingest) stamp(id string) int64 {
	t := now()
	in.mu.Lock()
	if l := in.last[id]; t <= l {
		t = l + 1
	}
	in.last[id] = t
	in.mu.Unlock()
	return t
}

func (in *ingest) forget(id string) {
	in.mu.Lock()
	delete(in.last, id)
	in.mu.Unlock()
}

func flatten(prefix string, doc map[string]any, out Values) {
	for k, v := range doc {
		name := k
		if prefix != "" {
			name = prefix + "." + k
		}
		switch x := v.(type) {
		case json.Number:
			if f, err := x.Float64(); err == nil && !math.IsInf(f, 0) {
				out[name] = f
			}
		case bool:
			out[name] = 0
			if x {
				out[name] = 1
			}
		case map[string]any:
			flatten(name, x, out)
		}
	}
}

// inflightCommits is how many telemetry batches may wait for their
// commit at once: while one waits for the disk the next one fills, which
// is what keeps ingest from being bound by commit latency.
const inflightCommits = 4

// run writes queued points until Stop.
func (in *ingest) run() {
	sem := make(chan struct{}, inflightCommits)
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		var first point
		select {
		case <-in.m.stop:
			return
		case first = <-in.ch:
		}
		// While every commit slot is taken the batch keeps growing, so a
		// slow disk means bigger commits, not a longer queue.
		batch := append(make([]point, 0, 256), first)
	fill:
		for {
			if len(batch) >= maxBatch {
				sem <- struct{}{}
				break
			}
			select {
			case sem <- struct{}{}:
				batch = in.collect(batch)
				break fill
			case p := <-in.ch:
				batch = append(batch, p)
			}
		}
		wg.Add(1)
		go func() {
			defer func() {
				<-sem
				wg.Done()
			}()
			in.write(batch)
		}()
	}
}

// collect adds what is already queued, up to maxBatch.
func (in *ingest) collect(batch []point) []point {
	for len(batch) < maxBatch {
		select {
		case p := <-in.ch:
			batch = append(batch, p)
		default:
			return batch
		}
	}
	return batch
}

func (in *ingest) write(batch []point) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := in.commit(ctx, batch); err != nil {
		in.m.log.Error().Err(err).Int("points", len(batch)).Msg("store telemetry")
	}
}

// commit stores points, each device's latest values and point counts in
// one transaction.
func (in *ingest) commit(ctx context.Context, batch []point) error {
	b := in.m.st.db.NewBatch()
	latest := map[string]point{}
	counts := map[string]int64{}
	for _, p := range batch {
		in.m.st.points.PutIn(b, pointKey(p.dev, p.ts), p.values)
		if l, ok := latest[p.dev]; !ok || p.ts >= l.ts {
			latest[p.dev] = p
		}
		counts[p.dev]++
	}
	for id, p := range latest {
		in.m.st.latest.UpdateIn(b, id, func(cur Latest, ok bool) (Latest, bool) {
			if ok && cur.TS > p.ts {
				return cur, false
			}
			return Latest{TS: p.ts, Values: p.values, Raw: p.raw}, true
		})
		in.m.presence.touch(id, now())
	}
	for id, n := range counts {
		in.m.st.counts.UpdateIn(b, id, func(cur int64, _ bool) (int64, bool) { return cur + n, true })
	}
	if err := b.Commit(ctx); err != nil {
		return err
	}
	in.m.stats.points.Add(int64(len(batch)))
	return nil
}

// drain writes what is still queued (at Stop).
func (in *ingest) drain(ctx context.Context) error {
	batch := make([]point, 0, maxBatch)
	for {
		batch = in.collect(batch[:0])
		if len(batch) == 0 {
			return nil
		}
		if err := in.commit(ctx, batch); err != nil {
			return err
		}
	}
}

// QueryReq asks for a device's telemetry between From and To (Unix ms,
// From inclusive, To exclusive; default: the last hour). With Step the
// points are downsampled into buckets of Step milliseconds.
type QueryReq struct {
	ID     string   `json:"id"`
	From   int64    `json:"from,omitempty"`
	To     int64    `json:"to,omitempty"`
	Fields []string `json:"fields,omitempty"` // default: all
	Step   int64    `json:"step,omitempty"`   // bucket width in ms; 0: raw points
	Limit  int      `json:"limit,omitempty"`  // raw points at most; default 1000
}

// Point is one stored telemetry point.
type Point struct {
	TS     int64  `json:"ts"`
	Values Values `json:"values"`
}

// Agg summarizes one field in one bucket.
type Agg struct {
	Min   float64 `json:"min"`
	Max   float64 `json:"max"`
	Avg   float64 `json:"avg"`
	Count int     `json:"count"`
}

// Bucket is the summary of the points with TS <= ts < TS+step.
type Bucket struct {
	TS     int64          `json:"ts"`
	Count  int            `json:"count"`
	Fields map[string]Agg `json:"fields"`
}

// Series is a query's answer: Points without Step, Buckets with it
// (empty buckets left out). More is set when Limit cut the points short;
// ask again from the last point's TS + 1.
type Series struct {
	ID      string   `json:"id"`
	From    int64    `json:"from"`
	To      int64    `json:"to"`
	Points  []Point  `json:"points,omitempty"`
	Buckets []Bucket `json:"buckets,omitempty"`
	More    bool     `json:"more,omitempty"`
}

func (m *Module) query(ctx context.Context, req *QueryReq) (*Series, error) {
	if err := m.admin(ctx); err != nil {
		return nil, err
	}
	if _, ok := m.device(req.ID); !ok {
		return nil, notFound("device", req.ID)
	}
	return m.Query(ctx, req)
}

// Query reads a device's telemetry (the telemetry handler without the
// caller check), for other modules and benchmarks.
func (m *Module) Query(_ context.Context, req *QueryReq) (*Series, error) {
	to, from := req.To, req.From
	if to == 0 {
		to = now() + 1
	}
	if from == 0 {
		from = to - time.Hour.Milliseconds()
	}
	if from >= to || req.Step < 0 {
		return nil, rpc.Errorf(rpc.CodeBadRequest, "want from < to and step >= 0: %w", ErrInvalid)
	}
	s := &Series{ID: req.ID, From: from, To: to}
	var want map[string]bool
	if len(req.Fields) > 0 {
		want = map[string]bool{}
		for _, f := range req.Fields {
			want[f] = true
		}
	}
	pick := func(v Values) Values {
		if want == nil {
			return v
		}
		out := Values{}
		for k, x := range v {
			if want[k] {
				out[k] = x
			}
		}
		return out
	}
	start, end := pointKey(req.ID, from), pointKey(req.ID, to)
	if req.Step == 0 {
		limit := req.Limit
		if limit <= 0 {
			limit = 1000
		}
		limit = min(limit, m.opts.MaxQueryPoints)
		s.Points = []Point{}
		err := m.st.points.ScanRange(start, end, func(k string, v Values) bool {
			if len(s.Points) == limit {
				s.More = true
				return false
			}
			s.Points = append(s.Points, Point{TS: keyTS(k), Values: pick(v)})
			return true
		})
		return s, err
	}
	if (to-from)/req.Step >= int64(m.opts.MaxQueryPoints) {
		return nil, rpc.Errorf(rpc.CodeBadRequest, "%d buckets asked, at most %d: widen step: %w",
			(to-from)/req.Step, m.opts.MaxQueryPoints, ErrInvalid)
	}
	type acc struct {
		min, max, sum float64
		n             int
	}
	var (
		cur    *Bucket
		fields map[string]*acc
	)
	s.Buckets = []Bucket{}
	closeBucket := func() {
		if cur == nil {
			return
		}
		cur.Fields = make(map[string]Agg, len(fields))
		for k, a := range fields {
			cur.Fields[k] = Agg{Min: a.min, Max: a.max, Avg: a.sum / float64(a.n), Count: a.n}
		}
		s.Buckets = append(s.Buckets, *cur)
	}
	err := m.st.points.ScanRange(start, end, func(k string, v Values) bool {
		ts := keyTS(k)
		bts := from + (ts-from)/req.Step*req.Step
		if cur == nil || cur.TS != bts {
			closeBucket()
			cur, fields = &Bucket{TS: bts}, map[string]*acc{}
		}
		cur.Count++
		for f, x := range v {
			if want != nil && !want[f] {
				continue
			}
			a := fields[f]
			if a == nil {
				fields[f] = &acc{min: x, max: x, sum: x, n: 1}
				continue
			}
			a.min, a.max, a.sum, a.n = math.Min(a.min, x), math.Max(a.max, x), a.sum+x, a.n+1
		}
		return true
	})
	closeBucket()
	return s, err
}

// LatestReq names devices whose latest telemetry to read.
type LatestReq struct {
	IDs []string `json:"ids"`
}

// LatestMap is the latest telemetry per device id; devices without any
// are left out.
type LatestMap struct {
	Latest map[string]Latest `json:"latest"`
}

func (m *Module) latest(ctx context.Context, req *LatestReq) (*LatestMap, error) {
	if err := m.admin(ctx); err != nil {
		return nil, err
	}
	out := &LatestMap{Latest: map[string]Latest{}}
	ids := req.IDs
	if len(ids) == 0 {
		m.mu.RLock()
		for id := range m.devs {
			ids = append(ids, id)
		}
		m.mu.RUnlock()
		sort.Strings(ids)
	}
	for _, id := range ids {
		l, ok, err := m.st.latest.Get(id)
		if err != nil {
			return nil, err
		}
		if ok {
			out.Latest[id] = l
		}
	}
	return out, nil
}

// sweepTelemetry applies retention: points older than TelemetryMaxAge,
// and the oldest beyond TelemetryMaxPoints per device.
func (m *Module) sweepTelemetry(ctx context.Context) error {
	m.mu.RLock()
	ids := make([]string, 0, len(m.devs))
	for id := range m.devs {
		ids = append(ids, id)
	}
	m.mu.RUnlock()
	for _, id := range ids {
		if err := ctx.Err(); err != nil {
			return err
		}
		if m.opts.TelemetryMaxAge > 0 {
			cut := now() - time.Duration(m.opts.TelemetryMaxAge).Milliseconds()
			if _, err := m.deletePoints(ctx, id, cut, -1); err != nil {
				return err
			}
		}
		if m.opts.TelemetryMaxPoints > 0 {
			n, _, err := m.st.counts.Get(id)
			if err != nil {
				return err
			}
			if over := n - int64(m.opts.TelemetryMaxPoints); over > 0 {
				if _, err := m.deletePoints(ctx, id, math.MaxInt64, over); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// deletePoints deletes id's points older than before, at most limit of
// them (-1: all), oldest first, and lowers its count.
func (m *Module) deletePoints(ctx context.Context, id string, before, limit int64) (int64, error) {
	var deleted int64
	for limit < 0 || deleted < limit {
		var keys []string
		err := m.st.points.ScanRange(pointKey(id, 0), pointKey(id, before), func(k string, _ Values) bool {
			keys = append(keys, k)
			return len(keys) < 10_000 && (limit < 0 || deleted+int64(len(keys)) < limit)
		})
		if err != nil || len(keys) == 0 {
			return deleted, err
		}
		b := m.st.db.NewBatch()
		for _, k := range keys {
			m.st.points.DeleteIn(b, k)
		}
		n := int64(len(keys))
		m.st.counts.UpdateIn(b, id, func(cur int64, _ bool) (int64, bool) { return max(cur-n, 0), true })
		if err := b.Commit(ctx); err != nil {
			return deleted, err
		}
		deleted += n
	}
	return deleted, nil
}
