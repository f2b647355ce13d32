package modules_test

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/colonymq/colony/app"
	"github.com/colonymq/colony/app/apptest"
	"github.com/colonymq/colony/modules"
	"github.com/colonymq/colony/rpc"
)

func TestBuiltinModulesServeInfo(t *testing.T) {
	a := apptest.Run(t, apptest.Config(t), modules.Builtin()...)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, id := range []string{"im", "device", "game"} {
		info, err := rpc.Call[app.ModuleInfo](ctx, a.RPC(), id, "info", nil)
		if err != nil {
			t.Fatalf("%s.info: %v", id, err)
		}
		if info.Module != id || info.Node != "test" || !slices.Contains(info.Handlers, "info") {
			t.Fatalf("%s.info = %+v", id, info)
		}
	}
}

func TestModulesCanBeDisabled(t *testing.T) {
	cfg := apptest.Config(t)
	cfg.Modules.Enabled = []string{"game"}
	a := apptest.Run(t, cfg, modules.Builtin()...)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := rpc.Call[app.ModuleInfo](ctx, a.RPC(), "im", "info", nil); !errors.Is(err, rpc.ErrNotFound) {
		t.Fatalf("disabled module answered: %v", err)
	}
	if _, err := rpc.Call[app.ModuleInfo](ctx, a.RPC(), "game", "info", nil); err != nil {
		t.Fatal(err)
	}
}
