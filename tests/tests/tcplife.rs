//! `netwatch life` against libbpf-tools `tcplife` on one workload, as root: both tracers attached
//! at once, the same connections in a [`NetPair`], and their rows compared 4-tuple by 4-tuple.
//!
//! What tcplife does (libbpf-tools/tcplife.bpf.c, iovisor/bcc; Debian's libbpf-tools 0.26):
//! - One program on `sock:inet_sock_set_state`. Its `birth` timestamp is written at EVERY
//!   transition into a state below FIN_WAIT1 (ESTABLISHED, SYN_SENT, SYN_RECV), so the last
//!   write before CLOSE is the entry into ESTABLISHED: its MS is ESTABLISHED -> CLOSE, without
//!   the handshake. netwatch's `ms` runs from SYN_SENT (active) or SYN_RECV (passive) to CLOSE,
//!   so the comparable number is `ms - dwell_ms.syn_sent` or `ms - dwell_ms.syn_recv`.
//!   The first connection of each close order has its SYN dropped once (nftables), so its
//!   handshake lasts the 1 s initial RTO and the correction is exercised, not just tolerated.
//! - Its PID/COMM is cached only at `-> SYN_SENT` (connect) and `-> LAST_ACK` (close after the
//!   peer's FIN); otherwise it is whatever task is on the CPU at `-> CLOSE`. A server that
//!   closes first goes ESTABLISHED -> FIN_WAIT1 -> FIN_WAIT2 -> CLOSE, the last step in softirq
//!   when the client's FIN arrives: tcplife then names a bystander (over veth, typically the
//!   client process whose close() sent that FIN, since the softirq runs on its way out).
//! - Output: a header `PID COMM LADDR LPORT RADDR RPORT TX_KB RX_KB MS` printed once the
//!   programs are attached, then `%-7d %-16s %-*s %-5d %-*s %-5d %-6.2f %-6.2f %-.2f` per
//!   connection (`-w` widens the address columns to 39). stdout is plain stdio, so it runs
//!   under `stdbuf -oL` to be line-buffered on a pipe. Only SIGINT is handled (SIGTERM kills it
//!   with its buffer), and on SIGINT it leaves without draining its perf buffer: the test waits
//!   until every expected row is out before stopping it.
//!
//! Test names start with `root_` so they can be selected (`cargo xtask test -- root_`).

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{BufRead as _, BufReader},
    net::IpAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex, mpsc},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use crate::support::{Events, Kept, Tracer, ip, port, stop_after_quiet, tcpdrive};
use netwatch_tests::{
    NetPair, ReadyChild, Side, find_line, require_root, unique_port, wait_with_timeout,
};
use serde_json::Value;

/// Connections per close order.
const N: usize = 20;

/// Lifetimes of the same connection must agree this closely (ms).
const LIFETIME_TOLERANCE_MS: f64 = 1.0;

/// `TCPLIFE_BIN`, or Debian's `/usr/sbin/tcplife` (package libbpf-tools, installed by
/// `cargo xtask setup`).
fn tcplife_bin() -> PathBuf {
    let path = std::env::var_os("TCPLIFE_BIN")
        .filter(|v| !v.is_empty())
        .map_or_else(|| PathBuf::from("/usr/sbin/tcplife"), PathBuf::from);
    assert!(
        path.is_file(),
        "{} not found: install libbpf-tools (`cargo xtask setup`) or set TCPLIFE_BIN",
        path.display()
    );
    path
}

/// Local and remote endpoint: what identifies a connection in both tools' output.
type FourTuple = (IpAddr, u16, IpAddr, u16);

/// One tcplife output line.
#[derive(Debug, Clone)]
struct TcplifeRow {
    pid: u32,
    comm: String,
    laddr: IpAddr,
    lport: u16,
    raddr: IpAddr,
    rport: u16,
    ms: f64,
}

impl TcplifeRow {
    /// Parses `PID COMM LADDR LPORT RADDR RPORT TX_KB RX_KB MS`, fields taken from both ends so
    /// a COMM with spaces still parses; `None` for the header and anything else.
    fn parse(line: &str) -> Option<TcplifeRow> {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 8 {
            return None;
        }
        let n = f.len();
        Some(TcplifeRow {
            pid: f[0].parse().ok()?,
            comm: f[1..n - 7].join(" "),
            laddr: f[n - 7].parse().ok()?,
            lport: f[n - 6].parse().ok()?,
            raddr: f[n - 5].parse().ok()?,
            rport: f[n - 4].parse().ok()?,
            ms: f[n - 1].parse().ok()?,
        })
    }

    fn tuple(&self) -> FourTuple {
        (self.laddr, self.lport, self.raddr, self.rport)
    }
}

/// A running `stdbuf -oL tcplife -w`: stdout lines and stderr collected by threads.
struct Tcplife {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
    readers: Vec<JoinHandle<()>>,
}

impl Tcplife {
    /// Starts tcplife and waits (at most 60 s) for its header, which it prints only after its
    /// program is attached.
    fn start() -> Tcplife {
        let mut cmd = Command::new("stdbuf");
        cmd.arg("-oL")
            .arg(tcplife_bin())
            .arg("-w")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        let (out, err) = (
            child.stdout.take().expect("piped"),
            child.stderr.take().expect("piped"),
        );
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let out_reader = {
            let lines = Arc::clone(&lines);
            std::thread::spawn(move || {
                let mut tx = Some(tx);
                for line in BufReader::new(out).lines() {
                    let Ok(line) = line else { break };
                    if line.split_whitespace().next() == Some("PID")
                        && let Some(tx) = tx.take()
                    {
                        let _ = tx.send(());
                    }
                    lines.lock().unwrap().push(line);
                }
            })
        };
        let err_reader = {
            let stderr = Arc::clone(&stderr);
            std::thread::spawn(move || {
                for line in BufReader::new(err).lines() {
                    let Ok(line) = line else { break };
                    stderr.lock().unwrap().push(line);
                }
            })
        };
        let mut tcplife = Tcplife {
            child,
            lines,
            stderr,
            readers: vec![out_reader, err_reader],
        };
        if rx.recv_timeout(Duration::from_secs(60)).is_err() {
            let _ = tcplife.child.kill();
            let status = tcplife.child.wait();
            panic!(
                "tcplife printed no header within 60 s ({status:?}); stdout: {:?}; stderr: {:?}",
                tcplife.lines.lock().unwrap(),
                tcplife.stderr.lock().unwrap()
            );
        }
        tcplife
    }

    /// The rows printed so far that `keep` selects.
    fn rows(&self, keep: &impl Fn(&TcplifeRow) -> bool) -> Vec<TcplifeRow> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| TcplifeRow::parse(l))
            .filter(keep)
            .collect()
    }

    /// Waits (at most `bound`) until `want` rows selected by `keep` are out: tcplife drops
    /// what is still in its perf buffer when it stops.
    fn wait_rows(&self, keep: &impl Fn(&TcplifeRow) -> bool, want: usize, bound: Duration) {
        let deadline = Instant::now() + bound;
        while self.rows(keep).len() < want && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGINT (the only signal it handles), bounded wait; returns (stdout lines, stderr).
    fn stop(mut self) -> (Vec<String>, String) {
        // SAFETY: kill(2) on our own child, which has not been reaped yet.
        let ret = unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        assert_eq!(ret, 0, "kill(tcplife, SIGINT)");
        let status = wait_with_timeout(&mut self.child, 10);
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        let stderr = self.stderr.lock().unwrap().join("\n");
        assert!(status.success(), "tcplife exited with {status}: {stderr}");
        (self.lines.lock().unwrap().clone(), stderr)
    }
}

impl Drop for Tcplife {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// One close order: its server port and the pids that truly own each side's sockets.
struct Scenario {
    name: &'static str,
    port: u16,
    server_pid: u32,
    client_pid: u32,
}

/// Runs `server_mode` on `port` in the server namespace and `tcpdrive connect --count N` from
/// the client namespace; returns the owners from tcpdrive's READY / DONE lines.
fn run_scenario(
    pair: &NetPair,
    name: &'static str,
    server_mode: &str,
    server: IpAddr,
    port: u16,
) -> Scenario {
    let addr = format!("{server}:{port}");
    let count = N.to_string();
    let mut srv = ReadyChild::spawn(pair.exec(
        Side::Server,
        &tcpdrive(),
        &[server_mode, &addr, "--count", &count],
    ));
    // The first connection's SYN is dropped once, so its handshake lasts the kernel's initial
    // RTO (1 s): a lifetime comparison that forgot tcplife leaves out the handshake fails.
    let table = format!("nwsyn{port}");
    pair.nft(
        Side::Server,
        &format!(
            "table inet {table} {{\n  chain input {{\n    type filter hook input priority 0; \
             policy accept;\n    tcp dport {port} tcp flags & (syn | ack) == syn counter drop\n  \
             }}\n}}\n"
        ),
    );
    let mut cli = ReadyChild::spawn_background(pair.exec(
        Side::Client,
        &tcpdrive(),
        &["connect", &addr, "--count", &count],
    ));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let rules = pair.run(Side::Server, &["nft", "list", "table", "inet", &table]);
        if !rules.contains("counter packets 0 ") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{name}: no SYN dropped within 10 s:\n{rules}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    pair.nft(Side::Server, &format!("delete table inet {table}"));
    let status = cli.wait(60);
    let stdout = cli.stdout_lines().join("\n");
    assert!(status.success(), "{name}: client failed: {stdout}");
    let done = find_line(&stdout, "DONE").expect("client DONE line");
    assert_eq!(&done[2..], [count.as_str(), "0"], "{name}: client {stdout}");
    let client_pid = done[1].parse().expect("client pid");
    assert!(
        srv.wait(30).success(),
        "{name}: server failed: {:?}",
        srv.stdout_lines()
    );
    Scenario {
        name,
        port,
        server_pid: srv.pid(),
        client_pid,
    }
}

/// A netwatch `life` record's 4-tuple.
fn nw_tuple(c: &Value) -> FourTuple {
    (
        ip(c, "saddr"),
        port(c, "sport"),
        ip(c, "daddr"),
        port(c, "dport"),
    )
}

fn num(c: &Value, path: &[&str]) -> f64 {
    path.iter()
        .fold(c, |v, k| &v[*k])
        .as_f64()
        .unwrap_or_else(|| panic!("{} is not a number in {c}", path.join(".")))
}

#[test]
fn root_life_matches_tcplife_and_fixes_its_bystander_pids() {
    if !require_root("root_life_matches_tcplife_and_fixes_its_bystander_pids") {
        return;
    }
    let pair = NetPair::new();
    let (client, server): (IpAddr, IpAddr) = (pair.client_v4().into(), pair.server_v4().into());
    let (port_a, port_b) = (unique_port(), unique_port());

    // Both tracers attached before the first packet.
    let tcplife = Tcplife::start();
    let tracer = Tracer::start(&["life", "--json"]);

    let scenarios = [
        run_scenario(&pair, "client closes first", "serve", server, port_a),
        run_scenario(
            &pair,
            "server closes first",
            "serve-close-first",
            server,
            port_b,
        ),
    ];

    // This workload's connections only: the pair's addresses, one of the two server ports.
    let ours = |l: IpAddr, lp: u16, r: IpAddr, rp: u16| {
        let ports = [port_a, port_b];
        (l == client && r == server && ports.contains(&rp))
            || (l == server && r == client && ports.contains(&lp))
    };
    let keep = |r: &TcplifeRow| ours(r.laddr, r.lport, r.raddr, r.rport);
    tcplife.wait_rows(&keep, 4 * N, Duration::from_secs(10));
    let (tl_lines, tl_stderr) = tcplife.stop();
    let done = stop_after_quiet(tracer, &pair, Events::Unseen, Kept::NOTHING);
    assert!(
        !tl_stderr.contains("lost"),
        "tcplife lost events:\n{tl_stderr}"
    );
    assert_eq!(done.lost, 0, "netwatch lost events: {}", done.stderr);

    let tl: Vec<TcplifeRow> = tl_lines
        .iter()
        .filter_map(|l| TcplifeRow::parse(l))
        .filter(keep)
        .collect();
    let nw: Vec<&Value> = done
        .events
        .iter()
        .filter(|c| {
            let (l, lp, r, rp) = nw_tuple(c);
            ours(l, lp, r, rp)
        })
        .collect();

    // Both sides of every connection, once each, in both tools.
    assert_eq!(
        tl.len(),
        4 * N,
        "tcplife rows for this workload (2 close orders x {N} connections x 2 sides):\n{}",
        tl_lines.join("\n")
    );
    assert_eq!(
        nw.len(),
        4 * N,
        "netwatch records for this workload:\n{nw:#?}"
    );
    let tl_by: BTreeMap<FourTuple, &TcplifeRow> = tl.iter().map(|r| (r.tuple(), r)).collect();
    let nw_by: BTreeMap<FourTuple, &Value> = nw.iter().map(|c| (nw_tuple(c), *c)).collect();
    assert_eq!(tl_by.len(), 4 * N, "a 4-tuple twice in tcplife's rows");
    assert_eq!(nw_by.len(), 4 * N, "a 4-tuple twice in netwatch's rows");
    let tl_set: BTreeSet<_> = tl_by.keys().collect();
    let nw_set: BTreeSet<_> = nw_by.keys().collect();
    assert_eq!(
        nw_set,
        tl_set,
        "different connections; only netwatch: {:?}; only tcplife: {:?}",
        nw_set.difference(&tl_set).collect::<Vec<_>>(),
        tl_set.difference(&nw_set).collect::<Vec<_>>()
    );

    let mut bystanders = Vec::new();
    let mut max_diff: f64 = 0.0;
    let mut max_uncorrected: f64 = 0.0;
    for (tuple, c) in &nw_by {
        let t = tl_by[tuple];
        let (l, lp, _, rp) = *tuple;
        let is_client = l == client;
        let sc = scenarios
            .iter()
            .find(|s| s.port == if is_client { rp } else { lp })
            .expect("a scenario's port");
        let owner = if is_client {
            sc.client_pid
        } else {
            sc.server_pid
        };
        let side = if is_client { "client" } else { "server" };

        // Who opened it, and how it ended, for this close order.
        let (role, end) = match (is_client, sc.port == port_b) {
            (true, false) => ("active", "time-wait"),
            (false, false) => ("passive", "closed"),
            (true, true) => ("active", "closed"),
            (false, true) => ("passive", "time-wait"),
        };
        assert_eq!(c["role"], role, "{}: {side} role: {c}", sc.name);
        assert_eq!(c["end"], end, "{}: {side} end: {c}", sc.name);

        // Lifetime: tcplife measures from the (last) entry into ESTABLISHED.
        let handshake = if is_client {
            num(c, &["dwell_ms", "syn_sent"])
        } else {
            num(c, &["dwell_ms", "syn_recv"])
        };
        let ms = num(c, &["ms"]);
        let diff = (ms - handshake - t.ms).abs();
        max_diff = max_diff.max(diff);
        max_uncorrected = max_uncorrected.max((ms - t.ms).abs());
        assert!(
            diff <= LIFETIME_TOLERANCE_MS,
            "{}: {side} {tuple:?}: netwatch {ms:.3} ms - handshake {handshake:.3} ms vs \
             tcplife {:.2} ms\nnetwatch: {c}\ntcplife: {t:?}",
            sc.name,
            t.ms
        );

        // Owner: netwatch names the true owner, always.
        assert_eq!(
            c["pid"].as_u64(),
            Some(u64::from(owner)),
            "{}: {side} socket {tuple:?} owned by pid {owner} (client {}, server {}); \
             netwatch: {c}; tcplife: {t:?}",
            sc.name,
            sc.client_pid,
            sc.server_pid
        );
        if t.pid != owner {
            bystanders.push((sc.name, side, t.pid, t.comm.clone(), owner));
        }
    }

    let mut by_kind: BTreeMap<String, usize> = BTreeMap::new();
    for (name, side, pid, comm, _) in &bystanders {
        let who = if scenarios.iter().any(|s| s.client_pid == *pid) {
            "the client".to_string()
        } else if scenarios.iter().any(|s| s.server_pid == *pid) {
            "the other server".to_string()
        } else {
            format!("{comm} (pid {pid})")
        };
        *by_kind
            .entry(format!("{name}, {side} socket -> {who}"))
            .or_default() += 1;
    }
    println!(
        "tcplife comparison, {} connections x 2 sides:\n  \
         tcplife: {} of {} rows name a bystander instead of the owner\n  \
         netwatch: {} of {} rows name the owner\n  \
         lifetimes (netwatch ms - handshake vs tcplife MS): max difference {max_diff:.3} ms \
         (uncorrected: {max_uncorrected:.3} ms)",
        2 * N,
        bystanders.len(),
        4 * N,
        4 * N,
        4 * N
    );
    for (kind, n) in &by_kind {
        println!("  bystander: {kind}: {n}");
    }
    // The dropped first SYNs made two handshakes last ~1 s: the correction was needed.
    assert!(
        max_uncorrected > 500.0,
        "no long handshake: the SYN drops did not take (uncorrected max {max_uncorrected} ms)"
    );
    // tcplife caches no owner for a socket that closes first without LAST_ACK, so the server
    // that closes first must show bystanders: without them this test shows nothing.
    assert!(
        !bystanders.is_empty(),
        "tcplife named the owner of every socket: the workload no longer exercises the \
         softirq CLOSE (a newer tcplife?)"
    );
}
