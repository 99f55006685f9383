//! What went wrong, said in one line with what to do about it, and the exit code that
//! scripts can branch on (docs/cli.md, "Exit codes").

use std::fmt;
use std::process::ExitCode;

use tonic::{Code, Status};

/// The documented exit codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// 1: the operation failed (also: a watched request ended without becoming active).
    Failure = 1,
    /// 2: the command line or the input was wrong.
    Usage = 2,
    /// 3: not logged in, or not allowed.
    Denied = 3,
    /// 4: no such request, policy or principal.
    NotFound = 4,
    /// 5: jitsudod (or the identity provider) could not be reached, or asked to retry later.
    Unavailable = 5,
    /// 126: `exec`/`shell` found the command but could not run it (as `env` and shells).
    CannotRun = 126,
    /// 127: `exec`/`shell` could not find the command.
    CommandNotFound = 127,
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> ExitCode {
        ExitCode::from(e as u8)
    }
}

#[derive(Debug)]
pub struct CliError {
    pub exit: Exit,
    /// One line: what happened and what to do.
    pub message: String,
    /// Shown with `--debug` only.
    pub detail: Option<String>,
}

pub type CliResult<T> = Result<T, CliError>;

impl CliError {
    pub fn new(exit: Exit, message: impl Into<String>) -> Self {
        CliError {
            exit,
            message: message.into(),
            detail: None,
        }
    }

    pub fn failure(message: impl Into<String>) -> Self {
        Self::new(Exit::Failure, message)
    }

    pub fn usage(message: impl Into<String>) -> Self {
        Self::new(Exit::Usage, message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(Exit::Unavailable, message)
    }

    pub fn with_detail(mut self, detail: impl fmt::Display) -> Self {
        self.detail = Some(detail.to_string());
        self
    }

    pub fn not_logged_in(server: &str) -> Self {
        Self::new(
            Exit::Denied,
            format!("not logged in to {server} — run `jitsudo login`"),
        )
    }

    /// Maps an API error to one readable line. `what` names the call ("approving the request").
    pub fn from_status(status: &Status, server: &str) -> Self {
        let msg = status.message().trim();
        let (exit, message) = match status.code() {
            Code::Unauthenticated => (
                Exit::Denied,
                if msg.is_empty() {
                    "not logged in or the session expired — run `jitsudo login`".to_owned()
                } else {
                    format!("{msg} — run `jitsudo login`")
                },
            ),
            Code::PermissionDenied => (Exit::Denied, non_empty(msg, "permission denied")),
            Code::NotFound => (Exit::NotFound, non_empty(msg, "not found")),
            Code::InvalidArgument | Code::OutOfRange => {
                (Exit::Usage, non_empty(msg, "the server refused the input"))
            }
            Code::Unavailable => (
                Exit::Unavailable,
                format!(
                    "cannot reach jitsudod at {server} — is it running, and is --server right? ({})",
                    first_line(msg)
                ),
            ),
            Code::DeadlineExceeded => (
                Exit::Unavailable,
                format!("jitsudod at {server} did not answer in time — try again"),
            ),
            Code::ResourceExhausted => (
                Exit::Unavailable,
                non_empty(msg, "too many requests — wait a little and try again"),
            ),
            _ => (Exit::Failure, non_empty(msg, "the server refused the call")),
        };
        CliError {
            exit,
            message,
            detail: Some(format!("gRPC status {:?}: {msg}", status.code())),
        }
    }
}

fn non_empty(msg: &str, fallback: &str) -> String {
    if msg.is_empty() {
        fallback.to_owned()
    } else {
        msg.to_owned()
    }
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for CliError {}

impl From<std::io::Error> for CliError {
    fn from(e: std::io::Error) -> Self {
        CliError::failure(e.to_string())
    }
}
