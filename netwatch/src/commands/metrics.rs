//! `netwatch serve`: the run as Prometheus metrics (the prometheus-client crate, OpenMetrics
//! text), fed like `report` is — events for transitions, resets and retransmissions, the
//! tracker's finished connections for connect outcomes, TIME_WAIT births and lifetimes, and the
//! tracker's live sockets for the CLOSE_WAIT and TIME_WAIT gauges.
//!
//! Labels are bounded, whatever the host does: per-process labels are `comm` and `cgroup`
//! (never a pid; `cgroup` is the owner's cgroup path, see [`cgroup_label`]), at most
//! `max_processes` distinct pairs, later ones count as
//! `comm="other",cgroup="other"`. An owner in a container has its `namespace`, `pod` and
//! `container` labels too (each when the runtime names it): they follow from the cgroup, so
//! they add no series beyond the cap, and they expire with it; peers (`peer`, the remote address) are opt-in and at most
//! `max_peers` distinct, later ones count as `peer="other"`; states and reset reasons are the
//! kernel's finite sets.
//!
//! The event path touches only the metrics' own atomics (and, where an owner acts, the
//! process-wide owner cgroup cache, which the HTTP tasks never take). Gauges are refreshed from the tracker
//! at most once a second (in [`Sink::flush`], which runs after every drained batch), under the
//! same lock the HTTP tasks take to encode, so a scrape never sees half a refresh.
use std::{
    collections::{HashMap, HashSet},
    io::{self, Write as _},
    net::IpAddr,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use prometheus_client::{
    encoding::text,
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::{Registry, Unit},
};

use crate::cli::{DEFAULT_LABEL_TTL, DEFAULT_MAX_PEERS, DEFAULT_MAX_PROCESSES};
use crate::model::names::Container;
use crate::{
    commands::http::{Response, Route},
    host::clock::monotonic_ns,
    kernel::probe::StatsReader,
    model::event::{Event, EventKind, TcpState},
    model::selection::Selection,
    model::timewait::{HostSettings, Observed, TimeWaits},
    model::tracker::{Connection, End, Fact, Role, Tracker},
    pipeline::session::{Header, Summary},
    pipeline::sink::Sink,
};

/// The label value everything past a cap counts under.
pub const OTHER: &str = "other";
/// How often gauges and kernel counters are refreshed.
const REFRESH_NS: u64 = 1_000_000_000;

/// The OpenMetrics text content type.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

type Labels = Vec<(&'static str, String)>;

/// How many label values may appear.
#[derive(Clone, Copy, Debug)]
pub struct LabelCaps {
    /// Add `peer` (the remote address) to connects and retransmits.
    pub peer_labels: bool,
    pub max_peers: usize,
    pub max_processes: usize,
    /// A (comm, cgroup) pair unseen this long loses its series (`--label-ttl`).
    pub label_ttl: Duration,
}

impl Default for LabelCaps {
    fn default() -> Self {
        Self {
            peer_labels: false,
            max_peers: DEFAULT_MAX_PEERS,
            max_processes: DEFAULT_MAX_PROCESSES,
            label_ttl: DEFAULT_LABEL_TTL,
        }
    }
}

/// What the HTTP tasks share with the sink: the registry behind a lock, and whether tracing
/// runs (for `/healthz`).
#[derive(Debug)]
pub struct Exporter {
    registry: Mutex<Registry>,
    tracing: AtomicBool,
}

impl Exporter {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            registry: Mutex::new(Registry::with_prefix("netwatch")),
            tracing: AtomicBool::new(false),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Registry> {
        // A panic elsewhere while holding the lock leaves the metrics as they were: still
        // worth serving.
        self.registry
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The metrics as OpenMetrics text.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::with_capacity(16 * 1024);
        text::encode(&mut out, &self.lock())?;
        Ok(out)
    }

    pub fn tracing(&self) -> bool {
        self.tracing.load(Ordering::Acquire)
    }

    /// `GET /metrics` and `GET /healthz`.
    pub fn routes(self: &Arc<Self>) -> Route {
        let me = Arc::clone(self);
        Arc::new(move |path: &str| match path {
            "/metrics" => Some(match me.encode() {
                Ok(body) => Response::new(200, CONTENT_TYPE, body),
                Err(_) => Response::plain(500),
            }),
            "/healthz" => Some(if me.tracing() {
                Response::new(200, "text/plain; charset=utf-8", "ok\n")
            } else {
                Response::new(503, "text/plain; charset=utf-8", "not tracing\n")
            }),
            _ => None,
        })
    }
}

/// A counter with an optional `peer` label.
enum PeerCounter {
    Plain(Counter),
    ByPeer(Family<Labels, Counter>),
}

/// Exponential bucket bounds, rounded to two significant digits (`le="0.0003"`, not
/// `le="0.00030000000000000003"`).
fn buckets(start: f64, factor: f64, count: u16) -> impl Iterator<Item = f64> {
    exponential_buckets(start, factor, count).map(|b| format!("{b:.1e}").parse().unwrap_or(b))
}

/// Every metric netwatch exports.
struct Metrics {
    transitions: Family<[(&'static str, &'static str); 2], Counter>,
    connects: Family<Labels, Counter>,
    resets: Family<[(&'static str, String); 3], Counter>,
    retransmits: PeerCounter,
    synack_retransmits: Counter,
    time_wait_births: Family<Labels, Counter>,
    close_wait_sockets: Family<Labels, Gauge>,
    time_wait_sockets: Family<Labels, Gauge>,
    time_wait_destination: Family<[(&'static str, String); 1], Gauge>,
    time_wait_port_limit: Family<[(&'static str, String); 1], Gauge>,
    time_wait_exhaustion: Family<[(&'static str, String); 1], Gauge<f64, AtomicU64>>,
    time_wait_ends: Family<[(&'static str, &'static str); 1], Gauge>,
    lifetime: Histogram,
    connect_latency: Histogram,
    close_wait_dwell: Histogram,
    events: Counter,
    events_lost: Counter,
    events_missed: Counter,
    evictions: Counter,
    tracked_sockets: Gauge,
    label_sets: Gauge,
    build_info: Family<[(&'static str, String); 2], Gauge>,
}

impl Metrics {
    fn register(r: &mut Registry, caps: &LabelCaps) -> Self {
        let m = Metrics {
            transitions: Family::default(),
            connects: Family::default(),
            resets: Family::default(),
            retransmits: if caps.peer_labels {
                PeerCounter::ByPeer(Family::default())
            } else {
                PeerCounter::Plain(Counter::default())
            },
            synack_retransmits: Counter::default(),
            time_wait_births: Family::default(),
            close_wait_sockets: Family::default(),
            time_wait_sockets: Family::default(),
            time_wait_destination: Family::default(),
            time_wait_port_limit: Family::default(),
            time_wait_exhaustion: Family::default(),
            time_wait_ends: Family::default(),
            // 100 µs to ~70 min.
            lifetime: Histogram::new(buckets(0.0001, 3.0, 17)),
            // 10 µs to ~21 s (SYN retransmissions at 1, 3, 7 s land in their own buckets).
            connect_latency: Histogram::new(buckets(0.00001, 2.0, 22)),
            // 1 ms to ~4.7 h.
            close_wait_dwell: Histogram::new(buckets(0.001, 4.0, 13)),
            events: Counter::default(),
            events_lost: Counter::default(),
            events_missed: Counter::default(),
            evictions: Counter::default(),
            tracked_sockets: Gauge::default(),
            label_sets: Gauge::default(),
            build_info: Family::default(),
        };
        m.build_info
            .get_or_create(&[
                ("version", env!("CARGO_PKG_VERSION").to_string()),
                (
                    "kernel",
                    crate::kernel::release::running().unwrap_or_else(|_| "-".to_string()),
                ),
            ])
            .set(1);
        r.register(
            "build_info",
            "Always 1: the netwatch version and the kernel release it runs on, as labels",
            m.build_info.clone(),
        );
        r.register(
            "transitions",
            "TCP state transitions, by old and new state",
            m.transitions.clone(),
        );
        r.register(
            "connects",
            "Connections this host opened (SYN_SENT outcomes), by outcome and process",
            m.connects.clone(),
        );
        r.register(
            "resets",
            "TCP resets sent and received, by direction, reason (sent only) and socket state",
            m.resets.clone(),
        );
        match &m.retransmits {
            PeerCounter::Plain(c) => {
                r.register("retransmits", "Retransmitted TCP segments", c.clone());
            }
            PeerCounter::ByPeer(f) => {
                r.register(
                    "retransmits",
                    "Retransmitted TCP segments, by peer",
                    f.clone(),
                );
            }
        }
        r.register(
            "synack_retransmits",
            "SYN-ACKs a listener sent again",
            m.synack_retransmits.clone(),
        );
        r.register(
            "time_wait_births",
            "Connections closed first by this host (each leaves a TIME_WAIT socket), by process",
            m.time_wait_births.clone(),
        );
        r.register(
            "close_wait_sockets",
            "Sockets in CLOSE_WAIT now (the peer closed, the process has not), by process",
            m.close_wait_sockets.clone(),
        );
        r.register(
            "time_wait_sockets",
            "Timewait sockets alive now (each followed by its 4-tuple, reconciled with the kernel's list), by the process that closed first",
            m.time_wait_sockets.clone(),
        );
        r.register(
            "time_wait_destination_sockets",
            "Timewait sockets alive now, by destination (the remote endpoint we connected to, or our endpoint with (server side)); the busiest destinations only",
            m.time_wait_destination.clone(),
        );
        r.register(
            "time_wait_port_limit",
            "4-tuples a destination can use: usable ephemeral ports times local addresses",
            m.time_wait_port_limit.clone(),
        );
        r.register_with_unit(
            "time_wait_exhaustion",
            "Forecast: seconds until connect() to the destination finds no free port, at the last 10 s's birth rate; absent when the ports never run out",
            Unit::Seconds,
            m.time_wait_exhaustion.clone(),
        );
        r.register(
            "time_wait_ends",
            "How timewait sockets came and went since the start: born, reused (a new connection on the 4-tuple), overflowed (refused at tcp_max_tw_buckets), expired, drift_gone and drift_unseen (found by reconciliation)",
            m.time_wait_ends.clone(),
        );
        r.register_with_unit(
            "connection_lifetime",
            "Lifetime of finished connections, SYN to CLOSE",
            Unit::Seconds,
            m.lifetime.clone(),
        );
        r.register_with_unit(
            "connect_latency",
            "SYN_SENT to ESTABLISHED of connections this host opened",
            Unit::Seconds,
            m.connect_latency.clone(),
        );
        r.register_with_unit(
            "close_wait_dwell",
            "Time finished connections spent in CLOSE_WAIT",
            Unit::Seconds,
            m.close_wait_dwell.clone(),
        );
        r.register(
            "events",
            "Events read from the kernel's ring buffer",
            m.events.clone(),
        );
        r.register(
            "events_lost",
            "Events the kernel could not deliver: the ring buffer was full",
            m.events_lost.clone(),
        );
        r.register(
            "events_missed",
            "Events the kernel skipped: a tracepoint fired while a netwatch program was already running on that CPU",
            m.events_missed.clone(),
        );
        r.register(
            "tracker_evictions",
            "Sockets evicted from the tracker at its --max-sockets cap",
            m.evictions.clone(),
        );
        r.register(
            "tracker_sockets",
            "Sockets the tracker follows now",
            m.tracked_sockets.clone(),
        );
        r.register(
            "process_label_sets",
            "Live (comm, cgroup) label pairs; at most --max-processes, pairs unseen for --label-ttl are removed",
            m.label_sets.clone(),
        );
        m
    }
}

/// Looks up an owner's cgroup path from its cgroup id and pid.
type CgroupLookup = fn(Option<u64>, Option<u32>) -> Option<String>;

/// The `cgroup` label of an owner: its cgroup path ([`crate::host::cgroup::owner_cgroup`]); the
/// cgroup id as a number when no path is known (the cgroup is gone, or not in a hierarchy
/// mounted here), so that owners in different cgroups still count apart; `-` when not even
/// the id is known.
fn cgroup_label(lookup: CgroupLookup, cgroup_id: Option<u64>, pid: Option<u32>) -> String {
    lookup(cgroup_id, pid)
        .or_else(|| cgroup_id.map(|c| c.to_string()))
        .unwrap_or_else(|| "-".to_string())
}

/// What an owner's series are labelled by: `comm`, `cgroup`, and the container's names (as
/// known when the series was made: a container named later gets new series, and its unnamed
/// ones expire with the label lifetime).
type ProcessKey = (String, String, Option<Arc<Container>>);

/// Interned (comm, cgroup) label pairs, at most `cap` live ones plus [`OTHER`]. A pair is
/// live while it is seen: an event of its process concluded, or a socket of it counted in a
/// gauge. A pair unseen for the label lifetime is expired: its series are removed and its
/// place under the cap is free again, so the cap counts what is alive, not what ever was.
struct Processes {
    ids: HashMap<ProcessKey, u32>,
    names: HashMap<u32, ProcessKey>,
    /// When each id was last seen (monotonic ns).
    last_seen: HashMap<u32, u64>,
    next: u32,
    cap: usize,
    other: Option<u32>,
    /// The clock the ids are seen by: the latest event's or refresh's time.
    now_ns: u64,
    /// [`crate::host::cgroup::owner_cgroup`]; tests put a fake host here.
    lookup: CgroupLookup,
}

impl Processes {
    fn new(cap: usize) -> Self {
        Self {
            ids: HashMap::new(),
            names: HashMap::new(),
            last_seen: HashMap::new(),
            next: 0,
            cap,
            other: None,
            now_ns: 0,
            lookup: crate::host::cgroup::owner_cgroup,
        }
    }

    fn fresh(&mut self, key: ProcessKey) -> u32 {
        let id = self.next;
        self.next = self.next.wrapping_add(1);
        self.names.insert(id, key);
        id
    }

    /// The label pair of the owner `pid` (named `comm`, in cgroup `cgroup`), seen now.
    fn id(&mut self, comm: Option<&str>, pid: Option<u32>, cgroup: Option<u64>) -> u32 {
        let cgroup = cgroup_label(self.lookup, cgroup, pid);
        let container = crate::host::containers::container_of_path(&cgroup);
        let key = (comm.unwrap_or("-").to_string(), cgroup, container);
        let id = match self.ids.get(&key) {
            Some(&id) => id,
            None if self.ids.len() >= self.cap => match self.other {
                Some(id) => id,
                None => {
                    let id = self.fresh((OTHER.to_string(), OTHER.to_string(), None));
                    self.other = Some(id);
                    id
                }
            },
            None => {
                let id = self.fresh(key.clone());
                self.ids.insert(key, id);
                id
            }
        };
        self.touch(id);
        id
    }

    fn touch(&mut self, id: u32) {
        self.last_seen.insert(id, self.now_ns);
    }

    /// Forgets the ids not seen since `before_ns` and returns them with their labels.
    fn expire(&mut self, before_ns: u64) -> Vec<(u32, Labels)> {
        let gone: Vec<u32> = self
            .last_seen
            .iter()
            .filter(|&(_, &seen)| seen < before_ns)
            .map(|(&id, _)| id)
            .collect();
        let mut out = Vec::with_capacity(gone.len());
        for id in gone {
            let labels = self.labels(id);
            self.last_seen.remove(&id);
            if let Some(key) = self.names.remove(&id) {
                self.ids.remove(&key);
            }
            if self.other == Some(id) {
                self.other = None;
            }
            out.push((id, labels));
        }
        out
    }

    /// Label pairs live now (the [`OTHER`] pair not counted).
    fn live(&self) -> usize {
        self.ids.len()
    }

    fn labels(&self, id: u32) -> Labels {
        let Some((comm, cgroup, container)) = self.names.get(&id) else {
            return vec![("comm", "-".to_string()), ("cgroup", "-".to_string())];
        };
        let mut labels = vec![("comm", comm.clone()), ("cgroup", cgroup.clone())];
        if let Some(c) = container {
            let names = [
                ("namespace", &c.namespace),
                ("pod", &c.pod),
                ("container", &c.name),
            ];
            labels.extend(names.into_iter().filter_map(|(k, v)| Some((k, v.clone()?))));
        }
        labels
    }
}

/// Remote addresses labelled so far, at most `cap`.
struct Peers {
    seen: HashSet<IpAddr>,
    cap: usize,
}

impl Peers {
    fn label(&mut self, ip: IpAddr) -> String {
        if self.seen.contains(&ip) || self.seen.len() < self.cap && self.seen.insert(ip) {
            ip.to_string()
        } else {
            OTHER.to_string()
        }
    }
}

fn state_label(s: Option<TcpState>) -> &'static str {
    s.map_or("-", TcpState::name)
}

/// Index of a state in the transition cache: its kernel number, 0 when unknown.
fn state_index(s: Option<TcpState>) -> usize {
    s.map_or(0, |s| usize::from(s.kernel_number()))
}

const STATES: usize = 16;

/// Feeds the metrics from the event stream.
pub struct MetricsSink {
    exporter: Arc<Exporter>,
    m: Metrics,
    tracker: Tracker,
    selection: Selection,
    caps: LabelCaps,
    processes: Processes,
    peers: Peers,
    /// Transition counters by (old, new) kernel state number: no lookup per event.
    transitions: Vec<Option<Counter>>,
    /// Every timewait socket alive, by the process id that closed first (`None`: taken over
    /// from the kernel's list, closer unknown).
    time_waits: TimeWaits<Option<u32>>,
    /// The destinations with a gauge now (removed when they leave the top).
    tw_destinations: HashSet<String>,
    /// Process ids that have a CLOSE_WAIT / TIME_WAIT gauge (kept, at 0, once seen).
    cw_ids: HashSet<u32>,
    tw_ids: HashSet<u32>,
    /// The `connects` label sets of each process id (removed with it when it expires).
    connect_series: HashMap<u32, HashSet<Labels>>,
    ended: Vec<Connection>,
    kernel: Option<StatsReader>,
    lost_seen: u64,
    missed_seen: u64,
    evicted_seen: u64,
    next_refresh_ns: u64,
    /// Replaying a recording: refreshed and printed once, at its end.
    replaying: bool,
}

impl MetricsSink {
    /// Registers the metrics in `exporter` and marks it tracing (the probe is attached).
    pub fn new(
        exporter: Arc<Exporter>,
        caps: LabelCaps,
        max_sockets: usize,
        selection: Selection,
    ) -> Self {
        let m = Metrics::register(&mut exporter.lock(), &caps);
        exporter.tracing.store(true, Ordering::Release);
        Self {
            exporter,
            m,
            tracker: Tracker::new(max_sockets),
            selection,
            caps,
            processes: Processes::new(caps.max_processes),
            peers: Peers {
                seen: HashSet::new(),
                cap: caps.max_peers,
            },
            transitions: vec![None; STATES * STATES],
            time_waits: TimeWaits::new(HostSettings::default()),
            tw_destinations: HashSet::new(),
            cw_ids: HashSet::new(),
            tw_ids: HashSet::new(),
            connect_series: HashMap::new(),
            ended: Vec::new(),
            kernel: None,
            lost_seen: 0,
            missed_seen: 0,
            evicted_seen: 0,
            next_refresh_ns: 0,
            replaying: false,
        }
    }

    /// `analyze --metrics`: what `/metrics` would have answered at the recording's end, printed
    /// at its end (see [`MetricsSink::print_at_end`]).
    pub fn replay(caps: LabelCaps, max_sockets: usize, selection: Selection) -> Self {
        let mut sink = Self::new(Exporter::new(), caps, max_sockets, selection);
        sink.replaying = true;
        sink
    }

    /// The exposition as of the recording's stop: the gauges recomputed then, the kernel's
    /// lost and missed counts from its summary (the live run read them from the kernel).
    fn print_at_end(&mut self, summary: &Summary) -> io::Result<()> {
        self.refresh(summary.stopped_ns);
        self.m.events_lost.inc_by(summary.lost);
        self.m.events_missed.inc_by(summary.missed);
        let text = self.exporter.encode().map_err(io::Error::other)?;
        let mut out = io::stdout().lock();
        out.write_all(text.as_bytes())?;
        out.flush()
    }

    /// The run's settings and start, for the TIME_WAIT table.
    pub fn for_run(mut self, settings: HostSettings, started_ns: u64) -> Self {
        self.time_waits = TimeWaits::new(settings);
        self.time_waits.set_start(started_ns);
        self
    }

    /// Where the kernel's lost-event counter is read from, once a second.
    fn peer_labels(&mut self, mut labels: Labels, ip: IpAddr) -> Labels {
        if self.caps.peer_labels {
            labels.push(("peer", self.peers.label(ip)));
        }
        labels
    }

    fn on_event(&mut self, ev: &Event) {
        match &ev.kind {
            EventKind::State {
                old_state,
                new_state,
                ..
            } => {
                let i = state_index(*old_state) * STATES + state_index(*new_state);
                let (old, new) = (state_label(*old_state), state_label(*new_state));
                let family = &self.m.transitions;
                self.transitions[i]
                    .get_or_insert_with(|| {
                        family.get_or_create_owned(&[("from", old), ("to", new)])
                    })
                    .inc();
            }
            EventKind::Retransmit { .. } if ev.kind.is_retransmission() => {
                match &self.m.retransmits {
                    PeerCounter::Plain(c) => {
                        c.inc();
                    }
                    PeerCounter::ByPeer(f) => {
                        let f = f.clone();
                        let labels = self.peer_labels(Vec::new(), ev.daddr);
                        f.get_or_create(&labels).inc();
                    }
                }
            }
            EventKind::SynackRetransmit { .. } => {
                self.m.synack_retransmits.inc();
            }
            EventKind::ResetSent { state, reason } => {
                let reason = reason.clone().unwrap_or_else(|| "-".to_string());
                self.m
                    .resets
                    .get_or_create(&[
                        ("direction", "sent".to_string()),
                        ("reason", reason),
                        ("state", state_label(*state).to_string()),
                    ])
                    .inc();
            }
            EventKind::ResetReceived { state } => {
                self.m
                    .resets
                    .get_or_create(&[
                        ("direction", "received".to_string()),
                        ("reason", "-".to_string()),
                        ("state", state_label(*state).to_string()),
                    ])
                    .inc();
            }
            // An attempt the kernel gave up before counting it sent nothing.
            EventKind::Retransmit { .. }
            | EventKind::Destroy { .. }
            | EventKind::Accept { .. }
            | EventKind::FirstUse { .. } => {}
        }
    }

    fn on_connection(&mut self, c: &Connection) {
        if c.role == Role::Active {
            // As the report counts SYN_SENT outcomes.
            let outcome = match c.end {
                End::Refused => "refused",
                End::Timeout if c.connect_ms.is_none() => "timeout",
                End::Aborted if c.connect_ms.is_none() => "aborted",
                _ => {
                    if let Some(ms) = c.connect_ms {
                        self.m.connect_latency.observe(ms / 1000.0);
                    }
                    "established"
                }
            };
            let id = self.processes.id(c.comm.as_deref(), c.pid, c.cgroup_id);
            let mut labels = vec![("outcome", outcome.to_string())];
            labels.extend(self.processes.labels(id));
            let labels = self.peer_labels(labels, c.daddr);
            self.m.connects.get_or_create(&labels).inc();
            self.connect_series.entry(id).or_default().insert(labels);
        }
        if c.end == End::TimeWait {
            let comm = c.closer_comm.as_deref().or(c.comm.as_deref());
            let pid = c.closer_pid.or(c.pid);
            // The cgroup id is the owner's: only the owner's when it closed.
            let cgroup_id = c.cgroup_id.filter(|_| pid == c.pid);
            let id = self.processes.id(comm, pid, cgroup_id);
            self.m
                .time_wait_births
                .get_or_create(&self.processes.labels(id))
                .inc();
            self.time_waits.born(c, Some(id));
        }
        if let Some(ms) = c.ms {
            self.m.lifetime.observe(ms / 1000.0);
        }
        if let Some(ms) = c.dwell_ms.close_wait {
            self.m.close_wait_dwell.observe(ms / 1000.0);
        }
    }

    /// Counts the connections the tracker finished (those the selection keeps).
    fn conclude(&mut self, ended: &mut Vec<Connection>) {
        for c in ended.drain(..) {
            if self.selection.connection(&c) {
                self.on_connection(&c);
            }
        }
    }

    /// Recomputes the gauges and reads the kernel's counters, as of `now_ns` (monotonic).
    fn refresh(&mut self, now_ns: u64) {
        // A quiet stream still ends its last closed connections (on the clock the kernel
        // stamps events with; every event older than a drain interval has been read).
        let mut ended = std::mem::take(&mut self.ended);
        self.tracker
            .finish_until(now_ns, &mut |Fact::Ended(c)| ended.push(*c));
        self.conclude(&mut ended);
        self.ended = ended;

        let exporter = Arc::clone(&self.exporter);
        let _registry = exporter.lock();
        self.processes.now_ns = self.processes.now_ns.max(now_ns);
        if let Some(kernel) = &self.kernel {
            match kernel.read() {
                Ok(k) => {
                    self.m
                        .events_lost
                        .inc_by(k.lost.saturating_sub(self.lost_seen));
                    self.lost_seen = self.lost_seen.max(k.lost);
                    self.m
                        .events_missed
                        .inc_by(k.missed.saturating_sub(self.missed_seen));
                    self.missed_seen = self.missed_seen.max(k.missed);
                }
                Err(e) => log::debug!("reading the kernel counters: {e:#}"),
            }
        }
        let stats = self.tracker.stats();
        self.m
            .evictions
            .inc_by(stats.evicted.saturating_sub(self.evicted_seen));
        self.evicted_seen = self.evicted_seen.max(stats.evicted);
        self.m
            .tracked_sockets
            .set(i64::try_from(stats.sockets).unwrap_or(i64::MAX));

        let mut close_wait: HashMap<u32, i64> = HashMap::new();
        for cw in self.tracker.close_waits(now_ns) {
            if self.selection.close_wait(&cw) {
                *close_wait
                    .entry(self.processes.id(cw.comm.as_deref(), cw.pid, cw.cgroup_id))
                    .or_default() += 1;
            }
        }
        self.time_waits.advance(now_ns);
        let mut time_wait: HashMap<u32, i64> = HashMap::new();
        let alive: Vec<(Option<u32>, u64)> = self
            .time_waits
            .alive_by_tag()
            .map(|(_, id, n)| (*id, n))
            .collect();
        for (id, n) in alive {
            let id = match id {
                Some(id) => {
                    self.processes.touch(id);
                    id
                }
                None => self.processes.id(None, None, None),
            };
            *time_wait.entry(id).or_default() += i64::try_from(n).unwrap_or(i64::MAX);
        }
        self.expire_processes(now_ns);
        self.refresh_destinations();
        for (counts, ids, family) in [
            (close_wait, &mut self.cw_ids, &self.m.close_wait_sockets),
            (time_wait, &mut self.tw_ids, &self.m.time_wait_sockets),
        ] {
            ids.extend(counts.keys().copied());
            for &id in ids.iter() {
                family
                    .get_or_create(&self.processes.labels(id))
                    .set(counts.get(&id).copied().unwrap_or(0));
            }
        }
    }
}

impl MetricsSink {
    /// Removes the series of the (comm, cgroup) pairs unseen for the label lifetime: no
    /// connection of theirs ended, no socket of theirs is in CLOSE_WAIT or TIME_WAIT.
    fn expire_processes(&mut self, now_ns: u64) {
        let ttl = u64::try_from(self.caps.label_ttl.as_nanos()).unwrap_or(u64::MAX);
        let before = now_ns.saturating_sub(ttl);
        for (id, labels) in self.processes.expire(before) {
            self.m.time_wait_births.remove(&labels);
            self.m.close_wait_sockets.remove(&labels);
            self.m.time_wait_sockets.remove(&labels);
            for series in self.connect_series.remove(&id).unwrap_or_default() {
                self.m.connects.remove(&series);
            }
            self.cw_ids.remove(&id);
            self.tw_ids.remove(&id);
        }
        self.m
            .label_sets
            .set(i64::try_from(self.processes.live()).unwrap_or(i64::MAX));
    }

    /// The per-destination gauges: the busiest [`MAX_TW_DESTINATIONS`] destinations by
    /// population; a destination that leaves them loses its series.
    fn refresh_destinations(&mut self) {
        let c = &self.time_waits.counts;
        for (kind, n) in [
            ("born", c.births),
            ("reused", c.reused),
            ("overflowed", c.overflowed),
            ("expired", c.expired),
            ("drift_gone", c.drift_gone),
            ("drift_unseen", c.drift_unseen),
        ] {
            self.m
                .time_wait_ends
                .get_or_create(&[("kind", kind)])
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        let mut shown = HashSet::new();
        for d in self
            .time_waits
            .destinations()
            .into_iter()
            .filter(|d| d.population > 0 || d.per_second > 0.0)
            .take(MAX_TW_DESTINATIONS)
        {
            let label = [("destination", d.destination.clone())];
            self.m
                .time_wait_destination
                .get_or_create(&label)
                .set(i64::try_from(d.population).unwrap_or(i64::MAX));
            match d.forecast.port_limit {
                Some(l) => {
                    self.m
                        .time_wait_port_limit
                        .get_or_create(&label)
                        .set(i64::try_from(l).unwrap_or(i64::MAX));
                }
                None => {
                    self.m.time_wait_port_limit.remove(&label);
                }
            }
            match d.exhaustion_in_s {
                Some(s) => {
                    self.m.time_wait_exhaustion.get_or_create(&label).set(s);
                }
                None => {
                    self.m.time_wait_exhaustion.remove(&label);
                }
            }
            shown.insert(d.destination);
        }
        for gone in self.tw_destinations.difference(&shown) {
            let label = [("destination", gone.clone())];
            self.m.time_wait_destination.remove(&label);
            self.m.time_wait_port_limit.remove(&label);
            self.m.time_wait_exhaustion.remove(&label);
        }
        self.tw_destinations = shown;
    }
}

/// Destinations exported one by one (a label each).
const MAX_TW_DESTINATIONS: usize = 50;

impl Drop for MetricsSink {
    fn drop(&mut self) {
        self.exporter.tracing.store(false, Ordering::Release);
    }
}

impl Sink for MetricsSink {
    fn attach(&mut self, probe: &crate::kernel::probe::Probe) -> anyhow::Result<()> {
        self.kernel = Some(probe.stats_reader()?);
        Ok(())
    }

    fn wants_time_waits(&self) -> bool {
        true
    }

    fn time_waits(&mut self, obs: &Observed) -> io::Result<()> {
        self.time_waits.reconcile(obs, self.selection.is_empty());
        Ok(())
    }

    fn event(&mut self, ev: &Event) -> io::Result<()> {
        self.m.events.inc();
        self.processes.now_ns = self.processes.now_ns.max(ev.ts_ns);
        self.time_waits.on_event(ev);
        if ev.owner_seen_here {
            // Names the owner's cgroup while it is alive (kept in the owner cache), for the
            // labels of its connections when they end.
            let _ = (self.processes.lookup)(ev.cgroup_id, ev.pid);
        }
        if self.selection.event(ev) {
            self.on_event(ev);
        }
        // The tracker sees every event, so each socket's life is whole; what it concludes is
        // filtered.
        let mut ended = std::mem::take(&mut self.ended);
        self.tracker
            .on_event(ev, &mut |Fact::Ended(c)| ended.push(*c));
        self.conclude(&mut ended);
        self.ended = ended;
        Ok(())
    }

    fn finish(mut self: Box<Self>, _header: &Header, summary: &Summary) -> io::Result<()> {
        if self.replaying {
            self.print_at_end(summary)
        } else {
            self.flush()
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.replaying {
            return Ok(());
        }
        let now = monotonic_ns();
        if now >= self.next_refresh_ns {
            self.refresh(now);
            self.next_refresh_ns = now + REFRESH_NS;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLIENT: &str = "10.0.0.1";
    const SERVER: &str = "10.0.0.2";

    /// A synthetic stream, one event a millisecond after the previous one.
    struct Stream {
        ts: u64,
        sink: MetricsSink,
    }

    impl Stream {
        /// A stream on a fake host where cgroup 4242 is `/system.slice/leaky.service` and
        /// no other cgroup id or pid resolves.
        fn new(caps: LabelCaps) -> Self {
            let mut sink = MetricsSink::new(Exporter::new(), caps, 1000, Selection::default());
            sink.processes.lookup =
                |id, _pid| (id == Some(4242)).then(|| "/system.slice/leaky.service".to_string());
            Self {
                ts: 1_000_000_000,
                sink,
            }
        }

        #[expect(
            clippy::too_many_arguments,
            reason = "a test helper whose call reads like the event it builds"
        )]
        fn push(
            &mut self,
            sock: u64,
            pid: Option<u32>,
            comm: &str,
            local: (&str, u16),
            remote: (&str, u16),
            cgroup: Option<u64>,
            kind: EventKind,
        ) {
            self.ts += 1_000_000;
            let mut ev = Event::test_state(self.ts);
            (ev.sock, ev.pid, ev.tid) = (sock, pid, pid);
            (ev.comm, ev.cgroup_id) = (pid.map(|_| comm.into()), cgroup);
            (ev.saddr, ev.sport) = (local.0.parse().unwrap(), local.1);
            (ev.daddr, ev.dport) = (remote.0.parse().unwrap(), remote.1);
            ev.kind = kind;
            self.sink.event(&ev).unwrap();
        }

        /// One connection from `comm` to `dst`, closed first by the client: a TIME_WAIT.
        fn client_closes(&mut self, sock: u64, comm: &str, cgroup: Option<u64>, dst: &str) {
            use TcpState::*;
            // A port per socket: a 4-tuple holds one timewait socket at a time.
            let (l, r) = ((CLIENT, 40000 + (sock % 10_000) as u16), (dst, 80));
            for (old, new) in [
                (Close, SynSent),
                (SynSent, Established),
                (Established, FinWait1),
                (FinWait1, FinWait2),
                (FinWait2, Close),
            ] {
                self.push(
                    sock,
                    Some(7),
                    comm,
                    l,
                    r,
                    cgroup,
                    EventKind::state(old, new),
                );
            }
            self.push(
                sock,
                Some(7),
                comm,
                l,
                r,
                cgroup,
                EventKind::Destroy { state: Some(Close) },
            );
        }

        fn refused(&mut self, sock: u64, comm: &str) {
            use TcpState::*;
            let (l, r) = ((CLIENT, 40001), (SERVER, 81));
            self.push(
                sock,
                Some(8),
                comm,
                l,
                r,
                None,
                EventKind::state(Close, SynSent),
            );
            self.push(
                sock,
                Some(8),
                comm,
                l,
                r,
                None,
                EventKind::ResetReceived {
                    state: Some(SynSent),
                },
            );
            self.push(
                sock,
                Some(8),
                comm,
                l,
                r,
                None,
                EventKind::state(SynSent, Close),
            );
            self.push(
                sock,
                Some(8),
                comm,
                l,
                r,
                None,
                EventKind::Destroy { state: Some(Close) },
            );
        }

        /// An accepted socket the peer closed and `comm` never does.
        fn leak(&mut self, sock: u64, comm: &str) {
            use TcpState::*;
            let (l, r) = ((SERVER, 80), (CLIENT, 40002));
            self.push(
                sock,
                None,
                "",
                l,
                r,
                None,
                EventKind::state(Listen, SynRecv),
            );
            self.push(
                sock,
                None,
                "",
                l,
                r,
                None,
                EventKind::state(SynRecv, Established),
            );
            self.push(
                sock,
                Some(9),
                comm,
                l,
                r,
                Some(4242),
                EventKind::Accept {
                    state: Some(Established),
                },
            );
            self.push(
                sock,
                Some(9),
                comm,
                l,
                r,
                Some(4242),
                EventKind::state(Established, CloseWait),
            );
        }

        fn text(&mut self, now_ns: u64) -> String {
            self.sink.refresh(now_ns);
            self.sink.exporter.encode().unwrap()
        }
    }

    /// The value of the sample `series` (name and labels exactly as encoded).
    fn value(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .map(|v| v.parse().unwrap())
    }

    #[test]
    fn a_known_stream_gives_known_metrics() {
        let mut s = Stream::new(LabelCaps::default());
        for i in 0..3 {
            s.client_closes(100 + i, "curl", Some(77), SERVER);
        }
        s.refused(200, "curl");
        s.leak(300, "leaky");
        s.leak(301, "leaky");
        s.push(
            400,
            None,
            "",
            (SERVER, 80),
            (CLIENT, 1),
            None,
            EventKind::ResetSent {
                state: None,
                reason: Some("NO_SOCKET".into()),
            },
        );
        s.push(
            100,
            None,
            "",
            (CLIENT, 40000),
            (SERVER, 80),
            None,
            EventKind::Retransmit {
                state: Some(TcpState::Established),
                err: Some(0),
            },
        );
        let now = s.ts + 1_000_000;
        let t = s.text(now);
        let v = |series: &str| value(&t, series).unwrap_or_else(|| panic!("{series}:\n{t}"));
        assert_eq!(
            v(r#"netwatch_connects_total{outcome="established",comm="curl",cgroup="77"}"#),
            3.0
        );
        assert_eq!(
            v(r#"netwatch_connects_total{outcome="refused",comm="curl",cgroup="-"}"#),
            1.0
        );
        assert_eq!(
            v(r#"netwatch_transitions_total{from="CLOSE",to="SYN_SENT"}"#),
            4.0
        );
        assert_eq!(
            v(r#"netwatch_transitions_total{from="ESTABLISHED",to="CLOSE_WAIT"}"#),
            2.0
        );
        assert_eq!(
            v(r#"netwatch_time_wait_births_total{comm="curl",cgroup="77"}"#),
            3.0
        );
        assert_eq!(
            v(r#"netwatch_time_wait_sockets{comm="curl",cgroup="77"}"#),
            3.0
        );
        assert_eq!(
            v(r#"netwatch_close_wait_sockets{comm="leaky",cgroup="/system.slice/leaky.service"}"#),
            2.0
        );
        assert_eq!(
            v(r#"netwatch_resets_total{direction="received",reason="-",state="SYN_SENT"}"#),
            1.0
        );
        assert_eq!(
            v(r#"netwatch_resets_total{direction="sent",reason="NO_SOCKET",state="-"}"#),
            1.0
        );
        assert_eq!(v("netwatch_retransmits_total"), 1.0);
        assert_eq!(v("netwatch_connect_latency_seconds_count"), 3.0);
        assert_eq!(v("netwatch_connection_lifetime_seconds_count"), 4.0);
        assert_eq!(v("netwatch_events_total"), 32.0);
        assert_eq!(v("netwatch_events_lost_total"), 0.0);
        assert_eq!(v("netwatch_tracker_evictions_total"), 0.0);
        assert!(t.contains("# TYPE netwatch_connect_latency_seconds histogram\n"));
        assert!(t.contains("# UNIT netwatch_connect_latency_seconds seconds\n"));
        assert!(t.ends_with("# EOF\n"), "{t}");
        // No pid label anywhere.
        assert!(!t.contains("pid="), "{t}");

        // 60 s after their births the TIME_WAITs are gone; the gauge stays, at 0.
        let t = s.text(now + crate::model::timewait::TIME_WAIT_NS);
        assert_eq!(
            value(&t, r#"netwatch_time_wait_sockets{comm="curl",cgroup="77"}"#),
            Some(0.0)
        );
        assert_eq!(
            value(
                &t,
                r#"netwatch_time_wait_births_total{comm="curl",cgroup="77"}"#
            ),
            Some(3.0)
        );
    }

    #[test]
    fn the_cgroup_label_is_the_path_else_the_id() {
        use std::os::unix::fs::MetadataExt as _;
        let real = crate::host::cgroup::owner_cgroup;
        assert_eq!(
            cgroup_label(real, Some(u64::MAX - 1), None),
            "18446744073709551614"
        );
        assert_eq!(cgroup_label(real, None, None), "-");
        let fake: CgroupLookup = |_, pid| pid.map(|p| format!("memory:/box/{p}"));
        assert_eq!(cgroup_label(fake, Some(77), Some(5)), "memory:/box/5");
        let Some(mount) = crate::host::cgroup::cgroup2_mount() else {
            crate::host::skip::skip("no cgroup v2 hierarchy mounted");
            return;
        };
        let root = std::fs::metadata(mount).unwrap().ino();
        assert_eq!(cgroup_label(real, Some(root), None), "/");
    }

    #[test]
    fn peers_are_opt_in_and_capped() {
        let mut s = Stream::new(LabelCaps::default());
        s.client_closes(1, "curl", None, "10.9.0.1");
        let t = s.text(s.ts);
        assert!(!t.contains("peer="), "{t}");

        let mut s = Stream::new(LabelCaps {
            peer_labels: true,
            max_peers: 2,
            ..LabelCaps::default()
        });
        for (i, dst) in ["10.9.0.1", "10.9.0.2", "10.9.0.3", "10.9.0.4", "10.9.0.1"]
            .iter()
            .enumerate()
        {
            s.client_closes(i as u64 + 1, "curl", None, dst);
        }
        let t = s.text(s.ts);
        let series = |peer: &str| {
            format!(
                r#"netwatch_connects_total{{outcome="established",comm="curl",cgroup="-",peer="{peer}"}}"#
            )
        };
        assert_eq!(value(&t, &series("10.9.0.1")), Some(2.0), "{t}");
        assert_eq!(value(&t, &series("10.9.0.2")), Some(1.0), "{t}");
        assert_eq!(value(&t, &series("other")), Some(2.0), "{t}");
        assert_eq!(value(&t, &series("10.9.0.3")), None, "{t}");
    }

    #[test]
    fn processes_are_capped() {
        let mut s = Stream::new(LabelCaps {
            max_processes: 2,
            ..LabelCaps::default()
        });
        for (i, comm) in ["a", "b", "c", "d", "a"].iter().enumerate() {
            s.client_closes(i as u64 + 1, comm, None, SERVER);
        }
        let t = s.text(s.ts);
        let births = |comm: &str, cgroup: &str| {
            value(
                &t,
                &format!(r#"netwatch_time_wait_births_total{{comm="{comm}",cgroup="{cgroup}"}}"#),
            )
        };
        assert_eq!(births("a", "-"), Some(2.0), "{t}");
        assert_eq!(births("b", "-"), Some(1.0), "{t}");
        assert_eq!(births("other", "other"), Some(2.0), "{t}");
        assert_eq!(births("c", "-"), None, "{t}");
    }

    #[test]
    fn a_containers_series_carry_its_names_and_expire_with_it() {
        let ttl = Duration::from_secs(600);
        let mut s = Stream::new(LabelCaps {
            label_ttl: ttl,
            ..LabelCaps::default()
        });
        // cgroup 4343 is a pod's container, 4444 a plain one: their paths name their ids, and
        // the runtime (here a recording's answer) their names.
        let (pod_id, plain_id) = ("ab".repeat(32), "cd".repeat(32));
        s.sink.processes.lookup = |id, _pid| match id {
            Some(4343) => Some(format!("/libpod_parent/libpod-{}", "ab".repeat(32))),
            Some(4444) => Some(format!("/system.slice/docker-{}.scope", "cd".repeat(32))),
            _ => None,
        };
        crate::host::containers::learn(Some(Container {
            name: Some("web".into()),
            pod: Some("shop-7f".into()),
            namespace: Some("prod".into()),
            ..Container::unnamed(&pod_id)
        }));
        crate::host::containers::learn(Some(Container {
            name: Some("redis".into()),
            ..Container::unnamed(&plain_id)
        }));
        s.client_closes(1, "web", Some(4343), SERVER);
        s.client_closes(2, "redis", Some(4444), SERVER);
        let t = s.text(s.ts);
        let pod = format!(
            r#"netwatch_time_wait_births_total{{comm="web",cgroup="/libpod_parent/libpod-{pod_id}",namespace="prod",pod="shop-7f",container="web"}}"#
        );
        let plain = format!(
            r#"netwatch_time_wait_births_total{{comm="redis",cgroup="/system.slice/docker-{plain_id}.scope",container="redis"}}"#
        );
        assert_eq!(value(&t, &pod), Some(1.0), "{t}");
        assert_eq!(value(&t, &plain), Some(1.0), "{t}");
        // Unseen for the label lifetime: gone, names and all.
        let ttl_ns = u64::try_from(ttl.as_nanos()).unwrap();
        let t = s.text(s.ts + ttl_ns + 1_000_000_000);
        assert!(!t.contains("shop-7f") && !t.contains("redis"), "{t}");
    }

    #[test]
    fn unseen_processes_expire_and_free_their_place() {
        let ttl = Duration::from_secs(600);
        let mut s = Stream::new(LabelCaps {
            max_processes: 2,
            label_ttl: ttl,
            ..LabelCaps::default()
        });
        let ttl_ns = u64::try_from(ttl.as_nanos()).unwrap();
        s.client_closes(1, "a", None, SERVER);
        s.client_closes(2, "b", None, SERVER);
        s.leak(3, "leaky"); // past the cap: other
        let start = s.ts;
        let t = s.text(start);
        let births = |t: &str, comm: &str| {
            value(
                t,
                &format!(r#"netwatch_time_wait_births_total{{comm="{comm}",cgroup="-"}}"#),
            )
        };
        assert_eq!(births(&t, "a"), Some(1.0), "{t}");
        assert_eq!(
            value(
                &t,
                r#"netwatch_close_wait_sockets{comm="other",cgroup="other"}"#
            ),
            Some(1.0),
            "{t}"
        );
        assert_eq!(value(&t, "netwatch_process_label_sets"), Some(2.0), "{t}");

        // Their TIME_WAIT sockets keep a and b seen while they live (a refresh a second).
        let seen = start + crate::model::timewait::TIME_WAIT_NS - 1_000_000_000;
        s.text(seen);
        // Just under the lifetime after the last sighting: still there.
        let t = s.text(seen + ttl_ns - 1_000_000_000);
        assert_eq!(births(&t, "a"), Some(1.0), "{t}");
        // Past it: every series of a and b is gone, connects included, and the count of live
        // pairs is 0. The CLOSE_WAIT sockets of "other" are alive: it stays.
        let late = seen + ttl_ns + 1_000_000_000;
        let t = s.text(late);
        assert_eq!(births(&t, "a"), None, "{t}");
        assert_eq!(births(&t, "b"), None, "{t}");
        assert!(!t.contains(r#"comm="a""#), "{t}");
        assert!(!t.contains(r#"comm="b""#), "{t}");
        assert_eq!(
            value(
                &t,
                r#"netwatch_close_wait_sockets{comm="other",cgroup="other"}"#
            ),
            Some(1.0),
            "{t}"
        );
        assert_eq!(value(&t, "netwatch_process_label_sets"), Some(0.0), "{t}");

        // The freed places go to new processes, under their own names.
        s.ts = late;
        s.client_closes(4, "c", None, SERVER);
        s.client_closes(5, "d", None, SERVER);
        s.client_closes(6, "e", None, SERVER);
        let t = s.text(s.ts);
        assert_eq!(births(&t, "c"), Some(1.0), "{t}");
        assert_eq!(births(&t, "d"), Some(1.0), "{t}");
        assert_eq!(births(&t, "e"), None, "{t}");
        assert_eq!(
            value(
                &t,
                r#"netwatch_time_wait_births_total{comm="other",cgroup="other"}"#
            ),
            Some(1.0),
            "{t}"
        );
    }

    #[test]
    fn build_info_names_version_and_kernel() {
        let mut s = Stream::new(LabelCaps::default());
        let t = s.text(s.ts);
        let kernel = crate::kernel::release::running().unwrap();
        let series = format!(
            r#"netwatch_build_info{{version="{}",kernel="{kernel}"}}"#,
            env!("CARGO_PKG_VERSION")
        );
        assert_eq!(value(&t, &series), Some(1.0), "{t}");
    }

    #[test]
    fn bucket_bounds_read_well() {
        let b: Vec<f64> = buckets(0.0001, 3.0, 5).collect();
        assert_eq!(b, [0.0001, 0.0003, 0.0009, 0.0027, 0.0081]);
        let b: Vec<f64> = buckets(0.00001, 2.0, 22).collect();
        assert_eq!((b[4], b[21]), (0.00016, 21.0));
    }

    #[test]
    fn healthz_follows_the_sink() {
        let exporter = Exporter::new();
        let routes = exporter.routes();
        assert_eq!(routes("/healthz").unwrap().status, 503);
        let sink = MetricsSink::new(
            Arc::clone(&exporter),
            LabelCaps::default(),
            10,
            Selection::default(),
        );
        let ok = routes("/healthz").unwrap();
        assert_eq!((ok.status, ok.body.as_slice()), (200, &b"ok\n"[..]));
        let metrics = routes("/metrics").unwrap();
        assert_eq!(metrics.content_type, CONTENT_TYPE);
        assert!(
            String::from_utf8(metrics.body)
                .unwrap()
                .contains("netwatch_events_total 0\n")
        );
        assert!(routes("/other").is_none());
        drop(sink);
        assert_eq!(routes("/healthz").unwrap().status, 503);
    }
}
