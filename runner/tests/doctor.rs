//! Tests of `cargo-sandbox-test doctor` on this host: the built binary, a
//! real probe container and real cgroups.
//!
//! The doctor runs twice in a row, shared by the tests that read its
//! output, so that only one doctor as the calling user runs at a time and
//! the leftover checks cannot see another test's doctor. The unprivileged
//! test runs a copy of the binary under another path for the same reason.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use cargo_sandbox_test::cgroup::Layout;

const BINARY: &str = env!("CARGO_BIN_EXE_cargo-sandbox-test");

/// Every check line, in report order.
const CHECKS: &[&str] = &[
    "host.kernel",
    "host.uid",
    "userns.max",
    "namespaces.max",
    "userns.debian",
    "userns.apparmor",
    "userns.seccomp",
    "container.clone",
    "container.id-map",
    "container.mounts",
    "container.overlay",
    "container.proc",
    "container.pivot-root",
    "container.hostname",
    "container.loopback",
    "container.exec",
    "cgroup.layout",
    "cgroup.memory",
    "cgroup.cpu",
    "cgroup.cpuacct",
    "cgroup.pids",
    "cgroup.freezer",
    "cgroup.memory-peak",
    "cgroup.pids-peak",
    "cgroup.oom-events",
    "toolchain.cargo",
    "toolchain.rustc",
    "toolchain.rustup-home",
    "toolchain.cargo-home",
    "result",
];

/// One finished doctor run.
struct DoctorRun {
    pid: u32,
    code: i32,
    stdout: String,
    stderr: String,
    elapsed: Duration,
}

impl DoctorRun {
    fn start(command: &mut Command) -> DoctorRun {
        let started = Instant::now();
        let child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("failed to start the doctor");
        let pid = child.id();
        let output: Output = child
            .wait_with_output()
            .expect("failed to wait for the doctor");
        DoctorRun {
            pid,
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
            elapsed: started.elapsed(),
        }
    }

    /// Returns the status column of a check line, like `ok`.
    fn status(&self, name: &str) -> &str {
        self.line(name)
            .get(24..)
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("check {name} has no status:\n{}", self.stdout))
    }

    fn line(&self, name: &str) -> &str {
        self.stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("no line for {name}:\n{}", self.stdout))
    }

    /// Returns the names of the check lines, in order.
    fn check_names(&self) -> Vec<&str> {
        self.stdout
            .lines()
            .skip_while(|l| !l.starts_with("CHECK"))
            .skip(1)
            .filter(|l| !l.is_empty() && !l.starts_with(' '))
            .filter_map(|l| l.split_whitespace().next())
            .collect()
    }
}

/// Returns the two doctor runs as the calling user, started on first use
/// and shared by all tests.
fn runs() -> &'static [DoctorRun; 2] {
    static RUNS: OnceLock<[DoctorRun; 2]> = OnceLock::new();
    RUNS.get_or_init(|| {
        let first = DoctorRun::start(Command::new(BINARY).arg("doctor"));
        let second = DoctorRun::start(Command::new(BINARY).arg("doctor"));
        [first, second]
    })
}

fn is_root() -> bool {
    nix::unistd::getuid().is_root()
}

#[test]
fn doctor_exits_zero_here() {
    let run = &runs()[0];
    assert_eq!(
        run.code, 0,
        "stdout:\n{}\nstderr:\n{}",
        run.stdout, run.stderr
    );
    assert_ne!(run.status("result"), "missing", "{}", run.stdout);
}

#[test]
fn doctor_prints_every_check() {
    let run = &runs()[0];
    assert_eq!(run.check_names(), CHECKS, "{}", run.stdout);
    for name in CHECKS {
        let status = run.status(name);
        assert!(
            ["ok", "degraded", "missing"].contains(&status),
            "{name} has status {status:?}"
        );
    }
}

#[test]
fn doctor_probe_container_ok_as_root() {
    if !is_root() {
        println!("skipped: the probe lines are checked as root only");
        return;
    }
    let run = &runs()[0];
    for name in CHECKS.iter().filter(|n| n.starts_with("container.")) {
        assert_eq!(run.status(name), "ok", "{}", run.line(name));
    }
    assert_eq!(run.status("host.uid"), "ok");
    assert!(
        run.line("host.uid").contains("0 (root"),
        "{}",
        run.line("host.uid")
    );
    for name in ["cgroup.memory", "cgroup.pids", "cgroup.cpuacct"] {
        assert_eq!(run.status(name), "ok", "{}", run.line(name));
    }
}

#[test]
fn doctor_output_is_stable() {
    let [first, second] = runs();
    assert_eq!(second.code, first.code);
    assert_eq!(first.stdout, second.stdout);
    assert!(
        !first.stdout.contains(&first.pid.to_string()),
        "{}",
        first.stdout
    );
    assert!(
        !first.stdout.contains('\x1b'),
        "colour escape in the output"
    );
}

#[test]
fn doctor_is_fast() {
    // The target is under 2 s. The bound leaves room for other tests that
    // run in parallel on a loaded machine.
    for run in runs() {
        assert!(
            run.elapsed < Duration::from_secs(5),
            "took {:?}",
            run.elapsed
        );
    }
}

#[test]
fn doctor_leaves_nothing_behind() {
    let runs = runs();
    for run in runs {
        let staging = std::env::temp_dir().join(format!("cargo-sandbox-test-doctor.{}", run.pid));
        assert!(!staging.exists(), "{} left behind", staging.display());
        // The doctor inherits this test's cgroups, so its run directories
        // were created next to this process's own cgroup.
        let layout = Layout::detect().unwrap();
        for location in layout.controllers.values() {
            for prefix in ["cargo-sandbox-test", "cargo-sandbox-test-runner"] {
                let dir = location.dir.join(format!("{prefix}.{}", run.pid));
                assert!(!dir.exists(), "{} left behind", dir.display());
            }
        }
    }
    let doctors = wait_for_no_processes_of(Path::new(BINARY));
    assert!(doctors.is_empty(), "processes left behind: {doctors:?}");
}

/// Waits up to 2 s for every process running `binary` to end (zygotes
/// get SIGKILL when the doctor exits) and returns the pids of those left.
fn wait_for_no_processes_of(binary: &Path) -> Vec<u32> {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let left = processes_of(binary);
        if left.is_empty() || Instant::now() >= deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Returns the pids whose command line is `binary doctor`: the doctor,
/// its zygotes and their containers' init, which are all forks of it.
fn processes_of(binary: &Path) -> Vec<u32> {
    let expected = format!("{}\0doctor\0", binary.display());
    let mut found = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        let Ok(cmdline) = fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        if cmdline == expected.as_bytes() {
            found.push(pid);
        }
    }
    found
}

#[test]
fn doctor_runs_unprivileged() {
    if !is_root() {
        println!("skipped: switching to uid 65534 needs root");
        return;
    }
    if !Path::new("/usr/bin/setpriv").exists() {
        println!("skipped: /usr/bin/setpriv not found");
        return;
    }
    // uid 65534 may not be able to read the target directory, so it runs
    // a copy in a directory of its own.
    let dir = tempfile::tempdir().unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let binary: PathBuf = dir.path().join("cargo-sandbox-test");
    fs::copy(BINARY, &binary).unwrap();
    let mut command = Command::new("/usr/bin/setpriv");
    command
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(&binary)
        .arg("doctor")
        .current_dir(dir.path())
        .env("HOME", dir.path())
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env_remove("CARGO")
        .env_remove("RUSTC")
        .env_remove("RUSTUP_HOME")
        .env_remove("CARGO_HOME")
        .env_remove("RUSTUP_TOOLCHAIN");
    let run = DoctorRun::start(&mut command);

    assert_eq!(run.check_names(), CHECKS, "{}", run.stdout);
    assert!(
        run.line("host.uid")
            .contains("65534 (not root, no CAP_SYS_ADMIN)"),
        "{}",
        run.line("host.uid")
    );
    // The probe needs no toolchain and no cgroup.
    for name in CHECKS.iter().filter(|n| n.starts_with("container.")) {
        assert_eq!(run.status(name), "ok", "{}", run.line(name));
    }
    // Only root may create cgroups below root's cgroups here.
    for name in ["cgroup.memory", "cgroup.pids", "cgroup.memory-peak"] {
        assert_eq!(run.status(name), "degraded", "{}", run.line(name));
    }
    // uid 65534 has no toolchain in PATH, and a missing toolchain alone
    // makes the exit code 102.
    let missing: Vec<&str> = run
        .check_names()
        .into_iter()
        .filter(|n| *n != "result" && run.status(n) == "missing")
        .collect();
    for name in &missing {
        assert!(name.starts_with("toolchain."), "{}", run.line(name));
    }
    let expected_code = if missing.is_empty() { 0 } else { 102 };
    assert_eq!(run.code, expected_code, "{}\n{}", run.stdout, run.stderr);

    let staging = std::env::temp_dir().join(format!("cargo-sandbox-test-doctor.{}", run.pid));
    assert!(!staging.exists(), "{} left behind", staging.display());
    let left = wait_for_no_processes_of(&binary);
    assert!(left.is_empty(), "processes left behind: {left:?}");
}
