//! Running netwatch under test: start it, know when its programs are attached, stop it, and
//! read back its JSON events and its stderr summary.
#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::{
    fs,
    io::{BufRead as _, BufReader},
    net::IpAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex, mpsc},
    time::Duration,
};

use netwatch_tests::{netwatch_bin, wait_with_timeout};
use serde_json::Value;

/// What netwatch prints on stderr once every program is attached.
pub const ATTACHED_MARKER: &str = "netwatch: tracing";

/// A running `netwatch`, stdout to a file (so a stopped reader never blocks on a pipe), stderr
/// collected by a thread.
pub struct Tracer {
    child: Child,
    stdout: PathBuf,
    stderr: Arc<Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

/// What a stopped tracer left behind.
pub struct Finished {
    /// Everything netwatch printed on stdout.
    pub stdout: String,
    /// stdout parsed as JSON lines (empty when it is not JSON lines, e.g. a report).
    pub events: Vec<Value>,
    pub stderr: String,
    pub produced: u64,
    pub delivered: u64,
    pub lost: u64,
}

impl Tracer {
    /// Starts `netwatch <args>` and waits (at most 60 s) until it says its programs are
    /// attached; panics with its stderr if it exits or never says so.
    pub fn start(args: &[&str]) -> Tracer {
        Self::start_with(args, |_| {})
    }

    /// Like [`Tracer::start`], with a chance to change the command (env, wrapper).
    pub fn start_with(args: &[&str], adjust: impl FnOnce(&mut Command)) -> Tracer {
        let dir = std::env::temp_dir().join(format!(
            "netwatch-test-{}-{}",
            std::process::id(),
            netwatch_tests::unique_port()
        ));
        fs::create_dir_all(&dir).expect("temp dir");
        let stdout = dir.join("stdout");
        let file = fs::File::create(&stdout).expect("stdout file");
        let mut cmd = Command::new(netwatch_bin());
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(Stdio::piped());
        adjust(&mut cmd);
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        let stderr_pipe = child.stderr.take().expect("piped");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let reader = {
            let stderr = Arc::clone(&stderr);
            std::thread::spawn(move || {
                let mut tx = Some(tx);
                for line in BufReader::new(stderr_pipe).lines() {
                    let Ok(line) = line else { break };
                    if line.starts_with(ATTACHED_MARKER)
                        && let Some(tx) = tx.take()
                    {
                        let _ = tx.send(());
                    }
                    stderr.lock().unwrap().push(line);
                }
            })
        };
        let mut tracer = Tracer {
            child,
            stdout,
            stderr,
            reader: Some(reader),
        };
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(()) => tracer,
            Err(_) => {
                let _ = tracer.child.kill();
                let status = tracer.child.wait();
                panic!(
                    "netwatch {args:?} did not report attaching ({status:?}); stderr:\n{}",
                    tracer.stderr_text()
                );
            }
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child, which has not been reaped yet.
        let ret = unsafe { libc::kill(self.pid(), sig) };
        assert_eq!(ret, 0, "kill({}, {sig})", self.pid());
    }

    fn stderr_text(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    /// SIGTERM, wait (at most 30 s), parse everything it wrote.
    pub fn stop(self) -> Finished {
        self.signal(libc::SIGTERM);
        self.wait_exit()
    }

    /// Waits for a tracer that stops by itself (`--duration`).
    pub fn wait_exit(mut self) -> Finished {
        let status = wait_with_timeout(&mut self.child, 30);
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        let stderr = self.stderr_text();
        assert!(
            status.success(),
            "netwatch exited with {status}; stderr:\n{stderr}"
        );
        let text = fs::read_to_string(&self.stdout).expect("read stdout");
        let _ = fs::remove_dir_all(self.stdout.parent().expect("dir"));
        let events = if text.starts_with("{\n") {
            Vec::new() // one pretty-printed document (a report), not JSON lines
        } else {
            json_lines(&text)
        };
        let field = |name: &str| -> u64 {
            let key = format!("{name}=");
            stderr
                .split(|c: char| c.is_whitespace() || c == '(' || c == ')')
                .find_map(|w| w.strip_prefix(&key))
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no {key} in netwatch's stderr:\n{stderr}"))
        };
        Finished {
            stdout: text,
            produced: field("produced"),
            delivered: field("delivered"),
            lost: field("lost"),
            events,
            stderr,
        }
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Parses JSON lines, panicking with the line number of one that is not JSON.
pub fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("line {} is not JSON ({e}): {l}", i + 1))
        })
        .collect()
}

/// The traffic driver, built by cargo for this package's integration tests.
pub fn tcpdrive() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_tcpdrive"))
}

/// `addr:port`, with brackets for IPv6 (also how netwatch keys destinations).
pub fn endpoint(addr: IpAddr, port: u16) -> String {
    match addr {
        IpAddr::V4(a) => format!("{a}:{port}"),
        IpAddr::V6(a) => format!("[{a}]:{port}"),
    }
}

/// A private scratch directory, removed on drop.
pub struct Scratch(PathBuf);

impl Scratch {
    pub fn new(tag: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!(
            "netwatch-{tag}-{}-{}",
            std::process::id(),
            netwatch_tests::unique_port()
        ));
        fs::create_dir_all(&dir).expect("scratch dir");
        Scratch(dir)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Event field helpers over the JSON form.
pub fn ip(ev: &Value, field: &str) -> IpAddr {
    ev[field]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{field} is not an address in {ev}"))
}

pub fn port(ev: &Value, field: &str) -> u16 {
    ev[field]
        .as_u64()
        .unwrap_or_else(|| panic!("{field} missing in {ev}")) as u16
}

/// `OLD->NEW` of a state event, `kind` otherwise.
pub fn step(ev: &Value) -> String {
    if ev["kind"] == "state" {
        format!(
            "{}->{}",
            ev["old_state"].as_str().unwrap_or("?"),
            ev["new_state"].as_str().unwrap_or("?")
        )
    } else {
        ev["kind"].as_str().unwrap_or("?").to_string()
    }
}

/// The BPF programs currently loaded whose name is one of netwatch's.
pub fn netwatch_programs_loaded() -> Vec<String> {
    let out = Command::new("bpftool")
        .args(["prog", "show", "--json"])
        .output()
        .expect("bpftool");
    assert!(out.status.success(), "bpftool prog show failed");
    let progs: Value = serde_json::from_slice(&out.stdout).expect("bpftool JSON");
    progs
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|p| p["name"].as_str())
        .filter(|n| NETWATCH_PROGRAMS.contains(n))
        .map(str::to_string)
        .collect()
}

/// Every loaded BPF program as (id, name), from `bpftool prog show`.
pub fn loaded_programs() -> Vec<(u32, String)> {
    let out = Command::new("bpftool")
        .args(["prog", "show", "--json"])
        .output()
        .expect("bpftool");
    assert!(out.status.success(), "bpftool prog show failed");
    let progs: Value = serde_json::from_slice(&out.stdout).expect("bpftool JSON");
    progs
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|p| Some((p["id"].as_u64()? as u32, p["name"].as_str()?.to_string())))
        .collect()
}

/// The BPF program and map ids a process holds file descriptors for, from
/// `/proc/<pid>/fdinfo` (`prog_id:` / `map_id:` lines): exact even when other netwatch
/// instances run, which bpftool (without pid support here) cannot tell apart.
pub fn bpf_objects_of(pid: i32) -> (Vec<u32>, Vec<u32>) {
    let (mut progs, mut maps) = (Vec::new(), Vec::new());
    let dir = format!("/proc/{pid}/fdinfo");
    for entry in fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .flatten()
    {
        let Ok(text) = fs::read_to_string(entry.path()) else {
            continue;
        };
        for line in text.lines() {
            let id = |prefix: &str| {
                line.strip_prefix(prefix)
                    .and_then(|v| v.trim().parse().ok())
            };
            if let Some(id) = id("prog_id:") {
                progs.push(id);
            } else if let Some(id) = id("map_id:") {
                maps.push(id);
            }
        }
    }
    progs.sort_unstable();
    progs.dedup();
    maps.sort_unstable();
    maps.dedup();
    (progs, maps)
}

/// The names of netwatch's programs as the kernel shows them (at most 15 characters).
pub const NETWATCH_PROGRAMS: &[&str] = &[
    "nw_set_state",
    "nw_retransmit",
    "nw_synack_rtx",
    "nw_recv_reset",
    "nw_send_reset",
    "nw_destroy_sock",
    "nw_accept",
];
