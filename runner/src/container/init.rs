//! The container's PID 1: builds the root filesystem, starts the test,
//! reaps every orphan, forwards SIGTERM and SIGINT to the test, and reports
//! the test's own exit status and the processes it left behind.
//!
//! This code runs in a process cloned from the single-threaded zygote, so
//! it may allocate and call anything, unlike a child of a multi-threaded
//! process.

use std::fs;
use std::os::fd::RawFd;
use std::os::unix::ffi::OsStrExt;
use std::time::{Duration, Instant};

use super::{rootfs, sys, InitReport, RootfsPlan, SetupError, Spec, TestExit, Timings};

/// The file descriptors init receives from the zygote.
pub struct InitFds {
    pub stdout: RawFd,
    pub stderr: RawFd,
    pub report: RawFd,
    /// Read end of the pipe on which the zygote releases init once the uid
    /// map is written and the cgroups are joined.
    pub release: RawFd,
    /// Read end of the runner's start pipe, for a gated container.
    pub start: Option<RawFd>,
}

/// Runs the container's init. Never returns.
pub fn run(plan: &RootfsPlan, spec: &Spec, fds: InitFds) -> ! {
    let started = Instant::now();
    // If the zygote dies, so does the container: PID 1's death kills every
    // other process in its PID namespace.
    let _ = sys::set_parent_death_signal(libc::SIGKILL);
    // A session of its own: without it the container would share the
    // zygote's process group, and a test's kill(0) or setpriority on its
    // group would reach the zygote and every other container.
    // SAFETY: setsid has no preconditions.
    unsafe { libc::setsid() };
    let mut keep = vec![fds.stdout, fds.stderr, fds.report, fds.release];
    keep.extend(fds.start);
    sys::close_other_fds(&keep);
    sys::clear_command_line();

    let mut byte = [0u8; 1];
    let released = matches!(sys::read(fds.release, &mut byte), Ok(1));
    sys::close(fds.release);
    if !released {
        // The zygote failed to set up the user namespace or cgroups and has
        // already reported why.
        exit(1);
    }

    let report = |report: &InitReport| {
        let mut line = serde_json::to_vec(report).unwrap_or_default();
        line.push(b'\n');
        let _ = sys::write_all(fds.report, &line);
    };

    let mut clock = rootfs::StepClock::new();
    clock.lap("release");
    if let Err(error) = setup(plan, spec, &mut clock) {
        report(&InitReport::Setup { error });
        exit(2);
    }
    let ready = started.elapsed();
    if let Some(start) = fds.start {
        // A prepared container waits here until the runner starts its
        // test; end of file means the run no longer needs it.
        let mut byte = [0u8; 1];
        let go = matches!(sys::read(start, &mut byte), Ok(1));
        sys::close(start);
        if !go {
            exit(0);
        }
        clock.lap("waiting to start");
    }
    let setup_done = started.elapsed();

    // Signals init handles are blocked and collected with sigtimedwait, so
    // no handler runs in PID 1.
    let handled = [libc::SIGCHLD, libc::SIGTERM, libc::SIGINT, libc::SIGHUP];
    sys::block_signals(&handled);

    let test_pid = match spawn_test(spec, &fds) {
        Ok(pid) => pid,
        Err(error) => {
            report(&InitReport::Setup { error });
            exit(2);
        }
    };
    sys::close(fds.stdout);
    sys::close(fds.stderr);

    let status = supervise(test_pid, &handled);
    let test_ended = started.elapsed();
    let leaked = wait_for_leftovers(Duration::from_millis(spec.leak_timeout_ms), &handled);
    if leaked > 0 {
        kill_leftovers();
    }

    let exit_info = if libc::WIFSIGNALED(status) {
        TestExit::Signal(libc::WTERMSIG(status))
    } else {
        TestExit::Code(libc::WEXITSTATUS(status))
    };
    report(&InitReport::Exited {
        exit: exit_info,
        leaked,
        timings: Timings {
            setup_us: ready.as_micros() as u64,
            test_us: (test_ended - setup_done).as_micros() as u64,
            leak_wait_us: (started.elapsed() - test_ended).as_micros() as u64,
            steps: clock
                .steps
                .iter()
                .map(|(n, us)| (n.to_string(), *us))
                .collect(),
        },
    });
    // Every other process of the container is gone, so closing the report
    // pipe now lets the runner read the container's final usage. Left to
    // _exit, the close would wait behind the kernel's teardown of this
    // mount namespace (its overlays wait for RCU grace periods), which
    // runs before an exiting task's deferred file closes.
    sys::close(fds.report);
    exit(0)
}

/// Kills every other process of the PID namespace and reaps them all.
/// PID 1 may signal them all: `kill(-1)` reaches every process of the
/// namespace but the caller. Orphans are reparented to init as their
/// parents die, so the loop goes on until no process but init is left.
fn kill_leftovers() {
    for _ in 0..1000 {
        let _ = sys::kill(-1, libc::SIGKILL);
        while sys::reap_any().is_some() {}
        if count_others() == 0 {
            return;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn exit(code: i32) -> ! {
    // SAFETY: _exit skips atexit handlers and stdio flushing, which belong
    // to the zygote this process was cloned from.
    unsafe { libc::_exit(code) }
}

/// Builds the container around this process: mounts, hostname, loopback.
fn setup(plan: &RootfsPlan, spec: &Spec, clock: &mut rootfs::StepClock) -> Result<(), SetupError> {
    rootfs::build(plan, spec.tmpfs_size, &spec.home, clock)?;
    nix::unistd::sethostname(&spec.hostname).map_err(|errno| SetupError {
        step: "set hostname".into(),
        path: spec.hostname.clone(),
        errno: errno as i32,
        detail: errno.desc().into(),
    })?;
    if !spec.network {
        sys::loopback_up().map_err(|err| SetupError {
            step: "bring loopback up".into(),
            path: "lo".into(),
            errno: err.raw_os_error().unwrap_or(0),
            detail: err.to_string(),
        })?;
    }
    clock.lap("hostname+lo");
    Ok(())
}

/// Forks and executes the test. The child gets its output pipes, no
/// capabilities, `no_new_privs` and default signal handling.
fn spawn_test(spec: &Spec, fds: &InitFds) -> Result<libc::pid_t, SetupError> {
    let program = sys::cstring(spec.program.as_os_str().as_bytes());
    let args: Result<Vec<_>, _> = spec
        .args
        .iter()
        .map(|a| sys::cstring(a.as_bytes()))
        .collect();
    let env: Result<Vec<_>, _> = spec
        .env
        .iter()
        .map(|(k, v)| sys::cstring([k.as_bytes(), b"=", v.as_bytes()].concat()))
        .collect();
    let (program, args, env) = match (program, args, env) {
        (Ok(p), Ok(a), Ok(e)) => (p, a, e),
        _ => {
            return Err(SetupError {
                step: "prepare the test command".into(),
                path: spec.program.display().to_string(),
                errno: libc::EINVAL,
                detail: "an argument or environment variable contains a NUL byte".into(),
            })
        }
    };
    let mut argv: Vec<*const libc::c_char> = vec![program.as_ptr()];
    argv.extend(args.iter().map(|a| a.as_ptr()));
    argv.push(std::ptr::null());
    let mut envp: Vec<*const libc::c_char> = env.iter().map(|e| e.as_ptr()).collect();
    envp.push(std::ptr::null());

    // SAFETY: init is single-threaded, so the child may do anything.
    let pid = unsafe { sys::fork() }.map_err(|err| SetupError {
        step: "fork the test process".into(),
        path: spec.program.display().to_string(),
        errno: err.raw_os_error().unwrap_or(0),
        detail: err.to_string(),
    })?;
    if pid > 0 {
        return Ok(pid);
    }

    // The test process.
    sys::reset_signals();
    let fail = |step: &str, err: std::io::Error| -> ! {
        let report = InitReport::Setup {
            error: SetupError {
                step: step.into(),
                path: spec.program.display().to_string(),
                errno: err.raw_os_error().unwrap_or(0),
                detail: err.to_string(),
            },
        };
        let mut line = serde_json::to_vec(&report).unwrap_or_default();
        line.push(b'\n');
        let _ = sys::write_all(fds.report, &line);
        exit(127)
    };
    // SAFETY: dup2 and open on valid descriptors and a NUL-terminated path.
    unsafe {
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY);
        if null >= 0 {
            libc::dup2(null, 0);
            if null > 2 {
                libc::close(null);
            }
        }
        libc::dup2(fds.stdout, 1);
        libc::dup2(fds.stderr, 2);
    }
    if let Err(err) = std::env::set_current_dir(&spec.cwd) {
        fail("enter the working directory", err);
    }
    if let Some(limit) = spec.nproc_limit {
        if let Err(err) = sys::set_nproc_limit(limit) {
            fail("set RLIMIT_NPROC", err);
        }
    }
    if let Err(err) = sys::drop_privileges() {
        fail("drop capabilities", err);
    }
    if let Err(err) = sys::deny_keyring_syscalls() {
        fail("install the seccomp filter", err);
    }
    let _ = sys::set_cloexec(fds.report, true);
    // SAFETY: argv and envp are NULL-terminated arrays of valid C strings
    // that outlive the call.
    unsafe { libc::execve(program.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
    fail("execute the test binary", sys::errno())
}

/// Waits for the test to exit while reaping orphans and forwarding
/// termination signals. Returns the test's raw wait status.
fn supervise(test_pid: libc::pid_t, handled: &[libc::c_int]) -> libc::c_int {
    loop {
        while let Some((pid, status, _)) = sys::reap_any() {
            if pid == test_pid {
                return status;
            }
        }
        match wait_signal(handled, None) {
            Some(libc::SIGCHLD) | None => {}
            Some(signal) => {
                let _ = sys::kill(test_pid, signal);
            }
        }
    }
}

/// Waits for one of `signals`, at most `timeout` if given.
fn wait_signal(signals: &[libc::c_int], timeout: Option<Duration>) -> Option<libc::c_int> {
    // SAFETY: sigset_t is initialised by sigemptyset; timespec is plain data.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in signals {
            libc::sigaddset(&mut set, *s);
        }
        let ret = match timeout {
            Some(t) => {
                let ts = libc::timespec {
                    tv_sec: t.as_secs() as libc::time_t,
                    tv_nsec: t.subsec_nanos() as libc::c_long,
                };
                libc::sigtimedwait(&set, std::ptr::null_mut(), &ts)
            }
            None => libc::sigwaitinfo(&set, std::ptr::null_mut()),
        };
        (ret > 0).then_some(ret)
    }
}

/// Counts the processes other than init in this PID namespace.
fn count_others() -> u32 {
    let Ok(entries) = fs::read_dir("/proc") else {
        return 0;
    };
    entries
        .flatten()
        .filter(|e| {
            let name = e.file_name();
            let name = name.as_bytes();
            !name.is_empty() && name.iter().all(u8::is_ascii_digit) && name != b"1"
        })
        .count() as u32
}

/// Gives processes the test left behind up to `grace` to exit on their own,
/// reaping them, and returns how many are still running. They die with init.
fn wait_for_leftovers(grace: Duration, handled: &[libc::c_int]) -> u32 {
    let deadline = Instant::now() + grace;
    loop {
        while sys::reap_any().is_some() {}
        let others = count_others();
        let now = Instant::now();
        if others == 0 || now >= deadline {
            return others;
        }
        // Forwarded termination signals do not matter any more: the test
        // is gone and the leftovers are about to be killed.
        wait_signal(handled, Some(deadline - now));
    }
}
