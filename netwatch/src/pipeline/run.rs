//! The runner: attach, stream into a command's [`Sink`] until stopped, print the summary and the
//! sink's ending (with `--record`, write the recording beside it); or replay a recording into
//! the same sink. It never names a command: what differs between them lives in their sinks.

use std::{io, time::Duration};

use anyhow::Context as _;

use crate::{
    host::{
        clock::{WallClock, monotonic_ns},
        netstat, settings,
        timewait_feed::{self, TimeWaitFeed},
    },
    kernel::{
        privileges,
        probe::{KernelStats, Probe, ProbeConfig, ProgramSpec, TracepointPath},
    },
    model::event::Event,
    pipeline::{
        record::{self, Item, Recorder, Replay, Target, binary::FileHeader},
        session::{Header, StopReason, Summary},
        sink::Sink,
        stream::{self, Stops},
    },
};

/// How a live run is set up, from the command line.
pub struct Live {
    pub config: ProbeConfig,
    /// Stop by itself after this long (`--duration`).
    pub duration: Option<Duration>,
    /// Write every event that reached user space here too (`--record`, `--record-dir`).
    pub record: Option<Target>,
    /// The filter as command-line words, stored in the recording's header.
    pub filter: Vec<String>,
    /// The capabilities kept once the programs are attached (the rest are given up);
    /// `None` keeps everything.
    pub keep_caps: Option<&'static [u32]>,
}

/// Gives up the capabilities the run no longer needs, before it starts any other thread.
fn drop_privileges(keep: Option<&[u32]>) -> anyhow::Result<()> {
    let Some(keep) = keep else {
        return Ok(());
    };
    let kept = privileges::keep_only(keep).context("dropping capabilities after attach")?;
    log::info!(
        "capabilities kept after attach: {}",
        privileges::names(kept)
    );
    Ok(())
}

/// `netwatch ... | head`: the reader left; nothing is wrong.
pub fn broken_pipe_ok(r: io::Result<()>) -> anyhow::Result<()> {
    match r {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        r => r.context("writing output"),
    }
}

/// How the attached tracepoints' programs are attached: `: 7 raw`, `: 6 raw, 2 classic`.
fn paths_summary(paths: &[(&'static ProgramSpec, TracepointPath)]) -> String {
    let count = |path| paths.iter().filter(|(_, p)| *p == path).count();
    let parts: Vec<String> = [TracepointPath::Raw, TracepointPath::Classic]
        .into_iter()
        .filter(|&path| count(path) > 0)
        .map(|path| format!("{} {}", count(path), path.as_str()))
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!(": {}", parts.join(", "))
    }
}

/// Attaches, streams into `make(header)` until stopped, then prints the summary line and the
/// sink's ending.
pub async fn live(live: Live, make: impl FnOnce(&Header) -> Box<dyn Sink>) -> anyhow::Result<()> {
    let mut probe = Probe::attach(&live.config)?;
    for w in &probe.warnings {
        log::warn!("{w}");
    }
    let header = Header {
        netwatch_record: record::FORMAT_VERSION,
        started_ns: monotonic_ns(),
        wall_offset_ns: WallClock::now().offset_ns(),
        settings: settings::read(),
        filter: live.filter.clone(),
    };
    let listen_before = netstat::listen_counters();
    // Before the line that says netwatch is tracing (which tests and scripts wait for):
    // signals are caught from here on, and a sink that shows TIME_WAIT has every namespace's
    // timewait list (and overflow counter) as it was before any traffic that follows.
    let stops = Stops::install()?;
    let mut output = make(&header);
    output.attach(&probe)?;
    let tracing = format!(
        "netwatch: tracing TCP events ({} of {} tracepoints attached{}); Ctrl-C to stop",
        probe.attached(),
        probe.tracepoints_wanted(),
        paths_summary(probe.paths())
    );
    let (output, summary) = match &live.record {
        Some(target) => {
            let path = target.path();
            let mut rec = Recorder::create(target, &FileHeader::here(&header), output)
                .with_context(|| format!("creating the recording {}", path.display()))?;
            drop_privileges(live.keep_caps)?;
            // After the drop: the lookup threads inherit the reduced set.
            crate::host::cgroup::watch();
            crate::host::containers::watch();
            let feed = start_feed(&mut rec)?;
            eprintln!("{tracing}");
            let (stats, stop) =
                stream_all(&mut probe, &mut rec, live.duration, feed, stops).await?;
            rec.stopped(stop);
            let mut summary = summarize(&stats.kernel, listen_before);
            eprintln!("{}", stats.line());
            let output = rec
                .finish(&mut summary)
                .with_context(|| format!("finishing the recording {}", path.display()))?;
            (output, summary)
        }
        None => {
            let mut output = output;
            drop_privileges(live.keep_caps)?;
            // After the drop: the lookup threads inherit the reduced set.
            crate::host::cgroup::watch();
            crate::host::containers::watch();
            let feed = start_feed(output.as_mut())?;
            eprintln!("{tracing}");
            let (stats, stop) =
                stream_all(&mut probe, output.as_mut(), live.duration, feed, stops).await?;
            output.stopped(stop);
            eprintln!("{}", stats.line());
            (output, summarize(&stats.kernel, listen_before))
        }
    };
    drop(probe);
    broken_pipe_ok(output.finish(&header, &summary))
}

/// For a sink that shows TIME_WAIT, the kernel's timewait lists: every namespace's now (handed
/// to the sink at once), then every few seconds while it runs.
fn start_feed(sink: &mut dyn Sink) -> anyhow::Result<Option<TimeWaitFeed>> {
    if !sink.wants_time_waits() {
        return Ok(None);
    }
    let (feed, first) = TimeWaitFeed::start();
    for obs in &first {
        sink.time_waits(obs)?;
    }
    Ok(Some(feed))
}

/// Streams into `sink`; with a TIME_WAIT feed, hands it the kernel's lists once more after the
/// last event, so the population at the end is the kernel's.
async fn stream_all(
    probe: &mut Probe,
    sink: &mut dyn Sink,
    duration: Option<Duration>,
    feed: Option<TimeWaitFeed>,
    stops: Stops,
) -> anyhow::Result<(stream::StreamStats, StopReason)> {
    let reconciling = feed.is_some();
    let stopped = stream::run(probe, sink, duration, feed, stops).await?;
    if reconciling {
        for obs in timewait_feed::dump_all() {
            sink.time_waits(&obs)?;
        }
    }
    Ok(stopped)
}

fn summarize(kernel: &KernelStats, listen_before: Option<(u64, u64)>) -> Summary {
    let listen = listen_before
        .zip(netstat::listen_counters())
        .map(|(b, a)| (a.0.saturating_sub(b.0), a.1.saturating_sub(b.1)));
    Summary {
        stopped_ns: monotonic_ns(),
        lost: kernel.lost,
        missed: kernel.missed,
        listen_overflows: listen.map(|l| l.0),
        listen_drops: listen.map(|l| l.1),
        unrecorded: 0,
    }
}

/// Replays a recording into `make(header)` (and, with `record`, writes it again in the current
/// format); a damaged file still prints what was read, then fails naming the line or offset.
pub fn replay(
    mut replay: Replay,
    file: &std::path::Path,
    record: Option<&Target>,
    make: impl FnOnce(&Header) -> Box<dyn Sink>,
) -> anyhow::Result<()> {
    let header = replay.header.clone();
    let origin = FileHeader::rewritten(&header, replay.origin.as_ref());
    let mut output = make(&header);
    let mut rec = match record {
        Some(target) => Some(
            Recorder::create(target, &origin, Nowhere)
                .with_context(|| format!("creating the recording {}", target.path().display()))?,
        ),
        None => None,
    };
    let rewriting = |r: io::Result<()>| -> anyhow::Result<()> {
        r.with_context(|| {
            let out = record.map(|t| t.path().display().to_string());
            format!("writing the recording {}", out.unwrap_or_default())
        })
    };
    let mut events = 0u64;
    let mut last_ns = header.started_ns;
    let mut ev = Event::default();
    let outcome = loop {
        match replay.next_item(&mut ev) {
            Ok(Item::Event) => {
                events += 1;
                last_ns = last_ns.max(ev.ts_ns);
                if let Some(r) = &mut rec {
                    rewriting(r.event(&ev))?;
                }
                if let Err(e) = output.event(&ev) {
                    return broken_pipe_ok(Err(e));
                }
            }
            Ok(Item::TimeWaits(obs)) => {
                if let Some(r) = &mut rec {
                    rewriting(r.time_waits(&obs))?;
                }
                if let Err(e) = output.time_waits(&obs) {
                    return broken_pipe_ok(Err(e));
                }
            }
            Ok(Item::HostSnapshot(snapshot)) => {
                if let Some(r) = &mut rec {
                    rewriting(r.host_snapshot(&snapshot))?;
                }
                if let Err(e) = output.host_snapshot(&snapshot) {
                    return broken_pipe_ok(Err(e));
                }
            }
            Ok(Item::End(summary)) => break Ok(summary),
            Err(e) => break Err(e),
        }
    };
    match outcome {
        Ok(summary) => {
            if let Some(r) = rec {
                rewriting(r.finish(&mut summary.clone()).map(drop))?;
            }
            broken_pipe_ok(output.finish(&header, &summary))?;
            let size = match replay.sizes() {
                Some(s) if events > 0 => format!(
                    "; {} bytes, {:.1} bytes/event, {:.1} uncompressed",
                    s.stored,
                    s.stored as f64 / events as f64,
                    s.uncompressed as f64 / events as f64
                ),
                _ => String::new(),
            };
            eprintln!(
                "netwatch: replayed {events} events from {} ({} were lost in the live run{size})",
                file.display(),
                summary.lost
            );
            Ok(())
        }
        Err(e) => {
            // Rewritten, it is cut as the source was: no summary.
            if let Some(r) = rec {
                rewriting(r.abandon())?;
            }
            // What was read is still worth printing; the stop time is the last event's.
            let partial = Summary {
                stopped_ns: last_ns,
                ..Summary::default()
            };
            broken_pipe_ok(output.finish(&header, &partial))?;
            Err(e).with_context(|| format!("replayed {events} events before the error"))
        }
    }
}

/// Where a rewritten recording's events go besides the file: nowhere (the replay's own
/// output gets them).
struct Nowhere;

impl Sink for Nowhere {
    fn event(&mut self, _ev: &crate::model::event::Event) -> io::Result<()> {
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
