#!/usr/bin/env bash
# Installs what tarp needs on Debian 12 / Ubuntu (as root): DPDK 22.11 and its headers,
# clang for bindgen, protoc for the gRPC contract, and the tools the tests and demo use
# (Prometheus and promtool for the metrics tests, tmux for `tarpctl top`, DejaVu for the
# perf tool's plots, DPDK's example sources and a C toolchain for its l3fwd reference).
# Idempotent: installs only what is missing.
set -euo pipefail
pkgs=(dpdk dpdk-dev libdpdk-dev clang libclang-dev pkg-config protobuf-compiler
  iproute2 iputils-ping ethtool tcpdump tshark curl socat iperf3 python3 procps shellcheck
  wireguard-go openssl prometheus tmux fonts-dejavu-core dpdk-doc gcc make patch)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
command -v cargo >/dev/null || { echo "setup: cargo not found; install Rust (https://rustup.rs)" >&2; exit 1; }
# The style checks of scripts/test.sh.
for c in clippy rustfmt; do
  cargo "${c/rustfmt/fmt}" --version >/dev/null 2>&1 || rustup component add "$c"
done
# Hugepages are optional (tests and demo run with --no-huge); perf runs are better with them.
if [ "${TARP_HUGEPAGES:-0}" = 1 ]; then
  mountpoint -q /dev/hugepages || mount -t hugetlbfs nodev /dev/hugepages
  echo 512 >/proc/sys/vm/nr_hugepages
fi
echo "setup: ok (DPDK $(pkg-config --modversion libdpdk))"
