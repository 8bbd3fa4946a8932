//! The keeper thread: dials the keeper, receives table sets by generation (a full set,
//! then deltas, which the session applies to the set it holds), has the control thread
//! validate, build and swap each one in, and acknowledges it (or NACKs it with the
//! reason, the old snapshot still forwarding). It reports link changes and heartbeats,
//! and reconnects with back-off, resuming from the set it runs so that the keeper sends
//! only what changed meanwhile; while the keeper is away the forwarder keeps forwarding
//! on its last tables.
//!
//! Deltas are coalesced: every update already received when a build starts is applied
//! to the set before it, and the build's ACK covers them all. So a burst of changes
//! costs one snapshot build, not one per change, and a forwarder builds at most one
//! snapshot at a time: the time from a change to its ACK is bounded by two builds of
//! the full table (the one under way and the next).
//!
//! It touches no DPDK object, so it is a plain thread; the snapshot is built and swapped
//! on the control thread (see [`super`]). While it waits for that, it stays inside its
//! runtime, so that the session's heartbeats go on however long a build takes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use tarp_api::client::{
    ClientError, ForwarderSession, PortState, Role as KeeperRole, SessionOptions, Tables,
};

use super::{ControlHooks, LinkReport, TableUpdate};
use crate::config::Config;
use crate::tables::Role;

/// What the keeper thread needs.
pub struct KeeperLink {
    /// The keeper's endpoint and TLS.
    pub endpoint: tarp_api::endpoint::Dial,
    /// This forwarder's node id.
    pub node_id: String,
    /// Roles of its ports.
    pub roles: Vec<Role>,
    /// Port names (link state reported per port).
    pub ports: Vec<String>,
    /// Table updates go to the control thread here.
    pub updates: mpsc::Sender<TableUpdate>,
    /// Link changes come from the control thread here.
    pub links: mpsc::Receiver<LinkReport>,
    /// Set when the forwarder stops.
    pub stop: Arc<AtomicBool>,
    /// This forwarder's WireGuard public key, announced in every hello.
    pub wireguard_public_key: Option<[u8; 32]>,
    /// The workers' lcores: the link's thread stays off them.
    pub worker_lcores: Vec<u32>,
}

fn keeper_role(r: Role) -> KeeperRole {
    match r {
        Role::Aggregator => KeeperRole::Aggregator,
        Role::Demux => KeeperRole::Demux,
        Role::Remux => KeeperRole::Remux,
    }
}

impl KeeperLink {
    /// The link for `cfg`'s node to the keeper at `endpoint`, and the hooks the control
    /// thread drives it with.
    pub fn new(
        cfg: &Config,
        endpoint: tarp_api::endpoint::Dial,
        stop: Arc<AtomicBool>,
    ) -> (KeeperLink, ControlHooks) {
        let (updates_tx, updates_rx) = mpsc::channel();
        let (links_tx, links_rx) = mpsc::channel();
        let link = KeeperLink {
            endpoint,
            node_id: cfg.node_id.clone(),
            roles: cfg.ports.iter().map(|p| p.role).collect(),
            ports: cfg.ports.iter().map(|p| p.name.clone()).collect(),
            updates: updates_tx,
            links: links_rx,
            stop,
            worker_lcores: cfg.workers.lcores.clone(),
            wireguard_public_key: cfg
                .wireguard
                .as_ref()
                .and_then(|w| w.private_key().ok())
                .map(|k| crate::wg::WgEngine::new(k).public_key()),
        };
        (
            link,
            ControlHooks {
                updates: updates_rx,
                links: links_tx,
            },
        )
    }

    /// Runs the link on a thread of its own, named `keeper`.
    pub fn spawn(self) -> std::io::Result<std::thread::JoinHandle<()>> {
        std::thread::Builder::new()
            .name("keeper".into())
            .spawn(move || run(self))
    }
}

/// Pins this thread to the first core it may run on that no worker polls (lcore ids
/// taken as CPU ids, DPDK's default). The link starts before the EAL pins anything, so
/// without this its runtime would float onto the workers' cores.
pub(crate) fn off_worker_cores(workers: &[u32]) {
    let Some(cores) = core_affinity::get_core_ids() else {
        return;
    };
    match cores
        .into_iter()
        .find(|c| !workers.iter().any(|&w| w as usize == c.id))
    {
        Some(c) if core_affinity::set_for_current(c) => {
            tracing::debug!(core = c.id, "keeper link pinned off the workers' cores");
        }
        _ => tracing::warn!("keeper link: no core free of workers to run on"),
    }
}

/// Longest wait between two connection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Runs the keeper link until `stop` is set.
pub fn run(link: KeeperLink) {
    off_worker_cores(&link.worker_lcores);
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "keeper thread: no runtime; running on static tables only");
            return;
        }
    };
    let mut roles: Vec<KeeperRole> = Vec::new();
    for r in &link.roles {
        let kr = keeper_role(*r);
        if !roles.contains(&kr) {
            roles.push(kr);
        }
    }
    // Link state as last reported by the control thread, resent on every (re)connect.
    let mut ports: Vec<PortState> = link
        .ports
        .iter()
        .map(|p| PortState {
            name: p.clone(),
            up: true,
        })
        .collect();
    let mut applied = 0u64;
    // The set the forwarder runs, kept across sessions to resume from (only while no
    // session holds it: a second holder would make every delta copy the whole set).
    let mut resume: Option<Tables> = None;
    let mut backoff = Duration::from_millis(100);
    while !link.stop.load(Ordering::Relaxed) {
        drain_links(&link.links, &mut ports);
        let session = rt.block_on(async {
            let options = SessionOptions {
                wireguard_public_key: link.wireguard_public_key,
                ..SessionOptions::default()
            };
            let (node, endpoint) = (&link.node_id, &link.endpoint);
            let connect = async {
                match resume.clone() {
                    Some(t) => {
                        ForwarderSession::resume_with(endpoint, node, &roles, &ports, t, options)
                            .await
                    }
                    // Without the set it runs, the forwarder asks for a full one.
                    None => {
                        ForwarderSession::connect_with(endpoint, node, &roles, &ports, 0, options)
                            .await
                    }
                }
            };
            tokio::time::timeout(Duration::from_secs(3), connect).await
        });
        let mut session = match session {
            Ok(Ok(s)) => {
                tracing::info!(keeper = %link.endpoint, generation = applied, "connected to the keeper");
                backoff = Duration::from_millis(100);
                // The session holds the set now.
                drop(resume.take());
                s
            }
            Ok(Err(e)) => {
                tracing::warn!(keeper = %link.endpoint, error = %e, retry_ms = backoff.as_millis() as u64, "keeper unreachable; forwarding on the last tables");
                sleep_unless_stopped(&link.stop, backoff);
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
            Err(_) => {
                tracing::warn!(keeper = %link.endpoint, "keeper connect timed out; forwarding on the last tables");
                sleep_unless_stopped(&link.stop, backoff);
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        // The session: updates in, link reports out, until it ends.
        serve(&rt, &link, &mut session, &mut ports, &mut applied);
        if link.stop.load(Ordering::Relaxed) {
            return;
        }
        // Resume from the set the session holds if it is the one running (not one the
        // control thread refused, nor one a bad delta left half-applied).
        resume = session.into_tables().filter(|t| t.generation == applied);
        sleep_unless_stopped(&link.stop, backoff);
    }
}

/// Serves one session until it ends or the forwarder stops.
fn serve(
    rt: &tokio::runtime::Runtime,
    link: &KeeperLink,
    session: &mut ForwarderSession,
    ports: &mut [PortState],
    applied: &mut u64,
) {
    loop {
        if link.stop.load(Ordering::Relaxed) {
            return;
        }
        let mut changed = Vec::new();
        while let Ok(r) = link.links.try_recv() {
            changed.push(r);
        }
        for r in changed {
            if let Some(p) = ports.iter_mut().find(|p| p.name == r.port) {
                p.up = r.up;
            }
            if let Err(e) = rt.block_on(session.report_link(&r.port, r.up)) {
                tracing::warn!(error = %e, "keeper: link report failed");
            }
        }
        let next = rt.block_on(async {
            tokio::time::timeout(Duration::from_millis(100), session.next_update()).await
        });
        let received = std::time::Instant::now();
        let generation = match next {
            Err(_) => continue, // nothing new; look at the links again
            Ok(Ok((generation, rules))) => {
                drop(rules);
                generation
            }
            Ok(Err(e)) => return session_ended(&e),
        };
        // Coalesce: apply every update already here before building.
        let mut newest = generation;
        loop {
            let more = rt.block_on(async {
                tokio::time::timeout(Duration::ZERO, session.next_update()).await
            });
            match more {
                Ok(Ok((g, rules))) => {
                    drop(rules);
                    newest = g;
                }
                Ok(Err(e)) => return session_ended(&e),
                Err(_) => break,
            }
        }
        let Some(tables) = session.tables().filter(|t| t.generation == newest) else {
            return;
        };
        let (done_tx, mut done_rx) = tokio::sync::oneshot::channel();
        let update = TableUpdate {
            generation: newest,
            rules: tables.rules,
            done: done_tx,
            received,
        };
        if link.updates.send(update).is_err() {
            return; // the control thread is gone: the forwarder is stopping
        }
        // Wait inside the runtime: the heartbeat task and the connection keep running
        // while the control thread builds the snapshot.
        let verdict = rt.block_on(async {
            loop {
                let wait = Duration::from_millis(100);
                match tokio::time::timeout(wait, &mut done_rx).await {
                    Ok(v) => break v.ok(),
                    Err(_) if !link.stop.load(Ordering::Relaxed) => continue,
                    Err(_) => break None,
                }
            }
        });
        let result = match verdict {
            Some(Ok(g)) => {
                *applied = g;
                rt.block_on(session.ack(g))
            }
            Some(Err(reason)) => rt.block_on(session.nack(newest, &reason)),
            None => return,
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "keeper: acknowledgement failed; reconnecting");
            return;
        }
    }
}

fn session_ended(e: &ClientError) {
    tracing::warn!(error = %e, "keeper session ended; forwarding on the last tables and reconnecting");
}

fn drain_links(links: &mpsc::Receiver<LinkReport>, ports: &mut [PortState]) {
    while let Ok(r) = links.try_recv() {
        if let Some(p) = ports.iter_mut().find(|p| p.name == r.port) {
            p.up = r.up;
        }
    }
}

fn sleep_unless_stopped(stop: &AtomicBool, d: Duration) {
    let end = std::time::Instant::now() + d;
    while !stop.load(Ordering::Relaxed) && std::time::Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
    }
}
