//! Drains the ring buffer into a sink until Ctrl-C, SIGTERM, a deadline, or a closed output,
//! then detaches and accounts for every event the kernel produced.
//!
//! The kernel wakes this reader only when a quarter of the ring is full; otherwise a timer
//! collects what waits every [`DRAIN_INTERVAL`]: one wakeup per batch instead of per event,
//! and an event waits at most that long before it is printed (the events from a new
//! container's first one on, up to [`crate::pipeline::pending::MAX_HOLD`] more, for its names).
use std::{io, os::fd::AsRawFd as _, time::Duration};

use anyhow::Context as _;
use aya::maps::{MapData, RingBuf};
use tokio::{
    io::{Interest, unix::AsyncFd},
    signal::unix::{Signal, SignalKind, signal},
    time::{Instant, MissedTickBehavior, interval, sleep_until},
};

use crate::{
    host::timewait_feed::TimeWaitFeed,
    kernel::probe::{KernelStats, Probe},
    model::event::{DecodeContext, Event, raw_from_bytes},
    pipeline::{
        pending::{MAX_HOLD, Pending},
        session::StopReason,
        sink::Sink,
    },
};

/// The longest an event waits in the ring buffer before user space reads it.
pub const DRAIN_INTERVAL: Duration = Duration::from_millis(50);

/// How long to wait, after detaching, for events still being written by a program that was
/// running when the detach happened.
const FINAL_DRAIN_BOUND: Duration = Duration::from_secs(2);

/// What happened to the events of one run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StreamStats {
    pub kernel: KernelStats,
    /// Events read from the ring buffer (decoded or not).
    pub delivered: u64,
    /// Records that could not be decoded (a bug, reported rather than hidden).
    pub undecodable: u64,
}

impl StreamStats {
    /// Events neither delivered nor counted lost: zero unless the final drain ran out of time.
    pub fn unaccounted(&self) -> u64 {
        self.kernel
            .produced
            .saturating_sub(self.delivered + self.kernel.lost)
    }

    /// One line for stderr.
    pub fn line(&self) -> String {
        let mut s = format!(
            "netwatch: {} events seen (before any user-space filter), {} lost (produced={} delivered={} lost={})",
            self.delivered,
            self.kernel.lost,
            self.kernel.produced,
            self.delivered,
            self.kernel.lost
        );
        if self.kernel.lost > 0 {
            s.push_str("; the ring buffer was full: try a larger --ring-size");
        }
        if self.kernel.filtered > 0 {
            s.push_str(&format!(
                "; {} filtered out in the kernel (filtered={})",
                self.kernel.filtered, self.kernel.filtered
            ));
        }
        if self.kernel.sockets_full > 0 {
            s.push_str(&format!(
                "; {} sockets went unattributed: more live sockets than --max-sockets \
                 (sockets_full={})",
                self.kernel.sockets_full, self.kernel.sockets_full
            ));
        }
        if self.kernel.missed > 0 {
            s.push_str(&format!(
                "; {} events missed in the kernel: a tracepoint fired while a netwatch program \
                 was already running on that CPU, and the kernel skipped it (missed={})",
                self.kernel.missed, self.kernel.missed
            ));
        }
        if self.kernel.read_failed > 0 {
            s.push_str(&format!(
                "; {} events dropped in the kernel: a record or field could not be read \
                 (read_failed={})",
                self.kernel.read_failed, self.kernel.read_failed
            ));
        }
        if self.undecodable > 0 {
            s.push_str(&format!("; {} undecodable records", self.undecodable));
        }
        if self.unaccounted() > 0 {
            s.push_str(&format!("; {} still in flight at exit", self.unaccounted()));
        }
        s
    }
}

struct Reader<'a> {
    decode: DecodeContext,
    sink: &'a mut dyn Sink,
    summary: StreamStats,
    /// The kernel's timewait lists, for a sink that wants them.
    feed: Option<TimeWaitFeed>,
    /// What waits for a new container's names before the sink sees it.
    pending: Pending,
}

impl Reader<'_> {
    /// Reads everything waiting in the ring; `Err` only when the output is gone.
    fn drain(&mut self, ring: &mut RingBuf<MapData>) -> io::Result<()> {
        let now = std::time::Instant::now();
        let mut result = Ok(());
        while let Some(item) = ring.next() {
            self.summary.delivered += 1;
            if result.is_err() {
                continue; // keep consuming so the kernel's ring does not stay full
            }
            match raw_from_bytes(&item).and_then(|raw| Event::decode(&raw, &self.decode)) {
                Ok(ev) => result = self.pending.event(ev, self.sink, now),
                Err(e) => {
                    self.summary.undecodable += 1;
                    log::debug!("undecodable record: {e}");
                }
            }
        }
        if let (Ok(()), Some(feed)) = (&result, &mut self.feed) {
            for obs in feed.ready() {
                result = self.pending.time_waits(obs, self.sink, now);
                if result.is_err() {
                    break;
                }
            }
        }
        result
            .and_then(|()| self.pending.release(self.sink, now))
            .and_then(|()| self.sink.flush())
    }
}

/// The reader left (`BrokenPipe`), or the user quit a live view (`Interrupted`, from the
/// sink's `flush`): stop as on a signal.
fn output_closed(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::BrokenPipe | io::ErrorKind::Interrupted
    )
}

/// Ctrl-C and SIGTERM, caught from the moment this is made. Made before netwatch says it is
/// tracing: a stop that comes right after that line then stops it cleanly (detached, counted,
/// summary printed) instead of killing it.
pub struct Stops {
    sigint: Signal,
    sigterm: Signal,
}

impl Stops {
    pub fn install() -> anyhow::Result<Self> {
        Ok(Self {
            sigint: signal(SignalKind::interrupt()).context("installing SIGINT handler")?,
            sigterm: signal(SignalKind::terminate()).context("installing SIGTERM handler")?,
        })
    }
}

/// Streams events into `sink` until a signal, `deadline`, or a closed output.
pub async fn run(
    probe: &mut Probe,
    sink: &mut dyn Sink,
    deadline: Option<Duration>,
    feed: Option<TimeWaitFeed>,
    stops: Stops,
) -> anyhow::Result<(StreamStats, StopReason)> {
    let ring = probe.take_ring()?;
    let fd = ring.as_raw_fd();
    // SAFETY: `ring` owns the map's file descriptor and the AsyncFd owns `ring`, so the fd stays
    // open and unchanged (as_raw_fd always returns that same map fd) for the AsyncFd's lifetime.
    let mut ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
        .map_err(|e| e.into_parts().1)
        .with_context(|| format!("registering ring buffer fd {fd} with epoll"))?;
    let Stops {
        mut sigint,
        mut sigterm,
    } = stops;
    let mut tick = interval(DRAIN_INTERVAL);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let end = deadline.map(|d| Instant::now() + d);
    let far = Instant::now() + Duration::from_secs(86_400 * 365 * 100);

    let mut reader = Reader {
        decode: probe.decode.clone(),
        sink,
        summary: StreamStats::default(),
        feed,
        pending: Pending::new(|ev| crate::host::containers::awaited(ev.cgroup_id, ev.pid)),
    };
    let stop = loop {
        let drained = tokio::select! {
            _ = sigint.recv() => break StopReason::Signal,
            _ = sigterm.recv() => break StopReason::Signal,
            _ = sleep_until(end.unwrap_or(far)) => break StopReason::Deadline,
            guard = ring.readable_mut() => {
                let mut guard = guard.context("waiting on the ring buffer")?;
                let r = reader.drain(guard.get_inner_mut());
                guard.clear_ready();
                r
            }
            _ = tick.tick() => reader.drain(ring.get_mut()),
        };
        match drained {
            Ok(()) => {}
            Err(e) if output_closed(&e) => break StopReason::OutputClosed,
            Err(e) => return Err(e).context("writing output"),
        }
    };

    // Detach first, then read until every produced event is delivered or counted lost.
    probe.detach();
    let bound = Instant::now() + FINAL_DRAIN_BOUND;
    loop {
        if let Err(e) = reader.drain(ring.get_mut())
            && !output_closed(&e)
        {
            return Err(e).context("writing output");
        }
        reader.summary.kernel = probe.stats()?;
        if reader.summary.unaccounted() == 0 || Instant::now() >= bound {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // What waits for a new container's names waits for them as during the run, at most
    // MAX_HOLD more: a stop right after a short-lived container's connect (a job's, a
    // cron's) printed its events without the names the runtime was about to give.
    let hold_end = Instant::now() + MAX_HOLD;
    while reader.pending.is_holding() && Instant::now() < hold_end {
        tokio::time::sleep(Duration::from_millis(10)).await;
        match reader
            .pending
            .release(reader.sink, std::time::Instant::now())
        {
            Ok(()) => {}
            Err(e) if output_closed(&e) => break,
            Err(e) => return Err(e).context("writing output"),
        }
    }
    if let Err(e) = reader
        .pending
        .release_all(reader.sink)
        .and_then(|()| reader.sink.flush())
        && !output_closed(&e)
    {
        return Err(e).context("writing output");
    }
    Ok((reader.summary, stop))
}
