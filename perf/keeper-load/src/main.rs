//! `tarp-keeper-load`: a real `tarp-keeper` process under the load of a fleet.
//!
//! 1. Writes an inventory of `--pops` POPs x 4 aggregators x 10 lines (IPv6 capture
//!    addresses from 2001:db8::/32, so that there are enough), one DC node (demux and
//!    remux) and 64 app hosts, and fills its store with `--circuits` active port-mode
//!    circuits (placed by the keeper's own state machine).
//! 2. Starts `tarp-keeper` on it: the time until it serves is the restart time with
//!    that many circuits in its store.
//! 3. Connects a simulated forwarder for every node (raw gRPC streams that count the
//!    bytes they receive and acknowledge every generation) and waits for all of them to
//!    hold their first full set.
//! 4. Drives `--activations` activations from `--clients` concurrent applications, then
//!    releases them: latency per call (hdrhistogram), calls per second, bytes sent per
//!    activation to the DC node and the aggregators, the keeper's CPU and resident memory.
//! 5. Connects a fresh DC forwarder session and builds the forwarder's snapshot from
//!    what it receives: the time for a freshly started forwarder to hold its table.
//!
//! `--tls` runs it all over TLS with client certificates (made in the work folder).
//!
//! Prints a Markdown table and, with `--json FILE`, writes the figures. Only test
//! ranges appear in the inventory; nothing is sent anywhere but the keeper's Unix
//! socket.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use hdrhistogram::Histogram;
use prost::Message;
use tarp_api::client::{
    ActivateRequest, AppClient, CircuitState, ForwarderSession, ListFilter, Mode, PortRange,
    Protocol, ReturnPath, Role, SessionOptions,
};
use tarp_api::endpoint::{ClientTls, Dial};
use tarp_api::grpc::v1;
use tokio_stream::wrappers::ReceiverStream;

#[derive(Debug, Parser)]
#[command(about = "Load a real tarp-keeper with simulated forwarders and applications")]
struct Args {
    /// Active circuits in the store before measuring.
    #[arg(long, default_value_t = 1000)]
    circuits: usize,
    /// Activations (then releases) to measure.
    #[arg(long, default_value_t = 2000)]
    activations: usize,
    /// Concurrent applications.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// POPs (4 aggregators each, 10 lines each).
    #[arg(long, default_value_t = 100)]
    pops: usize,
    /// The keeper binary.
    #[arg(long, default_value = "target/release/tarp-keeper")]
    keeper: PathBuf,
    /// Work folder (config, database, socket); emptied first.
    #[arg(long, default_value = "/tmp/tarp-keeper-load")]
    dir: PathBuf,
    /// Write the figures as JSON here too.
    #[arg(long)]
    json: Option<PathBuf>,
    /// TLS with client certificates (made in DIR/certs) instead of plaintext: every
    /// client and simulated forwarder dials as an operator.
    #[arg(long)]
    tls: bool,
}

const APP_HOSTS: usize = 64;
const LINES: usize = 10;
const AGGS_PER_POP: usize = 4;
const CAPTURES_PER_LINE: usize = 4;
const REGIONS: usize = 10;

fn agg_name(pop: usize, a: usize) -> String {
    format!("agg-{pop}-{a}")
}

fn app_host(i: usize) -> String {
    format!("2001:db8:b::{:x}", i + 1)
}

/// The inventory and settings.
fn config(args: &Args) -> String {
    let mut t = String::new();
    t += &format!(
        "[keeper]\nlisten = \"unix:{}\"\ndb = \"keeper.redb\"\nack_timeout_ms = 60000\nheartbeat_interval_ms = 1000\nheartbeat_timeout_ms = 120000\nmax_port_range = 256\n",
        args.dir.join("keeper.sock").display()
    );
    t += if args.tls {
        "[keeper.tls]\ncert = \"certs/keeper.pem\"\nkey = \"certs/keeper.key\"\nclient_ca = \"certs/ca.pem\"\n\n"
    } else {
        "plaintext_identity = \"operator/load\"\n\n"
    };
    for r in 0..REGIONS {
        t += &format!("[[regions]]\nname = \"r{r}\"\n\n");
    }
    for p in 0..args.pops {
        t += &format!(
            "[[pops]]\nname = \"p{p}\"\nregion = \"r{}\"\n\n",
            p % REGIONS
        );
    }
    let mut k = 0usize;
    for p in 0..args.pops {
        for a in 0..AGGS_PER_POP {
            k += 1;
            t += &format!(
                "[[aggregators]]\nnode = \"{}\"\npop = \"p{p}\"\ntunnel = {{ local = \"198.18.{}.{}\", remote = \"192.0.2.100\", vni = {}, demux = \"dc-1\" }}\nlines = [\n",
                agg_name(p, a),
                128 + k / 256,
                k % 256,
                100 + k
            );
            for l in 0..LINES {
                let base = (k * LINES + l) * CAPTURES_PER_LINE;
                let caps: Vec<String> = (0..CAPTURES_PER_LINE)
                    .map(|c| format!("\"2001:db8:c::{:x}\"", base + c + 1))
                    .collect();
                t += &format!(
                    "  {{ name = \"line{l}\", captures = [{}] }},\n",
                    caps.join(", ")
                );
            }
            t += "]\n\n";
        }
    }
    t += "[[demuxes]]\nnode = \"dc-1\"\naliases = [\"2001:db8:a::/112\"]\n\n";
    t += "[[remuxes]]\nnode = \"dc-1\"\n\n";
    for h in 0..APP_HOSTS {
        t += &format!(
            "[[app_hosts]]\naddress = \"{}\"\nremux = \"dc-1\"\n\n",
            app_host(h)
        );
    }
    t += "[[nodes]]\nid = \"dc-1\"\nroutes = [{ prefix = \"2001:db8:b::/64\", port = \"apps\" }, { prefix = \"2001:db8::/32\", port = \"internet\", via = \"2001:db8:ffff::1\" }]\n";
    t
}

/// The `i`-th circuit's request: port mode, app host and protocol spread so that every
/// request is placeable, ports `base + ...`.
fn request(i: usize, base: u16) -> ActivateRequest {
    let per_port = APP_HOSTS * 2;
    ActivateRequest {
        region: Some(format!("r{}", (i / 7) % REGIONS)),
        pop: None,
        protocol: if (i / APP_HOSTS).is_multiple_of(2) {
            Protocol::Udp
        } else {
            Protocol::Tcp
        },
        ports: PortRange::single(base + (i / per_port) as u16),
        mode: Mode::Port,
        app_host: app_host(i % APP_HOSTS).parse().unwrap(),
        idempotency_key: None,
        capture: None,
        return_path: ReturnPath::Asymmetric,
        lease_ms: 0,
        owner: String::new(),
    }
}

/// Fills the store with `n` active circuits, placed as the keeper places them.
fn prefill(dir: &Path, n: usize) -> anyhow::Result<()> {
    let cfg = keeper::inventory::Config::load(&dir.join("keeper.toml"))?;
    let mut circuits = keeper::circuits::Circuits::new();
    for i in 0..n {
        let req = request(i, 1);
        match circuits.activate(&cfg.inventory, 256, &req)? {
            keeper::circuits::Activation::Started(id) => circuits.confirm(id)?,
            other => bail!("unexpected {other:?}"),
        }
    }
    let store = keeper::store::Store::open(&cfg.settings.db)?;
    let all: Vec<_> = circuits.iter().collect();
    store.commit(&keeper::store::Batch {
        put_circuits: all,
        next_circuit: circuits.next_id(),
        ..Default::default()
    })?;
    Ok(())
}

/// What a simulated forwarder received.
#[derive(Default)]
struct Received {
    bytes: AtomicU64,
    messages: AtomicU64,
    acked: AtomicU64,
}

/// A simulated forwarder: hello, then count and acknowledge every generation; reports
/// the link changes that come in on `links`.
async fn forwarder(
    endpoint: Dial,
    node: String,
    roles: Vec<v1::Role>,
    ports: Vec<String>,
    got: Arc<Received>,
    mut links: tokio::sync::mpsc::Receiver<(String, bool)>,
) -> anyhow::Result<()> {
    let channel = tarp_api::endpoint::connect(&endpoint, Duration::from_secs(10))
        .await
        .map_err(|e| match e {
            tarp_api::endpoint::EndpointError::Invalid(why) => anyhow::anyhow!("{why}"),
            tarp_api::endpoint::EndpointError::Connect(e) => anyhow::anyhow!("{e}"),
        })?;
    let mut client =
        v1::forwarders_client::ForwardersClient::new(channel).max_decoding_message_size(8 << 20);
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tx.send(v1::ForwarderMessage {
        msg: Some(v1::forwarder_message::Msg::Hello(v1::Hello {
            node_id: node,
            roles: roles.into_iter().map(|r| r as i32).collect(),
            ports: ports
                .into_iter()
                .map(|name| v1::PortState { name, up: true })
                .collect(),
            last_generation: 0,
            wireguard_public_key: Vec::new(),
        })),
    })
    .await?;
    let mut inbound = client
        .subscribe(ReceiverStream::new(rx))
        .await?
        .into_inner();
    let reports = tx.clone();
    tokio::spawn(async move {
        while let Some((port, up)) = links.recv().await {
            let m = v1::ForwarderMessage {
                msg: Some(v1::forwarder_message::Msg::Link(v1::LinkState { port, up })),
            };
            if reports.send(m).await.is_err() {
                break;
            }
        }
    });
    let beats = tx.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            let beat = v1::ForwarderMessage {
                msg: Some(v1::forwarder_message::Msg::Heartbeat(v1::Heartbeat {})),
            };
            if beats.send(beat).await.is_err() {
                break;
            }
        }
    });
    while let Some(m) = inbound.message().await? {
        got.bytes
            .fetch_add(m.encoded_len() as u64, Ordering::Relaxed);
        if let Some(v1::keeper_message::Msg::Update(u)) = m.msg {
            got.messages.fetch_add(1, Ordering::Relaxed);
            if !u.more {
                tx.send(v1::ForwarderMessage {
                    msg: Some(v1::forwarder_message::Msg::Ack(v1::Ack {
                        generation: u.generation,
                    })),
                })
                .await?;
                got.acked.store(u.generation, Ordering::Relaxed);
            }
        }
    }
    Ok(())
}

/// CPU seconds (user + system) and resident bytes of a process.
fn usage(pid: u32) -> (f64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after ") ".
    let rest = stat.rsplit_once(") ").map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    let cpu = (ticks(11) + ticks(12)) / 100.0;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<u64>().ok())
        .unwrap_or(0);
    (cpu, rss * 1024)
}

/// Runs `n` calls of `call` from `clients` tasks; returns the latencies (µs) and the
/// wall time.
async fn drive<F, Fut>(
    endpoint: &Dial,
    n: usize,
    clients: usize,
    call: F,
) -> anyhow::Result<(Histogram<u64>, Duration, Vec<u64>)>
where
    F: Fn(AppClient, usize) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = anyhow::Result<u64>> + Send,
{
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let app = AppClient::connect(endpoint).await?;
        let call = call.clone();
        tasks.push(tokio::spawn(async move {
            let mut h = Histogram::<u64>::new(3).expect("3 significant figures");
            let mut ids = Vec::new();
            for i in (c..n).step_by(clients) {
                let t = Instant::now();
                ids.push(call(app.clone(), i).await?);
                h.record(t.elapsed().as_micros() as u64)?;
            }
            anyhow::Ok((h, ids))
        }));
    }
    let mut all = Histogram::<u64>::new(3)?;
    let mut ids = Vec::new();
    for t in tasks {
        let (h, i) = t.await??;
        all.add(h)?;
        ids.extend(i);
    }
    Ok((all, started.elapsed(), ids))
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if !args.keeper.exists() {
        bail!(
            "{}: no keeper binary (cargo build --release -p tarp-keeper)",
            args.keeper.display()
        );
    }
    let _ = std::fs::remove_dir_all(&args.dir);
    std::fs::create_dir_all(&args.dir)?;
    std::fs::write(args.dir.join("keeper.toml"), config(&args))?;
    let t = Instant::now();
    prefill(&args.dir, args.circuits).context("filling the store")?;
    eprintln!(
        "store filled with {} circuits in {:.1?}",
        args.circuits,
        t.elapsed()
    );

    // Start the keeper: how long until it serves.
    let socket = args.dir.join("keeper.sock");
    let endpoint = format!("unix:{}", socket.display());
    let endpoint = if args.tls {
        let certs = args.dir.join("certs");
        keeper::certs::init_ca(&certs, "load CA")?;
        keeper::certs::issue_into(
            &certs,
            &keeper::certs::Subject::Keeper {
                dns: vec![keeper::certs::KEEPER_SERVER_NAME.into()],
                ips: vec![],
            },
        )?;
        let operator =
            keeper::auth::Identity::parse("operator/load").map_err(anyhow::Error::msg)?;
        let (cert, key) =
            keeper::certs::issue_into(&certs, &keeper::certs::Subject::Client(operator))?;
        let tls = ClientTls::from_files(&certs.join("ca.pem"), Some(&cert), Some(&key), None)
            .map_err(anyhow::Error::msg)?;
        Dial::tls(endpoint, tls)
    } else {
        Dial::plain(endpoint)
    };
    let t = Instant::now();
    let mut child = tokio::process::Command::new(&args.keeper)
        .arg("--config")
        .arg(args.dir.join("keeper.toml"))
        .stderr(std::fs::File::create(args.dir.join("keeper.log"))?)
        .kill_on_drop(true)
        .spawn()
        .context("starting tarp-keeper")?;
    let pid = child.id().context("keeper pid")?;
    loop {
        // Serving once it answers a call (the socket accepts connections earlier).
        if let Ok(mut app) = AppClient::connect(&endpoint).await {
            match app.get(1).await {
                Ok(_) => break,
                Err(e) if e.code().is_some() => break,
                Err(_) => {}
            }
        }
        if let Some(status) = child.try_wait()? {
            bail!(
                "tarp-keeper exited ({status}); see {}",
                args.dir.join("keeper.log").display()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let restart = t.elapsed();
    eprintln!("keeper serving after {restart:.1?}");

    // Simulated forwarders.
    let mut received: BTreeMap<String, Arc<Received>> = BTreeMap::new();
    let t = Instant::now();
    let mut nodes = vec![(
        "dc-1".to_string(),
        vec![v1::Role::Demux, v1::Role::Remux],
        vec!["apps".to_string(), "internet".to_string()],
    )];
    for p in 0..args.pops {
        for a in 0..AGGS_PER_POP {
            let mut ports: Vec<String> = (0..LINES).map(|l| format!("line{l}")).collect();
            ports.push("uplink".into());
            nodes.push((agg_name(p, a), vec![v1::Role::Aggregator], ports));
        }
    }
    let stopping = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut link_of = BTreeMap::new();
    for (node, roles, ports) in nodes {
        let got = Arc::new(Received::default());
        received.insert(node.clone(), got.clone());
        let endpoint = endpoint.clone();
        let stopping = stopping.clone();
        let (link_tx, links) = tokio::sync::mpsc::channel(4);
        link_of.insert(node.clone(), link_tx);
        tokio::spawn(async move {
            let result = forwarder(endpoint, node.clone(), roles, ports, got, links).await;
            if let (Err(e), false) = (result, stopping.load(Ordering::Relaxed)) {
                eprintln!("forwarder {node}: {e:#}");
            }
        });
    }
    while received
        .values()
        .any(|r| r.acked.load(Ordering::Relaxed) == 0)
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let full_sets = t.elapsed();
    let dc_full = received["dc-1"].bytes.load(Ordering::Relaxed);
    eprintln!(
        "{} forwarders hold their full sets after {full_sets:.1?} (dc-1: {:.1} MB)",
        received.len(),
        dc_full as f64 / 1e6
    );

    // Activations, then releases.
    let bytes = |r: &BTreeMap<String, Arc<Received>>| -> (u64, u64) {
        let dc = r["dc-1"].bytes.load(Ordering::Relaxed);
        let aggs = r
            .iter()
            .filter(|(n, _)| *n != "dc-1")
            .map(|(_, g)| g.bytes.load(Ordering::Relaxed))
            .sum();
        (dc, aggs)
    };
    let (cpu0, _) = usage(pid);
    let b0 = bytes(&received);
    let (act, act_wall, ids) = drive(
        &endpoint,
        args.activations,
        args.clients,
        |mut app, i| async move { Ok(app.activate(&request(i, 30_000)).await?.id) },
    )
    .await?;
    let b1 = bytes(&received);
    let (cpu1, rss) = usage(pid);
    let ids = Arc::new(ids);
    let (rel, rel_wall, _) = {
        let ids = ids.clone();
        drive(&endpoint, ids.len(), args.clients, move |mut app, i| {
            let ids = ids.clone();
            async move { Ok(app.release(ids[i]).await?.id) }
        })
        .await?
    };
    let (cpu2, rss2) = usage(pid);
    let n = args.activations as f64;

    // A bounce: the line of agg-0-0 that carries the most circuits goes down; measured
    // until no active circuit is left on it and none in its region is still activating
    // anywhere (every replacement acknowledged by every forwarder on its path).
    let agg = agg_name(0, 0);
    let mut app = AppClient::connect(&endpoint).await?;
    let listed = |app: &mut AppClient, pop: Option<&'static str>, state: CircuitState| {
        let mut app = app.clone();
        async move {
            let f = ListFilter {
                pop: pop.map(String::from),
                state: Some(state),
                ..Default::default()
            };
            anyhow::Ok(app.list(&f).await?)
        }
    };
    let active_in_pop = |app: &mut AppClient| listed(app, Some("p0"), CircuitState::Active);
    let mut per_line: BTreeMap<String, usize> = BTreeMap::new();
    for c in active_in_pop(&mut app).await? {
        if c.aggregator == agg {
            *per_line.entry(c.line).or_default() += 1;
        }
    }
    let bounce = match per_line.into_iter().max_by_key(|(_, k)| *k) {
        Some((line, on_line)) => {
            let t = Instant::now();
            link_of[&agg].send((line.clone(), false)).await?;
            loop {
                let left = active_in_pop(&mut app)
                    .await?
                    .iter()
                    .filter(|c| c.aggregator == agg && c.line == line)
                    .count();
                let activating = listed(&mut app, None, CircuitState::Activating)
                    .await?
                    .len();
                if left == 0 && activating == 0 {
                    break;
                }
                if t.elapsed() > Duration::from_secs(120) {
                    bail!("bounce of {agg}/{line}: {left} circuits still on it, {activating} activating after 120 s");
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Some((line, on_line, t.elapsed()))
        }
        None => None,
    };
    let replaced = match &bounce {
        Some((_, _, _)) => listed(&mut app, Some("p0"), CircuitState::Bounced)
            .await?
            .iter()
            .filter(|c| c.replaced_by.is_some())
            .count(),
        None => 0,
    };

    // A fresh DC forwarder (it supersedes the simulated one): its full set, then the
    // snapshot built from it.
    stopping.store(true, Ordering::Relaxed);
    let t = Instant::now();
    let options = SessionOptions {
        keeper_timeout: Some(Duration::from_secs(120)),
        ..Default::default()
    };
    let mut fresh = ForwarderSession::connect_with(
        &endpoint,
        "dc-1",
        &[Role::Demux, Role::Remux],
        &[],
        0,
        options,
    )
    .await?;
    let (generation, rules) = fresh.next_update().await?;
    let received_in = t.elapsed();
    let ports = [
        forwarder::tables::PortInfo::new(
            "internet",
            forwarder::tables::Role::Demux,
            "02:00:00:00:00:01".parse()?,
            vec!["2001:db8:ffff::2".parse()?],
        ),
        forwarder::tables::PortInfo::new(
            "apps",
            forwarder::tables::Role::Remux,
            "02:00:00:00:00:02".parse()?,
            vec!["2001:db8:b::ffff".parse()?],
        ),
    ];
    let snap = forwarder::tables::Snapshot::build(
        &rules,
        &ports,
        generation,
        &forwarder::tables::NeighbourCache::new(),
    )
    .map_err(|e| anyhow::anyhow!("snapshot: {e}"))?;
    let holding = t.elapsed();
    let entries = snap.entries();
    drop(fresh);
    let _ = child.kill().await;
    // The keeper logs every store commit that took 40 ms or more (an fsync that
    // stalled): the steps waiting on it, up to one per client, waited as long.
    let slow_commits: Vec<u64> = std::fs::read_to_string(args.dir.join("keeper.log"))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("slow store commit"))
        .filter_map(|l| {
            l.split("ms=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect();

    let figures = serde_json::json!({
        "circuits": args.circuits,
        "activations": args.activations,
        "clients": args.clients,
        "aggregators": args.pops * AGGS_PER_POP,
        "tls": args.tls,
        "restart_s": restart.as_secs_f64(),
        "first_full_sets_s": full_sets.as_secs_f64(),
        "dc_full_set_bytes": dc_full,
        "activate_ms": { "p50": ms(act.value_at_quantile(0.5)), "p99": ms(act.value_at_quantile(0.99)), "max": ms(act.max()) },
        "activations_per_s": n / act_wall.as_secs_f64(),
        "release_ms": { "p50": ms(rel.value_at_quantile(0.5)), "p99": ms(rel.value_at_quantile(0.99)) },
        "releases_per_s": n / rel_wall.as_secs_f64(),
        "bytes_per_activation": { "dc": (b1.0 - b0.0) as f64 / n, "aggregators": (b1.1 - b0.1) as f64 / n },
        "keeper_cpu_per_activation_ms": (cpu1 - cpu0) * 1000.0 / n,
        "keeper_cpu_share_during_activations": (cpu1 - cpu0) / act_wall.as_secs_f64(),
        "keeper_cpu_s_releases": cpu2 - cpu1,
        "keeper_rss_mb": rss.max(rss2) as f64 / 1e6,
        "slow_store_commits_ms": slow_commits,
        "bounce": bounce.as_ref().map(|(line, on_line, took)| serde_json::json!({
            "line": format!("{agg}/{line}"), "circuits": on_line, "replaced": replaced, "s": took.as_secs_f64(),
        })),
        "fresh_forwarder": { "full_set_s": received_in.as_secs_f64(), "holding_s": holding.as_secs_f64(), "entries": entries },
    });
    println!(
        "| circuits in store | {} ({}) |",
        args.circuits,
        if args.tls { "TLS" } else { "plaintext" }
    );
    println!("|---|---|");
    println!(
        "| keeper restart (to serving) | {:.2} s |",
        restart.as_secs_f64()
    );
    println!(
        "| {} forwarders' first full sets | {:.2} s (dc-1: {:.1} MB) |",
        args.pops * AGGS_PER_POP + 1,
        full_sets.as_secs_f64(),
        dc_full as f64 / 1e6
    );
    println!(
        "| activate p50 / p99 / max | {:.2} / {:.2} / {:.2} ms ({} calls, {} clients) |",
        ms(act.value_at_quantile(0.5)),
        ms(act.value_at_quantile(0.99)),
        ms(act.max()),
        args.activations,
        args.clients
    );
    println!(
        "| activations per second | {:.0} |",
        n / act_wall.as_secs_f64()
    );
    println!(
        "| release p50 / p99 | {:.2} / {:.2} ms ({:.0} per second) |",
        ms(rel.value_at_quantile(0.5)),
        ms(rel.value_at_quantile(0.99)),
        n / rel_wall.as_secs_f64()
    );
    println!(
        "| bytes per activation (dc-1 / all aggregators) | {:.0} / {:.0} |",
        (b1.0 - b0.0) as f64 / n,
        (b1.1 - b0.1) as f64 / n
    );
    println!(
        "| keeper CPU per activation; share of a core | {:.2} ms; {:.0} % |",
        (cpu1 - cpu0) * 1000.0 / n,
        100.0 * (cpu1 - cpu0) / act_wall.as_secs_f64()
    );
    println!(
        "| keeper resident memory | {:.0} MB |",
        rss.max(rss2) as f64 / 1e6
    );
    println!(
        "| fresh DC forwarder: full set received / snapshot built | {:.2} s / {:.2} s ({entries} entries) |",
        received_in.as_secs_f64(),
        holding.as_secs_f64()
    );
    if let Some((line, on_line, took)) = &bounce {
        println!(
            "| a line down ({agg}/{line}, {on_line} circuits): all replaced and acknowledged | {:.2} s ({replaced} replaced) |",
            took.as_secs_f64()
        );
    }
    println!(
        "| store commits of 40 ms or more (fsync stalls) | {} {:?} ms |",
        slow_commits.len(),
        slow_commits
    );
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&figures)?)?;
    }
    Ok(())
}
