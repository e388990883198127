//! What the test modules share beyond the library: the tracer harness (re-exported from
//! `netwatch_tests::tracer`), known workloads, BPF object and /proc look-ups, C fixtures.

use std::{
    collections::{BTreeMap, HashMap},
    fs,
    net::IpAddr,
    path::{Path, PathBuf},
    process::Command,
    sync::{Mutex, OnceLock},
    time::{Duration, Instant},
};

/// Test certificates for TLS (shared with the unit tests of the HTTP server).
pub mod certs;
mod http;

pub use http::{get, http};
pub use netwatch_tests::eventually;
pub use netwatch_tests::tracer::{Finished, Scratch, Tracer, json_lines};
use netwatch_tests::{NetPair, Side, output_with_timeout, workspace_root};
use serde_json::Value;

/// The traffic driver, built by cargo for this package's integration tests.
pub fn tcpdrive() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_tcpdrive"))
}

/// `addr:port`, with brackets for IPv6 (also how netwatch keys destinations).
pub fn endpoint(addr: IpAddr, port: u16) -> String {
    match addr {
        IpAddr::V4(a) => format!("{a}:{port}"),
        IpAddr::V6(a) => format!("[{a}]:{port}"),
    }
}

/// `netwatch analyze FILE ARGS` (a replay, no root needed): its stdout and stderr. A failed
/// replay fails the test, showing both.
pub fn analyze_with_stderr(file: &Path, args: &[&str]) -> (String, String) {
    let mut cmd = Command::new(netwatch_tests::netwatch_bin());
    cmd.arg("analyze").arg(file).args(args);
    let out = output_with_timeout(cmd, 120);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(
        out.status.success(),
        "netwatch analyze {} {args:?} exited {}; stdout:\n{stdout}\nstderr:\n{stderr}",
        file.display(),
        out.status
    );
    (stdout, stderr)
}

/// [`analyze_with_stderr`]'s stdout.
pub fn analyze(file: &Path, args: &[&str]) -> String {
    analyze_with_stderr(file, args).0
}

/// Event field helpers over the JSON form.
pub fn ip(ev: &Value, field: &str) -> IpAddr {
    ev[field]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{field} is not an address in {ev}"))
}

pub fn port(ev: &Value, field: &str) -> u16 {
    ev[field]
        .as_u64()
        .unwrap_or_else(|| panic!("{field} missing in {ev}")) as u16
}

/// `OLD->NEW` of a state event, `kind` otherwise.
pub fn step(ev: &Value) -> String {
    if ev["kind"] == "state" {
        format!(
            "{}->{}",
            ev["old_state"].as_str().unwrap_or("?"),
            ev["new_state"].as_str().unwrap_or("?")
        )
    } else {
        ev["kind"].as_str().unwrap_or("?").to_string()
    }
}

/// Every loaded BPF program as (id, name), from `bpftool prog show`.
pub fn loaded_programs() -> Vec<(u32, String)> {
    let out = Command::new("bpftool")
        .args(["prog", "show", "--json"])
        .output()
        .expect("bpftool");
    assert!(out.status.success(), "bpftool prog show failed");
    let progs: Value = serde_json::from_slice(&out.stdout).expect("bpftool JSON");
    progs
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|p| Some((p["id"].as_u64()? as u32, p["name"].as_str()?.to_string())))
        .collect()
}

/// The BPF program and map ids a process holds file descriptors for, from
/// `/proc/<pid>/fdinfo` (`prog_id:` / `map_id:` lines): exact even when other netwatch
/// instances run, which bpftool (without pid support here) cannot tell apart.
pub fn bpf_objects_of(pid: i32) -> (Vec<u32>, Vec<u32>) {
    let (mut progs, mut maps) = (Vec::new(), Vec::new());
    let dir = format!("/proc/{pid}/fdinfo");
    for entry in fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .flatten()
    {
        let Ok(text) = fs::read_to_string(entry.path()) else {
            continue;
        };
        for line in text.lines() {
            let id = |prefix: &str| {
                line.strip_prefix(prefix)
                    .and_then(|v| v.trim().parse().ok())
            };
            if let Some(id) = id("prog_id:") {
                progs.push(id);
            } else if let Some(id) = id("map_id:") {
                maps.push(id);
            }
        }
    }
    progs.sort_unstable();
    progs.dedup();
    maps.sort_unstable();
    maps.dedup();
    (progs, maps)
}

/// The names of every netwatch program as the kernel shows them (at most 15 characters): each
/// tracepoint's classic program (`nw_*`) and its raw twin (`nwr_*`; `nw_accept` has none).
pub const NETWATCH_PROGRAMS: &[&str] = &[
    "nw_set_state",
    "nw_retransmit",
    "nw_synack_rtx",
    "nw_recv_reset",
    "nw_send_reset",
    "nw_destroy_sock",
    "nw_accept",
    "nw_first_read",
    "nwr_set_state",
    "nwr_retransmit",
    "nwr_synack_rtx",
    "nwr_recv_reset",
    "nwr_send_reset",
    "nwr_destroy_sk",
    "nwr_first_read",
];

/// Which program each tracepoint gets on this kernel, in the `NETWATCH_TRACEPOINTS` mode the
/// tests run in (the raw one where the kernel takes it, by default), as `netwatch doctor
/// --json` says: (tracepoint, program), asked once.
pub fn tracepoint_programs() -> &'static [(String, String)] {
    static PROGRAMS: OnceLock<Vec<(String, String)>> = OnceLock::new();
    PROGRAMS.get_or_init(|| {
        let mut cmd = Command::new(netwatch_tests::netwatch_bin());
        cmd.args(["doctor", "--json"]);
        let out = output_with_timeout(cmd, 60);
        let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "doctor --json: {e}: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        report["checks"]
            .as_array()
            .expect("doctor's checks")
            .iter()
            .filter(|c| c["kind"] == "tracepoint")
            .filter_map(|c| Some((c["name"].as_str()?.into(), c["program"].as_str()?.into())))
            .collect()
    })
}

/// The programs one run loads, sorted: accepted sockets get their owner at accept() when the
/// run shows code paths (`leaks`, `trace --stacks`: `nw_accept`, on a syscall tracepoint), else
/// at their first read (`tcp:tcp_rcv_space_adjust`); only runs that show code paths take the
/// stacks at first sends and receives (`sock:sock_send_length`, `sock:sock_recv_length`); each
/// tracepoint's program is the one [`tracepoint_programs`] names.
pub fn programs_loaded(code_paths: bool) -> Vec<String> {
    let other = |tracepoint: &str| {
        if code_paths {
            tracepoint == "tcp:tcp_rcv_space_adjust"
        } else {
            tracepoint.starts_with("syscalls:sys_exit_accept")
                || tracepoint == "sock:sock_send_length"
                || tracepoint == "sock:sock_recv_length"
        }
    };
    let mut names: Vec<String> = tracepoint_programs()
        .iter()
        .filter(|(tracepoint, _)| !other(tracepoint))
        .map(|(_, program)| program.clone())
        .collect();
    names.sort();
    names.dedup();
    let want = if code_paths { 9 } else { 7 };
    assert_eq!(names.len(), want, "one program per tracepoint: {names:?}");
    names
}

/// Compiles `tests/fixtures/<name>.c` with `gcc -O0 -g -fno-omit-frame-pointer` (frame pointers
/// and debug info: the kernel's user-stack walk and netwatch's symbolizer need both) into
/// cargo's per-target scratch directory; returns the binary, whose file name (and so the
/// process's comm) is `name`.
///
/// Why there: the binary must outlive the test's own scratch directories (netwatch reads it
/// to symbolize when it stops), and `CARGO_TARGET_TMPDIR` is cleaned with `cargo clean`.
/// The directory is named after a hash of the source, so a build is reused until the source
/// changes; a fresh build is renamed into place, so concurrent test binaries never see a
/// half-written one.
pub fn build_fixture(name: &str) -> PathBuf {
    use std::hash::{DefaultHasher, Hash as _, Hasher as _};
    static BUILT: OnceLock<Mutex<HashMap<String, PathBuf>>> = OnceLock::new();
    let built = BUILT.get_or_init(|| Mutex::new(HashMap::new()));
    let mut built = built.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = built.get(name) {
        return p.clone();
    }
    let src = workspace_root().join(format!("tests/fixtures/{name}.c"));
    let text = fs::read(&src).unwrap_or_else(|e| panic!("fixture {}: {e}", src.display()));
    let mut hasher = DefaultHasher::new();
    text.hash(&mut hasher);
    let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("fixtures");
    let dir = root.join(format!("{name}-{:016x}", hasher.finish()));
    let bin = dir.join(name);
    if !bin.is_file() {
        let tmp = root.join(format!("{name}.tmp-{}", std::process::id()));
        let _ = fs::remove_dir_all(&tmp);
        fs::create_dir_all(&tmp).expect("fixture dir");
        let mut cmd = Command::new("gcc");
        cmd.args(["-O0", "-g", "-fno-omit-frame-pointer", "-o"])
            .arg(tmp.join(name))
            .arg(&src);
        let out = output_with_timeout(cmd, 60);
        assert!(
            out.status.success(),
            "gcc {} failed: {}",
            src.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        // Another process may have renamed its build into place first: then use that one.
        if fs::rename(&tmp, &dir).is_err() {
            let _ = fs::remove_dir_all(&tmp);
        }
        assert!(bin.is_file(), "no {} after building it", bin.display());
    }
    built.insert(name.to_string(), bin.clone());
    bin
}

/// The 1-based number of the one line of `tests/fixtures/<file>` that contains `marker`
/// (a comment such as `/* ACCEPT_LINE */`); panics when none or several do.
pub fn marked_line(file: &str, marker: &str) -> usize {
    let path = workspace_root().join("tests/fixtures").join(file);
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let hits: Vec<usize> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| l.contains(marker))
        .map(|(i, _)| i + 1)
        .collect();
    assert_eq!(hits.len(), 1, "{marker} marks lines {hits:?} of {file}");
    hits[0]
}

/// The socket descriptors of process `pid`: fd -> socket inode, from the `socket:[<inode>]`
/// links in `/proc/<pid>/fd` (empty when the process is gone).
pub fn socket_fds(pid: u32) -> BTreeMap<u32, u64> {
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return BTreeMap::new();
    };
    dir.flatten()
        .filter_map(|e| {
            let fd = e.file_name().to_str()?.parse().ok()?;
            let link = fs::read_link(e.path()).ok()?;
            let inode = link
                .to_str()?
                .strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse()
                .ok()?;
            Some((fd, inode))
        })
        .collect()
}

/// Kernel TCP state numbers, as in `/proc/net/tcp` (`include/net/tcp_states.h`).
pub const TCP_FIN_WAIT2: u8 = 5;
pub const TCP_CLOSE_WAIT: u8 = 8;
pub const TCP_LISTEN: u8 = 10;

/// The TCP sockets of the network namespace process `pid` lives in, as inode -> state, from
/// `/proc/<pid>/net/tcp` and `tcp6` (`/proc/<pid>/net` is that process's namespace). Sockets
/// without an inode (not yet accepted, orphaned, TIME_WAIT) are left out.
pub fn tcp_states_of_netns(pid: u32) -> HashMap<u64, u8> {
    let mut out = HashMap::new();
    for file in ["tcp", "tcp6"] {
        let Ok(text) = fs::read_to_string(format!("/proc/{pid}/net/{file}")) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // sl local rem st tx:rx tr:when retrnsmt uid timeout inode ...
            let (Some(st), Some(inode)) = (f.get(3), f.get(9)) else {
                continue;
            };
            if let (Ok(st), Ok(inode)) = (u8::from_str_radix(st, 16), inode.parse::<u64>())
                && inode != 0
            {
                out.insert(inode, st);
            }
        }
    }
    out
}

/// The descriptors of process `pid` (sorted) whose TCP socket is in `state` (a `TCP_*`
/// constant), e.g. the sockets a leaking server holds in CLOSE_WAIT.
pub fn fds_in_state(pid: u32, state: u8) -> Vec<u32> {
    let states = tcp_states_of_netns(pid);
    socket_fds(pid)
        .into_iter()
        .filter(|(_, inode)| states.get(inode) == Some(&state))
        .map(|(fd, _)| fd)
        .collect()
}

/// Waits (bounded) until process `pid` holds exactly `n` descriptors of sockets in `state`;
/// returns them sorted. Panics with what it holds when the bound passes.
pub fn wait_fds_in_state(pid: u32, state: u8, n: usize, bound: Duration) -> Vec<u32> {
    let mut fds = Vec::new();
    let ok = eventually(bound, || {
        fds = fds_in_state(pid, state);
        fds.len() == n
    });
    assert!(
        ok,
        "pid {pid} holds {} sockets in state {state} after {bound:?}, not {n}: {fds:?}; \
         sockets: {:?}, states: {:?}",
        fds.len(),
        socket_fds(pid),
        tcp_states_of_netns(pid)
    );
    fds
}

/// `n` orderly connections to `tcpdrive serve` at `addr`, the client closing first: `n`
/// TIME_WAITs in the client namespace. Waits (bounded) for both sides to finish.
pub fn orderly_connections(pair: &NetPair, addr: &str, n: u64) {
    let mut srv = server_and_clients(pair, "serve", addr, n);
    assert!(srv.wait(30).success());
}

/// `tcpdrive <server_mode> addr --count n` in the server namespace, then `n` client
/// connections to it (`tcpdrive connect`), which must all succeed (bounded: 60 s).
fn server_and_clients(
    pair: &NetPair,
    server_mode: &str,
    addr: &str,
    n: u64,
) -> netwatch_tests::ReadyChild {
    use netwatch_tests::ReadyChild;
    let srv = ReadyChild::spawn(pair.exec(
        Side::Server,
        &tcpdrive(),
        &[server_mode, addr, "--count", &n.to_string()],
    ));
    let out = output_with_timeout(
        pair.exec(
            Side::Client,
            &tcpdrive(),
            &["connect", addr, "--count", &n.to_string()],
        ),
        60,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    srv
}

/// `m` connects to `addr`, where nothing listens: each must fail with ECONNREFUSED.
pub fn refused_connects(pair: &NetPair, addr: &str, m: u64) {
    for _ in 0..m {
        assert_eq!(
            failed_connect(pair, &["connect-expect-fail", addr]),
            "ECONNREFUSED"
        );
    }
}

/// `k` connects to `addr` (port `port`) given up after 1.5 s while the server namespace drops
/// every SYN to that port (one SYN retransmission each, at 1 s): each must fail with
/// ETIMEDOUT. The drop rule is removed afterwards.
pub fn timed_out_connects(pair: &NetPair, addr: &str, port: u16, k: u64) {
    dropped_connects(pair, (Side::Server, "input"), addr, port, k);
}

/// `k` connects whose SYNs the client's own firewall drops on their way out (`output` hook),
/// each given up after 1.5 s: the retransmission at 1 s fails after the kernel counted it
/// (`TcpRetransSegs` and `TcpExtTCPRetransFail` +1 each, `err` = -EPERM).
pub fn firewalled_connects(pair: &NetPair, addr: &str, port: u16, k: u64) {
    dropped_connects(pair, (Side::Client, "output"), addr, port, k);
}

/// `k` connects to `addr`, each given up after 1.5 s (ETIMEDOUT) while an nft rule at `hook`
/// in `side`'s namespace drops every segment to `port`; the rule is removed afterwards.
fn dropped_connects(pair: &NetPair, (side, hook): (Side, &str), addr: &str, port: u16, k: u64) {
    pair.nft(
        side,
        &format!(
            "table inet nwdrop_{hook} {{\n  chain c {{\n    type filter hook {hook} priority 0; policy accept;\n    tcp dport {port} drop\n  }}\n}}\n"
        ),
    );
    for _ in 0..k {
        let args = ["connect-expect-fail", addr, "--timeout-ms", "1500"];
        assert_eq!(failed_connect(pair, &args), "ETIMEDOUT");
    }
    pair.nft(side, &format!("delete table inet nwdrop_{hook}"));
}

/// Whether the kernel counted a `retransmit` event in `TcpRetransSegs`. `__tcp_retransmit_skb`
/// (net/ipv4/tcp_output.c) counts a segment after its early checks and before it transmits:
/// a retransmission that fails later (a firewall's drop, a full device queue) is counted,
/// one given up early is not (EBUSY 16, EAGAIN 11, ENOMEM 12, EHOSTUNREACH 113). Since 6.12
/// the tracepoint fires for both, with the error.
pub fn kernel_counted_retransmit(e: &Value) -> bool {
    e["kind"] == "retransmit" && !matches!(e["err"].as_i64(), Some(-16 | -11 | -12 | -113))
}

/// Runs a `tcpdrive connect-expect-fail` in the client namespace; its errno name.
fn failed_connect(pair: &NetPair, args: &[&str]) -> String {
    let out = output_with_timeout(pair.exec(Side::Client, &tcpdrive(), args), 20);
    let stdout = String::from_utf8_lossy(&out.stdout);
    netwatch_tests::find_line(&stdout, "FAILED")
        .and_then(|f| f.get(2).map(|e| e.to_string()))
        .unwrap_or_else(|| panic!("no FAILED line from {args:?}: {stdout}"))
}

/// `l` connections to `tcpdrive serve-leak` at `addr` that the client closes and the server
/// never does: `l` CLOSE_WAIT sockets held by the server. Returns the server (killed on drop)
/// once it said `LEAKING` (bounded: 10 s), and when the clients had finished.
pub fn leaked_connections(
    pair: &NetPair,
    addr: &str,
    l: u64,
) -> (netwatch_tests::ReadyChild, std::time::Instant) {
    let leak = server_and_clients(pair, "serve-leak", addr, l);
    let leaked_at = std::time::Instant::now();
    let leaking = eventually(Duration::from_secs(10), || {
        leak.stdout_lines().iter().any(|l| l.starts_with("LEAKING"))
    });
    assert!(leaking, "serve-leak never said LEAKING");
    (leak, leaked_at)
}

/// Keeps a tracer to one test's traffic, decided in the kernel before the ring buffer: the
/// client namespace's ephemeral ports become `client_ports` (and `sysctls` are set there too),
/// and the returned netwatch flags admit only sockets whose local AND remote ports are in
/// those or in `server_ports`. Another test's traffic would need both its ends in these sets.
/// (Listening sockets, whose remote port is 0, are left out.)
pub fn own_traffic_only(
    pair: &NetPair,
    client_ports: (u16, u16),
    server_ports: &[u16],
    sysctls: &[&str],
) -> Vec<String> {
    let (lo, hi) = client_ports;
    let range = format!("net.ipv4.ip_local_port_range={lo} {hi}");
    let mut args = vec!["sysctl", "-w", range.as_str()];
    args.extend_from_slice(sysctls);
    pair.run(Side::Client, &args);
    let ports = std::iter::once(format!("{lo}-{hi}"))
        .chain(server_ports.iter().map(u16::to_string))
        .collect::<Vec<_>>()
        .join(",");
    vec!["-L".into(), ports.clone(), "-D".into(), ports]
}

/// Bound on each of the two waits of [`stop_after_quiet`].
const QUIET_BOUND: Duration = Duration::from_secs(10);

/// Where netwatch writes the events [`stop_after_quiet`] waits for.
pub enum Events<'a> {
    /// Its stdout, one JSON event a line (`trace --json`).
    Stdout,
    /// A `--record` file.
    Recording(&'a Path),
    /// Nowhere to read while it runs (a report without `--record`), or not all of them by
    /// design (events lost, a tracepoint left out): quiet namespaces are all there is to wait
    /// for.
    Unseen,
}

/// What a test keeps open on purpose in its namespaces once its traffic is over.
pub struct Kept<'a> {
    /// Socket states (as `ss` names them) the namespaces may still hold besides LISTEN and
    /// TIME-WAIT: a leak's CLOSE-WAIT, and its peers' orphans in FIN-WAIT-2.
    pub states: &'a [&'a str],
    /// How many of the sockets netwatch saw in the namespaces are still open (a listener, the
    /// sockets a server leaks): they have no `destroy` event yet.
    pub sockets: usize,
}

impl Kept<'_> {
    /// Nothing: every connection has ended and every socket netwatch saw is closed.
    pub const NOTHING: Kept<'static> = Kept {
        states: &[],
        sockets: 0,
    };
}

/// Stops `tracer` once the traffic in `pair`'s namespaces is over and netwatch has every event
/// of it. Why: a connection's last steps (`LAST_ACK -> CLOSE`, `FIN_WAIT2 -> CLOSE`, `destroy`)
/// happen in softirq when its last segment arrives, which can be after every process of the
/// test has exited: a tracer stopped at once may miss them.
///
/// Waits, each step bounded (10 s) and panicking with what is left, until
/// 1. the kernel is done: no socket in either namespace is in a state other than LISTEN,
///    TIME-WAIT or `kept.states`, so no more transitions are coming and the kernel counters
///    are final;
/// 2. netwatch has it all (not for [`Events::Unseen`]): of the sockets of these namespaces
///    (told apart from other tests' by their `netns` inode) in `events`, exactly
///    `kept.sockets` have no `destroy` event, the last event of every socket.
///
/// Then stops it as [`Tracer::stop`] does (SIGTERM).
pub fn stop_after_quiet(
    tracer: Tracer,
    pair: &NetPair,
    events: Events<'_>,
    kept: Kept<'_>,
) -> Finished {
    wait_quiet(pair, kept.states);
    let path = match events {
        Events::Stdout => Some(tracer.stdout_path().to_path_buf()),
        Events::Recording(path) => Some(path.to_path_buf()),
        Events::Unseen => None,
    };
    if let Some(path) = path {
        let mut open = OpenSockets::new(pair);
        let done = eventually(QUIET_BOUND, || {
            open.follow(&path);
            open.len() == kept.sockets
        });
        if !done {
            // Stopped, netwatch says what the kernel could not give it (events lost to a
            // full ring, program runs skipped): the usual reason for a missing event.
            let finished = tracer.stop();
            panic!(
                "{} sockets of the pair have no destroy event after {QUIET_BOUND:?}, expected \
                 {}; netwatch, stopped: {}\ntheir last events:\n{}",
                open.len(),
                kept.sockets,
                finished.stderr.trim_end(),
                open.describe()
            );
        }
    }
    tracer.stop()
}

/// Waits (bounded) until neither namespace of `pair` has a socket in a state other than
/// LISTEN, TIME-WAIT or `kept` (`ss` names: `ESTAB`, `CLOSE-WAIT`, `FIN-WAIT-2`, ...): every
/// connection has finished. Panics listing what is left.
fn wait_quiet(pair: &NetPair, kept: &[&str]) {
    let busy = |side| -> Vec<String> {
        pair.run(side, &["ss", "-Htan"])
            .lines()
            .filter(|l| {
                let state = l.split_whitespace().next().unwrap_or("");
                !state.is_empty()
                    && !["LISTEN", "TIME-WAIT"].contains(&state)
                    && !kept.contains(&state)
            })
            .map(str::to_string)
            .collect()
    };
    let mut left = Vec::new();
    let quiet = eventually(QUIET_BOUND, || {
        left = busy(Side::Client);
        left.extend(busy(Side::Server));
        left.is_empty()
    });
    assert!(
        quiet,
        "connections still open after {QUIET_BOUND:?} (besides {kept:?}): {left:#?}"
    );
}

/// Follows a file of JSON events as netwatch writes it, keeping the last event of each socket
/// of one [`NetPair`] (by `netns` inode); lines without a `netns` (a recording's header and
/// summary, a reset no socket sent) are skipped.
struct OpenSockets {
    netns: [u64; 2],
    /// Bytes of the file read so far: up to the end of its last complete line.
    offset: u64,
    /// The last event of each socket (by `sock`) of the pair.
    last: HashMap<String, Value>,
}

impl OpenSockets {
    fn new(pair: &NetPair) -> OpenSockets {
        OpenSockets {
            netns: [Side::Client, Side::Server].map(|s| pair.netns_inode(s)),
            offset: 0,
            last: HashMap::new(),
        }
    }

    /// Reads the complete lines written since the last call; of a binary recording, every
    /// event it holds so far (`netwatch analyze FILE --json`, with a filter that keeps all).
    fn follow(&mut self, path: &Path) {
        use std::io::{Read as _, Seek as _, SeekFrom};
        let Ok(mut file) = fs::File::open(path) else {
            return; // not created yet
        };
        let mut first = [0u8; 1];
        if file.read(&mut first).unwrap_or(0) == 0 {
            return; // nothing written yet
        }
        let buf = if first[0] == 0x89 {
            // The binary format's magic: complete blocks only, the replay stops (with an
            // error) at the one being written.
            let out = Command::new(netwatch_tests::netwatch_bin())
                .arg("analyze")
                .arg(path)
                .args(["--json", "sport >= 0"])
                .output()
                .expect("running netwatch analyze");
            self.last.clear();
            out.stdout
        } else {
            let mut buf = Vec::new();
            file.seek(SeekFrom::Start(self.offset))
                .and_then(|_| file.read_to_end(&mut buf))
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let Some(end) = buf.iter().rposition(|&b| b == b'\n') else {
                return;
            };
            self.offset += end as u64 + 1;
            buf.truncate(end);
            buf
        };
        let end = buf.len();
        for line in String::from_utf8_lossy(&buf[..end]).lines() {
            if line.is_empty() {
                continue;
            }
            let ev: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{}: not JSON ({e}): {line}", path.display()));
            if ev["netns"]
                .as_u64()
                .is_some_and(|n| self.netns.contains(&n))
                && let Some(sock) = ev["sock"].as_str()
            {
                self.last.insert(sock.to_string(), ev);
            }
        }
    }

    fn open(&self) -> impl Iterator<Item = &Value> {
        self.last.values().filter(|e| e["kind"] != "destroy")
    }

    fn len(&self) -> usize {
        self.open().count()
    }

    fn describe(&self) -> String {
        self.open()
            .map(Value::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// The cgroup v2 path of `pid` (the `0::<path>` line of `/proc/<pid>/cgroup`).
pub fn cgroup_v2_of(pid: u32) -> Option<String> {
    fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("0::").map(str::to_string))
}

/// Where the cgroup v2 hierarchy is mounted (the first `cgroup2` line of mountinfo).
pub fn cgroup2_mount() -> Option<PathBuf> {
    let text = fs::read_to_string("/proc/self/mountinfo").ok()?;
    text.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        let mount = left.split_whitespace().nth(4)?;
        (right.split_whitespace().next()? == "cgroup2").then(|| PathBuf::from(mount))
    })
}

/// A cgroup v2 directory the test created; on drop every process still in it is SIGKILLed
/// and the directory removed (retrying, bounded, until the processes are gone).
pub struct CgroupDir {
    pub dir: PathBuf,
    /// The path netwatch reports: relative to the mount, with a leading `/`.
    pub rel: String,
}

impl CgroupDir {
    pub fn create(mount: &Path, name: &str) -> CgroupDir {
        let dir = mount.join(name);
        // Left over by an earlier run of this pid that was killed: reuse it.
        if !dir.is_dir() {
            fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        }
        CgroupDir {
            dir,
            rel: format!("/{name}"),
        }
    }

    /// Moves process `pid` into this cgroup and checks that it is there.
    pub fn add(&self, pid: u32) {
        let procs = self.dir.join("cgroup.procs");
        fs::write(&procs, pid.to_string())
            .unwrap_or_else(|e| panic!("write {pid} to {}: {e}", procs.display()));
        assert_eq!(cgroup_v2_of(pid).as_deref(), Some(self.rel.as_str()));
    }

    /// Makes `cmd`'s process join this cgroup between fork and exec (it writes `0`, meaning
    /// itself, to `cgroup.procs`): it and all it runs are in the cgroup from their first
    /// instruction, even behind `ip netns exec` (whose new sysfs hides the cgroup mount).
    pub fn join_before_exec(&self, cmd: &mut Command) {
        use std::os::unix::{ffi::OsStrExt as _, process::CommandExt as _};
        let procs = self.dir.join("cgroup.procs");
        let procs = std::ffi::CString::new(procs.as_os_str().as_bytes()).expect("no NUL");
        // SAFETY: between fork and exec the closure makes only async-signal-safe calls (open,
        // write, close) on memory prepared before the fork, and allocates nothing.
        unsafe {
            cmd.pre_exec(move || {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let written = libc::write(fd, b"0".as_ptr().cast(), 1);
                let err = std::io::Error::last_os_error();
                libc::close(fd);
                if written == 1 { Ok(()) } else { Err(err) }
            });
        }
    }

    pub fn pids(&self) -> Vec<i32> {
        fs::read_to_string(self.dir.join("cgroup.procs"))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    }
}

impl Drop for CgroupDir {
    fn drop(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            for pid in self.pids() {
                // SAFETY: kill(2) on a process the test moved into its own cgroup.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            match fs::remove_dir(&self.dir) {
                Ok(()) => return,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
                Err(e) if Instant::now() >= deadline => {
                    eprintln!("netwatch-tests: rmdir {}: {e}", self.dir.display());
                    return;
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }
}

/// The cgroup v2 mount, or `None` after skipping `test` loudly (and failing under `CI=true`,
/// where every test must run).
pub fn cgroup2_mount_or_skip(test: &str) -> Option<PathBuf> {
    let mount = cgroup2_mount();
    if mount.is_none() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{test}: no cgroup2 hierarchy mounted, and CI=true"
        );
        eprintln!("\n*** SKIPPED {test}: no cgroup2 ***\n");
    }
    mount
}

/// Checks that a run that keeps to its own traffic in the kernel produced exactly `expected`
/// events, what its workload made (`what` says how many of what). One exception: the
/// kernel's socket table was full (netwatch's summary says `sockets went unattributed`: more
/// than 65536 live sockets on the host, other processes' included), so some of the workload's
/// sockets had no entry and got no `accept` event at their first read. Then only "no more than
/// the workload made" is checked, and the test says so on stderr.
pub fn assert_produced(done: &Finished, expected: u64, what: &str) {
    if done.stderr.contains("sockets went unattributed") {
        eprintln!(
            "NOTE: the kernel's socket table overflowed (other load on the host): produced {} \
             of the {expected} events {what} made",
            done.produced
        );
        assert!(
            done.produced <= expected,
            "produced more than the workload made ({what}): {}",
            done.stderr
        );
        return;
    }
    assert_eq!(
        done.produced, expected,
        "produced is not what the workload made ({what}): {}",
        done.stderr
    );
}
