//! What the kernel says about BPF programs: their in-kernel cost (`kernel.bpf_stats_enabled`,
//! `bpftool prog show`), and which programs belong to (and are attached by) which process.
//!
//! Debian's bpftool is built without the `pids` field in `prog show`, so ownership comes from
//! `/proc/<pid>/fdinfo`: every BPF program and link fd there names its `prog_id`. Attachment
//! comes from the same place for BPF links (aya, libbpf) and from `bpftool perf show` for
//! programs attached with the older perf-event ioctl (bpftrace 0.17).

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
};

use anyhow::{Context as _, Result, anyhow, bail};
use serde_json::Value;

use crate::sys::{self, command, show};

const STATS_SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// `kernel.bpf_stats_enabled=1` while the guard lives; the previous value is written back when
/// it drops (after an error or Ctrl-C too). Stats cost two clock reads per program run, so the
/// machine is left as it was found.
pub struct BpfStats {
    previous: String,
}

impl BpfStats {
    pub fn enable() -> Result<BpfStats> {
        let previous = fs::read_to_string(STATS_SYSCTL)
            .with_context(|| format!("reading {STATS_SYSCTL}"))?
            .trim()
            .to_owned();
        let guard = BpfStats { previous };
        guard.ensure()?;
        Ok(guard)
    }

    /// Sets it again: another process (a test run in parallel) may have switched it off.
    pub fn ensure(&self) -> Result<()> {
        fs::write(STATS_SYSCTL, "1").with_context(|| format!("writing 1 to {STATS_SYSCTL}"))
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        if let Err(err) = fs::write(STATS_SYSCTL, &self.previous) {
            eprintln!(
                "bench: warning: could not restore kernel.bpf_stats_enabled={}: {err}",
                self.previous
            );
        }
    }
}

/// One loaded program's counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prog {
    pub name: String,
    pub run_time_ns: u64,
    pub run_cnt: u64,
}

/// Every loaded program by id (`bpftool prog show --json`); counters are 0 while stats are off.
pub fn programs() -> Result<BTreeMap<u32, Prog>> {
    let mut cmd = command("bpftool");
    cmd.args(["prog", "show", "--json"]);
    let out = sys::output(&mut cmd)?;
    sys::check(&cmd, out.status)?;
    parse_programs(&String::from_utf8_lossy(&out.stdout))
        .with_context(|| format!("reading the output of `{}`", show(&cmd)))
}

fn number(v: Option<&Value>) -> Option<u64> {
    v?.as_u64()
}

fn parse_programs(text: &str) -> Result<BTreeMap<u32, Prog>> {
    let doc: Value = serde_json::from_str(text).map_err(|err| anyhow!("{err}"))?;
    let items = doc.as_array().ok_or_else(|| anyhow!("not a JSON array"))?;
    let mut progs = BTreeMap::new();
    for item in items {
        let Some(id) = number(item.get("id")).and_then(|id| u32::try_from(id).ok()) else {
            continue;
        };
        let name = item
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("?")
            .to_owned();
        // Absent until the program first runs with stats on.
        let run_time_ns = number(item.get("run_time_ns")).unwrap_or(0);
        let run_cnt = number(item.get("run_cnt")).unwrap_or(0);
        progs.insert(
            id,
            Prog {
                name,
                run_time_ns,
                run_cnt,
            },
        );
    }
    Ok(progs)
}

/// `prog_id` of every BPF program or link fd `pid` holds (its programs, attached or not).
pub fn owned_programs(pid: u32) -> BTreeSet<u32> {
    fdinfos(pid)
        .iter()
        .filter_map(|info| fdinfo_field(info, "prog_id"))
        .collect()
}

/// Programs `pid` has attached: through BPF links it holds, or through perf-event fds
/// (`bpftool perf show`). Used to know a peer tracer is really tracing before load starts.
pub fn attached_programs(pid: u32) -> Result<BTreeSet<u32>> {
    let mut ids = linked_programs(pid);
    let mut cmd = command("bpftool");
    cmd.args(["perf", "show", "--json"]);
    let out = sys::output(&mut cmd)?;
    sys::check(&cmd, out.status)?;
    let text = String::from_utf8_lossy(&out.stdout);
    if text.trim().is_empty() {
        return Ok(ids);
    }
    let doc: Value =
        serde_json::from_str(&text).map_err(|err| anyhow!("`{}`: {err}", show(&cmd)))?;
    let Some(items) = doc.as_array() else {
        bail!("`{}` did not print a JSON array", show(&cmd));
    };
    for item in items {
        if number(item.get("pid")) == Some(u64::from(pid))
            && let Some(id) = number(item.get("prog_id")).and_then(|id| u32::try_from(id).ok())
        {
            ids.insert(id);
        }
    }
    Ok(ids)
}

/// Programs attached through a BPF link that `pid` holds (aya and libbpf attach this way):
/// cheap, only `/proc/<pid>/fdinfo`.
pub fn linked_programs(pid: u32) -> BTreeSet<u32> {
    fdinfos(pid)
        .iter()
        .filter(|info| fdinfo_field(info, "link_type").is_some())
        .filter_map(|info| fdinfo_field(info, "prog_id"))
        .collect()
}

/// Tracepoints `pid` has programs attached to through BPF links (the `tp_name` of its perf
/// links' fdinfo), or `None` when it holds links but the kernel names none of them (before
/// Linux 6.14, which added `tp_name`).
pub fn attached_tracepoints(pid: u32) -> Option<BTreeSet<String>> {
    tracepoint_names(&fdinfos(pid))
}

fn tracepoint_names(infos: &[String]) -> Option<BTreeSet<String>> {
    let links: Vec<&String> = infos
        .iter()
        .filter(|info| fdinfo_field(info, "link_type").is_some())
        .collect();
    let names: BTreeSet<String> = links
        .iter()
        .filter_map(|info| fdinfo_text(info, "tp_name"))
        .map(str::to_owned)
        .collect();
    (names.is_empty() == links.is_empty()).then_some(names)
}

/// A tracepoint of the `syscalls` (`sys_enter_*`, `sys_exit_*`) or `raw_syscalls` (`sys_enter`,
/// `sys_exit`) families: a program on any of them puts every task of the host on the slow
/// syscall path.
pub fn is_syscall_tracepoint(tp_name: &str) -> bool {
    ["sys_enter", "sys_exit"]
        .iter()
        .any(|p| tp_name == *p || tp_name.starts_with(&format!("{p}_")))
}

fn fdinfos(pid: u32) -> Vec<String> {
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return Vec::new();
    };
    dir.filter_map(|entry| fs::read_to_string(entry.ok()?.path()).ok())
        .collect()
}

/// A numeric `key:\tvalue` line of an fdinfo file.
fn fdinfo_field(info: &str, key: &str) -> Option<u32> {
    info.lines().find_map(|line| {
        let (k, v) = line.split_once(':')?;
        if k.trim() != key {
            return None;
        }
        // link_type is a word (`perf`): report it as present with value 0.
        Some(v.trim().parse().unwrap_or(0))
    })
}

/// A `key:\tvalue` line of an fdinfo file, as text.
fn fdinfo_text<'a>(info: &'a str, key: &str) -> Option<&'a str> {
    info.lines().find_map(|line| {
        let (k, v) = line.split_once(':')?;
        (k.trim() == key).then(|| v.trim())
    })
}

/// Counter increase of each program between two [`programs`] snapshots, for the programs in
/// `ids` (a program loaded after `before` counts from zero).
pub fn deltas(
    before: &BTreeMap<u32, Prog>,
    after: &BTreeMap<u32, Prog>,
    ids: &BTreeSet<u32>,
) -> Vec<Prog> {
    ids.iter()
        .filter_map(|id| {
            let now = after.get(id)?;
            let (t0, c0) = before
                .get(id)
                .map_or((0, 0), |p| (p.run_time_ns, p.run_cnt));
            Some(Prog {
                name: now.name.clone(),
                run_time_ns: now.run_time_ns.saturating_sub(t0),
                run_cnt: now.run_cnt.saturating_sub(c0),
            })
        })
        .collect()
}

/// Programs not in `ours` that ran during the window: other tracers on the machine (a test
/// running in parallel), whose cost lands on every row alike and makes numbers noisier.
pub fn foreign_active(
    before: &BTreeMap<u32, Prog>,
    after: &BTreeMap<u32, Prog>,
    ours: &BTreeSet<u32>,
) -> Vec<String> {
    after
        .iter()
        .filter(|(id, _)| !ours.contains(id))
        .filter(|(id, p)| {
            let c0 = before.get(id).map_or(0, |b| b.run_cnt);
            p.run_cnt > c0
        })
        .map(|(_, p)| p.name.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_bpftool_prog_show() {
        let text = r#"[{"id":640,"type":"tracepoint","name":"nw_set_state","run_time_ns":29635,"run_cnt":10},{"id":641,"type":"tracepoint","name":"nw_retransmit"}]"#;
        let progs = parse_programs(text).unwrap();
        assert_eq!(progs[&640].run_cnt, 10);
        assert_eq!(progs[&640].run_time_ns, 29635);
        assert_eq!(progs[&641].run_cnt, 0);
        assert_eq!(progs[&641].name, "nw_retransmit");
    }

    #[test]
    fn deltas_count_from_the_first_snapshot() {
        let p = |t, c| Prog {
            name: "p".into(),
            run_time_ns: t,
            run_cnt: c,
        };
        let before = BTreeMap::from([(1, p(100, 1))]);
        let after = BTreeMap::from([(1, p(400, 4)), (2, p(50, 5)), (3, p(9, 9))]);
        let ids = BTreeSet::from([1, 2]);
        let d = deltas(&before, &after, &ids);
        assert_eq!(d, vec![p(300, 3), p(50, 5)]);
        assert_eq!(foreign_active(&before, &after, &ids), vec!["p".to_owned()]);
    }

    #[test]
    fn reads_fdinfo_fields() {
        let info = "pos:\t0\nflags:\t02000000\nlink_type:\tperf\nprog_id:\t655\n";
        assert_eq!(fdinfo_field(info, "prog_id"), Some(655));
        assert_eq!(fdinfo_field(info, "link_type"), Some(0));
        assert_eq!(fdinfo_field(info, "prog_type"), None);
    }

    #[test]
    fn names_attached_tracepoints() {
        let link = |tp: &str| {
            format!(
                "pos:\t0\nlink_type:\tperf\nprog_id:\t3636\ntp_name:\t{tp}\nevent_type:\ttracepoint\n"
            )
        };
        let map = "pos:\t0\nmap_type:\t27\n".to_owned();
        let infos = vec![
            link("inet_sock_set_state"),
            map.clone(),
            link("sys_exit_accept4"),
        ];
        let names = tracepoint_names(&infos).unwrap();
        assert_eq!(
            names.into_iter().collect::<Vec<_>>(),
            ["inet_sock_set_state", "sys_exit_accept4"]
        );
        // Links, but a kernel that does not name their tracepoints: unknown, not "none".
        let old = vec!["link_type:\tperf\nprog_id:\t1\n".to_owned()];
        assert_eq!(tracepoint_names(&old), None);
        // No link at all: nothing attached.
        assert_eq!(tracepoint_names(&[map]), Some(BTreeSet::new()));

        assert!(is_syscall_tracepoint("sys_exit_accept4"));
        assert!(is_syscall_tracepoint("sys_enter"));
        assert!(!is_syscall_tracepoint("inet_sock_set_state"));
        assert!(!is_syscall_tracepoint("sys_exitx"));
    }
}
