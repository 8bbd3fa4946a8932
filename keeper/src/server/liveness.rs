//! Forwarders: their hellos, acknowledgements, link reports and heartbeats; lines that
//! go down (reported, or their aggregator gone silent) bounce their circuits.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::watch;
use tracing::{debug, error, info, warn};

use super::{Hello, Keeper, KeeperError};
use crate::circuits::{EventKind, LineId};

/// A NACK's reason is kept to this many characters.
const MAX_DETAIL: usize = 1024;
/// A hello names at most this many ports...
pub const MAX_PORTS: usize = 1024;
/// ...each named with at most this many bytes.
const MAX_PORT_NAME: usize = 64;

/// Checks the ports a hello names: a bounded number of non-empty, short, distinct
/// names.
fn check_ports(node: &str, ports: &[(String, bool)]) -> Result<(), KeeperError> {
    let bad = |problem: String| KeeperError::BadReport {
        node: node.to_string(),
        problem,
    };
    if ports.len() > MAX_PORTS {
        return Err(bad(format!(
            "hello names {} ports; at most {MAX_PORTS}",
            ports.len()
        )));
    }
    let mut names = std::collections::BTreeSet::new();
    for (name, _) in ports {
        if name.is_empty() || name.len() > MAX_PORT_NAME {
            return Err(bad(format!(
                "port name {name:?}: 1 to {MAX_PORT_NAME} bytes"
            )));
        }
        if !names.insert(name.as_str()) {
            return Err(bad(format!("port {name:?} named twice in the hello")));
        }
    }
    Ok(())
}

impl Keeper {
    /// Lines changed state: down lines bounce their circuits (replacements are
    /// activated in the background and announced over `Watch`), up lines return to
    /// the pool.
    pub(super) fn lines_changed(self: &Arc<Self>, changes: Vec<(LineId, bool, String)>) {
        if changes.is_empty() {
            return;
        }
        let mut bounced = Vec::new();
        {
            let Ok(mut core) = self.lock() else { return };
            let was_up: Vec<bool> = changes
                .iter()
                .map(|(line, _, _)| core.circuits.is_up(line))
                .collect();
            for (line, up, reason) in &changes {
                if !*up {
                    core.circuits.mark_down(line, reason);
                }
            }
            for ((line, up, reason), was_up) in changes.iter().zip(was_up) {
                if *up {
                    if core.circuits.line_up(line) {
                        info!(%line, "line up: its capture addresses are back in the pool");
                    }
                } else {
                    if was_up {
                        self.line_bounced(&mut core, line);
                    }
                    let bounces = core.circuits.line_down(&self.inv, line, reason);
                    if was_up {
                        warn!(%line, circuits = bounces.len(), "line down: {reason}");
                    }
                    bounced.extend(bounces.into_iter().map(|b| (b, reason.clone())));
                }
            }
            if let Err(e) = self.commit(&mut core, &[]) {
                error!("recording line changes failed: {e}");
                return;
            }
            for (b, _) in &bounced {
                if let Ok(r) = &b.replacement {
                    if let Some(c) = core.circuits.get(*r) {
                        info!(old = b.old, new = *r, capture = %c.capture, "replacing bounced circuit");
                    }
                }
            }
            bounced = bounced
                .into_iter()
                .map(|(b, reason)| {
                    let reason = match &b.replacement {
                        Ok(_) => reason,
                        Err(e) => format!("{reason}; no replacement: {e}"),
                    };
                    (b, reason)
                })
                .collect();
            // Targets are taken under the same lock as the publication.
            let mut with_targets = Vec::new();
            for (b, reason) in bounced {
                let targets = match &b.replacement {
                    Ok(r) => core
                        .circuits
                        .get(*r)
                        .map(|c| Self::targets(&core, [c.demux.clone(), c.remux.clone()]))
                        .unwrap_or_default(),
                    Err(_) => Vec::new(),
                };
                with_targets.push((b, reason, targets));
            }
            drop(core);
            for (b, reason, targets) in with_targets {
                let keeper = self.clone();
                match b.replacement {
                    Err(_) => {
                        if let Ok(old) = self.get(b.old) {
                            self.emit(EventKind::Bounced, old, None, Some(reason));
                        }
                    }
                    Ok(new) => {
                        tokio::spawn(async move {
                            let _busy = keeper.busy();
                            let result = keeper.complete_activation(new, targets).await;
                            let Ok(old) = keeper.get(b.old) else { return };
                            match result {
                                Ok(c) => {
                                    info!(
                                        old = b.old,
                                        new,
                                        generation = c.generation,
                                        "replacement active"
                                    );
                                    keeper.emit(EventKind::Bounced, old, Some(c), Some(reason));
                                }
                                Err(e) => {
                                    let reason = format!("{reason}; replacement failed: {e}");
                                    keeper.emit(EventKind::Bounced, old, None, Some(reason));
                                }
                            }
                        });
                    }
                }
            }
        }
    }

    /// A forwarder opened its stream. Checks who it is, records what it runs and its
    /// ports' link state, and returns its session number and its table-set channel.
    pub fn hello(
        self: &Arc<Self>,
        hello: &Hello,
    ) -> Result<(u64, watch::Receiver<u64>), KeeperError> {
        let handle = self
            .nodes
            .get(&hello.node)
            .ok_or_else(|| KeeperError::UnknownNode(hello.node.clone()))?;
        check_ports(&hello.node, &hello.ports)?;
        let want = self
            .inv
            .nodes
            .get(&hello.node)
            .and_then(|n| n.wireguard_key);
        if let Some(want) = want {
            if hello.wireguard_key != Some(want) {
                return Err(KeeperError::WrongWgKey {
                    node: hello.node.clone(),
                    want: want.to_string(),
                    got: hello
                        .wireguard_key
                        .map_or_else(|| "none".to_string(), |k| k.to_string()),
                });
            }
        }
        for role in &hello.roles {
            if !handle.roles.contains(role) {
                let actual = handle
                    .roles
                    .iter()
                    .map(|r| r.to_string())
                    .collect::<Vec<_>>()
                    .join(", ");
                return Err(KeeperError::WrongRole {
                    node: hello.node.clone(),
                    role: *role,
                    actual,
                });
            }
        }
        {
            let mut core = self.lock()?;
            let current = core.tables.generation(&hello.node);
            if hello.last_generation > core.generation {
                // The forwarder runs a generation this keeper never handed out (its
                // database was replaced): move past it so numbers stay unambiguous.
                warn!(
                    node = hello.node,
                    reported = hello.last_generation,
                    "forwarder reports an unknown generation"
                );
                core.generation = hello.last_generation;
                // Republish the node's set, in full, at the next generation.
                core.tables.force(&hello.node);
                self.commit(&mut core, &[])?;
            }
            let runs = if hello.last_generation <= current {
                hello.last_generation
            } else {
                0
            };
            handle.acks.send_modify(|s| {
                s.acked = runs;
                s.nack = None;
                s.connected = true;
            });
        }
        let (session, changes) = {
            let mut live = handle
                .liveness
                .lock()
                .map_err(|_| KeeperError::Unavailable("liveness lock poisoned".into()))?;
            live.session += 1;
            live.last_seen = Instant::now();
            live.lost = false;
            live.ports = hello.ports.iter().cloned().collect();
            (
                live.session,
                self.line_states(&hello.node, &live.ports, "reported down at connect"),
            )
        };
        info!(
            node = hello.node,
            session,
            last_generation = hello.last_generation,
            "forwarder connected"
        );
        self.lines_changed(changes);
        Ok((session, handle.published.subscribe()))
    }

    /// The state every line of an aggregator should have given its ports' link state
    /// (a port not reported counts as up).
    pub(super) fn line_states(
        &self,
        node: &str,
        ports: &BTreeMap<String, bool>,
        reason: &str,
    ) -> Vec<(LineId, bool, String)> {
        let Some(agg) = self.inv.aggregator(node) else {
            return Vec::new();
        };
        agg.lines
            .iter()
            .map(|l| {
                let up = ports.get(&l.name).copied().unwrap_or(true);
                (
                    LineId {
                        node: node.to_string(),
                        line: l.name.clone(),
                    },
                    up,
                    reason.to_string(),
                )
            })
            .collect()
    }

    /// Anything heard from a forwarder: it is alive. An aggregator whose lines were
    /// bounced for silence gets them back.
    pub(super) fn seen(self: &Arc<Self>, node: &str) {
        let Some(handle) = self.nodes.get(node) else {
            return;
        };
        let changes = {
            let Ok(mut live) = handle.liveness.lock() else {
                return;
            };
            live.last_seen = Instant::now();
            if !live.lost {
                return;
            }
            live.lost = false;
            info!(node, "forwarder heard from again");
            self.line_states(node, &live.ports, "reported down")
        };
        self.lines_changed(changes);
    }

    /// True while `session` is the node's newest stream.
    pub fn is_current(&self, node: &str, session: u64) -> bool {
        self.nodes
            .get(node)
            .and_then(|h| h.liveness.lock().ok().map(|l| l.session == session))
            .unwrap_or(false)
    }

    /// Checks that `generation` is one the node's streams could have sent it.
    fn check_generation(&self, node: &str, what: &str, generation: u64) -> Result<(), KeeperError> {
        let Some(h) = self.nodes.get(node) else {
            return Err(KeeperError::UnknownNode(node.to_string()));
        };
        let current = *h.published.borrow();
        if generation == 0 || generation > current {
            return Err(KeeperError::BadReport {
                node: node.to_string(),
                problem: format!(
                    "{what} of generation {generation}, but its current one is {current}"
                ),
            });
        }
        Ok(())
    }

    /// A forwarder acknowledged a generation (and with it every earlier one). An ACK of
    /// a generation the node was never sent is refused; an older one than it already
    /// acknowledged changes nothing.
    pub fn ack(self: &Arc<Self>, node: &str, generation: u64) -> Result<(), KeeperError> {
        self.check_generation(node, "ACK", generation)?;
        self.seen(node);
        if let Some(h) = self.nodes.get(node) {
            debug!(node, generation, "ack");
            h.acks.send_if_modified(|s| {
                let newer = generation > s.acked;
                if newer {
                    s.acked = generation;
                }
                newer
            });
        }
        Ok(())
    }

    /// A forwarder rejected a generation (it keeps running the previous one).
    pub fn nack(
        self: &Arc<Self>,
        node: &str,
        generation: u64,
        detail: &str,
    ) -> Result<(), KeeperError> {
        self.check_generation(node, "NACK", generation)?;
        self.seen(node);
        // A reason is for a log line and an error message: bounded.
        let detail: String = detail.chars().take(MAX_DETAIL).collect();
        if let Some(h) = self.nodes.get(node) {
            warn!(node, generation, "forwarder rejected table set: {detail}");
            h.acks.send_modify(|s| s.nack = Some((generation, detail)));
        }
        Ok(())
    }

    /// A forwarder reported a port's link state. Only ports it named in its hello may
    /// be reported.
    pub fn link(self: &Arc<Self>, node: &str, port: &str, up: bool) -> Result<(), KeeperError> {
        let Some(h) = self.nodes.get(node) else {
            return Err(KeeperError::UnknownNode(node.to_string()));
        };
        {
            let mut live = h
                .liveness
                .lock()
                .map_err(|_| KeeperError::Unavailable("liveness lock poisoned".into()))?;
            match live.ports.get_mut(port) {
                Some(state) => *state = up,
                None => {
                    return Err(KeeperError::BadReport {
                        node: node.to_string(),
                        problem: format!(
                            "link state of port {port:?}, which its hello did not name"
                        ),
                    })
                }
            }
        }
        self.seen(node);
        let is_line = self
            .inv
            .aggregator(node)
            .is_some_and(|a| a.lines.iter().any(|l| l.name == port));
        if !is_line {
            debug!(node, port, up, "link state of a port that is not a line");
            return Ok(());
        }
        let line = LineId {
            node: node.to_string(),
            line: port.to_string(),
        };
        let reason = if up { "link up" } else { "link down" };
        self.lines_changed(vec![(line, up, reason.to_string())]);
        Ok(())
    }

    /// A forwarder sent a heartbeat.
    pub fn heartbeat(self: &Arc<Self>, node: &str) {
        self.seen(node);
    }

    /// A forwarder's stream ended. Its lines stay up until its heartbeats have been
    /// missing for the configured time.
    pub fn disconnected(&self, node: &str, session: u64) {
        if self.is_current(node, session) {
            if let Some(h) = self.nodes.get(node) {
                h.acks.send_modify(|s| s.connected = false);
            }
            info!(node, session, "forwarder disconnected");
        }
    }

    /// Bounces the lines of aggregators silent for longer than the heartbeat timeout.
    pub fn check_heartbeats(self: &Arc<Self>) {
        let timeout = self.settings.heartbeat_timeout();
        for agg in &self.inv.aggregators {
            let Some(h) = self.nodes.get(&agg.node) else {
                continue;
            };
            let silent = {
                let Ok(mut live) = h.liveness.lock() else {
                    continue;
                };
                if live.lost || live.last_seen.elapsed() <= timeout {
                    continue;
                }
                live.lost = true;
                live.last_seen.elapsed()
            };
            let reason = format!(
                "aggregator {} silent for {} ms",
                agg.node,
                silent.as_millis()
            );
            let changes = agg
                .lines
                .iter()
                .map(|l| {
                    (
                        LineId {
                            node: agg.node.clone(),
                            line: l.name.clone(),
                        },
                        false,
                        reason.clone(),
                    )
                })
                .collect();
            self.lines_changed(changes);
        }
    }
}
