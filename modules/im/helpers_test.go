package im_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/eclipse/paho.golang/paho"

	"github.com/colonymq/colony/app"
	"github.com/colonymq/colony/app/apptest"
	"github.com/colonymq/colony/modules/im"
	"github.com/colonymq/colony/rpc"
)

// node is a running Colony with the im module.
type node struct {
	*app.App
	im *im.Module
}

// start runs a node with im (options opts) and stops it at test end.
func start(t *testing.T, cfg app.Config, opts im.Options) *node {
	t.Helper()
	m := im.New(opts)
	return &node{App: apptest.Run(t, cfg, m), im: m}
}

// as returns a context whose caller is user, as a module acting for the
// user would set it.
func as(user string) context.Context {
	return rpc.WithCaller(context.Background(), rpc.Caller{UserID: user, Module: "test"})
}

// client is one device of a user: a paho MQTT 5 client bound to the user,
// subscribed to its im/u/<uid>/# and to a reply topic for its requests.
type client struct {
	t    *testing.T
	user string
	id   string
	c    *apptest.V5Client

	msgs     chan im.Message
	receipts chan im.ReceiptEvent
	typing   chan im.Typing
	presence chan im.Presence
	convs    chan im.ConvEvent

	req  apptest.Requests
	done chan struct{}
}

type loginOpt func(*paho.Connect)

// persistent makes the client's session outlive its connection.
func persistent(cp *paho.Connect) {
	cp.CleanStart = false
	cp.Properties = &paho.ConnectProperties{SessionExpiryInterval: paho.Uint32(3600)}
}

// login connects device id of user and subscribes it to its deliveries.
func login(t *testing.T, n *node, user, id string, opts ...loginOpt) *client {
	t.Helper()
	c := dial(t, n, user, id, opts...)
	// The CONNACK may reach the client just before the server registers
	// the connection: the first bind can find no client yet.
	apptest.Eventually(t, func() error { return n.Server().BindUser(id, user) })
	if codes := c.subscribe(im.TopicRoot+user+"/#", "replies/"+id); !slices.Equal(codes, []byte{1, 1}) {
		t.Fatalf("%s: subscribe: reason codes %v", id, codes)
	}
	return c
}

// dial connects device id, to be user, without binding or subscribing.
func dial(t *testing.T, n *node, user, id string, opts ...loginOpt) *client {
	t.Helper()
	cp := &paho.Connect{ClientID: id, CleanStart: true}
	for _, o := range opts {
		o(cp)
	}
	c := &client{
		t: t, user: user, id: id, c: apptest.V5(t, n.Addr("mqtt"), cp),
		msgs: make(chan im.Message, 4096), receipts: make(chan im.ReceiptEvent, 4096), typing: make(chan im.Typing, 256),
		presence: make(chan im.Presence, 256), convs: make(chan im.ConvEvent, 256),
		done: make(chan struct{}),
	}
	go c.route()
	t.Cleanup(func() { close(c.done) })
	return c
}

// subscribe subscribes at QoS 1 and returns the SUBACK's reason codes.
func (c *client) subscribe(filters ...string) []byte {
	c.t.Helper()
	s := &paho.Subscribe{}
	for _, f := range filters {
		s.Subscriptions = append(s.Subscriptions, paho.SubscribeOptions{Topic: f, QoS: 1})
	}
	ack, err := c.c.Subscribe(apptest.Ctx(c.t), s)
	if ack == nil {
		c.t.Fatalf("%s: subscribe %v: %v", c.id, filters, err)
	}
	return ack.Reasons
}

// route sorts what arrives: replies to their callers, deliveries to the
// channel of their kind.
func (c *client) route() {
	for {
		var p *paho.Publish
		select {
		case p = <-c.c.Msgs:
		case <-c.done:
			return
		}
		if strings.HasPrefix(p.Topic, "replies/") {
			c.req.Deliver(p)
			continue
		}
		rest, ok := strings.CutPrefix(p.Topic, im.TopicRoot+c.user+"/")
		if !ok {
			c.t.Errorf("%s got a message on %s", c.id, p.Topic)
			continue
		}
		var err error
		switch rest {
		case im.TopicMsg:
			err = push(p.Payload, c.msgs)
		case im.TopicReceipt:
			err = push(p.Payload, c.receipts)
		case im.TopicTyping:
			err = push(p.Payload, c.typing)
		case im.TopicPresence:
			err = push(p.Payload, c.presence)
		case im.TopicConv:
			err = push(p.Payload, c.convs)
		default:
			err = fmt.Errorf("unknown delivery topic %s", p.Topic)
		}
		if err != nil {
			c.t.Errorf("%s: %v", c.id, err)
		}
	}
}

func push[T any](b []byte, ch chan T) error {
	var v T
	if err := json.Unmarshal(b, &v); err != nil {
		return fmt.Errorf("decode %T %s: %w", v, b, err)
	}
	ch <- v
	return nil
}

// call makes an MQTT 5 request to handler fn of im and decodes the result
// into resp; an error reply comes back as an *rpc.Error.
func (c *client) call(fn string, req, resp any) error {
	c.t.Helper()
	return c.req.Call(c.t, c.c.Client, "replies/"+c.id, "im", fn, req, resp)
}

// must is call that fails the test on an error reply.
func (c *client) must(fn string, req, resp any) {
	c.t.Helper()
	if err := c.call(fn, req, resp); err != nil {
		c.t.Fatalf("%s: %s: %v", c.id, fn, err)
	}
}

// send sends text to conv and returns the stored message.
func (c *client) send(conv, clientID, text string) im.SendResult {
	c.t.Helper()
	var r im.SendResult
	c.must("send", &im.SendReq{Conv: conv, ClientID: clientID, Text: text}, &r)
	return r
}

// wantErr asserts that err is an rpc error with code, and mentions what
// (when not "").
func wantErr(t *testing.T, err error, code rpc.Code, what string) {
	t.Helper()
	if rpc.CodeOf(err) != code || !strings.Contains(fmt.Sprint(err), what) {
		t.Fatalf("got error %v, want %s mentioning %q", err, code, what)
	}
}

// offline disconnects the client and waits until the server has let go of it.
func (c *client) offline(n *node) {
	c.t.Helper()
	if err := c.c.Disconnect(&paho.Disconnect{}); err != nil {
		c.t.Fatalf("%s: disconnect: %v", c.id, err)
	}
	apptest.Eventually(c.t, func() error {
		if slices.Contains(n.Server().ClientsOf(c.user), c.id) {
			return errors.New(c.id + " still connected")
		}
		return nil
	})
}

// texts returns the text of each message entry.
func texts(ms []im.Message) []string {
	out := make([]string, 0, len(ms))
	for _, m := range ms {
		out = append(out, m.Text)
	}
	return out
}

// seqs returns the sequence number of each entry.
func seqs(ms []im.Message) []uint64 {
	out := make([]uint64, 0, len(ms))
	for _, m := range ms {
		out = append(out, m.Seq)
	}
	return out
}

// waitReceipt reads c's receipt events until one shows user's positions
// at read and delivered: acks that come close together may arrive as one
// event, so intermediate positions may or may not be seen.
func (c *client) waitReceipt(conv, user string, read, delivered uint64) {
	c.t.Helper()
	for {
		ev := apptest.Next(c.t, c.receipts)
		if ev.Conv != conv {
			c.t.Fatalf("%s: receipt for %s, want %s", c.id, ev.Conv, conv)
		}
		for _, r := range ev.Receipts {
			if r.User != user {
				continue
			}
			if r.ReadSeq > read || r.DeliveredSeq > delivered {
				c.t.Fatalf("%s: receipt %+v went past read %d, delivered %d", c.id, r, read, delivered)
			}
			if r.ReadSeq == read && r.DeliveredSeq == delivered {
				return
			}
		}
	}
}

// nextMsg returns the next delivered message of c.
func (c *client) nextMsg() im.Message {
	c.t.Helper()
	return apptest.Next(c.t, c.msgs)
}
