//! `netwatch life` record by record, as root: every field of a connection's record against
//! what a known workload did in two network namespaces (the bytes each side sent, who closed
//! first, how each connection ended, its retransmits and resets), over IPv4 and IPv6; the
//! kernel's per-namespace counters where it keeps the same count; and the text columns,
//! replayed from the run's recording, against the JSON.
//!
//! The workload, one connection of each kind (the client sends a request of [`Q`] bytes, the
//! server answers with [`P`]):
//! - `client-first`: the client closes first (a TIME_WAIT on the client);
//! - `server-first`: the server closes first (a TIME_WAIT on the server);
//! - `reset`: the client aborts (SO_LINGER 0): reset-by-us on the client, by-peer on the server;
//! - `timeout`: every SYN is dropped and the client gives up after 1.5 s (one retransmission);
//! - `aborted`: the same, given up after 0.3 s, before any retransmission.

use std::{collections::HashMap, net::IpAddr};

use crate::support::{
    Events, Kept, Scratch, Tracer, analyze, endpoint, json_lines, port, stop_after_quiet, tcpdrive,
};
use netwatch_tests::{
    NetPair, ReadyChild, Side, counter_delta, find_line, output_with_timeout, require_root,
    unique_port,
};
use serde_json::Value;

/// Request bytes: more than 2 KiB, so that the text's TX_KB/RX_KB columns are not all 0.
const Q: u64 = 3000;
/// Reply bytes.
const P: u64 = 300;

/// Runs a `tcpdrive` client in the client namespace; its pid (from its DONE or FAILED line)
/// and its stdout.
fn client(pair: &NetPair, args: &[&str], expect_success: bool) -> (u64, String) {
    let out = output_with_timeout(pair.exec(Side::Client, &tcpdrive(), args), 30);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        out.status.success(),
        expect_success,
        "tcpdrive {args:?}: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pid = find_line(&stdout, "DONE")
        .or_else(|| find_line(&stdout, "FAILED"))
        .and_then(|f| f.get(1)?.parse().ok())
        .unwrap_or_else(|| panic!("no pid from tcpdrive {args:?}: {stdout}"));
    (pid, stdout)
}

fn u64_of(c: &Value, field: &str) -> u64 {
    c[field]
        .as_u64()
        .unwrap_or_else(|| panic!("{field} is not a number: {c}"))
}

fn f64_of(c: &Value, field: &str) -> f64 {
    c[field]
        .as_f64()
        .unwrap_or_else(|| panic!("{field} is not a number: {c}"))
}

fn life_records(v6: bool) {
    let pair = NetPair::new();
    let (client_ip, server_ip): (IpAddr, IpAddr) = if v6 {
        (pair.client_v6().into(), pair.server_v6().into())
    } else {
        (pair.client_v4().into(), pair.server_v4().into())
    };
    let [p_client_first, p_server_first, p_reset, p_drop] = [(); 4].map(|_| unique_port());
    let at = |p: u16| endpoint(server_ip, p);
    let scratch = Scratch::new("life");
    let recording = scratch.path("life.nwr");
    // No kernel-side filter: `-D` would also drop the destroy event of the socket the client
    // aborts, whose remote port the kernel has zeroed by then (a filter on ports keeps what
    // has those ports), and the run would not know when that socket is gone.
    let args = [
        "life",
        "--json",
        "--record",
        recording.to_str().expect("UTF-8 path"),
    ];
    let (q, p) = (Q.to_string(), P.to_string());
    let before = [Side::Client, Side::Server].map(|s| pair.nstat(s));
    let tracer = Tracer::start(&args);

    // client-first
    let mut srv = ReadyChild::spawn(pair.exec(
        Side::Server,
        &tcpdrive(),
        &["serve", &at(p_client_first), "--reply", &p],
    ));
    let (pid_client_first, _) = client(
        &pair,
        &["connect", &at(p_client_first), "--request", &q],
        true,
    );
    assert!(srv.wait(20).success());
    let srv_client_first = u64::from(srv.pid());
    // server-first
    let mut srv = ReadyChild::spawn(pair.exec(
        Side::Server,
        &tcpdrive(),
        &["serve-close-first", &at(p_server_first), "--reply", &p],
    ));
    let (pid_server_first, _) = client(
        &pair,
        &["connect", &at(p_server_first), "--request", &q],
        true,
    );
    assert!(srv.wait(20).success());
    let srv_server_first = u64::from(srv.pid());
    // reset: the server's wait for the client's close fails with ECONNRESET (exit 1).
    let mut srv = ReadyChild::spawn(pair.exec(
        Side::Server,
        &tcpdrive(),
        &["serve", &at(p_reset), "--reply", &p],
    ));
    let (pid_reset, _) = client(
        &pair,
        &["connect-reset", &at(p_reset), "--request", &q],
        true,
    );
    assert_eq!(srv.wait(20).code(), Some(1), "{:?}", srv.stdout_lines());
    let srv_reset = u64::from(srv.pid());
    // timeout, then aborted: every SYN to p_drop is dropped in the server namespace.
    pair.nft(
        Side::Server,
        &format!(
            "table inet nwlife {{\n  chain input {{\n    type filter hook input priority 0; \
             policy accept;\n    tcp dport {p_drop} drop\n  }}\n}}\n"
        ),
    );
    let given_up = |timeout_ms: &str| {
        let (pid, out) = client(
            &pair,
            &[
                "connect-expect-fail",
                &at(p_drop),
                "--timeout-ms",
                timeout_ms,
            ],
            true,
        );
        assert_eq!(find_line(&out, "FAILED").unwrap()[2], "ETIMEDOUT", "{out}");
        pid
    };
    let pid_timeout = given_up("1500");
    let pid_aborted = given_up("300");

    let done = stop_after_quiet(tracer, &pair, Events::Recording(&recording), Kept::NOTHING);
    assert_eq!(done.lost, 0, "{}", done.stderr);
    let [dc, ds] = [Side::Client, Side::Server].map(|s| pair.nstat(s));
    let (dc, ds) = (
        counter_delta(&before[0], &dc),
        counter_delta(&before[1], &ds),
    );
    let ns = [Side::Client, Side::Server].map(|s| pair.netns_inode(s));
    let records: Vec<&Value> = done
        .events
        .iter()
        .filter(|c| c["netns"].as_u64().is_some_and(|n| ns.contains(&n)))
        .collect();
    // One record per socket: two per connection that was established, one per given-up one.
    assert_eq!(records.len(), 8, "{}", done.stdout);
    let record = |side: Side, server_port: u16| -> &Value {
        let found: Vec<&&Value> = records
            .iter()
            .filter(|c| {
                c["netns"].as_u64() == Some(pair.netns_inode(side))
                    && match side {
                        Side::Client => port(c, "dport") == server_port,
                        Side::Server => port(c, "sport") == server_port,
                    }
            })
            .collect();
        assert_eq!(
            found.len(),
            1,
            "{side:?} records of :{server_port}: {found:#?}"
        );
        found[0]
    };
    // The reset the client sent, as trace shows it: its reason (6.10+; absent before) and the
    // state the kernel reports it in.
    let events = json_lines(&analyze(&recording, &["--json"]));
    let reset_sent: Vec<&Value> = events
        .iter()
        .filter(|e| {
            e["kind"] == "reset_sent"
                && e["netns"].as_u64() == Some(ns[0])
                && port(e, "dport") == p_reset
        })
        .collect();
    assert_eq!(reset_sent.len(), 1, "{reset_sent:#?}");
    let reset_reason = reset_sent[0].get("reason").cloned().unwrap_or(Value::Null);

    // Every record: its owner, its address family, its times adding up.
    for c in &records {
        assert_eq!(c["comm"], "tcpdrive", "{c}");
        let local = if c["netns"].as_u64() == Some(ns[0]) {
            client_ip
        } else {
            server_ip
        };
        assert_eq!(c["saddr"], local.to_string(), "{c}");
        assert!(c["cgroup"].is_string(), "{c}");
        for field in ["saddr", "daddr"] {
            let a: IpAddr = c[field].as_str().unwrap().parse().unwrap();
            assert_eq!(a.is_ipv6(), v6, "{field}: {c}");
        }
        let ms = f64_of(c, "ms");
        let span = (u64_of(c, "end_ns") - u64_of(c, "start_ns")) as f64 / 1e6;
        assert!(
            (ms - span).abs() < 1e-6,
            "ms {ms} vs end_ns - start_ns {span}: {c}"
        );
        if let Some(connect) = c["connect_ms"].as_f64() {
            // (dwell_ms is kept as f32.)
            let syn_sent = c["dwell_ms"]["syn_sent"].as_f64().unwrap_or(-1.0);
            assert!((syn_sent - connect).abs() < 1e-4, "{c}");
            assert!(connect > 0.0 && connect <= ms, "{c}");
        }
        // The smoothed RTT of an established connection: measured, and no longer than the
        // connection lived.
        if c["connect_ms"].is_number() || c["role"] == "passive" {
            let srtt = f64_of(c, "srtt_ms");
            assert!(
                srtt > 0.0 && srtt <= ms,
                "srtt_ms {srtt} of a {ms} ms life: {c}"
            );
        }
    }

    // client-first: the client's TIME_WAIT, its bytes as the README says (a SYN and a FIN
    // count one each; the server's FIN maybe, by when it arrived).
    let c = record(Side::Client, p_client_first);
    let s = record(Side::Server, p_client_first);
    assert_eq!(
        (&c["role"], &c["end"], &s["role"], &s["end"]),
        (
            &Value::from("active"),
            &Value::from("time-wait"),
            &Value::from("passive"),
            &Value::from("closed")
        ),
        "{c}\n{s}"
    );
    assert_eq!(
        (u64_of(c, "pid"), u64_of(s, "pid")),
        (pid_client_first, srv_client_first)
    );
    assert_eq!(c["closer_pid"].as_u64(), Some(pid_client_first), "{c}");
    assert_eq!(c["closer_comm"], "tcpdrive", "{c}");
    assert!(s["closer_pid"].is_null(), "the server closed second: {s}");
    assert_eq!(u64_of(c, "bytes_sent"), Q + 2, "{c}");
    assert!([P, P + 1].contains(&u64_of(c, "bytes_received")), "{c}");
    assert_eq!(
        (u64_of(s, "bytes_sent"), u64_of(s, "bytes_received")),
        (P + 1, Q + 1),
        "{s}"
    );

    // server-first: the mirror image.
    let c = record(Side::Client, p_server_first);
    let s = record(Side::Server, p_server_first);
    assert_eq!(
        (&c["end"], &s["end"]),
        (&Value::from("closed"), &Value::from("time-wait"))
    );
    assert_eq!(
        (u64_of(c, "pid"), u64_of(s, "pid")),
        (pid_server_first, srv_server_first)
    );
    assert!(c["closer_pid"].is_null(), "the client closed second: {c}");
    assert_eq!(s["closer_pid"].as_u64(), Some(srv_server_first), "{s}");
    assert_eq!(
        (u64_of(c, "bytes_sent"), u64_of(c, "bytes_received")),
        (Q + 2, P + 1),
        "{c}"
    );
    assert_eq!(u64_of(s, "bytes_sent"), P + 1, "{s}");
    assert!([Q, Q + 1].contains(&u64_of(s, "bytes_received")), "{s}");

    // reset: the client reset an established connection, the server received it. No FIN.
    let c = record(Side::Client, p_reset);
    let s = record(Side::Server, p_reset);
    assert_eq!(c["end"], "reset-by-us", "{c}");
    assert_eq!(
        c.get("reason").cloned().unwrap_or(Value::Null),
        reset_reason,
        "{c}"
    );
    assert_eq!(
        c["closer_pid"].as_u64(),
        Some(pid_reset),
        "this side closed: {c}"
    );
    assert_eq!(
        (u64_of(c, "resets_sent"), u64_of(c, "resets_received")),
        (1, 0),
        "{c}"
    );
    // The state the kernel reports with the reset: it closes the socket before sending it.
    assert_eq!(c["reset_state"], reset_sent[0]["state"], "{c}");
    assert_eq!(
        (u64_of(c, "bytes_sent"), u64_of(c, "bytes_received")),
        (Q + 1, P),
        "{c}"
    );
    assert_eq!(s["end"], "reset-by-peer", "{s}");
    assert_eq!(u64_of(s, "pid"), srv_reset, "{s}");
    assert!(s["closer_pid"].is_null(), "{s}");
    assert_eq!(
        (u64_of(s, "resets_sent"), u64_of(s, "resets_received")),
        (0, 1),
        "{s}"
    );
    assert_eq!(s["reset_state"], "ESTABLISHED", "{s}");
    assert_eq!(
        (u64_of(s, "bytes_sent"), u64_of(s, "bytes_received")),
        (P, Q),
        "{s}"
    );

    // timeout and aborted: no answer at all; retransmitted once, or closed before.
    let given_up: Vec<&&Value> = records
        .iter()
        .filter(|c| port(c, "dport") == p_drop)
        .collect();
    let by_pid: HashMap<u64, &Value> = given_up.iter().map(|c| (u64_of(c, "pid"), **c)).collect();
    assert_eq!(by_pid.len(), 2, "{given_up:#?}");
    let (t, a) = (by_pid[&pid_timeout], by_pid[&pid_aborted]);
    assert_eq!(
        (&t["end"], u64_of(t, "retransmits")),
        (&Value::from("timeout"), 1),
        "{t}"
    );
    assert_eq!(
        (&a["end"], u64_of(a, "retransmits")),
        (&Value::from("aborted"), 0),
        "{a}"
    );
    for c in [t, a] {
        assert_eq!(c["role"], "active", "{c}");
        assert!(
            c["connect_ms"].is_null() && c["closer_pid"].is_null(),
            "{c}"
        );
        assert_eq!(
            u64_of(c, "resets_received") + u64_of(c, "resets_sent"),
            0,
            "{c}"
        );
    }
    assert!(
        f64_of(t, "ms") >= 1500.0 && f64_of(a, "ms") >= 300.0 && f64_of(a, "ms") < 1000.0,
        "{t}\n{a}"
    );

    // What the kernel counts too, per namespace.
    let sum = |side: Side, field: &str| -> u64 {
        records
            .iter()
            .filter(|c| c["netns"].as_u64() == Some(pair.netns_inode(side)))
            .map(|c| u64_of(c, field))
            .sum()
    };
    for (side, d) in [(Side::Client, &dc), (Side::Server, &ds)] {
        assert_eq!(
            sum(side, "retransmits"),
            d["TcpRetransSegs"],
            "{side:?}: {d:?}"
        );
        assert_eq!(sum(side, "resets_sent"), d["TcpOutRsts"], "{side:?}: {d:?}");
    }
    assert_eq!(dc["TcpEstabResets"], 1);
    assert_eq!(ds["TcpEstabResets"], 1);

    // The text form of the same records (replayed: the live run printed JSON): one line
    // each, its columns the JSON's.
    let text = analyze(&recording, &["--life"]);
    let header: Vec<&str> = text
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        [
            "PID", "COMM", "LADDR", "LPORT", "RADDR", "RPORT", "TX_KB", "RX_KB", "MS", "ROLE",
            "END"
        ]
    );
    for c in &records {
        let line = text
            .lines()
            .find(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.len() > 5
                    && f[0].parse::<u64>().ok() == c["pid"].as_u64()
                    && f[3].parse::<u64>().ok() == c["sport"].as_u64()
                    && f[5].parse::<u64>().ok() == c["dport"].as_u64()
            })
            .unwrap_or_else(|| panic!("no text line for {c}:\n{text}"));
        let f: Vec<&str> = line.split_whitespace().collect();
        let kb = |field: &str| (u64_of(c, field) / 1024).to_string();
        let role = match c["role"].as_str().unwrap() {
            "unknown" => "-",
            r => r,
        };
        let end = match c["reason"].as_str() {
            Some(r) => format!("{} ({r})", c["end"].as_str().unwrap()),
            None => c["end"].as_str().unwrap().to_string(),
        };
        assert_eq!(
            f,
            [
                c["pid"].to_string().as_str(),
                "tcpdrive",
                c["saddr"].as_str().unwrap(),
                &c["sport"].to_string(),
                c["daddr"].as_str().unwrap(),
                &c["dport"].to_string(),
                &kb("bytes_sent"),
                &kb("bytes_received"),
                &format!("{:.3}", f64_of(c, "ms")),
                role,
            ]
            .into_iter()
            .chain(end.split(' '))
            .collect::<Vec<_>>(),
            "{line}\n{c}"
        );
    }
}

#[test]
fn root_life_records_every_field_of_each_kind_of_end_ipv4() {
    if !require_root("root_life_records_every_field_of_each_kind_of_end_ipv4") {
        return;
    }
    life_records(false);
}

#[test]
fn root_life_records_every_field_of_each_kind_of_end_ipv6() {
    if !require_root("root_life_records_every_field_of_each_kind_of_end_ipv6") {
        return;
    }
    life_records(true);
}
