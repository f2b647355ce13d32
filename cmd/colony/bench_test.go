package main

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"github.com/colonymq/colony/app/apptest"
	"github.com/colonymq/colony/modules"
)

func TestBenchCommand(t *testing.T) {
	a := apptest.Run(t, apptest.Config(t), modules.Builtin()...)
	var out, errb bytes.Buffer
	code := run([]string{"bench", "--url", apptest.URL(a), "--scenario", "fan-in", "--pubs", "2", "--subs", "1",
		"--count", "300", "--qos", "1", "--json"}, nil, &out, &errb)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	var r struct {
		Sent, Expected, Received, Lost, Duplicates int64
	}
	if err := json.Unmarshal(out.Bytes(), &r); err != nil {
		t.Fatalf("--json output %q: %v", out.String(), err)
	}
	if r.Sent != 600 || r.Expected != 600 || r.Received != 600 || r.Lost != 0 || r.Duplicates != 0 {
		t.Fatalf("counts %+v", r)
	}

	out.Reset()
	errb.Reset()
	if code := run([]string{"bench", "--scenario", "rpc", "--url", apptest.URL(a), "--pubs", "1", "--count", "20"}, nil, &out, &errb); code != 0 {
		t.Fatalf("rpc exit %d: %s", code, errb.String())
	}
	if !strings.Contains(out.String(), "rpc") {
		t.Fatalf("table output %q", out.String())
	}
	if code := run([]string{"bench", "--scenario", "sideways"}, nil, &out, &errb); code == 0 {
		t.Fatal("unknown scenario accepted")
	}
}
