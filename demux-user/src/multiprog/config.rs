//! The libxdp dispatcher's configuration (`struct xdp_dispatcher_config`, version 2, in the
//! dispatcher's read-only `.rodata` map and set as its `conf` global before load), byte by
//! byte as libxdp's `protocol.org` documents it:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 1 | `magic` = 236 |
//! | 1 | 1 | `dispatcher_version` = 2 |
//! | 2 | 1 | `num_progs_enabled` |
//! | 3 | 1 | `is_xdp_frags` |
//! | 4 | 40 | `chain_call_actions[10]` (u32: bit n continues the chain on action n) |
//! | 44 | 40 | `run_prios[10]` (u32) |
//! | 84 | 40 | `program_flags[10]` (u32: `BPF_F_XDP_HAS_FRAGS` or 0) |

use thiserror::Error;

/// Slots in one dispatcher.
pub const MAX_PROGRAMS: usize = 10;
/// `XDP_DISPATCHER_MAGIC`.
pub const MAGIC: u8 = 236;
/// `XDP_DISPATCHER_VERSION` this code speaks.
pub const VERSION: u8 = 2;
/// The bit of `XDP_DISPATCHER_RETVAL` (what an empty slot returns): always set in every slot's
/// chain-call actions, so that a slot whose program went away lets the chain continue.
pub const RETVAL_BIT: u32 = 1 << 31;
/// Size of the whole structure.
pub const SIZE: usize = 4 + 3 * 4 * MAX_PROGRAMS;

/// A configuration the dispatcher cannot take, or one read back that this code does not speak.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("dispatcher configuration: {found} bytes, version 2 has {SIZE}")]
    Size { found: usize },
    #[error("dispatcher configuration: magic {found}, expected {MAGIC} (not a libxdp dispatcher)")]
    Magic { found: u8 },
    #[error("dispatcher version {found} is not the version {VERSION} this demux speaks")]
    Version { found: u8 },
    #[error(
        "a dispatcher holds at most {MAX_PROGRAMS} programs; the interface would have {count}"
    )]
    TooMany { count: usize },
}

/// One slot: the run priority, chain-call actions and flags of the program in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slot {
    /// Lower runs first; libxdp's default is 50, xdp-filter's 10.
    pub run_prio: u32,
    /// Bit n set: action n continues to the next slot (without [`RETVAL_BIT`]).
    pub chain_call_actions: u32,
    /// `BPF_F_XDP_HAS_FRAGS` if the program takes multi-buffer frames, else 0.
    pub flags: u32,
}

/// The decoded configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DispatcherConfig {
    /// The dispatcher was loaded with `BPF_F_XDP_HAS_FRAGS`.
    pub is_xdp_frags: bool,
    /// The enabled slots, in run order.
    pub slots: Vec<Slot>,
}

fn word(bytes: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

impl DispatcherConfig {
    /// Encodes for the dispatcher's `conf` global.
    pub fn to_bytes(&self) -> Result<[u8; SIZE], ConfigError> {
        if self.slots.len() > MAX_PROGRAMS {
            return Err(ConfigError::TooMany {
                count: self.slots.len(),
            });
        }
        let mut bytes = [0u8; SIZE];
        bytes[0] = MAGIC;
        bytes[1] = VERSION;
        bytes[2] = self.slots.len() as u8;
        bytes[3] = u8::from(self.is_xdp_frags);
        for (i, slot) in self.slots.iter().enumerate() {
            let put = |bytes: &mut [u8; SIZE], base: usize, value: u32| {
                bytes[base + 4 * i..base + 4 * i + 4].copy_from_slice(&value.to_ne_bytes())
            };
            put(&mut bytes, 4, slot.chain_call_actions | RETVAL_BIT);
            put(&mut bytes, 4 + 40, slot.run_prio);
            put(&mut bytes, 4 + 80, slot.flags);
        }
        Ok(bytes)
    }

    /// Decodes a running dispatcher's configuration.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ConfigError> {
        if bytes.len() != SIZE {
            return Err(ConfigError::Size { found: bytes.len() });
        }
        if bytes[0] != MAGIC {
            return Err(ConfigError::Magic { found: bytes[0] });
        }
        if bytes[1] != VERSION {
            return Err(ConfigError::Version { found: bytes[1] });
        }
        let count = bytes[2] as usize;
        if count > MAX_PROGRAMS {
            return Err(ConfigError::TooMany { count });
        }
        let slots = (0..count)
            .map(|i| Slot {
                chain_call_actions: word(bytes, 4 + 4 * i) & !RETVAL_BIT,
                run_prio: word(bytes, 44 + 4 * i),
                flags: word(bytes, 84 + 4 * i),
            })
            .collect();
        Ok(Self {
            is_xdp_frags: bytes[3] != 0,
            slots,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_layout_is_libxdps() {
        let config = DispatcherConfig {
            is_xdp_frags: false,
            slots: vec![
                Slot {
                    run_prio: 10,
                    chain_call_actions: 1 << 2,
                    flags: 0,
                },
                Slot {
                    run_prio: 100,
                    chain_call_actions: 1 << 2,
                    flags: 0,
                },
            ],
        };
        let bytes = config.to_bytes().unwrap();
        assert_eq!(SIZE, 124);
        assert_eq!(&bytes[..4], &[236, 2, 2, 0]);
        assert_eq!(
            word(&bytes, 4),
            (1 << 2) | (1 << 31),
            "retval bit always set"
        );
        assert_eq!(word(&bytes, 48), 100, "second run priority");
        assert_eq!(word(&bytes, 12), 0, "unused slots stay zero");
        assert_eq!(DispatcherConfig::from_bytes(&bytes).unwrap(), config);
    }

    #[test]
    fn foreign_or_newer_configurations_are_refused() {
        let mut bytes = DispatcherConfig::default().to_bytes().unwrap();
        bytes[1] = 3;
        assert_eq!(
            DispatcherConfig::from_bytes(&bytes),
            Err(ConfigError::Version { found: 3 })
        );
        bytes[0] = 1;
        assert_eq!(
            DispatcherConfig::from_bytes(&bytes),
            Err(ConfigError::Magic { found: 1 })
        );
        assert_eq!(
            DispatcherConfig::from_bytes(&bytes[..100]),
            Err(ConfigError::Size { found: 100 })
        );
        let eleven = DispatcherConfig {
            is_xdp_frags: false,
            slots: vec![
                Slot {
                    run_prio: 1,
                    chain_call_actions: 0,
                    flags: 0
                };
                11
            ],
        };
        assert_eq!(eleven.to_bytes(), Err(ConfigError::TooMany { count: 11 }));
    }
}
