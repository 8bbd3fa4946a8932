//! Aggregator, demux and remux as plain functions over a burst.
//!
//! [`process`] runs the pipeline of the receiving port's role over a burst and writes one
//! [`Verdict`] per packet. No I/O happens here, and nothing allocates, locks or logs: the
//! same code runs under DPDK, in tests, benches and fuzzing. Each role works in two passes
//! over the burst, like DPDK's `l3fwd`: parse and prefetch the table slots for every
//! packet, then look up and rewrite, so that cache misses of a big table overlap.
//!
//! Every rewrite decrements the TTL or hop limit and fixes checksums incrementally;
//! nothing that matches no circuit is forwarded. The rarer cases — fragments, ICMP
//! errors, packets too big for the tunnel, SYNs whose MSS is clamped — are recognised
//! in the same passes and handled beside the common path, with the worker's
//! [`Context`] for what must outlive a burst (the fragment table, rate limits).

mod aggregator;
mod buf;
mod context;
mod demux;
mod frag;
mod icmp;
mod mss;
pub(crate) mod parse;
mod remux;
mod rewrite;
mod verdict;

pub use buf::{PacketBuf, VecBuf};
pub use context::{
    Context, TokenBucket, ICMP_BURST, ICMP_RATE, ND_BURST, ND_RATE, SLOW_BURST, SLOW_RATE,
};
pub use frag::{split, FragTable};
pub use verdict::{DropReason, Split, Verdict, WgJob};

use crate::tables::{PortId, Role, Snapshot};

/// Packets handled per pass (DPDK's usual burst size); longer slices are chunked.
pub const MAX_BURST: usize = 32;

/// How far [`process_until`] takes each packet. The stage bench (`benches/stages.rs`)
/// stops the real pipeline after each stage in turn and counts the cycles each one adds;
/// everything else runs it whole ([`ALL`](stage::ALL)), where the cut points compile away.
#[doc(hidden)]
pub mod stage {
    /// Pass 1: parse (the demux: check and strip the tunnel, then parse the inner
    /// packet), take the key, hash it and prefetch its slot.
    pub const PARSE: u8 = 1;
    /// Then look the key up (the aggregator: and check the source is no capture address).
    pub const LOOKUP: u8 = 2;
    /// Then rewrite: TTL, addresses, checksums, MSS, circuit counters.
    pub const REWRITE: u8 = 3;
    /// Then send it on: next hop, MACs and MTU, or the tunnel's encapsulation. The whole
    /// pipeline.
    pub const ALL: u8 = 4;
    /// The stages' names, by number.
    pub const NAMES: [&str; 4] = ["parse", "lookup", "rewrite", "out"];
}

/// What a packet stopped early for the stage bench gets: its stage's result kept alive
/// (so the compiler cannot drop the work), and a verdict the bench ignores.
#[inline(always)]
fn stopped<T>(result: T) -> Verdict {
    std::hint::black_box(result);
    Verdict::SlowPath
}

/// Runs the pipeline of `in_port`'s role over `pkts`, writing `verdicts[i]` for `pkts[i]`.
///
/// `ctx` is the calling worker's own state (clock, rate limits, fragment table).
/// `verdicts` must be at least as long as `pkts`. An unknown `in_port` drops everything.
#[inline]
pub fn process<B: PacketBuf>(
    snap: &Snapshot,
    ctx: &mut Context,
    in_port: PortId,
    pkts: &mut [B],
    verdicts: &mut [Verdict],
) {
    process_until::<B, { stage::ALL }>(snap, ctx, in_port, pkts, verdicts)
}

/// [`process`] stopped after stage `UNTIL` (see [`stage`]): for the stage bench only. A
/// packet stopped early is left half done and its verdict means nothing.
#[doc(hidden)]
pub fn process_until<B: PacketBuf, const UNTIL: u8>(
    snap: &Snapshot,
    ctx: &mut Context,
    in_port: PortId,
    pkts: &mut [B],
    verdicts: &mut [Verdict],
) {
    let Some(port) = snap.ports.get(in_port as usize) else {
        verdicts
            .iter_mut()
            .take(pkts.len())
            .for_each(|v| *v = Verdict::Drop(DropReason::Unsupported));
        return;
    };
    for (pkts, out) in pkts
        .chunks_mut(MAX_BURST)
        .zip(verdicts.chunks_mut(MAX_BURST))
    {
        let out = &mut out[..pkts.len()];
        match port.role {
            Role::Aggregator => aggregator::run::<_, UNTIL>(snap, ctx, in_port, port, pkts, out),
            Role::Demux => demux::run::<_, false, UNTIL>(snap, ctx, in_port, port, pkts, out),
            Role::Remux => remux::run::<_, UNTIL>(snap, ctx, in_port, port, pkts, out),
        }
    }
}

/// Runs `in_port`'s pipeline over inner frames the worker opened from a WireGuard tunnel
/// that arrived on `in_port` (an untagged Ethernet header, then the inner IP packet):
/// the demux looks them up as if decapsulated; an aggregator returns symmetric replies
/// to their lines. Only the worker calls this, with frames it wrote from authenticated
/// plaintext: nothing from the wire reaches it unopened.
pub fn process_inner<B: PacketBuf>(
    snap: &Snapshot,
    ctx: &mut Context,
    in_port: PortId,
    pkts: &mut [B],
    verdicts: &mut [Verdict],
) {
    let Some(port) = snap.ports.get(in_port as usize) else {
        verdicts
            .iter_mut()
            .take(pkts.len())
            .for_each(|v| *v = Verdict::Drop(DropReason::Unsupported));
        return;
    };
    for (pkts, out) in pkts
        .chunks_mut(MAX_BURST)
        .zip(verdicts.chunks_mut(MAX_BURST))
    {
        let out = &mut out[..pkts.len()];
        match port.role {
            Role::Demux => {
                demux::run::<_, true, { stage::ALL }>(snap, ctx, in_port, port, pkts, out)
            }
            Role::Aggregator => aggregator::run_inner(snap, pkts, out),
            Role::Remux => out.fill(Verdict::Drop(DropReason::Unsupported)),
        }
    }
}
