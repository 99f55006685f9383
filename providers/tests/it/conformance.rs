//! The conformance suite, stamped for every provider of this crate.

use std::sync::Arc;

use jitsudo_providers::Provider;
use jitsudo_providers::demo::DemoProvider;

use crate::support;

jitsudo_providers::provider_conformance!(demo, async {
    (Arc::new(DemoProvider::new()) as Arc<dyn Provider>, ())
});

jitsudo_providers::provider_conformance!(http, async {
    let (server, provider) = support::http_pair().await;
    (Arc::new(provider) as Arc<dyn Provider>, server)
});
