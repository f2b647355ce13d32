package bench

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"
)

// settle is how long Idle lets the server's memory settle before reading it.
const settle = time.Second

// idleParallel is how many Idle connections are being opened at once.
const idleParallel = 64

// idle runs the Idle scenario: Clients bare connections (CONNECT, nothing
// else; MQTT keepalive cfg.KeepAlive), opened from raw sockets so that the
// load generator stays small, held for cfg.Hold.
func (r *runner) idle(ctx context.Context, res *Result) error {
	cfg := &r.cfg
	res.Clients = cfg.Clients
	var rss *sampler
	if cfg.PID != 0 {
		if !sleepCtx(ctx, settle) {
			return nil
		}
		var err error
		if rss, err = r.startRSS(res); err != nil {
			return err
		}
	}
	conns := make([]net.Conn, cfg.Clients)
	sem := make(chan struct{}, idleParallel)
	var wg sync.WaitGroup
	start := time.Now()
	for i := range conns {
		if ctx.Err() != nil {
			break
		}
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			c, err := rawConnect(ctx, cfg, r.id("i", i))
			if err != nil {
				r.errs.add(err)
				return
			}
			conns[i] = c
			r.connected.Add(1)
		}()
	}
	wg.Wait()
	res.Duration = time.Since(start)
	res.Connected = r.connected.Load()
	defer r.closeAll(conns)
	if res.Connected == 0 && cfg.Clients > 0 {
		rss.stopQuietly()
		return fmt.Errorf("%w: no connection opened: %s", ErrConnect, r.errs.firstMsg())
	}
	if sec := res.Duration.Seconds(); sec > 0 {
		res.ConnectsPerSec = float64(res.Connected) / sec
	}

	r.phase.Store("hold")
	if rss != nil && sleepCtx(ctx, settle) {
		if after, _, err := ReadRSS(cfg.PID); err == nil {
			res.ServerRSS.AfterKB = after
			if res.Connected > 0 {
				res.ServerRSS.PerConnBytes = float64(after-res.ServerRSS.BeforeKB) * 1024 / float64(res.Connected)
			}
		}
	}
	r.hold(ctx, conns)
	res.Dropped = countDropped(conns)
	if rss != nil {
		rss.finish(res.ServerRSS)
	}
	return nil
}

// hold keeps conns open for cfg.Hold, sending PINGREQ on each every half
// keepalive so that the server does not close them.
func (r *runner) hold(ctx context.Context, conns []net.Conn) {
	deadline := time.Now().Add(r.cfg.Hold)
	for {
		wait := min(time.Until(deadline), r.cfg.KeepAlive/2)
		if wait <= 0 || !sleepCtx(ctx, wait) || time.Until(deadline) <= 0 {
			return
		}
		for _, c := range conns {
			if c == nil {
				continue
			}
			if err := c.SetWriteDeadline(time.Now().Add(time.Second)); err != nil {
				continue
			}
			if _, err := c.Write([]byte{0xC0, 0x00}); err != nil { // PINGREQ
				r.errs.add(fmt.Errorf("ping: %w", err))
			}
		}
	}
}

// countDropped returns how many of conns the server has closed. The only
// bytes a held connection can have waiting are PINGRESPs. All reads share
// one short deadline, so this takes about that long however many there are.
func countDropped(conns []net.Conn) int64 {
	var n int64
	buf := make([]byte, 64)
	deadline := time.Now().Add(50 * time.Millisecond)
	for _, c := range conns {
		if c != nil && c.SetReadDeadline(deadline) != nil {
			n++
		}
	}
	for _, c := range conns {
		if c == nil {
			continue
		}
		_, err := c.Read(buf)
		var ne net.Error
		if err != nil && !(errors.As(err, &ne) && ne.Timeout()) {
			n++
		}
	}
	return n
}

// closeAll sends DISCONNECT on and closes every open connection.
func (r *runner) closeAll(conns []net.Conn) {
	for _, c := range conns {
		if c == nil {
			continue
		}
		if err := c.SetWriteDeadline(time.Now().Add(time.Second)); err == nil {
			if _, err := c.Write([]byte{0xE0, 0x00}); err != nil { // DISCONNECT
				r.errs.add(fmt.Errorf("disconnect: %w", err))
			}
		}
		if err := c.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
			r.errs.add(fmt.Errorf("close: %w", err))
		}
		r.connected.Add(-1)
	}
}

// sleepCtx sleeps for d and reports whether ctx is still live.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// rawConnect dials cfg.URL, sends a CONNECT (clean session, no will, cfg's
// credentials and keepalive) and waits for a successful CONNACK.
func rawConnect(ctx context.Context, cfg *Config, id string) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, connectTimeout)
	defer cancel()
	c, err := dial(ctx, cfg.URL)
	if err != nil {
		return nil, fmt.Errorf("connect %s: %w", id, err)
	}
	if err := handshake(c, cfg, id); err != nil {
		if cerr := c.Close(); cerr != nil {
			return nil, fmt.Errorf("connect %s: %w (close: %w)", id, err, cerr)
		}
		return nil, fmt.Errorf("connect %s: %w", id, err)
	}
	return c, nil
}

// handshake writes CONNECT and reads CONNACK within connectTimeout.
func handshake(c net.Conn, cfg *Config, id string) error {
	if err := c.SetDeadline(time.Now().Add(connectTimeout)); err != nil {
		return err
	}
	if _, err := c.Write(connectPacket(cfg, id)); err != nil {
		return fmt.Errorf("send CONNECT: %w", err)
	}
	var fixed [1]byte
	if _, err := io.ReadFull(c, fixed[:]); err != nil {
		return fmt.Errorf("read CONNACK: %w", err)
	}
	n, err := readVarint(c)
	if err != nil {
		return fmt.Errorf("read CONNACK: %w", err)
	}
	if fixed[0] != 0x20 || n < 2 || n > 1<<16 {
		return fmt.Errorf("read CONNACK: unexpected packet %#x of %d bytes", fixed[0], n)
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(c, body); err != nil {
		return fmt.Errorf("read CONNACK: %w", err)
	}
	if body[1] != 0 {
		return fmt.Errorf("connection refused (code %#x)", body[1])
	}
	return c.SetDeadline(time.Time{})
}

// connectPacket encodes an MQTT 3.1.1 or 5 CONNECT packet.
func connectPacket(cfg *Config, id string) []byte {
	var v bytes.Buffer
	putString(&v, "MQTT")
	level, flags := byte(4), byte(0x02) // clean session / clean start
	if cfg.MQTTVersion == 5 {
		level = 5
	}
	if cfg.Username != "" {
		flags |= 0x80 | 0x40
	}
	v.WriteByte(level)
	v.WriteByte(flags)
	v.Write(binary.BigEndian.AppendUint16(nil, uint16(cfg.KeepAlive/time.Second)))
	if cfg.MQTTVersion == 5 {
		v.WriteByte(0) // no properties
	}
	putString(&v, id)
	if cfg.Username != "" {
		putString(&v, cfg.Username)
		putString(&v, cfg.Password)
	}
	out := []byte{0x10}
	out = appendVarint(out, v.Len())
	return append(out, v.Bytes()...)
}

// putString writes an MQTT UTF-8 string: a 2-byte length, then the bytes.
func putString(b *bytes.Buffer, s string) {
	b.Write(binary.BigEndian.AppendUint16(nil, uint16(len(s))))
	b.WriteString(s)
}

// appendVarint appends n as an MQTT variable byte integer.
func appendVarint(b []byte, n int) []byte {
	for {
		d := byte(n % 128)
		n /= 128
		if n > 0 {
			d |= 0x80
		}
		b = append(b, d)
		if n == 0 {
			return b
		}
	}
}

// readVarint reads an MQTT variable byte integer (at most four bytes).
func readVarint(r io.Reader) (int, error) {
	var n, mul int = 0, 1
	var b [1]byte
	for range 4 {
		if _, err := io.ReadFull(r, b[:]); err != nil {
			return 0, err
		}
		n += int(b[0]&0x7f) * mul
		if b[0]&0x80 == 0 {
			return n, nil
		}
		mul *= 128
	}
	return 0, errors.New("malformed remaining length")
}
