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
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, fmt.Errorf("read server memory: %w", err)
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
			dst = &rssKB
		case "VmHWM":
			dst = &hwmKB
		default:
			continue
		}
		f := bytes.Fields(v) // "12345 kB"
		if len(f) == 0 {
			return 0, 0, fmt.Errorf("read server memory: malformed %s line", k)
		}
		n, err := strconv.ParseInt(string(f[0]), 10, 64)
		if err != nil {
			return 0, 0, fmt.Errorf("read server memory: %s: %w", k, err)
		}
		*dst = n
	}
	if rssKB == 0 {
		return 0, 0, fmt.Errorf("read server memory: no VmRSS for pid %d", pid)
	}
	return rssKB, hwmKB, nil
}

// sampler tracks the peak VmRSS of a process in the background.
type sampler struct {
	pid  int
	peak atomic.Int64
	stop chan struct{}
	wg   sync.WaitGroup
}

// startSampler reads pid's memory once (an error means the pid is unusable)
// and then every rssInterval until stopped. It returns the first reading.
func startSampler(pid int) (*sampler, int64, error) {
	rss, _, err := ReadRSS(pid)
	if err != nil {
		return nil, 0, err
	}
	s := &sampler{pid: pid, stop: make(chan struct{})}
	s.peak.Store(rss)
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
	return s, rss, nil
}

// sample takes one reading and returns it (0 when the process is gone).
func (s *sampler) sample() int64 {
	rss, _, err := ReadRSS(s.pid)
	if err != nil {
		return 0 // the server exited; the peak so far stands
	}
	for {
		p := s.peak.Load()
		if rss <= p || s.peak.CompareAndSwap(p, rss) {
			return rss
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
