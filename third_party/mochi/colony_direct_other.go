//go:build !unix

// COLONY PATCH (see PATCHES.md, P20): no non-blocking writes here; every
// delivery goes through the queue's writer goroutine.

package mqtt

import (
	"errors"
	"net"
	"syscall"
)

const nonblockingWrites = false

func writeNonblocking(syscall.RawConn, []byte) (int, error) {
	return 0, errors.ErrUnsupported
}

// rawSocket is never made here (rawConnOf returns nil); it exists so that
// sockOf compiles.
type rawSocket struct {
	c  net.Conn
	rc syscall.RawConn
}

func (s *rawSocket) Read(p []byte) (int, error)  { return s.c.Read(p) }
func (s *rawSocket) Write(p []byte) (int, error) { return s.c.Write(p) }
