package im

import (
	"errors"
	"fmt"
	"time"

	"github.com/colonymq/colony/app"
)

// ErrOptions reports Options that cannot be used; Init returns it wrapped,
// naming the field.
var ErrOptions = errors.New("bad im options")

// Options configures the module. A zero field takes the default it names;
// New applies them, Init rejects what is left invalid. The toml names are
// the keys of colony.toml's [modules.im] table.
type Options struct {
	// MaxMessageBytes bounds a message's text, data and bin together;
	// default 16384.
	MaxMessageBytes int `toml:"max_message_bytes"`
	// MaxMembers bounds the members of a group or channel; default 10000.
	MaxMembers int `toml:"max_members"`
	// MaxMessages is how many log entries a conversation keeps: the sweep
	// deletes older ones. Default 10000; negative: no limit.
	MaxMessages int `toml:"max_messages"`
	// MaxAge is how long log entries are kept; default 0: no limit.
	MaxAge app.Duration `toml:"max_age"`
	// SweepInterval is how often retention runs; default 1m.
	SweepInterval app.Duration `toml:"sweep_interval"`
	// SendRate is how many sends and edits a user may make per second on
	// average, SendBurst how many in a row; beyond, calls fail with
	// rate_limited. Defaults 10 and 20; a negative SendRate: no limit.
	SendRate  float64 `toml:"send_rate"`
	SendBurst int     `toml:"send_burst"`
	// FlushInterval is how often delivered and read positions are written
	// to the store; they are written on Stop too, so only a crash loses up
	// to this much of them. Default 1s.
	FlushInterval app.Duration `toml:"flush_interval"`
}

func (o *Options) setDefaults() {
	def := func(v *int, d int) {
		if *v == 0 {
			*v = d
		}
	}
	def(&o.MaxMessageBytes, 16<<10)
	def(&o.MaxMembers, 10_000)
	def(&o.MaxMessages, 10_000)
	def(&o.SendBurst, 20)
	if o.SendRate == 0 {
		o.SendRate = 10
	}
	if o.SweepInterval == 0 {
		o.SweepInterval = app.Duration(time.Minute)
	}
	if o.FlushInterval == 0 {
		o.FlushInterval = app.Duration(time.Second)
	}
}

func (o *Options) validate() error {
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, fmt.Errorf("im: %s: %s: %w", field, fmt.Sprintf(format, args...), ErrOptions))
	}
	if o.MaxMessageBytes < 0 {
		bad("MaxMessageBytes", "%d is negative", o.MaxMessageBytes)
	}
	if o.MaxMembers < 2 {
		bad("MaxMembers", "%d is less than 2", o.MaxMembers)
	}
	if o.MaxAge < 0 || o.SweepInterval < 0 || o.FlushInterval < 0 {
		bad("MaxAge, SweepInterval, FlushInterval", "durations must not be negative")
	}
	if o.SendBurst < 1 {
		bad("SendBurst", "%d is less than 1", o.SendBurst)
	}
	return errors.Join(errs...)
}
