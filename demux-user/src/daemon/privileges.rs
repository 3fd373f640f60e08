//! Least privilege: the capabilities the daemon needs to start (the load-time set), the ones it
//! keeps once started (the run-time set), the check at start that names a missing one, and the
//! drop to the run-time set once the program is loaded and attached and the sockets are open.
//! Why each capability is in a set is written next to it here and in docs/SECURITY.md
//! ("Capabilities"); `dist/demux.service` grants exactly the load-time set (a test checks).
//!
//! The daemon keeps uid 0: see docs/SECURITY.md for what would need it.

use thiserror::Error;

use crate::sys::caps::{self, CapSet, Capability};

/// A capability and the step that needs it.
#[derive(Clone, Copy, Debug)]
pub struct Need {
    /// The capability.
    pub cap: Capability,
    /// What the daemon does with it (the step that fails without it).
    pub step: &'static str,
}

/// Kept from start to end: `unix:` sink records carry the caller's credentials.
const UNIX_SINK_UID: Need = Need {
    cap: Capability::SETUID,
    step: "delivering to unix: sinks with the caller's uid (SCM_CREDENTIALS)",
};
const UNIX_SINK_GID: Need = Need {
    cap: Capability::SETGID,
    step: "delivering to unix: sinks with the caller's gid (SCM_CREDENTIALS)",
};

/// What the daemon needs to start: every step up to READY=1, for any configuration.
pub const LOAD_TIME: [Need; 9] = [
    Need {
        cap: Capability::BPF,
        step: "loading the XDP and SK_REUSEPORT programs and creating their maps (bpf)",
    },
    Need {
        cap: Capability::PERFMON,
        step: "loading the XDP program: without it the verifier refuses the cursor's packet \
               pointer subtraction (`pointer -= pointer prohibited`) and adds its Spectre \
               mitigations",
    },
    Need {
        cap: Capability::NET_ADMIN,
        step: "loading networking BPF programs (XDP, SK_REUSEPORT) and attaching XDP to the \
               interfaces",
    },
    Need {
        cap: Capability::NET_RAW,
        step: "opening the AF_XDP sockets",
    },
    Need {
        cap: Capability::IPC_LOCK,
        step: "registering each AF_XDP socket's UMEM (locked memory beyond RLIMIT_MEMLOCK)",
    },
    Need {
        cap: Capability::NET_BIND_SERVICE,
        step: "binding configured endpoints (and --metrics) on ports below 1024",
    },
    Need {
        cap: Capability::CHOWN,
        step: "giving the control socket to --control-group",
    },
    UNIX_SINK_UID,
    UNIX_SINK_GID,
];

/// What the daemon keeps once started, for what it still does while it runs.
pub const RUN_TIME: [Need; 7] = [
    Need {
        cap: Capability::BPF,
        step: "writing the binding maps on every bind and close (Linux 6.1, Debian 12's: \
               every bpf() call needs it while kernel.unprivileged_bpf_disabled is set; 6.18 \
               checks only map and program creation)",
    },
    Need {
        cap: Capability::NET_ADMIN,
        step: "attaching XDP to interfaces added on reload",
    },
    Need {
        cap: Capability::NET_RAW,
        step: "opening AF_XDP sockets for interfaces added on reload",
    },
    Need {
        cap: Capability::IPC_LOCK,
        step: "registering the UMEM of interfaces added on reload",
    },
    Need {
        cap: Capability::NET_BIND_SERVICE,
        step: "binding endpoints below port 1024 added to the config on reload",
    },
    UNIX_SINK_UID,
    UNIX_SINK_GID,
];

/// The set of `needs`.
pub fn set_of(needs: &[Need]) -> CapSet {
    CapSet(needs.iter().fold(0, |bits, need| bits | 1 << need.cap.0))
}

/// Why the daemon cannot start with its capabilities, or could not lower them.
#[derive(Debug, Error)]
pub enum PrivilegeError {
    /// A capability of the load-time set is not effective.
    #[error(
        "missing capability {cap}: needed for {step}; start the daemon as root or with the \
         capabilities {all} (see docs/SECURITY.md, Capabilities)"
    )]
    Missing {
        /// The first one missing.
        cap: Capability,
        /// What needs it.
        step: &'static str,
        /// The whole load-time set.
        all: CapSet,
    },
    /// capget failed.
    #[error("reading the daemon's capabilities (capget): {0}")]
    Read(std::io::Error),
    /// capset failed.
    #[error("lowering the daemon's capabilities to {keep} (capset): {source}")]
    Restrict {
        /// The set asked for.
        keep: CapSet,
        /// What the kernel said.
        source: std::io::Error,
    },
    /// prctl failed.
    #[error("{step} (prctl): {source}")]
    Prctl {
        /// What was being done.
        step: String,
        /// What the kernel said.
        source: std::io::Error,
    },
}

/// Fails with the first capability of the load-time set that is not effective, naming the
/// step that needs it.
pub fn check_load_time() -> Result<(), PrivilegeError> {
    let effective = caps::current().map_err(PrivilegeError::Read)?.effective;
    match LOAD_TIME.iter().find(|need| !effective.has(need.cap)) {
        Some(need) => Err(PrivilegeError::Missing {
            cap: need.cap,
            step: need.step,
            all: set_of(&LOAD_TIME),
        }),
        None => Ok(()),
    }
}

/// What [`drop_to_run_time`] did.
#[derive(Clone, Copy, Debug)]
pub struct Dropped {
    /// The effective (and permitted) set now.
    pub kept: CapSet,
    /// What was effective before and is gone now.
    pub dropped: CapSet,
    /// Whether the bounding set was lowered too (needs CAP_SETPCAP; under systemd the unit's
    /// `CapabilityBoundingSet` already did it).
    pub bounding_lowered: bool,
}

/// Lowers the calling thread to the run-time set, for good: drops everything else from the
/// bounding set where CAP_SETPCAP allows, sets the permitted and effective sets to the
/// run-time set (the inheritable and ambient sets to nothing), and sets `no_new_privs` so no
/// `execve` could regain anything (see [`restrict_thread`]).
///
/// Capabilities belong to threads: threads started afterwards by this one inherit the run-time
/// set; threads started earlier call [`restrict_thread`] themselves.
pub fn drop_to_run_time() -> Result<Dropped, PrivilegeError> {
    let before = caps::current().map_err(PrivilegeError::Read)?;
    let keep = set_of(&RUN_TIME);
    let mut bounding_lowered = false;
    if before.effective.has(Capability::SETPCAP) {
        for cap in CapSet(u64::MAX).without(keep).iter() {
            if caps::in_bounding_set(cap) {
                caps::drop_from_bounding_set(cap).map_err(|source| PrivilegeError::Prctl {
                    step: format!("dropping {cap} from the bounding set"),
                    source,
                })?;
            }
        }
        bounding_lowered = true;
    }
    restrict_thread()?;
    let after = caps::current().map_err(PrivilegeError::Read)?;
    Ok(Dropped {
        kept: after.effective,
        dropped: before.effective.without(after.effective),
        bounding_lowered,
    })
}

/// Lowers the calling thread's effective and permitted sets to the run-time set (what of it
/// the thread has) and sets its `no_new_privs`: for threads started before
/// [`drop_to_run_time`] (the queue workers, once their socket is open).
pub fn restrict_thread() -> Result<(), PrivilegeError> {
    let now = caps::current().map_err(PrivilegeError::Read)?;
    let keep = set_of(&RUN_TIME).and(now.permitted);
    caps::restrict_to(keep).map_err(|source| PrivilegeError::Restrict { keep, source })?;
    caps::set_no_new_privs().map_err(|source| PrivilegeError::Prctl {
        step: "setting no_new_privs".to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_run_time_set_is_within_the_load_time_set() {
        // Capabilities cannot be raised again once dropped: whatever runs later must have been
        // there at start.
        let (load, run) = (set_of(&LOAD_TIME), set_of(&RUN_TIME));
        assert_eq!(run.without(load), CapSet(0), "{run} not within {load}");
        assert!(
            !run.has(Capability::PERFMON),
            "loading happens only at start"
        );
        assert!(
            !run.has(Capability::CHOWN),
            "the control socket is made once"
        );
        assert!(!load.has(Capability::SYS_ADMIN));
    }

    /// The unit file grants exactly the load-time set: this fails when the two drift apart.
    #[test]
    fn the_unit_file_grants_exactly_the_load_time_set() {
        let unit = include_str!("../../../dist/demux.service");
        for key in ["CapabilityBoundingSet=", "AmbientCapabilities="] {
            let line = unit
                .lines()
                .find(|l| l.starts_with(key))
                .unwrap_or_else(|| panic!("no {key} in dist/demux.service"));
            let granted = CapSet(
                line[key.len()..]
                    .split_whitespace()
                    .map(|name| {
                        let cap = Capability::from_name(name)
                            .unwrap_or_else(|| panic!("{key}: unknown capability {name}"));
                        1u64 << cap.0
                    })
                    .fold(0, |a, b| a | b),
            );
            assert_eq!(granted, set_of(&LOAD_TIME), "{key} in dist/demux.service");
        }
    }

    #[test]
    fn every_capability_says_what_needs_it() {
        for need in LOAD_TIME.iter().chain(&RUN_TIME) {
            assert!(need.step.len() > 10, "{}", need.cap);
        }
    }
}
