//! Running netwatch under test: start it, know when its programs are attached, stop it, and
//! read back its JSON events and its stderr summary. Shared by the integration tests and by
//! `vmcheck`, which runs the same checks inside a VM on another kernel.

use std::{
    fs,
    io::{BufRead as _, BufReader},
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex, mpsc},
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{netwatch_bin, wait_with_timeout};

/// What netwatch prints on stderr once every program is attached.
pub const ATTACHED_MARKER: &str = "netwatch: tracing";

/// The ring-buffer size every live tracer under test gets unless its test sets one: 64 MiB,
/// 16 times netwatch's default. netwatch traces the whole host, and on a shared machine other
/// people's connection churn (a 200,000-connection test, a benchmark) can fill the default
/// ring while this test's tracer waits for a CPU: the test would then fail on events it never
/// made. The tests check what netwatch counts; how long the default ring lasts at the churn
/// this machine drives is the benchmark's `lost` column.
pub const TEST_RING_SIZE: &str = "67108864";

/// The commands that trace live (and take `--ring-size`).
const LIVE_COMMANDS: [&str; 6] = ["trace", "life", "report", "top", "leaks", "serve"];

/// `args` with `--ring-size` [`TEST_RING_SIZE`] right after a live command that sets none
/// (before any filter words, which would otherwise take it).
pub fn with_test_ring(args: &[&str]) -> Vec<String> {
    let mut out: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let live = args.first().is_some_and(|c| LIVE_COMMANDS.contains(c));
    if live && !args.iter().any(|a| a.starts_with("--ring-size")) {
        out.splice(
            1..1,
            ["--ring-size".to_string(), TEST_RING_SIZE.to_string()],
        );
    }
    out
}

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
    /// stdout parsed as JSON lines (empty when it is not JSON lines: a report, text).
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
            crate::unique_port()
        ));
        fs::create_dir_all(&dir).expect("temp dir");
        let stdout = dir.join("stdout");
        let file = fs::File::create(&stdout).expect("stdout file");
        let mut cmd = Command::new(netwatch_bin());
        cmd.args(with_test_ring(args))
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
                    let attached = line.starts_with(ATTACHED_MARKER);
                    // Kept before the start is reported, so the caller finds the line.
                    stderr.lock().unwrap().push(line);
                    if attached && let Some(tx) = tx.take() {
                        let _ = tx.send(());
                    }
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

    /// The file netwatch's stdout goes to (unless [`Tracer::start_with`] redirected it): to
    /// follow its output while it runs.
    pub fn stdout_path(&self) -> &std::path::Path {
        &self.stdout
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child, which has not been reaped yet.
        let ret = unsafe { libc::kill(self.pid(), sig) };
        assert_eq!(ret, 0, "kill({}, {sig})", self.pid());
    }

    /// Every line netwatch has written to stderr so far.
    pub fn stderr_lines(&self) -> Vec<String> {
        self.stderr.lock().unwrap().clone()
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
        // One pretty-printed document (a report), or text (a header first): not JSON lines.
        let events = if text.starts_with("{\n") || !(text.is_empty() || text.starts_with('{')) {
            Vec::new()
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

impl Tracer {
    /// The complete lines netwatch has written to stdout so far (a line still being written,
    /// without its newline, is left out).
    pub fn stdout_lines_so_far(&self) -> Vec<String> {
        let text = fs::read_to_string(&self.stdout).unwrap_or_default();
        let complete = match text.rfind('\n') {
            Some(end) => &text[..end],
            None => "",
        };
        complete
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect()
    }

    /// Polls stdout every 100 ms, at most `bound`, until a complete line parses as JSON and
    /// satisfies `pred`; returns that line (the first such). Panics with `what`, everything
    /// netwatch printed so far and its stderr when the bound passes or netwatch exits first.
    pub fn wait_for_json_line(
        &mut self,
        what: &str,
        bound: Duration,
        mut pred: impl FnMut(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + bound;
        let mut seen = 0;
        // Set once netwatch has exited: the file is then complete, and is read one last time
        // before giving up (it may have written the line just before exiting).
        let mut exited = false;
        loop {
            let lines = self.stdout_lines_so_far();
            for line in &lines[seen.min(lines.len())..] {
                let v: serde_json::Value = serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("netwatch printed a non-JSON line ({e}): {line}"));
                if pred(&v) {
                    return v;
                }
            }
            seen = lines.len();
            if !exited && matches!(self.child.try_wait(), Ok(Some(_))) {
                exited = true;
                continue;
            }
            if exited || Instant::now() >= deadline {
                let status = if exited {
                    format!("{:?}", self.child.try_wait())
                } else {
                    "still running".to_string()
                };
                panic!(
                    "no line with {what} within {bound:?} (netwatch {status}); stdout:\n{}\nstderr:\n{}",
                    lines.join("\n"),
                    self.stderr_text()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGTERM, wait (at most 30 s), and return the exit status, stdout and stderr as they
    /// are: for subcommands that print no event summary (`netwatch leaks`).
    pub fn stop_output(mut self) -> (ExitStatus, String, String) {
        self.signal(libc::SIGTERM);
        let status = wait_with_timeout(&mut self.child, 30);
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        let text = fs::read_to_string(&self.stdout).expect("read stdout");
        let _ = fs::remove_dir_all(self.stdout.parent().expect("dir"));
        (status, text, self.stderr_text())
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        // Also after a panic: a failing test printed what it needed from stdout already.
        if let Some(dir) = self.stdout.parent() {
            let _ = fs::remove_dir_all(dir);
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

/// A private scratch directory, removed on drop.
pub struct Scratch(PathBuf);

impl Scratch {
    pub fn new(tag: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!(
            "netwatch-{tag}-{}-{}",
            std::process::id(),
            crate::unique_port()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_commands_get_the_test_ring_before_their_filter() {
        assert_eq!(
            with_test_ring(&["trace", "--json", "dst", "10.0.0.1"]),
            [
                "trace",
                "--ring-size",
                TEST_RING_SIZE,
                "--json",
                "dst",
                "10.0.0.1"
            ]
        );
        // A test's own ring stays; commands that do not trace are left alone.
        let own = ["report", "--ring-size", "4096"];
        assert_eq!(with_test_ring(&own), own);
        let own = ["life", "--ring-size=8192"];
        assert_eq!(with_test_ring(&own), own);
        assert_eq!(with_test_ring(&["doctor"]), ["doctor"]);
        assert_eq!(with_test_ring(&[]), Vec::<String>::new());
    }
}
