//! Cgroup paths (the container or service of a process): from the kernel's cgroup id, and
//! from `/proc/<pid>/cgroup`.
//!
//! Why: the kernel programs record `bpf_get_current_cgroup_id()`, a number; users know
//! `/system.slice/shop.service` or a container's cgroup. The id is the inode number of the
//! cgroup's directory in the cgroup v2 hierarchy, so one walk of that hierarchy maps ids to
//! paths. A live run also watches every directory of the hierarchy ([`watch`]) and learns
//! each new cgroup's id and path when it is made, so that one removed before its first event
//! is read is still named; without watches, new cgroups are picked up by walking again when
//! an id is not known. Removed cgroups stay named (ids are never reused), the last
//! [`MAX_REMOVED`] of them.
//!
//! Only the cgroup v2 hierarchy names cgroups here, also on a hybrid host (v2 mounted beside
//! the v1 hierarchies, e.g. at `/sys/fs/cgroup/unified`), where every process may sit at the
//! v2 root: see [`owner_cgroup`] for why.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet, VecDeque};
use std::fs;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, OnceLock};

use crate::host::cgroup_watch::{self, Change, Watcher};

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

/// Paths of removed cgroups kept, past which the longest removed is forgotten. They are wanted
/// for events still on their way (the ring buffer, events held for a container's names: a
/// second or so) and for sockets that outlive their cgroup (rare). A host making 100 cgroups a
/// second (every job its own) keeps some 40 s of them, in about half a megabyte; cgroups that
/// exist are never forgotten.
const MAX_REMOVED: usize = 4096;

/// A cgroup's path, and whether it was removed.
#[derive(Debug)]
struct Known {
    path: String,
    removed: bool,
}

/// Cgroup id -> path cache over one cgroup v2 hierarchy.
#[derive(Debug)]
pub struct CgroupPaths {
    /// Mount point of the hierarchy; `None` when no cgroup v2 is mounted (nothing resolves).
    root: Option<PathBuf>,
    /// Directory inode -> path relative to `root` (`/` for the root itself).
    cache: HashMap<u64, Known>,
    /// Removed cgroups still in `cache`, the longest removed first.
    removed: VecDeque<u64>,
    /// Ids that a walk did not find. Cgroup ids are never reused, so a cgroup that was not
    /// there when the hierarchy was walked after the id was seen is gone for good: asking
    /// again must not walk again.
    missed: HashSet<u64>,
    /// Tells of cgroups as they are made (a live run: [`watch`]); each walk watches what it
    /// finds.
    watcher: Option<Arc<Watcher>>,
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
            removed: VecDeque::new(),
            missed: HashSet::new(),
            watcher: None,
        }
    }

    /// The path of cgroup `id` relative to the hierarchy's mount point
    /// (`/system.slice/ssh.service`); walks the hierarchy again when `id` is new.
    pub fn resolve(&mut self, id: u64) -> Option<String> {
        if let Some(known) = self.cache.get(&id) {
            return Some(known.path.clone());
        }
        if self.missed.contains(&id) {
            return None;
        }
        self.refresh();
        let found = self.cache.get(&id).map(|k| k.path.clone());
        if found.is_none() {
            self.missed.insert(id);
        }
        found
    }

    /// Walks the whole hierarchy again (watching each directory when there is a watcher):
    /// what it finds is live, what it no longer finds was removed.
    pub fn refresh(&mut self) {
        let Some(root) = &self.root else {
            return;
        };
        let mut found = HashMap::new();
        cgroup_watch::walk(root, "", self.watcher.as_deref(), &mut |id, rel| {
            found.insert(id, rel.to_string());
        });
        let gone: Vec<u64> = self
            .cache
            .iter()
            .filter(|(id, k)| !k.removed && !found.contains_key(id))
            .map(|(id, _)| *id)
            .collect();
        for (id, path) in found {
            self.live(id, path);
        }
        for id in gone {
            self.gone(id);
        }
    }

    /// Takes what the watcher saw.
    fn apply(&mut self, changes: Vec<Change>) {
        for change in changes {
            match change {
                Change::Live(id, path) => self.live(id, path),
                Change::Removed(id) => self.gone(id),
                Change::Lost => self.refresh(),
            }
        }
    }

    /// Cgroup `id` is at `path`.
    fn live(&mut self, id: u64, path: String) {
        self.missed.remove(&id);
        let removed = false;
        if let Some(old) = self.cache.insert(id, Known { path, removed })
            && old.removed
        {
            // Seen again (a walk racing a removal's event): no longer queued for forgetting.
            self.removed.retain(|r| *r != id);
        }
    }

    /// Cgroup `id` was removed: its path stays known, until [`MAX_REMOVED`] removed ones
    /// after it.
    fn gone(&mut self, id: u64) {
        let Some(known) = self.cache.get_mut(&id) else {
            return;
        };
        if known.removed {
            return;
        }
        known.removed = true;
        self.removed.push_back(id);
        while self.removed.len() > MAX_REMOVED {
            if let Some(oldest) = self.removed.pop_front() {
                self.cache.remove(&oldest);
            }
        }
    }
}

static PATHS: LazyLock<Mutex<CgroupPaths>> = LazyLock::new(|| Mutex::new(CgroupPaths::new()));

fn paths() -> std::sync::MutexGuard<'static, CgroupPaths> {
    PATHS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Starts learning cgroups as they are made (once per process), for a live run: walks the
/// hierarchy now, watching every directory, then follows the watches on a thread of its own.
/// Without inotify (or with no cgroup v2 hierarchy), paths are learned by walks only, as
/// before. The thread never stops netwatch from exiting: it holds nothing but the watches,
/// which die with the process.
pub fn watch() {
    static STARTED: OnceLock<()> = OnceLock::new();
    STARTED.get_or_init(|| {
        let mut guard = paths();
        let Some(root) = guard.root.clone() else {
            return;
        };
        let watcher = match Watcher::new(root) {
            Ok(w) => Arc::new(w),
            Err(e) => {
                log::warn!(
                    "cgroup paths: no inotify instance ({e}; fs.inotify.max_user_instances); \
                     cgroups removed before their first event is read stay unnamed"
                );
                return;
            }
        };
        guard.watcher = Some(watcher.clone());
        // Every directory watched before the run says it is tracing.
        guard.refresh();
        drop(guard);
        let spawned = std::thread::Builder::new()
            .name("netwatch-cgroups".into())
            .spawn(move || {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    match watcher.next(&mut buf) {
                        Ok(changes) => paths().apply(changes),
                        Err(e) => {
                            log::warn!("cgroup paths: reading inotify events: {e}; new cgroups are learned by walks only from now on");
                            return;
                        }
                    }
                }
            });
        if let Err(e) = spawned {
            log::warn!("cgroup paths: cannot start the thread that watches cgroups: {e}");
        }
    });
}

/// The path of the cgroup v2 `id` (what `bpf_get_current_cgroup_id()` returns) relative to
/// the hierarchy's mount point, e.g. `/system.slice/ssh.service`; `None` when the cgroup is
/// gone or no cgroup v2 hierarchy is mounted. Cached process-wide.
pub fn cgroup_path(id: u64) -> Option<String> {
    paths().resolve(id)
}

/// The cgroup v2 path in a `/proc/<pid>/cgroup` text: the path of its `0::` line (`None`
/// on a host without cgroup v2, where there is none). The v1 lines (`4:memory:/...`) are
/// never used: see [`owner_cgroup`].
fn proc_v2_path(text: &str) -> Option<&str> {
    text.lines().find_map(|l| l.strip_prefix("0::"))
}

/// Owner cache entries kept; past it the cache starts again (every entry is cheap to
/// recompute, and a long run meets any number of pids).
const MAX_OWNERS: usize = 4096;

/// What an owner is known by: (pid, cgroup v2 id).
type OwnerKey = (Option<u32>, Option<u64>);

/// The answers of [`owner_cgroup`], per owner.
#[derive(Debug, Default)]
struct Owners {
    cache: HashMap<OwnerKey, Option<Arc<str>>>,
    /// Set once answers were read from a recording: its pids named processes of another
    /// moment (maybe of another boot), so `/proc` is not asked about pids any more.
    recorded: bool,
}

impl Owners {
    /// The cached answer for `key`, or a new one, cached: the v2 path of the cgroup id by
    /// `v2` (cgroup id -> v2 path) when the id is known, else the v2 line of the pid's
    /// `/proc/<pid>/cgroup` text by `proc_text`.
    fn lookup(
        &mut self,
        key: OwnerKey,
        v2: impl FnOnce(u64) -> Option<String>,
        proc_text: impl FnOnce(u32) -> Option<String>,
    ) -> Option<Arc<str>> {
        if let Some(hit) = self.cache.get(&key) {
            return hit.clone();
        }
        let found: Option<Arc<str>> = match key {
            (_, Some(id)) => v2(id).map(Arc::from),
            (Some(pid), None) if !self.recorded => {
                proc_text(pid).and_then(|text| proc_v2_path(&text).map(Arc::from))
            }
            _ => None,
        };
        self.insert(key, found.clone());
        found
    }

    /// Takes the answer a recording holds for `key` (what the live run saw), over any other.
    fn learn(&mut self, key: OwnerKey, path: Option<&str>) {
        self.recorded = true;
        if self.cache.get(&key).map(Option::as_deref) != Some(path) {
            self.insert(key, path.map(Arc::from));
            // Answers this thread or another remembered may now be wrong.
            GENERATION.fetch_add(1, Ordering::Release);
        }
    }

    fn insert(&mut self, key: OwnerKey, value: Option<Arc<str>>) {
        if self.cache.len() >= MAX_OWNERS && !self.cache.contains_key(&key) {
            self.cache.clear();
            // What threads remember learning is gone from the cache: they must learn it again.
            GENERATION.fetch_add(1, Ordering::Release);
        }
        self.cache.insert(key, value);
    }
}

static OWNERS: LazyLock<Mutex<Owners>> = LazyLock::new(|| Mutex::new(Owners::default()));

fn owners() -> std::sync::MutexGuard<'static, Owners> {
    OWNERS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Bumped whenever a recording changes a cached answer, so that no thread's recent answers
/// outlive it.
static GENERATION: AtomicU64 = AtomicU64::new(0);

/// The cache's [`GENERATION`]: an answer derived from [`owner_cgroup_shared`] and kept
/// elsewhere is still right while this has not changed.
pub fn generation() -> u64 {
    GENERATION.load(Ordering::Acquire)
}

/// A thread's last answers of the shared cache ([`crate::host::recent`]).
type Recent = crate::host::recent::Recent<OwnerKey, Option<Arc<str>>, u64>;

thread_local! {
    static RECENT: RefCell<Recent> = RefCell::default();
    /// The last answers this thread took from a recording ([`learn_owner_cgroup`]).
    static LEARNT: RefCell<Recent> = RefCell::default();
}

/// The cgroup path to show for a socket's owner, by one rule whatever the process's lifetime:
/// its cgroup v2 path, relative to the hierarchy's mount point (`/system.slice/x.service`,
/// `/` for the root). That is the path of `cgroup_id` (what the kernel recorded at the
/// owner's connect, listen, accept or close) when the id is known, else (a holder found in
/// `/proc` without an event, in `leaks`) the v2 line of `/proc/<pid>/cgroup`. `None` when the
/// cgroup is gone or no cgroup v2 hierarchy is mounted.
///
/// Why never a v1 path: on a hybrid host every process may sit at the v2 root while a v1
/// hierarchy (`4:memory:/process_api/abc`) names its container. That path can only be read
/// from `/proc` while the process lives, so a short-lived client would be `/` and a long-lived
/// server `memory:/...` in the same cgroup: two names for one cgroup (split metric series),
/// and a name `--cgroup`, which the kernel decides by v2 id, could not select. The v2 path is
/// what `--cgroup` takes.
///
/// Cached process-wide per (pid, cgroup id), at most [`MAX_OWNERS`] entries, so that every
/// output of a run names an owner the same way, and a replay names it as the recording did
/// (see [`learn_owner_cgroup`]). A pid read from `/proc` is racy (the process may have exited,
/// or its pid been reused); pids are the kernel's (initial namespace), so netwatch must see
/// the host's `/proc` for them to mean anything.
pub fn owner_cgroup(cgroup_id: Option<u64>, pid: Option<u32>) -> Option<String> {
    owner_cgroup_shared(cgroup_id, pid).map(|p| p.to_string())
}

/// [`owner_cgroup`] without a copy of the path: for every event written as JSON.
pub fn owner_cgroup_shared(cgroup_id: Option<u64>, pid: Option<u32>) -> Option<Arc<str>> {
    if cgroup_id.is_none() && pid.is_none() {
        return None;
    }
    let key = (pid, cgroup_id);
    let generation = GENERATION.load(Ordering::Acquire);
    if let Some(answer) = RECENT.with_borrow_mut(|r| r.get(&key, generation)) {
        return answer;
    }
    let found = owners().lookup(key, cgroup_path, |pid| {
        fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()
    });
    RECENT.with_borrow_mut(|r| r.put(key, found.clone()));
    found
}

/// Looks the owner up now, at an event where it acted (connect, accept, listen, close), so
/// that outputs printed later (a connection's end, the report) name the cgroup it had while
/// alive: short-lived clients are often gone by then. The answer is kept in the cache.
pub fn note_owner(cgroup_id: Option<u64>, pid: Option<u32>) {
    owner_cgroup_shared(cgroup_id, pid);
}

/// Remembers the owner's cgroup as a recording holds it (`None`: the live run knew none), so
/// that `analyze` prints what the live run printed rather than asking this host about pids
/// of the past; from then on this process asks `/proc` about no pid.
///
/// Every event of a replay comes here: an answer this thread learnt last (in the same
/// [`GENERATION`]) is not learnt again, so a replay takes the shared cache's lock only when an
/// owner or its path changes, not once per event.
pub fn learn_owner_cgroup(cgroup_id: Option<u64>, pid: Option<u32>, path: Option<&str>) {
    if cgroup_id.is_none() && pid.is_none() {
        return;
    }
    let key = (pid, cgroup_id);
    let generation = GENERATION.load(Ordering::Acquire);
    let known = LEARNT.with_borrow_mut(|r| r.get(&key, generation));
    if known.is_some_and(|answer| answer.as_deref() == path) {
        return;
    }
    // Every change of generation happens under the lock: read there, it is the one the cache
    // holds this answer in.
    let generation = {
        let mut owners = owners();
        owners.learn(key, path);
        GENERATION.load(Ordering::Acquire)
    };
    LEARNT.with_borrow_mut(|r| {
        r.get(&key, generation);
        r.put(key, path.map(Arc::from));
    });
}

/// The cgroup v2 id (the inode the kernel reports) of a path given with `--cgroup`: a path in
/// the cgroup v2 hierarchy as netwatch names owners (`/`, `/system.slice/ssh.service`), or
/// the absolute path of its directory under the hierarchy's mount point. An error names the
/// token when the path is no cgroup of that hierarchy (a v1 hierarchy's directory, such as
/// `/memory` on a hybrid host, is not one), or when no cgroup v2 hierarchy is mounted.
pub fn id_of_path(path: &Path) -> Result<u64, String> {
    id_in_hierarchy(cgroup2_mount().as_deref(), path)
}

/// [`id_of_path`] in the cgroup v2 hierarchy mounted at `mount`.
fn id_in_hierarchy(mount: Option<&Path>, path: &Path) -> Result<u64, String> {
    let token = path.display();
    let Some(mount) = mount else {
        return Err(format!(
            "--cgroup {token}: no cgroup v2 hierarchy is mounted here (none in \
             /proc/self/mountinfo), and the kernel filters by cgroup v2 id"
        ));
    };
    let full = if path.starts_with(mount) {
        path.to_path_buf()
    } else {
        mount.join(path.strip_prefix("/").unwrap_or(path))
    };
    let hint = format!(
        "cgroups are named by their path in the cgroup v2 hierarchy mounted at {}, as netwatch \
         prints them (`trace -w`, the JSON `cgroup` field): `/` is its root",
        mount.display()
    );
    let (mount_real, root) = fs::canonicalize(mount)
        .and_then(|m| fs::metadata(&m).map(|meta| (m, meta)))
        .map_err(|e| format!("--cgroup {token}: {} ({e})", mount.display()))?;
    // `..` or a symlink could lead out of the hierarchy: the directory must be inside it, on
    // the same file system.
    let meta = fs::canonicalize(&full)
        .and_then(|real| {
            if real.starts_with(&mount_real) {
                fs::metadata(&real)
            } else {
                Err(std::io::Error::other("outside the hierarchy"))
            }
        })
        .map_err(|e| {
            format!(
                "--cgroup {token}: no cgroup {} ({e}); {hint}",
                full.display()
            )
        })?;
    if !meta.is_dir() || meta.dev() != root.dev() {
        return Err(format!(
            "--cgroup {token}: {} is not a cgroup of the cgroup v2 hierarchy; {hint}",
            full.display()
        ));
    }
    Ok(meta.ino())
}

/// The host's answer to [`OwnerNames`]: [`owner_cgroup`], over the shared cache (which a
/// replay fills with the paths its recording holds), and the container it names.
pub struct HostNames;

impl crate::model::names::OwnerNames for HostNames {
    fn cgroup(&self, cgroup_id: Option<u64>, pid: Option<u32>) -> Option<String> {
        owner_cgroup(cgroup_id, pid)
    }

    fn container(
        &self,
        cgroup_id: Option<u64>,
        pid: Option<u32>,
    ) -> Option<Arc<crate::model::names::Container>> {
        crate::host::containers::owner_container(cgroup_id, pid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This host's kind of `/proc/<pid>/cgroup`: v2 at the root, v1 hierarchies below.
    const HYBRID: &str = "9:name=systemd:/\n8:pids:/\n4:memory:/process_api/abc\n\
                          3:cpuset:/\n2:cpuacct:/\n1:cpu:/\n0::/\n";

    /// A fake host: cgroup id 1 is the v2 root, id 2 `/system.slice/shop.service`; every pid's
    /// `/proc/<pid>/cgroup` is [`HYBRID`].
    fn v2(id: u64) -> Option<String> {
        match id {
            1 => Some("/".into()),
            2 => Some("/system.slice/shop.service".into()),
            _ => None,
        }
    }

    fn hybrid(_pid: u32) -> Option<String> {
        Some(HYBRID.to_string())
    }

    #[test]
    fn an_owner_is_named_by_its_v2_path_whether_its_process_lives_or_not() {
        // The same cgroup (the v2 root, on a hybrid host whose v1 memory hierarchy says more),
        // for a process still alive (its /proc readable) and for one gone (not readable):
        // one name, never the v1 path.
        let alive = Owners::default().lookup((Some(7), Some(1)), v2, hybrid);
        let gone = Owners::default().lookup((Some(8), Some(1)), v2, |_| None);
        assert_eq!(alive.as_deref(), Some("/"));
        assert_eq!(gone, alive);
        let alive = Owners::default().lookup((Some(7), Some(2)), v2, hybrid);
        let gone = Owners::default().lookup((Some(8), Some(2)), v2, |_| None);
        assert_eq!(alive.as_deref(), Some("/system.slice/shop.service"));
        assert_eq!(gone, alive);
        // The id wins over what /proc says now (the process may have moved since).
        let moved = |_| Some("0::/user.slice/other\n".to_string());
        assert_eq!(
            Owners::default()
                .lookup((Some(7), Some(2)), v2, moved)
                .as_deref(),
            Some("/system.slice/shop.service")
        );
        // An id that names no cgroup (gone, or no v2 hierarchy) is unknown, whatever /proc says.
        assert_eq!(
            Owners::default().lookup((Some(7), Some(99)), v2, hybrid),
            None
        );
    }

    #[test]
    fn without_an_id_an_owner_is_the_v2_line_of_its_proc_cgroup() {
        let lookup = |text: &'static str| {
            Owners::default()
                .lookup((Some(7), None), v2, |_| Some(text.to_string()))
                .map(|p| p.to_string())
        };
        assert_eq!(lookup(HYBRID).as_deref(), Some("/"));
        assert_eq!(
            lookup("1:name=systemd:/user.slice/s\n0::/system.slice/shop.service\n").as_deref(),
            Some("/system.slice/shop.service")
        );
        // Pure v1 (no v2 line), or garbage: nothing, never a v1 path.
        assert_eq!(
            lookup("9:name=systemd:/system.slice/x\n4:memory:/m\n"),
            None
        );
        assert_eq!(lookup("garbage\n"), None);
        assert_eq!(
            Owners::default().lookup((Some(7), None), v2, |_| None),
            None
        );
        assert_eq!(proc_v2_path(HYBRID), Some("/"));
    }

    #[test]
    fn owners_are_cached_bounded_and_learned_from_recordings() {
        let mut owners = Owners::default();
        assert_eq!(
            owners
                .lookup((Some(7), None), v2, |_| Some("0::/a\n".into()))
                .as_deref(),
            Some("/a")
        );
        // Cached: a later answer (the process exited) does not change it.
        assert_eq!(
            owners.lookup((Some(7), None), v2, |_| None).as_deref(),
            Some("/a")
        );
        for pid in 0..MAX_OWNERS as u32 {
            owners.lookup((Some(1000 + pid), None), v2, |_| None);
        }
        assert!(owners.cache.len() <= MAX_OWNERS);
        assert!(!owners.cache.contains_key(&(Some(7), None)));
        // A recording's answer wins (an older netwatch may have written a v1 path), and pids
        // are not looked up any more.
        owners.learn((Some(8), Some(1)), Some("name=systemd:/old.service"));
        assert_eq!(
            owners.lookup((Some(8), Some(1)), v2, hybrid).as_deref(),
            Some("name=systemd:/old.service")
        );
        owners.learn((Some(9), None), None);
        assert_eq!(owners.lookup((Some(9), None), v2, hybrid), None);
        assert_eq!(owners.lookup((Some(10), None), v2, hybrid), None);
        assert_eq!(
            owners.lookup((Some(10), Some(1)), v2, hybrid).as_deref(),
            Some("/")
        );
    }

    #[test]
    fn this_process_owner_cgroup_is_its_v2_path() {
        let me = std::process::id();
        let text = fs::read_to_string("/proc/self/cgroup").unwrap();
        let Some(expected) = text.lines().find_map(|l| l.strip_prefix("0::")) else {
            crate::host::skip::skip("this process has no cgroup v2 line");
            return;
        };
        let found = Owners::default().lookup(
            (Some(me), None),
            |_| None,
            |pid| fs::read_to_string(format!("/proc/{pid}/cgroup")).ok(),
        );
        assert_eq!(found.as_deref(), Some(expected), "{text}");
        assert_eq!(owner_cgroup(None, None), None);
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
        let scratch = crate::host::scratch::Scratch::new("cgroup-walk");
        let root = scratch.path("v2");
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
        assert_eq!(CgroupPaths::with_root(None).resolve(1), None);
    }

    #[test]
    fn removed_cgroups_stay_named_the_last_max_removed_of_them() {
        // No hierarchy: only what the watcher says is known.
        let mut paths = CgroupPaths::with_root(None);
        paths.apply(vec![Change::Live(10, "/kept.service".into())]);
        let n = MAX_REMOVED as u64 + 5;
        for id in 100..100 + n {
            paths.apply(vec![
                Change::Live(id, format!("/job-{id}")),
                Change::Removed(id),
            ]);
        }
        // The first five removed are forgotten, the rest still named; a live one never goes.
        for id in 100..105 {
            assert_eq!(paths.resolve(id), None, "{id}");
        }
        assert_eq!(paths.resolve(105).as_deref(), Some("/job-105"));
        assert_eq!(
            paths.resolve(100 + n - 1),
            Some(format!("/job-{}", 100 + n - 1))
        );
        assert_eq!(paths.resolve(10).as_deref(), Some("/kept.service"));
        assert_eq!(paths.removed.len(), MAX_REMOVED);
        // Told twice (its watch's end, then a walk), a removal counts once.
        paths.apply(vec![Change::Removed(105), Change::Removed(105)]);
        assert_eq!(paths.removed.len(), MAX_REMOVED);
        assert_eq!(paths.cache.len(), MAX_REMOVED + 1);
    }

    #[test]
    fn a_walk_keeps_what_the_watcher_saw_of_removed_cgroups() {
        let scratch = crate::host::scratch::Scratch::new("cgroup-removed");
        let root = scratch.path("v2");
        fs::create_dir_all(root.join("job")).unwrap();
        let ino = |p: &str| fs::metadata(root.join(p)).unwrap().ino();
        let job = ino("job");
        let mut paths = CgroupPaths::with_root(Some(root.clone()));
        paths.refresh();
        // (Made before the removal: a test file system, unlike cgroupfs, reuses inodes.)
        fs::create_dir(root.join("later")).unwrap();
        fs::remove_dir(root.join("job")).unwrap();
        // A miss walks again: the removed cgroup is still named, and queued to be forgotten.
        assert_eq!(paths.resolve(ino("later")).as_deref(), Some("/later"));
        assert_eq!(paths.resolve(job).as_deref(), Some("/job"));
        assert_eq!(paths.removed, [job]);
        // A cgroup a walk missed and the watcher then told of is named.
        paths.missed.insert(7);
        paths.apply(vec![Change::Live(7, "/quick".into())]);
        assert_eq!(paths.resolve(7).as_deref(), Some("/quick"));
    }

    #[test]
    fn cgroup_option_takes_v2_paths_and_names_the_token_of_anything_else() {
        // A fake hybrid host: tmpfs-like `cgroup/` holding a v1 `memory/` and the v2 hierarchy
        // at `cgroup/unified/`.
        let scratch = crate::host::scratch::Scratch::new("cgroup-option");
        let mount = scratch.path("cgroup/unified");
        fs::create_dir_all(mount.join("system.slice/shop.service")).unwrap();
        fs::create_dir_all(scratch.path("cgroup/memory/process_api")).unwrap();
        fs::write(mount.join("cgroup.procs"), "").unwrap();
        std::os::unix::fs::symlink(scratch.path("cgroup/memory"), mount.join("escape")).unwrap();
        let ino = |p: &Path| fs::metadata(p).unwrap().ino();
        let id = |p: &str| id_in_hierarchy(Some(&mount), Path::new(p));
        // The root, and a cgroup, as netwatch prints them, or by their absolute directory.
        assert_eq!(id("/"), Ok(ino(&mount)));
        assert_eq!(
            id("/system.slice/shop.service"),
            Ok(ino(&mount.join("system.slice/shop.service")))
        );
        assert_eq!(id("system.slice"), Ok(ino(&mount.join("system.slice"))));
        let absolute = mount.join("system.slice");
        assert_eq!(id(absolute.to_str().unwrap()), Ok(ino(&absolute)));
        // What names nothing of the v2 hierarchy: an error naming the token and the hierarchy.
        for bad in [
            "/memory",
            "/memory/process_api",
            "memory:/process_api",
            "/nonexistent",
            "/cgroup.procs",
            "/../memory",
            "/escape",
        ] {
            let err = id(bad).unwrap_err();
            assert!(err.starts_with(&format!("--cgroup {bad}: ")), "{err}");
            assert!(err.contains(&mount.display().to_string()), "{err}");
        }
        // The v1 hierarchy's directory by its absolute path is not in the v2 hierarchy either.
        let v1 = scratch.path("cgroup/memory");
        let err = id(v1.to_str().unwrap()).unwrap_err();
        assert!(
            err.starts_with(&format!("--cgroup {}: ", v1.display())),
            "{err}"
        );
        let err = id_in_hierarchy(None, Path::new("/")).unwrap_err();
        assert!(
            err.starts_with("--cgroup /: no cgroup v2 hierarchy is mounted"),
            "{err}"
        );
    }

    #[test]
    fn cgroup_option_root_is_the_id_the_kernel_reports_for_the_root() {
        let Some(mount) = cgroup2_mount() else {
            crate::host::skip::skip("no cgroup v2 hierarchy mounted");
            return;
        };
        // The v2 root's id is 1 on every kernel with kernfs ids (what bpf_get_current_cgroup_id
        // returns for a process at the root), whatever other hierarchy has inode 1 too.
        assert_eq!(id_of_path(Path::new("/")), Ok(1));
        assert_eq!(id_of_path(&mount), Ok(1));
        let err = id_of_path(Path::new("/no-such-cgroup-of-netwatch")).unwrap_err();
        assert!(
            err.starts_with("--cgroup /no-such-cgroup-of-netwatch: no cgroup "),
            "{err}"
        );
    }

    #[test]
    fn this_process_round_trips() {
        let Some(mount) = cgroup2_mount() else {
            crate::host::skip::skip("no cgroup v2 hierarchy mounted");
            return;
        };
        let text = fs::read_to_string("/proc/self/cgroup").unwrap();
        let Some(path) = text.lines().find_map(|l| l.strip_prefix("0::")) else {
            crate::host::skip::skip("this process has no cgroup v2 line");
            return;
        };
        let id = fs::metadata(mount.join(path.trim_start_matches('/')))
            .unwrap()
            .ino();
        assert_eq!(cgroup_path(id).as_deref(), Some(path));
    }
}
