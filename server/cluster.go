package server

import (
	"fmt"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// ClusterClientID is the client id that messages from other nodes carry
// on this node: PublishRemote publishes them through an inline client of
// that id. No network client can be it (inline clients have no
// connection), so hooks tell remote messages apart with IsClusterClient.
const ClusterClientID = "cluster"

// IsClusterClient reports whether cl is the client PublishRemote publishes
// through, that is whether a hook is looking at a message that came from
// another node.
func IsClusterClient(cl *mqtt.Client) bool {
	return cl != nil && cl.Net.Inline && cl.ID == ClusterClientID
}

// PublishRemote publishes a message that came from another node to this
// node's subscribers, each at the lower of its subscription's QoS and the
// message's. No publish ACL applies (the origin node checked it); the
// subscribers' read ACL does. With Retain set it also replaces, or with an
// empty payload clears, the topic's retained message. It returns once the
// message is with every subscriber: a slow subscriber makes it wait, as
// it makes any publisher wait.
func (s *Server) PublishRemote(pk packets.Packet) error {
	pk.FixedHeader.Type = packets.Publish
	pk.PacketID = 0
	if pk.FixedHeader.Qos > 0 {
		// Only for the engine's validity check: inline publishes are never acknowledged.
		pk.PacketID = 1
	}
	if err := s.mq.InjectPacket(s.remote, pk); err != nil {
		return fmt.Errorf("publish remote message on %s: %w", pk.TopicName, err)
	}
	return nil
}

// Subscriptions calls fn for every subscription of every client session
// the engine holds, including disconnected persistent sessions restored
// from the store, whose subscriptions no hook announces. Module
// subscriptions (Subscribe) are not included.
func (s *Server) Subscriptions(fn func(clientID, filter string)) {
	for id, cl := range s.mq.Clients.GetAll() {
		if cl.Net.Inline {
			continue
		}
		for filter := range cl.State.Subscriptions.GetAll() {
			fn(id, filter)
		}
	}
}

// Retained returns a copy of every retained message held on this node.
func (s *Server) Retained() []packets.Packet {
	all := s.mq.Topics.Retained.GetAll()
	out := make([]packets.Packet, 0, len(all))
	for _, pk := range all {
		out = append(out, pk.Copy(false))
	}
	return out
}
