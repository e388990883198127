//! Learns cgroup paths the moment cgroups are created: an inotify watch on every directory of
//! the cgroup v2 hierarchy reports each new one (`IN_CREATE|IN_ISDIR`), whose inode (the
//! cgroup id) is read at once.
//!
//! Why: the ring buffer is read up to tens of milliseconds after an event, more under load. A
//! cgroup that lives less than that (`podman run --rm` of a quick command, a Kubernetes Job, a
//! transient systemd scope) is gone before its first event is read, and a walk of the
//! hierarchy then can no longer name it. Told at its creation, netwatch still can.
//!
//! The watcher only reports what it sees ([`Change`]); [`super::cgroup`] keeps the cache.

use std::{
    collections::HashMap,
    ffi::CString,
    fs::File,
    io::{self, Read as _},
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::{Path, PathBuf},
    sync::{
        Mutex,
        atomic::{AtomicBool, Ordering},
    },
};

/// What the watcher saw.
#[derive(Debug, PartialEq, Eq)]
pub enum Change {
    /// A cgroup (id, path relative to the hierarchy's mount) that exists, or existed when it
    /// was seen.
    Live(u64, String),
    /// The cgroup with this id was removed.
    Removed(u64),
    /// The kernel's event queue overflowed: what changed meanwhile is known only to a walk.
    Lost,
}

/// A watched directory.
#[derive(Debug)]
struct Dir {
    /// Its path relative to the hierarchy's mount (`/` for the root).
    rel: String,
    /// Its inode: the cgroup id.
    id: u64,
}

/// One inotify instance over one cgroup v2 hierarchy.
#[derive(Debug)]
pub struct Watcher {
    root: PathBuf,
    /// The inotify descriptor, read as a file.
    events: File,
    /// Watch descriptor -> the directory it watches.
    dirs: Mutex<HashMap<i32, Dir>>,
    /// Set once the watches ran out (and it was said).
    exhausted: AtomicBool,
}

/// The events a watch asks for: a directory created or moved in (a renamed cgroup). A removal
/// is told by the removed directory's own watch going away (`IN_IGNORED`, always sent).
const MASK: u32 = libc::IN_CREATE | libc::IN_MOVED_TO | libc::IN_ONLYDIR;

/// The fixed part of `struct inotify_event`: wd, mask, cookie, len.
const HEADER: usize = 16;

impl Watcher {
    /// An inotify instance (blocking reads) for the hierarchy mounted at `root`; no watch yet
    /// (a [`walk`] adds them).
    pub fn new(root: PathBuf) -> io::Result<Watcher> {
        // SAFETY: inotify_init1 takes no pointer; a negative return is an error, checked.
        let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by inotify_init1 and is owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Watcher {
            root,
            events: File::from(fd),
            dirs: Mutex::new(HashMap::new()),
            exhausted: AtomicBool::new(false),
        })
    }

    fn dirs(&self) -> std::sync::MutexGuard<'_, HashMap<i32, Dir>> {
        self.dirs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Watches directory `dir` (cgroup `id` at `rel`). Out of watches, it says so once and
    /// goes on: cgroups below unwatched directories are found by walks, as without a watcher.
    fn add(&self, dir: &Path, rel: &str, id: u64) {
        let Ok(path) = CString::new(dir.as_os_str().as_bytes()) else {
            return;
        };
        // SAFETY: the descriptor is this watcher's inotify instance; `path` is a NUL-terminated
        // string that outlives the call.
        let wd = unsafe { libc::inotify_add_watch(self.events.as_raw_fd(), path.as_ptr(), MASK) };
        if wd >= 0 {
            let rel = rel.to_string();
            self.dirs().insert(wd, Dir { rel, id });
            return;
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::ENOSPC) => {
                if !self.exhausted.swap(true, Ordering::Relaxed) {
                    let max = std::fs::read_to_string("/proc/sys/fs/inotify/max_user_watches")
                        .map(|s| s.trim().to_string())
                        .unwrap_or_else(|_| "?".into());
                    log::warn!(
                        "cgroup paths: out of inotify watches (fs.inotify.max_user_watches = \
                         {max}, shared by this user's processes); cgroups created from now on \
                         under {} and other unwatched cgroups are named only if they still \
                         exist when their first event is read. Raise it (sysctl -w \
                         fs.inotify.max_user_watches=...) to name short-lived ones.",
                        dir.display()
                    );
                }
            }
            // Removed meanwhile, or not a directory: nothing to watch.
            Some(libc::ENOENT | libc::ENOTDIR) => {}
            _ => log::debug!("cgroup paths: cannot watch {}: {err}", dir.display()),
        }
    }

    /// Waits for the next events (blocking) and says what they changed.
    pub fn next(&self, buf: &mut [u8]) -> io::Result<Vec<Change>> {
        let n = loop {
            match (&self.events).read(buf) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => break r?,
            }
        };
        Ok(self.changes(&buf[..n]))
    }

    /// What the events in `bytes` (whole `struct inotify_event`s) changed: each new directory
    /// is watched and walked (see [`walk`]), each removed one forgotten.
    fn changes(&self, mut bytes: &[u8]) -> Vec<Change> {
        let mut out = Vec::new();
        while bytes.len() >= HEADER {
            let word = |i: usize| {
                let mut w = [0u8; 4];
                w.copy_from_slice(&bytes[i..i + 4]);
                w
            };
            let wd = i32::from_ne_bytes(word(0));
            let mask = u32::from_ne_bytes(word(4));
            let len = u32::from_ne_bytes(word(12)) as usize;
            let Some(name) = bytes.get(HEADER..HEADER + len) else {
                break;
            };
            let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(len)];
            bytes = &bytes[HEADER + len..];
            if mask & libc::IN_Q_OVERFLOW != 0 {
                out.push(Change::Lost);
            } else if mask & libc::IN_IGNORED != 0 {
                if let Some(dir) = self.dirs().remove(&wd) {
                    out.push(Change::Removed(dir.id));
                }
            } else if mask & libc::IN_ISDIR != 0 && !name.is_empty() {
                let parent = self.dirs().get(&wd).map(|d| d.rel.clone());
                if let Some(parent) = parent {
                    let name = String::from_utf8_lossy(name);
                    let rel = format!("{}/{name}", parent.trim_end_matches('/'));
                    // Watched first, then listed: a directory made inside it before its watch
                    // was added is found by the listing, one made after by the watch.
                    walk(&self.root, &rel, Some(self), &mut |id, rel| {
                        out.push(Change::Live(id, rel.to_string()));
                    });
                }
            }
        }
        out
    }
}

/// Tells `found` of directory `rel` under `root` ("" or `/` for the root itself) and of every
/// directory below it, watching each before listing it when there is a `watcher`. Directories
/// that vanish or cannot be read are skipped; symlinks are not followed.
pub fn walk(root: &Path, rel: &str, watcher: Option<&Watcher>, found: &mut dyn FnMut(u64, &str)) {
    let rel = rel.trim_end_matches('/');
    let dir = root.join(rel.trim_start_matches('/'));
    walk_dir(&dir, rel, watcher, found);
}

fn walk_dir(dir: &Path, rel: &str, watcher: Option<&Watcher>, found: &mut dyn FnMut(u64, &str)) {
    use std::os::unix::fs::MetadataExt as _;
    let Ok(meta) = std::fs::symlink_metadata(dir) else {
        return;
    };
    if !meta.is_dir() {
        return;
    }
    let shown = if rel.is_empty() { "/" } else { rel };
    found(meta.ino(), shown);
    if let Some(w) = watcher {
        w.add(dir, shown, meta.ino());
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            let child = format!("{rel}/{}", entry.file_name().to_string_lossy());
            walk_dir(&entry.path(), &child, watcher, found);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt as _;

    fn ino(p: &Path) -> u64 {
        std::fs::metadata(p).unwrap().ino()
    }

    #[test]
    fn new_directories_are_told_with_what_was_made_inside_before_their_watch() {
        let scratch = crate::host::scratch::Scratch::new("cgroup-watch");
        let root = scratch.path("v2");
        std::fs::create_dir_all(root.join("system.slice")).unwrap();
        let w = Watcher::new(root.clone()).unwrap();
        let mut seen = Vec::new();
        walk(&root, "", Some(&w), &mut |id, rel| {
            seen.push((id, rel.to_string()))
        });
        assert_eq!(seen.len(), 2, "{seen:?}");
        assert_eq!(w.dirs().len(), 2);

        // `job/step/inner` made at once: only `job` is told by a watch (its children were made
        // before `job` was watched); the walk that follows finds them.
        std::fs::create_dir_all(root.join("system.slice/job/step/inner")).unwrap();
        std::fs::write(root.join("system.slice/cgroup.procs"), "").unwrap();
        let mut buf = vec![0u8; 4096];
        let changes = w.next(&mut buf).unwrap();
        let live = |p: &str| Change::Live(ino(&root.join(p)), format!("/{p}"));
        assert_eq!(
            changes,
            vec![
                live("system.slice/job"),
                live("system.slice/job/step"),
                live("system.slice/job/step/inner"),
            ]
        );
        assert_eq!(w.dirs().len(), 5);

        // A directory made below a watched new one is told by its own watch.
        std::fs::create_dir(root.join("system.slice/job/step/later")).unwrap();
        assert_eq!(
            w.next(&mut buf).unwrap(),
            vec![live("system.slice/job/step/later")]
        );

        // A removal: the removed directory's watch goes, and its id is told.
        let gone = ino(&root.join("system.slice/job/step/later"));
        std::fs::remove_dir(root.join("system.slice/job/step/later")).unwrap();
        assert_eq!(w.next(&mut buf).unwrap(), vec![Change::Removed(gone)]);
        assert_eq!(w.dirs().len(), 5);
    }

    #[test]
    fn torn_or_unknown_events_are_passed_over() {
        let w = Watcher::new(PathBuf::from("/nonexistent")).unwrap();
        // An event of a watch it does not know, then half an event.
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&7i32.to_ne_bytes());
        bytes.extend_from_slice(&(libc::IN_CREATE | libc::IN_ISDIR).to_ne_bytes());
        bytes.extend_from_slice(&0u32.to_ne_bytes());
        bytes.extend_from_slice(&4u32.to_ne_bytes());
        bytes.extend_from_slice(b"abc\0");
        bytes.extend_from_slice(&[1, 2, 3]);
        assert_eq!(w.changes(&bytes), vec![]);
        let mut overflow = Vec::new();
        overflow.extend_from_slice(&(-1i32).to_ne_bytes());
        overflow.extend_from_slice(&libc::IN_Q_OVERFLOW.to_ne_bytes());
        overflow.extend_from_slice(&[0; 8]);
        assert_eq!(w.changes(&overflow), vec![Change::Lost]);
    }
}
