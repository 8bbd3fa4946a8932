//! The FIG 6 / FIG 8 packets through the real `tarp-forwarder` binary on DPDK `net_pcap`
//! ports: every frame written to the output pcap equals the one the (golden-tested)
//! pipeline produces, in order. Needs root (DPDK).
#![cfg(feature = "dpdk")]

mod support;

use std::io::Read;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use forwarder::pipeline::Verdict;
use support::*;

fn write_pcap(path: &Path, frames: &[Vec<u8>]) {
    let mut out = Vec::new();
    out.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&4u16.to_le_bytes());
    out.extend_from_slice(&[0; 8]);
    out.extend_from_slice(&65535u32.to_le_bytes());
    out.extend_from_slice(&1u32.to_le_bytes()); // Ethernet
    for (i, f) in frames.iter().enumerate() {
        out.extend_from_slice(&(i as u32).to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&(f.len() as u32).to_le_bytes());
        out.extend_from_slice(&(f.len() as u32).to_le_bytes());
        out.extend_from_slice(f);
    }
    std::fs::write(path, out).unwrap();
}

fn read_pcap(path: &Path) -> Vec<Vec<u8>> {
    let b = std::fs::read(path).unwrap_or_default();
    let mut frames = Vec::new();
    if b.len() < 24 {
        return frames;
    }
    let mut off = 24;
    while off + 16 <= b.len() {
        let caplen = u32::from_le_bytes(b[off + 8..off + 12].try_into().unwrap()) as usize;
        off += 16;
        frames.push(b[off..off + caplen].to_vec());
        off += caplen;
    }
    frames
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn metric(port: u16, name: &str, label: &str) -> Option<u64> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    std::io::Write::write_all(&mut s, b"GET /metrics HTTP/1.0\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    text.lines()
        .find(|l| l.starts_with(&format!("{name}{{")) && l.contains(label))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

struct Run {
    child: Child,
}

impl Drop for Run {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

/// Runs one forwarder over `input` received on port 0 (`in_role` rules in `rules`) and
/// returns what it wrote on port 1.
fn run_pcap(
    name: &str,
    ports: [(&str, &str, &str); 2],
    rules: &str,
    neighbours: &str,
    input: &[Vec<u8>],
) -> Vec<Vec<u8>> {
    let dir = std::env::temp_dir().join(format!("tarp-pcap-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    write_pcap(&dir.join("in.pcap"), input);
    write_pcap(&dir.join("empty.pcap"), &[]);
    let metrics = free_port();
    let d = dir.display();
    let (p0, r0, m0) = ports[0];
    let (p1, r1, m1) = ports[1];
    let config = format!(
        r#"
node_id = "pcap-{name}"
metrics = "127.0.0.1:{metrics}"
[eal]
args = ["--no-huge", "--no-shconf", "-m", "256"]
[workers]
lcores = [1]
idle = "backoff"
[[ports]]
name = "{p0}"
device = "net_pcap0,rx_pcap={d}/in.pcap,tx_pcap={d}/out0.pcap"
role = "{r0}"
mac = "{m0}"
addresses = ["203.0.113.1", "198.19.0.1", "192.0.2.2", "198.19.0.254"]
[[ports]]
name = "{p1}"
device = "net_pcap1,rx_pcap={d}/empty.pcap,tx_pcap={d}/out1.pcap"
role = "{r1}"
mac = "{m1}"
addresses = ["192.0.2.1", "2001:db8:ffff::1", "192.0.2.3"]
neighbours = [{neighbours}]
[rules]
{rules}
"#
    );
    std::fs::write(dir.join("fw.toml"), config).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_tarp-forwarder"))
        .arg("--config")
        .arg(dir.join("fw.toml"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("fw.log")).unwrap())
        .spawn()
        .unwrap();
    let run = Run { child };
    let deadline = Instant::now() + Duration::from_secs(30);
    let n = input.len() as u64;
    loop {
        let tx = metric(
            metrics,
            "tarp_device_tx_packets_total",
            &format!("port=\"{p1}\""),
        );
        if tx == Some(n) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "forwarder sent {tx:?} of {n}; log: {}",
            std::fs::read_to_string(dir.join("fw.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(run); // SIGTERM: the pcap is complete once the port is closed
    let out = read_pcap(&dir.join("out1.pcap"));
    let _ = std::fs::remove_dir_all(&dir);
    out
}

/// The golden inputs of every role: FIG 6 and FIG 8, UDP and TCP, IPv4 and IPv6.
fn device_frames() -> Vec<Vec<u8>> {
    let mut v = Vec::new();
    for l4 in [L4::Udp, L4::Tcp] {
        v.push(frame(
            ROUTER,
            AGG_LINE,
            ip("198.51.100.10"),
            ip("203.0.113.2"),
            64,
            l4,
            40000,
            4000,
            b"fig6",
        ));
        v.push(frame(
            ROUTER,
            AGG_LINE,
            ip("2001:db8:51::10"),
            ip("2001:db8:113::2"),
            64,
            l4,
            40000,
            4000,
            b"fig6v6",
        ));
        v.push(frame(
            ROUTER,
            AGG_LINE,
            ip("198.51.100.10"),
            ip("203.0.113.4"),
            64,
            l4,
            41004,
            4000,
            b"fig8a",
        ));
        v.push(frame(
            ROUTER,
            AGG_LINE,
            ip("198.51.100.20"),
            ip("203.0.113.4"),
            64,
            l4,
            41005,
            5000,
            b"fig8b",
        ));
        v.push(frame(
            ROUTER,
            AGG_LINE,
            ip("2001:db8:51::20"),
            ip("2001:db8:113::4"),
            64,
            l4,
            41005,
            5000,
            b"fig8v6",
        ));
    }
    v
}

#[test]
#[cfg_attr(not(tarp_root), ignore = "needs root (DPDK); build and run as root")]
fn pcap_golden_through_dpdk() {
    let (agg, dmx, rmx) = (aggregator(), demux(), remux());
    let input = device_frames();
    let expected: Vec<Vec<u8>> = input
        .iter()
        .map(|f| {
            let (v, o) = agg.run(0, f);
            assert_eq!(v, Verdict::Forward(1));
            o
        })
        .collect();
    let agg_rules = r#"
tunnels = [{ id = 1, local = "192.0.2.1", remote = "192.0.2.2", vni = 100, inner_dst_mac = "02:00:00:00:0f:0f" }]
aggregator = [
  { capture = "203.0.113.2", alias = "198.18.0.3", tunnel = 1, line = "line0" },
  { capture = "2001:db8:113::2", alias = "2001:db8:18::3", tunnel = 1, line = "line0" },
  { capture = "203.0.113.4", alias = "198.18.0.4", tunnel = 1, line = "line0" },
  { capture = "2001:db8:113::4", alias = "2001:db8:18::4", tunnel = 1, line = "line0" },
]
routes = [{ prefix = "192.0.2.0/24", port = "uplink" }]
"#;
    let got = run_pcap(
        "agg",
        [
            ("line0", "aggregator", AGG_LINE),
            ("uplink", "aggregator", AGG_UPLINK),
        ],
        agg_rules,
        &format!(r#"{{ address = "192.0.2.2", mac = "{DMX_TUN}" }}"#),
        &input,
    );
    assert_eq!(got.len(), expected.len());
    for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
        assert_eq!(g, e, "aggregator output frame {i}");
    }

    // The tunnel frames into the demux.
    let tunnelled = expected;
    let expected: Vec<Vec<u8>> = tunnelled
        .iter()
        .map(|f| {
            let (v, o) = dmx.run(0, f);
            assert_eq!(v, Verdict::Forward(1));
            o
        })
        .collect();
    let dmx_rules = r#"
tunnel_peers = ["192.0.2.1"]
demux = [
  { mode = "address", alias = "198.18.0.3", capture = "203.0.113.2", app_host = "198.19.0.2" },
  { mode = "address", alias = "2001:db8:18::3", capture = "2001:db8:113::2", app_host = "2001:db8:19::2" },
  { mode = "port", alias = "198.18.0.4", protocol = "udp", port = 4000, app_host = "198.19.0.2" },
  { mode = "port", alias = "198.18.0.4", protocol = "udp", port = 5000, app_host = "198.19.0.3" },
  { mode = "port", alias = "198.18.0.4", protocol = "tcp", port = 4000, app_host = "198.19.0.2" },
  { mode = "port", alias = "198.18.0.4", protocol = "tcp", port = 5000, app_host = "198.19.0.3" },
  { mode = "port", alias = "2001:db8:18::4", protocol = "udp", port = 5000, app_host = "2001:db8:19::3" },
  { mode = "port", alias = "2001:db8:18::4", protocol = "tcp", port = 5000, app_host = "2001:db8:19::3" },
]
routes = [{ prefix = "198.19.0.0/24", port = "dc" }, { prefix = "2001:db8:19::/64", port = "dc" }]
"#;
    let nb = format!(
        r#"{{ address = "198.19.0.2", mac = "{APP2}" }}, {{ address = "198.19.0.3", mac = "{APP3}" }},
           {{ address = "2001:db8:19::2", mac = "{APP2}" }}, {{ address = "2001:db8:19::3", mac = "{APP3}" }}"#
    );
    let got = run_pcap(
        "dmx",
        [("tun", "demux", DMX_TUN), ("dc", "demux", DMX_DC)],
        dmx_rules,
        &nb,
        &tunnelled,
    );
    assert_eq!(got, expected, "demux output");

    // The app hosts' replies into the remux.
    let replies: Vec<Vec<u8>> = vec![
        frame(
            APP2,
            RMX_DC,
            ip("203.0.113.2"),
            ip("198.51.100.10"),
            64,
            L4::Udp,
            4000,
            40000,
            b"r6",
        ),
        frame(
            APP2,
            RMX_DC,
            ip("198.19.0.2"),
            ip("198.51.100.10"),
            64,
            L4::Udp,
            4000,
            41004,
            b"r8a",
        ),
        frame(
            APP3,
            RMX_DC,
            ip("198.19.0.3"),
            ip("198.51.100.20"),
            64,
            L4::Tcp,
            5000,
            41005,
            b"r8b",
        ),
        frame(
            APP3,
            RMX_DC,
            ip("2001:db8:19::3"),
            ip("2001:db8:51::20"),
            64,
            L4::Tcp,
            5000,
            41005,
            b"r8v6",
        ),
    ];
    let expected: Vec<Vec<u8>> = replies
        .iter()
        .map(|f| {
            let (v, o) = rmx.run(0, f);
            assert_eq!(v, Verdict::Forward(1));
            o
        })
        .collect();
    let rmx_rules = r#"
remux = [
  { mode = "address", capture = "203.0.113.2" },
  { mode = "port", app_host = "198.19.0.2", protocol = "udp", port = 4000, capture = "203.0.113.4" },
  { mode = "port", app_host = "198.19.0.3", protocol = "tcp", port = 5000, capture = "203.0.113.4" },
  { mode = "port", app_host = "2001:db8:19::3", protocol = "tcp", port = 5000, capture = "2001:db8:113::4" },
]
routes = [{ prefix = "0.0.0.0/0", port = "out", via = "192.0.2.254" }, { prefix = "::/0", port = "out", via = "2001:db8:ffff::fe" }]
"#;
    let nb = format!(
        r#"{{ address = "192.0.2.254", mac = "{ROUTER}" }}, {{ address = "2001:db8:ffff::fe", mac = "{ROUTER}" }}"#
    );
    let got = run_pcap(
        "rmx",
        [("dc", "remux", RMX_DC), ("out", "remux", RMX_OUT)],
        rmx_rules,
        &nb,
        &replies,
    );
    assert_eq!(got, expected, "remux output");
}
