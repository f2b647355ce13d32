// COLONY PATCH (see PATCHES.md, P20): writes that never block, so that a
// delivery can be written from the publisher's goroutine (outQueue.push).

package mqtt

import (
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
