#!/usr/bin/env bash
# Clean `cargo build --release` time and dependency count of a minimal crate using each candidate.
# Each in its own throwaway crate and target dir under data/buildtime (deleted at the end).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=${DATA:-$PWD/data}/buildtime
rm -rf "$ROOT"; mkdir -p "$ROOT"
declare -A DEP=(
  [redb]='redb = "4.6"'
  [fjall]='fjall = "3.1"'
  [rusqlite]='rusqlite = { version = "0.43", features = ["bundled"] }'
)
declare -A USE=(
  [redb]='let _ = redb::Database::create("x.redb");'
  [fjall]='let _ = fjall::Database::builder("x").open();'
  [rusqlite]='let _ = rusqlite::Connection::open_in_memory();'
)
echo "| crate | clean release build s (wall) | cargo tree lines | distinct crates (incl. itself + root) |"
echo "|---|---|---|---|"
for c in redb fjall rusqlite; do
  d="$ROOT/$c"; mkdir -p "$d/src"
  printf '[package]\nname = "bt-%s"\nversion = "0.0.0"\nedition = "2021"\n[workspace]\n[dependencies]\n%s\n' "$c" "${DEP[$c]}" > "$d/Cargo.toml"
  printf 'fn main() { %s }\n' "${USE[$c]}" > "$d/src/main.rs"
  cp Cargo.lock "$d/Cargo.lock"   # same versions as the bench crate
  ( cd "$d" && cargo fetch -q )
  s=$(date +%s.%N)
  ( cd "$d" && cargo build --release -q 2>/dev/null )
  e=$(date +%s.%N)
  lines=$( cd "$d" && cargo tree -e normal,build 2>/dev/null | wc -l )
  distinct=$( cd "$d" && cargo tree -e normal,build --prefix none 2>/dev/null | sed 's/ (\*)//' | sort -u | wc -l )
  printf '| %s | %.0f | %s | %s |\n' "$c" "$(echo "$e - $s" | bc)" "$lines" "$distinct"
done
rm -rf "$ROOT"
