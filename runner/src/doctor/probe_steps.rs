//! The `container.*` lines of the report: one line per setup step of the
//! probe container. The step that failed gets the error and its fix, and
//! the steps after it are marked as not checked.

use crate::container::{SetupError, TestExit};

use super::probe::{ProbeFacts, ProbeOutcome};
use super::{hide_pids, Check, Status};

/// The container sequence as the report shows it, in the order it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum ProbeStep {
    Clone,
    IdMap,
    Mounts,
    Overlay,
    Proc,
    PivotRoot,
    Hostname,
    Loopback,
    Exec,
}

impl ProbeStep {
    const ALL: [ProbeStep; 9] = [
        ProbeStep::Clone,
        ProbeStep::IdMap,
        ProbeStep::Mounts,
        ProbeStep::Overlay,
        ProbeStep::Proc,
        ProbeStep::PivotRoot,
        ProbeStep::Hostname,
        ProbeStep::Loopback,
        ProbeStep::Exec,
    ];

    fn check_name(self) -> &'static str {
        match self {
            ProbeStep::Clone => "container.clone",
            ProbeStep::IdMap => "container.id-map",
            ProbeStep::Mounts => "container.mounts",
            ProbeStep::Overlay => "container.overlay",
            ProbeStep::Proc => "container.proc",
            ProbeStep::PivotRoot => "container.pivot-root",
            ProbeStep::Hostname => "container.hostname",
            ProbeStep::Loopback => "container.loopback",
            ProbeStep::Exec => "container.exec",
        }
    }

    /// Maps the `step` of a [`SetupError`] to the line it belongs on.
    /// `in_init` is true when the container's init reported the error, false
    /// for the zygote or the runner.
    pub(super) fn of(error: &SetupError, in_init: bool) -> ProbeStep {
        match error.step.as_str() {
            "create the staging directory"
            | "plan the root filesystem"
            | "reach the zygote"
            | "runner"
            | "create a pipe"
            | "create the namespaces (clone)" => ProbeStep::Clone,
            "write the user namespace uid map"
            | "deny setgroups in the user namespace"
            | "write the user namespace gid map"
            | "join the test cgroup" => ProbeStep::IdMap,
            "mount overlay" => ProbeStep::Overlay,
            "mount /proc" | "bind /proc read-only" => ProbeStep::Proc,
            // /proc/sys is made read-only with the same remount as the
            // root filesystem's binds.
            "remount read-only" if error.path.contains("/root/proc/") => ProbeStep::Proc,
            "enter the new root" | "pivot_root" | "detach the old root" => ProbeStep::PivotRoot,
            "set hostname" => ProbeStep::Hostname,
            "bring loopback up" => ProbeStep::Loopback,
            "prepare the test command"
            | "fork the test process"
            | "enter the working directory"
            | "set RLIMIT_NPROC"
            | "drop capabilities"
            | "execute the test binary"
            | "run the probe" => ProbeStep::Exec,
            // NOTE: a step name this table does not know goes on the line
            // of the stage that reported it. The detail still names it.
            _ if in_init => ProbeStep::Mounts,
            _ => ProbeStep::IdMap,
        }
    }

    /// Returns the fix for a failure at this step, used when
    /// [`SetupError::hint`] has none.
    fn fix(self) -> &'static str {
        match self {
            ProbeStep::Clone => {
                "the kernel must let this user create user, mount, PID, network, UTS and IPC \
                 namespaces; see the userns and namespaces lines above"
            }
            ProbeStep::IdMap => {
                "run as root with CAP_SETUID and CAP_SETGID, or as an unprivileged user, whose \
                 map contains only its own uid and gid"
            }
            ProbeStep::Mounts => {
                "the kernel rejected a mount in the container's user namespace: on Ubuntu 23.10 or \
                 later see userns.apparmor; inside Docker also pass \
                 `--security-opt apparmor=unconfined`"
            }
            ProbeStep::Overlay => "rerun with `--no-overlay` to use read-only binds instead",
            ProbeStep::Proc => {
                "the kernel mounts a new /proc only while the host's /proc is fully visible; run \
                 on a host or container whose /proc has nothing mounted over it"
            }
            ProbeStep::PivotRoot => {
                "pivot_root fails when / is the initial ramfs; start the runner on a system whose \
                 root is a real filesystem"
            }
            ProbeStep::Hostname => "allow sethostname in the seccomp filter (see userns.seccomp)",
            ProbeStep::Loopback => {
                "the kernel needs network namespaces (CONFIG_NET_NS); or run tests with \
                 `--network` to share the host's network"
            }
            ProbeStep::Exec => {
                "the container could not run the probe program; check that /usr is readable by \
                 this user and not mounted noexec"
            }
        }
    }
}

/// The container lines of the report.
#[derive(Debug)]
pub(super) struct ProbeReport {
    pub(super) checks: Vec<Check>,
    /// Whether the probe got past `pivot_root`, so the kernel let it build
    /// a container.
    pub(super) namespaces_work: bool,
}

/// Describes a setup error on one line: step, path, the kernel's message
/// and the errno name.
fn describe_setup_error(error: &SetupError) -> String {
    let mut text = format!("{} failed", error.step);
    if !error.path.is_empty() {
        text.push_str(&format!(" at {}", error.path));
    }
    text.push_str(&format!(": {}", error.detail));
    if error.errno != 0 {
        text.push_str(&format!(
            " ({:?})",
            nix::errno::Errno::from_raw(error.errno)
        ));
    }
    hide_pids(&text)
}

const OVERLAY_FALLBACK_FIX: &str = "Linux 5.11 or later for overlayfs in a user namespace, and \
     upper directories not on overlayfs; until then run tests with `--no-overlay`, because a run \
     does not fall back by itself";

/// Builds the container lines from the outcome of the probe that counts.
/// `overlay_error` is the overlay failure of a first probe whose fallback
/// with read-only binds produced `outcome`.
pub(super) fn probe_checks(
    outcome: &ProbeOutcome,
    overlay_error: Option<&SetupError>,
    facts: &ProbeFacts,
) -> ProbeReport {
    let failed = outcome.failed_step();
    let mut checks = Vec::new();
    for step in ProbeStep::ALL {
        let name = step.check_name();
        let check = match failed {
            Some(at) if at == step => failed_step_check(step, outcome, facts),
            Some(at) if at < step => Check::new(
                name,
                Status::Missing,
                format!("not checked: the probe stopped at {}", at.check_name()),
                None,
            ),
            _ => Check::ok(name, ok_detail(step, facts)),
        };
        checks.push(check);
    }
    if let Some(error) = overlay_error {
        let detail = format!(
            "{}; read-only binds instead of copy-on-write",
            describe_setup_error(error)
        );
        let overlay = Check::degraded(
            ProbeStep::Overlay.check_name(),
            detail,
            OVERLAY_FALLBACK_FIX,
        );
        if let Some(slot) = checks.iter_mut().find(|c| c.name == overlay.name) {
            *slot = overlay;
        }
    }
    let namespaces_work = failed.is_none_or(|at| at > ProbeStep::PivotRoot);
    ProbeReport {
        checks,
        namespaces_work,
    }
}

fn failed_step_check(step: ProbeStep, outcome: &ProbeOutcome, facts: &ProbeFacts) -> Check {
    let name = step.check_name();
    match outcome {
        ProbeOutcome::Failed { error, .. } => {
            let fix = error.hint().unwrap_or(step.fix());
            Check::missing(name, describe_setup_error(error), fix)
        }
        ProbeOutcome::Exited(exit) => {
            let how = match exit {
                TestExit::Code(code) => format!("exited with code {code}"),
                TestExit::Signal(signal) => format!("was killed by signal {signal}"),
            };
            let detail = format!("{} {how} in the container", facts.program.display());
            Check::missing(name, detail, step.fix())
        }
    }
}

fn ok_detail(step: ProbeStep, facts: &ProbeFacts) -> String {
    match step {
        ProbeStep::Clone => "user, mount, PID, network, UTS and IPC namespaces".into(),
        ProbeStep::IdMap if facts.uid == 0 => "uids and gids 0-4294967294 map to themselves".into(),
        ProbeStep::IdMap => format!(
            "uid {} and gid {} map to themselves; setgroups denied",
            facts.uid, facts.gid
        ),
        ProbeStep::Mounts => "tmpfs root, read-only binds, /dev nodes, /etc/hosts".into(),
        ProbeStep::Overlay if facts.overlays == 0 => "no host directory needs an overlay".into(),
        ProbeStep::Overlay => format!(
            "overlayfs (userxattr) over {} host directories",
            facts.overlays
        ),
        ProbeStep::Proc => "new /proc of the container's PID namespace; /proc/sys read-only".into(),
        ProbeStep::PivotRoot => "new root on the container's tmpfs; host root detached".into(),
        ProbeStep::Hostname => "hostname `sandbox`".into(),
        ProbeStep::Loopback => "`lo` up in a private network namespace".into(),
        ProbeStep::Exec => format!("{} exited with code 0", facts.program.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::test_support::*;

    fn facts() -> ProbeFacts {
        ProbeFacts {
            uid: 1000,
            gid: 1000,
            program: "/usr/bin/true".into(),
            overlays: 12,
        }
    }

    fn setup_error(step: &str, path: &str, errno: i32, detail: &str) -> SetupError {
        SetupError {
            step: step.into(),
            path: path.into(),
            errno,
            detail: detail.into(),
        }
    }

    #[test]
    fn probe_success_is_all_ok() {
        let report = probe_checks(&ProbeOutcome::Exited(TestExit::Code(0)), None, &facts());
        assert!(report.namespaces_work);
        let names: Vec<&str> = report.checks.iter().map(|c| c.name).collect();
        assert_eq!(
            names,
            [
                "container.clone",
                "container.id-map",
                "container.mounts",
                "container.overlay",
                "container.proc",
                "container.pivot-root",
                "container.hostname",
                "container.loopback",
                "container.exec",
            ]
        );
        for check in &report.checks {
            assert_eq!(check.status, Status::Ok, "{check:?}");
        }
        assert_eq!(
            find(&report.checks, "container.overlay").detail,
            "overlayfs (userxattr) over 12 host directories"
        );
    }

    #[test]
    fn clone_failure_stops_the_probe() {
        let error = setup_error(
            "create the namespaces (clone)",
            "",
            libc::EPERM,
            "Operation not permitted (os error 1)",
        );
        let outcome = ProbeOutcome::Failed {
            error: error.clone(),
            in_init: false,
        };
        let report = probe_checks(&outcome, None, &facts());
        assert!(!report.namespaces_work);
        let clone = find(&report.checks, "container.clone");
        assert_eq!(clone.status, Status::Missing);
        assert_eq!(
            clone.detail,
            "create the namespaces (clone) failed: Operation not permitted (os error 1) (EPERM)"
        );
        assert_eq!(clone.fix.as_deref(), error.hint());
        let exec = find(&report.checks, "container.exec");
        assert_eq!(exec.status, Status::Missing);
        assert_eq!(
            exec.detail,
            "not checked: the probe stopped at container.clone"
        );
        assert!(exec.fix.is_none());
    }

    #[test]
    fn overlay_fallback_is_degraded() {
        let error = setup_error(
            "mount overlay",
            "/tmp/cargo-sandbox-test-doctor.4242/mnt/root/usr",
            libc::EINVAL,
            "Invalid argument (options: upperdir=/tmp/cargo-sandbox-test-doctor.4242/mnt/upper/3)",
        );
        let report = probe_checks(
            &ProbeOutcome::Exited(TestExit::Code(0)),
            Some(&error),
            &facts(),
        );
        assert!(report.namespaces_work);
        let overlay = find(&report.checks, "container.overlay");
        assert_eq!(overlay.status, Status::Degraded);
        assert!(!overlay.detail.contains("4242"), "{}", overlay.detail);
        assert!(
            overlay
                .detail
                .contains("cargo-sandbox-test-doctor.<pid>/mnt/root/usr"),
            "{}",
            overlay.detail
        );
        assert!(
            overlay
                .detail
                .ends_with("read-only binds instead of copy-on-write"),
            "{}",
            overlay.detail
        );
        assert_eq!(overlay.fix.as_deref(), Some(OVERLAY_FALLBACK_FIX));
        assert_eq!(status_of(&report.checks, "container.exec"), Status::Ok);
    }

    #[test]
    fn failing_program_is_exec_failure() {
        let report = probe_checks(&ProbeOutcome::Exited(TestExit::Code(1)), None, &facts());
        assert!(report.namespaces_work);
        let exec = find(&report.checks, "container.exec");
        assert_eq!(exec.status, Status::Missing);
        assert_eq!(
            exec.detail,
            "/usr/bin/true exited with code 1 in the container"
        );
        assert_eq!(status_of(&report.checks, "container.loopback"), Status::Ok);
    }

    #[test]
    fn setup_steps_map_to_lines() {
        let cases = [
            (
                "write the user namespace gid map",
                "/proc/7/gid_map",
                false,
                ProbeStep::IdMap,
            ),
            (
                "mount the container tmpfs",
                "/tmp/x/mnt",
                true,
                ProbeStep::Mounts,
            ),
            ("mount /proc", "/tmp/x/mnt/root/proc", true, ProbeStep::Proc),
            (
                "remount read-only",
                "/tmp/x/mnt/root/proc/sys",
                true,
                ProbeStep::Proc,
            ),
            (
                "remount read-only",
                "/tmp/x/mnt/root/usr",
                true,
                ProbeStep::Mounts,
            ),
            ("pivot_root", "/tmp/x/mnt/root", true, ProbeStep::PivotRoot),
            ("bring loopback up", "lo", true, ProbeStep::Loopback),
            (
                "execute the test binary",
                "/usr/bin/true",
                true,
                ProbeStep::Exec,
            ),
            ("a step added later", "", true, ProbeStep::Mounts),
            ("a step added later", "", false, ProbeStep::IdMap),
        ];
        for (step, path, in_init, expected) in cases {
            let error = setup_error(step, path, 0, "");
            assert_eq!(ProbeStep::of(&error, in_init), expected, "{step} at {path}");
        }
    }
}
