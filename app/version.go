package app

import (
	"fmt"
	"runtime"
	"runtime/debug"
)

// Version and Commit are stamped at build time:
//
//	go build -ldflags "-X github.com/colonymq/colony/app.Version=v0.1.0 -X github.com/colonymq/colony/app.Commit=$(git rev-parse --short HEAD)"
var (
	Version = "dev"
	Commit  = ""
)

// VersionString describes the build: version, commit, Go version, OS/arch.
func VersionString() string {
	commit := Commit
	if commit == "" {
		if bi, ok := debug.ReadBuildInfo(); ok {
			for _, s := range bi.Settings {
				if s.Key == "vcs.revision" && len(s.Value) >= 12 {
					commit = s.Value[:12]
				}
			}
		}
	}
	if commit == "" {
		commit = "unknown"
	}
	return fmt.Sprintf("colony %s (commit %s, %s, %s/%s)", Version, commit, runtime.Version(), runtime.GOOS, runtime.GOARCH)
}
