package amqp

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/colonymq/colony/rpc"
)

// benchCallers are the numbers of concurrent callers both benchmarks run,
// as in BASELINES.md.
var benchCallers = []int{1, 64}

// benchPayload is a 64-byte JSON document.
var benchPayload = rpc.Raw(`"` + strings.Repeat("x", 62) + `"`)

// BenchmarkAMQPCall measures a Colony call across the wire: node "cli"
// calls an echo handler on node "srv" through rpc.Client, with a 64-byte
// payload. Compare with BenchmarkBareAMQP, measured in the same run.
func BenchmarkAMQPCall(b *testing.B) {
	prefix := randomPrefix(b)
	startNode(b, prefix, "srv", nodeOpts{}, func(reg *rpc.Registry) {
		rpc.Handle(reg, "bench", "echo", func(ctx context.Context, r *rpc.Raw) (*rpc.Raw, error) { return r, nil })
	})
	cli := startNode(b, prefix, "cli", nodeOpts{}, nil)
	waitServes(b, cli, "bench")
	for _, n := range benchCallers {
		b.Run("callers="+strconv.Itoa(n), func(b *testing.B) {
			runCallers(b, n, func(ctx context.Context) error {
				res, err := cli.client.Invoke(ctx, "bench", "echo", benchPayload)
				if err == nil && len(res.(rpc.Raw)) != len(benchPayload) {
					err = fmt.Errorf("echo returned %q", res)
				}
				return err
			})
		})
	}
}

// BenchmarkBareAMQP is the floor BenchmarkAMQPCall is measured against:
// plain amqp091-go ping-pong over direct reply-to, one server consumer
// with prefetch 256 answering on its own connection, and the callers
// sharing one connection and channel, as in BASELINES.md.
func BenchmarkBareAMQP(b *testing.B) {
	url := amqpURL(b)
	queue := randomPrefix(b) + ".bare"

	srvConn, err := amqp091.Dial(url)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		if err := srvConn.Close(); err != nil {
			b.Errorf("close server connection: %v", err)
		}
	})
	srv, err := srvConn.Channel()
	if err != nil {
		b.Fatal(err)
	}
	if err := srv.Qos(256, 0, false); err != nil {
		b.Fatal(err)
	}
	if _, err := srv.QueueDeclare(queue, false, true, true, false, nil); err != nil {
		b.Fatal(err)
	}
	reqs, err := srv.Consume(queue, "", false, true, false, false, nil)
	if err != nil {
		b.Fatal(err)
	}
	go func() {
		for d := range reqs {
			if err := srv.Publish("", d.ReplyTo, false, false, amqp091.Publishing{CorrelationId: d.CorrelationId, Body: d.Body}); err != nil {
				return
			}
			if err := d.Ack(false); err != nil {
				return
			}
		}
	}()

	cliConn, err := amqp091.Dial(url)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		if err := cliConn.Close(); err != nil {
			b.Errorf("close client connection: %v", err)
		}
	})
	cli, err := cliConn.Channel()
	if err != nil {
		b.Fatal(err)
	}
	replies, err := cli.Consume(ReplyTo, "", true, false, false, false, nil)
	if err != nil {
		b.Fatal(err)
	}
	var (
		mu      sync.Mutex
		pending = map[string]chan []byte{}
		seq     atomic.Uint64
	)
	go func() {
		for d := range replies {
			mu.Lock()
			ch := pending[d.CorrelationId]
			delete(pending, d.CorrelationId)
			mu.Unlock()
			if ch != nil {
				ch <- d.Body
			}
		}
	}()
	call := func(ctx context.Context) error {
		id := strconv.FormatUint(seq.Add(1), 36)
		ch := make(chan []byte, 1)
		mu.Lock()
		pending[id] = ch
		mu.Unlock()
		err := cli.Publish("", queue, false, false, amqp091.Publishing{
			ContentType: ContentTypeJSON, CorrelationId: id, ReplyTo: ReplyTo, Body: benchPayload,
		})
		if err != nil {
			return err
		}
		select {
		case body := <-ch:
			if len(body) != len(benchPayload) {
				return fmt.Errorf("echo returned %q", body)
			}
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	for _, n := range benchCallers {
		b.Run("callers="+strconv.Itoa(n), func(b *testing.B) { runCallers(b, n, call) })
	}
}

// runCallers makes b.N calls from n goroutines and reports the rate and
// the 50th and 99th percentile latencies.
func runCallers(b *testing.B, n int, call func(ctx context.Context) error) {
	b.ReportAllocs()
	var next atomic.Int64
	lats := make([][]time.Duration, n)
	var wg sync.WaitGroup
	b.ResetTimer()
	for w := range n {
		wg.Go(func() {
			ctx := context.Background()
			own := make([]time.Duration, 0, b.N/n+1)
			for next.Add(1) <= int64(b.N) {
				cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
				start := time.Now()
				err := call(cctx)
				own = append(own, time.Since(start))
				cancel()
				if err != nil {
					b.Error(err)
					return
				}
			}
			lats[w] = own
		})
	}
	wg.Wait()
	b.StopTimer()
	all := slices.Concat(lats...)
	if len(all) == 0 {
		return
	}
	slices.Sort(all)
	pct := func(p float64) float64 {
		return float64(all[int(p*float64(len(all)-1))]) / float64(time.Millisecond)
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "calls/s")
	b.ReportMetric(pct(0.50), "p50-ms")
	b.ReportMetric(pct(0.99), "p99-ms")
}
