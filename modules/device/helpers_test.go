package device_test

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/eclipse/paho.golang/paho"
	pahov3 "github.com/eclipse/paho.mqtt.golang"

	"github.com/colonymq/colony/app"
	"github.com/colonymq/colony/app/apptest"
	"github.com/colonymq/colony/modules/device"
	"github.com/colonymq/colony/rpc"
	"github.com/colonymq/colony/server"
)

// node is a running Colony with the device module.
type node struct {
	*app.App
	dev *device.Module
}

func start(t testing.TB, cfg app.Config, opts device.Options) *node {
	t.Helper()
	m := device.New(opts)
	return &node{App: apptest.Run(t, cfg, m), dev: m}
}

// rpcClient is an MQTT 5 client making requests to the device module.
type rpcClient struct {
	t     *testing.T
	id    string
	c     *apptest.V5Client
	reply string
	req   apptest.Requests
	other chan *paho.Publish // everything that is not a reply
}

// connectRPC connects an MQTT 5 client with cp and routes replies arriving
// on replyTopic to its calls.
func connectRPC(t *testing.T, addr string, cp *paho.Connect, replyTopic string) *rpcClient {
	t.Helper()
	c := &rpcClient{t: t, id: cp.ClientID, c: apptest.V5(t, addr, cp), reply: replyTopic,
		other: make(chan *paho.Publish, 1024)}
	done := make(chan struct{})
	t.Cleanup(func() { close(done) })
	go func() {
		for {
			select {
			case p := <-c.c.Msgs:
				if p.Topic == c.reply && c.req.Deliver(p) {
					continue
				}
				c.other <- p
			case <-done:
				return
			}
		}
	}()
	c.subscribe(replyTopic)
	return c
}

// secured returns a test config where clients must authenticate: users
// ops/ops-pass and viewer/viewer-pass in a password file, no anonymous
// access, no ACL file.
func secured(t *testing.T) app.Config {
	t.Helper()
	users := filepath.Join(t.TempDir(), "users")
	for u, p := range map[string]string{"ops": "ops-pass", "viewer": "viewer-pass"} {
		if err := server.SetPassword(users, u, p); err != nil {
			t.Fatal(err)
		}
	}
	no := false
	cfg := apptest.Config(t)
	cfg.Auth = app.AuthConfig{PasswordFile: users, AllowAnonymous: &no}
	return cfg
}

// admin connects an application client as user (with password user-pass).
func admin(t *testing.T, n *node, user string) *rpcClient {
	id := user + "-" + strconv.FormatInt(clientSeq.Add(1), 10)
	return connectRPC(t, n.Addr("mqtt"), &paho.Connect{ClientID: id, CleanStart: true,
		Username: user, UsernameFlag: true, Password: []byte(user + "-pass"), PasswordFlag: true}, "replies/"+id)
}

var clientSeq atomic.Int64

func (c *rpcClient) subscribe(filters ...string) []byte {
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

// call makes a request to handler fn of the device module.
func (c *rpcClient) call(fn string, req, resp any) error {
	c.t.Helper()
	return c.req.Call(c.t, c.c.Client, c.reply, "device", fn, req, resp)
}

func (c *rpcClient) must(fn string, req, resp any) {
	c.t.Helper()
	if err := c.call(fn, req, resp); err != nil {
		c.t.Fatalf("%s: %s: %v", c.id, fn, err)
	}
}

// next returns the next non-reply message on topic, skipping others.
func (c *rpcClient) next(topic string) *paho.Publish {
	c.t.Helper()
	for {
		p := apptest.Next(c.t, c.other)
		if p.Topic == topic {
			return p
		}
	}
}

// register creates a device and returns its token.
func register(t *testing.T, a *rpcClient, id string, labels map[string]string) string {
	t.Helper()
	var cr device.Created
	a.must("create", &device.CreateReq{ID: id, Type: "sensor", Labels: labels}, &cr)
	if cr.Token == "" || cr.Device.ID != id || cr.Device.Tokens != 1 {
		t.Fatalf("create %s: %+v", id, cr)
	}
	return cr.Token
}

// v5Device connects an MQTT 5 device with its token.
func v5Device(t *testing.T, n *node, id, token string, opts ...func(*paho.Connect)) *rpcClient {
	t.Helper()
	cp := &paho.Connect{ClientID: id, CleanStart: true, Username: id, UsernameFlag: true, Password: []byte(token), PasswordFlag: true}
	for _, o := range opts {
		o(cp)
	}
	return connectRPC(t, n.Addr("mqtt"), cp, "dev/"+id+"/replies")
}

// v3Device connects an MQTT 3.1.1 device with its token; its messages go
// to the returned channel.
func v3Device(t *testing.T, n *node, id, token string, tweak ...func(*pahov3.ClientOptions)) (pahov3.Client, chan pahov3.Message) {
	t.Helper()
	ch, h := apptest.Sink()
	c := apptest.V3(t, apptest.URL(n.App), id, append([]func(*pahov3.ClientOptions){func(o *pahov3.ClientOptions) {
		o.SetUsername(id).SetPassword(token).SetDefaultPublishHandler(h)
	}}, tweak...)...)
	return c, ch
}

func wantErr(t *testing.T, err error, code rpc.Code, what string) {
	t.Helper()
	if rpc.CodeOf(err) != code || !strings.Contains(fmt.Sprint(err), what) {
		t.Fatalf("got error %v, want %s mentioning %q", err, code, what)
	}
}

// decode unmarshals a payload into a map.
func decode(t *testing.T, b []byte) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("decode %s: %v", b, err)
	}
	return m
}

// claimConnect is the CONNECT of a device using fleet claim name.
func claimConnect(clientID, secret, name string) *paho.Connect {
	return &paho.Connect{ClientID: clientID, CleanStart: true, Username: "claim:" + name, UsernameFlag: true,
		Password: []byte(secret), PasswordFlag: true}
}
