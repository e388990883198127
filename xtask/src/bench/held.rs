//! The held-sockets row: what 200,000 live sockets cost the always-on mode, in memory.
//!
//! The target is 1,000,000 live sockets tracked with their owners; a process may hold at most
//! 20,000 files here, so [`PROCESSES`] `tcpdrive hold-connect` clients each open
//! [`PER_PROCESS`] connections over the bench's veth pair to one of [`PROCESSES`] `tcpdrive
//! hold-accept` servers, which keep what they accepted: 200,000 established sockets, both ends
//! of 100,000 connections. `netwatch serve` runs beside them with `--max-sockets`
//! [`MAX_SOCKETS`]: `serve` is what a host runs always (deploy/netwatch.service), so its
//! memory is the memory a fleet pays; it also tells how many sockets it follows
//! (`netwatch_tracker_sockets` on /metrics).
//!
//! Measured once everything is held and `ss` counts every socket: netwatch's `VmRSS` (and
//! `VmHWM`) beside its `VmRSS` before the load; the kernel memory of the `SOCKETS` map
//! (`memlock` in the map's fdinfo under /proc/<netwatch>/fdinfo) and how many entries it holds
//! (`bpftool map dump`); the time to establish everything, untraced first (also the warm-up)
//! and then with netwatch. Then the clients are killed, then the servers, the namespaces are
//! left to quiet down (no socket but TIME_WAIT), and netwatch is stopped: its exit line gives
//! the events lost and missed while 200,000 sockets closed at once.

use std::{
    collections::BTreeSet,
    fs,
    io::{Read as _, Write as _},
    net::TcpStream,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};
use serde_json::Value;

use super::{
    Env, Progress, STOP_TIMEOUT, Summary, kernel,
    netns::{self, Netns},
    proc::{self, Proc, Stream},
};
use crate::sys::{self, command, show};

/// Client processes, and server processes (one server per client).
pub const PROCESSES: u16 = 10;
/// Connections each client opens and holds: half the 20,000 files a process may hold here.
pub const PER_PROCESS: u64 = 10_000;
/// Established sockets when everything is held: both ends of every connection.
pub const SOCKETS: u64 = 2 * PROCESSES as u64 * PER_PROCESS;
/// `--max-sockets`: the next power of two above [`SOCKETS`], with room for the host's own.
pub const MAX_SOCKETS: u32 = 262_144;
/// What the issue asks netwatch to hold.
pub const TARGET_SOCKETS: u64 = 1_000_000;
/// First server port, inside the bench's server namespace (the churn uses 5000, bulk 5001).
/// Each hold has ports of its own: the 100,000 TIME_WAIT sockets the untraced hold leaves in
/// the client namespace would otherwise stand in the way of the traced one's connect()s to
/// the same server ports, and slow them down, not netwatch.
const FIRST_PORT: u16 = 6000;
/// Bound on establishing every connection: tens of seconds on the 2-core machines here, more
/// with a busy neighbour.
const ESTABLISH_TIMEOUT: Duration = Duration::from_secs(300);
/// Bound on the namespaces quieting down once the processes are killed, and on netwatch's
/// tracker catching up with what `ss` counts.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(120);
/// The tracker's gauge unchanged this long: it has read everything it will.
const STILL: Duration = Duration::from_secs(5);
/// How often the waits look.
const POLL: Duration = Duration::from_millis(500);

/// The row's figures; `None` where a figure could not be read.
#[derive(Debug, Clone, Default)]
pub struct Held {
    /// Established sockets `ss` counted in the two namespaces once everything was held.
    pub sockets: u64,
    /// Time from the first client's start to the last `HELD` line, without and with netwatch.
    pub establish_untraced: Option<Duration>,
    pub establish_traced: Option<Duration>,
    /// netwatch's `VmRSS` once tracing, before the load, and with everything held; its `VmHWM`.
    pub rss_before_kib: Option<u64>,
    pub rss_held_kib: Option<u64>,
    pub hwm_kib: Option<u64>,
    /// The kernel's `SOCKETS` map: its fdinfo, and its entries with everything held.
    pub map: Option<MapInfo>,
    pub map_entries: Option<u64>,
    /// `netwatch_tracker_sockets` with everything held.
    pub tracked: Option<u64>,
    /// netwatch's exit line after the teardown.
    pub summary: Option<Summary>,
    pub missed: u64,
    pub sockets_full: u64,
    /// Other BPF programs that ran while netwatch held the sockets (someone else tracing or
    /// benching: their traffic's events land in netwatch's ring too).
    pub foreign: Vec<String>,
    /// Why the row could not be measured, when it could not.
    pub skipped: Option<String>,
}

impl Held {
    /// Kernel memory per map entry the map was sized for (`memlock` / `max_entries`).
    pub fn map_bytes_per_entry(&self) -> Option<f64> {
        let m = self.map.as_ref()?;
        (m.max_entries > 0).then(|| m.memlock as f64 / f64::from(m.max_entries))
    }

    /// netwatch's resident memory per held socket (`VmRSS` held - before, over the sockets).
    pub fn rss_bytes_per_socket(&self) -> Option<f64> {
        let grew = self.rss_held_kib?.checked_sub(self.rss_before_kib?)?;
        (self.sockets > 0).then(|| grew as f64 * 1024.0 / self.sockets as f64)
    }
}

/// A BPF map's fdinfo: `map_id`, `max_entries`, `memlock` (bytes of kernel memory charged).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapInfo {
    pub id: u32,
    pub max_entries: u32,
    pub memlock: u64,
}

/// Two steps: the untraced hold (warm-up and baseline), then the one with `netwatch serve`.
pub const STEPS: usize = 2;

/// Runs the row in the bench's veth namespaces.
pub(super) fn measure(env: &Env, progress: &mut Progress) -> Result<Held> {
    let mut held = Held::default();

    progress.start(&format!(
        "{} held sockets, no tracer",
        super::fmt_int(SOCKETS)
    ));
    let (clients, servers, took) = hold_all(env, 0)?;
    held.establish_untraced = Some(took);
    release(env, clients, servers)?;
    progress.done(&format!("established in {}", sys::fmt_duration(took)));

    progress.start(&format!(
        "{} held sockets, netwatch serve --max-sockets {MAX_SOCKETS}",
        super::fmt_int(SOCKETS)
    ));
    env.stats.ensure()?;
    let mut netwatch = start_serve(&env.netwatch)?;
    let pid = netwatch.pid();
    let before = kernel::programs()?;
    let metrics = metrics_addr(&netwatch)?;
    // One scrape first, so the exporter's own first allocations are not counted as the
    // sockets' memory; then the resident size once it stops moving.
    scrape(&metrics)?;
    held.rss_before_kib = settled_rss_kib(pid)?;
    let (clients, servers, took) = hold_all(env, 1)?;
    held.establish_traced = Some(took);
    held.sockets = established(env)?;
    // The tracker hears of a socket through the ring buffer: let it catch up, until it
    // follows every socket or stops moving for [`STILL`] (events were lost), bounded.
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    let mut moved = Instant::now();
    loop {
        let tracked = scrape(&metrics)
            .ok()
            .and_then(|text| gauge(&text, "netwatch_tracker_sockets"))
            .map(|v| v as u64);
        if tracked != held.tracked {
            moved = Instant::now();
            held.tracked = tracked;
        }
        if held.tracked.is_some_and(|t| t >= held.sockets)
            || moved.elapsed() >= STILL
            || Instant::now() >= deadline
        {
            break;
        }
        proc::check_interrupted()?;
        std::thread::sleep(POLL);
    }
    held.rss_held_kib = status_kib(pid, "VmRSS");
    held.hwm_kib = status_kib(pid, "VmHWM");
    held.map = sockets_map(pid)?;
    held.map_entries = match &held.map {
        Some(m) => Some(map_entries(m.id)?),
        None => None,
    };
    release(env, clients, servers)?;
    let after = kernel::programs()?;
    let mut foreign = kernel::foreign_active(&before, &after, &kernel::owned_programs(pid));
    foreign.sort();
    foreign.dedup();
    held.foreign = foreign;
    let exit = netwatch.stop("TERM", STOP_TIMEOUT)?;
    let line = netwatch
        .last_line(Stream::Stderr, |l| l.contains("delivered="))
        .ok_or_else(|| anyhow!("netwatch serve printed no summary line ({})", exit.status))?;
    held.summary =
        Some(Summary::parse(line).ok_or_else(|| anyhow!("unreadable summary line `{line}`"))?);
    held.missed = exit_counter(line, "missed").unwrap_or(0);
    held.sockets_full = exit_counter(line, "sockets_full").unwrap_or(0);
    progress.done(&format!(
        "established in {}; {} sockets; RSS {} → {} KiB; SOCKETS map {} KiB; {} entries; \
         tracker {}; {} lost, {} missed",
        sys::fmt_duration(took),
        super::fmt_int(held.sockets),
        opt(held.rss_before_kib),
        opt(held.rss_held_kib),
        opt(held.map.map(|m| m.memlock >> 10)),
        opt(held.map_entries),
        opt(held.tracked),
        held.summary.map_or(0, |s| s.lost),
        held.missed
    ));
    Ok(held)
}

fn opt(v: Option<u64>) -> String {
    v.map_or_else(|| "?".into(), super::fmt_int)
}

/// `VmRSS` once two reads [`POLL`] apart differ by less than 1% (at most 10 s; the last read
/// then): right after start-up netwatch is still filling its first pages.
fn settled_rss_kib(pid: u32) -> Result<Option<u64>> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = status_kib(pid, "VmRSS");
    loop {
        proc::check_interrupted()?;
        std::thread::sleep(POLL);
        let now = status_kib(pid, "VmRSS");
        let steady = match (last, now) {
            (Some(a), Some(b)) => a.abs_diff(b) * 100 < a.max(1),
            _ => true,
        };
        if steady || Instant::now() >= deadline {
            return Ok(now);
        }
        last = now;
    }
}

/// `netwatch serve` on a port the kernel picks, sized for the row, once it is tracing.
fn start_serve(netwatch: &Path) -> Result<Proc> {
    let mut cmd = sys::command(netwatch);
    cmd.args([
        "serve",
        "--listen",
        super::SERVE_LISTEN,
        "--max-sockets",
        &MAX_SOCKETS.to_string(),
    ]);
    let mut p = Proc::spawn("netwatch serve", cmd, false)?;
    p.wait_line(
        Stream::Stderr,
        "its `tracing TCP events` line",
        super::READY_TIMEOUT,
        |l| l.contains("tracing TCP events"),
    )?;
    Ok(p)
}

/// The `host:port` of `netwatch: serving http://HOST:PORT/metrics ...`.
fn metrics_addr(p: &Proc) -> Result<String> {
    let line = p
        .last_line(Stream::Stderr, |l| l.contains("serving http://"))
        .ok_or_else(|| anyhow!("netwatch serve did not say where it serves /metrics"))?;
    served_addr(line).ok_or_else(|| anyhow!("unreadable line `{line}`"))
}

fn served_addr(line: &str) -> Option<String> {
    let rest = line.split("http://").nth(1)?;
    Some(rest.split('/').next()?.to_owned()).filter(|a| !a.is_empty())
}

/// Starts the servers (the `hold`-th set of ports), then the clients, and waits (bounded, with
/// progress) until every one printed `HELD`; how long that took from the first client's start.
fn hold_all(env: &Env, hold: u16) -> Result<(Vec<Proc>, Vec<Proc>, Duration)> {
    let ports: Vec<u16> = (0..PROCESSES)
        .map(|i| FIRST_PORT + hold * PROCESSES + i)
        .collect();
    let mut servers = Vec::new();
    for port in &ports {
        let addr = format!("{}:{port}", netns::VETH_SERVER);
        let mut cmd = env.server.exec(&env.tcpdrive);
        cmd.args([
            "hold-accept",
            &addr,
            "--count",
            &PER_PROCESS.to_string(),
            "--backlog",
            "4096",
        ]);
        let mut p = Proc::spawn("tcpdrive hold-accept", cmd, true)?;
        p.wait_line(Stream::Stdout, "READY line", Duration::from_secs(20), |l| {
            l.starts_with("READY")
        })?;
        servers.push(p);
    }
    let started = Instant::now();
    let mut clients = Vec::new();
    for port in &ports {
        let addr = format!("{}:{port}", netns::VETH_SERVER);
        let mut cmd = env.client.exec(&env.tcpdrive);
        cmd.args([
            "hold-connect",
            &addr,
            "--count",
            &PER_PROCESS.to_string(),
            "--timeout-ms",
            "60000",
        ]);
        clients.push(Proc::spawn("tcpdrive hold-connect", cmd, true)?);
    }
    let deadline = started + ESTABLISH_TIMEOUT;
    let total = clients.len() + servers.len();
    for (n, p) in clients.iter_mut().chain(servers.iter_mut()).enumerate() {
        let left = deadline.saturating_duration_since(Instant::now());
        p.wait_line(Stream::Stdout, "HELD line", left, |l| {
            l.starts_with("HELD ")
        })?;
        if (n + 1) % PROCESSES as usize == 0 {
            eprint!("{}/{total} processes hold theirs, ", n + 1);
        }
    }
    let took = started.elapsed();
    // Every process says it holds its sockets; `ss` must count them all (bounded).
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        let live = established(env)?;
        if live == SOCKETS {
            break;
        }
        if Instant::now() >= deadline {
            bail!(
                "ss counts {live} established sockets in the bench's namespaces, not {SOCKETS}, \
                 {} after every process said it holds its connections",
                sys::fmt_duration(SETTLE_TIMEOUT)
            );
        }
        proc::check_interrupted()?;
        std::thread::sleep(POLL);
    }
    Ok((clients, servers, took))
}

/// Kills the clients, then the servers (each side's sockets close in their own context, as
/// when a fleet's processes exit), and waits until both namespaces are quiet: no socket left
/// but TIME_WAIT.
fn release(env: &Env, clients: Vec<Proc>, servers: Vec<Proc>) -> Result<()> {
    drop(clients);
    drop(servers);
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        let busy = busy_sockets(&env.client)? + busy_sockets(&env.server)?;
        if busy == 0 {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "{busy} sockets other than TIME_WAIT still open in the bench's namespaces {} \
                 after their processes were killed",
                sys::fmt_duration(SETTLE_TIMEOUT)
            );
        }
        proc::check_interrupted()?;
        std::thread::sleep(POLL);
    }
}

/// Established TCP sockets in the client and server namespaces.
fn established(env: &Env) -> Result<u64> {
    Ok(ss_count(&env.client, &["state", "established"])?
        + ss_count(&env.server, &["state", "established"])?)
}

/// TCP sockets of a namespace in any state but TIME_WAIT (which lasts 60 s and holds no
/// process's memory).
fn busy_sockets(ns: &Netns) -> Result<u64> {
    ss_count(ns, &["exclude", "time-wait"])
}

/// `ss -Htan <filter>` in `ns`: its lines, one per socket.
fn ss_count(ns: &Netns, filter: &[&str]) -> Result<u64> {
    let mut cmd = ns.exec(Path::new("ss"));
    cmd.arg("-Htan").args(filter);
    let out = sys::output(&mut cmd)?;
    sys::check(&cmd, out.status)?;
    Ok(count_lines(&String::from_utf8_lossy(&out.stdout)))
}

fn count_lines(text: &str) -> u64 {
    text.lines().filter(|l| !l.trim().is_empty()).count() as u64
}

/// A `Key:   123 kB` line of `/proc/<pid>/status`, in KiB.
fn status_kib(pid: u32, key: &str) -> Option<u64> {
    status_field(
        &fs::read_to_string(format!("/proc/{pid}/status")).ok()?,
        key,
    )
}

fn status_field(status: &str, key: &str) -> Option<u64> {
    status.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k == key).then(|| v.split_whitespace().next()?.parse().ok())?
    })
}

/// The fdinfo of every BPF map `pid` holds.
fn maps_held(pid: u32) -> Vec<MapInfo> {
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return Vec::new();
    };
    dir.filter_map(|e| fs::read_to_string(e.ok()?.path()).ok())
        .filter_map(|info| map_info(&info))
        .collect()
}

fn map_info(fdinfo: &str) -> Option<MapInfo> {
    let field = |key: &str| {
        fdinfo.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == key).then(|| v.trim().parse::<u64>().ok())?
        })
    };
    Some(MapInfo {
        id: u32::try_from(field("map_id")?).ok()?,
        max_entries: u32::try_from(field("max_entries")?).ok()?,
        memlock: field("memlock")?,
    })
}

/// netwatch's `SOCKETS` map: among the maps it holds, the one bpftool names so.
fn sockets_map(pid: u32) -> Result<Option<MapInfo>> {
    let ours = maps_held(pid);
    let ids: BTreeSet<u32> = ours.iter().map(|m| m.id).collect();
    let mut cmd = command("bpftool");
    cmd.args(["map", "show", "--json"]);
    let out = sys::output(&mut cmd)?;
    sys::check(&cmd, out.status)?;
    let id = map_named(&String::from_utf8_lossy(&out.stdout), "SOCKETS", &ids)
        .with_context(|| format!("`{}`", show(&cmd)))?;
    Ok(id.and_then(|id| ours.into_iter().find(|m| m.id == id)))
}

/// The id of the map called `name` among `ids`, in `bpftool map show --json`.
fn map_named(json: &str, name: &str, ids: &BTreeSet<u32>) -> Result<Option<u32>> {
    let doc: Value = serde_json::from_str(json)?;
    let maps = doc
        .as_array()
        .ok_or_else(|| anyhow!("not a JSON array of maps"))?;
    Ok(maps.iter().find_map(|m| {
        let id = u32::try_from(m.get("id")?.as_u64()?).ok()?;
        (m.get("name")?.as_str()? == name && ids.contains(&id)).then_some(id)
    }))
}

/// Entries of map `id`, from `bpftool map dump` (formatted with BTF: one `"key":` line per
/// entry; without: `key:` then the key's bytes, on the same line for small entries, on the
/// next for large ones such as netwatch's). Distinct keys are counted: a key
/// deleted while bpftool walks the map (any socket closing on the host) sends the walk back
/// to the start, and entries already seen come again.
fn map_entries(id: u32) -> Result<u64> {
    let mut cmd = command("bpftool");
    cmd.args(["map", "dump", "id", &id.to_string()]);
    let out = sys::output(&mut cmd)?;
    sys::check(&cmd, out.status)?;
    Ok(count_entries(&String::from_utf8_lossy(&out.stdout)))
}

fn count_entries(dump: &str) -> u64 {
    let mut keys: BTreeSet<&str> = BTreeSet::new();
    let mut lines = dump.lines();
    while let Some(line) = lines.next() {
        let line = line.trim_start();
        let key = if let Some(key) = line.strip_prefix("\"key\":") {
            key.trim().trim_end_matches(',')
        } else if let Some(key) = line.strip_prefix("key:") {
            match key.split("value:").next().unwrap_or("").trim() {
                "" => lines.next().unwrap_or("").trim(),
                key => key,
            }
        } else {
            continue;
        };
        keys.insert(key);
    }
    keys.len() as u64
}

/// GET /metrics from `addr` (HTTP/1.0: the body ends with the connection, never chunked).
fn scrape(addr: &str) -> Result<String> {
    let mut s = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut body = String::new();
    s.read_to_string(&mut body)
        .with_context(|| format!("reading http://{addr}/metrics"))?;
    Ok(body)
}

/// The value of an unlabelled sample `name` in a Prometheus text exposition.
fn gauge(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == name).then(|| v.trim().parse().ok())?
    })
}

/// `key=N` in netwatch's exit line (`missed=`, `sockets_full=`).
fn exit_counter(line: &str, key: &str) -> Option<u64> {
    line.split(|c: char| c.is_whitespace() || c == '(' || c == ')')
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_map_fdinfo() {
        let info = "pos:\t0\nflags:\t02000002\nmnt_id:\t15\nino:\t2077\nmap_type:\t1\n\
                    key_size:\t8\nvalue_size:\t48\nmax_entries:\t262144\nmap_flags:\t0x0\n\
                    map_extra:\t0x0\nmemlock:\t23200000\nmap_id:\t412\nfrozen:\t0\n";
        assert_eq!(
            map_info(info),
            Some(MapInfo {
                id: 412,
                max_entries: 262144,
                memlock: 23200000
            })
        );
        // A program's fdinfo is not a map.
        assert_eq!(
            map_info("prog_type:\t26\nprog_id:\t90\nmemlock:\t4096\n"),
            None
        );
        let held = Held {
            map: map_info(info),
            sockets: 200_000,
            rss_before_kib: Some(20_000),
            rss_held_kib: Some(40_000),
            ..Held::default()
        };
        assert_eq!(held.map_bytes_per_entry(), Some(23200000.0 / 262144.0));
        assert_eq!(
            held.rss_bytes_per_socket(),
            Some(20_000.0 * 1024.0 / 200_000.0)
        );
    }

    #[test]
    fn finds_the_sockets_map_among_ours() {
        let json = r#"[{"id":3,"type":"hash","name":"SOCKETS"},
                       {"id":412,"type":"hash","name":"SOCKETS","max_entries":262144},
                       {"id":413,"type":"ringbuf","name":"EVENTS"}]"#;
        let ours: BTreeSet<u32> = [412, 413].into();
        assert_eq!(map_named(json, "SOCKETS", &ours).unwrap(), Some(412));
        assert_eq!(map_named(json, "STACKS", &ours).unwrap(), None);
        assert!(map_named("{}", "SOCKETS", &ours).is_err());
    }

    #[test]
    fn counts_sockets_entries_and_samples() {
        assert_eq!(count_lines("ESTAB 0 0 a b\nESTAB 0 0 c d\n\n"), 2);
        assert_eq!(count_lines(""), 0);
        let btf = "[{\n        \"key\": 1,\n        \"value\": {\n            \"tgid\": 5\n        }\n    },{\n        \"key\": 2,\n        \"value\": {}\n    }\n]\n";
        assert_eq!(count_entries(btf), 2);
        // A walk sent back to the start by a deletion lists keys again.
        let again = format!("{}{btf}", btf.replace("\"key\": 2", "\"key\": 3"));
        assert_eq!(count_entries(&again), 3);
        assert_eq!(
            count_entries(
                "key: 01 00 value: 02\nkey: 03 00 value: 04\nkey: 01 00 value: 05\nFound 3 elements\n"
            ),
            2
        );
        // netwatch's SOCKETS without BTF: the key on the line after `key:`.
        let raw = "key:\n40 2e fc 35 81 88 ff ff\nvalue:\n13 46 76 c7\n00 00 00 00\n\
                   key:\nc0 c0 9f 0d 81 88 ff ff\nvalue:\n4f 74 9e c7\n\
                   key:\n40 2e fc 35 81 88 ff ff\nvalue:\n13 46 76 c8\nFound 3 elements\n";
        assert_eq!(count_entries(raw), 2);
        let metrics = "# HELP netwatch_tracker_sockets Sockets the tracker follows now\n\
                       # TYPE netwatch_tracker_sockets gauge\n\
                       netwatch_tracker_sockets 200013\n\
                       netwatch_tracker_sockets_other 1\n";
        assert_eq!(gauge(metrics, "netwatch_tracker_sockets"), Some(200013.0));
        assert_eq!(gauge(metrics, "netwatch_tracker_evictions_total"), None);
        assert_eq!(
            status_field("VmHWM:\t   51200 kB\nVmRSS:\t   40960 kB\n", "VmRSS"),
            Some(40960)
        );
        assert_eq!(status_field("VmRSS:\t   40960 kB\n", "VmHWM"), None);
    }

    #[test]
    fn reads_serve_and_exit_lines() {
        assert_eq!(
            served_addr("netwatch: serving http://127.0.0.1:40123/metrics and /healthz"),
            Some("127.0.0.1:40123".into())
        );
        assert_eq!(served_addr("netwatch: tracing TCP events"), None);
        let line = "netwatch: 400000 events seen (before any user-space filter), 0 lost \
                    (produced=400012 delivered=400012 lost=0); 12 events missed in the kernel: \
                    a tracepoint fired ... (missed=12)";
        assert_eq!(exit_counter(line, "missed"), Some(12));
        assert_eq!(exit_counter(line, "sockets_full"), None);
        assert_eq!(exit_counter(line, "lost"), Some(0));
    }
}
