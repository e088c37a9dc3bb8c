#!/usr/bin/env bash
# One command on a fresh Debian 12 machine (as root): install the dependencies, build
# portiso and portiso-cni, and run the demo on a throwaway node in network namespaces.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cargo build --release --workspace
./target/release/portiso demo
