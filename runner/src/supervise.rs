//! Supervision of one test: starts its container, captures its output
//! without ever blocking it, enforces the timeout, and collects the usage
//! and the outcome.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::cgroup::{Caps, RunCgroups};
use crate::container::{InitReport, SetupError, Spec, SpawnError, TestExit, Zygote};
use crate::outcome::{judge, Ending, Outcome, Usage};
use crate::plan::TestCase;

/// Host variables a test may see. Everything else (CI secrets, tokens,
/// `SSH_AUTH_SOCK`) is dropped unless `--env` passes it.
const PASSED_ENV: &[&str] = &[
    "PATH", "LANG", "LANGUAGE", "TERM", "TZ", "COLORTERM", "NO_COLOR", "CLICOLOR",
    "CLICOLOR_FORCE", "RUST_BACKTRACE", "RUST_LIB_BACKTRACE", "RUST_LOG", "RUST_MIN_STACK",
    "CI", "USER", "LOGNAME",
];

/// Settings shared by every test of a run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub caps: Caps,
    pub timeout: Duration,
    /// Time between SIGTERM and SIGKILL when a test is stopped.
    pub kill_grace: Duration,
    pub leak_timeout: Duration,
    pub fail_on_leak: bool,
    pub tmpfs_size: u64,
    /// Bytes of each output stream kept; the middle of a longer stream is
    /// dropped and marked.
    pub max_output: usize,
    pub network: bool,
    /// Variables set or passed through with `--env`.
    pub env: Vec<(String, Option<String>)>,
    pub home: PathBuf,
}

/// The run's interruption flag, with a pipe that becomes readable when it
/// is set so that supervisors waiting in `poll` wake up.
pub struct Cancel {
    flag: AtomicBool,
    read: OwnedFd,
    write: OwnedFd,
}

impl Cancel {
    pub fn new() -> std::io::Result<Cancel> {
        let (read, write) = nix::unistd::pipe()?;
        Ok(Cancel { flag: AtomicBool::new(false), read, write })
    }

    /// Sets the flag and wakes every supervisor.
    pub fn trigger(&self) {
        if !self.flag.swap(true, Ordering::SeqCst) {
            let _ = nix::unistd::write(&self.write, b"x");
        }
    }

    pub fn is_set(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }
}

/// Captured output of one stream: the head, the tail, and how much of the
/// middle was dropped.
#[derive(Debug, Clone, Default)]
pub struct Captured {
    head: Vec<u8>,
    tail: VecDeque<u8>,
    dropped: u64,
    limit: usize,
}

impl Captured {
    fn new(limit: usize) -> Captured {
        Captured { limit, ..Captured::default() }
    }

    fn push(&mut self, data: &[u8]) {
        let half = self.limit / 2;
        let room = half.saturating_sub(self.head.len());
        let (to_head, rest) = data.split_at(room.min(data.len()));
        self.head.extend_from_slice(to_head);
        self.tail.extend(rest);
        let keep = self.limit - half;
        if self.tail.len() > keep {
            let excess = self.tail.len() - keep;
            self.tail.drain(..excess);
            self.dropped += excess as u64;
        }
    }

    /// Returns the captured text with a marker where bytes were dropped.
    pub fn text(&self) -> String {
        let mut out = String::from_utf8_lossy(&self.head).into_owned();
        if self.dropped > 0 {
            out.push_str(&format!("\n[... {} bytes of output truncated ...]\n", self.dropped));
        }
        let (a, b) = self.tail.as_slices();
        out.push_str(&String::from_utf8_lossy(&[a, b].concat()));
        out
    }

    /// Returns the number of bytes dropped from the middle.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    pub fn is_empty(&self) -> bool {
        self.head.is_empty() && self.tail.is_empty()
    }
}

/// The result of one test.
#[derive(Debug, Clone)]
pub struct TestResult {
    pub binary_id: String,
    pub name: String,
    pub outcome: Outcome,
    pub exit: Option<TestExit>,
    pub usage: Usage,
    pub caps: Caps,
    pub timeout: Duration,
    pub stdout: Captured,
    pub stderr: Captured,
    pub setup_error: Option<SetupError>,
}

impl TestResult {
    /// A result for a test that was not run.
    pub fn not_run(test: &TestCase, outcome: Outcome, options: &RunOptions) -> TestResult {
        TestResult {
            binary_id: test.binary.id.clone(),
            name: test.name.clone(),
            outcome,
            exit: None,
            usage: Usage::default(),
            caps: options.caps,
            timeout: options.timeout,
            stdout: Captured::default(),
            stderr: Captured::default(),
            setup_error: None,
        }
    }
}

/// Everything a supervisor needs, shared by the worker threads.
pub struct Context<'a> {
    pub zygote: &'a Zygote,
    pub cgroups: Option<&'a RunCgroups>,
    pub options: &'a RunOptions,
    pub cancel: &'a Cancel,
    pub run_id: u32,
}

/// Builds the environment of the test process.
fn test_env(test: &TestCase, options: &RunOptions) -> Vec<(OsString, OsString)> {
    let mut env: Vec<(OsString, OsString)> = Vec::new();
    let mut set = |k: OsString, v: OsString| {
        env.retain(|(existing, _)| *existing != k);
        env.push((k, v));
    };
    for (key, value) in std::env::vars_os() {
        let Some(name) = key.to_str() else { continue };
        if PASSED_ENV.contains(&name) || name.starts_with("LC_") {
            set(key, value);
        }
    }
    set("HOME".into(), options.home.clone().into());
    set("TMPDIR".into(), "/tmp".into());
    set("CARGO_SANDBOX_TEST".into(), "1".into());
    for (k, v) in &test.binary.env {
        set(k.into(), v.clone());
    }
    for (name, value) in &options.env {
        match value {
            Some(v) => set(name.into(), v.into()),
            None => {
                if let Some(v) = std::env::var_os(name) {
                    set(name.into(), v);
                }
            }
        }
    }
    env
}

/// Runs one test in its own container.
pub fn run_test(ctx: &Context, test: &TestCase, id: u64) -> TestResult {
    let options = ctx.options;
    let mut result = TestResult::not_run(test, Outcome::SetupFailed, options);
    let started = Instant::now();

    let cgroup = match ctx.cgroups.map(|c| c.create_test(&format!("t{id}"), &options.caps)).transpose() {
        Ok(c) => c,
        Err(err) => {
            result.setup_error = Some(SetupError {
                step: "create the test cgroup".into(),
                path: String::new(),
                errno: 0,
                detail: err.to_string(),
            });
            return result;
        }
    };

    let mut args: Vec<OsString> = vec!["--exact".into(), test.name.clone().into(), "--nocapture".into()];
    if test.ignored {
        args.push("--ignored".into());
    }
    let spec = Spec {
        id,
        program: test.binary.path.clone(),
        args,
        env: test_env(test, options),
        cwd: test.binary.cwd.clone(),
        home: options.home.clone(),
        hostname: "sandbox".into(),
        network: options.network,
        tmpfs_size: options.tmpfs_size,
        leak_timeout_ms: options.leak_timeout.as_millis() as u64,
    };
    let procs = cgroup.as_ref().map(|c| c.procs_files()).unwrap_or_default();
    let (container, pipes) = match ctx.zygote.spawn(spec, procs) {
        Ok(pair) => pair,
        Err(err) => {
            result.setup_error = Some(match err {
                SpawnError::Setup(e) => e,
                SpawnError::Zygote(e) => SetupError {
                    step: "reach the zygote".into(),
                    path: String::new(),
                    errno: e.raw_os_error().unwrap_or(0),
                    detail: e.to_string(),
                },
            });
            if let Some(c) = &cgroup {
                c.remove();
            }
            return result;
        }
    };

    let mut ending = Ending::default();
    let mut stdout = Captured::new(options.max_output);
    let mut stderr = Captured::new(options.max_output);
    let mut report = Vec::new();
    let deadline = started + options.timeout;
    let mut kill_at: Option<Instant> = None;
    let mut killed_at: Option<Instant> = None;
    let mut open = [true; 3];
    let owned: [&OwnedFd; 3] = [&pipes.stdout, &pipes.stderr, &pipes.report];
    let fds: [RawFd; 3] = owned.map(|fd| fd.as_raw_fd());
    let mut buf = vec![0u8; 64 * 1024];

    while open.iter().any(|o| *o) {
        let now = Instant::now();
        if !ending.timed_out && !ending.cancelled && now >= deadline {
            ending.timed_out = true;
            container.signal(libc::SIGTERM);
            kill_at = Some(now + options.kill_grace);
        }
        if !ending.cancelled && !ending.timed_out && ctx.cancel.is_set() {
            ending.cancelled = true;
            container.signal(libc::SIGTERM);
            kill_at = Some(now + options.kill_grace);
        }
        if let Some(at) = kill_at {
            if now >= at && killed_at.is_none() {
                container.signal(libc::SIGKILL);
                if let Some(c) = &cgroup {
                    c.kill_all();
                }
                killed_at = Some(now);
            }
        }
        if killed_at.is_some_and(|at| now >= at + Duration::from_secs(5)) {
            // Everything in the container is dead, so nothing can hold the
            // pipes any more; stop reading whatever the kernel still has.
            break;
        }
        let next = [Some(deadline), kill_at].into_iter().flatten().filter(|t| *t > now).min();
        let wait_ms = next.map(|t| (t - now).as_millis().min(1000) as i32 + 1).unwrap_or(1000);

        let mut polls: Vec<libc::pollfd> = fds
            .iter()
            .zip(open)
            .map(|(fd, is_open)| libc::pollfd { fd: if is_open { *fd } else { -1 }, events: libc::POLLIN, revents: 0 })
            .collect();
        polls.push(libc::pollfd { fd: ctx.cancel.read.as_raw_fd(), events: libc::POLLIN, revents: 0 });
        // SAFETY: `polls` is a valid array of pollfd structs.
        let ready = unsafe { libc::poll(polls.as_mut_ptr(), polls.len() as libc::nfds_t, wait_ms) };
        if ready <= 0 {
            continue;
        }
        for (index, poll) in polls.iter().take(3).enumerate() {
            if poll.revents == 0 || !open[index] {
                continue;
            }
            loop {
                match nix::unistd::read(owned[index], &mut buf) {
                    Ok(0) => {
                        open[index] = false;
                        break;
                    }
                    Ok(n) => match index {
                        0 => stdout.push(&buf[..n]),
                        1 => stderr.push(&buf[..n]),
                        _ => report.extend_from_slice(&buf[..n]),
                    },
                    Err(nix::errno::Errno::EAGAIN) => break,
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(_) => {
                        open[index] = false;
                        break;
                    }
                }
            }
        }
    }

    let init_exit = container.wait(Duration::from_secs(10));
    if init_exit.is_none() {
        tracing::warn!(test = %test.full_name(), pid = container.pid(), "init was not reaped in time");
        container.signal(libc::SIGKILL);
    }
    let mut usage = Usage::combine(cgroup.as_ref().map(|c| c.usage()), init_exit.map(|e| e.rusage));
    usage.container_time = Some(started.elapsed());
    for line in report.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        match serde_json::from_slice::<InitReport>(line) {
            Ok(InitReport::Exited { exit, leaked, timings }) => {
                ending.exit = Some(exit);
                usage.leaked = Some(leaked);
                usage.wall_time = Some(Duration::from_micros(timings.test_us));
                usage.timings = Some(timings);
            }
            Ok(InitReport::Setup { error }) => ending.setup_error = Some(error),
            Err(err) => tracing::warn!(%err, "unreadable report from the container's init"),
        }
    }
    if ending.exit.is_none() && ending.setup_error.is_none() && !ending.timed_out && !ending.cancelled {
        // Init died without a report: killed from outside, or by the OOM
        // killer. Its own status is all there is.
        if let Some(e) = init_exit {
            if libc::WIFSIGNALED(e.status) {
                ending.exit = Some(TestExit::Signal(libc::WTERMSIG(e.status)));
            }
        }
    }
    if let Some(c) = &cgroup {
        c.remove();
    }

    result.outcome = judge(&ending, &usage);
    result.exit = ending.exit;
    result.usage = usage;
    result.stdout = stdout;
    result.stderr = stderr;
    result.setup_error = ending.setup_error;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capture_keeps_head_and_tail() {
        let mut c = Captured::new(10);
        c.push(b"0123456789abcdefghij");
        assert_eq!(c.dropped(), 10);
        assert_eq!(c.text(), "01234\n[... 10 bytes of output truncated ...]\nfghij");
    }

    #[test]
    fn capture_under_limit_is_whole() {
        let mut c = Captured::new(100);
        c.push(b"hello ");
        c.push(b"world");
        assert_eq!(c.text(), "hello world");
        assert_eq!(c.dropped(), 0);
    }
}
