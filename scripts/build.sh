#!/usr/bin/env bash
# Cross-compiles static colony binaries (CGO_ENABLED=0) with version info
# stamped in, into dist/: linux/amd64, linux/arm64 (Raspberry Pi 3/4/5, 64-bit
# OS) and linux/arm v7 (32-bit Raspberry Pi OS). Arguments pick targets:
#   scripts/build.sh                   # all three
#   scripts/build.sh linux/arm64       # one
set -euo pipefail
cd "$(dirname "$0")/.."
version=${VERSION:-$(git describe --tags --always --dirty 2>/dev/null || echo dev)}
commit=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
ldflags="-s -w -X github.com/colonymq/colony/app.Version=${version} -X github.com/colonymq/colony/app.Commit=${commit}"
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(linux/amd64 linux/arm64 linux/arm/7)
mkdir -p dist
for target in "${targets[@]}"; do
  IFS=/ read -r goos goarch goarm <<<"$target"
  out="dist/colony-${goos}-${goarch}${goarm:+v$goarm}"
  CGO_ENABLED=0 GOOS=$goos GOARCH=$goarch GOARM=${goarm:-} go build -trimpath -ldflags "$ldflags" -o "$out" ./cmd/colony
  printf '%-32s %6s KiB\n' "$out" "$(( $(stat -c %s "$out") / 1024 ))"
done
