package bench

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// connectParallel is how many clients connect at the same time.
const connectParallel = 32

// progressInterval is how often Run calls its progress callback.
const progressInterval = 200 * time.Millisecond

// Run executes the scenario cfg describes and returns what it measured.
// progress, when not nil, is called from another goroutine about five times a
// second and once when the run is over.
//
// Lost messages, duplicates and failed publishes are results, not errors: the
// error is non-nil only for a Config that cannot run (ErrInvalidConfig),
// clients that cannot connect or subscribe (ErrConnect), or an unreadable
// PID. When ctx ends early, Run stops publishing and returns what it has,
// with Result.Interrupted set.
func Run(ctx context.Context, cfg Config, progress func(Progress)) (*Result, error) {
	runID := newRunID()
	cfg, err := cfg.withDefaults(runID)
	if err != nil {
		return nil, err
	}
	r := &runner{cfg: cfg, runID: runID, started: time.Now()}
	r.phase.Store("connect")
	res := &Result{
		Scenario: cfg.Scenario, URL: cfg.URL, MQTTVersion: cfg.MQTTVersion, QoS: cfg.QoS,
		Publishers: cfg.Publishers, Subscribers: cfg.Subscribers, Count: cfg.Count, Size: cfg.Size, Rate: cfg.Rate,
	}
	switch cfg.Scenario {
	case Idle: // no messages: leave the message settings out of the result
		res.Publishers, res.Count, res.Size, res.Rate = 0, 0, 0, 0
	case RPC:
		res.Size = len(rpcBody)
	}
	r.plan()
	if progress != nil {
		stop := r.report(progress)
		defer stop()
	}
	switch cfg.Scenario {
	case Idle:
		err = r.idle(ctx, res)
	case RPC:
		err = r.rpc(ctx, res)
	default:
		err = r.pubsub(ctx, res)
	}
	if err != nil {
		return nil, err
	}
	res.Errors = r.errs.n.Load()
	res.FirstError = r.errs.firstMsg()
	res.Interrupted = ctx.Err() != nil
	r.phase.Store("done")
	return res, nil
}

// runner is the state of one Run.
type runner struct {
	cfg      Config
	runID    string // names the clients
	started  time.Time
	errs     errLog
	phase    atomic.Value // string
	trackers []*tracker   // set by plan, before report starts

	connected atomic.Int64
	clients   int64 // connections to open; set by plan
	sent      atomic.Int64
	sentBy    []atomic.Int64 // per publisher; set by plan
	total     int64          // messages to send; set by plan
}

// plan sizes the run and creates the receivers' trackers, before anything
// (the progress reporter included) reads them.
func (r *runner) plan() {
	cfg := &r.cfg
	switch cfg.Scenario {
	case Idle:
		r.clients = int64(cfg.Clients)
		return
	case RPC:
		r.clients = int64(cfg.Publishers)
		r.trackers = make([]*tracker, cfg.Publishers)
		for i := range r.trackers {
			r.trackers[i] = newTracker(uint64(i), 1, cfg.Count)
			r.trackers[i].notify = make(chan uint64, 16)
		}
	default:
		r.clients = int64(cfg.Publishers + cfg.Subscribers)
		r.trackers = make([]*tracker, cfg.Subscribers)
		for i := range r.trackers {
			if cfg.Scenario == Pairs {
				r.trackers[i] = newTracker(uint64(i), 1, cfg.Count)
			} else {
				r.trackers[i] = newTracker(0, cfg.Publishers, cfg.Count)
			}
		}
	}
	r.total = int64(cfg.Publishers) * int64(cfg.Count)
	r.sentBy = make([]atomic.Int64, cfg.Publishers)
}

// report calls f every progressInterval until the returned stop is called,
// which also makes one last call.
func (r *runner) report(f func(Progress)) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(progressInterval)
		defer t.Stop()
		for {
			select {
			case <-done:
				f(r.snapshot())
				return
			case <-t.C:
				f(r.snapshot())
			}
		}
	}()
	return func() {
		close(done)
		wg.Wait()
	}
}

// snapshot returns the current Progress.
func (r *runner) snapshot() Progress {
	p := Progress{
		Phase: r.phase.Load().(string), Elapsed: time.Since(r.started),
		Connected: r.connected.Load(), Clients: r.clients, Sent: r.sent.Load(), Total: r.total,
	}
	for _, t := range r.trackers {
		p.Received += t.unique.Load()
		p.Expected += t.expected()
	}
	return p
}

// startRSS starts sampling the server's memory when cfg.PID is set.
func (r *runner) startRSS(res *Result) (*sampler, error) {
	if r.cfg.PID == 0 {
		return nil, nil
	}
	s, before, err := startSampler(r.cfg.PID)
	if err != nil {
		return nil, fmt.Errorf("pid %d: %w", r.cfg.PID, err)
	}
	res.ServerRSS = &ServerRSS{PID: r.cfg.PID, BeforeKB: before.rss, BeforeAnonKB: before.anon}
	return s, nil
}

// connectAll opens n clients, connectParallel at a time, with opts(i) for
// client i, then calls after(i, c) for each (e.g. to subscribe). On the first
// failure it closes what it opened and returns the error.
func (r *runner) connectAll(ctx context.Context, n int, opts func(int) clientOpts, after func(int, client) error) ([]client, error) {
	cs := make([]client, n)
	errs := make([]error, n)
	sem := make(chan struct{}, connectParallel)
	var wg sync.WaitGroup
	var failed atomic.Bool
	for i := range n {
		if failed.Load() || ctx.Err() != nil {
			break
		}
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			c, err := connect(ctx, &r.cfg, opts(i), &r.errs)
			if err == nil {
				cs[i] = c
				r.connected.Add(1)
				if after != nil {
					err = after(i, c)
				}
			}
			if err != nil {
				errs[i] = err
				failed.Store(true)
			}
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			r.disconnectAll(cs)
			return nil, fmt.Errorf("%w: %w", ErrConnect, err)
		}
	}
	if err := ctx.Err(); err != nil {
		r.disconnectAll(cs)
		return nil, fmt.Errorf("%w: %w", ErrConnect, err)
	}
	return cs, nil
}

// disconnectAll disconnects every non-nil client, connectParallel at a time.
func (r *runner) disconnectAll(cs []client) {
	sem := make(chan struct{}, connectParallel)
	var wg sync.WaitGroup
	for _, c := range cs {
		if c == nil {
			continue
		}
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			c.disconnect()
			r.connected.Add(-1)
		}()
	}
	wg.Wait()
}

// id returns the client id of the i-th client of a role ("p", "s", …).
func (r *runner) id(role string, i int) string {
	return "bench-" + r.runID + "-" + role + strconv.Itoa(i)
}

// pace sleeps until message seq of publisher pub is due under cfg.Rate,
// spreading the publishers evenly over one interval. It returns false when
// ctx ended.
func (r *runner) pace(ctx context.Context, start time.Time, pub, seq int) bool {
	if r.cfg.Rate <= 0 {
		return ctx.Err() == nil
	}
	offset := float64(seq) + float64(pub)/float64(r.cfg.Publishers)
	d := time.Until(start.Add(time.Duration(offset * float64(time.Second) / r.cfg.Rate)))
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// pubsub runs FanIn, FanOut and Pairs.
func (r *runner) pubsub(ctx context.Context, res *Result) error {
	cfg := &r.cfg
	topic := func(pub int) string {
		if cfg.Scenario == FanOut {
			return cfg.Topic + "/all"
		}
		return cfg.Topic + "/" + strconv.Itoa(pub)
	}
	filter := func(sub int) string {
		switch cfg.Scenario {
		case FanIn:
			return cfg.Topic + "/+"
		case Pairs:
			return topic(sub)
		}
		return topic(0)
	}

	rss, err := r.startRSS(res)
	if err != nil {
		return err
	}
	subOpts := func(i int) clientOpts {
		t := r.trackers[i]
		return clientOpts{id: r.id("s", i), persistent: cfg.Persistent, onMessage: func(_ string, payload, _ []byte) {
			t.record(payload, time.Now().UnixNano())
			if cfg.SubDelay > 0 {
				time.Sleep(cfg.SubDelay)
			}
		}}
	}
	subs, err := r.connectAll(ctx, cfg.Subscribers, subOpts, func(i int, c client) error { return c.subscribe(filter(i)) })
	if err != nil {
		rss.stopQuietly()
		return err
	}
	pubs, err := r.connectAll(ctx, cfg.Publishers, func(i int) clientOpts { return clientOpts{id: r.id("p", i), sn: cfg.SN != ""} }, nil)
	if err != nil {
		r.disconnectAll(subs)
		r.clearSessions(subs)
		rss.stopQuietly()
		return err
	}

	r.phase.Store("publish")
	start := time.Now()
	var wg sync.WaitGroup
	for i, c := range pubs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r.publishLoop(ctx, start, i, c, func(seq int) message {
				return message{topic: topic(i), payload: header{pub: uint64(i), seq: uint64(seq), sent: time.Now().UnixNano()}.encode(cfg.Size)}
			})
		}()
	}
	wg.Wait()
	pubEnd := time.Now()
	r.settleExpectations()

	r.phase.Store("drain")
	r.drain(ctx, pubEnd)
	if rss != nil {
		rss.finish(res.ServerRSS)
	}
	r.disconnectAll(pubs)
	r.disconnectAll(subs)
	r.clearSessions(subs)
	r.finish(res, start, pubEnd)
	return nil
}

// publishLoop sends cfg.Count messages from publisher i, built by next,
// paced by cfg.Rate, then waits for their acknowledgements.
func (r *runner) publishLoop(ctx context.Context, start time.Time, i int, c client, next func(seq int) message) {
	for seq := range r.cfg.Count {
		if !r.pace(ctx, start, i, seq) {
			break
		}
		if _, stop := r.send(c, i, seq, next(seq)); stop {
			break
		}
	}
	c.flush()
}

// send publishes m as message seq of publisher i and counts it. It reports
// whether m was sent, and whether the publisher must stop.
func (r *runner) send(c client, i, seq int, m message) (sent, stop bool) {
	err := c.publish(m)
	if errors.Is(err, errStalled) {
		r.errs.add(fmt.Errorf("publisher %d stopped after %d messages: %w", i, seq, err))
		return false, true
	}
	if err != nil {
		r.errs.add(err)
		return false, false
	}
	r.sent.Add(1)
	r.sentBy[i].Add(1)
	return true, false
}

// settleExpectations makes every receiver expect what was actually sent.
func (r *runner) settleExpectations() {
	for _, t := range r.trackers {
		t.sentBy(r.sentBy)
	}
}

// drain waits until every receiver has all its messages, or no delivery has
// come for cfg.Timeout since the later of pubEnd and the last delivery, or
// ctx ends.
func (r *runner) drain(ctx context.Context, pubEnd time.Time) {
	t := time.NewTicker(5 * time.Millisecond)
	defer t.Stop()
	for {
		all := true
		last := pubEnd.UnixNano()
		for _, tr := range r.trackers {
			all = all && tr.done()
			last = max(last, tr.lastAt.Load())
		}
		if all || time.Since(time.Unix(0, last)) > r.cfg.Timeout {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// finish sums the receivers into res and computes the rates.
func (r *runner) finish(res *Result, start, pubEnd time.Time) {
	var s tally
	for _, t := range r.trackers {
		s.add(t)
	}
	s.fill(res)
	res.Sent = r.sent.Load()
	res.PublishDuration = pubEnd.Sub(start)
	res.Duration = res.PublishDuration
	if s.lastAt > 0 {
		res.Duration = time.Unix(0, s.lastAt).Sub(start)
	}
	if sec := res.PublishDuration.Seconds(); sec > 0 {
		res.SentPerSec = float64(res.Sent) / sec
	}
	if sec := res.Duration.Seconds(); sec > 0 {
		res.MsgsPerSec = float64(res.Received) / sec
	}
}

// clearSessions removes the persistent sessions of the subscribers
// (connect with a clean session, then disconnect), so runs leave no state.
func (r *runner) clearSessions(subs []client) {
	if !r.cfg.Persistent {
		return
	}
	cs, err := r.connectAll(context.Background(), len(subs), func(i int) clientOpts { return clientOpts{id: r.id("s", i)} }, nil)
	if err != nil {
		r.errs.add(fmt.Errorf("clear persistent sessions: %w", err))
		return
	}
	r.disconnectAll(cs)
}
