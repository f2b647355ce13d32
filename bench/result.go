package bench

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"
)

// Latency holds delivery latency percentiles (send time in the payload to
// receive time; for RPC, request sent to reply received). Values are
// nearest-rank percentiles within 0.8%; Max is exact.
type Latency struct {
	// P50 is the median.
	P50 time.Duration `json:"p50_ns"`
	// P90 is the 90th percentile.
	P90 time.Duration `json:"p90_ns"`
	// P99 is the 99th percentile.
	P99 time.Duration `json:"p99_ns"`
	// Max is the largest latency seen.
	Max time.Duration `json:"max_ns"`
}

// ServerRSS is the server's resident memory as sampled from /proc when
// Config.PID is set, in KiB.
type ServerRSS struct {
	// PID is the process that was sampled.
	PID int `json:"pid"`
	// BeforeKB is VmRSS before the first client connected (Idle: after a
	// one-second settle).
	BeforeKB int64 `json:"before_kb"`
	// PeakKB is the largest VmRSS sampled (every 50 ms) during the run.
	PeakKB int64 `json:"peak_kb"`
	// EndKB is VmRSS when the run ended, before the clients disconnected.
	EndKB int64 `json:"end_kb"`
	// HWMKB is VmHWM at the end: the process's peak RSS over its lifetime.
	HWMKB int64 `json:"hwm_kb"`
	// BeforeAnonKB and PeakAnonKB are RssAnon, the part of VmRSS that is
	// the process's own memory rather than pages of its executable and
	// libraries, before the run and at its largest sample.
	BeforeAnonKB int64 `json:"before_anon_kb"`
	PeakAnonKB   int64 `json:"peak_anon_kb"`
	// AfterKB (Idle) is VmRSS once every connection is open and a
	// one-second settle has passed.
	AfterKB int64 `json:"after_kb,omitempty"`
	// PerConnBytes (Idle) is (AfterKB - BeforeKB) × 1024 / Connected.
	PerConnBytes float64 `json:"per_conn_bytes,omitempty"`
}

// Result is what Run measured. Received, Lost and Expected count unique
// messages, so Received + Lost = Expected; duplicates are counted apart.
type Result struct {
	// Scenario, URL and the settings below echo the Config after defaults.
	Scenario Scenario `json:"scenario"`
	// URL is the broker that was measured.
	URL string `json:"url"`
	// MQTTVersion is 3 (3.1.1) or 5.
	MQTTVersion int `json:"mqtt_version"`
	// QoS of publishes and subscriptions.
	QoS byte `json:"qos"`
	// Publishers is the number of publishers (RPC: callers).
	Publishers int `json:"publishers"`
	// Subscribers is the number of subscribers.
	Subscribers int `json:"subscribers"`
	// Count is the number of messages (RPC: calls) per publisher.
	Count int `json:"count"`
	// Size is the payload size in bytes.
	Size int `json:"size"`
	// Rate is the per-publisher rate in messages/s, 0 for flood.
	Rate float64 `json:"rate"`

	// Sent is the number of messages (RPC: requests) handed to the client
	// libraries without error.
	Sent int64 `json:"sent"`
	// Expected is the number of deliveries a lossless broker makes: every
	// message sent, once for each subscriber it matches (RPC: one reply per
	// call sent). Messages a publisher never sent (it stopped on a stalled
	// acknowledgement, or the run was interrupted) are not expected.
	Expected int64 `json:"expected"`
	// Received is the number of unique deliveries (RPC: replies).
	Received int64 `json:"received"`
	// Lost is Expected - Received.
	Lost int64 `json:"lost"`
	// Duplicates counts deliveries of a message the receiver already had.
	Duplicates int64 `json:"duplicates"`
	// OutOfOrder counts first deliveries that arrived after a later message
	// of the same publisher.
	OutOfOrder int64 `json:"out_of_order"`
	// Invalid counts deliveries that do not carry this run's header.
	Invalid int64 `json:"invalid"`
	// Errors counts failed connects, subscribes and publishes, negative
	// acknowledgements and lost connections.
	Errors int64 `json:"errors"`
	// FirstError is the message of the first of those errors.
	FirstError string `json:"first_error,omitempty"`
	// RPCErrors counts replies that carry an error (RPC).
	RPCErrors int64 `json:"rpc_errors"`
	// FirstRPCError is the first error reply.
	FirstRPCError string `json:"first_rpc_error,omitempty"`

	// PublishDuration is from the first publish to the last one acknowledged.
	PublishDuration time.Duration `json:"publish_duration_ns"`
	// Duration is from the first publish to the last delivery (Idle: the
	// time it took to open the connections).
	Duration time.Duration `json:"duration_ns"`
	// SentPerSec is Sent / PublishDuration.
	SentPerSec float64 `json:"sent_per_sec"`
	// MsgsPerSec is Received / Duration: deliveries (RPC: replies) per second.
	MsgsPerSec float64 `json:"msgs_per_sec"`
	// Latency summarises delivery (RPC: round-trip) latency.
	Latency Latency `json:"latency"`

	// Clients is the number of connections Idle tried to open.
	Clients int `json:"clients,omitempty"`
	// Connected is the number of connections Idle opened.
	Connected int64 `json:"connected,omitempty"`
	// Dropped is the number of Idle connections the server closed while held.
	Dropped int64 `json:"dropped,omitempty"`
	// ConnectsPerSec is Connected / Duration for Idle.
	ConnectsPerSec float64 `json:"connects_per_sec,omitempty"`

	// ServerRSS is set when Config.PID was.
	ServerRSS *ServerRSS `json:"server_rss,omitempty"`
	// Interrupted is true when the context ended before the run did; the
	// counts cover what happened until then.
	Interrupted bool `json:"interrupted,omitempty"`
}

// Progress is a snapshot of a running benchmark, passed to Run's progress
// callback about five times a second and once more at the end.
type Progress struct {
	// Phase is "connect", "publish", "drain", "hold" or "done".
	Phase string
	// Elapsed is the time since Run started.
	Elapsed time.Duration
	// Connected and Clients count open connections and those to open.
	Connected, Clients int64
	// Sent and Total count messages (RPC: calls) sent and to send.
	Sent, Total int64
	// Received and Expected count unique deliveries (RPC: replies).
	Received, Expected int64
}

// WriteTable writes r as a compact, human-readable table.
func (r *Result) WriteTable(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	row := func(k, format string, a ...any) { fmt.Fprintf(tw, "%s\t%s\n", k, fmt.Sprintf(format, a...)) }
	version := "3.1.1"
	if r.MQTTVersion == 5 {
		version = "5"
	}
	rate := "flood"
	if r.Rate > 0 {
		rate = fmt.Sprintf("%g msg/s each", r.Rate)
	}
	row("scenario", "%s  %s  MQTT %s", r.Scenario, r.URL, version)
	switch r.Scenario {
	case Idle:
		row("connections", "%d of %d open (%s/s over %s), %d dropped while held", r.Connected, r.Clients,
			count(r.ConnectsPerSec), round(r.Duration), r.Dropped)
	case RPC:
		row("load", "%d callers × %d calls, QoS %d, %s", r.Publishers, r.Count, r.QoS, rate)
		row("calls", "%d sent (%s/s)", r.Sent, count(r.SentPerSec))
		row("replies", "%d of %d (%s/s over %s)", r.Received, r.Expected, count(r.MsgsPerSec), round(r.Duration))
		row("lost", "%d (%s)", r.Lost, pct(r.Lost, r.Expected))
		row("error replies", "%d%s", r.RPCErrors, quote(r.FirstRPCError))
	default:
		row("load", "%d pub → %d sub, %d msgs/pub of %d B, QoS %d, %s", r.Publishers, r.Subscribers, r.Count, r.Size, r.QoS, rate)
		row("sent", "%d (%s/s over %s)", r.Sent, count(r.SentPerSec), round(r.PublishDuration))
		row("received", "%d of %d (%s deliveries/s over %s)", r.Received, r.Expected, count(r.MsgsPerSec), round(r.Duration))
		row("lost", "%d (%s)", r.Lost, pct(r.Lost, r.Expected))
		row("duplicates", "%d", r.Duplicates)
		row("out of order", "%d", r.OutOfOrder)
	}
	if r.Invalid > 0 {
		row("foreign", "%d deliveries without this run's header", r.Invalid)
	}
	row("errors", "%d%s", r.Errors, quote(r.FirstError))
	if r.Scenario != Idle {
		l := r.Latency
		row("latency", "p50 %s  p90 %s  p99 %s  max %s", ms(l.P50), ms(l.P90), ms(l.P99), ms(l.Max))
	}
	if s := r.ServerRSS; s != nil {
		if r.Scenario == Idle {
			row("server rss", "before %s  after %s  peak %s  end %s  (%s per connection)",
				mb(s.BeforeKB), mb(s.AfterKB), mb(s.PeakKB), mb(s.EndKB), kb(s.PerConnBytes))
		} else {
			row("server rss", "before %s  peak %s  end %s", mb(s.BeforeKB), mb(s.PeakKB), mb(s.EndKB))
		}
		row("server anon", "before %s  peak %s  (RssAnon: without the executable's and libraries' pages)", mb(s.BeforeAnonKB), mb(s.PeakAnonKB))
	}
	if r.Interrupted {
		row("interrupted", "yes: the counts cover the run until then")
	}
	return tw.Flush()
}

func round(d time.Duration) time.Duration { return d.Round(time.Millisecond) }

func ms(d time.Duration) string { return fmt.Sprintf("%.3fms", float64(d)/float64(time.Millisecond)) }

func mb(kib int64) string { return fmt.Sprintf("%.1f MB", float64(kib)/1024) }

func kb(bytes float64) string { return fmt.Sprintf("%.2f KB", bytes/1024) }

func pct(n, of int64) string {
	if of == 0 {
		return "0%"
	}
	return fmt.Sprintf("%.2f%%", 100*float64(n)/float64(of))
}

func quote(s string) string {
	if s == "" {
		return ""
	}
	return fmt.Sprintf("  (first: %s)", s)
}

// count formats a rate with thousands separators and no decimals.
func count(f float64) string {
	s := fmt.Sprintf("%.0f", f)
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 && s[i-1] != '-' {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	return b.String()
}
