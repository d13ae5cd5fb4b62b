//! The command line: parses `cargo sandbox-test` arguments and runs the
//! pipeline (plan, contain, supervise, report), returning the exit code.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Parser;

use crate::cgroup::{Caps, Controller, Layout, RunCgroups};
use crate::config::{parse_duration, parse_size, Config, TestIdentity};
use crate::container::{self, RootfsPlan, ZygoteHandle};
use crate::plan::{self, BuildArgs, Filter, TestCase, Toolchain};
use crate::report::file::Baseline;
use crate::report::{MessageFormat, Reporter, Summary};
use crate::supervise::{Cancel, Context, RunOptions, TestResult};

/// Exit codes, one per kind of failure.
pub mod exit_code {
    /// Every test passed (or there were none to run).
    pub const SUCCESS: i32 = 0;
    /// An error of the runner itself.
    pub const INTERNAL: i32 = 1;
    /// Invalid command-line arguments or configuration.
    pub const USAGE: i32 = 2;
    /// One or more tests failed.
    pub const TEST_FAILED: i32 = 100;
    /// `cargo test --no-run` failed.
    pub const BUILD_FAILED: i32 = 101;
    /// The sandbox could not be set up (namespaces, mounts, cgroups).
    pub const SETUP_FAILED: i32 = 102;
    /// A test binary could not list its tests.
    pub const LIST_FAILED: i32 = 104;
    /// No test matched the filters (with `--no-tests fail`, the default).
    pub const NO_TESTS: i32 = 4;
    /// The run was interrupted by SIGINT or SIGTERM.
    pub const INTERRUPTED: i32 = 130;
}

fn size_arg(text: &str) -> Result<u64, String> {
    parse_size(text)
}

/// Parses a memory cap, rejecting values too small to start any test,
/// which are nearly always a missing unit ("512" for "512MiB").
fn memory_arg(text: &str) -> Result<u64, String> {
    let bytes = parse_size(text)?;
    if bytes < 4 << 20 {
        return Err(format!(
            "memory cap {text:?} is {bytes} bytes, too small to run a test; give a unit, such as \"{text}MiB\""
        ));
    }
    Ok(bytes)
}

fn duration_arg(text: &str) -> Result<Duration, String> {
    parse_duration(text)
}

/// Parses a timeout, which must be longer than zero.
fn timeout_arg(text: &str) -> Result<Duration, String> {
    let duration = parse_duration(text)?;
    if duration.is_zero() {
        return Err(format!(
            "invalid timeout {text:?}: it must be longer than zero, such as \"30s\""
        ));
    }
    Ok(duration)
}

/// Parses a pids cap. Init, the test and libtest's thread need a few
/// tasks before the test does anything.
fn pids_arg(text: &str) -> Result<u64, String> {
    match text.parse::<u64>() {
        Ok(n) if n >= 8 => Ok(n),
        _ => Err(format!("invalid pids cap {text:?}: expected a whole number of 8 or more (init, the test and its threads need a few)")),
    }
}

fn jobs_arg(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!(
            "invalid job count {text:?}: expected a whole number of 1 or more"
        )),
    }
}

fn cpus_arg(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(v) if v > 0.0 && v.is_finite() => Ok(v),
        _ => Err(format!(
            "invalid CPU count {text:?}: expected a positive number such as 1 or 1.5"
        )),
    }
}

/// The maximum bytes `--env` may add, because each container's request
/// to the zygote travels as one socket message of at most 256 KiB.
const MAX_ENV_BYTES: usize = 128 << 10;

fn env_arg(text: &str) -> Result<(String, Option<String>), String> {
    if text.len() > MAX_ENV_BYTES {
        return Err(format!(
            "the variable is {} bytes; `--env` takes at most {MAX_ENV_BYTES} bytes in all, so pass large data in a file",
            text.len()
        ));
    }
    let (name, value) = match text.split_once('=') {
        Some((n, v)) => (n, Some(v.to_string())),
        None => (text, None),
    };
    if name.is_empty() || name.contains('\0') {
        return Err(format!(
            "invalid variable {text:?}: expected NAME or NAME=VALUE"
        ));
    }
    Ok((name.to_string(), value))
}

/// Runs every test of a Rust workspace in its own throwaway Linux container.
#[derive(Debug, Parser)]
#[command(
    name = "cargo sandbox-test",
    bin_name = "cargo sandbox-test",
    version,
    about,
    after_help = EXIT_CODES_HELP,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Commands>,

    #[command(flatten)]
    pub build: BuildArgs,

    /// Run tests whose name contains one of these strings
    #[arg(value_name = "FILTERS")]
    pub filters: Vec<String>,
    /// Match filters and --skip against whole test names
    #[arg(long, help_heading = "Test selection")]
    pub exact: bool,
    /// Skip tests whose name contains this string (repeatable)
    #[arg(long, value_name = "PATTERN", help_heading = "Test selection")]
    pub skip: Vec<String>,
    /// Run only ignored tests
    #[arg(
        long,
        conflicts_with = "include_ignored",
        help_heading = "Test selection"
    )]
    pub ignored: bool,
    /// Run ignored tests too
    #[arg(long, help_heading = "Test selection")]
    pub include_ignored: bool,
    /// Print the tests that would run, then exit
    #[arg(long, help_heading = "Test selection")]
    pub list: bool,
    /// Action when the filters select no test
    #[arg(
        long,
        value_enum,
        value_name = "ACTION",
        default_value = "fail",
        help_heading = "Test selection"
    )]
    pub no_tests: NoTests,

    /// Tests (or binaries, with --per-binary) run at once [default: CPUs this process may use]
    #[arg(short = 'j', long, value_name = "N", value_parser = jobs_arg, help_heading = "Running")]
    pub jobs: Option<usize>,
    /// Run each test binary in one container instead of each test
    #[arg(long, help_heading = "Running")]
    pub per_binary: bool,
    /// Profile of sandbox-test.toml to use
    #[arg(
        long,
        value_name = "NAME",
        default_value = "default",
        help_heading = "Running"
    )]
    pub config_profile: String,

    /// Memory cap per test, swap included [default: 2GiB]
    #[arg(long, value_name = "SIZE", value_parser = memory_arg, help_heading = "Caps")]
    pub memory: Option<u64>,
    /// CPU quota per test, in CPUs [default: no quota]
    #[arg(long, value_name = "CPUS", value_parser = cpus_arg, help_heading = "Caps")]
    pub cpus: Option<f64>,
    /// Maximum tasks (processes and threads) per test [default: 1024]
    #[arg(long, value_name = "N", value_parser = pids_arg, help_heading = "Caps")]
    pub pids: Option<u64>,
    /// Wall-clock timeout per test [default: 5m]
    #[arg(long, value_name = "DURATION", value_parser = timeout_arg, help_heading = "Caps")]
    pub timeout: Option<Duration>,
    /// Time between SIGTERM and SIGKILL when a test is stopped
    #[arg(long, value_name = "DURATION", value_parser = duration_arg, default_value = "2s", help_heading = "Caps")]
    pub kill_grace: Duration,
    /// How long to wait for processes a test leaves running [default: 100ms]
    #[arg(long, value_name = "DURATION", value_parser = duration_arg, help_heading = "Caps")]
    pub leak_timeout: Option<Duration>,
    /// Fail tests that leave processes running
    #[arg(long, help_heading = "Caps")]
    pub fail_on_leak: bool,
    /// Size cap of the tmpfs holding each container's writes
    #[arg(long, value_name = "SIZE", value_parser = size_arg, default_value = "1GiB", help_heading = "Caps")]
    pub tmpfs_size: u64,
    /// Bytes of each output stream kept per test; the middle of longer output is dropped
    #[arg(long, value_name = "SIZE", value_parser = size_arg, default_value = "1MiB", help_heading = "Caps")]
    pub max_output: u64,

    /// Give tests the host's network instead of a private loopback
    #[arg(long, help_heading = "Sandbox")]
    pub network: bool,
    /// Set NAME=VALUE, or pass NAME from the host, into tests (repeatable)
    #[arg(long = "env", value_name = "NAME[=VALUE]", value_parser = env_arg, help_heading = "Sandbox")]
    pub env: Vec<(String, Option<String>)>,
    /// Run without cgroups: no memory, CPU or pids caps; usage from wait4
    #[arg(long, help_heading = "Sandbox")]
    pub no_cgroups: bool,
    /// Fail instead of running without the memory, pids and cpuacct cgroups
    #[arg(long, conflicts_with = "no_cgroups", help_heading = "Sandbox")]
    pub require_cgroups: bool,
    /// Use read-only binds where copy-on-write overlays would go
    #[arg(long, help_heading = "Sandbox")]
    pub no_overlay: bool,

    /// Output format of the run
    #[arg(long, value_enum, default_value = "human", help_heading = "Reporting")]
    pub message_format: MessageFormat,
    /// Whether a budget breach fails the test (enforce) or is only reported (warn)
    #[arg(
        long,
        value_enum,
        value_name = "MODE",
        default_value = "enforce",
        help_heading = "Reporting"
    )]
    pub budgets: crate::budget::BudgetMode,
    /// Write a JUnit XML report to PATH
    #[arg(long, value_name = "PATH", help_heading = "Reporting")]
    pub junit: Option<PathBuf>,
    /// Write a JSON run report to PATH (schema cargo-sandbox-test/report/v1)
    #[arg(long, value_name = "PATH", help_heading = "Reporting")]
    pub report: Option<PathBuf>,
    /// Compare usage with an earlier JSON run report and flag growth
    #[arg(long, value_name = "PATH", help_heading = "Reporting")]
    pub baseline: Option<PathBuf>,
    /// Growth over the baseline that counts, as a share ("20%" or 0.2)
    #[arg(long, value_name = "SHARE", value_parser = crate::report::file::parse_share, default_value = "20%", help_heading = "Reporting")]
    pub baseline_threshold: f64,
    /// Fail the run when a test grew past the baseline threshold
    #[arg(long, requires = "baseline", help_heading = "Reporting")]
    pub fail_on_growth: bool,
    /// Print where each container's time went, per phase, after the run
    #[arg(long, help_heading = "Reporting")]
    pub timings: bool,
    /// Print diagnostics (repeat for more)
    #[arg(short, long, action = clap::ArgAction::Count, help_heading = "Reporting")]
    pub verbose: u8,

    /// libtest arguments: filters, --exact, --skip PATTERN, --ignored, --include-ignored
    #[arg(last = true, value_name = "TEST-ARGS")]
    pub test_args: Vec<String>,
}

/// The action when the filters select no test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum NoTests {
    /// Exit with code 4
    Fail,
    /// Print a warning and exit 0
    Warn,
    /// Exit 0
    Pass,
}

/// Subcommands besides running tests.
#[derive(Debug, clap::Subcommand)]
pub enum Commands {
    /// Check every capability the runner uses and print how to fix what is missing
    Doctor(crate::doctor::DoctorArgs),
    /// Work with budgets
    #[command(subcommand)]
    Budgets(BudgetsCommand),
}

/// `cargo sandbox-test budgets ...`
#[derive(Debug, clap::Subcommand)]
pub enum BudgetsCommand {
    /// Print sandbox-test.toml overrides whose budgets are a report's usage plus headroom
    Suggest(SuggestArgs),
}

/// Options of `budgets suggest`.
#[derive(Debug, clap::Args)]
pub struct SuggestArgs {
    /// A JSON run report written with --report
    #[arg(long, value_name = "PATH")]
    pub from: PathBuf,
    /// Headroom over the recorded usage ("25%" or 0.25)
    #[arg(long, value_name = "SHARE", value_parser = crate::report::file::parse_share, default_value = "25%")]
    pub headroom: f64,
    /// The profile the overrides go into
    #[arg(long, value_name = "NAME", default_value = "default")]
    pub profile: String,
}

const EXIT_CODES_HELP: &str = "\
Exit codes:
  0    every test passed
  1    internal error of the runner
  2    invalid arguments or configuration
  100  one or more tests failed
  101  the build failed
  102  the sandbox could not be set up
  4    no test matched the filters (see --no-tests)
  104  a test binary could not list its tests
  130  interrupted by SIGINT or SIGTERM";

impl Cli {
    /// Builds the libtest filter from the options and the arguments after `--`.
    fn filter(&self) -> Result<Filter, String> {
        let mut filter = Filter {
            patterns: self.filters.clone(),
            skip: self.skip.clone(),
            exact: self.exact,
            ignored: self.ignored,
            include_ignored: self.include_ignored,
        };
        let mut args = self.test_args.iter();
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--exact" => filter.exact = true,
                "--ignored" => filter.ignored = true,
                "--include-ignored" => filter.include_ignored = true,
                "--nocapture" | "--no-capture" | "--show-output" => {}
                "--skip" => match args.next() {
                    Some(p) => filter.skip.push(p.clone()),
                    None => return Err("`--skip` after `--` needs a pattern".into()),
                },
                other if other.starts_with("--skip=") => {
                    filter.skip.push(other["--skip=".len()..].into())
                }
                other if other.starts_with("--test-threads") => {
                    return Err(format!(
                        "unsupported test argument `{other}` after `--`: each test runs in its own \
                         process, so use `-j N` to set how many run at once"
                    ))
                }
                other if other.starts_with('-') => {
                    return Err(format!(
                        "unsupported test argument `{other}` after `--`: accepted are filters, \
                         --exact, --skip PATTERN, --ignored and --include-ignored (--nocapture and \
                         --show-output are accepted and change nothing: each test's output is \
                         captured and shown when it fails)"
                    ))
                }
                other => filter.patterns.push(other.to_string()),
            }
        }
        Ok(filter)
    }

    fn jobs(&self) -> usize {
        self.jobs
            .or_else(|| std::thread::available_parallelism().ok().map(|n| n.get()))
            .unwrap_or(1)
    }
}

/// Parses the process arguments, accepting the `sandbox-test` word cargo
/// inserts when it runs `cargo sandbox-test`.
pub fn parse_args() -> Cli {
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == "sandbox-test") {
        args.remove(1);
    }
    Cli::parse_from(args)
}

/// Runs the pipeline. `zygote` was started before any thread.
pub fn run(cli: Cli, zygote: ZygoteHandle) -> i32 {
    match &cli.command {
        Some(Commands::Doctor(args)) => return crate::doctor::run(args, zygote),
        Some(Commands::Budgets(BudgetsCommand::Suggest(args))) => return suggest_budgets(args),
        None => {}
    }
    let filter = match cli.filter() {
        Ok(f) => f,
        Err(message) => {
            eprintln!("error: {message}");
            return exit_code::USAGE;
        }
    };
    let jobs = cli.jobs();
    let env_bytes: usize = cli
        .env
        .iter()
        .map(|(n, v)| n.len() + v.as_ref().map_or(0, String::len))
        .sum();
    if env_bytes > MAX_ENV_BYTES {
        eprintln!(
            "error: `--env` values add up to {env_bytes} bytes, more than the {MAX_ENV_BYTES} a container's \
             request can carry; pass large data in a file"
        );
        return exit_code::USAGE;
    }

    // Every thread started from here on inherits this mask, and one thread
    // turns SIGINT and SIGTERM into an orderly stop: it ends the cargo
    // build if one runs, and stops the containers.
    let _ = termination_signals().thread_block();
    let (cancel, interrupted) = match Cancel::new() {
        Ok(c) => {
            let cancel = Arc::new(c);
            let interrupted = watch_signals(Arc::clone(&cancel));
            (cancel, interrupted)
        }
        Err(e) => {
            eprintln!("error: cannot create a pipe: {e}");
            return exit_code::INTERNAL;
        }
    };

    let metadata = match plan::workspace_metadata(&cli.build) {
        Ok(m) => m,
        Err(err) => {
            eprintln!("error: {err}");
            return exit_code::BUILD_FAILED;
        }
    };
    let config = match load_config(&cli, &metadata) {
        Ok(c) => c,
        Err(message) => {
            eprintln!("error: {message}");
            return exit_code::USAGE;
        }
    };
    let build = plan::build(&cli.build, metadata);
    if interrupted.load(Ordering::SeqCst) {
        eprintln!("error: interrupted while building");
        return exit_code::INTERRUPTED;
    }
    let build = match build {
        Ok(b) => b,
        Err(err) => {
            eprintln!("error: {err}");
            return exit_code::BUILD_FAILED;
        }
    };
    let binary_count = build.binaries.len();

    let toolchain = Toolchain::current();
    // A fresh directory with an unpredictable name, mode 0700: a name
    // another user could guess would let them plant a symlink where the
    // runner writes as root.
    let staging = tempfile::Builder::new()
        .prefix(&format!("cargo-sandbox-test.{}.", std::process::id()))
        .tempdir_in(std::env::temp_dir())
        .map(|dir| dir.keep());
    let staging = match staging {
        Ok(dir) => dir,
        Err(e) => {
            eprintln!(
                "error: cannot create a staging directory in {}: {e}; set TMPDIR to a writable directory",
                std::env::temp_dir().display()
            );
            return exit_code::SETUP_FAILED;
        }
    };
    let sandbox = match Sandbox::prepare(
        &cli,
        &build.workspace_root,
        &build.target_dir,
        toolchain,
        staging,
        zygote,
        cancel,
        interrupted,
    ) {
        Ok(s) => s,
        Err(message) => {
            eprintln!("error: {message}");
            return exit_code::SETUP_FAILED;
        }
    };
    let code = list_and_run(
        &cli,
        &config,
        &sandbox,
        build.binaries,
        &filter,
        binary_count,
        jobs,
    );
    sandbox.teardown();
    code
}

/// Lists the tests (each binary in a container of its own), prints the
/// plan with `--list`, and otherwise runs the tests.
fn list_and_run(
    cli: &Cli,
    config: &Config,
    sandbox: &Sandbox,
    binaries: Vec<plan::TestBinary>,
    filter: &Filter,
    binary_count: usize,
    jobs: usize,
) -> i32 {
    let options = listing_options(cli, &sandbox.home);
    let ids = std::sync::atomic::AtomicU64::new(1 << 32);
    let lister = |binary: &plan::TestBinary, args: &[&str]| {
        let id = ids.fetch_add(1, Ordering::SeqCst);
        crate::supervise::capture(
            &sandbox.zygote,
            sandbox.cgroups.as_ref(),
            binary,
            args,
            &options,
            id,
            &sandbox.cancel,
        )
    };
    let tests = plan::list(binaries, filter, jobs, &lister);
    if sandbox.interrupted.load(Ordering::SeqCst) {
        eprintln!("error: interrupted while listing tests");
        return exit_code::INTERRUPTED;
    }
    let tests = match tests {
        Ok(t) => t,
        Err(err) => {
            eprintln!("error: {err}");
            return exit_code::LIST_FAILED;
        }
    };
    if cli.list {
        print_list(&tests, cli.message_format);
        return exit_code::SUCCESS;
    }
    if !tests.iter().any(|t| t.run) {
        let message = "no test matched the filters; check them with `--list`";
        match cli.no_tests {
            NoTests::Fail => {
                eprintln!("error: {message}, or pass `--no-tests warn`");
                return exit_code::NO_TESTS;
            }
            NoTests::Warn => eprintln!("warning: {message}"),
            NoTests::Pass => {}
        }
    }
    sandbox.run_tests(cli, config, &tests, binary_count, jobs)
}

/// Options for the containers that list tests: the flags and built-in
/// defaults, with no budgets.
fn listing_options(cli: &Cli, home: &Path) -> RunOptions {
    RunOptions {
        caps: Caps {
            memory: Some(cli.memory.unwrap_or(defaults::MEMORY)),
            cpus: cli.cpus,
            pids: Some(cli.pids.unwrap_or(defaults::PIDS)),
        },
        // Listing takes milliseconds; a minute means the binary is stuck.
        timeout: cli
            .timeout
            .unwrap_or(defaults::TIMEOUT)
            .min(Duration::from_secs(60)),
        kill_grace: cli.kill_grace,
        leak_timeout: Duration::ZERO,
        fail_on_leak: false,
        tmpfs_size: cli.tmpfs_size,
        max_output: cli.max_output as usize,
        network: false,
        env: cli.env.clone(),
        home: home.to_path_buf(),
        budgets: crate::config::Budgets::default(),
        budget_mode: cli.budgets,
    }
}

fn suggest_budgets(args: &SuggestArgs) -> i32 {
    match Baseline::load(&args.from) {
        Ok(baseline) => {
            print!(
                "{}",
                crate::report::file::suggest(&baseline, args.headroom, &args.profile)
            );
            exit_code::SUCCESS
        }
        Err(err) => {
            eprintln!("error: {err}");
            exit_code::USAGE
        }
    }
}

/// Loads `sandbox-test.toml` (or the Cargo.toml metadata table) of the
/// workspace and checks that the selected profile exists.
fn load_config(cli: &Cli, metadata: &cargo_metadata::Metadata) -> Result<Config, String> {
    let config = Config::load(metadata.workspace_root.as_std_path()).map_err(|e| e.to_string())?;
    if !config.profile_names().contains(&cli.config_profile) {
        let origin = config.origin();
        let place = if origin.exists() {
            format!("in {}", origin.display())
        } else {
            format!(
                "(no {} in {})",
                crate::config::CONFIG_FILE,
                metadata.workspace_root
            )
        };
        return Err(format!(
            "profile `{}` is not defined {place}; defined profiles: {}",
            cli.config_profile,
            config.profile_names().join(", ")
        ));
    }
    Ok(config)
}

/// Built-in caps, used where neither a flag nor the config file sets one.
pub mod defaults {
    use std::time::Duration;

    pub const MEMORY: u64 = 2 << 30;
    pub const PIDS: u64 = 1024;
    pub const TIMEOUT: Duration = Duration::from_secs(300);
    pub const LEAK_TIMEOUT: Duration = Duration::from_millis(100);
}

/// Resolves one test's options: flags win over the config file, which wins
/// over the built-in defaults.
fn options_for(
    cli: &Cli,
    config: &Config,
    test: &TestCase,
    home: &Path,
) -> Result<RunOptions, String> {
    let identity = TestIdentity {
        package: &test.binary.package,
        binary: &test.binary.target,
        name: &test.name,
    };
    let settings = config
        .resolve(&cli.config_profile, &identity)
        .map_err(|e| e.to_string())?;
    let mut env: Vec<(String, Option<String>)> = Vec::new();
    env.extend(settings.pass_env.iter().map(|n| (n.clone(), None)));
    env.extend(
        settings
            .env
            .iter()
            .map(|(k, v)| (k.clone(), Some(v.clone()))),
    );
    env.extend(cli.env.iter().cloned());
    Ok(RunOptions {
        caps: Caps {
            memory: Some(cli.memory.or(settings.memory).unwrap_or(defaults::MEMORY)),
            cpus: cli.cpus.or(settings.cpus),
            pids: Some(cli.pids.or(settings.pids).unwrap_or(defaults::PIDS)),
        },
        timeout: cli
            .timeout
            .or(settings.timeout)
            .unwrap_or(defaults::TIMEOUT),
        kill_grace: cli.kill_grace,
        leak_timeout: cli
            .leak_timeout
            .or(settings.leak_timeout)
            .unwrap_or(defaults::LEAK_TIMEOUT),
        fail_on_leak: cli.fail_on_leak || settings.fail_on_leak.unwrap_or(false),
        tmpfs_size: cli.tmpfs_size,
        max_output: cli.max_output as usize,
        network: cli.network || settings.network.unwrap_or(false),
        env,
        home: home.to_path_buf(),
        budgets: settings.budgets,
        budget_mode: cli.budgets,
    })
}

fn print_list(tests: &[TestCase], format: MessageFormat) {
    for test in tests {
        if format == MessageFormat::Json {
            let line = serde_json::json!({
                "binary_id": test.binary.id,
                "name": test.name,
                "ignored": test.ignored,
                "runs": test.run,
            });
            println!("{line}");
            continue;
        }
        let mark = if !test.run && test.ignored {
            " (ignored)"
        } else {
            ""
        };
        println!("{} {}{mark}", test.binary.id, test.name);
    }
}

/// The run-wide parts of the sandbox: the zygote, the cgroups, the staging
/// directory and the root filesystem plan.
struct Sandbox {
    zygote: container::Zygote,
    cgroups: Option<RunCgroups>,
    staging: PathBuf,
    home: PathBuf,
    overlay: bool,
    cancel: Arc<Cancel>,
    /// Set when SIGINT or SIGTERM stopped the run.
    interrupted: Arc<AtomicBool>,
}

impl Sandbox {
    fn prepare(
        cli: &Cli,
        workspace: &Path,
        target_dir: &Path,
        toolchain: &Toolchain,
        staging: PathBuf,
        zygote: ZygoteHandle,
        cancel: Arc<Cancel>,
        interrupted: Arc<AtomicBool>,
    ) -> Result<Sandbox, String> {
        std::fs::create_dir_all(&staging).map_err(|e| {
            format!(
                "cannot create the staging directory {}: {e}",
                staging.display()
            )
        })?;
        remove_stale_staging(&staging);

        let mut extra = vec![
            (workspace.to_path_buf(), true),
            (target_dir.to_path_buf(), true),
        ];
        if let Some(dir) = &toolchain.rustup_home {
            extra.push((dir.clone(), false));
        }
        // Of CARGO_HOME, only what a nested cargo needs offline: the
        // installed binaries and the downloaded sources. Registry tokens
        // stay out, and are masked where CARGO_HOME is visible anyway.
        let mut masks = Vec::new();
        if let Some(dir) = &toolchain.cargo_home {
            for sub in ["bin", "registry", "git"] {
                extra.push((dir.join(sub), false));
            }
            // Registry tokens may sit in the config files too.
            masks.extend(
                ["credentials.toml", "credentials", "config.toml", "config"].map(|f| dir.join(f)),
            );
        }
        // A test of a root run is uid 0 on the host's files: password
        // hashes and private keys stay out of its view all the same.
        if nix::unistd::geteuid().is_root() {
            masks.extend(
                [
                    "/etc/shadow",
                    "/etc/gshadow",
                    "/etc/shadow-",
                    "/etc/gshadow-",
                    "/etc/ssl/private",
                ]
                .map(PathBuf::from),
            );
            if let Ok(entries) = std::fs::read_dir("/etc/ssh") {
                let keys = entries.flatten().map(|e| e.path()).filter(|p| {
                    let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
                    name.starts_with("ssh_host_") && name.ends_with("_key")
                });
                masks.extend(keys);
            }
        }
        let mut rootfs = container::rootfs::plan(staging.join("mnt"), &extra, &masks)
            .map_err(|e| format!("cannot read the host's mounts: {e}"))?;
        std::fs::create_dir_all(&rootfs.staging)
            .map_err(|e| format!("cannot create {}: {e}", rootfs.staging.display()))?;
        rootfs.overlay_refused = cli.no_overlay;
        rootfs.hosts_file = write_hosts_file(&staging);

        let cgroups = if cli.no_cgroups {
            None
        } else {
            Some(setup_cgroups(zygote.pid(), cli.require_cgroups)?)
        };
        let home = container_home();
        let abandon = |message: String| {
            if let Some(c) = &cgroups {
                c.teardown();
            }
            let _ = std::fs::remove_dir_all(&staging);
            message
        };
        let zygote = match zygote.connect(&rootfs) {
            Ok(z) => z,
            Err(e) => return Err(abandon(format!("cannot reach the container zygote: {e}"))),
        };
        if let Err(error) = check_container(&zygote, &mut rootfs, &home, cli.tmpfs_size) {
            return Err(abandon(error));
        }
        let overlay = !rootfs.overlay_refused;
        Ok(Sandbox {
            zygote,
            cgroups,
            staging,
            home,
            overlay,
            cancel,
            interrupted,
        })
    }

    fn run_tests(
        &self,
        cli: &Cli,
        config: &Config,
        tests: &[TestCase],
        binaries: usize,
        workers: usize,
    ) -> i32 {
        let mut failure = None;
        let jobs = crate::schedule::jobs(tests, cli.per_binary, |test| {
            match options_for(cli, config, test, &self.home) {
                Ok(o) => Arc::new(o),
                Err(err) => {
                    failure.get_or_insert(err);
                    Arc::new(
                        options_for(cli, &Config::default(), test, &self.home)
                            .expect("defaults resolve"),
                    )
                }
            }
        });
        if let Some(err) = failure {
            eprintln!("error: {err}");
            return exit_code::USAGE;
        }
        let cancel = &self.cancel;
        let interrupted = &self.interrupted;
        let baseline = match cli.baseline.as_deref().map(Baseline::load).transpose() {
            Ok(b) => b,
            Err(err) => {
                eprintln!("error: {err}");
                return exit_code::USAGE;
            }
        };
        let ctx = Context {
            zygote: &self.zygote,
            cgroups: self.cgroups.as_ref(),
            cancel,
            baseline: baseline.as_ref().map(|b| (b, cli.baseline_threshold)),
        };
        let reporter = Mutex::new(Reporter::new(cli.message_format));
        reporter.lock().expect("not poisoned").run_started(
            tests,
            binaries,
            workers,
            cli.per_binary,
            self.cgroups_kind(),
            &self.header(jobs.first()),
        );
        let results = crate::schedule::run(&ctx, tests, &jobs, workers, &reporter);

        let summary = Summary::of(&results);
        let setup_failed = results
            .iter()
            .any(|r| r.outcome == crate::outcome::Outcome::SetupFailed);
        let code = if setup_failed {
            exit_code::SETUP_FAILED
        } else if interrupted.load(Ordering::SeqCst) {
            exit_code::INTERRUPTED
        } else if summary.failed > 0 || summary.cancelled > 0 {
            exit_code::TEST_FAILED
        } else if cli.fail_on_growth && results.iter().any(|r| !r.growth.is_empty()) {
            let grown = results.iter().filter(|r| !r.growth.is_empty()).count();
            eprintln!(
                "error: {} grew past the baseline threshold, and --fail-on-growth is set",
                crate::report::plural(grown, "test")
            );
            exit_code::TEST_FAILED
        } else {
            exit_code::SUCCESS
        };
        let elapsed = reporter.lock().expect("not poisoned").elapsed();
        reporter
            .lock()
            .expect("not poisoned")
            .run_finished(&results, code);
        let code = self.write_reports(cli, &results, &summary, elapsed, code);
        if cli.timings {
            crate::report::print_timings(&results);
        }
        if setup_failed {
            if let Some(err) = results.iter().find_map(|r| r.setup_error.as_ref()) {
                eprintln!("error: {err}");
                if let Some(hint) = err.hint() {
                    eprintln!("hint: {hint}");
                }
            }
        }
        code
    }

    /// Writes the files asked for with --junit and --report. A report that
    /// cannot be written turns a passing run into an internal error.
    fn write_reports(
        &self,
        cli: &Cli,
        results: &[TestResult],
        summary: &Summary,
        elapsed: Duration,
        code: i32,
    ) -> i32 {
        let mut code = code;
        for path in [&cli.junit, &cli.report].into_iter().flatten() {
            if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                let _ = std::fs::create_dir_all(parent);
            }
        }
        if let Some(path) = &cli.junit {
            if let Err(err) = crate::report::junit::write(path, results, elapsed) {
                eprintln!(
                    "error: cannot write the JUnit report {}: {err}",
                    path.display()
                );
                code = code.max(exit_code::INTERNAL);
            }
        }
        if let Some(path) = &cli.report {
            let host = crate::report::file::HostInfo {
                cgroups: self.cgroups_kind(),
            };
            if let Err(err) =
                crate::report::file::write(path, results, summary, elapsed, code, &host)
            {
                eprintln!(
                    "error: cannot write the run report {}: {err}",
                    path.display()
                );
                code = code.max(exit_code::INTERNAL);
            }
        }
        code
    }

    fn header(&self, first: Option<&crate::schedule::Job>) -> String {
        let cgroup = match &self.cgroups {
            Some(c) if !c.is_empty() => format!("cgroups {}", c.layout().kind()),
            _ => "no cgroups".into(),
        };
        let fs = if self.overlay {
            "overlay"
        } else {
            "read-only binds"
        };
        let Some(options) = first.map(|j| &j.options) else {
            return format!("{cgroup}, {fs} root");
        };
        let caps = &options.caps;
        let has = |c: Controller| self.cgroups.as_ref().is_some_and(|g| g.has(c));
        let memory = match caps.memory {
            Some(m) if has(Controller::Memory) => format!(", memory {}", crate::report::size(m)),
            _ => ", memory uncapped".into(),
        };
        let pids = match caps.pids {
            Some(p) if has(Controller::Pids) => format!(", pids {p}"),
            // The kernel does not apply RLIMIT_NPROC to the host's root.
            Some(_) if nix::unistd::geteuid().is_root() => ", pids uncapped".into(),
            Some(p) => format!(", pids {p} (RLIMIT_NPROC)"),
            None => String::new(),
        };
        let cpus = match caps.cpus {
            Some(c) if has(Controller::Cpu) => format!(", CPU quota {c}"),
            Some(_) => ", CPU quota unenforced".into(),
            None => String::new(),
        };
        format!(
            "{cgroup}, {fs} root{memory}{pids}{cpus}, timeout {}",
            humantime::format_duration(options.timeout)
        )
    }

    fn cgroups_kind(&self) -> &'static str {
        match &self.cgroups {
            Some(c) if c.is_empty() => "none",
            Some(c) => c.layout().kind(),
            None => "none",
        }
    }

    fn teardown(&self) {
        if let Some(c) = &self.cgroups {
            c.teardown();
        }
        let _ = std::fs::remove_dir_all(&self.staging);
    }
}

/// Builds one container before any test runs, so a host that cannot build
/// them stops the run with the failing step, the kernel error and the fix.
/// When only overlayfs is refused, switches to read-only binds and warns
/// once.
fn check_container(
    zygote: &container::Zygote,
    rootfs: &mut RootfsPlan,
    home: &Path,
    tmpfs_size: u64,
) -> Result<(), String> {
    let describe = |error: &container::SetupError| match error.hint() {
        Some(hint) => format!("{error}\nhint: {hint}"),
        None => error.to_string(),
    };
    let error = match crate::supervise::preflight(zygote, home, tmpfs_size) {
        Ok(()) => return Ok(()),
        Err(error) => error,
    };
    if error.step != "mount overlay" || rootfs.overlay_refused {
        return Err(describe(&error));
    }
    rootfs.overlay_refused = true;
    zygote
        .set_plan(rootfs)
        .map_err(|e| format!("cannot reach the container zygote: {e}"))?;
    crate::supervise::preflight(zygote, home, tmpfs_size).map_err(|e| describe(&e))?;
    eprintln!(
        "warning: overlayfs refused ({}: {}); using read-only binds instead, so tests can write \
         only in /tmp, HOME and /dev/shm. Fix: Linux 5.11 or later, and a temporary directory \
         (TMPDIR) that is not itself on overlayfs",
        error.path, error.detail
    );
    Ok(())
}

/// Creates the run's cgroups and warns once about missing controllers, or
/// fails with `--require-cgroups`.
fn setup_cgroups(zygote_pid: u32, require: bool) -> Result<RunCgroups, String> {
    let layout =
        Layout::detect().map_err(|e| format!("cannot read /proc/self/cgroup or mountinfo: {e}"))?;
    let run =
        RunCgroups::setup(layout, &[std::process::id(), zygote_pid]).map_err(|e| e.to_string())?;
    let essential = [Controller::Memory, Controller::Pids, Controller::Cpuacct];
    let missing: Vec<&(Controller, String)> = run
        .missing
        .iter()
        .filter(|(c, _)| essential.contains(c))
        .collect();
    let Some((_, first_reason)) = missing.first() else {
        return Ok(run);
    };
    let names: Vec<&str> = missing.iter().map(|(c, _)| c.name()).collect();
    let fix = "run as root, or start the runner in a delegated cgroup v2 \
               (`systemd-run --user --scope -p Delegate=yes cargo sandbox-test`)";
    if require {
        return Err(format!(
            "no usable cgroup for {} ({first_reason}), and --require-cgroups is set\nfix: {fix}",
            names.join(", ")
        ));
    }
    eprintln!(
        "warning: no usable cgroup for {} ({first_reason})\n\
         \x20 without it the memory cap is not enforced (no rlimit is a fair stand-in: RLIMIT_AS \
         counts address space, not memory); the pids cap falls back to RLIMIT_NPROC, which the \
         kernel counts per user namespace, so per container; the timeout, the tmpfs cap and the \
         namespaces apply as usual. Peak memory and tasks are reported as unavailable, CPU time \
         comes from wait4, and budgets on unavailable figures are unchecked.\n\
         \x20 fix: {fix}; --require-cgroups turns this warning into an error",
        names.join(", ")
    );
    Ok(run)
}

/// Picks the test's HOME: the invoking user's home path when the container
/// hides it anyway (so tools find the same path), else `/home/sandbox`.
fn container_home() -> PathBuf {
    let home = std::env::var_os("HOME").map(PathBuf::from);
    match home {
        Some(h) if h.starts_with("/root") || h.starts_with("/home") => h,
        _ => PathBuf::from("/home/sandbox"),
    }
}

/// Writes the `/etc/hosts` the containers see: the host's entries plus the
/// container's hostname, so it resolves without a network.
fn write_hosts_file(staging: &Path) -> Option<PathBuf> {
    let mut text = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
    if !text.ends_with('\n') && !text.is_empty() {
        text.push('\n');
    }
    text.push_str(
        "127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n127.0.1.1 sandbox\n",
    );
    let path = staging.join("hosts");
    std::fs::write(&path, text).ok()?;
    Some(path)
}

/// Removes staging directories of this user's runs whose process is gone.
/// Their names are `cargo-sandbox-test.<pid>.<random>`.
fn remove_stale_staging(current: &Path) {
    use std::os::unix::fs::MetadataExt;
    let Some(parent) = current.parent() else {
        return;
    };
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    let uid = nix::unistd::geteuid().as_raw();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name
            .to_str()
            .and_then(|n| n.strip_prefix("cargo-sandbox-test."))
        else {
            continue;
        };
        let Some(Ok(pid)) = rest.split('.').next().map(str::parse::<u32>) else {
            continue;
        };
        let Ok(meta) = entry.path().symlink_metadata() else {
            continue;
        };
        if !meta.is_dir() || meta.uid() != uid {
            continue;
        }
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Starts a thread that turns SIGINT and SIGTERM into a cancellation of
/// the run; `main` blocks both in every thread before any thread starts.
/// Returns the flag the thread sets.
fn watch_signals(cancel: Arc<Cancel>) -> Arc<AtomicBool> {
    let interrupted = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&interrupted);
    let _ = std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Ok(signal) = termination_signals().wait() {
                flag.store(true, Ordering::SeqCst);
                cancel.trigger();
                plan::stop_build(signal as i32);
            }
        });
    interrupted
}

/// Returns the signals that stop a run.
pub fn termination_signals() -> nix::sys::signal::SigSet {
    let mut set = nix::sys::signal::SigSet::empty();
    set.add(nix::sys::signal::Signal::SIGINT);
    set.add(nix::sys::signal::Signal::SIGTERM);
    set
}
