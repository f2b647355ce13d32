package apptest

import (
	"encoding/json"
	"errors"
	"strconv"
	"sync"
	"testing"

	"github.com/eclipse/paho.golang/paho"

	"github.com/colonymq/colony/rpc"
)

// Requests makes MQTT 5 requests to module handlers from one test client
// and matches the replies to them by correlation data. The zero value is
// ready; the client's message loop hands every reply to Deliver.
type Requests struct {
	mu      sync.Mutex
	next    int64
	waiting map[string]chan *paho.Publish
}

// Call publishes req as JSON to $rpc/<module>/<fn> from c with replyTopic
// as its response topic, waits for the reply and decodes it into resp
// (rpc.DecodeReply): an error reply comes back as an *rpc.Error. A failed
// publish, no reply or a payload that is no reply fails the test.
func (r *Requests) Call(t *testing.T, c *paho.Client, replyTopic, module, fn string, req, resp any) error {
	t.Helper()
	ch := make(chan *paho.Publish, 1)
	r.mu.Lock()
	r.next++
	corr := strconv.FormatInt(r.next, 10)
	if r.waiting == nil {
		r.waiting = map[string]chan *paho.Publish{}
	}
	r.waiting[corr] = ch
	r.mu.Unlock()
	defer func() {
		r.mu.Lock()
		delete(r.waiting, corr)
		r.mu.Unlock()
	}()
	body, err := json.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Publish(Ctx(t), &paho.Publish{Topic: "$rpc/" + module + "/" + fn, QoS: 1, Payload: body,
		Properties: &paho.PublishProperties{ResponseTopic: replyTopic, CorrelationData: []byte(corr)}}); err != nil {
		t.Fatalf("request %s/%s: %v", module, fn, err)
	}
	p := Next(t, ch)
	err = rpc.DecodeReply(p.Payload, resp)
	if errors.Is(err, rpc.ErrBadReply) {
		t.Fatalf("reply to %s/%s: %v: %s", module, fn, err, p.Payload)
	}
	return err
}

// Deliver hands p to the Call waiting for it and reports whether one was.
func (r *Requests) Deliver(p *paho.Publish) bool {
	if p.Properties == nil {
		return false
	}
	r.mu.Lock()
	ch := r.waiting[string(p.Properties.CorrelationData)]
	r.mu.Unlock()
	if ch == nil {
		return false
	}
	ch <- p
	return true
}
