//! An AF_XDP socket's ring layout, for a process that maps the rings of a socket it was handed
//! (the fast path's client, `crate::fastpath`): `getsockopt(SOL_XDP, XDP_MMAP_OFFSETS)`. The
//! rings themselves are read and written through [`super::shm::Mapping`]'s atomics.

use std::{io, os::fd::AsRawFd};

/// Where the producer index, the consumer index and the descriptors of one ring sit in its
/// mapping, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingOffsets {
    /// The producer index (`u32`).
    pub producer: u64,
    /// The consumer index (`u32`).
    pub consumer: u64,
    /// The first descriptor.
    pub desc: u64,
}

/// The offsets of the rx ring and the fill ring of AF_XDP socket `fd`.
pub fn mmap_offsets(fd: &impl AsRawFd) -> io::Result<(RingOffsets, RingOffsets)> {
    // SAFETY: all-zero is a valid `xdp_mmap_offsets` (plain integers).
    let mut offsets: libc::xdp_mmap_offsets = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libc::xdp_mmap_offsets>() as libc::socklen_t;
    // SAFETY: `offsets` is writable for `len` bytes and `len` is a valid pointer; the kernel
    // writes at most `len` bytes and the new length.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_XDP,
            libc::XDP_MMAP_OFFSETS,
            (&raw mut offsets).cast(),
            &mut len,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    if len as usize != size_of::<libc::xdp_mmap_offsets>() {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!("XDP_MMAP_OFFSETS: {len} bytes, a kernel older than 5.4"),
        ));
    }
    let ring = |r: libc::xdp_ring_offset| RingOffsets {
        producer: r.producer,
        consumer: r.consumer,
        desc: r.desc,
    };
    Ok((ring(offsets.rx), ring(offsets.fr)))
}
