//! What every object built from this crate carries besides its programs: the panic handler a
//! `no_std` binary needs (the verifier rejects any program that could reach it), and the
//! licence section. Each bin includes it once (`mod runtime;`).

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// GPL-compatible licence: the `demux` program calls GPL-only helpers.
#[link_section = "license"]
#[no_mangle]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
