#!/bin/sh
# The head-to-head of docs/benchmarks.md: Quiver against WebSocket over TCP through the netns emulator, one run per
# profile (root, Linux). Writes docs/bench/h2h/<profile>.json and .png, and prints the Markdown table.
# Usage: sudo scripts/h2h.sh [seconds per run, default 20]
set -eu
cd "$(dirname "$0")/.."
seconds=${1:-20}
quiver=${QUIVER:-target/release/quiver}
[ -x "$quiver" ] || cargo build --release -p quiver-cli
out=docs/bench/h2h
mkdir -p "$out"
header=1
for profile in clean delay-20 lossy-1-20 lossy-5-20 burst-20; do
    "$quiver" bench rtt --compare websocket --netns --profile "$profile" --duration "$seconds" \
        --json "$out/$profile.json" --plot "$out/$profile.png" --markdown "$profile" > "$out/$profile.txt"
    if [ $header = 1 ]; then grep '^|' "$out/$profile.txt"; header=0; else grep "^| $profile |" "$out/$profile.txt"; fi
done
