#!/usr/bin/env python3
"""tarp's perf tool: Mpps per core for each role against table size, traffic spread and
frame sizes, latency, live table swaps, memory and cores, side by side with dpdk-testpmd
on the same virtual devices and the same traffic. Run through perf/run.sh (see
perf/README.md); writes <out>/results.json, results.md and mpps.png.

Every tarp figure comes from a real tarp-forwarder process: port 0 is net_pcap replaying
generated frames (infinite_rx, one file per RX queue), port 1 is net_null. Before a
configuration is measured, the same forwarder replays a sample of the same frames once
into net_pcap files and every frame it forwarded is checked against the rules (gen.py
verify): a fast wrong answer is not reported.
"""

import argparse
import glob
import json
import os
import platform
import re
import select
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import gen  # noqa: E402

ROLES = list(gen.ROLES)
PROM = re.compile(r'^([a-z_]+)(?:\{([^}]*)\})?\s+(\S+)$')
SUITES = ("sizes", "imix", "swaps", "cores", "smoke")
SAMPLE = 4096  # frames of each queue's file replayed once and checked


def log(msg):
    print(f"[perf {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---- processes: every one started here is stopped here, by PID ------------------------
STARTED = []


def start(cmd, logpath, env=None):
    f = open(logpath, "w")
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT,
                         start_new_session=True, env=env)
    p._log = f
    STARTED.append(p)
    return p


def stop(p, timeout=15):
    if p.poll() is None:
        p.send_signal(signal.SIGINT)
        try:
            p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=10)
    p._log.close()
    if p in STARTED:
        STARTED.remove(p)
    return p.returncode


def stop_all():
    for p in list(STARTED):
        stop(p)


# ---- reading a forwarder ---------------------------------------------------------------
def http(url, data=None, timeout=3):
    req = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.status, r.read().decode()


def scrape(base):
    out = {}
    _, text = http(base + "/metrics")
    for line in text.splitlines():
        m = PROM.match(line.strip())
        if not m:
            continue
        labels = dict(re.findall(r'([a-z_]+)="([^"]*)"', m.group(2) or ""))
        out.setdefault(m.group(1), []).append((labels, float(m.group(3))))
    return out


def msum(prom, name, **want):
    return sum(v for labels, v in prom.get(name, []) if all(labels.get(k) == w for k, w in want.items()))


def by_label(prom, name, key):
    out = {}
    for labels, v in prom.get(name, []):
        out[labels.get(key, "")] = out.get(labels.get(key, ""), 0) + v
    return out


def worker_tids(pid, names=("rte-worker-", "lcore-worker-")):
    tids = {}
    for t in glob.glob(f"/proc/{pid}/task/*"):
        try:
            comm = open(t + "/comm").read().strip()
        except OSError:
            continue
        for n in names:
            if comm.startswith(n):
                tids[int(comm[len(n):])] = os.path.basename(t)
    return tids


def run_ns(pid, tid):
    try:
        return int(open(f"/proc/{pid}/task/{tid}/schedstat").read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def memory(pid):
    """Resident memory (VmRSS, VmHWM) and hugepage memory mapped by the process, in MB."""
    m = {}
    try:
        for line in open(f"/proc/{pid}/status"):
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM"):
                m[k] = round(int(v.split()[0]) / 1024, 1)
        huge = 0
        for line in open(f"/proc/{pid}/smaps_rollup"):
            if line.startswith(("Private_Hugetlb:", "Shared_Hugetlb:")):
                huge += int(line.split()[1])
        m["hugetlb_mb"] = round(huge / 1024, 1)
    except OSError:
        pass
    return {"rss_mb": m.get("VmRSS"), "peak_rss_mb": m.get("VmHWM"), "hugepages_mb": m.get("hugetlb_mb")}


# ---- one configuration ------------------------------------------------------------------
class Env:
    def __init__(self, a):
        self.a = a
        self.work = os.path.join(a.out, "work")
        self.bin = a.bin
        self.testpmd = a.testpmd
        self.l3fwd = a.l3fwd
        self.port = a.metrics_port
        self.base = f"http://127.0.0.1:{self.port}"
        self.eal = a.eal
        self.rules_cache = {}

    def rules(self, role, n):
        """The rules file of (role, N), generated once per run."""
        key = (role, n)
        if key not in self.rules_cache:
            path = os.path.join(self.work, f"{role}-{n}.rules.json")
            gen.write_rules(path, role, gen.Circuits(n, role))
            self.rules_cache[key] = path
        return self.rules_cache[key]


def flows_for(n, smoke):
    if smoke:
        return min(max(n, 256), 1024)
    return min(max(n, 4096), 131072)


def lcores_for(workers):
    """(forwarder worker lcores, extra EAL arguments). One worker: lcore 1 (the control
    thread on 0). Two on a two-CPU machine: lcores 1 and 2, with 2 sharing CPU 0 with
    the control thread (it sleeps when idle)."""
    if workers == 1:
        return [1], []
    cpus = os.cpu_count() or 1
    if cpus > workers:
        return list(range(1, workers + 1)), []
    mapping = ",".join(["0@0"] + [f"{w}@{w % cpus}" for w in range(1, workers + 1)])
    return list(range(1, workers + 1)), [f"--lcores={mapping}"]


def make_traffic(env, tag, role, n, dist, mix, flows, queues, seed=1):
    c = gen.Circuits(n, role)
    frames = gen.frames_for(role, c, flows * queues, seed, dist, mix)
    pcaps, samples = [], []
    for q in range(queues):
        part = frames[q::queues]
        p = os.path.join(env.work, f"{tag}.q{q}.pcap")
        gen.write_pcap(p, part)
        s = os.path.join(env.work, f"{tag}.q{q}.sample.pcap")
        gen.write_pcap(s, part[:SAMPLE])
        pcaps.append(p)
        samples.append(s)
    return c, pcaps, samples, frames


def verify(env, tag, role, c, samples, lcores, eal):
    """Replays each queue's sample once and checks every frame forwarded (per queue)."""
    outs = [os.path.join(env.work, f"{tag}.q{q}.out.pcap") for q in range(len(samples))]
    for o in outs:
        if os.path.exists(o):
            os.remove(o)
    out_dev = "net_pcap1," + ",".join(f"tx_pcap={o}" for o in outs)
    cfg = os.path.join(env.work, f"{tag}.verify.toml")
    with open(cfg, "w") as f:
        f.write(gen.config(role, c, samples, f"127.0.0.1:{env.port}", eal, "busy", out_dev,
                           env.rules(role, c.n), lcores, infinite=False,
                           buffers=SAMPLE * len(samples) + 8192, mtu=9000 if role != "remux" else None))
    p = start(["timeout", "-s", "INT", "-k", "5", "120", env.bin, "--config", cfg],
              os.path.join(env.work, f"{tag}.verify.log"))
    want = sum(len(gen.read_pcap(s)) for s in samples)
    deadline = time.time() + 60
    sent = 0
    while time.time() < deadline and p.poll() is None:
        try:
            sent = msum(scrape(env.base), "tarp_port_tx_packets_total")
        except OSError:
            sent = 0
        if sent >= want:
            break
        time.sleep(0.2)
    time.sleep(0.3)  # the TX queue's last burst reaches the file
    stop(p)
    n = 0
    for s, o in zip(samples, outs):
        n += gen.verify(role, c, s, o)
    return n


def measure_tarp(env, tag, role, c, pcaps, flows, lcores, eal, swaps=None, mtu=None):
    a = env.a
    cfg = os.path.join(env.work, f"{tag}.toml")
    with open(cfg, "w") as f:
        f.write(gen.config(role, c, pcaps, f"127.0.0.1:{env.port}", eal, "busy", "net_null0,no-rx=1",
                           env.rules(role, c.n), lcores, buffers=flows * len(pcaps) + 8192, swaps=swaps, mtu=mtu))
    p = start(["timeout", "-s", "INT", "-k", "5", str(int(a.warmup + a.duration + 300)), env.bin, "--config", cfg],
              os.path.join(env.work, f"{tag}.log"))
    res = {}
    try:
        t_start = time.time()
        while True:
            if p.poll() is not None:
                raise RuntimeError(f"tarp-forwarder exited (see {env.work}/{tag}.log)")
            try:
                if http(env.base + "/readyz")[0] == 200:
                    break
            except OSError:
                pass
            if time.time() - t_start > 120:
                raise RuntimeError("tarp-forwarder not ready after 120 s")
            time.sleep(0.1)
        res["startup_s"] = round(time.time() - t_start, 2)
        if swaps:
            # The main window runs with swaps; the paired phases come after it.
            http(env.base + f"/bench/swaps?per_second={swaps}", data=b"")
        pid = int(subprocess.run(["pgrep", "-P", str(p.pid)], capture_output=True, text=True).stdout.split()[0])
        time.sleep(a.warmup)
        tids = worker_tids(pid)
        http(env.base + "/latency/reset", data=b"")
        t0, p0 = time.time(), scrape(env.base)
        r0 = {w: run_ns(pid, t) for w, t in tids.items()}
        samples = [(t0, p0)]
        while time.time() < t0 + a.duration:
            time.sleep(max(0.0, min(1.0, t0 + a.duration - time.time())))
            samples.append((time.time(), scrape(env.base)))
        t1, p1 = samples[-1]
        r1 = {w: run_ns(pid, t) for w, t in tids.items()}
        lat = json.loads(http(env.base + "/latency")[1])
        res["memory"] = memory(pid)
        if swaps:
            res["phases"] = swap_phases(env, swaps, out_port_of(p0))
        if a.profile and tids:
            res["profile"] = profile(env, tag, pid, tids[min(tids)])
    finally:
        stop(p)
    dt = t1 - t0
    out_port = max(by_label(p1, "tarp_port_tx_packets_total", "port").items(), key=lambda kv: kv[1])[0]
    in_port = max(by_label(p1, "tarp_port_rx_packets_total", "port").items(), key=lambda kv: kv[1])[0]

    def delta(name, **kw):
        return msum(p1, name, **kw) - msum(p0, name, **kw)

    tx = delta("tarp_port_tx_packets_total", port=out_port)
    rx = delta("tarp_port_rx_packets_total", port=in_port)
    d1, d0 = by_label(p1, "tarp_port_drops_total", "reason"), by_label(p0, "tarp_port_drops_total", "reason")
    drops = {r: int(d1[r] - d0.get(r, 0)) for r in d1 if d1[r] - d0.get(r, 0) > 0}
    per_worker = {}
    w1 = by_label(p1, "tarp_worker_forwarded_packets_total", "worker")
    w0 = by_label(p0, "tarp_worker_forwarded_packets_total", "worker")
    for w in w1:
        per_worker[w] = int(w1[w] - w0.get(w, 0))
    intervals = []
    for (ta, pa), (tb, pb) in zip(samples, samples[1:]):
        k = msum(pb, "tarp_port_tx_packets_total", port=out_port) - msum(pa, "tarp_port_tx_packets_total", port=out_port)
        if tb > ta:
            intervals.append(round(k / (tb - ta) / 1e6, 3))
    shares = {}
    for w in r0:
        if r0[w] is not None and r1.get(w) is not None:
            shares[str(w)] = round((r1[w] - r0[w]) / (dt * 1e9), 3)
    mpps = tx / dt / 1e6
    res.update({
        "mpps": round(mpps, 3),
        "gbps": round(delta("tarp_port_tx_bytes_total", port=out_port) * 8 / dt / 1e9, 3),
        "gbps_in": round(delta("tarp_port_rx_bytes_total", port=in_port) * 8 / dt / 1e9, 3),
        "ns_per_pkt": round(1e3 / mpps, 2) if mpps > 0 else None,
        "window_s": round(dt, 3),
        "rx_packets": int(rx),
        "tx_packets": int(tx),
        "drops": drops,
        "forwarded_by_worker": per_worker,
        "interval_mpps": intervals,
        "worker_cpu_share": shares,
        "burst_latency": {str(w["worker"]): w["window"] for w in lat["burst_duration"]},
        "swaps": int(delta("tarp_snapshot_swaps_total")),
        "build_ms_mean": round(delta("tarp_snapshot_build_duration_seconds_sum") * 1e3
                               / max(1, delta("tarp_snapshot_build_duration_seconds_count")), 2),
        "tables_bytes": int(msum(p1, "tarp_table_memory_bytes")),
    })
    return res


def out_port_of(prom):
    return max(by_label(prom, "tarp_port_tx_packets_total", "port").items(), key=lambda kv: kv[1])[0]


SWAP = {"pairs": 4, "phase_s": 2.0, "settle_s": 0.5}  # the smoke suite shortens them


def swap_phases(env, rate, out_port):
    """Alternates phases without and with swaps in the running forwarder (POST
    /bench/swaps), phase_s seconds each after settle_s of settling, and compares them
    pairwise: the same process, traffic and memory, so that noise that drifts over
    seconds cancels out."""
    pairs = []
    for _ in range(SWAP["pairs"]):
        pair = {}
        for name, r in (("without", 0), ("with", rate)):
            http(env.base + f"/bench/swaps?per_second={r}", data=b"")
            time.sleep(SWAP["settle_s"])
            t0, p0 = time.time(), scrape(env.base)
            time.sleep(SWAP["phase_s"])
            t1, p1 = time.time(), scrape(env.base)
            tx = msum(p1, "tarp_port_tx_packets_total", port=out_port) - msum(p0, "tarp_port_tx_packets_total",
                                                                               port=out_port)
            d1, d0 = by_label(p1, "tarp_port_drops_total", "reason"), by_label(p0, "tarp_port_drops_total", "reason")
            pair[name] = {"mpps": tx / (t1 - t0) / 1e6, "seconds": t1 - t0,
                          "swaps": int(msum(p1, "tarp_snapshot_swaps_total") - msum(p0, "tarp_snapshot_swaps_total")),
                          "drops": int(sum(d1.values()) - sum(d0.values()))}
        pairs.append(pair)
    http(env.base + "/bench/swaps?per_second=0", data=b"")
    return pairs


def profile(env, tag, pid, tid, seconds=3):
    """`perf record -e cpu-clock` of one worker thread: the share of its time by stage.
    Stages by symbol: RX and TX are the PMDs' code (net_pcap, net_null), the pipeline is
    `pipeline::process` (parse, lookup, rewrite, encapsulation), the worker loop is the
    rest of `Worker::run` (bursts, dispatch to TX buffers, counters)."""
    data = os.path.join(env.work, f"{tag}.perf.data")
    try:
        subprocess.run(["perf", "record", "-q", "-e", "cpu-clock", "-F", "4999", "-t", str(tid), "-o", data,
                        "--", "sleep", str(seconds)], capture_output=True, timeout=seconds + 30)
        out = subprocess.run(["perf", "report", "-i", data, "--stdio", "--no-children", "--sort", "dso,symbol",
                              "-g", "none", "--percent-limit", "0"], capture_output=True, text=True,
                             timeout=120).stdout
    except (OSError, subprocess.TimeoutExpired) as e:
        return {"error": repr(e)}
    stages = {"rx (net_pcap)": 0.0, "tx (net_null)": 0.0, "pipeline": 0.0, "worker loop": 0.0,
              "mbuf free/alloc (C)": 0.0, "clock": 0.0, "other": 0.0}
    top = []
    for line in out.splitlines():
        m = re.match(r"\s*([0-9.]+)%\s+(\S+)\s+\[.\]\s+(.*)$", line)
        if not m:
            continue
        pct, dso, sym = float(m.group(1)), m.group(2), m.group(3).strip()
        if len(top) < 12:
            top.append(f"{pct:5.1f}% {dso} {sym}")
        if "net_pcap" in dso:
            stages["rx (net_pcap)"] += pct
        elif "net_null" in dso:
            stages["tx (net_null)"] += pct
        elif "pipeline::" in sym:
            stages["pipeline"] += pct
        elif "Worker::run" in sym or "worker::" in sym:
            stages["worker loop"] += pct
        elif "mbuf" in sym or "mempool" in sym:
            stages["mbuf free/alloc (C)"] += pct
        elif "vdso" in dso or "clock" in sym:
            stages["clock"] += pct
        else:
            stages["other"] += pct
    with open(os.path.join(env.work, f"{tag}.profile.txt"), "w") as f:
        f.write(out)
    return {"stages_pct": {k: round(v, 1) for k, v in stages.items()}, "top": top}


# ---- testpmd ---------------------------------------------------------------------------
NO_TESTPMD = [False]


def measure_testpmd(env, tag, mode, pcaps, flows, workers):
    """testpmd on the same vdevs, lcores, EAL memory mode and traffic; port 1's TX growth
    over the window (its statistics are printed every --stats-period, ~2 s on a VM)."""
    a = env.a
    if NO_TESTPMD[0]:
        return {"error": "--no-testpmd"}
    lcores, extra = lcores_for(workers)
    lc = ["-l", ",".join(str(x) for x in [0] + lcores)] if not extra else extra
    eal = [x for x in env.eal if not x.startswith("--file-prefix")]
    if "--in-memory" not in eal:
        eal.append("--file-prefix=tarp-perf-testpmd")
    mbufs = flows * len(pcaps) + 8192
    cmd = ["stdbuf", "-oL", env.testpmd, *lc, "--main-lcore", "0", *eal, "--no-pci",
           "--vdev", "net_pcap0," + ",".join(f"rx_pcap={p}" for p in pcaps) + ",infinite_rx=1",
           "--vdev", "net_null0,no-rx=1", "--", f"--forward-mode={mode}", "--stats-period=1",
           f"--nb-cores={workers}", f"--rxq={workers}", f"--txq={workers}", "--burst=32", "--rxd=1024",
           "--txd=1024", f"--total-num-mbufs={mbufs}", "--mbcache=256", "--no-flush-rx"]
    logf = open(os.path.join(env.work, f"{tag}.testpmd-{mode}.log"), "w")
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    deadline = time.time() + a.warmup + a.duration + 60
    port, first, t_start, t_end, buf = None, None, None, None, b""
    rx_bytes = 0  # port 0's, the latest (net_null counts no TX bytes; io forwards all)
    try:
        while time.time() < deadline and t_end is None:
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
                logf.write(f"{now:.3f} {line}\n")
                m = re.search(r"NIC statistics for port (\d+)", line)
                if m:
                    port = int(m.group(1))
                    continue
                m = re.search(r"RX-packets:\s+\d+\s+RX-missed:\s+\d+\s+RX-bytes:\s+(\d+)", line)
                if m and port == 0:
                    rx_bytes = int(m.group(1))
                m = re.search(r"TX-packets:\s+(\d+)\s+TX-errors:\s+\d+\s+TX-bytes:\s+(\d+)", line)
                if m and port == 1:
                    tx, txb = int(m.group(1)), rx_bytes
                    port = None
                    if first is None and tx > 0:
                        first = now
                    if first is not None and t_start is None and now >= first + a.warmup:
                        t_start = (now, tx, txb)
                    elif t_start is not None and now >= t_start[0] + a.duration:
                        t_end = (now, tx, txb)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        logf.close()
    if not (t_start and t_end):
        return {"error": f"no measurement window (see {tag}.testpmd-{mode}.log)"}
    dt = t_end[0] - t_start[0]
    mpps = (t_end[1] - t_start[1]) / dt / 1e6
    return {"mpps": round(mpps, 3), "gbps": round((t_end[2] - t_start[2]) * 8 / dt / 1e9, 3),
            "ns_per_pkt": round(1e3 / mpps, 2) if mpps else None, "window_s": round(dt, 3)}


# ---- DPDK l3fwd ----------------------------------------------------------------------------
# l3fwd's hash table holds 1,048,576 keys (L3FWD_HASH_ENTRIES); a cuckoo hash that full
# refuses some, and l3fwd exits on the first it cannot add.
L3FWD_MAX_RULES = 900_000


def l3fwd_rules(frames, path4, path6, n):
    """l3fwd's exact-match rules: every 5-tuple of the traffic to port 1 (the outer
    headers of the demux's VXLAN frames: l3fwd does not decapsulate), plus TCP rules no
    frame matches until the table holds as many entries as tarp has circuits (n, at most
    L3FWD_MAX_RULES). A family with no traffic gets one rule (l3fwd wants both files).
    Returns the rules of the traffic's family and whether it is IPv6 (l3fwd loads the
    IPv6 rules only with --ipv6)."""
    v4, v6 = set(), set()
    for f in frames:
        et = f[12:14]
        if et == b"\x08\x00":
            l4 = 14 + (f[14] & 15) * 4
            sport, dport = struct.unpack("!HH", f[l4:l4 + 4])
            v4.add((socket.inet_ntop(socket.AF_INET, f[30:34]), socket.inet_ntop(socket.AF_INET, f[26:30]),
                    dport, sport, f[23]))
        elif et == b"\x86\xdd":
            sport, dport = struct.unpack("!HH", f[54:58])
            v6.add((socket.inet_ntop(socket.AF_INET6, f[38:54]), socket.inet_ntop(socket.AF_INET6, f[22:38]),
                    dport, sport, f[20]))
    main = v6 if len(v6) > len(v4) else v4
    for i in range(max(0, min(n, L3FWD_MAX_RULES) - len(main))):
        if main is v4:
            main.add((f"198.19.{i >> 8 & 255}.{i & 255}", f"198.18.{i >> 16 & 255}.0", 9, 9, 6))
        else:
            main.add((f"2001:db8:ffff::{i >> 16 & 0xffff:x}:{i & 0xffff:x}", "2001:db8:fffe::1", 9, 9, 6))
    for path, rules, dummy in ((path4, v4, ("198.18.255.1", "198.18.255.2", 9, 9, 17)),
                               (path6, v6, ("2001:db8::1", "2001:db8::2", 9, 9, 17))):
        with open(path, "w") as o:
            for dst, src, dport, sport, proto in sorted(rules) or [dummy]:
                o.write(f"R{dst} {src} {dport} {sport} 0x{proto:02x} 1\n")
    return len(main), main is v6


def telemetry(sock, cmd):
    """One DPDK telemetry query (the v2 socket: a greeting, then JSON per command)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as s:
        s.settimeout(2)
        s.connect(sock)
        s.recv(4096)
        s.send(cmd.encode())
        return next(iter(json.loads(s.recv(1 << 20).decode()).values()))


def measure_l3fwd(env, tag, pcaps, flows, rules):
    """DPDK's l3fwd (exact match, one lcore) on the same vdevs, EAL memory mode and
    traffic: port 1's TX growth over the window, read through DPDK telemetry."""
    a = env.a
    if not env.l3fwd or not os.access(env.l3fwd, os.X_OK):
        return {"error": "l3fwd not built (perf/l3fwd/build.sh)"}
    if len(pcaps) != 1:
        return {"error": "one queue only"}
    prefix = "tarp-perf-l3fwd"
    sock = f"/var/run/dpdk/{prefix}/dpdk_telemetry.v2"
    eal = [x for x in env.eal if not x.startswith("--file-prefix")] + [f"--file-prefix={prefix}"]
    cmd = [env.l3fwd, "-l", "1", *eal, "--no-pci",
           "--vdev", f"net_pcap0,rx_pcap={pcaps[0]},infinite_rx=1", "--vdev", "net_null0,no-rx=1", "--",
           "-p", "0x3", "--config=(0,0,1),(1,0,1)", "--lookup=em", f"--rule_ipv4={rules[0]}",
           f"--rule_ipv6={rules[1]}", "--parse-ptype"] + (["--ipv6"] if rules[2] else [])
    proc = start(cmd, os.path.join(env.work, f"{tag}.l3fwd.log"),
                 env=dict(os.environ, L3FWD_EXTRA_MBUFS=str(flows + 8192)))

    def stats():
        t0 = time.time()
        tx = telemetry(sock, "/ethdev/stats,1")["opackets"]
        rx_bytes = telemetry(sock, "/ethdev/stats,0")["ibytes"]
        return (t0 + time.time()) / 2, tx, rx_bytes

    try:
        deadline = time.time() + 120  # a million rules take a while to load
        while True:
            if proc.poll() is not None or time.time() > deadline:
                return {"error": f"l3fwd did not forward (see {tag}.l3fwd.log)"}
            try:
                if stats()[1] > 0:
                    break
            except (OSError, ValueError, KeyError, StopIteration):
                pass
            time.sleep(0.2)
        time.sleep(a.warmup)
        t0, tx0, b0 = stats()
        time.sleep(a.duration)
        t1, tx1, b1 = stats()
    except (OSError, ValueError, KeyError, StopIteration) as e:
        return {"error": f"telemetry: {e!r}"}
    finally:
        stop(proc)
    dt = t1 - t0
    mpps = (tx1 - tx0) / dt / 1e6
    return {"mpps": round(mpps, 3), "gbps": round((b1 - b0) * 8 / dt / 1e9, 3),
            "ns_per_pkt": round(1e3 / mpps, 2) if mpps else None, "window_s": round(dt, 3)}


# ---- suites ------------------------------------------------------------------------------
def one(env, results, *, role, n, dist="uniform", mix="64", workers=1, swaps=None, testpmd=(), label=None):
    a = env.a
    flows = flows_for(n, a.suite == "smoke")
    queues = workers
    tag = f"{role}-{n}-{dist}-{mix}-w{workers}" + (f"-s{swaps}" if swaps else "")
    log(f"{tag}: traffic ({flows * queues} frames) and rules")
    lcores, extra = lcores_for(workers)
    eal = env.eal + extra
    mtu = 9000 if (mix == "imix" and role != "remux") else None
    rec = {"role": role, "circuits": n, "dist": dist, "mix": mix, "workers": workers, "swaps_per_second": swaps,
           "flows": flows * queues, "label": label}
    try:
        c, pcaps, samples, frames = make_traffic(env, tag, role, n, dist, mix, flows, queues)
        rec["family"] = "ipv6" if c.v6 else "ipv4"
        rec["frame_bytes"] = sorted({len(f) + 4 for f in frames})
        l3rules = None
        if "l3fwd" in testpmd and not NO_TESTPMD[0]:
            l3rules = (os.path.join(env.work, f"{tag}.l3fwd-v4.cfg"), os.path.join(env.work, f"{tag}.l3fwd-v6.cfg"))
            rec["l3fwd_rules"], v6 = l3fwd_rules(frames, *l3rules, n)
            l3rules += (v6,)
        del frames
        rec["verified_frames"] = verify(env, tag, role, c, samples, lcores, eal)
        log(f"{tag}: {rec['verified_frames']} forwarded frames checked against the rules")
        rec["tarp"] = measure_tarp(env, tag, role, c, pcaps, flows, lcores, eal, swaps, mtu)
        t = rec["tarp"]
        log(f"{tag}: tarp {t['mpps']:.2f} Mpps ({t['gbps']:.2f} Gbit/s), drops {t['drops'] or 0}")
        for mode in testpmd:
            if mode == "l3fwd":
                if l3rules:
                    rec["l3fwd_em"] = measure_l3fwd(env, tag, pcaps, flows, l3rules)
                    log(f"{tag}: l3fwd (exact match) {rec['l3fwd_em'].get('mpps', rec['l3fwd_em'].get('error'))} Mpps")
                continue
            rec[f"testpmd_{mode}"] = measure_testpmd(env, tag, mode, pcaps, flows, workers)
            log(f"{tag}: testpmd {mode} {rec[f'testpmd_{mode}'].get('mpps')} Mpps")
    except (RuntimeError, ValueError, KeyError, OSError, IndexError, struct.error) as e:
        rec["error"] = repr(e)
        log(f"{tag}: FAILED: {e!r}")
    finally:
        for f in glob.glob(os.path.join(env.work, f"{tag}.q*.pcap")):
            if not f.endswith((".sample.pcap", ".out.pcap")):
                os.remove(f)  # the big replay files; samples and outputs stay
    results.append(rec)
    return rec


def suite_sizes(env, res, sizes):
    for role in ROLES:
        for n in sizes:
            for dist in ("uniform", "zipf"):
                # testpmd on each size's own traffic: its replay cost grows with the
                # frames it caches (4,096 to 131,072).
                # DPDK's l3fwd (exact match) on the same traffic: a lookup-and-rewrite
                # forwarder's reference beside the io loop.
                tp = () if dist != "uniform" else ("io", "5tswap", "l3fwd") if n == sizes[0] else ("io", "l3fwd")
                one(env, res, role=role, n=n, dist=dist, testpmd=tp, label="sizes")


def suite_imix(env, res, n):
    for role in ROLES:
        one(env, res, role=role, n=n, mix="imix", testpmd=("io",), label="imix")


def suite_swaps(env, res, small, big):
    for role in ROLES:
        one(env, res, role=role, n=small, swaps=100, label="swaps")
        if big:
            one(env, res, role=role, n=big, swaps=1, label="swaps")


def suite_cores(env, res, n):
    for role in ROLES:
        for w in (1, 2):
            one(env, res, role=role, n=n, workers=w, testpmd=("io",), label="cores")


def blocked(res):
    """For each swap run, its paired phases (without, with swaps, alternating in the same
    process): throughput change, packets not forwarded per swap, and CSIT's effective
    blocked time per swap (those packets / the rate without swaps)."""
    for r in res:
        t = r.get("tarp", {})
        pairs = t.get("phases")
        if not pairs:
            continue
        off = statistics.median(p["without"]["mpps"] for p in pairs)
        on = statistics.median(p["with"]["mpps"] for p in pairs)
        lost, swaps = 0.0, 0
        for p in pairs:
            lost += (p["without"]["mpps"] - p["with"]["mpps"]) * 1e6 * p["with"]["seconds"]
            swaps += p["with"]["swaps"]
        changes = [(p["with"]["mpps"] / p["without"]["mpps"] - 1) * 100 for p in pairs if p["without"]["mpps"]]
        per_swap = lost / swaps if swaps else None
        r["swap_effect"] = {
            "mpps_without": round(off, 3),
            "mpps_with": round(on, 3),
            "change_pct": round((on / off - 1) * 100, 2) if off else None,
            "change_pct_by_pair": [round(c, 2) for c in changes],
            "swaps": swaps,
            "packets_not_forwarded_per_swap": round(per_swap) if per_swap is not None else None,
            "blocked_us_per_swap": round(per_swap / (off * 1e6) * 1e6, 2) if per_swap is not None and off else None,
            "drops_with_swaps": sum(p["with"]["drops"] for p in pairs),
        }


# ---- report ------------------------------------------------------------------------------
def io_ratio(t, i):
    """tarp's Mpps over testpmd io's (None when either is missing)."""
    return t["mpps"] / i["mpps"] if i.get("mpps") and t.get("mpps") else None


def fmt(x, nd=2):
    return "-" if x is None else (f"{x:.{nd}f}" if isinstance(x, float) else str(x))


def report(meta, res):
    L = []
    L.append(f"# tarp perf: {meta['suite']}\n")
    L.append(f"{meta['when']} on {meta['host']['cpu']} ({meta['host']['cpus']} CPUs), {meta['host']['kernel']}, "
             f"DPDK {meta['dpdk']}, tarp {meta['git']}, memory {meta['memory']}, "
             f"{meta['warmup']} s warm-up + {meta['duration']} s per run. Command: `{meta['command']}`\n")
    sz = [r for r in res if r.get("label") in ("sizes", "smoke") and r["mix"] == "64" and r["workers"] == 1
          and not r["swaps_per_second"]]
    if sz:
        L.append("## Mpps per core against table size (64-byte frames, 1 worker)\n")
        L.append("| role | circuits | traffic | frame B | tarp Mpps | ns/pkt | testpmd io (same size) | tarp / io | l3fwd-em Mpps | tarp / l3fwd | burst p50 / p99 / p99.9 us | RSS MB | hugepages MB | tables MB | drops |")
        L.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for r in sz:
            t = r.get("tarp")
            if not t:
                L.append(f"| {r['role']} | {r['circuits']:,} | {r['dist']} | | failed: {r.get('error')} |||||||||||")
                continue
            lat = next(iter(t["burst_latency"].values()), {})
            lat_s = "/".join(fmt(lat.get(k, 0) / 1e3, 2) for k in ("p50_ns", "p99_ns", "p999_ns")) if lat.get("count") else "-"
            own = next((x["testpmd_io"]["mpps"] for x in sz if x["role"] == r["role"] and x["circuits"] == r["circuits"]
                        and x.get("testpmd_io", {}).get("mpps")), None)
            ratio = t["mpps"] / own if own else None
            l3 = next((x["l3fwd_em"]["mpps"] for x in sz if x["role"] == r["role"] and x["circuits"] == r["circuits"]
                       and x.get("l3fwd_em", {}).get("mpps")), None)
            m = t["memory"]
            L.append(f"| {r['role']} | {r['circuits']:,} | {r['dist']}{' (IPv6)' if r['family'] == 'ipv6' else ''} | "
                     f"{'/'.join(map(str, r['frame_bytes']))} | {t['mpps']:.2f} | {fmt(t['ns_per_pkt'], 1)} | "
                     f"{fmt(own)} | {fmt(ratio)} | {fmt(l3)} | {fmt(t['mpps'] / l3 if l3 else None)} | "
                     f"{lat_s} | {fmt(m.get('rss_mb'), 0)} | "
                     f"{fmt(m.get('hugepages_mb'), 0)} | {t['tables_bytes'] / 1e6:.2f} | {sum(t['drops'].values())} |")
        L.append("")
        tp5 = [r for r in sz if r.get("testpmd_5tswap", {}).get("mpps")]
        if tp5:
            L.append("testpmd on the same traffic: " + "; ".join(
                f"{r['role']}: io {r['testpmd_io']['mpps']:.2f}, 5tswap {r['testpmd_5tswap']['mpps']:.2f} Mpps"
                for r in tp5) + ".\n")
    mix = [r for r in res if r["mix"] == "imix"]
    if mix:
        L.append("## IMIX (64/576/1500 bytes on the wire, 7:4:1)\n")
        L.append("| role | circuits | tarp Mpps | tarp Gbit/s out | testpmd io Mpps | io Gbit/s | tarp / io |")
        L.append("|---|---|---|---|---|---|---|")
        for r in mix:
            t, i = r.get("tarp", {}), r.get("testpmd_io", {})
            ratio = io_ratio(t, i)
            L.append(f"| {r['role']} | {r['circuits']:,} | {fmt(t.get('mpps'))} | {fmt(t.get('gbps'))} | "
                     f"{fmt(i.get('mpps'))} | {fmt(i.get('gbps'))} | {fmt(ratio)} |")
        L.append("")
    sw = [r for r in res if r.get("swaps_per_second")]
    if sw:
        L.append("## Live table swaps while forwarding (64 B, uniform)\n")
        L.append(f"{SWAP['pairs']} pairs of {SWAP['phase_s']:g}-second phases without and with swaps, alternating in one forwarder "
                 "(`POST /bench/swaps`); medians, and the change of each pair.\n")
        L.append("| role | circuits | swaps/s | build (mean) | Mpps without | Mpps with | change (pairs) | not forwarded per swap | blocked time per swap | drops |")
        L.append("|---|---|---|---|---|---|---|---|---|---|")
        for r in sw:
            e = r.get("swap_effect", {})
            t = r.get("tarp", {})
            pairs = ", ".join(f"{c:+.1f}" for c in e.get("change_pct_by_pair", []))
            L.append(f"| {r['role']} | {r['circuits']:,} | {r['swaps_per_second']} | {fmt(t.get('build_ms_mean'), 1)} ms | "
                     f"{fmt(e.get('mpps_without'))} | {fmt(e.get('mpps_with'))} | {fmt(e.get('change_pct'), 1)} % "
                     f"({pairs}) | {fmt(e.get('packets_not_forwarded_per_swap'))} | "
                     f"{fmt(e.get('blocked_us_per_swap'), 1)} us | {e.get('drops_with_swaps', '-')} |")
        L.append("")
    co = [r for r in res if r.get("label") == "cores"]
    if co:
        L.append("## Cores (64 B, uniform; one RX queue per worker)\n")
        L.append("| role | circuits | workers | tarp Mpps | per worker (forwarded Mpps) | testpmd io Mpps | tarp / io |")
        L.append("|---|---|---|---|---|---|---|")
        for r in co:
            t, i = r.get("tarp", {}), r.get("testpmd_io", {})
            per = ", ".join(f"{v / t['window_s'] / 1e6:.2f}" for v in t.get("forwarded_by_worker", {}).values()) if t else "-"
            ratio = io_ratio(t, i)
            L.append(f"| {r['role']} | {r['circuits']:,} | {r['workers']} | {fmt(t.get('mpps'))} | {per} | "
                     f"{fmt(i.get('mpps'))} | {fmt(ratio)} |")
        L.append("")
    pr = [r for r in res if r.get("tarp", {}).get("profile", {}).get("stages_pct")]
    if pr:
        names = list(pr[0]["tarp"]["profile"]["stages_pct"])
        L.append("## Where a worker's time goes (perf record -e cpu-clock, % of the worker thread)\n")
        L.append("| role | circuits | traffic | ns/pkt | " + " | ".join(names) + " |")
        L.append("|---|---|---|---|" + "---|" * len(names))
        for r in pr:
            st = r["tarp"]["profile"]["stages_pct"]
            ns = r["tarp"]["ns_per_pkt"] or 0
            L.append(f"| {r['role']} | {r['circuits']:,} | {r['dist']} {r['mix']} | {fmt(ns, 1)} | "
                     + " | ".join(f"{st[k]:.1f} % ({st[k] * ns / 100:.1f} ns)" for k in names) + " |")
        L.append("")
    bad = [r for r in res if r.get("error")]
    if bad:
        L.append("## Failed\n")
        for r in bad:
            L.append(f"- {r['role']} {r['circuits']} {r['dist']} {r['mix']} w{r['workers']}: {r['error']}")
        L.append("")
    return "\n".join(L)


def host_facts():
    cpu = "unknown"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cpus": os.cpu_count(), "kernel": platform.release(),
            "mem_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--suite", choices=("all",) + SUITES, default="all")
    ap.add_argument("--sizes", default="1,1000,10000,100000,1000000", help="circuits for the sizes suite")
    ap.add_argument("--roles", default=",".join(ROLES))
    ap.add_argument("--duration", type=float, default=4)
    ap.add_argument("--warmup", type=float, default=1.5)
    ap.add_argument("--out", required=True)
    ap.add_argument("--bin", required=True)
    ap.add_argument("--testpmd", default="/usr/bin/dpdk-testpmd")
    ap.add_argument("--no-testpmd", action="store_true", help="no testpmd and no l3fwd")
    ap.add_argument("--l3fwd", default="", help="DPDK's l3fwd binary (perf/l3fwd/build.sh)")
    ap.add_argument("--profile", action="store_true", help="perf record each tarp worker (stages by symbol)")
    ap.add_argument("--eal", default="--in-memory", help="EAL memory arguments, space-separated")
    ap.add_argument("--memory", default="huge")
    ap.add_argument("--metrics-port", type=int, default=19471)
    ap.add_argument("--command", default="")
    a = ap.parse_args()
    roles = tuple(r for r in a.roles.split(",") if r)
    if any(r not in ROLES for r in roles):
        sys.exit(f"bench.py: --roles: each of {', '.join(ROLES)}")
    ROLES[:] = roles
    a.eal = a.eal.split()
    a.out = os.path.abspath(a.out)
    env = Env(a)
    if os.path.isdir(env.work):
        shutil.rmtree(env.work)
    os.makedirs(env.work)
    sizes = [int(x) for x in a.sizes.split(",")]
    if a.no_testpmd:
        NO_TESTPMD[0] = True
    res = []
    t0 = time.time()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        if a.suite == "smoke":
            a.duration, a.warmup = min(a.duration, 1.0), min(a.warmup, 0.5)
            SWAP.update(pairs=1, phase_s=0.5, settle_s=0.2)
            for role in ROLES:
                one(env, res, role=role, n=1000, testpmd=("io",) + (("l3fwd",) if role == "remux" else ()),
                    label="smoke")
            one(env, res, role="demux", n=1000, swaps=100, label="swaps")
            one(env, res, role="remux", n=1000, workers=2, label="cores")
        if a.suite in ("all", "sizes"):
            suite_sizes(env, res, sizes)
        if a.suite in ("all", "imix"):
            suite_imix(env, res, 10000)
        if a.suite in ("all", "swaps"):
            suite_swaps(env, res, 10000, 1000000 if a.suite == "all" or 1000000 in sizes else None)
        if a.suite in ("all", "cores"):
            suite_cores(env, res, 10000)
    except Exception as e:  # noqa: BLE001 (what was measured is still written)
        log(f"stopped by {e!r}")
        res.append({"role": "-", "circuits": 0, "dist": "-", "mix": "-", "workers": 0, "swaps_per_second": None,
                    "error": f"the run stopped: {e!r}"})
    finally:
        stop_all()
    blocked(res)
    dpdk = subprocess.run(["pkg-config", "--modversion", "libdpdk"], capture_output=True, text=True).stdout.strip()
    git = subprocess.run(["git", "-C", ROOT, "describe", "--always", "--dirty"], capture_output=True,
                         text=True).stdout.strip()
    meta = {"suite": a.suite, "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "host": host_facts(),
            "dpdk": dpdk, "git": git, "memory": a.memory, "eal": a.eal, "warmup": a.warmup,
            "duration": a.duration, "elapsed_s": round(time.time() - t0), "command": a.command,
            "loadavg": open("/proc/loadavg").read().split()[:3]}
    with open(os.path.join(a.out, "results.json"), "w") as f:
        json.dump({"meta": meta, "runs": res}, f, indent=1)
    md = report(meta, res)
    with open(os.path.join(a.out, "results.md"), "w") as f:
        f.write(md + "\n")
    print(md)
    failed = [r for r in res if r.get("error")]
    log(f"{len(res)} configurations, {len(failed)} failed, {meta['elapsed_s']} s; results in {a.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
