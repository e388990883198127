//! Where events go: text columns for people, JSON lines for jq and for machines.
use std::{
    borrow::Cow,
    fmt,
    io::{self, Write},
};

use crate::{
    host::{clock::WallClock, snapshot::HostSnapshot},
    kernel::probe::Probe,
    model::event::{Event, EventKind, state_label},
    model::pad::{SPACES, pad, push_decimal, push_endpoint, push_left, push_millis, push_right},
    model::selection::Selection,
    model::timewait::Observed,
    pipeline::json_line,
    pipeline::session::{Header, StopReason, Summary},
};

/// A command's end of the pipeline. The runner ([`crate::pipeline::run`]) calls, in order:
/// `attach` once the programs are attached (live runs only), `event` for every decoded event
/// with a `flush` after each batch, `stopped` when the stream ends, then `finish` for what is
/// printed at the end of a run, live or replayed. The runner never needs to know which
/// command it feeds.
///
/// A sink that wraps another (a filter, a note, the recorder) says so through [`Sink::inner`],
/// [`Sink::inner_mut`] and [`Sink::into_inner`]: every hook it does not implement itself goes
/// on to the wrapped sink. Why: wrappers once forwarded each hook by hand, and a hook added
/// later and forgotten in one of them was silently lost (the recorder never saw `trace
/// --stacks`' symbolized stacks until `Box<dyn Sink>` forwarded `completed`).
pub trait Sink {
    /// The sink this one wraps, if it wraps one.
    fn inner(&self) -> Option<&dyn Sink> {
        None
    }

    /// The sink this one wraps, to forward a hook to.
    fn inner_mut(&mut self) -> Option<&mut dyn Sink> {
        None
    }

    /// The sink this one wraps, to finish.
    fn into_inner(self: Box<Self>) -> Option<Box<dyn Sink>> {
        None
    }

    /// The programs are attached: take what the probe offers (its counters, its stack map).
    fn attach(&mut self, probe: &Probe) -> anyhow::Result<()> {
        self.inner_mut().map_or(Ok(()), |s| s.attach(probe))
    }

    fn event(&mut self, ev: &Event) -> io::Result<()>;

    /// `ev` with what only the live host can add before this sink shows it (`trace --stacks`:
    /// its user stack, symbolized), for a recording to store: a replay has no process to
    /// symbolize. Passed back to [`Sink::event`] as it is.
    fn completed<'e>(&mut self, ev: &'e Event) -> Cow<'e, Event> {
        match self.inner_mut() {
            Some(s) => s.completed(ev),
            None => Cow::Borrowed(ev),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner_mut().map_or(Ok(()), |s| s.flush())
    }

    /// Whether a live run should hand this sink the kernel's timewait lists
    /// ([`Sink::time_waits`]): a dump of every network namespace every few seconds, so only the
    /// commands that show the TIME_WAIT population ask for it.
    fn wants_time_waits(&self) -> bool {
        self.inner().is_some_and(|s| s.wants_time_waits())
    }

    /// The kernel's list of one namespace's timewait sockets: dumped by a live run, or read
    /// back from its recording at the same place in the stream.
    fn time_waits(&mut self, obs: &Observed) -> io::Result<()> {
        self.inner_mut().map_or(Ok(()), |s| s.time_waits(obs))
    }

    /// A recording asks for what each periodic output takes from the host (a `leaks`
    /// snapshot, a `top` summary): from now on, keep it for [`Sink::take_host_snapshots`].
    fn record_host_snapshots(&mut self) {
        if let Some(s) = self.inner_mut() {
            s.record_host_snapshots();
        }
    }

    /// The host's side of the snapshots taken since the last call, oldest first: a recording
    /// writes them after the events the sink had seen when it took them.
    fn take_host_snapshots(&mut self) -> Vec<HostSnapshot> {
        self.inner_mut()
            .map_or_else(Vec::new, |s| s.take_host_snapshots())
    }

    /// A snapshot's host side, read back from a recording at the same place in the stream:
    /// take the snapshot from it, asking this host nothing.
    fn host_snapshot(&mut self, snapshot: &HostSnapshot) -> io::Result<()> {
        self.inner_mut()
            .map_or(Ok(()), |s| s.host_snapshot(snapshot))
    }

    /// The stream stopped: a live view gives the terminal back before the summary line; a
    /// sink that takes snapshots takes its last one (before a recording writes its summary).
    fn stopped(&mut self, stop: StopReason) {
        if let Some(s) = self.inner_mut() {
            s.stopped(stop);
        }
    }

    /// Prints what is printed at the end of a run: by default, flushes and finishes the
    /// wrapped sink.
    fn finish(mut self: Box<Self>, header: &Header, summary: &Summary) -> io::Result<()> {
        self.flush()?;
        match self.into_inner() {
            Some(s) => s.finish(header, summary),
            None => Ok(()),
        }
    }
}

impl Sink for Box<dyn Sink> {
    fn inner(&self) -> Option<&dyn Sink> {
        Some(&**self)
    }

    fn inner_mut(&mut self) -> Option<&mut dyn Sink> {
        Some(&mut **self)
    }

    fn into_inner(self: Box<Self>) -> Option<Box<dyn Sink>> {
        Some(*self)
    }

    fn event(&mut self, ev: &Event) -> io::Result<()> {
        (**self).event(ev)
    }
}

/// The three [`Sink`] methods of a wrapper ([`Sink::inner`], [`Sink::inner_mut`],
/// [`Sink::into_inner`]), for the field that holds the wrapped sink: every hook the wrapper
/// does not implement then goes on to it.
macro_rules! wraps {
    ($field:ident) => {
        fn inner(&self) -> Option<&dyn $crate::pipeline::sink::Sink> {
            Some(&self.$field)
        }

        fn inner_mut(&mut self) -> Option<&mut dyn $crate::pipeline::sink::Sink> {
            Some(&mut self.$field)
        }

        fn into_inner(self: Box<Self>) -> Option<Box<dyn $crate::pipeline::sink::Sink>> {
            Some(Box::new(self.$field))
        }
    };
}
pub(crate) use wraps;

/// Says once on stderr when a live run has seen no event for [`QUIET_NOTE_AFTER`], so that a
/// quiet host (or a filter that matches nothing) is not mistaken for a hung netwatch.
pub struct QuietNote<S> {
    inner: S,
    attached: Option<std::time::Instant>,
    seen: bool,
    noted: bool,
}

/// How long a live run may see nothing before [`QuietNote`] says so.
pub const QUIET_NOTE_AFTER: std::time::Duration = std::time::Duration::from_secs(5);

impl<S: Sink + 'static> QuietNote<S> {
    pub fn boxed(inner: S) -> Box<dyn Sink> {
        Box::new(Self {
            inner,
            attached: None,
            seen: false,
            noted: false,
        })
    }
}

impl<S: Sink + 'static> Sink for QuietNote<S> {
    wraps!(inner);

    fn attach(&mut self, probe: &Probe) -> anyhow::Result<()> {
        self.attached = Some(std::time::Instant::now());
        self.inner.attach(probe)
    }

    fn event(&mut self, ev: &Event) -> io::Result<()> {
        self.seen = true;
        self.inner.event(ev)
    }

    fn flush(&mut self) -> io::Result<()> {
        if !self.seen
            && !self.noted
            && self
                .attached
                .is_some_and(|t| t.elapsed() >= QUIET_NOTE_AFTER)
        {
            self.noted = true;
            eprintln!(
                "netwatch: no TCP event yet after {} s (none on this host, or none that the \
                 filters keep); still watching",
                QUIET_NOTE_AFTER.as_secs()
            );
        }
        self.inner.flush()
    }
}

/// Passes on only the events the selection keeps.
pub struct Filtered<S> {
    pub selection: Selection,
    pub inner: S,
}

impl<S: Sink + 'static> Filtered<S> {
    /// `inner` behind the selection, or `inner` alone when the selection keeps everything.
    pub fn boxed(selection: Selection, inner: S) -> Box<dyn Sink> {
        if selection.is_empty() {
            Box::new(inner)
        } else {
            Box::new(Filtered { selection, inner })
        }
    }
}

impl<S: Sink + 'static> Sink for Filtered<S> {
    wraps!(inner);

    fn event(&mut self, ev: &Event) -> io::Result<()> {
        if self.selection.event(ev) {
            self.inner.event(ev)
        } else {
            Ok(())
        }
    }
}

/// Width of `-w`'s CONTAINER column (`namespace/pod/container` pushes CGROUP out when longer).
const CONTAINER_WIDTH: usize = 32;

/// Width of the EVENT column: room for `RESET_SENT in SYN_RECV (TCP_ABORT_ON_DATA)`; a rarer,
/// longer reset reason pushes the MS_IN_OLD column out by what it exceeds.
const EVENT_WIDTH: usize = 42;

/// How the TIME column reads.
#[derive(Clone, Copy, Debug)]
pub enum TimeStyle {
    /// Seconds since netwatch started (`TIME(s)`).
    Relative { start_ns: u64 },
    /// Wall-clock `HH:MM:SS.mmm` UTC (`-T`).
    Wall,
}

/// tcpstates-like columns: `TIME PID COMM LADDR:LPORT RADDR:RPORT EVENT MS_IN_OLD`, and with
/// `-w` the owner's `CONTAINER` (`namespace/pod/container`, see
/// [`crate::model::names::Container::label`]) and a last `CGROUP` column (see
/// [`crate::host::cgroup::owner_cgroup`]): last because its width is anything from `/` to a
/// long container path.
pub struct TextSink<W: Write> {
    out: W,
    clock: WallClock,
    time: TimeStyle,
    addr_width: usize,
    /// `-w`: the CGROUP column too.
    cgroup: bool,
    header_done: bool,
    /// The line being written, kept between events: a line costs no allocation.
    line: String,
}

impl<W: Write> TextSink<W> {
    /// `wide` makes the address columns fit any IPv6 address, and adds the CGROUP column.
    pub fn new(out: W, clock: WallClock, time: TimeStyle, wide: bool) -> Self {
        Self {
            out,
            clock,
            time,
            addr_width: if wide { 47 } else { 21 },
            cgroup: wide,
            header_done: false,
            line: String::new(),
        }
    }

    fn header(&mut self) -> io::Result<()> {
        let time = match self.time {
            TimeStyle::Relative { .. } => "TIME(s)",
            TimeStyle::Wall => "TIME",
        };
        let w = self.addr_width;
        write!(
            self.out,
            "{time:<12} {:>7} {:<15} {:<w$} {:<w$} {:<EVENT_WIDTH$} {:>10}",
            "PID", "COMM", "LADDR:LPORT", "RADDR:RPORT", "EVENT", "MS_IN_OLD"
        )?;
        self.end_line("CONTAINER", "CGROUP")
    }

    /// Ends a line, with `container` and `cgroup` as the last columns under `-w`.
    fn end_line(&mut self, container: &str, cgroup: &str) -> io::Result<()> {
        if self.cgroup {
            writeln!(self.out, " {container:<CONTAINER_WIDTH$} {cgroup}")
        } else {
            writeln!(self.out)
        }
    }
}

/// The EVENT column: `OLD -> NEW` for transitions, the kind and state for the rest.
struct Describe<'a>(&'a EventKind);

impl fmt::Display for Describe<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        pad(f, |f| self.write(f))
    }
}

impl Describe<'_> {
    fn write(&self, f: &mut dyn fmt::Write) -> fmt::Result {
        let kind = self.0;
        match kind {
            EventKind::State {
                old_state,
                new_state,
                ..
            } => write!(
                f,
                "{} -> {}",
                state_label(*old_state),
                state_label(*new_state)
            ),
            EventKind::Retransmit { state, .. }
            | EventKind::SynackRetransmit { state }
            | EventKind::ResetReceived { state }
            | EventKind::Destroy { state }
            | EventKind::Accept { state }
            | EventKind::FirstUse { state, .. } => {
                write!(f, "{} in {}", kind.label(), state_label(*state))
            }
            EventKind::ResetSent { state, reason } => {
                write!(f, "{} in {}", kind.label(), state_label(*state))?;
                match reason {
                    Some(r) => write!(f, " ({r})"),
                    None => Ok(()),
                }
            }
        }
    }
}

impl<W: Write> TextSink<W> {
    fn header_once(&mut self) -> io::Result<()> {
        if !self.header_done {
            self.header()?;
            self.header_done = true;
        }
        Ok(())
    }
}

impl<W: Write> Sink for TextSink<W> {
    /// Live: the header at once, so a quiet host does not look like a hung netwatch.
    fn attach(&mut self, _probe: &Probe) -> anyhow::Result<()> {
        self.header_once()?;
        self.out.flush()?;
        Ok(())
    }

    fn event(&mut self, ev: &Event) -> io::Result<()> {
        self.header_once()?;
        let line = &mut self.line;
        line.clear();
        match self.time {
            TimeStyle::Relative { start_ns } => {
                let s = ev.ts_ns.saturating_sub(start_ns) as f64 / 1e9;
                let start = line.len();
                push_millis(line, s, 0);
                let fill = 12usize.saturating_sub(line.len() - start);
                line.push_str(&SPACES[..fill]);
            }
            TimeStyle::Wall => push_left(line, self.clock.hms(ev.ts_ns), 12),
        }
        line.push(' ');
        match ev.pid {
            Some(pid) => {
                let start = line.len();
                push_decimal(line, pid);
                let fill = 7usize.saturating_sub(line.len() - start);
                line.insert_str(start, &SPACES[..fill]);
            }
            None => push_right(line, "-", 7),
        }
        let w = self.addr_width;
        line.push(' ');
        push_left(line, ev.comm.as_deref().unwrap_or("-"), 15);
        line.push(' ');
        push_endpoint(line, ev.saddr, ev.sport, w);
        line.push(' ');
        push_endpoint(line, ev.daddr, ev.dport, w);
        line.push(' ');
        push_left(line, Describe(&ev.kind), EVENT_WIDTH);
        line.push(' ');
        match ev.kind {
            EventKind::State {
                ms_in_old: Some(ms),
                ..
            } => push_millis(line, ms, 10),
            _ => push_right(line, "-", 10),
        }
        self.out.write_all(line.as_bytes())?;
        let (container, cgroup) = if self.cgroup {
            (
                crate::host::containers::owner_container(ev.cgroup_id, ev.pid).map(|c| c.label()),
                crate::host::cgroup::owner_cgroup(ev.cgroup_id, ev.pid),
            )
        } else {
            (None, None)
        };
        self.end_line(
            container.as_deref().unwrap_or("-"),
            cgroup.as_deref().unwrap_or("-"),
        )
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// One JSON object per line: the [`Event`] fields (with `cgroup`, the owner's cgroup path, when
/// known) plus `time` (RFC 3339, UTC).
pub struct JsonSink<W: Write> {
    out: W,
    clock: WallClock,
    /// The line being written and its time, reused from event to event.
    line: String,
    time: String,
}

impl<W: Write> JsonSink<W> {
    pub fn new(out: W, clock: WallClock) -> Self {
        Self {
            out,
            clock,
            line: String::new(),
            time: String::new(),
        }
    }
}

/// An event as `--json` writes it (and JSON-lines recordings held it): its fields, plus
/// `cgroup`, the owner's cgroup path as the host names it now, and its container
/// (`container_id`, `container`, `pod`, `namespace`), each omitted when unknown. Written by
/// [`json_line::push_event`]; this derived form is the schema's reference, which the tests
/// hold that writer to.
#[cfg(test)]
#[derive(serde::Serialize)]
pub struct EventJson<'a> {
    #[serde(flatten)]
    pub event: &'a Event,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<&'a str>,
    #[serde(flatten)]
    pub container: Option<&'a crate::model::names::Container>,
}

/// [`EventJson`] with the `time` first, as `--json` writes it.
#[cfg(test)]
#[derive(serde::Serialize)]
pub struct JsonLine<'a> {
    pub time: String,
    #[serde(flatten)]
    pub event: EventJson<'a>,
}

/// Appends `event` as one JSON object (no newline) to `line`, with `time` first when given,
/// and its owner's cgroup path and container from the host.
pub fn push_event_json(line: &mut String, event: &Event, time: Option<&str>) {
    let (cgroup, container) = crate::host::containers::owner_names(event.cgroup_id, event.pid);
    json_line::push_event(line, event, time, cgroup.as_deref(), container.as_deref());
}

impl<W: Write> Sink for JsonSink<W> {
    fn event(&mut self, ev: &Event) -> io::Result<()> {
        self.time.clear();
        self.clock.push_rfc3339(&mut self.time, ev.ts_ns);
        self.line.clear();
        push_event_json(&mut self.line, ev, Some(&self.time));
        self.line.push('\n');
        self.out.write_all(self.line.as_bytes())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::event::TcpState;

    fn event(kind: EventKind) -> Event {
        let mut ev = Event::test_state(3_500_000_000);
        (ev.sock, ev.pid, ev.tid) = (0xffff_0000_0000_0001, Some(42), Some(42));
        (ev.comm, ev.owner_seen_here) = (Some("curl".into()), true);
        (ev.saddr, ev.sport) = ("127.0.0.1".parse().unwrap(), 40000);
        (ev.daddr, ev.dport) = ("127.0.0.1".parse().unwrap(), 80);
        ev.kind = kind;
        ev
    }

    #[test]
    fn text_line_has_the_tcpstates_columns() {
        let mut buf = Vec::new();
        let mut sink = TextSink::new(
            &mut buf,
            WallClock::now(),
            TimeStyle::Relative {
                start_ns: 1_000_000_000,
            },
            false,
        );
        let mut kind = EventKind::state(TcpState::SynSent, TcpState::Established);
        if let EventKind::State { ms_in_old, .. } = &mut kind {
            *ms_in_old = Some(0.25);
        }
        sink.event(&event(kind)).unwrap();
        let text = String::from_utf8(buf).unwrap();
        let lines: Vec<_> = text.lines().collect();
        let header: Vec<_> = lines[0].split_whitespace().collect();
        assert_eq!(
            header,
            [
                "TIME(s)",
                "PID",
                "COMM",
                "LADDR:LPORT",
                "RADDR:RPORT",
                "EVENT",
                "MS_IN_OLD"
            ]
        );
        let row: Vec<_> = lines[1].split_whitespace().collect();
        assert_eq!(
            row,
            [
                "2.500",
                "42",
                "curl",
                "127.0.0.1:40000",
                "127.0.0.1:80",
                "SYN_SENT",
                "->",
                "ESTABLISHED",
                "0.250"
            ]
        );
    }

    #[test]
    fn unknown_owner_prints_dashes() {
        let mut ev = event(EventKind::ResetReceived {
            state: Some(TcpState::SynSent),
        });
        ev.pid = None;
        ev.comm = None;
        let mut buf = Vec::new();
        let mut sink = TextSink::new(&mut buf, WallClock::now(), TimeStyle::Wall, true);
        sink.event(&ev).unwrap();
        let text = String::from_utf8(buf).unwrap();
        let row: Vec<_> = text.lines().nth(1).unwrap().split_whitespace().collect();
        assert_eq!(&row[1..3], ["-", "-"]);
        assert_eq!(&row[5..8], ["RESET_RECEIVED", "in", "SYN_SENT"]);
        // -w: the owner's cgroup last, `-` when unknown.
        let header: Vec<_> = text.lines().next().unwrap().split_whitespace().collect();
        assert_eq!(header.last(), Some(&"CGROUP"));
        assert_eq!(row.last(), Some(&"-"));
    }

    /// The cgroup id of this host's cgroup v2 root (resolves to `/`), if one is mounted.
    fn root_cgroup_id() -> Option<u64> {
        use std::os::unix::fs::MetadataExt as _;
        let mount = crate::host::cgroup::cgroup2_mount()?;
        Some(std::fs::metadata(mount).ok()?.ino())
    }

    #[test]
    fn json_lines_carry_the_owner_cgroup_when_known() {
        let line = |cgroup_id: Option<u64>| {
            let mut ev = event(EventKind::Destroy { state: None });
            (ev.pid, ev.cgroup_id) = (None, cgroup_id);
            let mut buf = Vec::new();
            JsonSink::new(&mut buf, WallClock::now())
                .event(&ev)
                .unwrap();
            serde_json::from_slice::<serde_json::Value>(&buf).unwrap()
        };
        // Unknown: no key (the id is kept as it is).
        let v = line(Some(u64::MAX - 1));
        assert!(v.get("cgroup").is_none(), "{v}");
        assert_eq!(v["cgroup_id"], u64::MAX - 1);
        assert!(line(None).get("cgroup").is_none());
        let Some(root) = root_cgroup_id() else {
            crate::host::skip::skip("no cgroup v2 hierarchy mounted");
            return;
        };
        let v = line(Some(root));
        assert_eq!(v["cgroup"], "/", "{v}");
        assert_eq!(v["cgroup_id"], root);
        // The rest of the line is still flat: the derived fields and the kind's.
        assert_eq!(v["kind"], "destroy");
        assert_eq!(v["sock"], "0xffff000000000001");
    }

    #[test]
    fn json_lines_carry_time_and_kind() {
        let mut buf = Vec::new();
        let mut sink = JsonSink::new(&mut buf, WallClock::now());
        sink.event(&event(EventKind::ResetSent {
            state: Some(TcpState::Established),
            reason: Some("NO_SOCKET".into()),
        }))
        .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&buf).unwrap();
        assert_eq!(v["kind"], "reset_sent");
        assert_eq!(v["reason"], "NO_SOCKET");
        assert_eq!(v["state"], "ESTABLISHED");
        assert!(v["time"].as_str().unwrap().ends_with('Z'));
        assert_eq!(buf.iter().filter(|&&b| b == b'\n').count(), 1);
    }

    /// A sink that records nothing, for the wrappers' tests.
    struct Nothing;

    impl Sink for Nothing {
        fn event(&mut self, _: &Event) -> io::Result<()> {
            Ok(())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_quiet_live_run_is_noted_once_and_a_replay_never() {
        let quiet = |attached_ago: Option<std::time::Duration>, events: usize| {
            let mut q = QuietNote {
                inner: Nothing,
                attached: attached_ago.map(|ago| std::time::Instant::now() - ago),
                seen: false,
                noted: false,
            };
            for _ in 0..events {
                q.event(&event(EventKind::Destroy { state: None })).unwrap();
            }
            q.flush().unwrap();
            q.noted
        };
        let past = Some(QUIET_NOTE_AFTER + std::time::Duration::from_secs(1));
        assert!(quiet(past, 0), "quiet past the bound");
        assert!(!quiet(past, 1), "an event arrived");
        assert!(!quiet(Some(std::time::Duration::ZERO), 0), "not yet");
        assert!(!quiet(None, 0), "a replay is never attached");
    }

    #[test]
    fn a_long_reset_reason_stays_in_its_column() {
        let mut buf = Vec::new();
        let mut sink = TextSink::new(
            &mut buf,
            WallClock::now(),
            TimeStyle::Relative { start_ns: 0 },
            false,
        );
        sink.event(&event(EventKind::ResetSent {
            state: Some(TcpState::Close),
            reason: Some("TCP_ABORT_ON_CLOSE".into()),
        }))
        .unwrap();
        let text = String::from_utf8(buf).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[1].contains("RESET_SENT in CLOSE (TCP_ABORT_ON_CLOSE)"),
            "{text}"
        );
        // MS_IN_OLD ends where its header ends.
        assert_eq!(lines[1].len(), lines[0].len(), "{text}");
    }

    #[test]
    fn the_text_header_comes_before_any_event() {
        let mut out = Vec::new();
        let mut sink = TextSink::new(
            &mut out,
            WallClock::from_offset(0),
            TimeStyle::Relative { start_ns: 0 },
            false,
        );
        sink.header_once().unwrap();
        sink.header_once().unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(text.starts_with("TIME(s)"), "{text}");
    }

    /// Records which hooks reached it, through a shared log (it is moved into the wrappers).
    struct Hooks(std::rc::Rc<std::cell::RefCell<Vec<&'static str>>>);

    impl Sink for Hooks {
        fn event(&mut self, _ev: &Event) -> io::Result<()> {
            self.0.borrow_mut().push("event");
            Ok(())
        }

        fn completed<'e>(&mut self, ev: &'e Event) -> Cow<'e, Event> {
            self.0.borrow_mut().push("completed");
            Cow::Borrowed(ev)
        }

        fn flush(&mut self) -> io::Result<()> {
            self.0.borrow_mut().push("flush");
            Ok(())
        }

        fn wants_time_waits(&self) -> bool {
            true
        }

        fn time_waits(&mut self, _obs: &Observed) -> io::Result<()> {
            self.0.borrow_mut().push("time_waits");
            Ok(())
        }

        fn record_host_snapshots(&mut self) {
            self.0.borrow_mut().push("record_host_snapshots");
        }

        fn take_host_snapshots(&mut self) -> Vec<HostSnapshot> {
            self.0.borrow_mut().push("take_host_snapshots");
            Vec::new()
        }

        fn host_snapshot(&mut self, _snapshot: &HostSnapshot) -> io::Result<()> {
            self.0.borrow_mut().push("host_snapshot");
            Ok(())
        }

        fn stopped(&mut self, _stop: StopReason) {
            self.0.borrow_mut().push("stopped");
        }

        fn finish(self: Box<Self>, _header: &Header, _summary: &Summary) -> io::Result<()> {
            self.0.borrow_mut().push("finish");
            Ok(())
        }
    }

    #[test]
    fn every_hook_reaches_the_sink_the_wrappers_wrap() {
        let log = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
        let inner: Box<dyn Sink> = Box::new(Hooks(log.clone()));
        let selection = Selection::default();
        // Filtered::boxed leaves out an empty selection: build the wrapper itself.
        let filtered = Filtered { selection, inner };
        let mut sink = QuietNote::boxed(filtered);
        let ev = event(EventKind::Destroy { state: None });
        assert!(sink.wants_time_waits());
        sink.event(&ev).unwrap();
        let _ = sink.completed(&ev);
        sink.flush().unwrap();
        let obs = Observed {
            netns: 0,
            taken_ns: 0,
            settings: crate::model::timewait::HostSettings::default(),
            sockets: Vec::new(),
            kernel_overflows: None,
        };
        sink.time_waits(&obs).unwrap();
        sink.record_host_snapshots();
        let _ = sink.take_host_snapshots();
        let tick = HostSnapshot::Tick(crate::host::snapshot::TopTick {
            at_ns: 0,
            lost: 0,
            interval_ns: 1,
            last: true,
            printed: true,
            report: false,
        });
        sink.host_snapshot(&tick).unwrap();
        sink.stopped(StopReason::Signal);
        let header = Header {
            netwatch_record: 1,
            started_ns: 0,
            wall_offset_ns: 0,
            settings: crate::model::timewait::HostSettings::default(),
            filter: Vec::new(),
        };
        sink.finish(&header, &Summary::default()).unwrap();
        let seen = log.borrow();
        for hook in [
            "event",
            "completed",
            "flush",
            "time_waits",
            "record_host_snapshots",
            "take_host_snapshots",
            "host_snapshot",
            "stopped",
            "finish",
        ] {
            assert!(
                seen.contains(&hook),
                "{hook} did not reach the sink: {seen:?}"
            );
        }
    }
}
