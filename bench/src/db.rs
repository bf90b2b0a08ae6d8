//! A fresh database per step, so no step sees another's rows, indexes or cache of them.

use anyhow::Context;
use sqlx::{Connection, PgConnection, PgPool};

/// A database made for one step, dropped by [`FreshDb::drop`].
pub struct FreshDb {
    /// Its name.
    pub name: String,
    /// A URL for it, with the admin URL's credentials.
    pub url: String,
    admin_url: String,
}

impl FreshDb {
    /// Creates `<prefix>_<uuid>` on the server of `admin_url` and, with `migrate`, applies the
    /// loader's migrations (the same schema and indexes the loader writes into).
    pub async fn create(admin_url: &str, prefix: &str, migrate: bool) -> anyhow::Result<Self> {
        let name = format!("{prefix}_{}", uuid::Uuid::new_v4().simple());
        let mut conn = PgConnection::connect(admin_url)
            .await
            .context("cannot connect to DATABASE_URL")?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .execute(&mut conn)
            .await
            .with_context(|| format!("creating database {name} (the role needs CREATEDB)"))?;
        let mut url = url::Url::parse(admin_url).context("DATABASE_URL is not a URL")?;
        url.set_path(&name);
        let db = Self {
            name,
            url: url.to_string(),
            admin_url: admin_url.to_string(),
        };
        if migrate {
            let pool = db.pool().await?;
            loader::migrate::apply(&pool).await?;
            pool.close().await;
        }
        Ok(db)
    }

    /// A small pool on it.
    pub async fn pool(&self) -> anyhow::Result<PgPool> {
        PgPool::connect(&self.url)
            .await
            .with_context(|| format!("connecting to {}", self.name))
    }

    /// Drops it; a failure only leaves a database behind, so it is logged. Tried a few times: an
    /// autovacuum worker busy on it (after a big load) belongs to the superuser, so `FORCE`
    /// cannot end it for a role without `pg_signal_backend`, and the drop fails until it is done.
    pub async fn drop(self) {
        let mut result = Ok(());
        for attempt in 0..10 {
            if attempt > 0 {
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
            result = async {
                let mut conn = PgConnection::connect(&self.admin_url).await?;
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                    self.name
                )))
                .execute(&mut conn)
                .await?;
                anyhow::Ok(())
            }
            .await;
            if result.is_ok() {
                return;
            }
        }
        if let Err(e) = result {
            eprintln!("[bench] could not drop database {}: {e:#}", self.name);
        }
    }
}

/// The group's positions as its batches store them in PostgreSQL.
pub struct StoredPositions {
    pool: sqlx::PgPool,
    group: String,
    topic: String,
}

impl StoredPositions {
    /// A one-connection pool on `url`, for `group` on `topic`.
    pub async fn new(url: &str, group: &str, topic: &str) -> anyhow::Result<Self> {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .connect(url)
            .await
            .context("connecting to the rebalance step's database")?;
        Ok(Self {
            pool,
            group: group.to_string(),
            topic: topic.to_string(),
        })
    }

    /// Records below the stored positions (the topic starts at 0); 0 until the first loader has
    /// created the table.
    pub async fn records(&self) -> anyhow::Result<i64> {
        let sum = sqlx::query_scalar(
            "SELECT coalesce(sum(next_offset), 0)::int8 FROM consumer_offsets WHERE group_id = $1 AND topic = $2",
        )
        .bind(&self.group)
        .bind(&self.topic)
        .fetch_one(&self.pool)
        .await;
        match sum {
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P01") => Ok(0),
            other => other.context("reading the stored positions"),
        }
    }

    /// Closes the pool.
    pub async fn close(self) {
        self.pool.close().await;
    }
}
