//! Supervision of one test: starts its container, captures its output
//! without ever blocking it, enforces the timeout, and collects the usage
//! and the outcome.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::os::fd::{AsFd, OwnedFd};

use nix::poll::{PollFd, PollFlags, PollTimeout};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::budget::{BudgetMode, Judgement};
use crate::cgroup::{Caps, Controller, RunCgroups, TestCgroup};
use crate::config::Budgets;
use crate::container::{
    Container, InitReport, PendingSpawn, Pipes, SetupError, SpawnError, Spec, TestExit, Zygote,
};
use crate::outcome::{judge, Ending, Outcome, Usage};
use crate::plan::{TestBinary, TestCase};
use crate::report::file::{Baseline, Growth};

/// Host variables a test may see. Everything else (CI secrets, tokens,
/// `SSH_AUTH_SOCK`) is dropped unless `--env` passes it.
const PASSED_ENV: &[&str] = &[
    "PATH",
    "LANG",
    "LANGUAGE",
    "TERM",
    "TZ",
    "COLORTERM",
    "NO_COLOR",
    "CLICOLOR",
    "CLICOLOR_FORCE",
    "RUST_BACKTRACE",
    "RUST_LIB_BACKTRACE",
    "RUST_LOG",
    "RUST_MIN_STACK",
    "CI",
    "USER",
    "LOGNAME",
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
    /// Limits judged after the test, from the config file.
    pub budgets: Budgets,
    pub budget_mode: BudgetMode,
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
        Ok(Cancel {
            flag: AtomicBool::new(false),
            read,
            write,
        })
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
    pub fn new(limit: usize) -> Captured {
        Captured {
            limit,
            ..Captured::default()
        }
    }

    pub fn push(&mut self, data: &[u8]) {
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
            out.push_str(&format!(
                "\n[... {} bytes of output truncated ...]\n",
                self.dropped
            ));
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
    /// Whether leaked processes fail this test.
    pub fail_on_leak: bool,
    /// The budgets that applied to this test.
    pub budgets: Budgets,
    pub judgement: Judgement,
    /// Figures that grew past the baseline's threshold.
    pub growth: Vec<Growth>,
    /// The container's setup steps with their microseconds, for --timings.
    pub setup_steps: Vec<(String, u64)>,
}

impl TestResult {
    /// Returns whether this result fails the run.
    pub fn is_failure(&self) -> bool {
        self.outcome.is_failure(self.fail_on_leak)
    }

    /// Judges the usage against the budgets; in enforce mode a passing test
    /// over a budget becomes `over budget`.
    fn apply_budgets(&mut self, mode: BudgetMode) {
        self.judgement = crate::budget::judge(&self.usage, &self.budgets);
        let passed = matches!(self.outcome, Outcome::Passed | Outcome::Leaked);
        if passed && mode == BudgetMode::Enforce && !self.judgement.breaches.is_empty() {
            self.outcome = Outcome::OverBudget;
        }
    }
}

impl TestResult {
    /// Creates the result of a test that did not run.
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
            fail_on_leak: options.fail_on_leak,
            budgets: options.budgets.clone(),
            judgement: Judgement::default(),
            growth: Vec::new(),
            setup_steps: Vec::new(),
        }
    }
}

/// Everything a supervisor needs, shared by the worker threads.
pub struct Context<'a> {
    pub zygote: &'a Zygote,
    pub cgroups: Option<&'a RunCgroups>,
    pub cancel: &'a Cancel,
    /// An earlier report to compare usage with, and the growth share that
    /// counts (0.2 is 20%).
    pub baseline: Option<(&'a Baseline, f64)>,
}

/// Builds the environment of the test process.
fn test_env(binary: &TestBinary, options: &RunOptions) -> Vec<(OsString, OsString)> {
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
    for (k, v) in &binary.env {
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

/// The time one container spent in each phase, from the runner's side
/// and init's.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Phases {
    /// Creating the cgroup and writing its caps.
    #[serde(with = "crate::outcome::opt_secs")]
    pub cgroup: Option<Duration>,
    /// From the spawn request (clone, uid map, joining the cgroup, init's
    /// mounts) until the worker takes the ready container. The request
    /// goes out while an earlier test runs, so this includes waiting.
    #[serde(with = "crate::outcome::opt_secs")]
    pub spawn: Option<Duration>,
    /// Init's mounts, hostname and loopback, up to the test's fork.
    #[serde(with = "crate::outcome::opt_secs")]
    pub mounts: Option<Duration>,
    /// The test process, from fork to exit.
    #[serde(with = "crate::outcome::opt_secs")]
    pub test: Option<Duration>,
    /// Waiting for processes the test left behind.
    #[serde(with = "crate::outcome::opt_secs")]
    pub leak_wait: Option<Duration>,
    /// From the end of the container's pipes to its result: reading the
    /// cgroup's usage. Reaping and cgroup removal happen later, on the
    /// reaper thread.
    #[serde(with = "crate::outcome::opt_secs")]
    pub teardown: Option<Duration>,
}

/// The output, usage and ending of one container run.
pub struct ContainerRun {
    pub ending: Ending,
    usage: Usage,
    stdout: Captured,
    stderr: Captured,
    setup_steps: Vec<(String, u64)>,
}

impl ContainerRun {
    /// Creates the run of a container that could not be built.
    pub fn failed_setup(error: SetupError) -> ContainerRun {
        ContainerRun {
            ending: Ending {
                setup_error: Some(error),
                ..Ending::default()
            },
            usage: Usage::default(),
            stdout: Captured::default(),
            stderr: Captured::default(),
            setup_steps: Vec::new(),
        }
    }
}

/// Builds the arguments that run a job's tests: one test with `--exact
/// NAME --nocapture`, or a binary's selected tests with libtest's own
/// capture.
fn job_args(tests: &[TestCase]) -> Vec<OsString> {
    if let [test] = tests {
        if test.whole_binary {
            return Vec::new();
        }
        let mut args: Vec<OsString> = vec![
            "--exact".into(),
            test.name.clone().into(),
            "--nocapture".into(),
        ];
        if test.ignored {
            args.push("--ignored".into());
        }
        return args;
    }
    let mut args: Vec<OsString> = vec!["--exact".into()];
    args.extend(tests.iter().map(|t| OsString::from(&t.name)));
    if tests.iter().all(|t| t.ignored) {
        args.push("--ignored".into());
    } else if tests.iter().any(|t| t.ignored) {
        args.push("--include-ignored".into());
    }
    args
}

/// Turns a container's run into the results of the job's tests.
pub fn job_results(tests: &[TestCase], run: ContainerRun, options: &RunOptions) -> Vec<TestResult> {
    if let [test] = tests {
        let mut result = TestResult::not_run(test, Outcome::SetupFailed, options);
        result.outcome = judge(&run.ending, &run.usage);
        result.exit = run.ending.exit;
        result.usage = run.usage;
        result.stdout = run.stdout;
        result.stderr = run.stderr;
        result.setup_steps = run.setup_steps;
        result.setup_error = run.ending.setup_error;
        result.apply_budgets(options.budget_mode);
        return vec![result];
    }
    binary_results(tests, run, options)
}

/// Reads each test's verdict from libtest's output of a whole binary. Usage
/// figures belong to the whole binary, so they are reported on the
/// binary's first test only.
fn binary_results(tests: &[TestCase], run: ContainerRun, options: &RunOptions) -> Vec<TestResult> {
    let mut verdicts = crate::libtest::parse_output(&run.stdout.text());
    let binary_outcome = judge(&run.ending, &run.usage);
    // The verdict lines are text a test can print itself. A binary that
    // failed must show a failing test. When its lines name none, no line
    // is trusted, so every test of the binary counts as failed.
    let exited_clean = run.ending.exit == Some(TestExit::Code(0));
    let names_a_failure = verdicts
        .results
        .values()
        .any(|v| *v == crate::libtest::Verdict::Failed);
    if !exited_clean && !names_a_failure {
        verdicts.results.clear();
    }
    let mut results = Vec::with_capacity(tests.len());
    for (index, test) in tests.iter().enumerate() {
        let mut result = TestResult::not_run(test, binary_outcome, options);
        match verdicts.results.get(test.name.as_str()) {
            Some(crate::libtest::Verdict::Ok) => result.outcome = Outcome::Passed,
            Some(crate::libtest::Verdict::Failed) => result.outcome = Outcome::Failed,
            Some(crate::libtest::Verdict::Ignored) => result.outcome = Outcome::Ignored,
            // No verdict line: the binary died before this test finished,
            // or its output did not match its exit status, so the
            // container's outcome is this test's.
            None if matches!(binary_outcome, Outcome::Passed | Outcome::Leaked) => {
                result.outcome = Outcome::Failed
            }
            None => {}
        }
        if let Some(output) = verdicts.output.get(test.name.as_str()) {
            result.stdout = Captured::new(options.max_output);
            result.stdout.push(output.as_bytes());
        }
        if index == 0 {
            result.usage = run.usage;
            if result.outcome == Outcome::Passed && run.usage.leaked.unwrap_or(0) > 0 {
                result.outcome = Outcome::Leaked;
            }
            result.exit = run.ending.exit;
            result.setup_error = run.ending.setup_error.clone();
            if result.outcome.is_failure(options.fail_on_leak) && verdicts.output.is_empty() {
                result.stdout = run.stdout.clone();
                result.stderr = run.stderr.clone();
            }
        }
        result.apply_budgets(options.budget_mode);
        results.push(result);
    }
    results
}

fn create_cgroup(
    ctx: &Context,
    options: &RunOptions,
    id: u64,
) -> Result<Option<TestCgroup>, SetupError> {
    ctx.cgroups
        .map(|c| c.create_test(&format!("t{id}"), &options.caps))
        .transpose()
        .map_err(|err| SetupError {
            step: "create the test cgroup".into(),
            path: String::new(),
            errno: 0,
            detail: err.to_string(),
        })
}

/// A container built and waiting for its test to start.
pub struct Prepared<'a> {
    container: Container<'a>,
    pipes: Pipes,
    cgroup: Option<TestCgroup>,
    phases: Phases,
    started: Instant,
}

/// The cleanup of a finished container that can wait: reaping its init
/// and removing its cgroup. A reaper thread does it off the critical path.
pub struct Teardown<'a> {
    container: Container<'a>,
    cgroup: Option<TestCgroup>,
}

impl Teardown<'_> {
    /// Waits for the container's init to be reaped, then removes the cgroup.
    pub fn run(self) {
        if self.container.wait(Duration::from_secs(10)).is_none() {
            tracing::warn!(pid = self.container.pid(), "init was not reaped in time");
            self.container.signal(libc::SIGKILL);
        }
        if let Some(c) = &self.cgroup {
            c.remove();
        }
    }
}

/// A container the zygote is still building, with its cgroup.
pub struct Pending<'a> {
    spawn: PendingSpawn<'a>,
    cgroup: Option<TestCgroup>,
    phases: Phases,
    started: Instant,
}

/// Asks for the container of a job: its cgroup, its namespaces and its
/// root filesystem. Returns at once; `Pending::ready` waits for it. Init
/// then waits for `Prepared::start` to start the test.
pub fn prepare<'a>(
    ctx: &Context<'a>,
    tests: &[TestCase],
    options: &RunOptions,
    id: u64,
) -> Result<Pending<'a>, SetupError> {
    let started = Instant::now();
    let binary = &tests[0].binary;
    let mut phases = Phases::default();
    let cgroup = create_cgroup(ctx, options, id)?;
    phases.cgroup = Some(started.elapsed());

    let spec = Spec {
        id,
        program: binary.path.clone(),
        args: job_args(tests),
        env: test_env(binary, options),
        cwd: binary.cwd.clone(),
        home: options.home.clone(),
        hostname: "sandbox".into(),
        network: options.network,
        tmpfs_size: options.tmpfs_size,
        leak_timeout_ms: options.leak_timeout.as_millis() as u64,
        gated: true,
        nproc_limit: nproc_limit(ctx, options),
    };
    let procs = cgroup.as_ref().map(|c| c.procs_files()).unwrap_or_default();
    match ctx.zygote.request_spawn(spec, procs) {
        Ok(spawn) => Ok(Pending {
            spawn,
            cgroup,
            phases,
            started,
        }),
        Err(err) => {
            if let Some(c) = &cgroup {
                c.remove();
            }
            Err(spawn_error(err))
        }
    }
}

/// Returns the RLIMIT_NPROC that replaces the pids cap when no pids
/// cgroup is usable. The kernel does not apply it to the host's root, so a
/// root run without cgroups gets none.
pub fn nproc_limit(ctx: &Context, options: &RunOptions) -> Option<u64> {
    let has_pids_cgroup = ctx.cgroups.is_some_and(|c| c.has(Controller::Pids));
    if has_pids_cgroup || nix::unistd::geteuid().is_root() {
        None
    } else {
        options.caps.pids
    }
}

fn spawn_error(err: SpawnError) -> SetupError {
    match err {
        SpawnError::Setup(e) => e,
        SpawnError::Zygote(e) => SetupError {
            step: "reach the zygote".into(),
            path: String::new(),
            errno: e.raw_os_error().unwrap_or(0),
            detail: e.to_string(),
        },
    }
}

impl<'a> Pending<'a> {
    /// Waits until the zygote has the container running at its start gate.
    pub fn ready(self) -> Result<Prepared<'a>, SetupError> {
        let Pending {
            spawn,
            cgroup,
            mut phases,
            started,
        } = self;
        let asked = started + phases.cgroup.unwrap_or_default();
        match spawn.wait() {
            Ok((container, pipes)) => {
                phases.spawn = Some(asked.elapsed());
                Ok(Prepared {
                    container,
                    pipes,
                    cgroup,
                    phases,
                    started,
                })
            }
            Err(err) => {
                if let Some(c) = &cgroup {
                    c.remove();
                }
                Err(spawn_error(err))
            }
        }
    }
}

impl<'a> Prepared<'a> {
    /// Starts the test. Call `finish` next to supervise it.
    pub fn start(mut self) -> Running<'a> {
        if let Some(start) = self.pipes.start.take() {
            let _ = nix::unistd::write(&start, b"1");
        }
        Running {
            prepared: self,
            started: Instant::now(),
        }
    }

    /// Gives up the container without running its test: init reads end of
    /// file on its start pipe and exits.
    pub fn discard(mut self) -> Teardown<'a> {
        self.pipes.start.take();
        Teardown {
            container: self.container,
            cgroup: self.cgroup,
        }
    }
}

/// A container whose test is running.
pub struct Running<'a> {
    prepared: Prepared<'a>,
    started: Instant,
}

impl<'a> Running<'a> {
    /// Supervises the test to its end and collects output and usage. The
    /// cleanup that can wait comes back as a `Teardown`.
    pub fn finish(
        self,
        ctx: &Context,
        options: &RunOptions,
    ) -> (ContainerRun, Option<Teardown<'a>>) {
        let Running { prepared, started } = self;
        let Prepared {
            container,
            pipes,
            cgroup,
            mut phases,
            started: prepared_at,
        } = prepared;
        let mut watch = Watch::new(started + options.timeout, options.kill_grace);
        let mut stdout = Captured::new(options.max_output);
        let mut stderr = Captured::new(options.max_output);
        let mut report = Vec::new();
        let streams: [(&OwnedFd, &mut dyn FnMut(&[u8])); 3] = [
            (&pipes.stdout, &mut |d: &[u8]| stdout.push(d)),
            (&pipes.stderr, &mut |d: &[u8]| stderr.push(d)),
            (&pipes.report, &mut |d: &[u8]| report.extend_from_slice(d)),
        ];
        pump(streams, &mut watch, ctx, &container, cgroup.as_ref());
        let ended = Instant::now();

        let mut ending = Ending {
            timed_out: watch.timed_out,
            cancelled: watch.cancelled,
            ..Ending::default()
        };
        let mut usage = Usage::default();
        let mut setup_steps = Vec::new();
        for line in report.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            match serde_json::from_slice::<InitReport>(line) {
                Ok(InitReport::Exited {
                    exit,
                    leaked,
                    timings,
                }) => {
                    ending.exit = Some(exit);
                    usage.leaked = Some(leaked);
                    usage.wall_time = Some(Duration::from_micros(timings.test_us));
                    phases.mounts = Some(Duration::from_micros(timings.setup_us));
                    phases.test = Some(Duration::from_micros(timings.test_us));
                    phases.leak_wait = Some(Duration::from_micros(timings.leak_wait_us));
                    setup_steps = timings.steps;
                }
                Ok(InitReport::Setup { error }) => ending.setup_error = Some(error),
                Err(err) => tracing::warn!(%err, "unreadable report from the container's init"),
            }
        }
        // A test whose own run (fork to exit, as init measured it) fit in
        // the timeout ended by itself, even if the runner's clock, which
        // also counts the start, passed the deadline first.
        if ending.timed_out && usage.wall_time.is_some_and(|w| w < options.timeout) {
            if let Some(TestExit::Code(_)) = ending.exit {
                ending.timed_out = false;
            }
        }
        // The pipes reach end of file once init has exited and with it every
        // process of the container, so the cgroup's figures are final. What
        // only wait4 gives (init's own status, rusage) is needed when init
        // sent no report or when no cgroup measured CPU time.
        let need_wait4 =
            ending.exit.is_none() || cgroup.as_ref().is_none_or(|c| !c.has(Controller::Cpuacct));
        let cgroup_usage = cgroup.as_ref().map(|c| c.usage());
        let mut teardown = Some(Teardown { container, cgroup });
        let mut init_exit = None;
        if need_wait4 {
            let t = teardown.take().expect("set above");
            init_exit = t.container.wait(Duration::from_secs(10));
            if init_exit.is_none() {
                t.container.signal(libc::SIGKILL);
            }
            if let Some(c) = &t.cgroup {
                c.remove();
            }
        }
        let combined = Usage::combine(cgroup_usage, init_exit.map(|e| e.rusage));
        usage = Usage {
            leaked: usage.leaked,
            wall_time: usage.wall_time,
            ..combined
        };
        if ending.exit.is_none() && ending.setup_error.is_none() {
            // Init died without a report: killed by the timeout, from outside,
            // or by the OOM killer. Its own status is all there is.
            if let Some(e) = init_exit {
                if libc::WIFSIGNALED(e.status) {
                    ending.exit = Some(TestExit::Signal(libc::WTERMSIG(e.status)));
                }
            }
        }
        phases.teardown = Some(ended.elapsed());
        usage.container_time = Some(prepared_at.elapsed());
        usage.phases = Some(phases);
        (
            ContainerRun {
                ending,
                usage,
                stdout,
                stderr,
                setup_steps,
            },
            teardown,
        )
    }
}

/// Runs a binary with `args` in a container of its own, without a cgroup,
/// and returns its output: how the runner lists tests, so that no code of
/// a test binary runs on the host. Gives up after `timeout`.
pub fn capture(
    zygote: &Zygote,
    cgroups: Option<&RunCgroups>,
    binary: &TestBinary,
    args: &[&str],
    options: &RunOptions,
    id: u64,
    cancel: &Cancel,
) -> Result<crate::plan::ListOutput, String> {
    // A binary's static constructors run at listing too: the same caps
    // as its tests apply.
    let cgroup = match cgroups
        .map(|c| c.create_test(&format!("list{id}"), &options.caps))
        .transpose()
    {
        Ok(c) => c,
        Err(err) => return Err(err.to_string()),
    };
    let result = capture_in(zygote, cgroup.as_ref(), binary, args, options, id, cancel);
    if let Some(c) = &cgroup {
        c.remove();
    }
    result
}

fn capture_in(
    zygote: &Zygote,
    cgroup: Option<&TestCgroup>,
    binary: &TestBinary,
    args: &[&str],
    options: &RunOptions,
    id: u64,
    cancel: &Cancel,
) -> Result<crate::plan::ListOutput, String> {
    let timeout = options.timeout;
    let spec = Spec {
        id,
        program: binary.path.clone(),
        args: args.iter().map(OsString::from).collect(),
        env: test_env(binary, options),
        cwd: binary.cwd.clone(),
        home: options.home.clone(),
        hostname: "sandbox".into(),
        network: false,
        tmpfs_size: options.tmpfs_size,
        leak_timeout_ms: 0,
        gated: false,
        nproc_limit: if cgroup.is_some_and(|c| c.has(Controller::Pids))
            || nix::unistd::geteuid().is_root()
        {
            None
        } else {
            options.caps.pids
        },
    };
    let procs = cgroup.map(|c| c.procs_files()).unwrap_or_default();
    let (container, pipes) = zygote
        .spawn(spec, procs)
        .map_err(|e| spawn_error(e).to_string())?;
    let deadline = Instant::now() + timeout;
    let mut outputs = [Vec::new(), Vec::new(), Vec::new()];
    let fds = [&pipes.stdout, &pipes.stderr, &pipes.report];
    let mut open = [true; 3];
    let mut buf = vec![0u8; 64 * 1024];
    while open.iter().any(|o| *o) {
        let now = Instant::now();
        if now >= deadline || cancel.is_set() {
            container.signal(libc::SIGKILL);
            let _ = container.wait(Duration::from_secs(5));
            if cancel.is_set() {
                return Err("the run was interrupted".into());
            }
            return Err(format!(
                "listing did not finish within {}",
                humantime::format_duration(timeout)
            ));
        }
        let mut polls: Vec<PollFd> = Vec::new();
        let mut indices = Vec::new();
        for (index, fd) in fds.iter().enumerate().filter(|(i, _)| open[*i]) {
            indices.push(index);
            polls.push(PollFd::new(fd.as_fd(), PollFlags::POLLIN));
        }
        polls.push(PollFd::new(cancel.read.as_fd(), PollFlags::POLLIN));
        let wait = PollTimeout::try_from(deadline - now).unwrap_or(PollTimeout::MAX);
        if nix::poll::poll(&mut polls, wait).unwrap_or(0) == 0 {
            continue;
        }
        let ready: Vec<usize> = indices
            .iter()
            .zip(&polls)
            .filter(|(_, p)| p.revents().is_some_and(|r| !r.is_empty()))
            .map(|(i, _)| *i)
            .collect();
        for index in ready {
            loop {
                match nix::unistd::read(fds[index], &mut buf) {
                    Ok(0) => {
                        open[index] = false;
                        break;
                    }
                    Ok(n) => outputs[index].extend_from_slice(&buf[..n]),
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
    let _ = container.wait(Duration::from_secs(10));
    let mut code = None;
    for line in outputs[2].split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        match serde_json::from_slice::<InitReport>(line) {
            Ok(InitReport::Exited {
                exit: TestExit::Code(c),
                ..
            }) => code = Some(c),
            Ok(InitReport::Exited { .. }) => {}
            Ok(InitReport::Setup { error }) => return Err(error.to_string()),
            Err(err) => {
                return Err(format!(
                    "unreadable report from the container's init: {err}"
                ))
            }
        }
    }
    Ok(crate::plan::ListOutput {
        code,
        stdout: String::from_utf8_lossy(&outputs[0]).into_owned(),
        stderr: String::from_utf8_lossy(&outputs[1]).into_owned(),
    })
}

/// Starts one container that runs `true`, to find a setup failure before
/// any test runs. Returns `Ok` when the host has no `true` to run.
pub fn preflight(zygote: &Zygote, home: &Path, tmpfs_size: u64) -> Result<(), SetupError> {
    let Some(program) = ["/usr/bin/true", "/bin/true"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
    else {
        return Ok(());
    };
    let spec = Spec {
        id: u64::MAX,
        program,
        args: Vec::new(),
        env: Vec::new(),
        cwd: "/".into(),
        home: home.to_path_buf(),
        hostname: "sandbox".into(),
        network: false,
        tmpfs_size,
        leak_timeout_ms: 0,
        gated: false,
        nproc_limit: None,
    };
    let (container, pipes) = zygote.spawn(spec, Vec::new()).map_err(spawn_error)?;
    drop(pipes.stdout);
    drop(pipes.stderr);
    let _ = nix::fcntl::fcntl(
        &pipes.report,
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::empty()),
    );
    let mut report = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = nix::unistd::read(&pipes.report, &mut buf) {
        if n == 0 {
            break;
        }
        report.extend_from_slice(&buf[..n]);
    }
    let _ = container.wait(Duration::from_secs(10));
    for line in report.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        if let Ok(InitReport::Setup { error }) = serde_json::from_slice::<InitReport>(line) {
            return Err(error);
        }
    }
    Ok(())
}

/// The timeout and cancellation state of one container.
struct Watch {
    deadline: Instant,
    grace: Duration,
    kill_at: Option<Instant>,
    killed_at: Option<Instant>,
    timed_out: bool,
    cancelled: bool,
}

impl Watch {
    fn new(deadline: Instant, grace: Duration) -> Watch {
        Watch {
            deadline,
            grace,
            kill_at: None,
            killed_at: None,
            timed_out: false,
            cancelled: false,
        }
    }

    /// Sends SIGTERM at the deadline or on cancellation, SIGKILL to the
    /// whole container after the grace period. Returns false once reading
    /// should stop.
    fn tick(&mut self, ctx: &Context, container: &Container, cgroup: Option<&TestCgroup>) -> bool {
        let now = Instant::now();
        let stopping = self.timed_out || self.cancelled;
        if !stopping && now >= self.deadline {
            self.timed_out = true;
        } else if !stopping && ctx.cancel.is_set() {
            self.cancelled = true;
        }
        if !stopping && (self.timed_out || self.cancelled) {
            container.signal(libc::SIGTERM);
            self.kill_at = Some(now + self.grace);
        }
        if self.kill_at.is_some_and(|at| now >= at) && self.killed_at.is_none() {
            container.signal(libc::SIGKILL);
            if let Some(c) = cgroup {
                c.kill_all();
            }
            self.killed_at = Some(now);
        }
        // Everything in the container is dead five seconds after SIGKILL,
        // so nothing can hold the pipes any more.
        !self
            .killed_at
            .is_some_and(|at| now >= at + Duration::from_secs(5))
    }

    /// Returns the poll timeout until the next deadline, in milliseconds.
    fn poll_ms(&self) -> i32 {
        let now = Instant::now();
        let next = [Some(self.deadline), self.kill_at]
            .into_iter()
            .flatten()
            .filter(|t| *t > now)
            .min();
        next.map(|t| (t - now).as_millis().min(1000) as i32 + 1)
            .unwrap_or(1000)
    }
}

/// Reads the container's pipes until every one reaches end of file, which
/// happens when init exits: the kernel then kills everything left in the
/// PID namespace, so a leftover grandchild cannot hold a pipe open.
fn pump(
    mut streams: [(&OwnedFd, &mut dyn FnMut(&[u8])); 3],
    watch: &mut Watch,
    ctx: &Context,
    container: &Container,
    cgroup: Option<&TestCgroup>,
) {
    let mut open = [true; 3];
    let mut buf = vec![0u8; 64 * 1024];
    while open.iter().any(|o| *o) {
        if !watch.tick(ctx, container, cgroup) {
            break;
        }
        let mut ready_streams = Vec::new();
        {
            let mut indices = Vec::new();
            let mut polls = Vec::new();
            for (index, (fd, _)) in streams.iter().enumerate() {
                if open[index] {
                    indices.push(index);
                    polls.push(PollFd::new(fd.as_fd(), PollFlags::POLLIN));
                }
            }
            polls.push(PollFd::new(ctx.cancel.read.as_fd(), PollFlags::POLLIN));
            let timeout = PollTimeout::try_from(watch.poll_ms()).unwrap_or(PollTimeout::MAX);
            match nix::poll::poll(&mut polls, timeout) {
                Ok(n) if n > 0 => {}
                _ => continue,
            }
            for (k, index) in indices.into_iter().enumerate() {
                if polls[k].revents().is_some_and(|r| !r.is_empty()) {
                    ready_streams.push(index);
                }
            }
        }
        for index in ready_streams {
            let (fd, sink) = &mut streams[index];
            loop {
                match nix::unistd::read(&**fd, &mut buf) {
                    Ok(0) => {
                        open[index] = false;
                        break;
                    }
                    Ok(n) => sink(&buf[..n]),
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capture_keeps_head_and_tail() {
        let mut c = Captured::new(10);
        c.push(b"0123456789abcdefghij");
        assert_eq!(c.dropped(), 10);
        assert_eq!(
            c.text(),
            "01234\n[... 10 bytes of output truncated ...]\nfghij"
        );
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
