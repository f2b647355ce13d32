package app

import (
	"encoding/json"
	"errors"
	"net/http"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/colonymq/colony/server"
	"github.com/colonymq/colony/server/mqttsn"
)

// startOps binds the HTTP listener: /healthz, /metrics, /connect.json and
// the modules' pages (Web).
func startOps(a *App, addr string) (*opsServer, error) {
	ln, err := server.Listen("http", addr)
	if err != nil {
		return nil, err
	}
	set := newMetrics(a)
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		status, code := "ok", http.StatusOK
		select {
		case <-a.stopping:
			status, code = "stopping", http.StatusServiceUnavailable
		default:
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(code)
		ids := make([]string, len(a.running))
		for i, m := range a.running {
			ids[i] = m.ID()
		}
		if err := json.NewEncoder(w).Encode(map[string]any{
			"status": status, "node": a.cfg.Node.ID, "version": Version,
			"uptime_seconds": int64(time.Since(a.startAt).Seconds()), "modules": ids,
		}); err != nil {
			a.log.Debug().Err(err).Msg("write healthz")
		}
	})
	mux.HandleFunc("GET /metrics", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4")
		set.WritePrometheus(w)
		a.modStats.WritePrometheus(w)
		metrics.WriteProcessMetrics(w)
	})
	if err := a.mountWeb(mux); err != nil {
		_ = ln.Close()
		return nil, err
	}
	o := &opsServer{ln: ln, srv: &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}}
	go func() {
		if err := o.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			a.log.Error().Err(err).Msg("ops http server stopped")
		}
	}()
	a.log.Info().Str("listener", "http").Str("addr", ln.Addr().String()).Msg("listening")
	return o, nil
}

// newMetrics exposes the node's counters. Values are read at scrape time from
// the counters the components keep anyway, so metrics cost nothing per message.
func newMetrics(a *App) *metrics.Set {
	s := metrics.NewSet()
	gauge := func(name string, f func() float64) { s.NewGauge(name, f) }
	srv := func() server.Stats { return a.srv.Stats() }
	gauge("colony_mqtt_clients_connected", func() float64 { return float64(srv().Info.ClientsConnected) })
	gauge("colony_mqtt_sessions", func() float64 { return float64(srv().Info.ClientsTotal) })
	gauge("colony_mqtt_subscriptions", func() float64 { return float64(srv().Info.Subscriptions) })
	gauge("colony_mqtt_retained_messages", func() float64 { return float64(srv().Info.Retained) })
	gauge("colony_mqtt_inflight_messages", func() float64 { return float64(srv().Info.Inflight) })
	gauge("colony_mqtt_messages_received_total", func() float64 { return float64(srv().Info.MessagesReceived) })
	gauge("colony_mqtt_messages_sent_total", func() float64 { return float64(srv().Info.MessagesSent) })
	gauge(`colony_mqtt_messages_dropped_total{reason="client_queue_full"}`, func() float64 { return float64(srv().Info.MessagesDropped) })
	gauge(`colony_mqtt_messages_dropped_total{reason="inflight_limit"}`, func() float64 { return float64(srv().Info.InflightDropped) })
	gauge(`colony_mqtt_messages_dropped_total{reason="too_large_for_client"}`, func() float64 { return float64(srv().Info.TooLargeDropped) })
	gauge("colony_mqtt_bytes_received_total", func() float64 { return float64(srv().Info.BytesReceived) })
	gauge("colony_mqtt_bytes_sent_total", func() float64 { return float64(srv().Info.BytesSent) })
	gauge("colony_mqtt_connection_panics_total", func() float64 { return float64(srv().Panics) })
	gauge("colony_mqtt_acl_denied_total", func() float64 { return float64(srv().ACLDenied) })
	lim := func() server.LimitStats { return srv().Limits }
	for _, m := range []struct {
		reason string
		f      func(server.LimitStats) int64
	}{
		{"connect_timeout", func(l server.LimitStats) int64 { return l.ConnectTimeouts }},
		{"max_connections", func(l server.LimitStats) int64 { return l.ConnectionsRefused }},
		{"connect_refused", func(l server.LimitStats) int64 { return l.ConnectsRefused }},
		{"packet_too_large", func(l server.LimitStats) int64 { return l.PacketsTooLarge }},
		{"malformed", func(l server.LimitStats) int64 { return l.MalformedPackets }},
		{"receive_maximum", func(l server.LimitStats) int64 { return l.ReceiveMaximum }},
		{"topic_levels", func(l server.LimitStats) int64 { return l.TopicLevels }},
		{"max_subscriptions", func(l server.LimitStats) int64 { return l.SubscriptionQuota }},
	} {
		gauge(`colony_mqtt_limit_refusals_total{reason="`+m.reason+`"}`, func() float64 { return float64(m.f(lim())) })
	}
	gauge("colony_mqtt_publishes_throttled_total", func() float64 { return float64(lim().PublishesThrottled) })
	gauge("colony_users_bound", func() float64 { return float64(srv().UsersBound) })
	gauge("colony_mqtt_pushes_refused_total", func() float64 { return float64(srv().PushesRefused) })
	gauge("colony_gateway_requests_total", func() float64 { return float64(srv().RPCRequests) })
	gauge("colony_gateway_request_errors_total", func() float64 { return float64(srv().RPCErrors) })
	gauge("colony_gateway_requests_inflight", func() float64 { return float64(srv().RPCInFlight) })
	gauge("colony_gateway_replies_dropped_total", func() float64 { return float64(srv().RepliesDropped) })
	gauge(`colony_rpc_calls_total{transport="local"}`, func() float64 { return float64(a.local.Stats().Calls) })
	gauge(`colony_rpc_notifies_total{transport="local"}`, func() float64 { return float64(a.local.Stats().Notifies) })
	gauge(`colony_rpc_errors_total{transport="local"}`, func() float64 { return float64(a.local.Stats().Errors) })
	gauge(`colony_rpc_panics_total{transport="local"}`, func() float64 { return float64(a.local.Stats().Panics) })
	gauge(`colony_rpc_rejected_total{transport="local"}`, func() float64 { return float64(a.local.Stats().Rejected) })
	if a.cluster != nil {
		gauge("colony_cluster_connected", func() float64 {
			if a.cluster.Connected() {
				return 1
			}
			return 0
		})
		gauge("colony_cluster_nodes", func() float64 { return float64(len(a.cluster.Nodes())) })
		gauge(`colony_rpc_calls_total{transport="amqp"}`, func() float64 { return float64(a.cluster.Stats().Calls) })
		gauge(`colony_rpc_served_total{transport="amqp"}`, func() float64 { return float64(a.cluster.Stats().Served) })
		gauge(`colony_rpc_not_found_total{transport="amqp"}`, func() float64 { return float64(a.cluster.Stats().Returned) })
		gauge("colony_cluster_reconnects_total", func() float64 { return float64(a.cluster.Stats().Reconnects) })
	}
	if f := a.fed; f != nil {
		gauge("colony_federation_connected", func() float64 {
			if f.Connected() {
				return 1
			}
			return 0
		})
		gauge("colony_federation_messages_out_total", func() float64 { return float64(f.Stats().Out) })
		gauge("colony_federation_batches_total", func() float64 { return float64(f.Stats().Batches) })
		gauge("colony_federation_messages_in_total", func() float64 { return float64(f.Stats().In) })
		gauge("colony_federation_retained_synced_total", func() float64 { return float64(f.Stats().Synced) })
		gauge(`colony_federation_messages_lost_total{reason="not_sent"}`, func() float64 { return float64(f.Stats().Unsent) })
		gauge(`colony_federation_messages_lost_total{reason="nack"}`, func() float64 { return float64(f.Stats().Nacked) })
		gauge("colony_federation_messages_unconfirmed_total", func() float64 { return float64(f.Stats().Unconfirmed) })
		gauge(`colony_federation_messages_lost_total{reason="refused_locally"}`, func() float64 { return float64(f.Stats().Failed) })
		gauge("colony_federation_bindings", func() float64 { return float64(f.Stats().Bindings) })
		gauge("colony_federation_reconnects_total", func() float64 { return float64(f.Stats().Reconnects) })
		gauge("colony_federation_sessions_taken_over_total", func() float64 { return float64(f.Stats().Takeovers) })
		gauge("colony_federation_sessions_lost_total", func() float64 { return float64(f.Stats().LateSessions) })
	}
	if g := a.sn; g != nil {
		sn := func() mqttsn.Stats { return g.Stats() }
		gauge("colony_mqttsn_sessions", func() float64 { return float64(sn().Sessions) })
		gauge("colony_mqttsn_sessions_asleep", func() float64 { return float64(sn().Asleep) })
		gauge("colony_mqttsn_datagrams_received_total", func() float64 { return float64(sn().DatagramsIn) })
		gauge("colony_mqttsn_datagrams_sent_total", func() float64 { return float64(sn().DatagramsOut) })
		gauge("colony_mqttsn_malformed_total", func() float64 { return float64(sn().Malformed) })
		gauge(`colony_mqttsn_dropped_total{reason="no_session"}`, func() float64 { return float64(sn().DroppedNoSession) })
		gauge(`colony_mqttsn_dropped_total{reason="congestion"}`, func() float64 { return float64(sn().DroppedCongestion) })
		gauge(`colony_mqttsn_dropped_total{reason="queue_full"}`, func() float64 { return float64(sn().DroppedQueueFull) })
		gauge("colony_mqttsn_rejected_total", func() float64 { return float64(sn().Rejected) })
		gauge("colony_mqttsn_lost_total", func() float64 { return float64(sn().Lost) })
		gauge("colony_mqttsn_retransmissions_total", func() float64 { return float64(sn().Retransmissions) })
		gauge("colony_mqttsn_wills_published_total", func() float64 { return float64(sn().WillsPublished) })
		gauge("colony_mqttsn_dtls_handshake_failures_total", func() float64 { return float64(sn().HandshakeFailures) })
	}
	gauge("colony_store_commits_total", func() float64 { return float64(a.db.Stats().Commits) })
	gauge("colony_store_ops_total", func() float64 { return float64(a.db.Stats().Ops) })
	gauge("colony_store_pending_ops", func() float64 { return float64(a.db.Stats().Pending) })
	gauge("colony_store_last_commit_seconds", func() float64 { return a.db.Stats().LastCommit.Seconds() })
	gauge("colony_store_max_commit_seconds", func() float64 { return a.db.Stats().MaxCommit.Seconds() })
	return s
}
