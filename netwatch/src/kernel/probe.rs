//! Loads netwatch's kernel programs, hands them the running kernel's field layouts, attaches
//! them, and exposes the ring buffer and the kernel-side counters.
//!
//! Each TCP tracepoint has two programs: a raw tracepoint program, which reads the socket its
//! arguments point at (struct offsets from BTF), and a classic one, which copies the record
//! the kernel formats first (field offsets from tracefs). The raw one costs less, because the
//! kernel formats no record for it; it is attached wherever the kernel takes it, and the
//! classic one where it does not (no BTF, an argument list or a struct member netwatch does
//! not know, a verifier or attach refusal), with one warning line saying why.
//! `NETWATCH_TRACEPOINTS=classic` uses the classic programs only (`raw`: the raw ones or
//! nothing), for tests and comparisons.
//!
//! A tracepoint missing on this kernel (or with a layout the program cannot read) switches off
//! only what needs it, with a one-line warning; netwatch runs on with the rest.
use std::path::{Path, PathBuf};

use anyhow::{Context as _, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, PerCpuArray, RingBuf, StackTraceMap},
    programs::{
        ProgramError, RawTracePoint, TracePoint, raw_trace_point::RawTracePointLinkId,
        trace_point::TracePointLinkId,
    },
};
use netwatch_common::{KernelFilter, KernelOffsets, RawArgs, TpFields, names, stat};

use crate::{
    kernel::btf::Btf,
    kernel::layout::{self, LayoutError},
    kernel::offsets::{self, Offsets, SOCK_COMMON},
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
    /// The raw tracepoint program for the same tracepoint, when there is one.
    pub raw: Option<RawSpec>,
}

/// A raw tracepoint program: its name, the arguments it reads and the struct members it
/// reads through them, checked against the running kernel's BTF before it is tried.
#[derive(Debug)]
pub struct RawSpec {
    /// The program's name in the object (at most 15 characters, as the kernel shows it).
    pub program: &'static str,
    /// The `TP_PROTO` arguments it reads, as BTF spells them without `const`.
    args: &'static [&'static str],
    /// Arguments some kernels add after `args`, which the program reads only where the
    /// kernel has them (the `RAW_ARGS` global says how many there are).
    optional: &'static [&'static str],
    /// Struct members it reads ([`offsets::RAW_MEMBERS`] names, or [`SOCK_COMMON`]).
    members: &'static [&'static str],
    /// Members it reads too when the optional arguments are there.
    members_with_optional: &'static [&'static str],
}

/// What the programs that report a socket's endpoints read, as its classic record has them.
const ENDPOINTS: [&str; 3] = [SOCK_COMMON, "inet_sock.inet_sport", "inet_sock.inet_saddr"];
const SOCK: &str = "struct sock *";
const SKB: &str = "struct sk_buff *";

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
    /// The modes that ask for code paths (the same switch as [`When::OwnersAtAccept`]): the
    /// stacks at a socket's first send and receive run at every send and receive of every
    /// socket, so the other modes do not attach them.
    CodePaths,
}

impl When {
    pub fn applies(self, config: &ProbeConfig) -> bool {
        match self {
            When::Always => true,
            When::OwnersAtAccept | When::CodePaths => config.owners_at_accept,
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
        raw: Some(RawSpec {
            program: "nwr_set_state",
            args: &[SOCK, "int", "int"],
            optional: &[],
            members: &[
                SOCK_COMMON,
                "inet_sock.inet_sport",
                "inet_sock.inet_saddr",
                "sock.sk_protocol",
            ],
            members_with_optional: &[],
        }),
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
        raw: Some(RawSpec {
            program: "nwr_retransmit",
            args: &[SOCK, SKB],
            optional: &["int"],
            members: &[
                SOCK_COMMON,
                "inet_sock.inet_sport",
                "inet_sock.inet_saddr",
                "sock_common.skc_state",
            ],
            members_with_optional: &[],
        }),
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
        raw: Some(RawSpec {
            program: "nwr_synack_rtx",
            args: &[SOCK, "struct request_sock *"],
            optional: &[],
            members: &[SOCK_COMMON],
            members_with_optional: &[],
        }),
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
        raw: Some(RawSpec {
            program: "nwr_recv_reset",
            args: &[SOCK],
            optional: &[],
            members: &ENDPOINTS,
            members_with_optional: &[],
        }),
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
        raw: Some(RawSpec {
            program: "nwr_send_reset",
            args: &[SOCK, SKB],
            optional: &["enum sk_rst_reason"],
            members: &[
                SOCK_COMMON,
                "inet_sock.inet_sport",
                "inet_sock.inet_saddr",
                "sock_common.skc_state",
            ],
            // Since 6.10: an IPv6 socket's source from inet6_sk(sk)->saddr, and the endpoints
            // of the segment when there is no full socket.
            members_with_optional: &[
                "inet_sock.pinet6",
                "ipv6_pinfo.saddr",
                "sk_buff.head",
                "sk_buff.data",
                "sk_buff.network_header",
            ],
        }),
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
        raw: Some(RawSpec {
            program: "nwr_destroy_sk",
            args: &[SOCK],
            optional: &[],
            members: &ENDPOINTS,
            members_with_optional: &[],
        }),
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
        // A raw program on `sys_exit` would run at every syscall of every process.
        raw: None,
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
        raw: None,
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
        raw: Some(RawSpec {
            program: "nwr_first_read",
            args: &[SOCK],
            optional: &[],
            // The owner's endpoints, as at accept(); the accept() walk's offsets are checked
            // for both paths (`Unusable::NoOffsets`).
            members: &[SOCK_COMMON],
            members_with_optional: &[],
        }),
    },
    ProgramSpec {
        program: "nw_first_send",
        system: "sock",
        event: "sock_send_length",
        global: names::FIRST_USE_FIELDS,
        layout: layout::sock_length_fields,
        feature: "code paths at a socket's first send (Linux 6.3+)",
        required: false,
        when: When::CodePaths,
        raw: Some(RawSpec {
            program: "nwr_first_send",
            args: &[SOCK, "int", "int"],
            optional: &[],
            members: &ENDPOINTS,
            members_with_optional: &[],
        }),
    },
    ProgramSpec {
        program: "nw_first_recv",
        system: "sock",
        event: "sock_recv_length",
        global: names::FIRST_USE_FIELDS,
        layout: layout::sock_length_fields,
        feature: "code paths at a socket's first receive (Linux 6.3+)",
        required: false,
        when: When::CodePaths,
        raw: Some(RawSpec {
            program: "nwr_first_recv",
            args: &[SOCK, "int", "int"],
            optional: &[],
            members: &ENDPOINTS,
            members_with_optional: &[],
        }),
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
    /// Capture the user stack at connect() and accept(): only the modes that show code paths
    /// ask for it (`NETWATCH_STACKS=0` switches it off there too).
    pub capture_stacks: bool,
    /// Learn the owner of an accepted socket at accept() itself, with its code path (`leaks`,
    /// `trace --stacks`), at the price of a syscall tracepoint; otherwise at its first read.
    pub owners_at_accept: bool,
    /// Entries of the kernel's per-socket map (`--max-sockets`): live sockets attributed at
    /// once, preallocated.
    pub max_sockets: u32,
    /// Raw or classic tracepoint programs (`NETWATCH_TRACEPOINTS`).
    pub tracepoints: TracepointMode,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        Self {
            ring_bytes: DEFAULT_RING_BYTES,
            filter: KernelFilter::ANY,
            capture_stacks: true,
            owners_at_accept: false,
            max_sockets: crate::model::tracker::DEFAULT_MAX_SOCKETS as u32,
            tracepoints: TracepointMode::Auto,
        }
    }
}

impl ProbeConfig {
    /// Whether to capture user stacks: yes unless `NETWATCH_STACKS=0`.
    pub fn stacks_from_env() -> bool {
        std::env::var_os("NETWATCH_STACKS").is_none_or(|v| v != "0")
    }
}

/// Which programs a TCP tracepoint gets, from `NETWATCH_TRACEPOINTS`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TracepointMode {
    /// The raw program where the kernel takes it, else the classic one (the default).
    #[default]
    Auto,
    /// Raw programs only: netwatch stops, saying why, where the kernel refuses one.
    Raw,
    /// Classic programs only (to compare, or to rule the raw path out).
    Classic,
}

/// The variable that chooses the [`TracepointMode`].
pub const TRACEPOINTS_ENV: &str = "NETWATCH_TRACEPOINTS";

impl TracepointMode {
    /// `auto` (or unset), `raw` or `classic`.
    pub fn parse(value: &str) -> Result<Self, String> {
        match value {
            "" | "auto" => Ok(Self::Auto),
            "raw" => Ok(Self::Raw),
            "classic" => Ok(Self::Classic),
            other => Err(format!(
                "{TRACEPOINTS_ENV}={other}: expected auto, raw or classic"
            )),
        }
    }

    /// From `NETWATCH_TRACEPOINTS`.
    pub fn from_env() -> anyhow::Result<Self> {
        match std::env::var(TRACEPOINTS_ENV) {
            Ok(v) => Self::parse(&v).map_err(|e| anyhow!(e)),
            Err(std::env::VarError::NotPresent) => Ok(Self::Auto),
            Err(e) => bail!("{TRACEPOINTS_ENV}: {e}"),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Raw => "raw",
            Self::Classic => "classic",
        }
    }
}

/// How a tracepoint's program is attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TracepointPath {
    /// `BPF_PROG_TYPE_RAW_TRACEPOINT`: the program gets the tracepoint's arguments.
    Raw,
    /// `BPF_PROG_TYPE_TRACEPOINT`: the kernel formats the record first.
    Classic,
}

impl TracepointPath {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Raw => "raw",
            Self::Classic => "classic",
        }
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

/// One attached program.
enum Link {
    Classic(&'static str, TracePointLinkId),
    Raw(&'static str, RawTracePointLinkId),
}

/// The loaded and attached programs.
pub struct Probe {
    ebpf: Ebpf,
    links: Vec<Link>,
    /// How each attached tracepoint's program is attached.
    paths: Vec<(&'static ProgramSpec, TracepointPath)>,
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
    /// The offsets its classic program reads, or why that program is not attached.
    pub fields: Result<TpFields, Unusable>,
    /// What a user loses, in one line, when its classic program cannot be attached.
    pub warning: Option<String>,
    /// Whether its raw program may be tried here (the verifier has the last word): `None`
    /// when it has none, else why not (no BTF, an argument list or a struct member netwatch
    /// does not know). Independent of [`TracepointMode`].
    pub raw: Option<Result<(), String>>,
}

impl Tracepoint {
    /// The tracepoint exists on this kernel (its format file says so); only then is either
    /// program attached.
    pub fn exists(&self) -> bool {
        !matches!(
            self.fields,
            Err(Unusable::Missing | Unusable::Unreadable(_))
        )
    }

    /// The raw program to try first under `mode`, or why the classic one is used: `Ok(None)`
    /// when there is no raw program or the mode asks for classic ones.
    pub fn raw_choice(&self, mode: TracepointMode) -> Result<Option<&'static str>, String> {
        let (Some(raw), Some(status)) = (&self.spec.raw, &self.raw) else {
            return Ok(None);
        };
        if mode == TracepointMode::Classic || !self.exists() {
            return Ok(None);
        }
        match status {
            Ok(()) => Ok(Some(raw.program)),
            Err(why) => Err(why.clone()),
        }
    }
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
    /// The raw tracepoints' argument counts, where they differ between kernels.
    pub raw_args: RawArgs,
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
                raw: None,
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
        let btf = Btf::for_netwatch();
        let offsets = offsets::read(btf.as_ref(), &mut warnings);
        let no_walk = offsets.offsets.task_files == netwatch_common::ABSENT32;
        let mut raw_args = RawArgs::OLDEST;
        for tp in &mut tracepoints {
            let owner_walk = matches!(tp.spec.program, "nw_accept" | "nw_first_read");
            if owner_walk && no_walk && tp.fields.is_ok() {
                tp.fields = Err(Unusable::NoOffsets);
            }
            let Some(raw) = &tp.spec.raw else { continue };
            let status = if owner_walk && no_walk {
                Err(Unusable::NoOffsets.to_string())
            } else {
                raw_status(raw, tp.spec.event, btf.as_ref().ok(), &offsets)
            };
            match (tp.spec.event, &status) {
                ("tcp_send_reset", Ok(n)) => raw_args.send_reset = *n,
                ("tcp_retransmit_skb", Ok(n)) => raw_args.retransmit_skb = *n,
                _ => {}
            }
            tp.raw = Some(status.map(|_| ()));
        }
        Self {
            tracepoints,
            globals,
            offsets: offsets.offsets,
            raw_args,
            decode,
            warnings,
        }
    }
}

/// Whether `raw`'s program can read the tracepoint `event` on this kernel: the arguments it
/// reads are the ones BTF's `btf_trace_<event>` prototype has, and BTF gave every struct
/// member it reads through them. `Ok` holds how many arguments the tracepoint takes.
fn raw_status(
    raw: &RawSpec,
    event: &str,
    btf: Option<&Btf>,
    offsets: &Offsets,
) -> Result<u32, String> {
    let btf = btf.ok_or_else(|| "the kernel has no BTF".to_owned())?;
    let args = btf.tracepoint_args(event).map_err(|e| e.to_string())?;
    let unqualified: Vec<String> = args
        .iter()
        .map(|a| a.replace("const ", "").replace("volatile ", ""))
        .collect();
    let known = raw.args.len() + raw.optional.len();
    let matches = unqualified.len() >= raw.args.len()
        && unqualified
            .iter()
            .take(known)
            .zip(raw.args.iter().chain(raw.optional))
            .all(|(have, want)| have == want);
    if !matches {
        return Err(format!(
            "its arguments here are ({}), not the ({}) {} reads",
            args.join(", "),
            raw.args.join(", "),
            raw.program
        ));
    }
    let with_optional = unqualified.len() > raw.args.len();
    let members: Vec<&str> = raw
        .members
        .iter()
        .chain(if with_optional {
            raw.members_with_optional
        } else {
            &[]
        })
        .copied()
        .collect();
    if let Some(missing) = offsets.first_missing(&members) {
        return Err(format!("BTF does not give {missing}"));
    }
    Ok(u32::try_from(args.len()).unwrap_or(u32::MAX))
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
        .override_global(names::RAW_ARGS, &layouts.raw_args, true)
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
        let mode = config.tracepoints;
        if let Some(tp) = layouts.tracepoints.iter().find(|tp| {
            tp.spec.required && tp.fields.is_err() && !matches!(tp.raw_choice(mode), Ok(Some(_)))
        }) {
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
        let mut warnings = layouts.warnings.clone();
        let mut links = Vec::new();
        let mut paths = Vec::new();
        for tp in &layouts.tracepoints {
            let spec = tp.spec;
            if !spec.when.applies(config) {
                continue;
            }
            if !tp.exists() {
                warnings.extend(tp.warning.clone());
                continue;
            }
            // The raw program first, where there is one and the mode allows it.
            let why_not_raw = match tp.raw_choice(mode) {
                Ok(None) => None,
                Ok(Some(program)) => match attach_raw(&mut ebpf, program, spec.event) {
                    Ok(link) => {
                        links.push(Link::Raw(program, link));
                        paths.push((spec, TracepointPath::Raw));
                        continue;
                    }
                    Err(e) => Some(e),
                },
                Err(why) => Some(anyhow!(why)),
            };
            if let Some(why) = &why_not_raw
                && mode == TracepointMode::Raw
            {
                bail!(
                    "{TRACEPOINTS_ENV}=raw, but {}:{} cannot have its raw tracepoint program: \
                     {why:#}",
                    spec.system,
                    spec.event
                );
            }
            let tracepoint = format!("{}:{}", spec.system, spec.event);
            if tp.fields.is_err() {
                if matches!(tp.fields, Err(Unusable::NoOffsets)) {
                    // Both programs need the accept() walk's offsets: the general BTF warning
                    // says what is lost.
                    continue;
                }
                // The classic program cannot run either: one line for both.
                match (&why_not_raw, &tp.warning) {
                    (Some(why), _) => warnings.push(format!(
                        "{tracepoint}: its raw tracepoint program is refused ({}) and its \
                         classic one {}: {} are not traced",
                        first_line(why),
                        tp.fields
                            .as_ref()
                            .err()
                            .map_or(String::new(), ToString::to_string),
                        spec.feature
                    )),
                    (None, warning) => warnings.extend(warning.clone()),
                }
                continue;
            }
            if let Some(why) = &why_not_raw {
                warnings.push(format!(
                    "{tracepoint}: the classic tracepoint is used, which costs more per event: \
                     the raw one is refused ({})",
                    first_line(why)
                ));
            }
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
                Ok(link) => {
                    links.push(Link::Classic(spec.program, link));
                    paths.push((spec, TracepointPath::Classic));
                }
                Err(e) => warnings.push(format!(
                    "cannot attach to {tracepoint} ({e}): {} are not traced",
                    spec.feature
                )),
            }
        }
        let KernelLayouts { decode, .. } = layouts;
        Ok(Self {
            ebpf,
            links,
            paths,
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

    /// How each attached tracepoint's program is attached, in [`PROGRAM_SPECS`] order.
    pub fn paths(&self) -> &[(&'static ProgramSpec, TracepointPath)] {
        &self.paths
    }

    /// Detaches every program: no event is produced after this returns.
    pub fn detach(&mut self) {
        for link in self.links.drain(..) {
            let (name, detached) = match link {
                Link::Classic(name, link) => (
                    name,
                    self.ebpf
                        .program_mut(name)
                        .and_then(|p| <&mut TracePoint>::try_from(p).ok())
                        .map(|p| p.detach(link)),
                ),
                Link::Raw(name, link) => (
                    name,
                    self.ebpf
                        .program_mut(name)
                        .and_then(|p| <&mut RawTracePoint>::try_from(p).ok())
                        .map(|p| p.detach(link)),
                ),
            };
            if let Some(Err(e)) = detached {
                log::warn!("detaching {name}: {e}");
            }
        }
    }
}

/// Loads the raw program `program` and attaches it to the raw tracepoint `event`; the error
/// says which step failed, the load's in the verifier's words.
fn attach_raw(
    ebpf: &mut Ebpf,
    program: &'static str,
    event: &str,
) -> anyhow::Result<RawTracePointLinkId> {
    let raw: &mut RawTracePoint = ebpf
        .program_mut(program)
        .ok_or_else(|| anyhow!("program {program} missing from the object"))?
        .try_into()
        .with_context(|| format!("{program} is not a raw tracepoint program"))?;
    if raw.fd().is_err() {
        raw.load().map_err(|e| load_error(program, e))?;
    }
    raw.attach(event)
        .with_context(|| format!("attaching {program} to the raw tracepoint {event}"))
}

/// A refused load: the verifier's explanation first (one line), its whole log after.
pub fn load_error(program: &str, e: ProgramError) -> anyhow::Error {
    let summary = crate::kernel::verifier::refusal(&e);
    anyhow::Error::new(e).context(format!("{program}: {summary}"))
}

/// An error chain on one line, without the verifier's whole log (the summary [`load_error`]
/// put in front of it says what the log says).
fn first_line(e: &anyhow::Error) -> String {
    let parts: Vec<String> = e
        .chain()
        .take_while(|cause| {
            !matches!(
                cause.downcast_ref::<ProgramError>(),
                Some(ProgramError::LoadError { .. })
            )
        })
        .map(ToString::to_string)
        .collect();
    parts
        .join(": ")
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracepoint_modes_parse_and_refuse_the_unknown() {
        assert_eq!(TracepointMode::parse(""), Ok(TracepointMode::Auto));
        assert_eq!(TracepointMode::parse("auto"), Ok(TracepointMode::Auto));
        assert_eq!(TracepointMode::parse("raw"), Ok(TracepointMode::Raw));
        assert_eq!(
            TracepointMode::parse("classic"),
            Ok(TracepointMode::Classic)
        );
        let e = TracepointMode::parse("Classic").unwrap_err();
        assert!(e.contains("expected auto, raw or classic"), "{e}");
    }

    fn raw_of(event: &str) -> &'static RawSpec {
        PROGRAM_SPECS
            .iter()
            .find(|s| s.event == event)
            .and_then(|s| s.raw.as_ref())
            .unwrap_or_else(|| panic!("no raw program for {event}"))
    }

    #[test]
    fn every_raw_program_fits_this_kernels_btf_and_misfits_are_named() {
        let Ok(btf) = Btf::from_sys_fs() else {
            crate::host::skip::skip("no /sys/kernel/btf/vmlinux here");
            return;
        };
        let mut warnings = Vec::new();
        let offsets = offsets::read(Ok(&btf), &mut warnings);
        for spec in PROGRAM_SPECS {
            if let Some(raw) = &spec.raw {
                let n = raw_status(raw, spec.event, Some(&btf), &offsets)
                    .unwrap_or_else(|e| panic!("{}: {e}", raw.program));
                assert!(n as usize >= raw.args.len(), "{}: {n}", raw.program);
            }
        }
        // Arguments other than the program reads: refused, both lists named.
        let wrong = RawSpec {
            program: "nwr_wrong",
            args: &["struct sk_buff *"],
            optional: &[],
            members: &[],
            members_with_optional: &[],
        };
        let e = raw_status(&wrong, "tcp_destroy_sock", Some(&btf), &offsets).unwrap_err();
        assert!(
            e.contains("(struct sock *)") && e.contains("(struct sk_buff *) nwr_wrong reads"),
            "{e}"
        );
        // A struct member BTF did not give: refused, the member named.
        let without = Offsets {
            missing: vec![("sock.sk_protocol", "gone".to_owned())],
            ..offsets.clone()
        };
        let e = raw_status(
            raw_of("inet_sock_set_state"),
            "inet_sock_set_state",
            Some(&btf),
            &without,
        )
        .unwrap_err();
        assert_eq!(e, "BTF does not give sock.sk_protocol: gone");
        // No BTF at all.
        assert_eq!(
            raw_status(
                raw_of("tcp_destroy_sock"),
                "tcp_destroy_sock",
                None,
                &offsets
            )
            .unwrap_err(),
            "the kernel has no BTF"
        );
    }
}
