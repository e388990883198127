//! `netwatch doctor`: what this kernel lets netwatch do, in plain words, before anyone needs it.
//!
//! Why it exists: netwatch adapts to the kernel it runs on. A missing tracepoint, a layout it
//! cannot read, or a kernel without BTF each switch off one feature with a warning at start-up,
//! and a verifier rejection or a missing ring buffer stops it with an error. On a fleet of mixed
//! kernels that is learnt one incident at a time. Doctor asks every question up front: the
//! kernel floor, BTF, tracefs, each tracepoint and its layout, the map types, and the verifier's
//! verdict on each program, loaded exactly as `Probe::attach` loads them (same layouts, same
//! globals, same offsets, through [`probe::load_object`]), but attached to nothing. Each answer
//! says what the user loses without it; `--json` keeps the whole verifier log.
use std::{
    fs,
    io::{self, Write as _},
    path::Path,
};

use aya::{
    maps::MapType,
    programs::{ProgramError, TracePoint},
};
use serde::Serialize;

use crate::{
    cli::DoctorArgs,
    kernel::btf::VMLINUX_BTF_PATH,
    kernel::offsets,
    kernel::privileges,
    kernel::probe::{self, KernelLayouts, PROGRAM_SPECS, ProbeConfig, ProgramSpec, Unusable},
    kernel::tracefs::TracefsError,
};

/// The oldest kernel netwatch runs on: the BPF ring buffer came in Linux 5.8.
const FLOOR: (u32, u32) = (5, 8);
const FLOOR_TEXT: &str = "5.8";

/// How one check came out.
#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum Status {
    /// netwatch has it.
    Ok,
    /// Absent, or could not be checked.
    Missing,
    /// netwatch runs without it, with less.
    Degraded,
    /// The verifier (or the kernel) refused to load it.
    Rejected,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Missing => "missing",
            Status::Degraded => "degraded",
            Status::Rejected => "rejected",
        }
    }
}

/// What a check is about.
#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum Kind {
    Kernel,
    Btf,
    Tracefs,
    Tracepoint,
    Map,
    Program,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Kernel => "kernel",
            Kind::Btf => "btf",
            Kind::Tracefs => "tracefs",
            Kind::Tracepoint => "tracepoint",
            Kind::Map => "map",
            Kind::Program => "program",
        }
    }
}

/// One line of the report.
#[derive(Serialize, Debug)]
struct Check {
    name: String,
    kind: Kind,
    status: Status,
    detail: String,
    /// The whole verifier log of a rejected program.
    #[serde(skip_serializing_if = "Option::is_none")]
    verifier_log: Option<String>,
    /// netwatch cannot run when this is missing.
    #[serde(skip)]
    required: bool,
}

impl Check {
    fn new(kind: Kind, name: impl Into<String>, status: Status, detail: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            kind,
            status,
            detail: detail.into(),
            verifier_log: None,
            required: false,
        }
    }

    fn required(mut self) -> Self {
        self.required = true;
        self
    }

    /// Whether this line stops netwatch from running.
    fn fails(&self) -> bool {
        self.status == Status::Rejected || (self.status == Status::Missing && self.required)
    }
}

/// The whole report, as `--json` prints it.
#[derive(Serialize, Debug)]
struct Report {
    kernel: String,
    floor: &'static str,
    checks: Vec<Check>,
    ok: bool,
}

/// Runs every check and prints the report; `Ok(false)` when netwatch cannot run here.
pub fn run(args: &DoctorArgs) -> anyhow::Result<bool> {
    let release = crate::kernel::release::running().unwrap_or_else(|e| format!("unknown ({e})"));
    let mut checks = vec![kernel_check(&release), btf_check()];

    let gaps = privileges::bpf_cap_gaps();
    // Programs' loads need the memory limit lifted on kernels before 5.11, as for `trace`.
    if gaps.maps.is_none() {
        privileges::raise_memlock_rlimit();
    }
    let was_mounted = tracefs_mounted();
    let root = probe::tracefs_root().and_then(|root| {
        // A tracefs without events/ is no tracefs to netwatch: say so once, here.
        if root.join("events").is_dir() {
            Ok(root)
        } else {
            Err(TracefsError::NoEvents { root }.into())
        }
    });
    let layouts = match root {
        Ok(root) => {
            let how = if std::env::var_os("NETWATCH_TRACEFS").is_some() {
                "NETWATCH_TRACEFS points"
            } else if was_mounted {
                "mounted"
            } else {
                "was not mounted; mounted it"
            };
            checks.push(
                Check::new(
                    Kind::Tracefs,
                    root.display().to_string(),
                    Status::Ok,
                    format!(
                        "{how} at {}: tracepoint layouts are readable",
                        root.display()
                    ),
                )
                .required(),
            );
            let layouts = KernelLayouts::read(&root);
            checks.extend(layouts.tracepoints.iter().map(tracepoint_check));
            Some(layouts)
        }
        Err(e) => {
            let (name, why) = match e.downcast_ref::<TracefsError>() {
                // What an unprivileged process sees of a tracefs mounted 0700: not "no
                // events/", but no right to look.
                Some(TracefsError::NoEvents { root })
                    if fs::metadata(root.join("events"))
                        .is_err_and(|e| e.kind() == io::ErrorKind::PermissionDenied) =>
                {
                    (
                        root.display().to_string(),
                        format!("mounted at {}, but readable only by root", root.display()),
                    )
                }
                _ => ("tracefs".to_owned(), format!("{e:#}")),
            };
            checks.push(
                Check::new(
                    Kind::Tracefs,
                    name,
                    Status::Missing,
                    format!("{why}: netwatch cannot read tracepoint layouts, so it cannot run"),
                )
                .required(),
            );
            checks.extend(PROGRAM_SPECS.iter().map(|spec| {
                Check::new(
                    Kind::Tracepoint,
                    tracepoint_name(spec),
                    Status::Missing,
                    "not checked: tracefs is unreadable",
                )
                .required()
            }));
            None
        }
    };

    checks.extend(map_checks(gaps.maps.as_deref()));
    checks.extend(program_checks(layouts.as_ref(), gaps.programs.as_deref()));
    // Every map and program loaded above is closed by now: nothing stays in the kernel.

    let ok = !checks.iter().any(Check::fails);
    let report = Report {
        kernel: release,
        floor: FLOOR_TEXT,
        checks,
        ok,
    };
    let mut out = io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &report)?;
        writeln!(out)?;
    } else {
        print_text(&mut out, &report, &gaps)?;
    }
    out.flush()?;
    Ok(ok)
}

fn print_text(
    out: &mut impl io::Write,
    report: &Report,
    gaps: &privileges::BpfCapGaps,
) -> io::Result<()> {
    writeln!(
        out,
        "netwatch doctor: what Linux {} lets netwatch do",
        report.kernel
    )?;
    writeln!(out)?;
    for c in &report.checks {
        writeln!(
            out,
            "{:<9} {:<10} {:<25} {}",
            c.status.as_str(),
            c.kind.as_str(),
            c.name,
            c.detail
        )?;
    }
    writeln!(out)?;
    let degraded = report
        .checks
        .iter()
        .any(|c| c.status != Status::Ok && !c.fails());
    let verdict = if !report.ok {
        match gaps.programs.as_deref().or(gaps.maps.as_deref()) {
            Some(lacking) => format!(
                "netwatch cannot run as this process: it lacks {lacking}. Run `sudo netwatch \
                 doctor` for the BPF checks."
            ),
            None => "netwatch cannot run on this kernel as it is: see the missing and rejected \
                     lines (--json has the whole verifier log)."
                .to_owned(),
        }
    } else if degraded {
        "netwatch runs here, without what the degraded lines name.".to_owned()
    } else {
        "Everything netwatch needs is here: it can trace everything on this kernel.".to_owned()
    };
    writeln!(out, "{verdict}")
}

/// Whether the release is at or above [`FLOOR`]; `None` when it cannot be read.
fn meets_floor(release: &str) -> Option<bool> {
    crate::kernel::release::version(release).map(|v| v >= FLOOR)
}

fn kernel_check(release: &str) -> Check {
    let (status, detail) = match meets_floor(release) {
        Some(true) => (
            Status::Ok,
            format!("at or above Linux {FLOOR_TEXT}, which the BPF ring buffer needs"),
        ),
        Some(false) => (
            Status::Missing,
            format!(
                "below Linux {FLOOR_TEXT}: no BPF ring buffer, so netwatch cannot run here \
                 (upgrade the kernel)"
            ),
        ),
        None => (
            Status::Degraded,
            format!(
                "cannot tell the version from this release; netwatch needs Linux {FLOOR_TEXT} \
                 (the ring buffer line below has the answer)"
            ),
        ),
    };
    Check::new(Kind::Kernel, release, status, detail).required()
}

fn btf_check() -> Check {
    let path = Path::new(VMLINUX_BTF_PATH);
    let lost = "netwatch loses sockets' network namespaces, bytes and RTT at close, and the \
                owners of accepted sockets until they close";
    if !path.exists() {
        return Check::new(
            Kind::Btf,
            VMLINUX_BTF_PATH,
            Status::Degraded,
            format!("absent (kernel built without CONFIG_DEBUG_INFO_BTF): {lost}"),
        );
    }
    let mut warnings = Vec::new();
    offsets::kernel_offsets(&mut warnings);
    if warnings.is_empty() {
        Check::new(
            Kind::Btf,
            VMLINUX_BTF_PATH,
            Status::Ok,
            "present, with every struct offset netwatch reads: network namespaces, bytes and \
             RTT at close, accept() owners",
        )
    } else {
        Check::new(
            Kind::Btf,
            VMLINUX_BTF_PATH,
            Status::Degraded,
            format!("present, but {}", warnings.join("; ")),
        )
    }
}

/// Whether /proc/self/mounts lists a tracefs.
fn tracefs_mounted() -> bool {
    fs::read_to_string("/proc/self/mounts").is_ok_and(|m| {
        m.lines()
            .any(|l| l.split_ascii_whitespace().nth(2) == Some("tracefs"))
    })
}

fn tracepoint_name(spec: &ProgramSpec) -> String {
    format!("{}:{}", spec.system, spec.event)
}

fn tracepoint_check(tp: &probe::Tracepoint) -> Check {
    let spec = tp.spec;
    let name = tracepoint_name(spec);
    let check = match &tp.fields {
        Ok(_) => Check::new(
            Kind::Tracepoint,
            name,
            Status::Ok,
            format!("present, layout readable: {} are traced", spec.feature),
        ),
        Err(why) if spec.required => Check::new(
            Kind::Tracepoint,
            name,
            Status::Missing,
            format!("{why}: netwatch cannot run without {}", spec.feature),
        ),
        Err(why) => {
            let why = match why {
                Unusable::Missing => why.to_string(),
                _ => format!("present, but {why}"),
            };
            Check::new(
                Kind::Tracepoint,
                name,
                Status::Degraded,
                format!("{why}: {} are not traced", spec.feature),
            )
        }
    };
    if spec.required {
        check.required()
    } else {
        check
    }
}

/// The map types netwatch's object declares, and what each carries.
const MAP_TYPES: &[(MapType, &str, &str)] = &[
    (
        MapType::RingBuf,
        "ringbuf",
        "carries every event to netwatch",
    ),
    (
        MapType::Hash,
        "hash",
        "the kernel-side socket table (owners between events)",
    ),
    (
        MapType::PerCpuArray,
        "percpu_array",
        "kernel-side counters and per-CPU scratch space for events",
    ),
    (
        MapType::StackTrace,
        "stack_trace",
        "user stacks at connect() and accept() (trace --stacks, leaks)",
    ),
];

/// Creates (and closes) a tiny map of each type netwatch needs. Every one is required: the
/// object declares them all, and its load creates them all.
fn map_checks(lacking: Option<&str>) -> Vec<Check> {
    MAP_TYPES
        .iter()
        .map(|&(ty, name, carries)| {
            let (status, detail) = match lacking {
                Some(caps) => (
                    Status::Missing,
                    format!("not checked: this process lacks {caps}"),
                ),
                None => match aya::sys::is_map_supported(ty) {
                    Ok(true) => (Status::Ok, format!("supported: {carries}")),
                    Ok(false) if ty == MapType::RingBuf => (
                        Status::Missing,
                        format!(
                            "not supported (Linux {FLOOR_TEXT} or later): netwatch cannot run \
                             without it; it {carries}"
                        ),
                    ),
                    Ok(false) => (
                        Status::Missing,
                        format!("not supported: netwatch's programs cannot load without {name}"),
                    ),
                    Err(e) => (
                        Status::Missing,
                        format!("the kernel refused a test map ({e}): netwatch cannot run"),
                    ),
                },
            };
            Check::new(Kind::Map, name, status, detail).required()
        })
        .collect()
}

/// The programs, in table order, each once (both accept tracepoints share one).
fn programs() -> Vec<&'static str> {
    let mut names: Vec<&'static str> = Vec::new();
    for spec in PROGRAM_SPECS {
        if !names.contains(&spec.program) {
            names.push(spec.program);
        }
    }
    names
}

/// The tracepoints a program attaches to.
fn specs_of(program: &str) -> impl Iterator<Item = &'static ProgramSpec> + '_ {
    PROGRAM_SPECS.iter().filter(move |s| s.program == program)
}

/// What is not traced without a program, from its tracepoints' features.
fn features(program: &str) -> String {
    let features: Vec<&str> = specs_of(program).map(|s| s.feature).collect();
    features.join(" and ")
}

/// "its tracepoint is unusable (tcp:tcp_destroy_sock)", or the plural.
fn unusable_tracepoints(program: &str) -> String {
    let names: Vec<String> = specs_of(program).map(tracepoint_name).collect();
    match names.as_slice() {
        [one] => format!("its tracepoint is unusable ({one})"),
        many => format!("its tracepoints are unusable ({})", many.join(", ")),
    }
}

fn required(program: &str) -> bool {
    PROGRAM_SPECS
        .iter()
        .any(|s| s.program == program && s.required)
}

/// Loads the object as `Probe::attach` does, then each program on its own, and reports the
/// verifier's answer. Nothing is attached; everything is closed on return.
fn program_checks(layouts: Option<&KernelLayouts>, lacking: Option<&str>) -> Vec<Check> {
    let names = programs();
    let all = |status: Status, detail: &str| -> Vec<Check> {
        names
            .iter()
            .map(|&name| {
                let c = Check::new(Kind::Program, name, status, detail);
                if required(name) { c.required() } else { c }
            })
            .collect()
    };
    if let Some(caps) = lacking {
        return all(
            Status::Missing,
            &format!("not checked: this process lacks {caps}"),
        );
    }
    let Some(layouts) = layouts else {
        return all(
            Status::Missing,
            "not checked: without tracefs there are no layouts to load it with",
        );
    };
    let config = ProbeConfig {
        capture_stacks: ProbeConfig::stacks_from_env(),
        ..ProbeConfig::default()
    };
    let mut ebpf = match probe::load_object(&config, layouts) {
        Ok(ebpf) => ebpf,
        Err(e) => {
            return all(
                Status::Rejected,
                &format!("not loaded: the kernel refused netwatch's object ({e:#})"),
            );
        }
    };
    let usable: Vec<&ProgramSpec> = layouts.usable().collect();
    let checks = names
        .iter()
        .map(|&name| {
            let required = required(name);
            let features = features(name);
            let check = if !usable.iter().any(|s| s.program == name) {
                // Probe::attach does not load a program none of whose tracepoints it can use.
                let why = unusable_tracepoints(name);
                if required {
                    Check::new(
                        Kind::Program,
                        name,
                        Status::Missing,
                        format!("not loaded: {why}, and netwatch cannot run without it"),
                    )
                } else {
                    Check::new(
                        Kind::Program,
                        name,
                        Status::Degraded,
                        format!("not loaded, as on a real run: {why}"),
                    )
                }
            } else {
                load_program(&mut ebpf, name, required, &features)
            };
            if required { check.required() } else { check }
        })
        .collect();
    drop(ebpf);
    checks
}

/// Loads one program of the loaded object and reports the verifier's answer.
fn load_program(ebpf: &mut aya::Ebpf, name: &'static str, required: bool, features: &str) -> Check {
    let program: Result<&mut TracePoint, String> = ebpf
        .program_mut(name)
        .ok_or_else(|| "missing from netwatch's object".to_owned())
        .and_then(|p| {
            p.try_into()
                .map_err(|e| format!("not a tracepoint program ({e})"))
        });
    let program = match program {
        Ok(p) => p,
        Err(e) => return Check::new(Kind::Program, name, Status::Rejected, e),
    };
    let lost = if required {
        "netwatch cannot run".to_owned()
    } else {
        format!("{features} would not be traced")
    };
    match program.load() {
        Ok(()) => {
            let insns = program
                .info()
                .ok()
                .and_then(|i| i.verified_instruction_count());
            let detail = match insns {
                Some(n) => format!("the verifier accepts it ({n} instructions processed)"),
                None => "the verifier accepts it".to_owned(),
            };
            Check::new(Kind::Program, name, Status::Ok, detail)
        }
        Err(ProgramError::LoadError {
            io_error,
            verifier_log,
        }) => {
            let log = verifier_log.to_string();
            let detail = match summarize_verifier_log(&log) {
                Some(summary) => format!("the verifier rejects it: {summary}: {lost}"),
                None => format!("the kernel refused to load it ({io_error}): {lost}"),
            };
            let mut check = Check::new(Kind::Program, name, Status::Rejected, detail);
            check.verifier_log = Some(log);
            check
        }
        Err(e) => Check::new(
            Kind::Program,
            name,
            Status::Rejected,
            format!("cannot load it ({e}): {lost}"),
        ),
    }
}

/// A line of the verifier's closing statistics.
fn is_stats_line(line: &str) -> bool {
    (line.starts_with("processed ") && line.contains(" insns"))
        || line.starts_with("verification time")
        || line.starts_with("stack depth")
        || line.starts_with("-- END")
}

/// A line of the verifier's walk through the program (instructions, register states, source
/// lines, branch and precision bookkeeping), as opposed to the sentence saying what is wrong.
fn is_trace_line(line: &str) -> bool {
    let t = line.trim_end();
    if t.is_empty() || t.starts_with([' ', '\t', ';']) {
        return true;
    }
    // "12: (85) call bpf_probe_read_kernel#113", "0: R1=ctx() R10=fp0"
    let digits = t.len() - t.trim_start_matches(|c: char| c.is_ascii_digit()).len();
    if digits > 0 && t[digits..].starts_with(':') {
        return true;
    }
    // "R1_w=scalar()", "R0=0": a register state, not "R1 invalid mem access 'scalar'"
    if let Some(rest) = t.strip_prefix('R') {
        let rest = rest.trim_start_matches(|c: char| c.is_ascii_digit());
        if rest.len() < t.len() - 1 && rest.starts_with(['=', '_']) {
            return true;
        }
    }
    (t.starts_with("from ") && t.contains(" to "))
        || [
            "func#",
            "Func#",
            "Live regs",
            "mark_precise",
            "last_idx",
            "regs=",
            "parent ",
            "caller:",
            "callee:",
            "frame",
            "Validating ",
            "returning from callee",
            "to caller at",
        ]
        .iter()
        .any(|p| t.starts_with(p))
}

/// One line out of a verifier log: the first line of the explanation the verifier ends on, and
/// its statistics ("processed N insns (limit M)", and the stack depth when the complaint is
/// about the stack). `None` for an empty log.
fn summarize_verifier_log(log: &str) -> Option<String> {
    let lines: Vec<&str> = log.lines().map(str::trim_end).collect();
    let mut end = lines.len();
    while end > 0 && (lines[end - 1].is_empty() || is_stats_line(lines[end - 1])) {
        end -= 1;
    }
    // The explanation: the block of non-trace lines just before the statistics.
    let mut start = end;
    while start > 0 && !is_trace_line(lines[start - 1]) && !is_stats_line(lines[start - 1]) {
        start -= 1;
    }
    let explanation = (start < end).then(|| lines[start]);
    let processed = lines
        .iter()
        .find(|l| l.starts_with("processed ") && l.contains(" insns"))
        .map(|l| l.split(" max_states_per_insn").next().unwrap_or(l));
    let stack = lines.iter().find(|l| l.starts_with("stack depth"));
    let mut extras: Vec<&str> = Vec::new();
    if let Some(&stack) = stack
        && explanation.is_some_and(|e| e.contains("stack"))
    {
        extras.push(stack);
    }
    extras.extend(processed);
    match (explanation, extras.is_empty()) {
        (Some(e), true) => Some(e.to_owned()),
        (Some(e), false) => Some(format!("{e} ({})", extras.join("; "))),
        (None, false) => Some(extras.join("; ")),
        (None, true) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_strings_against_the_floor() {
        assert_eq!(
            crate::kernel::release::version("6.1.0-47-cloud-amd64"),
            Some((6, 1))
        );
        assert_eq!(meets_floor("6.1.0-47-cloud-amd64"), Some(true));
        assert_eq!(meets_floor("5.4.0"), Some(false));
        assert_eq!(meets_floor("5.4.0-216-generic"), Some(false));
        assert_eq!(meets_floor("5.8.0"), Some(true));
        assert_eq!(meets_floor("5.8"), Some(true));
        assert_eq!(meets_floor("5.7.19"), Some(false));
        // 5.10 is above 5.8: numbers, not strings.
        assert_eq!(meets_floor("5.10.0-rc1"), Some(true));
        assert_eq!(meets_floor("4.19.0+"), Some(false));
        assert_eq!(meets_floor("10.0.0"), Some(true));
        assert_eq!(meets_floor("6.18.0-0.rc3.el10"), Some(true));
        assert_eq!(meets_floor("6"), None);
        assert_eq!(meets_floor("linux-6.1"), None);
        assert_eq!(meets_floor(""), None);
    }

    #[test]
    fn a_rejection_becomes_its_explanation_and_its_counts() {
        // As Linux 6.18 wrote it (log level DEBUG | STATS, aya's default).
        let log = "0: R1=ctx() R10=fp0\n\
            0: (bf) r6 = r1                       ; R1=ctx() R6=ctx()\n\
            1: (b7) r6 = 5                        ; R6=5\n\
            2: (79) r0 = *(u64 *)(r6 +0)\n\
            R6 invalid mem access 'scalar'\n\
            verification time 47 usec\n\
            stack depth 0\n\
            processed 3 insns (limit 1000000) max_states_per_insn 0 total_states 0 \
            peak_states 0 mark_read 0\n";
        assert_eq!(
            summarize_verifier_log(log).unwrap(),
            "R6 invalid mem access 'scalar' (processed 3 insns (limit 1000000))"
        );
    }

    #[test]
    fn the_first_line_of_a_two_line_explanation_is_kept() {
        let log = "13: (79) r1 = *(u64 *)(r0 +64)\n\
            R0=map_value(map=STATS,ks=4,vs=64)\n\
            invalid access to map value, value_size=64 off=64 size=8\n\
            R0 min value is outside of the allowed memory range\n\
            verification time 35 usec\n\
            stack depth 0\n\
            processed 14 insns (limit 1000000) max_states_per_insn 0 total_states 1 \
            peak_states 1 mark_read 1\n";
        assert_eq!(
            summarize_verifier_log(log).unwrap(),
            "invalid access to map value, value_size=64 off=64 size=8 \
             (processed 14 insns (limit 1000000))"
        );
    }

    #[test]
    fn a_stack_complaint_keeps_the_stack_depth() {
        let log = "from 40 to 42: R0=scalar()\n\
            42: (85) call pc+10\n\
            combined stack size of 3 calls is 576. Too large\n\
            verification time 1201 usec\n\
            stack depth 32+512+32\n\
            processed 340 insns (limit 1000000) max_states_per_insn 1 total_states 20 \
            peak_states 20 mark_read 5\n";
        assert_eq!(
            summarize_verifier_log(log).unwrap(),
            "combined stack size of 3 calls is 576. Too large \
             (stack depth 32+512+32; processed 340 insns (limit 1000000))"
        );
    }

    #[test]
    fn logs_without_an_explanation() {
        assert_eq!(summarize_verifier_log(""), None);
        assert_eq!(summarize_verifier_log("\n\n"), None);
        assert_eq!(
            summarize_verifier_log(
                "0: (b7) r0 = 0\nprocessed 1000001 insns (limit 1000000) max_states_per_insn 4"
            )
            .unwrap(),
            "processed 1000001 insns (limit 1000000)"
        );
        // A log that is nothing but the complaint.
        assert_eq!(
            summarize_verifier_log("unknown opcode 8d\n").unwrap(),
            "unknown opcode 8d"
        );
    }

    #[test]
    fn register_states_are_not_complaints() {
        assert!(is_trace_line("R1_w=scalar(id=1)"));
        assert!(is_trace_line("R0=0 R10=fp0"));
        assert!(is_trace_line("12: (85) call bpf_probe_read_kernel#113"));
        assert!(is_trace_line("; if x == 0 { @ main.rs:12"));
        assert!(!is_trace_line("R1 invalid mem access 'scalar'"));
        assert!(!is_trace_line("R2 !read_ok"));
        assert!(!is_trace_line("back-edge from insn 10 to 5"));
    }

    #[test]
    fn only_rejections_and_missing_requirements_fail() {
        let c = |status, required| {
            let c = Check::new(Kind::Tracepoint, "t", status, "d");
            if required { c.required() } else { c }
        };
        assert!(!c(Status::Ok, true).fails());
        assert!(!c(Status::Degraded, true).fails());
        assert!(!c(Status::Missing, false).fails());
        assert!(c(Status::Missing, true).fails());
        assert!(c(Status::Rejected, false).fails());
    }

    #[test]
    fn json_has_the_documented_shape() {
        let mut rejected = Check::new(Kind::Program, "nw_x", Status::Rejected, "no");
        rejected.verifier_log = Some("R1 !read_ok\n".to_owned());
        let report = Report {
            kernel: "6.1.0".to_owned(),
            floor: FLOOR_TEXT,
            checks: vec![
                Check::new(Kind::Kernel, "6.1.0", Status::Ok, "fine").required(),
                rejected,
            ],
            ok: false,
        };
        let v: serde_json::Value = serde_json::to_value(&report).unwrap();
        assert_eq!(v["floor"], "5.8");
        assert_eq!(v["ok"], false);
        assert_eq!(v["checks"][0]["kind"], "kernel");
        assert_eq!(v["checks"][0]["status"], "ok");
        assert!(v["checks"][0].get("verifier_log").is_none());
        assert!(v["checks"][0].get("required").is_none());
        assert_eq!(v["checks"][1]["status"], "rejected");
        assert_eq!(v["checks"][1]["verifier_log"], "R1 !read_ok\n");
    }

    #[test]
    fn every_program_is_checked_once() {
        let names = programs();
        assert_eq!(names.first(), Some(&"nw_set_state"));
        assert_eq!(names.iter().filter(|n| **n == "nw_accept").count(), 1);
        assert!(required("nw_set_state") && !required("nw_accept"));
    }
}
