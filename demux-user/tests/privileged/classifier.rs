//! The XDP program against its reference model (`demux::testing::model`) under BPF_PROG_TEST_RUN: the
//! hand-written fixtures, then a seeded differential run over random tables and 100,000
//! random, mutated and truncated frames. A mismatch prints the seed, the flow hash key and the
//! frame in hex. Each run loads the program with a random flow hash key and gives the model the
//! same one; and two loads draw two keys, each used by its own program. The program's host view
//! (local routes, `IFACE_SLOTS` for BPF_PROG_TEST_RUN's interface, loopback: ifindex 1) is the
//! fixtures' [`fixtures::host`], or a random one per table set in the differential run.

use std::{fmt::Write as _, mem::size_of};

use anyhow::{bail, ensure, Context as _};
use aya::programs::{TestRun, TestRunOptions};
use demux::{
    binding::{Binding, Entry, Local, Protocol, Receiver},
    dataplane::{maps::Maps, Dataplane as _},
    dataplane::{LocalKind, LocalPrefix},
    program::{random_flow_key, BpfLogLevel, LoadOptions, Loaded},
    tables::{self, Tables},
    testing::frame::{FrameSpec, EXT_DEST_OPTS, EXT_FRAGMENT, EXT_HOP_BY_HOP, EXT_ROUTING},
    testing::model::{fixtures, Host, Model, TEST_RUN_IFINDEX},
};
use demux_common::{
    binding::Target,
    hash::{flow_hash, FlowKey},
    meta::{PacketMeta, MAX_XSK_FRAME, MAX_XSK_SG_FRAME},
    Verdict,
};

const XDP_PASS: u32 = 2;

pub(crate) fn tests() -> Vec<libtest_mimic::Trial> {
    trials![
        fixtures_agree_with_the_program,
        differential_frames,
        full_table_is_refused_by_name_and_rolled_back,
        each_prefix_family_holds_the_table_size,
        each_load_draws_its_own_key,
        destination_checks_are_off_only_in_the_benchmarks_load,
        local_cache_slots_shared_by_addresses,
        multi_buffer_frames_agree_with_the_model_when_their_slot_takes_them,
    ]
}

/// Encoded bindings, and group members by group id.
type Bindings = Vec<(Entry, Target)>;
type Groups = Vec<(u32, Vec<u32>)>;

/// What the program did with one frame.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Observed {
    pub(crate) verdict: Verdict,
    pub(crate) meta: Option<PacketMeta>,
}

/// Runs one frame and reads back the action, the one verdict counter that moved, and the
/// metadata in front of the output frame.
pub(crate) fn run_frame(
    loaded: &mut Loaded,
    maps: &Maps,
    frame: &[u8],
) -> anyhow::Result<Observed> {
    let before = maps.verdicts()?;
    let mut out = vec![0u8; frame.len() + 256];
    let result = loaded
        .program_mut()
        .test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ..TestRunOptions::new()
        })
        .context("BPF_PROG_TEST_RUN")?;
    let delta = maps.verdicts()?.since(&before);
    ensure!(
        delta.total() == 1,
        "counters moved by {delta}, not by one packet"
    );
    let verdict = *Verdict::ALL
        .iter()
        .find(|v| delta.get(**v) == 1)
        .expect("one moved");
    let want_action = if verdict == Verdict::Redirected {
        4
    } else {
        XDP_PASS
    };
    ensure!(
        result.return_value == want_action,
        "action {} for {verdict:?}",
        result.return_value
    );
    let out = &out[..result.data_size_out as usize];
    let meta = match out.len().checked_sub(frame.len()) {
        Some(0) => None,
        Some(PacketMeta::LEN) => {
            ensure!(
                &out[PacketMeta::LEN..] == frame,
                "the frame changed behind the metadata"
            );
            PacketMeta::read(&out[..PacketMeta::LEN])
        }
        _ => bail!(
            "output of {} bytes for a {}-byte frame",
            out.len(),
            frame.len()
        ),
    };
    Ok(Observed { verdict, meta })
}

/// Loads the program with a random flow hash key (or `DEMUX_FLOW_KEY`, 32 hex digits, to rerun
/// one), checking that it reports that key back.
fn load_with_random_key() -> anyhow::Result<(Loaded, Maps, FlowKey)> {
    let key = match std::env::var("DEMUX_FLOW_KEY") {
        Ok(text) => parse_key(&text)?,
        Err(_) => random_flow_key()?,
    };
    let (loaded, maps) = Loaded::load_with(LoadOptions {
        flow_key: Some(key),
        ..LoadOptions::default()
    })?;
    ensure!(loaded.flow_key() == key, "the loader reports another key");
    Ok((loaded, maps, key))
}

fn parse_key(text: &str) -> anyhow::Result<FlowKey> {
    ensure!(
        text.len() == 32,
        "DEMUX_FLOW_KEY: 32 hex digits, not `{text}`"
    );
    let mut bytes = [0u8; 16];
    for (i, byte) in bytes.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16)
            .with_context(|| format!("DEMUX_FLOW_KEY: `{text}` is not hex"))?;
    }
    Ok(FlowKey::from_bytes(bytes))
}

/// Loads bindings and groups into both the program's maps and a model hashing with `key`.
fn install(
    key: FlowKey,
    maps: &mut Maps,
    tables: &mut Tables,
    bindings: &[(Entry, Target)],
    groups: &[(u32, Vec<u32>)],
    host: &Host,
) -> anyhow::Result<Model> {
    let mut model = Model::new(key);
    model.host = host.clone();
    for (entry, target) in bindings {
        ensure!(model.insert(*entry, *target), "duplicate binding {entry:?}");
    }
    tables.insert_all(maps, bindings)?;
    for (id, members) in groups {
        maps.set_group(*id, members)?;
        model.set_group(*id, members);
    }
    Ok(model)
}

fn uninstall(
    maps: &mut Maps,
    tables: &mut Tables,
    bindings: &[(Entry, Target)],
    groups: &[(u32, Vec<u32>)],
) -> anyhow::Result<()> {
    for (entry, _) in bindings {
        tables.remove(maps, entry)?;
    }
    for (id, _) in groups {
        maps.set_group(*id, &[])?;
    }
    Ok(())
}

pub(crate) fn fixtures_agree_with_the_program() -> anyhow::Result<()> {
    let (mut loaded, mut maps, key) = load_with_random_key()?;
    let host = fixtures::host();
    host.install(&mut maps)?;
    let mut tables = Tables::default();
    let mut failures = Vec::new();
    let all = fixtures::all(&key);
    for fixture in &all {
        let bindings: Vec<(Entry, Target)> = fixture
            .bindings
            .iter()
            .map(|(b, r)| b.encode(*r))
            .collect::<Result<_, _>>()
            .with_context(|| fixture.name.clone())?;
        let model = install(
            key,
            &mut maps,
            &mut tables,
            &bindings,
            &fixture.groups,
            &host,
        )?;
        let observed =
            run_frame(&mut loaded, &maps, &fixture.frame).with_context(|| fixture.name.clone())?;
        let expected = model.classify(&fixture.frame, 0);
        let endpoint = observed.meta.map(|m| m.endpoint);
        if observed.verdict != fixture.verdict || endpoint != fixture.endpoint {
            failures.push(format!(
                "{}: program {:?} endpoint {endpoint:?}, fixture wants {:?} endpoint {:?}\n  frame {}",
                fixture.name,
                observed.verdict,
                fixture.verdict,
                fixture.endpoint,
                hex(&fixture.frame)
            ));
        } else if observed.meta != expected.meta {
            failures.push(format!(
                "{}: metadata {:?}, model wants {:?}",
                fixture.name, observed.meta, expected.meta
            ));
        }
        uninstall(&mut maps, &mut tables, &bindings, &fixture.groups)?;
    }
    ensure!(
        failures.is_empty(),
        "{} of {} fixtures failed (rerun with DEMUX_FLOW_KEY={}):\n{}",
        failures.len(),
        all.len(),
        hex(&key.to_bytes()),
        failures.join("\n")
    );
    Ok(())
}

/// Frames longer than a page, which BPF_PROG_TEST_RUN hands the program as multi-buffer
/// frames (the headers in the first buffer, the rest in fragments), against the model, with the
/// slot's `XSK_FRAME_LIMITS` entry 0 (a socket without XDP_USE_SG: all passed as too large),
/// the full multi-buffer limit, and one byte short of the frame: the lengths the headers state
/// are checked against the whole frame, fragments included (a correct frame is steered, one
/// whose IP or UDP length reaches past its end is malformed), and the metadata agrees.
pub(crate) fn multi_buffer_frames_agree_with_the_model_when_their_slot_takes_them(
) -> anyhow::Result<()> {
    let (mut loaded, mut maps, key) = load_with_random_key()?;
    let host = fixtures::host();
    host.install(&mut maps)?;
    let slot = loaded.socket_slot(0, 0)?;
    let binding = Binding {
        protocol: Protocol::Udp,
        local: Local::Addr("[::]:53".parse()?),
        remote: None,
        v6only: false,
    };
    let bindings = vec![binding.encode(Receiver::Endpoint(1))?];
    let mut model = install(
        key,
        &mut maps,
        &mut Tables::default(),
        &bindings,
        &[],
        &host,
    )?;
    let mut frames = Vec::new();
    for (src, dst) in [
        ("198.18.0.1:40000", "198.18.0.2:53"),
        ("[2001:2::1]:40000", "[2001:2::2]:53"),
    ] {
        // Not between a page's first buffer and MAX_XSK_FRAME (about 3,500 to 3,840 bytes),
        // where the program sees fragments and the model a frame one UMEM frame holds.
        for size in [1000, 3900, 4000, 8952, 8972, 30_000, 60_000] {
            let frame = FrameSpec::udp(src.parse()?, dst.parse()?, &vec![0x5a; size]).build();
            let v4 = src.starts_with('1');
            // IPv4 total length or IPv6 payload length, and the UDP length.
            let (ip_len_at, udp_len_at) = if v4 { (16, 38) } else { (18, 58) };
            let longer = |at: usize| {
                let mut f = frame.clone();
                let len = u16::from_be_bytes([f[at], f[at + 1]]) + 1;
                f[at..at + 2].copy_from_slice(&len.to_be_bytes());
                f
            };
            let mut padded = frame.clone();
            padded.extend_from_slice(&[0; 10]);
            let mut truncated = frame.clone();
            truncated.pop();
            frames.extend([
                frame.clone(),
                longer(ip_len_at),
                longer(udp_len_at),
                padded,
                truncated,
            ]);
        }
    }
    let mut failures = Vec::new();
    let mut verdicts = std::collections::BTreeMap::<&str, u32>::new();
    for frame in &frames {
        let len = frame.len() as u32;
        for limit in [0, MAX_XSK_SG_FRAME, len - 1] {
            slot.set_frame_limit(limit)?;
            model.frame_limits.insert(0, limit);
            let observed = run_frame(&mut loaded, &maps, frame)?;
            let expected = model.classify(frame, 0);
            *verdicts.entry(observed.verdict.name()).or_default() += 1;
            if observed.verdict != expected.verdict || observed.meta != expected.meta {
                failures.push(format!(
                    "{len}-byte frame, limit {limit}: program {:?} {:?}, model {:?} {:?}",
                    observed.verdict, observed.meta, expected.verdict, expected.meta
                ));
            }
        }
    }
    ensure!(
        failures.is_empty(),
        "{} of {} runs differ (DEMUX_FLOW_KEY={}):\n{}",
        failures.len(),
        frames.len() * 3,
        hex(&key.to_bytes()),
        failures.join("\n")
    );
    // Every outcome the runs are there for happened.
    for verdict in [
        Verdict::PassNoSocket,
        Verdict::PassTooLarge,
        Verdict::PassMalformed,
    ] {
        ensure!(
            verdicts.get(verdict.name()).copied().unwrap_or(0) > 0,
            "no run gave {verdict:?}: {verdicts:?}"
        );
    }
    Ok(())
}

/// Table sets × frames per set = 100,000 frames.
const FRAMES_PER_SET: u64 = 2_000;

/// The differential run's frame count: `DEMUX_DIFF_FRAMES`, 100,000 by default (`cargo xtask
/// test` runs 1,000,000, `cargo xtask fuzz` 10,000,000).
fn frame_count() -> u64 {
    std::env::var("DEMUX_DIFF_FRAMES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000)
}

pub(crate) fn differential_frames() -> anyhow::Result<()> {
    let seed = std::env::var("DEMUX_DIFF_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_u64);
    let table_sets = frame_count().div_ceil(FRAMES_PER_SET);
    let (mut loaded, mut maps, key) = load_with_random_key()?;
    let mut tables = Tables::default();
    let mut rng = SplitMix64(seed);
    let mut failures = Vec::new();
    let mut by_verdict = [0u64; Verdict::COUNT as usize];
    for set in 0..table_sets {
        let (bindings, groups) = random_tables(&mut rng);
        let host = random_host(&mut rng);
        host.install(&mut maps)?;
        let model = install(key, &mut maps, &mut tables, &bindings, &groups, &host)?;
        for i in 0..FRAMES_PER_SET {
            let frame = random_frame(&mut rng);
            let expected = model.classify(&frame, 0);
            let observed = run_frame(&mut loaded, &maps, &frame)?;
            by_verdict[observed.verdict as usize] += 1;
            if observed.verdict != expected.verdict || observed.meta != expected.meta {
                failures.push(format!(
                    "set {set} frame {i}: program {observed:?}, model {expected:?}\n  frame {}",
                    hex(&frame)
                ));
                if failures.len() >= 5 {
                    break;
                }
            }
        }
        uninstall(&mut maps, &mut tables, &bindings, &groups)?;
        host.uninstall(&mut maps)?;
        if !failures.is_empty() {
            break;
        }
    }
    ensure!(
        failures.is_empty(),
        "program and model disagree (seed {seed:#x}, rerun with DEMUX_DIFF_SEED={seed} \
         DEMUX_FLOW_KEY={}):\n{}",
        hex(&key.to_bytes()),
        failures.join("\n")
    );
    let spread: Vec<String> = Verdict::ALL
        .iter()
        .map(|v| format!("{}={}", v.name(), by_verdict[*v as usize]))
        .collect();
    println!(
        "  differential: {} frames, seed {seed:#x}, flow key {}: {}",
        table_sets * FRAMES_PER_SET,
        hex(&key.to_bytes()),
        spread.join(" ")
    );
    // The generator must reach every verdict a test run can give, or the run proves little.
    for verdict in Verdict::ALL {
        let reachable = !matches!(verdict, Verdict::Redirected | Verdict::PassNoMetadata);
        ensure!(
            !reachable || by_verdict[verdict as usize] > 100,
            "only {} frames ended as {} (seed {seed:#x}): the generator is too narrow",
            by_verdict[verdict as usize],
            verdict.name()
        );
    }
    Ok(())
}

/// Random bindings over small address and port pools, so that frames hit them often.
fn random_tables(rng: &mut SplitMix64) -> (Bindings, Groups) {
    let groups: Vec<(u32, Vec<u32>)> = (0..3)
        .map(|id| {
            (
                id,
                (0..rng.below(5))
                    .map(|_| 100 + rng.below(20) as u32)
                    .collect(),
            )
        })
        .collect();
    let mut seen = std::collections::HashSet::new();
    let mut bindings = Vec::new();
    for _ in 0..rng.below(40) {
        let v6 = rng.below(2) == 1;
        let protocol = if rng.below(2) == 0 {
            Protocol::Udp
        } else {
            Protocol::Tcp
        };
        let local_ip = random_ip(rng, v6);
        let port = random_port(rng);
        let local = match rng.below(4) {
            0 => Local::Addr((local_ip, port).into()),
            1 => Local::Addr((unspecified(v6), port).into()),
            2 => {
                let len = rng.below(if v6 { 129 } else { 33 }) as u8;
                let addr = mask(local_ip, len);
                Local::Prefix {
                    addr,
                    len,
                    port: (rng.below(2) == 0).then_some(port),
                }
            }
            _ => Local::Addr((local_ip, port).into()),
        };
        let connected = rng.below(4) == 0;
        let binding = Binding {
            protocol,
            local,
            remote: connected.then(|| (random_ip(rng, v6), random_port(rng)).into()),
            v6only: v6 && rng.below(3) == 0,
        };
        let receiver = if rng.below(4) == 0 {
            Receiver::Group(rng.below(3) as u32)
        } else {
            Receiver::Endpoint(1 + rng.below(20) as u32)
        };
        if let Ok((entry, target)) = binding.encode(receiver) {
            if seen.insert(entry) {
                bindings.push((entry, target));
            }
        }
    }
    (bindings, groups)
}

/// A random host view over the frames' address pools: each pool address local, a subnet
/// broadcast or absent, sometimes a `local` prefix route over them, and the test interface's
/// MAC mostly the frames' usual destination MAC, sometimes another (then nothing is ours).
fn random_host(rng: &mut SplitMix64) -> Host {
    let mut local = Vec::new();
    let mut add = |addr: std::net::IpAddr, len: u8, kind| {
        local.push((LocalPrefix { addr, len }, kind));
    };
    for v6 in [false, true] {
        for addr in ip_pool(v6) {
            match rng.below(5) {
                0 => {}
                1 => add(addr, if v6 { 128 } else { 32 }, LocalKind::Broadcast),
                _ => add(addr, if v6 { 128 } else { 32 }, LocalKind::Local),
            }
        }
        if rng.below(4) == 0 {
            let (addr, len) = if v6 {
                ("2001:2::".parse().expect("prefix"), 64)
            } else {
                ("198.18.1.0".parse().expect("prefix"), 24)
            };
            add(addr, len, LocalKind::Local);
        }
    }
    add("127.0.0.0".parse().expect("loopback"), 8, LocalKind::Local);
    let mac = if rng.below(10) == 0 {
        [0x02, 0, 0, 0, 0, 0x99]
    } else {
        fixtures::OWN_MAC
    };
    Host {
        local,
        macs: [(TEST_RUN_IFINDEX, mac)].into(),
    }
}

/// Every address `random_ip` can give for a family.
fn ip_pool(v6: bool) -> Vec<std::net::IpAddr> {
    if v6 {
        (1..=3)
            .map(|h| std::net::Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, h).into())
            .collect()
    } else {
        (0..2)
            .flat_map(|n| (1..=3).map(move |h| std::net::Ipv4Addr::new(198, 18, n, h).into()))
            .collect()
    }
}

/// Now and then an address the destination checks catch: martian, multicast, broadcast.
fn special_ip(rng: &mut SplitMix64, v6: bool) -> std::net::IpAddr {
    let v4 = [
        "127.0.0.1",
        "0.0.0.0",
        "0.1.2.3",
        "224.0.0.1",
        "239.1.1.1",
        "255.255.255.255",
    ];
    let v6s = ["::1", "::", "::ffff:198.18.0.2", "ff02::1", "ff05::fb"];
    let pool: &[&str] = if v6 { &v6s } else { &v4 };
    pool[rng.below(pool.len() as u64) as usize]
        .parse()
        .expect("special address")
}

/// A random frame from the pools, with random structure, then maybe mutated: bytes flipped in
/// the headers or anywhere, truncated at a random offset, padded (now and then beyond what an
/// AF_XDP frame takes), or spliced with another frame's tail at a random offset.
fn random_frame(rng: &mut SplitMix64) -> Vec<u8> {
    let mut frame = structured_frame(rng);
    match rng.below(12) {
        0..=5 => {}
        6 | 7 => {
            // Flip one to three bytes in the headers.
            let header_end = frame.len().min(100);
            for _ in 0..1 + rng.below(3) {
                let at = rng.below(header_end as u64) as usize;
                frame[at] ^= 1 << rng.below(8);
            }
        }
        8 => frame.truncate(14 + rng.below(frame.len() as u64 - 13) as usize),
        9 => {
            // Anywhere, a few bits.
            for _ in 0..1 + rng.below(4) {
                let at = rng.below(frame.len() as u64) as usize;
                frame[at] ^= 1 << rng.below(8);
            }
        }
        10 => {
            // A header splice: this frame's head (an Ethernet header at least, as
            // BPF_PROG_TEST_RUN requires), another frame's tail.
            let other = structured_frame(rng);
            let cut = 14 + rng.below(frame.len() as u64 - 13) as usize;
            let from = rng.below(other.len() as u64) as usize;
            frame.truncate(cut);
            frame.extend_from_slice(&other[from..]);
        }
        _ if rng.below(16) == 0 => {
            // Longer than an AF_XDP frame takes (and than a test run's first buffer): passed
            // as too large. Never between a page's buffer and MAX_XSK_FRAME, where the program
            // sees fragments and the model a frame that fits.
            let long = MAX_XSK_FRAME as u64 + 1 + rng.below(2000);
            frame.resize(long as usize, 0);
        }
        _ => frame.extend(std::iter::repeat_n(0, rng.below(30) as usize)),
    }
    frame
}

/// A well-formed frame from the pools with random structure: VLAN stacks, options, extension
/// header chains, fragments, special addresses and MACs.
fn structured_frame(rng: &mut SplitMix64) -> Vec<u8> {
    let v6 = rng.below(2) == 1;
    let pick = |rng: &mut SplitMix64| {
        if rng.below(25) == 0 {
            special_ip(rng, v6)
        } else {
            random_ip(rng, v6)
        }
    };
    let src = (pick(rng), random_port(rng)).into();
    let dst = (pick(rng), random_port(rng)).into();
    let mut spec = FrameSpec::udp(src, dst, &vec![0xab; rng.below(40) as usize]);
    spec.dst_mac = match rng.below(20) {
        0 => [0xff; 6],
        1 => [0x01, 0, 0x5e, 0, 0, 1],
        2 => [0x33, 0x33, 0, 0, 0, 1],
        3 => [0x02, 0, 0, 0, 0, 0x99],
        _ => fixtures::OWN_MAC,
    };
    spec.protocol = match rng.below(10) {
        0 => 1,
        1..=4 => 6,
        _ => 17,
    };
    spec.vlan_tags = (0..[0, 0, 0, 1, 2, 3][rng.below(6) as usize])
        .map(|_| 0x8100)
        .collect();
    if rng.below(4) == 0 {
        spec.ipv4_options = 4 * rng.below(11) as usize;
    }
    if rng.below(4) == 0 {
        spec.tcp_options = 4 * rng.below(11) as usize;
    }
    if v6 && rng.below(3) == 0 {
        let kinds = [
            EXT_HOP_BY_HOP,
            EXT_ROUTING,
            EXT_DEST_OPTS,
            EXT_DEST_OPTS,
            EXT_FRAGMENT,
        ];
        spec.ipv6_ext = (0..rng.below(8))
            .map(|_| kinds[rng.below(5) as usize])
            .collect();
        if rng.below(2) == 0 {
            spec.ipv6_ext.retain(|&k| k != EXT_FRAGMENT);
        }
    }
    spec.more_fragments = !v6 && rng.below(20) == 0;
    spec.build()
}

fn random_ip(rng: &mut SplitMix64, v6: bool) -> std::net::IpAddr {
    let host = 1 + rng.below(3) as u8;
    if v6 {
        std::net::Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, u16::from(host)).into()
    } else {
        std::net::Ipv4Addr::new(198, 18, rng.below(2) as u8, host).into()
    }
}

fn unspecified(v6: bool) -> std::net::IpAddr {
    if v6 {
        std::net::Ipv6Addr::UNSPECIFIED.into()
    } else {
        std::net::Ipv4Addr::UNSPECIFIED.into()
    }
}

fn random_port(rng: &mut SplitMix64) -> u16 {
    [53, 80, 443, 40000][rng.below(4) as usize]
}

fn mask(addr: std::net::IpAddr, len: u8) -> std::net::IpAddr {
    match addr {
        std::net::IpAddr::V4(a) => (u32::from(a)
            & u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0))
        .to_be_bytes()
        .into(),
        std::net::IpAddr::V6(a) => (u128::from(a)
            & u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0))
        .to_be_bytes()
        .into(),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// A small seeded generator (SplitMix64): repeatable runs without a dependency.
pub(crate) struct SplitMix64(pub(crate) u64);

impl SplitMix64 {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform-enough in 0..n (n > 0).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const _: () = assert!(size_of::<PacketMeta>() == PacketMeta::LEN);

pub(crate) fn full_table_is_refused_by_name_and_rolled_back() -> anyhow::Result<()> {
    let (mut loaded, mut maps) = Loaded::load_with(LoadOptions {
        bindings: Some(4),
        ..LoadOptions::default()
    })?;
    fixtures::host().install(&mut maps)?;
    let mut tables = Tables::default();
    let bindings: Bindings = (1..=6u16)
        .map(|port| {
            let binding = Binding {
                protocol: Protocol::Udp,
                local: Local::Addr(format!("198.18.0.2:{port}").parse().expect("address")),
                remote: None,
                v6only: false,
            };
            binding
                .encode(Receiver::Endpoint(1))
                .expect("valid binding")
        })
        .collect();
    let error = tables
        .insert_all(&mut maps, &bindings)
        .expect_err("six bindings fit a table of four");
    ensure!(
        matches!(error, tables::TableError::Full { table: "BOUND" }),
        "unexpected error: {error}"
    );
    ensure!(
        error.to_string().contains("BOUND"),
        "the message does not name the table: {error}"
    );
    // Nothing of the batch is left: a frame to the first binding's port is not matched.
    let frame = FrameSpec::udp("198.18.0.1:40000".parse()?, "198.18.0.2:1".parse()?, b"").build();
    let observed = run_frame(&mut loaded, &maps, &frame)?;
    ensure!(
        observed.verdict == Verdict::PassNoMatch,
        "after rollback: {observed:?}"
    );
    // And the table is whole again: four bindings fit.
    tables.insert_all(&mut maps, &bindings[..4])?;
    ensure!(run_frame(&mut loaded, &maps, &frame)?.verdict == Verdict::PassNoSocket);
    Ok(())
}

/// The kernel's two prefix tries hold `--max-bindings` entries each, as the in-memory
/// dataplane counts them (`tables::tests::each_family_has_its_own_prefix_table`): with both
/// IPv4 slots taken, IPv6 prefixes still fit, and the next IPv4 prefix is refused naming
/// `PREFIX_V4`.
pub(crate) fn each_prefix_family_holds_the_table_size() -> anyhow::Result<()> {
    let (_loaded, mut maps) = Loaded::load_with(LoadOptions {
        bindings: Some(2),
        ..LoadOptions::default()
    })?;
    let prefix = |local: &str| {
        Binding {
            protocol: Protocol::Udp,
            local: local.parse::<Local>().expect("a valid prefix"),
            remote: None,
            v6only: false,
        }
        .encode(Receiver::Endpoint(1))
        .expect("valid binding")
    };
    let mut tables = Tables::default();
    for local in [
        "198.18.0.0/15:53",
        "198.18.0.0/16:54",
        "[2001:2::]/48:53",
        "[2001:2::]/64:54",
    ] {
        let (entry, target) = prefix(local);
        tables
            .insert(&mut maps, &entry, target)
            .with_context(|| format!("{local} in tables of 2 per family"))?;
    }
    for (local, table) in [
        ("198.18.0.0/24:55", "PREFIX_V4"),
        ("[2001:2::]/96:55", "PREFIX_V6"),
    ] {
        let (entry, target) = prefix(local);
        let error = tables
            .insert(&mut maps, &entry, target)
            .expect_err("a third prefix of the family");
        ensure!(
            matches!(error, tables::TableError::Full { table: t } if t == table),
            "{local}: unexpected error: {error}"
        );
    }
    Ok(())
}

/// Two loads (two daemon starts) draw two keys, and each program hashes with its own: the
/// metadata of one frame to a group carries `flow_hash(key)` of the loader's key, different
/// for the two loads.
pub(crate) fn each_load_draws_its_own_key() -> anyhow::Result<()> {
    let (client, server): (std::net::SocketAddr, std::net::SocketAddr) =
        ("198.18.0.1:40000".parse()?, "198.18.0.2:53".parse()?);
    let frame = FrameSpec::udp(client, server, b"x").build();
    let binding = Binding {
        protocol: Protocol::Udp,
        local: Local::Addr(server),
        remote: None,
        v6only: false,
    }
    .encode(Receiver::Group(1))?;
    let mut hashes = Vec::new();
    for _ in 0..2 {
        let (mut loaded, mut maps) = Loaded::load(BpfLogLevel::Off)?;
        let key = loaded.flow_key();
        fixtures::host().install(&mut maps)?;
        maps.set_group(1, &(1..=32).collect::<Vec<u32>>())?;
        Tables::default().insert_all(&mut maps, &[binding])?;
        let meta = run_frame(&mut loaded, &maps, &frame)?
            .meta
            .context("no metadata for a frame to a group")?;
        let want = flow_hash(
            &key,
            &demux::binding::addr16(client.ip()),
            &demux::binding::addr16(server.ip()),
            client.port(),
            server.port(),
        );
        ensure!(
            meta.flow_hash == want,
            "the program hashed {:#x}, its loader's key gives {want:#x}",
            meta.flow_hash
        );
        ensure!(meta.endpoint == 1 + want % 32, "member {}", meta.endpoint);
        hashes.push((key, meta.flow_hash));
    }
    ensure!(hashes[0].0 != hashes[1].0, "two loads drew the same key");
    ensure!(
        hashes[0].1 != hashes[1].1,
        "two keys, but one flow hashed alike: {:#x}",
        hashes[0].1
    );
    Ok(())
}

/// The daemon's loads (`Loaded::load`, `Loaded::load_with` with any options) keep the
/// destination checks: a frame to a bound port but to an address that is not local passes as
/// `pass_not_local`. Only the benchmark's comparison load skips them and steers the same frame
/// (to the redirect, which falls back at the empty socket slot), which shows the switch the
/// benchmark measures with is real.
pub(crate) fn destination_checks_are_off_only_in_the_benchmarks_load() -> anyhow::Result<()> {
    let (client, server): (std::net::SocketAddr, std::net::SocketAddr) =
        ("198.18.0.1:40000".parse()?, "0.0.0.0:53".parse()?);
    let not_local: std::net::SocketAddr = "198.18.99.99:53".parse()?;
    let local: std::net::SocketAddr = "198.18.0.2:53".parse()?;
    let host = fixtures::host();
    let is_local = |ip| host.local.iter().any(|(prefix, _)| prefix.contains(ip));
    ensure!(
        !is_local(not_local.ip()) && is_local(local.ip()),
        "the fixtures' host view changed: pick other addresses"
    );
    let binding = Binding {
        protocol: Protocol::Udp,
        local: Local::Addr(server),
        remote: None,
        v6only: false,
    }
    .encode(Receiver::Endpoint(1))?;
    type Load = fn() -> anyhow::Result<(Loaded, Maps)>;
    let loads: [(&str, Load, Verdict); 3] = [
        (
            "Loaded::load",
            || Ok(Loaded::load(BpfLogLevel::Off)?),
            Verdict::PassNotLocal,
        ),
        (
            "Loaded::load_with",
            || {
                Ok(Loaded::load_with(LoadOptions {
                    log_level: BpfLogLevel::Debug,
                    bindings: Some(16),
                    flow_key: Some(random_flow_key()?),
                    extension: false,
                })?)
            },
            Verdict::PassNotLocal,
        ),
        (
            "Loaded::load_without_destination_checks",
            || {
                Ok(Loaded::load_without_destination_checks(
                    LoadOptions::default(),
                )?)
            },
            Verdict::PassNoSocket,
        ),
    ];
    for (name, load, want) in loads {
        let (mut loaded, mut maps) = load()?;
        host.install(&mut maps)?;
        Tables::default().insert_all(&mut maps, &[binding])?;
        let to = |server| FrameSpec::udp(client, server, b"x").build();
        let verdict = run_frame(&mut loaded, &maps, &to(not_local))?.verdict;
        ensure!(
            verdict == want,
            "{name}: a frame to a non-local address got {verdict:?}, not {want:?}"
        );
        // Both steer a frame to a local address alike.
        let verdict = run_frame(&mut loaded, &maps, &to(local))?.verdict;
        ensure!(
            verdict == Verdict::PassNoSocket,
            "{name}: a frame to a local address got {verdict:?}"
        );
    }
    Ok(())
}

/// `LOCAL_CACHE` slots that several addresses hash to: every local address is found whichever
/// others share its slot (one alone in it, two through the hash map), an address that only
/// shares the slot is never taken for local, and removing one leaves the other found. IPv4
/// and IPv6 addresses share one cache.
pub(crate) fn local_cache_slots_shared_by_addresses() -> anyhow::Result<()> {
    use demux_common::local::local_cache_slot;
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    let slot = |ip: IpAddr| local_cache_slot(ip.is_ipv4(), &demux::binding::addr16(ip));
    // Three IPv4 addresses and one IPv6 address of one slot, none in the fixtures' host view.
    let a: IpAddr = Ipv4Addr::new(198, 19, 200, 1).into();
    let same: Vec<IpAddr> = (2..u32::from(u16::MAX))
        .map(|n| IpAddr::from(Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 19, 0, 0)) + n)))
        .filter(|&ip| ip != a && slot(ip) == slot(a))
        .take(2)
        .collect();
    let v6 = (1..u16::MAX)
        .flat_map(|x| (1..u16::MAX).map(move |y| (x, y)))
        .map(|(x, y)| IpAddr::from(Ipv6Addr::new(0x2001, 2, 0, 0x99, 0, 0, x, y)))
        .find(|&ip| slot(ip) == slot(a))
        .context("no IPv6 address of the slot")?;
    let (b, c) = (same[0], same[1]);

    let (mut loaded, mut maps) = Loaded::load(BpfLogLevel::Off)?;
    fixtures::host().install(&mut maps)?;
    let mut bindings = Vec::new();
    for any in [
        IpAddr::from(Ipv4Addr::UNSPECIFIED),
        Ipv6Addr::UNSPECIFIED.into(),
    ] {
        bindings.push(
            Binding {
                protocol: Protocol::Udp,
                local: Local::Addr((any, 53).into()),
                remote: None,
                v6only: any.is_ipv6(),
            }
            .encode(Receiver::Endpoint(1))?,
        );
    }
    Tables::default().insert_all(&mut maps, &bindings)?;
    let host = |ip: IpAddr| LocalPrefix {
        addr: ip,
        len: if ip.is_ipv4() { 32 } else { 128 },
    };
    fn check(
        loaded: &mut Loaded,
        maps: &Maps,
        step: &str,
        want: &[(IpAddr, Verdict)],
    ) -> anyhow::Result<()> {
        for &(ip, verdict) in want {
            let client: std::net::SocketAddr = if ip.is_ipv4() {
                "198.18.0.1:40000".parse()?
            } else {
                "[2001:2::1]:40000".parse()?
            };
            let frame = FrameSpec::udp(client, (ip, 53).into(), b"x").build();
            let got = run_frame(loaded, maps, &frame)?.verdict;
            ensure!(got == verdict, "{step}: {ip} got {got:?}, not {verdict:?}");
        }
        Ok(())
    }
    // Steered to the binding: it reaches the redirect (no socket under the test run).
    let (yes, no, bcast) = (
        Verdict::PassNoSocket,
        Verdict::PassNotLocal,
        Verdict::PassMulticast,
    );
    check(
        &mut loaded,
        &maps,
        "none local",
        &[(a, no), (b, no), (c, no), (v6, no)],
    )?;
    maps.set_local(host(a), LocalKind::Local)?;
    check(
        &mut loaded,
        &maps,
        "a alone",
        &[(a, yes), (b, no), (c, no), (v6, no)],
    )?;
    maps.set_local(host(b), LocalKind::Local)?;
    check(
        &mut loaded,
        &maps,
        "a and b",
        &[(a, yes), (b, yes), (c, no), (v6, no)],
    )?;
    maps.set_local(host(v6), LocalKind::Local)?;
    check(
        &mut loaded,
        &maps,
        "a, b and v6",
        &[(a, yes), (b, yes), (c, no), (v6, yes)],
    )?;
    maps.remove_local(host(a))?;
    check(
        &mut loaded,
        &maps,
        "b and v6",
        &[(a, no), (b, yes), (c, no), (v6, yes)],
    )?;
    maps.remove_local(host(v6))?;
    check(
        &mut loaded,
        &maps,
        "b alone",
        &[(a, no), (b, yes), (c, no), (v6, no)],
    )?;
    maps.set_local(host(b), LocalKind::Broadcast)?;
    check(
        &mut loaded,
        &maps,
        "b a broadcast",
        &[(a, no), (b, bcast), (c, no)],
    )?;
    maps.remove_local(host(b))?;
    check(
        &mut loaded,
        &maps,
        "none again",
        &[(a, no), (b, no), (c, no), (v6, no)],
    )?;
    // The fixtures' own addresses were found all along.
    check(
        &mut loaded,
        &maps,
        "fixtures",
        &[("198.18.0.2".parse()?, yes), ("2001:2::2".parse()?, yes)],
    )?;
    Ok(())
}
