//! Loads netwatch's kernel programs, hands them the running kernel's field layouts, attaches
//! them, and exposes the ring buffer and the kernel-side counters.
//!
//! A tracepoint missing on this kernel (or with a layout the program cannot read) switches off
//! only what needs it, with a one-line warning; netwatch runs on with the rest.
use std::path::{Path, PathBuf};

use anyhow::{Context as _, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, PerCpuArray, RingBuf, StackTraceMap},
    programs::{TracePoint, trace_point::TracePointLinkId},
};
use netwatch_common::{KernelFilter, KernelOffsets, TpFields, names, stat};

use crate::{
    kernel::layout::{self, LayoutError},
    kernel::offsets,
    kernel::privileges,
    kernel::tracefs::{self, EventFormat},
    model::event::DecodeContext,
};

/// The kernel programs, built by `build.rs` from `netwatch-ebpf`.
static PROGRAMS: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/netwatch"));

/// One tracepoint program: where it attaches, which global holds its layout, what a user loses
/// when it cannot attach.
#[derive(Debug)]
pub struct ProgramSpec {
    /// The program's name in the object.
    pub program: &'static str,
    pub system: &'static str,
    pub event: &'static str,
    /// The global that holds the tracepoint's field offsets.
    global: &'static str,
    /// Reads the field offsets from the tracepoint's format.
    layout: fn(&EventFormat) -> Result<TpFields, LayoutError>,
    /// What is not traced without it, in plural ("retransmissions").
    pub feature: &'static str,
    /// netwatch refuses to run without it.
    pub required: bool,
    /// In which runs it is attached.
    pub when: When,
}

/// Which runs attach a program: accepted sockets get their owner either at accept() (a
/// `syscalls:*` tracepoint, which slows every syscall of every process on the host, so only
/// when code paths are asked for) or at their first read (a TCP tracepoint; no tax).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum When {
    Always,
    /// [`ProbeConfig::owners_at_accept`].
    OwnersAtAccept,
    /// Not [`ProbeConfig::owners_at_accept`].
    OwnersAtFirstRead,
}

impl When {
    pub fn applies(self, config: &ProbeConfig) -> bool {
        match self {
            When::Always => true,
            When::OwnersAtAccept => config.owners_at_accept,
            When::OwnersAtFirstRead => !config.owners_at_accept,
        }
    }
}

pub const PROGRAM_SPECS: &[ProgramSpec] = &[
    ProgramSpec {
        program: "nw_set_state",
        system: "sock",
        event: "inet_sock_set_state",
        global: names::SET_STATE_FIELDS,
        layout: layout::set_state_fields,
        feature: "state transitions",
        required: true,
        when: When::Always,
    },
    ProgramSpec {
        program: "nw_retransmit",
        system: "tcp",
        event: "tcp_retransmit_skb",
        global: names::RETRANSMIT_FIELDS,
        layout: layout::socket_fields,
        feature: "retransmissions",
        required: false,
        when: When::Always,
    },
    ProgramSpec {
        program: "nw_synack_rtx",
        system: "tcp",
        event: "tcp_retransmit_synack",
        global: names::SYNACK_FIELDS,
        layout: layout::socket_fields,
        feature: "SYN-ACK retransmits",
        required: false,
        when: When::Always,
    },
    ProgramSpec {
        program: "nw_recv_reset",
        system: "tcp",
        event: "tcp_receive_reset",
        global: names::RECV_RESET_FIELDS,
        layout: layout::socket_fields,
        feature: "resets received",
        required: false,
        when: When::Always,
    },
    ProgramSpec {
        program: "nw_send_reset",
        system: "tcp",
        event: "tcp_send_reset",
        global: names::SEND_RESET_FIELDS,
        layout: layout::socket_fields,
        feature: "resets sent",
        required: false,
        when: When::Always,
    },
    ProgramSpec {
        program: "nw_destroy_sock",
        system: "tcp",
        event: "tcp_destroy_sock",
        global: names::DESTROY_FIELDS,
        layout: layout::socket_fields,
        feature: "socket destructions",
        required: false,
        when: When::Always,
    },
    ProgramSpec {
        program: "nw_accept",
        system: "syscalls",
        event: "sys_exit_accept4",
        global: names::ACCEPT_FIELDS,
        layout: layout::syscall_exit_fields,
        feature: "owners of sockets accepted with accept4()",
        required: false,
        when: When::OwnersAtAccept,
    },
    ProgramSpec {
        program: "nw_accept",
        system: "syscalls",
        event: "sys_exit_accept",
        global: names::ACCEPT_FIELDS,
        layout: layout::syscall_exit_fields,
        feature: "owners of sockets accepted with accept()",
        required: false,
        when: When::OwnersAtAccept,
    },
    ProgramSpec {
        program: "nw_first_read",
        system: "tcp",
        event: "tcp_rcv_space_adjust",
        global: names::FIRST_READ_FIELDS,
        layout: layout::socket_fields,
        feature: "owners of accepted sockets (learnt at their first read)",
        required: false,
        when: When::OwnersAtFirstRead,
    },
];

/// How many tracepoints a run with `config` attaches to when the kernel has them all.
pub fn tracepoint_count(config: &ProbeConfig) -> usize {
    PROGRAM_SPECS
        .iter()
        .filter(|s| s.when.applies(config))
        .count()
}

/// Load-time settings.
#[derive(Clone, Debug)]
pub struct ProbeConfig {
    /// Ring-buffer size in bytes: a power of two, at least one page.
    pub ring_bytes: u32,
    /// What the kernel may drop before the ring buffer.
    pub filter: KernelFilter,
    /// Capture the user stack at connect() and accept() (`NETWATCH_STACKS=0` switches it
    /// off, to measure its cost).
    pub capture_stacks: bool,
    /// Learn the owner of an accepted socket at accept() itself, with its code path (`leaks`,
    /// `trace --stacks`), at the price of a syscall tracepoint; otherwise at its first read.
    pub owners_at_accept: bool,
    /// Entries of the kernel's per-socket map (`--max-sockets`): live sockets attributed at
    /// once, preallocated.
    pub max_sockets: u32,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        Self {
            ring_bytes: DEFAULT_RING_BYTES,
            filter: KernelFilter::ANY,
            capture_stacks: true,
            owners_at_accept: false,
            max_sockets: crate::model::tracker::DEFAULT_MAX_SOCKETS as u32,
        }
    }
}

impl ProbeConfig {
    /// Whether to capture user stacks: yes unless `NETWATCH_STACKS=0`.
    pub fn stacks_from_env() -> bool {
        std::env::var_os("NETWATCH_STACKS").is_none_or(|v| v != "0")
    }
}

/// The default `--ring-size`: one definition, in netwatch-common, shared with the kernel side.
pub use netwatch_common::DEFAULT_RING_BYTES;

/// Checks a `--ring-size` value.
pub fn check_ring_bytes(bytes: u32) -> Result<u32, String> {
    // SAFETY: sysconf has no memory effects.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as u32;
    if !bytes.is_power_of_two() || bytes < page {
        return Err(format!(
            "ring size must be a power of two of at least {page} bytes, got {bytes}"
        ));
    }
    Ok(bytes)
}

/// Kernel-side counters, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelStats {
    /// Events the programs tried to emit.
    pub produced: u64,
    /// Events that found the ring buffer full.
    pub lost: u64,
    /// Sockets whose owner could not be remembered: the kernel's socket table was full.
    pub sockets_full: u64,
    /// Events the kernel-side filter dropped.
    pub filtered: u64,
    /// Events dropped because a record or kernel field could not be read.
    pub read_failed: u64,
    /// Program runs the kernel skipped because a BPF program was already running on that CPU
    /// (the programs' `recursion_misses`): a tracepoint that fires in softirq while a program
    /// runs in process context on the same CPU is not traced. Each is an event never produced.
    pub missed: u64,
}

/// The loaded and attached programs.
pub struct Probe {
    ebpf: Ebpf,
    links: Vec<(&'static str, TracePointLinkId)>,
    /// Decoding needs from the kernel (reset reason names).
    pub decode: DecodeContext,
    /// One line per feature switched off on this kernel.
    pub warnings: Vec<String>,
    /// Whether the programs capture user stacks (`ProbeConfig::capture_stacks`).
    capture_stacks: bool,
    /// How many tracepoints this run attaches to when the kernel has them all.
    tracepoints: usize,
}

/// Why a tracepoint's program is not attached on this kernel.
#[derive(Debug)]
pub enum Unusable {
    /// The tracepoint does not exist.
    Missing,
    /// Its format file exists but could not be read or parsed.
    Unreadable(tracefs::TracefsError),
    /// Its layout is one the program cannot read.
    Layout(LayoutError),
    /// It shares a program and a layout global with a twin whose layout differs.
    TwinDiffers,
    /// Its program walks kernel structs whose offsets this kernel's BTF did not give.
    NoOffsets,
}

impl std::fmt::Display for Unusable {
    /// Completes "the tracepoint ...".
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Missing => f.write_str("does not exist on this kernel"),
            Self::Unreadable(e) => write!(f, "has a format netwatch cannot read: {e}"),
            Self::Layout(e) => write!(f, "has a layout netwatch cannot read ({e})"),
            Self::TwinDiffers => f.write_str("has a different layout from its twin"),
            Self::NoOffsets => f.write_str(
                "feeds a program that needs struct offsets from kernel BTF, which this kernel \
                 does not give",
            ),
        }
    }
}

/// One tracepoint netwatch uses, as this kernel has it.
#[derive(Debug)]
pub struct Tracepoint {
    pub spec: &'static ProgramSpec,
    /// The offsets its program reads, or why it is not attached.
    pub fields: Result<TpFields, Unusable>,
    /// What a user loses, in one line, when it is not usable.
    pub warning: Option<String>,
}

/// Everything the programs are loaded with on this kernel, read once from tracefs and BTF.
#[derive(Debug)]
pub struct KernelLayouts {
    /// One entry per [`PROGRAM_SPECS`] entry, in that order.
    pub tracepoints: Vec<Tracepoint>,
    /// The layout globals to override: the first usable layout of each.
    globals: Vec<(&'static str, TpFields)>,
    /// Struct offsets from BTF (`ABSENT32` where unknown).
    pub offsets: KernelOffsets,
    /// Decoding needs from the kernel (reset reason names).
    pub decode: DecodeContext,
    /// One line per feature switched off on this kernel that no single tracepoint explains
    /// (missing BTF offsets); each tracepoint's own is in [`Tracepoint::warning`].
    pub warnings: Vec<String>,
}

/// The tracefs to read formats from: `NETWATCH_TRACEFS` if set (for unusual mounts, and for
/// tests that hide a tracepoint with a copy of the `events/` tree), else the mounted tracefs,
/// mounting it if needed.
pub fn tracefs_root() -> anyhow::Result<PathBuf> {
    match std::env::var_os("NETWATCH_TRACEFS") {
        Some(dir) => Ok(PathBuf::from(dir)),
        None => tracefs::tracefs_root().context("cannot reach tracefs"),
    }
}

impl KernelLayouts {
    /// Reads every tracepoint's format under `root` and the kernel offsets from BTF, and
    /// decides which programs can run.
    pub fn read(root: &Path) -> Self {
        let mut tracepoints = Vec::new();
        let mut warnings = Vec::new();
        let mut decode = DecodeContext::default();
        for spec in PROGRAM_SPECS {
            let mut warning = None;
            let fields = match tracefs::read_format(root, spec.system, spec.event) {
                Err(e) => Err(Unusable::Unreadable(e)),
                Ok(None) => {
                    warning = Some(format!(
                        "tracepoint {}:{} does not exist on this kernel: {} are not traced",
                        spec.system, spec.event, spec.feature
                    ));
                    Err(Unusable::Missing)
                }
                Ok(Some(format)) => {
                    if spec.event == "tcp_send_reset" {
                        decode.reset_reasons = format.symbols("reason");
                    }
                    (spec.layout)(&format).map_err(|e| {
                        warning = Some(format!(
                            "tracepoint {}:{} has a layout netwatch cannot read ({e}): {} are \
                             not traced",
                            spec.system, spec.event, spec.feature
                        ));
                        Unusable::Layout(e)
                    })
                }
            };
            tracepoints.push(Tracepoint {
                spec,
                fields,
                warning,
            });
        }

        // Both accept tracepoints share one program and one layout global: keep the second
        // only if its layout is the same.
        let mut globals: Vec<(&'static str, TpFields)> = Vec::new();
        for tp in &mut tracepoints {
            let Ok(fields) = tp.fields else { continue };
            match globals.iter().find(|(g, _)| *g == tp.spec.global) {
                Some((_, first)) if *first != fields => {
                    tp.warning = Some(format!(
                        "tracepoint {}:{} has a different layout from its twin: {} are not traced",
                        tp.spec.system, tp.spec.event, tp.spec.feature
                    ));
                    tp.fields = Err(Unusable::TwinDiffers);
                }
                Some(_) => {}
                None => globals.push((tp.spec.global, fields)),
            }
        }
        let offsets = offsets::kernel_offsets(&mut warnings);
        if offsets.task_files == netwatch_common::ABSENT32 {
            for tp in &mut tracepoints {
                if matches!(tp.spec.program, "nw_accept" | "nw_first_read") && tp.fields.is_ok() {
                    tp.fields = Err(Unusable::NoOffsets);
                }
            }
        }
        Self {
            tracepoints,
            globals,
            offsets,
            decode,
            warnings,
        }
    }

    /// The warnings that matter to a run with `config`: the general ones, and those of the
    /// tracepoints it would attach.
    pub fn warnings_for(&self, config: &ProbeConfig) -> Vec<String> {
        let mut out = self.warnings.clone();
        out.extend(
            self.tracepoints
                .iter()
                .filter(|tp| tp.spec.when.applies(config))
                .filter_map(|tp| tp.warning.clone()),
        );
        out
    }

    /// The tracepoints whose programs can be loaded and attached.
    pub fn usable(&self) -> impl Iterator<Item = &'static ProgramSpec> + '_ {
        self.tracepoints
            .iter()
            .filter(|tp| tp.fields.is_ok())
            .map(|tp| tp.spec)
    }
}

/// Builds the loader with this kernel's layouts and offsets and the run's settings, and loads
/// the object: maps created, globals set, no program loaded yet. [`Probe::attach`] and
/// `netwatch doctor` both load through here, so that doctor checks what attach runs.
pub fn load_object(config: &ProbeConfig, layouts: &KernelLayouts) -> anyhow::Result<Ebpf> {
    let wakeup_bytes = u64::from(config.ring_bytes / 4);
    let capture_stacks = u32::from(config.capture_stacks);
    let mut loader = EbpfLoader::new();
    loader
        .map_max_entries(names::EVENTS, config.ring_bytes)
        .map_max_entries(names::SOCKETS, config.max_sockets)
        .override_global(names::WAKEUP_BYTES, &wakeup_bytes, true)
        .override_global(names::KERNEL_OFFSETS, &layouts.offsets, true)
        .override_global(names::FILTER, &config.filter, true)
        .override_global(names::CAPTURE_STACKS, &capture_stacks, true);
    for (global, fields) in &layouts.globals {
        loader.override_global(global, fields, true);
    }
    loader
        .load(PROGRAMS)
        .context("loading the eBPF programs into the kernel")
}

impl Probe {
    /// Checks privileges, reads layouts from tracefs (mounting it if needed), loads and
    /// attaches every program whose tracepoint exists.
    pub fn attach(config: &ProbeConfig) -> anyhow::Result<Self> {
        if let Some(missing) = privileges::missing_tracing_caps() {
            bail!(missing);
        }
        privileges::raise_memlock_rlimit();
        let root = tracefs_root()?;
        let layouts = KernelLayouts::read(&root);
        for tp in &layouts.tracepoints {
            if let Err(Unusable::Unreadable(e)) = &tp.fields {
                bail!("reading {}:{}: {e}", tp.spec.system, tp.spec.event);
            }
        }
        if let Some(tp) = layouts
            .tracepoints
            .iter()
            .find(|tp| tp.spec.required && tp.fields.is_err())
        {
            bail!(
                "{}:{} {}; netwatch needs it (Linux 4.16 or later)",
                tp.spec.system,
                tp.spec.event,
                tp.fields
                    .as_ref()
                    .err()
                    .map_or(String::new(), ToString::to_string)
            );
        }
        let mut ebpf = load_object(config, &layouts)?;
        let usable: Vec<&ProgramSpec> = layouts
            .usable()
            .filter(|spec| spec.when.applies(config))
            .collect();
        let mut warnings = layouts.warnings_for(config);
        let KernelLayouts { decode, .. } = layouts;
        let mut links = Vec::new();
        for spec in usable {
            let program: &mut TracePoint = ebpf
                .program_mut(spec.program)
                .ok_or_else(|| anyhow!("program {} missing from the object", spec.program))?
                .try_into()
                .with_context(|| format!("{} is not a tracepoint program", spec.program))?;
            if program.fd().is_err() {
                program
                    .load()
                    .with_context(|| format!("verifier rejected {}", spec.program))?;
            }
            match program.attach(spec.system, spec.event) {
                Ok(link) => links.push((spec.program, link)),
                Err(e) => warnings.push(format!(
                    "cannot attach to {}:{} ({e}): {} are not traced",
                    spec.system, spec.event, spec.feature
                )),
            }
        }
        Ok(Self {
            ebpf,
            links,
            decode,
            warnings,
            capture_stacks: config.capture_stacks,
            tracepoints: tracepoint_count(config),
        })
    }

    /// The ring buffer the programs write into; can be taken once.
    pub fn take_ring(&mut self) -> anyhow::Result<RingBuf<MapData>> {
        let map = self
            .ebpf
            .take_map(names::EVENTS)
            .ok_or_else(|| anyhow!("ring buffer {} already taken", names::EVENTS))?;
        RingBuf::try_from(map).context("EVENTS is not a ring buffer")
    }

    /// The kernel's produced/lost counters, summed over CPUs.
    pub fn stats(&self) -> anyhow::Result<KernelStats> {
        self.stats_reader()?.read()
    }

    /// A second handle on the `STACKS` map (user stacks at connect() and accept()).
    pub fn stack_map(&self) -> anyhow::Result<StackTraceMap<MapData>> {
        use std::os::fd::AsFd as _;

        use aya::maps::{IterableMap as _, Map};
        let map = self
            .ebpf
            .map(names::STACKS)
            .ok_or_else(|| anyhow!("map {} missing", names::STACKS))?;
        let stacks: StackTraceMap<&MapData> = StackTraceMap::try_from(map)?;
        let fd = stacks
            .map()
            .fd()
            .as_fd()
            .try_clone_to_owned()
            .context("duplicating the STACKS map fd")?;
        let data = MapData::from_fd(fd)?;
        Ok(StackTraceMap::try_from(Map::StackTraceMap(data))?)
    }

    /// Whether the programs capture user stacks at connect() and accept().
    pub fn captures_stacks(&self) -> bool {
        self.capture_stacks
    }

    /// How many tracepoints this run would attach to on a kernel that has them all.
    pub fn tracepoints_wanted(&self) -> usize {
        self.tracepoints
    }

    /// How many programs are attached.
    pub fn attached(&self) -> usize {
        self.links.len()
    }

    /// Detaches every program: no event is produced after this returns.
    pub fn detach(&mut self) {
        for (name, link) in self.links.drain(..) {
            let detached = self
                .ebpf
                .program_mut(name)
                .and_then(|p| <&mut TracePoint>::try_from(p).ok())
                .map(|p| p.detach(link));
            if let Some(Err(e)) = detached {
                log::warn!("detaching {name}: {e}");
            }
        }
    }
}

/// A second handle on the kernel counters of [`Probe::stats`] (a duplicate of the map's fd),
/// readable while the stream holds the probe: `netwatch serve` exports them live.
pub struct StatsReader {
    stats: PerCpuArray<MapData, u64>,
    /// The attached programs, for their `recursion_misses`.
    programs: Vec<std::os::fd::OwnedFd>,
}

impl StatsReader {
    /// The kernel's counters now, summed over CPUs, and the runs it skipped.
    pub fn read(&self) -> anyhow::Result<KernelStats> {
        let stats = &self.stats;
        let sum = |i: u32| -> anyhow::Result<u64> { Ok(stats.get(&i, 0)?.iter().copied().sum()) };
        Ok(KernelStats {
            produced: sum(stat::PRODUCED)?,
            lost: sum(stat::LOST)?,
            sockets_full: sum(stat::SOCKETS_FULL)?,
            filtered: sum(stat::FILTERED)?,
            read_failed: sum(stat::READ_FAILED)?,
            missed: self.programs.iter().map(recursion_misses).sum(),
        })
    }
}

/// A program's `recursion_misses`, from its fdinfo (Linux 5.12+; 0 where absent).
fn recursion_misses(fd: &std::os::fd::OwnedFd) -> u64 {
    use std::os::fd::AsRawFd as _;
    std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd()))
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("recursion_misses:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

impl Probe {
    /// A [`StatsReader`] on this probe's counters and attached programs.
    pub fn stats_reader(&self) -> anyhow::Result<StatsReader> {
        use std::os::fd::AsFd as _;

        use aya::maps::{IterableMap as _, Map};
        let map = self
            .ebpf
            .map(names::STATS)
            .ok_or_else(|| anyhow!("map {} missing", names::STATS))?;
        let stats: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(map)?;
        let fd = stats
            .map()
            .fd()
            .as_fd()
            .try_clone_to_owned()
            .context("duplicating the STATS map fd")?;
        let data = MapData::from_fd(fd)?;
        let mut programs = Vec::new();
        // Every loaded program, attached or not any more (their counts outlive the links).
        for (name, p) in self.ebpf.programs() {
            if let Ok(fd) = p.fd() {
                programs.push(
                    fd.as_fd()
                        .try_clone_to_owned()
                        .with_context(|| format!("duplicating the fd of {name}"))?,
                );
            }
        }
        Ok(StatsReader {
            stats: PerCpuArray::try_from(Map::PerCpuArray(data))?,
            programs,
        })
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        self.detach();
    }
}
