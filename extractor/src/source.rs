//! One fetch from randomuser.me and the verdict on its answer.
//!
//! Only a JSON body with a non-empty `results` array and no `error` key is accepted; the body
//! is then passed on byte for byte. Everything else is a classified [`FetchError`], so each kind
//! can be counted and retried, and none of them ever reaches the topic.

use anyhow::Context;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde::de::IgnoredAny;
use std::time::Duration;

/// An accepted response.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// The body exactly as received.
    pub body: Bytes,
    /// Users in `results`.
    pub users: usize,
    /// When the response arrived: the message timestamp, and so the replay clock.
    pub fetched_at: DateTime<Utc>,
}

/// Why a fetch was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// 429: the API's rate limit.
    #[error("rate limited by the API (HTTP 429){}", fmt_retry(*retry_after))]
    RateLimited {
        /// The server's `Retry-After`, when it sent one.
        retry_after: Option<Duration>,
    },
    /// Any other non-2xx status.
    #[error("HTTP {status} from the API{}", fmt_retry(*retry_after))]
    Status {
        /// The status code.
        status: u16,
        /// The server's `Retry-After`, when it sent one.
        retry_after: Option<Duration>,
    },
    /// Connect/read failure or timeout.
    #[error("request failed: {0}")]
    Transport(String),
    /// The body ends mid-JSON.
    #[error("response body is truncated JSON: {0}")]
    Truncated(String),
    /// The body is not JSON at all (an HTML page, say).
    #[error("response body is not JSON: {0}")]
    NotJson(String),
    /// JSON carrying the API's `error` key.
    #[error("the API answered with an error: {0}")]
    ApiError(String),
    /// JSON whose `results` is missing or empty: looks like success, holds nothing.
    #[error("the API answered with no users")]
    EmptyResults,
}

fn fmt_retry(r: Option<Duration>) -> String {
    r.map(|d| format!(", retry after {}s", d.as_secs()))
        .unwrap_or_default()
}

impl FetchError {
    /// The `kind` label of `etl_extractor_fetch_errors_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            FetchError::RateLimited { .. } => "rate_limited",
            FetchError::Status { status, .. } if *status >= 500 => "server_error",
            FetchError::Status { .. } => "client_error",
            FetchError::Transport(_) => "transport",
            FetchError::Truncated(_) => "truncated",
            FetchError::NotJson(_) => "not_json",
            FetchError::ApiError(_) => "api_error",
            FetchError::EmptyResults => "empty_results",
        }
    }

    /// The delay the server asked for, which overrides our own backoff when longer.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            FetchError::RateLimited { retry_after } | FetchError::Status { retry_after, .. } => {
                *retry_after
            }
            _ => None,
        }
    }
}

#[derive(Deserialize)]
struct Envelope {
    #[serde(default)]
    results: Option<Vec<IgnoredAny>>,
    #[serde(default)]
    error: Option<serde_json::Value>,
}

/// Judges a 2xx body: the number of users when acceptable.
pub fn validate(body: &[u8]) -> Result<usize, FetchError> {
    let env: Envelope = serde_json::from_slice(body).map_err(|e| {
        if e.is_eof() {
            FetchError::Truncated(e.to_string())
        } else {
            FetchError::NotJson(e.to_string())
        }
    })?;
    if let Some(err) = env.error {
        let text = match err {
            serde_json::Value::String(s) => s,
            other => other.to_string(),
        };
        return Err(FetchError::ApiError(text));
    }
    match env.results {
        Some(r) if !r.is_empty() => Ok(r.len()),
        _ => Err(FetchError::EmptyResults),
    }
}

/// The HTTP side of the extractor: one client, one pinned URL.
#[derive(Debug, Clone)]
pub struct Source {
    client: reqwest::Client,
    url: url::Url,
}

impl Source {
    /// A source asking `url` for `results` users per fetch.
    pub fn new(
        url: &url::Url,
        results: u32,
        connect_timeout: Duration,
        request_timeout: Duration,
    ) -> anyhow::Result<Self> {
        let mut url = url.clone();
        let kept: Vec<(String, String)> = url
            .query_pairs()
            .filter(|(k, _)| k != "results")
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        url.query_pairs_mut()
            .clear()
            .extend_pairs(kept)
            .append_pair("results", &results.to_string());
        let client = reqwest::Client::builder()
            .connect_timeout(connect_timeout)
            .timeout(request_timeout)
            .user_agent(concat!(
                "randomuser-etl-extractor/",
                env!("CARGO_PKG_VERSION")
            ))
            .build()
            .context("cannot build the HTTP client")?;
        Ok(Self { client, url })
    }

    /// The exact URL fetched.
    pub fn url(&self) -> &url::Url {
        &self.url
    }

    /// Fetches once and judges the answer.
    pub async fn fetch(&self) -> Result<Fetched, FetchError> {
        let resp = self
            .client
            .get(self.url.clone())
            .send()
            .await
            .map_err(|e| FetchError::Transport(error_chain(&e)))?;
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        if status == reqwest::StatusCode::TOO_MANY_REQUESTS {
            return Err(FetchError::RateLimited { retry_after });
        }
        if !status.is_success() {
            return Err(FetchError::Status {
                status: status.as_u16(),
                retry_after,
            });
        }
        let body = resp
            .bytes()
            .await
            .map_err(|e| FetchError::Transport(error_chain(&e)))?;
        let fetched_at = Utc::now();
        let users = validate(&body)?;
        Ok(Fetched {
            body,
            users,
            fetched_at,
        })
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const V14: &[u8] =
        include_bytes!("../../fixtures/randomuser/v1.4-all-nationalities-111-users.json");
    const V13: &[u8] = include_bytes!("../../fixtures/randomuser/v1.3-compact-20-users.json");

    #[test]
    fn real_responses_are_accepted_with_their_user_counts() {
        assert_eq!(validate(V14).unwrap(), 111);
        assert_eq!(validate(V13).unwrap(), 20);
    }

    #[test]
    fn every_bad_answer_is_refused_by_kind() {
        let cases: [(&[u8], &str); 6] = [
            (br#"{"results":[],"info":{"seed":"d3adb33f","results":1,"page":1,"version":"1.4"}}"#, "empty_results"),
            (br#"{"error":"Uh oh, something has gone wrong."}"#, "api_error"),
            (br#"{"results":[{"gender":"female","name":{"#, "truncated"),
            (b"<html><body>502 Bad Gateway</body></html>", "not_json"),
            (br#"{"info":{}}"#, "empty_results"),
            (br#"{"results":[{}],"error":"partial"}"#, "api_error"),
        ];
        for (body, kind) in cases {
            let err = validate(body).unwrap_err();
            assert_eq!(err.kind(), kind, "{}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn results_parameter_is_set_once() {
        let url = url::Url::parse("https://randomuser.me/api/1.4/?results=3&nat=gb").unwrap();
        let s = Source::new(&url, 50, Duration::from_secs(1), Duration::from_secs(1)).unwrap();
        assert_eq!(
            s.url().as_str(),
            "https://randomuser.me/api/1.4/?nat=gb&results=50"
        );
    }
}
