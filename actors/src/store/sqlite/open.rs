//! Opening the SQLite store: the file and its lock file, the migrations, and the
//! `cluster_meta` values (the dev-mode marker, the shard count) a database keeps for life.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::Utc;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

use super::{SqliteStore, micros};
use crate::store::{Mode, StoreError, StoreResult, db};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite");

impl SqliteStore {
    pub async fn open(path: impl AsRef<Path>, mode: Mode) -> StoreResult<Self> {
        let path = path.as_ref();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| StoreError::Config(format!("creating {}: {e}", dir.display())))?;
        }
        let lock_path = PathBuf::from(format!("{}.lock", path.display()));
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| {
                StoreError::Config(format!(
                    "opening the lock file {}: {e}",
                    lock_path.display()
                ))
            })?;
        // Two processes must never run actor trees on one file.
        if lock.try_lock().is_err() {
            return Err(StoreError::Locked {
                path: path.to_path_buf(),
            });
        }
        let opts = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(5));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(opts)
            .await
            .map_err(db("opening the SQLite database"))?;
        MIGRATOR.run(&pool).await.map_err(StoreError::Migrate)?;
        let store = SqliteStore { pool, _lock: lock };
        store.check_mode(mode).await?;
        Ok(store)
    }

    async fn check_mode(&self, mode: Mode) -> StoreResult<()> {
        let want = if mode == Mode::Dev {
            "dev"
        } else {
            "production"
        };
        let stored = self.meta_get_or_insert("mode", want).await?;
        if stored != want {
            return Err(StoreError::ModeMismatch {
                database_is_dev: stored == "dev",
            });
        }
        Ok(())
    }

    /// The stored value of `key`, storing `value` first if there is none.
    pub(super) async fn meta_get_or_insert(&self, key: &str, value: &str) -> StoreResult<String> {
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(db("starting a transaction"))?;
        sqlx::query("INSERT INTO cluster_meta (key, value, updated_at) VALUES (?1, ?2, ?3) ON CONFLICT (key) DO NOTHING")
            .bind(key)
            .bind(value)
            .bind(micros(Utc::now()))
            .execute(&mut *tx)
            .await
            .map_err(db("writing cluster metadata"))?;
        let stored: String = sqlx::query_scalar("SELECT value FROM cluster_meta WHERE key = ?1")
            .bind(key)
            .fetch_one(&mut *tx)
            .await
            .map_err(db("reading cluster metadata"))?;
        tx.commit()
            .await
            .map_err(db("committing cluster metadata"))?;
        Ok(stored)
    }
}
