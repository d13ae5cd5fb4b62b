//! Cgroup checks: the layout of the cgroup hierarchies, each controller,
//! and the usage files of one test cgroup that the doctor creates and
//! removes.

use std::path::{Path, PathBuf};

use crate::cgroup::{Caps, CgroupUsage, Controller, Layout, Location, RunCgroups, Version};

use super::{hide_pids, Check};

pub(super) const CGROUP_FIX: &str = "run as root, or on cgroup v2 `systemd-run --user --scope -p \
     Delegate=yes cargo sandbox-test`";

/// Name of the doctor's test cgroup inside the run's cgroup directories.
const TEST_CGROUP: &str = "doctor";

/// Checks the cgroup layout, each controller, and the usage files of one
/// test cgroup, then removes every cgroup it created.
pub(super) fn cgroup_checks(our_pids: &[u32]) -> Vec<Check> {
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
        Controller::Pids => {
            "tasks capped by RLIMIT_NPROC instead (never for root); peak tasks unavailable"
        }
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

/// The files the doctor's test cgroup offers.
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

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;
    use crate::doctor::test_support::*;
    use crate::doctor::Status;

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
    fn missing_controller_is_degraded() {
        let check = controller_check(Controller::Pids, None, None);
        assert_eq!(check.status, Status::Degraded);
        assert!(
            check.detail.ends_with(
                "tasks capped by RLIMIT_NPROC instead (never for root); peak tasks unavailable"
            ),
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
}
