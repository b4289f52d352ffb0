//! How a command fails, and the exit status and stderr line each failure gets.

use std::io;

use rush_proto::client::ClientError;

/// `rush approval request --wait`, `rush approval wait`: the request was rejected, expired
/// or was cancelled.
pub const EXIT_DECLINED: u8 = 3;
/// `rush approval request --wait`, `rush approval wait`: the wait ended with the request
/// still pending.
pub const EXIT_STILL_PENDING: u8 = 4;

/// A command's failure once the command line parsed. Exit statuses follow CLI.md: 1 for
/// a failed request, 2 for a usage error (most are found by clap and reported in `main`),
/// and the statuses of their own of the commands that wait for an answer ([`EXIT_DECLINED`],
/// [`EXIT_STILL_PENDING`]).
#[derive(Debug)]
pub enum Error {
    /// The request failed: exit 1, `rush: <error chain>`, then `rush: hint: <hint>`.
    Failed { error: anyhow::Error, hint: Option<String> },
    /// A usage error found once clap had parsed the line (flags that need each other, or a
    /// pair in the wrong order): exit 2, `rush: <message>`, before any request is sent.
    Usage(String),
    /// The command ran to its end and its outcome has an exit status of its own (a request
    /// rejected, still pending; a command that could not be run): exit `code`, `rush:
    /// <message>`.
    Status { code: u8, message: String },
    /// Whoever read our stdout stopped (`rush audit | head`): stop quietly, exit 0.
    StdoutClosed,
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn with_hint(self, hint: impl Into<String>) -> Error {
        match self {
            Error::Failed { error, .. } => Error::Failed { error, hint: Some(hint.into()) },
            other => other,
        }
    }

    /// A write to stdout failed.
    pub fn stdout(e: io::Error) -> Error {
        if e.kind() == io::ErrorKind::BrokenPipe {
            Error::StdoutClosed
        } else {
            Error::from(anyhow::Error::new(e).context("cannot write to stdout"))
        }
    }

    /// Whether the daemon could not be reached at all (as opposed to refusing a request).
    pub fn is_unreachable(&self) -> bool {
        match self {
            Error::Failed { error, .. } => matches!(
                error.downcast_ref::<ClientError>(),
                Some(
                    ClientError::NotRunning { .. }
                        | ClientError::Connect { .. }
                        | ClientError::UntrustedSocket { .. }
                )
            ),
            _ => false,
        }
    }

    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Failed { .. } => 1,
            Error::Usage(_) => 2,
            Error::Status { code, .. } => *code,
            Error::StdoutClosed => 0,
        }
    }

    /// The lines to print on stderr, without the `rush: ` prefix.
    pub fn lines(&self) -> Vec<String> {
        match self {
            Error::Failed { error, hint } => {
                let mut lines = vec![chain(error)];
                lines.extend(hint.iter().map(|h| format!("hint: {h}")));
                lines
            }
            Error::Usage(message) | Error::Status { message, .. } => vec![message.clone()],
            Error::StdoutClosed => vec![],
        }
    }
}

impl From<anyhow::Error> for Error {
    fn from(error: anyhow::Error) -> Error {
        Error::Failed { error, hint: None }
    }
}

impl From<crate::cli::UsageError> for Error {
    fn from(e: crate::cli::UsageError) -> Error {
        Error::Usage(e.0)
    }
}

impl From<ClientError> for Error {
    fn from(e: ClientError) -> Error {
        let hint = match &e {
            ClientError::Connect { source, .. } if source.kind() == io::ErrorKind::PermissionDenied => {
                Some("the daemon's socket is for root and its operator group".to_string())
            }
            _ => None,
        };
        Error::Failed { error: e.into(), hint }
    }
}

/// `outer: cause: root cause`, skipping a cause whose text its parent already shows
/// (`ClientError::Api` displays its `ApiError` source verbatim).
fn chain(error: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if out.ends_with(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rush_proto::{ApiError, ErrorKind};

    #[test]
    fn api_errors_print_their_message_once() {
        let e = Error::from(ClientError::Api(ApiError::new(ErrorKind::NotFound, "no agent named \"x\"")));
        assert_eq!(e.lines(), ["no agent named \"x\""]);
        assert_eq!(e.exit_code(), 1);
        assert!(!e.is_unreachable());
    }

    #[test]
    fn io_causes_are_shown() {
        let e = Error::from(ClientError::Connect {
            path: "/run/x.sock".into(),
            source: io::Error::from(io::ErrorKind::PermissionDenied),
        });
        let lines = e.lines();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with("cannot reach the daemon at /run/x.sock: "), "{lines:?}");
        assert!(lines[0].to_lowercase().contains("permission denied"), "{lines:?}");
        assert!(lines[1].starts_with("hint: "));
        assert!(e.is_unreachable());
    }

    #[test]
    fn not_running_is_unreachable() {
        let e = Error::from(ClientError::NotRunning { path: "/nope".into() }).with_hint("try something");
        assert!(e.is_unreachable());
        assert!(e.lines()[0].contains("rush-agentd is not running"));
        assert_eq!(e.lines()[1], "hint: try something");
    }

    #[test]
    fn usage_errors_and_answers_have_their_own_statuses() {
        let e = Error::from(crate::cli::UsageError("--kind capability needs --path".into()));
        assert_eq!((e.exit_code(), e.lines()), (2, vec!["--kind capability needs --path".to_owned()]));
        let e = Error::Status { code: EXIT_DECLINED, message: "approval 4 rejected".into() };
        assert_eq!((e.exit_code(), e.lines()), (3, vec!["approval 4 rejected".to_owned()]));
        assert!(!e.is_unreachable());
    }

    #[test]
    fn closed_stdout_is_quiet_success() {
        let e = Error::stdout(io::Error::from(io::ErrorKind::BrokenPipe));
        assert_eq!(e.exit_code(), 0);
        assert!(e.lines().is_empty());
        assert_eq!(Error::stdout(io::Error::other("disk full")).exit_code(), 1);
    }
}
