#!/usr/bin/env bash
# The whole test suite (as root: DPDK and network namespaces need it):
# style (rustfmt, clippy, shellcheck; clippy also on the pure-Rust forwarder), unit, golden,
# property and no-panic tests, DPDK tests on virtual devices, the keeper's gRPC tests,
# two workers under table swaps, a smoke run of the perf tool, then the end-to-end run
# in network namespaces, WireGuard (with Debian's wireguard-go),
# the fault tests with traffic flowing, observability (a real Prometheus scraping the
# fleet, promtool), and the demo in --check mode.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "test: run as root (DPDK and network namespaces need it)" >&2; exit 1; }
bash scripts/setup.sh
echo "== style: rustfmt, shellcheck"
cargo fmt --all --check
mapfile -t scripts < <(git ls-files '*.sh' .ci/run)
shellcheck -x -P SCRIPTDIR "${scripts[@]}"
echo "== style: clippy (every crate and target, warnings are errors)"
cargo clippy --release --workspace --all-targets -- -D warnings
echo "== style: clippy on the pure-Rust forwarder (no DPDK: what the benches build)"
cargo clippy --release -p tarp-forwarder --no-default-features --all-targets -- -D warnings
echo "== build"
cargo build --release --workspace --bins
echo "== cargo test"
cargo test --release --workspace
echo "== two workers on two RX queues, snapshots swapped under traffic: each packet exactly once"
bash tests/multicore.sh target/release
echo "== perf tool smoke run (a few seconds, small tables; figures printed, not asserted)"
SMOKE=$(mktemp -d /tmp/tarp-perf-smoke.XXXXXX)
bash perf/run.sh --suite smoke --out "$SMOKE"
rm -rf "$SMOKE"
echo "== end to end (network namespaces, DPDK af_packet)"
bash tests/e2e.sh target/release
echo "== WireGuard: tarp to tarp, interop with wireguard-go both ways, tampering dropped and counted"
bash tests/wg.sh target/release
echo "== faults with traffic flowing (aggregator cut off, keeper and aggregator kill -9, a flapping line)"
bash tests/faults.sh target/release
echo "== observability: health, readiness, a real Prometheus scraping the fleet (PromQL counts = traffic sent), promtool"
bash tests/observe.sh target/release
echo "== the demo, bounded and checked (keeper, tarpctl, bounce, keeper kill -9)"
bash scripts/demo.sh --check --no-build
echo "test: all passed"
