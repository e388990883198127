//! Cgroup paths (the container or service of a process): from the kernel's cgroup id, and
//! from `/proc/<pid>/cgroup`.
//!
//! Why: the kernel programs record `bpf_get_current_cgroup_id()`, a number; users know
//! `/system.slice/shop.service` or a container's cgroup. The id is the inode number of the
//! cgroup's directory in the cgroup v2 hierarchy, so one walk of that hierarchy maps ids to
//! paths; new cgroups are picked up by walking again when an id is not known.
//!
//! On a hybrid host (cgroup v2 mounted beside the v1 hierarchies, e.g. at
//! `/sys/fs/cgroup/unified`) every process may sit at the v2 root, and only the v1
//! hierarchies name its container or service: [`owner_cgroup`] falls back to those, by pid.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::fs;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};

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

/// The `(hierarchy-id, controllers, path)` lines of a `/proc/<pid>/cgroup` text; malformed
/// lines are skipped.
fn proc_cgroup_lines(text: &str) -> Vec<(&str, &str, &str)> {
    text.lines()
        .filter_map(|l| {
            let (id, rest) = l.split_once(':')?;
            let (controllers, path) = rest.split_once(':')?;
            Some((id, controllers, path))
        })
        .collect()
}

/// The owner's cgroup to show, from what is known of it: `v2_by_id`, the v2 path of the
/// event's cgroup id (if it resolved), and `proc_cgroup`, the owner's `/proc/<pid>/cgroup`
/// text (if it could be read). The most specific wins, because `/` names nothing: the v2
/// path by id; the v2 line of `/proc`; the v1 `name=systemd` hierarchy; the first v1
/// controller hierarchy (in file order) — v1 paths as `controllers:path`
/// (`memory:/process_api/abc`) so that they read as v1, not v2, paths. Only when every one
/// is `/` is the answer `/` (the v2 root, by id or by `/proc`).
fn choose_owner_cgroup(v2_by_id: Option<&str>, proc_cgroup: Option<&str>) -> Option<String> {
    let specific = |p: &&str| *p != "/";
    let lines = proc_cgroup.map(proc_cgroup_lines).unwrap_or_default();
    let v2_line = lines
        .iter()
        .find(|&&(id, c, _)| id == "0" && c.is_empty())
        .map(|&(_, _, p)| p);
    let v1 = |f: &dyn Fn(&str) -> bool| {
        lines
            .iter()
            .find(|&&(_, c, p)| !c.is_empty() && f(c) && specific(&p))
            .map(|&(_, c, p)| format!("{c}:{p}"))
    };
    v2_by_id
        .filter(specific)
        .or(v2_line.filter(specific))
        .map(String::from)
        .or_else(|| v1(&|c| c.split(',').any(|c| c == "name=systemd")))
        .or_else(|| v1(&|_| true))
        .or_else(|| v2_by_id.or(v2_line).map(String::from))
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
    /// The cached answer for `key`, or a new one from `v2` (cgroup id -> v2 path) and
    /// `proc_text` (pid -> `/proc/<pid>/cgroup` text), cached.
    fn lookup(
        &mut self,
        key: OwnerKey,
        v2: impl FnOnce(u64) -> Option<String>,
        proc_text: impl FnOnce(u32) -> Option<String>,
    ) -> Option<Arc<str>> {
        if let Some(hit) = self.cache.get(&key) {
            return hit.clone();
        }
        let (pid, id) = key;
        let by_id = id.and_then(v2);
        let text = pid.filter(|_| !self.recorded).and_then(proc_text);
        let found: Option<Arc<str>> =
            choose_owner_cgroup(by_id.as_deref(), text.as_deref()).map(Arc::from);
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

/// Answers each thread keeps in front of the shared cache. Every event written as JSON asks
/// for its owner's cgroup, and events come in runs of a few owners (a client and a server):
/// the shared cache costs a lock, a hash and a copy per event, enough to slow an unoptimised
/// reader until the ring buffer overflows.
const RECENT_OWNERS: usize = 4;

/// Bumped whenever a recording changes a cached answer, so that no thread's recent answers
/// outlive it.
static GENERATION: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static RECENT: RefCell<Recent> = RefCell::default();
}

/// The last [`RECENT_OWNERS`] answers of this thread, valid for one [`GENERATION`].
#[derive(Default)]
struct Recent {
    generation: u64,
    answers: [Option<(OwnerKey, Option<Arc<str>>)>; RECENT_OWNERS],
    next: usize,
}

impl Recent {
    /// The remembered answer for `key`, if any is still valid in `generation`.
    fn get(&mut self, key: OwnerKey, generation: u64) -> Option<Option<Arc<str>>> {
        if self.generation != generation {
            *self = Recent {
                generation,
                ..Recent::default()
            };
            return None;
        }
        self.answers
            .iter()
            .flatten()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.clone())
    }

    fn put(&mut self, key: OwnerKey, answer: Option<Arc<str>>) {
        self.answers[self.next] = Some((key, answer));
        self.next = (self.next + 1) % RECENT_OWNERS;
    }
}

/// The cgroup path to show for a socket's owner: the cgroup v2 path of `cgroup_id` when it is
/// more than `/`; else, from `/proc/<pid>/cgroup`, the v2 path or the most specific v1 path
/// (`name=systemd:/system.slice/x.service`, `memory:/process_api/abc`; see
/// [`choose_owner_cgroup`]); else `/` if the id resolved; else `None`.
///
/// Cached process-wide per (pid, cgroup id), at most [`MAX_OWNERS`] entries, so that every
/// output of a run names an owner the same way, and a replay names it as the recording did
/// (see [`learn_owner_cgroup`]).
///
/// The pid part is racy: `/proc/<pid>` is read when an owner is first asked about, which may
/// be after the process exited (then only the id answers) or after its pid was reused (then
/// the answer is the new process's cgroup). Pids are the kernel's (initial namespace), so
/// netwatch must see the host's `/proc` for them to mean anything.
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
    if let Some(answer) = RECENT.with_borrow_mut(|r| r.get(key, generation)) {
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
    owner_cgroup(cgroup_id, pid);
}

/// Remembers the owner's cgroup as a recording holds it (`None`: the live run knew none), so
/// that `analyze` prints what the live run printed rather than asking this host about pids
/// of the past; from then on this process asks `/proc` about no pid.
pub fn learn_owner_cgroup(cgroup_id: Option<u64>, pid: Option<u32>, path: Option<&str>) {
    if cgroup_id.is_some() || pid.is_some() {
        owners().learn((pid, cgroup_id), path);
    }
}

/// The cgroup v2 id (the inode the kernel reports) of a path given with `--cgroup`, relative
/// to `/sys/fs/cgroup` or absolute.
pub fn id_of_path(path: &Path) -> Result<u64, String> {
    let full = if path.starts_with("/sys/fs/cgroup") {
        path.to_path_buf()
    } else {
        Path::new("/sys/fs/cgroup").join(path.strip_prefix("/").unwrap_or(path))
    };
    std::fs::metadata(&full)
        .map(|m| m.ino())
        .map_err(|e| format!("--cgroup {}: {} ({e})", path.display(), full.display()))
}

/// The host's answer to [`OwnerNames`]: [`owner_cgroup`], over the shared cache (which a
/// replay fills with the paths its recording holds).
pub struct HostNames;

impl crate::model::names::OwnerNames for HostNames {
    fn cgroup(&self, cgroup_id: Option<u64>, pid: Option<u32>) -> Option<String> {
        owner_cgroup(cgroup_id, pid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_answers_are_few_and_die_with_their_generation() {
        let mut r = Recent::default();
        let key = |pid| (Some(pid), None);
        assert_eq!(r.get(key(1), 0), None);
        r.put(key(1), Some(Arc::from("/a")));
        assert_eq!(r.get(key(1), 0), Some(Some(Arc::from("/a"))));
        for pid in 2..=RECENT_OWNERS as u32 {
            r.put(key(pid), None);
        }
        assert_eq!(r.get(key(2), 0), Some(None), "a remembered 'none'");
        r.put(key(99), None); // the oldest, pid 1, makes room
        assert_eq!(r.get(key(1), 0), None);
        assert_eq!(
            r.get(key(2), 1),
            None,
            "a new generation forgets everything"
        );
        assert_eq!(r.get(key(99), 1), None);
    }

    /// This host's kind of `/proc/<pid>/cgroup`: v2 at the root, v1 hierarchies below.
    const HYBRID: &str = "9:name=systemd:/\n8:pids:/\n4:memory:/process_api/abc\n\
                          3:cpuset:/\n2:cpuacct:/\n1:cpu:/\n0::/\n";

    #[test]
    fn owner_cgroup_prefers_a_specific_v2_path() {
        let choose = choose_owner_cgroup;
        assert_eq!(
            choose(Some("/system.slice/shop.service"), Some(HYBRID)).as_deref(),
            Some("/system.slice/shop.service")
        );
        // The id did not resolve (or is unknown), the v2 line of /proc is specific.
        let v2 = "1:name=systemd:/user.slice/s\n0::/system.slice/shop.service\n";
        assert_eq!(
            choose(None, Some(v2)).as_deref(),
            Some("/system.slice/shop.service")
        );
    }

    #[test]
    fn owner_cgroup_falls_back_to_the_most_specific_v1_hierarchy() {
        let choose = choose_owner_cgroup;
        // A hybrid host: v2 at the root, the container only in a v1 controller's hierarchy.
        assert_eq!(
            choose(Some("/"), Some(HYBRID)).as_deref(),
            Some("memory:/process_api/abc")
        );
        // name=systemd first, when it names something.
        let systemd = "9:name=systemd:/system.slice/x.service\n4:memory:/m\n0::/\n";
        assert_eq!(
            choose(Some("/"), Some(systemd)).as_deref(),
            Some("name=systemd:/system.slice/x.service")
        );
        // Otherwise the first controller hierarchy in file order whose path is not `/`.
        let two = "9:name=systemd:/\n5:cpu,cpuacct:/docker/c1\n4:memory:/m\n";
        assert_eq!(
            choose(None, Some(two)).as_deref(),
            Some("cpu,cpuacct:/docker/c1")
        );
    }

    #[test]
    fn owner_cgroup_is_the_root_only_when_nothing_is_more_specific() {
        let choose = choose_owner_cgroup;
        let roots = "9:name=systemd:/\n4:memory:/\n0::/\n";
        assert_eq!(choose(Some("/"), Some(roots)).as_deref(), Some("/"));
        assert_eq!(choose(Some("/"), None).as_deref(), Some("/"));
        assert_eq!(choose(None, Some(roots)).as_deref(), Some("/"));
        // Pure v1: roots everywhere and no v2 line says nothing.
        assert_eq!(choose(None, Some("9:name=systemd:/\n4:memory:/\n")), None);
        assert_eq!(choose(None, None), None);
        assert_eq!(choose(None, Some("garbage\n")), None);
    }

    #[test]
    fn owners_are_cached_bounded_and_learned_from_recordings() {
        let mut owners = Owners::default();
        let v2 = |id: u64| (id == 1).then(|| "/".to_string());
        let text = |_| Some(HYBRID.to_string());
        assert_eq!(
            owners.lookup((Some(7), Some(1)), v2, text).as_deref(),
            Some("memory:/process_api/abc")
        );
        // Cached: a later answer (the process exited) does not change it.
        assert_eq!(
            owners.lookup((Some(7), Some(1)), v2, |_| None).as_deref(),
            Some("memory:/process_api/abc")
        );
        for pid in 0..MAX_OWNERS as u32 {
            owners.lookup((Some(1000 + pid), None), v2, |_| None);
        }
        assert!(owners.cache.len() <= MAX_OWNERS);
        assert!(!owners.cache.contains_key(&(Some(7), Some(1))));
        // A recording's answer wins, and pids are not looked up any more.
        owners.learn((Some(8), Some(1)), Some("name=systemd:/old.service"));
        assert_eq!(
            owners.lookup((Some(8), Some(1)), v2, text).as_deref(),
            Some("name=systemd:/old.service")
        );
        owners.learn((Some(9), None), None);
        assert_eq!(owners.lookup((Some(9), None), v2, text), None);
        assert_eq!(
            owners.lookup((Some(10), Some(1)), v2, text).as_deref(),
            Some("/")
        );
    }

    #[test]
    fn this_process_owner_cgroup_is_its_most_specific_path() {
        let me = std::process::id();
        let text = fs::read_to_string("/proc/self/cgroup").unwrap();
        let expected = choose_owner_cgroup(None, Some(&text));
        let found = Owners::default().lookup(
            (Some(me), None),
            |_| None,
            |pid| fs::read_to_string(format!("/proc/{pid}/cgroup")).ok(),
        );
        assert_eq!(found.as_deref(), expected.as_deref());
        let found = found.expect("our own /proc/self/cgroup names a cgroup");
        // Never `/` while some hierarchy says more.
        let lines = proc_cgroup_lines(&text);
        if lines.iter().any(|&(_, _, p)| p != "/") {
            assert_ne!(&*found, "/", "{text}");
        }
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
