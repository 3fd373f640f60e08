//! `demux recv`: bind an endpoint for the lifetime of this command and print one line per
//! datagram (peer, local, length, payload). It receives through the client library's
//! shared-memory ring and its backing socket, like any application (a UDP socket address only).
//! Exits 0 after `--count` datagrams, 1 on timeout.

use std::{
    fmt::Write as _,
    time::{Duration, Instant},
};

use anyhow::bail;
use clap::{Args, ValueEnum};
use demux::{
    client::{Datagram, Endpoint},
    control::{Request, SinkSpec},
};

use super::bind::BindArgs;

#[derive(Debug, Args)]
pub(crate) struct RecvArgs {
    #[command(flatten)]
    pub bind: BindArgs,
    /// Exit after this many datagrams.
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
    /// Give up (exit 1) when the datagrams have not all arrived after this many seconds.
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<f64>,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// Read the AF_XDP queues of IFACE directly, with no daemon thread in between: a lease,
    /// granted only while this is the daemon's only endpoint (see "The fast path" in
    /// docs/ARCHITECTURE.md). Refused, the endpoint reads its ring as without this flag.
    #[arg(long, value_name = "IFACE")]
    pub fast_path: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Format {
    /// `PEER -> LOCAL LEN bytes: PAYLOAD` (payload as text, escaped)
    Text,
    /// One JSON object per line, payload in hex.
    Json,
    /// `PEER -> LOCAL LEN HEX`
    Hex,
}

pub(crate) fn run(args: RecvArgs) -> anyhow::Result<()> {
    let b = &args.bind;
    let Request::Bind(request) = b.request(
        SinkSpec::Ring {
            slots: demux::ring::DEFAULT_SLOTS,
        },
        false,
    )?
    else {
        unreachable!("request() makes a bind");
    };
    let options = b.socket_options(&request.binding()?);
    let mut endpoint = Endpoint::bind_with(&b.control.control, request, Some(options))?;
    match endpoint.id() {
        Some(id) => eprintln!("endpoint {id} bound to {} {}", b.protocol, b.local),
        None => eprintln!(
            "{} {}: the daemon is busy (another client's fast path); the kernel socket serves \
             it until the daemon takes it",
            b.protocol, b.local
        ),
    }
    if let Some(iface) = &args.fast_path {
        match endpoint.fast_path(iface) {
            Ok(()) => eprintln!("fast path on {iface}"),
            Err(e) => eprintln!("fast path on {iface} refused, reading the ring: {e}"),
        }
    }
    let deadline = args
        .timeout
        .map(|secs| Instant::now() + Duration::from_secs_f64(secs));
    let mut received = 0u64;
    while args.count.is_none_or(|count| received < count) {
        let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        match endpoint.recv_from(left)? {
            Some(datagram) => {
                println!("{}", line(&datagram, args.format));
                received += 1;
            }
            None => bail!(
                "timeout: {received} of {} datagrams arrived within {} s",
                args.count.map_or("?".into(), |c| c.to_string()),
                args.timeout.unwrap_or_default()
            ),
        }
    }
    Ok(())
}

fn line(d: &Datagram, format: Format) -> String {
    let hex = d.payload.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    });
    match format {
        Format::Text => format!(
            "{} -> {} {} bytes: {}",
            d.peer,
            d.local,
            d.payload.len(),
            d.payload.escape_ascii()
        ),
        Format::Hex => format!("{} -> {} {} {hex}", d.peer, d.local, d.payload.len()),
        Format::Json => serde_json::json!({
            "protocol": d.protocol, "peer": d.peer.to_string(), "local": d.local.to_string(),
            "length": d.payload.len(), "received_ns": d.received_ns, "payload_hex": hex,
        })
        .to_string(),
    }
}
