//! The process's capabilities: read the effective and permitted sets (`capget`), lower them
//! for good (`capset`, clearing the inheritable and ambient sets), drop capabilities from the
//! bounding set (`PR_CAPBSET_DROP`, which needs CAP_SETPCAP) and set `no_new_privs`, so that no
//! later `execve` can bring back what was dropped. Capabilities are named as in
//! `capabilities(7)`; a set is a 64-bit mask indexed by capability number.

use std::{fmt, io};

/// `_LINUX_CAPABILITY_VERSION_3`: two 32-bit words per set.
const VERSION_3: u32 = 0x2008_0522;

/// `struct __user_cap_header_struct`.
#[repr(C)]
struct Header {
    version: u32,
    pid: libc::c_int,
}

/// `struct __user_cap_data_struct`: one 32-bit word of each set.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Data {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// One capability, by its number in `linux/capability.h`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Capability(pub u8);

/// The names of capabilities 0 to 40, in number order.
const NAMES: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

impl Capability {
    /// CAP_CHOWN: give a file to a group the process is not in.
    pub const CHOWN: Self = Self(0);
    /// CAP_SETGID: send another gid in SCM_CREDENTIALS.
    pub const SETGID: Self = Self(6);
    /// CAP_SETUID: send another uid in SCM_CREDENTIALS.
    pub const SETUID: Self = Self(7);
    /// CAP_SETPCAP: drop capabilities from the bounding set.
    pub const SETPCAP: Self = Self(8);
    /// CAP_NET_BIND_SERVICE: bind ports below 1024.
    pub const NET_BIND_SERVICE: Self = Self(10);
    /// CAP_NET_ADMIN: network configuration, XDP attach, networking BPF programs.
    pub const NET_ADMIN: Self = Self(12);
    /// CAP_NET_RAW: AF_XDP sockets.
    pub const NET_RAW: Self = Self(13);
    /// CAP_IPC_LOCK: lock memory beyond RLIMIT_MEMLOCK.
    pub const IPC_LOCK: Self = Self(14);
    /// CAP_SYS_ADMIN.
    pub const SYS_ADMIN: Self = Self(21);
    /// CAP_PERFMON: BPF programs without the verifier's Spectre mitigations.
    pub const PERFMON: Self = Self(38);
    /// CAP_BPF: BPF maps, programs, links.
    pub const BPF: Self = Self(39);

    /// The capability named `name` (`CAP_BPF`, `bpf` or `cap_bpf`).
    pub fn from_name(name: &str) -> Option<Self> {
        let upper = name.to_ascii_uppercase();
        let full = if upper.starts_with("CAP_") {
            upper
        } else {
            format!("CAP_{upper}")
        };
        NAMES.iter().position(|n| *n == full).map(|i| Self(i as u8))
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match NAMES.get(usize::from(self.0)) {
            Some(name) => f.write_str(name),
            None => write!(f, "CAP_{}", self.0),
        }
    }
}

/// A set of capabilities: bit `n` is capability `n` (the layout of `CapEff:` and its siblings
/// in `/proc/PID/status`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CapSet(pub u64);

impl CapSet {
    /// The set of `caps`.
    pub const fn of(caps: &[Capability]) -> Self {
        let mut bits = 0u64;
        let mut i = 0;
        while i < caps.len() {
            bits |= 1 << caps[i].0;
            i += 1;
        }
        Self(bits)
    }

    /// Whether `cap` is in the set.
    pub fn has(self, cap: Capability) -> bool {
        cap.0 < 64 && self.0 & (1 << cap.0) != 0
    }

    /// The capabilities in the set, in number order.
    pub fn iter(self) -> impl Iterator<Item = Capability> {
        (0..64u8).map(Capability).filter(move |c| self.has(*c))
    }

    /// What is in `self` and not in `other`.
    pub fn without(self, other: Self) -> Self {
        Self(self.0 & !other.0)
    }

    /// What both sets hold.
    pub fn and(self, other: Self) -> Self {
        Self(self.0 & other.0)
    }
}

impl fmt::Display for CapSet {
    /// `CAP_NET_ADMIN,CAP_BPF`, or `none`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 == 0 {
            return f.write_str("none");
        }
        for (i, cap) in self.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{cap}")?;
        }
        Ok(())
    }
}

/// The calling thread's effective and permitted sets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Current {
    /// What the kernel checks now.
    pub effective: CapSet,
    /// What the process may still raise into the effective set.
    pub permitted: CapSet,
}

fn data_to(data: &[Data; 2], pick: impl Fn(&Data) -> u32) -> CapSet {
    CapSet(u64::from(pick(&data[0])) | u64::from(pick(&data[1])) << 32)
}

/// The calling thread's capabilities (`capget`).
pub fn current() -> io::Result<Current> {
    let mut header = Header {
        version: VERSION_3,
        pid: 0,
    };
    let mut data = [Data::default(); 2];
    // SAFETY: capget writes two `Data` words (version 3) into the live local array and reads
    // the header; pid 0 is the calling thread.
    let rc = unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(Current {
        effective: data_to(&data, |d| d.effective),
        permitted: data_to(&data, |d| d.permitted),
    })
}

/// Sets the calling thread's effective and permitted sets to `keep` and its inheritable set
/// to nothing (`capset`); the kernel clears the ambient set with it. Lowering the permitted
/// set is for good: a capability outside it cannot be raised again. Fails with EPERM if `keep`
/// holds a capability that is not permitted now.
///
/// Capabilities are per thread: call this before starting threads that should run with `keep`
/// (threads started later inherit it; threads already running keep their own).
pub fn restrict_to(keep: CapSet) -> io::Result<()> {
    let mut header = Header {
        version: VERSION_3,
        pid: 0,
    };
    let word = |shift: u32| Data {
        effective: (keep.0 >> shift) as u32,
        permitted: (keep.0 >> shift) as u32,
        inheritable: 0,
    };
    let data = [word(0), word(32)];
    // SAFETY: capset reads the header and two `Data` words (version 3) from live locals.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Lowers the calling thread for good: [`restrict_to`] `keep`, then [`set_no_new_privs`]
/// (both are per thread; threads it starts later inherit them).
pub fn lower_thread(keep: CapSet) -> io::Result<()> {
    restrict_to(keep)?;
    set_no_new_privs()
}

/// Whether `cap` is in the calling thread's bounding set (`PR_CAPBSET_READ`); false for a
/// capability this kernel does not know.
pub fn in_bounding_set(cap: Capability) -> bool {
    // SAFETY: prctl with integer arguments only.
    unsafe { libc::prctl(libc::PR_CAPBSET_READ, libc::c_ulong::from(cap.0), 0, 0, 0) == 1 }
}

/// Drops `cap` from the calling thread's bounding set (`PR_CAPBSET_DROP`, needs CAP_SETPCAP):
/// no `execve` can grant it again.
pub fn drop_from_bounding_set(cap: Capability) -> io::Result<()> {
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(cap.0), 0, 0, 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sets `no_new_privs` for the calling thread (`PR_SET_NO_NEW_PRIVS`; threads it starts later
/// inherit it): no `execve` grants capabilities (nor set-user-ID) beyond what the caller has.
/// It cannot be unset.
pub fn set_no_new_privs() -> io::Result<()> {
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1 as libc::c_ulong, 0, 0, 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_sets_print_in_number_order() {
        assert_eq!(Capability::from_name("bpf"), Some(Capability::BPF));
        assert_eq!(
            Capability::from_name("CAP_NET_RAW"),
            Some(Capability::NET_RAW)
        );
        assert_eq!(
            Capability::from_name("cap_perfmon"),
            Some(Capability::PERFMON)
        );
        assert_eq!(Capability::from_name("cap_flying"), None);
        for (i, name) in NAMES.iter().enumerate() {
            assert_eq!(Capability(i as u8).to_string(), *name);
        }
        let set = CapSet::of(&[Capability::BPF, Capability::NET_ADMIN]);
        assert_eq!(set.to_string(), "CAP_NET_ADMIN,CAP_BPF");
        assert_eq!(set.0, (1 << 12) | (1 << 39));
        assert_eq!(CapSet::default().to_string(), "none");
    }

    #[test]
    fn the_current_sets_are_readable_and_effective_is_within_permitted() {
        let now = current().expect("capget on ourselves");
        assert_eq!(now.effective.without(now.permitted), CapSet(0));
    }
}
