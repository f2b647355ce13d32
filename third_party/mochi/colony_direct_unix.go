//go:build unix

// COLONY PATCH (see PATCHES.md, P20).

package mqtt

import (
	"errors"
	"syscall"
)

const nonblockingWrites = true

// writeNonblocking writes as much of b as the socket takes now (Go's
// sockets are non-blocking underneath) and returns how much that was;
// EAGAIN is not an error.
func writeNonblocking(rc syscall.RawConn, b []byte) (int, error) {
	var n int
	var werr error
	err := rc.Write(func(fd uintptr) bool {
		for n < len(b) {
			m, err := syscall.Write(int(fd), b[n:])
			if errors.Is(err, syscall.EINTR) {
				continue
			}
			if err != nil {
				if !errors.Is(err, syscall.EAGAIN) {
					werr = err
				}
				break
			}
			if m <= 0 {
				break
			}
			n += m
		}
		return true // done: never wait for the socket to become writable
	})
	if err == nil {
		err = werr
	}
	return n, err
}
