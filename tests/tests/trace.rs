//! `netwatch trace` end to end, as root: the real BPF programs, real TCP between a client and a
//! server process in two network namespaces this test creates and removes. The kernel's own
//! per-namespace counters are the oracle wherever one exists.
//!
//! Test names start with `root_` so they can be selected (`cargo xtask test -- root_`).

use std::{net::IpAddr, time::Duration};

use crate::support::{
    Events, Finished, Kept, Scratch, Tracer, analyze, analyze_with_stderr, endpoint, eventually,
    firewalled_connects, ip, json_lines, kernel_counted_retransmit, port, step, stop_after_quiet,
    tcpdrive,
};
use netwatch_tests::{
    NetPair, ReadyChild, Side, counter_delta, drop_data_ruleset, find_line, output_with_timeout,
    require_root, unique_port,
};
use serde_json::Value;

/// Whether `e`'s local endpoint is `local` and its remote `remote` (port 0 = any port).
fn endpoints(e: &Value, local: (IpAddr, u16), remote: (IpAddr, u16)) -> bool {
    ip(e, "saddr") == local.0
        && (local.1 == 0 || port(e, "sport") == local.1)
        && ip(e, "daddr") == remote.0
        && (remote.1 == 0 || port(e, "dport") == remote.1)
}

/// Events of sockets in the network namespace `netns` (inode) whose local endpoint is `local`
/// and remote is `remote` (port 0 = any port). The namespace, not the address, tells this
/// test's sockets from another test process's: each process's pairs reuse the same subnets.
fn between(
    events: &[Value],
    netns: u64,
    local: (IpAddr, u16),
    remote: (IpAddr, u16),
) -> Vec<&Value> {
    events
        .iter()
        .filter(|e| e["netns"].as_u64() == Some(netns) && endpoints(e, local, remote))
        .collect()
}

fn steps(events: &[&Value]) -> Vec<String> {
    events.iter().map(|e| step(e)).collect()
}

/// One connection, client closing first; returns (tracer output, client pid, server pid).
fn one_connection(pair: &NetPair, server: IpAddr, port: u16) -> (Finished, u32, u32) {
    let tracer = Tracer::start(&["trace", "--json"]);
    let addr = endpoint(server, port);
    let mut srv = ReadyChild::spawn(pair.exec(Side::Server, &tcpdrive(), &["serve", &addr]));
    let mut cli =
        ReadyChild::spawn_background(pair.exec(Side::Client, &tcpdrive(), &["connect", &addr]));
    assert!(
        cli.wait(20).success(),
        "client failed: {:?}",
        cli.stdout_lines()
    );
    assert!(
        srv.wait(20).success(),
        "server failed: {:?}",
        srv.stdout_lines()
    );
    let client_pid = find_line(&cli.stdout_lines().join("\n"), "DONE").expect("DONE")[1]
        .parse()
        .expect("pid");
    // The last ACK and FIN may still be on their way after both processes exited.
    let finished = stop_after_quiet(tracer, pair, Events::Stdout, Kept::NOTHING);
    (finished, client_pid, srv.pid())
}

fn full_lifecycle(v6: bool) {
    let pair = NetPair::new();
    let (client, server): (IpAddr, IpAddr) = if v6 {
        (pair.client_v6().into(), pair.server_v6().into())
    } else {
        (pair.client_v4().into(), pair.server_v4().into())
    };
    let port = unique_port();
    let before_c = pair.nstat(Side::Client);
    let before_s = pair.nstat(Side::Server);
    let (out, client_pid, server_pid) = one_connection(&pair, server, port);
    let ev = &out.events;
    let (client_ns, server_ns) = (
        pair.netns_inode(Side::Client),
        pair.netns_inode(Side::Server),
    );

    // The client's socket: everything towards server:port from the client address.
    let client_sock = between(ev, client_ns, (client, 0), (server, port));
    let client_states: Vec<_> = client_sock
        .iter()
        .copied()
        .filter(|e| e["kind"] == "state")
        .collect();
    assert_eq!(
        steps(&client_states),
        [
            "CLOSE->SYN_SENT",
            "SYN_SENT->ESTABLISHED",
            "ESTABLISHED->FIN_WAIT1",
            "FIN_WAIT1->FIN_WAIT2",
            "FIN_WAIT2->CLOSE"
        ],
        "client transitions; all events:\n{client_sock:#?}"
    );
    let client_port = crate::support::port(client_states[1], "sport");
    assert_ne!(client_port, 0);
    // sport is only known once the handshake picked it; from then on it must not change.
    for e in &client_states[1..] {
        assert_eq!(crate::support::port(e, "sport"), client_port, "{e}");
    }

    // The accepted socket on the server: local server:port, remote the client's port.
    let accepted = between(ev, server_ns, (server, port), (client, client_port));
    let accepted_states: Vec<_> = accepted
        .iter()
        .copied()
        .filter(|e| e["kind"] == "state")
        .collect();
    assert_eq!(
        steps(&accepted_states),
        [
            "LISTEN->SYN_RECV",
            "SYN_RECV->ESTABLISHED",
            "ESTABLISHED->CLOSE_WAIT",
            "CLOSE_WAIT->LAST_ACK",
            "LAST_ACK->CLOSE"
        ],
        "accepted-socket transitions; all events:\n{accepted:#?}"
    );
    // The listener: server:port with no peer.
    let unspecified: IpAddr = if v6 {
        "::".parse().unwrap()
    } else {
        "0.0.0.0".parse().unwrap()
    };
    let listener = between(ev, server_ns, (server, port), (unspecified, 0));
    assert_eq!(
        steps(&listener)
            .into_iter()
            .filter(|s| s.contains("->"))
            .collect::<Vec<_>>(),
        ["CLOSE->LISTEN", "LISTEN->CLOSE"],
        "listener: {listener:#?}"
    );

    // Owners (b): the client's socket names the client, always; the server's sockets name the
    // server or nobody; nothing names the other side, pid 0, or a kernel thread.
    for e in &client_sock {
        assert_eq!(
            e["pid"], client_pid,
            "client event not owned by client: {e}"
        );
    }
    for e in accepted.iter().chain(&listener) {
        assert!(
            e["pid"].is_null() || e["pid"] == server_pid,
            "server event owned by someone else (client is {client_pid}): {e}"
        );
    }
    for e in client_sock.iter().chain(&accepted).chain(&listener) {
        let comm = e["comm"].as_str().unwrap_or("");
        assert!(
            !comm.starts_with("ksoftirqd") && !comm.starts_with("swapper") && e["pid"] != 0,
            "bystander named as owner: {e}"
        );
    }
    // close() in the server is where its owner is read: from then on it is known.
    let last_ack = accepted_states[3];
    assert_eq!(last_ack["pid"], server_pid, "{last_ack}");
    assert_eq!(last_ack["owner_seen_here"], true, "{last_ack}");
    assert_eq!(accepted_states[4]["pid"], server_pid);
    // Listener owner: read at listen().
    assert_eq!(listener[0]["pid"], server_pid);

    // Dwell times: known once netwatch saw the state begin, and exactly the time since the
    // socket's previous transition (both stamped by the kernel's monotonic clock).
    for states in [&client_states, &accepted_states] {
        for w in states.windows(2) {
            let ms = w[1]["ms_in_old"]
                .as_f64()
                .unwrap_or_else(|| panic!("no dwell: {}", w[1]));
            let ts = |e: &Value| e["ts_ns"].as_u64().unwrap_or_else(|| panic!("ts_ns: {e}"));
            let between_ms = (ts(w[1]) - ts(w[0])) as f64 / 1e6;
            assert!(
                (ms - between_ms).abs() < 1e-6,
                "ms_in_old {ms} but {between_ms} ms since {}: {}",
                w[0],
                w[1]
            );
        }
    }

    // The kernel's counters agree with what netwatch saw in these namespaces.
    let dc = counter_delta(&before_c, &pair.nstat(Side::Client));
    let ds = counter_delta(&before_s, &pair.nstat(Side::Server));
    let count = |evs: &[&Value], s: &str| steps(evs).iter().filter(|x| *x == s).count() as u64;
    assert_eq!(dc["TcpActiveOpens"], count(&client_sock, "CLOSE->SYN_SENT"));
    assert_eq!(
        ds["TcpPassiveOpens"],
        count(&accepted, "SYN_RECV->ESTABLISHED")
    );
    assert_eq!(out.lost, 0, "{}", out.stderr);
    assert_eq!(out.produced, out.delivered, "{}", out.stderr);
}

#[test]
fn root_full_lifecycle_ipv4_transitions_and_owners() {
    if !require_root("root_full_lifecycle_ipv4_transitions_and_owners") {
        return;
    }
    full_lifecycle(false);
}

#[test]
fn root_full_lifecycle_ipv6_transitions_and_owners() {
    if !require_root("root_full_lifecycle_ipv6_transitions_and_owners") {
        return;
    }
    full_lifecycle(true);
}

#[test]
fn root_connect_to_closed_port_is_a_reset_in_syn_sent() {
    if !require_root("root_connect_to_closed_port_is_a_reset_in_syn_sent") {
        return;
    }
    let pair = NetPair::new();
    let (client, server): (IpAddr, IpAddr) = (pair.client_v4().into(), pair.server_v4().into());
    let port = unique_port();
    let before_c = pair.nstat(Side::Client);
    let before_s = pair.nstat(Side::Server);
    let tracer = Tracer::start(&["trace", "--json"]);
    let out = output_with_timeout(
        pair.exec(
            Side::Client,
            &tcpdrive(),
            &["connect-expect-fail", &endpoint(server, port)],
        ),
        20,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    let failed = find_line(&stdout, "FAILED").expect("FAILED line");
    assert_eq!(failed[2], "ECONNREFUSED");
    let client_pid: u64 = failed[1].parse().unwrap();
    let done = stop_after_quiet(tracer, &pair, Events::Stdout, Kept::NOTHING);

    let client_sock = between(
        &done.events,
        pair.netns_inode(Side::Client),
        (client, 0),
        (server, port),
    );
    let resets: Vec<_> = client_sock
        .iter()
        .filter(|e| e["kind"] == "reset_received")
        .collect();
    assert_eq!(resets.len(), 1, "{client_sock:#?}");
    assert_eq!(resets[0]["state"], "SYN_SENT", "{}", resets[0]);
    assert_eq!(resets[0]["pid"], client_pid, "{}", resets[0]);
    let states: Vec<_> = client_sock
        .iter()
        .copied()
        .filter(|e| e["kind"] == "state")
        .collect();
    assert_eq!(steps(&states), ["CLOSE->SYN_SENT", "SYN_SENT->CLOSE"]);

    // The server's kernel answered with a reset because no socket wanted the SYN. Without a
    // socket there is no namespace to read: the reset is told by its endpoints (the port is
    // this test's).
    let sent: Vec<_> = done
        .events
        .iter()
        .filter(|e| e["kind"] == "reset_sent" && endpoints(e, (server, port), (client, 0)))
        .collect();
    assert_eq!(sent.len(), 1, "{sent:#?}");
    assert_eq!(sent[0]["reason"], "NO_SOCKET", "{}", sent[0]);
    assert!(
        sent[0]["pid"].is_null(),
        "no process owns a reset for no socket: {}",
        sent[0]
    );

    let dc = counter_delta(&before_c, &pair.nstat(Side::Client));
    let ds = counter_delta(&before_s, &pair.nstat(Side::Server));
    assert_eq!(dc["TcpAttemptFails"], resets.len() as u64);
    assert_eq!(ds["TcpOutRsts"], sent.len() as u64);
}

#[test]
fn root_dropped_packets_yield_retransmits_equal_to_the_kernel_count() {
    if !require_root("root_dropped_packets_yield_retransmits_equal_to_the_kernel_count") {
        return;
    }
    let pair = NetPair::new();
    let (client, server): (IpAddr, IpAddr) = (pair.client_v4().into(), pair.server_v4().into());
    let port = unique_port();
    let addr = endpoint(server, port);
    let tracer = Tracer::start(&["trace", "--json"]);
    let mut srv = ReadyChild::spawn(pair.exec(Side::Server, &tcpdrive(), &["serve", &addr]));
    pair.nft(Side::Server, &drop_data_ruleset("nwdrop", port));
    let before = pair.nstat(Side::Client);
    // 1000 bytes: one segment (below the MSS), so the kernel counts one segment per retransmit.
    let mut cli = ReadyChild::spawn_background(pair.exec(
        Side::Client,
        &tcpdrive(),
        &[
            "send-slow",
            &addr,
            "--bytes",
            "1000",
            "--timeout-ms",
            "30000",
        ],
    ));
    // Wait (bounded) until the kernel has retransmitted at least twice, then let data through.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let d = counter_delta(&before, &pair.nstat(Side::Client));
        if d["TcpRetransSegs"] >= 2 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no retransmissions within 15 s: {d:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    pair.nft(Side::Server, "delete table inet nwdrop");
    assert!(
        cli.wait(40).success(),
        "send-slow: {:?}",
        cli.stdout_lines()
    );
    assert!(srv.wait(20).success());
    let done = stop_after_quiet(tracer, &pair, Events::Stdout, Kept::NOTHING);
    let after = pair.nstat(Side::Client);

    let rtx: Vec<_> = between(
        &done.events,
        pair.netns_inode(Side::Client),
        (client, 0),
        (server, port),
    )
    .into_iter()
    .filter(|e| kernel_counted_retransmit(e))
    .collect();
    let kernel = counter_delta(&before, &after)["TcpRetransSegs"];
    assert!(kernel >= 2);
    assert_eq!(
        rtx.len() as u64,
        kernel,
        "netwatch vs TcpRetransSegs: {rtx:#?}"
    );
    for e in &rtx {
        assert_eq!(e["state"], "ESTABLISHED", "{e}");
        assert_eq!(
            e["pid"].as_u64().map(|p| p as u32),
            Some(cli.pid()),
            "retransmit owner: {e}"
        );
    }
}

/// A retransmission the client's own firewall drops fails after the kernel counted it: the
/// event carries the error, and `report`, `life` and the kernel all count it.
#[test]
fn root_retransmissions_a_firewall_drops_count_as_the_kernel_counts() {
    if !require_root("root_retransmissions_a_firewall_drops_count_as_the_kernel_counts") {
        return;
    }
    const K: u64 = 2;
    let pair = NetPair::new();
    let server: IpAddr = pair.server_v4().into();
    let port_ = unique_port();
    let addr = endpoint(server, port_);
    let scratch = Scratch::new("rtxfail");
    let rec = scratch.path("rtx.nwr");
    let tracer = Tracer::start(&["report", "--json", "--record", rec.to_str().unwrap()]);
    let before = pair.nstat(Side::Client);
    firewalled_connects(&pair, &addr, port_, K);
    let done = stop_after_quiet(tracer, &pair, Events::Recording(&rec), Kept::NOTHING);
    let d = counter_delta(&before, &pair.nstat(Side::Client));
    assert_eq!(done.lost, 0, "{}", done.stderr);
    assert_eq!(
        (d["TcpRetransSegs"], d["TcpExtTCPRetransFail"]),
        (K, K),
        "one failed retransmission per connect: {d:?}"
    );

    let ns = pair.netns_inode(Side::Client);
    let events = json_lines(&analyze(&rec, &["--json"]));
    let rtx: Vec<&Value> = events
        .iter()
        .filter(|e| {
            e["kind"] == "retransmit"
                && e["netns"].as_u64() == Some(ns)
                && port(e, "dport") == port_
        })
        .collect();
    assert_eq!(
        rtx.iter().map(|e| e["err"].as_i64()).collect::<Vec<_>>(),
        vec![Some(-i64::from(libc::EPERM)); K as usize],
        "{rtx:#?}"
    );
    assert!(rtx.iter().all(|e| kernel_counted_retransmit(e)));
    // The report of this destination counts them; `life` ends both connects as timeouts
    // with one retransmission each.
    let dst = format!("dst {addr}");
    let report: Value =
        serde_json::from_str(&analyze(&rec, &["--report", "--json", &dst])).expect("JSON report");
    let by_peer = report["retransmits_by_peer"].as_array().expect("rows");
    let row = by_peer
        .iter()
        .find(|r| r["key"] == server.to_string().as_str())
        .unwrap_or_else(|| panic!("{server} not among {by_peer:#?}"));
    assert_eq!(row["count"].as_u64(), Some(d["TcpRetransSegs"]));
    let life = json_lines(&analyze(&rec, &["--life", "--json", &dst]));
    let ends: Vec<_> = life
        .iter()
        .map(|c| (c["end"].as_str().unwrap_or("?"), c["retransmits"].as_u64()))
        .collect();
    assert_eq!(ends, vec![("timeout", Some(1)); K as usize], "{life:#?}");
}

/// Events each connection of `tcpdrive connect` to `tcpdrive serve` makes, as this test's
/// filter keeps them: the client socket's 5 transitions (CLOSE -> SYN_SENT ... FIN_WAIT2 ->
/// CLOSE) and its destroy, the accepted socket's 5 (LISTEN -> SYN_RECV ... LAST_ACK -> CLOSE),
/// its owner learnt at its first read (`accept`) and its destroy. (The listener's events have
/// no remote port, so `-D` drops them.)
const EVENTS_PER_CONNECTION: u64 = 13;

/// Client ports of this file's tests that keep to their own traffic (see
/// [`crate::support::own_traffic_only`]): apart from top's and robustness's.
const CLIENT_PORTS: (u16, u16) = (12000, 12999);

#[test]
fn root_stalled_reader_losses_are_counted_exactly() {
    if !require_root("root_stalled_reader_losses_are_counted_exactly") {
        return;
    }
    let pair = NetPair::new();
    let server: IpAddr = pair.server_v4().into();
    let port = unique_port();
    let addr = endpoint(server, port);
    const CONNECTIONS: u64 = 100;
    // One page of ring buffer holds ~28 events of 144 bytes; the workload makes 1,300. Only
    // the workload's events pass the kernel's filter, so how many it produced is known.
    let mut args = vec![
        "trace".to_string(),
        "--json".into(),
        "--ring-size".into(),
        "4096".into(),
    ];
    args.extend(crate::support::own_traffic_only(
        &pair,
        CLIENT_PORTS,
        &[port],
        &[],
    ));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let before = [Side::Client, Side::Server].map(|s| pair.nstat(s));
    let tracer = Tracer::start(&args);
    let mut srv = ReadyChild::spawn(pair.exec(
        Side::Server,
        &tcpdrive(),
        &["serve", &addr, "--count", &CONNECTIONS.to_string()],
    ));
    tracer.signal(libc::SIGSTOP);
    let out = output_with_timeout(
        pair.exec(
            Side::Client,
            &tcpdrive(),
            &["connect", &addr, "--count", &CONNECTIONS.to_string()],
        ),
        60,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(srv.wait(30).success());
    tracer.signal(libc::SIGCONT);
    // Events are lost on purpose: only the namespaces' quiet tells that the workload is over.
    let done = stop_after_quiet(tracer, &pair, Events::Unseen, Kept::NOTHING);
    let [dc, ds] = [Side::Client, Side::Server].map(|s| pair.nstat(s));
    let (dc, ds) = (
        counter_delta(&before[0], &dc),
        counter_delta(&before[1], &ds),
    );

    assert!(
        done.lost > 0,
        "a 4 KiB ring with a stopped reader must lose: {}",
        done.stderr
    );
    assert_eq!(done.delivered, done.events.len() as u64, "{}", done.stderr);
    // What the workload made, known without netwatch: its connections' events, and any
    // segment the kernel retransmitted or reset it sent (nstat; normally none on a veth).
    let extra = ["TcpRetransSegs", "TcpOutRsts"]
        .iter()
        .map(|c| dc[*c] + ds[*c])
        .sum::<u64>();
    crate::support::assert_produced(
        &done,
        CONNECTIONS * EVENTS_PER_CONNECTION + extra,
        &format!("{CONNECTIONS} connections, {extra} retransmits and resets"),
    );
    assert_eq!(
        done.produced,
        done.delivered + done.lost,
        "every produced event is delivered or counted lost: {}",
        done.stderr
    );
}

#[test]
fn root_sigterm_detaches_every_program() {
    if !require_root("root_sigterm_detaches_every_program") {
        return;
    }
    let tracer = Tracer::start(&["trace", "--json"]);
    // The programs and maps this very process holds (other netwatch instances may run).
    let (progs, maps) = crate::support::bpf_objects_of(tracer.pid());
    let mut names: Vec<String> = crate::support::loaded_programs()
        .into_iter()
        .filter(|(id, _)| progs.contains(id))
        .map(|(_, name)| name)
        .collect();
    names.sort();
    let expected = crate::support::programs_loaded(false);
    assert_eq!(
        names, expected,
        "all seven programs of a trace loaded while running"
    );
    assert!(maps.len() >= 3, "EVENTS, SOCKETS, STATS at least: {maps:?}");
    let done = tracer.stop();
    assert!(done.stderr.contains("events seen"), "{}", done.stderr);
    // A raw tracepoint's link lets go of its program after an RCU grace period: wait for
    // that, bounded (classic tracepoints' programs are gone at once).
    let mut left = Vec::new();
    let gone = crate::support::eventually(Duration::from_secs(10), || {
        left = crate::support::loaded_programs()
            .into_iter()
            .filter(|(id, _)| progs.contains(id))
            .collect();
        left.is_empty()
    });
    assert!(gone, "programs left 10 s after SIGTERM: {left:?}");
    // The kernel frees maps after an RCU grace period once the last program using them is
    // gone: wait for that, bounded.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let out = std::process::Command::new("bpftool")
            .args(["map", "show", "--json"])
            .output()
            .expect("bpftool");
        let live_maps: Value = serde_json::from_slice(&out.stdout).expect("JSON");
        let left_maps: Vec<_> = live_maps
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| {
                m["id"]
                    .as_u64()
                    .is_some_and(|id| maps.contains(&(id as u32)))
            })
            .map(|m| m["name"].to_string())
            .collect();
        if left_maps.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "maps still there 10 s after SIGTERM: {left_maps:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn root_missing_tracepoint_degrades_with_a_warning() {
    if !require_root("root_missing_tracepoint_degrades_with_a_warning") {
        return;
    }
    // A tracefs view in which only inet_sock_set_state exists: the six other features of a trace must be
    // switched off with one warning each, and transitions still traced.
    let scratch = Scratch::new("fake-tracefs");
    let fake = scratch.path("tracefs");
    let dir = fake.join("events/sock/inet_sock_set_state");
    std::fs::create_dir_all(&dir).unwrap();
    let real = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
        .iter()
        .map(|r| format!("{r}/events/sock/inet_sock_set_state/format"))
        .find_map(|p| std::fs::read(p).ok());
    // Starting netwatch once mounts tracefs if needed; read again after that.
    let real = real.unwrap_or_else(|| {
        Tracer::start(&["trace", "--duration", "1s"]).wait_exit();
        std::fs::read("/sys/kernel/tracing/events/sock/inet_sock_set_state/format").unwrap()
    });
    std::fs::write(dir.join("format"), real).unwrap();

    let pair = NetPair::new();
    let server: IpAddr = pair.server_v4().into();
    let port = unique_port();
    let tracer = Tracer::start_with(&["trace", "--json"], |c| {
        c.env("NETWATCH_TRACEFS", &fake);
    });
    let mut srv = ReadyChild::spawn(pair.exec(
        Side::Server,
        &tcpdrive(),
        &["serve", &endpoint(server, port)],
    ));
    let out = output_with_timeout(
        pair.exec(
            Side::Client,
            &tcpdrive(),
            &["connect", &endpoint(server, port)],
        ),
        20,
    );
    assert!(out.status.success());
    assert!(srv.wait(20).success());
    // No destroy tracepoint here, so no destroy events to wait for: the namespaces' quiet.
    let done = stop_after_quiet(tracer, &pair, Events::Unseen, Kept::NOTHING);
    let warnings: Vec<_> = done
        .stderr
        .lines()
        .filter(|l| l.contains("does not exist on this kernel"))
        .collect();
    // Five tcp:* tracepoints and tcp_rcv_space_adjust (owners of accepted sockets at their
    // first read); the accept exits are not this run's (no code paths asked for).
    assert_eq!(warnings.len(), 6, "{}", done.stderr);
    assert!(
        done.stderr.contains("1 of 7 tracepoints attached"),
        "{}",
        done.stderr
    );
    let ns = [Side::Client, Side::Server].map(|s| pair.netns_inode(s));
    let kinds: std::collections::BTreeSet<_> = done
        .events
        .iter()
        .filter(|e| e["netns"].as_u64().is_some_and(|n| ns.contains(&n)))
        .map(|e| e["kind"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(kinds.into_iter().collect::<Vec<_>>(), ["state"]);
}

#[test]
fn root_without_capabilities_names_cap_bpf_and_cap_perfmon() {
    if !require_root("root_without_capabilities_names_cap_bpf_and_cap_perfmon") {
        return;
    }
    // Root with an empty bounding set: uid 0 but no capabilities at all.
    let mut cmd = std::process::Command::new("setpriv");
    cmd.args(["--bounding-set", "-all", "--inh-caps", "-all", "--"])
        .arg(netwatch_tests::netwatch_bin())
        .arg("trace");
    let out = output_with_timeout(cmd, 30);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("CAP_BPF") && stderr.contains("CAP_PERFMON"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "one clear error line: {stderr}");
    assert!(out.stdout.is_empty());
}

/// `--record` keeps the live run's filter, and `analyze` applies it again: the replay prints
/// exactly what the live run printed, although the recording holds every event that reached
/// user space (README, "Recording and replaying").
#[test]
fn root_a_replay_prints_what_the_filtered_live_run_printed() {
    if !require_root("root_a_replay_prints_what_the_filtered_live_run_printed") {
        return;
    }
    let pair = NetPair::new();
    let server: IpAddr = pair.server_v4().into();
    let (kept_port, other_port) = (unique_port(), unique_port());
    let scratch = Scratch::new("replay-filter");
    let recording = scratch.path("events.nwr");
    let rec = recording.to_str().expect("UTF-8 path");
    // The expression's state test is decided in user space: the recording holds more.
    let filter = format!("state established and ( sport = :{kept_port} or dport = :{kept_port} )");
    let tracer = Tracer::start(&["trace", "--json", "--record", rec, &filter]);
    for port in [kept_port, other_port] {
        let mut srv = ReadyChild::spawn(pair.exec(
            Side::Server,
            &tcpdrive(),
            &["serve", &endpoint(server, port), "--count", "2"],
        ));
        let out = output_with_timeout(
            pair.exec(
                Side::Client,
                &tcpdrive(),
                &["connect", &endpoint(server, port), "--count", "2"],
            ),
            20,
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(srv.wait(20).success());
    }
    let done = stop_after_quiet(tracer, &pair, Events::Recording(&recording), Kept::NOTHING);
    assert!(
        !done.events.is_empty()
            && done.events.iter().all(|e| {
                // A transition's state is the one it enters; any other event's, its `state`.
                let state = if e["kind"] == "state" {
                    &e["new_state"]
                } else {
                    &e["state"]
                };
                state == "ESTABLISHED"
                    && (port(e, "sport") == kept_port || port(e, "dport") == kept_port)
            }),
        "the live run printed what the filter keeps: {:#?}",
        done.events
    );
    // Every event the recording holds, with a filter that keeps all.
    assert!(
        analyze(&recording, &["--json", "sport >= 0"])
            .lines()
            .count()
            > done.events.len(),
        "the recording holds more than the printed lines"
    );
    let (replayed, stderr) = analyze_with_stderr(&recording, &["--json"]);
    assert_eq!(
        replayed, done.stdout,
        "the replay differs from the live run"
    );
    assert!(
        stderr.contains("applying the recording's filter"),
        "{stderr}"
    );
}

/// A quiet host does not look hung: the text header comes as soon as the programs are
/// attached, and after 5 s without an event a note says netwatch is still watching.
#[test]
fn root_a_quiet_trace_prints_its_header_at_once_and_says_it_is_watching() {
    if !require_root("root_a_quiet_trace_prints_its_header_at_once_and_says_it_is_watching") {
        return;
    }
    // Port 1 on both ends: no traffic of this machine matches, so no event arrives.
    let tracer = Tracer::start(&["trace", "-L", "1", "-D", "1", "sport = :1"]);
    let header = crate::support::eventually(Duration::from_secs(5), || {
        tracer
            .stdout_lines_so_far()
            .first()
            .is_some_and(|l| l.starts_with("TIME(s)") && l.contains("MS_IN_OLD"))
    });
    assert!(
        header,
        "no header within 5 s: {:?}",
        tracer.stdout_lines_so_far()
    );
    let noted = crate::support::eventually(Duration::from_secs(15), || {
        tracer
            .stderr_lines()
            .iter()
            .any(|l| l.contains("no TCP event yet after 5 s"))
    });
    let lines = tracer.stdout_lines_so_far();
    let (status, _, stderr) = tracer.stop_output();
    assert!(status.success(), "{stderr}");
    assert!(noted, "no quiet note on stderr:\n{stderr}");
    assert_eq!(lines.len(), 1, "only the header: {lines:?}");
}

/// One line of `trace`'s text output, split into its columns.
#[derive(Debug)]
struct TextLine {
    time: String,
    pid: String,
    comm: String,
    laddr: String,
    raddr: String,
    event: String,
    ms_in_old: String,
    /// `-w` only: the container (`-` outside one) and the cgroup.
    container: Option<String>,
    cgroup: Option<String>,
}

/// Splits a text line: TIME PID COMM LADDR:LPORT RADDR:RPORT EVENT (several words) MS_IN_OLD
/// [CONTAINER CGROUP]. None of this test's columns but EVENT holds a space.
fn text_line(line: &str, wide: bool) -> TextLine {
    let f: Vec<&str> = line.split_whitespace().collect();
    let tail = if wide { 3 } else { 1 };
    assert!(f.len() >= 6 + tail, "too few columns: {line}");
    let end = f.len() - tail;
    TextLine {
        time: f[0].into(),
        pid: f[1].into(),
        comm: f[2].into(),
        laddr: f[3].into(),
        raddr: f[4].into(),
        event: f[5..end].join(" "),
        ms_in_old: f[end].into(),
        container: wide.then(|| f[f.len() - 2].to_string()),
        cgroup: wide.then(|| f[f.len() - 1].to_string()),
    }
}

/// `HH:MM:SS.mmm` as milliseconds of the day.
fn ms_of_day(hms: &str) -> u64 {
    let (hms, ms) = hms
        .split_once('.')
        .unwrap_or_else(|| panic!("no .mmm: {hms}"));
    assert_eq!(ms.len(), 3, "milliseconds: {hms}.{ms}");
    let parts: Vec<u64> = hms
        .split(':')
        .map(|p| p.parse().unwrap_or_else(|_| panic!("not HH:MM:SS: {hms}")))
        .collect();
    assert_eq!(parts.len(), 3, "not HH:MM:SS: {hms}");
    ((parts[0] * 60 + parts[1]) * 60 + parts[2]) * 1000 + ms.parse::<u64>().unwrap()
}

/// Milliseconds of the current UTC day, from the system clock.
fn now_ms_of_day() -> u64 {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970");
    (since_epoch.as_millis() % 86_400_000) as u64
}

/// The text output (README, "What it shows"): the columns, `-T`'s wall-clock time, `-w`'s wide
/// address columns and CGROUP, a `FIN_WAIT1 -> FIN_WAIT1` line where close() follows
/// shutdown() before the FIN is acknowledged, and `SYNACK_RETRANSMIT` lines, one per SYN-ACK
/// the kernel counted as sent again.
#[test]
fn root_trace_text_columns_time_wide_and_half_close() {
    if !require_root("root_trace_text_columns_time_wide_and_half_close") {
        return;
    }
    let pair = NetPair::new();
    let (p_half, p_synack) = (unique_port(), unique_port());
    let filter = crate::support::own_traffic_only(&pair, CLIENT_PORTS, &[p_half, p_synack], &[]);
    let with = |extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = std::iter::once("trace".to_string())
            .chain(extra.iter().map(|s| s.to_string()))
            .collect();
        a.extend(filter.iter().cloned());
        a
    };
    let plain_args = with(&[]);
    let wide_args = with(&["-T", "-w"]);
    let start_ms = now_ms_of_day();
    let plain = Tracer::start(&plain_args.iter().map(String::as_str).collect::<Vec<_>>());
    let wide = Tracer::start(&wide_args.iter().map(String::as_str).collect::<Vec<_>>());
    let before = [Side::Client, Side::Server].map(|s| pair.nstat(s));

    // IPv6, close() right after shutdown(): the server's namespace drops the client's FIN
    // until the client has exited, so the FIN is unacknowledged when close() comes.
    let (c6, s6): (IpAddr, IpAddr) = (pair.client_v6().into(), pair.server_v6().into());
    let half_addr = endpoint(s6, p_half);
    let mut srv = ReadyChild::spawn(pair.exec(Side::Server, &tcpdrive(), &["serve", &half_addr]));
    pair.nft(
        Side::Server,
        &format!(
            "table inet nwfin {{\n  chain input {{\n    type filter hook input priority 0; \
             policy accept;\n    tcp dport {p_half} tcp flags & fin == fin drop\n  }}\n}}\n"
        ),
    );
    let out = output_with_timeout(
        pair.exec(
            Side::Client,
            &tcpdrive(),
            &["connect-half-close", &half_addr],
        ),
        20,
    );
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let client_pid = find_line(&stdout, "DONE").expect("DONE")[1].to_string();
    pair.nft(Side::Server, "delete table inet nwfin");
    assert!(srv.wait(20).success(), "{:?}", srv.stdout_lines());
    // The client's FIN is acknowledged once nothing but its timewait socket is left: its
    // retransmissions are all counted.
    let settled = eventually(Duration::from_secs(10), || {
        pair.run(Side::Client, &["ss", "-Htan"])
            .lines()
            .all(|l| l.trim().is_empty() || l.starts_with("TIME-WAIT"))
    });
    assert!(settled, "{}", pair.run(Side::Client, &["ss", "-tan"]));
    let half_rtx = counter_delta(&before[0], &pair.nstat(Side::Client))["TcpRetransSegs"];

    // IPv4, SYN-ACKs sent again: the client's namespace drops them until its connect times out.
    let (s4, c4): (IpAddr, IpAddr) = (pair.server_v4().into(), pair.client_v4().into());
    let synack_addr = endpoint(s4, p_synack);
    let mut listener =
        ReadyChild::spawn(pair.exec(Side::Server, &tcpdrive(), &["listen-only", &synack_addr]));
    pair.nft(
        Side::Client,
        &format!(
            "table inet nwsynack {{\n  chain input {{\n    type filter hook input priority 0; \
             policy accept;\n    tcp sport {p_synack} drop\n  }}\n}}\n"
        ),
    );
    let out = output_with_timeout(
        pair.exec(
            Side::Client,
            &tcpdrive(),
            &["connect-expect-fail", &synack_addr, "--timeout-ms", "1500"],
        ),
        20,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(" ETIMEDOUT"), "{stdout}");
    let listener_pid = listener.pid().to_string();
    listener.kill();
    pair.nft(Side::Client, "delete table inet nwsynack");

    let kept = Kept {
        states: &["SYN-RECV"],
        sockets: 0,
    };
    let plain = stop_after_quiet(plain, &pair, Events::Unseen, Kept { ..kept });
    let wide = stop_after_quiet(wide, &pair, Events::Unseen, kept);
    let end_ms = now_ms_of_day();
    let ds = counter_delta(&before[1], &pair.nstat(Side::Server));

    for (out, wide_run) in [(&plain, false), (&wide, true)] {
        let mut lines = out.stdout.lines();
        let header: Vec<&str> = lines.next().expect("header").split_whitespace().collect();
        let mut expected = vec![
            if wide_run { "TIME" } else { "TIME(s)" },
            "PID",
            "COMM",
            "LADDR:LPORT",
            "RADDR:RPORT",
            "EVENT",
            "MS_IN_OLD",
        ];
        if wide_run {
            expected.extend(["CONTAINER", "CGROUP"]);
        }
        assert_eq!(header, expected, "{}", out.stdout);
        let header_line = out.stdout.lines().next().unwrap();
        let raddr_at = header_line.find("RADDR:RPORT").unwrap();
        // 21 characters per address column, 47 with -w (any IPv6 address and port).
        assert_eq!(
            raddr_at,
            12 + 1 + 7 + 1 + 15 + 1 + if wide_run { 47 } else { 21 } + 1
        );
        let rows: Vec<(String, TextLine)> = lines
            .map(|l| (l.to_string(), text_line(l, wide_run)))
            .collect();
        assert!(!rows.is_empty(), "no lines: {}", out.stdout);
        for (raw, row) in &rows {
            assert_eq!(
                raw.find(row.raddr.as_str()),
                Some(raddr_at),
                "RADDR:RPORT not under its header:\n{header_line}\n{raw}"
            );
            if wide_run {
                let t = ms_of_day(&row.time);
                assert!(
                    t + 1000 >= start_ms && t <= end_ms + 1000,
                    "time {} outside the run ({start_ms}..{end_ms} ms of the day): {raw}",
                    row.time
                );
            } else {
                let t: f64 = row
                    .time
                    .parse()
                    .unwrap_or_else(|_| panic!("TIME(s): {raw}"));
                let run_s = (end_ms.saturating_sub(start_ms)) as f64 / 1000.0;
                assert!(
                    (0.0..=run_s + 1.0).contains(&t),
                    "TIME(s) {t} beyond {run_s} s: {raw}"
                );
            }
        }

        // The half-closed client socket: its transitions in order, owned by the client.
        let client_laddr = format!("[{c6}]:");
        let client: Vec<&TextLine> = rows
            .iter()
            .map(|(_, r)| r)
            .filter(|r| r.laddr.starts_with(&client_laddr) && r.raddr == half_addr)
            .collect();
        let events: Vec<&str> = client.iter().map(|r| r.event.as_str()).collect();
        let at = |e: &str| {
            events
                .iter()
                .position(|x| *x == e)
                .unwrap_or_else(|| panic!("no {e} line for the client: {client:#?}"))
        };
        assert_eq!(at("CLOSE -> SYN_SENT"), 0, "{client:#?}");
        assert!(
            at("SYN_SENT -> ESTABLISHED") < at("ESTABLISHED -> FIN_WAIT1")
                && at("ESTABLISHED -> FIN_WAIT1") < at("FIN_WAIT1 -> FIN_WAIT1"),
            "{client:#?}"
        );
        assert_eq!(events.last(), Some(&"DESTROY in CLOSE"), "{client:#?}");
        let fw = client[at("FIN_WAIT1 -> FIN_WAIT1")];
        assert_eq!(
            (fw.pid.as_str(), fw.comm.as_str()),
            (client_pid.as_str(), "tcpdrive")
        );
        let ms: f64 = fw.ms_in_old.parse().unwrap_or_else(|_| panic!("{fw:?}"));
        assert!(ms >= 0.0, "{fw:?}");
        for r in &client {
            assert_eq!(
                r.pid, client_pid,
                "every client line names the client: {r:?}"
            );
        }
        // Its FIN, dropped once and more, was sent again: one RETRANSMIT line per segment.
        let rtx = events
            .iter()
            .filter(|e| e.starts_with("RETRANSMIT in "))
            .count() as u64;
        assert_eq!(rtx, half_rtx, "client retransmits: {client:#?}");
        assert!(rtx >= 1, "the dropped FIN was never sent again");
        if let Some(container) = &client[0].container {
            assert_eq!(
                container, "-",
                "CONTAINER of the client, which runs in none"
            );
        }
        if let Some(cg) = &client[0].cgroup {
            let expected = crate::support::cgroup_v2_of(std::process::id()).expect("cgroup v2");
            assert_eq!(
                cg, &expected,
                "CGROUP of the client (the test's own cgroup)"
            );
        }

        // SYN-ACKs sent again, one line each, at the listener's address.
        let synacks: Vec<&TextLine> = rows
            .iter()
            .map(|(_, r)| r)
            .filter(|r| r.event.starts_with("SYNACK_RETRANSMIT in "))
            .collect();
        assert_eq!(
            synacks.len() as u64,
            ds["TcpExtTCPSynRetrans"],
            "SYNACK_RETRANSMIT lines vs the server's TCPSynRetrans: {synacks:#?}"
        );
        assert!(!synacks.is_empty(), "no SYN-ACK was sent again");
        for r in &synacks {
            assert_eq!(r.laddr, synack_addr, "{r:?}");
            assert!(r.raddr.starts_with(&format!("{c4}:")), "{r:?}");
            assert!(r.pid == listener_pid || r.pid == "-", "{r:?}");
        }
    }
}

/// Text `trace --record` and text `analyze` (README, "Recording and replaying"): the replay
/// prints, line for line, what the live text run printed, and that holds the workload's
/// connections.
#[test]
fn root_text_trace_record_replays_to_the_same_lines() {
    if !require_root("root_text_trace_record_replays_to_the_same_lines") {
        return;
    }
    const CONNECTIONS: u64 = 2;
    let pair = NetPair::new();
    let port = unique_port();
    let scratch = Scratch::new("text-replay");
    let recording = scratch.path("events.nwr");
    let rec = recording.to_str().expect("UTF-8 path");
    let mut args: Vec<String> = ["trace", "--record", rec].map(String::from).to_vec();
    args.extend(crate::support::own_traffic_only(
        &pair,
        CLIENT_PORTS,
        &[port],
        &[],
    ));
    let tracer = Tracer::start(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let addr = endpoint(pair.server_v4().into(), port);
    let mut srv = ReadyChild::spawn(pair.exec(
        Side::Server,
        &tcpdrive(),
        &["serve", &addr, "--count", &CONNECTIONS.to_string()],
    ));
    let out = output_with_timeout(
        pair.exec(
            Side::Client,
            &tcpdrive(),
            &["connect", &addr, "--count", &CONNECTIONS.to_string()],
        ),
        20,
    );
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{stdout}");
    let client_pid = find_line(&stdout, "DONE").expect("DONE")[1].to_string();
    assert!(srv.wait(20).success());
    let done = stop_after_quiet(tracer, &pair, Events::Recording(&recording), Kept::NOTHING);
    let connects = done
        .stdout
        .lines()
        .skip(1)
        .map(|l| text_line(l, false))
        .filter(|r| r.pid == client_pid && r.event == "CLOSE -> SYN_SENT" && r.raddr == addr)
        .count() as u64;
    assert_eq!(connects, CONNECTIONS, "{}", done.stdout);

    assert_eq!(
        analyze(&recording, &[]),
        done.stdout,
        "the text replay differs from the live run"
    );
}

/// The files of a `trace --json --record-dir` run, by name.
fn recordings(dir: &std::path::Path) -> Vec<(std::path::PathBuf, u64)> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .expect("the recording directory")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "nwr"))
        .map(|p| {
            let len = p.metadata().expect("metadata").len();
            (p, len)
        })
        .collect();
    files.sort();
    files
}

/// `netwatch analyze ARGS` (stdout, stderr), whatever its status.
fn analyze_output(args: &[&std::ffi::OsStr]) -> (String, String, bool) {
    let mut cmd = std::process::Command::new(netwatch_tests::netwatch_bin());
    cmd.arg("analyze").args(args);
    let out = output_with_timeout(cmd, 60);
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        out.status.success(),
    )
}

/// `--record-dir` (README, "Recording and replaying"): rotated by age, the files of a run
/// replay, as a directory, to exactly what the live `trace --json` printed, and a file alone
/// to its first lines; under a total cap it stops recording, keeps every file under the cap, counts what
/// it left out, and what it kept replays to the live run's first lines.
#[test]
fn root_trace_record_dir_rotates_and_replays_to_the_same_lines() {
    if !require_root("root_trace_record_dir_rotates_and_replays_to_the_same_lines") {
        return;
    }
    let pair = NetPair::new();
    let port = unique_port();
    let addr = endpoint(pair.server_v4().into(), port);
    let scratch = Scratch::new("record-dir");
    let filter = crate::support::own_traffic_only(&pair, CLIENT_PORTS, &[port], &[]);
    // Rounds of connections 1.5 s apart, so that 1 s rotation makes several files.
    let run = |dir: &std::path::Path, limits: &[&str], rounds: u32| -> Finished {
        let mut args: Vec<String> = ["trace", "--json", "--record-dir"]
            .map(String::from)
            .to_vec();
        args.push(dir.to_str().expect("UTF-8 path").to_string());
        args.extend(limits.iter().map(|s| s.to_string()));
        args.extend(filter.iter().cloned());
        let tracer = Tracer::start(&args.iter().map(String::as_str).collect::<Vec<_>>());
        let mut srv = ReadyChild::spawn(pair.exec(
            Side::Server,
            &tcpdrive(),
            &["serve", &addr, "--count", &(rounds * 10).to_string()],
        ));
        for round in 0..rounds {
            if round > 0 {
                std::thread::sleep(Duration::from_millis(1500));
            }
            let out = output_with_timeout(
                pair.exec(
                    Side::Client,
                    &tcpdrive(),
                    &["connect", &addr, "--count", "10"],
                ),
                20,
            );
            assert!(out.status.success(), "{out:?}");
        }
        assert!(srv.wait(20).success());
        stop_after_quiet(tracer, &pair, Events::Stdout, Kept::NOTHING)
    };

    let dir = scratch.path("rotated");
    let done = run(&dir, &["--record-max-age", "1s"], 4);
    let files = recordings(&dir);
    assert!(files.len() >= 2, "rotated by age: {files:?}");
    assert!(
        done.stdout.lines().count() >= 4 * 10 * 2 * 5,
        "{}",
        done.stdout
    );
    let (stdout, stderr, ok) = analyze_output(&[dir.as_os_str(), "--json".as_ref()]);
    assert!(ok, "{stderr}");
    assert_eq!(stdout, done.stdout, "the replay of the directory differs");
    // One file alone: its events, then where the rest is.
    let (stdout, stderr, ok) = analyze_output(&[files[0].0.as_os_str(), "--json".as_ref()]);
    assert!(
        !ok && stderr.contains("continues in a later file"),
        "{stderr}"
    );
    assert!(
        done.stdout.starts_with(&stdout),
        "a part replays to the run's first lines"
    );

    // Capped at 8 KiB (4 KiB of it kept for the summary): a round of connections takes about
    // 1.3-1.4 KiB recorded in a file of its own (header and block; 2 KiB before same-socket
    // records), its block alone about 0.8, so the first round fits and the sixth does not. (At
    // 6 KiB the first round's block fitted by a few dozen bytes, and sometimes did not.)
    const CAP: u64 = 8 * 1024;
    let capped = scratch.path("capped");
    let done = run(&capped, &["--record-max-total", "8KiB"], 6);
    let files = recordings(&capped);
    let total: u64 = files.iter().map(|f| f.1).sum();
    assert!(total <= CAP, "{total} bytes: {files:?}");
    assert!(
        done.stderr.contains("netwatch: recording stopped: ")
            && done.stderr.contains("reached --record-max-total 8 KiB"),
        "{}",
        done.stderr
    );
    let unrecorded: usize = done
        .stderr
        .lines()
        .find_map(|l| {
            l.strip_prefix("netwatch: ")?
                .split_once(" events were not recorded")
                .and_then(|(n, _)| n.parse().ok())
        })
        .unwrap_or_else(|| panic!("no count of unrecorded events: {}", done.stderr));
    assert!(unrecorded > 0);
    let (stdout, stderr, ok) = analyze_output(&[capped.as_os_str(), "--json".as_ref()]);
    assert!(ok, "{stderr}");
    let live: Vec<&str> = done.stdout.lines().collect();
    let kept: Vec<&str> = stdout.lines().collect();
    assert!(!kept.is_empty(), "{stderr}");
    assert_eq!(
        kept[..],
        live[..kept.len()],
        "the kept events are the first ones"
    );
    assert_eq!(kept.len() + unrecorded, live.len(), "{}", done.stderr);
}
