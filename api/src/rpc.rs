//! Every RPC of jitsudo.v1 as one function on the server state, shared by the gRPC and the
//! REST front ends: validation, the authorization matrix (docs/security.md), the call into
//! the engine, and the mapping back to the public messages.

use std::collections::BTreeMap;
use std::time::Instant;

use jitsudo_actors::EngineError;
use jitsudo_actors::domain::{Principal, Refusal, RequestId, RequestSpec, State, same_person};
use jitsudo_actors::engine::types::{AuditQuery, ListFilter, ShardRecord};
use jitsudo_actors::error::ErrorKind;
use jitsudo_actors::policy::{PolicyInput, PolicySource};
use jitsudo_proto::v1;
use tonic::Code;
use uuid::Uuid;

use crate::config::ClientPrincipal;
use crate::convert;
use crate::error::ApiError;
use crate::state::{AppState, Caller};

const MAX_ID: usize = 64;
const MAX_KEY: usize = 128;

pub fn parse_id(id: &str) -> Result<RequestId, ApiError> {
    if id.is_empty() {
        return Err(ApiError::invalid("id is required"));
    }
    if id.len() > MAX_ID {
        return Err(ApiError::invalid("id is too long; request ids are UUIDs"));
    }
    id.parse::<RequestId>()
        .map_err(|_| ApiError::invalid(format!("id {id:?} is not a request id (a UUID)")))
}

fn required(field: &str, v: &str) -> Result<(), ApiError> {
    if v.is_empty() {
        return Err(ApiError::invalid(format!("{field} is required")));
    }
    Ok(())
}

fn check_text(field: &str, v: &str, max: usize) -> Result<(), ApiError> {
    if v.len() > max {
        return Err(ApiError::invalid(format!(
            "{field} is {} bytes long; the limit is {max}",
            v.len()
        )));
    }
    Ok(())
}

impl AppState {
    /// Authenticates a call and builds its caller (groups decide admin and auditor).
    ///
    /// A bearer token decides who calls. Without one, a client certificate mapped to a bot
    /// (`server.client_principals`, verified in the TLS handshake) does.
    pub async fn caller(
        &self,
        authorization: Option<&str>,
        bot: Option<&ClientPrincipal>,
    ) -> Result<Caller, ApiError> {
        let (subject, email, email_verified, groups, claims) = match (authorization, bot) {
            (Some(header), _) => {
                let id = self.auth.authenticate(header).await.map_err(|e| match e {
                    // The identity provider being down is not the caller's fault: retryable.
                    crate::auth::AuthError::KeysUnavailable { .. } => {
                        ApiError::unavailable(e.to_string())
                    }
                    e => ApiError::unauthenticated(e.to_string()),
                })?;
                if let (Some(email), true) = (&id.email, id.email_verified) {
                    self.note_identity(&id.subject, email).await?;
                }
                (
                    id.subject,
                    id.email,
                    id.email_verified,
                    id.groups,
                    id.claims,
                )
            }
            (None, Some(b)) => (
                b.subject.clone(),
                None,
                false,
                b.groups.clone(),
                Default::default(),
            ),
            (None, None) => {
                return Err(ApiError::unauthenticated(
                    "missing Authorization header: send `Authorization: Bearer <access token>` (jitsudo login)",
                ));
            }
        };
        let trust_tier = match self.engine.principal(&subject).await {
            Ok(p) => p.map(|p| p.trust_tier).unwrap_or(0),
            Err(e) => return Err(EngineError::from(e).into()),
        };
        let admin = groups
            .iter()
            .any(|g| self.config.authz.admin_groups.contains(g));
        let auditor = groups
            .iter()
            .any(|g| self.config.authz.auditor_groups.contains(g));
        let links: Vec<String> = self
            .config
            .authz
            .same_person
            .iter()
            .filter(|set| set.contains(&subject))
            .flatten()
            .filter(|s| **s != subject)
            .cloned()
            .collect();
        Ok(Caller {
            principal: Principal {
                links,
                subject,
                email,
                email_verified,
                groups,
                trust_tier,
                claims,
            },
            admin,
            auditor,
        })
    }

    /// Remembers the verified email of a subject, so that "same person" checks about this
    /// subject (when someone else names it) see it. One store write per change, not per call.
    async fn note_identity(&self, subject: &str, email: &str) -> Result<(), ApiError> {
        let known = self
            .identities
            .lock()
            .map(|m| m.get(subject).is_some_and(|e| e == email))
            .unwrap_or(false);
        if known {
            return Ok(());
        }
        self.engine.note_identity(subject, email).await?;
        if let Ok(mut m) = self.identities.lock() {
            if m.len() > 100_000 {
                m.clear();
            }
            m.insert(subject.to_owned(), email.to_owned());
        }
        Ok(())
    }

    /// Runs one RPC: records latency and code, and audits authorization refusals (with a
    /// per-actor flood limit: the first few each minute one by one, then one summary).
    pub async fn run<T>(
        &self,
        rpc: &'static str,
        caller: Option<&Caller>,
        request_id: Option<&str>,
        fut: impl std::future::Future<Output = Result<T, ApiError>>,
    ) -> Result<T, ApiError> {
        let started = Instant::now();
        let res = match caller {
            Some(c) if is_mutation(rpc) => match self.mutation_limit.take(c.subject()) {
                Ok(()) => fut.await,
                Err(wait) => Err(ApiError::rate_limited(
                    format!(
                        "too many changes in a minute (limit {} per person); try again in {}s",
                        self.config.limits.mutations_per_minute,
                        wait.as_secs().max(1)
                    ),
                    wait,
                )),
            },
            _ => fut.await,
        };
        let code = match &res {
            Ok(_) => Code::Ok,
            Err(e) => e.code,
        };
        let code_name = crate::error::code_name(code);
        metrics::histogram!("jitsudo_rpc_seconds", "rpc" => rpc)
            .record(started.elapsed().as_secs_f64());
        metrics::counter!("jitsudo_rpc_total", "rpc" => rpc, "code" => code_name).increment(1);
        if let (Err(e), Some(c)) = (&res, caller)
            && e.code == Code::PermissionDenied
        {
            self.audit_denial(rpc, c, request_id, &e.message).await;
        }
        res
    }

    async fn audit_denial(&self, rpc: &str, c: &Caller, request_id: Option<&str>, why: &str) {
        const PER_MINUTE: u32 = 5;
        let minute = chrono::Utc::now().timestamp() / 60;
        let (write, summary) = {
            let Ok(mut m) = self.denials.lock() else {
                return;
            };
            let entry = m.entry(c.subject().to_owned()).or_insert((minute, 0));
            let mut summary = None;
            if entry.0 != minute {
                if entry.1 > PER_MINUTE {
                    summary = Some(entry.1 - PER_MINUTE);
                }
                *entry = (minute, 0);
            }
            entry.1 += 1;
            (entry.1 <= PER_MINUTE, summary)
        };
        let rid = request_id.and_then(|r| Uuid::parse_str(r).ok());
        if let Some(n) = summary {
            let _ = self.engine.record_denial_summary(c.subject(), n, 60).await;
        }
        if write && let Err(e) = self.engine.record_denial(c.subject(), rpc, rid, why).await {
            tracing::warn!(
                error = &e as &dyn std::error::Error,
                "could not audit an authorization refusal"
            );
        }
    }

    /// Requester, admin, auditor, or a person the request's approval groups name (or who
    /// already decided on it) may read a request.
    fn may_read(&self, c: &Caller, r: &jitsudo_actors::domain::Request) -> bool {
        c.admin
            || c.auditor
            || same_person(&c.principal.person(), &r.requester.person())
            || r.decision
                .approver_groups
                .iter()
                .any(|g| c.principal.groups.contains(g))
            || r.approvals
                .iter()
                .any(|a| same_person(&a.by, &c.principal.person()))
    }

    async fn load_readable(
        &self,
        c: &Caller,
        id: &str,
    ) -> Result<jitsudo_actors::domain::Request, ApiError> {
        let id = parse_id(id)?;
        let r = self.engine.get(id).await?;
        if !self.may_read(c, &r) {
            return Err(ApiError::denied(
                "you may read only your own requests and those you can approve (admins and auditors read all)",
            ));
        }
        Ok(r)
    }

    pub async fn create_request(
        &self,
        c: &Caller,
        r: v1::CreateRequestRequest,
    ) -> Result<v1::Request, ApiError> {
        if r.idempotency_key.len() > MAX_KEY {
            return Err(ApiError::invalid(format!(
                "idempotency_key is longer than {MAX_KEY} bytes"
            )));
        }
        let spec = RequestSpec {
            provider: r.provider,
            role: r.role,
            scope: r.scope,
            duration_seconds: r.duration_seconds,
            reason: r.reason,
            ticket: (!r.ticket.is_empty()).then_some(r.ticket),
            break_glass: r.break_glass,
            metadata: r.metadata.into_iter().collect::<BTreeMap<_, _>>(),
        };
        let key = (!r.idempotency_key.is_empty()).then_some(r.idempotency_key.as_str());
        let (req, _) = self
            .engine
            .create_idempotent(c.principal.clone(), spec, key)
            .await?;
        Ok(convert::request(&req))
    }

    pub async fn get_request(&self, c: &Caller, id: &str) -> Result<v1::Request, ApiError> {
        Ok(convert::request(&self.load_readable(c, id).await?))
    }

    pub async fn list_requests(
        &self,
        c: &Caller,
        r: v1::ListRequestsRequest,
    ) -> Result<v1::ListRequestsResponse, ApiError> {
        let max = self.config.limits.max_page_size.max(1);
        let limit = match r.page_size {
            0 => 50.min(max),
            n if n > max => return Err(ApiError::invalid(format!("page_size is at most {max}"))),
            n => n,
        };
        let mut states = Vec::new();
        for s in &r.states {
            states.push(state_from_number(*s)?);
        }
        let everyone = c.admin || c.auditor;
        let requester = match (r.requester.is_empty(), r.mine) {
            (_, true) => Some(c.subject().to_owned()),
            (false, false) if r.requester == c.subject() || everyone => Some(r.requester.clone()),
            (false, false) => {
                return Err(ApiError::denied(
                    "listing another person's requests needs an admin or auditor group",
                ));
            }
            (true, false) if r.awaiting_my_approval || everyone => None,
            (true, false) => Some(c.subject().to_owned()),
        };
        check_text("provider", &r.provider, 64)?;
        if r.needs_review {
            c.require_admin_or_auditor("listing requests that need a review")?;
        }
        let scope = format!(
            "{}|{}|{}|{}|{:?}|{}|{:?}",
            c.subject(),
            r.needs_review,
            r.awaiting_my_approval,
            requester.as_deref().unwrap_or("*"),
            r.states,
            r.provider,
            limit
        );
        let before = self.open_cursor(&scope, &r.page_token)?;
        let filter = ListFilter {
            requester,
            awaiting_groups: r.awaiting_my_approval.then(|| c.principal.groups.clone()),
            caller: Some(c.principal.person()),
            states,
            provider: (!r.provider.is_empty()).then(|| r.provider.clone()),
            needs_review: r.needs_review,
            before,
            limit,
        };
        let found = self.engine.list(&filter).await?;
        let next_page_token = match found.last() {
            Some(last) if found.len() as u32 == limit => {
                self.sign_cursor(&scope, last.created_at, last.id.0)
            }
            _ => String::new(),
        };
        Ok(v1::ListRequestsResponse {
            requests: found.iter().map(convert::request).collect(),
            next_page_token,
        })
    }

    /// The stored versions after `after`, and whether the request has reached a terminal state.
    pub async fn request_events(
        &self,
        c: &Caller,
        id: &str,
        after: i64,
    ) -> Result<(Vec<v1::RequestEvent>, bool), ApiError> {
        if after < 0 {
            return Err(ApiError::invalid("after_version must not be negative"));
        }
        let req = self.load_readable(c, id).await?;
        let events = self.engine.request_events(req.id, after).await?;
        let mut out: Vec<v1::RequestEvent> = events
            .iter()
            .filter(|e| e.request_version.is_some_and(|v| v <= req.version))
            .map(|e| v1::RequestEvent {
                version: e.request_version.unwrap_or(0),
                state: convert::event_state(e) as i32,
                kind: e.kind.clone(),
                actor: e.actor.clone(),
                at: Some(convert::ts(e.at)),
                details: e.details.clone(),
                request: None,
            })
            .collect();
        if let Some(last) = out.last_mut() {
            last.request = Some(convert::request(&req));
        }
        let done = req.state.is_terminal() && out.last().is_none_or(|e| e.version == req.version);
        Ok((out, done))
    }

    /// Decisions are idempotent per caller: repeating a decision already taken by this
    /// caller answers with the current request instead of an error.
    async fn decide(
        &self,
        c: &Caller,
        id: &str,
        already: impl Fn(&jitsudo_actors::domain::Request, &Caller) -> bool,
        act: impl AsyncFnOnce(RequestId) -> Result<jitsudo_actors::domain::Request, EngineError>,
    ) -> Result<v1::Request, ApiError> {
        let rid = parse_id(id)?;
        match act(rid).await {
            Ok(r) => Ok(convert::request(&r)),
            // The same refusals as they come back from the owner of a routed call.
            Err(
                e @ (EngineError::Refused(
                    Refusal::AlreadyApproved
                    | Refusal::NotAccepted { .. }
                    | Refusal::Terminal { .. }
                    | Refusal::AlreadyEnding,
                )
                | EngineError::Remote {
                    kind: ErrorKind::AlreadyExists | ErrorKind::FailedPrecondition,
                    ..
                }),
            ) => {
                let current = self.engine.get(rid).await?;
                if already(&current, c) {
                    Ok(convert::request(&current))
                } else {
                    Err(e.into())
                }
            }
            Err(e) => Err(e.into()),
        }
    }

    pub async fn approve(
        &self,
        c: &Caller,
        id: &str,
        comment: String,
    ) -> Result<v1::Request, ApiError> {
        check_text("comment", &comment, 1024)?;
        let by = c.principal.clone();
        self.decide(
            c,
            id,
            // The same caller, not merely the same person: another identity of someone who
            // already approved is told so (ALREADY_EXISTS) instead of being answered as if
            // its approval had counted.
            |r, c| {
                r.approvals
                    .iter()
                    .any(|a| a.kind == "approver" && a.by.subject == c.subject())
            },
            async move |rid| self.engine.approve(rid, by, &comment).await,
        )
        .await
    }

    pub async fn deny(
        &self,
        c: &Caller,
        id: &str,
        reason: String,
    ) -> Result<v1::Request, ApiError> {
        check_text("reason", &reason, 1024)?;
        let by = c.principal.clone();
        let mark = format!("denied by {}:", c.subject());
        self.decide(
            c,
            id,
            move |r, _| {
                r.state == State::Rejected
                    && r.end_detail
                        .as_deref()
                        .is_some_and(|d| d.starts_with(&mark))
            },
            async move |rid| self.engine.deny(rid, by, &reason).await,
        )
        .await
    }

    pub async fn cancel(&self, c: &Caller, id: &str) -> Result<v1::Request, ApiError> {
        let by = c.principal.clone();
        self.decide(
            c,
            id,
            |r, c| {
                same_person(&r.requester.person(), &c.principal.person())
                    && r.end_detail
                        .as_deref()
                        .is_some_and(|d| d.starts_with("cancelled by the requester"))
            },
            async move |rid| self.engine.cancel(rid, by).await,
        )
        .await
    }

    pub async fn revoke(
        &self,
        c: &Caller,
        id: &str,
        reason: String,
    ) -> Result<v1::Request, ApiError> {
        check_text("reason", &reason, 1024)?;
        let by = c.principal.clone();
        let mark = format!("revoked by {}:", c.subject());
        self.decide(
            c,
            id,
            move |r, _| {
                r.end_detail
                    .as_deref()
                    .is_some_and(|d| d.starts_with(&mark))
            },
            async move |rid| self.engine.revoke(rid, by, &reason).await,
        )
        .await
    }

    pub async fn extend(
        &self,
        c: &Caller,
        id: &str,
        by_seconds: i64,
        reason: String,
    ) -> Result<v1::Request, ApiError> {
        let rid = parse_id(id)?;
        Ok(convert::request(
            &self
                .engine
                .extend(rid, c.principal.clone(), by_seconds, &reason)
                .await?,
        ))
    }

    pub async fn decide_extension(
        &self,
        c: &Caller,
        r: v1::DecideExtensionRequest,
        approve: bool,
    ) -> Result<v1::Request, ApiError> {
        let rid = parse_id(&r.id)?;
        check_text("comment", &r.comment, 1024)?;
        let cmd = if approve {
            jitsudo_actors::request::Command::ApproveExtension {
                by: c.principal.clone(),
                number: r.number,
                comment: r.comment,
            }
        } else {
            jitsudo_actors::request::Command::DenyExtension {
                by: c.principal.clone(),
                number: r.number,
                reason: r.comment,
            }
        };
        Ok(convert::request(&self.engine.command(rid, cmd).await?))
    }

    pub async fn review(
        &self,
        c: &Caller,
        id: &str,
        verdict: &str,
    ) -> Result<v1::Review, ApiError> {
        c.require_admin_or_auditor("reviewing requests")?;
        if verdict.trim().is_empty() {
            return Err(ApiError::invalid(
                "verdict is required: say what the review concluded",
            ));
        }
        let rid = parse_id(id)?;
        let r = self.engine.close_review(&c.principal, rid, verdict).await?;
        Ok(v1::Review {
            request_id: r.request_id.to_string(),
            reason: r.reason,
            reviewer: r.reviewer,
            verdict: r.verdict,
            closed_at: Some(convert::ts(r.closed_at)),
        })
    }

    pub async fn credentials(&self, c: &Caller, id: &str) -> Result<v1::Credentials, ApiError> {
        let rid = parse_id(id)?;
        let creds = self.engine.credentials(rid, &c.principal).await?;
        Ok(v1::Credentials {
            env: creds.env.into_iter().collect(),
            expires_at: Some(convert::ts(creds.expires_at)),
            notice: creds.notice.unwrap_or_default(),
        })
    }

    // ---- policies ----

    fn policy_msg(p: &PolicySource, at: Option<chrono::DateTime<chrono::Utc>>) -> v1::Policy {
        v1::Policy {
            name: p.name.clone(),
            version: p.version,
            rego: p.rego.clone(),
            author: p.author.clone(),
            created_at: convert::opt_ts(at),
        }
    }

    pub async fn list_policies(&self, c: &Caller) -> Result<v1::ListPoliciesResponse, ApiError> {
        c.require_admin_or_auditor("reading policies")?;
        let ps = self.engine.stored_policies().await?;
        Ok(v1::ListPoliciesResponse {
            policies: ps
                .iter()
                .map(|(p, at)| Self::policy_msg(p, Some(*at)))
                .collect(),
            policy_version: self.engine.policy().current().fingerprint().to_owned(),
        })
    }

    pub async fn get_policy(&self, c: &Caller, name: &str) -> Result<v1::Policy, ApiError> {
        c.require_admin_or_auditor("reading policies")?;
        required("name", name)?;
        check_text("name", name, 128)?;
        match self.engine.stored_policy(name).await? {
            Some((p, at)) => Ok(Self::policy_msg(&p, Some(at))),
            None => Err(ApiError::not_found(format!("no policy named {name:?}"))),
        }
    }

    pub async fn apply_policy(
        &self,
        c: &Caller,
        r: v1::ApplyPolicyRequest,
    ) -> Result<v1::Policy, ApiError> {
        c.require_admin("changing policies")?;
        if r.name.is_empty() {
            return Err(ApiError::invalid("name is required"));
        }
        check_text("name", &r.name, 128)?;
        check_text("rego", &r.rego, 256 * 1024)?;
        let version = self
            .engine
            .policy()
            .apply(&r.name, &r.rego, c.subject())
            .await
            .map_err(|e| match e {
                EngineError::Policy(p) => {
                    ApiError::invalid(format!("the policy does not compile; nothing changed: {p}"))
                }
                other => other.into(),
            })?;
        Ok(v1::Policy {
            name: r.name,
            version,
            rego: r.rego,
            author: c.subject().to_owned(),
            created_at: Some(convert::ts(chrono::Utc::now())),
        })
    }

    pub async fn delete_policy(
        &self,
        c: &Caller,
        name: &str,
    ) -> Result<v1::DeletePolicyResponse, ApiError> {
        c.require_admin("changing policies")?;
        required("name", name)?;
        check_text("name", name, 128)?;
        let deleted = self.engine.policy().delete(name, c.subject()).await?;
        if !deleted {
            return Err(ApiError::not_found(format!("no policy named {name:?}")));
        }
        Ok(v1::DeletePolicyResponse { deleted })
    }

    pub async fn eval_policy(
        &self,
        c: &Caller,
        r: v1::EvalPolicyRequest,
    ) -> Result<v1::EvalPolicyResponse, ApiError> {
        c.require_admin_or_auditor("evaluating policies")?;
        check_text("input_json", &r.input_json, 64 * 1024)?;
        let input: PolicyInput = serde_json::from_str(&r.input_json).map_err(|e| {
            ApiError::invalid(format!(
                "input_json is not a policy input document (docs/policy.md): {e}"
            ))
        })?;
        let set = self.engine.policy().current();
        let decision = set
            .evaluate(&input)
            .map_err(|e| ApiError::invalid(format!("evaluation failed: {e}")))?;
        let approver_allowed = if input.approver.is_some() {
            set.approver_allowed(&input)
                .map_err(|e| ApiError::invalid(format!("evaluation failed: {e}")))?
        } else {
            false
        };
        Ok(v1::EvalPolicyResponse {
            decision_json: serde_json::to_string(&decision).unwrap_or_default(),
            eligible: decision.eligible,
            deny_reasons: decision.deny_reasons.clone(),
            approver_allowed,
            policies: decision
                .policies
                .iter()
                .map(|p| v1::Policy {
                    name: p.name.clone(),
                    version: p.version,
                    rego: String::new(),
                    author: p.author.clone(),
                    created_at: None,
                })
                .collect(),
            policy_version: decision.policy_version,
        })
    }

    // ---- audit ----

    pub async fn query_audit(
        &self,
        c: &Caller,
        r: v1::QueryAuditRequest,
    ) -> Result<v1::QueryAuditResponse, ApiError> {
        c.require_admin_or_auditor("reading the audit log")?;
        let limit = match r.page_size {
            0 => 100,
            n if n > 1000 => return Err(ApiError::invalid("page_size is at most 1000")),
            n => n,
        };
        let public_key_pem = self
            .verifying_key
            .as_ref()
            .and_then(|k| {
                use ed25519_dalek::pkcs8::EncodePublicKey;
                k.to_public_key_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
                    .ok()
            })
            .unwrap_or_default();
        let checkpoints: Vec<v1::Checkpoint> = self
            .engine
            .checkpoints()
            .await?
            .into_iter()
            .map(|cp| v1::Checkpoint {
                seq: cp.seq,
                hash: cp.hash,
                at: Some(convert::ts(cp.at)),
                key_id: cp.key_id,
                signature: cp.signature,
                at_micros: cp.at.timestamp_micros(),
            })
            .collect();
        if r.chain_mode {
            if r.chain_after_seq < 0 {
                return Err(ApiError::invalid("chain_after_seq must not be negative"));
            }
            let page = self.engine.chain_page(r.chain_after_seq, limit).await?;
            let next = match page.last() {
                Some((l, _)) if page.len() as u32 == limit => l.seq.to_string(),
                _ => String::new(),
            };
            let events = page
                .into_iter()
                .map(|(link, ev)| {
                    let chain = v1::ChainEntry {
                        seq: link.seq,
                        prev_hash: link.prev_hash,
                        hash: link.hash,
                    };
                    match ev {
                        Some(e) => convert::audit_event(&e, Some(chain)),
                        // The chain names an event that is gone: show the hole.
                        None => v1::AuditEvent {
                            id: link.event_id.to_string(),
                            chain: Some(chain),
                            ..Default::default()
                        },
                    }
                })
                .collect();
            return Ok(v1::QueryAuditResponse {
                events,
                checkpoints,
                next_page_token: next,
                public_key_pem,
            });
        }
        let scope = format!(
            "{}|{}|{}|{}|{}|{:?}|{:?}|{}|{limit}",
            c.subject(),
            r.request_id,
            r.actor,
            r.kind,
            r.provider,
            r.since,
            r.until,
            r.oldest_first
        );
        let after = self.open_cursor(&scope, &r.page_token)?;
        let q = AuditQuery {
            request_id: if r.request_id.is_empty() {
                None
            } else {
                Some(parse_id(&r.request_id)?.0)
            },
            actor: (!r.actor.is_empty()).then(|| r.actor.clone()),
            kind: (!r.kind.is_empty()).then(|| r.kind.clone()),
            provider: (!r.provider.is_empty()).then(|| r.provider.clone()),
            since: r.since.as_ref().and_then(convert::from_ts),
            until: r.until.as_ref().and_then(convert::from_ts),
            oldest_first: r.oldest_first,
            after,
            limit,
        };
        let rows = self.engine.audit_page(&q).await?;
        let next_page_token = match rows.last() {
            Some((e, _)) if rows.len() as u32 == limit => self.sign_cursor(&scope, e.at, e.id),
            _ => String::new(),
        };
        let events = rows
            .iter()
            .map(|(e, link)| {
                convert::audit_event(
                    e,
                    link.as_ref().map(|l| v1::ChainEntry {
                        seq: l.seq,
                        prev_hash: l.prev_hash.clone(),
                        hash: l.hash.clone(),
                    }),
                )
            })
            .collect();
        Ok(v1::QueryAuditResponse {
            events,
            checkpoints,
            next_page_token,
            public_key_pem,
        })
    }

    pub async fn verify_audit(&self, c: &Caller) -> Result<v1::VerifyAuditResponse, ApiError> {
        c.require_admin_or_auditor("verifying the audit log")?;
        let r = self
            .engine
            .verify_audit(self.verifying_key.as_ref())
            .await?;
        Ok(v1::VerifyAuditResponse {
            intact: r.is_intact(),
            chain_length: r.chain_length,
            verified_through: r.verified_through,
            first_broken: r.first_broken.clone().unwrap_or_default(),
            first_broken_seq: r.first_broken_seq.unwrap_or(0),
            checkpoints: r.checkpoints as u32,
            last_checkpoint_seq: r.last_checkpoint_seq.unwrap_or(0),
            checkpoint_problems: r
                .checkpoint_problems
                .iter()
                .map(|p| format!("checkpoint {}: {}", p.seq, p.problem))
                .collect(),
            truncated_at: r.truncated.as_ref().map(|t| t.chain_length).unwrap_or(0),
            events_after_last_checkpoint: r.events_after_last_checkpoint,
            version_gaps: r
                .version_gaps
                .iter()
                .map(|(id, v, missing)| v1::VersionGap {
                    request_id: id.clone(),
                    version: *v,
                    missing: missing.clone(),
                })
                .collect(),
            unchained: r.unchained,
            oldest_unchained_age_seconds: r.oldest_unchained_age_seconds.unwrap_or(0.0),
        })
    }

    // ---- principals ----

    pub fn who_am_i(&self, c: &Caller) -> v1::Principal {
        let p = &c.principal;
        v1::Principal {
            subject: p.subject.clone(),
            email: p.email.clone().unwrap_or_default(),
            email_verified: p.email_verified,
            groups: p.groups.clone(),
            trust_tier: p.trust_tier,
            admin: c.admin,
            auditor: c.auditor,
        }
    }

    pub async fn get_principal(
        &self,
        c: &Caller,
        subject: &str,
    ) -> Result<v1::PrincipalRecord, ApiError> {
        if subject != c.subject() {
            c.require_admin_or_auditor("reading another principal")?;
        }
        required("subject", subject)?;
        check_text("subject", subject, 256)?;
        let rec = self.engine.principal(subject).await?;
        Ok(match rec {
            Some(p) => v1::PrincipalRecord {
                subject: p.subject,
                trust_tier: p.trust_tier,
                updated_by: p.updated_by,
                updated_at: Some(convert::ts(p.updated_at)),
            },
            None => v1::PrincipalRecord {
                subject: subject.to_owned(),
                trust_tier: 0,
                updated_by: String::new(),
                updated_at: None,
            },
        })
    }

    pub async fn set_trust_tier(
        &self,
        c: &Caller,
        r: v1::SetTrustTierRequest,
    ) -> Result<v1::PrincipalRecord, ApiError> {
        c.require_admin("changing trust tiers")?;
        if r.subject.is_empty() {
            return Err(ApiError::invalid("subject is required"));
        }
        check_text("subject", &r.subject, 256)?;
        check_text("reason", &r.reason, 1024)?;
        let p = self
            .engine
            .set_trust_tier(&c.principal, &r.subject, r.trust_tier, &r.reason)
            .await?;
        Ok(v1::PrincipalRecord {
            subject: p.subject,
            trust_tier: p.trust_tier,
            updated_by: p.updated_by,
            updated_at: Some(convert::ts(p.updated_at)),
        })
    }

    // ---- admin ----

    pub fn version(&self) -> v1::Version {
        v1::Version {
            version: env!("CARGO_PKG_VERSION").into(),
            api: "jitsudo.v1".into(),
            git: option_env!("JITSUDO_GIT").unwrap_or("").into(),
        }
    }

    pub async fn node_status(&self, c: &Caller) -> Result<v1::NodeStatus, ApiError> {
        c.require_admin_or_auditor("reading node status")?;
        let ctx = self.engine.context();
        Ok(v1::NodeStatus {
            node: ctx.node().to_owned(),
            store: self.engine.store_backend().into(),
            shards_owned: self.engine.shards_owned().len() as u32,
            shards_total: ctx.config.shards,
            clock_offset_ms: ctx.clock_offset().num_microseconds().unwrap_or(0) as f64 / 1000.0,
            live_requests: self.engine.live_request_count() as u64,
            policy_version: ctx.policy.current().fingerprint().to_owned(),
            started_at: Some(convert::ts(self.started_at)),
            dev_mode: self.dev,
        })
    }

    pub async fn cluster_status(&self, c: &Caller) -> Result<v1::ClusterStatus, ApiError> {
        c.require_admin_or_auditor("reading the cluster status")?;
        let s = self.engine.cluster_status().await?;
        let ms = |d: chrono::Duration| d.num_microseconds().unwrap_or(i64::MAX) as f64 / 1000.0;
        let shard = |r: &ShardRecord| v1::ClusterShard {
            shard: r.shard,
            owner: r.owner.clone(),
            epoch: r.epoch,
            acquired_at: Some(convert::ts(r.acquired_at)),
            lease_expires_at: r.lease_expires_at.map(convert::ts),
            leased: r.lease_expires_at.is_some_and(|t| t > s.db_now),
        };
        Ok(v1::ClusterStatus {
            db_now: Some(convert::ts(s.db_now)),
            lease_ttl_seconds: s.lease_ttl.as_secs_f64(),
            members: s
                .members
                .iter()
                .map(|m| v1::ClusterMember {
                    node: m.member.node.clone(),
                    incarnation: m.member.incarnation.to_string(),
                    cluster_addr: m.member.cluster_addr.clone(),
                    api_addr: m.member.api_addr.clone(),
                    started_at: Some(convert::ts(m.member.started_at)),
                    heartbeat_at: Some(convert::ts(m.member.heartbeat_at)),
                    heartbeat_age_ms: ms(m.heartbeat_age),
                    alive: m.alive,
                    clock_offset_ms: m.member.clock_offset_us as f64 / 1000.0,
                    shards_owned: m.shards_owned as u32,
                })
                .collect(),
            shards: s.shards.iter().map(shard).collect(),
            audit_sequencer: s.audit_sequencer.as_ref().map(shard),
            epoch_changes: s.epoch_changes(),
        })
    }

    pub async fn list_providers(&self, c: &Caller) -> Result<v1::ListProvidersResponse, ApiError> {
        c.require_admin_or_auditor("listing providers")?;
        Ok(v1::ListProvidersResponse {
            providers: self
                .engine
                .providers()
                .await?
                .iter()
                .map(convert::provider_status)
                .collect(),
        })
    }

    pub fn list_actors(&self, c: &Caller) -> Result<v1::ListActorsResponse, ApiError> {
        c.require_admin_or_auditor("listing actors")?;
        Ok(v1::ListActorsResponse {
            node: self.engine.context().node().to_owned(),
            actors: self
                .engine
                .actors()
                .into_iter()
                .map(|a| v1::ActorSnapshot {
                    kind: a.kind,
                    id: a.id,
                    state: a.state,
                    mailbox: a.mailbox as u64,
                    restarts: a.restarts,
                    last_event_at: Some(convert::ts(a.last_event_at)),
                })
                .collect(),
        })
    }

    pub async fn reload_policies(
        &self,
        c: &Caller,
    ) -> Result<v1::ReloadPoliciesResponse, ApiError> {
        c.require_admin("reloading policies")?;
        Ok(v1::ReloadPoliciesResponse {
            policy_version: self.engine.policy().reload().await?,
        })
    }

    pub async fn dead_letters(
        &self,
        c: &Caller,
        r: v1::ListDeadLettersRequest,
    ) -> Result<v1::ListDeadLettersResponse, ApiError> {
        c.require_admin_or_auditor("listing dead letters")?;
        let limit = r.limit.clamp(1, 1000);
        let rows = self
            .engine
            .dead_letters((!r.sink.is_empty()).then_some(r.sink.as_str()), limit)
            .await?;
        Ok(v1::ListDeadLettersResponse {
            dead_letters: rows
                .into_iter()
                .map(|o| v1::DeadLetter {
                    id: o.id,
                    event_id: o.event_id.to_string(),
                    request_id: o.request_id.map(|u| u.to_string()).unwrap_or_default(),
                    sink: o.sink,
                    kind: o.kind,
                    attempts: o.attempts,
                    last_error: o.last_error.unwrap_or_default(),
                    created_at: Some(convert::ts(o.created_at)),
                })
                .collect(),
        })
    }

    pub async fn redrive(
        &self,
        c: &Caller,
        id: i64,
    ) -> Result<v1::RedriveDeadLetterResponse, ApiError> {
        c.require_admin("re-driving dead letters")?;
        let ok = self.engine.redrive(id, c.subject()).await?;
        if !ok {
            return Err(ApiError::new(
                Code::FailedPrecondition,
                format!("outbox row {id} is not a dead letter"),
            ));
        }
        Ok(v1::RedriveDeadLetterResponse { redriven: true })
    }
}

fn state_from_number(n: i32) -> Result<State, ApiError> {
    convert::state_from(n).ok_or_else(|| ApiError::invalid(format!("unknown request state {n}")))
}

/// The calls that change something (or hand out credentials): rate-limited per principal.
fn is_mutation(rpc: &str) -> bool {
    matches!(
        rpc,
        "CreateRequest"
            | "ApproveRequest"
            | "DenyRequest"
            | "CancelRequest"
            | "RevokeRequest"
            | "ExtendRequest"
            | "ApproveExtension"
            | "DenyExtension"
            | "GetCredentials"
            | "ApplyPolicy"
            | "DeletePolicy"
            | "SetTrustTier"
            | "ReloadPolicies"
            | "RedriveDeadLetter"
            | "ReviewRequest"
    )
}
