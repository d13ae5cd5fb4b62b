//! Per-test cgroups: creation beneath the runner's own cgroup, caps, usage,
//! kill and removal, on v1, v2 and hybrid hosts.
//!
//! This module writes the cgroup files itself instead of going through the
//! `cgroups-rs` crate. Checked with cgroups-rs 0.5.1:
//! - it picks one version for the whole host, so it cannot place memory on
//!   v1 and another controller on v2 the way hybrid hosts split them;
//! - `apply()` returns `Ok` for memory limits it failed to write;
//! - stat files that do not exist read as 0, where we must report
//!   "unavailable";
//! - it has no getter for `pids.peak` and no kill for v1.
//!
//! The workarounds were larger than what the crate still did, and the
//! per-test path is a handful of small file writes.
//!
//! Layout on disk, per hierarchy: `<own cgroup>/cargo-sandbox-test.<pid>/`
//! for a run, and `t<N>` below it for each test. A run directory whose pid is
//! no longer alive belongs to a crashed run and is removed at the next start.

mod layout;

pub use layout::{unescape_mountinfo, Controller, Layout, Location, Version};

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Name prefix of a run's cgroup directory; the runner's pid follows.
pub const RUN_DIR_PREFIX: &str = "cargo-sandbox-test.";
/// Name prefix of the leaf cgroup the runner moves into on cgroup v2.
pub const RUNNER_LEAF_PREFIX: &str = "cargo-sandbox-test-runner.";

/// Resource caps the kernel enforces on one test.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Caps {
    /// Memory cap in bytes; swap is capped to the same total.
    pub memory: Option<u64>,
    /// CPU quota in CPUs (1.5 means 150 ms of CPU time per 100 ms period).
    pub cpus: Option<f64>,
    /// Maximum number of tasks (processes and threads).
    pub pids: Option<u64>,
}

/// Errors of cgroup setup.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("failed to create cgroup {path}: {source}")]
    Create { path: PathBuf, source: io::Error },
    #[error("failed to write {value:?} to {path}: {source}")]
    Write {
        path: PathBuf,
        value: String,
        source: io::Error,
    },
    #[error("cgroup limit not applied: wrote {wrote:?} to {path} but it reads back {read:?}")]
    Mismatch {
        path: PathBuf,
        wrote: String,
        read: String,
    },
    #[error(
        "cannot enable the {controllers} controllers in {path}: {source}; \
         the cgroup has processes of its own (cgroup v2 allows controllers only \
         for cgroups without processes). Start the runner in a cgroup of its own, \
         for example with `systemd-run --user --scope -p Delegate=yes cargo sandbox-test`"
    )]
    Delegate {
        path: PathBuf,
        controllers: String,
        source: io::Error,
    },
}

/// One cgroup hierarchy (a v1 mount, or the v2 tree) the run uses.
#[derive(Debug, Clone)]
struct Hierarchy {
    version: Version,
    run_dir: PathBuf,
    controllers: Vec<Controller>,
}

/// The cgroups of one run: a directory per hierarchy under which every
/// test gets its own cgroup.
#[derive(Debug)]
pub struct RunCgroups {
    hierarchies: Vec<Hierarchy>,
    /// Caps already written and read back once in this run: the kernel
    /// treats every test cgroup alike, so later tests skip the read-back.
    verified: std::sync::Mutex<Vec<Caps>>,
    layout: Layout,
    /// Controllers the run cannot use, each with the reason.
    pub missing: Vec<(Controller, String)>,
}

impl RunCgroups {
    /// Creates the run's cgroup directories. `our_pids` are moved into a
    /// leaf cgroup first when a v2 cgroup must be emptied of processes.
    pub fn setup(layout: Layout, our_pids: &[u32]) -> Result<RunCgroups, CgroupError> {
        let mut run = RunCgroups {
            hierarchies: Vec::new(),
            verified: std::sync::Mutex::new(Vec::new()),
            layout,
            missing: Vec::new(),
        };
        let pid = std::process::id();
        let mut own_dirs: Vec<(Version, PathBuf, Vec<Controller>)> = Vec::new();
        for controller in Controller::ALL {
            let Some(location) = run.layout.get(controller) else {
                run.missing
                    .push((controller, "the host has no such cgroup controller".into()));
                continue;
            };
            match own_dirs.iter_mut().find(|(_, dir, _)| *dir == location.dir) {
                Some((_, _, list)) => list.push(controller),
                None => own_dirs.push((location.version, location.dir.clone(), vec![controller])),
            }
        }

        for (version, own_dir, controllers) in own_dirs {
            remove_stale_runs(&own_dir);
            if version == Version::V2 {
                if let Err(err) = prepare_v2_parent(&own_dir, &controllers, our_pids) {
                    if is_permission_error(&err) {
                        for c in &controllers {
                            run.missing.push((*c, format!("{err}")));
                        }
                        continue;
                    }
                    return Err(err);
                }
            }
            let run_dir = own_dir.join(format!("{RUN_DIR_PREFIX}{pid}"));
            if let Err(source) = fs::create_dir(&run_dir) {
                if source.kind() == io::ErrorKind::AlreadyExists {
                    // NOTE: a run of ours with the same pid crashed earlier and
                    // its pid is alive again; reuse the directory.
                } else {
                    for c in &controllers {
                        run.missing
                            .push((*c, format!("cannot create {}: {source}", run_dir.display())));
                    }
                    continue;
                }
            }
            if version == Version::V2 {
                enable_v2_controllers(&run_dir, &controllers)?;
            }
            run.hierarchies.push(Hierarchy {
                version,
                run_dir,
                controllers,
            });
        }
        Ok(run)
    }

    /// Returns whether a controller is usable in this run.
    pub fn has(&self, controller: Controller) -> bool {
        self.hierarchies
            .iter()
            .any(|h| h.controllers.contains(&controller))
    }

    /// Returns whether the run has no usable hierarchy at all.
    pub fn is_empty(&self) -> bool {
        self.hierarchies.is_empty()
    }

    /// Returns the host's layout as detected at start.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Creates the cgroup of one test and applies its caps, reading every
    /// limit back so a cap the kernel did not take fails here.
    pub fn create_test(&self, name: &str, caps: &Caps) -> Result<TestCgroup, CgroupError> {
        let mut cgroup = TestCgroup { dirs: Vec::new() };
        for hierarchy in &self.hierarchies {
            // Each hierarchy costs a mkdir, an attach and an rmdir per test:
            // skip those that neither cap nor measure anything this test
            // needs. The kill does not need the freezer, because killing
            // init ends every process of the PID namespace.
            let needed = hierarchy.controllers.iter().any(|c| match c {
                Controller::Memory | Controller::Cpuacct | Controller::Pids => true,
                Controller::Cpu => caps.cpus.is_some() || hierarchy.version == Version::V2,
                Controller::Freezer => hierarchy.version == Version::V2,
            });
            if !needed {
                continue;
            }
            let dir = hierarchy.run_dir.join(name);
            match fs::create_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(source) => {
                    cgroup.remove();
                    return Err(CgroupError::Create { path: dir, source });
                }
            }
            cgroup.dirs.push(TestDir {
                version: hierarchy.version,
                dir,
                controllers: hierarchy.controllers.clone(),
            });
        }
        let verified = self
            .verified
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(caps);
        if let Err(err) = cgroup.apply(caps, !verified) {
            cgroup.remove();
            return Err(err);
        }
        if !verified {
            self.verified
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(*caps);
        }
        Ok(cgroup)
    }

    /// Removes the run's directories; test cgroups must be gone already.
    pub fn teardown(&self) {
        for hierarchy in &self.hierarchies {
            let _ = remove_tree(&hierarchy.run_dir);
        }
    }
}

fn is_permission_error(err: &CgroupError) -> bool {
    let source = match err {
        CgroupError::Create { source, .. } | CgroupError::Write { source, .. } => source,
        _ => return false,
    };
    matches!(
        source.raw_os_error(),
        Some(libc::EACCES | libc::EPERM | libc::EROFS)
    )
}

/// Makes a v2 cgroup able to hold controller-enabled children: moves our
/// processes into a leaf when the cgroup has processes, then enables the
/// controllers for its children.
fn prepare_v2_parent(
    own_dir: &Path,
    controllers: &[Controller],
    our_pids: &[u32],
) -> Result<(), CgroupError> {
    let wanted = v2_controller_names(controllers);
    if wanted.is_empty() {
        return Ok(());
    }
    let enabled = fs::read_to_string(own_dir.join("cgroup.subtree_control")).unwrap_or_default();
    if wanted
        .iter()
        .all(|w| enabled.split_whitespace().any(|e| e == *w))
    {
        return Ok(());
    }
    let procs = fs::read_to_string(own_dir.join("cgroup.procs")).unwrap_or_default();
    if !procs.trim().is_empty() {
        let leaf = own_dir.join(format!("{RUNNER_LEAF_PREFIX}{}", std::process::id()));
        match fs::create_dir(&leaf) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(source) => return Err(CgroupError::Create { path: leaf, source }),
        }
        for pid in our_pids {
            write_file(&leaf.join("cgroup.procs"), &pid.to_string())?;
        }
    }
    enable_v2_controllers(own_dir, controllers)
}

fn v2_controller_names(controllers: &[Controller]) -> Vec<&'static str> {
    let mut names = BTreeSet::new();
    for c in controllers {
        match c {
            Controller::Memory => names.insert("memory"),
            Controller::Cpu | Controller::Cpuacct => names.insert("cpu"),
            Controller::Pids => names.insert("pids"),
            Controller::Freezer => false,
        };
    }
    names.into_iter().collect()
}

fn enable_v2_controllers(dir: &Path, controllers: &[Controller]) -> Result<(), CgroupError> {
    let names = v2_controller_names(controllers);
    if names.is_empty() {
        return Ok(());
    }
    let value = names
        .iter()
        .map(|n| format!("+{n}"))
        .collect::<Vec<_>>()
        .join(" ");
    let path = dir.join("cgroup.subtree_control");
    fs::write(&path, &value).map_err(|source| {
        if source.raw_os_error() == Some(libc::EBUSY) {
            CgroupError::Delegate {
                path: path.clone(),
                controllers: value.clone(),
                source,
            }
        } else {
            CgroupError::Write {
                path: path.clone(),
                value: value.clone(),
                source,
            }
        }
    })
}

/// Removes run directories left by runs whose process is gone.
fn remove_stale_runs(own_dir: &Path) {
    let Ok(entries) = fs::read_dir(own_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let pid = name
            .strip_prefix(RUN_DIR_PREFIX)
            .or_else(|| name.strip_prefix(RUNNER_LEAF_PREFIX))
            .and_then(|p| p.parse::<i32>().ok());
        let Some(pid) = pid else { continue };
        if pid as u32 == std::process::id() || process_alive(pid) {
            continue;
        }
        tracing::info!(path = %entry.path().display(), "removing cgroup of a crashed run");
        if let Err(err) = remove_tree(&entry.path()) {
            tracing::warn!(path = %entry.path().display(), %err, "cannot remove stale cgroup");
        }
    }
}

fn process_alive(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Kills whatever is left in a cgroup directory tree and removes it,
/// deepest first.
fn remove_tree(dir: &Path) -> io::Result<()> {
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                remove_tree(&entry.path())?;
            }
        }
    }
    kill_procs_in(dir);
    remove_dir_retrying(dir)
}

/// Removes a cgroup directory, waiting briefly while the kernel finishes
/// tearing down exited tasks (rmdir returns EBUSY until then).
fn remove_dir_retrying(dir: &Path) -> io::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                kill_procs_in(dir);
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(e) => return Err(e),
        }
    }
}

fn kill_procs_in(dir: &Path) {
    for pid in read_pids(dir) {
        // SAFETY: kill(2) has no memory-safety preconditions. The pid was
        // read from a cgroup of ours, which only our test processes join.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
    }
}

fn read_pids(dir: &Path) -> Vec<i32> {
    fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

fn write_file(path: &Path, value: &str) -> Result<(), CgroupError> {
    fs::write(path, value).map_err(|source| CgroupError::Write {
        path: path.to_path_buf(),
        value: value.to_string(),
        source,
    })
}

/// Writes a limit and reads it back; `expected` is what the file must
/// then contain (the kernel rounds memory limits down to whole pages).
fn write_checked(path: &Path, value: &str, expected: &str) -> Result<(), CgroupError> {
    write_file(path, value)?;
    let read = fs::read_to_string(path).map_err(|source| CgroupError::Write {
        path: path.to_path_buf(),
        value: value.to_string(),
        source,
    })?;
    if read.trim() != expected {
        return Err(CgroupError::Mismatch {
            path: path.to_path_buf(),
            wrote: value.to_string(),
            read: read.trim().to_string(),
        });
    }
    Ok(())
}

#[derive(Debug)]
struct TestDir {
    version: Version,
    dir: PathBuf,
    controllers: Vec<Controller>,
}

/// The cgroup of one test, one directory per hierarchy.
#[derive(Debug)]
pub struct TestCgroup {
    dirs: Vec<TestDir>,
}

/// Usage figures read from a test's cgroup. `None` means the host cannot
/// measure that figure, never zero.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct CgroupUsage {
    pub memory_peak: Option<u64>,
    pub oom_kills: Option<u64>,
    pub cpu_user: Option<Duration>,
    pub cpu_system: Option<Duration>,
    pub tasks_peak: Option<u64>,
    /// How many times a fork or clone failed at the pids cap.
    pub pids_limit_hits: Option<u64>,
}

impl TestCgroup {
    fn dir_of(&self, controller: Controller) -> Option<&TestDir> {
        self.dirs
            .iter()
            .find(|d| d.controllers.contains(&controller))
    }

    /// Returns whether this cgroup has a controller.
    pub fn has(&self, controller: Controller) -> bool {
        self.dir_of(controller).is_some()
    }

    /// Returns the `cgroup.procs` files a test process must be written to.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs
            .iter()
            .map(|d| d.dir.join("cgroup.procs"))
            .collect()
    }

    fn apply(&self, caps: &Caps, verify: bool) -> Result<(), CgroupError> {
        let write_checked = |path: &Path, value: &str, expected: &str| {
            if verify {
                write_checked(path, value, expected)
            } else {
                write_file(path, value)
            }
        };
        if let (Some(bytes), Some(d)) = (caps.memory, self.dir_of(Controller::Memory)) {
            let pages = bytes / 4096 * 4096;
            match d.version {
                Version::V1 => {
                    // A fresh cgroup starts unlimited, so memory goes first:
                    // the kernel rejects a memsw limit below the memory limit.
                    let memory = d.dir.join("memory.limit_in_bytes");
                    write_checked(&memory, &bytes.to_string(), &pages.to_string())?;
                    let memsw = d.dir.join("memory.memsw.limit_in_bytes");
                    if memsw.exists() {
                        write_checked(&memsw, &bytes.to_string(), &pages.to_string())?;
                    }
                }
                Version::V2 => {
                    write_checked(
                        &d.dir.join("memory.max"),
                        &bytes.to_string(),
                        &pages.to_string(),
                    )?;
                    let swap = d.dir.join("memory.swap.max");
                    if swap.exists() {
                        write_checked(&swap, "0", "0")?;
                    }
                }
            }
        }
        if let (Some(cpus), Some(d)) = (caps.cpus, self.dir_of(Controller::Cpu)) {
            let period: u64 = 100_000;
            let quota = ((cpus * period as f64).round() as u64).max(1000);
            match d.version {
                Version::V1 => {
                    write_checked(&d.dir.join("cpu.cfs_period_us"), "100000", "100000")?;
                    let q = quota.to_string();
                    write_checked(&d.dir.join("cpu.cfs_quota_us"), &q, &q)?;
                }
                Version::V2 => {
                    let value = format!("{quota} {period}");
                    write_checked(&d.dir.join("cpu.max"), &value, &value)?;
                }
            }
        }
        if let (Some(pids), Some(d)) = (caps.pids, self.dir_of(Controller::Pids)) {
            let value = pids.to_string();
            write_checked(&d.dir.join("pids.max"), &value, &value)?;
        }
        Ok(())
    }

    /// Reads the usage figures the kernel kept for this cgroup.
    pub fn usage(&self) -> CgroupUsage {
        let mut usage = CgroupUsage::default();
        if let Some(d) = self.dir_of(Controller::Memory) {
            match d.version {
                Version::V1 => {
                    usage.memory_peak = read_u64(&d.dir.join("memory.max_usage_in_bytes"));
                    usage.oom_kills = read_key(&d.dir.join("memory.oom_control"), "oom_kill");
                }
                Version::V2 => {
                    usage.memory_peak = read_u64(&d.dir.join("memory.peak"));
                    usage.oom_kills = read_key(&d.dir.join("memory.events"), "oom_kill");
                }
            }
        }
        if let Some(d) = self.dir_of(Controller::Cpuacct) {
            match d.version {
                Version::V1 => {
                    usage.cpu_user =
                        read_u64(&d.dir.join("cpuacct.usage_user")).map(Duration::from_nanos);
                    usage.cpu_system =
                        read_u64(&d.dir.join("cpuacct.usage_sys")).map(Duration::from_nanos);
                }
                Version::V2 => {
                    let stat = d.dir.join("cpu.stat");
                    usage.cpu_user = read_key(&stat, "user_usec").map(Duration::from_micros);
                    usage.cpu_system = read_key(&stat, "system_usec").map(Duration::from_micros);
                }
            }
        }
        if let Some(d) = self.dir_of(Controller::Pids) {
            usage.tasks_peak = read_u64(&d.dir.join("pids.peak"));
            usage.pids_limit_hits = read_key(&d.dir.join("pids.events"), "max");
        }
        usage
    }

    /// Kills every process in the cgroup: `cgroup.kill` on v2, SIGKILL to
    /// each pid in `cgroup.procs` on v1. The v1 way can miss a process
    /// forked meanwhile, which the caller's SIGKILL to the container's
    /// init catches: every process of the PID namespace dies with it.
    pub fn kill_all(&self) {
        for d in &self.dirs {
            if d.version == Version::V2 {
                let kill = d.dir.join("cgroup.kill");
                if kill.exists() && fs::write(&kill, "1").is_ok() {
                    return;
                }
            }
        }
        for d in &self.dirs {
            kill_procs_in(&d.dir);
        }
    }

    /// Returns whether any process is still in the cgroup.
    pub fn is_populated(&self) -> bool {
        self.dirs.iter().any(|d| !read_pids(&d.dir).is_empty())
    }

    /// Removes the cgroup, killing anything still inside it. A test cannot
    /// create child cgroups: it has no cgroup filesystem and may not create
    /// the user namespace it would need to mount one. So a plain rmdir is
    /// enough, retried while the kernel finishes exited tasks.
    pub fn remove(&self) {
        for d in &self.dirs {
            if let Err(err) = remove_dir_retrying(&d.dir) {
                tracing::warn!(path = %d.dir.display(), %err, "cannot remove test cgroup");
            }
        }
    }
}

fn read_u64(path: &Path) -> Option<u64> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Reads `key value` from a flat-keyed file such as `memory.events`.
fn read_key(path: &Path, key: &str) -> Option<u64> {
    let text = fs::read_to_string(path).ok()?;
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Exercises the v2 code on whatever cgroup2 tree this host mounts,
    /// with or without controllers: attaching a process, reading
    /// `cpu.stat` (a core file of every v2 cgroup), `cgroup.kill` and
    /// removal. On a hybrid host this is the otherwise idle v2 tree.
    #[test]
    fn v2_cgroup_for_real() {
        let layout = Layout::detect().unwrap();
        let Some(own) = layout.unified.clone() else {
            println!("skipped: no cgroup2 tree is mounted");
            return;
        };
        let dir = own.join(format!("cargo-sandbox-test-unit.{}", std::process::id()));
        if let Err(err) = fs::create_dir(&dir) {
            println!("skipped: cannot create {}: {err}", dir.display());
            return;
        }
        let cgroup = TestCgroup {
            dirs: vec![TestDir {
                version: Version::V2,
                dir: dir.clone(),
                controllers: vec![Controller::Cpuacct, Controller::Freezer],
            }],
        };
        let mut child = std::process::Command::new("sh")
            .args(["-c", "while :; do :; done"])
            .spawn()
            .unwrap();
        let attached = fs::write(dir.join("cgroup.procs"), child.id().to_string());
        if let Err(err) = attached {
            let _ = child.kill();
            let _ = child.wait();
            cgroup.remove();
            println!(
                "skipped: cannot move a process into {}: {err}",
                dir.display()
            );
            return;
        }
        std::thread::sleep(Duration::from_millis(300));
        let usage = cgroup.usage();
        assert!(cgroup.is_populated());
        assert!(
            usage.cpu_user.unwrap() + usage.cpu_system.unwrap() > Duration::from_millis(50),
            "{usage:?}"
        );

        cgroup.kill_all();
        let status = child.wait().unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(libc::SIGKILL)
        );
        cgroup.remove();
        assert!(!dir.exists());
    }
}
