//! PolicyActor: owns changes to the live policy set (apply, delete, reload from the store)
//! and publishes each compiled set; evaluations read the published set without a message
//! round trip, so policy checks never queue behind a reload.
//!
//! A change made on one node reaches the others two ways: it rings every node's
//! [`PolicyBell`] over the mesh (each then re-reads the store's policy revision at once),
//! and every node polls that revision each second, for the rings a cut mesh lost.

use std::sync::{Arc, RwLock};
use std::time::Instant;

use prost::Message as _;
use ractor::message::{BoxedDowncastErr, SerializedMessage};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use ractor_cluster::RactorMessage;

use crate::error::EngineError;
use crate::policy::{Decision, PolicyError, PolicyInput, PolicySet, PolicySource};
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

/// The process group of every node's [`PolicyBell`] (across the mesh).
pub const POLICY_GROUP: &str = "jitsudo.policy";
const CHANGED_VARIANT: &str = "jitsudo.policy_changed";
const CHANGED_VERSION: u32 = 1;

/// "The policies changed": what a node rings the others with after an apply or delete.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PolicyChanged {
    #[prost(uint32, tag = "1")]
    pub version: u32,
    /// The store's policy revision after the change.
    #[prost(int64, tag = "2")]
    pub revision: i64,
    #[prost(string, tag = "3")]
    pub from_node: String,
}

/// A ring: [`PolicyChanged`] as prost bytes (a ractor_cluster cast on the wire).
pub struct Ring(pub Vec<u8>);

impl ractor::Message for Ring {
    fn serializable() -> bool {
        true
    }

    fn serialize(self) -> Result<SerializedMessage, BoxedDowncastErr> {
        Ok(SerializedMessage::Cast {
            variant: CHANGED_VARIANT.into(),
            args: self.0,
            metadata: None,
        })
    }

    fn deserialize(m: SerializedMessage) -> Result<Self, BoxedDowncastErr> {
        match m {
            SerializedMessage::Cast { variant, args, .. } if variant == CHANGED_VARIANT => {
                Ok(Ring(args))
            }
            _ => Err(BoxedDowncastErr),
        }
    }
}

/// Rings every node's bell (this node's too: its poll then finds nothing new).
fn ring_everyone(node: &str, revision: i64) {
    let payload = PolicyChanged {
        version: CHANGED_VERSION,
        revision,
        from_node: node.to_owned(),
    }
    .encode_to_vec();
    for cell in ractor::pg::get_members(&POLICY_GROUP.to_owned()) {
        let bell: ActorRef<Ring> = cell.into();
        if let Err(e) = bell.cast(Ring(payload.clone())) {
            tracing::debug!(error = %e, "a policy bell could not be rung; its node polls");
        }
    }
}

/// Listens for rings from other nodes and has its PolicyActor look at the revision at once.
pub struct PolicyBell;

impl Actor for PolicyBell {
    type Msg = Ring;
    type State = ActorRef<PolicyMsg>;
    type Arguments = ActorRef<PolicyMsg>;

    async fn pre_start(
        &self,
        me: ActorRef<Ring>,
        policy: ActorRef<PolicyMsg>,
    ) -> Result<ActorRef<PolicyMsg>, ActorProcessingErr> {
        ractor::pg::join(POLICY_GROUP.to_owned(), vec![me.get_cell()]);
        Ok(policy)
    }

    async fn handle(
        &self,
        _me: ActorRef<Ring>,
        Ring(bytes): Ring,
        policy: &mut ActorRef<PolicyMsg>,
    ) -> Result<(), ActorProcessingErr> {
        match PolicyChanged::decode(bytes.as_slice()) {
            Ok(c) => {
                if c.version != CHANGED_VERSION {
                    tracing::debug!(from = %c.from_node, version = c.version, "a policy ring of another version; looking anyway");
                }
                let _ = policy.cast(PolicyMsg::Poll);
            }
            Err(e) => tracing::warn!(error = %e, "dropped a malformed policy ring"),
        }
        Ok(())
    }
}

pub struct PolicyActor;

pub struct PolicyArgs {
    pub store: SharedStore,
    pub node: String,
    pub current: Arc<RwLock<Arc<PolicySet>>>,
    pub stats: Arc<ActorStats>,
    pub registry: ActorRegistry,
    /// The store's policy revision the published set was read at.
    pub revision: std::sync::atomic::AtomicI64,
    /// How often to look at the store's revision without being rung.
    pub poll: std::time::Duration,
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

    fn revision(&self) -> i64 {
        self.revision.load(std::sync::atomic::Ordering::Relaxed)
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
        drop(args.stats.tick_every(me, args.poll, || PolicyMsg::Poll));
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
                let applied = state.apply(name, rego, author).await;
                if applied.is_ok() {
                    ring_everyone(&state.node, state.revision());
                }
                let _ = reply.send(applied);
            }
            PolicyMsg::Delete {
                name,
                author,
                reply,
            } => {
                let deleted = state.delete(name, author).await;
                if matches!(deleted, Ok(true)) {
                    ring_everyone(&state.node, state.revision());
                }
                let _ = reply.send(deleted);
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
        poll: std::time::Duration,
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
            poll,
        };
        let (actor, _) = Actor::spawn_linked(None, PolicyActor, args, supervisor.clone()).await?;
        Actor::spawn_linked(None, PolicyBell, actor.clone(), supervisor).await?;
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

#[cfg(test)]
mod ring_tests {
    use ractor::Message as _;

    use super::*;

    #[test]
    fn a_ring_crosses_the_wire_as_a_cast_of_its_own_variant_with_its_bytes_unchanged() {
        let changed = PolicyChanged {
            version: CHANGED_VERSION,
            revision: 42,
            from_node: "node-a".into(),
        };
        let wire = Ring(changed.encode_to_vec())
            .serialize()
            .expect("serializable");
        let SerializedMessage::Cast { variant, .. } = &wire else {
            panic!("a ring is a cast");
        };
        assert_eq!(variant, CHANGED_VARIANT);
        let Ring(bytes) = Ring::deserialize(wire).expect("its own variant decodes");
        assert_eq!(PolicyChanged::decode(bytes.as_slice()).unwrap(), changed);
    }

    #[test]
    fn another_message_is_not_taken_for_a_ring() {
        for variant in ["jitsudo.route", "something.else"] {
            let wire = SerializedMessage::Cast {
                variant: variant.into(),
                args: vec![1, 2, 3],
                metadata: None,
            };
            assert!(Ring::deserialize(wire).is_err(), "{variant}");
        }
    }
}
