//! One throwaway container per test: fresh user, PID, mount, network, UTS
//! and IPC namespaces, a copy-on-write root filesystem, and the runner's own
//! init as PID 1.
//!
//! The runner talks to a single-threaded zygote over a Unix socket: the
//! zygote clones each container, the container's init reports the test's
//! exit through a pipe, and the zygote reports when init was reaped and
//! with what resource usage.

mod init;
pub mod rootfs;
mod sys;
mod zygote;

use std::collections::HashMap;
use std::ffi::OsString;
use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::socket::{self, ControlMessage, ControlMessageOwned, MsgFlags};

pub use rootfs::{Entry, RootfsPlan};
pub use sys::unblock_signals_at_exec;
pub use sys::Rusage;

/// The program, environment and settings of one container.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Spec {
    /// Identifies the container in messages between runner and zygote.
    pub id: u64,
    pub program: PathBuf,
    #[serde(with = "os_strings")]
    pub args: Vec<OsString>,
    #[serde(with = "os_string_pairs")]
    pub env: Vec<(OsString, OsString)>,
    pub cwd: PathBuf,
    /// The test's HOME, an empty writable directory.
    pub home: PathBuf,
    pub hostname: String,
    /// Share the host's network namespace instead of getting a private one.
    pub network: bool,
    /// Size cap of the tmpfs holding the container's writes, in bytes.
    pub tmpfs_size: u64,
    /// How long init waits for processes left behind by the test.
    pub leak_timeout_ms: u64,
    /// Whether init waits, after building the container, for a byte on the
    /// start pipe before it starts the test, so containers can be prepared
    /// while earlier tests run.
    pub gated: bool,
    /// RLIMIT_NPROC for the test, the pids cap where no pids cgroup is
    /// available. The kernel (5.14 and later) counts it per user namespace,
    /// so it caps the tasks of this container alone.
    pub nproc_limit: Option<u64>,
}

/// A container setup step that failed, with the kernel's error.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, thiserror::Error)]
#[error("container setup failed: {step} ({path}): {detail}")]
pub struct SetupError {
    pub step: String,
    pub path: String,
    pub errno: i32,
    pub detail: String,
}

impl SetupError {
    fn io(step: &str, path: &str, err: &io::Error) -> SetupError {
        SetupError {
            step: step.to_string(),
            path: path.to_string(),
            errno: err.raw_os_error().unwrap_or(0),
            detail: err.to_string(),
        }
    }

    fn internal(detail: &str) -> SetupError {
        SetupError {
            step: "runner".into(),
            path: String::new(),
            errno: 0,
            detail: detail.into(),
        }
    }

    /// Suggests a fix for the common causes of this failure.
    pub fn hint(&self) -> Option<&'static str> {
        let step = self.step.as_str();
        match (step, self.errno) {
            ("create the namespaces (clone)", libc::EPERM | libc::ENOSPC | libc::EACCES) => Some(
                "user namespaces are disabled or restricted on this host: set \
                 `sysctl user.max_user_namespaces=15000`, and on Ubuntu 23.10 or later \
                 `sysctl kernel.apparmor_restrict_unprivileged_userns=0`; inside Docker, \
                 run the container with `--security-opt seccomp=unconfined`",
            ),
            ("mount overlay", _) => Some(
                "overlayfs refused this directory; rerun with `--no-overlay` to use \
                 read-only binds instead",
            ),
            ("mount /proc", _) => Some(
                "the kernel refused a new /proc because the host's /proc is partly \
                 hidden (as in some containers); run on a host with a fully visible /proc",
            ),
            ("join the test cgroup", _) => {
                Some("rerun with `--no-cgroups` or fix the cgroup permissions")
            }
            ("reach the zygote", libc::EMSGSIZE) => Some(
                "the test's environment and arguments exceed what one message to the zygote \
                 carries (256 KiB); pass fewer or shorter `--env` values",
            ),
            _ => None,
        }
    }
}

/// The end of the test process: an exit code or a signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TestExit {
    Code(i32),
    Signal(i32),
}

/// Init's time per phase, in microseconds.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Timings {
    /// From init's start to the test's fork: mounts, hostname, loopback.
    pub setup_us: u64,
    /// From the test's fork to its exit.
    pub test_us: u64,
    /// Waiting for processes the test left behind.
    pub leak_wait_us: u64,
    /// The steps of the setup, in order, each with its microseconds.
    pub steps: Vec<(String, u64)>,
}

/// A message init writes to the report pipe.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InitReport {
    Setup {
        error: SetupError,
    },
    Exited {
        exit: TestExit,
        leaked: u32,
        timings: Timings,
    },
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
enum Request {
    Plan(RootfsPlan),
    Spawn {
        spec: Spec,
        cgroup_procs: Vec<PathBuf>,
    },
    Kill {
        id: u64,
        signal: i32,
    },
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
enum Reply {
    Spawned {
        id: u64,
        pid: i32,
    },
    SpawnFailed {
        id: u64,
        error: SetupError,
    },
    Exited {
        id: u64,
        status: i32,
        rusage: Rusage,
    },
}

impl Reply {
    fn id(&self) -> u64 {
        match self {
            Reply::Spawned { id, .. }
            | Reply::SpawnFailed { id, .. }
            | Reply::Exited { id, .. } => *id,
        }
    }
}

const MAX_MESSAGE: usize = 256 << 10;

fn send_message<T: serde::Serialize>(socket: RawFd, message: &T, fds: &[RawFd]) -> io::Result<()> {
    let data = serde_json::to_vec(message).map_err(io::Error::other)?;
    let iov = [IoSlice::new(&data)];
    let rights = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &rights };
    loop {
        match socket::sendmsg::<()>(socket, &iov, cmsgs, MsgFlags::empty(), None) {
            Ok(_) => return Ok(()),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(errno) => return Err(errno.into()),
        }
    }
}

/// Receives one message and the descriptors sent with it; `None` at end of
/// stream.
fn recv_message<T: serde::de::DeserializeOwned>(
    socket: RawFd,
) -> io::Result<Option<(T, Vec<RawFd>)>> {
    let mut buf = vec![0u8; MAX_MESSAGE];
    let mut cmsg = nix::cmsg_space!([RawFd; 8]);
    let (len, fds) = loop {
        let mut iov = [IoSliceMut::new(&mut buf)];
        match socket::recvmsg::<()>(
            socket,
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Ok(msg) => {
                let mut fds = Vec::new();
                for c in msg.cmsgs()? {
                    if let ControlMessageOwned::ScmRights(received) = c {
                        fds.extend(received);
                    }
                }
                break (msg.bytes, fds);
            }
            Err(nix::errno::Errno::EINTR) => continue,
            Err(errno) => return Err(errno.into()),
        }
    };
    if len == 0 {
        return Ok(None);
    }
    let message = serde_json::from_slice(&buf[..len]).map_err(io::Error::other)?;
    Ok(Some((message, fds)))
}

/// Starts the zygote. Call this first in `main`, while the process still
/// has one thread.
///
/// # Panics
/// Panics when the process already runs more than one thread.
pub fn start_zygote() -> io::Result<ZygoteHandle> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let threads = status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .map(str::trim);
    assert!(
        matches!(threads, Some("1") | None),
        "the zygote must be forked while the runner has a single thread"
    );
    let (runner_end, zygote_end) = socket::socketpair(
        socket::AddressFamily::Unix,
        socket::SockType::SeqPacket,
        None,
        socket::SockFlag::SOCK_CLOEXEC,
    )?;
    // SAFETY: the process is single-threaded (checked above).
    let pid = unsafe { sys::fork() }?;
    if pid == 0 {
        drop(runner_end);
        // A session of its own keeps the containers out of the terminal's
        // process group: Ctrl-C reaches the runner, which then stops each
        // container in order.
        // SAFETY: setsid has no preconditions.
        unsafe { libc::setsid() };
        let _ = sys::set_parent_death_signal(libc::SIGKILL);
        zygote::main(zygote_end.as_raw_fd());
    }
    drop(zygote_end);
    Ok(ZygoteHandle {
        socket: runner_end,
        pid: pid as u32,
    })
}

/// The runner's end of the zygote, before the dispatch thread starts.
pub struct ZygoteHandle {
    socket: OwnedFd,
    pid: u32,
}

impl ZygoteHandle {
    /// Returns the zygote's pid.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Sends the root filesystem plan and starts the thread that dispatches
    /// the zygote's replies.
    pub fn connect(self, plan: &RootfsPlan) -> io::Result<Zygote> {
        send_message(self.socket.as_raw_fd(), &Request::Plan(plan.clone()), &[])?;
        let shared = Arc::new(Shared {
            waiters: Mutex::new(HashMap::new()),
        });
        let reader_shared = Arc::clone(&shared);
        let socket = self.socket.as_raw_fd();
        std::thread::Builder::new()
            .name("zygote-replies".into())
            .spawn(move || {
                while let Ok(Some((reply, fds))) = recv_message::<Reply>(socket) {
                    for fd in fds {
                        sys::close(fd);
                    }
                    let mut waiters = reader_shared
                        .waiters
                        .lock()
                        .unwrap_or_else(|e| e.into_inner());
                    let id = reply.id();
                    let done = matches!(reply, Reply::Exited { .. } | Reply::SpawnFailed { .. });
                    if let Some(tx) = waiters.get(&id) {
                        let _ = tx.send(reply);
                    }
                    if done {
                        waiters.remove(&id);
                    }
                }
                // The zygote is gone: wake every waiter with a closed channel.
                reader_shared
                    .waiters
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clear();
            })?;
        Ok(Zygote {
            socket: self.socket,
            send_lock: Mutex::new(()),
            shared,
        })
    }
}

struct Shared {
    waiters: Mutex<HashMap<u64, mpsc::Sender<Reply>>>,
}

/// The runner's client of the zygote, shared by all worker threads.
pub struct Zygote {
    socket: OwnedFd,
    send_lock: Mutex<()>,
    shared: Arc<Shared>,
}

impl Zygote {
    /// Replaces the root filesystem plan for containers started from now on.
    pub fn set_plan(&self, plan: &RootfsPlan) -> io::Result<()> {
        self.send(&Request::Plan(plan.clone()), &[])
    }
}

impl Drop for Zygote {
    /// Shuts the socket down so the zygote reads end of file and exits,
    /// killing any container still running, even while the reply thread
    /// still keeps the descriptor open.
    fn drop(&mut self) {
        let _ = socket::shutdown(self.socket.as_raw_fd(), socket::Shutdown::Both);
    }
}

/// Errors of starting a container.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error(transparent)]
    Setup(#[from] SetupError),
    #[error("lost the connection to the container zygote: {0}")]
    Zygote(io::Error),
}

/// The output pipes of one container, as the runner reads them.
pub struct Pipes {
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
    pub report: OwnedFd,
    /// Write end of the start pipe of a gated container: one byte starts
    /// the test, closing it without a byte makes init exit.
    pub start: Option<OwnedFd>,
}

impl Zygote {
    fn send(&self, request: &Request, fds: &[RawFd]) -> io::Result<()> {
        let _guard = self.send_lock.lock().unwrap_or_else(|e| e.into_inner());
        send_message(self.socket.as_raw_fd(), request, fds)
    }

    /// Starts a container and waits until it runs. Returns it with the
    /// read ends of its stdout, stderr and report pipes.
    pub fn spawn(
        &self,
        spec: Spec,
        cgroup_procs: Vec<PathBuf>,
    ) -> Result<(Container<'_>, Pipes), SpawnError> {
        self.request_spawn(spec, cgroup_procs)?.wait()
    }

    /// Asks the zygote for a container without waiting for it, so the
    /// caller can do other work while the zygote clones it.
    pub fn request_spawn(
        &self,
        spec: Spec,
        cgroup_procs: Vec<PathBuf>,
    ) -> Result<PendingSpawn<'_>, SpawnError> {
        let id = spec.id;
        let gated = spec.gated;
        let mut ends = Vec::new();
        for _ in 0..3 {
            let (read, write) = sys::pipe().map_err(SpawnError::Zygote)?;
            // SAFETY: pipe() returned fresh descriptors that nothing else owns.
            ends.push(unsafe { (OwnedFd::from_raw_fd(read), OwnedFd::from_raw_fd(write)) });
        }
        let (tx, rx) = mpsc::channel();
        self.shared
            .waiters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, tx);
        let mut send_fds: Vec<RawFd> = ends.iter().map(|(_, w)| w.as_raw_fd()).collect();
        let start = if gated {
            let (read, write) = sys::pipe().map_err(SpawnError::Zygote)?;
            // SAFETY: pipe() returned fresh descriptors that nothing else owns.
            let pair = unsafe { (OwnedFd::from_raw_fd(read), OwnedFd::from_raw_fd(write)) };
            send_fds.push(pair.0.as_raw_fd());
            Some(pair)
        } else {
            None
        };
        let sent = self.send(&Request::Spawn { spec, cgroup_procs }, &send_fds);
        let start = start.map(|(read, write)| {
            drop(read);
            write
        });
        let mut reads = Vec::new();
        for (read, write) in ends {
            drop(write);
            let _ = sys::set_nonblocking(read.as_raw_fd());
            reads.push(read);
        }
        if let Err(err) = sent {
            self.shared
                .waiters
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&id);
            return Err(SpawnError::Zygote(err));
        }
        let report = reads.pop().expect("three pipes");
        let stderr = reads.pop().expect("three pipes");
        let stdout = reads.pop().expect("three pipes");
        let pipes = Pipes {
            stdout,
            stderr,
            report,
            start,
        };
        Ok(PendingSpawn {
            id,
            rx,
            pipes,
            zygote: self,
        })
    }
}

/// A container the zygote is creating.
pub struct PendingSpawn<'a> {
    id: u64,
    rx: mpsc::Receiver<Reply>,
    pipes: Pipes,
    zygote: &'a Zygote,
}

impl<'a> PendingSpawn<'a> {
    /// Waits for the zygote's reply.
    pub fn wait(self) -> Result<(Container<'a>, Pipes), SpawnError> {
        let PendingSpawn {
            id,
            rx,
            pipes,
            zygote,
        } = self;
        // The zygote replies within milliseconds, so a minute means it is stuck.
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(Reply::Spawned { pid, .. }) => Ok((
                Container {
                    id,
                    pid,
                    rx,
                    zygote,
                },
                pipes,
            )),
            Ok(Reply::SpawnFailed { error, .. }) => Err(SpawnError::Setup(error)),
            Err(mpsc::RecvTimeoutError::Timeout) => Err(SpawnError::Zygote(io::Error::other(
                "the zygote did not reply within 60 s",
            ))),
            Ok(Reply::Exited { .. }) | Err(_) => {
                Err(SpawnError::Zygote(io::Error::other("the zygote exited")))
            }
        }
    }
}

/// A running container.
pub struct Container<'a> {
    id: u64,
    pid: i32,
    rx: mpsc::Receiver<Reply>,
    zygote: &'a Zygote,
}

/// The wait status and usage of a container's init, from the zygote's
/// `wait4`.
#[derive(Debug, Clone, Copy)]
pub struct InitExit {
    pub status: i32,
    pub rusage: Rusage,
}

impl Container<'_> {
    /// Returns the host pid of the container's init.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Sends a signal to the container's init. SIGTERM and SIGINT are
    /// forwarded to the test; SIGKILL ends the whole container.
    pub fn signal(&self, signal: i32) {
        let _ = self.zygote.send(
            &Request::Kill {
                id: self.id,
                signal,
            },
            &[],
        );
    }

    /// Waits up to `timeout` for init to be reaped.
    pub fn wait(&self, timeout: Duration) -> Option<InitExit> {
        match self.rx.recv_timeout(timeout) {
            Ok(Reply::Exited { status, rusage, .. }) => Some(InitExit { status, rusage }),
            _ => None,
        }
    }
}

/// Serde helpers for `OsString`s, which are arbitrary bytes on Linux.
mod os_strings {
    use std::ffi::OsString;
    use std::os::unix::ffi::{OsStrExt, OsStringExt};

    pub fn serialize<S: serde::Serializer>(v: &[OsString], s: S) -> Result<S::Ok, S::Error> {
        let bytes: Vec<&[u8]> = v.iter().map(|o| o.as_bytes()).collect();
        serde::Serialize::serialize(&bytes, s)
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<OsString>, D::Error> {
        let bytes: Vec<Vec<u8>> = serde::Deserialize::deserialize(d)?;
        Ok(bytes.into_iter().map(OsString::from_vec).collect())
    }
}

mod os_string_pairs {
    use std::ffi::OsString;
    use std::os::unix::ffi::{OsStrExt, OsStringExt};

    pub fn serialize<S: serde::Serializer>(
        v: &[(OsString, OsString)],
        s: S,
    ) -> Result<S::Ok, S::Error> {
        let bytes: Vec<(&[u8], &[u8])> = v
            .iter()
            .map(|(k, v)| (k.as_bytes(), v.as_bytes()))
            .collect();
        serde::Serialize::serialize(&bytes, s)
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<Vec<(OsString, OsString)>, D::Error> {
        let pairs: Vec<(Vec<u8>, Vec<u8>)> = serde::Deserialize::deserialize(d)?;
        Ok(pairs
            .into_iter()
            .map(|(k, v)| (OsString::from_vec(k), OsString::from_vec(v)))
            .collect())
    }
}
