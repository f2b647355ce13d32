package bench

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"time"
)

// Scenario names a load pattern; see the package documentation.
type Scenario string

// The scenarios Run knows.
const (
	// FanIn is Publishers publishers, each on its own topic, into
	// Subscribers subscribers on a wildcard.
	FanIn Scenario = "fan-in"
	// FanOut is Publishers publishers on one topic, delivered to every one
	// of Subscribers subscribers.
	FanOut Scenario = "fan-out"
	// Pairs is Publishers independent publisher → subscriber pairs.
	Pairs Scenario = "pairs"
	// RPC is Publishers callers making request/response calls to a module
	// handler through the $rpc topics.
	RPC Scenario = "rpc"
	// Idle is Clients connections that only stay connected.
	Idle Scenario = "idle"
)

// Scenarios lists every scenario, in the order the CLI documents them.
var Scenarios = []Scenario{FanIn, FanOut, Pairs, RPC, Idle}

// ErrInvalidConfig is wrapped by every error Run returns for a Config it
// cannot run.
var ErrInvalidConfig = errors.New("invalid bench config")

// ErrConnect is wrapped by the error Run returns when clients the scenario
// needs cannot connect or subscribe.
var ErrConnect = errors.New("cannot connect")

// Config describes one benchmark run. The zero value of a field means its
// default; Run works on a copy and never changes the caller's Config.
type Config struct {
	// URL is the broker: tcp://host:port, mqtt://host:port or
	// ws://host:port/path. Default tcp://127.0.0.1:1883.
	URL string `json:"url"`
	// Scenario is the load pattern. Default FanIn.
	Scenario Scenario `json:"scenario"`
	// Publishers is the number of publishing clients (RPC: callers).
	// Default 4 for FanIn and RPC, 1 for FanOut, 10 for Pairs.
	Publishers int `json:"publishers"`
	// Subscribers is the number of subscribing clients. Default 1 for
	// FanIn, 10 for FanOut; Pairs always has one per publisher and RPC none.
	Subscribers int `json:"subscribers"`
	// Count is the number of messages each publisher sends (RPC: calls each
	// caller makes), so a run publishes Count × Publishers messages in all.
	// Default 10,000 (RPC: 1,000).
	Count int `json:"count"`
	// QoS is the quality of service of publishes and subscriptions, 0–2.
	// Default 0.
	QoS byte `json:"qos"`
	// Size is the payload size in bytes, at least HeaderSize. Default 64.
	// RPC requests are the JSON body "{}" whatever the Size.
	Size int `json:"size"`
	// Rate is the messages (RPC: calls) per second of each publisher; 0
	// publishes as fast as the client library allows. Default 0.
	Rate float64 `json:"rate"`
	// MQTTVersion is 3 (MQTT 3.1.1, paho.mqtt.golang) or 5 (paho.golang).
	// Default 3.
	MQTTVersion int `json:"mqtt_version"`
	// Username and Password are sent by every client when Username is set.
	Username string `json:"username,omitempty"`
	// Password goes with Username.
	Password string `json:"-"`
	// Topic is the prefix of every topic the run uses. Default
	// "bench/<random>", unique per run so that runs never see each other's
	// messages.
	Topic string `json:"topic"`
	// Timeout bounds waiting: for the last deliveries once the publishers
	// are done (the run ends after Timeout without a new one), for each
	// RPC reply, and for a stalled acknowledgement. Default 5s.
	Timeout time.Duration `json:"timeout"`
	// Clients is the number of connections of the Idle scenario. Default 1,000.
	Clients int `json:"clients"`
	// Hold is how long Idle keeps its connections open after measuring.
	// Default 0: close right after the measurement.
	Hold time.Duration `json:"hold"`
	// KeepAlive is the MQTT keepalive of every client. Default 300s for
	// Idle, 30s otherwise.
	KeepAlive time.Duration `json:"keepalive"`
	// PID, when not 0, is the server's process id: its VmRSS and VmHWM are
	// sampled from /proc during the run (Linux only).
	PID int `json:"pid,omitempty"`
	// SubDelay is slept by a subscriber after each delivery, to model a slow
	// subscriber. Default 0.
	SubDelay time.Duration `json:"sub_delay,omitempty"`
	// Persistent makes subscribers keep their session (3.1.1 clean session
	// false, 5.0 session expiry 300s), which matters with QoS 1 and 2. The
	// sessions are removed again when the run ends.
	Persistent bool `json:"persistent,omitempty"`
	// Module and Handler name the RPC target, $rpc/<Module>/<Handler>.
	// Default "game" and "info", which every Colony node serves.
	Module string `json:"module,omitempty"`
	// Handler is the handler of Module that RPC calls.
	Handler string `json:"handler,omitempty"`
	// Window is the most QoS 1/2 publishes one publisher leaves
	// unacknowledged before it waits. Default 1,024.
	Window int `json:"window,omitempty"`
	// SN, when set, is the host:port of an MQTT-SN gateway: publishers are
	// then MQTT-SN devices publishing through it (topics registered once,
	// QoS 0-2); subscribers stay MQTT clients of URL. FanIn, FanOut and
	// Pairs only.
	SN string `json:"sn,omitempty"`
	// SNPSKIdentity and SNPSK (hex) make the MQTT-SN devices use DTLS with
	// that pre-shared key.
	SNPSKIdentity string `json:"sn_psk_identity,omitempty"`
	// SNPSK is the hex key of SNPSKIdentity.
	SNPSK string `json:"-"`
}

// maxCount bounds Count: receivers keep one bit per message and publisher.
const maxCount = 100_000_000

// withDefaults returns c with every zero field set to its default (runID
// names the default topic), and an error when the result cannot be run.
func (c Config) withDefaults(runID string) (Config, error) {
	if c.URL == "" {
		c.URL = "tcp://127.0.0.1:1883"
	}
	if c.Scenario == "" {
		c.Scenario = FanIn
	}
	if c.Publishers == 0 {
		switch c.Scenario {
		case FanOut:
			c.Publishers = 1
		case Pairs:
			c.Publishers = 10
		default:
			c.Publishers = 4
		}
	}
	switch c.Scenario {
	case FanIn, FanOut:
		if c.Subscribers == 0 {
			c.Subscribers = map[Scenario]int{FanIn: 1, FanOut: 10}[c.Scenario]
		}
	case Pairs:
		if c.Subscribers != 0 && c.Subscribers != c.Publishers {
			return c, fmt.Errorf("%w: pairs has one subscriber per publisher (subscribers %d, publishers %d)",
				ErrInvalidConfig, c.Subscribers, c.Publishers)
		}
		c.Subscribers = c.Publishers
	case RPC, Idle:
		c.Subscribers = 0
	default:
		return c, fmt.Errorf("%w: unknown scenario %q (want one of %v)", ErrInvalidConfig, c.Scenario, Scenarios)
	}
	if c.Count == 0 {
		c.Count = 10_000
		if c.Scenario == RPC {
			c.Count = 1_000
		}
	}
	if c.Size == 0 {
		c.Size = 64
	}
	if c.MQTTVersion == 0 {
		c.MQTTVersion = 3
	}
	if c.Topic == "" {
		c.Topic = "bench/" + runID
	}
	if c.Timeout == 0 {
		c.Timeout = 5 * time.Second
	}
	if c.Clients == 0 {
		c.Clients = 1_000
	}
	if c.KeepAlive == 0 {
		c.KeepAlive = 30 * time.Second
		if c.Scenario == Idle {
			c.KeepAlive = 300 * time.Second
		}
	}
	if c.Module == "" {
		c.Module = "game"
	}
	if c.Handler == "" {
		c.Handler = "info"
	}
	if c.Window == 0 {
		c.Window = 1024
	}
	return c, c.validate()
}

// validate reports the first setting that cannot be run.
func (c Config) validate() error {
	u, err := url.Parse(c.URL)
	if err != nil {
		return fmt.Errorf("%w: url: %w", ErrInvalidConfig, err)
	}
	switch u.Scheme {
	case "tcp", "mqtt", "ws":
	default:
		return fmt.Errorf("%w: url %q: scheme must be tcp, mqtt or ws", ErrInvalidConfig, c.URL)
	}
	if u.Host == "" {
		return fmt.Errorf("%w: url %q has no host", ErrInvalidConfig, c.URL)
	}
	switch {
	case c.Publishers < 0 || c.Subscribers < 0 || c.Clients < 0:
		return fmt.Errorf("%w: publishers, subscribers and clients must not be negative", ErrInvalidConfig)
	case c.Count < 0 || c.Count > maxCount:
		return fmt.Errorf("%w: count %d is outside 1..%d", ErrInvalidConfig, c.Count, maxCount)
	case c.QoS > 2:
		return fmt.Errorf("%w: qos %d (want 0, 1 or 2)", ErrInvalidConfig, c.QoS)
	case c.Size < HeaderSize:
		return fmt.Errorf("%w: size %d is below the %d-byte header every message carries", ErrInvalidConfig, c.Size, HeaderSize)
	case c.Rate < 0:
		return fmt.Errorf("%w: rate %v must not be negative", ErrInvalidConfig, c.Rate)
	case c.MQTTVersion != 3 && c.MQTTVersion != 5:
		return fmt.Errorf("%w: mqtt version %d (want 3 for 3.1.1, or 5)", ErrInvalidConfig, c.MQTTVersion)
	case c.Timeout < 0 || c.Hold < 0 || c.SubDelay < 0 || c.KeepAlive < time.Second || c.KeepAlive > 65535*time.Second:
		return fmt.Errorf("%w: timeout, hold and sub-delay must not be negative, keepalive within 1s..65535s", ErrInvalidConfig)
	case c.SN != "" && (c.Scenario == RPC || c.Scenario == Idle):
		return fmt.Errorf("%w: sn works with fan-in, fan-out and pairs", ErrInvalidConfig)
	case c.Window < 1:
		return fmt.Errorf("%w: window %d must be at least 1", ErrInvalidConfig, c.Window)
	case c.PID < 0:
		return fmt.Errorf("%w: pid %d", ErrInvalidConfig, c.PID)
	}
	return nil
}

// newRunID returns 8 random hex digits that name a run's clients and topics.
func newRunID() string {
	var b [4]byte
	if _, err := rand.Read(b[:]); err != nil {
		// crypto/rand does not fail on supported platforms; the time is unique enough.
		return fmt.Sprintf("%08x", uint32(time.Now().UnixNano()))
	}
	return hex.EncodeToString(b[:])
}
