//! What the live view counts, kept per process so that the view can be narrowed to one
//! process at any time and still show everything since the start.
//!
//! Every table is bounded: past [`MAX_PROCS`] processes new ones count under `(other)`, and
//! past [`MAX_KEYS`] rows a table counts new rows under `(other)`, so a view left running for
//! days on a busy host stays small.
use std::{collections::HashMap, hash::Hash};

use crate::{
    model::event::{Endpoint, Event, EventKind, TcpState, state_label},
    model::timewait::{HostSettings, TimeWaits},
    model::tracker::{Connection, End, Role},
};

/// A process, interned.
pub type ProcId = u32;
/// Events and connections without a known owner.
pub const UNKNOWN: ProcId = 0;
/// Processes past [`MAX_PROCS`].
pub const OTHER: ProcId = 1;
/// Processes kept apart.
pub const MAX_PROCS: usize = 4096;
/// Rows kept apart in each table.
pub const MAX_KEYS: usize = 4096;
/// The row that counts everything past [`MAX_KEYS`].
pub const OTHER_KEY: &str = "(other)";

/// An owner as tables name it: `comm[pid]`, as the report does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Proc {
    pub pid: Option<u32>,
    pub comm: Option<String>,
    pub label: String,
}

/// Interned processes: no allocation for a process already seen.
pub struct Procs {
    list: Vec<Proc>,
    by_pid: HashMap<u32, Vec<ProcId>>,
}

impl Procs {
    fn new() -> Self {
        Self {
            list: vec![
                Proc {
                    pid: None,
                    comm: None,
                    label: "-".into(),
                },
                Proc {
                    pid: None,
                    comm: None,
                    label: OTHER_KEY.into(),
                },
            ],
            by_pid: HashMap::new(),
        }
    }

    pub fn id(&mut self, pid: Option<u32>, comm: Option<&str>) -> ProcId {
        let Some(pid) = pid else { return UNKNOWN };
        if let Some(ids) = self.by_pid.get(&pid)
            && let Some(&id) = ids
                .iter()
                .find(|&&id| self.list[id as usize].comm.as_deref() == comm)
        {
            return id;
        }
        if self.list.len() >= MAX_PROCS {
            return OTHER;
        }
        let id = self.list.len() as ProcId;
        self.list.push(Proc {
            pid: Some(pid),
            comm: comm.map(str::to_string),
            label: format!("{}[{pid}]", comm.unwrap_or("?")),
        });
        self.by_pid.entry(pid).or_default().push(id);
        id
    }

    pub fn get(&self, id: ProcId) -> &Proc {
        &self.list[id as usize]
    }
}

/// New connections of one process.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Opens {
    /// `CLOSE -> SYN_SENT`: connect() called.
    pub connects: u64,
    /// accept() returned a connection.
    pub accepts: u64,
}

/// Connects that never got an answer, by kind (SYN_SENT outcomes other than established).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Failures {
    pub refused: u64,
    pub timeout: u64,
    pub aborted: u64,
}

impl Failures {
    pub fn total(&self) -> u64 {
        self.refused + self.timeout + self.aborted
    }

    pub fn minus(&self, before: &Failures) -> Failures {
        Failures {
            refused: self.refused.saturating_sub(before.refused),
            timeout: self.timeout.saturating_sub(before.timeout),
            aborted: self.aborted.saturating_sub(before.aborted),
        }
    }

    pub fn add(&mut self, o: &Failures) {
        self.refused += o.refused;
        self.timeout += o.timeout;
        self.aborted += o.aborted;
    }
}

/// A reset's row: direction, the kernel's reason (`-` when none), the socket's state.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResetKey {
    pub direction: &'static str,
    pub reason: String,
    pub state: &'static str,
}

/// Cumulative counters since the start, keyed by process: cheap to copy once per interval,
/// so that rates are differences between two copies under whatever filter is shown.
#[derive(Clone, Debug, Default)]
pub struct Counters {
    pub opens: HashMap<ProcId, Opens>,
    /// TIME_WAIT births by closer and destination (an index into [`Stats::dest`]).
    pub time_wait: HashMap<(ProcId, u32), u64>,
    /// Failed connects by owner and destination (`addr:port`).
    pub failures: HashMap<(ProcId, String), Failures>,
    pub resets: HashMap<(ProcId, ResetKey), u64>,
    /// Retransmitted segments by owner and peer address.
    pub retransmits: HashMap<(ProcId, String), u64>,
}

/// The slot for `key`, or for `other` once `map` holds [`MAX_KEYS`] keys.
fn slot<K: Eq + Hash, V: Default>(
    map: &mut HashMap<K, V>,
    key: K,
    other: impl FnOnce() -> K,
) -> &mut V {
    let key = if map.len() >= MAX_KEYS && !map.contains_key(&key) {
        other()
    } else {
        key
    };
    map.entry(key).or_default()
}

/// A TIME_WAIT destination: `addr:port` we connected to, or `addr:port (server side)` for a
/// server that closed first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dest {
    pub key: String,
    /// We connected: the TIME_WAIT holds one of our ephemeral ports.
    pub active: bool,
}

/// Everything the view shows that is not the tracker's current sockets.
pub struct Stats {
    pub procs: Procs,
    pub counters: Counters,
    dests: Vec<Dest>,
    dest_index: HashMap<String, u32>,
    /// The timewait sockets alive, by closer: the same table `report` keeps.
    pub time_waits: TimeWaits<ProcId>,
}

impl Stats {
    pub fn new(settings: HostSettings) -> Self {
        Self {
            procs: Procs::new(),
            counters: Counters::default(),
            dests: vec![Dest {
                key: OTHER_KEY.into(),
                active: false,
            }],
            dest_index: HashMap::new(),
            time_waits: TimeWaits::new(settings),
        }
    }

    pub fn dest(&self, id: u32) -> &Dest {
        &self.dests[id as usize]
    }

    fn dest_id(&mut self, key: String, active: bool) -> u32 {
        if let Some(&id) = self.dest_index.get(&key) {
            return id;
        }
        if self.dests.len() >= MAX_KEYS {
            return 0;
        }
        let id = self.dests.len() as u32;
        self.dest_index.insert(key.clone(), id);
        self.dests.push(Dest { key, active });
        id
    }

    /// Counts what single events tell: new connections, resets, retransmissions.
    pub fn on_event(&mut self, ev: &Event) {
        let proc = |s: &mut Self| s.procs.id(ev.pid, ev.comm.as_deref());
        match &ev.kind {
            EventKind::State {
                old_state: Some(TcpState::Close),
                new_state: Some(TcpState::SynSent),
                ..
            } => {
                let p = proc(self);
                self.counters.opens.entry(p).or_default().connects += 1;
            }
            EventKind::Accept { .. } => {
                let p = proc(self);
                self.counters.opens.entry(p).or_default().accepts += 1;
            }
            EventKind::ResetSent { state, reason } => {
                let p = proc(self);
                let key = ResetKey {
                    direction: "sent",
                    reason: reason.clone().unwrap_or_else(|| "-".into()),
                    state: state_label(*state),
                };
                *slot(&mut self.counters.resets, (p, key), other_reset) += 1;
            }
            EventKind::ResetReceived { state } => {
                let p = proc(self);
                let key = ResetKey {
                    direction: "received",
                    reason: "-".into(),
                    state: state_label(*state),
                };
                *slot(&mut self.counters.resets, (p, key), other_reset) += 1;
            }
            // A SYN-ACK sent again is a retransmitted segment too (nstat's TcpRetransSegs and
            // TCPSynRetrans count it): owned by the listener, to the peer that sent the SYN.
            EventKind::Retransmit { .. } | EventKind::SynackRetransmit { .. }
                if ev.kind.is_retransmission() =>
            {
                let p = proc(self);
                *slot(
                    &mut self.counters.retransmits,
                    (p, ev.daddr.to_string()),
                    || (OTHER, OTHER_KEY.into()),
                ) += 1;
            }
            _ => {}
        }
    }

    /// Counts a finished connection: TIME_WAIT births and failed connects.
    pub fn on_connection(&mut self, c: &Connection) {
        if c.end == End::TimeWait {
            // As the report counts them: the process that closed first holds the TIME_WAIT.
            let closer = self.procs.id(
                c.closer_pid.or(c.pid),
                c.closer_comm.as_deref().or(c.comm.as_deref()),
            );
            let active = c.role != Role::Passive;
            let key = if active {
                Endpoint(c.daddr, c.dport).to_string()
            } else {
                format!("{} (server side)", Endpoint(c.saddr, c.sport))
            };
            let d = self.dest_id(key, active);
            *slot(&mut self.counters.time_wait, (closer, d), || (OTHER, 0)) += 1;
            self.time_waits.born(c, closer);
        }
        if c.role == Role::Active {
            let mut f = Failures::default();
            match c.end {
                End::Refused => f.refused = 1,
                End::Timeout if c.connect_ms.is_none() => f.timeout = 1,
                End::Aborted if c.connect_ms.is_none() => f.aborted = 1,
                _ => return,
            }
            let p = self.procs.id(c.pid, c.comm.as_deref());
            slot(
                &mut self.counters.failures,
                (p, Endpoint(c.daddr, c.dport).to_string()),
                || (OTHER, OTHER_KEY.into()),
            )
            .add(&f);
        }
    }

    /// Brings the TIME_WAIT table to `now_ns`: sockets whose timer fired are gone.
    pub fn advance(&mut self, now_ns: u64) {
        self.time_waits.advance(now_ns);
    }

    /// TIME_WAITs alive now, per (destination label, closer).
    pub fn time_wait_alive(&self) -> impl Iterator<Item = (&str, ProcId, u64)> + '_ {
        self.time_waits
            .alive_by_tag()
            .map(|(dest, p, n)| (dest, *p, n))
    }
}

fn other_reset() -> (ProcId, ResetKey) {
    (
        OTHER,
        ResetKey {
            direction: "-",
            reason: OTHER_KEY.into(),
            state: "-",
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(pid: u32, end: End, role: Role) -> Connection {
        let mut c = Connection::test(1_000_000_000, "10.0.0.2", 80, end, role);
        (c.start_ns, c.connect_ms) = (1, None);
        (c.pid, c.closer_pid) = (Some(pid), Some(pid));
        c
    }

    #[test]
    fn processes_are_interned_and_bounded() {
        let mut p = Procs::new();
        let a = p.id(Some(10), Some("a"));
        assert_eq!(p.id(Some(10), Some("a")), a);
        // The same pid after exec is another process.
        assert_ne!(p.id(Some(10), Some("b")), a);
        assert_eq!(p.id(None, Some("x")), UNKNOWN);
        assert_eq!(p.get(a).label, "a[10]");
        for pid in 0..(MAX_PROCS as u32 + 10) {
            p.id(Some(1000 + pid), Some("many"));
        }
        assert_eq!(p.id(Some(999_999), Some("late")), OTHER);
    }

    #[test]
    fn connections_count_time_wait_and_failures() {
        let mut s = Stats::new(HostSettings::default());
        s.on_connection(&conn(7, End::TimeWait, Role::Active));
        // A server's TIME_WAIT: another 4-tuple.
        let mut served = conn(7, End::TimeWait, Role::Passive);
        served.dport = 51000;
        s.on_connection(&served);
        s.on_connection(&conn(7, End::Refused, Role::Active));
        s.on_connection(&conn(7, End::Timeout, Role::Active));
        s.on_connection(&conn(7, End::Closed, Role::Active));
        let p = s.procs.id(Some(7), Some("client"));
        let births: u64 = s.counters.time_wait.values().sum();
        assert_eq!(births, 2);
        let keys: Vec<_> = s
            .counters
            .time_wait
            .keys()
            .map(|(_, d)| s.dest(*d).clone())
            .collect();
        assert!(keys.contains(&Dest {
            key: "10.0.0.2:80".into(),
            active: true
        }));
        assert!(keys.contains(&Dest {
            key: "10.0.0.1:40000 (server side)".into(),
            active: false
        }));
        let f = s.counters.failures[&(p, "10.0.0.2:80".to_string())];
        assert_eq!((f.refused, f.timeout, f.aborted), (1, 1, 0));
        let alive = |s: &Stats| s.time_wait_alive().map(|(_, _, n)| n).sum::<u64>();
        assert_eq!(alive(&s), 2);
        s.advance(61_000_000_000);
        assert_eq!(alive(&s), 0);
        assert_eq!(s.counters.time_wait.values().sum::<u64>(), 2, "births stay");
    }

    #[test]
    fn tables_stay_bounded() {
        let mut s = Stats::new(HostSettings::default());
        let mut ev = Event::test_state(1);
        ev.kind = EventKind::Retransmit {
            state: None,
            err: None,
        };
        for i in 0..(MAX_KEYS as u32 + 100) {
            ev.daddr = std::net::IpAddr::from(i.to_be_bytes());
            s.on_event(&ev);
        }
        assert_eq!(s.counters.retransmits.len(), MAX_KEYS + 1);
        assert_eq!(
            s.counters.retransmits.values().sum::<u64>(),
            MAX_KEYS as u64 + 100,
            "every segment is still counted"
        );
    }

    #[test]
    fn synack_retransmits_count_as_retransmits_to_their_peer() {
        let mut s = Stats::new(HostSettings::default());
        let mut ev = Event::test_state(1);
        ev.daddr = "10.0.0.1".parse().unwrap();
        ev.kind = EventKind::Retransmit {
            state: Some(TcpState::SynSent),
            err: Some(0),
        };
        s.on_event(&ev);
        ev.kind = EventKind::SynackRetransmit {
            state: Some(TcpState::Listen),
        };
        s.on_event(&ev);
        s.on_event(&ev);
        let p = s.procs.id(ev.pid, ev.comm.as_deref());
        assert_eq!(s.counters.retransmits[&(p, "10.0.0.1".to_string())], 3);
    }
}
