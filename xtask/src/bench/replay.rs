//! Offline costs: how fast `netwatch analyze` replays a recording on one core, how many bytes
//! a recording takes per event, and how much memory the tracker spends per live socket. All
//! run on recordings this module writes (synthetic JSON lines, in the format older netwatch
//! recorded, which `netwatch analyze FILE --record OUT` rewrites in the binary format
//! `--record` writes now), so they need no root and no load generator, and repeat exactly.
use std::{
    fs,
    io::{BufWriter, Write as _},
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

/// What the offline measurements found.
#[derive(Clone, Debug)]
pub struct Offline {
    pub replay_events: u64,
    pub replay_cpu_s: f64,
    pub live_sockets: u64,
    pub bytes_per_socket: f64,
    /// The churn recording's size per event: JSON lines, and the binary format as stored
    /// (zstd) and uncompressed (what `analyze` reports on its last line).
    pub json_bytes_per_event: f64,
    pub bytes_per_event: f64,
    pub raw_bytes_per_event: f64,
}

impl Offline {
    pub fn events_per_sec(&self) -> f64 {
        self.replay_events as f64 / self.replay_cpu_s.max(1e-9)
    }
}

const HEADER: &str = r#"{"netwatch_record":1,"started_ns":1000000000,"wall_offset_ns":1700000000000000000,"settings":{"port_range":[32768,60999],"tw_reuse":2}}"#;

fn summary(stopped_ns: u64) -> String {
    format!(
        r#"{{"netwatch_summary":{{"stopped_ns":{stopped_ns},"lost":0,"listen_overflows":0,"listen_drops":0}}}}"#
    )
}

/// One event line in the recording schema.
#[allow(
    clippy::too_many_arguments,
    reason = "one argument per field of the line"
)]
fn line(
    out: &mut impl std::io::Write,
    ts: u64,
    sock: u64,
    pid: Option<u32>,
    local: (&str, u16),
    remote: (&str, u16),
    kind: &str,
    states: Option<(&str, &str)>,
) -> std::io::Result<()> {
    let (pid, comm) = match pid {
        Some(p) => (p.to_string(), "\"app\"".to_string()),
        None => ("null".to_string(), "null".to_string()),
    };
    write!(
        out,
        r#"{{"ts_ns":{ts},"sock":"{sock:#x}","pid":{pid},"tid":{pid},"comm":{comm},"owner_seen_here":false,"family":"ipv4","saddr":"{}","sport":{},"daddr":"{}","dport":{},"kind":"{kind}""#,
        local.0, local.1, remote.0, remote.1
    )?;
    match states {
        Some((old, new)) => writeln!(
            out,
            r#","old_state":"{old}","new_state":"{new}","ms_in_old":0.05}}"#
        ),
        None => writeln!(out, r#","state":"CLOSE"}}"#),
    }
}

/// `connections` client-closes-first connections, both sides, 13 events each: what a churn
/// workload records.
fn write_churn(path: &Path, connections: u64) -> Result<u64> {
    let mut out = BufWriter::with_capacity(1 << 20, fs::File::create(path)?);
    writeln!(out, "{HEADER}")?;
    let mut ts = 2_000_000_000u64;
    let mut events = 0;
    for i in 0..connections {
        let (c, s) = (
            0xffff_8881_0000_0000 + i * 2 * 4096,
            0xffff_8881_0000_1000 + i * 2 * 4096,
        );
        let port = 32768 + (i % 28000) as u16;
        let (cl, sv) = (("10.0.0.1", port), ("10.0.0.2", 80));
        let mut ev = |sock, pid, local, remote, kind, states| -> Result<()> {
            ts += 1_000;
            events += 1;
            line(&mut out, ts, sock, pid, local, remote, kind, states).map_err(Into::into)
        };
        ev(
            c,
            Some(100),
            ("10.0.0.1", 0),
            sv,
            "state",
            Some(("CLOSE", "SYN_SENT")),
        )?;
        ev(s, None, sv, cl, "state", Some(("LISTEN", "SYN_RECV")))?;
        ev(s, None, sv, cl, "state", Some(("SYN_RECV", "ESTABLISHED")))?;
        ev(
            c,
            Some(100),
            cl,
            sv,
            "state",
            Some(("SYN_SENT", "ESTABLISHED")),
        )?;
        ev(s, Some(200), sv, cl, "accept", None)?;
        ev(
            c,
            Some(100),
            cl,
            sv,
            "state",
            Some(("ESTABLISHED", "FIN_WAIT1")),
        )?;
        ev(
            s,
            Some(200),
            sv,
            cl,
            "state",
            Some(("ESTABLISHED", "CLOSE_WAIT")),
        )?;
        ev(
            c,
            Some(100),
            cl,
            sv,
            "state",
            Some(("FIN_WAIT1", "FIN_WAIT2")),
        )?;
        ev(
            s,
            Some(200),
            sv,
            cl,
            "state",
            Some(("CLOSE_WAIT", "LAST_ACK")),
        )?;
        ev(c, Some(100), cl, sv, "state", Some(("FIN_WAIT2", "CLOSE")))?;
        ev(c, Some(100), cl, sv, "destroy", None)?;
        ev(s, Some(200), sv, cl, "state", Some(("LAST_ACK", "CLOSE")))?;
        ev(s, Some(200), sv, cl, "destroy", None)?;
    }
    writeln!(out, "{}", summary(ts + 1))?;
    out.flush()?;
    Ok(events)
}

/// `sockets` connections that stay open: the tracker holds all of them at the end.
fn write_live(path: &Path, sockets: u64) -> Result<()> {
    let mut out = BufWriter::with_capacity(1 << 20, fs::File::create(path)?);
    writeln!(out, "{HEADER}")?;
    let mut ts = 2_000_000_000u64;
    for i in 0..sockets {
        let sock = 0xffff_8881_0000_0000 + i * 4096;
        let port = 1024 + (i % 60000) as u16;
        let peer = format!("10.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, i & 255);
        ts += 1_000;
        line(
            &mut out,
            ts,
            sock,
            Some(100),
            ("10.0.0.1", 0),
            (&peer, 80),
            "state",
            Some(("CLOSE", "SYN_SENT")),
        )?;
        ts += 1_000;
        line(
            &mut out,
            ts,
            sock,
            Some(100),
            ("10.0.0.1", port),
            (&peer, 80),
            "state",
            Some(("SYN_SENT", "ESTABLISHED")),
        )?;
    }
    writeln!(out, "{}", summary(ts + 1))?;
    out.flush()?;
    Ok(())
}

/// Runs `netwatch analyze ARGS` under `/usr/bin/time`: (user + system CPU s, max RSS KiB).
fn timed_analyze(netwatch: &Path, args: &[&str]) -> Result<(f64, u64)> {
    let out = Command::new("/usr/bin/time")
        .args(["-f", "NWTIME %U %S %M"])
        .arg(netwatch)
        .arg("analyze")
        .args(args)
        .stdout(std::process::Stdio::null())
        .output()
        .context("running /usr/bin/time (Debian package `time`)")?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!("netwatch analyze {args:?} failed: {stderr}");
    }
    let fields: Vec<f64> = stderr
        .lines()
        .find_map(|l| l.strip_prefix("NWTIME "))
        .map(|l| {
            l.split_whitespace()
                .filter_map(|v| v.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    match fields[..] {
        [user, sys, rss] => Ok((user + sys, rss as u64)),
        _ => bail!("no timing line from /usr/bin/time: {stderr}"),
    }
}

/// `netwatch analyze JSONL --record OUT`: the recording in the binary format, as netwatch's own
/// writer makes it; and the bytes per event `analyze OUT` reports (stored, uncompressed).
fn rerecord(netwatch: &Path, jsonl: &Path, out: &Path) -> Result<(f64, f64)> {
    let run = |args: &[&std::ffi::OsStr]| -> Result<String> {
        let o = Command::new(netwatch)
            .arg("analyze")
            .args(args)
            .stdout(std::process::Stdio::null())
            .output()
            .context("running netwatch analyze")?;
        let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
        if !o.status.success() {
            bail!("netwatch analyze {args:?} failed: {stderr}");
        }
        Ok(stderr)
    };
    run(&[jsonl.as_os_str(), "--record".as_ref(), out.as_os_str()])?;
    let stderr = run(&[out.as_os_str()])?;
    // `...; 1234 bytes, 21.3 bytes/event, 48.0 uncompressed)`
    let figures = stderr
        .lines()
        .find_map(|l| l.split_once(" bytes, ").map(|(_, r)| r.to_string()))
        .and_then(|r| {
            let (stored, rest) = r.split_once(" bytes/event, ")?;
            let raw = rest.split_whitespace().next()?;
            Some((stored.parse().ok()?, raw.parse().ok()?))
        });
    figures.with_context(|| format!("no size in `netwatch analyze`'s last line: {stderr}"))
}

/// Writes the recordings into `dir`, measures, deletes them.
pub fn measure(netwatch: &Path, dir: &Path, quick: bool) -> Result<Offline> {
    fs::create_dir_all(dir)?;
    let churn: PathBuf = dir.join("churn.jsonl");
    let churn_bin: PathBuf = dir.join("churn.nwr");
    let live = dir.join("live.jsonl");
    let empty = dir.join("empty.jsonl");
    let result = (|| -> Result<Offline> {
        let connections = if quick { 20_000 } else { 160_000 };
        let events = write_churn(&churn, connections)?;
        let json_bytes = fs::metadata(&churn)?.len();
        let (bytes_per_event, raw_bytes_per_event) = rerecord(netwatch, &churn, &churn_bin)?;
        let (cpu, _) = timed_analyze(
            netwatch,
            &[churn_bin.to_str().unwrap_or_default(), "--report"],
        )?;
        let sockets: u64 = if quick { 200_000 } else { 1_000_000 };
        write_live(&live, sockets)?;
        fs::write(&empty, format!("{HEADER}\n{}\n", summary(2)))?;
        let max = (sockets * 2).to_string();
        let (_, rss) = timed_analyze(
            netwatch,
            &[
                live.to_str().unwrap_or_default(),
                "--life",
                "--max-sockets",
                &max,
            ],
        )?;
        let (_, base) = timed_analyze(netwatch, &[empty.to_str().unwrap_or_default(), "--life"])?;
        Ok(Offline {
            replay_events: events,
            replay_cpu_s: cpu,
            live_sockets: sockets,
            bytes_per_socket: (rss.saturating_sub(base) * 1024) as f64 / sockets as f64,
            json_bytes_per_event: json_bytes as f64 / events as f64,
            bytes_per_event,
            raw_bytes_per_event,
        })
    })();
    for f in [&churn, &churn_bin, &live, &empty] {
        let _ = fs::remove_file(f);
    }
    result
}
