//! A local stand-in for randomuser.me, for tests and offline runs.
//!
//! It serves users taken from real captured responses (`fixtures/randomuser/`, v1.4 and v1.3),
//! in the 1.4 envelope, and honours `results` with the real API's quirk (anything not an
//! integer in 1..=5000 becomes 1). Each served user gets a fresh `login.uuid`, derived from
//! `seed`/`page`/index, so a load of N users holds N distinct users and tests can count exactly;
//! every other field is the captured one, Persian script and all.
//!
//! It can be told to fail — by a script of faults consumed one per request, or at random at a
//! given ratio — in every way the real service has been seen to fail.

use rand::Rng;
use serde_json::{Value, json};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::task::JoinHandle;
use warp::Filter;
use warp::http::{Response, StatusCode};

const FIXTURE_V14: &str =
    include_str!("../../fixtures/randomuser/v1.4-all-nationalities-111-users.json");
const FIXTURE_V13: &str = include_str!("../../fixtures/randomuser/v1.3-compact-20-users.json");
const FIXTURE_V10: &str = include_str!("../../fixtures/randomuser/v1.0-legacy-6-users.json");

/// Ways the stub answers instead of a good response, each one seen from the real service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Fault {
    /// 429 with `Retry-After` and the API's own "ease up there cowboy" JSON body.
    RateLimited,
    /// A bare 500.
    ServerError,
    /// A proxy's 502 HTML page.
    BadGatewayHtml,
    /// 200 with the body cut mid-JSON.
    Truncated,
    /// 200 with an HTML page instead of JSON.
    NotJson,
    /// 200 with `{"error": "Uh oh, something has gone wrong..."}`.
    ErrorBody,
    /// 200 with `{"results": []}`, as the real service answered in February 2026.
    EmptyResults,
    /// 200 with a legacy v1.0 body: valid JSON with users the 1.4 transform must refuse.
    LegacyShape,
}

impl Fault {
    /// Every fault that must never reach the topic.
    pub const ALL_REJECTED: [Fault; 7] = [
        Fault::RateLimited,
        Fault::ServerError,
        Fault::BadGatewayHtml,
        Fault::Truncated,
        Fault::NotJson,
        Fault::ErrorBody,
        Fault::EmptyResults,
    ];

    /// The name used on the command line and in stats.
    pub fn name(self) -> &'static str {
        match self {
            Fault::RateLimited => "429",
            Fault::ServerError => "500",
            Fault::BadGatewayHtml => "502-html",
            Fault::Truncated => "truncated",
            Fault::NotJson => "not-json",
            Fault::ErrorBody => "error-body",
            Fault::EmptyResults => "empty-results",
            Fault::LegacyShape => "legacy",
        }
    }

    /// Parses [`Fault::name`].
    pub fn parse(s: &str) -> Option<Fault> {
        Self::ALL_REJECTED
            .into_iter()
            .chain([Fault::LegacyShape])
            .find(|f| f.name() == s)
    }
}

/// What the stub should do: a script of faults for the first requests, then random faults at
/// `fail_ratio` drawn from `random_faults`.
#[derive(Debug, Clone, Default)]
pub struct FaultPlan {
    /// Consumed one per request, before any good answer.
    pub script: Vec<Fault>,
    /// Probability in 0..=1 that a request (after the script) fails.
    pub fail_ratio: f64,
    /// Faults drawn from when a random failure happens; empty means all rejected kinds.
    pub random_faults: Vec<Fault>,
    /// `Retry-After` seconds sent with 429.
    pub retry_after_secs: u64,
}

/// Counters the tests use to know exactly what was served.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Stats {
    /// Requests answered.
    pub requests: u64,
    /// Good responses.
    pub ok: u64,
    /// Users in good responses.
    pub users_served: u64,
    /// Faults answered, by name.
    pub faults: HashMap<String, u64>,
}

struct State {
    pool: Vec<Value>,
    legacy: Value,
    script: VecDeque<Fault>,
    plan: FaultPlan,
    stats: Stats,
    served_uuids: Vec<String>,
}

/// A running stub.
pub struct Stub {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

/// The users of the real 1.4 and 1.3 captures, the pool the stub serves from.
pub fn fixture_users() -> anyhow::Result<Vec<Value>> {
    let mut pool = Vec::new();
    for (name, text) in [("v1.4", FIXTURE_V14), ("v1.3", FIXTURE_V13)] {
        let doc: Value = serde_json::from_str(text)
            .map_err(|e| anyhow::anyhow!("fixture {name} is not JSON: {e}"))?;
        let results = doc["results"]
            .as_array()
            .ok_or_else(|| anyhow::anyhow!("fixture {name} has no results array"))?;
        pool.extend(results.iter().cloned());
    }
    Ok(pool)
}

impl Stub {
    /// Starts a stub on `addr` (port 0 picks a free one).
    pub async fn start(addr: SocketAddr, plan: FaultPlan) -> anyhow::Result<Stub> {
        let legacy: Value = serde_json::from_str(FIXTURE_V10)?;
        let state = Arc::new(Mutex::new(State {
            pool: fixture_users()?,
            legacy,
            script: plan.script.iter().copied().collect(),
            plan,
            stats: Stats::default(),
            served_uuids: Vec::new(),
        }));
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let st = state.clone();
        let api = warp::get()
            .and(warp::path("api"))
            .and(warp::query::<HashMap<String, String>>())
            .map(move |q: HashMap<String, String>| answer(&st, &q));
        let st2 = state.clone();
        let stats = warp::path!("stub" / "stats").map(move || {
            let s = lock(&st2);
            warp::reply::json(&s.stats)
        });
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = warp::serve(stats.or(api))
            .incoming(listener)
            .graceful(async move {
                let _ = rx.await;
            })
            .run();
        let task = tokio::spawn(server);
        Ok(Stub {
            addr,
            state,
            shutdown: Some(tx),
            task: Some(task),
        })
    }

    /// The pinned API URL to point the extractor at.
    pub fn url(&self) -> String {
        format!("http://{}/api/1.4/", self.addr)
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Counters so far.
    pub fn stats(&self) -> Stats {
        lock(&self.state).stats.clone()
    }

    /// The `login.uuid` of every user served in a good response, in order.
    pub fn served_uuids(&self) -> Vec<String> {
        lock(&self.state).served_uuids.clone()
    }

    /// Replaces the fault plan from now on.
    pub fn set_plan(&self, plan: FaultPlan) {
        let mut s = lock(&self.state);
        s.script = plan.script.iter().copied().collect();
        s.plan = plan;
    }

    /// Stops serving and waits for the server task.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Stub {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

fn answer(state: &Mutex<State>, q: &HashMap<String, String>) -> Response<Vec<u8>> {
    let mut s = lock(state);
    s.stats.requests += 1;
    let fault = match s.script.pop_front() {
        Some(f) => Some(f),
        None if s.plan.fail_ratio > 0.0 && rand::rng().random_bool(s.plan.fail_ratio.min(1.0)) => {
            let kinds = if s.plan.random_faults.is_empty() {
                Fault::ALL_REJECTED.to_vec()
            } else {
                s.plan.random_faults.clone()
            };
            Some(kinds[rand::rng().random_range(0..kinds.len())])
        }
        None => None,
    };
    if let Some(f) = fault {
        *s.stats.faults.entry(f.name().to_string()).or_default() += 1;
        return fault_response(f, s.plan.retry_after_secs, &s.legacy);
    }

    // The real API: results outside 1..=5000 or not an integer silently becomes 1.
    let n = q
        .get("results")
        .and_then(|r| r.parse::<u32>().ok())
        .filter(|n| (1..=5000).contains(n))
        .unwrap_or(1) as usize;
    let seed = q
        .get("seed")
        .cloned()
        .unwrap_or_else(|| format!("{:016x}", rand::rng().random::<u64>()));
    let page: u64 = q.get("page").and_then(|p| p.parse().ok()).unwrap_or(1);
    let (body, uuids) = response(&s.pool, &seed, page, n);
    s.served_uuids.extend(uuids);
    s.stats.ok += 1;
    s.stats.users_served += n as u64;
    json_response(
        StatusCode::OK,
        serde_json::to_vec(&body).unwrap_or_default(),
    )
}

/// A 1.4 response of `n` users drawn from `pool` (the real captures), each with a fresh
/// `login.uuid` derived from `seed`/`page`/index, so the same arguments give the same body and
/// different pages never repeat a user. Returns the body and the uuids it holds. The benchmark
/// builds its topic with this, so it loads exactly what the stub serves.
pub fn response(pool: &[Value], seed: &str, page: u64, n: usize) -> (Value, Vec<String>) {
    let mut results = Vec::with_capacity(n);
    let mut uuids = Vec::with_capacity(n);
    for i in 0..n {
        let key = format!("{seed}/{page}/{i}");
        let id = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_URL, key.as_bytes());
        let Some(user) = pool.get((id.as_u128() % pool.len().max(1) as u128) as usize) else {
            break;
        };
        let mut user = user.clone();
        if let Some(login) = user.get_mut("login").and_then(Value::as_object_mut) {
            login.insert("uuid".to_string(), Value::String(id.to_string()));
        }
        uuids.push(id.to_string());
        results.push(user);
    }
    let body = json!({
        "results": results,
        "info": {"seed": seed, "results": n, "page": page, "version": "1.4"}
    });
    (body, uuids)
}

fn json_response(code: StatusCode, body: Vec<u8>) -> Response<Vec<u8>> {
    let mut r = Response::new(body);
    *r.status_mut() = code;
    r.headers_mut().insert(
        "content-type",
        warp::http::HeaderValue::from_static("application/json; charset=utf-8"),
    );
    r
}

fn html_response(code: StatusCode, body: &str) -> Response<Vec<u8>> {
    let mut r = Response::new(body.as_bytes().to_vec());
    *r.status_mut() = code;
    r.headers_mut().insert(
        "content-type",
        warp::http::HeaderValue::from_static("text/html"),
    );
    r
}

fn fault_response(f: Fault, retry_after: u64, legacy: &Value) -> Response<Vec<u8>> {
    match f {
        Fault::RateLimited => {
            let mut r = json_response(
                StatusCode::TOO_MANY_REQUESTS,
                br#"{"error":"Whoa, ease up there cowboy. You've requested 20000 users in the last minute. Help us keep this service free and spread out your requests."}"#.to_vec(),
            );
            if let Ok(v) = warp::http::HeaderValue::from_str(&retry_after.to_string()) {
                r.headers_mut().insert("retry-after", v);
            }
            r
        }
        Fault::ServerError => {
            let mut r = Response::new(Vec::new());
            *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            r
        }
        Fault::BadGatewayHtml => html_response(
            StatusCode::BAD_GATEWAY,
            "<html><head><title>502 Bad Gateway</title></head><body><center><h1>502 Bad Gateway</h1></center><hr><center>nginx</center></body></html>",
        ),
        Fault::Truncated => json_response(
            StatusCode::OK,
            br#"{"results":[{"gender":"female","name":{"title":"Ms","first":"Ad"#.to_vec(),
        ),
        Fault::NotJson => html_response(StatusCode::OK, "<!DOCTYPE html><html><body>Maintenance</body></html>"),
        Fault::ErrorBody => json_response(
            StatusCode::OK,
            br#"{"error":"Uh oh, something has gone wrong. Please tweet us @randomapi about the issue. Thank you."}"#.to_vec(),
        ),
        Fault::EmptyResults => json_response(
            StatusCode::OK,
            br#"{"results":[],"info":{"seed":"d3adb33f","results":1,"page":1,"version":"1.4"}}"#.to_vec(),
        ),
        Fault::LegacyShape => json_response(StatusCode::OK, serde_json::to_vec(legacy).unwrap_or_default()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_is_every_real_1_4_and_1_3_user() {
        assert_eq!(fixture_users().unwrap().len(), 131);
    }

    #[test]
    fn fault_names_round_trip() {
        for f in Fault::ALL_REJECTED.into_iter().chain([Fault::LegacyShape]) {
            assert_eq!(Fault::parse(f.name()), Some(f));
        }
        assert_eq!(Fault::parse("nope"), None);
    }

    #[test]
    fn results_quirk_and_unique_uuids() {
        let state = Mutex::new(State {
            pool: fixture_users().unwrap(),
            legacy: Value::Null,
            script: VecDeque::new(),
            plan: FaultPlan::default(),
            stats: Stats::default(),
            served_uuids: Vec::new(),
        });
        for (arg, want) in [
            ("50", 50),
            ("0", 1),
            ("5001", 1),
            ("abc", 1),
            ("5000", 5000),
        ] {
            let q = HashMap::from([("results".to_string(), arg.to_string())]);
            let r = answer(&state, &q);
            let v: Value = serde_json::from_slice(r.body()).unwrap();
            assert_eq!(
                v["results"].as_array().unwrap().len(),
                want,
                "results={arg}"
            );
        }
        let uuids = lock(&state).served_uuids.clone();
        let unique: std::collections::HashSet<_> = uuids.iter().collect();
        assert_eq!(unique.len(), uuids.len());
    }

    #[test]
    fn seed_and_page_make_results_reproducible() {
        let state = Mutex::new(State {
            pool: fixture_users().unwrap(),
            legacy: Value::Null,
            script: VecDeque::new(),
            plan: FaultPlan::default(),
            stats: Stats::default(),
            served_uuids: Vec::new(),
        });
        let q = HashMap::from([
            ("results".to_string(), "5".to_string()),
            ("seed".to_string(), "abc".to_string()),
        ]);
        let a = answer(&state, &q);
        let b = answer(&state, &q);
        assert_eq!(a.body(), b.body());
    }
}
