//! The container of a socket's owner, named: its id from the owner's cgroup path, its names
//! from the container runtime, cached per container id.
//!
//! Names are learned two ways, both into one table:
//! - the Docker API's event streams (Docker, podman; [`crate::host::runtime_events`]) say a
//!   container's names when it is created, before its process runs, and when it is removed;
//! - a resolver thread lists the runtimes' running containers when a run starts; after that it
//!   asks them only about the ids events name and it does not know: each id once, and one that
//!   no runtime named again no sooner than [`RETRY_UNNAMED`]. This is how containerd's and
//!   CRI-O's containers are named (they serve no Docker API), and the fallback for a stream
//!   that is down. A node where no new container appears is not polled at all.
//!
//! Why a thread of its own: asking a runtime's API takes milliseconds, and the ring buffer's
//! reader must not wait for it.
//!
//! Why events wait: a container connects milliseconds after it starts, and its runtime's answer,
//! or its `create` event (podman sends it some 100-200 ms late), may come after that. While the
//! runtimes are asked about an id for the first time, or while an event stream runs and has not
//! named it yet, for at most [`MAX_HOLD`] from its first question, [`awaited`] says so, and the
//! stream holds the events from then on back, in order ([`crate::pipeline::pending`]): every
//! output, and a recording, names a container from its first event, also one that is gone and
//! removed before its runtime could answer a question about it.
//!
//! A replay asks no runtime: it takes the names its recording holds ([`learn`]).

use std::{
    collections::HashMap,
    sync::{
        Arc, LazyLock, Mutex, OnceLock, RwLock,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        mpsc::{Receiver, SyncSender, sync_channel},
    },
    time::{Duration, Instant},
};

use crate::{
    host::{
        cgroup,
        container_id::container_id,
        runtime::{API_SOCKETS, Sources},
        runtime_events::{self, Update},
    },
    model::names::Container,
};

/// The longest an event is held for its container's names (see the module's doc): also how
/// long after the first question a container's events still wait for its answer.
pub const MAX_HOLD: Duration = Duration::from_secs(1);

/// How long an id no runtime named stays unnamed before the runtimes are asked again (a
/// runtime that was down, or an API that timed out, gets another chance; a container no
/// runtime knows costs one question per this).
const RETRY_UNNAMED: Duration = Duration::from_secs(10);
/// Named containers kept; past it those the runtimes said were removed, then those unused the
/// longest, are forgotten (down to 7/8 of it, so that this happens once per many new ones).
const MAX_CONTAINERS: usize = 4096;

/// Event streams running now ([`crate::host::runtime_events`]): while one runs, a container no
/// answer named may still be named by its `create`.
static STREAMING: AtomicUsize = AtomicUsize::new(0);

/// How long a run waits at its start for the event streams to open.
const STREAMS_SETTLE: Duration = Duration::from_millis(500);

/// The order of uses of named containers: the least recently used one is forgotten first.
static USES: AtomicU64 = AtomicU64::new(0);

fn next_use() -> u64 {
    USES.fetch_add(1, Ordering::Relaxed)
}

/// A named container, and what decides when it is forgotten.
#[derive(Debug)]
struct Named {
    container: Arc<Container>,
    /// Its last use ([`next_use`]), set under the table's read lock.
    used: AtomicU64,
    /// Whether its runtime said it was removed (its connections may still end later).
    removed: bool,
}

impl Named {
    fn new(container: Container) -> Named {
        Named {
            container: Arc::new(container),
            used: AtomicU64::new(next_use()),
            removed: false,
        }
    }

    /// The container, its use noted.
    fn used(&self) -> Arc<Container> {
        self.used.store(next_use(), Ordering::Relaxed);
        self.container.clone()
    }
}

/// What is known about the containers, by id.
#[derive(Debug, Default)]
struct Known {
    named: HashMap<String, Named>,
    /// Ids no runtime has named (yet): when they were last asked about, and whether an answer
    /// to the first question came.
    unnamed: HashMap<String, Asked>,
    /// Ids for the resolver's next question.
    to_ask: Vec<String>,
}

#[derive(Clone, Copy, Debug)]
struct Asked {
    /// The first question: a container's events wait no longer than [`MAX_HOLD`] from it.
    first: Instant,
    /// The last question.
    at: Instant,
    answered: bool,
}

impl Known {
    /// Whether the runtimes should be asked about `id` now: never asked, or left unnamed by an
    /// answer at least [`RETRY_UNNAMED`] old.
    fn should_ask(&self, id: &str, now: Instant) -> bool {
        !self.named.contains_key(id)
            && self
                .unnamed
                .get(id)
                .is_none_or(|a| a.answered && now.duration_since(a.at) >= RETRY_UNNAMED)
    }

    /// Queues `id` for the resolver when [`Known::should_ask`]; whether it did.
    fn ask(&mut self, id: &str, now: Instant) -> bool {
        if !self.should_ask(id, now) {
            return false;
        }
        if self.unnamed.len() >= MAX_CONTAINERS {
            self.unnamed.retain(|_, a| !a.answered);
        }
        // A second question is asked in the background: its events do not wait again.
        let (first, answered) = self
            .unnamed
            .get(id)
            .map_or((now, false), |a| (a.first, a.answered));
        self.unnamed.insert(
            id.to_string(),
            Asked {
                first,
                at: now,
                answered,
            },
        );
        self.to_ask.push(id.to_string());
        true
    }

    /// Whether names for `id` are still awaited, for less than [`MAX_HOLD`] since it was first
    /// asked about: the runtimes' first answer, or, while an event stream runs (`streaming`),
    /// its `create` (an answer that named nothing may have come after the container was
    /// removed). A slow runtime holds a container's first events, not every later one again.
    fn awaited(&self, id: &str, now: Instant, streaming: bool) -> bool {
        self.unnamed
            .get(id)
            .is_some_and(|a| (!a.answered || streaming) && now.duration_since(a.first) < MAX_HOLD)
    }

    /// Takes the runtimes' answer to a question about `asked`: `found` is what they named (an
    /// asked id absent from it is unnamed until asked again).
    fn answer(&mut self, asked: &[String], found: HashMap<String, Container>) {
        for id in asked {
            if let Some(a) = self.unnamed.get_mut(id) {
                a.answered = true;
            }
        }
        self.merge(found);
    }

    /// Takes what the runtimes named; past [`MAX_CONTAINERS`] forgets some (see there).
    fn merge(&mut self, found: HashMap<String, Container>) {
        for (id, c) in found {
            self.unnamed.remove(&id);
            if self.named.get(&id).map(|k| k.container.as_ref()) != Some(&c) {
                self.named.insert(id, Named::new(c));
            }
        }
        self.trim();
    }

    /// Notes that the runtime removed container `id`: it is forgotten first.
    fn removed(&mut self, id: &str) {
        if let Some(n) = self.named.get_mut(id) {
            n.removed = true;
        }
    }

    /// Past [`MAX_CONTAINERS`], forgets the containers removed, then those unused the longest,
    /// down to 7/8 of it.
    fn trim(&mut self) {
        if self.named.len() <= MAX_CONTAINERS {
            return;
        }
        let keep = MAX_CONTAINERS - MAX_CONTAINERS / 8;
        let mut order: Vec<(bool, u64, &String)> = self
            .named
            .iter()
            .map(|(id, n)| (!n.removed, n.used.load(Ordering::Relaxed), id))
            .collect();
        order.sort_unstable();
        let forget: Vec<String> = order[..self.named.len() - keep]
            .iter()
            .map(|(_, _, id)| (*id).clone())
            .collect();
        for id in forget {
            self.named.remove(&id);
        }
    }
}

static KNOWN: LazyLock<RwLock<Known>> = LazyLock::new(RwLock::default);

/// Set by a replay: names come from the recording only.
static RECORDED: AtomicBool = AtomicBool::new(false);

/// Wakes the resolver thread (which [`watch`] starts) when there are ids to ask about; `None`
/// when it could not start.
static RESOLVER: OnceLock<Option<SyncSender<()>>> = OnceLock::new();

fn known() -> std::sync::RwLockReadGuard<'static, Known> {
    KNOWN
        .read()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn known_mut() -> std::sync::RwLockWriteGuard<'static, Known> {
    // Whatever the writer changes, the names threads remember may be wrong now.
    NAMES_GENERATION.fetch_add(1, Ordering::Release);
    KNOWN
        .write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Bumped at every change of the table of names: see [`RecentNames`].
static NAMES_GENERATION: AtomicU64 = AtomicU64::new(0);

/// What [`owner_names`] answers.
pub type Names = (Option<Arc<str>>, Option<Arc<Container>>);

/// Whom [`owner_names`] is asked about: (pid, cgroup v2 id).
type Owner = (Option<u32>, Option<u64>);

/// A thread's last answers of [`owner_names`] ([`crate::host::recent`]), valid while neither
/// the cgroup cache's nor the name table's generation changed: without it each event of an
/// owner asked for a lock and two SipHash lookups (the container table, the v1 pid cache), a
/// tenth of `report`'s CPU under churn. (A container served from here is not marked used in
/// the table: its stamp is that of its last lookup before the table last changed, so an
/// eviction, past `MAX_CONTAINERS` only, may take a busy container for an idle one, whose
/// events then wait for its names again.)
type RecentNames = crate::host::recent::Recent<Owner, Names, (u64, u64)>;

thread_local! {
    static RECENT_NAMES: std::cell::RefCell<RecentNames> = std::cell::RefCell::default();
}

/// Starts following this host's runtimes' event streams and asking them in the background
/// (once per process). A live run calls it once it has dropped its privileges (the threads
/// inherit the reduced set).
pub fn watch() {
    RESOLVER.get_or_init(|| {
        // Before the listing: a container created meanwhile is in one or the other.
        let sockets: Vec<std::path::PathBuf> = API_SOCKETS.iter().map(Into::into).collect();
        runtime_events::follow(&sockets, Arc::new(heard), STREAMS_SETTLE);
        let rt = runtime()
            .map_err(|e| log::warn!("container names: no runtime lookup ({e})"))
            .ok()?;
        let (wake, wakes) = sync_channel(1);
        std::thread::Builder::new()
            .name("netwatch-runtimes".into())
            .spawn(move || resolve(&rt, &Sources::host(), &wakes))
            .map_err(|e| log::warn!("container names: cannot start the runtime lookup thread: {e}"))
            .ok()?;
        Some(wake)
    });
}

/// Takes what an event stream tells.
fn heard(update: Update) {
    match update {
        Update::Created(c) => {
            log::debug!("container names: {} created", c.id);
            known_mut().merge(HashMap::from([(c.id.clone(), c)]));
        }
        Update::Removed(id) => known_mut().removed(&id),
        Update::Streaming(true) => {
            STREAMING.fetch_add(1, Ordering::Relaxed);
        }
        Update::Streaming(false) => {
            STREAMING.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// The resolver's wakeup, when one runs.
fn resolver() -> Option<&'static SyncSender<()>> {
    RESOLVER.get()?.as_ref()
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

/// The resolver: lists the runtimes once, then answers the questions events raise, in
/// batches (the ids that came up while it was asking go in the next one).
fn resolve(rt: &tokio::runtime::Runtime, sources: &Sources, wakes: &Receiver<()>) {
    let listed = rt.block_on(sources.list(&|id| known().named.contains_key(id)));
    known_mut().merge(listed);
    while wakes.recv().is_ok() {
        let asked = {
            let mut known = known_mut();
            let mut asked = std::mem::take(&mut known.to_ask);
            // Named meanwhile (by the listing at start): nothing to ask.
            asked.retain(|id| !known.named.contains_key(id));
            asked
        };
        if asked.is_empty() {
            continue;
        }
        let started = Instant::now();
        let found = rt.block_on(sources.lookup(&asked));
        log::debug!(
            "container names: the runtimes named {} of {} new containers in {:?} (asked {asked:?})",
            found.len(),
            asked.len(),
            started.elapsed()
        );
        known_mut().answer(&asked, found);
    }
}

/// The container a cgroup path names, with the names known now; an id not known yet is
/// asked about (see the module's doc).
pub fn container_of_path(path: &str) -> Option<Arc<Container>> {
    let id = container_id(path)?;
    if let Some(n) = known().named.get(id) {
        return Some(n.used());
    }
    if !RECORDED.load(Ordering::Relaxed)
        && let Some(wake) = resolver()
    {
        let now = Instant::now();
        let ask = known().should_ask(id, now);
        if ask && known_mut().ask(id, now) {
            // A wakeup already pending is as good as this one; a resolver gone asks nothing.
            let _ = wake.try_send(());
        }
    }
    Some(Arc::new(Container::unnamed(id)))
}

/// Whether an event of this owner should wait: its container is being asked about for the
/// first time, or an event stream runs and has not named it yet, for at most [`MAX_HOLD`]
/// (see the module's doc). Asks about a container it meets for the first time.
pub fn awaited(cgroup_id: Option<u64>, pid: Option<u32>) -> bool {
    if resolver().is_none() {
        return false;
    }
    let streaming = STREAMING.load(Ordering::Relaxed) > 0;
    owner_container(cgroup_id, pid)
        .is_some_and(|c| known().awaited(&c.id, Instant::now(), streaming))
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
    owner_names(cgroup_id, pid).1
}

/// A socket's owner's cgroup path ([`cgroup::owner_cgroup_shared`]) and its container
/// ([`owner_container`]): for the outputs that write both (`--json`, a recording), one lookup
/// of the cgroup.
pub fn owner_names(cgroup_id: Option<u64>, pid: Option<u32>) -> Names {
    let key = (pid, cgroup_id);
    let generations = names_generation();
    if let Some(names) = RECENT_NAMES.with_borrow_mut(|r| r.get(&key, generations)) {
        return names;
    }
    let names = look_up_names(cgroup_id, pid);
    if may_keep(&names) {
        RECENT_NAMES.with_borrow_mut(|r| r.put(key, names.clone()));
    }
    names
}

/// What [`owner_names`]' answers are valid for: an answer that [`may_keep`] stays the answer
/// for the same owner while this stays the same.
pub fn names_generation() -> (u64, u64) {
    (
        cgroup::generation(),
        NAMES_GENERATION.load(Ordering::Acquire),
    )
}

/// Whether an answer of [`owner_names`] may be kept for the owner's next events. A container
/// no runtime has named yet is not: its next events ask again (at most every few seconds, see
/// `Known::should_ask`).
pub fn may_keep(names: &Names) -> bool {
    names.1.as_ref().is_none_or(|c| c.name.is_some())
}

fn look_up_names(cgroup_id: Option<u64>, pid: Option<u32>) -> Names {
    let cgroup = cgroup::owner_cgroup_shared(cgroup_id, pid);
    let container = cgroup.as_deref().and_then(container_of_path).or_else(|| {
        // A replay's pids are of another moment: its containers come from the recording.
        if RECORDED.load(Ordering::Relaxed) {
            return None;
        }
        container_of_path(&v1_container_path_of(pid?)?)
    });
    (cgroup, container)
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
        && known().named.get(&c.id).map(|k| k.container.as_ref()) != Some(&c)
    {
        known_mut().merge(HashMap::from([(c.id.clone(), c)]));
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
    fn an_unknown_container_is_asked_about_once_and_awaited_until_answered() {
        let mut known = Known::default();
        let t0 = Instant::now();
        assert!(known.ask(ID, t0));
        assert!(
            known.awaited(ID, t0, false),
            "its events wait for the first answer"
        );
        assert!(
            !known.awaited(ID, t0 + MAX_HOLD, false),
            "no longer than MAX_HOLD after the question, however slow the answer"
        );
        assert!(!known.ask(ID, t0), "asked once");
        assert_eq!(std::mem::take(&mut known.to_ask), [ID]);
        known.answer(
            &[ID.to_string()],
            HashMap::from([(ID.to_string(), named(ID, "web"))]),
        );
        assert!(!known.awaited(ID, t0, false));
        assert_eq!(known.named[ID].container.name.as_deref(), Some("web"));
        assert!(
            !known.should_ask(ID, t0 + RETRY_UNNAMED),
            "named: never asked again"
        );
    }

    #[test]
    fn a_container_no_runtime_names_is_not_awaited_again_and_asked_again_later() {
        let mut known = Known::default();
        let t0 = Instant::now();
        assert!(known.ask(ID, t0));
        known.answer(&[ID.to_string()], HashMap::new());
        assert!(!known.awaited(ID, t0, false), "answered: its events pass");
        assert!(known.named.is_empty());
        assert!(!known.ask(ID, t0 + RETRY_UNNAMED / 2));
        assert!(
            known.ask(ID, t0 + RETRY_UNNAMED),
            "asked again in the background"
        );
        assert!(
            !known.awaited(ID, t0 + RETRY_UNNAMED, false),
            "a second question holds nothing"
        );
        assert_eq!(known.to_ask, [ID, ID]);
    }

    #[test]
    fn while_a_stream_runs_an_answer_that_named_nothing_still_holds_until_max_hold() {
        let mut known = Known::default();
        let t0 = Instant::now();
        assert!(known.ask(ID, t0));
        // Removed before the runtime answered: the listing no longer has it.
        known.answer(&[ID.to_string()], HashMap::new());
        assert!(
            !known.awaited(ID, t0, false),
            "no stream: nothing else will name it"
        );
        assert!(known.awaited(ID, t0, true), "its `create` may still come");
        assert!(
            !known.awaited(ID, t0 + MAX_HOLD, true),
            "no longer than MAX_HOLD"
        );
        // The `create` comes.
        known.merge(HashMap::from([(ID.to_string(), named(ID, "web"))]));
        assert!(!known.awaited(ID, t0, true));
        // A second question, later, holds nothing, stream or not.
        let mut known = Known::default();
        assert!(known.ask(ID, t0));
        known.answer(&[ID.to_string()], HashMap::new());
        assert!(known.ask(ID, t0 + RETRY_UNNAMED));
        assert!(!known.awaited(ID, t0 + RETRY_UNNAMED, true));
    }

    #[test]
    fn the_cache_is_bounded_and_forgets_removed_then_least_used_containers() {
        let mut known = Known::default();
        let id = |n: usize| format!("{n:064x}");
        // One after the other, as their `create`s come: container n used before n + 1.
        for n in 0..MAX_CONTAINERS {
            known.merge(HashMap::from([(id(n), named(&id(n), "x"))]));
        }
        assert_eq!(known.named.len(), MAX_CONTAINERS);
        // Gone containers stay named (a connection may end after its container) until the
        // cap is reached.
        known.removed(&id(MAX_CONTAINERS - 1));
        // Container 0 is still in use; the others since 1 are not.
        let _ = known.named[&id(0)].used();
        known.merge(HashMap::from([(
            id(MAX_CONTAINERS),
            named(&id(MAX_CONTAINERS), "y"),
        )]));
        assert_eq!(known.named.len(), MAX_CONTAINERS - MAX_CONTAINERS / 8);
        assert!(known.named.contains_key(&id(MAX_CONTAINERS)), "the new one");
        assert!(known.named.contains_key(&id(0)), "the one in use");
        assert!(
            !known.named.contains_key(&id(MAX_CONTAINERS - 1)),
            "the removed one goes first, though used after the others"
        );
        assert!(!known.named.contains_key(&id(1)), "the least recently used");
        assert!(known.named.contains_key(&id(MAX_CONTAINERS - 2)));
        let t0 = Instant::now();
        for n in 0..=MAX_CONTAINERS {
            known.ask(&id(n + 1), t0);
            known.answer(&[id(n + 1)], HashMap::new());
        }
        assert!(
            known.unnamed.len() <= MAX_CONTAINERS,
            "{}",
            known.unnamed.len()
        );
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
