// COLONY PATCH P15: limits against hostile clients and their counters.

package mqtt

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
)

// Refusals counts what the server refused or closed to protect itself, for
// metrics. Every field is updated atomically.
type Refusals struct {
	ConnectTimeouts    atomic.Int64 // sockets closed for sending no CONNECT in time
	ConnectionsRefused atomic.Int64 // CONNECTs refused because MaximumClients were connected
	PacketsTooLarge    atomic.Int64 // connections closed for a packet above MaximumPacketSize
	MalformedPackets   atomic.Int64 // connections closed for a malformed packet or a protocol error
	ReceiveMaximum     atomic.Int64 // connections closed for exceeding the receive maximum (QoS 2 id exhaustion)
	TopicLevels        atomic.Int64 // topics and filters refused for having more than MaximumTopicLevels levels
	SubscriptionQuota  atomic.Int64 // filters refused because the client held MaximumClientSubscriptions
	PublishesThrottled atomic.Int64 // publishes that waited for the client's publish rate
}

// tooManyLevels reports whether a topic or filter has more than max levels (0: no limit).
func tooManyLevels(topic string, max int) bool {
	return max > 0 && strings.Count(topic, "/")+1 > max
}

// publishBucket is a client's token bucket for MaximumPublishRate. Only
// the client's read goroutine uses it, so it needs no lock.
type publishBucket struct {
	tokens float64
	last   time.Time
}

// wait takes a token and returns how long the publisher must wait for it.
func (b *publishBucket) wait(rate float64, burst int) time.Duration {
	now := time.Now()
	if b.last.IsZero() {
		b.tokens = float64(burst)
	} else {
		b.tokens = min(float64(burst), b.tokens+now.Sub(b.last).Seconds()*rate)
	}
	b.last = now
	b.tokens--
	if b.tokens >= 0 {
		return 0
	}
	return time.Duration(-b.tokens / rate * float64(time.Second))
}

// throttle makes a publisher above its rate wait, which stops reading its
// socket: back-pressure, as for a slow subscriber, so nothing is dropped.
func (s *Server) throttle(cl *Client) {
	caps := s.Options.Capabilities
	if caps.MaximumPublishRate <= 0 || cl.Net.Inline {
		return
	}
	if d := cl.State.publishRate.wait(caps.MaximumPublishRate, max(caps.PublishBurst, 1)); d > 0 {
		s.Refused.PublishesThrottled.Add(1)
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-t.C:
		case <-cl.State.open.Done():
		}
	}
}

// countReadError counts why a connection's packet reading ended and, for an
// MQTT 5 client, tells it with a DISCONNECT when the spec gives a reason
// code (4.13: the server SHOULD send one before closing).
func (s *Server) countReadError(cl *Client, err error) {
	var code packets.Code
	if !errors.As(err, &code) || code.Code < packets.ErrUnspecifiedError.Code {
		return
	}
	switch code.Code {
	case packets.ErrPacketTooLarge.Code:
		s.Refused.PacketsTooLarge.Add(1)
	case packets.ErrMalformedPacket.Code, packets.ErrProtocolViolation.Code:
		s.Refused.MalformedPackets.Add(1)
	case packets.ErrReceiveMaximum.Code:
		s.Refused.ReceiveMaximum.Add(1)
	}
	if cl.Properties.ProtocolVersion == 5 && !cl.Closed() {
		_ = s.DisconnectClient(cl, packets.Code{Code: code.Code, Reason: code.Reason}) // the client may be gone; it is closed either way
	}
}

// countConnectError counts why a connection ended before its CONNECT was read.
func (s *Server) countConnectError(err error) {
	switch {
	case errors.Is(err, os.ErrDeadlineExceeded):
		s.Refused.ConnectTimeouts.Add(1)
	case errors.Is(err, packets.ErrPacketTooLarge):
		s.Refused.PacketsTooLarge.Add(1)
	default:
		var code packets.Code
		if errors.As(err, &code) && code.Code >= packets.ErrUnspecifiedError.Code {
			s.Refused.MalformedPackets.Add(1)
		}
	}
}

// holds reports whether the client already subscribes to filter, so that
// subscribing to it again is no new subscription for the quota.
func (cl *Client) holds(filter string) bool {
	_, ok := cl.State.Subscriptions.Get(filter)
	return ok
}

// packetSummary describes a packet for logs without its payload or
// credentials: upstream logged whole packets, CONNECT passwords included
// (base64 in JSON logs), whenever one failed.
func packetSummary(pk packets.Packet) string {
	return fmt.Sprintf("%s id=%d qos=%d topic=%q", packets.PacketNames[pk.FixedHeader.Type], pk.PacketID, pk.FixedHeader.Qos, pk.TopicName)
}
