package app

import (
	"context"

	"github.com/colonymq/colony/rpc"
)

// ModuleInfo is what a module's "info" handler answers.
type ModuleInfo struct {
	Module   string   `json:"module"`
	Version  string   `json:"version"`
	Node     string   `json:"node"`
	Handlers []string `json:"handlers"`
}

// HandleInfo registers the conventional "info" handler for h's module: its
// id, version, node and handler names, so clients and operators can see what
// a node serves ($rpc/<module>/info).
func HandleInfo(h *Host, version string) {
	rpc.Handle(h.Registry, h.Module, "info", func(context.Context, *struct{}) (*ModuleInfo, error) {
		return &ModuleInfo{Module: h.Module, Version: version, Node: h.Node, Handlers: h.Registry.Handlers(h.Module)}, nil
	})
}
