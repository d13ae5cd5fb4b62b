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

use std::fmt;
use std::fs;
use std::io;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout};

use crate::cgroup::{Caps, CgroupUsage, Controller, Layout, Location, RunCgroups, Version};
use crate::cli::exit_code;
use crate::container::{
    self, Entry, InitReport, Pipes, RootfsPlan, SetupError, SpawnError, Spec, TestExit,
    ZygoteHandle,
};
use crate::plan::Toolchain;

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

// ---------------------------------------------------------------------------
// Host files: kernel, identity and user-namespace restrictions

/// The namespaces every container gets, as named in `/proc/sys/user`.
const NAMESPACE_KINDS: [&str; 6] = ["user", "mnt", "pid", "net", "uts", "ipc"];

/// Files whose presence marks a Docker (`/.dockerenv`) or Podman
/// (`/run/.containerenv`) container.
const CONTAINER_MARKERS: [&str; 2] = ["/.dockerenv", "/run/.containerenv"];

/// Bit of `CAP_SYS_ADMIN` in the capability masks of `/proc/self/status`.
const CAP_SYS_ADMIN: u32 = 21;

/// Text of the host files that the user-namespace checks read. `None` marks
/// a file that does not exist or cannot be read.
#[derive(Debug, Default)]
struct HostFiles {
    osrelease: Option<String>,
    status: Option<String>,
    /// `/proc/sys/user/max_<kind>_namespaces` for each of [`NAMESPACE_KINDS`].
    max_namespaces: Vec<(&'static str, Option<String>)>,
    unprivileged_userns_clone: Option<String>,
    apparmor_restrict_unprivileged_userns: Option<String>,
    /// The entries of [`CONTAINER_MARKERS`] that exist.
    container_markers: Vec<&'static str>,
}

impl HostFiles {
    /// Reads the files below `root`: `/` on a live host, or a directory of
    /// recorded files.
    fn read(root: &Path) -> HostFiles {
        let at = |path: &str| root.join(path.trim_start_matches('/'));
        let read = |path: &str| fs::read_to_string(at(path)).ok();
        HostFiles {
            osrelease: read("/proc/sys/kernel/osrelease"),
            status: read("/proc/self/status"),
            max_namespaces: NAMESPACE_KINDS
                .iter()
                .map(|kind| {
                    (
                        *kind,
                        read(&format!("/proc/sys/user/max_{kind}_namespaces")),
                    )
                })
                .collect(),
            unprivileged_userns_clone: read("/proc/sys/kernel/unprivileged_userns_clone"),
            apparmor_restrict_unprivileged_userns: read(
                "/proc/sys/kernel/apparmor_restrict_unprivileged_userns",
            ),
            container_markers: CONTAINER_MARKERS
                .into_iter()
                .filter(|marker| at(marker).exists())
                .collect(),
        }
    }

    fn max_namespaces(&self, kind: &str) -> Option<&str> {
        self.max_namespaces
            .iter()
            .find(|(k, _)| *k == kind)
            .and_then(|(_, value)| value.as_deref())
            .map(str::trim)
    }
}

/// Returns the value of one `Key:\tvalue` line of `/proc/<pid>/status`.
fn status_field<'a>(status: &'a str, key: &str) -> Option<&'a str> {
    status.lines().find_map(|line| {
        let (k, value) = line.split_once(':')?;
        (k == key).then(|| value.trim())
    })
}

/// Identity of this process, from `/proc/self/status`.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Identity {
    /// The real uid.
    uid: Option<u32>,
    /// Whether `CAP_SYS_ADMIN` is in the effective set. The Debian and
    /// AppArmor restrictions exempt processes that have it.
    cap_sys_admin: bool,
}

impl Identity {
    fn parse(status: &str) -> Identity {
        let uid = status_field(status, "Uid")
            .and_then(|ids| ids.split_whitespace().next())
            .and_then(|uid| uid.parse().ok());
        let cap_sys_admin = status_field(status, "CapEff")
            .and_then(|mask| u64::from_str_radix(mask, 16).ok())
            .is_some_and(|mask| mask & (1 << CAP_SYS_ADMIN) != 0);
        Identity { uid, cap_sys_admin }
    }

    fn describe(&self) -> String {
        let who = match self.uid {
            Some(0) => "0 (root".to_string(),
            Some(uid) => format!("{uid} (not root"),
            None => "unknown (no Uid line in /proc/self/status".to_string(),
        };
        let admin = if self.cap_sys_admin {
            "CAP_SYS_ADMIN effective"
        } else {
            "no CAP_SYS_ADMIN"
        };
        format!("{who}, {admin})")
    }
}

const SECCOMP_FIX_CONTAINER: &str = "`docker run --security-opt seccomp=unconfined` (Podman \
     takes the same option), or a seccomp profile that allows `unshare` and `clone` with \
     namespace flags";
const SECCOMP_FIX_OTHER: &str = "allow `unshare` and `clone` with namespace flags in the \
     seccomp filter of whatever starts the runner (for a systemd service: SystemCallFilter= \
     and RestrictNamespaces=)";

/// Checks the kernel release, the identity and every known restriction of
/// user namespaces. A restriction is reported `missing` here and accepted
/// later if the probe container runs anyway.
fn host_checks(files: &HostFiles) -> Vec<Check> {
    let identity = Identity::parse(files.status.as_deref().unwrap_or_default());
    vec![
        kernel_check(files.osrelease.as_deref()),
        Check::ok("host.uid", identity.describe()),
        max_user_namespaces_check(files.max_namespaces("user")),
        other_namespaces_check(files),
        debian_userns_check(files.unprivileged_userns_clone.as_deref(), &identity),
        apparmor_userns_check(
            files.apparmor_restrict_unprivileged_userns.as_deref(),
            &identity,
        ),
        seccomp_check(files.status.as_deref(), &files.container_markers),
    ]
}

fn kernel_check(osrelease: Option<&str>) -> Check {
    match osrelease.map(str::trim) {
        Some(release) if !release.is_empty() => Check::ok("host.kernel", release),
        _ => Check::degraded(
            "host.kernel",
            "/proc/sys/kernel/osrelease is missing or empty",
            "mount procfs on /proc",
        ),
    }
}

fn max_user_namespaces_check(value: Option<&str>) -> Check {
    let name = "userns.max";
    match value {
        None => Check::ok(name, "user.max_user_namespaces not present (no limit)"),
        Some("0") => Check::missing(
            name,
            "user.max_user_namespaces = 0: the kernel allows no user namespaces, to root either",
            "sysctl -w user.max_user_namespaces=15000",
        ),
        Some(value) => Check::ok(name, format!("user.max_user_namespaces = {value}")),
    }
}

/// Checks the limits of the other namespaces a container gets: a limit of
/// 0 makes `clone` fail with ENOSPC.
fn other_namespaces_check(files: &HostFiles) -> Check {
    let name = "namespaces.max";
    let others = &NAMESPACE_KINDS[1..];
    let zero: Vec<&str> = others
        .iter()
        .copied()
        .filter(|kind| files.max_namespaces(kind) == Some("0"))
        .collect();
    if let Some(first) = zero.first() {
        let detail = zero
            .iter()
            .map(|kind| format!("user.max_{kind}_namespaces = 0"))
            .collect::<Vec<_>>()
            .join(", ");
        let fix =
            format!("sysctl -w user.max_{first}_namespaces=15000 (and the same for each one at 0)");
        return Check::missing(name, detail, &fix);
    }
    let values: Vec<String> = others
        .iter()
        .map(|kind| {
            format!(
                "{kind} {}",
                files.max_namespaces(kind).unwrap_or("no limit")
            )
        })
        .collect();
    Check::ok(
        name,
        format!("user.max_<kind>_namespaces: {}", values.join(", ")),
    )
}

fn debian_userns_check(value: Option<&str>, identity: &Identity) -> Check {
    let name = "userns.debian";
    match value.map(str::trim) {
        None => Check::ok(name, "kernel.unprivileged_userns_clone not present"),
        Some("0") if identity.cap_sys_admin => Check::ok(
            name,
            "kernel.unprivileged_userns_clone = 0, which does not apply with CAP_SYS_ADMIN",
        ),
        Some("0") => Check::missing(
            name,
            "kernel.unprivileged_userns_clone = 0: only processes with CAP_SYS_ADMIN may create \
             user namespaces",
            "sysctl -w kernel.unprivileged_userns_clone=1",
        ),
        Some(value) => Check::ok(name, format!("kernel.unprivileged_userns_clone = {value}")),
    }
}

fn apparmor_userns_check(value: Option<&str>, identity: &Identity) -> Check {
    let name = "userns.apparmor";
    match value.map(str::trim) {
        None => Check::ok(
            name,
            "kernel.apparmor_restrict_unprivileged_userns not present",
        ),
        Some("1") if identity.cap_sys_admin => Check::ok(
            name,
            "kernel.apparmor_restrict_unprivileged_userns = 1, which does not apply with \
             CAP_SYS_ADMIN",
        ),
        Some("1") => Check::missing(
            name,
            "kernel.apparmor_restrict_unprivileged_userns = 1: AppArmor denies unconfined \
             processes without CAP_SYS_ADMIN a user namespace, or the capabilities in it",
            "sysctl -w kernel.apparmor_restrict_unprivileged_userns=0, or an AppArmor profile \
             for the runner's binary with the `userns,` rule",
        ),
        Some(value) => Check::ok(
            name,
            format!("kernel.apparmor_restrict_unprivileged_userns = {value}"),
        ),
    }
}

/// Checks for a seccomp filter. Docker's default profile allows `clone`
/// with namespace flags only to processes with CAP_SYS_ADMIN (moby/profiles,
/// `seccomp/default.json`), and other filters may do the same.
fn seccomp_check(status: Option<&str>, markers: &[&str]) -> Check {
    let name = "userns.seccomp";
    let mode = status.and_then(|s| status_field(s, "Seccomp"));
    let place = if markers.is_empty() {
        "no container marker".to_string()
    } else {
        format!("container marker {}", markers.join(", "))
    };
    match mode {
        None => Check::ok(name, format!("no Seccomp line in /proc/self/status; {place}")),
        Some("0") => Check::ok(name, format!("Seccomp: 0 (no filter); {place}")),
        Some(mode) if markers.is_empty() => Check::missing(
            name,
            format!("Seccomp: {mode} (filtered) outside a known container; the filter may reject namespace flags"),
            SECCOMP_FIX_OTHER,
        ),
        Some(mode) => Check::missing(
            name,
            format!(
                "Seccomp: {mode} (filtered) in a container ({place}); default container profiles \
                 reject `clone` with namespace flags without CAP_SYS_ADMIN"
            ),
            SECCOMP_FIX_CONTAINER,
        ),
    }
}

/// Marks the predicted restrictions `ok` when the probe container got past
/// `pivot_root`, because then they did not stop it. An AppArmor profile, a
/// capability or a permissive filter can exempt the runner.
fn accept_restrictions_if_probe_ran(checks: &mut [Check], namespaces_work: bool) {
    if !namespaces_work {
        return;
    }
    for check in checks.iter_mut() {
        let restriction = check.name.starts_with("userns.") || check.name == "namespaces.max";
        if restriction && check.status == Status::Missing {
            check.status = Status::Ok;
            check
                .detail
                .push_str("; the probe container ran anyway, so this does not stop the runner");
            check.fix = None;
        }
    }
}

// ---------------------------------------------------------------------------
// The probe container

/// The container sequence as the report shows it, in the order it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum ProbeStep {
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
    fn of(error: &SetupError, in_init: bool) -> ProbeStep {
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

/// End state of a probe container.
#[derive(Debug, Clone, PartialEq)]
enum ProbeOutcome {
    /// The probe program ran and exited.
    Exited(TestExit),
    /// A setup step failed. `in_init` is true when the container's init
    /// reported it, false for the zygote or the runner.
    Failed { error: SetupError, in_init: bool },
}

impl ProbeOutcome {
    fn runner_error(step: &str, path: &Path, err: &io::Error) -> ProbeOutcome {
        let error = SetupError {
            step: step.to_string(),
            path: path.display().to_string(),
            errno: err.raw_os_error().unwrap_or(0),
            detail: err.to_string(),
        };
        ProbeOutcome::Failed {
            error,
            in_init: false,
        }
    }

    /// Returns the step that failed, if any.
    fn failed_step(&self) -> Option<ProbeStep> {
        match self {
            ProbeOutcome::Exited(TestExit::Code(0)) => None,
            ProbeOutcome::Exited(_) => Some(ProbeStep::Exec),
            ProbeOutcome::Failed { error, in_init } => Some(ProbeStep::of(error, *in_init)),
        }
    }
}

/// Facts about the probe besides its outcome.
#[derive(Debug, Clone)]
struct ProbeFacts {
    uid: u32,
    gid: u32,
    program: PathBuf,
    /// How many host directories the plan overlays.
    overlays: usize,
}

/// The container lines of the report.
#[derive(Debug)]
struct ProbeReport {
    checks: Vec<Check>,
    /// Whether the probe got past `pivot_root`, so the kernel let it build
    /// a container.
    namespaces_work: bool,
}

/// Maximum time a probe container may take. `/usr/bin/true` needs a few
/// milliseconds.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// Forks a second zygote for the fallback probe. A zygote keeps the root
/// filesystem plan it was connected with, and the fallback needs another
/// plan. Forking is only allowed while this process has one thread, so it
/// happens before any probe. Without a second zygote the fallback is
/// skipped.
fn start_second_zygote() -> Option<ZygoteHandle> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    if status_field(&status, "Threads") != Some("1") {
        return None;
    }
    container::start_zygote().ok()
}

/// The probe's staging directory, removed on drop.
struct Staging {
    dir: PathBuf,
}

const STAGING_PREFIX: &str = "cargo-sandbox-test-doctor.";

impl Staging {
    fn create() -> io::Result<Staging> {
        let temp = std::env::temp_dir();
        remove_stale_staging(&temp);
        let dir = temp.join(format!("{STAGING_PREFIX}{}", std::process::id()));
        fs::create_dir_all(dir.join("mnt"))?;
        Ok(Staging { dir })
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if let Err(err) = fs::remove_dir_all(&self.dir) {
            if err.kind() != io::ErrorKind::NotFound {
                eprintln!(
                    "warning: failed to remove the probe's staging directory {}: {err}; remove it \
                     with `rm -r`",
                    self.dir.display()
                );
            }
        }
    }
}

/// Removes staging directories of doctors whose process is gone.
fn remove_stale_staging(temp: &Path) {
    let Ok(entries) = fs::read_dir(temp) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let pid = name.to_str().and_then(|n| n.strip_prefix(STAGING_PREFIX));
        let Some(pid) = pid.and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

/// Runs the probe container with overlayfs, and once more with read-only
/// binds when the kernel rejects the overlay, then reports each step.
fn probe_container(
    zygote: ZygoteHandle,
    fallback: Option<ZygoteHandle>,
    toolchain: &Toolchain,
) -> ProbeReport {
    let facts = ProbeFacts {
        uid: nix::unistd::getuid().as_raw(),
        gid: nix::unistd::getgid().as_raw(),
        program: probe_program(),
        overlays: 0,
    };
    let staging = match Staging::create() {
        Ok(s) => s,
        Err(err) => {
            let dir = std::env::temp_dir();
            let outcome = ProbeOutcome::runner_error("create the staging directory", &dir, &err);
            return probe_checks(&outcome, None, &facts);
        }
    };
    let plan = match probe_plan(&staging, toolchain) {
        Ok(plan) => plan,
        Err(err) => {
            let outcome =
                ProbeOutcome::runner_error("plan the root filesystem", Path::new("/"), &err);
            return probe_checks(&outcome, None, &facts);
        }
    };
    let facts = ProbeFacts {
        overlays: plan
            .entries
            .iter()
            .filter(|e| matches!(e, Entry::Overlay { .. }))
            .count(),
        ..facts
    };

    let first = run_probe(zygote, &plan, probe_spec(1, &facts));
    let overlay_error = match &first {
        ProbeOutcome::Failed { error, in_init }
            if ProbeStep::of(error, *in_init) == ProbeStep::Overlay =>
        {
            Some(error.clone())
        }
        _ => None,
    };
    let report = match (overlay_error, fallback) {
        (Some(error), Some(handle)) => {
            let binds = RootfsPlan {
                overlay_refused: true,
                ..plan
            };
            let second = run_probe(handle, &binds, probe_spec(2, &facts));
            probe_checks(&second, Some(&error), &facts)
        }
        _ => probe_checks(&first, None, &facts),
    };
    drop(staging);
    report
}

/// Returns the program the probe runs: `/usr/bin/true`, or `/bin/true` on
/// hosts without the first.
fn probe_program() -> PathBuf {
    let usr = PathBuf::from("/usr/bin/true");
    if usr.exists() {
        usr
    } else {
        PathBuf::from("/bin/true")
    }
}

/// Plans the probe's root filesystem like a run's: the host's directories
/// and the toolchain's, and an `/etc/hosts` bound over the host's.
fn probe_plan(staging: &Staging, toolchain: &Toolchain) -> io::Result<RootfsPlan> {
    let extra: Vec<(PathBuf, bool)> = [&toolchain.rustup_home, &toolchain.cargo_home]
        .into_iter()
        .flatten()
        .map(|dir| (dir.clone(), false))
        .collect();
    let mut plan = container::rootfs::plan(staging.dir.join("mnt"), &extra)?;
    let hosts = staging.dir.join("hosts");
    fs::write(
        &hosts,
        "127.0.0.1 localhost\n::1 localhost\n127.0.1.1 sandbox\n",
    )?;
    plan.hosts_file = Some(hosts);
    Ok(plan)
}

fn probe_spec(id: u64, facts: &ProbeFacts) -> Spec {
    let home = if facts.uid == 0 {
        "/root"
    } else {
        "/home/sandbox"
    };
    Spec {
        id,
        program: facts.program.clone(),
        args: Vec::new(),
        env: Vec::new(),
        cwd: "/".into(),
        home: home.into(),
        hostname: "sandbox".into(),
        network: false,
        tmpfs_size: 64 << 20,
        leak_timeout_ms: 0,
        gated: false,
        nproc_limit: None,
    }
}

/// Starts one probe container, reads its pipes to the end and waits for
/// its init.
fn run_probe(handle: ZygoteHandle, plan: &RootfsPlan, spec: Spec) -> ProbeOutcome {
    let zygote = match handle.connect(plan) {
        Ok(z) => z,
        Err(err) => return ProbeOutcome::runner_error("reach the zygote", Path::new(""), &err),
    };
    let (container, pipes) = match zygote.spawn(spec, Vec::new()) {
        Ok(pair) => pair,
        Err(SpawnError::Setup(error)) => {
            return ProbeOutcome::Failed {
                error,
                in_init: false,
            }
        }
        Err(SpawnError::Zygote(err)) => {
            return ProbeOutcome::runner_error("reach the zygote", Path::new(""), &err);
        }
    };
    let mut output = ProbeOutput::default();
    let finished = output.drain(&pipes, Instant::now() + PROBE_TIMEOUT);
    if !finished {
        // Killing init ends every process of the container, which closes
        // the pipes.
        container.signal(libc::SIGKILL);
        output.drain(&pipes, Instant::now() + Duration::from_secs(2));
    }
    let init_exit = container.wait(Duration::from_secs(5));
    if init_exit.is_none() {
        container.signal(libc::SIGKILL);
    }
    if !finished {
        let error = SetupError {
            step: "run the probe".into(),
            path: String::new(),
            errno: 0,
            detail: format!("timed out after {} s", PROBE_TIMEOUT.as_secs()),
        };
        return ProbeOutcome::Failed {
            error,
            in_init: true,
        };
    }
    interpret_report(&output.report, init_exit.map(|e| e.status))
}

/// Output of a probe container, as far as the doctor keeps it.
#[derive(Debug, Default)]
struct ProbeOutput {
    report: Vec<u8>,
    /// Whether stdout, stderr and the report pipe reached end of file.
    closed: [bool; 3],
}

impl ProbeOutput {
    /// Reads the pipes until all three reach end of file, which happens
    /// when init exits. Returns false when `deadline` passed first.
    fn drain(&mut self, pipes: &Pipes, deadline: Instant) -> bool {
        let fds = [&pipes.stdout, &pipes.stderr, &pipes.report];
        let mut buf = [0u8; 4096];
        while self.closed.iter().any(|closed| !closed) {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            let wait_ms = (deadline - now).as_millis().min(1000) as i32 + 1;
            let mut ready = Vec::new();
            {
                let open: Vec<usize> = (0..3).filter(|i| !self.closed[*i]).collect();
                let mut polls: Vec<PollFd> = open
                    .iter()
                    .map(|i| PollFd::new(fds[*i].as_fd(), PollFlags::POLLIN))
                    .collect();
                let timeout = PollTimeout::try_from(wait_ms).unwrap_or(PollTimeout::MAX);
                match nix::poll::poll(&mut polls, timeout) {
                    Ok(n) if n > 0 => {}
                    _ => continue,
                }
                for (k, index) in open.into_iter().enumerate() {
                    if polls[k].revents().is_some_and(|r| !r.is_empty()) {
                        ready.push(index);
                    }
                }
            }
            for index in ready {
                loop {
                    match nix::unistd::read(fds[index], &mut buf) {
                        Ok(0) => {
                            self.closed[index] = true;
                            break;
                        }
                        Ok(n) if index == 2 => self.report.extend_from_slice(&buf[..n]),
                        // The probe program's own output does not matter.
                        Ok(_) => {}
                        Err(nix::errno::Errno::EAGAIN) => break,
                        Err(nix::errno::Errno::EINTR) => continue,
                        Err(_) => {
                            self.closed[index] = true;
                            break;
                        }
                    }
                }
            }
        }
        true
    }
}

/// Reads init's report lines. A setup error wins over the exit line,
/// because init also reports the exit of a test process that failed to
/// start.
fn interpret_report(report: &[u8], init_status: Option<i32>) -> ProbeOutcome {
    let mut exit = None;
    for line in report.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        match serde_json::from_slice::<InitReport>(line) {
            Ok(InitReport::Setup { error }) => {
                return ProbeOutcome::Failed {
                    error,
                    in_init: true,
                }
            }
            Ok(InitReport::Exited { exit: e, .. }) => exit = Some(e),
            Err(_) => {}
        }
    }
    if let Some(exit) = exit {
        return ProbeOutcome::Exited(exit);
    }
    let status = match init_status {
        Some(status) if libc::WIFSIGNALED(status) => {
            format!("killed by signal {}", libc::WTERMSIG(status))
        }
        Some(status) => format!("exit status {}", libc::WEXITSTATUS(status)),
        None => "not reaped".to_string(),
    };
    let error = SetupError {
        step: "run the probe".into(),
        path: String::new(),
        errno: 0,
        detail: format!("the container's init ended without a report ({status})"),
    };
    ProbeOutcome::Failed {
        error,
        in_init: true,
    }
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
fn probe_checks(
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

// ---------------------------------------------------------------------------
// Cgroups

const CGROUP_FIX: &str = "run as root, or on cgroup v2 `systemd-run --user --scope -p \
     Delegate=yes cargo sandbox-test`";

/// Name of the doctor's test cgroup inside the run's cgroup directories.
const TEST_CGROUP: &str = "doctor";

/// Checks the cgroup layout, each controller, and the usage files of one
/// test cgroup, then removes every cgroup it created.
fn cgroup_checks(our_pids: &[u32]) -> Vec<Check> {
    let layout = match Layout::detect() {
        Ok(layout) => layout,
        Err(err) => {
            let detail = format!("failed to read /proc/self/cgroup or /proc/self/mountinfo: {err}");
            return cgroups_unavailable(
                Check::degraded("cgroup.layout", &detail, CGROUP_FIX),
                &detail,
            );
        }
    };
    let layout_line = layout_check(&layout);

    // NOTE: on cgroup v2, when this process's cgroup contains other processes,
    // setup moves the doctor and its zygotes into a leaf
    // `cargo-sandbox-test-runner.<pid>`, as a run does. The doctor cannot
    // remove the leaf while it is inside, so it stays until the next run
    // removes it as stale.
    let run = match RunCgroups::setup(layout.clone(), our_pids) {
        Ok(run) => run,
        Err(err) => return cgroups_unavailable(layout_line, &hide_pids(&err.to_string())),
    };
    let mut checks = vec![layout_line];
    for controller in Controller::ALL {
        let reason = run
            .missing
            .iter()
            .find(|(c, _)| *c == controller)
            .map(|(_, why)| hide_pids(why));
        checks.push(controller_check(
            controller,
            layout.get(controller),
            reason.as_deref(),
        ));
    }
    checks.extend(test_cgroup_checks(&run));

    run.teardown();
    warn_about_leftover_cgroups(&layout);
    checks
}

/// Reports every cgroup line as degraded for one reason.
fn cgroups_unavailable(layout_line: Check, reason: &str) -> Vec<Check> {
    let mut checks = vec![layout_line];
    for controller in Controller::ALL {
        checks.push(Check::degraded(
            controller_check_name(controller),
            format!("{reason}; {}", controller_effect(controller)),
            CGROUP_FIX,
        ));
    }
    checks.extend(usage_files_unavailable(reason));
    checks
}

fn layout_check(layout: &Layout) -> Check {
    let on = |version: Version| -> String {
        let names: Vec<&str> = Controller::ALL
            .into_iter()
            .filter(|c| layout.get(*c).is_some_and(|l| l.version == version))
            .map(Controller::name)
            .collect();
        if names.is_empty() {
            "none".into()
        } else {
            names.join(" ")
        }
    };
    let tree = match &layout.unified {
        Some(dir) => format!("cgroup2 at {}", clean(dir).display()),
        None => "no cgroup2 mount".into(),
    };
    let detail = format!(
        "{}; v1: {}; v2: {}; {tree}",
        layout.kind(),
        on(Version::V1),
        on(Version::V2)
    );
    if layout.kind() == "none" {
        return Check::degraded("cgroup.layout", detail, CGROUP_FIX);
    }
    Check::ok("cgroup.layout", detail)
}

/// Drops the trailing slash `Layout` leaves on a cgroup at a mount's root.
fn clean(dir: &Path) -> PathBuf {
    dir.components().collect()
}

fn controller_check_name(controller: Controller) -> &'static str {
    match controller {
        Controller::Memory => "cgroup.memory",
        Controller::Cpu => "cgroup.cpu",
        Controller::Cpuacct => "cgroup.cpuacct",
        Controller::Pids => "cgroup.pids",
        Controller::Freezer => "cgroup.freezer",
    }
}

/// Returns what a run loses without the controller.
fn controller_effect(controller: Controller) -> &'static str {
    match controller {
        Controller::Memory => "no memory cap; peak memory and OOM kills unavailable",
        Controller::Cpu => "no CPU quota",
        Controller::Cpuacct => "CPU time comes from wait4",
        Controller::Pids => "no tasks cap; peak tasks unavailable",
        Controller::Freezer => "a stopped test's processes are killed without being frozen first",
    }
}

/// Builds one controller's line from where the layout found it and why the
/// run could not use it, if it could not.
fn controller_check(
    controller: Controller,
    location: Option<&Location>,
    missing: Option<&str>,
) -> Check {
    let name = controller_check_name(controller);
    let effect = controller_effect(controller);
    let Some(location) = location else {
        let detail = format!("not found in /proc/self/cgroup and /proc/self/mountinfo; {effect}");
        return Check::degraded(name, detail, CGROUP_FIX);
    };
    let version = match location.version {
        Version::V1 => "v1",
        Version::V2 => "v2",
    };
    let place = format!("{version} {}", clean(&location.dir).display());
    match missing {
        Some(reason) => Check::degraded(name, format!("{place}: {reason}; {effect}"), CGROUP_FIX),
        None => Check::ok(name, format!("{place}: test cgroups can be created")),
    }
}

/// Creates the doctor's test cgroup, checks the usage files a run reads,
/// and removes it.
fn test_cgroup_checks(run: &RunCgroups) -> Vec<Check> {
    if run.is_empty() {
        return usage_files_unavailable("no test cgroup: see the cgroup lines above");
    }
    let test = match run.create_test(TEST_CGROUP, &Caps::default()) {
        Ok(test) => test,
        Err(err) => {
            let detail = hide_pids(&format!("failed to create a test cgroup: {err}"));
            return usage_files_unavailable(&detail);
        }
    };
    let dirs: Vec<PathBuf> = test
        .procs_files()
        .iter()
        .filter_map(|procs| procs.parent().map(Path::to_path_buf))
        .collect();
    let memory = match run.has(Controller::Memory) {
        true => run.layout().get(Controller::Memory).map(|l| l.version),
        false => None,
    };
    let facts = TestCgroupFacts {
        memory,
        pids: run.has(Controller::Pids),
        usage: test.usage(),
    };
    let checks = usage_file_checks(&facts, &|file| {
        dirs.iter().any(|dir| dir.join(file).exists())
    });
    test.remove();
    checks
}

/// What the doctor's test cgroup provides.
#[derive(Debug, Clone, Copy)]
struct TestCgroupFacts {
    /// Version of the memory hierarchy, `None` when the run has no memory
    /// cgroup.
    memory: Option<Version>,
    /// Whether the run has a pids cgroup.
    pids: bool,
    /// Usage read from the test cgroup. A `None` field could not be read.
    usage: CgroupUsage,
}

/// Reports the usage-file lines as degraded when no test cgroup exists.
fn usage_files_unavailable(reason: &str) -> Vec<Check> {
    [
        "cgroup.memory-peak",
        "cgroup.pids-peak",
        "cgroup.oom-events",
    ]
    .into_iter()
    .map(|name| Check::degraded(name, reason, CGROUP_FIX))
    .collect()
}

/// Checks the files behind peak memory, peak tasks and OOM kills.
/// `exists` returns whether a file is in the test cgroup.
fn usage_file_checks(facts: &TestCgroupFacts, exists: &dyn Fn(&str) -> bool) -> Vec<Check> {
    let no_memory = "no memory cgroup in this run (see cgroup.memory)";
    let (memory_peak, oom_events) = match facts.memory {
        None => (
            Check::degraded("cgroup.memory-peak", no_memory, CGROUP_FIX),
            Check::degraded("cgroup.oom-events", no_memory, CGROUP_FIX),
        ),
        Some(version) => {
            let (peak_file, events_file, peak_since) = match version {
                Version::V1 => ("memory.max_usage_in_bytes", "memory.oom_control", None),
                Version::V2 => ("memory.peak", "memory.events", Some("Linux 5.19")),
            };
            let peak = UsageFile {
                name: "cgroup.memory-peak",
                file: peak_file,
                since: peak_since,
            };
            // Both files report OOM kills on their `oom_kill` line.
            let events = UsageFile {
                name: "cgroup.oom-events",
                file: events_file,
                since: None,
            };
            (
                peak.check(exists(peak_file), facts.usage.memory_peak.is_some()),
                events.check(exists(events_file), facts.usage.oom_kills.is_some()),
            )
        }
    };
    let pids_peak = if facts.pids {
        let peak = UsageFile {
            name: "cgroup.pids-peak",
            file: "pids.peak",
            since: Some("Linux 6.1"),
        };
        peak.check(exists("pids.peak"), facts.usage.tasks_peak.is_some())
    } else {
        Check::degraded(
            "cgroup.pids-peak",
            "no pids cgroup in this run (see cgroup.pids)",
            CGROUP_FIX,
        )
    };
    vec![memory_peak, pids_peak, oom_events]
}

/// A cgroup file the runner reads a usage figure from.
struct UsageFile {
    name: &'static str,
    file: &'static str,
    /// The first kernel release with the file, where known.
    since: Option<&'static str>,
}

impl UsageFile {
    fn check(&self, exists: bool, readable: bool) -> Check {
        let fix = match self.since {
            Some(release) => format!("{release} or later"),
            None => format!("a kernel whose {} reports this figure", self.file),
        };
        let file = self.file;
        match (exists, readable) {
            (true, true) => Check::ok(self.name, format!("{file} readable in a test cgroup")),
            (true, false) => Check::degraded(
                self.name,
                format!("{file} has no value the runner reads, so the figure is reported as unavailable"),
                &fix,
            ),
            (false, _) => Check::degraded(
                self.name,
                format!("{file} not found in a test cgroup, so the figure is reported as unavailable"),
                &fix,
            ),
        }
    }
}

/// Warns on stderr about run directories that teardown could not remove.
fn warn_about_leftover_cgroups(layout: &Layout) {
    let run_dir = format!("cargo-sandbox-test.{}", std::process::id());
    for location in layout.controllers.values() {
        let dir = location.dir.join(&run_dir);
        if dir.exists() {
            eprintln!(
                "warning: failed to remove the cgroup {}; remove it with `rmdir`",
                dir.display()
            );
        }
    }
}

// ---------------------------------------------------------------------------
// Toolchain

/// A program found through its environment variable or PATH.
#[derive(Debug, Clone, PartialEq)]
struct Found {
    path: PathBuf,
    /// `CARGO`, `RUSTC` or `PATH`.
    source: String,
}

/// Toolchain facts read from the environment.
#[derive(Debug, Clone)]
struct ToolchainFacts {
    /// The program, or why it was not found.
    cargo: Result<Found, String>,
    rustc: Result<Found, String>,
    toolchain: Toolchain,
    rustup_home_from_env: bool,
    cargo_home_from_env: bool,
    rustup_home_is_dir: bool,
    cargo_home_is_dir: bool,
}

impl ToolchainFacts {
    fn detect() -> ToolchainFacts {
        let toolchain = Toolchain::detect();
        let is_dir = |dir: &Option<PathBuf>| dir.as_ref().is_some_and(|d| d.is_dir());
        ToolchainFacts {
            cargo: find_program("CARGO", "cargo"),
            rustc: find_program("RUSTC", "rustc"),
            rustup_home_from_env: std::env::var_os("RUSTUP_HOME").is_some(),
            cargo_home_from_env: std::env::var_os("CARGO_HOME").is_some(),
            rustup_home_is_dir: is_dir(&toolchain.rustup_home),
            cargo_home_is_dir: is_dir(&toolchain.cargo_home),
            toolchain,
        }
    }
}

/// Finds a program the way the runner starts it: the path in `variable`
/// if set, else `name` in PATH.
fn find_program(variable: &str, name: &str) -> Result<Found, String> {
    if let Some(value) = std::env::var_os(variable) {
        let path = PathBuf::from(&value);
        if path.components().count() > 1 {
            if is_executable(&path) {
                return Ok(Found {
                    path,
                    source: variable.into(),
                });
            }
            return Err(format!(
                "{variable}={} is not an executable file",
                path.display()
            ));
        }
        // A bare name such as CARGO=cargo is looked up in PATH, as
        // `Command` does.
        return search_path(&path)
            .ok_or_else(|| format!("{variable}={} not found in PATH", path.display()));
    }
    search_path(Path::new(name))
        .ok_or_else(|| format!("not found: {variable} is unset and PATH has no `{name}`"))
}

fn search_path(name: &Path) -> Option<Found> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
        .map(|path| Found {
            path,
            source: "PATH".into(),
        })
}

fn is_executable(path: &Path) -> bool {
    path.is_file() && nix::unistd::access(path, nix::unistd::AccessFlags::X_OK).is_ok()
}

const TOOLCHAIN_FIX: &str = "install Rust with rustup (https://rustup.rs), or put the \
     toolchain's bin directory in PATH";
const TOOLCHAIN_HOME_FIX: &str = "set RUSTUP_HOME and CARGO_HOME to the toolchain's directories";

fn toolchain_checks(facts: &ToolchainFacts) -> Vec<Check> {
    let cargo = match &facts.cargo {
        Ok(found) => Check::ok(
            "toolchain.cargo",
            format!("{} (from {})", found.path.display(), found.source),
        ),
        Err(why) => Check::missing("toolchain.cargo", why, TOOLCHAIN_FIX),
    };
    let rustc = match (&facts.rustc, &facts.toolchain.sysroot) {
        (Ok(found), Some(sysroot)) => {
            let mut detail = format!(
                "{} (from {}); sysroot {}",
                found.path.display(),
                found.source,
                sysroot.display()
            );
            if let Some(name) = &facts.toolchain.name {
                detail.push_str(&format!("; toolchain {name}"));
            }
            Check::ok("toolchain.rustc", detail)
        }
        (Ok(found), None) => Check::missing(
            "toolchain.rustc",
            format!(
                "{} found, but `rustc --print sysroot` failed",
                found.path.display()
            ),
            "check that the toolchain is installed: `rustup show`",
        ),
        (Err(why), _) => Check::missing("toolchain.rustc", why, TOOLCHAIN_FIX),
    };
    let home = |name: &'static str,
                variable: &str,
                default: &str,
                dir: &Option<PathBuf>,
                from_env: bool,
                is_dir: bool| {
        let effect =
            "tests that run cargo or rustc see only toolchains outside /root, /home, /run and /tmp";
        let source = if from_env {
            variable.to_string()
        } else {
            format!("$HOME/{default}")
        };
        match dir {
            Some(dir) if is_dir => Check::ok(name, format!("{} (from {source})", dir.display())),
            Some(dir) => Check::degraded(
                name,
                format!(
                    "{} (from {source}) is not a directory this user can read; {effect}",
                    dir.display()
                ),
                TOOLCHAIN_HOME_FIX,
            ),
            None => Check::degraded(
                name,
                format!("{variable} is unset and $HOME/{default} does not exist; {effect}"),
                TOOLCHAIN_HOME_FIX,
            ),
        }
    };
    vec![
        cargo,
        rustc,
        home(
            "toolchain.rustup-home",
            "RUSTUP_HOME",
            ".rustup",
            &facts.toolchain.rustup_home,
            facts.rustup_home_from_env,
            facts.rustup_home_is_dir,
        ),
        home(
            "toolchain.cargo-home",
            "CARGO_HOME",
            ".cargo",
            &facts.toolchain.cargo_home,
            facts.cargo_home_from_env,
            facts.cargo_home_is_dir,
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/hosts")
    }

    fn recorded(host: &str) -> Vec<Check> {
        let dir = hosts_dir().join(host);
        assert!(dir.is_dir(), "no recorded host {}", dir.display());
        host_checks(&HostFiles::read(&dir))
    }

    fn find<'a>(checks: &'a [Check], name: &str) -> &'a Check {
        checks
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("no check {name} in {checks:#?}"))
    }

    fn status_of(checks: &[Check], name: &str) -> Status {
        find(checks, name).status
    }

    #[test]
    fn ubuntu_apparmor_restriction_is_missing() {
        let checks = recorded("ubuntu-24.04-apparmor-user");
        let apparmor = find(&checks, "userns.apparmor");
        assert_eq!(apparmor.status, Status::Missing, "{apparmor:?}");
        assert!(apparmor.detail.contains("= 1"), "{}", apparmor.detail);
        let fix = apparmor.fix.as_deref().unwrap();
        assert!(
            fix.contains("sysctl -w kernel.apparmor_restrict_unprivileged_userns=0"),
            "{fix}"
        );
        assert!(fix.contains("userns,"), "{fix}");
        assert_eq!(status_of(&checks, "userns.max"), Status::Ok);
        assert_eq!(status_of(&checks, "userns.debian"), Status::Ok);
        assert_eq!(status_of(&checks, "userns.seccomp"), Status::Ok);
        assert_eq!(
            find(&checks, "host.uid").detail,
            "1000 (not root, no CAP_SYS_ADMIN)"
        );
        assert_eq!(find(&checks, "host.kernel").detail, "6.8.0-45-generic");
    }

    #[test]
    fn docker_default_seccomp_is_missing() {
        let checks = recorded("docker-default-seccomp-root");
        let seccomp = find(&checks, "userns.seccomp");
        assert_eq!(seccomp.status, Status::Missing, "{seccomp:?}");
        assert!(seccomp.detail.contains("Seccomp: 2"), "{}", seccomp.detail);
        assert!(seccomp.detail.contains("/.dockerenv"), "{}", seccomp.detail);
        let fix = seccomp.fix.as_deref().unwrap();
        assert!(fix.contains("--security-opt seccomp=unconfined"), "{fix}");
        // Root in Docker lacks CAP_SYS_ADMIN, but the Debian switch is on.
        assert_eq!(
            find(&checks, "host.uid").detail,
            "0 (root, no CAP_SYS_ADMIN)"
        );
        assert_eq!(status_of(&checks, "userns.debian"), Status::Ok);
        assert_eq!(status_of(&checks, "userns.apparmor"), Status::Ok);
        assert_eq!(status_of(&checks, "userns.max"), Status::Ok);
    }

    #[test]
    fn zero_user_namespaces_is_missing() {
        let checks = recorded("max-user-namespaces-zero-user");
        let max = find(&checks, "userns.max");
        assert_eq!(max.status, Status::Missing, "{max:?}");
        assert_eq!(
            max.fix.as_deref(),
            Some("sysctl -w user.max_user_namespaces=15000")
        );
        assert_eq!(status_of(&checks, "namespaces.max"), Status::Ok);
        assert_eq!(status_of(&checks, "userns.debian"), Status::Ok);
        assert_eq!(status_of(&checks, "userns.apparmor"), Status::Ok);
        assert_eq!(status_of(&checks, "userns.seccomp"), Status::Ok);
    }

    #[test]
    fn development_vm_has_no_restriction() {
        let checks = recorded("vm-6.18-cgroup-hybrid-root");
        for check in &checks {
            assert_eq!(check.status, Status::Ok, "{check:?}");
        }
        assert_eq!(find(&checks, "host.kernel").detail, "6.18.44-fc-v1147");
        assert_eq!(
            find(&checks, "host.uid").detail,
            "0 (root, CAP_SYS_ADMIN effective)"
        );
        assert_eq!(
            find(&checks, "userns.max").detail,
            "user.max_user_namespaces = 96362"
        );
        let seccomp = &find(&checks, "userns.seccomp").detail;
        assert_eq!(
            seccomp,
            "Seccomp: 0 (no filter); container marker /.dockerenv"
        );
    }

    #[test]
    fn development_vm_cgroup_layout_is_hybrid() {
        let dir = hosts_dir().join("vm-6.18-cgroup-hybrid-root");
        let cgroup = fs::read_to_string(dir.join("proc/self/cgroup")).unwrap();
        let mountinfo = fs::read_to_string(dir.join("proc/self/mountinfo")).unwrap();
        let layout = Layout::parse(&cgroup, &mountinfo, |cgroup_dir| {
            let recorded = dir
                .join(cgroup_dir.strip_prefix("/").unwrap())
                .join("cgroup.controllers");
            fs::read_to_string(recorded).ok()
        });
        let line = layout_check(&layout);
        assert_eq!(line.status, Status::Ok);
        assert_eq!(
            line.detail,
            "hybrid; v1: memory cpu cpuacct pids freezer; v2: none; cgroup2 at /sys/fs/cgroup/unified"
        );
        let memory = controller_check(Controller::Memory, layout.get(Controller::Memory), None);
        assert_eq!(memory.status, Status::Ok);
        assert!(
            memory
                .detail
                .starts_with("v1 /sys/fs/cgroup/memory/process_api/"),
            "{}",
            memory.detail
        );
    }

    #[test]
    fn debian_switch_exempts_cap_sys_admin() {
        let admin = Identity {
            uid: Some(0),
            cap_sys_admin: true,
        };
        let user = Identity {
            uid: Some(1000),
            cap_sys_admin: false,
        };
        assert_eq!(debian_userns_check(Some("0\n"), &admin).status, Status::Ok);
        let denied = debian_userns_check(Some("0\n"), &user);
        assert_eq!(denied.status, Status::Missing);
        assert_eq!(
            denied.fix.as_deref(),
            Some("sysctl -w kernel.unprivileged_userns_clone=1")
        );
        assert_eq!(debian_userns_check(None, &user).status, Status::Ok);
    }

    #[test]
    fn seccomp_outside_container_gets_generic_fix() {
        let check = seccomp_check(Some("Name:\tx\nSeccomp:\t2\n"), &[]);
        assert_eq!(check.status, Status::Missing);
        assert_eq!(check.fix.as_deref(), Some(SECCOMP_FIX_OTHER));
    }

    #[test]
    fn zero_net_namespaces_is_missing() {
        let mut files = HostFiles::read(&hosts_dir().join("vm-6.18-cgroup-hybrid-root"));
        for (kind, value) in &mut files.max_namespaces {
            if *kind == "net" {
                *value = Some("0\n".into());
            }
        }
        let check = other_namespaces_check(&files);
        assert_eq!(check.status, Status::Missing);
        assert_eq!(check.detail, "user.max_net_namespaces = 0");
    }

    #[test]
    fn restrictions_accepted_when_probe_ran() {
        let mut checks = recorded("docker-default-seccomp-root");
        accept_restrictions_if_probe_ran(&mut checks, true);
        let seccomp = find(&checks, "userns.seccomp");
        assert_eq!(seccomp.status, Status::Ok);
        assert!(seccomp.fix.is_none());
        assert!(seccomp
            .detail
            .ends_with("ran anyway, so this does not stop the runner"));

        let mut checks = recorded("docker-default-seccomp-root");
        accept_restrictions_if_probe_ran(&mut checks, false);
        assert_eq!(status_of(&checks, "userns.seccomp"), Status::Missing);
    }

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

    #[test]
    fn report_with_setup_error_wins_over_exit() {
        let report = concat!(
            r#"{"setup":{"error":{"step":"execute the test binary","path":"/usr/bin/true","errno":2,"detail":"No such file or directory (os error 2)"}}}"#,
            "\n",
            r#"{"exited":{"exit":{"code":127},"leaked":0,"timings":{"setup_us":1,"test_us":1,"leak_wait_us":0}}}"#,
            "\n"
        );
        match interpret_report(report.as_bytes(), Some(0)) {
            ProbeOutcome::Failed { error, in_init } => {
                assert!(in_init);
                assert_eq!(error.step, "execute the test binary");
            }
            other => panic!("expected a setup failure, got {other:?}"),
        }
    }

    #[test]
    fn empty_report_names_init_status() {
        match interpret_report(b"", Some(9)) {
            ProbeOutcome::Failed { error, .. } => {
                assert_eq!(error.step, "run the probe");
                assert_eq!(
                    error.detail,
                    "the container's init ended without a report (killed by signal 9)"
                );
            }
            other => panic!("expected a failure, got {other:?}"),
        }
    }

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

    #[test]
    fn missing_controller_is_degraded() {
        let check = controller_check(Controller::Pids, None, None);
        assert_eq!(check.status, Status::Degraded);
        assert!(
            check
                .detail
                .ends_with("no tasks cap; peak tasks unavailable"),
            "{}",
            check.detail
        );
        assert_eq!(check.fix.as_deref(), Some(CGROUP_FIX));

        let location = Location {
            version: Version::V2,
            dir: "/sys/fs/cgroup/user.slice".into(),
        };
        let denied = controller_check(
            Controller::Memory,
            Some(&location),
            Some("Permission denied"),
        );
        assert_eq!(denied.status, Status::Degraded);
        assert!(
            denied
                .detail
                .starts_with("v2 /sys/fs/cgroup/user.slice: Permission denied;"),
            "{}",
            denied.detail
        );
    }

    #[test]
    fn old_kernel_usage_files_are_degraded() {
        let usage = CgroupUsage {
            memory_peak: None,
            oom_kills: Some(0),
            tasks_peak: None,
            ..CgroupUsage::default()
        };
        let facts = TestCgroupFacts {
            memory: Some(Version::V2),
            pids: true,
            usage,
        };
        let checks = usage_file_checks(&facts, &|file| file == "memory.events");
        let peak = find(&checks, "cgroup.memory-peak");
        assert_eq!(peak.status, Status::Degraded);
        assert_eq!(peak.fix.as_deref(), Some("Linux 5.19 or later"));
        let pids = find(&checks, "cgroup.pids-peak");
        assert_eq!(pids.status, Status::Degraded);
        assert_eq!(pids.fix.as_deref(), Some("Linux 6.1 or later"));
        assert_eq!(status_of(&checks, "cgroup.oom-events"), Status::Ok);
    }

    #[test]
    fn missing_cargo_is_missing() {
        let facts = ToolchainFacts {
            cargo: Err("not found: CARGO is unset and PATH has no `cargo`".into()),
            rustc: Err("not found: RUSTC is unset and PATH has no `rustc`".into()),
            toolchain: Toolchain::default(),
            rustup_home_from_env: false,
            cargo_home_from_env: false,
            rustup_home_is_dir: false,
            cargo_home_is_dir: false,
        };
        let checks = toolchain_checks(&facts);
        assert_eq!(status_of(&checks, "toolchain.cargo"), Status::Missing);
        assert_eq!(status_of(&checks, "toolchain.rustc"), Status::Missing);
        let home = find(&checks, "toolchain.rustup-home");
        assert_eq!(home.status, Status::Degraded);
        assert!(
            home.detail
                .starts_with("RUSTUP_HOME is unset and $HOME/.rustup does not exist"),
            "{}",
            home.detail
        );
    }
}
