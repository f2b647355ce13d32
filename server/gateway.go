package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/colonymq/colony/rpc"
)

// RPCPrefix is the topic prefix of client requests to modules.
const RPCPrefix = "$rpc/"

// request is one client request to a module handler, parsed from a PUBLISH.
type request struct {
	cl       *mqtt.Client
	module   string
	fn       string
	payload  []byte
	qos      byte
	topic    string // the request topic; MQTT 3.1.1 replies go back on it
	respond  string // MQTT 5 response topic
	corrData []byte
}

// gateway turns client publishes on $rpc/<module>/<handler>[/<msgid>] into
// module calls and sends each result or error back to the caller.
type gateway struct {
	mqtt.HookBase
	s        *Server
	sem      chan struct{}
	ctx      context.Context
	cancel   context.CancelFunc
	wg       sync.WaitGroup
	draining atomic.Bool
	requests atomic.Int64
	errs     atomic.Int64
	dropped  atomic.Int64
}

func newGateway(s *Server) *gateway {
	ctx, cancel := context.WithCancel(context.Background())
	return &gateway{s: s, sem: make(chan struct{}, s.opts.Limits.RPCConcurrency), ctx: ctx, cancel: cancel}
}

var _ mqtt.Hook = (*gateway)(nil)

func (g *gateway) ID() string { return "colony-rpc-gateway" }

func (g *gateway) Provides(b byte) bool { return b == mqtt.OnPublish }

// parseTopic splits a request topic into module, handler and whether it is one.
func (g *gateway) parseTopic(topic string) (module, fn string, ok bool) {
	rest, prefixed := strings.CutPrefix(topic, RPCPrefix)
	if !prefixed && !g.s.opts.MQANTTopics {
		return "", "", false
	}
	parts := strings.SplitN(rest, "/", 3)
	if len(parts) < 2 || parts[0] == "" || parts[1] == "" {
		return "", "", prefixed && len(parts) >= 1 // a malformed $rpc topic still gets an error reply
	}
	if !prefixed {
		// mqant's convention is <module>/<handler>/<msgid>, and only for modules
		// this server knows: every other topic stays ordinary pub/sub.
		if len(parts) != 3 || g.s.opts.Serves == nil || !g.s.opts.Serves(parts[0]) {
			return "", "", false
		}
	}
	return parts[0], parts[1], true
}

func (g *gateway) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if cl.Net.Inline {
		return pk, nil // the server's own replies and pushes
	}
	module, fn, ok := g.parseTopic(pk.TopicName)
	if !ok {
		return pk, nil
	}
	r := &request{cl: cl, module: module, fn: fn, payload: pk.Payload, qos: pk.FixedHeader.Qos, topic: pk.TopicName,
		respond: pk.Properties.ResponseTopic, corrData: pk.Properties.CorrelationData}
	// When too many requests are executing, waiting here stops reading this
	// client's socket: back-pressure instead of unbounded goroutines.
	select {
	case g.sem <- struct{}{}:
	case <-g.ctx.Done():
		return pk, packets.CodeSuccessIgnore
	}
	g.requests.Add(1)
	g.wg.Add(1)
	go g.serve(r)
	// Acknowledge the publish normally but route it to no subscriber.
	return pk, packets.CodeSuccessIgnore
}

func (g *gateway) serve(r *request) {
	defer func() {
		if p := recover(); p != nil {
			g.s.log.Error().Str("panic", fmt.Sprint(p)).Str("stack", string(debug.Stack())).Str("module", r.module).Str("fn", r.fn).
				Msg("recovered panic serving client request")
		}
		<-g.sem
		g.wg.Done()
	}()
	var res any
	var err error
	if g.draining.Load() {
		err = rpc.Errorf(rpc.CodeUnavailable, "server shutting down")
	} else if r.module == "" || r.fn == "" {
		err = rpc.Errorf(rpc.CodeBadRequest, "request topic must be $rpc/<module>/<handler>[/<msgid>]")
	} else if g.s.opts.RPC == nil {
		err = rpc.Errorf(rpc.CodeUnavailable, "module calls are not enabled on this server")
	} else {
		ctx, cancel := context.WithTimeout(g.ctx, g.s.opts.Limits.RPCTimeout)
		user, _ := g.s.UserOf(r.cl.ID)
		ctx = rpc.WithCaller(ctx, rpc.Caller{ClientID: r.cl.ID, UserID: user, Username: string(r.cl.Properties.Username), Node: g.s.opts.Node})
		res, err = g.s.opts.RPC.Invoke(ctx, r.module, r.fn, rpc.Raw(r.payload))
		cancel()
	}
	body, contentType := replyBody(res, err)
	if err != nil {
		g.errs.Add(1)
	}
	if err := g.reply(r, body, contentType); err != nil {
		g.dropped.Add(1)
		g.s.log.Debug().Err(err).Str("client", r.cl.ID).Str("topic", r.topic).Msg("reply not sent")
	}
}

// replyBody encodes {"result":…} or {"error":{"code","message"}}. A raw result
// that is not JSON is passed through as it is, with a binary content type.
func replyBody(res any, err error) ([]byte, string) {
	if err == nil {
		b, encErr := rpc.Encode(res)
		if encErr != nil {
			err = rpc.Errorf(rpc.CodeInternal, "encode result: %v", encErr)
		} else if !json.Valid(b) {
			return b, "application/octet-stream"
		} else {
			out, mErr := json.Marshal(rpc.Reply{Result: b})
			if mErr == nil {
				return out, "application/json"
			}
			err = rpc.Errorf(rpc.CodeInternal, "encode reply: %v", mErr)
		}
	}
	out, mErr := json.Marshal(rpc.Reply{Error: rpc.AsError(err)})
	if mErr != nil { // cannot happen: two strings
		out = []byte(`{"error":{"code":"internal","message":"encode error"}}`)
	}
	return out, "application/json"
}

// reply sends the answer: to the MQTT 5 response topic when one was given,
// else straight to the requesting client on the request topic.
func (g *gateway) reply(r *request, body []byte, contentType string) error {
	qos := min(r.qos, 1)
	if r.respond != "" {
		if !mqtt.IsValidFilter(r.respond, true) {
			return errors.New("invalid response topic")
		}
		return g.s.mq.InjectPacket(g.s.inline, packets.Packet{
			FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: qos},
			TopicName:   r.respond,
			Payload:     body,
			Properties:  packets.Properties{CorrelationData: r.corrData, ContentType: contentType},
			PacketID:    uint16(qos),
		})
	}
	props := packets.Properties{CorrelationData: r.corrData}
	if r.cl.Properties.ProtocolVersion == 5 {
		props.ContentType = contentType
	}
	return g.s.deliver(r.cl, packets.Packet{TopicName: r.topic, Payload: body, FixedHeader: packets.FixedHeader{Qos: qos}, Properties: props})
}

// drain answers new requests with unavailable and waits for executing ones
// to finish; when ctx ends first, it cancels them and waits for their replies.
func (g *gateway) drain(ctx context.Context) error {
	g.draining.Store(true)
	done := make(chan struct{})
	go func() {
		g.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		g.cancel()
		return nil
	case <-ctx.Done():
		g.cancel()
		<-done
		return fmt.Errorf("drain client requests: %w", ctx.Err())
	}
}

func (g *gateway) stats() (requests, errs, inflight, dropped int64) {
	return g.requests.Load(), g.errs.Load(), int64(len(g.sem)), g.dropped.Load()
}
