//! Immutable snapshots of everything a worker looks up, published with one atomic swap.
//!
//! A [`Snapshot`] is built off the fast path from a [`Rules`] value (static config or the
//! keeper) and the forwarder's ports, validated as a whole, and published through a
//! [`SnapshotHandle`]. A worker loads the current snapshot once per poll round (through an
//! `arc_swap::Cache`: one pointer compared); a swap never blocks it, and it never sees
//! half of one snapshot and half of another.
//!
//! Everything known when the snapshot is built is resolved then: checksum differences of
//! each rewrite, the next hop of each app host and tunnel peer. Only the remux, whose
//! destinations are arbitrary devices, does a route lookup per packet.

pub mod counted;
mod filter;
mod flatmap;
mod lpm;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};

pub use counted::{CircuitKey, CircuitSlots, Counted};
pub use filter::KeyFilter;
pub use flatmap::{BuildError, FlatMap, Key};
pub use lpm::{Lpm, Prefixable};
pub use tarp_api::rules::{
    self, AggregatorRule, DemuxRule, Protocol, RemuxRule, Route, Rules, Tunnel, TunnelPeer,
};

use crate::packet::checksum::Delta;
use crate::packet::MacAddr;

/// Index of a port in the forwarder's port list (the DPDK port order).
pub type PortId = u16;

/// Index of a next hop in [`Snapshot::next_hops`].
pub type NextHopId = u16;

/// "No next hop": an on-link route, whose next hop is each packet's own destination.
pub const ON_LINK: NextHopId = NextHopId::MAX;

/// The role of a port: which pipeline runs on what it receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A POP line: capture address -> demux alias, into the tunnel.
    Aggregator,
    /// A data-center tunnel end: decapsulate, alias -> app host or capture address.
    Demux,
    /// Data-center egress: app host -> capture address as the reply's source.
    Remux,
}

/// What the snapshot builder needs to know about one port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortInfo {
    /// Name used by routes and lines.
    pub name: String,
    /// Which pipeline handles what the port receives.
    pub role: Role,
    /// The port's MAC address.
    pub mac: MacAddr,
    /// The port's own addresses (tunnel endpoints, addresses answered by the slow path).
    pub addrs: Vec<IpAddr>,
    /// The largest IP packet the port sends (its link MTU).
    pub mtu: u16,
    /// Clamp the MSS of TCP SYNs received here to what the tunnel carries.
    pub clamp_mss: bool,
}

impl PortInfo {
    /// The MTU of a port whose config does not name one.
    pub const DEFAULT_MTU: u16 = 1500;

    /// A port with the default MTU and MSS clamping on.
    pub fn new(name: &str, role: Role, mac: MacAddr, addrs: Vec<IpAddr>) -> PortInfo {
        PortInfo {
            name: name.into(),
            role,
            mac,
            addrs,
            mtu: Self::DEFAULT_MTU,
            clamp_mss: true,
        }
    }
}

/// A port as the pipelines see it.
#[derive(Debug, Clone)]
pub struct PortEntry {
    /// Name.
    pub name: String,
    /// Role.
    pub role: Role,
    /// MAC address.
    pub mac: MacAddr,
    /// Own IPv4 addresses.
    pub v4: Vec<u32>,
    /// Own IPv6 addresses.
    pub v6: Vec<[u8; 16]>,
    /// The largest IP packet the port sends.
    pub mtu: u16,
    /// Clamp the MSS of TCP SYNs received here.
    pub clamp_mss: bool,
}

impl PortEntry {
    /// True if `a` is one of the port's own IPv4 addresses.
    #[inline(always)]
    pub fn is_local_v4(&self, a: u32) -> bool {
        self.v4.contains(&a)
    }

    /// True if `a` is one of the port's own IPv6 addresses.
    #[inline(always)]
    pub fn is_local_v6(&self, a: [u8; 16]) -> bool {
        self.v6.contains(&a)
    }

    /// True if `a` is one of the port's own addresses.
    pub fn is_local(&self, a: IpAddr) -> bool {
        match a {
            IpAddr::V4(a) => self.is_local_v4(a.into()),
            IpAddr::V6(a) => self.is_local_v6(a.octets()),
        }
    }
}

/// A resolved next hop: output port, gateway address, and its MAC once known.
///
/// The MAC is written by the control thread (ARP / neighbour discovery) into the current
/// snapshot and read by workers without locks.
#[derive(Debug)]
pub struct NextHop {
    /// Output port.
    pub port: PortId,
    /// Gateway (or on-link destination) address.
    pub ip: IpAddr,
    /// MAC in the low 48 bits, bit 63 set once resolved.
    mac: AtomicU64,
}

const MAC_VALID: u64 = 1 << 63;

impl NextHop {
    /// The MAC address, if resolved.
    #[inline]
    pub fn mac(&self) -> Option<MacAddr> {
        let v = self.mac.load(Ordering::Relaxed);
        (v & MAC_VALID != 0).then(|| MacAddr::from_u64(v))
    }

    /// Records the MAC address (control thread).
    pub fn set_mac(&self, mac: MacAddr) {
        self.mac.store(mac.to_u64() | MAC_VALID, Ordering::Relaxed);
    }
}

/// A destination or source rewrite with everything precomputed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Rewrite<A> {
    /// The new address.
    pub addr: A,
    /// Checksum difference of old -> new address.
    pub delta: Delta,
    /// Next hop to send to ([`ON_LINK`] when decided per packet by a route lookup).
    pub next_hop: NextHopId,
}

/// An aggregator map entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AggEntry<A> {
    /// Demux alias.
    pub alias: A,
    /// Checksum difference of capture -> alias.
    pub delta: Delta,
    /// Index into [`Snapshot::tunnels`].
    pub tunnel: u16,
    /// Answer ICMP echo to the capture address here (port mode).
    pub answer_ping: bool,
}

/// A tunnel as the aggregator pipeline uses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TunnelEntry {
    /// Outer source.
    pub local: IpAddr,
    /// Outer destination.
    pub remote: IpAddr,
    /// VXLAN network identifier.
    pub vni: u32,
    /// Inner frame's destination MAC.
    pub inner_dst_mac: MacAddr,
    /// Next hop towards `remote`.
    pub next_hop: NextHopId,
    /// The largest inner IP packet the tunnel carries (path MTU minus encapsulation).
    pub inner_mtu: u16,
    /// The outer headers, prebuilt (source MAC of the output port included).
    pub outer: crate::packet::vxlan::OuterTemplate,
    /// A WireGuard tunnel: its peer and outer headers (`None`: VXLAN).
    pub wg: Option<WgTunnel>,
}

/// What a WireGuard tunnel adds to its [`TunnelEntry`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WgTunnel {
    /// Index into [`WgTable::peers`].
    pub peer: u16,
    /// Outer Ethernet, IP and UDP headers to the peer.
    pub outer: crate::packet::wireguard::OuterTemplate,
}

/// A forwarder's WireGuard peers, one per WireGuard tunnel.
#[derive(Debug, Clone, Default)]
pub struct WgTable {
    /// This forwarder's UDP port for WireGuard (0: no WireGuard tunnels).
    pub listen_port: u16,
    /// The peers, indexed by [`WgTunnel::peer`].
    pub peers: Box<[WgPeerInfo]>,
    /// A peer's endpoint -> its index (handshake initiations are looked up by source,
    /// so that only configured endpoints can make this forwarder run Diffie-Hellman).
    pub by_endpoint: HashMap<IpAddr, u16>,
}

/// One WireGuard peer as the snapshot names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WgPeerInfo {
    /// Its static public key.
    pub public_key: [u8; 32],
    /// Index into [`Snapshot::tunnels`].
    pub tunnel: u16,
    /// Persistent keepalive (seconds); set on the end that starts handshakes.
    pub keepalive: Option<u16>,
}

/// Inner destination MAC used when a tunnel does not name one (locally administered).
pub const DEFAULT_INNER_MAC: MacAddr = MacAddr([0x02, 0x74, 0x61, 0x72, 0x70, 0x00]);

/// The lookup tables of one address family: `A` is the address (`u32` for IPv4, the 16
/// bytes for IPv6, so that entries need no 16-byte alignment), `PK` the port-mode key.
#[derive(Clone)]
pub struct Maps<A, PK> {
    /// Capture address -> alias and tunnel.
    pub aggregator: FlatMap<A, AggEntry<A>>,
    /// Which addresses may be capture addresses (the martian-source check asks it
    /// before the map).
    pub captures: KeyFilter,
    /// Alias -> capture address, delivered to the app host (address mode).
    pub demux_addr: FlatMap<A, Rewrite<A>>,
    /// (alias, protocol, port) -> app host (port mode).
    pub demux_port: FlatMap<PK, Rewrite<A>>,
    /// (app host, protocol, source port) -> capture address.
    pub remux_port: FlatMap<PK, Rewrite<A>>,
    /// Capture addresses whose replies pass the remux unchanged (address mode).
    pub remux_addr: FlatMap<A, ()>,
    /// Outer sources a demux (or, for symmetric return, an aggregator) accepts, with the
    /// VNI each must use ([`ANY_VNI`]: any).
    pub peers: FlatMap<A, u32>,
    /// Symmetric return at an aggregator: capture address -> the next hop (a line's
    /// gateway) its replies from the DC leave to.
    pub returns: FlatMap<A, NextHopId>,
    /// Symmetric return at a remux: capture address -> index into
    /// [`Snapshot::tunnels`] its replies go into.
    pub return_tunnels: FlatMap<A, u16>,
}

impl<A: Key + Default, PK: Key> Maps<A, PK> {
    fn memory_bytes(&self) -> usize {
        self.aggregator.memory_bytes()
            + self.captures.memory_bytes()
            + self.demux_addr.memory_bytes()
            + self.demux_port.memory_bytes()
            + self.remux_port.memory_bytes()
            + self.remux_addr.memory_bytes()
            + self.peers.memory_bytes()
            + self.returns.memory_bytes()
            + self.return_tunnels.memory_bytes()
    }

    fn entries(&self) -> usize {
        self.aggregator.len()
            + self.demux_addr.len()
            + self.demux_port.len()
            + self.remux_port.len()
            + self.remux_addr.len()
    }

    /// Entries per table, by name.
    fn per_table(&self) -> [(&'static str, usize); 8] {
        [
            ("aggregator", self.aggregator.len()),
            ("demux_addr", self.demux_addr.len()),
            ("demux_port", self.demux_port.len()),
            ("remux_port", self.remux_port.len()),
            ("remux_addr", self.remux_addr.len()),
            ("tunnel_peers", self.peers.len()),
            ("returns", self.returns.len()),
            ("return_tunnels", self.return_tunnels.len()),
        ]
    }
}

/// A tunnel peer that may use any VNI.
pub const ANY_VNI: u32 = u32::MAX;

/// Port-mode key for IPv4: address, protocol and port packed in a u64.
#[inline]
pub const fn port_key_v4(addr: u32, protocol: u8, port: u16) -> u64 {
    ((addr as u64) << 24) | ((protocol as u64) << 16) | port as u64
}

/// Port-mode key for IPv6.
#[inline]
pub const fn port_key_v6(addr: [u8; 16], protocol: u8, port: u16) -> ([u8; 16], u32) {
    (addr, ((protocol as u32) << 16) | port as u32)
}

/// Why a `Rules` value cannot become a snapshot. The old snapshot keeps forwarding.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RulesError {
    /// A route names a port the forwarder does not have.
    #[error("route {prefix}: unknown port {port:?}")]
    UnknownPort {
        /// The route's prefix.
        prefix: String,
        /// The port name.
        port: String,
    },
    /// An aggregator rule names a line the forwarder does not have (or not an aggregator port).
    #[error("aggregator rule for {capture}: line {line:?} is not an aggregator port here")]
    UnknownLine {
        /// Capture address.
        capture: IpAddr,
        /// Line name.
        line: String,
    },
    /// An aggregator rule names a tunnel that is not defined.
    #[error("aggregator rule for {capture}: unknown tunnel {tunnel}")]
    UnknownTunnel {
        /// Capture address.
        capture: IpAddr,
        /// Tunnel id.
        tunnel: u32,
    },
    /// Addresses of different families where one family is needed.
    #[error("{what}: {a} and {b} are not the same address family")]
    FamilyMismatch {
        /// Which rule.
        what: &'static str,
        /// First address.
        a: IpAddr,
        /// Second address.
        b: IpAddr,
    },
    /// No route to an app host or tunnel peer.
    #[error("no route to {0}")]
    NoRoute(IpAddr),
    /// The same key twice.
    #[error("duplicate {0}")]
    Duplicate(String),
    /// A VNI wider than 24 bits.
    #[error("tunnel {id}: vni {vni} does not fit in 24 bits")]
    VniTooLarge {
        /// Tunnel id.
        id: u32,
        /// VNI.
        vni: u32,
    },
    /// A tunnel's local address is not one of this forwarder's port addresses.
    #[error("tunnel {id}: local address {local} is not an address of any port")]
    TunnelLocalNotOurs {
        /// Tunnel id.
        id: u32,
        /// Address.
        local: IpAddr,
    },
    /// The unspecified address (0.0.0.0 or ::) where a real address is needed.
    #[error("{0}: the unspecified address cannot be a capture address, alias, app host or peer")]
    Unspecified(&'static str),
    /// A path MTU too small to carry a minimal IP packet inside the tunnel.
    #[error("MTU {mtu} is below {min} (576 bytes inside the tunnel)")]
    MtuTooSmall {
        /// The MTU.
        mtu: u16,
        /// The smallest accepted.
        min: u16,
    },
    /// `return_via` without the line it leaves from.
    #[error("return_via needs the rule's line")]
    ReturnWithoutLine,
    /// WireGuard tunnels on different listen ports, or on VXLAN's.
    #[error("tunnel {id}: WireGuard listen port {port} clashes with {first} (every WireGuard tunnel shares one UDP port, never 0 or VXLAN's 4789)")]
    WgListenPort {
        /// Tunnel id.
        id: u32,
        /// The port asked for.
        port: u16,
        /// The port it clashes with.
        first: u16,
    },
    /// One tunnel peer with two different VNIs.
    #[error("tunnel peer {0} is listed twice")]
    PeerTwice(IpAddr),
    /// More distinct next hops than a snapshot can index.
    #[error("too many next hops")]
    TooManyNextHops,
    /// One of the above, at a key of the rules (`rules.demux[3].app_host`).
    #[error("{key}: {source}")]
    At {
        /// Path of the key in the rules, as in the config file.
        key: String,
        /// What is wrong there.
        source: Box<RulesError>,
    },
}

impl RulesError {
    /// The key the error is about, if it names one.
    pub fn key(&self) -> Option<&str> {
        match self {
            RulesError::At { key, .. } => Some(key),
            _ => None,
        }
    }
}

/// Places an error at `rules.<list>[<index>]<field>` (`field` empty or `.name`).
fn at(list: &'static str, index: usize, field: &'static str) -> impl Fn(RulesError) -> RulesError {
    move |e| RulesError::At {
        key: format!("rules.{list}[{index}]{field}"),
        source: Box::new(e),
    }
}

/// Known neighbour MACs by (port, address): static ones from config and those the slow
/// path learned. A new snapshot starts with them.
pub type NeighbourCache = HashMap<(PortId, IpAddr), MacAddr>;

/// Everything a worker looks up, immutable once built.
pub struct Snapshot {
    generation: u64,
    /// Ports, indexed by [`PortId`].
    pub ports: Box<[PortEntry]>,
    /// Next hops, indexed by [`NextHopId`].
    pub next_hops: Box<[NextHop]>,
    /// Tunnels, indexed by [`AggEntry::tunnel`].
    pub tunnels: Box<[TunnelEntry]>,
    /// IPv4 tables.
    pub v4: Maps<u32, u64>,
    /// IPv6 tables.
    pub v6: Maps<[u8; 16], ([u8; 16], u32)>,
    /// IPv4 routes for per-packet destinations.
    pub routes_v4: Lpm<u32, NextHopId>,
    /// IPv6 routes for per-packet destinations.
    pub routes_v6: Lpm<u128, NextHopId>,
    /// Capture address -> the line it lives on (`None`: every aggregator port); slow path.
    capture_lines: HashMap<IpAddr, Option<PortId>>,
    /// Every port's own IPv4 addresses (martian sources at the aggregator).
    pub own_v4: Box<[u32]>,
    /// Every port's own IPv6 addresses.
    pub own_v6: Box<[[u8; 16]]>,
    /// The largest inner packet of the circuits' tunnels (the remux's MSS clamp).
    pub inner_mtu: u16,
    /// WireGuard peers.
    pub wg: WgTable,
    /// Circuits counted one by one (`circuit_metrics`), and their slots; empty when off.
    /// Set by the control thread before the snapshot is published.
    pub counted: Counted,
}

fn v4(a: IpAddr) -> Option<u32> {
    match a {
        IpAddr::V4(a) => Some(a.into()),
        IpAddr::V6(_) => None,
    }
}

fn v6(a: IpAddr) -> Option<[u8; 16]> {
    match a {
        IpAddr::V6(a) => Some(a.octets()),
        IpAddr::V4(_) => None,
    }
}

fn show_v4(a: u32) -> String {
    std::net::Ipv4Addr::from(a).to_string()
}

fn show_v6(a: [u8; 16]) -> String {
    std::net::Ipv6Addr::from(a).to_string()
}

/// Maps a table build error to the rules list that caused it.
fn err<K>(
    list: &'static str,
    what: &'static str,
    show: impl Fn(K) -> String,
) -> impl Fn(BuildError<K>) -> RulesError {
    move |e| {
        let source = match e {
            BuildError::Duplicate(k) => RulesError::Duplicate(format!("{what} {}", show(k))),
            BuildError::Reserved => RulesError::Unspecified(what),
        };
        RulesError::At {
            key: format!("rules.{list}"),
            source: Box::new(source),
        }
    }
}

fn same_family(what: &'static str, a: IpAddr, b: IpAddr) -> Result<(), RulesError> {
    if a.is_ipv4() == b.is_ipv4() {
        Ok(())
    } else {
        Err(RulesError::FamilyMismatch { what, a, b })
    }
}

struct Builder<'a> {
    ports: &'a [PortInfo],
    routes_v4: Lpm<u32, (PortId, Option<IpAddr>)>,
    routes_v6: Lpm<u128, (PortId, Option<IpAddr>)>,
    next_hops: Vec<(PortId, IpAddr)>,
    index: HashMap<(PortId, IpAddr), NextHopId>,
}

impl Builder<'_> {
    fn intern(&mut self, port: PortId, ip: IpAddr) -> Result<NextHopId, RulesError> {
        if let Some(&id) = self.index.get(&(port, ip)) {
            return Ok(id);
        }
        let id = NextHopId::try_from(self.next_hops.len())
            .ok()
            .filter(|&id| id != ON_LINK)
            .ok_or(RulesError::TooManyNextHops)?;
        self.next_hops.push((port, ip));
        self.index.insert((port, ip), id);
        Ok(id)
    }

    /// The next hop for a destination known at build time.
    fn resolve(&mut self, dst: IpAddr) -> Result<NextHopId, RulesError> {
        let hit = match dst {
            IpAddr::V4(a) => self.routes_v4.lookup(a.into()).copied(),
            IpAddr::V6(a) => self.routes_v6.lookup(a.into()).copied(),
        };
        let (port, via) = hit.ok_or(RulesError::NoRoute(dst))?;
        self.intern(port, via.unwrap_or(dst))
    }

    fn port_id(&self, name: &str) -> Option<PortId> {
        self.ports
            .iter()
            .position(|p| p.name == name)
            .map(|i| i as PortId)
    }
}

impl Snapshot {
    /// Validates `rules` against `ports` and builds the snapshot for `generation`.
    /// Next-hop MACs already in `neighbours` are filled in.
    pub fn build(
        rules: &Rules,
        ports: &[PortInfo],
        generation: u64,
        neighbours: &NeighbourCache,
    ) -> Result<Snapshot, RulesError> {
        let mut r4 = Vec::new();
        let mut r6 = Vec::new();
        for (i, route) in rules.routes.iter().enumerate() {
            let port = ports
                .iter()
                .position(|p| p.name == route.port)
                .ok_or_else(|| RulesError::UnknownPort {
                    prefix: route.prefix.to_string(),
                    port: route.port.clone(),
                })
                .map_err(at("routes", i, ".port"))? as PortId;
            if let Some(via) = route.via {
                same_family("route gateway", route.prefix.addr(), via)
                    .map_err(at("routes", i, ".via"))?;
            }
            match route.prefix.addr() {
                IpAddr::V4(a) => {
                    r4.push((u32::from(a), route.prefix.prefix_len(), (port, route.via)))
                }
                IpAddr::V6(a) => {
                    r6.push((u128::from(a), route.prefix.prefix_len(), (port, route.via)))
                }
            }
        }
        let mut b = Builder {
            ports,
            routes_v4: Lpm::build(r4).map_err(|(a, l)| {
                RulesError::Duplicate(format!("route {}/{l}", std::net::Ipv4Addr::from(a)))
            })?,
            routes_v6: Lpm::build(r6).map_err(|(a, l)| {
                RulesError::Duplicate(format!("route {}/{l}", std::net::Ipv6Addr::from(a)))
            })?,
            next_hops: Vec::new(),
            index: HashMap::new(),
        };

        // Tunnels.
        let mut tunnels = Vec::with_capacity(rules.tunnels.len());
        let mut tunnel_index = HashMap::new();
        let mut wg = WgTable::default();
        let mut wg_peers = Vec::new();
        for (i, t) in rules.tunnels.iter().enumerate() {
            same_family("tunnel", t.local, t.remote).map_err(at("tunnels", i, ".remote"))?;
            if t.vni >= 1 << 24 {
                return Err(at("tunnels", i, ".vni")(RulesError::VniTooLarge {
                    id: t.id,
                    vni: t.vni,
                }));
            }
            if !ports.iter().any(|p| p.addrs.contains(&t.local)) {
                return Err(at("tunnels", i, ".local")(RulesError::TunnelLocalNotOurs {
                    id: t.id,
                    local: t.local,
                }));
            }
            if tunnel_index.insert(t.id, tunnels.len() as u16).is_some() {
                let dup = RulesError::Duplicate(format!("tunnel id {}", t.id));
                return Err(at("tunnels", i, ".id")(dup));
            }
            let next_hop = b.resolve(t.remote).map_err(at("tunnels", i, ".remote"))?;
            let out_port = b.next_hops[next_hop as usize].0;
            let outer = crate::packet::vxlan::OuterTemplate::new(
                ports[out_port as usize].mac,
                t.local,
                t.remote,
                t.vni,
            )
            .ok_or(RulesError::FamilyMismatch {
                what: "tunnel",
                a: t.local,
                b: t.remote,
            })?;
            let path_mtu = t.mtu.unwrap_or(ports[out_port as usize].mtu);
            let overhead = rules::tunnel_overhead_of(t.remote.is_ipv6(), t.wireguard.is_some());
            let wg_entry = match &t.wireguard {
                None => None,
                Some(w) => {
                    let at_wg = |key: &'static str| at("tunnels", i, key);
                    if wg.listen_port != 0 && wg.listen_port != w.listen_port {
                        return Err(at_wg(".wireguard.listen_port")(RulesError::WgListenPort {
                            id: t.id,
                            port: w.listen_port,
                            first: wg.listen_port,
                        }));
                    }
                    if w.listen_port == crate::packet::vxlan::PORT || w.listen_port == 0 {
                        return Err(at_wg(".wireguard.listen_port")(RulesError::WgListenPort {
                            id: t.id,
                            port: w.listen_port,
                            first: crate::packet::vxlan::PORT,
                        }));
                    }
                    wg.listen_port = w.listen_port;
                    if wg_peers
                        .iter()
                        .any(|p: &WgPeerInfo| p.public_key == w.public_key.0)
                    {
                        return Err(at_wg(".wireguard.public_key")(RulesError::Duplicate(
                            format!("WireGuard peer {}", w.public_key),
                        )));
                    }
                    let peer = wg_peers.len() as u16;
                    if wg.by_endpoint.insert(t.remote, peer).is_some() {
                        return Err(at_wg(".remote")(RulesError::Duplicate(format!(
                            "WireGuard endpoint {}",
                            t.remote
                        ))));
                    }
                    wg_peers.push(WgPeerInfo {
                        public_key: w.public_key.0,
                        tunnel: tunnels.len() as u16,
                        keepalive: w.keepalive,
                    });
                    let outer = crate::packet::wireguard::OuterTemplate::new(
                        ports[out_port as usize].mac,
                        t.local,
                        t.remote,
                        w.listen_port,
                        w.port,
                    )
                    .ok_or(RulesError::FamilyMismatch {
                        what: "tunnel",
                        a: t.local,
                        b: t.remote,
                    })?;
                    Some(WgTunnel { peer, outer })
                }
            };
            if path_mtu < 576 + overhead {
                return Err(at("tunnels", i, ".mtu")(RulesError::MtuTooSmall {
                    mtu: path_mtu,
                    min: 576 + overhead,
                }));
            }
            tunnels.push(TunnelEntry {
                inner_mtu: path_mtu.min(ports[out_port as usize].mtu) - overhead,
                outer,
                local: t.local,
                remote: t.remote,
                vni: t.vni,
                inner_dst_mac: t.inner_dst_mac.unwrap_or(DEFAULT_INNER_MAC),
                next_hop,
                wg: wg_entry,
            });
        }
        wg.peers = wg_peers.into_boxed_slice();

        // Aggregator map.
        let mut agg4 = Vec::new();
        let mut agg6 = Vec::new();
        let mut capture_lines = HashMap::new();
        let (mut ret4, mut ret6) = (Vec::new(), Vec::new());
        for (i, r) in rules.aggregator.iter().enumerate() {
            same_family("aggregator rule", r.capture, r.alias).map_err(at(
                "aggregator",
                i,
                ".alias",
            ))?;
            let tunnel = *tunnel_index
                .get(&r.tunnel)
                .ok_or(RulesError::UnknownTunnel {
                    capture: r.capture,
                    tunnel: r.tunnel,
                })
                .map_err(at("aggregator", i, ".tunnel"))?;
            let line = match &r.line {
                None => None,
                Some(name) => Some(
                    b.port_id(name)
                        .filter(|&id| ports[id as usize].role == Role::Aggregator)
                        .ok_or_else(|| RulesError::UnknownLine {
                            capture: r.capture,
                            line: name.clone(),
                        })
                        .map_err(at("aggregator", i, ".line"))?,
                ),
            };
            capture_lines.insert(r.capture, line);
            if let Some(gw) = r.return_via {
                same_family("aggregator return_via", r.capture, gw).map_err(at(
                    "aggregator",
                    i,
                    ".return_via",
                ))?;
                let line = line.ok_or(RulesError::ReturnWithoutLine).map_err(at(
                    "aggregator",
                    i,
                    ".return_via",
                ))?;
                let nh = b
                    .intern(line, gw)
                    .map_err(at("aggregator", i, ".return_via"))?;
                match r.capture {
                    IpAddr::V4(c) => ret4.push((u32::from(c), nh)),
                    IpAddr::V6(c) => ret6.push((c.octets(), nh)),
                }
            }
            let delta = Delta::of_addr(r.capture, r.alias);
            match (r.capture, r.alias) {
                (IpAddr::V4(c), IpAddr::V4(a)) => agg4.push((
                    c.into(),
                    AggEntry {
                        alias: a.into(),
                        delta,
                        tunnel,
                        answer_ping: r.answer_ping,
                    },
                )),
                (IpAddr::V6(c), IpAddr::V6(a)) => agg6.push((
                    c.octets(),
                    AggEntry {
                        alias: a.octets(),
                        delta,
                        tunnel,
                        answer_ping: r.answer_ping,
                    },
                )),
                _ => unreachable!("families checked above"),
            }
        }

        // Demux map.
        let (mut da4, mut da6, mut dp4, mut dp6) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (i, r) in rules.demux.iter().enumerate() {
            match *r {
                DemuxRule::Address {
                    alias,
                    capture,
                    app_host,
                } => {
                    same_family("demux address rule", alias, capture)
                        .map_err(at("demux", i, ".capture"))?;
                    same_family("demux address rule", alias, app_host).map_err(at(
                        "demux",
                        i,
                        ".app_host",
                    ))?;
                    let next_hop = b.resolve(app_host).map_err(at("demux", i, ".app_host"))?;
                    let delta = Delta::of_addr(alias, capture);
                    match (alias, capture) {
                        (IpAddr::V4(a), IpAddr::V4(c)) => da4.push((
                            a.into(),
                            Rewrite {
                                addr: c.into(),
                                delta,
                                next_hop,
                            },
                        )),
                        (IpAddr::V6(a), IpAddr::V6(c)) => da6.push((
                            a.octets(),
                            Rewrite {
                                addr: c.octets(),
                                delta,
                                next_hop,
                            },
                        )),
                        _ => unreachable!("families checked above"),
                    }
                }
                DemuxRule::Port {
                    alias,
                    protocol,
                    port,
                    app_host,
                } => {
                    same_family("demux port rule", alias, app_host).map_err(at(
                        "demux",
                        i,
                        ".app_host",
                    ))?;
                    let next_hop = b.resolve(app_host).map_err(at("demux", i, ".app_host"))?;
                    let delta = Delta::of_addr(alias, app_host);
                    let p = protocol.number();
                    match (alias, app_host) {
                        (IpAddr::V4(a), IpAddr::V4(h)) => dp4.push((
                            port_key_v4(a.into(), p, port),
                            Rewrite {
                                addr: h.into(),
                                delta,
                                next_hop,
                            },
                        )),
                        (IpAddr::V6(a), IpAddr::V6(h)) => dp6.push((
                            port_key_v6(a.octets(), p, port),
                            Rewrite {
                                addr: h.octets(),
                                delta,
                                next_hop,
                            },
                        )),
                        _ => unreachable!("families checked above"),
                    }
                }
            }
        }

        // Remux map.
        let (mut ra4, mut ra6, mut rp4, mut rp6) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (i, r) in rules.remux.iter().enumerate() {
            match *r {
                RemuxRule::Address { capture } => match capture {
                    IpAddr::V4(c) => ra4.push((u32::from(c), ())),
                    IpAddr::V6(c) => ra6.push((c.octets(), ())),
                },
                RemuxRule::Port {
                    app_host,
                    protocol,
                    port,
                    capture,
                } => {
                    same_family("remux port rule", app_host, capture)
                        .map_err(at("remux", i, ".capture"))?;
                    let delta = Delta::of_addr(app_host, capture);
                    let p = protocol.number();
                    match (app_host, capture) {
                        (IpAddr::V4(h), IpAddr::V4(c)) => rp4.push((
                            port_key_v4(h.into(), p, port),
                            Rewrite {
                                addr: c.into(),
                                delta,
                                next_hop: ON_LINK,
                            },
                        )),
                        (IpAddr::V6(h), IpAddr::V6(c)) => rp6.push((
                            port_key_v6(h.octets(), p, port),
                            Rewrite {
                                addr: c.octets(),
                                delta,
                                next_hop: ON_LINK,
                            },
                        )),
                        _ => unreachable!("families checked above"),
                    }
                }
            }
        }

        // Per-packet routes: a gateway becomes a next hop now; on-link stays ON_LINK.
        let mut lpm4 = Vec::new();
        let mut lpm6 = Vec::new();
        for (i, route) in rules.routes.iter().enumerate() {
            let port = b.port_id(&route.port).expect("checked above");
            let nh = match route.via {
                Some(via) => b.intern(port, via).map_err(at("routes", i, ".via"))?,
                None => ON_LINK,
            };
            match route.prefix.addr() {
                IpAddr::V4(a) => lpm4.push((u32::from(a), route.prefix.prefix_len(), nh)),
                IpAddr::V6(a) => lpm6.push((u128::from(a), route.prefix.prefix_len(), nh)),
            }
        }

        let (mut rt4, mut rt6) = (Vec::new(), Vec::new());
        for (i, r) in rules.return_tunnels.iter().enumerate() {
            let t = *tunnel_index
                .get(&r.tunnel)
                .ok_or(RulesError::UnknownTunnel {
                    capture: r.capture,
                    tunnel: r.tunnel,
                })
                .map_err(at("return_tunnels", i, ".tunnel"))?;
            match r.capture {
                IpAddr::V4(c) => rt4.push((u32::from(c), t)),
                IpAddr::V6(c) => rt6.push((c.octets(), t)),
            }
        }
        let mut seen = std::collections::HashSet::new();
        for (i, p) in rules.tunnel_peers.iter().enumerate() {
            if !seen.insert(p.address) {
                return Err(at("tunnel_peers", i, "")(RulesError::PeerTwice(p.address)));
            }
            if matches!(p.vni, Some(v) if v >= 1 << 24) {
                return Err(at("tunnel_peers", i, ".vni")(RulesError::VniTooLarge {
                    id: 0,
                    vni: p.vni.unwrap_or_default(),
                }));
            }
        }
        let vni = |p: &TunnelPeer| p.vni.unwrap_or(ANY_VNI);
        let peers4: Vec<_> = rules
            .tunnel_peers
            .iter()
            .filter_map(|p| Some((v4(p.address)?, vni(p))))
            .collect();
        let peers6: Vec<_> = rules
            .tunnel_peers
            .iter()
            .filter_map(|p| Some((v6(p.address)?, vni(p))))
            .collect();

        let aggregator4 =
            FlatMap::build(agg4).map_err(err("aggregator", "capture address", show_v4))?;
        let v4maps = Maps {
            captures: KeyFilter::build(
                aggregator4.len(),
                aggregator4.iter().map(|(k, _)| k.hash64()),
            ),
            aggregator: aggregator4,
            demux_addr: FlatMap::build(da4).map_err(err("demux", "demux alias", show_v4))?,
            demux_port: FlatMap::build(dp4).map_err(err(
                "demux",
                "demux port rule",
                |k: u64| show_v4((k >> 24) as u32),
            ))?,
            remux_port: FlatMap::build(rp4).map_err(err(
                "remux",
                "remux port rule",
                |k: u64| show_v4((k >> 24) as u32),
            ))?,
            remux_addr: FlatMap::build(ra4).map_err(err(
                "remux",
                "remux capture address",
                show_v4,
            ))?,
            peers: FlatMap::build(peers4).map_err(err("tunnel_peers", "tunnel peer", show_v4))?,
            returns: FlatMap::build(ret4).map_err(err("aggregator", "return", show_v4))?,
            return_tunnels: FlatMap::build(rt4).map_err(err(
                "return_tunnels",
                "return tunnel",
                show_v4,
            ))?,
        };
        let aggregator6 =
            FlatMap::build(agg6).map_err(err("aggregator", "capture address", show_v6))?;
        let v6maps = Maps {
            captures: KeyFilter::build(
                aggregator6.len(),
                aggregator6.iter().map(|(k, _)| k.hash64()),
            ),
            aggregator: aggregator6,
            demux_addr: FlatMap::build(da6).map_err(err("demux", "demux alias", show_v6))?,
            demux_port: FlatMap::build(dp6).map_err(err(
                "demux",
                "demux port rule",
                |k: ([u8; 16], u32)| show_v6(k.0),
            ))?,
            remux_port: FlatMap::build(rp6).map_err(err(
                "remux",
                "remux port rule",
                |k: ([u8; 16], u32)| show_v6(k.0),
            ))?,
            remux_addr: FlatMap::build(ra6).map_err(err(
                "remux",
                "remux capture address",
                show_v6,
            ))?,
            peers: FlatMap::build(peers6).map_err(err("tunnel_peers", "tunnel peer", show_v6))?,
            returns: FlatMap::build(ret6).map_err(err("aggregator", "return", show_v6))?,
            return_tunnels: FlatMap::build(rt6).map_err(err(
                "return_tunnels",
                "return tunnel",
                show_v6,
            ))?,
        };
        let route_err = |(a, l): (String, u8)| RulesError::At {
            key: "rules.routes".into(),
            source: Box::new(if a == "0.0.0.0" || a == "::" {
                RulesError::Unspecified("route")
            } else {
                RulesError::Duplicate(format!("route {a}/{l}"))
            }),
        };
        let routes_v4 = Lpm::build(lpm4).map_err(|(a, l)| route_err((show_v4(a), l)))?;
        let routes_v6 = Lpm::build(lpm6)
            .map_err(|(a, l)| route_err((std::net::Ipv6Addr::from(a).to_string(), l)))?;

        let next_hops = b
            .next_hops
            .iter()
            .map(|&(port, ip)| {
                let nh = NextHop {
                    port,
                    ip,
                    mac: AtomicU64::new(0),
                };
                if let Some(&mac) = neighbours.get(&(port, ip)) {
                    nh.set_mac(mac);
                }
                nh
            })
            .collect();

        let inner_mtu = rules.inner_mtu.unwrap_or(rules::DEFAULT_INNER_MTU);
        if inner_mtu < 576 {
            return Err(RulesError::At {
                key: "rules.inner_mtu".into(),
                source: Box::new(RulesError::MtuTooSmall {
                    mtu: inner_mtu,
                    min: 576,
                }),
            });
        }
        let own_v4 = ports
            .iter()
            .flat_map(|p| p.addrs.iter().filter_map(|&a| v4(a)))
            .collect();
        let own_v6 = ports
            .iter()
            .flat_map(|p| p.addrs.iter().filter_map(|&a| v6(a)))
            .collect();
        let ports = ports
            .iter()
            .map(|p| PortEntry {
                name: p.name.clone(),
                role: p.role,
                mac: p.mac,
                v4: p.addrs.iter().filter_map(|&a| v4(a)).collect(),
                v6: p.addrs.iter().filter_map(|&a| v6(a)).collect(),
                mtu: p.mtu,
                clamp_mss: p.clamp_mss,
            })
            .collect();

        Ok(Snapshot {
            generation,
            ports,
            next_hops,
            tunnels: tunnels.into_boxed_slice(),
            v4: v4maps,
            v6: v6maps,
            routes_v4,
            routes_v6,
            capture_lines,
            own_v4,
            own_v6,
            inner_mtu,
            wg,
            counted: FlatMap::empty(),
        })
    }

    /// An empty snapshot for `ports`: forwards nothing, answers the slow path.
    pub fn empty(ports: &[PortInfo]) -> Snapshot {
        Snapshot::build(&Rules::default(), ports, 0, &NeighbourCache::new())
            .expect("empty rules are valid")
    }

    /// The generation this snapshot was built for.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Records a neighbour's MAC in every next hop of this snapshot that uses it.
    /// Returns how many next hops were updated.
    pub fn learn_neighbour(&self, port: PortId, ip: IpAddr, mac: MacAddr) -> usize {
        let mut n = 0;
        for nh in self
            .next_hops
            .iter()
            .filter(|nh| nh.port == port && nh.ip == ip)
        {
            nh.set_mac(mac);
            n += 1;
        }
        n
    }

    /// True if `ip` is a next hop on `port`: a neighbour this forwarder resolves.
    pub fn resolves(&self, port: PortId, ip: IpAddr) -> bool {
        self.next_hops
            .iter()
            .any(|nh| nh.port == port && nh.ip == ip)
    }

    /// True if the slow path should answer ARP / neighbour solicitations for `ip` on
    /// `port`: one of the port's own addresses, or a capture address on this line.
    pub fn answers_for(&self, port: PortId, ip: IpAddr) -> bool {
        let Some(p) = self.ports.get(port as usize) else {
            return false;
        };
        if p.is_local(ip) {
            return true;
        }
        p.role == Role::Aggregator
            && match self.capture_lines.get(&ip) {
                Some(Some(line)) => *line == port,
                Some(None) => true,
                None => false,
            }
    }

    /// Number of circuit-table entries (aggregator, demux and remux maps).
    pub fn entries(&self) -> usize {
        self.v4.entries() + self.v6.entries()
    }

    /// Entries per table and address family (`aggregator_v4`, ..., `tunnels`,
    /// `next_hops`, `routes_v4`, ...), for the metrics.
    pub fn table_entries(&self) -> Vec<(String, usize)> {
        let mut out = Vec::with_capacity(24);
        for (name, n) in self.v4.per_table() {
            out.push((format!("{name}_v4"), n));
        }
        for (name, n) in self.v6.per_table() {
            out.push((format!("{name}_v6"), n));
        }
        out.push(("tunnels".into(), self.tunnels.len()));
        out.push(("next_hops".into(), self.next_hops.len()));
        out.push(("routes_v4".into(), self.routes_v4.len()));
        out.push(("routes_v6".into(), self.routes_v6.len()));
        out
    }

    /// Bytes of lookup-table memory (for sizing reports).
    pub fn memory_bytes(&self) -> usize {
        self.v4.memory_bytes() + self.v6.memory_bytes()
    }
}

/// The published snapshot: workers load it, the control thread swaps in a new one.
pub struct SnapshotHandle {
    current: ArcSwap<Snapshot>,
}

impl SnapshotHandle {
    /// A handle publishing `snapshot`.
    pub fn new(snapshot: Snapshot) -> SnapshotHandle {
        SnapshotHandle {
            current: ArcSwap::from_pointee(snapshot),
        }
    }

    /// The current snapshot, for one burst (lock-free; never blocks).
    #[inline]
    pub fn load(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.current.load()
    }

    /// A worker's view: [`arc_swap::Cache`] keeps a counted reference to the snapshot
    /// it last saw and checks one pointer per load, with none of `load`'s
    /// thread-local bookkeeping. The worker must load at least once per poll round, so
    /// that a retired snapshot is let go of (and freed by the control thread).
    pub fn cache(&self) -> arc_swap::Cache<&ArcSwap<Snapshot>, Arc<Snapshot>> {
        arc_swap::Cache::new(&self.current)
    }

    /// The current snapshot as an owned `Arc` (control thread).
    pub fn load_full(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Publishes `snapshot` with one atomic pointer swap; returns the previous one.
    pub fn publish(&self, snapshot: Snapshot) -> Arc<Snapshot> {
        self.current.swap(Arc::new(snapshot))
    }
}
