//! `netwatch doctor`: what this kernel lets netwatch do, in plain words, before anyone needs it.
//!
//! Why it exists: netwatch adapts to the kernel it runs on. A missing tracepoint, a layout it
//! cannot read, or a kernel without BTF each switch off one feature with a warning at start-up,
//! and a verifier rejection or a missing ring buffer stops it with an error. On a fleet of mixed
//! kernels that is learnt one incident at a time. Doctor asks every question up front: the
//! kernel floor, BTF, tracefs, each tracepoint and its layout, the map types, and the verifier's
//! verdict on each program, loaded exactly as `Probe::attach` loads them (same layouts, same
//! globals, same offsets, through [`probe::load_object`]), but attached to nothing. Each answer
//! says what the user loses without it; `--json` keeps the whole verifier log. Each tracepoint
//! line says which program a run attaches there (`path`: `raw` where the kernel takes the raw
//! tracepoint program, else `classic`), in the mode `NETWATCH_TRACEPOINTS` asks for.
use std::{
    fs,
    io::{self, Write as _},
    path::Path,
};

use aya::{
    maps::MapType,
    programs::{Program as AyaProgram, ProgramError},
};
use serde::Serialize;

use crate::{
    cli::DoctorArgs,
    kernel::btf::VMLINUX_BTF_PATH,
    kernel::offsets,
    kernel::privileges,
    kernel::probe::{
        self, KernelLayouts, PROGRAM_SPECS, ProbeConfig, ProgramSpec, TRACEPOINTS_ENV,
        TracepointMode, TracepointPath, Unusable,
    },
    kernel::tracefs::TracefsError,
    kernel::verifier::summarize_verifier_log,
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
    Cgroup,
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
            Kind::Cgroup => "cgroup",
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
    /// How a tracepoint's program is attached (`raw` or `classic`), on tracepoint lines.
    #[serde(skip_serializing_if = "Option::is_none")]
    path: Option<&'static str>,
    /// The program a tracepoint gets, on tracepoint lines.
    #[serde(skip_serializing_if = "Option::is_none")]
    program: Option<&'static str>,
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
            path: None,
            program: None,
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
    /// `NETWATCH_TRACEPOINTS`: `auto`, `raw` or `classic`.
    tracepoints: &'static str,
    checks: Vec<Check>,
    ok: bool,
}

/// Runs every check and prints the report; `Ok(false)` when netwatch cannot run here.
pub fn run(args: &DoctorArgs) -> anyhow::Result<bool> {
    let mode = TracepointMode::from_env()?;
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
            Some(KernelLayouts::read(&root))
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

    let maps = map_checks(gaps.maps.as_deref());
    let (programs, verdicts) = program_checks(mode, layouts.as_ref(), gaps.programs.as_deref());
    // Every map and program loaded above is closed by now: nothing stays in the kernel.
    // The tracepoint lines come first, but say which program each tracepoint gets, which
    // the verifier's answers above decide.
    if let Some(layouts) = &layouts {
        checks.extend(
            layouts
                .tracepoints
                .iter()
                .map(|tp| tracepoint_check(tp, mode, &verdicts)),
        );
    }
    checks.extend(maps);
    checks.extend(programs);
    checks.push(cgroup_check());

    let ok = !checks.iter().any(Check::fails);
    let report = Report {
        kernel: release,
        floor: FLOOR_TEXT,
        tracepoints: mode.as_str(),
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
        "netwatch doctor: what Linux {} lets netwatch do ({TRACEPOINTS_ENV}={})",
        report.kernel, report.tracepoints
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

/// Whether owners get cgroup paths, also owners in cgroups removed before their first event
/// is read: a live run watches every cgroup of the v2 hierarchy with inotify (see
/// [`crate::host::cgroup::watch`]), one watch each.
fn cgroup_check() -> Check {
    let mount = crate::host::cgroup::cgroup2_mount();
    let mut cgroups = 0;
    if let Some(mount) = &mount {
        crate::host::cgroup_watch::walk(mount, "", None, &mut |_, _| cgroups += 1);
    }
    let max_watches = fs::read_to_string("/proc/sys/fs/inotify/max_user_watches")
        .ok()
        .and_then(|s| s.trim().parse().ok());
    let inotify = crate::host::cgroup_watch::Watcher::new(std::path::PathBuf::new())
        .map(drop)
        .map_err(|e| e.to_string());
    cgroup_watch_check(mount.as_deref(), cgroups, max_watches, inotify)
}

/// [`cgroup_check`]'s line, from what it found: the hierarchy's mount, how many cgroups it
/// holds, `fs.inotify.max_user_watches`, and whether an inotify instance could be made.
fn cgroup_watch_check(
    mount: Option<&std::path::Path>,
    cgroups: u64,
    max_watches: Option<u64>,
    inotify: Result<(), String>,
) -> Check {
    let Some(mount) = mount else {
        return Check::new(
            Kind::Cgroup,
            "cgroup2",
            Status::Degraded,
            "no cgroup v2 hierarchy is mounted: owners have no cgroup path, container or pod",
        );
    };
    let name = mount.display().to_string();
    match (inotify, max_watches) {
        (Err(e), _) => Check::new(
            Kind::Cgroup,
            name,
            Status::Degraded,
            format!(
                "no inotify instance ({e}; see fs.inotify.max_user_instances): a cgroup removed \
                 before its first event is read stays unnamed"
            ),
        ),
        (Ok(()), Some(max)) if cgroups >= max => Check::new(
            Kind::Cgroup,
            name,
            Status::Degraded,
            format!(
                "{cgroups} cgroups, but fs.inotify.max_user_watches = {max}: a cgroup made under \
                 an unwatched one and removed before its first event is read stays unnamed; \
                 raise it (sysctl -w fs.inotify.max_user_watches=...)"
            ),
        ),
        (Ok(()), max) => Check::new(
            Kind::Cgroup,
            name,
            Status::Ok,
            format!(
                "{cgroups} cgroups, one inotify watch each (fs.inotify.max_user_watches = {}, \
                 shared by the user's processes): each is named from when it is made",
                max.map_or_else(|| "?".to_owned(), |m| m.to_string())
            ),
        ),
    }
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

/// Whether each loaded program passed the verifier (`Some(true)`), was rejected
/// (`Some(false)`), or was not loaded (absent: not checked, or not loadable here).
type Verdicts = Vec<(&'static str, bool)>;

fn verdict(verdicts: &Verdicts, program: &str) -> Option<bool> {
    verdicts
        .iter()
        .find(|(name, _)| *name == program)
        .map(|(_, ok)| *ok)
}

/// A tracepoint: whether it exists, and which of its programs a run would attach (the raw one
/// where the kernel takes it, unless `mode` says otherwise), and what is lost without it.
fn tracepoint_check(tp: &probe::Tracepoint, mode: TracepointMode, verdicts: &Verdicts) -> Check {
    let spec = tp.spec;
    let name = tracepoint_name(spec);
    let feature = spec.feature;
    let check = |status, detail: String| {
        let c = Check::new(Kind::Tracepoint, name.clone(), status, detail);
        if spec.required { c.required() } else { c }
    };
    if !tp.exists() {
        let why = tp
            .fields
            .as_ref()
            .err()
            .map_or(String::new(), ToString::to_string);
        return if spec.required {
            check(
                Status::Missing,
                format!("{why}: netwatch cannot run without {feature}"),
            )
        } else {
            check(Status::Degraded, format!("{why}: {feature} are not traced"))
        };
    }
    let why_not_raw = match tp.raw_choice(mode) {
        Ok(Some(program)) => match verdict(verdicts, program) {
            Some(false) => Some(format!("the verifier rejects {program} (below)")),
            taken => {
                let unless = if taken.is_none() {
                    " (if the verifier accepts it: not checked)"
                } else {
                    ""
                };
                let mut c = check(
                    Status::Ok,
                    format!(
                        "present: {feature} are traced by its raw tracepoint program {program}{unless}"
                    ),
                );
                c.path = Some(TracepointPath::Raw.as_str());
                c.program = Some(program);
                return c;
            }
        },
        Ok(None) => None,
        Err(why) => Some(why),
    };
    if let Some(why) = &why_not_raw
        && mode == TracepointMode::Raw
    {
        return check(
            Status::Missing,
            format!(
                "its raw tracepoint program is not used here ({why}), and {TRACEPOINTS_ENV}=raw \
                 allows no other: netwatch stops"
            ),
        )
        .required();
    }
    match &tp.fields {
        Ok(_) => {
            let (status, note) = match (&why_not_raw, spec.raw.is_some()) {
                (Some(why), _) => (
                    Status::Degraded,
                    format!("; not its raw one, which costs less per event: {why}"),
                ),
                (None, true) => (Status::Ok, format!(" ({TRACEPOINTS_ENV}=classic)")),
                (None, false) => (Status::Ok, String::new()),
            };
            let mut c = check(
                status,
                format!(
                    "present, layout readable: {feature} are traced by its classic tracepoint \
                     program {}{note}",
                    spec.program
                ),
            );
            c.path = Some(TracepointPath::Classic.as_str());
            c.program = Some(spec.program);
            c
        }
        Err(why) => {
            // Both programs need the accept() walk's offsets when that is why: said once.
            let raw = match why_not_raw {
                Some(w) if !matches!(why, Unusable::NoOffsets) => {
                    format!(" and its raw program is not used ({w})")
                }
                _ => String::new(),
            };
            if spec.required {
                check(
                    Status::Missing,
                    format!("present, but {why}{raw}: netwatch cannot run without {feature}"),
                )
            } else {
                check(
                    Status::Degraded,
                    format!("present, but {why}{raw}: {feature} are not traced"),
                )
            }
        }
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

/// One program doctor loads: a tracepoint's classic program or its raw twin.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Program {
    name: &'static str,
    path: TracepointPath,
}

/// The programs a run in `mode` may load, in table order, each once (both accept tracepoints
/// share one): each tracepoint's classic program (the fallback; not in `raw` mode where a raw
/// one exists), then its raw one (not in `classic` mode).
fn programs(mode: TracepointMode) -> Vec<Program> {
    let mut out: Vec<Program> = Vec::new();
    for spec in PROGRAM_SPECS {
        let mut push = |name, path| {
            if !out.iter().any(|p| p.name == name) {
                out.push(Program { name, path });
            }
        };
        if mode != TracepointMode::Raw || spec.raw.is_none() {
            push(spec.program, TracepointPath::Classic);
        }
        if let Some(raw) = &spec.raw
            && mode != TracepointMode::Classic
        {
            push(raw.program, TracepointPath::Raw);
        }
    }
    out
}

/// The tracepoints a program attaches to.
fn specs_of(program: &str) -> impl Iterator<Item = &'static ProgramSpec> + '_ {
    PROGRAM_SPECS.iter().filter(move |s| {
        s.program == program || s.raw.as_ref().is_some_and(|r| r.program == program)
    })
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
    specs_of(program).any(|s| s.required)
}

/// Loads the object as `Probe::attach` does, then each program on its own, and reports the
/// verifier's answer, with each loaded program's verdict for the tracepoint lines. Nothing is
/// attached; everything is closed on return.
///
/// A program a run would fall back from or to is not essential: a rejected raw program (in
/// `auto` mode) or classic one (whose raw twin runs instead) is `degraded`, not `rejected`.
fn program_checks(
    mode: TracepointMode,
    layouts: Option<&KernelLayouts>,
    lacking: Option<&str>,
) -> (Vec<Check>, Verdicts) {
    let list = programs(mode);
    let all = |status: Status, detail: &str| -> Vec<Check> {
        list.iter()
            .map(|p| {
                let c = Check::new(Kind::Program, p.name, status, detail);
                if required(p.name) && p.path == TracepointPath::Classic {
                    c.required()
                } else {
                    c
                }
            })
            .collect()
    };
    if let Some(caps) = lacking {
        let detail = format!("not checked: this process lacks {caps}");
        return (all(Status::Missing, &detail), Vec::new());
    }
    let Some(layouts) = layouts else {
        let detail = "not checked: without tracefs there are no layouts to load it with";
        return (all(Status::Missing, detail), Vec::new());
    };
    let config = ProbeConfig {
        capture_stacks: ProbeConfig::stacks_from_env(),
        tracepoints: mode,
        ..ProbeConfig::default()
    };
    let mut ebpf = match probe::load_object(&config, layouts) {
        Ok(ebpf) => ebpf,
        Err(e) => {
            let detail = format!("not loaded: the kernel refused netwatch's object ({e:#})");
            return (all(Status::Rejected, &detail), Vec::new());
        }
    };
    let mut verdicts: Verdicts = Vec::new();
    let mut checks: Vec<(Program, Check)> = Vec::new();
    // Raw programs first: whether a classic program is the fallback or what runs depends on
    // their verdicts.
    for p in list.iter().filter(|p| p.path == TracepointPath::Raw) {
        let Some(tp) = layouts
            .tracepoints
            .iter()
            .find(|tp| tp.spec.raw.as_ref().is_some_and(|r| r.program == p.name))
        else {
            continue;
        };
        let fallback = format!(
            "the classic tracepoint program {} runs instead, at a higher cost per event",
            tp.spec.program
        );
        let (refused, lost) = if mode == TracepointMode::Raw {
            (
                Status::Rejected,
                format!("{TRACEPOINTS_ENV}=raw stops netwatch"),
            )
        } else {
            (Status::Degraded, fallback)
        };
        let check = match tp.raw_choice(mode) {
            Ok(Some(_)) => {
                let check = load_program(&mut ebpf, p.name, refused, &lost);
                verdicts.push((p.name, check.status == Status::Ok));
                check
            }
            Ok(None) => Check::new(
                Kind::Program,
                p.name,
                Status::Degraded,
                format!(
                    "not loaded, as on a real run: {}",
                    unusable_tracepoints(p.name)
                ),
            ),
            Err(why) => Check::new(
                Kind::Program,
                p.name,
                if mode == TracepointMode::Raw {
                    Status::Missing
                } else {
                    Status::Degraded
                },
                format!("not loaded, as on a real run: {why}: {lost}"),
            )
            .required_if(mode == TracepointMode::Raw),
        };
        checks.push((*p, check));
    }
    for p in list.iter().filter(|p| p.path == TracepointPath::Classic) {
        let required = required(p.name);
        let specs: Vec<&probe::Tracepoint> = layouts
            .tracepoints
            .iter()
            .filter(|tp| tp.spec.program == p.name)
            .collect();
        let usable = specs.iter().any(|tp| tp.exists() && tp.fields.is_ok());
        // Its tracepoints all get their raw program: this one is only the fallback.
        let fallback_only = specs.iter().all(|tp| match tp.raw_choice(mode) {
            Ok(Some(raw)) => verdict(&verdicts, raw) == Some(true),
            _ => false,
        });
        let check = if !usable {
            // Probe::attach does not load a program none of whose tracepoints it can use.
            let why = unusable_tracepoints(p.name);
            if required && !fallback_only {
                Check::new(
                    Kind::Program,
                    p.name,
                    Status::Missing,
                    format!("not loaded: {why}, and netwatch cannot run without it"),
                )
                .required()
            } else {
                Check::new(
                    Kind::Program,
                    p.name,
                    Status::Degraded,
                    format!("not loaded, as on a real run: {why}"),
                )
            }
        } else if fallback_only {
            let lost = "the fallback for its raw twin would be missing";
            load_program(&mut ebpf, p.name, Status::Degraded, lost)
        } else {
            let lost = if required {
                "netwatch cannot run".to_owned()
            } else {
                format!("{} would not be traced", features(p.name))
            };
            load_program(&mut ebpf, p.name, Status::Rejected, &lost).required_if(required)
        };
        checks.push((*p, check));
    }
    drop(ebpf);
    // In table order again.
    let checks = list
        .iter()
        .filter_map(|p| {
            checks
                .iter()
                .position(|(q, _)| q == p)
                .map(|i| checks.swap_remove(i).1)
        })
        .collect();
    (checks, verdicts)
}

impl Check {
    fn required_if(self, required: bool) -> Self {
        if required { self.required() } else { self }
    }
}

/// Loads one program of the loaded object and reports the verifier's answer; a refusal gets
/// `refused` as its status and says what follows from it (`lost`).
fn load_program(ebpf: &mut aya::Ebpf, name: &'static str, refused: Status, lost: &str) -> Check {
    let Some(program) = ebpf.program_mut(name) else {
        return Check::new(
            Kind::Program,
            name,
            Status::Rejected,
            "missing from netwatch's object",
        );
    };
    let loaded = match program {
        AyaProgram::TracePoint(p) => p.load().map(|()| p.info()),
        AyaProgram::RawTracePoint(p) => p.load().map(|()| p.info()),
        other => {
            return Check::new(
                Kind::Program,
                name,
                Status::Rejected,
                format!("not a tracepoint program ({:?})", other.prog_type()),
            );
        }
    };
    match loaded {
        Ok(info) => {
            let insns = info.ok().and_then(|i| i.verified_instruction_count());
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
            let mut check = Check::new(Kind::Program, name, refused, detail);
            check.verifier_log = Some(log);
            check
        }
        Err(e) => Check::new(
            Kind::Program,
            name,
            refused,
            format!("cannot load it ({e}): {lost}"),
        ),
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
    fn the_json_help_names_every_field_doctor_prints() {
        use clap::CommandFactory as _;
        let cli = crate::cli::Cli::command();
        let help = cli
            .find_subcommand("doctor")
            .unwrap()
            .get_arguments()
            .find(|a| a.get_id() == "json")
            .and_then(|a| a.get_help())
            .unwrap()
            .to_string();
        let mut check = Check::new(Kind::Tracepoint, "t", Status::Rejected, "d");
        check.verifier_log = Some("log".into());
        check.path = Some("raw");
        check.program = Some("nwr_set_state");
        let report = Report {
            kernel: "6.18.0".into(),
            floor: "5.8",
            tracepoints: "auto",
            checks: vec![check],
            ok: false,
        };
        let json = serde_json::to_value(&report).unwrap();
        let mut fields: Vec<&String> = json.as_object().unwrap().keys().collect();
        fields.extend(json["checks"][0].as_object().unwrap().keys());
        for field in fields {
            assert!(
                help.contains(field.as_str()),
                "`doctor --json` help lacks {field}: {help}"
            );
        }
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
    fn the_cgroup_line_says_what_short_lived_cgroups_need() {
        let mount = std::path::Path::new("/sys/fs/cgroup");
        let ok = cgroup_watch_check(Some(mount), 40, Some(8192), Ok(()));
        assert_eq!((ok.kind, ok.status), (Kind::Cgroup, Status::Ok));
        assert_eq!(ok.name, "/sys/fs/cgroup");
        assert!(ok.detail.starts_with("40 cgroups"), "{}", ok.detail);
        let short = cgroup_watch_check(Some(mount), 9000, Some(8192), Ok(()));
        assert_eq!(short.status, Status::Degraded);
        assert!(
            short.detail.contains("fs.inotify.max_user_watches = 8192"),
            "{}",
            short.detail
        );
        let none = cgroup_watch_check(Some(mount), 40, Some(8192), Err("EMFILE".into()));
        assert_eq!(none.status, Status::Degraded);
        assert!(
            none.detail.contains("max_user_instances"),
            "{}",
            none.detail
        );
        let v1 = cgroup_watch_check(None, 0, None, Ok(()));
        assert_eq!(v1.status, Status::Degraded);
        // netwatch runs without any of it.
        assert!(![ok, short, none, v1].iter().any(Check::fails));
    }

    #[test]
    fn json_has_the_documented_shape() {
        let mut rejected = Check::new(Kind::Program, "nw_x", Status::Rejected, "no");
        rejected.verifier_log = Some("R1 !read_ok\n".to_owned());
        let report = Report {
            kernel: "6.1.0".to_owned(),
            floor: FLOOR_TEXT,
            tracepoints: "auto",
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
        let names = |mode| -> Vec<&str> { programs(mode).iter().map(|p| p.name).collect() };
        let auto = names(TracepointMode::Auto);
        assert_eq!(auto[..2], ["nw_set_state", "nwr_set_state"]);
        assert_eq!(auto.iter().filter(|n| **n == "nw_accept").count(), 1);
        assert_eq!(auto.len(), 19, "{auto:?}");
        assert!(required("nw_set_state") && required("nwr_set_state") && !required("nw_accept"));
        // Forced paths: only their programs, and accept() always classic.
        let classic = names(TracepointMode::Classic);
        assert_eq!(classic.len(), 10, "{classic:?}");
        assert!(classic.iter().all(|n| n.starts_with("nw_")));
        let raw = names(TracepointMode::Raw);
        assert_eq!(raw.len(), 10, "{raw:?}");
        assert_eq!(raw.iter().filter(|n| n.starts_with("nwr_")).count(), 9);
        assert!(raw.contains(&"nw_accept"));
    }

    #[test]
    fn every_raw_program_name_fits_the_kernel() {
        // The kernel keeps 15 characters of a program's name; tests and bpftool match them.
        for p in programs(TracepointMode::Auto) {
            assert!(p.name.len() <= 15, "{}", p.name);
        }
    }
}
