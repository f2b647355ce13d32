package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/colonymq/colony/rpc"
)

const deviceUsage = `usage: colony device [flags] <command> [args]

Manages the device registry of a running node, through the device
module's handlers ($rpc/device/…) over MQTT 5.

commands:
  add <id> [--type T] [--label k=v]... [--no-token]   register; prints the device and its token
  list [--type T] [--label k=v]...                    list devices (first 1000)
  show <id>                                           one device with its status
  disable <id> | enable <id>                          refuse / admit the device
  delete <id>                                         delete it with its data
  token <id> [--grace 24h]                            rotate its token (old one works for grace)
  psk <id>                                            make a PSK for the MQTT-SN/DTLS gateway

flags:
`

// labelFlags collects repeated --label k=v.
type labelFlags map[string]string

func (l labelFlags) String() string { return fmt.Sprint(map[string]string(l)) }

func (l labelFlags) Set(v string) error {
	k, val, ok := strings.Cut(v, "=")
	if !ok || k == "" {
		return fmt.Errorf("label %q: want key=value", v)
	}
	l[k] = val
	return nil
}

func deviceCmd(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("device", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, deviceUsage)
		fs.PrintDefaults()
	}
	urlFlag := fs.String("url", envOr("COLONY_URL", "tcp://127.0.0.1:1883"), "node's MQTT listener (env COLONY_URL)")
	user := fs.String("u", os.Getenv("COLONY_USER"), "username (env COLONY_USER)")
	pass := fs.String("P", "", "password (better: env COLONY_PASSWORD, which keeps it out of ps)")
	timeout := fs.Duration("timeout", 10*time.Second, "how long to wait for the node")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *pass == "" {
		*pass = os.Getenv("COLONY_PASSWORD")
	}
	if fs.NArg() == 0 {
		fs.Usage()
		return errors.New("device: missing command")
	}
	cmd, rest := fs.Arg(0), fs.Args()[1:]
	sub := flag.NewFlagSet("device "+cmd, flag.ContinueOnError)
	sub.SetOutput(stderr)
	typ := sub.String("type", "", "device type")
	labels := labelFlags{}
	sub.Var(labels, "label", "label key=value (repeatable)")
	noToken := sub.Bool("no-token", false, "register without a token (certificate or PSK only)")
	grace := sub.String("grace", "", "how long the previous token keeps working (default: the node's token_grace)")
	// Flags may come after the id: parse what follows it too.
	var pos []string
	for len(rest) > 0 {
		if err := sub.Parse(rest); err != nil {
			return err
		}
		if sub.NArg() == 0 {
			break
		}
		pos = append(pos, sub.Arg(0))
		rest = sub.Args()[1:]
	}
	id := func() (string, error) {
		if len(pos) != 1 {
			return "", fmt.Errorf("device %s: want exactly one device id", cmd)
		}
		return pos[0], nil
	}
	var fn string
	var req any
	switch cmd {
	case "add":
		d, err := id()
		if err != nil {
			return err
		}
		fn, req = "create", map[string]any{"id": d, "type": *typ, "labels": labels, "no_token": *noToken}
	case "list":
		fn, req = "list", map[string]any{"type": *typ, "labels": labels, "limit": 1000}
	case "show", "disable", "enable", "delete", "psk":
		d, err := id()
		if err != nil {
			return err
		}
		fn, req = map[string]string{"show": "get"}[cmd], map[string]any{"id": d}
		if fn == "" {
			fn = cmd
		}
	case "token":
		d, err := id()
		if err != nil {
			return err
		}
		fn, req = "token", map[string]any{"id": d, "grace": *grace}
	default:
		fs.Usage()
		return fmt.Errorf("device: unknown command %q", cmd)
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	res, err := callModule(ctx, *urlFlag, *user, *pass, "device", fn, req)
	if err != nil {
		return err
	}
	var pretty any
	if err := json.Unmarshal(res, &pretty); err != nil {
		return fmt.Errorf("device %s: reply: %w", cmd, err)
	}
	out, err := json.MarshalIndent(pretty, "", "  ")
	if err != nil {
		return err
	}
	fmt.Fprintln(stdout, string(out))
	return nil
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

// callModule makes one MQTT 5 request to $rpc/<module>/<fn> and returns
// the result, or the error reply as an error.
func callModule(ctx context.Context, rawURL, user, pass, module, fn string, req any) (json.RawMessage, error) {
	u, err := url.Parse(rawURL)
	if err != nil || (u.Scheme != "tcp" && u.Scheme != "mqtt") || u.Host == "" {
		return nil, fmt.Errorf("url %q: want tcp://host:port", rawURL)
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", u.Host)
	if err != nil {
		return nil, fmt.Errorf("connect %s: %w", u.Host, err)
	}
	defer conn.Close()
	replies := make(chan *paho.Publish, 1)
	c := paho.NewClient(paho.ClientConfig{Conn: conn, OnPublishReceived: []func(paho.PublishReceived) (bool, error){
		func(p paho.PublishReceived) (bool, error) {
			select {
			case replies <- p.Packet:
			default:
			}
			return true, nil
		}}})
	b := make([]byte, 8)
	if _, err := rand.Read(b); err != nil {
		return nil, err
	}
	id := "colony-cli-" + hex.EncodeToString(b)
	cp := &paho.Connect{ClientID: id, CleanStart: true, KeepAlive: 30}
	if user != "" {
		cp.Username, cp.UsernameFlag, cp.Password, cp.PasswordFlag = user, true, []byte(pass), true
	}
	ack, err := c.Connect(ctx, cp)
	if err != nil {
		if ack != nil {
			return nil, fmt.Errorf("connect: %s (reason %#x)", ack.Properties.ReasonString, ack.ReasonCode)
		}
		return nil, fmt.Errorf("connect: %w", err)
	}
	defer func() {
		if err := c.Disconnect(&paho.Disconnect{}); err != nil {
			fmt.Fprintf(os.Stderr, "colony: disconnect: %v\n", err)
		}
	}()
	reply := "replies/" + id
	if sa, err := c.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: reply, QoS: 1}}}); err != nil {
		return nil, fmt.Errorf("subscribe %s: %w", reply, err)
	} else if len(sa.Reasons) == 1 && sa.Reasons[0] >= 0x80 {
		return nil, fmt.Errorf("subscribe %s: refused (reason %#x): the ACL must let this user read it", reply, sa.Reasons[0])
	}
	body, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	if pr, err := c.Publish(ctx, &paho.Publish{Topic: "$rpc/" + module + "/" + fn, QoS: 1, Payload: body,
		Properties: &paho.PublishProperties{ResponseTopic: reply, CorrelationData: []byte("1")}}); err != nil {
		if pr != nil {
			return nil, fmt.Errorf("request %s.%s refused (reason %#x)", module, fn, pr.ReasonCode)
		}
		return nil, fmt.Errorf("request %s.%s: %w", module, fn, err)
	}
	select {
	case p := <-replies:
		var result json.RawMessage
		if err := rpc.DecodeReply(p.Payload, &result); err != nil {
			return nil, fmt.Errorf("%s.%s: %w", module, fn, err)
		}
		return result, nil
	case <-ctx.Done():
		return nil, fmt.Errorf("%s.%s: no reply: %w", module, fn, ctx.Err())
	}
}
