package app

import "testing"

func TestWSURL(t *testing.T) {
	for _, c := range []struct{ bound, host, want string }{
		{"127.0.0.1:8083", "127.0.0.1:8080", "ws://127.0.0.1:8083/mqtt"},
		{"127.0.0.1:8083", "localhost:8080", "ws://127.0.0.1:8083/mqtt"},
		{"0.0.0.0:8083", "chat.example:8080", "ws://chat.example:8083/mqtt"},
		{"[::]:8083", "[2001:db8::1]:8080", "ws://[2001:db8::1]:8083/mqtt"},
		{"[::]:8083", "chat.example", "ws://chat.example:8083/mqtt"},
		{"[::1]:41234", "[::1]:8080", "ws://[::1]:41234/mqtt"},
		{"nonsense", "x:1", ""},
	} {
		if got := wsURL(c.bound, c.host); got != c.want {
			t.Errorf("wsURL(%q, %q) = %q, want %q", c.bound, c.host, got, c.want)
		}
	}
}
