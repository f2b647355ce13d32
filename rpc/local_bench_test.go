package rpc

import (
	"context"
	"fmt"
	"testing"
	"time"
)

func benchLocal(b *testing.B, opts LocalOptions) *Local {
	reg := NewRegistry()
	Handle(reg, "calc", "add", add)
	return newTestLocal(b, reg, opts)
}

func reportRate(b *testing.B) {
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "calls/s")
}

// BenchmarkLocalCall measures Local.Call with a trivial handler, from 1, 8
// and 64 calling goroutines per P.
func BenchmarkLocalCall(b *testing.B) {
	for _, par := range []int{1, 8, 64} {
		b.Run(fmt.Sprintf("par=%d", par), func(b *testing.B) {
			l := benchLocal(b, LocalOptions{})
			b.ReportAllocs()
			b.SetParallelism(par)
			b.RunParallel(func(pb *testing.PB) {
				ctx := context.Background()
				arg := &addReq{A: 1, B: 2}
				req := &Request{Module: "calc", Fn: "add", Arg: arg}
				for pb.Next() {
					if _, err := l.Call(ctx, req); err != nil {
						b.Error(err)
						return
					}
				}
			})
			reportRate(b)
		})
	}
}

// BenchmarkLocalCallDeadline is BenchmarkLocalCall with a ctx that has a
// deadline, the common case behind Client.
func BenchmarkLocalCallDeadline(b *testing.B) {
	l := benchLocal(b, LocalOptions{})
	b.ReportAllocs()
	b.SetParallelism(64)
	b.RunParallel(func(pb *testing.PB) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Hour)
		defer cancel()
		req := &Request{Module: "calc", Fn: "add", Arg: &addReq{A: 1, B: 2}}
		for pb.Next() {
			if _, err := l.Call(ctx, req); err != nil {
				b.Error(err)
				return
			}
		}
	})
	reportRate(b)
}

// BenchmarkLocalNotify measures fire-and-forget calls.
func BenchmarkLocalNotify(b *testing.B) {
	l := benchLocal(b, LocalOptions{})
	b.ReportAllocs()
	b.SetParallelism(8)
	b.RunParallel(func(pb *testing.PB) {
		ctx := context.Background()
		req := &Request{Module: "calc", Fn: "add", Arg: &addReq{A: 1, B: 2}}
		for pb.Next() {
			if err := l.Notify(ctx, req); err != nil {
				b.Error(err)
				return
			}
		}
	})
	reportRate(b)
}

// BenchmarkCallTyped measures the typed API through Client from a single
// goroutine, with and without a caller deadline (without one the Client
// adds its DefaultTimeout, which costs a context per call).
func BenchmarkCallTyped(b *testing.B) {
	run := func(b *testing.B, ctx context.Context) {
		c := NewClient(ClientOptions{Local: benchLocal(b, LocalOptions{})})
		b.ReportAllocs()
		arg := &addReq{A: 1, B: 2}
		for b.Loop() {
			if _, err := Call[addResp](ctx, c, "calc", "add", arg); err != nil {
				b.Fatal(err)
			}
		}
		reportRate(b)
	}
	b.Run("deadline", func(b *testing.B) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Hour)
		defer cancel()
		run(b, ctx)
	})
	b.Run("default-timeout", func(b *testing.B) {
		run(b, context.Background())
	})
}

// BenchmarkCallTypedParallel is BenchmarkCallTyped from many goroutines.
func BenchmarkCallTypedParallel(b *testing.B) {
	c := NewClient(ClientOptions{Local: benchLocal(b, LocalOptions{})})
	b.ReportAllocs()
	b.SetParallelism(64)
	b.RunParallel(func(pb *testing.PB) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Hour)
		defer cancel()
		arg := &addReq{A: 1, B: 2}
		for pb.Next() {
			if _, err := Call[addResp](ctx, c, "calc", "add", arg); err != nil {
				b.Error(err)
				return
			}
		}
	})
	reportRate(b)
}
