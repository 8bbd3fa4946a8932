//! `tarpctl`: activate, release, inspect and watch circuits; watch the fleet (`nodes`,
//! `top`) and record its packets (`capture`).
//!
//! In address mode the capture address goes onto this host's loopback after
//! activation and comes off after release (netlink; needs CAP_NET_ADMIN, or pass
//! `--no-loopback`). `tarpctl activate ... -- CMD ARGS` runs CMD with the circuit in its
//! environment and releases the circuit when CMD exits, with CMD's exit code.

mod fleet;

use std::net::IpAddr;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand, ValueEnum};
use tarp_api::client::{
    ActivateRequest, AppClient, Circuit, CircuitEvent, CircuitId, CircuitState, EventKind,
    ListFilter, Mode, PortRange, Protocol, ReturnPath,
};
use tarp_api::endpoint::{ClientTls, Dial};

/// Talk to the tarp circuit keeper.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Keeper endpoint: https://HOST:PORT (TLS), unix:/PATH for a keeper's Unix socket
    /// (reachable from any network namespace of the machine; TLS with --ca), or
    /// http://127.0.0.1:PORT (plaintext, loopback only).
    #[arg(
        long,
        env = "TARP_KEEPER",
        default_value = "http://127.0.0.1:50551",
        global = true
    )]
    keeper: String,
    /// The CA that signed the keeper's certificate (PEM): turns TLS on.
    #[arg(long, env = "TARP_CA", global = true)]
    ca: Option<std::path::PathBuf>,
    /// This client's certificate (PEM), naming it app/NAME or operator/NAME.
    #[arg(long, env = "TARP_CERT", global = true, requires = "ca")]
    cert: Option<std::path::PathBuf>,
    /// Its private key (PEM).
    #[arg(long, env = "TARP_KEY", global = true, requires = "cert")]
    key: Option<std::path::PathBuf>,
    /// The name to check on the keeper's certificate (default: the endpoint's host, or
    /// tarp-keeper over a Unix socket).
    #[arg(long, env = "TARP_SERVER_NAME", global = true)]
    server_name: Option<String>,
    /// JSON output (one object per circuit or event) instead of a table.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Activate a circuit; with `-- CMD ARGS`, run CMD with it and release it after.
    Activate {
        /// Address mode (the app host carries the capture address) or port mode.
        #[arg(long, value_enum)]
        mode: ModeArg,
        /// Transport protocol.
        #[arg(long, value_enum, default_value = "tcp")]
        protocol: ProtocolArg,
        /// Port or range, e.g. 4000 or 4000-4010 (address mode: optional).
        #[arg(long)]
        port: Option<String>,
        /// Application host address (must be in the keeper's inventory).
        #[arg(long)]
        app_host: IpAddr,
        /// Region the capture address must be in.
        #[arg(long)]
        region: Option<String>,
        /// Preferred POP.
        #[arg(long)]
        pop: Option<String>,
        /// A specific capture address.
        #[arg(long)]
        capture: Option<IpAddr>,
        /// Idempotency key: retrying with the same key returns the same circuit (each
        /// application has its own keys).
        #[arg(long)]
        idempotency_key: Option<String>,
        /// Which way replies take: straight out of the data center (asymmetric), or back
        /// through the POP's line (symmetric, for providers that filter foreign sources).
        #[arg(long = "return", value_enum, default_value = "asymmetric")]
        return_path: ReturnArg,
        /// Address mode: do not put the capture address on this host's loopback.
        #[arg(long)]
        no_loopback: bool,
        /// With `-- CMD`: hold the circuit by a lease of this many milliseconds,
        /// renewed while CMD runs, so that the keeper releases it if tarpctl dies
        /// (`kill -9`, a lost machine). 0: no lease.
        #[arg(long, default_value_t = 10_000)]
        lease_ms: u64,
        /// Command to run with the circuit (after `--`).
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// Release a circuit.
    Release {
        /// Circuit id.
        id: CircuitId,
        /// Address mode: leave the capture address on this host's loopback.
        #[arg(long)]
        no_loopback: bool,
    },
    /// Show one circuit.
    Get {
        /// Circuit id.
        id: CircuitId,
    },
    /// List circuits (released ones only with --all or --state released).
    List {
        /// Only this region.
        #[arg(long)]
        region: Option<String>,
        /// Only this POP.
        #[arg(long)]
        pop: Option<String>,
        /// Only this application host.
        #[arg(long)]
        app_host: Option<IpAddr>,
        /// Only this state.
        #[arg(long, value_enum)]
        state: Option<StateArg>,
        /// Include released circuits.
        #[arg(long)]
        all: bool,
    },
    /// The fleet's forwarders as the keeper sees them, with their metrics endpoints
    /// (operators only).
    Nodes,
    /// A live view of every forwarder: packets per port, drops by reason, generation,
    /// busy ratio (read from their metrics endpoints; operators only). q quits.
    Top {
        /// Refresh every this many milliseconds.
        #[arg(long, default_value_t = 1000)]
        every_ms: u64,
        /// Exit after this many refreshes (default: until q or Ctrl-C).
        #[arg(long)]
        count: Option<u64>,
    },
    /// Record packets on a forwarder, before and after their rewrite, into a pcapng
    /// file (for Wireshark, tshark, tcpdump; operators only).
    Capture {
        /// The forwarder (its node id).
        #[arg(long)]
        node: String,
        /// Only packets received on this port (its configured name).
        #[arg(long)]
        port: Option<String>,
        /// Only this circuit's packets (its capture address, alias and, in port mode,
        /// app host on its port).
        #[arg(long, conflicts_with = "host")]
        circuit: Option<CircuitId>,
        /// Only packets from or to this address (repeatable).
        #[arg(long)]
        host: Vec<IpAddr>,
        /// Stop after this many packets.
        #[arg(long, default_value_t = 100)]
        count: u64,
        /// Stop after this many seconds.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Bytes of each frame to keep (default 2048).
        #[arg(long)]
        snaplen: Option<u32>,
        /// At most this many packets a second (default 10,000).
        #[arg(long)]
        rate: Option<u64>,
        /// The file to write.
        #[arg(short = 'w', long = "write")]
        write: std::path::PathBuf,
    },
    /// Print circuit events as they happen.
    Watch {
        /// Only this circuit and its replacements.
        #[arg(long)]
        circuit: Option<CircuitId>,
        /// Only circuits of this application host.
        #[arg(long)]
        app_host: Option<IpAddr>,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ModeArg {
    Address,
    Port,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ReturnArg {
    Asymmetric,
    Symmetric,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ProtocolArg {
    Tcp,
    Udp,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum StateArg {
    Activating,
    Active,
    Bounced,
    Releasing,
    Released,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tarpctl: starting the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("tarpctl: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn parse_ports(spec: Option<&str>, mode: Mode) -> anyhow::Result<PortRange> {
    let Some(spec) = spec else {
        if mode == Mode::Address {
            return Ok(PortRange { first: 0, last: 0 });
        }
        bail!("--port is required in port mode");
    };
    let port = |s: &str| {
        s.trim()
            .parse::<u16>()
            .with_context(|| format!("--port {spec:?}: {s:?} is not a port"))
    };
    Ok(match spec.split_once('-') {
        Some((a, b)) => PortRange {
            first: port(a)?,
            last: port(b)?,
        },
        None => PortRange::single(port(spec)?),
    })
}

async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let dial = match &args.ca {
        None => Dial::plain(args.keeper.as_str()),
        Some(ca) => Dial::tls(
            args.keeper.as_str(),
            ClientTls::from_files(
                ca,
                args.cert.as_deref(),
                args.key.as_deref(),
                args.server_name.as_deref(),
            )
            .map_err(anyhow::Error::msg)?,
        ),
    };
    let mut client = AppClient::connect(&dial).await?;
    match args.command {
        Command::Activate {
            mode,
            protocol,
            port,
            app_host,
            region,
            pop,
            capture,
            idempotency_key,
            return_path,
            no_loopback,
            lease_ms,
            command,
        } => {
            // From now on SIGTERM is ours (not the default exit): one that comes while
            // the keeper is still activating reaches CMD as soon as it runs, and the
            // circuit is released after.
            let term = if command.is_empty() {
                None
            } else {
                Some(
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                        .context("SIGTERM handler")?,
                )
            };
            let mode = match mode {
                ModeArg::Address => Mode::Address,
                ModeArg::Port => Mode::Port,
            };
            let req = ActivateRequest {
                region,
                pop,
                protocol: match protocol {
                    ProtocolArg::Tcp => Protocol::Tcp,
                    ProtocolArg::Udp => Protocol::Udp,
                },
                ports: parse_ports(port.as_deref(), mode)?,
                mode,
                app_host,
                idempotency_key,
                capture,
                return_path: match return_path {
                    ReturnArg::Asymmetric => ReturnPath::Asymmetric,
                    ReturnArg::Symmetric => ReturnPath::Symmetric,
                },
                // Only a running tarpctl renews a lease: without CMD, none.
                lease_ms: if command.is_empty() { 0 } else { lease_ms },
                owner: String::new(),
            };
            let circuit = client.activate(&req).await?;
            let on_loopback = mode == Mode::Address && !no_loopback;
            if on_loopback {
                if let Err(e) = loopback::add(circuit.capture).await {
                    let _ = client.release(circuit.id).await;
                    return Err(e.context(format!("circuit {} released again", circuit.id)));
                }
            }
            match term {
                Some(term) => {
                    run_with_circuit(&mut client, circuit, on_loopback, &command, term).await
                }
                None => {
                    print_circuits(&[circuit], args.json);
                    Ok(ExitCode::SUCCESS)
                }
            }
        }
        Command::Release { id, no_loopback } => {
            let circuit = client.release(id).await?;
            if circuit.mode == Mode::Address && !no_loopback {
                loopback::remove(circuit.capture).await?;
            }
            print_circuits(&[circuit], args.json);
            Ok(ExitCode::SUCCESS)
        }
        Command::Get { id } => {
            let circuit = client.get(id).await?;
            print_circuits(&[circuit], args.json);
            Ok(ExitCode::SUCCESS)
        }
        Command::List {
            region,
            pop,
            app_host,
            state,
            all,
        } => {
            let state = state.map(|s| match s {
                StateArg::Activating => CircuitState::Activating,
                StateArg::Active => CircuitState::Active,
                StateArg::Bounced => CircuitState::Bounced,
                StateArg::Releasing => CircuitState::Releasing,
                StateArg::Released => CircuitState::Released,
            });
            let filter = ListFilter {
                region,
                pop,
                app_host,
                state,
                include_released: all,
                owner: None,
            };
            let circuits = client.list(&filter).await?;
            print_circuits(&circuits, args.json);
            Ok(ExitCode::SUCCESS)
        }
        Command::Nodes => {
            let nodes = client.nodes().await?;
            fleet::print_nodes(&nodes, args.json);
            Ok(ExitCode::SUCCESS)
        }
        Command::Top { every_ms, count } => {
            let every = std::time::Duration::from_millis(every_ms.max(100));
            fleet::top(&mut client, every, count).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Capture {
            node,
            port,
            circuit,
            host,
            count,
            seconds,
            snaplen,
            rate,
            write,
        } => {
            let a = fleet::CaptureArgs {
                node,
                port,
                circuit,
                hosts: host,
                count,
                seconds,
                snaplen,
                rate,
                write,
            };
            fleet::capture(&mut client, a).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Watch { circuit, app_host } => {
            let mut events = client.watch(circuit, app_host).await?;
            loop {
                match events.next().await {
                    Ok(Some(event)) => print_event(&event, args.json),
                    Ok(None) | Err(_) => {
                        // The keeper restarted or the connection broke: watch again.
                        eprintln!("tarpctl: lost the keeper's event stream; reconnecting");
                        events = loop {
                            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                            if let Ok(e) = client.watch(circuit, app_host).await {
                                break e;
                            }
                        };
                    }
                }
            }
        }
    }
}

/// Runs CMD with the circuit in its environment, follows bounces, and releases what it
/// holds when CMD exits.
async fn run_with_circuit(
    client: &mut AppClient,
    circuit: Circuit,
    on_loopback: bool,
    command: &[String],
    mut term: tokio::signal::unix::Signal,
) -> anyhow::Result<ExitCode> {
    let mut events = Some(client.watch(Some(circuit.id), None).await?);
    // Renew a third of the lease's term: two renewals may fail before it runs out.
    let mut renewals = (circuit.lease_ms > 0).then(|| {
        client.keep_renewing(
            vec![circuit.id],
            std::time::Duration::from_millis(circuit.lease_ms / 3),
        )
    });
    let mut terminated = false;
    let mut child = tokio::process::Command::new(&command[0])
        .args(&command[1..])
        .env("TARP_CIRCUIT_ID", circuit.id.to_string())
        .env("TARP_CAPTURE_ADDR", circuit.capture.to_string())
        .env("TARP_PORT", circuit.ports.first.to_string())
        .env("TARP_PORT_END", circuit.ports.last.to_string())
        .env("TARP_PROTOCOL", circuit.protocol.name())
        .env("TARP_BIND_ADDR", circuit.bind_address().to_string())
        .env("TARP_MODE", circuit.mode.to_string())
        .spawn()
        .with_context(|| format!("running {:?}", command[0]))?;
    // Every circuit this run held: the first and its replacements.
    let mut held: Vec<Circuit> = vec![circuit];
    let mut retry = tokio::time::Instant::now();
    let status = loop {
        tokio::select! {
            status = child.wait() => break status.context("waiting for the command")?,
            // CMD gets the same Ctrl-C (same process group); tarpctl stays to clean up.
            _ = tokio::signal::ctrl_c() => {}
            // SIGTERM comes to tarpctl alone: pass it on (a second one kills CMD), and
            // clean up once CMD is gone.
            _ = term.recv() => {
                if terminated {
                    let _ = child.start_kill();
                } else if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGTERM,
                    );
                }
                terminated = true;
            }
            Some(e) = next_renewal_error(&mut renewals) => {
                eprintln!("tarpctl: renewing the lease: {e}");
            }
            event = next_event(&mut events) => match event {
                Ok(Some(e)) => {
                    eprintln!("tarpctl: {}", describe_event(&e));
                    if let (EventKind::Bounced, Some(r)) = (e.kind, e.replacement) {
                        follow(&mut held, r, on_loopback).await;
                    }
                }
                Ok(None) | Err(_) => {
                    eprintln!("tarpctl: lost the keeper's event stream; reconnecting");
                    events = None;
                    retry = tokio::time::Instant::now() + std::time::Duration::from_millis(300);
                }
            },
            _ = tokio::time::sleep_until(retry), if events.is_none() => {
                // `held` starts with the first circuit and only grows.
                let last = held[held.len() - 1].id;
                match client.watch(Some(last), None).await {
                    Ok(stream) => {
                        events = Some(stream);
                        // Bounces that happened while the stream was down.
                        catch_up(client, &mut held, on_loopback).await;
                        eprintln!("tarpctl: following circuit {} again", held[held.len() - 1].id);
                    }
                    Err(_) => retry = tokio::time::Instant::now() + std::time::Duration::from_secs(1),
                }
            }
        }
    };
    drop(renewals);
    for c in held.iter().rev() {
        if let Err(e) = client.release(c.id).await {
            eprintln!("tarpctl: releasing circuit {}: {e}", c.id);
        }
        if on_loopback {
            if let Err(e) = loopback::remove(c.capture).await {
                eprintln!("tarpctl: {e:#}");
            }
        }
    }
    let code = match status.code() {
        Some(code) => code,
        None => {
            use std::os::unix::process::ExitStatusExt;
            128 + status.signal().unwrap_or(0)
        }
    };
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
}

/// The next failed renewal, or never without a lease.
async fn next_renewal_error(
    renewals: &mut Option<(
        tarp_api::client::Renewer,
        tokio::sync::mpsc::Receiver<tarp_api::client::ClientError>,
    )>,
) -> Option<tarp_api::client::ClientError> {
    match renewals {
        Some((_, errors)) => errors.recv().await,
        None => std::future::pending().await,
    }
}

/// The next event of a watch, or never while there is no stream.
async fn next_event(
    events: &mut Option<tarp_api::client::EventStream>,
) -> Result<Option<CircuitEvent>, tarp_api::client::ClientError> {
    match events {
        Some(e) => e.next().await,
        None => std::future::pending().await,
    }
}

/// Moves to replacement circuit `r`: its capture address onto the loopback, the old one off.
async fn follow(held: &mut Vec<Circuit>, r: Circuit, on_loopback: bool) {
    if on_loopback {
        if let Err(err) = loopback::add(r.capture).await {
            eprintln!("tarpctl: {err:#}");
        }
        if let Some(old) = held.last() {
            if old.capture != r.capture {
                let _ = loopback::remove(old.capture).await;
            }
        }
    }
    held.push(r);
}

/// Follows replacements made while tarpctl was not watching (the keeper was away).
async fn catch_up(client: &mut AppClient, held: &mut Vec<Circuit>, on_loopback: bool) {
    for _ in 0..64 {
        let Some(last) = held.last() else { return };
        let Ok(c) = client.get(last.id).await else {
            return;
        };
        let Some(next) = c.replaced_by else { return };
        let Ok(r) = client.get(next).await else {
            return;
        };
        eprintln!(
            "tarpctl: circuit {} was replaced by {} at {} meanwhile",
            c.id, r.id, r.capture
        );
        follow(held, r, on_loopback).await;
    }
}

fn ports(c: &Circuit) -> String {
    c.ports.to_string()
}

fn circuit_json(c: &Circuit) -> serde_json::Value {
    let mut v = serde_json::to_value(c).unwrap_or(serde_json::Value::Null);
    if let Some(o) = v.as_object_mut() {
        o.insert("bind_address".into(), c.bind_address().to_string().into());
    }
    v
}

fn print_circuits(circuits: &[Circuit], json: bool) {
    if json {
        for c in circuits {
            println!("{}", circuit_json(c));
        }
        return;
    }
    let header = [
        "ID", "STATE", "MODE", "RETURN", "PROTO", "PORTS", "CAPTURE", "BIND", "APP HOST", "POP",
        "LINE", "OWNER", "GEN", "NOTE",
    ];
    let rows: Vec<[String; 14]> = circuits
        .iter()
        .map(|c| {
            let note = match (c.replaces, c.replaced_by, &c.reason) {
                (_, Some(by), _) => format!("replaced by {by}"),
                (_, None, Some(r)) => r.clone(),
                (Some(old), None, None) => format!("replaces {old}"),
                _ => String::new(),
            };
            [
                c.id.to_string(),
                c.state.to_string(),
                c.mode.to_string(),
                c.return_path.to_string(),
                c.protocol.name().to_string(),
                ports(c),
                c.capture.to_string(),
                c.bind_address().to_string(),
                c.app_host.to_string(),
                c.pop.clone(),
                format!("{}/{}", c.aggregator, c.line),
                c.owner.clone(),
                c.generation.to_string(),
                note,
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let text: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", text.join("  ").trim_end());
    };
    line(header.to_vec());
    for row in &rows {
        line(row.iter().map(String::as_str).collect());
    }
}

fn describe_event(e: &CircuitEvent) -> String {
    let c = &e.circuit;
    match e.kind {
        EventKind::Activated => format!(
            "circuit {} activated at {} port(s) {}",
            c.id,
            c.capture,
            ports(c)
        ),
        EventKind::Released => format!("circuit {} released", c.id),
        EventKind::Bounced => {
            let why = e.reason.as_deref().unwrap_or("line down");
            match &e.replacement {
                Some(r) => format!(
                    "circuit {} bounced ({why}); replaced by circuit {} at {}",
                    c.id, r.id, r.capture
                ),
                None => format!("circuit {} bounced ({why}); no replacement", c.id),
            }
        }
    }
}

fn print_event(e: &CircuitEvent, json: bool) {
    if json {
        let v = serde_json::json!({
            "kind": e.kind,
            "circuit": circuit_json(&e.circuit),
            "replacement": e.replacement.as_ref().map(circuit_json),
            "reason": e.reason,
        });
        println!("{v}");
    } else {
        println!("{}", describe_event(e));
    }
}

/// The capture address on this host's loopback, over netlink.
mod loopback {
    use std::net::IpAddr;

    use anyhow::{anyhow, Context};
    use futures_util::TryStreamExt;

    const EEXIST: i32 = 17;
    const EPERM: i32 = 1;

    async fn handle() -> anyhow::Result<(rtnetlink::Handle, u32)> {
        let (connection, handle, _) =
            rtnetlink::new_connection().context("opening a netlink socket")?;
        tokio::spawn(connection);
        let link = handle
            .link()
            .get()
            .match_name("lo".to_string())
            .execute()
            .try_next()
            .await
            .context("looking up interface lo")?
            .ok_or_else(|| anyhow!("no interface lo"))?;
        Ok((handle, link.header.index))
    }

    fn host_prefix(a: IpAddr) -> u8 {
        if a.is_ipv4() {
            32
        } else {
            128
        }
    }

    fn explain(e: rtnetlink::Error, what: String) -> anyhow::Error {
        if let rtnetlink::Error::NetlinkError(m) = &e {
            if m.raw_code() == -EPERM {
                return anyhow!("{what}: not permitted (needs CAP_NET_ADMIN: run as root, or pass --no-loopback)");
            }
        }
        anyhow!("{what}: {e}")
    }

    /// Adds `a` to lo (already there is fine).
    pub async fn add(a: IpAddr) -> anyhow::Result<()> {
        let (handle, lo) = handle().await?;
        match handle.address().add(lo, a, host_prefix(a)).execute().await {
            Ok(()) => Ok(()),
            Err(rtnetlink::Error::NetlinkError(m)) if m.raw_code() == -EEXIST => Ok(()),
            Err(e) => Err(explain(e, format!("adding {a}/{} to lo", host_prefix(a)))),
        }
    }

    /// Removes `a` from lo (absent is fine).
    pub async fn remove(a: IpAddr) -> anyhow::Result<()> {
        let (handle, lo) = handle().await?;
        let found: Vec<_> = handle
            .address()
            .get()
            .set_link_index_filter(lo)
            .set_address_filter(a)
            .execute()
            .try_collect()
            .await
            .context("listing the addresses of lo")?;
        for message in found {
            handle
                .address()
                .del(message)
                .execute()
                .await
                .map_err(|e| explain(e, format!("removing {a} from lo")))?;
        }
        Ok(())
    }
}
