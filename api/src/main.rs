//! jitsudod: the jitsudo API server.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use jitsudo_api::config::Config;
use jitsudo_api::server::{Server, dev_data_dir};
use jitsudo_api::{certs, dev};

#[derive(Parser, Debug)]
#[command(
    name = "jitsudod",
    version,
    about = "jitsudo: just-in-time privileged access — the API server"
)]
struct Cli {
    /// Configuration file (TOML; docs/configuration.md). Every key can also be set with a
    /// JITSUDOD_<SECTION>_<KEY> environment variable.
    #[arg(long, short, env = "JITSUDOD_CONFIG")]
    config: Option<PathBuf>,
    /// Single node, SQLite, demo provider, demo users, plaintext on loopback: try it out.
    #[arg(long)]
    dev: bool,
    /// Dev mode's data directory.
    #[arg(long, default_value = ".jitsudo-dev")]
    data_dir: PathBuf,
    /// Address to listen on (server.listen).
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
    /// Database URL (database.url): postgres://… or sqlite://PATH.
    #[arg(long)]
    database_url: Option<String>,
    /// Serve without TLS. Never in production; jitsudod warns at every start.
    #[arg(long)]
    insecure_plaintext: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Make a CA, a server certificate and a client certificate (PEM) for tests and small installs.
    Certs {
        #[arg(long, default_value = "certs")]
        out: PathBuf,
        /// Names and addresses the server certificate is valid for.
        #[arg(long, value_delimiter = ',', default_value = "localhost,127.0.0.1")]
        hosts: Vec<String>,
        #[arg(long, default_value = "jitsudo-client")]
        client_name: String,
    },
    /// Generate the Ed25519 key that signs audit checkpoints (PKCS#8 PEM, mode 0600).
    AuditKey {
        #[arg(long)]
        out: PathBuf,
    },
}

/// mimalloc: fewer and cheaper allocator calls than glibc's malloc for the actors' and the
/// policy engine's many small allocations (docs/benchmarks.md measures with it).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    rustls::crypto::aws_lc_rs::default_provider()
        .install_default()
        .ok();
    // Colours only for a person at a terminal: log files and collectors get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    tracing_subscriber::fmt()
        .with_ansi(ansi)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("JITSUDOD_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .init();
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Certs {
            out,
            hosts,
            client_name,
        }) => {
            let files = certs::generate(&out, &hosts, &client_name)?;
            println!("wrote {files:#?}");
            return Ok(());
        }
        Some(Command::AuditKey { out }) => {
            let key = jitsudo_actors::audit::generate_signing_key(&out)?;
            println!(
                "wrote {}; public key:\n{}",
                out.display(),
                jitsudo_actors::audit::public_key_pem(&key)
            );
            return Ok(());
        }
        None => {}
    }
    let env = std::env::vars().filter(|(k, _)| k != "JITSUDOD_CONFIG" && k != "JITSUDOD_LOG");
    let mut config = Config::load(cli.config.as_deref(), env)?;
    if let Some(l) = cli.listen {
        config.server.listen = l;
    }
    if let Some(u) = cli.database_url {
        config.database.url = u;
    }
    if cli.insecure_plaintext {
        config.server.insecure_plaintext = true;
    }
    let (config, extras) = if cli.dev {
        let (c, e) = dev::prepare(config, &dev_data_dir(Some(cli.data_dir)))?;
        (c, Some(e))
    } else {
        (config, None)
    };
    let dev_mode = extras.is_some();
    let server = Server::build(config, extras).await?;
    if dev_mode {
        if dev::install_example_policies(&server.state.engine).await? {
            tracing::info!("installed the example policies into the dev database");
        }
        println!("{}", dev::banner(server.local_addr()));
    }
    tracing::info!(addr = %server.local_addr(), "jitsudod serving");
    server.serve(shutdown_signal()).await
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
