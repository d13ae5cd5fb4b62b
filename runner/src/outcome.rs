//! Measuring and judging: the usage figures of one test and the outcome
//! they and the exit status give.

use std::time::Duration;

use crate::cgroup::CgroupUsage;
use crate::container::{Rusage, SetupError, TestExit};
use crate::supervise::Phases;

/// The verdict on one test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    Passed,
    /// Passed, but left processes running when it ended.
    Leaked,
    Failed,
    Ignored,
    TimedOut,
    OomKilled,
    /// Killed by a signal (not a timeout or the OOM killer).
    Signaled,
    /// Failed after a fork or clone hit the pids cap.
    PidsLimit,
    /// The container could not be built; the test did not run.
    SetupFailed,
    /// The run was interrupted before the test finished.
    Cancelled,
    /// Passed, but its usage exceeded a budget.
    OverBudget,
}

impl Outcome {
    /// Returns whether this outcome fails the run.
    pub fn is_failure(self, fail_on_leak: bool) -> bool {
        match self {
            Outcome::Passed | Outcome::Ignored => false,
            Outcome::Leaked => fail_on_leak,
            _ => true,
        }
    }

    /// Returns the status word of the terminal line.
    pub fn label(self, fail_on_leak: bool) -> &'static str {
        match self {
            Outcome::Passed => "PASS",
            Outcome::Leaked if fail_on_leak => "LEAK-FAIL",
            Outcome::Leaked => "LEAK",
            Outcome::Failed => "FAIL",
            Outcome::Ignored => "IGNORED",
            Outcome::TimedOut => "TIMEOUT",
            Outcome::OomKilled => "OOM",
            Outcome::Signaled => "SIGNAL",
            Outcome::PidsLimit => "PIDS-MAX",
            Outcome::SetupFailed => "SETUP",
            Outcome::Cancelled => "CANCEL",
            Outcome::OverBudget => "BUDGET",
        }
    }
}

/// The resource usage of one test. `None` means the host could not measure
/// the figure, never zero.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Usage {
    /// Wall time of the test process, from fork to exit.
    #[serde(with = "opt_secs")]
    pub wall_time: Option<Duration>,
    /// Wall time of the whole container, from spawn request to teardown.
    #[serde(with = "opt_secs")]
    pub container_time: Option<Duration>,
    #[serde(with = "opt_secs")]
    pub cpu_user: Option<Duration>,
    #[serde(with = "opt_secs")]
    pub cpu_system: Option<Duration>,
    /// Peak memory of the cgroup in bytes (the kernel's high-water mark).
    pub memory_peak: Option<u64>,
    /// Peak resident set of the largest process, from `wait4`, in bytes.
    pub max_rss: Option<u64>,
    pub tasks_peak: Option<u64>,
    pub oom_kills: Option<u64>,
    pub pids_limit_hits: Option<u64>,
    /// Processes still running when the test ended, killed at teardown.
    pub leaked: Option<u32>,
    /// The container's time per phase.
    pub phases: Option<Phases>,
}

impl Usage {
    /// Combines the cgroup's figures with `wait4`'s; the cgroup wins where it
    /// has a figure, and rusage replaces CPU time where it has none.
    pub fn combine(cgroup: Option<CgroupUsage>, rusage: Option<Rusage>) -> Usage {
        let cg = cgroup.unwrap_or_default();
        let from_rusage_user = rusage.map(|r| Duration::from_micros(r.user_us));
        let from_rusage_system = rusage.map(|r| Duration::from_micros(r.system_us));
        Usage {
            cpu_user: cg.cpu_user.or(from_rusage_user),
            cpu_system: cg.cpu_system.or(from_rusage_system),
            memory_peak: cg.memory_peak,
            max_rss: rusage.map(|r| r.max_rss_kib * 1024),
            tasks_peak: cg.tasks_peak,
            oom_kills: cg.oom_kills,
            pids_limit_hits: cg.pids_limit_hits,
            ..Usage::default()
        }
    }
}

/// Serializes an optional duration as seconds (a float), or null.
pub mod opt_secs {
    use std::time::Duration;

    pub fn serialize<S: serde::Serializer>(v: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(d) => s.serialize_some(&d.as_secs_f64()),
            None => s.serialize_none(),
        }
    }
}

/// The end of one test as the supervisor saw it.
#[derive(Debug, Clone, Default)]
pub struct Ending {
    pub exit: Option<TestExit>,
    pub timed_out: bool,
    pub cancelled: bool,
    pub setup_error: Option<SetupError>,
}

/// Classifies a test's end. The order matters: a test the OOM killer ended
/// also shows a SIGKILL, and a test that timed out also shows a signal.
pub fn judge(ending: &Ending, usage: &Usage) -> Outcome {
    if ending.setup_error.is_some() {
        return Outcome::SetupFailed;
    }
    let passed = ending.exit == Some(TestExit::Code(0));
    if ending.cancelled && !passed {
        return Outcome::Cancelled;
    }
    if ending.timed_out {
        return Outcome::TimedOut;
    }
    if !passed && usage.oom_kills.unwrap_or(0) > 0 {
        return Outcome::OomKilled;
    }
    if passed {
        return if usage.leaked.unwrap_or(0) > 0 {
            Outcome::Leaked
        } else {
            Outcome::Passed
        };
    }
    if usage.pids_limit_hits.unwrap_or(0) > 0 {
        return Outcome::PidsLimit;
    }
    match ending.exit {
        Some(TestExit::Signal(_)) => Outcome::Signaled,
        Some(TestExit::Code(_)) => Outcome::Failed,
        // Init never reported: the container died on its own.
        None => Outcome::Signaled,
    }
}

/// Returns a signal's name, such as `SIGTERM`.
pub fn signal_name(signal: i32) -> String {
    nix::sys::signal::Signal::try_from(signal)
        .map(|s| s.as_str().to_string())
        .unwrap_or_else(|_| format!("signal {signal}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ending(exit: TestExit) -> Ending {
        Ending {
            exit: Some(exit),
            ..Ending::default()
        }
    }

    #[test]
    fn oom_kill_beats_bare_sigkill() {
        let usage = Usage {
            oom_kills: Some(1),
            ..Usage::default()
        };
        assert_eq!(
            judge(&ending(TestExit::Signal(9)), &usage),
            Outcome::OomKilled
        );
    }

    #[test]
    fn timeout_beats_signal() {
        let end = Ending {
            timed_out: true,
            ..ending(TestExit::Signal(15))
        };
        assert_eq!(judge(&end, &Usage::default()), Outcome::TimedOut);
    }

    #[test]
    fn leak_is_reported_on_pass() {
        let usage = Usage {
            leaked: Some(1),
            ..Usage::default()
        };
        assert_eq!(judge(&ending(TestExit::Code(0)), &usage), Outcome::Leaked);
        assert!(!Outcome::Leaked.is_failure(false));
        assert!(Outcome::Leaked.is_failure(true));
    }

    #[test]
    fn pids_limit_on_failure() {
        let usage = Usage {
            pids_limit_hits: Some(3),
            ..Usage::default()
        };
        assert_eq!(
            judge(&ending(TestExit::Code(101)), &usage),
            Outcome::PidsLimit
        );
        assert_eq!(judge(&ending(TestExit::Code(0)), &usage), Outcome::Passed);
    }

    #[test]
    fn plain_failure_and_signal() {
        assert_eq!(
            judge(&ending(TestExit::Code(101)), &Usage::default()),
            Outcome::Failed
        );
        assert_eq!(
            judge(&ending(TestExit::Signal(6)), &Usage::default()),
            Outcome::Signaled
        );
    }

    #[test]
    fn unmeasured_oom_is_not_zero() {
        // Without a memory cgroup, a SIGKILL stays a signal.
        assert_eq!(
            judge(&ending(TestExit::Signal(9)), &Usage::default()),
            Outcome::Signaled
        );
    }
}
