#!/usr/bin/env bash
# Runs every cargo-fuzz target for SECONDS seconds each (default 60). Usage: scripts/fuzz.sh [SECONDS] [TARGET...]
# cargo-fuzz passes nightly -Z flags to rustc; RUSTC_BOOTSTRAP=1 lets the stable toolchain accept them.
# Crashes land in fuzz/artifacts/<target>/; copy a fixed one into proto/tests/malformed/ as a regression input.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds=${1:-60}
shift || true
if ! command -v cargo-fuzz >/dev/null 2>&1; then
  echo "cargo-fuzz not found: installing it (cargo install cargo-fuzz --locked)" >&2
  cargo install cargo-fuzz --locked
fi
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  # (Not `< <(…)`: its failure would go unseen, and no target fuzzed would pass.)
  list=$(RUSTC_BOOTSTRAP=1 cargo fuzz list)
  mapfile -t targets <<<"$list"
  if [ -z "$list" ] || [ ${#targets[@]} -eq 0 ]; then
    echo "cargo fuzz list named no target" >&2
    exit 1
  fi
fi
log=$(mktemp)
trap 'rm -f "$log"' EXIT
for target in "${targets[@]}"; do
  echo "== fuzzing $target for ${seconds}s"
  if ! RUSTC_BOOTSTRAP=1 cargo fuzz run -O "$target" -- -max_total_time="$seconds" >"$log" 2>&1; then
    tail -n 40 "$log" >&2
    echo "fuzz target $target failed (a crash is saved in fuzz/artifacts/$target/)" >&2
    exit 1
  fi
  grep -E '^Done [0-9]+ runs' "$log" || true
done
