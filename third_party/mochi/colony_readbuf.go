// COLONY PATCH (see PATCHES.md, P17): a client's read buffer is borrowed
// from a pool while there is something to read, instead of a bufio.Reader of
// ClientNetReadBufferSize bytes held for the whole life of every connection
// (2 KB per idle connection, most of an idle client's heap).

package mqtt

import (
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"time"
)

// readPools holds one pool of read buffers per buffer size (servers with
// different ClientNetReadBufferSize share nothing).
var readPools sync.Map // int -> *sync.Pool

func readPool(size int) *sync.Pool {
	if p, ok := readPools.Load(size); ok {
		return p.(*sync.Pool)
	}
	p, _ := readPools.LoadOrStore(size, &sync.Pool{New: func() any {
		b := make([]byte, size)
		return &b
	}})
	return p.(*sync.Pool)
}

// readBuf buffers what a client sends. It is used by one reader goroutine
// at a time. It holds a pooled buffer only while that buffer has unread
// bytes or a packet is being read; release gives it back once everything
// received has been consumed, so an idle connection holds none.
type readBuf struct {
	conn net.Conn  // for deadlines
	src  io.Reader // what is read: conn, or its raw socket (P21)
	pool *sync.Pool
	size int // of the pool's buffers
	buf  *[]byte
	r, w int     // unread bytes are (*buf)[r:w]
	one  [1]byte // the first byte of a packet, read without a buffer
}

func newReadBuf(c net.Conn, src io.Reader, size int) readBuf {
	return readBuf{conn: c, src: src, pool: readPool(size), size: size}
}

func (rb *readBuf) acquire() []byte {
	if rb.buf == nil {
		rb.buf = rb.pool.Get().(*[]byte)
		rb.r, rb.w = 0, 0
	}
	return *rb.buf
}

// release returns the buffer to the pool if nothing in it is unread.
func (rb *readBuf) release() {
	if rb.buf != nil && rb.r == rb.w {
		rb.pool.Put(rb.buf)
		rb.buf = nil
		rb.r, rb.w = 0, 0
	}
}

// reset drops anything unread and returns the buffer to the pool (the
// connection has ended).
func (rb *readBuf) reset() {
	rb.r, rb.w = 0, 0
	rb.release()
}

// readWithin waits until until for bytes to arrive and buffers them; false
// means none did. keepalive is the connection's read deadline, restored
// afterwards; when it comes first, readWithin returns true at once and the
// read that follows reports the timeout. An error is the connection's end.
func (rb *readBuf) readWithin(until, keepalive time.Time) (bool, error) {
	if !keepalive.IsZero() && !keepalive.After(until) {
		return true, nil
	}
	if err := rb.conn.SetReadDeadline(until); err != nil {
		return false, err
	}
	err := rb.fill()
	if derr := rb.conn.SetReadDeadline(keepalive); derr != nil {
		return false, derr
	}
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return false, nil
	}
	return err == nil, err
}

// buffered returns the number of bytes received and not yet consumed.
func (rb *readBuf) buffered() int { return rb.w - rb.r }

// fill reads once from the connection into the free end of the buffer.
func (rb *readBuf) fill() error {
	b := rb.acquire()
	if rb.r == rb.w {
		rb.r, rb.w = 0, 0
	}
	// Some connections return no bytes and no error now and then (net.Pipe
	// does for a zero-length write): try again, as bufio.Reader does.
	for i := 0; i < maxEmptyReads; i++ {
		n, err := rb.src.Read(b[rb.w:])
		rb.w += n
		if n > 0 {
			return nil // an error comes back from the next read
		}
		if err != nil {
			return err
		}
	}
	return io.ErrNoProgress
}

// maxEmptyReads is how many reads in a row may return nothing, as in bufio.
const maxEmptyReads = 100

// firstByte returns the first byte of a packet. With nothing buffered and
// no buffer held it waits for the byte on the connection itself, so a reader
// blocked between packets holds no buffer.
func (rb *readBuf) firstByte() (byte, error) {
	if rb.r == rb.w && rb.buf == nil {
		if _, err := io.ReadFull(rb.src, rb.one[:]); err != nil {
			return 0, err
		}
		return rb.one[0], nil
	}
	return rb.ReadByte()
}

// ReadByte returns the next byte.
func (rb *readBuf) ReadByte() (byte, error) {
	if rb.r == rb.w {
		if err := rb.fill(); err != nil {
			return 0, err
		}
	}
	c := (*rb.buf)[rb.r]
	rb.r++
	return c, nil
}

// Read implements io.Reader for io.ReadFull: buffered bytes first, then a
// large remainder straight from the connection, a small one through the
// buffer.
func (rb *readBuf) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if rb.r == rb.w {
		if len(p) >= rb.size {
			return rb.src.Read(p)
		}
		if err := rb.fill(); err != nil {
			return 0, err
		}
	}
	n := copy(p, (*rb.buf)[rb.r:rb.w])
	rb.r += n
	return n, nil
}
