//! Neighbour resolution: next hops of the current snapshot that nobody has told us about
//! yet are solicited (ARP request, or ND neighbour solicitation) from the port's own
//! address; the answers come back through the slow path.

use std::net::IpAddr;

use super::Control;
use crate::slowpath;

impl Control<'_> {
    /// Solicits every unresolved next hop once.
    pub(super) fn resolve_next_hops(&self) {
        let snap = self.snapshots.load();
        for nh in snap.next_hops.iter().filter(|n| n.mac().is_none()) {
            let p = &self.infos[nh.port as usize];
            let src = source_for(&p.addrs, nh.ip.is_ipv4());
            if let Some(frame) = src.and_then(|s| slowpath::solicit(p.mac, s, nh.ip)) {
                self.send(nh.port, &frame);
            }
        }
    }
}

/// The first address of a family on a port, for sourcing solicitations.
fn source_for(addrs: &[IpAddr], v4: bool) -> Option<IpAddr> {
    addrs.iter().find(|a| a.is_ipv4() == v4).copied()
}
