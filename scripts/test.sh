#!/usr/bin/env bash
# Runs every test of the project. Needs only the Rust toolchain; suites that need more (root, Chromium, node)
# check for it themselves and skip with a loud message, or fail when QUIVER_REQUIRE_ALL=1 (as in CI).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace --locked "$@"
