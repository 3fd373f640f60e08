#!/usr/bin/env python3
"""CPU time per delivered frame, by thread, in the flat-out phase of one throughput receiver.

The bench's own "cpu%" and "rx ns/pkt" read CPU 1's busy time, which on a shared machine also
holds other users' work. This reads the time of this run's own threads instead: the receiving
veth's NAPI thread (/proc/PID/schedstat), the bench process (its client thread; /proc/PID/stat,
which keeps the time of threads that ended) and the daemons it starts (one per round, sampled
every 20 ms while they live), from the first flat-out round to the start of the half-load
phase, divided by the frames delivered in the flat-out rounds (the JSON). The daemon's share
includes its start (program load, maps) in every round.

Usage (root): thread_cpu_per_packet.py BENCH_BINARY DAEMON_BINARY RECEIVER OUT_PREFIX [ROUNDS]
  BENCH_BINARY: target/release/deps/throughput-… (`cargo bench -p demux-user --bench throughput
  --no-run`); DAEMON_BINARY: target/release/demux; RECEIVER: demux_count or demux_client_fast.
"""
import json, os, re, subprocess, sys, time

bench, daemon, receiver, out = sys.argv[1:5]
rounds = sys.argv[5] if len(sys.argv) > 5 else "3"
log = open(out + ".txt", "w")
proc = subprocess.Popen(
    [bench, "--quick", "--rounds", rounds, "--receivers", receiver, "--json", out + ".json"],
    stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, DEMUX_BENCH_DAEMON=daemon))
TICK = os.sysconf("SC_CLK_TCK")


def stat_ns(pid):
    """utime + stime of a process (all its threads, ended ones included), in ns."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * 1e9 / TICK


def snapshot(iface):
    """CPU ns so far: the bench, and each NAPI thread and daemon of this testbed by pid."""
    now = {"bench": stat_ns(proc.pid)}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            comm = open(f"/proc/{pid}/comm").read().strip()
            if comm.startswith("napi/" + iface):
                now["napi " + pid] = int(open(f"/proc/{pid}/schedstat").read().split()[0])
            elif comm == "demux":
                cmdline = open(f"/proc/{pid}/cmdline").read().replace("\0", " ")
                if f"--iface {iface}" in cmdline:
                    now["daemon " + pid] = stat_ns(pid)
        except OSError:
            pass  # gone meanwhile
    return now


iface, first, seen, last = None, None, {}, None
while proc.poll() is None:
    text = open(out + ".txt").read()
    if iface is None:
        m = re.search(r"ip netns add (dmxb[0-9a-f]+-1b)", text)
        iface = m and m.group(1)
    elif first is None and "round 1 " in text:
        first = snapshot(iface)
    elif first is not None and last is None:
        now = snapshot(iface)
        seen.update(now)
        if re.search(r"\] \S+ v4 64B at \d+ pps", text):  # the half-load phase began
            last = now
    time.sleep(0.02)
case = json.load(open(out + ".json"))["cases"][0]
frames = sum(s["delivered"] for s in case["max"])
secs = sum(s["seconds"] for s in case["max"])
share = {"bench (client)": seen["bench"] - first["bench"]}
for kind in ("napi", "daemon"):
    share[kind] = sum(v - first.get(k, 0) for k, v in seen.items() if k.startswith(kind))
print(f"{receiver}: {frames / secs:.0f} pps flat out; ns per delivered frame: "
      + ", ".join(f"{k} {v / frames:.0f}" for k, v in share.items())
      + f"; total {sum(share.values()) / frames:.0f}; dropped on the AF_XDP rx ring "
      + f"{sum(s['dropped'].get('xsk_rx', 0) for s in case['max'])}")
