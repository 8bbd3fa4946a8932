//! Building the prometheus crate's metric families from values summed at scrape time,
//! and the registry and text a scrape serves.
//!
//! A custom collector hands the registry families it made itself: counters and gauges
//! from plain numbers, histograms from hdrhistogram buckets. The crate's text encoder
//! does the exposition (escaping label values, `# HELP` and `# TYPE`, `_bucket`,
//! `_sum`, `_count`).

use std::collections::HashMap;
use std::sync::Arc;

use prometheus::core::{Collector, Desc};
use prometheus::proto::{
    Bucket, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType,
};
use prometheus::{Encoder, Registry, TextEncoder};

use super::MetricsSource;

/// One metric family being filled.
pub struct Family(MetricFamily);

fn labels(pairs: &[(&str, &str)]) -> Vec<LabelPair> {
    pairs
        .iter()
        .map(|(k, v)| {
            let mut l = LabelPair::default();
            l.set_name((*k).to_string());
            l.set_value((*v).to_string());
            l
        })
        .collect()
}

impl Family {
    fn new(name: &str, help: &str, kind: MetricType) -> Family {
        let mut f = MetricFamily::default();
        f.set_name(name.to_string());
        f.set_help(help.to_string());
        f.set_field_type(kind);
        Family(f)
    }

    /// A counter family (`name` ends in `_total`).
    pub fn counter(name: &str, help: &str) -> Family {
        Family::new(name, help, MetricType::COUNTER)
    }

    /// A gauge family.
    pub fn gauge(name: &str, help: &str) -> Family {
        Family::new(name, help, MetricType::GAUGE)
    }

    /// A histogram family (`name` ends in the unit, `_seconds`).
    pub fn histogram(name: &str, help: &str) -> Family {
        Family::new(name, help, MetricType::HISTOGRAM)
    }

    /// Adds a counter or gauge sample.
    pub fn add(&mut self, pairs: &[(&str, &str)], value: f64) {
        let mut m = Metric::from_label(labels(pairs));
        match self.0.get_field_type() {
            MetricType::COUNTER => {
                let mut c = Counter::default();
                c.set_value(value);
                m.set_counter(c);
            }
            _ => {
                let mut g = Gauge::default();
                g.set_value(value);
                m.set_gauge(g);
            }
        }
        self.0.mut_metric().push(m);
    }

    /// Adds a histogram sample: cumulative counts per upper bound, the count and the sum.
    pub fn add_histogram(
        &mut self,
        pairs: &[(&str, &str)],
        buckets: &[(f64, u64)],
        count: u64,
        sum: f64,
    ) {
        let mut h = Histogram::default();
        h.set_sample_count(count);
        h.set_sample_sum(sum);
        h.set_bucket(
            buckets
                .iter()
                .map(|&(upper, c)| {
                    let mut b = Bucket::default();
                    b.set_upper_bound(upper);
                    b.set_cumulative_count(c);
                    b
                })
                .collect(),
        );
        let mut m = Metric::from_label(labels(pairs));
        m.set_histogram(h);
        self.0.mut_metric().push(m);
    }

    /// The finished family.
    pub fn done(self) -> MetricFamily {
        self.0
    }
}

/// Descriptors for families (name, help, label names of their first sample), for a
/// collector's `desc`.
pub fn descs_of(families: &[MetricFamily]) -> prometheus::Result<Vec<Desc>> {
    families
        .iter()
        .map(|f| {
            let names = f
                .get_metric()
                .first()
                .map(|m| m.get_label().iter().map(|l| l.name().to_string()).collect())
                .unwrap_or_default();
            Desc::new(
                f.name().to_string(),
                f.help().to_string(),
                names,
                HashMap::new(),
            )
        })
        .collect()
}

/// The forwarder's families, as a prometheus collector.
struct Forwarder {
    source: Arc<MetricsSource>,
    descs: Vec<Desc>,
}

impl Collector for Forwarder {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        self.source.families()
    }
}

/// The registry a scrape gathers: the forwarder's collector and the process's
/// (`process_resident_memory_bytes`, CPU seconds, open files).
pub fn registry(source: Arc<MetricsSource>) -> prometheus::Result<Registry> {
    let registry = Registry::new();
    let descs = descs_of(&source.families())?;
    registry.register(Box::new(Forwarder { source, descs }))?;
    registry.register(Box::new(
        prometheus::process_collector::ProcessCollector::for_self(),
    ))?;
    Ok(registry)
}

/// The text exposition of one scrape.
pub fn render(registry: &Registry) -> String {
    let mut buf = Vec::with_capacity(16 * 1024);
    // Text encoding into a Vec fails only on families the collector made wrong.
    if let Err(e) = TextEncoder::new().encode(&registry.gather(), &mut buf) {
        tracing::warn!(error = %e, "metrics: encoding");
    }
    String::from_utf8(buf).unwrap_or_default()
}
