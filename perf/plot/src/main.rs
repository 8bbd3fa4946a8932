//! `tarp-perf-plot RESULTS.json OUT.png`: Mpps per core against circuits (log scale),
//! one colour per role, solid for uniform traffic and dashed for Zipf, with testpmd io
//! on each size's traffic as a dotted line per role: the picture of `perf/run.sh`'s
//! sizes suite.
//!
//! Text needs a TrueType font: `TARP_PLOT_FONT`, else DejaVu Sans (Debian's
//! `fonts-dejavu-core`).

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};
use plotters::prelude::*;
use plotters::style::FontStyle;
use serde::Deserialize;

#[derive(Deserialize)]
struct Results {
    meta: Meta,
    runs: Vec<Run>,
}

#[derive(Deserialize)]
struct Meta {
    when: String,
    host: Host,
    git: String,
}

#[derive(Deserialize)]
struct Host {
    cpu: String,
}

#[derive(Deserialize)]
struct Run {
    role: String,
    circuits: u64,
    dist: String,
    mix: String,
    workers: u32,
    swaps_per_second: Option<f64>,
    label: Option<String>,
    tarp: Option<Measured>,
    testpmd_io: Option<Measured>,
}

#[derive(Deserialize)]
struct Measured {
    mpps: Option<f64>,
}

const FONTS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
];

fn font() -> Result<()> {
    let path = std::env::var("TARP_PLOT_FONT")
        .ok()
        .or_else(|| {
            FONTS
                .iter()
                .find(|p| std::path::Path::new(p).exists())
                .map(|p| p.to_string())
        })
        .context("no TrueType font: set TARP_PLOT_FONT or install fonts-dejavu-core")?;
    let bytes = std::fs::read(&path).with_context(|| format!("reading {path}"))?;
    // plotters keeps fonts for the whole process.
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_err() {
        bail!("{path} is not a usable TrueType font");
    }
    Ok(())
}

fn colour(role: &str) -> RGBColor {
    match role {
        "aggregator" => RGBColor(31, 119, 180),
        "demux" => RGBColor(214, 39, 40),
        _ => RGBColor(44, 160, 44),
    }
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 3 {
        bail!("usage: tarp-perf-plot RESULTS.json OUT.png");
    }
    let text = std::fs::read_to_string(&args[1]).with_context(|| format!("reading {}", args[1]))?;
    let res: Results =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", args[1]))?;
    // (role, dist) -> [(circuits, Mpps)]: one worker, 64-byte frames, no swaps.
    let mut lines: BTreeMap<(String, String), Vec<(u64, f64)>> = BTreeMap::new();
    let mut io: BTreeMap<String, Vec<(u64, f64)>> = BTreeMap::new();
    for r in &res.runs {
        let sizes = matches!(r.label.as_deref(), Some("sizes" | "smoke"));
        if !sizes || r.workers != 1 || r.mix != "64" || r.swaps_per_second.is_some() {
            continue;
        }
        if let Some(m) = r.tarp.as_ref().and_then(|t| t.mpps) {
            lines
                .entry((r.role.clone(), r.dist.clone()))
                .or_default()
                .push((r.circuits, m));
        }
        if let Some(m) = r.testpmd_io.as_ref().and_then(|t| t.mpps) {
            io.entry(r.role.clone()).or_default().push((r.circuits, m));
        }
    }
    if lines.is_empty() {
        bail!("{}: no 64-byte single-worker runs to plot", args[1]);
    }
    for v in lines.values_mut().chain(io.values_mut()) {
        v.sort_by_key(|p| p.0);
    }
    font()?;
    let xmax = lines
        .values()
        .flatten()
        .map(|p| p.0)
        .max()
        .unwrap_or(1)
        .max(10) as f64;
    let ymax = lines
        .values()
        .flatten()
        .map(|p| p.1)
        .chain(io.values().flatten().map(|p| p.1))
        .fold(1.0, f64::max)
        * 1.1;

    let root = BitMapBackend::new(&args[2], (1100, 700)).into_drawing_area();
    root.fill(&WHITE)?;
    let title = format!(
        "tarp Mpps per core vs circuits ({}, {}, {})",
        res.meta.host.cpu, res.meta.git, res.meta.when
    );
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d((1f64..xmax * 1.5).log_scale(), 0f64..ymax)?;
    chart
        .configure_mesh()
        .x_desc("circuits in the table (log)")
        .y_desc("Mpps, one worker core, 64-byte frames")
        .x_label_formatter(&|x| {
            if *x >= 1e6 {
                format!("{:.0}M", x / 1e6)
            } else if *x >= 1e3 {
                format!("{:.0}k", x / 1e3)
            } else {
                format!("{x:.0}")
            }
        })
        .label_style(("sans-serif", 15))
        .draw()?;
    for ((role, dist), pts) in &lines {
        let c = colour(role);
        let pts: Vec<(f64, f64)> = pts.iter().map(|&(n, m)| (n as f64, m)).collect();
        let label = format!("tarp {role}, {dist}");
        if dist == "zipf" {
            chart
                .draw_series(DashedLineSeries::new(pts.clone(), 8, 5, c.stroke_width(2)))?
                .label(label)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2))
                });
        } else {
            chart
                .draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))?
                .label(label)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2))
                });
        }
        chart.draw_series(pts.iter().map(|&p| Circle::new(p, 4, c.filled())))?;
    }
    for (role, pts) in &io {
        let c = colour(role);
        let pts: Vec<(f64, f64)> = pts.iter().map(|&(n, m)| (n as f64, m)).collect();
        chart
            .draw_series(DashedLineSeries::new(pts, 2, 4, c.stroke_width(1)))?
            .label(format!("testpmd io on the {role}'s traffic"))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(1)));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .position(SeriesLabelPosition::UpperRight)
        .draw()?;
    root.present()?;
    println!("wrote {}", args[2]);
    Ok(())
}
