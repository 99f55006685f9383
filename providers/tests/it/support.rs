//! Shared set-up: the rustls crypto provider, and an http provider wired to its own server.

use std::sync::Once;
use std::time::Duration;

use jitsudo_providers::http::server::TestServer;
use jitsudo_providers::http::{HttpProvider, HttpProviderConfig};

/// The HMAC key of the tests; asserted never to show up in `Debug` or error text.
pub const SECRET: &str = "s3cret-hmac-key-never-shown";

/// Installs the rustls crypto provider once per test binary.
pub fn init() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        rustls::crypto::aws_lc_rs::default_provider()
            .install_default()
            .ok();
    });
}

pub fn config(base_url: &str) -> HttpProviderConfig {
    HttpProviderConfig::new("fake-cloud", base_url, SECRET).with_timeout(Duration::from_secs(10))
}

pub fn provider(config: HttpProviderConfig) -> HttpProvider {
    init();
    HttpProvider::new(config).expect("valid http provider config")
}

/// A fresh reference server and an http provider pointed at it.
pub async fn http_pair() -> (TestServer, HttpProvider) {
    init();
    let server = TestServer::start(SECRET).await;
    let provider = provider(config(&server.base_url()));
    (server, provider)
}
