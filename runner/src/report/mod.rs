//! Reporting: one line per finished test, a progress bar on a terminal and
//! a summary, or one JSON object per event with `--message-format json`;
//! JUnit and JSON report files on request.

pub mod file;
pub mod junit;

use std::io::Write;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::container::TestExit;
use crate::outcome::{signal_name, Outcome};
use crate::plan::TestCase;
use crate::supervise::TestResult;

/// Version of the JSON event stream; bumped on incompatible changes.
pub const EVENT_SCHEMA: &str = "cargo-sandbox-test/events/v1";

/// The output format of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum MessageFormat {
    /// Lines for people, on standard error
    Human,
    /// One JSON object per event, on standard output
    Json,
}

/// Writes the run's events as they happen.
pub struct Reporter {
    format: MessageFormat,
    started: Instant,
    /// A progress bar when standard error is a terminal.
    progress: Option<indicatif::ProgressBar>,
}

/// Counts of a finished run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Summary {
    pub passed: usize,
    pub failed: usize,
    pub ignored: usize,
    pub cancelled: usize,
    pub leaked: usize,
}

impl Summary {
    pub fn of(results: &[TestResult]) -> Summary {
        let mut s = Summary::default();
        for r in results {
            match r.outcome {
                Outcome::Ignored => s.ignored += 1,
                Outcome::Cancelled => s.cancelled += 1,
                _ if r.is_failure() => s.failed += 1,
                _ => s.passed += 1,
            }
            if r.usage.leaked.unwrap_or(0) > 0 {
                s.leaked += 1;
            }
        }
        s
    }
}

/// Formats a count with its noun: `1 test`, `2 tests`, `3 binaries`.
pub fn plural(count: usize, noun: &str) -> String {
    match (count, noun) {
        (1, _) => format!("1 {noun}"),
        (_, "binary") => format!("{count} binaries"),
        _ => format!("{count} {noun}s"),
    }
}

/// Formats a byte count as MiB with one decimal.
pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// Formats a cap: whole GiB or MiB where exact, else MiB with a decimal.
pub fn size(bytes: u64) -> String {
    const MIB: u64 = 1 << 20;
    if bytes % (1 << 30) == 0 {
        format!("{} GiB", bytes >> 30)
    } else if bytes % MIB == 0 {
        format!("{} MiB", bytes / MIB)
    } else {
        mib(bytes)
    }
}

fn exit_json(exit: Option<TestExit>) -> Value {
    match exit {
        Some(TestExit::Code(c)) => json!({ "code": c }),
        Some(TestExit::Signal(s)) => json!({ "signal": s, "signal_name": signal_name(s) }),
        None => Value::Null,
    }
}

/// Describes why a test did not pass, in a few words.
pub fn reason(result: &TestResult) -> Option<String> {
    let exit = match result.exit {
        Some(TestExit::Code(c)) => format!("exit code {c}"),
        Some(TestExit::Signal(s)) => format!("signal {s} ({})", signal_name(s)),
        None => "no exit status of its own".into(),
    };
    let text = match result.outcome {
        Outcome::Passed | Outcome::Ignored => return None,
        Outcome::Leaked => format!(
            "{} process(es) left running",
            result.usage.leaked.unwrap_or(0)
        ),
        Outcome::Failed if result.exit.is_none() => "failed".into(),
        Outcome::Failed | Outcome::Signaled => exit,
        Outcome::TimedOut => format!(
            "timed out after {}",
            humantime::format_duration(result.timeout)
        ),
        Outcome::OomKilled => match result.caps.memory {
            Some(cap) => format!("killed by the OOM killer at the memory cap of {}", mib(cap)),
            None => "killed by the OOM killer".into(),
        },
        Outcome::PidsLimit => match result.caps.pids {
            Some(cap) => format!("hit the pids cap of {cap} ({exit})"),
            None => format!("hit the pids cap ({exit})"),
        },
        Outcome::SetupFailed => match &result.setup_error {
            Some(e) => e.to_string(),
            None => "container setup failed".into(),
        },
        Outcome::Cancelled => "the run was interrupted".into(),
        Outcome::OverBudget => {
            let breaches: Vec<&str> = result
                .judgement
                .breaches
                .iter()
                .map(|b| b.message.as_str())
                .collect();
            breaches.join(", ")
        }
    };
    Some(text)
}

fn budgets_json(budgets: &crate::config::Budgets) -> Value {
    json!({
        "memory": budgets.memory,
        "cpu_time": budgets.cpu_time.map(|d| d.as_secs_f64()),
        "wall_time": budgets.wall_time.map(|d| d.as_secs_f64()),
        "tasks": budgets.tasks,
    })
}

/// Converts a result to the JSON object used by events and reports.
pub fn result_json(result: &TestResult) -> Value {
    json!({
        "binary_id": result.binary_id,
        "name": result.name,
        "outcome": result.outcome,
        "failed": result.is_failure(),
        "reason": reason(result),
        "exit": exit_json(result.exit),
        "usage": result.usage,
        "caps": result.caps,
        "timeout": result.timeout.as_secs_f64(),
        "budgets": budgets_json(&result.budgets),
        "budget_breaches": result.judgement.breaches,
        "budgets_unchecked": result.judgement.unchecked,
        "baseline_growth": result.growth,
        "stdout": result.stdout.text(),
        "stderr": result.stderr.text(),
        "stdout_truncated_bytes": result.stdout.dropped(),
        "stderr_truncated_bytes": result.stderr.dropped(),
        "setup_error": result.setup_error,
    })
}

impl Reporter {
    pub fn new(format: MessageFormat) -> Reporter {
        Reporter {
            format,
            started: Instant::now(),
            progress: None,
        }
    }

    fn event(&self, value: Value) {
        let mut out = std::io::stdout().lock();
        let _ = serde_json::to_writer(&mut out, &value);
        let _ = out.write_all(b"\n");
        let _ = out.flush();
    }

    /// Reports the start of the run; `header` describes the sandbox.
    pub fn run_started(
        &mut self,
        tests: &[TestCase],
        binaries: usize,
        jobs: usize,
        per_binary: bool,
        cgroups: &str,
        header: &str,
    ) {
        self.started = Instant::now();
        let running = tests.iter().filter(|t| t.run).count();
        let skipped = tests.len() - running;
        match self.format {
            MessageFormat::Json => self.event(json!({
                "event": "run-started",
                "schema": EVENT_SCHEMA,
                "tests": running,
                "skipped": skipped,
                "binaries": binaries,
                "jobs": jobs,
                "cgroups": cgroups,
            })),
            MessageFormat::Human => {
                let each = if per_binary {
                    "one container per binary"
                } else {
                    "one container per test"
                };
                eprintln!(
                    "    Starting {} across {} ({skipped} skipped), {}, {each}",
                    plural(running, "test"),
                    plural(binaries, "binary"),
                    plural(jobs, "job"),
                );
                if !header.is_empty() {
                    eprintln!("     Sandbox {header}");
                }
                if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
                    let bar = indicatif::ProgressBar::new(running as u64);
                    let style = indicatif::ProgressStyle::with_template(
                        "{prefix:>12} [{elapsed_precise}] [{bar:30}] {pos}/{len}: {msg}",
                    );
                    if let Ok(style) = style {
                        bar.set_style(style.progress_chars("=> "));
                    }
                    bar.set_prefix("Running");
                    self.progress = Some(bar);
                }
            }
        }
    }

    /// Returns the time since the run started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    pub fn test_started(&mut self, test: &TestCase) {
        if self.format == MessageFormat::Json {
            self.event(
                json!({ "event": "test-started", "binary_id": test.binary.id, "name": test.name }),
            );
        }
    }

    pub fn test_finished(&mut self, result: &TestResult) {
        match self.format {
            MessageFormat::Json => {
                let mut value = result_json(result);
                value["event"] = json!("test-finished");
                self.event(value);
            }
            MessageFormat::Human => {
                let label = result.outcome.label(result.fail_on_leak);
                let secs = result
                    .usage
                    .wall_time
                    .or(result.usage.container_time)
                    .unwrap_or_default();
                let memory = match result.usage.memory_peak {
                    Some(m) => mib(m),
                    None if result.outcome == Outcome::Ignored => String::new(),
                    None => "mem n/a".into(),
                };
                let detail = reason(result).map(|r| format!(": {r}")).unwrap_or_default();
                let line = format!(
                    "{label:>12} [{:>8.3}s] {memory:>10} {} {}{detail}",
                    secs.as_secs_f64(),
                    result.binary_id,
                    result.name
                );
                match &self.progress {
                    Some(bar) => {
                        bar.println(line);
                        if result.outcome != Outcome::Ignored {
                            bar.inc(1);
                            bar.set_message(format!("{} {}", result.binary_id, result.name));
                        }
                    }
                    None => eprintln!("{line}"),
                }
            }
        }
    }

    /// Reports the end of the run: failing tests' output and the summary.
    pub fn run_finished(&mut self, results: &[TestResult], exit_code: i32) -> Summary {
        if let Some(bar) = self.progress.take() {
            bar.finish_and_clear();
        }
        let summary = Summary::of(results);
        let elapsed = self.started.elapsed();
        match self.format {
            MessageFormat::Json => self.event(json!({
                "event": "run-finished",
                "schema": EVENT_SCHEMA,
                "summary": summary,
                "duration": elapsed.as_secs_f64(),
                "exit_code": exit_code,
                "runner_peak_rss": runner_peak_rss(),
            })),
            MessageFormat::Human => self.print_failures_and_summary(results, &summary, elapsed),
        }
        summary
    }

    fn print_failures_and_summary(
        &self,
        results: &[TestResult],
        summary: &Summary,
        elapsed: Duration,
    ) {
        let failures: Vec<&TestResult> = results
            .iter()
            .filter(|r| r.is_failure() && r.outcome != Outcome::Cancelled)
            .collect();
        for r in &failures {
            for (stream, captured) in [("STDOUT", &r.stdout), ("STDERR", &r.stderr)] {
                if captured.is_empty() {
                    continue;
                }
                eprintln!("\n--- {stream}: {} {} ---", r.binary_id, r.name);
                let text = printable(&captured.text());
                eprint!("{text}");
                if !text.ends_with('\n') {
                    eprintln!();
                }
            }
        }
        print_top(results);
        print_breaches_and_growth(results);
        if !failures.is_empty() {
            eprintln!("\nFailed tests:");
            for r in &failures {
                eprintln!(
                    "    {} {}: {}",
                    r.binary_id,
                    r.name,
                    reason(r).unwrap_or_default()
                );
            }
        }
        eprintln!(
            "\n     Summary [{:>8.3}s] {} run, {} cancelled, {} with leaked processes",
            elapsed.as_secs_f64(),
            plural(summary.passed + summary.failed, "test"),
            summary.cancelled,
            summary.leaked,
        );
        eprintln!(
            "Summary: {} passed, {} failed, {} skipped",
            summary.passed, summary.failed, summary.ignored
        );
    }
}

/// Replaces control characters other than newline and tab, so a test's
/// output cannot move the cursor, retitle the terminal or clear it.
fn printable(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() && c != '\n' && c != '\t' {
                char::REPLACEMENT_CHARACTER
            } else {
                c
            }
        })
        .collect()
}

/// Prints the tests with the highest peak memory, CPU time and wall time.
fn print_top(results: &[TestResult]) {
    const ROWS: usize = 5;
    let ran: Vec<&TestResult> = results
        .iter()
        .filter(|r| r.outcome != Outcome::Ignored)
        .collect();
    if ran.len() < 2 {
        return;
    }
    type Pick = fn(&TestResult) -> Option<f64>;
    let tables: [(&str, Pick, fn(f64) -> String); 3] = [
        (
            "peak memory",
            |r| r.usage.memory_peak.map(|m| m as f64),
            |v| mib(v as u64),
        ),
        (
            "CPU time",
            |r| match (r.usage.cpu_user, r.usage.cpu_system) {
                (Some(u), Some(s)) => Some((u + s).as_secs_f64()),
                _ => None,
            },
            |v| format!("{v:.3}s"),
        ),
        (
            "wall time",
            |r| r.usage.wall_time.map(|d| d.as_secs_f64()),
            |v| format!("{v:.3}s"),
        ),
    ];
    for (title, pick, format) in tables {
        let mut rows: Vec<(f64, &TestResult)> = ran
            .iter()
            .filter_map(|r| pick(r).map(|v| (v, *r)))
            .collect();
        if rows.is_empty() {
            eprintln!("\nTop {title}: unavailable on this host");
            continue;
        }
        rows.sort_by(|a, b| b.0.total_cmp(&a.0));
        eprintln!("\nTop {title}:");
        for (value, r) in rows.into_iter().take(ROWS) {
            eprintln!("    {:>12}  {} {}", format(value), r.binary_id, r.name);
        }
    }
}

/// Prints every budget breach, unchecked budget and growth past the
/// baseline.
fn print_breaches_and_growth(results: &[TestResult]) {
    let breaches: Vec<&TestResult> = results
        .iter()
        .filter(|r| !r.judgement.breaches.is_empty())
        .collect();
    if !breaches.is_empty() {
        eprintln!("\nBudget breaches:");
        for r in breaches {
            for b in &r.judgement.breaches {
                eprintln!("    {} {}: {}", r.binary_id, r.name, b.message);
            }
        }
    }
    let unchecked: Vec<&TestResult> = results
        .iter()
        .filter(|r| !r.judgement.unchecked.is_empty())
        .collect();
    if !unchecked.is_empty() {
        eprintln!("\nBudgets unchecked (the host did not measure the figure):");
        for r in unchecked {
            let figures: Vec<String> = r
                .judgement
                .unchecked
                .iter()
                .map(|f| format!("{f:?}"))
                .collect();
            eprintln!("    {} {}: {}", r.binary_id, r.name, figures.join(", "));
        }
    }
    let grown: Vec<&TestResult> = results.iter().filter(|r| !r.growth.is_empty()).collect();
    if !grown.is_empty() {
        eprintln!("\nGrown since the baseline:");
        for r in grown {
            for g in &r.growth {
                eprintln!("    {} {}: {}", r.binary_id, r.name, g.describe());
            }
        }
    }
}

/// Returns this process's peak resident set (VmHWM) in bytes.
pub fn runner_peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// Prints the median and 90th percentile of each container phase, so a
/// user can see where the per-test time goes.
pub fn print_timings(results: &[TestResult]) {
    let phases: Vec<_> = results.iter().filter_map(|r| r.usage.phases).collect();
    if phases.is_empty() {
        return;
    }
    type Pick = fn(&crate::supervise::Phases) -> Option<Duration>;
    let rows: [(&str, Pick); 6] = [
        ("cgroup create + caps", |p| p.cgroup),
        ("spawn (clone, maps, attach)", |p| p.spawn),
        ("mounts + network in init", |p| p.mounts),
        ("test process", |p| p.test),
        ("leak wait", |p| p.leak_wait),
        ("teardown (reap, usage, rmdir)", |p| p.teardown),
    ];
    eprintln!(
        "\n     Timings over {} containers (median / p90, milliseconds)",
        phases.len()
    );
    for (label, pick) in rows {
        let mut values: Vec<Duration> = phases.iter().filter_map(pick).collect();
        if values.is_empty() {
            continue;
        }
        values.sort();
        let median = values[values.len() / 2];
        let p90 = values[(values.len() * 9 / 10).min(values.len() - 1)];
        eprintln!(
            "{label:>32}  {:>8.3} / {:>8.3}",
            median.as_secs_f64() * 1000.0,
            p90.as_secs_f64() * 1000.0
        );
    }
    let mut steps: Vec<(&str, Vec<u64>)> = Vec::new();
    for r in results {
        for (name, us) in &r.setup_steps {
            match steps.iter_mut().find(|(n, _)| *n == name.as_str()) {
                Some((_, values)) => values.push(*us),
                None => steps.push((name.as_str(), vec![*us])),
            }
        }
    }
    if !steps.is_empty() {
        eprintln!("{:>32}", "init's setup, step by step:");
    }
    for (name, mut values) in steps {
        values.sort_unstable();
        let median = values[values.len() / 2] as f64 / 1000.0;
        let p90 = values[(values.len() * 9 / 10).min(values.len() - 1)] as f64 / 1000.0;
        eprintln!("{name:>32}  {median:>8.3} / {p90:>8.3}");
    }
    if let Some(rss) = runner_peak_rss() {
        eprintln!("{:>32}  {}", "runner peak RSS", mib(rss));
    }
}
