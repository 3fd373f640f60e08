//! A request/response server: each datagram to its endpoint is answered through the endpoint's
//! own backing socket, so replies come from the address the client asked.
//!
//! ```sh
//! cargo run --release --example echo_server -- /run/demux-demo/control.sock 198.18.0.2:7000
//! ```
//! Arguments: control socket, a local socket address. Runs until interrupted.

use std::net::SocketAddr;

use demux::{binding::Protocol, client::Endpoint};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, control, local] = args.as_slice() else {
        return Err("usage: echo_server CONTROL_SOCKET ADDR:PORT".into());
    };
    let local: SocketAddr = local.parse()?;
    let mut endpoint = Endpoint::bind(control, Protocol::Udp, &local.to_string())?;
    eprintln!(
        "echoing on {local} (endpoint {})",
        endpoint.id().unwrap_or_default()
    );
    while let Some(request) = endpoint.recv_from(None)? {
        let mut answer = b"echo: ".to_vec();
        answer.extend_from_slice(&request.payload);
        endpoint.socket().send_to(&answer, request.peer)?;
    }
    Ok(())
}
