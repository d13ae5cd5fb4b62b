//! Finds where each cgroup controller lives for this process, from
//! `/proc/self/cgroup` and `/proc/self/mountinfo`.
//!
//! Hosts come in three shapes: cgroup v1 (one hierarchy per controller or
//! per group of controllers), v2 (one unified tree), and hybrid (some
//! controllers on v1 while the v2 tree has the rest, often nothing). Each
//! controller is located on its own, so a hybrid host whose memory and pids
//! controllers sit on v1 works the same as a pure host.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A controller the runner uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Controller {
    Memory,
    Cpu,
    Cpuacct,
    Pids,
    Freezer,
}

impl Controller {
    pub const ALL: [Controller; 5] = [
        Controller::Memory,
        Controller::Cpu,
        Controller::Cpuacct,
        Controller::Pids,
        Controller::Freezer,
    ];

    /// Returns the kernel's name of the controller.
    pub fn name(self) -> &'static str {
        match self {
            Controller::Memory => "memory",
            Controller::Cpu => "cpu",
            Controller::Cpuacct => "cpuacct",
            Controller::Pids => "pids",
            Controller::Freezer => "freezer",
        }
    }
}

/// The cgroup version of one hierarchy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Version {
    #[serde(rename = "v1")]
    V1,
    #[serde(rename = "v2")]
    V2,
}

/// The directory of this process's own cgroup in one hierarchy.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Location {
    pub version: Version,
    /// The cgroup directory this process is in, as seen through the mount.
    pub dir: PathBuf,
}

/// The location of each controller, and of the v2 tree.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Layout {
    pub controllers: BTreeMap<Controller, Location>,
    /// This process's own cgroup in the v2 tree, when one is mounted.
    pub unified: Option<PathBuf>,
}

impl Layout {
    /// Reads the layout of the running process.
    pub fn detect() -> std::io::Result<Layout> {
        let cgroup = std::fs::read_to_string("/proc/self/cgroup")?;
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
        Ok(Layout::parse(&cgroup, &mountinfo, |dir| {
            std::fs::read_to_string(dir.join("cgroup.controllers")).ok()
        }))
    }

    /// Builds a layout from the text of `/proc/self/cgroup` and
    /// `/proc/self/mountinfo`. `read_controllers` returns the content of
    /// `cgroup.controllers` in a v2 directory, so tests can supply it.
    pub fn parse(
        cgroup: &str,
        mountinfo: &str,
        read_controllers: impl Fn(&Path) -> Option<String>,
    ) -> Layout {
        let memberships = parse_proc_cgroup(cgroup);
        let mounts = parse_cgroup_mounts(mountinfo);
        let mut layout = Layout::default();

        for mount in &mounts {
            match &mount.kind {
                MountKind::V1(names) => {
                    let own = memberships
                        .iter()
                        .find(|m| m.controllers.iter().any(|c| names.contains(c)));
                    let Some(own) = own else { continue };
                    let Some(dir) = mount.dir_for(&own.path) else {
                        continue;
                    };
                    for controller in Controller::ALL {
                        if names.iter().any(|n| n == controller.name()) {
                            layout.controllers.entry(controller).or_insert(Location {
                                version: Version::V1,
                                dir: dir.clone(),
                            });
                        }
                    }
                }
                MountKind::V2 => {
                    let own = memberships.iter().find(|m| m.hierarchy_id == 0);
                    let Some(own) = own else { continue };
                    let Some(dir) = mount.dir_for(&own.path) else {
                        continue;
                    };
                    if layout.unified.is_none() {
                        layout.unified = Some(dir);
                    }
                }
            }
        }

        // A v2 controller counts only where no v1 hierarchy already has it:
        // the kernel attaches each controller to one hierarchy at a time.
        if let Some(dir) = layout.unified.clone() {
            let available = read_controllers(&dir).unwrap_or_default();
            for name in available.split_whitespace() {
                let controller = match name {
                    "memory" => Some(Controller::Memory),
                    // v2's `cpu` controller carries both the quota and the usage.
                    "cpu" => Some(Controller::Cpu),
                    "pids" => Some(Controller::Pids),
                    _ => None,
                };
                if let Some(controller) = controller {
                    layout.controllers.entry(controller).or_insert(Location {
                        version: Version::V2,
                        dir: dir.clone(),
                    });
                }
            }
            // The v2 core files (`cgroup.freeze`, `cgroup.kill`, `cpu.stat`)
            // exist in every v2 cgroup, with or without controllers.
            if layout.controllers.get(&Controller::Cpu).map(|l| l.version) == Some(Version::V2) {
                layout
                    .controllers
                    .entry(Controller::Cpuacct)
                    .or_insert(Location {
                        version: Version::V2,
                        dir: dir.clone(),
                    });
            }
            if layout
                .controllers
                .values()
                .any(|l| l.version == Version::V2)
            {
                layout
                    .controllers
                    .entry(Controller::Freezer)
                    .or_insert(Location {
                        version: Version::V2,
                        dir,
                    });
            }
        }
        layout
    }

    /// Returns the location of one controller, if this host has it.
    pub fn get(&self, controller: Controller) -> Option<&Location> {
        self.controllers.get(&controller)
    }

    /// Describes the layout in a word: `v1`, `v2`, `hybrid` or `none`.
    pub fn kind(&self) -> &'static str {
        let v1 = self.controllers.values().any(|l| l.version == Version::V1);
        let v2 = self.controllers.values().any(|l| l.version == Version::V2);
        match (v1, v2, self.unified.is_some()) {
            (false, false, _) => "none",
            (true, false, false) => "v1",
            (true, _, true) => "hybrid",
            (true, true, false) => "hybrid",
            (false, true, _) => "v2",
        }
    }
}

struct Membership {
    hierarchy_id: u32,
    controllers: Vec<String>,
    path: String,
}

/// Parses `/proc/self/cgroup`: `ID:controller,list:/path` per line.
fn parse_proc_cgroup(text: &str) -> Vec<Membership> {
    text.lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            let hierarchy_id = parts.next()?.parse().ok()?;
            let controllers = parts.next()?;
            let path = parts.next()?.to_string();
            let controllers = controllers
                .split(',')
                .filter(|c| !c.is_empty())
                .map(str::to_string)
                .collect();
            Some(Membership {
                hierarchy_id,
                controllers,
                path,
            })
        })
        .collect()
}

enum MountKind {
    V1(Vec<String>),
    V2,
}

struct CgroupMount {
    /// The cgroup path at the root of this mount (field 4 of mountinfo).
    root: String,
    mount_point: PathBuf,
    kind: MountKind,
}

impl CgroupMount {
    /// Maps a cgroup path from `/proc/self/cgroup` to a directory under
    /// this mount, or `None` when the mount does not show that cgroup (a
    /// container that mounted only its own subtree shows `/` as its root).
    fn dir_for(&self, cgroup_path: &str) -> Option<PathBuf> {
        let relative = if self.root == "/" {
            cgroup_path.trim_start_matches('/')
        } else {
            let rest = cgroup_path.strip_prefix(self.root.as_str())?;
            if !rest.is_empty() && !rest.starts_with('/') {
                return None;
            }
            rest.trim_start_matches('/')
        };
        let dir = self.mount_point.join(relative);
        Some(dir)
    }
}

/// Picks the cgroup and cgroup2 mounts out of `/proc/self/mountinfo`.
fn parse_cgroup_mounts(text: &str) -> Vec<CgroupMount> {
    let mut mounts = Vec::new();
    for line in text.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let fields: Vec<&str> = left.split(' ').collect();
        let tail: Vec<&str> = right.split(' ').collect();
        if fields.len() < 5 || tail.len() < 3 {
            continue;
        }
        let root = unescape_mountinfo(fields[3]);
        let mount_point = PathBuf::from(unescape_mountinfo(fields[4]));
        let kind = match tail[0] {
            "cgroup2" => MountKind::V2,
            "cgroup" => {
                let names = tail[2]
                    .split(',')
                    .filter(|o| !matches!(*o, "rw" | "ro") && !o.contains('='))
                    .map(str::to_string)
                    .collect();
                MountKind::V1(names)
            }
            _ => continue,
        };
        mounts.push(CgroupMount {
            root,
            mount_point,
            kind,
        });
    }
    mounts
}

/// Undoes mountinfo's octal escapes (`\040` for a space, and so on).
pub fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() {
            let digits = &field[i + 1..i + 4];
            if let Ok(value) = u8::from_str_radix(digits, 8) {
                out.push(value);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID_CGROUP: &str = "9:name=systemd:/\n8:pids:/\n7:blkio:/\n6:freezer:/\n\
        5:devices:/\n4:memory:/process_api/b848\n3:cpuset:/\n2:cpuacct:/\n1:cpu:/\n0::/\n";
    const HYBRID_MOUNTINFO: &str = "\
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn hybrid_host_uses_v1_controllers() {
        let layout = Layout::parse(HYBRID_CGROUP, HYBRID_MOUNTINFO, |_| Some(String::new()));
        let memory = layout.get(Controller::Memory).unwrap();
        assert_eq!(memory.version, Version::V1);
        assert_eq!(
            memory.dir,
            PathBuf::from("/sys/fs/cgroup/memory/process_api/b848")
        );
        assert_eq!(
            layout.get(Controller::Pids).unwrap().dir,
            PathBuf::from("/sys/fs/cgroup/pids")
        );
        assert_eq!(
            layout.unified,
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(layout.kind(), "hybrid");
    }

    #[test]
    fn comounted_v1_controllers_share_a_dir() {
        let cgroup = "4:cpu,cpuacct:/user.slice\n3:memory:/user.slice\n2:pids:/user.slice\n";
        let mountinfo = "\
30 25 0:26 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
31 25 0:27 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
32 25 0:28 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids
";
        let layout = Layout::parse(cgroup, mountinfo, |_| None);
        let cpu = layout.get(Controller::Cpu).unwrap();
        let cpuacct = layout.get(Controller::Cpuacct).unwrap();
        assert_eq!(cpu.dir, cpuacct.dir);
        assert_eq!(
            cpu.dir,
            PathBuf::from("/sys/fs/cgroup/cpu,cpuacct/user.slice")
        );
        assert!(layout.get(Controller::Freezer).is_none());
        assert_eq!(layout.kind(), "v1");
    }

    #[test]
    fn unified_host_uses_v2_for_all() {
        let cgroup = "0::/user.slice/user-1000.slice/session-3.scope\n";
        let mountinfo = "35 24 0:30 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n";
        let layout = Layout::parse(cgroup, mountinfo, |dir| {
            assert_eq!(
                dir,
                Path::new("/sys/fs/cgroup/user.slice/user-1000.slice/session-3.scope")
            );
            Some("cpuset cpu io memory pids\n".into())
        });
        for controller in Controller::ALL {
            assert_eq!(
                layout.get(controller).unwrap().version,
                Version::V2,
                "{controller:?}"
            );
        }
        assert_eq!(layout.kind(), "v2");
    }

    #[test]
    fn v2_without_delegated_controllers() {
        let cgroup = "0::/user.slice/user-1000.slice/session-3.scope\n";
        let mountinfo = "35 24 0:30 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        let layout = Layout::parse(cgroup, mountinfo, |_| Some("\n".into()));
        assert!(layout.controllers.is_empty());
        assert_eq!(layout.kind(), "none");
    }

    #[test]
    fn container_sees_own_cgroup_as_root() {
        // Inside a container with a private cgroup namespace, /proc/self/cgroup
        // shows `/` and the mount root is `/` too.
        let cgroup = "0::/\n";
        let mountinfo = "600 590 0:30 / /sys/fs/cgroup ro - cgroup2 cgroup2 rw\n";
        let layout = Layout::parse(cgroup, mountinfo, |_| Some("memory pids".into()));
        assert_eq!(
            layout.get(Controller::Memory).unwrap().dir,
            PathBuf::from("/sys/fs/cgroup")
        );
        assert!(layout.get(Controller::Cpu).is_none());
    }

    #[test]
    fn container_with_bind_mounted_subtree() {
        // Without a cgroup namespace, a bind of the container's own cgroup
        // shows that cgroup's path as the mount root.
        let cgroup = "5:memory:/docker/abc\n";
        let mountinfo =
            "600 590 0:30 /docker/abc /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n";
        let layout = Layout::parse(cgroup, mountinfo, |_| None);
        assert_eq!(
            layout.get(Controller::Memory).unwrap().dir,
            PathBuf::from("/sys/fs/cgroup/memory")
        );
    }

    #[test]
    fn mountinfo_escapes_are_decoded() {
        assert_eq!(unescape_mountinfo(r"/mnt/a\040b"), "/mnt/a b");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
    }
}
