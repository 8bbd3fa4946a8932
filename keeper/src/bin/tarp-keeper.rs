//! `tarp-keeper --config FILE.toml`: the circuit keeper. `--check` validates the
//! configuration and exits. `tarp-keeper certs --dir DIR ca|keeper|node|app|operator`
//! makes a deployment's CA and its certificates.
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
#[command(version, about, subcommand_negates_reqs = true)]
struct Args {
    /// Configuration file: keeper settings and inventory (see keeper/examples/keeper.toml).
    #[arg(long, short, required = true)]
    config: Option<PathBuf>,
    /// Validate the configuration and exit.
    #[arg(long)]
    check: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Makes certificates for a deployment: a CA, then one per keeper, node, application
    /// and operator, each written as DIR/STEM.pem and DIR/STEM.key (mode 0600).
    Certs {
        /// The folder that holds the CA (ca.pem, ca.key) and the certificates.
        #[arg(long)]
        dir: PathBuf,
        #[command(subcommand)]
        what: Certs,
    },
}

#[derive(Debug, clap::Subcommand)]
enum Certs {
    /// A new CA (refused if DIR has one).
    Ca {
        /// Its common name.
        #[arg(long, default_value = "tarp deployment CA")]
        name: String,
    },
    /// The keeper's server certificate (keeper.pem): `tarp-keeper` and `localhost`,
    /// 127.0.0.1 and ::1, and the names and addresses given.
    Keeper {
        /// More DNS names.
        #[arg(long)]
        dns: Vec<String>,
        /// More IP addresses.
        #[arg(long)]
        ip: Vec<std::net::IpAddr>,
    },
    /// A forwarder's client certificate (node-ID.pem), for node ID of the inventory.
    Node { id: String },
    /// An application's client certificate (app-NAME.pem): it owns the circuits it makes.
    App { name: String },
    /// An operator's client certificate (operator-NAME.pem): may do everything.
    Operator { name: String },
}

fn certs(dir: &std::path::Path, what: Certs) -> anyhow::Result<()> {
    use keeper::auth::Identity;
    use keeper::certs::{init_ca, issue_into, Subject, KEEPER_SERVER_NAME};
    let client = |kind: &str, name: &str| -> anyhow::Result<Subject> {
        Ok(Subject::Client(
            Identity::parse(&format!("{kind}/{name}")).map_err(anyhow::Error::msg)?,
        ))
    };
    let (cert, key) = match what {
        Certs::Ca { name } => init_ca(dir, &name)?,
        Certs::Keeper { mut dns, mut ip } => {
            dns.splice(0..0, [KEEPER_SERVER_NAME.to_string(), "localhost".into()]);
            ip.splice(0..0, ["127.0.0.1".parse()?, "::1".parse()?]);
            issue_into(dir, &Subject::Keeper { dns, ips: ip })?
        }
        Certs::Node { id } => issue_into(dir, &client("node", &id)?)?,
        Certs::App { name } => issue_into(dir, &client("app", &name)?)?,
        Certs::Operator { name } => issue_into(dir, &client("operator", &name)?)?,
    };
    println!("{} {}", cert.display(), key.display());
    Ok(())
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
    if let Some(Command::Certs { dir, what }) = args.command {
        return certs(&dir, what);
    }
    let path = args.config.context("--config is required")?;
    let config = Config::load(&path)?;
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
            path.display(),
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
