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
type rawSocket struct {
	c  net.Conn
	rc syscall.RawConn
}

// rawCall is the state of one read or write handed to the raw connection,
// with the callbacks that use it. P24: closures made for every call escaped
// to the heap, three allocations per read and per write, the largest part
// of a delivery's garbage; calls now take a rawCall, callbacks included,
// from a pool, so an idle socket holds none.
type rawCall struct {
	buf         []byte
	n           int
	wait        bool // write: wait for room to write everything
	err         error
	read, write func(fd uintptr) bool
}

var rawCalls = sync.Pool{New: func() any {
	c := new(rawCall)
	c.read, c.write = c.readSome, c.writeSome
	return c
}}

func getRawCall(p []byte) *rawCall {
	c := rawCalls.Get().(*rawCall)
	c.buf, c.n, c.err = p, 0, nil
	return c
}

// done returns what the call did and puts it back in the pool.
func (c *rawCall) done() (int, error) {
	n, err := c.n, c.err
	c.buf, c.err = nil, nil // the caller's buffer is not kept
	rawCalls.Put(c)
	return n, err
}

// Read reads what the socket has, waiting for something if it has nothing.
func (s *rawSocket) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	c := getRawCall(p)
	err := s.rc.Read(c.read)
	n, rerr := c.done()
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

func (c *rawCall) readSome(fd uintptr) bool {
	for {
		m, err := sysRead(fd, c.buf)
		switch err {
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			return false // wait until readable, then try again
		}
		c.n, c.err = m, err
		return true
	}
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
	c := getRawCall(p)
	c.wait = wait
	err := s.rc.Write(c.write)
	n, werr := c.done()
	if err == nil {
		err = werr
	}
	if err != nil {
		return n, s.opError("write", err)
	}
	return n, nil
}

func (c *rawCall) writeSome(fd uintptr) bool {
	for c.n < len(c.buf) {
		m, err := sysWrite(fd, c.buf[c.n:])
		switch err {
		case nil:
			c.n += m
		case syscall.EINTR:
		case syscall.EAGAIN:
			return !c.wait // with wait: until writable, then go on
		default:
			c.err = err
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
