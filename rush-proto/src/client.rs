//! A small blocking client: what the `rush` CLI and the tests use to talk to the daemon.
//!
//! Blocking std I/O on purpose: a CLI call is one connect, one line out, one line back,
//! and an async runtime would cost more start-up time than the whole exchange.

use std::io::{BufRead, BufReader, IoSlice, Write};
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};

use crate::PROTOCOL_VERSION;
use crate::api::{ApiError, Reply, ReplyEnvelope, Request, RequestEnvelope, Response};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "rush-agentd is not running: nothing listens on {path} (start it with `rush-agentd`, or set --socket / RUSH_SOCKET)"
    )]
    NotRunning { path: PathBuf },
    #[error("refusing to talk to {path}: {why}; a daemon socket must be owned by root or by you")]
    UntrustedSocket { path: PathBuf, why: String },
    #[error("cannot reach the daemon at {path}")]
    Connect { path: PathBuf, source: std::io::Error },
    #[error("lost the connection to the daemon")]
    Io(#[from] std::io::Error),
    #[error("the daemon closed the connection before answering")]
    Closed,
    #[error("unreadable reply from the daemon: {0}")]
    Protocol(String),
    #[error("{0}")]
    Api(#[from] ApiError),
}

pub struct Client {
    writer: UnixStream,
    reader: BufReader<UnixStream>,
    next_id: u64,
    line: String,
}

impl Client {
    /// Connects after checking that `path` is a socket owned by root or by the caller:
    /// anyone else could have put it there to collect our terminal and requests.
    pub fn connect(path: &Path) -> Result<Client, ClientError> {
        let meta = match std::fs::metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ClientError::NotRunning { path: path.to_owned() });
            }
            Err(source) => return Err(ClientError::Connect { path: path.to_owned(), source }),
        };
        if !meta.file_type().is_socket() {
            return Err(ClientError::UntrustedSocket {
                path: path.to_owned(),
                why: "it is not a socket".into(),
            });
        }
        let me = nix::unistd::geteuid().as_raw();
        if meta.uid() != 0 && meta.uid() != me {
            return Err(ClientError::UntrustedSocket {
                path: path.to_owned(),
                why: format!("it is owned by uid {}", meta.uid()),
            });
        }
        let stream = match UnixStream::connect(path) {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                return Err(ClientError::NotRunning { path: path.to_owned() });
            }
            Err(source) => return Err(ClientError::Connect { path: path.to_owned(), source }),
        };
        let reader = BufReader::new(stream.try_clone()?);
        Ok(Client { writer: stream, reader, next_id: 1, line: String::new() })
    }

    /// Sends one request and returns its single reply; an error reply becomes `Err`.
    pub fn call(&mut self, request: Request) -> Result<Response, ClientError> {
        let id = self.send(request, &[])?;
        self.recv_for(id)
    }

    /// Sends one request line; `fds` ride along as SCM_RIGHTS. Returns the request id.
    pub fn send(&mut self, request: Request, fds: &[BorrowedFd<'_>]) -> Result<u64, ClientError> {
        let id = self.next_id;
        self.next_id += 1;
        let env = RequestEnvelope { version: PROTOCOL_VERSION, id, request };
        let mut line = serde_json::to_vec(&env).map_err(|e| ClientError::Protocol(e.to_string()))?;
        line.push(b'\n');
        if fds.is_empty() {
            self.writer.write_all(&line)?;
        } else {
            let raw: Vec<RawFd> = fds.iter().map(|fd| fd.as_raw_fd()).collect();
            let cmsg = [ControlMessage::ScmRights(&raw)];
            // The fds attach to the first chunk; the rest of the line follows plainly.
            let sent = sendmsg::<()>(
                self.writer.as_raw_fd(),
                &[IoSlice::new(&line)],
                &cmsg,
                MsgFlags::empty(),
                None,
            )
            .map_err(std::io::Error::from)?;
            self.writer.write_all(&line[sent..])?;
        }
        Ok(id)
    }

    /// The next reply line, whatever request it answers.
    pub fn recv(&mut self) -> Result<ReplyEnvelope, ClientError> {
        self.line.clear();
        if self.reader.read_line(&mut self.line)? == 0 {
            return Err(ClientError::Closed);
        }
        serde_json::from_str(&self.line).map_err(|e| ClientError::Protocol(e.to_string()))
    }

    /// The next reply to `id`, as a Result.
    pub fn recv_for(&mut self, id: u64) -> Result<Response, ClientError> {
        loop {
            let env = self.recv()?;
            if env.id != id && env.id != 0 {
                continue;
            }
            return match env.reply {
                Reply::Ok(r) => Ok(r),
                Reply::Err(e) => Err(ClientError::Api(e)),
            };
        }
    }
}
