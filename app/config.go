package app

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/pelletier/go-toml/v2"

	"github.com/colonymq/colony/store"
)

// ErrConfig reports a configuration that cannot be used. Errors wrapping it
// name the key (and, for files, the line) at fault.
var ErrConfig = errors.New("bad config")

// Config is Colony's whole configuration as read from colony.toml. Every
// field documents its default; a zero value means "use the default".
type Config struct {
	Node      NodeConfig      `toml:"node"`
	Listeners ListenersConfig `toml:"listeners"`
	TLS       TLSConfig       `toml:"tls"`
	Auth      AuthConfig      `toml:"auth"`
	Limits    LimitsConfig    `toml:"limits"`
	Sessions  SessionsConfig  `toml:"sessions"`
	Gateway   GatewayConfig   `toml:"gateway"`
	Store     StoreConfig     `toml:"store"`
	RPC       RPCConfig       `toml:"rpc"`
	Cluster   ClusterConfig   `toml:"cluster"`
	Modules   ModulesConfig   `toml:"modules"`
	Log       LogConfig       `toml:"log"`
	MQTTSN    MQTTSNConfig    `toml:"mqttsn"`
}

// NodeConfig names this process and where it keeps its data.
type NodeConfig struct {
	ID      string `toml:"id"`       // node id; default: the host name
	DataDir string `toml:"data_dir"` // directory of colony.db; default "./data"
}

// ListenersConfig holds listener addresses; "off" disables one, port 0 picks a free port.
type ListenersConfig struct {
	MQTT string `toml:"mqtt"` // MQTT over TCP; default "127.0.0.1:1883"
	TLS  string `toml:"tls"`  // MQTT over TLS; default "off"
	WS   string `toml:"ws"`   // MQTT over WebSocket; default "127.0.0.1:8083"
	HTTP string `toml:"http"` // /healthz, /metrics, /connect.json, module pages; default "127.0.0.1:8080"
}

// TLSConfig holds the TLS listener's certificate.
type TLSConfig struct {
	CertFile     string `toml:"cert_file"`      // PEM certificate chain; required when listeners.tls is on
	KeyFile      string `toml:"key_file"`       // PEM private key; required when listeners.tls is on
	ClientCAFile string `toml:"client_ca_file"` // verify client certificates against this CA; default none
}

// AuthConfig controls who may connect and what they may touch.
type AuthConfig struct {
	// AllowAnonymous admits clients without credentials. Default (unset):
	// only on listeners bound to loopback, as Mosquitto 2 does.
	AllowAnonymous *bool  `toml:"allow_anonymous"`
	PasswordFile   string `toml:"password_file"` // users and bcrypt hashes, written by `colony passwd`; default none
	ACLFile        string `toml:"acl_file"`      // Mosquitto-syntax ACL; default none (all topics allowed)
}

// LimitsConfig bounds resource use; see server.DefaultLimits for the defaults.
type LimitsConfig struct {
	MaxPacketSize    uint32   `toml:"max_packet_size"`    // bytes; default 1048576
	MaxConnections   int64    `toml:"max_connections"`    // default 100000
	ConnectTimeout   Duration `toml:"connect_timeout"`    // TCP accept to CONNECT; default "10s"
	MaxInflight      uint16   `toml:"max_inflight"`       // unacknowledged QoS 1/2 messages per connected client; default 1024
	MaxSessionQueue  int      `toml:"max_session_queue"`  // QoS 1/2 messages kept for a disconnected persistent session; default 10000
	ReceiveMaximum   uint16   `toml:"receive_maximum"`    // unacknowledged inbound QoS 1/2 per client; default 1024
	ClientWriteQueue int32    `toml:"client_write_queue"` // outbound packets queued per client; default 1024
	MaxSessionExpiry Duration `toml:"max_session_expiry"` // how long a disconnected persistent session is kept; default "168h"
	RPCTimeout       Duration `toml:"rpc_timeout"`        // deadline of a client request to a module; default "10s"
	RPCConcurrency   int      `toml:"rpc_concurrency"`    // client requests executing at once; default 1024
	// SlowClientTimeout is how long publishers wait for a full subscriber
	// queue to drain before that subscriber counts as stalled; default "5s".
	SlowClientTimeout Duration `toml:"slow_client_timeout"`
	MaxTopicLevels    int      `toml:"max_topic_levels"`  // levels of a topic or filter; default 128; -1: no limit
	MaxSubscriptions  int      `toml:"max_subscriptions"` // topic filters per client; default 1000; -1: no limit
	PublishRate       int      `toml:"publish_rate"`      // PUBLISH packets per second per client (faster: read slower); default 20000; -1: no limit
	PublishBurst      int      `toml:"publish_burst"`     // publishes above the rate a client may send at once; default: publish_rate
	MaxKeepalive      Duration `toml:"max_keepalive"`     // longest keep-alive a client may ask for; default "1h"
}

// SessionsConfig controls the user/session layer.
type SessionsConfig struct {
	SingleLogin bool `toml:"single_login"` // a user's new connection disconnects the older ones; default false
}

// GatewayConfig controls client request/response over MQTT.
type GatewayConfig struct {
	MQANTTopics bool `toml:"mqant_topics"` // also accept mqant's "<module>/<handler>/<msgid>"; default false
}

// StoreConfig controls the bbolt store.
type StoreConfig struct {
	Durability    string   `toml:"durability"`     // "sync", "batch" or "none"; default "batch"
	BatchInterval Duration `toml:"batch_interval"` // how long a batch collects writes; default "5ms"
}

// RPCConfig sizes the in-process module inboxes.
type RPCConfig struct {
	Workers int                    `toml:"workers"` // handler goroutines per module; default 2×CPUs
	Queue   int                    `toml:"queue"`   // inbox capacity per module; default 1024
	Modules map[string]RPCOverride `toml:"modules"` // per-module overrides, keyed by module id
}

// RPCOverride sizes one module's inbox.
type RPCOverride struct {
	Workers int `toml:"workers"` // default: rpc.workers
	Queue   int `toml:"queue"`   // default: rpc.queue
}

// ClusterConfig links nodes through RabbitMQ.
type ClusterConfig struct {
	AMQPURL  string   `toml:"amqp_url"` // e.g. "amqp://guest:guest@127.0.0.1:5672/"; default "" (single node)
	Prefix   string   `toml:"prefix"`   // exchange and queue name prefix; default "colony"
	Beat     Duration `toml:"beat"`     // presence interval; a node missing 3 beats is gone; default "2s"
	Prefetch int      `toml:"prefetch"` // remote calls a node takes per module at once; default 256
}

// ModulesConfig selects the modules this process runs and holds their
// own settings.
type ModulesConfig struct {
	Enabled []string `toml:"enabled"` // module ids; default: every module the binary registers
	// Settings holds each [modules.<id>] table as decoded TOML, keyed by
	// module id. The App decodes a table strictly into the module's own
	// settings (see Configurable) when it starts, because only the module
	// knows their shape.
	Settings map[string]map[string]any `toml:"-"`
}

// MQTTSNConfig configures the MQTT-SN gateway (server/mqttsn) for
// constrained devices over UDP and DTLS. Both listeners are off by
// default: a UDP socket that devices reach without credentials is opt-in.
type MQTTSNConfig struct {
	Listen     string `toml:"listen"`      // MQTT-SN over UDP, usually port 1884; default "off"
	DTLSListen string `toml:"dtls_listen"` // MQTT-SN over DTLS 1.2; default "off"
	GatewayID  uint8  `toml:"gateway_id"`  // in ADVERTISE and GWINFO; default 1
	// Advertise is the interval of ADVERTISE broadcasts to AdvertiseAddr; default "15m".
	Advertise Duration `toml:"advertise"`
	// AdvertiseAddr is where ADVERTISE goes, e.g. "255.255.255.255:1884"; default "" (none sent).
	AdvertiseAddr string `toml:"advertise_addr"`
	// Predefined maps topic ids (decimal, 1-65534) to topic names both the
	// gateway and the devices know; default none.
	Predefined   map[string]string `toml:"predefined"`
	PSKFile      string            `toml:"psk_file"`       // DTLS PSK: "identity:hex-key" lines (Mosquitto's format); default none
	CertFile     string            `toml:"cert_file"`      // DTLS certificate (PEM); default none
	KeyFile      string            `toml:"key_file"`       // its key; default none
	ClientCAFile string            `toml:"client_ca_file"` // verify device certificates; their common name is the user; default none
	// PSKFrom names an enabled module that serves the DTLS PSKs of its
	// devices (PSKSource), e.g. "device": its registry is asked first and
	// psk_file only for identities it holds no key for; default "" (psk_file alone).
	PSKFrom string `toml:"psk_from"`
	// RetryInterval is Tretry, how long the gateway waits for a device's answer; default "10s".
	RetryInterval Duration `toml:"retry_interval"`
	MaxRetries    int      `toml:"max_retries"` // Nretry, sends before a silent device is lost; default 4
	Queue         int      `toml:"queue"`       // QoS 0 messages buffered per sleeping or busy device; default 1000
	Window        uint16   `toml:"window"`      // unacknowledged QoS 1/2 messages handed to a device's session at once; default 32
	// HandshakeTimeout bounds a DTLS handshake (a wrong PSK shows as one
	// that never completes) and an association's wait for CONNECT; default "30s".
	HandshakeTimeout Duration `toml:"handshake_timeout"`
}

// LogConfig controls logging.
type LogConfig struct {
	Level  string `toml:"level"`  // "debug", "info", "warn", "error"; default "info"
	Format string `toml:"format"` // "json", "console" or "auto" (console on a terminal); default "auto"
}

// Duration is a time.Duration written as a string ("250ms", "10s") in TOML.
type Duration time.Duration

// UnmarshalText parses a Go duration string.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return fmt.Errorf("want a duration like \"10s\": %w", err)
	}
	if v < 0 {
		return fmt.Errorf("duration %s is negative", v)
	}
	*d = Duration(v)
	return nil
}

// MarshalText writes the duration as a Go duration string.
func (d Duration) MarshalText() ([]byte, error) { return []byte(time.Duration(d).String()), nil }

// Default listener addresses.
const (
	DefaultMQTTAddr = "127.0.0.1:1883"
	DefaultWSAddr   = "127.0.0.1:8083"
	DefaultHTTPAddr = "127.0.0.1:8080"
	Off             = "off"
)

// DecodeConfig strictly decodes TOML into cfg: an unknown key is an error
// naming the key and its line. name labels errors (usually the file path).
// Into a *Config, the [modules.<id>] tables go to Modules.Settings, to be
// checked by their modules when the App starts.
func DecodeConfig(name string, data []byte, cfg any) error {
	dec := toml.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	err := dec.Decode(cfg)
	c, isConfig := cfg.(*Config)
	var strict *toml.StrictMissingError
	if errors.As(err, &strict) && len(strict.Errors) > 0 {
		msgs := make([]string, 0, len(strict.Errors))
		for _, e := range strict.Errors {
			if isConfig && moduleKey(e.Key()) {
				continue
			}
			row, _ := e.Position()
			msgs = append(msgs, fmt.Sprintf("%s:%d: unknown key %q", name, row, strings.Join(e.Key(), ".")))
		}
		if len(msgs) > 0 {
			return fmt.Errorf("%s: %w", strings.Join(msgs, "; "), ErrConfig)
		}
		err = nil
	}
	if err == nil {
		if isConfig {
			return c.decodeModuleSettings(name, data)
		}
		return nil
	}
	var de *toml.DecodeError
	if errors.As(err, &de) {
		row, _ := de.Position()
		key := strings.Join(de.Key(), ".")
		if key != "" {
			return fmt.Errorf("%s:%d: key %q: %s: %w", name, row, key, de.Error(), ErrConfig)
		}
		return fmt.Errorf("%s:%d: %s: %w", name, row, de.Error(), ErrConfig)
	}
	return fmt.Errorf("%s: %w: %w", name, err, ErrConfig)
}

// moduleKey reports whether key lies in a [modules.<id>] table.
func moduleKey(key []string) bool {
	return len(key) >= 2 && key[0] == "modules" && key[1] != "enabled"
}

// decodeModuleSettings fills c.Modules.Settings from the [modules.<id>]
// tables of data, which has already decoded without other errors.
func (c *Config) decodeModuleSettings(name string, data []byte) error {
	var doc struct {
		Modules map[string]any `toml:"modules"`
	}
	if err := toml.Unmarshal(data, &doc); err != nil {
		return fmt.Errorf("%s: %w: %w", name, err, ErrConfig)
	}
	for id, v := range doc.Modules {
		if id == "enabled" {
			continue
		}
		t, ok := v.(map[string]any)
		if !ok {
			return fmt.Errorf("%s: key \"modules.%s\" is neither \"enabled\" nor a module's table of settings: %w", name, id, ErrConfig)
		}
		if c.Modules.Settings == nil {
			c.Modules.Settings = map[string]map[string]any{}
		}
		c.Modules.Settings[id] = t
	}
	return nil
}

// DecodeSettings strictly decodes the [modules.<id>] table of settings
// into v, a pointer to the module's settings struct (with toml tags).
// Keys absent from the table leave v's fields as they are.
func DecodeSettings(id string, table map[string]any, v any) error {
	data, err := toml.Marshal(table)
	if err != nil {
		return fmt.Errorf("modules.%s: %w: %w", id, err, ErrConfig)
	}
	dec := toml.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	err = dec.Decode(v)
	var strict *toml.StrictMissingError
	if errors.As(err, &strict) && len(strict.Errors) > 0 {
		msgs := make([]string, 0, len(strict.Errors))
		for _, e := range strict.Errors {
			msgs = append(msgs, fmt.Sprintf("modules.%s: unknown key %q", id, strings.Join(e.Key(), ".")))
		}
		return fmt.Errorf("%s: %w", strings.Join(msgs, "; "), ErrConfig)
	}
	var de *toml.DecodeError
	if errors.As(err, &de) {
		key := strings.Join(de.Key(), ".")
		if row, _ := de.Position(); key == "" && row > 0 {
			// A value's own decoder (a Duration) leaves the key out; it
			// starts the line of data, which Marshal wrote one per key.
			if lines := strings.Split(string(data), "\n"); row <= len(lines) {
				key, _, _ = strings.Cut(lines[row-1], "=")
				key = strings.TrimSpace(key)
			}
		}
		return fmt.Errorf("modules.%s: key %q: %s: %w", id, key, de.Error(), ErrConfig)
	}
	if err != nil {
		return fmt.Errorf("modules.%s: %w: %w", id, err, ErrConfig)
	}
	return nil
}

// LoadConfig reads a TOML file strictly into cfg.
func LoadConfig(path string, cfg any) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("read config: %w", err)
	}
	return DecodeConfig(path, b, cfg)
}

// Override is one command-line or environment override of a config key.
type Override struct {
	Flag string // e.g. "mqtt"
	Env  string // e.g. "COLONY_MQTT"
	Key  string // config key it sets, e.g. "listeners.mqtt"
	Set  func(c *Config, v string)
}

// Overrides lists the keys settable by flag and environment variable.
var Overrides = []Override{
	{"mqtt", "COLONY_MQTT", "listeners.mqtt", func(c *Config, v string) { c.Listeners.MQTT = v }},
	{"tls", "COLONY_TLS", "listeners.tls", func(c *Config, v string) { c.Listeners.TLS = v }},
	{"ws", "COLONY_WS", "listeners.ws", func(c *Config, v string) { c.Listeners.WS = v }},
	{"http", "COLONY_HTTP", "listeners.http", func(c *Config, v string) { c.Listeners.HTTP = v }},
	{"mqttsn", "COLONY_MQTTSN", "mqttsn.listen", func(c *Config, v string) { c.MQTTSN.Listen = v }},
	{"data", "COLONY_DATA", "node.data_dir", func(c *Config, v string) { c.Node.DataDir = v }},
	{"node", "COLONY_NODE", "node.id", func(c *Config, v string) { c.Node.ID = v }},
	{"amqp", "COLONY_AMQP", "cluster.amqp_url", func(c *Config, v string) { c.Cluster.AMQPURL = v }},
}

// ApplyEnv applies COLONY_* environment overrides; lookup is usually os.LookupEnv.
func (c *Config) ApplyEnv(lookup func(string) (string, bool)) {
	for _, o := range Overrides {
		if v, ok := lookup(o.Env); ok && v != "" {
			o.Set(c, v)
		}
	}
}

// SetDefaults fills every unset field with its default.
func (c *Config) SetDefaults() {
	if c.Node.ID == "" {
		if h, err := os.Hostname(); err == nil && h != "" {
			c.Node.ID = h
		} else {
			c.Node.ID = "colony"
		}
	}
	if c.Node.DataDir == "" {
		c.Node.DataDir = "./data"
	}
	if c.Listeners.MQTT == "" {
		c.Listeners.MQTT = DefaultMQTTAddr
	}
	if c.Listeners.TLS == "" {
		c.Listeners.TLS = Off
	}
	if c.Listeners.WS == "" {
		c.Listeners.WS = DefaultWSAddr
	}
	if c.Listeners.HTTP == "" {
		c.Listeners.HTTP = DefaultHTTPAddr
	}
	if c.MQTTSN.Listen == "" {
		c.MQTTSN.Listen = Off
	}
	if c.MQTTSN.DTLSListen == "" {
		c.MQTTSN.DTLSListen = Off
	}
	if c.MQTTSN.Advertise == 0 {
		c.MQTTSN.Advertise = Duration(15 * time.Minute)
	}
	if c.Store.Durability == "" {
		c.Store.Durability = string(store.DurabilityBatch)
	}
	if c.Store.BatchInterval == 0 {
		c.Store.BatchInterval = Duration(5 * time.Millisecond)
	}
	if c.Log.Level == "" {
		c.Log.Level = "info"
	}
	if c.Log.Format == "" {
		c.Log.Format = "auto"
	}
}

// Validate checks a defaulted config; known lists the module ids the binary offers.
func (c *Config) Validate(known []string) error {
	var errs []error
	bad := func(key, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s: %w", key, fmt.Sprintf(format, args...), ErrConfig))
	}
	for key, addr := range map[string]string{
		"listeners.mqtt": c.Listeners.MQTT, "listeners.tls": c.Listeners.TLS,
		"listeners.ws": c.Listeners.WS, "listeners.http": c.Listeners.HTTP,
		"mqttsn.listen": c.MQTTSN.Listen, "mqttsn.dtls_listen": c.MQTTSN.DTLSListen,
	} {
		if addr == Off {
			continue
		}
		if _, port, err := net.SplitHostPort(addr); err != nil || port == "" {
			bad(key, "%q is not host:port or \"off\"", addr)
		}
	}
	switch store.Durability(c.Store.Durability) {
	case store.DurabilitySync, store.DurabilityBatch, store.DurabilityNone:
	default:
		bad("store.durability", "%q is not sync, batch or none", c.Store.Durability)
	}
	if !slices.Contains([]string{"debug", "info", "warn", "error"}, c.Log.Level) {
		bad("log.level", "%q is not debug, info, warn or error", c.Log.Level)
	}
	if !slices.Contains([]string{"auto", "json", "console"}, c.Log.Format) {
		bad("log.format", "%q is not auto, json or console", c.Log.Format)
	}
	if c.Limits.RPCConcurrency < 0 || c.RPC.Workers < 0 || c.RPC.Queue < 0 || c.Limits.MaxConnections < 0 || c.Limits.PublishBurst < 0 {
		bad("limits", "counts must not be negative")
	}
	seen := map[string]bool{}
	for _, m := range c.Modules.Enabled {
		if !slices.Contains(known, m) {
			bad("modules.enabled", "unknown module %q (this binary has %s)", m, strings.Join(known, ", "))
		}
		if seen[m] {
			bad("modules.enabled", "module %q listed twice", m)
		}
		seen[m] = true
	}
	for id := range c.MQTTSN.Predefined {
		if n, err := strconv.ParseUint(id, 10, 16); err != nil || n == 0 || n == 0xFFFF {
			bad("mqttsn.predefined", "%q is not a topic id from 1 to 65534", id)
		}
	}
	if m := c.MQTTSN.PSKFrom; m != "" && !slices.Contains(known, m) {
		bad("mqttsn.psk_from", "unknown module %q (this binary has %s)", m, strings.Join(known, ", "))
	}
	for m := range c.RPC.Modules {
		if !slices.Contains(known, m) {
			bad("rpc.modules", "unknown module %q", m)
		}
	}
	for m := range c.Modules.Settings {
		if !slices.Contains(known, m) {
			bad("modules."+m, "unknown module %q (this binary has %s)", m, strings.Join(known, ", "))
		}
	}
	return errors.Join(errs...)
}
