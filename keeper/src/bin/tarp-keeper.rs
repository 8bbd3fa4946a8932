//! `tarp-keeper --config FILE.toml`: the circuit keeper. `--check` validates the
//! configuration and exits.
//!
//! It listens on `[keeper] listen`: `IP:PORT`, or `unix:/PATH` for a Unix socket that
//! reaches it from every network namespace of the machine. SIGTERM or SIGINT stops it
//! gracefully (no new calls; activations and releases under way finish; streams end;
//! the database is closed; the socket file is removed); a second signal stops it at
//! once (the database stays consistent either way).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use keeper::inventory::Config;
use keeper::server::Server;
use keeper::transport::Listener;
use tokio::signal::unix::{signal, SignalKind};
use tracing::{info, warn};

/// The tarp circuit keeper.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Configuration file: keeper settings and inventory (see keeper/examples/keeper.toml).
    #[arg(long, short)]
    config: PathBuf,
    /// Validate the configuration and exit.
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
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tarp-keeper: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    let config = Config::load(&args.config)?;
    if args.check {
        let inv = &config.inventory;
        let captures: usize = inv
            .aggregators
            .iter()
            .flat_map(|a| &a.lines)
            .map(|l| l.captures.len())
            .sum();
        println!(
            "{}: ok: listen {}, {} regions, {} POPs, {} aggregators with {} capture addresses, {} demux, {} remux, {} app hosts",
            args.config.display(),
            config.settings.listen,
            inv.regions.len(),
            inv.pops.len(),
            inv.aggregators.len(),
            captures,
            inv.demuxes.len(),
            inv.remuxes.len(),
            inv.app_hosts.len()
        );
        return Ok(());
    }
    let runtime = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
    runtime.block_on(async {
        // Handlers first: a signal from here on stops the keeper cleanly.
        let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
        let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
        let listen = config.settings.listen.clone();
        let listener = Listener::bind(&listen)
            .await
            .with_context(|| format!("listening on {listen}"))?;
        let server = Server::start(config, listener).await?;
        tokio::select! {
            _ = int.recv() => info!("interrupted; shutting down"),
            _ = term.recv() => info!("terminated; shutting down"),
        }
        tokio::select! {
            () = server.shutdown() => {}
            _ = int.recv() => warn!("interrupted again; stopping now"),
            _ = term.recv() => warn!("terminated again; stopping now"),
        }
        Ok(())
    })
}
