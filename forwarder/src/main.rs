//! `tarp-forwarder --config FILE.toml`: the tarp data plane on DPDK ports.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use clap::Parser;
use forwarder::app;
use forwarder::config::Config;
use forwarder::tables::Snapshot;

/// tarp's DPDK forwarder: aggregator, demux and remux pipelines on DPDK ports.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Configuration file (TOML).
    #[arg(long, short)]
    config: PathBuf,
    /// Validate the configuration (and its static rules) and exit.
    #[arg(long)]
    check: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cfg = match Config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tarp-forwarder: {}: {e}", args.config.display());
            return ExitCode::from(2);
        }
    };
    if let Err(e) = Snapshot::build(
        &cfg.rules,
        &app::offline_ports(&cfg),
        0,
        &app::static_neighbours(&cfg),
    ) {
        eprintln!("tarp-forwarder: {}: rules: {e}", args.config.display());
        return ExitCode::from(2);
    }
    if args.check {
        println!(
            "{}: ok ({} ports, {} workers, {} static rules)",
            args.config.display(),
            cfg.ports.len(),
            cfg.workers.lcores.len(),
            cfg.rules.aggregator.len() + cfg.rules.demux.len() + cfg.rules.remux.len()
        );
        return ExitCode::SUCCESS;
    }
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        if let Err(e) = signal_hook::flag::register(sig, stop.clone()) {
            eprintln!("tarp-forwarder: cannot handle signal {sig}: {e}");
            return ExitCode::FAILURE;
        }
    }
    // With a keeper, a keeper thread feeds table updates to the control thread.
    let hooks = cfg.keeper.clone().map(|endpoint| {
        let (updates_tx, updates_rx) = std::sync::mpsc::channel();
        let (links_tx, links_rx) = std::sync::mpsc::channel();
        let link = forwarder::control::KeeperLink {
            endpoint,
            node_id: cfg.node_id.clone(),
            roles: cfg.ports.iter().map(|p| p.role).collect(),
            ports: cfg.ports.iter().map(|p| p.name.clone()).collect(),
            updates: updates_tx,
            links: links_rx,
            stop: stop.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("keeper".into())
            .spawn(move || forwarder::control::run(link))
            .expect("spawn keeper thread");
        (
            app::ControlHooks {
                updates: updates_rx,
                links: links_tx,
            },
            thread,
        )
    });
    let (hooks, keeper_thread) = match hooks {
        Some((h, t)) => (Some(h), Some(t)),
        None => (None, None),
    };
    let result = app::run(&cfg, stop.clone(), hooks);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    if let Some(t) = keeper_thread {
        let _ = t.join();
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tarp-forwarder: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
