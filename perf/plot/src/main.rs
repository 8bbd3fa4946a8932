//! `tarp-perf-plot RESULTS.json OUT.png`: Mpps per core against circuits (log scale),
//! one colour per role, solid for uniform traffic and dashed for Zipf, with testpmd io
//! (dotted) and DPDK's l3fwd (long dashes, crosses) on each size's traffic as thin lines
//! per role: the picture of `perf/run.sh`'s sizes suite.
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
    l3fwd_em: Option<Measured>,
}

#[derive(Deserialize)]
struct Measured {
    mpps: Option<f64>,
}

type Chart<'a> = ChartContext<
    'a,
    BitMapBackend<'a>,
    Cartesian2d<
        plotters::coord::combinators::LogCoord<f64>,
        plotters::coord::types::RangedCoordf64,
    >,
>;

/// Draws one line (dashed when `dash` gives dash and gap lengths) with its legend entry
/// drawn the same way; returns its points.
fn series(
    chart: &mut Chart<'_>,
    pts: &[(u64, f64)],
    style: ShapeStyle,
    dash: Option<(u32, u32)>,
    label: String,
) -> Result<Vec<(f64, f64)>> {
    let pts: Vec<(f64, f64)> = pts.iter().map(|&(n, m)| (n as f64, m)).collect();
    let anno = match dash {
        Some((size, gap)) => {
            chart.draw_series(DashedLineSeries::new(pts.clone(), size, gap, style))?
        }
        None => chart.draw_series(LineSeries::new(pts.clone(), style))?,
    };
    anno.label(label).legend(move |(x, y)| {
        let (size, gap) = dash.unwrap_or((20, 0));
        plotters::element::DashedPathElement::new(vec![(x, y), (x + 20, y)], size, gap, style)
    });
    Ok(pts)
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
    let mut l3fwd: BTreeMap<String, Vec<(u64, f64)>> = BTreeMap::new();
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
        if let Some(m) = r.l3fwd_em.as_ref().and_then(|t| t.mpps) {
            l3fwd
                .entry(r.role.clone())
                .or_default()
                .push((r.circuits, m));
        }
    }
    if lines.is_empty() {
        bail!("{}: no 64-byte single-worker runs to plot", args[1]);
    }
    for v in lines
        .values_mut()
        .chain(io.values_mut())
        .chain(l3fwd.values_mut())
    {
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
        .chain(io.values().chain(l3fwd.values()).flatten().map(|p| p.1))
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
        let dash = (dist == "zipf").then_some((8, 5));
        let label = format!("tarp {role}, {dist}");
        let pts = series(&mut chart, pts, c.stroke_width(2), dash, label)?;
        chart.draw_series(pts.iter().map(|&p| Circle::new(p, 4, c.filled())))?;
    }
    for (role, pts) in &io {
        let c = colour(role).stroke_width(1);
        series(
            &mut chart,
            pts,
            c,
            Some((2, 4)),
            format!("testpmd io on the {role}'s traffic"),
        )?;
    }
    for (role, pts) in &l3fwd {
        let c = colour(role).stroke_width(1);
        let label = format!("DPDK l3fwd (exact match) on the {role}'s traffic");
        let pts = series(&mut chart, pts, c, Some((12, 4)), label)?;
        chart.draw_series(pts.iter().map(|&p| Cross::new(p, 4, c)))?;
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
