//! Scheduling: runs the selected tests on `jobs` worker threads, each test
//! in its own container, and hands every result to the reporter as it
//! finishes.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

use crate::outcome::Outcome;
use crate::plan::TestCase;
use crate::report::Reporter;
use crate::supervise::{run_test, Context, TestResult};

/// Runs `tests` and returns their results in the order they finished.
/// Tests that do not run (ignored) are reported at once.
pub fn run(ctx: &Context, tests: &[TestCase], jobs: usize, reporter: &Mutex<Reporter>) -> Vec<TestResult> {
    let results = Mutex::new(Vec::with_capacity(tests.len()));
    let finish = |result: TestResult| {
        reporter.lock().unwrap_or_else(|e| e.into_inner()).test_finished(&result);
        results.lock().unwrap_or_else(|e| e.into_inner()).push(result);
    };
    for test in tests.iter().filter(|t| !t.run) {
        finish(TestResult::not_run(test, Outcome::Ignored, ctx.options));
    }
    let runnable: Vec<&TestCase> = tests.iter().filter(|t| t.run).collect();
    let next = AtomicUsize::new(0);
    let ids = AtomicU64::new(1);
    std::thread::scope(|scope| {
        for worker in 0..jobs.max(1).min(runnable.len().max(1)) {
            let (next, ids, runnable, finish) = (&next, &ids, &runnable, &finish);
            std::thread::Builder::new()
                .name(format!("worker-{worker}"))
                .spawn_scoped(scope, move || loop {
                    let index = next.fetch_add(1, Ordering::SeqCst);
                    let Some(test) = runnable.get(index) else { break };
                    if ctx.cancel.is_set() {
                        finish(TestResult::not_run(test, Outcome::Cancelled, ctx.options));
                        continue;
                    }
                    reporter.lock().unwrap_or_else(|e| e.into_inner()).test_started(test);
                    let id = ids.fetch_add(1, Ordering::SeqCst);
                    let result = run_test(ctx, test, id);
                    if result.outcome == Outcome::SetupFailed {
                        // A container that cannot be built will not build for
                        // the next test either: stop the run.
                        ctx.cancel.trigger();
                    }
                    finish(result);
                })
                .expect("failed to start a worker thread");
        }
    });
    results.into_inner().unwrap_or_else(|e| e.into_inner())
}
