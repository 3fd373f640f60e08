//! The XDP program in the kernel without an interface: it loads (the verifier accepts it), and
//! BPF_PROG_TEST_RUN on crafted frames gives the expected action and exactly one counter step.

use anyhow::{ensure, Context as _};
use aya::programs::{TestRun, TestRunOptions};
use demux::{
    program::{BpfLogLevel, Loaded},
    verdicts::VerdictCounts,
};
use demux_common::Verdict;

use crate::packets;

const XDP_PASS: u32 = 2;

pub fn verifier_accepts_the_program() -> anyhow::Result<()> {
    // Both log settings: with logging compiled out, and with every log call live.
    for level in [BpfLogLevel::Off, BpfLogLevel::Trace] {
        Loaded::load(level).with_context(|| format!("loading with bpf log level {level:?}"))?;
    }
    Ok(())
}

pub fn test_run_verdicts() -> anyhow::Result<()> {
    let mut udp4_truncated = packets::udp4(9, b"hello");
    udp4_truncated.truncate(14 + 20 + 4); // half a UDP header
    let mut ipv4_short_total_length = packets::udp4(9, b"hello");
    ipv4_short_total_length[16..18].copy_from_slice(&20u16.to_be_bytes()); // no room for UDP
    let fixtures: [(&str, Vec<u8>, Verdict); 8] = [
        (
            "IPv4 UDP, no bindings",
            packets::udp4(9, b"hello"),
            Verdict::PassNoMatch,
        ),
        (
            "IPv6 UDP, no bindings",
            packets::udp6(9, b"hello"),
            Verdict::PassNoMatch,
        ),
        ("ARP", packets::arp(), Verdict::PassNotIp),
        ("ICMP", packets::icmp4(), Verdict::PassOtherProtocol),
        (
            "IPv4 first fragment",
            packets::udp4_first_fragment(),
            Verdict::PassFragment,
        ),
        (
            "UDP header cut short",
            udp4_truncated,
            Verdict::PassMalformed,
        ),
        (
            "IPv4 total length too short for UDP",
            ipv4_short_total_length,
            Verdict::PassMalformed,
        ),
        (
            "Ethernet header only",
            packets::udp4(9, b"")[..14].to_vec(),
            Verdict::PassMalformed,
        ),
    ];

    let mut loaded = Loaded::load(BpfLogLevel::Off)?;
    for (description, frame, expected) in fixtures {
        let before = VerdictCounts::read(loaded.ebpf())?;
        let result = loaded
            .program_mut()
            .test_run(TestRunOptions {
                data_in: Some(&frame),
                ..TestRunOptions::new()
            })
            .with_context(|| format!("{description}: BPF_PROG_TEST_RUN"))?;
        let delta = VerdictCounts::read(loaded.ebpf())?.since(&before);
        ensure!(
            result.return_value == XDP_PASS,
            "{description}: action {} instead of XDP_PASS",
            result.return_value
        );
        ensure!(
            delta.total() == 1 && delta.get(expected) == 1,
            "{description}: expected one {} packet, counters moved by {delta}",
            expected.name()
        );
    }
    Ok(())
}
