//! Memory mappings: a ring's memfd shared with another process, or anonymous memory for a
//! UMEM. All access is bounds-checked: an offset outside the mapping or misaligned for its
//! atomic panics instead of touching memory it should not.
//!
//! Shared memory can change under us at any time (the other process writes it): the byte
//! views here are for regions the ring protocol hands to one side at a time, and whatever the
//! other side wrote there is only ever read as plain bytes, valid in any pattern.

use std::{
    io,
    os::fd::AsRawFd,
    ptr::NonNull,
    sync::atomic::{AtomicU32, AtomicU64},
};

/// A mapping, unmapped on drop.
pub struct Mapping {
    base: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain memory; cross-thread access goes through atomics or through
// regions that the ring protocol hands to one side at a time.
unsafe impl Send for Mapping {}
// SAFETY: as above; `&self` methods only hand out atomics and byte views.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps the first `len` bytes of `fd`, shared with whoever else maps it.
    pub fn shared(fd: &impl AsRawFd, len: usize) -> io::Result<Self> {
        Self::map(len, libc::MAP_SHARED, fd.as_raw_fd())
    }

    /// Fresh, zeroed, page-aligned private memory of `len` bytes, populated at once.
    pub fn anonymous(len: usize) -> io::Result<Self> {
        Self::map(
            len,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
            -1,
        )
    }

    /// Maps `len` bytes of `fd` from `offset` (a multiple of the page size, or one of the
    /// kernel's special offsets, such as an AF_XDP socket's rings), shared, populated at once;
    /// read-only unless `writable`.
    pub fn shared_at(
        fd: &impl AsRawFd,
        len: usize,
        offset: u64,
        writable: bool,
    ) -> io::Result<Self> {
        let prot = match writable {
            true => libc::PROT_READ | libc::PROT_WRITE,
            false => libc::PROT_READ,
        };
        let offset = libc::off_t::try_from(offset)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "offset out of range"))?;
        Self::map_with(
            len,
            prot,
            libc::MAP_SHARED | libc::MAP_POPULATE,
            fd.as_raw_fd(),
            offset,
        )
    }

    fn map(len: usize, flags: i32, fd: i32) -> io::Result<Self> {
        Self::map_with(len, libc::PROT_READ | libc::PROT_WRITE, flags, fd, 0)
    }

    fn map_with(
        len: usize,
        prot: i32,
        flags: i32,
        fd: i32,
        offset: libc::off_t,
    ) -> io::Result<Self> {
        if len == 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "empty mapping"));
        }
        // SAFETY: a new mapping chosen by the kernel; no existing memory is touched. The
        // result is checked for failure below.
        let ptr = unsafe { libc::mmap(std::ptr::null_mut(), len, prot, flags, fd, offset) };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base = NonNull::new(ptr.cast()).ok_or_else(io::Error::last_os_error)?;
        Ok(Self { base, len })
    }

    /// Bytes mapped.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Never true: an empty mapping cannot be made.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The whole mapping as a raw region (to register it as a UMEM).
    pub fn region(&self) -> NonNull<[u8]> {
        NonNull::slice_from_raw_parts(self.base, self.len)
    }

    #[inline]
    fn checked(&self, offset: usize, size: usize, align: usize) -> *mut u8 {
        assert!(
            offset.is_multiple_of(align)
                && offset.checked_add(size).is_some_and(|end| end <= self.len),
            "{size} bytes at {offset} are outside the {}-byte mapping or misaligned",
            self.len
        );
        // SAFETY: in bounds, checked just above.
        unsafe { self.base.as_ptr().add(offset) }
    }

    /// The `u32` at `offset` (4-aligned, inside the mapping).
    #[inline]
    pub fn u32_at(&self, offset: usize) -> &AtomicU32 {
        let at = self.checked(offset, 4, 4);
        // SAFETY: in bounds and 4-aligned (the mapping is page aligned); any bit pattern is a
        // valid u32, and AtomicU32 has u32's layout.
        unsafe { &*at.cast::<AtomicU32>() }
    }

    /// The `u64` at `offset` (8-aligned, inside the mapping).
    #[inline]
    pub fn u64_at(&self, offset: usize) -> &AtomicU64 {
        let at = self.checked(offset, 8, 8);
        // SAFETY: as `u32_at`, 8-aligned.
        unsafe { &*at.cast::<AtomicU64>() }
    }

    /// `len` bytes at `offset`.
    #[inline]
    pub fn bytes(&self, offset: usize, len: usize) -> &[u8] {
        let at = self.checked(offset, len, 1);
        // SAFETY: in bounds; bytes are valid in any pattern (see the module comment for memory
        // the other side may write).
        unsafe { std::slice::from_raw_parts(at, len) }
    }

    /// Writes `parts` one after the other from `offset`.
    pub fn write(&self, offset: usize, parts: &[&[u8]]) {
        let total = parts.iter().map(|p| p.len()).sum();
        let mut at = self.checked(offset, total, 1);
        for part in parts {
            // SAFETY: inside the `total` bytes checked above; `part` is our own memory, so the
            // two do not overlap.
            unsafe {
                std::ptr::copy_nonoverlapping(part.as_ptr(), at, part.len());
                at = at.add(part.len());
            }
        }
    }

    /// The whole mapping, for memory this process alone writes (a UMEM).
    pub fn as_slice(&self) -> &[u8] {
        self.bytes(0, self.len)
    }

    /// The whole mapping, writable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: the whole mapping, alive as long as `self`; `&mut self` makes this the only
        // view from this process.
        unsafe { std::slice::from_raw_parts_mut(self.base.as_ptr(), self.len) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `map` mapped; every view borrowed `self`, so none is
        // left.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_is_bounds_checked() {
        let map = Mapping::anonymous(4096).unwrap();
        map.u64_at(8).store(7, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(map.bytes(8, 8), 7u64.to_ne_bytes());
        map.write(4090, &[b"ab", b"cdef"]);
        assert_eq!(map.bytes(4090, 6), b"abcdef");
        for bad in [
            std::panic::catch_unwind(|| {
                map.u32_at(4094);
            }),
            std::panic::catch_unwind(|| {
                map.u32_at(2);
            }),
            std::panic::catch_unwind(|| {
                map.bytes(4000, 97);
            }),
            std::panic::catch_unwind(|| map.write(usize::MAX, &[b"x"])),
        ] {
            assert!(bad.is_err());
        }
    }
}
