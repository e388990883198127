//! The syscall tax: what running netwatch costs every *other* process's syscalls.
//!
//! A BPF program on any `syscalls:*` tracepoint sets the syscall-tracing flag on every task of
//! the host, so every syscall of every process takes the slow path, whether or not the program
//! ever runs. netwatch attaches one (`sys_exit_accept4`/`sys_exit_accept`) only in the modes
//! that show the code path that accepted a socket (`leaks`, `trace --stacks`); the others learn
//! accepted sockets' owners at their first read, from a TCP tracepoint.
//!
//! The workload is `dd if=/dev/zero of=/dev/null bs=1 count=3000000` (6 M syscalls, about a
//! second): nothing but syscalls, and no TCP, so netwatch's own programs never run and what is
//! left is the tax. Each round runs every mode once, in turn (untraced included): the mode is
//! started fresh, `dd` starts once its `tracing TCP events` line is out (and [`SETTLE`] has
//! passed, so its start-up work is over), and it is stopped after. The bench times `dd` itself:
//! wall time from spawn to exit, and its time on a CPU (`/proc/<pid>/schedstat`, read before it
//! is reaped). Each run is compared with the untraced run of its own round, seconds apart, and
//! the median of those per-round ratios is the mode's figure: the machine's pace drifts over
//! a bench (other people's work comes and goes) more than within a round, and a ratio of two
//! medians taken minutes apart carries that drift.
//!
//! The target is judged on the time on a CPU: on this shared 2-core machine `dd` often waits
//! for a CPU for tenths of a second (other people's builds), which is in its wall time, swamps
//! a 2% difference, and is no cost of netwatch; the per-syscall work the tracing flag adds is
//! done on `dd`'s CPU, so its CPU time shows it. Wall time is reported beside it.

use std::{
    collections::BTreeSet,
    path::Path,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};

use super::{
    Availability, Progress, STOP_TIMEOUT, Tracer, kernel, median,
    proc::{self, Proc, Stream},
    start_tracer,
};
use crate::sys;

/// `dd`'s arguments: one byte per read and per write, 3 M of each.
pub const DD_ARGS: [&str; 4] = ["if=/dev/zero", "of=/dev/null", "bs=1", "count=3000000"];
/// Syscalls of one `dd` run (a read and a write per byte).
pub const DD_SYSCALLS: u64 = 6_000_000;
/// The target: `dd` at most 2% slower beside a mode that does not show code paths.
pub const TARGET_RATIO: f64 = 1.02;
/// Pause between a mode's ready line and `dd`, so its start-up work (reading /proc, sock_diag
/// in every namespace for `leaks`) is not timed. The untraced rows pause alike.
const SETTLE: Duration = Duration::from_millis(500);
/// A `dd` run takes about a second; a very busy machine may stretch it several times.
const DD_TIMEOUT: Duration = Duration::from_secs(120);

/// One timed `dd`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DdRun {
    /// The round it ran in (from 1): its untraced pair is that round's.
    pub round: u32,
    pub wall_s: f64,
    /// Time on a CPU; `None` without `/proc/<pid>/schedstat`.
    pub on_cpu_s: Option<f64>,
    /// Time runnable but waiting for a CPU.
    pub waiting_s: Option<f64>,
}

/// What a mode had attached while `dd` ran.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attached {
    /// `N of M` from netwatch's `tracing TCP events (N of M tracepoints attached)` line.
    pub count: Option<(u32, u32)>,
    /// The syscall tracepoints among its links' tracepoints; `None` when the kernel does not
    /// name them in fdinfo.
    pub syscall_tracepoints: Option<BTreeSet<String>>,
}

/// Every run of one mode.
#[derive(Debug, Clone)]
pub struct TaxRow {
    pub tracer: Tracer,
    pub availability: Availability,
    pub runs: Vec<DdRun>,
    /// As seen in the last round.
    pub attached: Option<Attached>,
    pub errors: Vec<String>,
}

impl TaxRow {
    pub fn median_wall(&self) -> Option<f64> {
        median(self.runs.iter().map(|r| r.wall_s).collect())
    }

    /// The median time on a CPU, when every run has one.
    pub fn median_on_cpu(&self) -> Option<f64> {
        let cpu: Option<Vec<f64>> = self.runs.iter().map(|r| r.on_cpu_s).collect();
        median(cpu?)
    }

    /// The median time waiting for a CPU, when every run has one.
    pub fn median_waiting(&self) -> Option<f64> {
        let waiting: Option<Vec<f64>> = self.runs.iter().map(|r| r.waiting_s).collect();
        median(waiting?)
    }
}

#[derive(Debug, Clone, Default)]
pub struct SyscallTax {
    pub rounds: u32,
    pub rows: Vec<TaxRow>,
}

impl SyscallTax {
    pub fn row(&self, tracer: Tracer) -> Option<&TaxRow> {
        self.rows.iter().find(|r| r.tracer == tracer)
    }

    /// A row's runs against the untraced runs of the same rounds, the median of the per-round
    /// ratios: (wall, on CPU). A round without both runs is left out.
    pub fn ratios(&self, row: &TaxRow) -> (Option<f64>, Option<f64>) {
        (
            self.paired(row, |r| Some(r.wall_s)),
            self.paired(row, |r| r.on_cpu_s),
        )
    }

    /// The median over rounds of `value(run) / value(untraced run of that round)`.
    fn paired(&self, row: &TaxRow, value: impl Fn(&DdRun) -> Option<f64>) -> Option<f64> {
        let base = self.row(Tracer::None)?;
        let per_round = row.runs.iter().filter_map(|run| {
            let untraced = base.runs.iter().find(|b| b.round == run.round)?;
            ratio(value(run), value(untraced))
        });
        median(per_round.collect())
    }

    /// The ratio the target is judged on: on CPU, or wall time where schedstat is missing.
    pub fn judged_ratio(&self, row: &TaxRow) -> Option<f64> {
        let (wall, cpu) = self.ratios(row);
        if row.runs.iter().all(|r| r.on_cpu_s.is_some()) {
            cpu
        } else {
            wall
        }
    }
}

/// `value / base`, when both are there and `base` is not zero.
pub fn ratio(value: Option<f64>, base: Option<f64>) -> Option<f64> {
    match (value, base) {
        (Some(v), Some(b)) if b > 0.0 => Some(v / b),
        _ => None,
    }
}

/// How a row stands against the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// A mode without code paths, at most 2% slower.
    Within,
    /// A mode without code paths, more than 2% slower.
    Over,
    /// A mode that shows code paths: its tax is stated, not judged.
    Stated,
    /// The untraced baseline itself.
    Baseline,
    /// No ratio (no run, or no baseline).
    NotMeasured,
}

impl Verdict {
    pub fn of(tracer: Tracer, ratio: Option<f64>) -> Verdict {
        match (tracer, ratio) {
            (Tracer::None, _) => Verdict::Baseline,
            (_, None) => Verdict::NotMeasured,
            (t, Some(_)) if t.shows_code_paths() => Verdict::Stated,
            // At the precision the table shows (0.1%), so `+2.0%` is never a ✗.
            (_, Some(r)) if tenths_of_pct(r) <= tenths_of_pct(TARGET_RATIO) => Verdict::Within,
            (_, Some(_)) => Verdict::Over,
        }
    }

    /// The table's target cell.
    pub fn target(self) -> String {
        match self {
            Verdict::Within | Verdict::Over | Verdict::NotMeasured => {
                format!("≤ {}", fmt_change(TARGET_RATIO))
            }
            Verdict::Stated => "stated (shows code paths)".to_owned(),
            Verdict::Baseline => "baseline".to_owned(),
        }
    }

    /// The table's ✓/✗ cell.
    pub fn mark(self) -> &'static str {
        match self {
            Verdict::Within => "✓",
            Verdict::Over => "✗",
            Verdict::Stated | Verdict::Baseline | Verdict::NotMeasured => "–",
        }
    }
}

/// The ✓/✗ of the whole target: ✗ if any judged mode is over, ✓ if every one is within, `–`
/// when a judged mode has no number (and none is over).
pub fn overall(verdicts: &[Verdict]) -> &'static str {
    if verdicts.contains(&Verdict::Over) {
        "✗"
    } else if verdicts.contains(&Verdict::NotMeasured) || !verdicts.contains(&Verdict::Within) {
        "–"
    } else {
        "✓"
    }
}

/// What the attached tracepoints say that the verdict does not: a mode without code paths
/// on a syscall tracepoint (the tax the target is about), or a mode with code paths on none
/// (its tax is then not what it costs where it does attach one).
pub fn attachment_note(tracer: Tracer, attached: &Attached) -> Option<String> {
    let tps = attached.syscall_tracepoints.as_ref()?;
    if tracer == Tracer::None {
        return None;
    }
    let names: Vec<String> = tps.iter().map(|t| format!("`{t}`")).collect();
    match (tracer.shows_code_paths(), tps.is_empty()) {
        (false, false) => Some(format!(
            "{} does not show code paths, yet attached a syscall tracepoint ({}).",
            tracer.short(),
            names.join(", ")
        )),
        (true, true) => Some(format!(
            "{} shows code paths, yet attached no syscall tracepoint in this build: its row \
             is no measure of the tax a syscall tracepoint costs.",
            tracer.short()
        )),
        _ => None,
    }
}

/// A ratio's change in tenths of a percent, as [`fmt_change`] rounds it.
fn tenths_of_pct(ratio: f64) -> i64 {
    ((ratio - 1.0) * 1000.0).round() as i64
}

/// `1.013 (+1.3%)`: a time ratio, and how much slower (or faster) that is.
pub fn fmt_ratio(ratio: f64) -> String {
    format!("{ratio:.3} ({})", fmt_change(ratio))
}

/// `+1.3%`, `-0.4%`, `±0.0%`.
pub fn fmt_change(ratio: f64) -> String {
    let pct = (ratio - 1.0) * 100.0;
    if format!("{:.1}", pct.abs()) == "0.0" {
        "±0.0%".to_owned()
    } else {
        format!("{pct:+.1}%")
    }
}

/// (max - min) / min of some times: how much the same work varied.
pub fn spread(values: impl Iterator<Item = f64>) -> Option<f64> {
    let v: Vec<f64> = values.collect();
    let min = v.iter().copied().reduce(f64::min)?;
    let max = v.iter().copied().reduce(f64::max)?;
    (min > 0.0).then(|| (max - min) / min)
}

/// `N of M` from `netwatch: tracing TCP events (N of M tracepoints attached); ...`.
pub fn parse_attached_count(line: &str) -> Option<(u32, u32)> {
    let inside = line.split_once('(')?.1.split_once(')')?.0;
    let mut words = inside.split_whitespace();
    let n = words.next()?.parse().ok()?;
    (words.next()? == "of").then_some(())?;
    let m = words.next()?.parse().ok()?;
    (words.next()? == "tracepoints").then_some((n, m))
}

/// Every round runs every available mode once, in the order of `modes`.
pub fn measure(
    netwatch: &Path,
    rounds: u32,
    modes: &[(Tracer, Availability)],
    progress: &mut Progress,
) -> Result<SyscallTax> {
    let mut tax = SyscallTax {
        rounds,
        rows: modes
            .iter()
            .map(|(tracer, availability)| TaxRow {
                tracer: *tracer,
                availability: availability.clone(),
                runs: Vec::new(),
                attached: None,
                errors: Vec::new(),
            })
            .collect(),
    };
    for round in 1..=rounds {
        for row in tax.rows.iter_mut() {
            if row.availability != Availability::Ready {
                continue;
            }
            progress.start(&format!(
                "syscall tax, {}, round {round}/{rounds}",
                if row.tracer == Tracer::None {
                    "untraced"
                } else {
                    row.tracer.short()
                }
            ));
            match run(netwatch, row.tracer, round) {
                Ok((dd, attached)) => {
                    progress.done(&describe(&dd, attached.as_ref()));
                    row.runs.push(dd);
                    if attached.is_some() {
                        row.attached = attached;
                    }
                }
                Err(err) => {
                    proc::check_interrupted()?;
                    progress.done(&format!("failed: {err:#}"));
                    row.errors.push(format!("{err:#}"));
                }
            }
        }
    }
    Ok(tax)
}

fn describe(dd: &DdRun, attached: Option<&Attached>) -> String {
    let mut text = format!("dd {:.3} s", dd.wall_s);
    if let Some(cpu) = dd.on_cpu_s {
        text.push_str(&format!(", {cpu:.3} s on a CPU"));
    }
    if let Some(tps) = attached.and_then(|a| a.syscall_tracepoints.as_ref()) {
        if tps.is_empty() {
            text.push_str(", no syscall tracepoint");
        } else {
            let names: Vec<&str> = tps.iter().map(String::as_str).collect();
            text.push_str(&format!(", on {}", names.join(", ")));
        }
    }
    text
}

/// One run: the mode started (unless untraced), `dd` timed, the mode stopped.
fn run(netwatch: &Path, tracer: Tracer, round: u32) -> Result<(DdRun, Option<Attached>)> {
    let mut traced = match tracer {
        Tracer::None => None,
        _ => Some(start_tracer(netwatch, tracer)?),
    };
    let attached = traced.as_ref().map(|p| Attached {
        count: p
            .last_line(Stream::Stderr, |l| l.contains("tracing TCP events"))
            .and_then(parse_attached_count),
        syscall_tracepoints: kernel::attached_tracepoints(p.pid()).map(|tps| {
            tps.into_iter()
                .filter(|tp| kernel::is_syscall_tracepoint(tp))
                .collect()
        }),
    });
    thread::sleep(SETTLE);
    proc::check_interrupted()?;
    let dd = dd(round)?;
    if let Some(p) = traced.as_mut() {
        p.stop(tracer.stop_signal(), STOP_TIMEOUT)?;
    }
    Ok((dd, attached))
}

/// Runs `dd` and times it.
fn dd(round: u32) -> Result<DdRun> {
    let mut cmd = sys::command("dd");
    cmd.args(DD_ARGS);
    let started = Instant::now();
    let mut p = Proc::spawn("dd", cmd, false)?;
    let exit = p.finish(DD_TIMEOUT)?;
    if !exit.status.success() {
        let said: Vec<&str> = p.lines().iter().map(|l| l.text.as_str()).collect();
        bail!("dd failed ({}): {}", exit.status, said.join("; "));
    }
    let secs = |ns: u64| ns as f64 / 1e9;
    Ok(DdRun {
        round,
        wall_s: exit.ended.duration_since(started).as_secs_f64(),
        on_cpu_s: exit.sched.map(|s| secs(s.on_cpu_ns)),
        waiting_s: exit.sched.map(|s| secs(s.waiting_ns)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(tracer: Tracer, runs: &[(f64, Option<f64>)]) -> TaxRow {
        TaxRow {
            tracer,
            availability: Availability::Ready,
            runs: runs
                .iter()
                .zip(1..)
                .map(|(&(wall_s, on_cpu_s), round)| DdRun {
                    round,
                    wall_s,
                    on_cpu_s,
                    waiting_s: on_cpu_s.map(|c| wall_s - c),
                })
                .collect(),
            attached: None,
            errors: Vec::new(),
        }
    }

    #[test]
    fn verdicts() {
        assert_eq!(Verdict::of(Tracer::Report, Some(1.004)), Verdict::Within);
        assert_eq!(Verdict::of(Tracer::Serve, Some(1.02)), Verdict::Within);
        assert_eq!(Verdict::of(Tracer::Trace, Some(0.97)), Verdict::Within);
        assert_eq!(Verdict::of(Tracer::Report, Some(1.021)), Verdict::Over);
        // Judged as shown: 1.0204 reads `+2.0%`, 1.0206 reads `+2.1%`.
        assert_eq!(Verdict::of(Tracer::Life, Some(1.0204)), Verdict::Within);
        assert_eq!(Verdict::of(Tracer::Life, Some(1.0206)), Verdict::Over);
        assert_eq!(fmt_change(1.0204), "+2.0%");
        assert_eq!(fmt_change(1.0206), "+2.1%");
        // The modes that show code paths are stated, however large their tax.
        assert_eq!(Verdict::of(Tracer::Leaks, Some(1.2)), Verdict::Stated);
        assert_eq!(Verdict::of(Tracer::TraceStacks, Some(1.0)), Verdict::Stated);
        assert_eq!(Verdict::of(Tracer::Report, None), Verdict::NotMeasured);
        assert_eq!(Verdict::of(Tracer::None, Some(1.0)), Verdict::Baseline);
        assert_eq!(Verdict::Within.mark(), "✓");
        assert_eq!(Verdict::Over.mark(), "✗");
        assert_eq!(Verdict::Stated.mark(), "–");
        assert_eq!(Verdict::NotMeasured.mark(), "–");
        assert_eq!(Verdict::Within.target(), "≤ +2.0%");
        assert_eq!(Verdict::Stated.target(), "stated (shows code paths)");

        use Verdict::*;
        assert_eq!(overall(&[Within, Within]), "✓");
        assert_eq!(overall(&[Within, Over, NotMeasured]), "✗");
        assert_eq!(overall(&[Within, NotMeasured]), "–");
        assert_eq!(overall(&[]), "–");
    }

    #[test]
    fn attachment_notes() {
        let on = |tps: &[&str]| Attached {
            count: None,
            syscall_tracepoints: Some(tps.iter().map(|t| t.to_string()).collect()),
        };
        assert_eq!(attachment_note(Tracer::Report, &on(&[])), None);
        assert_eq!(
            attachment_note(Tracer::Leaks, &on(&["sys_exit_accept4"])),
            None
        );
        assert!(
            attachment_note(Tracer::Report, &on(&["sys_exit_accept4"]))
                .unwrap()
                .contains("`sys_exit_accept4`")
        );
        assert!(
            attachment_note(Tracer::TraceStacks, &on(&[]))
                .unwrap()
                .contains("no syscall tracepoint")
        );
        // Unknown (an older kernel names no tracepoints): nothing to say.
        assert_eq!(attachment_note(Tracer::Report, &Attached::default()), None);
    }

    #[test]
    fn only_leaks_and_trace_stacks_are_stated() {
        let stated: Vec<Tracer> = Tracer::SYSCALL_TAX
            .into_iter()
            .filter(|t| t.shows_code_paths())
            .collect();
        assert_eq!(stated, [Tracer::TraceStacks, Tracer::Leaks]);
        assert_eq!(Tracer::SYSCALL_TAX[0], Tracer::None);
        for t in [Tracer::Report, Tracer::Serve, Tracer::Trace] {
            assert!(Tracer::SYSCALL_TAX.contains(&t));
        }
    }

    #[test]
    fn ratios_format() {
        assert_eq!(fmt_ratio(1.0134), "1.013 (+1.3%)");
        assert_eq!(fmt_ratio(0.996), "0.996 (-0.4%)");
        assert_eq!(fmt_ratio(1.0004), "1.000 (±0.0%)");
        assert_eq!(fmt_change(1.2), "+20.0%");
        assert_eq!(
            ratio(Some(1.1), Some(1.0)).map(|r| (r * 10.0).round()),
            Some(11.0)
        );
        assert_eq!(ratio(Some(1.0), Some(0.0)), None);
        assert_eq!(ratio(None, Some(1.0)), None);
        let s = spread([0.9, 1.08, 1.0].into_iter()).unwrap();
        assert!((s - 0.2).abs() < 1e-9);
        assert_eq!(spread(std::iter::empty()), None);
    }

    #[test]
    fn medians_and_the_judged_ratio() {
        let tax = SyscallTax {
            rounds: 3,
            rows: vec![
                row(
                    Tracer::None,
                    &[(1.0, Some(0.90)), (1.4, Some(0.92)), (0.95, Some(0.94))],
                ),
                row(
                    Tracer::Leaks,
                    &[(1.1, Some(1.00)), (1.5, Some(1.04)), (1.2, Some(1.01))],
                ),
                // One run without schedstat: the wall ratio is judged instead.
                row(Tracer::Report, &[(1.0, Some(0.9)), (1.0, None)]),
            ],
        };
        let none = tax.row(Tracer::None).unwrap();
        assert_eq!(none.median_wall(), Some(1.0));
        assert_eq!(none.median_on_cpu(), Some(0.92));
        // Each run against the untraced run of its round: wall 1.1, 1.5/1.4, 1.2/0.95; on a
        // CPU 1.00/0.90, 1.04/0.92, 1.01/0.94; the medians of those.
        let leaks = tax.row(Tracer::Leaks).unwrap();
        let (wall, cpu) = tax.ratios(leaks);
        assert!((wall.unwrap() - 1.1).abs() < 1e-9);
        assert!((cpu.unwrap() - 1.00 / 0.90).abs() < 1e-9);
        assert_eq!(tax.judged_ratio(leaks), cpu);
        // Two rounds, walls 1.0/1.0 and 1.0/1.4: the median of two is their mean.
        let report = tax.row(Tracer::Report).unwrap();
        assert_eq!(report.median_on_cpu(), None);
        let judged = tax.judged_ratio(report).unwrap();
        assert!((judged - (1.0 + 1.0 / 1.4) / 2.0).abs() < 1e-9);
        // A round the untraced run failed in pairs with nothing.
        let mut gap = tax.clone();
        gap.rows[0].runs.remove(0);
        let (wall, _) = gap.ratios(gap.row(Tracer::Leaks).unwrap());
        assert!((wall.unwrap() - (1.5 / 1.4 + 1.2 / 0.95) / 2.0).abs() < 1e-9);
    }

    #[test]
    fn reads_the_attached_count() {
        assert_eq!(
            parse_attached_count(
                "netwatch: tracing TCP events (8 of 8 tracepoints attached); Ctrl-C to stop"
            ),
            Some((8, 8))
        );
        assert_eq!(
            parse_attached_count("netwatch: tracing TCP events (6 of 7 tracepoints attached)"),
            Some((6, 7))
        );
        assert_eq!(parse_attached_count("netwatch: tracing TCP events"), None);
        assert_eq!(parse_attached_count("netwatch: serving (x of y)"), None);
    }
}
