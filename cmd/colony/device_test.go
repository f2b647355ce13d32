package main

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	pahov3 "github.com/eclipse/paho.mqtt.golang"

	"github.com/colonymq/colony/app/apptest"
	"github.com/colonymq/colony/modules"
)

func TestDeviceCommand(t *testing.T) {
	a := apptest.Run(t, apptest.Config(t), modules.Builtin()...)
	url := apptest.URL(a)
	cli := func(args ...string) (map[string]any, string) {
		t.Helper()
		var out, errb bytes.Buffer
		if code := run(append([]string{"device", "--url", url}, args...), nil, &out, &errb); code != 0 {
			return nil, strings.TrimSpace(errb.String())
		}
		var v map[string]any
		if err := json.Unmarshal(out.Bytes(), &v); err != nil {
			t.Fatalf("%v: output %q: %v", args, out.String(), err)
		}
		return v, ""
	}
	added, errs := cli("add", "kiln-1", "--type", "kiln", "--label", "site=a", "--label", "floor=2")
	tok, _ := added["token"].(string)
	if errs != "" || tok == "" || added["device"].(map[string]any)["labels"].(map[string]any)["floor"] != "2" {
		t.Fatalf("add: %v %s", added, errs)
	}
	if _, errs := cli("add", "kiln-1"); !strings.Contains(errs, "already exists") {
		t.Fatalf("second add: %q", errs)
	}
	list, _ := cli("list", "--label", "site=a")
	if ds := list["devices"].([]any); len(ds) != 1 {
		t.Fatalf("list %v", list)
	}
	// The token from add logs the device in.
	apptest.V3(t, url, "kiln-1", func(o *pahov3.ClientOptions) { o.SetUsername("kiln-1").SetPassword(tok) })
	rot, _ := cli("token", "kiln-1", "--grace", "0s")
	if rot["token"] == tok || rot["token"] == "" {
		t.Fatalf("token %v", rot)
	}
	if _, err := apptest.V3Try(url, "kiln-1b", func(o *pahov3.ClientOptions) { o.SetUsername("kiln-1").SetPassword(tok) }); err == nil {
		t.Fatal("revoked token still works")
	}
	if d, _ := cli("disable", "kiln-1"); d["disabled"] != true {
		t.Fatalf("disable %v", d)
	}
	if d, _ := cli("enable", "kiln-1"); d["disabled"] == true {
		t.Fatalf("enable %v", d)
	}
	if d, _ := cli("show", "kiln-1"); d["type"] != "kiln" || d["tokens"] != 1.0 {
		t.Fatalf("show %v", d)
	}
	if p, _ := cli("psk", "kiln-1"); len(p["key"].(string)) != 64 {
		t.Fatalf("psk %v", p)
	}
	cli("delete", "kiln-1")
	if _, errs := cli("show", "kiln-1"); !strings.Contains(errs, "not_found") {
		t.Fatalf("show after delete: %q", errs)
	}
}
