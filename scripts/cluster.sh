#!/usr/bin/env bash
# Runs a three-node Colony cluster on this machine, linked through the
# RabbitMQ on 127.0.0.1:5672, with the configs in examples/cluster/:
#
#   node  MQTT            WebSocket       /healthz, /metrics  data
#   n1    127.0.0.1:1884  127.0.0.1:8084  127.0.0.1:8091      data/n1
#   n2    127.0.0.1:1885  127.0.0.1:8085  127.0.0.1:8092      data/n2
#   n3    127.0.0.1:1886  127.0.0.1:8086  127.0.0.1:8093      data/n3
#
# Usage: scripts/cluster.sh [start]   build colony, start the nodes that are not running,
#                                     wait until every node is healthy and federated
#        scripts/cluster.sh stop      SIGTERM every node and wait until it has exited
#        scripts/cluster.sh status    one line per node
#        scripts/cluster.sh demo      publish on n3, receive on n1; call each module from n1
#
# Everything runs from the repository root. The binary, the logs (n1.log …)
# and the pid files go to run/cluster/; the nodes' data to data/n1 … (the
# configs' node.data_dir). status exits 1 unless every node runs.
#
# Environment: COLONY_BIN, a colony binary to use instead of building
# ./cmd/colony; COLONY_AMQP, a RabbitMQ URL for all three nodes instead of
# the configs' cluster.amqp_url; WAIT, seconds start waits for the nodes
# (default 30); STOP_WAIT, seconds stop waits (default 30; colony's own
# --grace is 15 s). The other COLONY_* variables are ignored: they would set
# the same port, id or data dir on all three nodes.
set -euo pipefail
# COLONY_BIN as given: relative to the caller's directory, or a name on PATH.
case ${COLONY_BIN:-} in
"") ;;
/*) ;;
*/*) COLONY_BIN=$PWD/$COLONY_BIN ;;
*) COLONY_BIN=$(command -v "$COLONY_BIN" || printf '%s' "$COLONY_BIN") ;;
esac
cd "$(dirname "$0")/.."

NODES=(1 2 3)
CONFIG_DIR=examples/cluster
RUN_DIR=run/cluster
WAIT=${WAIT:-30}
STOP_WAIT=${STOP_WAIT:-30}
unset COLONY_CONFIG COLONY_MQTT COLONY_TLS COLONY_WS COLONY_HTTP COLONY_DATA COLONY_NODE

say() { printf '%s\n' "$*"; }
die() { printf 'cluster.sh: %s\n' "$*" >&2; exit 1; }
have() { command -v "$1" >/dev/null 2>&1; }

# conf N KEY: the quoted string value of KEY in node N's config (the keys
# read here, mqtt, ws, http and amqp_url, each occur once per file).
conf() {
  sed -n "s/^[[:space:]]*$2[[:space:]]*=[[:space:]]*\"\([^\"]*\)\".*/\1/p" "$CONFIG_DIR/node$1.toml" | head -n 1
}
AMQP_URL=${COLONY_AMQP:-$(conf 1 amqp_url)}
pidfile() { printf '%s/n%s.pid' "$RUN_DIR" "$1"; }
logfile() { printf '%s/n%s.log' "$RUN_DIR" "$1"; }

# port_open HOST PORT: something accepts TCP connections there.
port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

# http_get HOST:PORT PATH: the response (headers and body) on stdout; fails
# when nothing listens. Plain bash, so curl is not needed.
http_get() (
  exec 3<>"/dev/tcp/${1%:*}/${1##*:}" || exit 1
  printf 'GET %s HTTP/1.0\r\nHost: %s\r\n\r\n' "$2" "$1" >&3
  while IFS= read -r -t 2 line <&3 || [ -n "${line:-}" ]; do
    printf '%s\n' "${line%$'\r'}"
    line=
  done
) 2>/dev/null

# metric HOST:PORT NAME: the value of one unlabelled metric, empty if absent.
metric() { http_get "$1" /metrics | sed -n "s/^$2 //p" | head -n 1; }

# node_pid N: the pid of node N if it runs (per its pid file), else fails.
# The command line must name the node's config, so a recycled pid is never
# taken for a node.
node_pid() {
  local f pid
  f=$(pidfile "$1")
  [ -f "$f" ] || return 1
  pid=$(<"$f")
  if [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null &&
    ps -o args= -p "$pid" 2>/dev/null | grep -q -- "$CONFIG_DIR/node$1.toml"; then
    printf '%s' "$pid"
    return 0
  fi
  rm -f "$f" # stale
  return 1
}

check_rabbitmq() {
  local hostport host port
  hostport=${AMQP_URL#*://}
  hostport=${hostport%%/*}
  hostport=${hostport##*@}
  host=${hostport%:*}
  port=${hostport##*:}
  if [ "$host" = "$hostport" ]; then
    port=5672
    [[ $AMQP_URL == amqps://* ]] && port=5671
  fi
  port_open "$host" "$port" || die "RabbitMQ is not reachable on $host:$port ($AMQP_URL).
Start it (e.g. 'sudo rabbitmq-server -detached', or 'sudo systemctl start rabbitmq-server'),
or point COLONY_AMQP at a running one."
}

build() {
  if [ -n "${COLONY_BIN:-}" ]; then
    [ -x "$COLONY_BIN" ] || die "COLONY_BIN=$COLONY_BIN is not an executable file"
    BIN=$COLONY_BIN
    return
  fi
  have go || die "go is not installed (Go 1.26 or newer builds ./cmd/colony); or set COLONY_BIN to a colony binary"
  BIN=$RUN_DIR/colony
  say "building ./cmd/colony into $BIN"
  go build -o "$BIN" ./cmd/colony
}

# ready N: node N answers /healthz and is connected to RabbitMQ for both
# module RPC and message federation.
ready() {
  local http
  http=$(conf "$1" http)
  http_get "$http" /healthz | grep -q '"status":"ok"' &&
    [ "$(metric "$http" colony_federation_connected)" = 1 ] &&
    [ "$(metric "$http" colony_cluster_connected)" = 1 ]
}

start() {
  local i pid todo=() started=() waiting still deadline
  for i in "${NODES[@]}"; do
    if pid=$(node_pid "$i"); then
      say "n$i already runs (pid $pid)"
    else
      todo+=("$i")
    fi
  done
  if [ "${#todo[@]}" -gt 0 ]; then
    mkdir -p "$RUN_DIR"
    check_rabbitmq
    build
    for i in "${todo[@]}"; do
      # The previous run's log stays as nN.log.1.
      if [ -f "$(logfile "$i")" ]; then mv -f "$(logfile "$i")" "$(logfile "$i").1"; fi
      # nohup: the nodes outlive the terminal that started them.
      nohup "$BIN" serve --config "$CONFIG_DIR/node$i.toml" </dev/null >"$(logfile "$i")" 2>&1 &
      printf '%s\n' "$!" >"$(pidfile "$i")"
      started+=("$i")
    done
  fi

  deadline=$((SECONDS + WAIT))
  waiting=("${NODES[@]}")
  while [ "${#waiting[@]}" -gt 0 ]; do
    still=()
    for i in "${waiting[@]}"; do
      if ! node_pid "$i" >/dev/null; then
        say "n$i exited; the end of $(logfile "$i"):" >&2
        tail -n 10 "$(logfile "$i")" >&2 || true
        fail "${started[@]}"
      fi
      ready "$i" || still+=("$i")
    done
    waiting=("${still[@]}")
    [ "${#waiting[@]}" -eq 0 ] && break
    if [ "$SECONDS" -ge "$deadline" ]; then
      say "not ready after ${WAIT}s: ${waiting[*]/#/n} (want /healthz status ok, and colony_cluster_connected 1 and colony_federation_connected 1 in /metrics)" >&2
      for i in "${waiting[@]}"; do
        say "== the end of $(logfile "$i")" >&2
        tail -n 10 "$(logfile "$i")" >&2 || true
      done
      fail "${started[@]}"
    fi
    sleep 0.2
  done

  say "cluster is up ($AMQP_URL):"
  for i in "${NODES[@]}"; do
    say "  n$i  mqtt://$(conf "$i" mqtt)  ws://$(conf "$i" ws)/mqtt  http://$(conf "$i" http)/metrics  log $(logfile "$i")"
  done
  say "try: scripts/cluster.sh demo; stop with: scripts/cluster.sh stop"
}

# fail N…: stop the nodes this run started, then exit 1.
fail() {
  if [ "$#" -gt 0 ]; then stop_nodes "$@" >&2 || true; fi
  die "start failed"
}

stop_nodes() {
  local i pid pids=() names=() deadline left
  for i in "$@"; do
    if pid=$(node_pid "$i"); then
      kill -TERM "$pid" 2>/dev/null || true
      pids+=("$pid")
      names+=("$i")
    fi
  done
  if [ "${#pids[@]}" -eq 0 ]; then
    say "no node is running"
    return 0
  fi
  say "stopping ${names[*]/#/n} (SIGTERM)"
  deadline=$((SECONDS + STOP_WAIT))
  while :; do
    left=()
    for i in "${names[@]}"; do
      node_pid "$i" >/dev/null && left+=("$i")
    done
    [ "${#left[@]}" -eq 0 ] && break
    if [ "$SECONDS" -ge "$deadline" ]; then
      die "still running after ${STOP_WAIT}s: ${left[*]/#/n} (see $RUN_DIR/n*.log; kill -KILL \$(cat $RUN_DIR/nN.pid) as a last resort)"
    fi
    sleep 0.2
  done
  for i in "${names[@]}"; do rm -f "$(pidfile "$i")"; done
  say "stopped"
}

# status: one line per node; the last four columns are its /metrics gauges
# colony_cluster_connected (module RPC over RabbitMQ),
# colony_federation_connected (messages over RabbitMQ), colony_cluster_nodes
# (the other nodes it sees) and colony_mqtt_clients_connected.
status() {
  local i pid http health down=0 fmt='%-4s  %-7s  %-9s  %-14s  %-14s  %-3s  %-3s  %-5s  %s\n'
  # shellcheck disable=SC2059 # fmt is the table's format
  printf "$fmt" NODE PID HEALTH MQTT HTTP RPC FED PEERS CLIENTS
  for i in "${NODES[@]}"; do
    http=$(conf "$i" http)
    if ! pid=$(node_pid "$i"); then
      # shellcheck disable=SC2059
      printf "$fmt" "n$i" - stopped "$(conf "$i" mqtt)" "$http" - - - -
      down=1
      continue
    fi
    health=$(http_get "$http" /healthz | sed -n 's/.*"status":"\([a-z]*\)".*/\1/p')
    # shellcheck disable=SC2059
    printf "$fmt" "n$i" "$pid" "${health:-no answer}" "$(conf "$i" mqtt)" "$http" \
      "$(metric "$http" colony_cluster_connected)" "$(metric "$http" colony_federation_connected)" \
      "$(metric "$http" colony_cluster_nodes)" "$(metric "$http" colony_mqtt_clients_connected)"
  done
  return "$down"
}

demo() {
  local i mqtt1 mqtt3 msg t sub out
  for t in mosquitto_sub mosquitto_pub mosquitto_rr; do
    have "$t" || die "$t is missing (Debian: apt-get install mosquitto-clients)"
  done
  for i in "${NODES[@]}"; do
    if ! { node_pid "$i" >/dev/null && ready "$i"; }; then
      die "n$i is not running and federated; run scripts/cluster.sh start"
    fi
  done
  mqtt1=$(conf 1 mqtt)
  mqtt3=$(conf 3 mqtt)
  msg="hello from n3 at $(date +%T)"
  DEMO_OUT=$(mktemp)
  trap 'rm -f "$DEMO_OUT"' EXIT
  out=$DEMO_OUT

  say "mosquitto_sub on n1 ($mqtt1), topic demo/cluster"
  mosquitto_sub -h "${mqtt1%:*}" -p "${mqtt1##*:}" -t demo/cluster -C 1 -W 10 -d >"$out" 2>&1 &
  sub=$!
  # Publish only once n1 has acknowledged the subscription: from then on it
  # also receives what the other nodes publish.
  for _ in $(seq 50); do
    grep -q 'received SUBACK' "$out" && break
    sleep 0.1
  done
  say "mosquitto_pub on n3 ($mqtt3): $msg"
  mosquitto_pub -h "${mqtt3%:*}" -p "${mqtt3##*:}" -t demo/cluster -m "$msg" -q 1
  wait "$sub" || true
  if grep -qxF -- "$msg" "$out"; then
    say "n1 received: $msg"
  else
    cat "$out" >&2
    die "the message published on n3 did not reach the subscriber on n1"
  fi

  say ""
  say "module calls from a client of n1 (each node serves one module; see modules.enabled):"
  for t in im device game; do
    say "  \$rpc/$t/info -> $(mosquitto_rr -h "${mqtt1%:*}" -p "${mqtt1##*:}" -t "\$rpc/$t/info" -e "replies/demo" -m '{}' -W 10)"
  done
}

case ${1:-start} in
start) start ;;
stop) stop_nodes "${NODES[@]}" ;;
status) status ;;
demo) demo ;;
-h | --help | help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0" ;;
*) die "unknown command '$1' (want start, stop, status or demo)" ;;
esac
