package im

import (
	"encoding/json"
	"slices"
)

// Delivery topics. Every user reads their own TopicRoot+"<uid>/#" (the
// module guards the space: nobody else may read it, and no client may
// publish there). Messages, receipts and conversation events go at QoS 1,
// so persistent sessions keep them while their client is away; typing and
// presence at QoS 0, since a late one is worthless.
const (
	TopicRoot     = "im/u/"
	TopicMsg      = "msg"      // Message: entries of the user's conversations
	TopicReceipt  = "receipt"  // Receipt
	TopicTyping   = "typing"   // Typing
	TopicPresence = "presence" // Presence of the user's contacts
	TopicConv     = "conv"     // ConvEvent
)

// Topic returns the delivery topic of kind (TopicMsg, …) for user.
func Topic(user, kind string) string { return TopicRoot + user + "/" + kind }

// publish sends v to each user's topic of kind. Server.Publish reaches the
// user's subscribed sessions on this node and, through message federation,
// on every other node of a cluster; it waits while a subscriber's queue is
// full, which is the back-pressure every Colony publisher gets.
func (m *Module) publish(users []string, kind string, v any, qos byte) {
	if len(users) == 0 {
		return
	}
	b, err := json.Marshal(v)
	if err != nil {
		m.log.Error().Err(err).Str("topic", kind).Msg("encode delivery")
		return
	}
	for _, u := range users {
		if err := m.host.Server.Publish(Topic(u, kind), b, false, qos); err != nil {
			// Only while the server shuts down; clients catch up with sync.
			m.log.Debug().Err(err).Str("user", u).Str("topic", kind).Msg("delivery not published")
		}
	}
}

// publishConv sends a conversation event to users, each once.
func (m *Module) publishConv(users []string, ev ConvEvent) {
	users = slices.Clone(users)
	slices.Sort(users)
	m.publish(slices.Compact(users), TopicConv, ev, 1)
}
