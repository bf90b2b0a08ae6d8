//! The unauthenticated status endpoint each service serves: `/metrics` (Prometheus text),
//! `/health` (the process is alive) and `/ready` (its broker and sinks are reachable).
//!
//! Readiness is a set of named checks that the service's own loops set as they learn of
//! outages, so `/ready` answers from what the service saw last, not from a probe per request.

use prometheus::{Encoder, Registry, TextEncoder};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
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

/// Binds the status server and returns its bound address (so tests can use port 0) and the
/// future that serves it until `shutdown` is cancelled.
pub async fn serve(
    addr: SocketAddr,
    registry: Registry,
    readiness: Readiness,
    shutdown: CancellationToken,
) -> anyhow::Result<(
    SocketAddr,
    impl std::future::Future<Output = ()> + Send + 'static,
)> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("METRICS_ADDR={addr}: cannot bind the status server: {e}"))?;
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
    let health = warp::path("health")
        .and(warp::path::end())
        .map(|| warp::reply::json(&serde_json::json!({"status": "ok"})));
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
}
