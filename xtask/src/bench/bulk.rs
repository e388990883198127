//! The bulk-transfer row: what the code-path modes cost a connection that only sends.
//!
//! `leaks` (and `trace --stacks`) take a user stack at each socket's first send and receive,
//! from programs on `sock:sock_send_length` / `sock_recv_length`, which run at every send and
//! receive of every socket on the host. A churn workload sends little per connection; a bulk
//! transfer sends many small writes on one connection, the case where a per-send cost would
//! show. `tcpdrive bulk` writes [`BYTES`] over loopback in 4 KiB writes to `tcpdrive
//! bulk-sink`, untraced, with `netwatch report` (a mode without code paths, which must not
//! attach them) and with `netwatch leaks`, interleaved round by round; the throughput's median
//! per row and its ratio to untraced are reported, with the in-kernel time per run of the
//! first-use programs (`bpf_stats`).
use std::{collections::BTreeSet, time::Duration};

use anyhow::{Result, anyhow};

use super::{
    Env, Progress, Tracer, kernel, median,
    proc::{self, Proc, Stream},
    start_tracer,
};

/// Bytes one transfer writes: about a second untraced on the 2-core machines here.
pub const BYTES: u64 = 1 << 30;
/// Bytes per write(): what a typical application buffer sends at once.
pub const CHUNK: usize = 4096;
/// Port of the bulk sink, inside the bench's loopback namespace (not the churn's).
const PORT: u16 = 5001;
/// Target: `leaks` keeps at least this share of untraced throughput.
pub const TARGET: f64 = 0.95;

/// The rows, in the order they run in each round.
pub const TRACERS: [Tracer; 3] = [Tracer::None, Tracer::Report, Tracer::Leaks];

/// One row: MB/s of each round, and the first-use programs' in-kernel cost.
#[derive(Debug, Clone, Default)]
pub struct BulkRow {
    pub mb_per_s: Vec<f64>,
    /// Summed over the rounds: (run_time_ns, run_cnt) of `*first_send` / `*first_recv`.
    pub first_use: (u64, u64),
}

#[derive(Debug, Clone, Default)]
pub struct Bulk {
    pub rows: Vec<(Tracer, BulkRow)>,
    /// Why the row could not be measured, when it could not.
    pub skipped: Option<String>,
}

impl Bulk {
    pub fn median(&self, tracer: Tracer) -> Option<f64> {
        let row = self.rows.iter().find(|(t, _)| *t == tracer)?;
        median(row.1.mb_per_s.clone())
    }

    /// A row's median throughput as a share of untraced.
    pub fn ratio(&self, tracer: Tracer) -> Option<f64> {
        Some(self.median(tracer)? / self.median(Tracer::None)?)
    }
}

/// Runs `rounds` rounds of the bulk transfer, each with every row of [`TRACERS`] in turn.
pub(super) fn measure(env: &Env, rounds: u32, progress: &mut Progress) -> Result<Bulk> {
    let mut bulk = Bulk {
        rows: TRACERS.iter().map(|t| (*t, BulkRow::default())).collect(),
        skipped: None,
    };
    let addr = format!("127.0.0.1:{PORT}");
    let mut sink_cmd = env.lo.exec(&env.tcpdrive);
    sink_cmd.args(["bulk-sink", &addr]);
    let mut sink = Proc::spawn("tcpdrive bulk-sink", sink_cmd, true)?;
    sink.wait_line(Stream::Stdout, "READY line", Duration::from_secs(20), |l| {
        l.starts_with("READY")
    })?;
    for round in 1..=rounds {
        for (tracer, row) in &mut bulk.rows {
            progress.start(&format!("bulk transfer, {}, round {round}", tracer.short()));
            env.stats.ensure()?;
            let mut traced = match tracer {
                Tracer::None => None,
                _ => Some(start_tracer(&env.netwatch, *tracer)?),
            };
            let ours: BTreeSet<u32> = traced
                .as_ref()
                .map(|p| kernel::owned_programs(p.pid()))
                .unwrap_or_default();
            let before = kernel::programs()?;
            let mb_per_s = transfer(env, &addr)?;
            let after = kernel::programs()?;
            if let Some(p) = traced.as_mut() {
                p.stop(tracer.stop_signal(), super::STOP_TIMEOUT)?;
            }
            for prog in kernel::deltas(&before, &after, &ours) {
                if prog.name.ends_with("first_send") || prog.name.ends_with("first_recv") {
                    row.first_use.0 += prog.run_time_ns;
                    row.first_use.1 += prog.run_cnt;
                }
            }
            row.mb_per_s.push(mb_per_s);
            progress.done(&format!("{mb_per_s:.0} MB/s"));
            proc::check_interrupted()?;
        }
    }
    Ok(bulk)
}

/// One `tcpdrive bulk` of [`BYTES`] in [`CHUNK`]-byte writes; its throughput in MB/s.
fn transfer(env: &Env, addr: &str) -> Result<f64> {
    let mut cmd = env.lo.exec(&env.tcpdrive);
    cmd.args([
        "bulk",
        addr,
        "--bytes",
        &BYTES.to_string(),
        "--chunk",
        &CHUNK.to_string(),
    ]);
    let mut client = Proc::spawn("tcpdrive bulk", cmd, true)?;
    client.finish(Duration::from_secs(120))?;
    let line = client
        .last_line(Stream::Stdout, |l| l.starts_with("BULK "))
        .ok_or_else(|| anyhow!("tcpdrive bulk printed no BULK line"))?;
    parse_bulk(line).ok_or_else(|| anyhow!("unreadable line `{line}`"))
}

/// `BULK <pid> <bytes> <elapsed_us> <writes>` -> MB/s.
pub fn parse_bulk(line: &str) -> Option<f64> {
    let mut w = line.split_whitespace().skip(2);
    let bytes: f64 = w.next()?.parse().ok()?;
    let us: f64 = w.next()?.parse().ok()?;
    (us > 0.0).then(|| bytes / us)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_bulk_line_and_the_ratio() {
        assert_eq!(parse_bulk("BULK 42 1000000 500000 245"), Some(2.0));
        assert_eq!(parse_bulk("BULK 42 1000000 0 245"), None);
        assert_eq!(parse_bulk("DONE 1 2"), None);
        let row = |v: &[f64]| BulkRow {
            mb_per_s: v.to_vec(),
            first_use: (0, 0),
        };
        let b = Bulk {
            rows: vec![
                (Tracer::None, row(&[1000.0, 900.0, 1100.0])),
                (Tracer::Leaks, row(&[950.0, 970.0, 960.0])),
            ],
            skipped: None,
        };
        assert_eq!(b.ratio(Tracer::Leaks), Some(0.96));
        assert_eq!(b.ratio(Tracer::Report), None);
    }
}
