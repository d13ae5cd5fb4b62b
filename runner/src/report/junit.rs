//! JUnit XML reports, through `quick-junit`: a test suite per binary, a
//! test case per test, usage and budgets as properties.

use std::collections::BTreeMap;
use std::path::Path;

use quick_junit::{NonSuccessKind, Property, Report, TestCase, TestCaseStatus, TestSuite};

use crate::outcome::Outcome;
use crate::supervise::TestResult;

use super::{mib, reason};

/// Keeps the end of a captured stream, where failures print their cause.
fn tail(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

fn properties(result: &TestResult) -> Vec<Property> {
    let usage = &result.usage;
    let mut props = Vec::new();
    let mut add = |name: &str, value: Option<String>| {
        props.push(Property::new(
            name,
            value.unwrap_or_else(|| "unavailable".into()),
        ));
    };
    let secs = |d: Option<std::time::Duration>| d.map(|d| format!("{:.6}", d.as_secs_f64()));
    let outcome = serde_json::to_value(result.outcome)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string));
    add("outcome", outcome);
    add("wall-time-seconds", secs(usage.wall_time));
    add("cpu-user-seconds", secs(usage.cpu_user));
    add("cpu-system-seconds", secs(usage.cpu_system));
    add(
        "memory-peak-bytes",
        usage.memory_peak.map(|v| v.to_string()),
    );
    add("tasks-peak", usage.tasks_peak.map(|v| v.to_string()));
    add("oom-kills", usage.oom_kills.map(|v| v.to_string()));
    add("leaked-processes", usage.leaked.map(|v| v.to_string()));
    if let Some(m) = result.budgets.memory {
        props.push(Property::new("budget-memory", mib(m)));
    }
    if let Some(d) = result.budgets.cpu_time {
        props.push(Property::new(
            "budget-cpu-time-seconds",
            format!("{:.6}", d.as_secs_f64()),
        ));
    }
    if let Some(d) = result.budgets.wall_time {
        props.push(Property::new(
            "budget-wall-time-seconds",
            format!("{:.6}", d.as_secs_f64()),
        ));
    }
    if let Some(t) = result.budgets.tasks {
        props.push(Property::new("budget-tasks", t.to_string()));
    }
    for figure in &result.judgement.unchecked {
        props.push(Property::new("budget-unchecked", format!("{figure:?}")));
    }
    props
}

fn test_case(result: &TestResult) -> TestCase {
    let status = match result.outcome {
        Outcome::Ignored => TestCaseStatus::skipped(),
        _ if !result.is_failure() => TestCaseStatus::success(),
        outcome => {
            let kind = match outcome {
                Outcome::SetupFailed | Outcome::Cancelled => NonSuccessKind::Error,
                _ => NonSuccessKind::Failure,
            };
            let mut status = TestCaseStatus::non_success(kind);
            status.set_message(reason(result).unwrap_or_default());
            let kind = serde_json::to_value(outcome)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string));
            status.set_type(kind.unwrap_or_default());
            status.set_description(tail(&result.stderr.text(), 16 * 1024).to_string());
            status
        }
    };
    let mut case = TestCase::new(result.name.as_str(), status);
    case.set_classname(result.binary_id.as_str());
    if let Some(wall) = result.usage.wall_time {
        case.set_time(wall);
    }
    let stdout = result.stdout.text();
    if !stdout.is_empty() {
        case.set_system_out(tail(&stdout, 16 * 1024));
    }
    let stderr = result.stderr.text();
    if !stderr.is_empty() && !result.is_failure() {
        case.set_system_err(tail(&stderr, 16 * 1024));
    }
    case.add_properties(properties(result));
    case
}

/// Writes a JUnit XML report of the results to `path`.
pub fn write(
    path: &Path,
    results: &[TestResult],
    elapsed: std::time::Duration,
) -> std::io::Result<()> {
    let mut suites: BTreeMap<&str, Vec<&TestResult>> = BTreeMap::new();
    for r in results {
        suites.entry(r.binary_id.as_str()).or_default().push(r);
    }
    let mut report = Report::new("cargo-sandbox-test");
    report.set_time(elapsed);
    for (binary, mut tests) in suites {
        tests.sort_by(|a, b| a.name.cmp(&b.name));
        let mut suite = TestSuite::new(binary);
        suite.add_test_cases(tests.into_iter().map(test_case));
        report.add_test_suite(suite);
    }
    let xml = report.to_string().map_err(std::io::Error::other)?;
    std::fs::write(path, xml)
}
