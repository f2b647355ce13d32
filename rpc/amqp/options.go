package amqp

import (
	"errors"
	"fmt"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
	"github.com/rs/zerolog"

	"github.com/colonymq/colony/rpc"
)

// Sentinel errors of the transport's lifecycle. Call and Notify never
// return them: their errors are *rpc.Error values matched with the rpc
// sentinels (rpc.ErrUnavailable, rpc.ErrNotFound, …).
var (
	// ErrInvalidOptions is wrapped by New for options it cannot accept.
	ErrInvalidOptions = errors.New("invalid amqp transport options")
	// ErrClosed is returned by Start after Close.
	ErrClosed = errors.New("amqp transport closed")
	// ErrStarted is returned by a second Start.
	ErrStarted = errors.New("amqp transport already started")
)

// Defaults applied by New to zero fields of Options.
const (
	// DefaultURL is a RabbitMQ on this host with its stock guest account.
	DefaultURL = "amqp://guest:guest@127.0.0.1:5672/"
	// DefaultPrefetch is the basic.qos prefetch of each serving consumer.
	DefaultPrefetch = 256
	// DefaultBeat is the presence interval.
	DefaultBeat = 2 * time.Second
	// DefaultServeTimeout bounds served calls that carry no expiration.
	DefaultServeTimeout = 30 * time.Second
	// DefaultConnectTimeout bounds each connection attempt.
	DefaultConnectTimeout = 5 * time.Second
)

// Options configures a Transport. New applies the defaults to zero fields;
// the Transport keeps its own copy.
type Options struct {
	// URL is the RabbitMQ URL. Default DefaultURL.
	URL string
	// Node is this node's id, unique in the cluster. Required.
	Node string
	// Prefix starts every exchange and queue name. Default "colony"; tests
	// use random prefixes to keep out of each other's way.
	Prefix string
	// Registry holds the modules this node serves; they are read when the
	// transport connects, so modules registered later are served after the
	// next reconnect. Nil for a node that only calls.
	Registry *rpc.Registry
	// Local executes incoming calls. Required when Registry is set. The
	// Transport never stops it: stop Local after Close.
	Local *rpc.Local
	// Prefetch is the basic.qos prefetch of each consumer, the number of
	// unacknowledged calls one queue hands this node at once. Default 256.
	// Prefetch times the number of nodes must cover the concurrent callers
	// of a module, or calls queue in RabbitMQ.
	Prefetch int
	// ModulePrefetch overrides Prefetch per module.
	ModulePrefetch map[string]int
	// Beat is the presence interval; a peer missing 3 beats is gone.
	// Default 2s.
	Beat time.Duration
	// ServeTimeout bounds served calls that arrive without an expiration.
	// Default 30s.
	ServeTimeout time.Duration
	// ConnectTimeout bounds the TCP connect and AMQP handshake of each
	// connection attempt. Default 5s.
	ConnectTimeout time.Duration
	// Version is announced to peers with presence.
	Version string
	// Logger receives one line per event (connect, disconnect, node
	// joined or gone), never one per message. The zero value logs nothing.
	Logger zerolog.Logger
}

// withDefaults fills zero fields and validates the result.
func (o Options) withDefaults() (Options, error) {
	if o.URL == "" {
		o.URL = DefaultURL
	}
	if o.Prefix == "" {
		o.Prefix = DefaultPrefix
	}
	if o.Prefetch <= 0 {
		o.Prefetch = DefaultPrefetch
	}
	if o.Beat <= 0 {
		o.Beat = DefaultBeat
	}
	if o.ServeTimeout <= 0 {
		o.ServeTimeout = DefaultServeTimeout
	}
	if o.ConnectTimeout <= 0 {
		o.ConnectTimeout = DefaultConnectTimeout
	}
	if o.Node == "" {
		return o, fmt.Errorf("%w: node id is required", ErrInvalidOptions)
	}
	// Names end up in queue names, which RabbitMQ limits to 255 bytes.
	if len(o.Node) > 100 || len(o.Prefix) > 50 {
		return o, fmt.Errorf("%w: node id or prefix too long", ErrInvalidOptions)
	}
	if o.Registry != nil && o.Local == nil {
		return o, fmt.Errorf("%w: a registry needs a local transport to run its calls", ErrInvalidOptions)
	}
	if _, err := amqp091.ParseURI(o.URL); err != nil {
		return o, fmt.Errorf("%w: url: %w", ErrInvalidOptions, err)
	}
	mp := make(map[string]int, len(o.ModulePrefetch))
	for m, n := range o.ModulePrefetch {
		if n <= 0 {
			n = o.Prefetch
		}
		mp[m] = n
	}
	o.ModulePrefetch = mp
	return o, nil
}

func (o *Options) prefetch(module string) int {
	if n, ok := o.ModulePrefetch[module]; ok {
		return n
	}
	return o.Prefetch
}
