//! Opening the PostgreSQL store: the pool and its session settings, the migrations, and
//! the dev-mode marker a database keeps for life.

use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use super::PgStore;
use crate::lease::{DEFAULT_LEASE_TTL, lock_wait_for};
use crate::store::{Mode, StoreError, StoreResult, db};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/postgres");

/// The settings of every session: lock waits and idle transactions end within `lock_wait`
/// (below the shard lease margin: a takeover never waits long behind a write, nor behind
/// the open transaction of a frozen node), statements within 10 s.
fn session_settings(lock_wait: Duration) -> String {
    let ms = lock_wait.as_millis().max(1);
    format!(
        "SET lock_timeout = '{ms}ms'; SET idle_in_transaction_session_timeout = '{ms}ms'; SET statement_timeout = '10s'"
    )
}

impl PgStore {
    /// Connects with the lock wait of the default lease TTL ([`lock_wait_for`]).
    pub async fn connect(url: &str, mode: Mode) -> StoreResult<Self> {
        Self::connect_with(url, mode, lock_wait_for(DEFAULT_LEASE_TTL)).await
    }

    /// Connects; every session's lock waits and idle transactions end within `lock_wait`.
    pub async fn connect_with(url: &str, mode: Mode, lock_wait: Duration) -> StoreResult<Self> {
        let settings: std::sync::Arc<str> = session_settings(lock_wait).into();
        let opts: PgConnectOptions = url
            .parse()
            .map_err(|e: sqlx::Error| StoreError::Config(format!("bad PostgreSQL URL: {e}")))?;
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(10))
            .after_connect(move |conn, _| {
                let settings = settings.to_string();
                Box::pin(async move {
                    sqlx::raw_sql(sqlx::AssertSqlSafe(settings))
                        .execute(conn)
                        .await?;
                    Ok(())
                })
            })
            .connect_with(opts.clone())
            .await
            .map_err(db("connecting to PostgreSQL"))?;
        // Migrations run on a connection of their own without the lock wait: nodes starting
        // together queue on the migrator's advisory lock for as long as the first one takes.
        // (A pool of one: `Migrator::run` on a bare `&mut PgConnection` makes the caller's
        // future fail the `Send` check.)
        let migrating = PgPoolOptions::new()
            .max_connections(1)
            .connect_with(opts)
            .await
            .map_err(db("connecting to PostgreSQL"))?;
        let migrated = MIGRATOR.run(&migrating).await;
        migrating.close().await;
        migrated.map_err(StoreError::Migrate)?;
        let store = PgStore { pool };
        store.check_mode(mode).await?;
        Ok(store)
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    async fn check_mode(&self, mode: Mode) -> StoreResult<()> {
        let want = if mode == Mode::Dev {
            "dev"
        } else {
            "production"
        };
        let stored: String = sqlx::query_scalar(
            "WITH ins AS (INSERT INTO cluster_meta (key, value) VALUES ('mode', $1) ON CONFLICT (key) DO UPDATE SET value = cluster_meta.value RETURNING value)
             SELECT value FROM ins",
        )
        .bind(want)
        .fetch_one(&self.pool)
        .await
        .map_err(db("reading the database mode"))?;
        if stored != want {
            return Err(StoreError::ModeMismatch {
                database_is_dev: stored == "dev",
            });
        }
        Ok(())
    }
}
