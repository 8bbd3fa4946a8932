//! Aggregator, demux and remux as plain functions over a burst.
//!
//! [`process`] runs the pipeline of the receiving port's role over a burst and writes one
//! [`Verdict`] per packet. No I/O happens here, and nothing allocates, locks or logs: the
//! same code runs under DPDK, in tests, benches and fuzzing. Each role works in two passes
//! over the burst, like DPDK's `l3fwd`: parse and prefetch the table slots for every
//! packet, then look up and rewrite, so that cache misses of a big table overlap.
//!
//! Every rewrite decrements the TTL or hop limit and fixes checksums incrementally;
//! nothing that matches no circuit is forwarded.

mod aggregator;
mod buf;
mod demux;
pub(crate) mod parse;
mod remux;
mod rewrite;
mod verdict;

pub use buf::{PacketBuf, VecBuf};
pub use verdict::{DropReason, Verdict};

use crate::tables::{PortId, Role, Snapshot};

/// Packets handled per pass (DPDK's usual burst size); longer slices are chunked.
pub const MAX_BURST: usize = 32;

/// Runs the pipeline of `in_port`'s role over `pkts`, writing `verdicts[i]` for `pkts[i]`.
///
/// `verdicts` must be at least as long as `pkts`. An unknown `in_port` drops everything.
pub fn process<B: PacketBuf>(
    snap: &Snapshot,
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
            Role::Aggregator => aggregator::run(snap, port, pkts, out),
            Role::Demux => demux::run(snap, port, pkts, out),
            Role::Remux => remux::run(snap, port, pkts, out),
        }
    }
}
