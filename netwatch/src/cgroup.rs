//! Cgroup paths (the container or service of a process): from the kernel's cgroup id, and
//! from `/proc/<pid>/cgroup`.
//!
//! Why: the kernel programs record `bpf_get_current_cgroup_id()`, a number; users know
//! `/system.slice/shop.service` or a container's cgroup. The id is the inode number of the
//! cgroup's directory in the cgroup v2 hierarchy, so one walk of that hierarchy maps ids to
//! paths; new cgroups are picked up by walking again when an id is not known.
#![cfg_attr(
    not(test),
    expect(dead_code, reason = "wired into `netwatch leaks` next (issue 7)")
)]

use std::collections::{HashMap, HashSet};
use std::fs;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::{LazyLock, Mutex};

/// Where the cgroup v2 hierarchy is mounted: `/sys/fs/cgroup` on a pure v2 system,
/// `/sys/fs/cgroup/unified` on a hybrid one (found in `/proc/self/mountinfo`).
pub fn cgroup2_mount() -> Option<PathBuf> {
    let text = fs::read_to_string("/proc/self/mountinfo").ok()?;
    parse_cgroup2_mount(&text)
}

/// The mount point of the first `cgroup2` line of a mountinfo text.
fn parse_cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        if right.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        Some(PathBuf::from(unescape_octal(
            left.split_whitespace().nth(4)?,
        )))
    })
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_octal(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let oct = b
            .get(i + 1..i + 4)
            .filter(|o| o.iter().all(|c| (b'0'..=b'7').contains(c)));
        match oct {
            Some(o) if b[i] == b'\\' => {
                let v = o.iter().fold(0u32, |v, c| v * 8 + u32::from(c - b'0'));
                out.push(v as u8);
                i += 4;
            }
            _ => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Cgroup id -> path cache over one cgroup v2 hierarchy.
#[derive(Debug)]
pub struct CgroupPaths {
    /// Mount point of the hierarchy; `None` when no cgroup v2 is mounted (nothing resolves).
    root: Option<PathBuf>,
    /// Directory inode -> path relative to `root` (`/` for the root itself).
    cache: HashMap<u64, String>,
    /// Ids that a walk did not find. Cgroup ids are never reused, so a cgroup that was not
    /// there when the hierarchy was walked after the id was seen is gone for good: asking
    /// again must not walk again.
    missed: HashSet<u64>,
}

impl CgroupPaths {
    /// A cache over this machine's cgroup v2 hierarchy (walked on the first lookup).
    pub fn new() -> CgroupPaths {
        CgroupPaths::with_root(cgroup2_mount())
    }

    fn with_root(root: Option<PathBuf>) -> CgroupPaths {
        CgroupPaths {
            root,
            cache: HashMap::new(),
            missed: HashSet::new(),
        }
    }

    /// The path of cgroup `id` relative to the hierarchy's mount point
    /// (`/system.slice/ssh.service`); walks the hierarchy again when `id` is new.
    pub fn resolve(&mut self, id: u64) -> Option<String> {
        if let Some(path) = self.cache.get(&id) {
            return Some(path.clone());
        }
        if self.missed.contains(&id) {
            return None;
        }
        self.refresh();
        let found = self.cache.get(&id).cloned();
        if found.is_none() {
            self.missed.insert(id);
        }
        found
    }

    /// Walks the whole hierarchy again, replacing the cache (removed cgroups disappear).
    pub fn refresh(&mut self) {
        self.cache.clear();
        if let Some(root) = &self.root {
            walk(root, "", &mut self.cache);
        }
    }
}

/// Records `dir` (at `rel`, "" for the root) and every directory below it. Directories that
/// vanish or cannot be read are skipped; symlinks are not followed.
fn walk(dir: &Path, rel: &str, cache: &mut HashMap<u64, String>) {
    let Ok(meta) = fs::symlink_metadata(dir) else {
        return;
    };
    if !meta.is_dir() {
        return;
    }
    cache.insert(
        meta.ino(),
        if rel.is_empty() {
            "/".into()
        } else {
            rel.into()
        },
    );
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            let child = format!("{rel}/{}", entry.file_name().to_string_lossy());
            walk(&entry.path(), &child, cache);
        }
    }
}

static PATHS: LazyLock<Mutex<CgroupPaths>> = LazyLock::new(|| Mutex::new(CgroupPaths::new()));

/// The path of the cgroup v2 `id` (what `bpf_get_current_cgroup_id()` returns) relative to
/// the hierarchy's mount point, e.g. `/system.slice/ssh.service`; `None` when the cgroup is
/// gone or no cgroup v2 hierarchy is mounted. Cached process-wide.
pub fn cgroup_path(id: u64) -> Option<String> {
    PATHS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .resolve(id)
}

/// The cgroup of process `pid` from `/proc/<pid>/cgroup`: its cgroup v2 path (`0::/path`),
/// or on a cgroup v1 only system the `name=systemd` hierarchy's path, else the first
/// controller's. `None` if the process is gone.
pub fn cgroup_of_pid(pid: u32) -> Option<String> {
    parse_proc_cgroup(&fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?)
}

/// Picks the path out of a `/proc/<pid>/cgroup` text (`hierarchy-id:controllers:path` lines).
fn parse_proc_cgroup(text: &str) -> Option<String> {
    let lines: Vec<(&str, &str, &str)> = text
        .lines()
        .filter_map(|l| {
            let (id, rest) = l.split_once(':')?;
            let (controllers, path) = rest.split_once(':')?;
            Some((id, controllers, path))
        })
        .collect();
    let pick = |f: &dyn Fn(&(&str, &str, &str)) -> bool| {
        lines.iter().find(|l| f(l)).map(|(_, _, p)| p.to_string())
    };
    pick(&|&(id, c, _)| id == "0" && c.is_empty())
        .or_else(|| pick(&|&(_, c, _)| c.split(',').any(|c| c == "name=systemd")))
        .or_else(|| pick(&|&(_, c, _)| !c.is_empty()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_cgroup_v2_wins() {
        let hybrid =
            "9:name=systemd:/system.slice/a.service\n4:memory:/m\n0::/system.slice/shop.service\n";
        assert_eq!(
            parse_proc_cgroup(hybrid).as_deref(),
            Some("/system.slice/shop.service")
        );
        assert_eq!(parse_proc_cgroup("0::/\n").as_deref(), Some("/"));
    }

    #[test]
    fn proc_cgroup_v1_prefers_name_systemd_then_the_first_controller() {
        let v1 = "4:memory:/m\n3:cpu,cpuacct:/c\n1:name=systemd:/user.slice/s\n";
        assert_eq!(parse_proc_cgroup(v1).as_deref(), Some("/user.slice/s"));
        assert_eq!(
            parse_proc_cgroup("4:memory:/m\n3:cpu,cpuacct:/c\n").as_deref(),
            Some("/m")
        );
        assert_eq!(parse_proc_cgroup(""), None);
        assert_eq!(parse_proc_cgroup("garbage\n"), None);
    }

    #[test]
    fn finds_the_cgroup2_mount() {
        let hybrid = "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n\
                      40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd\n\
                      41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        assert_eq!(
            parse_cgroup2_mount(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let odd = "41 31 0:38 / /mnt/my\\040cg rw shared:9 - cgroup2 none rw\n";
        assert_eq!(parse_cgroup2_mount(odd), Some(PathBuf::from("/mnt/my cg")));
        assert_eq!(parse_cgroup2_mount(&hybrid[..hybrid.len() / 2]), None);
    }

    #[test]
    fn resolves_a_fake_hierarchy_and_refreshes_on_a_miss() {
        let root = std::env::temp_dir().join(format!("netwatch-cgroup-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(root.join("system.slice/ssh.service")).unwrap();
        fs::write(root.join("system.slice/cgroup.procs"), "").unwrap();
        let ino = |p: &str| fs::metadata(root.join(p)).unwrap().ino();
        let mut paths = CgroupPaths::with_root(Some(root.clone()));
        assert_eq!(paths.resolve(ino("")).as_deref(), Some("/"));
        assert_eq!(
            paths.resolve(ino("system.slice/ssh.service")).as_deref(),
            Some("/system.slice/ssh.service")
        );
        assert_eq!(paths.resolve(ino("system.slice/cgroup.procs")), None);
        fs::create_dir_all(root.join("user.slice")).unwrap();
        assert_eq!(
            paths.resolve(ino("user.slice")).as_deref(),
            Some("/user.slice")
        );
        fs::remove_dir_all(&root).unwrap();
        assert_eq!(CgroupPaths::with_root(None).resolve(1), None);
    }

    #[test]
    fn this_process_round_trips() {
        let path = cgroup_of_pid(std::process::id()).expect("our own /proc/self/cgroup");
        let Some(mount) = cgroup2_mount() else {
            eprintln!("SKIPPED: no cgroup v2 hierarchy mounted");
            return;
        };
        // Only meaningful when the path came from the v2 line.
        let text = fs::read_to_string("/proc/self/cgroup").unwrap();
        if !text.lines().any(|l| l.starts_with("0::")) {
            eprintln!("SKIPPED: this process has no cgroup v2 line");
            return;
        }
        let id = fs::metadata(mount.join(path.trim_start_matches('/')))
            .unwrap()
            .ino();
        assert_eq!(cgroup_path(id).as_deref(), Some(path.as_str()));
    }
}
