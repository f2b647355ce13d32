//go:build unix

package bench

import (
	"fmt"
	"syscall"
)

// RaiseFileLimit raises this process's soft limit on open files
// (RLIMIT_NOFILE) to its hard limit and returns the soft limit now in force.
// The Idle scenario needs one descriptor per connection.
func RaiseFileLimit() (uint64, error) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 0, fmt.Errorf("get open file limit: %w", err)
	}
	if lim.Cur >= lim.Max {
		return uint64(lim.Cur), nil
	}
	raised := lim
	raised.Cur = lim.Max
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &raised); err != nil {
		return uint64(lim.Cur), fmt.Errorf("raise open file limit to %d: %w", lim.Max, err)
	}
	return uint64(raised.Cur), nil
}
