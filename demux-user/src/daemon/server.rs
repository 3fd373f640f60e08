//! The control socket: accepts connections, identifies each caller with SO_PEERCRED, answers
//! one JSON request per line, and closes a connection's endpoints when it goes away.
//!
//! A caller never holds the runtime: a request line is at most [`MAX_LINE`] bytes (a longer
//! one is refused with `limit_reached` and the connection closed), an answer that cannot be
//! written within [`WRITE_TIMEOUT`] disconnects the caller, descriptors are sent waiting for
//! writability (no spinning on `EAGAIN`), and accept errors back off. Non-root callers see
//! only their own endpoints in `list` and `stats` ([`Viewer`]).

use std::{
    fs,
    os::fd::{AsRawFd, RawFd},
    os::unix::fs::PermissionsExt,
    path::Path,
    sync::{Arc, Mutex},
};

use anyhow::{bail, Context as _};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Interest},
    net::{
        unix::{OwnedReadHalf, OwnedWriteHalf},
        UnixListener, UnixStream,
    },
};
use tracing::{debug, info, warn};

use crate::control::{
    version_mismatch, version_of, Envelope, ErrorCode, Request, Response, SOFTWARE, VERSION,
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

/// Reads one request line of at most [`MAX_LINE`] bytes. `Ok(None)` at the end of the stream;
/// `Err(())` for a longer line (the connection is then closed: there is no sane place to
/// resume reading).
async fn read_line(
    reader: &mut BufReader<OwnedReadHalf>,
    line: &mut Vec<u8>,
) -> Result<Option<()>, ()> {
    line.clear();
    let limit = MAX_LINE as u64 + 1;
    match (&mut *reader).take(limit).read_until(b'\n', line).await {
        Ok(0) => Ok(None),
        Ok(_) if line.last() == Some(&b'\n') => Ok(Some(())),
        Ok(_) if line.len() > MAX_LINE => Err(()),
        // The peer closed mid-line.
        Ok(_) | Err(_) => Ok(None),
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
    let uid = match stream.peer_cred() {
        Ok(cred) => cred.uid(),
        Err(e) => {
            warn!("control connection without peer credentials ({e}): refused");
            return;
        }
    };
    debug!(connection, uid, "control connection");
    let caller = Caller { uid, connection };
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let mut bytes = Vec::new();
    loop {
        match read_line(&mut reader, &mut bytes).await {
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
                        let (response, ring) = state
                            .lock()
                            .expect("state lock")
                            .handle(envelope.request, caller);
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
