//go:build !unix

// COLONY PATCH (see PATCHES.md, P20): no non-blocking writes here; every
// delivery goes through the queue's writer goroutine.

package mqtt

import (
	"errors"
	"syscall"
)

const nonblockingWrites = false

func writeNonblocking(syscall.RawConn, []byte) (int, error) {
	return 0, errors.ErrUnsupported
}
