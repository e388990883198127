//! vmcheck: the checks that matter most, run on one kernel, in the network namespace it starts
//! in: `cargo xtask vm-test` runs it as the init workload of a qemu VM for each kernel of the
//! matrix, and in a fresh network namespace on the host's own kernel.
//!
//! One known workload on loopback (orderly connections, a refused connect, a server leaking
//! sockets in CLOSE_WAIT) is watched at once by `trace`, `life`, `report`, `leaks` and a `trace`
//! filtered in the kernel. Every count is compared with the kernel's own (`/proc/net/snmp` of
//! this namespace), every owner with the pid the workload's processes printed. Only events of
//! this namespace count (by its inode), so other traffic on the host cannot disturb the checks.
//!
//! All of it runs twice, once per way of attaching the TCP programs
//! (`NETWATCH_TRACEPOINTS=raw`, then `classic`): doctor must say every TCP tracepoint gets
//! that path, and every check must pass on both. The second run starts in a network
//! namespace of its own, so that nothing of the first (its leak's sockets closing, its
//! counters) reaches it.
//!
//! Output: one line per check, `vmcheck [KERNEL] PASS|FAIL mode/name: detail`, then
//! `vmcheck [KERNEL] RESULT passed=N failed=M`. Exit status 0 when nothing failed. The kernel
//! release is in every line because the serial console of several VMs ends up in one log.
//!
//! Environment: `NETWATCH_BIN` and `TCPDRIVE_BIN` name the binaries (the VM's init sets them).

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::MetadataExt as _;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::process::Command;
use std::time::Duration;

use netwatch_tests::tracer::{Finished, Tracer};
use netwatch_tests::{ReadyChild, netwatch_bin, output_with_timeout, tcpdrive};
use serde_json::Value;

/// Orderly connections (the client closes first).
const N: u64 = 5;
/// Sockets the leaking server keeps in CLOSE_WAIT.
const L: u64 = 3;
const P_OK: u16 = 20101;
const P_REFUSED: u16 = 20102;
const P_LEAK: u16 = 20103;
/// Generous: under qemu without KVM everything runs ten times slower.
const BOUND: Duration = Duration::from_secs(90);
/// The ways of attaching the TCP programs, each checked in full (`NETWATCH_TRACEPOINTS`).
const MODES: [&str; 2] = ["raw", "classic"];
/// The tracepoints that have a raw program as well as a classic one.
const TCP_TRACEPOINTS: [&str; 7] = [
    "sock:inet_sock_set_state",
    "tcp:tcp_retransmit_skb",
    "tcp:tcp_retransmit_synack",
    "tcp:tcp_receive_reset",
    "tcp:tcp_send_reset",
    "tcp:tcp_destroy_sock",
    "tcp:tcp_rcv_space_adjust",
];

/// Moves vmcheck (the main thread, which `/proc/self/net` and `/proc/self/ns/net` follow)
/// and every child it starts from now on into a new network namespace, with `lo` up.
fn fresh_netns() -> Result<(), String> {
    // SAFETY: unshare has no memory effects; it changes which network namespace this thread
    // and its future children are in.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        return Err(format!(
            "unshare(CLONE_NEWNET): {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: a plain socket call; the fd is closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0) };
    if fd < 0 {
        return Err(format!("socket: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: ifreq is plain data, for which all zeroes is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in ifr.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS reads the name from and writes the flags into `ifr`, which lives
    // across the call; the fd is ours.
    let mut up = unsafe { libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut ifr) };
    if up == 0 {
        // SAFETY: the union member SIOCGIFFLAGS just filled.
        unsafe { ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
        // SAFETY: SIOCSIFFLAGS only reads `ifr`; the fd is ours.
        up = unsafe { libc::ioctl(fd, libc::SIOCSIFFLAGS, &ifr) };
    }
    let err = std::io::Error::last_os_error();
    // SAFETY: the fd is ours and closed once.
    unsafe { libc::close(fd) };
    if up == 0 {
        Ok(())
    } else {
        Err(format!("bringing lo up: {err}"))
    }
}

/// `netwatch ARGS` with `NETWATCH_TRACEPOINTS=mode`, once its programs are attached.
fn start(mode: &str, args: &[&str]) -> Tracer {
    Tracer::start_with(args, |c| {
        c.env("NETWATCH_TRACEPOINTS", mode);
    })
}

fn main() {
    let kernel = kernel_release();
    let mut checks = Checks {
        kernel,
        passed: 0,
        failed: 0,
    };
    // A panic is a failed check; its message is printed by the check's FAIL line.
    std::panic::set_hook(Box::new(|_| {}));
    for (i, mode) in MODES.into_iter().enumerate() {
        let name = |check: &str| format!("{mode}/{check}");
        if i > 0
            && let Err(why) = fresh_netns()
        {
            checks.fail(&name("netns"), &why);
            continue;
        }
        checks.run(&name("doctor"), || doctor(mode));
        match catch_unwind(|| run_workload(mode)) {
            Ok(run) => {
                checks.run(&name("trace-counts"), || trace_counts(&run));
                checks.run(&name("trace-owners"), || trace_owners(&run));
                checks.run(&name("life"), || life(&run));
                checks.run(&name("report"), || report(&run));
                checks.run(&name("leaks"), || leaks(&run));
                checks.run(&name("kernel-filter"), || kernel_filter(&run));
                checks.run(&name("nothing-lost"), || nothing_lost(&run));
            }
            Err(panic) => checks.fail(&name("workload"), &panic_text(&*panic)),
        }
    }
    println!(
        "vmcheck [{}] RESULT passed={} failed={}",
        checks.kernel, checks.passed, checks.failed
    );
    std::process::exit(i32::from(checks.failed > 0));
}

struct Checks {
    kernel: String,
    passed: u32,
    failed: u32,
}

impl Checks {
    /// Runs one check; `Ok(detail)` passes, `Err(why)` or a panic fails.
    fn run(&mut self, name: &str, check: impl FnOnce() -> Result<String, String>) {
        match catch_unwind(AssertUnwindSafe(check)) {
            Ok(Ok(detail)) => {
                self.passed += 1;
                println!("vmcheck [{}] PASS {name}: {detail}", self.kernel);
            }
            Ok(Err(why)) => self.fail(name, &why),
            Err(panic) => self.fail(name, &panic_text(&*panic)),
        }
    }

    fn fail(&mut self, name: &str, why: &str) {
        self.failed += 1;
        // Every line of a long message (a verifier log) carries the prefix too.
        for (i, line) in why.lines().enumerate() {
            let head = if i == 0 { "FAIL" } else { "    " };
            println!("vmcheck [{}] {head} {name}: {line}", self.kernel);
        }
    }
}

fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_string()))
        .unwrap_or_else(|| "panicked".to_string())
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".to_string())
}

/// `netwatch doctor --json` in `mode`: every program passes this kernel's verifier (a
/// rejection fails with the verifier's own words), and every TCP tracepoint gets its program
/// the way `mode` asks.
fn doctor(mode: &str) -> Result<String, String> {
    let mut cmd = Command::new(netwatch_bin());
    cmd.args(["doctor", "--json"])
        .env("NETWATCH_TRACEPOINTS", mode);
    let out = output_with_timeout(cmd, BOUND.as_secs());
    let text = String::from_utf8_lossy(&out.stdout);
    let report: Value = serde_json::from_str(&text).map_err(|e| {
        format!(
            "doctor printed no JSON ({e}): {text}{}",
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    let verdict = judge_doctor(&report, out.status.success())?;
    let paths = judge_paths(&report, mode)?;
    Ok(format!("{verdict}; {paths}"))
}

/// Every TCP tracepoint's line names a program attached the way `mode` asks (`path`).
fn judge_paths(report: &Value, mode: &str) -> Result<String, String> {
    let checks = report["checks"].as_array().ok_or("doctor: no checks")?;
    let mut wrong = Vec::new();
    for tracepoint in TCP_TRACEPOINTS {
        let line = checks
            .iter()
            .find(|c| c["kind"] == "tracepoint" && c["name"] == tracepoint);
        match line {
            Some(c) if c["path"] == mode => {}
            Some(c) => wrong.push(format!(
                "{tracepoint}: path {}, want {mode}: {}",
                c["path"], c["detail"]
            )),
            None => wrong.push(format!("{tracepoint}: no line")),
        }
    }
    if wrong.is_empty() {
        Ok(format!(
            "the {} TCP tracepoints get their {mode} programs",
            TCP_TRACEPOINTS.len()
        ))
    } else {
        Err(wrong.join("\n"))
    }
}

/// The programs on `sock:sock_send_length` / `sock_recv_length` (the stacks at a socket's first
/// send and receive): those tracepoints came in Linux 6.3, so on older kernels doctor rightly
/// reports them not loaded (degraded), and only there.
const SINCE_6_3: &[&str] = &[
    "nw_first_send",
    "nwr_first_send",
    "nw_first_recv",
    "nwr_first_recv",
];

/// Whether the running kernel is older than `major.minor`.
fn kernel_before(major: u32, minor: u32) -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut parts = release
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|p| p.parse::<u32>().ok());
    match (parts.next(), parts.next()) {
        (Some(a), Some(b)) => (a, b) < (major, minor),
        _ => false,
    }
}

/// Passes when doctor says ok and every program passed the verifier; otherwise fails with
/// each rejected program's detail and verifier log.
fn judge_doctor(report: &Value, exited_ok: bool) -> Result<String, String> {
    let checks = report["checks"].as_array().ok_or("doctor: no checks")?;
    let mut bad = Vec::new();
    let mut programs = 0;
    let before_6_3 = kernel_before(6, 3);
    for c in checks {
        if c["kind"] == "program" {
            programs += 1;
        }
        let absent_here = before_6_3
            && c["kind"] == "program"
            && c["status"] == "degraded"
            && SINCE_6_3.contains(&c["name"].as_str().unwrap_or(""));
        if absent_here {
            continue;
        }
        if c["status"] == "rejected" || (c["kind"] == "program" && c["status"] != "ok") {
            bad.push(format!(
                "{} {}: {}\n{}",
                c["name"].as_str().unwrap_or("?"),
                c["status"].as_str().unwrap_or("?"),
                c["detail"].as_str().unwrap_or(""),
                c["verifier_log"].as_str().unwrap_or("")
            ));
        }
    }
    if !bad.is_empty() || report["ok"] != true || !exited_ok {
        return Err(format!("doctor says not ok:\n{}", bad.join("\n")));
    }
    if programs == 0 {
        return Err("doctor listed no program".to_string());
    }
    Ok(format!("{programs} programs pass the verifier"))
}

/// What the workload did and what each tracer saw of it.
struct Run {
    /// The kernel release this runs on.
    kernel: String,
    netns: u64,
    /// `/proc/net/snmp` Tcp counters: after minus before.
    snmp: HashMap<String, i64>,
    client_pid: u32,
    server_pid: u32,
    refused_pid: u32,
    leak_pid: u32,
    leak_client_pid: u32,
    trace: Finished,
    life: Finished,
    report: Value,
    /// The first `leaks` snapshot that listed the leak.
    leaks: Value,
    filtered: Finished,
}

fn run_workload(mode: &str) -> Run {
    let netns = std::fs::metadata("/proc/self/ns/net")
        .expect("/proc/self/ns/net")
        .ino();
    let trace = start(mode, &["trace", "--json"]);
    let started = trace.stderr_lines().join("\n");
    assert!(
        started.contains(&format!("tracepoints attached: 7 {mode})")),
        "trace did not attach every tracepoint the {mode} way: {started}"
    );
    let life = start(mode, &["life", "--json"]);
    let report = start(mode, &["report", "--json", "--close-wait-age", "1s"]);
    let mut leaks = start(
        mode,
        &["leaks", "--json", "--min-age", "0s", "--interval", "1s"],
    );
    let filtered = start(mode, &["trace", "--json", "-D", &P_OK.to_string()]);

    let before = snmp();
    let at = |p: u16| format!("127.0.0.1:{p}");
    let drive = |args: &[&str]| {
        let mut cmd = Command::new(tcpdrive());
        cmd.args(args);
        cmd
    };
    let n = N.to_string();
    let l = L.to_string();
    let mut server = ReadyChild::spawn(drive(&["serve", &at(P_OK), "--count", &n]));
    let client = run_to_end(drive(&["connect", &at(P_OK), "--count", &n]));
    assert!(server.wait(60).success(), "tcpdrive serve failed");
    let refused = run_to_end(drive(&["connect-expect-fail", &at(P_REFUSED)]));
    assert_eq!(refused.get(2).map(String::as_str), Some("ECONNREFUSED"));
    let leak = ReadyChild::spawn(drive(&["serve-leak", &at(P_LEAK), "--count", &l]));
    let leak_client = run_to_end(drive(&["connect", &at(P_LEAK), "--count", &l]));
    let leaking = netwatch_tests::eventually(BOUND, || {
        leak.stdout_lines().iter().any(|s| s.starts_with("LEAKING"))
    });
    assert!(leaking, "serve-leak never said LEAKING");
    let snmp_delta: HashMap<String, i64> = {
        let after = snmp();
        after
            .iter()
            .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0)))
            .collect()
    };

    // Quiet: the full trace holds every opening the kernel counted and a DESTROY for every
    // socket that closed (the leak's server sockets stay open).
    let opens = snmp_delta["ActiveOpens"] + snmp_delta["PassiveOpens"];
    let ours = |e: &Value| e["netns"].as_u64() == Some(netns);
    let quiet = netwatch_tests::eventually(BOUND, || {
        let lines = trace.stdout_lines_so_far();
        let evs: Vec<Value> = lines
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        let destroyed = evs
            .iter()
            .filter(|e| ours(e) && e["kind"] == "destroy" && e["dport"] != 0)
            .count() as i64;
        destroyed >= opens - L as i64
    });
    assert!(quiet, "the trace never showed every socket closing");
    let leak_snapshot = leaks.wait_for_json_line("the leak", BOUND, |s| {
        s["groups"].as_array().is_some_and(|gs| {
            gs.iter().any(|g| {
                g["kind"] == "close_wait"
                    && g["pid"].as_u64() == Some(u64::from(leak.pid()))
                    && g["sockets"].as_u64() == Some(L)
            })
        })
    });
    // The leak must be older than --close-wait-age (1 s) when the report is made.
    std::thread::sleep(Duration::from_millis(1200));
    let report = report.stop();
    let report_doc: Value = serde_json::from_str(&report.stdout)
        .unwrap_or_else(|e| panic!("report is not JSON ({e}): {}", report.stdout));
    let _ = leaks.stop_output();
    Run {
        kernel: kernel_release(),
        netns,
        snmp: snmp_delta,
        client_pid: pid_of(&client),
        server_pid: server.pid(),
        refused_pid: pid_of(&refused),
        leak_pid: leak.pid(),
        leak_client_pid: pid_of(&leak_client),
        trace: trace.stop(),
        life: life.stop(),
        report: report_doc,
        leaks: leak_snapshot,
        filtered: filtered.stop(),
    }
}

/// Runs a tcpdrive client to its end; its last stdout line split in words (`DONE <pid> ...`).
fn run_to_end(cmd: Command) -> Vec<String> {
    let out = output_with_timeout(cmd, BOUND.as_secs());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "tcpdrive failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .last()
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

fn pid_of(words: &[String]) -> u32 {
    words
        .get(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {words:?}"))
}

/// The `Tcp:` counters of this network namespace, from `/proc/net/snmp` (header line, then
/// values).
fn snmp() -> HashMap<String, i64> {
    let text = std::fs::read_to_string("/proc/net/snmp").expect("/proc/net/snmp");
    let tcp: Vec<&str> = text.lines().filter(|l| l.starts_with("Tcp:")).collect();
    assert_eq!(tcp.len(), 2, "/proc/net/snmp: {text}");
    tcp[0]
        .split_whitespace()
        .zip(tcp[1].split_whitespace())
        .skip(1)
        .map(|(k, v)| (k.to_string(), v.parse().unwrap_or(0)))
        .collect()
}

impl Run {
    fn ours<'a>(&self, evs: &'a [Value]) -> Vec<&'a Value> {
        evs.iter()
            .filter(|e| e["netns"].as_u64() == Some(self.netns))
            .collect()
    }
}

fn step(e: &Value) -> String {
    format!(
        "{}->{}",
        e["old_state"].as_str().unwrap_or(""),
        e["new_state"].as_str().unwrap_or("")
    )
}

fn count(evs: &[&Value], f: impl Fn(&Value) -> bool) -> i64 {
    evs.iter().filter(|e| f(e)).count() as i64
}

/// Compares `(name, kernel, netwatch)` triples, all at once so one failure shows them all.
fn compare(rows: &[(&str, i64, i64)]) -> Result<String, String> {
    let text: Vec<String> = rows
        .iter()
        .map(|(name, kernel, ours)| format!("{name} kernel={kernel} netwatch={ours}"))
        .collect();
    if rows.iter().all(|(_, k, o)| k == o) {
        Ok(text.join(", "))
    } else {
        Err(text.join(", "))
    }
}

/// The full stream counts what the kernel counted.
fn trace_counts(run: &Run) -> Result<String, String> {
    let evs = run.ours(&run.trace.events);
    let k = |name: &str| run.snmp.get(name).copied().unwrap_or(-1);
    compare(&[
        (
            "ActiveOpens (expected)",
            (N + 1 + L) as i64,
            k("ActiveOpens"),
        ),
        (
            "ActiveOpens",
            k("ActiveOpens"),
            count(&evs, |e| step(e) == "CLOSE->SYN_SENT"),
        ),
        (
            "PassiveOpens",
            k("PassiveOpens"),
            count(&evs, |e| step(e) == "LISTEN->SYN_RECV"),
        ),
        (
            "AttemptFails",
            k("AttemptFails"),
            count(&evs, |e| {
                e["kind"] == "reset_received" && e["state"] == "SYN_SENT"
            }),
        ),
        (
            "EstabResets",
            k("EstabResets"),
            count(&evs, |e| {
                matches!(step(e).as_str(), "ESTABLISHED->CLOSE" | "CLOSE_WAIT->CLOSE")
            }),
        ),
        (
            if untraced_resets(&run.kernel) > 0 {
                "OutRsts less the no-socket reset (untraced before 6.10)"
            } else {
                "OutRsts"
            },
            k("OutRsts") - untraced_resets(&run.kernel),
            count(&evs, |e| e["kind"] == "reset_sent") + unowned_resets(run),
        ),
    ])
}

/// Before Linux 6.10, `tcp:tcp_send_reset` fired only for resets sent on behalf of a socket;
/// the reset answering the SYN to the port where nothing listens was counted by the kernel
/// (OutRsts) but never traced. The README's Kernels table says so.
fn untraced_resets(kernel: &str) -> i64 {
    i64::from(release_below(kernel, (6, 10)))
}

/// Whether a release string (`6.1.0-47-cloud-amd64`) is below `(major, minor)`.
fn release_below(release: &str, (major, minor): (u32, u32)) -> bool {
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let have = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    have < (major, minor)
}

/// Resets sent for a segment no socket wanted carry no socket, hence no namespace: here, the
/// answer to the SYN sent to the port where nothing listens, recognised by its ports (from
/// `P_REFUSED` to the refused client's port, which that client's own events in this namespace
/// give), so another namespace's refused connect to the same port is not counted.
fn unowned_resets(run: &Run) -> i64 {
    let ours = run.ours(&run.trace.events);
    let client_ports: HashSet<u64> = ours
        .iter()
        .filter(|e| {
            e["kind"] == "reset_received" && e["dport"].as_u64() == Some(u64::from(P_REFUSED))
        })
        .filter_map(|e| e["sport"].as_u64())
        .collect();
    run.trace
        .events
        .iter()
        .filter(|e| {
            e["kind"] == "reset_sent"
                && e["netns"].is_null()
                && e["sport"].as_u64() == Some(u64::from(P_REFUSED))
                && e["dport"]
                    .as_u64()
                    .is_some_and(|p| client_ports.contains(&p))
        })
        .count() as i64
}

/// Owners: the connecting and accepting processes by pid, and never anyone else.
fn trace_owners(run: &Run) -> Result<String, String> {
    let evs = run.ours(&run.trace.events);
    let pid = |e: &Value| e["pid"].as_u64().map(|p| p as u32);
    let mut wrong = Vec::new();
    let mut checked = 0;
    let mut expect = |what: &str, e: &Value, want: u32| {
        checked += 1;
        if pid(e) != Some(want) {
            wrong.push(format!("{what}: pid {:?}, want {want}: {e}", pid(e)));
        }
    };
    for e in &evs {
        let (sport, dport) = (e["sport"].as_u64(), e["dport"].as_u64());
        let to = |p: u16| dport == Some(u64::from(p));
        let from = |p: u16| sport == Some(u64::from(p));
        match (e["kind"].as_str(), step(e).as_str()) {
            (Some("state"), "CLOSE->SYN_SENT") if to(P_OK) => expect("connect", e, run.client_pid),
            (Some("state"), "CLOSE->SYN_SENT") if to(P_REFUSED) => {
                expect("refused connect", e, run.refused_pid)
            }
            (Some("state"), "CLOSE->SYN_SENT") if to(P_LEAK) => {
                expect("connect", e, run.leak_client_pid)
            }
            (Some("accept"), _) if from(P_OK) => expect("accept", e, run.server_pid),
            (Some("accept"), _) if from(P_LEAK) => expect("accept", e, run.leak_pid),
            (Some("state"), "ESTABLISHED->FIN_WAIT1") if to(P_OK) => {
                expect("close", e, run.client_pid)
            }
            _ => {}
        }
    }
    // Nobody outside the workload is ever named (a softirq bystander would be).
    let known: HashSet<u32> = [
        run.client_pid,
        run.server_pid,
        run.refused_pid,
        run.leak_pid,
        run.leak_client_pid,
    ]
    .into();
    for e in &evs {
        if let Some(p) = pid(e)
            && !known.contains(&p)
        {
            wrong.push(format!("a stranger named as owner: {e}"));
        }
    }
    let want = (N + 1 + L + N + L + N) as usize;
    if checked != want {
        wrong.push(format!("checked {checked} owner events, want {want}"));
    }
    if wrong.is_empty() {
        Ok(format!(
            "{checked} connect/accept/close events with the right pid, no stranger"
        ))
    } else {
        Err(wrong.join("\n"))
    }
}

/// `life`: one record per connection with its end and owner.
fn life(run: &Run) -> Result<String, String> {
    let recs = run.ours(&run.life.events);
    let mut ends: HashMap<String, i64> = HashMap::new();
    let mut wrong = Vec::new();
    for c in &recs {
        let end = c["end"].as_str().unwrap_or("?").to_string();
        let pid = c["pid"].as_u64().map(|p| p as u32);
        let (lport, rport) = (c["sport"].as_u64(), c["dport"].as_u64());
        let want = match (c["role"].as_str(), lport, rport) {
            (Some("passive"), Some(p), _) if p == u64::from(P_OK) => Some(run.server_pid),
            (Some("active"), _, Some(p)) if p == u64::from(P_OK) => Some(run.client_pid),
            (Some("active"), _, Some(p)) if p == u64::from(P_REFUSED) => Some(run.refused_pid),
            (Some("active"), _, Some(p)) if p == u64::from(P_LEAK) => Some(run.leak_client_pid),
            _ => None,
        };
        if pid != want {
            wrong.push(format!("owner {pid:?}, want {want:?}: {c}"));
        }
        // tcpdrive's 5-byte request and reply, in sequence space as the kernel counts it
        // (README): the client closes first, so its SYN and FIN are acknowledged (+2), and it
        // counts the server's FIN (+1) only if that arrived before its socket became a
        // timewait socket; the server's FIN is acknowledged (+1) and it counts the client's.
        let bytes = (c["bytes_sent"].as_u64(), c["bytes_received"].as_u64());
        let want_bytes: Option<(u64, &[u64])> = match (c["role"].as_str(), lport, rport) {
            (Some("passive"), Some(p), _) if p == u64::from(P_OK) => Some((6, &[6])),
            (Some("active"), _, Some(p)) if p == u64::from(P_OK) => Some((7, &[5, 6])),
            _ => None,
        };
        if let Some((sent, received)) = want_bytes
            && !(bytes.0 == Some(sent) && bytes.1.is_some_and(|r| received.contains(&r)))
        {
            wrong.push(format!("bytes {bytes:?}, want ({sent}, {received:?}): {c}"));
        }
        *ends.entry(end).or_default() += 1;
    }
    let e = |k: &str| ends.get(k).copied().unwrap_or(0);
    let mut rows = compare(&[
        ("time-wait (clients)", (N + L) as i64, e("time-wait")),
        ("closed (server)", N as i64, e("closed")),
        ("refused", 1, e("refused")),
        ("records", (2 * N + 1 + L) as i64, recs.len() as i64),
    ]);
    if !wrong.is_empty() {
        rows = Err(format!(
            "{}\n{}",
            rows.unwrap_or_else(|e| e),
            wrong.join("\n")
        ));
    }
    rows
}

/// `report`: SYN_SENT outcomes per destination and the CLOSE_WAIT holder.
fn report(run: &Run) -> Result<String, String> {
    let rows = run.report["connects_by_destination"]
        .as_array()
        .ok_or("report has no connects_by_destination")?;
    let row = |p: u16, field: &str| -> i64 {
        rows.iter()
            .find(|r| r["key"] == format!("127.0.0.1:{p}").as_str())
            .and_then(|r| r[field].as_i64())
            .unwrap_or(-1)
    };
    let holder = format!("tcpdrive[{}]", run.leak_pid);
    let held = run.report["close_wait"]["holders"]
        .as_array()
        .and_then(|hs| hs.iter().find(|h| h["process"] == holder.as_str()))
        .and_then(|h| h["sockets"].as_i64())
        .unwrap_or(-1);
    compare(&[
        ("established", N as i64, row(P_OK, "established")),
        ("refused", 1, row(P_REFUSED, "refused")),
        (&format!("CLOSE_WAIT held by {holder}"), L as i64, held),
    ])
}

/// `leaks`: the leaking process by pid and name.
fn leaks(run: &Run) -> Result<String, String> {
    let groups = run.leaks["groups"].as_array().ok_or("no groups")?;
    let g = groups
        .iter()
        .find(|g| g["kind"] == "close_wait" && g["pid"].as_u64() == Some(u64::from(run.leak_pid)))
        .ok_or("no close_wait group of the leaking server")?;
    if g["comm"] != "tcpdrive" || g["opened_by"] != "accept" {
        return Err(format!("wrong comm or opener: {g}"));
    }
    Ok(format!(
        "tcpdrive[{}] holds {} sockets in CLOSE_WAIT, opened by accept",
        run.leak_pid, g["sockets"]
    ))
}

/// `-D PORT` is applied in the kernel: only that port's events arrive, all of them, and the
/// kernel counted what it dropped.
fn kernel_filter(run: &Run) -> Result<String, String> {
    let evs = run.ours(&run.filtered.events);
    let strays: Vec<&&Value> = evs
        .iter()
        .filter(|e| e["dport"].as_u64() != Some(u64::from(P_OK)))
        .collect();
    if !strays.is_empty() {
        return Err(format!("events of other ports passed: {:?}", strays));
    }
    let filtered = field(&run.filtered.stderr, "filtered").unwrap_or(0);
    if filtered == 0 {
        return Err(format!(
            "the kernel filtered nothing: {}",
            run.filtered.stderr
        ));
    }
    compare(&[(
        "connects to the port",
        N as i64,
        count(&evs, |e| step(e) == "CLOSE->SYN_SENT"),
    )])
    .map(|s| format!("{s}; {filtered} events dropped in the kernel"))
}

fn nothing_lost(run: &Run) -> Result<String, String> {
    let lost = [&run.trace, &run.life, &run.filtered]
        .iter()
        .map(|f| f.lost)
        .sum::<u64>();
    if lost == 0 {
        Ok("0 events lost".to_string())
    } else {
        Err(format!("{lost} events lost"))
    }
}

/// `name=N` in netwatch's exit line.
fn field(stderr: &str, name: &str) -> Option<u64> {
    let key = format!("{name}=");
    stderr
        .split(|c: char| c.is_whitespace() || c == '(' || c == ')')
        .find_map(|w| w.strip_prefix(&key))
        .and_then(|v| v.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_comparison() {
        assert!(release_below("6.1.0-47-cloud-amd64", (6, 10)));
        assert!(release_below("5.15.0", (6, 10)));
        assert!(!release_below("6.12.117+deb12-cloud-amd64", (6, 10)));
        assert!(!release_below("6.18.44-fc-v595", (6, 10)));
        assert!(!release_below("6.10.0", (6, 10)));
    }

    #[test]
    fn every_tcp_tracepoint_must_take_the_asked_path() {
        let lines = |path: &str| -> Vec<Value> {
            TCP_TRACEPOINTS
                .iter()
                .map(|t| serde_json::json!({"kind": "tracepoint", "name": t, "path": path}))
                .collect()
        };
        let raw = serde_json::json!({ "checks": lines("raw") });
        assert!(judge_paths(&raw, "raw").is_ok());
        let why = judge_paths(&raw, "classic").unwrap_err();
        assert!(
            why.contains("tcp:tcp_send_reset: path \"raw\", want classic"),
            "{why}"
        );
        let mut some = lines("raw");
        some[4]["path"] = "classic".into();
        let mixed = serde_json::json!({ "checks": some });
        let why = judge_paths(&mixed, "raw").unwrap_err();
        assert_eq!(why.lines().count(), 1, "{why}");
    }

    #[test]
    fn a_verifier_rejection_fails_with_the_verifiers_words() {
        let report = serde_json::json!({
            "ok": false,
            "checks": [
                {"name": "nw_accept", "kind": "program", "status": "ok", "detail": "loaded"},
                {"name": "nw_set_state", "kind": "program", "status": "rejected",
                 "detail": "combined stack size of 2 calls is 544. Too large",
                 "verifier_log": "stack depth 488+0\nprocessed 31795 insns"},
            ]
        });
        let why = judge_doctor(&report, false).unwrap_err();
        assert!(why.contains("nw_set_state rejected"), "{why}");
        assert!(
            why.contains("combined stack size of 2 calls is 544"),
            "{why}"
        );
        assert!(why.contains("processed 31795 insns"), "{why}");
        let fine = serde_json::json!({
            "ok": true,
            "checks": [{"name": "nw_accept", "kind": "program", "status": "ok"}]
        });
        assert_eq!(
            judge_doctor(&fine, true).unwrap(),
            "1 programs pass the verifier"
        );
        assert!(judge_doctor(&fine, false).is_err());
    }
}
