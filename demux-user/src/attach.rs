//! Attaching the XDP program to an interface: driver (native) mode first, generic (skb) mode as
//! a warned fallback, and errors that name the interface and the likely cause. The program owns
//! the interface's XDP slot (`direct`) or shares it with other programs as a component of
//! libxdp's multi-program dispatcher (`multiprog`, see `crate::multiprog`); [`Sharing`] picks.

use std::{fmt, io};

use aya::programs::{xdp::XdpLinkId, ProgramError, Xdp, XdpMode};
use demux_common::maps;
use thiserror::Error;
use tracing::warn;

use crate::{
    multiprog::{self, DispatcherMode, Joined, MultiprogError},
    program::Loaded,
};

/// How the program takes its place on the interface (`--xdp-mode`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Sharing {
    /// `multiprog` if any of the interfaces runs a libxdp dispatcher at start, else `direct`.
    #[default]
    Auto,
    /// The program is the interface's only XDP program (fails with EBUSY next to another).
    Direct,
    /// The program joins libxdp's multi-program dispatcher (made if the interface has none),
    /// after filtering programs.
    Multiprog,
}

impl std::str::FromStr for Sharing {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "auto" => Ok(Sharing::Auto),
            "direct" => Ok(Sharing::Direct),
            "multiprog" => Ok(Sharing::Multiprog),
            _ => Err(format!(
                "xdp mode: `{text}` is not one of auto, direct, multiprog"
            )),
        }
    }
}

impl Sharing {
    /// Whether the program must be loaded as a dispatcher extension for `ifaces`: `Auto` asks
    /// the kernel what runs on each interface now.
    pub fn uses_dispatcher(self, ifaces: &[String]) -> Result<bool, AttachError> {
        match self {
            Sharing::Direct => Ok(false),
            Sharing::Multiprog => Ok(true),
            Sharing::Auto => {
                for iface in ifaces {
                    let index = ifindex(iface)?;
                    let multiprog_error = |source| AttachError::Multiprog {
                        iface: iface.clone(),
                        source: Box::new(source),
                    };
                    if multiprog::has_dispatcher(index).map_err(multiprog_error)? {
                        return Ok(true);
                    }
                }
                Ok(false)
            }
        }
    }
}

/// The XDP mode asked for on the command line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    /// Driver mode, falling back to skb mode (with a warning) when the driver refuses.
    #[default]
    Auto,
    /// Native XDP in the driver only; fail if the driver cannot.
    Driver,
    /// Generic XDP in the kernel's network stack (slower; works on every interface).
    Skb,
}

impl std::str::FromStr for AttachMode {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "auto" => Ok(AttachMode::Auto),
            "driver" => Ok(AttachMode::Driver),
            "skb" => Ok(AttachMode::Skb),
            _ => Err(format!("mode: `{text}` is not one of auto, driver, skb")),
        }
    }
}

/// The mode the program actually runs in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachedMode {
    Driver,
    Skb,
}

impl fmt::Display for AttachedMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AttachedMode::Driver => "driver",
            AttachedMode::Skb => "skb",
        })
    }
}

/// One attachment of the program to one interface.
#[derive(Debug)]
pub struct Attachment {
    pub iface: String,
    pub mode: AttachedMode,
    pub link: Link,
}

/// How the program is attached.
#[derive(Debug)]
pub enum Link {
    /// The interface's own XDP program.
    Direct(XdpLinkId),
    /// A component of libxdp's dispatcher.
    Multiprog(Joined),
}

/// A failed attach, with the interface and what probably went wrong.
#[derive(Debug, Error)]
pub enum AttachError {
    #[error("interface `{iface}` does not exist (list interfaces with `ip link`)")]
    UnknownInterface { iface: String },
    #[error("attaching XDP to `{iface}` in {mode} mode failed: {source}{}", hint(.source, .iface))]
    Attach {
        iface: String,
        mode: AttachedMode,
        #[source]
        source: ProgramError,
    },
    #[error("sharing `{iface}` through libxdp's dispatcher: {source}")]
    Multiprog {
        iface: String,
        /// Boxed: the protocol's errors are large, and every attach result carries this type.
        #[source]
        source: Box<MultiprogError>,
    },
}

/// The index of interface `iface` in this network namespace.
pub fn ifindex(iface: &str) -> Result<u32, AttachError> {
    let unknown = || AttachError::UnknownInterface {
        iface: iface.to_owned(),
    };
    crate::sys::if_nametoindex(iface).ok_or_else(unknown)
}

/// Attaches `program` to `iface` in the requested mode.
pub fn attach(program: &mut Xdp, iface: &str, mode: AttachMode) -> Result<Attachment, AttachError> {
    match mode {
        AttachMode::Driver => attach_in(program, iface, AttachedMode::Driver),
        AttachMode::Skb => attach_in(program, iface, AttachedMode::Skb),
        AttachMode::Auto => match attach_in(program, iface, AttachedMode::Driver) {
            Err(AttachError::Attach { source, .. }) if driver_refused(&source) => {
                warn!(
                    iface,
                    "driver mode refused ({source}); falling back to generic (skb) mode, which is slower"
                );
                attach_in(program, iface, AttachedMode::Skb)
            }
            other => other,
        },
    }
}

fn attach_in(
    program: &mut Xdp,
    iface: &str,
    mode: AttachedMode,
) -> Result<Attachment, AttachError> {
    let flags = match mode {
        AttachedMode::Driver => XdpMode::Driver,
        AttachedMode::Skb => XdpMode::Skb,
    };
    match program.attach(iface, flags) {
        Ok(link) => Ok(Attachment {
            iface: iface.to_owned(),
            mode,
            link: Link::Direct(link),
        }),
        Err(ProgramError::UnknownInterface { .. }) => Err(AttachError::UnknownInterface {
            iface: iface.to_owned(),
        }),
        Err(source) => Err(AttachError::Attach {
            iface: iface.to_owned(),
            mode,
            source,
        }),
    }
}

/// Attaches the loaded program to `iface` as it was loaded: directly, or into the interface's
/// libxdp dispatcher when it was loaded as an extension (a new dispatcher takes `mode`; an
/// existing one keeps its own).
pub fn attach_loaded(
    loaded: &mut Loaded,
    iface: &str,
    mode: AttachMode,
) -> Result<Attachment, AttachError> {
    let Some(extension) = loaded.extension_mut() else {
        return attach(loaded.program_mut(), iface, mode);
    };
    let index = ifindex(iface)?;
    let join = |extension: &mut aya::programs::Extension, mode| {
        multiprog::join(index, extension, maps::PROGRAM, mode).map_err(|source| {
            AttachError::Multiprog {
                iface: iface.to_owned(),
                source: Box::new(source),
            }
        })
    };
    let (joined, mode) = match mode {
        AttachMode::Driver => (
            join(extension, DispatcherMode::Driver)?,
            AttachedMode::Driver,
        ),
        AttachMode::Skb => (join(extension, DispatcherMode::Skb)?, AttachedMode::Skb),
        AttachMode::Auto => match join(extension, DispatcherMode::Driver) {
            Err(AttachError::Multiprog { source, .. }) if driver_refused_dispatcher(&source) => {
                warn!(
                    iface,
                    "driver mode refused ({source}); the dispatcher falls back to generic (skb) \
                     mode, which is slower"
                );
                (join(extension, DispatcherMode::Skb)?, AttachedMode::Skb)
            }
            other => (other?, AttachedMode::Driver),
        },
    };
    // An existing dispatcher keeps its mode: report the one the interface runs.
    let mode = match multiprog::link::query(index).map(|state| state.attached) {
        Ok(multiprog::link::Attached::Skb) => AttachedMode::Skb,
        Ok(multiprog::link::Attached::Driver) => AttachedMode::Driver,
        _ => mode,
    };
    Ok(Attachment {
        iface: iface.to_owned(),
        mode,
        link: Link::Multiprog(joined),
    })
}

/// Undoes [`attach_loaded`]: detaches the program, or takes it out of the dispatcher (which
/// goes too when nothing else is in it), removing demux's pins.
pub fn detach(loaded: &mut Loaded, attachment: Attachment) -> Result<(), AttachError> {
    match attachment.link {
        Link::Direct(link) => {
            loaded
                .program_mut()
                .detach(link)
                .map_err(|source| AttachError::Attach {
                    iface: attachment.iface,
                    mode: attachment.mode,
                    source,
                })
        }
        Link::Multiprog(joined) => multiprog::leave(joined.ifindex, maps::PROGRAM)
            .map(drop)
            .map_err(|source| AttachError::Multiprog {
                iface: attachment.iface,
                source: Box::new(source),
            }),
    }
}

/// Whether attaching a new dispatcher in driver mode failed in a way skb mode can get around.
fn driver_refused_dispatcher(error: &MultiprogError) -> bool {
    matches!(error, MultiprogError::Swap { source, .. }
        if matches!(source.raw_os_error(), Some(libc::EOPNOTSUPP | libc::EINVAL)))
}

/// Whether a driver-mode failure is one that skb mode can get around.
fn driver_refused(error: &ProgramError) -> bool {
    matches!(os_error(error), Some(libc::EOPNOTSUPP | libc::EINVAL))
}

/// The errno at the bottom of an error chain, if any.
fn os_error(error: &ProgramError) -> Option<i32> {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = current {
        if let Some(code) = e
            .downcast_ref::<io::Error>()
            .and_then(io::Error::raw_os_error)
        {
            return Some(code);
        }
        current = e.source();
    }
    None
}

/// The likely cause of an attach failure, from its errno.
fn hint(error: &ProgramError, iface: &str) -> String {
    match os_error(error) {
        Some(libc::EBUSY | libc::EEXIST) => format!(
            " (another XDP program is attached to `{iface}`: to share the interface, load it with \
             `xdp-loader` and start demux with `--xdp-mode multiprog`; or remove it with \
             `ip link set dev {iface} xdp off`)"
        ),
        Some(libc::EOPNOTSUPP) => {
            " (the driver has no native XDP: use `--mode skb` or `--mode auto`)".into()
        }
        Some(libc::EPERM | libc::EACCES) => {
            " (permission denied: run as root, with CAP_BPF and CAP_NET_ADMIN)".into()
        }
        Some(libc::EINVAL) => " (the interface refused the program: its MTU may be too large \
                                for XDP, or it does not support this mode)"
            .into(),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xdp_mode_parses_from_the_flag_and_the_file() {
        assert_eq!("multiprog".parse(), Ok(Sharing::Multiprog));
        assert_eq!("direct".parse(), Ok(Sharing::Direct));
        assert_eq!("auto".parse(), Ok(Sharing::Auto));
        let error = "shared".parse::<Sharing>().unwrap_err();
        assert!(error.contains("auto, direct, multiprog"), "{error}");
        let config = crate::config::Config::parse("xdp_mode = \"multiprog\"\n").unwrap();
        assert_eq!(config.xdp_mode, Sharing::Multiprog);
        assert_eq!(crate::config::Config::default().xdp_mode, Sharing::Auto);
        assert!(crate::config::Config::parse("xdp_mode = \"shared\"\n").is_err());
    }

    #[test]
    fn fixed_modes_need_no_kernel() {
        assert_eq!(
            Sharing::Direct.uses_dispatcher(&["x".into()]).ok(),
            Some(false)
        );
        assert_eq!(
            Sharing::Multiprog.uses_dispatcher(&["x".into()]).ok(),
            Some(true)
        );
    }

    #[test]
    fn only_a_refused_driver_mode_falls_back() {
        let swap = |code| MultiprogError::Swap {
            ifindex: 1,
            source: io::Error::from_raw_os_error(code),
        };
        assert!(driver_refused_dispatcher(&swap(libc::EOPNOTSUPP)));
        assert!(driver_refused_dispatcher(&swap(libc::EINVAL)));
        assert!(!driver_refused_dispatcher(&swap(libc::EBUSY)));
    }
}
