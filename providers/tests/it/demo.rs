//! The demo provider beyond the conformance suite: it says, everywhere, that it is fake.

use std::time::Duration;

use jitsudo_providers::conformance::SpecTemplate;
use jitsudo_providers::demo::{DEMO_CREDENTIAL, DEMO_NOTICE, DemoProvider};
use jitsudo_providers::{ErrorClass, GrantSpec, Provider, ProviderError};

fn spec() -> GrantSpec {
    SpecTemplate::default().spec(Duration::from_secs(3600))
}

#[tokio::test]
async fn demo_credentials_say_they_are_not_real() {
    let provider = DemoProvider::new();
    let record = provider.grant(&spec()).await.expect("grant");
    let credentials = provider.credentials(&record).await.expect("credentials");

    assert_eq!(credentials.notice.as_deref(), Some(DEMO_NOTICE));
    assert_eq!(
        credentials.env.get("JITSUDO_DEMO").map(String::as_str),
        Some("1")
    );
    assert_eq!(
        credentials
            .env
            .get("JITSUDO_DEMO_TOKEN")
            .map(String::as_str),
        Some(DEMO_CREDENTIAL)
    );
    assert!(DEMO_NOTICE.contains("not real"));
}

#[tokio::test]
async fn demo_active_grants_lists_only_live_grants() {
    let provider = DemoProvider::with_name("dev");
    let kept = provider.grant(&spec()).await.expect("grant");
    let revoked = provider.grant(&spec()).await.expect("grant");
    provider.revoke(&revoked).await.expect("revoke");

    assert_eq!(provider.name(), "dev");
    assert_eq!(provider.active_grants(), vec![kept]);
}

#[tokio::test]
async fn demo_refuses_a_grant_id_reused_for_a_different_grant() {
    let provider = DemoProvider::new();
    let spec = spec();
    provider.grant(&spec).await.expect("grant");
    let err = provider
        .grant(&GrantSpec {
            scope: "projects/other".to_owned(),
            ..spec
        })
        .await
        .expect_err("same id, other scope");
    assert!(
        matches!(
            err,
            ProviderError::Invalid {
                field: "grant_id",
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(err.class(), ErrorClass::Permanent);
}
