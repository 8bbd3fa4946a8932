//! The HTTP endpoint, on axum over a small tokio runtime of its own thread:
//!
//! * `GET /metrics`: Prometheus text, from the prometheus crate's registry, encoder and
//!   process collector, with the forwarder's own families from a custom collector that
//!   sums the workers' counters at scrape time;
//! * `GET /healthz`: 200 while the control thread runs;
//! * `GET /readyz`: 200 when ready (ports up, tables installed, every worker polling),
//!   else 503 and one line per reason;
//! * `GET /capture?port=P&hosts=A,B&l4port=N&count=K&seconds=T&snaplen=S&rate=R`: runs
//!   the packet recorder ([`crate::capture`]) and answers with the pcapng file once it
//!   has K packets or T seconds have passed (400 naming a bad parameter; 409 while
//!   another capture runs);
//! * anything else: 404.
//!
//! Clients are served concurrently: a slow one stalls nobody, and nothing here touches
//! the workers beyond reading their counters.

use std::future::IntoFuture;
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus::Registry;

use super::{registry, render, MetricsSource};
use crate::capture::{parse_query, Capture, CaptureError};

#[derive(Clone)]
struct App {
    source: Arc<MetricsSource>,
    registry: Arc<Registry>,
    capture: Arc<Capture>,
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

async fn healthz(State(app): State<App>) -> impl IntoResponse {
    if app.source.alive.load(Ordering::Relaxed) {
        (StatusCode::OK, "ok\n".to_string())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "the control thread has stopped\n".to_string(),
        )
    }
}

async fn readyz(State(app): State<App>) -> impl IntoResponse {
    let why = app.source.not_ready(Instant::now());
    if why.is_empty() {
        (StatusCode::OK, "ready\n".to_string())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            why.iter().map(|w| format!("{w}\n")).collect::<String>(),
        )
    }
}

/// Sets its flag when dropped.
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

async fn capture(
    State(app): State<App>,
    Query(q): Query<Vec<(String, String)>>,
) -> axum::response::Response {
    let ports: Vec<String> = app.source.ports.iter().map(|(n, _)| n.clone()).collect();
    let (req, limit) = match parse_query(q.iter().map(|(k, v)| (k.as_str(), v.as_str())), &ports) {
        Ok(r) => r,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    };
    tracing::info!(?req.filter, req.count, ?limit, "capture started");
    let recorder = app.capture.clone();
    // A client that hangs up ends its capture (axum drops this future, and the guard).
    let gone = CancelOnDrop(Arc::new(AtomicBool::new(false)));
    let cancelled = gone.0.clone();
    let ran = tokio::task::spawn_blocking(move || {
        crate::capture::run(&recorder, &req, limit, &ports, || {
            cancelled.load(Ordering::Relaxed)
        })
    })
    .await;
    drop(gone);
    match ran {
        Ok(Ok((file, summary))) => {
            tracing::info!(?summary, "capture done");
            (
                [
                    (header::CONTENT_TYPE, "application/x-pcapng".to_string()),
                    (
                        header::HeaderName::from_static("x-tarp-captured"),
                        format!(
                            "packets={} records={} missed={}",
                            summary.packets, summary.records, summary.missed
                        ),
                    ),
                ],
                file,
            )
                .into_response()
        }
        Ok(Err(e @ CaptureError::Busy)) => (StatusCode::CONFLICT, format!("{e}\n")).into_response(),
        Ok(Err(e)) => (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("capture: {e}\n")).into_response(),
    }
}

/// Burst-time quantiles per worker, in JSON: since the start, and since the window last
/// restarted (`POST /latency/reset`). For perf runs, which want p50/p99/p99.9 over their
/// measuring window rather than Prometheus buckets.
async fn latency(State(app): State<App>) -> impl IntoResponse {
    let workers = app
        .source
        .workers
        .iter()
        .map(|w| {
            format!(
                "{{\"worker\":{},\"since_start\":{},\"window\":{}}}",
                w.lcore,
                super::latency::summary_json(&w.latency.total()),
                super::latency::summary_json(&w.latency.window())
            )
        })
        .collect::<Vec<_>>()
        .join(",");
    (
        [(header::CONTENT_TYPE, "application/json")],
        format!("{{\"burst_duration\":[{workers}]}}\n"),
    )
}

async fn latency_reset(State(app): State<App>) -> impl IntoResponse {
    for w in &app.source.workers {
        w.latency.restart_window();
    }
    "window restarted\n"
}

/// `POST /bench/swaps?per_second=R`: the bench swap driver's rate (0 pauses it); 409
/// where the config has no `[bench] swaps_per_second`.
async fn bench_swaps(Query(q): Query<Vec<(String, String)>>) -> axum::response::Response {
    use crate::control::bench_swaps::{set_rate, RateError};
    let rate = q
        .iter()
        .find(|(k, _)| k == "per_second")
        .and_then(|(_, v)| v.parse::<f64>().ok())
        .unwrap_or(-1.0);
    match set_rate(rate) {
        Ok(()) => (StatusCode::OK, format!("bench swaps: {rate} per second\n")).into_response(),
        Err(e @ RateError::NotRunning) => (StatusCode::CONFLICT, format!("{e}\n")).into_response(),
        Err(e) => (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    }
}

async fn not_found() -> impl IntoResponse {
    (
        StatusCode::NOT_FOUND,
        "not found: /metrics, /healthz, /readyz, /capture, /latency\n",
    )
}

/// The endpoint's router.
fn router(source: Arc<MetricsSource>, registry: Arc<Registry>, capture: Arc<Capture>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/capture", get(self::capture))
        .route("/latency", get(latency))
        .route("/latency/reset", axum::routing::post(latency_reset))
        .route("/bench/swaps", axum::routing::post(bench_swaps))
        .fallback(not_found)
        .with_state(App {
            source,
            registry,
            capture,
        })
}

/// Serves the endpoint on `listener` until `stop` is set.
pub fn serve(
    listener: TcpListener,
    source: Arc<MetricsSource>,
    capture: Arc<Capture>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    let registry = Arc::new(registry(source.clone())?);
    listener.set_nonblocking(true)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let stopped = async move {
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        // Stopping drops the server and its connections: a scraper's keep-alive
        // connection must not hold the forwarder's shutdown.
        tokio::select! {
            served = axum::serve(listener, router(source, registry, capture)).into_future() => served?,
            () = stopped => {}
        }
        Ok(())
    })
}
