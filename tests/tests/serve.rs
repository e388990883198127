//! `netwatch serve`, as root: the metrics a real Prometheus server scrapes from it equal what a
//! known workload did (checked against the kernel's own per-namespace counters), and bad or
//! many HTTP requests get proper answers without costing the event stream anything.
//!
//! Prometheus is Debian's `prometheus` package (installed by `cargo xtask setup`), started on
//! loopback by the test with a 1 s scrape interval, a private config and a private TSDB
//! directory, both removed afterwards. HTTP is spoken with raw `std::net::TcpStream`s.

use std::{
    collections::HashMap,
    fs,
    net::{Ipv4Addr, SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc, Barrier,
        atomic::{AtomicU16, Ordering},
    },
    time::{Duration, Instant},
};

use crate::support::{
    Events, Kept, Tracer, certs::certificates, eventually, get, http, leaked_connections,
    orderly_connections, refused_connects, step, stop_after_quiet, tcpdrive, timed_out_connects,
};
use netwatch_tests::{
    NetPair, ReadyChild, Side, counter_delta, require_root, unique_port, wait_with_timeout,
};
use serde_json::Value;

/// Where Debian's package puts the server.
const PROMETHEUS: &str = "/usr/bin/prometheus";

/// Percent-encodes a query parameter.
fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Polls `f` every 200 ms until it returns `Some`, at most `bound`.
pub(crate) fn poll<T>(bound: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + bound;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A Prometheus server on loopback with a private config and TSDB; killed and its directory
/// removed on drop.
pub(crate) struct Prometheus {
    child: Child,
    dir: PathBuf,
    addr: SocketAddr,
}

impl Prometheus {
    /// Starts it scraping `target` every second and waits (bounded) until it is ready.
    pub(crate) fn start(target: SocketAddr) -> Prometheus {
        Self::start_job(target, "")
    }

    /// [`Prometheus::start`], with more settings for the scrape job (`job` is YAML at the
    /// job's indentation: scheme, tls_config, basic_auth).
    fn start_job(target: SocketAddr, job: &str) -> Prometheus {
        assert!(
            Path::new(PROMETHEUS).is_file(),
            "{PROMETHEUS} is missing: `cargo xtask setup` installs Debian's prometheus package"
        );
        let dir = std::env::temp_dir().join(format!(
            "netwatch-prometheus-{}-{}",
            std::process::id(),
            unique_port()
        ));
        fs::create_dir_all(&dir).expect("prometheus dir");
        let config = dir.join("prometheus.yml");
        fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: netwatch\n{job}    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .expect("prometheus.yml");
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, unique_port()));
        let log = fs::File::create(dir.join("log")).expect("prometheus log");
        let child = Command::new(PROMETHEUS)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {PROMETHEUS}: {e}"));
        let mut p = Prometheus { child, dir, addr };
        let ready = poll(Duration::from_secs(60), || {
            if let Ok(Some(status)) = p.child.try_wait() {
                panic!("prometheus exited ({status}):\n{}", p.log());
            }
            let request =
                format!("GET /-/ready HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
            http(addr, request.as_bytes(), Duration::from_secs(2))
                .ok()
                .filter(|r| r.status == 200)
        });
        assert!(
            ready.is_some(),
            "prometheus not ready in 60 s:\n{}",
            p.log()
        );
        p
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }

    /// `GET /api/v1/...`, as JSON; panics unless Prometheus says `success`.
    fn api(&self, path_and_query: &str) -> Value {
        let r = get(self.addr, &format!("/api/v1/{path_and_query}"));
        let v: Value = serde_json::from_str(&r.body)
            .unwrap_or_else(|e| panic!("{path_and_query}: not JSON ({e}): {}", r.body));
        assert_eq!(v["status"], "success", "{path_and_query}: {v}");
        v
    }

    /// An instant PromQL query: each series' labels and value.
    pub(crate) fn query(&self, expr: &str) -> Vec<(HashMap<String, String>, f64)> {
        let v = self.api(&format!("query?query={}", urlencode(expr)));
        v["data"]["result"]
            .as_array()
            .unwrap_or_else(|| panic!("{expr}: {v}"))
            .iter()
            .map(|s| {
                let labels = s["metric"]
                    .as_object()
                    .unwrap()
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                    .collect();
                let value = s["value"][1].as_str().unwrap().parse().unwrap();
                (labels, value)
            })
            .collect()
    }

    /// A query that yields at most one series: its value, 0 when there is none.
    fn value(&self, expr: &str) -> f64 {
        let r = self.query(expr);
        assert!(r.len() <= 1, "{expr} gave several series: {r:?}");
        r.first().map_or(0.0, |(_, v)| *v)
    }

    /// [`Prometheus::value`] of `expr`, polled (every 200 ms, at most 30 s) until it is
    /// `expected`; returns the last value, for the caller to assert. Why: what Prometheus has
    /// lags netwatch by a scrape or two, and netwatch lags the kernel.
    pub(crate) fn wait_value(&self, expr: &str, expected: f64) -> f64 {
        let mut last = self.value(expr);
        poll(Duration::from_secs(30), || {
            last = self.value(expr);
            (last == expected).then_some(())
        });
        last
    }

    /// Whether the target is up, with the error Prometheus reports when it is not.
    fn target_health(&self) -> (String, String) {
        let v = self.api("targets?state=active");
        let t = &v["data"]["activeTargets"][0];
        (
            t["health"].as_str().unwrap_or("none").to_string(),
            t["lastError"].as_str().unwrap_or_default().to_string(),
        )
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = wait_with_timeout(&mut self.child, 10);
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Server ports for this test's workloads: above both the ephemeral range (32768-60999) and
/// the ports other test binaries take ([`unique_port`], below 60000), distinct per process.
pub(crate) fn server_ports<const K: usize>() -> [u16; K] {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let base = 61_000 + (std::process::id() % 400) as u16 * 10;
    [(); K].map(|_| base + NEXT.fetch_add(1, Ordering::Relaxed) % 10)
}

/// The filter that keeps exactly the sockets of this workload: an address of `pair`'s
/// namespaces (other test processes may use the same /24 in their own namespaces) and one of
/// `ports` on the server side, local or remote. Neither Prometheus's scrapes nor anything else
/// on the machine counts; the port bounds are decided in the kernel.
pub(crate) fn workload_filter(pair: &NetPair, ports: &[u16]) -> Vec<String> {
    let [a, b, c, _] = pair.client_v4().octets();
    let (lo, hi) = (ports.iter().min().unwrap(), ports.iter().max().unwrap());
    format!(
        "src {a}.{b}.{c}.0/24 and ( sport >= :{lo} and sport <= :{hi} or dport >= :{lo} and dport <= :{hi} )"
    )
    .split(' ')
    .map(str::to_string)
    .collect()
}

/// `netwatch serve` on a fresh loopback port with the web config file `config`.
fn serve_with_web_config(config: &Path) -> (Tracer, SocketAddr) {
    let nw = SocketAddr::from((Ipv4Addr::LOCALHOST, unique_port()));
    let listen = nw.to_string();
    let serve = Tracer::start(&[
        "serve",
        "--web.listen-address",
        &listen,
        "--web.config.file",
        config.to_str().unwrap(),
    ]);
    (serve, nw)
}

/// `netwatch <args> <filter>`.
pub(crate) fn with_filter<'a>(args: &[&'a str], filter: &'a [String]) -> Vec<&'a str> {
    args.iter()
        .copied()
        .chain(filter.iter().map(String::as_str))
        .collect()
}

const N: u64 = 12;
const M: u64 = 3;
const K: u64 = 2;
const L: u64 = 4;

#[test]
fn root_serve_metrics_match_a_known_workload_through_prometheus() {
    if !require_root("root_serve_metrics_match_a_known_workload_through_prometheus") {
        return;
    }
    let pair = NetPair::new();
    let server = pair.server_v4();
    let at = |p: u16| format!("{server}:{p}");
    let nw = SocketAddr::from((Ipv4Addr::LOCALHOST, unique_port()));
    let ports = server_ports::<4>();
    let [p_ok, p_refused, p_drop, p_leak] = ports;
    let filter = workload_filter(&pair, &ports);
    let listen = nw.to_string();
    let tracer = Tracer::start(&with_filter(
        &["serve", "--listen", &listen, "--peer-labels"],
        &filter,
    ));
    // The same events, printed: each connect's latency (its SYN_SENT dwell) is the reference
    // for the latency histogram.
    let trace = Tracer::start(&with_filter(&["trace", "--json"], &filter));
    let health = get(nw, "/healthz");
    assert_eq!((health.status, health.body.as_str()), (200, "ok\n"));

    let t0 = Instant::now();
    let prom = Prometheus::start(nw);
    eprintln!("prometheus ready after {:?}", t0.elapsed());
    let up = poll(Duration::from_secs(30), || {
        let (health, _) = prom.target_health();
        (health == "up").then_some(())
    });
    assert!(
        up.is_some(),
        "the netwatch target is not up in Prometheus after 30 s: {:?}\n{}",
        prom.target_health(),
        prom.log()
    );
    eprintln!("target up after {:?}", t0.elapsed());
    // Counters before the workload (nothing has happened in the pair yet: all absent or 0).
    let before = |expr: &str| prom.value(expr);
    let q_established = r#"sum(netwatch_connects_total{outcome="established"})"#;
    let q_births = "sum(netwatch_time_wait_births_total)";
    let b_established = before(q_established);
    let b_births = before(q_births);
    let before_c = pair.nstat(Side::Client);
    let before_s = pair.nstat(Side::Server);

    // N orderly connections, the client closing first.
    orderly_connections(&pair, &at(p_ok), N);
    // M refused connects.
    refused_connects(&pair, &at(p_refused), M);
    // K connects given up after 1.5 s while the server drops every SYN (one retransmission).
    timed_out_connects(&pair, &at(p_drop), p_drop, K);
    // L accepted sockets the server leaks in CLOSE_WAIT.
    let (leak, _) = leaked_connections(&pair, &at(p_leak), L);
    let dc = counter_delta(&before_c, &pair.nstat(Side::Client));
    let ds = counter_delta(&before_s, &pair.nstat(Side::Server));
    eprintln!("workload done after {:?}", t0.elapsed());

    // Timewait sockets: in TIME_WAIT, and orphans in FIN_WAIT2 (the leak's clients closed
    // while the server never did; its delayed ACK of their FIN may take 200 ms, so wait for
    // the kernel, bounded); both hold their port for 60 s.
    let mut ss_time_wait = String::new();
    let in_time_wait = |ss: &str| ss.lines().filter(|l| !l.trim().is_empty()).count() as u64;
    eventually(Duration::from_secs(10), || {
        ss_time_wait = pair.run(
            Side::Client,
            &["ss", "-Htan", "state", "time-wait", "state", "fin-wait-2"],
        );
        in_time_wait(&ss_time_wait) == N + L
    });
    // What Prometheus has lags the workload (netwatch reads events every 50 ms and refreshes
    // its gauges every second, Prometheus scrapes every second): each query is polled until
    // it gives the expected value (bounded), and what it gave last is asserted.
    let v = |expr: &str, expected: f64| prom.wait_value(expr, expected);
    let server_ip = server.to_string();

    // Connects by outcome. The leak's L connects were established too.
    assert_eq!(
        v(q_established, b_established + (N + L) as f64) - b_established,
        (N + L) as f64
    );
    let by_comm_and_peer = format!(
        r#"sum(netwatch_connects_total{{outcome="established",comm="tcpdrive",peer="{server_ip}"}})"#
    );
    assert_eq!(
        v(&by_comm_and_peer, (N + L) as f64),
        (N + L) as f64,
        "by comm and peer: {:?}",
        prom.query("netwatch_connects_total")
    );
    assert_eq!(
        v(
            r#"sum(netwatch_connects_total{outcome="refused"})"#,
            M as f64
        ),
        M as f64
    );
    assert_eq!(
        v(
            r#"sum(netwatch_connects_total{outcome="timeout"})"#,
            K as f64
        ),
        K as f64
    );
    assert_eq!(
        v(r#"sum(netwatch_connects_total{outcome="aborted"})"#, 0.0),
        0.0
    );
    // Every connect the kernel counted went through CLOSE -> SYN_SENT.
    assert_eq!(dc["TcpActiveOpens"], N + M + K + L);
    let active_opens = dc["TcpActiveOpens"] as f64;
    assert_eq!(
        v(
            r#"sum(netwatch_transitions_total{from="CLOSE",to="SYN_SENT"})"#,
            active_opens
        ),
        active_opens
    );
    let passive_opens = ds["TcpPassiveOpens"] as f64;
    assert_eq!(
        v(
            r#"sum(netwatch_transitions_total{from="LISTEN",to="SYN_RECV"})"#,
            passive_opens
        ),
        passive_opens
    );

    // TIME_WAIT births: the client closed first N times, and the leak's L clients closed
    // first too (their sockets became timewait sockets in FIN_WAIT2): what `ss` listed.
    let ss_count = in_time_wait(&ss_time_wait);
    assert_eq!(
        ss_count,
        N + L,
        "{ss_time_wait}\n{}",
        pair.run(Side::Client, &["ss", "-tane"])
    );
    assert_eq!(
        v(q_births, b_births + (N + L) as f64) - b_births,
        (N + L) as f64
    );
    assert_eq!(
        v(
            r#"sum(netwatch_time_wait_births_total{comm="tcpdrive"})"#,
            (N + L) as f64
        ),
        (N + L) as f64
    );
    assert_eq!(
        v(
            r#"sum(netwatch_time_wait_sockets{comm="tcpdrive"})"#,
            ss_count as f64
        ),
        ss_count as f64
    );

    // Resets: received in SYN_SENT by the client (TcpAttemptFails), sent by the server
    // (TcpOutRsts), one per refused connect.
    assert_eq!(dc["TcpAttemptFails"], M);
    let attempt_fails = dc["TcpAttemptFails"] as f64;
    assert_eq!(
        v(
            r#"sum(netwatch_resets_total{direction="received",state="SYN_SENT"})"#,
            attempt_fails
        ),
        attempt_fails
    );
    let out_rsts = (dc["TcpOutRsts"] + ds["TcpOutRsts"]) as f64;
    assert_eq!(
        v(r#"sum(netwatch_resets_total{direction="sent"})"#, out_rsts),
        out_rsts
    );
    assert_eq!(ds["TcpOutRsts"], M);
    // Retransmissions: one SYN per timed-out connect.
    let retrans_segs = (dc["TcpRetransSegs"] + ds["TcpRetransSegs"]) as f64;
    assert_eq!(
        v("sum(netwatch_retransmits_total)", retrans_segs),
        retrans_segs
    );
    assert_eq!(dc["TcpRetransSegs"], K);

    // The leaking server's sockets, now.
    assert_eq!(
        v(
            r#"sum(netwatch_close_wait_sockets{comm="tcpdrive"})"#,
            L as f64
        ),
        L as f64,
        "{:?}",
        prom.query("netwatch_close_wait_sockets")
    );
    assert_eq!(
        pair.run(Side::Server, &["ss", "-Htan", "state", "close-wait"])
            .lines()
            .count() as u64,
        L
    );

    // Histograms: every established connect has a latency; every finished connection seen
    // from its start a lifetime (both sides of the N, the client side of the rest); the
    // server side of the N went through CLOSE_WAIT.
    assert_eq!(
        v(
            "sum(netwatch_connect_latency_seconds_count)",
            (N + L) as f64
        ),
        (N + L) as f64
    );
    assert_eq!(
        v(
            "sum(netwatch_connection_lifetime_seconds_count)",
            (2 * N + M + K + L) as f64
        ),
        (2 * N + M + K + L) as f64
    );
    assert_eq!(
        v("sum(netwatch_close_wait_dwell_seconds_count)", N as f64),
        N as f64
    );
    // The latency histogram is complete (its count is). Each bucket holds the connects whose
    // SYN_SENT dwell, as trace printed it, is at most its bound, and the median Prometheus
    // computes lies in the bucket of the median connect. Within SLACK: trace is another
    // netwatch, whose programs stamp each transition themselves, before or after serve's
    // (a program's run, with a stack capture at connect, or an interrupt comes between the
    // two stamps: a few µs, seen 2 µs, rarely more); a connect that close to a bound may fall
    // on either side of it.
    const SLACK: f64 = 50e-6;
    let traced = stop_after_quiet(
        trace,
        &pair,
        Events::Stdout,
        // The leaking server's listener and its L sockets.
        Kept {
            states: &["CLOSE-WAIT", "FIN-WAIT-2"],
            sockets: 1 + L as usize,
        },
    );
    let mut latencies: Vec<f64> = traced
        .events
        .iter()
        .filter(|e| step(e) == "SYN_SENT->ESTABLISHED")
        .map(|e| e["ms_in_old"].as_f64().expect("a connect's dwell") / 1000.0)
        .collect();
    latencies.sort_by(f64::total_cmp);
    assert_eq!(latencies.len() as u64, N + L, "{}", traced.stdout);
    let mut buckets: Vec<(f64, f64)> = prom
        .query("sum by (le) (netwatch_connect_latency_seconds_bucket)")
        .into_iter()
        .map(|(labels, count)| (labels["le"].parse::<f64>().expect("le"), count))
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    assert!(buckets.len() > 2, "{buckets:?}");
    for &(le, count) in &buckets {
        let at_most = |d: f64| latencies.iter().filter(|&&l| l + d <= le).count() as f64;
        assert!(
            (at_most(SLACK)..=at_most(-SLACK)).contains(&count),
            "bucket le={le} holds {count}: latencies {latencies:?}"
        );
    }
    let p50 = prom
        .value("histogram_quantile(0.5, sum by (le) (netwatch_connect_latency_seconds_bucket))");
    let rank = latencies.len().div_ceil(2);
    let median = latencies[rank - 1];
    let hi = buckets
        .iter()
        .map(|b| b.0)
        .find(|&le| median + SLACK <= le)
        .unwrap();
    let lo = buckets
        .iter()
        .map(|b| b.0)
        .rfind(|&le| le < median - SLACK)
        .unwrap_or(0.0);
    assert!(
        (lo..=hi).contains(&p50),
        "median connect latency {p50} s, outside ({lo}, {hi}], the buckets of the median \
         connect ({median} s, ± {SLACK} s) of {latencies:?}"
    );
    assert_eq!(v("sum(netwatch_events_lost_total)", 0.0), 0.0);

    drop(prom);
    let done = tracer.stop();
    assert_eq!(done.lost, 0, "{}", done.stderr);
    assert_eq!(traced.lost, 0, "{}", traced.stderr);
    drop(leak);
}

/// One scrape's outcome: status (or the error) and how long it took.
type Scrape = (Result<u16, String>, Duration);

/// `n` scrapes of `/metrics` at once, each from its own thread.
fn parallel_scrapes(nw: SocketAddr, n: usize) -> Vec<Scrape> {
    let barrier = Arc::new(Barrier::new(n));
    let threads: Vec<_> = (0..n)
        .map(|_| {
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                barrier.wait();
                let t = Instant::now();
                let r = http(
                    nw,
                    format!("GET /metrics HTTP/1.1\r\nHost: {nw}\r\n\r\n").as_bytes(),
                    Duration::from_secs(10),
                )
                .map(|r| r.status);
                (r, t.elapsed())
            })
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).collect()
}

/// The sum of every sample of `name` in an OpenMetrics text.
fn sum_of(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum()
}

#[test]
fn root_serve_rejects_bad_requests_without_slowing_tracing() {
    if !require_root("root_serve_rejects_bad_requests_without_slowing_tracing") {
        return;
    }
    const CHURN: u64 = 2000;
    let pair = NetPair::new();
    let server = pair.server_v4();
    let [p] = server_ports::<1>();
    let nw = SocketAddr::from((Ipv4Addr::LOCALHOST, unique_port()));
    let filter = workload_filter(&pair, &[p]);
    let listen = nw.to_string();
    let serve = Tracer::start_with(
        &with_filter(&["serve", "--listen", &listen], &filter),
        |c| {
            c.env("RUST_LOG", "netwatch=debug");
        },
    );
    // The same events, printed: the reference count. The filter is decided in user space, so
    // the ring also carries the scrapes' own connections and whatever else the host does; a
    // ring that holds the whole run keeps the reference whole when a busy host starves its
    // reader (serve's own ring stays the default: its losses are what is tested).
    let trace = Tracer::start(&with_filter(
        &["trace", "--json", "--ring-size", "67108864"],
        &filter,
    ));

    // Bad requests get proper errors.
    let r = get(nw, "/nope");
    assert_eq!(r.status, 404, "{r:?}");
    let r = http(
        nw,
        b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
        Duration::from_secs(10),
    )
    .unwrap();
    assert_eq!(r.status, 405, "{r:?}");
    assert!(r.head.contains("\r\nAllow: GET"), "{r:?}");
    let big = format!(
        "GET /metrics HTTP/1.1\r\nHost: x\r\n{}\r\n",
        (0..10)
            .map(|i| format!("X-Filler-{i}: {}\r\n", "f".repeat(1000)))
            .collect::<String>()
    );
    assert!(big.len() > 9 * 1024);
    let r = http(nw, big.as_bytes(), Duration::from_secs(10)).unwrap();
    assert_eq!(r.status, 431, "{r:?}");
    let r = http(
        nw,
        b"GET /metrics HTTP/1.1\r\n\r\n",
        Duration::from_secs(10),
    )
    .unwrap();
    assert_eq!(r.status, 200);
    assert!(
        r.head
            .contains("Content-Type: application/openmetrics-text; version=1.0.0; charset=utf-8"),
        "{r:?}"
    );
    assert!(r.body.ends_with("# EOF\n"));
    // A client that never finishes its request is answered after the 5 s read timeout.
    let t = Instant::now();
    let r = http(nw, b"GET /metrics HTTP/1.1\r\n", Duration::from_secs(10)).unwrap();
    assert_eq!(r.status, 408, "{r:?}");
    assert!(
        (Duration::from_millis(4500)..Duration::from_secs(8)).contains(&t.elapsed()),
        "{:?}",
        t.elapsed()
    );

    // At the cap: 16 clients that send nothing hold every slot, so the next request is
    // turned away at once with a 503 (polled: the server takes a slot when it accepts).
    let silent: Vec<TcpStream> = (0..16)
        .map(|_| TcpStream::connect(nw).expect("connect"))
        .collect();
    let turned_away = poll(Duration::from_secs(5), || {
        let t = Instant::now();
        let request = format!("GET /metrics HTTP/1.1\r\nHost: {nw}\r\n\r\n");
        let r = http(nw, request.as_bytes(), Duration::from_secs(10)).ok()?;
        (r.status == 503).then(|| (r, t.elapsed()))
    });
    let (r, took) = turned_away.expect("no 503 with every slot held");
    assert!(r.head.contains("\r\nRetry-After: 1"), "{r:?}");
    assert!(took < Duration::from_secs(1), "the 503 took {took:?}");
    // Once they leave, requests are served again.
    drop(silent);
    let served = poll(Duration::from_secs(10), || {
        (get(nw, "/metrics").status == 200).then_some(())
    });
    assert!(served.is_some(), "no 200 after the silent clients left");

    // Churn in the pair while rounds of 50 parallel scrapes hit the endpoint.
    let before_c = pair.nstat(Side::Client);
    let before_s = pair.nstat(Side::Server);
    let mut srv = ReadyChild::spawn(pair.exec(
        Side::Server,
        &tcpdrive(),
        &["serve-forever", &format!("{server}:{p}")],
    ));
    let mut churn = ReadyChild::spawn_background(pair.exec(
        Side::Client,
        &tcpdrive(),
        &[
            "churn",
            &format!("{server}:{p}"),
            "--count",
            &CHURN.to_string(),
            "--parallel",
            "4",
        ],
    ));
    let mut scrapes: Vec<Scrape> = Vec::new();
    let mut rounds = 0;
    while rounds == 0 || matches!(churn.child_mut().try_wait(), Ok(None)) {
        scrapes.extend(parallel_scrapes(nw, 50));
        rounds += 1;
        assert!(rounds < 200, "churn did not finish");
    }
    assert!(churn.wait(60).success(), "{:?}", churn.stdout_lines());
    let lines = churn.stdout_lines();
    let done = lines
        .iter()
        .find(|l| l.starts_with("DONE "))
        .expect("DONE line");
    let fields: Vec<&str> = done.split(' ').collect();
    assert_eq!(fields[2..4], [CHURN.to_string(), "0".to_string()], "{done}");
    let bad: Vec<_> = scrapes
        .iter()
        .filter(|(r, took)| !matches!(r, Ok(200 | 503)) || *took >= Duration::from_secs(5))
        .collect();
    assert!(
        bad.is_empty(),
        "{} bad scrapes: {bad:?}\n{}",
        bad.len(),
        serve.stop().stderr
    );
    let ok = scrapes.iter().filter(|(r, _)| *r == Ok(200)).count();
    assert!(ok >= 16, "{ok} of {} scrapes succeeded", scrapes.len());
    eprintln!(
        "{rounds} rounds of 50 scrapes: {ok} answered 200, {} turned away with 503",
        scrapes.len() - ok
    );

    // The listener closes too. The trace stops once the kernel is done with the pair and it
    // has every event of it: the transitions it printed are the count serve must reach
    // (polled, bounded: serve reads the same events on its own schedule).
    srv.kill();
    let traced = stop_after_quiet(trace, &pair, Events::Stdout, Kept::NOTHING);
    let traced_transitions = traced
        .events
        .iter()
        .filter(|e| e["kind"] == "state")
        .count();
    let mut settled = -1.0;
    poll(Duration::from_secs(10), || {
        settled = sum_of(&get(nw, "/metrics").body, "netwatch_transitions_total");
        (settled == traced_transitions as f64).then_some(())
    });
    let dc = counter_delta(&before_c, &pair.nstat(Side::Client));
    let ds = counter_delta(&before_s, &pair.nstat(Side::Server));
    let metrics = get(nw, "/metrics").body;
    let served = serve.stop();
    assert_eq!(served.lost, 0, "{}", served.stderr);
    assert_eq!(traced.lost, 0, "{}", traced.stderr);
    assert_eq!(
        settled, traced_transitions as f64,
        "transitions counted by serve vs. printed by trace"
    );
    let transition = |from: &str, to: &str| {
        sum_of(
            &metrics,
            &format!(r#"netwatch_transitions_total{{from="{from}",to="{to}"}}"#),
        )
    };
    let traced_step = |s: &str| traced.events.iter().filter(|e| step(e) == s).count() as f64;
    assert_eq!(dc["TcpActiveOpens"], CHURN);
    assert_eq!(transition("CLOSE", "SYN_SENT"), CHURN as f64);
    assert_eq!(
        transition("LISTEN", "SYN_RECV"),
        ds["TcpPassiveOpens"] as f64
    );
    assert_eq!(
        transition("SYN_SENT", "ESTABLISHED"),
        traced_step("SYN_SENT->ESTABLISHED")
    );
    assert_eq!(sum_of(&metrics, "netwatch_events_lost_total"), 0.0);
}

/// `curl` with `args`: (HTTP status, or 0 when no HTTP answer came; curl's exit code).
fn curl(args: &[&str]) -> (u16, i32) {
    let out = Command::new("curl")
        .args([
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "10",
        ])
        .args(args)
        .output()
        .expect("curl (installed by `cargo xtask setup`)");
    let code = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0);
    (code, out.status.code().unwrap_or(-1))
}

/// CapEff and CapPrm of every thread of `pid`.
fn thread_caps(pid: i32) -> Vec<(u64, u64)> {
    let mut caps = Vec::new();
    for task in fs::read_dir(format!("/proc/{pid}/task")).unwrap().flatten() {
        let Ok(status) = fs::read_to_string(task.path().join("status")) else {
            continue;
        };
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|h| u64::from_str_radix(h.trim(), 16).ok())
                .unwrap()
        };
        caps.push((field("CapEff:"), field("CapPrm:")));
    }
    caps
}

/// Waits (at most 10 s) until every thread of `pid` holds exactly `want`; returns what they
/// hold.
fn caps_settle(pid: i32, want: u64) -> Vec<(u64, u64)> {
    let mut seen = Vec::new();
    poll(Duration::from_secs(10), || {
        seen = thread_caps(pid);
        seen.iter().all(|&c| c == (want, want)).then_some(())
    });
    seen
}

const CAP_SYS_PTRACE: u64 = 1 << 19;
const CAP_SYS_ADMIN: u64 = 1 << 21;

#[test]
fn root_serve_over_tls_with_basic_auth_and_least_privilege() {
    if !require_root("root_serve_over_tls_with_basic_auth_and_least_privilege") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("netwatch-serve-tls-{}", std::process::id()));
    let (ca, cert, key) = certificates(&dir);
    let hash = bcrypt::hash("s3cret", 6).unwrap();
    let config = dir.join("web-config.yml");
    fs::write(
        &config,
        format!(
            "tls_server_config:\n  cert_file: {}\n  key_file: {}\nbasic_auth_users:\n  prometheus: '{hash}'\n",
            cert.display(),
            key.display()
        ),
    )
    .unwrap();
    let (serve, nw) = serve_with_web_config(&config);

    // Once attached, serve holds CAP_SYS_PTRACE and CAP_SYS_ADMIN (TIME_WAIT reconciliation
    // in every namespace), and nothing else, on every thread.
    let want = CAP_SYS_PTRACE | CAP_SYS_ADMIN;
    let caps = caps_settle(serve.pid(), want);
    assert!(
        caps.iter().all(|&c| c == (want, want)),
        "{caps:x?}\n{}",
        serve.stderr_lines().join("\n")
    );

    let url = format!("https://{nw}/metrics");
    let ca = ca.to_str().unwrap();
    // A client that checks the certificate against the CA scrapes with the right password.
    assert_eq!(
        curl(&["--cacert", ca, "-u", "prometheus:s3cret", &url]),
        (200, 0)
    );
    let body = Command::new("curl")
        .args(["-sS", "--cacert", ca, "-u", "prometheus:s3cret", &url])
        .output()
        .unwrap();
    let body = String::from_utf8_lossy(&body.stdout).into_owned();
    assert!(body.contains("netwatch_build_info{"), "{body}");
    assert!(body.ends_with("# EOF\n"), "{body}");
    // A wrong password, or none: 401.
    assert_eq!(
        curl(&["--cacert", ca, "-u", "prometheus:wrong", &url]).0,
        401
    );
    assert_eq!(curl(&["--cacert", ca, &url]).0, 401);
    // /healthz answers without a password.
    assert_eq!(
        curl(&["--cacert", ca, &format!("https://{nw}/healthz")]).0,
        200
    );
    // Without the CA the certificate is refused; plain HTTP to the TLS port gets no answer.
    assert_eq!(curl(&["-u", "prometheus:s3cret", &url]).0, 0);
    let (code, exit) = curl(&["-u", "prometheus:s3cret", &format!("http://{nw}/metrics")]);
    assert!(
        code == 0 && exit != 0,
        "plain HTTP answered {code} (curl exit {exit})"
    );

    // A real Prometheus, configured as deploy/prometheus.yml is, scrapes it; with a wrong
    // password its target is down with a 401.
    let job = |password: &str| {
        fs::write(dir.join("password"), password).unwrap();
        format!(
            "    scheme: https\n    tls_config:\n      ca_file: {ca}\n    basic_auth:\n      username: prometheus\n      password_file: {}\n",
            dir.join("password").display()
        )
    };
    let prom = Prometheus::start_job(nw, &job("s3cret"));
    let up = prom.wait_value(r#"up{job="netwatch"}"#, 1.0);
    assert_eq!(up, 1.0, "{:?}\n{}", prom.target_health(), prom.log());
    assert_eq!(prom.wait_value("count(netwatch_build_info)", 1.0), 1.0);
    drop(prom);
    let prom = Prometheus::start_job(nw, &job("wrong"));
    let mut health = prom.target_health();
    poll(Duration::from_secs(30), || {
        health = prom.target_health();
        (health.0 == "down").then_some(())
    });
    assert_eq!(health.0, "down", "{health:?}");
    assert!(health.1.contains("401"), "{health:?}");
    drop(prom);
    drop(serve);

    // trace keeps nothing at all.
    let trace = Tracer::start(&["trace", "--json"]);
    let caps = caps_settle(trace.pid(), 0);
    assert!(caps.iter().all(|&c| c == (0, 0)), "{caps:x?}");
    drop(trace);
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn root_serve_rereads_its_web_config_and_verifies_client_certificates() {
    if !require_root("root_serve_rereads_its_web_config_and_verifies_client_certificates") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("netwatch-serve-mtls-{}", std::process::id()));
    let (ca, cert, key) = certificates(&dir);
    // Another CA, and a client certificate it signed.
    let other = dir.join("other");
    certificates(&other);
    let config = dir.join("web-config.yml");
    let write = |password: &str| {
        let hash = bcrypt::hash(password, 4).unwrap();
        fs::write(
            &config,
            format!(
                "tls_server_config:\n  cert_file: {}\n  key_file: {}\n  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: {}\nbasic_auth_users:\n  prometheus: '{hash}'\n",
                cert.display(),
                key.display(),
                ca.display()
            ),
        )
        .unwrap();
    };
    write("first");
    let (serve, nw) = serve_with_web_config(&config);
    let url = format!("https://{nw}/metrics");
    let ca = ca.to_str().unwrap();
    let with_cert_of = |dir: &Path, password: &str| {
        let (cert, key) = (dir.join("client.pem"), dir.join("client.key"));
        let user = format!("prometheus:{password}");
        let args = [
            "--cacert",
            ca,
            "--cert",
            cert.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
            "-u",
            &user,
            &url,
        ];
        curl(&args)
    };

    // A certificate the configured CA signed is served; none, or another CA's, is refused in
    // the handshake (no HTTP answer).
    assert_eq!(
        with_cert_of(&dir, "first"),
        (200, 0),
        "{}",
        serve.stderr_lines().join("\n")
    );
    assert_eq!(curl(&["--cacert", ca, "-u", "prometheus:first", &url]).0, 0);
    assert_eq!(with_cert_of(&other, "first").0, 0);

    // A password changed in the file applies to the next request, without a restart.
    write("second");
    assert_eq!(with_cert_of(&dir, "first").0, 401);
    assert_eq!(with_cert_of(&dir, "second"), (200, 0));
    drop(serve);
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn root_serve_takes_its_socket_from_systemd() {
    if !require_root("root_serve_takes_its_socket_from_systemd") {
        return;
    }
    let nw = SocketAddr::from((Ipv4Addr::LOCALHOST, unique_port()));
    // systemd-socket-activate binds the address and execs netwatch with it as fd 3
    // (LISTEN_FDS=1, LISTEN_PID its own pid, which netwatch then has).
    let mut child = Command::new("systemd-socket-activate")
        .args(["-l", &nw.to_string()])
        .arg(netwatch_tests::netwatch_bin())
        .args(["serve", "--web.systemd-socket"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect(
            "systemd-socket-activate (Debian's systemd package, installed by `cargo xtask setup`)",
        );
    let healthy = poll(Duration::from_secs(60), || {
        http(
            nw,
            b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
            Duration::from_secs(5),
        )
        .ok()
        .filter(|r| r.status == 200)
    });
    let metrics = get(nw, "/metrics");
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(healthy.is_some(), "no 200 from /healthz in 60 s:\n{stderr}");
    assert_eq!(metrics.status, 200, "{metrics:?}");
    assert!(metrics.body.ends_with("# EOF\n"), "{metrics:?}");
    assert!(
        stderr.contains(&format!("serving http://{nw}/metrics")),
        "{stderr}"
    );
}

/// The sum of the samples of metric `name` whose labels include every `labels` pair.
fn sum_where(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = None;
    for l in text.lines() {
        let Some(rest) = l.strip_prefix(&format!("{name}{{")) else {
            continue;
        };
        let Some((set, value)) = rest.split_once("} ") else {
            continue;
        };
        if labels
            .iter()
            .all(|(k, v)| set.split(',').any(|p| p == format!("{k}=\"{v}\"")))
        {
            let v: f64 = value.split_whitespace().next().unwrap().parse().unwrap();
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}

/// `ss`'s count of sockets in `state` (`close-wait`, ...) in `side` with local port `port`.
fn ss_state_count(pair: &NetPair, side: Side, state: &str, port: u16) -> usize {
    pair.run(
        side,
        &[
            "ss",
            "-Htan",
            "state",
            state,
            "sport",
            "=",
            &format!(":{port}"),
        ],
    )
    .lines()
    .filter(|l| !l.trim().is_empty())
    .count()
}

/// Client ports of [`root_serve_caps_labels_evicts_and_gauges_fall_to_zero_over_ipv6`].
const CAPS_CLIENT_PORTS: (u16, u16) = (17000, 17999);

/// Bounds and gauges of `serve` (README, "Prometheus and fleets"), over IPv6: with
/// `--max-processes 1` a second (comm, cgroup) pair counts under `comm="other"`; with
/// `--max-sockets 2` holding 12 sockets evicts and counts the evictions; the CLOSE_WAIT gauge
/// follows `ss` up to the leak and back to 0 (kept, at 0) once the leaking server is gone; and
/// `serve --record` writes a recording whose replay has every connection of the workload.
#[test]
fn root_serve_caps_labels_evicts_and_gauges_fall_to_zero_over_ipv6() {
    if !require_root("root_serve_caps_labels_evicts_and_gauges_fall_to_zero_over_ipv6") {
        return;
    }
    const LEAKS: u64 = 3;
    const HELD: u64 = 6;
    let scratch = crate::support::Scratch::new("serve-caps");
    let other = scratch.path("othercli");
    fs::copy(tcpdrive(), &other).expect("copy tcpdrive");
    let recording = scratch.path("serve.nwr");
    let pair = NetPair::new();
    let [p_leak, p_ok, p_hold] = [(); 3].map(|_| unique_port());
    let at = |p: u16| format!("[{}]:{p}", pair.server_v6());
    let own_a = crate::support::own_traffic_only(&pair, CAPS_CLIENT_PORTS, &[p_leak, p_ok], &[]);
    let own_b = crate::support::own_traffic_only(&pair, CAPS_CLIENT_PORTS, &[p_hold], &[]);
    let (nw_a, nw_b) = (
        SocketAddr::from((Ipv4Addr::LOCALHOST, unique_port())),
        SocketAddr::from((Ipv4Addr::LOCALHOST, unique_port())),
    );
    let (a_listen, b_listen) = (nw_a.to_string(), nw_b.to_string());
    let mut a_args = vec![
        "serve",
        "--listen",
        &a_listen,
        "--max-processes",
        "1",
        "--record",
        recording.to_str().unwrap(),
    ];
    a_args.extend(own_a.iter().map(String::as_str));
    let mut b_args = vec!["serve", "--listen", &b_listen, "--max-sockets", "2"];
    b_args.extend(own_b.iter().map(String::as_str));
    let serve_a = Tracer::start(&a_args);
    let serve_b = Tracer::start(&b_args);
    let metrics = |nw: SocketAddr| {
        let r = get(nw, "/metrics");
        assert_eq!(r.status, 200, "{}", r.body);
        r.body
    };

    // tcpdrive's L connections to a server that never closes them: the first pair labelled.
    let (mut leak, _) = leaked_connections(&pair, &at(p_leak), LEAKS);
    let cw = |text: &str| sum_where(text, "netwatch_close_wait_sockets", &[("comm", "tcpdrive")]);
    let mut text = String::new();
    let leaked = poll(Duration::from_secs(10), || {
        text = metrics(nw_a);
        (cw(&text) == Some(LEAKS as f64)).then_some(())
    });
    assert!(leaked.is_some(), "CLOSE_WAIT gauge never {LEAKS}:\n{text}");
    assert_eq!(
        ss_state_count(&pair, Side::Server, "close-wait", p_leak),
        LEAKS as usize
    );
    // A second command name: past --max-processes 1, it counts as "other".
    let mut srv = ReadyChild::spawn(pair.exec(Side::Server, &tcpdrive(), &["serve", &at(p_ok)]));
    let out = netwatch_tests::output_with_timeout(
        pair.exec(Side::Client, &other, &["connect", &at(p_ok)]),
        20,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(srv.wait(20).success());
    let established = |text: &str, comm: &str| {
        sum_where(
            text,
            "netwatch_connects_total",
            &[("outcome", "established"), ("comm", comm)],
        )
    };
    let capped = poll(Duration::from_secs(10), || {
        text = metrics(nw_a);
        (established(&text, "other") == Some(1.0)).then_some(())
    });
    assert!(
        capped.is_some(),
        "othercli's connect not under comm=\"other\":\n{text}"
    );
    assert_eq!(established(&text, "tcpdrive"), Some(LEAKS as f64), "{text}");
    assert_eq!(established(&text, "othercli"), None, "{text}");
    assert_eq!(
        sum_where(&text, "netwatch_connects_total", &[("cgroup", "other")]),
        Some(1.0)
    );
    assert_eq!(sum_of(&text, "netwatch_process_label_sets"), 1.0, "{text}");

    // The leaking server goes: its sockets close, and the gauge falls to 0 and stays, at 0.
    leak.kill();
    let gone = poll(Duration::from_secs(10), || {
        text = metrics(nw_a);
        (cw(&text) == Some(0.0)).then_some(())
    });
    assert!(gone.is_some(), "CLOSE_WAIT gauge not back to 0:\n{text}");
    assert_eq!(ss_state_count(&pair, Side::Server, "close-wait", p_leak), 0);

    // 12 live sockets (6 connected, 6 accepted) against a tracker of 2.
    let hold = ReadyChild::spawn(pair.exec(
        Side::Server,
        &tcpdrive(),
        &["hold-accept", &at(p_hold), "--count", &HELD.to_string()],
    ));
    let holders = ReadyChild::spawn_background(pair.exec(
        Side::Client,
        &tcpdrive(),
        &["hold-connect", &at(p_hold), "--count", &HELD.to_string()],
    ));
    let all_held = eventually(Duration::from_secs(10), || {
        hold.stdout_lines().iter().any(|l| l.starts_with("HELD"))
            && holders.stdout_lines().iter().any(|l| l.starts_with("HELD"))
    });
    assert!(
        all_held,
        "{:?} {:?}",
        hold.stdout_lines(),
        holders.stdout_lines()
    );
    let evicted = poll(Duration::from_secs(10), || {
        text = metrics(nw_b);
        (sum_of(&text, "netwatch_tracker_evictions_total") >= (2 * HELD - 2) as f64).then_some(())
    });
    assert!(
        evicted.is_some(),
        "evictions below {}:\n{text}",
        2 * HELD - 2
    );
    assert!(sum_of(&text, "netwatch_tracker_sockets") <= 2.0, "{text}");
    drop((hold, holders));

    let a = stop_after_quiet(serve_a, &pair, Events::Unseen, Kept::NOTHING);
    let b = stop_after_quiet(serve_b, &pair, Events::Unseen, Kept::NOTHING);
    assert_eq!((a.lost, b.lost), (0, 0), "{}\n{}", a.stderr, b.stderr);

    // The recording replays to every connection of the workload, per process.
    let mut cmd = Command::new(netwatch_tests::netwatch_bin());
    cmd.arg("analyze")
        .arg(&recording)
        .args(["--report", "--json"]);
    let out = netwatch_tests::output_with_timeout(cmd, 60);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).expect("report JSON");
    let connects = report["connects_by_process"]
        .as_array()
        .expect("connects_by_process");
    let by_comm = |comm: &str| -> u64 {
        connects
            .iter()
            .filter(|r| r["key"].as_str().unwrap().starts_with(&format!("{comm}[")))
            .map(|r| r["established"].as_u64().unwrap())
            .sum()
    };
    assert_eq!(
        (by_comm("tcpdrive"), by_comm("othercli")),
        (LEAKS, 1),
        "{connects:#?}"
    );
}

/// Client ports of [`root_serve_record_replays_to_the_scrape_after_the_traffic`].
const REPLAY_CLIENT_PORTS: (u16, u16) = (18000, 18999);

/// An exposition's lines, sorted (a family's series come in hash order, which differs between
/// two processes), without `netwatch_build_info`'s sample: it names the netwatch and kernel
/// that answer, and a replay is another process.
fn exposition_lines(text: &str) -> Vec<&str> {
    let mut lines: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with("netwatch_build_info{"))
        .collect();
    lines.sort_unstable();
    lines
}

/// `serve --record` over orderly connections and a CLOSE_WAIT leak, scraped once the traffic
/// is over and the exposition holds still across a refresh; then `analyze --metrics` prints
/// the same exposition (but `netwatch_build_info`), the leaker still holding its sockets.
#[test]
fn root_serve_record_replays_to_the_scrape_after_the_traffic() {
    if !require_root("root_serve_record_replays_to_the_scrape_after_the_traffic") {
        return;
    }
    const ORDERLY: u64 = 8;
    const LEAKS: u64 = 3;
    let scratch = crate::support::Scratch::new("serve-replay");
    let recording = scratch.path("serve.nwr");
    let pair = NetPair::new();
    let [p_ok, p_leak] = [(); 2].map(|_| unique_port());
    let at = |p: u16| format!("{}:{p}", pair.server_v4());
    let own = crate::support::own_traffic_only(&pair, REPLAY_CLIENT_PORTS, &[p_ok, p_leak], &[]);
    let nw = SocketAddr::from((Ipv4Addr::LOCALHOST, unique_port()));
    let listen = nw.to_string();
    let mut args = vec![
        "serve",
        "--listen",
        &listen,
        "--record",
        recording.to_str().unwrap(),
    ];
    args.extend(own.iter().map(String::as_str));
    let serve = Tracer::start(&args);
    orderly_connections(&pair, &at(p_ok), ORDERLY);
    let (leak, _) = leaked_connections(&pair, &at(p_leak), LEAKS);

    let metrics = || {
        let r = get(nw, "/metrics");
        assert_eq!(r.status, 200, "{}", r.body);
        r.body
    };
    let whole = |text: &str| {
        sum_where(text, "netwatch_close_wait_sockets", &[("comm", "tcpdrive")])
            == Some(LEAKS as f64)
            && sum_where(
                text,
                "netwatch_connects_total",
                &[("outcome", "established")],
            ) == Some((ORDERLY + LEAKS) as f64)
    };
    // The same answer twice, over a second apart (the gauges are refreshed every second).
    let mut held: Option<(Instant, String)> = None;
    let mut text = String::new();
    let live = poll(Duration::from_secs(20), || {
        text = metrics();
        if !whole(&text) {
            held = None;
            return None;
        }
        match &held {
            Some((since, before)) if *before == text => {
                (since.elapsed() >= Duration::from_millis(1200)).then(|| text.clone())
            }
            _ => {
                held = Some((Instant::now(), text.clone()));
                None
            }
        }
    });
    let live = live.unwrap_or_else(|| {
        panic!("no exposition with the whole workload, unchanged for 1.2 s, in 20 s:\n{text}")
    });
    let done = serve.stop();
    assert_eq!(done.lost, 0, "{}", done.stderr);

    let mut cmd = Command::new(netwatch_tests::netwatch_bin());
    cmd.arg("analyze").arg(&recording).arg("--metrics");
    let out = netwatch_tests::output_with_timeout(cmd, 60);
    let replayed = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "analyze --metrics exited {}:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    drop(leak);
    let (live_lines, replayed_lines) = (exposition_lines(&live), exposition_lines(&replayed));
    let only_live: Vec<_> = live_lines
        .iter()
        .filter(|l| !replayed_lines.contains(l))
        .collect();
    let only_replayed: Vec<_> = replayed_lines
        .iter()
        .filter(|l| !live_lines.contains(l))
        .collect();
    assert!(
        live_lines == replayed_lines,
        "only in the live scrape: {only_live:#?}\nonly in the replay: {only_replayed:#?}"
    );
    assert!(whole(&replayed), "{replayed}");
}
