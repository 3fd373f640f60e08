//! `demux bind`: create an endpoint and print its descriptor. Without `--persistent` the
//! endpoint lives as long as this command (until Ctrl-C); with it, the command returns at once
//! and the endpoint lives until `demux close ID`.

use clap::Args;
use demux::{
    binding::{BindingError, Protocol},
    control::{BindRequest, Request, Response, SinkSpec},
};

use super::ControlArgs;

#[derive(Debug, Args)]
pub(crate) struct BindArgs {
    /// udp or tcp.
    #[arg(value_name = "PROTOCOL")]
    pub protocol: Protocol,
    /// 198.18.0.1:9000, 0.0.0.0:53, [::]:53, [2001:2::1]:53, 198.18.0.0/15:53, 198.18.0.0/15:*
    pub local: String,
    /// Only packets from this remote socket address (a connected binding).
    #[arg(long, value_name = "REMOTE")]
    pub connect: Option<String>,
    /// Share the binding with the other endpoints of this group; a flow sticks to one member.
    #[arg(long, value_name = "NAME")]
    pub group: Option<String>,
    /// For [::]:PORT: do not receive IPv4.
    #[arg(long)]
    pub v6only: bool,
    /// Where datagrams go: unix:PATH, count, pcap:PATH. This command opens a pcap file or
    /// connects to a unix socket itself, with your permissions, and passes it to the daemon.
    #[arg(long, value_name = "SINK", default_value = "count")]
    pub to: SinkSpec,
    /// Keep the endpoint after this command ends (close it with `demux close ID`).
    #[arg(long)]
    pub persistent: bool,
    #[command(flatten)]
    pub control: ControlArgs,
}

impl BindArgs {
    /// The bind request, checked before connecting (`300.1.1.1:5` is refused here).
    pub(crate) fn request(&self, to: SinkSpec, persistent: bool) -> Result<Request, BindingError> {
        let request = BindRequest {
            protocol: self.protocol,
            local: self.local.clone(),
            connect: self.connect.clone(),
            group: self.group.clone(),
            v6only: self.v6only,
            to,
            persistent,
        };
        request.binding()?;
        Ok(Request::Bind(request))
    }
}

pub(crate) fn run(args: BindArgs) -> anyhow::Result<()> {
    let request = args.request(args.to.clone(), args.persistent)?;
    let mut client = args.control.connect()?;
    let Response::Bound { id } = client.call(request)? else {
        anyhow::bail!("the daemon answered bind with something else");
    };
    println!("{id}");
    if args.persistent {
        return Ok(());
    }
    eprintln!("endpoint {id} is open until this command ends (Ctrl-C); --persistent keeps it");
    super::wait_for_signal()?;
    client.call(Request::Close { id })?;
    Ok(())
}
