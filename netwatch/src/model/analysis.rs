//! From events and finished connections to the diagnosis: rates, per-process and per-peer
//! tables, histograms, the TIME_WAIT population and port-exhaustion forecast, and verdicts in
//! plain sentences with their evidence. Pure Rust over the tracker's output: the live run and a
//! replay of its recording produce the same [`Report`].
//!
//! Per-process rows carry the owner's `cgroup` path, resolved when the report is built through
//! the [`OwnerNames`] the caller passes in (the host's, which a replay fills with the paths its
//! recording holds; a fake in tests).
use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    net::IpAddr,
};

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::{
    model::comm::Comm,
    model::event::{Endpoint, Event, EventKind, TcpState, state_label},
    model::names::{Container, OwnerNames},
    model::timewait::{Binding, Counts, DestinationView, KernelOverflow, Pattern, TimeWaits},
    model::tracker::{CloseWaitSocket, Connection, End, Role, Tracker, TrackerStats},
};

pub use crate::model::timewait::HostSettings;

/// Events the kernel could not give us: every count is then a lower bound.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Losses {
    /// The ring buffer was full.
    pub lost: u64,
    /// A tracepoint fired while a netwatch program was already running on that CPU, and the
    /// kernel skipped the program (its `recursion_misses`).
    pub missed: u64,
}

/// Verdict thresholds (the field notes' rules of thumb), settable from the command line.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Thresholds {
    /// A socket in CLOSE_WAIT longer than this is stuck.
    pub close_wait_age_ms: f64,
    /// This many stuck CLOSE_WAIT sockets in one process is an alarm.
    pub close_wait_alarm: usize,
    /// This many TIME_WAIT sockets (estimated) is an alarm.
    pub time_wait_alarm: u64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            close_wait_age_ms: 5_000.0,
            close_wait_alarm: 50,
            time_wait_alarm: 10_000,
        }
    }
}

/// What a row of a per-process or per-peer table is keyed by, kept as the values it is made
/// of and written out ([`Key`]'s `Display`) only when the report is built: formatting a key
/// for every event and connection cost more than the rest of the replay. Two keys are equal
/// exactly when their texts are.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Key {
    /// `comm[pid]` (`?` for an unknown name).
    Process(u32, Comm),
    /// An owner netwatch does not know: `-`.
    NoProcess,
    /// A peer's address.
    Peer(IpAddr),
    /// `addr:port`, with brackets for IPv6 (see [`Endpoint`]).
    Endpoint(IpAddr, u16),
    /// [`OTHER`]: every new key once a table is full.
    Other,
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Key::Process(pid, comm) => write!(f, "{}[{pid}]", comm.as_str()),
            Key::NoProcess => f.write_str("-"),
            Key::Peer(addr) => write!(f, "{addr}"),
            Key::Endpoint(addr, port) => write!(f, "{}", Endpoint(*addr, *port)),
            Key::Other => f.write_str(OTHER),
        }
    }
}

/// A table with a seeded fast hasher (foldhash) rather than SipHash: its keys are the host's
/// own processes, peers and fixed names, and every event or connection hashes one.
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// A table keyed by [`Key`].
type KeyMap<V> = FastMap<Key, V>;

/// `comm[pid]`, or `-` when unknown: how processes are keyed in every table.
fn process(pid: Option<u32>, comm: Option<Comm>) -> Key {
    match pid {
        Some(p) => Key::Process(p, comm.unwrap_or_else(|| Comm::new("?"))),
        None => Key::NoProcess,
    }
}

/// Percentiles of a latency or lifetime distribution, in ms.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

/// Microsecond-resolution histogram up to an hour, 2 significant digits (1% error), u32
/// counts: about 14 KiB each. Three digits cost 184 KiB per histogram, and one exists per
/// process and per peer, which made a long report grow by hundreds of KiB per new process.
struct Hist(Histogram<u32>);

impl Hist {
    fn new() -> Self {
        // The bounds and precision are constants that hdrhistogram accepts.
        Self(
            Histogram::new_with_bounds(1, 3_600_000_000, 2).unwrap_or_else(|_| {
                Histogram::new(2).unwrap_or_else(|_| unreachable!("sigfig 2 is valid"))
            }),
        )
    }

    fn record_ms(&mut self, ms: f64) {
        let us = (ms * 1000.0).round().clamp(1.0, 3_600_000_000.0) as u64;
        self.0.saturating_record(us);
    }

    fn percentiles(&self) -> Percentiles {
        let q = |p: f64| self.0.value_at_quantile(p) as f64 / 1000.0;
        Percentiles {
            count: self.0.len(),
            p50: q(0.5),
            p90: q(0.9),
            p99: q(0.99),
            max: self.0.max() as f64 / 1000.0,
        }
    }
}

#[derive(Default)]
struct Outcomes {
    established: u64,
    refused: u64,
    timeout: u64,
    aborted: u64,
}

/// SYN_SENT outcomes for one destination or process.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ConnectOutcomes {
    pub key: String,
    /// The process's cgroup path (rows keyed by process, when known).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
    /// Its container (`container_id`, `container`, `pod`, `namespace`), when it runs in one.
    #[serde(flatten)]
    pub container: Option<Container>,
    pub established: u64,
    pub refused: u64,
    pub timeout: u64,
    pub aborted: u64,
    pub connect_ms: Option<Percentiles>,
}

/// connect() calls towards one destination that found no free port (EADDRNOTAVAIL): the
/// moment ports ran out.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PortsExhausted {
    pub destination: String,
    /// CLOCK_MONOTONIC ns of the first such connect().
    pub first_ns: u64,
    /// The same moment, in seconds since the run started.
    pub after_s: f64,
    pub failed_connects: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CountRow {
    pub key: String,
    pub count: u64,
    /// The process's cgroup path (rows keyed by process, when known).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
    /// Its container (`container_id`, `container`, `pod`, `namespace`), when it runs in one.
    #[serde(flatten)]
    pub container: Option<Container>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ResetRow {
    pub direction: &'static str,
    pub reason: String,
    pub state: String,
    pub count: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CloseWaitHolder {
    pub process: String,
    /// Its cgroup path, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
    /// Its container (`container_id`, `container`, `pod`, `namespace`), when it runs in one.
    #[serde(flatten)]
    pub container: Option<Container>,
    pub sockets: usize,
    pub oldest_ms: f64,
    pub peers: Vec<CountRow>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LifetimeRow {
    pub key: String,
    /// The process's cgroup path (rows keyed by process, when known).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
    /// Its container (`container_id`, `container`, `pod`, `namespace`), when it runs in one.
    #[serde(flatten)]
    pub container: Option<Container>,
    pub lifetime_ms: Percentiles,
}

/// A verdict in one sentence, with what it rests on.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Finding {
    pub severity: &'static str,
    pub text: String,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The whole diagnosis; `--json` prints it as one document.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Report {
    pub duration_s: f64,
    pub events: u64,
    pub lost_events: u64,
    pub missed_events: u64,
    pub tracker: TrackerStats,
    pub findings: Vec<Finding>,
    pub connections_ended: u64,
    pub ends: Vec<CountRow>,
    /// How many of `connections_ended` ended at their socket's destroy with no `-> CLOSE`
    /// seen (the `life` record's `close_unseen`): the kernel skipped that program run or
    /// its event was lost. Left out when 0, so that a report with none reads as before.
    #[serde(skip_serializing_if = "is_zero")]
    pub ended_close_unseen: u64,
    pub time_wait: TimeWaitSection,
    pub close_wait: CloseWaitSection,
    pub connects_by_destination: Vec<ConnectOutcomes>,
    pub connects_by_process: Vec<ConnectOutcomes>,
    pub resets: ResetSection,
    pub retransmits_by_peer: Vec<CountRow>,
    pub synack_retransmits_by_listener: Vec<CountRow>,
    pub listen_overflows: Option<u64>,
    pub listen_drops: Option<u64>,
    pub lifetimes_by_process: Vec<LifetimeRow>,
    pub lifetimes_by_peer: Vec<LifetimeRow>,
    pub settings: HostSettings,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TimeWaitSection {
    pub births: u64,
    pub per_second: f64,
    /// Timewait sockets alive now: each followed by its 4-tuple, reconciled with the kernel's
    /// list in a live run.
    pub population: u64,
    /// How the population came and went, and the drift reconciliation found.
    pub counts: Counts,
    /// The kernel's TCPTimeWaitOverflow per namespace, since netwatch started (live runs).
    pub kernel_overflows: Vec<KernelOverflow>,
    /// Where connect() found no free port.
    pub ports_exhausted: Vec<PortsExhausted>,
    pub by_process: Vec<CountRow>,
    pub by_destination: Vec<DestinationView>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CloseWaitSection {
    pub stuck: usize,
    pub threshold_ms: f64,
    pub holders: Vec<CloseWaitHolder>,
    pub dwell_ms: Percentiles,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ResetSection {
    pub sent: u64,
    pub received: u64,
    pub by_reason_and_state: Vec<ResetRow>,
    pub by_process: Vec<CountRow>,
    pub by_peer: Vec<CountRow>,
}

/// Accumulates what the report needs, event by event and connection by connection.
pub struct Analysis {
    settings: HostSettings,
    thresholds: Thresholds,
    first_ns: Option<u64>,
    last_ns: u64,
    events: u64,
    /// Every timewait socket alive, by 4-tuple.
    time_waits: TimeWaits<()>,
    tw_by_process: KeyMap<u64>,
    /// Destination -> (first EADDRNOTAVAIL, count).
    no_port: KeyMap<(u64, u64)>,
    /// By [`End::name`].
    ends: FastMap<&'static str, u64>,
    ended: u64,
    ended_close_unseen: u64,
    connects_by_dest: KeyMap<(Outcomes, Hist)>,
    connects_by_process: KeyMap<(Outcomes, Hist)>,
    /// (direction, state) -> reason (`-` when none) -> count.
    resets: FastMap<(&'static str, &'static str), HashMap<String, u64>>,
    resets_by_process: KeyMap<u64>,
    resets_by_peer: KeyMap<u64>,
    resets_sent: u64,
    resets_received: u64,
    retransmits_by_peer: KeyMap<u64>,
    synack_by_listener: KeyMap<u64>,
    close_wait_dwell: Hist,
    life_by_process: KeyMap<Hist>,
    life_by_peer: KeyMap<Hist>,
    /// Process key (`comm[pid]`) -> (pid, cgroup id) of the first owner seen under it, to name
    /// its cgroup when the report is built.
    owners: KeyMap<(Option<u32>, Option<u64>)>,
}

/// The `n` largest counts of `map`, largest first, ties in the order of their keys' text.
fn ranked<V>(map: &KeyMap<V>, n: usize, count: impl Fn(&V) -> u64) -> Vec<(Key, String, &V)> {
    let mut rows: Vec<_> = map.iter().map(|(k, v)| (*k, k.to_string(), v)).collect();
    rows.sort_by(|a, b| count(b.2).cmp(&count(a.2)).then_with(|| a.1.cmp(&b.1)));
    rows.truncate(n);
    rows
}

fn top<V>(map: &KeyMap<V>, n: usize, count: impl Fn(&V) -> u64) -> Vec<CountRow> {
    ranked(map, n, &count)
        .into_iter()
        .map(|(_, key, v)| CountRow {
            key,
            count: count(v),
            cgroup: None,
            container: None,
        })
        .collect()
}

/// Rows kept in each table.
const TOP: usize = 10;

/// Keys a per-process or per-peer table holds; past it, new keys count under [`OTHER`], so a
/// report that runs for days stays bounded however many processes and peers come and go.
const MAX_KEYS: usize = 1024;
/// Fewer for tables that hold a histogram per key.
const MAX_HIST_KEYS: usize = 256;
const OTHER: &str = "(other)";
/// Process keys whose owner is remembered: more than every per-process table together holds.
const MAX_OWNERS: usize = 2 * MAX_KEYS + 2 * MAX_HIST_KEYS;

/// The value for `key`, or for [`OTHER`] once `map` holds `cap` keys.
fn capped<V>(map: &mut KeyMap<V>, key: Key, cap: usize, make: impl FnOnce() -> V) -> &mut V {
    let key = if map.len() >= cap && !map.contains_key(&key) {
        Key::Other
    } else {
        key
    };
    map.entry(key).or_insert_with(make)
}

impl Analysis {
    pub fn new(settings: HostSettings, thresholds: Thresholds) -> Self {
        Self {
            time_waits: TimeWaits::new(settings.clone()),
            settings,
            thresholds,
            first_ns: None,
            last_ns: 0,
            events: 0,
            tw_by_process: KeyMap::default(),
            no_port: KeyMap::default(),
            ends: HashMap::default(),
            ended: 0,
            ended_close_unseen: 0,
            connects_by_dest: KeyMap::default(),
            connects_by_process: KeyMap::default(),
            resets: HashMap::default(),
            resets_by_process: KeyMap::default(),
            resets_by_peer: KeyMap::default(),
            resets_sent: 0,
            resets_received: 0,
            retransmits_by_peer: KeyMap::default(),
            synack_by_listener: KeyMap::default(),
            close_wait_dwell: Hist::new(),
            life_by_process: KeyMap::default(),
            life_by_peer: KeyMap::default(),
            owners: KeyMap::default(),
        }
    }

    /// Remembers who process key `who` is, so the report can name its cgroup.
    fn note_owner(&mut self, who: Key, pid: Option<u32>, cgroup_id: Option<u64>) {
        if pid.is_some() && self.owners.len() < MAX_OWNERS {
            self.owners.entry(who).or_insert((pid, cgroup_id));
        }
    }

    /// The cgroup path of the process keyed `who`, when known; `None` for keys that are not
    /// a process (`-`, [`OTHER`], peers). Resolved now, when the report is built.
    fn cgroup_of(&self, who: &Key, names: &dyn OwnerNames) -> Option<String> {
        let &(pid, cgroup_id) = self.owners.get(who)?;
        names.cgroup(cgroup_id, pid)
    }

    /// The container of the process keyed `who`, as [`Analysis::cgroup_of`] its cgroup.
    fn container_of(&self, who: &Key, names: &dyn OwnerNames) -> Option<Container> {
        let &(pid, cgroup_id) = self.owners.get(who)?;
        names.container(cgroup_id, pid).map(|c| c.as_ref().clone())
    }

    /// Per-process count rows with their cgroups.
    fn process_rows(&self, map: &KeyMap<u64>, names: &dyn OwnerNames) -> Vec<CountRow> {
        ranked(map, TOP, |v| *v)
            .into_iter()
            .map(|(who, key, count)| CountRow {
                key,
                count: *count,
                cgroup: self.cgroup_of(&who, names),
                container: self.container_of(&who, names),
            })
            .collect()
    }

    /// Measures the duration from `started_ns` (when tracing began) rather than the first event.
    pub fn set_start(&mut self, started_ns: u64) {
        self.first_ns = Some(self.first_ns.map_or(started_ns, |f| f.min(started_ns)));
        self.time_waits.set_start(started_ns);
    }

    /// Every event of the stream, selected or not: a new connection on a 4-tuple ends its
    /// timewait socket whoever owns it.
    pub fn on_stream_event(&mut self, ev: &Event) {
        self.time_waits.on_event(ev);
    }

    /// The TIME_WAIT table, for a live run to reconcile with the kernel's list.
    pub fn time_waits_mut(&mut self) -> &mut TimeWaits<()> {
        &mut self.time_waits
    }

    /// Counts what single events tell (resets, retransmits), whatever socket they belong to.
    pub fn on_event(&mut self, ev: &Event) {
        self.events += 1;
        self.first_ns.get_or_insert(ev.ts_ns);
        self.last_ns = self.last_ns.max(ev.ts_ns);
        let who = process(ev.pid, ev.comm);
        if matches!(
            ev.kind,
            EventKind::ResetSent { .. } | EventKind::ResetReceived { .. }
        ) {
            self.note_owner(who, ev.pid, ev.cgroup_id);
        }
        match &ev.kind {
            EventKind::ResetSent { state, reason } => {
                self.resets_sent += 1;
                self.count_reset("sent", reason.as_deref(), *state);
                *capped(&mut self.resets_by_process, who, MAX_KEYS, || 0) += 1;
                *capped(
                    &mut self.resets_by_peer,
                    Key::Peer(ev.daddr),
                    MAX_KEYS,
                    || 0,
                ) += 1;
            }
            EventKind::ResetReceived { state } => {
                self.resets_received += 1;
                self.count_reset("received", None, *state);
                *capped(&mut self.resets_by_process, who, MAX_KEYS, || 0) += 1;
                *capped(
                    &mut self.resets_by_peer,
                    Key::Peer(ev.daddr),
                    MAX_KEYS,
                    || 0,
                ) += 1;
            }
            EventKind::Retransmit { .. } if ev.kind.is_retransmission() => {
                *capped(
                    &mut self.retransmits_by_peer,
                    Key::Peer(ev.daddr),
                    MAX_KEYS,
                    || 0,
                ) += 1;
            }
            EventKind::SynackRetransmit { .. } => {
                *capped(
                    &mut self.synack_by_listener,
                    Key::Endpoint(ev.saddr, ev.sport),
                    MAX_KEYS,
                    || 0,
                ) += 1;
            }
            // An attempt the kernel gave up before counting it sent nothing.
            EventKind::Retransmit { .. }
            | EventKind::State { .. }
            | EventKind::Destroy { .. }
            | EventKind::Accept { .. }
            | EventKind::FirstUse { .. } => {}
        }
    }

    /// Counts a reset by direction, reason (`-` for none) and state, allocating only for a
    /// reason not seen before.
    fn count_reset(
        &mut self,
        direction: &'static str,
        reason: Option<&str>,
        state: Option<TcpState>,
    ) {
        let by_reason = self
            .resets
            .entry((direction, state_label(state)))
            .or_default();
        let reason = reason.unwrap_or("-");
        match by_reason.get_mut(reason) {
            Some(n) => *n += 1,
            None => {
                by_reason.insert(reason.to_string(), 1);
            }
        }
    }

    /// Counts a finished connection.
    pub fn on_connection(&mut self, c: &Connection) {
        self.ended += 1;
        *self.ends.entry(c.end.name()).or_default() += 1;
        self.ended_close_unseen += u64::from(c.close_unseen);
        let who = process(c.pid, c.comm);
        self.note_owner(who, c.pid, c.cgroup_id);
        let dest = Key::Endpoint(c.daddr, c.dport);
        if c.end == End::TimeWait {
            let closer_pid = c.closer_pid.or(c.pid);
            let closer = process(closer_pid, c.closer_comm.or(c.comm));
            // The cgroup id is the owner's: only the owner's when it closed.
            let closer_cgroup = c.cgroup_id.filter(|_| closer_pid == c.pid);
            self.note_owner(closer, closer_pid, closer_cgroup);
            *capped(&mut self.tw_by_process, closer, MAX_KEYS, || 0) += 1;
            self.time_waits.born(c, ());
        }
        if c.ports_exhausted() {
            let e = capped(&mut self.no_port, dest, MAX_KEYS, || (c.end_ns, 0));
            e.0 = e.0.min(c.end_ns);
            e.1 += 1;
        }
        if c.role == Role::Active {
            for (key, table) in [
                (dest, &mut self.connects_by_dest),
                (who, &mut self.connects_by_process),
            ] {
                let (o, h) = capped(table, key, MAX_HIST_KEYS, || {
                    (Outcomes::default(), Hist::new())
                });
                match c.end {
                    End::Refused => o.refused += 1,
                    End::Timeout if c.connect_ms.is_none() => o.timeout += 1,
                    End::Aborted if c.connect_ms.is_none() => o.aborted += 1,
                    _ => {
                        o.established += 1;
                        if let Some(ms) = c.connect_ms {
                            h.record_ms(ms);
                        }
                    }
                }
            }
        }
        if let Some(ms) = c.dwell_ms.close_wait {
            self.close_wait_dwell.record_ms(ms);
        }
        if let Some(ms) = c.ms {
            capped(&mut self.life_by_process, who, MAX_HIST_KEYS, Hist::new).record_ms(ms);
            capped(
                &mut self.life_by_peer,
                Key::Peer(c.daddr),
                MAX_HIST_KEYS,
                Hist::new,
            )
            .record_ms(ms);
        }
    }

    /// Timewait sockets alive at `now_ns`.
    #[cfg(test)]
    pub fn time_wait_population(&mut self, now_ns: u64) -> u64 {
        self.time_waits.advance(now_ns);
        self.time_waits.population()
    }

    /// Builds the report at `now_ns` from what was accumulated and the tracker's live sockets.
    pub fn report(
        &mut self,
        tracker: &Tracker,
        now_ns: u64,
        losses: Losses,
        listen: Option<(u64, u64)>,
        keep: &dyn Fn(&CloseWaitSocket) -> bool,
        names: &dyn OwnerNames,
    ) -> Report {
        let duration_s = self
            .first_ns
            .map_or(0.0, |f| now_ns.saturating_sub(f) as f64 / 1e9)
            .max(1e-9);
        self.time_waits.advance(now_ns);
        let mut findings = Vec::new();

        let Losses {
            lost: lost_events,
            missed: missed_events,
        } = losses;
        if lost_events > 0 {
            findings.push(Finding {
                severity: "warning",
                text: format!(
                    "{lost_events} events were lost (ring buffer full): every count below is a lower bound"
                ),
            });
        }
        if missed_events > 0 {
            findings.push(Finding {
                severity: "warning",
                text: format!(
                    "{missed_events} events were missed in the kernel (a tracepoint fired while a netwatch program was already running on that CPU, and the kernel skipped it): every count below is a lower bound"
                ),
            });
        }
        let evicted = tracker.stats().evicted;
        if evicted > 0 {
            findings.push(Finding {
                severity: "warning",
                text: format!("{evicted} sockets were evicted from the tracker (its cap): their connections are not counted"),
            });
        }

        // TIME_WAIT churn and the exhaustion forecast.
        let mut by_destination = self.time_waits.destinations();
        by_destination.retain(|d| d.births > 0 || d.population > 0);
        for d in &by_destination {
            let alarm = match (d.forecast.binding, d.pattern) {
                (Binding::Ports | Binding::MaxTwBuckets, Pattern::MassClose) => format!(
                    "{} TIME_WAITs to {} come from a mass close of long-lived connections, not churn: {}; they drain within 60 s",
                    d.population,
                    d.destination,
                    d.forecast.phrase()
                ),
                (Binding::Ports, _) => format!(
                    "at {:.0}/s to {} the {} usable ports run out in ~{:.0} s; enable pooling / keep-alive",
                    d.per_second,
                    d.destination,
                    d.forecast.port_limit.unwrap_or(0),
                    d.forecast.in_s.unwrap_or(0.0)
                ),
                (Binding::MaxTwBuckets, _) => format!(
                    "at {:.0}/s to {} the namespace's {}; enable pooling / keep-alive",
                    d.per_second,
                    d.destination,
                    d.forecast.phrase()
                ),
                _ => continue,
            };
            findings.push(Finding {
                severity: "alarm",
                text: alarm,
            });
        }
        let mut ports_exhausted: Vec<PortsExhausted> = self
            .no_port
            .iter()
            .map(|(dest, (first_ns, n))| PortsExhausted {
                destination: dest.to_string(),
                first_ns: *first_ns,
                after_s: first_ns.saturating_sub(self.first_ns.unwrap_or(*first_ns)) as f64 / 1e9,
                failed_connects: *n,
            })
            .collect();
        ports_exhausted.sort_by_key(|p| p.first_ns);
        for p in &ports_exhausted {
            findings.push(Finding {
                severity: "alarm",
                text: format!(
                    "{} connect() calls to {} found no free local port (EADDRNOTAVAIL), the first {:.1} s into the run",
                    p.failed_connects,
                    p.destination,
                    p.after_s
                ),
            });
        }
        let population = self.time_waits.population();
        let counts = &self.time_waits.counts;
        if counts.overflowed > 0 {
            findings.push(Finding {
                severity: "alarm",
                text: format!(
                    "{} TIME_WAIT births were refused at tcp_max_tw_buckets (TCPTimeWaitOverflow): those connections lost TIME_WAIT's protection",
                    counts.overflowed
                ),
            });
        }
        if population >= self.thresholds.time_wait_alarm {
            let churn = by_destination.iter().any(|d| d.pattern == Pattern::Churn);
            findings.push(Finding {
                severity: "alarm",
                text: if churn {
                    format!(
                        "{population} sockets in TIME_WAIT (alarm at {}): connections are opened and closed instead of reused",
                        self.thresholds.time_wait_alarm
                    )
                } else {
                    format!(
                        "{population} sockets in TIME_WAIT (alarm at {}), from a mass close rather than churn: they drain within 60 s",
                        self.thresholds.time_wait_alarm
                    )
                },
            });
        }
        by_destination.truncate(TOP);

        // CLOSE_WAIT: stuck sockets per process.
        let stuck: Vec<CloseWaitSocket> = tracker
            .close_waits(now_ns)
            .into_iter()
            .filter(|c| c.age_ms >= self.thresholds.close_wait_age_ms && keep(c))
            .collect();
        type Holder = (usize, f64, KeyMap<u64>, Option<String>, Option<Container>);
        let mut holders: HashMap<String, Holder> = HashMap::new();
        for c in &stuck {
            let h = holders
                .entry(process(c.pid, c.comm.as_deref().map(Comm::new)).to_string())
                .or_insert_with(|| {
                    let cgroup = c.pid.and_then(|_| names.cgroup(c.cgroup_id, c.pid));
                    let container = c
                        .pid
                        .and_then(|_| names.container(c.cgroup_id, c.pid))
                        .map(|c| c.as_ref().clone());
                    (0, 0.0, KeyMap::default(), cgroup, container)
                });
            h.0 += 1;
            h.1 = h.1.max(c.age_ms);
            *h.2.entry(Key::Endpoint(c.daddr, c.dport)).or_default() += 1;
        }
        let mut holders: Vec<CloseWaitHolder> = holders
            .into_iter()
            .map(
                |(process, (sockets, oldest_ms, peers, cgroup, container))| CloseWaitHolder {
                    process,
                    cgroup,
                    container,
                    sockets,
                    oldest_ms,
                    peers: top(&peers, 5, |v| *v),
                },
            )
            .collect();
        holders.sort_by(|a, b| {
            b.sockets
                .cmp(&a.sockets)
                .then_with(|| a.process.cmp(&b.process))
        });
        for h in &holders {
            let severity = if h.sockets >= self.thresholds.close_wait_alarm {
                "alarm"
            } else {
                "notice"
            };
            let container = h
                .container
                .as_ref()
                .map_or_else(String::new, |c| format!(", container {}", c.label()));
            let cgroup = h
                .cgroup
                .as_ref()
                .map_or_else(String::new, |c| format!(", cgroup {c}"));
            let cgroup = format!("{container}{cgroup}");
            findings.push(Finding {
                severity,
                text: format!(
                    "{} holds {} sockets in CLOSE_WAIT (oldest {:.1} s{cgroup}): the peer closed and the application never called close() — a socket leak",
                    h.process,
                    h.sockets,
                    h.oldest_ms / 1000.0
                ),
            });
        }

        let outcomes = |table: &KeyMap<(Outcomes, Hist)>, by_process: bool| {
            let mut rows: Vec<ConnectOutcomes> = table
                .iter()
                .map(|(k, (o, h))| ConnectOutcomes {
                    key: k.to_string(),
                    cgroup: by_process.then(|| self.cgroup_of(k, names)).flatten(),
                    container: by_process.then(|| self.container_of(k, names)).flatten(),
                    established: o.established,
                    refused: o.refused,
                    timeout: o.timeout,
                    aborted: o.aborted,
                    connect_ms: (!h.0.is_empty()).then(|| h.percentiles()),
                })
                .collect();
            rows.sort_by(|a, b| {
                let total = |r: &ConnectOutcomes| r.established + r.refused + r.timeout + r.aborted;
                total(b).cmp(&total(a)).then_with(|| a.key.cmp(&b.key))
            });
            rows.truncate(TOP);
            rows
        };
        let connects_by_destination = outcomes(&self.connects_by_dest, false);
        let connects_by_process = outcomes(&self.connects_by_process, true);
        for r in &connects_by_destination {
            let failed = r.refused + r.timeout + r.aborted;
            if failed > 0 {
                findings.push(Finding {
                    severity: "notice",
                    text: format!(
                        "connects to {} failed {} time(s) ({} refused, {} timed out, {} aborted) and succeeded {} times",
                        r.key, failed, r.refused, r.timeout, r.aborted, r.established
                    ),
                });
            }
        }

        let mut by_reason_and_state: Vec<ResetRow> = self
            .resets
            .iter()
            .flat_map(|(&(direction, state), by_reason)| {
                by_reason.iter().map(move |(reason, count)| ResetRow {
                    direction,
                    reason: reason.clone(),
                    state: state.to_string(),
                    count: *count,
                })
            })
            .collect();
        by_reason_and_state.sort_by(|a, b| {
            b.count.cmp(&a.count).then_with(|| {
                (a.direction, &a.reason, &a.state).cmp(&(b.direction, &b.reason, &b.state))
            })
        });

        let lifetimes = |m: &KeyMap<Hist>, by_process: bool| {
            let mut rows: Vec<LifetimeRow> = m
                .iter()
                .map(|(k, h)| LifetimeRow {
                    key: k.to_string(),
                    cgroup: by_process.then(|| self.cgroup_of(k, names)).flatten(),
                    container: by_process.then(|| self.container_of(k, names)).flatten(),
                    lifetime_ms: h.percentiles(),
                })
                .collect();
            rows.sort_by(|a, b| {
                b.lifetime_ms
                    .count
                    .cmp(&a.lifetime_ms.count)
                    .then_with(|| a.key.cmp(&b.key))
            });
            rows.truncate(TOP);
            rows
        };

        let ends: BTreeMap<_, _> = self.ends.iter().collect();
        Report {
            duration_s,
            events: self.events,
            lost_events,
            missed_events,
            tracker: tracker.stats(),
            findings,
            connections_ended: self.ended,
            ends: ends
                .into_iter()
                .map(|(k, v)| CountRow {
                    key: k.to_string(),
                    count: *v,
                    cgroup: None,
                    container: None,
                })
                .collect(),
            ended_close_unseen: self.ended_close_unseen,
            time_wait: TimeWaitSection {
                births: self.time_waits.counts.births,
                per_second: self.time_waits.counts.births as f64 / duration_s,
                population,
                counts: self.time_waits.counts.clone(),
                kernel_overflows: self.time_waits.kernel_overflows(),
                ports_exhausted,
                by_process: self.process_rows(&self.tw_by_process, names),
                by_destination,
            },
            close_wait: CloseWaitSection {
                stuck: stuck.len(),
                threshold_ms: self.thresholds.close_wait_age_ms,
                holders,
                dwell_ms: self.close_wait_dwell.percentiles(),
            },
            connects_by_destination,
            connects_by_process,
            resets: ResetSection {
                sent: self.resets_sent,
                received: self.resets_received,
                by_reason_and_state,
                by_process: self.process_rows(&self.resets_by_process, names),
                by_peer: top(&self.resets_by_peer, TOP, |v| *v),
            },
            retransmits_by_peer: top(&self.retransmits_by_peer, TOP, |v| *v),
            synack_retransmits_by_listener: top(&self.synack_by_listener, TOP, |v| *v),
            listen_overflows: listen.map(|l| l.0),
            listen_drops: listen.map(|l| l.1),
            lifetimes_by_process: lifetimes(&self.life_by_process, true),
            lifetimes_by_peer: lifetimes(&self.life_by_peer, false),
            settings: self.settings.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A host that knows no names.
    fn no_names(_: Option<u64>, _: Option<u32>) -> Option<String> {
        None
    }

    /// A TIME_WAIT birth towards `dest:port`, each from a local port of its own (a tuple
    /// reused is a timewait socket replaced).
    fn tw_conn(end_ns: u64, dest: &str, port: u16) -> Connection {
        static NEXT_PORT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let mut c = Connection::test(end_ns, dest, port, End::TimeWait, Role::Active);
        let n = NEXT_PORT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        c.sport = 1024 + (n % 64_000) as u16;
        c
    }

    #[test]
    fn exhaustion_forecast_matches_the_field_notes_arithmetic() {
        // 612 TIME_WAITs per second for 10 s towards one destination, default range and
        // tcp_tw_reuse=2 (not loopback): population 6,120 of 28,232 ports; at 612/s the
        // remaining 22,112 last 22,112 / 612 = 36.1 s.
        let settings = HostSettings {
            port_range: (32768, 60999),
            tw_reuse: 2,
            ..HostSettings::default()
        };
        let mut a = Analysis::new(settings, Thresholds::default());
        let start = 1_000_000_000u64;
        a.on_event(&Event::test_state(start));
        for i in 0..6120u64 {
            a.on_connection(&tw_conn(
                start + i * 10_000_000_000 / 6120,
                "10.0.0.7",
                5432,
            ));
        }
        let now = start + 10_000_000_000;
        let tracker = Tracker::new(10);
        let r = a.report(&tracker, now, Losses::default(), None, &|_| true, &no_names);
        let d = &r.time_wait.by_destination[0];
        assert_eq!(d.destination, "10.0.0.7:5432");
        assert_eq!(d.population, 6120);
        assert!((d.per_second - 612.0).abs() < 1e-9, "{}", d.per_second);
        let secs = d.exhaustion_in_s.expect("forecast");
        assert!((secs - 22_112.0 / 612.0).abs() < 1e-6, "{secs}");
        assert!(
            r.findings.iter().any(|f| f
                .text
                .starts_with("at 612/s to 10.0.0.7:5432 the 28232 usable ports run out in ~36 s")),
            "{:?}",
            r.findings
        );
    }

    #[test]
    fn no_forecast_below_the_limit_or_with_tw_reuse() {
        let mut a = Analysis::new(HostSettings::default(), Thresholds::default());
        let start = 1_000_000_000u64;
        a.on_event(&Event::test_state(start));
        // 100/s for 10 s: steady state 6,000 < 28,232.
        for i in 0..1000u64 {
            a.on_connection(&tw_conn(start + i * 10_000_000, "10.0.0.8", 80));
        }
        // 1000/s to loopback with tcp_tw_reuse=2: reuse applies.
        for i in 0..10_000u64 {
            a.on_connection(&tw_conn(start + i * 1_000_000, "127.0.0.1", 80));
        }
        let r = a.report(
            &Tracker::new(10),
            start + 10_000_000_000,
            Losses::default(),
            None,
            &|_| true,
            &no_names,
        );
        assert!(
            r.time_wait
                .by_destination
                .iter()
                .all(|d| d.exhaustion_in_s.is_none())
        );
        let lo = r
            .time_wait
            .by_destination
            .iter()
            .find(|d| d.destination == "127.0.0.1:80")
            .unwrap();
        assert_eq!(lo.forecast.binding, Binding::TwReuse);
        assert_eq!(r.time_wait.births, 11_000);
        assert!(r.findings.iter().all(|f| !f.text.contains("run out")));
    }

    #[test]
    fn population_ages_out_after_sixty_seconds() {
        let mut a = Analysis::new(HostSettings::default(), Thresholds::default());
        a.on_connection(&tw_conn(1_000_000_000, "10.0.0.9", 80));
        a.on_connection(&tw_conn(30_000_000_000, "10.0.0.9", 80));
        assert_eq!(a.time_wait_population(60_999_999_999), 2);
        assert_eq!(a.time_wait_population(61_000_000_000), 1);
        assert_eq!(a.time_wait_population(89_999_999_999), 1);
        assert_eq!(a.time_wait_population(90_000_000_000), 0);
    }

    #[test]
    fn per_process_tables_stay_bounded() {
        let mut a = Analysis::new(HostSettings::default(), Thresholds::default());
        for pid in 0..5_000u32 {
            let mut c = tw_conn(1_000_000_000 + u64::from(pid), "10.0.0.9", 80);
            c.pid = Some(pid + 1);
            c.closer_pid = Some(pid + 1);
            a.on_connection(&c);
        }
        assert_eq!(a.life_by_process.len(), MAX_HIST_KEYS + 1);
        assert_eq!(a.connects_by_process.len(), MAX_HIST_KEYS + 1);
        assert_eq!(a.tw_by_process.len(), MAX_KEYS + 1);
        let other = a.tw_by_process[&Key::Other];
        assert_eq!(
            other,
            5_000 - MAX_KEYS as u64,
            "every connection is still counted"
        );
    }

    #[test]
    fn process_rows_name_their_cgroup() {
        // A fake host: one owner (pid 4242, cgroup id 77) has a known path; nobody else.
        const PID: u32 = 4242;
        const ID: u64 = 77;
        let names = |id: Option<u64>, pid: Option<u32>| {
            (id == Some(ID) && pid == Some(PID)).then(|| "/shop.slice/api.service".to_string())
        };
        let mut a = Analysis::new(HostSettings::default(), Thresholds::default());
        let mut c = tw_conn(1_000_000_000, "10.0.0.9", 80);
        (c.pid, c.closer_pid, c.cgroup_id) = (Some(PID), Some(PID), Some(ID));
        a.on_connection(&c);
        // Closed first by another process: the owner's cgroup id is not that process's.
        let mut other = tw_conn(1_000_000_001, "10.0.0.9", 80);
        (other.pid, other.closer_pid) = (None, Some(u32::MAX - 1));
        a.on_connection(&other);
        let r = a.report(
            &Tracker::new(10),
            2_000_000_000,
            Losses::default(),
            None,
            &|_| true,
            &names,
        );
        let expected = Some("/shop.slice/api.service".to_string());
        let client = format!("client[{PID}]");
        let tw = r.time_wait.by_process.iter().find(|r| r.key == client);
        assert_eq!(tw.unwrap().cgroup, expected);
        let row = r.connects_by_process.iter().find(|r| r.key == client);
        assert_eq!(row.unwrap().cgroup, expected);
        let row = r.lifetimes_by_process.iter().find(|r| r.key == client);
        assert_eq!(row.unwrap().cgroup, expected);
        let unknown = r.connects_by_process.iter().find(|r| r.key == "-");
        assert_eq!(unknown.unwrap().cgroup, None);
        let stranger = format!("client[{}]", u32::MAX - 1);
        let tw = r.time_wait.by_process.iter().find(|r| r.key == stranger);
        assert_eq!(tw.unwrap().cgroup, None);
        // Rows keyed by destination or peer have none.
        assert_eq!(r.connects_by_destination[0].cgroup, None);
        assert_eq!(r.lifetimes_by_peer[0].cgroup, None);
        let json = serde_json::to_value(&r).unwrap();
        let rows = json["connects_by_process"].as_array().unwrap();
        let row = rows.iter().find(|r| r["key"] == client.as_str()).unwrap();
        assert_eq!(row["cgroup"], "/shop.slice/api.service");
        assert!(json["connects_by_destination"][0].get("cgroup").is_none());
    }

    #[test]
    fn process_rows_name_their_container() {
        // A fake host: the owner in cgroup 77 runs in a pod's container.
        struct Names;
        impl OwnerNames for Names {
            fn cgroup(&self, _id: Option<u64>, _pid: Option<u32>) -> Option<String> {
                None
            }
            fn container(
                &self,
                id: Option<u64>,
                _pid: Option<u32>,
            ) -> Option<std::sync::Arc<Container>> {
                (id == Some(77)).then(|| {
                    std::sync::Arc::new(Container {
                        name: Some("web".into()),
                        pod: Some("shop-7f".into()),
                        namespace: Some("prod".into()),
                        ..Container::unnamed(&"ab".repeat(32))
                    })
                })
            }
        }
        let mut a = Analysis::new(HostSettings::default(), Thresholds::default());
        let mut c = tw_conn(1_000_000_000, "10.0.0.9", 80);
        (c.pid, c.closer_pid, c.cgroup_id) = (Some(4242), Some(4242), Some(77));
        a.on_connection(&c);
        let r = a.report(
            &Tracker::new(10),
            2_000_000_000,
            Losses::default(),
            None,
            &|_| true,
            &Names,
        );
        let row = r
            .connects_by_process
            .iter()
            .find(|r| r.key == "client[4242]");
        let container = row.unwrap().container.as_ref().unwrap();
        assert_eq!(container.label(), "prod/shop-7f/web");
        assert!(r.connects_by_destination[0].container.is_none());
        let json = serde_json::to_value(&r).unwrap();
        let row = &json["connects_by_process"][0];
        assert_eq!(
            (&row["pod"], &row["namespace"]),
            (&"shop-7f".into(), &"prod".into()),
            "{row}"
        );
        assert!(json["connects_by_destination"][0].get("pod").is_none());
    }

    /// Retransmissions by peer count what the kernel counts in `TcpRetransSegs`: an attempt
    /// given up before the count (`EBUSY`) is none; one a firewall dropped after it is one.
    #[test]
    fn retransmits_by_peer_count_what_the_kernel_counts() {
        let mut a = Analysis::new(HostSettings::default(), Thresholds::default());
        for err in [
            None,
            Some(0),
            Some(-libc::EPERM),
            Some(-libc::EBUSY),
            Some(-libc::EAGAIN),
        ] {
            let mut ev = Event::test_state(1);
            ev.daddr = "10.0.0.2".parse().unwrap();
            ev.kind = EventKind::Retransmit {
                state: Some(TcpState::Established),
                err,
            };
            a.on_event(&ev);
        }
        let r = a.report(
            &Tracker::new(10),
            5,
            Losses::default(),
            None,
            &|_| true,
            &no_names,
        );
        let counts: Vec<_> = r
            .retransmits_by_peer
            .iter()
            .map(|row| (row.key.as_str(), row.count))
            .collect();
        assert_eq!(counts, [("10.0.0.2", 3)]);
    }

    #[test]
    fn lost_events_come_first() {
        let mut a = Analysis::new(HostSettings::default(), Thresholds::default());
        let r = a.report(
            &Tracker::new(10),
            5,
            Losses {
                lost: 17,
                missed: 3,
            },
            None,
            &|_| true,
            &no_names,
        );
        assert!(
            r.findings[0].text.starts_with("17 events were lost"),
            "{:?}",
            r.findings
        );
        assert!(
            r.findings[1]
                .text
                .starts_with("3 events were missed in the kernel"),
            "{:?}",
            r.findings
        );
        assert_eq!((r.lost_events, r.missed_events), (17, 3));
    }
}
