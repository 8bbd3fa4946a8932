//! The operator's view of the fleet: `tarpctl nodes`, `tarpctl top` and `tarpctl
//! capture`, read from the forwarders' own HTTP endpoints (the keeper names them).

use std::collections::BTreeMap;
use std::io::Write;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tarp_api::client::{AppClient, CircuitId, Mode, NodeInfo};

/// One sample of the Prometheus text format: name, labels, value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Metric name.
    pub name: String,
    /// Its labels, in the order written.
    pub labels: Vec<(String, String)>,
    /// Its value.
    pub value: f64,
}

impl Sample {
    /// The value of label `k` (empty if absent).
    pub fn label(&self, k: &str) -> &str {
        self.labels
            .iter()
            .find(|(n, _)| n == k)
            .map_or("", |(_, v)| v.as_str())
    }
}

/// Parses the samples of a Prometheus text exposition (version 0.0.4). Comments and
/// lines it cannot read are skipped. Written here rather than taken from a crate: it
/// reads only tarp's own endpoints, and the crates that do it bring a regex engine and
/// a date library for these thirty lines.
pub fn parse_metrics(text: &str) -> Vec<Sample> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Sample> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line.find(|c: char| c == '{' || c.is_whitespace())?;
    let name = line[..name_end].to_string();
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(r) = rest.strip_prefix('{') {
        let mut chars = r.char_indices();
        let mut key = String::new();
        loop {
            let (i, c) = chars.next()?;
            match c {
                '}' => {
                    rest = &r[i + 1..];
                    break;
                }
                ',' | ' ' => {}
                '=' => {
                    if chars.next()?.1 != '"' {
                        return None;
                    }
                    let mut value = String::new();
                    loop {
                        match chars.next()?.1 {
                            '"' => break,
                            '\\' => match chars.next()?.1 {
                                'n' => value.push('\n'),
                                c => value.push(c),
                            },
                            c => value.push(c),
                        }
                    }
                    labels.push((std::mem::take(&mut key), value));
                }
                c => key.push(c),
            }
        }
    }
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name,
        labels,
        value,
    })
}

/// `http://HOST:PORT` for an endpoint the keeper names (`host:port` or a URL).
fn base_url(endpoint: &str) -> String {
    if endpoint.starts_with("http://") || endpoint.starts_with("https://") {
        endpoint.trim_end_matches('/').to_string()
    } else {
        format!("http://{endpoint}")
    }
}

/// A GET over plain HTTP/1.1: status, one response header's value, body.
async fn get(
    url: &str,
    header: &str,
    timeout: Duration,
) -> anyhow::Result<(u16, Option<String>, Bytes)> {
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let uri: hyper::Uri = url.parse().with_context(|| format!("{url}: not a URL"))?;
    let fetch = async {
        let resp = client.get(uri).await?;
        let status = resp.status().as_u16();
        let value = resp
            .headers()
            .get(header)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = resp.into_body().collect().await?.to_bytes();
        anyhow::Ok((status, value, body))
    };
    tokio::time::timeout(timeout, fetch)
        .await
        .with_context(|| format!("{url}: no answer within {timeout:?}"))?
        .with_context(|| format!("GET {url}"))
}

/// `tarpctl nodes`: the keeper's view of every forwarder.
pub fn print_nodes(nodes: &[NodeInfo], json: bool) {
    if json {
        for n in nodes {
            let v = serde_json::json!({
                "id": n.id, "roles": n.roles, "connected": n.connected,
                "published_generation": n.published_generation,
                "acked_generation": n.acked_generation,
                "silence_ms": n.silence.as_millis() as u64,
                "metrics": n.metrics,
            });
            println!("{v}");
        }
        return;
    }
    println!(
        "{:<14} {:<20} {:<9} {:>10} {:>10} {:>8}  METRICS",
        "NODE", "ROLES", "KEEPER", "PUBLISHED", "ACKED", "SILENT"
    );
    for n in nodes {
        println!(
            "{:<14} {:<20} {:<9} {:>10} {:>10} {:>7.1}s  {}",
            n.id,
            n.roles.join("+"),
            if n.connected { "up" } else { "down" },
            n.published_generation,
            n.acked_generation,
            n.silence.as_secs_f64(),
            n.metrics.as_deref().unwrap_or("-")
        );
    }
}

/// What one scrape of one forwarder says, reduced to what `top` shows.
#[derive(Debug, Clone, Default)]
struct Reading {
    /// Per (port, role): rx, tx, rx bytes, tx bytes, forwarded.
    ports: BTreeMap<(String, String), [f64; 5]>,
    /// Drops by reason (every port).
    drops: BTreeMap<String, f64>,
    generation: f64,
    busy: Vec<f64>,
    ready: Option<bool>,
}

impl Reading {
    fn of(samples: &[Sample]) -> Reading {
        let mut r = Reading::default();
        for s in samples {
            let field = match s.name.as_str() {
                "tarp_port_rx_packets_total" => 0,
                "tarp_port_tx_packets_total" => 1,
                "tarp_port_rx_bytes_total" => 2,
                "tarp_port_tx_bytes_total" => 3,
                "tarp_port_forwarded_packets_total" => 4,
                "tarp_port_drops_total" => {
                    *r.drops.entry(s.label("reason").to_string()).or_default() += s.value;
                    continue;
                }
                "tarp_snapshot_generation" => {
                    r.generation = s.value;
                    continue;
                }
                "tarp_worker_busy_ratio" => {
                    r.busy.push(s.value);
                    continue;
                }
                "tarp_ready" => {
                    r.ready = Some(s.value >= 1.0);
                    continue;
                }
                _ => continue,
            };
            let key = (s.label("port").to_string(), s.label("role").to_string());
            r.ports.entry(key).or_default()[field] += s.value;
        }
        r
    }
}

/// One forwarder as `top` follows it.
struct Watched {
    node: NodeInfo,
    last: Option<(Instant, Reading)>,
    /// Rates over the last interval: per port, then drops by reason.
    rates: Vec<((String, String), [f64; 5])>,
    drop_rates: Vec<(String, f64)>,
    error: Option<String>,
}

impl Watched {
    async fn refresh(&mut self, timeout: Duration) {
        let Some(endpoint) = &self.node.metrics else {
            self.error = Some("no metrics endpoint in the keeper's inventory".into());
            return;
        };
        let url = format!("{}/metrics", base_url(endpoint));
        let now = Instant::now();
        let reading = match get(&url, "content-type", timeout).await {
            Ok((200, _, body)) => Reading::of(&parse_metrics(&String::from_utf8_lossy(&body))),
            Ok((status, _, _)) => {
                self.error = Some(format!("{url}: HTTP {status}"));
                return;
            }
            Err(e) => {
                self.error = Some(format!("{e:#}"));
                return;
            }
        };
        self.error = None;
        if let Some((then, prev)) = &self.last {
            let dt = now.duration_since(*then).as_secs_f64().max(1e-3);
            self.rates = reading
                .ports
                .iter()
                .map(|(k, v)| {
                    let p = prev.ports.get(k).copied().unwrap_or(*v);
                    let mut r = [0.0; 5];
                    for i in 0..5 {
                        r[i] = (v[i] - p[i]).max(0.0) / dt;
                    }
                    (k.clone(), r)
                })
                .collect();
            self.drop_rates = reading
                .drops
                .iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        (v - prev.drops.get(k).copied().unwrap_or(*v)).max(0.0) / dt,
                    )
                })
                .filter(|(_, r)| *r > 0.0)
                .collect();
        }
        self.last = Some((now, reading));
    }

    fn lines(&self, out: &mut Vec<String>) {
        let n = &self.node;
        let (generation, busy, ready) = match &self.last {
            Some((_, r)) => (
                format!("{:.0}", r.generation),
                if r.busy.is_empty() {
                    "-".to_string()
                } else {
                    format!(
                        "{:.1}%",
                        100.0 * r.busy.iter().sum::<f64>() / r.busy.len() as f64
                    )
                },
                match r.ready {
                    Some(true) => "ready",
                    Some(false) => "NOT READY",
                    None => "-",
                },
            ),
            None => ("-".into(), "-".into(), "-"),
        };
        out.push(format!(
            "{:<12} {:<20} keeper {:<4} gen {:>6} (acked {:>6})  {:<9}  busy {}",
            n.id,
            n.roles.join("+"),
            if n.connected { "up" } else { "DOWN" },
            generation,
            n.acked_generation,
            ready,
            busy
        ));
        if let Some(e) = &self.error {
            out.push(format!("  ! {e}"));
            return;
        }
        for ((port, role), r) in &self.rates {
            out.push(format!(
                "  {:<10} {:<11} {:>10.0} {:>10.0} {:>9.2} {:>9.2} {:>10.0}",
                port,
                role,
                r[0],
                r[1],
                r[2] * 8.0 / 1e6,
                r[3] * 8.0 / 1e6,
                r[4]
            ));
        }
        if !self.drop_rates.is_empty() {
            let d: Vec<String> = self
                .drop_rates
                .iter()
                .map(|(k, v)| format!("{k} {v:.0}"))
                .collect();
            out.push(format!("  drops/s: {}", d.join(", ")));
        }
    }
}

/// The screen's lines for one refresh.
fn frame(watched: &[Watched], every: Duration) -> Vec<String> {
    let mut out = vec![
        format!(
            "tarp top: {} forwarders, every {:.1} s (q or Ctrl-C quits)",
            watched.len(),
            every.as_secs_f64()
        ),
        format!(
            "  {:<10} {:<11} {:>10} {:>10} {:>9} {:>9} {:>10}",
            "PORT", "ROLE", "RX pps", "TX pps", "RX Mb/s", "TX Mb/s", "FWD pps"
        ),
    ];
    for w in watched {
        out.push(String::new());
        w.lines(&mut out);
    }
    out
}

/// `tarpctl top`: a live view of every forwarder the keeper knows, refreshed every
/// `every`, until `q`, Ctrl-C, or (with `count`) that many refreshes. On a terminal it
/// draws in place (the alternate screen, restored on exit); otherwise it prints each
/// refresh in turn.
pub async fn top(
    client: &mut AppClient,
    every: Duration,
    count: Option<u64>,
) -> anyhow::Result<()> {
    let nodes = client.nodes().await?;
    if nodes.is_empty() {
        bail!("the keeper's inventory has no forwarders");
    }
    let mut watched: Vec<Watched> = nodes
        .into_iter()
        .map(|node| Watched {
            node,
            last: None,
            rates: Vec::new(),
            drop_rates: Vec::new(),
            error: None,
        })
        .collect();
    let screen = Screen::open()?;
    let result = async {
        let mut refreshes = 0u64;
        let mut next = tokio::time::Instant::now();
        loop {
            // The keeper's view (connected, generations) and every forwarder's counters.
            if let Ok(nodes) = client.nodes().await {
                for w in watched.iter_mut() {
                    if let Some(n) = nodes.iter().find(|n| n.id == w.node.id) {
                        w.node = n.clone();
                    }
                }
            }
            let timeout = every.min(Duration::from_secs(2));
            futures_util::future::join_all(watched.iter_mut().map(|w| w.refresh(timeout))).await;
            // Rates need two readings: the first refresh draws nothing.
            if refreshes > 0 {
                screen.draw(&frame(&watched, every))?;
            }
            refreshes += 1;
            if count.is_some_and(|c| refreshes > c) {
                return Ok(());
            }
            next += every;
            if screen.wait_for_quit(next).await? {
                return Ok(());
            }
        }
    }
    .await;
    screen.close()?;
    result
}

/// The terminal while `top` runs.
struct Screen {
    tty: bool,
}

impl Screen {
    fn open() -> anyhow::Result<Screen> {
        use crossterm::{cursor, execute, terminal};
        let tty = crossterm::tty::IsTty::is_tty(&std::io::stdout());
        if tty {
            terminal::enable_raw_mode().context("raw mode")?;
            execute!(
                std::io::stdout(),
                terminal::EnterAlternateScreen,
                cursor::Hide
            )?;
        }
        Ok(Screen { tty })
    }

    fn draw(&self, lines: &[String]) -> anyhow::Result<()> {
        use crossterm::{cursor, queue, terminal};
        let mut out = std::io::stdout().lock();
        if self.tty {
            queue!(
                out,
                cursor::MoveTo(0, 0),
                terminal::Clear(terminal::ClearType::All)
            )?;
            for l in lines {
                // Raw mode: lines end with CR LF.
                write!(out, "{l}\r\n")?;
            }
        } else {
            for l in lines {
                writeln!(out, "{l}")?;
            }
            writeln!(out)?;
        }
        out.flush()?;
        Ok(())
    }

    /// Waits until `deadline`; true if the user asked to quit (q, Esc, Ctrl-C).
    async fn wait_for_quit(&self, deadline: tokio::time::Instant) -> anyhow::Result<bool> {
        use crossterm::event::{self, Event, KeyCode, KeyModifiers};
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if !self.tty {
                tokio::select! {
                    _ = tokio::time::sleep(left) => return Ok(false),
                    _ = tokio::signal::ctrl_c() => return Ok(true),
                }
            }
            if left.is_zero() {
                return Ok(false);
            }
            // Poll the keyboard in short steps so the runtime keeps going.
            if event::poll(left.min(Duration::from_millis(50)))? {
                if let Event::Key(k) = event::read()? {
                    let ctrl_c =
                        k.code == KeyCode::Char('c') && k.modifiers.contains(KeyModifiers::CONTROL);
                    if ctrl_c || matches!(k.code, KeyCode::Char('q') | KeyCode::Esc) {
                        return Ok(true);
                    }
                }
            }
            tokio::task::yield_now().await;
        }
    }

    fn close(&self) -> anyhow::Result<()> {
        use crossterm::{cursor, execute, terminal};
        if self.tty {
            execute!(
                std::io::stdout(),
                cursor::Show,
                terminal::LeaveAlternateScreen
            )?;
            terminal::disable_raw_mode()?;
        }
        Ok(())
    }
}

/// What `tarpctl capture` asks a forwarder for.
pub struct CaptureArgs {
    /// Forwarder node id.
    pub node: String,
    /// Only packets received on this port.
    pub port: Option<String>,
    /// Only this circuit's packets.
    pub circuit: Option<CircuitId>,
    /// Only packets from or to these addresses.
    pub hosts: Vec<IpAddr>,
    /// Packets to take.
    pub count: u64,
    /// At most this long.
    pub seconds: u64,
    /// Bytes of each frame.
    pub snaplen: Option<u32>,
    /// Packets a second at most.
    pub rate: Option<u64>,
    /// The pcapng file.
    pub write: std::path::PathBuf,
}

/// `tarpctl capture`: asks a forwarder's recorder for packets, writes the pcapng file.
pub async fn capture(client: &mut AppClient, a: CaptureArgs) -> anyhow::Result<()> {
    let nodes = client.nodes().await?;
    let node = nodes.iter().find(|n| n.id == a.node).with_context(|| {
        let ids: Vec<&str> = nodes.iter().map(|n| n.id.as_str()).collect();
        format!(
            "--node {}: no such forwarder (the keeper knows {})",
            a.node,
            ids.join(", ")
        )
    })?;
    let endpoint = node.metrics.as_deref().with_context(|| {
        format!(
            "--node {}: the keeper's inventory names no metrics endpoint for it",
            a.node
        )
    })?;
    let mut hosts = a.hosts.clone();
    let mut l4port = None;
    if let Some(id) = a.circuit {
        // A circuit's packets carry its capture address or its alias; in port mode the
        // app host's own address on the circuit's port.
        let c = client.get(id).await?;
        hosts.extend([c.capture, c.alias]);
        if c.mode == Mode::Port {
            hosts.push(c.app_host);
            if c.ports.first == c.ports.last {
                l4port = Some(c.ports.first);
            }
        }
    }
    let mut query = vec![
        format!("count={}", a.count),
        format!("seconds={}", a.seconds),
    ];
    if let Some(p) = &a.port {
        query.push(format!("port={p}"));
    }
    if !hosts.is_empty() {
        let h: Vec<String> = hosts.iter().map(|h| h.to_string()).collect();
        query.push(format!("hosts={}", h.join(",")));
    }
    if let Some(p) = l4port {
        query.push(format!("l4port={p}"));
    }
    if let Some(s) = a.snaplen {
        query.push(format!("snaplen={s}"));
    }
    if let Some(r) = a.rate {
        query.push(format!("rate={r}"));
    }
    let url = format!("{}/capture?{}", base_url(endpoint), query.join("&"));
    eprintln!("tarpctl: capturing on {} ({url})", a.node);
    let (status, summary, body) =
        get(&url, "x-tarp-captured", Duration::from_secs(a.seconds + 10)).await?;
    if status != 200 {
        bail!(
            "{}: HTTP {status}: {}",
            a.node,
            String::from_utf8_lossy(&body).trim()
        );
    }
    std::fs::write(&a.write, &body).with_context(|| format!("writing {}", a.write.display()))?;
    eprintln!(
        "tarpctl: {} ({}) written to {}",
        summary.unwrap_or_default(),
        format_bytes(body.len()),
        a.write.display()
    );
    Ok(())
}

fn format_bytes(n: usize) -> String {
    if n >= 1 << 20 {
        format!("{:.1} MiB", n as f64 / f64::from(1 << 20))
    } else {
        format!("{n} bytes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_read_with_labels_escapes_and_special_values() {
        let text = "# HELP tarp_x A thing.\n# TYPE tarp_x counter\n\
            tarp_port_rx_packets_total{node=\"pop-eu\",port=\"line0\",role=\"aggregator\"} 600\n\
            tarp_odd{a=\"x\\\"y\\\\z\",b=\"\"} +Inf\n\
            process_open_fds 12\n\
            garbage{\n";
        let s = parse_metrics(text);
        assert_eq!(s.len(), 3);
        assert_eq!(s[0].name, "tarp_port_rx_packets_total");
        assert_eq!(s[0].label("port"), "line0");
        assert_eq!(s[0].value, 600.0);
        assert_eq!(s[1].label("a"), "x\"y\\z");
        assert_eq!(s[1].label("b"), "");
        assert!(s[1].value.is_infinite());
        assert_eq!((s[2].name.as_str(), s[2].value), ("process_open_fds", 12.0));
    }

    #[test]
    fn a_reading_sums_ports_and_drops() {
        let text = "tarp_port_rx_packets_total{node=\"n\",port=\"line0\",role=\"aggregator\"} 10\n\
            tarp_port_drops_total{node=\"n\",port=\"line0\",role=\"aggregator\",reason=\"malformed\"} 2\n\
            tarp_port_drops_total{node=\"n\",port=\"uplink\",role=\"aggregator\",reason=\"malformed\"} 3\n\
            tarp_worker_busy_ratio{node=\"n\",worker=\"1\"} 0.25\n\
            tarp_ready{node=\"n\"} 1\n";
        let r = Reading::of(&parse_metrics(text));
        assert_eq!(
            r.ports[&("line0".to_string(), "aggregator".to_string())][0],
            10.0
        );
        assert_eq!(r.drops["malformed"], 5.0);
        assert_eq!(r.busy, vec![0.25]);
        assert_eq!(r.ready, Some(true));
    }
}
