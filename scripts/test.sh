#!/usr/bin/env bash
# The whole test suite (as root): formatting, lints, unit and golden tests, and the root tests
# that send real packets through real OVS bridges between network namespaces.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
# Kubernetes' own binaries for the API-server tests, built once from pinned sources and cached
# outside the clone (slow only on a cold machine; see e2e/README.md).
bash e2e/k8s-bin.sh >/dev/null
cargo test --workspace
# A real single-node Kubernetes cluster on this machine (e2e/local-cluster.sh): helm install of
# the chart with a locally built image, pods and a VM sandbox reached by real packets from an
# outside peer. After the other tests; a missing prerequisite is named and the step skipped.
bash e2e/local-cluster.sh ci
