//! Filters decided in the kernel, as root: what they drop never reaches user space (and is
//! counted there), and what they keep equals the unfiltered stream filtered afterwards.

use std::{net::IpAddr, process::Command};

use crate::support::{Events, Kept, Tracer, port, stop_after_quiet, tcpdrive};
use netwatch_tests::{
    NetPair, ReadyChild, Side, netwatch_bin, output_with_timeout, require_root, unique_port,
};
use serde_json::Value;

/// What identifies one kernel event in both streams (each instance's programs stamp their
/// own time, so not the timestamp).
fn key(e: &Value) -> (u16, String, String, String, String) {
    (
        port(e, "dport"),
        e["sock"].as_str().unwrap().to_string(),
        e["kind"].as_str().unwrap().to_string(),
        e["old_state"].to_string(),
        e["new_state"].to_string(),
    )
}

#[test]
fn root_pid_and_port_filters_run_in_the_kernel_and_match_filtering_afterwards() {
    if !require_root("root_pid_and_port_filters_run_in_the_kernel_and_match_filtering_afterwards") {
        return;
    }
    let pair = NetPair::new();
    let server: IpAddr = pair.server_v4().into();
    let (p1, p2) = (unique_port(), unique_port());
    const N: &str = "5";
    let mut s1 = ReadyChild::spawn(pair.exec(
        Side::Server,
        &tcpdrive(),
        &["serve", &format!("{server}:{p1}"), "--count", N],
    ));
    let mut s2 = ReadyChild::spawn(pair.exec(
        Side::Server,
        &tcpdrive(),
        &["serve", &format!("{server}:{p2}"), "--count", N],
    ));
    let pid1 = s1.pid().to_string();
    let p1s = p1.to_string();
    let all = Tracer::start(&["trace", "--json"]);
    let filtered = Tracer::start(&["trace", "--json", "-p", &pid1, "-L", &p1s]);
    for p in [p1, p2] {
        let out = output_with_timeout(
            pair.exec(
                Side::Client,
                &tcpdrive(),
                &["connect", &format!("{server}:{p}"), "--count", N],
            ),
            30,
        );
        assert!(out.status.success());
    }
    assert!(s1.wait(20).success() && s2.wait(20).success());
    // Each stops once it has the last events of the pair's connections (some come in
    // softirq after the servers exited): the two streams are then comparable.
    let all = stop_after_quiet(all, &pair, Events::Stdout, Kept::NOTHING);
    let filtered = stop_after_quiet(filtered, &pair, Events::Stdout, Kept::NOTHING);

    // The kernel dropped what the filter excludes, and counted it.
    let dropped: u64 = filtered
        .stderr
        .split(|c: char| c.is_whitespace() || c == '(' || c == ')')
        .find_map(|w| w.strip_prefix("filtered="))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no filtered= count: {}", filtered.stderr));
    assert!(dropped > 0, "{}", filtered.stderr);
    assert_eq!(
        filtered.delivered,
        filtered.events.len() as u64,
        "{}",
        filtered.stderr
    );
    assert_eq!(filtered.lost, 0);
    // Nothing of another process or port reached user space.
    for e in &filtered.events {
        assert_eq!(
            e["pid"].as_u64().map(|p| p.to_string()),
            Some(pid1.clone()),
            "{e}"
        );
        let sport = port(e, "sport");
        assert!(sport == 0 || sport == p1, "{e}");
    }
    // Same as filtering the unfiltered stream afterwards (within this pair's traffic, told by
    // the sockets' network namespaces: other test processes use the same addresses).
    let ns = [Side::Client, Side::Server].map(|s| pair.netns_inode(s));
    let in_pair = |e: &&Value| e["netns"].as_u64().is_some_and(|n| ns.contains(&n));
    let expected: Vec<_> = all
        .events
        .iter()
        .filter(in_pair)
        .filter(|e| {
            e["pid"].as_u64().map(|p| p.to_string()) == Some(pid1.clone())
                && (port(e, "sport") == 0 || port(e, "sport") == p1)
        })
        .map(key)
        .collect();
    let got: Vec<_> = filtered.events.iter().filter(in_pair).map(key).collect();
    assert!(!got.is_empty());
    assert_eq!(got, expected);
    // The server of port 1 accepted 5 connections: its accept, close and destroy events came.
    let accepts = filtered
        .events
        .iter()
        .filter(|e| e["kind"] == "accept")
        .count();
    assert_eq!(accepts, 5);
}

#[test]
fn root_a_bad_filter_fails_before_attaching() {
    if !require_root("root_a_bad_filter_fails_before_attaching") {
        return;
    }
    let mut cmd = Command::new(netwatch_bin());
    cmd.args(["trace", "dport", "=", "80x"]);
    let out = output_with_timeout(cmd, 30);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(
        stderr.trim(),
        "netwatch: error: expected ':PORT' after 'dport =' at column 9"
    );
    assert!(
        !stderr.contains("tracing TCP events"),
        "attached anyway: {stderr}"
    );
}
