//! Runs one request through its whole life on the embedded default: SQLite in
//! `./.jitsudo-dev/`, the `demo` provider (grants nothing real) and the example policies.
//!
//!     cargo run -p jitsudo-actors --example dev_lifecycle
//!
//! `jitsudod --dev` (the API server) builds on exactly this engine.

use std::sync::Arc;
use std::time::Duration;

use jitsudo_actors::domain::{Principal, RequestSpec, State};
use jitsudo_actors::policy::dev_example_policies;
use jitsudo_actors::store::{self, Mode};
use jitsudo_actors::{Engine, EngineConfig};
use jitsudo_providers::demo::DemoProvider;
use jitsudo_providers::{Provider, Registry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    rustls::crypto::aws_lc_rs::default_provider()
        .install_default()
        .ok();
    tracing_subscriber::fmt().with_env_filter("info").init();

    let store = store::open(".jitsudo-dev/jitsudo.db", Mode::Dev).await?;
    let registry = Registry::new().with(Arc::new(DemoProvider::new()) as Arc<dyn Provider>);
    let engine = Engine::start(
        EngineConfig {
            node: "dev".into(),
            ..EngineConfig::default()
        },
        store.clone(),
        registry,
    )
    .await?;
    if engine.policy().current().is_empty() {
        for p in dev_example_policies() {
            engine.policy().apply(&p.name, &p.rego, &p.author).await?;
        }
        println!("installed the example policies (dev only)");
    }

    let alice = Principal::new("alice")
        .with_groups(["engineering"])
        .with_verified_email("alice@example.com");
    let spec = RequestSpec {
        provider: "demo".into(),
        role: "viewer".into(),
        scope: "demo-account".into(),
        duration_seconds: 3,
        reason: "trying jitsudo".into(),
        ticket: None,
        break_glass: false,
        metadata: Default::default(),
    };
    let req = engine.create(alice, spec).await?;
    println!("created request {} ({})", req.id, req.state);
    let mut last = req.state;
    loop {
        let now = engine.get(req.id).await?;
        if now.state != last {
            println!("  {} -> {}", last, now.state);
            last = now.state;
        }
        if now.state.is_terminal() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("audit trail:");
    for e in store.request_audit(req.id).await? {
        println!(
            "  v{} {} by {}",
            e.request_version.unwrap_or(0),
            e.kind,
            e.actor
        );
    }
    assert_eq!(last, State::Expired);
    engine.shutdown().await;
    Ok(())
}
