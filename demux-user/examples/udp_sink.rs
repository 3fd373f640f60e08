//! A UDP sink that prints how many datagrams per second arrive on an endpoint.
//!
//! ```sh
//! cargo run --release --example udp_sink -- /run/demux-demo/control.sock 0.0.0.0:5000 10
//! ```
//! Arguments: control socket, local address (any form `demux bind` takes), seconds to run, and
//! optionally an interface: then it asks for the fast path there (it reads the interface's
//! queues itself; granted when the daemon's `fast_path_uid` is this uid and this is the
//! daemon's only endpoint) and reads its ring when refused.

use std::time::{Duration, Instant};

use demux::{binding::Protocol, client::Endpoint};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let (control, local, seconds, iface) = match args.as_slice() {
        [_, control, local, seconds] => (control, local, seconds, None),
        [_, control, local, seconds, iface] => (control, local, seconds, Some(iface)),
        _ => return Err("usage: udp_sink CONTROL_SOCKET LOCAL SECONDS [IFACE]".into()),
    };
    let seconds: u64 = seconds.parse()?;
    let mut endpoint = Endpoint::bind(control, Protocol::Udp, local)?;
    eprintln!("endpoint {} on {local}", endpoint.id().unwrap_or_default());
    if let Some(iface) = iface {
        match endpoint.fast_path(iface) {
            Ok(()) => eprintln!("fast path on {iface}"),
            Err(e) => eprintln!("fast path refused ({e}); reading the ring"),
        }
    }
    let end = Instant::now() + Duration::from_secs(seconds);
    let (mut total, mut this_second, mut bytes) = (0u64, 0u64, 0u64);
    let mut tick = Instant::now() + Duration::from_secs(1);
    while Instant::now() < end {
        // Drain what is there without system calls; sleep on the ring only when it is empty.
        let n = endpoint.recv_batch(256, |d| bytes += d.payload.len() as u64)?;
        if n == 0 {
            if let Some(d) =
                endpoint.recv_from(Some(tick.saturating_duration_since(Instant::now())))?
            {
                bytes += d.payload.len() as u64;
                this_second += 1;
            }
        }
        this_second += n as u64;
        if Instant::now() >= tick {
            println!("{this_second} datagrams/s");
            total += this_second;
            this_second = 0;
            tick += Duration::from_secs(1);
        }
    }
    total += this_second;
    println!("{total} datagrams, {bytes} payload bytes in {seconds} s");
    Ok(())
}
