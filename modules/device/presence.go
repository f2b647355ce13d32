package device

import (
	"context"
	"encoding/json"
	"strings"
	"sync"
	"time"

	"github.com/colonymq/colony/server"
)

// Status is a device's connection state.
type Status struct {
	Online      bool   `json:"online"`
	Since       int64  `json:"since,omitempty"`     // Unix ms it came online or went offline
	LastSeen    int64  `json:"last_seen,omitempty"` // Unix ms of its last connect, disconnect or telemetry
	Connections int    `json:"connections,omitempty"`
	Remote      string `json:"remote,omitempty"` // address of its latest connection
}

// presence follows connection events (server.Watch) of device
// connections: status and last seen, the retained dev/<id>/status topic,
// and what waits for a device once it listens (queued commands, jobs).
// It sees the connections of the node the module runs on.
type presence struct {
	m        *Module
	mu       sync.Mutex
	st       map[string]*Status
	byClient map[string]string // client id -> device id
	dirty    map[string]bool
	actions  []action
	wake     chan struct{}
}

// action is work an event leaves for the presence goroutine.
type action struct {
	device, client string
	status         bool // publish the status topic
	cmds, jobs     bool // the client now listens for commands / job notifications
}

func newPresence(m *Module) *presence {
	return &presence{m: m, st: map[string]*Status{}, byClient: map[string]string{}, dirty: map[string]bool{},
		wake: make(chan struct{}, 1)}
}

// load reads the stored statuses; after a restart no device is connected.
func (p *presence) load(context.Context) error {
	return p.m.st.status.Scan("", func(id string, s Status) bool {
		if s.Online {
			s.Online, s.Connections, s.Since = false, 0, s.LastSeen
			p.dirty[id] = true
		}
		p.st[id] = &s
		return true
	})
}

// event runs on connection goroutines: it updates the maps and leaves the
// slow work to run.
func (p *presence) event(ev server.Event) {
	t := ev.Time.UnixMilli()
	p.mu.Lock()
	switch ev.Kind {
	case server.UserBound:
		id, ok := strings.CutPrefix(ev.UserID, userPrefix)
		if !ok || p.byClient[ev.ClientID] == id {
			break
		}
		p.byClient[ev.ClientID] = id
		s := p.get(id)
		s.Connections++
		s.LastSeen, s.Remote = t, ev.Remote
		if !s.Online {
			s.Online, s.Since = true, t
		}
		p.dirty[id] = true
		p.actions = append(p.actions, action{device: id, client: ev.ClientID, status: true, cmds: true, jobs: true})
	case server.Connected, server.Disconnected:
		id, ok := p.byClient[ev.ClientID]
		if !ok {
			break
		}
		delete(p.byClient, ev.ClientID)
		s := p.get(id)
		s.LastSeen = t
		if s.Connections--; s.Connections <= 0 {
			s.Connections, s.Online, s.Since = 0, false, t
			p.actions = append(p.actions, action{device: id, status: true})
		}
		p.dirty[id] = true
	case server.Subscribed:
		id, ok := p.byClient[ev.ClientID]
		if !ok {
			break
		}
		a := action{device: id, client: ev.ClientID}
		for _, f := range ev.Filters {
			a.cmds = a.cmds || match(f, cmdProbe(id))
			a.jobs = a.jobs || match(f, TopicRoot+id+"/jobs/notify")
		}
		if a.cmds || a.jobs {
			p.actions = append(p.actions, a)
		}
	}
	p.mu.Unlock()
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// cmdProbe is a topic a device listening for commands must match.
func cmdProbe(id string) string { return TopicRoot + id + "/cmd/x/x" }

func (p *presence) get(id string) *Status {
	s := p.st[id]
	if s == nil {
		s = &Status{}
		p.st[id] = s
	}
	return s
}

// touch records that a device was seen now (telemetry).
func (p *presence) touch(id string, t int64) {
	p.mu.Lock()
	if s := p.st[id]; s != nil && t > s.LastSeen {
		s.LastSeen = t
		p.dirty[id] = true
	}
	p.mu.Unlock()
}

func (p *presence) status(id string) Status {
	p.mu.Lock()
	defer p.mu.Unlock()
	if s := p.st[id]; s != nil {
		return *s
	}
	return Status{}
}

func (p *presence) online(id string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := p.st[id]
	return s != nil && s.Online
}

// clientsOf returns the client ids of a device's connections.
func (p *presence) clientsOf(id string) []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []string
	for c, d := range p.byClient {
		if d == id {
			out = append(out, c)
		}
	}
	return out
}

func (p *presence) forget(id string) {
	p.mu.Lock()
	delete(p.st, id)
	delete(p.dirty, id)
	p.mu.Unlock()
}

// run performs the actions and writes statuses until stop is closed.
func (p *presence) run(stop <-chan struct{}) {
	t := time.NewTicker(5 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-p.wake:
			p.process()
		case <-t.C:
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			if err := p.flush(ctx, false); err != nil {
				p.m.log.Error().Err(err).Msg("write device status")
			}
			cancel()
		}
	}
}

func (p *presence) process() {
	p.mu.Lock()
	acts := p.actions
	p.actions = nil
	p.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, a := range acts {
		if _, ok := p.m.device(a.device); !ok {
			continue
		}
		if a.status {
			st := p.status(a.device)
			b, err := json.Marshal(st)
			if err == nil {
				err = p.m.host.Server.Publish(TopicRoot+a.device+"/status", b, true, 1)
			}
			if err != nil {
				p.m.log.Warn().Err(err).Str("device", a.device).Msg("publish status")
			}
		}
		// On connect a device may not listen yet: what waits is sent when
		// it subscribes, or now if its resumed session already does.
		if a.cmds && (a.client == "" || p.m.host.Server.SubscribedTo(a.client, cmdProbe(a.device))) {
			p.m.cmds.drain(ctx, a.device)
		}
		if a.jobs && p.m.host.Server.SubscribedTo(a.client, TopicRoot+a.device+"/jobs/notify") {
			p.m.jobs.notify(ctx, a.device)
		}
	}
	if err := p.flush(ctx, false); err != nil {
		p.m.log.Error().Err(err).Msg("write device status")
	}
}

// flush writes the changed statuses; all also runs the pending actions'
// status part (at Stop).
func (p *presence) flush(ctx context.Context, _ bool) error {
	p.mu.Lock()
	if len(p.dirty) == 0 {
		p.mu.Unlock()
		return nil
	}
	b := p.m.st.db.NewBatch()
	for id := range p.dirty {
		if s := p.st[id]; s != nil {
			p.m.st.status.PutIn(b, id, *s)
		}
	}
	p.dirty = map[string]bool{}
	p.mu.Unlock()
	return b.Commit(ctx)
}

// match reports whether an MQTT topic filter matches a topic name.
func match(filter, topic string) bool {
	for {
		f, frest, fmore := strings.Cut(filter, "/")
		t, trest, tmore := strings.Cut(topic, "/")
		switch {
		case f == "#":
			return true
		case f != "+" && f != t:
			return false
		}
		if !fmore || !tmore {
			if fmore && !tmore {
				return frest == "#"
			}
			return fmore == tmore
		}
		filter, topic = frest, trest
	}
}
