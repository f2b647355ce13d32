// Command client plays the grid example game in a terminal over MQTT 5.
//
//	go run ./examples/grid/client -name ann -create        # prints the room id
//	go run ./examples/grid/client -name bob -join <room>
//	go run ./examples/grid/client -name cy  -queue duel    # matchmaking
//	go run ./examples/grid/client -name dee -watch <room>  # spectate
//
// Move with w a s d or the arrow keys, quit with q. Run it again with the
// same name within the grace window to get your seat back.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"golang.org/x/term"

	"github.com/colonymq/colony/examples/grid"
	"github.com/colonymq/colony/modules/game"
	"github.com/colonymq/colony/rpc"
)

type client struct {
	c      *paho.Client
	name   string
	id     string
	mu     sync.Mutex
	wait   map[string]chan []byte
	corr   int
	room   chan game.Msg
	match  chan game.MatchEvent
	closed chan struct{}
}

func main() {
	addr := flag.String("addr", "127.0.0.1:1884", "MQTT address of a node running the grid game")
	name := flag.String("name", "", "player name (required)")
	create := flag.Bool("create", false, "create a room")
	private := flag.Bool("private", false, "with -create: a private room, joined by its code")
	join := flag.String("join", "", "join a room by id")
	code := flag.String("code", "", "join a private room by code")
	watch := flag.String("watch", "", "watch a room as a spectator")
	queue := flag.String("queue", "", "queue for a match in this mode (duel)")
	flag.Parse()
	if *name == "" {
		fmt.Fprintln(os.Stderr, "-name is required")
		os.Exit(2)
	}
	if err := run(*addr, *name, *create, *private, *join, *code, *watch, *queue); err != nil {
		fmt.Fprintln(os.Stderr, "grid:", err)
		os.Exit(1)
	}
}

func run(addr, name string, create, private bool, join, code, watch, queue string) error {
	cl, err := dial(addr, name)
	if err != nil {
		return err
	}
	defer cl.c.Disconnect(&paho.Disconnect{})
	var me game.LoginResp
	if err := cl.call("login", game.LoginReq{Name: name}, &me); err != nil {
		return err
	}
	var jr game.JoinResp
	switch {
	case me.Room != "":
		fmt.Printf("back to room %s\n", me.Room)
		err = cl.call("join", game.JoinReq{Room: me.Room}, &jr)
	case create:
		err = cl.call("create", game.CreateReq{Game: grid.Name, Private: private}, &jr)
	case join != "" || code != "":
		err = cl.call("join", game.JoinReq{Room: join, Code: code}, &jr)
	case watch != "":
		err = cl.call("join", game.JoinReq{Room: watch, Spectator: true}, &jr)
	case queue != "":
		var ti game.TicketInfo
		if err := cl.call("queue", game.QueueReq{Mode: queue}, &ti); err != nil {
			return err
		}
		fmt.Printf("queued for %s (rating %.0f), waiting for a match…\n", queue, ti.Rating)
		ev := <-cl.match
		if ev.Type != "matched" {
			return fmt.Errorf("matchmaking: %s", ev.Type)
		}
		err = cl.call("join", game.JoinReq{Room: ev.Room}, &jr)
	default:
		var l game.ListResp
		if err := cl.call("list", game.ListReq{Game: grid.Name}, &l); err != nil {
			return err
		}
		fmt.Println("open rooms (join with -join <id>, or -create):")
		for _, r := range l.Rooms {
			fmt.Printf("  %s  %v/%d\n", r.ID, r.Players, r.Capacity)
		}
		return nil
	}
	if err != nil {
		return err
	}
	fmt.Printf("room %s", jr.Room.ID)
	if jr.Room.Code != "" {
		fmt.Printf(" (code %s)", jr.Room.Code)
	}
	fmt.Println(" — w a s d or arrows to move, q to quit")
	time.Sleep(time.Second)
	return play(cl, jr.Room.ID)
}

func dial(addr, name string) (*client, error) {
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return nil, err
	}
	cl := &client{name: name, id: name + "-" + strconv.FormatInt(time.Now().UnixNano()%1e6, 36),
		wait: map[string]chan []byte{}, room: make(chan game.Msg, 256), match: make(chan game.MatchEvent, 16),
		closed: make(chan struct{})}
	cl.c = paho.NewClient(paho.ClientConfig{
		Conn: conn,
		OnPublishReceived: []func(paho.PublishReceived) (bool, error){func(p paho.PublishReceived) (bool, error) {
			cl.route(p.Packet)
			return true, nil
		}},
		OnServerDisconnect: func(d *paho.Disconnect) {
			if d.Properties != nil && d.Properties.ReasonString != "" {
				fmt.Fprintf(os.Stderr, "\r\ndisconnected: %s\r\n", d.Properties.ReasonString)
			}
			close(cl.closed)
		},
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := cl.c.Connect(ctx, &paho.Connect{ClientID: cl.id, CleanStart: true, KeepAlive: 30}); err != nil {
		return nil, err
	}
	if _, err := cl.c.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "r/" + cl.id, QoS: 1}}}); err != nil {
		return nil, err
	}
	return cl, nil
}

func (cl *client) route(p *paho.Publish) {
	switch {
	case strings.HasPrefix(p.Topic, "r/"):
		cl.mu.Lock()
		ch := cl.wait[string(p.Properties.CorrelationData)]
		cl.mu.Unlock()
		if ch != nil {
			ch <- p.Payload
		}
	case p.Topic == game.Topic(cl.name, game.TopicRoom):
		var m game.Msg
		if json.Unmarshal(p.Payload, &m) == nil {
			select {
			case cl.room <- m:
			default: // a slow terminal skips frames; the next one has the whole board
			}
		}
	case p.Topic == game.Topic(cl.name, game.TopicMatch):
		var ev game.MatchEvent
		if json.Unmarshal(p.Payload, &ev) == nil {
			cl.match <- ev
		}
	}
}

// call makes a request to game/<fn>.
func (cl *client) call(fn string, req, resp any) error {
	cl.mu.Lock()
	cl.corr++
	corr := strconv.Itoa(cl.corr)
	ch := make(chan []byte, 1)
	cl.wait[corr] = ch
	cl.mu.Unlock()
	body, err := json.Marshal(req)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := cl.c.Publish(ctx, &paho.Publish{Topic: "$rpc/game/" + fn, QoS: 1, Payload: body,
		Properties: &paho.PublishProperties{ResponseTopic: "r/" + cl.id, CorrelationData: []byte(corr)}}); err != nil {
		return err
	}
	var reply []byte
	select {
	case reply = <-ch:
	case <-ctx.Done():
		return fmt.Errorf("%s: no reply", fn)
	}
	if err := rpc.DecodeReply(reply, resp); err != nil {
		return fmt.Errorf("%s: %w", fn, err)
	}
	return nil
}

// play renders frames and sends moves until q, the end of the game or a
// disconnect.
func play(cl *client, room string) error {
	in := os.Stdin
	if term.IsTerminal(int(in.Fd())) {
		old, err := term.MakeRaw(int(in.Fd()))
		if err != nil {
			return err
		}
		defer func() {
			if err := term.Restore(int(in.Fd()), old); err != nil {
				fmt.Fprintln(os.Stderr, err)
			}
		}()
	}
	keys := make(chan string, 16)
	go readKeys(in, keys)
	status := ""
	for {
		select {
		case <-cl.closed:
			return errors.New("connection closed")
		case k, ok := <-keys:
			if !ok || k == "quit" {
				return cl.call("leave", game.RoomReq{Room: room}, &game.OK{})
			}
			b, _ := json.Marshal(game.InputReq{Data: json.RawMessage(`{"dir":"` + k + `"}`)})
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			_, err := cl.c.Publish(ctx, &paho.Publish{Topic: game.TopicInput + cl.name + "/" + room, Payload: b})
			cancel()
			if err != nil {
				return err
			}
		case m := <-cl.room:
			switch m.Type {
			case game.MsgFrame:
				var s grid.State
				if json.Unmarshal(m.State, &s) == nil {
					draw(&s, cl.name, status)
				}
			case game.MsgEnded:
				fmt.Printf("\r\ngame over: %s\r\n", m.Data)
				return nil
			case game.MsgSeatLost:
				return fmt.Errorf("seat lost: %s", m.Reason)
			default:
				status = fmt.Sprintf("%s %s %s", m.Type, m.Player, m.Data)
			}
		}
	}
}

func readKeys(r io.Reader, keys chan<- string) {
	defer close(keys)
	buf := make([]byte, 16)
	for {
		n, err := r.Read(buf)
		if err != nil {
			return
		}
		s := string(buf[:n])
		for len(s) > 0 {
			k, rest := key(s)
			s = rest
			if k != "" {
				keys <- k
			}
			if k == "quit" {
				return
			}
		}
	}
}

// key decodes one key press from the start of s.
func key(s string) (string, string) {
	arrows := map[string]string{"\x1b[A": "up", "\x1b[B": "down", "\x1b[C": "right", "\x1b[D": "left"}
	for seq, k := range arrows {
		if strings.HasPrefix(s, seq) {
			return k, s[len(seq):]
		}
	}
	switch s[0] {
	case 'w':
		return "up", s[1:]
	case 's':
		return "down", s[1:]
	case 'a':
		return "left", s[1:]
	case 'd':
		return "right", s[1:]
	case 'q', 3, 4: // q, Ctrl-C, Ctrl-D
		return "quit", ""
	}
	return "", s[1:]
}

func draw(s *grid.State, me, status string) {
	var b strings.Builder
	b.WriteString("\x1b[H\x1b[2J")
	names := make([]string, 0, len(s.Players))
	for n := range s.Players {
		names = append(names, n)
	}
	slices.Sort(names)
	for y := range s.Height {
		for x := range s.Width {
			c := " ."
			if slices.Contains(s.Coins, grid.Pos{X: x, Y: y}) {
				c = " $"
			}
			for i, n := range names {
				if p := s.Players[n]; p.X == x && p.Y == y {
					c = " " + string(rune('A'+i))
					if n == me {
						c = " @"
					}
				}
			}
			b.WriteString(c)
		}
		b.WriteString("\r\n")
	}
	for i, n := range names {
		mark := string(rune('A' + i))
		if n == me {
			mark = "@"
		}
		fmt.Fprintf(&b, "%s %-12s %d/%d\r\n", mark, n, s.Players[n].Score, s.Target)
	}
	b.WriteString(status + "\r\n")
	os.Stdout.WriteString(b.String())
}
