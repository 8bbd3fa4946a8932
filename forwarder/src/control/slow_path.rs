//! The slow-path service: frames the workers could not handle (ARP, ND, pings to the
//! ports' own addresses) are answered here, and the neighbours they reveal are learned.

use super::{Control, State};
use crate::slowpath;

/// Frames handled per turn of the control loop, so that a flood cannot starve the rest.
const PER_TURN: usize = 256;

impl Control<'_> {
    /// Handles up to [`PER_TURN`] frames; true if there were any.
    pub(super) fn serve_slow_path(&mut self, st: &State) -> bool {
        let mut busy = false;
        for _ in 0..PER_TURN {
            let Some(m) = self.slow.pop() else { break };
            busy = true;
            let Some(&port) = st.dpdk_to_port.get(&m.port()) else {
                continue;
            };
            let snap = self.snapshots.load();
            let out = slowpath::handle(&snap, port, m.data());
            drop(m);
            if let Some((ip, mac)) = out.learned {
                let known = self.neighbours.get(&(port, ip)) == Some(&mac);
                // Learn only addresses the tables use, so that a scan cannot fill memory.
                if snap.learn_neighbour(port, ip, mac) > 0 && !known {
                    tracing::info!(port = %self.infos[port as usize].name, %ip, %mac, "neighbour learned");
                    self.neighbours.insert((port, ip), mac);
                }
            }
            if let Some(reply) = out.reply {
                self.send(port, &reply);
            }
        }
        busy
    }
}
