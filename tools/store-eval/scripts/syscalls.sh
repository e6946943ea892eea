#!/usr/bin/env bash
# Count sync syscalls per group commit (batch of 100) for each config, with strace -f -c.
# Per batch = (count after N batches - count after 0 batches) / N.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q
BIN=./target/release/store-eval
DATA=${DATA:-$PWD/data}
N=200
mkdir -p "$DATA"
count() { # spec n -> "fsync fdatasync"
  local out="$DATA/strace.txt"
  strace -f -c -o "$out" -e trace=fsync,fdatasync,msync,sync_file_range "$BIN" probe "$1" 100 "$2" "$DATA/probe" >/dev/null
  local fs fds
  fs=$(awk '$NF=="fsync"{print $4}' "$out"); fds=$(awk '$NF=="fdatasync"{print $4}' "$out")
  echo "${fs:-0} ${fds:-0}"
}
echo "| config | fsync per batch | fdatasync per batch |"
echo "|---|---|---|"
for spec in redb:immediate redb:2pc redb:quick-repair redb:none fjall:sync-all fjall:sync-data fjall:buffer sqlite:full sqlite:normal sqlite:off; do
  read -r f0 d0 < <(count "$spec" 0)
  read -r f1 d1 < <(count "$spec" $N)
  awk -v s="$spec" -v f0="$f0" -v f1="$f1" -v d0="$d0" -v d1="$d1" -v n=$N \
    'BEGIN{printf "| %s | %.2f | %.2f |\n", s, (f1-f0)/n, (d1-d0)/n}'
done
rm -rf "$DATA/probe" "$DATA/strace.txt"
