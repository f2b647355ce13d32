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

// sockOf returns what the engine reads a connection's bytes from and writes
// them to: a *rawSocket for a plain TCP or Unix socket on systems that have
// one, else the connection itself (TLS and WebSocket frame their bytes).
func sockOf(c net.Conn) io.ReadWriter {
	if !rawSockets {
		return c
	}
	var sc syscall.Conn
	switch c := c.(type) {
	case *net.TCPConn:
		sc = c
	case *net.UnixConn:
		sc = c
	default:
		return c
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return c
	}
	return &rawSocket{c: c, rc: rc}
}

// rawConn returns the raw connection of a client's plain socket, or nil.
func (cn *ClientConnection) rawConn() syscall.RawConn {
	if rs, ok := cn.sock.(*rawSocket); ok {
		return rs.rc
	}
	return nil
}
