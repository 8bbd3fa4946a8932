//! The forwarder process: set DPDK up from the config, launch one pinned worker per
//! lcore, and run the control thread (slow path, neighbour resolution, device counters,
//! table updates) on the main lcore until asked to stop.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{IpAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};

use crate::config::Config;
use crate::dpdk::{Eal, Mbuf, MbufQueue, Mempool, Port, PortConf, TxBuffer};
use crate::packet::MacAddr;
use crate::slowpath;
use crate::stats::{self, DeviceCounters, Scrape, WorkerStats};
use crate::tables::{NeighbourCache, PortId, PortInfo, Role, Rules, Snapshot, SnapshotHandle};
use crate::worker::Worker;

/// A new table set for the control thread to validate, build and publish.
pub struct TableUpdate {
    /// Generation the rules belong to.
    pub generation: u64,
    /// The rules.
    pub rules: Rules,
    /// Told the outcome: `Ok(generation)` once published, `Err(reason)` if refused (the
    /// old snapshot keeps forwarding).
    pub done: mpsc::Sender<std::result::Result<u64, String>>,
}

/// What the control thread reports to whoever drives table updates (the keeper link).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkReport {
    /// Port name.
    pub port: String,
    /// Link up.
    pub up: bool,
}

/// Hooks for a table source such as the keeper: updates in, link reports out.
pub struct ControlHooks {
    /// Table updates to apply.
    pub updates: mpsc::Receiver<TableUpdate>,
    /// Link state changes (sent once at start for every port, then on each change).
    pub links: mpsc::Sender<LinkReport>,
}

/// The EAL command line for `cfg`: lcores, one `--vdev`/`-a` per port, and the
/// config's own arguments.
pub fn eal_args(cfg: &Config) -> Vec<String> {
    let mut lcores = vec![cfg.eal.main_lcore];
    lcores.extend(&cfg.workers.lcores);
    let mut args = vec![
        "tarp-forwarder".to_string(),
        "-l".to_string(),
        lcores
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(","),
        "--main-lcore".to_string(),
        cfg.eal.main_lcore.to_string(),
    ];
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
        .map(|(i, p)| PortInfo {
            name: p.name.clone(),
            role: p.role,
            mac: p.mac.unwrap_or(MacAddr([0x02, 0, 0, 0, 0, i as u8])),
            addrs: p.addresses.clone(),
        })
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

/// Shared with the metrics endpoint.
struct MetricsSource {
    node: String,
    ports: Vec<(String, &'static str)>,
    workers: Vec<Arc<WorkerStats>>,
    devices: Mutex<Vec<DeviceCounters>>,
    snapshots: Arc<SnapshotHandle>,
}

impl MetricsSource {
    fn scrape(&self) -> Scrape {
        let workers: Vec<&WorkerStats> = self.workers.iter().map(|w| &**w).collect();
        let snap = self.snapshots.load();
        let resolved = snap.next_hops.iter().filter(|n| n.mac().is_some()).count();
        let polls = workers.iter().fold((0, 0), |(e, b), w| {
            (
                e + w.empty_polls.load(Ordering::Relaxed),
                b + w.busy_polls.load(Ordering::Relaxed),
            )
        });
        Scrape {
            node: self.node.clone(),
            ports: self.ports.clone(),
            totals: stats::totals(&workers, self.ports.len()),
            devices: self.devices.lock().map(|d| d.clone()).unwrap_or_default(),
            generation: snap.generation(),
            entries: snap.entries(),
            polls,
            neighbours: (resolved, snap.next_hops.len()),
        }
    }
}

/// Serves `GET /metrics` (any path, in fact) in Prometheus text format.
fn serve_metrics(listener: TcpListener, source: Arc<MetricsSource>, stop: Arc<AtomicBool>) {
    listener.set_nonblocking(true).ok();
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((mut conn, _)) => {
                conn.set_nonblocking(false).ok();
                conn.set_read_timeout(Some(Duration::from_secs(2))).ok();
                let mut req = [0u8; 1024];
                let _ = conn.read(&mut req);
                let body = stats::render(&source.scrape());
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = conn
                    .write_all(head.as_bytes())
                    .and_then(|_| conn.write_all(body.as_bytes()));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
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
    let n_mbufs = (per_port + 4096).next_power_of_two() - 1;
    let mut pools: HashMap<i32, Mempool> = HashMap::new();
    let mut ports = Vec::with_capacity(cfg.ports.len());
    for (i, pc) in cfg.ports.iter().enumerate() {
        let id = Port::find(pc.device_name())
            .with_context(|| format!("ports[{i}].device {:?}", pc.device))?;
        let socket = Port::socket_of(id).max(0);
        if let std::collections::hash_map::Entry::Vacant(e) = pools.entry(socket) {
            e.insert(Mempool::for_socket(n_mbufs, 256, socket as u32).context("mempool")?);
        }
        let conf = PortConf {
            rx_queues: workers,
            tx_queues: workers,
            rx_desc: pc.rx_desc,
            tx_desc: pc.tx_desc,
            mtu: None,
            promiscuous: true,
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
            Ok(PortInfo {
                name: pc.name.clone(),
                role: pc.role,
                mac: match pc.mac {
                    Some(m) => m,
                    None => port.mac_addr()?,
                },
                addrs: pc.addresses.clone(),
            })
        })
        .collect::<Result<_, crate::dpdk::DpdkError>>()?;
    for (p, info) in ports.iter().zip(&infos) {
        tracing::info!(port = %info.name, role = role_name(info.role), mac = %info.mac, rss = p.rss_hf() != 0, "port up");
    }

    let mut neighbours = static_neighbours(cfg);
    let snapshot = Snapshot::build(&cfg.rules, &infos, 0, &neighbours).context("rules")?;
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
    for (w, &lcore) in cfg.workers.lcores.iter().enumerate() {
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
        };
        eal.launch_on_lcore(lcore, move || worker.run())
            .with_context(|| format!("launch worker on lcore {lcore}"))?;
    }
    tracing::info!(workers, lcores = ?cfg.workers.lcores, "workers running");

    let source = Arc::new(MetricsSource {
        node: cfg.node_id.clone(),
        ports: infos
            .iter()
            .map(|p| (p.name.clone(), role_name(p.role)))
            .collect(),
        workers: worker_stats.clone(),
        devices: Mutex::new(vec![DeviceCounters::default(); ports.len()]),
        snapshots: snapshots.clone(),
    });
    let metrics_thread = match cfg.metrics {
        Some(addr) => {
            let listener =
                TcpListener::bind(addr).with_context(|| format!("metrics: bind {addr}"))?;
            tracing::info!(%addr, "metrics endpoint");
            let (s, st) = (source.clone(), stop.clone());
            Some(std::thread::spawn(move || serve_metrics(listener, s, st)))
        }
        None => None,
    };

    // The control thread: this one, on the main lcore.
    let pool = &pools[&ports[0].socket().max(0)];
    let mut last_solicit = Instant::now() - Duration::from_secs(10);
    let mut last_devices = Instant::now() - Duration::from_secs(10);
    let mut links: Vec<Option<bool>> = vec![None; ports.len()];
    let dpdk_to_port: HashMap<u16, PortId> = ports
        .iter()
        .enumerate()
        .map(|(i, p)| (p.id(), i as PortId))
        .collect();

    while !stop.load(Ordering::Relaxed) {
        let mut busy = false;
        // Slow path.
        for _ in 0..256 {
            let Some(m) = slow.pop() else { break };
            busy = true;
            let Some(&port) = dpdk_to_port.get(&m.port()) else {
                continue;
            };
            let snap = snapshots.load();
            let out = slowpath::handle(&snap, port, m.data());
            drop(m);
            if let Some((ip, mac)) = out.learned {
                let known = neighbours.get(&(port, ip)) == Some(&mac);
                // Learn only addresses the tables use, so that a scan cannot fill memory.
                if snap.learn_neighbour(port, ip, mac) > 0 && !known {
                    tracing::info!(port = %infos[port as usize].name, %ip, %mac, "neighbour learned");
                    neighbours.insert((port, ip), mac);
                }
            }
            if let Some(reply) = out.reply {
                send(pool, &control_tx[port as usize], &reply);
            }
        }
        // Table updates.
        if let Some(h) = &hooks {
            while let Ok(u) = h.updates.try_recv() {
                busy = true;
                match Snapshot::build(&u.rules, &infos, u.generation, &neighbours) {
                    Ok(s) => {
                        let entries = s.entries();
                        snapshots.publish(s);
                        tracing::info!(generation = u.generation, entries, "tables swapped");
                        let _ = u.done.send(Ok(u.generation));
                    }
                    Err(e) => {
                        tracing::warn!(generation = u.generation, error = %e, "tables refused");
                        let _ = u.done.send(Err(e.to_string()));
                    }
                }
                last_solicit = Instant::now() - Duration::from_secs(10);
            }
        }
        // Resolve next hops nobody has told us about yet.
        if last_solicit.elapsed() >= Duration::from_millis(500) {
            last_solicit = Instant::now();
            let snap = snapshots.load();
            for nh in snap.next_hops.iter().filter(|n| n.mac().is_none()) {
                let p = &infos[nh.port as usize];
                let src = source_for(&p.addrs, nh.ip.is_ipv4());
                if let Some(frame) = src.and_then(|s| slowpath::solicit(p.mac, s, nh.ip)) {
                    send(pool, &control_tx[nh.port as usize], &frame);
                }
            }
        }
        // Link state and device counters, ten times a second: a line that goes down is
        // reported to the keeper within ~100 ms.
        if last_devices.elapsed() >= LINK_POLL {
            last_devices = Instant::now();
            let mut devs = Vec::with_capacity(ports.len());
            for (i, p) in ports.iter().enumerate() {
                let s = p.stats().unwrap_or_default();
                let up = p.link().map(|l| l.up).unwrap_or(false)
                    && kernel_carrier(&cfg.ports[i].device).unwrap_or(true);
                if links[i] != Some(up) {
                    links[i] = Some(up);
                    tracing::info!(port = %infos[i].name, up, "link");
                    if let Some(h) = &hooks {
                        let _ = h.links.send(LinkReport {
                            port: infos[i].name.clone(),
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
            if let Ok(mut d) = source.devices.lock() {
                *d = devs;
            }
        }
        if !busy {
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    tracing::info!("stopping");
    worker_stop.store(true, Ordering::Relaxed);
    eal.wait_all().context("workers")?;
    drop(control_tx);
    while slow.pop().is_some() {}
    if let Some(t) = metrics_thread {
        let _ = t.join();
    }
    for p in ports {
        if let Err(e) = p.close() {
            tracing::warn!(error = %e, "closing port");
        }
    }
    Ok(())
}

/// How often the control thread reads link state and device counters.
const LINK_POLL: Duration = Duration::from_millis(100);

/// Queues one frame from the control thread for the first worker to send.
fn send(pool: &Mempool, queue: &MbufQueue, frame: &[u8]) {
    if let Some(m) = Mbuf::from_bytes(pool, frame) {
        // A full queue frees the frame: ARP and ND are retried anyway.
        let _ = queue.push(m);
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

/// The first address of a family on a port, for sourcing solicitations.
fn source_for(addrs: &[IpAddr], v4: bool) -> Option<IpAddr> {
    addrs.iter().find(|a| a.is_ipv4() == v4).copied()
}
