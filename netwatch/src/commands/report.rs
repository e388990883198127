//! `netwatch report`: collects a run (live or replayed) into the diagnosis, and renders it as
//! plain sentences with the evidence beside each one, or as one JSON document.
use std::{
    fmt::Write as _,
    io::{self, Write as _},
};

use crate::{
    cli::{OutputArgs, ThresholdArgs},
    host::cgroup::HostNames,
    host::clock::WallClock,
    model::analysis::{
        Analysis, ConnectOutcomes, CountRow, LifetimeRow, Losses, Percentiles, Report, Thresholds,
    },
    model::event::Event,
    model::names::Container,
    model::selection::Selection,
    model::timewait::{Observed, Pattern},
    model::tracker::{Fact, Tracker},
    pipeline::session::{Header, Summary},
    pipeline::sink::Sink,
};

/// Feeds tracker and analysis; prints nothing until the end.
pub struct ReportSink {
    pub tracker: Tracker,
    pub analysis: Analysis,
    selection: Selection,
    /// The selection is empty (the usual replay): every event and connection passes without
    /// the checks of each filter, about 50 instructions an event.
    keeps_all: bool,
}

impl ReportSink {
    pub fn new(
        header: &Header,
        thresholds: Thresholds,
        max_sockets: usize,
        selection: Selection,
    ) -> Self {
        let mut analysis = Analysis::new(header.settings.clone(), thresholds);
        analysis.set_start(header.started_ns);
        Self {
            tracker: Tracker::new(max_sockets),
            analysis,
            keeps_all: selection.is_empty(),
            selection,
        }
    }

    /// The report at `now_ns` (the stop time of the run).
    pub fn report(
        &mut self,
        now_ns: u64,
        started_ns: u64,
        losses: Losses,
        listen: Option<(u64, u64)>,
    ) -> Report {
        let Self {
            tracker,
            analysis,
            selection,
            keeps_all,
        } = self;
        tracker.flush(&mut |Fact::Ended(c)| {
            if *keeps_all || selection.connection(&c) {
                analysis.on_connection(&c);
            }
        });
        analysis.set_start(started_ns);
        analysis.report(
            tracker,
            now_ns,
            losses,
            listen,
            &|c| selection.close_wait(c),
            &HostNames,
        )
    }
}

impl Sink for ReportSink {
    fn event(&mut self, ev: &Event) -> io::Result<()> {
        let Self {
            tracker,
            analysis,
            selection,
            keeps_all,
        } = self;
        analysis.on_stream_event(ev);
        if ev.owner_seen_here {
            // While the owner is alive: the report names cgroups at the end.
            crate::host::cgroup::note_owner(ev.cgroup_id, ev.pid);
            crate::host::containers::owner_container(ev.cgroup_id, ev.pid);
        }
        if *keeps_all || selection.event(ev) {
            analysis.on_event(ev);
        }
        // The tracker sees every event, so each socket's life is whole; what it concludes is
        // filtered.
        tracker.on_event(ev, &mut |Fact::Ended(c)| {
            if *keeps_all || selection.connection(&c) {
                analysis.on_connection(&c);
            }
        });
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }

    fn wants_time_waits(&self) -> bool {
        true
    }

    fn time_waits(&mut self, obs: &Observed) -> io::Result<()> {
        let adopt = self.selection.is_empty();
        self.analysis.time_waits_mut().reconcile(obs, adopt);
        Ok(())
    }
}

fn pattern_word(p: Pattern) -> &'static str {
    match p {
        Pattern::Quiet => "no births in the last minute",
        Pattern::Churn => "churn",
        Pattern::MassClose => "mass close",
    }
}

fn pct(p: &Percentiles) -> String {
    format!(
        "n={} p50={:.3} p90={:.3} p99={:.3} max={:.3} ms",
        p.count, p.p50, p.p90, p.p99, p.max
    )
}

/// A process row's container and cgroup, after its numbers: last, because a path can be of
/// any length. (Resolved when the report was built, see [`crate::model::analysis`].)
fn cgroup_suffix(container: Option<&Container>, cgroup: Option<&str>) -> String {
    let mut s = container.map_or_else(String::new, |c| format!("   container {}", c.label()));
    if let Some(c) = cgroup {
        let _ = write!(s, "   cgroup {c}");
    }
    s
}

fn rows(out: &mut String, title: &str, rows: &[CountRow], kw: usize) {
    let tw = kw + 2;
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(out, "  {title}:");
    for r in rows {
        let cgroup = cgroup_suffix(r.container.as_ref(), r.cgroup.as_deref());
        let _ = writeln!(out, "    {:<tw$} {:>8}{cgroup}", r.key, r.count);
    }
}

fn outcomes(out: &mut String, title: &str, rows: &[ConnectOutcomes], kw: usize) {
    let tw = kw + 2;
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "  {title:<tw$} {:>8} {:>8} {:>8} {:>8}   connect latency (established)",
        "ESTAB", "REFUSED", "TIMEOUT", "ABORTED"
    );
    for r in rows {
        let _ = writeln!(
            out,
            "    {:<kw$} {:>8} {:>8} {:>8} {:>8}   {}{}",
            r.key,
            r.established,
            r.refused,
            r.timeout,
            r.aborted,
            r.connect_ms.as_ref().map_or_else(|| "-".to_string(), pct),
            cgroup_suffix(r.container.as_ref(), r.cgroup.as_deref())
        );
    }
}

fn lifetimes(out: &mut String, title: &str, rows: &[LifetimeRow], kw: usize) {
    let tw = kw + 2;
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(out, "  {title}:");
    for r in rows {
        let cgroup = cgroup_suffix(r.container.as_ref(), r.cgroup.as_deref());
        let _ = writeln!(out, "    {:<tw$} {}{cgroup}", r.key, pct(&r.lifetime_ms));
    }
}

/// `report` (and `analyze --report`): the sink, and how to print its report at the end.
pub struct ReportOutput {
    sink: ReportSink,
    output: OutputArgs,
}

/// What `report` prints: the tables are filled as events arrive and printed at the end.
pub fn output(
    t: &ThresholdArgs,
    selection: Selection,
    max_sockets: usize,
    output: &OutputArgs,
    header: &Header,
) -> Box<dyn Sink> {
    let thresholds = Thresholds {
        close_wait_age_ms: t.close_wait_age.as_secs_f64() * 1000.0,
        close_wait_alarm: t.close_wait_alarm,
        time_wait_alarm: t.time_wait_alarm,
    };
    Box::new(ReportOutput {
        sink: ReportSink::new(header, thresholds, max_sockets, selection),
        output: output.clone(),
    })
}

impl Sink for ReportOutput {
    fn event(&mut self, ev: &Event) -> io::Result<()> {
        self.sink.event(ev)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.sink.flush()
    }

    fn wants_time_waits(&self) -> bool {
        self.sink.wants_time_waits()
    }

    fn time_waits(&mut self, obs: &Observed) -> io::Result<()> {
        self.sink.time_waits(obs)
    }

    fn finish(mut self: Box<Self>, header: &Header, summary: &Summary) -> io::Result<()> {
        let listen = summary.listen_overflows.zip(summary.listen_drops);
        let r = self.sink.report(
            summary.stopped_ns,
            header.started_ns,
            summary.losses(),
            listen,
        );
        let mut out = super::stdout();
        if self.output.json {
            serde_json::to_writer_pretty(&mut out, &r)?;
            out.write_all(b"\n")?;
        } else {
            let clock = WallClock::from_offset(header.wall_offset_ns);
            let style = Style {
                wide: self.output.wide,
                span: self.output.timestamp.then(|| {
                    (
                        clock.rfc3339(header.started_ns),
                        clock.rfc3339(summary.stopped_ns),
                    )
                }),
            };
            out.write_all(render(&r, &style).as_bytes())?;
        }
        out.flush()
    }
}

/// How the text report is laid out (`-w`, `-T`).
#[derive(Clone, Debug, Default)]
pub struct Style {
    /// Key columns wide enough for any `[IPv6]:port`.
    pub wide: bool,
    /// Wall-clock start and stop of the run, shown in the header.
    pub span: Option<(String, String)>,
}

/// The report as text: findings first (lost events before anything), then the evidence.
pub fn render(r: &Report, style: &Style) -> String {
    let kw = if style.wide { 49 } else { 38 };
    let tw = kw + 2;
    let mut out = String::new();
    let _ = write!(
        out,
        "netwatch report: {:.1} s, {} events, {} lost, {} missed, {} connections ended",
        r.duration_s, r.events, r.lost_events, r.missed_events, r.connections_ended
    );
    // Under a filter the counts above are what it keeps; say so beside the tracker's total.
    if r.tracker.ended > r.connections_ended {
        let _ = write!(
            out,
            " (the filter keeps these of {} connections that ended)",
            r.tracker.ended
        );
    }
    match &style.span {
        Some((from, to)) => {
            let _ = writeln!(out, ", from {from} to {to}");
        }
        None => {
            let _ = writeln!(out);
        }
    }
    let _ = writeln!(out, "\nFindings");
    if r.findings.is_empty() {
        let _ = writeln!(
            out,
            "  none: no lost events, leaks, exhaustion risk or failed connects seen"
        );
    }
    for f in &r.findings {
        let _ = writeln!(out, "  {:<7} {}", f.severity.to_uppercase(), f.text);
    }

    let _ = writeln!(out, "\nHow connections ended");
    let ends: Vec<_> = r
        .ends
        .iter()
        .map(|e| format!("{} {}", e.key, e.count))
        .collect();
    let _ = writeln!(
        out,
        "  {}",
        if ends.is_empty() {
            "-".to_string()
        } else {
            ends.join(", ")
        }
    );
    if r.ended_close_unseen > 0 {
        let _ = writeln!(
            out,
            "  {} of them ended at their socket's destroy with no CLOSE seen (skipped by the \
             kernel or lost): `aborted` unless a reset, retransmit or SYN_SENT says more",
            r.ended_close_unseen
        );
    }

    let tws = &r.time_wait;
    let c = &tws.counts;
    let _ = writeln!(
        out,
        "\nTIME_WAIT: {} born ({:.1}/s), {} alive now; ephemeral range {}-{} ({} usable ports), tcp_tw_reuse={}, tcp_max_tw_buckets={}",
        tws.births,
        tws.per_second,
        tws.population,
        r.settings.port_range.0,
        r.settings.port_range.1,
        r.settings.usable_ports(),
        r.settings.tw_reuse,
        r.settings
            .max_tw_buckets
            .map_or_else(|| "?".to_string(), |m| m.to_string())
    );
    let _ = writeln!(
        out,
        "  ended early by a new connection on the 4-tuple {}, refused at tcp_max_tw_buckets {}, expired {}; reconciled with the kernel's list {} times: {} gone unseen, {} born unseen, {} older than the run",
        c.reused,
        c.overflowed,
        c.expired,
        c.reconciliations,
        c.drift_gone,
        c.drift_unseen,
        c.adopted
    );
    for k in &tws.kernel_overflows {
        let _ = writeln!(
            out,
            "  the kernel refused {} births in netns {} (TCPTimeWaitOverflow)",
            k.overflows, k.netns
        );
    }
    for p in &tws.ports_exhausted {
        let _ = writeln!(
            out,
            "  {}: {} connect() calls found no free port (EADDRNOTAVAIL), the first {:.1} s into the run",
            p.destination, p.failed_connects, p.after_s
        );
    }
    rows(&mut out, "closed first by process", &tws.by_process, kw);
    if !tws.by_destination.is_empty() {
        let _ = writeln!(
            out,
            "  {:<tw$} {:>8} {:>8} {:>8}   forecast",
            "by destination", "BIRTHS", "PER_S", "ALIVE"
        );
        for d in &tws.by_destination {
            let _ = writeln!(
                out,
                "    {:<kw$} {:>8} {:>8.1} {:>8}   {} ({})",
                d.destination,
                d.births,
                d.per_second,
                d.population,
                d.forecast.phrase(),
                pattern_word(d.pattern)
            );
        }
    }

    let cw = &r.close_wait;
    let _ = writeln!(
        out,
        "\nCLOSE_WAIT: {} sockets stuck longer than {:.1} s; dwell of those that closed: {}",
        cw.stuck,
        cw.threshold_ms / 1000.0,
        pct(&cw.dwell_ms)
    );
    for h in &cw.holders {
        let peers: Vec<_> = h
            .peers
            .iter()
            .map(|p| format!("{} ({})", p.key, p.count))
            .collect();
        let container = h
            .container
            .as_ref()
            .map_or_else(String::new, |c| format!(", container {}", c.label()));
        let cgroup = h
            .cgroup
            .as_ref()
            .map_or_else(String::new, |c| format!(", cgroup {c}"));
        let _ = writeln!(
            out,
            "    {:<kw$} {:>6} sockets, oldest {:.1} s{container}{cgroup}, peers {}",
            h.process,
            h.sockets,
            h.oldest_ms / 1000.0,
            peers.join(", ")
        );
    }

    let _ = writeln!(out, "\nConnects (SYN_SENT outcomes)");
    outcomes(&mut out, "by destination", &r.connects_by_destination, kw);
    outcomes(&mut out, "by process", &r.connects_by_process, kw);

    let rs = &r.resets;
    let _ = writeln!(out, "\nResets: {} sent, {} received", rs.sent, rs.received);
    for row in &rs.by_reason_and_state {
        let _ = writeln!(
            out,
            "    {:<9} {:<28} in {:<12} {:>8}",
            row.direction, row.reason, row.state, row.count
        );
    }
    rows(&mut out, "by process", &rs.by_process, kw);
    rows(&mut out, "by peer", &rs.by_peer, kw);

    let _ = writeln!(out, "\nRetransmissions");
    rows(&mut out, "segments by peer", &r.retransmits_by_peer, kw);
    rows(
        &mut out,
        "SYN-ACKs by listener",
        &r.synack_retransmits_by_listener,
        kw,
    );
    if let (Some(o), Some(d)) = (r.listen_overflows, r.listen_drops) {
        let _ = writeln!(
            out,
            "  this namespace: ListenOverflows +{o}, ListenDrops +{d}"
        );
    }

    let _ = writeln!(out, "\nLifetimes");
    lifetimes(&mut out, "by process", &r.lifetimes_by_process, kw);
    lifetimes(&mut out, "by peer", &r.lifetimes_by_peer, kw);
    let _ = writeln!(
        out,
        "\nTracker (before the filter): {} sockets tracked now, {} evicted, {} connections ended",
        r.tracker.sockets, r.tracker.evicted, r.tracker.ended
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_rows_end_with_their_container_then_cgroup() {
        let c = Container {
            name: Some("web".into()),
            pod: Some("shop-7f".into()),
            namespace: Some("prod".into()),
            ..Container::unnamed(&"ab".repeat(32))
        };
        assert_eq!(
            cgroup_suffix(Some(&c), Some("/kubepods/x")),
            "   container prod/shop-7f/web   cgroup /kubepods/x"
        );
        assert_eq!(cgroup_suffix(None, Some("/")), "   cgroup /");
        assert_eq!(cgroup_suffix(None, None), "");
    }
    use crate::model::tracker::{Connection, End, Role};

    /// A connection ended at its destroy with no CLOSE seen is counted like any other end,
    /// and the report says how many of the ends were such.
    #[test]
    fn ends_without_a_seen_close_are_counted_and_said() {
        let mut a = Analysis::new(
            crate::model::timewait::HostSettings::default(),
            Thresholds::default(),
        );
        let tw = Connection::test(1_000_000_000, "10.0.0.9", 80, End::TimeWait, Role::Active);
        let mut unseen =
            Connection::test(1_000_000_000, "10.0.0.9", 80, End::Aborted, Role::Active);
        unseen.close_unseen = true;
        let report = |a: &mut Analysis| {
            a.report(
                &Tracker::new(10),
                2_000_000_000,
                Losses::default(),
                None,
                &|_| true,
                &|_, _| None,
            )
        };
        a.on_connection(&tw);
        let r = report(&mut a);
        assert_eq!(r.ended_close_unseen, 0);
        assert!(!render(&r, &Style::default()).contains("no CLOSE seen"));
        let json = serde_json::to_value(&r).unwrap();
        assert!(json.get("ended_close_unseen").is_none(), "left out when 0");
        a.on_connection(&unseen);
        let r = report(&mut a);
        let ends: Vec<_> = r.ends.iter().map(|e| (e.key.as_str(), e.count)).collect();
        assert_eq!(ends, [("aborted", 1), ("time-wait", 1)]);
        assert_eq!((r.connections_ended, r.ended_close_unseen), (2, 1));
        let text = render(&r, &Style::default());
        assert!(
            text.contains("\n  1 of them ended at their socket's destroy with no CLOSE seen"),
            "{text}"
        );
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["ended_close_unseen"], 1);
    }

    #[test]
    fn process_rows_end_with_their_cgroup() {
        let names = |id: Option<u64>, pid: Option<u32>| {
            (id == Some(77) && pid == Some(4242)).then(|| "/shop.slice/api.service".to_string())
        };
        let mut a = Analysis::new(
            crate::model::timewait::HostSettings::default(),
            Thresholds::default(),
        );
        let mut c = Connection::test(1_000_000_000, "10.0.0.9", 80, End::TimeWait, Role::Active);
        (c.pid, c.closer_pid, c.cgroup_id) = (Some(4242), Some(4242), Some(77));
        a.on_connection(&c);
        let mut r = a.report(
            &Tracker::new(10),
            2_000_000_000,
            Losses::default(),
            None,
            &|_| true,
            &names,
        );
        r.tracker.ended = 1; // as the tracker would have ended the connection it fed
        let text = render(&r, &Style::default());
        let line = text
            .lines()
            .find(|l| l.contains("client[4242]"))
            .unwrap_or_else(|| panic!("no row of client[4242]:\n{text}"));
        assert!(
            line.ends_with("   cgroup /shop.slice/api.service"),
            "{line}"
        );
        // Unfiltered, the header needs no second count...
        let head = text.lines().next().unwrap().to_string();
        assert!(!head.contains("the filter keeps"), "{head}");
        // ...under a filter it names what the filter keeps beside all that ended.
        let mut filtered = r.clone();
        filtered.tracker.ended = 5;
        let text = render(&filtered, &Style::default());
        assert!(
            text.lines().next().unwrap().ends_with(
                "1 connections ended (the filter keeps these of 5 connections that ended)"
            ),
            "{text}"
        );
    }
}
