//! A request/response server: each datagram to its endpoint is answered through the endpoint's
//! own backing socket, so replies come from the address the client asked.
//!
//! ```sh
//! cargo run --release --example echo_server -- /run/demux-demo/control.sock 198.18.0.2:7000
//! ```
//! Arguments: control socket, a local socket address, and optionally an interface to ask the
//! fast path on (see `udp_sink`). Runs until interrupted.

use std::net::SocketAddr;

use demux::{binding::Protocol, client::Endpoint};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let (control, local, iface) = match args.as_slice() {
        [_, control, local] => (control, local, None),
        [_, control, local, iface] => (control, local, Some(iface)),
        _ => return Err("usage: echo_server CONTROL_SOCKET ADDR:PORT [IFACE]".into()),
    };
    let local: SocketAddr = local.parse()?;
    let mut endpoint = Endpoint::bind(control, Protocol::Udp, &local.to_string())?;
    eprintln!(
        "echoing on {local} (endpoint {})",
        endpoint.id().unwrap_or_default()
    );
    if let Some(iface) = iface {
        match endpoint.fast_path(iface) {
            Ok(()) => eprintln!("fast path on {iface}"),
            Err(e) => eprintln!("fast path refused ({e}); reading the ring"),
        }
    }
    while let Some(request) = endpoint.recv_from(None)? {
        let mut answer = b"echo: ".to_vec();
        answer.extend_from_slice(&request.payload);
        endpoint.socket().send_to(&answer, request.peer)?;
    }
    Ok(())
}
