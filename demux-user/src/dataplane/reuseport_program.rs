//! The `SK_REUSEPORT` program `demux_reuseport` as the dataplane holds it: a second descriptor
//! of the loaded program, attached to the kernel reuseport group of a backing socket with
//! `SO_ATTACH_REUSEPORT_EBPF` (through any member: the kernel's group runs one program).

use std::os::fd::{AsFd as _, BorrowedFd};

use aya::programs::ProgramFd;

use super::ReuseportError;
use crate::sys::socket;

/// The loaded `demux_reuseport` program.
pub(super) struct ReuseportProgram(ProgramFd);

impl ReuseportProgram {
    /// Keeps `fd`, a descriptor of the loaded program.
    pub(super) fn new(fd: ProgramFd) -> Self {
        Self(fd)
    }

    /// Attaches the program to `socket`'s kernel reuseport group, replacing the group's
    /// program if it had one.
    pub(super) fn attach(&self, socket: BorrowedFd<'_>) -> Result<(), ReuseportError> {
        socket::attach_reuseport(&socket, &self.0.as_fd()).map_err(ReuseportError::Attach)
    }

    /// Detaches the program of `socket`'s kernel reuseport group; none attached is no error.
    pub(super) fn detach(socket: BorrowedFd<'_>) -> Result<(), ReuseportError> {
        match socket::detach_reuseport(&socket) {
            Err(error) if error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            result => result.map_err(ReuseportError::Detach),
        }
    }
}
