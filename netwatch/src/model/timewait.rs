//! TIME_WAIT as the kernel holds it: every timewait socket followed by its 4-tuple and network
//! namespace, from its birth until the kernel drops it, and the port-exhaustion forecast made
//! from that population.
//!
//! Why per tuple: the kernel never reports a transition into TIME_WAIT, and a timewait socket
//! often dies long before its 60 s. A new connection on the same 4-tuple kills it (a SYN the
//! server accepts, or a connect() that reuses the port under `tcp_tw_reuse`); births past
//! `tcp_max_tw_buckets` are refused (TCPTimeWaitOverflow); a reset kills it unless
//! `tcp_rfc1337` is set. Counting "births of the last 60 s" overcounts by ten times on a server
//! whose clients reuse their ports. So each birth is kept under its tuple; a new connection on
//! that tuple ends it; the namespace's cap refuses it; and what no event shows (a reset, an
//! overflow the cap did not predict) is found by reconciling with the kernel's own list
//! (sock_diag, [`Observed`]), where the difference is counted as drift, never hidden.
//!
//! Each command keeps its own table with its own tag (the process dimension it shows), so
//! `report`, `top` and `serve` compute the same numbers with the same code.
use std::{
    cmp::Reverse,
    collections::{BinaryHeap, HashMap, HashSet, VecDeque},
    hash::{Hash, Hasher},
    net::{IpAddr, Ipv4Addr, SocketAddr},
};

use foldhash::fast::RandomState;
use serde::{Deserialize, Serialize};

use crate::model::{
    event::{Endpoint, Event, EventKind, TcpState},
    tracker::{Connection, Role},
};

/// Linux's TIME_WAIT length (`TCP_TIMEWAIT_LEN`, fixed at 60 s in mainline kernels).
pub const TIME_WAIT_NS: u64 = 60_000_000_000;
/// How long a close and a new connection on its tuple are remembered. The tracker reports a
/// finished connection up to [`crate::model::tracker::FINISH_DELAY_NS`] after its close (or at
/// its destroy), so a client that reuses the port at once can start the new connection before
/// the birth reaches this table: the birth then arrives already dead.
const PENDING_NS: u64 = 10_000_000_000;
/// Births per second are measured over this window (or since the destination's first birth).
const RATE_WINDOW_NS: u64 = 10_000_000_000;
/// One population sample per destination this often, [`HISTORY_LEN`] kept (5 minutes).
pub const HISTORY_STEP_NS: u64 = 5_000_000_000;
pub const HISTORY_LEN: usize = 60;
/// Destinations followed one by one; past this they share one row.
const MAX_DESTINATIONS: usize = 4096;
/// A birth from a connection older than this (or older than netwatch) is long-lived: many of
/// them within [`BURST_S`] seconds are a mass close, not churn.
const LONG_LIVED_MS: f64 = 5_000.0;
const BURST_S: u64 = 3;
/// The label of the shared row past [`MAX_DESTINATIONS`].
pub const OTHER_DESTINATIONS: &str = "(other destinations)";

/// The sysctls the population and the forecast depend on, per network namespace (each has
/// its own), read at start-up for netwatch's own and at each reconciliation for the others,
/// and recorded with the events so that a replay forecasts the same.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostSettings {
    /// `net.ipv4.ip_local_port_range`.
    pub port_range: (u16, u16),
    /// `net.ipv4.tcp_tw_reuse`: 0 off, 1 on, 2 loopback only (the default).
    pub tw_reuse: u8,
    /// `net.ipv4.ip_local_reserved_ports`: ranges connect() never picks.
    #[serde(default)]
    pub reserved_ports: Vec<(u16, u16)>,
    /// `net.ipv4.tcp_max_tw_buckets`: births past this many timewait sockets are refused;
    /// `None` when unknown (a recording made before it was read).
    #[serde(default)]
    pub max_tw_buckets: Option<u64>,
}

impl Default for HostSettings {
    fn default() -> Self {
        Self {
            port_range: (32768, 60999),
            tw_reuse: 2,
            reserved_ports: Vec::new(),
            max_tw_buckets: None,
        }
    }
}

impl HostSettings {
    /// Ports in the ephemeral range.
    pub fn ports(&self) -> u32 {
        u32::from(self.port_range.1.saturating_sub(self.port_range.0)) + 1
    }

    /// Ports of the range connect() may pick: less the reserved ones.
    pub fn usable_ports(&self) -> u32 {
        let (lo, hi) = self.port_range;
        let mut reserved: Vec<(u16, u16)> = self
            .reserved_ports
            .iter()
            .map(|&(a, b)| (a.max(lo), b.min(hi)))
            .filter(|(a, b)| a <= b)
            .collect();
        reserved.sort_unstable();
        // Overlapping ranges count once.
        let (mut taken, mut next) = (0u32, lo as u32);
        for (a, b) in reserved {
            let a = (a as u32).max(next);
            if a <= b as u32 {
                taken += b as u32 - a + 1;
                next = b as u32 + 1;
            }
        }
        self.ports().saturating_sub(taken)
    }

    /// Whether connect() may take over a TIME_WAIT port towards `remote` (1, or 2 and
    /// loopback).
    pub fn tw_reuse_applies(&self, remote: IpAddr) -> bool {
        self.tw_reuse == 1 || (self.tw_reuse == 2 && remote.to_canonical().is_loopback())
    }

    fn in_ephemeral_range(&self, port: u16) -> bool {
        (self.port_range.0..=self.port_range.1).contains(&port)
    }
}

/// A timewait socket's identity: its namespace and 4-tuple, seen from this host.
///
/// Kept compact (44 bytes, no enum to match) and hashed in three words: every state change
/// looks its tuple up here, and `SocketAddr` pairs cost as much to build, hash and compare as
/// the rest of the table's work. Ordered as the `SocketAddr` pairs were.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Tuple {
    pub netns: u32,
    local: Side,
    remote: Side,
}

/// One end of a [`Tuple`]: IPv4 (in the first 4 bytes) or IPv6, and the port. The derived
/// order is `SocketAddr`'s: IPv4 before IPv6, then the address, then the port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Side {
    v6: bool,
    addr: [u8; 16],
    port: u16,
}

impl Side {
    /// An IPv4-mapped IPv6 address is its IPv4 address, as the kernel's tuples hold it.
    #[inline]
    fn new(ip: IpAddr, port: u16) -> Side {
        match ip.to_canonical() {
            IpAddr::V4(a) => {
                let mut addr = [0; 16];
                addr[..4].copy_from_slice(&a.octets());
                Side {
                    v6: false,
                    addr,
                    port,
                }
            }
            IpAddr::V6(a) => Side {
                v6: true,
                addr: a.octets(),
                port,
            },
        }
    }

    fn ip(&self) -> IpAddr {
        if self.v6 {
            IpAddr::V6(self.addr.into())
        } else {
            IpAddr::V4(Ipv4Addr::new(
                self.addr[0],
                self.addr[1],
                self.addr[2],
                self.addr[3],
            ))
        }
    }

    fn socket(&self) -> SocketAddr {
        SocketAddr::new(self.ip(), self.port)
    }

    /// The address's two halves.
    #[inline]
    fn words(&self) -> (u64, u64) {
        let (lo, hi) = self.addr.split_at(8);
        (
            u64::from_ne_bytes(lo.try_into().expect("8 bytes")),
            u64::from_ne_bytes(hi.try_into().expect("8 bytes")),
        )
    }
}

impl Hash for Tuple {
    /// Equal tuples hash alike; the address family needs no word of its own (an IPv4 address
    /// leaves its last 12 bytes zero).
    #[inline]
    fn hash<H: Hasher>(&self, h: &mut H) {
        let ((l0, l1), (r0, r1)) = (self.local.words(), self.remote.words());
        h.write_u64(l0 ^ r0.rotate_left(32));
        h.write_u64(l1 ^ r1.rotate_left(32));
        h.write_u64(
            u64::from(self.netns) << 32
                | u64::from(self.local.port) << 16
                | u64::from(self.remote.port),
        );
    }
}

impl Tuple {
    #[inline]
    pub fn new(netns: Option<u32>, local: SocketAddr, remote: SocketAddr) -> Self {
        Self::of(
            netns,
            (local.ip(), local.port()),
            (remote.ip(), remote.port()),
        )
    }

    /// The same from addresses and ports apart, as events hold them.
    #[inline]
    fn of(netns: Option<u32>, local: (IpAddr, u16), remote: (IpAddr, u16)) -> Self {
        Self {
            netns: netns.unwrap_or(0),
            local: Side::new(local.0, local.1),
            remote: Side::new(remote.0, remote.1),
        }
    }

    fn of_connection(c: &Connection) -> Self {
        Self::of(c.netns, (c.saddr, c.sport), (c.daddr, c.dport))
    }

    pub fn local(&self) -> SocketAddr {
        self.local.socket()
    }

    pub fn remote(&self) -> SocketAddr {
        self.remote.socket()
    }
}

/// Where TIME_WAITs pile up: for connections we opened, the remote endpoint (they hold our
/// ephemeral ports towards it); for connections we accepted, our own listening endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Destination {
    pub netns: u32,
    /// We connected: the TIME_WAITs hold ephemeral ports.
    pub active: bool,
    pub endpoint: SocketAddr,
}

impl Destination {
    pub fn label(&self) -> String {
        let e = Endpoint(self.endpoint.ip(), self.endpoint.port()).to_string();
        if self.active {
            e
        } else {
            format!("{e} (server side)")
        }
    }
}

/// The kernel's own list of one namespace's timewait sockets, with its settings: what a
/// reconciliation compares the table with (recorded, so a replay reconciles alike).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Observed {
    pub netns: u32,
    /// CLOCK_MONOTONIC ns when the dump started: births after it may be missing from it.
    pub taken_ns: u64,
    pub settings: HostSettings,
    /// Timewait sockets (substate TIME_WAIT or FIN_WAIT2): local, remote, ms left.
    pub sockets: Vec<(SocketAddr, SocketAddr, u32)>,
    /// The namespace's TCPTimeWaitOverflow counter, when readable.
    pub kernel_overflows: Option<u64>,
}

/// How the table's population came and went.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    /// Connections closed first by this host: each asked the kernel for a timewait socket.
    pub births: u64,
    /// Births refused because the namespace held `tcp_max_tw_buckets` timewait sockets.
    pub overflowed: u64,
    /// Ended early by a new connection on the same 4-tuple.
    pub reused: u64,
    /// Ended by their timer.
    pub expired: u64,
    /// Reconciliations done (one per namespace dump).
    pub reconciliations: u64,
    /// Drift found by reconciliation: followed here, gone from the kernel's list (a reset, or
    /// an end no event shows).
    pub drift_gone: u64,
    /// Drift: in the kernel's list, born after netwatch started, never seen born here (a lost
    /// event, or a connection the tracker evicted).
    pub drift_unseen: u64,
    /// In the kernel's list already when netwatch started: taken over at the first dump.
    pub adopted: u64,
}

/// One second's births towards a destination.
#[derive(Clone, Copy, Debug, Default)]
struct Second {
    sec: u64,
    births: u32,
    long_lived: u32,
}

/// What is kept per destination.
#[derive(Clone, Debug)]
struct DestStats {
    dest: Option<Destination>,
    /// [`Destination::label`], or [`OTHER_DESTINATIONS`].
    label: String,
    /// The last birth or taken-over socket: a destination quiet for a minute with nothing
    /// alive gives its slot back.
    last_active_ns: u64,
    /// A slot given back, waiting for a new destination.
    free: bool,
    alive: u64,
    births: u64,
    first_birth_ns: Option<u64>,
    /// Alive sockets per local address: each local address has its own ports.
    local_addrs: FastMap<IpAddr, u64>,
    /// Births per second over the last minute, indexed by second modulo 64.
    seconds: [Second; 64],
    /// Population samples, every [`HISTORY_STEP_NS`], oldest first.
    history: VecDeque<u32>,
}

impl DestStats {
    fn new(dest: Option<Destination>) -> Self {
        Self {
            label: dest
                .as_ref()
                .map_or_else(|| OTHER_DESTINATIONS.to_string(), Destination::label),
            dest,
            last_active_ns: 0,
            free: false,
            alive: 0,
            births: 0,
            first_birth_ns: None,
            local_addrs: FastMap::default(),
            seconds: [Second::default(); 64],
            history: VecDeque::new(),
        }
    }

    fn note_birth(&mut self, born_ns: u64, long_lived: bool) {
        self.births += 1;
        self.last_active_ns = self.last_active_ns.max(born_ns);
        self.first_birth_ns = Some(self.first_birth_ns.map_or(born_ns, |f| f.min(born_ns)));
        let sec = born_ns / 1_000_000_000;
        let s = &mut self.seconds[(sec % 64) as usize];
        if s.sec != sec {
            *s = Second {
                sec,
                ..Second::default()
            };
        }
        s.births += 1;
        s.long_lived += u32::from(long_lived);
    }

    /// Births in the seconds `from..=to`.
    fn births_in(&self, from: u64, to: u64) -> (u64, u64) {
        self.seconds
            .iter()
            .filter(|s| s.births > 0 && (from..=to).contains(&s.sec))
            .fold((0, 0), |(b, l), s| {
                (b + u64::from(s.births), l + u64::from(s.long_lived))
            })
    }

    /// Births per second over the last [`RATE_WINDOW_NS`], or since the first birth when
    /// that is more recent (at least a second): 0 once births stop.
    fn per_second(&self, now_ns: u64) -> f64 {
        let Some(first) = self.first_birth_ns else {
            return 0.0;
        };
        let now_sec = now_ns / 1_000_000_000;
        let (births, span_ns) = if first + RATE_WINDOW_NS >= now_ns {
            // Every birth so far, over the time since the first.
            (self.births, now_ns.saturating_sub(first))
        } else {
            // The whole seconds of the window, and the time from the first of them to now.
            let from_sec = (now_ns - RATE_WINDOW_NS) / 1_000_000_000;
            (
                self.births_in(from_sec, now_sec).0,
                now_ns - from_sec * 1_000_000_000,
            )
        };
        births as f64 / (span_ns as f64 / 1e9).max(1.0)
    }

    fn pattern(&self, now_ns: u64) -> Pattern {
        let now_sec = now_ns / 1_000_000_000;
        let from = now_sec.saturating_sub(59);
        let (births, long_lived) = self.births_in(from, now_sec);
        if births == 0 {
            return Pattern::Quiet;
        }
        let burst = (from..=now_sec)
            .map(|s| self.births_in(s, s + BURST_S - 1).0)
            .max()
            .unwrap_or(0);
        if births >= 20 && burst * 10 >= births * 8 && long_lived * 2 >= births {
            Pattern::MassClose
        } else {
            Pattern::Churn
        }
    }
}

/// How the TIME_WAITs of a destination were born in the last minute.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Pattern {
    /// None were.
    Quiet,
    /// Short connections opened and closed at a rate: pooling or keep-alive is the fix.
    Churn,
    /// Most at once, from long-lived connections: a restart or a deploy closed them; the
    /// population drains by itself within 60 s.
    MassClose,
}

/// Which limit a destination reaches first at its current birth rate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Binding {
    /// Nothing: the steady population fits every limit (or no births now).
    None,
    /// Server-side TIME_WAITs hold no ephemeral port.
    ServerSide,
    /// connect() takes TIME_WAIT ports over after a second: they do not pile up.
    TwReuse,
    /// The destination's ephemeral ports run out: connect() fails with EADDRNOTAVAIL.
    Ports,
    /// The namespace's `tcp_max_tw_buckets` is reached first: later births are refused
    /// (TCPTimeWaitOverflow), which frees ports but loses TIME_WAIT's protection.
    MaxTwBuckets,
}

/// The forecast for one destination.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Forecast {
    pub binding: Binding,
    /// Seconds until the binding limit is reached at the current rate; `None` when never.
    pub in_s: Option<f64>,
    /// 4-tuples this destination can use: usable ephemeral ports times local addresses.
    pub port_limit: Option<u64>,
    /// The namespace's `tcp_max_tw_buckets`, when known.
    pub max_tw_buckets: Option<u64>,
}

impl Forecast {
    /// The seconds until connect() fails, when the ports bind first.
    pub fn exhaustion_in_s(&self) -> Option<f64> {
        (self.binding == Binding::Ports)
            .then_some(self.in_s)
            .flatten()
    }

    /// One phrase: "ports run out in ~12 s", "fits the range", ...
    pub fn phrase(&self) -> String {
        match (self.binding, self.in_s) {
            (Binding::Ports, Some(s)) => format!("ports run out in ~{s:.0} s"),
            (Binding::Ports, None) => "ports exhausted".to_string(),
            (Binding::MaxTwBuckets, s) => format!(
                "tcp_max_tw_buckets ({}) reached{}: later births are dropped",
                self.max_tw_buckets.unwrap_or(0),
                s.map_or_else(String::new, |s| format!(" in ~{s:.0} s"))
            ),
            (Binding::TwReuse, _) => "tcp_tw_reuse applies".to_string(),
            (Binding::ServerSide, _) => "server side: no ephemeral ports".to_string(),
            (Binding::None, _) => "fits the range".to_string(),
        }
    }
}

/// One destination as a report, a frame or a scrape shows it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DestinationView {
    pub destination: String,
    #[serde(skip)]
    pub key: Option<Destination>,
    pub births: u64,
    /// Births per second, over the last 10 s.
    pub per_second: f64,
    /// Timewait sockets alive now.
    pub population: u64,
    pub forecast: Forecast,
    /// Seconds until connect() fails for want of a port (the forecast, when ports bind).
    pub exhaustion_in_s: Option<f64>,
    pub pattern: Pattern,
    /// The population every 5 s over the last minutes, oldest first.
    pub history: Vec<u32>,
}

struct Entry<T> {
    born_ns: u64,
    expires_ns: u64,
    dest: u32,
    tag: T,
}

/// Per namespace: the population the cap applies to, and what the kernel says.
#[derive(Clone, Debug, Default)]
struct NetnsStats {
    alive: u64,
    settings: Option<HostSettings>,
    /// TCPTimeWaitOverflow at the first and the last reconciliation.
    kernel_overflows: Option<(u64, u64)>,
}

/// The kernel's overflow count for one namespace, since netwatch first read it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct KernelOverflow {
    pub netns: u32,
    pub overflows: u64,
}

/// A map on the per-event or per-birth path: foldhash (seeded per process) rather than
/// SipHash.
type FastMap<K, V> = HashMap<K, V, RandomState>;

/// The table. `T` is the caller's process dimension (`()` when it needs none).
pub struct TimeWaits<T> {
    alive: FastMap<Tuple, Entry<T>>,
    expiry: BinaryHeap<Reverse<(u64, Tuple)>>,
    /// Tuples closed from FIN_WAIT or CLOSING whose birth has not arrived yet: (close time,
    /// time a new connection on the tuple was seen).
    pending: FastMap<Tuple, (u64, Option<u64>)>,
    pending_order: VecDeque<(u64, Tuple)>,
    dests: Vec<DestStats>,
    dest_ids: FastMap<Destination, u32>,
    /// Slots of destinations that went quiet, for new ones.
    free_dests: Vec<u32>,
    /// The shared row past [`MAX_DESTINATIONS`], once made.
    other_dest: Option<u32>,
    by_tag: FastMap<(u32, T), u64>,
    netns: FastMap<u32, NetnsStats>,
    default_settings: HostSettings,
    started_ns: Option<u64>,
    now_ns: u64,
    next_sample_ns: u64,
    /// Before this time [`TimeWaits::advance`] has nothing to do: no timer fires, no pending
    /// close is old enough to forget, no sample is due. Lowered by every timer and pending
    /// close added, so that most events (a microsecond apart in a churn) skip the three
    /// checks.
    quiet_until: u64,
    pub counts: Counts,
}

impl<T: Clone + Eq + Hash + Default> TimeWaits<T> {
    /// `settings`: netwatch's own namespace's, used for a namespace not reconciled yet.
    pub fn new(settings: HostSettings) -> Self {
        Self {
            alive: FastMap::default(),
            expiry: BinaryHeap::new(),
            pending: FastMap::default(),
            pending_order: VecDeque::new(),
            dests: Vec::new(),
            dest_ids: FastMap::default(),
            free_dests: Vec::new(),
            other_dest: None,
            by_tag: FastMap::default(),
            netns: FastMap::default(),
            default_settings: settings,
            started_ns: None,
            now_ns: 0,
            next_sample_ns: 0,
            quiet_until: 0,
            counts: Counts::default(),
        }
    }

    /// The time the run started: adopted sockets born before it are not drift.
    pub fn set_start(&mut self, started_ns: u64) {
        self.started_ns = Some(started_ns);
    }

    pub fn settings(&self, netns: u32) -> &HostSettings {
        self.netns
            .get(&netns)
            .and_then(|n| n.settings.as_ref())
            .unwrap_or(&self.default_settings)
    }

    /// Every event: a close from FIN_WAIT or CLOSING announces a birth; a new connection on a
    /// tuple ends its timewait socket.
    pub fn on_event(&mut self, ev: &Event) {
        let EventKind::State {
            old_state,
            new_state,
            ..
        } = &ev.kind
        else {
            return;
        };
        if ev.sport == 0 || ev.dport == 0 {
            return;
        }
        let tuple = Tuple::of(ev.netns, (ev.saddr, ev.sport), (ev.daddr, ev.dport));
        match (old_state, new_state) {
            (
                Some(TcpState::FinWait1 | TcpState::FinWait2 | TcpState::Closing),
                Some(TcpState::Close),
            ) => {
                self.pending.insert(tuple, (ev.ts_ns, None));
                self.pending_order.push_back((ev.ts_ns, tuple));
                self.quiet_until = self.quiet_until.min(ev.ts_ns.saturating_add(PENDING_NS));
            }
            (_, Some(TcpState::SynSent | TcpState::SynRecv | TcpState::Established)) => {
                if let Some(e) = self.alive.get(&tuple)
                    && e.born_ns < ev.ts_ns
                {
                    self.counts.reused += 1;
                    self.remove(&tuple);
                }
                if let Some(p) = self.pending.get_mut(&tuple)
                    && p.0 < ev.ts_ns
                {
                    p.1 = Some(ev.ts_ns);
                }
            }
            _ => {}
        }
        self.advance(ev.ts_ns);
    }

    /// A connection this host closed first: its timewait socket is born, unless the
    /// namespace is at its cap or a new connection on its tuple already came.
    pub fn born(&mut self, c: &Connection, tag: T) {
        let tuple = Tuple::of_connection(c);
        let born_ns = c.end_ns;
        let active = c.role != Role::Passive;
        let dest = self.dest_id(Destination {
            netns: tuple.netns,
            active,
            endpoint: if active {
                tuple.remote()
            } else {
                tuple.local()
            },
        });
        self.counts.births += 1;
        let long_lived = c.ms.is_none_or(|ms| ms >= LONG_LIVED_MS);
        self.dests[dest as usize].note_birth(born_ns, long_lived);
        if let Some((_, Some(reused_at))) = self.pending.remove(&tuple)
            && reused_at > born_ns
        {
            self.counts.reused += 1;
            return;
        }
        if born_ns.saturating_add(TIME_WAIT_NS) <= self.now_ns {
            self.counts.expired += 1;
            return;
        }
        if self.alive.contains_key(&tuple) {
            // A second birth on a tuple whose first we still hold: the kernel replaced it.
            self.counts.reused += 1;
            self.remove(&tuple);
        }
        let cap = self.settings(tuple.netns).max_tw_buckets;
        let in_netns = self.netns.get(&tuple.netns).map_or(0, |n| n.alive);
        if cap.is_some_and(|cap| in_netns >= cap) {
            self.counts.overflowed += 1;
            return;
        }
        self.insert(tuple, born_ns, born_ns + TIME_WAIT_NS, dest, tag);
    }

    /// Brings the table to `now_ns`: timers fire, old pending closes are forgotten, and the
    /// population is sampled for the history.
    pub fn advance(&mut self, now_ns: u64) {
        if now_ns <= self.now_ns {
            return;
        }
        self.now_ns = now_ns;
        if now_ns < self.quiet_until {
            return;
        }
        while let Some(&Reverse((at, tuple))) = self.expiry.peek() {
            if at > now_ns {
                break;
            }
            self.expiry.pop();
            if self.alive.get(&tuple).is_some_and(|e| e.expires_ns == at) {
                self.counts.expired += 1;
                self.remove(&tuple);
            }
        }
        while let Some(&(at, tuple)) = self.pending_order.front() {
            if now_ns.saturating_sub(at) < PENDING_NS {
                break;
            }
            self.pending_order.pop_front();
            if self.pending.get(&tuple).is_some_and(|p| p.0 == at) {
                self.pending.remove(&tuple);
            }
        }
        if self.next_sample_ns == 0 {
            self.next_sample_ns = now_ns + HISTORY_STEP_NS;
        }
        while now_ns >= self.next_sample_ns {
            for d in &mut self.dests {
                if d.history.len() == HISTORY_LEN {
                    d.history.pop_front();
                }
                d.history
                    .push_back(u32::try_from(d.alive).unwrap_or(u32::MAX));
            }
            self.next_sample_ns += HISTORY_STEP_NS;
            self.recycle_quiet_destinations(now_ns);
        }
        self.quiet_until = self.next_due_ns();
    }

    /// When [`TimeWaits::advance`] next has work: the first timer, the first pending close
    /// turning old enough to forget, or the next sample.
    fn next_due_ns(&self) -> u64 {
        let timer = self.expiry.peek().map_or(u64::MAX, |Reverse((at, _))| *at);
        let pending = self
            .pending_order
            .front()
            .map_or(u64::MAX, |(at, _)| at.saturating_add(PENDING_NS));
        timer.min(pending).min(self.next_sample_ns)
    }

    /// Gives back the slots of destinations with nothing alive and no birth for a minute, so
    /// that a long run on a host where peers come and go never fills [`MAX_DESTINATIONS`].
    fn recycle_quiet_destinations(&mut self, now_ns: u64) {
        for (i, d) in self.dests.iter_mut().enumerate() {
            if d.free || d.alive > 0 || now_ns.saturating_sub(d.last_active_ns) < TIME_WAIT_NS {
                continue;
            }
            if let Some(dest) = d.dest.take() {
                self.dest_ids.remove(&dest);
                *d = DestStats::new(None);
                d.free = true;
                self.free_dests.push(i as u32);
            }
        }
    }

    /// Compares the table with the kernel's list of one namespace and takes the kernel's
    /// word: sockets followed here but gone there are dropped, sockets there but not here are
    /// taken over (only when `adopt`: a run that filters cannot tell whether they belong to
    /// it). Differences are counted as drift.
    pub fn reconcile(&mut self, obs: &Observed, adopt: bool) {
        self.counts.reconciliations += 1;
        let n = self.netns.entry(obs.netns).or_default();
        n.settings = Some(obs.settings.clone());
        if let Some(k) = obs.kernel_overflows {
            n.kernel_overflows = Some((n.kernel_overflows.map_or(k, |(first, _)| first), k));
        }
        let listed: HashSet<Tuple, RandomState> = obs
            .sockets
            .iter()
            .map(|&(l, r, _)| Tuple::new(Some(obs.netns), l, r))
            .collect();
        let gone: Vec<Tuple> = self
            .alive
            .iter()
            .filter(|(t, e)| {
                t.netns == obs.netns && e.born_ns < obs.taken_ns && !listed.contains(t)
            })
            .map(|(t, _)| *t)
            .collect();
        self.counts.drift_gone += gone.len() as u64;
        for t in &gone {
            self.remove(t);
        }
        if !adopt {
            return;
        }
        let started = self.started_ns.unwrap_or(0);
        let (mut local_uses, mut remote_uses) = (FastMap::default(), FastMap::default());
        for &(local, remote, _) in &obs.sockets {
            *local_uses.entry(local.port()).or_insert(0u32) += 1;
            *remote_uses.entry(remote.port()).or_insert(0u32) += 1;
        }
        for &(local, remote, left_ms) in &obs.sockets {
            let tuple = Tuple::new(Some(obs.netns), local, remote);
            if self.alive.contains_key(&tuple) || self.pending.contains_key(&tuple) {
                continue;
            }
            let expires_ns = obs.taken_ns + u64::from(left_ms) * 1_000_000;
            if expires_ns <= self.now_ns {
                continue;
            }
            let born_ns = expires_ns.saturating_sub(TIME_WAIT_NS);
            // A port in the ephemeral range is ours: we connected.
            // Which side connected: the service's port is the one many of the namespace's
            // timewait sockets share; when that does not tell, the one whose port is in the
            // ephemeral range, or the higher port (services listen on low ones).
            let (l, r) = (
                local_uses.get(&local.port()).copied().unwrap_or(0),
                remote_uses.get(&remote.port()).copied().unwrap_or(0),
            );
            let active = match (
                l.cmp(&r),
                obs.settings.in_ephemeral_range(local.port()),
                obs.settings.in_ephemeral_range(remote.port()),
            ) {
                (std::cmp::Ordering::Less, _, _) => true,
                (std::cmp::Ordering::Greater, _, _) => false,
                (_, true, false) => true,
                (_, false, true) => false,
                _ => local.port() > remote.port(),
            };
            let dest = self.dest_id(Destination {
                netns: obs.netns,
                active,
                endpoint: if active {
                    tuple.remote()
                } else {
                    tuple.local()
                },
            });
            if born_ns >= started {
                self.counts.drift_unseen += 1;
            } else {
                self.counts.adopted += 1;
            }
            self.insert(tuple, born_ns, expires_ns, dest, T::default());
        }
    }

    /// Timewait sockets alive now.
    pub fn population(&self) -> u64 {
        self.alive.len() as u64
    }

    /// Alive sockets per (destination label, tag).
    pub fn alive_by_tag(&self) -> impl Iterator<Item = (&str, &T, u64)> + '_ {
        self.by_tag
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|((d, t), n)| (self.dests[*d as usize].label.as_str(), t, *n))
    }

    /// The kernel's TCPTimeWaitOverflow per namespace since netwatch first read it.
    pub fn kernel_overflows(&self) -> Vec<KernelOverflow> {
        let mut v: Vec<KernelOverflow> = self
            .netns
            .iter()
            .filter_map(|(ns, n)| {
                n.kernel_overflows.map(|(first, last)| KernelOverflow {
                    netns: *ns,
                    overflows: last.saturating_sub(first),
                })
            })
            .filter(|k| k.overflows > 0)
            .collect();
        v.sort_by_key(|k| k.netns);
        v
    }

    /// Every destination with births or sockets, busiest first, with its forecast.
    pub fn destinations(&self) -> Vec<DestinationView> {
        let now = self.now_ns;
        // Each namespace's birth rate and population, for its cap.
        let mut per_netns: HashMap<u32, f64> = HashMap::new();
        for d in &self.dests {
            if let Some(dest) = &d.dest {
                *per_netns.entry(dest.netns).or_default() += d.per_second(now);
            }
        }
        let mut out: Vec<DestinationView> = self
            .dests
            .iter()
            .filter(|d| !d.free)
            .map(|d| {
                let per_second = d.per_second(now);
                let forecast = match &d.dest {
                    Some(dest) => {
                        let netns_alive = self.netns.get(&dest.netns).map_or(0, |n| n.alive);
                        forecast(
                            dest,
                            self.settings(dest.netns),
                            d.alive,
                            per_second,
                            d.local_addrs.len().max(1) as u64,
                            netns_alive,
                            per_netns.get(&dest.netns).copied().unwrap_or(0.0),
                        )
                    }
                    None => Forecast {
                        binding: Binding::None,
                        in_s: None,
                        port_limit: None,
                        max_tw_buckets: None,
                    },
                };
                DestinationView {
                    exhaustion_in_s: forecast.exhaustion_in_s(),
                    destination: d.label.clone(),
                    key: d.dest.clone(),
                    births: d.births,
                    per_second,
                    population: d.alive,
                    forecast,
                    pattern: d.pattern(now),
                    history: d.history.iter().copied().collect(),
                }
            })
            .collect();
        out.sort_by(|a, b| {
            b.population
                .cmp(&a.population)
                .then(b.per_second.total_cmp(&a.per_second))
                .then_with(|| a.destination.cmp(&b.destination))
        });
        out
    }

    fn dest_id(&mut self, dest: Destination) -> u32 {
        if let Some(&id) = self.dest_ids.get(&dest) {
            return id;
        }
        let id = if let Some(id) = self.free_dests.pop() {
            self.dests[id as usize] = DestStats::new(Some(dest.clone()));
            id
        } else if self.dests.len() < MAX_DESTINATIONS {
            self.dests.push(DestStats::new(Some(dest.clone())));
            (self.dests.len() - 1) as u32
        } else {
            // Past the cap: one shared row.
            return *self.other_dest.get_or_insert_with(|| {
                self.dests.push(DestStats::new(None));
                (self.dests.len() - 1) as u32
            });
        };
        self.dest_ids.insert(dest, id);
        id
    }

    fn insert(&mut self, tuple: Tuple, born_ns: u64, expires_ns: u64, dest: u32, tag: T) {
        let d = &mut self.dests[dest as usize];
        d.alive += 1;
        d.last_active_ns = d.last_active_ns.max(born_ns).max(self.now_ns);
        *d.local_addrs.entry(tuple.local.ip()).or_default() += 1;
        self.netns.entry(tuple.netns).or_default().alive += 1;
        *self.by_tag.entry((dest, tag.clone())).or_default() += 1;
        self.expiry.push(Reverse((expires_ns, tuple)));
        self.quiet_until = self.quiet_until.min(expires_ns);
        self.alive.insert(
            tuple,
            Entry {
                born_ns,
                expires_ns,
                dest,
                tag,
            },
        );
    }

    fn remove(&mut self, tuple: &Tuple) {
        let Some(e) = self.alive.remove(tuple) else {
            return;
        };
        let d = &mut self.dests[e.dest as usize];
        d.alive = d.alive.saturating_sub(1);
        if let Some(n) = d.local_addrs.get_mut(&tuple.local.ip()) {
            *n -= 1;
            if *n == 0 {
                d.local_addrs.remove(&tuple.local.ip());
            }
        }
        if let Some(n) = self.netns.get_mut(&tuple.netns) {
            n.alive = n.alive.saturating_sub(1);
        }
        let key = (e.dest, e.tag);
        if let Some(n) = self.by_tag.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                self.by_tag.remove(&key);
            }
        }
    }
}

/// The forecast for `dest`: which limit its TIME_WAITs reach first at `per_second` births,
/// and when.
///
/// Until the first births expire (60 s), the population grows by the birth rate; it settles at
/// rate × 60 s. Ports run out when that steady population does not fit the tuples the
/// destination can use; the namespace's `tcp_max_tw_buckets` is reached when the namespace's
/// steady population does not fit it. Whichever comes first binds.
fn forecast(
    dest: &Destination,
    settings: &HostSettings,
    population: u64,
    per_second: f64,
    local_addrs: u64,
    netns_population: u64,
    netns_per_second: f64,
) -> Forecast {
    let lifetime_s = TIME_WAIT_NS as f64 / 1e9;
    let max_tw_buckets = settings.max_tw_buckets;
    let port_limit = dest
        .active
        .then(|| u64::from(settings.usable_ports()) * local_addrs);
    let cap_in_s = max_tw_buckets.and_then(|cap| {
        (netns_per_second > 0.0 && netns_per_second * lifetime_s >= cap as f64)
            .then(|| cap.saturating_sub(netns_population) as f64 / netns_per_second)
    });
    let ports_in_s = port_limit.and_then(|ports| {
        (per_second > 0.0 && per_second * lifetime_s >= ports as f64)
            .then(|| ports.saturating_sub(population) as f64 / per_second)
    });
    let tw_reuse = dest.active && settings.tw_reuse_applies(dest.endpoint.ip());
    let (binding, in_s) = match (ports_in_s, cap_in_s) {
        _ if tw_reuse => (Binding::TwReuse, None),
        (Some(p), Some(c)) if c < p => (Binding::MaxTwBuckets, Some(c)),
        (Some(p), _) => (Binding::Ports, Some(p)),
        (None, Some(c)) => (Binding::MaxTwBuckets, Some(c)),
        (None, None) if !dest.active => (Binding::ServerSide, None),
        (None, None) => (Binding::None, None),
    };
    Forecast {
        binding,
        in_s,
        port_limit,
        max_tw_buckets,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::tracker::End;

    const S: u64 = 1_000_000_000;

    fn settings(ports: (u16, u16), tw_reuse: u8, cap: Option<u64>) -> HostSettings {
        HostSettings {
            port_range: ports,
            tw_reuse,
            reserved_ports: Vec::new(),
            max_tw_buckets: cap,
        }
    }

    /// Our connection from 10.0.0.1:`sport` to 10.0.0.2:80, closed first at `end_ns`.
    fn closed_first(end_ns: u64, sport: u16, ms: f64) -> Connection {
        let mut c = Connection::test(end_ns, "10.0.0.2", 80, End::TimeWait, Role::Active);
        c.sport = sport;
        c.ms = Some(ms);
        c
    }

    fn state(ts_ns: u64, sport: u16, old: TcpState, new: TcpState) -> Event {
        let mut ev = Event::test_state(ts_ns);
        ev.saddr = "10.0.0.1".parse().unwrap();
        ev.sport = sport;
        ev.daddr = "10.0.0.2".parse().unwrap();
        ev.dport = 80;
        ev.kind = EventKind::state(old, new);
        ev
    }

    fn table(s: HostSettings) -> TimeWaits<()> {
        let mut t = TimeWaits::new(s);
        t.set_start(S);
        t
    }

    #[test]
    fn a_new_connection_on_the_tuple_ends_the_timewait_socket() {
        let mut t = table(HostSettings::default());
        t.born(&closed_first(2 * S, 40000, 1.0), ());
        t.born(&closed_first(2 * S, 40001, 1.0), ());
        assert_eq!(t.population(), 2);
        t.on_event(&state(
            3 * S,
            40000,
            TcpState::SynRecv,
            TcpState::Established,
        ));
        assert_eq!(t.population(), 1);
        assert_eq!(t.counts.reused, 1);
        // The other one lives its 60 s.
        t.advance(62 * S - 1);
        assert_eq!(t.population(), 1);
        t.advance(62 * S);
        assert_eq!((t.population(), t.counts.expired), (0, 1));
    }

    /// A timer added while the table is quiet (a late birth, its 60 s nearly over) fires at
    /// its time, not at the next check the table had planned.
    #[test]
    fn a_timer_added_while_quiet_fires_on_time() {
        let mut t = table(HostSettings::default());
        t.advance(70 * S);
        t.born(&closed_first(11 * S, 40000, 1.0), ());
        t.advance(70 * S + 1);
        assert_eq!(t.population(), 1);
        t.advance(71 * S);
        assert_eq!((t.population(), t.counts.expired), (0, 1));
    }

    #[test]
    fn a_birth_that_arrives_after_the_reuse_is_dead_on_arrival() {
        let mut t = table(HostSettings::default());
        // The close, then a new connection on the same tuple, then (late, from the tracker)
        // the finished connection.
        t.on_event(&state(2 * S, 40000, TcpState::FinWait2, TcpState::Close));
        t.on_event(&state(
            2 * S + 1000,
            40000,
            TcpState::SynSent,
            TcpState::Established,
        ));
        t.born(&closed_first(2 * S, 40000, 1.0), ());
        assert_eq!(t.population(), 0);
        assert_eq!((t.counts.births, t.counts.reused), (1, 1));
        // A close with no reuse after it is born alive.
        t.on_event(&state(3 * S, 40001, TcpState::FinWait2, TcpState::Close));
        t.born(&closed_first(3 * S, 40001, 1.0), ());
        assert_eq!(t.population(), 1);
    }

    #[test]
    fn births_past_the_namespace_cap_are_refused() {
        let mut t = table(settings((32768, 60999), 0, Some(2)));
        for port in 40000..40005 {
            t.born(&closed_first(2 * S, port, 1.0), ());
        }
        assert_eq!(t.population(), 2);
        assert_eq!((t.counts.births, t.counts.overflowed), (5, 3));
    }

    #[test]
    fn reconciliation_takes_the_kernels_word_and_counts_the_drift() {
        let mut t = table(HostSettings::default());
        t.born(&closed_first(2 * S, 40000, 1.0), ());
        t.born(&closed_first(2 * S, 40001, 1.0), ());
        t.advance(3 * S);
        let addr = |s: &str| s.parse::<SocketAddr>().unwrap();
        let obs = Observed {
            netns: 0,
            taken_ns: 3 * S,
            settings: HostSettings::default(),
            sockets: vec![
                // 40001 is still there; 40000 is gone (a reset); 40002 was never seen born
                // (59 s left: born after the start); 40003 is older than the run.
                (addr("10.0.0.1:40001"), addr("10.0.0.2:80"), 59_000),
                (addr("10.0.0.1:40002"), addr("10.0.0.2:80"), 59_000),
                (addr("10.0.0.1:40003"), addr("10.0.0.2:80"), 5_000),
            ],
            kernel_overflows: Some(7),
        };
        t.reconcile(&obs, true);
        assert_eq!(t.population(), 3);
        assert_eq!(
            (t.counts.drift_gone, t.counts.drift_unseen, t.counts.adopted),
            (1, 1, 1)
        );
        // Adopted sockets leave when their timer does.
        t.advance(3 * S + 5 * S);
        assert_eq!(t.population(), 2);
        // Without adoption (a filtered run), only the gone ones are dropped.
        let mut f = table(HostSettings::default());
        f.born(&closed_first(2 * S, 40000, 1.0), ());
        f.reconcile(&obs, false);
        assert_eq!(f.population(), 0);
        assert_eq!(f.kernel_overflows(), vec![]);
    }

    #[test]
    fn the_kernels_overflow_count_is_reported_since_the_first_read() {
        let mut t = table(HostSettings::default());
        let mut obs = Observed {
            netns: 9,
            taken_ns: 2 * S,
            settings: HostSettings::default(),
            sockets: vec![],
            kernel_overflows: Some(100),
        };
        t.reconcile(&obs, true);
        obs.kernel_overflows = Some(130);
        t.reconcile(&obs, true);
        assert_eq!(
            t.kernel_overflows(),
            vec![KernelOverflow {
                netns: 9,
                overflows: 30
            }]
        );
    }

    /// 100 births a second from `from_s` for `secs` seconds, each from its own port.
    fn churn(t: &mut TimeWaits<()>, from_s: u64, secs: u64, ms: f64) {
        for i in 0..secs * 100 {
            let at = from_s * S + i * S / 100;
            t.born(&closed_first(at, 20000 + i as u16, ms), ());
        }
    }

    #[test]
    fn the_forecast_names_the_limit_that_binds_first() {
        // 1,000 ports at 100/s: after 3 s, 300 held, 7 s left.
        let mut t = table(settings((30000, 30999), 0, None));
        churn(&mut t, 10, 3, 1.0);
        t.advance(13 * S);
        let d = &t.destinations()[0];
        assert_eq!(d.destination, "10.0.0.2:80");
        assert_eq!((d.population, d.per_second), (300, 100.0));
        assert_eq!(d.forecast.binding, Binding::Ports);
        assert_eq!(d.forecast.port_limit, Some(1000));
        assert_eq!(d.exhaustion_in_s, Some(7.0));
        assert_eq!(d.pattern, Pattern::Churn);

        // A cap of 500 is reached first, in 2 s.
        let mut t = table(settings((30000, 30999), 0, Some(500)));
        churn(&mut t, 10, 3, 1.0);
        t.advance(13 * S);
        let f = &t.destinations()[0].forecast;
        assert_eq!((f.binding, f.in_s), (Binding::MaxTwBuckets, Some(2.0)));

        // tcp_tw_reuse=1: ports are taken over, nothing piles up.
        let mut t = table(settings((30000, 30999), 1, None));
        churn(&mut t, 10, 3, 1.0);
        t.advance(13 * S);
        assert_eq!(t.destinations()[0].forecast.binding, Binding::TwReuse);

        // 10/s fits 1,000 ports for 60 s.
        let mut t = table(settings((30000, 30999), 0, None));
        for i in 0..30u64 {
            t.born(
                &closed_first(10 * S + i * S / 10, 20000 + i as u16, 1.0),
                (),
            );
        }
        t.advance(13 * S);
        assert_eq!(t.destinations()[0].forecast.binding, Binding::None);
    }

    #[test]
    fn no_forecast_once_births_stop() {
        // The first minute of a run: births came, then stopped. The rate is the last 10 s's,
        // not births divided by the time elapsed, so the forecast does not creep.
        let mut t = table(settings((30000, 30999), 0, None));
        churn(&mut t, 10, 3, 1.0);
        t.advance(25 * S);
        let d = &t.destinations()[0];
        assert_eq!((d.population, d.per_second), (300, 0.0));
        assert_eq!(d.forecast.binding, Binding::None);
        assert_eq!(d.exhaustion_in_s, None);
    }

    #[test]
    fn a_mass_close_is_told_from_churn() {
        // 200 connections an hour old closed within a second.
        let mut t = table(HostSettings::default());
        for i in 0..200u64 {
            t.born(
                &closed_first(10 * S + i * S / 400, 20000 + i as u16, 3_600_000.0),
                (),
            );
        }
        t.advance(12 * S);
        assert_eq!(t.destinations()[0].pattern, Pattern::MassClose);
        // Short connections at a steady rate are churn.
        let mut t = table(HostSettings::default());
        churn(&mut t, 10, 5, 2.0);
        t.advance(15 * S);
        assert_eq!(t.destinations()[0].pattern, Pattern::Churn);
    }

    #[test]
    fn reserved_ports_inside_the_range_are_not_usable() {
        let mut s = settings((30000, 30999), 0, None);
        s.reserved_ports = vec![(30100, 30199), (30150, 30249), (8080, 8080), (30999, 31050)];
        assert_eq!(s.ports(), 1000);
        assert_eq!(s.usable_ports(), 1000 - 150 - 1);
        assert!(!s.tw_reuse_applies("127.0.0.1".parse().unwrap()));
        assert!(settings((1, 2), 2, None).tw_reuse_applies("127.0.0.1".parse().unwrap()));
        assert!(!settings((1, 2), 2, None).tw_reuse_applies("10.0.0.1".parse().unwrap()));
    }

    #[test]
    fn a_quiet_destination_gives_its_slot_back() {
        let mut t = table(HostSettings::default());
        t.born(&closed_first(2 * S, 40000, 1.0), ());
        // Alive for 60 s, then a minute with nothing: the row goes, its slot is reused.
        t.advance(100 * S);
        assert_eq!(t.destinations().len(), 1, "quiet for less than a minute");
        t.advance(125 * S);
        assert!(t.destinations().is_empty());
        let mut c = closed_first(126 * S, 40001, 1.0);
        c.dport = 81;
        t.born(&c, ());
        let d = t.destinations();
        assert_eq!((d.len(), d[0].destination.as_str()), (1, "10.0.0.2:81"));
        assert_eq!(t.dests.len(), 1, "the slot was reused");
    }

    #[test]
    fn the_population_history_is_sampled_every_five_seconds() {
        let mut t = table(HostSettings::default());
        t.advance(S);
        churn(&mut t, 2, 1, 1.0);
        t.advance(S + 3 * HISTORY_STEP_NS);
        assert_eq!(t.destinations()[0].history, vec![100, 100, 100]);
    }
}
