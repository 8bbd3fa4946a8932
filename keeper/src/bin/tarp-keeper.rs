//! `tarp-keeper --config FILE.toml`: the circuit keeper. `--check` validates the
//! configuration and exits.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use keeper::inventory::Config;
use keeper::server::Server;
use tracing::info;

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
            "{}: ok: {} regions, {} POPs, {} aggregators with {} capture addresses, {} demux, {} remux, {} app hosts",
            args.config.display(),
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
        let listen = config.settings.listen;
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("listening on {listen}"))?;
        let server = Server::start(config, listener).await?;
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("installing the SIGTERM handler")?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => info!("interrupted; shutting down"),
            _ = term.recv() => info!("terminated; shutting down"),
        }
        server.shutdown().await;
        Ok(())
    })
}
