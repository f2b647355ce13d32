package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/colonymq/colony/server/mqttsn/client"
	"github.com/colonymq/colony/server/mqttsn/packet"
)

const snUsage = `usage: colony sn pub|sub [flags]

A small MQTT-SN client for trying the gateway by hand:

  colony sn pub -t sensors/1/temp -m 21.5 -q 1
  colony sn sub -t 'sensors/#' -q 1 -v
  colony sn pub --dtls --psk-identity dev1 --psk 0011…ff -t d/dev1/t -m hi

flags:
`

// snCmd runs `colony sn pub` and `colony sn sub`.
func snCmd(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || (args[0] != "pub" && args[0] != "sub") {
		fmt.Fprint(stderr, snUsage)
		return errors.New("sn: want pub or sub")
	}
	mode := args[0]
	fs := flag.NewFlagSet("sn "+mode, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, snUsage); fs.PrintDefaults() }
	addr := fs.String("a", "127.0.0.1:1884", "gateway address (UDP, or DTLS with --dtls)")
	topic := fs.String("t", "", "topic (pub) or filter (sub); a two-character name is sent as a short topic")
	msg := fs.String("m", "", "pub: the payload")
	qos := fs.Int("q", 0, "QoS: -1 (pub only, predefined or short topic, no CONNECT), 0, 1 or 2")
	retain := fs.Bool("r", false, "pub: retain")
	id := fs.String("i", "", "client id (default colony-sn-<pid>-pub or -sub)")
	keep := fs.Duration("k", 60*time.Second, "keep-alive")
	predef := fs.String("predefined", "", "predefined topics the gateway knows, NAME=ID,…")
	count := fs.Int("C", 0, "sub: exit after this many messages (0: until interrupted)")
	verbose := fs.Bool("v", false, "sub: print the topic before each payload")
	useDTLS := fs.Bool("dtls", false, "use DTLS")
	pskID := fs.String("psk-identity", "", "DTLS PSK identity")
	pskHex := fs.String("psk", "", "DTLS PSK, hex (default: env COLONY_SN_PSK, which keeps it out of ps)")
	caFile := fs.String("ca", "", "DTLS: CA file that signed the gateway's certificate")
	certFile := fs.String("cert", "", "DTLS: client certificate (PEM)")
	keyFile := fs.String("key", "", "DTLS: client key (PEM)")
	insecure := fs.Bool("insecure", false, "DTLS: do not verify the gateway's certificate")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	if *topic == "" {
		return errors.New("sn: -t is required")
	}
	if *id == "" {
		*id = "colony-sn-" + strconv.Itoa(os.Getpid()) + "-" + mode
	}
	o := client.Options{ClientID: *id, CleanSession: true, KeepAlive: *keep, Predefined: map[string]uint16{}}
	if *predef != "" {
		for _, kv := range strings.Split(*predef, ",") {
			name, v, ok := strings.Cut(kv, "=")
			n, err := strconv.ParseUint(v, 10, 16)
			if !ok || err != nil {
				return fmt.Errorf("sn: --predefined %q: want NAME=ID", kv)
			}
			o.Predefined[name] = uint16(n)
		}
	}
	if *useDTLS || *pskID != "" {
		d := &client.DTLS{InsecureSkipVerify: *insecure}
		if *pskID != "" {
			if *pskHex == "" {
				*pskHex = os.Getenv("COLONY_SN_PSK")
			}
			key, err := hex.DecodeString(*pskHex)
			if err != nil || len(key) == 0 {
				return errors.New("sn: --psk must be a hex key")
			}
			d.PSKIdentity, d.PSK = *pskID, key
		}
		if *caFile != "" {
			b, err := os.ReadFile(*caFile)
			if err != nil {
				return fmt.Errorf("sn: %w", err)
			}
			d.RootCAs = x509.NewCertPool()
			if !d.RootCAs.AppendCertsFromPEM(b) {
				return fmt.Errorf("sn: %s holds no PEM certificate", *caFile)
			}
		}
		if *certFile != "" {
			cert, err := tls.LoadX509KeyPair(*certFile, *keyFile)
			if err != nil {
				return fmt.Errorf("sn: %w", err)
			}
			d.Certificates = []tls.Certificate{cert}
		}
		o.DTLS = d
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	c, err := client.Dial(dctx, *addr, o)
	if err != nil {
		return err
	}
	defer func() {
		if err := c.Close(); err != nil {
			fmt.Fprintf(stderr, "colony sn: close: %v\n", err)
		}
	}()
	if mode == "pub" {
		if *qos != -1 {
			if err := c.Connect(dctx); err != nil {
				return err
			}
		}
		if err := c.Publish(dctx, *topic, packet.QoS(*qos), *retain, []byte(*msg)); err != nil {
			if *qos != -1 {
				// End the session now rather than leave it to the keep-alive.
				if derr := c.Disconnect(dctx); derr != nil {
					err = errors.Join(err, derr)
				}
			}
			return err
		}
		if *qos != -1 {
			return c.Disconnect(dctx)
		}
		return nil
	}
	if *qos < 0 {
		return errors.New("sn sub: -q must be 0, 1 or 2")
	}
	if err := c.Connect(dctx); err != nil {
		return err
	}
	if _, _, err := c.Subscribe(dctx, *topic, packet.QoS(*qos)); err != nil {
		return err
	}
	ping := time.NewTicker(*keep / 2)
	defer ping.Stop()
	for n := 0; *count == 0 || n < *count; {
		select {
		case m := <-c.Messages():
			n++
			if *verbose {
				fmt.Fprintf(stdout, "%s %s\n", m.Topic, m.Payload)
			} else {
				fmt.Fprintf(stdout, "%s\n", m.Payload)
			}
		case <-ping.C:
			if err := c.Ping(ctx); err != nil {
				return err
			}
		case <-c.Gone():
			return errors.New("sn sub: the gateway ended the session")
		case <-ctx.Done():
			return c.Disconnect(context.Background())
		}
	}
	return c.Disconnect(context.Background())
}
