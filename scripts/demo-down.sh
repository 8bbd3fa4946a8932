#!/usr/bin/env bash
# Tears down a demo left running with `scripts/demo.sh --keep`: stops its processes by
# the PIDs it recorded and removes its namespaces.
set -euo pipefail
cd "$(dirname "$0")/.."
P=${DEMO_PREFIX:-td}
TOPO_DIR=${DEMO_DIR:-/tmp/tarp-demo}
export P TOPO_DIR
source scripts/lib/topo.sh
NS_ALL=(deu dus inet app1 app2 dc ctl pop-eu pop-us dc-dmx dc-rmx)
topo_down
echo "demo: torn down"
