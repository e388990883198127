//! The container of a socket's owner, named: its id from the owner's cgroup path, its names
//! from the container runtime, cached per container id.
//!
//! Why a thread of its own: asking a runtime's API takes milliseconds, and an event waits for
//! nothing. A resolver thread lists the runtimes' containers when a run starts, every
//! [`LIST_INTERVAL`] after, and at once (at most every [`MIN_GAP`]) when an event names a
//! container it does not know. An owner whose container is not named yet shows its id only:
//! a container that connects within its first second may have its first events unnamed.
//!
//! A replay asks no runtime: it takes the names its recording holds ([`learn`]).

use std::{
    collections::HashMap,
    sync::{
        Arc, LazyLock, Mutex, OnceLock, RwLock,
        atomic::{AtomicBool, Ordering},
        mpsc::{Receiver, RecvTimeoutError, SyncSender, sync_channel},
    },
    time::Duration,
};

use crate::{
    host::{cgroup, container_id::container_id, runtime::Sources},
    model::names::Container,
};

/// How often the runtimes are listed while nothing asks.
const LIST_INTERVAL: Duration = Duration::from_secs(1);
/// The least time between two listings, however often events ask.
const MIN_GAP: Duration = Duration::from_millis(200);
/// Containers kept; past it only those the runtimes still list are.
const MAX_CONTAINERS: usize = 4096;

/// Named containers by id.
#[derive(Debug, Default)]
struct Known {
    named: HashMap<String, Arc<Container>>,
}

impl Known {
    /// The container `id`: named if known, else by its id alone (and then whether to ask a
    /// runtime: not in a replay).
    fn get(&self, id: &str, recorded: bool) -> (Arc<Container>, bool) {
        match self.named.get(id) {
            Some(c) => (c.clone(), false),
            None => (Arc::new(Container::unnamed(id)), !recorded),
        }
    }

    /// Takes a listing's answers; past [`MAX_CONTAINERS`] forgets what is no longer listed.
    fn merge(&mut self, listed: HashMap<String, Container>) {
        if self.named.len() + listed.len() > MAX_CONTAINERS {
            self.named.retain(|id, _| listed.contains_key(id));
        }
        for (id, c) in listed {
            if self.named.get(&id).map(|k| k.as_ref()) != Some(&c) {
                self.named.insert(id, Arc::new(c));
            }
        }
    }
}

static KNOWN: LazyLock<RwLock<Known>> = LazyLock::new(RwLock::default);

/// Set by a replay: names come from the recording only.
static RECORDED: AtomicBool = AtomicBool::new(false);

/// Wakes the resolver thread (which [`watch`] starts).
static RESOLVER: OnceLock<SyncSender<()>> = OnceLock::new();

fn known() -> std::sync::RwLockReadGuard<'static, Known> {
    KNOWN
        .read()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn known_mut() -> std::sync::RwLockWriteGuard<'static, Known> {
    KNOWN
        .write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Starts listing this host's runtimes in the background (once per process). A live run
/// calls it once it has dropped its privileges (the thread inherits the reduced set).
pub fn watch() {
    RESOLVER.get_or_init(|| {
        let (wake, wakes) = sync_channel(1);
        let started = std::thread::Builder::new()
            .name("netwatch-runtimes".into())
            .spawn(move || resolve(&Sources::host(), &wakes));
        if let Err(e) = started {
            log::warn!("container names: cannot start the runtime lookup thread: {e}");
        }
        wake
    });
}

/// Lists the runtimes once, now, on this thread: for a one-shot command (`leaks --once`)
/// that has no stream to keep flowing.
pub fn list_now() {
    match runtime() {
        Ok(rt) => {
            let listed = rt.block_on(Sources::host().list(&|id| known().named.contains_key(id)));
            known_mut().merge(listed);
        }
        Err(e) => log::warn!("container names: no runtime lookup ({e})"),
    }
}

/// The small runtime the runtimes' APIs are asked from.
fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
}

/// The resolver: lists the runtimes, merges what they say, and waits for the next round.
fn resolve(sources: &Sources, wakes: &Receiver<()>) {
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => {
            log::warn!("container names: no runtime lookup ({e})");
            return;
        }
    };
    loop {
        let listed = rt.block_on(sources.list(&|id| known().named.contains_key(id)));
        known_mut().merge(listed);
        std::thread::sleep(MIN_GAP);
        match wakes.recv_timeout(LIST_INTERVAL - MIN_GAP) {
            Ok(()) | Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

/// The container a cgroup path names, with the names known now (see the module's doc).
pub fn container_of_path(path: &str) -> Option<Arc<Container>> {
    let id = container_id(path)?;
    let (container, ask) = known().get(id, RECORDED.load(Ordering::Relaxed));
    if ask && let Some(wake) = RESOLVER.get() {
        // A wakeup already pending is as good as this one; a resolver gone asks nothing.
        let _ = wake.try_send(());
    }
    Some(container)
}

/// The container of a socket's owner: by its cgroup v2 path ([`cgroup::owner_cgroup`]), else,
/// while the process lives, by a cgroup v1 line of its `/proc/<pid>/cgroup`; `None` when it
/// runs in none that a cgroup path shows.
///
/// Why the v1 lines too: on a host without cgroup v2 (or a hybrid one whose runtime places
/// containers in the v1 hierarchies only) the v2 path names no container. The owner's cgroup
/// stays its v2 path (one name per cgroup, see [`cgroup::owner_cgroup`]); only the container
/// is read from v1, so a process that is gone before its first lookup has none there.
pub fn owner_container(cgroup_id: Option<u64>, pid: Option<u32>) -> Option<Arc<Container>> {
    if let Some(c) =
        cgroup::owner_cgroup_shared(cgroup_id, pid).and_then(|path| container_of_path(&path))
    {
        return Some(c);
    }
    // A replay's pids are of another moment: its containers come from the recording.
    if RECORDED.load(Ordering::Relaxed) {
        return None;
    }
    container_of_path(&v1_container_path_of(pid?)?)
}

/// Pids whose v1 container path was looked up, kept; past it the cache starts again.
const MAX_V1_PIDS: usize = 4096;

/// [`v1_container_path`] of a pid's `/proc/<pid>/cgroup`, cached per pid (also the pids in no
/// container: most owners, asked about at every event).
fn v1_container_path_of(pid: u32) -> Option<Arc<str>> {
    static V1: LazyLock<Mutex<HashMap<u32, Option<Arc<str>>>>> = LazyLock::new(Mutex::default);
    let mut cache = V1.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(hit) = cache.get(&pid) {
        return hit.clone();
    }
    let found = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .ok()
        .and_then(|text| v1_container_path(&text).map(Arc::from));
    if cache.len() >= MAX_V1_PIDS {
        cache.clear();
    }
    cache.insert(pid, found.clone());
    found
}

/// The path of the first cgroup v1 line (`4:memory:/docker/<id>`) of a `/proc/<pid>/cgroup`
/// text that names a container.
fn v1_container_path(text: &str) -> Option<&str> {
    text.lines()
        .filter(|line| !line.starts_with("0::"))
        .filter_map(|line| line.splitn(3, ':').nth(2))
        .find(|path| container_id(path).is_some())
}

/// Takes what a recording's line says about its owner's container: from then on, names come
/// from the recording only, so that a replay prints what the live run printed.
pub fn learn(container: Option<Container>) {
    RECORDED.store(true, Ordering::Relaxed);
    // Every line of a recording comes here: the write lock only for what is new.
    if let Some(c) = container
        && known().named.get(&c.id).map(|k| k.as_ref()) != Some(&c)
    {
        known_mut().named.insert(c.id.clone(), Arc::new(c));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "1872f01e81a5e66f8fe602936808abd0a650fa4c1eba45c4196e78ef05e32840";

    fn named(id: &str, name: &str) -> Container {
        Container {
            name: Some(name.into()),
            ..Container::unnamed(id)
        }
    }

    #[test]
    fn unknown_containers_are_their_id_and_asked_about_until_a_replay() {
        let mut known = Known::default();
        let (c, ask) = known.get(ID, false);
        assert_eq!((c.as_ref(), ask), (&Container::unnamed(ID), true));
        known.merge(HashMap::from([(ID.to_string(), named(ID, "web"))]));
        let (c, ask) = known.get(ID, false);
        assert_eq!((c.name.as_deref(), ask), (Some("web"), false));
        let other = "0".repeat(64);
        assert!(!known.get(&other, true).1, "a replay asks no runtime");
    }

    #[test]
    fn the_cache_is_bounded_by_what_runtimes_still_list() {
        let mut known = Known::default();
        let id = |n: usize| format!("{n:064x}");
        known.merge(
            (0..MAX_CONTAINERS)
                .map(|n| (id(n), named(&id(n), "x")))
                .collect(),
        );
        assert_eq!(known.named.len(), MAX_CONTAINERS);
        // Gone containers stay named (a connection may end after its container) until the
        // cap is reached; then only listed ones stay.
        known.merge(HashMap::from([(
            id(MAX_CONTAINERS),
            named(&id(MAX_CONTAINERS), "y"),
        )]));
        assert_eq!(known.named.len(), 1);
        assert!(known.named.contains_key(&id(MAX_CONTAINERS)));
    }

    #[test]
    fn a_container_only_a_v1_hierarchy_names_is_found_in_its_line() {
        // A host without cgroup v2 (no `0::` line), Docker with the cgroupfs driver.
        let v1_only =
            format!("12:pids:/docker/{ID}\n11:memory:/docker/{ID}\n1:name=systemd:/docker/{ID}\n");
        assert_eq!(
            v1_container_path(&v1_only),
            Some(format!("/docker/{ID}").as_str())
        );
        // Hybrid, the container in v1 only: the v2 root line is passed over.
        let hybrid = format!("4:memory:/libpod_parent/libpod-{ID}\n0::/\n");
        assert_eq!(v1_container_path(&hybrid).and_then(container_id), Some(ID));
        // No container anywhere: a service on a hybrid host.
        let none = "4:memory:/system.slice/ssh.service\n0::/system.slice/ssh.service\n";
        assert_eq!(v1_container_path(none), None);
    }

    #[test]
    fn paths_of_no_container_have_none() {
        assert_eq!(container_of_path("/system.slice/ssh.service"), None);
        let c = container_of_path(&format!("/libpod_parent/libpod-{ID}")).unwrap();
        assert_eq!(c.id, ID);
    }
}
