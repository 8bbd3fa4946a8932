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
    /// VXLAN network identifier (24 bits).
    #[serde(default)]
    pub vni: u32,
    /// Destination MAC of the inner Ethernet frame. A Linux VXLAN device only accepts
    /// frames addressed to its own MAC, so interop with one needs this set to it.
    #[serde(default)]
    pub inner_dst_mac: Option<MacAddr>,
    /// Path MTU between the two tunnel ends (the largest outer IP packet). Absent: the
    /// MTU of the port the tunnel leaves from. The inner budget is this minus 50 bytes
    /// (VXLAN over IPv4) or 70 (over IPv6).
    #[serde(default)]
    pub mtu: Option<u16>,
}

/// Bytes VXLAN adds to an inner IP packet (outer IP, UDP, VXLAN and the inner Ethernet
/// header), by the outer family: 50 over IPv4, 70 over IPv6.
pub const fn tunnel_overhead(outer_v6: bool) -> u16 {
    if outer_v6 {
        70
    } else {
        50
    }
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
