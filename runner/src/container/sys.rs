//! Thin wrappers over the system calls the container sequence needs and
//! that `nix` 0.32 does not offer in the form we need.

use std::ffi::CString;
use std::io;
use std::os::fd::RawFd;

/// Returns the error of the last failed libc call.
pub fn errno() -> io::Error {
    io::Error::last_os_error()
}

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(errno())
    } else {
        Ok(ret)
    }
}

/// Clones the calling process like `fork()`, but into the new namespaces
/// named in `flags`. Returns 0 in the child and the child's pid in the
/// parent.
///
/// # Safety
/// The caller must be single-threaded: the child continues on a copy of the
/// caller's stack with only the calling thread.
pub unsafe fn clone_into_namespaces(flags: libc::c_int) -> io::Result<libc::pid_t> {
    // SAFETY: with a null stack the kernel gives the child a copy-on-write
    // copy of the parent's stack, as fork() does. The caller guarantees a
    // single thread, so no lock can be held by a thread that does not exist
    // in the child.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone,
            (flags | libc::SIGCHLD) as libc::c_ulong,
            std::ptr::null_mut::<libc::c_void>(),
            std::ptr::null_mut::<libc::c_int>(),
            std::ptr::null_mut::<libc::c_int>(),
            0 as libc::c_ulong,
        )
    };
    if ret < 0 {
        Err(errno())
    } else {
        Ok(ret as libc::pid_t)
    }
}

/// Forks the calling process.
///
/// # Safety
/// The caller must be single-threaded, or the child may only make
/// async-signal-safe calls before `exec`.
pub unsafe fn fork() -> io::Result<libc::pid_t> {
    // SAFETY: see the function contract.
    check(unsafe { libc::fork() })
}

/// Writes all of `data` to `fd`, retrying on EINTR and short writes.
pub fn write_all(fd: RawFd, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        // SAFETY: `data` is a valid slice for the length passed.
        let n = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
        if n < 0 {
            let err = errno();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        data = &data[n as usize..];
    }
    Ok(())
}

/// Reads into `buf`, retrying on EINTR. Returns 0 at end of file.
pub fn read(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        // SAFETY: `buf` is a valid, writable slice for the length passed.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let err = errno();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Closes a file descriptor, ignoring errors.
pub fn close(fd: RawFd) {
    // SAFETY: closing an fd has no memory-safety preconditions; callers pass
    // fds they own.
    unsafe {
        libc::close(fd);
    }
}

/// Creates a pipe whose both ends are close-on-exec.
pub fn pipe() -> io::Result<(RawFd, RawFd)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    Ok((fds[0], fds[1]))
}

/// Sets or clears close-on-exec on `fd`.
pub fn set_cloexec(fd: RawFd, on: bool) -> io::Result<()> {
    // SAFETY: fcntl on an fd has no memory-safety preconditions.
    let flags = check(unsafe { libc::fcntl(fd, libc::F_GETFD) })?;
    let flags = if on {
        flags | libc::FD_CLOEXEC
    } else {
        flags & !libc::FD_CLOEXEC
    };
    // SAFETY: as above.
    check(unsafe { libc::fcntl(fd, libc::F_SETFD, flags) })?;
    Ok(())
}

/// Makes `fd` non-blocking.
pub fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on an fd has no memory-safety preconditions.
    let flags = check(unsafe { libc::fcntl(fd, libc::F_GETFL) })?;
    // SAFETY: as above.
    check(unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) })?;
    Ok(())
}

/// Closes every descriptor from 3 up except those in `keep`.
pub fn close_other_fds(keep: &[RawFd]) {
    let mut keep: Vec<RawFd> = keep.iter().copied().filter(|fd| *fd >= 3).collect();
    keep.sort_unstable();
    let mut first: libc::c_uint = 3;
    for fd in keep {
        let fd = fd as libc::c_uint;
        if fd > first {
            // SAFETY: close_range has no memory-safety preconditions.
            unsafe { libc::syscall(libc::SYS_close_range, first, fd - 1, 0) };
        }
        first = fd + 1;
    }
    // SAFETY: as above.
    unsafe { libc::syscall(libc::SYS_close_range, first, libc::c_uint::MAX, 0) };
}

/// Sends `signal` to `pid`.
pub fn kill(pid: libc::pid_t, signal: libc::c_int) -> io::Result<()> {
    // SAFETY: kill(2) has no memory-safety preconditions.
    check(unsafe { libc::kill(pid, signal) }).map(drop)
}

/// Asks the kernel to send `signal` to this process when its parent exits.
pub fn set_parent_death_signal(signal: libc::c_int) -> io::Result<()> {
    // SAFETY: PR_SET_PDEATHSIG takes a signal number and no pointers.
    check(unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, signal as libc::c_ulong, 0, 0, 0) })
        .map(drop)
}

/// Blocks `signals` in the calling thread and returns the previous mask.
pub fn block_signals(signals: &[libc::c_int]) -> libc::sigset_t {
    // SAFETY: the sigset_t values are initialised by sigemptyset before use.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in signals {
            libc::sigaddset(&mut set, *s);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old);
        old
    }
}

/// Makes a command start with no signal blocked. A child inherits its
/// parent's signal mask across `exec`, and the runner blocks SIGINT and
/// SIGTERM in every thread.
pub fn unblock_signals_at_exec(command: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the hook runs between fork and exec and calls only
    // pthread_sigmask, which is async-signal-safe, on stack data.
    unsafe {
        command.pre_exec(|| {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::pthread_sigmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
            Ok(())
        });
    }
}

/// Unblocks every signal and resets every handler to its default, as a
/// freshly executed program expects.
pub fn reset_signals() {
    // SAFETY: sigset_t is initialised by sigemptyset; signal numbers are in
    // the valid range; SIG_DFL takes no pointers.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::pthread_sigmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
        for s in 1..libc::SIGRTMIN() {
            if s != libc::SIGKILL && s != libc::SIGSTOP {
                libc::signal(s, libc::SIG_DFL);
            }
        }
    }
}

/// Builds a C string, replacing an interior NUL with an error.
pub fn cstring(text: impl Into<Vec<u8>>) -> io::Result<CString> {
    CString::new(text).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
}

/// Drops every capability from the bounding and ambient sets and locks the
/// "root gets no capabilities at exec" rule, so that a test running as uid
/// 0 inside its user namespace executes with no capabilities at all, and
/// sets `no_new_privs`.
pub fn drop_privileges() -> io::Result<()> {
    let last_cap = last_capability();
    for cap in 0..=last_cap {
        // SAFETY: prctl with integer arguments only.
        let ret = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) };
        if ret < 0 && errno().raw_os_error() != Some(libc::EINVAL) {
            return Err(errno());
        }
    }
    // SAFETY: prctl with integer arguments only.
    unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        );
    }
    // SECBIT_NOROOT | SECBIT_NOROOT_LOCKED | SECBIT_NO_SETUID_FIXUP |
    // SECBIT_NO_SETUID_FIXUP_LOCKED, from <linux/securebits.h>.
    let securebits: libc::c_ulong = 0x1 | 0x2 | 0x4 | 0x8;
    // SAFETY: prctl with integer arguments only.
    check(unsafe { libc::prctl(libc::PR_SET_SECUREBITS, securebits, 0, 0, 0) })?;
    // SAFETY: prctl with integer arguments only.
    check(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) })?;
    Ok(())
}

/// Sets the soft and hard RLIMIT_NPROC of the calling process.
pub fn set_nproc_limit(limit: u64) -> io::Result<()> {
    let value = libc::rlimit {
        rlim_cur: limit as libc::rlim_t,
        rlim_max: limit as libc::rlim_t,
    };
    // SAFETY: `value` is a valid rlimit for the call.
    check(unsafe { libc::setrlimit(libc::RLIMIT_NPROC, &value) }).map(drop)
}

/// Installs a seccomp filter that makes `keyctl`, `add_key` and
/// `request_key` fail with EPERM. Kernel keyrings belong to a user, not to
/// a namespace: without the filter a test could find the invoking user's
/// keyring in /proc/keys, link it, read its keys and leave keys behind.
/// Requires `no_new_privs`, which `drop_privileges` sets.
pub fn deny_keyring_syscalls() -> io::Result<()> {
    #[cfg(target_arch = "x86_64")]
    const AUDIT_ARCH: u32 = 0xC000_003E;
    #[cfg(target_arch = "aarch64")]
    const AUDIT_ARCH: u32 = 0xC000_00B7;
    // NOTE: on other architectures the keyring stays reachable.
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    return Ok(());

    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    {
        // Classic BPF opcodes and seccomp_data offsets, from <linux/filter.h>
        // and <linux/seccomp.h>.
        const LD_W_ABS: u16 = 0x00 | 0x00 | 0x20;
        const JEQ_K: u16 = 0x05 | 0x10 | 0x00;
        const AND_K: u16 = 0x04 | 0x50 | 0x00;
        const RET_K: u16 = 0x06;
        const OFFSET_NR: u32 = 0;
        const OFFSET_ARCH: u32 = 4;
        // Clears x86_64's x32 bit, so the x32 numbers of these calls match.
        const NOT_X32: u32 = !0x4000_0000;
        let deny = libc::SECCOMP_RET_ERRNO | libc::EPERM as u32;
        let op = |code: u16, jt: u8, jf: u8, k: u32| libc::sock_filter { code, jt, jf, k };
        let program = [
            op(LD_W_ABS, 0, 0, OFFSET_ARCH),
            op(JEQ_K, 0, 5, AUDIT_ARCH),
            op(LD_W_ABS, 0, 0, OFFSET_NR),
            op(AND_K, 0, 0, NOT_X32),
            op(JEQ_K, 3, 0, libc::SYS_keyctl as u32),
            op(JEQ_K, 2, 0, libc::SYS_add_key as u32),
            op(JEQ_K, 1, 0, libc::SYS_request_key as u32),
            op(RET_K, 0, 0, libc::SECCOMP_RET_ALLOW),
            op(RET_K, 0, 0, deny),
        ];
        let fprog = libc::sock_fprog {
            len: program.len() as u16,
            filter: program.as_ptr() as *mut _,
        };
        // SAFETY: `fprog` points at `program`, which outlives the call; the
        // kernel copies the filter.
        check(unsafe {
            libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER as libc::c_ulong,
                &fprog as *const libc::sock_fprog as libc::c_ulong,
                0,
                0,
            )
        })
        .map(drop)
    }
}

/// Overwrites this process's command line with zeros. Init is a clone of
/// the runner, so without this a test would read the runner's arguments,
/// `--env` values included, in /proc/1/cmdline.
pub fn clear_command_line() {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return;
    };
    // Fields after the command name, which is in parentheses and may hold
    // spaces; arg_start and arg_end are fields 48 and 49 of proc(5).
    let Some((_, rest)) = stat.rsplit_once(") ") else {
        return;
    };
    let fields: Vec<&str> = rest.split(' ').collect();
    let (Some(start), Some(end)) = (fields.get(45), fields.get(46)) else {
        return;
    };
    let (Ok(start), Ok(end)) = (start.parse::<usize>(), end.parse::<usize>()) else {
        return;
    };
    if start == 0 || end <= start {
        return;
    }
    // SAFETY: the kernel reports [arg_start, arg_end) as this process's
    // argument strings, which lie in its own writable stack mapping. Init
    // reads its arguments only through copies taken at the runner's start.
    unsafe { std::ptr::write_bytes(start as *mut u8, 0, end - start) };
}

/// Returns the highest capability number the kernel supports. The zygote
/// reads it once, and each container's init inherits the value.
pub fn last_capability() -> libc::c_ulong {
    static LAST_CAP: std::sync::OnceLock<libc::c_ulong> = std::sync::OnceLock::new();
    *LAST_CAP.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(40)
    })
}

/// Brings the loopback interface of the current network namespace up. The
/// kernel then assigns 127.0.0.1/8 and ::1 to it by itself.
pub fn loopback_up() -> io::Result<()> {
    // SAFETY: socket/ioctl/close with a zeroed, correctly sized ifreq.
    unsafe {
        let sock = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if sock < 0 {
            return Err(errno());
        }
        let mut req: libc::ifreq = std::mem::zeroed();
        for (i, b) in b"lo\0".iter().enumerate() {
            req.ifr_name[i] = *b as libc::c_char;
        }
        if libc::ioctl(sock, libc::SIOCGIFFLAGS as _, &mut req) < 0 {
            let err = errno();
            libc::close(sock);
            return Err(err);
        }
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        let ret = libc::ioctl(sock, libc::SIOCSIFFLAGS as _, &req);
        let err = errno();
        libc::close(sock);
        if ret < 0 {
            return Err(err);
        }
    }
    Ok(())
}

/// Resource usage of a reaped child, from `wait4`.
#[derive(Debug, Clone, Copy, Default, serde::Serialize, serde::Deserialize)]
pub struct Rusage {
    pub user_us: u64,
    pub system_us: u64,
    /// Peak resident set of the largest process, in KiB.
    pub max_rss_kib: u64,
}

/// Reaps one exited child without blocking. Returns its pid, raw wait
/// status and usage, or `None` when no child has exited.
pub fn reap_any() -> Option<(libc::pid_t, libc::c_int, Rusage)> {
    let mut status = 0;
    // SAFETY: rusage is plain data, filled in by the kernel.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: the pointers are valid for the call.
    let pid = unsafe { libc::wait4(-1, &mut status, libc::WNOHANG, &mut usage) };
    if pid <= 0 {
        return None;
    }
    let micros = |tv: libc::timeval| tv.tv_sec as u64 * 1_000_000 + tv.tv_usec as u64;
    let rusage = Rusage {
        user_us: micros(usage.ru_utime),
        system_us: micros(usage.ru_stime),
        max_rss_kib: usage.ru_maxrss as u64,
    };
    Some((pid, status, rusage))
}
