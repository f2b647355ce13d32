package server

import (
	"context"
	"errors"
	"fmt"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/storage"
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

// Cluster is what the gateway needs from the other nodes of a cluster to
// reach users and clients connected there. Message federation implements
// it. Every method returns at once: the work goes out asynchronously.
type Cluster interface {
	// UserPresent reports that a user got its first connection on this
	// node (true) or lost its last one (false), so that pushes and kicks
	// for the user reach this node. It is called with the sessions lock
	// held and must not call back into the Server.
	UserPresent(userID string, present bool)
	// PushUser sends a push to the user's connections on the other nodes.
	PushUser(userID, topic string, payload []byte, qos byte)
	// PushClient sends a push to the client on whichever other node has it.
	PushClient(clientID, topic string, payload []byte, qos byte)
	// KickUser disconnects the user's connections on the other nodes.
	KickUser(userID, reason string)
	// KickClient disconnects the client on whichever other node has it.
	KickClient(clientID, reason string)
}

// SessionState is a persistent session on its way from one node to
// another: the records the store keeps for it.
type SessionState struct {
	Client        storage.Client         `json:"client"`
	Subscriptions []storage.Subscription `json:"subscriptions"`
	Inflight      []storage.Message      `json:"inflight"`
	// Unsent are the packet ids of the Inflight messages never sent to
	// the client (held for its Receive Maximum, or queued while it was
	// away): they go out without DUP. A node that does not send it (an
	// older one) has every message resent as DUP, as before.
	Unsent []uint16 `json:"unsent,omitempty"`
}

// HasSession reports whether the engine holds a session for the client id
// here, connected or not.
func (s *Server) HasSession(clientID string) bool {
	cl, ok := s.mq.Clients.Get(clientID)
	return ok && !cl.Net.Inline
}

// ReleaseSession hands over the session of a client that connected to
// another node: a connection here is closed (MQTT 5 reason 0x8E, session
// taken over) and, once the engine has finished with it, the session is
// removed from this node (store included). With keep it is returned, for
// the other node to adopt (a will waiting for its delay goes with it);
// nil when this node has no session for the id. Without keep the client
// started afresh there, which ends the session: such a will goes out now.
// ctx bounds the wait for the old connection to end.
func (s *Server) ReleaseSession(ctx context.Context, clientID string, keep bool) (*SessionState, error) {
	cl, ok := s.mq.Clients.Get(clientID)
	if !ok || cl.Net.Inline {
		return nil, nil
	}
	var gone <-chan struct{}
	for {
		s.sessions.mu.Lock()
		c, live := s.sessions.conns[clientID]
		if live && c.cl == cl {
			gone = c.done()
		}
		s.sessions.mu.Unlock()
		// A connection the engine has accepted but whose session is not
		// established yet (its CONNACK on its way) is not listed yet: it
		// is waited for, then ended like any other. Released at once, it
		// stayed open without its session.
		if gone != nil || cl.Net.Conn == nil || cl.Closed() {
			break
		}
		select {
		case <-time.After(time.Millisecond):
		case <-ctx.Done():
			return nil, fmt.Errorf("release session %q: connection still being established: %w", clientID, ctx.Err())
		}
	}
	if gone != nil {
		s.log.Info().Str("client", clientID).Msg("session taken over by another node")
		if err := s.mq.DisconnectClient(cl, packets.ErrSessionTakenOver); err != nil && !errors.Is(err, packets.ErrSessionTakenOver) {
			s.log.Debug().Err(err).Str("client", clientID).Msg("disconnect for takeover")
		}
		select {
		case <-gone:
		case <-ctx.Done():
			return nil, fmt.Errorf("release session %q: old connection still closing: %w", clientID, ctx.Err())
		}
	}
	p := cl.Properties
	if (p.ProtocolVersion == 5 && p.Props.SessionExpiryInterval == 0) || (p.ProtocolVersion < 5 && p.Clean) {
		return nil, nil // a clean session ends with its connection; the engine drops it
	}
	if cur, ok := s.mq.Clients.Get(clientID); !ok || cur != cl {
		return nil, nil // a newer local connection took it meanwhile
	}
	rec, subs, msgs, unsent, ok := s.mq.ReleaseSession(cl, keep)
	if !ok {
		return nil, nil // it expired, or a newer local connection took it, meanwhile
	}
	if !keep {
		return nil, nil
	}
	return &SessionState{Client: rec, Subscriptions: subs, Inflight: msgs, Unsent: unsent}, nil
}

// AdoptSession installs a session another node released, for the client
// about to connect here with its id: the engine treats it like a session
// restored from the store (CONNACK session present, queued messages
// resent), and the store keeps it from now on. It reports false, and
// installs nothing, when this node already has a session for the id (a
// connection started afresh here meanwhile): the caller must account for
// the session's messages, which are then lost.
func (s *Server) AdoptSession(st *SessionState) bool {
	if st == nil || st.Client.ID == "" || s.HasSession(st.Client.ID) {
		return false
	}
	s.mq.AdoptSession(st.Client, st.Subscriptions, st.Inflight, st.Unsent)
	return true
}

// Sessions calls fn for every client session the engine holds, connected
// or not (restored persistent sessions included).
func (s *Server) Sessions(fn func(cl *mqtt.Client)) {
	for _, cl := range s.mq.Clients.GetAll() {
		if !cl.Net.Inline {
			fn(cl)
		}
	}
}
