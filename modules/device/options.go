package device

import (
	"errors"
	"fmt"
	"time"

	"github.com/colonymq/colony/app"
)

// ErrOptions reports Options that cannot be used; Init returns it wrapped,
// naming the field.
var ErrOptions = errors.New("bad device options")

// Options configures the module. A zero field takes the default it names;
// New applies them, Init rejects what is left invalid. The toml names are
// the keys of colony.toml's [modules.device] table.
type Options struct {
	// Admins lists the user ids allowed to call the management handlers
	// (registry, credentials, claims, shadows' desired side, commands,
	// jobs, telemetry queries). Default empty: any caller that is not a
	// device or a claim, which leaves the choice to the ACL file (it can
	// deny $rpc/device/#).
	Admins []string `toml:"admins"`
	// TokenGrace is how long a device's previous token keeps working
	// after a rotation; default "24h".
	TokenGrace app.Duration `toml:"token_grace"`
	// TelemetryMaxAge is how long telemetry points are kept; default
	// "720h" (30 days); negative: no limit.
	TelemetryMaxAge app.Duration `toml:"telemetry_max_age"`
	// TelemetryMaxPoints is how many points a device keeps at most, oldest
	// dropped first; default 2,000,000 (23 days at 1 Hz); negative: no limit.
	TelemetryMaxPoints int `toml:"telemetry_max_points"`
	// SweepInterval is how often retention and expiry run; default "1m".
	SweepInterval app.Duration `toml:"sweep_interval"`
	// IngestQueue is how many telemetry points wait for the store at
	// most; beyond, publishers wait (back-pressure). Default 8192: the
	// writer keeps batching while commits are in flight, so a deeper queue
	// adds no speed (BenchmarkTelemetryIngest), only heap.
	IngestQueue int `toml:"ingest_queue"`
	// MaxShadowBytes bounds a shadow document (its JSON state) and an
	// update's payload; default 8192.
	MaxShadowBytes int `toml:"max_shadow_bytes"`
	// CommandTimeout is a command's timeout when the call names none;
	// default "30s". Calls may ask for 5s to 300s.
	CommandTimeout app.Duration `toml:"command_timeout"`
	// MaxQueryPoints bounds the points or buckets a telemetry query
	// returns; default 100000.
	MaxQueryPoints int `toml:"max_query_points"`
}

func (o *Options) setDefaults() {
	if o.TokenGrace == 0 {
		o.TokenGrace = app.Duration(24 * time.Hour)
	}
	if o.TelemetryMaxAge == 0 {
		o.TelemetryMaxAge = app.Duration(30 * 24 * time.Hour)
	}
	if o.TelemetryMaxPoints == 0 {
		o.TelemetryMaxPoints = 2_000_000
	}
	if o.SweepInterval == 0 {
		o.SweepInterval = app.Duration(time.Minute)
	}
	if o.IngestQueue == 0 {
		o.IngestQueue = 8192
	}
	if o.MaxShadowBytes == 0 {
		o.MaxShadowBytes = 8192
	}
	if o.CommandTimeout == 0 {
		o.CommandTimeout = app.Duration(30 * time.Second)
	}
	if o.MaxQueryPoints == 0 {
		o.MaxQueryPoints = 100_000
	}
}

func (o *Options) validate() error {
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, fmt.Errorf("device: %s: %s: %w", field, fmt.Sprintf(format, args...), ErrOptions))
	}
	if o.TokenGrace < 0 || o.SweepInterval <= 0 {
		bad("token_grace, sweep_interval", "must be positive")
	}
	if o.IngestQueue < 1 {
		bad("ingest_queue", "%d is less than 1", o.IngestQueue)
	}
	if o.MaxShadowBytes < 64 {
		bad("max_shadow_bytes", "%d is less than 64", o.MaxShadowBytes)
	}
	if d := time.Duration(o.CommandTimeout); d < minCommandTimeout || d > maxCommandTimeout {
		bad("command_timeout", "%s is outside %s..%s", d, minCommandTimeout, maxCommandTimeout)
	}
	if o.MaxQueryPoints < 1 {
		bad("max_query_points", "%d is less than 1", o.MaxQueryPoints)
	}
	return errors.Join(errs...)
}
