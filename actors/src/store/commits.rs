//! Commit announcements between nodes: which request versions a node committed, so that
//! watchers on every node wake at once instead of polling. On PostgreSQL a node announces
//! its commits with NOTIFY in a small transaction of its own, after they committed — never
//! inside a request's transaction, since PostgreSQL serialises the commits of notifying
//! transactions on one lock — and listens to the others with LISTEN. SQLite has one
//! process, whose own commits wake its watchers.

use async_trait::async_trait;
use uuid::Uuid;

use super::StoreResult;
use crate::domain::RequestId;

/// The channel the announcements travel on.
pub const COMMITS_CHANNEL: &str = "jitsudo_commits";

/// At most this many versions per notification (PostgreSQL's payload limit is 8000 bytes).
pub const COMMITS_PER_ANNOUNCEMENT: usize = 120;

/// One node's announcement: request versions `from` (a node incarnation) committed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Announcement {
    pub from: Uuid,
    pub commits: Vec<(RequestId, i64)>,
}

impl Announcement {
    /// `FROM id:version id:version …`
    pub fn encode(&self) -> String {
        let mut s = self.from.to_string();
        for (id, v) in &self.commits {
            s.push(' ');
            s.push_str(&id.to_string());
            s.push(':');
            s.push_str(&v.to_string());
        }
        s
    }

    pub fn decode(payload: &str) -> Option<Announcement> {
        let mut parts = payload.split(' ');
        let from = parts.next()?.parse().ok()?;
        let commits = parts
            .map(|p| {
                let (id, v) = p.split_once(':')?;
                Some((RequestId(id.parse().ok()?), v.parse().ok()?))
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Announcement { from, commits })
    }
}

/// What a subscription hears next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Heard {
    Announcement(Announcement),
    /// The connection was lost and made again: announcements in between were missed.
    Missed,
}

/// What a watcher hears from other nodes (`NodeContext::remote_commits`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RemoteCommit {
    Committed(RequestId, i64),
    /// Announcements may have been missed (a lost connection, a lagging receiver): every
    /// watcher reads its request again.
    Missed,
}

/// A subscription to the other nodes' announcements.
#[async_trait]
pub trait Announcements: Send {
    async fn next(&mut self) -> StoreResult<Heard>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announcements_round_trip_and_garbage_is_refused() {
        let a = Announcement {
            from: Uuid::now_v7(),
            commits: vec![
                (RequestId(Uuid::now_v7()), 3),
                (RequestId(Uuid::now_v7()), 12),
            ],
        };
        assert_eq!(Announcement::decode(&a.encode()), Some(a.clone()));
        // A heartbeat: who, and nothing committed.
        let beat = Announcement {
            from: a.from,
            commits: vec![],
        };
        assert_eq!(Announcement::decode(&beat.encode()), Some(beat));
        assert_eq!(Announcement::decode("nope"), None);
        assert_eq!(Announcement::decode(&format!("{} x:1", a.from)), None);
        // The largest announcement fits PostgreSQL's 8000-byte payload.
        let big = Announcement {
            commits: vec![(RequestId(Uuid::now_v7()), i64::MAX); COMMITS_PER_ANNOUNCEMENT],
            ..a
        };
        assert!(big.encode().len() < 8000, "{}", big.encode().len());
    }
}
