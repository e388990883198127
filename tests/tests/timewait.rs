//! TIME_WAIT as the kernel holds it, as root in fresh network namespaces: the population
//! netwatch follows per 4-tuple equals what `ss` lists while clients reuse their ports, the
//! port-exhaustion forecast made in the first seconds predicts the moment connect() fails with
//! EADDRNOTAVAIL, and births past `tcp_max_tw_buckets` are not counted alive but reported as
//! the kernel's TCPTimeWaitOverflow counts them.

use std::{
    net::{Ipv4Addr, SocketAddr},
    time::{Duration, Instant},
};

use crate::support::{Events, Kept, Tracer, eventually, get, stop_after_quiet, tcpdrive};
use netwatch_tests::{
    NetPair, ReadyChild, Side, counter_delta, monotonic_ns, require_root, unique_port,
};
use serde_json::Value;

/// The value of one series (`name{labels}`) in an OpenMetrics text.
fn series(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(name_and_labels)
            .and_then(|rest| rest.strip_prefix(' '))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
    })
}

fn metrics(nw: SocketAddr) -> String {
    let r = get(nw, "/metrics");
    assert_eq!(r.status, 200, "{}", r.body);
    r.body
}

/// Timewait sockets `ss` lists in `side` (both substates) whose local or remote port is
/// `port`.
fn ss_time_waits(pair: &NetPair, side: Side, port: u16) -> u64 {
    let filter = format!("( sport = :{port} or dport = :{port} )");
    pair.run(
        side,
        &[
            "ss",
            "-Htan",
            "state",
            "time-wait",
            "state",
            "fin-wait-2",
            &filter,
        ],
    )
    .lines()
    .filter(|l| !l.trim().is_empty())
    .count() as u64
}

fn sysctl(pair: &NetPair, side: Side, setting: &str) {
    pair.run(side, &["sysctl", "-q", "-w", setting]);
}

/// A JSON report of a run stopped once the pair is quiet.
fn report_of(tracer: Tracer, pair: &NetPair) -> Value {
    let done = stop_after_quiet(tracer, pair, Events::Unseen, Kept::NOTHING);
    serde_json::from_str(&done.stdout)
        .unwrap_or_else(|e| panic!("report is not JSON ({e}):\n{}", done.stdout))
}

/// Clients that reuse their ports: 2,000 ephemeral ports, 8,000 connections at 1,000/s, the
/// server closing first. connect() walks the ports of one parity first, so about 1,000
/// 4-tuples come round every second, and each new SYN on a 4-tuple in TIME_WAIT kills that
/// timewait socket: the server's population stays near 1,000 while its births pass 8,000.
/// Sampled at three moments (two during the churn, one after), netwatch's count equals
/// `ss`'s within 1%.
#[test]
fn root_time_wait_population_equals_ss_under_port_reuse() {
    if !require_root("root_time_wait_population_equals_ss_under_port_reuse") {
        return;
    }
    const CONNECTIONS: u64 = 8000;
    /// The 4-tuples in use: one parity of the 2,000 ports, less a few.
    const TUPLES: u64 = 900;
    let pair = NetPair::new();
    sysctl(
        &pair,
        Side::Client,
        "net.ipv4.ip_local_port_range=40000 41999",
    );
    let port = unique_port();
    let addr = format!("{}:{port}", pair.server_v4());
    let nw = SocketAddr::from((Ipv4Addr::LOCALHOST, unique_port()));
    // Only this workload: the scrapes themselves leave timewait sockets too.
    let ours = format!("( sport = :{port} or dport = :{port} )");
    let tracer = Tracer::start(&["serve", "--listen", &nw.to_string(), &ours]);
    let _server = ReadyChild::spawn(pair.exec(
        Side::Server,
        &tcpdrive(),
        &[
            "serve-close-first",
            &addr,
            "--count",
            &CONNECTIONS.to_string(),
        ],
    ));
    let mut client = ReadyChild::spawn_background(pair.exec(
        Side::Client,
        &tcpdrive(),
        &[
            "connect-paced",
            &addr,
            "--rate",
            "1000",
            "--count",
            &CONNECTIONS.to_string(),
        ],
    ));
    let series_name =
        format!("netwatch_time_wait_destination_sockets{{destination=\"{addr} (server side)\"}}");
    let started = Instant::now();
    let mut samples = Vec::new();
    // Two moments during the churn (after the ports went round), one after it. The gauges
    // refresh every second: each sample is taken just after a refresh, and ss right after
    // it. A refresh shows as a change of the births counted (1,000 a second during the
    // churn), not of the population, which port reuse holds steady and may leave unchanged.
    for at in [Duration::from_secs(4), Duration::from_secs(6)] {
        std::thread::sleep(at.saturating_sub(started.elapsed()));
        let read = || {
            let text = metrics(nw);
            let born = series(&text, "netwatch_time_wait_ends{kind=\"born\"}").unwrap_or(0.0);
            (
                born as u64,
                series(&text, &series_name).unwrap_or(0.0) as u64,
            )
        };
        let (mut last_born, _) = read();
        let mut sample = None;
        eventually(Duration::from_secs(3), || {
            let (born, population) = read();
            if born != last_born {
                sample = Some((population, ss_time_waits(&pair, Side::Server, port)));
            }
            last_born = born;
            sample.is_some()
        });
        samples.push(sample.expect("the births counted change while the churn runs"));
    }
    assert!(client.wait(60).success(), "{:?}", client.stdout_lines());
    // After the churn the population is still, and netwatch's gauge refreshes every second:
    // the two agree once the gauge caught up (bounded).
    let ss = ss_time_waits(&pair, Side::Server, port);
    let mut ours = 0;
    eventually(Duration::from_secs(5), || {
        ours = series(&metrics(nw), &series_name).unwrap_or(0.0) as u64;
        ours == ss
    });
    samples.push((ours, ss));
    let kind = |text: &str, k: &str| {
        series(text, &format!("netwatch_time_wait_ends{{kind=\"{k}\"}}")).unwrap_or(-1.0) as u64
    };
    // Every birth counted (the last ones reach the gauges within a refresh or two).
    let mut text = String::new();
    eventually(Duration::from_secs(5), || {
        text = metrics(nw);
        kind(&text, "born") == CONNECTIONS
    });
    let kind = |k: &str| kind(&text, k);
    let (born, reused, gone, unseen) = (
        kind("born"),
        kind("reused"),
        kind("drift_gone"),
        kind("drift_unseen"),
    );
    drop(tracer.stop());
    eprintln!(
        "port reuse: samples (netwatch, ss) {samples:?}; births {born}, ended by reuse {reused}, drift gone {gone}, unseen {unseen}"
    );
    for (i, &(ours, ss)) in samples.iter().enumerate() {
        let error = ours.abs_diff(ss) as f64 / ss.max(1) as f64;
        assert!(
            error <= 0.01,
            "moment {i}: netwatch counts {ours} timewait sockets, ss lists {ss} ({:.2}% off); all samples {samples:?}",
            error * 100.0
        );
        assert!(
            ss >= TUPLES,
            "moment {i}: ss lists only {ss}: the churn did not go round the ports"
        );
    }
    // The workload did reuse ports: births far above the population, ended by new SYNs.
    assert_eq!(born, CONNECTIONS, "births");
    let population = samples[2].1;
    assert!(
        reused + gone >= born - population && reused + gone <= born,
        "{born} born, {population} alive: the other {} were ended by a new connection on their 4-tuple, but {reused} were seen so ({gone} found gone by reconciliation)",
        born - population
    );
}

/// Real exhaustion: the client closes first with `tcp_tw_reuse=0` and 1,000 ports, at a
/// steady 50 connections a second, so connect() fails with EADDRNOTAVAIL after about 20 s.
/// The forecast `serve` exports 5 s in predicts that moment within 10%, and `report` names it.
#[test]
fn root_time_wait_forecast_predicts_real_exhaustion() {
    if !require_root("root_time_wait_forecast_predicts_real_exhaustion") {
        return;
    }
    let pair = NetPair::new();
    sysctl(
        &pair,
        Side::Client,
        "net.ipv4.ip_local_port_range=40000 40999",
    );
    sysctl(&pair, Side::Client, "net.ipv4.tcp_tw_reuse=0");
    let port = unique_port();
    let addr = format!("{}:{port}", pair.server_v4());
    let nw = SocketAddr::from((Ipv4Addr::LOCALHOST, unique_port()));
    // Only this workload: other traffic on the host must not push its destination out of
    // the exported ones.
    let ours = format!("( sport = :{port} or dport = :{port} )");
    let serve = Tracer::start(&["serve", "--listen", &nw.to_string(), &ours]);
    let report = Tracer::start(&["report", "--json", &ours]);
    let _server =
        ReadyChild::spawn(pair.exec(Side::Server, &tcpdrive(), &["serve-forever", &addr]));
    let mut client = ReadyChild::spawn_background(pair.exec(
        Side::Client,
        &tcpdrive(),
        &["connect-paced", &addr, "--rate", "50"],
    ));
    let line = |word: &str, client: &ReadyChild| -> Option<Vec<String>> {
        client.stdout_lines().iter().find_map(|l| {
            let f: Vec<String> = l.split_whitespace().map(String::from).collect();
            (f.first().map(String::as_str) == Some(word)).then_some(f)
        })
    };
    assert!(
        eventually(Duration::from_secs(10), || line("STARTED", &client)
            .is_some()),
        "no STARTED line: {:?}",
        client.stdout_lines()
    );
    let started_ns: u64 = line("STARTED", &client).unwrap()[2].parse().unwrap();
    // The forecast, 5 s in.
    let five_s = started_ns + 5_000_000_000;
    std::thread::sleep(Duration::from_nanos(five_s.saturating_sub(monotonic_ns())));
    let series_name = format!("netwatch_time_wait_exhaustion_seconds{{destination=\"{addr}\"}}");
    // The gauges refresh every second: the forecast is taken when its value changes, which is
    // when it was computed (to within the 20 ms between reads).
    let mut forecast = None;
    let mut last = None;
    eventually(Duration::from_secs(3), || {
        let asked_ns = monotonic_ns();
        let value = series(&metrics(nw), &series_name);
        if last.is_some() && value != last {
            forecast = value.map(|s| (asked_ns, asked_ns + (s * 1e9) as u64));
        }
        last = value;
        forecast.is_some()
    });
    let (asked_ns, predicted_ns) =
        forecast.unwrap_or_else(|| panic!("no {series_name} 5 s in:\n{}", metrics(nw)));
    assert!(
        eventually(Duration::from_secs(60), || line("EXHAUSTED", &client)
            .is_some()),
        "connect() never failed: {:?}",
        client.stdout_lines()
    );
    let exhausted = line("EXHAUSTED", &client).unwrap();
    let exhausted_ns: u64 = exhausted[3].parse().unwrap();
    client.wait(10);
    let r = report_of(report, &pair);
    drop(serve.stop());

    let actual_s = exhausted_ns.saturating_sub(started_ns) as f64 / 1e9;
    let predicted_s = predicted_ns as f64 / 1e9 - started_ns as f64 / 1e9;
    let error = (predicted_s - actual_s).abs() / actual_s;
    eprintln!(
        "exhaustion: forecast made {:.1} s in said {predicted_s:.2} s, connect() failed at {actual_s:.2} s ({} connections): error {:.1}%",
        asked_ns.saturating_sub(started_ns) as f64 / 1e9,
        exhausted[2],
        error * 100.0
    );
    assert!(
        actual_s > 10.0,
        "ports ran out after {actual_s:.1} s: the workload was not steady"
    );
    assert!(
        error <= 0.10,
        "the forecast said {predicted_s:.2} s, connect() failed at {actual_s:.2} s"
    );

    // The report names the moment: the first connect() without a port, to the same ms.
    let named = r["time_wait"]["ports_exhausted"]
        .as_array()
        .and_then(|a| a.iter().find(|p| p["destination"] == addr.as_str()))
        .unwrap_or_else(|| panic!("no ports_exhausted row for {addr}: {:#}", r["time_wait"]));
    let first_ns = named["first_ns"].as_u64().unwrap();
    assert!(
        first_ns <= exhausted_ns && exhausted_ns - first_ns < 100_000_000,
        "the report says ports ran out at {first_ns}, tcpdrive saw EADDRNOTAVAIL at {exhausted_ns}"
    );
    assert!(
        r["findings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["text"].as_str().unwrap().contains("EADDRNOTAVAIL")),
        "{:#}",
        r["findings"]
    );
}

/// `tcp_max_tw_buckets` set low: births past it are refused by the kernel, and netwatch does
/// not count them alive. Its own count of refused births equals the kernel's
/// TCPTimeWaitOverflow, and the report says so.
#[test]
fn root_time_wait_overflow_is_counted_as_the_kernel_counts_it() {
    if !require_root("root_time_wait_overflow_is_counted_as_the_kernel_counts_it") {
        return;
    }
    const CAP: u64 = 50;
    const CONNECTIONS: u64 = 200;
    let pair = NetPair::new();
    sysctl(
        &pair,
        Side::Client,
        &format!("net.ipv4.tcp_max_tw_buckets={CAP}"),
    );
    let port = unique_port();
    let addr = format!("{}:{port}", pair.server_v4());
    let ours = format!("( sport = :{port} or dport = :{port} )");
    let tracer = Tracer::start(&["report", "--json", &ours]);
    let before = pair.nstat(Side::Client);
    let _server = ReadyChild::spawn(pair.exec(
        Side::Server,
        &tcpdrive(),
        &["serve", &addr, "--count", &CONNECTIONS.to_string()],
    ));
    let client = pair
        .exec(
            Side::Client,
            &tcpdrive(),
            &["connect", &addr, "--count", &CONNECTIONS.to_string()],
        )
        .output()
        .expect("tcpdrive connect");
    assert!(client.status.success(), "{client:?}");
    let r = report_of(tracer, &pair);
    let kernel = counter_delta(&before, &pair.nstat(Side::Client));
    let overflows = kernel["TcpExtTCPTimeWaitOverflow"];
    let ss = ss_time_waits(&pair, Side::Client, port);
    let tw = &r["time_wait"];
    let dest = tw["by_destination"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["destination"] == addr.as_str())
        .unwrap_or_else(|| panic!("{addr} missing: {tw:#}"));
    eprintln!(
        "overflow: kernel refused {overflows}, netwatch {}; alive: ss {ss}, netwatch {}",
        tw["counts"]["overflowed"], dest["population"]
    );
    assert_eq!(overflows, CONNECTIONS - CAP, "{kernel:?}");
    assert_eq!(ss, CAP);
    assert_eq!(dest["population"].as_u64(), Some(CAP), "{dest:#}");
    assert_eq!(dest["births"].as_u64(), Some(CONNECTIONS), "{dest:#}");
    assert_eq!(
        tw["counts"]["overflowed"].as_u64(),
        Some(overflows),
        "{tw:#}"
    );
    let client_ns = pair.netns_inode(Side::Client);
    assert!(
        tw["kernel_overflows"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k["netns"].as_u64() == Some(client_ns) && k["overflows"] == overflows),
        "{tw:#}"
    );
    assert!(
        r["findings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["text"].as_str().unwrap().contains("tcp_max_tw_buckets")),
        "{:#}",
        r["findings"]
    );
}
