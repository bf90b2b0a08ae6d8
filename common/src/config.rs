//! Config building blocks shared by both services' typed config structs.
//!
//! Every flag has an environment variable, and its `value_name` is that variable, so clap's
//! error for a bad value names exactly the variable the operator has to fix.

use anyhow::Context;
use clap::{Args, ValueEnum};
use std::path::PathBuf;
use std::time::Duration;

/// Parses `100ms`, `2s`, `1m`, `1h 30m`: the forms operators write in env files.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("{e} (expected a duration such as 100ms, 2s, 1m)"))
}

/// A secret value (`secrecy`): `Debug` prints `[REDACTED]`, so a config dump or a panic cannot
/// leak it, and the memory is zeroed on drop. Read it with [`secrecy::ExposeSecret`]. clap
/// parses a flag or variable straight into it (`From<&str>`), so a config struct's own `Debug`
/// can never print it.
pub type Secret = secrecy::SecretString;

/// Takes a secret from its variable or, as Kubernetes and Docker secrets are mounted, from the
/// file named by `<VAR>_FILE`. The file wins only when the plain value is absent.
pub fn secret_from(
    value: Option<Secret>,
    file: Option<&PathBuf>,
    var: &str,
) -> anyhow::Result<Option<Secret>> {
    if let Some(v) = value {
        return Ok(Some(v));
    }
    match file {
        None => Ok(None),
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| {
                format!("{var}_FILE={}: cannot read the secret file", path.display())
            })?;
            Ok(Some(Secret::from(text.trim_end_matches(['\n', '\r']))))
        }
    }
}

/// Removes the password (and any query string or fragment, which may hold tokens) from a URL
/// for logs. Text that does not parse as a URL is replaced whole: we cannot know where its
/// secret is.
pub fn redact_url(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut u) => {
            // An unescaped '/', '?', '#' or '@' in a password moves the authority's end, so part
            // of the password lands in the host, path, query or fragment. Any '@' besides the
            // one that ends the user info means we cannot tell password from host: show neither.
            let userinfo_ats = usize::from(!u.username().is_empty() || u.password().is_some());
            if raw.matches('@').count() != userinfo_ats {
                return format!("{}://<redacted>", u.scheme());
            }
            if u.password().is_some() {
                let _ = u.set_password(Some("***"));
            }
            if u.query().is_some() {
                u.set_query(Some("***"));
            }
            if u.fragment().is_some() {
                u.set_fragment(Some("***"));
            }
            u.to_string()
        }
        Err(_) => "<unparseable url redacted>".to_string(),
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// Logging flags, the same for both services.
#[derive(Debug, Clone, Args)]
pub struct LogArgs {
    /// Directory for the rolling log files (one per day), beside stdout. Empty disables files.
    #[arg(
        long = "log-dir",
        env = "LOG_DIR",
        value_name = "LOG_DIR",
        default_value = "logs"
    )]
    pub dir: String,
    /// `text` or `json`.
    #[arg(
        long = "log-format",
        env = "LOG_FORMAT",
        value_name = "LOG_FORMAT",
        default_value = "text"
    )]
    pub format: LogFormat,
    /// Filter in `tracing` syntax, e.g. `info` or `info,loader=debug`.
    #[arg(
        long = "log-level",
        env = "LOG_LEVEL",
        value_name = "LOG_LEVEL",
        default_value = "info"
    )]
    pub level: String,
}

/// Liveness flags, the same for both services.
#[derive(Debug, Clone, Args)]
pub struct HealthArgs {
    /// `/health` answers 503 once the service's main loop has not turned for this long (a
    /// deadlock, a blocked thread), so the orchestrator restarts it. Waiting out an outage keeps
    /// the loop turning: that shows on `/ready` only.
    #[arg(long = "health-stall-timeout", env = "HEALTH_STALL_TIMEOUT", value_name = "HEALTH_STALL_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub stall_timeout: Duration,
}

impl HealthArgs {
    /// Checks what clap cannot.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.stall_timeout < Duration::from_secs(1) {
            anyhow::bail!("HEALTH_STALL_TIMEOUT must be at least 1s");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    #[test]
    fn durations_in_operator_forms() {
        assert_eq!(parse_duration("100ms"), Ok(Duration::from_millis(100)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert!(parse_duration("soon").is_err());
        assert!(
            parse_duration("10").is_err(),
            "a bare number has no unit and must be refused"
        );
    }

    #[test]
    fn urls_lose_their_password_and_query() {
        assert_eq!(
            redact_url("postgres://etl:hunter2@db:5432/etl"),
            "postgres://etl:***@db:5432/etl"
        );
        assert_eq!(
            redact_url("https://randomuser.me/api/1.4/?token=abc"),
            "https://randomuser.me/api/1.4/?***"
        );
        assert!(!redact_url("not a url hunter2").contains("hunter2"));
        // Passwords with the characters that end a URL's authority early.
        for password in ["12/ab", "hun?ter2", "hun#ter2", "zq@yy/wv?uu#kk"] {
            let raw = format!("postgres://etl:{password}@db:5432/etl");
            let shown = redact_url(&raw);
            for part in password.split(['/', '?', '#', '@']) {
                assert!(!shown.contains(part), "{raw} shown as {shown}");
            }
        }
        assert_eq!(
            redact_url("postgres://etl:p%40ss@db/etl?sslmode=require#frag"),
            "postgres://etl:***@db/etl?***#***"
        );
    }

    #[test]
    fn secrets_do_not_debug_print() {
        let s = Secret::from("hunter2");
        assert!(!format!("{s:?}").contains("hunter2"));
        assert_eq!(s.expose_secret(), "hunter2");
    }

    #[test]
    fn secret_file_is_read_and_trimmed() {
        let dir = std::env::temp_dir().join(format!("etl-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("pw");
        std::fs::write(&path, "s3cret\n").unwrap();
        let got = secret_from(None, Some(&path), "X").unwrap().unwrap();
        assert_eq!(got.expose_secret(), "s3cret");
        let err = secret_from(None, Some(&dir.join("missing")), "KAFKA_SASL_PASSWORD").unwrap_err();
        assert!(err.to_string().contains("KAFKA_SASL_PASSWORD_FILE"));
    }
}
