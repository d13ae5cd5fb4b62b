//! End-to-end tests: the built runner against the crates in `fixtures/`,
//! with real containers and real cgroups.
//!
//! Checks that need cgroups (caps, peak memory, OOM, pids) print
//! `skipped: ...` and return when the runner reports no cgroups, as in a
//! rootless run without a delegated cgroup; CI counts those lines.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

mod common;
use common::Run;

fn runner() -> Command {
    Command::new(env!("CARGO_BIN_EXE_cargo-sandbox-test"))
}

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures/misbehave")
        .canonicalize()
        .unwrap()
}

/// Runs the runner on the misbehave fixture with JSON events.
fn run_fixture(args: &[&str]) -> Run {
    let manifest = fixture_dir().join("Cargo.toml");
    let output = runner()
        .arg("--manifest-path")
        .arg(&manifest)
        .args(["--message-format", "json"])
        .args(args)
        .env("MISBEHAVE_SECRET", "do-not-leak")
        .env("SSH_AUTH_SOCK", "/nonexistent/agent.sock")
        .output()
        .expect("failed to start the runner");
    Run::from_output(output)
}

fn skip_without_cgroups(run: &Run, what: &str) -> bool {
    if run.has_cgroups() {
        return false;
    }
    println!("skipped: {what} needs cgroups, and this run has none");
    true
}

/// Returns the command lines of host processes that mention `marker`.
fn host_processes_with(marker: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmdline) = fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if text.contains(marker) && !text.contains("cargo-sandbox-test") {
            found.push(text);
        }
    }
    found
}

#[test]
fn verdicts_match_libtest() {
    let run = run_fixture(&["--test", "verdicts"]);
    assert_eq!(run.code, 100, "{}", run.stderr);
    assert_eq!(run.outcome("passes"), "passed");
    assert_eq!(run.outcome("fails_assertion"), "failed");
    assert_eq!(run.outcome("panics"), "failed");
    assert_eq!(run.outcome("ignored"), "ignored");
    assert_eq!(run.result("fails_assertion")["exit"]["code"], 101);
    let stderr = run.result("fails_assertion")["stderr"].as_str().unwrap();
    assert!(stderr.contains("arithmetic is broken"), "{stderr}");
    let stdout = run.result("passes")["stdout"].as_str().unwrap();
    assert!(stdout.contains("verdicts: passes printed this"), "{stdout}");
}

#[test]
fn passing_run_exits_zero() {
    let run = run_fixture(&["--test", "verdicts", "--exact", "passes"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.finished().count(), 1);
    let first = &run.events[0];
    assert_eq!(first["event"], "run-started");
    assert_eq!(first["schema"], "cargo-sandbox-test/events/v1");
    let last = run.events.last().unwrap();
    assert_eq!(last["event"], "run-finished");
    assert_eq!(last["summary"]["passed"], 1);
}

#[test]
fn usage_is_reported_per_test() {
    let run = run_fixture(&["--test", "verdicts", "--exact", "passes"]);
    let usage = &run.result("passes")["usage"];
    assert!(usage["wall_time"].as_f64().unwrap() > 0.0);
    assert!(usage["cpu_user"].is_number() || usage["cpu_user"].is_null());
    assert_eq!(usage["leaked"], 0);
    if skip_without_cgroups(&run, "peak memory and tasks") {
        return;
    }
    assert!(usage["memory_peak"].as_u64().unwrap() > 0);
    assert!(usage["tasks_peak"].as_u64().unwrap() >= 1);
    assert_eq!(usage["oom_kills"], 0);
}

#[test]
fn hung_tests_time_out() {
    let run = run_fixture(&[
        "--test",
        "hang",
        "--ignored",
        "--timeout",
        "1s",
        "--kill-grace",
        "500ms",
    ]);
    assert_eq!(run.code, 100, "{}", run.stderr);
    assert_eq!(run.outcome("hangs_forever"), "timed-out");
    assert_eq!(run.outcome("ignores_sigterm_and_hangs"), "timed-out");
    // SIGTERM is forwarded by init: the plain hang dies of it before the
    // grace period ends; the one ignoring SIGTERM is killed after it.
    let ignoring = &run.result("ignores_sigterm_and_hangs")["usage"]["container_time"];
    assert!(ignoring.as_f64().unwrap() >= 1.5, "{ignoring}");
    assert!(ignoring.as_f64().unwrap() < 10.0, "{ignoring}");
}

#[test]
fn test_is_not_pid_1_for_signals() {
    let run = run_fixture(&[
        "--test",
        "hang",
        "--ignored",
        "--exact",
        "sigterm_to_self_kills",
    ]);
    let result = run.result("sigterm_to_self_kills");
    assert_eq!(result["outcome"], "signaled", "{}", run.stderr);
    assert_eq!(result["exit"]["signal"], 15);
    assert_eq!(result["exit"]["signal_name"], "SIGTERM");
}

#[test]
fn oom_kill_is_named() {
    let run = run_fixture(&[
        "--test",
        "memory",
        "--include-ignored",
        "--memory",
        "128MiB",
        "grows_until_killed",
        "stays_small",
    ]);
    if skip_without_cgroups(&run, "the OOM check") {
        return;
    }
    let result = run.result("grows_until_killed");
    assert_eq!(result["outcome"], "oom-killed", "{}", run.stderr);
    let peak = result["usage"]["memory_peak"].as_u64().unwrap();
    assert!(peak >= 120 << 20, "peak {peak}");
    assert!(peak <= 128 << 20, "peak {peak}");
    assert!(result["usage"]["oom_kills"].as_u64().unwrap() >= 1);
    let stderr = result["stderr"].as_str().unwrap();
    assert!(stderr.contains("memory: holding 16 MiB"), "{stderr}");
    assert_eq!(run.outcome("stays_small"), "passed");
    let small = run.result("stays_small")["usage"]["memory_peak"]
        .as_u64()
        .unwrap();
    assert!(small < 100 << 20, "stays_small peak {small}");
}

#[test]
fn short_spike_is_the_peak() {
    let run = run_fixture(&["--test", "memory", "--exact", "spike_of_200_mib_then_idle"]);
    assert_eq!(
        run.outcome("spike_of_200_mib_then_idle"),
        "passed",
        "{}",
        run.stderr
    );
    if skip_without_cgroups(&run, "the peak memory check") {
        return;
    }
    let peak = run.result("spike_of_200_mib_then_idle")["usage"]["memory_peak"]
        .as_u64()
        .unwrap() as f64;
    let expected = (200u64 << 20) as f64;
    assert!(peak >= expected * 0.85, "peak {peak}");
    assert!(peak <= expected * 1.15, "peak {peak}");
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn fork_loop_hits_pids_cap() {
    let run = run_fixture(&[
        "--test",
        "fork",
        "--ignored",
        "--exact",
        "wide_fork_loop",
        "--pids",
        "64",
    ]);
    if !run.has_cgroups() && !is_root() {
        // Without a pids cgroup the cap is RLIMIT_NPROC, counted per user
        // namespace: the fork loop still stops, as a plain failure.
        let result = run.result("wide_fork_loop");
        assert_eq!(result["outcome"], "failed", "{}", run.stderr);
        let stderr = result["stderr"].as_str().unwrap();
        assert!(
            stderr.contains("Resource temporarily unavailable"),
            "{stderr}"
        );
        assert!(run.stderr.contains("RLIMIT_NPROC"), "{}", run.stderr);
        return;
    }
    if skip_without_cgroups(&run, "the pids cap") {
        return;
    }
    let result = run.result("wide_fork_loop");
    assert_eq!(result["outcome"], "pids-limit", "{}", run.stderr);
    assert!(result["usage"]["pids_limit_hits"].as_u64().unwrap() > 0);
    if let Some(peak) = result["usage"]["tasks_peak"].as_u64() {
        assert_eq!(peak, 64);
    }
    let stderr = result["stderr"].as_str().unwrap();
    assert!(stderr.contains("spawn failed after"), "{stderr}");
    assert!(host_processes_with("sleep 3604").is_empty());
}

#[test]
fn leaked_processes_are_reported_and_killed() {
    let run = run_fixture(&["--test", "leak"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    for name in [
        "background_child_holds_stdout",
        "session_daemon_outlives_test",
    ] {
        let result = run.result(name);
        assert_eq!(result["outcome"], "leaked", "{name}");
        assert!(result["usage"]["leaked"].as_u64().unwrap() >= 1, "{name}");
        // The verdict does not wait for the hour-long sleeper to close
        // the pipe it holds.
        assert!(
            result["usage"]["container_time"].as_f64().unwrap() < 5.0,
            "{name}"
        );
    }
    let stdout = run.result("background_child_holds_stdout")["stdout"]
        .as_str()
        .unwrap();
    assert!(stdout.contains("leak: test body done"), "{stdout}");
    assert_eq!(run.outcome("child_exits_during_grace"), "passed");
    assert!(host_processes_with("sleep 3601").is_empty());
    assert!(host_processes_with("sleep 3603").is_empty());
}

#[test]
fn fail_on_leak_fails_the_run() {
    let run = run_fixture(&["--test", "leak", "--fail-on-leak", "session_daemon"]);
    assert_eq!(run.code, 100, "{}", run.stderr);
    let result = run.result("session_daemon_outlives_test");
    assert_eq!(result["outcome"], "leaked");
    assert_eq!(result["failed"], true);
}

#[test]
fn daemon_dies_with_timed_out_test() {
    let run = run_fixture(&[
        "--test",
        "leak",
        "--ignored",
        "--exact",
        "session_daemon_then_hang",
        "--timeout",
        "1s",
    ]);
    assert_eq!(
        run.outcome("session_daemon_then_hang"),
        "timed-out",
        "{}",
        run.stderr
    );
    assert!(host_processes_with("sleep 3602").is_empty());
}

#[test]
fn writes_stay_in_the_container() {
    let run = run_fixture(&[
        "--test",
        "isolation",
        "--ignored",
        "--exact",
        "writes_everywhere",
    ]);
    assert_eq!(
        run.outcome("writes_everywhere"),
        "passed",
        "{}",
        run.result("writes_everywhere")
    );
    let marker = "misbehave-isolation-marker";
    for dir in [
        fixture_dir(),
        PathBuf::from("/etc"),
        PathBuf::from("/usr/local/share"),
        PathBuf::from("/tmp"),
    ] {
        assert!(
            !dir.join(marker).exists(),
            "{} reached the host",
            dir.join(marker).display()
        );
    }
    assert!(
        fixture_dir().join("Cargo.toml").exists(),
        "deleting Cargo.toml reached the host"
    );
}

#[test]
fn isolation_checks_pass_inside() {
    let run = run_fixture(&["--test", "isolation"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    for name in [
        "is_not_pid_1_and_sees_own_processes",
        "host_credentials_are_hidden",
        "home_and_tmp_are_writable",
        "cargo_environment_is_set",
        "no_capabilities",
        "no_nested_user_namespace",
        "hosts_file_is_read_only",
        "host_kernel_files_are_read_only",
        "only_standard_fds_are_open",
        "kernel_keyrings_are_out_of_reach",
        "runner_command_line_is_hidden",
    ] {
        assert_eq!(run.outcome(name), "passed", "{name}: {}", run.result(name));
    }
}

#[test]
fn loopback_only_and_ports_private() {
    // The host listens on the fixed port too, and each container has its own.
    let _held = std::net::TcpListener::bind("127.0.0.1:18080");
    let run = run_fixture(&["--test", "net", "-j", "2"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    for name in [
        "tcp_over_ipv4_loopback",
        "tcp_over_ipv6_loopback",
        "udp_over_ipv4_loopback",
        "fixed_port_first",
        "fixed_port_second",
        "only_loopback_exists",
        "hostname_resolves_offline",
    ] {
        assert_eq!(run.outcome(name), "passed", "{name}: {}", run.result(name));
    }
}

#[test]
fn output_flood_is_truncated() {
    let run = run_fixture(&["--test", "flood", "--ignored", "--max-output", "64KiB"]);
    let result = run.result("floods_stdout");
    assert_eq!(result["outcome"], "passed", "{}", run.stderr);
    assert!(result["stdout_truncated_bytes"].as_u64().unwrap() > 60 << 20);
    let stdout = result["stdout"].as_str().unwrap();
    assert!(stdout.len() < 128 << 10);
    assert!(stdout.contains("bytes of output truncated"));
    // The tail is kept: the last line the test printed, then libtest's own.
    assert!(
        stdout.contains("flood: last line"),
        "{}",
        &stdout[stdout.len() - 200..]
    );
}

#[test]
fn nested_cargo_builds_offline() {
    let run = run_fixture(&["--test", "nested_cargo"]);
    let result = run.result("builds_scratch_crate_offline");
    assert_eq!(result["outcome"], "passed", "{result}");
}

#[test]
fn per_binary_mode_keeps_verdicts() {
    let run = run_fixture(&["--test", "verdicts", "--per-binary"]);
    assert_eq!(run.code, 100, "{}", run.stderr);
    assert_eq!(run.outcome("passes"), "passed");
    assert_eq!(run.outcome("fails_assertion"), "failed");
    assert_eq!(run.outcome("panics"), "failed");
    assert_eq!(run.outcome("ignored"), "ignored");
    let stdout = run.result("panics")["stdout"].as_str().unwrap();
    assert!(
        stdout.contains("panicked on purpose")
            || run.result("panics")["stderr"]
                .as_str()
                .unwrap()
                .contains("panicked on purpose")
    );
}

#[test]
fn list_prints_plan_without_running() {
    let output = runner()
        .arg("--manifest-path")
        .arg(fixture_dir().join("Cargo.toml"))
        .args(["--list", "--test", "verdicts"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("misbehave::verdicts passes\n"), "{stdout}");
    assert!(
        stdout.contains("misbehave::verdicts ignored (ignored)\n"),
        "{stdout}"
    );
}

#[test]
fn filters_follow_libtest() {
    let run = run_fixture(&["--test", "verdicts", "--skip", "panics", "--", "pa"]);
    let names: Vec<&str> = run
        .finished()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["passes"]);
}

#[test]
fn build_failure_exits_101() {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir(dir.path().join("src")).unwrap();
    fs::write(
        dir.path().join("Cargo.toml"),
        "[package]\nname = \"broken\"\nversion = \"0.1.0\"\nedition = \"2021\"\n[workspace]\n",
    )
    .unwrap();
    fs::write(
        dir.path().join("src/lib.rs"),
        "pub fn f() -> u32 { \"not a number\" }\n",
    )
    .unwrap();
    let output = runner()
        .arg("--manifest-path")
        .arg(dir.path().join("Cargo.toml"))
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(101));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("mismatched types"), "{stderr}");
    assert!(stderr.contains("build failed"), "{stderr}");
}

#[test]
fn invalid_flag_value_names_the_fix() {
    let output = runner().args(["--memory", "12XB"]).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("12XB"), "{stderr}");
}

#[test]
fn staging_failure_is_a_setup_error() {
    let output = runner()
        .arg("--manifest-path")
        .arg(fixture_dir().join("Cargo.toml"))
        .args(["--test", "verdicts"])
        .env("TMPDIR", "/proc/version")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(102));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("/proc/version"), "{stderr}");
    assert!(!stderr.contains("PASS"), "{stderr}");
}

#[test]
fn interrupt_stops_every_container() {
    let mut child = runner()
        .arg("--manifest-path")
        .arg(fixture_dir().join("Cargo.toml"))
        .args([
            "--message-format",
            "json",
            "--test",
            "hang",
            "--ignored",
            "--exact",
            "hangs_forever",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    let stdout = child.stdout.take().unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stdout));
    for line in lines.by_ref() {
        if line.unwrap().contains("\"test-started\"") {
            break;
        }
    }
    std::thread::sleep(Duration::from_millis(200));
    // SAFETY: kill(2) on the pid of a child this test started.
    unsafe { libc::kill(pid, libc::SIGINT) };
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    let finished = rest
        .iter()
        .find(|l| l.contains("\"test-finished\""))
        .expect("a result for the test");
    let event: Value = serde_json::from_str(finished).unwrap();
    assert_eq!(event["outcome"], "cancelled");
    let cgroup_dirs = fs::read_dir("/sys/fs/cgroup/pids")
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy() == format!("cargo-sandbox-test.{pid}"))
                .count()
        })
        .unwrap_or(0);
    assert_eq!(cgroup_dirs, 0, "the run's cgroup was left behind");
    let prefix = format!("cargo-sandbox-test.{pid}.");
    let staging_left = fs::read_dir(std::env::temp_dir())
        .unwrap()
        .flatten()
        .any(|e| e.file_name().to_string_lossy().starts_with(&prefix));
    assert!(!staging_left, "the run's staging directory was left behind");
}

#[test]
fn stale_cgroups_of_crashed_runs_are_removed() {
    let probe = run_fixture(&["--test", "verdicts", "--exact", "passes"]);
    if skip_without_cgroups(&probe, "stale cgroup removal") {
        return;
    }
    let pids_root = own_cgroup_dir("pids");
    // A pid that cannot be alive: above the kernel's pid_max limit.
    let stale = pids_root.join("cargo-sandbox-test.99999999");
    fs::create_dir(&stale).unwrap();
    fs::create_dir(stale.join("t1")).unwrap();
    let run = run_fixture(&["--test", "verdicts", "--exact", "passes"]);
    assert_eq!(run.code, 0);
    assert!(!stale.exists(), "{} was left behind", stale.display());
}

/// Returns this process's cgroup directory of a v1 controller.
fn own_cgroup_dir(controller: &str) -> PathBuf {
    let text = fs::read_to_string("/proc/self/cgroup").unwrap();
    let path = text
        .lines()
        .find_map(|l| {
            let mut parts = l.splitn(3, ':');
            let _ = parts.next();
            let names = parts.next()?;
            let path = parts.next()?;
            names
                .split(',')
                .any(|n| n == controller)
                .then(|| path.to_string())
        })
        .unwrap_or_else(|| "/".into());
    Path::new("/sys/fs/cgroup")
        .join(controller)
        .join(path.trim_start_matches('/'))
}

#[test]
fn missing_cgroups_warn_or_fail() {
    let run = run_fixture(&["--test", "verdicts", "--exact", "passes"]);
    if run.has_cgroups() {
        let strict = run_fixture(&[
            "--test",
            "verdicts",
            "--exact",
            "passes",
            "--require-cgroups",
        ]);
        assert_eq!(strict.code, 0, "{}", strict.stderr);
        assert!(!run.stderr.contains("no usable cgroup"), "{}", run.stderr);
        return;
    }
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stderr.contains("warning: no usable cgroup for"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("fix: run as root"), "{}", run.stderr);
    let usage = &run.result("passes")["usage"];
    assert!(usage["memory_peak"].is_null());
    assert!(usage["tasks_peak"].is_null());
    assert!(
        usage["cpu_user"].is_number(),
        "CPU time falls back to wait4"
    );
    let strict = run_fixture(&[
        "--test",
        "verdicts",
        "--exact",
        "passes",
        "--require-cgroups",
    ]);
    assert_eq!(strict.code, 102, "{}", strict.stderr);
    assert!(
        strict.stderr.contains("--require-cgroups"),
        "{}",
        strict.stderr
    );
}

#[test]
fn no_cgroups_flag_reports_unavailable() {
    let run = run_fixture(&["--test", "verdicts", "--exact", "passes", "--no-cgroups"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(!run.has_cgroups());
    let usage = &run.result("passes")["usage"];
    assert!(usage["memory_peak"].is_null(), "{usage}");
    assert!(usage["oom_kills"].is_null(), "{usage}");
    assert!(usage["cpu_user"].is_number(), "{usage}");
    assert!(usage["max_rss"].as_u64().unwrap() > 0, "{usage}");
}

#[test]
fn read_only_fallback_without_overlay() {
    let run = run_fixture(&["--test", "isolation", "--include-ignored", "--no-overlay"]);
    assert_eq!(
        run.outcome("home_and_tmp_are_writable"),
        "passed",
        "{}",
        run.stderr
    );
    assert_eq!(run.outcome("is_not_pid_1_and_sees_own_processes"), "passed");
    let writes = run.result("writes_everywhere");
    assert_eq!(writes["outcome"], "failed");
    let stderr = writes["stderr"].as_str().unwrap();
    assert!(stderr.contains("Read-only file system"), "{stderr}");
    assert!(!fixture_dir().join("misbehave-isolation-marker").exists());
}

#[test]
fn cargo_credentials_are_masked() {
    // A CARGO_HOME the container shows as it is (inside the workspace),
    // holding a registry token.
    let home = fixture_dir().join("target/fake-cargo-home");
    fs::create_dir_all(home.join("bin")).unwrap();
    fs::write(
        home.join("credentials.toml"),
        "[registry]\ntoken = \"secret-token\"\n",
    )
    .unwrap();
    fs::write(
        home.join("config.toml"),
        "[registries.private]\ntoken = \"secret-token\"\n",
    )
    .unwrap();
    let output = runner()
        .arg("--manifest-path")
        .arg(fixture_dir().join("Cargo.toml"))
        .args([
            "--message-format",
            "json",
            "--test",
            "isolation",
            "cargo_credentials_are_hidden",
        ])
        .env("CARGO_HOME", &home)
        .output()
        .unwrap();
    let run = Run::from_output(output);
    let result = run.result("cargo_credentials_are_hidden");
    assert_eq!(result["outcome"], "passed", "{result}");
}

#[test]
fn custom_harness_runs_as_one_test() {
    let run = run_fixture(&["--test", "plain"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let result = run.result("plain");
    assert_eq!(result["outcome"], "passed");
    let stdout = result["stdout"].as_str().unwrap();
    assert!(stdout.contains("plain: ran with []"), "{stdout}");
    // Listing ran the binary too, but in a container as well.
    assert!(!fixture_dir().join("misbehave-plain-marker").exists());
}

#[test]
fn no_matching_test_fails_the_run() {
    let run = run_fixture(&["--test", "verdicts", "no_such_test_name"]);
    assert_eq!(run.code, 4, "{}", run.stderr);
    assert!(run.stderr.contains("no test matched"), "{}", run.stderr);
    let warn = run_fixture(&[
        "--test",
        "verdicts",
        "no_such_test_name",
        "--no-tests",
        "warn",
    ]);
    assert_eq!(warn.code, 0, "{}", warn.stderr);
}

#[test]
fn group_kill_stays_in_its_container() {
    let run = run_fixture(&["--test", "pgrp", "--ignored", "-j", "2"]);
    assert_eq!(
        run.outcome("kills_own_process_group"),
        "signaled",
        "{}",
        run.stderr
    );
    assert_eq!(run.outcome("neighbour_sleeps"), "passed", "{}", run.stderr);
    assert_eq!(run.code, 100, "{}", run.stderr);
}

#[test]
fn per_binary_rejects_forged_verdicts() {
    let run = run_fixture(&["--test", "spoof", "--ignored", "--per-binary"]);
    assert_eq!(run.code, 100, "{}", run.stderr);
    assert_eq!(run.outcome("fails_for_real"), "failed", "{}", run.stderr);
}

#[test]
fn refused_overlay_falls_back_to_binds() {
    if !is_root() {
        println!("skipped: stacking overlays for this check needs root");
        return;
    }
    // The fixture seen through two stacked overlays, in a private mount
    // namespace: the runner's own overlay over it would be a third level,
    // which the kernel refuses (as in a container inside a container).
    let parent = fixture_dir().parent().unwrap().to_path_buf();
    let script = r#"
        set -e
        base=$(mktemp -d)
        mount -t tmpfs stack "$base"
        mkdir -p "$base/u1" "$base/w1" "$base/m1" "$base/u2" "$base/w2" "$base/m2"
        mount -t overlay stack1 -o "lowerdir=$1,upperdir=$base/u1,workdir=$base/w1" "$base/m1"
        mount -t overlay stack2 -o "lowerdir=$base/m1,upperdir=$base/u2,workdir=$base/w2" "$base/m2"
        exec "$2" --manifest-path "$base/m2/misbehave/Cargo.toml" --test verdicts --exact passes --message-format json
    "#;
    let output = Command::new("unshare")
        .args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            script,
            "stack",
        ])
        .arg(&parent)
        .arg(env!("CARGO_BIN_EXE_cargo-sandbox-test"))
        .output()
        .unwrap();
    let run = Run::from_output(output);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stderr.contains("warning: overlayfs refused"),
        "{}",
        run.stderr
    );
    assert_eq!(run.outcome("passes"), "passed");
}

/// Writes a one-package workspace into a temp dir: the given `build.rs`
/// (if any) and `tests/t.rs`.
fn scratch_crate(build_rs: Option<&str>, test_rs: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir_all(dir.path().join("src")).unwrap();
    fs::create_dir_all(dir.path().join("tests")).unwrap();
    fs::write(
        dir.path().join("Cargo.toml"),
        "[package]\nname = \"scratch\"\nversion = \"0.1.0\"\nedition = \"2021\"\n[workspace]\n",
    )
    .unwrap();
    fs::write(dir.path().join("src/lib.rs"), "").unwrap();
    if let Some(build) = build_rs {
        fs::write(dir.path().join("build.rs"), build).unwrap();
    }
    fs::write(dir.path().join("tests/t.rs"), test_rs).unwrap();
    dir
}

#[test]
fn sigterm_during_build_stops_cargo() {
    // The build script takes 20 s, so the signal lands mid-build.
    let build = "fn main() { std::thread::sleep(std::time::Duration::from_secs(20)); }\n";
    let dir = scratch_crate(Some(build), "#[test]\nfn passes() {}\n");
    let mut child = runner()
        .arg("--manifest-path")
        .arg(dir.path().join("Cargo.toml"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    // SAFETY: kill(2) on the pid of a child this test started.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let started = std::time::Instant::now();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "the runner waited for the build"
    );
    let marker = dir.path().display().to_string();
    assert!(
        host_processes_with(&marker).is_empty(),
        "cargo or its build script still runs"
    );
}

#[test]
fn listing_runs_under_the_memory_cap() {
    // A static constructor that allocates 400 MiB when the binary lists its
    // tests: it runs before main, in every process of the binary.
    let test = r#"
#[used]
#[link_section = ".init_array"]
static GROW: extern "C" fn() = grow;
extern "C" fn grow() {
    if std::env::args().any(|a| a == "--list") {
        let mut v = vec![0u8; 400 << 20];
        for i in (0..v.len()).step_by(4096) { v[i] = 1; }
        std::hint::black_box(&v);
    }
}
#[test]
fn passes() {}
"#;
    let dir = scratch_crate(None, test);
    let probe = run_fixture(&["--test", "verdicts", "--exact", "passes"]);
    let output = runner()
        .arg("--manifest-path")
        .arg(dir.path().join("Cargo.toml"))
        .args(["--memory", "128MiB"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !probe.has_cgroups() {
        println!("skipped: the memory cap of listing needs cgroups");
        return;
    }
    assert_eq!(output.status.code(), Some(104), "{stderr}");
    assert!(stderr.contains("failed to list the tests"), "{stderr}");
}
