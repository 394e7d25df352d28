#!/usr/bin/env bash
# RSS after many rooms were loaded and unloaded, with and without a
# subdocument in each document (issue 26). For each binary: start it with
# --room-idle-timeout 1s (and --subdocuments allow where it has the flag),
# POST one update into each of N rooms (about 200 KB of text, plus
# `m.sub = new Y.Doc()` in the subdocument run), wait until every room has
# unloaded (crdt_hub_rooms 0), read VmRSS.
#
# Usage: bench/scripts/subdoc-rss.sh [ROOMS] BINARY...
# Needs: node with tests/interop's node_modules (npm ci --prefix tests/interop), curl.
set -euo pipefail
cd "$(dirname "$0")/../.."
rooms=${1:-1000}
shift
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
NODE_PATH=tests/interop/node_modules node -e '
const Y = require("yjs"); const fs = require("fs");
for (const sub of [false, true]) {
  const doc = new Y.Doc();
  doc.getText("t").insert(0, "lorem ipsum ".repeat(200000 / 12));
  if (sub) doc.getMap("m").set("sub", new Y.Doc());
  fs.writeFileSync(process.argv[1] + (sub ? "/with.ybin" : "/without.ybin"), Y.encodeStateAsUpdate(doc));
}' "$work"
rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
for bin in "$@"; do
  for kind in without with; do
    dir=$(mktemp -d)
    port=$((20000 + RANDOM % 20000))
    flags=(--bind "127.0.0.1:$port" --database-url "sqlite://$dir/rss.db" --room-idle-timeout 1s)
    if "$bin" serve --help | grep -q -- --subdocuments; then flags+=(--subdocuments allow); fi
    CRDT_HUB_RATE_API_PER_IP=1000000 CRDT_HUB_RATE_API_BURST_PER_IP=1000000 \
      "$bin" serve "${flags[@]}" 2>"$dir/server.log" &
    pid=$!
    for _ in $(seq 1 100); do grep -q listening "$dir/server.log" && break; sleep 0.1; done
    start=$(rss_kib "$pid")
    for r in $(seq 1 "$rooms"); do
      curl -sf -o /dev/null --data-binary "@$work/$kind.ybin" "http://127.0.0.1:$port/api/rooms/r$r/update" \
        || { echo "POST failed for room r$r"; tail -5 "$dir/server.log"; exit 1; }
    done
    peak=$(rss_kib "$pid")
    for _ in $(seq 1 600); do
      loaded=$(curl -sf "http://127.0.0.1:$port/metrics" | awk '/^crdt_hub_rooms / {print $2}')
      [ "${loaded:-1}" = "0" ] && break
      sleep 0.5
    done
    sleep 2
    end=$(rss_kib "$pid")
    kill "$pid"; wait "$pid" 2>/dev/null || true
    rm -rf "$dir"
    printf '%s  %-7s subdocument  rooms=%s  RSS start %.1f MiB, after loading %.1f MiB, after every room unloaded %.1f MiB\n' \
      "$bin" "$kind" "$rooms" "$(echo "$start/1024" | bc -l)" "$(echo "$peak/1024" | bc -l)" "$(echo "$end/1024" | bc -l)"
  done
done
