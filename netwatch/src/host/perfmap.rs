//! A runtime's perf map (`/tmp/perf-PID.map`): one `START SIZE NAME` line per piece of JIT or
//! interpreted code, written by the runtime itself (Node's `--perf-basic-prof`, the JVM's
//! `jcmd PID Compiler.perfmap`, Python 3.12's `-X perf`); the names of code that no file backs.
//!
//! Read here rather than by blazesym, whose parser (0.2.7) refuses the whole file at the JVM's
//! `0x`-prefixed numbers, and with it every other frame of the stack. A line that is not
//! `START SIZE NAME` is skipped, not fatal.
//!
//! A process in a container writes `perf-<its own pid>.map` in its own `/tmp`: the file is
//! `/proc/PID/root/tmp/perf-NSPID.map`, NSPID being the pid the process sees itself as (the last
//! field of `NSpid:` in `/proc/PID/status`).
use std::path::PathBuf;
use std::time::SystemTime;

/// The functions of one perf map, sorted by start address.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PerfMap(Vec<(u64, u64, String)>);

impl PerfMap {
    /// Reads process `pid`'s perf map; `None` when it has none (or is gone).
    pub fn read(pid: u32) -> Option<PerfMap> {
        let text = std::fs::read(path(pid)?).ok()?;
        Some(PerfMap::parse(&String::from_utf8_lossy(&text)))
    }

    pub fn parse(text: &str) -> PerfMap {
        let mut entries: Vec<(u64, u64, String)> = text.lines().filter_map(parse_line).collect();
        entries.sort_by_key(|(start, size, _)| (*start, *size));
        PerfMap(entries)
    }

    /// The name of the function whose code holds `addr` (the last one written, when a runtime
    /// reused the memory).
    pub fn lookup(&self, addr: u64) -> Option<&str> {
        let after = self.0.partition_point(|(start, _, _)| *start <= addr);
        self.0[..after]
            .iter()
            .rev()
            .take(64)
            .find(|(start, size, _)| addr < start.saturating_add((*size).max(1)))
            .map(|(_, _, name)| name.as_str())
    }
}

fn hex(s: &str) -> Option<u64> {
    let digits = s.strip_prefix("0x").unwrap_or(s);
    u64::from_str_radix(digits, 16).ok()
}

/// `START SIZE NAME` (hex, with or without `0x`); the name may hold spaces.
fn parse_line(line: &str) -> Option<(u64, u64, String)> {
    let mut parts = line.trim_end().splitn(3, ' ');
    let start = hex(parts.next()?)?;
    let size = hex(parts.next()?)?;
    let name = parts.next()?.trim();
    (!name.is_empty()).then(|| (start, size, name.to_string()))
}

/// Where process `pid`'s perf map is, as seen from here (see the module documentation).
pub fn path(pid: u32) -> Option<PathBuf> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let ns_pid = status
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))
        .and_then(|v| v.split_whitespace().last())
        .and_then(|v| v.parse::<u32>().ok())
        .unwrap_or(pid);
    Some(PathBuf::from(format!(
        "/proc/{pid}/root/tmp/perf-{ns_pid}.map"
    )))
}

/// When process `pid`'s perf map last changed; `None` when it has none.
pub fn modified(pid: u32) -> Option<SystemTime> {
    std::fs::metadata(path(pid)?)
        .and_then(|m| m.modified())
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_node_and_jvm_lines_and_skips_the_malformed() {
        let map = PerfMap::parse(
            "7f7b50060f80 9c JS:~handleConnectionForgetsEnd /srv/server.js:2:36\n\
             0x00007f1ef1513360 0x0000000000000160 void LeakyPool.handleForgetsClose(java.net.Socket)\n\
             0x00007f1ef1400000 0x0000000000008000 Interpreter\n\
             not a line\n\
             1000 zz bad size\n\
             7f7b50061000 10 \n",
        );
        assert_eq!(map.0.len(), 3, "{map:?}");
        assert_eq!(
            map.lookup(0x7f7b50061000 - 1),
            Some("JS:~handleConnectionForgetsEnd /srv/server.js:2:36")
        );
        assert_eq!(map.lookup(0x7f7b50061100), None);
        assert_eq!(
            map.lookup(0x7f1ef15133bc),
            Some("void LeakyPool.handleForgetsClose(java.net.Socket)")
        );
        assert_eq!(map.lookup(0x7f1ef1407fff), Some("Interpreter"));
        assert_eq!(map.lookup(0x7f1ef1408000), None);
        assert_eq!(map.lookup(5), None);
    }

    #[test]
    fn this_process_has_no_perf_map_and_its_path_uses_its_own_pid() {
        let me = std::process::id();
        let p = path(me).expect("own status");
        assert!(p.ends_with(format!("tmp/perf-{me}.map")), "{p:?}");
        assert_eq!(PerfMap::read(99_999_999), None);
    }
}
