//go:build unix

// COLONY PATCH (see PATCHES.md, P20, P21 and P24).

package mqtt

import (
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
)

const rawSockets = true

// rawSocket reads and writes a plain socket as net.Conn does, waiting in the
// runtime's poller when it has to (deadlines included), but with sysRead and
// sysWrite instead of the runtime's blocking system calls. P21.
//
// P24: the functions handed to the raw connection are made once, with the
// socket, and the call in progress keeps its state here. Closures made for
// every call escaped to the heap: three allocations for each read and each
// write, the largest part of a delivery's garbage.
type rawSocket struct {
	c  net.Conn
	rc syscall.RawConn

	rmu    sync.Mutex // one read at a time (the client's reader)
	rbuf   []byte
	rn     int
	rerr   error
	readFn func(fd uintptr) bool

	wmu     sync.Mutex // one write at a time (whoever holds the client's lock)
	wbuf    []byte
	wn      int
	wwait   bool
	werr    error
	writeFn func(fd uintptr) bool
}

func newRawSocket(c net.Conn, rc syscall.RawConn) *rawSocket {
	s := &rawSocket{c: c, rc: rc}
	s.readFn = s.readSome
	s.writeFn = s.writeSome
	return s
}

// Read reads what the socket has, waiting for something if it has nothing.
func (s *rawSocket) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	s.rmu.Lock()
	s.rbuf, s.rn, s.rerr = p, 0, nil
	err := s.rc.Read(s.readFn)
	n := s.rn
	if err == nil {
		err = s.rerr
	}
	s.rbuf, s.rerr = nil, nil // the caller's buffer is not kept
	s.rmu.Unlock()
	if err != nil {
		return 0, s.opError("read", err)
	}
	if n == 0 {
		return 0, io.EOF
	}
	return n, nil
}

// readSome is the raw connection's read callback for Read.
func (s *rawSocket) readSome(fd uintptr) bool {
	for {
		m, err := sysRead(fd, s.rbuf)
		switch err {
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			return false // wait until readable, then try again
		}
		s.rn, s.rerr = m, err
		return true
	}
}

// Write writes all of p, waiting for room in the socket when it has none.
func (s *rawSocket) Write(p []byte) (int, error) {
	s.wmu.Lock()
	return s.write(p, true)
}

// WriteNow writes as much of p as the socket takes now and returns how much
// that was; a full socket is not an error. P20. It never waits: while
// another write is in progress it writes nothing.
func (s *rawSocket) WriteNow(p []byte) (int, error) {
	if !s.wmu.TryLock() {
		return 0, nil
	}
	return s.write(p, false)
}

// write does a write for Write or WriteNow, which hold wmu; it releases it.
func (s *rawSocket) write(p []byte, wait bool) (int, error) {
	s.wbuf, s.wn, s.wwait, s.werr = p, 0, wait, nil
	err := s.rc.Write(s.writeFn)
	n := s.wn
	if err == nil {
		err = s.werr
	}
	s.wbuf, s.werr = nil, nil
	s.wmu.Unlock()
	if err != nil {
		return n, s.opError("write", err)
	}
	return n, nil
}

// writeSome is the raw connection's write callback for write.
func (s *rawSocket) writeSome(fd uintptr) bool {
	for s.wn < len(s.wbuf) {
		m, err := sysWrite(fd, s.wbuf[s.wn:])
		switch err {
		case nil:
			s.wn += m
		case syscall.EINTR:
		case syscall.EAGAIN:
			return !s.wwait // with wait: until writable, then go on
		default:
			s.werr = err
			return true
		}
	}
	return true
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
