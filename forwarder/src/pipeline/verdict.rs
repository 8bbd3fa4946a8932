//! What a pipeline decides for each packet.

use crate::tables::PortId;

/// Why a packet was dropped. Every reason has its own counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum DropReason {
    /// Headers that do not parse (short, bad version, bad lengths).
    Malformed = 0,
    /// No circuit matches the packet.
    NoCircuit,
    /// TTL or hop limit would reach zero.
    TtlExpired,
    /// Tunnel traffic from an outer source that is not a configured peer.
    NotTunnelPeer,
    /// No route to the (new) destination.
    NoRoute,
    /// The next hop's MAC address is not resolved yet.
    NoNeighbour,
    /// A non-first IP fragment where ports are needed to decide.
    Fragment,
    /// Not IPv4, IPv6, ARP or a tunnel packet this port handles.
    Unsupported,
    /// Not enough headroom to encapsulate.
    NoHeadroom,
    /// The slow-path ring was full.
    SlowPathFull,
    /// The output port's TX queue was full.
    TxFull,
    /// A unicast frame for another host on the link (seen in promiscuous mode).
    OtherHost,
    /// An IPv4 header whose checksum is wrong (RFC 1812 5.2.2).
    BadChecksum,
    /// An IP packet to a broadcast or multicast MAC (only ARP and ND may use one).
    GroupAddress,
    /// A source no device can have: a capture address, the forwarder's own, loopback,
    /// multicast, broadcast or unspecified.
    Martian,
    /// Tunnel traffic with a VNI its peer does not use.
    BadVni,
    /// Larger than the tunnel or the output link takes, and not fragmentable (DF set or
    /// IPv6); an ICMP error went back unless the ICMP rate limit held it.
    TooBig,
    /// To the slow path, over its per-port rate limit.
    SlowPathLimit,
    /// Addressed to the port itself but nothing the slow path answers.
    NotAnswered,
    /// No buffer for a fragment or a generated packet.
    NoBuffer,
    /// WireGuard: a message whose MAC or AEAD tag does not verify (tampered, or not
    /// made with our key).
    WgBadMac,
    /// WireGuard: a transport counter already seen or too old, or a handshake with a
    /// stale timestamp (a replay).
    WgReplay,
    /// WireGuard: from no configured peer (an unknown endpoint, receiver index or key),
    /// or for a session that does not exist.
    WgUnknownPeer,
    /// WireGuard: a packet for a peer with no session yet (a handshake was started).
    WgNoSession,
    /// WireGuard: handshakes over the per-poll budget or boringtun's rate limit.
    WgHandshakeLimit,
}

impl DropReason {
    /// Number of reasons (size of a counter array indexed by `reason as usize`).
    pub const COUNT: usize = 25;

    /// Every reason, in counter-index order.
    pub const ALL: [DropReason; Self::COUNT] = [
        DropReason::Malformed,
        DropReason::NoCircuit,
        DropReason::TtlExpired,
        DropReason::NotTunnelPeer,
        DropReason::NoRoute,
        DropReason::NoNeighbour,
        DropReason::Fragment,
        DropReason::Unsupported,
        DropReason::NoHeadroom,
        DropReason::SlowPathFull,
        DropReason::TxFull,
        DropReason::OtherHost,
        DropReason::BadChecksum,
        DropReason::GroupAddress,
        DropReason::Martian,
        DropReason::BadVni,
        DropReason::TooBig,
        DropReason::SlowPathLimit,
        DropReason::NotAnswered,
        DropReason::NoBuffer,
        DropReason::WgBadMac,
        DropReason::WgReplay,
        DropReason::WgUnknownPeer,
        DropReason::WgNoSession,
        DropReason::WgHandshakeLimit,
    ];

    /// A short snake_case name (metrics label).
    pub const fn name(self) -> &'static str {
        match self {
            DropReason::Malformed => "malformed",
            DropReason::NoCircuit => "no_circuit",
            DropReason::TtlExpired => "ttl_expired",
            DropReason::NotTunnelPeer => "not_tunnel_peer",
            DropReason::NoRoute => "no_route",
            DropReason::NoNeighbour => "no_neighbour",
            DropReason::Fragment => "fragment",
            DropReason::Unsupported => "unsupported",
            DropReason::NoHeadroom => "no_headroom",
            DropReason::SlowPathFull => "slow_path_full",
            DropReason::TxFull => "tx_full",
            DropReason::OtherHost => "other_host",
            DropReason::BadChecksum => "bad_checksum",
            DropReason::GroupAddress => "group_address",
            DropReason::Martian => "martian",
            DropReason::BadVni => "bad_vni",
            DropReason::TooBig => "too_big",
            DropReason::SlowPathLimit => "slow_path_limit",
            DropReason::NotAnswered => "not_answered",
            DropReason::NoBuffer => "no_buffer",
            DropReason::WgBadMac => "wg_bad_mac",
            DropReason::WgReplay => "wg_replay",
            DropReason::WgUnknownPeer => "wg_unknown_peer",
            DropReason::WgNoSession => "wg_no_session",
            DropReason::WgHandshakeLimit => "wg_handshake_limit",
        }
    }
}

/// The decision for one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Send on this port; the Ethernet header is already rewritten for the next hop.
    Forward(PortId),
    /// Free the packet and count the reason.
    Drop(DropReason),
    /// Hand to the control thread (ARP, neighbour discovery, ICMP echo to the port).
    SlowPath,
    /// An ICMP message the pipeline made from the packet (too big, an echo reply from a
    /// capture address): send on this port and count it as generated.
    Icmp(PortId),
    /// An IPv4 packet without DF that does not fit where it goes, already rewritten:
    /// split it with [`super::split`] and send the pieces.
    Fragment(Split),
    /// WireGuard: for the worker's [`crate::wg::WgEngine`], which seals it into its
    /// tunnel or opens it (the cryptography needs the peer's state, which the pipeline
    /// does not hold).
    Wg(WgJob),
}

/// What the worker does with a WireGuard packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WgJob {
    /// An inner packet, rewritten, for tunnel `.0` (an index into `Snapshot::tunnels`):
    /// seal it.
    Seal(u16),
    /// A WireGuard datagram to this forwarder: authenticate and open it.
    Open,
}

/// Where the pieces of a split packet go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// Into tunnel `.0` (an index into `Snapshot::tunnels`), each piece encapsulated.
    Tunnel(u16),
    /// Out of port `.0`, each piece within its MTU (the frame is already addressed).
    Port(PortId),
}
