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
use std::{ffi::OsStr, path::Path, process::Command, time::Duration};

use anyhow::{Context as _, Result, bail};

use super::proc::Proc;

/// Longest a replay of one run's recording may take.
const TIMEOUT: Duration = Duration::from_secs(300);

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
    measure_with(recording, scratch, |args| on_cpu(netwatch, args))
}

/// [`measure`], `analyze` run by `analyze` (ARGS → CPU s, stderr).
fn measure_with(
    recording: &Path,
    scratch: &Path,
    mut analyze: impl FnMut(&[&OsStr]) -> Result<(f64, String)>,
) -> Result<WriterCost> {
    let rec = recording.as_os_str();
    let out = scratch.as_os_str();
    let mut events = None;
    let mut replay_s = f64::INFINITY;
    let mut rewrite_s = f64::INFINITY;
    for _ in 0..ROUNDS {
        let (s, stderr) = analyze(&[rec, "--report".as_ref()])?;
        replay_s = replay_s.min(s);
        events = events.or_else(|| parse_replayed(&stderr));
        let (s, _) = analyze(&[rec, "--report".as_ref(), "--record".as_ref(), out])?;
        rewrite_s = rewrite_s.min(s);
        let _ = std::fs::remove_file(scratch);
    }
    let events = events.with_context(|| {
        format!(
            "no event count in `netwatch analyze {}`'s last line",
            recording.display()
        )
    })?;
    if events == 0 {
        bail!("the recording in {} holds no events", recording.display());
    }
    Ok(WriterCost {
        events,
        replay_s,
        rewrite_s,
    })
}

/// Runs `netwatch analyze ARGS` (one thread) to its end: its time on a CPU at ns resolution
/// (`/proc/<pid>/schedstat`, read while it is a zombie; `/usr/bin/time`'s 10 ms are a tenth
/// of what writing a short run's recording costs), and its stderr.
fn on_cpu(netwatch: &Path, args: &[&OsStr]) -> Result<(f64, String)> {
    let mut cmd = Command::new(netwatch);
    cmd.arg("analyze").args(args);
    let mut p = Proc::spawn("netwatch analyze", cmd, false)?;
    let exit = p.finish(TIMEOUT)?;
    let stderr: Vec<&str> = p.lines().iter().map(|l| l.text.as_str()).collect();
    let stderr = stderr.join("\n");
    if !exit.status.success() {
        bail!("netwatch analyze {args:?} failed: {stderr}");
    }
    let sched = exit
        .sched
        .context("no /proc/<pid>/schedstat (a kernel without CONFIG_SCHED_INFO)")?;
    Ok((sched.on_cpu_ns as f64 / 1e9, stderr))
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

    /// The cheapest of each kind of replay is kept, the count comes from the replay's line,
    /// the rewritten file goes, and a failed replay is the error.
    #[test]
    fn the_cheapest_replays_are_compared_and_the_scratch_file_goes() {
        let dir = std::env::temp_dir().join(format!("nw-writer-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let scratch = dir.join("out.nwr");
        let mut times = [0.9, 1.4, 0.7, 1.2, 0.8, 1.0, 0.75, 1.1, 0.8, 1.3].into_iter();
        let mut calls = Vec::new();
        let cost = measure_with(Path::new("/rec"), &scratch, |args| {
            let args: Vec<String> = args.iter().map(|a| a.to_string_lossy().into()).collect();
            if args.len() == 4 {
                assert!(args[3].ends_with("out.nwr"));
                std::fs::write(&scratch, b"x").unwrap();
            }
            calls.push(args.join(" "));
            Ok((
                times.next().unwrap(),
                "netwatch: replayed 42 events from /rec (..)".into(),
            ))
        })
        .unwrap();
        assert_eq!(calls.len(), 2 * ROUNDS);
        assert_eq!(calls[0], "/rec --report");
        assert!(
            calls[1].starts_with("/rec --report --record "),
            "{}",
            calls[1]
        );
        assert_eq!(cost.events, 42);
        assert_eq!((cost.replay_s, cost.rewrite_s), (0.7, 1.0));
        assert!(!scratch.exists(), "the rewritten recording is removed");
        let err = measure_with(Path::new("/rec"), &scratch, |_| {
            anyhow::bail!("no such file")
        })
        .unwrap_err();
        assert!(format!("{err:#}").contains("no such file"));
        let err =
            measure_with(Path::new("/rec"), &scratch, |_| Ok((1.0, String::new()))).unwrap_err();
        assert!(format!("{err:#}").contains("no event count"), "{err:#}");
        std::fs::remove_dir_all(&dir).unwrap();
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
