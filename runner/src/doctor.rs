//! `cargo sandbox-test doctor`: checks every capability the runner uses.

use crate::container::ZygoteHandle;

/// Options of `cargo sandbox-test doctor`.
#[derive(Debug, Clone, clap::Args)]
pub struct DoctorArgs {}

/// Runs the checks and returns the exit code.
pub fn run(_args: &DoctorArgs, _zygote: ZygoteHandle) -> i32 {
    eprintln!("doctor: not built yet");
    1
}
