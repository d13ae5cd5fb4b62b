//! The probe container. It runs `true` through the zygote with overlayfs.
//! When the kernel rejects the overlay and a second zygote could be started,
//! it runs once more through that zygote with read-only binds. Its outcome
//! names the setup step that failed, if any.

use std::fs;
use std::io;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout};

use crate::container::{
    self, Entry, InitReport, Pipes, RootfsPlan, SetupError, SpawnError, Spec, TestExit,
    ZygoteHandle,
};
use crate::plan::Toolchain;

use super::host::status_field;
use super::probe_steps::{probe_checks, ProbeReport, ProbeStep};

/// End state of a probe container.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum ProbeOutcome {
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
    pub(super) fn failed_step(&self) -> Option<ProbeStep> {
        match self {
            ProbeOutcome::Exited(TestExit::Code(0)) => None,
            ProbeOutcome::Exited(_) => Some(ProbeStep::Exec),
            ProbeOutcome::Failed { error, in_init } => Some(ProbeStep::of(error, *in_init)),
        }
    }
}

/// Facts about the probe besides its outcome.
#[derive(Debug, Clone)]
pub(super) struct ProbeFacts {
    pub(super) uid: u32,
    pub(super) gid: u32,
    pub(super) program: PathBuf,
    /// How many host directories the plan overlays.
    pub(super) overlays: usize,
}

/// Maximum time a probe container may take. `/usr/bin/true` needs a few
/// milliseconds.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// Forks a second zygote for the fallback probe. A zygote keeps the root
/// filesystem plan it was connected with, and the fallback needs another
/// plan. Forking is only allowed while this process has one thread, so it
/// happens before any probe. Without a second zygote the fallback is
/// skipped.
pub(super) fn start_second_zygote() -> Option<ZygoteHandle> {
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
pub(super) fn probe_container(
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
    let mut plan = container::rootfs::plan(staging.dir.join("mnt"), &extra, &[])?;
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
