//! Scheduling: runs the selected tests on `jobs` worker threads, each test
//! (or, with `--per-binary`, each binary) in its own container, and hands
//! every result to the reporter as it finishes.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::outcome::Outcome;
use crate::plan::TestCase;
use crate::report::Reporter;
use crate::supervise::{run_binary, run_test, Context, RunOptions, TestResult};

/// One unit of work: a test, or the tests of one binary, with its options.
pub struct Job {
    pub tests: Vec<TestCase>,
    pub options: Arc<RunOptions>,
}

/// Groups runnable tests into jobs: one per test, or one per binary.
pub fn jobs(tests: &[TestCase], per_binary: bool, mut options_for: impl FnMut(&TestCase) -> Arc<RunOptions>) -> Vec<Job> {
    let runnable = tests.iter().filter(|t| t.run);
    if !per_binary {
        return runnable.map(|t| Job { tests: vec![t.clone()], options: options_for(t) }).collect();
    }
    let mut jobs: Vec<Job> = Vec::new();
    for test in runnable {
        match jobs.iter_mut().find(|j| Arc::ptr_eq(&j.tests[0].binary, &test.binary)) {
            Some(job) => job.tests.push(test.clone()),
            None => jobs.push(Job { tests: vec![test.clone()], options: options_for(test) }),
        }
    }
    jobs
}

/// Runs the jobs and returns every result, including the tests that do
/// not run (reported as ignored at once), in the order they finished.
pub fn run(
    ctx: &Context,
    tests: &[TestCase],
    jobs: &[Job],
    workers: usize,
    reporter: &Mutex<Reporter>,
) -> Vec<TestResult> {
    let results = Mutex::new(Vec::with_capacity(tests.len()));
    let finish = |result: TestResult| {
        reporter.lock().unwrap_or_else(|e| e.into_inner()).test_finished(&result);
        results.lock().unwrap_or_else(|e| e.into_inner()).push(result);
    };
    if let Some(first) = jobs.first() {
        for test in tests.iter().filter(|t| !t.run) {
            finish(TestResult::not_run(test, Outcome::Ignored, &first.options));
        }
    }
    let next = AtomicUsize::new(0);
    let ids = AtomicU64::new(1);
    std::thread::scope(|scope| {
        for worker in 0..workers.max(1).min(jobs.len().max(1)) {
            let (next, ids, finish) = (&next, &ids, &finish);
            std::thread::Builder::new()
                .name(format!("worker-{worker}"))
                .spawn_scoped(scope, move || loop {
                    let index = next.fetch_add(1, Ordering::SeqCst);
                    let Some(job) = jobs.get(index) else { break };
                    run_job(ctx, job, ids.fetch_add(1, Ordering::SeqCst), reporter, finish);
                })
                .expect("failed to start a worker thread");
        }
    });
    results.into_inner().unwrap_or_else(|e| e.into_inner())
}

fn run_job(ctx: &Context, job: &Job, id: u64, reporter: &Mutex<Reporter>, finish: &dyn Fn(TestResult)) {
    if ctx.cancel.is_set() {
        for test in &job.tests {
            finish(TestResult::not_run(test, Outcome::Cancelled, &job.options));
        }
        return;
    }
    for test in &job.tests {
        reporter.lock().unwrap_or_else(|e| e.into_inner()).test_started(test);
    }
    let results = match job.tests.as_slice() {
        [test] => vec![run_test(ctx, test, &job.options, id)],
        many => run_binary(ctx, &many.iter().collect::<Vec<_>>(), &job.options, id),
    };
    if results.iter().any(|r| r.outcome == Outcome::SetupFailed) {
        // A container that cannot be built will not build for the next
        // test either: stop the run.
        ctx.cancel.trigger();
    }
    for mut result in results {
        if let Some((baseline, threshold)) = ctx.baseline {
            result.growth = baseline.compare(&result, threshold);
        }
        finish(result);
    }
}
