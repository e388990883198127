//! The binary recording format: what `--record` writes.
//!
//! ```text
//! file   = MAGIC (8 bytes) version (u32 LE) frame*
//! frame  = kind (u8) length (u32 LE) crc32 of payload (u32 LE) payload
//! ```
//!
//! Frames, in order: one `HEADER` (JSON: the run's [`Header`], netwatch's version, the kernel
//! release, the host name, the part number), then `BLOCK`s, `SNAPSHOT`s and `TICK`s, then one
//! `SUMMARY`
//! (JSON, at a clean stop) or `CONTINUED` (rotation closed the file; the run goes on in the
//! next one). A file without either was cut short.
//!
//! A `SNAPSHOT` (version 2 on) holds what one `leaks` snapshot took from the host
//! ([`StuckSnapshot`]: the kernel's stuck sockets, their holders, the time, the names looked
//! up), as JSON compressed with zstd (its payload starts with the uncompressed length, u32 LE),
//! after the block that holds the events before it: a replay merges it at the same place in
//! the stream. A `TICK` (version 3 on) is the same for one `top` summary ([`TopTick`]: when it
//! was printed and the kernel's lost count then), as plain JSON: a few dozen bytes.
//!
//! A block holds up to [`BLOCK_BYTES`] of records: first its string table (postcard
//! `Vec<&str>`: every comm, cgroup path, container name, stack frame and reset reason its
//! events use, each once), then the records, each starting with its tag (a varint):
//!
//! ```text
//! 0  full event     the postcard [`Compact`] form of the event: time and socket as
//!                   differences, identity (pid, tid, comm, owner_seen_here, cgroup id, netns,
//!                   family, addresses, ports, stack id), stack, kind, owner's names
//! 1  timewait list  a namespace's list, JSON of [`Observed`] (postcard string); up to
//!                   version 3
//! 2  same socket    (version 4 on) slot (varint: newest slot - slot), time difference
//!                   (zigzag varint), flags (u8: 1 owner_seen_here, 2 a task id follows; the
//!                   other bits 0), the task id when flagged (an option, as in a full
//!                   event), then the kind, as a full event writes it
//! 3  timewait list  (version 4 on) a namespace's list as [`time_wait_list`] writes it:
//!                   settings as JSON, sockets fixed binary
//! ```
//!
//! Each full event of a version-4 block takes the block's next slot (0, 1, ...): its
//! identity (socket, pid, tid, comm, cgroup id, netns, family, addresses, ports, stack id) and
//! its owner's name refs. A same-socket record is an event with its slot's identity and owner
//! (its own tid when flagged), no stack, and its own time, flags and kind. The writer makes
//! one when the block's newest slot of the event's socket has the same identity (but maybe
//! the tid) and the same encoded owner names, and the event has no stack; otherwise it writes
//! a full event. Time differences run over both kinds of event record; a full event's socket
//! difference is from the previous full event's (a same-socket record leaves it). `BLOCK_ZSTD`
//! is the same, compressed with zstd (its payload starts with the uncompressed length, u32
//! LE). Each block stands alone (its own strings and slots, differences from its own first
//! event), so a rotated file and the blocks after a damaged one need nothing from before them.
//!
//! Header, summary and a timewait list's settings are JSON inside their frames: they are rare,
//! and JSON lets a later netwatch add fields to them without a new format version. Events are
//! postcard, and a timewait list's sockets fixed binary: they are the bulk of the file, and the
//! hot path of a recording and of a replay.
use std::{
    fs::File,
    io::{self, BufReader, BufWriter, Read, Write},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

use super::{
    At, Item, Next, RecordError,
    compact::{Compact, Identity, OwnerRefs, Previous, Slot, Table},
    encode::{self, Encoder},
    time_wait_list,
    wire::Wire,
};
use crate::{
    host::{
        containers::Names,
        snapshot::{HostSnapshot, TopTick},
        stuck::StuckSnapshot,
    },
    model::{event::Event, timewait::Observed},
    pipeline::session::{Header, Summary},
};

/// The first bytes of a binary recording. As PNG's: the high byte catches a 7-bit transfer,
/// the CR LF a newline conversion.
pub const MAGIC: [u8; 8] = *b"\x89NWREC\r\n";

/// The binary format's version, after the magic. Readers read every version up to theirs.
/// 2: `SNAPSHOT` frames (a netwatch that reads only 1 refuses the file, naming its version).
/// 3: `TICK` frames (likewise for a netwatch that reads up to 2; a tick in an older file is
/// damage).
/// 4: same-socket records in blocks (a netwatch that reads up to 3 refuses the file; a tag 2
/// record in an older file is damage). Why: a socket's events (about 6 to 13 over its life)
/// mostly repeat its identity and owner, which a full record writes again each time.
/// Also from 4: timewait lists as record 3 ([`time_wait_list`]) rather than JSON.
pub const VERSION: u32 = 4;

/// Frame kinds.
pub mod frame {
    pub const HEADER: u8 = 1;
    pub const BLOCK: u8 = 2;
    pub const BLOCK_ZSTD: u8 = 3;
    pub const SUMMARY: u8 = 4;
    pub const CONTINUED: u8 = 5;
    /// Version 2 on.
    pub const SNAPSHOT: u8 = 6;
    /// Version 3 on.
    pub const TICK: u8 = 7;

    /// The last frame kind a file of `version` may hold.
    pub fn last_kind(version: u32) -> u8 {
        match version {
            1 => CONTINUED,
            2 => SNAPSHOT,
            _ => TICK,
        }
    }
}

/// Kind, length and checksum before each frame's payload.
const FRAME_HEAD: usize = 9;

/// A block is closed once its records reach this many bytes (before compression): large
/// enough for zstd to find the repetition of a churn, small enough that a reader's buffer
/// and a damaged block stay small.
pub const BLOCK_BYTES: usize = 256 * 1024;

/// A block is also closed at the first flush after it is this old, so that a file followed
/// while it is written, and a run killed without a clean stop, lose at most this much.
pub const BLOCK_AGE: Duration = Duration::from_secs(1);

/// No frame is larger (a length past it is damage, not a frame to allocate for). Sized for the
/// largest frame a writer makes: one namespace's timewait list, which holds up to
/// `tcp_max_tw_buckets` sockets (262,144 on a large host) at about 100 bytes of JSON each.
const MAX_FRAME: u32 = 256 << 20;

/// zstd's level: 1 is its fastest, and on recordings as small as any: the 17 blocks of a live
/// loopback churn (63,376 events, 3.7 MB uncompressed) took 546 KB at level 1, 581 KB at 3 and
/// 556 KB at 6.
const ZSTD_LEVEL: i32 = 1;

/// What a file's `HEADER` frame holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FileHeader {
    /// How the run started (start time, wall-clock offset, host settings, filter).
    pub run: Header,
    /// The version of the netwatch that wrote the file.
    pub netwatch: String,
    /// The release of the kernel the run traced (`uname -r`).
    #[serde(default)]
    pub kernel: Option<String>,
    /// The host's name.
    #[serde(default)]
    pub host: Option<String>,
    /// 0 for a run's first file; rotation numbers the files after it 1, 2, ...
    #[serde(default)]
    pub part: u32,
}

impl FileHeader {
    /// The header of a run recorded on this host by this netwatch.
    pub fn here(run: &Header) -> FileHeader {
        FileHeader {
            run: run.clone(),
            netwatch: env!("CARGO_PKG_VERSION").to_string(),
            kernel: crate::kernel::release::running().ok(),
            host: std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_string()),
            part: 0,
        }
    }

    /// The header of a replayed recording written again (`analyze FILE --record OUT`): the
    /// kernel and host it was recorded on, when its header says (a JSON-lines file does not).
    pub fn rewritten(run: &Header, source: Option<&FileHeader>) -> FileHeader {
        FileHeader {
            run: run.clone(),
            netwatch: env!("CARGO_PKG_VERSION").to_string(),
            kernel: source.and_then(|s| s.kernel.clone()),
            host: source.and_then(|s| s.host.clone()),
            part: 0,
        }
    }

    /// The same run's header for file `part` of a recording directory.
    pub fn part(&self, part: u32) -> FileHeader {
        FileHeader {
            part,
            ..self.clone()
        }
    }
}

/// One record of a block.
#[derive(Serialize, Deserialize)]
#[allow(
    clippy::large_enum_variant,
    reason = "made for one record and serialized at once, never stored: boxing would allocate per event"
)]
enum Record<'a> {
    Event(Compact),
    /// A namespace's timewait list (JSON of [`Observed`]), where the live run applied it:
    /// versions 1 to 3 (4 writes [`RECORD_TIME_WAIT_LIST`]).
    TimeWaits(&'a str),
}

/// A whole frame: head and payload.
fn frame_bytes(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(FRAME_HEAD + payload.len());
    out.push(kind);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

fn invalid(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

/// The `HEADER` frame of a file.
pub fn header_frame(header: &FileHeader) -> io::Result<Vec<u8>> {
    Ok(frame_bytes(frame::HEADER, &serde_json::to_vec(header)?))
}

/// The `SUMMARY` frame: the run stopped cleanly.
pub fn summary_frame(summary: &Summary) -> io::Result<Vec<u8>> {
    Ok(frame_bytes(frame::SUMMARY, &serde_json::to_vec(summary)?))
}

/// The `CONTINUED` frame: the run goes on in the next file.
pub fn continued_frame() -> Vec<u8> {
    frame_bytes(frame::CONTINUED, &[])
}

/// A `SNAPSHOT` frame for a `leaks` snapshot, a `TICK` frame for a `top` summary.
pub fn snapshot_frame(snapshot: &HostSnapshot) -> io::Result<Vec<u8>> {
    match snapshot {
        HostSnapshot::Stuck(s) => stuck_frame(s),
        HostSnapshot::Tick(t) => Ok(frame_bytes(frame::TICK, &serde_json::to_vec(t)?)),
    }
}

/// A `SNAPSHOT` frame: `snapshot` as zstd-compressed JSON. A snapshot too large for a frame
/// (about 190 bytes of JSON per stuck socket: over a million of them) is refused, saying so: a
/// recording that left it out would replay to another output without a word.
fn stuck_frame(snapshot: &StuckSnapshot) -> io::Result<Vec<u8>> {
    let json = serde_json::to_vec(snapshot)?;
    if json.len() > MAX_FRAME as usize {
        return Err(io::Error::other(format!(
            "a leaks snapshot of {} stuck sockets takes {} bytes, past the recording format's \
             {} per frame: this host has too many to record; run leaks without --record",
            snapshot.dump.sockets.len(),
            json.len(),
            MAX_FRAME
        )));
    }
    let packed = zstd::bulk::compress(&json, ZSTD_LEVEL)?;
    let mut payload = Vec::with_capacity(4 + packed.len());
    payload.extend_from_slice(&(json.len() as u32).to_le_bytes());
    payload.extend_from_slice(&packed);
    Ok(frame_bytes(frame::SNAPSHOT, &payload))
}

/// zstd as blocks are compressed: at [`ZSTD_LEVEL`], leaving literals (the bytes no match
/// covers) as they are rather than Huffman-coding them. Why: compression is most of what
/// recording costs per event; without Huffman coding it took 1,007 instructions per event
/// rather than 1,087, and a replay's decompression 395 rather than 454, for 7% more bytes
/// (11.1 per event rather than 10.3; callgrind, `analyze --record` of a 373,316-event live
/// churn recording). Any zstd decoder reads such blocks, older netwatch's too.
fn block_compressor() -> io::Result<zstd::bulk::Compressor<'static>> {
    let mut zstd = zstd::bulk::Compressor::new(ZSTD_LEVEL)?;
    zstd.set_parameter(zstd::zstd_safe::CParameter::LiteralCompressionMode(
        zstd::zstd_safe::ParamSwitch::Disable,
    ))?;
    Ok(zstd)
}

/// The records of the block being filled.
pub struct Block {
    encoder: Encoder,
    records: Vec<u8>,
    events: u64,
    opened: Option<Instant>,
    zstd: zstd::bulk::Compressor<'static>,
}

impl Block {
    pub fn new() -> io::Result<Block> {
        Ok(Block {
            encoder: Encoder::default(),
            records: Vec::with_capacity(BLOCK_BYTES + 4096),
            events: 0,
            opened: None,
            zstd: block_compressor()?,
        })
    }

    /// `ev`, with its owner's names as the host knows them now: `names` is asked for them
    /// only when the block has not written them in this `generation` ([`Encoder::event`]).
    pub fn event(
        &mut self,
        ev: &Event,
        generation: (u64, u64),
        names: impl FnOnce() -> Names,
    ) -> io::Result<()> {
        self.events += 1;
        self.opened.get_or_insert_with(Instant::now);
        // By hand: a full event as serde would write `Record::Event(compact)`, or a
        // same-socket record ([`super::encode`]).
        self.encoder.event(&mut self.records, ev, generation, names);
        Ok(())
    }

    pub fn time_waits(&mut self, obs: &Observed) -> io::Result<()> {
        self.opened.get_or_insert_with(Instant::now);
        self.records.push(RECORD_TIME_WAIT_LIST as u8);
        time_wait_list::write(&mut self.records, obs)?;
        Ok(())
    }

    /// A timewait list as versions 1 to 3 wrote it (record 1, JSON): what a test of an old
    /// file needs.
    #[cfg(test)]
    pub fn time_waits_as_json(&mut self, obs: &Observed) {
        self.opened.get_or_insert_with(Instant::now);
        let json = serde_json::to_string(obs).unwrap();
        let records = std::mem::take(&mut self.records);
        self.records = postcard::to_extend(&Record::TimeWaits(&json), records).unwrap();
    }

    /// Events in the block.
    pub fn events(&self) -> u64 {
        self.events
    }

    pub fn is_empty(&self) -> bool {
        self.opened.is_none()
    }

    /// Full: close it now.
    pub fn is_full(&self) -> bool {
        self.records.len() >= BLOCK_BYTES
    }

    /// Open for [`BLOCK_AGE`] already: close it at this flush.
    pub fn is_old(&self) -> bool {
        self.opened.is_some_and(|t| t.elapsed() >= BLOCK_AGE)
    }

    /// The block as a frame (compressed when that makes it smaller), and a fresh block.
    pub fn take_frame(&mut self) -> io::Result<Vec<u8>> {
        let mut raw = postcard::to_stdvec(self.encoder.strings()).map_err(invalid)?;
        raw.extend_from_slice(&self.records);
        self.encoder.clear();
        self.records.clear();
        self.events = 0;
        self.opened = None;
        let packed = self.zstd.compress(&raw)?;
        Ok(if packed.len() + 4 < raw.len() {
            let mut payload = Vec::with_capacity(4 + packed.len());
            payload.extend_from_slice(&(raw.len() as u32).to_le_bytes());
            payload.extend_from_slice(&packed);
            frame_bytes(frame::BLOCK_ZSTD, &payload)
        } else {
            frame_bytes(frame::BLOCK, &raw)
        })
    }
}

/// One binary file being written: magic, version, header, then whole frames.
pub struct FileWriter {
    out: BufWriter<File>,
    len: u64,
    header_len: u64,
}

impl FileWriter {
    /// Creates (or empties) `path` and writes the start of the file.
    pub fn create(path: &Path, header: &FileHeader) -> io::Result<FileWriter> {
        Self::start(File::create(path)?, header)
    }

    /// As [`FileWriter::create`], but never over an existing file.
    pub fn create_new(path: &Path, header: &FileHeader) -> io::Result<FileWriter> {
        let file = File::options().write(true).create_new(true).open(path)?;
        Self::start(file, header)
    }

    fn start(file: File, header: &FileHeader) -> io::Result<FileWriter> {
        let mut w = FileWriter {
            out: BufWriter::with_capacity(256 * 1024, file),
            len: 0,
            header_len: 0,
        };
        let mut start = MAGIC.to_vec();
        start.extend_from_slice(&VERSION.to_le_bytes());
        w.write(&start)?;
        w.write(&header_frame(header)?)?;
        w.header_len = w.len;
        Ok(w)
    }

    pub fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)?;
        self.len += bytes.len() as u64;
        Ok(())
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Bytes of the file's start: magic, version, header frame.
    pub fn header_len(&self) -> u64 {
        self.header_len
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// The variant index of [`Record::Event`] on the wire.
const RECORD_EVENT: u32 = encode::RECORD_EVENT as u32;
/// The tag of a same-socket record (version 4 on; no [`Record`] variant: read by hand only).
const RECORD_SAME_SOCKET: u32 = encode::RECORD_SAME_SOCKET as u32;

/// The record of a timewait list from version 4 on (1, JSON, before).
const RECORD_TIME_WAIT_LIST: u32 = 3;

/// How many of a block's last owners a reader remembers having learnt.
const LEARNT: usize = 4;

/// Reads a binary recording frame by frame, record by record.
pub struct BinaryReader {
    path: PathBuf,
    file: BufReader<File>,
    /// Where the next frame starts.
    offset: u64,
    /// The block being read (uncompressed), how far, and where its frame starts.
    block: Vec<u8>,
    pos: usize,
    block_at: u64,
    table: Table,
    /// The owners this block named last: learnt once while they repeat, not once per event
    /// (a churn's events alternate between a few owners).
    learnt: [Option<OwnerRefs>; LEARNT],
    next_learnt: usize,
    prev: Previous,
    /// The block's full event records so far (version 4 on): what its same-socket records
    /// copy.
    slots: Vec<Slot>,
    zstd: zstd::bulk::Decompressor<'static>,
    /// The file's format version: which frame kinds it may hold.
    version: u32,
    pub header: FileHeader,
    pub events: u64,
    /// Bytes of the file read, and what its blocks hold uncompressed.
    pub stored_bytes: u64,
    pub raw_bytes: u64,
}

impl BinaryReader {
    /// Reads the magic, the version and the header frame.
    pub fn open(path: &Path, file: BufReader<File>) -> Result<BinaryReader, RecordError> {
        let mut r = BinaryReader {
            path: path.to_path_buf(),
            file,
            offset: 0,
            block: Vec::new(),
            pos: 0,
            block_at: 0,
            table: Table::default(),
            learnt: [None; LEARNT],
            next_learnt: 0,
            prev: Previous::default(),
            slots: Vec::new(),
            zstd: zstd::bulk::Decompressor::new().map_err(|source| RecordError::Read {
                path: path.to_path_buf(),
                at: At::Offset(0),
                source,
            })?,
            version: 0,
            header: FileHeader {
                run: Header {
                    netwatch_record: 0,
                    started_ns: 0,
                    wall_offset_ns: 0,
                    settings: Default::default(),
                    filter: Vec::new(),
                },
                netwatch: String::new(),
                kernel: None,
                host: None,
                part: 0,
            },
            events: 0,
            stored_bytes: 0,
            raw_bytes: 0,
        };
        let mut start = [0u8; 12];
        r.read_exact(&mut start, "the file header")?;
        let version = u32::from_le_bytes([start[8], start[9], start[10], start[11]]);
        if version == 0 || version > VERSION {
            return Err(RecordError::Version {
                path: path.to_path_buf(),
                at: At::Offset(8),
                version,
                reads: format!("binary versions 1 to {VERSION}"),
            });
        }
        r.version = version;
        let (kind, payload) = r.frame()?.ok_or_else(|| r.corrupt(12, "no header frame"))?;
        if kind != frame::HEADER {
            return Err(r.corrupt(
                12,
                format!("the first frame is of kind {kind}, not a header"),
            ));
        }
        r.header = serde_json::from_slice(&payload)
            .map_err(|e| r.corrupt(12, format!("the header frame does not parse: {e}")))?;
        Ok(r)
    }

    fn corrupt(&self, at: u64, detail: impl Into<String>) -> RecordError {
        RecordError::Corrupt {
            path: self.path.clone(),
            at: At::Offset(at),
            detail: detail.into(),
        }
    }

    /// Reads exactly `buf.len()` bytes at the current offset; the end of the file before
    /// that is an error naming where the cut is.
    fn read_exact(&mut self, buf: &mut [u8], what: &str) -> Result<(), RecordError> {
        let at = self.offset;
        let mut got = 0;
        while got < buf.len() {
            match self.file.read(&mut buf[got..]) {
                Ok(0) => {
                    return Err(self.corrupt(
                        at,
                        format!(
                            "{what} ends early ({got} of {} bytes); the file was cut short",
                            buf.len()
                        ),
                    ));
                }
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(RecordError::Read {
                        path: self.path.clone(),
                        at: At::Offset(at),
                        source,
                    });
                }
            }
        }
        self.offset += buf.len() as u64;
        self.stored_bytes += buf.len() as u64;
        Ok(())
    }

    /// The next frame's kind and payload, checked; `None` at the end of the file.
    fn frame(&mut self) -> Result<Option<(u8, Vec<u8>)>, RecordError> {
        let at = self.offset;
        let mut head = [0u8; FRAME_HEAD];
        // The end of the file between frames is not damage: the caller decides what it means.
        let mut first = [0u8; 1];
        loop {
            match self.file.read(&mut first) {
                Ok(0) => return Ok(None),
                Ok(_) => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(RecordError::Read {
                        path: self.path.clone(),
                        at: At::Offset(at),
                        source,
                    });
                }
            }
        }
        head[0] = first[0];
        self.offset += 1;
        self.stored_bytes += 1;
        let mut rest = [0u8; FRAME_HEAD - 1];
        self.read_exact(&mut rest, "the frame head")
            .map_err(|e| with_frame_start(e, at))?;
        head[1..].copy_from_slice(&rest);
        let kind = head[0];
        let len = u32::from_le_bytes([head[1], head[2], head[3], head[4]]);
        let crc = u32::from_le_bytes([head[5], head[6], head[7], head[8]]);
        let last_kind = frame::last_kind(self.version);
        if !(frame::HEADER..=last_kind).contains(&kind) {
            return Err(self.corrupt(
                at,
                format!(
                    "unknown frame kind {kind} (a damaged file, or one a later netwatch wrote)"
                ),
            ));
        }
        if len > MAX_FRAME {
            return Err(self.corrupt(at, format!("a frame of {len} bytes: the length is damaged")));
        }
        let mut payload = vec![0u8; len as usize];
        self.read_exact(&mut payload, "the frame")
            .map_err(|e| with_frame_start(e, at))?;
        if crc32fast::hash(&payload) != crc {
            return Err(self.corrupt(
                at,
                format!(
                    "the checksum of this {len}-byte frame does not match: the file is damaged"
                ),
            ));
        }
        Ok(Some((kind, payload)))
    }

    /// The next event (into `ev`), timewait list, or end. Inlined into the replay loop: an
    /// event of the block being read is the common case, and the layers of calls and moved
    /// results around it cost about 100 instructions an event.
    #[inline]
    pub fn next_item(&mut self, ev: &mut Event) -> Result<Next, RecordError> {
        if self.pos < self.block.len() {
            return self.next_record(ev).map(Next::Item);
        }
        self.next_frame_item(ev)
    }

    /// [`BinaryReader::next_item`] at the end of a block: the next frames, up to an item.
    #[inline(never)]
    fn next_frame_item(&mut self, ev: &mut Event) -> Result<Next, RecordError> {
        loop {
            if self.pos < self.block.len() {
                return self.next_record(ev).map(Next::Item);
            }
            let at = self.offset;
            let Some((kind, payload)) = self.frame()? else {
                return Err(RecordError::Truncated {
                    path: self.path.clone(),
                    at: At::Offset(at),
                    events: self.events,
                    missing: "summary frame",
                });
            };
            match kind {
                frame::BLOCK | frame::BLOCK_ZSTD => self.start_block(kind, payload, at)?,
                frame::SUMMARY => {
                    let summary = serde_json::from_slice(&payload).map_err(|e| {
                        self.corrupt(at, format!("the summary frame does not parse: {e}"))
                    })?;
                    return Ok(Next::Item(Item::End(summary)));
                }
                frame::CONTINUED => return Ok(Next::Continued),
                frame::SNAPSHOT => {
                    return self.snapshot(&payload, at).map(Next::Item);
                }
                frame::TICK => {
                    let tick: TopTick = serde_json::from_slice(&payload).map_err(|e| {
                        self.corrupt(at, format!("the tick frame does not parse: {e}"))
                    })?;
                    self.raw_bytes += payload.len() as u64;
                    return Ok(Next::Item(Item::HostSnapshot(Box::new(
                        HostSnapshot::Tick(tick),
                    ))));
                }
                _ => return Err(self.corrupt(at, "a second header frame")),
            }
        }
    }

    fn snapshot(&mut self, payload: &[u8], at: u64) -> Result<Item, RecordError> {
        let Some((len, packed)) = payload.split_first_chunk::<4>() else {
            return Err(self.corrupt(at, "a snapshot frame without its length"));
        };
        let len = u32::from_le_bytes(*len) as usize;
        if len > MAX_FRAME as usize {
            return Err(self.corrupt(at, format!("a snapshot of {len} bytes: damaged")));
        }
        let json = self
            .zstd
            .decompress(packed, len)
            .map_err(|e| self.corrupt(at, format!("the snapshot does not decompress: {e}")))?;
        self.raw_bytes += json.len() as u64;
        let snapshot = serde_json::from_slice(&json)
            .map_err(|e| self.corrupt(at, format!("the snapshot frame does not parse: {e}")))?;
        Ok(Item::HostSnapshot(Box::new(HostSnapshot::Stuck(Box::new(
            snapshot,
        )))))
    }

    fn start_block(&mut self, kind: u8, payload: Vec<u8>, at: u64) -> Result<(), RecordError> {
        let raw = if kind == frame::BLOCK_ZSTD {
            let Some((len, packed)) = payload.split_first_chunk::<4>() else {
                return Err(self.corrupt(at, "a compressed block without its length"));
            };
            let len = u32::from_le_bytes(*len) as usize;
            if len > MAX_FRAME as usize {
                return Err(self.corrupt(at, format!("a block of {len} bytes: damaged")));
            }
            self.zstd
                .decompress(packed, len)
                .map_err(|e| self.corrupt(at, format!("the block does not decompress: {e}")))?
        } else {
            payload
        };
        let (strings, records): (Vec<&str>, &[u8]) = postcard::take_from_bytes(&raw)
            .map_err(|e| self.corrupt(at, format!("the block's string table: {e}")))?;
        self.table = Table::new(strings.into_iter().map(String::from).collect());
        self.learnt = [None; LEARNT];
        self.raw_bytes += raw.len() as u64;
        self.pos = raw.len() - records.len();
        self.block = raw;
        self.block_at = at;
        self.prev = Previous::default();
        self.slots.clear();
        Ok(())
    }

    /// A record of the block being read. Events, nearly every record, are read by hand
    /// ([`wire`]); the rest through serde.
    #[inline(never)]
    fn next_record(&mut self, ev: &mut Event) -> Result<Item, RecordError> {
        let mut wire = Wire::new(&self.block[self.pos..]);
        let read = match wire.variant() {
            Ok(RECORD_SAME_SOCKET) if self.version >= 4 => {
                wire.same_socket(ev, &self.table, &self.slots, &mut self.prev)
            }
            Ok(RECORD_EVENT) => {
                let read = wire.event(ev, &self.table, &mut self.prev);
                if let Ok(owner) = read
                    && self.version >= 4
                {
                    self.slots.push(Slot {
                        id: Identity::of(ev),
                        owner,
                    });
                }
                read
            }
            _ => return self.other_record(),
        };
        let len = wire.pos();
        let owner = match read {
            Ok(owner) => owner,
            Err(e) => return Err(self.corrupt_record(e.to_string())),
        };
        // Compared in place: `contains` on the array was at times left out of line by the
        // compiler, at twice the instructions.
        if !self.learnt.iter().any(|l| l.as_ref() == Some(&owner)) {
            self.learn(ev, owner)?;
        }
        self.events += 1;
        self.pos += len;
        Ok(Item::Event)
    }

    /// The record at `pos` is damaged: `e` says how.
    #[cold]
    fn corrupt_record(&self, e: String) -> RecordError {
        RecordError::Corrupt {
            path: self.path.clone(),
            at: At::Offset(self.block_at),
            detail: format!("a record at byte {} of the block: {e}", self.pos),
        }
    }

    /// Learns the names of an owner the block has not named lately.
    #[inline(never)]
    fn learn(&mut self, ev: &Event, owner: OwnerRefs) -> Result<(), RecordError> {
        let names = owner
            .names(&self.table)
            .map_err(|e| self.corrupt_record(e))?;
        super::learn_owner(ev, names);
        self.learnt[self.next_learnt] = Some(owner);
        self.next_learnt = (self.next_learnt + 1) % LEARNT;
        Ok(())
    }

    /// A record other than an event: a timewait list.
    #[inline(never)]
    fn other_record(&mut self) -> Result<Item, RecordError> {
        let at = self.block_at;
        let corrupt = |pos: usize, e: String| RecordError::Corrupt {
            path: self.path.clone(),
            at: At::Offset(at),
            detail: format!("a record at byte {pos} of the block: {e}"),
        };
        let mut wire = Wire::new(&self.block[self.pos..]);
        if self.version >= 4 && wire.variant() == Ok(RECORD_TIME_WAIT_LIST) {
            let start = self.pos + wire.pos();
            let (obs, len) =
                time_wait_list::read(&self.block[start..]).map_err(|e| corrupt(self.pos, e))?;
            self.pos = start + len;
            return Ok(Item::TimeWaits(Box::new(obs)));
        }
        let (record, rest): (Record<'_>, &[u8]) =
            postcard::take_from_bytes(&self.block[self.pos..])
                .map_err(|e| corrupt(self.pos, e.to_string()))?;
        let pos = self.block.len() - rest.len();
        let item = match record {
            Record::Event(_) => unreachable!("events are read by hand above"),
            Record::TimeWaits(json) => {
                let obs: Observed =
                    serde_json::from_str(json).map_err(|e| RecordError::Corrupt {
                        path: self.path.clone(),
                        at: At::Offset(at),
                        detail: format!("a timewait list at byte {} of the block: {e}", self.pos),
                    })?;
                Item::TimeWaits(Box::new(obs))
            }
        };
        self.pos = pos;
        Ok(item)
    }
}

/// A cut found while reading a frame is at the frame's start, not inside it.
fn with_frame_start(e: RecordError, start: u64) -> RecordError {
    match e {
        RecordError::Corrupt { path, detail, .. } => RecordError::Corrupt {
            path,
            at: At::Offset(start),
            detail,
        },
        e => e,
    }
}
