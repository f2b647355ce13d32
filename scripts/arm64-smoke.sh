#!/usr/bin/env bash
# Builds the linux/arm64 binary with scripts/build.sh and runs it under
# qemu-aarch64-static (Debian: apt-get install qemu-user-static): checks it
# is static with its version stamped, starts a node, and has an amd64 client
# (test/smoke) publish, subscribe and call $rpc/game/info against it.
# SMOKE_ARMV7=1 also builds linux/arm v7 and runs its `version` under
# qemu-arm-static (another minute of cross-compiling on a cold cache).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v qemu-aarch64-static >/dev/null || { echo "qemu-aarch64-static not found (apt-get install qemu-user-static)"; exit 1; }
targets=(linux/arm64)
checks=("qemu-aarch64-static dist/colony-linux-arm64 arm64")
if [ "${SMOKE_ARMV7:-}" = 1 ]; then
  targets+=(linux/arm/7)
  checks+=("qemu-arm-static dist/colony-linux-armv7 arm")
fi
scripts/build.sh "${targets[@]}"
bin=dist/colony-linux-arm64
commit=$(git rev-parse --short=12 HEAD)

echo "== static, stamped"
go version -m "$bin" | grep -q 'CGO_ENABLED=0' || { echo "$bin: not built with CGO_ENABLED=0"; exit 1; }
for pair in "${checks[@]}"; do
  read -r q b arch <<<"$pair"
  v=$($q "$b" version)
  echo "$v"
  [[ $v == *"commit $commit"* && $v == *"linux/$arch"* ]] || { echo "$b: version not stamped: $v"; exit 1; }
done

echo "== serve under qemu-aarch64-static"
run=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$run"' EXIT
qemu-aarch64-static "$bin" serve --data "$run/data" --node pi --mqtt 127.0.0.1:0 --ws off --http 127.0.0.1:0 2>"$run/log" &
pid=$!
addr=""
for _ in $(seq 1 600); do
  addr=$(grep '"colony started"' "$run/log" 2>/dev/null | sed -n 's/.*"mqtt":"\([^"]*\)".*/\1/p' | head -n1 || true)
  [ -n "$addr" ] && break
  kill -0 "$pid" 2>/dev/null || { cat "$run/log"; echo "colony exited"; exit 1; }
  sleep 0.1
done
[ -n "$addr" ] || { cat "$run/log"; echo "colony did not start"; exit 1; }
echo "arm64 node listening on $addr"

echo "== amd64 client against it"
COLONY_SMOKE_ADDR=$addr go test -count=1 -v -run '^TestSmoke$' ./test/smoke | grep -E '^(---|ok|FAIL|\s+smoke_test)'

kill -TERM "$pid"
wait "$pid" && echo "arm64 node stopped cleanly (SIGTERM)"
