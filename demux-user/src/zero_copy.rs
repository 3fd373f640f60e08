//! `--zero-copy auto|on|off` (`zero_copy` in the config file): whether the daemon's AF_XDP
//! sockets (each queue's own and a fast-path lease's) bind in zero-copy mode, and the rule
//! `auto` follows ([`ZeroCopy::bind_mode`]).
//!
//! Zero-copy lets the driver receive straight into the UMEM, which the daemon (or a leasing
//! client) must then keep supplied with free frames: a queue in zero-copy mode delivers
//! nothing to the kernel's own stack except what the XDP program passes, and a stalled reader
//! starves its fill ring, so the queue drops. A queue that also carries the host's own traffic
//! (ssh, DNS, anything the program passes) would be cut off with it when the daemon stalls.
//! `auto` therefore uses zero-copy only on a queue known to carry nothing but demux's own
//! endpoints: one that a hardware flow-steering rule installed by the daemon feeds. The daemon
//! installs no such rule today, so `auto` is copy mode everywhere
//! ([`queue_is_demux_only`] is where a flow-steering feature would say otherwise).

use std::fmt;

use crate::xsk::BindMode;

/// The zero-copy setting.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ZeroCopy {
    /// Zero-copy only on queues that carry nothing but demux's endpoints (today: none).
    #[default]
    Auto,
    /// Zero-copy on every queue; the daemon fails at start if a driver lacks it.
    On,
    /// Copy mode everywhere (every driver has it, veth included).
    Off,
}

impl std::str::FromStr for ZeroCopy {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "auto" => Ok(ZeroCopy::Auto),
            "on" => Ok(ZeroCopy::On),
            "off" => Ok(ZeroCopy::Off),
            _ => Err(format!(
                "zero-copy: `{text}` is not one of auto, on, off (auto uses copy mode on a queue \
                 that also carries the host's traffic)"
            )),
        }
    }
}

impl fmt::Display for ZeroCopy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ZeroCopy::Auto => "auto",
            ZeroCopy::On => "on",
            ZeroCopy::Off => "off",
        })
    }
}

/// What the setting gives one interface's queues, and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    pub bind: BindMode,
    /// `auto` chose copy mode because a queue also carries the host's traffic (worth a log
    /// line: the operator asked for zero-copy where it is safe).
    pub host_traffic: bool,
}

impl ZeroCopy {
    /// How the sockets on `iface`'s rx queues `queues` bind: `on` and `off` as asked; `auto`
    /// zero-copy only if every queue carries nothing but demux's endpoints.
    pub fn bind_mode(self, iface: &str, queues: std::ops::Range<u32>) -> Decision {
        match self {
            ZeroCopy::On => Decision {
                bind: BindMode::ZeroCopy,
                host_traffic: false,
            },
            ZeroCopy::Off => Decision {
                bind: BindMode::Copy,
                host_traffic: false,
            },
            ZeroCopy::Auto => {
                let demux_only = queues
                    .clone()
                    .all(|queue| queue_is_demux_only(iface, queue));
                Decision {
                    bind: if demux_only && !queues.is_empty() {
                        BindMode::ZeroCopy
                    } else {
                        BindMode::Copy
                    },
                    host_traffic: !demux_only,
                }
            }
        }
    }
}

/// Whether rx queue `queue` of `iface` carries nothing but demux's endpoints. Only a hardware
/// flow-steering rule that the daemon installed itself (and removes) could promise that; under
/// plain RSS, or a rule someone else manages, any flow of the host can land on any queue. The
/// daemon installs none, so no queue qualifies.
pub fn queue_is_demux_only(_iface: &str, _queue: u32) -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_three_words_and_names_the_choices_otherwise() {
        assert_eq!("auto".parse(), Ok(ZeroCopy::Auto));
        assert_eq!("on".parse(), Ok(ZeroCopy::On));
        assert_eq!("off".parse(), Ok(ZeroCopy::Off));
        for bad in ["", "yes", "true", "On", "zerocopy"] {
            let error = bad.parse::<ZeroCopy>().unwrap_err();
            assert!(
                error.starts_with("zero-copy:") && error.contains("auto, on, off"),
                "{bad:?}: {error}"
            );
        }
        for setting in [ZeroCopy::Auto, ZeroCopy::On, ZeroCopy::Off] {
            assert_eq!(setting.to_string().parse(), Ok(setting));
        }
        assert_eq!(ZeroCopy::default(), ZeroCopy::Auto);
    }

    #[test]
    fn on_and_off_are_as_asked_and_auto_keeps_the_hosts_queues_in_copy_mode() {
        let on = ZeroCopy::On.bind_mode("eth0", 0..4);
        assert_eq!(on.bind, BindMode::ZeroCopy);
        assert!(!on.host_traffic);
        let off = ZeroCopy::Off.bind_mode("eth0", 0..4);
        assert_eq!(off.bind, BindMode::Copy);
        assert!(!off.host_traffic);
        // No queue is fed by a flow-steering rule of the daemon's: all may carry the host's
        // traffic, so `auto` copies, and says why.
        let auto = ZeroCopy::Auto.bind_mode("eth0", 0..4);
        assert_eq!(auto.bind, BindMode::Copy);
        assert!(auto.host_traffic);
    }
}
