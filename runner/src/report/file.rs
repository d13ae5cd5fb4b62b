//! The JSON run report (`--report PATH`), comparison with an earlier one
//! (`--baseline PATH`), and budgets suggested from a report.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, SystemTime};

use serde_json::{json, Value};

use crate::report::{mib, result_json, Summary};
use crate::supervise::TestResult;

/// Version of the run report's format; bumped on incompatible changes.
pub const REPORT_SCHEMA: &str = "cargo-sandbox-test/report/v1";

/// Bytes of each output stream kept per test in the report.
const OUTPUT_TAIL: usize = 8 * 1024;

/// Errors of reading a report.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("cannot read the report {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not a run report of cargo-sandbox-test: {detail}")]
    Invalid { path: String, detail: String },
}

/// Host facts recorded in the report.
pub struct HostInfo<'a> {
    pub cgroups: &'a str,
}

fn keep_tail(value: &mut Value, key: &str) {
    let Some(text) = value[key].as_str() else {
        return;
    };
    if text.len() <= OUTPUT_TAIL {
        return;
    }
    let mut start = text.len() - OUTPUT_TAIL;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    let dropped = start as u64;
    let kept = text[start..].to_string();
    value[key] = json!(kept);
    let count_key = format!("{key}_truncated_bytes");
    let before = value[&count_key].as_u64().unwrap_or(0);
    value[count_key] = json!(before + dropped);
}

/// Writes the JSON run report.
pub fn write(
    path: &Path,
    results: &[TestResult],
    summary: &Summary,
    elapsed: Duration,
    exit_code: i32,
    host: &HostInfo,
) -> std::io::Result<()> {
    let started = SystemTime::now() - elapsed;
    let tests: Vec<Value> = results
        .iter()
        .map(|r| {
            let mut value = result_json(r);
            keep_tail(&mut value, "stdout");
            keep_tail(&mut value, "stderr");
            value
        })
        .collect();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let report = json!({
        "schema": REPORT_SCHEMA,
        "runner_version": env!("CARGO_PKG_VERSION"),
        "started_at": humantime::format_rfc3339_seconds(started).to_string(),
        "duration": elapsed.as_secs_f64(),
        "exit_code": exit_code,
        "host": { "kernel": kernel.trim(), "cgroups": host.cgroups },
        "summary": summary,
        "tests": tests,
    });
    let text = serde_json::to_string_pretty(&report).map_err(std::io::Error::other)?;
    std::fs::write(path, text + "\n")
}

/// The usage figures of one test in an earlier report.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Recorded {
    /// Whether the test passed (or only broke a budget) in that run.
    pub passed: bool,
    pub memory_peak: Option<f64>,
    pub cpu_time: Option<f64>,
    pub wall_time: Option<f64>,
    pub tasks_peak: Option<f64>,
}

/// An earlier run report, by test.
#[derive(Debug, Default)]
pub struct Baseline {
    tests: HashMap<(String, String), Recorded>,
}

impl Baseline {
    /// Reads a run report written with `--report`.
    pub fn load(path: &Path) -> Result<Baseline, ReportError> {
        let text = std::fs::read_to_string(path).map_err(|source| ReportError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Baseline::parse(&text).map_err(|detail| ReportError::Invalid {
            path: path.display().to_string(),
            detail,
        })
    }

    /// Parses the text of a run report.
    pub fn parse(text: &str) -> Result<Baseline, String> {
        let value: Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
        match value["schema"].as_str() {
            Some(REPORT_SCHEMA) => {}
            Some(other) => return Err(format!("schema `{other}` is not `{REPORT_SCHEMA}`")),
            None => return Err("the `schema` field is missing".into()),
        }
        let tests = value["tests"]
            .as_array()
            .ok_or("the `tests` array is missing")?;
        let mut baseline = Baseline::default();
        for test in tests {
            let (Some(binary), Some(name)) = (test["binary_id"].as_str(), test["name"].as_str())
            else {
                continue;
            };
            let usage = &test["usage"];
            let cpu = match (usage["cpu_user"].as_f64(), usage["cpu_system"].as_f64()) {
                (Some(u), Some(s)) => Some(u + s),
                _ => None,
            };
            let passed = matches!(
                test["outcome"].as_str(),
                Some("passed" | "leaked" | "over-budget")
            );
            let recorded = Recorded {
                passed,
                memory_peak: usage["memory_peak"].as_f64(),
                cpu_time: cpu,
                wall_time: usage["wall_time"].as_f64(),
                tasks_peak: usage["tasks_peak"].as_f64(),
            };
            baseline
                .tests
                .insert((binary.to_string(), name.to_string()), recorded);
        }
        Ok(baseline)
    }

    /// Returns the recorded figures of one test.
    pub fn get(&self, binary: &str, name: &str) -> Option<&Recorded> {
        self.tests.get(&(binary.to_string(), name.to_string()))
    }

    /// Returns every test of the baseline with its figures.
    pub fn iter(&self) -> impl Iterator<Item = (&(String, String), &Recorded)> {
        self.tests.iter()
    }

    /// Compares a result with its baseline figures. A figure counts as
    /// grown when it rose by more than `threshold` (0.2 is 20%) and by more
    /// than a floor that keeps the noise of a busy machine out: 4 MiB of
    /// memory, 100 ms of time. Growth below the floors is ignored.
    pub fn compare(&self, result: &TestResult, threshold: f64) -> Vec<Growth> {
        let Some(before) = self.get(&result.binary_id, &result.name) else {
            return Vec::new();
        };
        let usage = &result.usage;
        let cpu = match (usage.cpu_user, usage.cpu_system) {
            (Some(u), Some(s)) => Some((u + s).as_secs_f64()),
            _ => None,
        };
        let rows = [
            (
                "peak memory",
                before.memory_peak,
                usage.memory_peak.map(|m| m as f64),
                MEMORY_FLOOR,
            ),
            ("CPU time", before.cpu_time, cpu, TIME_FLOOR),
            (
                "wall time",
                before.wall_time,
                usage.wall_time.map(|d| d.as_secs_f64()),
                TIME_FLOOR,
            ),
        ];
        let mut grown = Vec::new();
        for (figure, before, after, floor) in rows {
            let (Some(before), Some(after)) = (before, after) else {
                continue;
            };
            if after - before > floor && after > before * (1.0 + threshold) {
                grown.push(Growth {
                    figure,
                    before,
                    after,
                });
            }
        }
        grown
    }
}

/// Growth in memory below this many bytes is noise, for baselines and
/// suggested budgets alike.
const MEMORY_FLOOR: f64 = 4.0 * 1024.0 * 1024.0;
/// Growth in CPU or wall time below this many seconds is noise.
const TIME_FLOOR: f64 = 0.100;

/// A figure that grew past the baseline's threshold.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Growth {
    pub figure: &'static str,
    pub before: f64,
    pub after: f64,
}

impl Growth {
    /// Describes the growth: `peak memory 10.0 MiB -> 14.0 MiB (+40%)`.
    pub fn describe(&self) -> String {
        let format = |v: f64| {
            if self.figure == "peak memory" {
                mib(v as u64)
            } else {
                format!("{v:.3}s")
            }
        };
        let percent = if self.before > 0.0 {
            (self.after / self.before - 1.0) * 100.0
        } else {
            f64::INFINITY
        };
        format!(
            "{} {} -> {} (+{percent:.0}%)",
            self.figure,
            format(self.before),
            format(self.after)
        )
    }
}

/// Parses a share such as `25%` or `0.25`.
pub fn parse_share(text: &str) -> Result<f64, String> {
    let (value, percent) = match text.trim().strip_suffix('%') {
        Some(p) => (p.trim().parse::<f64>().map(|p| p / 100.0), true),
        None => (text.trim().parse::<f64>(), false),
    };
    match value {
        // A bare number above 1 is nearly always a percentage without its
        // sign ("20" for "20%"), which would mean 2000%.
        Ok(v) if !percent && v > 1.0 => Err(format!(
            "ambiguous share {text:?}: write \"{text}%\" for a percentage, or a fraction such as 0.25"
        )),
        Ok(v) if v >= 0.0 && v.is_finite() => Ok(v),
        _ => Err(format!("invalid share {text:?}: expected a percentage such as \"25%\" or a fraction such as 0.25")),
    }
}

/// Rounds a size up to whole MiB and formats it for the config file.
fn size_budget(bytes: f64) -> String {
    let mib = (bytes / (1024.0 * 1024.0)).ceil().max(1.0);
    format!("{mib}MiB")
}

/// Rounds a duration in seconds up to a round number of milliseconds.
fn time_budget(secs: f64) -> String {
    let ms = (secs * 1000.0).ceil().max(10.0);
    let step = if ms >= 1000.0 { 100.0 } else { 10.0 };
    let ms = (ms / step).ceil() * step;
    humantime::format_duration(Duration::from_millis(ms as u64)).to_string()
}

/// Adds headroom to a recorded figure: the larger of `headroom` as a share
/// and the noise floor, so a 2 ms test does not get a budget that a busy
/// machine breaks.
fn with_headroom(value: f64, headroom: f64, floor: f64) -> f64 {
    (value * (1.0 + headroom)).max(value + floor)
}

/// Writes `sandbox-test.toml` overrides that set each test's budgets to
/// its recorded usage plus `headroom` (0.25 is 25%), and at least the
/// noise floors above it (4 MiB, 100 ms, 2 tasks). Tests that failed in
/// the report get no budgets.
pub fn suggest(baseline: &Baseline, headroom: f64, profile: &str) -> String {
    let mut tests: Vec<_> = baseline.iter().collect();
    tests.sort_by(|a, b| a.0.cmp(b.0));
    let mut out = format!(
        "# Budgets suggested by `cargo sandbox-test budgets suggest` with {:.0}% headroom.\n\
         # Paste into sandbox-test.toml. Figures the host could not measure are left out.\n",
        headroom * 100.0
    );
    for ((binary, name), recorded) in tests {
        if !recorded.passed {
            continue;
        }
        let mut budgets = Vec::new();
        if let Some(m) = recorded.memory_peak {
            budgets.push(format!(
                "memory = \"{}\"",
                size_budget(with_headroom(m, headroom, MEMORY_FLOOR))
            ));
        }
        if let Some(c) = recorded.cpu_time {
            budgets.push(format!(
                "cpu-time = \"{}\"",
                time_budget(with_headroom(c, headroom, TIME_FLOOR))
            ));
        }
        if let Some(w) = recorded.wall_time {
            budgets.push(format!(
                "wall-time = \"{}\"",
                time_budget(with_headroom(w, headroom, TIME_FLOOR))
            ));
        }
        if let Some(t) = recorded.tasks_peak {
            budgets.push(format!(
                "tasks = {}",
                with_headroom(t, headroom, 2.0).ceil() as u64
            ));
        }
        if budgets.is_empty() {
            continue;
        }
        let (package, target) = match binary.split_once("::") {
            Some((p, t)) => (p, Some(t.rsplit('/').next().unwrap_or(t))),
            None => (binary.as_str(), None),
        };
        out.push_str(&format!(
            "\n[[profile.{profile}.overrides]]\npackage = {}\n",
            toml_string(package)
        ));
        if let Some(target) = target {
            out.push_str(&format!("binary = {}\n", toml_string(target)));
        }
        out.push_str(&format!(
            "test = {}\nbudgets = {{ {} }}\n",
            toml_string(name),
            budgets.join(", ")
        ));
    }
    out
}

fn toml_string(text: &str) -> String {
    let escaped = text.replace('\\', "\\\\").replace('"', "\\\"");
    format!("\"{escaped}\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPORT: &str = r#"{
      "schema": "cargo-sandbox-test/report/v1",
      "tests": [
        {"binary_id": "demo::api", "name": "small", "outcome": "passed", "usage": {"memory_peak": 10485760, "cpu_user": 0.2, "cpu_system": 0.1, "wall_time": 0.5, "tasks_peak": 3}},
        {"binary_id": "demo", "name": "lib::unmeasured", "outcome": "passed", "usage": {"memory_peak": null, "cpu_user": null, "cpu_system": null, "wall_time": 0.004, "tasks_peak": null}}
      ]
    }"#;

    #[test]
    fn baseline_reads_usage() {
        let baseline = Baseline::parse(REPORT).unwrap();
        let small = baseline.get("demo::api", "small").unwrap();
        assert_eq!(small.memory_peak, Some(10485760.0));
        assert!((small.cpu_time.unwrap() - 0.3).abs() < 1e-9);
        assert_eq!(
            baseline.get("demo", "lib::unmeasured").unwrap().memory_peak,
            None
        );
    }

    #[test]
    fn baseline_rejects_other_json() {
        let err = Baseline::parse(r#"{"tests": []}"#).unwrap_err();
        assert!(err.contains("schema"), "{err}");
        let err = Baseline::parse(r#"{"schema": "other/v9", "tests": []}"#).unwrap_err();
        assert!(err.contains("other/v9"), "{err}");
    }

    #[test]
    fn suggest_adds_headroom_and_rounds_up() {
        let baseline = Baseline::parse(REPORT).unwrap();
        let text = suggest(&baseline, 0.25, "default");
        assert!(text.contains("[[profile.default.overrides]]\npackage = \"demo\"\nbinary = \"api\"\ntest = \"small\"\n"), "{text}");
        // 10 MiB + 25% is 12.5 MiB, under the 4 MiB floor: 14 MiB.
        assert!(text.contains("memory = \"14MiB\""), "{text}");
        assert!(text.contains("cpu-time = \"400ms\""), "{text}");
        assert!(text.contains("wall-time = \"630ms\""), "{text}");
        assert!(text.contains("tasks = 5"), "{text}");
        // Only wall time was measured for the second test: 4 ms + 100 ms.
        assert!(
            text.contains("test = \"lib::unmeasured\"\nbudgets = { wall-time = \"110ms\" }"),
            "{text}"
        );
    }

    #[test]
    fn suggested_budgets_parse_as_config() {
        let baseline = Baseline::parse(REPORT).unwrap();
        let text = suggest(&baseline, 0.25, "default");
        crate::config::Config::parse(&text, Path::new("suggested.toml")).unwrap();
    }

    #[test]
    fn failed_tests_get_no_budgets() {
        let report = REPORT.replace(
            "\"outcome\": \"passed\", \"usage\": {\"memory_peak\": 10485760",
            "\"outcome\": \"failed\", \"usage\": {\"memory_peak\": 10485760",
        );
        let text = suggest(&Baseline::parse(&report).unwrap(), 0.25, "default");
        assert!(!text.contains("test = \"small\""), "{text}");
    }

    #[test]
    fn share_parsing() {
        assert_eq!(parse_share("25%").unwrap(), 0.25);
        assert_eq!(parse_share("0.5").unwrap(), 0.5);
        assert!(parse_share("-3%").is_err());
        assert!(parse_share("20").unwrap_err().contains("\"20%\""));
        assert!(parse_share("lots").unwrap_err().contains("\"lots\""));
    }
}
