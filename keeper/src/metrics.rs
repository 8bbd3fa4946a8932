//! The keeper's HTTP endpoint (`[keeper] metrics`): `GET /metrics` (Prometheus text
//! through the prometheus crate), `GET /healthz`, `GET /readyz` (ready: store open,
//! not failed, not shutting down), 404 for anything else.
//!
//! Counters and histograms are the keeper's own ([`KeeperMetrics`], recorded by its
//! steps); circuits by state and region, capture addresses, and each forwarder's
//! connection and generation lag are counted at scrape time by a custom collector.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{Encoder, GaugeVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};

use crate::server::{Keeper, KeeperMetrics};

/// Counts over the keeper's state, made at each scrape.
struct StateCollector {
    keeper: Arc<Keeper>,
    descs: Vec<Desc>,
}

struct StateFamilies {
    circuits: IntGaugeVec,
    captures: IntGaugeVec,
    generation: IntGauge,
    connected: IntGaugeVec,
    published: IntGaugeVec,
    acked: IntGaugeVec,
    lag: IntGaugeVec,
    silent: GaugeVec,
}

fn gauge_vec(name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric")
}

impl StateFamilies {
    fn new() -> StateFamilies {
        StateFamilies {
            circuits: gauge_vec(
                "tarp_keeper_circuits",
                "Circuits the keeper holds, by region and state.",
                &["region", "state"],
            ),
            captures: gauge_vec(
                "tarp_keeper_capture_addresses",
                "Capture addresses of the inventory, by region and state (free, held by a live circuit, line_down).",
                &["region", "state"],
            ),
            generation: IntGauge::new(
                "tarp_keeper_generation",
                "The keeper's last table generation.",
            )
            .expect("valid metric"),
            connected: gauge_vec(
                "tarp_keeper_forwarder_connected",
                "1 if the forwarder has a stream open to the keeper.",
                &["node", "roles"],
            ),
            published: gauge_vec(
                "tarp_keeper_forwarder_published_generation",
                "The generation the keeper published for a forwarder.",
                &["node"],
            ),
            acked: gauge_vec(
                "tarp_keeper_forwarder_acked_generation",
                "The generation a forwarder acknowledged.",
                &["node"],
            ),
            lag: gauge_vec(
                "tarp_keeper_forwarder_generations_behind",
                "Generations published for a forwarder and not yet acknowledged by it.",
                &["node"],
            ),
            silent: GaugeVec::new(
                Opts::new(
                    "tarp_keeper_forwarder_silence_seconds",
                    "Seconds since the keeper last heard from a forwarder.",
                ),
                &["node"],
            )
            .expect("valid metric"),
        }
    }

    fn descs(&self) -> Vec<Desc> {
        let mut d = Vec::new();
        d.extend(self.circuits.desc().into_iter().cloned());
        d.extend(self.captures.desc().into_iter().cloned());
        d.extend(self.generation.desc().into_iter().cloned());
        d.extend(self.connected.desc().into_iter().cloned());
        d.extend(self.published.desc().into_iter().cloned());
        d.extend(self.acked.desc().into_iter().cloned());
        d.extend(self.lag.desc().into_iter().cloned());
        d.extend(self.silent.desc().into_iter().cloned());
        d
    }
}

impl Collector for StateCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let Ok(counts) = self.keeper.state_counts() else {
            return Vec::new();
        };
        // Fresh families each scrape: a region or state that went away is not shown.
        let f = StateFamilies::new();
        for ((region, state), n) in &counts.circuits {
            f.circuits
                .with_label_values(&[region.as_str(), state])
                .set(*n as i64);
        }
        for ((region, state), n) in &counts.captures {
            f.captures
                .with_label_values(&[region.as_str(), state])
                .set(*n as i64);
        }
        f.generation.set(counts.generation as i64);
        for v in &counts.forwarders {
            let node = v.node.as_str();
            f.connected
                .with_label_values(&[node, v.roles.as_str()])
                .set(v.connected as i64);
            f.published
                .with_label_values(&[node])
                .set(v.published as i64);
            f.acked.with_label_values(&[node]).set(v.acked as i64);
            f.lag
                .with_label_values(&[node])
                .set(v.published.saturating_sub(v.acked) as i64);
            f.silent.with_label_values(&[node]).set(v.silent_s);
        }
        let mut out = Vec::new();
        out.extend(f.circuits.collect());
        out.extend(f.captures.collect());
        out.extend(f.generation.collect());
        out.extend(f.connected.collect());
        out.extend(f.published.collect());
        out.extend(f.acked.collect());
        out.extend(f.lag.collect());
        out.extend(f.silent.collect());
        out
    }
}

/// The registry a scrape gathers: the keeper's counters and histograms, its state
/// counts, and the process collector.
pub fn registry(keeper: Arc<Keeper>) -> prometheus::Result<Registry> {
    let r = Registry::new();
    let KeeperMetrics {
        activations,
        activation_seconds,
        releases,
        bounces,
        lease_expiries,
        store_commit_seconds,
        ack_wait_seconds,
        hellos,
    } = keeper.metrics().clone();
    r.register(Box::new(activations))?;
    r.register(Box::new(activation_seconds))?;
    r.register(Box::new(releases))?;
    r.register(Box::new(bounces))?;
    r.register(Box::new(lease_expiries))?;
    r.register(Box::new(store_commit_seconds))?;
    r.register(Box::new(ack_wait_seconds))?;
    r.register(Box::new(hellos))?;
    let descs = StateFamilies::new().descs();
    r.register(Box::new(StateCollector { keeper, descs }))?;
    r.register(Box::new(
        prometheus::process_collector::ProcessCollector::for_self(),
    ))?;
    Ok(r)
}

/// The text exposition of one scrape.
pub fn render(registry: &Registry) -> String {
    let mut buf = Vec::with_capacity(8 * 1024);
    if let Err(e) = TextEncoder::new().encode(&registry.gather(), &mut buf) {
        tracing::warn!(error = %e, "metrics: encoding");
    }
    String::from_utf8(buf).unwrap_or_default()
}

#[derive(Clone)]
struct App {
    keeper: Arc<Keeper>,
    registry: Arc<Registry>,
}

async fn metrics(State(app): State<App>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        render(&app.registry),
    )
}

async fn healthz() -> impl IntoResponse {
    (StatusCode::OK, "ok\n")
}

async fn readyz(State(app): State<App>) -> impl IntoResponse {
    let why = app.keeper.not_ready();
    if why.is_empty() {
        (StatusCode::OK, "ready\n".to_string())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            why.iter().map(|w| format!("{w}\n")).collect::<String>(),
        )
    }
}

async fn not_found() -> impl IntoResponse {
    (
        StatusCode::NOT_FOUND,
        "not found: /metrics, /healthz, /readyz\n",
    )
}

/// The endpoint's router.
pub fn router(keeper: Arc<Keeper>) -> prometheus::Result<Router> {
    let registry = Arc::new(registry(keeper.clone())?);
    Ok(Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(not_found)
        .with_state(App { keeper, registry }))
}
