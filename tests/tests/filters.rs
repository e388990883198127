//! Filters decided in the kernel, as root: what they drop never reaches user space (and is
//! counted there), and what they keep equals the unfiltered stream filtered afterwards.
//! The cgroups they select by have one name in every output, also a cgroup removed before its
//! events are read.

use std::{net::IpAddr, process::Command};

use crate::support::{
    CgroupDir, Events, Kept, Tracer, cgroup_v2_of, cgroup2_mount_or_skip, port, stop_after_quiet,
    tcpdrive,
};
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
    let expected = "netwatch: error: expected ':PORT' after 'dport =' at column 9";
    let mut cmd = Command::new(netwatch_bin());
    cmd.args(["trace", "dport", "=", "80x"]);
    let out = output_with_timeout(cmd, 30);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.trim(), expected);
    assert!(out.stdout.is_empty());
    // Before attaching, and before anything needs a privilege: without any capability (root
    // with an empty bounding set, which cannot load a program) the error is the same, not
    // the missing CAP_BPF.
    let mut cmd = Command::new("setpriv");
    cmd.args(["--bounding-set", "-all", "--inh-caps", "-all", "--"])
        .arg(netwatch_bin())
        .args(["trace", "dport", "=", "80x"]);
    let out = output_with_timeout(cmd, 30);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.trim(), expected);
}

/// An owner's cgroup has one name in every output, whether its process still runs or not: its
/// cgroup v2 path (README, "Cgroups"), which is what `--cgroup` takes and decides in the
/// kernel. A path that names no cgroup of the v2 hierarchy is an error naming it.
#[test]
fn root_cgroup_names_one_path_per_cgroup_and_selects_it_in_the_kernel() {
    const TEST: &str = "root_cgroup_names_one_path_per_cgroup_and_selects_it_in_the_kernel";
    if !require_root(TEST) {
        return;
    }
    let Some(mount) = cgroup2_mount_or_skip(TEST) else {
        return;
    };
    // This test's processes (and the tcpdrives it starts) are in `own`; one client runs in a
    // cgroup of its own, `cg`. On a hybrid host `own` is `/`, although a v1 hierarchy (such
    // as memory) may say more: that name must never appear.
    let own = cgroup_v2_of(std::process::id()).expect("the test's cgroup v2 path");
    let cg = CgroupDir::create(
        &mount,
        &format!("netwatch-test-{}-select", std::process::id()),
    );
    let pair = NetPair::new();
    let server: IpAddr = pair.server_v4().into();
    let p = unique_port();
    let addr = format!("{server}:{p}");
    const N: usize = 4;
    const M: usize = 3;

    // Alive until the end: the server is still running when every line is printed.
    let srv = ReadyChild::spawn(pair.exec(Side::Server, &tcpdrive(), &["serve-forever", &addr]));
    let in_own = Tracer::start(&["life", "--json", "--cgroup", &own]);
    let in_cg = Tracer::start(&["trace", "--json", "--cgroup", &cg.rel]);
    let connect = |count: usize, cgroup: Option<&CgroupDir>| -> u64 {
        let mut cmd = pair.exec(
            Side::Client,
            &tcpdrive(),
            &["connect", &addr, "--count", &count.to_string()],
        );
        if let Some(cg) = cgroup {
            cg.join_before_exec(&mut cmd);
        }
        let out = output_with_timeout(cmd, 30);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        netwatch_tests::find_line(&String::from_utf8_lossy(&out.stdout), "DONE")
            .and_then(|f| f.get(1)?.parse().ok())
            .expect("DONE <pid>")
    };
    // Short-lived clients: gone long before their connections' lines are printed.
    let own_client = connect(N, None);
    let cg_client = connect(M, Some(&cg));
    let in_cg = stop_after_quiet(in_cg, &pair, Events::Stdout, Kept::NOTHING);
    let in_own = stop_after_quiet(in_own, &pair, Events::Unseen, Kept::NOTHING);
    let server_pid = u64::from(srv.pid());
    let ns = [Side::Client, Side::Server].map(|s| pair.netns_inode(s));
    let in_pair = |e: &&Value| e["netns"].as_u64().is_some_and(|n| ns.contains(&n));

    // `--cgroup OWN` (`/` on a hybrid host): the short-lived client's connections and the
    // server's, all named OWN; nothing of the client in `cg`.
    let conns: Vec<&Value> = in_own.events.iter().filter(in_pair).collect();
    let of = |pid: u64| {
        conns
            .iter()
            .filter(|c| c["pid"].as_u64() == Some(pid))
            .count()
    };
    assert_eq!(of(own_client), N, "{}", in_own.stdout);
    assert!(
        of(server_pid) > 0,
        "no connection of the server: {}",
        in_own.stdout
    );
    assert_eq!(of(cg_client), 0, "{}", in_own.stdout);
    for c in &conns {
        assert_eq!(c["cgroup"], own.as_str(), "{c}");
    }

    // `--cgroup /netwatch-test-...`: only the client in it, from its connect on, named so.
    let events: Vec<&Value> = in_cg.events.iter().filter(in_pair).collect();
    let connects = events
        .iter()
        .filter(|e| e["old_state"] == "CLOSE" && e["new_state"] == "SYN_SENT")
        .count();
    assert_eq!(connects, M, "{}", in_cg.stdout);
    for e in &events {
        assert_eq!(e["pid"].as_u64(), Some(cg_client), "{e}");
        assert_eq!(e["cgroup"], cg.rel.as_str(), "{e}");
    }
    assert!(in_cg.stderr.contains("filtered="), "{}", in_cg.stderr);

    // What names no cgroup of the v2 hierarchy: a v1 hierarchy's directory (`/memory` on a
    // hybrid host), a v1-style name, a path that does not exist. Each stops netwatch before
    // anything is attached, naming the token and where v2 is mounted.
    for bad in ["/memory", "memory:/", "/netwatch-no-such-cgroup"] {
        let mut cmd = Command::new(netwatch_bin());
        cmd.args(["trace", "--cgroup", bad]);
        let out = output_with_timeout(cmd, 30);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{bad}: {stderr}");
        assert!(
            stderr.starts_with(&format!("netwatch: error: --cgroup {bad}: "))
                && stderr.contains(&mount.display().to_string())
                && stderr.lines().count() == 1,
            "{bad}: {stderr}"
        );
    }
    drop(srv);
}

/// A cgroup that lives a few milliseconds (a `--rm` container's, a Job's, a transient scope's)
/// is named by its path although it is removed before netwatch reads its first event: netwatch
/// learns each cgroup's path when the cgroup is made (README, "Cgroups"). Each round makes a
/// cgroup, connects once from a process in it, and removes it the moment the process exits,
/// tens of milliseconds before the ring buffer is read: by then no walk of the hierarchy could
/// find it.
#[test]
fn root_cgroups_removed_before_their_events_are_read_are_named() {
    const TEST: &str = "root_cgroups_removed_before_their_events_are_read_are_named";
    if !require_root(TEST) {
        return;
    }
    let Some(mount) = cgroup2_mount_or_skip(TEST) else {
        return;
    };
    const ROUNDS: usize = 5;
    let pair = NetPair::new();
    let server: IpAddr = pair.server_v4().into();
    let p = unique_port();
    let addr = format!("{server}:{p}");
    let srv = ReadyChild::spawn(pair.exec(Side::Server, &tcpdrive(), &["serve-forever", &addr]));
    let tracer = Tracer::start(&["trace", "--json", "dport", "=", &format!(":{p}")]);
    let mut clients = Vec::new();
    for round in 0..ROUNDS {
        let cg = CgroupDir::create(
            &mount,
            &format!("netwatch-test-{}-gone-{round}", std::process::id()),
        );
        let mut cmd = pair.exec(
            Side::Client,
            &tcpdrive(),
            &["connect", &addr, "--count", "1"],
        );
        cg.join_before_exec(&mut cmd);
        let out = output_with_timeout(cmd, 30);
        let rel = cg.rel.clone();
        // Removed at once (the drop), the process being gone.
        drop(cg);
        assert!(
            !mount.join(rel.trim_start_matches('/')).exists(),
            "{rel} still there"
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let pid: u64 = netwatch_tests::find_line(&String::from_utf8_lossy(&out.stdout), "DONE")
            .and_then(|f| f.get(1)?.parse().ok())
            .expect("DONE <pid>");
        clients.push((pid, rel));
    }
    let done = stop_after_quiet(tracer, &pair, Events::Stdout, Kept::NOTHING);
    let mut unnamed = Vec::new();
    for (pid, rel) in &clients {
        let connects: Vec<&Value> = done
            .events
            .iter()
            .filter(|e| {
                e["pid"].as_u64() == Some(*pid)
                    && e["old_state"] == "CLOSE"
                    && e["new_state"] == "SYN_SENT"
            })
            .collect();
        assert_eq!(connects.len(), 1, "pid {pid}: {}", done.stdout);
        if connects[0]["cgroup"] != rel.as_str() {
            unnamed.push(format!("{rel} (removed): {}", connects[0]));
        }
    }
    assert!(
        unnamed.is_empty(),
        "{} of {ROUNDS} connects not named by their cgroup:\n{}",
        unnamed.len(),
        unnamed.join("\n")
    );
    drop(srv);
}

/// Client ports of [`root_family_comm_and_state_filters_on_life_and_report`].
const FAMILY_CLIENT_PORTS: (u16, u16) = (16000, 16999);

/// A life record's identity: (local, remote, end).
fn life_key(c: &Value) -> (String, String, String) {
    let ep = |a: &str, p: &str| crate::support::endpoint(crate::support::ip(c, a), port(c, p));
    (
        ep("saddr", "sport"),
        ep("daddr", "dport"),
        c["end"].as_str().unwrap_or("?").to_string(),
    )
}

/// `-4`/`-6`, `--comm` and a state expression on `life` and `report` (README, "Filters"): for
/// `life` and `report` a connection's state is the one it ended in (`time-wait` for the side
/// that closed first). Two clients with different command names each make one connection
/// over IPv4 and one over IPv6; each filtered run must keep exactly the connections the
/// workload says it should, and exactly what the unfiltered run's records filtered afterwards
/// keep.
#[test]
fn root_family_comm_and_state_filters_on_life_and_report() {
    if !require_root("root_family_comm_and_state_filters_on_life_and_report") {
        return;
    }
    let scratch = crate::support::Scratch::new("comm");
    // A second command name: the same driver under another file name.
    let other = scratch.path("othercli");
    std::fs::copy(tcpdrive(), &other).expect("copy tcpdrive");
    let pair = NetPair::new();
    let (p4, p6) = (unique_port(), unique_port());
    let own = crate::support::own_traffic_only(&pair, FAMILY_CLIENT_PORTS, &[p4, p6], &[]);
    // Options first, then the expression.
    let run = |options: &[&str], expression: &[&str]| {
        let a: Vec<&str> = options
            .iter()
            .copied()
            .chain(own.iter().map(String::as_str))
            .chain(expression.iter().copied())
            .collect();
        Tracer::start(&a)
    };
    let all = run(&["life", "--json"], &[]);
    let v6_other = run(&["life", "--json", "-6", "--comm", "othercli"], &[]);
    let v4_time_wait = run(&["life", "--json", "-4"], &["state", "time-wait"]);
    let report = run(&["report", "--json", "-4", "--comm", "othercli"], &[]);
    let report_tw = run(&["report", "--json", "-6"], &["state", "time-wait"]);

    let a4 = format!("{}:{p4}", pair.server_v4());
    let a6 = format!("[{}]:{p6}", pair.server_v6());
    let mut servers: Vec<ReadyChild> = [&a4, &a6]
        .iter()
        .map(|a| {
            ReadyChild::spawn(pair.exec(Side::Server, &tcpdrive(), &["serve", a, "--count", "2"]))
        })
        .collect();
    // (binary's comm, address) -> client pid
    let mut pids = std::collections::HashMap::new();
    for (bin, comm) in [(tcpdrive(), "tcpdrive"), (other.clone(), "othercli")] {
        for a in [&a4, &a6] {
            let out = output_with_timeout(pair.exec(Side::Client, &bin, &["connect", a]), 20);
            let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
            assert!(out.status.success(), "{stdout}");
            let pid: u64 = netwatch_tests::find_line(&stdout, "DONE").expect("DONE")[1]
                .parse()
                .unwrap();
            pids.insert((comm, a.as_str() == a6.as_str()), pid);
        }
    }
    for s in &mut servers {
        assert!(s.wait(20).success());
    }
    let server_pids: Vec<u64> = servers.iter().map(|s| u64::from(s.pid())).collect();
    let stop = |t| stop_after_quiet(t, &pair, Events::Unseen, Kept::NOTHING);
    let (all, v6_other, v4_time_wait, report, report_tw) = (
        stop(all),
        stop(v6_other),
        stop(v4_time_wait),
        stop(report),
        stop(report_tw),
    );

    // Unfiltered: 4 client records and 4 server records of this pair.
    let ns = [Side::Client, Side::Server].map(|s| pair.netns_inode(s));
    let in_pair = |c: &&Value| c["netns"].as_u64().is_some_and(|n| ns.contains(&n));
    let all: Vec<&Value> = all.events.iter().filter(in_pair).collect();
    assert_eq!(all.len(), 8, "{all:#?}");
    let keys =
        |v: &[&Value]| -> std::collections::BTreeSet<_> { v.iter().map(|c| life_key(c)).collect() };

    // -6 --comm othercli: othercli's IPv6 connection only.
    let got: Vec<&Value> = v6_other.events.iter().filter(in_pair).collect();
    assert_eq!(got.len(), 1, "{got:#?}");
    assert_eq!(
        got[0]["pid"].as_u64(),
        Some(pids[&("othercli", true)]),
        "{:#}",
        got[0]
    );
    assert_eq!(got[0]["comm"], "othercli");
    assert_eq!(
        crate::support::ip(got[0], "daddr"),
        IpAddr::from(pair.server_v6())
    );
    let expected: Vec<&Value> = all
        .iter()
        .copied()
        .filter(|c| c["comm"] == "othercli" && c["daddr"].as_str().is_some_and(|a| a.contains(':')))
        .collect();
    assert_eq!(keys(&got), keys(&expected));

    // -4 state time-wait: the two IPv4 client sockets (they closed first); the servers'
    // sockets ended `closed` and are left out.
    let got: Vec<&Value> = v4_time_wait.events.iter().filter(in_pair).collect();
    assert_eq!(got.len(), 2, "{got:#?}");
    let mut got_pids: Vec<u64> = got.iter().map(|c| c["pid"].as_u64().unwrap()).collect();
    got_pids.sort_unstable();
    let mut want = vec![pids[&("tcpdrive", false)], pids[&("othercli", false)]];
    want.sort_unstable();
    assert_eq!(got_pids, want, "{got:#?}");
    for c in &got {
        assert_eq!(c["end"], "time-wait", "{c:#}");
        assert!(!server_pids.contains(&c["pid"].as_u64().unwrap()));
    }
    let expected: Vec<&Value> = all
        .iter()
        .copied()
        .filter(|c| c["end"] == "time-wait" && !c["saddr"].as_str().unwrap().contains(':'))
        .collect();
    assert_eq!(keys(&got), keys(&expected));

    // report -4 --comm othercli: one connecting process, one connection, one TIME_WAIT birth.
    let r: Value = serde_json::from_str(&report.stdout)
        .unwrap_or_else(|e| panic!("report is not JSON ({e}):\n{}", report.stdout));
    let connects = r["connects_by_process"]
        .as_array()
        .expect("connects_by_process");
    let want_key = format!("othercli[{}]", pids[&("othercli", false)]);
    assert_eq!(connects.len(), 1, "{connects:#?}");
    assert_eq!(connects[0]["key"], want_key.as_str());
    assert_eq!(connects[0]["established"], 1);
    assert_eq!(r["connections_ended"], 1, "{r:#}");
    assert_eq!(r["time_wait"]["births"], 1, "{:#}", r["time_wait"]);
    let lifetimes = r["lifetimes_by_process"]
        .as_array()
        .expect("lifetimes_by_process");
    assert_eq!(lifetimes.len(), 1, "{lifetimes:#?}");
    assert_eq!(lifetimes[0]["key"], want_key.as_str());

    // report -6 state time-wait: the two IPv6 client connections (they closed first), one per
    // connecting process; the servers' (ended `closed`) are left out.
    let r: Value = serde_json::from_str(&report_tw.stdout)
        .unwrap_or_else(|e| panic!("report is not JSON ({e}):\n{}", report_tw.stdout));
    assert_eq!(r["connections_ended"], 2, "{r:#}");
    assert_eq!(r["time_wait"]["births"], 2, "{:#}", r["time_wait"]);
    let mut keys: Vec<&str> = r["connects_by_process"]
        .as_array()
        .expect("connects_by_process")
        .iter()
        .map(|c| c["key"].as_str().unwrap())
        .collect();
    keys.sort_unstable();
    let mut want = vec![
        format!("othercli[{}]", pids[&("othercli", true)]),
        format!("tcpdrive[{}]", pids[&("tcpdrive", true)]),
    ];
    want.sort_unstable();
    assert_eq!(keys, want, "{r:#}");
    assert_eq!(
        r["ends"],
        serde_json::json!([{"key": "time-wait", "count": 2}]),
        "{r:#}"
    );
}
