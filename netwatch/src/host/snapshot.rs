//! What a periodic output took from the host rather than from the event stream, one value per
//! output: a recording writes it after the events that output had seen, and a replay hands it
//! back at the same place, so the replayed output is the live one byte for byte.
use serde::{Deserialize, Serialize};

use crate::host::stuck::StuckSnapshot;

/// One periodic output's host side.
#[derive(Clone, Debug, PartialEq)]
pub enum HostSnapshot {
    /// A `leaks` snapshot: stuck sockets, holders, names (a `SNAPSHOT` frame).
    Stuck(Box<StuckSnapshot>),
    /// A `top` summary without a terminal: when it was printed, and the kernel's count of lost
    /// events then (a `TICK` frame).
    Tick(TopTick),
}

/// When one `top` plain-text summary was printed, and what it read from the kernel: the rates,
/// ages and windows it shows follow from this moment and the events before it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TopTick {
    /// CLOCK_MONOTONIC ns of the summary.
    pub at_ns: u64,
    /// Events the kernel could not hand over, as counted then.
    pub lost: u64,
    /// The live run's `--interval`, in ns: the rate windows and the header line use it.
    pub interval_ns: u64,
    /// Taken when the stream stopped, not at an interval: says what the run printed at its end.
    pub last: bool,
    /// With `last`: whether a last summary was printed (not when one had just been, with every
    /// event in it).
    pub printed: bool,
    /// With `last`: whether the report followed (the run was stopped by a signal).
    pub report: bool,
}
