//! Child processes of the bench, and Ctrl-C.
//!
//! A tracer left running after the bench keeps programs attached to every TCP state change on
//! the machine, and a forgotten churn server keeps a namespace alive, so:
//! - every child is owned by a [`Proc`] guard that kills and reaps it when dropped: an error
//!   (`?`) anywhere cleans up on the way out;
//! - Ctrl-C, SIGTERM and SIGHUP only set a flag ([`check_interrupted`]); every wait here polls
//!   it and returns an error, so the guards (processes, namespaces, `bpf_stats_enabled`) run
//!   instead of xtask dying half-way;
//! - each child gets `PR_SET_PDEATHSIG = SIGKILL`, so even a `kill -9` of xtask takes its
//!   children (tracers included) with it.
//!
//! std has no signal or prctl API and xtask adds no crates: the two libc functions are declared
//! here (std links libc anyway).

use std::{
    ffi::{c_int, c_ulong},
    fs, io,
    io::{BufRead as _, BufReader, Read},
    os::unix::process::CommandExt as _,
    process::{Child, Command, ExitStatus, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};

use crate::sys::{self, fmt_duration, show};

/// How often waits look at the child, its output and the interrupt flag: short enough that
/// Ctrl-C feels immediate, long enough to cost nothing next to the workload.
const POLL: Duration = Duration::from_millis(20);
/// How often to look once the child has closed both its pipes, which it does as it exits: the
/// moment it ends is then known within a millisecond (it is a measurement for `dd`'s wall time).
const EXITING_POLL: Duration = Duration::from_millis(1);

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

const SIGHUP: c_int = 1;
const SIGINT: c_int = 2;
const SIGKILL: c_int = 9;
const SIGTERM: c_int = 15;
const PR_SET_PDEATHSIG: c_int = 1;

unsafe extern "C" {
    fn signal(signum: c_int, handler: extern "C" fn(c_int)) -> usize;
    fn prctl(option: c_int, ...) -> c_int;
}

extern "C" fn on_signal(_: c_int) {
    // Only an atomic store: the one thing that is async-signal-safe and all that is needed.
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Turns SIGINT/SIGTERM/SIGHUP into a flag that [`check_interrupted`] reports, so the bench
/// unwinds through its guards instead of dying with namespaces and sysctls left behind.
pub fn catch_interrupts() {
    for sig in [SIGINT, SIGTERM, SIGHUP] {
        // SAFETY: `on_signal` only stores to an atomic, which is async-signal-safe.
        unsafe {
            signal(sig, on_signal);
        }
    }
}

/// An error once Ctrl-C (or SIGTERM/SIGHUP) arrived.
pub fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted; stopping every child process and deleting the namespaces");
    }
    Ok(())
}

/// Makes the kernel SIGKILL the child when xtask dies, however it dies.
fn die_with_parent(cmd: &mut Command) {
    // SAFETY: the closure only calls prctl, which is async-signal-safe, between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if prctl(PR_SET_PDEATHSIG, SIGKILL as c_ulong) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

#[derive(Debug, Clone)]
pub struct Line {
    pub stream: Stream,
    pub text: String,
}

/// What a child left behind when it ended.
pub struct Exit {
    pub status: ExitStatus,
    /// utime + stime in clock ticks over the whole life of the process, read while it was a
    /// zombie (after its last instruction, before it is reaped), so nothing it did is missed.
    pub cpu_ticks: Option<u64>,
    /// Its main thread's time on a CPU and waiting for one, in ns (`/proc/<pid>/schedstat`,
    /// read while it was a zombie too): what `cpu_ticks` says at 1 ns resolution, and what the
    /// rest of the machine cost it in waiting.
    pub sched: Option<Sched>,
    /// When it was first seen ended (within [`EXITING_POLL`] of its exit when its pipes closed
    /// as it exited).
    pub ended: Instant,
}

/// `/proc/<pid>/schedstat`: time on a CPU, and time runnable but waiting for one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sched {
    pub on_cpu_ns: u64,
    pub waiting_ns: u64,
}

/// A child process that is killed and reaped when dropped. Its stderr (and stdout, when
/// captured) is read line by line on helper threads, so a chatty child never blocks on a full
/// pipe and every wait can be bounded.
pub struct Proc {
    name: String,
    command_line: String,
    child: Child,
    lines: mpsc::Receiver<Line>,
    seen: Vec<Line>,
    reaped: bool,
}

impl Proc {
    /// Starts `cmd` with stdin from /dev/null, stderr captured, and stdout captured or thrown
    /// away (`> /dev/null`, as a user would run a tracer whose output is not the point).
    pub fn spawn(name: &str, mut cmd: Command, capture_stdout: bool) -> Result<Proc> {
        check_interrupted()?;
        cmd.stdin(Stdio::null()).stderr(Stdio::piped());
        cmd.stdout(if capture_stdout {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        die_with_parent(&mut cmd);
        let mut child = cmd.spawn().map_err(|err| sys::not_started(&cmd, err))?;
        let (tx, rx) = mpsc::channel();
        if let Some(out) = child.stdout.take() {
            forward(out, Stream::Stdout, tx.clone());
        }
        if let Some(err) = child.stderr.take() {
            forward(err, Stream::Stderr, tx);
        }
        Ok(Proc {
            name: name.to_owned(),
            command_line: show(&cmd),
            child,
            lines: rx,
            seen: Vec::new(),
            reaped: false,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Every line read so far.
    pub fn lines(&self) -> &[Line] {
        &self.seen
    }

    /// The last line on `stream` that satisfies `pred`.
    pub fn last_line(&self, stream: Stream, pred: impl Fn(&str) -> bool) -> Option<&str> {
        self.seen
            .iter()
            .rev()
            .find(|l| l.stream == stream && pred(&l.text))
            .map(|l| l.text.as_str())
    }

    /// Takes what the reader threads have sent, waiting at most `wait` for the first line.
    fn pump(&mut self, wait: Duration) {
        match self.lines.recv_timeout(wait) {
            Ok(line) => self.seen.push(line),
            Err(mpsc::RecvTimeoutError::Timeout) => return,
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                // Both pipes closed: nothing more will come, and the child is most likely
                // exiting; look again soon, without spinning.
                thread::sleep(wait.min(EXITING_POLL));
                return;
            }
        }
        while let Ok(line) = self.lines.try_recv() {
            self.seen.push(line);
        }
    }

    /// Ended but not reaped yet (we never reap before reading what we need from /proc).
    fn is_zombie(&self) -> bool {
        !self.reaped && proc_state(self.pid()).is_none_or(|s| s == 'Z' || s == 'X')
    }

    /// The last lines of output, for an error message.
    fn tail(&self) -> String {
        let start = self.seen.len().saturating_sub(8);
        let lines: Vec<&str> = self.seen[start..].iter().map(|l| l.text.as_str()).collect();
        if lines.is_empty() {
            " (it printed nothing)".to_owned()
        } else {
            format!("; its last output:\n    {}", lines.join("\n    "))
        }
    }

    /// Waits until `ready` says yes, at most `timeout`; an error if the child ends first, the
    /// time runs out, or Ctrl-C arrives. `ready` sees every line read so far.
    pub fn wait_until(
        &mut self,
        what: &str,
        timeout: Duration,
        mut ready: impl FnMut(&Proc) -> Result<bool>,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if ready(self)? {
                return Ok(());
            }
            check_interrupted()?;
            if self.is_zombie() {
                // It may have printed what we wait for just before exiting: read ALL the rest
                // of its output (both pipes, to their end), then look once more. One `pump`
                // is not enough: it can return with stderr's last line while stdout's is
                // still on its way.
                self.drain_to_eof();
                if ready(self)? {
                    return Ok(());
                }
                bail!("`{}` ended before {what}{}", self.command_line, self.tail());
            }
            if Instant::now() >= deadline {
                bail!(
                    "`{}`: no {what} within {}{}",
                    self.command_line,
                    fmt_duration(timeout),
                    self.tail()
                );
            }
            self.pump(POLL);
        }
    }

    /// Waits for a line on `stream` that satisfies `pred`, and returns it.
    pub fn wait_line(
        &mut self,
        stream: Stream,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Result<String> {
        self.wait_until(what, timeout, |p| Ok(p.last_line(stream, &pred).is_some()))?;
        Ok(self
            .last_line(stream, &pred)
            .expect("just found")
            .to_owned())
    }

    /// Sends `sig` (a name `kill` knows: `TERM`, `INT`). Only while not reaped, so the pid
    /// cannot belong to anybody else yet.
    pub fn signal(&self, sig: &str) -> Result<()> {
        if self.reaped {
            return Ok(());
        }
        let mut kill = sys::command("kill");
        kill.args(["-s", sig, &self.pid().to_string()]);
        let out = sys::output(&mut kill)?;
        // A child that just ended makes kill fail: that is fine, `finish` notices.
        if !out.status.success() && !self.is_zombie() {
            bail!(
                "`{}` failed: {}",
                show(&kill),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    /// Waits at most `timeout` for the child to end by itself, then reaps it; its CPU time is
    /// read before reaping. On timeout the child is killed and that is an error.
    pub fn finish(&mut self, timeout: Duration) -> Result<Exit> {
        let deadline = Instant::now() + timeout;
        while !self.is_zombie() {
            check_interrupted()?;
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                self.reaped = true;
                bail!(
                    "`{}` did not end within {}; killed it{}",
                    self.command_line,
                    fmt_duration(timeout),
                    self.tail()
                );
            }
            self.pump(POLL);
        }
        let ended = Instant::now();
        let cpu_ticks = cpu_ticks(self.pid());
        let sched = schedstat(self.pid());
        let status = self.child.wait()?;
        self.reaped = true;
        self.drain_to_eof();
        Ok(Exit {
            status,
            cpu_ticks,
            sched,
            ended,
        })
    }

    /// Once the child has ended: reads every line still on its way, until both reader
    /// threads saw the end of their pipe. Bounded (2 s), for a grandchild that kept a pipe open.
    fn drain_to_eof(&mut self) {
        let drain_until = Instant::now() + Duration::from_secs(2);
        loop {
            match self.lines.recv_timeout(POLL) {
                Ok(line) => self.seen.push(line),
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() >= drain_until => break,
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
        }
    }

    /// Signals the child, then [`finish`](Self::finish)es it.
    pub fn stop(&mut self, sig: &str, timeout: Duration) -> Result<Exit> {
        self.signal(sig)?;
        self.finish(timeout)
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if !self.reaped {
            // SIGKILL: the kernel still detaches a killed tracer's programs (they live as long
            // as its file descriptors).
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Reads `from` line by line on a thread and sends each line (lossy UTF-8, without `\n`).
fn forward(from: impl Read + Send + 'static, stream: Stream, tx: mpsc::Sender<Line>) {
    thread::spawn(move || {
        let mut reader = BufReader::new(from);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => return,
                Ok(_) => {
                    let text = String::from_utf8_lossy(&buf).trim_end().to_owned();
                    if tx.send(Line { stream, text }).is_err() {
                        return;
                    }
                }
            }
        }
    });
}

/// The fields of `/proc/<pid>/stat` after the command name (which may contain spaces and
/// parentheses, hence the last `)`): index 0 is the state, 11 and 12 utime and stime.
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// The process state letter (`R`, `S`, `Z`, ...), or `None` when the pid is gone.
fn proc_state(pid: u32) -> Option<char> {
    stat_fields(pid)?.first()?.chars().next()
}

/// utime + stime of the whole process (all threads), in clock ticks.
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let fields = stat_fields(pid)?;
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Time on a CPU and waiting for one of `pid`'s main thread (`/proc/<pid>/schedstat`: ns on
/// the CPU, ns runnable on a run queue, timeslices); `None` without CONFIG_SCHED_INFO.
pub fn schedstat(pid: u32) -> Option<Sched> {
    parse_schedstat(&fs::read_to_string(format!("/proc/{pid}/schedstat")).ok()?)
}

fn parse_schedstat(text: &str) -> Option<Sched> {
    let mut fields = text.split_whitespace().map(str::parse::<u64>);
    Some(Sched {
        on_cpu_ns: fields.next()?.ok()?,
        waiting_ns: fields.next()?.ok()?,
    })
}

/// The peak resident set size (`VmHWM`), in KiB; gone once the process has exited.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Clock ticks per second for [`cpu_ticks`] (`getconf CLK_TCK`; 100 on Linux in practice).
pub fn clock_ticks_per_sec() -> u64 {
    sys::command("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8_lossy(&out.stdout).trim().parse().ok())
        .filter(|&hz| hz > 0)
        .unwrap_or(100)
}

/// Whether a process with this pid exists (for stale namespaces of earlier runs).
pub fn pid_alive(pid: u32) -> bool {
    fs::metadata(format!("/proc/{pid}")).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_cpu_and_rss() {
        let me = std::process::id();
        assert!(cpu_ticks(me).is_some());
        assert!(peak_rss_kib(me).unwrap_or(0) > 0);
        // The test harness's main thread may be sleeping (S) while this one runs.
        assert!(proc_state(me).is_some_and(|s| s != 'Z'));
    }

    #[test]
    fn reads_schedstat() {
        assert_eq!(
            parse_schedstat("885123456 19000000 412\n"),
            Some(Sched {
                on_cpu_ns: 885123456,
                waiting_ns: 19000000
            })
        );
        assert_eq!(parse_schedstat("885123456\n"), None);
        assert_eq!(parse_schedstat(""), None);
    }

    #[test]
    fn a_child_is_read_and_reaped() -> Result<()> {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo READY 1; echo oops >&2; exit 3"]);
        let mut p = Proc::spawn("sh", cmd, true)?;
        let line = p.wait_line(Stream::Stdout, "READY", Duration::from_secs(10), |l| {
            l.starts_with("READY")
        })?;
        assert_eq!(line, "READY 1");
        let exit = p.finish(Duration::from_secs(10))?;
        assert_eq!(exit.status.code(), Some(3));
        assert!(exit.cpu_ticks.is_some());
        // Ended but not yet reaped when read (present wherever CONFIG_SCHED_INFO is).
        if schedstat(std::process::id()).is_some() {
            assert!(exit.sched.is_some());
        }
        assert!(p.last_line(Stream::Stderr, |l| l == "oops").is_some());
        Ok(())
    }
}
