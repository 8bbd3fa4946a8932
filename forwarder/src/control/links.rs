//! Link state and device counters, read ten times a second: link changes go to the
//! keeper link (a line that goes down bounces its circuits), counters to the metrics.

use super::{Control, LinkReport, State};
use crate::metrics::DeviceCounters;

impl Control<'_> {
    /// Reads every port's link and counters once.
    pub(super) fn poll_links(&self, st: &mut State) {
        let mut devs = Vec::with_capacity(self.ports.len());
        for (i, p) in self.ports.iter().enumerate() {
            let s = p.stats().unwrap_or_default();
            let up = p.link().map(|l| l.up).unwrap_or(false)
                && kernel_carrier(&self.cfg.ports[i].device).unwrap_or(true);
            if st.links[i] != Some(up) {
                st.links[i] = Some(up);
                tracing::info!(port = %self.infos[i].name, up, "link");
                if let Some(h) = &self.hooks {
                    let _ = h.links.send(LinkReport {
                        port: self.infos[i].name.clone(),
                        up,
                    });
                }
            }
            devs.push(DeviceCounters {
                ipackets: s.ipackets,
                opackets: s.opackets,
                ibytes: s.ibytes,
                obytes: s.obytes,
                imissed: s.imissed,
                ierrors: s.ierrors,
                oerrors: s.oerrors,
                rx_nombuf: s.rx_nombuf,
                link_up: up,
            });
        }
        if let Ok(mut d) = self.metrics.devices.lock() {
            *d = devs;
        }
    }
}

/// `net_af_packet` always reports its link up; the carrier of the kernel interface it
/// is attached to (`iface=`) says whether the line really is.
fn kernel_carrier(device: &str) -> Option<bool> {
    if !device.starts_with("net_af_packet") && !device.starts_with("net_af_xdp") {
        return None;
    }
    let iface = device.split(',').find_map(|kv| kv.strip_prefix("iface="))?;
    let carrier = std::fs::read_to_string(format!("/sys/class/net/{iface}/carrier")).ok()?;
    Some(carrier.trim() == "1")
}
