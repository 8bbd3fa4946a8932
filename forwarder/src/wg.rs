//! WireGuard tunnels on the fast path, with boringtun's implementation of the protocol.
//!
//! The pipeline only classifies: [`Verdict::Wg`](crate::pipeline::Verdict::Wg) says
//! "seal this into tunnel N" or "open this datagram". The worker then calls a
//! [`WgEngine`], which holds one boringtun [`Tunn`] per peer (its handshake state,
//! session keys, replay window and timers). boringtun's `Tunn` takes `&mut self` for
//! everything, so the engine belongs to exactly one worker: a forwarder with WireGuard
//! tunnels runs one worker (`wireguard` in the config enforces it); several tunnels per
//! POP-DC pair spread the work over forwarders.
//!
//! Per packet the engine allocates nothing, locks nothing that can be contended, logs
//! nothing and makes no system call: sealing is one copy (boringtun encrypts from the
//! received frame into a fresh buffer, whose outer headers come from the tunnel's
//! template), opening is one copy into a fresh buffer that gets an Ethernet header and
//! goes through [`crate::pipeline::process_inner`]. Handshakes (four X25519 operations)
//! run inline when one arrives, within a per-poll budget; boringtun's timers
//! (retransmission, rekeying, keepalives) run in [`WgEngine::tick`], which the worker
//! calls every [`WgEngine::TICK_MS`] outside the burst loop. Creating a peer's `Tunn`
//! allocates; that happens only when a new snapshot names a new peer.
//!
//! Nothing is sent before a session exists: a packet for a peer without one is dropped
//! (`wg_no_session`) and a handshake is started, rather than queued (boringtun's queue
//! allocates per packet). The end with a persistent keepalive (the POP, behind a
//! consumer line) starts its handshake as soon as the tunnel exists, so sessions are up
//! before circuits carry traffic.

use std::collections::HashMap;
use std::net::IpAddr;

use boringtun::noise::errors::WireGuardError;
use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};

use crate::packet::ethernet;
use crate::packet::wireguard::{self, msg};
use crate::packet::MacAddr;
use crate::pipeline::{DropReason, PacketBuf};
use crate::tables::{PortId, Snapshot};

/// Handshake messages one engine handles per poll round; more are dropped
/// (`wg_handshake_limit`) so that a flood cannot hold the worker in Diffie-Hellman.
pub const HANDSHAKES_PER_ROUND: u32 = 4;

/// The largest WireGuard message the engine builds outside a data packet (an
/// initiation is 148 bytes).
const SCRATCH: usize = 256;

struct Peer {
    tunn: Box<Tunn>,
    public_key: [u8; 32],
    /// Index into the current snapshot's tunnels.
    tunnel: u16,
    /// A session exists: sealing may go ahead.
    established: bool,
    /// Data waited for a session: start a handshake at the next tick.
    want_init: bool,
    /// Persistent keepalive set: this end starts handshakes.
    initiator: bool,
    handshakes: u64,
}

/// What opening a datagram gave.
pub enum Opened<B> {
    /// An inner frame (Ethernet header + the decrypted IP packet) for
    /// [`crate::pipeline::process_inner`].
    Inner(B),
    /// A handshake message or cookie to send back, out of this port.
    Reply(PortId, B),
    /// Consumed (a keepalive, a completed handshake).
    Nothing,
    /// Dropped, for this reason.
    Drop(DropReason),
}

/// One peer's state, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerState {
    /// The peer's public key.
    pub public_key: [u8; 32],
    /// A session exists.
    pub established: bool,
    /// Handshakes completed.
    pub handshakes: u64,
}

/// The WireGuard state of one worker: its private key and every peer's `Tunn`.
pub struct WgEngine {
    secret: StaticSecret,
    public: [u8; 32],
    /// By slot (the top 24 bits of every receiver index this end hands out).
    peers: Vec<Option<Peer>>,
    slots: HashMap<[u8; 32], u32>,
    /// The synced snapshot's peer index -> slot.
    by_snapshot: Vec<u32>,
    synced: (usize, u64),
    budget: u32,
    handshakes: u64,
    scratch: Box<[u8; SCRATCH]>,
}

fn drop_reason(e: WireGuardError) -> DropReason {
    use WireGuardError as E;
    match e {
        E::InvalidAeadTag | E::InvalidMac => DropReason::WgBadMac,
        E::DuplicateCounter | E::InvalidCounter | E::WrongTai64nTimestamp => DropReason::WgReplay,
        E::NoCurrentSession | E::WrongIndex | E::WrongKey | E::UnexpectedPacket => {
            DropReason::WgUnknownPeer
        }
        E::UnderLoad => DropReason::WgHandshakeLimit,
        E::ConnectionExpired => DropReason::WgNoSession,
        _ => DropReason::Malformed,
    }
}

impl WgEngine {
    /// How often the worker calls [`WgEngine::tick`].
    pub const TICK_MS: u64 = 100;

    /// An engine with this private key and no peers yet.
    pub fn new(private_key: [u8; 32]) -> WgEngine {
        let secret = StaticSecret::from(private_key);
        let public = PublicKey::from(&secret).to_bytes();
        WgEngine {
            secret,
            public,
            peers: Vec::new(),
            slots: HashMap::new(),
            by_snapshot: Vec::new(),
            synced: (0, u64::MAX),
            budget: HANDSHAKES_PER_ROUND,
            handshakes: 0,
            scratch: Box::new([0; SCRATCH]),
        }
    }

    /// This end's public key.
    pub fn public_key(&self) -> [u8; 32] {
        self.public
    }

    /// Starts a poll round: the handshake budget is full again.
    #[inline]
    pub fn new_round(&mut self) {
        self.budget = HANDSHAKES_PER_ROUND;
    }

    /// Follows `snap`'s peers: a `Tunn` for each new one, none for those it no longer
    /// names. A no-op (one comparison) when `snap` is the snapshot last synced.
    #[inline]
    pub fn sync(&mut self, snap: &Snapshot) {
        let id = (snap as *const Snapshot as usize, snap.generation());
        if id != self.synced {
            self.resync(snap);
            self.synced = id;
        }
    }

    #[cold]
    fn resync(&mut self, snap: &Snapshot) {
        self.by_snapshot.clear();
        let mut seen = vec![false; self.peers.len() + snap.wg.peers.len()];
        for info in snap.wg.peers.iter() {
            let slot = match self.slots.get(&info.public_key) {
                Some(&s) => s,
                None => {
                    let slot = self
                        .peers
                        .iter()
                        .position(Option::is_none)
                        .unwrap_or(self.peers.len());
                    if slot == self.peers.len() {
                        self.peers.push(None);
                    }
                    let tunn = Tunn::new(
                        self.secret.clone(),
                        PublicKey::from(info.public_key),
                        None,
                        info.keepalive,
                        slot as u32,
                        None,
                    );
                    self.peers[slot] = Some(Peer {
                        tunn: Box::new(tunn),
                        public_key: info.public_key,
                        tunnel: info.tunnel,
                        established: false,
                        want_init: false,
                        initiator: info.keepalive.is_some(),
                        handshakes: 0,
                    });
                    self.slots.insert(info.public_key, slot as u32);
                    slot as u32
                }
            };
            if let Some(p) = self.peers[slot as usize].as_mut() {
                p.tunnel = info.tunnel;
            }
            seen[slot as usize] = true;
            self.by_snapshot.push(slot);
        }
        for (slot, p) in self.peers.iter_mut().enumerate() {
            if !seen.get(slot).copied().unwrap_or(false) {
                if let Some(old) = p.take() {
                    self.slots.remove(&old.public_key);
                }
            }
        }
    }

    /// Seals the IP packet at `frame[l3..]` (already rewritten) into WireGuard tunnel
    /// `tunnel`: a new buffer from `alloc(len)` with the outer headers and the transport
    /// message, and the port it leaves from.
    #[inline]
    pub fn seal<B: PacketBuf>(
        &mut self,
        snap: &Snapshot,
        tunnel: u16,
        frame: &[u8],
        l3: usize,
        alloc: impl FnOnce(usize) -> Option<B>,
    ) -> Result<(PortId, B), DropReason> {
        let t = snap
            .tunnels
            .get(tunnel as usize)
            .ok_or(DropReason::Malformed)?;
        let w = t.wg.as_ref().ok_or(DropReason::Malformed)?;
        let nh = &snap.next_hops[t.next_hop as usize];
        let mac = nh.mac().ok_or(DropReason::NoNeighbour)?;
        let len = wireguard::ip_len(frame, l3).ok_or(DropReason::Malformed)?;
        let slot = *self
            .by_snapshot
            .get(w.peer as usize)
            .ok_or(DropReason::WgNoSession)?;
        let peer = self.peers[slot as usize]
            .as_mut()
            .ok_or(DropReason::WgNoSession)?;
        if !peer.established {
            peer.want_init = true;
            return Err(DropReason::WgNoSession);
        }
        let o = w.outer.len();
        let mut out = alloc(o + wireguard::DATA_OVERHEAD + len).ok_or(DropReason::NoBuffer)?;
        let b = out.data_mut();
        if b.len() != o + wireguard::DATA_OVERHEAD + len {
            return Err(DropReason::NoBuffer);
        }
        match peer.tunn.encapsulate(&frame[l3..l3 + len], &mut b[o..]) {
            TunnResult::WriteToNetwork(p) if p.len() == wireguard::DATA_OVERHEAD + len => {}
            _ => return Err(DropReason::WgNoSession),
        }
        if !w.outer.write(b, mac) {
            return Err(DropReason::Malformed);
        }
        Ok((nh.port, out))
    }

    /// Authenticates and opens a WireGuard datagram received on `in_port` (the pipeline
    /// found it addressed to this port's WireGuard port).
    #[inline]
    pub fn open<B: PacketBuf>(
        &mut self,
        snap: &Snapshot,
        in_port: PortId,
        frame: &[u8],
        alloc: impl FnOnce(usize) -> Option<B>,
    ) -> Opened<B> {
        let Ok(dg) = wireguard::parse_udp(frame) else {
            return Opened::Drop(DropReason::Malformed);
        };
        let m = dg.payload(frame);
        match m.first() {
            Some(&msg::DATA) => {}
            Some(&msg::INITIATION) => {
                let Some(&i) = snap.wg.by_endpoint.get(&dg.src) else {
                    return Opened::Drop(DropReason::WgUnknownPeer);
                };
                let slot = self.by_snapshot.get(i as usize).copied();
                return self.handshake(snap, slot, dg.src, m, alloc);
            }
            Some(&(msg::RESPONSE | msg::COOKIE)) => {
                let Some(idx) = wireguard::receiver_index(m) else {
                    return Opened::Drop(DropReason::Malformed);
                };
                return self.handshake(snap, Some(idx >> 8), dg.src, m, alloc);
            }
            _ => return Opened::Drop(DropReason::Malformed),
        }
        let Some(idx) = wireguard::receiver_index(m) else {
            return Opened::Drop(DropReason::Malformed);
        };
        let Some(Some(peer)) = self.peers.get_mut((idx >> 8) as usize) else {
            self.lost_session(snap, dg.src);
            return Opened::Drop(DropReason::WgUnknownPeer);
        };
        let Some(port) = snap.ports.get(in_port as usize) else {
            return Opened::Drop(DropReason::Unsupported);
        };
        let l3 = ethernet::HEADER_LEN;
        let Some(mut out) = alloc(l3 + m.len()) else {
            return Opened::Drop(DropReason::NoBuffer);
        };
        let b = out.data_mut();
        if b.len() != l3 + m.len() {
            return Opened::Drop(DropReason::NoBuffer);
        }
        let n = match peer.tunn.decapsulate(None, m, &mut b[l3..]) {
            TunnResult::WriteToTunnelV4(p, _) | TunnResult::WriteToTunnelV6(p, _) => p.len(),
            TunnResult::Done => {
                // A keepalive: the session is confirmed.
                peer.established = true;
                return Opened::Nothing;
            }
            TunnResult::Err(e) => {
                let reason = drop_reason(e);
                if reason == DropReason::WgUnknownPeer {
                    self.lost_session(snap, dg.src);
                }
                return Opened::Drop(reason);
            }
            TunnResult::WriteToNetwork(_) => return Opened::Drop(DropReason::Malformed),
        };
        // A transport message decrypted: a session exists and is current.
        peer.established = true;
        let Some(ethertype) = wireguard::ethertype_of(&b[l3..]) else {
            return Opened::Drop(DropReason::Malformed);
        };
        ethernet::write_header(b, port.mac, MacAddr::ZERO, ethertype);
        if !out.truncate(l3 + n) {
            return Opened::Drop(DropReason::Malformed);
        }
        Opened::Inner(out)
    }

    /// Transport data from a configured peer's endpoint that no session of ours opens:
    /// this end lost its sessions (it restarted) while the peer still holds the old
    /// ones. The peer would only notice after its own timers (up to 15 s without a
    /// reply, or the 2-minute rekey), so this end starts a handshake at the next tick.
    /// boringtun sends at most one initiation per handshake attempt (`REKEY_TIMEOUT`),
    /// so a flood of such packets costs one initiation, not one per packet.
    #[cold]
    #[inline(never)]
    fn lost_session(&mut self, snap: &Snapshot, src: IpAddr) {
        let Some(&i) = snap.wg.by_endpoint.get(&src) else {
            return;
        };
        if let Some(&slot) = self.by_snapshot.get(i as usize) {
            if let Some(Some(peer)) = self.peers.get_mut(slot as usize) {
                peer.want_init = true;
            }
        }
    }

    /// A handshake message (or cookie) for the peer in `slot`.
    #[cold]
    #[inline(never)]
    fn handshake<B: PacketBuf>(
        &mut self,
        snap: &Snapshot,
        slot: Option<u32>,
        src: IpAddr,
        m: &[u8],
        alloc: impl FnOnce(usize) -> Option<B>,
    ) -> Opened<B> {
        let Some(Some(peer)) = slot.map(|s| self.peers.get_mut(s as usize)) else {
            return Opened::Drop(DropReason::WgUnknownPeer);
        };
        let Some(peer) = peer.as_mut() else {
            return Opened::Drop(DropReason::WgUnknownPeer);
        };
        if self.budget == 0 {
            return Opened::Drop(DropReason::WgHandshakeLimit);
        }
        self.budget -= 1;
        let r = match peer.tunn.decapsulate(Some(src), m, &mut self.scratch[..]) {
            TunnResult::WriteToNetwork(p) => Ok(Some(p.len())),
            TunnResult::Done => Ok(None),
            TunnResult::Err(e) => Err(drop_reason(e)),
            _ => Err(DropReason::Malformed),
        };
        peer.established = peer.tunn.time_since_last_handshake().is_some();
        if m[0] != msg::COOKIE && r.is_ok() {
            peer.handshakes += 1;
            self.handshakes += 1;
        }
        match r {
            Err(e) => Opened::Drop(e),
            Ok(None) => Opened::Nothing,
            Ok(Some(n)) => match frame_to(snap, peer.tunnel, &self.scratch[..n], alloc) {
                Some((port, f)) => Opened::Reply(port, f),
                None => Opened::Drop(DropReason::NoNeighbour),
            },
        }
    }

    /// boringtun's timers for every peer (handshake retransmission, rekeying, session
    /// expiry, keepalives), and a handshake for peers that start them and have no
    /// session or had data waiting. Frames to send go to `send`.
    pub fn tick<B: PacketBuf>(
        &mut self,
        snap: &Snapshot,
        mut alloc: impl FnMut(usize) -> Option<B>,
        mut send: impl FnMut(PortId, B),
    ) {
        self.sync(snap);
        for peer in self.peers.iter_mut().flatten() {
            let mut out = |p: &[u8]| {
                if let Some((port, f)) = frame_to(snap, peer.tunnel, p, &mut alloc) {
                    send(port, f);
                }
            };
            if let TunnResult::WriteToNetwork(p) = peer.tunn.update_timers(&mut self.scratch[..]) {
                out(p);
            }
            peer.established = peer.tunn.time_since_last_handshake().is_some();
            if peer.want_init || (peer.initiator && !peer.established) {
                peer.want_init = false;
                if let TunnResult::WriteToNetwork(p) = peer
                    .tunn
                    .format_handshake_initiation(&mut self.scratch[..], false)
                {
                    out(p);
                }
            }
        }
    }

    /// Handshake messages accepted since the engine started.
    pub fn handshakes(&self) -> u64 {
        self.handshakes
    }

    /// Every peer's state (for metrics; off the fast path).
    pub fn peers(&self) -> impl Iterator<Item = PeerState> + '_ {
        self.peers.iter().flatten().map(|p| PeerState {
            public_key: p.public_key,
            established: p.established,
            handshakes: p.handshakes,
        })
    }
}

/// A frame carrying WireGuard message `m` to tunnel `tunnel`'s peer.
fn frame_to<B: PacketBuf>(
    snap: &Snapshot,
    tunnel: u16,
    m: &[u8],
    alloc: impl FnOnce(usize) -> Option<B>,
) -> Option<(PortId, B)> {
    let t = snap.tunnels.get(tunnel as usize)?;
    let w = t.wg.as_ref()?;
    let nh = &snap.next_hops[t.next_hop as usize];
    let mac = nh.mac()?;
    let o = w.outer.len();
    let mut f = alloc(o + m.len())?;
    let b = f.data_mut();
    if b.len() != o + m.len() {
        return None;
    }
    b[o..].copy_from_slice(m);
    w.outer.write(b, mac).then_some((nh.port, f))
}
