// COLONY PATCH (see PATCHES.md, P20 and P21): socket I/O that never blocks a
// thread and skips the runtime's system call bookkeeping, so that a
// delivery can be written from the publisher's goroutine (outQueue.push) and
// a message costs the server no thread switch it does not need.

package mqtt

import (
	"io"
	"net"
	"syscall"
)

// rawConnOf returns the raw connection of a plain TCP or Unix socket, which
// writeNonblocking can write, or nil: TLS and WebSocket connections frame
// their bytes and are written by the queue's writer goroutine only.
func rawConnOf(c net.Conn) syscall.RawConn {
	if !nonblockingWrites {
		return nil
	}
	var sc syscall.Conn
	switch c := c.(type) {
	case *net.TCPConn:
		sc = c
	case *net.UnixConn:
		sc = c
	default:
		return nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	return rc
}

// sockOf returns what the engine reads a connection's bytes from and writes
// them to: the raw socket when there is one (P21), else the connection.
func sockOf(c net.Conn, rc syscall.RawConn) io.ReadWriter {
	if rc == nil {
		return c
	}
	return &rawSocket{c: c, rc: rc}
}
