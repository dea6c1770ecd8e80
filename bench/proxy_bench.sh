#!/usr/bin/env bash
# Cache-hit load test of an OpenAI-compatible caching proxy (default: the LiteLLM proxy).
# Copied from the LiteLLM baseline measurement so llm-cache and LiteLLM are measured with the
# same load, fake upstream and tools; `cargo xtask bench proxy` drives it for both.
# Added here: the `miss` mode (upstream latency 0, every request `cache: {no-cache: true}`, so
# each one goes upstream and is stored: the miss-path overhead vs `direct`).
#
#   ./proxy_bench.sh [MODE ...]      MODE: direct | local | redis | miss  (default: direct local redis)
#
#   direct  fake upstream (latency 0) hit directly: ceiling of load tool + fake server
#   local   proxy with cache_params {type: local} in front of the fake upstream (UPSTREAM_LATENCY_MS)
#   redis   proxy with cache_params {type: redis} (starts redis-server on REDIS_PORT if none answers);
#           also hits over KEYS_N [1000] distinct stored requests (`chat-hit-distinct`, 0: skip)
#   miss    proxy in front of the fake upstream (latency 0), every request `no-cache`: the miss path
#   redis-store    proxy over Redis, upstream latency 0, every request distinct (a storing miss:
#                  lookup, lease, upstream, store)
#   redis-nostore  the same requests with `cache: {no-store: true}` (lookup, upstream, no store):
#                  the difference is what storing costs
#   hop     nginx (if installed) as a plain keep-alive reverse proxy in front of the same upstream:
#           the floor for one extra HTTP hop on this machine, to read `miss` against
#
# For each proxy mode: start fake upstream + proxy, warm the cache with one request (a miss),
# then run wrk for DURATION s at each concurrency in CONCS; the upstream request counter must
# not grow during the load (all hits). Also one streaming (SSE) hit run at STREAM_CONC, and
# the proxy's RSS (idle, after load, peak). Results: $OUT_DIR/results.tsv and a markdown table.
#
# Env (defaults in brackets):
#   BENCH_PY [python3]  python with litellm + aiohttp;  LITELLM_BIN [next to BENCH_PY]
#   PROXY_CMD  command starting the proxy under test; may use $CFG (generated litellm config),
#              $PROXY_PORT [18400]. Default: "$LITELLM_BIN --config $CFG --host 127.0.0.1 --port $PROXY_PORT"
#   PROXY_EXTRA_ARGS  appended to the default PROXY_CMD (e.g. "--num_workers 2")
#   FAKE_PORT [18100]  DIRECT_PORT [18101]  REDIS_PORT [18379]
#   REDIS_UNIX [none]  1: the redis modes reach Redis through its Unix socket (`unix_socket_path`;
#              the Redis started here listens on $OUT_DIR/redis.sock too)
#   DURATION [15]  CONCS ["1 16 64"]  STREAM_CONC [16] (empty: skip)  UPSTREAM_LATENCY_MS [200]
#   LARGE_KB [none]  e.g. "51 200": also hits of ~51 KB and ~200 KB requests at LARGE_CONCS ["1 16"]
#   OUT_DIR [./out-proxy]  TAG [mode name] label in results
#   PERF_CASE [none]  e.g. chat-hit-distinct: `perf record -g` the proxy during that case
#   PROXY_CPUS / WRK_CPUS  pin the proxy / wrk to these CPUs (taskset -c), so the load generator
#              does not preempt the proxy;  WRK_THREADS [min(conc, 2)]  wrk threads
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
PY=${BENCH_PY:-python3}
LITELLM_BIN=${LITELLM_BIN:-$(dirname "$(command -v "$PY")")/litellm}
FAKE_PORT=${FAKE_PORT:-18100}; DIRECT_PORT=${DIRECT_PORT:-18101}
PROXY_PORT=${PROXY_PORT:-18400}; REDIS_PORT=${REDIS_PORT:-18379}
DURATION=${DURATION:-15}; CONCS=${CONCS:-"1 16 64"}; STREAM_CONC=${STREAM_CONC-16}
UPSTREAM_LATENCY_MS=${UPSTREAM_LATENCY_MS:-200}
OUT_DIR=${OUT_DIR:-./out-proxy}; mkdir -p "$OUT_DIR"; OUT_DIR=$(cd "$OUT_DIR" && pwd)
MODES=${*:-"direct local redis"}
export LITELLM_LOCAL_MODEL_COST_MAP=True LITELLM_TELEMETRY=False
export AUTH=${LITELLM_MASTER_KEY:-sk-$($PY -c 'import secrets; print(secrets.token_hex(32))')}
export LITELLM_MASTER_KEY=$AUTH
RESULTS=$OUT_DIR/results.tsv
[ -f "$RESULTS" ] || printf 'tag\tcase\tconc\trps\tp50_ms\tp90_ms\tp99_ms\tmax_ms\tnon2xx\tsock_err\tupstream_delta\trss_mb\tcpu_ms_per_req\tloadavg1\n' >"$RESULTS"

PIDS=()  # every process we start; stopped by PID on exit
cleanup() { for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
stop() { kill "$1" 2>/dev/null || true; for _ in $(seq 50); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.1; done; kill -9 "$1" 2>/dev/null || true; }
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_http() { # url timeout_s pid
  local end=$((SECONDS + $2)); until curl -sf -o /dev/null "$1"; do
    kill -0 "$3" 2>/dev/null || { echo "process $3 died" >&2; return 1; }
    [ $SECONDS -lt $end ] || { echo "timeout waiting for $1" >&2; return 1; }; sleep 0.3; done; }
upstream_count() { curl -sf "http://127.0.0.1:$1/stats" | $PY -c 'import json,sys; print(json.load(sys.stdin)["requests"])'; }
rss_mb() { # RSS of a process and all its descendants, MiB
  ps -eo pid=,ppid=,rss= | awk -v root="$1" '{p[$1]=$2; r[$1]=$3} END {
    s=0; for (q in p) { x=q; while (x!="" && x!=0 && x!=1) { if (x==root) { s+=r[q]; break }; x=p[x] } }
    printf "%.1f", s/1024 }'; }
peak_mb() { awk '/VmHWM/ {printf "%.1f", $2/1024}' "/proc/$1/status" 2>/dev/null || echo "?"; }
load1() { cut -d' ' -f1 /proc/loadavg; }
cpu_ticks() { # utime+stime (clock ticks) of a process and its descendants
  local p t=0; for p in $1 $(pgrep -P "$1" 2>/dev/null || true); do
    t=$((t + $(sed 's/.*) //' "/proc/$p/stat" 2>/dev/null | awk '{print $12 + $13}' || echo 0))); done; echo "$t"; }
HZ=$(getconf CLK_TCK)
ctx_switches() { # voluntary and involuntary context switches of a process's threads, summed
  cat /proc/"$1"/task/*/status 2>/dev/null | awk '/^voluntary_ctxt/ {v+=$2} /^nonvoluntary_ctxt/ {n+=$2} END {print v+0, n+0}'; }

start_fake() { # port latency_ms
  port_free "$1" || { echo "port $1 busy" >&2; exit 1; }
  $PY "$HERE/fake_llm.py" --port "$1" --latency-ms "$2" >"$OUT_DIR/fake-$1.log" 2>&1 &
  FAKE_PID=$!; PIDS+=("$FAKE_PID"); wait_http "http://127.0.0.1:$1/health" 30 "$FAKE_PID"; }

# request bodies: ~100-token chat request, and the same with stream=true
BODY=$OUT_DIR/body.json; SBODY=$OUT_DIR/body-stream.json; NBODY=$OUT_DIR/body-nocache.json
UBODY=$OUT_DIR/body-unique.json; UNSBODY=$OUT_DIR/body-unique-nostore.json
$PY - "$BODY" "$SBODY" "$NBODY" "$UBODY" "$UNSBODY" <<'EOF'
import json, sys
words = ("cache latency token request model answer proxy stream vector server client memory python rust "
         "async hash key value store lookup hit miss expire policy engine query prompt reply window").split()
text = " ".join(words[(i * 13) % len(words)] for i in range(80))
body = {"model": "fake", "temperature": 0, "max_tokens": 64,
        "messages": [{"role": "system", "content": "You are a helpful assistant."},
                     {"role": "user", "content": "Please summarise the following notes. " + text}]}
json.dump(body, open(sys.argv[1], "w"))
json.dump(dict(body, stream=True), open(sys.argv[2], "w"))
json.dump(dict(body, cache={"no-cache": True}), open(sys.argv[3], "w"))
# "@UNIQUE@" is replaced per request by post-unique.lua: every request a miss
unique = dict(body, messages=[body["messages"][0],
              dict(body["messages"][1], content="[@UNIQUE@] " + body["messages"][1]["content"])])
json.dump(unique, open(sys.argv[4], "w"))
json.dump(dict(unique, cache={"no-store": True}), open(sys.argv[5], "w"))
EOF
# LARGE_KB="51 200": agents' requests (whole context resent each turn), as many 120-word turns
# as make ~N KB of JSON (64 turns: 51 KB, the shape of the key benches' large request).
for kb in ${LARGE_KB:-}; do
  $PY - "$OUT_DIR/body-large-$kb.json" "$kb" <<'EOF'
import json, sys
words = ("cache latency token request model answer proxy stream vector server client memory python rust "
         "async hash key value store lookup hit miss expire policy engine query prompt reply window "
         "budget route retry limit").split()
def turn(i):
    return " ".join(words[(i * 7 + j * 13) % len(words)] for j in range(120))
target = int(sys.argv[2]) * 1000
msgs = [{"role": "system", "content": "You are a helpful assistant. run=bench"}]
i = 0
while len(json.dumps(msgs)) < target:
    msgs.append({"role": "user" if i % 2 == 0 else "assistant", "content": f"turn {i}: {turn(i)}"})
    i += 1
json.dump({"model": "fake", "messages": msgs, "temperature": 0, "max_tokens": 64}, open(sys.argv[1], "w"))
EOF
done

run_wrk() { # tag case conc url body upstream_port(or -) pid(or -)
  local tag=$1 case=$2 c=$3 url=$4 body=$5 uport=$6 pid=$7 t before after out delta rss cpu0 cpu
  t=$(( c < ${WRK_THREADS:-2} ? c : ${WRK_THREADS:-2} ))
  before=$([ "$uport" = - ] && echo 0 || upstream_count "$uport"); cpu0=$(cpu_ticks "$pid")
  local cs0; cs0=$([ "$pid" = - ] && echo "0 0" || ctx_switches "$pid")
  # PERF_CASE=<case>: also `perf record -g` the proxy during that case's run ($OUT_DIR/perf-<case>-<conc>.data)
  if [ -n "${PERF_CASE:-}" ] && [ "$PERF_CASE" = "$case" ] && [ "$pid" != - ]; then
    perf record -q -g -p "$pid" -o "$OUT_DIR/perf-$case-$c.data" -- sleep $((DURATION > 4 ? DURATION - 2 : DURATION)) >/dev/null 2>&1 &
  fi
  out=$(BODY_FILE=$body timeout $((DURATION + 30)) ${WRK_CPUS:+taskset -c "$WRK_CPUS"} wrk -t"$t" -c"$c" -d"${DURATION}s" --timeout 10s \
        -s "$HERE/${SCRIPT:-post.lua}" "$url" | tee -a "$OUT_DIR/wrk.log" | grep '^RESULT') || { echo "wrk failed" >&2; return 1; }
  after=$([ "$uport" = - ] && echo 0 || upstream_count "$uport"); delta=$((after - before))
  [ "$uport" = - ] && delta=-
  rss=$([ "$pid" = - ] && echo - || rss_mb "$pid")
  eval "$(echo "$out" | sed 's/^RESULT //; s/ /;/g')"
  cpu=$(awk -v d=$(( $(cpu_ticks "$pid") - cpu0 )) -v n="$requests" -v hz="$HZ" 'BEGIN {printf "%.3f", n ? d*1000/hz/n : 0}')
  # Context switches of the proxy per request (voluntary: a thread parked; involuntary:
  # preempted): steadier than CPU time on a shared machine, and what thread wake-ups cost.
  [ "$pid" != - ] && echo "$(ctx_switches "$pid") $cs0" | awk -v t="$tag" -v k="$case" -v c="$c" -v n="$requests" \
    'n > 0 {printf "  %s %s c=%s: context switches per request: %.2f voluntary, %.2f involuntary\n", t, k, c, ($1-$3)/n, ($2-$4)/n}' \
    | tee -a "$OUT_DIR/notes.txt" >&2
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$tag" "$case" "$c" "$rps" "$p50_ms" "$p90_ms" \
    "$p99_ms" "$max_ms" "$non2xx" "$sock_errors" "$delta" "$rss" "$cpu" "$(load1)" | tee -a "$RESULTS"
}

warm() { # url body upstream_port: one miss, then poll until the upstream count stops growing
  local t0 t1 n0 n1
  t0=$(date +%s%N); curl -sf -o /dev/null -H "Authorization: Bearer $AUTH" -H 'Content-Type: application/json' \
    --data-binary @"$2" "$1"; t1=$(date +%s%N)
  echo "  warm-up miss: $(( (t1 - t0) / 1000000 )) ms" | tee -a "$OUT_DIR/notes.txt"
  for _ in $(seq 20); do
    n0=$(upstream_count "$3")
    curl -sf -o /dev/null -D "$OUT_DIR/hit-headers.txt" -H "Authorization: Bearer $AUTH" \
      -H 'Content-Type: application/json' --data-binary @"$2" "$1"
    n1=$(upstream_count "$3"); [ "$n0" = "$n1" ] && return 0; sleep 0.2
  done; echo "cache never hit" >&2; return 1; }

for mode in $MODES; do
  tag=${TAG:-$mode}
  echo "== $tag ($(date -u +%FT%TZ), load $(load1))" | tee -a "$OUT_DIR/notes.txt"
  if [ "$mode" = direct ]; then
    start_fake "$DIRECT_PORT" 0
    for c in $CONCS; do run_wrk "$tag" chat "$c" "http://127.0.0.1:$DIRECT_PORT/v1/chat/completions" "$BODY" - "$FAKE_PID"; done
    [ -n "$STREAM_CONC" ] && run_wrk "$tag" chat-stream "$STREAM_CONC" "http://127.0.0.1:$DIRECT_PORT/v1/chat/completions" "$SBODY" - "$FAKE_PID"
    stop "$FAKE_PID"; continue
  fi
  if [ "$mode" = hop ]; then
    command -v nginx >/dev/null || { echo "  hop: nginx is not installed (apt-get install nginx-light); skipped" | tee -a "$OUT_DIR/notes.txt"; continue; }
    start_fake "$FAKE_PORT" 0
    port_free "$PROXY_PORT" || { echo "port $PROXY_PORT busy" >&2; exit 1; }
    mkdir -p "$OUT_DIR/nginx"
    cat >"$OUT_DIR/nginx/nginx.conf" <<NGINX
worker_processes auto;
daemon off;
pid $OUT_DIR/nginx/nginx.pid;
error_log $OUT_DIR/nginx/error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $OUT_DIR/nginx; proxy_temp_path $OUT_DIR/nginx;
  fastcgi_temp_path $OUT_DIR/nginx; uwsgi_temp_path $OUT_DIR/nginx; scgi_temp_path $OUT_DIR/nginx;
  upstream fake { server 127.0.0.1:$FAKE_PORT; keepalive 64; }
  server {
    listen 127.0.0.1:$PROXY_PORT;
    location / { proxy_pass http://fake; proxy_http_version 1.1; proxy_set_header Connection ""; proxy_buffering off; }
  }
}
NGINX
    ${PROXY_CPUS:+taskset -c "$PROXY_CPUS"} nginx -c "$OUT_DIR/nginx/nginx.conf" -e "$OUT_DIR/nginx/error.log" >"$OUT_DIR/proxy-$tag.log" 2>&1 &
    PROXY_PID=$!; PIDS+=("$PROXY_PID"); sleep 0.5
    for c in ${MISS_CONCS:-1 16}; do run_wrk "$tag" chat-hop "$c" "http://127.0.0.1:$PROXY_PORT/v1/chat/completions" "$NBODY" "$FAKE_PORT" "$PROXY_PID"; done
    stop "$PROXY_PID"; stop "$FAKE_PID"; continue
  fi
  CFG=$OUT_DIR/config-$mode.yaml
  latency=$UPSTREAM_LATENCY_MS
  case $mode in
    local) cache_params="    type: local" ;;
    miss) cache_params="    type: local"; latency=0 ;;
    redis|redis-store|redis-nostore) [ "$mode" = redis ] || latency=0
           cache_params=$(printf '    type: redis\n    host: 127.0.0.1\n    port: %s' "$REDIS_PORT")
           if ! redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1; then
             redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no \
               --unixsocket "$OUT_DIR/redis.sock" --unixsocketperm 700 >"$OUT_DIR/redis.log" 2>&1 &
             PIDS+=("$!"); sleep 0.5; fi
           if [ -n "${REDIS_UNIX:-}" ]; then
             sock=$(redis-cli -p "$REDIS_PORT" config get unixsocket | sed -n 2p)
             [ -n "$sock" ] || { echo "REDIS_UNIX: the Redis on $REDIS_PORT has no Unix socket" >&2; exit 2; }
             cache_params=$(printf '    type: redis\n    unix_socket_path: %s' "$sock")
           fi ;;
    *) echo "unknown mode $mode" >&2; exit 2 ;;
  esac
  # LiteLLM skips requests with more than 4 messages unless told otherwise (its max_messages
  # default, F15): lift it for the large requests, on both proxies alike.
  [ -n "${LARGE_KB:-}" ] && cache_params=$(printf '%s\n    max_messages: 100000' "$cache_params")
  cat >"$CFG" <<EOF
model_list:
  - model_name: fake
    litellm_params:
      model: openai/fake
      api_base: http://127.0.0.1:$FAKE_PORT/v1
      api_key: sk-fake
litellm_settings:
  cache: true
  cache_params:
$cache_params
EOF
  start_fake "$FAKE_PORT" "$latency"
  port_free "$PROXY_PORT" || { echo "port $PROXY_PORT busy" >&2; exit 1; }
  export CFG PROXY_PORT
  cmd=${PROXY_CMD:-"$LITELLM_BIN --config $CFG --host 127.0.0.1 --port $PROXY_PORT ${PROXY_EXTRA_ARGS:-}"}
  [ -n "${PROXY_CPUS:-}" ] && cmd="taskset -c $PROXY_CPUS $cmd"
  t0=$SECONDS; bash -c "exec $cmd" >"$OUT_DIR/proxy-$tag.log" 2>&1 &
  PROXY_PID=$!; PIDS+=("$PROXY_PID")
  wait_http "http://127.0.0.1:$PROXY_PORT/health/liveliness" 240 "$PROXY_PID"
  echo "  proxy ready after $((SECONDS - t0)) s, idle RSS $(rss_mb "$PROXY_PID") MiB" | tee -a "$OUT_DIR/notes.txt"
  URL=http://127.0.0.1:$PROXY_PORT/v1/chat/completions
  if [ "$mode" = redis-store ] || [ "$mode" = redis-nostore ]; then
    ubody=$UBODY; [ "$mode" = redis-nostore ] && ubody=$UNSBODY
    for c in ${MISS_CONCS:-1 16}; do SCRIPT=post-unique.lua run_wrk "$tag" chat-unique-miss "$c" "$URL" "$ubody" "$FAKE_PORT" "$PROXY_PID"; done
    echo "  $tag: RSS after load $(rss_mb "$PROXY_PID") MiB, Redis keys $(redis-cli -p "$REDIS_PORT" dbsize)" | tee -a "$OUT_DIR/notes.txt"
    stop "$PROXY_PID"; stop "$FAKE_PID"; continue
  fi
  if [ "$mode" = miss ]; then
    for c in ${MISS_CONCS:-1 16}; do run_wrk "$tag" chat-miss "$c" "$URL" "$NBODY" "$FAKE_PORT" "$PROXY_PID"; done
    echo "  $tag: RSS after load $(rss_mb "$PROXY_PID") MiB" | tee -a "$OUT_DIR/notes.txt"
    stop "$PROXY_PID"; stop "$FAKE_PID"; continue
  fi
  warm "$URL" "$BODY" "$FAKE_PORT"
  grep -i 'cache-key' "$OUT_DIR/hit-headers.txt" | sed 's/^/  hit header: /' | tee -a "$OUT_DIR/notes.txt" || true
  for c in $CONCS; do run_wrk "$tag" chat-hit "$c" "$URL" "$BODY" "$FAKE_PORT" "$PROXY_PID"; done
  # Hits over KEYS_N distinct stored requests (`redis` mode): concurrent requests for
  # different keys, so nothing is shared between them (the single-key rows above can be
  # served by one backend read for several concurrent requests).
  if [ "$mode" = redis ] && [ "${KEYS_N:-1000}" -gt 0 ]; then
    $PY - "$URL" "$UBODY" "${KEYS_N:-1000}" <<'PYEOF'
# Stores the KEYS_N requests (misses, each UPSTREAM_LATENCY_MS upstream): 32 at a time.
import http.client, os, sys, urllib.parse
from concurrent.futures import ThreadPoolExecutor
url, body_file, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
u = urllib.parse.urlparse(url)
template = open(body_file, "rb").read()
headers = {"Content-Type": "application/json", "Authorization": "Bearer " + os.environ["AUTH"]}
def worker(w):
    conn = http.client.HTTPConnection(u.hostname, u.port)
    for i in range(w + 1, n + 1, 32):
        conn.request("POST", u.path, template.replace(b"@UNIQUE@", b"k%d" % i), headers)
        r = conn.getresponse(); r.read()
        assert r.status == 200, r.status
with ThreadPoolExecutor(32) as ex:
    list(ex.map(worker, range(32)))
PYEOF
    sleep 1
    for c in $CONCS; do CYCLE_KEYS=${KEYS_N:-1000} SCRIPT=post-unique.lua run_wrk "$tag" chat-hit-distinct "$c" "$URL" "$UBODY" "$FAKE_PORT" "$PROXY_PID"; done
  fi
  for kb in ${LARGE_KB:-}; do
    warm "$URL" "$OUT_DIR/body-large-$kb.json" "$FAKE_PORT"
    for c in ${LARGE_CONCS:-1 16}; do
      run_wrk "$tag" "chat-hit-${kb}k" "$c" "$URL" "$OUT_DIR/body-large-$kb.json" "$FAKE_PORT" "$PROXY_PID"
    done
  done
  if [ -n "$STREAM_CONC" ]; then
    warm "$URL" "$SBODY" "$FAKE_PORT"
    run_wrk "$tag" chat-stream-hit "$STREAM_CONC" "$URL" "$SBODY" "$FAKE_PORT" "$PROXY_PID"
  fi
  echo "  $tag: RSS after load $(rss_mb "$PROXY_PID") MiB, peak (VmHWM, main process) $(peak_mb "$PROXY_PID") MiB" | tee -a "$OUT_DIR/notes.txt"
  stop "$PROXY_PID"; stop "$FAKE_PID"
done

echo; echo "| tag | case | conc | rps | p50 ms | p90 ms | p99 ms | errors | upstream calls | RSS MiB | CPU ms/req | load1 |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|"
tail -n +2 "$RESULTS" | awk -F'\t' '{printf "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n",$1,$2,$3,$4,$5,$6,$7,$9+$10,$11,$12,$13,$14}'
