//! Recordings in JSON lines, as netwatch wrote them before the binary format: a header line,
//! one [`Event`] a line, the kernel's timewait lists (`{"netwatch_time_waits": ...}`), and a
//! summary line at a clean stop. Read only, so that older recordings keep replaying; the
//! events of any recording still come out as JSON lines with `analyze FILE --json`.
use std::{
    fs::File,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use super::{At, Item, RecordError};
use crate::{
    model::{event::Event, event::JsonEventError, timewait::Observed},
    pipeline::session::{Header, Summary},
};

/// The version the header line of a JSON-lines recording holds.
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

/// Reads a JSON-lines recording: the header first, then events one by one.
pub struct JsonReader {
    path: PathBuf,
    reader: BufReader<File>,
    buf: Vec<u8>,
    line: usize,
    pub events: u64,
    pub header: Header,
}

impl JsonReader {
    pub fn open(path: &Path, mut reader: BufReader<File>) -> Result<JsonReader, RecordError> {
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
                at: At::Line(1),
                version: header.netwatch_record,
                reads: format!("JSON-lines version {FORMAT_VERSION}"),
            });
        }
        Ok(JsonReader {
            path: path.to_path_buf(),
            reader,
            buf: Vec::with_capacity(512),
            line: 1,
            events: 0,
            header,
        })
    }

    /// The next event (into `ev`), or the summary at the end; an error names the line.
    pub fn next_item(&mut self, ev: &mut Event) -> Result<Item, RecordError> {
        self.buf.clear();
        let n = self
            .reader
            .read_until(b'\n', &mut self.buf)
            .map_err(|source| RecordError::Read {
                path: self.path.clone(),
                at: At::Line(self.line + 1),
                source,
            })?;
        if n == 0 {
            return Err(RecordError::Truncated {
                path: self.path.clone(),
                at: At::Line(self.line + 1),
                events: self.events,
                missing: "summary line",
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
        let (read, owner) = Event::from_json_line(line).map_err(|e| self.corrupt(e))?;
        super::learn_owner(&read, owner);
        *ev = read;
        self.events += 1;
        Ok(Item::Event)
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
            at: At::Line(self.line),
            detail,
        }
    }
}
