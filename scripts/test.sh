#!/usr/bin/env bash
# Runs every test of the project. Needs only the Rust toolchain; suites that need more (root, Chromium, node)
# check for it themselves and skip with a loud message, or fail when QUIVER_REQUIRE_ALL=1 (as in CI).
set -euo pipefail
cd "$(dirname "$0")/.."
# The crash test (server/tests/crash.rs) SIGKILLs a real server process under load: it uses the release build.
cargo build --release --locked -p quiver-server
export QUIVER_SERVER_BIN="${CARGO_TARGET_DIR:-$PWD/target}/release/quiver-server"
cargo test --workspace --locked "$@"

# The browser client's codec and state machines, against the vectors quiver-proto generates (node's own runner).
if command -v node >/dev/null 2>&1; then
    # (The files named, not the directory: node 21 and later take a directory argument for a glob, and find nothing.)
    echo "== node --test server/web/test/*.test.mjs"
    # Bounded (they take about 25 s): a test awaiting something that never comes fails the run here, with the
    # tests that did finish printed, instead of holding CI to its own limit.
    # (And each test to 60 s, where node has the option: 20.11 and later.)
    per_test=()
    node --help 2>/dev/null | grep -q -- --test-timeout && per_test=(--test-timeout=60000)
    timeout --kill-after=10 600 node --test "${per_test[@]}" server/web/test/*.test.mjs || {
        status=$?
        [ "$status" -ne 124 ] && [ "$status" -ne 137 ] || echo "node --test did not finish within 600 s" >&2
        exit "$status"
    }
elif [ "${QUIVER_REQUIRE_ALL:-0}" = 1 ]; then
    echo "QUIVER_REQUIRE_ALL=1 but node is not installed: the JavaScript client's tests cannot run" >&2
    exit 1
else
    echo "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!" >&2
    echo "!!! SKIPPED the JavaScript client tests: node is not installed" >&2
    echo "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!" >&2
fi
