//! `demux recv`: bind an endpoint for the lifetime of this command and print one line per
//! datagram (peer, local, length, payload). Exits 0 after `--count` datagrams, 1 on timeout.

use std::{
    fmt::Write as _,
    os::unix::net::UnixDatagram,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use clap::{Args, ValueEnum};
use demux::{
    control::{Request, Response},
    sink::{self, SinkSpec},
};

use super::bind::BindArgs;

#[derive(Debug, Args)]
pub struct RecvArgs {
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
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// `PEER -> LOCAL LEN bytes: PAYLOAD` (payload as text, escaped)
    Text,
    /// One JSON object per line, payload in hex.
    Json,
    /// `PEER -> LOCAL LEN HEX`
    Hex,
}

/// The receiving socket's file, removed on drop.
struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

pub fn run(args: RecvArgs) -> anyhow::Result<()> {
    let path = std::env::temp_dir().join(format!("demux-recv-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let socket =
        UnixDatagram::bind(&path).with_context(|| format!("creating {}", path.display()))?;
    let _file = SocketFile(path.clone());
    let mut client = args.bind.control.connect()?;
    let Response::Bound { id } = client.call(args.bind.request(SinkSpec::Unix(path), false))?
    else {
        bail!("the daemon answered bind with something else");
    };
    eprintln!(
        "endpoint {id} bound to {} {}",
        args.bind.protocol, args.bind.local
    );
    let deadline = args
        .timeout
        .map(|secs| Instant::now() + Duration::from_secs_f64(secs));
    let mut buf = vec![0u8; 65_536 + sink::HEADER_LEN];
    let mut received = 0u64;
    while args.count.is_none_or(|count| received < count) {
        let left = match deadline {
            Some(deadline) => match deadline.checked_duration_since(Instant::now()) {
                Some(left) if !left.is_zero() => Some(left),
                _ => bail!(
                    "timeout: {received} of {} datagrams arrived within {} s",
                    args.count.map_or("?".into(), |c| c.to_string()),
                    args.timeout.unwrap_or_default()
                ),
            },
            None => None,
        };
        socket.set_read_timeout(left)?;
        let n = match socket.recv(&mut buf) {
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(e) => return Err(e).context("receiving"),
        };
        let datagram = sink::decode(&buf[..n]).map_err(anyhow::Error::msg)?;
        println!("{}", line(&datagram, args.format));
        received += 1;
    }
    client.call(Request::Close { id })?;
    Ok(())
}

fn line(d: &sink::Received, format: Format) -> String {
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
            "endpoint": d.endpoint, "protocol": d.protocol, "peer": d.peer.to_string(),
            "local": d.local.to_string(), "length": d.payload.len(), "received_ns": d.received_ns,
            "payload_hex": hex,
        })
        .to_string(),
    }
}
