# shellcheck shell=bash
# What the namespace tests share: pass/fail bookkeeping, the cleanup trap, and checks
# made as a user would (a UDP request and its reply's source, iperf3, 20 MB transfers).
# Sourced after scripts/lib/topo.sh; needs APPS (tests/apps) and, for blob, BLOB_SHA
# and $TOPO_DIR/blob.

fails=0
pass() { printf '  ok    %s\n' "$*"; }
fail() { printf '  FAIL  %s\n' "$*"; fails=$((fails + 1)); }
cleanup() {
  local rc=$?
  topo_down
  if [ $fails -ne 0 ] || [ $rc -ne 0 ]; then
    echo "--- logs (kept in $TOPO_DIR) ---"
    for f in "$TOPO_DIR"/*.log; do echo "== $f"; tail -n 30 "$f"; done
  else
    rm -rf "$TOPO_DIR"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# expect_reply NAME NS ADDR PORT WANT_SRC WANT_PREFIX: UDP request, check source and body.
expect_reply() {
  local name=$1 n=$2 addr=$3 port=$4 want_src=$5 want=$6 out
  if out=$(nsx "$n" timeout 20 python3 "$APPS/udp_ask.py" "$addr" "$port" "hello-$name" --tries 10); then
    # $out is split into words on purpose: addr port tag message.
    # shellcheck disable=SC2086
    set -- $out
    if [ "$1" = "$want_src" ] && [ "$2" = "$port" ] && [[ "$3 $4" == "$want"* ]]; then
      pass "$name: reply from $1:$2 \"$3 $4\""
    else
      fail "$name: reply $out, want from $want_src:$port starting \"$want\""
    fi
  else
    fail "$name: no reply from $addr:$port"
  fi
}

# wait_listen NS PROTO ADDR:PORT: until a socket listens there (bounded).
wait_listen() {
  local flag=-lnt
  [ "$2" = udp ] && flag=-lnu
  for _ in $(seq 200); do nsx "$1" ss $flag | grep -qF " $3 " && return 0; sleep 0.1; done
  fail "nothing listens on $2 $3 in $1"
}

# iperf_run NAME NS ADDR PORT [-R]: 3 s of iperf3; every second must carry data.
iperf_run() {
  local name=$1 n=$2 addr=$3 port=$4 out
  shift 4
  if ! out=$(nsx "$n" timeout 30 iperf3 -c "$addr" -p "$port" -t 3 -J "$@" 2>&1); then
    fail "iperf3 $name: $(echo "$out" | grep -m1 '"error"' || echo "$out" | tail -3)"
    return
  fi
  if res=$(echo "$out" | python3 -c '
import json, sys
r = json.load(sys.stdin)
per = [i["sum"]["bytes"] for i in r["intervals"]]
if len(per) < 3 or min(per) == 0:
    sys.exit("an interval without data: %s" % per)
print("%.0f Mbit/s, %s" % (r["end"]["sum_received"]["bits_per_second"] / 1e6,
      " ".join("%.1fMB" % (b / 1e6) for b in per)))'); then
    pass "iperf3 $name: $res"
  else
    fail "iperf3 $name: $res"
  fi
}

# blob NAME NS URL: a 20 MB GET and POST whose SHA-256 matches at both ends.
blob() {
  local name=$1 n=$2 url=$3 got
  got=$(nsx "$n" timeout 60 curl -s --max-time 50 "$url" | sha256sum | cut -d' ' -f1)
  if [ "$got" = "$BLOB_SHA" ]; then
    pass "$name: GET 20 MB, SHA-256 matches"
  else
    fail "$name: GET 20 MB, SHA-256 $got, want $BLOB_SHA"
  fi
  got=$(nsx "$n" timeout 60 curl -s --max-time 50 --data-binary @"$TOPO_DIR/blob" "$url" || true)
  if [ "$got" = "$BLOB_SHA" ]; then
    pass "$name: POST 20 MB, the app host's SHA-256 matches"
  else
    fail "$name: POST 20 MB, the app host saw SHA-256 \"$got\", want $BLOB_SHA"
  fi
}
