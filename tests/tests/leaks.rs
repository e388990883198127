//! `netwatch leaks`, as root: sockets a process forgot to close (CLOSE_WAIT: the peer closed,
//! the process never did), found live by the kernel programs and at once by `--once` from
//! sock_diag and `/proc/*/fd`, each attributed to the process, descriptors, code path and
//! cgroup that really hold it. The leakers are C fixtures built for the test with frame
//! pointers and debug info (`tests/fixtures/*.c`), so the code path can be checked to the
//! source line; the kernel's own view (`/proc/<pid>/fd`, `/proc/<pid>/net/tcp`) is the oracle
//! for which descriptors leak.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    net::{IpAddr, Ipv4Addr},
    process::Command,
    time::{Duration, Instant},
};

use crate::support::{
    CgroupDir, TCP_CLOSE_WAIT, TCP_FIN_WAIT2, TCP_LISTEN, Tracer, build_fixture, cgroup_v2_of,
    cgroup2_mount_or_skip, endpoint, eventually, fds_in_state, marked_line, socket_fds, tcpdrive,
    wait_fds_in_state,
};
use netwatch_tests::{
    NetPair, ReadyChild, Side, find_line, netwatch_bin, output_with_timeout, require_root,
    unique_port,
};
use serde_json::Value;

/// Sockets each test leaks.
const N: usize = 5;
/// Bound on waiting for netwatch to report what the test leaked (min-age + a few intervals).
const SNAPSHOT_BOUND: Duration = Duration::from_secs(30);
/// Bound on the kernel getting the leaked sockets into CLOSE_WAIT.
const STATE_BOUND: Duration = Duration::from_secs(10);
/// Bound on one `netwatch leaks --once`.
const ONCE_TIMEOUT_SECS: u64 = 60;

/// How much older than `watched_ms` a socket netwatch saw entering its state may look:
/// the watch clock starts a little after the kernel programs are attached.
const WATCH_CLOCK_SLACK_MS: f64 = 250.0;

const KINDS: &[&str] = &["close_wait", "fin_wait2", "orphan_fin_wait2"];

// ---------------------------------------------------------------------------------------------
// Snapshot helpers

fn groups(snap: &Value) -> &[Value] {
    snap["groups"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_else(|| panic!("snapshot without a groups array: {snap}"))
}

/// The groups of `kind` owned by `pid`.
fn groups_of<'a>(snap: &'a Value, kind: &str, pid: u32) -> Vec<&'a Value> {
    groups(snap)
        .iter()
        .filter(|g| g["kind"] == kind && g["pid"].as_u64() == Some(u64::from(pid)))
        .collect()
}

/// The one group of `kind` owned by `pid`; panics with the snapshot when there is not exactly one.
fn the_group<'a>(snap: &'a Value, kind: &str, pid: u32) -> &'a Value {
    let found = groups_of(snap, kind, pid);
    assert_eq!(
        found.len(),
        1,
        "expected one {kind} group of pid {pid}: {snap:#}"
    );
    found[0]
}

/// Waits for a live snapshot with a `kind` group of `pid` holding exactly `N` sockets, checks
/// the snapshot's shape for `min_age_ms`, and returns it with that group.
fn live_group(tracer: &mut Tracer, kind: &str, pid: u32, min_age_ms: f64) -> (Value, Value) {
    let snap = tracer.wait_for_json_line(
        &format!("a {kind} group of pid {pid} with {N} sockets"),
        SNAPSHOT_BOUND,
        |s| has_group(s, kind, pid, N),
    );
    check_snapshot(&snap, min_age_ms);
    let g = the_group(&snap, kind, pid).clone();
    (snap, g)
}

/// Whether `snap` has a `kind` group of `pid` holding exactly `n` sockets.
fn has_group(snap: &Value, kind: &str, pid: u32, n: usize) -> bool {
    groups_of(snap, kind, pid)
        .iter()
        .any(|g| g["sockets"].as_u64() == Some(n as u64))
}

fn strs(v: &Value) -> Vec<&str> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|s| s.as_str().unwrap_or_else(|| panic!("not a string: {s}")))
        .collect()
}

fn u32s(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|n| n.as_u64().unwrap_or_else(|| panic!("not a number: {n}")) as u32)
        .collect()
}

fn f64_of(v: &Value, field: &str) -> f64 {
    v[field]
        .as_f64()
        .unwrap_or_else(|| panic!("{field} is not a number in {v}"))
}

/// What every snapshot must satisfy, whoever's sockets it lists: the documented fields with
/// their types, ages of at least `--min-age`, sorted descriptors, no stack without a code path.
fn check_snapshot(snap: &Value, min_age_ms: f64) {
    let at = snap["at"]
        .as_str()
        .unwrap_or_else(|| panic!("no at: {snap}"));
    assert!(at.contains('T'), "at is not RFC 3339: {at}");
    assert!(f64_of(snap, "watched_ms") >= 0.0, "{snap}");
    assert_eq!(f64_of(snap, "min_age_ms"), min_age_ms, "{snap}");
    for g in groups(snap) {
        let kind = g["kind"].as_str().unwrap_or_default();
        assert!(KINDS.contains(&kind), "unknown kind in {g}");
        assert!(g["pid"].is_u64() || g["pid"].is_null(), "pid: {g}");
        assert!(g["comm"].is_string() || g["comm"].is_null(), "comm: {g}");
        assert!(
            g["cgroup"].is_string() || g["cgroup"].is_null(),
            "cgroup: {g}"
        );
        assert!(g["netns"].is_u64() || g["netns"].is_null(), "netns: {g}");
        assert!(
            g["opened_by"].is_null() || g["opened_by"] == "accept" || g["opened_by"] == "connect",
            "opened_by: {g}"
        );
        let seen = g["code_path_seen"]
            .as_bool()
            .unwrap_or_else(|| panic!("code_path_seen: {g}"));
        let stack = strs(&g["stack"]);
        assert!(seen || stack.is_empty(), "a stack without a code path: {g}");
        let sockets = g["sockets"]
            .as_u64()
            .unwrap_or_else(|| panic!("sockets: {g}"));
        assert!(sockets >= 1, "empty group: {g}");
        assert!(g["oldest_at_least"].is_boolean(), "oldest_at_least: {g}");
        assert!(
            f64_of(g, "oldest_ms") >= min_age_ms,
            "a group younger than --min-age: {g}"
        );
        let fds = u32s(&g["fds"]);
        assert!(fds.windows(2).all(|w| w[0] < w[1]), "fds not sorted: {g}");
        for p in g["peers"]
            .as_array()
            .unwrap_or_else(|| panic!("peers: {g}"))
        {
            assert!(p["peer"].is_string() && p["sockets"].is_u64(), "peer: {p}");
        }
        let detail = g["detail"]
            .as_array()
            .unwrap_or_else(|| panic!("detail: {g}"));
        assert!(
            detail.len() as u64 <= sockets,
            "more detail than sockets: {g}"
        );
        for d in detail {
            assert!(d["local"].is_string() && d["remote"].is_string(), "{d}");
            assert!(d["at_least"].is_boolean(), "{d}");
            u32s(&d["fds"]);
            assert!(
                f64_of(d, "age_ms") >= min_age_ms,
                "a socket younger than --min-age: {g}"
            );
        }
    }
}

/// Checks of one group of the test's own: detail complete, peers summing to the sockets and
/// all on `peer_ip`, descriptors exactly `fds` (one per socket), netns that of `pid`.
fn check_own_group(g: &Value, pid: u32, n: usize, fds: &[u32], peer_ip: Ipv4Addr) {
    assert_eq!(g["sockets"].as_u64(), Some(n as u64), "{g:#}");
    assert_eq!(
        u32s(&g["fds"]),
        fds,
        "fds of {pid} (kernel: {fds:?}): {g:#}"
    );
    let links = socket_fds(pid);
    for fd in fds {
        assert!(links.contains_key(fd), "fd {fd} of {pid} is not a socket");
    }
    let peers = g["peers"].as_array().expect("peers");
    assert_eq!(
        peers
            .iter()
            .filter_map(|p| p["sockets"].as_u64())
            .sum::<u64>(),
        n as u64,
        "peers do not add up: {g:#}"
    );
    for p in peers {
        let peer = p["peer"].as_str().expect("peer");
        let (host, _port) = peer
            .rsplit_once(':')
            .unwrap_or_else(|| panic!("peer without a port: {peer}"));
        assert!(host_covers(host, peer_ip), "peer {peer} is not {peer_ip}");
    }
    let detail = g["detail"].as_array().expect("detail");
    assert_eq!(detail.len(), n, "detail of {n} sockets: {g:#}");
    let mut detail_fds: Vec<u32> = Vec::new();
    for d in detail {
        let f = u32s(&d["fds"]);
        assert_eq!(f.len(), 1, "one fd per leaked socket: {d}");
        detail_fds.extend(f);
    }
    detail_fds.sort_unstable();
    assert_eq!(detail_fds, fds, "detail fds: {g:#}");
    // The holder's network namespace and cgroup are known (it is alive): never null. The
    // cgroup is its v2 path, as every output names it (never a v1 hierarchy's).
    assert_eq!(
        g["netns"].as_u64(),
        Some(netns_inode(pid)),
        "netns of {pid}: {g:#}"
    );
    let v2 = cgroup_v2_of(pid).unwrap_or_else(|| panic!("no cgroup v2 line for {pid}"));
    assert_eq!(g["cgroup"], v2.as_str(), "cgroup of {pid}: {g:#}");
}

/// Whether a peer's host part (`10.1.2.3`, or a collapsed `10.1.2.0/24`) covers `ip`.
fn host_covers(host: &str, ip: Ipv4Addr) -> bool {
    match host.split_once('/') {
        None => host.parse::<Ipv4Addr>() == Ok(ip),
        Some((net, len)) => {
            let (Ok(net), Ok(len)) = (net.parse::<Ipv4Addr>(), len.parse::<u32>()) else {
                return false;
            };
            let mask = if len == 0 {
                0
            } else {
                u32::MAX << (32 - len.min(32))
            };
            u32::from(net) & mask == u32::from(ip) & mask
        }
    }
}

/// The frames of a stack must name `f` (at `file:line` when given) and then its callers, in
/// this order (innermost first).
fn assert_frames_in_order(stack: &[&str], file: &str, expected: &[(&str, Option<usize>)]) {
    let mut last = None;
    for (func, line) in expected {
        let want = match line {
            Some(l) => format!("{func} ({file}:{l})"),
            None => format!("{func} ({file}:"),
        };
        let at = stack
            .iter()
            .position(|f| f.starts_with(&want))
            .unwrap_or_else(|| panic!("{want} not in {stack:?}"));
        if let Some(prev) = last {
            assert!(at > prev, "innermost first: {stack:?}");
        }
        last = Some(at);
    }
}

// ---------------------------------------------------------------------------------------------
// Process and system helpers

/// `netwatch leaks --once <args>`: must exit 0; returns stdout.
fn leaks_once(args: &[&str]) -> String {
    let mut cmd = Command::new(netwatch_bin());
    cmd.args(["leaks", "--once"]).args(args);
    let out = output_with_timeout(cmd, ONCE_TIMEOUT_SECS);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "netwatch leaks --once {args:?} exited {}; stdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// `tcpdrive connect-close` from the client side: `n` connections to `addr`, each closed at
/// once (the server side goes CLOSE_WAIT when it never closes); returns the local ports.
fn connect_close(pair: &NetPair, addr: &str, n: usize) -> Vec<u16> {
    connect_close_by(pair, addr, n).1
}

/// [`connect_close`], with the pid of the client that did it.
fn connect_close_by(pair: &NetPair, addr: &str, n: usize) -> (u32, Vec<u16>) {
    let out = output_with_timeout(
        pair.exec(
            Side::Client,
            &tcpdrive(),
            &["connect-close", addr, "--count", &n.to_string()],
        ),
        30,
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "connect-close {addr}: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        find_line(&text, "DONE").expect("DONE line")[2..],
        [n.to_string(), "0".to_string()]
    );
    let ports: Vec<u16> = text
        .lines()
        .filter_map(|l| l.strip_prefix("OPENED "))
        .map(|l| {
            l.split_whitespace()
                .nth(1)
                .and_then(|p| p.parse().ok())
                .unwrap_or_else(|| panic!("bad OPENED line: {l}"))
        })
        .collect();
    assert_eq!(ports.len(), n, "{text}");
    let pid = find_line(&text, "DONE").expect("DONE line")[1]
        .parse()
        .expect("DONE <pid>");
    (pid, ports)
}

/// The inode of process `pid`'s network namespace (`/proc/<pid>/ns/net -> net:[<inode>]`).
fn netns_inode(pid: u32) -> u64 {
    let link = fs::read_link(format!("/proc/{pid}/ns/net")).expect("ns/net link");
    link.to_str()
        .and_then(|l| l.strip_prefix("net:["))
        .and_then(|l| l.strip_suffix(']'))
        .and_then(|l| l.parse().ok())
        .unwrap_or_else(|| panic!("bad ns link {}", link.display()))
}

/// `leaky_server` listening on a fresh port in the server namespace, and its `ip:port`.
fn start_leaky_server(pair: &NetPair) -> (ReadyChild, String) {
    let (ip, port) = (pair.server_v4(), unique_port());
    let srv = ReadyChild::spawn(pair.exec(
        Side::Server,
        &build_fixture("leaky_server"),
        &[&ip.to_string(), &port.to_string()],
    ));
    (srv, endpoint(IpAddr::V4(ip), port))
}

/// Processes the test did not spawn itself (a fixture's forked workers), SIGKILLed on drop.
struct KillOnDrop(Vec<u32>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        for &pid in &self.0 {
            // SAFETY: kill(2) on a worker of a fixture this test started.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Tests

#[test]
fn root_leaks_live_names_the_server_its_fds_and_the_accepting_code() {
    if !require_root("root_leaks_live_names_the_server_its_fds_and_the_accepting_code") {
        return;
    }
    let bin = build_fixture("leaky_server");
    let accept_line = marked_line("leaky_server.c", "ACCEPT_LINE");
    let pair = NetPair::new();
    let port = unique_port();
    let server_ip = pair.server_v4();
    let addr = endpoint(IpAddr::V4(server_ip), port);
    let mut tracer = Tracer::start(&["leaks", "--json", "--min-age", "2s", "--interval", "1s"]);
    let srv = ReadyChild::spawn(pair.exec(
        Side::Server,
        &bin,
        &[&server_ip.to_string(), &port.to_string()],
    ));
    let pid = srv.pid();
    let started = Instant::now();
    let client_ports = connect_close(&pair, &addr, N);
    let fds = wait_fds_in_state(pid, TCP_CLOSE_WAIT, N, STATE_BOUND);

    let (snap, g) = live_group(&mut tracer, "close_wait", pid, 2000.0);
    let g = &g;
    assert_eq!(g["comm"], "leaky_server", "{g:#}");
    assert_eq!(g["opened_by"], "accept", "{g:#}");
    assert_eq!(g["code_path_seen"], true, "{g:#}");
    assert_frames_in_order(
        &strs(&g["stack"]),
        "leaky_server.c",
        &[
            ("handle_conn_forgets_close", Some(accept_line)),
            ("serve_forever", None),
            ("main", None),
        ],
    );
    check_own_group(g, pid, N, &fds, pair.client_v4());
    // netwatch watched these sockets enter CLOSE_WAIT: their ages are exact, and no older
    // than the test's leaking.
    assert_eq!(g["oldest_at_least"], false, "{g:#}");
    let oldest = f64_of(g, "oldest_ms");
    assert!(
        oldest <= started.elapsed().as_secs_f64() * 1000.0,
        "oldest {oldest} ms is older than the leak: {g:#}"
    );
    // Nor older than netwatch's watch, give or take the moments between attaching the
    // programs and starting the watch clock (seen: 0.7 ms).
    assert!(
        oldest <= f64_of(&snap, "watched_ms") + WATCH_CLOCK_SLACK_MS,
        "{snap:#}"
    );
    let detail = g["detail"].as_array().expect("detail");
    let local = endpoint(IpAddr::V4(server_ip), port);
    let mut remote_ports = BTreeSet::new();
    for d in detail {
        assert_eq!(d["local"], local.as_str(), "{d}");
        assert_eq!(d["at_least"], false, "{d}");
        let remote = d["remote"].as_str().expect("remote");
        let (ip, rport) = remote.rsplit_once(':').expect("remote ip:port");
        assert_eq!(ip, pair.client_v4().to_string(), "{d}");
        remote_ports.insert(rport.parse::<u16>().expect("port"));
    }
    assert_eq!(
        remote_ports,
        client_ports.iter().copied().collect::<BTreeSet<_>>(),
        "the remote ends are the client's connections"
    );

    // SIGTERM: one last snapshot, exit 0, and only snapshots on stdout.
    let (status, stdout, stderr) = tracer.stop_output();
    assert!(
        status.success(),
        "netwatch leaks exited {status}:\n{stderr}"
    );
    let lines: Vec<Value> = crate::support::json_lines(&stdout);
    for s in &lines {
        check_snapshot(s, 2000.0);
    }
    let last = lines.last().expect("snapshots");
    assert!(
        has_group(last, "close_wait", pid, N),
        "the last snapshot still lists the leak: {last:#}"
    );
    drop(srv);
}

#[test]
fn root_leaks_live_names_the_client_and_the_connecting_code() {
    if !require_root("root_leaks_live_names_the_client_and_the_connecting_code") {
        return;
    }
    let bin = build_fixture("leaky_client");
    let connect_line = marked_line("leaky_client.c", "CONNECT_LINE");
    let pair = NetPair::new();
    let port = unique_port();
    let server_ip = pair.server_v4();
    let addr = endpoint(IpAddr::V4(server_ip), port);
    let mut tracer = Tracer::start(&["leaks", "--json", "--min-age", "2s", "--interval", "1s"]);
    // The server answers each request and closes first: the client's sockets go CLOSE_WAIT.
    let mut srv = ReadyChild::spawn(pair.exec(
        Side::Server,
        &tcpdrive(),
        &["serve-close-first", &addr, "--count", &N.to_string()],
    ));
    let cli = ReadyChild::spawn(pair.exec(
        Side::Client,
        &bin,
        &[&server_ip.to_string(), &port.to_string(), &N.to_string()],
    ));
    let pid = cli.pid();
    assert!(srv.wait(30).success(), "server: {:?}", srv.stdout_lines());
    let fds = wait_fds_in_state(pid, TCP_CLOSE_WAIT, N, STATE_BOUND);
    let local_ports: BTreeSet<u16> = cli
        .stdout_lines()
        .iter()
        .filter_map(|l| l.strip_prefix("CONNECTED "))
        .map(|l| l.split_whitespace().next().and_then(|p| p.parse().ok()))
        .map(|p| p.expect("CONNECTED <port> <fd>"))
        .collect();
    assert_eq!(local_ports.len(), N, "{:?}", cli.stdout_lines());

    let (_, g) = live_group(&mut tracer, "close_wait", pid, 2000.0);
    let g = &g;
    assert_eq!(g["comm"], "leaky_client", "{g:#}");
    assert_eq!(g["opened_by"], "connect", "{g:#}");
    assert_eq!(g["code_path_seen"], true, "{g:#}");
    assert_frames_in_order(
        &strs(&g["stack"]),
        "leaky_client.c",
        &[("open_and_forget", Some(connect_line)), ("main", None)],
    );
    check_own_group(g, pid, N, &fds, server_ip);
    assert_eq!(g["oldest_at_least"], false, "{g:#}");
    let mut seen_ports = BTreeSet::new();
    for d in g["detail"].as_array().expect("detail") {
        assert_eq!(d["remote"], addr.as_str(), "{d}");
        let local = d["local"].as_str().expect("local");
        let (ip, lport) = local.rsplit_once(':').expect("local ip:port");
        assert_eq!(ip, pair.client_v4().to_string(), "{d}");
        seen_ports.insert(lport.parse::<u16>().expect("port"));
    }
    assert_eq!(seen_ports, local_ports, "the client's own connections");
    let (status, _stdout, stderr) = tracer.stop_output();
    assert!(
        status.success(),
        "netwatch leaks exited {status}:\n{stderr}"
    );
    drop(cli);
}

/// The other half of the grouping: sockets whose peer never closed. A client shuts
/// down its side (FIN) and keeps the socket; the server never closes: the client's sockets
/// sit in FIN_WAIT2, held by it, and must be grouped as `fin_wait2` under its pid, with the
/// connect() that opened them and its fds.
#[test]
fn root_leaks_live_groups_fin_wait2_sockets_whose_peer_never_closed() {
    if !require_root("root_leaks_live_groups_fin_wait2_sockets_whose_peer_never_closed") {
        return;
    }
    let pair = NetPair::new();
    let mut tracer = Tracer::start(&["leaks", "--json", "--min-age", "1s", "--interval", "1s"]);
    let (srv, addr) = start_leaky_server(&pair);
    let cli = ReadyChild::spawn(pair.exec(
        Side::Client,
        &tcpdrive(),
        &["connect-shutdown", &addr, "--count", &N.to_string()],
    ));
    let pid = cli.pid();
    let fds = wait_fds_in_state(pid, TCP_FIN_WAIT2, N, STATE_BOUND);
    let (_, g) = live_group(&mut tracer, "fin_wait2", pid, 1000.0);
    let g = &g;
    assert_eq!(g["comm"], "tcpdrive", "{g:#}");
    assert_eq!(g["opened_by"], "connect", "{g:#}");
    assert_eq!(g["code_path_seen"], true, "{g:#}");
    assert_eq!(g["oldest_at_least"], false, "{g:#}");
    assert_eq!(u32s(&g["fds"]), fds, "{g:#}");
    // The server holds the other ends in CLOSE_WAIT, each in its own group: in a snapshot
    // waited for with it (the one above was chosen for the client's group, and the server's
    // sockets may reach the age of --min-age an interval later).
    let srv_pid = srv.pid();
    let snap = tracer.wait_for_json_line(
        &format!("a close_wait group of pid {srv_pid} with {N} sockets"),
        SNAPSHOT_BOUND,
        |s| has_group(s, "close_wait", srv_pid, N),
    );
    check_snapshot(&snap, 1000.0);
    assert!(has_group(&snap, "close_wait", srv.pid(), N), "{snap:#}");
    let (status, _stdout, stderr) = tracer.stop_output();
    assert!(
        status.success(),
        "netwatch leaks exited {status}:\n{stderr}"
    );
    drop((cli, srv));
}

/// Orphans, live: a client that closes first and exits (`tcpdrive connect-close`) against a
/// server that never closes leaves orphaned FIN_WAIT2 sockets that no process holds. netwatch
/// saw the client connect and close, so it names that client and its connect(), with exact
/// ages, though the client is gone.
#[test]
fn root_leaks_live_names_the_process_that_orphaned_fin_wait2_sockets() {
    if !require_root("root_leaks_live_names_the_process_that_orphaned_fin_wait2_sockets") {
        return;
    }
    let pair = NetPair::new();
    let mut tracer = Tracer::start(&["leaks", "--json", "--min-age", "1s", "--interval", "1s"]);
    let (srv, addr) = start_leaky_server(&pair);
    let (pid, ports) = connect_close_by(&pair, &addr, N);
    let (_, g) = live_group(&mut tracer, "orphan_fin_wait2", pid, 1000.0);
    assert_eq!(g["comm"], "tcpdrive", "{g:#}");
    assert_eq!(g["opened_by"], "connect", "{g:#}");
    assert_eq!(g["code_path_seen"], true, "{g:#}");
    assert_eq!(g["oldest_at_least"], false, "{g:#}");
    assert_eq!(
        u32s(&g["fds"]),
        Vec::<u32>::new(),
        "no process holds them: {g:#}"
    );
    let locals: BTreeSet<u16> = g["detail"]
        .as_array()
        .expect("detail")
        .iter()
        .map(|d| {
            assert_eq!(d["remote"], addr.as_str(), "{d}");
            let local = d["local"].as_str().expect("local");
            local
                .rsplit_once(':')
                .and_then(|(_, p)| p.parse().ok())
                .expect("port")
        })
        .collect();
    assert_eq!(
        locals,
        ports.into_iter().collect(),
        "the client's own connections"
    );
    let (status, _stdout, stderr) = tracer.stop_output();
    assert!(
        status.success(),
        "netwatch leaks exited {status}:\n{stderr}"
    );
    drop(srv);
}

#[test]
fn root_leaks_once_finds_a_leak_older_than_netwatch() {
    if !require_root("root_leaks_once_finds_a_leak_older_than_netwatch") {
        return;
    }
    let pair = NetPair::new();
    // No netwatch running while the server leaks.
    let (srv, addr) = start_leaky_server(&pair);
    let pid = srv.pid();
    connect_close(&pair, &addr, N);
    let fds = wait_fds_in_state(pid, TCP_CLOSE_WAIT, N, STATE_BOUND);
    let listeners = fds_in_state(pid, TCP_LISTEN);
    assert_eq!(listeners.len(), 1, "the listener: {:?}", socket_fds(pid));

    let stdout = leaks_once(&["--json", "--min-age", "0s"]);
    let lines: Vec<&str> = stdout.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one snapshot:\n{stdout}");
    let snap: Value = serde_json::from_str(lines[0]).expect("JSON snapshot");
    check_snapshot(&snap, 0.0);
    let g = the_group(&snap, "close_wait", pid);
    assert_eq!(g["comm"], "leaky_server", "{g:#}");
    // No kernel programs ran: no code path, and ages are lower bounds (since netwatch looked).
    assert_eq!(g["code_path_seen"], false, "{g:#}");
    assert_eq!(strs(&g["stack"]), Vec::<&str>::new(), "{g:#}");
    assert!(
        g["opened_by"].is_null() || g["opened_by"] == "accept",
        "{g:#}"
    );
    assert_eq!(g["oldest_at_least"], true, "{g:#}");
    for d in g["detail"].as_array().expect("detail") {
        assert_eq!(d["at_least"], true, "{d}");
    }
    check_own_group(g, pid, N, &fds, pair.client_v4());
    assert!(
        !u32s(&g["fds"]).contains(&listeners[0]),
        "the listener is no leak: {g:#}"
    );

    // `-p` keeps that process's groups only.
    let only = leaks_once(&["--json", "--min-age", "0s", "-p", &pid.to_string()]);
    let snap: Value = serde_json::from_str(only.trim()).expect("JSON snapshot");
    let groups = snap["groups"].as_array().expect("groups");
    assert!(
        !groups.is_empty()
            && groups
                .iter()
                .all(|g| g["pid"].as_u64() == Some(u64::from(pid))),
        "-p {pid}: {snap:#}"
    );

    // The text form: one block per group, starting `PID <pid> <comm> (cgroup: <path>)`.
    let text = leaks_once(&["--min-age", "0s"]);
    let header = format!("PID {pid} leaky_server");
    let start = text
        .lines()
        .position(|l| l.trim_start().starts_with(&header))
        .unwrap_or_else(|| panic!("no `{header}` line:\n{text}"));
    let block: Vec<&str> = text
        .lines()
        .skip(start + 1)
        .take_while(|l| !l.trim_start().starts_with("PID "))
        .collect();
    let block = format!("{}\n{}", text.lines().nth(start).unwrap(), block.join("\n"));
    assert!(
        block.contains("code path not seen"),
        "no `code path not seen` in the server's block:\n{block}\n\nall:\n{text}"
    );
    assert!(block.contains("(cgroup: "), "{block}");
    drop(srv);
}

#[test]
fn root_leaks_once_lists_orphaned_fin_wait2_of_the_closing_side() {
    if !require_root("root_leaks_once_lists_orphaned_fin_wait2_of_the_closing_side") {
        return;
    }
    let pair = NetPair::new();
    let (srv, addr) = start_leaky_server(&pair);
    // The client closes and exits; the server never closes: the client's sockets wait in
    // FIN_WAIT2 with no process left (tcp_fin_timeout, 60 s).
    let before_close = std::time::Instant::now();
    let ports: BTreeSet<u16> = connect_close(&pair, &addr, N).into_iter().collect();
    let after_close = std::time::Instant::now();
    wait_fds_in_state(srv.pid(), TCP_CLOSE_WAIT, N, STATE_BOUND);
    let ours = |local: &str, remote: &str| {
        remote == addr
            && local.rsplit_once(':').is_some_and(|(ip, p)| {
                ip == pair.client_v4().to_string() && p.parse().is_ok_and(|p| ports.contains(&p))
            })
    };
    let mut ss = String::new();
    let in_fin_wait2 = eventually(STATE_BOUND, || {
        ss = pair.run(Side::Client, &["ss", "-Htn", "state", "fin-wait-2"]);
        ss.lines()
            .filter(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.len() >= 4 && ours(f[f.len() - 2], f[f.len() - 1])
            })
            .count()
            == N
    });
    assert!(in_fin_wait2, "not {N} sockets in FIN_WAIT2:\n{ss}");
    let client_ns = pair.netns_inode(Side::Client);

    // The orphans' age is what is measured here: let some of it pass.
    std::thread::sleep(Duration::from_millis(1500).saturating_sub(after_close.elapsed()));
    let stdout = leaks_once(&["--json", "--min-age", "0s"]);
    let (oldest, youngest) = (before_close.elapsed(), after_close.elapsed());
    let snap: Value = serde_json::from_str(stdout.trim()).expect("one JSON snapshot");
    check_snapshot(&snap, 0.0);
    let mut found = 0;
    for g in groups(&snap)
        .iter()
        .filter(|g| g["kind"] == "orphan_fin_wait2")
    {
        let mine: Vec<&Value> = g["detail"]
            .as_array()
            .expect("detail")
            .iter()
            .filter(|d| ours(d["local"].as_str().unwrap(), d["remote"].as_str().unwrap()))
            .collect();
        if mine.is_empty() {
            continue;
        }
        // Orphans: no process holds them any more.
        assert!(g["pid"].is_null(), "{g:#}");
        // A timewait socket has no tcp_info: its age comes from its timer (tcp_fin_timeout less
        // the time left), a lower bound that lies between the client's closes and now (the
        // kernel's timer has ms granularity, hence the 100 ms slack).
        for d in &mine {
            let age = f64_of(d, "age_ms");
            assert!(
                age + 100.0 >= youngest.as_secs_f64() * 1000.0
                    && age <= oldest.as_secs_f64() * 1000.0 + 100.0,
                "age {age} ms, closed {youngest:?} to {oldest:?} ago: {d}"
            );
            assert_eq!(d["at_least"], true, "{d}");
        }
        assert_eq!(u32s(&g["fds"]), Vec::<u32>::new(), "{g:#}");
        // The namespace sock_diag listed them in: the client's, never unknown.
        assert_eq!(
            g["netns"].as_u64(),
            Some(client_ns),
            "the client's namespace: {g:#}"
        );
        found += mine.len();
    }
    assert_eq!(
        found, N,
        "orphan_fin_wait2 sockets of the client:\n{snap:#}\nss:\n{ss}"
    );
    drop(srv);
}

#[test]
fn root_leaks_names_the_cgroup_of_each_server() {
    if !require_root("root_leaks_names_the_cgroup_of_each_server") {
        return;
    }
    let Some(mount) = cgroup2_mount_or_skip("root_leaks_names_the_cgroup_of_each_server") else {
        return;
    };
    const PER_SERVER: usize = 2;
    let bin = build_fixture("leaky_server");
    // Declared before the servers: dropped after them (and kills what is left in them).
    let me = std::process::id();
    let cg_a = CgroupDir::create(&mount, &format!("netwatch-test-{me}-a"));
    let cg_b = CgroupDir::create(&mount, &format!("netwatch-test-{me}-b"));
    let pair = NetPair::new();
    let server_ip = pair.server_v4();
    let (port_a, port_b) = (unique_port(), unique_port());
    let mut leaks = Tracer::start(&["leaks", "--json", "--min-age", "1s", "--interval", "1s"]);
    // --stacks: owners at accept() itself (the servers never read what they accept, so
    // without it netwatch would name them only when they close).
    let trace = Tracer::start(&["trace", "--json", "--stacks"]);
    let start = |port: u16| {
        ReadyChild::spawn(pair.exec(
            Side::Server,
            &bin,
            &[&server_ip.to_string(), &port.to_string()],
        ))
    };
    let srv_a = start(port_a);
    cg_a.add(srv_a.pid());
    let srv_b = start(port_b);
    cg_b.add(srv_b.pid());
    let (pid_a, pid_b) = (srv_a.pid(), srv_b.pid());
    for port in [port_a, port_b] {
        connect_close(&pair, &endpoint(IpAddr::V4(server_ip), port), PER_SERVER);
    }
    let fds_a = wait_fds_in_state(pid_a, TCP_CLOSE_WAIT, PER_SERVER, STATE_BOUND);
    let fds_b = wait_fds_in_state(pid_b, TCP_CLOSE_WAIT, PER_SERVER, STATE_BOUND);

    let snap = leaks.wait_for_json_line(
        &format!("close_wait groups of {pid_a} and {pid_b} with {PER_SERVER} sockets each"),
        SNAPSHOT_BOUND,
        |s| {
            has_group(s, "close_wait", pid_a, PER_SERVER)
                && has_group(s, "close_wait", pid_b, PER_SERVER)
        },
    );
    check_snapshot(&snap, 1000.0);
    for (pid, cg, fds) in [(pid_a, &cg_a, &fds_a), (pid_b, &cg_b, &fds_b)] {
        let g = the_group(&snap, "close_wait", pid);
        assert_eq!(g["cgroup"], cg.rel.as_str(), "cgroup of {pid}: {g:#}");
        check_own_group(g, pid, PER_SERVER, fds, pair.client_v4());
    }

    // `trace --json`: every accept of each server carries its cgroup and network namespace.
    let accepts_of = |lines: &[String], pid: u32| -> Vec<Value> {
        lines
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|e| e["kind"] == "accept" && e["pid"].as_u64() == Some(u64::from(pid)))
            .collect()
    };
    let all_traced = eventually(Duration::from_secs(10), || {
        let lines = trace.stdout_lines_so_far();
        accepts_of(&lines, pid_a).len() == PER_SERVER
            && accepts_of(&lines, pid_b).len() == PER_SERVER
    });
    let done = trace.stop();
    assert!(
        all_traced,
        "accept events of both servers:\n{}",
        done.stdout
    );
    for (pid, cg) in [(pid_a, &cg_a), (pid_b, &cg_b)] {
        let accepts: Vec<&Value> = done
            .events
            .iter()
            .filter(|e| e["kind"] == "accept" && e["pid"].as_u64() == Some(u64::from(pid)))
            .collect();
        assert_eq!(accepts.len(), PER_SERVER, "{}", done.stdout);
        // And the socket's network namespace, which the kernel read: the server's.
        let ns = netns_inode(pid);
        for ev in accepts {
            assert_eq!(ev["cgroup"], cg.rel.as_str(), "accept of {pid}: {ev}");
            assert_eq!(ev["netns"].as_u64(), Some(ns), "accept of {pid}: {ev}");
        }
    }
    let (status, _stdout, stderr) = leaks.stop_output();
    assert!(
        status.success(),
        "netwatch leaks exited {status}:\n{stderr}"
    );
    drop((srv_a, srv_b));
}

#[test]
fn root_leaks_attributes_each_socket_to_the_prefork_worker_that_accepted_it() {
    if !require_root("root_leaks_attributes_each_socket_to_the_prefork_worker_that_accepted_it") {
        return;
    }
    const WORKERS: usize = 3;
    const CONNECTIONS: usize = 9;
    let bin = build_fixture("prefork_server");
    let accept_line = marked_line("prefork_server.c", "ACCEPT_LINE");
    let pair = NetPair::new();
    let port = unique_port();
    let server_ip = pair.server_v4();
    let addr = endpoint(IpAddr::V4(server_ip), port);
    let mut tracer = Tracer::start(&["leaks", "--json", "--min-age", "1s", "--interval", "1s"]);
    let srv = ReadyChild::spawn(pair.exec(
        Side::Server,
        &bin,
        &[
            &server_ip.to_string(),
            &port.to_string(),
            &WORKERS.to_string(),
        ],
    ));
    let parent = srv.pid();
    let workers: Vec<u32> = srv
        .stdout_lines()
        .iter()
        .find_map(|l| l.strip_prefix("WORKERS "))
        .expect("WORKERS line before READY")
        .split_whitespace()
        .map(|p| p.parse().expect("worker pid"))
        .collect();
    let _workers_guard = KillOnDrop(workers.clone());
    assert_eq!(workers.len(), WORKERS);
    let client_ports: BTreeSet<u16> = connect_close(&pair, &addr, CONNECTIONS)
        .into_iter()
        .collect();

    // (worker, peer port, fd) of every accepted socket, as the workers said.
    let mut accepted: Vec<(u32, u16, u32)> = Vec::new();
    let all_accepted = eventually(STATE_BOUND, || {
        accepted = srv
            .stdout_lines()
            .iter()
            .filter_map(|l| l.strip_prefix("ACCEPTED "))
            .map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                assert_eq!(f.len(), 3, "ACCEPTED <pid> <port> <fd>: {l}");
                (
                    f[0].parse().unwrap(),
                    f[1].parse().unwrap(),
                    f[2].parse().unwrap(),
                )
            })
            .collect();
        accepted.len() == CONNECTIONS
    });
    assert!(all_accepted, "{:?}", srv.stdout_lines());
    assert_eq!(
        accepted.iter().map(|a| a.1).collect::<BTreeSet<_>>(),
        client_ports
    );
    let mut by_worker: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    for &(w, _, fd) in &accepted {
        assert!(workers.contains(&w), "ACCEPTED by a non-worker {w}");
        by_worker.entry(w).or_default().push(fd);
    }
    for (w, fds) in &mut by_worker {
        fds.sort_unstable();
        let kernel = wait_fds_in_state(*w, TCP_CLOSE_WAIT, fds.len(), STATE_BOUND);
        assert_eq!(&kernel, fds, "CLOSE_WAIT fds of worker {w}");
    }
    if by_worker.len() == 1 {
        eprintln!(
            "note: the kernel gave all {CONNECTIONS} connections to one worker; \
             attribution is still checked per socket"
        );
    }

    let server_ns = netns_inode(parent);
    let in_our_ns = |g: &Value| g["netns"].as_u64().is_none_or(|n| n == server_ns);
    let counted = |s: &Value| -> u64 {
        groups(s)
            .iter()
            .filter(|g| g["kind"] == "close_wait")
            .filter(|g| {
                g["pid"]
                    .as_u64()
                    .is_some_and(|p| workers.contains(&(p as u32)))
            })
            .filter_map(|g| g["sockets"].as_u64())
            .sum()
    };
    let snap = tracer.wait_for_json_line(
        &format!("{CONNECTIONS} close_wait sockets of the workers {workers:?}"),
        SNAPSHOT_BOUND,
        |s| counted(s) == CONNECTIONS as u64,
    );
    check_snapshot(&snap, 1000.0);
    assert!(
        groups(&snap)
            .iter()
            .all(|g| g["pid"].as_u64() != Some(u64::from(parent))),
        "a group of the parent {parent}, which accepted nothing: {snap:#}"
    );
    let local = endpoint(IpAddr::V4(server_ip), port);
    for &(worker, peer_port, fd) in &accepted {
        let remote = endpoint(IpAddr::V4(pair.client_v4()), peer_port);
        let holders: Vec<(&Value, &Value)> = groups(&snap)
            .iter()
            .filter(|g| g["kind"] == "close_wait" && in_our_ns(g))
            .flat_map(|g| {
                g["detail"]
                    .as_array()
                    .expect("detail")
                    .iter()
                    .filter(|d| d["local"] == local.as_str() && d["remote"] == remote.as_str())
                    .map(move |d| (g, d))
            })
            .collect();
        assert_eq!(
            holders.len(),
            1,
            "one close_wait socket {local} <- {remote}: {snap:#}"
        );
        let (g, d) = holders[0];
        assert_eq!(
            g["pid"].as_u64(),
            Some(u64::from(worker)),
            "{remote} was accepted by worker {worker} (parent {parent}): {g:#}"
        );
        assert_eq!(u32s(&d["fds"]), [fd], "fd of {remote} in {worker}: {d}");
        assert_eq!(g["comm"], "prefork_server", "{g:#}");
        assert_eq!(g["opened_by"], "accept", "{g:#}");
        assert_eq!(g["code_path_seen"], true, "{g:#}");
        assert_frames_in_order(
            &strs(&g["stack"]),
            "prefork_server.c",
            &[("worker_loop", Some(accept_line)), ("main", None)],
        );
    }
    for (w, fds) in &by_worker {
        let g = the_group(&snap, "close_wait", *w);
        check_own_group(g, *w, fds.len(), fds, pair.client_v4());
    }
    let (status, _stdout, stderr) = tracer.stop_output();
    assert!(
        status.success(),
        "netwatch leaks exited {status}:\n{stderr}"
    );
    drop(srv);
}

/// A socket handed on (README, "netwatch leaks": "if it handed the socket on (fd passing, fork
/// then exit), the process holding it now"), over IPv6: a server accepts N connections, forks
/// and exits; its child holds them in CLOSE_WAIT and must be the group's process, with its own
/// fds. `--comm` then selects holders by command name: this server's group and not another
/// leaker's, and the other way round.
#[test]
fn root_leaks_names_the_holder_of_a_handed_on_socket_and_comm_selects_over_ipv6() {
    if !require_root("root_leaks_names_the_holder_of_a_handed_on_socket_and_comm_selects_over_ipv6")
    {
        return;
    }
    let bin = build_fixture("handoff_server");
    let pair = NetPair::new();
    let (port, other_port) = (unique_port(), unique_port());
    let server_ip = pair.server_v6();
    let addr = endpoint(IpAddr::V6(server_ip), port);
    let mut tracer = Tracer::start(&["leaks", "--json", "--min-age", "1s", "--interval", "1s"]);
    let mut srv = ReadyChild::spawn(pair.exec(
        Side::Server,
        &bin,
        &[&server_ip.to_string(), &port.to_string(), &N.to_string()],
    ));
    let parent = srv.pid();
    connect_close(&pair, &addr, N);
    let mut holder = None;
    let handed = eventually(STATE_BOUND, || {
        holder = srv
            .stdout_lines()
            .iter()
            .find_map(|l| l.strip_prefix("HOLDER "))
            .and_then(|p| p.trim().parse::<u32>().ok());
        holder.is_some()
    });
    assert!(handed, "no HOLDER line: {:?}", srv.stdout_lines());
    let child = holder.unwrap();
    let _child_guard = KillOnDrop(vec![child]);
    assert!(srv.wait(10).success(), "the parent exits after the fork");
    let fds = wait_fds_in_state(child, TCP_CLOSE_WAIT, N, STATE_BOUND);
    // Another leaker, by another command name.
    let (other, _) =
        crate::support::leaked_connections(&pair, &endpoint(IpAddr::V6(server_ip), other_port), 2);

    let (snap, g) = live_group(&mut tracer, "close_wait", child, 1000.0);
    assert_eq!(g["comm"], "handoff_server", "{g:#}");
    assert_eq!(u32s(&g["fds"]), fds, "the child's own fds: {g:#}");
    assert_eq!(g["opened_by"], "accept", "{g:#}");
    assert!(
        groups(&snap)
            .iter()
            .all(|g| g["pid"].as_u64() != Some(u64::from(parent))),
        "a group of the parent {parent}, which holds nothing since it exited: {snap:#}"
    );
    for d in g["detail"].as_array().expect("detail") {
        assert_eq!(d["local"], addr.as_str(), "{d}");
    }
    let (status, _stdout, stderr) = tracer.stop_output();
    assert!(status.success(), "{stderr}");

    // --comm: each name keeps its own holder only.
    for (comm, pid, n, not) in [
        ("handoff_server", child, N, other.pid()),
        ("tcpdrive", other.pid(), 2, child),
    ] {
        let text = leaks_once(&["--json", "--min-age", "0s", "--comm", comm]);
        let snap: Value = serde_json::from_str(text.trim()).expect("one JSON snapshot");
        assert!(
            has_group(&snap, "close_wait", pid, n),
            "--comm {comm}: {snap:#}"
        );
        for g in groups(&snap) {
            assert_eq!(g["comm"], comm, "--comm {comm} kept another holder: {g:#}");
            assert_ne!(g["pid"].as_u64(), Some(u64::from(not)), "{g:#}");
        }
    }
    drop(other);
}

/// The number of snapshots a text `leaks` printed so far (each opens with its summary line).
fn text_snapshots(tracer: &Tracer) -> usize {
    tracer
        .stdout_lines_so_far()
        .iter()
        .filter(|l| l.contains(" stuck sockets in "))
        .count()
}

/// Text `leaks` prints a snapshot only when the groups change (README: "printed when the groups
/// change"), not every interval; and without CAP_SYS_PTRACE a snapshot says so in `warnings`,
/// naming the capability.
#[test]
fn root_leaks_text_is_quiet_while_groups_stay_and_warns_without_cap_sys_ptrace() {
    if !require_root("root_leaks_text_is_quiet_while_groups_stay_and_warns_without_cap_sys_ptrace")
    {
        return;
    }
    const LEAKED: usize = 2;
    let pair = NetPair::new();
    let addr = endpoint(IpAddr::V4(pair.server_v4()), unique_port());
    let mut leak = ReadyChild::spawn(pair.exec(
        Side::Server,
        &tcpdrive(),
        &["serve-leak", &addr, "--count", &LEAKED.to_string()],
    ));
    let pid = leak.pid().to_string();
    let tracer = Tracer::start(&[
        "leaks",
        "-p",
        &pid,
        "--min-age",
        "0s",
        "--interval",
        "500ms",
    ]);
    let out = output_with_timeout(
        pair.exec(
            Side::Client,
            &tcpdrive(),
            &["connect", &addr, "--count", &LEAKED.to_string()],
        ),
        30,
    );
    assert!(out.status.success());
    wait_fds_in_state(leak.pid(), TCP_CLOSE_WAIT, LEAKED, STATE_BOUND);
    let leak_shown = eventually(SNAPSHOT_BOUND, || {
        tracer
            .stdout_lines_so_far()
            .iter()
            .any(|l| l.contains(&format!("{LEAKED} stuck sockets in 1 group")))
    });
    assert!(leak_shown, "{:?}", tracer.stdout_lines_so_far());
    let shown = text_snapshots(&tracer);
    // Six intervals with the same groups: no new snapshot.
    let changed = eventually(Duration::from_secs(3), || text_snapshots(&tracer) != shown);
    assert!(
        !changed,
        "a snapshot with the same groups: {:#?}",
        tracer.stdout_lines_so_far()
    );

    // Without CAP_SYS_PTRACE (root keeps the rest): the warning names it.
    let mut cmd = Command::new("setpriv");
    cmd.args([
        "--bounding-set",
        "-sys_ptrace",
        "--inh-caps",
        "-sys_ptrace",
        "--",
    ])
    .arg(netwatch_bin())
    .args(["leaks", "--once", "--json", "--min-age", "0s", "-p", &pid]);
    let out = output_with_timeout(cmd, ONCE_TIMEOUT_SECS);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let snap: Value = serde_json::from_str(stdout.trim()).expect("one JSON snapshot");
    let warnings = strs(&snap["warnings"]);
    assert!(
        warnings.iter().any(|w| w.contains("CAP_SYS_PTRACE")),
        "{snap:#}"
    );
    assert!(
        warnings.iter().all(|w| !w.contains("CAP_SYS_ADMIN")),
        "CAP_SYS_ADMIN was kept: {snap:#}"
    );
    // With every capability, no warning about one.
    let snap: Value =
        serde_json::from_str(leaks_once(&["--json", "--min-age", "0s", "-p", &pid]).trim())
            .expect("one JSON snapshot");
    assert!(
        snap.get("warnings")
            .is_none_or(|w| strs(w).iter().all(|w| !w.contains("CAP_"))),
        "{snap:#}"
    );

    // The groups change (the leak is gone): a new snapshot.
    leak.kill();
    let changed = eventually(SNAPSHOT_BOUND, || text_snapshots(&tracer) > shown);
    let (status, stdout, stderr) = tracer.stop_output();
    assert!(status.success(), "{stderr}");
    assert!(changed, "no snapshot after the leak ended:\n{stdout}");
}

/// `netwatch analyze FILE --leaks`: must exit 0; returns stdout.
fn analyze_leaks(file: &std::path::Path, args: &[&str]) -> String {
    crate::support::analyze(file, &[&["--leaks"], args].concat())
}

#[test]
fn root_leaks_recorded_replays_byte_identical_after_the_leaker_is_gone() {
    if !require_root("root_leaks_recorded_replays_byte_identical_after_the_leaker_is_gone") {
        return;
    }
    let accept_line = marked_line("leaky_server.c", "ACCEPT_LINE");
    let scratch = crate::support::Scratch::new("leaks-record");
    let (file, dir) = (scratch.path("leaks.nwr"), scratch.path("leaks-dir"));
    let (file_arg, dir_arg) = (file.to_string_lossy(), dir.to_string_lossy());
    let live = ["--min-age", "1s", "--interval", "1s"];
    let mut json =
        Tracer::start(&[&["leaks", "--json", "--record", &file_arg][..], &live[..]].concat());
    let pair = NetPair::new();
    let (srv, addr) = start_leaky_server(&pair);
    let pid = srv.pid();
    connect_close(&pair, &addr, N);
    wait_fds_in_state(pid, TCP_CLOSE_WAIT, N, STATE_BOUND);
    let (_, g) = live_group(&mut json, "close_wait", pid, 1000.0);
    assert_eq!(g["code_path_seen"], true, "{g:#}");
    let (json_status, json_live, json_err) = json.stop_output();
    assert!(
        json_status.success(),
        "leaks --json exited {json_status}:\n{json_err}"
    );
    // One run at a time. The text run starts after the leak: its sockets are "at least" as
    // old as the kernel says, then as its watch says, snapshot after snapshot.
    let header = format!("PID {pid} leaky_server");
    let text = Tracer::start(&[&["leaks", "--record-dir", &dir_arg][..], &live[..]].concat());
    let deadline = Instant::now() + SNAPSHOT_BOUND;
    while !text
        .stdout_lines_so_far()
        .iter()
        .any(|l| l.trim_start().starts_with(&header))
    {
        assert!(
            Instant::now() < deadline,
            "no `{header}` line within {SNAPSHOT_BOUND:?}:\n{}\nstderr:\n{}",
            text.stdout_lines_so_far().join("\n"),
            text.stderr_lines().join("\n")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (text_status, text_live, text_err) = text.stop_output();
    assert!(
        text_status.success(),
        "leaks exited {text_status}:\n{text_err}"
    );
    // Gone before the replay: a replay that asked this host would name nothing.
    drop(srv);

    let json_replayed = analyze_leaks(&file, &["--json"]);
    assert_eq!(
        json_replayed, json_live,
        "analyze --leaks --json vs the live run"
    );
    let text_replayed = analyze_leaks(&dir, &[]);
    assert_eq!(
        text_replayed, text_live,
        "analyze --leaks (text) vs the live run"
    );
    // What made them equal is the recorded snapshots, code path included.
    let snaps = crate::support::json_lines(&json_replayed);
    let last = snaps.last().expect("snapshots");
    let g = the_group(last, "close_wait", pid);
    assert_frames_in_order(
        &strs(&g["stack"]),
        "leaky_server.c",
        &[
            ("handle_conn_forgets_close", Some(accept_line)),
            ("main", None),
        ],
    );
    // The replay can show another cut of the same snapshots: here, none old enough.
    let young = analyze_leaks(&file, &["--json", "--min-age", "1h"]);
    let young = crate::support::json_lines(&young);
    assert_eq!(young.len(), snaps.len());
    assert!(young.iter().all(|s| groups(s).is_empty()), "{young:?}");
    let only = analyze_leaks(&file, &["--json", "-p", &pid.to_string()]);
    let only = crate::support::json_lines(&only);
    assert!(
        only.iter()
            .flat_map(groups)
            .all(|g| g["pid"].as_u64() == Some(u64::from(pid))),
        "{only:?}"
    );
    assert!(has_group(
        only.last().expect("snapshots"),
        "close_wait",
        pid,
        N
    ));
}
