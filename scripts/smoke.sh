#!/usr/bin/env bash
# The foundation's "done when" by hand: a release quiver-server on 127.0.0.1:0 with a fresh data directory, and
# `quiver ping --count 200 --json` against it, which must answer every ping. Builds the release binaries first.
set -euo pipefail
cd "$(dirname "$0")/.."
# (The directory cargo says it put them in: a target directory set in cargo's configuration is not ./target.)
server=$(cargo build --workspace --release --locked --message-format=json-render-diagnostics \
    | sed -n 's/.*"executable":"\([^"]*\/quiver-server\)".*/\1/p' | tail -1)
[ -x "$server" ] || { echo "cargo reported no release quiver-server executable" >&2; exit 1; }
bin=$(dirname "$server")
dir=$(mktemp -d)
out="$dir/server.out"
pid=""
# (Set before the server starts: a Ctrl-C in between must not leave it running.)
# (`kill` may fail: the server already reaped. Under `set -e` a failing last command of a list ends the trap.)
trap '[ -z "$pid" ] || kill "$pid" 2>/dev/null || true; rm -rf "$dir"' EXIT
"$bin/quiver-server" --listen 127.0.0.1:0 --data-dir "$dir/data" >"$out" 2>"$dir/server.err" &
pid=$!
for _ in $(seq 100); do
  grep -q '^certificate sha256 ' "$out" && break
  kill -0 "$pid" 2>/dev/null || { cat "$dir/server.err" >&2; exit 1; }
  sleep 0.1
done
addr=$(sed -n 's/^listening on //p' "$out")
if [ -z "$addr" ] || ! grep -q '^certificate sha256 ' "$out"; then
  echo "smoke: the server did not say where it listens within 10 s:" >&2
  cat "$out" "$dir/server.err" >&2
  exit 1
fi
cat "$out"
report=$("$bin/quiver" ping --server "$addr" --data-dir "$dir/data" --count 200 --json)
echo "$report"
echo "$report" | grep -q '"count":200,"lost":0,' || { echo "smoke: not every ping answered" >&2; exit 1; }
kill -TERM "$pid"
for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
if kill -0 "$pid" 2>/dev/null; then echo "smoke: server still running 5 s after SIGTERM" >&2; exit 1; fi
wait "$pid" || { echo "smoke: server exited with status $?" >&2; pid=""; exit 1; }
pid=""
echo "smoke: ok"
