//! `netwatch top` (and `netwatch` alone): the live view. Fed by the same pipeline as every
//! live command: [`TopSink`] holds a tracker and the report's analysis (Ctrl-C prints the
//! report) and, per process, what the view shows (`stats`). The stream calls
//! [`Sink::flush`] after every drained batch, at most 50 ms apart: that is where keys are read,
//! without blocking, and where a frame is drawn once per `--interval`. Quitting from a key is an
//! [`io::ErrorKind::Interrupted`] from `flush`, which the stream takes as "stop".
//!
//! When stdout is not a terminal, a plain-text summary is printed every interval instead.
mod stats;
mod tui;
mod view;

use std::{
    collections::VecDeque,
    io::{self, BufWriter, IsTerminal as _, Stdout, Write as _},
    time::{Duration, Instant},
};

use crate::{
    cli::TopArgs,
    commands::report,
    host::clock::monotonic_ns,
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
    at: Instant,
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
    next_frame: Instant,
    quit: Option<Quit>,
    stop: Option<StopReason>,
    /// When the last plain-text summary was printed, and how many events it had seen.
    printed: Option<(Instant, u64)>,
}

impl TopSink {
    pub fn new(args: &TopArgs, selection: Selection, header: &Header) -> Self {
        let t = &args.thresholds;
        let thresholds = Thresholds {
            close_wait_age_ms: t.close_wait_age.as_secs_f64() * 1000.0,
            close_wait_alarm: t.close_wait_alarm,
            time_wait_alarm: t.time_wait_alarm,
        };
        let screen = if io::stdout().is_terminal() {
            Screen::Terminal(None)
        } else {
            Screen::Plain(BufWriter::with_capacity(64 * 1024, io::stdout()))
        };
        let now = Instant::now();
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
            next_frame: now + args.interval,
            quit: None,
            stop: None,
            printed: None,
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
    /// at least half an interval old.
    fn frame(&mut self, now: Instant) -> View {
        let now_ns = monotonic_ns();
        let mut facts = Vec::new();
        self.tracker.finish_until(now_ns, &mut |f| facts.push(f));
        for f in facts {
            self.on_fact(f);
        }
        self.stats.advance(now_ns);
        if let Some(k) = self.kernel.as_ref().and_then(|r| r.read().ok()) {
            self.lost = k.lost;
        }
        let half = self.interval / 2;
        let base = self
            .snapshots
            .iter()
            .rev()
            .find(|s| now.duration_since(s.at) >= half)
            .or(self.snapshots.front())
            .expect("at least one snapshot");
        view::build(
            &Inputs {
                stats: &self.stats,
                before: &base.counters,
                window_s: now.duration_since(base.at).as_secs_f64(),
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
    fn snapshot(&mut self, now: Instant) {
        self.snapshots.push_back(Snapshot {
            at: now,
            counters: self.stats.counters.clone(),
            events: self.events,
        });
        while self.snapshots.len() > 3 {
            self.snapshots.pop_front();
        }
        self.next_frame = (self.next_frame + self.interval).max(now + self.interval / 2);
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
        let now = Instant::now();
        let due = now >= self.next_frame;
        if due || redraw {
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

    fn plain_flush(&mut self) -> io::Result<()> {
        let now = Instant::now();
        if now < self.next_frame {
            return Ok(());
        }
        let view = self.frame(now);
        self.print_plain(&view)?;
        self.snapshot(now);
        Ok(())
    }

    fn print_plain(&mut self, view: &View) -> io::Result<()> {
        if let Screen::Plain(out) = &mut self.screen {
            self.printed = Some((Instant::now(), self.events));
            out.write_all(view.plain().as_bytes())?;
            out.write_all(b"\n")?;
            out.flush()?;
        }
        Ok(())
    }

    /// After the stream: the terminal back; without one, a last summary. Ctrl-C (the key, or
    /// SIGINT/SIGTERM) then prints the report.
    fn print_end(mut self, header: &Header, summary: &Summary) -> io::Result<()> {
        if let Screen::Terminal(tui) = &mut self.screen {
            *tui = None;
        }
        if matches!(self.screen, Screen::Plain(_))
            && needs_last_summary(self.printed, self.events, self.interval)
        {
            let view = self.frame(Instant::now());
            self.print_plain(&view)?;
        }
        if self.quit == Some(Quit::Report) || self.stop == Some(StopReason::Signal) {
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
fn needs_last_summary(printed: Option<(Instant, u64)>, events: u64, interval: Duration) -> bool {
    !printed.is_some_and(|(at, seen)| at.elapsed() < interval / 2 && seen == events)
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
        let now = Instant::now();
        assert!(needs_last_summary(None, 0, second), "none printed yet");
        assert!(!needs_last_summary(Some((now, 5)), 5, second));
        // One event more since (the case that printed a retransmit count one short).
        assert!(needs_last_summary(Some((now, 5)), 6, second));
        // Printed long ago.
        let before = now - 2 * second;
        assert!(needs_last_summary(Some((before, 5)), 5, second));
    }
}
