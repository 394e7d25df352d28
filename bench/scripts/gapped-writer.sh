#!/usr/bin/env bash
# Fan-out with and without a writer whose updates never complete (issue 19):
# for each crdt-hub binary given, each load, and each round, starts a fresh
# server and runs `crdt-hub-loadgen run`, once without and once with
# `--gapped-updates 10000` (one writer in room 0, spread over the run).
# Prints one line per run: binary, load, writer, p99, CPU per delivery.
#
# Usage: bench/scripts/gapped-writer.sh [ROUNDS] BINARY...
#   e.g. bench/scripts/gapped-writer.sh 3 target/release/crdt-hub /tmp/crdt-hub-old
# Needs the loadgen built: cargo build --release -p bench
set -euo pipefail
cd "$(dirname "$0")/../.."
rounds=${1:-3}
shift
loadgen=target/release/crdt-hub-loadgen
# clients rooms rate: 45k deliveries/s over 20 rooms; 24.5k in one room.
loads=("200 20 25" "50 1 10")
for round in $(seq 1 "$rounds"); do
  for load in "${loads[@]}"; do
    read -r clients rooms rate <<<"$load"
    for bin in "$@"; do
      for gapped in 0 10000; do
        dir=$(mktemp -d)
        port=$((20000 + RANDOM % 20000))
        CRDT_HUB_RATE_CONNECTIONS_PER_IP=1000000 CRDT_HUB_RATE_CONNECTION_BURST_PER_IP=1000000 \
          "$bin" serve --bind "127.0.0.1:$port" --database-url "sqlite://$dir/bench.db" \
          2>"$dir/server.log" &
        pid=$!
        for _ in $(seq 1 100); do
          grep -q listening "$dir/server.log" && break
          sleep 0.1
        done
        out=$("$loadgen" run --url "ws://127.0.0.1:$port" --clients "$clients" --rooms "$rooms" \
          --rate "$rate" --duration 10 --server-pid "$pid" --gapped-updates "$gapped" --json)
        kill "$pid"
        wait "$pid" 2>/dev/null || true
        rm -rf "$dir"
        echo "$out" | python3 -c "
import json, sys
r = json.load(sys.stdin)
print(f\"round $round  $bin  load=${clients}c/${rooms}r/${rate}  gapped=$gapped  \"
      f\"p50={r['latency']['p50_ms']:.2f}ms p99={r['latency']['p99_ms']:.2f}ms \"
      f\"cpu/delivery={r['cpu_us_per_delivery']:.2f}us delivered={r['delivery_ratio']:.4f} \"
      f\"gapped_sent={r['gapped']['updates_sent']} converged={r['rooms_converged']}/{r['rooms']}\")
"
      done
    done
  done
done
