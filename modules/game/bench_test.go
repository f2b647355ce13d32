package game_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/colonymq/colony/app/apptest"
	"github.com/colonymq/colony/modules/game"
	"github.com/colonymq/colony/rpc"
)

// benchLogic is a small lock-step game: it moves each player by its inputs.
type benchLogic struct{ pos map[string]int }

func (g *benchLogic) OnJoin(_ *game.Room, p *game.Player) error { g.pos[p.ID] = 0; return nil }
func (g *benchLogic) OnLeave(_ *game.Room, p *game.Player, _ game.Reason) {
	delete(g.pos, p.ID)
}
func (g *benchLogic) OnInput(_ *game.Room, in game.Input) { g.pos[in.Player] += len(in.Data) }
func (g *benchLogic) OnTick(*game.Room) any               { return nil }

// benchClient is a bare paho MQTT 5 client that counts room messages.
type benchClient struct {
	c    *paho.Client
	name string
	got  *atomic.Int64
	repl chan []byte
}

func dialBench(addr, name string, got *atomic.Int64) (*benchClient, error) {
	conn, err := net.DialTimeout("tcp", addr, apptest.Wait)
	if err != nil {
		return nil, err
	}
	bc := &benchClient{name: name, got: got, repl: make(chan []byte, 1)}
	bc.c = paho.NewClient(paho.ClientConfig{Conn: conn,
		OnPublishReceived: []func(paho.PublishReceived) (bool, error){func(p paho.PublishReceived) (bool, error) {
			if strings.HasPrefix(p.Packet.Topic, "r/") {
				bc.repl <- p.Packet.Payload
			} else {
				bc.got.Add(1)
			}
			return true, nil
		}}})
	ctx, cancel := context.WithTimeout(context.Background(), apptest.Wait)
	defer cancel()
	if _, err := bc.c.Connect(ctx, &paho.Connect{ClientID: name, CleanStart: true, KeepAlive: 60}); err != nil {
		return nil, err
	}
	if _, err := bc.c.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "r/" + name, QoS: 1}}}); err != nil {
		return nil, err
	}
	return bc, nil
}

func (bc *benchClient) call(fn string, req, resp any) error {
	b, _ := json.Marshal(req)
	ctx, cancel := context.WithTimeout(context.Background(), apptest.Wait)
	defer cancel()
	if _, err := bc.c.Publish(ctx, &paho.Publish{Topic: "$rpc/game/" + fn, QoS: 1, Payload: b,
		Properties: &paho.PublishProperties{ResponseTopic: "r/" + bc.name, CorrelationData: []byte("1")}}); err != nil {
		return err
	}
	select {
	case r := <-bc.repl:
		if err := rpc.DecodeReply(r, resp); err != nil {
			return fmt.Errorf("%s: %w", fn, err)
		}
		return nil
	case <-ctx.Done():
		return fmt.Errorf("%s: no reply", fn)
	}
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkRooms runs rooms of 4 players at 20 Hz (lock-step frames, each
// player sending 10 inputs/s by publishing) on one node, with the system
// clock and real MQTT clients in the same process, and reports the tick
// duration p99, late ticks, frames delivered per second and the CPU the
// whole process used. One iteration measures a fixed window:
//
//	go test ./modules/game -run '^$' -bench Rooms -benchtime 1x
//
// GAME_BENCH_ROOMS (e.g. "100,400") and GAME_BENCH_SECONDS (default 5)
// change the sizes and the window.
func BenchmarkRooms(b *testing.B) {
	sizes := []int{50, 100, 200, 400}
	if s := os.Getenv("GAME_BENCH_ROOMS"); s != "" {
		sizes = nil
		for _, f := range strings.Split(s, ",") {
			n, err := strconv.Atoi(f)
			if err != nil {
				b.Fatal(err)
			}
			sizes = append(sizes, n)
		}
	}
	window := 5 * time.Second
	if s := os.Getenv("GAME_BENCH_SECONDS"); s != "" {
		sec, err := strconv.Atoi(s)
		if err != nil {
			b.Fatal(err)
		}
		window = time.Duration(sec) * time.Second
	}
	for _, rooms := range sizes {
		b.Run(fmt.Sprintf("rooms=%d", rooms), func(b *testing.B) {
			for range b.N {
				benchRooms(b, rooms, window)
			}
		})
	}
}

func benchRooms(b *testing.B, rooms int, window time.Duration) {
	cfg := apptest.Config(b)
	cfg.Listeners.HTTP = "off"
	m := game.New(game.Options{Guests: true})
	if err := m.Register(game.Game{Name: "bench", Players: 4, Sync: game.SyncLockStep, TickRate: 20,
		New: func(json.RawMessage) (game.Logic, error) { return &benchLogic{pos: map[string]int{}}, nil }}); err != nil {
		b.Fatal(err)
	}
	a := apptest.Run(b, cfg, m)
	var got atomic.Int64
	type seat struct {
		c    *benchClient
		room string
	}
	seats := make([]seat, rooms*4)
	var wg sync.WaitGroup
	errs := make(chan error, rooms)
	sem := make(chan struct{}, 16)
	for r := range rooms {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			var room string
			for i := range 4 {
				name := fmt.Sprintf("p%d-%d", r, i)
				c, err := dialBench(a.Addr("mqtt"), name, &got)
				if err == nil {
					err = c.call("login", &game.LoginReq{Name: name}, nil)
				}
				var jr game.JoinResp
				if err == nil && i == 0 {
					err = c.call("create", &game.CreateReq{Game: "bench"}, &jr)
					room = jr.Room.ID
				} else if err == nil {
					err = c.call("join", &game.JoinReq{Room: room}, nil)
				}
				if err != nil {
					errs <- err
					return
				}
				seats[r*4+i] = seat{c: c, room: room}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		for _, s := range seats {
			if err := s.c.c.Disconnect(&paho.Disconnect{}); err != nil {
				b.Logf("disconnect: %v", err)
			}
		}
	})
	// Inputs: every player 10 a second, spread over the 100 ms.
	stop := make(chan struct{})
	var sent atomic.Int64
	var inputs sync.WaitGroup
	const senders = 4
	for k := range senders {
		inputs.Add(1)
		go func() {
			defer inputs.Done()
			t := time.NewTicker(100 * time.Millisecond)
			defer t.Stop()
			payload := []byte(`{"data":{"dir":"up"}}`)
			for {
				select {
				case <-stop:
					return
				case <-t.C:
				}
				for i := k; i < len(seats); i += senders {
					s := seats[i]
					if _, err := s.c.c.Publish(context.Background(), &paho.Publish{
						Topic: game.TopicInput + s.c.name + "/" + s.room, Payload: payload}); err == nil {
						sent.Add(1)
					}
				}
			}
		}()
	}
	time.Sleep(time.Second) // warm-up
	m.ResetTickStats()
	s0, got0, sent0, cpu0, t0 := m.Stats(), got.Load(), sent.Load(), cpuTime(), time.Now()
	b.ResetTimer()
	time.Sleep(window)
	b.StopTimer()
	s1, got1, sent1, cpu1, el := m.Stats(), got.Load(), sent.Load(), cpuTime(), time.Since(t0)
	close(stop)
	inputs.Wait()
	ticks := float64(s1.Ticks - s0.Ticks)
	b.ReportMetric(ticks/el.Seconds(), "ticks/s")
	b.ReportMetric(s1.TickP99*1e3, "tick-p99-ms")
	b.ReportMetric(s1.TickMax*1e3, "tick-max-ms")
	b.ReportMetric(100*float64(s1.Late-s0.Late+s1.Skipped-s0.Skipped)/max(ticks, 1), "late-%")
	b.ReportMetric(float64(got1-got0)/el.Seconds(), "msgs/s")
	b.ReportMetric(float64(sent1-sent0)/el.Seconds(), "inputs/s")
	b.ReportMetric(100*float64(cpu1-cpu0)/float64(el), "cpu-%")
}
