//! Hand-written data-plane fixtures in the Katran style: (description, frame, tables, expected
//! verdict and endpoint). The model's unit tests and the privileged BPF_PROG_TEST_RUN test run
//! the same table, so the program and its reference agree on every rule written here. Every
//! fixture runs on the host view of [`host`]: local routes and the test interface's MAC.

use std::net::SocketAddr;

use demux_common::{
    hash::{flow_hash, FlowKey},
    Verdict,
};

use crate::{
    binding::{addr16, Binding, Local, Protocol, Receiver},
    dataplane::{LocalKind, LocalPrefix},
    testing::{
        frame::{FrameSpec, EXT_DEST_OPTS, EXT_FRAGMENT, EXT_HOP_BY_HOP, EXT_ROUTING},
        model::{Host, TEST_RUN_IFINDEX},
    },
};

/// One fixture. `endpoint` is the endpoint the metadata must name when a binding matched.
#[derive(Clone, Debug)]
pub struct Fixture {
    pub name: String,
    pub frame: Vec<u8>,
    pub bindings: Vec<(Binding, Receiver)>,
    pub groups: Vec<(u32, Vec<u32>)>,
    pub verdict: Verdict,
    pub endpoint: Option<u32>,
}

/// The test interface's own MAC: `FrameSpec`'s default destination.
pub const OWN_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

/// The host every fixture runs on, as the kernel's local table would describe a host with
/// 198.18.0.2/30 and 2001:2::2/64 on its interface, `ip route add local 198.18.8.0/24`, and
/// loopback; its interface (the one BPF_PROG_TEST_RUN uses) has [`OWN_MAC`].
pub fn host() -> Host {
    let route = |text: &str, kind| {
        let (addr, len) = text.split_once('/').expect("addr/len");
        (
            LocalPrefix {
                addr: addr.parse().expect("fixture address"),
                len: len.parse().expect("fixture length"),
            },
            kind,
        )
    };
    Host {
        local: vec![
            route("198.18.0.2/32", LocalKind::Local),
            route("198.18.0.3/32", LocalKind::Broadcast),
            route("198.18.8.0/24", LocalKind::Local),
            route("198.18.8.255/32", LocalKind::Broadcast),
            route("127.0.0.0/8", LocalKind::Local),
            route("127.255.255.255/32", LocalKind::Broadcast),
            route("2001:2::2/128", LocalKind::Local),
            route("::1/128", LocalKind::Local),
        ],
        macs: [(TEST_RUN_IFINDEX, OWN_MAC)].into(),
    }
}

const CLIENT4: &str = "198.18.0.1:40000";
const SERVER4: &str = "198.18.0.2:53";
const CLIENT6: &str = "[2001:2::1]:40000";
const SERVER6: &str = "[2001:2::2]:53";

fn sa(text: &str) -> SocketAddr {
    text.parse().expect("fixture address")
}

fn bind(protocol: Protocol, local: &str) -> Binding {
    Binding {
        protocol,
        local: Local::Addr(sa(local)),
        remote: None,
        v6only: false,
    }
}

fn udp(local: &str) -> Binding {
    bind(Protocol::Udp, local)
}

fn connected(local: &str, remote: &str) -> Binding {
    Binding {
        remote: Some(sa(remote)),
        ..udp(local)
    }
}

fn prefix(net: &str, len: u8, port: Option<u16>) -> Binding {
    Binding {
        protocol: Protocol::Udp,
        local: Local::Prefix {
            addr: net.parse().expect("fixture prefix"),
            len,
            port,
        },
        remote: None,
        v6only: false,
    }
}

fn ep(id: u32) -> Receiver {
    Receiver::Endpoint(id)
}

fn udp4() -> FrameSpec {
    FrameSpec::udp(sa(CLIENT4), sa(SERVER4), b"hello")
}

fn udp6() -> FrameSpec {
    FrameSpec::udp(sa(CLIENT6), sa(SERVER6), b"hello")
}

/// A catch-all binding set used by the parsing fixtures: any UDP or TCP to port 53.
fn catch_all() -> Vec<(Binding, Receiver)> {
    vec![
        (udp("[::]:53"), ep(1)),
        (bind(Protocol::Tcp, "[::]:53"), ep(2)),
    ]
}

struct Builder(Vec<Fixture>);

impl Builder {
    fn add(
        &mut self,
        name: &str,
        frame: Vec<u8>,
        bindings: Vec<(Binding, Receiver)>,
        verdict: Verdict,
        endpoint: Option<u32>,
    ) {
        self.0.push(Fixture {
            name: name.to_owned(),
            frame,
            bindings,
            groups: Vec::new(),
            verdict,
            endpoint,
        });
    }

    fn steered(
        &mut self,
        name: &str,
        frame: Vec<u8>,
        bindings: Vec<(Binding, Receiver)>,
        endpoint: u32,
    ) {
        self.add(name, frame, bindings, Verdict::PassNoSocket, Some(endpoint));
    }

    fn passed(&mut self, name: &str, frame: Vec<u8>, verdict: Verdict) {
        self.add(name, frame, catch_all(), verdict, None);
    }
}

/// Every fixture. Frames are steered to endpoints, but no AF_XDP socket is in the XSKMAP under
/// BPF_PROG_TEST_RUN, so a match ends as `PassNoSocket` with the endpoint in the metadata.
pub fn all(flow_key: &FlowKey) -> Vec<Fixture> {
    use Verdict::*;
    let mut f = Builder(Vec::new());
    let frame4 = udp4().build();
    let frame6 = udp6().build();

    // Precedence.
    f.steered(
        "connected beats bound",
        frame4.clone(),
        vec![(udp(SERVER4), ep(2)), (connected(SERVER4, CLIENT4), ep(1))],
        1,
    );
    f.steered(
        "connected needs the remote port",
        frame4.clone(),
        vec![
            (connected(SERVER4, "198.18.0.1:40001"), ep(1)),
            (udp(SERVER4), ep(2)),
        ],
        2,
    );
    f.steered(
        "bound beats prefix",
        frame4.clone(),
        vec![
            (prefix("198.18.0.0", 15, Some(53)), ep(3)),
            (udp(SERVER4), ep(2)),
        ],
        2,
    );
    f.steered(
        "prefix beats wildcard",
        frame4.clone(),
        vec![
            (udp("0.0.0.0:53"), ep(4)),
            (prefix("198.18.0.0", 15, None), ep(3)),
        ],
        3,
    );
    f.steered(
        "longer prefix on the port beats shorter all-ports",
        frame4.clone(),
        vec![
            (prefix("198.18.0.0", 15, None), ep(3)),
            (prefix("198.18.0.0", 24, Some(53)), ep(5)),
        ],
        5,
    );
    f.steered(
        "longer all-ports prefix beats shorter on the port",
        frame4.clone(),
        vec![
            (prefix("198.18.0.0", 16, Some(53)), ep(5)),
            (prefix("198.18.0.0", 24, None), ep(6)),
        ],
        6,
    );
    f.steered(
        "equal prefixes: the port beats all-ports",
        frame4.clone(),
        vec![
            (prefix("198.18.0.0", 24, None), ep(6)),
            (prefix("198.18.0.0", 24, Some(53)), ep(5)),
        ],
        5,
    );
    f.steered(
        "a /32 prefix is a prefix",
        frame4.clone(),
        vec![
            (prefix("198.18.0.2", 32, None), ep(6)),
            (udp("0.0.0.0:53"), ep(4)),
        ],
        6,
    );
    f.steered(
        "a /0 prefix takes every address",
        frame4.clone(),
        vec![(prefix("0.0.0.0", 0, None), ep(6))],
        6,
    );
    f.add(
        "a prefix on another port does not match",
        frame4.clone(),
        vec![(prefix("198.18.0.0", 15, Some(54)), ep(5))],
        PassNoMatch,
        None,
    );
    f.add(
        "an IPv6 prefix does not take IPv4",
        frame4.clone(),
        vec![(prefix("::", 0, None), ep(5))],
        PassNoMatch,
        None,
    );
    f.steered(
        "IPv4 wildcard beats dual-stack IPv6 wildcard",
        frame4.clone(),
        vec![(udp("[::]:53"), ep(7)), (udp("0.0.0.0:53"), ep(4))],
        4,
    );
    f.steered(
        "dual-stack IPv6 wildcard receives IPv4",
        frame4.clone(),
        vec![(udp("[::]:53"), ep(7))],
        7,
    );
    let v6only = Binding {
        v6only: true,
        ..udp("[::]:53")
    };
    f.add(
        "v6-only wildcard never receives IPv4",
        frame4.clone(),
        vec![(v6only, ep(7))],
        PassNoMatch,
        None,
    );
    f.steered(
        "v6-only wildcard receives IPv6",
        frame6.clone(),
        vec![(v6only, ep(7))],
        7,
    );
    f.add(
        "IPv4 wildcard does not receive IPv6",
        frame6.clone(),
        vec![(udp("0.0.0.0:53"), ep(4))],
        PassNoMatch,
        None,
    );
    f.add(
        "bound to another address",
        frame4.clone(),
        vec![(udp("198.18.0.3:53"), ep(2))],
        PassNoMatch,
        None,
    );
    f.add(
        "bound to another port",
        frame4.clone(),
        vec![(udp("198.18.0.2:54"), ep(2))],
        PassNoMatch,
        None,
    );
    f.add(
        "TCP binding does not take UDP",
        frame4.clone(),
        vec![(bind(Protocol::Tcp, SERVER4), ep(2))],
        PassNoMatch,
        None,
    );
    f.steered(
        "TCP to a TCP binding",
        FrameSpec::tcp(sa(CLIENT4), sa(SERVER4), b"").build(),
        vec![(bind(Protocol::Tcp, SERVER4), ep(2))],
        2,
    );
    f.steered(
        "IPv6 connected beats bound",
        frame6.clone(),
        vec![(udp(SERVER6), ep(2)), (connected(SERVER6, CLIENT6), ep(1))],
        1,
    );
    f.steered(
        "IPv6 prefix",
        frame6.clone(),
        vec![
            (prefix("2001:2::", 48, Some(53)), ep(5)),
            (udp("[::]:53"), ep(7)),
        ],
        5,
    );
    f.add(
        "no bindings at all",
        frame4.clone(),
        vec![],
        PassNoMatch,
        None,
    );

    // Groups: a flow sticks to members[hash % count].
    let members = vec![11, 12, 13];
    let hash = flow_hash(
        flow_key,
        &addr16(sa(CLIENT4).ip()),
        &addr16(sa(SERVER4).ip()),
        40000,
        53,
    );
    f.0.push(Fixture {
        name: "group member by flow hash".into(),
        frame: frame4.clone(),
        bindings: vec![(udp(SERVER4), Receiver::Group(1))],
        groups: vec![(1, members.clone())],
        verdict: PassNoSocket,
        endpoint: Some(members[hash as usize % members.len()]),
    });
    // A 32-member group, eight flows per family: which member each gets depends on the key.
    let members: Vec<u32> = (100..132).collect();
    for (client, server) in [(CLIENT4, SERVER4), (CLIENT6, SERVER6)] {
        for sport in 40000..40008u16 {
            let (client, server) = (sa(client), sa(server));
            let hash = flow_hash(
                flow_key,
                &addr16(client.ip()),
                &addr16(server.ip()),
                sport,
                server.port(),
            );
            f.0.push(Fixture {
                name: format!("32-member group, flow from {}:{sport}", client.ip()),
                frame: FrameSpec::udp((client.ip(), sport).into(), server, b"x").build(),
                bindings: vec![(udp(&server.to_string()), Receiver::Group(3))],
                groups: vec![(3, members.clone())],
                verdict: PassNoSocket,
                endpoint: Some(members[hash as usize % members.len()]),
            });
        }
    }
    f.0.push(Fixture {
        name: "empty group matches nothing".into(),
        frame: frame4.clone(),
        bindings: vec![(udp(SERVER4), Receiver::Group(2))],
        groups: vec![(2, vec![])],
        verdict: PassNoMatch,
        endpoint: None,
    });

    // Parsing: what is steerable.
    let all53 = catch_all();
    let vlan1 = FrameSpec {
        vlan_tags: vec![0x8100],
        ..udp4()
    };
    f.passed("one 802.1Q tag", vlan1.build(), PassVlan);
    let qinq = FrameSpec {
        vlan_tags: vec![0x88a8, 0x8100],
        ..udp6()
    };
    f.passed("802.1ad + 802.1Q tags", qinq.build(), PassVlan);
    let three = FrameSpec {
        vlan_tags: vec![0x88a8, 0x8100, 0x8100],
        ..udp4()
    };
    f.passed("three VLAN tags", three.build(), PassNotIp);
    for options in [4, 20, 40] {
        let spec = FrameSpec {
            ipv4_options: options,
            ..udp4()
        };
        f.passed(
            &format!("IPv4 with {options} bytes of options"),
            spec.build(),
            PassIpOptions,
        );
    }
    let mut padded = frame4.clone();
    padded.extend_from_slice(&[0; 18]);
    f.steered(
        "Ethernet padding after the IP packet",
        padded,
        all53.clone(),
        1,
    );
    let ext = FrameSpec {
        ipv6_ext: vec![EXT_HOP_BY_HOP, EXT_ROUTING, EXT_DEST_OPTS],
        ..udp6()
    };
    f.passed(
        "IPv6 hop-by-hop, routing, destination options",
        ext.build(),
        PassRoutingHeader,
    );
    let no_routing = FrameSpec {
        ipv6_ext: vec![EXT_HOP_BY_HOP, EXT_DEST_OPTS],
        ..udp6()
    };
    f.passed(
        "IPv6 hop-by-hop, destination options",
        no_routing.build(),
        PassIpOptions,
    );
    let six = FrameSpec {
        ipv6_ext: vec![EXT_DEST_OPTS; 6],
        ..udp6()
    };
    f.passed(
        "IPv6 with six extension headers",
        six.build(),
        PassIpOptions,
    );
    let seven = FrameSpec {
        ipv6_ext: vec![EXT_DEST_OPTS; 7],
        ..udp6()
    };
    f.passed(
        "IPv6 with seven extension headers",
        seven.build(),
        PassMalformed,
    );
    let tcp_opts = FrameSpec {
        tcp_options: 20,
        ..FrameSpec::tcp(sa(CLIENT6), sa(SERVER6), b"data")
    };
    f.steered("TCP with options", tcp_opts.build(), all53.clone(), 2);

    // Fragments.
    f.passed(
        "IPv4 more-fragments",
        FrameSpec {
            more_fragments: true,
            ..udp4()
        }
        .build(),
        PassFragment,
    );
    let mut offset = frame4.clone();
    offset[20..22].copy_from_slice(&0x0001u16.to_be_bytes());
    f.passed("IPv4 fragment offset", offset, PassFragment);
    f.passed(
        "IPv6 fragment header",
        FrameSpec {
            ipv6_ext: vec![EXT_FRAGMENT],
            ..udp6()
        }
        .build(),
        PassFragment,
    );
    let late = FrameSpec {
        ipv6_ext: vec![EXT_HOP_BY_HOP, EXT_FRAGMENT],
        ..udp6()
    };
    f.passed(
        "IPv6 fragment header after hop-by-hop",
        late.build(),
        PassFragment,
    );

    // Not ours.
    let mut arp = frame4[..12].to_vec();
    arp.extend_from_slice(&[0x08, 0x06]);
    arp.extend_from_slice(&[0; 28]);
    f.passed("ARP", arp, PassNotIp);
    let icmp = FrameSpec {
        protocol: 1,
        payload: vec![8, 0, 0, 0, 0, 1, 0, 1],
        ..udp4()
    };
    f.passed("ICMP", icmp.build(), PassOtherProtocol);
    let no_next = FrameSpec {
        protocol: 59,
        payload: vec![],
        ..udp6()
    };
    f.passed("IPv6 no next header", no_next.build(), PassOtherProtocol);

    // Inconsistent headers.
    let corrupt = |name: &str, base: &[u8], at: usize, bytes: &[u8], f: &mut Builder| {
        let mut frame = base.to_vec();
        frame[at..at + bytes.len()].copy_from_slice(bytes);
        f.passed(name, frame, PassMalformed);
    };
    corrupt("IPv4 version 5", &frame4, 14, &[0x55], &mut f);
    corrupt("IPv4 IHL 4", &frame4, 14, &[0x44], &mut f);
    corrupt(
        "IPv4 total length beyond the frame",
        &frame4,
        16,
        &2000u16.to_be_bytes(),
        &mut f,
    );
    corrupt(
        "IPv4 total length below IHL",
        &frame4,
        16,
        &19u16.to_be_bytes(),
        &mut f,
    );
    corrupt(
        "UDP length below 8",
        &frame4,
        38,
        &7u16.to_be_bytes(),
        &mut f,
    );
    corrupt(
        "UDP length beyond the IP payload",
        &frame4,
        38,
        &14u16.to_be_bytes(),
        &mut f,
    );
    corrupt("IPv6 version 4", &frame6, 14, &[0x40], &mut f);
    corrupt(
        "IPv6 payload length beyond the frame",
        &frame6,
        18,
        &2000u16.to_be_bytes(),
        &mut f,
    );
    let ext6 = FrameSpec {
        ipv6_ext: vec![EXT_DEST_OPTS],
        ..udp6()
    }
    .build();
    corrupt(
        "IPv6 extension header beyond the payload",
        &ext6,
        55,
        &[9],
        &mut f,
    );
    let tcp4 = FrameSpec::tcp(sa(CLIENT4), sa(SERVER4), b"").build();
    corrupt("TCP data offset 4", &tcp4, 46, &[0x40], &mut f);
    corrupt(
        "TCP data offset beyond the IP payload",
        &tcp4,
        46,
        &[0xf0],
        &mut f,
    );

    // Destinations: only what the kernel would deliver to a local socket is steered.
    let to = |dst: &str| FrameSpec::udp(sa(CLIENT4), sa(dst), b"hello");
    let to6 = |dst: &str| FrameSpec::udp(sa(CLIENT6), sa(dst), b"hello");
    let from = |src: &str| FrameSpec::udp(sa(src), sa(SERVER4), b"hello");
    let from6 = |src: &str| FrameSpec::udp(sa(src), sa(SERVER6), b"hello");
    f.passed(
        "destination IP not local",
        to("198.18.0.9:53").build(),
        PassNotLocal,
    );
    f.passed(
        "destination IPv6 not local",
        to6("[2001:2::9]:53").build(),
        PassNotLocal,
    );
    f.steered(
        "destination in a local route prefix",
        to("198.18.8.7:53").build(),
        all53.clone(),
        1,
    );
    // Sources the program's branch-free quick test sends to the exact checks (IPv4 first
    // bytes near the martian ranges, IPv6 outside 2000::/3) but that are fine: steered.
    for src in [
        "1.2.3.4:40000",
        "126.0.0.1:40000",
        "128.0.0.1:40000",
        "240.0.0.1:40000",
    ] {
        f.steered(
            &format!("source {src} is not martian"),
            from(src).build(),
            all53.clone(),
            1,
        );
    }
    for src in ["[fd00::1]:40000", "[fe80::1]:40000"] {
        f.steered(
            &format!("source {src} is not martian"),
            from6(src).build(),
            all53.clone(),
            1,
        );
    }
    let with_mac = |mac: [u8; 6], spec: FrameSpec| FrameSpec {
        dst_mac: mac,
        ..spec
    };
    f.passed(
        "another host's MAC",
        with_mac([0x02, 0, 0, 0, 0, 0x99], udp4()).build(),
        PassNotLocal,
    );
    f.passed(
        "another host's MAC, IPv6",
        with_mac([0x02, 0, 0, 0, 0, 0x99], udp6()).build(),
        PassNotLocal,
    );
    f.passed(
        "broadcast MAC",
        with_mac([0xff; 6], udp4()).build(),
        PassMulticast,
    );
    f.passed(
        "multicast MAC",
        with_mac([0x01, 0, 0x5e, 0, 0, 1], udp4()).build(),
        PassMulticast,
    );
    f.passed(
        "IPv4 subnet broadcast",
        to("198.18.0.3:53").build(),
        PassMulticast,
    );
    f.passed(
        "broadcast of a local route prefix",
        to("198.18.8.255:53").build(),
        PassMulticast,
    );
    f.passed(
        "IPv4 limited broadcast",
        with_mac([0xff; 6], to("255.255.255.255:53")).build(),
        PassMulticast,
    );
    f.passed(
        "IPv4 limited broadcast to our MAC",
        to("255.255.255.255:53").build(),
        PassMulticast,
    );
    f.passed(
        "IPv4 multicast",
        with_mac([0x01, 0, 0x5e, 1, 1, 1], to("239.1.1.1:53")).build(),
        PassMulticast,
    );
    f.passed(
        "IPv4 multicast to our MAC",
        to("224.0.0.251:53").build(),
        PassMulticast,
    );
    f.passed(
        "IPv6 multicast",
        with_mac([0x33, 0x33, 0, 0, 0, 1], to6("[ff02::1]:53")).build(),
        PassMulticast,
    );
    f.passed(
        "IPv6 multicast to our MAC",
        to6("[ff05::fb]:53").build(),
        PassMulticast,
    );
    for (name, spec) in [
        ("martian destination 127.0.0.1", to("127.0.0.1:53")),
        (
            "martian destination 127.255.255.255",
            to("127.255.255.255:53"),
        ),
        ("martian destination 0.0.0.0", to("0.0.0.0:53")),
        ("martian destination 0.1.2.3", to("0.1.2.3:53")),
        ("martian source 127.0.0.1", from("127.0.0.1:40000")),
        ("martian source 0.0.0.0", from("0.0.0.0:68")),
        ("martian source 224.0.0.1", from("224.0.0.1:40000")),
        (
            "martian source 239.255.255.250",
            from("239.255.255.250:40000"),
        ),
        (
            "martian source 255.255.255.255",
            from("255.255.255.255:40000"),
        ),
        ("martian destination ::1", to6("[::1]:53")),
        ("martian destination ::", to6("[::]:53")),
        (
            "martian destination ::ffff:198.18.0.2",
            to6("[::ffff:198.18.0.2]:53"),
        ),
        ("martian source ::1", from6("[::1]:40000")),
        ("martian source ::", from6("[::]:40000")),
        (
            "martian source ::ffff:198.18.0.1",
            from6("[::ffff:198.18.0.1]:40000"),
        ),
        ("martian source ff02::1", from6("[ff02::1]:40000")),
    ] {
        f.passed(name, spec.build(), PassMartian);
    }
    f.passed(
        "IPv4 with a source route option",
        FrameSpec {
            ipv4_options: 8,
            ..udp4()
        }
        .build(),
        PassIpOptions,
    );
    f.passed(
        "IPv6 routing header",
        FrameSpec {
            ipv6_ext: vec![EXT_ROUTING],
            ..udp6()
        }
        .build(),
        PassRoutingHeader,
    );
    // The kernel judges IPv6 option headers (PadN longer than 7 bytes, unknown options with
    // the discard bits, jumbograms): every one passes, whatever its options.
    for (name, ext) in [
        ("IPv6 hop-by-hop header", vec![EXT_HOP_BY_HOP]),
        ("IPv6 destination options header", vec![EXT_DEST_OPTS]),
        (
            "IPv6 destination options after a routing header",
            vec![EXT_ROUTING, EXT_DEST_OPTS],
        ),
    ] {
        let verdict = if ext.contains(&EXT_ROUTING) {
            PassRoutingHeader
        } else {
            PassIpOptions
        };
        let spec = FrameSpec {
            ipv6_ext: ext,
            ..udp6()
        };
        f.passed(name, spec.build(), verdict);
    }
    f.passed(
        "IPv6 option headers outrank a martian",
        FrameSpec {
            ipv6_ext: vec![EXT_HOP_BY_HOP],
            ..to6("[::1]:53")
        }
        .build(),
        PassIpOptions,
    );
    f.passed(
        "IPv6 option headers outrank not local",
        FrameSpec {
            ipv6_ext: vec![EXT_DEST_OPTS],
            ..to6("[2001:2::9]:53")
        }
        .build(),
        PassIpOptions,
    );
    f.passed(
        "802.1Q tag to a local address",
        FrameSpec {
            vlan_tags: vec![0x8100],
            ..udp6()
        }
        .build(),
        PassVlan,
    );
    f.passed(
        "a VLAN tag outranks a martian",
        FrameSpec {
            vlan_tags: vec![0x8100],
            ..to("127.0.0.1:53")
        }
        .build(),
        PassVlan,
    );
    f.passed(
        "a martian outranks multicast",
        with_mac([0xff; 6], from("127.0.0.1:40000")).build(),
        PassMartian,
    );
    f.passed(
        "a fragment outranks IPv4 options",
        FrameSpec {
            ipv4_options: 8,
            more_fragments: true,
            ..udp4()
        }
        .build(),
        PassFragment,
    );
    // Longer than an AF_XDP frame takes: passed before anything else is looked at (BPF_PROG_TEST_RUN
    // puts what does not fit a page in fragments, so these are multi-buffer frames too).
    let long = |spec: FrameSpec| FrameSpec {
        payload: vec![0x5a; 4000],
        ..spec
    };
    f.passed(
        "a frame longer than an AF_XDP frame",
        long(udp4()).build(),
        PassTooLarge,
    );
    f.passed("a long IPv6 frame", long(udp6()).build(), PassTooLarge);
    f.passed(
        "too large outranks a VLAN tag",
        FrameSpec {
            vlan_tags: vec![0x8100],
            ..long(udp4())
        }
        .build(),
        PassTooLarge,
    );

    // Truncation at every length: headers cut anywhere, or the payload cut short.
    let bases = [
        (
            "VLAN IPv4 options UDP",
            FrameSpec {
                vlan_tags: vec![0x8100],
                ipv4_options: 8,
                ..udp4()
            }
            .build(),
        ),
        (
            "IPv6 extension UDP",
            FrameSpec {
                ipv6_ext: vec![EXT_ROUTING],
                ..udp6()
            }
            .build(),
        ),
        (
            "IPv4 TCP options",
            FrameSpec {
                tcp_options: 12,
                ..FrameSpec::tcp(sa(CLIENT4), sa(SERVER4), b"x")
            }
            .build(),
        ),
    ];
    for (name, base) in bases {
        // BPF_PROG_TEST_RUN refuses frames shorter than an Ethernet header.
        for len in 14..base.len() {
            f.passed(
                &format!("{name} cut to {len} bytes"),
                base[..len].to_vec(),
                PassMalformed,
            );
        }
    }
    f.0
}
