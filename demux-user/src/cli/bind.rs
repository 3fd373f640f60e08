//! `demux bind`: create an endpoint and print its descriptor. Without `--persistent` the
//! endpoint lives as long as this command (until Ctrl-C); with it, the command returns at once
//! and the endpoint lives until `demux close ID`.
//!
//! A UDP endpoint on an address gets its backing socket here: created, set up (`--reuseport`,
//! `--v6only`), bound and connected (`--connect`) with your credentials, so the kernel refuses
//! what it refuses your own sockets, and passed to the daemon, which reads what the kernel
//! delivers to it (fragments, datagrams from this host) into the same sink.

use std::os::fd::AsFd;

use clap::Args;
use demux::{
    backing,
    binding::{Binding, BindingError, Local, Protocol},
    control::{client::Client, BindRequest, Request, Response, SinkSpec},
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
    /// SO_REUSEPORT on the backing socket: share the port with your other endpoints; equal
    /// bindings with it form a group, and a flow sticks to one member (as the kernel's
    /// reuseport groups).
    #[arg(long)]
    pub reuseport: bool,
    /// Join a multicast group on the backing socket (IP_ADD_MEMBERSHIP, IPV6_JOIN_GROUP), so
    /// the host joins (IGMP/MLD) and the group's datagrams to the port reach the endpoint:
    /// GROUP or GROUP%IFACE, repeatable. Binding a group address (239.1.1.1:PORT) does not
    /// join by itself, as with any socket.
    #[arg(long, value_name = "GROUP[%IFACE]")]
    pub join: Vec<backing::Join>,
    /// Prefix and all-ports bindings (root's; they have no backing socket): share the binding
    /// with the other endpoints of this group; a flow sticks to one member.
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
            backed: false,
            to,
            persistent,
        };
        request.binding()?;
        Ok(Request::Bind(request))
    }
}

impl BindArgs {
    /// The backing socket's options for `binding`: `--reuseport`, `--join`.
    pub(crate) fn socket_options(&self, binding: &Binding) -> backing::Options {
        backing::Options {
            reuseport: self.reuseport,
            join: self.join.clone(),
            ..backing::Options::of(binding)
        }
    }

    /// The backing socket of `binding`, if it is one a kernel socket can have (UDP on an
    /// address); `--join` on anything else is refused.
    pub(crate) fn backing_socket(
        &self,
        binding: &Binding,
    ) -> anyhow::Result<Option<std::net::UdpSocket>> {
        let (Protocol::Udp, Local::Addr(local)) = (binding.protocol, binding.local) else {
            if self.reuseport || !self.join.is_empty() {
                anyhow::bail!(
                    "--reuseport and --join set up a UDP socket on one address; {} {} has none",
                    binding.protocol,
                    binding.local
                );
            }
            return Ok(None);
        };
        Ok(Some(backing::open(local, &self.socket_options(binding))?))
    }
}

/// Binds with the backing socket if the binding has one; returns the endpoint's descriptor.
pub(crate) fn bind(
    client: &mut Client,
    request: BindRequest,
    backing: Option<&std::net::UdpSocket>,
) -> anyhow::Result<u32> {
    let (response, _) = client.bind(request, backing.map(AsFd::as_fd))?;
    let Response::Bound { id } = response else {
        anyhow::bail!("the daemon answered bind with something else");
    };
    Ok(id)
}

pub(crate) fn run(args: BindArgs) -> anyhow::Result<()> {
    let Request::Bind(request) = args.request(args.to.clone(), args.persistent)? else {
        unreachable!("request() makes a bind");
    };
    let socket = args.backing_socket(&request.binding()?)?;
    let mut client = args.control.connect()?;
    let id = bind(&mut client, request, socket.as_ref())?;
    println!("{id}");
    if args.persistent {
        return Ok(());
    }
    eprintln!("endpoint {id} is open until this command ends (Ctrl-C); --persistent keeps it");
    super::wait_for_signal()?;
    client.call(Request::Close { id })?;
    Ok(())
}
