#!/usr/bin/env bash
# The whole test suite (as root): formatting, lints, unit and golden tests, and the root tests
# that send real packets through real OVS bridges between network namespaces.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace
