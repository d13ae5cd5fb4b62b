//! `cargo sandbox-test doctor`: checks every capability the runner uses and
//! prints one line per check with `ok`, `degraded` or `missing`, the value
//! read or the kernel's error, and the fix for anything not ok.
//!
//! The checks read host files, run a probe container through the zygote
//! (and a second one with read-only binds when the kernel rejects
//! overlayfs), and create and remove one test cgroup. The report has fixed
//! columns, a fixed order and no pids or timings, so two runs on the same
//! host print the same text.
//!
//! The user-namespace checks are pure functions of file contents, so the
//! unit tests feed them files recorded on other hosts (`tests/hosts/`).

mod cgroups;
mod host;
mod probe;
mod probe_steps;
#[cfg(test)]
mod test_support;
mod toolchain;

use std::fmt;
use std::path::Path;

use crate::cli::exit_code;
use crate::container::ZygoteHandle;

use cgroups::cgroup_checks;
use host::{accept_restrictions_if_probe_ran, host_checks, HostFiles};
use probe::{probe_container, start_second_zygote};
use toolchain::{toolchain_checks, ToolchainFacts};

/// Options of `cargo sandbox-test doctor`.
#[derive(Debug, Clone, clap::Args)]
pub struct DoctorArgs {}

/// Runs every check, prints the report on stdout and returns the exit code:
/// 0 when a run can work (degraded or not), [`exit_code::SETUP_FAILED`]
/// when a capability it needs is missing.
pub fn run(_args: &DoctorArgs, zygote: ZygoteHandle) -> i32 {
    // `main` blocks SIGINT and SIGTERM for the signal thread of a test run,
    // which the doctor does not start. Unblocked, Ctrl-C stops the doctor.
    let _ = crate::cli::termination_signals().thread_unblock();
    let fallback_zygote = start_second_zygote();
    let mut our_pids = vec![std::process::id(), zygote.pid()];
    our_pids.extend(fallback_zygote.as_ref().map(|z| z.pid()));

    let host = HostFiles::read(Path::new("/"));
    let toolchain = ToolchainFacts::detect();

    let mut checks = host_checks(&host);
    let probe = probe_container(zygote, fallback_zygote, &toolchain.toolchain);
    accept_restrictions_if_probe_ran(&mut checks, probe.namespaces_work);
    checks.extend(probe.checks);
    checks.extend(cgroup_checks(&our_pids));
    checks.extend(toolchain_checks(&toolchain));

    let (result, code) = verdict(&checks);
    print!("{}", render(&checks, &result));
    code
}

// ---------------------------------------------------------------------------
// Checks and the report

/// Outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Ok,
    /// A run works without it, with less isolation or fewer figures.
    Degraded,
    /// A run cannot work without it.
    Missing,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let word = match self {
            Status::Ok => "ok",
            Status::Degraded => "degraded",
            Status::Missing => "missing",
        };
        f.pad(word)
    }
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq)]
struct Check {
    name: &'static str,
    status: Status,
    /// The value read, or the error, on one line.
    detail: String,
    /// The fix for a check that is not ok.
    fix: Option<String>,
}

impl Check {
    fn new(
        name: &'static str,
        status: Status,
        detail: impl Into<String>,
        fix: Option<&str>,
    ) -> Check {
        // The report has one line per check, so a detail never breaks it.
        let detail = detail.into().replace('\n', " ");
        Check {
            name,
            status,
            detail,
            fix: fix.map(str::to_string),
        }
    }

    fn ok(name: &'static str, detail: impl Into<String>) -> Check {
        Check::new(name, Status::Ok, detail, None)
    }

    fn degraded(name: &'static str, detail: impl Into<String>, fix: &str) -> Check {
        Check::new(name, Status::Degraded, detail, Some(fix))
    }

    fn missing(name: &'static str, detail: impl Into<String>, fix: &str) -> Check {
        Check::new(name, Status::Missing, detail, Some(fix))
    }
}

/// Width of the CHECK column, wider than every check name.
const NAME_WIDTH: usize = 24;
/// Width of the STATUS column.
const STATUS_WIDTH: usize = 10;

/// Formats the report: a title, a header, one line per check with its fix
/// indented below, and the result line.
fn render(checks: &[Check], result: &Check) -> String {
    let mut out = format!(
        "cargo-sandbox-test doctor {}\n\n",
        env!("CARGO_PKG_VERSION")
    );
    out.push_str(&row("CHECK", "STATUS", "DETAIL"));
    for check in checks {
        out.push_str(&row(check.name, &check.status.to_string(), &check.detail));
        if let Some(fix) = &check.fix {
            out.push_str(&row("", "", &format!("fix: {fix}")));
        }
    }
    out.push('\n');
    out.push_str(&row(
        result.name,
        &result.status.to_string(),
        &result.detail,
    ));
    out
}

fn row(name: &str, status: &str, detail: &str) -> String {
    let line = format!("{name:<NAME_WIDTH$}{status:<STATUS_WIDTH$}{detail}");
    format!("{}\n", line.trim_end())
}

/// Sums the checks up in the result line and picks the exit code.
fn verdict(checks: &[Check]) -> (Check, i32) {
    let names = |status: Status| -> Vec<&str> {
        checks
            .iter()
            .filter(|c| c.status == status)
            .map(|c| c.name)
            .collect()
    };
    let missing = names(Status::Missing);
    let degraded = names(Status::Degraded);
    if !missing.is_empty() {
        let detail = format!(
            "a run cannot work: {} missing ({})",
            missing.len(),
            missing.join(", ")
        );
        let result = Check::new("result", Status::Missing, detail, None);
        return (result, exit_code::SETUP_FAILED);
    }
    if !degraded.is_empty() {
        let detail = format!(
            "a run can work, with {} degraded ({})",
            degraded.len(),
            degraded.join(", ")
        );
        return (
            Check::new("result", Status::Degraded, detail, None),
            exit_code::SUCCESS,
        );
    }
    let result = Check::ok("result", "a run can work with every capability");
    (result, exit_code::SUCCESS)
}

/// Replaces the pid in the names of the run's cgroup and staging
/// directories with `<pid>`, so error texts read the same on every run.
fn hide_pids(text: &str) -> String {
    match regex::Regex::new(r"(cargo-sandbox-test(?:-runner|-doctor)?)\.[0-9]+") {
        Ok(pattern) => pattern.replace_all(text, "${1}.<pid>").into_owned(),
        Err(_) => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cgroups::CGROUP_FIX;

    #[test]
    fn verdict_degraded_still_exits_zero() {
        let checks = vec![
            Check::ok("host.kernel", "6.1"),
            Check::degraded("cgroup.memory", "no", CGROUP_FIX),
        ];
        let (result, code) = verdict(&checks);
        assert_eq!(code, 0);
        assert_eq!(result.status, Status::Degraded);
        assert_eq!(
            result.detail,
            "a run can work, with 1 degraded (cgroup.memory)"
        );
    }

    #[test]
    fn verdict_missing_exits_setup_failed() {
        let checks = vec![
            Check::degraded("cgroup.memory", "no", CGROUP_FIX),
            Check::missing("container.clone", "EPERM", "fix it"),
        ];
        let (result, code) = verdict(&checks);
        assert_eq!(code, exit_code::SETUP_FAILED);
        assert_eq!(
            result.detail,
            "a run cannot work: 1 missing (container.clone)"
        );
    }

    #[test]
    fn render_uses_fixed_columns() {
        let checks = vec![
            Check::ok("host.kernel", "6.18.44"),
            Check::degraded("cgroup.memory", "line one\nline two", "run as root"),
        ];
        let (result, _) = verdict(&checks);
        let text = render(&checks, &result);

        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            format!("cargo-sandbox-test doctor {}", env!("CARGO_PKG_VERSION"))
        );
        assert_eq!(lines[1], "");
        assert_eq!(lines[2], "CHECK                   STATUS    DETAIL");
        assert_eq!(lines[3], "host.kernel             ok        6.18.44");
        assert_eq!(
            lines[4],
            "cgroup.memory           degraded  line one line two"
        );
        assert_eq!(
            lines[5],
            "                                  fix: run as root"
        );
        assert_eq!(lines[6], "");
        assert!(
            lines[7].starts_with("result                  degraded  a run can work"),
            "{}",
            lines[7]
        );
        for line in &lines {
            assert_eq!(*line, line.trim_end(), "trailing whitespace");
        }
    }

    #[test]
    fn pids_are_hidden() {
        assert_eq!(
            hide_pids(
                "cannot create /sys/fs/cgroup/pids/cargo-sandbox-test.1234: Permission denied"
            ),
            "cannot create /sys/fs/cgroup/pids/cargo-sandbox-test.<pid>: Permission denied"
        );
        assert_eq!(
            hide_pids("/x/cargo-sandbox-test-runner.77 and /tmp/cargo-sandbox-test-doctor.8/mnt"),
            "/x/cargo-sandbox-test-runner.<pid> and /tmp/cargo-sandbox-test-doctor.<pid>/mnt"
        );
        assert_eq!(
            hide_pids("cargo-sandbox-test 0.1.0"),
            "cargo-sandbox-test 0.1.0"
        );
    }
}
