//! The control socket: accepts connections, identifies each caller with SO_PEERCRED, answers
//! one JSON request per line, and closes a connection's endpoints when it goes away.
//!
//! A caller never holds the runtime: a request line is at most [`MAX_LINE`] bytes (a longer
//! one is refused with `limit_reached` and the connection closed), an answer that cannot be
//! written within [`WRITE_TIMEOUT`] disconnects the caller, descriptors are sent waiting for
//! writability (no spinning on `EAGAIN`), and accept errors back off. Non-root callers see
//! only their own endpoints in `list` and `stats` ([`Viewer`]).
//!
//! Requests are read with `recvmsg`: the descriptors received up to the end of a request line
//! are that request's. It takes as many as its line declares (`fds`, a bind's `pcap:` or
//! `unix:` sink: [`CallerSink`]) and the rest are closed; at most [`MAX_FDS`] wait at a time.

use std::{
    collections::VecDeque,
    fs,
    os::fd::{AsRawFd, OwnedFd, RawFd},
    os::unix::fs::PermissionsExt,
    path::Path,
    sync::{Arc, Mutex},
};

use anyhow::{bail, Context as _};
use tokio::{
    io::{AsyncWriteExt, Interest},
    net::{
        unix::{OwnedReadHalf, OwnedWriteHalf},
        UnixListener, UnixStream,
    },
};
use tracing::{debug, info, warn};

use crate::{
    control::{
        version_mismatch, version_of, Envelope, ErrorCode, Request, Response, SOFTWARE, VERSION,
    },
    sink::CallerSink,
    sys::scm::{Credentials, MAX_FDS},
};

use super::{
    state::{Caller, State},
    view::{View, Viewer},
};

/// Longest request line accepted, newline included.
pub const MAX_LINE: usize = 64 * 1024;

/// Longest wait for a caller to take an answer.
pub const WRITE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Creates the control socket at `path` (mode 0660, group `group` if given), replacing a stale
/// one that nobody listens on.
pub fn listen(path: &Path, group: Option<&str>) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!(
                "{} is in use: another daemon is running (stop it first)",
                path.display()
            );
        }
        fs::remove_file(path).with_context(|| format!("removing the stale {}", path.display()))?;
    }
    let listener =
        UnixListener::bind(path).with_context(|| format!("creating {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o660))
        .with_context(|| format!("setting the mode of {}", path.display()))?;
    if let Some(group) = group {
        let gid = group_id(group)?;
        std::os::unix::fs::chown(path, None, Some(gid))
            .with_context(|| format!("giving {} to group {group}", path.display()))?;
    }
    Ok(listener)
}

fn group_id(name: &str) -> anyhow::Result<u32> {
    crate::sys::group_id(name).with_context(|| {
        format!("control group: `{name}` is not a group on this system (see /etc/group)")
    })
}

/// Writes `bytes` with `fds` attached to the first of them. Waits for the socket to become
/// writable again on `EAGAIN` (`try_io` clears the readiness), never spinning; the caller
/// bounds the wait.
async fn send_with_fds(write: &OwnedWriteHalf, bytes: &[u8], fds: &[RawFd]) -> std::io::Result<()> {
    let stream: &UnixStream = write.as_ref();
    let mut sent = 0;
    while sent < bytes.len() {
        stream.writable().await?;
        let attach = if sent == 0 { fds } else { &[] };
        match stream.try_io(Interest::WRITABLE, || {
            crate::sys::scm::send(stream.as_raw_fd(), &bytes[sent..], attach)
        }) {
            Ok(n) => sent += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Writes one answer line (with descriptors, if any) within [`WRITE_TIMEOUT`]: a client that
/// does not read its answers is disconnected rather than allowed to hold the task forever.
async fn answer(write: &mut OwnedWriteHalf, response: &Response, fds: &[RawFd]) -> bool {
    let mut line = serde_json::to_string(response).expect("responses always serialize");
    line.push('\n');
    let sent = tokio::time::timeout(WRITE_TIMEOUT, async {
        if fds.is_empty() {
            write.write_all(line.as_bytes()).await
        } else {
            send_with_fds(write, line.as_bytes(), fds).await
        }
    })
    .await;
    matches!(sent, Ok(Ok(())))
}

/// A connection's reading side: bytes received and not yet read as lines, and the
/// descriptors that came with them (SCM_RIGHTS), at most [`MAX_FDS`].
struct Incoming {
    read: OwnedReadHalf,
    bytes: Vec<u8>,
    fds: VecDeque<OwnedFd>,
}

impl Incoming {
    fn new(read: OwnedReadHalf) -> Self {
        Self {
            read,
            bytes: Vec::new(),
            fds: VecDeque::new(),
        }
    }

    /// Reads one request line of at most [`MAX_LINE`] bytes into `line`. `Ok(None)` at the end
    /// of the stream; `Err(())` for a longer line (the connection is then closed: there is no
    /// sane place to resume reading). Descriptors that arrive meanwhile wait in `self.fds`.
    async fn line(&mut self, line: &mut Vec<u8>) -> Result<Option<()>, ()> {
        line.clear();
        loop {
            if let Some(end) = self.bytes.iter().position(|b| *b == b'\n') {
                line.extend(self.bytes.drain(..=end));
                return if line.len() > MAX_LINE {
                    Err(())
                } else {
                    Ok(Some(()))
                };
            }
            if self.bytes.len() > MAX_LINE {
                return Err(());
            }
            let stream: &UnixStream = self.read.as_ref();
            let mut chunk = [0u8; 16 * 1024];
            let mut fds = Vec::new();
            let received = match stream.readable().await {
                Ok(()) => stream.try_io(Interest::READABLE, || {
                    crate::sys::scm::recv(stream, &mut chunk, &mut fds)
                }),
                Err(e) => Err(e),
            };
            // More than a request may carry are closed at once.
            let room = MAX_FDS.saturating_sub(self.fds.len());
            self.fds.extend(fds.into_iter().take(room));
            match received {
                Ok(0) => return Ok(None),
                Ok(n) => self.bytes.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                // A reset connection, as the peer closing mid-line.
                Err(_) => return Ok(None),
            }
        }
    }

    /// The descriptors received with the line just read, all of them: the request takes what
    /// it declares, the rest close when dropped.
    fn take_fds(&mut self) -> Vec<OwnedFd> {
        self.fds.drain(..).collect()
    }
}

/// The sink a request passed: `declared` of the `received` descriptors (the rest are closed
/// on return), as the caller's. Only a bind carries one, its `pcap:` or `unix:` sink.
fn passed_sink(
    request: &Request,
    declared: u32,
    mut received: Vec<OwnedFd>,
    creds: Credentials,
) -> Result<Option<CallerSink>, Response> {
    let refuse = |message: String| Response::Error {
        code: ErrorCode::InvalidArgument,
        message,
    };
    if declared as usize > received.len() {
        return Err(refuse(format!(
            "fds: the request declares {declared} descriptors but {} came with it (attach \
             them to the line's first byte, SCM_RIGHTS)",
            received.len()
        )));
    }
    match (request, declared) {
        (_, 0) => Ok(None),
        (Request::Bind(_), 1) => Ok(Some(CallerSink {
            fd: received.swap_remove(0),
            creds,
        })),
        _ => Err(refuse(format!(
            "fds: {declared} declared; only a bind carries a descriptor, one: its pcap: or \
             unix: sink"
        ))),
    }
}

/// Serves connections until the task is dropped. `list` and `stats` are answered from `view`,
/// without `state`'s lock.
pub async fn serve(listener: UnixListener, state: Arc<Mutex<State>>, view: Arc<View>) {
    let mut next_connection = 1u64;
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let connection = next_connection;
                next_connection += 1;
                tokio::spawn(connection_task(
                    stream,
                    state.clone(),
                    view.clone(),
                    connection,
                ));
            }
            Err(e) => {
                // Out of descriptors or memory: back off instead of spinning on the error.
                warn!("accepting a control connection: {e}; retrying in 100 ms");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

async fn connection_task(
    stream: UnixStream,
    state: Arc<Mutex<State>>,
    view: Arc<View>,
    connection: u64,
) {
    let (uid, gid) = match stream.peer_cred() {
        Ok(cred) => (cred.uid(), cred.gid()),
        Err(e) => {
            warn!("control connection without peer credentials ({e}): refused");
            return;
        }
    };
    debug!(connection, uid, "control connection");
    let caller = Caller { uid, connection };
    // Records to a caller's unix: sink go out as the caller (the pid is the daemon's: the
    // caller may be gone long before its endpoint, and its pid reused).
    let creds = Credentials {
        pid: std::process::id() as i32,
        uid,
        gid,
    };
    let (read, mut write) = stream.into_split();
    let mut incoming = Incoming::new(read);
    let mut bytes = Vec::new();
    loop {
        match incoming.line(&mut bytes).await {
            Ok(Some(())) => {}
            Ok(None) => break,
            Err(()) => {
                warn!(
                    connection,
                    uid, "a request line over {MAX_LINE} bytes: disconnected"
                );
                let refusal = Response::Error {
                    code: ErrorCode::LimitReached,
                    message: format!("request: longer than {MAX_LINE} bytes"),
                };
                answer(&mut write, &refusal, &[]).await;
                break;
            }
        }
        let received = incoming.take_fds();
        let line = String::from_utf8_lossy(&bytes);
        let response = match version_of(&line) {
            Some(version) if version != VERSION => version_mismatch(version),
            _ => match serde_json::from_str::<Envelope>(&line) {
                Err(e) => Response::Error {
                    code: ErrorCode::InvalidArgument,
                    message: format!("request: {e}; see `demux::control` for the protocol"),
                },
                Ok(Envelope {
                    request: Request::Hello { software },
                    ..
                }) => {
                    debug!(connection, uid, %software, "hello");
                    Response::Hello {
                        version: VERSION,
                        software: SOFTWARE.into(),
                    }
                }
                Ok(envelope) => match view.answer(&envelope.request, Viewer::of(uid)) {
                    Some(response) => response,
                    None => {
                        let passed =
                            match passed_sink(&envelope.request, envelope.fds, received, creds) {
                                Ok(passed) => passed,
                                Err(refusal) => {
                                    if !answer(&mut write, &refusal, &[]).await {
                                        break;
                                    }
                                    continue;
                                }
                            };
                        let (response, ring) = state.lock().expect("state lock").handle_with_sink(
                            envelope.request,
                            caller,
                            passed,
                        );
                        if let Some(ring) = ring {
                            let fds = [ring.memory.as_raw_fd(), ring.wake.as_raw_fd()];
                            if !answer(&mut write, &response, &fds).await {
                                break;
                            }
                            continue;
                        }
                        response
                    }
                },
            },
        };
        if !answer(&mut write, &response, &[]).await {
            break;
        }
    }
    state
        .lock()
        .expect("state lock")
        .connection_closed(connection);
    info!(connection, uid, "control connection closed");
}
