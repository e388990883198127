//! The network namespaces of this host, each with a file that enters it.
//!
//! Why: sock_diag ([`crate::host::sockdiag`]) lists only the sockets of the namespace it is asked
//! from, and a container's sockets live in the container's namespace. Every namespace that
//! holds a socket is either some process's (`/proc/<pid>/ns/net`) or pinned by a bind mount
//! (`ip netns add` puts those in `/run/netns`), so those two places name them all.
use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

/// One network namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Netns {
    /// The namespace's inode (`ip netns identify`, `lsns`, `/proc/<pid>/ns/net` -> `net:[N]`).
    pub inode: u64,
    /// A file that opens it, for setns().
    pub path: PathBuf,
}

/// The inode of this process's network namespace.
pub fn own() -> Option<u64> {
    fs::metadata("/proc/self/ns/net").ok().map(|m| m.ino())
}

/// Every network namespace, this process's first, each once. Processes that exit during the
/// scan or whose namespace cannot be read are skipped.
pub fn all() -> Vec<Netns> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    let mut add = |path: PathBuf| {
        if let Ok(m) = fs::metadata(&path)
            && seen.insert(m.ino())
        {
            out.push(Netns {
                inode: m.ino(),
                path,
            });
        }
    };
    add(PathBuf::from("/proc/self/ns/net"));
    for dir in ["/run/netns", "/var/run/netns"] {
        for entry in read_dir_sorted(Path::new(dir)) {
            add(entry);
        }
    }
    if let Ok(procs) = fs::read_dir("/proc") {
        for entry in procs.flatten() {
            let name = entry.file_name();
            if name
                .to_str()
                .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
            {
                add(entry.path().join("ns/net"));
            }
        }
    }
    out
}

fn read_dir_sorted(dir: &Path) -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    paths.sort();
    paths
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The inode in a namespace link's target, `net:[4026531840]`, read with readlink(2): not
    /// the stat(2) that the code under test uses.
    fn link_inode(path: &Path) -> u64 {
        let target = fs::read_link(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let target = target.to_string_lossy();
        target
            .strip_prefix("net:[")
            .and_then(|t| t.strip_suffix(']'))
            .and_then(|t| t.parse().ok())
            .unwrap_or_else(|| panic!("{}: not a net namespace link: {target}", path.display()))
    }

    #[test]
    fn ours_comes_first_and_each_namespace_once() {
        let me = link_inode(Path::new("/proc/self/ns/net"));
        assert_eq!(own(), Some(me));
        let all = all();
        assert_eq!(all.first().map(|n| n.inode), Some(me), "{all:?}");
        let inodes: HashSet<u64> = all.iter().map(|n| n.inode).collect();
        assert_eq!(inodes.len(), all.len(), "{all:?}");
        // Each entry's file opens the namespace it names.
        for n in &all {
            if let Ok(target) = fs::read_link(&n.path) {
                assert_eq!(
                    target.to_string_lossy(),
                    format!("net:[{}]", n.inode),
                    "{n:?}"
                );
            }
        }
        // A namespace of another process (init's; the same as ours outside a container) is
        // among them.
        if let Ok(target) = fs::read_link("/proc/1/ns/net") {
            let init = link_inode(Path::new("/proc/1/ns/net"));
            assert!(inodes.contains(&init), "init's {target:?} missing: {all:?}");
        }
    }
}
