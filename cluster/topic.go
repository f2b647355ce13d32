package cluster

import (
	"strings"
)

// Routing key classes. Every key starts with one of them, so that a
// filter's wildcards at the top level ("#", "+/…") never match a topic
// beginning with "$" (MQTT 4.7.2), which RabbitMQ's "#" and "*" would
// otherwise do, and so that other keys on the exchange (LongKey) can never
// collide with a topic's.
const (
	classTopic  = "t" // topics not starting with "$"
	classDollar = "s" // topics starting with "$" (other than the reserved ones)
)

// LongKey is the routing key of messages whose topic's key would exceed
// RabbitMQ's 255-byte limit. Every node binds it, so such messages reach
// every node and each node's own topic matching decides who gets them.
const LongKey = "long"

// maxKey is the longest routing or binding key AMQP can carry (shortstr).
const maxKey = 255

// reserved are the topic spaces that never leave a node: broker statistics,
// client requests to modules, and server-to-client events. They are
// matched case-insensitively, as the gateway reserves them.
var reserved = []string{"$SYS", "$rpc", "$colony"}

// sharePrefix starts a shared subscription filter: $share/<group>/<filter>.
const sharePrefix = "$share"

// Federated reports whether messages on topic travel to other nodes: every
// topic except the $SYS, $rpc and $colony spaces.
func Federated(topic string) bool {
	first, _, _ := strings.Cut(topic, "/")
	for _, r := range reserved {
		if strings.EqualFold(first, r) {
			return false
		}
	}
	return topic != ""
}

// TopicKey returns the routing key a message on topic is published with:
// a class word ("t", or "s" for topics starting with "$"), then the
// topic's levels joined by "." with each level escaped by EscapeLevel.
// "a/b.c" becomes "t.a.b%2Ec", "$foo/x" becomes "s.$foo.x", and an empty
// level stays an empty word ("a//b" is "t.a..b"), which RabbitMQ matches
// like any other word. A key that would be longer than 255 bytes is
// LongKey. ok is false for topics that are not Federated.
func TopicKey(topic string) (key string, ok bool) {
	if !Federated(topic) {
		return "", false
	}
	var b strings.Builder
	b.Grow(len(topic) + 2)
	b.WriteString(classOf(topic))
	for level := range strings.SplitSeq(topic, "/") {
		b.WriteByte('.')
		writeEscaped(&b, level)
	}
	if b.Len() > maxKey {
		return LongKey, true
	}
	return b.String(), true
}

// FilterKey returns the binding key that makes a node's queue receive
// every message whose topic filter matches, in TopicKey's encoding: "+"
// becomes "*", "#" stays "#", other levels are escaped. The shared
// subscription prefix "$share/<group>/" is dropped (the group is served
// among this node's clients). A filter whose first level is a wildcard
// binds class "t" only, so it never receives "$" topics. A key that would
// be longer than 255 bytes is cut after the last level that fits and ends
// in "#" instead: a wider binding, so the node receives more than it needs
// and its own matching drops the rest. ok is false for filters that match
// no Federated topic (the reserved spaces) and for invalid filters.
func FilterKey(filter string) (key string, ok bool) {
	if first, rest, found := strings.Cut(filter, "/"); found && strings.EqualFold(first, sharePrefix) {
		_, filter, found = strings.Cut(rest, "/")
		if !found {
			return "", false
		}
	}
	if filter == "" {
		return "", false
	}
	first, _, _ := strings.Cut(filter, "/")
	for _, r := range reserved {
		if strings.EqualFold(first, r) {
			return "", false
		}
	}
	var b strings.Builder
	b.Grow(len(filter) + 2)
	b.WriteString(classOf(filter))
	levels := strings.Split(filter, "/")
	for i, level := range levels {
		mark := b.Len()
		b.WriteByte('.')
		switch level {
		case "+":
			b.WriteByte('*')
		case "#":
			if i != len(levels)-1 {
				return "", false
			}
			b.WriteByte('#')
		default:
			if strings.ContainsAny(level, "+#") {
				return "", false
			}
			writeEscaped(&b, level)
		}
		// Leave room for ".#" in case the next level does not fit.
		if b.Len() > maxKey-2 && (i < len(levels)-1 || b.Len() > maxKey) {
			s := b.String()[:mark]
			return s + ".#", true
		}
	}
	return b.String(), true
}

// classOf returns the key class of a topic or filter: "s" when its first
// level starts with "$" (a wildcard first level does not).
func classOf(topicOrFilter string) string {
	if strings.HasPrefix(topicOrFilter, "$") {
		return classDollar
	}
	return classTopic
}

// EscapeLevel percent-encodes the four bytes that mean something in an
// AMQP routing key or in this encoding inside one topic level: "%" as
// "%25", "." as "%2E", "*" as "%2A" and "#" as "%23". Every other byte is
// kept, so keys stay readable. The mapping is injective: "%" itself is
// escaped, so no escaped level can be mistaken for another.
func EscapeLevel(level string) string {
	if !strings.ContainsAny(level, "%.*#") {
		return level
	}
	var b strings.Builder
	writeEscaped(&b, level)
	return b.String()
}

func writeEscaped(b *strings.Builder, level string) {
	for i := 0; i < len(level); i++ {
		switch c := level[i]; c {
		case '%':
			b.WriteString("%25")
		case '.':
			b.WriteString("%2E")
		case '*':
			b.WriteString("%2A")
		case '#':
			b.WriteString("%23")
		default:
			b.WriteByte(c)
		}
	}
}
