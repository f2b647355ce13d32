package server

// API is the part of the gateway that modules use. *Server implements it;
// modules accept the interface so they can be tested without a network.
type API interface {
	// Publish sends a message to the topic's subscribers as the server (no ACL).
	Publish(topic string, payload []byte, retain bool, qos byte) error
	// PublishMessage publishes like Publish, with MQTT 5 properties.
	PublishMessage(m Outgoing) error
	// Subscribe delivers matching publishes to fn on the publisher's goroutine.
	Subscribe(filter string, fn func(Message)) (cancel func(), err error)
	// BindUser binds a connected client to a user id.
	BindUser(clientID, userID string) error
	// ClaimUser binds a client to a user id it chose, where the server
	// trusts its clients with that (loopback, no passwords).
	ClaimUser(clientID, userID string) error
	// UserOf returns the user id bound to a connected client.
	UserOf(clientID string) (string, bool)
	// SubscribedTo reports whether a connected client has a subscription matching topic.
	SubscribedTo(clientID, topic string) bool
	// ClientsOf returns a user's connected client ids.
	ClientsOf(userID string) []string
	// SetValue stores a per-session value.
	SetValue(clientID, key string, v any) error
	// Value reads a per-session value.
	Value(clientID, key string) (any, bool)
	// PushClient sends a message to one client alone. It never waits for
	// a slow client: when the client's outbound queue is full it returns
	// ErrSlowClient (QoS 0 dropped, QoS 1 refused, nothing kept).
	PushClient(clientID, topic string, payload []byte, qos byte) error
	// PushUser sends a message to all of a user's connections and returns
	// how many on this node queued it; a connection whose queue is full
	// adds ErrSlowClient to the error, as PushClient, and holds up no other.
	PushUser(userID, topic string, payload []byte, qos byte) (int, error)
	// KickClient disconnects one client.
	KickClient(clientID, reason string) error
	// KickUser disconnects all of a user's connections.
	KickUser(userID, reason string) int
	// Watch observes connection events until cancel is called.
	Watch(fn func(Event)) (cancel func())
	// Guard reserves a topic space: what clients may read and write there.
	Guard(g TopicGuard) error
	// AddAuthenticator admits clients by a module's own credentials.
	AddAuthenticator(a Authenticator)
}

var _ API = (*Server)(nil)
