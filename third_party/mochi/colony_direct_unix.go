//go:build unix

// COLONY PATCH (see PATCHES.md, P20 and P21).

package mqtt

import (
	"errors"
	"io"
	"net"
	"os"
	"syscall"
)

const rawSockets = true

// rawSocket reads and writes a plain socket as net.Conn does, waiting in the
// runtime's poller when it has to (deadlines included), but with sysRead and
// sysWrite instead of the runtime's blocking system calls. P21.
type rawSocket struct {
	c  net.Conn
	rc syscall.RawConn
}

// Read reads what the socket has, waiting for something if it has nothing.
func (s *rawSocket) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	var n int
	var rerr error
	err := s.rc.Read(func(fd uintptr) bool {
		for {
			m, err := sysRead(fd, p)
			switch err {
			case syscall.EINTR:
				continue
			case syscall.EAGAIN:
				return false // wait until readable, then try again
			}
			n, rerr = m, err
			return true
		}
	})
	if err == nil {
		err = rerr
	}
	if err != nil {
		return 0, s.opError("read", err)
	}
	if n == 0 {
		return 0, io.EOF
	}
	return n, nil
}

// Write writes all of p, waiting for room in the socket when it has none.
func (s *rawSocket) Write(p []byte) (int, error) {
	return s.write(p, true)
}

// WriteNow writes as much of p as the socket takes now and returns how much
// that was; a full socket is not an error. P20.
func (s *rawSocket) WriteNow(p []byte) (int, error) {
	return s.write(p, false)
}

func (s *rawSocket) write(p []byte, wait bool) (int, error) {
	var n int
	var werr error
	err := s.rc.Write(func(fd uintptr) bool {
		for n < len(p) {
			m, err := sysWrite(fd, p[n:])
			switch err {
			case nil:
				n += m
			case syscall.EINTR:
			case syscall.EAGAIN:
				return !wait // with wait: until writable, then go on
			default:
				werr = err
				return true
			}
		}
		return true
	})
	if err == nil {
		err = werr
	}
	if err != nil {
		return n, s.opError("write", err)
	}
	return n, nil
}

// opError wraps err as net.Conn's methods do, so logs and errors.Is/As see
// what they saw before (timeouts, closed connections, resets).
func (s *rawSocket) opError(op string, err error) error {
	var oe *net.OpError
	if errors.As(err, &oe) { // the raw connection's own wrapping ("raw-read")
		err = oe.Err
	}
	if errno, ok := err.(syscall.Errno); ok {
		err = os.NewSyscallError(op, errno)
	}
	la := s.c.LocalAddr()
	network := ""
	if la != nil {
		network = la.Network()
	}
	return &net.OpError{Op: op, Net: network, Source: la, Addr: s.c.RemoteAddr(), Err: err}
}
