//! Taking snapshots: once from the kernel's dump alone (`--once`), every interval while the
//! stream feeds the tracker and the code paths (live), or where a recording holds them
//! (`analyze --leaks`: the live run's dumps and names, merged with the replayed stream).
use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{self, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use super::group::{Snapshot, groups};
use super::merge::{Dump, FirstSeen, Lookup, Stuck, Tracked, merge};
use super::recorded::{Answering, Recorded};
use super::render::render;
use crate::host::clock::{WallClock, monotonic_ns};
use crate::host::snapshot::HostSnapshot;
use crate::host::stacks::{CodePath, Stacks};
use crate::host::stuck::{StuckSnapshot, take_dump};
use crate::model::event::{Event, EventKind, TcpState, UseCall};
use crate::model::tracker::{Fact, Tracker};
use crate::pipeline::sink::Sink;
use crate::{host::cgroup, kernel::privileges};

/// Most symbolized code paths kept; past it the table starts over (bounded memory).
const MAX_CODE_PATHS: usize = 65_536;

/// Connections closed first here are remembered this long, and at most this many: longer than
/// any sane `tcp_fin_timeout`, the most an orphaned FIN_WAIT2 lives.
const CLOSED_MEMORY_NS: u64 = 600 * 1_000_000_000;
const CLOSED_MAX: usize = 65_536;

/// Connections this host closed first, by endpoints and namespace: what names the process and
/// code path of an orphaned FIN_WAIT2 in the dump, which no process holds any more.
#[derive(Default)]
struct ClosedFirst {
    /// The socket as the merge takes it, and when it closed.
    by_key: HashMap<ClosedKey, (Tracked, u64)>,
    /// Keys in closing order, for expiry.
    order: VecDeque<(ClosedKey, u64)>,
}

type ClosedKey = (SocketAddr, SocketAddr, Option<u32>);

impl ClosedFirst {
    fn remember(&mut self, fact: Fact) {
        let Fact::Ended(c) = fact;
        let Some(t) = Tracked::closed_first(&c) else {
            return;
        };
        let key = (t.local, t.remote, t.netns);
        self.order.push_back((key, c.end_ns));
        self.by_key.insert(key, (t, c.end_ns));
        while self.order.len() > CLOSED_MAX {
            self.forget_oldest();
        }
    }

    /// Forgets what closed more than [`CLOSED_MEMORY_NS`] before `now_ns`.
    fn expire(&mut self, now_ns: u64) {
        while self
            .order
            .front()
            .is_some_and(|(_, at)| now_ns.saturating_sub(*at) > CLOSED_MEMORY_NS)
        {
            self.forget_oldest();
        }
    }

    fn forget_oldest(&mut self) {
        if let Some((key, at)) = self.order.pop_front() {
            // A later close of the same endpoints replaced the entry: keep that one.
            if self.by_key.get(&key).is_some_and(|(_, end)| *end == at) {
                self.by_key.remove(&key);
            }
        }
    }
}

/// Code paths symbolized while the stream ran, by (pid, stack id), with the word at the user
/// stack pointer they were symbolized with.
type Paths = HashMap<(u32, u32), (Option<u64>, Arc<CodePath>)>;

/// The first send and receive of each live socket netwatch saw, by kernel address, in the
/// order seen: (pid, stack id) in [`Paths`].
type Uses = HashMap<u64, Vec<(UseCall, (u32, u32))>>;

/// Names from this host: cgroup paths, and the code paths symbolized while the stream ran.
struct HostNames<'a> {
    frames: &'a Paths,
    uses: &'a Uses,
}

impl Lookup for HostNames<'_> {
    fn cgroup(&mut self, cgroup_id: Option<u64>, pid: u32) -> Option<String> {
        cgroup::owner_cgroup(cgroup_id, Some(pid))
    }

    fn frames(&mut self, pid: u32, stack_id: u32) -> Option<Arc<CodePath>> {
        self.frames.get(&(pid, stack_id)).map(|(_, p)| p.clone())
    }

    fn first_use(&mut self, sock: u64) -> Option<(UseCall, Arc<CodePath>)> {
        let seen: Vec<(UseCall, Arc<CodePath>)> = self
            .uses
            .get(&sock)?
            .iter()
            .filter_map(|(call, key)| Some((*call, self.frames.get(key)?.1.clone())))
            .collect();
        let first_named = seen.iter().position(|(_, p)| p.headline.is_some());
        seen.into_iter().nth(first_named.unwrap_or(0))
    }
}

/// What a snapshot shows, and how it prints.
#[derive(Clone, Debug)]
pub struct Style {
    pub json: bool,
    pub min_age: Duration,
    /// Only sockets held by these processes (empty: any).
    pub pids: Vec<u32>,
    /// Only sockets held by a process of this command name.
    pub comm: Option<String>,
}

impl Style {
    /// Whether `s` passes `--pid` and `--comm` (an orphan, with no process, passes neither).
    fn keeps(&self, s: &Stuck) -> bool {
        let owner = s.owner.as_ref();
        let pid_ok = self.pids.is_empty() || owner.is_some_and(|o| self.pids.contains(&o.pid));
        let comm_ok = self
            .comm
            .as_ref()
            .is_none_or(|c| owner.is_some_and(|o| &o.comm == c));
        pid_ok && comm_ok
    }
}

/// When a snapshot is taken: its monotonic time, the wall clock then, and how long the run had
/// watched the stream.
struct Moment {
    now_ns: u64,
    clock: WallClock,
    watched_ns: u64,
}

/// What snapshots carry from one to the next: the tracker the stream feeds, the connections
/// closed first here, and when each untracked stuck socket was first listed.
struct Memory {
    tracker: Tracker,
    closed_first: ClosedFirst,
    first_seen: FirstSeen,
}

impl Memory {
    fn new(max_sockets: usize) -> Self {
        Self {
            tracker: Tracker::new(max_sockets),
            closed_first: ClosedFirst::default(),
            first_seen: FirstSeen::default(),
        }
    }

    fn on_event(&mut self, ev: &Event) {
        let closed_first = &mut self.closed_first;
        self.tracker
            .on_event(ev, &mut |fact| closed_first.remember(fact));
    }

    /// Merges `dump` with what the tracker knows at `at`, naming through `lookup`.
    fn snapshot(
        &mut self,
        dump: &Dump,
        at: &Moment,
        lookup: &mut dyn Lookup,
        style: &Style,
    ) -> Snapshot {
        let now = at.now_ns;
        let closed_first = &mut self.closed_first;
        self.tracker
            .finish_until(now, &mut |fact| closed_first.remember(fact));
        closed_first.expire(now);
        // The tracked sockets the dump lists, whatever state the tracker believes (it may have
        // lost the transition); when the dump is partial, also those the tracker finds stuck.
        let listed: HashSet<(SocketAddr, SocketAddr)> =
            dump.sockets.iter().map(|(_, d)| (d.src, d.dst)).collect();
        let tracked: Vec<Tracked> = self
            .tracker
            .live_sockets()
            .filter(|s| {
                let tuple = (
                    SocketAddr::new(s.saddr, s.sport),
                    SocketAddr::new(s.daddr, s.dport),
                );
                listed.contains(&tuple)
                    || (!dump.complete
                        && matches!(s.state, TcpState::CloseWait | TcpState::FinWait2))
            })
            .map(|s| Tracked::of(&s))
            .chain(
                self.closed_first
                    .by_key
                    .values()
                    .filter(|(t, _)| listed.contains(&(t.local, t.remote)))
                    .map(|(t, _)| t.clone()),
            )
            .collect();
        let mut stuck = merge(dump, &tracked, now, &mut self.first_seen, lookup);
        stuck.retain(|s| style.keeps(s));
        Snapshot {
            at: at.clock.rfc3339(now),
            watched_ms: at.watched_ns as f64 / 1e6,
            min_age_ms: style.min_age.as_secs_f64() * 1000.0,
            groups: groups(stuck, style.min_age.as_secs_f64() * 1000.0),
            warnings: dump.warnings.clone(),
        }
    }
}

fn print(out: &mut impl Write, s: &Snapshot, json: bool) -> io::Result<()> {
    if json {
        serde_json::to_writer(&mut *out, s)?;
        out.write_all(b"\n")?;
    } else {
        out.write_all(render(s).as_bytes())?;
    }
    out.flush()
}

/// The dump's reasons the picture may be partial, and the capabilities netwatch lacks to see
/// every process's fds.
fn with_missing_caps(mut dump: Dump) -> Dump {
    dump.warnings.extend(privileges::missing_inspection_caps());
    dump
}

/// `netwatch leaks --once`: the sockets stuck now, from the kernel's dump alone (no tracing,
/// so no code paths; ages are lower bounds).
pub fn once(out: &mut impl Write, style: &Style) -> io::Result<()> {
    // One listing of the runtimes, waited for: nothing else waits on it here.
    crate::host::containers::list_now();
    let dump = with_missing_caps(take_dump());
    let at = Moment {
        now_ns: monotonic_ns(),
        clock: WallClock::now(),
        watched_ns: 0,
    };
    let (frames, uses) = (HashMap::new(), HashMap::new());
    let mut host = HostNames {
        frames: &frames,
        uses: &uses,
    };
    let s = Memory::new(1).snapshot(&dump, &at, &mut host, style);
    print(out, &s, style.json)
}

/// The live side of `netwatch leaks`: the code paths it symbolizes, the dumps it takes, and
/// (recording) the host side of each snapshot until the recording takes it.
struct Live {
    interval_ns: u64,
    stacks: Option<Stacks>,
    /// (pid, stack id) -> code path, symbolized when the kernel reported it (connect(),
    /// accept(), a first send or receive): a process that exits keeps its code paths.
    frames: Paths,
    /// Live sockets' first send and receive.
    uses: Uses,
    started_ns: u64,
    next_ns: u64,
    /// A dump being taken on a thread of its own: reading `/proc/*/fd` on a busy host takes
    /// long enough to fill the ring buffer if the stream waited for it.
    pending: Option<mpsc::Receiver<Dump>>,
    /// With `--record`: each snapshot's host side, until the recording takes it (at the next
    /// flush, so at most the snapshots of one batch).
    recording: Option<Vec<StuckSnapshot>>,
    /// The last snapshot is taken (the stream stopped).
    ended: bool,
}

/// `analyze --leaks`: the snapshots come from the recording; what shows may differ from the
/// live run's only where asked.
pub struct Replaying {
    /// `--min-age`, else the live run's.
    pub min_age: Option<Duration>,
    /// `-p`, else (empty) the live run's.
    pub pids: Vec<u32>,
    /// `--comm`, else the live run's.
    pub comm: Option<String>,
    /// Snapshots replayed, counted for the caller (a recording may hold none).
    pub replayed: Arc<AtomicU64>,
}

impl Replaying {
    /// The live run's style as `snapshot` recorded it, with what the replay overrides.
    fn style(&self, snapshot: &StuckSnapshot, json: bool) -> Style {
        Style {
            json,
            min_age: self
                .min_age
                .unwrap_or(Duration::from_nanos(snapshot.min_age_ns)),
            pids: if self.pids.is_empty() {
                snapshot.pids.clone()
            } else {
                self.pids.clone()
            },
            comm: self.comm.clone().or_else(|| snapshot.comm.clone()),
        }
    }
}

enum Source {
    Live(Box<Live>),
    Replay(Replaying),
}

/// `netwatch leaks`, live or replayed: feeds the tracker; live, symbolizes each new code path
/// while its process is alive and every interval merges that with a fresh dump; replayed,
/// merges each recorded snapshot's dump and names at its place in the stream. Either prints.
pub struct LeaksSink<W: Write> {
    out: W,
    style: Style,
    memory: Memory,
    source: Source,
    /// Text output prints only when the groups change; this is what was printed last.
    last_shape: Option<Vec<(String, usize)>>,
    /// Why printing the last snapshot failed (it is taken when the stream stops, which cannot
    /// fail; `finish` returns it).
    end_error: Option<io::Error>,
}

/// Takes a dump on a new thread; the receiver gets it when done. If no thread can be
/// started, the dump is taken here and now.
fn dump_in_background() -> mpsc::Receiver<Dump> {
    let (tx, rx) = mpsc::channel();
    let worker = tx.clone();
    let spawned = std::thread::Builder::new()
        .name("netwatch-dump".into())
        .spawn(move || {
            let _ = worker.send(take_dump());
        });
    if let Err(e) = spawned {
        log::debug!("no thread for the socket dump ({e}); taking it inline");
        let _ = tx.send(take_dump());
    }
    rx
}

impl Live {
    /// Symbolizes the code path `ev` carries (connect(), accept(), a first send or receive)
    /// once per (pid, stack id), while its process is alive; remembers a socket's first uses.
    fn remember_code_path(&mut self, ev: &Event) {
        // A new socket at this address, or the end of one: its first uses are not ours.
        let fresh = ev.opens_socket()
            || matches!(
                ev.kind,
                EventKind::State {
                    old_state: Some(TcpState::Close | TcpState::Listen),
                    ..
                } | EventKind::Destroy { .. }
            );
        if fresh {
            self.uses.remove(&ev.sock);
        }
        let (Some(stacks), Some(pid), Some(id)) = (self.stacks.as_mut(), ev.pid, ev.stack_id)
        else {
            return;
        };
        if !ev.carries_stack() {
            return;
        }
        if let EventKind::FirstUse { call, .. } = ev.kind {
            if self.uses.len() >= MAX_CODE_PATHS {
                self.uses.clear();
            }
            let seen = self.uses.entry(ev.sock).or_default();
            if !seen.iter().any(|(c, _)| *c == call) {
                seen.push((call, (pid, id)));
            }
        }
        if self.frames.contains_key(&(pid, id)) {
            return;
        }
        if self.frames.len() >= MAX_CODE_PATHS {
            self.frames.clear();
        }
        let path = stacks.code_path(pid, id, ev.sp_word);
        self.frames.insert((pid, id), (ev.sp_word, path));
    }

    /// Symbolizes again the code paths without an application frame whose process has
    /// written (more of) its perf map since: a JVM writes it when asked (`jcmd PID
    /// Compiler.perfmap`), after the sockets were opened and used.
    fn refresh_code_paths(&mut self) {
        let Some(stacks) = self.stacks.as_mut() else {
            return;
        };
        for ((pid, id), (sp_word, path)) in &mut self.frames {
            if path.headline.is_none()
                && let Some(newer) = stacks.refreshed(*pid, *id, *sp_word)
            {
                *path = newer;
            }
        }
    }
}

impl<W: Write> LeaksSink<W> {
    /// Live `netwatch leaks`.
    pub fn new(out: W, style: Style, interval: Duration, max_sockets: usize) -> Self {
        let now = monotonic_ns();
        let live = Live {
            interval_ns: interval.as_nanos().max(1) as u64,
            stacks: None,
            frames: HashMap::new(),
            uses: HashMap::new(),
            started_ns: now,
            next_ns: now,
            pending: None,
            recording: None,
            ended: false,
        };
        Self::with_source(out, style, max_sockets, Source::Live(Box::new(live)))
    }

    /// `analyze --leaks`: the recorded snapshots, printed as `json` says.
    pub fn replay(out: W, json: bool, replaying: Replaying, max_sockets: usize) -> Self {
        let style = Style {
            json,
            min_age: Duration::ZERO,
            pids: Vec::new(),
            comm: None,
        };
        Self::with_source(out, style, max_sockets, Source::Replay(replaying))
    }

    fn with_source(out: W, style: Style, max_sockets: usize, source: Source) -> Self {
        Self {
            out,
            style,
            memory: Memory::new(max_sockets),
            source,
            last_shape: None,
            end_error: None,
        }
    }

    /// Merges `dump` with what the tracker knows now and prints the snapshot (text: only when
    /// the groups changed, unless `last`); recording, keeps what it took from the host.
    fn report(&mut self, dump: Dump, last: bool) -> io::Result<()> {
        let Source::Live(live) = &mut self.source else {
            return Ok(());
        };
        live.refresh_code_paths();
        let now = monotonic_ns();
        let at = Moment {
            now_ns: now,
            clock: WallClock::now(),
            watched_ns: now.saturating_sub(live.started_ns),
        };
        let dump = with_missing_caps(dump);
        let mut host = HostNames {
            frames: &live.frames,
            uses: &live.uses,
        };
        let s = match &mut live.recording {
            None => self.memory.snapshot(&dump, &at, &mut host, &self.style),
            Some(taken) => {
                let mut inputs = StuckSnapshot {
                    taken_ns: now,
                    wall_offset_ns: at.clock.offset_ns(),
                    watched_ns: at.watched_ns,
                    last,
                    min_age_ns: u64::try_from(self.style.min_age.as_nanos()).unwrap_or(u64::MAX),
                    pids: self.style.pids.clone(),
                    comm: self.style.comm.clone(),
                    ..StuckSnapshot::default()
                };
                let mut answering = Answering::new(&mut host, &mut inputs);
                let s = self
                    .memory
                    .snapshot(&dump, &at, &mut answering, &self.style);
                answering.name_containers();
                inputs.dump = dump;
                taken.push(inputs);
                s
            }
        };
        self.show(&s, last)
    }

    /// Prints `s` (text: only when the groups changed, unless `always`).
    fn show(&mut self, s: &Snapshot, always: bool) -> io::Result<()> {
        if self.style.json {
            return print(&mut self.out, s, true);
        }
        let shape: Vec<(String, usize)> = s
            .groups
            .iter()
            .map(|g| {
                (
                    format!(
                        "{:?}{:?}{:?}{:?}{:?}{:?}",
                        g.kind, g.pid, g.stack, g.cgroup, g.leaked_by, g.first_used_at
                    ),
                    g.sockets,
                )
            })
            .collect();
        if always || self.last_shape.as_ref() != Some(&shape) {
            self.last_shape = Some(shape);
            print(&mut self.out, s, false)?;
        }
        Ok(())
    }

    /// Live: the last snapshot, printed whatever changed (from the dump in flight, if any).
    fn report_end(&mut self) -> io::Result<()> {
        let Source::Live(live) = &mut self.source else {
            return Ok(());
        };
        if live.ended {
            return Ok(());
        }
        live.ended = true;
        let dump = live
            .pending
            .take()
            .and_then(|rx| rx.recv().ok())
            .unwrap_or_else(take_dump);
        self.report(dump, true)
    }
}

impl<W: Write> Sink for LeaksSink<W> {
    fn attach(&mut self, probe: &crate::kernel::probe::Probe) -> anyhow::Result<()> {
        if let Source::Live(live) = &mut self.source
            && probe.captures_stacks()
        {
            live.stacks = Some(Stacks::new(probe.stack_map()?));
        }
        Ok(())
    }

    fn stopped(&mut self, _stop: crate::pipeline::session::StopReason) {
        // Taken here, not in `finish`, so that a recording holds it before its summary.
        if let Err(e) = self.report_end() {
            self.end_error = Some(e);
        }
    }

    fn finish(
        mut self: Box<Self>,
        _header: &crate::pipeline::session::Header,
        _summary: &crate::pipeline::session::Summary,
    ) -> io::Result<()> {
        if let Some(e) = self.end_error.take() {
            return Err(e);
        }
        self.report_end()
    }

    fn event(&mut self, ev: &Event) -> io::Result<()> {
        if let Source::Live(live) = &mut self.source {
            live.remember_code_path(ev);
        }
        self.memory.on_event(ev);
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        let Source::Live(live) = &mut self.source else {
            return Ok(());
        };
        if let Some(rx) = &live.pending {
            match rx.try_recv() {
                Ok(dump) => {
                    live.pending = None;
                    self.report(dump, false)?;
                }
                Err(mpsc::TryRecvError::Empty) => {}
                Err(mpsc::TryRecvError::Disconnected) => live.pending = None,
            }
        }
        let Source::Live(live) = &mut self.source else {
            return Ok(());
        };
        let now = monotonic_ns();
        if live.pending.is_none() && now >= live.next_ns {
            live.pending = Some(dump_in_background());
            live.next_ns = now + live.interval_ns;
        }
        Ok(())
    }

    fn record_host_snapshots(&mut self) {
        if let Source::Live(live) = &mut self.source {
            live.recording = Some(Vec::new());
        }
    }

    fn take_host_snapshots(&mut self) -> Vec<HostSnapshot> {
        match &mut self.source {
            Source::Live(live) => live
                .recording
                .as_mut()
                .map(std::mem::take)
                .unwrap_or_default()
                .into_iter()
                .map(|s| HostSnapshot::Stuck(Box::new(s)))
                .collect(),
            Source::Replay(_) => Vec::new(),
        }
    }

    /// A `top` recording's ticks are not this command's: nothing to show from them.
    fn host_snapshot(&mut self, snapshot: &HostSnapshot) -> io::Result<()> {
        let (Source::Replay(replaying), HostSnapshot::Stuck(snapshot)) = (&self.source, snapshot)
        else {
            return Ok(());
        };
        replaying.replayed.fetch_add(1, Ordering::Relaxed);
        let style = replaying.style(snapshot, self.style.json);
        let at = Moment {
            now_ns: snapshot.taken_ns,
            clock: WallClock::from_offset(snapshot.wall_offset_ns),
            watched_ns: snapshot.watched_ns,
        };
        let mut names = Recorded::of(snapshot);
        let s = self
            .memory
            .snapshot(&snapshot.dump, &at, &mut names, &style);
        self.show(&s, snapshot.last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::leaks::StuckKind;
    use crate::commands::leaks::merge::Owner;

    fn stuck(owner: Option<(u32, &str)>) -> Stuck {
        Stuck {
            kind: StuckKind::CloseWait,
            local: "10.0.0.1:80".parse().unwrap(),
            remote: "10.0.0.2:4000".parse().unwrap(),
            netns: None,
            age_ms: 1.0,
            at_least: false,
            owner: owner.map(|(pid, comm)| Owner {
                pid,
                comm: comm.into(),
                cgroup: None,
            }),
            fds: vec![],
            opened_by: None,
            stack: None,
            used: None,
        }
    }

    #[test]
    fn closes_are_remembered_bounded_in_time_and_replaced_by_later_ones() {
        use crate::model::tracker::{Connection, End, Role};
        let tw = |end_ns, port| {
            Fact::Ended(Box::new(Connection::test(
                end_ns,
                "10.0.0.2",
                port,
                End::TimeWait,
                Role::Active,
            )))
        };
        let mut c = ClosedFirst::default();
        c.remember(tw(1_000, 1));
        c.remember(tw(2_000, 2));
        c.remember(Fact::Ended(Box::new(Connection::test(
            3_000,
            "10.0.0.2",
            3,
            End::Closed,
            Role::Active,
        ))));
        assert_eq!(c.by_key.len(), 2, "only closes that were ours");
        // The same endpoints closing again: the later one stays when the first expires.
        c.remember(tw(CLOSED_MEMORY_NS, 1));
        c.expire(CLOSED_MEMORY_NS + 2_001);
        let left: Vec<u64> = c.by_key.values().map(|(_, end)| *end).collect();
        assert_eq!(left, vec![CLOSED_MEMORY_NS]);
        c.expire(u64::MAX);
        assert!(c.by_key.is_empty() && c.order.is_empty());
    }

    #[test]
    fn pid_and_comm_select_holders_and_drop_orphans() {
        let style = |pids: Vec<u32>, comm: Option<&str>| Style {
            json: false,
            min_age: Duration::ZERO,
            pids,
            comm: comm.map(String::from),
        };
        let (a, b, orphan) = (
            stuck(Some((10, "nginx"))),
            stuck(Some((11, "java"))),
            stuck(None),
        );
        let any = style(vec![], None);
        assert!(any.keeps(&a) && any.keeps(&b) && any.keeps(&orphan));
        let p = style(vec![11, 12], None);
        assert!(!p.keeps(&a) && p.keeps(&b) && !p.keeps(&orphan));
        let c = style(vec![], Some("nginx"));
        assert!(c.keeps(&a) && !c.keeps(&b) && !c.keeps(&orphan));
        assert!(!style(vec![10], Some("java")).keeps(&a));
    }
}
