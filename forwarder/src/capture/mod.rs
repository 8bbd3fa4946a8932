//! The packet recorder: copies of the packets an operator asked for, taken before and
//! after their rewrite, for a data plane that tcpdump cannot see.
//!
//! An operator starts a [`Session`] (a filter, a packet budget, a rate, a time limit)
//! through the metrics endpoint (`GET /capture`, what `tarpctl capture` calls). While it
//! runs, each worker checks once per burst whether a capture is on ([`Capture::session`],
//! one relaxed load and a branch when none is); if so, its [`Tap`] copies every matching
//! frame before the pipeline rewrites it and, once the verdict is known, the rewritten
//! frame too. Copies go into buffers taken from a pool the session allocated up front and
//! onto a bounded ring; the endpoint drains the ring into a pcapng file off the fast
//! path. When the pool is empty, the ring full or the rate spent, a packet is not copied
//! and is counted as missed: the workers never wait and never allocate.

mod pcap;

pub use pcap::{
    parse_query, run, CaptureError, Summary, MAX_COUNT, MAX_RATE, MAX_SECONDS, MAX_SNAPLEN,
};

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwapOption;
use crossbeam_queue::ArrayQueue;

use crate::packet::ethernet::{EtherType, HEADER_LEN as ETH_LEN};
use crate::packet::vxlan::{HEADER_LEN as VXLAN_LEN, PORT as VXLAN_PORT};
use crate::pipeline::{DropReason, Verdict, WgJob};
use crate::tables::PortId;

/// The most addresses one filter names.
pub const MAX_HOSTS: usize = 8;

/// Which packets a capture takes. A frame matches when it arrived on `port` (if set),
/// one of its IP addresses (outer, or inside a VXLAN tunnel) is one of `hosts` (if any),
/// and, with `l4_port`, the TCP or UDP port on either side of that header is it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Only packets received on this port.
    pub port: Option<PortId>,
    /// Only packets from or to one of these addresses (empty: any).
    pub hosts: Vec<IpAddr>,
    /// Only packets from or to this TCP or UDP port.
    pub l4_port: Option<u16>,
}

/// One IP header's addresses and, when the header is followed by TCP or UDP, its ports.
struct Ip {
    src: IpAddr,
    dst: IpAddr,
    /// (source port, destination port, UDP), for an unfragmented or first fragment.
    l4: Option<(u16, u16, bool)>,
    /// Where the L4 payload starts (for a VXLAN tunnel's inner frame).
    payload: usize,
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

/// Reads the IP header of an Ethernet frame (one VLAN tag allowed). `None` for anything
/// else, or a frame too short to hold what it says.
fn ip_of(frame: &[u8]) -> Option<Ip> {
    let mut l3 = ETH_LEN;
    let mut ethertype = be16(frame, 12)?;
    if ethertype == EtherType::VLAN {
        ethertype = be16(frame, 16)?;
        l3 += 4;
    }
    let (src, dst, proto, l4, first) = match ethertype {
        EtherType::IPV4 => {
            let h = frame.get(l3..l3 + 20)?;
            let ihl = usize::from(h[0] & 0x0f) * 4;
            let offset = u16::from_be_bytes([h[6], h[7]]) & 0x1fff;
            let src: [u8; 4] = h[12..16].try_into().ok()?;
            let dst: [u8; 4] = h[16..20].try_into().ok()?;
            (
                IpAddr::from(src),
                IpAddr::from(dst),
                h[9],
                l3 + ihl,
                offset == 0,
            )
        }
        EtherType::IPV6 => {
            let h = frame.get(l3..l3 + 40)?;
            let src: [u8; 16] = h[8..24].try_into().ok()?;
            let dst: [u8; 16] = h[24..40].try_into().ok()?;
            (IpAddr::from(src), IpAddr::from(dst), h[6], l3 + 40, true)
        }
        _ => return None,
    };
    let l4_ports = match proto {
        6 | 17 if first => Some((be16(frame, l4)?, be16(frame, l4 + 2)?, proto == 17)),
        _ => None,
    };
    let header = if proto == 17 { 8 } else { 0 };
    Some(Ip {
        src,
        dst,
        l4: l4_ports,
        payload: l4 + header,
    })
}

impl Filter {
    fn ip_matches(&self, ip: &Ip) -> bool {
        let host =
            self.hosts.is_empty() || self.hosts.contains(&ip.src) || self.hosts.contains(&ip.dst);
        let port = match (self.l4_port, ip.l4) {
            (None, _) => true,
            (Some(p), Some((s, d, _))) => p == s || p == d,
            (Some(_), None) => false,
        };
        host && port
    }

    /// Whether `frame`, received on `port`, is one to take.
    pub fn matches(&self, port: PortId, frame: &[u8]) -> bool {
        if self.port.is_some_and(|p| p != port) {
            return false;
        }
        if self.hosts.is_empty() && self.l4_port.is_none() {
            return true;
        }
        let Some(outer) = ip_of(frame) else {
            return false;
        };
        if self.ip_matches(&outer) {
            return true;
        }
        // A VXLAN tunnel's inner frame (the demux's input, the aggregator's output).
        match outer.l4 {
            Some((_, VXLAN_PORT, true)) => frame
                .get(outer.payload + VXLAN_LEN..)
                .and_then(ip_of)
                .is_some_and(|inner| self.ip_matches(&inner)),
            _ => false,
        }
    }
}

/// What became of a packet the recorder took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Sent on this port.
    Forwarded(PortId),
    /// Split into fragments for its tunnel.
    Fragmented,
    /// Sealed into a WireGuard tunnel.
    Sealed,
    /// An ICMP message made of it (too big, echo reply), sent on this port.
    Icmp(PortId),
    /// Dropped for this reason.
    Dropped(DropReason),
    /// Handed to the control thread.
    SlowPath,
    /// A WireGuard datagram, opened by the worker (its inner frame is not taken).
    Opened,
}

impl Outcome {
    /// The outcome of verdict `v`.
    pub fn of(v: Verdict) -> Outcome {
        match v {
            Verdict::Forward(p) => Outcome::Forwarded(p),
            Verdict::Drop(r) => Outcome::Dropped(r),
            Verdict::SlowPath => Outcome::SlowPath,
            Verdict::Icmp(p) => Outcome::Icmp(p),
            Verdict::Fragment(_) => Outcome::Fragmented,
            Verdict::Wg(WgJob::Seal(_)) => Outcome::Sealed,
            Verdict::Wg(WgJob::Open) => Outcome::Opened,
        }
    }

    /// Whether the frame leaves rewritten (then the rewritten frame is taken too).
    fn rewritten(self) -> bool {
        matches!(
            self,
            Outcome::Forwarded(_) | Outcome::Fragmented | Outcome::Sealed | Outcome::Icmp(_)
        )
    }
}

/// Which copy of a packet a record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// As received, before the rewrite, with what became of it.
    Before(Outcome),
    /// As it leaves, after the rewrite.
    After(Outcome),
}

/// One copy of a frame.
#[derive(Debug)]
pub struct Record {
    /// The packet's number in the session: a packet's two copies share it.
    pub packet: u64,
    /// The port it was received on.
    pub port: PortId,
    /// Before or after the rewrite.
    pub stage: Stage,
    /// When its burst was received.
    pub at: Instant,
    /// The frame's length on the wire.
    pub orig_len: u32,
    /// The buffer (from the session's pool) and how much of it holds the frame.
    pub data: Box<[u8]>,
    /// Bytes of `data` taken (at most the session's snap length).
    pub len: usize,
}

/// What a capture asks for.
#[derive(Debug, Clone)]
pub struct Request {
    /// Which packets.
    pub filter: Filter,
    /// How many packets to take (each gives one or two records).
    pub count: u64,
    /// At most this many bytes of each frame.
    pub snaplen: usize,
    /// At most this many packets a second.
    pub rate: u64,
}

/// A running capture: its filter, budget, buffers and ring. Made by the endpoint,
/// read by the workers.
#[derive(Debug)]
pub struct Session {
    /// Which packets.
    pub filter: Filter,
    snaplen: usize,
    /// Packets still to take; a worker takes one by decrementing it past zero.
    remaining: AtomicI64,
    /// Packets the rate still allows; the endpoint refills it as time passes.
    tokens: AtomicI64,
    /// Numbers packets in the order taken.
    next_packet: AtomicU64,
    free: ArrayQueue<Box<[u8]>>,
    ring: ArrayQueue<Record>,
    /// Matching packets not taken: no buffer, a full ring or the rate spent.
    pub missed: AtomicU64,
    /// When it started (wall clock and monotonic, to date the records).
    pub started: (SystemTime, Instant),
}

/// Buffers (and ring slots) one session holds: 2048 frames in flight between the
/// workers and the endpoint.
pub const POOL: usize = 2048;

impl Session {
    /// A session for `req`, its buffers allocated now (off the fast path).
    pub fn new(req: &Request) -> Session {
        let free = ArrayQueue::new(POOL);
        for _ in 0..POOL {
            let _ = free.push(vec![0u8; req.snaplen].into_boxed_slice());
        }
        Session {
            filter: req.filter.clone(),
            snaplen: req.snaplen,
            remaining: AtomicI64::new(i64::try_from(req.count).unwrap_or(i64::MAX)),
            tokens: AtomicI64::new(i64::try_from(req.rate.div_ceil(10)).unwrap_or(i64::MAX)),
            next_packet: AtomicU64::new(1),
            free,
            ring: ArrayQueue::new(POOL),
            missed: AtomicU64::new(0),
            started: (SystemTime::now(), Instant::now()),
        }
    }

    /// Whether every packet asked for has been taken.
    pub fn full(&self) -> bool {
        self.remaining.load(Ordering::Relaxed) <= 0
    }

    /// Adds to what the rate allows, up to `cap` (the endpoint's timer).
    pub fn refill(&self, add: i64, cap: i64) {
        let t = self.tokens.load(Ordering::Relaxed);
        let _ = self.tokens.compare_exchange(
            t,
            t.max(0).saturating_add(add).min(cap),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    /// The next record the workers made, if any.
    pub fn pop(&self) -> Option<Record> {
        self.ring.pop()
    }

    /// Gives a record's buffer back to the pool.
    pub fn recycle(&self, r: Record) {
        let _ = self.free.push(r.data);
    }

    /// Takes one packet off the budget and the rate; false when either is spent.
    fn take(&self) -> bool {
        if self.remaining.load(Ordering::Relaxed) <= 0 {
            return false;
        }
        if self.tokens.fetch_sub(1, Ordering::Relaxed) <= 0 {
            self.missed.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        self.remaining.fetch_sub(1, Ordering::Relaxed) > 0
    }

    /// A buffer holding a copy of `frame` (up to the snap length), or `None` (counted).
    fn copy(&self, frame: &[u8]) -> Option<(Box<[u8]>, usize)> {
        let Some(mut b) = self.free.pop() else {
            self.missed.fetch_add(1, Ordering::Relaxed);
            return None;
        };
        let len = frame.len().min(self.snaplen);
        b[..len].copy_from_slice(&frame[..len]);
        Some((b, len))
    }

    fn push(&self, r: Record) {
        if let Err(r) = self.ring.push(r) {
            self.missed.fetch_add(1, Ordering::Relaxed);
            self.recycle(r);
        }
    }
}

/// Where the workers find the running capture, if there is one.
#[derive(Debug, Default)]
pub struct Capture {
    on: AtomicBool,
    session: ArcSwapOption<Session>,
}

impl Capture {
    /// The running session, if any: one relaxed load when there is none.
    #[inline(always)]
    pub fn session(&self) -> Option<Arc<Session>> {
        if !self.on.load(Ordering::Relaxed) {
            return None;
        }
        self.session.load_full()
    }

    /// Starts `s`, unless a session is running (then `false`).
    pub fn start(&self, s: Arc<Session>) -> bool {
        if self
            .on
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            return false;
        }
        self.session.store(Some(s));
        true
    }

    /// Stops the running session: workers stop taking packets at their next burst.
    pub fn stop(&self) {
        self.session.store(None);
        self.on.store(false, Ordering::Release);
    }
}

/// A worker's side of a capture: the before-copies of the burst in hand, until their
/// verdicts are known.
#[derive(Debug, Default)]
pub struct Tap {
    session: Option<Arc<Session>>,
    pending: Vec<Option<Record>>,
}

impl Tap {
    /// A tap for bursts of up to `burst` packets.
    pub fn new(burst: usize) -> Tap {
        Tap {
            session: None,
            pending: (0..burst).map(|_| None).collect(),
        }
    }

    /// At a burst's start: copies every matching frame of `frames`, received on `port`
    /// at `at`. Does nothing unless a capture runs.
    pub fn before<'a>(
        &mut self,
        capture: &Capture,
        port: PortId,
        at: Instant,
        frames: impl Iterator<Item = &'a [u8]>,
    ) {
        self.session = capture.session();
        let Some(s) = self.session.as_deref() else {
            return;
        };
        if s.filter.port.is_some_and(|p| p != port) {
            return;
        }
        for (slot, frame) in self.pending.iter_mut().zip(frames) {
            if !s.filter.matches(port, frame) || !s.take() {
                continue;
            }
            if let Some((data, len)) = s.copy(frame) {
                *slot = Some(Record {
                    packet: s.next_packet.fetch_add(1, Ordering::Relaxed),
                    port,
                    stage: Stage::Before(Outcome::SlowPath),
                    at,
                    orig_len: frame.len() as u32,
                    data,
                    len,
                });
            }
        }
    }

    /// Whether a capture runs for the burst in hand.
    #[inline(always)]
    pub fn on(&self) -> bool {
        self.session.is_some()
    }

    /// Packet `i` of the burst got verdict `v`; `frame` is it now (rewritten, when it
    /// is forwarded). Hands its copies to the ring.
    pub fn verdict(&mut self, i: usize, v: Verdict, frame: &[u8]) {
        let (Some(s), Some(slot)) = (self.session.as_deref(), self.pending.get_mut(i)) else {
            return;
        };
        let Some(mut before) = slot.take() else {
            return;
        };
        let outcome = Outcome::of(v);
        before.stage = Stage::Before(outcome);
        let after = outcome.rewritten().then(|| s.copy(frame)).flatten();
        let (packet, port, at) = (before.packet, before.port, before.at);
        s.push(before);
        if let Some((data, len)) = after {
            s.push(Record {
                packet,
                port,
                stage: Stage::After(outcome),
                at,
                orig_len: frame.len() as u32,
                data,
                len,
            });
        }
    }

    /// At a burst's end: lets go of the session (copies of packets whose verdict never
    /// came back go back to the pool).
    pub fn end(&mut self) {
        if let Some(s) = self.session.take() {
            for slot in self.pending.iter_mut() {
                if let Some(r) = slot.take() {
                    s.recycle(r);
                }
            }
        }
    }
}

/// Time since the Unix epoch of a record taken in session `s`.
pub fn wall_time(s: &Session, at: Instant) -> Duration {
    let since_start = at.saturating_duration_since(s.started.1);
    (s.started.0 + since_start)
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An Ethernet + IPv4 + UDP frame from `src:sport` to `dst:dport`.
    fn udp4(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&[0x08, 0x00]);
        let total = (20 + 8 + payload.len()) as u16;
        f.extend_from_slice(&[0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0]);
        f[16..18].copy_from_slice(&total.to_be_bytes());
        f.extend_from_slice(&src);
        f.extend_from_slice(&dst);
        f.extend_from_slice(&sport.to_be_bytes());
        f.extend_from_slice(&dport.to_be_bytes());
        f.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        f.extend_from_slice(&[0, 0]);
        f.extend_from_slice(payload);
        f
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn filter_matches_outer_and_vxlan_inner_addresses_and_ports() {
        let device = udp4([198, 51, 100, 10], [203, 0, 113, 2], 5555, 7000, b"hi");
        let mut vx = vec![0x08, 0, 0, 0, 0, 0, 0, 0];
        vx.extend_from_slice(&udp4(
            [198, 51, 100, 10],
            [198, 18, 0, 3],
            5555,
            7000,
            b"hi",
        ));
        let tunnel = udp4([192, 0, 2, 1], [192, 0, 2, 2], 40000, 4789, &vx);
        let f = Filter {
            port: None,
            hosts: vec![ip("203.0.113.2"), ip("198.18.0.3")],
            l4_port: Some(7000),
        };
        assert!(f.matches(0, &device));
        assert!(f.matches(1, &tunnel), "the alias inside the tunnel");
        let other = udp4([198, 51, 100, 10], [203, 0, 113, 9], 5555, 7000, b"hi");
        assert!(!f.matches(0, &other));
        let other_port = udp4([198, 51, 100, 10], [203, 0, 113, 2], 5555, 7001, b"hi");
        assert!(!f.matches(0, &other_port));
        let on_port = Filter {
            port: Some(1),
            ..Filter::default()
        };
        assert!(!on_port.matches(0, &device));
        assert!(on_port.matches(1, &device));
        // Short and odd frames match no address filter, and never panic.
        for n in 0..device.len() {
            assert!(
                !Filter {
                    l4_port: Some(7000),
                    ..f.clone()
                }
                .matches(0, &device[..n])
                    || n >= 38
            );
        }
        assert!(!f.matches(0, &[0xff; 60]));
    }

    #[test]
    fn a_tap_takes_before_and_after_copies_up_to_the_count() {
        let capture = Capture::default();
        let mut tap = Tap::new(4);
        let frames: Vec<Vec<u8>> = (0..4)
            .map(|i| {
                udp4(
                    [198, 51, 100, 10],
                    [203, 0, 113, 2 + (i % 2)],
                    5555,
                    7000,
                    b"x",
                )
            })
            .collect();
        // No capture: nothing taken.
        tap.before(
            &capture,
            0,
            Instant::now(),
            frames.iter().map(|f| f.as_slice()),
        );
        assert!(!tap.on());
        tap.end();

        let s = Arc::new(Session::new(&Request {
            filter: Filter {
                hosts: vec![ip("203.0.113.2")],
                ..Filter::default()
            },
            count: 3,
            snaplen: 2048,
            rate: 1_000_000,
        }));
        assert!(capture.start(s.clone()));
        assert!(!capture.start(s.clone()), "one capture at a time");
        for _ in 0..3 {
            tap.before(
                &capture,
                0,
                Instant::now(),
                frames.iter().map(|f| f.as_slice()),
            );
            assert!(tap.on());
            // Packets 0 and 2 match; 0 is forwarded (rewritten), 2 dropped.
            let rewritten = udp4([198, 51, 100, 10], [198, 18, 0, 3], 5555, 7000, b"x");
            tap.verdict(0, Verdict::Forward(1), &rewritten);
            tap.verdict(1, Verdict::Forward(1), &rewritten);
            tap.verdict(2, Verdict::Drop(DropReason::NoCircuit), &frames[2]);
            tap.end();
        }
        let mut got = Vec::new();
        while let Some(r) = s.pop() {
            got.push((r.packet, r.stage, r.data[..r.len].to_vec()));
            s.recycle(r);
        }
        // Three packets taken (the count), the forwarded ones twice.
        let befores = got
            .iter()
            .filter(|g| matches!(g.1, Stage::Before(_)))
            .count();
        assert_eq!(befores, 3);
        assert!(s.full());
        let (first, after) = (&got[0], &got[1]);
        assert_eq!(first.1, Stage::Before(Outcome::Forwarded(1)));
        assert_eq!(first.2, frames[0]);
        assert_eq!(after.1, Stage::After(Outcome::Forwarded(1)));
        assert_eq!(after.0, first.0);
        assert_eq!(&after.2[30..34], &[198, 18, 0, 3]);
        assert_eq!(
            got[2].1,
            Stage::Before(Outcome::Dropped(DropReason::NoCircuit))
        );
        capture.stop();
        assert!(capture.session().is_none());
    }

    #[test]
    fn the_rate_limits_what_is_taken_and_counts_the_rest_missed() {
        let s = Session::new(&Request {
            filter: Filter::default(),
            count: 1000,
            snaplen: 64,
            rate: 50, // 5 a tick
        });
        let taken = (0..20).filter(|_| s.take()).count();
        assert_eq!(taken, 5);
        assert_eq!(s.missed.load(Ordering::Relaxed), 15);
        s.refill(5, 5);
        assert!(s.take());
    }
}
