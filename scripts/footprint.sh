#!/usr/bin/env bash
# Footprint report (BENCHMARKS.md, "Footprint"): binary size per target,
# cold start to the first accepted MQTT connection, idle RSS, and the store
# file under persistent-session churn with what `colony store compact` gives
# back. Start time and RSS are of the native (amd64) binary; under qemu they
# would measure the emulator.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${RUNS:-5}

echo "== binary size (scripts/build.sh: static, -trimpath -s -w)"
scripts/build.sh
bin=dist/colony-linux-amd64

tmp=$(mktemp -d)
pid=""
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$tmp"' EXIT

# connack ADDR: sends an MQTT 3.1.1 CONNECT and succeeds on a CONNACK 0.
connack() {
  local host=${1%:*} port=${1##*:} reply
  exec 3<>"/dev/tcp/$host/$port" 2>/dev/null || return 1
  printf '\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c\x00\x00' >&3
  reply=$(head -c 4 <&3 | od -An -tx1 | tr -d ' \n')
  exec 3<&- 3>&-
  [ "$reply" = 20020000 ]
}

echo "== cold start to first accepted connection ($runs runs, fresh data dir each)"
starts=()
for i in $(seq 1 "$runs"); do
  rm -rf "$tmp/data" "$tmp/log"
  t0=$(date +%s%N)
  "$bin" serve --data "$tmp/data" --mqtt 127.0.0.1:0 --ws off --http off 2>"$tmp/log" &
  pid=$!
  addr=""
  until [ -n "$addr" ] && connack "$addr"; do
    [ -n "$addr" ] || addr=$(grep '"colony started"' "$tmp/log" | sed -n 's/.*"mqtt":"\([^"]*\)".*/\1/p' | head -n1 || true)
  done
  t1=$(date +%s%N)
  starts+=($(( (t1 - t0) / 1000000 )))
  if [ "$i" = "$runs" ]; then
    sleep 2
    echo "idle RSS, 2 s after start, no clients: $(awk '/VmRSS/ {print $2, $3}' /proc/$pid/status)"
  fi
  kill -TERM "$pid"; wait "$pid" || true; pid=""
done
sorted=($(printf '%s\n' "${starts[@]}" | sort -n))
echo "cold start (ms): ${starts[*]}; median ${sorted[$(( runs / 2 ))]}"

echo "== store file under persistent-session churn, then colony store compact"
go test -run '^$' -bench '^BenchmarkStoreChurn$' -benchtime 1x ./test/hostile | grep -E '^Benchmark'
