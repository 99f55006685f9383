//! jitsudo-test-issuer: dev mode's demo OpenID issuer on its own, for load and chaos tests
//! against a production-mode jitsudod (its users are the demo users: alice, bob, carol,
//! dave, erin). A test tool: it mints tokens without a password, so it lives here, in the
//! unpublished test crate, and never in `jitsudod`.

use std::path::PathBuf;
use std::sync::Arc;

use clap::Parser;
use jitsudo_api::auth::DevIssuer;

#[derive(Parser, Debug)]
#[command(
    name = "jitsudo-test-issuer",
    version,
    about = "jitsudo's demo OpenID issuer, for tests only: it mints tokens for the demo users without a password"
)]
struct Cli {
    /// Loopback only.
    #[arg(long, default_value = "127.0.0.1:8444")]
    listen: std::net::SocketAddr,
    /// Where the signing key is kept between runs.
    #[arg(long, default_value = ".jitsudo-test-issuer")]
    dir: PathBuf,
    #[arg(long, default_value = "jitsudo")]
    audience: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    rustls::crypto::aws_lc_rs::default_provider()
        .install_default()
        .ok();
    let cli = Cli::parse();
    anyhow::ensure!(
        cli.listen.ip().is_loopback(),
        "the test issuer listens on a loopback address only"
    );
    let url = format!("http://{}{}", cli.listen, DevIssuer::MOUNT_PATH);
    let issuer = Arc::new(DevIssuer::load_or_create(&cli.dir, &url, &cli.audience)?);
    let app = axum::Router::new().nest(DevIssuer::MOUNT_PATH, issuer.router());
    let listener = tokio::net::TcpListener::bind(cli.listen).await?;
    println!("test issuer at {url} (audience {})", cli.audience);
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
