package im

import (
	"embed"
	"io/fs"
	"net/http"

	"github.com/colonymq/colony/app"
)

// webFiles is the demo chat page: plain HTML, CSS and JavaScript on a
// vendored MQTT.js (web/mqtt.min.js, see README.md).
//
//go:embed web
var webFiles embed.FS

var _ app.Web = (*Module)(nil)

// Web serves the demo chat page, which the App mounts at /im/ on the
// node's HTTP listener. The page learns where MQTT over WebSocket listens
// from the App's /connect.json and logs in with the login handler, or
// with a username and password where the node checks passwords.
func (*Module) Web() http.Handler {
	sub, err := fs.Sub(webFiles, "web")
	if err != nil { // only for an invalid name, which "web" is not
		return nil
	}
	files := http.FileServerFS(sub)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		// Embedded files have no modification time to revalidate by:
		// browsers fetch again and so get the running binary's version.
		w.Header().Set("Cache-Control", "no-cache")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		files.ServeHTTP(w, r)
	})
}
