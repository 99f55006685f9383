//! Wake-ups across the cluster: this node announces the request versions it commits, and
//! hears the other nodes' announcements, so that a watcher anywhere wakes on every commit
//! of its request without polling. Two tasks: one announces what `NodeContext::commits`
//! carries (in batches of whatever is ready — never waiting for company), one forwards
//! what it hears to `NodeContext::remote_commits`.

use std::time::Duration;

use tokio::sync::broadcast::{Receiver, Sender, error::RecvError};
use uuid::Uuid;

use crate::domain::RequestId;
use crate::store::{Announcement, COMMITS_PER_ANNOUNCEMENT, Heard, SharedStore};

/// What a watcher hears from other nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RemoteCommit {
    Committed(RequestId, i64),
    /// Announcements may have been missed (a lost connection, a lagging receiver): every
    /// watcher reads its request again.
    Missed,
}

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

async fn announce(store: SharedStore, from: Uuid, mut local: Receiver<(RequestId, i64)>) {
    loop {
        let first = match local.recv().await {
            Ok(c) => c,
            // Commits went by unannounced: the others' watchers read again.
            Err(RecvError::Lagged(_)) => (RequestId(Uuid::nil()), 0),
            Err(RecvError::Closed) => return,
        };
        let mut commits = vec![first];
        while commits.len() < COMMITS_PER_ANNOUNCEMENT {
            match local.try_recv() {
                Ok(c) => commits.push(c),
                Err(tokio::sync::broadcast::error::TryRecvError::Lagged(_)) => {
                    commits.push((RequestId(Uuid::nil()), 0))
                }
                Err(_) => break,
            }
        }
        let a = Announcement { from, commits };
        if let Err(e) = store.announce_commits(&a).await {
            // Not fatal: the other nodes' watchers still wake on their own node's commits,
            // and hear `Missed` when their listener's connection comes back.
            tracing::debug!(error = %e, "announcing commits failed");
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
                let _ = remote.send(RemoteCommit::Missed);
            }
            continue;
        };
        match l.next().await {
            Ok(Heard::Announcement(a)) if a.from == own => {}
            Ok(Heard::Announcement(a)) => {
                backoff = Duration::from_millis(200);
                for (id, v) in a.commits {
                    let _ = remote.send(if id.0.is_nil() {
                        RemoteCommit::Missed
                    } else {
                        RemoteCommit::Committed(id, v)
                    });
                }
            }
            Ok(Heard::Missed) => {
                let _ = remote.send(RemoteCommit::Missed);
            }
            Err(e) => {
                tracing::debug!(error = %e, "listening for other nodes' commits failed");
                listener = None;
                let _ = remote.send(RemoteCommit::Missed);
            }
        }
    }
}
