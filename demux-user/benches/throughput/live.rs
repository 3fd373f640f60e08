//! The live-frames sender (`--sender live`): BPF_PROG_RUN in `BPF_F_TEST_XDP_LIVE_FRAMES` mode
//! runs the benchmarks' `bench_send` program on the sender's veth, in namespace A on CPU 0. Each
//! run turns the template frame into the next frame of the generator's set and sends it with
//! XDP_TX, so the receiving veth gets an `xdp_frame` through `ndo_xdp_xmit`: no skb, and none of
//! the copy veth makes of an skb before XDP (`veth_convert_skb_to_xdp_buff`), which the AF_XDP
//! sender's frames all pay. A NIC's driver runs XDP on the page it received into, as here.
//! The program paces itself (it spins on the clock until each frame's time), because one
//! BPF_PROG_RUN call sets up a page pool and takes milliseconds: a sample is one call.

use anyhow::{ensure, Context as _};
use aya::{
    maps::Array,
    programs::{TestRun, TestRunAttrs, TestRunOptions, Xdp},
    Ebpf,
};
use demux::testing::{
    bench_object,
    frame::{self, FrameSpec},
};
use demux_common::bench::{SendState, SEND_MAP, SEND_PROGRAM};

use crate::{
    cases::{Traffic, FLOWS},
    generator::MAX_BURST,
    probes::Testbed,
};

/// The slowest rate the program paces (its wait spins at most about 100 µs).
pub(crate) const MIN_RATE: u64 = 20_000;
/// Frames XDP_TX hands the veth at a time (the live-frames batch) flat out. A paced run hands
/// each frame on alone: a batch leaves when its last frame is made, so its first would wait
/// (and read as latency) up to a batch's worth of intervals.
const FLAT_OUT_BATCH: u32 = 16;

/// Sends `traffic` for `secs` at `rate` pps (0: as fast as it goes); returns the frames sent,
/// the seconds it took and the frames forgiven (due while the sender was more than
/// [`MAX_BURST`] frames behind). Frames the veth refused (its ring full) are among the pair's
/// drops (`Testbed::veth_drops`).
pub(crate) fn send(
    testbed: &Testbed,
    traffic: &Traffic,
    rate: u64,
    secs: f64,
) -> anyhow::Result<(u64, f64, u64)> {
    ensure!(
        rate == 0 || rate >= MIN_RATE,
        "the live sender paces {MIN_RATE} pps and more, not {rate}"
    );
    let pair = &testbed.pair;
    let mac =
        |text: &str| frame::parse_mac(text).with_context(|| format!("`{text}`: not a MAC address"));
    let mut spec = FrameSpec::udp(traffic.src(), traffic.dst(), &vec![0x5a; traffic.payload()]);
    spec.dst_mac = mac(&pair.b_mac)?;
    spec.src_mac = mac(&pair.a_mac)?;
    let mut template = spec.build();
    // The generator's frames: a stamp in the payload, and over IPv4 no UDP checksum (the
    // program keeps an IPv6 one right as it changes the frame).
    frame::stamp_udp(&mut template, 0, 0);
    let src_low = match traffic.src().ip() {
        std::net::IpAddr::V4(a) => u32::from(a),
        std::net::IpAddr::V6(a) => u128::from(a) as u32,
    };
    ensure!(
        src_low.checked_add(traffic.sources).is_some(),
        "the source addresses would carry beyond their last 32 bits"
    );
    let distinct = u32::from(FLOWS.max(traffic.ports)).max(traffic.sources);
    let interval_ns = 1_000_000_000u64.checked_div(rate).unwrap_or(0);
    let state = SendState {
        interval_ns,
        max_lag_ns: interval_ns * MAX_BURST,
        distinct,
        flows: u32::from(FLOWS),
        dst_ports: u32::from(traffic.ports),
        src_addrs: traffic.sources,
        src_low,
        src_port: traffic.src().port(),
        dst_port: traffic.dst().port(),
        family: if traffic.ipv6 { 6 } else { 4 },
        ..SendState::default()
    };
    let ifindex: u32 = pair
        .a
        .read(&format!("/sys/class/net/{}/ifindex", pair.a_if))?
        .trim()
        .parse()
        .context("the sender veth's ifindex")?;
    // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index,
    // egress_ifindex.
    let ctx: Vec<u8> = [0, template.len() as u32, 0, ifindex, 0, 0]
        .iter()
        .flat_map(|v: &u32| v.to_ne_bytes())
        .collect();
    let total = if rate == 0 {
        u64::MAX
    } else {
        (rate as f64 * secs) as u64
    };
    pair.a.run_in(|| {
        crate::sys::pin_cpu(0);
        let mut ebpf = Ebpf::load(bench_object::OBJECT).context("loading the bench object")?;
        Array::<_, SendState>::try_from(ebpf.map_mut(SEND_MAP).context(SEND_MAP)?)?
            .set(0, state, 0)?;
        let program: &mut Xdp = ebpf
            .program_mut(SEND_PROGRAM)
            .context(SEND_PROGRAM)?
            .try_into()?;
        program.load().context("loading the live sender")?;
        let started = std::time::Instant::now();
        let mut runs = 0u64;
        while started.elapsed().as_secs_f64() < secs && runs < total {
            // Flat out, calls of 2^20 frames until the time is up; paced, one call.
            let repeat = (total - runs).min(if rate == 0 {
                1 << 20
            } else {
                u64::from(u32::MAX)
            });
            program
                .test_run(TestRunOptions {
                    data_in: Some(&template),
                    ctx_in: Some(&ctx),
                    repeat: repeat as u32,
                    attrs: TestRunAttrs::new().xdp_live_frames(if rate == 0 {
                        FLAT_OUT_BATCH
                    } else {
                        1
                    }),
                    ..TestRunOptions::new()
                })
                .context("BPF_PROG_RUN (live frames)")?;
            runs += repeat;
        }
        let seconds = started.elapsed().as_secs_f64();
        let end =
            Array::<_, SendState>::try_from(ebpf.map(SEND_MAP).context(SEND_MAP)?)?.get(&0, 0)?;
        Ok((end.seq, seconds, end.forgiven))
    })
}
