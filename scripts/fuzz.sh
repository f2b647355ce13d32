#!/usr/bin/env bash
# Runs every fuzz target for a short fixed budget each (FUZZTIME, default
# 8s). Plain `go test` already replays each target's seeds and its corpus in
# testdata/fuzz; this explores beyond them. A crasher is written to
# testdata/fuzz/<Target>/ of its package: commit it with the fix, and
# `go test` replays it from then on.
#
#   scripts/fuzz.sh                 # all targets
#   FUZZTIME=2m scripts/fuzz.sh FuzzPacketDecode
set -euo pipefail
cd "$(dirname "$0")/.."
fuzztime=${FUZZTIME:-8s}
targets=(
  "./test/hostile FuzzPacketDecode"     # the MQTT engine's packet decoders (third_party/mochi)
  "./app FuzzDecodeConfig"              # colony.toml
  "./server FuzzParseACL"               # acl_file and %c/%u substitution
  "./server FuzzRequestTopic"           # $rpc/<module>/<handler>[/<msgid>] and mqant topics
  "./rpc FuzzHandlerArgument"           # request bodies into typed handlers
  "./rpc FuzzErrorJSON"                 # {"code","message"} error replies
  "./rpc/amqp FuzzReplyHeaders"         # RPC reply/call headers: error code, TTL, content type
  "./cluster FuzzDecodeBatch"           # federated message batches
  "./cluster FuzzDecodeDelivery"        # federated single messages (AMQP headers)
  "./store FuzzDecodeRecord"            # bbolt records of sessions, subscriptions, messages
  "./modules/im FuzzRequests"           # im handler payloads
  "./server/mqttsn/packet FuzzDecode"   # MQTT-SN v1.2 datagrams (the gateway's codec)
)
start=$SECONDS
for t in "${targets[@]}"; do
  read -r pkg name <<<"${t%%#*}"
  if [ $# -gt 0 ] && [[ ! " $* " =~ " $name " ]]; then continue; fi
  echo "== $name ($pkg, $fuzztime)"
  if ! out=$(go test -run '^$' -fuzz "^${name}\$" -fuzztime "$fuzztime" "$pkg" 2>&1); then
    echo "$out" | grep -v '^fuzz: elapsed'
    echo "FAIL: $name (a crasher, if any, is in $pkg/testdata/fuzz/$name/)"
    exit 1
  fi
  echo "$out" | tail -n 3
done
echo "fuzzing took $((SECONDS - start))s"
