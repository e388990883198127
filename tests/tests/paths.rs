//! Raw and classic tracepoint programs, as root: both paths see one workload at the same time
//! (two netwatch instances, one per path) and must give the same events; a kernel whose BTF
//! lacks what the raw programs read gets the classic ones, with one warning each.

use std::{collections::BTreeMap, net::IpAddr, time::Duration};

use crate::support::{
    Events, Finished, Kept, Tracer, endpoint, orderly_connections, refused_connects,
    stop_after_quiet, tcpdrive,
};
use netwatch_tests::{
    NetPair, ReadyChild, Side, counter_delta, drop_data_ruleset, output_with_timeout, require_root,
    unique_port, workspace_root,
};
use serde_json::Value;

/// Fields that differ between two instances watching the same events: when each read the
/// clock, the stack id, which each instance's own `STACKS` map assigns, and the cgroup path,
/// which user space looks up for the kernel's `cgroup_id` when it prints the event (a process
/// gone by then leaves a different answer).
const PER_INSTANCE: [&str; 5] = ["time", "ts_ns", "ms_in_old", "stack_id", "cgroup"];

/// `trace --json` with `NETWATCH_TRACEPOINTS=mode`; checks the start line says every
/// tracepoint is attached that way.
fn trace_with(mode: &str) -> Tracer {
    let tracer = Tracer::start_with(&["trace", "--json"], |c| {
        c.env("NETWATCH_TRACEPOINTS", mode);
    });
    let started = tracer.stderr_lines().join("\n");
    assert!(
        started.contains(&format!("7 of 7 tracepoints attached: 7 {mode})")),
        "{started}"
    );
    tracer
}

/// The pair's events, per socket in the order each instance got them, without the fields
/// that differ between instances. Resets sent for a segment no socket wanted carry no
/// namespace: those to or from `ports` are kept (under socket `0x0`), sorted.
fn per_socket(done: &Finished, pair: &NetPair, ports: &[u16]) -> BTreeMap<String, Vec<String>> {
    let ns = [Side::Client, Side::Server].map(|s| pair.netns_inode(s));
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for e in &done.events {
        let ours = e["netns"].as_u64().is_some_and(|n| ns.contains(&n));
        let unowned = e["netns"].is_null()
            && ["sport", "dport"]
                .iter()
                .any(|f| e[*f].as_u64().is_some_and(|p| ports.contains(&(p as u16))));
        if !ours && !unowned {
            continue;
        }
        let mut e = e.clone();
        let obj = e.as_object_mut().expect("an event is an object");
        for field in PER_INSTANCE {
            obj.remove(field);
        }
        let sock = obj["sock"].as_str().unwrap_or("?").to_owned();
        out.entry(sock).or_default().push(e.to_string());
    }
    if let Some(unowned) = out.get_mut("0x0") {
        unowned.sort();
    }
    out
}

/// Resets, refused connects, retransmissions, SYN-ACK retransmissions and orderly
/// connections, over IPv4 or IPv6; returns the ports used.
fn workload(pair: &NetPair, v6: bool) -> Vec<u16> {
    let server: IpAddr = if v6 {
        pair.server_v6().into()
    } else {
        pair.server_v4().into()
    };
    let ports: Vec<u16> = (0..5).map(|_| unique_port()).collect();
    let at = |i: usize| endpoint(server, ports[i]);

    // Orderly: every state of both ends, owners at connect() and at the first read.
    orderly_connections(pair, &at(0), 3);
    // Refused: a reset sent without a socket (traced since 6.10), received in SYN_SENT.
    refused_connects(pair, &at(1), 1);
    // Aborts: a reset sent by a socket, with its reason, received by an established one.
    let mut srv = ReadyChild::spawn(pair.exec(Side::Server, &tcpdrive(), &["serve", &at(2)]));
    let out = output_with_timeout(
        pair.exec(Side::Client, &tcpdrive(), &["connect-reset", &at(2)]),
        20,
    );
    assert!(out.status.success(), "{out:?}");
    let _ = srv.wait(20);
    // Retransmissions: the server namespace drops data until two went out again.
    let mut srv = ReadyChild::spawn(pair.exec(Side::Server, &tcpdrive(), &["serve", &at(3)]));
    pair.nft(Side::Server, &drop_data_ruleset("nwpaths", ports[3]));
    let before = pair.nstat(Side::Client);
    let mut cli = ReadyChild::spawn_background(pair.exec(
        Side::Client,
        &tcpdrive(),
        &[
            "send-slow",
            &at(3),
            "--bytes",
            "1000",
            "--timeout-ms",
            "30000",
        ],
    ));
    let retransmitted = netwatch_tests::eventually(Duration::from_secs(15), || {
        counter_delta(&before, &pair.nstat(Side::Client))["TcpRetransSegs"] >= 2
    });
    pair.nft(Side::Server, "delete table inet nwpaths");
    assert!(retransmitted, "no retransmissions within 15 s");
    assert!(cli.wait(40).success());
    assert!(srv.wait(20).success());
    // SYN-ACK retransmissions: the client namespace drops the server's SYN-ACKs, so the
    // client's connect times out while the listener sends its SYN-ACK again.
    let srv = ReadyChild::spawn(pair.exec(Side::Server, &tcpdrive(), &["serve", &at(4)]));
    pair.nft(
        Side::Client,
        &format!(
            "table inet nwsynack {{\n  chain input {{\n    type filter hook input priority 0; \
             policy accept;\n    tcp sport {} tcp flags & (syn | ack) == syn | ack drop\n  }}\n}}\n",
            ports[4]
        ),
    );
    let out = output_with_timeout(
        pair.exec(
            Side::Client,
            &tcpdrive(),
            &["connect-expect-fail", &at(4), "--timeout-ms", "2500"],
        ),
        20,
    );
    // The listener goes first, so that no SYN-ACK it would still send meets the client.
    drop(srv);
    pair.nft(Side::Client, "delete table inet nwsynack");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("ETIMEDOUT"),
        "{out:?}"
    );
    ports
}

fn both_paths_agree(v6: bool) {
    let pair = NetPair::new();
    let raw = trace_with("raw");
    let classic = trace_with("classic");
    let ports = workload(&pair, v6);
    // Quiet first, then both stopped back to back: an event between the two stops would be
    // in one stream only.
    let raw = stop_after_quiet(raw, &pair, Events::Stdout, Kept::NOTHING);
    let classic = classic.stop();
    let (r, c) = (
        per_socket(&raw, &pair, &ports),
        per_socket(&classic, &pair, &ports),
    );
    let kinds = |m: &BTreeMap<String, Vec<String>>| -> BTreeMap<String, usize> {
        let mut k = BTreeMap::new();
        for e in m.values().flatten() {
            let v: Value = serde_json::from_str(e).expect("JSON");
            *k.entry(v["kind"].as_str().unwrap_or("?").to_owned())
                .or_default() += 1;
        }
        k
    };
    // The workload reaches every program.
    let seen = kinds(&r);
    for kind in [
        "state",
        "accept",
        "retransmit",
        "synack_retransmit",
        "reset_received",
        "reset_sent",
        "destroy",
    ] {
        assert!(seen.contains_key(kind), "no {kind} event: {seen:?}");
    }
    assert_eq!(seen, kinds(&c), "event kinds, raw vs classic");
    for (sock, events) in &r {
        assert_eq!(
            Some(events),
            c.get(sock),
            "socket {sock}: raw (left) vs classic (right)"
        );
    }
    assert_eq!(r.len(), c.len(), "sockets");
    for done in [&raw, &classic] {
        assert_eq!(done.lost, 0, "{}", done.stderr);
        assert!(!done.stderr.contains("read_failed"), "{}", done.stderr);
    }
}

#[test]
fn root_raw_and_classic_tracepoints_give_the_same_ipv4_events() {
    if !require_root("root_raw_and_classic_tracepoints_give_the_same_ipv4_events") {
        return;
    }
    both_paths_agree(false);
}

#[test]
fn root_raw_and_classic_tracepoints_give_the_same_ipv6_events() {
    if !require_root("root_raw_and_classic_tracepoints_give_the_same_ipv6_events") {
        return;
    }
    both_paths_agree(true);
}

#[test]
fn root_without_the_raw_tracepoints_btf_the_classic_ones_run_with_a_warning_each() {
    if !require_root(
        "root_without_the_raw_tracepoints_btf_the_classic_ones_run_with_a_warning_each",
    ) {
        return;
    }
    // A BTF with none of the kernel's types (a small GCC-made one): no raw tracepoint
    // prototypes, no struct offsets.
    let btf = workspace_root().join("netwatch/tests/fixtures/btf/mini_tcp.btf");
    let pair = NetPair::new();
    let server: IpAddr = pair.server_v4().into();
    let tracer = Tracer::start_with(&["trace", "--json"], |c| {
        c.env("NETWATCH_BTF", &btf)
            .env_remove("NETWATCH_TRACEPOINTS");
    });
    orderly_connections(&pair, &endpoint(server, unique_port()), 1);
    let done = stop_after_quiet(tracer, &pair, Events::Unseen, Kept::NOTHING);
    let fallbacks: Vec<&str> = done
        .stderr
        .lines()
        .filter(|l| l.contains("the classic tracepoint is used"))
        .collect();
    // Six tracepoints; the seventh (first reads) needs the accept() walk's offsets on both
    // paths and is off, as the BTF warnings say.
    assert_eq!(fallbacks.len(), 6, "{}", done.stderr);
    assert!(
        fallbacks.iter().all(|l| l.contains("btf_trace_")),
        "{}",
        done.stderr
    );
    assert!(
        done.stderr
            .contains("6 of 7 tracepoints attached: 6 classic"),
        "{}",
        done.stderr
    );
    assert!(
        done.events.iter().any(|e| e["kind"] == "state"),
        "no transition traced: {}",
        done.stderr
    );

    // Forced raw: netwatch stops at once and says why, in one line.
    let mut cmd = std::process::Command::new(netwatch_tests::netwatch_bin());
    cmd.args(["trace", "--duration", "1s"])
        .env("NETWATCH_BTF", &btf)
        .env("NETWATCH_TRACEPOINTS", "raw");
    let out = output_with_timeout(cmd, 30);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    let error: Vec<&str> = stderr.lines().filter(|l| l.contains("error")).collect();
    assert_eq!(error.len(), 1, "{stderr}");
    assert!(
        error[0].contains("NETWATCH_TRACEPOINTS=raw")
            && error[0].contains("inet_sock_set_state")
            && error[0].contains("btf_trace_inet_sock_set_state"),
        "{stderr}"
    );

    // A value it does not know is an error, not a silent default.
    let mut cmd = std::process::Command::new(netwatch_tests::netwatch_bin());
    cmd.args(["trace", "--duration", "1s"])
        .env("NETWATCH_TRACEPOINTS", "fast");
    let out = output_with_timeout(cmd, 30);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("expected auto, raw or classic"),
        "{stderr}"
    );
}

/// No kernel BTF at all (`NETWATCH_BTF` naming a file that does not exist): netwatch runs
/// degraded as the README says ("Kernels": "Without it those are left empty, with one warning,
/// accepted sockets get their owner at `close()` instead, and every tracepoint gets its classic
/// program"): one warning for the offsets, no network namespace, bytes or RTT on any event, no
/// `accept` event, and the server's accepted socket named by the server at its close.
#[test]
fn root_without_kernel_btf_runs_degraded_with_one_warning() {
    if !require_root("root_without_kernel_btf_runs_degraded_with_one_warning") {
        return;
    }
    let missing = std::env::temp_dir().join(format!("netwatch-no-btf-{}", std::process::id()));
    assert!(!missing.exists());
    let pair = NetPair::new();
    let server: IpAddr = pair.server_v4().into();
    let port = unique_port();
    let tracer = Tracer::start_with(&["trace", "--json"], |c| {
        c.env("NETWATCH_BTF", &missing)
            .env_remove("NETWATCH_TRACEPOINTS");
    });
    let addr = endpoint(server, port);
    let mut srv = ReadyChild::spawn(pair.exec(Side::Server, &tcpdrive(), &["serve", &addr]));
    let out = output_with_timeout(
        pair.exec(Side::Client, &tcpdrive(), &["connect", &addr]),
        20,
    );
    assert!(out.status.success());
    assert!(srv.wait(20).success());
    let server_pid = u64::from(srv.pid());
    let done = stop_after_quiet(tracer, &pair, Events::Unseen, Kept::NOTHING);

    let no_btf: Vec<&str> = done
        .stderr
        .lines()
        .filter(|l| l.contains("no kernel BTF"))
        .collect();
    assert_eq!(
        no_btf
            .iter()
            .filter(|l| l.contains("are not reported"))
            .count(),
        1,
        "one warning for the offsets: {}",
        done.stderr
    );
    assert!(
        done.stderr
            .contains("6 of 7 tracepoints attached: 6 classic"),
        "{}",
        done.stderr
    );
    // This workload's events: the server's port on one end.
    let mine: Vec<&Value> = done
        .events
        .iter()
        .filter(|e| {
            e["sport"].as_u64() == Some(u64::from(port))
                || e["dport"].as_u64() == Some(u64::from(port))
        })
        .filter(|e| e["saddr"] == server.to_string() || e["daddr"] == server.to_string())
        .collect();
    assert!(mine.len() >= 10, "{mine:#?}");
    for e in &mine {
        for field in ["netns", "bytes_sent", "bytes_received", "srtt_ms"] {
            assert!(e.get(field).is_none(), "{field} without BTF: {e}");
        }
        assert_ne!(e["kind"], "accept", "an accept owner without BTF: {e}");
    }
    let last_ack = mine
        .iter()
        .find(|e| e["old_state"] == "CLOSE_WAIT" && e["new_state"] == "LAST_ACK")
        .unwrap_or_else(|| panic!("no CLOSE_WAIT -> LAST_ACK: {mine:#?}"));
    assert_eq!(last_ack["pid"].as_u64(), Some(server_pid), "{last_ack}");
    assert_eq!(last_ack["owner_seen_here"], true, "{last_ack}");
    // Before its close, the accepted socket had no owner.
    let established = mine
        .iter()
        .find(|e| e["old_state"] == "SYN_RECV" && e["new_state"] == "ESTABLISHED")
        .unwrap_or_else(|| panic!("no SYN_RECV -> ESTABLISHED: {mine:#?}"));
    assert!(established["pid"].is_null(), "{established}");
}
