#!/usr/bin/env bash
# Runs every test of the project. Needs only the Rust toolchain; suites that need more (root, Chromium, node)
# check for it themselves and skip with a loud message, or fail when QUIVER_REQUIRE_ALL=1 (as in CI).
set -euo pipefail
cd "$(dirname "$0")/.."
# The crash test (server/tests/crash.rs) SIGKILLs a real server process under load: it uses the release build.
# (Where cargo says it put it: a target directory set in cargo's configuration, or a relative CARGO_TARGET_DIR, is
# not ./target.)
QUIVER_SERVER_BIN=$(cargo build --release --locked -p quiver-server --message-format=json-render-diagnostics \
    | sed -n 's/.*"executable":"\([^"]*\/quiver-server\)".*/\1/p' | tail -1)
[ -x "$QUIVER_SERVER_BIN" ] || { echo "cargo reported no release quiver-server executable" >&2; exit 1; }
export QUIVER_SERVER_BIN

# Runs a step bounded to $1 seconds where nobody is at a terminal to stop it (CI): a test that hangs then fails the
# run, with what did finish printed (and cargo naming a test "running for over 60 seconds"), instead of holding CI
# to its own limit. At a terminal the step runs as it is, so that Ctrl-C reaches it (timeout(1) puts it in a process
# group of its own). (A browser test's Chromium, in a process group of its own too, is killed by a watchdog shell
# when the test process goes: tests/browser.rs.)
bounded() {
    local seconds=$1 status=0
    shift
    if [ -t 0 ] || [ -t 1 ] || [ -t 2 ]; then
        "$@"
        return
    fi
    timeout --kill-after=30 "$seconds" "$@" || status=$?
    if [ "$status" -eq 124 ] || [ "$status" -eq 137 ]; then
        echo "$1 $2 did not finish within $seconds s" >&2
    fi
    return "$status"
}

# (Builds and all, about 12 minutes here.)
bounded 2700 cargo test --workspace --locked "$@"
# The client library as a game links it: the workspace's build unifies features, and other crates turn on its
# `websocket` feature, so its default build is tested on its own too (its unit tests: about 15 s with the build).
bounded 600 cargo test -p quiver-client --locked --lib

# The browser client's codec and state machines, against the vectors quiver-proto generates (node's own runner).
if command -v node >/dev/null 2>&1; then
    # (The files named, not the directory: node 21 and later take a directory argument for a glob, and find nothing.)
    echo "== node --test server/web/test/*.test.mjs"
    # (They take about 25 s. Each test bounded to 60 s too, where node has the option: 20.11 and later.)
    per_test=()
    node --help 2>/dev/null | grep -q -- --test-timeout && per_test=(--test-timeout=60000)
    bounded 600 node --test ${per_test[@]+"${per_test[@]}"} server/web/test/*.test.mjs
elif [ "${QUIVER_REQUIRE_ALL:-0}" = 1 ]; then
    echo "QUIVER_REQUIRE_ALL=1 but node is not installed: the JavaScript client's tests cannot run" >&2
    exit 1
else
    echo "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!" >&2
    echo "!!! SKIPPED the JavaScript client tests: node is not installed" >&2
    echo "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!" >&2
fi
