//! Every configuration type of the engine, in one place: what the server maps its config
//! file onto. Imports no actor or cluster module, so that the store, the context and each
//! actor can depend on it without depending on one another.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ed25519_dalek::SigningKey;
use jitsudo_proto::audit::key_id;
use rand::Rng;

use crate::domain::Rules;
use crate::error::EngineError;

/// Engine configuration (the server maps its config file onto this).
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// This node's name; unique in a cluster.
    pub node: String,
    /// Number of shards; fixed at the database's initialisation.
    pub shards: u32,
    /// Shard lease time-to-live; renewed every fifth of it.
    pub lease_ttl: Duration,
    pub rules: Rules,
    /// Back-off between retries of failed grant and revoke calls.
    pub backoff: Backoff,
    pub provider_limits: ProviderLimits,
    /// The outbox sinks each notice is enqueued for, and how the Notifier delivers them.
    pub notify: NotifyConfig,
    /// The audit sequencer this node runs (standby unless it holds the `audit` lease);
    /// `None` runs none on this node.
    pub audit: Option<AuditConfig>,
    /// Members of these groups are admins (may revoke any request).
    pub admin_groups: Vec<String>,
    /// A request actor with this many queued messages refuses more (overload).
    pub max_mailbox: usize,
    /// How long a caller waits for an actor's answer.
    pub call_timeout: Duration,
    /// How often each ShardActor looks in the database for overdue requests it does not
    /// know about (the safety net behind its timers).
    pub sweep_every: Duration,
    /// The cluster mesh (routing between nodes); `None` on a single node.
    pub mesh: Option<MeshConfig>,
    /// This node's API address as clients reach it (shown in `server cluster`).
    pub api_addr: String,
    /// How often the node re-reads the policy revision, in case a change on another node
    /// did not ring it over the mesh (no mesh, or a cut).
    pub policy_poll: Duration,
    /// The grant reconciler this node runs (standby unless it holds the `reconcile`
    /// lease); `None` runs none on this node.
    pub reconcile: Option<ReconcileConfig>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            node: "jitsudod".into(),
            shards: 64,
            lease_ttl: Duration::from_secs(5),
            rules: Rules::default(),
            backoff: Backoff::default(),
            provider_limits: ProviderLimits::default(),
            notify: NotifyConfig::default(),
            audit: Some(AuditConfig::default()),
            admin_groups: vec!["jitsudo-admins".into()],
            max_mailbox: 1000,
            call_timeout: Duration::from_secs(30),
            sweep_every: Duration::from_secs(5),
            mesh: None,
            api_addr: String::new(),
            policy_poll: POLL_EVERY,
            reconcile: Some(ReconcileConfig::default()),
        }
    }
}

/// Exponential back-off with jitter between retries of a provider call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: Duration::from_millis(500),
            max: Duration::from_secs(60),
        }
    }
}

impl Backoff {
    /// Delay before retry number `attempt` (1-based): uniformly random in the upper half of
    /// `base · 2^(attempt-1)`, capped at `max`, so that many failing requests spread out.
    pub fn delay(&self, attempt: u32) -> Duration {
        let exp = self
            .base
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
        let cap = exp.min(self.max);
        let half = cap / 2;
        let jitter = rand::rng().random_range(0..=half.as_micros().min(u64::MAX as u128) as u64);
        half + Duration::from_micros(jitter)
    }
}

#[derive(Clone, Debug)]
pub struct ProviderLimits {
    /// A call that takes longer is abandoned as outcome-unknown.
    pub call_timeout: Duration,
    /// Calls in flight at once to this provider.
    pub concurrency: usize,
}

impl Default for ProviderLimits {
    fn default() -> Self {
        ProviderLimits {
            call_timeout: Duration::from_secs(10),
            concurrency: 128,
        }
    }
}

/// How often a node looks for policy changes made on other nodes (the default of
/// `EngineConfig::policy_poll`).
pub const POLL_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Bound on one webhook attempt (connect and answer) unless a sink sets its own.
pub const DEFAULT_WEBHOOK_TIMEOUT: Duration = Duration::from_secs(10);

/// The Notifier's configuration (the server maps its config file onto this).
#[derive(Clone, Debug)]
pub struct NotifyConfig {
    /// Every notice is enqueued once per sink.
    pub sinks: Vec<SinkConfig>,
    /// Failed attempts after which a row is dead-lettered.
    pub max_attempts: u32,
    /// Delay before the next attempt after a failure.
    pub backoff: Backoff,
    /// How often the outbox is polled for due rows.
    pub poll_interval: Duration,
    /// How long a claimed row stays reserved for this node; must comfortably exceed the
    /// longest sink timeout, or another node may deliver it a second time meanwhile.
    pub claim_ttl: Duration,
    /// Deliveries in flight at once on this node (and the largest claim).
    pub batch: u32,
}

impl Default for NotifyConfig {
    fn default() -> Self {
        NotifyConfig {
            sinks: vec![SinkConfig::log("log")],
            max_attempts: 10,
            // Ten attempts span roughly 15 to 30 minutes before a row is dead-lettered.
            backoff: Backoff {
                base: Duration::from_secs(5),
                max: Duration::from_secs(600),
            },
            poll_interval: Duration::from_millis(250),
            claim_ttl: Duration::from_secs(60),
            batch: 32,
        }
    }
}

impl NotifyConfig {
    pub fn validate(&self) -> Result<(), EngineError> {
        let bad = |reason: String| Err(EngineError::InvalidConfig { reason });
        if self.max_attempts == 0 || self.batch == 0 || self.poll_interval.is_zero() {
            return bad("notify: max_attempts, batch and poll_interval must be positive".into());
        }
        let mut names = std::collections::BTreeSet::new();
        for s in &self.sinks {
            if s.name.is_empty() || s.name.len() > 64 || s.name.chars().any(char::is_control) {
                return bad(format!(
                    "notify: sink name {:?} must be 1 to 64 printable bytes",
                    s.name
                ));
            }
            if !names.insert(s.name.as_str()) {
                return bad(format!("notify: sink {:?} is configured twice", s.name));
            }
            if let SinkKind::Webhook { timeout, .. } = &s.kind
                && self.claim_ttl < *timeout * 2
            {
                return bad(format!(
                    "notify: claim_ttl ({:?}) must be at least twice the timeout of sink {:?} ({timeout:?})",
                    self.claim_ttl, s.name
                ));
            }
        }
        Ok(())
    }
}

/// One named sink. Its name is stored with every outbox row enqueued for it.
#[derive(Clone, Debug)]
pub struct SinkConfig {
    pub name: String,
    pub kind: SinkKind,
}

impl SinkConfig {
    pub fn log(name: impl Into<String>) -> Self {
        SinkConfig {
            name: name.into(),
            kind: SinkKind::Log,
        }
    }

    pub fn webhook(name: impl Into<String>, url: impl Into<String>, secret: Vec<u8>) -> Self {
        SinkConfig {
            name: name.into(),
            kind: SinkKind::Webhook {
                url: url.into(),
                secret,
                timeout: DEFAULT_WEBHOOK_TIMEOUT,
            },
        }
    }
}

#[derive(Clone)]
pub enum SinkKind {
    /// Writes each notice to the log (`tracing`, target `jitsudo::notify`); never fails.
    Log,
    /// Signed JSON `POST`s; see `docs/notifications.md`.
    Webhook {
        url: String,
        /// HMAC key of the signature header; never logged or shown.
        secret: Vec<u8>,
        /// Bound on one attempt (connect and answer).
        timeout: Duration,
    },
}

impl fmt::Debug for SinkKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SinkKind::Log => f.write_str("Log"),
            SinkKind::Webhook { url, timeout, .. } => f
                .debug_struct("Webhook")
                .field("url", url)
                .field("secret", &"<redacted>")
                .field("timeout", timeout)
                .finish(),
        }
    }
}

#[derive(Clone)]
pub struct AuditConfig {
    /// Checkpoints are signed with this key; without one, none are made.
    pub signing_key: Option<Arc<SigningKey>>,
    pub checkpoint_every: i64,
    pub checkpoint_interval: Duration,
    pub batch: u32,
    pub poll: Duration,
    /// Events are looked for from this long before the chain tip's event: a bound on how
    /// much later than its timestamp an event can commit (statements time out after 10 s).
    pub lookback: Duration,
    /// Every so often, look for unchained events of any age (stragglers).
    pub full_sweep_every: Duration,
}

impl std::fmt::Debug for AuditConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditConfig")
            .field(
                "signing_key",
                &self
                    .signing_key
                    .as_ref()
                    .map(|k| key_id(&k.verifying_key())),
            )
            .field("checkpoint_every", &self.checkpoint_every)
            .field("checkpoint_interval", &self.checkpoint_interval)
            .field("batch", &self.batch)
            .finish_non_exhaustive()
    }
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            signing_key: None,
            checkpoint_every: 1000,
            checkpoint_interval: Duration::from_secs(60),
            batch: 2000,
            poll: Duration::from_millis(200),
            lookback: Duration::from_secs(60),
            full_sweep_every: Duration::from_secs(30),
        }
    }
}

/// How a node joins the mesh.
#[derive(Clone)]
pub struct MeshConfig {
    /// Where this node's NodeServer listens.
    pub listen: SocketAddr,
    /// `host:port` the other nodes dial (stored as `nodes.cluster_addr`); the host must be
    /// in this node's certificate.
    pub advertise: String,
    /// The shared cookie (a secret: never logged).
    pub cookie: String,
    /// This node's certificate and key, and a verifier that requires a peer certificate
    /// signed by the cluster CA.
    pub server: Arc<rustls::ServerConfig>,
    /// This node's certificate as a client, and the cluster CA to verify peers.
    pub client: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for MeshConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshConfig")
            .field("listen", &self.listen)
            .field("advertise", &self.advertise)
            .field("cookie", &"<redacted>")
            .finish_non_exhaustive()
    }
}

#[derive(Clone, Debug)]
pub struct ReconcileConfig {
    /// How often each provider is compared with the store.
    pub interval: Duration,
}

impl Default for ReconcileConfig {
    fn default() -> Self {
        ReconcileConfig {
            interval: Duration::from_secs(60),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_exponentially_within_jitter_and_is_capped() {
        let b = Backoff {
            base: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        for _ in 0..100 {
            let d1 = b.delay(1);
            assert!(
                d1 >= Duration::from_millis(50) && d1 <= Duration::from_millis(100),
                "{d1:?}"
            );
            let d3 = b.delay(3);
            assert!(
                d3 >= Duration::from_millis(200) && d3 <= Duration::from_millis(400),
                "{d3:?}"
            );
            let d30 = b.delay(30);
            assert!(
                d30 >= Duration::from_millis(500) && d30 <= Duration::from_secs(1),
                "{d30:?}"
            );
        }
    }

    #[test]
    fn webhook_debug_output_redacts_the_secret() {
        let s = SinkConfig::webhook(
            "hook",
            "https://example.invalid/in",
            b"hunter2-secret".to_vec(),
        );
        let shown = format!("{s:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
    }

    #[test]
    fn duplicate_sink_names_and_a_claim_shorter_than_a_timeout_are_refused() {
        let mut c = NotifyConfig::default();
        c.sinks.push(SinkConfig::log("log"));
        assert!(c.validate().unwrap_err().to_string().contains("twice"));
        let mut c = NotifyConfig {
            claim_ttl: Duration::from_secs(5),
            ..NotifyConfig::default()
        };
        c.sinks.push(SinkConfig::webhook(
            "hook",
            "https://example.invalid/",
            vec![1],
        ));
        assert!(c.validate().unwrap_err().to_string().contains("claim_ttl"));
        assert!(NotifyConfig::default().validate().is_ok());
    }
}
