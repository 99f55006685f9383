//! A compiled, immutable set of Rego modules and its evaluation into a [`Decision`].

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use regorus::utils::limits::ExecutionTimerConfig;
use regorus::{Engine, Value};
use sha2::{Digest, Sha256};

use super::decision::{
    DEFAULT_APPROVAL_TIMEOUT_SECONDS, DEFAULT_APPROVALS_REQUIRED, DEFAULT_MAX_DURATION_SECONDS,
    Decision, NO_POLICY_REASON, PolicyStamp, full_match,
};
use super::input::PolicyInput;

/// One stored policy module, as an admin applied it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicySource {
    /// Unique within a set; shown in compile errors as the file name.
    pub name: String,
    pub version: i64,
    pub author: String,
    pub rego: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("policy `{policy}` does not compile: {message}")]
    Compile { policy: String, message: String },
    #[error("evaluating `{rule}` failed: {message}")]
    Eval { rule: String, message: String },
    #[error("`{rule}` must be {expected}, but the policy produced {got}")]
    BadValue {
        rule: String,
        expected: String,
        got: String,
    },
}

/// A runaway rule (a huge comprehension) must not hold a request actor for long; real
/// policies take microseconds.
const EVAL_TIME_LIMIT: Duration = Duration::from_secs(1);

/// Ticket patterns a set remembers (a policy computing them from the input could make
/// many: the memory is cleared when full).
const KNOWN_PATTERNS: usize = 64;

const ELIGIBILITY: &str = "jitsudo.eligibility";
const APPROVAL: &str = "jitsudo.approval";
/// Packages under `jitsudo.` that the engine reads, plus the conventional home of helpers.
const KNOWN_PACKAGES: [&str; 3] = ["eligibility", "approval", "lib"];

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Rule {
    Allow,
    Deny,
    AutoApprove,
    ApprovalsRequired,
    ApproverGroups,
    ApproverAllowed,
    MaxDuration,
    MaxTotalDuration,
    ApprovalTimeout,
    ExtendRequiresApproval,
    BreakGlassAllowed,
    ReasonRequired,
    TicketPattern,
}

impl Rule {
    const ALL: [Rule; 13] = [
        Rule::Allow,
        Rule::Deny,
        Rule::AutoApprove,
        Rule::ApprovalsRequired,
        Rule::ApproverGroups,
        Rule::ApproverAllowed,
        Rule::MaxDuration,
        Rule::MaxTotalDuration,
        Rule::ApprovalTimeout,
        Rule::ExtendRequiresApproval,
        Rule::BreakGlassAllowed,
        Rule::ReasonRequired,
        Rule::TicketPattern,
    ];

    fn package(self) -> &'static str {
        match self {
            Rule::Allow | Rule::Deny => ELIGIBILITY,
            _ => APPROVAL,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Rule::Allow => "allow",
            Rule::Deny => "deny",
            Rule::AutoApprove => "auto_approve",
            Rule::ApprovalsRequired => "approvals_required",
            Rule::ApproverGroups => "approver_groups",
            Rule::ApproverAllowed => "approver_allowed",
            Rule::MaxDuration => "max_duration_seconds",
            Rule::MaxTotalDuration => "max_total_duration_seconds",
            Rule::ApprovalTimeout => "approval_timeout_seconds",
            Rule::ExtendRequiresApproval => "extend_requires_approval",
            Rule::BreakGlassAllowed => "break_glass_allowed",
            Rule::ReasonRequired => "reason_required",
            Rule::TicketPattern => "ticket_pattern",
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.package(), self.name())
    }
}

/// A compiled policy set. Cloning is cheap (one `Arc`); evaluations share nothing mutable,
/// so any number can run at once.
#[derive(Clone)]
pub struct PolicySet {
    inner: Arc<Inner>,
}

struct Inner {
    /// Parsed, analysed and prepared once; each evaluation works on a clone, which shares
    /// the compiled modules and copies only per-evaluation state.
    engine: Option<Engine>,
    /// Rules some module declares; the others take their documented default.
    declared: BTreeSet<Rule>,
    stamps: Vec<PolicyStamp>,
    fingerprint: String,
    /// Ticket patterns the set produced, and whether each compiles.
    patterns: Mutex<HashMap<String, Result<(), String>>>,
}

impl fmt::Debug for PolicySet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PolicySet")
            .field("fingerprint", &self.inner.fingerprint)
            .field("policies", &self.inner.stamps)
            .finish_non_exhaustive()
    }
}

impl PolicySet {
    /// No policy: every request is denied with [`NO_POLICY_REASON`].
    pub fn empty() -> Self {
        PolicySet {
            inner: Arc::new(Inner {
                engine: None,
                declared: BTreeSet::new(),
                stamps: Vec::new(),
                fingerprint: fingerprint(&[]),
                patterns: Mutex::default(),
            }),
        }
    }

    /// Parses and analyses every module together. On error nothing is built, so the caller
    /// keeps serving its previous set.
    pub fn compile(mut sources: Vec<PolicySource>) -> Result<Self, PolicyError> {
        if sources.is_empty() {
            return Ok(Self::empty());
        }
        sources.sort_by(|a, b| a.name.cmp(&b.name));
        for pair in sources.windows(2) {
            if let [a, b] = pair
                && a.name == b.name
            {
                return Err(PolicyError::Compile {
                    policy: a.name.clone(),
                    message: "two policies have this name; names must be unique".into(),
                });
            }
        }
        if let Some(s) = sources.iter().find(|s| s.name.trim().is_empty()) {
            return Err(PolicyError::Compile {
                policy: s.name.clone(),
                message: "a policy needs a name".into(),
            });
        }

        let mut engine = Engine::new();
        engine.set_gather_prints(true);
        engine.set_execution_timer_config(ExecutionTimerConfig {
            limit: EVAL_TIME_LIMIT,
            // Reading the clock after every unit of work costs 5–10 % of an evaluation;
            // every 256 units keeps the limit within microseconds.
            check_interval: NonZeroU32::new(256).unwrap_or(NonZeroU32::MIN),
        });
        for source in &sources {
            engine
                .add_policy(source.name.clone(), source.rego.clone())
                .map_err(|e| PolicyError::Compile {
                    policy: source.name.clone(),
                    message: tidy(&e.to_string()),
                })?;
        }

        let packages = engine
            .get_policy_package_components()
            .map_err(|e| set_error(&sources, &e))?;
        for (source, package) in sources.iter().zip(&packages) {
            if let [root, name] = package.components.as_slice()
                && root == "jitsudo"
                && !KNOWN_PACKAGES.contains(&name.as_str())
            {
                return Err(PolicyError::Compile {
                    policy: source.name.clone(),
                    message: format!(
                        "unknown package `jitsudo.{name}`: jitsudo reads `{ELIGIBILITY}` and `{APPROVAL}` (put helpers under `jitsudo.lib`)"
                    ),
                });
            }
        }

        // Analysis (unsafe variables, unknown functions, recursion) happens when the engine is
        // first prepared; do it now, so a broken set is refused at apply time, not at the
        // first request.
        engine
            .eval_query("true".into(), false)
            .map_err(|e| set_error(&sources, &e))?;
        let _ = engine.take_prints();

        let mut declared = BTreeSet::new();
        for rule in Rule::ALL {
            let target: Vec<&str> = rule.package().split('.').chain([rule.name()]).collect();
            for (source, package) in sources.iter().zip(&packages) {
                let package: Vec<&str> = package.components.iter().map(String::as_str).collect();
                let Some(rest) = target.strip_prefix(package.as_slice()) else {
                    continue;
                };
                if rest.is_empty() {
                    continue;
                }
                let found = engine
                    .has_declared_rule_rooted_at(&source.name, &rest.join("."))
                    .map_err(|e| set_error(&sources, &e))?;
                if found {
                    declared.insert(rule);
                }
            }
        }

        let stamps: Vec<PolicyStamp> = sources
            .iter()
            .map(|s| PolicyStamp {
                author_email: None,
                self_authored: false,
                name: s.name.clone(),
                version: s.version,
                author: s.author.clone(),
            })
            .collect();
        Ok(PolicySet {
            inner: Arc::new(Inner {
                engine: Some(engine),
                declared,
                stamps,
                fingerprint: fingerprint(&sources),
                patterns: Mutex::default(),
            }),
        })
    }

    /// Name and version of each module, sorted by name.
    pub fn versions(&self) -> Vec<(String, i64)> {
        self.inner
            .stamps
            .iter()
            .map(|s| (s.name.clone(), s.version))
            .collect()
    }

    pub fn policies(&self) -> &[PolicyStamp] {
        &self.inner.stamps
    }

    /// Identifies the set's exact content (names, versions, authors and Rego text):
    /// `sha256:` and 16 hex digits, or `empty`. Recorded with every decision.
    pub fn fingerprint(&self) -> &str {
        &self.inner.fingerprint
    }

    pub fn is_empty(&self) -> bool {
        self.inner.engine.is_none()
    }

    /// Decides on a request. `input.approver` is ignored by the rules this reads.
    pub fn evaluate(&self, input: &PolicyInput) -> Result<Decision, PolicyError> {
        let Some(engine) = &self.inner.engine else {
            return Ok(self.decision_without_policy());
        };
        let mut ev = Evaluation::new(engine, &self.inner.declared, input)?;

        let allow = ev.bool(Rule::Allow)?;
        let deny = ev.strings(Rule::Deny)?.unwrap_or_default();
        let mut deny_reasons = deny;
        if allow != Some(true) && deny_reasons.is_empty() {
            deny_reasons.push(if self.inner.declared.contains(&Rule::Allow) {
                format!(
                    "no eligibility rule allows this request (`{}` is not true)",
                    Rule::Allow
                )
            } else {
                format!(
                    "no installed policy defines `{}`; an admin must apply an eligibility policy",
                    Rule::Allow
                )
            });
        }
        let eligible = allow == Some(true) && deny_reasons.is_empty();

        let approvals_required = match ev.int(Rule::ApprovalsRequired)? {
            None => DEFAULT_APPROVALS_REQUIRED,
            Some(n) => u32::try_from(n)
                .ok()
                .filter(|n| *n >= 1)
                .ok_or_else(|| bad(Rule::ApprovalsRequired, "an integer >= 1", &Value::from(n)))?,
        };
        let max_duration_seconds = ev
            .positive(Rule::MaxDuration)?
            .unwrap_or(DEFAULT_MAX_DURATION_SECONDS);
        let max_total_duration_seconds = match ev.positive(Rule::MaxTotalDuration)? {
            None => max_duration_seconds,
            Some(n) if n >= max_duration_seconds => n,
            Some(n) => {
                return Err(bad(
                    Rule::MaxTotalDuration,
                    &format!("at least max_duration_seconds ({max_duration_seconds})"),
                    &Value::from(n),
                ));
            }
        };
        let ticket_pattern = ev.string(Rule::TicketPattern)?;
        if let Some(pattern) = &ticket_pattern
            && let Err(e) = self.check_pattern(pattern)
        {
            return Err(bad(
                Rule::TicketPattern,
                &format!("a valid regular expression ({e})"),
                &Value::from(pattern.as_str()),
            ));
        }

        let mut approver_groups = ev.strings(Rule::ApproverGroups)?.unwrap_or_default();
        approver_groups.sort();
        approver_groups.dedup();

        let decision = Decision {
            eligible,
            deny_reasons,
            auto_approve: ev.bool(Rule::AutoApprove)?.unwrap_or(false),
            approvals_required,
            approver_groups,
            max_duration_seconds,
            max_total_duration_seconds,
            approval_timeout_seconds: ev
                .positive(Rule::ApprovalTimeout)?
                .unwrap_or(DEFAULT_APPROVAL_TIMEOUT_SECONDS),
            extend_requires_approval: ev.bool(Rule::ExtendRequiresApproval)?.unwrap_or(true),
            break_glass_allowed: ev.bool(Rule::BreakGlassAllowed)?.unwrap_or(false),
            reason_required: ev.bool(Rule::ReasonRequired)?.unwrap_or(false),
            ticket_pattern,
            policy_version: self.inner.fingerprint.clone(),
            policies: self.inner.stamps.clone(),
        };
        ev.flush_prints();
        Ok(decision)
    }

    /// May `input.approver` approve this request? Without an approver the answer is no.
    /// When no module declares `approver_allowed`, membership of one of `approver_groups`
    /// decides. Whether the approver is the requester, or has approved already, is the
    /// engine's check, not the policy's: a policy cannot relax it.
    pub fn approver_allowed(&self, input: &PolicyInput) -> Result<bool, PolicyError> {
        let (Some(engine), Some(approver)) = (&self.inner.engine, &input.approver) else {
            return Ok(false);
        };
        let mut ev = Evaluation::new(engine, &self.inner.declared, input)?;
        let allowed = if self.inner.declared.contains(&Rule::ApproverAllowed) {
            ev.bool(Rule::ApproverAllowed)?.unwrap_or(false)
        } else {
            let groups = ev.strings(Rule::ApproverGroups)?.unwrap_or_default();
            approver.groups.iter().any(|g| groups.contains(g))
        };
        ev.flush_prints();
        Ok(allowed)
    }

    /// Whether a ticket pattern compiles, remembered per set: a policy's patterns are few,
    /// and compiling one costs more than the rest of a decision.
    fn check_pattern(&self, pattern: &str) -> Result<(), String> {
        let mut known = self
            .inner
            .patterns
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(verdict) = known.get(pattern) {
            return verdict.clone();
        }
        let verdict = full_match(pattern).map(|_| ()).map_err(|e| e.to_string());
        if known.len() >= KNOWN_PATTERNS {
            known.clear();
        }
        known.insert(pattern.to_owned(), verdict.clone());
        verdict
    }

    fn decision_without_policy(&self) -> Decision {
        Decision {
            eligible: false,
            deny_reasons: vec![NO_POLICY_REASON.to_string()],
            auto_approve: false,
            approvals_required: DEFAULT_APPROVALS_REQUIRED,
            approver_groups: Vec::new(),
            max_duration_seconds: DEFAULT_MAX_DURATION_SECONDS,
            max_total_duration_seconds: DEFAULT_MAX_DURATION_SECONDS,
            approval_timeout_seconds: DEFAULT_APPROVAL_TIMEOUT_SECONDS,
            extend_requires_approval: true,
            break_glass_allowed: false,
            reason_required: false,
            ticket_pattern: None,
            policy_version: self.inner.fingerprint.clone(),
            policies: Vec::new(),
        }
    }
}

/// One evaluation: a private clone of the prepared engine with the input set.
struct Evaluation<'a> {
    engine: Engine,
    declared: &'a BTreeSet<Rule>,
}

impl<'a> Evaluation<'a> {
    fn new(
        prepared: &Engine,
        declared: &'a BTreeSet<Rule>,
        input: &PolicyInput,
    ) -> Result<Self, PolicyError> {
        let json = serde_json::to_value(input).map_err(|e| PolicyError::Eval {
            rule: "input".into(),
            message: e.to_string(),
        })?;
        let mut engine = prepared.clone();
        engine.set_input(Value::from(json));
        Ok(Evaluation { engine, declared })
    }

    /// `None` when no module declares the rule or no rule body matched.
    fn value(&mut self, rule: Rule) -> Result<Option<Value>, PolicyError> {
        if !self.declared.contains(&rule) {
            return Ok(None);
        }
        match self.engine.eval_rule(format!("data.{rule}")) {
            Ok(Value::Undefined) => Ok(None),
            Ok(v) => Ok(Some(v)),
            Err(e) => Err(PolicyError::Eval {
                rule: rule.to_string(),
                message: tidy(&e.to_string()),
            }),
        }
    }

    fn bool(&mut self, rule: Rule) -> Result<Option<bool>, PolicyError> {
        match self.value(rule)? {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(b)),
            Some(v) => Err(bad(rule, "a boolean", &v)),
        }
    }

    fn int(&mut self, rule: Rule) -> Result<Option<i64>, PolicyError> {
        match self.value(rule)? {
            None => Ok(None),
            Some(v) => v
                .as_i64()
                .map(Some)
                .map_err(|_| bad(rule, "an integer", &v)),
        }
    }

    fn positive(&mut self, rule: Rule) -> Result<Option<i64>, PolicyError> {
        match self.int(rule)? {
            Some(n) if n <= 0 => Err(bad(rule, "a positive number of seconds", &Value::from(n))),
            other => Ok(other),
        }
    }

    fn string(&mut self, rule: Rule) -> Result<Option<String>, PolicyError> {
        match self.value(rule)? {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.to_string())),
            Some(v) => Err(bad(rule, "a string", &v)),
        }
    }

    /// Accepts a set or an array of strings.
    fn strings(&mut self, rule: Rule) -> Result<Option<Vec<String>>, PolicyError> {
        let Some(v) = self.value(rule)? else {
            return Ok(None);
        };
        let items: Vec<&Value> = match &v {
            Value::Set(s) => s.iter().collect(),
            Value::Array(a) => a.iter().collect(),
            _ => return Err(bad(rule, "a set or array of strings", &v)),
        };
        items
            .into_iter()
            .map(|item| match item {
                Value::String(s) => Ok(s.to_string()),
                _ => Err(bad(rule, "a set or array of strings", &v)),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    /// `print` output goes to the log (target `jitsudo::policy`), for policy authors.
    fn flush_prints(&mut self) {
        if let Ok(prints) = self.engine.take_prints() {
            for line in prints {
                tracing::debug!(target: "jitsudo::policy", "{line}");
            }
        }
    }
}

fn bad(rule: Rule, expected: &str, got: &Value) -> PolicyError {
    PolicyError::BadValue {
        rule: rule.to_string(),
        expected: expected.to_string(),
        got: describe(got),
    }
}

/// `a string "yes"`, `a set ["a", 1]`: type first, then the value, cut to a readable length.
fn describe(v: &Value) -> String {
    let kind = match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Set(_) => "a set",
        Value::Object(_) => "an object",
        Value::Undefined => return "undefined".into(),
    };
    if matches!(v, Value::Null) {
        return kind.into();
    }
    let mut text = v.to_json_str().unwrap_or_else(|_| "?".into());
    if text.chars().count() > 80 {
        text = text.chars().take(77).collect::<String>() + "...";
    }
    format!("{kind} {text}")
}

/// An error the engine cannot pin on one module is named after the module its message
/// points at (regorus prefixes locations with `--> <name>:<line>:<col>`).
fn set_error(sources: &[PolicySource], e: &impl fmt::Display) -> PolicyError {
    let message = tidy(&e.to_string());
    let policy = sources
        .iter()
        .find(|s| message.contains(&format!("--> {}:", s.name)))
        .map_or_else(|| "(policy set)".to_string(), |s| s.name.clone());
    PolicyError::Compile { policy, message }
}

fn tidy(message: &str) -> String {
    message.trim().to_string()
}

fn fingerprint(sources: &[PolicySource]) -> String {
    if sources.is_empty() {
        return "empty".into();
    }
    let mut hasher = Sha256::new();
    // Length prefixes keep distinct sets from hashing the same bytes.
    for s in sources {
        for field in [s.name.as_bytes(), s.author.as_bytes(), s.rego.as_bytes()] {
            hasher.update((field.len() as u64).to_be_bytes());
            hasher.update(field);
        }
        hasher.update(s.version.to_be_bytes());
    }
    let digest = hasher.finalize();
    format!("sha256:{}", hex::encode(&digest[..8]))
}
