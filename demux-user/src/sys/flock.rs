//! Advisory locks on open files (`flock(2)`): libxdp's multi-program lock is an exclusive
//! `flock` on its bpffs state directory, released when the descriptor closes.

use std::{fs::File, io, os::fd::AsRawFd};

/// Blocks until this process holds the exclusive lock on `file` (`LOCK_EX`). The lock goes with
/// the open file: closing (dropping) `file` releases it.
pub fn lock_exclusive(file: &File) -> io::Result<()> {
    loop {
        // SAFETY: plain flock(2) on a descriptor `file` owns for the call.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } == 0 {
            return Ok(());
        }
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
}
