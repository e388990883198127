//! `cargo xtask bench`: how much netwatch costs, side by side with the peers, on this machine.
//!
//! The promise is continuous tracing at a cost nobody notices, so the bench measures what a
//! user would notice: connection throughput of a churn workload (connect, one small request
//! and reply, close) with each tracer attached, against no tracer; what each tracer's programs
//! cost in the kernel per run; its user-space CPU per event; its peak memory; lost events; the
//! highest event rate netwatch keeps up with at its default ring size.
//!
//! How, and why:
//! - Traffic is `tcpdrive` (the tests' driver) in network namespaces the bench creates and
//!   deletes ([`netns`]): loopback inside one, and a veth pair between two. Tracers run in the
//!   host namespace and see every namespace, as in production.
//! - Runs are interleaved: each round runs every tracer once, in turn, so load from elsewhere
//!   on the machine (other people compiling) spreads over all rows instead of skewing one;
//!   the median of the rounds is reported, and its ratio to the no-tracer median.
//! - A tracer is started fresh for every run and stopped after it, so its counters (events,
//!   losses, CPU, peak RSS) belong to that run only. Load starts only once it is really
//!   tracing: netwatch's `tracing TCP events` line, or its programs attached (for the peers).
//! - In-kernel cost comes from `kernel.bpf_stats_enabled` ([`kernel::BpfStats`], restored
//!   afterwards) and `bpftool prog show`, per program, counted between just before and just
//!   after the load.
//! - The syscall tax ([`tax`]): a program on any `syscalls:*` tracepoint puts every task of the
//!   host on the slow syscall path, so `dd bs=1` (6 M syscalls) is timed untraced and beside
//!   each netwatch mode, in rounds like the churn; only the modes that show code paths may
//!   attach one.
//! - The held-sockets row ([`held`]): 200,000 live sockets at once with `netwatch serve`, for
//!   the memory they cost (its RSS, the kernel map's `memlock`); `--only held` runs it alone.
//! - Every child is a [`proc::Proc`] guard and every namespace a [`netns::Netns`] guard, and
//!   Ctrl-C unwinds through them: nothing is left running or attached, also on error.
//!
//! Subcommands that do not exist yet (`report`, `serve`, `analyze`) get their rows marked
//! `not built yet` (found by `netwatch <sub> --help`), so the table's shape stays stable while
//! they are being written.

mod bulk;
mod held;
mod kernel;
mod netns;
mod proc;
mod replay;
mod table;
mod tax;
mod writer;

use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};

use self::{
    kernel::{BpfStats, Prog},
    netns::Netns,
    proc::{Proc, Stream},
};
use crate::{
    build, setup,
    sys::{self, fmt_duration, workspace_root},
};

/// What the user asked for on the command line.
#[derive(Debug, Clone)]
pub struct Options {
    pub quick: bool,
    pub runs: Option<u32>,
    pub seconds: Option<f64>,
    /// `--only ROW`: one row, printed, not written to BENCHMARKS.md.
    pub only: Option<String>,
}

/// The rows `--only` can run alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Only {
    /// 200,000 live sockets held with `netwatch serve` ([`held`]).
    Held,
    /// The syscall tax of every mode ([`tax`]).
    Tax,
}

impl Only {
    fn parse(row: &str) -> Result<Only> {
        match row {
            "held" => Ok(Only::Held),
            "tax" => Ok(Only::Tax),
            _ => bail!("--only {row}: no such row; the rows that run alone are: held, tax"),
        }
    }
}

/// Port the churn server listens on, inside the bench's own namespaces.
const PORT: u16 = 5000;
/// Where `netwatch serve` listens (host namespace, loopback only): a port the kernel picks, so a
/// `netwatch serve` someone else runs on the shared machine (port 9750) cannot collide.
const SERVE_LISTEN: &str = "127.0.0.1:0";
/// Churn client threads per process in the comparison runs: one per core on the 2-core
/// machines this project targets.
const PARALLEL: u32 = 2;
/// The bpftrace peer: counting every state change, the cheapest useful bpftrace program.
const BPFTRACE_PROGRAM: &str =
    "tracepoint:sock:inet_sock_set_state { @[args->newstate] = count(); }";
/// How long a tracer may take to attach (bpftrace compiles with LLVM first: seconds on a
/// busy machine), and to stop and print its summary.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// The bench's shape, from the options.
#[derive(Debug, Clone)]
pub struct Plan {
    pub quick: bool,
    pub runs: u32,
    /// Target length of one run without a tracer; each workload's connection count is
    /// calibrated to it, so a slower tracer shows as a longer run of the same work.
    pub seconds: f64,
    /// Connections of the uncounted warm-up run that measures each workload's rate.
    pub calibration: u64,
    /// Load steps of the zero-loss search: (churn processes, threads each).
    pub rate_steps: Vec<(u32, u32)>,
    /// Rounds of the syscall-tax runs (each about 1 s of `dd` per mode): more than the churn's
    /// (5, or 9 without `--quick`; `--runs` only raises it), as the target is 2% and `dd`'s own
    /// time on a CPU moves by 10% from run to run on this shared machine.
    pub tax_rounds: u32,
    /// `--only`: run this row alone.
    pub only: Option<Only>,
}

impl Plan {
    fn new(opts: &Options) -> Result<Plan> {
        let runs = opts.runs.unwrap_or(if opts.quick { 1 } else { 3 });
        let seconds = opts.seconds.unwrap_or(if opts.quick { 1.0 } else { 2.0 });
        if runs == 0 || runs > 50 {
            bail!("--runs must be between 1 and 50 (got {runs})");
        }
        if !(0.2..=120.0).contains(&seconds) {
            bail!("--seconds must be between 0.2 and 120 (got {seconds})");
        }
        let rate_steps = if opts.quick {
            vec![(1, 2), (1, 8), (4, 8)]
        } else {
            vec![(1, 1), (1, 2), (1, 4), (1, 8), (2, 8), (4, 8)]
        };
        Ok(Plan {
            quick: opts.quick,
            runs,
            seconds,
            calibration: if opts.quick { 2000 } else { 4000 },
            rate_steps,
            tax_rounds: runs.max(if opts.quick { 5 } else { 9 }),
            only: opts.only.as_deref().map(Only::parse).transpose()?,
        })
    }

    /// The command line that reproduces this plan.
    pub fn command_line(&self, opts: &Options) -> String {
        let mut line = "cargo xtask bench".to_owned();
        if self.quick {
            line.push_str(" --quick");
        }
        if let Some(runs) = opts.runs {
            line.push_str(&format!(" --runs {runs}"));
        }
        if let Some(seconds) = opts.seconds {
            line.push_str(&format!(" --seconds {seconds}"));
        }
        if let Some(row) = &opts.only {
            line.push_str(&format!(" --only {row}"));
        }
        line
    }
}

#[expect(
    clippy::enum_variant_names,
    reason = "which side closes first is as much the workload as where the traffic flows"
)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    LoopbackClientFirst,
    LoopbackServerFirst,
    VethClientFirst,
}

impl Workload {
    pub const ALL: [Workload; 3] = [
        Workload::LoopbackClientFirst,
        Workload::LoopbackServerFirst,
        Workload::VethClientFirst,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Workload::LoopbackClientFirst => "loopback, client closes first",
            Workload::LoopbackServerFirst => "loopback, server closes first",
            Workload::VethClientFirst => "veth, client closes first",
        }
    }

    pub fn short(self) -> &'static str {
        match self {
            Workload::LoopbackClientFirst => "loopback client-first",
            Workload::LoopbackServerFirst => "loopback server-first",
            Workload::VethClientFirst => "veth client-first",
        }
    }

    fn server_closes_first(self) -> bool {
        self == Workload::LoopbackServerFirst
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tracer {
    None,
    Trace,
    /// `trace --stacks`: asks for code paths (user stacks at connect() and accept(), owners at
    /// accept()); what they cost beside plain `trace`.
    TraceStacks,
    Report,
    /// `report --record-dir`: what always-on recording costs beside plain `report`.
    ReportRecord,
    /// `report` with the classic tracepoint programs (`NETWATCH_TRACEPOINTS=classic`): what
    /// the raw ones save.
    ReportClassic,
    Serve,
    Tcpstates,
    Tcplife,
    Bpftrace,
    // Only in the syscall-tax rows:
    Life,
    Top,
    /// Asks for code paths.
    Leaks,
}

impl Tracer {
    pub const ALL: [Tracer; 10] = [
        Tracer::None,
        Tracer::Trace,
        Tracer::TraceStacks,
        Tracer::Report,
        Tracer::ReportRecord,
        Tracer::ReportClassic,
        Tracer::Serve,
        Tracer::Tcpstates,
        Tracer::Tcplife,
        Tracer::Bpftrace,
    ];

    /// The syscall-tax rows: untraced, every live netwatch mode, then the two that show code
    /// paths.
    pub const SYSCALL_TAX: [Tracer; 8] = [
        Tracer::None,
        Tracer::Report,
        Tracer::Serve,
        Tracer::Trace,
        Tracer::Life,
        Tracer::Top,
        Tracer::TraceStacks,
        Tracer::Leaks,
    ];

    pub fn label(self) -> String {
        match self {
            Tracer::None => "none".into(),
            Tracer::Trace => "`netwatch trace --json > /dev/null`".into(),
            Tracer::Report => "`netwatch report > /dev/null`".into(),
            Tracer::ReportRecord => "`netwatch report --record-dir DIR > /dev/null`".into(),
            Tracer::ReportClassic => {
                "`NETWATCH_TRACEPOINTS=classic netwatch report > /dev/null` (classic tracepoints)"
                    .into()
            }
            Tracer::Serve => format!("`netwatch serve --listen {SERVE_LISTEN}`"),
            Tracer::Tcpstates => "`tcpstates > /dev/null` (libbpf-tools)".into(),
            Tracer::Tcplife => "`tcplife > /dev/null` (libbpf-tools)".into(),
            Tracer::Bpftrace => "bpftrace `inet_sock_set_state` count".into(),
            Tracer::TraceStacks => "`netwatch trace --json --stacks > /dev/null`".into(),
            Tracer::Life => "`netwatch life > /dev/null`".into(),
            Tracer::Top => {
                "`netwatch top > /dev/null` (no terminal: a summary per interval)".into()
            }
            Tracer::Leaks => "`netwatch leaks > /dev/null`".into(),
        }
    }

    pub fn short(self) -> &'static str {
        match self {
            Tracer::None => "no tracer",
            Tracer::Trace => "netwatch trace --json",
            Tracer::Report => "netwatch report",
            Tracer::ReportRecord => "report --record-dir",
            Tracer::ReportClassic => "report, classic tracepoints",
            Tracer::Serve => "netwatch serve",
            Tracer::Tcpstates => "tcpstates",
            Tracer::Tcplife => "tcplife",
            Tracer::Bpftrace => "bpftrace",
            Tracer::TraceStacks => "trace --stacks",
            Tracer::Life => "netwatch life",
            Tracer::Top => "netwatch top",
            Tracer::Leaks => "netwatch leaks",
        }
    }

    pub fn is_netwatch(self) -> bool {
        self.subcommand().is_some()
    }

    /// The mode shows the code path that opened a socket, which is what may cost a syscall
    /// tracepoint (the syscall tax is stated for it, not judged).
    pub fn shows_code_paths(self) -> bool {
        matches!(self, Tracer::TraceStacks | Tracer::Leaks)
    }

    /// The netwatch subcommand this row runs.
    fn subcommand(self) -> Option<&'static str> {
        match self {
            Tracer::Trace | Tracer::TraceStacks => Some("trace"),
            Tracer::Report | Tracer::ReportRecord | Tracer::ReportClassic => Some("report"),
            Tracer::Serve => Some("serve"),
            Tracer::Life => Some("life"),
            Tracer::Top => Some("top"),
            Tracer::Leaks => Some("leaks"),
            Tracer::None | Tracer::Tcpstates | Tracer::Tcplife | Tracer::Bpftrace => None,
        }
    }

    fn command(self, netwatch: &Path) -> Option<Command> {
        let mut cmd = match self {
            Tracer::None => return None,
            Tracer::Trace => {
                let mut cmd = sys::command(netwatch);
                cmd.args(["trace", "--json"]);
                cmd
            }
            Tracer::Report => {
                let mut cmd = sys::command(netwatch);
                cmd.arg("report");
                cmd
            }
            Tracer::ReportRecord => {
                let mut cmd = sys::command(netwatch);
                cmd.arg("report").arg("--record-dir").arg(RecordDir::path());
                cmd
            }
            Tracer::ReportClassic => {
                let mut cmd = sys::command(netwatch);
                cmd.arg("report").env("NETWATCH_TRACEPOINTS", "classic");
                cmd
            }
            Tracer::Serve => {
                let mut cmd = sys::command(netwatch);
                cmd.args(["serve", "--listen", SERVE_LISTEN]);
                cmd
            }
            Tracer::Tcpstates => sys::command("tcpstates"),
            Tracer::Tcplife => sys::command("tcplife"),
            Tracer::Bpftrace => {
                let mut cmd = sys::command("bpftrace");
                cmd.args(["-e", BPFTRACE_PROGRAM]);
                cmd
            }
            Tracer::TraceStacks => {
                let mut cmd = sys::command(netwatch);
                cmd.args(["trace", "--json", "--stacks"]);
                cmd
            }
            Tracer::Life | Tracer::Top | Tracer::Leaks => {
                let mut cmd = sys::command(netwatch);
                cmd.arg(self.subcommand().expect("a netwatch row"));
                cmd
            }
        };
        cmd.stdin(Stdio::null());
        Some(cmd)
    }

    /// The signal that makes it stop cleanly: netwatch prints its summary on SIGTERM; the
    /// libbpf-tools only handle SIGINT (SIGTERM would kill them outright).
    fn stop_signal(self) -> &'static str {
        if self.is_netwatch() { "TERM" } else { "INT" }
    }

    fn availability(self, netwatch: &Path) -> Availability {
        match self {
            Tracer::None => Availability::Ready,
            Tracer::Tcpstates => on_path("tcpstates"),
            Tracer::Tcplife => on_path("tcplife"),
            Tracer::Bpftrace => on_path("bpftrace"),
            _ => {
                let sub = self.subcommand().expect("a netwatch row");
                if subcommand_built(netwatch, sub) {
                    Availability::Ready
                } else {
                    Availability::NotBuilt
                }
            }
        }
    }
}

/// The directory the `report --record-dir` row records into, empty at the start of each run
/// (the total cap counts what a directory holds) and removed when the run ends, however it
/// ends: the bench leaves no recording behind.
struct RecordDir(PathBuf);

impl RecordDir {
    /// One per bench process: two benches on one machine do not remove each other's.
    fn path() -> PathBuf {
        std::env::temp_dir().join(format!("netwatch-bench-record-{}", std::process::id()))
    }

    /// Empties the directory a run of `tracer` records into, if it records.
    fn for_run(tracer: Tracer) -> Option<RecordDir> {
        (tracer == Tracer::ReportRecord).then(|| RecordDir::at(Self::path()))
    }

    fn at(dir: PathBuf) -> RecordDir {
        let _ = std::fs::remove_dir_all(&dir);
        RecordDir(dir)
    }

    /// Where the last recording of `w` is kept, for the writer's cost ([`writer`]), until
    /// that is measured.
    fn kept(w: Workload) -> PathBuf {
        let mut path = Self::path().into_os_string();
        path.push(format!("-{}", w.short().replace(' ', "-")));
        PathBuf::from(path)
    }

    /// Moves the recording to `to` (replacing what is there), out of this run's removal.
    fn keep(&self, to: &Path) {
        let _ = std::fs::remove_dir_all(to);
        if let Err(err) = std::fs::rename(&self.0, to) {
            eprintln!(
                "bench: could not keep the recording in {} for the writer's cost: {err}",
                self.0.display()
            );
        }
    }
}

impl Drop for RecordDir {
    fn drop(&mut self) {
        if let Err(err) = std::fs::remove_dir_all(&self.0)
            && err.kind() != std::io::ErrorKind::NotFound
        {
            eprintln!(
                "bench: could not remove the recording in {}: {err}; remove it by hand",
                self.0.display()
            );
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Availability {
    Ready,
    NotBuilt,
    Missing(String),
}

/// `netwatch <sub> --help` succeeds: the subcommand exists in the binary just built.
fn subcommand_built(netwatch: &Path, sub: &str) -> bool {
    sys::command(netwatch)
        .args([sub, "--help"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

fn on_path(program: &str) -> Availability {
    let path = sys::child_path();
    let found = std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/usr/bin".into(), "/sbin".into()])
        .any(|dir| dir.join(program).is_file());
    if found {
        Availability::Ready
    } else {
        Availability::Missing(format!("`{program}` not installed (cargo xtask setup)"))
    }
}

/// Results of `tcpdrive churn` (summed over processes; `elapsed_ms` is the longest).
#[derive(Debug, Clone, Copy, Default)]
pub struct Churn {
    pub ok: u64,
    pub failed: u64,
    pub elapsed_ms: u64,
}

impl Churn {
    pub fn per_sec(&self) -> f64 {
        self.ok as f64 * 1000.0 / self.elapsed_ms.max(1) as f64
    }

    /// `DONE <pid> <ok> <failed> <elapsed_ms>`
    fn parse(line: &str) -> Option<Churn> {
        let mut words = line.split_whitespace();
        (words.next()? == "DONE").then_some(())?;
        let _pid = words.next()?;
        Some(Churn {
            ok: words.next()?.parse().ok()?,
            failed: words.next()?.parse().ok()?,
            elapsed_ms: words.next()?.parse().ok()?,
        })
    }
}

/// netwatch's last stderr line: `netwatch: N events seen, L lost (produced=P delivered=D
/// lost=L)`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    pub produced: u64,
    pub delivered: u64,
    pub lost: u64,
}

impl Summary {
    fn parse(line: &str) -> Option<Summary> {
        let value = |key: &str| -> Option<u64> {
            line.split(|c: char| c.is_whitespace() || c == '(' || c == ')')
                .find_map(|word| word.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
        };
        Some(Summary {
            produced: value("produced")?,
            delivered: value("delivered")?,
            lost: value("lost")?,
        })
    }
}

/// What one tracer did during one run.
#[derive(Debug, Clone, Default)]
pub struct TracerRun {
    /// Counter increases of its programs over the load.
    pub progs: Vec<Prog>,
    /// utime + stime from ready to exit, in seconds.
    pub cpu_s: Option<f64>,
    pub peak_rss_kib: Option<u64>,
    /// netwatch only.
    pub summary: Option<Summary>,
}

impl TracerRun {
    pub fn run_time_ns(&self) -> u64 {
        self.progs.iter().map(|p| p.run_time_ns).sum()
    }

    pub fn run_cnt(&self) -> u64 {
        self.progs.iter().map(|p| p.run_cnt).sum()
    }
}

#[derive(Debug, Clone)]
pub struct Run {
    /// The round it ran in (1-based): runs of one round ran minutes apart at most.
    pub round: u32,
    pub churn: Churn,
    pub tracer: Option<TracerRun>,
    /// Names of other BPF programs that ran during the load (someone else tracing).
    pub foreign: Vec<String>,
}

/// Every run of one workload × tracer.
#[derive(Debug, Clone)]
pub struct Cell {
    pub workload: Workload,
    pub tracer: Tracer,
    pub availability: Availability,
    pub runs: Vec<Run>,
    pub errors: Vec<String>,
}

/// One step of the zero-loss search.
#[derive(Debug, Clone)]
pub struct RateStep {
    pub procs: u32,
    pub parallel: u32,
    pub churn: Churn,
    pub summary: Summary,
    pub cpu_s: Option<f64>,
}

impl RateStep {
    pub fn events_per_sec(&self) -> f64 {
        self.summary.delivered as f64 * 1000.0 / self.churn.elapsed_ms.max(1) as f64
    }
}

#[derive(Debug, Clone, Default)]
pub struct RateSearch {
    pub steps: Vec<RateStep>,
    /// Why the search stopped: loss, saturation, all steps done, or an error.
    pub ended: String,
    pub skipped: Option<String>,
}

/// Where the machine and the run are described in BENCHMARKS.md.
#[derive(Debug, Clone, Default)]
pub struct Machine {
    pub cpus: usize,
    pub cpu_model: String,
    pub memory: String,
    pub kernel: String,
    pub date: String,
    pub load_start: String,
    pub load_end: String,
}

/// Everything the report is made of.
pub struct Results {
    pub command_line: String,
    pub plan: Plan,
    pub machine: Machine,
    pub counts: Vec<(Workload, u64)>,
    pub cells: Vec<Cell>,
    pub rate: RateSearch,
    /// Replay speed and tracker memory, when `analyze` is built.
    pub offline: Option<replay::Offline>,
    pub tax: tax::SyscallTax,
    /// Bulk transfer untraced, with `report` and with `leaks` (the first-send programs).
    pub bulk: bulk::Bulk,
    /// 200,000 live sockets held with `netwatch serve`: its memory, and the map's.
    pub held: held::Held,
    /// The recording writer's CPU on each workload's last `report --record-dir` recording.
    pub writer: Vec<(Workload, Result<writer::WriterCost, String>)>,
    pub took: Duration,
}

/// Binaries and namespaces every run uses. The namespaces are deleted when this drops.
struct Env {
    netwatch: PathBuf,
    tcpdrive: PathBuf,
    hz: f64,
    stats: BpfStats,
    lo: Netns,
    client: Netns,
    server: Netns,
}

impl Env {
    /// Client namespace, server namespace, server address of a workload.
    fn sides(&self, w: Workload) -> (&Netns, &Netns, String) {
        match w {
            Workload::LoopbackClientFirst | Workload::LoopbackServerFirst => {
                (&self.lo, &self.lo, format!("127.0.0.1:{PORT}"))
            }
            Workload::VethClientFirst => (
                &self.client,
                &self.server,
                format!("{}:{PORT}", netns::VETH_SERVER),
            ),
        }
    }
}

/// `bench: [3/47] ...` lines on stderr.
struct Progress {
    step: usize,
    total: usize,
}

impl Progress {
    fn start(&mut self, what: &str) {
        self.step += 1;
        eprint!("bench: [{}/{}] {what} ... ", self.step, self.total);
    }

    fn done(&self, result: &str) {
        eprintln!("{result}");
    }
}

pub fn bench(opts: Options) -> Result<()> {
    if !sys::is_root() {
        bail!(
            "`cargo xtask bench` must run as root: it loads BPF programs (netwatch and the \
             peers), creates network namespaces and sets kernel.bpf_stats_enabled"
        );
    }
    let plan = Plan::new(&opts)?;
    let started = Instant::now();
    proc::catch_interrupts();
    let load_start = loadavg();

    setup::setup()?;
    let netwatch = build::build_netwatch(true)?;
    let tcpdrive = build::build_bin("netwatch-tests", "tcpdrive", true)?;
    proc::check_interrupted()?;
    netns::remove_stale();

    let tracers: Vec<(Tracer, Availability)> = Tracer::ALL
        .iter()
        .map(|&t| (t, t.availability(&netwatch)))
        .collect();
    let analyze = if subcommand_built(&netwatch, "analyze") {
        Availability::Ready
    } else {
        Availability::NotBuilt
    };
    let tax_tracers: Vec<(Tracer, Availability)> = Tracer::SYSCALL_TAX
        .iter()
        .map(|&t| {
            let known = tracers.iter().find(|(k, _)| *k == t);
            (
                t,
                known.map_or_else(|| t.availability(&netwatch), |k| k.1.clone()),
            )
        })
        .collect();
    let not_in_churn = tax_tracers.iter().filter(|(t, _)| !Tracer::ALL.contains(t));
    for (tracer, availability) in tracers.iter().chain(not_in_churn) {
        match availability {
            Availability::Ready => {}
            Availability::NotBuilt => eprintln!(
                "bench: {}: not built yet (`netwatch {} --help` fails); its rows say so",
                tracer.short(),
                tracer.subcommand().unwrap_or("?")
            ),
            Availability::Missing(why) => {
                eprintln!("bench: {}: {why}; its rows say so", tracer.short())
            }
        }
    }

    if plan.only == Some(Only::Tax) {
        return tax_alone(&netwatch, &plan, &opts, &tax_tracers, started);
    }
    let stats = BpfStats::enable()?;
    let lo = Netns::create("lo")?;
    let client = Netns::create("c")?;
    let server = Netns::create("s")?;
    netns::veth_pair(&client, &server)?;
    let env = Env {
        netwatch,
        tcpdrive,
        hz: proc::clock_ticks_per_sec() as f64,
        stats,
        lo,
        client,
        server,
    };
    let serve_ready = tracers.contains(&(Tracer::Serve, Availability::Ready));
    if plan.only == Some(Only::Held) {
        return held_alone(&env, &plan, &opts, serve_ready, started);
    }

    let runnable = tracers
        .iter()
        .filter(|(_, a)| *a == Availability::Ready)
        .count();
    let tax_runnable = tax_tracers
        .iter()
        .filter(|(_, a)| *a == Availability::Ready)
        .count();
    let bulk_ready = bulk::TRACERS.iter().all(|t| {
        *t == Tracer::None
            || tracers
                .iter()
                .chain(&tax_tracers)
                .any(|k| *k == (*t, Availability::Ready))
    });
    let bulk_rounds = plan.runs.max(3);
    let mut progress = Progress {
        step: 0,
        total: Workload::ALL.len() * (1 + plan.runs as usize * runnable)
            + plan.rate_steps.len()
            + plan.tax_rounds as usize * tax_runnable
            + if bulk_ready {
                bulk_rounds as usize * bulk::TRACERS.len()
            } else {
                0
            }
            + if serve_ready { held::STEPS } else { 0 },
    };

    let mut counts = Vec::new();
    let mut writer = Vec::new();
    let mut cells = Vec::new();
    for workload in Workload::ALL {
        let count = calibrate(&env, &plan, workload, &mut progress)?;
        counts.push((workload, count));
        cells.extend(measure_workload(
            &env,
            &plan,
            workload,
            count,
            &tracers,
            &mut progress,
        )?);
        let kept = RecordDir::kept(workload);
        if kept.exists() {
            eprintln!(
                "bench: the recording writer's CPU on the last {} recording ...",
                workload.short()
            );
            let scratch = std::env::temp_dir()
                .join(format!("netwatch-bench-rewrite-{}.nwr", std::process::id()));
            let cost =
                writer::measure(&env.netwatch, &kept, &scratch).map_err(|e| format!("{e:#}"));
            let _ = fs::remove_dir_all(&kept);
            writer.push((workload, cost));
        }
    }

    let trace_ready = tracers.contains(&(Tracer::Trace, Availability::Ready));
    let rate = if trace_ready {
        let start_rate = cells
            .iter()
            .find(|c| c.workload == Workload::LoopbackClientFirst && c.tracer == Tracer::None)
            .and_then(median_rate)
            .unwrap_or(10_000.0);
        search_max_rate(&env, &plan, start_rate, &mut progress)?
    } else {
        RateSearch {
            skipped: Some("`netwatch trace` is not built".into()),
            ..RateSearch::default()
        }
    };
    let offline = if analyze == Availability::Ready {
        eprintln!("bench: replay speed and tracker memory (synthetic recordings) ...");
        Some(replay::measure(
            &env.netwatch,
            &workspace_root().join("target/bench-replay"),
            opts.quick,
        )?)
    } else {
        None
    };
    let bulk = if bulk_ready {
        bulk::measure(&env, bulk_rounds, &mut progress)?
    } else {
        bulk::Bulk {
            skipped: Some("`netwatch report` or `netwatch leaks` is not available".into()),
            ..bulk::Bulk::default()
        }
    };
    let held = held_row(&env, serve_ready, &mut progress)?;
    // Namespaces deleted and bpf_stats_enabled restored before the report is written, and
    // before the syscall tax, which needs neither: `dd` runs as on a machine nobody benches.
    let netwatch = env.netwatch.clone();
    drop(env);
    let tax = tax::measure(&netwatch, plan.tax_rounds, &tax_tracers, &mut progress)?;

    let machine = Machine {
        load_start,
        load_end: loadavg(),
        ..machine()
    };
    let results = Results {
        command_line: plan.command_line(&opts),
        plan,
        machine,
        counts,
        cells,
        rate,
        offline,
        tax,
        bulk,
        held,
        writer,
        took: started.elapsed(),
    };
    let markdown = table::render(&results);
    print!("{markdown}");
    let path = workspace_root().join("BENCHMARKS.md");
    fs::write(&path, &markdown).with_context(|| format!("writing {}", path.display()))?;
    eprintln!(
        "bench: done in {}; wrote {}",
        fmt_duration(results.took),
        path.display()
    );
    Ok(())
}

/// The held-sockets row, or why it was not measured: a failure there (after minutes of other
/// rows) is reported in its section rather than losing the whole bench.
fn held_row(env: &Env, serve_ready: bool, progress: &mut Progress) -> Result<held::Held> {
    if !serve_ready {
        return Ok(held::Held {
            skipped: Some("`netwatch serve` is not built".into()),
            ..held::Held::default()
        });
    }
    match held::measure(env, progress) {
        Ok(held) => Ok(held),
        Err(err) => {
            proc::check_interrupted()?;
            progress.done(&format!("failed: {err:#}"));
            Ok(held::Held {
                skipped: Some(format!("{err:#}")),
                ..held::Held::default()
            })
        }
    }
}

/// `--only held`: that row alone, its section printed on stdout; BENCHMARKS.md keeps the last
/// full bench (a file with one row would lose every other).
fn held_alone(
    env: &Env,
    plan: &Plan,
    opts: &Options,
    serve_ready: bool,
    started: Instant,
) -> Result<()> {
    let load_start = loadavg();
    let mut progress = Progress {
        step: 0,
        total: held::STEPS,
    };
    if !serve_ready {
        bail!("--only held needs `netwatch serve`, which this build does not have");
    }
    let held = held::measure(env, &mut progress)?;
    print_alone(load_start, started, |m, took| {
        table::render_held_alone(&plan.command_line(opts), m, &held, took)
    });
    Ok(())
}

/// Prints what `render` makes of a row run alone, given the machine (its load when the row
/// began, `load_start`, and now) and how long it took; BENCHMARKS.md keeps the last full
/// bench (a file with one row would lose every other).
fn print_alone(
    load_start: String,
    started: Instant,
    render: impl FnOnce(&Machine, Duration) -> String,
) {
    let machine = Machine {
        load_start,
        load_end: loadavg(),
        ..machine()
    };
    print!("{}", render(&machine, started.elapsed()));
    eprintln!(
        "bench: done in {}; BENCHMARKS.md left as it was (--only)",
        fmt_duration(started.elapsed())
    );
}

/// `--only tax`: the syscall tax alone, its section printed on stdout.
fn tax_alone(
    netwatch: &Path,
    plan: &Plan,
    opts: &Options,
    tax_tracers: &[(Tracer, Availability)],
    started: Instant,
) -> Result<()> {
    let load_start = loadavg();
    let runnable = tax_tracers
        .iter()
        .filter(|(_, a)| *a == Availability::Ready)
        .count();
    let mut progress = Progress {
        step: 0,
        total: plan.tax_rounds as usize * runnable,
    };
    let tax = tax::measure(netwatch, plan.tax_rounds, tax_tracers, &mut progress)?;
    print_alone(load_start, started, |m, took| {
        table::render_tax_alone(&plan.command_line(opts), m, &tax, took)
    });
    Ok(())
}

/// One uncounted run without a tracer: warms up, and measures the rate from which the
/// workload's connection count is set so that a run lasts about `plan.seconds`.
fn calibrate(env: &Env, plan: &Plan, w: Workload, progress: &mut Progress) -> Result<u64> {
    progress.start(&format!("{}, calibration without a tracer", w.short()));
    let churn = churn(env, w, plan.calibration, 1, PARALLEL)?;
    if churn.ok == 0 {
        bail!(
            "the calibration run of {} made no connection ({} failed)",
            w.short(),
            churn.failed
        );
    }
    let count = ((churn.per_sec() * plan.seconds) as u64).clamp(1000, 2_000_000);
    progress.done(&format!(
        "{} conn/s; {count} connections per run",
        fmt_rate(churn.per_sec())
    ));
    Ok(count)
}

/// Every round runs every available tracer once, in a fixed order.
fn measure_workload(
    env: &Env,
    plan: &Plan,
    w: Workload,
    count: u64,
    tracers: &[(Tracer, Availability)],
    progress: &mut Progress,
) -> Result<Vec<Cell>> {
    let mut cells: Vec<Cell> = tracers
        .iter()
        .map(|(tracer, availability)| Cell {
            workload: w,
            tracer: *tracer,
            availability: availability.clone(),
            runs: Vec::new(),
            errors: Vec::new(),
        })
        .collect();
    for round in 1..=plan.runs {
        for cell in cells.iter_mut() {
            if cell.availability != Availability::Ready {
                continue;
            }
            progress.start(&format!(
                "{}, {}, run {round}/{}",
                w.short(),
                cell.tracer.short(),
                plan.runs
            ));
            match measured_run(env, w, cell.tracer, count) {
                Ok(mut run) => {
                    run.round = round;
                    progress.done(&describe_run(&run));
                    cell.runs.push(run);
                }
                Err(err) => {
                    proc::check_interrupted()?;
                    progress.done(&format!("failed: {err:#}"));
                    cell.errors.push(format!("{err:#}"));
                }
            }
        }
    }
    Ok(cells)
}

fn describe_run(run: &Run) -> String {
    let mut text = format!("{} conn/s", fmt_rate(run.churn.per_sec()));
    if run.churn.failed > 0 {
        text.push_str(&format!(", {} failed", run.churn.failed));
    }
    if let Some(t) = &run.tracer {
        if t.run_cnt() > 0 {
            text.push_str(&format!(
                ", {:.0} ns/run in kernel",
                t.run_time_ns() as f64 / t.run_cnt() as f64
            ));
        }
        if let Some(s) = &t.summary {
            text.push_str(&format!(", {} events, {} lost", s.delivered, s.lost));
        }
    }
    text
}

/// Starts a tracer and waits until it is really tracing.
fn start_tracer(netwatch: &Path, tracer: Tracer) -> Result<Proc> {
    let cmd = tracer.command(netwatch).expect("only called for a tracer");
    let mut p = Proc::spawn(tracer.short(), cmd, false)?;
    let pid = p.pid();
    if tracer.is_netwatch() {
        // Every live mode prints this once all its programs are attached.
        p.wait_line(
            Stream::Stderr,
            "its `tracing TCP events` line",
            READY_TIMEOUT,
            |l| l.contains("tracing TCP events"),
        )?;
    } else {
        p.wait_until("its BPF program attached", READY_TIMEOUT, |_| {
            Ok(!kernel::attached_programs(pid)?.is_empty())
        })?;
    }
    Ok(p)
}

/// One run of `w` with `tracer` (or none): start it, snapshot the counters, drive the load,
/// snapshot again, read its peak RSS, stop it, read its CPU time and summary.
fn measured_run(env: &Env, w: Workload, tracer: Tracer, count: u64) -> Result<Run> {
    env.stats.ensure()?;
    // Made before the tracer, so dropped after it has been stopped (or killed), on every way
    // out of this run.
    let recording = RecordDir::for_run(tracer);
    let mut traced = match tracer {
        Tracer::None => None,
        _ => Some(start_tracer(&env.netwatch, tracer)?),
    };
    let pid = traced.as_ref().map(Proc::pid);
    let cpu_ready = pid.and_then(proc::cpu_ticks);
    let mut ours: BTreeSet<u32> = pid.map(kernel::owned_programs).unwrap_or_default();

    let before = kernel::programs()?;
    let churn = churn(env, w, count, 1, PARALLEL)?;
    let after = kernel::programs()?;

    if let Some(pid) = pid {
        ours.extend(kernel::owned_programs(pid));
    }
    let foreign = kernel::foreign_active(&before, &after, &ours);
    let Some(p) = traced.as_mut() else {
        return Ok(Run {
            round: 0,
            churn,
            tracer: None,
            foreign,
        });
    };
    let peak_rss_kib = proc::peak_rss_kib(p.pid());
    let exit = p.stop(tracer.stop_signal(), STOP_TIMEOUT)?;
    let cpu_s = match (cpu_ready, exit.cpu_ticks) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a) as f64 / env.hz),
        _ => None,
    };
    let summary = if tracer.is_netwatch() {
        Some(summary(p, &exit)?)
    } else {
        None
    };
    if let Some(recording) = &recording {
        recording.keep(&RecordDir::kept(w));
    }
    Ok(Run {
        round: 0,
        churn,
        tracer: Some(TracerRun {
            progs: kernel::deltas(&before, &after, &ours),
            cpu_s,
            peak_rss_kib,
            summary,
        }),
        foreign,
    })
}

/// netwatch's summary line, which it prints on SIGTERM after its final drain.
fn summary(p: &Proc, exit: &proc::Exit) -> Result<Summary> {
    let line = p
        .last_line(Stream::Stderr, |l| l.contains("delivered="))
        .ok_or_else(|| {
            let said: Vec<&str> = p.lines().iter().map(|l| l.text.as_str()).collect();
            anyhow!(
                "{} printed no summary line when stopped ({}); it said:\n    {}",
                p.name(),
                exit.status,
                said.join("\n    ")
            )
        })?;
    Summary::parse(line).ok_or_else(|| anyhow!("unreadable summary line `{line}`"))
}

/// Runs `procs` churn clients of `count` connections and `parallel` threads each against a
/// fresh server, in `w`'s namespaces. The server is started (and READY) first, and killed
/// after, whatever happens.
fn churn(env: &Env, w: Workload, count: u64, procs: u32, parallel: u32) -> Result<Churn> {
    let (client_ns, server_ns, addr) = env.sides(w);
    let total = count * u64::from(procs);
    let mut server_cmd = server_ns.exec(&env.tcpdrive);
    if w.server_closes_first() {
        // It serves exactly `total` connections, then exits.
        server_cmd.args(["serve-close-first", &addr, "--count", &total.to_string()]);
    } else {
        server_cmd.args(["serve-forever", &addr]);
    }
    // Many parallel clients must not overflow the accept queue: a dropped SYN costs a 1 s
    // retransmission timeout and would measure the backlog, not the tracer.
    server_cmd.args(["--backlog", "4096"]);
    let mut server = Proc::spawn("tcpdrive server", server_cmd, true)?;
    server.wait_line(Stream::Stdout, "READY line", Duration::from_secs(20), |l| {
        l.starts_with("READY")
    })?;

    let mut clients = Vec::new();
    for _ in 0..procs {
        let mut cmd = client_ns.exec(&env.tcpdrive);
        cmd.args([
            "churn",
            &addr,
            "--count",
            &count.to_string(),
            "--parallel",
            &parallel.to_string(),
        ]);
        clients.push(Proc::spawn("tcpdrive churn", cmd, true)?);
    }
    // Bounded, but generous: a slow tracer may cut the rate by 3x, on a busy machine.
    let timeout = Duration::from_secs(120) + Duration::from_millis(total);
    let mut result = Churn::default();
    for client in &mut clients {
        client.finish(timeout)?;
        let done = client
            .last_line(Stream::Stdout, |l| l.starts_with("DONE "))
            .and_then(Churn::parse)
            .ok_or_else(|| {
                let said: Vec<&str> = client.lines().iter().map(|l| l.text.as_str()).collect();
                anyhow!(
                    "tcpdrive churn printed no DONE line; it said:\n    {}",
                    said.join("\n    ")
                )
            })?;
        result.ok += done.ok;
        result.failed += done.failed;
        result.elapsed_ms = result.elapsed_ms.max(done.elapsed_ms);
    }
    if w.server_closes_first() {
        // Normally it has just exited; after failed connections it waits for more: the drop
        // below kills it.
        let _ = server.finish(Duration::from_secs(2));
    }
    proc::check_interrupted()?;
    Ok(result)
}

/// Raises the load on loopback (client closes first, the most events per connection) with
/// `netwatch trace --json > /dev/null` attached at its default ring size, until events are
/// lost or the connection rate stops rising (the machine is saturated).
fn search_max_rate(
    env: &Env,
    plan: &Plan,
    start_rate: f64,
    progress: &mut Progress,
) -> Result<RateSearch> {
    let w = Workload::LoopbackClientFirst;
    let seconds = plan.seconds.max(1.5);
    let mut search = RateSearch::default();
    let mut rate = start_rate;
    let mut best = 0.0_f64;
    let mut flat = 0;
    for (i, &(procs, parallel)) in plan.rate_steps.iter().enumerate() {
        progress.start(&format!(
            "max zero-loss rate, step {}/{}: {procs} churn process(es) × {parallel} threads",
            i + 1,
            plan.rate_steps.len()
        ));
        let count = ((rate * seconds) as u64 / u64::from(procs)).max(1000);
        let step = match rate_step(env, w, procs, parallel, count) {
            Ok(step) => step,
            Err(err) => {
                proc::check_interrupted()?;
                progress.done(&format!("failed: {err:#}"));
                search.ended = format!("step {} failed: {err:#}", i + 1);
                return Ok(search);
            }
        };
        let conn_rate = step.churn.per_sec();
        progress.done(&format!(
            "{} conn/s, {} events/s, {} lost",
            fmt_rate(conn_rate),
            fmt_rate(step.events_per_sec()),
            step.summary.lost
        ));
        let lost = step.summary.lost;
        search.steps.push(step);
        if lost > 0 {
            search.ended = format!("events were lost at step {}", i + 1);
            return Ok(search);
        }
        // Saturated: two steps in a row that did not beat the best rate by 5%.
        if conn_rate < best * 1.05 {
            flat += 1;
            if flat == 2 {
                search.ended = format!(
                    "the machine saturated: the connection rate stopped rising (step {})",
                    i + 1
                );
                return Ok(search);
            }
        } else {
            flat = 0;
        }
        best = best.max(conn_rate);
        rate = conn_rate.max(1000.0);
    }
    let peak = search
        .steps
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.churn.per_sec().total_cmp(&b.1.churn.per_sec()))
        .map_or(0, |(i, _)| i + 1);
    search.ended = if peak < search.steps.len() {
        format!(
            "every step ran without loss; the connection rate peaked at step {peak}, so the \
             machine was saturated"
        )
    } else {
        "every step ran without loss (the heaviest load this bench drives)".into()
    };
    Ok(search)
}

fn rate_step(env: &Env, w: Workload, procs: u32, parallel: u32, count: u64) -> Result<RateStep> {
    env.stats.ensure()?;
    let mut tracer = start_tracer(&env.netwatch, Tracer::Trace)?;
    let cpu_ready = proc::cpu_ticks(tracer.pid());
    let churn = churn(env, w, count, procs, parallel)?;
    let exit = tracer.stop(Tracer::Trace.stop_signal(), STOP_TIMEOUT)?;
    let summary = summary(&tracer, &exit)?;
    let cpu_s = match (cpu_ready, exit.cpu_ticks) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a) as f64 / env.hz),
        _ => None,
    };
    Ok(RateStep {
        procs,
        parallel,
        churn,
        summary,
        cpu_s,
    })
}

/// Median connections/s of a cell's runs.
pub fn median_rate(cell: &Cell) -> Option<f64> {
    median(cell.runs.iter().map(|r| r.churn.per_sec()).collect())
}

pub fn median(mut values: Vec<f64>) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    Some(if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    })
}

/// `12,345`
pub fn fmt_rate(value: f64) -> String {
    let whole = value.round() as u64;
    fmt_int(whole)
}

pub fn fmt_int(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| {
            let v: Vec<&str> = s.split_whitespace().take(3).collect();
            (v.len() == 3).then(|| v.join(" "))
        })
        .unwrap_or_else(|| "?".into())
}

/// CPU, memory, kernel and date, for the report's header.
fn machine() -> Machine {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == "model name").then(|| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into());
    let memory = fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            let line = m.lines().find(|l| l.starts_with("MemTotal:"))?;
            let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(format!("{:.1} GiB", kib / 1024.0 / 1024.0))
        })
        .unwrap_or_else(|| "unknown".into());
    let output = |program: &str, args: &[&str]| {
        sys::command(program)
            .args(args)
            .output()
            .ok()
            .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "unknown".into())
    };
    Machine {
        cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_model,
        memory,
        kernel: output("uname", &["-r"]),
        date: output("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        ..Machine::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The recording goes when its run ends, whatever it holds; a fresh one starts empty.
    #[test]
    fn a_record_dir_is_emptied_before_and_removed_after_its_run() {
        let dir = std::env::temp_dir().join(format!("netwatch-bench-test-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("sub/run-1.nwr"), b"left from before").unwrap();
        let recording = RecordDir::at(dir.clone());
        assert!(!dir.exists(), "emptied before the run");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("run-1.nwr"), b"this run").unwrap();
        drop(recording);
        assert!(!dir.exists(), "removed after the run");
        assert!(RecordDir::for_run(Tracer::Report).is_none());
    }

    #[test]
    fn parses_tcpdrive_and_netwatch_lines() {
        let c = Churn::parse("DONE 123 19998 2 1500").unwrap();
        assert_eq!((c.ok, c.failed, c.elapsed_ms), (19998, 2, 1500));
        assert!((c.per_sec() - 13332.0).abs() < 1.0);
        assert!(Churn::parse("READY 123").is_none());
        let s = Summary::parse(
            "netwatch: 1234 events seen, 5 lost (produced=1239 delivered=1234 lost=5)",
        )
        .unwrap();
        assert_eq!(
            s,
            Summary {
                produced: 1239,
                delivered: 1234,
                lost: 5
            }
        );
    }

    #[test]
    fn medians_and_numbers() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0]), Some(2.5));
        assert_eq!(median(vec![]), None);
        assert_eq!(fmt_int(1234567), "1,234,567");
        assert_eq!(fmt_int(999), "999");
    }

    #[test]
    fn plans_are_bounded() {
        let quick = Plan::new(&Options {
            quick: true,
            runs: None,
            seconds: None,
            only: None,
        })
        .unwrap();
        assert_eq!(quick.runs, 1);
        assert!(quick.tax_rounds > quick.runs);
        let full = Plan::new(&Options {
            quick: false,
            runs: None,
            seconds: None,
            only: Some("held".into()),
        })
        .unwrap();
        assert_eq!(full.only, Some(Only::Held));
        assert!(full.tax_rounds > quick.tax_rounds);
        assert!(
            Plan::new(&Options {
                quick: false,
                runs: Some(0),
                seconds: None,
                only: None,
            })
            .is_err()
        );
        assert!(
            Plan::new(&Options {
                quick: false,
                runs: None,
                seconds: None,
                only: Some("churn".into()),
            })
            .is_err()
        );
    }
}
