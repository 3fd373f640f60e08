//! The control socket: accepts connections, identifies each caller with SO_PEERCRED, answers
//! one JSON request per line, and closes a connection's endpoints when it goes away.

use std::{
    fs,
    os::fd::{AsRawFd, RawFd},
    os::unix::fs::PermissionsExt,
    path::Path,
    sync::{Arc, Mutex},
};

use anyhow::{bail, Context as _};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::{unix::OwnedWriteHalf, UnixListener, UnixStream},
};
use tracing::{debug, info, warn};

use crate::control::{
    version_mismatch, version_of, Envelope, ErrorCode, Request, Response, SOFTWARE, VERSION,
};

use super::{
    state::{Caller, State},
    view::View,
};

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

/// Writes `bytes` with `fds` attached to the first of them.
async fn send_with_fds(write: &OwnedWriteHalf, bytes: &[u8], fds: &[RawFd]) -> std::io::Result<()> {
    let stream: &UnixStream = write.as_ref();
    let mut sent = 0;
    while sent < bytes.len() {
        stream.writable().await?;
        let attach = if sent == 0 { fds } else { &[] };
        match crate::sys::scm::send(stream.as_raw_fd(), &bytes[sent..], attach) {
            Ok(n) => sent += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
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
            Err(e) => warn!("accepting a control connection: {e}"),
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
    let mut lines = BufReader::new(read).lines();
    while let Ok(Some(line)) = lines.next_line().await {
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
                Ok(envelope) => match view.answer(&envelope.request) {
                    Some(response) => response,
                    None => {
                        let (response, ring) = state
                            .lock()
                            .expect("state lock")
                            .handle(envelope.request, caller);
                        if let Some(ring) = ring {
                            let mut answer = serde_json::to_string(&response)
                                .expect("responses always serialize");
                            answer.push('\n');
                            let fds = [ring.memory.as_raw_fd(), ring.wake.as_raw_fd()];
                            if send_with_fds(&write, answer.as_bytes(), &fds)
                                .await
                                .is_err()
                            {
                                break;
                            }
                            continue;
                        }
                        response
                    }
                },
            },
        };
        let mut answer = serde_json::to_string(&response).expect("responses always serialize");
        answer.push('\n');
        if write.write_all(answer.as_bytes()).await.is_err() {
            break;
        }
    }
    state
        .lock()
        .expect("state lock")
        .connection_closed(connection);
    info!(connection, uid, "control connection closed");
}
