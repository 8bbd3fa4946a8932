//! `Rules`: the plain-data description of everything a forwarder looks up.
//!
//! The same value is written by hand in a forwarder's static TOML config and compiled by
//! the keeper for each forwarder on a circuit's path. It is validated and turned into an
//! immutable snapshot (the forwarder's `tables::Snapshot`) off the fast path.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::MacAddr;

/// Transport protocol of a port-mode rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// UDP (IP protocol 17).
    Udp,
    /// TCP (IP protocol 6).
    Tcp,
}

impl Protocol {
    /// The lowercase name (`udp`, `tcp`), as in configs and on the command line.
    pub const fn name(self) -> &'static str {
        match self {
            Protocol::Udp => "udp",
            Protocol::Tcp => "tcp",
        }
    }

    /// The IP protocol number.
    pub const fn number(self) -> u8 {
        match self {
            Protocol::Udp => 17,
            Protocol::Tcp => 6,
        }
    }

    /// The protocol for an IP protocol number, if it is one tarp rewrites.
    pub const fn from_number(n: u8) -> Option<Protocol> {
        match n {
            17 => Some(Protocol::Udp),
            6 => Some(Protocol::Tcp),
            _ => None,
        }
    }
}

/// A VXLAN tunnel from this forwarder to a peer (aggregator -> demux).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tunnel {
    /// Identifier that aggregator rules refer to.
    pub id: u32,
    /// Outer source address: one of this forwarder's port addresses.
    pub local: IpAddr,
    /// Outer destination address: the peer's tunnel endpoint.
    pub remote: IpAddr,
    /// VXLAN network identifier (24 bits). Unused by a WireGuard tunnel.
    #[serde(default)]
    pub vni: u32,
    /// Destination MAC of the inner Ethernet frame. A Linux VXLAN device only accepts
    /// frames addressed to its own MAC, so interop with one needs this set to it.
    #[serde(default)]
    pub inner_dst_mac: Option<MacAddr>,
    /// Path MTU between the two tunnel ends (the largest outer IP packet). Absent: the
    /// MTU of the port the tunnel leaves from. The inner budget is this minus the
    /// tunnel's overhead ([`tunnel_overhead`]).
    #[serde(default)]
    pub mtu: Option<u16>,
    /// Absent: VXLAN, in the clear (trusted networks). Present: the WireGuard protocol to
    /// this peer, encrypted and authenticated; the forwarder's `[wireguard]` holds its
    /// own private key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wireguard: Option<WireGuard>,
}

/// A tunnel's WireGuard peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WireGuard {
    /// The peer's static public key (base64, as `wg pubkey` prints it).
    pub public_key: WgKey,
    /// The peer's UDP port.
    #[serde(default = "wg_port")]
    pub port: u16,
    /// This forwarder's UDP port for WireGuard (every WireGuard tunnel of a forwarder
    /// shares it).
    #[serde(default = "wg_port")]
    pub listen_port: u16,
    /// Persistent keepalive in seconds (WireGuard's `PersistentKeepalive`): the end
    /// behind a consumer line sets it, and it also makes that end start the handshake
    /// as soon as the tunnel is configured.
    #[serde(default)]
    pub keepalive: Option<u16>,
}

/// WireGuard's usual UDP port.
pub const WG_PORT: u16 = 51820;

fn wg_port() -> u16 {
    WG_PORT
}

/// A 32-byte Curve25519 key, written in base64 (44 characters).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WgKey(pub [u8; 32]);

impl std::fmt::Debug for WgKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WgKey({self})")
    }
}

impl std::fmt::Display for WgKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use base64::Engine as _;
        f.write_str(&base64::engine::general_purpose::STANDARD.encode(self.0))
    }
}

impl std::str::FromStr for WgKey {
    type Err = String;
    fn from_str(s: &str) -> Result<WgKey, String> {
        use base64::Engine as _;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(s.trim())
            .map_err(|e| format!("not base64: {e}"))?;
        <[u8; 32]>::try_from(bytes.as_slice())
            .map(WgKey)
            .map_err(|_| format!("a key is 32 bytes, this is {}", bytes.len()))
    }
}

impl Serialize for WgKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for WgKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<WgKey, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Bytes a tunnel adds to an inner IP packet, by the outer family. VXLAN (outer IP, UDP,
/// VXLAN and the inner Ethernet header): 50 over IPv4, 70 over IPv6. WireGuard (outer
/// IP, UDP, the 16-byte data header and the 16-byte tag, no inner Ethernet, no padding):
/// 60 over IPv4, 80 over IPv6.
pub const fn tunnel_overhead(outer_v6: bool) -> u16 {
    if outer_v6 {
        70
    } else {
        50
    }
}

/// [`tunnel_overhead`] for a tunnel of either kind.
pub const fn tunnel_overhead_of(outer_v6: bool, wireguard: bool) -> u16 {
    tunnel_overhead(outer_v6) + if wireguard { 10 } else { 0 }
}

/// The inner budget of a tunnel over an IPv4 path of 1500 bytes: what a remux clamps TCP
/// MSS to when its rules do not say otherwise.
pub const DEFAULT_INNER_MTU: u16 = 1500 - tunnel_overhead(false);

/// A tunnel peer a demux accepts traffic from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(from = "PeerSpec", into = "PeerSpec")]
pub struct TunnelPeer {
    /// The peer's tunnel endpoint (outer source).
    pub address: IpAddr,
    /// The VXLAN network identifier it must use; absent: any.
    pub vni: Option<u32>,
}

impl TunnelPeer {
    /// A peer that may use any VNI.
    pub const fn any_vni(address: IpAddr) -> TunnelPeer {
        TunnelPeer { address, vni: None }
    }
}

/// How a peer is written: an address alone, or `{ address, vni }`.
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum PeerSpec {
    Address(IpAddr),
    Full {
        address: IpAddr,
        #[serde(default)]
        vni: Option<u32>,
    },
}

impl From<PeerSpec> for TunnelPeer {
    fn from(p: PeerSpec) -> TunnelPeer {
        match p {
            PeerSpec::Address(address) => TunnelPeer::any_vni(address),
            PeerSpec::Full { address, vni } => TunnelPeer { address, vni },
        }
    }
}

impl From<TunnelPeer> for PeerSpec {
    fn from(p: TunnelPeer) -> PeerSpec {
        match p.vni {
            None => PeerSpec::Address(p.address),
            vni => PeerSpec::Full {
                address: p.address,
                vni,
            },
        }
    }
}

/// Aggregator map entry: traffic to `capture` is rewritten to `alias` and tunnelled.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AggregatorRule {
    /// Capture address on one of the POP's lines.
    pub capture: IpAddr,
    /// Demux alias the destination is rewritten to.
    pub alias: IpAddr,
    /// Tunnel (by [`Tunnel::id`]) the packet is encapsulated into.
    pub tunnel: u32,
    /// The line (aggregator port, by name) the capture address lives on: ARP and
    /// neighbour discovery for it are answered there. Absent: on every aggregator port.
    #[serde(default)]
    pub line: Option<String>,
    /// Answer ICMP echo requests to `capture` at the aggregator, as the host a device
    /// thinks it talks to (port mode: no app host owns the whole address).
    #[serde(default)]
    pub answer_ping: bool,
    /// Symmetric return: replies from `capture` that come back through a tunnel from the
    /// DC leave `line` (which must be set) to this gateway. Absent: asymmetric, the
    /// aggregator never sends out of a line.
    #[serde(default)]
    pub return_via: Option<IpAddr>,
}

/// Symmetric return at a remux: replies whose source is (or becomes) `capture` go into
/// tunnel `tunnel` to the circuit's aggregator instead of out to the Internet.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReturnTunnel {
    /// The capture address.
    pub capture: IpAddr,
    /// The tunnel (by [`Tunnel::id`]).
    pub tunnel: u32,
}

/// Demux map entry, in one of the patent's two modes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "lowercase", deny_unknown_fields)]
pub enum DemuxRule {
    /// Address mode (FIG 5): `alias` is rewritten back to `capture`, and the packet is
    /// delivered to `app_host`, which carries `capture` as a local address.
    Address {
        /// Demux alias (inner destination after decapsulation).
        alias: IpAddr,
        /// Original capture address restored as the destination.
        capture: IpAddr,
        /// Application host the packet is delivered to (next hop).
        app_host: IpAddr,
    },
    /// Port mode (FIG 7): (`alias`, `protocol`, `port`) is rewritten to `app_host`;
    /// the port is unchanged.
    Port {
        /// Demux alias (inner destination after decapsulation).
        alias: IpAddr,
        /// Transport protocol.
        protocol: Protocol,
        /// Destination port.
        port: u16,
        /// Application host that becomes the destination.
        app_host: IpAddr,
    },
}

/// Remux map entry: what the data center's egress does with an application's reply.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "lowercase", deny_unknown_fields)]
pub enum RemuxRule {
    /// Address mode: replies already carry `capture` as their source and pass unchanged.
    Address {
        /// Capture address used as source by the application host.
        capture: IpAddr,
    },
    /// Port mode: source (`app_host`, `protocol`, `port`) becomes (`capture`, same port).
    Port {
        /// Application host address (the reply's source).
        app_host: IpAddr,
        /// Transport protocol.
        protocol: Protocol,
        /// Source port of the reply.
        port: u16,
        /// Capture address written as the new source.
        capture: IpAddr,
    },
}

/// A route: longest-prefix match on a destination -> output port and next hop.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Destination prefix, e.g. `198.51.100.0/24` or `::/0`.
    pub prefix: IpNet,
    /// Output port, by its configured name.
    pub port: String,
    /// Gateway; absent for an on-link prefix (the destination itself is the next hop).
    #[serde(default)]
    pub via: Option<IpAddr>,
}

/// Everything a forwarder looks up, as plain data.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rules {
    /// Tunnels this forwarder encapsulates into (aggregator role).
    #[serde(default)]
    pub tunnels: Vec<Tunnel>,
    /// Aggregator map.
    #[serde(default)]
    pub aggregator: Vec<AggregatorRule>,
    /// Demux map.
    #[serde(default)]
    pub demux: Vec<DemuxRule>,
    /// Remux map.
    #[serde(default)]
    pub remux: Vec<RemuxRule>,
    /// Route table.
    #[serde(default)]
    pub routes: Vec<Route>,
    /// Tunnel peers a demux accepts traffic from (`"192.0.2.1"` or
    /// `{ address = "192.0.2.1", vni = 100 }`).
    #[serde(default)]
    pub tunnel_peers: Vec<TunnelPeer>,
    /// The inner budget of the tunnels this forwarder's circuits cross (the largest inner
    /// IP packet): a remux clamps the TCP MSS of what it sends to fit it. Absent:
    /// [`DEFAULT_INNER_MTU`].
    #[serde(default)]
    pub inner_mtu: Option<u16>,
    /// Symmetric return at a remux.
    #[serde(default)]
    pub return_tunnels: Vec<ReturnTunnel>,
}

/// One entry of a table set: the unit a delta adds or removes.
///
/// Ordered by kind, then by value, so a set of entries materialises into sorted lists.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Entry {
    /// A tunnel.
    Tunnel(Tunnel),
    /// An aggregator map entry.
    Aggregator(AggregatorRule),
    /// A demux map entry.
    Demux(DemuxRule),
    /// A remux map entry.
    Remux(RemuxRule),
    /// A route.
    Route(Route),
    /// A tunnel peer.
    TunnelPeer(TunnelPeer),
    /// A symmetric-return entry.
    ReturnTunnel(ReturnTunnel),
}

/// The changes that take a forwarder's table set from one generation to the next.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RulesDelta {
    /// Entries added; its `inner_mtu` is the set's after the change.
    pub added: Rules,
    /// Entries removed (its `inner_mtu` means nothing).
    pub removed: Rules,
}

impl RulesDelta {
    /// Entries added plus entries removed.
    pub fn len(&self) -> usize {
        self.added.len() + self.removed.len()
    }

    /// True when nothing is added or removed (`inner_mtu` may still change).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A delta that does not fit the table set it is applied to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("delta removes {missing} {list} entr(ies) the table set does not hold")]
pub struct DeltaError {
    /// The list (`demux`, `routes`, ...).
    pub list: &'static str,
    /// How many of its removals found nothing.
    pub missing: usize,
}

/// Removes `gone` from `list` (each value once), or says how many were not there.
fn remove_all<T: Eq + std::hash::Hash + Clone>(
    list: &mut Vec<T>,
    gone: &[T],
    name: &'static str,
) -> Result<(), DeltaError> {
    if gone.is_empty() {
        return Ok(());
    }
    let gone: std::collections::HashSet<&T> = gone.iter().collect();
    let before = list.len();
    list.retain(|x| !gone.contains(x));
    let missing = gone.len() - (before - list.len()).min(gone.len());
    if missing > 0 {
        return Err(DeltaError {
            list: name,
            missing,
        });
    }
    Ok(())
}

impl Rules {
    /// Number of entries (every list's length).
    pub fn len(&self) -> usize {
        self.tunnels.len()
            + self.aggregator.len()
            + self.demux.len()
            + self.remux.len()
            + self.routes.len()
            + self.tunnel_peers.len()
            + self.return_tunnels.len()
    }

    /// True when no list holds anything.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds one entry to its list.
    pub fn push(&mut self, e: Entry) {
        match e {
            Entry::Tunnel(x) => self.tunnels.push(x),
            Entry::Aggregator(x) => self.aggregator.push(x),
            Entry::Demux(x) => self.demux.push(x),
            Entry::Remux(x) => self.remux.push(x),
            Entry::Route(x) => self.routes.push(x),
            Entry::TunnelPeer(x) => self.tunnel_peers.push(x),
            Entry::ReturnTunnel(x) => self.return_tunnels.push(x),
        }
    }

    /// Every entry, list by list (clones).
    pub fn entries(&self) -> impl Iterator<Item = Entry> + '_ {
        let t = self.tunnels.iter().cloned().map(Entry::Tunnel);
        let a = self.aggregator.iter().cloned().map(Entry::Aggregator);
        let d = self.demux.iter().cloned().map(Entry::Demux);
        let r = self.remux.iter().cloned().map(Entry::Remux);
        let o = self.routes.iter().cloned().map(Entry::Route);
        let p = self.tunnel_peers.iter().copied().map(Entry::TunnelPeer);
        let b = self.return_tunnels.iter().cloned().map(Entry::ReturnTunnel);
        t.chain(a).chain(d).chain(r).chain(o).chain(p).chain(b)
    }

    /// Splits the set into pieces of at most `max` entries each (at least one piece),
    /// every piece carrying `inner_mtu`. Concatenated, the pieces are the set.
    pub fn chunks(&self, max: usize) -> Vec<Rules> {
        let max = max.max(1);
        let mut out = vec![Rules {
            inner_mtu: self.inner_mtu,
            ..Rules::default()
        }];
        for e in self.entries() {
            if out.last().is_some_and(|c| c.len() >= max) {
                out.push(Rules {
                    inner_mtu: self.inner_mtu,
                    ..Rules::default()
                });
            }
            if let Some(c) = out.last_mut() {
                c.push(e);
            }
        }
        out
    }

    /// Appends every entry of `more` (a later chunk of the same set or delta).
    pub fn extend(&mut self, more: Rules) {
        self.tunnels.extend(more.tunnels);
        self.aggregator.extend(more.aggregator);
        self.demux.extend(more.demux);
        self.remux.extend(more.remux);
        self.routes.extend(more.routes);
        self.tunnel_peers.extend(more.tunnel_peers);
        self.return_tunnels.extend(more.return_tunnels);
        self.inner_mtu = more.inner_mtu;
    }

    /// Applies a delta: removes its removed entries (each must be here), appends its
    /// added ones, takes its `inner_mtu`. One pass over each list that loses entries.
    /// On an error the set is left part-way and must be replaced by a full set.
    pub fn apply(&mut self, delta: &RulesDelta) -> Result<(), DeltaError> {
        let gone = &delta.removed;
        remove_all(&mut self.tunnels, &gone.tunnels, "tunnels")?;
        remove_all(&mut self.aggregator, &gone.aggregator, "aggregator")?;
        remove_all(&mut self.demux, &gone.demux, "demux")?;
        remove_all(&mut self.remux, &gone.remux, "remux")?;
        remove_all(&mut self.routes, &gone.routes, "routes")?;
        remove_all(&mut self.tunnel_peers, &gone.tunnel_peers, "tunnel_peers")?;
        remove_all(
            &mut self.return_tunnels,
            &gone.return_tunnels,
            "return_tunnels",
        )?;
        self.extend(delta.added.clone());
        Ok(())
    }
}

#[cfg(test)]
mod delta_tests {
    use super::*;

    fn port(alias: &str, port: u16) -> DemuxRule {
        DemuxRule::Port {
            alias: alias.parse().unwrap(),
            protocol: Protocol::Udp,
            port,
            app_host: "198.19.0.2".parse().unwrap(),
        }
    }

    fn set(ports: impl IntoIterator<Item = u16>) -> Rules {
        Rules {
            demux: ports.into_iter().map(|p| port("198.18.0.3", p)).collect(),
            inner_mtu: Some(1450),
            ..Rules::default()
        }
    }

    #[test]
    fn chunks_concatenate_to_the_set() {
        let rules = Rules {
            routes: vec![Route {
                prefix: "0.0.0.0/0".parse().unwrap(),
                port: "up".into(),
                via: None,
            }],
            ..set(1..=10)
        };
        let chunks = rules.chunks(4);
        assert_eq!(chunks.iter().map(Rules::len).collect::<Vec<_>>(), [4, 4, 3]);
        assert!(chunks.iter().all(|c| c.inner_mtu == Some(1450)));
        let mut back = Rules::default();
        for c in chunks {
            back.extend(c);
        }
        assert_eq!(back, rules);
        assert_eq!(Rules::default().chunks(4), vec![Rules::default()]);
    }

    #[test]
    fn apply_removes_and_adds() {
        let mut rules = set(1..=5);
        let delta = RulesDelta {
            added: Rules {
                inner_mtu: Some(1430),
                ..set([9])
            },
            removed: set([2, 4]),
        };
        rules.apply(&delta).unwrap();
        assert_eq!(rules.demux, set([1, 3, 5, 9]).demux);
        assert_eq!(rules.inner_mtu, Some(1430));
        assert_eq!(delta.len(), 3);
    }

    #[test]
    fn apply_refuses_a_removal_of_what_is_not_there() {
        let mut rules = set(1..=3);
        let delta = RulesDelta {
            added: Rules::default(),
            removed: set([3, 7]),
        };
        assert_eq!(
            rules.apply(&delta),
            Err(DeltaError {
                list: "demux",
                missing: 1
            })
        );
    }
}
