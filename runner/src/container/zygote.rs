//! The zygote: a single-threaded process forked at startup, before the
//! runner starts any thread, that creates every container.
//!
//! A child of a multi-threaded process may only make async-signal-safe
//! calls before `exec`, which rules out building mounts in Rust. The zygote
//! has one thread, so its clones may allocate freely, and no container pays
//! for re-executing the runner. It is also the one place that calls
//! `wait4` for containers.

use std::collections::HashMap;
use std::os::fd::RawFd;
use std::path::PathBuf;

use super::init::{self, InitFds};
use super::{recv_message, send_message};
use super::{sys, Reply, Request, RootfsPlan, SetupError, Spec};

struct Running {
    id: u64,
    /// Set when the spawn failed: the exit is not reported.
    quiet: bool,
}

struct Zygote {
    socket: RawFd,
    plan: Option<RootfsPlan>,
    running: HashMap<libc::pid_t, Running>,
    uid: u32,
    gid: u32,
}

/// Runs the zygote's loop until the runner closes its socket. Never
/// returns.
pub fn main(socket: RawFd) -> ! {
    // SAFETY: getuid and getgid take no arguments and always succeed
    // (getuid(2)).
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let mut zygote = Zygote {
        socket,
        plan: None,
        running: HashMap::new(),
        uid,
        gid,
    };
    sys::block_signals(&[libc::SIGCHLD]);
    sys::last_capability();
    let sigchld = nix::sys::signalfd::SignalFd::with_flags(
        &signal_set(&[libc::SIGCHLD]),
        nix::sys::signalfd::SfdFlags::SFD_CLOEXEC | nix::sys::signalfd::SfdFlags::SFD_NONBLOCK,
    );
    let Ok(sigchld) = sigchld else {
        // SAFETY: _exit takes an integer and ends this process.
        unsafe { libc::_exit(1) }
    };
    let sigchld_fd = std::os::fd::AsRawFd::as_raw_fd(&sigchld);

    loop {
        let mut polls = [
            libc::pollfd {
                fd: socket,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: sigchld_fd,
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: `polls` is a valid array of two pollfd structs.
        let ready = unsafe { libc::poll(polls.as_mut_ptr(), 2, -1) };
        if ready < 0 {
            continue;
        }
        if polls[1].revents != 0 {
            while sigchld.read_signal().ok().flatten().is_some() {}
            zygote.reap();
        }
        if polls[0].revents != 0 {
            match recv_message::<Request>(socket) {
                Ok(Some((request, fds))) => zygote.handle(request, fds),
                Ok(None) | Err(_) => zygote.shutdown(),
            }
        }
    }
}

fn signal_set(signals: &[libc::c_int]) -> nix::sys::signal::SigSet {
    let mut set = nix::sys::signal::SigSet::empty();
    for s in signals {
        if let Ok(signal) = nix::sys::signal::Signal::try_from(*s) {
            set.add(signal);
        }
    }
    set
}

impl Zygote {
    fn handle(&mut self, request: Request, fds: Vec<RawFd>) {
        match request {
            Request::Plan(plan) => self.plan = Some(plan),
            Request::Spawn { spec, cgroup_procs } => {
                let reply = match (self.plan.clone(), fds.as_slice()) {
                    (Some(plan), [stdout, stderr, report]) if !spec.gated => self.spawn(
                        &plan,
                        &spec,
                        &cgroup_procs,
                        [*stdout, *stderr, *report],
                        None,
                    ),
                    (Some(plan), [stdout, stderr, report, start]) if spec.gated => self.spawn(
                        &plan,
                        &spec,
                        &cgroup_procs,
                        [*stdout, *stderr, *report],
                        Some(*start),
                    ),
                    _ => Reply::SpawnFailed {
                        id: spec.id,
                        error: SetupError::internal("the zygote received no plan or wrong fds"),
                    },
                };
                for fd in fds {
                    sys::close(fd);
                }
                let _ = send_message(self.socket, &reply, &[]);
            }
            Request::Kill { id, signal } => {
                for fd in fds {
                    sys::close(fd);
                }
                // The pid cannot have been reused: only this process reaps
                // it, and it is removed from `running` when reaped.
                if let Some((pid, _)) = self.running.iter().find(|(_, r)| r.id == id) {
                    let _ = sys::kill(*pid, signal);
                }
            }
        }
    }

    fn spawn(
        &mut self,
        plan: &RootfsPlan,
        spec: &Spec,
        cgroup_procs: &[PathBuf],
        fds: [RawFd; 3],
        start: Option<RawFd>,
    ) -> Reply {
        let (release_read, release_write) = match sys::pipe() {
            Ok(p) => p,
            Err(err) => {
                return Reply::SpawnFailed {
                    id: spec.id,
                    error: SetupError::io("create a pipe", "", &err),
                }
            }
        };
        let mut flags = libc::CLONE_NEWUSER
            | libc::CLONE_NEWNS
            | libc::CLONE_NEWPID
            | libc::CLONE_NEWUTS
            | libc::CLONE_NEWIPC;
        if !spec.network {
            flags |= libc::CLONE_NEWNET;
        }
        // SAFETY: the zygote is single-threaded.
        let pid = match unsafe { sys::clone_into_namespaces(flags) } {
            Ok(pid) => pid,
            Err(err) => {
                sys::close(release_read);
                sys::close(release_write);
                return Reply::SpawnFailed {
                    id: spec.id,
                    error: SetupError::io("create the namespaces (clone)", "", &err),
                };
            }
        };
        if pid == 0 {
            sys::close(release_write);
            let fds = InitFds {
                stdout: fds[0],
                stderr: fds[1],
                report: fds[2],
                release: release_read,
                start,
            };
            init::run(plan, spec, fds);
        }
        sys::close(release_read);

        let result = self.configure_child(pid, cgroup_procs);
        match result {
            Ok(()) => {
                let _ = sys::write_all(release_write, b"1");
                sys::close(release_write);
                self.running.insert(
                    pid,
                    Running {
                        id: spec.id,
                        quiet: false,
                    },
                );
                Reply::Spawned { id: spec.id, pid }
            }
            Err(error) => {
                let _ = sys::kill(pid, libc::SIGKILL);
                sys::close(release_write);
                self.running.insert(
                    pid,
                    Running {
                        id: spec.id,
                        quiet: true,
                    },
                );
                Reply::SpawnFailed { id: spec.id, error }
            }
        }
    }

    /// Writes the child's uid and gid maps and moves it into its cgroups,
    /// while it waits on the release pipe.
    fn configure_child(
        &self,
        pid: libc::pid_t,
        cgroup_procs: &[PathBuf],
    ) -> Result<(), SetupError> {
        for procs in cgroup_procs {
            std::fs::write(procs, pid.to_string()).map_err(|e| {
                SetupError::io("join the test cgroup", &procs.display().to_string(), &e)
            })?;
        }
        let proc_dir = format!("/proc/{pid}");
        let (uid_map, gid_map) = if self.uid == 0 {
            // Root keeps the whole identity map, so files keep their owners.
            ("0 0 4294967295".to_string(), "0 0 4294967295".to_string())
        } else {
            (
                format!("{0} {0} 1", self.uid),
                format!("{0} {0} 1", self.gid),
            )
        };
        let write = |file: &str, value: &str, step: &'static str| {
            let path = format!("{proc_dir}/{file}");
            std::fs::write(&path, value).map_err(|e| SetupError::io(step, &path, &e))
        };
        write("uid_map", &uid_map, "write the user namespace uid map")?;
        if self.uid != 0 {
            // An unprivileged process may write gid_map only after denying
            // setgroups, or it could drop supplementary groups that deny it
            // access to files.
            write("setgroups", "deny", "deny setgroups in the user namespace")?;
        }
        write("gid_map", &gid_map, "write the user namespace gid map")?;
        Ok(())
    }

    fn reap(&mut self) {
        while let Some((pid, status, rusage)) = sys::reap_any() {
            let Some(running) = self.running.remove(&pid) else {
                continue;
            };
            if running.quiet {
                continue;
            }
            let reply = Reply::Exited {
                id: running.id,
                status,
                rusage,
            };
            let _ = send_message(self.socket, &reply, &[]);
        }
    }

    /// Kills every container and exits: the runner is gone.
    fn shutdown(&mut self) -> ! {
        for pid in self.running.keys() {
            let _ = sys::kill(*pid, libc::SIGKILL);
        }
        // SAFETY: _exit takes an integer and ends this process.
        unsafe { libc::_exit(0) }
    }
}
