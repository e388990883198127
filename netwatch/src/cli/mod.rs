//! The command line: what an SRE types, with examples in `--help`.
use std::{ops::RangeInclusive, time::Duration};

use clap::{Args, Parser, Subcommand};

use crate::kernel::probe::{DEFAULT_RING_BYTES, check_ring_bytes};
use crate::model::{
    event::Family,
    filter,
    selection::{ContainerSelection, Selection},
};
use crate::pipeline::record::{
    Target,
    rotate::{self, Limits},
};

/// Distinct peers labelled by default (`--max-peers`).
pub const DEFAULT_MAX_PEERS: usize = 100;
/// Distinct (comm, cgroup) label pairs by default (`--max-processes`).
pub const DEFAULT_MAX_PROCESSES: usize = 500;
/// How long a (comm, cgroup) label pair may go unseen before its series are removed
/// (`--label-ttl`).
pub const DEFAULT_LABEL_TTL: Duration = Duration::from_secs(600);

#[derive(Parser, Debug)]
#[command(args_conflicts_with_subcommands = true)]
#[command(
    name = "netwatch",
    version,
    disable_help_subcommand = true,
    about = "Trace every TCP state transition, with the process that really owns the socket",
    after_help = "Examples:\n  \
        netwatch                      # the live view, same as `netwatch top`\n  \
        netwatch trace -T             # wall-clock timestamps\n  \
        netwatch trace --json | jq 'select(.new_state == \"CLOSE_WAIT\")'\n  \
        netwatch trace --duration 30s -w > events.txt\n  \
        netwatch life                 # one line per finished connection\n  \
        netwatch report --duration 30s\n  \
        netwatch leaks --once             # sockets stuck in CLOSE_WAIT: who, where, since when\n  \
        netwatch life state time-wait '( dport = :5432 )'\n  \
        netwatch trace -p 4242 dst 10.0.0.0/8 and not dport = :22\n  \
        netwatch doctor               # what this kernel lets netwatch do\n  \
        netwatch help filters         # the filter grammar\n\n\
        Needs root (CAP_BPF and CAP_PERFMON). Ctrl-C stops and prints how many events were\n\
        seen and lost on stderr.\n\n\
        Environment:\n  \
        NETWATCH_TRACEPOINTS=classic  classic tracepoints only (default `auto`: raw tracepoints\n  \
        \x20                             where the kernel takes them, which cost less; `raw`: raw\n  \
        \x20                             ones or stop, saying why)\n  \
        NETWATCH_STACKS=0             no user stacks at connect() and accept() in the modes\n  \
        \x20                             that show code paths (trace --stacks, leaks)"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Without a subcommand, `netwatch` is `netwatch top`, with top's flags.
    #[command(flatten)]
    pub top: TopArgs,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Print one line per TCP event as it happens (like tcpstates, with the right owner)
    #[command(
        after_help = "Columns: TIME PID COMM LADDR:LPORT RADDR:RPORT EVENT MS_IN_OLD\n\
        EVENT is `OLD -> NEW` for a state transition, or RETRANSMIT, SYNACK_RETRANSMIT,\n\
        RESET_RECEIVED, RESET_SENT (with the kernel's reason), ACCEPT, DESTROY, or with\n\
        --stacks FIRST_SEND and FIRST_RECV (a socket's first send and receive), with the\n\
        socket's state. PID/COMM is `-` when the owner is not known (an accepted socket's\n\
        handshake, before accept() returns it): netwatch never names a softirq bystander.\n\n\
        Examples:\n  \
        netwatch trace\n  \
        netwatch trace -T -w\n  \
        netwatch trace -p 4242 -D 5432\n  \
        netwatch trace dst 10.0.0.0/8 and not dport = :22\n  \
        netwatch trace --json --duration 10s > events.jsonl"
    )]
    Trace(TraceArgs),
    /// One line per connection when it ends: owner, endpoints, lifetime, role, how it ended
    #[command(
        after_help = "Columns: PID COMM LADDR LPORT RADDR RPORT TX_KB RX_KB MS ROLE END\n\
        ROLE is active (we connected), passive (we accepted), or - (a socket older than the\n\
        trace). END is closed (the peer closed first), time-wait (we closed first: a TIME_WAIT\n\
        was born), reset-by-peer, reset-by-us (reason), refused, timeout, or aborted. --json\n\
        prints the full record: time in every state, connect latency, retransmissions and\n\
        resets.\n\n\
        Examples:\n  \
        netwatch life\n  \
        netwatch life --json | jq 'select(.end == \"refused\")'\n  \
        netwatch life state time-wait '( dport = :5432 )'\n  \
        netwatch life --record events.nwr --duration 5m"
    )]
    Life(LifeArgs),
    /// Watch for a while, then diagnose: TIME_WAIT churn and port exhaustion, CLOSE_WAIT leaks,
    /// failed connects, resets, retransmissions, lifetimes
    #[command(after_help = "Examples:\n  \
        netwatch report --duration 30s\n  \
        netwatch report                     # until Ctrl-C\n  \
        netwatch report --json --duration 1m | jq .findings\n  \
        netwatch report --close-wait-age 30s --close-wait-alarm 100\n  \
        netwatch report --comm nginx --duration 1m")]
    Report(ReportArgs),
    /// The live view (also plain `netwatch`): states, rates, TIME_WAIT and CLOSE_WAIT holders,
    /// failures, resets, retransmits; a plain-text summary per interval without a terminal
    #[command(
        after_help = "Keys: q or Esc quit; s cycles the sort (count, rate, name); p shows one\n\
        process (a pid, or part of a command name); c shows all again; Ctrl-C quits and prints\n\
        the report.\n\n\
        Examples:\n  \
        netwatch top\n  \
        netwatch top --interval 2s -D 5432\n  \
        netwatch top --duration 10s > summaries.txt   # not a terminal: plain text\n  \
        netwatch top --record top.nwr > summaries.txt # replay: netwatch analyze top.nwr --top"
    )]
    Top(TopArgs),
    /// Export Prometheus metrics (OpenMetrics text on /metrics, and /healthz) while tracing
    #[command(after_help = "Examples:\n  \
        netwatch serve                               # http://127.0.0.1:9750/metrics\n  \
        netwatch serve --listen 0.0.0.0:9750         # for a Prometheus elsewhere\n  \
        netwatch serve --peer-labels --max-peers 50  # connects and retransmits by peer\n  \
        netwatch serve -D 5432,6379\n  \
        netwatch serve --record serve.nwr            # later: netwatch analyze serve.nwr --metrics\n\n\
        Labels are bounded: comm and cgroup per process (at most --max-processes pairs, then\n\
        comm=\"other\"), peers only with --peer-labels (at most --max-peers, then peer=\"other\").")]
    Serve(ServeArgs),
    /// Sockets stuck in CLOSE_WAIT or FIN_WAIT2, grouped by process and the code path that
    /// opened them
    #[command(
        after_help = "Each group names the process holding the sockets (pid, command, cgroup),\n\
        how many are stuck and for how long, their peers and fds, and the user stack at the\n\
        connect() or accept() that opened them, when netwatch was running then (stacks need\n\
        frame pointers: see the README). Sockets stuck before netwatch started are found through\n\
        sock_diag (what `ss` uses) in every network namespace; their age is \"at least\".\n\n\
        Examples:\n  \
        netwatch leaks                        # live: a snapshot whenever the groups change\n  \
        netwatch leaks --once                 # what is stuck now, then exit (no tracing)\n  \
        netwatch leaks --min-age 2m --interval 30s\n  \
        netwatch leaks --record leaks.nwr     # replay later: netwatch analyze leaks.nwr --leaks\n  \
        netwatch leaks --once -p 4242 --min-age 0s\n  \
        netwatch leaks --json | jq '.groups[] | select(.sockets > 10) | {pid, comm, stack}'"
    )]
    Leaks(LeaksArgs),
    /// Replay a recording (from --record) offline, without root: the same output the live run gave
    #[command(after_help = "Examples:\n  \
        netwatch trace --record events.nwr --duration 1m   # on the host, as root\n  \
        netwatch analyze events.nwr                       # anywhere: the trace again\n  \
        netwatch analyze events.nwr --life\n  \
        netwatch analyze events.nwr --json                # the events as JSON lines\n  \
        netwatch analyze /var/lib/netwatch --report       # a --record-dir directory\n  \
        netwatch leaks --record leaks.nwr --duration 10m  # stuck sockets, with their snapshots\n  \
        netwatch analyze leaks.nwr --leaks --json         # the snapshots leaks printed\n  \
        netwatch top --record top.nwr > summaries.txt     # top's summaries, with their ticks\n  \
        netwatch analyze top.nwr --top                    # the same summaries again\n  \
        netwatch analyze serve.nwr --metrics              # /metrics at the recording's end\n  \
        netwatch analyze old.jsonl --record old.nwr       # rewrite an older recording")]
    Analyze(AnalyzeArgs),
    /// What this kernel lets netwatch do: kernel, BTF, tracefs, tracepoints, map types, and the
    /// verifier's answer on each program
    #[command(
        after_help = "Each line has a status and says what is lost without the item: ok, missing,\n\
        degraded (netwatch runs without it, with less), or rejected (the verifier refused it).\n\
        Exits 0 when netwatch can run here, degraded lines included; 1 when a program is rejected\n\
        or something it needs is missing (Linux 5.8, the ring buffer, sock:inet_sock_set_state).\n\
        The map and program checks need root; without it, doctor prints the rest and names the\n\
        missing capability. Programs are loaded as `netwatch trace` loads them, never attached.\n\
        Each tracepoint line names the program it gets: its raw tracepoint program where the\n\
        kernel takes it, else its classic one (NETWATCH_TRACEPOINTS=raw or classic forces one).\n\n\
        Examples:\n  \
        netwatch doctor\n  \
        netwatch doctor --json | jq '.checks[] | select(.status != \"ok\")'\n  \
        netwatch doctor --json | jq -r '.checks[] | select(.verifier_log) | .verifier_log'"
    )]
    Doctor(DoctorArgs),
    /// Help on a command, or on a topic: `netwatch help filters`
    Help {
        /// A subcommand (trace, life, report, top, serve, leaks, analyze, doctor, completions)
        /// or `filters`
        topic: Option<String>,
    },
    /// Print a shell completion script: netwatch completions bash > /etc/bash_completion.d/netwatch
    #[command(after_help = "Examples:\n  \
        netwatch completions bash > /etc/bash_completion.d/netwatch\n  \
        netwatch completions zsh > \"${fpath[1]}/_netwatch\"\n  \
        netwatch completions fish > ~/.config/fish/completions/netwatch.fish")]
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff); `cargo xtask man` writes it to target/man/netwatch.1
    #[command(hide = true)]
    Manpage,
}

#[derive(Args, Debug, Default, Clone)]
pub struct DoctorArgs {
    /// Print one JSON document: {kernel, floor, tracepoints, checks: [{name, kind, status,
    /// detail, verifier_log, path, program}], ok}
    #[arg(long)]
    pub json: bool,
}

/// How events and connections print.
#[derive(Args, Debug, Default, Clone)]
pub struct OutputArgs {
    /// Print JSON (one object per line; a report is one document); schema in the README
    #[arg(long)]
    pub json: bool,
    /// Wall-clock timestamps (HH:MM:SS.mmm, UTC) instead of seconds since start
    #[arg(short = 'T', long = "timestamp")]
    pub timestamp: bool,
    /// Wide address columns, for IPv6; trace and life also add CONTAINER and CGROUP columns
    #[arg(short = 'w', long)]
    pub wide: bool,
}

#[derive(Args, Debug, Default, Clone)]
pub struct LifeArgs {
    #[command(flatten)]
    pub output: OutputArgs,
    #[command(flatten)]
    pub filter: FilterArgs,
    #[command(flatten)]
    pub run: RunArgs,
    #[command(flatten)]
    pub tracker: TrackerArgs,
}

#[derive(Args, Debug, Default, Clone)]
pub struct ReportArgs {
    /// --json: one JSON document; -T: the run's wall-clock span in the header; -w: key
    /// columns wide enough for IPv6 endpoints
    #[command(flatten)]
    pub output: OutputArgs,
    #[command(flatten)]
    pub filter: FilterArgs,
    #[command(flatten)]
    pub run: RunArgs,
    #[command(flatten)]
    pub thresholds: ThresholdArgs,
    #[command(flatten)]
    pub tracker: TrackerArgs,
}

#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    /// Address to serve /metrics and /healthz on (`--listen` is the same flag)
    #[arg(
        long = "web.listen-address",
        visible_alias = "listen",
        value_name = "ADDR:PORT",
        default_value = "127.0.0.1:9750"
    )]
    pub listen: std::net::SocketAddr,
    /// Serve on the socket systemd passed (socket activation: LISTEN_FDS, LISTEN_PID)
    /// instead of binding --web.listen-address
    #[arg(long = "web.systemd-socket")]
    pub systemd_socket: bool,
    /// TLS and basic auth, from a web config file in the format of Prometheus exporters
    /// (tls_server_config: cert_file, key_file; basic_auth_users: bcrypt hashes)
    #[arg(long = "web.config.file", value_name = "FILE")]
    pub web_config_file: Option<std::path::PathBuf>,
    /// Label connects and retransmits with the peer (remote address)
    #[arg(long)]
    pub peer_labels: bool,
    /// Most peers labelled; later ones count under peer="other"
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_PEERS)]
    pub max_peers: usize,
    /// Most live (comm, cgroup) label pairs; later ones count under comm="other"
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_PROCESSES)]
    pub max_processes: usize,
    /// Remove the series of a (comm, cgroup) pair not seen for this long (no connection of
    /// its ended, no socket of its in CLOSE_WAIT or TIME_WAIT)
    #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = parse_duration)]
    pub label_ttl: Duration,
    #[command(flatten)]
    pub filter: FilterArgs,
    #[command(flatten)]
    pub run: RunArgs,
    #[command(flatten)]
    pub tracker: TrackerArgs,
}

#[derive(Args, Debug, Clone)]
pub struct AnalyzeArgs {
    /// A recording written by `--record`, or a `--record-dir` directory (one run's files)
    #[arg(value_name = "FILE|DIR")]
    pub file: std::path::PathBuf,
    /// Write the replayed recording to FILE, in the current binary format (converts a
    /// JSON-lines recording)
    #[arg(long, value_name = "FILE")]
    pub record: Option<std::path::PathBuf>,
    /// Print connection lines, as `netwatch life` does
    #[arg(long, conflicts_with = "report")]
    pub life: bool,
    /// Print the diagnosis, as `netwatch report` does
    #[arg(long)]
    pub report: bool,
    /// Print the stuck-socket snapshots a `netwatch leaks --record` run took, as it printed
    /// them (-p and --comm select holders, as in `leaks`)
    #[arg(long, conflicts_with_all = ["life", "report"])]
    pub leaks: bool,
    /// With --leaks: show sockets stuck at least this long (default: what the live run showed)
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, requires = "leaks")]
    pub min_age: Option<Duration>,
    /// Print the plain-text summaries a `netwatch top --record` run printed without a
    /// terminal, at the moments it printed them (give the live run's verdict thresholds)
    #[arg(long, conflicts_with_all = ["life", "report", "leaks", "json"])]
    pub top: bool,
    /// Print the Prometheus exposition a `netwatch serve --record` run's /metrics would have
    /// answered at the recording's end, label caps at their defaults (netwatch_build_info names
    /// this netwatch, not the live one)
    #[arg(long, conflicts_with_all = ["life", "report", "leaks", "top", "json"])]
    pub metrics: bool,
    #[command(flatten)]
    pub output: OutputArgs,
    #[command(flatten)]
    pub thresholds: ThresholdArgs,
    #[command(flatten)]
    pub tracker: TrackerArgs,
    #[command(flatten)]
    pub filter: FilterArgs,
}

/// Verdict thresholds: the field notes' rules of thumb as defaults.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Verdicts")]
pub struct ThresholdArgs {
    /// A socket in CLOSE_WAIT longer than this counts as stuck
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub close_wait_age: Duration,
    /// This many stuck CLOSE_WAIT sockets in one process is an alarm
    #[arg(long, default_value_t = 50)]
    pub close_wait_alarm: usize,
    /// This many TIME_WAIT sockets is an alarm (port-exhaustion risk)
    #[arg(long, default_value_t = 10_000)]
    pub time_wait_alarm: u64,
}

impl Default for ThresholdArgs {
    fn default() -> Self {
        Self {
            close_wait_age: Duration::from_secs(5),
            close_wait_alarm: 50,
            time_wait_alarm: 10_000,
        }
    }
}

#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Tracker")]
pub struct TrackerArgs {
    /// Most live sockets followed at once: sizes the kernel's owner map (preallocated, 128
    /// bytes each: 32 MiB at the default) and the tracker; past it the kernel counts the
    /// sockets it cannot attribute and the tracker evicts the least recently active (counted)
    #[arg(long, default_value_t = crate::model::tracker::DEFAULT_MAX_SOCKETS, value_parser = parse_max_sockets)]
    pub max_sockets: usize,
}

/// At least one socket, at most 16 M (2 GiB of kernel memory).
fn parse_max_sockets(s: &str) -> Result<usize, String> {
    const MAX: usize = 16 << 20;
    match s.parse::<usize>() {
        Ok(n) if (1..=MAX).contains(&n) => Ok(n),
        _ => Err(format!("`{s}` is not a socket count from 1 to {MAX}")),
    }
}

impl Default for TrackerArgs {
    fn default() -> Self {
        Self {
            max_sockets: crate::model::tracker::DEFAULT_MAX_SOCKETS,
        }
    }
}

/// What to watch: BCC-style flags and an `ss`-style filter expression.
#[derive(Args, Debug, Default, Clone)]
#[command(next_help_heading = "Filters (see `netwatch help filters`)")]
pub struct FilterArgs {
    /// Only sockets owned by PID (repeat, or comma-separate: -p 10,11); decided in the kernel
    #[arg(short = 'p', long = "pid", value_name = "PID", value_delimiter = ',')]
    pub pids: Vec<u32>,
    /// Only these local ports: 80, 8000-8080, 22,443; decided in the kernel
    #[arg(short = 'L', long = "localport", value_name = "PORTS", value_parser = parse_ports)]
    pub local_ports: Vec<Vec<std::ops::RangeInclusive<u16>>>,
    /// Only these remote ports: 5432, 1-1023; decided in the kernel
    #[arg(short = 'D', long = "remoteport", value_name = "PORTS", value_parser = parse_ports)]
    pub remote_ports: Vec<Vec<std::ops::RangeInclusive<u16>>>,
    /// IPv4 only
    #[arg(short = '4', long = "ipv4", conflicts_with = "ipv6")]
    pub ipv4: bool,
    /// IPv6 only
    #[arg(short = '6', long = "ipv6")]
    pub ipv6: bool,
    /// Only sockets whose owner's command name is NAME
    #[arg(long, value_name = "NAME")]
    pub comm: Option<String>,
    /// Only sockets whose owner is in this cgroup (v2 path, e.g. /system.slice/nginx.service)
    #[arg(long, value_name = "PATH")]
    pub cgroup: Option<std::path::PathBuf>,
    /// Only sockets whose owner runs in a pod of this Kubernetes namespace (the
    /// io.kubernetes.pod.namespace label); decided in user space
    #[arg(long = "k8s-namespace", value_name = "NAMESPACE", value_parser = parse_k8s_namespace)]
    pub k8s_namespace: Option<String>,
    /// Only sockets whose owner runs in this Kubernetes pod (io.kubernetes.pod.name);
    /// decided in user space
    #[arg(long, value_name = "POD", value_parser = parse_pod)]
    pub pod: Option<String>,
    /// Only sockets whose owner runs in this container: its name (Kubernetes' container name
    /// in a pod), or its id (12 or more digits); decided in user space
    #[arg(long, value_name = "NAME|ID", value_parser = parse_container)]
    pub container: Option<String>,
    /// An ss-style filter: state close-wait '( dport = :80 or dport = :443 )' dst 10.0.0.0/8
    #[arg(
        value_name = "FILTER",
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    pub filter: Vec<String>,
}

#[derive(Args, Debug, Clone)]
pub struct LeaksArgs {
    /// Print what is stuck now and exit: no tracing (no code paths), no BPF privileges needed
    #[arg(long)]
    pub once: bool,
    /// One JSON object per snapshot, one per line (every --interval); schema in the README
    #[arg(long)]
    pub json: bool,
    /// Show sockets stuck at least this long
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub min_age: Duration,
    /// Take a snapshot this often; text prints only when the groups change
    #[arg(long, default_value = "5s", value_parser = parse_interval)]
    pub interval: Duration,
    /// Only sockets held by PID (repeat, or comma-separate: -p 10,11)
    #[arg(short = 'p', long = "pid", value_name = "PID", value_delimiter = ',')]
    pub pids: Vec<u32>,
    /// Only sockets held by a process with this command name
    #[arg(long, value_name = "NAME")]
    pub comm: Option<String>,
    #[command(flatten)]
    pub run: RunArgs,
    #[command(flatten)]
    pub tracker: TrackerArgs,
}

#[derive(Args, Debug, Default, Clone)]
pub struct TraceArgs {
    #[command(flatten)]
    pub output: OutputArgs,
    /// Code paths. With --json: the symbolized user stack (`stack`) that opened the socket on
    /// `accept` and `CLOSE -> SYN_SENT` events, and `first_use` events (a socket's first send
    /// and first receive) with theirs
    #[arg(long)]
    pub stacks: bool,
    #[command(flatten)]
    pub filter: FilterArgs,
    #[command(flatten)]
    pub run: RunArgs,
    #[command(flatten)]
    pub tracker: TrackerArgs,
}

/// Options every live command shares.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Run")]
pub struct RunArgs {
    /// Stop after this long (e.g. 30s, 5m, 1h); default: until Ctrl-C or SIGTERM
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Ring-buffer size in bytes (power of two); larger survives longer stalls
    #[arg(long, default_value_t = DEFAULT_RING_BYTES, value_parser = parse_ring_size)]
    pub ring_size: u32,
    /// Also write the raw event stream to FILE (compact binary), for `netwatch analyze`
    #[arg(long, value_name = "FILE", conflicts_with = "record_dir")]
    pub record: Option<std::path::PathBuf>,
    /// Record into files in DIR, rotated by size and age, stopping (never deleting) at
    /// --record-max-total
    #[arg(long, value_name = "DIR")]
    pub record_dir: Option<std::path::PathBuf>,
    /// --record-dir: open the next file before one passes this size (e.g. 64MiB; at least 1MiB)
    #[arg(long, value_name = "SIZE", default_value = "64MiB", value_parser = parse_file_size, requires = "record_dir")]
    pub record_max_file_size: u64,
    /// --record-dir: open the next file once one is this old
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = parse_duration, requires = "record_dir")]
    pub record_max_age: Duration,
    /// --record-dir: stop recording (the run goes on, counting what it leaves out) before the
    /// directory's recordings, older runs' included, pass this size
    #[arg(long, value_name = "SIZE", default_value = "1GiB", value_parser = parse_size, requires = "record_dir")]
    pub record_max_total: u64,
}

impl Default for RunArgs {
    fn default() -> Self {
        let limits = Limits::default();
        Self {
            duration: None,
            ring_size: DEFAULT_RING_BYTES,
            record: None,
            record_dir: None,
            record_max_file_size: limits.max_file,
            record_max_age: limits.max_age,
            record_max_total: limits.max_total,
        }
    }
}

impl RunArgs {
    /// Where `--record` or `--record-dir` write, if anywhere.
    pub fn record_target(&self) -> Option<Target> {
        if let Some(file) = &self.record {
            return Some(Target::File(file.clone()));
        }
        self.record_dir.as_ref().map(|dir| Target::Dir {
            dir: dir.clone(),
            limits: Limits {
                max_file: self.record_max_file_size,
                max_age: self.record_max_age,
                max_total: self.record_max_total,
            },
        })
    }
}

/// `64MiB`, `1GiB`, `500KiB`, `1G`, `10MB`, or plain bytes: binary multiples either way.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let bad = || format!("`{s}` is not a size (e.g. 64MiB, 1GiB, 4194304)");
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| bad())?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => return Err(bad()),
    };
    n.checked_mul(1 << shift).ok_or_else(bad)
}

fn parse_file_size(s: &str) -> Result<u64, String> {
    let n = parse_size(s)?;
    if n < rotate::MIN_FILE {
        return Err(format!(
            "{s} is smaller than a file's largest block and its end: use at least 1MiB"
        ));
    }
    Ok(n)
}

fn parse_ring_size(s: &str) -> Result<u32, String> {
    let n: u32 = s
        .parse()
        .map_err(|_| format!("`{s}` is not a byte count (e.g. 4194304)"))?;
    check_ring_bytes(n)
}

/// `500ms`, `30s`, `5m`, `1h`, or plain seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map_or((s, "s"), |i| s.split_at(i));
    let n: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration (e.g. 500ms, 30s, 5m, 1h)"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => {
            return Err(format!(
                "unknown unit `{unit}` in `{s}` (use ms, s, m or h)"
            ));
        }
    };
    Ok(Duration::from_secs_f64(secs))
}

/// A refresh or snapshot interval: at least the stream's drain interval (a view cannot be
/// fresher than the events it is made of).
pub fn parse_interval(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d < crate::pipeline::stream::DRAIN_INTERVAL {
        return Err(format!(
            "the interval must be at least {} ms, got `{s}`",
            crate::pipeline::stream::DRAIN_INTERVAL.as_millis()
        ));
    }
    Ok(d)
}

/// `80`, `8000-8080`, `22,443,8000-8080`.
/// A Kubernetes namespace (an RFC 1123 label: at most 63 lowercase letters, digits and `-`,
/// starting and ending with a letter or digit).
pub fn parse_k8s_namespace(s: &str) -> Result<String, String> {
    k8s_name(s, 63, false, "a Kubernetes namespace")
}

/// A Kubernetes pod name (an RFC 1123 subdomain: at most 253 lowercase letters, digits, `-`
/// and `.`, starting and ending with a letter or digit).
pub fn parse_pod(s: &str) -> Result<String, String> {
    k8s_name(s, 253, true, "a Kubernetes pod name")
}

fn k8s_name(s: &str, max: usize, dots: bool, what: &str) -> Result<String, String> {
    let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    let ok = !s.is_empty()
        && s.len() <= max
        && s.chars().all(|c| alnum(c) || c == '-' || dots && c == '.')
        && s.starts_with(alnum)
        && s.ends_with(alnum);
    if ok {
        return Ok(s.to_string());
    }
    let allowed = if dots { ", `-` and `.`" } else { " and `-`" };
    Err(format!(
        "`{s}` is not {what}: at most {max} lowercase letters, digits{allowed}, starting and \
         ending with a letter or digit"
    ))
}

/// A container name (Docker's and podman's rule, which Kubernetes' names also follow:
/// letters, digits, `_`, `.` and `-`, starting with a letter or digit) or id.
pub fn parse_container(s: &str) -> Result<String, String> {
    let ok = s.len() <= 253
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!(
            "`{s}` is not a container name or id: letters, digits, `_`, `.` and `-`, \
             starting with a letter or digit"
        ))
    }
}

pub fn parse_ports(s: &str) -> Result<Vec<RangeInclusive<u16>>, String> {
    s.split(',')
        .map(|part| {
            let num = |t: &str| {
                t.trim()
                    .parse::<u16>()
                    .map_err(|_| format!("`{t}` in `{s}` is not a port (0-65535)"))
            };
            match part.split_once('-') {
                Some((lo, hi)) => {
                    let (lo, hi) = (num(lo)?, num(hi)?);
                    if lo > hi {
                        return Err(format!("range `{part}` in `{s}` runs backwards"));
                    }
                    Ok(lo..=hi)
                }
                None => num(part).map(|p| p..=p),
            }
        })
        .collect()
}

/// The cgroup v2 id of a cgroup path: the inode number of its directory.
impl FilterArgs {
    /// Nothing asked for.
    pub fn is_empty(&self) -> bool {
        self.to_args().is_empty()
    }

    /// These flags and the expression as command-line words, to store in a recording: what
    /// `from_args` turns back into the same filter.
    pub fn to_args(&self) -> Vec<String> {
        let ranges = |rs: &[std::ops::RangeInclusive<u16>]| {
            rs.iter()
                .map(|r| {
                    if r.start() == r.end() {
                        r.start().to_string()
                    } else {
                        format!("{}-{}", r.start(), r.end())
                    }
                })
                .collect::<Vec<_>>()
                .join(",")
        };
        let mut out = Vec::new();
        for p in &self.pids {
            out.extend(["-p".to_string(), p.to_string()]);
        }
        for l in &self.local_ports {
            out.extend(["-L".to_string(), ranges(l)]);
        }
        for d in &self.remote_ports {
            out.extend(["-D".to_string(), ranges(d)]);
        }
        if self.ipv4 {
            out.push("-4".into());
        }
        if self.ipv6 {
            out.push("-6".into());
        }
        if let Some(c) = &self.comm {
            out.extend(["--comm".to_string(), c.clone()]);
        }
        if let Some(c) = &self.cgroup {
            out.extend(["--cgroup".to_string(), c.display().to_string()]);
        }
        for (flag, value) in [
            ("--k8s-namespace", &self.k8s_namespace),
            ("--pod", &self.pod),
            ("--container", &self.container),
        ] {
            if let Some(v) = value {
                out.extend([flag.to_string(), v.clone()]);
            }
        }
        out.extend(self.filter.iter().cloned());
        out
    }

    /// The filter that [`FilterArgs::to_args`] wrote.
    pub fn from_args(words: &[String]) -> anyhow::Result<Self> {
        #[derive(Parser)]
        struct Only {
            #[command(flatten)]
            filter: FilterArgs,
        }
        let only = Only::try_parse_from(
            std::iter::once("netwatch").chain(words.iter().map(String::as_str)),
        )
        .map_err(|e| anyhow::anyhow!("the recording's filter {words:?} does not parse: {e}"))?;
        Ok(only.filter)
    }

    /// The selection these flags and the expression make, checked before anything is
    /// attached: a bad port, expression or cgroup path is an error naming the token.
    pub fn selection(&self) -> anyhow::Result<Selection> {
        if let Some(word) = self.filter.iter().find(|w| w.starts_with('-')) {
            anyhow::bail!(misplaced_option(word));
        }
        if let Some(first) = self.filter.first() {
            use clap::CommandFactory as _;
            if Cli::command().find_subcommand(first).is_some() {
                anyhow::bail!(
                    "'{first}' is a subcommand, but it comes after options of plain `netwatch`: \
                     put it first (`netwatch {first} [OPTIONS]`)"
                );
            }
        }
        Ok(Selection {
            pids: self.pids.clone(),
            local_ports: self.local_ports.iter().flatten().cloned().collect(),
            remote_ports: self.remote_ports.iter().flatten().cloned().collect(),
            family: if self.ipv4 {
                Some(Family::Ipv4)
            } else if self.ipv6 {
                Some(Family::Ipv6)
            } else {
                None
            },
            comm: self.comm.clone(),
            cgroup_id: self
                .cgroup
                .as_deref()
                .map(crate::host::cgroup::id_of_path)
                .transpose()
                .map_err(anyhow::Error::msg)?,
            containers: (self.k8s_namespace.is_some()
                || self.pod.is_some()
                || self.container.is_some())
            .then(|| ContainerSelection {
                namespace: self.k8s_namespace.clone(),
                pod: self.pod.clone(),
                container: self.container.clone(),
                names: crate::host::containers::owner_container,
            }),
            expr: filter::parse_args(&self.filter)?,
        })
    }
}

/// The error for a word of the filter expression that looks like an option. Every word after
/// the first word of an expression belongs to it, so a real option there is misplaced, and
/// anything else is unknown (with the nearest option, when one is close).
fn misplaced_option(word: &str) -> String {
    use clap::CommandFactory as _;
    let cli = Cli::command();
    let mut known: Vec<String> = Vec::new();
    for cmd in std::iter::once(&cli).chain(cli.get_subcommands()) {
        for arg in cmd.get_arguments() {
            known.extend(arg.get_long().map(|l| format!("--{l}")));
            known.extend(arg.get_short().map(|s| format!("-{s}")));
        }
    }
    let name = word.split_once('=').map_or(word, |(n, _)| n);
    if known.iter().any(|k| k == name) {
        return format!(
            "'{word}' is an option, but it comes after the filter expression, whose words it \
             would join: put options first (`netwatch trace --json state established`)"
        );
    }
    let names: Vec<&str> = known.iter().map(String::as_str).collect();
    match filter::closest(name, &names) {
        Some(near) => format!("unknown option '{word}' (did you mean '{near}'?)"),
        None => format!("unknown option '{word}'; `netwatch help` lists the options"),
    }
}

/// `netwatch top` (and plain `netwatch`).
#[derive(Args, Debug, Clone)]
pub struct TopArgs {
    /// How often the view refreshes; without a terminal, how often a summary prints
    #[arg(long, default_value = "1s", value_parser = parse_interval)]
    pub interval: Duration,
    #[command(flatten)]
    pub filter: FilterArgs,
    #[command(flatten)]
    pub run: RunArgs,
    // --close-wait-age also sets the CLOSE_WAIT holders. "stuck" column
    #[command(flatten)]
    pub thresholds: ThresholdArgs,
    #[command(flatten)]
    pub tracker: TrackerArgs,
}

impl Default for TopArgs {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(1),
            filter: FilterArgs::default(),
            run: RunArgs::default(),
            thresholds: ThresholdArgs::default(),
            tracker: TrackerArgs::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::model::{event::TcpState, selection::tests::event};
    use netwatch_common::AF_INET;

    fn sel(args: &[&str]) -> Selection {
        use clap::Parser as _;
        let cli = Cli::try_parse_from(["netwatch", "trace"].iter().chain(args).copied())
            .unwrap_or_else(|e| panic!("{e}"));
        let Some(Command::Trace(t)) = cli.command else {
            panic!("trace")
        };
        t.filter.selection().unwrap()
    }

    #[test]
    fn ports_lists_and_ranges() {
        assert_eq!(parse_ports("80"), Ok(vec![80..=80]));
        assert_eq!(parse_ports("22,8000-8080"), Ok(vec![22..=22, 8000..=8080]));
        assert_eq!(
            parse_ports("9-1").unwrap_err(),
            "range `9-1` in `9-1` runs backwards"
        );
        assert_eq!(
            parse_ports("http").unwrap_err(),
            "`http` in `http` is not a port (0-65535)"
        );
    }

    #[test]
    fn flags_and_expression_combine() {
        let s = sel(&["-p", "42", "-D", "5432", "state", "close-wait"]);
        assert!(s.event(&event(42, 40000, 5432, TcpState::CloseWait)));
        assert!(!s.event(&event(43, 40000, 5432, TcpState::CloseWait)));
        assert!(!s.event(&event(42, 40000, 5433, TcpState::CloseWait)));
        assert!(!s.event(&event(42, 40000, 5432, TcpState::Established)));
        let k = s.kernel();
        assert_eq!((k.n_pids, k.pids[0]), (1, 42));
        assert_eq!((k.n_remote_ports, k.remote_ports[0]), (1, [5432, 5432]));
        assert_eq!(k.n_local_ports, 0);
    }

    #[test]
    fn expression_ports_go_to_the_kernel() {
        let s = sel(&["( dport = :80 or dport = :443 )"]);
        let k = s.kernel();
        assert_eq!(k.n_remote_ports, 2);
        assert_eq!(&k.remote_ports[..2], &[[80, 80], [443, 443]]);
        let s = sel(&["-4", "dst", "10.0.0.0/8", "and", "not", "dport", "=", ":22"]);
        let k = s.kernel();
        assert_eq!(k.family, AF_INET);
        assert_eq!(&k.remote_ports[..2], &[[0, 21], [23, 65535]]);
        assert!(s.event(&event(1, 1, 80, TcpState::Established)));
        assert!(!s.event(&event(1, 1, 22, TcpState::Established)));
    }

    #[test]
    fn a_bad_expression_names_the_token_and_column() {
        use clap::Parser as _;
        let cli = Cli::try_parse_from(["netwatch", "trace", "dport", "=", "80x"]).unwrap();
        let Some(Command::Trace(t)) = cli.command else {
            panic!()
        };
        let err = t.filter.selection().unwrap_err().to_string();
        assert_eq!(err, "expected ':PORT' after 'dport =' at column 9");
    }

    #[test]
    fn an_option_in_the_expression_is_named_as_an_option() {
        let err = |args: &[&str]| {
            let cli = Cli::try_parse_from(["netwatch", "trace"].iter().chain(args).copied())
                .unwrap_or_else(|e| panic!("{e}"));
            let Some(Command::Trace(t)) = cli.command else {
                panic!("trace")
            };
            t.filter.selection().unwrap_err().to_string()
        };
        assert_eq!(
            err(&["--jsn"]),
            "unknown option '--jsn' (did you mean '--json'?)"
        );
        assert!(
            err(&["state", "established", "--json"])
                .starts_with("'--json' is an option, but it comes after the filter expression"),
            "{}",
            err(&["state", "established", "--json"])
        );
        assert!(err(&["--zzzzzz"]).starts_with("unknown option '--zzzzzz';"));
    }

    #[test]
    fn plain_netwatch_takes_the_flags_of_top() {
        let cli = Cli::try_parse_from(["netwatch", "-L", "80", "--interval", "2s"]).unwrap();
        assert!(cli.command.is_none());
        assert_eq!(cli.top.interval, Duration::from_secs(2));
        assert_eq!(cli.top.filter.local_ports, vec![vec![80..=80]]);
        let cli = Cli::try_parse_from(["netwatch", "state", "close-wait"]).unwrap();
        assert!(cli.command.is_none());
        assert_eq!(cli.top.filter.filter, ["state", "close-wait"]);
        // A subcommand still wins, with its own flags.
        let cli = Cli::try_parse_from(["netwatch", "trace", "--json", "-L", "80"]).unwrap();
        assert!(matches!(cli.command, Some(Command::Trace(_))));
        // Top's flags before a subcommand: the subcommand is not taken for a filter word.
        let cli = Cli::try_parse_from(["netwatch", "-L", "80", "trace"]).unwrap();
        let err = cli.top.filter.selection().unwrap_err().to_string();
        assert!(err.starts_with("'trace' is a subcommand"), "{err}");
    }

    #[test]
    fn a_filter_survives_the_trip_through_a_recording() {
        let cli = Cli::try_parse_from([
            "netwatch",
            "trace",
            "-p",
            "7,8",
            "-L",
            "80,8000-8080",
            "-D",
            "5432",
            "-4",
            "--comm",
            "nginx",
            "--cgroup",
            "/a.slice",
            "--k8s-namespace",
            "prod",
            "--pod",
            "shop-7f",
            "--container",
            "web",
            "state",
            "close-wait",
        ])
        .unwrap();
        let Some(Command::Trace(t)) = cli.command else {
            panic!("trace")
        };
        let words = t.filter.to_args();
        let back = FilterArgs::from_args(&words).unwrap();
        assert_eq!(back.to_args(), words);
        assert_eq!(back.pids, [7, 8]);
        assert_eq!(back.local_ports, vec![vec![80..=80, 8000..=8080]]);
        assert_eq!(back.filter, ["state", "close-wait"]);
        assert_eq!(
            (
                back.k8s_namespace.as_deref(),
                back.pod.as_deref(),
                back.container.as_deref()
            ),
            (Some("prod"), Some("shop-7f"), Some("web"))
        );
        assert!(!back.is_empty());
        assert!(FilterArgs::default().is_empty());
    }

    #[test]
    fn container_flags_take_kubernetes_names_and_name_a_bad_token() {
        use clap::Parser as _;
        let s = sel(&[
            "--k8s-namespace",
            "prod",
            "--pod",
            "shop-7f.v2",
            "--container",
            "web_1",
        ]);
        let c = s.containers.expect("container flags select");
        assert_eq!(
            (
                c.namespace.as_deref(),
                c.pod.as_deref(),
                c.container.as_deref()
            ),
            (Some("prod"), Some("shop-7f.v2"), Some("web_1"))
        );
        assert!(sel(&[]).containers.is_none());
        for (flag, bad) in [
            ("--k8s-namespace", "Prod"),
            ("--k8s-namespace", "a.b"),
            ("--k8s-namespace", "-x"),
            ("--k8s-namespace", ""),
            ("--pod", "shop_7f"),
            ("--pod", "shop-"),
            ("--container", "we b"),
            ("--container", "-web"),
            ("--container", ""),
        ] {
            let err = Cli::try_parse_from(["netwatch", "life", flag, bad])
                .unwrap_err()
                .to_string();
            assert!(err.contains(&format!("'{bad}'")), "{flag} {bad}: {err}");
            assert!(err.contains(flag), "{flag} {bad}: {err}");
            if !bad.is_empty() {
                assert!(
                    err.contains(&format!("`{bad}` is not")),
                    "{flag} {bad}: {err}"
                );
            }
        }
        let long = "a".repeat(64);
        assert!(parse_k8s_namespace(&long).is_err());
        assert!(parse_pod(&long).is_ok());
    }

    #[test]
    fn leaks_takes_no_port_filter_and_says_which_flag() {
        let err = Cli::try_parse_from(["netwatch", "leaks", "-L", "80"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("'-L'"), "{err}");
        assert!(Cli::try_parse_from(["netwatch", "leaks", "-p", "7", "--comm", "nginx"]).is_ok());
    }

    #[test]
    fn analyze_leaks_takes_min_age_and_holders_and_no_other_view() {
        let parse = |args: &[&str]| {
            Cli::try_parse_from([&["netwatch", "analyze", "f.nwr"][..], args].concat())
        };
        let Command::Analyze(a) = parse(&["--leaks", "--min-age", "5m", "-p", "7"])
            .expect("parses")
            .command
            .expect("a command")
        else {
            panic!("not analyze")
        };
        assert!(a.leaks);
        assert_eq!(a.min_age, Some(Duration::from_secs(300)));
        assert_eq!(a.filter.pids, [7]);
        assert!(parse(&["--leaks", "--life"]).is_err());
        assert!(parse(&["--leaks", "--report"]).is_err());
        let err = parse(&["--min-age", "5m"]).unwrap_err().to_string();
        assert!(err.contains("--leaks"), "{err}");
    }

    #[test]
    fn analyze_top_is_a_view_of_its_own() {
        let parse = |args: &[&str]| {
            Cli::try_parse_from([&["netwatch", "analyze", "f.nwr"][..], args].concat())
        };
        assert!(parse(&["--top", "-p", "7", "--close-wait-age", "2s"]).is_ok());
        for other in ["--life", "--report", "--leaks", "--json", "--metrics"] {
            assert!(parse(&["--top", other]).is_err(), "--top with {other}");
        }
        assert!(parse(&["--metrics", "--report"]).is_err());
    }

    #[test]
    fn intervals_are_at_least_the_drain_interval() {
        assert_eq!(parse_interval("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_interval("50ms"), Ok(Duration::from_millis(50)));
        let e = parse_interval("0s").unwrap_err();
        assert!(e.contains("`0s`") && e.contains("50 ms"), "{e}");
        assert!(parse_interval("x").unwrap_err().contains("`x`"));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert!(
            parse_duration("5x")
                .unwrap_err()
                .contains("unknown unit `x`")
        );
        assert!(
            parse_duration("abc")
                .unwrap_err()
                .contains("`abc` is not a duration")
        );
    }

    #[test]
    fn cli_parses_trace_flags() {
        let cli = Cli::try_parse_from(["netwatch", "trace", "-T", "-w", "--json"]).unwrap();
        let Some(Command::Trace(t)) = cli.command else {
            panic!("expected trace")
        };
        assert!(t.output.timestamp && t.output.wide && t.output.json);
        assert_eq!(t.run.ring_size, DEFAULT_RING_BYTES);
    }

    #[test]
    fn bad_ring_size_names_the_value() {
        let err = Cli::try_parse_from(["netwatch", "trace", "--ring-size", "5000"]).unwrap_err();
        assert!(err.to_string().contains("got 5000"), "{err}");
    }

    #[test]
    fn completions_know_every_subcommand_and_filter_flag() {
        use clap::CommandFactory;
        for shell in [
            clap_complete::Shell::Bash,
            clap_complete::Shell::Zsh,
            clap_complete::Shell::Fish,
        ] {
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "netwatch", &mut out);
            let script = String::from_utf8(out).unwrap();
            for word in [
                "trace",
                "life",
                "report",
                "analyze",
                "doctor",
                "remoteport",
                "localport",
            ] {
                assert!(script.contains(word), "{shell:?} completion lacks {word}");
            }
        }
    }

    #[test]
    fn cli_parses_doctor() {
        let cli = Cli::try_parse_from(["netwatch", "doctor", "--json"]).unwrap();
        let Some(Command::Doctor(d)) = cli.command else {
            panic!("expected doctor")
        };
        assert!(d.json);
    }

    /// The subcommands a user can ask `--help` about (not `help` itself, not the hidden
    /// `manpage`).
    fn visible_subcommands() -> Vec<clap::Command> {
        use clap::CommandFactory;
        Cli::command()
            .get_subcommands()
            .filter(|c| !c.is_hide_set() && c.get_name() != "help")
            .cloned()
            .collect()
    }

    #[test]
    fn every_subcommand_help_ends_with_examples() {
        let subs = visible_subcommands();
        assert!(subs.len() >= 9, "{}", subs.len());
        for sub in subs {
            let after = sub.get_after_help().map(|h| h.to_string());
            assert!(
                after.as_deref().is_some_and(|h| h.contains("Example")),
                "`netwatch {} --help` shows no example",
                sub.get_name()
            );
        }
    }

    #[test]
    fn help_topic_names_every_subcommand() {
        use clap::CommandFactory;
        let cmd = Cli::command();
        let help = cmd.find_subcommand("help").unwrap();
        let topic = help
            .get_arguments()
            .find(|a| a.get_id() == "topic")
            .and_then(|a| a.get_help())
            .unwrap()
            .to_string();
        for sub in visible_subcommands() {
            assert!(
                topic.contains(sub.get_name()),
                "`netwatch help`'s TOPIC does not name {}: {topic}",
                sub.get_name()
            );
        }
    }

    #[test]
    fn trace_help_names_every_event_label() {
        use crate::model::event::{EventKind, UseCall};
        let trace = visible_subcommands()
            .into_iter()
            .find(|c| c.get_name() == "trace")
            .unwrap();
        let help = trace.get_after_help().unwrap().to_string();
        let kinds = [
            EventKind::Retransmit {
                state: None,
                err: None,
            },
            EventKind::SynackRetransmit { state: None },
            EventKind::ResetReceived { state: None },
            EventKind::ResetSent {
                state: None,
                reason: None,
            },
            EventKind::Destroy { state: None },
            EventKind::Accept { state: None },
            EventKind::FirstUse {
                state: None,
                call: UseCall::Send,
            },
            EventKind::FirstUse {
                state: None,
                call: UseCall::Recv,
            },
        ];
        for kind in kinds {
            assert!(
                help.contains(kind.label()),
                "`trace --help` does not name {}",
                kind.label()
            );
        }
    }

    #[test]
    fn clap_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
