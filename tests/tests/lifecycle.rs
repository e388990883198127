//! `netwatch report`, `life` and `analyze` against the kernel's own counters, as root, in two
//! fresh network namespaces: every count the kernel keeps too must be equal, exactly.
//!
//! The workload: N short connections (client closes first), M refused connects, K connects
//! timed out by the client while the peer drops SYNs, R connections aborted by the client
//! with SO_LINGER 0, and a server that leaks L accepted sockets in CLOSE_WAIT.

use std::{collections::HashMap, net::IpAddr, process::Command, time::Duration};

use crate::support::{
    Events, Kept, Scratch, Tracer, analyze, ip, json_lines, kernel_counted_retransmit,
    leaked_connections, orderly_connections, port, refused_connects, step, stop_after_quiet,
    tcpdrive, timed_out_connects,
};
use netwatch_tests::{
    NetPair, ReadyChild, Side, counter_delta, drop_data_ruleset, netwatch_bin, output_with_timeout,
    require_root, unique_port,
};
use serde_json::Value;

const N: u64 = 20;
const M: u64 = 3;
const K: u64 = 2;
const R: u64 = 4;
const L: u64 = 5;

#[test]
fn root_report_counts_equal_the_kernel_counters() {
    if !require_root("root_report_counts_equal_the_kernel_counters") {
        return;
    }
    let pair = NetPair::new();
    let client: IpAddr = pair.client_v4().into();
    let server: IpAddr = pair.server_v4().into();
    let [p_ok, p_refused, p_drop, p_reset, p_leak] = [(); 5].map(|_| unique_port());
    let at = |p: u16| format!("{server}:{p}");
    let scratch = Scratch::new("lifecycle");
    let recording = scratch.path("events.nwr");
    let rec = recording.to_str().expect("UTF-8 path").to_string();

    let before_c = pair.nstat(Side::Client);
    let before_s = pair.nstat(Side::Server);
    let tracer = Tracer::start(&[
        "report",
        "--json",
        "--record",
        &rec,
        "--close-wait-age",
        "1s",
    ]);

    // N orderly connections, the client closing first: N TIME_WAITs in the client namespace.
    orderly_connections(&pair, &at(p_ok), N);
    // M refused connects.
    refused_connects(&pair, &at(p_refused), M);
    // K connects the client gives up on after 1.5 s while every SYN is dropped (one SYN
    // retransmission each, at 1 s).
    timed_out_connects(&pair, &at(p_drop), p_drop, K);

    // R connections the client aborts with SO_LINGER 0.
    let mut srv = ReadyChild::spawn(pair.exec(
        Side::Server,
        &tcpdrive(),
        &["serve", &at(p_reset), "--count", &R.to_string()],
    ));
    let out = output_with_timeout(
        pair.exec(
            Side::Client,
            &tcpdrive(),
            &["connect-reset", &at(p_reset), "--count", &R.to_string()],
        ),
        60,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The server sees every one of its R reads after the reply fail (ECONNRESET): it says
    // so, and exits 1, on purpose.
    let status = srv.wait(30);
    let done =
        netwatch_tests::find_line(&srv.stdout_lines().join("\n"), "DONE").map(|f| f[2..].join(" "));
    assert_eq!(
        (status.code(), done),
        (Some(1), Some(format!("0 {R}"))),
        "the reset server's exit and DONE line"
    );

    // L accepted sockets leaked by the server: the client closes, the server never does.
    let (leak, leaked_at) = leaked_connections(&pair, &at(p_leak), L);
    // The leak must be older than --close-wait-age (1 s) when the report is made.
    std::thread::sleep(Duration::from_millis(1500).saturating_sub(leaked_at.elapsed()));

    // Stopped once the kernel is done with every connection but the leak's and netwatch has
    // all their events: what stays open is the leak's listener and its L sockets in
    // CLOSE_WAIT (and on the client side the leak's orphans in FIN_WAIT2, which make no
    // more events).
    let done = stop_after_quiet(
        tracer,
        &pair,
        Events::Recording(&recording),
        Kept {
            states: &["CLOSE-WAIT", "FIN-WAIT-2"],
            sockets: 1 + L as usize,
        },
    );
    // Timewait sockets: in TIME_WAIT, and orphans in FIN_WAIT2 (the leak's clients closed
    // while the server never did); both hold their port, and the kernel never reports which
    // of the two a closing socket became.
    let ss_time_wait = pair.run(
        Side::Client,
        &["ss", "-Htan", "state", "time-wait", "state", "fin-wait-2"],
    );
    let after_c = pair.nstat(Side::Client);
    let after_s = pair.nstat(Side::Server);
    let report: Value = serde_json::from_str(&done.stdout)
        .unwrap_or_else(|e| panic!("report is not JSON ({e}):\n{}", done.stdout));
    let dc = counter_delta(&before_c, &after_c);
    let ds = counter_delta(&before_s, &after_s);
    assert_eq!(done.lost, 0, "{}", done.stderr);

    // The events of the two namespaces, from the recording, told by the socket's namespace
    // (other test processes use the same addresses). A reset sent for a segment no socket
    // wanted (or by a timewait socket) has no namespace netwatch knows: those are told by
    // their endpoints, one of this test's ports on the server side.
    let events = json_lines(&analyze(&recording, &["--json"]));
    let ports = [p_ok, p_refused, p_drop, p_reset, p_leak];
    let from = |side: Side, addr: IpAddr| -> Vec<&Value> {
        let ns = pair.netns_inode(side);
        events
            .iter()
            .filter(|e| match e["netns"].as_u64() {
                Some(n) => n == ns,
                None => {
                    ip(e, "saddr") == addr
                        && [port(e, "sport"), port(e, "dport")]
                            .iter()
                            .any(|p| ports.contains(p))
                }
            })
            .collect()
    };
    let client_ev = from(Side::Client, client);
    let server_ev = from(Side::Server, server);
    let to_server: Vec<&Value> = client_ev
        .iter()
        .copied()
        .filter(|e| ip(e, "daddr") == server)
        .collect();
    let count =
        |evs: &[&Value], f: &dyn Fn(&Value) -> bool| evs.iter().filter(|e| f(e)).count() as u64;

    // TcpActiveOpens: tcp_connect() counts every SYN_SENT entry = CLOSE -> SYN_SENT.
    assert_eq!(
        dc["TcpActiveOpens"],
        count(&to_server, &|e| step(e) == "CLOSE->SYN_SENT"),
        "TcpActiveOpens"
    );
    assert_eq!(dc["TcpActiveOpens"], N + M + K + R + L);
    // TcpPassiveOpens: tcp_create_openreq_child() counts every child = LISTEN -> SYN_RECV.
    assert_eq!(
        ds["TcpPassiveOpens"],
        count(&server_ev, &|e| step(e) == "LISTEN->SYN_RECV"),
        "TcpPassiveOpens"
    );
    // TcpAttemptFails: tcp_done() in SYN_SENT/SYN_RECV; here, the resets received in SYN_SENT
    // (an application closing a SYN_SENT socket itself is not counted).
    assert_eq!(
        dc["TcpAttemptFails"],
        count(&client_ev, &|e| e["kind"] == "reset_received"
            && e["state"] == "SYN_SENT"),
        "TcpAttemptFails"
    );
    // TcpEstabResets: tcp_set_state() counts ESTABLISHED or CLOSE_WAIT -> CLOSE.
    for (name, d, evs) in [("client", &dc, &client_ev), ("server", &ds, &server_ev)] {
        assert_eq!(
            d["TcpEstabResets"],
            count(evs, &|e| matches!(
                step(e).as_str(),
                "ESTABLISHED->CLOSE" | "CLOSE_WAIT->CLOSE"
            )),
            "{name} TcpEstabResets"
        );
        // TcpOutRsts: every reset sent (tcp_v4_send_reset, tcp_send_active_reset).
        assert_eq!(
            d["TcpOutRsts"],
            count(evs, &|e| e["kind"] == "reset_sent"),
            "{name} TcpOutRsts"
        );
        // TcpRetransSegs: one per retransmitted segment (all single-segment here), failed
        // or not, once the kernel counted it.
        assert_eq!(
            d["TcpRetransSegs"],
            count(evs, &|e| kernel_counted_retransmit(e)),
            "{name} TcpRetransSegs"
        );
    }
    assert_eq!(dc["TcpEstabResets"], R);

    // How the connections ended, as `life` tells it.
    let life = json_lines(&analyze(&recording, &["--life", "--json"]));
    let ends = |side: Side| -> HashMap<String, u64> {
        let ns = pair.netns_inode(side);
        let mut m = HashMap::new();
        for c in life.iter().filter(|c| c["netns"].as_u64() == Some(ns)) {
            *m.entry(c["end"].as_str().unwrap().to_string()).or_default() += 1;
        }
        m
    };
    let (ce, se) = (ends(Side::Client), ends(Side::Server));
    // The leak's clients closed first too: their sockets became timewait sockets.
    assert_eq!(ce.get("time-wait"), Some(&(N + L)), "client ends {ce:?}");
    assert_eq!(ce.get("refused"), Some(&M), "client ends {ce:?}");
    assert_eq!(ce.get("timeout"), Some(&K), "client ends {ce:?}");
    assert_eq!(ce.get("reset-by-us"), Some(&R), "client ends {ce:?}");
    assert_eq!(se.get("reset-by-peer"), Some(&R), "server ends {se:?}");
    assert_eq!(se.get("closed"), Some(&N), "server ends {se:?}");

    // The TIME_WAIT population netwatch estimates equals what sock_diag lists.
    let ss_count = ss_time_wait
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count() as u64;
    let to_server = |report: &Value| -> Option<u64> {
        let rows = report["time_wait"]["by_destination"].as_array().unwrap();
        let ours: Vec<u64> = rows
            .iter()
            .filter(|d| {
                d["destination"]
                    .as_str()
                    .unwrap()
                    .starts_with(&format!("{server}:"))
            })
            .map(|d| d["population"].as_u64().unwrap())
            .collect();
        (!ours.is_empty()).then(|| ours.iter().sum())
    };
    assert_eq!(
        ss_count,
        N + L,
        "ss -tan state time-wait state fin-wait-2:\n{ss_time_wait}"
    );
    // The report lists the top destinations of the whole host, where other work may hold
    // more TIME_WAITs than this test: the same recording replayed for this destination alone
    // (the replay reconciles with the dumps the live run made) must find them all, and the
    // live report, where it lists this destination, the same.
    let replayed: Value = serde_json::from_str(&analyze(
        &recording,
        &["--report", "--json", "dst", &server.to_string()],
    ))
    .expect("replayed report is JSON");
    assert_eq!(
        to_server(&replayed),
        Some(ss_count),
        "{}",
        replayed["time_wait"]
    );
    if let Some(live) = to_server(&report) {
        assert_eq!(live, ss_count, "{}", report["time_wait"]);
    }

    // The leaking server is named, with its L sockets.
    let holders = report["close_wait"]["holders"].as_array().unwrap();
    let leaker = format!("tcpdrive[{}]", leak.pid());
    let h = holders
        .iter()
        .find(|h| h["process"] == leaker.as_str())
        .unwrap_or_else(|| panic!("{leaker} not among CLOSE_WAIT holders: {holders:#?}"));
    assert_eq!(h["sockets"], L);
    assert!(report["findings"].as_array().unwrap().iter().any(|f| {
        f["text"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{leaker} holds {L} sockets in CLOSE_WAIT"))
    }));
    // SYN_SENT outcomes towards the three failing ports.
    let outcomes = report["connects_by_destination"].as_array().unwrap();
    let row = |p: u16| {
        outcomes
            .iter()
            .find(|r| r["key"] == at(p).as_str())
            .unwrap_or_else(|| panic!("{p}: {outcomes:#?}"))
    };
    assert_eq!(row(p_refused)["refused"], M);
    assert_eq!(row(p_drop)["timeout"], K);
    assert_eq!(row(p_ok)["established"], N);

    // A replay of the recording gives exactly the live report.
    let replayed = analyze(
        &recording,
        &["--report", "--json", "--close-wait-age", "1s"],
    );
    assert_eq!(replayed, done.stdout, "replay differs from the live report");
    drop(leak);
}

#[test]
fn root_analyze_of_a_cut_recording_names_the_offset() {
    if !require_root("root_analyze_of_a_cut_recording_names_the_offset") {
        return;
    }
    let pair = NetPair::new();
    let server: IpAddr = pair.server_v4().into();
    let p = unique_port();
    let scratch = Scratch::new("cut");
    let file = scratch.path("life.nwr");
    let tracer = Tracer::start(&["life", "--json", "--record", file.to_str().unwrap()]);
    let mut srv = ReadyChild::spawn(pair.exec(
        Side::Server,
        &tcpdrive(),
        &["serve", &format!("{server}:{p}"), "--count", "3"],
    ));
    let out = output_with_timeout(
        pair.exec(
            Side::Client,
            &tcpdrive(),
            &["connect", &format!("{server}:{p}"), "--count", "3"],
        ),
        30,
    );
    assert!(out.status.success());
    let client_pid: u64 = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("DONE <pid> from the client");
    let server_pid = u64::from(srv.pid());
    assert!(srv.wait(20).success());
    let done = stop_after_quiet(tracer, &pair, Events::Recording(&file), Kept::NOTHING);
    // The live life output and its replay are identical.
    assert_eq!(analyze(&file, &["--life", "--json"]), done.stdout);
    // The pair's connections, told by their namespaces (other test processes use the same
    // addresses).
    let (client_ns, server_ns) = (
        pair.netns_inode(Side::Client),
        pair.netns_inode(Side::Server),
    );
    let live: Vec<_> = done
        .events
        .iter()
        .filter(|c| {
            c["netns"]
                .as_u64()
                .is_some_and(|n| n == client_ns || n == server_ns)
        })
        .collect();
    assert_eq!(live.len(), 6, "3 connections, both sides");
    // Every connection carries its owner: pid, tid, comm, cgroup, and the socket's namespace
    // (each side's records, told by their address, in that side's namespace).
    for c in &live {
        let (pid, ns) = if ip(c, "saddr") == server {
            (server_pid, server_ns)
        } else {
            (client_pid, client_ns)
        };
        assert_eq!(c["pid"].as_u64(), Some(pid), "{c}");
        assert_eq!(
            c["tid"].as_u64(),
            Some(pid),
            "single-threaded: tid == pid: {c}"
        );
        assert_eq!(c["comm"], "tcpdrive", "{c}");
        assert!(c["cgroup"].as_str().is_some_and(|p| p.contains('/')), "{c}");
        assert_eq!(c["netns"].as_u64(), Some(ns), "{c}");
    }
    assert!(
        live.iter()
            .all(|c| port(c, "dport") == p || port(c, "sport") == p)
    );

    // The frames of the file (magic and version, then kind, length, CRC-32, payload): a
    // header, the blocks, the summary.
    let whole = std::fs::read(&file).unwrap();
    assert!(whole.starts_with(b"\x89NWREC\r\n"), "a binary recording");
    let mut frames = Vec::new();
    let mut at = 12;
    while at < whole.len() {
        let len = u32::from_le_bytes(whole[at + 1..at + 5].try_into().unwrap()) as usize;
        frames.push((at, whole[at]));
        at += 9 + len;
    }
    assert_eq!(at, whole.len(), "whole frames: {frames:?}");
    let (summary_at, kind) = *frames.last().unwrap();
    assert_eq!(kind, 4, "a summary frame last: {frames:?}");
    let analyze_cut = |bytes: &[u8]| {
        std::fs::write(&file, bytes).unwrap();
        let mut cmd = Command::new(netwatch_bin());
        cmd.arg("analyze").arg(&file).args(["--life", "--json"]);
        let out = output_with_timeout(cmd, 30);
        assert!(!out.status.success());
        (
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // Cut in the summary: every connection is still printed, then the offset of the cut frame.
    let (stdout, stderr) = analyze_cut(&whole[..summary_at + 5]);
    assert_eq!(
        stdout, done.stdout,
        "what was read before the cut is printed"
    );
    assert!(
        stderr.contains(&format!(
            "byte offset {summary_at}: corrupt record: the frame head ends early"
        )),
        "{stderr}"
    );
    // A damaged first block: nothing to print, and its offset.
    let first_block = frames[1].0;
    let mut damaged = whole.clone();
    damaged[first_block + 20] ^= 0xff;
    let (stdout, stderr) = analyze_cut(&damaged);
    assert_eq!(stdout, "", "{stderr}");
    assert!(
        stderr.contains(&format!(
            "byte offset {first_block}: corrupt record: the checksum"
        )),
        "{stderr}"
    );
    // Not a recording at all.
    let (_, stderr) = analyze_cut(b"GIF89a....");
    assert!(
        stderr.contains("byte offset 0: not a netwatch recording"),
        "{stderr}"
    );
}

/// Client ports of the report-section tests (see [`crate::support::own_traffic_only`]): apart
/// from the other test files' ranges.
const CLIENT_PORTS: (u16, u16) = (14000, 14999);

/// `report`'s resets, retransmits-by-peer and SYN-ACK sections, and the listen counters
/// beside them, against a workload that makes each and the namespaces' own counters. netwatch
/// runs inside the server's namespace (its programs see every namespace), so that the
/// `ListenOverflows` and `ListenDrops` it reports are that namespace's.
fn report_sections(v6: bool) {
    use std::os::unix::process::CommandExt as _;
    let pair = NetPair::new();
    let server: IpAddr = if v6 {
        pair.server_v6().into()
    } else {
        pair.server_v4().into()
    };
    let [p_refused, p_reset, p_data, p_full, p_synack] = [(); 5].map(|_| unique_port());
    let at = |p: u16| crate::support::endpoint(server, p);
    let scratch = Scratch::new("report-sections");
    let report_path = scratch.path("report.json");
    let mut args: Vec<String> = ["report", "--json"].map(String::from).to_vec();
    args.extend(crate::support::own_traffic_only(
        &pair,
        CLIENT_PORTS,
        &[p_refused, p_reset, p_data, p_full, p_synack],
        &[],
    ));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let client = |args: &[&str]| {
        let out = output_with_timeout(pair.exec(Side::Client, &tcpdrive(), args), 30);
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let expect_timeout = |p: u16| {
        let (_, out) = client(&["connect-expect-fail", &at(p), "--timeout-ms", "1500"]);
        assert!(out.contains(" ETIMEDOUT"), "connect to :{p}: {out}");
    };
    // Listeners first: their own events are not the report's business.
    let full = ReadyChild::spawn(pair.exec(
        Side::Server,
        &tcpdrive(),
        &["listen-only", &at(p_full), "--backlog", "0"],
    ));
    let mut synack_listener =
        ReadyChild::spawn(pair.exec(Side::Server, &tcpdrive(), &["listen-only", &at(p_synack)]));
    let before = [Side::Client, Side::Server].map(|s| pair.nstat(s));
    let netns = std::fs::File::open(format!("/run/netns/{}", pair.server_ns())).expect("netns");
    let report_file = std::fs::File::create(&report_path).expect("report file");
    let tracer = Tracer::start_with(&args, |cmd| {
        cmd.stdout(report_file);
        // SAFETY: between fork and exec only setns(2) on a descriptor opened before the fork.
        unsafe {
            cmd.pre_exec(move || {
                use std::os::fd::AsRawFd as _;
                if libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    });

    // Resets: M connects refused (the server's kernel sends a reset for no socket, the client
    // receives it in SYN_SENT), R connections the client aborts (it sends, the server receives).
    const M: u64 = 2;
    const R: u64 = 3;
    for _ in 0..M {
        let (_, out) = client(&["connect-expect-fail", &at(p_refused)]);
        assert!(out.contains(" ECONNREFUSED"), "{out}");
    }
    let mut srv = ReadyChild::spawn(pair.exec(
        Side::Server,
        &tcpdrive(),
        &["serve", &at(p_reset), "--count", &R.to_string()],
    ));
    let count = R.to_string();
    assert!(client(&["connect-reset", &at(p_reset), "--count", &count]).0);
    assert_eq!(srv.wait(20).code(), Some(1));
    // Data retransmitted to the server: its data segments are dropped until the client has
    // sent one again twice.
    let mut srv = ReadyChild::spawn(pair.exec(Side::Server, &tcpdrive(), &["serve", &at(p_data)]));
    pair.nft(Side::Server, &drop_data_ruleset("nwdata", p_data));
    let mut sender = ReadyChild::spawn_background(pair.exec(
        Side::Client,
        &tcpdrive(),
        &["send-slow", &at(p_data), "--bytes", "1000"],
    ));
    let retransmitted = crate::support::eventually(Duration::from_secs(15), || {
        counter_delta(&before[0], &pair.nstat(Side::Client))["TcpRetransSegs"] >= 2
    });
    assert!(retransmitted, "no data retransmitted within 15 s");
    pair.nft(Side::Server, "delete table inet nwdata");
    assert!(sender.wait(30).success(), "{:?}", sender.stdout_lines());
    assert!(srv.wait(20).success());
    // A full accept queue: the listener never accepts and holds one connection; the next SYN
    // is dropped (ListenOverflows, ListenDrops) and the client sends it again, then gives up.
    let (ok, out) = client(&["connect-close", &at(p_full)]);
    assert!(ok, "{out}");
    expect_timeout(p_full);
    // SYN-ACKs sent again: the client's namespace drops them, so the listener resends its
    // SYN-ACK (on its timer, and for the client's repeated SYN). Once the client has given
    // up, the listener goes, and with it the pending connection, before its next resend.
    pair.nft(
        Side::Client,
        &format!(
            "table inet nwsynack {{\n  chain input {{\n    type filter hook input priority 0; \
             policy accept;\n    tcp sport {p_synack} drop\n  }}\n}}\n"
        ),
    );
    expect_timeout(p_synack);
    synack_listener.kill();

    let done = stop_after_quiet(
        tracer,
        &pair,
        Events::Unseen,
        Kept {
            states: &["CLOSE-WAIT", "FIN-WAIT-2", "SYN-RECV"],
            sockets: 0,
        },
    );
    let [dc, ds] = [Side::Client, Side::Server].map(|s| pair.nstat(s));
    let (dc, ds) = (
        counter_delta(&before[0], &dc),
        counter_delta(&before[1], &ds),
    );
    drop(full);
    assert_eq!(done.lost, 0, "{}", done.stderr);
    let text = std::fs::read_to_string(&report_path).expect("report");
    let report: Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("report is not JSON ({e}):\n{text}"));
    let context = format!("client {dc:?}\nserver {ds:?}\nreport {report:#}");
    let rows = |v: &Value| -> Vec<(String, u64)> {
        v.as_array()
            .unwrap_or_else(|| panic!("not rows: {v}"))
            .iter()
            .map(|r| {
                (
                    r["key"].as_str().unwrap().to_string(),
                    r["count"].as_u64().unwrap(),
                )
            })
            .collect()
    };

    // Resets, as the kernel counted them in each namespace.
    let resets = &report["resets"];
    assert_eq!((dc["TcpOutRsts"], ds["TcpOutRsts"]), (R, M), "{context}");
    assert_eq!(resets["sent"].as_u64(), Some(M + R), "{context}");
    assert_eq!(dc["TcpAttemptFails"], M, "{context}");
    assert_eq!(ds["TcpEstabResets"], R, "{context}");
    assert_eq!(resets["received"].as_u64(), Some(M + R), "{context}");
    let by_reason: Vec<(String, String, String, u64)> = resets["by_reason_and_state"]
        .as_array()
        .expect("by_reason_and_state")
        .iter()
        .map(|r| {
            let s = |f: &str| r[f].as_str().unwrap().to_string();
            (
                s("direction"),
                s("reason"),
                s("state"),
                r["count"].as_u64().unwrap(),
            )
        })
        .collect();
    let received = |state: &str| {
        by_reason
            .iter()
            .filter(|r| r.0 == "received" && r.2 == state)
            .map(|r| r.3)
            .sum::<u64>()
    };
    assert_eq!(
        (received("SYN_SENT"), received("ESTABLISHED")),
        (M, R),
        "{context}"
    );
    let mut sent: Vec<u64> = by_reason
        .iter()
        .filter(|r| r.0 == "sent")
        .map(|r| r.3)
        .collect();
    sent.sort_unstable();
    assert_eq!(sent, [M, R], "one row per kind of reset sent: {context}");
    // Since 6.10 the kernel names why: a reset for a segment no socket wanted.
    if let Some(r) = by_reason
        .iter()
        .find(|r| r.0 == "sent" && r.3 == M && r.1 != "-")
    {
        assert_eq!(r.1, "NO_SOCKET", "{context}");
    }
    for by in ["by_process", "by_peer"] {
        let total: u64 = rows(&resets[by]).iter().map(|r| r.1).sum();
        assert_eq!(total, 2 * (M + R), "resets {by}: {context}");
    }

    // Retransmissions: every segment the client sent again went to the server (SYNs to the
    // full queue and to the SYN-ACK listener, data); the server's are its SYN-ACKs only.
    let client_segs = dc["TcpRetransSegs"];
    assert!(client_segs >= 4, "{context}");
    assert_eq!(
        rows(&report["retransmits_by_peer"]),
        [(server.to_string(), client_segs)],
        "{context}"
    );
    let synacks = ds["TcpExtTCPSynRetrans"];
    assert!(synacks >= 1, "{context}");
    assert_eq!(ds["TcpRetransSegs"], synacks, "{context}");
    assert_eq!(
        rows(&report["synack_retransmits_by_listener"]),
        [(at(p_synack), synacks)],
        "{context}"
    );

    // This namespace's listen counters, beside them: the overflow of the full queue.
    assert!(ds["TcpExtListenOverflows"] >= 1, "{context}");
    assert_eq!(
        (
            report["listen_overflows"].as_u64(),
            report["listen_drops"].as_u64()
        ),
        (
            Some(ds["TcpExtListenOverflows"]),
            Some(ds["TcpExtListenDrops"])
        ),
        "{context}"
    );
}

#[test]
fn root_report_resets_retransmits_and_synack_sections_equal_the_kernel_ipv4() {
    if !require_root("root_report_resets_retransmits_and_synack_sections_equal_the_kernel_ipv4") {
        return;
    }
    report_sections(false);
}

#[test]
fn root_report_resets_retransmits_and_synack_sections_equal_the_kernel_ipv6() {
    if !require_root("root_report_resets_retransmits_and_synack_sections_equal_the_kernel_ipv6") {
        return;
    }
    report_sections(true);
}

/// Client ports of [`root_report_connects_and_lifetimes_by_process_json_and_text`].
const PROCESS_CLIENT_PORTS: (u16, u16) = (15000, 15999);

/// The `key` row of a report table.
fn row<'a>(rows: &'a Value, key: &str) -> &'a Value {
    rows.as_array()
        .unwrap_or_else(|| panic!("not rows: {rows}"))
        .iter()
        .find(|r| r["key"] == key)
        .unwrap_or_else(|| panic!("no row {key} in {rows:#}"))
}

/// The text report's line under `section` (a line starting with it) whose first word is `key`,
/// split into words.
fn text_row<'a>(text: &'a str, section: &str, key: &str) -> Vec<&'a str> {
    let start = text
        .find(&format!("\n{section}"))
        .unwrap_or_else(|| panic!("no section {section}:\n{text}"));
    let rest = &text[start + 1..];
    let end = rest[1..].find("\n\n").map_or(rest.len(), |e| e + 1);
    rest[..end]
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|w| w.first() == Some(&key))
        .unwrap_or_else(|| panic!("no row {key} in section {section}:\n{text}"))
}

/// `report`'s per-process tables (README, "netwatch report"): `connects_by_process` and
/// `lifetimes_by_process` / `lifetimes_by_peer` in JSON, and the same in the text report,
/// against a workload whose processes, counts and durations the test knows.
#[test]
fn root_report_connects_and_lifetimes_by_process_json_and_text() {
    if !require_root("root_report_connects_and_lifetimes_by_process_json_and_text") {
        return;
    }
    const OK: u64 = 3;
    const REFUSED: u64 = 2;
    let pair = NetPair::new();
    let (client, server): (IpAddr, IpAddr) = (pair.client_v4().into(), pair.server_v4().into());
    let (p_ok, p_refused) = (unique_port(), unique_port());
    let filter =
        crate::support::own_traffic_only(&pair, PROCESS_CLIENT_PORTS, &[p_ok, p_refused], &[]);
    let args = |json: bool| -> Vec<String> {
        let mut a = vec!["report".to_string()];
        if json {
            a.push("--json".into());
        }
        a.extend(filter.iter().cloned());
        a
    };
    let (json_args, text_args) = (args(true), args(false));
    let json_run = Tracer::start(&json_args.iter().map(String::as_str).collect::<Vec<_>>());
    let text_run = Tracer::start(&text_args.iter().map(String::as_str).collect::<Vec<_>>());
    let before = pair.nstat(Side::Client);

    let addr = crate::support::endpoint(server, p_ok);
    let mut srv = ReadyChild::spawn(pair.exec(
        Side::Server,
        &tcpdrive(),
        &["serve", &addr, "--count", &OK.to_string()],
    ));
    let started = std::time::Instant::now();
    let out = output_with_timeout(
        pair.exec(
            Side::Client,
            &tcpdrive(),
            &["connect", &addr, "--count", &OK.to_string()],
        ),
        30,
    );
    // Every connection of the client lived within its run.
    let client_run_ms = started.elapsed().as_secs_f64() * 1000.0;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{stdout}");
    let client_pid = netwatch_tests::find_line(&stdout, "DONE").expect("DONE")[1].to_string();
    assert!(srv.wait(20).success());
    let server_pid = srv.pid().to_string();
    let mut refusers = Vec::new();
    for _ in 0..REFUSED {
        let out = output_with_timeout(
            pair.exec(
                Side::Client,
                &tcpdrive(),
                &[
                    "connect-expect-fail",
                    &crate::support::endpoint(server, p_refused),
                ],
            ),
            20,
        );
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let failed = netwatch_tests::find_line(&stdout, "FAILED").expect("FAILED");
        assert_eq!(failed[2], "ECONNREFUSED");
        refusers.push(failed[1].to_string());
    }
    let json_done = stop_after_quiet(json_run, &pair, Events::Unseen, Kept::NOTHING);
    let text_done = stop_after_quiet(text_run, &pair, Events::Unseen, Kept::NOTHING);
    let dc = counter_delta(&before, &pair.nstat(Side::Client));
    assert_eq!(dc["TcpActiveOpens"], OK + REFUSED);
    assert_eq!(dc["TcpAttemptFails"], REFUSED);

    let report: Value = serde_json::from_str(&json_done.stdout)
        .unwrap_or_else(|e| panic!("report is not JSON ({e}):\n{}", json_done.stdout));
    let key = |pid: &str| format!("tcpdrive[{pid}]");
    let own_cgroup = crate::support::cgroup_v2_of(std::process::id()).expect("cgroup v2");
    let c = row(&report["connects_by_process"], &key(&client_pid));
    assert_eq!(
        (
            &c["established"],
            &c["refused"],
            &c["timeout"],
            &c["aborted"]
        ),
        (&OK.into(), &0.into(), &0.into(), &0.into()),
        "{c}"
    );
    assert_eq!(c["connect_ms"]["count"], OK, "{c}");
    assert_eq!(c["cgroup"], own_cgroup.as_str(), "{c}");
    for pid in &refusers {
        let r = row(&report["connects_by_process"], &key(pid));
        assert_eq!(
            (&r["established"], &r["refused"]),
            (&0.into(), &1.into()),
            "{r}"
        );
    }
    assert_eq!(
        report["connects_by_process"].as_array().unwrap().len() as u64,
        1 + REFUSED,
        "one row per connecting process: {:#}",
        report["connects_by_process"]
    );
    // Lifetimes: the client's and the server's OK connections each, within the client's run.
    for (pid, n) in [(&client_pid, OK), (&server_pid, OK)] {
        let l = &row(&report["lifetimes_by_process"], &key(pid))["lifetime_ms"];
        assert_eq!(l["count"], n, "{l}");
        let (p50, max) = (l["p50"].as_f64().unwrap(), l["max"].as_f64().unwrap());
        assert!(
            0.0 < p50 && p50 <= max && max <= client_run_ms * 1.01 + 1.0,
            "{l} vs {client_run_ms} ms"
        );
    }
    // By peer: the server's address (OK + refused connects) and the client's (accepted ones).
    let by_peer = &report["lifetimes_by_peer"];
    assert_eq!(
        row(by_peer, &server.to_string())["lifetime_ms"]["count"],
        OK + REFUSED
    );
    assert_eq!(
        row(by_peer, &client.to_string())["lifetime_ms"]["count"],
        OK
    );

    // The text report of the same run says the same.
    let text = &text_done.stdout;
    assert!(
        text.starts_with("netwatch report: ")
            && text
                .lines()
                .next()
                .unwrap()
                .contains(&format!(" {} connections ended", 2 * OK + REFUSED)),
        "{text}"
    );
    let ends = text
        .split("\nHow connections ended\n")
        .nth(1)
        .and_then(|rest| rest.lines().next())
        .unwrap_or_else(|| panic!("no ends line:\n{text}"));
    for part in [
        format!("closed {OK}"),
        format!("refused {REFUSED}"),
        format!("time-wait {OK}"),
    ] {
        assert!(ends.contains(&part), "{part} in {ends}");
    }
    let dest = crate::support::endpoint(server, p_ok);
    assert_eq!(
        text_row(text, "Connects (SYN_SENT outcomes)", &dest)[1..5],
        [OK.to_string(), "0".into(), "0".into(), "0".into()]
    );
    let by_proc = text_row(text, "Connects (SYN_SENT outcomes)", &key(&client_pid));
    assert_eq!(
        by_proc[1..5],
        [OK.to_string(), "0".into(), "0".into(), "0".into()]
    );
    assert_eq!(by_proc[5], format!("n={OK}"));
    assert_eq!(
        by_proc[by_proc.len() - 2..],
        ["cgroup", own_cgroup.as_str()]
    );
    for pid in &refusers {
        let r = text_row(text, "Connects (SYN_SENT outcomes)", &key(pid));
        assert_eq!(r[1..6], ["0", "1", "0", "0", "-"], "{r:?}");
    }
    for pid in [&client_pid, &server_pid] {
        let l = text_row(text, "Lifetimes", &key(pid));
        assert_eq!(l[1], format!("n={OK}"), "{l:?}");
    }
    assert_eq!(
        text_row(text, "Lifetimes", &server.to_string())[1],
        format!("n={}", OK + REFUSED)
    );
    assert_eq!(
        text_row(text, "Lifetimes", &client.to_string())[1],
        format!("n={OK}")
    );
}
