package main

import (
	"bytes"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

func TestVersion(t *testing.T) {
	var out, errb bytes.Buffer
	if code := run([]string{"version"}, nil, &out, &errb); code != 0 {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	for _, want := range []string{"colony", "commit", runtime.Version(), runtime.GOOS + "/" + runtime.GOARCH} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("version output %q lacks %q", out.String(), want)
		}
	}
}

func TestServeBrokenConfigIsOneClearLine(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "colony.toml")
	if err := os.WriteFile(cfg, []byte("[listeners]\nmqtt = \"127.0.0.1:0\"\nwebsocket = \"127.0.0.1:0\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var out, errb bytes.Buffer
	code := run([]string{"serve", "-c", cfg}, nil, &out, &errb)
	if code != 1 {
		t.Fatalf("exit %d, want 1", code)
	}
	line := strings.TrimSpace(errb.String())
	if strings.Count(line, "\n") != 0 || !strings.Contains(line, cfg+":3") || !strings.Contains(line, `"listeners.websocket"`) {
		t.Fatalf("stderr %q: want one line naming file, line 3 and the key", line)
	}
}

func TestServePortInUse(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	var out, errb bytes.Buffer
	code := run([]string{"serve", "--data", t.TempDir(), "--mqtt", busy.Addr().String(), "--ws", "off", "--http", "off"}, nil, &out, &errb)
	if code != 1 {
		t.Fatalf("exit %d, want 1", code)
	}
	// The logger writes JSON lines to stderr; the error itself is the last line.
	lines := strings.Split(strings.TrimSpace(errb.String()), "\n")
	last := lines[len(lines)-1]
	for _, want := range []string{"colony: ", busy.Addr().String(), "address already in use", "listeners.mqtt"} {
		if !strings.Contains(last, want) {
			t.Errorf("last stderr line %q lacks %q", last, want)
		}
	}
}

func TestPasswdFromStdin(t *testing.T) {
	file := filepath.Join(t.TempDir(), "users")
	var out, errb bytes.Buffer
	if code := run([]string{"passwd", "-f", file, "alice"}, strings.NewReader("wonderland\n"), &out, &errb); code != 0 {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(string(b), "alice:$2") || strings.Contains(string(b), "wonderland") {
		t.Fatalf("password file %q", b)
	}
	if code := run([]string{"passwd", "-f", file}, strings.NewReader("x\n"), &out, &errb); code != 1 {
		t.Fatalf("passwd without a user: exit %d", code)
	}
}

func TestUnknownCommand(t *testing.T) {
	var out, errb bytes.Buffer
	if code := run([]string{"frobnicate"}, nil, &out, &errb); code != 2 || !strings.Contains(errb.String(), "unknown command") {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
}
