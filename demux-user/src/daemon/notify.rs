//! Readiness for a supervisor, by the sd_notify protocol: when `NOTIFY_SOCKET` names a Unix
//! datagram socket (a path, or `@name` in the abstract namespace), the daemon sends it
//! `READY=1` once the program is attached, the sockets are registered and the control socket
//! listens, `RELOADING=1` then `READY=1` around a reload, and `STOPPING=1` when it shuts down;
//! at a graceful stop it stores descriptors (`FDSTORE=1`, `FDNAME=`, SCM_RIGHTS) and waits
//! for `BARRIER=1` (`handover`).
//! Each message is one datagram of newline-separated `KEY=value` assignments. Without
//! `NOTIFY_SOCKET` nothing is sent.
//!
//! systemd (`Type=notify`) and the privileged tests both wait for `READY=1` rather than for a
//! word in the log.

use std::{
    ffi::OsStr,
    io,
    os::fd::{AsRawFd as _, RawFd},
    os::{
        linux::net::SocketAddrExt as _,
        unix::{
            ffi::OsStrExt as _,
            net::{SocketAddr, UnixDatagram},
        },
    },
    time::Instant,
};

use thiserror::Error;

/// The variable that names the supervisor's socket.
pub const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

/// Why a notification could not be sent.
#[derive(Debug, Error)]
pub enum NotifyError {
    /// `NOTIFY_SOCKET` is neither an absolute path nor `@name`.
    #[error("{NOTIFY_SOCKET}={value:?}: not an absolute path or an @abstract name")]
    Address {
        /// The variable's value.
        value: String,
    },
    /// Creating the socket, or building its address, failed.
    #[error("{NOTIFY_SOCKET}={value:?}: {source}")]
    Socket {
        /// The variable's value.
        value: String,
        /// What the kernel said.
        source: io::Error,
    },
    /// `sendto` failed.
    #[error("sending {message:?} to {NOTIFY_SOCKET}={value:?}: {source}")]
    Send {
        /// The first line of the message.
        message: String,
        /// The variable's value.
        value: String,
        /// What the kernel said.
        source: io::Error,
    },
}

/// The supervisor's socket, from `NOTIFY_SOCKET`.
#[derive(Debug)]
pub struct Notifier {
    socket: UnixDatagram,
    addr: SocketAddr,
    value: String,
}

impl Notifier {
    /// The notifier `NOTIFY_SOCKET` asks for, or `None` when it is unset or empty.
    pub fn from_env() -> Result<Option<Self>, NotifyError> {
        match std::env::var_os(NOTIFY_SOCKET) {
            Some(value) if !value.is_empty() => Self::new(&value).map(Some),
            _ => Ok(None),
        }
    }

    /// A notifier for the socket `value` names: `/path` or `@abstract-name`.
    pub fn new(value: &OsStr) -> Result<Self, NotifyError> {
        let shown = value.to_string_lossy().into_owned();
        let bytes = value.as_bytes();
        let addr = match bytes.first() {
            Some(b'@') => SocketAddr::from_abstract_name(&bytes[1..]),
            Some(b'/') => SocketAddr::from_pathname(value),
            _ => return Err(NotifyError::Address { value: shown }),
        }
        .map_err(|source| NotifyError::Socket {
            value: shown.clone(),
            source,
        })?;
        let socket = UnixDatagram::unbound().map_err(|source| NotifyError::Socket {
            value: shown.clone(),
            source,
        })?;
        Ok(Self {
            socket,
            addr,
            value: shown,
        })
    }

    /// Sends `message` (`KEY=value` lines) as one datagram.
    pub fn notify(&self, message: &str) -> Result<(), NotifyError> {
        self.socket
            .send_to_addr(message.as_bytes(), &self.addr)
            .map(drop)
            .map_err(|source| NotifyError::Send {
                message: message.lines().next().unwrap_or("").to_owned(),
                value: self.value.clone(),
                source,
            })
    }

    /// Sends `message` with descriptor `fd` attached (SCM_RIGHTS), as sd_pid_notify_with_fds
    /// does.
    fn notify_with_fd(
        &self,
        message: &str,
        fd: RawFd,
        deadline: Instant,
    ) -> Result<(), NotifyError> {
        let failed = |source| NotifyError::Send {
            message: message.lines().next().unwrap_or("").to_owned(),
            value: self.value.clone(),
            source,
        };
        // A connected socket of its own: `scm::send` sends without an address. It does not
        // wait; a manager that has not read the previous messages yet (its queue holds
        // `net.unix.max_dgram_qlen`) is waited for until `deadline`.
        let socket = UnixDatagram::unbound().map_err(failed)?;
        socket.connect_addr(&self.addr).map_err(failed)?;
        loop {
            match crate::sys::scm::send(socket.as_raw_fd(), message.as_bytes(), &[fd]) {
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(failed(e));
                    }
                    let mut fds = [crate::sys::pollfd(&socket, libc::POLLOUT)];
                    crate::sys::poll(&mut fds, left.as_millis().max(1) as i32).map_err(failed)?;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(failed(e)),
            }
        }
    }

    /// `FDSTORE=1` with `FDNAME=name`: the service manager keeps a copy of `fd` for the next
    /// start of the service (`FileDescriptorStoreMax=`), which finds it in `LISTEN_FDS`.
    /// `FDPOLL=0` (systemd 246+): the manager otherwise drops a stored descriptor that reports
    /// POLLERR, as a connected UDP socket does after an ICMP error.
    /// Waits for room in the manager's queue until `deadline`.
    pub fn store_fd(&self, name: &str, fd: RawFd, deadline: Instant) -> Result<(), NotifyError> {
        self.notify_with_fd(&format!("FDSTORE=1\nFDNAME={name}\nFDPOLL=0"), fd, deadline)
    }

    /// `FDSTOREREMOVE=1` with `FDNAME=name`: the manager closes its copies of the descriptors
    /// stored under `name`.
    pub fn remove_fds(&self, name: &str) -> Result<(), NotifyError> {
        self.notify(&format!("FDSTOREREMOVE=1\nFDNAME={name}"))
    }

    /// `BARRIER=1` (sd_notify_barrier(3)): waits, until `deadline` at most, for the manager to
    /// have processed every message sent before (it closes the pipe end sent with this one).
    pub fn barrier(&self, deadline: Instant) -> Result<(), NotifyError> {
        let failed = |source| NotifyError::Send {
            message: "BARRIER=1".into(),
            value: self.value.clone(),
            source,
        };
        let (read, write) = std::io::pipe().map_err(failed)?;
        self.notify_with_fd("BARRIER=1", write.as_raw_fd(), deadline)?;
        drop(write);
        let mut fds = [crate::sys::pollfd(&read, libc::POLLIN)];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(failed(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the manager did not answer in time",
                )));
            }
            // Readable at EOF: the manager closed its end. (0: timed out or interrupted.)
            if crate::sys::poll(&mut fds, left.as_millis().max(1) as i32).map_err(failed)? > 0 {
                return Ok(());
            }
        }
    }

    /// `READY=1` with a status line: the daemon serves.
    pub fn ready(&self, status: &str) -> Result<(), NotifyError> {
        self.notify(&format!("READY=1\nSTATUS={}", one_line(status)))
    }

    /// `RELOADING=1`: the daemon re-reads its configuration (SIGHUP); send [`Notifier::ready`]
    /// when done, whether the new configuration was applied or refused. systemd 252 (Debian
    /// 12) has no `Type=notify-reload`, so the unit's `ExecReload` sends SIGHUP and systemd
    /// waits for this pair.
    pub fn reloading(&self) -> Result<(), NotifyError> {
        self.notify("RELOADING=1\nSTATUS=reloading the configuration")
    }

    /// `STOPPING=1`: the daemon shuts down.
    pub fn stopping(&self) -> Result<(), NotifyError> {
        self.notify("STOPPING=1\nSTATUS=shutting down")
    }
}

/// A status value on one line (a newline would start another assignment).
fn one_line(status: &str) -> String {
    status.replace(['\n', '\r'], " ")
}

#[cfg(test)]
mod tests {
    use std::{path::PathBuf, time::Duration};

    use super::*;

    /// A directory of the test's own, removed on drop.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(name: &str) -> Self {
            let path =
                std::env::temp_dir().join(format!("demux-notify-{name}-{}", std::process::id()));
            std::fs::create_dir_all(&path).expect("creating the scratch directory");
            Self(path)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn receive(socket: &UnixDatagram) -> String {
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("a read timeout");
        let mut buf = [0u8; 512];
        let n = socket.recv(&mut buf).expect("a datagram within 5 s");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    #[test]
    fn ready_and_stopping_reach_a_path_socket_as_one_datagram_each() {
        let dir = Scratch::new("path");
        let path = dir.0.join("notify.sock");
        let supervisor = UnixDatagram::bind(&path).expect("binding the supervisor's socket");
        let notifier = Notifier::new(path.as_os_str()).expect("a notifier");
        notifier
            .ready("attached to dmx-b\ncontrol socket ready")
            .expect("sending READY=1");
        assert_eq!(
            receive(&supervisor),
            "READY=1\nSTATUS=attached to dmx-b control socket ready"
        );
        notifier.reloading().expect("sending RELOADING=1");
        assert_eq!(
            receive(&supervisor),
            "RELOADING=1\nSTATUS=reloading the configuration"
        );
        notifier.stopping().expect("sending STOPPING=1");
        assert_eq!(receive(&supervisor), "STOPPING=1\nSTATUS=shutting down");
    }

    /// `FDSTORE=1` carries its descriptor and name, `FDSTOREREMOVE=1` its name, and the
    /// barrier returns once the manager closed the pipe it got, or fails at its deadline.
    #[test]
    fn descriptors_are_stored_by_name_and_the_barrier_waits_for_the_manager() {
        let dir = Scratch::new("fdstore");
        let path = dir.0.join("notify.sock");
        let manager = UnixDatagram::bind(&path).expect("binding the manager's socket");
        manager
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .expect("a read timeout");
        let notifier = Notifier::new(path.as_os_str()).expect("a notifier");
        let deadline = Instant::now() + std::time::Duration::from_secs(5);
        let memfd = crate::sys::memfd(c"stored").expect("a memfd");
        notifier
            .store_fd("demux-ep1-ring", memfd.as_raw_fd(), deadline)
            .expect("FDSTORE=1");
        let mut buf = [0u8; 512];
        let mut fds = Vec::new();
        let n = crate::sys::scm::recv(&manager, &mut buf, &mut fds).expect("the message");
        assert_eq!(
            String::from_utf8_lossy(&buf[..n]),
            "FDSTORE=1\nFDNAME=demux-ep1-ring\nFDPOLL=0"
        );
        assert_eq!(fds.len(), 1);
        notifier
            .remove_fds("demux-ep1-ring")
            .expect("FDSTOREREMOVE=1");
        assert_eq!(receive(&manager), "FDSTOREREMOVE=1\nFDNAME=demux-ep1-ring");
        // Nobody answers: the barrier gives up at its deadline.
        let soon = Instant::now() + std::time::Duration::from_millis(200);
        assert!(notifier.barrier(soon).is_err());
        let mut fds = Vec::new();
        crate::sys::scm::recv(&manager, &mut buf, &mut fds).expect("the first barrier");
        drop(fds);
        // The manager reads it and closes the pipe: the barrier returns.
        let answer = std::thread::spawn(move || {
            let mut fds = Vec::new();
            let n = crate::sys::scm::recv(&manager, &mut buf, &mut fds).expect("the barrier");
            assert_eq!(&buf[..n], b"BARRIER=1");
            assert_eq!(fds.len(), 1);
        });
        notifier.barrier(deadline).expect("answered");
        answer.join().expect("the manager");
    }

    #[test]
    fn an_abstract_name_is_reached_too() {
        let name = format!("demux-notify-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).expect("an abstract address");
        let supervisor = UnixDatagram::bind_addr(&addr).expect("binding the abstract socket");
        let notifier = Notifier::new(OsStr::new(&format!("@{name}"))).expect("a notifier");
        notifier.ready("up").expect("sending READY=1");
        assert_eq!(receive(&supervisor), "READY=1\nSTATUS=up");
    }

    #[test]
    fn a_relative_path_is_refused_and_a_missing_socket_fails_to_send() {
        assert!(matches!(
            Notifier::new(OsStr::new("notify.sock")),
            Err(NotifyError::Address { .. })
        ));
        let dir = Scratch::new("missing");
        let notifier = Notifier::new(dir.0.join("nobody.sock").as_os_str()).expect("a notifier");
        let error = notifier.ready("up").expect_err("nobody listens");
        assert!(matches!(error, NotifyError::Send { .. }), "{error}");
    }
}
