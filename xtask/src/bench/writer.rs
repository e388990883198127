//! What recording costs, measured where it can be: the writer's CPU per event, on the very
//! recording a `report --record-dir` run of the churn wrote.
//!
//! Why beside the live conn/s ratio: recording may cost at most 1% of the connection rate, and
//! two medians of a few runs of a shared 2-core machine differ by more than that with nothing
//! changed (rounds of the same tracer spread over 5-10%). The writer's CPU is exact by
//! comparison: `netwatch analyze REC --report` replays the recording, and `netwatch analyze
//! REC --report --record OUT` replays it and writes it again through the same encoder and
//! compressor the live run used; their difference is what recording adds per event. On a host
//! whose CPUs the churn keeps busy, the rate falls by the share of the CPU that work takes
//! (`cost_share`), and by less when CPUs idle.
use std::path::Path;

use anyhow::{Context as _, Result, bail};

use super::replay;

/// Replays of each kind; the cheapest of each is kept (noise only adds time).
pub const ROUNDS: usize = 5;

/// The writer's cost on one workload's recording.
#[derive(Debug, Clone, PartialEq)]
pub struct WriterCost {
    /// Events in the recording.
    pub events: u64,
    /// CPU s of the cheapest replay without writing, and of the cheapest that wrote.
    pub replay_s: f64,
    pub rewrite_s: f64,
}

impl WriterCost {
    /// What writing adds, in ns per event (never below 0: noise).
    pub fn ns_per_event(&self) -> f64 {
        ((self.rewrite_s - self.replay_s) * 1e9 / self.events.max(1) as f64).max(0.0)
    }
}

/// The share of a host's CPU (`cpus` of them) the writer takes at `conns_per_s` connections
/// of `events_per_conn` events each: how much it lowers the rate of a host the churn keeps busy.
pub fn cost_share(ns_per_event: f64, events_per_conn: f64, conns_per_s: f64, cpus: usize) -> f64 {
    ns_per_event * 1e-9 * events_per_conn * conns_per_s / cpus.max(1) as f64
}

/// Measures the writer on `recording` (a `--record-dir` directory), writing into `scratch`
/// (removed after).
pub fn measure(netwatch: &Path, recording: &Path, scratch: &Path) -> Result<WriterCost> {
    let rec = recording
        .to_str()
        .context("a recording path that is not UTF-8")?;
    let out = scratch
        .to_str()
        .context("a scratch path that is not UTF-8")?;
    let events = replayed_events(netwatch, recording)?;
    if events == 0 {
        bail!("the recording in {rec} holds no events");
    }
    let mut replay_s = f64::INFINITY;
    let mut rewrite_s = f64::INFINITY;
    for _ in 0..ROUNDS {
        replay_s = replay_s.min(replay::timed_analyze(netwatch, &[rec, "--report"])?.0);
        rewrite_s =
            rewrite_s.min(replay::timed_analyze(netwatch, &[rec, "--report", "--record", out])?.0);
        let _ = std::fs::remove_file(scratch);
    }
    Ok(WriterCost {
        events,
        replay_s,
        rewrite_s,
    })
}

/// The event count of `analyze`'s last line: `netwatch: replayed 195000 events from ...`.
fn replayed_events(netwatch: &Path, recording: &Path) -> Result<u64> {
    let out = std::process::Command::new(netwatch)
        .arg("analyze")
        .arg(recording)
        .arg("--report")
        .stdout(std::process::Stdio::null())
        .output()
        .context("running netwatch analyze")?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!("netwatch analyze {} failed: {stderr}", recording.display());
    }
    parse_replayed(&stderr)
        .with_context(|| format!("no event count in `netwatch analyze`'s last line: {stderr}"))
}

fn parse_replayed(stderr: &str) -> Option<u64> {
    stderr.lines().rev().find_map(|l| {
        let rest = l.split_once("replayed ")?.1;
        rest.split_whitespace().next()?.parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_event_count_comes_from_the_replay_line() {
        let stderr = "netwatch: something else 7\nnetwatch: replayed 195000 events from \
                      /tmp/r (0 were lost in the live run; 2313402 bytes, 11.9 bytes/event, \
                      57.0 uncompressed)\n";
        assert_eq!(parse_replayed(stderr), Some(195_000));
        assert_eq!(parse_replayed("netwatch: no replay here\n"), None);
    }

    #[test]
    fn the_cost_is_the_writers_cpu_share_at_the_rate() {
        let w = WriterCost {
            events: 1_000_000,
            replay_s: 0.5,
            rewrite_s: 0.8,
        };
        assert!((w.ns_per_event() - 300.0).abs() < 1e-9);
        // 300 ns × 13 events × 10,000 conn/s = 39 ms of CPU per s, over 2 CPUs: 1.95%.
        let share = cost_share(w.ns_per_event(), 13.0, 10_000.0, 2);
        assert!((share - 0.0195).abs() < 1e-12, "{share}");
        let faster = WriterCost {
            rewrite_s: 0.49,
            ..w
        };
        assert_eq!(
            faster.ns_per_event(),
            0.0,
            "noise never makes writing free of cost below 0"
        );
    }
}
