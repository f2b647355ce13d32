package mqttsn

import (
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/rs/zerolog"
)

// ErrInvalidOptions reports options the gateway cannot work with.
var ErrInvalidOptions = errors.New("invalid mqtt-sn options")

// Listener names: what the engine, the ACL's anonymous rule, logs and
// Addr call the gateway's two sockets.
const (
	ListenerUDP  = "mqttsn"      // MQTT-SN over plain UDP
	ListenerDTLS = "mqttsn-dtls" // MQTT-SN over DTLS 1.2
)

// Off disables a listener when used as its address.
const Off = "off"

// Options configures a Gateway. Zero values take the defaults named on each field.
type Options struct {
	// Listen is the plain UDP address; "" or "off" disables it.
	Listen string
	// DTLSListen is the DTLS address; "" or "off" disables it. It needs
	// PSK, or CertFile and KeyFile, or both.
	DTLSListen string
	// GatewayID is sent in ADVERTISE and GWINFO. Default 1.
	GatewayID uint8
	// Advertise is the interval of ADVERTISE broadcasts on the UDP
	// listener; 0 sends none. They go to AdvertiseAddr.
	Advertise time.Duration
	// AdvertiseAddr is where ADVERTISE goes: a broadcast or multicast
	// address with the clients' port, e.g. "255.255.255.255:1884".
	AdvertiseAddr string
	// Predefined maps topic ids both sides know beforehand to topic names.
	Predefined map[uint16]string
	// PSK finds a device's pre-shared key by its identity; nil: no PSK
	// cipher suites. The identity becomes the device's user name.
	PSK PSKStore
	// CertFile and KeyFile hold the DTLS server certificate (PEM).
	CertFile, KeyFile string
	// ClientCAFile, when set, makes devices present a certificate signed by
	// this CA (or use PSK); the certificate's common name becomes the
	// device's user name.
	ClientCAFile string
	// RetryInterval is Tretry: how long the gateway waits for a device's
	// answer before sending again. Default 10s (the spec suggests 10-15 s).
	RetryInterval time.Duration
	// MaxRetries is Nretry: sends after which an unanswering device is
	// lost. Default 4 (the spec suggests 3-5).
	MaxRetries int
	// QueueSize bounds the QoS 0 messages kept for a device that is asleep
	// or busy; more are dropped and counted. Default 1000.
	QueueSize int
	// Window is how many unacknowledged QoS 1/2 messages the broker hands a
	// device's gateway session at once; the rest wait in the broker
	// session. Default 32.
	Window uint16
	// MaxTopics bounds the topic ids registered per device. Default 1024.
	MaxTopics int
	// HandshakeTimeout bounds a DTLS handshake and the idle time of a DTLS
	// association without a session: before its CONNECT, and after a
	// refused CONNECT or a DISCONNECT unless the device closes it first.
	// Default 30s.
	HandshakeTimeout time.Duration
	// Logger receives the gateway's events.
	Logger zerolog.Logger
}

func (o *Options) fill() {
	if o.GatewayID == 0 {
		o.GatewayID = 1
	}
	if o.RetryInterval <= 0 {
		o.RetryInterval = 10 * time.Second
	}
	if o.MaxRetries <= 0 {
		o.MaxRetries = 4
	}
	if o.QueueSize <= 0 {
		o.QueueSize = 1000
	}
	if o.Window == 0 {
		o.Window = 32
	}
	if o.MaxTopics <= 0 {
		o.MaxTopics = 1024
	}
	if o.HandshakeTimeout <= 0 {
		o.HandshakeTimeout = 30 * time.Second
	}
}

func on(addr string) bool { return addr != "" && addr != Off }

func (o *Options) validate() error {
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf(format+": %w", append(args, ErrInvalidOptions)...))
	}
	for name, addr := range map[string]string{"listen": o.Listen, "dtls_listen": o.DTLSListen} {
		if on(addr) {
			if _, _, err := net.SplitHostPort(addr); err != nil {
				bad("%s %q is not host:port or \"off\"", name, addr)
			}
		}
	}
	if on(o.DTLSListen) && o.PSK == nil && (o.CertFile == "" || o.KeyFile == "") {
		bad("dtls_listen needs PSKs (psk_file, psk_from) or cert_file and key_file")
	}
	if (o.CertFile == "") != (o.KeyFile == "") {
		bad("cert_file and key_file go together")
	}
	if o.Advertise > 0 && o.AdvertiseAddr != "" {
		if _, _, err := net.SplitHostPort(o.AdvertiseAddr); err != nil {
			bad("advertise_addr %q is not host:port", o.AdvertiseAddr)
		}
	}
	if o.Advertise > 0xFFFF*time.Second {
		bad("advertise interval %s exceeds ADVERTISE's 65535 s", o.Advertise)
	}
	for id, name := range o.Predefined {
		if id == 0 || id == 0xFFFF {
			bad("predefined topic id %d is reserved", id)
		}
		if name == "" || strings.ContainsAny(name, "+#") || strings.ContainsRune(name, 0) {
			bad("predefined topic %d: %q is not a topic name", id, name)
		}
	}
	return errors.Join(errs...)
}
