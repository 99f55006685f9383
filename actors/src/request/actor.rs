//! RequestActor: one per live request that has work to do. It runs the pure `step`,
//! commits each transition through the fenced store, then carries out the effects:
//! provider calls in their own tasks, deadline timers, retries with back-off. When it
//! cannot tell whether a write committed it stops, and its ShardActor rebuilds it from the
//! database.
//!
//! A request with nothing in flight (a PENDING one waiting for people, an ACTIVE one
//! waiting for its expiry) falls asleep: the actor stops with [`ASLEEP`], handing its state
//! to the ShardActor, which keeps the request as data with its next deadline in one timer
//! wheel per shard and starts a new actor for the next command or deadline. An actor costs
//! ~16 KiB (ractor's channels and task); a sleeping request ~2 KiB (docs/benchmarks.md).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use jitsudo_providers::{GrantState, ProviderError};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use ractor_cluster::RactorMessage;
use tokio::sync::OwnedSemaphorePermit;
use tokio::task::JoinHandle;
use uuid::Uuid;

use super::Command;
use crate::context::NodeContext;
use crate::domain::{
    Decider, Effect, EndingCause, Event, GrantPurpose, Principal, Refusal, Request, State,
    outstanding_calls, step, timers,
};
use crate::error::EngineError;
use crate::policy::{ApprovalInput, PolicyInput};
use crate::stats::{ActorStats, names};
use crate::store::{Fence, Persist, Write};

/// Why a RequestActor stopped; anything but `PASSIVATED` or `ASLEEP` makes the ShardActor
/// rebuild it from the store.
pub const PASSIVATED: &str = "passivated";
/// The request had nothing in flight: its state goes to the ShardActor to sleep as data.
pub const ASLEEP: &str = "asleep";

#[derive(RactorMessage)]
pub enum RequestMsg {
    Command {
        cmd: Command,
        reply: RpcReplyPort<Result<Request, EngineError>>,
    },
    /// Timers, provider outcomes and follow-ups.
    Internal(Event),
    /// A back-off elapsed: issue this call again if the request still needs it.
    Retry(Effect),
    /// The provider asked for this much quiet before the next call about this grant
    /// (Retry-After); sent just before the failure it came with.
    RetryAfter { grant_id: Uuid, after: Duration },
}

pub struct RequestActor;

pub struct RequestArgs {
    pub ctx: Arc<NodeContext>,
    pub req: Request,
    pub fence: Fence,
    pub stats: Arc<ActorStats>,
    /// Outcomes of the revokes its ShardActor issued when the request's expiry came while
    /// it slept: delivered after the expiry itself.
    pub revoked: Vec<Event>,
    /// The slot in [`NodeContext::expiry_records`] it was woken with, held until it stops.
    pub record_slot: Option<OwnedSemaphorePermit>,
}

pub struct RequestState {
    ctx: Arc<NodeContext>,
    pub(super) req: Request,
    fence: Fence,
    stats: Arc<ActorStats>,
    timers: Timers,
    /// Provider calls in flight, as (is_grant, grant_id).
    inflight: HashSet<(bool, Uuid)>,
    /// Back-offs scheduled and not yet elapsed.
    retries: usize,
    /// A stop was asked for (the actor finishes its current message first).
    stopping: bool,
    /// See [`RequestArgs::revoked`]; taken in `post_start`.
    revoked: Vec<Event>,
    record_slot: Option<OwnedSemaphorePermit>,
    /// Retry-After of the last throttled call per grant: the next back-off waits at least
    /// this long.
    retry_after: std::collections::HashMap<Uuid, Duration>,
    stuck: StuckGauge,
}

/// This actor's part of `jitsudo_revocations_stuck`: counted while it holds a request whose
/// revocation is stuck, uncounted when that clears or the actor stops (asleep, handed over,
/// rebuilt), so the gauge is what this node's live actors hold, after restarts too.
struct StuckGauge(bool);

impl StuckGauge {
    fn set(&mut self, stuck: bool) {
        if stuck != self.0 {
            let g = metrics::gauge!(names::REVOCATIONS_STUCK);
            if stuck {
                g.increment(1.0);
            } else {
                g.decrement(1.0);
            }
            self.0 = stuck;
        }
    }
}

impl Drop for StuckGauge {
    fn drop(&mut self) {
        self.set(false);
    }
}

/// Deadline timer tasks, cancelled when replaced or dropped.
#[derive(Default)]
struct Timers(Vec<JoinHandle<()>>);

impl Timers {
    fn cancel(&mut self) {
        for t in self.0.drain(..) {
            t.abort();
        }
    }
}

impl Drop for Timers {
    fn drop(&mut self) {
        self.cancel();
    }
}

/// Sends to a request actor, keeping its mailbox depth.
pub(crate) fn send(me: &ActorRef<RequestMsg>, stats: &ActorStats, msg: RequestMsg) -> bool {
    stats.cast(me, msg)
}

impl Actor for RequestActor {
    type Msg = RequestMsg;
    type State = RequestState;
    type Arguments = RequestArgs;

    async fn pre_start(
        &self,
        _me: ActorRef<RequestMsg>,
        args: RequestArgs,
    ) -> Result<RequestState, ActorProcessingErr> {
        args.stats.set_state(args.req.state.as_str());
        let mut stuck = StuckGauge(false);
        stuck.set(args.req.stuck);
        Ok(RequestState {
            stuck,
            ctx: args.ctx,
            req: args.req,
            fence: args.fence,
            stats: args.stats,
            timers: Timers::default(),
            inflight: HashSet::new(),
            retries: 0,
            stopping: false,
            revoked: args.revoked,
            record_slot: args.record_slot,
            retry_after: Default::default(),
        })
    }

    /// Resume: arm the deadline timers (an overdue one fires at once) and re-issue every
    /// provider call the committed state still needs (idempotent by grant id).
    async fn post_start(
        &self,
        me: ActorRef<RequestMsg>,
        st: &mut RequestState,
    ) -> Result<(), ActorProcessingErr> {
        let revoked = std::mem::take(&mut st.revoked);
        if let (false, Some(expires_at)) = (revoked.is_empty(), st.req.expires_at) {
            send(
                &me,
                &st.stats,
                RequestMsg::Internal(Event::Expiry { expires_at }),
            );
            for outcome in revoked {
                if let Some(call) = settles(&outcome) {
                    st.inflight.insert(call);
                }
                send(&me, &st.stats, RequestMsg::Internal(outcome));
            }
        }
        arm_timers(&me, st);
        let mut effects = outstanding_calls(&st.req);
        if super::auto_approval_pending(&st.req) {
            effects.push(Effect::Followup(Event::AutoApprove));
        }
        run_effects(&me, st, effects);
        Ok(())
    }

    async fn handle(
        &self,
        me: ActorRef<RequestMsg>,
        msg: RequestMsg,
        st: &mut RequestState,
    ) -> Result<(), ActorProcessingErr> {
        st.stats.dequeued();
        let started = std::time::Instant::now();
        match msg {
            RequestMsg::Command { cmd, reply } => {
                let decides = matches!(
                    cmd,
                    Command::Approve { .. } | Command::Deny { .. } | Command::Revoke { .. }
                );
                let res = match event_for(st, cmd) {
                    Ok(ev) => {
                        // A person's decision was checked against the approval policy: the
                        // audit event says which policy set (and whose policies) decided.
                        let under = decides.then(|| {
                            let set = st.ctx.policy.current();
                            serde_json::json!({
                                "policy_version": set.fingerprint(),
                                "policies": set.policies(),
                            })
                        });
                        apply_with(&me, st, ev, under).await
                    }
                    Err(e) => Err(e),
                };
                let _ = reply.send(res);
            }
            RequestMsg::Internal(ev) => {
                if let Some(call) = settles(&ev) {
                    st.inflight.remove(&call);
                }
                if let Err(e) = apply(&me, st, ev).await {
                    tracing::debug!(request = %st.req.id, error = %e, "internal event not applied");
                }
            }
            RequestMsg::RetryAfter { grant_id, after } => {
                st.retry_after.insert(grant_id, after);
            }
            RequestMsg::Retry(call) => {
                st.retries = st.retries.saturating_sub(1);
                if outstanding_calls(&st.req).contains(&call) {
                    run_effects(&me, st, vec![call]);
                }
            }
        }
        metrics::histogram!(names::ACTOR_HANDLER_SECONDS, "kind" => "request")
            .record(started.elapsed().as_secs_f64());
        if st.stats.mailbox() == 0 {
            // The expiry and the revoke outcomes it was woken with are recorded.
            st.record_slot = None;
        }
        if idle(st) {
            // Anything that reaches the mailbox from now on is dropped with the actor: a
            // command is routed again by its caller, a deadline fires from the shard's wheel.
            stop(&me, st, ASLEEP.into());
        }
        Ok(())
    }
}

/// The first reason given is the one the ShardActor sees.
fn stop(me: &ActorRef<RequestMsg>, st: &mut RequestState, reason: String) {
    if !st.stopping {
        st.stopping = true;
        me.stop(Some(reason));
    }
}

/// Nothing in flight or owed to a provider, nothing queued, no deadline due: the request
/// can sleep as data.
fn idle(st: &RequestState) -> bool {
    !st.stopping
        && !st.req.state.is_terminal()
        && st.inflight.is_empty()
        && st.retries == 0
        && st.stats.mailbox() == 0
        && !super::has_work_now(&st.req, &st.ctx)
}

/// The provider call whose outcome this event reports, as (is_grant, grant_id).
pub(super) fn settles(ev: &Event) -> Option<(bool, Uuid)> {
    match ev {
        Event::GrantSucceeded { grant_id, .. } | Event::GrantFailed { grant_id, .. } => {
            Some((true, *grant_id))
        }
        Event::RevokeSucceeded { grant_id }
        | Event::RevokeFailed { grant_id, .. }
        | Event::GoneAtProvider { grant_id, .. } => Some((false, *grant_id)),
        _ => None,
    }
}

/// Turns a person's command into a lifecycle event, asking the approval policy whether
/// this person may decide on this request.
fn event_for(st: &RequestState, cmd: Command) -> Result<Event, EngineError> {
    let decider = |by: Principal| -> Result<Decider, EngineError> {
        let req = &st.req;
        let approvals = req
            .approvals
            .iter()
            .map(|a| ApprovalInput {
                subject: a.by.subject.clone(),
                email: a.by.verified_email.clone(),
                at: a.at,
            })
            .collect();
        let input = PolicyInput::new(
            req.requester.policy_input(),
            req.spec.policy_input(),
            st.ctx.now(),
        )
        .with_approver(by.policy_input())
        .with_approvals(approvals);
        let approver_allowed = st.ctx.policy.approver_allowed(&input)?;
        let is_admin = st.ctx.is_admin(&by);
        Ok(Decider {
            principal: by,
            approver_allowed,
            is_admin,
        })
    };
    Ok(match cmd {
        Command::Approve { by, comment } => Event::Approve {
            by: decider(by)?,
            comment,
        },
        Command::Deny { by, reason } => Event::Deny {
            by: decider(by)?,
            reason,
        },
        Command::Cancel { by } => Event::Cancel { by },
        Command::Revoke { by, reason } => Event::Revoke {
            by: decider(by)?,
            reason,
        },
        Command::Extend {
            by,
            by_seconds,
            reason,
        } => Event::RequestExtension {
            by,
            by_seconds,
            reason,
        },
        Command::ApproveExtension {
            by,
            number,
            comment,
        } => Event::ApproveExtension {
            number,
            by: decider(by)?,
            comment,
        },
        Command::DenyExtension { by, number, reason } => Event::DenyExtension {
            number,
            by: decider(by)?,
            reason,
        },
    })
}

/// Steps, commits, and carries out the effects. A refusal changes nothing.
async fn apply(
    me: &ActorRef<RequestMsg>,
    st: &mut RequestState,
    ev: Event,
) -> Result<Request, EngineError> {
    apply_with(me, st, ev, None).await
}

/// As [`apply`]; `decided_under` (the policy set that checked a person's decision) goes
/// into the transition's audit details.
async fn apply_with(
    me: &ActorRef<RequestMsg>,
    st: &mut RequestState,
    ev: Event,
    decided_under: Option<serde_json::Value>,
) -> Result<Request, EngineError> {
    let ctx = st.ctx.clone();
    let event = ev.name();
    let tr = match step(&st.req, ev, ctx.now(), ctx.rules()) {
        Ok(mut tr) => {
            if let (Some(under), serde_json::Value::Object(details)) =
                (decided_under, &mut tr.audit.details)
            {
                details.insert("decided_under".into(), under);
            }
            tr
        }
        Err(Refusal::TimerEarly { .. }) => {
            arm_timers(me, st);
            return Ok(st.req.clone());
        }
        Err(r) => {
            metrics::counter!(names::REFUSALS, "event" => event).increment(1);
            return Err(r.into());
        }
    };
    // Revocation is always safe to repeat: an expiry's revokes go out before its commit, so
    // the access ends on time even while the database is slow or unreachable.
    for &grant_id in &tr.revoke_first {
        if st.inflight.insert((false, grant_id)) {
            spawn_call(me, &st.ctx, &st.stats, &tr.next, grant_id, false);
        }
    }
    let outbox = ctx.outbox_rows(&tr.notices);
    let persist = Persist {
        request: &tr.next,
        expected_version: st.req.version,
        times: &tr.times,
        audit: &tr.audit,
        outbox: &outbox,
        guard: tr.guard,
        node: ctx.node(),
        idempotency: None,
    };
    // An actor woken for its expiry's records already holds a slot (see `ShardMsg::Revoked`).
    let _permit = if tr.records_expiry && st.record_slot.is_none() {
        ctx.expiry_records.acquire().await.ok()
    } else {
        None
    };
    match ctx.store.transition(&st.fence, persist).await {
        Ok(Write::Updated { version, db_now }) => {
            ctx.observe_db_clock(db_now);
            let prev = std::mem::replace(&mut st.req, tr.next);
            st.req.version = version;
            st.req.apply_times(&tr.times, db_now);
            record_transition(&prev, &st.req, db_now);
            st.stuck.set(st.req.stuck);
            let _ = ctx.commits.send((st.req.id, version));
            st.stats.set_state(st.req.state.as_str());
            arm_timers(me, st);
            run_effects(me, st, tr.effects);
            if st.req.state.is_terminal() {
                stop(me, st, PASSIVATED.into());
            }
            Ok(st.req.clone())
        }
        Ok(Write::Stale) => {
            metrics::counter!(names::STALE_WRITES).increment(1);
            stop(me, st, "stale write: rebuilding from the store".into());
            Err(EngineError::Conflict)
        }
        Ok(Write::Missing) => {
            stop(me, st, "request missing from the store".into());
            Err(EngineError::NotFound { id: st.req.id })
        }
        Err(e) => {
            // The commit may or may not have happened: the database is the truth.
            tracing::warn!(request = %st.req.id, error = %e, "transition outcome unknown; rebuilding");
            stop(me, st, "store error: outcome unknown".into());
            Err(EngineError::unavailable(format!("the store failed: {e}")))
        }
    }
}

fn record_transition(prev: &Request, next: &Request, db_now: chrono::DateTime<chrono::Utc>) {
    metrics::counter!(names::TRANSITIONS, "from" => prev.state.as_str(), "to" => next.state.as_str()).increment(1);
    if next.state == State::Expired
        && let Some(exp) = next.expires_at
    {
        let lag = (db_now - exp).num_microseconds().unwrap_or(0) as f64 / 1e6;
        metrics::histogram!(names::EXPIRY_LAG).record(lag);
    }
}

fn arm_timers(me: &ActorRef<RequestMsg>, st: &mut RequestState) {
    st.timers.cancel();
    for (kind, at) in timers(&st.req) {
        let delay = st.ctx.until(at);
        let (me, stats) = (me.clone(), st.stats.clone());
        st.timers.0.push(tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            send(&me, &stats, RequestMsg::Internal(kind.event(at)));
        }));
    }
}

fn run_effects(me: &ActorRef<RequestMsg>, st: &mut RequestState, effects: Vec<Effect>) {
    for effect in effects {
        match effect {
            Effect::CallGrant { grant_id } | Effect::CallRevoke { grant_id } => {
                let grant = matches!(effect, Effect::CallGrant { .. });
                if st.inflight.insert((grant, grant_id)) {
                    spawn_call(me, &st.ctx, &st.stats, &st.req, grant_id, grant);
                }
            }
            Effect::RetryGrantLater { grant_id, attempt } => {
                retry_later(me, st, Effect::CallGrant { grant_id }, attempt);
            }
            Effect::RetryRevokeLater { grant_id, attempt } => {
                retry_later(me, st, Effect::CallRevoke { grant_id }, attempt);
            }
            Effect::Followup(ev) => {
                send(me, &st.stats, RequestMsg::Internal(ev));
            }
        }
    }
}

fn retry_later(me: &ActorRef<RequestMsg>, st: &mut RequestState, call: Effect, attempt: u32) {
    st.retries += 1;
    let asked = match &call {
        Effect::CallGrant { grant_id } | Effect::CallRevoke { grant_id } => {
            st.retry_after.remove(grant_id)
        }
        _ => None,
    };
    let delay = st
        .ctx
        .config
        .backoff
        .delay(attempt)
        .max(asked.unwrap_or_default());
    let (me, stats) = (me.clone(), st.stats.clone());
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        send(&me, &stats, RequestMsg::Retry(call));
    });
}

/// One provider call in its own task; its outcome comes back as an event.
fn spawn_call(
    me: &ActorRef<RequestMsg>,
    ctx: &Arc<NodeContext>,
    stats: &Arc<ActorStats>,
    req: &Request,
    grant_id: Uuid,
    grant: bool,
) {
    let Some(call) = provider_call(ctx, req, grant_id, grant) else {
        return;
    };
    let (me, stats) = (me.clone(), stats.clone());
    tokio::spawn(async move {
        let (event, retry_after) = call.await;
        if let Some(after) = retry_after {
            send(&me, &stats, RequestMsg::RetryAfter { grant_id, after });
        }
        send(&me, &stats, RequestMsg::Internal(event));
    });
}

/// The grant or revoke call for `grant_id` of `req` (as committed, or as about to be
/// committed), as a future yielding the event that reports its outcome; `None` when the
/// request has no such grant.
pub(super) fn provider_call(
    ctx: &Arc<NodeContext>,
    req: &Request,
    grant_id: Uuid,
    grant: bool,
) -> Option<impl Future<Output = (Event, Option<Duration>)> + Send + 'static> {
    let entry = req.grant(grant_id)?;
    let provider = ctx.providers.get(&req.spec.provider).cloned();
    let (spec, record) = (req.grant_spec(entry)?, req.grant_record(entry)?);
    let not_after = record.not_after;
    if !grant
        && req.ending == Some(EndingCause::Expired)
        && entry.purpose == GrantPurpose::Primary
        && let Some(exp) = req.expires_at
    {
        let lag = (ctx.now() - exp).num_microseconds().unwrap_or(0) as f64 / 1e6;
        metrics::histogram!(names::EXPIRY_ISSUE_LAG).record(lag);
    }
    let provider_name = req.spec.provider.clone();
    let ctx = ctx.clone();
    Some(async move {
        let missing = || ProviderError::Unavailable {
            provider: provider_name.clone(),
            reason: "this provider is not configured on this node".into(),
        };
        if grant {
            // Self-fencing: a grant starts only while this node's own clock says its lease
            // stands (revokes need no lease). A short wait covers a renewal just late.
            let waited = tokio::time::Instant::now();
            while !ctx.lease.usable() && waited.elapsed() < ctx.lease.margin() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let res = match &provider {
                Some(_) if !ctx.lease.usable() => {
                    metrics::counter!(names::GRANTS_FENCED).increment(1);
                    Err(ProviderError::Unavailable {
                        provider: provider_name.clone(),
                        reason: "held back: this node's shard lease is not confirmed (self-fenced); retried once it is, or by the next owner".into(),
                    })
                }
                Some(p) => p.grant(spec).await,
                None => Err(missing()),
            };
            return match res {
                Ok(rec) => (
                    Event::GrantSucceeded {
                        grant_id,
                        provider_ref: rec.provider_ref,
                    },
                    None,
                ),
                Err(e) => (
                    Event::GrantFailed {
                        grant_id,
                        class: e.class(),
                        message: e.to_string(),
                    },
                    retry_after(&e),
                ),
            };
        }
        let res = match &provider {
            Some(p) => p.revoke(record.clone()).await,
            None => Err(missing()),
        };
        match res {
            Ok(()) => (Event::RevokeSucceeded { grant_id }, None),
            Err(e) => {
                // Past its absolute end the provider may have removed the grant natively.
                let gone = match (&provider, ctx.now() >= not_after) {
                    (Some(p), true) => matches!(p.inspect(record).await, Ok(GrantState::Gone)),
                    _ => false,
                };
                if gone {
                    (
                        Event::GoneAtProvider {
                            grant_id,
                            evidence: format!("inspect: gone after not_after; revoke failed: {e}"),
                        },
                        None,
                    )
                } else {
                    (
                        Event::RevokeFailed {
                            grant_id,
                            message: e.to_string(),
                        },
                        retry_after(&e),
                    )
                }
            }
        }
    })
}

/// The quiet a throttling provider asked for, capped so that a hostile or confused answer
/// cannot park a revoke for long.
fn retry_after(e: &ProviderError) -> Option<Duration> {
    match e {
        ProviderError::Throttled {
            retry_after: Some(d),
            ..
        } => Some((*d).min(Duration::from_secs(300))),
        _ => None,
    }
}
