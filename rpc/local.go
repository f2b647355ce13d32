package rpc

import (
	"context"
	"fmt"
	"runtime"
	"runtime/debug"
	"sync"
	"sync/atomic"
)

// Limits bounds the work one module accepts from the local transport.
type Limits struct {
	// Workers is how many handlers of the module may run at once. Default
	// 2*GOMAXPROCS, at least 2.
	Workers int
	// Queue is the capacity of the module's inbox. When it is full callers
	// block until there is room or their ctx ends. Default 1024.
	Queue int
}

// LocalOptions configures a Local transport.
type LocalOptions struct {
	// Default applies to modules without an entry in Modules, and fills the
	// zero fields of the entries that exist.
	Default Limits
	// Modules overrides Default per module name.
	Modules map[string]Limits
	// Node is this node's id. It is informational: Local never rewrites
	// the Caller in a call's ctx.
	Node string
	// OnPanic, when set, is told about every handler panic (the caller
	// gets an internal error either way), so the stack can be logged.
	OnPanic func(module string, value any, stack []byte)
}

// LocalStats counts what a Local transport did since it was created.
type LocalStats struct {
	Calls    uint64 // calls taken off an inbox
	Notifies uint64 // notifies taken off an inbox
	Errors   uint64 // handler errors and panics, plus calls whose ctx ended while queued
	Panics   uint64 // handler panics
	Rejected uint64 // calls and notifies refused with unavailable because the transport was stopping
}

// Local is the in-process transport. Each module has one inbox, a buffered
// channel, served by a bounded pool of worker goroutines; arguments and
// results cross it as Go values and are never encoded.
//
// Worker pools start with Start for the modules registered by then; a module
// registered later gets its pool on its first call. Call and Notify are safe
// for concurrent use, also before Start (the pool is then created on first
// use) and during Stop.
type Local struct {
	reg  *Registry
	opts LocalOptions

	mu       sync.Mutex // guards creating inboxes and stopping
	inboxes  atomic.Pointer[map[string]*inbox]
	stopped  atomic.Bool
	stopping chan struct{} // closed by Stop to wake callers blocked on a full inbox
	rejected atomic.Uint64
}

var _ Transport = (*Local)(nil)

// NewLocal returns a Local transport serving the modules of reg. Limits
// that are zero or negative are replaced by the defaults.
func NewLocal(reg *Registry, opts LocalOptions) *Local {
	opts.Default = opts.Default.withDefaults(Limits{
		Workers: max(2, 2*runtime.GOMAXPROCS(0)),
		Queue:   1024,
	})
	mods := make(map[string]Limits, len(opts.Modules))
	for m, lim := range opts.Modules {
		mods[m] = lim.withDefaults(opts.Default)
	}
	opts.Modules = mods
	l := &Local{reg: reg, opts: opts, stopping: make(chan struct{})}
	l.inboxes.Store(&map[string]*inbox{})
	return l
}

func (lim Limits) withDefaults(def Limits) Limits {
	if lim.Workers <= 0 {
		lim.Workers = def.Workers
	}
	if lim.Queue <= 0 {
		lim.Queue = def.Queue
	}
	return lim
}

// Name returns "local".
func (l *Local) Name() string { return "local" }

// Start starts the worker pools of every module registered so far. It
// fails only after Stop, since a stopped transport cannot restart.
func (l *Local) Start() error {
	if l.stopped.Load() {
		return fmt.Errorf("start local transport: %w", Errorf(CodeUnavailable, "transport stopped"))
	}
	for _, m := range l.reg.Modules() {
		if _, err := l.inbox(m); err != nil {
			return fmt.Errorf("start local transport: %w", err)
		}
	}
	return nil
}

// Stop stops accepting calls, lets queued and running calls finish and
// waits for the workers to exit or for ctx to end, whichever is first. Calls
// made after Stop fail with ErrUnavailable, and so do callers that were
// still waiting for room in a full inbox.
func (l *Local) Stop(ctx context.Context) error {
	l.mu.Lock()
	if !l.stopped.Load() {
		l.stopped.Store(true)
		close(l.stopping)
	}
	boxes := *l.inboxes.Load()
	l.mu.Unlock()

	for _, b := range boxes {
		b.stop()
	}
	for _, b := range boxes {
		select {
		case <-b.done:
		case <-ctx.Done():
			return fmt.Errorf("stop local transport: module %q still busy: %w", b.module, ctx.Err())
		}
	}
	return nil
}

// Serves reports whether module has handlers and the transport is not
// stopping.
func (l *Local) Serves(module string) bool {
	return !l.stopped.Load() && l.reg.HasModule(module)
}

// Call runs the handler on one of the module's workers and waits for its
// result. A full inbox blocks the caller until there is room or ctx ends;
// calls are never dropped. The handler runs with ctx, so the Caller and the
// deadline reach it. If ctx ends first Call returns a timeout or canceled
// error and the handler's eventual result is discarded.
func (l *Local) Call(ctx context.Context, req *Request) (any, error) {
	h, b, err := l.route(req)
	if err != nil {
		return nil, err
	}
	j := jobPool.Get().(*job)
	j.ctx, j.h, j.arg, j.notify = ctx, h, req.Arg, false
	if err := l.enqueue(ctx, b, j, req); err != nil {
		j.recycle()
		return nil, err
	}
	if done := ctx.Done(); done == nil {
		<-j.reply
	} else {
		select {
		case <-j.reply:
		case <-done:
			select {
			case <-j.reply: // the result made it after all
			default:
				// The worker still owns j and will write to it, so j
				// must not go back to the pool: the GC takes it.
				return nil, ctxError(ctx, "call "+req.Module+"."+req.Fn)
			}
		}
	}
	res, err := j.res, j.err
	j.recycle()
	return res, err
}

// Notify queues a call whose result nobody waits for. It blocks only while
// the inbox is full, and fails only if the call could not be queued. The
// handler runs with ctx's values but without its deadline or cancellation,
// because the caller has moved on; handler errors are counted and dropped.
func (l *Local) Notify(ctx context.Context, req *Request) error {
	h, b, err := l.route(req)
	if err != nil {
		return err
	}
	jctx := ctx
	if ctx.Done() != nil {
		jctx = context.WithoutCancel(ctx)
	}
	j := jobPool.Get().(*job)
	j.ctx, j.h, j.arg, j.notify = jctx, h, req.Arg, true
	if err := l.enqueue(ctx, b, j, req); err != nil {
		j.recycle()
		return err
	}
	return nil
}

// Stats returns the transport's counters.
func (l *Local) Stats() LocalStats {
	s := LocalStats{Rejected: l.rejected.Load()}
	for _, b := range *l.inboxes.Load() {
		for _, w := range b.stats {
			s.Calls += w.calls.Load()
			s.Notifies += w.notifies.Load()
			s.Errors += w.errors.Load()
			s.Panics += w.panics.Load()
		}
	}
	return s
}

func (l *Local) route(req *Request) (HandlerFunc, *inbox, error) {
	h, ok := l.reg.Lookup(req.Module, req.Fn)
	if !ok {
		if !l.reg.HasModule(req.Module) {
			return nil, nil, Errorf(CodeNotFound, "no module %q", req.Module)
		}
		return nil, nil, Errorf(CodeNotFound, "module %q has no handler %q", req.Module, req.Fn)
	}
	b, err := l.inbox(req.Module)
	if err != nil {
		return nil, nil, err
	}
	return h, b, nil
}

// inbox returns the inbox of module, creating it and its workers on first
// use.
func (l *Local) inbox(module string) (*inbox, error) {
	if b, ok := (*l.inboxes.Load())[module]; ok {
		return b, nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	old := *l.inboxes.Load()
	if b, ok := old[module]; ok {
		return b, nil
	}
	if l.stopped.Load() {
		l.rejected.Add(1)
		return nil, Errorf(CodeUnavailable, "module %q stopping", module)
	}
	lim, ok := l.opts.Modules[module]
	if !ok {
		lim = l.opts.Default
	}
	b := newInbox(module, lim, l.opts.OnPanic)
	next := make(map[string]*inbox, len(old)+1)
	for m, ob := range old {
		next[m] = ob
	}
	next[module] = b
	l.inboxes.Store(&next)
	return b, nil
}

// enqueue puts j in b, waiting for room while ctx lasts.
func (l *Local) enqueue(ctx context.Context, b *inbox, j *job, req *Request) error {
	if ctx.Err() != nil {
		// Don't queue work whose caller has already given up.
		return ctxError(ctx, "call "+req.Module+"."+req.Fn)
	}
	if !b.enter() {
		l.rejected.Add(1)
		return Errorf(CodeUnavailable, "module %q stopping", req.Module)
	}
	defer b.leave()
	select {
	case b.ch <- j:
		return nil
	default:
	}
	select {
	case b.ch <- j:
		return nil
	case <-ctx.Done():
		return ctxError(ctx, "call "+req.Module+"."+req.Fn+": waiting for a full inbox")
	case <-l.stopping:
		l.rejected.Add(1)
		return Errorf(CodeUnavailable, "module %q stopping", req.Module)
	}
}

// stoppedBit marks an inbox's gate as closed; the bits below count the
// senders currently inside enqueue.
const stoppedBit = 1 << 62

// inbox is one module's queue and worker pool.
type inbox struct {
	module string
	ch     chan *job
	// gate lets Stop close ch safely: senders register in it before
	// sending, and ch is closed only once the gate is shut and empty.
	gate      atomic.Int64
	closeOnce sync.Once
	done      chan struct{} // closed when every worker has exited
	stats     []*workerStats
	onPanic   func(module string, value any, stack []byte)
}

// workerStats are per worker so that counting never contends; the padding
// keeps two workers' counters off one cache line.
type workerStats struct {
	calls, notifies, errors, panics atomic.Uint64
	_                               [96]byte
}

func newInbox(module string, lim Limits, onPanic func(string, any, []byte)) *inbox {
	b := &inbox{
		module:  module,
		onPanic: onPanic,
		ch:      make(chan *job, lim.Queue),
		done:    make(chan struct{}),
		stats:   make([]*workerStats, lim.Workers),
	}
	var wg sync.WaitGroup
	for i := range b.stats {
		st := new(workerStats)
		b.stats[i] = st
		wg.Go(func() { b.serve(st) })
	}
	go func() {
		wg.Wait()
		close(b.done)
	}()
	return b
}

func (b *inbox) enter() bool {
	if b.gate.Add(1)&stoppedBit != 0 {
		b.leave()
		return false
	}
	return true
}

func (b *inbox) leave() {
	if b.gate.Add(-1) == stoppedBit {
		b.closeOnce.Do(func() { close(b.ch) })
	}
}

// stop shuts the gate; the last sender out (or stop itself, if there is
// none) closes ch, and the workers exit once they have drained it.
func (b *inbox) stop() {
	if b.gate.Or(stoppedBit) == 0 {
		b.closeOnce.Do(func() { close(b.ch) })
	}
}

func (b *inbox) serve(st *workerStats) {
	for j := range b.ch {
		j.run(st, b)
	}
}

// job is one queued call. Jobs and their reply channels are pooled, which
// is safe only because a job goes back to the pool after its reply has been
// received (or, for a notify, after it ran): nothing else can touch it then.
type job struct {
	ctx    context.Context
	h      HandlerFunc
	arg    any
	notify bool

	res   any
	err   error
	reply chan struct{} // capacity 1, so the worker never blocks on it
}

var jobPool = sync.Pool{New: func() any { return &job{reply: make(chan struct{}, 1)} }}

func (j *job) recycle() {
	j.ctx, j.h, j.arg, j.res, j.err = nil, nil, nil, nil, nil
	jobPool.Put(j)
}

func (j *job) run(st *workerStats, b *inbox) {
	if j.notify {
		st.notifies.Add(1)
	} else {
		st.calls.Add(1)
	}
	if err := j.ctx.Err(); err != nil {
		// Nobody is waiting any more, so don't spend a worker on it.
		st.errors.Add(1)
		j.finish(nil, ctxError(j.ctx, "call expired in queue"))
		return
	}
	res, err, panicked := invoke(j.ctx, j.h, j.arg, b.onPanic != nil)
	if err != nil {
		st.errors.Add(1)
		if panicked != nil {
			st.panics.Add(1)
			if b.onPanic != nil {
				b.onPanic(b.module, panicked.value, panicked.stack)
			}
		}
		err = internalError(err)
	}
	j.finish(res, err)
}

func (j *job) finish(res any, err error) {
	if j.notify {
		j.recycle()
		return
	}
	j.res, j.err = res, err
	j.reply <- struct{}{}
}

// invoke runs h, turning a panic into an internal error so that one bad
// request cannot take a worker, or the node, down.
func invoke(ctx context.Context, h HandlerFunc, arg any, wantStack bool) (res any, err error, panicked *panicInfo) {
	defer func() {
		if v := recover(); v != nil {
			panicked = &panicInfo{value: v}
			if wantStack {
				panicked.stack = debug.Stack()
			}
			res, err = nil, Errorf(CodeInternal, "handler panicked: %v", v)
		}
	}()
	res, err = h(ctx, arg)
	return res, err, nil
}

// panicInfo is what a recovered handler panic left behind.
type panicInfo struct {
	value any
	stack []byte
}
