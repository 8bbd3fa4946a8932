#!/usr/bin/env python3
"""Turns the raw files of a perf run (perf/results/work) into a table and a JSON file.

tarp: metrics scrapes <role>.tarp/<k>.prom with <k>.meta = "epoch run_ns wait_ns" of the
worker thread (from /proc/.../schedstat). Mpps = packets tarp forwarded out of port 1
(tarp_port_tx_packets_total) over the window, divided by wall time.
testpmd: <role>.testpmd-<mode>.json, written by testpmd.py (port 1's TX-packets growth
over the window, by wall time).
"""

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import time

PROM = re.compile(r'^([a-z_]+)\{([^}]*)\}\s+(\S+)$')


def parse_prom(path):
    out = {}
    with open(path) as f:
        for line in f:
            m = PROM.match(line.strip())
            if not m:
                continue
            labels = dict(kv.split("=", 1) for kv in re.findall(r'[a-z_]+="[^"]*"', m.group(2)))
            labels = {k: v.strip('"') for k, v in labels.items()}
            out.setdefault(m.group(1), []).append((labels, float(m.group(3))))
    return out


def metric(prom, name, **want):
    total = 0.0
    for labels, v in prom.get(name, []):
        if all(labels.get(k) == v2 for k, v2 in want.items()):
            total += v
    return total


def by_label(prom, name, key):
    out = {}
    for labels, v in prom.get(name, []):
        out[labels.get(key, "")] = out.get(labels.get(key, ""), 0) + v
    return out


def read_meta(path):
    with open(path) as f:
        return [tuple(float(x) for x in line.split()) for line in f if line.strip()]


def cpu_share(m0, m1):
    """Fraction of wall time the worker thread ran on a CPU (schedstat run time)."""
    wall = (m1[0] - m0[0]) * 1e9
    return (m1[1] - m0[1]) / wall if wall > 0 and m1[1] > 0 else None


def port_names(prom):
    """Port names in order of appearance: port 0 (input), port 1 (output)."""
    seen = []
    for labels, _ in prom.get("tarp_port_rx_packets_total", []):
        if labels["port"] not in seen:
            seen.append(labels["port"])
    return seen


def tarp_result(work, role, duration):
    d = os.path.join(work, f"{role}.tarp")
    if not os.path.isdir(d):
        return None
    ks = sorted(int(f[:-5]) for f in os.listdir(d) if f.endswith(".prom"))
    samples = []
    for k in ks:
        meta = read_meta(os.path.join(d, f"{k}.meta"))[0]
        samples.append((meta, parse_prom(os.path.join(d, f"{k}.prom"))))
    samples = [s for s in samples if s[1]]
    if len(samples) < 2:
        return {"error": "fewer than two metrics scrapes"}
    (m0, p0), (m1, p1) = samples[0], samples[-1]
    names = port_names(p1)
    pin, pout = names[0], names[1]
    dt = m1[0] - m0[0]
    rx = metric(p1, "tarp_port_rx_packets_total", port=pin) - metric(p0, "tarp_port_rx_packets_total", port=pin)
    tx = metric(p1, "tarp_port_tx_packets_total", port=pout) - metric(p0, "tarp_port_tx_packets_total", port=pout)
    d1, d0 = by_label(p1, "tarp_port_drops_total", "reason"), by_label(p0, "tarp_port_drops_total", "reason")
    drops = {r: int(d1[r] - d0.get(r, 0)) for r in d1 if d1[r] - d0.get(r, 0) > 0}
    drops_since_start = {r: int(v) for r, v in d1.items() if v > 0}
    slow = metric(p1, "tarp_port_slow_path_packets_total") - metric(p0, "tarp_port_slow_path_packets_total")
    nombuf = metric(p1, "tarp_device_rx_nombuf_total") - metric(p0, "tarp_device_rx_nombuf_total")
    dev_tx = metric(p1, "tarp_device_tx_packets_total", port=pout) - metric(p0, "tarp_device_tx_packets_total", port=pout)
    intervals = []
    for (ma, pa), (mb, pb) in zip(samples, samples[1:]):
        t = mb[0] - ma[0]
        n = metric(pb, "tarp_port_tx_packets_total", port=pout) - metric(pa, "tarp_port_tx_packets_total", port=pout)
        if t > 0:
            intervals.append(round(n / t / 1e6, 3))
    mpps = tx / dt / 1e6
    share = cpu_share(m0, m1)
    return {
        "mpps": round(mpps, 3),
        "rx_mpps": round(rx / dt / 1e6, 3),
        "ns_per_pkt": round(1e3 / mpps, 1) if mpps > 0 else None,
        "window_s": round(dt, 3),
        "rx_packets": int(rx),
        "tx_packets": int(tx),
        "device_tx_packets": int(dev_tx),
        "drops": drops,
        "drops_since_start": drops_since_start,
        "slow_path_packets": int(slow),
        "rx_nombuf": int(nombuf),
        "interval_mpps": intervals,
        "interval_mpps_min_median_max": [min(intervals), round(statistics.median(intervals), 3), max(intervals)]
        if intervals
        else None,
        "worker_cpu_share": round(share, 3) if share is not None else None,
        "mpps_per_cpu_second": round(mpps / share, 3) if share else None,
        "ports": {"in": pin, "out": pout},
    }


def testpmd_result(work, role, mode):
    """What testpmd.py measured (<role>.testpmd-<mode>.json)."""
    path = os.path.join(work, f"{role}.testpmd-{mode}.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        res = json.load(f)
    iv = res.get("interval_mpps")
    if iv:
        res["interval_mpps_min_median_max"] = [min(iv), round(statistics.median(iv), 3), max(iv)]
    return res


def frame_len(pcap):
    try:
        with open(pcap, "rb") as f:
            f.seek(24 + 8)
            return int.from_bytes(f.read(4), "little")
    except OSError:
        return None


def sh(*cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip()
    except Exception:
        return ""


def fmt(v, spec="{:.2f}"):
    return "-" if v is None else spec.format(v)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", required=True)
    ap.add_argument("--roles", required=True)
    ap.add_argument("--duration", type=int, required=True)
    ap.add_argument("--warmup", type=int, required=True)
    ap.add_argument("--circuits", type=int, required=True)
    ap.add_argument("--flows", type=int, required=True)
    ap.add_argument("--memory", required=True)
    ap.add_argument("--eal", default="")
    ap.add_argument("--load-start", default="")
    ap.add_argument("--load-end", default="")
    ap.add_argument("--elapsed", type=int, default=0)
    ap.add_argument("--bin", default="")
    ap.add_argument("--repo", default=".")
    ap.add_argument("--json", required=True)
    a = ap.parse_args()

    roles = {}
    for role in a.roles.split():
        t = tarp_result(a.work, role, a.duration)
        io = testpmd_result(a.work, role, "io")
        sw = testpmd_result(a.work, role, "5tswap")
        r = {"frame_bytes": frame_len(os.path.join(a.work, f"{role}.pcap")), "tarp": t, "testpmd_io": io, "testpmd_5tswap": sw}
        if t and sw and t.get("mpps") and sw.get("mpps"):
            r["tarp_pct_of_5tswap"] = round(100 * t["mpps"] / sw["mpps"], 1)
        if t and io and t.get("mpps") and io.get("mpps"):
            r["tarp_pct_of_io"] = round(100 * t["mpps"] / io["mpps"], 1)
            # Per-packet cost of tarp's own work beyond what testpmd io spends on the
            # same RX (pcap replay copy) and TX (null free).
            r["tarp_extra_ns_per_pkt_over_io"] = round(t["ns_per_pkt"] - io["ns_per_pkt"], 1)
        prof = os.path.join(a.work, f"{role}.profile.txt")
        if os.path.exists(prof):
            r["profile_top"] = [l.rstrip() for l in open(prof) if l.strip()]
        roles[role] = r

    cpu = ""
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    rev = sh("git", "-C", a.repo, "rev-parse", "--short", "HEAD")
    dirty = bool(sh("git", "-C", a.repo, "status", "--porcelain", "--", "forwarder", "dpdk-sys", "api"))
    doc = {
        "generated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "git": {"rev": rev, "forwarder_tree_dirty": dirty},
        "binary": {"path": a.bin, "mtime": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(os.path.getmtime(a.bin))) if a.bin and os.path.exists(a.bin) else None},
        "host": {
            "cpu": cpu,
            "cpus": os.cpu_count(),
            "kernel": platform.release(),
            "dpdk": sh("pkg-config", "--modversion", "libdpdk"),
            "loadavg_start": a.load_start,
            "loadavg_end": a.load_end,
        },
        "params": {
            "duration_s": a.duration,
            "warmup_s": a.warmup,
            "circuits": a.circuits,
            "flows": a.flows,
            "memory": a.memory,
            "eal_args": a.eal,
            "worker_lcores": [1],
            "main_lcore": 0,
            "burst": 32,
            "input": "net_pcap0,rx_pcap=<role>.pcap,infinite_rx=1",
            "output": "net_null0,no-rx=1",
        },
        "elapsed_s": a.elapsed,
        "roles": roles,
    }
    os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
    with open(a.json, "w") as f:
        json.dump(doc, f, indent=2)
        f.write("\n")
    stamped = os.path.join(os.path.dirname(os.path.abspath(a.json)), time.strftime("run-%Y%m%d-%H%M%S.json"))
    with open(stamped, "w") as f:
        json.dump(doc, f, indent=2)
        f.write("\n")

    # Table.
    hdr = ["role", "frame", "tarp Mpps/core", "ns/pkt", "testpmd io Mpps", "testpmd 5tswap Mpps", "tarp % of 5tswap", "tarp drops", "worker CPU% tarp/io/5t"]
    rows = []
    warn = []
    for role, r in roles.items():
        t, io, sw = r["tarp"] or {}, r["testpmd_io"] or {}, r["testpmd_5tswap"] or {}
        drops = sum(t.get("drops", {}).values()) if t else None
        cpus = "/".join(fmt(x.get("worker_cpu_share") and 100 * x["worker_cpu_share"], "{:.0f}") for x in (t, io, sw))
        rows.append([
            role,
            f"{r['frame_bytes']}+4",
            fmt(t.get("mpps")),
            fmt(t.get("ns_per_pkt"), "{:.1f}"),
            fmt(io.get("mpps")),
            fmt(sw.get("mpps")),
            fmt(r.get("tarp_pct_of_5tswap"), "{:.0f}%"),
            "-" if drops is None else str(drops),
            cpus,
        ])
        if t and t.get("drops"):
            warn.append(f"{role}: tarp dropped {t['drops']} during the window")
        if t and t.get("tx_packets") and t.get("rx_packets") and abs(t["tx_packets"] - t["rx_packets"]) > 0.001 * t["rx_packets"] + 1000:
            warn.append(f"{role}: tarp rx {t['rx_packets']} != tx {t['tx_packets']}")
        for name, x in (("tarp", t), ("testpmd io", io), ("testpmd 5tswap", sw)):
            if x.get("error"):
                warn.append(f"{role}: {name}: {x['error']}")
            if x.get("worker_cpu_share") is not None and x["worker_cpu_share"] < 0.95:
                warn.append(f"{role}: {name}'s worker was on a CPU only {100 * x['worker_cpu_share']:.0f}% of the window (other load on the machine)")
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(hdr)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"
    print()
    print(f"tarp perf: {a.circuits} circuits, {a.flows} flows, 1 worker core, {a.duration}s after {a.warmup}s warm-up, memory={a.memory}, load {a.load_start} -> {a.load_end}")
    print(line(hdr))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print(line(row))
    for role, r in roles.items():
        if r.get("profile_top"):
            print(f"\n{role}: top symbols of the tarp worker (perf record -e cpu-clock)")
            for l in r["profile_top"]:
                print("   " + l)
    for w in warn:
        print("WARNING: " + w)
    print(f"\nwrote {a.json} (and {os.path.basename(stamped)}); raw files in {a.work}; {a.elapsed}s")


if __name__ == "__main__":
    main()
