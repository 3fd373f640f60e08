//! Test support, kept out of the production library: the reference classifier
//! ([`model`]) with its fixture table, and the frame builder ([`frame`]) that tests, benchmarks
//! and the `demux-gen` traffic generator use. Enabled by the `testing` feature, which the
//! crate's own tests and benchmarks turn on through a dev-dependency on itself.

pub mod frame;
pub mod model;
