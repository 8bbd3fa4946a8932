//! `tarp-forwarder --config FILE.toml`: the tarp data plane on DPDK ports.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use clap::Parser;
use forwarder::config::Config;
use forwarder::control::keeper_link::KeeperLink;
use forwarder::tables::Snapshot;
use forwarder::{app, fatal};

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
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,boringtun=off".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    fatal::install_panic_hook();
    let file = args.config.display();
    let cfg = match Config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tarp-forwarder: {file}: {e}");
            return ExitCode::from(2);
        }
    };
    let offline = app::offline_ports(&cfg);
    if let Err(e) = Snapshot::build(&cfg.rules, &offline, 0, &app::static_neighbours(&cfg)) {
        eprintln!("tarp-forwarder: {file}: {e}");
        return ExitCode::from(2);
    }
    if let Some(Err(e)) = cfg.wireguard.as_ref().map(|w| w.private_key()) {
        eprintln!("tarp-forwarder: {file}: {e}");
        return ExitCode::from(2);
    }
    let dial = match cfg.keeper_dial() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("tarp-forwarder: {file}: {e}");
            return ExitCode::from(2);
        }
    };
    if args.check {
        let rules = cfg.rules.aggregator.len() + cfg.rules.demux.len() + cfg.rules.remux.len();
        let (ports, workers) = (cfg.ports.len(), cfg.workers.lcores.len());
        println!("{file}: ok ({ports} ports, {workers} workers, {rules} static rules)");
        return ExitCode::SUCCESS;
    }
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        if let Err(e) = signal_hook::flag::register(sig, stop.clone()) {
            eprintln!("tarp-forwarder: cannot handle signal {sig}: {e}");
            return ExitCode::FAILURE;
        }
    }
    // With a keeper, the keeper link feeds table updates to the control thread.
    let (hooks, keeper_thread) = match dial {
        Some(endpoint) => {
            let (link, hooks) = KeeperLink::new(&cfg, endpoint, stop.clone());
            match link.spawn() {
                Ok(t) => (Some(hooks), Some(t)),
                Err(e) => {
                    eprintln!("tarp-forwarder: cannot start the keeper link: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
        // Perf runs: the static rules swapped in at a steady rate instead.
        None => match cfg.bench.swaps_per_second {
            Some(rate) => match forwarder::control::bench_swaps::spawn(&cfg, rate, stop.clone()) {
                Ok((t, hooks)) => (Some(hooks), Some(t)),
                Err(e) => {
                    eprintln!("tarp-forwarder: cannot start the bench swaps: {e}");
                    return ExitCode::FAILURE;
                }
            },
            None => (None, None),
        },
    };
    let result = app::run(&cfg, stop.clone(), hooks);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    if let Some(t) = keeper_thread {
        let _ = t.join();
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // The panic hook has said what happened, in one line.
        Err(_) if fatal::cause().is_some() => ExitCode::from(fatal::EXIT_CODE),
        Err(e) => {
            eprintln!("tarp-forwarder: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
