//! Attaching the XDP program to an interface: driver (native) mode first, generic (skb) mode as
//! a warned fallback, and errors that name the interface and the likely cause.

use std::{fmt, io};

use aya::programs::{xdp::XdpLinkId, ProgramError, Xdp, XdpMode};
use thiserror::Error;
use tracing::warn;

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
    pub link: XdpLinkId,
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
            link,
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
            " (another XDP program is attached to `{iface}`; remove it with \
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
