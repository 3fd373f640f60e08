//! Error codes of the control protocol: what an application can match on, stable on the wire
//! (`"code":"address_in_use"`), each mapped to the `errno` and `io::ErrorKind` a kernel socket
//! call would give for the same refusal.
#![deny(missing_docs)]

use std::{fmt, io};

use serde::{Deserialize, Serialize};

/// Why a request was refused. The daemon sends one with every error answer; the client library
/// adds [`ErrorCode::Unavailable`] when it cannot reach the daemon. A code this build does not
/// know (from a newer daemon) reads as [`ErrorCode::Other`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The binding is held already (`EADDRINUSE`).
    AddressInUse,
    /// The caller may not do this: a privileged port, another user's endpoint (`EACCES`).
    PermissionDenied,
    /// The request is malformed or names something impossible (`EINVAL`).
    InvalidArgument,
    /// No such endpoint (`ENOENT`).
    NotFound,
    /// A table, descriptor range or per-caller limit is exhausted (`EDQUOT`).
    LimitReached,
    /// The two sides speak different control protocol versions (`EPROTO`).
    VersionMismatch,
    /// The daemon is not running or went away (`ECONNREFUSED`); produced by the client.
    Unavailable,
    /// Not now: another client's fast-path lease holds the daemon's queues (`EBUSY`); the
    /// kernel socket serves the caller meanwhile, and a bind may succeed once the lease ends.
    Busy,
    /// The daemon failed on its side (a map update, a sink it could not open) (`EIO`).
    Internal,
    /// A code this build does not know (`EIO`).
    #[serde(other)]
    Other,
}

impl ErrorCode {
    /// The wire name, e.g. `address_in_use`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::AddressInUse => "address_in_use",
            ErrorCode::PermissionDenied => "permission_denied",
            ErrorCode::InvalidArgument => "invalid_argument",
            ErrorCode::NotFound => "not_found",
            ErrorCode::LimitReached => "limit_reached",
            ErrorCode::VersionMismatch => "version_mismatch",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Busy => "busy",
            ErrorCode::Internal => "internal",
            ErrorCode::Other => "other",
        }
    }

    /// The errno a socket call would set for the same refusal.
    pub fn errno(self) -> i32 {
        match self {
            ErrorCode::AddressInUse => libc::EADDRINUSE,
            ErrorCode::PermissionDenied => libc::EACCES,
            ErrorCode::InvalidArgument => libc::EINVAL,
            ErrorCode::NotFound => libc::ENOENT,
            ErrorCode::Busy => libc::EBUSY,
            ErrorCode::LimitReached => libc::EDQUOT,
            ErrorCode::VersionMismatch => libc::EPROTO,
            ErrorCode::Unavailable => libc::ECONNREFUSED,
            ErrorCode::Internal | ErrorCode::Other => libc::EIO,
        }
    }

    /// The `io::ErrorKind` of [`ErrorCode::errno`].
    pub fn io_kind(self) -> io::ErrorKind {
        match self {
            ErrorCode::AddressInUse => io::ErrorKind::AddrInUse,
            ErrorCode::PermissionDenied => io::ErrorKind::PermissionDenied,
            ErrorCode::InvalidArgument => io::ErrorKind::InvalidInput,
            ErrorCode::NotFound => io::ErrorKind::NotFound,
            ErrorCode::LimitReached => io::ErrorKind::QuotaExceeded,
            ErrorCode::VersionMismatch => io::ErrorKind::InvalidData,
            ErrorCode::Unavailable => io::ErrorKind::ConnectionRefused,
            ErrorCode::Busy => io::ErrorKind::ResourceBusy,
            ErrorCode::Internal | ErrorCode::Other => io::ErrorKind::Other,
        }
    }

    /// The `demux` CLI's exit status for a command that failed with this code (documented in
    /// `demux --help`): 2 invalid argument (like a bad command line), 3 unavailable,
    /// 4 permission denied, 5 address in use, 6 not found, 7 limit reached, 8 version
    /// mismatch, 1 anything else.
    pub fn exit_status(self) -> u8 {
        match self {
            ErrorCode::InvalidArgument => 2,
            ErrorCode::Unavailable => 3,
            ErrorCode::PermissionDenied => 4,
            ErrorCode::AddressInUse => 5,
            ErrorCode::NotFound => 6,
            ErrorCode::LimitReached => 7,
            ErrorCode::VersionMismatch => 8,
            ErrorCode::Busy | ErrorCode::Internal | ErrorCode::Other => 1,
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_have_stable_wire_names_and_unknown_ones_read_as_other() {
        for code in [
            ErrorCode::AddressInUse,
            ErrorCode::PermissionDenied,
            ErrorCode::InvalidArgument,
            ErrorCode::NotFound,
            ErrorCode::LimitReached,
            ErrorCode::VersionMismatch,
            ErrorCode::Unavailable,
            ErrorCode::Busy,
            ErrorCode::Internal,
        ] {
            let wire = serde_json::to_string(&code).unwrap();
            assert_eq!(wire, format!("\"{}\"", code.as_str()));
            assert_eq!(serde_json::from_str::<ErrorCode>(&wire).unwrap(), code);
            // The errno and the kind agree wherever std maps that errno to a kind.
            let from_errno = io::Error::from_raw_os_error(code.errno()).kind();
            if !matches!(code, ErrorCode::VersionMismatch | ErrorCode::Internal) {
                assert_eq!(from_errno, code.io_kind(), "{code}");
            }
        }
        assert_eq!(
            serde_json::from_str::<ErrorCode>("\"out_of_cheese\"").unwrap(),
            ErrorCode::Other
        );
    }
}
