//! Privileged tests: they load BPF programs and build network namespaces, so they need root
//! (CAP_BPF, CAP_NET_ADMIN). The harness is libtest-mimic: `--list`, name filters, `--exact`,
//! `--skip`, `--test-threads` work as with libtest, and tests run in parallel (every fixture
//! has names of its own, `demux::testing::testbed`).
//!
//! Each module registers its tests (`pub fn tests() -> Vec<Trial>`, through [`trials!`]). When
//! they cannot run here, that is decided as they are listed: every test is marked ignored, the
//! harness prints `test NAME ... skipped: <reason>` for each one it was asked to run, and the
//! closing line counts them as ignored (`cargo xtask test` adds them up as skipped), never as
//! passed.
#![deny(unsafe_code)]

/// The [`Trial`]s of the named test functions (`fn() -> anyhow::Result<()>`) of the calling
/// module, each named `module::function`.
macro_rules! trials {
    ($($test:ident),* $(,)?) => {
        vec![$($crate::trial(module_path!(), stringify!($test), $test)),*]
    };
}

mod backing;
mod capabilities;
mod checksums;
mod classifier;
mod clients;
mod daemon;
mod endpoints;
mod fastpath;
mod jumbo;
mod large;
mod local;
mod multicast;
mod multiprog;
mod multiqueue;
mod oracle;
mod program;
mod reload;
mod restart;
mod reuseport;
mod steer;

use std::process::ExitCode;

use libtest_mimic::{Arguments, Failed, Trial};

/// A test as a [`Trial`]: an error or a panic fails it, with its message.
pub fn trial(module: &str, name: &str, test: fn() -> anyhow::Result<()>) -> Trial {
    // `privileged::endpoints` → `endpoints`.
    let module = module.split_once("::").map_or(module, |(_, rest)| rest);
    Trial::test(format!("{module}::{name}"), move || {
        test().map_err(|error| Failed::from(format!("{error:#}")))
    })
}

fn main() -> ExitCode {
    // Interrupted (Ctrl-C, a CI timeout's SIGTERM): stop the daemons and remove the namespaces
    // and directories still up, instead of leaving them behind.
    demux::testing::testbed::remove_on_signal("privileged tests");
    let args = Arguments::from_args();
    let skip = missing_privilege();
    let tests: Vec<Trial> = [
        program::tests(),
        classifier::tests(),
        steer::tests(),
        daemon::tests(),
        endpoints::tests(),
        local::tests(),
        clients::tests(),
        fastpath::tests(),
        large::tests(),
        jumbo::tests(),
        backing::tests(),
        restart::tests(),
        reload::tests(),
        checksums::tests(),
        multicast::tests(),
        multiqueue::tests(),
        oracle::tests(),
        reuseport::tests(),
        capabilities::tests(),
        multiprog::tests(),
    ]
    .into_iter()
    .flatten()
    .map(|trial| {
        // A module may have marked some ignored itself (a kernel feature they need is missing).
        let ignored = skip.is_some() || trial.has_ignored_flag();
        trial.with_ignored_flag(ignored)
    })
    .collect();
    // The tests this run skips, with the reason (libtest-mimic itself only says `ignored`).
    let skipped: Vec<String> = if args.list {
        Vec::new()
    } else {
        tests
            .iter()
            .filter(|t| !args.is_filtered_out(t) && args.is_ignored(t))
            .filter_map(|t| {
                // The run's own reason, or a module's (tests that need a kernel feature).
                let reason = skip.as_deref().or_else(|| {
                    t.name()
                        .starts_with("multiprog::")
                        .then(|| multiprog::skip_reason(t.name()))
                        .flatten()
                        .or_else(|| {
                            t.name()
                                .starts_with("jumbo::")
                                .then(jumbo::skip_reason)
                                .flatten()
                        })
                })?;
                Some(format!("test {} ... skipped: {reason}", t.name()))
            })
            .collect()
    };
    let conclusion = libtest_mimic::run(&args, tests);
    for line in &skipped {
        println!("{line}");
    }
    conclusion.exit_code()
}

/// Why privileged tests cannot run here, if they cannot.
fn missing_privilege() -> Option<String> {
    if demux::sys::euid() != 0 {
        return Some("not root (needs CAP_BPF and CAP_NET_ADMIN); run as root".into());
    }
    None
}
