//! Privileged tests: they load BPF programs and build network namespaces, so they need root
//! (CAP_BPF, CAP_NET_ADMIN). A small harness of their own reports a test that cannot run as
//! `skipped: <reason>`, and counts it as skipped, never as passed. It closes with
//! `privileged: N passed, N failed, N skipped`.

mod classifier;
mod clients;
mod daemon;
mod endpoints;
mod netns;
mod program;
mod steer;

use std::{
    fmt,
    panic::{catch_unwind, AssertUnwindSafe},
    process::ExitCode,
};

/// Returned (inside `anyhow::Error`) by a test that cannot run here.
#[derive(Debug)]
pub struct Skip(pub String);

impl fmt::Display for Skip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Skip {}

type Test = fn() -> anyhow::Result<()>;

/// `module::function` paths, each listed with its own name.
macro_rules! tests {
    ($($module:ident :: $test:ident),* $(,)?) => {
        &[$((concat!(stringify!($module), "::", stringify!($test)), $module::$test)),*]
    };
}

const TESTS: &[(&str, Test)] = tests![
    program::verifier_accepts_the_program,
    classifier::fixtures_agree_with_the_program,
    classifier::differential_100k_frames,
    classifier::full_table_is_refused_by_name_and_rolled_back,
    steer::datagrams_reach_an_af_xdp_socket_with_metadata,
    daemon::counts_packets_on_a_veth_and_detaches,
    daemon::unknown_interface_is_one_clear_line,
    endpoints::precedence_end_to_end_and_the_kernel_keeps_the_rest,
    endpoints::sigkill_falls_back_to_the_kernel_and_a_restart_is_clean,
    endpoints::refused_requests_change_nothing,
    endpoints::a_bad_config_file_is_refused_by_line,
    clients::a_client_process_receives_a_burst_with_every_datagram_accounted,
    clients::a_killed_client_frees_its_endpoint_and_stalls_nothing,
    clients::the_library_receives_blocking_batch_and_async,
];

fn main() -> ExitCode {
    // cargo passes a name filter and libtest flags (`--quiet`, `--nocapture`, …); keep the filter.
    let filter = std::env::args().skip(1).find(|arg| !arg.starts_with('-'));
    let missing_privilege = missing_privilege();
    let (mut passed, mut failed, mut skipped) = (0, 0, 0);
    for (name, test) in TESTS {
        if filter.as_deref().is_some_and(|f| !name.contains(f)) {
            continue;
        }
        let outcome = match &missing_privilege {
            Some(reason) => Err(anyhow::Error::new(Skip(reason.clone()))),
            None => catch_unwind(AssertUnwindSafe(test))
                .unwrap_or_else(|_| Err(anyhow::anyhow!("panicked (message above)"))),
        };
        match outcome {
            Ok(()) => {
                passed += 1;
                println!("test {name} ... ok");
            }
            Err(error) => match error.downcast_ref::<Skip>() {
                Some(skip) => {
                    skipped += 1;
                    println!("test {name} ... skipped: {skip}");
                }
                None => {
                    failed += 1;
                    println!("test {name} ... FAILED: {error:#}");
                }
            },
        }
    }
    println!("privileged: {passed} passed, {failed} failed, {skipped} skipped");
    if failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Why privileged tests cannot run here, if they cannot.
fn missing_privilege() -> Option<String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root (needs CAP_BPF and CAP_NET_ADMIN); run as root".into());
    }
    None
}
