#!/usr/bin/env bash
# A/B of proxy binaries on one case, alternated round by round in one run (the host's state
# moves absolute numbers by up to ~2x between hours; alternating keeps the comparison fair).
#
#   bench/ab.sh CONFIG BODY "BIN_A BIN_B ..." [ROUNDS]
#
# CONFIG: a litellm-style config whose upstream is the fake upstream on FAKE_PORT [18100]
# (bench/proxy_bench.sh writes them to its OUT_DIR: config-local.yaml, config-redis.yaml, ...);
# BODY: the request body (e.g. body.json, or body-unique.json with SCRIPT=post-unique.lua and
# CYCLE_KEYS=1000 for hits over 1000 stored keys). Each binary serves on PROXY_PORT [18400],
# gets 1 s of warm-up, then wrk -cC [16] for D [6] s. Printed per run: requests/s, CPU per
# request from the proxy's sum_exec_runtime over all threads (/proc/PID/task/*/schedstat,
# nanoseconds: no tick rounding) and voluntary context switches per request.
# BEFORE_EACH: a shell command run before each binary starts (e.g. "redis-cli -p 18379 flushall",
# so each binary's hits read entries it wrote itself).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
CFG=$1; BODY=$2; BINS=$3; ROUNDS=${4:-3}
C=${C:-16}; D=${D:-6}; FAKE_PORT=${FAKE_PORT:-18100}; PROXY_PORT=${PROXY_PORT:-18400}
PY=${BENCH_PY:-python3}
export AUTH=${AUTH:-sk-bench} LITELLM_MASTER_KEY=${AUTH:-sk-bench}
URL=http://127.0.0.1:$PROXY_PORT/v1/chat/completions
$PY "$HERE/fake_llm.py" --port "$FAKE_PORT" --latency-ms 0 >/dev/null 2>&1 &
FAKE=$!
P=
trap 'kill $FAKE ${P:-} 2>/dev/null || true' EXIT
sleep 1.5
cpu_ns() { cat /proc/"$1"/task/*/schedstat | awk '{s += $1} END {printf "%.0f\n", s}'; }
# utime + stime of the process in ns (clock ticks: coarse; on this VM they include stolen time,
# as schedstat does: read them with the steal column)
tick_ns() { sed 's/.*) //' /proc/"$1"/stat | awk -v hz="$(getconf CLK_TCK)" '{printf "%.0f\n", ($12 + $13) * 1e9 / hz}'; }
steal() { awk '/^cpu / {print $9}' /proc/stat; }
vcs() { cat /proc/"$1"/task/*/status | awk '/^voluntary_ctxt/ {v += $2} END {printf "%.0f\n", v}'; }
for _ in $(seq "$ROUNDS"); do
  for bin in $BINS; do
    [ -n "${BEFORE_EACH:-}" ] && bash -c "$BEFORE_EACH" >/dev/null
    "$bin" serve --config "$CFG" --host 127.0.0.1 --port "$PROXY_PORT" >/dev/null 2>&1 &
    P=$!
    until curl -sf -o /dev/null "http://127.0.0.1:$PROXY_PORT/health/liveliness"; do
      kill -0 "$P" 2>/dev/null || { echo "$bin did not start" >&2; exit 1; }; sleep 0.1; done
    curl -s -o /dev/null -H "Authorization: Bearer $AUTH" -H 'Content-Type: application/json' --data-binary @"$BODY" "$URL"
    BODY_FILE=$BODY wrk -t$((C < 2 ? C : 2)) -c"$C" -d1s -s "$HERE/${SCRIPT:-post.lua}" "$URL" >/dev/null
    c0=$(cpu_ns "$P"); v0=$(vcs "$P"); t0=$(tick_ns "$P"); s0=$(steal)
    out=$(BODY_FILE=$BODY wrk -t$((C < 2 ? C : 2)) -c"$C" -d"${D}s" -s "$HERE/${SCRIPT:-post.lua}" "$URL" | grep '^RESULT')
    c1=$(cpu_ns "$P"); v1=$(vcs "$P"); t1=$(tick_ns "$P"); s1=$(steal)
    n=$(echo "$out" | sed 's/.*requests=\([0-9]*\).*/\1/'); rps=$(echo "$out" | sed 's/.*rps=\([0-9.]*\).*/\1/')
    awk -v b="$bin" -v n="$n" -v c="$((c1 - c0))" -v t="$((t1 - t0))" -v v="$((v1 - v0))" -v rps="$rps" \
      -v st="$(( (s1 - s0) * 100 / $(getconf CLK_TCK) / D ))" -v l="$(cut -d' ' -f1 /proc/loadavg)" \
      'BEGIN {printf "%-40s %8.0f req/s  %6.1f us CPU/req (ticks: %6.1f)  %.2f vol. switches/req  steal %s%% of a CPU  load %s\n", b, rps, c / n / 1000, t / n / 1000, v / n, st / 1, l}'
    kill "$P"; while kill -0 "$P" 2>/dev/null; do sleep 0.1; done; P=
  done
done
