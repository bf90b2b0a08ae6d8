//! `loader migrate`: apply the embedded migrations, or with `--check` only verify them — the
//! form a Kubernetes init step or a deploy gate wants.

use crate::sink::postgres::MIGRATOR;
use sqlx::{PgPool, Row};

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
    let applied = MIGRATOR
        .run(&own)
        .await
        .map_err(|e| anyhow::anyhow!("applying migrations: {e}"));
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
