//! ProviderHandle: one per configured provider, shared by every actor of the node. It bounds
//! every call with a timeout and a concurrency cap (a semaphore), and records latency,
//! outcome and the last call. Each call runs in its own task, so a caller that goes away
//! (a stopped request actor, a dropped API call) never cuts a revoke off halfway.
//!
//! It is a plain handle, not an actor: a mailbox in front of the semaphore would only add
//! a message round trip per call (the semaphore and the timeout do the work). It is still
//! listed among the node's actors (kind `provider`), with the calls in flight as its depth.

use std::sync::Arc;
use std::time::Instant;

use jitsudo_providers::identity::IdentityMapping;
use jitsudo_providers::registry::{DriftAction, Entry};
use jitsudo_providers::{
    Credentials, GrantRecord, GrantSpec, GrantState, ManagedGrant, ManagedPage, Provider,
    ProviderError, ProviderInfo,
};
use tokio::sync::Semaphore;

use crate::config::ProviderLimits;
use crate::stats::{ActorRegistry, ActorStats, names};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LastCall {
    pub op: &'static str,
    pub outcome: &'static str,
    pub at: chrono::DateTime<chrono::Utc>,
    pub error: Option<String>,
}

/// Keeps the provider's entry in the node's actor registry while any handle lives.
struct Listed {
    registry: ActorRegistry,
    stats: Arc<ActorStats>,
}

impl Drop for Listed {
    fn drop(&mut self) {
        self.registry.unregister(&self.stats);
    }
}

#[derive(Clone)]
pub struct ProviderHandle {
    pub name: String,
    pub identity: Arc<IdentityMapping>,
    pub on_drift: DriftAction,
    pub info: ProviderInfo,
    provider: Arc<dyn Provider>,
    permits: Arc<Semaphore>,
    limits: ProviderLimits,
    last: Arc<std::sync::Mutex<Option<LastCall>>>,
    listed: Arc<Listed>,
}

impl ProviderHandle {
    /// The handle of one configured provider; its call budget is the entry's own
    /// (`timeout_seconds` of its kind) or else `limits.call_timeout`.
    pub fn new(entry: Entry, limits: ProviderLimits, registry: ActorRegistry) -> Self {
        let Entry {
            provider,
            identity,
            on_drift,
            call_timeout,
        } = entry;
        let limits = ProviderLimits {
            call_timeout: call_timeout.unwrap_or(limits.call_timeout),
            ..limits
        };
        let name = provider.name().to_owned();
        let info = provider.info();
        let stats = ActorStats::new("provider", name.clone(), 0);
        registry.register(&stats);
        stats.set_state("ready");
        ProviderHandle {
            name,
            identity,
            on_drift,
            info,
            permits: Arc::new(Semaphore::new(limits.concurrency.max(1))),
            provider,
            limits,
            last: Arc::new(std::sync::Mutex::new(None)),
            listed: Arc::new(Listed { registry, stats }),
        }
    }

    pub fn last_call(&self) -> Option<LastCall> {
        self.last.lock().ok().and_then(|l| l.clone())
    }

    /// Runs `call` on the provider in its own task, within the concurrency cap and the call
    /// budget, and records it.
    async fn bounded<T, F>(
        &self,
        op: &'static str,
        call: impl FnOnce(Arc<dyn Provider>) -> F,
    ) -> Result<T, ProviderError>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, ProviderError>> + Send + 'static,
    {
        let (permits, timeout, last) = (
            self.permits.clone(),
            self.limits.call_timeout,
            self.last.clone(),
        );
        let (name, stats) = (self.name.clone(), self.listed.stats.clone());
        let work = call(self.provider.clone());
        stats.enqueued();
        let task = tokio::spawn(async move {
            let _permit = permits.acquire_owned().await;
            let started = Instant::now();
            let res = match tokio::time::timeout(timeout, work).await {
                Ok(r) => r,
                Err(_) => Err(ProviderError::Timeout {
                    provider: name.clone(),
                    after: timeout,
                }),
            };
            let outcome = match &res {
                Ok(_) => "ok",
                Err(e) => e.class().as_str(),
            };
            metrics::histogram!(names::PROVIDER_CALL_SECONDS, "provider" => name.clone(), "op" => op)
                .record(started.elapsed().as_secs_f64());
            metrics::counter!(names::PROVIDER_CALLS, "provider" => name, "op" => op, "outcome" => outcome).increment(1);
            if let Ok(mut l) = last.lock() {
                *l = Some(LastCall {
                    op,
                    outcome,
                    at: chrono::Utc::now(),
                    error: res.as_ref().err().map(ToString::to_string),
                });
            }
            stats.dequeued();
            res
        });
        task.await.unwrap_or_else(|e| {
            Err(ProviderError::Unknown {
                provider: self.name.clone(),
                reason: format!("the provider call's task ended without an answer: {e}"),
            })
        })
    }

    pub async fn validate(&self, spec: GrantSpec) -> Result<(), ProviderError> {
        self.bounded("validate", |p| async move { p.validate(&spec).await })
            .await
    }

    pub async fn grant(&self, spec: GrantSpec) -> Result<GrantRecord, ProviderError> {
        self.bounded("grant", |p| async move { p.grant(&spec).await })
            .await
    }

    pub async fn revoke(&self, rec: GrantRecord) -> Result<(), ProviderError> {
        self.bounded("revoke", |p| async move { p.revoke(&rec).await })
            .await
    }

    pub async fn inspect(&self, rec: GrantRecord) -> Result<GrantState, ProviderError> {
        self.bounded("inspect", |p| async move { p.inspect(&rec).await })
            .await
    }

    pub async fn credentials(&self, rec: GrantRecord) -> Result<Credentials, ProviderError> {
        self.bounded("credentials", |p| async move { p.credentials(&rec).await })
            .await
    }

    pub async fn list_managed(&self, page: Option<String>) -> Result<ManagedPage, ProviderError> {
        self.bounded(
            "list",
            |p| async move { p.list_managed(page.as_deref()).await },
        )
        .await
    }

    pub async fn forget(&self, grant: ManagedGrant) -> Result<(), ProviderError> {
        self.bounded("forget", |p| async move { p.forget(&grant).await })
            .await
    }
}
