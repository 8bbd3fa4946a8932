#!/usr/bin/env python3
"""Two workers, two RX queues, table swaps under traffic: nothing lost, nothing twice.

A real tarp-forwarder (remux and demux roles, 1,000 circuits) with workers on lcores 1
and 2: port 0 is net_pcap with two RX queues, each replaying its own file of R frames
once (a block of distinct frames repeated), port 1 is net_pcap with two TX queues, each
written to its own file. Meanwhile `[bench] swaps_per_second` swaps in a freshly built
snapshot of the same rules 2,000 times a second. Checks, per role:

  * swaps happened while packets were flowing: the metrics, polled every 20 ms, show
    at least 20 swaps in intervals that began with traffic under way;
  * each TX file holds exactly R frames, the first block is frame by frame the right
    rewrite of its RX file's block (gen.py's verify: addresses, TTL, MACs, tunnel,
    checksums), and every later frame equals the rewrite of its input frame (the same
    input, the same rules: the same output), in order: every packet forwarded exactly
    once, none lost, none duplicated, none crossed to the other worker;
  * the per-worker counters (tarp_worker_forwarded_packets_total) are R each and sum to
    the port counters (rx = tx = 2R); no drop of any reason.

Usage (root): tests/multicore.py BIN_DIR
"""

import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "perf"))
import bench  # noqa: E402
import gen  # noqa: E402

BLOCK = 4000  # distinct frames per queue
REPEAT = 150  # R = 600,000 frames per queue
PORT = 19481
FAILED = []


def check(ok, what):
    print(("PASS " if ok else "FAIL ") + what, flush=True)
    if not ok:
        FAILED.append(what)


def run_role(binary, work, role):
    c = gen.Circuits(1000, role)
    frames = gen.frames_for(role, c, 2 * BLOCK, seed=7)
    ins, outs, blocks = [], [], []
    for q in range(2):
        block = frames[q::2]
        blocks.append(block)
        p = os.path.join(work, f"{role}.q{q}.pcap")
        gen.write_pcap(p, block * REPEAT)
        ins.append(p)
        outs.append(os.path.join(work, f"{role}.q{q}.out.pcap"))
    rules = os.path.join(work, f"{role}.rules.json")
    gen.write_rules(rules, role, c)
    cfg = os.path.join(work, f"{role}.toml")
    lcores, extra = bench.lcores_for(2)
    out_dev = "net_pcap1," + ",".join(f"tx_pcap={o}" for o in outs)
    with open(cfg, "w") as f:
        f.write(gen.config(role, c, ins, f"127.0.0.1:{PORT}", ["--no-huge", "--no-shconf", "-m", "1024"] + extra,
                           "busy", out_dev, rules, lcores, infinite=False, buffers=16384, swaps=2000))
    base = f"http://127.0.0.1:{PORT}"
    p = bench.start(["timeout", "-s", "INT", "-k", "5", "120", binary, "--config", cfg],
                    os.path.join(work, f"{role}.log"))
    want = 2 * BLOCK * REPEAT
    samples = []
    deadline = time.time() + 90
    try:
        while time.time() < deadline and p.poll() is None:
            try:
                m = bench.scrape(base)
            except OSError:
                time.sleep(0.02)
                continue
            tx = bench.msum(m, "tarp_port_tx_packets_total")
            samples.append((tx, bench.msum(m, "tarp_snapshot_swaps_total"), m))
            if tx >= want:
                break
            time.sleep(0.02)
        time.sleep(0.5)  # the last bursts reach the files
        final = bench.scrape(base)
    finally:
        rc = bench.stop(p)
    check(rc == 0, f"{role}: the forwarder stopped cleanly (exit {rc})")
    moving = [(a, b) for a, b in zip(samples, samples[1:]) if 0 < a[0] < b[0] < want]
    during = sum(b[1] - a[1] for a, b in moving)
    swaps = bench.msum(final, "tarp_snapshot_swaps_total")
    print(f"  {role}: {int(swaps)} swaps in all, at least {int(during)} while packets were flowing "
          f"({len(moving)} polling intervals of 20 ms with traffic)")
    check(during >= 20, f"{role}: snapshots were swapped while both workers forwarded ({int(during)} >= 20)")

    per_worker = bench.by_label(final, "tarp_worker_forwarded_packets_total", "worker")
    print(f"  {role}: forwarded per worker {per_worker}")
    check(sorted(per_worker.values()) == [BLOCK * REPEAT] * 2,
          f"{role}: each worker forwarded exactly its queue's {BLOCK * REPEAT} frames")
    rx = bench.msum(final, "tarp_port_rx_packets_total")
    tx = bench.msum(final, "tarp_port_tx_packets_total")
    check(rx == want and tx == want and sum(per_worker.values()) == tx,
          f"{role}: port counters rx {int(rx)} = tx {int(tx)} = sum of the workers' = {want}")
    drops = {k: v for k, v in bench.by_label(final, "tarp_port_drops_total", "reason").items() if v}
    check(not drops, f"{role}: no drops ({drops or 'none'})")

    for q in range(2):
        got = gen.read_pcap(outs[q]) if os.path.exists(outs[q]) else []
        check(len(got) == BLOCK * REPEAT, f"{role} queue {q}: {len(got)} frames written, {BLOCK * REPEAT} sent")
        first = os.path.join(work, f"{role}.q{q}.first.pcap")
        gen.write_pcap(first, got[:BLOCK])
        sample = os.path.join(work, f"{role}.q{q}.block.pcap")
        gen.write_pcap(sample, blocks[q])
        try:
            gen.verify(role, c, sample, first)
            ok, why = True, ""
        except (ValueError, KeyError, IndexError) as e:
            ok, why = False, repr(e)
        check(ok, f"{role} queue {q}: the first {BLOCK} frames are the rules' rewrite of the input {why}")
        same = all(got[k] == got[k % BLOCK] for k in range(BLOCK, len(got)))
        check(same, f"{role} queue {q}: every later frame is its input's rewrite, in order (exactly once)")


def main():
    binary = os.path.join(os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else "target/release"), "tarp-forwarder")
    if os.geteuid() != 0:
        sys.exit("multicore: run as root (DPDK)")
    with tempfile.TemporaryDirectory(prefix="tarp-multicore.") as work:
        try:
            for role in ("remux", "demux"):
                run_role(binary, work, role)
        finally:
            bench.stop_all()
    if FAILED:
        print(f"multicore: {len(FAILED)} check(s) failed", file=sys.stderr)
        return 1
    print("multicore: all passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
