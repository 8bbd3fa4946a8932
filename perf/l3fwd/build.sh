#!/usr/bin/env bash
# Builds DPDK's own L3 forwarder (examples/l3fwd, from Debian's dpdk-doc) as the perf
# tool's reference: a lookup-and-rewrite data plane written by DPDK, measured on the same
# vdevs and traffic as tarp. vdev.patch makes it run on net_pcap and net_null (it asks
# for RX checksum offloads they do not have, and for too few mbufs for net_pcap's
# infinite_rx); its forwarding code is untouched.
#
#   perf/l3fwd/build.sh OUT_DIR     -> OUT_DIR/l3fwd/build/l3fwd
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
OUT=${1:?usage: build.sh OUT_DIR}
SRC=/usr/share/dpdk/examples
[ -f "$SRC/l3fwd/main.c" ] || { echo "l3fwd: $SRC/l3fwd not found (apt-get install dpdk-doc)" >&2; exit 1; }
rm -rf "$OUT"
mkdir -p "$OUT"
cp -r "$SRC/l3fwd" "$SRC/common" "$OUT/"
patch -s -d "$OUT/l3fwd" -p1 <"$HERE/vdev.patch"
make -s -C "$OUT/l3fwd" >"$OUT/make.log" 2>&1 || { tail -20 "$OUT/make.log" >&2; exit 1; }
echo "$OUT/l3fwd/build/l3fwd"
