//! `--record-dir DIR`: always-on recording into a directory of files, rotated by size and by
//! age, under a cap on the total size.
//!
//! At the cap it stops recording and keeps every file: the first files of a run hold the start
//! of whatever went wrong, which is the evidence a rotation that deletes the oldest would
//! destroy first. What it no longer writes it counts (the summary's `unrecorded`, and a line
//! on stderr when it stops and at the end); the operator decides what to delete. A write that
//! fails (a full disk) stops it the same way, rather than the live run.
//!
//! The cap counts every recording already in DIR (`*.nwr`) when the run starts, so restarts
//! do not each get a fresh budget, and it keeps room for the frames that end a file, so no
//! file and no total ever passes its limit.
use std::{
    io,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use super::binary::{self, FileHeader, FileWriter};
use crate::{host::clock::WallClock, pipeline::session::Summary};

/// The extension of the files a recording directory holds.
pub const EXTENSION: &str = "nwr";

/// Room kept in every file, and in the total, for the frame that ends a file (its summary or
/// its `CONTINUED`).
const END_ROOM: u64 = 4096;

/// When to open the next file, and when to stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// A file is closed before it would pass this many bytes (`--record-max-file-size`).
    pub max_file: u64,
    /// A file is closed once it is this old (`--record-max-age`).
    pub max_age: Duration,
    /// Recording stops before the directory's recordings would pass this many bytes
    /// (`--record-max-total`).
    pub max_total: u64,
}

/// The smallest `--record-max-file-size`: room for the largest block and a file's end.
pub const MIN_FILE: u64 = 1 << 20;

/// What the flags default to.
impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_file: 64 << 20,
            max_age: Duration::from_secs(3600),
            max_total: 1 << 30,
        }
    }
}

/// The files of a run, in a directory, as they fill.
pub struct Rotating {
    dir: PathBuf,
    limits: Limits,
    origin: FileHeader,
    /// `netwatch-<start, UTC>-<pid>`: the files are `<stem>-<part>.nwr`, so that names sort
    /// as time does.
    stem: String,
    part: u32,
    /// The file being written; `None` once recording stopped.
    file: Option<FileWriter>,
    opened: Instant,
    /// Bytes of the directory's recordings: those there before the run, and this run's.
    total: u64,
    /// Events not written since recording stopped.
    pub unrecorded: u64,
    /// Why recording stopped, once it did.
    stopped: Option<String>,
}

impl Rotating {
    /// Opens the first file in `dir` (created if missing).
    pub fn create(dir: &Path, limits: Limits, origin: &FileHeader) -> io::Result<Rotating> {
        let run = &origin.run;
        std::fs::create_dir_all(dir)?;
        let total = recordings_in(dir)?
            .iter()
            .filter_map(|p| p.metadata().ok())
            .map(|m| m.len())
            .sum();
        let start = WallClock::from_offset(run.wall_offset_ns).rfc3339(run.started_ns);
        let stamp: String = start
            .split('.')
            .next()
            .unwrap_or_default()
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .collect();
        let mut r = Rotating {
            dir: dir.to_path_buf(),
            limits,
            origin: origin.clone(),
            stem: format!("netwatch-{stamp}Z-{}", std::process::id()),
            part: 0,
            file: None,
            opened: Instant::now(),
            total,
            unrecorded: 0,
            stopped: None,
        };
        let header = binary::header_frame(&origin.part(0))?.len() as u64;
        if r.total + header + END_ROOM > limits.max_total {
            r.stop(format!(
                "{} already holds {} of recordings, at --record-max-total {}",
                dir.display(),
                bytes(r.total),
                bytes(limits.max_total)
            ));
            return Ok(r);
        }
        r.open()?;
        Ok(r)
    }

    fn open(&mut self) -> io::Result<()> {
        let path = self
            .dir
            .join(format!("{}-{:06}.{EXTENSION}", self.stem, self.part));
        let file = FileWriter::create_new(&path, &self.origin.part(self.part))?;
        self.total += file.len();
        self.file = Some(file);
        self.opened = Instant::now();
        Ok(())
    }

    /// Whether it stopped writing (at the cap, or after a failed write).
    pub fn stopped(&self) -> bool {
        self.stopped.is_some()
    }

    fn stop(&mut self, why: String) {
        eprintln!(
            "netwatch: recording stopped: {why}; the run goes on, and counts the events it no \
             longer records"
        );
        self.stopped = Some(why);
        self.file = None;
    }

    /// Writes a block frame holding `events` events, into the next file when this one is full,
    /// or counts them when the total would pass its cap.
    pub fn write_block(&mut self, frame: &[u8], events: u64) {
        if let Err(e) = self.try_write_block(frame, events) {
            self.unrecorded += events;
            self.stop(format!("writing {}: {e}", self.dir.display()));
        }
    }

    fn try_write_block(&mut self, frame: &[u8], events: u64) -> io::Result<()> {
        let (Some(file), None) = (&self.file, &self.stopped) else {
            self.unrecorded += events;
            return Ok(());
        };
        let n = frame.len() as u64;
        if file.len() + n + END_ROOM > self.limits.max_file {
            let header = binary::header_frame(&self.origin.part(self.part + 1))?;
            if n + header.len() as u64 + END_ROOM > self.limits.max_file {
                // Larger than an empty file holds (a huge timewait list): left out, counted.
                self.unrecorded += events;
                return Ok(());
            }
            let ending = binary::continued_frame();
            let more = ending.len() as u64 + header.len() as u64;
            if self.total + more + n + END_ROOM > self.limits.max_total {
                self.unrecorded += events;
                self.stop_at_cap();
                return Ok(());
            }
            self.rotate()?;
        } else if self.total + n + END_ROOM > self.limits.max_total {
            self.unrecorded += events;
            self.stop_at_cap();
            return Ok(());
        }
        let file = self.file.as_mut().expect("open: checked above");
        file.write(frame)?;
        self.total += n;
        Ok(())
    }

    fn stop_at_cap(&mut self) {
        // The file ends as a run's last file does, with the summary, when the run stops.
        let why = format!(
            "{} reached --record-max-total {} (files are kept, none deleted)",
            self.dir.display(),
            bytes(self.limits.max_total)
        );
        self.stopped = Some(why.clone());
        eprintln!(
            "netwatch: recording stopped: {why}; the run goes on, and counts the events it no \
             longer records"
        );
        // Keep the file open for the summary frame (END_ROOM is kept for it).
    }

    /// Closes this file with `CONTINUED` and opens the next part.
    fn rotate(&mut self) -> io::Result<()> {
        if let Some(mut file) = self.file.take() {
            let ending = binary::continued_frame();
            file.write(&ending)?;
            file.flush()?;
            self.total += ending.len() as u64;
        }
        self.part += 1;
        self.open()
    }

    /// At a flush: the file is old enough to close (only when it holds a block).
    pub fn rotate_if_old(&mut self) {
        let Some(file) = &self.file else { return };
        if self.stopped.is_some()
            || self.opened.elapsed() < self.limits.max_age
            || file.len() <= file.header_len()
        {
            return;
        }
        if let Err(e) = self.rotate() {
            self.stop(format!("rotating in {}: {e}", self.dir.display()));
        }
    }

    pub fn flush(&mut self) {
        if let Some(file) = &mut self.file
            && let Err(e) = file.flush()
        {
            self.stop(format!("writing {}: {e}", self.dir.display()));
        }
    }

    /// Ends the last file with the summary (which counts what was not recorded).
    pub fn finish(mut self, summary: &Summary) -> io::Result<()> {
        if self.unrecorded > 0 {
            eprintln!(
                "netwatch: {} events were not recorded: {}",
                self.unrecorded,
                self.stopped.as_deref().unwrap_or("recording stopped")
            );
        }
        if let Some(file) = &mut self.file {
            file.write(&binary::summary_frame(summary)?)?;
            file.flush()?;
        }
        Ok(())
    }
}

/// The recordings in `dir` (`*.nwr`), by name: in time order.
pub fn recordings_in(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == EXTENSION) && p.is_file())
        .collect();
    files.sort();
    Ok(files)
}

/// The run a file of a recording directory belongs to: its name less the part number.
pub fn run_of(path: &Path) -> Option<&str> {
    let stem = path.file_stem()?.to_str()?;
    stem.rsplit_once('-').map(|(run, _)| run)
}

/// `1 GiB`, `64 MiB`, `512 KiB`, or bytes.
pub fn bytes(n: u64) -> String {
    for (unit, shift) in [("GiB", 30), ("MiB", 20), ("KiB", 10)] {
        if n >= 1 << shift && n.is_multiple_of(1 << shift) {
            return format!("{} {unit}", n >> shift);
        }
    }
    format!("{n} bytes")
}
