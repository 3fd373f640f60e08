//! The optional kernel features the daemon uses, detected at start-up: it logs one line with
//! what is on and off on this kernel, and one warning per feature that is off saying what
//! that changes. Each is probed where a probe is cheap and certain (the socket option, the
//! memfd flag), and read off the kernel's release where the daemon's own code path decides by
//! trying (aya attaches XDP through a BPF link and falls back to netlink on older kernels).
//! The README's "Requirements" lists the same features with their minimum kernels.

use std::fmt;

use tracing::{info, warn};

/// A kernel release, `major.minor`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Release(pub u32, pub u32);

impl Release {
    /// Reads `6.1.0-27-amd64` and the like: the first two numbers.
    pub fn parse(text: &str) -> Option<Self> {
        let mut numbers = text
            .trim()
            .split(|c: char| !c.is_ascii_digit())
            .map(str::parse::<u32>);
        Some(Self(numbers.next()?.ok()?, numbers.next()?.ok()?))
    }

    /// This kernel's (`/proc/sys/kernel/osrelease`).
    pub fn running() -> Option<Self> {
        Self::parse(&std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?)
    }
}

impl fmt::Display for Release {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.0, self.1)
    }
}

/// One optional feature and whether this kernel has it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Feature {
    /// Its short name, as logged.
    pub name: &'static str,
    /// The first kernel release that has it.
    pub since: Release,
    /// Whether this kernel has it.
    pub on: bool,
    /// What the daemon does without it.
    pub when_off: &'static str,
}

/// Detects every optional feature the daemon uses.
pub fn detect() -> Vec<Feature> {
    let running = Release::running();
    let at_least = |since: Release| running.is_some_and(|r| r >= since);
    vec![
        Feature {
            name: "XDP through a BPF link",
            since: Release(5, 9),
            on: at_least(Release(5, 9)),
            when_off: "the program is attached through netlink: if the daemon is killed, it stays \
                       attached (and steers to nobody) until `ip link set dev IFACE xdp off`",
        },
        Feature {
            name: "SO_NETNS_COOKIE",
            since: Release(5, 14),
            on: socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)
                .and_then(|socket| crate::sys::socket::netns_cookie(&socket))
                .is_ok(),
            when_off: "a backing socket's namespace cannot be checked: every UDP endpoint on an \
                       address is refused",
        },
        Feature {
            // Decided by trying: each queue's socket binds with it and falls back without on
            // EINVAL (the worker logs which it got, `QueueSocket::describe`).
            name: "multi-buffer AF_XDP (XDP_USE_SG)",
            since: Release(6, 6),
            on: at_least(Release(6, 6)),
            when_off: "AF_XDP sockets are bound without it: frames longer than one UMEM frame \
                       (3,840 bytes: jumbo MTUs) pass to the kernel (`pass_too_large`) and reach \
                       endpoints through their backing sockets",
        },
        Feature {
            name: "MFD_NOEXEC_SEAL",
            since: Release(6, 3),
            on: crate::sys::has_memfd_noexec_seal(),
            when_off: "client rings are memfds without the no-exec seal (still sealed against \
                       resizing)",
        },
    ]
}

/// Logs the features: one line for all, one warning per feature that is off.
pub fn log(features: &[Feature]) {
    let list = |on: bool| {
        let names: Vec<String> = features
            .iter()
            .filter(|f| f.on == on)
            .map(|f| format!("{} ({}+)", f.name, f.since))
            .collect();
        if names.is_empty() {
            "none".to_owned()
        } else {
            names.join(", ")
        }
    };
    let release = Release::running().map_or_else(|| "unknown".to_owned(), |r| r.to_string());
    info!(
        "kernel {release}: features on: {}; off: {}; not used by this version: XDP metadata \
         kfuncs (6.3+, VLAN tag 6.8+)",
        list(true),
        list(false)
    );
    for feature in features.iter().filter(|f| !f.on) {
        warn!(
            "kernel feature off: {} (Linux {}+): {}",
            feature.name, feature.since, feature.when_off
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_kernel_releases() {
        assert_eq!(Release::parse("6.1.0-27-amd64"), Some(Release(6, 1)));
        assert_eq!(Release::parse("6.18.3\n"), Some(Release(6, 18)));
        assert_eq!(Release::parse("5.15.0-1050-azure"), Some(Release(5, 15)));
        assert_eq!(Release::parse("garbage"), None);
        assert!(Release(5, 15) < Release(6, 1) && Release(6, 9) < Release(6, 18));
    }

    #[test]
    fn probes_agree_with_the_running_release() {
        // Each probe must find its feature on a kernel at least as new as the feature, and
        // none on an older one: a probe that always said "on" (or "off") fails one side.
        let running = Release::running().expect("a Linux kernel release");
        for feature in detect() {
            assert_eq!(
                feature.on,
                running >= feature.since,
                "{} on kernel {running}",
                feature.name
            );
        }
    }
}
