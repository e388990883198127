//! What every part of the pipeline says about one run: how it started ([`Header`], also the
//! first line of a recording), why it stopped, and how it ended ([`Summary`], the last line).
//! A leaf, so that sinks, the stream and recordings can all name them.

use serde::{Deserialize, Serialize};

use crate::model::analysis::HostSettings;

/// How a run started: the first line of a recording.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Header {
    pub netwatch_record: u32,
    /// CLOCK_MONOTONIC ns when tracing started.
    pub started_ns: u64,
    /// Unix-epoch ns minus monotonic ns at start (for wall-clock output).
    pub wall_offset_ns: i128,
    pub settings: HostSettings,
    /// The live run's filter (flags and expression, as command-line words): `analyze` applies
    /// it again unless given another, so that a replay prints what the live run printed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filter: Vec<String>,
}

/// How a run ended: the last line of a recording, written when the run stops cleanly.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// CLOCK_MONOTONIC ns when tracing stopped.
    pub stopped_ns: u64,
    pub lost: u64,
    /// Program runs the kernel skipped (a netwatch program already running on that CPU).
    #[serde(default)]
    pub missed: u64,
    /// Deltas of the namespace's ListenOverflows and ListenDrops over the run.
    pub listen_overflows: Option<u64>,
    pub listen_drops: Option<u64>,
    /// Events the recording left out: `--record-dir` stopped at its cap (or at a failed write).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub unrecorded: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Summary {
    /// What the kernel could not give the run.
    pub fn losses(&self) -> crate::model::analysis::Losses {
        crate::model::analysis::Losses {
            lost: self.lost,
            missed: self.missed,
        }
    }
}

/// Why the stream stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    Signal,
    Deadline,
    OutputClosed,
}
