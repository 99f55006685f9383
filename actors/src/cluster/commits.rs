//! Wake-ups across the cluster: this node announces the request versions it commits, and
//! hears the other nodes' announcements, so that a watcher anywhere wakes on every commit
//! of its request without polling. Two tasks: one announces what `NodeContext::commits`
//! carries (in batches of whatever is ready — never waiting for company), one forwards
//! what it hears to `NodeContext::remote_commits`.

use std::time::Duration;

use tokio::sync::broadcast::{Receiver, Sender, error::RecvError};
use uuid::Uuid;

use crate::domain::RequestId;
pub use crate::store::RemoteCommit;
use crate::store::{Announcement, COMMITS_PER_ANNOUNCEMENT, Heard, SharedStore};

/// The two tasks; dropping this stops them.
pub struct CommitFeed {
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for CommitFeed {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl CommitFeed {
    /// Starts the feed where the store has more than one writer (PostgreSQL); `None` on
    /// SQLite, whose one process wakes its watchers itself.
    pub async fn start(
        store: SharedStore,
        incarnation: Uuid,
        local: Receiver<(RequestId, i64)>,
        remote: Sender<RemoteCommit>,
    ) -> Option<CommitFeed> {
        let first = match store.commit_announcements().await {
            Ok(None) => return None,
            Ok(Some(l)) => Some(l),
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for other nodes' commits yet; retrying");
                None
            }
        };
        let listen = tokio::spawn(listen(store.clone(), incarnation, first, remote));
        let announce = tokio::spawn(announce(store, incarnation, local));
        Some(CommitFeed {
            tasks: vec![listen, announce],
        })
    }
}

/// How often an idle node announces that it is alive (an empty announcement), and how
/// long a listener may hear nothing — not even its own heartbeat — before it is rebuilt:
/// a half-open connection or a pooler that swallows LISTEN gives no error.
const HEARTBEAT: Duration = Duration::from_secs(10);
const SILENCE: Duration = Duration::from_secs(35);

/// The marker for "commits went by unannounced": the others' watchers read again.
const MISSED: (RequestId, i64) = (RequestId(Uuid::nil()), 0);

async fn announce(store: SharedStore, from: Uuid, mut local: Receiver<(RequestId, i64)>) {
    let mut pending: Vec<(RequestId, i64)> = Vec::new();
    let mut backoff = Duration::from_millis(100);
    loop {
        if pending.is_empty() {
            match tokio::time::timeout(HEARTBEAT, local.recv()).await {
                // Idle: an empty announcement keeps the listeners' liveness check fed.
                Err(_) => {}
                Ok(Ok(c)) => pending.push(c),
                Ok(Err(RecvError::Lagged(_))) => pending.push(MISSED),
                Ok(Err(RecvError::Closed)) => return,
            }
        }
        while pending.len() < COMMITS_PER_ANNOUNCEMENT {
            match local.try_recv() {
                Ok(c) => pending.push(c),
                Err(tokio::sync::broadcast::error::TryRecvError::Lagged(_)) => pending.push(MISSED),
                Err(tokio::sync::broadcast::error::TryRecvError::Closed) if pending.is_empty() => {
                    return;
                }
                Err(_) => break,
            }
        }
        let a = Announcement {
            from,
            commits: pending.clone(),
        };
        match store.announce_commits(&a).await {
            Ok(()) => {
                pending.clear();
                backoff = Duration::from_millis(100);
            }
            Err(e) => {
                // Kept and sent again: a watcher elsewhere waits for exactly this. What
                // piles up meanwhile becomes one "read again" for everyone.
                metrics::counter!(crate::stats::names::COMMIT_ANNOUNCE_FAILURES).increment(1);
                tracing::warn!(error = %e, pending = pending.len(), "announcing commits failed; retrying");
                if pending.len() >= COMMITS_PER_ANNOUNCEMENT {
                    pending = vec![MISSED];
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
}

async fn listen(
    store: SharedStore,
    own: Uuid,
    mut listener: Option<Box<dyn crate::store::Announcements>>,
    remote: Sender<RemoteCommit>,
) {
    let mut backoff = Duration::from_millis(200);
    loop {
        let Some(l) = listener.as_mut() else {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
            listener = store.commit_announcements().await.ok().flatten();
            if listener.is_some() {
                backoff = Duration::from_millis(200);
                let _ = remote.send(RemoteCommit::Missed);
            }
            continue;
        };
        // Every node announces at least every HEARTBEAT, this one included: silence for
        // longer means the connection is dead without saying so.
        match tokio::time::timeout(SILENCE, l.next()).await {
            Err(_) => {
                tracing::warn!(
                    "heard no commit announcement, not even this node's own, for {SILENCE:?}; listening again"
                );
                listener = None;
                let _ = remote.send(RemoteCommit::Missed);
            }
            Ok(Ok(Heard::Announcement(a))) if a.from == own => {}
            Ok(Ok(Heard::Announcement(a))) => {
                for (id, v) in a.commits {
                    let _ = remote.send(if id.0.is_nil() {
                        RemoteCommit::Missed
                    } else {
                        RemoteCommit::Committed(id, v)
                    });
                }
            }
            Ok(Ok(Heard::Missed)) => {
                let _ = remote.send(RemoteCommit::Missed);
            }
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "listening for other nodes' commits failed");
                // The new listener says Missed once it listens again.
                listener = None;
            }
        }
    }
}
