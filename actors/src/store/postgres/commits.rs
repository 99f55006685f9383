//! Commit announcements on PostgreSQL: NOTIFY in a transaction of its own, LISTEN on a
//! connection of the pool held for it (see `store/commits.rs`).

use async_trait::async_trait;
use sqlx::postgres::PgListener;

use super::super::commits::COMMITS_CHANNEL;
use super::super::{Announcement, Announcements, Heard, StoreResult, db};
use super::PgStore;

impl PgStore {
    pub(super) async fn notify_commits(&self, a: &Announcement) -> StoreResult<()> {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(COMMITS_CHANNEL)
            .bind(a.encode())
            .execute(&self.pool)
            .await
            .map_err(db("announcing commits"))?;
        Ok(())
    }

    pub(super) async fn listen_commits(&self) -> StoreResult<Box<dyn Announcements>> {
        let mut listener = PgListener::connect_with(&self.pool)
            .await
            .map_err(db("listening for commits"))?;
        listener
            .listen(COMMITS_CHANNEL)
            .await
            .map_err(db("listening for commits"))?;
        Ok(Box::new(Listener(listener)))
    }
}

struct Listener(PgListener);

#[async_trait]
impl Announcements for Listener {
    async fn next(&mut self) -> StoreResult<Heard> {
        match self
            .0
            .try_recv()
            .await
            .map_err(db("listening for commits"))?
        {
            // The listener reconnects and listens again before it says so.
            None => Ok(Heard::Missed),
            Some(n) => Ok(match Announcement::decode(n.payload()) {
                Some(a) => Heard::Announcement(a),
                // Not ours (someone else notifying on the channel): wake everyone, once.
                None => {
                    tracing::warn!(
                        channel = COMMITS_CHANNEL,
                        "an announcement jitsudo cannot read"
                    );
                    Heard::Missed
                }
            }),
        }
    }
}
