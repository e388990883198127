//! Recordings: the raw event stream of a live run, so `netwatch analyze` can replay it
//! offline, without root, and print exactly what the live run printed.
//!
//! `--record FILE` writes one file, `--record-dir DIR` a directory of rotated files
//! ([`rotate`]), both in the binary format ([`binary`]): a header (start time, clock offset,
//! host settings, filter, kernel, host, netwatch's version), blocks of events with their
//! owners' names, the kernel's timewait lists where the live run applied them, what each
//! `leaks` snapshot took from the host (its stuck sockets, holders, time and names), and a summary
//! at a clean stop (lost events, kernel counter deltas, stop time). A file without its
//! summary was cut short, and `analyze` says so, naming the byte offset, after replaying what
//! it read.
//!
//! [`Replay`] reads that format and the JSON lines older netwatch wrote ([`jsonl`]), told apart
//! by their first bytes.
pub mod binary;
mod compact;
pub(crate) mod encode;
pub mod jsonl;
pub mod rotate;
mod time_wait_list;
pub(crate) mod wire;

use std::{
    collections::VecDeque,
    fmt,
    fs::File,
    io::{self, BufRead, BufReader},
    path::{Path, PathBuf},
};

use crate::{
    host::snapshot::HostSnapshot,
    model::{event::Event, names::RecordedOwner, timewait::Observed},
    pipeline::{
        session::{Header, Summary},
        sink::Sink,
    },
};
use binary::{BinaryReader, Block, FileHeader, FileWriter};
pub use jsonl::FORMAT_VERSION;
use jsonl::JsonReader;
use rotate::{Limits, Rotating};

/// Where in a file: a line of JSON lines, a byte offset of the binary format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum At {
    Line(usize),
    Offset(u64),
}

impl fmt::Display for At {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            At::Line(n) => write!(f, "line {n}"),
            At::Offset(n) => write!(f, "byte offset {n}"),
        }
    }
}

/// Why a recording could not be read to its end.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("cannot open {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: byte offset 0: not a netwatch recording ({detail})")]
    Foreign { path: PathBuf, detail: String },
    #[error("{path}: line 1: not a netwatch recording ({detail})")]
    NoHeader { path: PathBuf, detail: String },
    #[error(
        "{path}: {at}: unsupported recording version {version} (this netwatch reads {reads}); \
         a later netwatch wrote it"
    )]
    Version {
        path: PathBuf,
        at: At,
        version: u32,
        reads: String,
    },
    #[error("{path}: {at}: corrupt record: {detail}")]
    Corrupt {
        path: PathBuf,
        at: At,
        detail: String,
    },
    #[error(
        "{path}: {at}: truncated: the recording ends without its {missing} (the run that wrote \
         it did not stop cleanly); {events} events were read"
    )]
    Truncated {
        path: PathBuf,
        at: At,
        events: u64,
        missing: &'static str,
    },
    #[error(
        "{path}: {at}: the recording continues in a later file of its directory, not given \
         here; replay the directory"
    )]
    Continues { path: PathBuf, at: At },
    #[error(
        "{path} is a recording of another run than {first} (started at monotonic {started_ns} \
         ns, not {first_started_ns} ns); replay one run's files at a time"
    )]
    OtherRun {
        path: PathBuf,
        first: PathBuf,
        started_ns: u64,
        first_started_ns: u64,
    },
    #[error("{path}: {at}: {source}")]
    Read {
        path: PathBuf,
        at: At,
        source: io::Error,
    },
    #[error(
        "{dir} holds the files of {runs} runs ({names}); move one run's files \
         (`<run>-*.nwr`) to a directory of their own and replay that"
    )]
    ManyRuns {
        dir: PathBuf,
        runs: usize,
        names: String,
    },
    #[error("{dir} holds no recording (*.nwr)")]
    EmptyDir { dir: PathBuf },
}

/// Where `--record` writes.
#[derive(Clone, Debug, PartialEq)]
pub enum Target {
    /// One file (`--record FILE`).
    File(PathBuf),
    /// Rotated files in a directory, within limits (`--record-dir DIR`).
    Dir { dir: PathBuf, limits: Limits },
}

impl Target {
    pub fn path(&self) -> &Path {
        match self {
            Target::File(p) => p,
            Target::Dir { dir, .. } => dir,
        }
    }
}

enum Dest {
    File(FileWriter),
    Dir(Box<Rotating>),
}

/// Writes the recording while passing every event on to the live sink.
pub struct Recorder<S> {
    block: Block,
    dest: Dest,
    inner: S,
    /// Snapshots the sink took when the stream stopped, written before the summary.
    last_snapshots: Vec<HostSnapshot>,
}

impl<S: Sink> Recorder<S> {
    /// Starts the recording of a run: `origin` says which ([`Header`]), where, and by which
    /// netwatch ([`FileHeader::here`] for a live run).
    pub fn create(target: &Target, origin: &FileHeader, mut inner: S) -> io::Result<Self> {
        inner.record_host_snapshots();
        let dest = match target {
            Target::File(path) => Dest::File(FileWriter::create(path, origin)?),
            Target::Dir { dir, limits } => {
                Dest::Dir(Box::new(Rotating::create(dir, *limits, origin)?))
            }
        };
        Ok(Self {
            block: Block::new()?,
            dest,
            inner,
            last_snapshots: Vec::new(),
        })
    }

    /// Writes a snapshot's host side after the events before it (the block being filled).
    fn write_snapshot(&mut self, snapshot: &HostSnapshot) -> io::Result<()> {
        self.write_block()?;
        let frame = binary::snapshot_frame(snapshot)?;
        match &mut self.dest {
            Dest::File(f) => f.write(&frame),
            Dest::Dir(d) => {
                d.write_block(&frame, 0);
                Ok(())
            }
        }
    }

    /// Writes the snapshots the sink took since the last call.
    fn write_snapshots(&mut self) -> io::Result<()> {
        for s in self.inner.take_host_snapshots() {
            self.write_snapshot(&s)?;
        }
        Ok(())
    }

    /// Writes the block being filled.
    fn write_block(&mut self) -> io::Result<()> {
        if self.block.is_empty() {
            return Ok(());
        }
        let events = self.block.events();
        let frame = self.block.take_frame()?;
        match &mut self.dest {
            Dest::File(f) => f.write(&frame),
            Dest::Dir(d) => {
                d.write_block(&frame, events);
                Ok(())
            }
        }
    }

    /// Writes the last block and the summary (counting, in `summary.unrecorded`, what a
    /// recording directory left out), and returns the live sink.
    pub fn finish(mut self, summary: &mut Summary) -> io::Result<S> {
        self.write_block()?;
        for s in std::mem::take(&mut self.last_snapshots) {
            self.write_snapshot(&s)?;
        }
        match self.dest {
            Dest::File(mut f) => {
                f.write(&binary::summary_frame(summary)?)?;
                f.flush()?;
            }
            Dest::Dir(d) => {
                summary.unrecorded = d.unrecorded;
                d.finish(summary)?;
            }
        }
        Ok(self.inner)
    }
}

impl<S: Sink> Recorder<S> {
    /// Writes what it holds and ends without a summary: the recording it rewrites was cut
    /// short, and so is this one.
    pub fn abandon(mut self) -> io::Result<()> {
        self.write_block()?;
        match &mut self.dest {
            Dest::File(f) => f.flush(),
            Dest::Dir(d) => {
                d.flush();
                Ok(())
            }
        }
    }
}

impl<S: Sink> Sink for Recorder<S> {
    fn attach(&mut self, probe: &crate::kernel::probe::Probe) -> anyhow::Result<()> {
        self.inner.attach(probe)
    }

    fn stopped(&mut self, stop: crate::pipeline::session::StopReason) {
        self.inner.stopped(stop);
        // Written by `finish`, which can say when that fails.
        self.last_snapshots = self.inner.take_host_snapshots();
    }

    fn host_snapshot(&mut self, snapshot: &HostSnapshot) -> io::Result<()> {
        self.write_snapshot(snapshot)?;
        self.inner.host_snapshot(snapshot)
    }

    fn event(&mut self, ev: &Event) -> io::Result<()> {
        // What only this host can add (`trace --stacks`: the symbolized stack) is recorded
        // too, so that a replay shows it.
        let ev = self.inner.completed(ev);
        let ev = ev.as_ref();
        match &mut self.dest {
            // Stopped at its cap: counted, not encoded.
            Dest::Dir(d) if d.stopped() => d.unrecorded += 1,
            _ => {
                // The owner's names as the live run knows them, so a replay names the same.
                use crate::host::containers;
                self.block.event(ev, containers::names_generation(), || {
                    containers::owner_names(ev.cgroup_id, ev.pid)
                })?;
                if self.block.is_full() {
                    self.write_block()?;
                }
            }
        }
        self.inner.event(ev)
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.block.is_old() {
            self.write_block()?;
        }
        // The sink may take a snapshot now: it follows every event written so far.
        self.inner.flush()?;
        self.write_snapshots()?;
        match &mut self.dest {
            Dest::File(f) => f.flush(),
            Dest::Dir(d) => {
                d.flush();
                d.rotate_if_old();
                Ok(())
            }
        }
    }

    fn wants_time_waits(&self) -> bool {
        self.inner.wants_time_waits()
    }

    fn time_waits(&mut self, obs: &Observed) -> io::Result<()> {
        if !matches!(&self.dest, Dest::Dir(d) if d.stopped()) {
            self.block.time_waits(obs)?;
            if self.block.is_full() {
                self.write_block()?;
            }
        }
        self.inner.time_waits(obs)
    }
}

/// What a recording says about an event's owner, taken as this host's answer: a replay names
/// what the live run named, not what this host says now about its pids or containers.
fn learn_owner(ev: &Event, owner: RecordedOwner) {
    crate::host::cgroup::learn_owner_cgroup(ev.cgroup_id, ev.pid, owner.cgroup.as_deref());
    crate::host::containers::learn(owner.container);
}

/// What [`Replay::next_item`] found.
pub enum Item {
    /// An event, read into the caller's buffer: one buffer for a whole replay, rather than
    /// an event made and moved through each reader's layer.
    Event,
    /// A namespace's timewait list, applied here in the live run.
    TimeWaits(Box<Observed>),
    /// What a `leaks` snapshot took from the host, here in the live run.
    HostSnapshot(Box<HostSnapshot>),
    End(Summary),
}

/// What a file's reader found: an item, or the end of a file that rotation closed.
#[allow(
    clippy::large_enum_variant,
    reason = "returned once per event and matched at once: boxing would allocate per event"
)]
pub enum Next {
    Item(Item),
    Continued,
}

enum Reader {
    Json(Box<JsonReader>),
    Binary(Box<BinaryReader>),
}

impl Reader {
    fn open(path: &Path) -> Result<Reader, RecordError> {
        let file = File::open(path).map_err(|source| RecordError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        let mut reader = BufReader::with_capacity(1 << 20, file);
        let start = reader.fill_buf().map_err(|source| RecordError::Read {
            path: path.to_path_buf(),
            at: At::Offset(0),
            source,
        })?;
        if !start.is_empty() && binary::MAGIC.starts_with(&start[..start.len().min(8)]) {
            return Ok(Reader::Binary(Box::new(BinaryReader::open(path, reader)?)));
        }
        if start.is_empty() {
            return Err(RecordError::Foreign {
                path: path.to_path_buf(),
                detail: "the file is empty".into(),
            });
        }
        if start[0] == b'{' {
            return Ok(Reader::Json(Box::new(JsonReader::open(path, reader)?)));
        }
        let shown: String = start
            .iter()
            .take(8)
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(" ");
        Err(RecordError::Foreign {
            path: path.to_path_buf(),
            detail: format!(
                "it starts with bytes {shown}, neither a binary recording's magic nor a \
                 JSON-lines header"
            ),
        })
    }

    fn header(&self) -> &Header {
        match self {
            Reader::Json(r) => &r.header,
            Reader::Binary(r) => &r.header.run,
        }
    }

    #[inline]
    fn next(&mut self, ev: &mut Event) -> Result<Next, RecordError> {
        match self {
            Reader::Json(r) => r.next_item(ev).map(Next::Item),
            Reader::Binary(r) => r.next_item(ev),
        }
    }
}

/// How many bytes a binary recording took, and what its blocks hold uncompressed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sizes {
    pub stored: u64,
    pub uncompressed: u64,
}

/// Reads a recording: one file, or the files of one run in order (a recording directory), as
/// one stream.
pub struct Replay {
    reader: Reader,
    path: PathBuf,
    first: PathBuf,
    rest: VecDeque<PathBuf>,
    /// Bytes of the binary files read before the current one.
    sizes_before: Sizes,
    pub header: Header,
    /// Where and by what the recording was made (binary recordings only).
    pub origin: Option<FileHeader>,
}

impl Replay {
    /// A recording file, or a recording directory (`--record-dir`) holding one run's files.
    pub fn open(path: &Path) -> Result<Self, RecordError> {
        if path.is_dir() {
            let files = rotate::recordings_in(path).map_err(|source| RecordError::Open {
                path: path.to_path_buf(),
                source,
            })?;
            let mut runs: Vec<&str> = files.iter().filter_map(|f| rotate::run_of(f)).collect();
            runs.dedup();
            if runs.len() > 1 {
                return Err(RecordError::ManyRuns {
                    dir: path.to_path_buf(),
                    runs: runs.len(),
                    names: runs.join(", "),
                });
            }
            return Self::open_all(&files).map_err(|e| match e {
                RecordError::EmptyDir { .. } => RecordError::EmptyDir {
                    dir: path.to_path_buf(),
                },
                e => e,
            });
        }
        Self::open_all(std::slice::from_ref(&path.to_path_buf()))
    }

    /// Files of one run, replayed in the order given.
    fn open_all(files: &[PathBuf]) -> Result<Self, RecordError> {
        let mut rest: VecDeque<PathBuf> = files.iter().cloned().collect();
        let Some(first) = rest.pop_front() else {
            return Err(RecordError::EmptyDir {
                dir: PathBuf::from("."),
            });
        };
        let reader = Reader::open(&first)?;
        let header = reader.header().clone();
        let origin = match &reader {
            Reader::Binary(r) => Some(r.header.clone()),
            Reader::Json(_) => None,
        };
        Ok(Replay {
            reader,
            path: first.clone(),
            first,
            rest,
            sizes_before: Sizes::default(),
            header,
            origin,
        })
    }

    /// The next event, or the summary at the end; an error names the file and where in it.
    /// Inlined into the replay loop, as [`BinaryReader::next_item`] is into it.
    #[inline]
    pub fn next_item(&mut self, ev: &mut Event) -> Result<Item, RecordError> {
        match self.reader.next(ev)? {
            Next::Item(item) => Ok(item),
            Next::Continued => self.next_file(ev),
        }
    }

    /// The file after a rotated one (the current file ended with its `CONTINUED` frame),
    /// read from its first item.
    #[inline(never)]
    fn next_file(&mut self, ev: &mut Event) -> Result<Item, RecordError> {
        loop {
            let at = match &self.reader {
                Reader::Binary(r) => At::Offset(r.stored_bytes),
                Reader::Json(_) => At::Line(0),
            };
            let Some(next) = self.rest.pop_front() else {
                return Err(RecordError::Continues {
                    path: self.path.clone(),
                    at,
                });
            };
            let reader = Reader::open(&next)?;
            if reader.header().started_ns != self.header.started_ns {
                return Err(RecordError::OtherRun {
                    path: next,
                    first: self.first.clone(),
                    started_ns: reader.header().started_ns,
                    first_started_ns: self.header.started_ns,
                });
            }
            self.sizes_before = self.sizes().unwrap_or_default();
            self.reader = reader;
            self.path = next;
            if let Next::Item(item) = self.reader.next(ev)? {
                return Ok(item);
            }
        }
    }

    /// For a binary recording, the bytes read so far and what they hold uncompressed.
    pub fn sizes(&self) -> Option<Sizes> {
        match &self.reader {
            Reader::Binary(r) => Some(Sizes {
                stored: self.sizes_before.stored + r.stored_bytes,
                uncompressed: self.sizes_before.uncompressed + r.raw_bytes,
            }),
            Reader::Json(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        host::{scratch::Scratch, snapshot::TopTick, stuck::StuckSnapshot},
        model::event::{EventKind, TcpState},
        pipeline::sink::push_event_json,
    };

    struct Collect(Vec<Event>);
    impl Sink for Collect {
        fn event(&mut self, ev: &Event) -> io::Result<()> {
            self.0.push(ev.clone());
            Ok(())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn header() -> Header {
        Header {
            netwatch_record: FORMAT_VERSION,
            started_ns: 7,
            wall_offset_ns: 1_700_000_000_000_000_000,
            settings: crate::model::analysis::HostSettings::default(),
            filter: vec!["-L".into(), "80".into()],
        }
    }

    /// A churn's events: both sides of `n / 4` connections, pseudo-random sockets and ports,
    /// owners known or not, a few comms.
    fn churn(n: usize) -> Vec<Event> {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut ts = 2_000_000_000u64;
        (0..n)
            .map(|i| {
                ts += next() % 20_000;
                let mut ev = Event::test_state(ts);
                ev.sock = 0xffff_8881_0000_0000 + (next() % 4096) * 256;
                if i % 3 != 0 {
                    let pid = 1000 + (next() % 8) as u32;
                    (ev.pid, ev.tid) = (Some(pid), Some(pid));
                    ev.comm = Some(["curl", "nginx", "app"][pid as usize % 3].into());
                    ev.cgroup_id = Some(0x1000 + u64::from(pid % 4));
                }
                ev.netns = Some(4_026_531_840);
                (ev.saddr, ev.sport) =
                    ("10.0.0.1".parse().unwrap(), 32768 + (next() % 28000) as u16);
                (ev.daddr, ev.dport) = ("10.0.0.2".parse().unwrap(), 80);
                let states = [TcpState::SynSent, TcpState::Established, TcpState::FinWait1];
                ev.kind = match i % 4 {
                    0 => EventKind::Destroy {
                        state: Some(TcpState::Close),
                    },
                    k => EventKind::State {
                        old_state: Some(states[k - 1]),
                        new_state: Some(states[k % 3]),
                        ms_in_old: Some((next() % 10_000_000) as f64 / 1e6),
                        bytes_sent: None,
                        bytes_received: None,
                        srtt_ms: None,
                    },
                };
                ev
            })
            .collect()
    }

    fn summary() -> Summary {
        Summary {
            stopped_ns: 999,
            lost: 3,
            ..Summary::default()
        }
    }

    fn write(target: &Target, events: &[Event], finish: bool) -> Summary {
        let mut rec =
            Recorder::create(target, &FileHeader::here(&header()), Collect(vec![])).unwrap();
        for ev in events {
            rec.event(ev).unwrap();
        }
        rec.flush().unwrap();
        let mut s = summary();
        if finish {
            let live = rec.finish(&mut s).unwrap();
            assert_eq!(live.0, events, "the live sink sees every event");
        } else {
            // A run killed: the last block and the summary never reach the file.
            if let Dest::File(f) = &mut rec.dest {
                f.flush().unwrap();
            }
        }
        s
    }

    fn read_all(path: &Path) -> (Vec<Event>, Result<Summary, RecordError>) {
        let mut r = match Replay::open(path) {
            Ok(r) => r,
            Err(e) => return (vec![], Err(e)),
        };
        let mut evs = vec![];
        let mut ev = Event::default();
        loop {
            match r.next_item(&mut ev) {
                Ok(Item::Event) => evs.push(ev.clone()),
                Ok(Item::TimeWaits(_) | Item::HostSnapshot(_)) => {}
                Ok(Item::End(s)) => return (evs, Ok(s)),
                Err(e) => return (evs, Err(e)),
            }
        }
    }

    /// A private directory (removed when the test ends, by a panic too) and a file in it.
    fn tmp(name: &str) -> (Scratch, PathBuf) {
        let scratch = Scratch::new(&format!("record-{name}"));
        let path = scratch.path("events.nwr");
        (scratch, path)
    }

    /// Where each frame of a binary file starts, and its kind.
    fn frames(bytes: &[u8]) -> Vec<(usize, u8)> {
        let mut at = 12;
        let mut out = vec![];
        while at + 9 <= bytes.len() {
            let len = u32::from_le_bytes(bytes[at + 1..at + 5].try_into().unwrap()) as usize;
            out.push((at, bytes[at]));
            at += 9 + len;
        }
        out
    }

    #[test]
    fn a_recording_replays_the_same_events_header_and_summary() {
        let (_scratch, path) = tmp("ok");
        let events = churn(20_000);
        write(&Target::File(path.clone()), &events, true);
        let (evs, end) = read_all(&path);
        assert_eq!(evs, events);
        assert_eq!(end.unwrap(), summary());
        let replay = Replay::open(&path).unwrap();
        assert_eq!(replay.header, header());
        let origin = replay.origin.unwrap();
        assert_eq!(origin.netwatch, env!("CARGO_PKG_VERSION"));
        assert!(
            origin.kernel.is_some() && origin.host.is_some(),
            "{origin:?}"
        );
        let blocks = frames(&std::fs::read(&path).unwrap())
            .iter()
            .filter(|(_, k)| *k == binary::frame::BLOCK_ZSTD)
            .count();
        assert!(blocks >= 2, "{blocks} compressed blocks");
    }

    #[test]
    fn timewait_lists_come_back_where_they_were_recorded() {
        let (_scratch, path) = tmp("tw");
        let obs = Observed {
            netns: 4_026_531_840,
            taken_ns: 55,
            settings: crate::model::analysis::HostSettings::default(),
            sockets: vec![(
                "10.0.0.1:80".parse().unwrap(),
                "10.0.0.2:40000".parse().unwrap(),
                59_000,
            )],
            kernel_overflows: Some(2),
        };
        let mut rec = Recorder::create(
            &Target::File(path.clone()),
            &FileHeader::here(&header()),
            Collect(vec![]),
        )
        .unwrap();
        rec.event(&Event::test_state(1)).unwrap();
        rec.time_waits(&obs).unwrap();
        rec.event(&Event::test_state(2)).unwrap();
        rec.finish(&mut summary()).unwrap();
        let mut r = Replay::open(&path).unwrap();
        let mut seen = vec![];
        let mut ev = Event::default();
        loop {
            match r.next_item(&mut ev).unwrap() {
                Item::Event => seen.push(format!("event {}", ev.ts_ns)),
                Item::TimeWaits(t) => {
                    assert_eq!(*t, obs);
                    seen.push("time_waits".into());
                }
                Item::HostSnapshot(_) => seen.push("snapshot".into()),
                Item::End(_) => break,
            }
        }
        assert_eq!(seen, ["event 1", "time_waits", "event 2"]);

        // A version-3 file cannot hold the binary list: its reader would not know it.
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[8..12].copy_from_slice(&3u32.to_le_bytes());
        std::fs::write(&path, &bytes).unwrap();
        let mut r = Replay::open(&path).unwrap();
        let msg = loop {
            match r.next_item(&mut ev) {
                Ok(Item::End(_)) => panic!("read a version-4 timewait list in a version-3 file"),
                Ok(_) => {}
                Err(e) => break e.to_string(),
            }
        };
        assert!(msg.contains("a record at byte"), "{msg}");

        // The JSON list versions 1 to 3 wrote still reads.
        let mut rec = Recorder::create(
            &Target::File(path.clone()),
            &FileHeader::here(&header()),
            Collect(vec![]),
        )
        .unwrap();
        rec.event(&Event::test_state(1)).unwrap();
        rec.block.time_waits_as_json(&obs);
        // Another socket: a second event of the first would be a same-socket record, which a
        // version-3 file cannot hold either.
        let mut other = Event::test_state(2);
        other.sock += 0x100;
        rec.event(&other).unwrap();
        rec.finish(&mut summary()).unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[8..12].copy_from_slice(&3u32.to_le_bytes());
        std::fs::write(&path, &bytes).unwrap();
        let mut r = Replay::open(&path).unwrap();
        let mut seen = vec![];
        loop {
            match r.next_item(&mut ev).unwrap() {
                Item::Event => seen.push(format!("event {}", ev.ts_ns)),
                Item::TimeWaits(t) => {
                    assert_eq!(*t, obs);
                    seen.push("time_waits".into());
                }
                Item::HostSnapshot(_) => seen.push("snapshot".into()),
                Item::End(_) => break,
            }
        }
        assert_eq!(seen, ["event 1", "time_waits", "event 2"]);
    }

    /// Takes a leaks-like snapshot at every flush and at the stop, once a recording asks.
    #[derive(Default)]
    struct Snapper {
        asked: bool,
        taken: Vec<HostSnapshot>,
        flushes: u64,
    }

    impl Snapper {
        fn snapshot(&mut self, last: bool) {
            if !self.asked {
                return;
            }
            self.flushes += 1;
            let sockets = (0..3_000u64)
                .map(|i| {
                    let socket = crate::host::sockdiag::DiagSocket {
                        family: libc::AF_INET as u8,
                        state: 8,
                        src: "10.0.0.1:80".parse().unwrap(),
                        dst: format!("10.0.{}.{}:40000", i / 250, i % 250)
                            .parse()
                            .unwrap(),
                        inode: 1000 + i,
                        uid: 0,
                        cookie: i,
                        last_ack_recv_ms: Some(1500),
                        expires_ms: 0,
                        fin_timeout_ms: Some(60_000),
                        timer: 0,
                    };
                    (4_026_531_840, socket)
                })
                .collect();
            self.taken.push(HostSnapshot::Stuck(Box::new(StuckSnapshot {
                taken_ns: self.flushes,
                last,
                dump: crate::host::stuck::Dump {
                    sockets,
                    complete: true,
                    ..Default::default()
                },
                paths: vec![crate::host::stacks::CodePath {
                    frames: vec!["handle (srv.c:12)".into()],
                    ..Default::default()
                }],
                stacks: vec![(42, 3, Some(0))],
                ..StuckSnapshot::default()
            })));
        }
    }

    impl Sink for Snapper {
        fn event(&mut self, _ev: &Event) -> io::Result<()> {
            Ok(())
        }
        fn flush(&mut self) -> io::Result<()> {
            self.snapshot(false);
            Ok(())
        }
        fn stopped(&mut self, _stop: crate::pipeline::session::StopReason) {
            self.snapshot(true);
        }
        fn record_host_snapshots(&mut self) {
            self.asked = true;
        }
        fn take_host_snapshots(&mut self) -> Vec<HostSnapshot> {
            std::mem::take(&mut self.taken)
        }
    }

    #[test]
    fn leaks_snapshots_come_back_after_the_events_before_them_and_before_the_summary() {
        let (_scratch, path) = tmp("snapshots");
        let mut rec = Recorder::create(
            &Target::File(path.clone()),
            &FileHeader::here(&header()),
            Snapper::default(),
        )
        .unwrap();
        rec.event(&Event::test_state(1)).unwrap();
        rec.flush().unwrap();
        rec.event(&Event::test_state(2)).unwrap();
        rec.event(&Event::test_state(3)).unwrap();
        rec.flush().unwrap();
        rec.event(&Event::test_state(4)).unwrap();
        rec.stopped(crate::pipeline::session::StopReason::Signal);
        let mut s = summary();
        let snapper = rec.finish(&mut s).unwrap();
        assert!(
            snapper.taken.is_empty(),
            "the recording took every snapshot"
        );
        let bytes = std::fs::read(&path).unwrap();
        assert!(
            frames(&bytes)
                .iter()
                .any(|(_, k)| *k == binary::frame::SNAPSHOT),
            "a snapshot frame of its own"
        );
        assert_eq!(&bytes[8..12], &binary::VERSION.to_le_bytes());
        let mut r = Replay::open(&path).unwrap();
        let mut seen = vec![];
        let mut ev = Event::default();
        loop {
            match r.next_item(&mut ev).unwrap() {
                Item::Event => seen.push(format!("event {}", ev.ts_ns)),
                Item::TimeWaits(_) => seen.push("time_waits".into()),
                Item::HostSnapshot(h) => {
                    let HostSnapshot::Stuck(h) = *h else {
                        panic!("a tick in a leaks recording: {h:?}")
                    };
                    assert_eq!(h.dump.sockets.len(), 3_000);
                    assert_eq!(h.paths[0].frames, ["handle (srv.c:12)"]);
                    seen.push(format!("snapshot {} last {}", h.taken_ns, h.last));
                }
                Item::End(end) => {
                    assert_eq!(end, s);
                    break;
                }
            }
        }
        assert_eq!(
            seen,
            [
                "event 1",
                "snapshot 1 last false",
                "event 2",
                "event 3",
                "snapshot 2 last false",
                "event 4",
                "snapshot 3 last true"
            ]
        );
        // Compressed: 3,000 sockets take far less than their JSON.
        let sizes = r.sizes().unwrap();
        let per = |b: u64| b as f64 / 9_000.0;
        eprintln!(
            "snapshots: {:.1} bytes/stuck socket stored, {:.1} as JSON",
            per(sizes.stored),
            per(sizes.uncompressed)
        );
        assert!(bytes.len() < 200_000, "{} bytes", bytes.len());
        // A version-1 file cannot hold one: there, the frame is damage (or a later format).
        let mut old = bytes.clone();
        old[8..12].copy_from_slice(&1u32.to_le_bytes());
        std::fs::write(&path, &old).unwrap();
        let mut r = Replay::open(&path).unwrap();
        let msg = loop {
            match r.next_item(&mut Event::default()) {
                Ok(Item::End(_)) => panic!("read a snapshot frame in a version-1 file"),
                Ok(_) => {}
                Err(e) => break e.to_string(),
            }
        };
        assert!(msg.contains("unknown frame kind 6"), "{msg}");
    }

    /// Prints a `top`-like summary at every flush and its end at the stop, once asked.
    #[derive(Default)]
    struct Ticker {
        asked: bool,
        taken: Vec<HostSnapshot>,
        ticks: u64,
    }

    impl Ticker {
        fn tick(&mut self, last: bool) {
            if self.asked {
                self.ticks += 1;
                self.taken.push(HostSnapshot::Tick(TopTick {
                    at_ns: self.ticks,
                    lost: 7,
                    interval_ns: 1_000_000_000,
                    last,
                    printed: last,
                    report: last,
                }));
            }
        }
    }

    impl Sink for Ticker {
        fn event(&mut self, _ev: &Event) -> io::Result<()> {
            Ok(())
        }
        fn flush(&mut self) -> io::Result<()> {
            self.tick(false);
            Ok(())
        }
        fn stopped(&mut self, _stop: crate::pipeline::session::StopReason) {
            self.tick(true);
        }
        fn record_host_snapshots(&mut self) {
            self.asked = true;
        }
        fn take_host_snapshots(&mut self) -> Vec<HostSnapshot> {
            std::mem::take(&mut self.taken)
        }
    }

    #[test]
    fn top_ticks_come_back_in_stream_order_and_a_version_2_file_cannot_hold_one() {
        let (_scratch, path) = tmp("ticks");
        let mut rec = Recorder::create(
            &Target::File(path.clone()),
            &FileHeader::here(&header()),
            Ticker::default(),
        )
        .unwrap();
        rec.event(&Event::test_state(1)).unwrap();
        rec.flush().unwrap();
        rec.event(&Event::test_state(2)).unwrap();
        rec.stopped(crate::pipeline::session::StopReason::Signal);
        rec.finish(&mut summary()).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let ticks = frames(&bytes)
            .iter()
            .filter(|(_, k)| *k == binary::frame::TICK)
            .count();
        assert_eq!(ticks, 2, "a tick frame each");
        let mut r = Replay::open(&path).unwrap();
        let mut seen = vec![];
        let mut ev = Event::default();
        loop {
            match r.next_item(&mut ev).unwrap() {
                Item::Event => seen.push(format!("event {}", ev.ts_ns)),
                Item::HostSnapshot(h) => match *h {
                    HostSnapshot::Tick(t) => {
                        assert_eq!((t.lost, t.interval_ns), (7, 1_000_000_000));
                        seen.push(format!("tick {} last {}", t.at_ns, t.last));
                    }
                    other => panic!("{other:?}"),
                },
                Item::TimeWaits(_) => seen.push("time_waits".into()),
                Item::End(_) => break,
            }
        }
        assert_eq!(
            seen,
            [
                "event 1",
                "tick 1 last false",
                "event 2",
                "tick 2 last true"
            ]
        );
        let mut old = bytes.clone();
        old[8..12].copy_from_slice(&2u32.to_le_bytes());
        std::fs::write(&path, &old).unwrap();
        let mut r = Replay::open(&path).unwrap();
        let msg = loop {
            match r.next_item(&mut Event::default()) {
                Ok(Item::End(_)) => panic!("read a tick frame in a version-2 file"),
                Ok(_) => {}
                Err(e) => break e.to_string(),
            }
        };
        assert!(msg.contains("unknown frame kind 7"), "{msg}");
    }

    /// The size of a churn's events on disk, compressed and not (the bench measures the same
    /// on its synthetic recording: `analyze`'s last line).
    #[test]
    fn a_churn_takes_few_bytes_per_event() {
        let (_scratch, path) = tmp("size");
        let events = churn(40_000);
        write(&Target::File(path.clone()), &events, true);
        let mut r = Replay::open(&path).unwrap();
        while !matches!(r.next_item(&mut Event::default()).unwrap(), Item::End(_)) {}
        let sizes = r.sizes().unwrap();
        let per = |b: u64| b as f64 / events.len() as f64;
        eprintln!(
            "churn: {:.1} bytes/event stored, {:.1} uncompressed",
            per(sizes.stored),
            per(sizes.uncompressed)
        );
        assert!(per(sizes.stored) <= 40.0, "{sizes:?}");
        assert!(per(sizes.uncompressed) <= 100.0, "{sizes:?}");
        assert_eq!(sizes.stored, std::fs::metadata(&path).unwrap().len());
    }

    /// Sockets' lives as a host interleaves them, in a version-4 file: the same events back
    /// (from same-socket records, most of them); the same file said to be version 3 is damage
    /// at its first same-socket record, named at its block.
    #[test]
    fn interleaved_lives_replay_the_same_and_same_socket_records_need_version_4() {
        let (_scratch, path) = tmp("lives");
        let events: Vec<Event> = encode::tests::lives(3_000)
            .into_iter()
            .map(|(ev, _)| ev)
            .collect();
        write(&Target::File(path.clone()), &events, true);
        let (evs, end) = read_all(&path);
        assert_eq!(evs, events);
        end.unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[8..12], &4u32.to_le_bytes());
        let blocks: Vec<usize> = frames(&bytes)
            .iter()
            .filter(|(_, k)| matches!(*k, binary::frame::BLOCK | binary::frame::BLOCK_ZSTD))
            .map(|&(at, _)| at)
            .collect();
        assert!(blocks.len() >= 2, "{blocks:?}");
        bytes[8..12].copy_from_slice(&3u32.to_le_bytes());
        std::fs::write(&path, &bytes).unwrap();
        let (evs, end) = read_all(&path);
        let msg = end.unwrap_err().to_string();
        assert!(
            msg.contains(&format!(
                "byte offset {}: corrupt record: a record at byte ",
                blocks[0]
            )),
            "{msg}"
        );
        assert!(
            evs.len() < 20,
            "read {} events before the first same-socket record",
            evs.len()
        );
        assert_eq!(evs[..], events[..evs.len()]);
    }

    /// A version-3 recording (`trace --stacks --record`, made by the netwatch before version
    /// 4: see the fixtures' README) reads, and written again as version 4 reads the same.
    #[test]
    fn a_version_3_recording_reads_and_rewrites_the_same() {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/recordings/trace-v3.nwr");
        assert_eq!(&std::fs::read(&path).unwrap()[8..12], &3u32.to_le_bytes());
        let (events, end) = read_all(&path);
        end.unwrap();
        assert_eq!(events.len(), 310);
        assert!(events.iter().any(|e| !e.stack.is_empty()));
        let (_scratch, out) = tmp("v3");
        write(&Target::File(out.clone()), &events, true);
        let (back, end) = read_all(&out);
        end.unwrap();
        assert_eq!(back, events);
        let (v3, v4) = (
            std::fs::metadata(&path).unwrap().len(),
            std::fs::metadata(&out).unwrap().len(),
        );
        eprintln!("trace-v3.nwr: {v3} bytes as version 3, {v4} as version 4");
    }

    #[test]
    fn a_file_cut_anywhere_names_the_offset_after_the_events_before_it() {
        let (_scratch, path) = tmp("cut");
        let events = churn(12_000);
        write(&Target::File(path.clone()), &events, true);
        let whole = std::fs::read(&path).unwrap();
        let starts = frames(&whole);
        let cut_path = path.with_extension("cut");
        let mut cuts: Vec<usize> = (0..whole.len()).step_by(4099).collect();
        cuts.extend(
            starts
                .iter()
                .flat_map(|&(at, _)| [at, at + 1, at + 9, at + 10]),
        );
        for cut in cuts.into_iter().filter(|&c| c < whole.len()) {
            std::fs::write(&cut_path, &whole[..cut]).unwrap();
            let (evs, end) = read_all(&cut_path);
            let msg = end.unwrap_err().to_string();
            assert!(msg.contains(": byte offset "), "cut at {cut}: {msg}");
            // Whole blocks only, and in order: what was read is the start of the stream.
            assert_eq!(evs[..], events[..evs.len()], "cut at {cut}");
            let at: usize = msg
                .split(": byte offset ")
                .nth(1)
                .and_then(|r| r.split(':').next())
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("no offset in {msg}"));
            assert!(at <= cut, "cut at {cut}, named {at}: {msg}");
            if cut >= starts[1].0 {
                // Past the header: the offset is where the cut frame starts, or the end.
                assert!(
                    starts.iter().any(|&(s, _)| s == at) || at == cut,
                    "cut at {cut}, named {at}: {msg}"
                );
            }
        }
        // Cut between frames: no summary.
        let last_block = starts
            .iter()
            .rev()
            .find(|(_, k)| *k != binary::frame::SUMMARY);
        let end_of_blocks = starts.last().unwrap().0;
        std::fs::write(&cut_path, &whole[..end_of_blocks]).unwrap();
        let (evs, end) = read_all(&cut_path);
        assert_eq!(evs, events);
        let msg = end.unwrap_err().to_string();
        assert!(
            msg.contains(&format!(
                "byte offset {end_of_blocks}: truncated: the recording ends without its summary frame"
            )) && msg.contains("12000 events were read"),
            "{msg} {last_block:?}"
        );
    }

    #[test]
    fn a_damaged_block_names_its_offset_after_the_blocks_before_it() {
        let (_scratch, path) = tmp("flip");
        let events = churn(12_000);
        write(&Target::File(path.clone()), &events, true);
        let mut bytes = std::fs::read(&path).unwrap();
        let blocks: Vec<usize> = frames(&bytes)
            .iter()
            .filter(|(_, k)| *k == binary::frame::BLOCK_ZSTD)
            .map(|&(at, _)| at)
            .collect();
        assert!(blocks.len() >= 2, "{blocks:?}");
        let second = blocks[1];
        bytes[second + 40] ^= 0x10;
        std::fs::write(&path, &bytes).unwrap();
        let (evs, end) = read_all(&path);
        let msg = end.unwrap_err().to_string();
        assert!(
            msg.contains(&format!(
                "byte offset {second}: corrupt record: the checksum of this"
            )),
            "{msg}"
        );
        assert!(
            !evs.is_empty() && evs[..] == events[..evs.len()],
            "{}",
            evs.len()
        );
        // A length past any frame's is damage too, named at its frame.
        bytes[second + 40] ^= 0x10;
        bytes[second + 4] = 0x7f;
        std::fs::write(&path, &bytes).unwrap();
        let msg = read_all(&path).1.unwrap_err().to_string();
        assert!(
            msg.contains(&format!("byte offset {second}: corrupt record: a frame of")),
            "{msg}"
        );
    }

    #[test]
    fn foreign_and_newer_files_are_named_as_such() {
        let (_scratch, path) = tmp("foreign");
        std::fs::write(&path, b"\x7fELF\x02\x01\x01\0rest").unwrap();
        let msg = Replay::open(&path).err().unwrap().to_string();
        assert!(
            msg.contains(
                ": byte offset 0: not a netwatch recording (it starts with bytes 7f 45 4c 46"
            ),
            "{msg}"
        );
        std::fs::write(&path, "hello\n").unwrap();
        let msg = Replay::open(&path).err().unwrap().to_string();
        assert!(
            msg.contains(": byte offset 0: not a netwatch recording"),
            "{msg}"
        );
        std::fs::write(&path, "{\"hello\":1}\n").unwrap();
        let msg = Replay::open(&path).err().unwrap().to_string();
        assert!(msg.contains(": line 1: not a netwatch recording"), "{msg}");
        write(&Target::File(path.clone()), &churn(10), true);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[8] = 99;
        std::fs::write(&path, &bytes).unwrap();
        let msg = Replay::open(&path).err().unwrap().to_string();
        assert!(
            msg.contains(": byte offset 8: unsupported recording version 99 (this netwatch reads binary versions 1 to 4)"),
            "{msg}"
        );
    }

    #[test]
    fn a_run_killed_before_its_summary_is_truncated_with_its_blocks_read() {
        let (_scratch, path) = tmp("killed");
        let events = churn(12_000);
        write(&Target::File(path.clone()), &events, false);
        let (evs, end) = read_all(&path);
        assert!(!evs.is_empty() && evs.len() < events.len(), "{}", evs.len());
        let msg = end.unwrap_err().to_string();
        assert!(msg.contains("truncated"), "{msg}");
    }

    fn dir_files(dir: &Path) -> Vec<(PathBuf, u64)> {
        rotate::recordings_in(dir)
            .unwrap()
            .into_iter()
            .map(|p| {
                let len = p.metadata().unwrap().len();
                (p, len)
            })
            .collect()
    }

    /// Under churn, rotation keeps every file under its size and the directory under its
    /// cap, then stops, counting what it left out; the files replay as one stream.
    #[test]
    fn rotation_never_passes_its_caps_and_counts_what_it_left_out() {
        let scratch = Scratch::new("record-rotate");
        let dir = scratch.path("rec");
        std::fs::create_dir_all(&dir).unwrap();
        // An older run's file counts against the cap.
        std::fs::write(
            dir.join("netwatch-20260101T000000Z-1-000000.nwr"),
            vec![0u8; 100_000],
        )
        .unwrap();
        let limits = Limits {
            max_file: 256 * 1024,
            max_age: std::time::Duration::from_secs(3600),
            max_total: 1024 * 1024,
        };
        let events = churn(200_000);
        let target = Target::Dir {
            dir: dir.clone(),
            limits,
        };
        let mut rec =
            Recorder::create(&target, &FileHeader::here(&header()), Collect(vec![])).unwrap();
        for (i, ev) in events.iter().enumerate() {
            rec.event(ev).unwrap();
            if i % 1000 == 0 {
                rec.flush().unwrap();
                let files = dir_files(&dir);
                let total: u64 = files.iter().map(|f| f.1).sum();
                assert!(total <= limits.max_total, "{total} after {i} events");
                assert!(files.iter().all(|f| f.1 <= limits.max_file), "{files:?}");
            }
        }
        let mut s = summary();
        rec.finish(&mut s).unwrap();
        let files = dir_files(&dir);
        let total: u64 = files.iter().map(|f| f.1).sum();
        assert!(total <= limits.max_total, "{total}: {files:?}");
        assert!(total > limits.max_total * 8 / 10, "{total}: stopped early");
        assert!(files.iter().all(|f| f.1 <= limits.max_file), "{files:?}");
        assert!(files.len() >= 4, "{files:?}");
        assert!(s.unrecorded > 0, "nothing was left out");
        // The older run's file is kept; this run's replay as one stream, with the count.
        std::fs::remove_file(dir.join("netwatch-20260101T000000Z-1-000000.nwr")).unwrap();
        let (evs, end) = read_all(&dir);
        let end = end.unwrap();
        assert_eq!(end.unrecorded, s.unrecorded);
        assert_eq!(evs.len() as u64 + s.unrecorded, events.len() as u64);
        assert_eq!(evs[..], events[..evs.len()]);
    }

    #[test]
    fn rotation_by_age_replays_as_one_stream_and_a_part_alone_says_so() {
        let scratch = Scratch::new("record-age");
        let dir = scratch.path("rec");
        let limits = Limits {
            max_age: std::time::Duration::ZERO,
            ..Limits::default()
        };
        let events = churn(30_000);
        let target = Target::Dir {
            dir: dir.clone(),
            limits,
        };
        let mut rec =
            Recorder::create(&target, &FileHeader::here(&header()), Collect(vec![])).unwrap();
        for ev in &events {
            rec.event(ev).unwrap();
            rec.flush().unwrap();
        }
        rec.finish(&mut summary()).unwrap();
        let files = dir_files(&dir);
        assert!(files.len() >= 3, "{files:?}");
        let (evs, end) = read_all(&dir);
        assert_eq!(end.unwrap(), summary());
        assert_eq!(evs, events);
        // Given alone, a part that rotation closed says where the rest is.
        let (evs, end) = read_all(&files[0].0);
        assert!(!evs.is_empty());
        let msg = end.unwrap_err().to_string();
        assert!(msg.contains("continues in a later file"), "{msg}");
        // Given in order, the files are the directory's stream.
        let paths: Vec<PathBuf> = files.iter().map(|f| f.0.clone()).collect();
        let mut r = Replay::open_all(&paths).unwrap();
        let mut n = 0;
        let mut ev = Event::default();
        while let Item::Event = r.next_item(&mut ev).unwrap() {
            n += 1;
        }
        assert_eq!(n, events.len());
        // Another run's file in the directory: which files to give is named.
        std::fs::copy(
            &files[0].0,
            dir.join("netwatch-20991231T000000Z-1-000000.nwr"),
        )
        .unwrap();
        let msg = Replay::open(&dir).err().unwrap().to_string();
        assert!(msg.contains("holds the files of 2 runs"), "{msg}");
    }

    /// A JSON-lines recording as netwatch wrote them before the binary format: header,
    /// events, summary; what `--json` writes for each event.
    fn json_recording(path: &Path, events: &[Event], finish: bool) {
        let mut out = serde_json::to_vec(&header()).unwrap();
        out.push(b'\n');
        for ev in events {
            let mut line = String::new();
            push_event_json(&mut line, ev, None);
            out.extend_from_slice(line.as_bytes());
            out.push(b'\n');
        }
        if finish {
            out.extend_from_slice(br#"{"netwatch_summary":{"stopped_ns":999,"lost":3}}"#);
            out.push(b'\n');
        }
        std::fs::write(path, out).unwrap();
    }

    #[test]
    fn json_lines_recordings_still_replay_and_name_the_line() {
        let (_scratch, path) = tmp("jsonl");
        let events = churn(5);
        json_recording(&path, &events, true);
        let (evs, end) = read_all(&path);
        assert_eq!(evs, events);
        assert_eq!(end.unwrap().lost, 3);
        // Cut mid-line: the events before it, then the line.
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<_> = text.lines().collect();
        let cut = format!(
            "{}\n{}\n{}\n{}",
            lines[0],
            lines[1],
            lines[2],
            &lines[3][..20]
        );
        std::fs::write(&path, cut).unwrap();
        let (evs, err) = read_all(&path);
        assert_eq!(evs.len(), 2);
        let msg = err.unwrap_err().to_string();
        assert!(
            msg.contains(": line 4: corrupt record: the line ends early"),
            "{msg}"
        );
        // No summary line.
        json_recording(&path, &events[..4], false);
        let (evs, err) = read_all(&path);
        assert_eq!(evs.len(), 4);
        let msg = err.unwrap_err().to_string();
        assert!(msg.contains(": line 6: truncated"), "{msg}");
        assert!(msg.contains("4 events were read"), "{msg}");
    }

    /// A recording older netwatch wrote, kept as it was (see the fixtures' README): it must
    /// replay to its summary with every event.
    #[test]
    fn the_json_lines_fixtures_replay() {
        let root = env!("CARGO_MANIFEST_DIR");
        for (name, events) in [
            ("tests/fixtures/recordings/two-namespaces.jsonl", 61),
            ("../tests/fixtures/recordings/report-0.1.jsonl", 47),
        ] {
            let path = Path::new(root).join(name);
            let (evs, end) = read_all(&path);
            let end = end.unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(evs.len(), events, "{name}");
            assert!(end.stopped_ns > 0, "{name}");
        }
    }

    #[test]
    fn converted_recordings_replay_the_same() {
        // `analyze old.jsonl --record new.nwr`: the replay's events, rewritten.
        let (_scratch, path) = tmp("convert");
        let events = churn(1000);
        json_recording(&path, &events, true);
        let out = path.with_extension("nwr");
        let mut replay = Replay::open(&path).unwrap();
        let origin = FileHeader::rewritten(&replay.header, replay.origin.as_ref());
        let mut rec =
            Recorder::create(&Target::File(out.clone()), &origin, Collect(vec![])).unwrap();
        let mut ev = Event::default();
        let mut end = loop {
            match replay.next_item(&mut ev).unwrap() {
                Item::Event => rec.event(&ev).unwrap(),
                Item::TimeWaits(t) => rec.time_waits(&t).unwrap(),
                Item::HostSnapshot(h) => rec.host_snapshot(&h).unwrap(),
                Item::End(s) => break s,
            }
        };
        rec.finish(&mut end).unwrap();
        let (evs, back) = read_all(&out);
        assert_eq!(evs, events);
        assert_eq!(back.unwrap(), end);
    }

    #[test]
    fn a_cut_recording_rewritten_is_cut_too() {
        // `analyze cut.jsonl --record out.nwr`: the events read, and no summary.
        let (_scratch, path) = tmp("abandon");
        let events = churn(100);
        let mut rec = Recorder::create(
            &Target::File(path.clone()),
            &FileHeader::here(&header()),
            Collect(vec![]),
        )
        .unwrap();
        for ev in &events {
            rec.event(ev).unwrap();
        }
        rec.abandon().unwrap();
        let (evs, end) = read_all(&path);
        assert_eq!(evs, events);
        let msg = end.unwrap_err().to_string();
        assert!(msg.contains("truncated"), "{msg}");
    }

    #[test]
    fn a_recorded_cgroup_is_what_a_replay_names() {
        // What a live run wrote (its owner's cgroup then): this pid and id exist nowhere here.
        let (_scratch, file) = tmp("cgroup");
        let mut ev = Event::test_state(1);
        (ev.pid, ev.cgroup_id) = (Some(3_999_999_999), Some(0xdead_beef));
        let mut line = serde_json::to_value(&ev).unwrap();
        line["cgroup"] = "/system.slice/shop.service".into();
        let text = format!("{}\n{line}\n", serde_json::to_string(&header()).unwrap());
        std::fs::write(&file, text).unwrap();
        let (evs, end) = read_all(&file);
        assert_eq!(evs, [ev.clone()]);
        assert!(end.is_err(), "no summary line: a cut recording");
        assert_eq!(
            crate::host::cgroup::owner_cgroup(ev.cgroup_id, ev.pid).as_deref(),
            Some("/system.slice/shop.service")
        );
        // Recorded again in the binary format, and replayed, it says the same.
        let bin = file.with_extension("nwr");
        write(&Target::File(bin.clone()), &evs, true);
        let mut r = Replay::open(&bin).unwrap();
        let mut back = Event::default();
        let Item::Event = r.next_item(&mut back).unwrap() else {
            panic!("no event")
        };
        let mut out = String::new();
        push_event_json(&mut out, &back, None);
        let again: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(again["cgroup"], line["cgroup"]);
    }

    #[test]
    fn a_missing_file_names_the_os_error_once() {
        let Err(e) = Replay::open(Path::new("/nonexistent/netwatch.nwr")) else {
            panic!("opened a missing file")
        };
        let text = format!("{:#}", anyhow::Error::from(e));
        assert_eq!(
            text.matches("No such file or directory").count(),
            1,
            "{text}"
        );
        assert!(
            text.starts_with("cannot open /nonexistent/netwatch.nwr: "),
            "{text}"
        );
    }
}
