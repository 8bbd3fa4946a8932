#!/usr/bin/env python3
"""Runs dpdk-testpmd non-interactively on net_pcap -> net_null and measures its rate.

testpmd prints its port statistics every --stats-period (in practice every 2 s on this
VM: its loop sleeps a second and the period check just misses every other time). Each
line is timestamped as it arrives; the rate is the growth of port 1's cumulative
TX-packets between the first statistics block after the warm-up and the first one at
least <duration> seconds later, over wall time. testpmd is started here and stopped by
its PID (SIGINT, then SIGKILL after 10 s); everything is bounded in time.

Writes <out>.log (timestamped output) and <out>.json (the figures).
"""

import argparse
import json
import os
import re
import select
import signal
import subprocess
import sys
import time


def worker_tid(pid):
    try:
        for t in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{t}/comm") as f:
                if f.read().strip() in ("rte-worker-1", "lcore-worker-1"):
                    return t
    except OSError:
        pass
    return None


def schedstat(pid, tid):
    try:
        with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
            return int(f.read().split()[0])
    except (OSError, TypeError, ValueError):
        return None


def stop(proc):
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default="/usr/bin/dpdk-testpmd")
    ap.add_argument("--mode", required=True, help="forwarding mode: io, 5tswap, macswap, ...")
    ap.add_argument("--pcap", required=True)
    ap.add_argument("--warmup", type=float, default=2)
    ap.add_argument("--duration", type=float, default=10)
    ap.add_argument("--out", required=True, help="path prefix for .log and .json")
    ap.add_argument("--eal", default="", help="EAL memory arguments, space-separated")
    a = ap.parse_args()

    cmd = ["stdbuf", "-oL", a.bin, "-l", "0-1", "--main-lcore", "0", *a.eal.split(), "--no-pci",
           "--vdev", f"net_pcap0,rx_pcap={a.pcap},infinite_rx=1", "--vdev", "net_null0,no-rx=1",
           "--", f"--forward-mode={a.mode}", "--stats-period=1", "--nb-cores=1", "--rxq=1", "--txq=1",
           "--burst=32", "--rxd=1024", "--txd=1024", "--total-num-mbufs=16383", "--mbcache=256",
           "--no-flush-rx"]
    res = {"mode": a.mode, "command": " ".join(cmd[2:])}
    log = open(a.out + ".log", "w")
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + a.warmup + a.duration + 45
    port, samples, first, start, end = None, [], None, None, None
    tid, run0 = None, None
    buf = b""
    try:
        while time.time() < deadline and end is None:
            r, _, _ = select.select([proc.stdout], [], [], 0.5)
            if not r:
                if proc.poll() is not None:
                    break
                continue
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                break
            buf += chunk
            now = time.time()
            *lines, buf = buf.split(b"\n")
            for raw in lines:
                line = raw.decode(errors="replace")
                log.write(f"{now:.3f} {line}\n")
                m = re.search(r"NIC statistics for port (\d+)", line)
                if m:
                    port = int(m.group(1))
                    continue
                m = re.search(r"TX-packets:\s+(\d+)", line)
                if m and port == 1:
                    tx = int(m.group(1))
                    samples.append((now, tx))
                    if first is None and tx > 0:
                        first = now
                    if first is not None and start is None and now >= first + a.warmup:
                        start = (now, tx)
                        tid = worker_tid(proc.pid)
                        run0 = schedstat(proc.pid, tid)
                    elif start is not None and now >= start[0] + a.duration:
                        end = (now, tx)
                        run1 = schedstat(proc.pid, tid)
                        if run0 is not None and run1 is not None:
                            res["worker_cpu_share"] = round((run1 - run0) / ((end[0] - start[0]) * 1e9), 3)
                    port = None
    finally:
        stop(proc)
        rest = proc.stdout.read() if proc.stdout else b""
        for raw in (buf + rest).split(b"\n"):
            log.write(f"{time.time():.3f} {raw.decode(errors='replace')}\n")
        log.close()

    if start and end and end[0] > start[0]:
        mpps = (end[1] - start[1]) / (end[0] - start[0]) / 1e6
        res["mpps"] = round(mpps, 3)
        res["ns_per_pkt"] = round(1e3 / mpps, 1) if mpps > 0 else None
        res["window_s"] = round(end[0] - start[0], 3)
        window = [s for s in samples if start[0] <= s[0] <= end[0]]
        res["interval_mpps"] = [
            round((b[1] - a_[1]) / (b[0] - a_[0]) / 1e6, 3) for a_, b in zip(window, window[1:]) if b[0] > a_[0]
        ]
        if res.get("worker_cpu_share"):
            res["mpps_per_cpu_second"] = round(mpps / res["worker_cpu_share"], 3)
    else:
        res["error"] = f"no measurement window (see {a.out}.log)"
    with open(a.out + ".json", "w") as f:
        json.dump(res, f, indent=2)
    print(f"testpmd {a.mode}: " + (f"{res['mpps']:.2f} Mpps" if "mpps" in res else res["error"]), file=sys.stderr)
    return 0 if "mpps" in res else 1


if __name__ == "__main__":
    sys.exit(main())
