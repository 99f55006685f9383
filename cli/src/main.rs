//! jitsudo: ask for temporary elevated access, approve it, use it, audit it.
//! Talks to jitsudod through the public jitsudo.v1 API only.

mod app;
mod client;
mod cmd;
mod config;
mod error;
mod login;
mod output;
mod pins;
mod rego_tests;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, CommandFactory as _, Parser, Subcommand};

use crate::error::Exit;
use crate::output::Format;

#[derive(Parser, Debug)]
#[command(
    name = "jitsudo",
    version,
    about = "Just-in-time privileged access: ask for temporary elevated access, approve it, use it, audit it",
    after_help = "Start with `jitsudo login`, then `jitsudo request --help`. docs/cli.md has every command with an example."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Debug, Clone)]
pub struct Global {
    /// The jitsudod URL, e.g. https://jitsudo.example.com:8443 (default: config.toml `server`).
    #[arg(long, global = true, env = "JITSUDO_SERVER")]
    pub server: Option<String>,
    /// A bearer token to use instead of the stored login (for automation).
    #[arg(long, global = true, env = "JITSUDO_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// PEM CA certificate that signed the server's certificate (besides the system roots).
    #[arg(long, global = true, env = "JITSUDO_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
    /// PEM client certificate, for servers that want mutual TLS.
    #[arg(long, global = true, env = "JITSUDO_CLIENT_CERT")]
    pub client_cert: Option<PathBuf>,
    /// PEM private key of --client-cert.
    #[arg(long, global = true, env = "JITSUDO_CLIENT_KEY")]
    pub client_key: Option<PathBuf>,
    /// Output format. JSON is the stable one for scripts (proto3 JSON, as the REST API).
    #[arg(short, long, global = true, env = "JITSUDO_OUTPUT", value_enum)]
    pub output: Option<Format>,
    /// Print only what was asked for: no progress or confirmations on stderr.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// No colors (also: the NO_COLOR environment variable).
    #[arg(long, global = true)]
    pub no_color: bool,
    /// Show the details behind an error (status codes, causes).
    #[arg(long, global = true)]
    pub debug: bool,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Log in: OpenID device flow (prints a URL and a code), or `--dev USER` on a dev server.
    Login(cmd::session::LoginArgs),
    /// Forget the stored token for the server.
    Logout,
    /// Who the server thinks you are.
    Whoami,
    /// Ask for temporary access.
    Request(cmd::requests::RequestArgs),
    /// One request in detail, or a list of requests.
    Status(cmd::requests::StatusArgs),
    /// Approve a pending request.
    Approve {
        id: String,
        #[arg(long)]
        comment: Option<String>,
    },
    /// Deny a pending request.
    Deny {
        id: String,
        #[arg(long)]
        reason: String,
    },
    /// Withdraw your own request before it is active.
    Cancel { id: String },
    /// End active access now.
    Revoke {
        id: String,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Ask for more time on active access.
    Extend {
        id: String,
        /// How much longer: 30m, 1h, 1h30m.
        #[arg(long, value_parser = output::parse_duration)]
        by: i64,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Close the review of a break-glass or self-approved request (admins and auditors).
    Review {
        id: String,
        /// What the review concluded.
        #[arg(long)]
        verdict: String,
    },
    /// Run a command with the request's credentials in its environment.
    Exec {
        id: String,
        /// The command and its arguments (after `--`).
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
    /// An interactive shell with the request's credentials.
    Shell { id: String },
    /// Print an AWS `credential_process` answer for an ACTIVE AWS request (for a profile
    /// in ~/.aws/config: `credential_process = jitsudo credential-process --request ID`).
    CredentialProcess(cmd::exec::CredentialProcessArgs),
    /// Read and verify the audit log.
    Audit(cmd::audit::AuditArgs),
    /// Manage the Rego policies.
    #[command(subcommand)]
    Policy(cmd::policy::PolicyCommand),
    /// The server: status, version, live actors, policy reload.
    #[command(subcommand)]
    Server(cmd::server::ServerCommand),
    /// The servers this CLI knows, the current one, and switching between them.
    #[command(subcommand)]
    Context(cmd::context::ContextCommand),
    /// Print a shell completion script.
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

fn main() -> ExitCode {
    rustls::crypto::aws_lc_rs::default_provider()
        .install_default()
        .ok();
    let cli = Cli::parse();
    if let Command::Completion { shell } = &cli.command {
        clap_complete::generate(
            *shell,
            &mut Cli::command(),
            "jitsudo",
            &mut std::io::stdout(),
        );
        return ExitCode::SUCCESS;
    }
    let debug = cli.global.debug;
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start: {e}");
            return Exit::Failure.into();
        }
    };
    match runtime.block_on(app::run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", e.message);
            if debug && let Some(d) = &e.detail {
                eprintln!("  detail: {d}");
            }
            e.exit.into()
        }
    }
}
