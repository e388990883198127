//! Child processes with bounded waits.
//!
//! Every wait in these tests has a bound: a test that hangs tells nobody anything, a test that
//! fails after N seconds with what the child printed tells what went wrong.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long [`spawn_ready`] / [`ReadyChild::spawn`] wait for the `READY <pid>` line.
pub const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// A server started with [`ReadyChild::spawn`]: it has printed `READY <pid>`, so it is
/// listening, and its stdout keeps being collected by a thread so it never blocks on a full pipe.
///
/// Why a struct and not just a `Child`: it kills and reaps the process on drop, so a test that
/// panics half-way does not leave a server running (and holding its network namespace alive).
pub struct ReadyChild {
    child: Child,
    pid: u32,
    lines: Arc<Mutex<Vec<String>>>,
    reader: Option<JoinHandle<()>>,
}

impl ReadyChild {
    /// Spawns `cmd` with stdout piped (stdin null, stderr inherited so it shows in test output)
    /// and waits up to [`READY_TIMEOUT`] for its `READY <pid>` line; panics (after killing it)
    /// with what it printed if it does not come.
    pub fn spawn(cmd: Command) -> ReadyChild {
        let (child, pid, lines, reader) = spawn_ready_parts(cmd, true);
        ReadyChild {
            child,
            pid,
            lines,
            reader: Some(reader),
        }
    }

    /// Like [`ReadyChild::spawn`] but without waiting for a `READY` line: for a client that
    /// runs in the background (e.g. `tcpdrive send-slow` while the test changes nft rules),
    /// with its stdout collected and kill-on-drop. `pid()` is then the `Child`'s pid.
    pub fn spawn_background(cmd: Command) -> ReadyChild {
        let (child, pid, lines, reader) = spawn_ready_parts(cmd, false);
        ReadyChild {
            child,
            pid,
            lines,
            reader: Some(reader),
        }
    }

    /// The pid the program reported in its `READY` line. With [`crate::NetPair::exec`] this is
    /// also the `Child`'s pid, since `ip netns exec` execs the program.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The underlying child, e.g. to send it a signal.
    pub fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }

    /// Every stdout line seen so far (including the `READY` line). Complete only after
    /// [`ReadyChild::wait`] returned.
    pub fn stdout_lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// Waits (bounded, see [`wait_with_timeout`]) for the process to exit and for its stdout to
    /// be fully read, so that [`ReadyChild::stdout_lines`] is complete afterwards.
    pub fn wait(&mut self, secs: u64) -> ExitStatus {
        let status = wait_with_timeout(&mut self.child, secs);
        if let Some(reader) = self.reader.take() {
            // The pipe's write end closes when the process exits, unless it passed stdout to
            // its own children; the thread is not joined then rather than hanging.
            let deadline = Instant::now() + Duration::from_secs(2);
            while !reader.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            if reader.is_finished() {
                let _ = reader.join();
            }
        }
        status
    }

    /// Kills the process (SIGKILL) if it is still running and reaps it. For servers that run
    /// until killed (`tcpdrive serve-forever`).
    pub fn kill(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

impl Drop for ReadyChild {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Spawns `cmd` with stdout piped, waits (at most 10 s; then kills it and panics with what it
/// printed) for a line `READY <pid>`, and returns the child and that pid. A thread keeps
/// draining stdout afterwards so the child never blocks writing to it.
///
/// Why: a test must know a server is listening before starting the client, without sleeping.
/// The returned `Child` is NOT killed on drop; prefer [`ReadyChild::spawn`] for that.
pub fn spawn_ready(cmd: Command) -> (Child, u32) {
    let (child, pid, _lines, _reader) = spawn_ready_parts(cmd, true);
    (child, pid)
}

fn spawn_ready_parts(
    mut cmd: Command,
    wait_ready: bool,
) -> (Child, u32, Arc<Mutex<Vec<String>>>, JoinHandle<()>) {
    cmd.stdin(Stdio::null()).stdout(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot spawn {cmd:?}: {e}"));
    let stdout = child.stdout.take().expect("stdout is piped");
    let lines = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = mpsc::channel::<u32>();
    let reader = {
        let lines = Arc::clone(&lines);
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(pid) = line
                    .strip_prefix("READY ")
                    .and_then(|p| p.trim().parse().ok())
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(pid);
                }
                lines.lock().unwrap().push(line);
            }
        })
    };
    if !wait_ready {
        let pid = child.id();
        return (child, pid, lines, reader);
    }
    match rx.recv_timeout(READY_TIMEOUT) {
        Ok(pid) => (child, pid, lines, reader),
        Err(mpsc::RecvTimeoutError::Timeout) => {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{cmd:?} did not print READY within {READY_TIMEOUT:?}; stdout so far: {:?}",
                lines.lock().unwrap()
            );
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            // stdout closed without READY: the program exited (or closed stdout).
            let status = wait_with_timeout(&mut child, 5);
            let _ = reader.join();
            panic!(
                "{cmd:?} exited ({status}) without printing READY; stdout: {:?}",
                lines.lock().unwrap()
            );
        }
    }
}

/// Waits for `child` to exit, at most `secs` seconds; when the bound passes it kills the child
/// (SIGKILL), reaps it and panics. Why: `Child::wait` has no timeout, and a stuck traffic
/// driver must fail the test, not hang it.
pub fn wait_with_timeout(child: &mut Child, secs: u64) -> ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut pause = Duration::from_millis(1);
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return status,
            Ok(None) => {}
            Err(e) => panic!("waiting for pid {}: {e}", child.id()),
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("pid {} did not exit within {secs} s; killed it", child.id());
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

/// Runs `cmd` to completion with stdout and stderr captured (stdin null), at most `secs`
/// seconds; past that it kills the process and panics with what it printed.
/// Why: `Command::output` has no timeout.
pub fn output_with_timeout(cmd: Command, secs: u64) -> Output {
    output_with_input(cmd, None, secs)
}

/// [`output_with_timeout`] with `input` written to the child's stdin (then closed).
pub(crate) fn output_with_input(mut cmd: Command, input: Option<&[u8]>, secs: u64) -> Output {
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot spawn {cmd:?}: {e}"));
    let writer = input.map(|bytes| {
        let mut stdin = child.stdin.take().expect("piped");
        let bytes = bytes.to_vec();
        // A thread, so a child that does not read its stdin cannot block us past the bound.
        std::thread::spawn(move || {
            let _ = std::io::Write::write_all(&mut stdin, &bytes);
        })
    });
    drop(writer);
    let out = Drain::start(child.stdout.take().expect("piped"));
    let err = Drain::start(child.stderr.take().expect("piped"));
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut pause = Duration::from_millis(1);
    let status = loop {
        if let Some(status) = child
            .try_wait()
            .unwrap_or_else(|e| panic!("waiting for {cmd:?}: {e}"))
        {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{cmd:?} did not finish within {secs} s; killed it.\nstdout: {}\nstderr: {}",
                String::from_utf8_lossy(&out.finish()),
                String::from_utf8_lossy(&err.finish())
            );
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: out.finish(),
        stderr: err.finish(),
    }
}

/// Reads a pipe to its end in a thread; `finish` waits a bounded time for the end (a grandchild
/// that inherited the pipe could keep it open forever) and returns what was read.
struct Drain {
    buf: Arc<Mutex<Vec<u8>>>,
    thread: JoinHandle<()>,
}

impl Drain {
    fn start<R: Read + Send + 'static>(mut r: R) -> Drain {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let thread = {
            let buf = Arc::clone(&buf);
            std::thread::spawn(move || {
                let mut chunk = [0u8; 8192];
                loop {
                    match r.read(&mut chunk) {
                        Ok(0) => break,
                        Ok(n) => buf.lock().unwrap().extend_from_slice(&chunk[..n]),
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(_) => break,
                    }
                }
            })
        };
        Drain { buf, thread }
    }

    fn finish(self) -> Vec<u8> {
        let deadline = Instant::now() + Duration::from_secs(2);
        while !self.thread.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
        if self.thread.is_finished() {
            let _ = self.thread.join();
        }
        std::mem::take(&mut *self.buf.lock().unwrap())
    }
}
