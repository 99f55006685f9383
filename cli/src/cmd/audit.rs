//! `jitsudo audit` (query) and `jitsudo audit verify`: the chain checked here, on the
//! client, with the canonical encoding from jitsudo-proto — the server is not trusted to
//! say its own log is whole.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use ed25519_dalek::VerifyingKey;
use ed25519_dalek::pkcs8::DecodePublicKey as _;
use jitsudo_proto::audit::{
    Anchor, AnchorKind, AuditRecord, ChainLink, ChainVerifier, key_id, missing_checkpoint,
    verify_checkpoint,
};
use jitsudo_proto::v1;

use crate::app::App;
use crate::error::{CliError, CliResult, Exit};
use crate::output::{Out, details, local_time, parse_duration, table};
use crate::pins::{PinFile, SeenEntry, SignedCheckpoint};

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct AuditArgs {
    #[command(subcommand)]
    pub verify: Option<AuditCommand>,
    /// Only events of this request.
    #[arg(long)]
    pub request: Option<String>,
    /// Only events by this actor (subject).
    #[arg(long)]
    pub actor: Option<String>,
    /// Only events of this kind (e.g. request.approved).
    #[arg(long)]
    pub kind: Option<String>,
    /// Only events of requests for this provider.
    #[arg(long)]
    pub provider: Option<String>,
    /// From this time on: RFC 3339 (2026-11-29T10:00:00Z) or a duration ago (2h).
    #[arg(long, value_parser = parse_time)]
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    /// Before this time: RFC 3339 or a duration ago.
    #[arg(long, value_parser = parse_time)]
    pub until: Option<chrono::DateTime<chrono::Utc>>,
    /// How many events (1–1000).
    #[arg(long, default_value_t = 50)]
    pub limit: u32,
    /// Oldest first (default: newest first).
    #[arg(long)]
    pub oldest_first: bool,
    /// Continue from the token a previous page printed.
    #[arg(long)]
    pub page_token: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum AuditCommand {
    /// Verify the whole chain here, on this machine, and report what is wrong.
    ///
    /// An intact log is pinned: its newest signed checkpoint and last entry are kept (per
    /// server, in the state dir, or in --pin FILE), and the next verification fails if the
    /// log no longer contains them — a rewritten, recomputed or shortened log.
    Verify(VerifyArgs),
}

#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// The PEM public key that signs checkpoints (from `jitsudod audit-key`). Without
    /// it the server's key is used, which proves less: say so in reports.
    #[arg(long)]
    pub public_key: Option<PathBuf>,
    /// Fail a log that no signed checkpoint covers [default: on with --public-key].
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub require_checkpoint: Option<bool>,
    /// Keep the pin in FILE (created on first use) instead of the CLI's state dir: an
    /// auditor's own record of what the log was.
    #[arg(long, value_name = "FILE")]
    pub pin: Option<PathBuf>,
    /// A checkpoint received through a sink (the audit.checkpoint notice or the webhook
    /// body carrying it, JSON): the log must still contain it.
    #[arg(long, value_name = "FILE")]
    pub checkpoint: Option<PathBuf>,
}

fn parse_time(s: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&chrono::Utc));
    }
    match parse_duration(s) {
        Ok(secs) => Ok(chrono::Utc::now() - chrono::Duration::seconds(secs)),
        Err(_) => Err(format!(
            "{s:?} is neither an RFC 3339 time (2026-11-29T10:00:00Z) nor a duration ago (2h)"
        )),
    }
}

fn ts(t: chrono::DateTime<chrono::Utc>) -> pbjson_types::Timestamp {
    pbjson_types::Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

pub async fn audit(app: &App, a: AuditArgs) -> CliResult<ExitCode> {
    if let Some(AuditCommand::Verify(v)) = a.verify {
        return verify(app, v).await;
    }
    if !(1..=1000).contains(&a.limit) {
        return Err(CliError::usage("--limit is between 1 and 1000"));
    }
    let api = app.api().await?;
    let resp = api
        .audit
        .clone()
        .query_audit(v1::QueryAuditRequest {
            request_id: a.request.unwrap_or_default(),
            actor: a.actor.unwrap_or_default(),
            kind: a.kind.unwrap_or_default(),
            provider: a.provider.unwrap_or_default(),
            since: a.since.map(ts),
            until: a.until.map(ts),
            page_size: a.limit,
            page_token: a.page_token.unwrap_or_default(),
            oldest_first: a.oldest_first,
            ..Default::default()
        })
        .await
        .map_err(|s| api.err(s))?
        .into_inner();
    // The table and YAML show events; JSON is the whole response (with checkpoints and the
    // key) so that scripts can verify what they read.
    app.out.emit(&resp, |o| audit_table(o, &resp))?;
    Ok(ExitCode::SUCCESS)
}

pub fn audit_table(_out: &Out, resp: &v1::QueryAuditResponse) -> String {
    if resp.events.is_empty() {
        return "No audit events.".into();
    }
    let rows = resp
        .events
        .iter()
        .map(|e| {
            vec![
                local_time(&e.at),
                e.kind.clone(),
                e.actor.clone(),
                e.request_id.clone(),
                if e.request_version == 0 {
                    String::new()
                } else {
                    e.request_version.to_string()
                },
                e.chain
                    .as_ref()
                    .map(|c| c.seq.to_string())
                    .unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    let mut text = table(
        &["TIME", "KIND", "ACTOR", "REQUEST", "VERSION", "SEQ"],
        rows,
    );
    if !resp.next_page_token.is_empty() {
        text.push_str(&format!("\n\nMore: --page-token {}", resp.next_page_token));
    }
    text
}

fn record(e: &v1::AuditEvent) -> Option<AuditRecord> {
    // A chain entry whose event is gone comes back with only its id.
    if e.kind.is_empty() && e.at_micros == 0 {
        return None;
    }
    Some(AuditRecord {
        id: e.id.parse().ok()?,
        at_micros: e.at_micros,
        kind: e.kind.clone(),
        actor: e.actor.clone(),
        request_id: if e.request_id.is_empty() {
            None
        } else {
            Some(e.request_id.parse().ok()?)
        },
        request_version: (e.request_version != 0).then_some(e.request_version),
        node: e.node.clone(),
        details: e.details.clone(),
    })
}

const PAGE: u32 = 1000;

async fn verify(app: &App, args: VerifyArgs) -> CliResult<ExitCode> {
    let api = app.api().await?;
    let public_key = args.public_key;
    let require = args.require_checkpoint.unwrap_or(public_key.is_some());
    let pins = match &args.pin {
        Some(path) => PinFile::Own(path.clone()),
        None => PinFile::State(app.paths.state_dir.join("audit-pins.json")),
    };
    let pin = pins.load(&api.server)?;
    if pin.is_none() {
        app.out.note(format!(
            "note: no earlier pin for {} in {}: this verification trusts the log as it is now (trust on first use)",
            crate::pins::log_key(&api.server),
            pins.path().display()
        ));
    }
    let given = args
        .checkpoint
        .as_deref()
        .map(SignedCheckpoint::read)
        .transpose()?;
    let mut key: Option<VerifyingKey> = match &public_key {
        Some(path) => {
            let pem = std::fs::read_to_string(path).map_err(|e| {
                CliError::usage(format!("cannot read --public-key {}: {e}", path.display()))
            })?;
            Some(VerifyingKey::from_public_key_pem(&pem).map_err(|e| {
                CliError::usage(format!(
                    "--public-key {} is not an Ed25519 public key in PEM: {e}",
                    path.display()
                ))
            })?)
        }
        None => None,
    };
    let mut anchor_seqs: Vec<i64> = pin
        .iter()
        .flat_map(|p| {
            p.checkpoint
                .iter()
                .map(|c| c.seq)
                .chain(p.seen.iter().map(|s| s.seq))
        })
        .chain(given.iter().map(|g| g.seq))
        .collect();
    anchor_seqs.sort_unstable();
    let mut verifier = ChainVerifier::default();
    let mut broken: Option<jitsudo_proto::audit::BrokenLink> = None;
    let mut chain_length = 0i64;
    let mut hashes_at: BTreeMap<i64, [u8; 32]> = BTreeMap::new();
    let mut versions: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    let mut checkpoints: Vec<v1::Checkpoint> = Vec::new();
    let mut server_key_pem = String::new();
    let mut after = 0i64;
    // A long log takes a while: on a terminal, say how far it got (nothing when piped).
    let progress = (app.out.interactive && !app.out.quiet).then(|| {
        // Cleared however verification ends (an error is printed after it, on a clean line).
        let pb =
            indicatif::ProgressBar::new_spinner().with_finish(indicatif::ProgressFinish::AndClear);
        pb.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} verifying the audit chain: {human_pos} events checked ({per_sec})",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
        );
        pb.enable_steady_tick(std::time::Duration::from_millis(120));
        pb
    });
    loop {
        let page = api
            .audit
            .clone()
            .query_audit(v1::QueryAuditRequest {
                chain_mode: true,
                chain_after_seq: after,
                page_size: PAGE,
                ..Default::default()
            })
            .await
            .map_err(|s| api.err(s))?
            .into_inner();
        if after == 0 {
            checkpoints = page.checkpoints.clone();
            server_key_pem = page.public_key_pem.clone();
        }
        for e in &page.events {
            let Some(c) = &e.chain else { continue };
            chain_length = chain_length.max(c.seq);
            after = after.max(c.seq);
            if broken.is_some() {
                continue;
            }
            let rec = record(e);
            let link = ChainLink {
                seq: c.seq,
                prev_hash: c.prev_hash.clone(),
                hash: c.hash.clone(),
            };
            if let Err(b) = verifier.check(&link, rec.as_ref()) {
                broken = Some(b);
                continue;
            }
            if checkpoints.iter().any(|cp| cp.seq == c.seq)
                || anchor_seqs.binary_search(&c.seq).is_ok()
            {
                hashes_at.insert(c.seq, verifier.last_hash());
            }
            if let Some(r) = &rec
                && let (Some(id), Some(v)) = (r.request_id, r.request_version)
            {
                versions.entry(id.to_string()).or_default().push(v);
            }
        }
        if let Some(pb) = &progress {
            pb.inc(page.events.len() as u64);
        }
        if page.next_page_token.is_empty() || page.events.is_empty() {
            break;
        }
    }
    if let Some(pb) = progress {
        pb.finish_and_clear();
    }
    let mut key_note = String::new();
    if key.is_none() && !server_key_pem.is_empty() {
        match VerifyingKey::from_public_key_pem(&server_key_pem) {
            Ok(k) => {
                key = Some(k);
                key_note = "checkpoint signatures checked with the key the server sent — pass --public-key to check against your own copy".into();
            }
            Err(e) => {
                key_note = format!(
                    "the server sent a checkpoint key that is not an Ed25519 public key ({e}): no signature was checked — pass --public-key"
                )
            }
        }
    }
    // What this verifier already trusts: its pin, and a checkpoint it holds from a sink.
    let mut anchors: Vec<Anchor> = match &pin {
        Some(p) => p.anchors(
            key.as_ref(),
            &format!("the pin in {}", pins.path().display()),
        )?,
        None => Vec::new(),
    };
    if let (Some(g), Some(path)) = (&given, &args.checkpoint) {
        let what = format!("--checkpoint {}", path.display());
        let k = key.as_ref().ok_or_else(|| {
            CliError::usage(format!(
                "{what}: no key to check its signature with — pass --public-key"
            ))
        })?;
        anchors.push(g.anchor(k, AnchorKind::GivenCheckpoint, &what)?);
    }
    let mut problems = Vec::new();
    let mut newest_valid: Option<&v1::Checkpoint> = None;
    for cp in &checkpoints {
        let before = problems.len();
        match hashes_at.get(&cp.seq) {
            Some(h) if h.as_slice() != cp.hash.as_slice() => problems.push(format!(
                "checkpoint {}: its hash differs from the chain's",
                cp.seq
            )),
            None if cp.seq <= verifier.last_seq() => problems.push(format!(
                "checkpoint {}: no chain entry at its sequence number",
                cp.seq
            )),
            _ => {}
        }
        if let Some(k) = &key {
            let mut hash = [0u8; 32];
            if cp.hash.len() == 32 {
                hash.copy_from_slice(&cp.hash);
            }
            if cp.key_id != key_id(k) {
                problems.push(format!(
                    "checkpoint {}: signed by another key ({})",
                    cp.seq, cp.key_id
                ));
            } else if !verify_checkpoint(k, cp.seq, &hash, cp.at_micros, &cp.signature) {
                problems.push(format!(
                    "checkpoint {}: the signature does not verify",
                    cp.seq
                ));
            }
        }
        if key.is_some() && problems.len() == before && cp.seq <= verifier.last_seq() {
            newest_valid = Some(cp);
        }
    }
    let anchor_problems: Vec<String> = anchors
        .iter()
        .flat_map(|a| {
            let listed = checkpoints
                .iter()
                .any(|c| c.seq == a.seq && c.hash.as_slice() == a.hash.as_slice());
            [
                a.checkpoint_gone(listed),
                a.problem(chain_length, verifier.last_seq(), hashes_at.get(&a.seq)),
            ]
        })
        .flatten()
        .collect();
    let missing = if require {
        missing_checkpoint(key.is_some(), usize::from(newest_valid.is_some()))
    } else {
        None
    };
    let last_cp = checkpoints.iter().map(|c| c.seq).max().unwrap_or(0);
    // Versions of one request, as far as they are chained, must run 1, 2, 3, … without a hole.
    let mut gaps = Vec::new();
    for (id, mut vs) in versions {
        vs.sort_unstable();
        vs.dedup();
        let max = vs.last().copied().unwrap_or(0);
        let missing: Vec<i64> = (1..=max).filter(|v| vs.binary_search(v).is_err()).collect();
        if !missing.is_empty() {
            gaps.push(v1::VersionGap {
                request_id: id,
                version: max,
                missing,
            });
        }
    }
    // What is not chained yet only the server can count; it is asked the same question.
    let server = api
        .audit
        .clone()
        .verify_audit(v1::VerifyAuditRequest {
            anchors: anchors.iter().map(Anchor::to_v1).collect(),
            require_checkpoint: require,
        })
        .await
        .map_err(|s| api.err(s))?
        .into_inner();
    let report = v1::VerifyAuditResponse {
        intact: broken.is_none()
            && problems.is_empty()
            && last_cp <= chain_length
            && gaps.is_empty()
            && anchor_problems.is_empty()
            && missing.is_none(),
        chain_length,
        verified_through: verifier.last_seq(),
        first_broken_seq: broken.as_ref().map(|b| b.seq()).unwrap_or(0),
        first_broken: broken.map(|b| b.to_string()).unwrap_or_default(),
        checkpoints: checkpoints.len() as u32,
        last_checkpoint_seq: last_cp,
        checkpoint_problems: problems,
        truncated_at: if last_cp > chain_length {
            chain_length
        } else {
            0
        },
        events_after_last_checkpoint: (chain_length - last_cp).max(0),
        version_gaps: gaps,
        unchained: server.unchained,
        oldest_unchained_age_seconds: server.oldest_unchained_age_seconds,
        anchor_problems,
        missing_checkpoint: missing.unwrap_or_default(),
    };
    if !key_note.is_empty() {
        app.out.note(format!("note: {key_note}"));
    }
    if server.intact != report.intact {
        app.out.note(format!(
            "warning: the server's own check says the log is {}, this one says {}",
            if server.intact {
                "intact"
            } else {
                "NOT intact"
            },
            if report.intact {
                "intact"
            } else {
                "NOT intact"
            }
        ));
    }
    app.out.emit(&report, |_| verify_table(&report))?;
    if !report.intact {
        return Err(CliError::new(
            Exit::Failure,
            "the audit log is NOT intact — see the report above",
        ));
    }
    if chain_length > 0 {
        let signed = newest_valid.map(|cp| SignedCheckpoint {
            seq: cp.seq,
            hash: hex::encode(&cp.hash),
            at: None,
            at_micros: Some(cp.at_micros),
            key_id: cp.key_id.clone(),
            signature: hex::encode(&cp.signature),
        });
        let seen = SeenEntry {
            seq: verifier.last_seq(),
            hash: hex::encode(verifier.last_hash()),
        };
        if !server.intact {
            app.out
                .note("note: not pinned, since the server's own check disagrees");
            return Ok(ExitCode::SUCCESS);
        }
        match pins.advance(&api.server, signed, seen) {
            Ok(next) => app.out.note(format!(
                "pinned {}entry {} in {}",
                next.checkpoint
                    .as_ref()
                    .map(|c| format!("checkpoint {} and ", c.seq))
                    .unwrap_or_default(),
                next.seen.as_ref().map(|s| s.seq).unwrap_or(0),
                pins.path().display()
            )),
            // The auditor's own pin file must be kept; the CLI's state is a convenience.
            Err(e) if matches!(pins, PinFile::State(_)) => app.out.note(format!(
                "warning: the log is intact but could not be pinned ({e}); the next verification cannot compare with this one"
            )),
            Err(e) => return Err(e),
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn verify_table(r: &v1::VerifyAuditResponse) -> String {
    let mut rows: Vec<(&str, String)> = vec![
        (
            "Result",
            if r.intact {
                "INTACT".into()
            } else {
                "NOT INTACT".into()
            },
        ),
        ("Chain length", r.chain_length.to_string()),
        ("Verified through", r.verified_through.to_string()),
        ("First broken link", r.first_broken.clone()),
        ("Checkpoints", r.checkpoints.to_string()),
        ("Last checkpoint", r.last_checkpoint_seq.to_string()),
        (
            "Truncated",
            if r.truncated_at > 0 {
                format!(
                    "the chain ends at {} before its last checkpoint {}",
                    r.truncated_at, r.last_checkpoint_seq
                )
            } else {
                String::new()
            },
        ),
        (
            "After last checkpoint",
            format!("{} events", r.events_after_last_checkpoint),
        ),
        (
            "Unchained",
            format!(
                "{} events (oldest {:.1}s)",
                r.unchained, r.oldest_unchained_age_seconds
            ),
        ),
    ];
    for p in &r.checkpoint_problems {
        rows.push(("Checkpoint problem", p.clone()));
    }
    for p in &r.anchor_problems {
        rows.push(("Pin problem", p.clone()));
    }
    if !r.missing_checkpoint.is_empty() {
        rows.push(("Checkpoint required", r.missing_checkpoint.clone()));
    }
    for g in &r.version_gaps {
        rows.push((
            "Version gap",
            format!(
                "request {} (version {}): missing {:?}",
                g.request_id, g.version, g.missing
            ),
        ));
    }
    details(&rows)
}
