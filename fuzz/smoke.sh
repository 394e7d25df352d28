#!/usr/bin/env bash
# Runs every fuzz target briefly, replaying the saved findings first: CI's
# smoke check that the targets build and run clean. A finding fails the run
# and leaves its input in fuzz/artifacts/<target>/.
#
# Usage: fuzz/smoke.sh [seconds per target, default 20]
set -euo pipefail
cd "$(dirname "$0")"
seconds="${1:-20}"

if ! command -v cargo-fuzz >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

# cargo-fuzz needs nightly-only flags (sanitizers); this lets a stable
# toolchain accept them.
export RUSTC_BOOTSTRAP=1
# yrs 0.28.1 leaks a whole document that holds a subdocument (a reference
# cycle, known and reported); leak checks would flag every such input. A
# small quarantine keeps ASan's own memory from eating the RSS limit.
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=0:quarantine_size_mb=32}"

for target in $(cargo fuzz list); do
    corpus="$(mktemp -d)"
    cp corpus/"$target"/*.bin "$corpus"/ 2>/dev/null || true
    cp regressions/"$target"/*.bin "$corpus"/ 2>/dev/null || true
    echo "== $target: ${seconds}s"
    # The corpus copy keeps the committed seeds free of libFuzzer's additions.
    cargo fuzz run "$target" "$corpus" -- \
        -rss_limit_mb=512 -timeout=5 -max_total_time="$seconds" -detect_leaks=0 \
        -print_final_stats=1
    rm -rf "$corpus"
done
echo "fuzz smoke: all targets ran clean"
