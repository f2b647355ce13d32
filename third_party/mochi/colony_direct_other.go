//go:build !unix

// COLONY PATCH (see PATCHES.md, P20): no non-blocking writes here; every
// delivery goes through the queue's writer goroutine.

package mqtt

import (
	"errors"
	"net"
	"syscall"
)

const rawSockets = false

// rawSocket is never made here (sockOf returns the connection); it exists
// so that the code using it compiles.
type rawSocket struct {
	c  net.Conn
	rc syscall.RawConn
}

func (s *rawSocket) Read(p []byte) (int, error)   { return s.c.Read(p) }
func (s *rawSocket) Write(p []byte) (int, error)  { return s.c.Write(p) }
func (s *rawSocket) WriteNow([]byte) (int, error) { return 0, errors.ErrUnsupported }
