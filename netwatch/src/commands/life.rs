//! `netwatch life`: one line per connection when it ends (tcplife's columns, plus ROLE and END;
//! with `-w` also CONTAINER and CGROUP), or its full record as JSON (plus `cgroup` and the
//! container's `container_id`, `container`, `pod` and `namespace`).
use std::{
    fmt::Write as _,
    io::{self, Write},
};

use serde::Serialize;

use crate::{
    host::clock::WallClock,
    model::event::Event,
    model::names::Container,
    model::pad::{push_ip, push_left, push_right},
    model::selection::Selection,
    model::tracker::{Connection, Fact, Tracker},
    pipeline::sink::{QuietNote, Sink},
};

/// A `life --json` line: the connection's record and its owner's cgroup path (omitted when
/// unknown), looked up when the line is printed (see [`crate::host::cgroup::owner_cgroup`]).
/// The record has no tid: the tracker keeps only the owning process.
#[derive(Serialize)]
struct Row<'a> {
    #[serde(flatten)]
    connection: &'a Connection,
    #[serde(skip_serializing_if = "Option::is_none")]
    cgroup: Option<String>,
    /// The owner's container (see [`crate::host::containers::owner_container`]).
    #[serde(flatten)]
    container: Option<&'a Container>,
}

fn kb(bytes: Option<u64>) -> OrDash<u64> {
    OrDash(bytes.map(|b| b / 1024))
}

/// A value as its column shows it, `-` when unknown, in the column's width and precision:
/// a row is written without a string per column.
struct OrDash<T>(Option<T>);

impl<T: std::fmt::Display> std::fmt::Display for OrDash<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Some(v) => v.fmt(f),
            None => f.pad("-"),
        }
    }
}

/// Width of `-w`'s CGROUP column. A longer path keeps its end (the most specific part: the
/// service or container), after a `…`, so that END stays in line.
const CGROUP_WIDTH: usize = 32;

/// Width of `-w`'s CONTAINER column; a longer name keeps its end (the container's name).
const CONTAINER_WIDTH: usize = 32;

/// `s` if it fits in `width` characters, else `…` and its last `width - 1` characters.
fn tail(s: &str, width: usize) -> std::borrow::Cow<'_, str> {
    let n = s.chars().count();
    if n <= width {
        return s.into();
    }
    let skip = n - (width - 1);
    format!("…{}", s.chars().skip(skip).collect::<String>()).into()
}

/// Feeds the tracker and prints each connection it finishes.
pub struct LifeSink<W: Write> {
    out: W,
    selection: Selection,
    json: bool,
    wide: bool,
    header_done: bool,
    /// `-T`: a first TIME column, the wall-clock time the connection ended.
    time: Option<WallClock>,
    pub tracker: Tracker,
    /// The text line being written, reused from row to row.
    line: String,
}

impl<W: Write> LifeSink<W> {
    pub fn new(out: W, json: bool, wide: bool, max_sockets: usize, selection: Selection) -> Self {
        Self {
            out,
            selection,
            json,
            wide,
            header_done: false,
            time: None,
            tracker: Tracker::new(max_sockets),
            line: String::new(),
        }
    }

    /// Adds the TIME column (`-T`): when each connection ended, `HH:MM:SS.mmm` UTC.
    pub fn with_time(mut self, clock: WallClock) -> Self {
        self.time = Some(clock);
        self
    }

    /// The TIME column with its separator under `-T`, else nothing.
    fn time_column(&self, end_ns: Option<u64>) -> String {
        match (self.time, end_ns) {
            (Some(clock), Some(ns)) => format!("{:<12} ", clock.hms(ns)),
            (Some(_), None) => format!("{:<12} ", "TIME"),
            (None, _) => String::new(),
        }
    }

    /// The text header, once (live: at attach, so a quiet host does not look hung).
    fn header_once(&mut self) -> io::Result<()> {
        if self.json || self.header_done {
            return Ok(());
        }
        self.header_done = true;
        let aw = if self.wide { 39 } else { 15 };
        writeln!(
            self.out,
            "{}{:>7} {:<15} {:<aw$} {:>5} {:<aw$} {:>5} {:>6} {:>6} {:>10} {:<7} {}{}END",
            self.time_column(None),
            "PID",
            "COMM",
            "LADDR",
            "LPORT",
            "RADDR",
            "RPORT",
            "TX_KB",
            "RX_KB",
            "MS",
            "ROLE",
            self.container_column(Some("CONTAINER")),
            self.cgroup_column(Some("CGROUP"))
        )
    }

    fn print(&mut self, c: &Connection) -> io::Result<()> {
        if !self.selection.connection(c) {
            return Ok(());
        }
        let cgroup = (self.json || self.wide)
            .then(|| crate::host::cgroup::owner_cgroup(c.cgroup_id, c.pid))
            .flatten();
        let container = (self.json || self.wide)
            .then(|| crate::host::containers::owner_container(c.cgroup_id, c.pid))
            .flatten();
        if self.json {
            let row = Row {
                connection: c,
                cgroup,
                container: container.as_deref(),
            };
            serde_json::to_writer(&mut self.out, &row)?;
            return self.out.write_all(b"\n");
        }
        self.header_once()?;
        let aw = if self.wide { 39 } else { 15 };
        let role = match c.role {
            crate::model::tracker::Role::Active => "active",
            crate::model::tracker::Role::Passive => "passive",
            crate::model::tracker::Role::Unknown => "-",
        };
        let time = self.time_column(Some(c.end_ns));
        let container = self.container_column(container.map(|c| c.label()).as_deref());
        let cgroup = self.cgroup_column(cgroup.as_deref());
        // Into one reused line, padded at once: `writeln!` with widths straight into the
        // output wrote each fill space as its own write.
        let mut line = std::mem::take(&mut self.line);
        line.clear();
        line.push_str(&time);
        push_right(&mut line, OrDash(c.pid), 7);
        line.push(' ');
        push_left(&mut line, c.comm.as_deref().unwrap_or("-"), 15);
        line.push(' ');
        push_ip(&mut line, c.saddr, aw);
        line.push(' ');
        push_right(&mut line, c.sport, 5);
        line.push(' ');
        push_ip(&mut line, c.daddr, aw);
        line.push(' ');
        push_right(&mut line, c.dport, 5);
        line.push(' ');
        push_right(&mut line, kb(c.bytes_sent), 6);
        line.push(' ');
        push_right(&mut line, kb(c.bytes_received), 6);
        line.push(' ');
        push_right(&mut line, format_args!("{:.3}", OrDash(c.ms)), 10);
        line.push(' ');
        push_left(&mut line, role, 7);
        line.push(' ');
        line.push_str(&container);
        line.push_str(&cgroup);
        // Writing to a `String` cannot fail.
        let _ = write!(line, "{}", c.end);
        if c.close_unseen {
            line.push_str(" (close unseen)");
        }
        line.push('\n');
        let written = self.out.write_all(line.as_bytes());
        self.line = line;
        written
    }

    /// The CGROUP column with its separator under `-w` (`-` when unknown), else nothing. It
    /// comes before END, which stays last because it may hold spaces (`reset-by-us (REASON)`).
    fn cgroup_column(&self, cgroup: Option<&str>) -> String {
        if self.wide {
            format!(
                "{:<CGROUP_WIDTH$} ",
                tail(cgroup.unwrap_or("-"), CGROUP_WIDTH)
            )
        } else {
            String::new()
        }
    }

    /// The CONTAINER column with its separator under `-w` (`namespace/pod/container`, see
    /// [`Container::label`]; `-` outside containers), else nothing.
    fn container_column(&self, container: Option<&str>) -> String {
        if self.wide {
            format!(
                "{:<CONTAINER_WIDTH$} ",
                tail(container.unwrap_or("-"), CONTAINER_WIDTH)
            )
        } else {
            String::new()
        }
    }

    /// What the exit says when the tracker evicted sockets: their connections are missing from
    /// the output, which must not go unsaid.
    fn eviction_note(&self) -> Option<String> {
        let evicted = self.tracker.stats().evicted;
        (evicted > 0).then(|| {
            format!(
                "netwatch: {evicted} sockets were evicted from the tracker at --max-sockets (the \
                 least recently active first): their connections are not given; raise \
                 --max-sockets"
            )
        })
    }

    /// Ends what is still waiting (end of stream) and prints it.
    fn print_end(&mut self) -> io::Result<()> {
        let mut done = Vec::new();
        self.tracker.flush(&mut |Fact::Ended(c)| done.push(c));
        for c in done {
            self.print(&c)?;
        }
        self.out.flush()
    }
}

/// What `life` (and `analyze --life`) prints: one line per connection as it ends.
pub fn output(
    o: &crate::cli::OutputArgs,
    selection: Selection,
    max_sockets: usize,
    header: &crate::pipeline::session::Header,
) -> Box<dyn Sink> {
    let sink = LifeSink::new(super::stdout(), o.json, o.wide, max_sockets, selection);
    if o.timestamp {
        QuietNote::boxed(sink.with_time(WallClock::from_offset(header.wall_offset_ns)))
    } else {
        QuietNote::boxed(sink)
    }
}

impl<W: Write> Sink for LifeSink<W> {
    fn attach(&mut self, _probe: &crate::kernel::probe::Probe) -> anyhow::Result<()> {
        self.header_once()?;
        self.out.flush()?;
        Ok(())
    }

    fn finish(
        mut self: Box<Self>,
        _header: &crate::pipeline::session::Header,
        _summary: &crate::pipeline::session::Summary,
    ) -> io::Result<()> {
        self.print_end()?;
        if let Some(note) = self.eviction_note() {
            eprintln!("{note}");
        }
        Ok(())
    }

    fn event(&mut self, ev: &Event) -> io::Result<()> {
        if ev.owner_seen_here && (self.json || self.wide) {
            crate::host::cgroup::note_owner(ev.cgroup_id, ev.pid);
            // Asks the runtime now about a container it does not know yet.
            crate::host::containers::owner_container(ev.cgroup_id, ev.pid);
        }
        let mut done = Vec::new();
        self.tracker
            .on_event(ev, &mut |Fact::Ended(c)| done.push(c));
        for c in done {
            self.print(&c)?;
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::{
        model::tracker::{Connection, End, Role},
        pipeline::record::{Item, Replay},
    };

    /// A real recording (see tests/fixtures/README.md): in two namespaces, 3 connections to
    /// 10.77.0.2:8080 closed by the client first, 1 connect to the closed port 9090, and 1
    /// connection to 8081 that the client aborted with SO_LINGER 0.
    const RECORDING: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/recordings/two-namespaces.jsonl"
    );

    /// The `life --json` lines of the recording.
    fn replay_lines() -> Vec<String> {
        let mut r = Replay::open(std::path::Path::new(RECORDING)).unwrap();
        let mut sink = LifeSink::new(Vec::new(), true, false, 1000, Selection::default());
        let mut ev = crate::model::event::Event::default();
        while let Item::Event = r.next_item(&mut ev).unwrap() {
            sink.event(&ev).unwrap();
        }
        sink.print_end().unwrap();
        let text = String::from_utf8(sink.out).unwrap();
        text.lines().map(String::from).collect()
    }

    fn replay() -> Vec<Connection> {
        replay_lines()
            .iter()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn evictions_are_said_at_the_end() {
        let mut r = Replay::open(std::path::Path::new(RECORDING)).unwrap();
        // Room for one socket: the recording's several connections overlap.
        let mut sink = LifeSink::new(Vec::new(), true, false, 1, Selection::default());
        let mut full = LifeSink::new(Vec::new(), true, false, 1000, Selection::default());
        let mut ev = crate::model::event::Event::default();
        while let Item::Event = r.next_item(&mut ev).unwrap() {
            sink.event(&ev).unwrap();
            full.event(&ev).unwrap();
        }
        let note = sink.eviction_note().expect("a note on evictions");
        assert!(note.contains("raise --max-sockets"), "{note}");
        assert_eq!(full.eviction_note(), None);
    }

    #[test]
    fn a_replay_names_cgroups_as_the_recording_does() {
        // The recording predates cgroup paths: its owners get none, whatever processes hold
        // those pids on this host now.
        for line in replay_lines() {
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            assert!(v.get("cgroup").is_none(), "{line}");
            assert!(v["pid"].is_u64() && v.get("end").is_some(), "{line}");
        }
    }

    /// A connection ended at its destroy without a seen close says so in both forms; others
    /// are printed as before (no field, no note).
    #[test]
    fn rows_say_when_the_close_was_not_seen() {
        let mut c = Connection::test(5_000_000, "10.0.0.2", 80, End::Aborted, Role::Active);
        let print = |c: &Connection, json: bool| {
            let mut sink = LifeSink::new(Vec::new(), json, false, 10, Selection::default());
            sink.print(c).unwrap();
            String::from_utf8(sink.out).unwrap()
        };
        assert!(print(&c, false).ends_with(" aborted\n"));
        assert!(!print(&c, true).contains("close_unseen"));
        c.close_unseen = true;
        assert!(print(&c, false).ends_with(" aborted (close unseen)\n"));
        let v: serde_json::Value = serde_json::from_str(&print(&c, true)).unwrap();
        assert_eq!(
            (&v["end"], &v["close_unseen"]),
            (&"aborted".into(), &true.into())
        );
    }

    #[test]
    fn rows_show_the_owner_cgroup() {
        use std::os::unix::fs::MetadataExt as _;
        let Some(mount) = crate::host::cgroup::cgroup2_mount() else {
            crate::host::skip::skip("no cgroup v2 hierarchy mounted");
            return;
        };
        let mut c = replay().remove(0);
        (c.pid, c.cgroup_id) = (None, Some(std::fs::metadata(mount).unwrap().ino()));
        let print = |json: bool, wide: bool| {
            let mut sink = LifeSink::new(Vec::new(), json, wide, 10, Selection::default());
            sink.print(&c).unwrap();
            String::from_utf8(sink.out).unwrap()
        };
        let v: serde_json::Value = serde_json::from_str(&print(true, false)).unwrap();
        assert_eq!(v["cgroup"], "/", "{v}");
        assert_eq!(v["cgroup_id"], c.cgroup_id.unwrap());
        let text = print(false, true);
        let lines: Vec<Vec<&str>> = text
            .lines()
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(lines[0][10..], ["CONTAINER", "CGROUP", "END"]);
        assert_eq!(lines[1][10..12], ["-", "/"]);
        let narrow = print(false, false);
        assert!(!narrow.contains("CGROUP"), "{narrow}");
        assert!(!narrow.contains("CONTAINER"), "{narrow}");
    }

    #[test]
    fn rows_show_the_owner_container() {
        // What a recording says: cgroup id 0xc0ffee is a pod's container.
        let id = "ef".repeat(32);
        let path = format!("/kubepods/burstable/pod1/{id}");
        crate::host::cgroup::learn_owner_cgroup(Some(0xc0ffee), None, Some(&path));
        crate::host::containers::learn(Some(Container {
            name: Some("web".into()),
            pod: Some("shop-7f".into()),
            namespace: Some("prod".into()),
            ..Container::unnamed(&id)
        }));
        let mut c = replay().remove(0);
        (c.pid, c.cgroup_id) = (None, Some(0xc0ffee));
        let print = |json: bool, wide: bool| {
            let mut sink = LifeSink::new(Vec::new(), json, wide, 10, Selection::default());
            sink.print(&c).unwrap();
            String::from_utf8(sink.out).unwrap()
        };
        let v: serde_json::Value = serde_json::from_str(&print(true, false)).unwrap();
        assert_eq!(v["cgroup"], path.as_str(), "{v}");
        assert_eq!(v["container_id"], id.as_str(), "{v}");
        assert_eq!(
            (&v["container"], &v["pod"], &v["namespace"]),
            (&"web".into(), &"shop-7f".into(), &"prod".into()),
            "{v}"
        );
        let text = print(false, true);
        let row: Vec<&str> = text.lines().nth(1).unwrap().split_whitespace().collect();
        assert_eq!(row[10], "prod/shop-7f/web", "{text}");
        assert!(row[11].ends_with(&id[id.len() - 20..]), "{text}");
    }

    #[test]
    fn a_recorded_stream_gives_the_workloads_connections() {
        let conns = replay();
        let mut by_end: BTreeMap<(u16, Role, String), usize> = BTreeMap::new();
        for c in &conns {
            let port = if c.role == Role::Active {
                c.dport
            } else {
                c.sport
            };
            *by_end.entry((port, c.role, c.end.to_string())).or_default() += 1;
        }
        let expected: BTreeMap<_, _> = [
            ((8080, Role::Active, "time-wait".to_string()), 3),
            ((8080, Role::Passive, "closed".to_string()), 3),
            ((9090, Role::Active, "refused".to_string()), 1),
            (
                (8081, Role::Active, "reset-by-us (TCP_STATE)".to_string()),
                1,
            ),
            ((8081, Role::Passive, "reset-by-peer".to_string()), 1),
        ]
        .into_iter()
        .collect();
        assert_eq!(by_end, expected);
        // One server process per port and one client per run, never mixed up.
        let pids = |port: u16, role: Role| -> Vec<Option<u32>> {
            let mut p: Vec<_> = conns
                .iter()
                .filter(|c| c.role == role && (c.dport == port || c.sport == port))
                .map(|c| c.pid)
                .collect();
            p.dedup();
            p
        };
        assert_eq!(pids(8080, Role::Passive).len(), 1);
        assert_eq!(pids(8080, Role::Active).len(), 1);
        assert_ne!(pids(8080, Role::Passive), pids(8080, Role::Active));
        assert!(conns.iter().all(|c| c.pid.is_some() && c.ms.is_some()));
    }

    #[test]
    fn the_time_flag_adds_the_end_time_column() {
        let c = replay().remove(0);
        // A wall clock whose monotonic zero is the Unix epoch: the end time reads as is.
        let clock = WallClock::from_offset(0);
        let mut sink =
            LifeSink::new(Vec::new(), false, false, 10, Selection::default()).with_time(clock);
        sink.print(&c).unwrap();
        let text = String::from_utf8(sink.out).unwrap();
        let mut lines = text.lines();
        assert!(lines.next().unwrap().starts_with("TIME         "), "{text}");
        let row = lines.next().unwrap();
        assert!(
            row.starts_with(&format!("{:<12} ", clock.hms(c.end_ns))),
            "{row}"
        );
        // Without -T, no TIME column.
        let mut plain = LifeSink::new(Vec::new(), false, false, 10, Selection::default());
        plain.print(&c).unwrap();
        assert!(
            String::from_utf8(plain.out)
                .unwrap()
                .trim_start()
                .starts_with("PID")
        );
    }

    #[test]
    fn a_long_cgroup_keeps_its_end_and_the_columns_in_line() {
        assert_eq!(tail("/a.slice", 32), "/a.slice");
        let long = "/kubepods.slice/kubepods-burstable.slice/cri-containerd-0123456789abcdef.scope";
        let t = tail(long, 32);
        assert_eq!(t.chars().count(), 32);
        assert!(t.starts_with('…') && long.ends_with(&t[t.char_indices().nth(1).unwrap().0..]));
        let sink = LifeSink::new(Vec::new(), false, true, 10, Selection::default());
        assert_eq!(
            sink.cgroup_column(Some(long)).chars().count(),
            sink.cgroup_column(Some("/")).chars().count()
        );
    }
}
