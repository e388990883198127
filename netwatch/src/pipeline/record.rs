//! Recording files: the raw event stream of a live run, so `netwatch analyze` can replay it
//! offline, without root, and print exactly what the live run printed.
//!
//! JSON lines: a header (what the output depends on besides the events: start time, clock
//! offset, host settings), one [`Event`] per line, the kernel's timewait lists where the live
//! run applied them (`{"netwatch_time_waits": ...}`), and a summary line written at a clean stop
//! (lost events, kernel counter deltas, stop time). A file without its summary line was cut
//! short, and `analyze` says so, naming the line, after reporting what it read.
use std::{
    fs::File,
    io::{self, BufRead, BufReader, BufWriter, Write},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::{
    model::event::{Event, JsonEventError},
    model::timewait::Observed,
    pipeline::{
        session::{Header, Summary},
        sink::{EventJson, Sink},
    },
};

pub const FORMAT_VERSION: u32 = 1;

#[derive(Serialize, Deserialize)]
struct SummaryLine {
    netwatch_summary: Summary,
}

/// A line holding one namespace's timewait list, where the live run applied it.
#[derive(Serialize, Deserialize)]
struct TimeWaitsLine {
    netwatch_time_waits: Observed,
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
    #[error("{path}: line 1: not a netwatch recording ({detail})")]
    NoHeader { path: PathBuf, detail: String },
    #[error(
        "{path}: line {line}: unsupported recording version {version} (this netwatch reads {FORMAT_VERSION})"
    )]
    Version {
        path: PathBuf,
        line: usize,
        version: u32,
    },
    #[error("{path}: line {line}: corrupt record: {detail}")]
    Corrupt {
        path: PathBuf,
        line: usize,
        detail: String,
    },
    #[error(
        "{path}: line {line}: truncated: the recording ends without its summary line (the run that wrote it did not stop cleanly); {events} events were read"
    )]
    Truncated {
        path: PathBuf,
        line: usize,
        events: u64,
    },
    #[error("{path}: line {line}: {source}")]
    Read {
        path: PathBuf,
        line: usize,
        source: io::Error,
    },
}

/// Writes the recording while passing every event on to the live sink.
pub struct Recorder<S> {
    out: BufWriter<File>,
    inner: S,
}

impl<S: Sink> Recorder<S> {
    pub fn create(path: &Path, header: &Header, inner: S) -> io::Result<Self> {
        let file = File::create(path)?;
        let mut out = BufWriter::with_capacity(256 * 1024, file);
        serde_json::to_writer(&mut out, header)?;
        out.write_all(b"\n")?;
        Ok(Self { out, inner })
    }

    /// Writes the summary line and returns the live sink.
    pub fn finish(mut self, summary: Summary) -> io::Result<S> {
        serde_json::to_writer(
            &mut self.out,
            &SummaryLine {
                netwatch_summary: summary,
            },
        )?;
        self.out.write_all(b"\n")?;
        self.out.flush()?;
        Ok(self.inner)
    }
}

impl<S: Sink> Sink for Recorder<S> {
    fn attach(&mut self, probe: &crate::kernel::probe::Probe) -> anyhow::Result<()> {
        self.inner.attach(probe)
    }

    fn stopped(&mut self, stop: crate::pipeline::session::StopReason) {
        self.inner.stopped(stop)
    }

    fn event(&mut self, ev: &Event) -> io::Result<()> {
        EventJson::write(&mut self.out, ev, None)?;
        self.out.write_all(b"\n")?;
        self.inner.event(ev)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()?;
        self.inner.flush()
    }

    fn wants_time_waits(&self) -> bool {
        self.inner.wants_time_waits()
    }

    fn time_waits(&mut self, obs: &Observed) -> io::Result<()> {
        serde_json::to_writer(
            &mut self.out,
            &TimeWaitsLine {
                netwatch_time_waits: obs.clone(),
            },
        )?;
        self.out.write_all(b"\n")?;
        self.inner.time_waits(obs)
    }
}

/// Reads a recording: the header first, then events one by one.
pub struct Replay {
    path: PathBuf,
    reader: BufReader<File>,
    buf: Vec<u8>,
    line: usize,
    events: u64,
    pub header: Header,
}

/// What [`Replay::next_event`] found.
pub enum Item {
    Event(Box<Event>),
    /// A namespace's timewait list, applied here in the live run.
    TimeWaits(Box<Observed>),
    End(Summary),
}

impl Replay {
    pub fn open(path: &Path) -> Result<Self, RecordError> {
        let file = File::open(path).map_err(|source| RecordError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        let mut reader = BufReader::with_capacity(1 << 20, file);
        let no_header = |detail: String| RecordError::NoHeader {
            path: path.to_path_buf(),
            detail,
        };
        let mut first = String::new();
        match reader.read_line(&mut first) {
            Ok(0) => return Err(no_header("the file is empty".into())),
            Ok(_) => {}
            Err(e) => return Err(no_header(e.to_string())),
        }
        let header: Header = serde_json::from_str(&first).map_err(|e| no_header(e.to_string()))?;
        if header.netwatch_record != FORMAT_VERSION {
            return Err(RecordError::Version {
                path: path.to_path_buf(),
                line: 1,
                version: header.netwatch_record,
            });
        }
        Ok(Self {
            path: path.to_path_buf(),
            reader,
            buf: Vec::with_capacity(512),
            line: 1,
            events: 0,
            header,
        })
    }

    /// The next event, or the summary at the end; an error names the line.
    pub fn next_item(&mut self) -> Result<Item, RecordError> {
        self.buf.clear();
        let n = self
            .reader
            .read_until(b'\n', &mut self.buf)
            .map_err(|source| RecordError::Read {
                path: self.path.clone(),
                line: self.line + 1,
                source,
            })?;
        if n == 0 {
            return Err(RecordError::Truncated {
                path: self.path.clone(),
                line: self.line + 1,
                events: self.events,
            });
        }
        self.line += 1;
        let line = self.buf.strip_suffix(b"\n").unwrap_or(&self.buf);
        if line.starts_with(b"{\"netwatch_summary\"") {
            let s: SummaryLine =
                serde_json::from_slice(line).map_err(|e| self.corrupt(JsonEventError::Json(e)))?;
            return Ok(Item::End(s.netwatch_summary));
        }
        if line.starts_with(b"{\"netwatch_time_waits\"") {
            let t: TimeWaitsLine =
                serde_json::from_slice(line).map_err(|e| self.corrupt(JsonEventError::Json(e)))?;
            return Ok(Item::TimeWaits(Box::new(t.netwatch_time_waits)));
        }
        let (ev, owner) = Event::from_json_line(line).map_err(|e| self.corrupt(e))?;
        // What the recording says, not what this host says now about its pids or containers.
        crate::host::cgroup::learn_owner_cgroup(ev.cgroup_id, ev.pid, owner.cgroup.as_deref());
        crate::host::containers::learn(owner.container);
        self.events += 1;
        Ok(Item::Event(Box::new(ev)))
    }

    fn corrupt(&self, e: JsonEventError) -> RecordError {
        let detail = match e {
            JsonEventError::Json(e) if e.is_eof() => {
                format!("the line ends early ({e}); the file was cut short")
            }
            e => e.to_string(),
        };
        RecordError::Corrupt {
            path: self.path.clone(),
            line: self.line,
            detail,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::scratch::Scratch;

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
            filter: Vec::new(),
        }
    }

    fn write(path: &Path, n: u64, finish: bool) -> Vec<Event> {
        let mut rec = Recorder::create(path, &header(), Collect(vec![])).unwrap();
        for i in 0..n {
            rec.event(&Event::test_state(100 + i)).unwrap();
        }
        rec.flush().unwrap();
        if finish {
            rec.finish(Summary {
                stopped_ns: 999,
                lost: 3,
                ..Summary::default()
            })
            .unwrap()
            .0
        } else {
            // A run cut short: no summary line; the sink saw every event anyway.
            rec.inner.0.clone()
        }
    }

    fn read_all(path: &Path) -> (Vec<Event>, Result<Summary, RecordError>) {
        let mut r = Replay::open(path).unwrap();
        let mut evs = vec![];
        loop {
            match r.next_item() {
                Ok(Item::Event(e)) => evs.push(*e),
                Ok(Item::TimeWaits(_)) => {}
                Ok(Item::End(s)) => return (evs, Ok(s)),
                Err(e) => return (evs, Err(e)),
            }
        }
    }

    /// A private directory (removed when the test ends, by a panic too) and a file in it.
    fn tmp(name: &str) -> (Scratch, PathBuf) {
        let scratch = Scratch::new(&format!("record-{name}"));
        let path = scratch.path("events.jsonl");
        (scratch, path)
    }

    #[test]
    fn a_recording_replays_the_same_events_and_summary() {
        let (_scratch, path) = tmp("ok");
        let live = write(&path, 5, true);
        let (evs, summary) = read_all(&path);
        assert_eq!(evs, live);
        assert_eq!(summary.unwrap().lost, 3);
        assert_eq!(Replay::open(&path).unwrap().header, header());
    }

    #[test]
    fn a_file_cut_mid_line_names_the_line_after_the_events_before_it() {
        let (_scratch, path) = tmp("cut");
        write(&path, 5, true);
        let text = std::fs::read_to_string(&path).unwrap();
        // Keep the header, three events, and half of the fourth.
        let lines: Vec<_> = text.lines().collect();
        let cut = format!(
            "{}\n{}\n{}\n{}\n{}",
            lines[0],
            lines[1],
            lines[2],
            lines[3],
            &lines[4][..20]
        );
        std::fs::write(&path, cut).unwrap();
        let (evs, err) = read_all(&path);
        assert_eq!(evs.len(), 3);
        let msg = err.unwrap_err().to_string();
        assert!(
            msg.contains(": line 5: corrupt record: the line ends early"),
            "{msg}"
        );
    }

    #[test]
    fn a_file_without_summary_is_truncated() {
        let (_scratch, path) = tmp("nosummary");
        write(&path, 4, false);
        let (evs, err) = read_all(&path);
        assert_eq!(evs.len(), 4);
        let msg = err.unwrap_err().to_string();
        assert!(msg.contains(": line 6: truncated"), "{msg}");
        assert!(msg.contains("4 events were read"), "{msg}");
    }

    #[test]
    fn not_a_recording() {
        let (_scratch, path) = tmp("garbage");
        std::fs::write(&path, "hello\n").unwrap();
        let msg = Replay::open(&path).err().unwrap().to_string();
        assert!(msg.contains(": line 1: not a netwatch recording"), "{msg}");
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
        // Written again (a replay printing `trace --json`), it says the same.
        let mut out = Vec::new();
        EventJson::write(&mut out, &evs[0], None).unwrap();
        let again: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(again["cgroup"], line["cgroup"]);
    }

    #[test]
    fn a_missing_file_names_the_os_error_once() {
        let Err(e) = Replay::open(Path::new("/nonexistent/netwatch.jsonl")) else {
            panic!("opened a missing file")
        };
        let text = format!("{:#}", anyhow::Error::from(e));
        assert_eq!(
            text.matches("No such file or directory").count(),
            1,
            "{text}"
        );
        assert!(
            text.starts_with("cannot open /nonexistent/netwatch.jsonl: "),
            "{text}"
        );
    }
}
