//! The forwarder's TOML configuration: EAL arguments, workers, ports with their roles,
//! addresses and static neighbours, static [`Rules`], and where to serve metrics.
//!
//! Every struct rejects unknown keys, and every error names the key it is about, so that
//! a bad config is refused with one line.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use serde::Deserialize;

use crate::packet::MacAddr;
use crate::tables::{Role, Rules};

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Name of this forwarder (the keeper's node id; used in logs and metrics).
    pub node_id: String,
    /// DPDK environment.
    #[serde(default)]
    pub eal: EalConfig,
    /// Worker lcores and their polling policy.
    pub workers: WorkersConfig,
    /// Ports, in the order that gives them their [`crate::tables::PortId`].
    pub ports: Vec<PortConfig>,
    /// Static rules: a forwarder runs on them with no keeper at all.
    #[serde(default)]
    pub rules: Rules,
    /// Static rules from a file of their own instead of `[rules]`: JSON (`.json`, the
    /// fields of `[rules]` as one object) or TOML (any other name, `[rules]`'s keys at
    /// the top level). For large rule sets: a million circuits load in about a second as
    /// JSON. Relative to the config file's directory.
    #[serde(default)]
    pub rules_file: Option<std::path::PathBuf>,
    /// Address to serve Prometheus metrics on (e.g. `127.0.0.1:9101`).
    #[serde(default)]
    pub metrics: Option<SocketAddr>,
    /// Count this many circuits one by one (`tarp_circuit_packets_total`, at a demux and
    /// a remux), at most 65,536; 0 (the default): none. Bounds the metrics' cardinality.
    #[serde(default)]
    pub circuit_metrics: usize,
    /// The circuit keeper to dial: `https://HOST:PORT` (with `[keeper_tls]`),
    /// `unix:/run/tarp/keeper.sock` (plaintext, or TLS with `[keeper_tls]`), or
    /// `http://127.0.0.1:PORT` (plaintext, loopback only); absent: static rules only.
    #[serde(default)]
    pub keeper: Option<String>,
    /// TLS to the keeper: its CA, and this node's certificate (naming `node/NODE_ID`).
    #[serde(default)]
    pub keeper_tls: Option<KeeperTls>,
    /// Packet buffers.
    #[serde(default)]
    pub mempool: MempoolConfig,
    /// Benchmarking aids (`perf/`); absent in production.
    #[serde(default)]
    pub bench: BenchConfig,
    /// This forwarder's WireGuard identity, for tunnels with `wireguard` set.
    #[serde(default)]
    pub wireguard: Option<WireGuardConfig>,
}

/// `[wireguard]`: the private key of this forwarder's WireGuard tunnels. The peers, their
/// public keys and ports are in the tunnels (`rules.tunnels[].wireguard`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WireGuardConfig {
    /// A file holding the private key in base64 (`wg genkey` writes one); relative to the
    /// config file's folder. It should be readable by the forwarder alone.
    pub private_key_file: std::path::PathBuf,
}

impl WireGuardConfig {
    /// Reads the private key. The error names the key at fault.
    pub fn private_key(&self) -> Result<[u8; 32], ConfigError> {
        let key = "wireguard.private_key_file";
        let text = std::fs::read_to_string(&self.private_key_file).map_err(|e| {
            ConfigError::new(
                key,
                format!("cannot read {}: {e}", self.private_key_file.display()),
            )
        })?;
        let k: tarp_api::rules::WgKey = text.parse().map_err(|e| {
            ConfigError::new(key, format!("{}: {e}", self.private_key_file.display()))
        })?;
        Ok(k.0)
    }
}

/// `[keeper_tls]`: TLS to the keeper. Relative paths are taken from the config file's
/// folder.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeeperTls {
    /// The CA that signed the keeper's certificate (and this node's).
    pub ca: std::path::PathBuf,
    /// This node's certificate (`tarp-keeper certs node NODE_ID`).
    pub cert: std::path::PathBuf,
    /// Its key.
    pub key: std::path::PathBuf,
    /// The name to check on the keeper's certificate (default: the endpoint's host, or
    /// `tarp-keeper` over a Unix socket).
    #[serde(default)]
    pub server_name: Option<String>,
}

/// Packet buffers (one DPDK mempool per NUMA socket).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MempoolConfig {
    /// Bytes of packet per buffer; a received frame must fit one. Absent: 2048, or the
    /// largest port MTU plus 18 if that is more. Raise it for devices that hand up
    /// frames larger than the link MTU: `net_af_packet` reassembles IPv4 fragments
    /// (`PACKET_FANOUT_FLAG_DEFRAG`), so a port on it can receive whole datagrams.
    #[serde(default)]
    pub data_room: Option<u16>,
    /// Buffers in the pool; absent (or fewer): enough for every queue's descriptors plus
    /// bursts in flight. Raise it for devices that keep buffers of their own, such as
    /// `net_pcap` with `infinite_rx`, which holds every frame of its file.
    #[serde(default)]
    pub buffers: Option<u32>,
}

/// `[bench]`: what perf runs need and production does not.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BenchConfig {
    /// Rebuild the tables from the static rules and swap them in this many times a
    /// second, through the same path as the keeper's table sets (build, one pointer
    /// swap, release on the control thread), to measure swaps under load.
    #[serde(default)]
    pub swaps_per_second: Option<f64>,
}

/// EAL arguments.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EalConfig {
    /// Extra EAL arguments, e.g. `["--in-memory"]` or `["--no-huge", "-m", "256"]`.
    /// The forwarder adds `-l`, `--vdev`/`-a` for its ports and `--no-pci` when no port
    /// is a PCI device.
    #[serde(default)]
    pub args: Vec<String>,
    /// The lcore of the main (control) thread.
    #[serde(default)]
    pub main_lcore: u32,
}

/// How workers poll.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IdlePolicy {
    /// Poll without pause (a dedicated core per worker: production).
    #[default]
    Busy,
    /// After a run of empty polls, sleep a little longer each time, up to a bound, as
    /// DPDK's `l3fwd-power` does; lets several forwarders share a small machine.
    Backoff,
}

/// Worker lcores.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkersConfig {
    /// One pinned worker per lcore; each polls one RX queue of every port.
    pub lcores: Vec<u32>,
    /// Polling policy.
    #[serde(default)]
    pub idle: IdlePolicy,
}

/// A static neighbour: the MAC of an address on a port's link.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NeighbourConfig {
    /// Neighbour address.
    pub address: IpAddr,
    /// Its MAC.
    pub mac: MacAddr,
}

/// One port.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortConfig {
    /// Name used by routes, lines and metrics.
    pub name: String,
    /// DPDK device: a PCI address (`0000:03:00.0`) or a virtual device string
    /// (`net_af_packet0,iface=veth1`, `net_pcap0,rx_pcap=in.pcap,tx_pcap=out.pcap`).
    pub device: String,
    /// Which pipeline handles what this port receives.
    pub role: Role,
    /// The port's own addresses (answered by ARP/ND and ping; tunnel endpoints).
    #[serde(default)]
    pub addresses: Vec<IpAddr>,
    /// Static neighbours (no ARP/ND needed for them).
    #[serde(default)]
    pub neighbours: Vec<NeighbourConfig>,
    /// Override the device's MAC as the source of what the port sends.
    #[serde(default)]
    pub mac: Option<MacAddr>,
    /// Descriptors per RX queue.
    #[serde(default = "default_desc")]
    pub rx_desc: u16,
    /// Descriptors per TX queue.
    #[serde(default = "default_desc")]
    pub tx_desc: u16,
    /// The largest IP packet the port sends and receives (its link MTU), 1280..=9600.
    /// Above 1500 ("jumbo"), the device must allow it; frames larger than the MTU of the
    /// port they would leave from are dropped and counted (`too_big`), never truncated.
    #[serde(default = "default_mtu")]
    pub mtu: u16,
    /// Clamp the MSS option of TCP SYNs received on this port to what fits the tunnel
    /// (aggregator lines: the tunnel's inner budget; remux: the rules' `inner_mtu`).
    #[serde(default = "default_true")]
    pub clamp_mss: bool,
}

fn default_desc() -> u16 {
    1024
}

fn default_mtu() -> u16 {
    crate::tables::PortInfo::DEFAULT_MTU
}

fn default_true() -> bool {
    true
}

/// The smallest port MTU (IPv6's minimum link MTU, RFC 8200 5).
pub const MIN_MTU: u16 = 1280;
/// The largest port MTU.
pub const MAX_MTU: u16 = 9600;
/// The largest packet buffer (DPDK's data room is a u16 with the headroom added).
pub const MAX_DATA_ROOM: u16 = 65535 - 128;

impl PortConfig {
    /// What the snapshot builder needs to know about the port, with MAC `mac`.
    pub fn info(&self, mac: MacAddr) -> crate::tables::PortInfo {
        crate::tables::PortInfo {
            name: self.name.clone(),
            role: self.role,
            mac,
            addrs: self.addresses.clone(),
            mtu: self.mtu,
            clamp_mss: self.clamp_mss,
        }
    }

    /// True if the device is a PCI address rather than a virtual device.
    pub fn is_pci(&self) -> bool {
        let d = self.device.as_str();
        // dddd:bb:dd.f or bb:dd.f
        let parts: Vec<&str> = d.split([':', '.']).collect();
        (parts.len() == 4 || parts.len() == 3)
            && parts
                .iter()
                .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_hexdigit()))
    }

    /// The DPDK name of the device: the part of a vdev string before the first comma.
    pub fn device_name(&self) -> &str {
        self.device.split(',').next().unwrap_or(&self.device)
    }
}

/// A config that cannot be used, naming the key at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct ConfigError {
    /// Dotted path of the key, e.g. `ports[1].role`.
    pub key: String,
    /// What is wrong with it.
    pub message: String,
}

impl ConfigError {
    fn new(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// The most buffers `mempool.buffers` may ask for (4 GiB of 2 KiB buffers).
const MAX_BUFFERS: u32 = 1 << 21;

/// Reads a `rules_file`; the error names the file and the key at fault.
fn load_rules(path: &Path) -> Result<Rules, ConfigError> {
    let key = |inner: String| {
        if inner.is_empty() || inner == "." {
            "rules_file".to_string()
        } else {
            format!("rules_file: {inner}")
        }
    };
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigError::new("rules_file", format!("cannot read {}: {e}", path.display()))
    })?;
    if path.extension().is_some_and(|e| e == "json") {
        let de = &mut serde_json::Deserializer::from_str(&text);
        serde_path_to_error::deserialize(de).map_err(|e| {
            let k = key(e.path().to_string());
            ConfigError::new(k, e.into_inner().to_string())
        })
    } else {
        let de = toml::Deserializer::new(&text);
        serde_path_to_error::deserialize(de).map_err(|e| {
            let k = key(e.path().to_string());
            let inner = e.into_inner();
            let m = inner.message().lines().next().unwrap_or("invalid value");
            ConfigError::new(k, m.to_string())
        })
    }
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::new(path.display().to_string(), format!("cannot read: {e}"))
        })?;
        let mut cfg = Config::parse(&text)?;
        if let Some(f) = &cfg.rules_file {
            let f = match path.parent() {
                Some(dir) if f.is_relative() => dir.join(f),
                _ => f.clone(),
            };
            cfg.rules = load_rules(&f)?;
            cfg.validate_rules()?;
        }
        if let (Some(dir), Some(tls)) = (path.parent(), &mut cfg.keeper_tls) {
            for p in [&mut tls.ca, &mut tls.cert, &mut tls.key] {
                if p.is_relative() {
                    *p = dir.join(&*p);
                }
            }
        }
        if let (Some(dir), Some(wg)) = (path.parent(), &mut cfg.wireguard) {
            if wg.private_key_file.is_relative() {
                wg.private_key_file = dir.join(&wg.private_key_file);
            }
        }
        Ok(cfg)
    }

    /// How to dial the keeper (`None`: no keeper), its TLS files read. The error names
    /// the key at fault.
    pub fn keeper_dial(&self) -> Result<Option<tarp_api::endpoint::Dial>, ConfigError> {
        use tarp_api::endpoint::{ClientTls, Dial};
        let Some(endpoint) = &self.keeper else {
            return Ok(None);
        };
        let Some(t) = &self.keeper_tls else {
            return Ok(Some(Dial::plain(endpoint.as_str())));
        };
        let tls =
            ClientTls::from_files(&t.ca, Some(&t.cert), Some(&t.key), t.server_name.as_deref())
                .map_err(|e| ConfigError::new("keeper_tls", e))?;
        Ok(Some(Dial::tls(endpoint.as_str(), tls)))
    }

    /// Parses and validates a config from TOML text.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let de = toml::Deserializer::new(text);
        let config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            // toml's message carries a multi-line snippet; keep its first line.
            let inner = e.into_inner();
            let message = inner
                .message()
                .lines()
                .next()
                .unwrap_or("invalid value")
                .to_string();
            ConfigError::new(
                if key == "." {
                    "(top level)".to_string()
                } else {
                    key
                },
                message,
            )
        })?;
        config.validate()?;
        Ok(config)
    }

    /// The checks that involve the rules (again after a `rules_file` is read).
    fn validate_rules(&self) -> Result<(), ConfigError> {
        if let Some(i) = self
            .rules
            .tunnels
            .iter()
            .position(|t| t.wireguard.is_some())
        {
            if self.wireguard.is_none() {
                return Err(ConfigError::new(
                    format!("rules.tunnels[{i}].wireguard"),
                    "a WireGuard tunnel needs [wireguard] private_key_file",
                ));
            }
        }
        Ok(())
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.rules_file.is_some() && self.rules != Rules::default() {
            return Err(ConfigError::new(
                "rules_file",
                "rules come from [rules] or from rules_file, not both",
            ));
        }
        self.validate_rules()?;
        if let Some(b) = self.mempool.buffers {
            if !(1..=MAX_BUFFERS).contains(&b) {
                return Err(ConfigError::new(
                    "mempool.buffers",
                    format!("{b} is not in 1..={MAX_BUFFERS}"),
                ));
            }
        }
        if self.bench.swaps_per_second.is_some() && self.keeper.is_some() {
            return Err(ConfigError::new(
                "bench.swaps_per_second",
                "the keeper is the table source; bench swaps are for static rules only",
            ));
        }
        if let Some(r) = self.bench.swaps_per_second {
            if !(r > 0.0 && r <= 10_000.0) {
                return Err(ConfigError::new(
                    "bench.swaps_per_second",
                    format!("{r} is not in (0, 10000]"),
                ));
            }
        }
        if self.node_id.trim().is_empty() {
            return Err(ConfigError::new("node_id", "must not be empty"));
        }
        if self.circuit_metrics > crate::tables::counted::MAX_COUNTED {
            return Err(ConfigError::new(
                "circuit_metrics",
                format!(
                    "{} circuits; at most {} are counted one by one",
                    self.circuit_metrics,
                    crate::tables::counted::MAX_COUNTED
                ),
            ));
        }
        if self.wireguard.is_some() && self.workers.lcores.len() > 1 {
            return Err(ConfigError::new(
                "wireguard",
                "WireGuard tunnels need exactly one worker lcore (a peer's session belongs to one worker); run one forwarder per core",
            ));
        }
        if self.workers.lcores.is_empty() {
            return Err(ConfigError::new(
                "workers.lcores",
                "needs at least one lcore",
            ));
        }
        let mut seen = HashSet::new();
        for &l in &self.workers.lcores {
            if l == self.eal.main_lcore {
                return Err(ConfigError::new(
                    "workers.lcores",
                    format!("lcore {l} is the main lcore"),
                ));
            }
            if !seen.insert(l) {
                return Err(ConfigError::new(
                    "workers.lcores",
                    format!("lcore {l} listed twice"),
                ));
            }
        }
        if self.ports.is_empty() {
            return Err(ConfigError::new("ports", "needs at least one port"));
        }
        let mut names = HashSet::new();
        let mut devices = HashSet::new();
        for (i, p) in self.ports.iter().enumerate() {
            if p.name.is_empty() {
                return Err(ConfigError::new(
                    format!("ports[{i}].name"),
                    "must not be empty",
                ));
            }
            if !names.insert(p.name.as_str()) {
                return Err(ConfigError::new(
                    format!("ports[{i}].name"),
                    format!("{:?} used twice", p.name),
                ));
            }
            if p.device.is_empty() {
                return Err(ConfigError::new(
                    format!("ports[{i}].device"),
                    "must not be empty",
                ));
            }
            if !devices.insert(p.device_name()) {
                return Err(ConfigError::new(
                    format!("ports[{i}].device"),
                    format!("{:?} used twice", p.device_name()),
                ));
            }
            for (j, a) in p.addresses.iter().enumerate() {
                if a.is_unspecified() || a.is_multicast() {
                    return Err(ConfigError::new(
                        format!("ports[{i}].addresses[{j}]"),
                        format!("{a} is not a unicast address"),
                    ));
                }
            }
            if let Some(m) = p.mac {
                if m.is_multicast() || m == MacAddr::ZERO {
                    return Err(ConfigError::new(
                        format!("ports[{i}].mac"),
                        format!("{m} is not a unicast MAC"),
                    ));
                }
            }
            if !(MIN_MTU..=MAX_MTU).contains(&p.mtu) {
                return Err(ConfigError::new(
                    format!("ports[{i}].mtu"),
                    format!("{} is not in {MIN_MTU}..={MAX_MTU}", p.mtu),
                ));
            }
            if !p.rx_desc.is_power_of_two() || !p.tx_desc.is_power_of_two() {
                return Err(ConfigError::new(
                    format!("ports[{i}].rx_desc"),
                    "descriptor counts must be powers of two",
                ));
            }
        }
        if let Some(d) = self.mempool.data_room {
            if !(2048..=MAX_DATA_ROOM).contains(&d) {
                return Err(ConfigError::new(
                    "mempool.data_room",
                    format!("{d} is not in 2048..={MAX_DATA_ROOM}"),
                ));
            }
        }
        if let Some(k) = &self.keeper {
            if !(k.starts_with("http://") || k.starts_with("https://") || k.starts_with("unix:/")) {
                return Err(ConfigError::new(
                    "keeper",
                    format!("{k:?} is neither an http(s):// URL nor unix:/PATH"),
                ));
            }
            if k.starts_with("https://") && self.keeper_tls.is_none() {
                return Err(ConfigError::new(
                    "keeper",
                    format!("{k:?} is https:// but there is no [keeper_tls] (ca, cert, key)"),
                ));
            }
            if k.starts_with("http://") && self.keeper_tls.is_some() {
                return Err(ConfigError::new(
                    "keeper",
                    format!("{k:?} is plaintext http:// but [keeper_tls] is set; use https://"),
                ));
            }
            if let Some(host) = k.strip_prefix("http://") {
                let host = host.split('/').next().unwrap_or_default();
                let host = host.rsplit_once(':').map_or(host, |(h, _)| h);
                let h = host.trim_start_matches('[').trim_end_matches(']');
                let loopback = h == "localhost"
                    || h.parse::<std::net::IpAddr>().is_ok_and(|a| a.is_loopback());
                if !loopback {
                    return Err(ConfigError::new(
                        "keeper",
                        format!("{k:?}: plaintext only to loopback or a Unix socket; use https:// with [keeper_tls]"),
                    ));
                }
            }
        } else if self.keeper_tls.is_some() {
            return Err(ConfigError::new(
                "keeper_tls",
                "set, but there is no keeper to dial",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
        node_id = "pop1"
        metrics = "127.0.0.1:9101"
        [eal]
        args = ["--no-huge", "-m", "256"]
        [workers]
        lcores = [1]
        idle = "backoff"
        [[ports]]
        name = "line0"
        device = "net_af_packet0,iface=veth-line0"
        role = "aggregator"
        addresses = ["203.0.113.1"]
        [[ports]]
        name = "uplink"
        device = "0000:03:00.0"
        role = "aggregator"
        addresses = ["192.0.2.1"]
        neighbours = [{ address = "192.0.2.2", mac = "02:00:00:00:0d:01" }]
        [rules]
        tunnels = [{ id = 1, local = "192.0.2.1", remote = "192.0.2.2", vni = 7 }]
        aggregator = [{ capture = "203.0.113.2", alias = "198.18.0.3", tunnel = 1 }]
        routes = [{ prefix = "192.0.2.0/24", port = "uplink" }]
    "#;

    #[test]
    fn good_config() {
        let c = Config::parse(GOOD).unwrap();
        assert_eq!(c.node_id, "pop1");
        assert_eq!(c.workers.idle, IdlePolicy::Backoff);
        assert_eq!(c.ports.len(), 2);
        assert!(!c.ports[0].is_pci());
        assert!(c.ports[1].is_pci());
        assert_eq!(c.ports[0].device_name(), "net_af_packet0");
        assert_eq!(c.rules.aggregator.len(), 1);
        assert_eq!(
            c.ports[1].neighbours[0].mac,
            "02:00:00:00:0d:01".parse().unwrap()
        );
    }

    fn key_of(text: &str) -> String {
        Config::parse(text).unwrap_err().key
    }

    /// `rules_file`: JSON read relative to the config, the same rules as `[rules]`;
    /// errors name the key; not beside `[rules]`; perf keys checked.
    #[test]
    fn rules_file_and_bench_keys() {
        let dir = std::env::temp_dir().join(format!("tarp-rules-file-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (head, rules) = GOOD.split_once("[rules]").unwrap();
        let inline = Config::parse(GOOD).unwrap().rules;
        std::fs::write(dir.join("r.json"), serde_json::to_string(&inline).unwrap()).unwrap();
        let with_file = format!("rules_file = \"r.json\"\n{head}");
        std::fs::write(dir.join("a.toml"), &with_file).unwrap();
        assert_eq!(Config::load(&dir.join("a.toml")).unwrap().rules, inline);
        // TOML rules files: [rules]'s keys at the top level.
        std::fs::write(dir.join("r.toml"), rules).unwrap();
        std::fs::write(dir.join("b.toml"), with_file.replace("r.json", "r.toml")).unwrap();
        assert_eq!(Config::load(&dir.join("b.toml")).unwrap().rules, inline);
        // A bad value names the file's key.
        std::fs::write(
            dir.join("r.json"),
            r#"{"aggregator":[{"capture":"203.0.113.2","alias":"nope","tunnel":1}]}"#,
        )
        .unwrap();
        let e = Config::load(&dir.join("a.toml")).unwrap_err();
        assert_eq!(e.key, "rules_file: aggregator[0].alias", "{e}");
        std::fs::remove_file(dir.join("r.json")).unwrap();
        let e = Config::load(&dir.join("a.toml")).unwrap_err();
        assert_eq!(e.key, "rules_file");
        assert!(e.message.contains("cannot read"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
        // Both [rules] and rules_file: refused.
        assert_eq!(
            key_of(&format!("rules_file = \"r.json\"\n{GOOD}")),
            "rules_file"
        );
        let with = |extra: &str| {
            let (head, rules) = GOOD.split_once("[rules]").unwrap();
            format!("{head}{extra}\n[rules]{rules}")
        };
        assert!(Config::parse(&with("[mempool]\nbuffers = 262143")).is_ok());
        assert_eq!(key_of(&with("[mempool]\nbuffers = 0")), "mempool.buffers");
        assert_eq!(
            key_of(&with("[mempool]\nbuffers = 4000000")),
            "mempool.buffers"
        );
        assert!(Config::parse(&with("[bench]\nswaps_per_second = 100")).is_ok());
        assert_eq!(
            key_of(&with("[bench]\nswaps_per_second = 0")),
            "bench.swaps_per_second"
        );
        let keeper = with("[bench]\nswaps_per_second = 1").replace(
            "metrics = \"127.0.0.1:9101\"",
            "metrics = \"127.0.0.1:9101\"\nkeeper = \"http://127.0.0.1:50551\"",
        );
        assert_eq!(key_of(&keeper), "bench.swaps_per_second");
    }

    #[test]
    fn wireguard_needs_its_key_file_and_one_worker() {
        const WG_TUNNEL: &str = r#"tunnels = [{ id = 1, local = "192.0.2.1", remote = "192.0.2.2", wireguard = { public_key = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=" } }]"#;
        let wg = GOOD.replace(
            r#"tunnels = [{ id = 1, local = "192.0.2.1", remote = "192.0.2.2", vni = 7 }]"#,
            WG_TUNNEL,
        );
        assert_eq!(key_of(&wg), "rules.tunnels[0].wireguard");
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("wg.key");
        std::fs::write(&key, "iAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHl8=\n").unwrap();
        let with = wg.replace(
            "[rules]",
            &format!(
                "[wireguard]\nprivate_key_file = {:?}\n[rules]",
                key.display().to_string()
            ),
        );
        let c = Config::parse(&with).unwrap();
        let private = c.wireguard.as_ref().unwrap().private_key().unwrap();
        assert_eq!(private[0], 0x88);
        assert_eq!(
            key_of(&with.replace("lcores = [1]", "lcores = [1, 2]")),
            "wireguard"
        );
        std::fs::write(&key, "not a key").unwrap();
        let e = c.wireguard.as_ref().unwrap().private_key().unwrap_err();
        assert_eq!(e.key, "wireguard.private_key_file");
        assert!(e.to_string().contains("not base64"), "{e}");
        std::fs::remove_file(&key).unwrap();
        let e = c.wireguard.unwrap().private_key().unwrap_err();
        assert!(e.to_string().contains("cannot read"), "{e}");
    }

    #[test]
    fn errors_name_the_key() {
        assert_eq!(
            key_of(&GOOD.replace("idle = \"backoff\"", "idle = \"sometimes\"")),
            "workers.idle"
        );
        assert_eq!(
            key_of(&GOOD.replace(
                "role = \"aggregator\"\n        addresses = [\"192.0.2.1\"]",
                "role = \"router\"\n        addresses = [\"192.0.2.1\"]"
            )),
            "ports[1].role"
        );
        assert_eq!(
            key_of(&GOOD.replace(
                "addresses = [\"203.0.113.1\"]",
                "addresses = [\"203.0.113.300\"]"
            )),
            "ports[0].addresses[0]"
        );
        assert_eq!(
            key_of(&GOOD.replace("node_id = \"pop1\"", "node_id = \"pop1\"\ncolour = \"red\"")),
            "colour"
        );
        assert_eq!(
            key_of(&GOOD.replace("vni = 7", "vni = 7, colour = 1")),
            "rules.tunnels[0].colour"
        );
        assert_eq!(
            key_of(&GOOD.replace("lcores = [1]", "lcores = []")),
            "workers.lcores"
        );
        assert_eq!(
            key_of(&GOOD.replace("lcores = [1]", "lcores = [0]")),
            "workers.lcores"
        );
        assert_eq!(
            key_of(&GOOD.replace("name = \"uplink\"", "name = \"line0\"")),
            "ports[1].name"
        );
        assert_eq!(
            key_of(&GOOD.replace("mac = \"02:00:00:00:0d:01\"", "mac = \"02:00:00\"")),
            "ports[1].neighbours[0].mac"
        );
        assert_eq!(
            key_of(&GOOD.replace("metrics = \"127.0.0.1:9101\"", "metrics = \"nowhere\"")),
            "metrics"
        );
        assert_eq!(
            key_of(&GOOD.replace(
                "metrics = \"127.0.0.1:9101\"",
                "metrics = \"127.0.0.1:9101\"\ncircuit_metrics = 70000"
            )),
            "circuit_metrics"
        );
        assert_eq!(
            key_of(&GOOD.replace("name = \"uplink\"", "name = \"uplink\"\nmtu = 9700")),
            "ports[1].mtu"
        );
        assert_eq!(
            key_of(&GOOD.replace("name = \"uplink\"", "name = \"uplink\"\nclamp_mss = 1")),
            "ports[1].clamp_mss"
        );
    }

    #[test]
    fn messages_are_one_line() {
        let e =
            Config::parse(&GOOD.replace("idle = \"backoff\"", "idle = \"sometimes\"")).unwrap_err();
        assert!(!e.to_string().contains('\n'), "{e}");
        assert!(e.to_string().starts_with("workers.idle: "), "{e}");
    }
}

#[cfg(test)]
mod example_tests {
    use super::*;
    use crate::tables::{NeighbourCache, PortInfo, Snapshot};

    fn offline_ports(c: &Config) -> Vec<PortInfo> {
        c.ports
            .iter()
            .map(|p| p.info(MacAddr([2, 0, 0, 0, 0, 1])))
            .collect()
    }

    /// The example config in the README, as a user would copy it, passes `--check`.
    #[test]
    fn readme_example_is_valid() {
        let readme = include_str!("../../README.md");
        let start = readme
            .find("```toml\nnode_id = ")
            .expect("the README's forwarder config example")
            + "```toml\n".len();
        let len = readme[start..].find("```").expect("end of the example");
        let c =
            Config::parse(&readme[start..start + len]).unwrap_or_else(|e| panic!("README: {e}"));
        let snap = Snapshot::build(&c.rules, &offline_ports(&c), 0, &NeighbourCache::new())
            .unwrap_or_else(|e| panic!("README: {e}"));
        assert_eq!(snap.entries(), 5);
    }

    /// An error in `[rules]` names the key, as other config errors do.
    #[test]
    fn rules_errors_name_the_key() {
        let text = r#"
            node_id = "dc"
            [workers]
            lcores = [1]
            [[ports]]
            name = "apps"
            device = "net_null0"
            role = "demux"
            addresses = ["192.0.2.1"]
            [rules]
            routes = [{ prefix = "198.19.0.0/24", port = "apps" }]
            demux = [
              { mode = "port", alias = "198.18.0.4", protocol = "udp", port = 4000, app_host = "198.19.0.2" },
              { mode = "port", alias = "198.18.0.4", protocol = "udp", port = 4001, app_host = "198.51.100.9" },
            ]
        "#;
        let c = Config::parse(text).unwrap();
        let e = Snapshot::build(&c.rules, &offline_ports(&c), 0, &NeighbourCache::new())
            .err()
            .expect("no route to the second app host");
        assert_eq!(e.key(), Some("rules.demux[1].app_host"));
        assert_eq!(
            e.to_string(),
            "rules.demux[1].app_host: no route to 198.51.100.9"
        );
        let bad_port = text.replace(r#"port = "apps" }"#, r#"port = "out" }"#);
        let c = Config::parse(&bad_port).unwrap();
        let e = Snapshot::build(&c.rules, &offline_ports(&c), 0, &NeighbourCache::new())
            .err()
            .unwrap();
        assert_eq!(
            e.to_string(),
            r#"rules.routes[0].port: route 198.19.0.0/24: unknown port "out""#
        );
    }

    /// The commented example configs in `forwarder/examples/` parse, and their rules build.
    #[test]
    fn examples_are_valid() {
        for name in ["aggregator", "demux", "remux"] {
            let path = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("examples")
                .join(format!("{name}.toml"));
            let c = Config::load(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
            let ports: Vec<PortInfo> = c
                .ports
                .iter()
                .map(|p| p.info(MacAddr([2, 0, 0, 0, 0, 1])))
                .collect();
            let snap = Snapshot::build(&c.rules, &ports, 0, &NeighbourCache::new())
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(snap.entries() >= 2, "{name}");
        }
    }
}
