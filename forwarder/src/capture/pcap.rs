//! A capture session from start to file: the request as the endpoint takes it, the
//! drain loop (off the fast path), and the pcapng file it writes (with the `pcap-file`
//! crate), one interface per port.
//!
//! A packet's copy before the rewrite is on the interface of the port it came in on,
//! marked inbound; its copy after the rewrite on the port it leaves by, marked outbound.
//! Each carries a comment naming the packet and what became of it:
//! `tarp packet 17 before rewrite: received on line0, forwarded on uplink`.

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pcap_file::pcapng::blocks::enhanced_packet::{EnhancedPacketBlock, EnhancedPacketOption};
use pcap_file::pcapng::blocks::interface_description::{
    InterfaceDescriptionBlock, InterfaceDescriptionOption,
};
use pcap_file::pcapng::PcapNgWriter;
use pcap_file::DataLink;

use super::{wall_time, Capture, Filter, Outcome, Record, Request, Session, Stage, MAX_HOSTS};

/// The most packets one capture may ask for.
pub const MAX_COUNT: u64 = 100_000;
/// The longest capture.
pub const MAX_SECONDS: u64 = 300;
/// The largest snap length (a jumbo frame).
pub const MAX_SNAPLEN: usize = 9216;
/// The highest rate, packets a second.
pub const MAX_RATE: u64 = 100_000;

/// Why a capture could not run.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum CaptureError {
    /// A parameter was wrong (the message names it).
    #[error("{0}")]
    BadRequest(String),
    /// Another capture is running.
    #[error("a capture is already running on this forwarder")]
    Busy,
    /// Writing the file failed.
    #[error("writing the capture: {0}")]
    Write(String),
}

fn bad(key: &str, why: impl std::fmt::Display) -> CaptureError {
    CaptureError::BadRequest(format!("{key}: {why}"))
}

fn number<T>(key: &str, v: &str, lo: T, hi: T) -> Result<T, CaptureError>
where
    T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy,
{
    let n: T = v
        .parse()
        .map_err(|_| bad(key, format!("{v:?} is not a number")))?;
    if n < lo || n > hi {
        return Err(bad(key, format!("{n} is not within {lo}..={hi}")));
    }
    Ok(n)
}

/// A capture request from the endpoint's query (`port`, `hosts` (comma-separated),
/// `l4port`, `count`, `seconds`, `snaplen`, `rate`), for a forwarder with these ports.
/// Returns the request and its time limit.
pub fn parse_query<'a>(
    pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
    ports: &[String],
) -> Result<(Request, Duration), CaptureError> {
    let mut req = Request {
        filter: Filter::default(),
        count: 100,
        snaplen: 2048,
        rate: 10_000,
    };
    let mut seconds = 10;
    for (k, v) in pairs {
        match k {
            "port" => {
                let p = ports.iter().position(|p| p == v).ok_or_else(|| {
                    bad(k, format!("no port {v:?} (ports: {})", ports.join(", ")))
                })?;
                req.filter.port = Some(p as u16);
            }
            "hosts" | "host" => {
                for h in v.split(',').filter(|h| !h.is_empty()) {
                    let a: IpAddr = h
                        .parse()
                        .map_err(|_| bad(k, format!("{h:?} is not an IP address")))?;
                    req.filter.hosts.push(a);
                }
                if req.filter.hosts.len() > MAX_HOSTS {
                    return Err(bad(k, format!("at most {MAX_HOSTS} addresses")));
                }
            }
            "l4port" => req.filter.l4_port = Some(number(k, v, 1u16, u16::MAX)?),
            "count" => req.count = number(k, v, 1, MAX_COUNT)?,
            "seconds" => seconds = number(k, v, 1, MAX_SECONDS)?,
            "snaplen" => req.snaplen = number(k, v, 64, MAX_SNAPLEN)?,
            "rate" => req.rate = number(k, v, 1, MAX_RATE)?,
            _ => {
                return Err(bad(
                    k,
                    "unknown parameter (port, hosts, l4port, count, seconds, snaplen, rate)",
                ))
            }
        }
    }
    Ok((req, Duration::from_secs(seconds)))
}

/// What a finished capture holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// Packets taken (each has a before copy).
    pub packets: u64,
    /// Copies written (before and after).
    pub records: u64,
    /// Matching packets not taken (no buffer, ring full, rate spent).
    pub missed: u64,
}

/// How often the drain loop wakes.
const TICK: Duration = Duration::from_millis(10);

/// Runs a capture: starts it on `capture`, drains what the workers take into a pcapng
/// file until `req.count` packets were taken, `limit` has passed or `cancelled()` says
/// so, then stops it. Blocking: run it on a thread of its own (the endpoint uses tokio's
/// blocking pool).
pub fn run(
    capture: &Capture,
    req: &Request,
    limit: Duration,
    ports: &[String],
    cancelled: impl Fn() -> bool,
) -> Result<(Vec<u8>, Summary), CaptureError> {
    let session = Arc::new(Session::new(req));
    if !capture.start(session.clone()) {
        return Err(CaptureError::Busy);
    }
    let mut file = File::new(ports, req.snaplen);
    let result = drain_until(&session, req, limit, &mut file, cancelled);
    capture.stop();
    // A worker may still be in a burst it began with the session: give it a moment,
    // then take what it left.
    std::thread::sleep(TICK);
    let result = result.and_then(|()| drain(&session, &mut file));
    result?;
    let summary = Summary {
        packets: file.packets,
        records: file.records,
        missed: session.missed.load(std::sync::atomic::Ordering::Relaxed),
    };
    Ok((file.into_bytes()?, summary))
}

fn drain_until(
    s: &Session,
    req: &Request,
    limit: Duration,
    file: &mut File,
    cancelled: impl Fn() -> bool,
) -> Result<(), CaptureError> {
    let start = Instant::now();
    let per_tick = req.rate.div_ceil(100) as i64;
    let cap = req.rate.div_ceil(10) as i64;
    let mut full_since = None;
    loop {
        std::thread::sleep(TICK);
        s.refill(per_tick, cap);
        drain(s, file)?;
        if s.full() {
            // The last packets' copies are pushed right after they are taken.
            if full_since.get_or_insert_with(Instant::now).elapsed() >= TICK {
                return Ok(());
            }
        }
        if start.elapsed() >= limit || cancelled() {
            return Ok(());
        }
    }
}

fn drain(s: &Session, file: &mut File) -> Result<(), CaptureError> {
    while let Some(r) = s.pop() {
        let written = file.write(s, &r);
        s.recycle(r);
        written?;
    }
    Ok(())
}

/// The pcapng file being written.
struct File {
    w: Result<PcapNgWriter<Vec<u8>>, CaptureError>,
    ports: Vec<String>,
    packets: u64,
    records: u64,
}

fn write_err(e: pcap_file::PcapError) -> CaptureError {
    CaptureError::Write(e.to_string())
}

impl File {
    fn new(ports: &[String], snaplen: usize) -> File {
        let w = PcapNgWriter::new(Vec::new())
            .map_err(write_err)
            .and_then(|mut w| {
                for p in ports {
                    w.write_pcapng_block(InterfaceDescriptionBlock {
                        linktype: DataLink::ETHERNET,
                        snaplen: snaplen as u32,
                        options: vec![
                            InterfaceDescriptionOption::IfName(Cow::Owned(p.clone())),
                            // Timestamps in nanoseconds, as pcap-file writes them.
                            InterfaceDescriptionOption::IfTsResol(9),
                        ],
                    })
                    .map_err(write_err)?;
                }
                Ok(w)
            });
        File {
            w,
            ports: ports.to_vec(),
            packets: 0,
            records: 0,
        }
    }

    fn port(&self, p: u16) -> &str {
        self.ports.get(usize::from(p)).map_or("?", String::as_str)
    }

    fn outcome(&self, o: Outcome) -> String {
        match o {
            Outcome::Forwarded(p) => format!("forwarded on {}", self.port(p)),
            Outcome::Fragmented => "fragmented into its tunnel".to_string(),
            Outcome::Sealed => "sealed into its WireGuard tunnel".to_string(),
            Outcome::Icmp(p) => format!("answered with ICMP on {}", self.port(p)),
            Outcome::Dropped(r) => format!("dropped: {}", r.name()),
            Outcome::SlowPath => "to the slow path".to_string(),
            Outcome::Opened => "opened (WireGuard)".to_string(),
        }
    }

    fn write(&mut self, s: &Session, r: &Record) -> Result<(), CaptureError> {
        // pcapng's epb_flags: bits 0-1 are the direction, 1 inbound, 2 outbound.
        let (interface, flags, comment) = match r.stage {
            Stage::Before(o) => (
                r.port,
                1,
                format!(
                    "tarp packet {} before rewrite: received on {}, {}",
                    r.packet,
                    self.port(r.port),
                    self.outcome(o)
                ),
            ),
            Stage::After(o) => {
                let out = match o {
                    Outcome::Forwarded(p) | Outcome::Icmp(p) => p,
                    _ => r.port,
                };
                let comment = format!(
                    "tarp packet {} after rewrite: {}",
                    r.packet,
                    match o {
                        Outcome::Forwarded(p) => format!("sent on {}", self.port(p)),
                        o => self.outcome(o),
                    }
                );
                (out, 2, comment)
            }
        };
        let w = self.w.as_mut().map_err(|e| e.clone())?;
        w.write_pcapng_block(EnhancedPacketBlock {
            interface_id: u32::from(interface),
            timestamp: wall_time(s, r.at),
            original_len: r.orig_len,
            data: Cow::Borrowed(&r.data[..r.len]),
            options: vec![
                EnhancedPacketOption::Comment(Cow::Owned(comment)),
                EnhancedPacketOption::Flags(flags),
            ],
        })
        .map_err(write_err)?;
        self.records += 1;
        if matches!(r.stage, Stage::Before(_)) {
            self.packets += 1;
        }
        Ok(())
    }

    fn into_bytes(self) -> Result<Vec<u8>, CaptureError> {
        Ok(self.w?.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::Tap;
    use crate::pipeline::{DropReason, Verdict};
    use pcap_file::pcapng::{Block, PcapNgReader};

    fn ports() -> Vec<String> {
        vec!["line0".to_string(), "uplink".to_string()]
    }

    #[test]
    fn the_query_is_checked_key_by_key() {
        let (r, t) = parse_query(
            [
                ("port", "uplink"),
                ("hosts", "203.0.113.2,2001:db8::2"),
                ("l4port", "7000"),
                ("count", "5"),
                ("seconds", "3"),
            ],
            &ports(),
        )
        .unwrap();
        assert_eq!(r.filter.port, Some(1));
        assert_eq!(r.filter.hosts.len(), 2);
        assert_eq!(
            (r.filter.l4_port, r.count, t),
            (Some(7000), 5, Duration::from_secs(3))
        );
        let err = |q: &[(&str, &str)]| match parse_query(q.iter().copied(), &ports()) {
            Err(CaptureError::BadRequest(s)) => s,
            other => panic!("{q:?}: {other:?}"),
        };
        assert!(err(&[("port", "eth9")]).starts_with("port: no port \"eth9\""));
        assert!(err(&[("hosts", "1.2.3")]).starts_with("hosts: "));
        assert!(err(&[("count", "0")]).starts_with("count: 0 is not within"));
        assert!(err(&[("seconds", "x")]).starts_with("seconds: \"x\" is not a number"));
        assert!(err(&[("snaplen", "10")]).starts_with("snaplen: "));
        assert!(err(&[("colour", "blue")]).starts_with("colour: unknown parameter"));
    }

    #[test]
    fn a_capture_becomes_a_pcapng_file_with_both_copies_marked() {
        let capture = Arc::new(Capture::default());
        let (req, _) = parse_query([("count", "2"), ("hosts", "203.0.113.2")], &ports()).unwrap();
        // A "worker": once the capture runs, two bursts of one matching packet each.
        let worker = {
            let capture = capture.clone();
            std::thread::spawn(move || {
                let mut tap = Tap::new(32);
                let before: Vec<u8> = {
                    let mut f = vec![0u8; 12];
                    f.extend_from_slice(&[0x08, 0x00, 0x45, 0, 0, 28, 0, 0, 0x40, 0, 64, 17, 0, 0]);
                    f.extend_from_slice(&[198, 51, 100, 10, 203, 0, 113, 2]);
                    f.extend_from_slice(&[0x15, 0xb3, 0x1b, 0x58, 0, 8, 0, 0]);
                    f
                };
                let mut after = before.clone();
                after[30..34].copy_from_slice(&[198, 18, 0, 3]);
                let mut bursts = 0;
                let deadline = Instant::now() + Duration::from_secs(5);
                while bursts < 2 && Instant::now() < deadline {
                    tap.before(
                        &capture,
                        0,
                        Instant::now(),
                        std::iter::once(before.as_slice()),
                    );
                    if tap.on() {
                        let v = if bursts == 0 {
                            Verdict::Forward(1)
                        } else {
                            Verdict::Drop(DropReason::NoCircuit)
                        };
                        tap.verdict(0, v, &after);
                        bursts += 1;
                    }
                    tap.end();
                    std::thread::sleep(Duration::from_millis(1));
                }
            })
        };
        let (bytes, summary) =
            run(&capture, &req, Duration::from_secs(5), &ports(), || false).unwrap();
        worker.join().unwrap();
        assert_eq!(
            summary,
            Summary {
                packets: 2,
                records: 3,
                missed: 0
            }
        );
        let mut reader = PcapNgReader::new(bytes.as_slice()).unwrap();
        let mut seen = Vec::new();
        while let Some(b) = reader.next_block() {
            if let Block::EnhancedPacket(p) = b.unwrap() {
                let comment = p.options.iter().find_map(|o| match o {
                    EnhancedPacketOption::Comment(c) => Some(c.to_string()),
                    _ => None,
                });
                seen.push((p.interface_id, p.data[30..34].to_vec(), comment.unwrap()));
            }
        }
        assert_eq!(
            seen,
            vec![
                (
                    0,
                    vec![203, 0, 113, 2],
                    "tarp packet 1 before rewrite: received on line0, forwarded on uplink"
                        .to_string()
                ),
                (
                    1,
                    vec![198, 18, 0, 3],
                    "tarp packet 1 after rewrite: sent on uplink".to_string()
                ),
                (
                    0,
                    vec![203, 0, 113, 2],
                    "tarp packet 2 before rewrite: received on line0, dropped: no_circuit"
                        .to_string()
                ),
            ]
        );
        assert_eq!(reader.interfaces().len(), 2);
        assert!(capture.session().is_none(), "stopped");
    }

    #[test]
    fn a_second_capture_while_one_runs_is_refused() {
        let capture = Capture::default();
        let (req, _) = parse_query([], &ports()).unwrap();
        assert!(capture.start(Arc::new(Session::new(&req))));
        assert_eq!(
            run(&capture, &req, Duration::from_millis(50), &ports(), || {
                false
            })
            .unwrap_err(),
            CaptureError::Busy
        );
    }
}
