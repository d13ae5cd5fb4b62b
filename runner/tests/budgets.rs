//! End-to-end tests of budgets, configuration and report files, on the
//! `examples/budgets` workspace.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

mod common;
use common::Run;

fn example_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/budgets")
        .canonicalize()
        .unwrap()
}

fn run_in(dir: &Path, args: &[&str]) -> Run {
    let output = Command::new(env!("CARGO_BIN_EXE_cargo-sandbox-test"))
        .arg("--manifest-path")
        .arg(dir.join("Cargo.toml"))
        .args(["--message-format", "json"])
        .args(args)
        .output()
        .unwrap();
    Run::from_output(output)
}

/// Copies the example workspace (without its target dir) so a test can
/// change its config file.
fn copy_example() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let source = example_dir();
    for name in ["Cargo.toml", "sandbox-test.toml"] {
        fs::copy(source.join(name), dir.path().join(name)).unwrap();
    }
    for sub in ["src", "tests"] {
        fs::create_dir(dir.path().join(sub)).unwrap();
        for entry in fs::read_dir(source.join(sub)).unwrap().flatten() {
            fs::copy(entry.path(), dir.path().join(sub).join(entry.file_name())).unwrap();
        }
    }
    dir
}

#[test]
fn example_gives_documented_verdicts() {
    let run = run_in(&example_dir(), &[]);
    assert_eq!(run.code, 100, "{}", run.stderr);
    assert_eq!(run.result("within_budget")["outcome"], "passed");
    let cpu = run.result("over_cpu_budget");
    assert_eq!(cpu["outcome"], "over-budget");
    assert_eq!(cpu["budget_breaches"][0]["figure"], "cpu-time");
    assert_eq!(cpu["budgets"]["cpu_time"], 0.15);
    let memory = run.result("over_memory_budget");
    if run.has_cgroups() {
        assert_eq!(memory["outcome"], "over-budget");
        assert_eq!(memory["budget_breaches"][0]["figure"], "memory");
        let message = memory["budget_breaches"][0]["message"].as_str().unwrap();
        assert!(message.starts_with("peak memory 9"), "{message}");
        assert!(message.ends_with("> budget 64.0 MiB"), "{message}");
    } else {
        println!("skipped: the memory budget needs cgroups; checking it is unchecked instead");
        assert_eq!(memory["outcome"], "passed");
        assert_eq!(memory["budgets_unchecked"][0], "memory");
    }
}

#[test]
fn warn_mode_reports_without_failing() {
    let run = run_in(&example_dir(), &["--budgets", "warn"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let cpu = run.result("over_cpu_budget");
    assert_eq!(cpu["outcome"], "passed");
    assert_eq!(cpu["budget_breaches"][0]["figure"], "cpu-time");
}

#[test]
fn config_profile_and_flags_resolve() {
    let run = run_in(
        &example_dir(),
        &[
            "--config-profile",
            "ci",
            "--memory",
            "256MiB",
            "within_budget",
        ],
    );
    let result = run.result("within_budget");
    assert_eq!(result["timeout"], 10.0, "the ci profile sets 10s");
    assert_eq!(
        result["caps"]["memory"],
        256u64 << 20,
        "the flag wins over the file"
    );
    assert_eq!(
        result["budgets"]["memory"],
        64u64 << 20,
        "ci inherits the default budgets"
    );
}

#[test]
fn report_validates_against_schema() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("report.json");
    let run = run_in(&example_dir(), &["--report", path.to_str().unwrap()]);
    assert_eq!(run.code, 100, "{}", run.stderr);
    let report: Value = serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
    let schema_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/report-schema.json");
    let schema: Value = serde_json::from_str(&fs::read_to_string(schema_path).unwrap()).unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let errors: Vec<String> = validator
        .iter_errors(&report)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "{errors:#?}");
    // Without cgroups the memory budget is unchecked, so one fewer fails.
    let over = if run.has_cgroups() { 2 } else { 1 };
    assert_eq!(report["summary"]["passed"], 3 - over);
    assert_eq!(report["summary"]["failed"], over);
    assert_eq!(report["exit_code"], 100);
    // The event stream carries the same fields for each test.
    let event = run.result("within_budget");
    let keys = |v: &Value| {
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.retain(|k| k != "event");
        k.sort();
        k
    };
    let in_report = report["tests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "within_budget")
        .unwrap();
    assert_eq!(keys(event), keys(in_report));
}

#[test]
fn junit_is_valid_xml_with_usage() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("junit.xml");
    let run = run_in(&example_dir(), &["--junit", path.to_str().unwrap()]);
    assert_eq!(run.code, 100, "{}", run.stderr);
    let text = fs::read_to_string(&path).unwrap();
    let doc = roxmltree::Document::parse(&text).unwrap();
    let root = doc.root_element();
    assert_eq!(root.tag_name().name(), "testsuites");
    assert_eq!(root.attribute("tests"), Some("3"));
    let over = if run.has_cgroups() { "2" } else { "1" };
    assert_eq!(root.attribute("failures"), Some(over));
    let case = doc
        .descendants()
        .find(|n| n.has_tag_name("testcase") && n.attribute("name") == Some("over_cpu_budget"))
        .unwrap();
    let failure = case
        .children()
        .find(|n| n.has_tag_name("failure"))
        .expect("a failure element");
    assert!(
        failure.attribute("message").unwrap().contains("CPU time"),
        "{failure:?}"
    );
    let names: Vec<&str> = case
        .descendants()
        .filter(|n| n.has_tag_name("property"))
        .filter_map(|n| n.attribute("name"))
        .collect();
    for expected in [
        "wall-time-seconds",
        "cpu-user-seconds",
        "memory-peak-bytes",
        "budget-cpu-time-seconds",
    ] {
        assert!(
            names.contains(&expected),
            "{expected} missing from {names:?}"
        );
    }
}

#[test]
fn baseline_flags_growth() {
    let dir = tempfile::tempdir().unwrap();
    let first = dir.path().join("first.json");
    run_in(
        &example_dir(),
        &["--budgets", "warn", "--report", first.to_str().unwrap()],
    );
    // Pretend the earlier run used a quarter of the memory and time.
    let mut report: Value = serde_json::from_str(&fs::read_to_string(&first).unwrap()).unwrap();
    for test in report["tests"].as_array_mut().unwrap() {
        for key in ["memory_peak", "cpu_user", "cpu_system", "wall_time"] {
            if let Some(v) = test["usage"][key].as_f64() {
                test["usage"][key] = serde_json::json!(v / 4.0);
            }
        }
    }
    let baseline = dir.path().join("baseline.json");
    fs::write(&baseline, serde_json::to_string(&report).unwrap()).unwrap();
    let args = [
        "--budgets",
        "warn",
        "--baseline",
        baseline.to_str().unwrap(),
    ];
    let run = run_in(&example_dir(), &args);
    assert_eq!(run.code, 0, "growth alone does not fail: {}", run.stderr);
    let grown = &run.result("over_cpu_budget")["baseline_growth"];
    assert!(
        grown
            .as_array()
            .unwrap()
            .iter()
            .any(|g| g["figure"] == "CPU time"),
        "{grown}"
    );
    let failing = run_in(&example_dir(), &[&args[..], &["--fail-on-growth"]].concat());
    assert_eq!(failing.code, 100, "{}", failing.stderr);
}

#[test]
fn suggested_budgets_load_as_config() {
    let dir = copy_example();
    let report = dir.path().join("report.json");
    run_in(dir.path(), &["--report", report.to_str().unwrap()]);
    let output = Command::new(env!("CARGO_BIN_EXE_cargo-sandbox-test"))
        .args([
            "budgets",
            "suggest",
            "--from",
            report.to_str().unwrap(),
            "--headroom",
            "50%",
        ])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let suggested = String::from_utf8(output.stdout).unwrap();
    assert!(
        suggested.contains("test = \"over_cpu_budget\""),
        "{suggested}"
    );
    fs::write(dir.path().join("sandbox-test.toml"), &suggested).unwrap();
    let run = run_in(dir.path(), &["--budgets", "warn"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
}

#[test]
fn broken_config_names_file_line_and_key() {
    let dir = copy_example();
    fs::write(
        dir.path().join("sandbox-test.toml"),
        "[profile.default]\ntimeout = \"30s\"\nmemroy = \"1GiB\"\n",
    )
    .unwrap();
    let run = run_in(dir.path(), &[]);
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("sandbox-test.toml:3"), "{}", run.stderr);
    assert!(run.stderr.contains("memroy"), "{}", run.stderr);
    assert!(
        run.events.iter().all(|e| e["event"] != "test-finished"),
        "a test ran"
    );
}

#[test]
fn unknown_profile_is_a_usage_error() {
    let run = run_in(&example_dir(), &["--config-profile", "nightly"]);
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("nightly"), "{}", run.stderr);
    assert!(run.stderr.contains("default, ci"), "{}", run.stderr);
}

#[test]
fn budgets_without_cgroups_are_unchecked() {
    let run = run_in(&example_dir(), &["--no-cgroups"]);
    assert_eq!(
        run.code, 100,
        "the CPU budget is still checked: {}",
        run.stderr
    );
    let memory = run.result("over_memory_budget");
    assert_eq!(
        memory["outcome"], "passed",
        "an unchecked budget is not a breach"
    );
    let unchecked: Vec<&str> = memory["budgets_unchecked"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert_eq!(unchecked, ["memory", "tasks"]);
    assert_eq!(run.result("over_cpu_budget")["outcome"], "over-budget");
    assert!(run.stderr.is_empty() || !run.stderr.contains("within_budget: memory"));
}
