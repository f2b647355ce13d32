package amqp

import (
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"testing"

	amqp091 "github.com/rabbitmq/amqp091-go"
)

// proxy is a TCP forwarder to the broker that starts down: its port is
// reserved but nothing listens until up is called. It plays a RabbitMQ
// that is not there yet.
type proxy struct {
	tb       testing.TB
	addr     string // where the proxy listens, once up
	upstream string // host:port of the broker
	url      string // the broker's URL with the proxy's address

	mu    sync.Mutex
	ln    net.Listener
	conns []net.Conn
	wg    sync.WaitGroup // accept and copy goroutines, waited for by close
}

func newProxy(tb testing.TB, upstreamURL string) *proxy {
	tb.Helper()
	u, err := amqp091.ParseURI(upstreamURL)
	if err != nil {
		tb.Fatal(err)
	}
	// Reserve a free port and release it: dials fail until up.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	addr := ln.Addr().String()
	if err := ln.Close(); err != nil {
		tb.Fatal(err)
	}
	pu := u
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		tb.Fatal(err)
	}
	pu.Host = host
	if _, err := fmt.Sscan(port, &pu.Port); err != nil {
		tb.Fatal(err)
	}
	p := &proxy{tb: tb, addr: addr, upstream: net.JoinHostPort(u.Host, fmt.Sprint(u.Port)), url: pu.String()}
	tb.Cleanup(p.close)
	return p
}

// up starts listening and forwarding.
func (p *proxy) up() {
	p.tb.Helper()
	ln, err := net.Listen("tcp", p.addr)
	if err != nil {
		p.tb.Fatalf("proxy listen on %s: %v", p.addr, err)
	}
	p.mu.Lock()
	p.ln = ln
	p.wg.Add(1)
	p.mu.Unlock()
	go func() {
		defer p.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			p.wg.Add(1)
			go p.forward(c)
		}
	}()
}

func (p *proxy) forward(c net.Conn) {
	defer p.wg.Done()
	up, err := net.Dial("tcp", p.upstream)
	if err != nil {
		p.tb.Logf("proxy dial upstream: %v", err)
		p.closeConn(c)
		return
	}
	p.mu.Lock()
	p.conns = append(p.conns, c, up)
	p.wg.Add(1)
	p.mu.Unlock()
	go func() {
		defer p.wg.Done()
		p.pipe(up, c)
	}()
	p.pipe(c, up)
}

// pipe copies until either side closes, then closes both.
func (p *proxy) pipe(dst, src net.Conn) {
	if _, err := io.Copy(dst, src); err != nil && !errors.Is(err, net.ErrClosed) {
		p.tb.Logf("proxy copy: %v", err)
	}
	p.closeConn(dst)
	p.closeConn(src)
}

func (p *proxy) closeConn(c net.Conn) {
	if err := c.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
		p.tb.Logf("proxy close: %v", err)
	}
}

// close stops listening, cuts every connection and waits for the
// goroutines, so none of them logs after the test has ended.
func (p *proxy) close() {
	p.mu.Lock()
	if p.ln != nil {
		if err := p.ln.Close(); err != nil {
			p.tb.Logf("proxy close listener: %v", err)
		}
	}
	conns := p.conns
	p.mu.Unlock()
	for _, c := range conns {
		p.closeConn(c)
	}
	p.wg.Wait()
}
