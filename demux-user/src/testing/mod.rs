//! Test support, kept out of the production library: the reference classifier
//! ([`model`]) with its fixture table, the frame builder ([`frame`]) that tests, benchmarks
//! and the `demux-gen` traffic generator use, the benchmarks' XDP object ([`bench_object`]),
//! and the network testbed ([`testbed`]: namespaces, veth pairs, child processes) that the
//! privileged tests, the throughput benchmark and `cargo xtask demo` build on. Enabled by the
//! `testing` feature, which the crate's own tests and benchmarks turn on through a
//! dev-dependency on itself.

pub mod bench_object;
pub mod frame;
pub mod model;
// The one exception to "unsafe only in `sys`": the testbed (setns, signals, pre_exec) is also
// compiled into the xtask as source, where `demux::sys` does not exist. Test support only.
#[allow(unsafe_code)]
pub mod testbed;
