//! ProviderActor: one per configured provider. It bounds every call with a timeout and a
//! concurrency cap, classifies failures and records latency and outcome. Calls run in their
//! own tasks, so a slow cloud never blocks the actor's mailbox or its callers' actors.

use std::sync::Arc;
use std::time::{Duration, Instant};

use jitsudo_providers::identity::IdentityMapping;
use jitsudo_providers::registry::{DriftAction, Entry};
use jitsudo_providers::{
    Credentials, GrantRecord, GrantSpec, GrantState, ManagedGrant, ManagedPage, Provider,
    ProviderError, ProviderInfo,
};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use ractor_cluster::RactorMessage;
use tokio::sync::Semaphore;

use crate::config::ProviderLimits;
use crate::stats::{ActorRegistry, ActorStats, names};

#[derive(Debug)]
pub enum Call {
    Validate(GrantSpec),
    Grant(GrantSpec),
    Revoke(GrantRecord),
    Inspect(GrantRecord),
    Credentials(GrantRecord),
    List(Option<String>),
    Forget(ManagedGrant),
}

impl Call {
    fn op(&self) -> &'static str {
        match self {
            Call::Validate(_) => "validate",
            Call::Grant(_) => "grant",
            Call::Revoke(_) => "revoke",
            Call::Inspect(_) => "inspect",
            Call::Credentials(_) => "credentials",
            Call::List(_) => "list",
            Call::Forget(_) => "forget",
        }
    }
}

#[derive(Debug)]
pub enum Answer {
    Done,
    Granted(GrantRecord),
    State(GrantState),
    Credentials(Credentials),
    Page(ManagedPage),
}

#[derive(RactorMessage)]
pub enum ProviderMsg {
    Call {
        call: Call,
        reply: RpcReplyPort<Result<Answer, ProviderError>>,
    },
}

/// The last call this node made to a provider, for `jitsudo server providers`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LastCall {
    pub op: &'static str,
    /// `ok`, `retryable`, `permanent` or `unknown`.
    pub outcome: &'static str,
    pub at: chrono::DateTime<chrono::Utc>,
    /// The error's message (never a secret: providers keep them out of errors).
    pub error: Option<String>,
}

pub struct ProviderActor;

pub struct ProviderArgs {
    pub provider: Arc<dyn Provider>,
    pub limits: ProviderLimits,
    pub stats: Arc<ActorStats>,
    pub registry: ActorRegistry,
    pub last: Arc<std::sync::Mutex<Option<LastCall>>>,
}

pub struct ProviderState {
    provider: Arc<dyn Provider>,
    limits: ProviderLimits,
    permits: Arc<Semaphore>,
    stats: Arc<ActorStats>,
    registry: ActorRegistry,
    last: Arc<std::sync::Mutex<Option<LastCall>>>,
}

impl Actor for ProviderActor {
    type Msg = ProviderMsg;
    type State = ProviderState;
    type Arguments = ProviderArgs;

    async fn pre_start(
        &self,
        _me: ActorRef<Self::Msg>,
        args: ProviderArgs,
    ) -> Result<ProviderState, ActorProcessingErr> {
        args.registry.register(&args.stats);
        args.stats.set_state("ready");
        Ok(ProviderState {
            permits: Arc::new(Semaphore::new(args.limits.concurrency.max(1))),
            provider: args.provider,
            limits: args.limits,
            stats: args.stats,
            registry: args.registry,
            last: args.last,
        })
    }

    async fn post_stop(
        &self,
        _me: ActorRef<Self::Msg>,
        state: &mut ProviderState,
    ) -> Result<(), ActorProcessingErr> {
        state.registry.unregister(&state.stats);
        Ok(())
    }

    async fn handle(
        &self,
        _me: ActorRef<Self::Msg>,
        msg: ProviderMsg,
        state: &mut ProviderState,
    ) -> Result<(), ActorProcessingErr> {
        state.stats.dequeued();
        let ProviderMsg::Call { call, reply } = msg;
        let provider = state.provider.clone();
        let permits = state.permits.clone();
        let timeout = state.limits.call_timeout;
        let last = state.last.clone();
        tokio::spawn(async move {
            let Ok(_permit) = permits.acquire_owned().await else {
                return;
            };
            let op = call.op();
            let name = provider.name().to_owned();
            let started = Instant::now();
            let res = match tokio::time::timeout(timeout, run(provider.as_ref(), call)).await {
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
            let _ = reply.send(res);
        });
        Ok(())
    }
}

async fn run(p: &dyn Provider, call: Call) -> Result<Answer, ProviderError> {
    match call {
        Call::Validate(spec) => p.validate(&spec).await.map(|_| Answer::Done),
        Call::Grant(spec) => p.grant(&spec).await.map(Answer::Granted),
        Call::Revoke(rec) => p.revoke(&rec).await.map(|_| Answer::Done),
        Call::Inspect(rec) => p.inspect(&rec).await.map(Answer::State),
        Call::Credentials(rec) => p.credentials(&rec).await.map(Answer::Credentials),
        Call::List(page) => p.list_managed(page.as_deref()).await.map(Answer::Page),
        Call::Forget(grant) => p.forget(&grant).await.map(|_| Answer::Done),
    }
}

/// A cloneable handle to one provider's actor.
#[derive(Clone)]
pub struct ProviderHandle {
    pub name: String,
    /// How requesters become principals of this provider.
    pub identity: Arc<IdentityMapping>,
    /// What the reconciler does about drift here.
    pub on_drift: DriftAction,
    /// Kind, roles and scopes, as the provider describes itself.
    pub info: ProviderInfo,
    last: Arc<std::sync::Mutex<Option<LastCall>>>,
    actor: ActorRef<ProviderMsg>,
    stats: Arc<ActorStats>,
    limits: ProviderLimits,
}

impl ProviderHandle {
    pub async fn spawn(
        entry: Entry,
        limits: ProviderLimits,
        registry: ActorRegistry,
        supervisor: ractor::ActorCell,
    ) -> Result<Self, ractor::SpawnErr> {
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
        let last = Arc::new(std::sync::Mutex::new(None));
        let args = ProviderArgs {
            provider,
            limits: limits.clone(),
            stats: stats.clone(),
            registry,
            last: last.clone(),
        };
        let (actor, _) = Actor::spawn_linked(None, ProviderActor, args, supervisor).await?;
        Ok(ProviderHandle {
            name,
            identity,
            on_drift,
            info,
            last,
            actor,
            stats,
            limits,
        })
    }

    pub fn actor(&self) -> &ActorRef<ProviderMsg> {
        &self.actor
    }

    /// The last call this node made to the provider, if any.
    pub fn last_call(&self) -> Option<LastCall> {
        self.last.lock().ok().and_then(|l| l.clone())
    }

    async fn call(&self, call: Call) -> Result<Answer, ProviderError> {
        let (tx, rx) = ractor::concurrency::oneshot();
        if !self.stats.cast(
            &self.actor,
            ProviderMsg::Call {
                call,
                reply: tx.into(),
            },
        ) {
            return Err(ProviderError::Unavailable {
                provider: self.name.clone(),
                reason: "the provider actor is not running".into(),
            });
        }
        // The actor enforces the call timeout; this bound only guards a lost reply.
        let bound = self.limits.call_timeout * 4 + Duration::from_secs(5);
        match tokio::time::timeout(bound, rx).await {
            Ok(Ok(res)) => res,
            _ => Err(ProviderError::Unknown {
                provider: self.name.clone(),
                reason: "no answer from the provider actor".into(),
            }),
        }
    }

    pub async fn validate(&self, spec: GrantSpec) -> Result<(), ProviderError> {
        self.call(Call::Validate(spec)).await.map(|_| ())
    }

    pub async fn grant(&self, spec: GrantSpec) -> Result<GrantRecord, ProviderError> {
        match self.call(Call::Grant(spec)).await? {
            Answer::Granted(r) => Ok(r),
            other => Err(self.unexpected(other)),
        }
    }

    pub async fn revoke(&self, rec: GrantRecord) -> Result<(), ProviderError> {
        self.call(Call::Revoke(rec)).await.map(|_| ())
    }

    pub async fn inspect(&self, rec: GrantRecord) -> Result<GrantState, ProviderError> {
        match self.call(Call::Inspect(rec)).await? {
            Answer::State(s) => Ok(s),
            other => Err(self.unexpected(other)),
        }
    }

    pub async fn credentials(&self, rec: GrantRecord) -> Result<Credentials, ProviderError> {
        match self.call(Call::Credentials(rec)).await? {
            Answer::Credentials(c) => Ok(c),
            other => Err(self.unexpected(other)),
        }
    }

    pub async fn list_managed(&self, page: Option<String>) -> Result<ManagedPage, ProviderError> {
        match self.call(Call::List(page)).await? {
            Answer::Page(p) => Ok(p),
            other => Err(self.unexpected(other)),
        }
    }

    pub async fn forget(&self, grant: ManagedGrant) -> Result<(), ProviderError> {
        self.call(Call::Forget(grant)).await.map(|_| ())
    }

    fn unexpected(&self, _got: Answer) -> ProviderError {
        ProviderError::Unknown {
            provider: self.name.clone(),
            reason: "mismatched answer from the provider actor".into(),
        }
    }
}
