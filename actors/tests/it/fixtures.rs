//! Shared fixtures: stores on both backends, decisions and requests.

use std::any::Any;

use std::time::Duration;

use chrono::Utc;
use jitsudo_actors::domain::{
    self, NewRequest, Principal, RequestId, RequestSpec, Rules, Transition,
};
use jitsudo_actors::policy::Decision;
use jitsudo_actors::store::{self, Fence, Mode, OutboxRow, Persist, SharedStore};
use uuid::Uuid;

pub const SHARDS: u32 = 4;

pub struct Db {
    pub store: SharedStore,
    pub url: String,
    pub node: String,
    pub incarnation: Uuid,
    fences: tokio::sync::OnceCell<Vec<Fence>>,
    pub _keep: Box<dyn Any + Send>,
}

impl Db {
    /// Takes every shard for this node, as a single node does at start.
    pub async fn fences(&self) -> Vec<Fence> {
        self.fences
            .get_or_init(|| async {
                self.store.init_shards(SHARDS).await.expect("init shards");
                let all: Vec<u32> = (0..SHARDS).collect();
                let leases = self
                    .store
                    .acquire_shards(&self.node, self.incarnation, &all, Duration::from_secs(30))
                    .await
                    .expect("acquire");
                leases.into_iter().map(|l| l.fence).collect()
            })
            .await
            .clone()
    }

    pub async fn fence_for(&self, id: RequestId) -> Fence {
        let shard = id.shard(SHARDS);
        self.fences()
            .await
            .into_iter()
            .find(|f| f.shard == shard)
            .expect("fence for shard")
    }
}

pub fn init() {
    jitsudo_testkit::init_crypto();
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter("warn")
        .try_init();
}

pub async fn postgres() -> Db {
    init();
    let tdb = jitsudo_testkit::postgres().await;
    let store = store::open(&tdb.url, Mode::Dev)
        .await
        .expect("open postgres store");
    Db {
        store,
        url: tdb.url.clone(),
        node: "node-a".into(),
        incarnation: Uuid::now_v7(),
        fences: Default::default(),
        _keep: Box::new(tdb),
    }
}

pub async fn sqlite() -> Db {
    init();
    let dir = tempfile::tempdir().expect("tempdir");
    let url = dir.path().join("jitsudo.db").display().to_string();
    let store = store::open(&url, Mode::Dev)
        .await
        .expect("open sqlite store");
    Db {
        store,
        url,
        node: "node-a".into(),
        incarnation: Uuid::now_v7(),
        fences: Default::default(),
        _keep: Box::new(dir),
    }
}

pub fn decision(auto_approve: bool, approvals_required: u32) -> Decision {
    Decision {
        eligible: true,
        deny_reasons: vec![],
        auto_approve,
        approvals_required,
        approver_groups: vec!["approvers".into()],
        max_duration_seconds: 4 * 3600,
        max_total_duration_seconds: 8 * 3600,
        approval_timeout_seconds: 1800,
        extend_requires_approval: true,
        break_glass_allowed: true,
        reason_required: false,
        ticket_pattern: None,
        policy_version: "test".into(),
        policies: vec![],
    }
}

pub fn alice() -> Principal {
    Principal::new("alice")
        .with_groups(["engineering"])
        .with_verified_email("alice@example.com")
}

pub fn spec(provider: &str, duration_seconds: i64) -> RequestSpec {
    RequestSpec {
        provider: provider.into(),
        role: "viewer".into(),
        scope: "demo-account".into(),
        duration_seconds,
        reason: "investigating an incident".into(),
        ticket: None,
        break_glass: false,
        metadata: Default::default(),
    }
}

pub fn new_request(d: Decision) -> Transition {
    let new = NewRequest {
        id: RequestId::new(),
        requester: alice(),
        spec: spec("demo", 3600),
    };
    domain::create(new, d, Utc::now(), &Rules::default(), &Default::default())
        .expect("valid request")
}

pub fn outbox(tr: &Transition) -> Vec<OutboxRow> {
    tr.notices
        .iter()
        .map(|n| OutboxRow {
            sink: "log".into(),
            kind: n.kind.as_str().into(),
            payload: n.details.to_string(),
        })
        .collect()
}

pub fn persist<'a>(
    tr: &'a Transition,
    outbox: &'a [OutboxRow],
    expected_version: i64,
) -> Persist<'a> {
    Persist {
        request: &tr.next,
        expected_version,
        times: &tr.times,
        audit: &tr.audit,
        outbox,
        guard: tr.guard,
        node: "node-a",
        idempotency: tr.idempotency.as_ref(),
    }
}
