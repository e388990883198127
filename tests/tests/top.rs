//! `netwatch top`, the live view, as a person sees it: run in a real terminal (a detached tmux
//! session: `send-keys` types, `capture-pane` reads the screen) against a known workload in two
//! network namespaces, and with stdout redirected to a file (plain-text summaries).
//!
//! The workload: N orderly connections (the client closes first: N TIME_WAITs), a server that
//! leaks L accepted sockets in CLOSE_WAIT (its clients' L sockets become timewait sockets too),
//! and M connects refused. The screen must show exactly those counts, the leaking process by
//! pid, and agree with `ss` (sock_diag) in the namespaces; quitting must give the terminal back.
//!
//! Every test's netwatch sees only its own traffic, decided in the kernel: the client namespace
//! gets the ephemeral ports [`CLIENT_PORTS`] and netwatch is started with `-L`/`-D` admitting
//! only sockets whose both ports are those or the test's server ports.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Output},
    time::{Duration, Instant},
};

use crate::support::{Scratch, Tracer, eventually, tcpdrive};
use netwatch_tests::{
    NetPair, ReadyChild, Side, counter_delta, find_line, netwatch_bin, output_with_timeout,
    require_root, unique_port,
};

const N: u64 = 20;
const L: u64 = 5;
const M: u64 = 3;
/// Below every default ephemeral range and below [`unique_port`]'s 20000..60000, and apart from
/// the range other tests give their clients (61000-65535): no other traffic on this host has
/// both its ports in this test's sets.
const CLIENT_PORTS: (u16, u16) = (10000, 10999);

/// The test's traffic and nothing else: see the module comment.
fn own_traffic_only(pair: &NetPair, server_ports: &[u16]) -> Vec<String> {
    crate::support::own_traffic_only(pair, CLIENT_PORTS, server_ports, &[])
}

/// Starts `top --interval INTERVAL EXTRA...` on `pair`'s traffic to `server_ports`, its stdout
/// a file of `scratch`: no terminal, so plain summaries. The tracer, and the file's path.
fn top_to_file(
    scratch: &Scratch,
    pair: &NetPair,
    interval: &str,
    extra: &[String],
    server_ports: &[u16],
) -> (Tracer, PathBuf) {
    let mut args: Vec<String> = ["top", "--interval", interval].map(String::from).to_vec();
    args.extend_from_slice(extra);
    args.extend(own_traffic_only(pair, server_ports));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out_path = scratch.path("stdout");
    let file = fs::File::create(&out_path).expect("stdout file");
    let tracer = Tracer::start_with(&args, |cmd| {
        cmd.stdout(file);
    });
    (tracer, out_path)
}

/// The known workload's ports, and its leaking server (alive: its sockets stay in CLOSE_WAIT).
struct Workload {
    p_ok: u16,
    p_leak: u16,
    p_refused: u16,
    leak: Option<ReadyChild>,
}

impl Workload {
    fn ports() -> Workload {
        Workload {
            p_ok: unique_port(),
            p_leak: unique_port(),
            p_refused: unique_port(),
            leak: None,
        }
    }

    fn server_ports(&self) -> [u16; 3] {
        [self.p_ok, self.p_leak, self.p_refused]
    }

    /// Runs it to the end: N connections, L leaked, M refused. Returns the leaker's pid.
    fn run(&mut self, pair: &NetPair) -> u32 {
        let at = |p: u16| format!("{}:{p}", pair.server_v4());
        let client = |args: &[&str]| {
            let out = output_with_timeout(pair.exec(Side::Client, &tcpdrive(), args), 60);
            assert!(
                out.status.success(),
                "tcpdrive {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            out
        };

        let mut srv = ReadyChild::spawn(pair.exec(
            Side::Server,
            &tcpdrive(),
            &["serve", &at(self.p_ok), "--count", &N.to_string()],
        ));
        client(&["connect", &at(self.p_ok), "--count", &N.to_string()]);
        assert!(srv.wait(30).success());

        let leak = ReadyChild::spawn(pair.exec(
            Side::Server,
            &tcpdrive(),
            &["serve-leak", &at(self.p_leak), "--count", &L.to_string()],
        ));
        client(&["connect", &at(self.p_leak), "--count", &L.to_string()]);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !leak.stdout_lines().iter().any(|l| l.starts_with("LEAKING")) {
            assert!(Instant::now() < deadline, "serve-leak never said LEAKING");
            std::thread::sleep(Duration::from_millis(20));
        }
        let pid = leak.pid();
        self.leak = Some(leak);

        for _ in 0..M {
            let out = client(&["connect-expect-fail", &at(self.p_refused)]);
            assert!(
                find_line(&String::from_utf8_lossy(&out.stdout), "FAILED")
                    .is_some_and(|f| f[2] == "ECONNREFUSED")
            );
        }
        pid
    }
}

/// `ss -Htan state ...` line count in a namespace: sock_diag's view.
fn ss_count(pair: &NetPair, side: Side, states: &[&str]) -> u64 {
    let mut args = vec!["ss", "-Htan"];
    for s in states {
        args.extend(["state", s]);
    }
    pair.run(side, &args)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count() as u64
}

/// The number after `word` on the first line containing `line_marker` (table borders count
/// as spaces).
fn number_after(text: &str, line_marker: &str, word: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.contains(line_marker))?;
    let mut words = line
        .split(|c: char| c.is_whitespace() || c == '\u{2502}')
        .filter(|w| !w.is_empty());
    words.find(|w| *w == word)?;
    words.next()?.trim_start_matches('~').parse().ok()
}

/// The screen with every run of whitespace (and line break) made one space: a wrapped line
/// reads as one.
fn flat(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A tmux server of the test's own (`-L`), one 160x50 session, killed on drop.
struct Tmux {
    socket: String,
}

impl Tmux {
    /// Runs `script` with `sh` in a new detached session.
    fn start(script: &Path) -> Tmux {
        let t = Tmux {
            socket: format!("netwatch-top-{}-{}", std::process::id(), unique_port()),
        };
        let out = t.tmux(&[
            "new-session",
            "-d",
            "-x",
            "160",
            "-y",
            "50",
            "-s",
            "top",
            &format!("sh {}", script.display()),
        ]);
        assert!(
            out.status.success(),
            "tmux new-session: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        t
    }

    fn tmux(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new("tmux");
        cmd.arg("-L").arg(&self.socket).args(args);
        output_with_timeout(cmd, 10)
    }

    fn capture(&self) -> String {
        let out = self.tmux(&["capture-pane", "-p", "-t", "top"]);
        assert!(
            out.status.success(),
            "capture-pane: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Keys by tmux name (`q`, `Enter`, `C-c`).
    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", "top"];
        args.extend(keys);
        assert!(self.tmux(&args).status.success(), "send-keys {keys:?}");
    }

    /// Literal text.
    fn type_text(&self, text: &str) {
        assert!(
            self.tmux(&["send-keys", "-t", "top", "-l", text])
                .status
                .success()
        );
    }

    fn display(&self, format: &str) -> String {
        let out = self.tmux(&["display-message", "-p", "-t", "top", format]);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Polls the screen (every 100 ms, at most `secs`) until `done` holds; panics with the
    /// last screen and `what` otherwise. Returns the screen that satisfied it.
    fn wait_for(&self, what: &str, secs: u64, done: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let screen = self.capture();
            if done(&screen) {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "the screen never showed {what} within {secs} s; last screen:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.tmux(&["kill-server"]);
    }
}

/// Writes the script a tmux session runs: netwatch, then how it exited and the terminal's
/// line discipline afterwards (`icanon echo` once raw mode is left), then idles so the pane
/// stays readable.
fn session_script(scratch: &Scratch, netwatch_args: &[String]) -> PathBuf {
    let quoted: Vec<String> = netwatch_args.iter().map(|a| format!("'{a}'")).collect();
    let script = scratch.path("session.sh");
    fs::write(
        &script,
        format!(
            "'{}' {}\necho EXITED $?\necho TTY $(stty -a | tr ' ;' '\\n\\n' | grep -x -e icanon -e -icanon -e echo -e -echo)\nexec sleep 600\n",
            netwatch_bin().display(),
            quoted.join(" ")
        ),
    )
    .expect("session script");
    script
}

/// The session script printed how netwatch exited and, after it, the terminal's mode: the
/// `TTY` line comes a moment after `EXITED`, and a screen read between the two lacks it.
fn exited(screen: &str) -> bool {
    screen.contains("EXITED") && screen.lines().any(|l| l.starts_with("TTY"))
}

/// The view has taken the terminal and drawn a frame.
fn view_is_up(screen: &str) -> bool {
    screen.contains("netwatch top |") && screen.contains("q quit")
}

/// The view quit and gave the terminal back: the normal screen shows the shell's output after
/// netwatch, not a frame; cursor visible, alternate screen off, canonical mode and echo on.
fn assert_terminal_restored(t: &Tmux, screen: &str) {
    assert!(
        !view_is_up(screen),
        "the frame is still on screen:\n{screen}"
    );
    assert!(
        screen.contains("netwatch: tracing TCP events"),
        "the normal screen (with netwatch's start-up line) is not back:\n{screen}"
    );
    assert_eq!(
        t.display("#{alternate_on}"),
        "0",
        "still on the alternate screen"
    );
    assert_eq!(t.display("#{cursor_flag}"), "1", "cursor still hidden");
    assert!(
        screen.contains("TTY icanon echo"),
        "raw mode was not left:\n{screen}"
    );
}

#[test]
fn root_top_shows_the_workload_live_and_restores_the_terminal() {
    if !require_root("root_top_shows_the_workload_live_and_restores_the_terminal") {
        return;
    }
    let scratch = Scratch::new("tty");
    let pair = NetPair::new();
    let mut work = Workload::ports();
    let mut args: Vec<String> = vec!["top".into(), "--interval".into(), "500ms".into()];
    args.extend(own_traffic_only(&pair, &work.server_ports()));
    let t = Tmux::start(&session_script(&scratch, &args));
    t.wait_for("the live view", 60, view_is_up);

    let leaker_pid = work.run(&pair);
    let leaker = format!("tcpdrive[{leaker_pid}]");
    let server = pair.server_v4();

    // Everything the workload did, on one screen.
    let screen = t.wait_for("the workload's counts and the leaking process", 20, |s| {
        let f = flat(s);
        number_after(s, "STATES", "CLOSE_WAIT") == Some(L)
            && number_after(s, "STATES", "TIME_WAIT") == Some(N + L)
            && f.contains(&format!(
                "in all: {} connects, {} accepts, {} TIME_WAIT births",
                N + L + M,
                N + L,
                N + L
            ))
            && number_after(s, &leaker, &leaker) == Some(L)
            && f.contains(&format!(
                "Connect failures: {M} refused, 0 timed out, 0 aborted"
            ))
            && f.contains(&format!("Resets: {M} sent, {M} received"))
    });
    // The rows behind the totals.
    let f = flat(&screen);
    assert!(
        f.contains(&format!("{server}:{} {M} 0 0", work.p_refused)),
        "no refused row for {server}:{}:\n{screen}",
        work.p_refused
    );
    assert!(
        f.contains(&format!("{server}:{} {N} ", work.p_ok))
            && f.contains(&format!("{server}:{} {L} ", work.p_leak)),
        "TIME_WAIT destinations missing:\n{screen}"
    );
    assert!(
        f.contains(&format!("CLOSE_WAIT holders: {L} sockets")),
        "{screen}"
    );
    for state in [
        "LISTEN",
        "SYN_SENT",
        "SYN_RECV",
        "ESTABLISHED",
        "FIN_WAIT1",
        "FIN_WAIT2",
        "CLOSING",
        "LAST_ACK",
    ] {
        assert_eq!(
            number_after(&screen, "STATES", state),
            Some(0),
            "{state}:\n{screen}"
        );
    }
    // What the kernel's sock_diag lists agrees: L sockets in CLOSE_WAIT on the server, N + L
    // timewait sockets on the client (TIME_WAIT, and the leak's orphans in FIN_WAIT2).
    assert_eq!(ss_count(&pair, Side::Server, &["close-wait"]), L);
    assert_eq!(
        ss_count(&pair, Side::Client, &["time-wait", "fin-wait-2"]),
        N + L
    );
    assert!(f.contains("lost 0"), "{screen}");

    // p: only the leaking process. It connected nowhere and accepted L; its sockets stay.
    t.keys(&["p"]);
    t.wait_for("the process prompt", 10, |s| s.contains("process to show"));
    t.type_text(&leaker_pid.to_string());
    t.keys(&["Enter"]);
    t.wait_for("the view narrowed to the leaking process", 10, |s| {
        let f = flat(s);
        f.contains(&format!("process: pid {leaker_pid}"))
            && f.contains(&format!(
                "in all: 0 connects, {L} accepts, 0 TIME_WAIT births"
            ))
            && number_after(s, "STATES", "CLOSE_WAIT") == Some(L)
            && number_after(s, &leaker, &leaker) == Some(L)
            && f.contains("Connect failures: 0 refused")
    });
    // By command name, a process that does not exist: nothing.
    t.keys(&["p"]);
    t.type_text("no-such-comm");
    t.keys(&["Enter"]);
    t.wait_for("an empty view", 10, |s| {
        flat(s).contains("process: comm ~ no-such-comm")
            && number_after(s, "STATES", "CLOSE_WAIT") == Some(0)
    });
    // c: everything again; s: another order.
    t.keys(&["c"]);
    t.wait_for("the whole view again", 10, |s| {
        s.contains("process: all") && number_after(s, "STATES", "CLOSE_WAIT") == Some(L)
    });
    t.keys(&["s"]);
    t.wait_for("the rate order", 10, |s| s.contains("sort: rate"));
    t.keys(&["s"]);
    t.wait_for("the name order", 10, |s| s.contains("sort: name"));

    // q: quits at once, exit status 0, and the terminal is as it was.
    t.keys(&["q"]);
    let screen = t.wait_for("netwatch's exit and the tty line after it", 20, exited);
    assert!(screen.contains("EXITED 0"), "{screen}");
    assert!(
        !screen.contains("netwatch report:"),
        "q must not print the report:\n{screen}"
    );
    assert_terminal_restored(&t, &screen);
    let summary = screen
        .lines()
        .find(|l| l.contains("events seen"))
        .unwrap_or_else(|| panic!("no exit summary:\n{screen}"));
    assert!(summary.contains("lost=0"), "{summary}");
}

#[test]
fn root_top_ctrl_c_prints_the_report() {
    if !require_root("root_top_ctrl_c_prints_the_report") {
        return;
    }
    let scratch = Scratch::new("ctrlc");
    let pair = NetPair::new();
    let mut work = Workload::ports();
    // Every CLOSE_WAIT counts as stuck, so that the report names the leak at once.
    let mut args: Vec<String> = ["top", "--close-wait-age", "0s"].map(String::from).to_vec();
    args.extend(own_traffic_only(&pair, &work.server_ports()));
    let t = Tmux::start(&session_script(&scratch, &args));
    t.wait_for("the live view", 60, view_is_up);
    let leaker_pid = work.run(&pair);
    t.wait_for("the leak", 20, |s| {
        number_after(s, "STATES", "CLOSE_WAIT") == Some(L)
    });

    // In raw mode Ctrl-C is a key, not SIGINT: the view quits, then prints the report.
    t.keys(&["C-c"]);
    let screen = t.wait_for("netwatch's exit and the tty line after it", 20, exited);
    assert!(screen.contains("EXITED 0"), "{screen}");
    // The report's text lands on the normal screen; what scrolled off is in the history.
    let out = t.tmux(&["capture-pane", "-p", "-S", "-", "-t", "top"]);
    let all = String::from_utf8_lossy(&out.stdout);
    assert!(all.contains("netwatch report:"), "no report:\n{all}");
    assert!(
        all.contains(&format!(
            "connects to {}:{} failed {M} time(s) ({M} refused",
            pair.server_v4(),
            work.p_refused
        )),
        "{all}"
    );
    assert!(
        all.contains(&format!("tcpdrive[{leaker_pid}]")),
        "the report does not name the leaking process:\n{all}"
    );
    assert_terminal_restored(&t, &all);
}

/// SIGTERM (what `kill`, systemd or a container runtime sends) ends the live view like Ctrl-C:
/// the terminal is given back (README: "on `q`, Ctrl-C, SIGTERM, ..."), and the report of the
/// run is printed.
#[test]
fn root_top_sigterm_restores_the_terminal() {
    if !require_root("root_top_sigterm_restores_the_terminal") {
        return;
    }
    let scratch = Scratch::new("sigterm");
    let pid_file = scratch.path("pid");
    // The session's shell runs netwatch in the foreground as a subshell that wrote its pid
    // and exec'd it: the pid is netwatch's.
    let script = scratch.path("session.sh");
    fs::write(
        &script,
        format!(
            "sh -c 'echo $$ > {}; exec \"$0\" top --interval 500ms' '{}'\necho EXITED $?\n\
             echo TTY $(stty -a | tr ' ;' '\\n\\n' | grep -x -e icanon -e -icanon -e echo -e -echo)\n\
             exec sleep 600\n",
            pid_file.display(),
            netwatch_bin().display()
        ),
    )
    .expect("session script");
    let t = Tmux::start(&script);
    t.wait_for("the live view", 60, view_is_up);
    let pid: i32 = fs::read_to_string(&pid_file)
        .expect("netwatch's pid")
        .trim()
        .parse()
        .expect("a pid");
    // SAFETY: kill(2) on the netwatch this test started in its tmux session.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let screen = t.wait_for("netwatch's exit and the tty line after it", 20, exited);
    assert!(screen.contains("EXITED 0"), "{screen}");
    let out = t.tmux(&["capture-pane", "-p", "-S", "-", "-t", "top"]);
    let all = String::from_utf8_lossy(&out.stdout);
    assert!(
        all.contains("netwatch report:"),
        "no report after SIGTERM:\n{all}"
    );
    assert_terminal_restored(&t, &all);
}

#[test]
fn root_top_without_a_terminal_prints_plain_summaries() {
    if !require_root("root_top_without_a_terminal_prints_plain_summaries") {
        return;
    }
    let scratch = Scratch::new("plain");
    let pair = NetPair::new();
    let mut work = Workload::ports();
    // stdout is a file: no terminal, so summaries, not a screen.
    let (tracer, out_path) = top_to_file(&scratch, &pair, "1s", &[], &work.server_ports());
    let leaker_pid = work.run(&pair);
    // Each summary counts from the start. Once there are two (one per interval) and the last
    // has the whole workload (the last transitions into TIME_WAIT come in softirq, after the
    // clients exited), SIGTERM: the summaries that follow it (a last one at exit) have it too.
    let in_all = format!(
        "in all: {} connects, {} accepts, {} TIME_WAIT births",
        N + L + M,
        N + L,
        N + L
    );
    let whole = eventually(Duration::from_secs(20), || {
        let text = fs::read_to_string(&out_path).unwrap_or_default();
        let summaries = plain_summaries(&text);
        summaries.len() >= 2
            && summaries.last().is_some_and(|s| {
                flat(s).contains(&in_all)
                    && number_after(s, "states:", "CLOSE_WAIT") == Some(L)
                    && number_after(s, "states:", "TIME_WAIT") == Some(N + L)
            })
    });
    let done = tracer.stop();
    assert_eq!(done.lost, 0, "{}", done.stderr);
    let text = fs::read_to_string(&out_path).expect("stdout");
    assert!(
        whole,
        "no second summary, or none with the whole workload, within 20 s after it:\n{text}"
    );
    assert!(
        text.contains("netwatch report:"),
        "SIGTERM prints the report after the summaries:\n{text}"
    );
    assert!(
        !text.contains('\u{1b}'),
        "terminal escape sequences in a file:\n{text}"
    );

    let summaries = plain_summaries(&text);
    assert!(
        summaries.len() >= 2,
        "expected a summary per interval, got {}:\n{text}",
        summaries.len()
    );
    // The first comes after one interval, not at once.
    let first_at: f64 = summaries[0]
        .split_whitespace()
        .next()
        .and_then(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("no time in the first summary:\n{text}"));
    assert!((0.9..2.0).contains(&first_at), "first at {first_at} s");

    // The last one has the whole workload.
    let last = summaries.last().expect("a summary");
    let f = flat(last);
    assert_eq!(
        number_after(last, "states:", "CLOSE_WAIT"),
        Some(L),
        "{last}"
    );
    assert_eq!(
        number_after(last, "states:", "TIME_WAIT"),
        Some(N + L),
        "{last}"
    );
    assert!(
        f.contains(&format!(
            "in all: {} connects, {} accepts, {} TIME_WAIT births",
            N + L + M,
            N + L,
            N + L
        )),
        "{last}"
    );
    assert!(
        f.contains(&format!(
            "CLOSE_WAIT holders: tcpdrive[{leaker_pid}] {L} sockets"
        )),
        "{last}"
    );
    // With the holder's cgroup (its container or service), as every output names it: its
    // cgroup v2 path.
    let cgroup = crate::support::cgroup_v2_of(leaker_pid).expect("the leaker's cgroup v2 path");
    let holder = f
        .split("CLOSE_WAIT holders: ")
        .nth(1)
        .and_then(|h| h.split(')').next())
        .unwrap_or_default();
    assert!(
        holder.ends_with(&format!(", cgroup {cgroup}")),
        "the holder's cgroup is not {cgroup}: {holder}"
    );
    assert!(
        f.contains(&format!(
            "connect failures: {M} refused, 0 timed out, 0 aborted"
        )),
        "{last}"
    );
    assert!(
        f.contains(&format!("resets: {M} sent, {M} received")),
        "{last}"
    );
    assert!(f.contains("0 lost"), "{last}");
}

/// `top --record` without a terminal, then `analyze --top`: the same bytes (every summary at
/// the interval it was printed, the report SIGTERM printed after them), with the workload's
/// leaker and namespaces gone before the replay, so nothing the replay shows can come from
/// this host. Without the recorded ticks the replay's rates, ages and "at" times would come
/// from the events' timestamps or from now, and differ.
#[test]
fn root_top_record_replays_byte_identical_summaries() {
    if !require_root("root_top_record_replays_byte_identical_summaries") {
        return;
    }
    let scratch = Scratch::new("top-record");
    let recording = scratch.path("top.nwr");
    let pair = NetPair::new();
    let mut work = Workload::ports();
    let record = ["--record", &recording.to_string_lossy()].map(String::from);
    let (tracer, out_path) = top_to_file(&scratch, &pair, "1s", &record, &work.server_ports());
    let leaker_pid = work.run(&pair);
    let holder = format!("CLOSE_WAIT holders: tcpdrive[{leaker_pid}] {L} sockets");
    // Two summaries at least, the last with the leak in it: the replay must place both.
    let shown = eventually(Duration::from_secs(20), || {
        let summaries = plain_summaries(&fs::read_to_string(&out_path).unwrap_or_default());
        summaries.len() >= 2 && summaries.last().is_some_and(|s| flat(s).contains(&holder))
    });
    let done = tracer.stop();
    let live = fs::read(&out_path).expect("stdout");
    let text = String::from_utf8_lossy(&live).into_owned();
    assert!(shown, "no two summaries, the last with `{holder}`:\n{text}");
    assert!(
        text.contains("netwatch report:"),
        "SIGTERM prints the report after the summaries:\n{text}\n{}",
        done.stderr
    );
    // Gone before the replay: it may not ask this host about them.
    drop(work);
    drop(pair);

    let mut cmd = Command::new(netwatch_bin());
    cmd.arg("analyze").arg(&recording).arg("--top");
    let out = output_with_timeout(cmd, 60);
    assert!(
        out.status.success(),
        "analyze --top exited {}:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    if out.stdout != live {
        let replayed = String::from_utf8_lossy(&out.stdout);
        let first = text
            .lines()
            .zip(replayed.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(text.lines().count().min(replayed.lines().count()));
        panic!(
            "analyze --top differs from the live run from line {}:\nlive:\n{text}\n\
             replayed:\n{replayed}",
            first + 1
        );
    }
}

/// The plain summaries of a `top` output file, oldest first (the report SIGTERM prints after
/// them left out).
fn plain_summaries(text: &str) -> Vec<String> {
    let plain = text.split("netwatch report:").next().unwrap_or_default();
    plain
        .split("netwatch top at ")
        .filter(|s| !s.trim().is_empty())
        .map(str::to_string)
        .collect()
}

/// What happens between the last summary and the end is in a last summary, and top's
/// retransmits are every segment the kernel retransmitted (nstat's `TcpRetransSegs`): SYNs
/// and SYN-ACKs sent again a moment after a summary, then SIGTERM well within half an
/// interval. `top` once skipped the last summary whenever one had been printed less than half
/// an interval before, however many events had come since, and left SYN-ACKs out of its
/// retransmits: it showed fewer retransmits than nstat.
#[test]
fn root_top_last_summary_has_every_retransmit_the_kernel_counted() {
    if !require_root("root_top_last_summary_has_every_retransmit_the_kernel_counted") {
        return;
    }
    let scratch = Scratch::new("plain-last");
    let pair = NetPair::new();
    let (p_syn, p_synack) = (unique_port(), unique_port());
    let (client, server) = (pair.client_v4(), pair.server_v4());
    // SYNs to p_syn are dropped on arrival: the client sends them again. SYN-ACKs from p_synack
    // are dropped on arrival at the client: the client sends its SYN again, the listener its
    // SYN-ACK (on its timer, and for the repeated SYN).
    let drop_rule = |table: &str, what: &str| {
        format!(
            "table inet {table} {{\n  chain input {{\n    type filter hook input priority 0; \
             policy accept;\n    {what} drop\n  }}\n}}\n"
        )
    };
    pair.nft(
        Side::Server,
        &drop_rule("nwsyn", &format!("tcp dport {p_syn}")),
    );
    pair.nft(
        Side::Client,
        &drop_rule("nwsynack", &format!("tcp sport {p_synack}")),
    );
    let mut listener = ReadyChild::spawn(pair.exec(
        Side::Server,
        &tcpdrive(),
        &["listen-only", &format!("{server}:{p_synack}")],
    ));
    // Long enough that the workload and the stop fit in half an interval after a summary.
    let before = [Side::Client, Side::Server].map(|s| pair.nstat(s));
    let (tracer, out_path) = top_to_file(&scratch, &pair, "10s", &[], &[p_syn, p_synack]);
    let first = eventually(Duration::from_secs(30), || {
        !plain_summaries(&fs::read_to_string(&out_path).unwrap_or_default()).is_empty()
    });
    assert!(first, "no first summary within 30 s");
    let printed = Instant::now();
    // Both connects at once, each given up after 1.5 s (one SYN retransmission each, at 1 s).
    let failed = std::thread::scope(|s| {
        let attempts: Vec<_> = [p_syn, p_synack]
            .map(|p| {
                let addr = format!("{server}:{p}");
                let pair = &pair;
                s.spawn(move || {
                    let args = ["connect-expect-fail", &addr, "--timeout-ms", "1500"];
                    let out = output_with_timeout(pair.exec(Side::Client, &tcpdrive(), &args), 20);
                    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
                    find_line(&stdout, "FAILED").map(|f| f[2].to_string())
                })
            })
            .into_iter()
            .collect();
        attempts
            .into_iter()
            .map(|a| a.join().expect("connect thread"))
            .collect::<Vec<_>>()
    });
    assert_eq!(
        failed,
        [Some("ETIMEDOUT".to_string()), Some("ETIMEDOUT".to_string())]
    );
    // A closed listener drops its pending connection at its next timer, without sending
    // another SYN-ACK: the kernel's counts are final.
    listener.kill();
    let done = tracer.stop();
    let stopped_after = printed.elapsed();
    let [dc, ds] = [Side::Client, Side::Server].map(|s| pair.nstat(s));
    let (dc, ds) = (
        counter_delta(&before[0], &dc),
        counter_delta(&before[1], &ds),
    );
    assert_eq!(done.lost, 0, "{}", done.stderr);
    let text = fs::read_to_string(&out_path).expect("stdout");
    let summaries = plain_summaries(&text);
    let last = flat(summaries.last().expect("a summary"));
    let (syns, synacks) = (dc["TcpRetransSegs"], ds["TcpRetransSegs"]);
    assert!(syns >= 2 && synacks >= 1, "client {dc:?}\nserver {ds:?}");
    assert_eq!(syns, dc["TcpExtTCPSynRetrans"], "only SYNs: {dc:?}");
    assert_eq!(synacks, ds["TcpExtTCPSynRetrans"], "only SYN-ACKs: {ds:?}");
    let line = last
        .split("retransmits: ")
        .nth(1)
        .unwrap_or_else(|| panic!("no retransmits in the last summary: {last}"));
    let count_of = |peer: &str| -> Option<u64> {
        let mut words = line.split([' ', ';']).filter(|w| !w.is_empty());
        words.find(|w| *w == peer)?;
        words.next()?.parse().ok()
    };
    assert!(
        line.starts_with(&format!("{}: ", syns + synacks))
            && count_of(&server.to_string()) == Some(syns)
            && count_of(&client.to_string()) == Some(synacks),
        "the kernel retransmitted {syns} SYNs to {server} and {synacks} SYN-ACKs to {client} \
         (the SIGTERM came {stopped_after:?} after a summary); the last summary:\n{last}\n\
         netwatch's stderr (program runs the kernel skipped, if any):\n{}\nall:\n{text}",
        done.stderr
    );
    assert!(
        last.contains("connect failures: 0 refused, 2 timed out, 0 aborted"),
        "{last}"
    );
}

/// The CLOSE_WAIT holder row of `holder` (`comm[pid]`): (sockets, oldest seconds, older than
/// `--close-wait-age`).
fn holder_row(screen: &str, holder: &str) -> Option<(u64, f64, u64)> {
    let line = screen.lines().find(|l| l.contains(holder))?;
    let mut words = line
        .split(|c: char| c.is_whitespace() || c == '\u{2502}')
        .filter(|w| !w.is_empty());
    words.find(|w| *w == holder)?;
    Some((
        words.next()?.parse().ok()?,
        words.next()?.parse().ok()?,
        words.next()?.parse().ok()?,
    ))
}

/// Over IPv6: the CLOSE_WAIT holders' age column (`>2s` with `--close-wait-age 2s`, README:
/// "`>5s` counts CLOSE_WAIT sockets older than `--close-wait-age`") counts the leak once it is
/// older than that, the TIME_WAIT destination is the bracketed IPv6 endpoint, `ss` agrees, and
/// Esc quits and gives the terminal back.
#[test]
fn root_top_ipv6_close_wait_age_column_and_esc_quits() {
    if !require_root("root_top_ipv6_close_wait_age_column_and_esc_quits") {
        return;
    }
    const LEAKED: u64 = 3;
    let scratch = Scratch::new("top-v6");
    let pair = NetPair::new();
    let p_leak = unique_port();
    let mut args: Vec<String> = ["top", "--interval", "500ms", "--close-wait-age", "2s"]
        .map(String::from)
        .to_vec();
    args.extend(own_traffic_only(&pair, &[p_leak]));
    let t = Tmux::start(&session_script(&scratch, &args));
    t.wait_for("the live view", 60, view_is_up);
    let at = format!("[{}]:{p_leak}", pair.server_v6());
    let (leak, leaked_at) = crate::support::leaked_connections(&pair, &at, LEAKED);
    let holder = format!("tcpdrive[{}]", leak.pid());

    let screen = t.wait_for("the leak, every socket older than 2 s", 20, |s| {
        s.contains(">2s")
            && holder_row(s, &holder).is_some_and(|(n, _, old)| n == LEAKED && old == LEAKED)
            && number_after(s, "STATES", "CLOSE_WAIT") == Some(LEAKED)
    });
    let (_, oldest, _) = holder_row(&screen, &holder).unwrap();
    let held_s = leaked_at.elapsed().as_secs_f64();
    assert!(
        (2.0..=held_s + 1.0).contains(&oldest),
        "OLDEST_S {oldest} vs leaked {held_s:.1} s ago:\n{screen}"
    );
    assert!(
        flat(&screen).contains(&format!("{at} {LEAKED} ")),
        "no TIME_WAIT row for the IPv6 destination {at}:\n{screen}"
    );
    assert_eq!(ss_count(&pair, Side::Server, &["close-wait"]), LEAKED);
    assert_eq!(
        ss_count(&pair, Side::Client, &["time-wait", "fin-wait-2"]),
        LEAKED
    );

    t.keys(&["Escape"]);
    let screen = t.wait_for("netwatch's exit and the tty line after it", 20, exited);
    assert!(screen.contains("EXITED 0"), "{screen}");
    assert!(
        !screen.contains("netwatch report:"),
        "Esc must not print the report:\n{screen}"
    );
    assert_terminal_restored(&t, &screen);
    drop(leak);
}

/// `--duration` ends the live view by itself, no sooner, and gives the terminal back.
#[test]
fn root_top_duration_stops_by_itself() {
    if !require_root("root_top_duration_stops_by_itself") {
        return;
    }
    let scratch = Scratch::new("top-duration");
    let args: Vec<String> = ["top", "--duration", "3s", "-L", "1", "-D", "1"]
        .map(String::from)
        .to_vec();
    let started = Instant::now();
    let t = Tmux::start(&session_script(&scratch, &args));
    t.wait_for("the live view", 60, view_is_up);
    let screen = t.wait_for("netwatch's exit by itself", 20, exited);
    let ran = started.elapsed();
    assert!(screen.contains("EXITED 0"), "{screen}");
    assert!(
        ran >= Duration::from_secs(3),
        "stopped after {ran:?} of a 3 s run"
    );
    assert_terminal_restored(&t, &screen);
}
