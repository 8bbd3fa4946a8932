#!/usr/bin/env bash
# Two workers on two RX queues, snapshots swapped 2,000 times a second under traffic:
# every packet forwarded exactly once, per-worker counters sum to the port's, no drops.
# See tests/multicore.py. Usage (root): tests/multicore.sh [path/to/bin/dir]
set -euo pipefail
cd "$(dirname "$0")/.."
exec timeout 600 python3 tests/multicore.py "$(realpath "${1:-target/release}")"
