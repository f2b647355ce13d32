package bench

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// rssInterval is how often the sampler reads the server's memory.
const rssInterval = 50 * time.Millisecond

// ReadRSS returns the resident set size (VmRSS) and its lifetime peak
// (VmHWM) of process pid in KiB, from /proc/<pid>/status (Linux only).
func ReadRSS(pid int) (rssKB, hwmKB int64, err error) {
	m, err := readMem(pid)
	return m.rss, m.hwm, err
}

// mem is one reading of a process's memory, in KiB.
type mem struct {
	rss, hwm int64
	// anon is RssAnon: the process's own memory (heap, stacks), without
	// the pages of its executable and libraries (RssFile), which the
	// kernel maps in page-cache units that depend on the file system.
	anon int64
}

func readMem(pid int) (mem, error) {
	var m mem
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return m, fmt.Errorf("read server memory: %w", err)
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		k, v, ok := bytes.Cut(sc.Bytes(), []byte(":"))
		if !ok {
			continue
		}
		var dst *int64
		switch string(k) {
		case "VmRSS":
			dst = &m.rss
		case "VmHWM":
			dst = &m.hwm
		case "RssAnon":
			dst = &m.anon
		default:
			continue
		}
		f := bytes.Fields(v) // "12345 kB"
		if len(f) == 0 {
			return m, fmt.Errorf("read server memory: malformed %s line", k)
		}
		n, err := strconv.ParseInt(string(f[0]), 10, 64)
		if err != nil {
			return m, fmt.Errorf("read server memory: %s: %w", k, err)
		}
		*dst = n
	}
	if m.rss == 0 {
		return m, fmt.Errorf("read server memory: no VmRSS for pid %d", pid)
	}
	return m, nil
}

// sampler tracks the peak VmRSS of a process in the background.
type sampler struct {
	pid      int
	peak     atomic.Int64
	peakAnon atomic.Int64
	stop     chan struct{}
	wg       sync.WaitGroup
}

// startSampler reads pid's memory once (an error means the pid is unusable)
// and then every rssInterval until stopped. It returns the first reading.
func startSampler(pid int) (*sampler, mem, error) {
	m, err := readMem(pid)
	if err != nil {
		return nil, m, err
	}
	s := &sampler{pid: pid, stop: make(chan struct{})}
	s.peak.Store(m.rss)
	s.peakAnon.Store(m.anon)
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		t := time.NewTicker(rssInterval)
		defer t.Stop()
		for {
			select {
			case <-s.stop:
				return
			case <-t.C:
				s.sample()
			}
		}
	}()
	return s, m, nil
}

// sample takes one reading and returns its VmRSS (0 when the process is
// gone).
func (s *sampler) sample() int64 {
	m, err := readMem(s.pid)
	if err != nil {
		return 0 // the server exited; the peak so far stands
	}
	raise(&s.peak, m.rss)
	raise(&s.peakAnon, m.anon)
	return m.rss
}

// raise sets p to v if v is larger.
func raise(p *atomic.Int64, v int64) {
	for {
		old := p.Load()
		if v <= old || p.CompareAndSwap(old, v) {
			return
		}
	}
}

// finish takes a last reading, stops the sampler and fills in the end, peak
// and lifetime-peak figures of r.
func (s *sampler) finish(r *ServerRSS) {
	r.EndKB = s.sample()
	close(s.stop)
	s.wg.Wait()
	r.PeakKB = s.peak.Load()
	r.PeakAnonKB = s.peakAnon.Load()
	if _, hwm, err := ReadRSS(s.pid); err == nil {
		r.HWMKB = hwm
	}
}

// stopQuietly stops a sampler (which may be nil) without a last reading.
func (s *sampler) stopQuietly() {
	if s == nil {
		return
	}
	close(s.stop)
	s.wg.Wait()
}
