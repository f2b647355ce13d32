#!/usr/bin/env bash
# Runs the same `colony bench` scenarios against Colony and against Mosquitto,
# side by side in one run, and prints a markdown table with ratios.
#
# Every broker is started by this script, on free loopback ports, and fresh
# for each scenario (so each scenario's memory figures are its own):
#   colony            colony serve with no config file (its defaults)
#   mosquitto default listener + allow_anonymous true + persistence false
#   mosquitto mq0     the same + max_queued_messages 0 (no per-client queue limit)
# A system Mosquitto on 1883 is never touched. Everything started is stopped
# on exit.
#
# Scenarios (BASELINES.md), message counts multiplied by SCALE:
#   fan-in QoS 0 and QoS 1: 4 publishers x 25,000 msgs of 64 B, flood -> 1 subscriber on a wildcard
#   fan-out: 1 publisher x 20,000 msgs, QoS 0 -> 10 subscribers
#   latency: 4 publishers x 1,000 msg/s for 5 s, QoS 1 -> 1 subscriber
#   idle: 10,000 connections, keepalive 300 s
#
# Usage: scripts/bench-vs-mosquitto.sh                # full scale, one round, ~70 s
#        ROUNDS=3 scripts/bench-vs-mosquitto.sh       # medians of three alternating rounds
#        SCALE=0.05 scripts/bench-vs-mosquitto.sh     # a quick check
#        SCENARIOS=idle scripts/bench-vs-mosquitto.sh # some scenarios only
# Environment: SCALE (default 1), ROUNDS (default 1: each scenario runs ROUNDS
# times against the three brokers in turn, and the table shows medians),
# SCENARIOS (default all: fanin-q0 fanin-q1 fanout latency idle),
# MOSQUITTO (default /usr/sbin/mosquitto), KEEP=1 keeps the temporary
# directory (logs, JSON results) and prints its name.
set -euo pipefail
cd "$(dirname "$0")/.."

SCALE=${SCALE:-1}
ROUNDS=${ROUNDS:-1}
MOSQUITTO=${MOSQUITTO:-/usr/sbin/mosquitto}
BROKERS=(colony mosq-default mosq-mq0)

say() { printf '%s\n' "$*" >&2; }
have() { command -v "$1" >/dev/null 2>&1; }

if [ ! -x "$MOSQUITTO" ]; then
  say "installing mosquitto (only its binary is used; the system service is left alone)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto >/dev/null
fi
have python3 || { say "python3 is needed (free ports)"; exit 1; }

tmp=$(mktemp -d)
pid="" # the one broker running, if any: only it is ever killed
cleanup() {
  if [ -n "$pid" ]; then stop; fi
  if [ "${KEEP:-0}" = 1 ]; then say "kept $tmp"; else rm -rf "$tmp"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Idle needs one descriptor per connection, in the brokers and in colony bench.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt 10200 ]; then
  say "warning: open-file limit $(ulimit -n) is below what 10,000 idle connections need"
fi

say "building colony"
# What is measured is what is built now: note its commit and whether the
# working tree differed from it.
colony_rev="$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)"
if [ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]; then
  colony_rev="$colony_rev with uncommitted changes to $(git status --porcelain --untracked-files=no | awk '{ print $2 }' | paste -sd, -)"
fi
# Built as scripts/build.sh builds releases (static, stripped): the binary's
# own pages are most of a fresh server's RSS, so a debug build would skew it.
CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$tmp/colony" ./cmd/colony
colony=$tmp/colony

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

wait_port() { # port pid
  local i
  for i in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    kill -0 "$2" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}

# start BROKER NAME: starts a fresh instance of BROKER, logging to NAME.log;
# sets $port and $pid.
n=0
start() {
  n=$((n + 1))
  port=$(free_port)
  case $1 in
    colony)
      "$colony" serve --mqtt "127.0.0.1:$port" --ws off --http "127.0.0.1:$(free_port)" \
        --data "$tmp/data-$n" >"$tmp/$2.log" 2>&1 &
      ;;
    mosq-default | mosq-mq0)
      {
        echo "listener $port 127.0.0.1"
        echo "allow_anonymous true"
        echo "persistence false"
        if [ "$1" = mosq-mq0 ]; then echo "max_queued_messages 0"; fi
      } >"$tmp/$2.conf"
      "$MOSQUITTO" -c "$tmp/$2.conf" >"$tmp/$2.log" 2>&1 &
      ;;
  esac
  pid=$!
  if ! wait_port "$port" "$pid"; then
    say "$1 did not start; its log:"
    cat "$tmp/$2.log" >&2
    exit 1
  fi
}

stop() { # stops the running broker
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  pid=""
}

scaled() { awk -v n="$1" -v s="$SCALE" 'BEGIN { v = int(n * s); if (v < 1) v = 1; print v }'; }

# Scenario name and its colony bench flags.
# shellcheck disable=SC2206 # a list of words on purpose
names=(${SCENARIOS:-fanin-q0 fanin-q1 fanout latency idle})
picked() { [[ " ${names[*]} " == *" $1 "* ]]; }
declare -A flags=(
  [fanin-q0]="--scenario fan-in --pubs 4 --subs 1 --count $(scaled 25000) --size 64 --qos 0"
  [fanin-q1]="--scenario fan-in --pubs 4 --subs 1 --count $(scaled 25000) --size 64 --qos 1"
  [fanout]="--scenario fan-out --pubs 1 --subs 10 --count $(scaled 20000) --size 64 --qos 0"
  [latency]="--scenario fan-in --pubs 4 --subs 1 --rate 1000 --count $(scaled 5000) --size 64 --qos 1"
  [idle]="--scenario idle --clients $(scaled 10000) --keepalive 300s"
)

mkdir -p "$tmp/results"
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
for s in "${names[@]}"; do
  for r in $(seq 1 "$ROUNDS"); do
    for b in "${BROKERS[@]}"; do
      say "== $s against $b (round $r of $ROUNDS)"
      start "$b" "$s-$b-$r"
      sleep 1 # let the fresh server settle before its memory is read
      out=$tmp/results/$s-$b-$r
      # shellcheck disable=SC2086 # flags are words on purpose
      if ! "$colony" bench --url "tcp://127.0.0.1:$port" --pid "$pid" --json ${flags[$s]} >"$out.json" 2>"$out.err"; then
        say "colony bench failed: $(tail -1 "$out.err")"
        echo '{}' >"$out.json"
      fi
      stop
    done
  done
done

# jget FILE PATH: a value from a JSON file by a dotted path (.a.b), with jq
# when it is installed, else python3; empty when absent.
jget() {
  if have jq; then
    jq -r "$2 // empty" "$1"
  else
    python3 - "$1" "$2" <<'EOF'
import json, sys
v = json.load(open(sys.argv[1]))
for k in sys.argv[2].strip(".").split("."):
    v = v.get(k) if isinstance(v, dict) else None
print("" if v is None else v)
EOF
  fi
}

# median, worst and least: the median, the largest and the smallest of the
# numbers on stdin, one a line; x when there are none.
median() {
  sort -g | awk '{ a[NR] = $1 } END { if (NR == 0) print "x"; else if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}
worst() { sort -g | awk '{ v = $1 } END { print NR ? v : "x" }'; }
least() { sort -g | awk 'NR == 1 { v = $1 } END { print NR ? v : "x" }'; }

# row SCENARIO LABEL PATH DIVISOR DECIMALS BETTER [AGG]: one table row, the
# median over the rounds (AGG=worst or least: the largest or the smallest,
# for losses and open connections); BETTER is high
# or low and picks the best Mosquitto for the ratio.
row() {
  local s=$1 label=$2 path=$3 div=$4 dec=$5 better=$6 agg=${7:-median} vals=() b r
  for b in "${BROKERS[@]}"; do
    vals+=("$(for r in $(seq 1 "$ROUNDS"); do jget "$tmp/results/$s-$b-$r.json" "$path"; done | grep . | "$agg")")
  done
  awk -v s="$s" -v label="$label" -v div="$div" -v dec="$dec" -v better="$better" \
    -v c="${vals[0]}" -v m1="${vals[1]}" -v m2="${vals[2]}" 'function f(x) {
      return x == "x" ? "failed" : sprintf("%." dec "f", x / div)
    }
    BEGIN {
      best = "x"
      if (m1 != "x") best = m1
      if (m2 != "x" && (best == "x" || (better == "high" ? m2 + 0 > best + 0 : m2 + 0 < best + 0))) best = m2
      ratio = (c == "x" || best == "x" || best + 0 == 0) ? "–" : sprintf("%.2f", c / best)
      printf "| %s | %s | %s | %s | %s | %s |\n", s, label, f(c), f(m1), f(m2), ratio
    }'
}

lost_pct() { # scenario: adds lost_pct to each of its results, for the table
  local f
  for f in "$tmp/results/$1"-*.json; do
    if have jq; then
      jq 'if .expected then .lost_pct = (100 * .lost / .expected) else . end' "$f" >"$f.tmp"
    else
      python3 -c 'import json,sys; d=json.load(open(sys.argv[1]))
if d.get("expected"): d["lost_pct"] = 100 * d["lost"] / d["expected"]
print(json.dumps(d))' "$f" >"$f.tmp"
    fi
    mv "$f.tmp" "$f"
  done
}

for s in fanin-q0 fanin-q1 fanout latency; do if picked "$s"; then lost_pct "$s"; fi; done

echo "colony bench, SCALE=$SCALE, ROUNDS=$ROUNDS (medians; losses: the worst round), $(date -u +%Y-%m-%dT%H:%MZ)"
echo "load average (1/5/15 min): $load_before before, $(cut -d' ' -f1-3 /proc/loadavg) after; other work on the machine skews the figures"
echo "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(awk '/MemTotal/ { printf "%.1f GB RAM", $2 / 1048576 }' /proc/meminfo)"
echo "colony $colony_rev (built with $(go version | cut -d' ' -f3)); $("$MOSQUITTO" -h 2>&1 | head -1)"
echo
echo "| scenario | metric | colony | mosquitto default | mosquitto mq0 | colony/best-mosquitto |"
echo "|---|---|---|---|---|---|"
c=$(scaled 25000)
for q in 0 1; do
  s=fanin-q$q
  picked "$s" || continue
  row "$s" "lost % (of $((4 * c)), worst round)" .lost_pct 1 2 low worst
  row "$s" "deliveries/s" .msgs_per_sec 1 0 high
  row "$s" "peak server RSS, MB" .server_rss.peak_kb 1024 1 low
  row "$s" "peak server RssAnon, MB" .server_rss.peak_anon_kb 1024 1 low
done
if picked fanout; then
  row fanout "deliveries/s" .msgs_per_sec 1 0 high
  row fanout "lost % (worst round)" .lost_pct 1 2 low worst
fi
if picked latency; then
  row latency "p50, ms" .latency.p50_ns 1000000 3 low
  row latency "p99, ms" .latency.p99_ns 1000000 3 low
  row latency "lost % (worst round)" .lost_pct 1 2 low worst
fi
if picked idle; then
  row idle "connections open (worst round)" .connected 1 0 high least
  row idle "fresh server RSS, MB" .server_rss.before_kb 1024 1 low
  row idle "fresh server RssAnon, MB" .server_rss.before_anon_kb 1024 1 low
  row idle "RSS per connection, KB" .server_rss.per_conn_bytes 1024 2 low
fi
