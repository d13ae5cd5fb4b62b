//! The container's root filesystem: planned once per run from the host's
//! mounts, then built by each container's init in its own mount namespace.
//!
//! "/" is never overlaid in one piece: in a user namespace the kernel
//! rejects an overlay whose lower directory has locked submounts (EINVAL),
//! and an overlay would hide those submounts anyway. Each top-level
//! directory is overlaid on its own instead, with the upper and work
//! directories on a tmpfs private to the container. A directory with
//! submounts is bound recursively and read-only.

use std::fs;
use std::io;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

use super::SetupError;

/// One step of building the root filesystem, for a path given as it is on
/// the host.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Entry {
    /// A symbolic link such as `/bin -> usr/bin`.
    Symlink { path: PathBuf, target: PathBuf },
    /// A copy-on-write overlay over the host directory.
    Overlay { path: PathBuf },
    /// A recursive read-only bind of the host directory.
    BindReadOnly { path: PathBuf },
    /// An empty directory on the container's tmpfs.
    EmptyDir { path: PathBuf, mode: u32 },
    /// An empty directory on the container's tmpfs standing in for an empty
    /// host directory, with its owner and mode: the same view and the same
    /// copy-on-write behaviour as an overlay, without a mount.
    EmptyCopy { path: PathBuf },
    /// A host file or directory the test must not read, such as cargo's
    /// registry credentials: `/dev/null` or an empty read-only directory
    /// is bound over it.
    Mask { path: PathBuf },
}

/// Everything a container's init needs to build its root filesystem.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct RootfsPlan {
    pub entries: Vec<Entry>,
    /// A directory on the host over which each container mounts its own
    /// tmpfs, inside its private mount namespace.
    pub staging: PathBuf,
    /// A file bound over `/etc/hosts` so the container's hostname resolves
    /// offline.
    pub hosts_file: Option<PathBuf>,
    /// Whether overlayfs takes the `userxattr` option (Linux 5.11 and
    /// later); without it, deleting a lower file fails in a user namespace.
    pub userxattr: bool,
    /// Use read-only binds in place of the planned overlays, because the
    /// kernel rejected overlayfs.
    pub overlay_refused: bool,
}

/// Top-level directories whose host content the test must not see:
/// credentials in home directories, sockets under /run, and the host's
/// temporary files. Each becomes an empty directory.
const HIDDEN: &[(&str, u32)] = &[
    ("root", 0o700),
    ("home", 0o755),
    ("run", 0o755),
    ("tmp", 0o1777),
];

/// Directories the container builds itself.
const SPECIAL: &[&str] = &["proc", "sys", "dev"];

/// Plans the root filesystem from the host's `/` and mount table.
/// `extra` lists host paths that must stay visible even when a hidden
/// directory contains them (the workspace, the target directory, the
/// toolchain), each with whether it is copy-on-write or read-only.
pub fn plan(
    staging: PathBuf,
    extra: &[(PathBuf, bool)],
    masks: &[PathBuf],
) -> io::Result<RootfsPlan> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo")?;
    let mount_points: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(crate::cgroup::unescape_mountinfo(p)))
        .collect();

    let mut entries = Vec::new();
    let mut names: Vec<_> = fs::read_dir("/")?.flatten().collect();
    names.sort_by_key(|e| e.file_name());
    for entry in names {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let path = Path::new("/").join(name);
        let file_type = entry.file_type()?;
        if file_type.is_symlink() {
            entries.push(Entry::Symlink {
                target: fs::read_link(&path)?,
                path,
            });
        } else if !file_type.is_dir() || SPECIAL.contains(&name) {
            continue;
        } else if let Some((_, mode)) = HIDDEN.iter().find(|(n, _)| *n == name) {
            entries.push(Entry::EmptyDir { path, mode: *mode });
        } else if mount_points
            .iter()
            .any(|m| m.starts_with(&path) && *m != path)
        {
            entries.push(Entry::BindReadOnly { path });
        } else if fs::read_dir(&path).is_ok_and(|mut d| d.next().is_none()) {
            entries.push(Entry::EmptyCopy { path });
        } else {
            entries.push(Entry::Overlay { path });
        }
    }

    for (path, writable) in extra {
        let path = &path.canonicalize().unwrap_or_else(|_| path.clone());
        let visible = entries.iter().any(|e| match e {
            Entry::Overlay { path: p } | Entry::BindReadOnly { path: p } => path.starts_with(p),
            _ => false,
        });
        if visible || !path.is_dir() {
            continue;
        }
        let has_submounts = mount_points
            .iter()
            .any(|m| m.starts_with(path) && m != path);
        if *writable && !has_submounts {
            entries.push(Entry::Overlay { path: path.clone() });
        } else {
            entries.push(Entry::BindReadOnly { path: path.clone() });
        }
    }

    for path in masks {
        if path.exists() {
            entries.push(Entry::Mask { path: path.clone() });
        }
    }

    Ok(RootfsPlan {
        entries,
        staging,
        hosts_file: None,
        userxattr: true,
        overlay_refused: false,
    })
}

fn step<T>(step: &'static str, path: &Path, result: nix::Result<T>) -> Result<T, SetupError> {
    result.map_err(|errno| SetupError {
        step: step.to_string(),
        path: path.display().to_string(),
        errno: errno as i32,
        detail: errno.desc().to_string(),
    })
}

fn io_step<T>(step: &'static str, path: &Path, result: io::Result<T>) -> Result<T, SetupError> {
    result.map_err(|err| SetupError {
        step: step.to_string(),
        path: path.display().to_string(),
        errno: err.raw_os_error().unwrap_or(0),
        detail: err.to_string(),
    })
}

/// Joins a host path under the new root.
fn under(root: &Path, path: &Path) -> PathBuf {
    root.join(path.strip_prefix("/").unwrap_or(path))
}

fn make_dirs(path: &Path) -> Result<(), SetupError> {
    io_step(
        "create mount point",
        path,
        fs::DirBuilder::new().recursive(true).create(path),
    )
}

/// Builds the root filesystem under the staging directory and makes it the
/// root of the calling process. Runs in the container's init, inside its
/// new user and mount namespaces, before `pivot_root`.
pub fn build(
    plan: &RootfsPlan,
    tmpfs_size: u64,
    home: &Path,
    clock: &mut StepClock,
) -> Result<(), SetupError> {
    let none: Option<&str> = None;
    // Mount events must not travel back to the host: every later mount is
    // private to this namespace.
    step(
        "make mounts private",
        Path::new("/"),
        mount(none, "/", none, MsFlags::MS_REC | MsFlags::MS_PRIVATE, none),
    )?;

    let staging = &plan.staging;
    let options = format!("size={tmpfs_size},mode=755");
    step(
        "mount the container tmpfs",
        staging,
        mount(
            Some("tmpfs"),
            staging,
            Some("tmpfs"),
            MsFlags::MS_NOSUID,
            Some(options.as_str()),
        ),
    )?;
    let root = staging.join("root");
    make_dirs(&root)?;
    step(
        "bind the new root",
        &root,
        mount(Some(&root), &root, none, MsFlags::MS_BIND, none),
    )?;

    clock.lap("tmpfs");
    for (index, entry) in plan.entries.iter().enumerate() {
        build_entry(plan, &root, index, entry)?;
    }
    clock.lap("overlays");

    mount_proc(&root)?;
    mount_sys(&root);
    clock.lap("proc+sys");
    build_dev(&root)?;
    let target_home = under(&root, home);
    make_dirs(&target_home)?;
    io_step(
        "make HOME writable",
        &target_home,
        fs::set_permissions(&target_home, fs::Permissions::from_mode(0o755)),
    )?;
    if let Some(hosts) = &plan.hosts_file {
        let target = root.join("etc/hosts");
        if target.exists() {
            step(
                "bind /etc/hosts",
                &target,
                mount(Some(hosts), &target, none, MsFlags::MS_BIND, none),
            )?;
            // One host file serves every container: a write would reach
            // the host's disk and the other tests.
            remount_read_only(&target)?;
        }
    }
    clock.lap("dev+home");
    pivot(&root, clock)
}

fn build_entry(
    plan: &RootfsPlan,
    root: &Path,
    index: usize,
    entry: &Entry,
) -> Result<(), SetupError> {
    let none: Option<&str> = None;
    match entry {
        Entry::Symlink { path, target } => {
            let at = under(root, path);
            if at.symlink_metadata().is_err() {
                io_step("create symlink", &at, symlink(target, &at))?;
            }
        }
        Entry::EmptyDir { path, mode } => {
            let at = under(root, path);
            make_dirs(&at)?;
            io_step(
                "set permissions",
                &at,
                fs::set_permissions(&at, fs::Permissions::from_mode(*mode)),
            )?;
        }
        Entry::EmptyCopy { path } => {
            let at = under(root, path);
            make_dirs(&at)?;
            match_owner(path, &at);
        }
        Entry::Mask { path } => {
            let at = under(root, path);
            if at.is_dir() {
                let empty = plan.staging.join("empty");
                make_dirs(&empty)?;
                step(
                    "hide a secrets directory",
                    &at,
                    mount(Some(&empty), &at, none, MsFlags::MS_BIND, none),
                )?;
                remount_read_only(&at)?;
            } else if at.exists() {
                step(
                    "hide a credentials file",
                    &at,
                    mount(Some("/dev/null"), &at, none, MsFlags::MS_BIND, none),
                )?;
            }
        }
        Entry::Overlay { path } if !plan.overlay_refused => {
            let at = under(root, path);
            make_dirs(&at)?;
            let upper = plan.staging.join(format!("upper/{index}"));
            let work = plan.staging.join(format!("work/{index}"));
            make_dirs(&upper)?;
            make_dirs(&work)?;
            match_owner(path, &upper);
            let mut options = format!(
                "lowerdir={},upperdir={},workdir={}",
                escape_overlay_path(path),
                upper.display(),
                work.display()
            );
            if plan.userxattr {
                options.push_str(",userxattr");
            }
            let result = mount(
                Some("overlay"),
                &at,
                Some("overlay"),
                MsFlags::empty(),
                Some(options.as_str()),
            );
            result.map_err(|errno| SetupError {
                step: "mount overlay".into(),
                path: at.display().to_string(),
                errno: errno as i32,
                detail: format!("{} (options: {options})", errno.desc()),
            })?;
        }
        Entry::Overlay { path } | Entry::BindReadOnly { path } => {
            let at = under(root, path);
            make_dirs(&at)?;
            step(
                "bind read-only",
                &at,
                mount(
                    Some(path),
                    &at,
                    none,
                    MsFlags::MS_BIND | MsFlags::MS_REC,
                    none,
                ),
            )?;
            make_tree_read_only(&at)?;
        }
    }
    Ok(())
}

/// Gives a directory the owner and mode of a host directory. overlayfs
/// shows the upper directory's attributes for the merged root, and a fresh
/// directory belongs to the invoking user, which would make `/etc`
/// writable for a test that could not write it on the host. Where the
/// owner is not mapped in this user namespace (a rootless run), the
/// directory keeps its owner and loses its write bits instead.
fn match_owner(lower: &Path, upper: &Path) {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = fs::metadata(lower) else {
        return;
    };
    let mut mode = meta.mode() & 0o7777;
    if meta.uid() != nix::unistd::geteuid().as_raw()
        && std::os::unix::fs::chown(upper, Some(meta.uid()), Some(meta.gid())).is_err()
    {
        mode &= !0o222;
    }
    let _ = fs::set_permissions(upper, fs::Permissions::from_mode(mode));
}

/// Measures the steps of the container sequence, for `--timings`.
pub struct StepClock {
    last: std::time::Instant,
    pub steps: Vec<(&'static str, u64)>,
}

impl StepClock {
    pub fn new() -> StepClock {
        StepClock {
            last: std::time::Instant::now(),
            steps: Vec::new(),
        }
    }

    /// Records the time since the previous lap under `name`, in microseconds.
    pub fn lap(&mut self, name: &'static str) {
        let now = std::time::Instant::now();
        self.steps
            .push((name, (now - self.last).as_micros() as u64));
        self.last = now;
    }
}

/// Escapes the characters overlayfs treats as separators in `lowerdir`.
fn escape_overlay_path(path: &Path) -> String {
    let text = path.display().to_string();
    text.replace('\\', "\\\\")
        .replace(':', "\\:")
        .replace(',', "\\,")
}

/// Makes a bind mount read-only. Only the bind changes: a remount without
/// MS_BIND would change the mounted filesystem itself, for the host too.
fn remount_read_only(at: &Path) -> Result<(), SetupError> {
    let none: Option<&str> = None;
    let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
    let result = mount(none, at, none, flags, none);
    // A bind of a mount with nosuid, nodev or noexec set must keep those
    // flags, or the kernel rejects the remount with EPERM in a user
    // namespace; retry with all three.
    let result = match result {
        Err(nix::errno::Errno::EPERM) => mount(
            none,
            at,
            none,
            flags | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            none,
        )
        .or_else(|_| {
            mount(
                none,
                at,
                none,
                flags | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                none,
            )
        }),
        other => other,
    };
    step("remount read-only", at, result)
}

/// Makes a recursive bind read-only with every mount below it: a plain
/// read-only remount would change the top mount only and leave a writable
/// submount writable. Uses `mount_setattr` (Linux 5.12 and later) and falls
/// back to the top mount alone where the kernel lacks it.
fn make_tree_read_only(at: &Path) -> Result<(), SetupError> {
    /// `struct mount_attr` from <linux/mount.h>.
    #[repr(C)]
    struct MountAttr {
        attr_set: u64,
        attr_clr: u64,
        propagation: u64,
        userns_fd: u64,
    }
    const MOUNT_ATTR_RDONLY: u64 = 0x1;
    const AT_RECURSIVE: libc::c_int = 0x8000;
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_RDONLY,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    let path =
        super::sys::cstring(at.as_os_str().as_encoded_bytes()).map_err(|err| SetupError {
            step: "remount read-only".into(),
            path: at.display().to_string(),
            errno: libc::EINVAL,
            detail: err.to_string(),
        })?;
    // SAFETY: `path` is a NUL-terminated string and `attr` a correctly sized
    // mount_attr, both alive for the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            path.as_ptr(),
            AT_RECURSIVE as libc::c_uint,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if ret == 0 {
        return Ok(());
    }
    let errno = std::io::Error::last_os_error();
    if errno.raw_os_error() == Some(libc::ENOSYS) {
        return remount_read_only(at);
    }
    Err(SetupError {
        step: "remount read-only".into(),
        path: at.display().to_string(),
        errno: errno.raw_os_error().unwrap_or(0),
        detail: errno.to_string(),
    })
}

/// Mounts a fresh `/proc` for the container's PID namespace. It must be
/// mounted before `pivot_root`: the kernel lets a user namespace mount proc
/// only while a fully visible proc is in its mount namespace.
fn mount_proc(root: &Path) -> Result<(), SetupError> {
    let none: Option<&str> = None;
    let at = root.join("proc");
    make_dirs(&at)?;
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    step(
        "mount /proc",
        &at,
        mount(Some("proc"), &at, Some("proc"), flags, none),
    )?;
    // A test must not create user namespaces of its own: in one it has
    // every capability again, enough to mount its cgroups and raise its
    // own caps, whose files belong to the host's root when the runner runs
    // as root. The limit applies to this user namespace and all below it.
    let limit = at.join("sys/user/max_user_namespaces");
    io_step(
        "forbid nested user namespaces",
        &limit,
        fs::write(&limit, "0"),
    )?;
    // Files under /proc that the host's root owns are writable by the
    // test's uid 0 even without capabilities (PCI config space, IRQ
    // affinity, kernel settings): keep them read-only when that is who
    // the test is.
    let root_mapped = nix::unistd::getuid().is_root();
    let read_only: &[&str] = if root_mapped {
        &[
            "sys",
            "sysrq-trigger",
            "bus",
            "fs",
            "irq",
            "pressure",
            "acpi",
            "scsi",
        ]
    } else {
        &["sys", "sysrq-trigger"]
    };
    for path in read_only {
        let target = at.join(path);
        if target.exists() {
            step(
                "bind /proc read-only",
                &target,
                mount(Some(&target), &target, none, MsFlags::MS_BIND, none),
            )?;
            remount_read_only(&target)?;
        }
    }
    Ok(())
}

/// Mounts a read-only sysfs of the container's network namespace. Without
/// it /sys stays empty, which only a few tests notice.
fn mount_sys(root: &Path) {
    let none: Option<&str> = None;
    let at = root.join("sys");
    if fs::create_dir_all(&at).is_err() {
        return;
    }
    let flags = MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    if let Err(errno) = mount(Some("sysfs"), &at, Some("sysfs"), flags, none) {
        tracing::debug!(%errno, "sysfs not mounted; /sys stays empty");
    }
}

/// Builds a minimal `/dev`: a few device nodes bound from the host (a user
/// namespace cannot create device nodes), a private devpts instance, and a
/// private `/dev/shm`.
fn build_dev(root: &Path) -> Result<(), SetupError> {
    let none: Option<&str> = None;
    let dev = root.join("dev");
    make_dirs(&dev)?;
    for name in ["null", "zero", "full", "random", "urandom", "tty"] {
        let host = Path::new("/dev").join(name);
        if !host.exists() {
            continue;
        }
        let target = dev.join(name);
        io_step(
            "create device node",
            &target,
            fs::File::create(&target).map(drop),
        )?;
        step(
            "bind device node",
            &target,
            mount(Some(&host), &target, none, MsFlags::MS_BIND, none),
        )?;
    }
    let pts = dev.join("pts");
    make_dirs(&pts)?;
    let pts_result = mount(
        Some("devpts"),
        &pts,
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620"),
    );
    match pts_result {
        Ok(()) => {
            io_step(
                "create /dev/ptmx",
                &dev.join("ptmx"),
                symlink("pts/ptmx", dev.join("ptmx")),
            )?;
        }
        Err(errno) => tracing::debug!(%errno, "devpts not mounted"),
    }
    let shm = dev.join("shm");
    make_dirs(&shm)?;
    io_step(
        "set permissions",
        &shm,
        fs::set_permissions(&shm, fs::Permissions::from_mode(0o1777)),
    )?;
    for (name, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        let at = dev.join(name);
        io_step("create /dev symlink", &at, symlink(target, &at))?;
    }
    Ok(())
}

/// Makes `root` the root of this mount namespace and detaches the old one.
fn pivot(root: &Path, clock: &mut StepClock) -> Result<(), SetupError> {
    io_step("enter the new root", root, std::env::set_current_dir(root))?;
    // pivot_root(".", ".") stacks the old root on top of the new one, so no
    // directory for it is needed; the detach below then removes it.
    step("pivot_root", root, nix::unistd::pivot_root(".", "."))?;
    clock.lap("pivot_root");
    step(
        "detach the old root",
        Path::new("/"),
        umount2(".", MntFlags::MNT_DETACH),
    )?;
    clock.lap("detach");
    io_step(
        "enter the new root",
        Path::new("/"),
        std::env::set_current_dir("/"),
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_hides_credentials_and_overlays_system_dirs() {
        let plan = plan(PathBuf::from("/nonexistent-staging"), &[], &[]).unwrap();
        let find = |name: &str| {
            plan.entries.iter().find(|e| match e {
                Entry::Symlink { path, .. }
                | Entry::Overlay { path }
                | Entry::BindReadOnly { path }
                | Entry::EmptyCopy { path }
                | Entry::Mask { path }
                | Entry::EmptyDir { path, .. } => path == Path::new(name),
            })
        };
        assert!(matches!(
            find("/root"),
            Some(Entry::EmptyDir { mode: 0o700, .. })
        ));
        assert!(matches!(
            find("/tmp"),
            Some(Entry::EmptyDir { mode: 0o1777, .. })
        ));
        assert!(find("/proc").is_none());
        if Path::new("/usr").is_dir() && !Path::new("/usr").is_symlink() {
            assert!(matches!(find("/usr"), Some(Entry::Overlay { .. })));
        }
    }

    #[test]
    fn workspace_under_hidden_dir_is_overlaid() {
        let dir = tempfile::tempdir_in("/tmp").unwrap();
        let plan = plan(
            PathBuf::from("/x"),
            &[(dir.path().to_path_buf(), true)],
            &[],
        )
        .unwrap();
        assert!(plan.entries.contains(&Entry::Overlay {
            path: dir.path().to_path_buf()
        }));
    }

    #[test]
    fn overlay_paths_escape_separators() {
        assert_eq!(escape_overlay_path(Path::new("/a,b:c")), "/a\\,b\\:c");
    }
}
