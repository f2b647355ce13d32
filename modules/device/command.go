package device

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/colonymq/colony/rpc"
	"github.com/colonymq/colony/server"
)

// Command timeouts a call may ask for.
const (
	minCommandTimeout = 5 * time.Second
	maxCommandTimeout = 300 * time.Second
)

// Command states.
const (
	CmdQueued  = "queued"  // waiting for the device to connect
	CmdSent    = "sent"    // sent, no answer yet
	CmdDone    = "done"    // answered
	CmdTimeout = "timeout" // sent, not answered in time
	CmdExpired = "expired" // the device did not connect before the TTL
)

// InvokeReq invokes a command (direct method) on a device.
type InvokeReq struct {
	ID      string          `json:"id"`
	Name    string          `json:"name"`
	Payload json.RawMessage `json:"payload,omitempty"` // any JSON, sent to the device as is
	// Timeout is how long to wait for the answer once sent, in seconds
	// (5..300; default modules.device.command_timeout).
	Timeout int `json:"timeout,omitempty"`
	// TTL, in seconds, queues the command when the device is offline: it
	// is sent when the device next listens, unless TTL passed first. 0:
	// an offline device fails the call with unavailable.
	TTL int `json:"ttl,omitempty"`
}

// Command is a command and its outcome.
type Command struct {
	RequestID string          `json:"request_id"`
	Device    string          `json:"device"`
	Name      string          `json:"name"`
	Payload   json.RawMessage `json:"payload,omitempty"`
	Status    string          `json:"status"`
	Response  json.RawMessage `json:"response,omitempty"` // the device's answer: JSON as sent, other bytes as a JSON string
	Created   int64           `json:"created"`            // Unix ms
	Expires   int64           `json:"expires,omitempty"`  // queued: Unix ms the TTL ends
	Timeout   int             `json:"timeout"`            // seconds
	Sent      int64           `json:"sent,omitempty"`
	Answered  int64           `json:"answered,omitempty"`
}

// RequestReq names a command.
type RequestReq struct {
	RequestID string `json:"request_id"`
}

// commands tracks commands in flight.
type commands struct {
	m       *Module
	mu      sync.Mutex
	waiting map[string]*inflight // request id -> command sent, not answered
}

type inflight struct {
	device string
	done   chan json.RawMessage // gets the answer; buffered
	timer  *time.Timer          // queued commands: marks the timeout
}

func newCommands(m *Module) *commands {
	return &commands{m: m, waiting: map[string]*inflight{}}
}

func newRequestID() string {
	b := make([]byte, 12)
	if _, err := rand.Read(b); err != nil {
		panic("crypto/rand failed: " + err.Error())
	}
	return hex.EncodeToString(b)
}

func (m *Module) invoke(ctx context.Context, req *InvokeReq) (*Command, error) {
	if err := m.admin(ctx); err != nil {
		return nil, err
	}
	return m.Invoke(ctx, req)
}

// Invoke runs a command on a device and waits for its answer, for other
// modules (the invoke handler without the caller check). The wait ends at
// the command's timeout or when ctx ends, whichever comes first; either
// way the answer, if it comes later, is kept for command_get.
func (m *Module) Invoke(ctx context.Context, req *InvokeReq) (*Command, error) {
	r, ok := m.device(req.ID)
	if !ok {
		return nil, notFound("device", req.ID)
	}
	if r.Disabled {
		return nil, rpc.Errorf(rpc.CodeForbidden, "device %s: %w", req.ID, ErrDisabled)
	}
	if err := checkName("command name", req.Name); err != nil {
		return nil, err
	}
	timeout := time.Duration(req.Timeout) * time.Second
	if req.Timeout == 0 {
		timeout = time.Duration(m.opts.CommandTimeout)
	}
	if timeout < minCommandTimeout || timeout > maxCommandTimeout {
		return nil, rpc.Errorf(rpc.CodeBadRequest, "timeout %ds: want %d..%d: %w", req.Timeout,
			int(minCommandTimeout.Seconds()), int(maxCommandTimeout.Seconds()), ErrInvalid)
	}
	if req.TTL < 0 {
		return nil, rpc.Errorf(rpc.CodeBadRequest, "ttl must not be negative: %w", ErrInvalid)
	}
	if len(req.Payload) > 0 && !json.Valid(req.Payload) {
		return nil, rpc.Errorf(rpc.CodeBadRequest, "payload is not JSON: %w", ErrInvalid)
	}
	c := Command{RequestID: newRequestID(), Device: req.ID, Name: req.Name, Payload: req.Payload,
		Created: now(), Timeout: int(timeout / time.Second)}
	listening := false
	for _, cl := range m.presence.clientsOf(req.ID) {
		listening = listening || m.host.Server.SubscribedTo(cl, cmdProbe(req.ID))
	}
	if !listening {
		if req.TTL == 0 {
			return nil, rpc.Errorf(rpc.CodeUnavailable, "device %s is not connected or not subscribed to its commands: %w", req.ID, ErrOffline)
		}
		c.Status, c.Expires = CmdQueued, c.Created+int64(req.TTL)*1000
		b := m.st.db.NewBatch()
		m.st.cmds.PutIn(b, c.RequestID, c)
		m.st.queue.PutIn(b, queueKey(c), c.Expires)
		if err := b.Commit(ctx); err != nil {
			return nil, err
		}
		m.log.Debug().Str("device", req.ID).Str("request", c.RequestID).Msg("command queued")
		return &c, nil
	}
	w := m.cmds.track(c.RequestID, req.ID)
	defer m.cmds.untrack(c.RequestID, w)
	if err := m.cmds.send(ctx, &c); err != nil {
		return nil, err
	}
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case resp := <-w.done:
		c.Status, c.Response, c.Answered = CmdDone, resp, now()
		return &c, nil
	case <-t.C:
		c.Status = CmdTimeout
		if err := m.st.cmds.Put(context.WithoutCancel(ctx), c.RequestID, c); err != nil {
			m.log.Warn().Err(err).Msg("store command timeout")
		}
		return nil, rpc.Errorf(rpc.CodeTimeout, "command %s (request %s) to %s: no answer within %s: %w", c.Name, c.RequestID, c.Device, timeout, ErrCommandTimeout)
	case <-ctx.Done():
		// The caller gave up first: a late answer is still recorded.
		m.cmds.expect(c.RequestID, req.ID, time.Until(time.UnixMilli(c.Sent).Add(timeout)))
		return nil, rpc.Errorf(rpc.CodeOf(ctx.Err()), "command %s (request %s): the call ended before the answer; ask command_get later: %w",
			c.Name, c.RequestID, ctx.Err())
	}
}

func queueKey(c Command) string { return c.Device + sep + tsKey(c.Created) + sep + c.RequestID }

func (cs *commands) track(reqID, device string) *inflight {
	w := &inflight{device: device, done: make(chan json.RawMessage, 1)}
	cs.mu.Lock()
	cs.waiting[reqID] = w
	cs.mu.Unlock()
	return w
}

func (cs *commands) untrack(reqID string, w *inflight) {
	cs.mu.Lock()
	if cs.waiting[reqID] == w {
		delete(cs.waiting, reqID)
	}
	cs.mu.Unlock()
}

// expect keeps listening for a sent command's answer for d with nobody
// waiting (a queued command, or a caller gone), recording the outcome.
func (cs *commands) expect(reqID, device string, d time.Duration) {
	w := &inflight{device: device, done: make(chan json.RawMessage, 1)}
	w.timer = time.AfterFunc(max(d, 0), func() {
		cs.mu.Lock()
		cur := cs.waiting[reqID]
		if cur == w {
			delete(cs.waiting, reqID)
		}
		cs.mu.Unlock()
		if cur != w {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		err := cs.m.st.cmds.Update(ctx, reqID, func(c Command, ok bool) (Command, bool, error) {
			if !ok || c.Status != CmdSent {
				return c, false, errSkip
			}
			c.Status = CmdTimeout
			return c, false, nil
		})
		if err != nil && !errors.Is(err, errSkip) {
			cs.m.log.Warn().Err(err).Msg("store command timeout")
		}
	})
	cs.mu.Lock()
	cs.waiting[reqID] = w
	cs.mu.Unlock()
}

// errSkip aborts a store update that has nothing to change.
var errSkip = errors.New("nothing to change")

// send publishes the command to the device: on dev/<id>/cmd/<name>/<request
// id>, with an MQTT 5 response topic dev/<id>/res and the request id as
// correlation data; MQTT 3.1.1 devices answer on dev/<id>/res/<request id>.
func (cs *commands) send(ctx context.Context, c *Command) error {
	c.Status, c.Sent = CmdSent, now()
	if err := cs.m.st.cmds.Put(ctx, c.RequestID, *c); err != nil {
		return err
	}
	payload := []byte(c.Payload)
	if len(payload) == 0 {
		payload = []byte("{}")
	}
	err := cs.m.host.Server.PublishMessage(server.Outgoing{
		Topic: TopicRoot + c.Device + "/cmd/" + c.Name + "/" + c.RequestID, Payload: payload, QoS: 1,
		ResponseTopic: TopicRoot + c.Device + "/res", CorrelationData: []byte(c.RequestID),
		ContentType: "application/json", MessageExpiry: uint32(c.Timeout),
	})
	if err != nil {
		return fmt.Errorf("send command: %w", err)
	}
	cs.m.stats.commands.Add(1)
	return nil
}

// answer takes a device's answer from dev/<id>/res (request id in the
// correlation data) or dev/<id>/res/<request id>.
func (cs *commands) answer(ctx context.Context, device, topicID string, corr, payload []byte) {
	reqID := topicID
	if reqID == "" {
		reqID = string(corr)
	}
	if reqID == "" || strings.Contains(reqID, "/") {
		return
	}
	resp := json.RawMessage(payload)
	if !json.Valid(payload) {
		var err error
		if resp, err = json.Marshal(string(payload)); err != nil {
			return
		}
	}
	cs.mu.Lock()
	w, ok := cs.waiting[reqID]
	if ok && w.device == device {
		delete(cs.waiting, reqID)
	}
	cs.mu.Unlock()
	if !ok || w.device != device {
		return // unknown, answered already, timed out, or another device's
	}
	if w.timer != nil {
		w.timer.Stop()
	}
	// Stored before the caller hears, so command_get agrees with it.
	defer func() { w.done <- resp }()
	err := cs.m.st.cmds.Update(ctx, reqID, func(c Command, ok bool) (Command, bool, error) {
		if !ok {
			return c, false, errSkip
		}
		c.Status, c.Response, c.Answered = CmdDone, resp, now()
		return c, false, nil
	})
	if err != nil && !errors.Is(err, errSkip) {
		cs.m.log.Warn().Err(err).Str("request", reqID).Msg("store command answer")
	}
}

// drain sends a device's queued commands, now that it listens; those past
// their TTL expire instead.
func (cs *commands) drain(ctx context.Context, device string) {
	type entry struct {
		key     string
		expires int64
	}
	var q []entry
	if err := cs.m.st.queue.Scan(device+sep, func(k string, exp int64) bool {
		q = append(q, entry{k, exp})
		return true
	}); err != nil {
		cs.m.log.Error().Err(err).Str("device", device).Msg("read command queue")
		return
	}
	for _, e := range q {
		reqID := e.key[strings.LastIndex(e.key, sep)+1:]
		if err := cs.m.st.queue.Delete(ctx, e.key); err != nil {
			cs.m.log.Error().Err(err).Msg("dequeue command")
			return
		}
		c, ok, err := cs.m.st.cmds.Get(reqID)
		if err != nil || !ok || c.Status != CmdQueued {
			continue
		}
		if e.expires <= now() {
			c.Status = CmdExpired
			if err := cs.m.st.cmds.Put(ctx, reqID, c); err != nil {
				cs.m.log.Warn().Err(err).Msg("store command expiry")
			}
			continue
		}
		cs.expect(reqID, device, time.Duration(c.Timeout)*time.Second)
		if err := cs.send(ctx, &c); err != nil {
			cs.m.log.Warn().Err(err).Str("request", reqID).Msg("send queued command")
		}
	}
}

// expire marks queued commands past their TTL (the sweep).
func (cs *commands) expire(ctx context.Context) error {
	var keys []string
	t := now()
	err := cs.m.st.queue.Scan("", func(k string, exp int64) bool {
		if exp <= t {
			keys = append(keys, k)
		}
		return true
	})
	if err != nil {
		return err
	}
	for _, k := range keys {
		reqID := k[strings.LastIndex(k, sep)+1:]
		b := cs.m.st.db.NewBatch()
		cs.m.st.queue.DeleteIn(b, k)
		cs.m.st.cmds.UpdateIn(b, reqID, func(c Command, ok bool) (Command, bool) {
			if !ok || c.Status != CmdQueued {
				return c, false
			}
			c.Status = CmdExpired
			return c, true
		})
		if err := b.Commit(ctx); err != nil {
			return err
		}
	}
	return nil
}

func (cs *commands) stop() {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	for _, w := range cs.waiting {
		if w.timer != nil {
			w.timer.Stop()
		}
	}
}

func (m *Module) commandGet(ctx context.Context, req *RequestReq) (*Command, error) {
	if err := m.admin(ctx); err != nil {
		return nil, err
	}
	c, ok, err := m.st.cmds.Get(req.RequestID)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, notFound("command", req.RequestID)
	}
	return &c, nil
}
