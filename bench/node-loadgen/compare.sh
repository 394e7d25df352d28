#!/usr/bin/env bash
# Runs fanout.mjs against crdt-hub and the y-websocket reference server, in
# alternation (crdt-hub, reference, crdt-hub, …) so the two see the same
# machine, for every --edits kind asked for. Each run gets fresh servers.
# With GENERATORS="node rust", each Node run is followed by the same run from
# `crdt-hub-loadgen run` (append edits only: its updates are precomputed),
# so the two generators are compared on the same servers in the same hour.
# With VARIANT_ARGS, each round also runs crdt-hub with those extra `serve`
# flags (labelled "crdt-hub+"), between the default crdt-hub and the
# reference, so a flag's effect is measured in the same hour too.
#
# Usage: bench/node-loadgen/compare.sh [ROUNDS] [EDITS...] -- [fanout.mjs args]
#   e.g. bench/node-loadgen/compare.sh 3 append shared -- --arrivals poisson --rate 25
#   GENERATORS="node rust" bench/node-loadgen/compare.sh 3 append -- --duration 10
#   VARIANT_ARGS="--room-threads 2" GENERATORS=rust bench/node-loadgen/compare.sh 3 append -- --arrivals poisson
# Needs: target/release/crdt-hub (cargo build --release -p crdt-hub), and
# `npm ci` in bench/peers and bench/node-loadgen (done here when missing);
# for GENERATORS with rust, target/release/crdt-hub-loadgen.
# Prints one JSON line per run (the Rust generator's report reduced to the
# same fields); also appends them to target/bench/node-fanout-*.jsonl.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
crdt_hub=${CRDT_HUB_BIN:-$root/target/release/crdt-hub}
rounds=${1:-3}
shift || true
edits=()
while [[ $# -gt 0 && $1 != -- ]]; do edits+=("$1"); shift; done
[[ ${1:-} == -- ]] && shift
[[ ${#edits[@]} -gt 0 ]] || edits=(append shared)

[[ -x $crdt_hub ]] || { echo "no $crdt_hub: cargo build --release -p crdt-hub" >&2; exit 1; }
for dir in "$here" "$root/bench/peers"; do
  [[ -d $dir/node_modules ]] || (cd "$dir" && npm ci --silent)
done
if [[ " ${GENERATORS:-node} " == *" rust "* && ! -x $root/target/release/crdt-hub-loadgen ]]; then
  echo "no target/release/crdt-hub-loadgen: cargo build --release -p bench" >&2
  exit 1
fi
out=$root/target/bench/node-fanout-$(date +%s).jsonl
mkdir -p "$(dirname "$out")"

free_port() { node -e 's=require("net").createServer().listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})'; }

wait_listening() {
  for _ in $(seq 200); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "server on port $1 did not listen" >&2
  return 1
}

# Starts one server; sets $pid and $port. crdt-hub gets the limits
# crdt-hub-loadgen lifts (every client comes from 127.0.0.1), from the file
# both read.
start() {
  port=$(free_port)
  tmp=$(mktemp -d)
  case $1 in
    crdt-hub | crdt-hub+)
      local extra=()
      [[ $1 == crdt-hub+ ]] && read -ra extra <<<"$VARIANT_ARGS"
      (set -a && . "$root/bench/crdt-hub-bench.env" &&
        exec "$crdt_hub" serve --bind "127.0.0.1:$port" --database-url "sqlite://$tmp/bench.db" "${extra[@]}") \
        >"$tmp/server.log" 2>&1 &
      ;;
    y-websocket)
      (cd "$root/bench/peers" && HOST=127.0.0.1 PORT=$port \
        exec node node_modules/@y/websocket-server/src/server.js) >"$tmp/server.log" 2>&1 &
      ;;
  esac
  pid=$!
  wait_listening "$port"
}

# Stops the server of the last start() and removes its files.
stop() {
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  rm -rf "$tmp"
  pid=
}
pid=
trap '[[ -n $pid ]] && stop' EXIT

# The fanout.mjs flags the Rust generator shares, with its defaults.
declare -A shared=([clients]=200 [rooms]=20 [rate]=25 [duration]=20 [arrivals]=even)
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  name=${args[i]#--}
  if [[ $name == *=* ]]; then
    value=${name#*=}
    name=${name%%=*}
  else
    value=${args[i + 1]:-}
  fi
  if [[ -n ${shared[$name]+set} ]]; then shared[$name]=$value; fi
done

# One run of crdt-hub-loadgen, printed as fanout.mjs prints one.
rust_run() {
  local label=$1
  "$root/target/release/crdt-hub-loadgen" run --url "ws://127.0.0.1:$port" --server-pid "$pid" \
    --clients "${shared[clients]}" --rooms "${shared[rooms]}" --rate "${shared[rate]}" \
    --duration "${shared[duration]}" --arrivals "${shared[arrivals]}" --no-convergence --json |
    node -e '
      const r = JSON.parse(require("fs").readFileSync(0, "utf8"))
      console.log(JSON.stringify({ label: process.argv[1], generator: "rust", edits: "append",
        arrivals: process.argv[2], clients: r.clients, rooms: r.rooms, rate: r.rate,
        duration_s: r.duration_s, offered_dps: r.offered_dps, sent: r.sent, expected: r.expected,
        delivered: r.received, echoes: r.echoes, delivery_ratio: r.delivery_ratio,
        p50_ms: r.latency.p50_ms, p99_ms: r.latency.p99_ms, server_cpu_s: r.server_cpu_s,
        cpu_us_per_delivery: r.cpu_us_per_delivery, loadgen_cpu_s: r.loadgen_cpu_s }))' \
      "$label" "${shared[arrivals]}"
}

for round in $(seq "$rounds"); do
  for kind in "${edits[@]}"; do
    servers=(crdt-hub)
    [[ -n ${VARIANT_ARGS:-} ]] && servers+=(crdt-hub+)
    servers+=(y-websocket)
    for server in "${servers[@]}"; do
      for generator in ${GENERATORS:-node}; do
        # crdt-hub-loadgen sends precomputed appends, on an even beat or
        # as a Poisson process only.
        [[ $generator == rust && ($kind != append || ${shared[arrivals]} == interval) ]] && continue
        start "$server"
        if [[ $generator == rust ]]; then
          rust_run "$server round $round"
        else
          node "$here/fanout.mjs" --url "ws://127.0.0.1:$port" --pid "$pid" \
            --edits "$kind" --label "$server round $round" "$@"
        fi | tee -a "$out"
        stop
      done
    done
  done
done
echo "results in $out" >&2
