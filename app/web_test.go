package app_test

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"path/filepath"
	"testing"

	"github.com/colonymq/colony/app"
	"github.com/colonymq/colony/app/apptest"
	"github.com/colonymq/colony/server"
)

// pages is a module that serves HTTP: it echoes the path it gets.
type pages struct {
	app.Base
	id string
}

func (p *pages) ID() string { return p.id }
func (*pages) Web() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "page "+r.URL.Path) })
}

var _ app.Web = (*pages)(nil)

// get fetches url and returns the status and body.
func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

func TestModulePagesOnTheHTTPListener(t *testing.T) {
	cfg := apptest.Config(t)
	cfg.Modules.Enabled = []string{"chat"}
	a := apptest.Run(t, cfg, &pages{id: "chat"}, &pages{id: "off"})
	base := "http://" + a.Addr("http")
	for path, want := range map[string]string{
		"/chat/":           "page /",
		"/chat/app.js":     "page /app.js",
		"/chat/a/b?x=1":    "page /a/b",
		"/chat":            "page /", // redirected to /chat/
		"/healthz/x":       "",
		"/off/":            "", // not enabled here
		"/chatter/app.js":  "",
		"/connect.json/xy": "",
	} {
		code, body := get(t, base+path)
		switch {
		case want == "" && code != http.StatusNotFound:
			t.Errorf("GET %s: %d %q, want 404", path, code, body)
		case want != "" && (code != http.StatusOK || body != want):
			t.Errorf("GET %s: %d %q, want 200 %q", path, code, body, want)
		}
	}
	if code, _ := get(t, base+"/healthz"); code != http.StatusOK {
		t.Errorf("healthz: %d", code)
	}
}

func TestConnectJSON(t *testing.T) {
	check := func(t *testing.T, a *app.App, passwords bool) {
		t.Helper()
		code, body := get(t, "http://"+a.Addr("http")+"/connect.json")
		var info app.ConnectInfo
		if err := json.Unmarshal([]byte(body), &info); err != nil || code != http.StatusOK {
			t.Fatalf("connect.json: %d %q %v", code, body, err)
		}
		want := app.ConnectInfo{Node: "test", WS: "ws://" + a.Addr("ws") + "/mqtt", Passwords: passwords}
		if info != want {
			t.Fatalf("connect.json = %+v, want %+v", info, want)
		}
	}
	t.Run("anonymous", func(t *testing.T) { check(t, apptest.Run(t, apptest.Config(t)), false) })
	t.Run("passwords", func(t *testing.T) {
		cfg := apptest.Config(t)
		cfg.Auth.PasswordFile = filepath.Join(t.TempDir(), "users")
		if err := server.SetPassword(cfg.Auth.PasswordFile, "alice", "secret"); err != nil {
			t.Fatal(err)
		}
		check(t, apptest.Run(t, cfg), true)
	})
	t.Run("ws off", func(t *testing.T) {
		cfg := apptest.Config(t)
		cfg.Listeners.WS = app.Off
		a := apptest.Run(t, cfg)
		_, body := get(t, "http://"+a.Addr("http")+"/connect.json")
		var info app.ConnectInfo
		if err := json.Unmarshal([]byte(body), &info); err != nil || info.WS != "" {
			t.Fatalf("connect.json with ws off: %q %v", body, err)
		}
	})
}

func TestModulePagesNeedAPathID(t *testing.T) {
	a := app.New(apptest.Config(t), apptest.Logger(t))
	if err := a.Use(&pages{id: "a b"}); err != nil {
		t.Fatal(err)
	}
	err := a.Start(apptest.Ctx(t))
	if err == nil {
		apptest.Stop(t, a)
		t.Fatal("a module whose id is no path segment mounted pages")
	}
	if !errors.Is(err, app.ErrConfig) {
		t.Fatalf("error %v does not wrap ErrConfig", err)
	}
}
