//! The unauthenticated status endpoint each service serves: `/metrics` (Prometheus text),
//! `/health` (its main loop is alive) and `/ready` (its broker and sinks are reachable).
//!
//! Readiness is a set of named checks that the service's own loops set as they learn of
//! outages, so `/ready` answers from what the service saw last, not from a probe per request.
//! Liveness is a heartbeat the main loop gives on every turn and while it waits out an outage:
//! `/health` fails only when the loop itself stopped turning (a deadlock, a blocked thread), which
//! a restart fixes; an outage, which a restart cannot fix, shows on `/ready` alone.

use anyhow::Context;
use prometheus::{Encoder, Registry, TextEncoder};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use warp::Filter;
use warp::http::StatusCode;

/// Named readiness checks, all of which must pass for `/ready` to answer 200.
#[derive(Debug, Clone, Default)]
pub struct Readiness {
    checks: Arc<Mutex<BTreeMap<&'static str, Result<(), String>>>>,
}

impl Readiness {
    /// Registers a check as failing until the service first sees it succeed.
    pub fn register(&self, name: &'static str) {
        self.lock().insert(name, Err("not checked yet".to_string()));
    }

    /// Marks `name` as passing.
    pub fn set_ok(&self, name: &'static str) {
        self.lock().insert(name, Ok(()));
    }

    /// Marks `name` as failing, with the reason shown by `/ready`.
    pub fn set_failed(&self, name: &'static str, reason: impl Into<String>) {
        self.lock().insert(name, Err(reason.into()));
    }

    /// True when every check passes.
    pub fn is_ready(&self) -> bool {
        self.lock().values().all(Result::is_ok)
    }

    /// The checks as JSON: `{"ready":bool,"checks":{"name":"ok"|"reason"}}`.
    pub fn report(&self) -> serde_json::Value {
        let checks = self.lock();
        let map: serde_json::Map<String, serde_json::Value> = checks
            .iter()
            .map(|(k, v)| {
                let s = match v {
                    Ok(()) => "ok".to_string(),
                    Err(e) => e.clone(),
                };
                (k.to_string(), serde_json::Value::String(s))
            })
            .collect();
        serde_json::json!({ "ready": checks.values().all(Result::is_ok), "checks": map })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<&'static str, Result<(), String>>> {
        // A poisoned lock only means a panic elsewhere while holding it; the map stays usable.
        self.checks.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// How often [`Liveness::waiting`] beats while the future it waits on is pending.
const BEAT_WHILE_WAITING: Duration = Duration::from_secs(1);

/// The main loop's heartbeat: `/health` answers 503 once the last beat is older than
/// `stall_timeout`, so the orchestrator restarts a loop that stopped turning.
#[derive(Debug, Clone)]
pub struct Liveness {
    inner: Arc<LivenessInner>,
}

#[derive(Debug)]
struct LivenessInner {
    origin: Instant,
    /// Milliseconds from `origin` to the last beat.
    last: AtomicU64,
    stall_timeout: Duration,
}

impl Liveness {
    /// A heartbeat that counts as beaten now and goes stale after `stall_timeout` without a beat.
    pub fn new(stall_timeout: Duration) -> Self {
        Self {
            inner: Arc::new(LivenessInner {
                origin: Instant::now(),
                last: AtomicU64::new(0),
                stall_timeout,
            }),
        }
    }

    /// Records that the loop is turning.
    pub fn beat(&self) {
        let ms = u64::try_from(self.inner.origin.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.inner.last.fetch_max(ms, Ordering::Relaxed);
    }

    /// Time since the last beat.
    pub fn since_last_beat(&self) -> Duration {
        let last = Duration::from_millis(self.inner.last.load(Ordering::Relaxed));
        self.inner.origin.elapsed().saturating_sub(last)
    }

    /// True once the loop has not beaten for `stall_timeout`.
    pub fn is_stalled(&self) -> bool {
        self.since_last_beat() > self.inner.stall_timeout
    }

    /// Awaits `fut` — a wait on the outside world that is meant to last out an outage (a broker
    /// that is down, a database that does not answer) — beating while it is pending, so the wait
    /// shows as an outage on `/ready` and not as a dead loop on `/health`. A future that blocks
    /// its thread still stops the beat.
    pub async fn waiting<F: std::future::Future>(&self, fut: F) -> F::Output {
        let mut fut = std::pin::pin!(fut);
        let mut tick = tokio::time::interval(BEAT_WHILE_WAITING);
        loop {
            tokio::select! {
                biased;
                out = &mut fut => {
                    self.beat();
                    return out;
                }
                _ = tick.tick() => self.beat(),
            }
        }
    }

    fn report(&self) -> (StatusCode, serde_json::Value) {
        let since = self.since_last_beat().as_secs_f64();
        if self.is_stalled() {
            let body = serde_json::json!({
                "status": "stalled",
                "last_beat_seconds_ago": since,
                "stall_timeout_seconds": self.inner.stall_timeout.as_secs_f64(),
            });
            (StatusCode::SERVICE_UNAVAILABLE, body)
        } else {
            let body = serde_json::json!({ "status": "ok", "last_beat_seconds_ago": since });
            (StatusCode::OK, body)
        }
    }
}

/// Binds the status server and returns its bound address (so tests can use port 0) and the
/// future that serves it until `shutdown` is cancelled.
pub async fn serve(
    addr: SocketAddr,
    registry: Registry,
    readiness: Readiness,
    liveness: Liveness,
    shutdown: CancellationToken,
) -> anyhow::Result<(
    SocketAddr,
    impl std::future::Future<Output = ()> + Send + 'static,
)> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("METRICS_ADDR={addr}: cannot bind the status server"))?;
    let bound = listener.local_addr()?;

    let metrics = warp::path("metrics").and(warp::path::end()).map(move || {
        let mut buf = Vec::new();
        let families = registry.gather();
        match TextEncoder::new().encode(&families, &mut buf) {
            Ok(()) => warp::reply::with_status(
                warp::reply::with_header(buf, "content-type", "text/plain; version=0.0.4"),
                StatusCode::OK,
            ),
            Err(e) => warp::reply::with_status(
                warp::reply::with_header(e.to_string().into_bytes(), "content-type", "text/plain"),
                StatusCode::INTERNAL_SERVER_ERROR,
            ),
        }
    });
    let health = warp::path("health").and(warp::path::end()).map(move || {
        let (code, body) = liveness.report();
        warp::reply::with_status(warp::reply::json(&body), code)
    });
    let ready = warp::path("ready").and(warp::path::end()).map(move || {
        let code = if readiness.is_ready() {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        warp::reply::with_status(warp::reply::json(&readiness.report()), code)
    });
    let routes = warp::get().and(metrics.or(health).or(ready));
    let server = warp::serve(routes)
        .incoming(listener)
        .graceful(async move { shutdown.cancelled_owned().await })
        .run();
    Ok((bound, server))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_when_every_check_passes() {
        let r = Readiness::default();
        assert!(r.is_ready(), "no checks means nothing is failing");
        r.register("kafka");
        r.register("postgres");
        assert!(!r.is_ready());
        r.set_ok("kafka");
        assert!(!r.is_ready());
        r.set_ok("postgres");
        assert!(r.is_ready());
        r.set_failed("postgres", "connection refused");
        assert!(!r.is_ready());
        assert_eq!(r.report()["checks"]["postgres"], "connection refused");
    }

    #[tokio::test(start_paused = true)]
    async fn stalled_only_when_the_loop_stops_beating() {
        let live = Liveness::new(Duration::from_secs(10));
        assert!(!live.is_stalled(), "a new heartbeat counts as beaten");
        tokio::time::advance(Duration::from_secs(9)).await;
        live.beat();
        tokio::time::advance(Duration::from_secs(9)).await;
        assert!(!live.is_stalled());
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(live.is_stalled());
        assert_eq!(live.report().0, StatusCode::SERVICE_UNAVAILABLE);
        live.beat();
        assert!(!live.is_stalled(), "a loop that turns again is alive again");
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_out_an_outage_keeps_beating() {
        let live = Liveness::new(Duration::from_secs(5));
        // A minute-long wait on the outside world is an outage, not a dead loop.
        let out = live
            .waiting(async {
                tokio::time::sleep(Duration::from_secs(60)).await;
                7
            })
            .await;
        assert_eq!(out, 7);
        assert!(!live.is_stalled());
        tokio::time::advance(Duration::from_secs(6)).await;
        assert!(live.is_stalled(), "no wait, no beat");
    }
}
