//! The rule compiler: circuits -> the [`Rules`] of every forwarder in the inventory.
//!
//! A node's table set is its static part (routes, its tunnel, the tunnel peers it
//! accepts: from the inventory alone) plus what each circuit on it contributes
//! ([`contributions`]: a pure function of the circuit and the inventory). The keeper
//! keeps the sets as counted entries ([`crate::tables`]) and, for each step, removes what
//! the changed circuits contributed before and adds what they contribute now: the work
//! of a step grows with what it changed, not with the number of circuits.
//!
//! [`compile`] does the whole thing at once (at start-up, and in tests). Its output is
//! deterministic (every list sorted, duplicates removed).

use std::collections::BTreeMap;

use tarp_api::rules::{
    AggregatorRule, DemuxRule, Entry, RemuxRule, ReturnTunnel, Rules, Tunnel, TunnelPeer, WireGuard,
};

use crate::circuits::{Circuit, CircuitState, Mode, ReturnPath};

/// Ids of a remux's return tunnels: this plus the aggregator's place in the inventory.
pub const RETURN_TUNNEL_BASE: u32 = 1000;
/// Ids of a demux's WireGuard tunnels back to its aggregators: this plus the
/// aggregator's place in the inventory.
pub const WG_TUNNEL_BASE: u32 = 2000;
use crate::inventory::{Inventory, NodeId, Role};
use crate::tables::Tables;

/// The static part of every node's table set: routes, the aggregators' tunnels, and
/// the tunnel peers each node accepts.
pub fn static_part(inv: &Inventory) -> BTreeMap<NodeId, Rules> {
    let mut out: BTreeMap<NodeId, Rules> = inv
        .nodes
        .iter()
        .map(|(id, node)| {
            (
                id.clone(),
                Rules {
                    routes: node.routes.clone(),
                    ..Rules::default()
                },
            )
        })
        .collect();
    for (i, agg) in inv.aggregators.iter().enumerate() {
        if let Some(r) = out.get_mut(&agg.node) {
            r.tunnels.push(agg.tunnel.clone());
            // Symmetric return: every remux that can send replies back may reach it.
            for &local in inv.return_locals.values() {
                r.tunnel_peers.push(TunnelPeer {
                    address: local,
                    vni: Some(agg.tunnel.vni),
                });
            }
        }
        if let Some(r) = out.get_mut(&agg.demux) {
            match (&agg.tunnel.wireguard, inv.nodes.get(&agg.node)) {
                // WireGuard: the aggregator is the demux's peer (a tunnel it answers
                // handshakes through), not a VXLAN tunnel peer, so plaintext from its
                // address is refused.
                (Some(w), Some(node)) => {
                    if let Some(public_key) = node.wireguard_key {
                        r.tunnels.push(Tunnel {
                            id: WG_TUNNEL_BASE + i as u32,
                            local: agg.tunnel.remote,
                            remote: agg.tunnel.local,
                            vni: 0,
                            inner_dst_mac: None,
                            mtu: agg.tunnel.mtu,
                            wireguard: Some(WireGuard {
                                public_key,
                                port: w.listen_port,
                                listen_port: w.port,
                                keepalive: None,
                            }),
                        });
                    }
                }
                _ => r.tunnel_peers.push(TunnelPeer {
                    address: agg.tunnel.local,
                    vni: Some(agg.tunnel.vni),
                }),
            }
        }
    }
    for rules in out.values_mut() {
        rules.tunnel_peers.sort();
        rules.tunnel_peers.dedup();
        // One VNI per peer address: a peer listed with several accepts any.
        let mut peers: Vec<TunnelPeer> = Vec::with_capacity(rules.tunnel_peers.len());
        for p in rules.tunnel_peers.drain(..) {
            match peers.last_mut() {
                Some(last) if last.address == p.address => last.vni = None,
                _ => peers.push(p),
            }
        }
        rules.tunnel_peers = peers;
    }
    out
}

/// The inner budget a remux clamps TCP MSS to: the smallest of any tunnel's (`None`:
/// the default).
pub fn remux_inner_mtu(inv: &Inventory) -> Option<u16> {
    inv.aggregators
        .iter()
        .map(|a| {
            a.tunnel.mtu.unwrap_or(1500)
                - tarp_api::rules::tunnel_overhead_of(
                    a.tunnel.remote.is_ipv6(),
                    a.tunnel.wireguard.is_some(),
                )
        })
        .min()
        .filter(|&m| m != tarp_api::rules::DEFAULT_INNER_MTU)
}

/// What circuit `c` puts into the tables of each node on its path, in its current
/// state, as (node, entry) pairs given to `out`.
///
/// Make before break: the aggregator sends into the tunnel only once the circuit is
/// active; demux and remux hold it from activation until release completes.
pub fn contributions(inv: &Inventory, c: &Circuit, mut out: impl FnMut(&NodeId, Entry)) {
    let at_aggregator = c.state == CircuitState::Active;
    let at_dc = matches!(
        c.state,
        CircuitState::Activating | CircuitState::Active | CircuitState::Releasing
    );
    if at_aggregator {
        if let Some(agg) = inv.aggregator(&c.aggregator) {
            out(
                &c.aggregator,
                Entry::Aggregator(AggregatorRule {
                    capture: c.capture,
                    alias: c.alias,
                    tunnel: agg.tunnel.id,
                    line: Some(c.line.clone()),
                    // No app host owns a port-mode capture address: the POP answers.
                    answer_ping: c.mode == Mode::Port,
                    return_via: match c.return_path {
                        ReturnPath::Asymmetric => None,
                        ReturnPath::Symmetric => agg
                            .lines
                            .iter()
                            .find(|l| l.name == c.line)
                            .and_then(|l| l.gateway),
                    },
                }),
            );
        }
    }
    if !at_dc {
        return;
    }
    match c.mode {
        Mode::Address => out(
            &c.demux,
            Entry::Demux(DemuxRule::Address {
                alias: c.alias,
                capture: c.capture,
                app_host: c.app_host,
            }),
        ),
        Mode::Port => {
            for port in c.ports.iter() {
                out(
                    &c.demux,
                    Entry::Demux(DemuxRule::Port {
                        alias: c.alias,
                        protocol: c.protocol,
                        port,
                        app_host: c.app_host,
                    }),
                );
            }
        }
    }
    // Symmetric return: the reply goes into a tunnel to the circuit's aggregator (from
    // activation to release, like the rest of the remux's part).
    let back = inv
        .aggregators
        .iter()
        .position(|a| a.node == c.aggregator)
        .zip(inv.return_locals.get(&c.remux));
    if let (ReturnPath::Symmetric, Some((i, &local))) = (c.return_path, back) {
        let agg = &inv.aggregators[i];
        let id = RETURN_TUNNEL_BASE + i as u32;
        out(
            &c.remux,
            Entry::Tunnel(Tunnel {
                id,
                local,
                remote: agg.tunnel.local,
                vni: agg.tunnel.vni,
                inner_dst_mac: None,
                mtu: agg.tunnel.mtu,
                wireguard: None,
            }),
        );
        out(
            &c.remux,
            Entry::ReturnTunnel(ReturnTunnel {
                capture: c.capture,
                tunnel: id,
            }),
        );
    }
    match c.mode {
        Mode::Address => out(
            &c.remux,
            Entry::Remux(RemuxRule::Address { capture: c.capture }),
        ),
        Mode::Port => {
            for port in c.ports.iter() {
                out(
                    &c.remux,
                    Entry::Remux(RemuxRule::Port {
                        app_host: c.app_host,
                        protocol: c.protocol,
                        port,
                        capture: c.capture,
                    }),
                );
            }
        }
    }
}

/// Compiles the table set of every node in the inventory at once (nodes without
/// circuits get their static part).
pub fn compile<'a>(
    inv: &Inventory,
    circuits: impl IntoIterator<Item = &'a Circuit>,
) -> BTreeMap<NodeId, Rules> {
    let mut tables = Tables::new(inv);
    for c in circuits {
        tables.add(inv, c);
    }
    inv.nodes
        .keys()
        .map(|node| (node.clone(), tables.rules(node).unwrap_or_default()))
        .collect()
}

/// The roles a node plays, for checking a forwarder's hello.
pub fn roles_of(inv: &Inventory, node: &str) -> Option<Vec<Role>> {
    inv.nodes
        .get(node)
        .map(|n| n.roles.iter().copied().collect())
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use tarp_api::rules::{Protocol, Route, Tunnel};

    use super::*;
    use crate::circuits::{ActivateRequest, Activation, Circuits, PortRange};
    use crate::inventory::Config;

    fn inv() -> Inventory {
        Config::parse("keeper.toml", include_str!("../examples/keeper.toml"))
            .unwrap()
            .inventory
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn activate(
        s: &mut Circuits,
        inv: &Inventory,
        mode: Mode,
        ports: PortRange,
        app: &str,
        confirm: bool,
    ) -> u64 {
        let req = ActivateRequest {
            region: Some("eu".into()),
            pop: None,
            protocol: Protocol::Tcp,
            ports,
            mode,
            app_host: ip(app),
            idempotency_key: None,
            capture: None,
            return_path: ReturnPath::Asymmetric,
            lease_ms: 0,
            owner: String::new(),
        };
        let Activation::Started(id) = s.activate(inv, 256, &req).unwrap() else {
            panic!()
        };
        if confirm {
            s.confirm(id).unwrap();
        }
        id
    }

    fn symmetric_req(capture: &str) -> ActivateRequest {
        ActivateRequest {
            region: Some("eu".into()),
            pop: None,
            protocol: Protocol::Udp,
            ports: PortRange::single(4000),
            mode: Mode::Port,
            app_host: ip("198.19.0.2"),
            idempotency_key: None,
            capture: Some(ip(capture)),
            return_path: ReturnPath::Symmetric,
            lease_ms: 0,
            owner: String::new(),
        }
    }

    /// Both tunnel directions, make before break: the remux returns through the tunnel
    /// from activation on; the aggregator sends replies out of the line once active.
    #[test]
    fn symmetric_return_compiles_both_tunnel_directions() {
        let inv = inv();
        let mut s = Circuits::new();
        let Activation::Started(id) = s
            .activate(&inv, 256, &symmetric_req("203.0.113.2"))
            .unwrap()
        else {
            panic!()
        };
        let back = Tunnel {
            id: RETURN_TUNNEL_BASE,
            local: ip("192.0.2.100"),
            remote: ip("192.0.2.1"),
            vni: 100,
            inner_dst_mac: None,
            mtu: None,
            wireguard: None,
        };
        let out = compile(&inv, s.iter());
        assert_eq!(out["dc-1"].tunnels, [back]);
        assert_eq!(
            out["dc-1"].return_tunnels,
            [ReturnTunnel {
                capture: ip("203.0.113.2"),
                tunnel: RETURN_TUNNEL_BASE
            }]
        );
        assert!(out["pop-ams-1"].aggregator.is_empty());
        // Every aggregator accepts the remux's return tunnel, with its own VNI.
        assert_eq!(
            out["pop-fra-1"].tunnel_peers,
            [TunnelPeer {
                address: ip("192.0.2.100"),
                vni: Some(101)
            }]
        );
        s.confirm(id).unwrap();
        let out = compile(&inv, s.iter());
        let rule = &out["pop-ams-1"].aggregator[0];
        assert_eq!(
            (rule.capture, rule.return_via, rule.line.as_deref()),
            (ip("203.0.113.2"), Some(ip("203.0.113.14")), Some("line0"))
        );
        // An asymmetric circuit next to it changes none of that.
        assert!(out["dc-1"].remux.len() == 1 && out["dc-1"].return_tunnels.len() == 1);
    }

    #[test]
    fn symmetric_return_needs_a_line_gateway() {
        let inv = inv();
        let mut s = Circuits::new();
        let err = s
            .activate(&inv, 256, &symmetric_req("203.0.113.17"))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "symmetric return needs a gateway for line line1 of pop-ams-1 in the inventory"
        );
    }

    #[test]
    fn static_part_without_circuits() {
        let inv = inv();
        let out = compile(&inv, []);
        assert_eq!(
            out.keys().collect::<Vec<_>>(),
            ["dc-1", "pop-ams-1", "pop-fra-1", "pop-nyc-1"]
        );
        let ams = &out["pop-ams-1"];
        assert_eq!(
            ams.tunnels,
            [Tunnel {
                id: 1,
                local: ip("192.0.2.1"),
                remote: ip("192.0.2.100"),
                vni: 100,
                inner_dst_mac: None,
                mtu: None,
                wireguard: None,
            }]
        );
        assert_eq!(
            ams.routes,
            [Route {
                prefix: "192.0.2.0/24".parse().unwrap(),
                port: "uplink".into(),
                via: None
            }]
        );
        assert!(ams.aggregator.is_empty());
        let dc = &out["dc-1"];
        assert_eq!(
            dc.tunnel_peers,
            [("192.0.2.1", 100), ("192.0.2.2", 101), ("192.0.2.3", 102)].map(|(a, vni)| {
                TunnelPeer {
                    address: ip(a),
                    vni: Some(vni),
                }
            })
        );
        assert_eq!(dc.routes.len(), 2);
        assert!(dc.tunnels.is_empty() && dc.demux.is_empty() && dc.remux.is_empty());
    }

    /// The example with pop-fra-1's tunnel on WireGuard.
    fn wg_inv() -> Result<Inventory, String> {
        let text = include_str!("../examples/keeper.toml")
            .replace(
                r#"tunnel = { local = "192.0.2.2", remote = "192.0.2.100", vni = 101, demux = "dc-1" }"#,
                r#"tunnel = { local = "192.0.2.2", remote = "192.0.2.100", demux = "dc-1", wireguard = true }"#,
            )
            .replace(
                "id = \"pop-fra-1\"\n",
                "id = \"pop-fra-1\"\nwireguard_key = \"AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI=\"\n",
            )
            .replace(
                "id = \"dc-1\"\n",
                "id = \"dc-1\"\nwireguard_key = \"AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=\"\n",
            )
            .replace(
                r#"    { prefix = "198.19.0.0/24", port = "apps" },"#,
                r#"    { prefix = "198.19.0.0/24", port = "apps" },
    { prefix = "192.0.2.0/24", port = "core" },"#,
            );
        Config::parse("keeper.toml", &text)
            .map(|c| c.inventory)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn wireguard_tunnels_both_ways_and_no_plaintext_peer() {
        use tarp_api::rules::{WgKey, WireGuard};
        let inv = wg_inv().unwrap();
        let out = compile(&inv, []);
        assert_eq!(
            out["pop-fra-1"].tunnels,
            [Tunnel {
                id: 1,
                local: ip("192.0.2.2"),
                remote: ip("192.0.2.100"),
                vni: 0,
                inner_dst_mac: None,
                mtu: None,
                wireguard: Some(WireGuard {
                    public_key: WgKey([1; 32]),
                    port: 51820,
                    listen_port: 51820,
                    keepalive: Some(25),
                }),
            }],
            "the POP has the demux's key and keeps the session up"
        );
        let dc = &out["dc-1"];
        assert_eq!(
            dc.tunnels,
            [Tunnel {
                id: WG_TUNNEL_BASE + 1,
                local: ip("192.0.2.100"),
                remote: ip("192.0.2.2"),
                vni: 0,
                inner_dst_mac: None,
                mtu: None,
                wireguard: Some(WireGuard {
                    public_key: WgKey([2; 32]),
                    port: 51820,
                    listen_port: 51820,
                    keepalive: None,
                }),
            }],
            "the demux answers through a tunnel back, with the POP's key"
        );
        assert!(
            !dc.tunnel_peers.iter().any(|p| p.address == ip("192.0.2.2")),
            "plaintext VXLAN from the WireGuard POP is no tunnel peer's: {:?}",
            dc.tunnel_peers
        );
        assert_eq!(dc.tunnel_peers.len(), 2, "the VXLAN POPs stay");
        assert_eq!(
            remux_inner_mtu(&inv),
            Some(1440),
            "the smallest budget: WireGuard's"
        );
    }

    #[test]
    fn wireguard_needs_both_keys_and_a_route_back() {
        let text = include_str!("../examples/keeper.toml").replace(
            r#"vni = 101, demux = "dc-1" }"#,
            r#"vni = 101, demux = "dc-1", wireguard = true }"#,
        );
        let e = Config::parse("keeper.toml", &text).unwrap_err().to_string();
        assert!(
            e.contains("aggregators[1].tunnel.wireguard")
                && e.contains("node \"pop-fra-1\" has no wireguard_key"),
            "{e}"
        );
        // Both keys, but the demux has no route back to the POP.
        let t = text
            .replace("id = \"pop-fra-1\"\n", "id = \"pop-fra-1\"\nwireguard_key = \"AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI=\"\n")
            .replace("id = \"dc-1\"\n", "id = \"dc-1\"\nwireguard_key = \"AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=\"\n");
        let e = Config::parse("keeper.toml", &t).unwrap_err().to_string();
        assert!(e.contains("has no route to 192.0.2.2"), "{e}");
    }

    #[test]
    fn address_mode() {
        let inv = inv();
        let mut s = Circuits::new();
        activate(
            &mut s,
            &inv,
            Mode::Address,
            PortRange::single(4000),
            "198.19.0.2",
            true,
        );
        let out = compile(&inv, s.iter());
        assert_eq!(
            out["pop-ams-1"].aggregator,
            [AggregatorRule {
                capture: ip("203.0.113.1"),
                alias: ip("198.18.0.1"),
                tunnel: 1,
                line: Some("line0".into()),
                answer_ping: false,
                return_via: None
            }]
        );
        assert_eq!(
            out["dc-1"].demux,
            [DemuxRule::Address {
                alias: ip("198.18.0.1"),
                capture: ip("203.0.113.1"),
                app_host: ip("198.19.0.2")
            }]
        );
        assert_eq!(
            out["dc-1"].remux,
            [RemuxRule::Address {
                capture: ip("203.0.113.1")
            }]
        );
        assert!(out["pop-fra-1"].aggregator.is_empty());
    }

    #[test]
    fn port_mode_sorted_and_shared() {
        let inv = inv();
        let mut s = Circuits::new();
        // Activated in reverse port order; two circuits share one capture address.
        activate(
            &mut s,
            &inv,
            Mode::Port,
            PortRange {
                first: 4001,
                last: 4002,
            },
            "198.19.0.3",
            true,
        );
        activate(
            &mut s,
            &inv,
            Mode::Port,
            PortRange::single(80),
            "198.19.0.2",
            true,
        );
        let out = compile(&inv, s.iter());
        let (capture, alias) = (ip("203.0.113.1"), ip("198.18.0.1"));
        // One aggregator entry per capture address.
        assert_eq!(
            out["pop-ams-1"].aggregator,
            [AggregatorRule {
                capture,
                alias,
                tunnel: 1,
                line: Some("line0".into()),
                answer_ping: true,
                return_via: None
            }]
        );
        let port = |port: u16, app: &str| DemuxRule::Port {
            alias,
            protocol: Protocol::Tcp,
            port,
            app_host: ip(app),
        };
        assert_eq!(
            out["dc-1"].demux,
            [
                port(80, "198.19.0.2"),
                port(4001, "198.19.0.3"),
                port(4002, "198.19.0.3")
            ]
        );
        let remux = |app: &str, port: u16| RemuxRule::Port {
            app_host: ip(app),
            protocol: Protocol::Tcp,
            port,
            capture,
        };
        assert_eq!(
            out["dc-1"].remux,
            [
                remux("198.19.0.2", 80),
                remux("198.19.0.3", 4001),
                remux("198.19.0.3", 4002)
            ]
        );
        // Same input, same output.
        assert_eq!(compile(&inv, s.iter()), out);
    }

    #[test]
    fn make_before_break_states() {
        let inv = inv();
        let mut s = Circuits::new();
        let id = activate(
            &mut s,
            &inv,
            Mode::Address,
            PortRange::single(4000),
            "198.19.0.2",
            false,
        );
        // Activating: demux and remux only.
        let out = compile(&inv, s.iter());
        assert!(out["pop-ams-1"].aggregator.is_empty());
        assert_eq!(out["dc-1"].demux.len(), 1);
        s.confirm(id).unwrap();
        // Releasing: the aggregator's entry goes first.
        s.begin_release(id).unwrap();
        let out = compile(&inv, s.iter());
        assert!(out["pop-ams-1"].aggregator.is_empty());
        assert_eq!(out["dc-1"].remux.len(), 1);
        s.finish_release(id);
        let out = compile(&inv, s.iter());
        assert!(out["dc-1"].demux.is_empty() && out["dc-1"].remux.is_empty());
    }
}
