package app

import (
	"context"
	"fmt"
	"net/http"
	"sort"

	"github.com/VictoriaMetrics/metrics"
	"github.com/rs/zerolog"

	"github.com/colonymq/colony/rpc"
	"github.com/colonymq/colony/server"
	"github.com/colonymq/colony/store"
)

// Module is a feature running inside Colony (chat, devices, games, or the
// user's own). The App calls, in order and each from one goroutine:
//
//  1. ID, at Use, to name the module (config, logs, RPC);
//  2. Init, once, in dependency order, before any listener is bound: register
//     RPC handlers, open buckets, subscribe to topics. A module must not call
//     other modules here;
//  3. Start, once, in dependency order, after the listeners are up: start
//     background work; calls to other modules are fine now;
//  4. Stop, once, in reverse order, if Start succeeded: end background work
//     before returning or when ctx ends.
//
// RPC handlers run concurrently on the module's worker pool.
type Module interface {
	ID() string
	Init(ctx context.Context, host *Host) error
	Start(ctx context.Context) error
	Stop(ctx context.Context) error
}

// Dependent is implemented by modules that must start after others.
type Dependent interface {
	// Requires returns the ids of modules this one calls during Start. On a
	// single node they must be enabled; in a cluster they may run elsewhere.
	Requires() []string
}

// Guarded is implemented by modules that reserve a topic space (see
// server.TopicGuard), such as the im module's per-user delivery topics.
// The App installs the guards of every module offered with Use, before any
// module's Init and whether the module is enabled on this node or not: in
// a cluster its deliveries reach clients of every node through message
// federation, so every node must keep its space closed.
type Guarded interface {
	Guards() []server.TopicGuard
}

// Web is implemented by modules that serve HTTP, such as a demo page, on
// the node's HTTP listener (listeners.http, next to /healthz and
// /metrics). The App calls Web once, after the module's Start, and mounts
// the handler under /<module id>/ with that prefix stripped: a module "im"
// gets GET /im/app.js as /app.js. GET /connect.json tells such pages how to
// reach the node (see ConnectInfo). Modules that are not enabled on this
// node serve nothing here; a nil handler serves nothing either.
type Web interface {
	Web() http.Handler
}

// Configurable is implemented by modules that take settings from their
// [modules.<id>] table in colony.toml.
type Configurable interface {
	// Settings returns a pointer to the module's settings struct (with toml
	// tags), holding its defaults. Before any module's Init, the App
	// decodes the table into it strictly: an unknown key or a wrong type
	// fails the start with an error naming the key. Init validates the
	// values. Without a table Settings is not called.
	Settings() any
}

// Host is what a module gets to work with. Fields are set before Init and
// stay valid until the module's Stop returns.
type Host struct {
	Node     string         // this node's id
	Log      zerolog.Logger // tagged with the module id
	Registry *rpc.Registry  // register handlers with rpc.Handle(h.Registry, h.Module, …)
	RPC      *rpc.Client    // call other modules with rpc.Call
	Server   server.API     // publish, subscribe, push, users and sessions
	Store    *store.DB      // open buckets with store.NewBucket
	Module   string         // the module's own id
	// Metrics is where the module registers its metrics (names prefixed
	// colony_<module>_); /metrics serves them with the node's own.
	Metrics *metrics.Set
}

// Base is an embeddable no-op lifecycle for modules that need only some steps.
type Base struct{}

// Init does nothing.
func (Base) Init(context.Context, *Host) error { return nil }

// Start does nothing.
func (Base) Start(context.Context) error { return nil }

// Stop does nothing.
func (Base) Stop(context.Context) error { return nil }

// order sorts modules so that each comes after those it requires; it fails
// on a cycle, and on a missing dependency unless remote is true (in a
// cluster, a required module may run on another node).
func order(mods []Module, remote bool) ([]Module, error) {
	byID := map[string]Module{}
	for _, m := range mods {
		byID[m.ID()] = m
	}
	ids := make([]string, 0, len(mods))
	for _, m := range mods {
		ids = append(ids, m.ID())
	}
	sort.Strings(ids) // deterministic order among independent modules
	const (
		unvisited = iota
		visiting
		done
	)
	state := map[string]int{}
	var out []Module
	var visit func(id string, path []string) error
	visit = func(id string, path []string) error {
		switch state[id] {
		case done:
			return nil
		case visiting:
			return fmt.Errorf("module dependency cycle: %v: %w", append(path, id), ErrConfig)
		}
		state[id] = visiting
		m := byID[id]
		if d, ok := m.(Dependent); ok {
			reqs := append([]string(nil), d.Requires()...)
			sort.Strings(reqs)
			for _, r := range reqs {
				if _, ok := byID[r]; !ok {
					if remote {
						continue
					}
					return fmt.Errorf("module %q requires module %q, which is not enabled: %w", id, r, ErrConfig)
				}
				if err := visit(r, append(path, id)); err != nil {
					return err
				}
			}
		}
		state[id] = done
		out = append(out, m)
		return nil
	}
	for _, id := range ids {
		if err := visit(id, nil); err != nil {
			return nil, err
		}
	}
	return out, nil
}
