package cluster

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/colonymq/colony/internal/amqptest"
)

func TestTopicKey(t *testing.T) {
	for topic, want := range map[string]string{
		"a":             "t.a",
		"a/b/c":         "t.a.b.c",
		"a//b":          "t.a..b",
		"/":             "t..",
		"/a":            "t..a",
		"a/":            "t.a.",
		"a.b/c":         "t.a%2Eb.c",
		"a*/x":          "t.a%2A.x",
		"100%/x":        "t.100%25.x",
		"%2E":           "t.%252E",
		"$foo/bar":      "s.$foo.bar",
		"$share/g/x":    "s.$share.g.x",
		"température/é": "t.température.é",
	} {
		got, ok := TopicKey(topic)
		if !ok || got != want {
			t.Errorf("TopicKey(%q) = %q, %v; want %q", topic, got, ok, want)
		}
	}
	for _, topic := range []string{"$SYS/broker/uptime", "$sys/x", "$SYS", "$rpc/im/send", "$colony/kick", "$COLONY/x", ""} {
		if key, ok := TopicKey(topic); ok {
			t.Errorf("TopicKey(%q) = %q, want not federated", topic, key)
		}
	}
	for _, topic := range []string{"$SYSTEM/x", "$rpcx/y", "a/$SYS"} {
		if _, ok := TopicKey(topic); !ok {
			t.Errorf("TopicKey(%q) not federated, want federated", topic)
		}
	}
}

func TestFilterKey(t *testing.T) {
	for filter, want := range map[string]string{
		"#":              "t.#",
		"+":              "t.*",
		"a/#":            "t.a.#",
		"a/+/c":          "t.a.*.c",
		"+/+":            "t.*.*",
		"a//+":           "t.a..*",
		"a.b/*":          "t.a%2Eb.%2A",
		"$foo/#":         "s.$foo.#",
		"$foo/+":         "s.$foo.*",
		"$share/g/a/#":   "t.a.#",
		"$SHARE/g/+/x":   "t.*.x",
		"$share/g/$x/#":  "s.$x.#",
		"100%/+":         "t.100%25.*",
		"a/b/c/d/e/f/g/": "t.a.b.c.d.e.f.g.",
	} {
		got, ok := FilterKey(filter)
		if !ok || got != want {
			t.Errorf("FilterKey(%q) = %q, %v; want %q", filter, got, ok, want)
		}
	}
	for _, filter := range []string{"$SYS/#", "$sys/broker/+", "$rpc/+/+", "$colony/#", "$share/g/$SYS/#", "$share/g", "", "a/#/b", "a+/b", "a/b#"} {
		if key, ok := FilterKey(filter); ok {
			t.Errorf("FilterKey(%q) = %q, want no binding", filter, key)
		}
	}
}

// TestLongKeys: keys longer than AMQP's 255 bytes fall back to LongKey
// (topics, received by every node) and to a shorter, wider binding
// (filters), so that nothing a filter matches is lost.
func TestLongKeys(t *testing.T) {
	long := strings.Repeat("x", 300)
	if key, ok := TopicKey("a/" + long); !ok || key != LongKey {
		t.Fatalf("long topic key %q %v", key, ok)
	}
	fits := strings.Repeat("y", 253) // "t." + 253 = 255 bytes
	if key, _ := TopicKey(fits); key != "t."+fits {
		t.Fatalf("a 255-byte key must be kept, got %q", key)
	}
	if key, _ := TopicKey(fits + "y"); key != LongKey {
		t.Fatalf("a 256-byte key must be LongKey, got %q", key)
	}
	for _, filter := range []string{
		"a/b/" + long,
		"a/+/" + long + "/#",
		"a/" + strings.Repeat("+/", 200) + "#",
		strings.Repeat("ab/", 90) + "c",
		fits,
		fits + "y",
		"a/" + fits,
	} {
		key, ok := FilterKey(filter)
		if !ok || len(key) > maxKey {
			t.Errorf("FilterKey(%.40q…) = %q (%d bytes), %v", filter, key, len(key), ok)
			continue
		}
		// Every topic the filter matches, in its key, must be routed by
		// the binding: try the topics made by filling the wildcards.
		for _, fill := range []string{"", "z", "zz/zz"} {
			topic := strings.ReplaceAll(strings.TrimSuffix(strings.TrimSuffix(filter, "#"), "/"), "+", fill)
			if !mqttMatch(filter, topic) {
				continue
			}
			tk, _ := TopicKey(topic)
			if tk != LongKey && !amqpMatch(key, tk) {
				t.Errorf("FilterKey(%.40q…) = %.60q does not route topic %.40q… (%.60q)", filter, key, topic, tk)
			}
		}
	}
}

func TestEscapeLevel(t *testing.T) {
	for in, want := range map[string]string{"": "", "abc": "abc", "a.b": "a%2Eb", "%": "%25", "*#": "%2A%23", "%2A": "%252A"} {
		if got := EscapeLevel(in); got != want {
			t.Errorf("EscapeLevel(%q) = %q, want %q", in, got, want)
		}
	}
	// Injective over a set of tricky levels.
	seen := map[string]string{}
	for _, l := range levelAlphabet {
		e := EscapeLevel(l)
		if o, dup := seen[e]; dup {
			t.Errorf("levels %q and %q both escape to %q", o, l, e)
		}
		seen[e] = l
		if strings.ContainsAny(e, ".*#") {
			t.Errorf("EscapeLevel(%q) = %q still has a routing key metacharacter", l, e)
		}
	}
}

// levelAlphabet holds the topic levels the matching tests combine: the
// characters AMQP or the escape give meaning to, an empty level, "$" levels
// and levels that look like escapes.
var levelAlphabet = []string{"a", "b", "", ".", "*", "%", "%2E", "a.b", "$x", "$SYS", "%25", "é"}

// topicsAndFilters builds every topic of up to three levels over
// levelAlphabet and every filter of up to three levels over it plus "+"
// and a trailing "#".
func topicsAndFilters() (topics, filters []string) {
	var grow func(prefix []string, depth int, alphabet []string, out *[]string)
	grow = func(prefix []string, depth int, alphabet []string, out *[]string) {
		if len(prefix) > 0 {
			*out = append(*out, strings.Join(prefix, "/"))
		}
		if depth == 0 {
			return
		}
		for _, l := range alphabet {
			grow(append(slices.Clone(prefix), l), depth-1, alphabet, out)
		}
	}
	grow(nil, 3, levelAlphabet, &topics)
	var base []string
	grow(nil, 3, append(slices.Clone(levelAlphabet[:6]), "+", "$x"), &base)
	for _, f := range base {
		filters = append(filters, f, f+"/#")
	}
	filters = append(filters, "#", "+")
	return topics, filters
}

// TestKeysMatchLikeMQTT is the mapping's contract: for every filter and
// topic, RabbitMQ's topic matching of FilterKey against TopicKey says yes
// exactly when MQTT's matching of the filter against the topic does. The
// engine's own index never matches more than that (it matches less in one
// case: "+/#" does not match a one-level topic, a known mochi deviation),
// so the node receives everything its engine would deliver.
func TestKeysMatchLikeMQTT(t *testing.T) {
	topics, filters := topicsAndFilters()
	index := mqtt.NewTopicsIndex()
	for i, f := range filters {
		index.Subscribe(fmt.Sprint(i), packets.Subscription{Filter: f})
	}
	checked := 0
	for _, topic := range topics {
		tk, tok := TopicKey(topic)
		byEngine := index.Subscribers(topic).Subscriptions
		for i, f := range filters {
			fk, fok := FilterKey(f)
			want := mqttMatch(f, topic)
			if _, engine := byEngine[fmt.Sprint(i)]; engine && !want {
				t.Errorf("engine matches filter %q to topic %q, MQTT does not", f, topic)
			}
			if !tok || !fok {
				// Reserved topics and filters never cross nodes; a
				// reserved filter must then match no federated topic.
				if tok && !fok && want {
					t.Errorf("filter %q has no binding but matches federated topic %q", f, topic)
				}
				continue
			}
			checked++
			if got := amqpMatch(fk, tk); got != want {
				t.Errorf("filter %q (%q) vs topic %q (%q): routed %v, MQTT match %v", f, fk, topic, tk, got, want)
			}
		}
	}
	if checked < 100000 {
		t.Fatalf("only %d pairs checked", checked)
	}
}

// TestKeysOnRabbitMQ checks the test's model of RabbitMQ's topic matching
// (amqpMatch) against the real broker, for filters and topics that
// exercise empty words, escapes, wildcards and the "$" class.
func TestKeysOnRabbitMQ(t *testing.T) {
	url := amqptest.URL(t)
	conn, err := amqp091.Dial(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := conn.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
	})
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 6)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	ex := "colonytest-keys-" + hex.EncodeToString(b)
	if err := ch.ExchangeDeclare(ex, "topic", false, true, false, false, nil); err != nil {
		t.Fatal(err)
	}
	filters := []string{"#", "+", "a/#", "a/+", "+/+", "a//+", "+/b/#", "$x/#", "$x/+", "a.b/#", "*", "%/+", "a/+/#", "+//#"}
	topics := []string{"a", "a/", "a//", "a/b", "a/b/c", "/", "//", "/b", "$x", "$x/a", "$x/", "a.b", "a.b/c", "*", "%", "%2E/b", "b/b", "a/*"}
	queues := make([]string, len(filters))
	for i, f := range filters {
		q, err := ch.QueueDeclare("", false, true, true, false, nil)
		if err != nil {
			t.Fatal(err)
		}
		key, ok := FilterKey(f)
		if !ok {
			t.Fatalf("no key for %q", f)
		}
		if err := ch.QueueBind(q.Name, key, ex, false, nil); err != nil {
			t.Fatal(err)
		}
		queues[i] = q.Name
	}
	if err := ch.Confirm(false); err != nil {
		t.Fatal(err)
	}
	for _, topic := range topics {
		key, _ := TopicKey(topic)
		dc, err := ch.PublishWithDeferredConfirm(ex, key, false, false, amqp091.Publishing{Body: []byte(topic)})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		if ok, err := dc.WaitContext(ctx); !ok || err != nil {
			t.Fatalf("publish %q not confirmed: %v", topic, err)
		}
		cancel()
	}
	for i, f := range filters {
		var got []string
		for {
			d, ok, err := ch.Get(queues[i], true)
			if err != nil {
				t.Fatal(err)
			}
			if !ok {
				break
			}
			got = append(got, string(d.Body))
		}
		var want []string
		fk, _ := FilterKey(f)
		for _, topic := range topics {
			tk, _ := TopicKey(topic)
			if amqpMatch(fk, tk) {
				want = append(want, topic)
			}
			if amqpMatch(fk, tk) != mqttMatch(f, topic) {
				t.Errorf("model: filter %q topic %q routed %v, MQTT %v", f, topic, amqpMatch(fk, tk), mqttMatch(f, topic))
			}
		}
		if !slices.Equal(got, want) {
			t.Errorf("filter %q (%q): RabbitMQ routed %q, model says %q", f, fk, got, want)
		}
	}
}

// mqttMatch is MQTT 3.1.1/5 topic matching (4.7), with the rule that a
// wildcard first level does not match a topic starting with "$".
func mqttMatch(filter, topic string) bool {
	if first, rest, ok := strings.Cut(filter, "/"); ok && strings.EqualFold(first, "$share") {
		_, filter, _ = strings.Cut(rest, "/")
	}
	if strings.HasPrefix(topic, "$") && (strings.HasPrefix(filter, "+") || strings.HasPrefix(filter, "#")) {
		return false
	}
	fl, tl := strings.Split(filter, "/"), strings.Split(topic, "/")
	for i, f := range fl {
		if f == "#" {
			return true
		}
		if i >= len(tl) || (f != "+" && f != tl[i]) {
			return false
		}
	}
	return len(fl) == len(tl)
}

// amqpMatch is RabbitMQ's topic exchange matching: words split on ".",
// "*" matches exactly one word (possibly empty), "#" zero or more.
func amqpMatch(binding, key string) bool {
	return wordsMatch(strings.Split(binding, "."), strings.Split(key, "."))
}

func wordsMatch(b, k []string) bool {
	if len(b) == 0 {
		return len(k) == 0
	}
	switch b[0] {
	case "#":
		for i := 0; i <= len(k); i++ {
			if wordsMatch(b[1:], k[i:]) {
				return true
			}
		}
		return false
	case "*":
		return len(k) > 0 && wordsMatch(b[1:], k[1:])
	default:
		return len(k) > 0 && b[0] == k[0] && wordsMatch(b[1:], k[1:])
	}
}
