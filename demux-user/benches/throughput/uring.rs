//! The `kernel_iouring` receiver's io_uring, behind a safe type: one multishot `recvmsg` on a
//! UDP socket drawing from a ring of provided buffers, so the kernel posts one completion per
//! datagram without a system call per datagram or per batch re-arm; the thread enters the
//! kernel only to wait for (and, with `DEFER_TASKRUN`, to run) completions. The ring is set up
//! `SINGLE_ISSUER | DEFER_TASKRUN` and without SQPOLL (no kernel thread polling on another
//! CPU), so the whole receive path runs on the receiving thread's CPU like the other kernel
//! receivers. With `sys`, the only `unsafe` of this benchmark.

use std::{
    io,
    net::UdpSocket,
    os::fd::AsRawFd,
    sync::atomic::{AtomicU16, Ordering},
    time::Duration,
};

use io_uring::{cqueue, opcode, types, IoUring};

/// Provided buffers: a power of two, at most 32,768.
const BUFFERS: u16 = 4096;
/// Bytes per provided buffer: the completion header (16 bytes) and a datagram of up to 2,032.
const BUF_SIZE: usize = 2048;
/// The buffer group of the provided buffers.
const GROUP: u16 = 0;
/// `user_data` of the multishot receive.
const RECV: u64 = 1;

/// A multishot receive on one socket and the buffers it draws from.
pub(crate) struct UringReceiver {
    ring: IoUring,
    /// The buffer ring shared with the kernel: `BUFFERS` entries, page-aligned (mmap).
    entries: *mut types::BufRingEntry,
    /// Buffer `i` is `bufs[i * BUF_SIZE ..][..BUF_SIZE]`; never resized, so the addresses
    /// handed to the kernel stay valid while the ring lives.
    bufs: Vec<u8>,
    /// The template the multishot receive reads (no name, no control data); boxed, so its
    /// address stays fixed while the receive is armed.
    msghdr: Box<libc::msghdr>,
    /// Buffers handed to the kernel, ever (wrapping): the buffer ring's tail.
    tail: u16,
    fd: i32,
    /// The receive must be armed again (it ended: out of buffers, or an error).
    rearm: bool,
}

// SAFETY: the raw pointer only points at the receiver's own mapping; the io_uring is used by
// one thread at a time (`SINGLE_ISSUER`: the thread that created it, which is the one that
// reads from it in the bench).
unsafe impl Send for UringReceiver {}

fn ring_bytes() -> usize {
    usize::from(BUFFERS) * std::mem::size_of::<types::BufRingEntry>()
}

impl UringReceiver {
    /// Sets up the ring on `socket` (which must outlive the receiver) and arms the receive.
    /// Call from the thread that will read.
    pub(crate) fn new(socket: &UdpSocket) -> io::Result<Self> {
        let ring = IoUring::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .build(256)?;
        // SAFETY: an anonymous private mapping; the result is checked before use.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                ring_bytes(),
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if map == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: msghdr is plain data; all-zero means no name, no control data, no iovecs
        // (a multishot recvmsg takes its buffer from the group).
        let msghdr: Box<libc::msghdr> = Box::new(unsafe { std::mem::zeroed() });
        let mut receiver = Self {
            ring,
            entries: map.cast(),
            bufs: vec![0u8; usize::from(BUFFERS) * BUF_SIZE],
            msghdr,
            tail: 0,
            fd: socket.as_raw_fd(),
            rearm: true,
        };
        // SAFETY: `entries` is a page-aligned mapping of BUFFERS entries that lives until
        // `Drop` unregisters it.
        unsafe {
            receiver.ring.submitter().register_buf_ring_with_flags(
                receiver.entries as u64,
                BUFFERS,
                GROUP,
                0,
            )?;
        }
        for bid in 0..BUFFERS {
            receiver.provide(bid);
        }
        receiver.publish();
        Ok(receiver)
    }

    /// Puts buffer `bid` at the tail of the buffer ring (visible to the kernel at `publish`).
    fn provide(&mut self, bid: u16) {
        let index = usize::from(self.tail & (BUFFERS - 1));
        let addr = self.bufs[usize::from(bid) * BUF_SIZE..].as_ptr() as u64;
        // SAFETY: `index` < BUFFERS, inside the mapping; the kernel only reads entries between
        // its head and the published tail, and this one is past the tail until `publish`.
        let entry = unsafe { &mut *self.entries.add(index) };
        entry.set_addr(addr);
        entry.set_len(BUF_SIZE as u32);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    /// Publishes the tail: the kernel may use every buffer provided so far.
    fn publish(&self) {
        // SAFETY: the tail field overlays the first entry's reserved word, which the kernel
        // reads and only this thread writes; it is 2-aligned inside the mapping.
        let tail = unsafe { &*types::BufRingEntry::tail(self.entries).cast::<AtomicU16>() };
        tail.store(self.tail, Ordering::Release);
    }

    /// Waits up to `timeout` for datagrams, calls `each` with every one that arrived, and
    /// returns how many.
    pub(crate) fn recv(&mut self, timeout: Duration, mut each: impl FnMut(&[u8])) -> usize {
        if std::mem::take(&mut self.rearm) {
            let entry =
                opcode::RecvMsgMulti::new(types::Fd(self.fd), &raw const *self.msghdr, GROUP)
                    .build()
                    .user_data(RECV);
            // SAFETY: the msghdr and the buffers outlive the armed receive (the ring is
            // dropped first, see `Drop`). The queue has room: at most one entry is queued.
            if unsafe { self.ring.submission().push(&entry) }.is_err() {
                self.rearm = true;
            }
        }
        let ts = types::Timespec::from(timeout);
        let args = types::SubmitArgs::new().timespec(&ts);
        // ETIME (nothing within the timeout) and EINTR just end this wait.
        let _ = self.ring.submitter().submit_with_args(1, &args);
        let mut n = 0;
        let mut recycled = Vec::new();
        for cqe in self.ring.completion() {
            if !cqueue::more(cqe.flags()) {
                self.rearm = true;
            }
            let Some(bid) = cqueue::buffer_select(cqe.flags()) else {
                continue;
            };
            recycled.push(bid);
            let Ok(len) = usize::try_from(cqe.result()) else {
                continue;
            };
            let start = usize::from(bid) * BUF_SIZE;
            let buffer = &self.bufs[start..start + len.min(BUF_SIZE)];
            if let Ok(out) = types::RecvMsgOut::parse(buffer, &self.msghdr) {
                each(out.payload_data());
                n += 1;
            }
        }
        for bid in recycled {
            self.provide(bid);
        }
        self.publish();
        n
    }
}

impl Drop for UringReceiver {
    fn drop(&mut self) {
        // The kernel stops using the buffers when the group goes; then the mapping can go.
        let _ = self.ring.submitter().unregister_buf_ring(GROUP);
        // SAFETY: the mapping made in `new`, no longer registered with the kernel.
        unsafe {
            libc::munmap(self.entries.cast(), ring_bytes());
        }
    }
}
