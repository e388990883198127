//! Loads netwatch's kernel programs, hands them the running kernel's field layouts, attaches
//! them, and exposes the ring buffer and the kernel-side counters.
//!
//! A tracepoint missing on this kernel (or with a layout the program cannot read) switches off
//! only what needs it, with a one-line warning; netwatch runs on with the rest.
use anyhow::{Context as _, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, PerCpuArray, RingBuf, StackTraceMap},
    programs::{TracePoint, trace_point::TracePointLinkId},
};
use netwatch_common::{KernelFilter, TpFields, names, stat};

use crate::{
    event::DecodeContext,
    layout::{self, LayoutError},
    offsets, privileges,
    tracefs::{self, EventFormat},
};

/// The kernel programs, built by `build.rs` from `netwatch-ebpf`.
static PROGRAMS: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/netwatch"));

/// One tracepoint program: where it attaches, which global holds its layout, what a user loses
/// when it cannot attach.
struct ProgramSpec {
    program: &'static str,
    system: &'static str,
    event: &'static str,
    global: &'static str,
    layout: fn(&EventFormat) -> Result<TpFields, LayoutError>,
    feature: &'static str,
}

const PROGRAM_SPECS: &[ProgramSpec] = &[
    ProgramSpec {
        program: "nw_set_state",
        system: "sock",
        event: "inet_sock_set_state",
        global: names::SET_STATE_FIELDS,
        layout: layout::set_state_fields,
        feature: "state transitions",
    },
    ProgramSpec {
        program: "nw_retransmit",
        system: "tcp",
        event: "tcp_retransmit_skb",
        global: names::RETRANSMIT_FIELDS,
        layout: layout::socket_fields,
        feature: "retransmissions",
    },
    ProgramSpec {
        program: "nw_synack_rtx",
        system: "tcp",
        event: "tcp_retransmit_synack",
        global: names::SYNACK_FIELDS,
        layout: layout::socket_fields,
        feature: "SYN-ACK retransmits",
    },
    ProgramSpec {
        program: "nw_recv_reset",
        system: "tcp",
        event: "tcp_receive_reset",
        global: names::RECV_RESET_FIELDS,
        layout: layout::socket_fields,
        feature: "resets received",
    },
    ProgramSpec {
        program: "nw_send_reset",
        system: "tcp",
        event: "tcp_send_reset",
        global: names::SEND_RESET_FIELDS,
        layout: layout::socket_fields,
        feature: "resets sent",
    },
    ProgramSpec {
        program: "nw_destroy_sock",
        system: "tcp",
        event: "tcp_destroy_sock",
        global: names::DESTROY_FIELDS,
        layout: layout::socket_fields,
        feature: "socket destructions",
    },
    ProgramSpec {
        program: "nw_accept",
        system: "syscalls",
        event: "sys_exit_accept4",
        global: names::ACCEPT_FIELDS,
        layout: layout::syscall_exit_fields,
        feature: "owners of sockets accepted with accept4()",
    },
    ProgramSpec {
        program: "nw_accept",
        system: "syscalls",
        event: "sys_exit_accept",
        global: names::ACCEPT_FIELDS,
        layout: layout::syscall_exit_fields,
        feature: "owners of sockets accepted with accept()",
    },
];

/// How many tracepoints netwatch attaches to when the kernel has them all.
pub fn tracepoint_count() -> usize {
    PROGRAM_SPECS.len()
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
}

impl Default for ProbeConfig {
    fn default() -> Self {
        Self {
            ring_bytes: DEFAULT_RING_BYTES,
            filter: KernelFilter::ANY,
            capture_stacks: true,
        }
    }
}

/// 4 MiB: ~40,000 events, a third of a second of the heaviest churn this machine drives.
pub const DEFAULT_RING_BYTES: u32 = 4 << 20;

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
}

/// The loaded and attached programs.
pub struct Probe {
    ebpf: Ebpf,
    links: Vec<(&'static str, TracePointLinkId)>,
    /// Decoding needs from the kernel (reset reason names).
    pub decode: DecodeContext,
    /// One line per feature switched off on this kernel.
    pub warnings: Vec<String>,
}

impl Probe {
    /// Checks privileges, reads layouts from tracefs (mounting it if needed), loads and
    /// attaches every program whose tracepoint exists.
    pub fn attach(config: &ProbeConfig) -> anyhow::Result<Self> {
        if let Some(missing) = privileges::missing_tracing_caps() {
            bail!(missing);
        }
        privileges::raise_memlock_rlimit();
        // NETWATCH_TRACEFS points at another tracefs (or a copy of its `events/` tree) to read
        // formats from: for unusual mounts, and for tests that hide a tracepoint.
        let root = match std::env::var_os("NETWATCH_TRACEFS") {
            Some(dir) => std::path::PathBuf::from(dir),
            None => tracefs::tracefs_root().context("cannot reach tracefs")?,
        };

        let mut layouts: Vec<(&ProgramSpec, TpFields)> = Vec::new();
        let mut warnings = Vec::new();
        let mut decode = DecodeContext::default();
        for spec in PROGRAM_SPECS {
            let format = tracefs::read_format(&root, spec.system, spec.event)
                .with_context(|| format!("reading {}:{}", spec.system, spec.event))?;
            let Some(format) = format else {
                warnings.push(format!(
                    "tracepoint {}:{} does not exist on this kernel: {} are not traced",
                    spec.system, spec.event, spec.feature
                ));
                continue;
            };
            match (spec.layout)(&format) {
                Ok(fields) => layouts.push((spec, fields)),
                Err(e) => warnings.push(format!(
                    "tracepoint {}:{} has a layout netwatch cannot read ({e}): {} are not traced",
                    spec.system, spec.event, spec.feature
                )),
            }
            if spec.event == "tcp_send_reset" {
                decode.reset_reasons = format.symbols("reason");
            }
        }
        if !layouts
            .iter()
            .any(|(s, _)| s.event == "inet_sock_set_state")
        {
            bail!(
                "sock:inet_sock_set_state is unusable on this kernel ({}); netwatch needs it \
                 (Linux 4.16 or later)",
                warnings.join("; ")
            );
        }

        // Both accept tracepoints share one program and one layout global: keep the second
        // only if its layout is the same.
        let mut seen_globals: Vec<(&str, TpFields)> = Vec::new();
        layouts.retain(|(spec, fields)| {
            match seen_globals.iter().find(|(g, _)| *g == spec.global) {
                Some((_, first)) if first != fields => {
                    warnings.push(format!(
                        "tracepoint {}:{} has a different layout from its twin: {} are not traced",
                        spec.system, spec.event, spec.feature
                    ));
                    false
                }
                Some(_) => true,
                None => {
                    seen_globals.push((spec.global, *fields));
                    true
                }
            }
        });
        let offsets = offsets::kernel_offsets(&mut warnings);
        if offsets.task_files == netwatch_common::ABSENT32 {
            layouts.retain(|(spec, _)| spec.program != "nw_accept");
        }

        let wakeup_bytes = u64::from(config.ring_bytes / 4);
        let capture_stacks = u32::from(config.capture_stacks);
        let mut loader = EbpfLoader::new();
        loader
            .map_max_entries(names::EVENTS, config.ring_bytes)
            .override_global(names::WAKEUP_BYTES, &wakeup_bytes, true)
            .override_global(names::KERNEL_OFFSETS, &offsets, true)
            .override_global(names::FILTER, &config.filter, true)
            .override_global(names::CAPTURE_STACKS, &capture_stacks, true);
        for (global, fields) in &seen_globals {
            loader.override_global(global, fields, true);
        }
        let mut ebpf = loader
            .load(PROGRAMS)
            .context("loading the eBPF programs into the kernel")?;

        let mut links = Vec::new();
        for (spec, _) in &layouts {
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
        let map = self
            .ebpf
            .map(names::STATS)
            .ok_or_else(|| anyhow!("map {} missing", names::STATS))?;
        let stats: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(map)?;
        let sum = |i: u32| -> anyhow::Result<u64> { Ok(stats.get(&i, 0)?.iter().copied().sum()) };
        Ok(KernelStats {
            produced: sum(stat::PRODUCED)?,
            lost: sum(stat::LOST)?,
            sockets_full: sum(stat::SOCKETS_FULL)?,
            filtered: sum(stat::FILTERED)?,
            read_failed: sum(stat::READ_FAILED)?,
        })
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
pub struct StatsReader(PerCpuArray<MapData, u64>);

impl StatsReader {
    /// The kernel's produced/lost counters now, summed over CPUs.
    pub fn read(&self) -> anyhow::Result<KernelStats> {
        let sum = |i: u32| -> anyhow::Result<u64> { Ok(self.0.get(&i, 0)?.iter().copied().sum()) };
        Ok(KernelStats {
            produced: sum(stat::PRODUCED)?,
            lost: sum(stat::LOST)?,
            sockets_full: sum(stat::SOCKETS_FULL)?,
            filtered: sum(stat::FILTERED)?,
            read_failed: sum(stat::READ_FAILED)?,
        })
    }
}

impl Probe {
    /// A [`StatsReader`] on this probe's counters.
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
        Ok(StatsReader(PerCpuArray::try_from(Map::PerCpuArray(data))?))
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        self.detach();
    }
}
