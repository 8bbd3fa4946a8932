#!/usr/bin/env bash
# The whole test suite (as root: DPDK and network namespaces need it):
# unit, golden, property and no-panic tests, DPDK tests on virtual devices, the keeper's
# gRPC tests, then the end-to-end run in network namespaces.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "test: run as root (DPDK and network namespaces need it)" >&2; exit 1; }
bash scripts/setup.sh
echo "== build"
cargo build --release --workspace --bins
echo "== cargo test"
cargo test --release --workspace
echo "== end to end (network namespaces, DPDK af_packet)"
bash tests/e2e.sh target/release
echo "== the demo, bounded and checked (keeper, tarpctl, bounce, keeper kill -9)"
bash scripts/demo.sh --check --no-build
echo "test: all passed"
