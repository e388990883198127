//! Events held back, in order, while the runtimes are asked about a container seen for the
//! first time (or, while their event streams run, until one names it), so that outputs name a
//! new container from its first event (see [`crate::host::containers`]).
//!
//! Why hold every event behind the first held one, not only that container's: outputs, the
//! trackers and a recording read events in the kernel's order. Why a bound: a runtime that is
//! slow or gone must not stall the outputs; an event waits at most [`MAX_HOLD`] (plus one
//! drain interval), and the ring buffer is read on as usual meanwhile.

use std::{
    collections::{HashSet, VecDeque},
    io,
    time::{Duration, Instant},
};

use crate::{
    model::{event::Event, timewait::Observed},
    pipeline::sink::Sink,
};

/// Owners whose events pass without waiting: looked up at every event, so foldhash rather
/// than SipHash.
type Settled = HashSet<(Option<u32>, Option<u64>), foldhash::fast::RandomState>;

/// The longest an event is held for its container's names.
pub const MAX_HOLD: Duration = crate::host::containers::MAX_HOLD;

/// Events held at most; past it the oldest are passed on unnamed rather than kept in memory.
const MAX_HELD: usize = 1 << 16;

/// Owners remembered as never waiting; past it the memory starts again.
const MAX_SETTLED: usize = 1 << 13;

/// What the stream hands a sink, held in order.
enum Held {
    Event(Event),
    TimeWaits(Observed),
}

/// The queue between the ring buffer's reader and the sink.
pub struct Pending {
    held: VecDeque<(Instant, Held)>,
    /// Whether an event of this owner waits for its container's names.
    awaited: fn(&Event) -> bool,
    /// Owners (pid, cgroup id) whose events were found not to wait: once the runtimes have
    /// answered about a container (or an owner is in none), its events never wait again, so
    /// the question, a few lookups under locks, is asked once per owner rather than per event.
    settled: Settled,
}

impl Pending {
    /// A queue that holds the events `awaited` says wait (live runs:
    /// [`crate::host::containers::awaited`] of the event's owner).
    pub fn new(awaited: fn(&Event) -> bool) -> Pending {
        Pending {
            held: VecDeque::new(),
            awaited,
            settled: Settled::default(),
        }
    }

    /// Passes `ev` on now, or holds it: when it waits for its container, or when an earlier
    /// item is held.
    pub fn event(&mut self, ev: Event, sink: &mut dyn Sink, now: Instant) -> io::Result<()> {
        // Asked even behind held events: a second new container's question goes out now, not
        // once the first one's answer came.
        let waits_now = waits(&mut self.settled, self.awaited, &ev);
        if self.held.is_empty() && !waits_now {
            return sink.event(&ev);
        }
        self.held.push_back((now, Held::Event(ev)));
        self.release(sink, now)
    }

    /// Passes `obs` on now, or holds it behind the events held before it.
    pub fn time_waits(
        &mut self,
        obs: Observed,
        sink: &mut dyn Sink,
        now: Instant,
    ) -> io::Result<()> {
        if self.held.is_empty() {
            return sink.time_waits(&obs);
        }
        self.held.push_back((now, Held::TimeWaits(obs)));
        Ok(())
    }

    /// Passes on, in order, what no longer waits: every item up to the first event that still
    /// waits for its container and has waited less than [`MAX_HOLD`].
    pub fn release(&mut self, sink: &mut dyn Sink, now: Instant) -> io::Result<()> {
        while let Some((since, held)) = self.held.front() {
            let waits = match held {
                Held::Event(ev) => {
                    self.held.len() <= MAX_HELD
                        && now.duration_since(*since) < MAX_HOLD
                        && waits(&mut self.settled, self.awaited, ev)
                }
                Held::TimeWaits(_) => false,
            };
            if waits {
                break;
            }
            if let Some((_, held)) = self.held.pop_front() {
                pass(held, sink)?;
            }
        }
        Ok(())
    }

    /// Whether any event is held for its container's names.
    pub fn is_holding(&self) -> bool {
        !self.held.is_empty()
    }

    /// Passes on everything held, in order: the stream ends.
    pub fn release_all(&mut self, sink: &mut dyn Sink) -> io::Result<()> {
        while let Some((_, held)) = self.held.pop_front() {
            pass(held, sink)?;
        }
        Ok(())
    }
}

/// Whether `ev` waits for its container's names: asks `awaited` unless its owner is
/// `settled`, and remembers the owners found not to wait (see [`Pending`]'s `settled`).
fn waits(settled: &mut Settled, awaited: fn(&Event) -> bool, ev: &Event) -> bool {
    let owner = (ev.pid, ev.cgroup_id);
    if settled.contains(&owner) {
        return false;
    }
    let waits = awaited(ev);
    if !waits {
        if settled.len() >= MAX_SETTLED {
            settled.clear();
        }
        settled.insert(owner);
    }
    waits
}

fn pass(held: Held, sink: &mut dyn Sink) -> io::Result<()> {
    match held {
        Held::Event(ev) => sink.event(&ev),
        Held::TimeWaits(obs) => sink.time_waits(&obs),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records what it is handed: event pids, and timewait dumps as their netns negated.
    #[derive(Default)]
    struct Seen(Vec<i64>);

    impl Sink for Seen {
        fn event(&mut self, ev: &Event) -> io::Result<()> {
            self.0.push(ev.pid.map_or(0, i64::from));
            Ok(())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }

        fn time_waits(&mut self, obs: &Observed) -> io::Result<()> {
            self.0.push(-i64::from(obs.netns));
            Ok(())
        }
    }

    /// Events of pids from 100 up wait; the others do not.
    fn pid_100_up_waits(ev: &Event) -> bool {
        ev.pid.is_some_and(|p| p >= 100)
    }

    fn ev(pid: u32) -> Event {
        Event {
            pid: Some(pid),
            ..Event::test_state(1)
        }
    }

    fn dump(netns: u32) -> Observed {
        Observed {
            netns,
            taken_ns: 0,
            settings: Default::default(),
            sockets: Vec::new(),
            kernel_overflows: None,
        }
    }

    #[test]
    fn events_that_wait_for_nothing_pass_at_once() {
        let (mut pending, mut sink, t0) = (
            Pending::new(pid_100_up_waits),
            Seen::default(),
            Instant::now(),
        );
        pending.event(ev(1), &mut sink, t0).unwrap();
        pending.time_waits(dump(7), &mut sink, t0).unwrap();
        pending.event(ev(2), &mut sink, t0).unwrap();
        assert_eq!(sink.0, [1, -7, 2]);
    }

    #[test]
    fn a_waiting_event_holds_the_ones_after_it_in_order_until_it_is_named() {
        let (mut pending, mut sink, t0) = (
            Pending::new(pid_100_up_waits),
            Seen::default(),
            Instant::now(),
        );
        pending.event(ev(1), &mut sink, t0).unwrap();
        pending.event(ev(100), &mut sink, t0).unwrap();
        pending.event(ev(2), &mut sink, t0).unwrap();
        pending.time_waits(dump(7), &mut sink, t0).unwrap();
        pending.release(&mut sink, t0 + MAX_HOLD / 2).unwrap();
        assert_eq!(sink.0, [1], "held while its container is asked about");
        assert!(pending.is_holding(), "a stop waits for it (bounded)");
        // The runtimes answered: nothing waits any more.
        pending.awaited = |_| false;
        pending.release(&mut sink, t0 + MAX_HOLD / 2).unwrap();
        assert_eq!(sink.0, [1, 100, 2, -7]);
        assert!(!pending.is_holding());
    }

    #[test]
    fn no_event_waits_longer_than_the_bound() {
        let (mut pending, mut sink, t0) = (
            Pending::new(pid_100_up_waits),
            Seen::default(),
            Instant::now(),
        );
        pending.event(ev(100), &mut sink, t0).unwrap();
        let t1 = t0 + MAX_HOLD / 2;
        pending.event(ev(101), &mut sink, t1).unwrap();
        pending.event(ev(3), &mut sink, t1).unwrap();
        pending.release(&mut sink, t0 + MAX_HOLD).unwrap();
        assert_eq!(sink.0, [100], "the first's bound is over, the second's not");
        pending.release(&mut sink, t1 + MAX_HOLD).unwrap();
        assert_eq!(sink.0, [100, 101, 3]);
    }

    #[test]
    fn the_end_of_the_stream_passes_everything_on() {
        let (mut pending, mut sink, t0) = (
            Pending::new(pid_100_up_waits),
            Seen::default(),
            Instant::now(),
        );
        pending.event(ev(100), &mut sink, t0).unwrap();
        pending.time_waits(dump(7), &mut sink, t0).unwrap();
        pending.release_all(&mut sink).unwrap();
        assert_eq!(sink.0, [100, -7]);
    }

    #[test]
    fn the_queue_is_bounded() {
        let (mut pending, mut sink, t0) = (
            Pending::new(pid_100_up_waits),
            Seen::default(),
            Instant::now(),
        );
        for _ in 0..=MAX_HELD {
            pending.event(ev(100), &mut sink, t0).unwrap();
        }
        assert_eq!(pending.held.len(), MAX_HELD);
        assert_eq!(sink.0, [100]);
    }

    #[test]
    fn an_owner_found_not_to_wait_is_not_asked_again() {
        let (mut pending, mut sink, t0) =
            (Pending::new(|_| false), Seen::default(), Instant::now());
        pending.event(ev(1), &mut sink, t0).unwrap();
        // Everyone asked would wait from now on: 1 is not asked.
        pending.awaited = |_| true;
        pending.event(ev(1), &mut sink, t0).unwrap();
        pending.event(ev(100), &mut sink, t0).unwrap();
        assert_eq!(sink.0, [1, 1], "100 was asked, and waits");
        pending.awaited = |_| false;
        pending.release(&mut sink, t0).unwrap();
        pending.awaited = |_| true;
        pending.event(ev(100), &mut sink, t0).unwrap();
        pending.event(ev(1), &mut sink, t0).unwrap();
        assert_eq!(
            sink.0,
            [1, 1, 100, 100, 1],
            "both settled: never held again"
        );
    }
}
