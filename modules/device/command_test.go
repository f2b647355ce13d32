package device_test

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/eclipse/paho.golang/paho"
	pahov3 "github.com/eclipse/paho.mqtt.golang"

	"github.com/colonymq/colony/app/apptest"
	"github.com/colonymq/colony/modules/device"
	"github.com/colonymq/colony/rpc"
)

// answerV5 makes an MQTT 5 device answer every command on its response
// topic with its correlation data, echoing the payload.
func answerV5(t *testing.T, d *rpcClient) {
	go func() {
		for {
			p, ok := <-d.other
			if !ok {
				return
			}
			if p.Properties == nil || p.Properties.ResponseTopic == "" {
				continue
			}
			body := fmt.Sprintf(`{"ok":true,"topic":%q,"echo":%s}`, p.Topic, p.Payload)
			if _, err := d.c.Publish(apptest.Ctx(t), &paho.Publish{Topic: p.Properties.ResponseTopic, QoS: 1, Payload: []byte(body),
				Properties: &paho.PublishProperties{CorrelationData: p.Properties.CorrelationData}}); err != nil {
				t.Errorf("answer: %v", err)
			}
		}
	}()
}

// answerV3 makes an MQTT 3.1.1 device answer commands on dev/<id>/res/<request id>.
func answerV3(t *testing.T, id string, c pahov3.Client, msgs chan pahov3.Message) {
	go func() {
		for m := range msgs {
			parts := strings.Split(m.Topic(), "/") // dev/<id>/cmd/<name>/<request id>
			if len(parts) != 5 || parts[2] != "cmd" {
				continue
			}
			c.Publish("dev/"+id+"/res/"+parts[4], 1, false, fmt.Sprintf(`{"v3":true,"name":%q}`, parts[3]))
		}
	}()
}

func TestCommands(t *testing.T) {
	n := start(t, secured(t), device.Options{})
	a := admin(t, n, "ops")

	// MQTT 5: response topic and correlation data.
	pump := v5Device(t, n, "pump", register(t, a, "pump", nil))
	pump.subscribe("dev/pump/cmd/#")
	answerV5(t, pump)
	var c device.Command
	a.must("invoke", &device.InvokeReq{ID: "pump", Name: "reboot", Payload: json.RawMessage(`{"delay":1}`), Timeout: 5}, &c)
	var resp struct {
		OK    bool           `json:"ok"`
		Topic string         `json:"topic"`
		Echo  map[string]any `json:"echo"`
	}
	if err := json.Unmarshal(c.Response, &resp); err != nil || c.Status != device.CmdDone || !resp.OK || resp.Echo["delay"] != 1.0 ||
		resp.Topic != "dev/pump/cmd/reboot/"+c.RequestID {
		t.Fatalf("command %+v (%v)", c, err)
	}

	// MQTT 3.1.1: the request id in the topic.
	valve, vmsgs := v3Device(t, n, "valve", register(t, a, "valve", nil))
	apptest.Done(t, valve.Subscribe("dev/valve/cmd/+/+", 1, nil))
	answerV3(t, "valve", valve, vmsgs)
	a.must("invoke", &device.InvokeReq{ID: "valve", Name: "open", Timeout: 5}, &c)
	if c.Status != device.CmdDone || string(c.Response) != `{"v3":true,"name":"open"}` {
		t.Fatalf("v3 command %+v", c)
	}
	var stored device.Command
	a.must("command_get", &device.RequestReq{RequestID: c.RequestID}, &stored)
	if stored.Status != device.CmdDone || string(stored.Response) != string(c.Response) {
		t.Fatalf("stored %+v", stored)
	}

	// A device that does not answer: timeout after 5 s.
	mute := v5Device(t, n, "mute", register(t, a, "mute", nil))
	mute.subscribe("dev/mute/cmd/#")
	err := a.call("invoke", &device.InvokeReq{ID: "mute", Name: "ping", Timeout: 5}, nil)
	wantErr(t, err, rpc.CodeTimeout, "no answer within 5s")
	if p := mute.next("dev/mute/cmd/ping/" + requestIDIn(t, err)); p.Properties.ResponseTopic != "dev/mute/res" {
		t.Fatalf("command to mute: %+v", p.Properties)
	}
	a.must("command_get", &device.RequestReq{RequestID: requestIDIn(t, err)}, &stored)
	if stored.Status != device.CmdTimeout {
		t.Fatalf("timed out command %+v", stored)
	}
	wantErr(t, a.call("invoke", &device.InvokeReq{ID: "mute", Name: "ping", Timeout: 301}, nil), rpc.CodeBadRequest, "5..300")

	// Offline: refused without a TTL, queued with one, sent when the
	// device connects and subscribes, answered.
	tok := register(t, a, "sleepy", nil)
	wantErr(t, a.call("invoke", &device.InvokeReq{ID: "sleepy", Name: "wake"}, nil), rpc.CodeUnavailable, "not connected")
	var q device.Command
	a.must("invoke", &device.InvokeReq{ID: "sleepy", Name: "wake", TTL: 3600, Timeout: 30, Payload: json.RawMessage(`"now"`)}, &q)
	if q.Status != device.CmdQueued || q.Expires == 0 {
		t.Fatalf("queued %+v", q)
	}
	sleepy, smsgs := v3Device(t, n, "sleepy", tok)
	apptest.Done(t, sleepy.Subscribe("dev/sleepy/cmd/#", 1, nil))
	m := apptest.Next(t, smsgs)
	if m.Topic() != "dev/sleepy/cmd/wake/"+q.RequestID || string(m.Payload()) != `"now"` {
		t.Fatalf("queued command arrived as %s %s", m.Topic(), m.Payload())
	}
	apptest.Done(t, sleepy.Publish("dev/sleepy/res/"+q.RequestID, 1, false, "done"))
	apptest.Eventually(t, func() error {
		a.must("command_get", &device.RequestReq{RequestID: q.RequestID}, &stored)
		if stored.Status != device.CmdDone || string(stored.Response) != `"done"` {
			return fmt.Errorf("queued command now %+v", stored)
		}
		return nil
	})

	// Expired: the TTL passes before the device comes.
	tok2 := register(t, a, "sleepier", nil)
	a.must("invoke", &device.InvokeReq{ID: "sleepier", Name: "wake", TTL: 1}, &q)
	apptest.Eventually(t, func() error {
		if err := n.dev.Sweep(apptest.Ctx(t)); err != nil {
			return err
		}
		a.must("command_get", &device.RequestReq{RequestID: q.RequestID}, &stored)
		if stored.Status != device.CmdExpired {
			return fmt.Errorf("command %s", stored.Status)
		}
		return nil
	})
	late, lmsgs := v3Device(t, n, "sleepier", tok2)
	apptest.Done(t, late.Subscribe("dev/sleepier/cmd/#", 1, nil))
	apptest.Done(t, late.Subscribe("dev/sleepier/probe", 1, nil))
	apptest.Done(t, late.Publish("dev/sleepier/probe", 1, false, "x")) // arrives after anything sent before it
	if m := apptest.Next(t, lmsgs); m.Topic() != "dev/sleepier/probe" {
		t.Fatalf("expired command delivered: %s", m.Topic())
	}
}

// requestIDIn digs the request id out of a timeout error's message.
func requestIDIn(t *testing.T, err error) string {
	t.Helper()
	_, rest, ok := strings.Cut(err.Error(), "(request ")
	id, _, ok2 := strings.Cut(rest, ")")
	if !ok || !ok2 {
		t.Fatalf("no request id in %v", err)
	}
	return id
}
