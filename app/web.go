package app

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"regexp"
)

// ConnectInfo is the body of GET /connect.json on the HTTP listener: what
// a page served there (see Web) needs to open an MQTT connection to this
// node, whatever ports it was given.
type ConnectInfo struct {
	Node string `json:"node"`
	// WS is the URL of the MQTT over WebSocket listener, "" when it is
	// off. When that listener is bound to every interface, its host is the
	// one the request was made to.
	WS string `json:"ws"`
	// Passwords says that the node checks passwords (auth.password_file):
	// clients log in with a username and password, which make their user
	// id. Without it, clients are anonymous and may choose a user id on
	// loopback listeners (server.Server.ClaimUser).
	Passwords bool `json:"passwords"`
}

// pathID is what a module id must look like to name a URL path.
var pathID = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]*$`)

// mountWeb serves /connect.json and the pages of the running modules that
// implement Web.
func (a *App) mountWeb(mux *http.ServeMux) error {
	mux.HandleFunc("GET /connect.json", func(w http.ResponseWriter, r *http.Request) {
		info := ConnectInfo{Node: a.cfg.Node.ID, Passwords: a.cfg.Auth.PasswordFile != ""}
		if ws := a.Addr("ws"); ws != "" {
			info.WS = wsURL(ws, r.Host)
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		if err := json.NewEncoder(w).Encode(info); err != nil {
			a.log.Debug().Err(err).Msg("write connect.json")
		}
	})
	for _, m := range a.running {
		wm, ok := m.(Web)
		if !ok {
			continue
		}
		h := wm.Web()
		if h == nil {
			continue
		}
		if !pathID.MatchString(m.ID()) {
			return fmt.Errorf("module %q serves HTTP, but its id cannot be a URL path segment: %w", m.ID(), ErrConfig)
		}
		prefix := "/" + m.ID()
		mux.Handle(prefix+"/", http.StripPrefix(prefix, h))
		a.log.Info().Str("module", m.ID()).Str("path", prefix+"/").Msg("serving module pages")
	}
	return nil
}

// wsURL returns the ws:// URL of a WebSocket listener bound to bound, for
// a client that reached the HTTP listener as reqHost: a listener on every
// interface is reached through the host the client already uses.
func wsURL(bound, reqHost string) string {
	host, port, err := net.SplitHostPort(bound)
	if err != nil {
		return ""
	}
	if ip := net.ParseIP(host); host == "" || ip != nil && ip.IsUnspecified() {
		if h, _, err := net.SplitHostPort(reqHost); err == nil {
			host = h
		} else if reqHost != "" {
			host = reqHost
		}
	}
	return "ws://" + net.JoinHostPort(host, port) + "/mqtt"
}
