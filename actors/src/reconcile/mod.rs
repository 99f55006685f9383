//! The grant reconciler: a cluster singleton (it holds the `reconcile` lease, its records
//! fenced by that lease like the audit sequencer's) that compares, every interval, what each
//! provider lists as managed with what the store expects.
//!
//! Orphans (at the provider, but their request ended, they are past `not_after`, or the
//! store never heard of them) are revoked and audited as `grant.orphan_reaped`; drift (a
//! live grant deleted or edited out of band) is audited as `grant.drift_detected`, notified,
//! and, where the provider says `on_drift = "end"`, ends the request as REVOKED; tombstones
//! past their `not_after` are forgotten. The judgement itself is
//! [`jitsudo_providers::reconcile::compare`], the same one the conformance suite checks.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use jitsudo_providers::reconcile::{self, Drift, Expected, ExpectedGrant, Finding};
use jitsudo_providers::{GrantRecord, GrantState, ManagedGrant};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use ractor_cluster::RactorMessage;
use serde_json::json;
use uuid::Uuid;

use crate::config::ReconcileConfig;
use crate::context::NodeContext;
use crate::domain::{GrantStatus, Notice, NoticeKind, Principal, Request, RequestId, State};
use crate::provider::ProviderHandle;
use crate::request::{Command, ShardHandle};
use crate::singleton::{Holding, SingletonLease};
use crate::stats::{ActorStats, names};
use crate::store::{self as st, RECONCILE_LEASE, ReconcilePass, Write};

/// Who the reconciler acts as in the audit log and in the requests it ends.
pub const RECONCILER: &str = "jitsudo:reconciler";
/// Grant ids per store read of the requests that own them.
const IDS_PER_READ: usize = 500;
/// ACTIVE requests per store page.
const ACTIVE_PER_PAGE: u32 = 500;

#[derive(RactorMessage)]
pub enum ReconcilerMsg {
    Tick,
}

pub struct Reconciler;

pub struct ReconcilerArgs {
    pub ctx: Arc<NodeContext>,
    pub shards: Arc<RwLock<Vec<Option<ShardHandle>>>>,
    pub config: ReconcileConfig,
}

pub struct ReconcilerState {
    args: ReconcilerArgs,
    stats: Arc<ActorStats>,
    lease: SingletonLease,
    last_pass: Option<Instant>,
    /// Drift already reported by this reconciler, so a pass does not repeat it every
    /// interval (a reconciler on another node after a failover reports it once more).
    reported: HashSet<(Uuid, String)>,
    /// Drifted requests (`on_drift = "end"`) whose ending has not been accepted yet: tried
    /// again every pass until it is (or the request is final).
    to_end: BTreeMap<Uuid, String>,
    ticker: Option<tokio::task::JoinHandle<()>>,
}

impl Actor for Reconciler {
    type Msg = ReconcilerMsg;
    type State = ReconcilerState;
    type Arguments = ReconcilerArgs;

    async fn pre_start(
        &self,
        me: ActorRef<Self::Msg>,
        args: ReconcilerArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let stats = ActorStats::new("reconciler", args.ctx.node().to_owned(), 0);
        args.ctx.registry.register(&stats);
        stats.set_state("standby");
        // Often enough to hold the lease and to start a pass soon after its interval.
        let period = (args.ctx.config.lease_ttl / 5)
            .min(args.config.interval)
            .max(Duration::from_millis(50));
        let ticker = stats.tick_every(me.clone(), period, || ReconcilerMsg::Tick);
        let _ = stats.cast(&me, ReconcilerMsg::Tick);
        Ok(ReconcilerState {
            args,
            stats,
            lease: SingletonLease::new(RECONCILE_LEASE, "grant reconciler"),
            last_pass: None,
            reported: HashSet::new(),
            to_end: BTreeMap::new(),
            ticker: Some(ticker),
        })
    }

    async fn post_stop(
        &self,
        _me: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(t) = state.ticker.take() {
            t.abort();
        }
        state.args.ctx.registry.unregister(&state.stats);
        Ok(())
    }

    async fn handle(
        &self,
        _me: ActorRef<Self::Msg>,
        ReconcilerMsg::Tick: ReconcilerMsg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state.stats.dequeued();
        match state.hold_lease().await {
            Ok(true) => {}
            Ok(false) => return Ok(()),
            Err(e) => {
                tracing::warn!(error = %e, "the reconciler could not check its lease");
                return Ok(());
            }
        }
        let due = state
            .last_pass
            .is_none_or(|t| t.elapsed() >= state.args.config.interval);
        if due {
            state.last_pass = Some(Instant::now());
            state.stats.set_state("reconciling");
            let handles: Vec<ProviderHandle> = state.args.ctx.providers.values().cloned().collect();
            for h in handles {
                state.pass(&h).await;
            }
            state.end_drifted().await;
            state.stats.set_state("holding the reconcile lease");
        }
        Ok(())
    }
}

/// What one pass did, for the metrics and `jitsudo server providers`.
#[derive(Default)]
struct Tally {
    listed: i64,
    orphans: i64,
    drift: i64,
    tombstones: i64,
}

impl ReconcilerState {
    async fn hold_lease(&mut self) -> Result<bool, st::StoreError> {
        let ctx = &self.args.ctx;
        match self
            .lease
            .hold(
                &ctx.store,
                ctx.node(),
                ctx.incarnation,
                ctx.config.lease_ttl,
            )
            .await?
        {
            Holding::Kept => Ok(true),
            Holding::Taken => {
                // A new holder starts with a pass.
                self.last_pass = None;
                Ok(true)
            }
            Holding::Standby => {
                self.stats.set_state("standby (another node reconciles)");
                Ok(false)
            }
        }
    }

    /// One provider: list, compare, act, record. Failures end the pass and are recorded.
    async fn pass(&mut self, h: &ProviderHandle) {
        let started = Instant::now();
        let mut tally = Tally::default();
        let result = self.pass_inner(h, &mut tally).await;
        let elapsed = started.elapsed();
        let outcome = if result.is_ok() { "ok" } else { "failed" };
        metrics::counter!(names::RECONCILE_PASSES, "provider" => h.name.clone(), "outcome" => outcome).increment(1);
        metrics::histogram!(names::RECONCILE_SECONDS, "provider" => h.name.clone())
            .record(elapsed.as_secs_f64());
        if let Err(e) = &result {
            tracing::warn!(provider = %h.name, error = %e, "reconcile pass failed");
        }
        let pass = ReconcilePass {
            provider: h.name.clone(),
            node: self.args.ctx.node().to_owned(),
            at: self.args.ctx.now(),
            duration_ms: i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX),
            listed: tally.listed,
            orphans: tally.orphans,
            drift: tally.drift,
            tombstones: tally.tombstones,
            error: result.err(),
        };
        if let Err(e) = self.args.ctx.store.put_reconcile_pass(&pass).await {
            tracing::warn!(provider = %h.name, error = %e, "could not record the reconcile pass");
        }
    }

    async fn pass_inner(&mut self, h: &ProviderHandle, tally: &mut Tally) -> Result<(), String> {
        let listed = list_all(h).await?;
        tally.listed = listed.len() as i64;
        let ids: Vec<Uuid> = listed
            .iter()
            .filter(|g| !g.tombstone)
            .map(|g| g.grant_id)
            .collect();
        let mut expected = BTreeMap::new();
        for chunk in ids.chunks(IDS_PER_READ) {
            let wanted: HashSet<&Uuid> = chunk.iter().collect();
            let owners = self
                .args
                .ctx
                .store
                .requests_by_grant(chunk)
                .await
                .map_err(|e| format!("reading the store: {e}"))?;
            for req in &owners {
                for g in req.grants.iter().filter(|g| wanted.contains(&g.grant_id)) {
                    expected.insert(g.grant_id, expectation(req, g.grant_id));
                }
            }
        }
        let live = self.live(&h.name).await?;
        let now = self.args.ctx.now();
        for finding in reconcile::compare(&listed, &expected, &live, now) {
            self.act(h, finding, tally).await?;
        }
        Ok(())
    }

    /// Every grant of an ACTIVE request at this provider that the provider confirmed.
    async fn live(&self, provider: &str) -> Result<Vec<ExpectedGrant>, String> {
        let mut out = Vec::new();
        let mut after: Option<RequestId> = None;
        loop {
            let page = self
                .args
                .ctx
                .store
                .active_requests_of(provider, after, ACTIVE_PER_PAGE)
                .await
                .map_err(|e| format!("reading the store: {e}"))?;
            for req in &page {
                for g in req
                    .grants
                    .iter()
                    .filter(|g| g.status == GrantStatus::Active)
                {
                    if let Expected::Live(e) = expectation(req, g.grant_id) {
                        out.push(e);
                    }
                }
            }
            match page.last() {
                Some(last) if page.len() as u32 == ACTIVE_PER_PAGE => after = Some(last.id),
                _ => return Ok(out),
            }
        }
    }

    async fn act(
        &mut self,
        h: &ProviderHandle,
        finding: Finding,
        tally: &mut Tally,
    ) -> Result<(), String> {
        match finding {
            Finding::ExpiredTombstone { grant } => {
                h.forget(grant)
                    .await
                    .map_err(|e| format!("forgetting a tombstone: {e}"))?;
                tally.tombstones += 1;
                metrics::counter!(names::RECONCILE_TOMBSTONES, "provider" => h.name.clone())
                    .increment(1);
            }
            Finding::Orphan { grant, cause } => {
                h.revoke(grant.record())
                    .await
                    .map_err(|e| format!("revoking orphan {}: {e}", grant.grant_id))?;
                let details = json!({
                    "provider": h.name,
                    "grant_id": grant.grant_id,
                    "cause": cause,
                    "why": cause.as_str(),
                    "found": grant_json(&grant),
                    "evidence": "listed by the provider as managed by jitsudo; revoked by the reconciler",
                });
                self.record("grant.orphan_reaped", grant.request_id, details, None)
                    .await?;
                tally.orphans += 1;
                metrics::counter!(names::RECONCILE_ORPHANS, "provider" => h.name.clone())
                    .increment(1);
                tracing::warn!(provider = %h.name, grant = %grant.grant_id, why = cause.as_str(), "orphan grant reaped");
            }
            Finding::Drift { expected, drift } => {
                // A grant confirmed after the listing was taken looks missing: ask again.
                if drift == Drift::Missing
                    && matches!(
                        h.inspect(record_of(&expected)).await,
                        Ok(GrantState::Active) | Err(_)
                    )
                {
                    return Ok(());
                }
                let key = (expected.grant_id, format!("{drift:?}"));
                if !self.reported.insert(key) {
                    return Ok(());
                }
                let what = match &drift {
                    Drift::Missing => {
                        "the grant is gone at the provider (deleted out of band)".to_owned()
                    }
                    Drift::Changed {
                        field,
                        expected,
                        found,
                    } => format!("its {field} was changed out of band: {expected:?} → {found:?}"),
                };
                let details = json!({
                    "provider": h.name,
                    "request_id": expected.request_id,
                    "principal": expected.subject,
                    "role": expected.role,
                    "scope": expected.scope,
                    "grant_id": expected.grant_id,
                    "drift": drift,
                    "what": what,
                    "expected": expected,
                    "on_drift": h.on_drift.as_str(),
                });
                let notice = Notice {
                    kind: NoticeKind::GrantDrift,
                    details: details.clone(),
                };
                self.record(
                    "grant.drift_detected",
                    Some(expected.request_id),
                    details,
                    Some(notice),
                )
                .await?;
                tally.drift += 1;
                metrics::counter!(names::RECONCILE_DRIFT, "provider" => h.name.clone())
                    .increment(1);
                tracing::warn!(provider = %h.name, grant = %expected.grant_id, %what, "grant drift detected");
                if h.on_drift == jitsudo_providers::registry::DriftAction::End {
                    self.to_end.insert(expected.request_id, what);
                }
            }
        }
        Ok(())
    }

    async fn record(
        &self,
        kind: &str,
        request_id: Option<Uuid>,
        details: serde_json::Value,
        notice: Option<Notice>,
    ) -> Result<(), String> {
        let Some(fence) = self.lease.fence() else {
            return Err("the reconcile lease is not held".into());
        };
        let ctx = &self.args.ctx;
        let outbox = ctx.outbox_rows(notice.as_slice());
        let finding = st::Finding {
            kind,
            actor: RECONCILER,
            request_id,
            details: &details,
            outbox: &outbox,
            node: ctx.node(),
        };
        match ctx.store.record_finding(fence, &finding).await {
            Ok(Write::Updated { .. }) => Ok(()),
            Ok(_) => Err("the reconcile lease was lost: finding not recorded".into()),
            Err(e) => Err(format!("recording a finding: {e}")),
        }
    }

    /// `on_drift = "end"`: each drifted request ends as REVOKED with the drift as its
    /// reason; one whose command was not accepted (its owner unreachable) is tried again
    /// at the next pass, one already final is dropped.
    async fn end_drifted(&mut self) {
        let ctx = self.args.ctx.clone();
        let pending = std::mem::take(&mut self.to_end);
        for (request_id, what) in pending {
            let by = Principal {
                groups: ctx.config.admin_groups.clone(),
                ..Principal::new(RECONCILER)
            };
            let cmd = Command::Revoke {
                by,
                reason: format!("drift: {what}"),
            };
            match crate::cluster::mesh::route(&ctx, &self.args.shards, RequestId(request_id), cmd)
                .await
            {
                Ok(_) => {}
                Err(e) if e.kind() == crate::error::ErrorKind::Unavailable => {
                    tracing::warn!(request = %request_id, error = %e, "could not end a drifted request yet; retrying at the next pass");
                    self.to_end.insert(request_id, what);
                }
                // Final already, or revoked meanwhile: nothing left to end.
                Err(e) => {
                    tracing::info!(request = %request_id, error = %e, "a drifted request was not ended");
                }
            }
        }
    }
}

async fn list_all(h: &ProviderHandle) -> Result<Vec<ManagedGrant>, String> {
    reconcile::list_pages(&h.name, |page| h.list_managed(page))
        .await
        .map_err(|e| format!("listing managed grants: {e}"))
}

/// The store's expectation of one grant of `req`.
fn expectation(req: &Request, grant_id: Uuid) -> Expected {
    let Some(g) = req.grant(grant_id) else {
        return Expected::InFlight;
    };
    if req.state.is_terminal() || matches!(g.status, GrantStatus::Revoked | GrantStatus::Abandoned)
    {
        return Expected::Ended;
    }
    match (req.state, g.status, req.grant_spec(g)) {
        (State::Active, GrantStatus::Active, Some(spec)) => Expected::Live(ExpectedGrant {
            grant_id,
            request_id: req.id.0,
            subject: spec.subject,
            role: spec.role,
            scope: spec.scope,
            not_after: spec.not_after,
        }),
        _ => Expected::InFlight,
    }
}

fn record_of(e: &ExpectedGrant) -> GrantRecord {
    GrantRecord {
        grant_id: e.grant_id,
        request_id: e.request_id,
        subject: e.subject.clone(),
        role: e.role.clone(),
        scope: e.scope.clone(),
        not_after: e.not_after,
        provider_ref: String::new(),
    }
}

fn grant_json(g: &ManagedGrant) -> serde_json::Value {
    json!({
        "request_id": g.request_id,
        "subject": g.subject,
        "role": g.role,
        "scope": g.scope,
        "not_after": g.not_after,
        "provider_ref": g.provider_ref,
    })
}
