//! The per-socket state machine: turns the stream of transitions into lifecycle facts
//! (a connection ended, and how; a TIME_WAIT was born; a socket sits in CLOSE_WAIT).
//!
//! Keyed by the kernel socket address plus a generation: the kernel reuses addresses within
//! milliseconds, so a life starts fresh at `CLOSE -> SYN_SENT`, `CLOSE -> LISTEN` and
//! `LISTEN -> SYN_RECV`. A socket first seen mid-life (it existed before netwatch started, or
//! its first events were lost) is tracked from there on, with `None` for every duration that
//! began before it was seen: nothing is invented.
//!
//! A connection is finished when the kernel destroys the socket, when its address starts a new
//! life, or when a later event shows it has been closed for longer than [`FINISH_DELAY_NS`]:
//! our own reset is reported just after the `-> CLOSE` transition it ends, so the record must
//! wait for it. Only event timestamps drive this, so a replay finishes the same connections in
//! the same order as the live run did.
//!
//! Memory is bounded by `max_sockets`; past it the socket least recently heard from is evicted,
//! and evictions are counted and reported, never silent. A tracked socket costs about 160 bytes
//! at a million of them (see [`Socks`] and [`Sock`]); the owner names they refer to are
//! bounded with them (see [`Names`]).
use std::{
    collections::{HashMap, VecDeque},
    net::{IpAddr, Ipv4Addr},
    num::NonZeroU32,
};

use serde::{Deserialize, Serialize};

use crate::model::{
    comm::Comm,
    event::{Event, EventKind, TcpState},
};

/// How long after `-> CLOSE` a connection waits for trailing events (our own reset).
pub const FINISH_DELAY_NS: u64 = 200_000_000;

/// Default cap on tracked sockets.
pub const DEFAULT_MAX_SOCKETS: usize = 262_144;

/// Who opened the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// We connected (SYN_SENT seen).
    Active,
    /// We accepted (SYN_RECV seen).
    Passive,
    /// Seen mid-life: not known.
    Unknown,
}

/// How a connection ended: the END column.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "end", rename_all = "kebab-case")]
pub enum End {
    /// Orderly close in which the peer closed first (we went through CLOSE_WAIT, LAST_ACK).
    Closed,
    /// Orderly close in which we closed first: a TIME_WAIT socket now holds the port.
    TimeWait,
    /// The peer sent a reset.
    ResetByPeer,
    /// We sent a reset; `reason` is the kernel's (6.10+).
    ResetByUs { reason: Option<String> },
    /// connect() got a reset in SYN_SENT: nothing listens there.
    Refused,
    /// The peer never answered: SYN (or data) retransmitted, then closed.
    Timeout,
    /// The application closed before any answer, or the kernel dropped the socket with no
    /// evidence of why.
    Aborted,
}

impl End {
    /// The JSON `end` tag: `time-wait`, `reset-by-us`, ...
    pub fn name(&self) -> &'static str {
        match self {
            End::Closed => "closed",
            End::TimeWait => "time-wait",
            End::ResetByPeer => "reset-by-peer",
            End::ResetByUs { .. } => "reset-by-us",
            End::Refused => "refused",
            End::Timeout => "timeout",
            End::Aborted => "aborted",
        }
    }
}

/// The text-column form: the name, with our reset's reason: `reset-by-us (NO_SOCKET)`.
impl std::fmt::Display for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            End::ResetByUs { reason: Some(r) } => write!(f, "reset-by-us ({r})"),
            e => f.write_str(e.name()),
        }
    }
}

/// Milliseconds spent in each state, `None` where netwatch did not see the state begin (or,
/// for the last state of a `close_unseen` connection, end).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Dwell {
    pub syn_sent: Option<f64>,
    pub syn_recv: Option<f64>,
    pub established: Option<f64>,
    pub fin_wait1: Option<f64>,
    pub fin_wait2: Option<f64>,
    pub closing: Option<f64>,
    pub close_wait: Option<f64>,
    pub last_ack: Option<f64>,
}

/// Per-state time accumulated while tracking, in ms; NaN = the state was not seen beginning.
/// f32 keeps a tracked socket small (0.25 ms resolution after an hour is plenty).
#[derive(Clone, Copy, Debug)]
struct DwellMs([f32; 8]);

impl DwellMs {
    const UNSEEN: Self = Self([f32::NAN; 8]);

    fn index(s: TcpState) -> Option<usize> {
        Some(match s {
            TcpState::SynSent => 0,
            TcpState::SynRecv => 1,
            TcpState::Established => 2,
            TcpState::FinWait1 => 3,
            TcpState::FinWait2 => 4,
            TcpState::Closing => 5,
            TcpState::CloseWait => 6,
            TcpState::LastAck => 7,
            _ => return None,
        })
    }

    fn add(&mut self, s: TcpState, ms: f64) {
        if let Some(i) = Self::index(s) {
            let prev = if self.0[i].is_nan() { 0.0 } else { self.0[i] };
            self.0[i] = prev + ms as f32;
        }
    }

    fn get(&self, s: TcpState) -> Option<f64> {
        let v = self.0[Self::index(s)?];
        (!v.is_nan()).then_some(f64::from(v))
    }

    fn public(&self) -> Dwell {
        use TcpState::*;
        Dwell {
            syn_sent: self.get(SynSent),
            syn_recv: self.get(SynRecv),
            established: self.get(Established),
            fin_wait1: self.get(FinWait1),
            fin_wait2: self.get(FinWait2),
            closing: self.get(Closing),
            close_wait: self.get(CloseWait),
            last_ack: self.get(LastAck),
        }
    }
}

/// One finished connection: a `life` line, and the facts the report is built from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Connection {
    /// CLOCK_MONOTONIC ns of the first event seen, and of the `-> CLOSE` (of the destroy when
    /// `close_unseen`).
    pub start_ns: u64,
    pub end_ns: u64,
    pub pid: Option<u32>,
    /// The owner's thread that made the call netwatch last saw (connect, accept, close).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tid: Option<u32>,
    pub comm: Option<Comm>,
    /// cgroup v2 id of the owner; absent when unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup_id: Option<u64>,
    /// Inode of the socket's network namespace, when the kernel read it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<u32>,
    /// The process that closed first (the TIME_WAIT's owner when `end` is time-wait).
    pub closer_pid: Option<u32>,
    pub closer_comm: Option<Comm>,
    pub saddr: IpAddr,
    pub sport: u16,
    pub daddr: IpAddr,
    pub dport: u16,
    pub role: Role,
    /// Id in the kernel's `STACKS` map of the user stack that opened it (connect/accept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stack_id: Option<u32>,
    #[serde(flatten)]
    pub end: End,
    /// Whole lifetime in ms; `None` when netwatch did not see it begin.
    pub ms: Option<f64>,
    /// SYN_SENT -> ESTABLISHED, for active connections.
    pub connect_ms: Option<f64>,
    pub dwell_ms: Dwell,
    pub retransmits: u32,
    pub resets_received: u32,
    pub resets_sent: u32,
    /// State in which a reset arrived or left, if any.
    pub reset_state: Option<TcpState>,
    /// Bytes we sent that the peer acknowledged, bytes received, and the smoothed RTT, read
    /// from the socket at close (`None` without kernel BTF).
    pub bytes_sent: Option<u64>,
    pub bytes_received: Option<u64>,
    pub srtt_ms: Option<f64>,
    /// Ended at its destroy (`end_ns`) without a seen `-> CLOSE` (the kernel skipped that
    /// program run, or the event was lost): its end is classified from the last state and the
    /// retransmits and resets seen, and what would claim an orderly close is `aborted`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub close_unseen: bool,
}

impl Connection {
    /// connect() found no free local port (EADDRNOTAVAIL): the kernel moved the socket to
    /// SYN_SENT, failed to pick a port and closed it at once, so no SYN left and its local port
    /// is still 0.
    pub fn ports_exhausted(&self) -> bool {
        self.role == Role::Active
            && self.sport == 0
            && self.end == End::Aborted
            && self.connect_ms.is_none()
            && self.retransmits == 0
            && !self.close_unseen
    }
}

/// Something the tracker concluded.
#[derive(Clone, Debug, PartialEq)]
pub enum Fact {
    /// A connection finished.
    Ended(Box<Connection>),
}

/// A monotonic timestamp or duration in ns; never 0, so `Option<Ns>` costs 8 bytes.
type Ns = std::num::NonZeroU64;

/// A process as the tracker keeps it: 12 bytes, no heap allocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct OwnerId {
    /// Never 0 (no process), which lets `Option<OwnerId>` cost nothing extra.
    pid: NonZeroU32,
    /// The thread that made the call (connect, accept, close); 0 = unknown.
    tid: u32,
    /// Its command name and cgroup, in [`Names`].
    names: u32,
}

/// How many (command name, cgroup id) pairs [`Names`] holds before it drops those no tracked
/// socket refers to any more; it then waits until it holds twice what it kept.
const NAMES_SWEEP_AT: usize = 4096;

/// The (command name, cgroup id) pairs the tracked sockets' owners have, each stored once: a
/// socket keeps a 4-byte index instead of 24 bytes. Pairs change with a new program or a new
/// container, not with a new pid or connection, but a long-running host sees new containers
/// all the time: past [`NAMES_SWEEP_AT`] (and twice what the last sweep kept), the pairs no
/// tracked socket refers to are dropped (see [`Tracker::sweep_names`]). A sweep walks every
/// socket once, and the threshold doubling with what it keeps spreads that over at least as
/// many new pairs, so a pair costs a flat amount however long netwatch runs.
struct Names {
    list: Vec<(Comm, u64)>,
    index: HashMap<(Comm, u64), u32, foldhash::fast::RandomState>,
    /// The last pair asked for: events come in runs of one owner.
    last: Option<((Comm, u64), u32)>,
    /// The table's size at which the next sweep runs.
    sweep_at: usize,
}

impl Default for Names {
    fn default() -> Self {
        Self {
            list: Vec::new(),
            index: HashMap::default(),
            last: None,
            sweep_at: NAMES_SWEEP_AT,
        }
    }
}

impl Names {
    fn id(&mut self, pair: (Comm, u64)) -> u32 {
        if let Some((last, id)) = self.last
            && last == pair
        {
            return id;
        }
        let next = self.list.len() as u32;
        let id = *self.index.entry(pair).or_insert(next);
        if id == next {
            self.list.push(pair);
        }
        self.last = Some((pair, id));
        id
    }

    /// The owner `ev` names: a lookup (usually of the last pair asked for), no allocation.
    fn owner(&mut self, ev: &Event) -> Option<OwnerId> {
        let pid = NonZeroU32::new(ev.pid?)?;
        let comm = ev.comm.unwrap_or(Comm::EMPTY);
        Some(OwnerId {
            pid,
            tid: ev.tid.unwrap_or(0),
            names: self.id((comm, ev.cgroup_id.unwrap_or(0))),
        })
    }

    fn needs_sweep(&self) -> bool {
        self.list.len() >= self.sweep_at
    }

    /// Keeps only the pairs `ids` holds, renumbering them: `ids` are every id in use, and each
    /// is rewritten to its pair's new id.
    fn keep_only<'a>(&mut self, ids: impl Iterator<Item = &'a mut u32>) {
        let mut renumbered = vec![u32::MAX; self.list.len()];
        let mut kept = Vec::new();
        for id in ids {
            let new = &mut renumbered[*id as usize];
            if *new == u32::MAX {
                *new = kept.len() as u32;
                kept.push(self.list[*id as usize]);
            }
            *id = *new;
        }
        self.index.clear();
        self.index
            .extend(kept.iter().enumerate().map(|(i, &pair)| (pair, i as u32)));
        self.list = kept;
        self.last = None;
        self.sweep_at = NAMES_SWEEP_AT.max(2 * self.list.len());
    }

    fn comm(&self, owner: &OwnerId) -> Comm {
        self.list[owner.names as usize].0
    }

    fn comm_str(&self, owner: &OwnerId) -> &str {
        self.list[owner.names as usize].0.as_str()
    }

    fn cgroup(&self, owner: &OwnerId) -> Option<u64> {
        Some(self.list[owner.names as usize].1).filter(|&c| c != 0)
    }
}

/// A tracked socket's addresses: 16 bytes, inline for IPv4; boxed otherwise (IPv6, or a
/// recording that mixes families), allocated only when they change.
#[derive(Clone, Debug)]
enum Addrs {
    V4(Ipv4Addr, Ipv4Addr),
    Other(Box<(IpAddr, IpAddr)>),
}

impl Addrs {
    fn new(saddr: IpAddr, daddr: IpAddr) -> Self {
        match (saddr, daddr) {
            (IpAddr::V4(s), IpAddr::V4(d)) => Addrs::V4(s, d),
            pair => Addrs::Other(Box::new(pair)),
        }
    }

    fn get(&self) -> (IpAddr, IpAddr) {
        match self {
            Addrs::V4(s, d) => (IpAddr::V4(*s), IpAddr::V4(*d)),
            Addrs::Other(pair) => **pair,
        }
    }

    /// Called at every transition with ports: the common case, the same IPv4 pair, is told
    /// by two 4-byte comparisons rather than by building and comparing `IpAddr` pairs.
    #[inline]
    fn set(&mut self, saddr: IpAddr, daddr: IpAddr) {
        if let (Addrs::V4(s, d), IpAddr::V4(a), IpAddr::V4(b)) = (&*self, saddr, daddr)
            && (*s, *d) == (a, b)
        {
            return;
        }
        if self.get() != (saddr, daddr) {
            *self = Addrs::new(saddr, daddr);
        }
    }
}

/// One tracked socket: 152 bytes. What only some sockets need (a reset, a closer, the
/// counters read at close) is in [`Late`], allocated when first needed.
#[derive(Clone, Debug)]
struct Sock {
    /// Its kernel address: the key of [`Socks`].
    sock: u64,
    first_ns: u64,
    last_ns: u64,
    state_since: Option<Ns>,
    syn_sent_ns: Option<Ns>,
    /// SYN_SENT -> ESTABLISHED duration (never 0: the handshake takes time).
    connect_ns: Option<Ns>,
    /// When `closed_state` was left for CLOSE.
    closed_ns: u64,
    addrs: Addrs,
    late: Option<Box<Late>>,
    dwell: DwellMs,
    owner: Option<OwnerId>,
    generation: u32,
    /// The kernel's id (in `STACKS`) of the user stack that opened the socket, plus one:
    /// captured at connect() or accept().
    stack: Option<NonZeroU32>,
    /// Inode of its network namespace; 0 = not known.
    netns: u32,
    retransmits: u32,
    sport: u16,
    dport: u16,
    role: Role,
    state: Option<TcpState>,
    /// Last state before `-> CLOSE`, set once the connection is closed.
    closed_state: Option<TcpState>,
    /// This life began with a fresh-start transition netwatch saw, at `first_ns`.
    born: bool,
    listener: bool,
    /// Its `-> CLOSE` was never seen: `closed_state` is the last state known, and `closed_ns`
    /// the time of its destroy (see [`Sock::close_at_destroy`]).
    close_unseen: bool,
}

impl Sock {
    /// Last state before `-> CLOSE`, and when, once the connection is closed.
    fn closed_from(&self) -> Option<(TcpState, u64)> {
        self.closed_state.map(|st| (st, self.closed_ns))
    }

    fn late(&mut self) -> &mut Late {
        self.late.get_or_insert_default()
    }

    /// Closes at its destroy (at `ts_ns`) a connection whose `-> CLOSE` was never seen: the
    /// kernel skipped that program run (recursion, counted as `missed=`) or the event was lost.
    /// It closed from the last connection state known: the destroy's (the kernel programs'
    /// last view, the newer one) or else the tracker's. A socket closed already, a listener,
    /// or one never seen in a connection state stays as it is (no record).
    fn close_at_destroy(&mut self, ts_ns: u64, destroy_state: Option<TcpState>) {
        if self.closed_state.is_some() || self.listener {
            return;
        }
        let in_connection = |st: &TcpState| DwellMs::index(*st).is_some();
        let last = destroy_state
            .filter(in_connection)
            .or(self.state.filter(in_connection));
        if let Some(last) = last {
            (self.closed_state, self.closed_ns) = (Some(last), ts_ns);
            self.close_unseen = true;
        }
    }
}

/// Facts that only some sockets gather, mostly near their end: boxed, as most tracked
/// sockets (open ones) never need them.
#[derive(Clone, Debug, Default)]
struct Late {
    /// Who closed first, when we did.
    closer: Option<OwnerId>,
    resets_received: u16,
    resets_sent: u16,
    reset_state: Option<TcpState>,
    reset_reason: Option<String>,
    bytes_sent: Option<u64>,
    bytes_received: Option<u64>,
    srtt_ms: Option<f64>,
}

/// The tracked sockets: a dense array of [`Sock`]s (a freed slot is reused) and a hash index
/// from kernel address to slot, 5 bytes a bucket. A hash map holding the sockets themselves
/// keeps the old and the new table while it grows (3 buckets of 209 bytes per socket at that
/// moment); here only the index is copied, and the array grows in place.
#[derive(Default)]
struct Socks {
    index: hashbrown::HashTable<u32>,
    hasher: foldhash::fast::RandomState,
    slots: Vec<Option<Sock>>,
    free: Vec<u32>,
}

impl Socks {
    fn len(&self) -> usize {
        self.index.len()
    }

    fn hash(&self, sock: u64) -> u64 {
        use std::hash::BuildHasher as _;
        self.hasher.hash_one(sock)
    }

    fn slot(&self, sock: u64) -> Option<u32> {
        let slots = &self.slots;
        self.index
            .find(self.hash(sock), |&i| {
                slots[i as usize].as_ref().is_some_and(|s| s.sock == sock)
            })
            .copied()
    }

    #[cfg(test)]
    fn get(&self, sock: u64) -> Option<&Sock> {
        let i = self.slot(sock)?;
        self.slots[i as usize].as_ref()
    }

    fn get_mut(&mut self, sock: u64) -> Option<&mut Sock> {
        let i = self.slot(sock)?;
        self.slots[i as usize].as_mut()
    }

    #[cfg(test)]
    fn contains(&self, sock: u64) -> bool {
        self.slot(sock).is_some()
    }

    /// Adds `s`, replacing and returning a socket tracked at its address: one hash lookup.
    /// Returns the slot it is in, with the socket it replaced.
    fn insert(&mut self, s: Sock) -> (u32, Option<Sock>) {
        use hashbrown::hash_table::Entry;
        let hash = self.hash(s.sock);
        let (slots, hasher) = (&self.slots, &self.hasher);
        let entry = self.index.entry(
            hash,
            |&i| slots[i as usize].as_ref().is_some_and(|t| t.sock == s.sock),
            |&j| {
                use std::hash::BuildHasher as _;
                slots[j as usize]
                    .as_ref()
                    .map_or(0, |t| hasher.hash_one(t.sock))
            },
        );
        match entry {
            Entry::Occupied(tracked) => {
                let i = *tracked.get();
                (i, self.slots[i as usize].replace(s))
            }
            Entry::Vacant(room) => {
                let i = match self.free.pop() {
                    Some(i) => {
                        self.slots[i as usize] = Some(s);
                        i
                    }
                    None => {
                        self.slots.push(Some(s));
                        (self.slots.len() - 1) as u32
                    }
                };
                room.insert(i);
                (i, None)
            }
        }
    }

    fn remove(&mut self, sock: u64) -> Option<Sock> {
        let slots = &self.slots;
        let found = self.index.find_entry(self.hash(sock), |&i| {
            slots[i as usize].as_ref().is_some_and(|s| s.sock == sock)
        });
        let (i, _) = found.ok()?.remove();
        self.free.push(i);
        self.slots[i as usize].take()
    }

    /// Removes the socket in `slot`, as [`Socks::slot`] found it: one hash probe, no
    /// comparison of addresses.
    fn remove_at(&mut self, slot: u32) -> Option<Sock> {
        let sock = self.slots.get(slot as usize)?.as_ref()?.sock;
        let found = self.index.find_entry(self.hash(sock), |&i| i == slot);
        found.ok()?.remove();
        self.free.push(slot);
        self.slots[slot as usize].take()
    }

    fn iter(&self) -> impl Iterator<Item = &Sock> {
        self.slots.iter().flatten()
    }

    fn iter_mut(&mut self) -> impl Iterator<Item = &mut Sock> {
        self.slots.iter_mut().flatten()
    }

    /// The socket in `slot`, as [`Socks::slot`] found it.
    fn at(&self, slot: u32) -> Option<&Sock> {
        self.slots.get(slot as usize)?.as_ref()
    }

    /// The socket in `slot`, as [`Socks::slot`] found it.
    fn at_mut(&mut self, slot: u32) -> Option<&mut Sock> {
        self.slots.get_mut(slot as usize)?.as_mut()
    }
}

/// An event's stack id as [`Sock::stack`] keeps it (id + 1).
fn stack_key(ev: &Event) -> Option<NonZeroU32> {
    ev.stack_id
        .and_then(|id| NonZeroU32::new(id.wrapping_add(1)))
}

#[cfg(test)]
impl Connection {
    /// A connection of pid 10 (`client`), 10.0.0.1:40000 -> `dest`:`port`, that ended `end`
    /// at `end_ns` after 1 ms, for tests of what consumes connections.
    pub fn test(end_ns: u64, dest: &str, port: u16, end: End, role: Role) -> Connection {
        Connection {
            start_ns: end_ns.saturating_sub(1_000_000),
            end_ns,
            pid: Some(10),
            tid: None,
            comm: Some("client".into()),
            cgroup_id: None,
            netns: None,
            closer_pid: Some(10),
            closer_comm: Some("client".into()),
            saddr: "10.0.0.1".parse().unwrap(),
            sport: 40000,
            daddr: dest.parse().unwrap(),
            dport: port,
            role,
            stack_id: None,
            end,
            ms: Some(1.0),
            connect_ms: Some(0.1),
            dwell_ms: Dwell::default(),
            retransmits: 0,
            resets_received: 0,
            resets_sent: 0,
            reset_state: None,
            bytes_sent: None,
            bytes_received: None,
            srtt_ms: None,
            close_unseen: false,
        }
    }
}

/// A socket sitting in CLOSE_WAIT now: the peer closed, our application has not.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CloseWaitSocket {
    pub pid: Option<u32>,
    pub comm: Option<String>,
    /// cgroup v2 id of the owner.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup_id: Option<u64>,
    pub saddr: IpAddr,
    pub sport: u16,
    pub daddr: IpAddr,
    pub dport: u16,
    /// How long it has been in CLOSE_WAIT; `at_least` when netwatch did not see it enter.
    pub age_ms: f64,
    pub at_least: bool,
}

/// A tracked socket that is open now, as a live view (`netwatch top`) sees it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LiveSocket<'a> {
    /// Its kernel address (unique while it lives).
    pub sock: u64,
    pub state: TcpState,
    pub pid: Option<u32>,
    pub comm: Option<&'a str>,
    pub cgroup_id: Option<u64>,
    pub saddr: IpAddr,
    pub sport: u16,
    pub daddr: IpAddr,
    pub dport: u16,
    /// When it entered `state` (its first event, if netwatch did not see that).
    pub since_ns: u64,
    /// Inode of its network namespace, when the kernel read it.
    pub netns: Option<u32>,
    /// Whether netwatch saw it enter `state`, which makes `since_ns` exact.
    pub since_exact: bool,
    /// Whether it was connected (active) or accepted (passive), if netwatch saw which.
    pub role: Role,
    /// Id in the kernel's `STACKS` map of the user stack that opened it (connect/accept).
    pub stack_id: Option<u32>,
}

/// Tracker counters, reported with every output.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TrackerStats {
    pub sockets: usize,
    pub evicted: u64,
    pub ended: u64,
}

/// The state machine over all sockets.
pub struct Tracker {
    socks: Socks,
    names: Names,
    /// Closed sockets waiting for trailing events, in close order: address, generation and
    /// slot, so that the oldest is checked every event without a hash lookup.
    closing: VecDeque<(u64, u32, u32)>,
    next_generation: u32,
    max_sockets: usize,
    stats: TrackerStats,
    latest_ns: u64,
}

fn fresh_start(old: Option<TcpState>, new: Option<TcpState>) -> bool {
    use TcpState::*;
    matches!(
        (old, new),
        (Some(Close), Some(SynSent)) | (Some(Close), Some(Listen)) | (Some(Listen), Some(SynRecv))
    )
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

impl Tracker {
    pub fn new(max_sockets: usize) -> Self {
        Self {
            socks: Socks::default(),
            names: Names::default(),
            closing: VecDeque::new(),
            next_generation: 0,
            max_sockets: max_sockets.max(1),
            stats: TrackerStats::default(),
            latest_ns: 0,
        }
    }

    pub fn stats(&self) -> TrackerStats {
        TrackerStats {
            sockets: self.socks.len(),
            ..self.stats
        }
    }

    /// The newest event timestamp seen.
    #[cfg(test)]
    pub fn now_ns(&self) -> u64 {
        self.latest_ns
    }

    /// Feeds one event; finished connections go to `out`.
    pub fn on_event(&mut self, ev: &Event, out: &mut impl FnMut(Fact)) {
        self.latest_ns = self.latest_ns.max(ev.ts_ns);
        self.finish_due(ev.ts_ns, out);
        if self.names.needs_sweep() {
            self.sweep_names();
        }
        match &ev.kind {
            EventKind::State {
                old_state,
                new_state,
                bytes_sent,
                bytes_received,
                srtt_ms,
                ..
            } => {
                let slot = self.on_transition(ev, *old_state, *new_state, out);
                if bytes_sent.is_some()
                    && let Some(s) = slot.and_then(|i| self.socks.at_mut(i))
                {
                    let e = s.late();
                    (e.bytes_sent, e.bytes_received, e.srtt_ms) =
                        (*bytes_sent, *bytes_received, *srtt_ms);
                }
            }
            EventKind::Retransmit { state, .. } => {
                if let Some(s) = self.known(ev, *state, out) {
                    s.retransmits += u32::from(ev.kind.is_retransmission());
                }
            }
            EventKind::ResetReceived { state } => {
                if let Some(s) = self.known(ev, *state, out) {
                    let e = s.late();
                    e.resets_received = e.resets_received.saturating_add(1);
                    e.reset_state = e.reset_state.or(*state);
                }
            }
            EventKind::ResetSent { state, reason } => {
                if let Some(s) = self.known(ev, *state, out) {
                    let e = s.late();
                    e.resets_sent = e.resets_sent.saturating_add(1);
                    e.reset_state = e.reset_state.or(*state);
                    e.reset_reason = e.reset_reason.take().or_else(|| reason.clone());
                }
            }
            // The first send or receive changes nothing the tracker keeps (`leaks` keeps its
            // code path).
            EventKind::SynackRetransmit { .. } | EventKind::FirstUse { .. } => {}
            EventKind::Accept { .. } => {
                // The accepting process owns the socket from now on.
                let owner = self.owner_of(ev);
                if let Some(s) = self.socks.get_mut(ev.sock) {
                    s.last_ns = ev.ts_ns;
                    if let Some(owner) = owner {
                        s.owner = Some(owner);
                    }
                    s.stack = stack_key(ev).or(s.stack);
                }
            }
            EventKind::Destroy { state } => {
                if let Some(mut s) = self.socks.remove(ev.sock) {
                    s.close_at_destroy(ev.ts_ns, *state);
                    self.end(s, out);
                }
            }
        }
    }

    /// Drops the owner names no tracked socket refers to. Run between events only: an event
    /// holds at most the one [`OwnerId`] it is about to store, made after this.
    fn sweep_names(&mut self) {
        let ids = self.socks.iter_mut().flat_map(|s| {
            let closer = s.late.as_mut().and_then(|late| late.closer.as_mut());
            s.owner
                .as_mut()
                .into_iter()
                .chain(closer)
                .map(|o| &mut o.names)
        });
        self.names.keep_only(ids);
    }

    /// The owner an event names, its name and cgroup kept in [`Names`].
    fn owner_of(&mut self, ev: &Event) -> Option<OwnerId> {
        self.names.owner(ev)
    }

    /// The socket of a retransmission or reset. One older than the trace, seen first here, is
    /// followed from now on (in `state`), so that its end is classified by what was seen: a
    /// reset from the peer makes it `reset-by-peer`, not `aborted`. Called for every such
    /// event: a tracked socket with an owner costs one hash lookup.
    fn known(
        &mut self,
        ev: &Event,
        state: Option<TcpState>,
        out: &mut impl FnMut(Fact),
    ) -> Option<&mut Sock> {
        let slot = match self.socks.slot(ev.sock) {
            Some(slot) => slot,
            None if ev.sock != 0 => self.insert(ev, Role::Unknown, false, state, false, out),
            None => return None,
        };
        let s = self.socks.at_mut(slot)?;
        s.last_ns = ev.ts_ns;
        if s.owner.is_none() {
            s.owner = self.names.owner(ev);
        }
        Some(s)
    }

    /// Starts following the socket of `ev`: `born` when its life began in view, `state` the
    /// state it is known to be in. Returns its slot.
    fn insert(
        &mut self,
        ev: &Event,
        role: Role,
        born: bool,
        state: Option<TcpState>,
        listener: bool,
        out: &mut impl FnMut(Fact),
    ) -> u32 {
        self.make_room(out);
        let generation = self.next_generation;
        self.next_generation = self.next_generation.wrapping_add(1);
        let (slot, replaced) = self.socks.insert(Sock {
            sock: ev.sock,
            first_ns: ev.ts_ns,
            last_ns: ev.ts_ns,
            state_since: None,
            syn_sent_ns: None,
            connect_ns: None,
            closed_ns: 0,
            addrs: Addrs::new(ev.saddr, ev.daddr),
            late: None,
            dwell: DwellMs::UNSEEN,
            owner: None,
            generation,
            stack: None,
            netns: ev.netns.unwrap_or(0),
            retransmits: 0,
            sport: ev.sport,
            dport: ev.dport,
            role,
            state,
            closed_state: None,
            // A life that began at time 0 counts as unseen (its start could not be told from
            // none when it was an `Option<NonZeroU64>`).
            born: born && ev.ts_ns != 0,
            listener,
            close_unseen: false,
        });
        // Callers insert only where nothing is tracked; were something there, it ends here.
        if let Some(prev) = replaced {
            self.end(prev, out);
        }
        slot
    }

    /// A state transition of `ev`'s socket, tracked from here if it was not; returns the
    /// socket's slot. One hash lookup for a tracked socket, where the address was looked up
    /// again at each step (a quarter of the tracker's instructions).
    fn on_transition(
        &mut self,
        ev: &Event,
        old: Option<TcpState>,
        new: Option<TcpState>,
        out: &mut impl FnMut(Fact),
    ) -> Option<u32> {
        let fresh = fresh_start(old, new);
        let mut tracked = self.socks.slot(ev.sock);
        if fresh && let Some(prev) = tracked.take().and_then(|i| self.socks.remove_at(i)) {
            self.end(prev, out);
        }
        let slot = match tracked {
            Some(slot) => slot,
            None => {
                let role = match new {
                    Some(TcpState::SynSent) if fresh => Role::Active,
                    Some(TcpState::SynRecv) if fresh => Role::Passive,
                    _ => Role::Unknown,
                };
                self.insert(ev, role, fresh, old, new == Some(TcpState::Listen), out)
            }
        };
        let owner = self.owner_of(ev);
        let s = self.socks.at_mut(slot)?;
        s.last_ns = ev.ts_ns;
        if let Some(owner) = owner {
            s.owner = Some(owner);
        }
        s.stack = stack_key(ev).or(s.stack);
        s.netns = ev.netns.unwrap_or(s.netns);
        // Ports and addresses fill in as the kernel assigns them (sport is 0 in SYN_SENT).
        if ev.sport != 0 || ev.dport != 0 {
            s.addrs.set(ev.saddr, ev.daddr);
            (s.sport, s.dport) = (ev.sport, ev.dport);
        }
        // Time in the state being left, only if netwatch saw it begin.
        if old != new
            && let (Some(prev), Some(since)) = (old, s.state_since.map(Ns::get))
        {
            s.dwell.add(prev, ms(ev.ts_ns.saturating_sub(since)));
        }
        if old != new || s.state_since.is_none() {
            s.state_since = Ns::new(ev.ts_ns);
        }
        s.state = new;
        use TcpState::*;
        match (old, new) {
            (_, Some(SynSent)) => s.syn_sent_ns = Ns::new(ev.ts_ns),
            (Some(SynSent), Some(Established)) => {
                s.connect_ns = s
                    .syn_sent_ns
                    .and_then(|t| Ns::new(ev.ts_ns.saturating_sub(t.get())));
            }
            (Some(Established | SynRecv), Some(FinWait1)) => {
                let closer = owner.or(s.owner);
                if closer.is_some() || s.late.is_some() {
                    s.late().closer = closer;
                }
            }
            (_, Some(Close)) => {
                if let Some(prev) = old {
                    (s.closed_state, s.closed_ns) = (Some(prev), ev.ts_ns);
                    self.closing.push_back((ev.sock, s.generation, slot));
                }
            }
            _ => {}
        }
        Some(slot)
    }

    /// Finishes closed connections whose trailing-event window has passed.
    fn finish_due(&mut self, now: u64, out: &mut impl FnMut(Fact)) {
        while let Some(&(sock, generation, slot)) = self.closing.front() {
            let due = match self.socks.at(slot) {
                Some(s) if s.sock == sock && s.generation == generation => match s.closed_from() {
                    Some((_, at)) => now.saturating_sub(at) >= FINISH_DELAY_NS,
                    None => true,
                },
                _ => {
                    // Already finished (destroyed or reused).
                    self.closing.pop_front();
                    continue;
                }
            };
            if !due {
                break;
            }
            self.closing.pop_front();
            if let Some(s) = self.socks.remove_at(slot) {
                self.end(s, out);
            }
        }
    }

    /// Evicts the least recently heard-from socket when the cap is reached.
    fn make_room(&mut self, out: &mut impl FnMut(Fact)) {
        if self.socks.len() < self.max_sockets {
            return;
        }
        // Closed sockets first: they are finished anyway.
        if let Some((sock, _, _)) = self.closing.pop_front()
            && let Some(s) = self.socks.remove(sock)
        {
            self.end(s, out);
            return;
        }
        let oldest = self.socks.iter().min_by_key(|s| s.last_ns).map(|s| s.sock);
        if let Some(k) = oldest {
            self.socks.remove(k);
            self.stats.evicted += 1;
        }
    }

    /// Turns a finished socket into a connection record (listeners and sockets that never
    /// closed, as far as netwatch saw or [`Sock::close_at_destroy`] found, produce none).
    fn end(&mut self, mut s: Sock, out: &mut impl FnMut(Fact)) {
        let Some((from, close_ns)) = s.closed_from() else {
            return;
        };
        if s.listener || from == TcpState::Listen {
            return;
        }
        self.stats.ended += 1;
        let end = match classify(&s, from) {
            // An orderly end is a claim about the close, which netwatch did not see: a socket
            // destroyed in FIN_WAIT1, FIN_WAIT2, CLOSING or LAST_ACK was aborted by the kernel
            // (as orphans past tcp_max_orphans are) or closed unseen. No TIME_WAIT is known to
            // hold its port.
            End::TimeWait | End::Closed if s.close_unseen => End::Aborted,
            end => end,
        };
        let late = s.late.take().map(|late| *late).unwrap_or_default();
        let closer = match (&end, late.closer) {
            (End::TimeWait | End::Closed | End::ResetByUs { .. }, Some(c)) => Some(c),
            // An abortive close (SO_LINGER 0) goes ESTABLISHED -> CLOSE without FIN_WAIT1,
            // where the closer is otherwise learnt: this side closed, so its owner did.
            (End::ResetByUs { .. }, None) => s.owner,
            // Ended at its destroy after this side began closing (FIN_WAIT1): it closed first.
            (End::Aborted, Some(c)) if s.close_unseen => Some(c),
            _ => None,
        };
        let names = &self.names;
        let (closer_pid, closer_comm) =
            closer.map_or((None, None), |c| (Some(c.pid.get()), Some(names.comm(&c))));
        let (saddr, daddr) = s.addrs.get();
        let start_ns = s.first_ns;
        out(Fact::Ended(Box::new(Connection {
            start_ns,
            end_ns: close_ns,
            pid: s.owner.map(|o| o.pid.get()),
            tid: s.owner.map(|o| o.tid).filter(|&t| t != 0),
            comm: s.owner.map(|o| names.comm(&o)),
            cgroup_id: s.owner.and_then(|o| names.cgroup(&o)),
            netns: (s.netns != 0).then_some(s.netns),
            closer_pid,
            closer_comm,
            saddr,
            sport: s.sport,
            daddr,
            dport: s.dport,
            role: s.role,
            stack_id: s.stack.map(|k| k.get() - 1),
            end,
            ms: s.born.then(|| ms(close_ns.saturating_sub(start_ns))),
            connect_ms: s.connect_ns.map(|c| ms(c.get())),
            dwell_ms: s.dwell.public(),
            retransmits: s.retransmits,
            resets_received: u32::from(late.resets_received),
            resets_sent: u32::from(late.resets_sent),
            reset_state: late.reset_state,
            bytes_sent: late.bytes_sent,
            bytes_received: late.bytes_received,
            srtt_ms: late.srtt_ms,
            close_unseen: s.close_unseen,
        })));
    }

    /// Ends every closed connection still waiting (end of stream).
    pub fn flush(&mut self, out: &mut impl FnMut(Fact)) {
        self.finish_due(u64::MAX, out);
    }

    /// Finishes the closed connections whose trailing-event window ended by `now_ns`: a live
    /// view's clock, so that a quiet stream still ends its last connections.
    pub fn finish_until(&mut self, now_ns: u64, out: &mut impl FnMut(Fact)) {
        self.finish_due(now_ns, out);
    }

    /// Every tracked socket not closed yet, in its current state.
    pub fn live_sockets(&self) -> impl Iterator<Item = LiveSocket<'_>> {
        let names = &self.names;
        self.socks.iter().filter_map(move |s| {
            let state = s.state.filter(|st| *st != TcpState::Close)?;
            let (saddr, daddr) = s.addrs.get();
            Some(LiveSocket {
                sock: s.sock,
                state,
                pid: s.owner.map(|o| o.pid.get()),
                comm: s.owner.as_ref().map(|o| names.comm_str(o)),
                cgroup_id: s.owner.and_then(|o| names.cgroup(&o)),
                saddr,
                sport: s.sport,
                daddr,
                dport: s.dport,
                since_ns: s.state_since.map_or(s.first_ns, Ns::get),
                netns: (s.netns != 0).then_some(s.netns),
                since_exact: s.state_since.is_some(),
                role: s.role,
                stack_id: s.stack.map(|k| k.get() - 1),
            })
        })
    }

    /// Sockets in CLOSE_WAIT now, with their ages at `now_ns`.
    pub fn close_waits(&self, now_ns: u64) -> Vec<CloseWaitSocket> {
        self.socks
            .iter()
            .filter(|s| s.state == Some(TcpState::CloseWait))
            .map(|s| {
                let since = s.state_since.map_or(s.first_ns, Ns::get);
                let (saddr, daddr) = s.addrs.get();
                CloseWaitSocket {
                    pid: s.owner.map(|o| o.pid.get()),
                    comm: s.owner.map(|o| self.names.comm_str(&o).to_string()),
                    cgroup_id: s.owner.and_then(|o| self.names.cgroup(&o)),
                    saddr,
                    sport: s.sport,
                    daddr,
                    dport: s.dport,
                    age_ms: ms(now_ns.saturating_sub(since)),
                    // The tracker only holds sockets it saw enter CLOSE_WAIT.
                    at_least: false,
                }
            })
            .collect()
    }
}

/// How a closed connection ended, from the kernel's own evidence.
fn classify(s: &Sock, from: TcpState) -> End {
    use TcpState::*;
    let (resets_received, resets_sent) = s
        .late
        .as_ref()
        .map_or((0, 0), |e| (e.resets_received, e.resets_sent));
    let reset_by_us = || End::ResetByUs {
        reason: s.late.as_ref().and_then(|e| e.reset_reason.clone()),
    };
    match from {
        SynSent if resets_received > 0 => End::Refused,
        SynSent if s.retransmits > 0 => End::Timeout,
        SynSent => End::Aborted,
        _ if resets_received > 0 => End::ResetByPeer,
        _ if resets_sent > 0 => reset_by_us(),
        FinWait1 | FinWait2 | Closing | TimeWait => End::TimeWait,
        LastAck => End::Closed,
        Established | CloseWait | SynRecv if s.retransmits > 0 => End::Timeout,
        _ => End::Aborted,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLIENT: &str = "10.0.0.1";
    const SERVER: &str = "10.0.0.2";

    struct Stream {
        ts: u64,
        events: Vec<Event>,
    }

    impl Stream {
        fn new() -> Self {
            Self {
                ts: 1_000_000_000,
                events: vec![],
            }
        }

        /// Appends an event `ms` after the previous one.
        fn push(
            &mut self,
            ms: u64,
            sock: u64,
            pid: Option<u32>,
            local: (&str, u16),
            remote: (&str, u16),
            kind: EventKind,
        ) {
            self.ts += ms * 1_000_000;
            let mut ev = Event::test_state(self.ts);
            (ev.sock, ev.pid, ev.tid) = (sock, pid, pid);
            ev.comm = pid.map(|p| format!("proc{p}").into());
            (ev.saddr, ev.sport) = (local.0.parse().unwrap(), local.1);
            (ev.daddr, ev.dport) = (remote.0.parse().unwrap(), remote.1);
            ev.kind = kind;
            self.events.push(ev);
        }

        #[expect(
            clippy::too_many_arguments,
            reason = "a test helper whose call reads like the event it builds"
        )]
        fn state(
            &mut self,
            ms: u64,
            sock: u64,
            pid: Option<u32>,
            local: (&str, u16),
            remote: (&str, u16),
            old: TcpState,
            new: TcpState,
        ) {
            self.push(ms, sock, pid, local, remote, EventKind::state(old, new));
        }

        fn run(&self, max: usize) -> (Vec<Connection>, Tracker) {
            let mut t = Tracker::new(max);
            let mut out = vec![];
            for ev in &self.events {
                t.on_event(ev, &mut |Fact::Ended(c)| out.push(*c));
            }
            t.flush(&mut |Fact::Ended(c)| out.push(*c));
            (out, t)
        }
    }

    use TcpState::*;

    /// The code path captured at accept() stays with the socket through later events that
    /// carry none.
    #[test]
    fn the_stack_id_from_accept_stays_with_the_socket() {
        let mut s = Stream::new();
        let (l, r) = ((SERVER, 80), (CLIENT, 40000));
        s.state(0, 0x10, None, l, r, Listen, SynRecv);
        s.state(1, 0x10, None, l, r, SynRecv, Established);
        s.push(
            1,
            0x10,
            Some(7),
            l,
            r,
            EventKind::Accept {
                state: Some(Established),
            },
        );
        s.events.last_mut().expect("pushed").stack_id = Some(0);
        s.state(5, 0x10, None, l, r, Established, CloseWait);
        let mut t = Tracker::new(16);
        for ev in &s.events {
            t.on_event(ev, &mut |_| {});
        }
        let sock = t.socks.get(0x10).unwrap();
        assert_eq!(sock.stack.map(|k| k.get() - 1), Some(0));
    }

    /// Client side of an orderly connection in which the client closes first.
    fn client_closes_first(s: &mut Stream, sock: u64, pid: u32, sport: u16) {
        let l = (CLIENT, sport);
        let r = (SERVER, 80);
        s.state(0, sock, Some(pid), (CLIENT, 0), r, Close, SynSent);
        s.state(2, sock, Some(pid), l, r, SynSent, Established);
        s.state(10, sock, Some(pid), l, r, Established, FinWait1);
        s.state(1, sock, Some(pid), l, r, FinWait1, FinWait2);
        s.state(1, sock, Some(pid), l, r, FinWait2, Close);
        s.push(
            0,
            sock,
            Some(pid),
            l,
            r,
            EventKind::Destroy { state: Some(Close) },
        );
    }

    #[test]
    fn active_closer_is_a_time_wait_with_durations() {
        let mut s = Stream::new();
        client_closes_first(&mut s, 0xa, 42, 5000);
        let (conns, _) = s.run(100);
        assert_eq!(conns.len(), 1);
        let c = &conns[0];
        assert_eq!(c.end, End::TimeWait);
        assert_eq!(c.role, Role::Active);
        assert_eq!((c.pid, c.closer_pid), (Some(42), Some(42)));
        assert_eq!(c.tid, Some(42), "the thread that made the last call");
        assert_eq!(c.connect_ms, Some(2.0));
        assert_eq!(c.ms, Some(14.0));
        assert_eq!(c.dwell_ms.established, Some(10.0));
        assert_eq!(c.dwell_ms.fin_wait2, Some(1.0));
        assert_eq!((c.sport, c.dport), (5000, 80));
    }

    /// A client killed with its connection open: `ESTABLISHED -> FIN_WAIT1`, then only the
    /// destroy, its `-> CLOSE` run skipped by the kernel (as orphans past tcp_max_orphans are
    /// aborted inside close()).
    #[test]
    fn a_destroy_without_a_seen_close_ends_the_connection_there() {
        let mut s = Stream::new();
        let (l, r) = ((CLIENT, 5000), (SERVER, 80));
        s.state(0, 0xa, Some(42), (CLIENT, 0), r, Close, SynSent);
        s.state(2, 0xa, Some(42), l, r, SynSent, Established);
        s.state(10, 0xa, Some(42), l, r, Established, FinWait1);
        let destroy = EventKind::Destroy {
            state: Some(FinWait1),
        };
        s.push(3, 0xa, None, l, r, destroy);
        let destroyed_at = s.ts;
        let (conns, t) = s.run(100);
        assert_eq!(conns.len(), 1);
        let c = &conns[0];
        assert_eq!(
            c.end,
            End::Aborted,
            "no TIME_WAIT is known to hold its port"
        );
        assert!(c.close_unseen);
        assert_eq!(c.end_ns, destroyed_at);
        assert_eq!(c.ms, Some(15.0), "its life runs to the destroy");
        assert_eq!(
            (c.pid, c.closer_pid),
            (Some(42), Some(42)),
            "it closed first"
        );
        assert_eq!(c.dwell_ms.established, Some(10.0));
        assert_eq!(c.dwell_ms.fin_wait1, None, "not seen ending");
        assert!(!c.ports_exhausted());
        assert_eq!(t.stats().ended, 1);
        let json = serde_json::to_value(c).unwrap();
        assert_eq!(json["close_unseen"], true);
        assert_eq!(json["end"], "aborted");
    }

    /// What the seen events say still decides the end; only an orderly one, which would claim
    /// the unseen close, becomes `aborted`. The destroy's state, the kernel programs' last view,
    /// is newer than the tracker's when a transition's event was lost.
    #[test]
    fn a_destroy_without_a_seen_close_is_classified_from_what_was_seen() {
        let (l, r) = ((CLIENT, 5000), (SERVER, 80));
        let rst = EventKind::ResetReceived {
            state: Some(Established),
        };
        let rtx = EventKind::Retransmit {
            state: Some(SynSent),
            err: Some(0),
        };
        /// The states a client went through, an event after them, its destroy's state, and
        /// the end wanted.
        struct Case {
            states: &'static [TcpState],
            then: Option<EventKind>,
            destroyed_in: Option<TcpState>,
            end: End,
        }
        let case = |states, then, destroyed_in, end| Case {
            states,
            then,
            destroyed_in,
            end,
        };
        let cases = [
            case(&[SynSent], Some(rtx), Some(SynSent), End::Timeout),
            case(&[SynSent, Established], Some(rst), None, End::ResetByPeer),
            case(
                &[SynSent, Established, CloseWait, LastAck],
                None,
                None,
                End::Aborted,
            ),
            case(
                &[SynSent, Established, FinWait1],
                None,
                Some(FinWait2),
                End::Aborted,
            ),
            case(&[SynSent, Established], None, Some(Close), End::Aborted),
            case(
                &[SynSent, Established],
                None,
                Some(Established),
                End::Aborted,
            ),
        ];
        for c in cases {
            let mut s = Stream::new();
            let mut old = Close;
            for &new in c.states {
                s.state(1, 0xa, Some(7), l, r, old, new);
                old = new;
            }
            if let Some(kind) = c.then {
                s.push(1, 0xa, None, l, r, kind);
            }
            let destroy = EventKind::Destroy {
                state: c.destroyed_in,
            };
            s.push(1, 0xa, None, l, r, destroy);
            let (conns, _) = s.run(100);
            let ends: Vec<_> = conns
                .iter()
                .map(|k| (k.end.clone(), k.close_unseen))
                .collect();
            let (states, destroyed_in) = (c.states, c.destroyed_in);
            assert_eq!(
                ends,
                [(c.end, true)],
                "{states:?} then destroy in {destroyed_in:?}"
            );
        }
    }

    /// The usual order, `-> CLOSE` then destroy, gives one record as before, whether the
    /// destroy comes within the wait for trailing events or long after it.
    #[test]
    fn a_destroy_after_a_seen_close_adds_no_record() {
        for destroy_after_ms in [0, 5_000] {
            let mut s = Stream::new();
            client_closes_first(&mut s, 0xa, 42, 5000);
            let destroy = s.events.pop().expect("pushed");
            s.push(
                destroy_after_ms,
                0xa,
                None,
                (CLIENT, 5000),
                (SERVER, 80),
                destroy.kind,
            );
            let (conns, t) = s.run(100);
            assert_eq!(
                conns.len(),
                1,
                "destroyed {destroy_after_ms} ms after CLOSE"
            );
            assert_eq!(conns[0].end, End::TimeWait);
            assert!(!conns[0].close_unseen);
            assert_eq!(
                conns[0].end_ns,
                s.ts - destroy_after_ms * 1_000_000,
                "at CLOSE"
            );
            assert!(
                serde_json::to_value(&conns[0])
                    .unwrap()
                    .get("close_unseen")
                    .is_none(),
                "the field is left out when false"
            );
            assert_eq!(t.stats().ended, 1);
        }
    }

    /// A socket netwatch first hears of at its destroy (closed before the trace, or evicted)
    /// gives no record: nothing is known of its life.
    #[test]
    fn a_destroy_of_an_unknown_socket_gives_no_record() {
        let mut s = Stream::new();
        let destroy = EventKind::Destroy {
            state: Some(Established),
        };
        s.push(1, 0xa, Some(3), (CLIENT, 5000), (SERVER, 80), destroy);
        let (conns, t) = s.run(100);
        assert!(conns.is_empty(), "{conns:?}");
        assert_eq!((t.stats().ended, t.stats().sockets), (0, 0));
    }

    /// A listener is not a connection, whatever state its destroy carries; nor is a socket
    /// only seen in CLOSE (a trailing reset whose socket's close came before the trace).
    #[test]
    fn a_destroy_of_a_listener_or_a_closed_socket_gives_no_record() {
        let mut s = Stream::new();
        let (l, any) = ((SERVER, 80), ("0.0.0.0", 0));
        s.state(0, 0xb, Some(7), l, any, Close, Listen);
        s.push(
            5,
            0xb,
            Some(7),
            l,
            any,
            EventKind::Destroy {
                state: Some(Listen),
            },
        );
        s.state(0, 0xc, Some(7), (SERVER, 81), any, Close, Listen);
        s.push(
            5,
            0xc,
            Some(7),
            (SERVER, 81),
            any,
            EventKind::Destroy { state: None },
        );
        let (r, c) = ((CLIENT, 6000), (SERVER, 82));
        let reset = EventKind::ResetSent {
            state: Some(Close),
            reason: None,
        };
        s.push(1, 0xd, None, c, r, reset);
        s.push(
            1,
            0xd,
            None,
            c,
            r,
            EventKind::Destroy { state: Some(Close) },
        );
        let (conns, t) = s.run(100);
        assert!(conns.is_empty(), "{conns:?}");
        assert_eq!((t.stats().ended, t.stats().sockets), (0, 0));
    }

    #[test]
    fn passive_side_that_closes_second_is_closed() {
        let mut s = Stream::new();
        let l = (SERVER, 80);
        let r = (CLIENT, 5000);
        s.state(0, 0xb, None, l, r, Listen, SynRecv);
        s.state(1, 0xb, None, l, r, SynRecv, Established);
        s.state(5, 0xb, None, l, r, Established, CloseWait);
        s.state(30, 0xb, Some(7), l, r, CloseWait, LastAck);
        s.state(1, 0xb, Some(7), l, r, LastAck, Close);
        let (conns, _) = s.run(100);
        let c = &conns[0];
        assert_eq!(c.end, End::Closed);
        assert_eq!(c.role, Role::Passive);
        assert_eq!(
            c.pid,
            Some(7),
            "owner learnt at close() applies to the whole record"
        );
        assert_eq!(c.dwell_ms.close_wait, Some(30.0));
    }

    #[test]
    fn syn_sent_outcomes() {
        let r = (SERVER, 81);
        // Refused: reset in SYN_SENT.
        let mut s = Stream::new();
        s.state(0, 1, Some(9), (CLIENT, 0), r, Close, SynSent);
        s.push(
            1,
            1,
            Some(9),
            (CLIENT, 6000),
            r,
            EventKind::ResetReceived {
                state: Some(SynSent),
            },
        );
        s.state(0, 1, Some(9), (CLIENT, 6000), r, SynSent, Close);
        // Timeout: SYN retransmitted, then closed.
        s.state(0, 2, Some(9), (CLIENT, 0), r, Close, SynSent);
        s.push(
            1000,
            2,
            Some(9),
            (CLIENT, 6001),
            r,
            EventKind::Retransmit {
                state: Some(SynSent),
                err: Some(0),
            },
        );
        s.state(1000, 2, Some(9), (CLIENT, 6001), r, SynSent, Close);
        // Aborted: closed by the app with no answer and no retransmit.
        s.state(0, 3, Some(9), (CLIENT, 0), r, Close, SynSent);
        s.state(5, 3, Some(9), (CLIENT, 6002), r, SynSent, Close);
        let (conns, _) = s.run(100);
        let ends: Vec<_> = conns.iter().map(|c| c.end.clone()).collect();
        assert_eq!(ends, [End::Refused, End::Timeout, End::Aborted]);
        assert!(conns.iter().all(|c| c.connect_ms.is_none()));
    }

    #[test]
    fn our_reset_after_close_is_waited_for() {
        // tcp_close() with unread data: -> CLOSE first, then the reset, then destroy.
        let mut s = Stream::new();
        let l = (SERVER, 80);
        let r = (CLIENT, 5000);
        s.state(0, 0xc, None, l, r, Listen, SynRecv);
        s.state(1, 0xc, None, l, r, SynRecv, Established);
        s.state(5, 0xc, Some(7), l, r, Established, Close);
        s.push(
            0,
            0xc,
            Some(7),
            l,
            r,
            EventKind::ResetSent {
                state: Some(Close),
                reason: Some("TCP_ABORT_ON_CLOSE".into()),
            },
        );
        s.push(
            0,
            0xc,
            Some(7),
            l,
            r,
            EventKind::Destroy { state: Some(Close) },
        );
        let (conns, _) = s.run(100);
        assert_eq!(
            conns[0].end,
            End::ResetByUs {
                reason: Some("TCP_ABORT_ON_CLOSE".into())
            }
        );
        assert_eq!(conns[0].end.to_string(), "reset-by-us (TCP_ABORT_ON_CLOSE)");
        // This side closed (abortively): its owner is the closer.
        assert_eq!(conns[0].closer_pid, conns[0].pid);
        assert!(conns[0].closer_pid.is_some());
    }

    #[test]
    fn reset_by_peer() {
        let mut s = Stream::new();
        let l = (CLIENT, 5000);
        let r = (SERVER, 80);
        s.state(0, 0xd, Some(3), (CLIENT, 0), r, Close, SynSent);
        s.state(1, 0xd, Some(3), l, r, SynSent, Established);
        s.push(
            4,
            0xd,
            None,
            l,
            r,
            EventKind::ResetReceived {
                state: Some(Established),
            },
        );
        s.state(0, 0xd, None, l, r, Established, Close);
        let (conns, _) = s.run(100);
        assert_eq!(conns[0].end, End::ResetByPeer);
        assert_eq!(conns[0].reset_state, Some(Established));
    }

    #[test]
    fn a_socket_older_than_the_trace_reset_by_its_peer_says_so() {
        // Its first event is the reset: netwatch never saw it open.
        let mut s = Stream::new();
        let l = (CLIENT, 5001);
        let r = (SERVER, 80);
        s.push(
            0,
            0xa1,
            Some(3),
            l,
            r,
            EventKind::ResetReceived {
                state: Some(Established),
            },
        );
        s.state(0, 0xa1, Some(3), l, r, Established, Close);
        let (conns, _) = s.run(100);
        assert_eq!(conns.len(), 1);
        assert_eq!(conns[0].end, End::ResetByPeer);
        assert_eq!(conns[0].role, Role::Unknown);
        assert_eq!(conns[0].ms, None, "its life began before the trace");
        assert_eq!(conns[0].pid, Some(3));
    }

    #[test]
    fn address_reuse_starts_a_new_life() {
        // The same kernel address carries two sockets back to back, the first never destroyed
        // as far as netwatch saw.
        let mut s = Stream::new();
        let r = (SERVER, 80);
        s.state(0, 0xe, Some(1), (CLIENT, 0), r, Close, SynSent);
        s.state(1, 0xe, Some(1), (CLIENT, 7000), r, SynSent, Established);
        s.state(1, 0xe, Some(1), (CLIENT, 7000), r, Established, FinWait1);
        s.state(1, 0xe, Some(1), (CLIENT, 7000), r, FinWait1, FinWait2);
        s.state(1, 0xe, Some(1), (CLIENT, 7000), r, FinWait2, Close);
        s.state(0, 0xe, Some(2), (CLIENT, 0), r, Close, SynSent);
        s.push(
            0,
            0xe,
            Some(2),
            (CLIENT, 7001),
            r,
            EventKind::ResetReceived {
                state: Some(SynSent),
            },
        );
        s.state(0, 0xe, Some(2), (CLIENT, 7001), r, SynSent, Close);
        let (conns, t) = s.run(100);
        assert_eq!(conns.len(), 2);
        assert_eq!(
            (conns[0].pid, conns[0].end.clone(), conns[0].sport),
            (Some(1), End::TimeWait, 7000)
        );
        assert_eq!(
            (conns[1].pid, conns[1].end.clone(), conns[1].sport),
            (Some(2), End::Refused, 7001)
        );
        assert_eq!(t.stats().sockets, 0);
    }

    #[test]
    fn a_socket_seen_mid_life_gets_no_invented_durations() {
        let mut s = Stream::new();
        let l = (CLIENT, 5000);
        let r = (SERVER, 80);
        s.state(0, 0xf, Some(5), l, r, Established, FinWait1);
        s.state(3, 0xf, Some(5), l, r, FinWait1, FinWait2);
        s.state(3, 0xf, Some(5), l, r, FinWait2, Close);
        let (conns, _) = s.run(100);
        let c = &conns[0];
        assert_eq!(c.end, End::TimeWait);
        assert_eq!(c.role, Role::Unknown);
        assert_eq!(c.ms, None);
        assert_eq!(
            c.dwell_ms.established, None,
            "its ESTABLISHED began before netwatch"
        );
        assert_eq!(c.dwell_ms.fin_wait1, Some(3.0));
    }

    #[test]
    fn eviction_is_counted() {
        let mut s = Stream::new();
        for i in 0..10u64 {
            s.state(
                1,
                0x100 + i,
                Some(1),
                (CLIENT, 0),
                (SERVER, 80),
                Close,
                SynSent,
            );
        }
        let (_, t) = s.run(4);
        assert_eq!(t.stats().sockets, 4);
        assert_eq!(t.stats().evicted, 6);
    }

    /// A retransmission of a socket that has an owner names no one new: the pid it carries is
    /// whoever the softirq interrupted, and its name is not even looked up.
    #[test]
    fn retransmits_of_an_owned_socket_look_up_no_owner() {
        let mut s = Stream::new();
        let (l, r) = ((CLIENT, 4000), (SERVER, 80));
        s.state(0, 0x1, Some(1), (CLIENT, 0), r, Close, SynSent);
        s.state(1, 0x1, Some(1), l, r, SynSent, Established);
        for bystander in 2..10 {
            let kind = EventKind::Retransmit {
                state: Some(Established),
                err: Some(0),
            };
            s.push(1, 0x1, Some(bystander), l, r, kind);
        }
        let mut t = Tracker::new(16);
        for ev in &s.events {
            t.on_event(ev, &mut |_| {});
        }
        assert_eq!(t.names.list.len(), 1, "only the owner's name");
        let sock = t.socks.get(0x1).expect("tracked");
        assert_eq!(sock.retransmits, 8);
        assert_eq!(sock.owner.map(|o| o.pid.get()), Some(1));
    }

    /// A host that starts a new container per connection: the owner names table keeps only
    /// what live sockets refer to, and they still read their own names after every sweep.
    #[test]
    fn owner_names_stay_bounded_under_churn_of_distinct_owners() {
        let mut s = Stream::new();
        let r = (SERVER, 80);
        s.state(0, 0x1, Some(1), (CLIENT, 0), r, Close, SynSent);
        s.state(1, 0x1, Some(1), (CLIENT, 4000), r, SynSent, Established);
        s.state(1, 0x1, Some(1), (CLIENT, 4000), r, Established, CloseWait);
        s.events.last_mut().expect("pushed").cgroup_id = Some(7);
        let churn = 5 * NAMES_SWEEP_AT as u64;
        let mut t = Tracker::new(1000);
        let mut ended = vec![];
        let mut most_names = 0;
        for ev in &s.events {
            t.on_event(ev, &mut |_| {});
        }
        for i in 0..churn {
            let sock = 0x1000 + i;
            let mut life = Stream::new();
            life.ts = s.ts + i * 10_000_000;
            let pid = Some(100 + i as u32);
            let l = (CLIENT, 5000 + (i % 1000) as u16);
            life.state(0, sock, pid, (CLIENT, 0), r, Close, SynSent);
            life.state(1, sock, pid, l, r, SynSent, Established);
            life.state(1, sock, pid, l, r, Established, FinWait1);
            life.state(1, sock, pid, l, r, FinWait1, Close);
            life.push(0, sock, pid, l, r, EventKind::Destroy { state: None });
            for ev in &mut life.events {
                ev.cgroup_id = Some(1000 + i);
                t.on_event(ev, &mut |Fact::Ended(c)| ended.push(*c));
            }
            most_names = most_names.max(t.names.list.len());
        }
        assert_eq!(ended.len() as u64, churn);
        assert!(
            ended
                .iter()
                .enumerate()
                .all(|(i, c)| c.cgroup_id == Some(1000 + i as u64)
                    && c.comm.as_deref() == Some(format!("proc{}", 100 + i).as_str())
                    && c.closer_comm == c.comm),
            "each connection keeps its own owner's names"
        );
        assert!(
            most_names <= NAMES_SWEEP_AT + 1,
            "the table grew to {most_names} names"
        );
        let keeper = t
            .live_sockets()
            .find(|l| l.sock == 0x1)
            .expect("still open");
        assert_eq!((keeper.comm, keeper.cgroup_id), (Some("proc1"), Some(7)));
    }

    #[test]
    fn close_wait_sockets_and_their_ages() {
        let mut s = Stream::new();
        let l = (SERVER, 80);
        // Neither counts: a socket first seen leaving CLOSE_WAIT for its successor state,
        // LAST_ACK (it predates the trace), nor one seen entering CLOSE_WAIT and leaving it.
        s.state(1, 0x300, Some(78), l, (CLIENT, 5002), CloseWait, LastAck);
        s.state(1, 0x301, None, l, (CLIENT, 5003), Listen, SynRecv);
        s.state(1, 0x301, None, l, (CLIENT, 5003), SynRecv, Established);
        s.state(
            1,
            0x301,
            Some(79),
            l,
            (CLIENT, 5003),
            Established,
            CloseWait,
        );
        s.state(1, 0x301, Some(79), l, (CLIENT, 5003), CloseWait, LastAck);
        for (i, sport) in [(0u64, 5000u16), (1, 5001)] {
            s.state(0, 0x200 + i, None, l, (CLIENT, sport), Listen, SynRecv);
            s.state(1, 0x200 + i, None, l, (CLIENT, sport), SynRecv, Established);
            s.state(
                1,
                0x200 + i,
                Some(77),
                l,
                (CLIENT, sport),
                Established,
                CloseWait,
            );
        }
        let (_, t) = s.run(100);
        assert!(t.socks.contains(0x300) && t.socks.contains(0x301));
        let now = t.now_ns() + 5_000_000_000;
        let mut cw = t.close_waits(now);
        cw.sort_by_key(|c| c.dport);
        assert_eq!(cw.len(), 2);
        assert_eq!(cw[0].pid, Some(77));
        assert_eq!(cw[1].age_ms, 5000.0);
        assert_eq!(cw[0].age_ms, 5002.0);
        assert!(!cw[0].at_least);
    }
}

#[cfg(test)]
mod size {
    /// The tracked-socket record stays small (see the README's memory figure), and a slot
    /// of [`super::Socks`] costs no more than the socket it holds.
    #[test]
    fn a_tracked_socket_fits_in_152_bytes() {
        assert!(
            size_of::<super::Sock>() <= 152,
            "{}",
            size_of::<super::Sock>()
        );
        assert_eq!(size_of::<Option<super::Sock>>(), size_of::<super::Sock>());
    }
}
