//! `request`, `status`, `approve`, `deny`, `cancel`, `revoke`, `extend`, and following a
//! request live (WatchRequest, resumed after a dropped stream).

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, ValueEnum};
use futures::StreamExt as _;
use indicatif::{ProgressBar, ProgressStyle};
use jitsudo_proto::v1::{self, RequestState};

use crate::app::App;
use crate::client::Api;
use crate::error::{CliError, CliResult, Exit};
use crate::output::{Out, details, format_duration, local_hm, local_time, parse_duration, table};

#[derive(Args, Debug)]
pub struct RequestArgs {
    /// The provider configured on the server (e.g. aws, demo).
    #[arg(long)]
    pub provider: String,
    /// The role to assume or bind.
    #[arg(long)]
    pub role: String,
    /// Where: an account, subscription, project or namespace.
    #[arg(long)]
    pub scope: String,
    /// How long: 90s, 15m, 1h, 1h30m.
    #[arg(long, value_parser = parse_duration)]
    pub duration: i64,
    /// Why you need it (approvers and auditors read this).
    #[arg(long)]
    pub reason: String,
    /// A ticket reference, if your policy asks for one.
    #[arg(long)]
    pub ticket: Option<String>,
    /// Emergency access: granted at once where policy allows it, alerted and reviewed.
    #[arg(long)]
    pub break_glass: bool,
    /// Extra metadata, key=value (repeatable).
    #[arg(long = "meta", value_parser = parse_meta)]
    pub meta: Vec<(String, String)>,
    /// Follow the request until it is active (exit 0) or ends without access (exit 1).
    #[arg(long)]
    pub wait: bool,
    /// Idempotency key: the same key never makes a second request (default: a new one).
    #[arg(long, hide = true, env = "JITSUDO_IDEMPOTENCY_KEY")]
    pub idempotency_key: Option<String>,
}

fn parse_meta(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.to_owned())),
        _ => Err(format!("{s:?} is not key=value")),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum StateArg {
    Pending,
    Approved,
    Active,
    Ending,
    Expired,
    Revoked,
    Rejected,
    Cancelled,
    TimedOut,
    Failed,
}

impl From<StateArg> for RequestState {
    fn from(s: StateArg) -> RequestState {
        match s {
            StateArg::Pending => RequestState::Pending,
            StateArg::Approved => RequestState::Approved,
            StateArg::Active => RequestState::Active,
            StateArg::Ending => RequestState::Ending,
            StateArg::Expired => RequestState::Expired,
            StateArg::Revoked => RequestState::Revoked,
            StateArg::Rejected => RequestState::Rejected,
            StateArg::Cancelled => RequestState::Cancelled,
            StateArg::TimedOut => RequestState::TimedOut,
            StateArg::Failed => RequestState::Failed,
        }
    }
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// A request id: show it in detail. Without it, list requests.
    pub id: Option<String>,
    /// Only your own requests (the default).
    #[arg(long, conflicts_with_all = ["pending", "all"])]
    pub mine: bool,
    /// Requests waiting for your approval.
    #[arg(long, conflicts_with = "all")]
    pub pending: bool,
    /// Everyone's requests (admins and auditors).
    #[arg(long)]
    pub all: bool,
    /// Break-glass and self-approved requests whose review is open (admins and auditors).
    #[arg(long, conflicts_with_all = ["mine", "pending"])]
    pub needs_review: bool,
    /// Only these states (repeatable).
    #[arg(long, value_enum)]
    pub state: Vec<StateArg>,
    #[arg(long)]
    pub provider: Option<String>,
    /// Only this requester's requests (admins and auditors).
    #[arg(long)]
    pub requester: Option<String>,
    /// How many to list (1–500).
    #[arg(long, default_value_t = 50)]
    pub limit: u32,
    /// Continue a listing from the token a previous page printed.
    #[arg(long)]
    pub page_token: Option<String>,
    /// Follow the request and print every change until it ends.
    #[arg(long, requires = "id")]
    pub watch: bool,
}

pub fn state_name(s: i32) -> &'static str {
    match RequestState::try_from(s).unwrap_or(RequestState::Unspecified) {
        RequestState::Unspecified => "UNKNOWN",
        RequestState::Pending => "PENDING",
        RequestState::Approved => "APPROVED",
        RequestState::Active => "ACTIVE",
        RequestState::Ending => "ENDING",
        RequestState::Expired => "EXPIRED",
        RequestState::Revoked => "REVOKED",
        RequestState::Rejected => "REJECTED",
        RequestState::Cancelled => "CANCELLED",
        RequestState::TimedOut => "TIMED_OUT",
        RequestState::Failed => "FAILED",
    }
}

pub fn is_terminal(s: i32) -> bool {
    matches!(
        RequestState::try_from(s),
        Ok(RequestState::Expired
            | RequestState::Revoked
            | RequestState::Rejected
            | RequestState::Cancelled
            | RequestState::TimedOut
            | RequestState::Failed)
    )
}

fn target(r: &v1::Request) -> String {
    format!("{}/{}@{}", r.provider, r.role, r.scope)
}

fn approvals(r: &v1::Request) -> String {
    let people = r.approvals.iter().filter(|a| a.kind == "approver").count();
    if r.auto_approved || r.approvals.iter().any(|a| a.kind == "policy") {
        "auto".into()
    } else if r.break_glass {
        "break-glass".into()
    } else {
        format!("{people}/{}", r.approvals_required)
    }
}

/// One line saying where the request is and what it waits for.
pub fn situation(r: &v1::Request) -> String {
    let id = &r.id;
    match RequestState::try_from(r.state).unwrap_or(RequestState::Unspecified) {
        RequestState::Pending => {
            let have = r.approvals.iter().filter(|a| a.kind == "approver").count() as u32;
            let missing = r.approvals_required.saturating_sub(have).max(1);
            let groups = if r.approver_groups.is_empty() {
                String::new()
            } else {
                format!(
                    " from {} {}",
                    if r.approver_groups.len() == 1 {
                        "group"
                    } else {
                        "groups"
                    },
                    r.approver_groups.join(", ")
                )
            };
            format!(
                "request {id} is pending: waiting for {missing} more approval{}{groups} (approvals {have}/{})",
                if missing == 1 { "" } else { "s" },
                r.approvals_required
            )
        }
        RequestState::Approved => format!("request {id} is approved: granting access"),
        RequestState::Active => {
            format!("request {id} is active until {}", local_time(&r.expires_at))
        }
        RequestState::Ending => format!("request {id} is ending: access is being taken back"),
        other => {
            let name = state_name(other as i32);
            if r.end_detail.is_empty() {
                format!("request {id} has ended: {name}")
            } else {
                format!("request {id} has ended: {name} ({})", r.end_detail)
            }
        }
    }
}

/// The status line shown while waiting.
fn progress(r: &v1::Request) -> String {
    match RequestState::try_from(r.state).unwrap_or(RequestState::Unspecified) {
        RequestState::Pending => {
            let have = r.approvals.iter().filter(|a| a.kind == "approver").count();
            format!(
                "pending — approvals {have}/{} from {}",
                r.approvals_required,
                if r.approver_groups.is_empty() {
                    "approvers".to_owned()
                } else {
                    r.approver_groups.join(", ")
                }
            )
        }
        RequestState::Approved => "approved — granting".into(),
        RequestState::Active => format!("active until {}", local_hm(&r.expires_at)),
        RequestState::Ending => "ending — revoking".into(),
        _ => state_name(r.state).to_lowercase(),
    }
}

pub fn request_table(out: &Out, requests: &[v1::Request], next: &str) -> String {
    let rows = requests
        .iter()
        .map(|r| {
            vec![
                r.id.clone(),
                out.state(state_name(r.state)),
                r.requester.clone(),
                target(r),
                format_duration(r.duration_seconds),
                approvals(r),
                local_time(&r.created_at),
                local_time(&r.expires_at),
            ]
        })
        .collect();
    let mut text = table(
        &[
            "ID",
            "STATE",
            "REQUESTER",
            "TARGET",
            "DURATION",
            "APPROVALS",
            "CREATED",
            "EXPIRES",
        ],
        rows,
    );
    if requests.is_empty() {
        text = "No requests.".into();
    }
    if !next.is_empty() {
        text.push_str(&format!("\n\nMore: --page-token {next}"));
    }
    text
}

pub fn request_details(out: &Out, r: &v1::Request) -> String {
    let mut rows: Vec<(&str, String)> = vec![
        ("ID", r.id.clone()),
        ("State", out.state(state_name(r.state))),
        ("Requester", r.requester.clone()),
        ("Principal", r.principal.clone()),
        ("Provider", r.provider.clone()),
        ("Role", r.role.clone()),
        ("Scope", r.scope.clone()),
        ("Duration", format_duration(r.duration_seconds)),
        ("Reason", r.reason.clone()),
        ("Ticket", r.ticket.clone()),
        (
            "Break-glass",
            if r.break_glass {
                "yes".into()
            } else {
                String::new()
            },
        ),
        ("Approvals", approvals(r)),
        ("Approver groups", r.approver_groups.join(", ")),
        ("Created", local_time(&r.created_at)),
        ("Approval deadline", local_time(&r.approval_deadline)),
        ("Granted", local_time(&r.granted_at)),
        ("Expires", local_time(&r.expires_at)),
        ("Ended", local_time(&r.ended_at)),
        ("End detail", r.end_detail.clone()),
        (
            "Provider said",
            r.grants
                .iter()
                .filter(|g| !g.last_error.is_empty())
                .map(|g| format!("{} ({} attempts): {}", g.purpose, g.attempts, g.last_error))
                .collect::<Vec<_>>()
                .join("; "),
        ),
        (
            "Revocation",
            if r.revocation_stuck {
                "STUCK: retrying, operators alerted".into()
            } else {
                String::new()
            },
        ),
        ("Review needed", r.review_reason.clone()),
        ("Policy version", r.policy_version.clone()),
        ("Version", r.version.to_string()),
    ];
    let meta: BTreeMap<_, _> = r.metadata.iter().collect();
    let meta = meta
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(", ");
    rows.push(("Metadata", meta));
    let mut text = details(&rows);
    for a in &r.approvals {
        let who = match a.kind.as_str() {
            "policy" => "auto-approved by policy".to_owned(),
            "break_glass" => format!("break-glass by {}", a.approver),
            _ => format!("approved by {}", a.approver),
        };
        let comment = if a.comment.is_empty() || a.kind == "policy" {
            String::new()
        } else {
            format!(": {}", a.comment)
        };
        text.push_str(&format!("\n  {who} at {}{comment}", local_time(&a.at)));
    }
    for e in &r.extensions {
        text.push_str(&format!(
            "\n  extension {} by {}: {}{}",
            e.number,
            format_duration(e.by_seconds),
            e.state,
            if e.reason.is_empty() {
                String::new()
            } else {
                format!(" ({})", e.reason)
            }
        ));
    }
    text
}

pub async fn request(app: &App, a: RequestArgs) -> CliResult<ExitCode> {
    let api = app.api().await?;
    let key = a
        .idempotency_key
        .clone()
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    let create = v1::CreateRequestRequest {
        provider: a.provider,
        role: a.role,
        scope: a.scope,
        duration_seconds: a.duration,
        reason: a.reason,
        ticket: a.ticket.unwrap_or_default(),
        break_glass: a.break_glass,
        metadata: a.meta.into_iter().collect(),
        idempotency_key: key,
    };
    // A dropped connection before the answer is retried with the same key: the server
    // returns the request it already made instead of making a second one.
    let mut attempt = 0;
    let created = loop {
        match api.requests.clone().create_request(create.clone()).await {
            Ok(r) => break r.into_inner(),
            Err(s) if s.code() == tonic::Code::Unavailable && attempt < 3 => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(300 * attempt)).await;
            }
            Err(s) => return Err(api.err(s)),
        }
    };
    app.out.note(format!("Created request {}", created.id));
    if !a.wait {
        app.out.emit(&created, |o| request_details(o, &created))?;
        return Ok(ExitCode::SUCCESS);
    }
    let last = follow(app, api, created, Until::ActiveOrEnd, false).await?;
    app.out.emit(&last, |o| request_details(o, &last))?;
    if RequestState::try_from(last.state) == Ok(RequestState::Active) {
        Ok(ExitCode::SUCCESS)
    } else {
        Err(CliError::new(Exit::Failure, situation(&last)))
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Until {
    ActiveOrEnd,
    End,
}

/// Follows a request with WatchRequest until `until`; resumes after the last version seen
/// when the stream drops, and with a fresh token (refreshed as every command refreshes it)
/// when the server ends the stream because the token expired. With `print_events`, every
/// stored version is printed as a line.
async fn follow(
    app: &App,
    mut api: Api,
    start: v1::Request,
    until: Until,
    print_events: bool,
) -> CliResult<v1::Request> {
    let out = &app.out;
    let done = |r: &v1::Request| {
        is_terminal(r.state)
            || (until == Until::ActiveOrEnd
                && RequestState::try_from(r.state) == Ok(RequestState::Active))
    };
    let spinner = (out.interactive && !out.quiet && !print_events).then(|| {
        let pb = ProgressBar::new_spinner();
        pb.set_style(
            ProgressStyle::with_template("{spinner} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        pb.enable_steady_tick(Duration::from_millis(120));
        pb
    });
    // Without a terminal: one line per change of the status line, never the same twice.
    let last_line = std::cell::RefCell::new(String::new());
    let show = |r: &v1::Request| {
        let line = progress(r);
        match &spinner {
            Some(pb) => pb.set_message(line),
            None if !print_events && *last_line.borrow() != line => {
                out.note(&line);
                *last_line.borrow_mut() = line;
            }
            None => {}
        }
    };
    let mut current = start;
    let mut version = if print_events { 0 } else { current.version };
    show(&current);
    let mut failures = 0u32;
    // When a fresh token was last fetched for the watch: a token the server finds expired
    // at once (a clock far off) must not loop, so not twice within a few seconds.
    let mut renewed_at: Option<std::time::Instant> = None;
    // With events shown, a request that is final already still has its history printed
    // (the stream ends after the terminal version).
    while !done(&current) || (print_events && version < current.version) {
        let seen_before = version;
        let stream = api
            .requests
            .clone()
            .watch_request(v1::WatchRequestRequest {
                id: current.id.clone(),
                after_version: version,
            })
            .await;
        let mut stream = match stream {
            Ok(s) => {
                failures = 0;
                s.into_inner()
            }
            Err(s) if retryable(&s) && failures < 20 => {
                failures += 1;
                tokio::time::sleep(backoff(failures)).await;
                continue;
            }
            Err(s) => {
                if let Some(pb) = &spinner {
                    pb.finish_and_clear();
                }
                return Err(api.err(s));
            }
        };
        loop {
            match stream.next().await {
                Some(Ok(ev)) => {
                    version = version.max(ev.version);
                    if print_events {
                        out.note(format!(
                            "{}  v{}  {:<10} {}{}",
                            local_time(&ev.at),
                            ev.version,
                            state_name(ev.state),
                            ev.kind,
                            if ev.actor.is_empty() {
                                String::new()
                            } else {
                                format!(" by {}", ev.actor)
                            }
                        ));
                    }
                    if let Some(r) = ev.request {
                        current = r;
                        show(&current);
                        if done(&current) {
                            break;
                        }
                    }
                }
                // A node going away (shutdown) or a dropped stream: resume, with a pause
                // that grows if it keeps happening.
                Some(Err(s)) if retryable(&s) => {
                    failures += 1;
                    tokio::time::sleep(backoff(failures.min(3))).await;
                    break;
                }
                // The token expired while watching: carry on with a fresh one, silently.
                Some(Err(s))
                    if s.code() == tonic::Code::Unauthenticated
                        && renewed_at.is_none_or(|t| t.elapsed() > Duration::from_secs(5)) =>
                {
                    renewed_at = Some(std::time::Instant::now());
                    match app.api_with_fresh_token().await {
                        Ok(fresh) => api = fresh,
                        Err(e) => {
                            if let Some(pb) = &spinner {
                                pb.finish_and_clear();
                            }
                            return Err(e);
                        }
                    }
                    break;
                }
                Some(Err(s)) => {
                    if let Some(pb) = &spinner {
                        pb.finish_and_clear();
                    }
                    return Err(api.err(s));
                }
                None => break,
            }
        }
        if done(&current) && version == seen_before {
            // Final, and the stream has nothing more to show.
            break;
        }
        if !done(&current) {
            // The stream ended or dropped early: read where the request is, then resume.
            match api
                .requests
                .clone()
                .get_request(v1::GetRequestRequest {
                    id: current.id.clone(),
                })
                .await
            {
                Ok(r) => {
                    let r = r.into_inner();
                    if r.version > current.version {
                        current = r;
                        show(&current);
                    }
                }
                Err(s) if retryable(&s) && failures < 20 => {
                    failures += 1;
                    tokio::time::sleep(backoff(failures)).await;
                }
                Err(s) => return Err(api.err(s)),
            }
        }
    }
    if let Some(pb) = &spinner {
        pb.finish_and_clear();
        out.note(progress(&current));
    }
    Ok(current)
}

fn retryable(s: &tonic::Status) -> bool {
    matches!(
        s.code(),
        tonic::Code::Unavailable
            | tonic::Code::Unknown
            | tonic::Code::Internal
            | tonic::Code::Aborted
    )
}

fn backoff(failures: u32) -> Duration {
    Duration::from_millis((200u64 << failures.min(6)).min(10_000))
}

pub async fn get(api: &Api, id: &str) -> CliResult<v1::Request> {
    api.requests
        .clone()
        .get_request(v1::GetRequestRequest { id: id.to_owned() })
        .await
        .map(tonic::Response::into_inner)
        .map_err(|s| api.err(s))
}

pub async fn status(app: &App, a: StatusArgs) -> CliResult<ExitCode> {
    let api = app.api().await?;
    if let Some(id) = &a.id {
        let r = get(&api, id).await?;
        if a.watch {
            let last = follow(app, api.clone(), r, Until::End, true).await?;
            app.out.emit(&last, |o| request_details(o, &last))?;
        } else {
            app.out.emit(&r, |o| request_details(o, &r))?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    if !(1..=500).contains(&a.limit) {
        return Err(CliError::usage("--limit is between 1 and 500"));
    }
    let list = v1::ListRequestsRequest {
        mine: !a.pending && !a.all && !a.needs_review && a.requester.is_none(),
        needs_review: a.needs_review,
        awaiting_my_approval: a.pending,
        states: a
            .state
            .iter()
            .map(|s| RequestState::from(*s) as i32)
            .collect(),
        provider: a.provider.unwrap_or_default(),
        requester: a.requester.unwrap_or_default(),
        page_size: a.limit,
        page_token: a.page_token.unwrap_or_default(),
    };
    let resp = api
        .requests
        .clone()
        .list_requests(list)
        .await
        .map_err(|s| api.err(s))?
        .into_inner();
    app.out.emit(&resp, |o| {
        request_table(o, &resp.requests, &resp.next_page_token)
    })?;
    Ok(ExitCode::SUCCESS)
}

fn decided(app: &App, r: v1::Request, verb: &str) -> CliResult<ExitCode> {
    app.out.note(format!("{verb}: {}", situation(&r)));
    app.out.emit(&r, |o| request_details(o, &r))?;
    Ok(ExitCode::SUCCESS)
}

pub async fn approve(app: &App, id: &str, comment: String) -> CliResult<ExitCode> {
    let api = app.api().await?;
    let r = api
        .requests
        .clone()
        .approve_request(v1::DecideRequest {
            id: id.to_owned(),
            comment,
        })
        .await
        .map_err(|s| api.err(s))?
        .into_inner();
    decided(app, r, "Approved")
}

pub async fn deny(app: &App, id: &str, reason: String) -> CliResult<ExitCode> {
    if reason.trim().is_empty() {
        return Err(CliError::usage(
            "--reason must say why the request is denied",
        ));
    }
    let api = app.api().await?;
    let r = api
        .requests
        .clone()
        .deny_request(v1::DenyRequestRequest {
            id: id.to_owned(),
            reason,
        })
        .await
        .map_err(|s| api.err(s))?
        .into_inner();
    decided(app, r, "Denied")
}

pub async fn cancel(app: &App, id: &str) -> CliResult<ExitCode> {
    let api = app.api().await?;
    let r = api
        .requests
        .clone()
        .cancel_request(v1::CancelRequestRequest { id: id.to_owned() })
        .await
        .map_err(|s| api.err(s))?
        .into_inner();
    decided(app, r, "Cancelled")
}

pub async fn revoke(app: &App, id: &str, reason: String) -> CliResult<ExitCode> {
    let api = app.api().await?;
    let r = api
        .requests
        .clone()
        .revoke_request(v1::RevokeRequestRequest {
            id: id.to_owned(),
            reason,
        })
        .await
        .map_err(|s| api.err(s))?
        .into_inner();
    decided(app, r, "Revoked")
}

pub async fn review(app: &App, id: &str, verdict: String) -> CliResult<ExitCode> {
    if verdict.trim().is_empty() {
        return Err(CliError::usage(
            "--verdict must say what the review concluded",
        ));
    }
    let api = app.api().await?;
    let r = api
        .requests
        .clone()
        .review_request(v1::ReviewRequestRequest {
            id: id.to_owned(),
            verdict,
        })
        .await
        .map_err(|s| api.err(s))?
        .into_inner();
    app.out.note(format!(
        "Closed the review of {} ({})",
        r.request_id, r.reason
    ));
    app.out.emit(&r, |_| {
        details(&[
            ("Request", r.request_id.clone()),
            ("Needed because", r.reason.clone()),
            ("Reviewer", r.reviewer.clone()),
            ("Verdict", r.verdict.clone()),
            ("Closed", local_time(&r.closed_at)),
        ])
    })?;
    Ok(ExitCode::SUCCESS)
}

pub async fn extend(app: &App, id: &str, by: i64, reason: String) -> CliResult<ExitCode> {
    let api = app.api().await?;
    let r = api
        .requests
        .clone()
        .extend_request(v1::ExtendRequestRequest {
            id: id.to_owned(),
            by_seconds: by,
            reason,
        })
        .await
        .map_err(|s| api.err(s))?
        .into_inner();
    let ext = r.extensions.last();
    app.out.note(match ext {
        Some(e) => format!(
            "Extension {} of {} by {}: {}",
            e.number,
            r.id,
            format_duration(e.by_seconds),
            e.state
        ),
        None => format!("Asked to extend {}", r.id),
    });
    app.out.emit(&r, |o| request_details(o, &r))?;
    Ok(ExitCode::SUCCESS)
}
