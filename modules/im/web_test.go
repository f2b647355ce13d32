package im_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/colonymq/colony/app"
	"github.com/colonymq/colony/app/apptest"
	"github.com/colonymq/colony/modules/im"
	"github.com/colonymq/colony/rpc"
	"github.com/colonymq/colony/server"
)

// passwordConfig returns a node config whose password file holds users
// with their passwords.
func passwordConfig(t *testing.T, users map[string]string) app.Config {
	t.Helper()
	cfg := apptest.Config(t)
	cfg.Auth.PasswordFile = filepath.Join(t.TempDir(), "users")
	for u, p := range users {
		if err := server.SetPassword(cfg.Auth.PasswordFile, u, p); err != nil {
			t.Fatal(err)
		}
	}
	return cfg
}

func TestWebPageServed(t *testing.T) {
	n := start(t, apptest.Config(t), im.Options{})
	base := "http://" + n.Addr("http") + "/im/"
	for path, want := range map[string]struct{ ctype, body string }{
		"":            {"text/html", `<script src="mqtt.min.js">`},
		"app.js":      {"text/javascript", "$rpc/im/"},
		"mqtt.min.js": {"text/javascript", "var mqtt="},
		"style.css":   {"text/css", "#msg-list"},
	} {
		resp, err := http.Get(base + path)
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), want.ctype) ||
			!strings.Contains(string(b), want.body) {
			t.Errorf("GET /im/%s: %d %s, %d bytes; want %s containing %q",
				path, resp.StatusCode, resp.Header.Get("Content-Type"), len(b), want.ctype, want.body)
		}
	}
	resp, err := http.Post(base, "text/plain", strings.NewReader("x"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST /im/: %d, want 405", resp.StatusCode)
	}
}

// The web page's login on a default node: a loopback client without a
// user id chooses one, and then is that user for everything.
func TestLoginOnTrustingNode(t *testing.T) {
	n := start(t, apptest.Config(t), im.Options{})
	bob := login(t, n, "bob", "bob-1")
	c := dial(t, n, "alice", "web-1")
	if codes := c.subscribe("replies/web-1"); !slices.Equal(codes, []byte{1}) {
		t.Fatalf("subscribe replies: %v", codes)
	}
	wantErr(t, c.call("me", struct{}{}, nil), rpc.CodeForbidden, "im needs a user")
	wantErr(t, c.call("login", &im.LoginReq{User: "a/b"}, nil), rpc.CodeBadRequest, "invalid user id")

	var me im.Me
	c.must("login", &im.LoginReq{User: "alice"}, &me)
	if me != (im.Me{User: "alice", Topic: "im/u/alice/#"}) {
		t.Fatalf("login = %+v", me)
	}
	c.must("me", struct{}{}, &me)
	if me.User != "alice" {
		t.Fatalf("me after login = %+v", me)
	}
	// The guard now knows whose topics these are.
	if codes := c.subscribe("im/u/alice/#", "im/u/bob/#"); !slices.Equal(codes, []byte{1, 0x87}) {
		t.Fatalf("subscribe own and other's topics: %v, want [1 0x87]", codes)
	}
	var conv im.Conversation
	c.must("direct", &im.DirectReq{User: "bob"}, &conv)
	c.send(conv.ID, "m-1", "hi bob")
	if m := bob.nextMsg(); m.From != "alice" || m.Text != "hi bob" {
		t.Fatalf("bob got %+v", m)
	}
	// Logging in was a connection coming online: presence says so.
	var pr im.PresenceResp
	bob.must("presence", &im.PresenceReq{Users: []string{"alice"}}, &pr)
	if len(pr.Users) != 1 || !pr.Users[0].Online {
		t.Fatalf("presence of alice after login: %+v", pr)
	}
	// A module calling login is not a client connection.
	_, err := rpc.Call[im.Me](as("carol"), n.RPC(), "im", "login", &im.LoginReq{User: "carol"})
	wantErr(t, err, rpc.CodeBadRequest, "client connections")
}

// With a password file the username is the user id, and login cannot
// change it.
func TestLoginRefusedWithPasswords(t *testing.T) {
	n := start(t, passwordConfig(t, map[string]string{"alice": "wonderland"}), im.Options{})
	c := dial(t, n, "alice", "web-1", func(cp *paho.Connect) {
		cp.Username, cp.UsernameFlag = "alice", true
		cp.Password, cp.PasswordFlag = []byte("wonderland"), true
	})
	c.subscribe("replies/web-1")
	var me im.Me
	c.must("login", &im.LoginReq{User: "alice"}, &me) // who it is already: fine
	err := c.call("login", &im.LoginReq{User: "mallory"}, nil)
	wantErr(t, err, rpc.CodeForbidden, "does not let clients choose")
	c.must("me", struct{}{}, &me)
	if me.User != "alice" {
		t.Fatalf("me after a refused login = %+v", me)
	}
}

// TestWebDemoInBrowser opens the demo page in Debian's chromium, twice, as
// alice and bob (testdata/browser/chat.mjs, on npm's playwright-core), and
// checks what each side shows: messages, typing, read receipts, presence.
// Without chromium, node or playwright-core it skips, unless
// COLONY_TEST_BROWSER=require (as in CI), which makes it fail.
func TestWebDemoInBrowser(t *testing.T) {
	node := browserTools(t)
	n := start(t, apptest.Config(t), im.Options{})
	runBrowser(t, node, "http://"+n.Addr("http")+"/im/")
	checkChat(t, n)
}

// The same with a password file: the page asks for passwords.
func TestWebDemoInBrowserWithPasswords(t *testing.T) {
	node := browserTools(t)
	n := start(t, passwordConfig(t, map[string]string{"alice": "wonderland", "bob": "builder"}), im.Options{})
	runBrowser(t, node, "http://"+n.Addr("http")+"/im/", "wonderland", "builder")
	checkChat(t, n)
}

// checkChat checks on the server what the browsers did.
func checkChat(t *testing.T, n *node) {
	t.Helper()
	conv, err := rpc.Call[im.Conversation](as("alice"), n.RPC(), "im", "direct", &im.DirectReq{User: "bob"})
	if err != nil {
		t.Fatal(err)
	}
	h, err := rpc.Call[im.HistoryResp](as("alice"), n.RPC(), "im", "history", &im.HistoryReq{Conv: conv.ID})
	if err != nil {
		t.Fatal(err)
	}
	if got := texts(h.Messages); !slices.Equal(got, []string{"hello bob", "hi alice"}) {
		t.Fatalf("history of alice and bob: %q", got)
	}
	if conv.ReadSeq != 2 {
		t.Fatalf("alice's read position %d, want 2", conv.ReadSeq)
	}
}

// browserTools returns node's path once chromium, node and the npm
// packages of testdata/browser are there.
func browserTools(t *testing.T) string {
	t.Helper()
	chromium := os.Getenv("COLONY_CHROMIUM")
	if chromium == "" {
		chromium = "/usr/bin/chromium"
	}
	var missing []string
	if _, err := os.Stat(chromium); err != nil {
		missing = append(missing, "chromium (apt-get install chromium)")
	}
	node, err := exec.LookPath("node")
	if err != nil {
		missing = append(missing, "node (apt-get install nodejs npm)")
	}
	if _, err := os.Stat(filepath.Join("testdata", "browser", "node_modules", "playwright-core")); err != nil {
		missing = append(missing, "playwright-core (npm ci --prefix modules/im/testdata/browser)")
	}
	if len(missing) > 0 {
		msg := fmt.Sprintf("browser test needs %s; COLONY_TEST_BROWSER=require makes this a failure",
			strings.Join(missing, ", "))
		if os.Getenv("COLONY_TEST_BROWSER") == "require" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return node
}

// runBrowser runs chat.mjs on the page at url and fails with its output
// when it fails.
func runBrowser(t *testing.T, node, url string, args ...string) {
	t.Helper()
	// A bound on a stuck browser, not a speed limit: each step of the
	// script waits up to a minute for what it expects.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, node, append([]string{"chat.mjs", url}, args...)...)
	cmd.Dir = filepath.Join("testdata", "browser")
	cmd.WaitDelay = 10 * time.Second
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	switch {
	case errors.As(err, &exit):
		t.Fatalf("browser test failed (%v):\n%s", err, out)
	case err != nil:
		t.Fatalf("run node: %v\n%s", err, out)
	}
	t.Logf("browser test:\n%s", out)
}
