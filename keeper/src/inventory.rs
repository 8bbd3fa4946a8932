//! The keeper's configuration file: its own settings and the inventory of the network it
//! keeps circuits on (regions, POPs, aggregators and their lines, demux alias pools,
//! remux nodes, application hosts, tunnels and each node's static routes).
//!
//! The file is parsed strictly (unknown keys are refused) and then checked as a whole;
//! every error is one line that names the key at fault.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;
use tarp_api::rules::{Route, Tunnel, WgKey, WireGuard, WG_PORT};
use tarp_api::MacAddr;

pub use crate::auth::Identity;
pub use crate::transport::ListenAddr;

pub use tarp_api::circuit::{NodeId, Role};

/// The largest number of addresses one prefix in a pool may expand to.
pub const MAX_POOL_PREFIX: u128 = 1 << 16;

/// The keeper's own settings (`[keeper]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "RawSettings")]
pub struct Settings {
    /// gRPC listen address: `127.0.0.1:50551` (TCP) or `unix:/run/tarp/keeper.sock`
    /// (a Unix socket, reachable from every network namespace of the machine; a
    /// relative path is taken from the config file's folder).
    pub listen: ListenAddr,
    /// Database file; a relative path is taken from the config file's folder.
    pub db: PathBuf,
    /// How long an activation waits for every forwarder's acknowledgement.
    pub ack_timeout_ms: u64,
    /// How often the keeper sends heartbeats on each forwarder stream (and how often
    /// forwarders are expected to send theirs).
    pub heartbeat_interval_ms: u64,
    /// An aggregator silent for this long has its lines bounced.
    pub heartbeat_timeout_ms: u64,
    /// The most ports one port-mode circuit may hold.
    pub max_port_range: u16,
    /// The shortest lease an activation may ask for.
    pub min_lease_ms: u64,
    /// The longest lease an activation may ask for.
    pub max_lease_ms: u64,
    /// Released and replaced circuits are kept (for `Get`, `List --all`, and
    /// idempotent retries) this long, then pruned.
    pub retention_ms: u64,
    /// A capture address or alias freed by a release or a bounce waits until every
    /// forwarder that held it acknowledged its removal; for one that does not (it is
    /// gone or cut off), this long.
    pub quarantine_ms: u64,
    /// Flap damping: a line's penalty (1000 per bounce) halves every this long...
    pub flap_half_life_ms: u64,
    /// ...the line is not offered for new circuits once its penalty reaches this...
    pub flap_suppress: u32,
    /// ...until it has decayed below this.
    pub flap_reuse: u32,
    /// TLS on the gRPC endpoint (`[keeper.tls]`), with client certificates naming each
    /// caller. Without it the keeper speaks plaintext, on loopback or a Unix socket only.
    pub tls: Option<TlsSettings>,
    /// Who a plaintext caller is (`operator/NAME` or `app/NAME`); `None`: nobody, every
    /// plaintext call is refused. Configured, never assumed.
    pub plaintext_identity: Option<Identity>,
    /// The mode of a Unix socket file the keeper creates (file-permission trust).
    pub socket_mode: u32,
    /// The group of that socket file, by name (`None`: the keeper's own).
    pub socket_group: Option<String>,
    /// Where to serve Prometheus metrics, `/healthz` and `/readyz` over HTTP (`None`:
    /// nowhere), e.g. `127.0.0.1:9400`.
    pub metrics: Option<std::net::SocketAddr>,
}

/// `[keeper.tls]`: the keeper's certificate and the CA its clients' certificates come
/// from. Relative paths are taken from the config file's folder.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    /// The keeper's certificate chain (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// The CA that issues forwarder, application and operator certificates (PEM).
    pub client_ca: PathBuf,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            listen: ListenAddr::default(),
            db: PathBuf::from("keeper.redb"),
            ack_timeout_ms: 5_000,
            heartbeat_interval_ms: 1_000,
            heartbeat_timeout_ms: 5_000,
            max_port_range: 256,
            min_lease_ms: 1_000,
            max_lease_ms: 86_400_000,
            retention_ms: 7 * 86_400_000,
            quarantine_ms: 60_000,
            flap_half_life_ms: 60_000,
            flap_suppress: 3_000,
            flap_reuse: 750,
            tls: None,
            plaintext_identity: None,
            socket_mode: crate::transport::SOCKET_MODE,
            socket_group: None,
            metrics: None,
        }
    }
}

impl Settings {
    /// [`Settings::ack_timeout_ms`] as a duration.
    pub fn ack_timeout(&self) -> Duration {
        Duration::from_millis(self.ack_timeout_ms)
    }

    /// [`Settings::heartbeat_interval_ms`] as a duration.
    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.heartbeat_interval_ms)
    }

    /// [`Settings::heartbeat_timeout_ms`] as a duration.
    pub fn heartbeat_timeout(&self) -> Duration {
        Duration::from_millis(self.heartbeat_timeout_ms)
    }

    /// [`Settings::retention_ms`] as a duration.
    pub fn retention(&self) -> Duration {
        Duration::from_millis(self.retention_ms)
    }

    /// [`Settings::quarantine_ms`] as a duration.
    pub fn quarantine(&self) -> Duration {
        Duration::from_millis(self.quarantine_ms)
    }
}

/// `[keeper]` as written, `listen` still a string: a bad value is then reported with
/// its key like every other setting.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawSettings {
    listen: String,
    db: PathBuf,
    ack_timeout_ms: u64,
    heartbeat_interval_ms: u64,
    heartbeat_timeout_ms: u64,
    max_port_range: u16,
    min_lease_ms: u64,
    max_lease_ms: u64,
    retention_ms: u64,
    quarantine_ms: u64,
    flap_half_life_ms: u64,
    flap_suppress: u32,
    flap_reuse: u32,
    tls: Option<TlsSettings>,
    plaintext_identity: Option<String>,
    socket_mode: u32,
    socket_group: Option<String>,
    metrics: Option<String>,
}

impl Default for RawSettings {
    fn default() -> Self {
        let s = Settings::default();
        RawSettings {
            listen: s.listen.to_string(),
            db: s.db,
            ack_timeout_ms: s.ack_timeout_ms,
            heartbeat_interval_ms: s.heartbeat_interval_ms,
            heartbeat_timeout_ms: s.heartbeat_timeout_ms,
            max_port_range: s.max_port_range,
            min_lease_ms: s.min_lease_ms,
            max_lease_ms: s.max_lease_ms,
            retention_ms: s.retention_ms,
            quarantine_ms: s.quarantine_ms,
            flap_half_life_ms: s.flap_half_life_ms,
            flap_suppress: s.flap_suppress,
            flap_reuse: s.flap_reuse,
            tls: s.tls,
            plaintext_identity: s.plaintext_identity.map(|i| i.to_string()),
            socket_mode: s.socket_mode,
            socket_group: s.socket_group,
            metrics: None,
        }
    }
}

impl TryFrom<RawSettings> for Settings {
    type Error = String;

    fn try_from(raw: RawSettings) -> Result<Settings, String> {
        check_settings(raw).map_err(|(key, problem)| format!("{key}: {problem}"))
    }
}

/// A configuration file that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// TOML syntax, a missing or unknown key, or a value of the wrong type.
    #[error("{path}:{line}:{column}: {message}")]
    Syntax {
        /// The file.
        path: String,
        /// 1-based line of the offending text.
        line: usize,
        /// 1-based column.
        column: usize,
        /// The parser's one-line message (it names the key).
        message: String,
    },
    /// Well-formed, but not a usable inventory.
    #[error("{path}: {key}: {problem}")]
    Invalid {
        /// The file.
        path: String,
        /// Dotted path of the key at fault, e.g. `aggregators[0].lines[1].captures[2]`.
        key: String,
        /// What is wrong with it.
        problem: String,
    },
}

// ---- the file as written ---------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    keeper: RawSettings,
    regions: Vec<RegionEntry>,
    pops: Vec<PopEntry>,
    #[serde(default)]
    nodes: Vec<NodeEntry>,
    aggregators: Vec<AggregatorEntry>,
    demuxes: Vec<DemuxEntry>,
    remuxes: Vec<RemuxEntry>,
    app_hosts: Vec<AppHostEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RegionEntry {
    name: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PopEntry {
    name: String,
    region: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeEntry {
    id: String,
    #[serde(default)]
    routes: Vec<Route>,
    /// The node's WireGuard public key (its forwarder's `[wireguard]` private key).
    #[serde(default)]
    wireguard_key: Option<WgKey>,
    /// Its forwarder's metrics endpoint, as operators reach it (`tarpctl top`).
    #[serde(default)]
    metrics: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AggregatorEntry {
    node: String,
    pop: String,
    tunnel: TunnelEntry,
    lines: Vec<LineEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TunnelEntry {
    #[serde(default = "default_tunnel_id")]
    id: u32,
    local: IpAddr,
    remote: IpAddr,
    #[serde(default)]
    vni: u32,
    demux: String,
    #[serde(default)]
    inner_dst_mac: Option<MacAddr>,
    /// Path MTU between the POP and the DC (absent: the aggregator's egress port MTU).
    #[serde(default)]
    mtu: Option<u16>,
    /// WireGuard instead of VXLAN: both nodes need a `wireguard_key` in `[[nodes]]`.
    #[serde(default)]
    wireguard: bool,
}

fn default_tunnel_id() -> u32 {
    1
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LineEntry {
    name: String,
    captures: Vec<String>,
    /// The line's gateway (its provider's router): where symmetric circuits' replies go.
    #[serde(default)]
    gateway: Option<IpAddr>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DemuxEntry {
    node: String,
    aliases: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RemuxEntry {
    node: String,
    /// The remux's tunnel endpoint for symmetric return (one of its port addresses).
    #[serde(default)]
    tunnel_local: Option<IpAddr>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AppHostEntry {
    address: IpAddr,
    remux: String,
    #[serde(default)]
    name: Option<String>,
}

// ---- the checked inventory -------------------------------------------------------------

/// A point of presence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pop {
    /// Its name.
    pub name: String,
    /// The region it is in.
    pub region: String,
}

/// A line of an aggregator: one of its ports, with the capture addresses routed to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// The aggregator's port name.
    pub name: String,
    /// Capture addresses on the line, in allocation order.
    pub captures: Vec<IpAddr>,
    /// Its gateway, if symmetric circuits may use it.
    pub gateway: Option<IpAddr>,
}

/// An aggregator node at a POP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Aggregator {
    /// Node id.
    pub node: NodeId,
    /// POP it is at.
    pub pop: String,
    /// The POP's region.
    pub region: String,
    /// The tunnel to its demux (`Tunnel::id` is what aggregator rules refer to).
    pub tunnel: Tunnel,
    /// Node id of the demux at the tunnel's far end.
    pub demux: NodeId,
    /// Its lines.
    pub lines: Vec<Line>,
}

/// A demux node and its alias pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Demux {
    /// Node id.
    pub node: NodeId,
    /// Aliases, in allocation order.
    pub aliases: Vec<IpAddr>,
}

/// An application host in the data center.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppHost {
    /// Its address (the demux's next hop, the remux's match in port mode).
    pub address: IpAddr,
    /// Node id of the remux its replies leave through.
    pub remux: NodeId,
    /// A name for people.
    pub name: Option<String>,
}

/// A forwarder node: the union of its roles, and its static routes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Node {
    /// Roles it plays.
    pub roles: BTreeSet<Role>,
    /// Routes included in every table set compiled for it.
    pub routes: Vec<Route>,
    /// Its WireGuard public key: a hello must announce it.
    pub wireguard_key: Option<WgKey>,
    /// Its metrics endpoint (`host:port` or `http://host:port`), for `tarpctl top`.
    pub metrics: Option<String>,
}

/// The checked inventory: every reference resolves, nothing is listed twice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inventory {
    /// Region names, in file order.
    pub regions: Vec<String>,
    /// POPs, in file order.
    pub pops: Vec<Pop>,
    /// Aggregators, in file order.
    pub aggregators: Vec<Aggregator>,
    /// Demux nodes.
    pub demuxes: Vec<Demux>,
    /// Remux node ids.
    pub remuxes: Vec<NodeId>,
    /// Remux node -> its tunnel endpoint for symmetric return.
    pub return_locals: BTreeMap<NodeId, IpAddr>,
    /// Application hosts.
    pub app_hosts: Vec<AppHost>,
    /// Every node by id.
    pub nodes: BTreeMap<NodeId, Node>,
    /// Capture address -> (aggregator, line) positions, for [`Inventory::capture`].
    captures: std::collections::HashMap<IpAddr, (usize, usize)>,
}

/// The whole configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// `[keeper]`.
    pub settings: Settings,
    /// Everything else.
    pub inventory: Inventory,
}

impl Config {
    /// Reads and checks a configuration file. A relative `db` path, and a relative
    /// `unix:` listen path, are resolved against the file's folder.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: name.clone(),
            source,
        })?;
        let mut config = Config::parse(&name, &text)?;
        if let Some(dir) = path.parent() {
            let settings = &mut config.settings;
            if settings.db.is_relative() {
                settings.db = dir.join(&settings.db);
            }
            if let ListenAddr::Unix(socket) = &mut settings.listen {
                if socket.is_relative() {
                    *socket = dir.join(&*socket);
                }
            }
            if let Some(tls) = &mut settings.tls {
                for p in [&mut tls.cert, &mut tls.key, &mut tls.client_ca] {
                    if p.is_relative() {
                        *p = dir.join(&*p);
                    }
                }
            }
        }
        Ok(config)
    }

    /// Parses and checks configuration text; `name` is used in error messages.
    pub fn parse(name: &str, text: &str) -> Result<Config, ConfigError> {
        let file: File = toml::from_str(text).map_err(|e| {
            let (line, column) = e
                .span()
                .map(|s| line_column(text, s.start))
                .unwrap_or((1, 1));
            ConfigError::Syntax {
                path: name.to_string(),
                line,
                column,
                message: e.message().replace('\n', " "),
            }
        })?;
        let invalid = |key: String, problem: String| ConfigError::Invalid {
            path: name.to_string(),
            key,
            problem,
        };
        let settings = check_settings(file.keeper).map_err(|(k, p)| invalid(k, p))?;
        let inventory = Inventory::build(
            file.regions,
            file.pops,
            file.nodes,
            file.aggregators,
            file.demuxes,
            file.remuxes,
            file.app_hosts,
        )
        .map_err(|(k, p)| invalid(k, p))?;
        Ok(Config {
            settings,
            inventory,
        })
    }
}

fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, column)
}

type Invalid = (String, String);

fn check_settings(s: RawSettings) -> Result<Settings, Invalid> {
    let positive = [
        ("keeper.ack_timeout_ms", s.ack_timeout_ms),
        ("keeper.heartbeat_interval_ms", s.heartbeat_interval_ms),
        ("keeper.heartbeat_timeout_ms", s.heartbeat_timeout_ms),
        ("keeper.max_port_range", u64::from(s.max_port_range)),
        ("keeper.min_lease_ms", s.min_lease_ms),
        ("keeper.flap_half_life_ms", s.flap_half_life_ms),
        ("keeper.flap_reuse", u64::from(s.flap_reuse)),
    ];
    for (key, v) in positive {
        if v == 0 {
            return Err((key.into(), "must be greater than 0".into()));
        }
    }
    if s.heartbeat_timeout_ms <= s.heartbeat_interval_ms {
        return Err((
            "keeper.heartbeat_timeout_ms".into(),
            format!(
                "must be longer than heartbeat_interval_ms ({})",
                s.heartbeat_interval_ms
            ),
        ));
    }
    if s.max_lease_ms < s.min_lease_ms {
        return Err((
            "keeper.max_lease_ms".into(),
            format!("must be at least min_lease_ms ({})", s.min_lease_ms),
        ));
    }
    if s.flap_suppress <= s.flap_reuse {
        return Err((
            "keeper.flap_suppress".into(),
            format!("must be above flap_reuse ({})", s.flap_reuse),
        ));
    }
    if s.db.as_os_str().is_empty() {
        return Err(("keeper.db".into(), "empty path".into()));
    }
    let listen = s
        .listen
        .parse::<ListenAddr>()
        .map_err(|problem| ("keeper.listen".to_string(), problem))?;
    if let (ListenAddr::Tcp(a), None) = (&listen, &s.tls) {
        if !a.ip().is_loopback() {
            return Err((
                "keeper.listen".into(),
                format!("{a} is not a loopback address: plaintext gRPC is only for loopback and Unix sockets; set [keeper.tls]"),
            ));
        }
    }
    let plaintext_identity = match &s.plaintext_identity {
        None => None,
        Some(_) if s.tls.is_some() => {
            return Err((
                "keeper.plaintext_identity".into(),
                "only without [keeper.tls]: with TLS every caller's certificate names it".into(),
            ))
        }
        Some(text) => match Identity::parse(text) {
            Ok(Identity::Node(_)) => {
                return Err((
                    "keeper.plaintext_identity".into(),
                    format!("{text:?}: operator/NAME or app/NAME (a node identity comes with its certificate)"),
                ))
            }
            Ok(id) => Some(id),
            Err(e) => return Err(("keeper.plaintext_identity".into(), e)),
        },
    };
    if s.socket_mode > 0o777 || s.socket_mode & 0o600 != 0o600 {
        return Err((
            "keeper.socket_mode".into(),
            format!(
                "{:#o}: a file mode (at most 0o777) that lets the keeper's own user read and write",
                s.socket_mode
            ),
        ));
    }
    if s.socket_group.as_deref() == Some("") {
        return Err(("keeper.socket_group".into(), "empty group name".into()));
    }
    let metrics = match &s.metrics {
        None => None,
        Some(text) => Some(text.parse::<std::net::SocketAddr>().map_err(|e| {
            (
                "keeper.metrics".to_string(),
                format!("{text:?}: {e} (an address and port, e.g. 127.0.0.1:9400)"),
            )
        })?),
    };
    Ok(Settings {
        listen,
        db: s.db,
        ack_timeout_ms: s.ack_timeout_ms,
        heartbeat_interval_ms: s.heartbeat_interval_ms,
        heartbeat_timeout_ms: s.heartbeat_timeout_ms,
        max_port_range: s.max_port_range,
        min_lease_ms: s.min_lease_ms,
        max_lease_ms: s.max_lease_ms,
        retention_ms: s.retention_ms,
        quarantine_ms: s.quarantine_ms,
        flap_half_life_ms: s.flap_half_life_ms,
        flap_suppress: s.flap_suppress,
        flap_reuse: s.flap_reuse,
        tls: s.tls,
        plaintext_identity,
        socket_mode: s.socket_mode,
        socket_group: s.socket_group,
        metrics,
    })
}

/// Expands a pool entry: an address, or a prefix (IPv4 network and broadcast addresses
/// left out for prefixes shorter than /31).
fn expand_pool(key: &str, entry: &str) -> Result<Vec<IpAddr>, Invalid> {
    if entry.contains('/') {
        let net: IpNet = entry.parse().map_err(|_| {
            (
                key.to_string(),
                format!("{entry:?} is not an address or prefix"),
            )
        })?;
        let size: u128 = match net {
            IpNet::V4(n) => 1u128 << (32 - n.prefix_len()),
            IpNet::V6(n) => 1u128
                .checked_shl(u32::from(128 - n.prefix_len()))
                .unwrap_or(u128::MAX),
        };
        if size > MAX_POOL_PREFIX {
            return Err((
                key.to_string(),
                format!("{net} holds more than {MAX_POOL_PREFIX} addresses; list smaller prefixes"),
            ));
        }
        Ok(net.hosts().collect())
    } else {
        entry.parse::<IpAddr>().map(|a| vec![a]).map_err(|_| {
            (
                key.to_string(),
                format!("{entry:?} is not an address or prefix"),
            )
        })
    }
}

fn check_name(key: String, name: &str) -> Result<(), Invalid> {
    if name.is_empty() {
        return Err((key, "empty name".into()));
    }
    Ok(())
}

impl Inventory {
    #[allow(clippy::too_many_arguments)]
    fn build(
        regions: Vec<RegionEntry>,
        pops: Vec<PopEntry>,
        nodes: Vec<NodeEntry>,
        aggregators: Vec<AggregatorEntry>,
        demuxes: Vec<DemuxEntry>,
        remuxes: Vec<RemuxEntry>,
        app_hosts: Vec<AppHostEntry>,
    ) -> Result<Inventory, Invalid> {
        let mut inv = Inventory {
            regions: Vec::new(),
            pops: Vec::new(),
            aggregators: Vec::new(),
            demuxes: Vec::new(),
            remuxes: Vec::new(),
            return_locals: BTreeMap::new(),
            app_hosts: Vec::new(),
            nodes: BTreeMap::new(),
            captures: std::collections::HashMap::new(),
        };
        if regions.is_empty() {
            return Err(("regions".into(), "at least one region is needed".into()));
        }
        for (i, r) in regions.into_iter().enumerate() {
            check_name(format!("regions[{i}].name"), &r.name)?;
            if inv.regions.contains(&r.name) {
                return Err((
                    format!("regions[{i}].name"),
                    format!("region {:?} listed twice", r.name),
                ));
            }
            inv.regions.push(r.name);
        }
        for (i, p) in pops.into_iter().enumerate() {
            check_name(format!("pops[{i}].name"), &p.name)?;
            if inv.pop(&p.name).is_some() {
                return Err((
                    format!("pops[{i}].name"),
                    format!("POP {:?} listed twice", p.name),
                ));
            }
            if !inv.regions.contains(&p.region) {
                return Err((
                    format!("pops[{i}].region"),
                    format!("unknown region {:?}", p.region),
                ));
            }
            inv.pops.push(Pop {
                name: p.name,
                region: p.region,
            });
        }

        // Roles first, so that every reference below can be checked against them.
        let mut add_role = |key: String, node: &str, role: Role| -> Result<(), Invalid> {
            check_name(key.clone(), node)?;
            let entry = inv.nodes.entry(node.to_string()).or_default();
            if !entry.roles.insert(role) {
                return Err((key, format!("node {node:?} listed twice as {role}")));
            }
            Ok(())
        };
        for (i, d) in demuxes.iter().enumerate() {
            add_role(format!("demuxes[{i}].node"), &d.node, Role::Demux)?;
        }
        for (i, r) in remuxes.iter().enumerate() {
            add_role(format!("remuxes[{i}].node"), &r.node, Role::Remux)?;
        }
        for (i, a) in aggregators.iter().enumerate() {
            add_role(format!("aggregators[{i}].node"), &a.node, Role::Aggregator)?;
        }

        let mut aliases_seen: BTreeMap<IpAddr, String> = BTreeMap::new();
        for (i, d) in demuxes.into_iter().enumerate() {
            let mut aliases = Vec::new();
            for (j, entry) in d.aliases.iter().enumerate() {
                let key = format!("demuxes[{i}].aliases[{j}]");
                for a in expand_pool(&key, entry)? {
                    if let Some(other) = aliases_seen.insert(a, d.node.clone()) {
                        return Err((
                            key,
                            format!("alias {a} is already in the pool of demux {other:?}"),
                        ));
                    }
                    aliases.push(a);
                }
            }
            if aliases.is_empty() {
                return Err((format!("demuxes[{i}].aliases"), "empty alias pool".into()));
            }
            inv.demuxes.push(Demux {
                node: d.node,
                aliases,
            });
        }
        for r in &remuxes {
            if let Some(a) = r.tunnel_local {
                inv.return_locals.insert(r.node.clone(), a);
            }
        }
        inv.remuxes = remuxes.into_iter().map(|r| r.node).collect();

        let mut captures_seen: BTreeMap<IpAddr, String> = BTreeMap::new();
        let mut wireguard = Vec::new();
        for (i, a) in aggregators.into_iter().enumerate() {
            let region = match inv.pop(&a.pop) {
                Some(p) => p.region.clone(),
                None => {
                    return Err((
                        format!("aggregators[{i}].pop"),
                        format!("unknown POP {:?}", a.pop),
                    ))
                }
            };
            if inv.demux(&a.tunnel.demux).is_none() {
                return Err((
                    format!("aggregators[{i}].tunnel.demux"),
                    format!("{:?} is not a demux node", a.tunnel.demux),
                ));
            }
            if a.tunnel.vni >= 1 << 24 {
                return Err((
                    format!("aggregators[{i}].tunnel.vni"),
                    format!("{} does not fit in 24 bits", a.tunnel.vni),
                ));
            }
            if a.tunnel.local.is_ipv4() != a.tunnel.remote.is_ipv4() {
                return Err((
                    format!("aggregators[{i}].tunnel.remote"),
                    "local and remote differ in address family".into(),
                ));
            }
            if a.lines.is_empty() {
                return Err((
                    format!("aggregators[{i}].lines"),
                    "an aggregator needs at least one line".into(),
                ));
            }
            let mut lines: Vec<Line> = Vec::new();
            for (j, l) in a.lines.into_iter().enumerate() {
                check_name(format!("aggregators[{i}].lines[{j}].name"), &l.name)?;
                if lines.iter().any(|x| x.name == l.name) {
                    return Err((
                        format!("aggregators[{i}].lines[{j}].name"),
                        format!("line {:?} listed twice", l.name),
                    ));
                }
                let mut captures = Vec::new();
                for (k, entry) in l.captures.iter().enumerate() {
                    let key = format!("aggregators[{i}].lines[{j}].captures[{k}]");
                    for c in expand_pool(&key, entry)? {
                        let here = format!("{} line {}", a.node, l.name);
                        if let Some(other) = captures_seen.insert(c, here) {
                            return Err((
                                key,
                                format!("capture address {c} is already on {other}"),
                            ));
                        }
                        if aliases_seen.contains_key(&c) {
                            return Err((key, format!("{c} is also a demux alias")));
                        }
                        captures.push(c);
                    }
                }
                if captures.is_empty() {
                    return Err((
                        format!("aggregators[{i}].lines[{j}].captures"),
                        "a line needs capture addresses".into(),
                    ));
                }
                lines.push(Line {
                    gateway: l.gateway,
                    name: l.name,
                    captures,
                });
            }
            inv.aggregators.push(Aggregator {
                node: a.node,
                pop: a.pop,
                region,
                tunnel: Tunnel {
                    id: a.tunnel.id,
                    local: a.tunnel.local,
                    remote: a.tunnel.remote,
                    vni: a.tunnel.vni,
                    inner_dst_mac: a.tunnel.inner_dst_mac,
                    mtu: a.tunnel.mtu,
                    wireguard: None,
                },
                demux: a.tunnel.demux,
                lines,
            });
            wireguard.push(a.tunnel.wireguard);
        }

        for (i, h) in app_hosts.into_iter().enumerate() {
            if inv.app_host(h.address).is_some() {
                return Err((
                    format!("app_hosts[{i}].address"),
                    format!("app host {} listed twice", h.address),
                ));
            }
            if captures_seen.contains_key(&h.address) || aliases_seen.contains_key(&h.address) {
                return Err((
                    format!("app_hosts[{i}].address"),
                    format!("{} is also a capture address or alias", h.address),
                ));
            }
            if !inv.remuxes.contains(&h.remux) {
                return Err((
                    format!("app_hosts[{i}].remux"),
                    format!("{:?} is not a remux node", h.remux),
                ));
            }
            inv.app_hosts.push(AppHost {
                address: h.address,
                remux: h.remux,
                name: h.name,
            });
        }

        let mut routed = BTreeSet::new();
        for (i, n) in nodes.into_iter().enumerate() {
            let Some(node) = inv.nodes.get_mut(&n.id) else {
                return Err((
                    format!("nodes[{i}].id"),
                    format!("node {:?} is not an aggregator, demux or remux", n.id),
                ));
            };
            if !routed.insert(n.id.clone()) {
                return Err((
                    format!("nodes[{i}].id"),
                    format!("node {:?} listed twice", n.id),
                ));
            }
            for (j, r) in n.routes.iter().enumerate() {
                if r.port.is_empty() {
                    return Err((
                        format!("nodes[{i}].routes[{j}].port"),
                        "empty port name".into(),
                    ));
                }
                if let Some(via) = r.via {
                    if via.is_ipv4() != matches!(r.prefix, IpNet::V4(_)) {
                        return Err((
                            format!("nodes[{i}].routes[{j}].via"),
                            "gateway and prefix differ in address family".into(),
                        ));
                    }
                }
            }
            node.routes = n.routes;
            node.wireguard_key = n.wireguard_key;
            node.metrics = n.metrics;
        }
        for (i, wg) in wireguard.into_iter().enumerate() {
            if !wg {
                continue;
            }
            let agg = &inv.aggregators[i];
            for n in [&agg.node, &agg.demux] {
                if inv.nodes.get(n).and_then(|n| n.wireguard_key).is_none() {
                    return Err((
                        format!("aggregators[{i}].tunnel.wireguard"),
                        format!("node {n:?} has no wireguard_key in [[nodes]]"),
                    ));
                }
            }
            // The demux answers handshakes through its tunnel back: it needs a route.
            let back = agg.tunnel.local;
            if !inv.nodes[&agg.demux]
                .routes
                .iter()
                .any(|r| r.prefix.contains(&back))
            {
                return Err((
                    format!("aggregators[{i}].tunnel.wireguard"),
                    format!(
                        "the demux {:?} has no route to {back} (add one to its [[nodes]] routes: it answers WireGuard handshakes there)",
                        agg.demux
                    ),
                ));
            }
            let demux_key = inv.nodes[&agg.demux].wireguard_key;
            let agg = &mut inv.aggregators[i];
            agg.tunnel.wireguard = demux_key.map(|public_key| WireGuard {
                public_key,
                port: WG_PORT,
                listen_port: WG_PORT,
                // The POP's end, behind a consumer line, keeps the session up.
                keepalive: Some(25),
            });
            agg.tunnel.vni = 0;
        }
        for (a, agg) in inv.aggregators.iter().enumerate() {
            for (l, line) in agg.lines.iter().enumerate() {
                for &c in &line.captures {
                    inv.captures.insert(c, (a, l));
                }
            }
        }
        Ok(inv)
    }

    /// A POP by name.
    pub fn pop(&self, name: &str) -> Option<&Pop> {
        self.pops.iter().find(|p| p.name == name)
    }

    /// An aggregator by node id.
    pub fn aggregator(&self, node: &str) -> Option<&Aggregator> {
        self.aggregators.iter().find(|a| a.node == node)
    }

    /// A demux by node id.
    pub fn demux(&self, node: &str) -> Option<&Demux> {
        self.demuxes.iter().find(|d| d.node == node)
    }

    /// An application host by address.
    pub fn app_host(&self, address: IpAddr) -> Option<&AppHost> {
        self.app_hosts.iter().find(|h| h.address == address)
    }

    /// The aggregator and line a capture address is on.
    pub fn capture(&self, address: IpAddr) -> Option<(&Aggregator, &Line)> {
        let &(a, l) = self.captures.get(&address)?;
        let agg = self.aggregators.get(a)?;
        Some((agg, agg.lines.get(l)?))
    }

    /// The aggregators of one POP, in file order.
    pub fn aggregators_at<'a>(&'a self, pop: &'a str) -> impl Iterator<Item = &'a Aggregator> + 'a {
        self.aggregators.iter().filter(move |a| a.pop == pop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = include_str!("../examples/keeper.toml");

    fn err(text: &str) -> String {
        Config::parse("k.toml", text).unwrap_err().to_string()
    }

    #[test]
    fn example_parses() {
        let c = Config::parse("keeper.toml", GOOD).unwrap();
        let inv = &c.inventory;
        assert_eq!(inv.regions, ["eu", "us"]);
        let (agg, line) = inv.capture("203.0.113.2".parse().unwrap()).unwrap();
        assert_eq!(
            (agg.node.as_str(), line.name.as_str()),
            ("pop-ams-1", "line0")
        );
        assert!(inv.nodes["dc-1"].roles.contains(&Role::Demux));
        assert!(inv.nodes["dc-1"].roles.contains(&Role::Remux));
        // 198.18.0.0/28 without network and broadcast.
        assert_eq!(inv.demux("dc-1").unwrap().aliases.len(), 14);
    }

    #[test]
    fn unknown_key_is_named_with_its_line() {
        let text = GOOD.replacen("[keeper]", "[keeper]\nlisten_on = \"127.0.0.1:1\"", 1);
        let e = err(&text);
        assert!(e.starts_with("k.toml:"), "{e}");
        assert!(e.contains("unknown field `listen_on`"), "{e}");
        assert!(!e.contains('\n'), "{e}");
    }

    fn with_listen(value: &str) -> String {
        let line = "listen = \"127.0.0.1:50551\"";
        assert_eq!(GOOD.matches(line).count(), 1);
        GOOD.replacen(line, &format!("listen = {value}"), 1)
    }

    #[test]
    fn listen_is_tcp_or_a_unix_socket() {
        let c = Config::parse("k.toml", GOOD).unwrap();
        assert_eq!(
            c.settings.listen,
            ListenAddr::Tcp("127.0.0.1:50551".parse().unwrap())
        );
        for value in [
            "\"unix:/run/tarp/keeper.sock\"",
            "\"unix:///run/tarp/keeper.sock\"",
        ] {
            let c = Config::parse("k.toml", &with_listen(value)).unwrap();
            assert_eq!(
                c.settings.listen,
                ListenAddr::Unix("/run/tarp/keeper.sock".into()),
                "{value}"
            );
        }
        let c = Config::parse("k.toml", &with_listen("\"[::1]:7000\"")).unwrap();
        assert_eq!(c.settings.listen.endpoint(), "http://[::1]:7000");
        // Left out: the default.
        let c = Config::parse(
            "k.toml",
            &GOOD.replacen("listen = \"127.0.0.1:50551\"", "", 1),
        )
        .unwrap();
        assert_eq!(c.settings.listen, ListenAddr::default());
    }

    #[test]
    fn bad_listen_is_named() {
        for (value, problem) in [
            (
                "\"localhost:50551\"",
                "\"localhost:50551\" is neither IP:PORT",
            ),
            (
                "\"http://127.0.0.1:50551\"",
                "is neither IP:PORT (e.g. 127.0.0.1:50551) nor unix:/PATH",
            ),
            ("\"unix:\"", "empty socket path after \"unix:\""),
            ("\"unix:/run/tarp/\"", "names a directory"),
        ] {
            let e = err(&with_listen(value));
            assert!(e.starts_with("k.toml: keeper.listen: "), "{value}: {e}");
            assert!(e.contains(problem), "{value}: {e}");
            assert!(!e.contains('\n'), "{value}: {e}");
        }
        // Not a string: the parser names the line.
        let e = err(&with_listen("50551"));
        assert!(e.starts_with("k.toml:"), "{e}");
        assert!(!e.contains('\n'), "{e}");
        // Settings deserialized on their own check the same way.
        let e = toml::from_str::<Settings>("listen = \"nowhere\"").unwrap_err();
        assert!(
            e.message()
                .contains("keeper.listen: \"nowhere\" is neither"),
            "{e}"
        );
        let s: Settings = toml::from_str("listen = \"unix:/k.sock\"").unwrap();
        assert_eq!(s.listen, ListenAddr::Unix("/k.sock".into()));
    }

    #[test]
    fn relative_socket_path_is_taken_from_the_config_folder() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("keeper.toml");
        std::fs::write(&file, with_listen("\"unix:run/keeper.sock\"")).unwrap();
        let c = Config::load(&file).unwrap();
        assert_eq!(
            c.settings.listen,
            ListenAddr::Unix(dir.path().join("run/keeper.sock"))
        );
        std::fs::write(&file, with_listen("\"unix:/run/tarp/keeper.sock\"")).unwrap();
        let c = Config::load(&file).unwrap();
        assert_eq!(
            c.settings.listen,
            ListenAddr::Unix("/run/tarp/keeper.sock".into())
        );
    }

    #[test]
    fn bad_references_are_named() {
        let text = GOOD.replacen("region = \"eu\"", "region = \"mars\"", 1);
        assert_eq!(
            err(&text),
            "k.toml: pops[0].region: unknown region \"mars\""
        );
        let text = GOOD.replacen("demux = \"dc-1\"", "demux = \"dc-9\"", 1);
        assert_eq!(
            err(&text),
            "k.toml: aggregators[0].tunnel.demux: \"dc-9\" is not a demux node"
        );
        let text = GOOD.replacen("\"203.0.113.16/30\"", "\"203.0.113.2\"", 1);
        assert!(
            err(&text).contains("capture address 203.0.113.2 is already on pop-ams-1 line line0"),
            "{}",
            err(&text)
        );
        let text = GOOD.replacen("heartbeat_timeout_ms = 5000", "heartbeat_timeout_ms = 0", 1);
        assert_eq!(
            err(&text),
            "k.toml: keeper.heartbeat_timeout_ms: must be greater than 0"
        );
    }
}
