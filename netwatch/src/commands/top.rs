//! `netwatch top` (and `netwatch` alone): the live view. Fed by the same pipeline as every
//! live command: [`TopSink`] holds a tracker and the report's analysis (Ctrl-C prints the
//! report) and, per process, what the view shows (`stats`). The stream calls
//! [`Sink::flush`] after every drained batch, at most 50 ms apart: that is where keys are read,
//! without blocking, and where a frame is drawn once per `--interval`. Quitting from a key is an
//! [`io::ErrorKind::Interrupted`] from `flush`, which the stream takes as "stop".
//!
//! When stdout is not a terminal, a plain-text summary is printed every interval instead.
//! With `--record`, each summary's moment and what it read from the kernel ([`TopTick`]) go
//! into the recording after the events before it, and `analyze --top` prints the same
//! summaries from them ([`TopSink::replay`]).
mod stats;
mod tui;
mod view;

use std::{
    collections::VecDeque,
    io::{self, BufWriter, IsTerminal as _, Stdout, Write as _},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use crate::{
    cli::TopArgs,
    commands::report,
    host::clock::monotonic_ns,
    host::snapshot::{HostSnapshot, TopTick},
    kernel::probe::{Probe, StatsReader},
    model::analysis::{Analysis, Thresholds},
    model::event::Event,
    model::selection::Selection,
    model::timewait::Observed,
    model::tracker::{Fact, Tracker},
    pipeline::session::StopReason,
    pipeline::session::{Header, Summary},
    pipeline::sink::Sink,
};

use self::{
    stats::{Counters, Stats},
    tui::{Action, Tui},
    view::{Inputs, UiState, View},
};

/// Where frames go.
enum Screen {
    /// A terminal: taken at the first flush (so that start-up messages stay readable on the
    /// normal screen), given back on quit, stop or drop.
    Terminal(Option<Tui>),
    /// Not a terminal: a plain-text summary every interval.
    Plain(BufWriter<Stdout>),
}

/// How the run ended, for what is printed after it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Quit {
    /// `q` or Esc.
    Key,
    /// Ctrl-C: print the report too.
    Report,
}

/// Counters at one moment: where a rate window starts.
struct Snapshot {
    /// CLOCK_MONOTONIC ns.
    at: u64,
    counters: Counters,
    events: u64,
}

/// The live view's sink.
pub struct TopSink {
    tracker: Tracker,
    analysis: Analysis,
    selection: Selection,
    stats: Stats,
    close_wait_age_ms: f64,
    interval: Duration,
    started_ns: u64,
    events: u64,
    kernel: Option<StatsReader>,
    lost: u64,
    ui: UiState,
    screen: Screen,
    /// Counters at the last frames, newest last: rates are taken against one an interval old.
    snapshots: VecDeque<Snapshot>,
    /// CLOCK_MONOTONIC ns when the next frame is due.
    next_frame: u64,
    quit: Option<Quit>,
    stop: Option<StopReason>,
    /// When (monotonic ns) the last plain-text summary was printed, and how many events it had
    /// seen.
    printed: Option<(u64, u64)>,
    /// Where the summaries' moments come from.
    clock: Ticks,
    /// Replayed: whether the report follows the summaries, as the recording's last tick says
    /// (live, how the run ended says).
    report: bool,
    /// Printing the last summary failed when the stream stopped: `finish` says so (a closed
    /// pipe is not an error there).
    end_failed: Option<io::Error>,
}

/// Where a plain-text summary's moment comes from.
enum Ticks {
    /// This host's clock and kernel.
    Live,
    /// This host's, each kept for the recording until it takes them.
    Recording(Vec<TopTick>),
    /// The recording's ticks, counted for the caller (a recording may hold none).
    Replay(Arc<AtomicU64>),
}

impl TopSink {
    pub fn new(args: &TopArgs, selection: Selection, header: &Header) -> Self {
        let screen = if io::stdout().is_terminal() {
            Screen::Terminal(None)
        } else {
            Screen::Plain(BufWriter::with_capacity(64 * 1024, io::stdout()))
        };
        Self::with_screen(args, selection, header, screen, Ticks::Live)
    }

    /// `analyze --top`: plain-text summaries on stdout at the recording's ticks (terminal or
    /// not, as the live run printed them without one); `replayed` counts the ticks.
    pub fn replay(
        args: &TopArgs,
        selection: Selection,
        header: &Header,
        replayed: Arc<AtomicU64>,
    ) -> Self {
        let screen = Screen::Plain(BufWriter::with_capacity(64 * 1024, io::stdout()));
        Self::with_screen(args, selection, header, screen, Ticks::Replay(replayed))
    }

    fn with_screen(
        args: &TopArgs,
        selection: Selection,
        header: &Header,
        screen: Screen,
        clock: Ticks,
    ) -> Self {
        let t = &args.thresholds;
        let thresholds = Thresholds {
            close_wait_age_ms: t.close_wait_age.as_secs_f64() * 1000.0,
            close_wait_alarm: t.close_wait_alarm,
            time_wait_alarm: t.time_wait_alarm,
        };
        // The run's start, not this moment: a replay starts the first window where the live
        // run did.
        let now = header.started_ns;
        let mut analysis = Analysis::new(header.settings.clone(), thresholds.clone());
        analysis.set_start(header.started_ns);
        let mut stats = Stats::new(header.settings.clone());
        stats.time_waits.set_start(header.started_ns);
        Self {
            tracker: Tracker::new(args.tracker.max_sockets),
            analysis,
            selection,
            stats,
            close_wait_age_ms: thresholds.close_wait_age_ms,
            interval: args.interval,
            started_ns: header.started_ns,
            events: 0,
            kernel: None,
            lost: 0,
            ui: UiState::default(),
            screen,
            snapshots: VecDeque::from([Snapshot {
                at: now,
                counters: Counters::default(),
                events: 0,
            }]),
            next_frame: now + args.interval.as_nanos() as u64,
            quit: None,
            stop: None,
            printed: None,
            clock,
            report: false,
            end_failed: None,
        }
    }

    /// Where the kernel's counters (lost events) are read from, once per frame.
    /// The stream stopped by itself (signal, deadline): give the terminal back before
    /// anything else is printed.
    fn on_stop(&mut self, stop: StopReason) {
        self.stop = Some(stop);
        if let Screen::Terminal(tui) = &mut self.screen {
            *tui = None;
        }
    }

    fn on_fact(&mut self, fact: Fact) {
        let Fact::Ended(c) = fact;
        if self.selection.connection(&c) {
            self.analysis.on_connection(&c);
            self.stats.on_connection(&c);
        }
    }

    /// Brings everything up to `now_ns` and computes a frame; rates over the newest snapshot
    /// at least half an interval old. The lost count is the caller's to set: read from the
    /// kernel live, taken from the tick in a replay.
    fn frame(&mut self, now_ns: u64) -> View {
        let mut facts = Vec::new();
        self.tracker.finish_until(now_ns, &mut |f| facts.push(f));
        for f in facts {
            self.on_fact(f);
        }
        self.stats.advance(now_ns);
        let half = self.interval.as_nanos() as u64 / 2;
        let base = self
            .snapshots
            .iter()
            .rev()
            .find(|s| now_ns.saturating_sub(s.at) >= half)
            .or(self.snapshots.front())
            .expect("at least one snapshot");
        view::build(
            &Inputs {
                stats: &self.stats,
                before: &base.counters,
                window_s: now_ns.saturating_sub(base.at) as f64 / 1e9,
                events: self.events,
                events_before: base.events,
                lost: self.lost,
                tracker: &self.tracker,
                selection: &self.selection,
                now_ns,
                elapsed_s: now_ns.saturating_sub(self.started_ns) as f64 / 1e9,
                interval_s: self.interval.as_secs_f64(),
                close_wait_age_ms: self.close_wait_age_ms,
            },
            &self.ui,
        )
    }

    /// Keeps the counters of this frame as the start of the next rate window.
    fn snapshot(&mut self, now: u64) {
        self.snapshots.push_back(Snapshot {
            at: now,
            counters: self.stats.counters.clone(),
            events: self.events,
        });
        while self.snapshots.len() > 3 {
            self.snapshots.pop_front();
        }
        let interval = self.interval.as_nanos() as u64;
        self.next_frame = (self.next_frame + interval).max(now + interval / 2);
    }

    /// Reads keys, draws when a frame is due or a key changed the view.
    fn terminal_flush(&mut self) -> io::Result<()> {
        let Screen::Terminal(tui) = &mut self.screen else {
            return Ok(());
        };
        let mut redraw = false;
        if tui.is_none() {
            *tui = Some(Tui::enter()?);
            redraw = true;
        }
        for input in tui::pending_input()? {
            match tui::on_input(&mut self.ui, &input) {
                Action::Nothing => {}
                Action::Redraw => redraw = true,
                action @ (Action::Quit | Action::QuitWithReport) => {
                    self.quit = Some(if action == Action::QuitWithReport {
                        Quit::Report
                    } else {
                        Quit::Key
                    });
                    *tui = None;
                    return Err(io::Error::new(
                        io::ErrorKind::Interrupted,
                        "quit from the live view",
                    ));
                }
            }
        }
        let now = monotonic_ns();
        let due = now >= self.next_frame;
        if due || redraw {
            self.read_lost();
            let view = self.frame(now);
            if let Screen::Terminal(Some(t)) = &mut self.screen {
                t.draw(&view, &self.ui)?;
            }
            if due {
                self.snapshot(now);
            }
        }
        Ok(())
    }

    /// The kernel's count of lost events, live (a replay has the recorded count).
    fn read_lost(&mut self) {
        if let Some(k) = self.kernel.as_ref().and_then(|r| r.read().ok()) {
            self.lost = k.lost;
        }
    }

    /// This host's tick now (and, recording, kept for the recording).
    fn live_tick(&mut self, last: bool) -> TopTick {
        self.read_lost();
        TopTick {
            at_ns: monotonic_ns(),
            lost: self.lost,
            interval_ns: self.interval.as_nanos() as u64,
            last,
            printed: false,
            report: false,
        }
    }

    fn keep_for_recording(&mut self, tick: TopTick) {
        if let Ticks::Recording(ticks) = &mut self.clock {
            ticks.push(tick);
        }
    }

    fn plain_flush(&mut self) -> io::Result<()> {
        if matches!(self.clock, Ticks::Replay(_)) || monotonic_ns() < self.next_frame {
            return Ok(());
        }
        let tick = self.live_tick(false);
        self.keep_for_recording(tick);
        self.print_tick(&tick)
    }

    /// Prints the summary of the moment `tick` says, and starts the next rate window there.
    fn print_tick(&mut self, tick: &TopTick) -> io::Result<()> {
        self.lost = tick.lost;
        let view = self.frame(tick.at_ns);
        self.print_plain(&view, tick.at_ns)?;
        if !tick.last {
            self.snapshot(tick.at_ns);
        }
        Ok(())
    }

    fn print_plain(&mut self, view: &View, at_ns: u64) -> io::Result<()> {
        if let Screen::Plain(out) = &mut self.screen {
            self.printed = Some((at_ns, self.events));
            out.write_all(view.plain().as_bytes())?;
            out.write_all(b"\n")?;
            out.flush()?;
        }
        Ok(())
    }

    /// The stream stopped (live, without a terminal): the last summary unless one was just
    /// printed with every event, and whether the report follows; recording, that is the last
    /// tick.
    fn plain_end(&mut self) -> io::Result<()> {
        let mut tick = self.live_tick(true);
        tick.printed = needs_last_summary(self.printed, self.events, self.interval, tick.at_ns);
        tick.report = self.stop == Some(StopReason::Signal);
        self.keep_for_recording(tick);
        self.end_at(&tick)
    }

    /// What the run printed at its end, as `tick` says.
    fn end_at(&mut self, tick: &TopTick) -> io::Result<()> {
        self.report = tick.report;
        if tick.printed {
            self.print_tick(tick)?;
        }
        Ok(())
    }

    /// After the stream: the terminal back (without one, the last summary was printed when
    /// the stream stopped). Ctrl-C (the key, or SIGINT/SIGTERM) then prints the report.
    fn print_end(mut self, header: &Header, summary: &Summary) -> io::Result<()> {
        if let Screen::Terminal(tui) = &mut self.screen {
            *tui = None;
        }
        if let Some(e) = self.end_failed.take() {
            return Err(e);
        }
        let report = match self.clock {
            Ticks::Replay(_) => self.report,
            _ => self.quit == Some(Quit::Report) || self.stop == Some(StopReason::Signal),
        };
        if report {
            let Self {
                tracker,
                analysis,
                selection,
                ..
            } = &mut self;
            tracker.flush(&mut |Fact::Ended(c)| {
                if selection.connection(&c) {
                    analysis.on_connection(&c);
                }
            });
            analysis.set_start(header.started_ns);
            let listen = summary.listen_overflows.zip(summary.listen_drops);
            let r = analysis.report(
                tracker,
                summary.stopped_ns,
                summary.losses(),
                listen,
                &|c| selection.close_wait(c),
                &crate::host::cgroup::HostNames,
            );
            let mut out = io::stdout().lock();
            out.write_all(report::render(&r, &report::Style::default()).as_bytes())?;
            out.flush()?;
        }
        Ok(())
    }
}

/// Whether the run's end needs a last plain-text summary: unless one was printed within the
/// last half interval and no event has come since. An event that came after the last
/// summary (a SYN retransmitted just before `--duration` ran out) must be in one: skipping
/// the last summary because one was printed recently left it out of every one.
fn needs_last_summary(
    printed: Option<(u64, u64)>,
    events: u64,
    interval: Duration,
    now_ns: u64,
) -> bool {
    let half = interval.as_nanos() as u64 / 2;
    !printed.is_some_and(|(at, seen)| now_ns.saturating_sub(at) < half && seen == events)
}

impl Sink for TopSink {
    fn attach(&mut self, probe: &Probe) -> anyhow::Result<()> {
        self.kernel = Some(probe.stats_reader()?);
        Ok(())
    }

    fn wants_time_waits(&self) -> bool {
        true
    }

    /// Both TIME_WAIT tables (the view's and the report's) take the kernel's word.
    fn time_waits(&mut self, obs: &Observed) -> io::Result<()> {
        let adopt = self.selection.is_empty();
        self.stats.time_waits.reconcile(obs, adopt);
        self.analysis.time_waits_mut().reconcile(obs, adopt);
        Ok(())
    }

    fn stopped(&mut self, stop: StopReason) {
        self.on_stop(stop);
        if matches!(self.screen, Screen::Plain(_)) && !matches!(self.clock, Ticks::Replay(_)) {
            // Here, not in `finish`: a recording writes the last tick before its summary.
            self.end_failed = self.plain_end().err();
        }
    }

    fn record_host_snapshots(&mut self) {
        if matches!(self.clock, Ticks::Live) {
            self.clock = Ticks::Recording(Vec::new());
        }
    }

    fn take_host_snapshots(&mut self) -> Vec<HostSnapshot> {
        match &mut self.clock {
            Ticks::Recording(ticks) => ticks.drain(..).map(HostSnapshot::Tick).collect(),
            _ => Vec::new(),
        }
    }

    /// A recorded tick: the summary the live run printed then (`leaks` snapshots are not
    /// this command's).
    fn host_snapshot(&mut self, snapshot: &HostSnapshot) -> io::Result<()> {
        let (Ticks::Replay(replayed), HostSnapshot::Tick(tick)) = (&self.clock, snapshot) else {
            return Ok(());
        };
        replayed.fetch_add(1, Ordering::Relaxed);
        self.interval = Duration::from_nanos(tick.interval_ns);
        if tick.last {
            self.end_at(tick)
        } else {
            self.print_tick(tick)
        }
    }

    fn finish(self: Box<Self>, header: &Header, summary: &Summary) -> io::Result<()> {
        (*self).print_end(header, summary)
    }

    fn event(&mut self, ev: &Event) -> io::Result<()> {
        self.events += 1;
        self.analysis.on_stream_event(ev);
        self.stats.time_waits.on_event(ev);
        if self.selection.event(ev) {
            self.analysis.on_event(ev);
            self.stats.on_event(ev);
        }
        // The tracker sees every event, so each socket's life is whole; what it concludes is
        // filtered (as in `report`).
        let mut facts = Vec::new();
        self.tracker.on_event(ev, &mut |f| facts.push(f));
        for f in facts {
            self.on_fact(f);
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.quit.is_some() || self.stop.is_some() {
            return Ok(());
        }
        match self.screen {
            Screen::Terminal(_) => self.terminal_flush(),
            Screen::Plain(_) => self.plain_flush(),
        }
    }
}

impl Drop for TopSink {
    fn drop(&mut self) {
        tui::restore();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_summary_is_skipped_only_when_one_was_just_printed_with_every_event() {
        let second = Duration::from_secs(1);
        let now = 10_000_000_000;
        assert!(needs_last_summary(None, 0, second, now), "none printed yet");
        assert!(!needs_last_summary(Some((now, 5)), 5, second, now));
        // One event more since (the case that printed a retransmit count one short).
        assert!(needs_last_summary(Some((now, 5)), 6, second, now));
        // Printed long ago.
        let before = now - 2_000_000_000;
        assert!(needs_last_summary(Some((before, 5)), 5, second, now));
    }
}
