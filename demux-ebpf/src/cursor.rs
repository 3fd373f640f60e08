//! The one bounds-checked cursor through which the program reads packet bytes.
//!
//! Every read checks `position + size <= data_end` before it hands out a reference, in the form
//! the verifier understands (a packet pointer compared against `data_end`). No other code in the
//! program touches packet memory; [`write_meta`] does the same for the metadata area.

use core::{
    marker::PhantomData,
    mem::{align_of, size_of},
};

use aya_ebpf::{helpers::generated::bpf_xdp_adjust_meta, programs::XdpContext};

/// A read position inside one packet; views it hands out live as long as the packet (`'a`).
/// It reads the first buffer only; a multi-buffer frame's further bytes count in
/// [`Cursor::remaining`] but are never read.
pub(crate) struct Cursor<'a> {
    start: usize,
    pos: usize,
    end: usize,
    /// Bytes of the frame in fragments after the first buffer.
    beyond: usize,
    packet: PhantomData<&'a XdpContext>,
}

impl<'a> Cursor<'a> {
    /// A cursor at the frame's start; `beyond` bytes follow its first buffer in fragments.
    #[inline(always)]
    pub(crate) fn new(ctx: &'a XdpContext, beyond: usize) -> Self {
        Self {
            start: ctx.data(),
            pos: ctx.data(),
            end: ctx.data_end(),
            beyond,
            packet: PhantomData,
        }
    }

    /// A view of the next `T` in the packet, advancing past it; `None` when the packet ends
    /// first. Header types have an alignment of at most 2 and XDP frames start 2-aligned.
    #[inline(always)]
    pub(crate) fn read<T>(&mut self) -> Option<&'a T> {
        const { assert!(align_of::<T>() <= 2) };
        let len = size_of::<T>();
        if self.pos + len > self.end {
            return None;
        }
        let item = self.pos as *const T;
        self.pos += len;
        // SAFETY: the bounds check above keeps [pos, pos + len) inside the packet.
        Some(unsafe { &*item })
    }

    /// Advances `len` bytes; `None` when the packet ends first.
    #[inline(always)]
    pub(crate) fn skip(&mut self, len: usize) -> Option<()> {
        if self.pos + len > self.end {
            return None;
        }
        self.pos += len;
        Some(())
    }

    /// Offset of the read position from the start of the packet.
    #[inline(always)]
    pub(crate) fn offset(&self) -> usize {
        self.pos - self.start
    }

    /// Bytes left from the read position to the end of the packet, fragments included.
    #[inline(always)]
    pub(crate) fn remaining(&self) -> usize {
        // The linear part first, as a scalar of its own: the verifier refuses arithmetic on
        // `data_end`, which `end + beyond - pos` (how LLVM would reorder the sum) does.
        core::hint::black_box(self.end - self.pos) + self.beyond
    }
}

/// Sizes the metadata area in front of the frame to exactly `size_of::<T>()` and writes `value`
/// there (idempotent: a frame that already carries metadata is resized, not stacked on).
/// `false` when the driver cannot carry metadata; the packet is then unchanged.
#[inline(always)]
pub(crate) fn write_meta<T: Copy>(ctx: &XdpContext, value: &T) -> bool {
    let len = size_of::<T>();
    // A driver without metadata support marks the area invalid with data_meta > data.
    if ctx.metadata() > ctx.data() {
        return false;
    }
    let grow = len as i32 - (ctx.data() - ctx.metadata()) as i32;
    // SAFETY: the helper only moves data_meta; it fails cleanly where metadata is unsupported.
    if grow != 0 && unsafe { bpf_xdp_adjust_meta(ctx.ctx, -grow) } != 0 {
        return false;
    }
    let meta = ctx.metadata();
    if meta + len > ctx.data() {
        return false;
    }
    // SAFETY: the check above keeps [meta, meta + len) inside the metadata area.
    unsafe { core::ptr::write_unaligned(meta as *mut T, *value) };
    true
}
