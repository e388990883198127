//! One frame of the live view, computed from the counters, their copy from the previous
//! interval (rates are the difference) and the tracker's open sockets, under the process
//! filter and sort order chosen with the keys; and its plain-text form for a stdout that is not
//! a terminal.
use std::{collections::HashMap, fmt::Write as _};

use crate::{
    model::event::TcpState,
    model::selection::Selection,
    model::timewait::{DestinationView, Pattern},
    model::tracker::Tracker,
};

use super::stats::{Counters, Failures, Opens, ProcId, ResetKey, Stats};

/// The states shown, in the order a connection goes through them.
pub const STATES: [TcpState; 9] = [
    TcpState::Listen,
    TcpState::SynSent,
    TcpState::SynRecv,
    TcpState::Established,
    TcpState::FinWait1,
    TcpState::FinWait2,
    TcpState::Closing,
    TcpState::CloseWait,
    TcpState::LastAck,
];

/// How the tables are ordered (`s` cycles).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Sort {
    /// Largest total first (CLOSE_WAIT: most sockets).
    #[default]
    Count,
    /// Fastest growing in the last interval first (CLOSE_WAIT: oldest first).
    Rate,
    /// By name.
    Name,
}

impl Sort {
    pub fn next(self) -> Self {
        match self {
            Sort::Count => Sort::Rate,
            Sort::Rate => Sort::Name,
            Sort::Name => Sort::Count,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Sort::Count => "count",
            Sort::Rate => "rate",
            Sort::Name => "name",
        }
    }
}

/// The process the view is narrowed to (`p`): a pid, or (part of) a command name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProcFilter {
    Pid(u32),
    Comm(String),
}

impl ProcFilter {
    /// `1234` is a pid, anything else part of a command name; `None` for blank input.
    pub fn parse(s: &str) -> Option<Self> {
        let s = s.trim();
        if s.is_empty() {
            None
        } else if let Ok(pid) = s.parse() {
            Some(ProcFilter::Pid(pid))
        } else {
            Some(ProcFilter::Comm(s.to_string()))
        }
    }

    pub fn matches(&self, pid: Option<u32>, comm: Option<&str>) -> bool {
        match self {
            ProcFilter::Pid(p) => pid == Some(*p),
            ProcFilter::Comm(c) => comm.is_some_and(|comm| comm.contains(c.as_str())),
        }
    }

    pub fn label(&self) -> String {
        match self {
            ProcFilter::Pid(p) => format!("pid {p}"),
            ProcFilter::Comm(c) => format!("comm ~ {c}"),
        }
    }
}

/// What the keys have chosen.
#[derive(Clone, Debug, Default)]
pub struct UiState {
    pub sort: Sort,
    pub filter: Option<ProcFilter>,
    /// The process being typed after `p`, until Enter or Esc.
    pub prompt: Option<String>,
}

/// A TIME_WAIT destination.
#[derive(Clone, Debug, PartialEq)]
pub struct TwRow {
    pub destination: String,
    pub births: u64,
    /// Births per second in the last interval.
    pub per_s: f64,
    /// Timewait sockets alive now.
    pub alive: u64,
    /// "ports run out in ~N s", "tcp_tw_reuse applies", "fits the range", ... (as `netwatch
    /// report` forecasts, at the last 10 s's birth rate).
    pub forecast: String,
    /// The 4-tuples the destination can use, when it holds our ephemeral ports.
    pub limit: Option<u64>,
    /// The destination's population every 5 s, oldest first: the sparkline.
    pub history: Vec<u32>,
    /// Most of the last minute's births were one close of long-lived connections, not churn.
    pub mass_close: bool,
}

impl TwRow {
    /// The history as a text sparkline, scaled to the port limit (or to its own peak).
    pub fn sparkline(&self) -> String {
        const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
        let top = self
            .limit
            .unwrap_or(0)
            .max(self.history.iter().copied().max().unwrap_or(0).into())
            .max(1);
        self.history
            .iter()
            .map(|&v| {
                let i = (u64::from(v) * (BARS.len() as u64 - 1)).div_ceil(top);
                BARS[(i as usize).min(BARS.len() - 1)]
            })
            .collect()
    }
}

/// A process holding sockets in CLOSE_WAIT.
#[derive(Clone, Debug, PartialEq)]
pub struct CwRow {
    pub process: String,
    /// The holder's cgroup path (its container or service), when known.
    pub cgroup: Option<String>,
    /// The holder's container (`namespace/pod/container`), when it runs in one.
    pub container: Option<String>,
    pub sockets: u64,
    pub oldest_s: f64,
    /// Older than `--close-wait-age`.
    pub stuck: u64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct FailRow {
    pub destination: String,
    pub failures: Failures,
    pub per_s: f64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ResetRow {
    pub key: ResetKey,
    pub count: u64,
    pub per_s: f64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct PeerRow {
    pub peer: String,
    pub count: u64,
    pub per_s: f64,
}

/// One frame.
#[derive(Clone, Debug, PartialEq)]
pub struct View {
    pub elapsed_s: f64,
    pub interval_s: f64,
    pub sort: Sort,
    pub filter: Option<String>,
    /// Open sockets per state now, in [`STATES`] order.
    pub states: Vec<(TcpState, u64)>,
    /// Timewait sockets alive now, followed per 4-tuple.
    pub time_wait_alive: u64,
    pub opens: Opens,
    pub connects_per_s: f64,
    pub accepts_per_s: f64,
    pub time_wait_births: u64,
    pub time_wait_per_s: f64,
    pub time_wait: Vec<TwRow>,
    pub close_wait: Vec<CwRow>,
    pub close_wait_age_s: f64,
    pub failures: Vec<FailRow>,
    pub failures_total: Failures,
    pub resets_sent: u64,
    pub resets_received: u64,
    pub resets: Vec<ResetRow>,
    pub retransmits_total: u64,
    pub retransmits: Vec<PeerRow>,
    pub events: u64,
    pub events_per_s: f64,
    pub lost: u64,
}

/// Rows kept per table.
pub const MAX_ROWS: usize = 100;

/// What a frame is computed from.
pub struct Inputs<'a> {
    pub stats: &'a Stats,
    /// The counters at the start of the rate window, `window_s` seconds ago.
    pub before: &'a Counters,
    pub window_s: f64,
    pub events: u64,
    pub events_before: u64,
    pub lost: u64,
    pub tracker: &'a Tracker,
    pub selection: &'a Selection,
    pub now_ns: u64,
    pub elapsed_s: f64,
    pub interval_s: f64,
    pub close_wait_age_ms: f64,
}

fn rate(now: u64, before: u64, window_s: f64) -> f64 {
    now.saturating_sub(before) as f64 / window_s
}

/// Sums `map` into rows by `row(key)` over the processes kept, now and at the window's start.
fn rows<K, V: Clone + Default, R: std::hash::Hash + Eq>(
    now: &HashMap<(ProcId, K), V>,
    before: &HashMap<(ProcId, K), V>,
    keep: &dyn Fn(ProcId) -> bool,
    row: impl Fn(&K) -> R,
    add: impl Fn(&mut V, &V),
) -> HashMap<R, (V, V)>
where
    K: std::hash::Hash + Eq,
{
    let mut out: HashMap<R, (V, V)> = HashMap::new();
    for ((p, k), v) in now {
        if keep(*p) {
            add(&mut out.entry(row(k)).or_default().0, v);
        }
    }
    for ((p, k), v) in before {
        if keep(*p) {
            add(&mut out.entry(row(k)).or_default().1, v);
        }
    }
    out
}

fn order<T>(
    rows: &mut Vec<T>,
    sort: Sort,
    count: impl Fn(&T) -> f64,
    rate: impl Fn(&T) -> f64,
    name: impl Fn(&T) -> String,
) {
    match sort {
        Sort::Count => rows.sort_by(|a, b| {
            count(b)
                .total_cmp(&count(a))
                .then_with(|| name(a).cmp(&name(b)))
        }),
        Sort::Rate => rows.sort_by(|a, b| {
            rate(b)
                .total_cmp(&rate(a))
                .then_with(|| count(b).total_cmp(&count(a)))
                .then_with(|| name(a).cmp(&name(b)))
        }),
        Sort::Name => rows.sort_by_key(|r| name(r)),
    }
    rows.truncate(MAX_ROWS);
}

/// Builds a frame.
pub fn build(i: &Inputs, ui: &UiState) -> View {
    let filter = ui.filter.as_ref();
    let procs = &i.stats.procs;
    let keep = |p: ProcId| {
        filter.is_none_or(|f| {
            let p = procs.get(p);
            f.matches(p.pid, p.comm.as_deref())
        })
    };
    let w = i.window_s.max(1e-3);

    // Open sockets, from the tracker.
    let mut states: HashMap<TcpState, u64> = HashMap::new();
    let mut cw: HashMap<String, CwRow> = HashMap::new();
    for s in i.tracker.live_sockets() {
        if !i.selection.socket(&s) || !filter.is_none_or(|f| f.matches(s.pid, s.comm)) {
            continue;
        }
        *states.entry(s.state).or_default() += 1;
        if s.state == TcpState::CloseWait {
            let process = match s.pid {
                Some(pid) => format!("{}[{pid}]", s.comm.unwrap_or("?")),
                None => "-".into(),
            };
            let age_ms = i.now_ns.saturating_sub(s.since_ns) as f64 / 1e6;
            let row = cw.entry(process.clone()).or_insert_with(|| CwRow {
                process,
                cgroup: crate::host::cgroup::owner_cgroup(s.cgroup_id, s.pid),
                container: crate::host::containers::owner_container(s.cgroup_id, s.pid)
                    .map(|c| c.label()),
                sockets: 0,
                oldest_s: 0.0,
                stuck: 0,
            });
            row.sockets += 1;
            row.oldest_s = row.oldest_s.max(age_ms / 1000.0);
            if age_ms >= i.close_wait_age_ms {
                row.stuck += 1;
            }
        }
    }
    let mut close_wait: Vec<CwRow> = cw.into_values().collect();
    order(
        &mut close_wait,
        ui.sort,
        |r| r.sockets as f64,
        |r| r.oldest_s,
        |r| r.process.clone(),
    );

    // New connections.
    let sum_opens = |m: &HashMap<ProcId, Opens>| {
        m.iter()
            .filter(|(p, _)| keep(**p))
            .fold(Opens::default(), |a, (_, o)| Opens {
                connects: a.connects + o.connects,
                accepts: a.accepts + o.accepts,
            })
    };
    let (opens, opens_before) = (
        sum_opens(&i.stats.counters.opens),
        sum_opens(&i.before.opens),
    );

    // TIME_WAIT by destination: births, the last interval's rate, the population followed
    // per 4-tuple, and the forecast with the population's recent history.
    let mut alive: HashMap<&str, u64> = HashMap::new();
    for (d, p, n) in i.stats.time_wait_alive() {
        if keep(p) {
            *alive.entry(d).or_default() += n;
        }
    }
    let table: HashMap<String, DestinationView> = i
        .stats
        .time_waits
        .destinations()
        .into_iter()
        .map(|d| (d.destination.clone(), d))
        .collect();
    let tw = rows(
        &i.stats.counters.time_wait,
        &i.before.time_wait,
        &keep,
        |d| *d,
        |a, b| *a += b,
    );
    let mut time_wait: Vec<TwRow> = tw
        .iter()
        .map(|(d, (now, before))| {
            let dest = &i.stats.dest(*d).key;
            let t = table.get(dest);
            TwRow {
                destination: dest.clone(),
                births: *now,
                per_s: rate(*now, *before, w),
                alive: alive.get(dest.as_str()).copied().unwrap_or(0),
                forecast: t.map_or_else(|| "fits the range".to_string(), |t| t.forecast.phrase()),
                limit: t.and_then(|t| t.forecast.port_limit),
                history: t.map_or_else(Vec::new, |t| t.history.clone()),
                mass_close: t.is_some_and(|t| t.pattern == Pattern::MassClose),
            }
        })
        .collect();
    let time_wait_births: u64 = tw.values().map(|v| v.0).sum();
    let time_wait_before: u64 = tw.values().map(|v| v.1).sum();
    let time_wait_alive = alive.values().sum();
    order(
        &mut time_wait,
        ui.sort,
        |r| r.births as f64,
        |r| r.per_s,
        |r| r.destination.clone(),
    );

    // Failed connects by destination.
    let f = rows(
        &i.stats.counters.failures,
        &i.before.failures,
        &keep,
        Clone::clone,
        Failures::add,
    );
    let mut failures_total = Failures::default();
    let mut failures: Vec<FailRow> = f
        .into_iter()
        .map(|(destination, (now, before))| {
            failures_total.add(&now);
            FailRow {
                destination,
                per_s: now.minus(&before).total() as f64 / w,
                failures: now,
            }
        })
        .filter(|r| r.failures.total() > 0)
        .collect();
    order(
        &mut failures,
        ui.sort,
        |r| r.failures.total() as f64,
        |r| r.per_s,
        |r| r.destination.clone(),
    );

    // Resets by direction, reason and state.
    let r = rows(
        &i.stats.counters.resets,
        &i.before.resets,
        &keep,
        Clone::clone,
        |a, b| *a += b,
    );
    let mut resets: Vec<ResetRow> = r
        .into_iter()
        .map(|(key, (now, before))| ResetRow {
            key,
            count: now,
            per_s: rate(now, before, w),
        })
        .filter(|r| r.count > 0)
        .collect();
    let resets_sent = resets
        .iter()
        .filter(|r| r.key.direction == "sent")
        .map(|r| r.count)
        .sum();
    let resets_received = resets
        .iter()
        .filter(|r| r.key.direction == "received")
        .map(|r| r.count)
        .sum();
    order(
        &mut resets,
        ui.sort,
        |r| r.count as f64,
        |r| r.per_s,
        |r| format!("{} {} {}", r.key.direction, r.key.reason, r.key.state),
    );

    // Retransmits by peer.
    let x = rows(
        &i.stats.counters.retransmits,
        &i.before.retransmits,
        &keep,
        Clone::clone,
        |a, b| *a += b,
    );
    let mut retransmits: Vec<PeerRow> = x
        .into_iter()
        .map(|(peer, (now, before))| PeerRow {
            peer,
            count: now,
            per_s: rate(now, before, w),
        })
        .filter(|r| r.count > 0)
        .collect();
    let retransmits_total = retransmits.iter().map(|r| r.count).sum();
    order(
        &mut retransmits,
        ui.sort,
        |r| r.count as f64,
        |r| r.per_s,
        |r| r.peer.clone(),
    );

    View {
        elapsed_s: i.elapsed_s,
        interval_s: i.interval_s,
        sort: ui.sort,
        filter: ui.filter.as_ref().map(ProcFilter::label),
        states: STATES
            .iter()
            .map(|s| (*s, states.get(s).copied().unwrap_or(0)))
            .collect(),
        time_wait_alive,
        opens,
        connects_per_s: rate(opens.connects, opens_before.connects, w),
        accepts_per_s: rate(opens.accepts, opens_before.accepts, w),
        time_wait_births,
        time_wait_per_s: rate(time_wait_births, time_wait_before, w),
        time_wait,
        close_wait,
        close_wait_age_s: i.close_wait_age_ms / 1000.0,
        failures,
        failures_total,
        resets_sent,
        resets_received,
        resets,
        retransmits_total,
        retransmits,
        events: i.events,
        events_per_s: rate(i.events, i.events_before, w),
        lost: i.lost,
    }
}

impl View {
    /// `LISTEN 1, SYN_SENT 0, ..., TIME_WAIT ~12`.
    pub fn states_line(&self) -> String {
        let mut s = self
            .states
            .iter()
            .map(|(st, n)| format!("{} {n}", st.name()))
            .collect::<Vec<_>>()
            .join("  ");
        let _ = write!(s, "  TIME_WAIT {}", self.time_wait_alive);
        s
    }

    pub fn rates_line(&self) -> String {
        format!(
            "new connections {:.1}/s (connect {:.1}/s, accept {:.1}/s)  TIME_WAIT births {:.1}/s  |  in all: {} connects, {} accepts, {} TIME_WAIT births",
            self.connects_per_s + self.accepts_per_s,
            self.connects_per_s,
            self.accepts_per_s,
            self.time_wait_per_s,
            self.opens.connects,
            self.opens.accepts,
            self.time_wait_births
        )
    }

    /// The plain-text summary printed every interval when stdout is not a terminal.
    pub fn plain(&self) -> String {
        const ROWS: usize = 5;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "netwatch top at {:.1} s (every {:.1} s; process: {}; {} events, {} lost)",
            self.elapsed_s,
            self.interval_s,
            self.filter.as_deref().unwrap_or("all"),
            self.events,
            self.lost
        );
        let _ = writeln!(out, "  states: {}", self.states_line());
        let _ = writeln!(out, "  {}", self.rates_line());
        let list = |items: Vec<String>| {
            if items.is_empty() {
                "none".to_string()
            } else {
                items.join("; ")
            }
        };
        let _ = writeln!(
            out,
            "  TIME_WAIT by destination: {}",
            list(
                self.time_wait
                    .iter()
                    .take(ROWS)
                    .map(|r| format!(
                        "{} {} born ({:.1}/s), {} alive{}, {}{}{}",
                        r.destination,
                        r.births,
                        r.per_s,
                        r.alive,
                        r.limit.map_or_else(String::new, |l| format!(" of {l}")),
                        r.forecast,
                        if r.mass_close { " (mass close)" } else { "" },
                        match r.sparkline() {
                            s if s.is_empty() => s,
                            s => format!(" {s}"),
                        }
                    ))
                    .collect()
            )
        );
        let _ = writeln!(
            out,
            "  CLOSE_WAIT holders: {}",
            list(
                self.close_wait
                    .iter()
                    .take(ROWS)
                    .map(|r| format!(
                        "{} {} sockets (oldest {:.1} s, {} older than {:.1} s{}{})",
                        r.process,
                        r.sockets,
                        r.oldest_s,
                        r.stuck,
                        self.close_wait_age_s,
                        r.container
                            .as_deref()
                            .map_or_else(String::new, |c| format!(", container {c}")),
                        r.cgroup
                            .as_deref()
                            .map_or_else(String::new, |c| format!(", cgroup {c}"))
                    ))
                    .collect()
            )
        );
        let t = &self.failures_total;
        let _ = writeln!(
            out,
            "  connect failures: {} refused, {} timed out, {} aborted: {}",
            t.refused,
            t.timeout,
            t.aborted,
            list(
                self.failures
                    .iter()
                    .take(ROWS)
                    .map(|r| format!(
                        "{} {}/{}/{}",
                        r.destination, r.failures.refused, r.failures.timeout, r.failures.aborted
                    ))
                    .collect()
            )
        );
        let _ = writeln!(
            out,
            "  resets: {} sent, {} received: {}",
            self.resets_sent,
            self.resets_received,
            list(
                self.resets
                    .iter()
                    .take(ROWS)
                    .map(|r| format!(
                        "{} {} in {} {}",
                        r.key.direction, r.key.reason, r.key.state, r.count
                    ))
                    .collect()
            )
        );
        let _ = writeln!(
            out,
            "  retransmits: {}: {}",
            self.retransmits_total,
            list(
                self.retransmits
                    .iter()
                    .take(ROWS)
                    .map(|r| format!("{} {}", r.peer, r.count))
                    .collect()
            )
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_filters_parse_and_match() {
        assert_eq!(ProcFilter::parse(" 42 "), Some(ProcFilter::Pid(42)));
        assert_eq!(ProcFilter::parse(""), None);
        let f = ProcFilter::parse("drive").unwrap();
        assert!(f.matches(Some(1), Some("tcpdrive")));
        assert!(!f.matches(Some(1), Some("curl")));
        assert!(!f.matches(None, None));
        assert!(ProcFilter::Pid(42).matches(Some(42), None));
        assert_eq!(Sort::Count.next().next().next(), Sort::Count);
    }
}
