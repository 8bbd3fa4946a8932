//! The keeper's gRPC contract, generated from `proto/tarp.proto`, and the conversions
//! between [`Rules`] and its wire form.
//!
//! Addresses travel as text; converting from the wire checks every one and names the
//! field that is wrong, so a forwarder can NACK a bad table set with a useful detail.

use std::net::IpAddr;

use ipnet::IpNet;

use crate::rules::{
    AggregatorRule, DemuxRule, Protocol, RemuxRule, ReturnTunnel, Route, Rules, Tunnel, TunnelPeer,
    WgKey, WireGuard,
};
use crate::MacAddr;

/// Generated messages, clients and servers of package `tarp.v1`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("tarp.v1");
}

/// A wire message that does not make a valid value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct ProtoError {
    /// Path of the offending field, e.g. `demux[3].alias`.
    pub field: String,
    /// What is wrong with it.
    pub problem: String,
}

impl ProtoError {
    /// An error about `field`.
    pub fn new(field: impl Into<String>, problem: impl Into<String>) -> ProtoError {
        ProtoError {
            field: field.into(),
            problem: problem.into(),
        }
    }
}

/// Parses an address field, naming it on failure.
pub fn parse_ip(field: &str, text: &str) -> Result<IpAddr, ProtoError> {
    text.parse()
        .map_err(|_| ProtoError::new(field, format!("{text:?} is not an IP address")))
}

/// Parses an optional address field (empty means absent).
pub fn parse_opt_ip(field: &str, text: &str) -> Result<Option<IpAddr>, ProtoError> {
    if text.is_empty() {
        Ok(None)
    } else {
        parse_ip(field, text).map(Some)
    }
}

fn parse_port(field: &str, port: u32) -> Result<u16, ProtoError> {
    u16::try_from(port).map_err(|_| ProtoError::new(field, format!("{port} is not a port")))
}

impl From<Protocol> for v1::Protocol {
    fn from(p: Protocol) -> Self {
        match p {
            Protocol::Udp => v1::Protocol::Udp,
            Protocol::Tcp => v1::Protocol::Tcp,
        }
    }
}

/// The [`Protocol`] of a wire enum value; `field` names it in the error.
pub fn protocol_from_wire(field: &str, value: i32) -> Result<Protocol, ProtoError> {
    match v1::Protocol::try_from(value) {
        Ok(v1::Protocol::Udp) => Ok(Protocol::Udp),
        Ok(v1::Protocol::Tcp) => Ok(Protocol::Tcp),
        Ok(v1::Protocol::Unspecified) => Err(ProtoError::new(field, "protocol not set")),
        Err(_) => Err(ProtoError::new(field, format!("unknown protocol {value}"))),
    }
}

impl From<&Rules> for v1::Rules {
    fn from(r: &Rules) -> Self {
        v1::Rules {
            tunnels: r.tunnels.iter().map(Into::into).collect(),
            aggregator: r.aggregator.iter().map(Into::into).collect(),
            demux: r.demux.iter().map(Into::into).collect(),
            remux: r.remux.iter().map(Into::into).collect(),
            routes: r.routes.iter().map(Into::into).collect(),
            tunnel_peers: r
                .tunnel_peers
                .iter()
                .map(|p| v1::TunnelPeer {
                    address: p.address.to_string(),
                    vni: p.vni,
                })
                .collect(),
            inner_mtu: r.inner_mtu.map_or(0, u32::from),
            return_tunnels: r
                .return_tunnels
                .iter()
                .map(|t| v1::ReturnTunnel {
                    capture: t.capture.to_string(),
                    tunnel: t.tunnel,
                })
                .collect(),
        }
    }
}

impl TryFrom<&v1::Rules> for Rules {
    type Error = ProtoError;

    fn try_from(r: &v1::Rules) -> Result<Self, ProtoError> {
        Ok(Rules {
            tunnels: collect(&r.tunnels, "tunnels", tunnel_from_wire)?,
            aggregator: collect(&r.aggregator, "aggregator", aggregator_from_wire)?,
            demux: collect(&r.demux, "demux", demux_from_wire)?,
            remux: collect(&r.remux, "remux", remux_from_wire)?,
            routes: collect(&r.routes, "routes", route_from_wire)?,
            tunnel_peers: r
                .tunnel_peers
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    Ok(TunnelPeer {
                        address: parse_ip(&format!("tunnel_peers[{i}].address"), &p.address)?,
                        vni: p.vni,
                    })
                })
                .collect::<Result<_, ProtoError>>()?,
            inner_mtu: opt_mtu("inner_mtu", r.inner_mtu)?,
            return_tunnels: collect(&r.return_tunnels, "return_tunnels", |at, t| {
                Ok(ReturnTunnel {
                    capture: parse_ip(&format!("{at}.capture"), &t.capture)?,
                    tunnel: t.tunnel,
                })
            })?,
        })
    }
}

/// An MTU on the wire: 0 is "not set"; otherwise 576..=65535.
fn opt_mtu(field: &str, v: u32) -> Result<Option<u16>, ProtoError> {
    match v {
        0 => Ok(None),
        576..=65535 => Ok(Some(v as u16)),
        _ => Err(ProtoError::new(
            field,
            format!("MTU {v} is not in 576..=65535"),
        )),
    }
}

fn collect<W, T>(
    items: &[W],
    name: &str,
    convert: impl Fn(&str, &W) -> Result<T, ProtoError>,
) -> Result<Vec<T>, ProtoError> {
    items
        .iter()
        .enumerate()
        .map(|(i, w)| convert(&format!("{name}[{i}]"), w))
        .collect()
}

impl From<&Tunnel> for v1::Tunnel {
    fn from(t: &Tunnel) -> Self {
        v1::Tunnel {
            id: t.id,
            local: t.local.to_string(),
            remote: t.remote.to_string(),
            vni: t.vni,
            inner_dst_mac: t.inner_dst_mac.map(|m| m.to_string()).unwrap_or_default(),
            mtu: t.mtu.map_or(0, u32::from),
            wireguard: t.wireguard.map(|w| v1::WireGuard {
                public_key: w.public_key.0.to_vec(),
                port: w.port.into(),
                listen_port: w.listen_port.into(),
                keepalive: w.keepalive.map_or(0, u32::from),
            }),
        }
    }
}

fn wireguard_from_wire(at: &str, w: &v1::WireGuard) -> Result<WireGuard, ProtoError> {
    let key = <[u8; 32]>::try_from(w.public_key.as_slice()).map_err(|_| {
        ProtoError::new(
            format!("{at}.public_key"),
            format!("a key is 32 bytes, this is {}", w.public_key.len()),
        )
    })?;
    let port = |name: &str, p: u32| {
        u16::try_from(p).ok().filter(|&p| p != 0).ok_or_else(|| {
            ProtoError::new(format!("{at}.{name}"), format!("{p} is not a UDP port"))
        })
    };
    Ok(WireGuard {
        public_key: WgKey(key),
        port: port("port", w.port)?,
        listen_port: port("listen_port", w.listen_port)?,
        keepalive: match w.keepalive {
            0 => None,
            k => Some(u16::try_from(k).map_err(|_| {
                ProtoError::new(format!("{at}.keepalive"), format!("{k} s is too long"))
            })?),
        },
    })
}

fn tunnel_from_wire(at: &str, t: &v1::Tunnel) -> Result<Tunnel, ProtoError> {
    let inner_dst_mac = if t.inner_dst_mac.is_empty() {
        None
    } else {
        Some(
            t.inner_dst_mac
                .parse::<MacAddr>()
                .map_err(|e| ProtoError::new(format!("{at}.inner_dst_mac"), e.to_string()))?,
        )
    };
    Ok(Tunnel {
        id: t.id,
        local: parse_ip(&format!("{at}.local"), &t.local)?,
        remote: parse_ip(&format!("{at}.remote"), &t.remote)?,
        vni: t.vni,
        inner_dst_mac,
        mtu: opt_mtu(&format!("{at}.mtu"), t.mtu)?,
        wireguard: t
            .wireguard
            .as_ref()
            .map(|w| wireguard_from_wire(&format!("{at}.wireguard"), w))
            .transpose()?,
    })
}

impl From<&AggregatorRule> for v1::AggregatorRule {
    fn from(a: &AggregatorRule) -> Self {
        v1::AggregatorRule {
            capture: a.capture.to_string(),
            alias: a.alias.to_string(),
            tunnel: a.tunnel,
            line: a.line.clone().unwrap_or_default(),
            answer_ping: a.answer_ping,
            return_via: a.return_via.map(|a| a.to_string()).unwrap_or_default(),
        }
    }
}

fn aggregator_from_wire(at: &str, a: &v1::AggregatorRule) -> Result<AggregatorRule, ProtoError> {
    Ok(AggregatorRule {
        capture: parse_ip(&format!("{at}.capture"), &a.capture)?,
        alias: parse_ip(&format!("{at}.alias"), &a.alias)?,
        tunnel: a.tunnel,
        line: if a.line.is_empty() {
            None
        } else {
            Some(a.line.clone())
        },
        answer_ping: a.answer_ping,
        return_via: parse_opt_ip(&format!("{at}.return_via"), &a.return_via)?,
    })
}

impl From<&DemuxRule> for v1::DemuxRule {
    fn from(d: &DemuxRule) -> Self {
        use v1::demux_rule::Rule;
        let rule = match d {
            DemuxRule::Address {
                alias,
                capture,
                app_host,
            } => Rule::Address(v1::DemuxAddress {
                alias: alias.to_string(),
                capture: capture.to_string(),
                app_host: app_host.to_string(),
            }),
            DemuxRule::Port {
                alias,
                protocol,
                port,
                app_host,
            } => Rule::Port(v1::DemuxPort {
                alias: alias.to_string(),
                protocol: v1::Protocol::from(*protocol) as i32,
                port: u32::from(*port),
                app_host: app_host.to_string(),
            }),
        };
        v1::DemuxRule { rule: Some(rule) }
    }
}

fn demux_from_wire(at: &str, d: &v1::DemuxRule) -> Result<DemuxRule, ProtoError> {
    use v1::demux_rule::Rule;
    match &d.rule {
        Some(Rule::Address(a)) => Ok(DemuxRule::Address {
            alias: parse_ip(&format!("{at}.alias"), &a.alias)?,
            capture: parse_ip(&format!("{at}.capture"), &a.capture)?,
            app_host: parse_ip(&format!("{at}.app_host"), &a.app_host)?,
        }),
        Some(Rule::Port(p)) => Ok(DemuxRule::Port {
            alias: parse_ip(&format!("{at}.alias"), &p.alias)?,
            protocol: protocol_from_wire(&format!("{at}.protocol"), p.protocol)?,
            port: parse_port(&format!("{at}.port"), p.port)?,
            app_host: parse_ip(&format!("{at}.app_host"), &p.app_host)?,
        }),
        None => Err(ProtoError::new(at, "neither address nor port rule")),
    }
}

impl From<&RemuxRule> for v1::RemuxRule {
    fn from(r: &RemuxRule) -> Self {
        use v1::remux_rule::Rule;
        let rule = match r {
            RemuxRule::Address { capture } => Rule::Address(v1::RemuxAddress {
                capture: capture.to_string(),
            }),
            RemuxRule::Port {
                app_host,
                protocol,
                port,
                capture,
            } => Rule::Port(v1::RemuxPort {
                app_host: app_host.to_string(),
                protocol: v1::Protocol::from(*protocol) as i32,
                port: u32::from(*port),
                capture: capture.to_string(),
            }),
        };
        v1::RemuxRule { rule: Some(rule) }
    }
}

fn remux_from_wire(at: &str, r: &v1::RemuxRule) -> Result<RemuxRule, ProtoError> {
    use v1::remux_rule::Rule;
    match &r.rule {
        Some(Rule::Address(a)) => Ok(RemuxRule::Address {
            capture: parse_ip(&format!("{at}.capture"), &a.capture)?,
        }),
        Some(Rule::Port(p)) => Ok(RemuxRule::Port {
            app_host: parse_ip(&format!("{at}.app_host"), &p.app_host)?,
            protocol: protocol_from_wire(&format!("{at}.protocol"), p.protocol)?,
            port: parse_port(&format!("{at}.port"), p.port)?,
            capture: parse_ip(&format!("{at}.capture"), &p.capture)?,
        }),
        None => Err(ProtoError::new(at, "neither address nor port rule")),
    }
}

impl From<&Route> for v1::Route {
    fn from(r: &Route) -> Self {
        v1::Route {
            prefix: r.prefix.to_string(),
            port: r.port.clone(),
            via: r.via.map(|v| v.to_string()).unwrap_or_default(),
        }
    }
}

fn route_from_wire(at: &str, r: &v1::Route) -> Result<Route, ProtoError> {
    let prefix = r.prefix.parse::<IpNet>().map_err(|_| {
        ProtoError::new(
            format!("{at}.prefix"),
            format!("{:?} is not a prefix", r.prefix),
        )
    })?;
    if r.port.is_empty() {
        return Err(ProtoError::new(format!("{at}.port"), "empty port name"));
    }
    Ok(Route {
        prefix,
        port: r.port.clone(),
        via: parse_opt_ip(&format!("{at}.via"), &r.via)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn rules_round_trip() {
        let rules = Rules {
            tunnels: vec![
                Tunnel {
                    id: 1,
                    local: ip("192.0.2.1"),
                    remote: ip("192.0.2.100"),
                    vni: 100,
                    inner_dst_mac: Some("02:00:00:00:00:01".parse().unwrap()),
                    mtu: Some(1400),
                    wireguard: None,
                },
                Tunnel {
                    id: 2,
                    local: ip("192.0.2.1"),
                    remote: ip("192.0.2.101"),
                    vni: 0,
                    inner_dst_mac: None,
                    mtu: None,
                    wireguard: Some(WireGuard {
                        public_key: WgKey([7; 32]),
                        port: 51821,
                        listen_port: 51820,
                        keepalive: Some(25),
                    }),
                },
            ],
            aggregator: vec![AggregatorRule {
                capture: ip("203.0.113.2"),
                alias: ip("198.18.0.3"),
                tunnel: 1,
                line: Some("p0".into()),
                answer_ping: true,
                return_via: Some(ip("203.0.113.254")),
            }],
            demux: vec![
                DemuxRule::Address {
                    alias: ip("198.18.0.3"),
                    capture: ip("203.0.113.2"),
                    app_host: ip("198.19.0.2"),
                },
                DemuxRule::Port {
                    alias: ip("198.18.0.4"),
                    protocol: Protocol::Tcp,
                    port: 4000,
                    app_host: ip("198.19.0.2"),
                },
            ],
            remux: vec![
                RemuxRule::Address {
                    capture: ip("203.0.113.2"),
                },
                RemuxRule::Port {
                    app_host: ip("198.19.0.2"),
                    protocol: Protocol::Udp,
                    port: 53,
                    capture: ip("203.0.113.3"),
                },
            ],
            routes: vec![
                Route {
                    prefix: "198.51.100.0/24".parse().unwrap(),
                    port: "p0".into(),
                    via: None,
                },
                Route {
                    prefix: "2001:db8::/32".parse().unwrap(),
                    port: "p1".into(),
                    via: Some(ip("2001:db8::1")),
                },
            ],
            tunnel_peers: vec![
                TunnelPeer::any_vni(ip("192.0.2.1")),
                TunnelPeer {
                    address: ip("192.0.2.5"),
                    vni: Some(100),
                },
            ],
            inner_mtu: Some(1380),
            return_tunnels: vec![ReturnTunnel {
                capture: ip("203.0.113.2"),
                tunnel: 3,
            }],
        };
        let wire = v1::Rules::from(&rules);
        assert_eq!(Rules::try_from(&wire).unwrap(), rules);
    }

    #[test]
    fn bad_wire_names_the_field() {
        let wire = v1::Rules {
            demux: vec![
                v1::DemuxRule { rule: None },
                v1::DemuxRule {
                    rule: Some(v1::demux_rule::Rule::Port(v1::DemuxPort {
                        alias: "198.18.0.1".into(),
                        protocol: v1::Protocol::Tcp as i32,
                        port: 70000,
                        app_host: "198.19.0.2".into(),
                    })),
                },
            ],
            ..Default::default()
        };
        let err = Rules::try_from(&wire).unwrap_err();
        assert_eq!(err.field, "demux[0]");
        let wire = v1::Rules {
            demux: wire.demux[1..].to_vec(),
            ..Default::default()
        };
        assert_eq!(
            Rules::try_from(&wire).unwrap_err().to_string(),
            "demux[0].port: 70000 is not a port"
        );
        let wire = v1::Rules {
            tunnel_peers: vec![v1::TunnelPeer {
                address: "nope".into(),
                vni: None,
            }],
            ..Default::default()
        };
        assert_eq!(
            Rules::try_from(&wire).unwrap_err().field,
            "tunnel_peers[0].address"
        );
        let wire = v1::Rules {
            inner_mtu: 100,
            ..Default::default()
        };
        assert_eq!(
            Rules::try_from(&wire).unwrap_err().to_string(),
            "inner_mtu: MTU 100 is not in 576..=65535"
        );
    }
}
