package bench

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"
)

// maxUnanswered is how many calls in a row may go unanswered before a caller
// gives up (a broker without Colony's $rpc gateway never answers).
const maxUnanswered = 3

// rpcBody is the request body of every RPC call.
var rpcBody = []byte("{}")

// rpcReply is the envelope of a Colony reply.
type rpcReply struct {
	Result json.RawMessage `json:"result"`
	Error  *struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
}

// rpc runs the RPC scenario: each caller makes cfg.Count calls, one at a
// time, each waiting up to cfg.Timeout for its reply. The call's header
// travels in the MQTT 3.1.1 topic's message id (hex) or in the MQTT 5
// correlation data, and comes back with the reply.
func (r *runner) rpc(ctx context.Context, res *Result) error {
	cfg := &r.cfg
	base := "$rpc/" + cfg.Module + "/" + cfg.Handler
	replyTopic := func(i int) string { return cfg.Topic + "/reply/" + strconv.Itoa(i) }
	var rpcErrs errLog

	rss, err := r.startRSS(res)
	if err != nil {
		return err
	}
	opts := func(i int) clientOpts {
		t := r.trackers[i]
		return clientOpts{id: r.id("c", i), onMessage: func(topic string, payload, corr []byte) {
			now := time.Now().UnixNano()
			hb, err := replyHeader(cfg.MQTTVersion, topic, corr)
			if err != nil {
				t.invalid.Add(1)
				return
			}
			var rep rpcReply
			if err := json.Unmarshal(payload, &rep); err != nil {
				rpcErrs.add(fmt.Errorf("reply is not JSON: %w", err))
			} else if rep.Error != nil {
				rpcErrs.add(fmt.Errorf("%s: %s", rep.Error.Code, rep.Error.Message))
			}
			t.record(hb, now)
		}}
	}
	var subscribe func(int, client) error
	if cfg.MQTTVersion == 5 {
		subscribe = func(i int, c client) error { return c.subscribe(replyTopic(i)) }
	}
	callers, err := r.connectAll(ctx, cfg.Publishers, opts, subscribe)
	if err != nil {
		rss.stopQuietly()
		return err
	}

	r.phase.Store("publish")
	start := time.Now()
	var wg sync.WaitGroup
	for i, c := range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r.callLoop(ctx, start, i, c, base, replyTopic(i))
		}()
	}
	wg.Wait()
	end := time.Now()
	r.settleExpectations()
	if rss != nil {
		rss.finish(res.ServerRSS)
	}
	r.disconnectAll(callers)
	r.finish(res, start, end)
	res.RPCErrors = rpcErrs.n.Load()
	res.FirstRPCError = rpcErrs.firstMsg()
	return nil
}

// callLoop makes caller i's calls, each waiting for its reply.
func (r *runner) callLoop(ctx context.Context, start time.Time, i int, c client, base, replyTopic string) {
	t := r.trackers[i]
	misses := 0                           // unanswered calls in a row
	timer := time.NewTimer(r.cfg.Timeout) // reset per call; since Go 1.23 a stopped timer delivers nothing stale
	defer timer.Stop()
	for seq := range r.cfg.Count {
		if !r.pace(ctx, start, i, seq) {
			break
		}
		hb := header{pub: uint64(i), seq: uint64(seq), sent: time.Now().UnixNano()}.encode(HeaderSize)
		m := message{topic: base + "/" + hex.EncodeToString(hb), payload: rpcBody}
		if r.cfg.MQTTVersion == 5 {
			m = message{topic: base, payload: rpcBody, response: replyTopic, corr: hb}
		}
		sent, stop := r.send(c, i, seq, m)
		if stop {
			break
		}
		if !sent {
			continue // no reply to wait for
		}
		timer.Reset(r.cfg.Timeout)
		answered := false
	wait:
		for {
			select {
			case got := <-t.notify:
				if got == uint64(seq) {
					answered = true
					break wait
				}
			case <-timer.C:
				break wait // no reply in time: it counts as lost
			case <-ctx.Done():
				c.flush()
				return
			}
		}
		timer.Stop()
		if answered {
			misses = 0
		} else if misses++; misses == maxUnanswered {
			r.errs.add(fmt.Errorf("caller %d stopped: %d calls in a row got no reply within %v", i, misses, r.cfg.Timeout))
			break
		}
	}
	c.flush()
}

// replyHeader recovers the call header of a reply: from the last topic
// level (MQTT 3.1.1) or the correlation data (MQTT 5).
func replyHeader(version int, topic string, corr []byte) ([]byte, error) {
	if version == 5 {
		if len(corr) != HeaderSize {
			return nil, errShortPayload
		}
		return corr, nil
	}
	id := topic[strings.LastIndexByte(topic, '/')+1:]
	b, err := hex.DecodeString(id)
	if err != nil {
		return nil, fmt.Errorf("reply topic %q: %w", topic, err)
	}
	if len(b) != HeaderSize {
		return nil, errShortPayload
	}
	return b, nil
}
