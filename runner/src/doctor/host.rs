//! Host checks: the kernel release, the uid and `CAP_SYS_ADMIN`, and the
//! sysctls and seccomp filter that restrict namespaces. They read files
//! below a root directory, so the unit tests run them on files recorded on
//! other hosts (`tests/hosts/`).

use std::fs;
use std::path::Path;

use super::{Check, Status};

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
pub(super) struct HostFiles {
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
    pub(super) fn read(root: &Path) -> HostFiles {
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
pub(super) fn status_field<'a>(status: &'a str, key: &str) -> Option<&'a str> {
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
pub(super) fn host_checks(files: &HostFiles) -> Vec<Check> {
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
pub(super) fn accept_restrictions_if_probe_ran(checks: &mut [Check], namespaces_work: bool) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::test_support::*;

    fn recorded(host: &str) -> Vec<Check> {
        let dir = hosts_dir().join(host);
        assert!(dir.is_dir(), "no recorded host {}", dir.display());
        host_checks(&HostFiles::read(&dir))
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
}
