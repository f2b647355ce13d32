#!/usr/bin/env bash
# Measures what the Go runtime alone adds to a message's latency on this
# machine, the floor under Colony's "latency" scenario: the same 64-byte
# echo served by a 20-line Go server (a goroutine per connection, the Go
# netpoller, as the MQTT engine uses) and by a 20-line C server (one thread,
# epoll, as Mosquitto uses), under the load of bench-vs-mosquitto.sh's
# latency scenario: 4 connections x 1,000 round trips/s. Each round trip is
# one wake-up of the server, as a QoS 1 message from publisher to subscriber
# is. Neither server does any MQTT work, so the gap between them is the
# runtime's, not Colony's code. BENCHMARKS.md ("QoS 1 latency") has results.
#
# Usage: scripts/latency-floor.sh              # 6 alternating rounds of 5 s
#        ROUNDS=10 COUNT=3000 scripts/latency-floor.sh
# Needs go and a C compiler (cc); builds in a temporary directory.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-6}
COUNT=${COUNT:-5000} # round trips per connection, at 1,000/s
say() { printf '%s\n' "$*" >&2; }
command -v cc >/dev/null || { say "a C compiler (cc) is needed"; exit 1; }
command -v python3 >/dev/null || { say "python3 is needed (free ports)"; exit 1; }

tmp=$(mktemp -d)
pid=""
cleanup() {
  if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; fi
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

cat >"$tmp/echo.c" <<'EOF'
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>
int main(int argc, char **argv) {
  int ls = socket(AF_INET, SOCK_STREAM, 0), one = 1;
  struct sockaddr_in a = {0};
  a.sin_family = AF_INET, a.sin_port = htons(atoi(argv[1])), a.sin_addr.s_addr = htonl(0x7f000001);
  if (bind(ls, (void *)&a, sizeof a) || listen(ls, 128)) return 1;
  int ep = epoll_create1(0);
  struct epoll_event e = {.events = EPOLLIN, .data.fd = ls}, ev[64];
  epoll_ctl(ep, EPOLL_CTL_ADD, ls, &e);
  char b[4096];
  for (;;) {
    int n = epoll_wait(ep, ev, 64, -1);
    for (int i = 0; i < n; i++) {
      int fd = ev[i].data.fd;
      if (fd == ls) {
        int c = accept(ls, 0, 0);
        setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        fcntl(c, F_SETFL, O_NONBLOCK);
        struct epoll_event x = {.events = EPOLLIN, .data.fd = c};
        epoll_ctl(ep, EPOLL_CTL_ADD, c, &x);
        continue;
      }
      for (int m; (m = read(fd, b, sizeof b)) > 0;) write(fd, b, m);
    }
  }
}
EOF

mkdir "$tmp/echo"
cat >"$tmp/echo/go.mod" <<'EOF'
module echo

go 1.22
EOF
cat >"$tmp/echo/main.go" <<'EOF'
// echo serves (echo serve ADDR) or measures (echo client ADDR CONNS RATE
// COUNT: CONNS connections, each sending 64 bytes RATE times a second,
// COUNT times, and timing each round trip; prints p50 and p99 in µs).
package main

import (
	"fmt"
	"net"
	"os"
	"slices"
	"strconv"
	"sync"
	"time"
)

func main() {
	if os.Args[1] == "serve" {
		ln, err := net.Listen("tcp", os.Args[2])
		if err != nil {
			panic(err)
		}
		for {
			c, err := ln.Accept()
			if err != nil {
				panic(err)
			}
			go func() {
				b := make([]byte, 4096)
				for {
					n, err := c.Read(b)
					if err != nil {
						return
					}
					c.Write(b[:n])
				}
			}()
		}
	}
	conns, _ := strconv.Atoi(os.Args[3])
	rate, _ := strconv.Atoi(os.Args[4])
	count, _ := strconv.Atoi(os.Args[5])
	var mu sync.Mutex
	var all []time.Duration
	var wg sync.WaitGroup
	for range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := net.Dial("tcp", os.Args[2])
			if err != nil {
				panic(err)
			}
			b := make([]byte, 64)
			tick := time.NewTicker(time.Second / time.Duration(rate))
			mine := make([]time.Duration, 0, count)
			for range count {
				<-tick.C
				t := time.Now()
				c.Write(b)
				for n := 0; n < len(b); {
					m, err := c.Read(b[n:])
					if err != nil {
						panic(err)
					}
					n += m
				}
				mine = append(mine, time.Since(t))
			}
			mu.Lock()
			all = append(all, mine...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	slices.Sort(all)
	fmt.Printf("%.1f %.1f\n", float64(all[len(all)/2])/1e3, float64(all[len(all)*99/100])/1e3)
}
EOF

say "building"
cc -O2 -o "$tmp/echo-c" "$tmp/echo.c"
(cd "$tmp/echo" && CGO_ENABLED=0 go build -trimpath -o "$tmp/echo-go" .)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'; }

for r in $(seq 1 "$ROUNDS"); do
  for v in c go; do
    port=$(free_port)
    if [ $v = c ]; then "$tmp/echo-c" "$port" & else "$tmp/echo-go" serve "127.0.0.1:$port" & fi
    pid=$!
    sleep 0.3
    say "round $r of $ROUNDS: $v"
    echo "$v $("$tmp/echo-go" client "127.0.0.1:$port" 4 1000 "$COUNT")" >>"$tmp/results"
    kill "$pid"
    wait "$pid" 2>/dev/null || true
    pid=""
  done
done

echo "| server | p50 per round, µs | p99 per round, µs | median p50 | median p99 |"
echo "|---|---|---|---|---|"
for v in c go; do
  awk -v v=$v '$1 == v { p50 = p50 (p50 ? " " : "") $2; p99 = p99 (p99 ? " " : "") $3 } END { print v "\t" p50 "\t" p99 }' "$tmp/results"
done | while IFS=$'\t' read -r v p50 p99; do
  med() { tr ' ' '\n' | sort -g | awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
  name=$([ "$v" = c ] && echo "C, epoll, one thread" || echo "Go, goroutine per connection")
  echo "| $name | $p50 | $p99 | $(echo "$p50" | med) | $(echo "$p99" | med) |"
done
