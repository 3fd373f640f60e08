//! A request/response server: each datagram steered to its endpoint is answered through an
//! ordinary kernel UDP socket. Only receiving is steered; replies leave through the kernel.
//!
//! ```sh
//! cargo run --release --example echo_server -- /run/demux-demo/control.sock 198.18.0.2:7000
//! ```
//! Arguments: control socket, a local socket address. Runs until interrupted.

use std::net::{SocketAddr, UdpSocket};

use demux::{binding::Protocol, client::Endpoint};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, control, local] = args.as_slice() else {
        return Err("usage: echo_server CONTROL_SOCKET ADDR:PORT".into());
    };
    let local: SocketAddr = local.parse()?;
    let mut endpoint = Endpoint::bind(control, Protocol::Udp, &local.to_string())?;
    // The kernel socket only sends: demux steers everything addressed to `local` away from it.
    // It is bound to the same address, so replies come from the address the client asked.
    let replies = UdpSocket::bind(local)?;
    eprintln!("echoing on {local} (endpoint {})", endpoint.id());
    while let Some(request) = endpoint.recv_from(None)? {
        let mut answer = b"echo: ".to_vec();
        answer.extend_from_slice(&request.payload);
        replies.send_to(&answer, request.peer)?;
    }
    Ok(())
}
