//! Which processes hold which sockets, from the `socket:[INODE]` links in `/proc/<pid>/fd`.
//!
//! Why: sock_diag ([`crate::host::sockdiag`]) gives each existing socket's inode but not its owner;
//! the only record of who holds a socket is the fd table of every process (what `ss -p` and
//! `lsof` read). A socket can be held by several processes (after fork) or several fds.

use std::collections::HashMap;
use std::fs;
use std::path::Path;

/// One fd that refers to a socket.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FdOwner {
    /// Process (thread group) id.
    pub pid: u32,
    /// `/proc/<pid>/comm`, without the newline; empty if it could not be read.
    pub comm: String,
    /// The fd number in that process.
    pub fd: u32,
}

/// Every socket inode held by a process, with its holders, from a scan of `/proc`.
///
/// Never fails as a whole: processes that exit during the scan, or whose fds cannot be read
/// (not root, another user's process), are skipped. Holders of one inode are sorted by pid,
/// then fd.
pub fn socket_owners() -> HashMap<u64, Vec<FdOwner>> {
    socket_owners_in(Path::new("/proc"))
}

/// [`socket_owners`] over a proc tree at `proc_root` (a fake one in tests).
fn socket_owners_in(proc_root: &Path) -> HashMap<u64, Vec<FdOwner>> {
    let mut owners: HashMap<u64, Vec<FdOwner>> = HashMap::new();
    let Ok(procs) = fs::read_dir(proc_root) else {
        return owners;
    };
    for entry in procs.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(parse_pid) else {
            continue;
        };
        let dir = entry.path();
        let Ok(fds) = fs::read_dir(dir.join("fd")) else {
            continue; // exited, or not ours to read
        };
        let mut comm = None;
        for fd_entry in fds.flatten() {
            let Some(fd) = fd_entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
                continue;
            };
            let Ok(target) = fs::read_link(fd_entry.path()) else {
                continue; // closed meanwhile
            };
            let Some(inode) = target.to_str().and_then(parse_socket_link) else {
                continue;
            };
            let comm = comm.get_or_insert_with(|| read_comm(&dir)).clone();
            owners
                .entry(inode)
                .or_default()
                .push(FdOwner { pid, comm, fd });
        }
    }
    for holders in owners.values_mut() {
        holders.sort_by_key(|o| (o.pid, o.fd));
    }
    owners
}

/// A `/proc` entry name that is a pid: all digits (not `self`, `sys`, ...).
fn parse_pid(name: &str) -> Option<u32> {
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    name.parse().ok()
}

/// The inode of a `socket:[INODE]` fd link target; `None` for files, pipes, `anon_inode:`...
fn parse_socket_link(target: &str) -> Option<u64> {
    target
        .strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

fn read_comm(proc_dir: &Path) -> String {
    fs::read_to_string(proc_dir.join("comm"))
        .map(|s| s.trim_end_matches('\n').to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn socket_links() {
        assert_eq!(parse_socket_link("socket:[123456]"), Some(123456));
        assert_eq!(parse_socket_link("socket:[]"), None);
        assert_eq!(parse_socket_link("socket:[12"), None);
        assert_eq!(parse_socket_link("pipe:[123]"), None);
        assert_eq!(parse_socket_link("/dev/null"), None);
        assert_eq!(parse_socket_link("anon_inode:[eventpoll]"), None);
    }

    #[test]
    fn pids() {
        assert_eq!(parse_pid("4242"), Some(4242));
        assert_eq!(parse_pid("self"), None);
        assert_eq!(parse_pid(""), None);
        assert_eq!(parse_pid("+1"), None);
        assert_eq!(parse_pid("99999999999"), None);
    }

    #[test]
    fn scans_a_fake_proc_tree_skipping_what_is_not_a_socket_or_a_process() {
        let scratch = crate::host::scratch::Scratch::new("procfd");
        let root = scratch.path("proc");
        let add = |pid: &str, comm: Option<&str>, fds: &[(&str, &str)]| {
            let dir = root.join(pid);
            fs::create_dir_all(dir.join("fd")).unwrap();
            if let Some(c) = comm {
                fs::write(dir.join("comm"), format!("{c}\n")).unwrap();
            }
            for (fd, target) in fds {
                symlink(target, dir.join("fd").join(fd)).unwrap();
            }
        };
        add(
            "10",
            Some("server"),
            &[
                ("0", "/dev/null"),
                ("7", "socket:[500]"),
                ("9", "socket:[501]"),
            ],
        );
        add(
            "11",
            Some("worker"),
            &[("3", "socket:[500]"), ("4", "pipe:[1]")],
        );
        add("12", None, &[("5", "socket:[502]")]);
        add("self", Some("nope"), &[("1", "socket:[999]")]);
        fs::create_dir_all(root.join("13")).unwrap(); // no fd dir: vanished or denied
        let owners = socket_owners_in(&root);
        let o = |pid, comm: &str, fd| FdOwner {
            pid,
            comm: comm.into(),
            fd,
        };
        assert_eq!(owners.len(), 3, "{owners:?}");
        assert_eq!(owners[&500], vec![o(10, "server", 7), o(11, "worker", 3)]);
        assert_eq!(owners[&501], vec![o(10, "server", 9)]);
        assert_eq!(owners[&502], vec![o(12, "", 5)]);
        assert!(socket_owners_in(Path::new("/nonexistent")).is_empty());
    }

    #[test]
    fn finds_a_socket_of_this_process() {
        use std::os::fd::AsRawFd as _;
        use std::os::unix::fs::MetadataExt as _;
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let inode = fs::metadata(format!("/proc/self/fd/{}", l.as_raw_fd()))
            .unwrap()
            .ino();
        let owners = socket_owners();
        let me = std::process::id();
        assert!(
            owners[&inode]
                .iter()
                .any(|o| o.pid == me && o.fd == l.as_raw_fd() as u32 && !o.comm.is_empty()),
            "{:?}",
            owners.get(&inode)
        );
    }
}
