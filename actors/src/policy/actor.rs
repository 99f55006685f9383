//! PolicyActor: owns changes to the live policy set (apply, delete, reload from the store)
//! and publishes each compiled set; evaluations read the published set without a message
//! round trip, so policy checks never queue behind a reload.

use std::sync::{Arc, RwLock};
use std::time::Instant;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use ractor_cluster::RactorMessage;

use super::{Decision, PolicyError, PolicyInput, PolicySet, PolicySource};
use crate::error::EngineError;
use crate::stats::{ActorRegistry, ActorStats, names};
use crate::store::SharedStore;

#[derive(RactorMessage)]
pub enum PolicyMsg {
    /// Re-read the policies from the store and publish them.
    Reload {
        reply: RpcReplyPort<Result<String, EngineError>>,
    },
    /// Compile-check, store as a new version, publish.
    Apply {
        name: String,
        rego: String,
        author: String,
        reply: RpcReplyPort<Result<i64, EngineError>>,
    },
    Delete {
        name: String,
        author: String,
        reply: RpcReplyPort<Result<bool, EngineError>>,
    },
    /// Reload if another node changed the policies (the revision moved).
    Poll,
}

/// How often a node looks for policy changes made on other nodes.
pub const POLL_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

pub struct PolicyActor;

pub struct PolicyArgs {
    pub store: SharedStore,
    pub node: String,
    pub current: Arc<RwLock<Arc<PolicySet>>>,
    pub stats: Arc<ActorStats>,
    pub registry: ActorRegistry,
    /// The store's policy revision the published set was read at.
    pub revision: std::sync::atomic::AtomicI64,
}

impl PolicyArgs {
    async fn reload(&self) -> Result<String, EngineError> {
        // Read the revision first: a change racing this reload moves it again.
        let revision = self.store.policy_revision().await?;
        let sources = self.store.policies().await?;
        let set = PolicySet::compile(sources)?;
        let fp = set.fingerprint().to_owned();
        self.publish(set);
        self.revision
            .store(revision, std::sync::atomic::Ordering::Relaxed);
        Ok(fp)
    }

    fn publish(&self, set: PolicySet) {
        self.stats.set_state(format!(
            "{} ({} policies)",
            set.fingerprint(),
            set.policies().len()
        ));
        if let Ok(mut cur) = self.current.write() {
            *cur = Arc::new(set);
        }
    }

    async fn apply(&self, name: String, rego: String, author: String) -> Result<i64, EngineError> {
        if name.trim().is_empty() || name.len() > 128 {
            return Err(PolicyError::Compile {
                policy: name,
                message: "a policy name must be 1 to 128 characters".into(),
            }
            .into());
        }
        // Compile the set as it would be, first: a broken policy leaves the live set unchanged.
        let mut sources: Vec<PolicySource> = self
            .store
            .policies()
            .await?
            .into_iter()
            .filter(|p| p.name != name)
            .collect();
        sources.push(PolicySource {
            name: name.clone(),
            version: 0,
            author: author.clone(),
            rego: rego.clone(),
        });
        PolicySet::compile(sources)?;
        let version = self
            .store
            .put_policy(&name, &rego, &author, &self.node)
            .await?;
        self.reload().await?;
        Ok(version)
    }

    async fn delete(&self, name: String, author: String) -> Result<bool, EngineError> {
        let deleted = self.store.delete_policy(&name, &author, &self.node).await?;
        if deleted {
            self.reload().await?;
        }
        Ok(deleted)
    }
}

impl Actor for PolicyActor {
    type Msg = PolicyMsg;
    type State = PolicyArgs;
    type Arguments = PolicyArgs;

    async fn pre_start(
        &self,
        me: ActorRef<Self::Msg>,
        args: PolicyArgs,
    ) -> Result<PolicyArgs, ActorProcessingErr> {
        args.registry.register(&args.stats);
        args.reload().await?;
        // Ends by itself when the actor is gone.
        drop(args.stats.tick_every(me, POLL_EVERY, || PolicyMsg::Poll));
        Ok(args)
    }

    async fn post_stop(
        &self,
        _me: ActorRef<Self::Msg>,
        state: &mut PolicyArgs,
    ) -> Result<(), ActorProcessingErr> {
        state.registry.unregister(&state.stats);
        Ok(())
    }

    async fn handle(
        &self,
        _me: ActorRef<Self::Msg>,
        msg: PolicyMsg,
        state: &mut PolicyArgs,
    ) -> Result<(), ActorProcessingErr> {
        state.stats.dequeued();
        match msg {
            PolicyMsg::Reload { reply } => {
                let _ = reply.send(state.reload().await);
            }
            PolicyMsg::Apply {
                name,
                rego,
                author,
                reply,
            } => {
                let _ = reply.send(state.apply(name, rego, author).await);
            }
            PolicyMsg::Delete {
                name,
                author,
                reply,
            } => {
                let _ = reply.send(state.delete(name, author).await);
            }
            PolicyMsg::Poll => {
                let seen = state.revision.load(std::sync::atomic::Ordering::Relaxed);
                match state.store.policy_revision().await {
                    Ok(now) if now != seen => {
                        if let Err(e) = state.reload().await {
                            tracing::error!(error = %e, "policies changed on another node but do not compile here; keeping the current set");
                        } else {
                            tracing::info!("policies changed on another node; reloaded");
                        }
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "could not read the policy revision"),
                }
            }
        }
        Ok(())
    }
}

/// A cloneable handle: evaluates against the published set; sends changes to the actor.
#[derive(Clone)]
pub struct PolicyHandle {
    current: Arc<RwLock<Arc<PolicySet>>>,
    actor: ActorRef<PolicyMsg>,
    stats: Arc<ActorStats>,
}

impl PolicyHandle {
    pub async fn spawn(
        store: SharedStore,
        node: String,
        registry: ActorRegistry,
        supervisor: ractor::ActorCell,
    ) -> Result<Self, ractor::SpawnErr> {
        let current = Arc::new(RwLock::new(Arc::new(PolicySet::empty())));
        let stats = ActorStats::new("policy", "policy", 0);
        let args = PolicyArgs {
            store,
            node,
            current: current.clone(),
            stats: stats.clone(),
            registry,
            revision: std::sync::atomic::AtomicI64::new(-1),
        };
        let (actor, _) = Actor::spawn_linked(None, PolicyActor, args, supervisor).await?;
        Ok(PolicyHandle {
            current,
            actor,
            stats,
        })
    }

    pub fn actor(&self) -> &ActorRef<PolicyMsg> {
        &self.actor
    }

    pub fn current(&self) -> Arc<PolicySet> {
        self.current
            .read()
            .map(|c| c.clone())
            .unwrap_or_else(|_| Arc::new(PolicySet::empty()))
    }

    pub fn evaluate(&self, input: &PolicyInput) -> Result<Decision, PolicyError> {
        let started = Instant::now();
        let res = self.current().evaluate(input);
        metrics::histogram!(names::POLICY_EVAL_SECONDS, "rule" => "decision")
            .record(started.elapsed().as_secs_f64());
        res
    }

    pub fn approver_allowed(&self, input: &PolicyInput) -> Result<bool, PolicyError> {
        let started = Instant::now();
        let res = self.current().approver_allowed(input);
        metrics::histogram!(names::POLICY_EVAL_SECONDS, "rule" => "approver_allowed")
            .record(started.elapsed().as_secs_f64());
        res
    }

    async fn ask<T>(
        &self,
        msg: impl FnOnce(RpcReplyPort<Result<T, EngineError>>) -> PolicyMsg,
    ) -> Result<T, EngineError> {
        let (tx, rx) = ractor::concurrency::oneshot();
        if !self.stats.cast(&self.actor, msg(tx.into())) {
            return Err(EngineError::unavailable("the policy actor is not running"));
        }
        rx.await
            .map_err(|_| EngineError::unavailable("the policy actor stopped before answering"))?
    }

    pub async fn reload(&self) -> Result<String, EngineError> {
        self.ask(|reply| PolicyMsg::Reload { reply }).await
    }

    pub async fn apply(&self, name: &str, rego: &str, author: &str) -> Result<i64, EngineError> {
        let (name, rego, author) = (name.to_owned(), rego.to_owned(), author.to_owned());
        self.ask(|reply| PolicyMsg::Apply {
            name,
            rego,
            author,
            reply,
        })
        .await
    }

    pub async fn delete(&self, name: &str, author: &str) -> Result<bool, EngineError> {
        let (name, author) = (name.to_owned(), author.to_owned());
        self.ask(|reply| PolicyMsg::Delete {
            name,
            author,
            reply,
        })
        .await
    }
}
