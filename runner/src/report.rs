//! Reporting: one line per finished test and a summary on the terminal, or
//! one JSON object per event with `--message-format json`.

use std::io::Write;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::container::TestExit;
use crate::outcome::{signal_name, Outcome};
use crate::plan::TestCase;
use crate::supervise::TestResult;

/// Version of the JSON event stream; bumped on incompatible changes.
pub const EVENT_SCHEMA: &str = "cargo-sandbox-test/events/v1";

/// How the run reports.
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

/// Formats a byte count as MiB with one decimal.
pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
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
        Outcome::Leaked => format!("{} process(es) left running", result.usage.leaked.unwrap_or(0)),
        Outcome::Failed if result.exit.is_none() => "failed".into(),
        Outcome::Failed | Outcome::Signaled => exit,
        Outcome::TimedOut => format!("timed out after {}", humantime::format_duration(result.timeout)),
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
    };
    Some(text)
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
        "stdout": result.stdout.text(),
        "stderr": result.stderr.text(),
        "stdout_truncated_bytes": result.stdout.dropped(),
        "stderr_truncated_bytes": result.stderr.dropped(),
        "setup_error": result.setup_error,
    })
}

impl Reporter {
    pub fn new(format: MessageFormat) -> Reporter {
        Reporter { format, started: Instant::now() }
    }

    fn event(&self, value: Value) {
        let mut out = std::io::stdout().lock();
        let _ = serde_json::to_writer(&mut out, &value);
        let _ = out.write_all(b"\n");
        let _ = out.flush();
    }

    /// Reports the start of the run; `header` describes the sandbox.
    pub fn run_started(&mut self, tests: &[TestCase], binaries: usize, jobs: usize, cgroups: &str, header: &str) {
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
                eprintln!(
                    "    Starting {running} tests across {binaries} binaries ({skipped} skipped), {jobs} jobs, one container each"
                );
                if !header.is_empty() {
                    eprintln!("     Sandbox {header}");
                }
            }
        }
    }

    pub fn test_started(&mut self, test: &TestCase) {
        if self.format == MessageFormat::Json {
            self.event(json!({ "event": "test-started", "binary_id": test.binary.id, "name": test.name }));
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
                let secs = result.usage.wall_time.or(result.usage.container_time).unwrap_or_default();
                let memory = match result.usage.memory_peak {
                    Some(m) => mib(m),
                    None if result.outcome == Outcome::Ignored => String::new(),
                    None => "mem n/a".into(),
                };
                let detail = reason(result).map(|r| format!(": {r}")).unwrap_or_default();
                eprintln!(
                    "{label:>12} [{:>8.3}s] {memory:>10} {} {}{detail}",
                    secs.as_secs_f64(),
                    result.binary_id,
                    result.name
                );
            }
        }
    }

    /// Reports the end of the run: failing tests' output and the summary.
    pub fn run_finished(&mut self, results: &[TestResult], exit_code: i32) -> Summary {
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

    fn print_failures_and_summary(&self, results: &[TestResult], summary: &Summary, elapsed: Duration) {
        let failures: Vec<&TestResult> =
            results.iter().filter(|r| r.is_failure() && r.outcome != Outcome::Cancelled).collect();
        for r in &failures {
            for (stream, captured) in [("STDOUT", &r.stdout), ("STDERR", &r.stderr)] {
                if captured.is_empty() {
                    continue;
                }
                eprintln!("\n--- {stream}: {} {} ---", r.binary_id, r.name);
                eprint!("{}", captured.text());
                if !captured.text().ends_with('\n') {
                    eprintln!();
                }
            }
        }
        if !failures.is_empty() {
            eprintln!("\nFailed tests:");
            for r in &failures {
                eprintln!("    {} {}: {}", r.binary_id, r.name, reason(r).unwrap_or_default());
            }
        }
        eprintln!(
            "\n     Summary [{:>8.3}s] {} tests run, {} cancelled, {} with leaked processes",
            elapsed.as_secs_f64(),
            summary.passed + summary.failed,
            summary.cancelled,
            summary.leaked,
        );
        eprintln!("Summary: {} passed, {} failed, {} skipped", summary.passed, summary.failed, summary.ignored);
    }
}

/// Returns this process's peak resident set (VmHWM) in bytes.
pub fn runner_peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: u64 = status.lines().find_map(|l| l.strip_prefix("VmHWM:"))?.trim().trim_end_matches("kB").trim().parse().ok()?;
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
    eprintln!("\n     Timings over {} containers (median / p90, milliseconds)", phases.len());
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
    if let Some(rss) = runner_peak_rss() {
        eprintln!("{:>32}  {}", "runner peak RSS", mib(rss));
    }
}
