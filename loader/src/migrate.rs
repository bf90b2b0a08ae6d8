//! `loader migrate`: apply the embedded migrations, or with `--check` only verify them — the
//! form a Kubernetes init step or a deploy gate wants.

use crate::config::MigrateConfig;
use crate::sink::postgres::MIGRATOR;
use anyhow::Context;
use etl_common::config::redact_url;
use secrecy::ExposeSecret;
use sqlx::{PgPool, Row};
use std::time::Duration;
use tokio::time::Instant;

/// How often `--wait` looks again.
const WAIT_POLL: Duration = Duration::from_secs(2);

/// `loader migrate [--check] [--wait D]`: applies (or only verifies) the migrations. With a
/// wait, an unreachable database or — for `--check` — a schema not yet migrated is looked at
/// again every two seconds until the wait runs out, so an init container waits in one process
/// instead of crash-looping into Kubernetes' growing restart back-off.
pub async fn run(config: &MigrateConfig) -> anyhow::Result<()> {
    let url = config.db.url()?;
    let deadline = Instant::now() + config.wait;
    loop {
        let outcome = once(url.expose_secret(), config.check).await;
        let problems = match outcome {
            Ok(problems) if problems.is_empty() => {
                tracing::info!("database schema is up to date");
                return Ok(());
            }
            Ok(problems) => {
                anyhow::anyhow!("database schema is not up to date: {}", problems.join("; "))
            }
            Err(e) => e,
        };
        if Instant::now() + WAIT_POLL > deadline {
            return Err(problems);
        }
        tracing::info!(reason = format!("{problems:#}"), retry_in = ?WAIT_POLL, "waiting (MIGRATE_WAIT)");
        tokio::time::sleep(WAIT_POLL).await;
    }
}

/// One attempt: connect, apply unless `check`, and list what is not up to date.
async fn once(url: &str, check: bool) -> anyhow::Result<Vec<String>> {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(10))
        .connect(url)
        .await
        .with_context(|| format!("connecting to {}", redact_url(url)))?;
    if !check {
        apply(&pool).await?;
    }
    let problems = problems(&pool).await;
    pool.close().await;
    problems
}

/// Applies every pending migration (sqlx serialises concurrent runners with an advisory lock).
/// A migration may rewrite a large table, so the loader's `statement_timeout` is lifted for it;
/// its `lock_timeout` stays, so a migration waiting for busy tables fails and is retried rather
/// than queueing every loader's writes behind its own lock request.
pub async fn apply(pool: &PgPool) -> anyhow::Result<()> {
    // Its own connection, made like the pool's but without the statement limit.
    let options = (*pool.connect_options())
        .clone()
        .options([("statement_timeout", "0")]);
    let own = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await?;
    let applied = MIGRATOR.run(&own).await.context("applying migrations");
    own.close().await;
    applied
}

/// Migrations not applied, or applied with different contents; empty means up to date.
pub async fn problems(pool: &PgPool) -> anyhow::Result<Vec<String>> {
    let exists: Option<String> = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations')::text")
        .fetch_one(pool)
        .await?;
    let applied: Vec<(i64, Vec<u8>)> = if exists.is_some() {
        sqlx::query("SELECT version, checksum FROM _sqlx_migrations WHERE success ORDER BY version")
            .fetch_all(pool)
            .await?
            .iter()
            .map(|r| Ok((r.try_get::<i64, _>(0)?, r.try_get::<Vec<u8>, _>(1)?)))
            .collect::<Result<_, sqlx::Error>>()?
    } else {
        Vec::new()
    };
    let mut out = Vec::new();
    for m in MIGRATOR
        .iter()
        .filter(|m| m.migration_type.is_up_migration())
    {
        match applied.iter().find(|(v, _)| *v == m.version) {
            None => out.push(format!("{} {} is not applied", m.version, m.description)),
            Some((_, sum)) if sum.as_slice() != &*m.checksum => out.push(format!(
                "{} {} was applied with different contents",
                m.version, m.description
            )),
            Some(_) => {}
        }
    }
    Ok(out)
}
