//! The forwarder process: set DPDK up from the config, launch one pinned worker per
//! lcore, run the [`Control`] thread on the main lcore until asked to stop (or until a
//! thread panics, see [`crate::fatal`]), then stop the workers and release the ports.

use std::collections::HashMap;
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{anyhow, Context, Result};

use crate::capture::{Capture, Tap};
use crate::config::Config;
use crate::control::{Control, ControlHooks};
use crate::dpdk::{Eal, MbufQueue, Mempool, Port, PortConf, TxBuffer, BURST};
use crate::metrics::{self, MetricsSource, WorkerStats, WorkerView};
use crate::packet::MacAddr;
use crate::tables::counted::circuits_of;
use crate::tables::{
    CircuitSlots, NeighbourCache, PortId, PortInfo, Role, Snapshot, SnapshotHandle,
};
use crate::wg::WgEngine;
use crate::worker::Worker;

/// The EAL command line for `cfg`: lcores, one `--vdev`/`-a` per port, and the
/// config's own arguments.
pub fn eal_args(cfg: &Config) -> Vec<String> {
    let mut lcores = vec![cfg.eal.main_lcore];
    lcores.extend(&cfg.workers.lcores);
    let mut args = vec!["tarp-forwarder".to_string()];
    // `--lcores` in the config's arguments maps lcores to CPUs itself (e.g. two workers
    // and the control thread on a two-CPU machine: `--lcores=0@0,1@1,2@0`).
    if !cfg.eal.args.iter().any(|a| a.starts_with("--lcores")) {
        args.push("-l".to_string());
        args.push(
            lcores
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(","),
        );
    }
    args.extend(["--main-lcore".to_string(), cfg.eal.main_lcore.to_string()]);
    if !cfg
        .eal
        .args
        .iter()
        .any(|a| a.starts_with("--file-prefix") || a == "--in-memory")
    {
        // Several forwarders on one machine must not share DPDK's runtime files
        // (its lock files and sockets live under /var/run/dpdk/<prefix>).
        args.push(format!("--file-prefix=tarp-{}", cfg.node_id));
    }
    args.extend(cfg.eal.args.iter().cloned());
    let mut any_pci = false;
    for p in &cfg.ports {
        if p.is_pci() {
            any_pci = true;
            args.push("-a".to_string());
        } else {
            args.push("--vdev".to_string());
        }
        args.push(p.device.clone());
    }
    if !any_pci && !cfg.eal.args.iter().any(|a| a == "--no-pci") {
        args.push("--no-pci".to_string());
    }
    args
}

/// Port infos for building snapshots without DPDK (`--check`): MACs are placeholders.
pub fn offline_ports(cfg: &Config) -> Vec<PortInfo> {
    cfg.ports
        .iter()
        .enumerate()
        .map(|(i, p)| p.info(p.mac.unwrap_or(MacAddr([0x02, 0, 0, 0, 0, i as u8]))))
        .collect()
}

/// The static neighbours of a config.
pub fn static_neighbours(cfg: &Config) -> NeighbourCache {
    let mut n = NeighbourCache::new();
    for (i, p) in cfg.ports.iter().enumerate() {
        for nb in &p.neighbours {
            n.insert((i as PortId, nb.address), nb.mac);
        }
    }
    n
}

fn role_name(r: Role) -> &'static str {
    match r {
        Role::Aggregator => "aggregator",
        Role::Demux => "demux",
        Role::Remux => "remux",
    }
}

/// Runs the forwarder until `stop` is set. `hooks` connect a table source (the keeper).
pub fn run(cfg: &Config, stop: Arc<AtomicBool>, hooks: Option<ControlHooks>) -> Result<()> {
    let eal = Eal::init(&eal_args(cfg)[1..]).context("EAL init")?;
    let workers = cfg.workers.lcores.len() as u16;
    let available = eal.worker_lcores();
    for l in &cfg.workers.lcores {
        if !available.contains(l) {
            return Err(anyhow!(
                "workers.lcores: lcore {l} is not available to DPDK"
            ));
        }
    }

    // One mempool per NUMA socket the ports sit on, sized for every queue plus bursts in
    // flight and the slow-path ring.
    let per_port = cfg
        .ports
        .iter()
        .map(|p| (p.rx_desc as u32 + p.tx_desc as u32) * (workers as u32 + 1))
        .sum::<u32>();
    let n_mbufs = (per_port + 4096)
        .max(cfg.mempool.buffers.unwrap_or(0))
        .next_power_of_two()
        - 1;
    // A frame must fit one mbuf: the largest MTU, its Ethernet header and a VLAN tag.
    let max_mtu = cfg
        .ports
        .iter()
        .map(|p| p.mtu)
        .max()
        .unwrap_or(PortInfo::DEFAULT_MTU);
    let data_room = cfg
        .mempool
        .data_room
        .unwrap_or(Mempool::DEFAULT_DATA_ROOM.max(max_mtu + 18));
    let mut pools: HashMap<i32, Mempool> = HashMap::new();
    let mut ports = Vec::with_capacity(cfg.ports.len());
    for (i, pc) in cfg.ports.iter().enumerate() {
        let id = Port::find(pc.device_name())
            .with_context(|| format!("ports[{i}].device {:?}", pc.device))?;
        let socket = Port::socket_of(id).max(0);
        if let std::collections::hash_map::Entry::Vacant(e) = pools.entry(socket) {
            e.insert(
                Mempool::for_socket(n_mbufs, 256, socket as u32, data_room).context("mempool")?,
            );
        }
        let conf = PortConf {
            rx_queues: workers,
            tx_queues: workers,
            rx_desc: pc.rx_desc,
            tx_desc: pc.tx_desc,
            // 1500 is every device's default; only other MTUs are asked for.
            mtu: (pc.mtu != PortInfo::DEFAULT_MTU).then_some(pc.mtu),
            promiscuous: true,
            // Checksums are fixed incrementally in software; nothing marks packets.
            tx_csum_offload: false,
        };
        let port = Port::configure(id, &conf, &pools[&socket])
            .with_context(|| format!("ports[{i}] {:?}", pc.name))?;
        ports.push(port);
    }
    let infos: Vec<PortInfo> = cfg
        .ports
        .iter()
        .zip(&ports)
        .map(|(pc, port)| {
            Ok(pc.info(match pc.mac {
                Some(m) => m,
                None => port.mac_addr()?,
            }))
        })
        .collect::<Result<_, crate::dpdk::DpdkError>>()?;
    for (p, info) in ports.iter().zip(&infos) {
        tracing::info!(port = %info.name, role = role_name(info.role), mac = %info.mac, rss = p.rss_hf() != 0, "port up");
    }

    let neighbours = static_neighbours(cfg);
    let mut snapshot = Snapshot::build(&cfg.rules, &infos, 0, &neighbours).context("rules")?;
    // Circuits counted one by one (`circuit_metrics`), in slots every worker has.
    let mut circuit_slots = CircuitSlots::new(cfg.circuit_metrics);
    snapshot.counted = circuit_slots.assign(&circuits_of(&snapshot)).0;
    let snapshots = Arc::new(SnapshotHandle::new(snapshot));
    let slow = Arc::new(MbufQueue::new(4096));
    let worker_stats: Vec<Arc<WorkerStats>> = (0..workers)
        .map(|_| Arc::new(WorkerStats::new(ports.len())))
        .collect();

    // Frames from the control thread go out through the first worker's TX queues.
    let control_tx: Vec<Arc<MbufQueue>> = ports
        .iter()
        .map(|_| Arc::new(MbufQueue::new(1024)))
        .collect();
    let worker_stop = Arc::new(AtomicBool::new(false));
    let wg_key = cfg
        .wireguard
        .as_ref()
        .map(|w| w.private_key())
        .transpose()
        .context("wireguard")?;
    if let Some(k) = &wg_key {
        let public = tarp_api::rules::WgKey(WgEngine::new(*k).public_key());
        tracing::info!(%public, "WireGuard: this forwarder's public key");
    }
    let mut views = Vec::with_capacity(cfg.workers.lcores.len());
    // The packet recorder: off until an operator asks (GET /capture).
    let capture = Arc::new(Capture::default());
    for (w, &lcore) in cfg.workers.lcores.iter().enumerate() {
        let (latency, merger) = metrics::pair();
        let circuits = metrics::circuit_counters(circuit_slots.len());
        views.push(WorkerView {
            lcore,
            stats: worker_stats[w].clone(),
            latency: merger,
            circuits: circuits.clone(),
        });
        let rx = ports
            .iter()
            .enumerate()
            .map(|(pid, p)| Ok((pid as PortId, p.rx_queue(w as u16)?)))
            .collect::<Result<Vec<_>, crate::dpdk::DpdkError>>()?;
        let tx = ports
            .iter()
            .map(|p| Ok(TxBuffer::new(p.tx_queue(w as u16)?)))
            .collect::<Result<Vec<_>, crate::dpdk::DpdkError>>()?;
        let worker = Worker {
            rx,
            tx,
            pool: pools[&ports[0].socket().max(0)],
            snapshots: snapshots.clone(),
            slow_path: slow.clone(),
            control_tx: if w == 0 {
                control_tx.clone()
            } else {
                Vec::new()
            },
            stats: worker_stats[w].clone(),
            stop: worker_stop.clone(),
            idle: cfg.workers.idle,
            wg: match (&wg_key, w) {
                (Some(k), 0) => Some(WgEngine::new(*k)),
                _ => None,
            },
            latency,
            capture: capture.clone(),
            tap: Tap::new(BURST),
            circuits,
        };
        eal.launch_on_lcore(lcore, move || worker.run())
            .with_context(|| format!("launch worker on lcore {lcore}"))?;
    }
    tracing::info!(workers, lcores = ?cfg.workers.lcores, "workers running");

    let source = Arc::new(MetricsSource::new(
        cfg.node_id.clone(),
        infos
            .iter()
            .map(|p| (p.name.clone(), role_name(p.role)))
            .collect(),
        views,
        snapshots.clone(),
        hooks.is_some(),
    ));
    source.count_circuits(circuit_slots);
    let metrics_thread = match cfg.metrics {
        Some(addr) => {
            let listener =
                TcpListener::bind(addr).with_context(|| format!("metrics: bind {addr}"))?;
            tracing::info!(%addr, "metrics endpoint");
            let (s, st, c) = (source.clone(), stop.clone(), capture.clone());
            let serve = move || {
                if let Err(e) = metrics::serve(listener, s, c, st) {
                    tracing::error!(error = %e, "metrics endpoint stopped");
                }
            };
            Some(
                std::thread::Builder::new()
                    .name("metrics".into())
                    .spawn(serve)?,
            )
        }
        None => None,
    };

    // The control thread: this one, on the main lcore.
    let control = Control {
        cfg,
        ports: &ports,
        infos: &infos,
        pool: &pools[&ports[0].socket().max(0)],
        snapshots,
        slow: slow.clone(),
        control_tx,
        metrics: source,
        hooks,
        neighbours,
    };
    let result = control.run(&stop);

    tracing::info!("stopping");
    stop.store(true, Ordering::Relaxed);
    worker_stop.store(true, Ordering::Relaxed);
    // After a panic, the dead worker's lcore reports it here: the ports are released
    // all the same, and the panic is what the caller hears about.
    let waited = eal.wait_all().context("workers");
    while slow.pop().is_some() {}
    if let Some(t) = metrics_thread {
        let _ = t.join();
    }
    for p in ports {
        if let Err(e) = p.close() {
            tracing::warn!(error = %e, "closing port");
        }
    }
    result.and(waited)
}
