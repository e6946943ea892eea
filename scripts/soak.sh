#!/usr/bin/env bash
# Soak: churns ever-new rooms, channels and connections (`quiver churn`) against a release server for a bounded
# time, samples the server's resident memory every 10 s, and says whether it plateaued (docs/security.md, "Soak").
# Usage: scripts/soak.sh [SECONDS]   (default 180; at most 3600)
# Fails when the RSS grew more than 10 % over the second half of the run.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-180}
if ! [[ "$secs" =~ ^[0-9]+$ ]] || ((secs < 20 || secs > 3600)); then
    echo "usage: scripts/soak.sh [SECONDS between 20 and 3600]" >&2
    exit 2
fi
echo "== building release binaries"
cargo build --release --locked -q -p quiver-server -p quiver-cli
dir=$(mktemp -d)
server_pid=""
churn_pid=""
# What the churn and the server said, before the directory goes: a failure's reasons are in them.
show_logs() {
    echo "-- quiver churn's output:" >&2
    cat "$dir/churn.out" >&2 2>/dev/null || true
    echo "-- the server's last log lines:" >&2
    tail -n 20 "$dir/server.err" >&2 2>/dev/null || true
}
cleanup() {
    [ -n "$churn_pid" ] && kill "$churn_pid" 2>/dev/null || true
    [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$dir"
}
trap cleanup EXIT

./target/release/quiver-server --listen 127.0.0.1:0 --no-web --data-dir "$dir" >"$dir/server.out" 2>"$dir/server.err" &
server_pid=$!
addr=""
for _ in $(seq 100); do
    addr=$(sed -n 's/^listening on //p' "$dir/server.out")
    [ -n "$addr" ] && break
    sleep 0.1
done
[ -n "$addr" ] || { echo "the server did not start:" >&2; cat "$dir/server.err" >&2; exit 1; }

rss_kib() {
    if ! kill -0 "$server_pid" 2>/dev/null; then
        echo "the server (pid $server_pid) is gone" >&2
        show_logs
        exit 1
    fi
    awk '/^VmRSS/ {print $2}' "/proc/$server_pid/status"
}
mib() { awk -v k="$1" 'BEGIN {printf "%.1f", k / 1024}'; }

start=$(rss_kib)
echo "== server $addr (pid $server_pid): RSS at start $(mib "$start") MiB; churning for $secs s"
./target/release/quiver churn --server "$addr" --data-dir "$dir" --duration "$secs" --workers 4 >"$dir/churn.out" &
churn_pid=$!

samples=()
elapsed=0
while kill -0 "$churn_pid" 2>/dev/null && ((elapsed < secs + 30)); do
    sleep 10
    elapsed=$((elapsed + 10))
    rss=$(rss_kib)
    samples+=("$rss")
    echo "  t=${elapsed}s RSS $(mib "$rss") MiB"
done
if kill -0 "$churn_pid" 2>/dev/null; then
    # (The churn ends by itself 10 s after its duration; one still running 30 s after it is stuck.)
    echo "quiver churn still running $((elapsed - secs)) s after its duration: stopping it" >&2
    kill "$churn_pid" 2>/dev/null || true
    wait "$churn_pid" 2>/dev/null || true
    show_logs
    exit 1
fi
wait "$churn_pid" || { echo "quiver churn failed" >&2; show_logs; exit 1; }
churn_pid=""
cat "$dir/churn.out"

end=$(rss_kib)
half=${samples[$(((${#samples[@]} - 1) / 2))]}
max=$(printf '%s\n' "${samples[@]}" "$end" | sort -n | tail -1)
echo "== RSS: start $(mib "$start") MiB, half-way $(mib "$half") MiB, end $(mib "$end") MiB, max $(mib "$max") MiB"
kill -TERM "$server_pid"
if ! wait "$server_pid"; then
    echo "the server did not exit cleanly on SIGTERM" >&2
    server_pid=""
    show_logs
    exit 1
fi
server_pid=""
sed 's/\x1b\[[0-9;]*m//g' "$dir/server.err" | grep -o 'stats=.*' | tail -1 || true
if ((end * 10 > half * 11)); then
    echo "== NO PLATEAU: the RSS grew more than 10 % over the second half of the run" >&2
    exit 1
fi
echo "== plateau: the RSS grew less than 10 % over the second half of the run"
