//! Helpers shared by the unit tests of the doctor's modules.

use std::path::{Path, PathBuf};

use super::{Check, Status};

pub(super) fn hosts_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/hosts")
}

pub(super) fn find<'a>(checks: &'a [Check], name: &str) -> &'a Check {
    checks
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no check {name} in {checks:#?}"))
}

pub(super) fn status_of(checks: &[Check], name: &str) -> Status {
    find(checks, name).status
}
