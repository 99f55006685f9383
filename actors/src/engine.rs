//! The engine facade: starts a node's actor tree on a store and exposes the operations the
//! API serves. Every request write goes through the owning ShardActor and RequestActor;
//! reads, trust tiers and audit events that are not transitions go to the store.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use jitsudo_providers::identity::Identity;
use jitsudo_providers::{Credentials, Registry};
use ractor::{Actor, ActorRef};
use serde_json::json;
use uuid::Uuid;

use crate::audit::{SequencerArgs, SequencerHandle};
use crate::cluster::membership::Membership;
use crate::cluster::node::{NodeArgs, NodeMsg, NodeSupervisor};
use crate::config::EngineConfig;
use crate::context::NodeContext;
use crate::domain::{
    self, GrantStatus, Idempotency, Limits, NewRequest, PersonRef, Principal, Refusal, Request,
    RequestId, RequestSpec, RequesterLoad, State, Timestamp, Verdict, check_text, same_person,
};
use crate::error::EngineError;
use crate::lease::{LeaseClock, fence_margin};
use crate::notify::NotifierHandle;
use crate::policy::PolicyInput;
use crate::policy_actor::PolicyHandle;
use crate::provider::ProviderHandle;
use crate::request::{Command, ShardHandle};
use crate::stats::{ActorRegistry, ActorSnapshot};
use crate::store::{
    AUDIT_LEASE, ListFilter, Member, PrincipalRecord, ShardRecord, SharedStore, StoreError,
};

pub struct Engine {
    ctx: Arc<NodeContext>,
    shards: Arc<RwLock<Vec<Option<ShardHandle>>>>,
    node: ActorRef<NodeMsg>,
    node_done: tokio::task::JoinHandle<()>,
    notifier: NotifierHandle,
    started_at: Timestamp,
    /// Commit announcements to and from the other nodes (PostgreSQL only).
    _commit_feed: Option<crate::cluster::commits::CommitFeed>,
}

impl Engine {
    /// Joins the cluster, starts the actor tree and takes this node's fair share of the
    /// shards (waiting, up to two lease TTLs, for a previous incarnation's leases to lapse
    /// or for other nodes to hand shards over), loading their live requests: overdue
    /// deadlines fire at once.
    pub async fn start(
        config: EngineConfig,
        store: SharedStore,
        providers: Registry,
    ) -> Result<Engine, EngineError> {
        crate::stats::register_series(
            &providers.names().map(str::to_owned).collect::<Vec<_>>(),
            &config
                .notify
                .sinks
                .iter()
                .map(|s| s.name.clone())
                .collect::<Vec<_>>(),
        );
        let incarnation = Uuid::now_v7();
        let n = store.init_shards(config.shards).await?;
        metrics::gauge!(crate::stats::names::SHARDS_CONFIGURED).set(f64::from(n));
        crate::cluster::membership::join(&store, &config.node, incarnation, config.lease_ttl)
            .await?;
        let lease = Arc::new(LeaseClock::new(fence_margin(config.lease_ttl)));
        let registry = ActorRegistry::default();
        let shards: Arc<RwLock<Vec<Option<ShardHandle>>>> =
            Arc::new(RwLock::new(vec![None; n as usize]));
        let args = NodeArgs {
            store: store.clone(),
            node: config.node.clone(),
            incarnation,
            lease_ttl: config.lease_ttl,
            shard_count: n,
            shards: shards.clone(),
            registry: registry.clone(),
            lease: lease.clone(),
        };
        let (node, node_done) = Actor::spawn(None, NodeSupervisor, args)
            .await
            .map_err(|e| {
                EngineError::unavailable(format!("could not start the node supervisor: {e}"))
            })?;
        let cell = node.get_cell();
        let started = async {
            let policy = PolicyHandle::spawn(
                store.clone(),
                config.node.clone(),
                config.policy_poll,
                registry.clone(),
                cell.clone(),
            )
            .await
            .map_err(|e| {
                EngineError::unavailable(format!("could not start the policy actor: {e}"))
            })?;
            let mut handles = BTreeMap::new();
            for entry in providers.entries() {
                let name = entry.provider.name().to_owned();
                let h = ProviderHandle::new(
                    entry.clone(),
                    config.provider_limits.clone(),
                    registry.clone(),
                );
                handles.insert(name, h);
            }
            let notifier = NotifierHandle::spawn(
                store.clone(),
                &config.node,
                config.notify.clone(),
                registry.clone(),
                cell.clone(),
            )
            .await?;
            if let Some(audit) = &config.audit {
                let args = SequencerArgs {
                    store: store.clone(),
                    node: config.node.clone(),
                    incarnation,
                    lease_ttl: config.lease_ttl,
                    config: audit.clone(),
                    sinks: config.notify.sinks.iter().map(|s| s.name.clone()).collect(),
                    registry: registry.clone(),
                };
                SequencerHandle::spawn(args, Some(cell.clone()))
                    .await
                    .map_err(|e| {
                        EngineError::unavailable(format!(
                            "could not start the audit sequencer: {e}"
                        ))
                    })?;
            }
            let db_now = store.db_now().await?;
            let ctx = Arc::new(
                NodeContext::new(
                    config,
                    incarnation,
                    store,
                    policy,
                    handles,
                    registry,
                    db_now,
                )
                .with_lease(lease),
            );
            Actor::spawn_linked(None, Membership, ctx.clone(), cell.clone())
                .await
                .map_err(|e| {
                    EngineError::unavailable(format!("could not start membership: {e}"))
                })?;
            Actor::spawn_linked(
                None,
                crate::cluster::mesh::Router,
                crate::cluster::mesh::RouterArgs {
                    ctx: ctx.clone(),
                    shards: shards.clone(),
                },
                cell.clone(),
            )
            .await
            .map_err(|e| EngineError::unavailable(format!("could not start the router: {e}")))?;
            if let Some(config) = &ctx.config.reconcile {
                Actor::spawn_linked(
                    None,
                    crate::reconcile::Reconciler,
                    crate::reconcile::ReconcilerArgs {
                        ctx: ctx.clone(),
                        shards: shards.clone(),
                        config: config.clone(),
                    },
                    cell.clone(),
                )
                .await
                .map_err(|e| {
                    EngineError::unavailable(format!("could not start the reconciler: {e}"))
                })?;
            }
            if let Some(mesh) = &ctx.config.mesh {
                let server = crate::cluster::mesh::start_server(&ctx, mesh, cell.clone()).await?;
                Actor::spawn_linked(
                    None,
                    crate::cluster::mesh::Dialer,
                    crate::cluster::mesh::DialerArgs {
                        ctx: ctx.clone(),
                        server,
                        mesh: mesh.clone(),
                    },
                    cell.clone(),
                )
                .await
                .map_err(|e| {
                    EngineError::unavailable(format!("could not start the mesh dialer: {e}"))
                })?;
            }
            // Subscribed before the shards run, so no commit of theirs goes unannounced.
            let local_commits = ctx.commits.subscribe();
            let _ = node.cast(NodeMsg::Adopt { ctx: ctx.clone() });
            let feed = crate::cluster::commits::CommitFeed::start(
                ctx.store.clone(),
                ctx.incarnation,
                local_commits,
                ctx.remote_commits.clone(),
            )
            .await;
            take_fair_share(&node, &ctx.config).await?;
            Ok::<_, EngineError>((ctx, notifier, db_now, feed))
        }
        .await;
        match started {
            Ok((ctx, notifier, started_at, feed)) => Ok(Engine {
                ctx,
                shards,
                node,
                node_done,
                notifier,
                started_at,
                _commit_feed: feed,
            }),
            Err(e) => {
                node.stop(Some("start failed".into()));
                let _ = node_done.await;
                Err(e)
            }
        }
    }

    pub fn context(&self) -> &Arc<NodeContext> {
        &self.ctx
    }

    pub fn store(&self) -> &SharedStore {
        &self.ctx.store
    }

    pub fn policy(&self) -> &PolicyHandle {
        &self.ctx.policy
    }

    /// This node's outbox drainer; `nudge()` it after a re-drive.
    pub fn notifier(&self) -> &NotifierHandle {
        &self.notifier
    }

    /// Every configured provider: what it accepts, this node's last call, the last pass of
    /// the reconciler.
    pub async fn providers(&self) -> Result<Vec<ProviderStatus>, EngineError> {
        let mut passes: BTreeMap<String, crate::store::ReconcilePass> = self
            .ctx
            .store
            .reconcile_passes()
            .await?
            .into_iter()
            .map(|p| (p.provider.clone(), p))
            .collect();
        Ok(self
            .ctx
            .providers
            .values()
            .map(|h| ProviderStatus {
                name: h.name.clone(),
                info: h.info.clone(),
                subject_template: h.identity.template().to_owned(),
                on_drift: h.on_drift.as_str(),
                last_call: h.last_call(),
                last_pass: passes.remove(&h.name),
            })
            .collect())
    }

    /// The cluster as the database sees it: every node that has heartbeated (alive when
    /// its heartbeat is younger than the lease TTL, by the database clock) and every
    /// shard's owner, epoch and lease.
    /// The clock offsets (database clock minus the node's) the live members reported with
    /// their last heartbeat, this node's own estimate first.
    pub async fn clock_offsets(&self) -> Result<Vec<chrono::Duration>, EngineError> {
        let (db_now, members) = self.ctx.store.members().await?;
        let ttl = chrono::Duration::from_std(self.ctx.config.lease_ttl)
            .unwrap_or(chrono::Duration::seconds(5));
        let mut offsets = vec![self.ctx.clock_offset()];
        offsets.extend(
            members
                .iter()
                .filter(|m| m.node != self.ctx.node() && db_now - m.heartbeat_at < ttl)
                .map(|m| chrono::Duration::microseconds(m.clock_offset_us)),
        );
        Ok(offsets)
    }

    pub async fn cluster_status(&self) -> Result<ClusterStatus, EngineError> {
        let (db_now, members) = self.ctx.store.members().await?;
        let (mut shards, singletons): (Vec<_>, Vec<_>) = self
            .ctx
            .store
            .shard_table()
            .await?
            .into_iter()
            .partition(|s| s.shard < self.ctx.config.shards);
        shards.sort_by_key(|s| s.shard);
        let audit_sequencer = singletons.into_iter().find(|s| s.shard == AUDIT_LEASE);
        let ttl = chrono::Duration::from_std(self.ctx.config.lease_ttl)
            .unwrap_or(chrono::Duration::seconds(5));
        let members = members
            .into_iter()
            .map(|m| {
                let heartbeat_age = db_now - m.heartbeat_at;
                let shards_owned = shards
                    .iter()
                    .filter(|s| {
                        s.owner == m.node
                            && s.incarnation == m.incarnation
                            && s.lease_expires_at.is_some_and(|t| t > db_now)
                    })
                    .count();
                MemberStatus {
                    alive: heartbeat_age < ttl,
                    heartbeat_age,
                    shards_owned,
                    member: m,
                }
            })
            .collect();
        Ok(ClusterStatus {
            db_now,
            lease_ttl: self.ctx.config.lease_ttl,
            members,
            shards,
            audit_sequencer,
        })
    }

    /// The live actor tree of this node.
    pub fn actors(&self) -> Vec<ActorSnapshot> {
        self.ctx.registry.snapshot()
    }

    /// Live (non-terminal) requests served by this node, awake or asleep.
    pub fn live_request_count(&self) -> usize {
        self.ctx.registry.count("request")
    }

    /// The shards this node runs a ShardActor for, in order.
    pub fn shards_owned(&self) -> Vec<u32> {
        self.shards
            .read()
            .map(|s| s.iter().flatten().map(|h| h.shard).collect())
            .unwrap_or_default()
    }

    /// When this engine started, by the database clock.
    pub fn started_at(&self) -> Timestamp {
        self.started_at
    }

    fn shard(&self, id: RequestId) -> Result<ShardHandle, EngineError> {
        let k = id.shard(self.ctx.config.shards) as usize;
        self.shards
            .read()
            .ok()
            .and_then(|s| s.get(k).cloned().flatten())
            .ok_or_else(|| {
                EngineError::unavailable(format!(
                    "request {id} lives on shard {k}, which this node does not hold right now (it is moving, or another node holds it: `jitsudo server cluster` shows which); retry"
                ))
            })
    }

    /// A fresh request id whose shard this node holds: a create is executed by the owner
    /// of the new request's shard, and the node that receives it picks the id. UUIDv7s
    /// stay time-ordered; with one shard of 64 held, 1,024 draws all miss with odds of
    /// about 1 in 10⁷.
    fn new_local_id(&self) -> Result<RequestId, EngineError> {
        let n = self.ctx.config.shards;
        let held = self.shards.read().map_err(|_| {
            EngineError::unavailable("this node's shard table is poisoned; restart it")
        })?;
        if held.iter().all(Option::is_none) {
            return Err(EngineError::unavailable(
                "this node holds no shards right now (it is starting, or handing over); retry",
            ));
        }
        (0..1024)
            .map(|_| RequestId::new())
            .find(|id| held.get(id.shard(n) as usize).is_some_and(Option::is_some))
            .ok_or_else(|| {
                EngineError::unavailable("no request id fell on a shard this node holds; retry")
            })
    }

    /// Validates, evaluates the policy, checks the provider and creates the request.
    pub async fn create(
        &self,
        requester: Principal,
        spec: RequestSpec,
    ) -> Result<Request, EngineError> {
        self.create_idempotent(requester, spec, None)
            .await
            .map(|(req, _)| req)
    }

    /// [`Engine::create`] with an optional idempotency key; answers the request and whether
    /// this call created it. A key this requester already used returns that request as it
    /// is now (no second request, no audit event) if the content is the same, and is refused
    /// with `IdempotencyConflict` otherwise. Of concurrent creates with one key, one creates
    /// and the others return its request.
    pub async fn create_idempotent(
        &self,
        requester: Principal,
        spec: RequestSpec,
        key: Option<&str>,
    ) -> Result<(Request, bool), EngineError> {
        let ctx = &self.ctx;
        let idem = key.map(|k| Idempotency::new(k, &spec)).transpose()?;
        let subject = requester.subject.clone();
        if let Some(i) = &idem
            && let Some(existing) = self.replay(&subject, i).await?
        {
            return Ok((existing, false));
        }
        let provider =
            ctx.providers
                .get(&spec.provider)
                .ok_or_else(|| EngineError::UnknownProvider {
                    name: spec.provider.clone(),
                    known: ctx.providers.keys().cloned().collect::<Vec<_>>().join(", "),
                })?;
        let principal = provider.identity.map(&Identity {
            subject: &requester.subject,
            email: requester.email.as_deref(),
            email_verified: requester.email_verified,
            claims: &requester.claims,
        })?;
        let now = ctx.now();
        let input = PolicyInput::new(requester.policy_input(), spec.policy_input(), now);
        let mut decision = ctx.policy.evaluate(&input)?;
        if decision.auto_approve {
            // The authors' verified emails, for the same-person rule's self-benefit check.
            for p in &mut decision.policies {
                p.author_email = ctx
                    .store
                    .verified_email_of(&p.author)
                    .await?
                    .map(|e| e.to_lowercase());
            }
        }
        let id = self.new_local_id()?;
        let probe = domain::probe_spec(id, &spec, &principal, now, ctx.rules());
        let load = self.requester_load(&subject, spec.break_glass).await?;
        let mut tr = domain::create(
            NewRequest {
                id,
                requester,
                spec,
            },
            decision,
            now,
            ctx.rules(),
            &load,
        )?;
        if let serde_json::Value::Object(m) = &mut tr.audit.details {
            m.insert("principal".into(), json!(principal));
        }
        tr.next.principal = Some(principal);
        provider
            .validate(probe)
            .await
            .map_err(EngineError::Provider)?;
        if let Some(i) = &idem {
            if let serde_json::Value::Object(m) = &mut tr.audit.details {
                m.insert("idempotency_key".into(), json!(i.key));
            }
            tr.idempotency = Some(i.clone());
        }
        match (
            self.shard(id)?.create(tr, ctx.config.call_timeout).await,
            &idem,
        ) {
            (Ok(req), _) => Ok((req, true)),
            // Lost a race with a create using the same key: that one committed first.
            (Err(EngineError::Store(StoreError::IdempotencyKeyTaken { .. })), Some(i)) => {
                let winner = self.replay(&subject, i).await?;
                winner.map(|r| (r, false)).ok_or(EngineError::Conflict)
            }
            (Err(e), _) => Err(e),
        }
    }

    /// The request created earlier with this key, if its content is the same.
    async fn replay(
        &self,
        requester: &str,
        i: &Idempotency,
    ) -> Result<Option<Request>, EngineError> {
        match self
            .ctx
            .store
            .get_by_idempotency_key(requester, &i.key)
            .await?
        {
            None => Ok(None),
            Some((req, hash)) if hash == i.content_hash => Ok(Some(req)),
            Some(_) => Err(EngineError::IdempotencyConflict { key: i.key.clone() }),
        }
    }

    /// A page of requests, read from the store; see [`ListFilter`].
    pub async fn list(&self, filter: &ListFilter) -> Result<Vec<Request>, EngineError> {
        Ok(self.ctx.store.list_requests(filter).await?)
    }

    /// Mints credentials of an ACTIVE request for its requester, from the provider through
    /// this node's provider handle, and audits the fetch (`credentials.issued`: request,
    /// grant and expiry). The credentials are returned only; they are never stored or
    /// logged, and none are returned if the fetch could not be audited.
    pub async fn credentials(
        &self,
        id: RequestId,
        by: &Principal,
    ) -> Result<Credentials, EngineError> {
        let ctx = &self.ctx;
        let req = self.get(id).await?;
        if !same_person(&by.person(), &req.requester.person()) {
            return Err(Refusal::NotRequester.into());
        }
        // Past its expiry a request is over even if its timer has not fired yet.
        let state = match req.state {
            State::Active if req.expires_at.is_some_and(|t| t <= ctx.now()) => State::Expired,
            s => s,
        };
        let not_active = || Refusal::NotAccepted {
            state,
            event: "credential fetches",
        };
        if state != State::Active {
            return Err(not_active().into());
        }
        // After an extension the newest grant covers the rest of the window.
        let (grant, record) = req
            .grants
            .iter()
            .filter(|g| g.status == GrantStatus::Active)
            .filter_map(|g| Some((g, req.not_after(g)?, req.grant_record(g)?)))
            .max_by_key(|(_, not_after, _)| *not_after)
            .map(|(g, _, rec)| (g, rec))
            .ok_or_else(not_active)?;
        let provider =
            ctx.providers
                .get(&req.spec.provider)
                .ok_or_else(|| EngineError::UnknownProvider {
                    name: req.spec.provider.clone(),
                    known: ctx.providers.keys().cloned().collect::<Vec<_>>().join(", "),
                })?;
        let creds = provider
            .credentials(record)
            .await
            .map_err(EngineError::Provider)?;
        let details = json!({
            "request_id": req.id,
            "grant_id": grant.grant_id,
            "provider": req.spec.provider,
            "expires_at": creds.expires_at,
        });
        ctx.store
            .append_audit(
                "credentials.issued",
                &by.subject,
                Some(req.id.0),
                &details,
                ctx.node(),
            )
            .await?;
        Ok(creds)
    }

    /// Closes the review of a request that needs one. The requester never reviews their own
    /// request; whether `by` may review at all (admin or auditor) is the caller's check.
    pub async fn close_review(
        &self,
        by: &Principal,
        id: RequestId,
        verdict: &str,
    ) -> Result<crate::store::ReviewRecord, EngineError> {
        check_text("verdict", verdict, Limits::REASON, true)?;
        let req = self.get(id).await?;
        let Some(why) = req.review_reason() else {
            return Err(Refusal::Invalid {
                field: "id",
                reason:
                    "this request needs no review (only break-glass and self-approved requests do)"
                        .into(),
            }
            .into());
        };
        if same_person(&by.person(), &req.requester.person()) {
            return Err(Refusal::SelfReview.into());
        }
        self.ctx
            .store
            .close_review(id.0, why, &by.subject, verdict, self.ctx.node())
            .await?
            .ok_or_else(|| Refusal::Duplicate.into())
    }

    /// What [`domain::create`] weighs of this requester: their open requests (counted up to
    /// the cap; not read without one) and, for a break-glass request, their last one. Read
    /// before the create's commit: two creates racing each other can both pass (each is
    /// audited).
    async fn requester_load(
        &self,
        requester: &str,
        break_glass: bool,
    ) -> Result<RequesterLoad, EngineError> {
        let cap = self.ctx.rules().max_open_per_requester;
        let open = if cap > 0 {
            self.ctx.store.open_requests_of(requester, cap).await?
        } else {
            0
        };
        let last_break_glass = if break_glass {
            self.ctx.store.last_break_glass_of(requester).await?
        } else {
            None
        };
        Ok(RequesterLoad {
            open,
            last_break_glass,
        })
    }

    /// Sets a principal's trust tier, audited with `by` as the actor. Nobody changes their
    /// own tier; whether `by` may manage principals at all is the caller's check.
    pub async fn set_trust_tier(
        &self,
        by: &Principal,
        subject: &str,
        tier: i64,
        reason: &str,
    ) -> Result<PrincipalRecord, EngineError> {
        check_text("subject", subject, Limits::SUBJECT, true)?;
        check_text("reason", reason, Limits::REASON, false)?;
        // The target's verified email as last seen on its tokens: an admin's second login
        // with the same verified email is the admin.
        let target = PersonRef {
            subject: subject.to_owned(),
            verified_email: self
                .ctx
                .store
                .verified_email_of(subject)
                .await?
                .map(|e| e.to_lowercase()),
            links: Vec::new(),
        };
        if same_person(&by.person(), &target) {
            return Err(EngineError::SelfBenefit { what: "trust tier" });
        }
        let ctx = &self.ctx;
        Ok(ctx
            .store
            .set_trust_tier(subject, tier, &by.subject, reason, ctx.node())
            .await?)
    }

    /// Carries out a command on the node holding the request's shard: this one, or
    /// another through the mesh (`mesh::route`).
    pub async fn command(&self, id: RequestId, cmd: Command) -> Result<Request, EngineError> {
        crate::cluster::mesh::route(&self.ctx, &self.shards, id, cmd).await
    }

    pub async fn approve(
        &self,
        id: RequestId,
        by: Principal,
        comment: &str,
    ) -> Result<Request, EngineError> {
        self.command(
            id,
            Command::Approve {
                by,
                comment: comment.into(),
            },
        )
        .await
    }

    pub async fn deny(
        &self,
        id: RequestId,
        by: Principal,
        reason: &str,
    ) -> Result<Request, EngineError> {
        self.command(
            id,
            Command::Deny {
                by,
                reason: reason.into(),
            },
        )
        .await
    }

    /// A person's approval, denial, cancel or revoke, idempotent per caller: what this caller
    /// already did is answered with the request as it is instead of the refusal (the rule is
    /// the domain's, [`domain::repeats_own_decision`]; a routed refusal arrives as its kind
    /// only, so the request is read again to ask it). `text` is the comment or reason (unused
    /// by a cancel). [`Engine::approve`] and the others refuse a repeat.
    pub async fn decide(
        &self,
        id: RequestId,
        by: Principal,
        verdict: Verdict,
        text: &str,
    ) -> Result<Request, EngineError> {
        let caller = by.clone();
        let res = match verdict {
            Verdict::Approve => self.approve(id, by, text).await,
            Verdict::Deny => self.deny(id, by, text).await,
            Verdict::Cancel => self.cancel(id, by).await,
            Verdict::Revoke => self.revoke(id, by, text).await,
        };
        match res {
            Err(e) if e.may_be_a_repeat() => {
                let current = self.get(id).await?;
                if domain::repeats_own_decision(&current, &caller, verdict) {
                    Ok(current)
                } else {
                    Err(e)
                }
            }
            other => other,
        }
    }

    pub async fn cancel(&self, id: RequestId, by: Principal) -> Result<Request, EngineError> {
        self.command(id, Command::Cancel { by }).await
    }

    pub async fn revoke(
        &self,
        id: RequestId,
        by: Principal,
        reason: &str,
    ) -> Result<Request, EngineError> {
        self.command(
            id,
            Command::Revoke {
                by,
                reason: reason.into(),
            },
        )
        .await
    }

    pub async fn extend(
        &self,
        id: RequestId,
        by: Principal,
        by_seconds: i64,
        reason: &str,
    ) -> Result<Request, EngineError> {
        self.command(
            id,
            Command::Extend {
                by,
                by_seconds,
                reason: reason.into(),
            },
        )
        .await
    }

    /// The actor of a live request on this node, started if the request sleeps (none for
    /// terminal requests). For diagnostics and tests: a woken idle request falls asleep
    /// again after its next message.
    pub async fn request_actor(
        &self,
        id: RequestId,
    ) -> Option<ActorRef<crate::request::RequestMsg>> {
        self.shard(id).ok()?.lookup(id).await
    }

    /// Reads go to the store: the database is the truth.
    pub async fn get(&self, id: RequestId) -> Result<Request, EngineError> {
        self.ctx
            .store
            .get(id)
            .await?
            .ok_or(EngineError::NotFound { id })
    }

    /// Stops this node as a crash would, for tests: no lease is released and the node does
    /// not leave, so the others take over only when its leases and heartbeat lapse. Grant
    /// and revoke calls already on their way finish.
    pub async fn crash(self) {
        self.ctx
            .crashing
            .store(true, std::sync::atomic::Ordering::Release);
        self.shutdown().await;
    }

    /// Stops the actor tree cleanly and releases this node's leases. Deadlines are safe in
    /// the store; the next start re-arms them.
    pub async fn shutdown(self) {
        self.node.stop(Some("shutdown".into()));
        let _ = self.node_done.await;
    }
}

/// One configured provider as `jitsudo server providers` shows it.
#[derive(Clone, Debug)]
pub struct ProviderStatus {
    pub name: String,
    pub info: jitsudo_providers::ProviderInfo,
    /// The identity-mapping template (`{email}`, `oidc:{sub}`, ...).
    pub subject_template: String,
    /// `report` or `end`.
    pub on_drift: &'static str,
    /// This node's last call to it.
    pub last_call: Option<crate::provider::LastCall>,
    /// The reconciler's last pass over it (by whichever node held the lease).
    pub last_pass: Option<crate::store::ReconcilePass>,
}

/// See [`Engine::cluster_status`].
#[derive(Clone, Debug)]
pub struct ClusterStatus {
    pub db_now: chrono::DateTime<chrono::Utc>,
    pub lease_ttl: Duration,
    pub members: Vec<MemberStatus>,
    /// The request shards, by number.
    pub shards: Vec<ShardRecord>,
    /// The `audit` lease: which node sequences the audit chain.
    pub audit_sequencer: Option<ShardRecord>,
}

impl ClusterStatus {
    /// Times a shard changed hands (a takeover, or a node's restart): each one bumped the
    /// shard's epoch past the first.
    pub fn epoch_changes(&self) -> i64 {
        self.shards.iter().map(|s| (s.epoch - 1).max(0)).sum()
    }
}

#[derive(Clone, Debug)]
pub struct MemberStatus {
    pub member: Member,
    pub heartbeat_age: chrono::Duration,
    /// The heartbeat is younger than the lease TTL.
    pub alive: bool,
    /// Shards whose unexpired lease this incarnation holds.
    pub shards_owned: usize,
}

/// Balances until this node holds its fair share. On a restart the previous incarnation's
/// leases may still be live for up to one TTL, and in a cluster the others hand shards over
/// on their next round: wait up to two TTLs, then go on with what this node has (its rounds
/// keep taking what comes free).
async fn take_fair_share(
    node: &ActorRef<NodeMsg>,
    config: &EngineConfig,
) -> Result<(), EngineError> {
    let deadline = Instant::now() + config.lease_ttl * 2 + Duration::from_secs(1);
    loop {
        let (held, share) = ractor::call!(node, |r| NodeMsg::Balance(Some(r)))
            .map_err(|e| EngineError::unavailable(format!("the node supervisor failed: {e}")))?;
        if share > 0 && held >= share {
            return Ok(());
        }
        if Instant::now() >= deadline {
            tracing::warn!(
                held,
                share,
                "starting with fewer shards than this node's fair share; the rest are taken as they come free"
            );
            return Ok(());
        }
        tracing::info!(held, share, "waiting for shard leases to come free");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

// What the API reads and records: the API's only way to the store.
//
// The API answers reads from the database (the truth) and records what it decided on its
// own (authorization refusals, the identities its tokens carry). Each of those is one
// named method here, so the API never holds the store and every path to it is listed in
// one place.

/// The records and queries of these methods, named as the engine's vocabulary
/// (`jitsudo_actors::engine::types::AuditQuery`). A module of their own because engine.rs
/// imports some of them privately above, and a name cannot be imported twice.
pub mod types {
    pub use crate::audit::VerifyReport;
    pub use crate::store::{
        AuditEvent, AuditQuery, ChainRow, Checkpoint, ListFilter, Mode, OutboxEntry,
        PrincipalRecord, ReviewRecord, ShardRecord, SharedStore, StoreError,
    };
}

impl Engine {
    /// Opens the store named by `url` (`postgres://…`, or `sqlite://PATH`) for a node whose
    /// leases last `lease_ttl`, running migrations before it returns: hand it to
    /// [`Engine::start`]. The error is the store's own, which says what is wrong with the
    /// database (a dev database opened in production, a held lock, a failed migration).
    pub async fn open_store(
        url: &str,
        mode: types::Mode,
        lease_ttl: Duration,
    ) -> Result<SharedStore, StoreError> {
        crate::store::open_for(url, mode, lease_ttl).await
    }

    /// The store's backend: `postgres` or `sqlite`.
    pub fn store_backend(&self) -> &'static str {
        self.ctx.store.backend()
    }

    /// The database clock. An error means the store does not answer; it is the store's
    /// own, so that a health check can say why.
    pub async fn db_now(&self) -> Result<Timestamp, StoreError> {
        self.ctx.store.db_now().await
    }

    /// Records the verified email a token of `subject` carried, so that "same person"
    /// checks about this subject (when someone else names it) see it.
    pub async fn note_identity(
        &self,
        subject: &str,
        verified_email: &str,
    ) -> Result<(), EngineError> {
        Ok(self
            .ctx
            .store
            .note_identity(subject, verified_email)
            .await?)
    }

    /// A principal's stored record (its trust tier); `None` for one never given a tier.
    pub async fn principal(&self, subject: &str) -> Result<Option<PrincipalRecord>, EngineError> {
        Ok(self.ctx.store.get_principal(subject).await?)
    }

    /// Audits an authorization refusal the API answered (`authz.denied`: the RPC and why),
    /// with `actor` as the one refused.
    pub async fn record_denial(
        &self,
        actor: &str,
        rpc: &str,
        request_id: Option<Uuid>,
        reason: &str,
    ) -> Result<Uuid, EngineError> {
        let details = json!({ "rpc": rpc, "reason": reason });
        Ok(self
            .ctx
            .store
            .append_audit("authz.denied", actor, request_id, &details, self.ctx.node())
            .await?)
    }

    /// Audits that `suppressed` refusals of `actor` in the last `window_seconds` were not
    /// audited one by one (`authz.denied_summary`): the flood limit's trace.
    pub async fn record_denial_summary(
        &self,
        actor: &str,
        suppressed: u32,
        window_seconds: u32,
    ) -> Result<Uuid, EngineError> {
        let details = json!({ "suppressed": suppressed, "window_seconds": window_seconds });
        Ok(self
            .ctx
            .store
            .append_audit(
                "authz.denied_summary",
                actor,
                None,
                &details,
                self.ctx.node(),
            )
            .await?)
    }

    /// The audit events of one request's versions after `after_version`, in version order:
    /// a watch resumes from the last version it saw, on any node, without gaps or repeats.
    pub async fn request_events(
        &self,
        id: RequestId,
        after_version: i64,
    ) -> Result<Vec<types::AuditEvent>, EngineError> {
        Ok(self.ctx.store.request_events(id, after_version).await?)
    }

    /// Every policy in force (the latest version of each, unless that deletes it) with the
    /// time it was stored, by name.
    pub async fn stored_policies(
        &self,
    ) -> Result<Vec<(crate::policy::PolicySource, Timestamp)>, EngineError> {
        Ok(self.ctx.store.list_policies().await?)
    }

    /// The latest version of one policy with the time it was stored; `None` if the policy
    /// is unknown or deleted.
    pub async fn stored_policy(
        &self,
        name: &str,
    ) -> Result<Option<(crate::policy::PolicySource, Timestamp)>, EngineError> {
        Ok(self.ctx.store.get_policy(name).await?)
    }

    /// A page of audit events with their chain links (`None` while unchained); see
    /// [`types::AuditQuery`].
    pub async fn audit_page(
        &self,
        q: &types::AuditQuery,
    ) -> Result<Vec<(types::AuditEvent, Option<types::ChainRow>)>, EngineError> {
        Ok(self.ctx.store.query_audit(q).await?)
    }

    /// Up to `limit` links of the audit chain after `after_seq`, in chain order, each with
    /// its event (`None` when the chain names an event that is gone).
    pub async fn chain_page(
        &self,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<(types::ChainRow, Option<types::AuditEvent>)>, EngineError> {
        Ok(self.ctx.store.chain_page(after_seq, limit).await?)
    }

    /// Every signed checkpoint of the audit chain.
    pub async fn checkpoints(&self) -> Result<Vec<types::Checkpoint>, EngineError> {
        Ok(self.ctx.store.checkpoints().await?)
    }

    /// Walks the whole audit log and reports everything wrong with it; with `key`, the
    /// checkpoint signatures are checked too.
    pub async fn verify_audit(
        &self,
        key: Option<&ed25519_dalek::VerifyingKey>,
        options: &crate::audit::VerifyOptions,
    ) -> Result<types::VerifyReport, EngineError> {
        Ok(crate::audit::verify(self.ctx.store.as_ref(), key, options).await?)
    }

    /// Up to `limit` outbox rows that ran out of attempts, of one sink or of all.
    pub async fn dead_letters(
        &self,
        sink: Option<&str>,
        limit: u32,
    ) -> Result<Vec<types::OutboxEntry>, EngineError> {
        Ok(self.ctx.store.dead_letters(sink, limit).await?)
    }

    /// Returns dead letter `id` to the outbox (attempts 0, due now), audited with `by` as
    /// the actor, and nudges this node's deliverer so it goes out now rather than at the
    /// next poll. `false`, and nothing written, if the row is not a dead letter.
    pub async fn redrive(&self, id: i64, by: &str) -> Result<bool, EngineError> {
        let redriven = self.ctx.store.redrive(id, by, self.ctx.node()).await?;
        if redriven {
            self.notifier.nudge();
        }
        Ok(redriven)
    }

    /// The cluster's page token key (hex), stored by the first node to start with `seed`;
    /// read before the engine starts, so a node that must refuse to start takes no lease.
    pub async fn page_token_key(store: &SharedStore, seed: &str) -> Result<String, EngineError> {
        Ok(store.cluster_value("page_token_key", seed).await?)
    }
}
