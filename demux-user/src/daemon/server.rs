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
//! are that request's. It takes as many as its line declares (`fds`: a bind's backing socket,
//! then its `pcap:` or `unix:` sink: [`Passed`]; an attach's backing socket) and the rest are closed; at most [`MAX_FDS`]
//! wait at a time. A non-root caller's UDP bind on an address without its backing socket is
//! refused here (`permission_denied`).
//!
//! Connections are held to the [`Limits`]: a non-root uid over its connections, or any
//! non-root caller when the daemon has its total open, is refused as it is accepted, with one
//! `limit_reached` line (its first request is read and discarded, at most [`REFUSAL_LINGER`],
//! so that its write does not fail before it reads the refusal), then closed. A connection
//! that sends no request for `limits.idle` while it holds no endpoint that closes with it
//! ([`State::holds_endpoints`]) gets a `limit_reached` line and is closed, root's too.

use std::{
    collections::{HashMap, VecDeque},
    fs,
    os::fd::{AsRawFd, OwnedFd, RawFd},
    os::unix::fs::PermissionsExt,
    path::Path,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use anyhow::{bail, Context as _};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt, Interest},
    net::{
        unix::{OwnedReadHalf, OwnedWriteHalf},
        UnixListener, UnixStream,
    },
};
use tracing::{debug, info, warn};

use crate::{
    binding::{Local, Protocol},
    config::Limits,
    control::{
        version_mismatch, version_of, BindRequest, Envelope, ErrorCode, Request, Response,
        SinkSpec, VERSION,
    },
    sink::CallerSink,
    sys::scm::{Credentials, MAX_FDS},
};

use super::{
    error::ControlError,
    reload::{Ask, Asks, ReloadError},
    state::{Caller, Passed, State},
    view::{View, Viewer},
    worker::{Command, QueueControl},
};

/// Longest request line accepted, newline included.
pub const MAX_LINE: usize = 64 * 1024;

/// Longest wait for a caller to take an answer.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest a refused connection stays open for its first request to arrive.
pub const REFUSAL_LINGER: Duration = Duration::from_secs(1);

/// The open control connections, per uid and in all, held to the [`Limits`].
#[derive(Default)]
struct Connections {
    open: Mutex<Open>,
}

#[derive(Default)]
struct Open {
    per_uid: HashMap<u32, u32>,
    total: u32,
}

/// One admitted connection: counted until dropped.
struct Admitted {
    connections: Arc<Connections>,
    uid: u32,
}

impl Connections {
    /// Counts a new connection of `uid`, or refuses it: a non-root uid with
    /// `limits.connections_per_uid` open, or any non-root caller with `limits.connections` open
    /// in all. Root is always let in (and counted).
    fn admit(self: &Arc<Self>, uid: u32, limits: &Limits) -> Result<Admitted, ControlError> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let mine = open.per_uid.get(&uid).copied().unwrap_or(0);
        if uid != 0 {
            let max = limits.connections_per_uid;
            if mine >= max {
                return Err(ControlError::ConnectionsPerUid { uid, max });
            }
            let max = limits.connections;
            if open.total >= max {
                return Err(ControlError::Connections { max });
            }
        }
        open.per_uid.insert(uid, mine + 1);
        open.total += 1;
        Ok(Admitted {
            connections: self.clone(),
            uid,
        })
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut open = self
            .connections
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        open.total -= 1;
        if let Some(mine) = open.per_uid.get_mut(&self.uid) {
            *mine -= 1;
            if *mine == 0 {
                open.per_uid.remove(&self.uid);
            }
        }
    }
}

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

/// What came of waiting for a request.
enum Next {
    /// A request line (in the buffer).
    Line,
    /// The end of the stream, or the peer closed mid-line.
    End,
    /// A line over [`MAX_LINE`] bytes: the connection is closed, as there is no sane place to
    /// resume reading.
    TooLong,
    /// No request within the idle time, and no endpoint held.
    Idle,
}

/// Reads one request line; [`Next::Idle`] when none has come after `idle` (if not zero) and
/// the connection holds no endpoint then. A connection that holds one is looked at again
/// every `idle`, without interrupting the read.
async fn next_request(
    incoming: &mut Incoming,
    line: &mut Vec<u8>,
    state: &Mutex<State>,
    connection: u64,
    idle: Duration,
) -> Next {
    let read = async {
        match incoming.line(line).await {
            Ok(Some(())) => Next::Line,
            Ok(None) => Next::End,
            Err(()) => Next::TooLong,
        }
    };
    tokio::pin!(read);
    loop {
        tokio::select! {
            next = &mut read => return next,
            () = tokio::time::sleep(idle), if !idle.is_zero() => {
                if !state.lock().expect("state lock").holds_endpoints(connection) {
                    return Next::Idle;
                }
            }
        }
    }
}

/// Answers a refused connection with `refusal`, takes its first request (or its end) for at
/// most [`REFUSAL_LINGER`], and closes it.
async fn refuse(mut stream: UnixStream, refusal: ControlError) {
    let mut line = serde_json::to_string(&Response::Error {
        code: refusal.code(),
        message: refusal.to_string(),
    })
    .expect("responses always serialize");
    line.push('\n');
    let _ = tokio::time::timeout(REFUSAL_LINGER, async {
        stream.write_all(line.as_bytes()).await?;
        let mut buf = [0u8; 1024];
        loop {
            match stream.read(&mut buf).await? {
                0 => break,
                n if buf[..n].contains(&b'\n') => break,
                _ => {}
            }
        }
        std::io::Result::Ok(())
    })
    .await;
}

/// What a request passed: `declared` of the `received` descriptors (the rest are closed on
/// return), as the caller's. Only a bind carries any: its backing socket (`backed`), then its
/// `pcap:` or `unix:` sink. A non-root caller's UDP bind on an address must carry its backing
/// socket: the kernel has then judged the binding as it judges the caller's own sockets.
fn passed(
    request: &Request,
    declared: u32,
    received: Vec<OwnedFd>,
    creds: Credentials,
) -> Result<Passed, Response> {
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
    if let Request::Attach { .. } = request {
        // An attach carries exactly the endpoint's backing socket: the proof that the caller
        // holds it.
        return match (declared, received.into_iter().next()) {
            (1, Some(socket)) => Ok(Passed {
                backing: Some(socket),
                sink: None,
            }),
            _ => Err(refuse(format!(
                "fds: attach carries the endpoint's backing socket, 1 descriptor; {declared} \
                 declared"
            ))),
        };
    }
    let Request::Bind(bind) = request else {
        return match declared {
            0 => Ok(Passed::default()),
            _ => Err(refuse(format!(
                "fds: {declared} declared; only a bind carries descriptors"
            ))),
        };
    };
    if creds.uid != 0 && !bind.backed && needs_backing(bind) {
        let error = ControlError::BackingRequired {
            local: bind.local.clone(),
        };
        return Err(Response::Error {
            code: error.code(),
            message: error.to_string(),
        });
    }
    let sink_fd = matches!(bind.to, SinkSpec::Pcap(_) | SinkSpec::Unix(_));
    let most = u32::from(bind.backed) + u32::from(sink_fd);
    if declared > most {
        return Err(refuse(format!(
            "fds: {declared} declared; this bind carries at most {most}: its backing socket if \
             `backed`, then its pcap: or unix: sink"
        )));
    }
    let mut fds = received.into_iter().take(declared as usize);
    let backing = match bind.backed {
        true => Some(fds.next().ok_or_else(|| {
            refuse(
                "backed: the request says it carries its backing socket, but declares no \
                    descriptor (\"fds\":1 or more)"
                    .into(),
            )
        })?),
        false => None,
    };
    // A missing sink descriptor is the sink's to refuse (it names the sink).
    Ok(Passed {
        backing,
        sink: fds.next().map(|fd| CallerSink { fd, creds }),
    })
}

/// Whether a bind is one a kernel socket could make: UDP on one address (not a prefix).
fn needs_backing(bind: &BindRequest) -> bool {
    bind.protocol == Protocol::Udp && matches!(bind.local.parse(), Ok(Local::Addr(_)))
}

/// Serves connections until the task is dropped, holding them to the state's limits as they
/// are when each connection is accepted. `list` and `stats` are answered from `view`, without
/// `state`'s lock; root's `reload` goes to the daemon's main task through `reloads`.
pub async fn serve(
    listener: UnixListener,
    state: Arc<Mutex<State>>,
    view: Arc<View>,
    reloads: Asks,
) {
    let connections = Arc::<Connections>::default();
    let mut next_connection = 1u64;
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let (uid, gid) = match stream.peer_cred() {
                    Ok(cred) => (cred.uid(), cred.gid()),
                    Err(e) => {
                        warn!("control connection without peer credentials ({e}): refused");
                        continue;
                    }
                };
                let limits = state.lock().expect("state lock").limits();
                let admitted = match connections.admit(uid, &limits) {
                    Ok(admitted) => admitted,
                    Err(refusal) => {
                        warn!(uid, "control connection refused: {refusal}");
                        tokio::spawn(refuse(stream, refusal));
                        continue;
                    }
                };
                let caller = Caller {
                    uid,
                    connection: next_connection,
                };
                next_connection += 1;
                tokio::spawn(connection_task(
                    stream,
                    Shared {
                        state: state.clone(),
                        view: view.clone(),
                        reloads: reloads.clone(),
                    },
                    caller,
                    gid,
                    limits.idle,
                    admitted,
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

/// What every connection task shares.
struct Shared {
    state: Arc<Mutex<State>>,
    view: Arc<View>,
    reloads: Asks,
}

/// Answers a `reload`: root's goes to the daemon's main task, which applies it between its
/// other work (it owns the interfaces); anyone else's is refused.
async fn reload(uid: u32, reloads: &Asks) -> Response {
    let refusal = |code: ErrorCode, message: String| Response::Error { code, message };
    if uid != 0 {
        let error = ControlError::ReloadForRoot { uid };
        warn!(uid, "reload refused: not root");
        return refusal(error.code(), error.to_string());
    }
    let (reply, answer) = tokio::sync::oneshot::channel();
    let result = match reloads.send(Ask { reply }).await {
        Ok(()) => answer.await.unwrap_or(Err(ReloadError::ShuttingDown)),
        Err(_) => Err(ReloadError::ShuttingDown),
    };
    match result {
        Ok(changes) => Response::Reloaded { changes },
        Err(error) => refusal(error.code(), error.to_string()),
    }
}

/// How long the control socket waits for a queue worker to hand over or bind a leased socket.
const WORKER_TIMEOUT: Duration = Duration::from_secs(2);

/// The refusal answer of `error`.
fn refusal_of(error: &ControlError) -> Response {
    Response::Error {
        code: error.code(),
        message: error.to_string(),
    }
}

/// Sends `command` (made around a fresh oneshot) to every queue in `queues` and awaits each
/// answer, within [`WORKER_TIMEOUT`].
async fn ask_workers<T>(
    queues: &[QueueControl],
    command: impl Fn(tokio::sync::oneshot::Sender<Result<T, String>>) -> Command,
) -> Result<Vec<T>, String> {
    let mut answers = Vec::with_capacity(queues.len());
    for queue in queues {
        let (reply, answer) = tokio::sync::oneshot::channel();
        queue.commands.send(command(reply)).map_err(|_| {
            format!(
                "the worker of {} queue {} is gone",
                queue.iface, queue.queue
            )
        })?;
        let answer = tokio::time::timeout(WORKER_TIMEOUT, answer)
            .await
            .map_err(|_| {
                format!(
                    "the worker of {} queue {} did not answer",
                    queue.iface, queue.queue
                )
            })?
            .map_err(|_| {
                format!(
                    "the worker of {} queue {} is gone",
                    queue.iface, queue.queue
                )
            })?;
        answers.push(answer.map_err(|e| format!("{} queue {}: {e}", queue.iface, queue.queue))?);
    }
    Ok(answers)
}

/// Answers `fast_path`: the lease if the state grants it, with each queue's socket and UMEM.
/// A lease whose hand-over fails ends at once (the workers reopen their own sockets).
async fn fast_path(state: &Mutex<State>, caller: Caller, iface: &str) -> (Response, Vec<OwnedFd>) {
    let granted = state.lock().expect("state lock").grant_lease(caller, iface);
    let queues = match granted {
        Ok(queues) => queues,
        Err(error) => {
            warn!(uid = caller.uid, iface, "fast path refused: {error}");
            return (refusal_of(&error), Vec::new());
        }
    };
    match ask_workers(&queues, Command::Lease).await {
        Ok(leased) => {
            let frames = leased.first().map_or(0, |l| l.frames);
            let fds = leased
                .into_iter()
                .flat_map(|l| [l.socket, l.umem])
                .collect();
            let response = Response::FastPath {
                queues: queues.len() as u32,
                frames,
                frame_size: crate::xsk::FRAME_SIZE,
            };
            (response, fds)
        }
        Err(why) => {
            state
                .lock()
                .expect("state lock")
                .end_lease(caller.connection);
            let error = ControlError::FastPathUnavailable(why);
            warn!(uid = caller.uid, iface, "fast path failed: {error}");
            (refusal_of(&error), Vec::new())
        }
    }
}

/// Answers `fast_path_ready`: binds the leased sockets and steers their queues to them.
async fn fast_path_ready(state: &Mutex<State>, caller: Caller) -> Response {
    let queues = match state.lock().expect("state lock").leased_queues(caller) {
        Ok(queues) => queues,
        Err(error) => return refusal_of(&error),
    };
    match ask_workers(&queues, Command::Bind).await {
        Ok(_) => {
            info!(uid = caller.uid, "fast path on");
            Response::FastPathOn
        }
        Err(why) => {
            state
                .lock()
                .expect("state lock")
                .end_lease(caller.connection);
            refusal_of(&ControlError::FastPathUnavailable(why))
        }
    }
}

/// Answers `caller`'s requests until it leaves, sends an endless line or idles; then closes
/// its endpoints (but persistent ones) and gives back its place (`_admitted`).
async fn connection_task(
    stream: UnixStream,
    shared: Shared,
    caller: Caller,
    gid: u32,
    idle: Duration,
    _admitted: Admitted,
) {
    let Caller { uid, connection } = caller;
    let Shared {
        state,
        view,
        reloads,
    } = shared;
    debug!(connection, uid, "control connection");
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
        match next_request(&mut incoming, &mut bytes, &state, connection, idle).await {
            Next::Line => {}
            Next::End => break,
            Next::Idle => {
                debug!(
                    connection,
                    uid, "idle for {idle:?} without endpoints: disconnected"
                );
                let error = ControlError::Idle { idle };
                let refusal = Response::Error {
                    code: error.code(),
                    message: error.to_string(),
                };
                answer(&mut write, &refusal, &[]).await;
                break;
            }
            Next::TooLong => {
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
                Ok(envelope) if envelope.request == Request::Reload => reload(uid, &reloads).await,
                Ok(Envelope {
                    request: Request::FastPath { iface },
                    ..
                }) => {
                    let (response, fds) = fast_path(&state, caller, &iface).await;
                    let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
                    if !answer(&mut write, &response, &raw).await {
                        break;
                    }
                    continue;
                }
                Ok(Envelope {
                    request: Request::FastPathReady,
                    ..
                }) => fast_path_ready(&state, caller).await,
                Ok(envelope) => match view.answer(&envelope.request, Viewer::of(uid)) {
                    Some(response) => response,
                    None => {
                        let passed = match passed(&envelope.request, envelope.fds, received, creds)
                        {
                            Ok(passed) => passed,
                            Err(refusal) => {
                                if !answer(&mut write, &refusal, &[]).await {
                                    break;
                                }
                                continue;
                            }
                        };
                        let (response, ring) = state.lock().expect("state lock").handle_passed(
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

#[cfg(test)]
mod tests {
    //! The connection limits, without a socket (the end-to-end test with a daemon is
    //! `tests/privileged/endpoints.rs`).

    use super::*;

    const ALICE: u32 = 1000;
    const BOB: u32 = 1001;

    fn limits(per_uid: u32, total: u32) -> Limits {
        Limits {
            connections_per_uid: per_uid,
            connections: total,
            ..Limits::default()
        }
    }

    #[test]
    fn a_uid_has_at_most_its_connections_and_a_closed_one_frees_its_place() {
        let connections = Arc::<Connections>::default();
        let limits = limits(2, 100);
        let first = connections.admit(ALICE, &limits).expect("first");
        let _second = connections.admit(ALICE, &limits).expect("second");
        let error = connections.admit(ALICE, &limits).err().expect("a third");
        assert!(
            matches!(
                error,
                ControlError::ConnectionsPerUid { uid: ALICE, max: 2 }
            ),
            "{error}"
        );
        assert_eq!(error.code(), ErrorCode::LimitReached);
        assert!(
            error.to_string().contains("limits.connections_per_uid"),
            "{error}"
        );
        let _bob = connections
            .admit(BOB, &limits)
            .expect("bob has his own count");
        drop(first);
        let _third = connections
            .admit(ALICE, &limits)
            .expect("a place is free again");
    }

    #[test]
    fn the_daemon_takes_at_most_its_total_of_connections_but_always_root() {
        let connections = Arc::<Connections>::default();
        let limits = limits(10, 2);
        let alice = connections.admit(ALICE, &limits).expect("alice");
        let _bob = connections.admit(BOB, &limits).expect("bob");
        let error = connections
            .admit(BOB + 1, &limits)
            .err()
            .expect("a third uid");
        assert!(
            matches!(error, ControlError::Connections { max: 2 }),
            "{error}"
        );
        assert_eq!(error.code(), ErrorCode::LimitReached);
        assert!(error.to_string().contains("limits.connections"), "{error}");
        // Root is let in over both limits, and counts toward the total.
        let roots: Vec<Admitted> = (0..3)
            .map(|_| connections.admit(0, &limits).expect("root"))
            .collect();
        drop(alice);
        assert!(
            connections.admit(ALICE, &limits).is_err(),
            "root's connections count toward the total"
        );
        drop(roots);
        connections
            .admit(ALICE, &limits)
            .expect("places are free again");
    }
}
