//! `netwatch leaks` in event-loop, pool and interpreted servers, as root: the code path of a
//! socket's first send or receive names the handler that leaks it, from the runtime's perf
//! map (Node's `--perf-basic-prof`, the JVM's `jcmd PID Compiler.perfmap`), and where no
//! application frame can be found (Python 3.11) netwatch says so and shows what there is.
//!
//! The leakers are real runtimes running fixtures (`tests/fixtures/leaky_server.js`,
//! `leaky_client.js`, `LeakyPool.java`, `leaky_server.py`); the kernel's view of their
//! descriptors (`/proc/<pid>/fd`) is the oracle for what leaks, the fixtures' marked lines for
//! where.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
    time::Duration,
};

use crate::support::{
    Scratch, TCP_CLOSE_WAIT, Tracer, build_fixture, endpoint, eventually, marked_line, tcpdrive,
    wait_fds_in_state,
};
use netwatch_tests::{
    NetPair, ReadyChild, Side, find_line, output_with_timeout, require_root, unique_port,
    workspace_root,
};
use serde_json::Value;

/// Sockets each test leaks.
const N: usize = 4;
/// Bound on netwatch reporting what the test leaked (min-age + a few intervals + symbolizing).
const SNAPSHOT_BOUND: Duration = Duration::from_secs(40);
/// Bound on the kernel getting the leaked sockets into CLOSE_WAIT (a JVM starts slowly here).
const STATE_BOUND: Duration = Duration::from_secs(30);

/// `leaks` as every test here runs it.
const LEAKS: &[&str] = &["leaks", "--json", "--min-age", "1s", "--interval", "1s"];

/// The runtime `name` on PATH; `None` (skipped) when absent, a failure under `CI=true`, where
/// `cargo xtask setup` has installed it.
fn runtime_or_skip(test: &str, name: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{test}: {name} is not installed, and CI=true (cargo xtask setup installs it)"
        );
        eprintln!("\n*** SKIPPED {test}: no {name} ***\n");
    }
    found
}

fn fixture(name: &str) -> String {
    workspace_root()
        .join("tests/fixtures")
        .join(name)
        .display()
        .to_string()
}

/// `node` with the flags that name its JavaScript frames, in `side`'s namespace, run from
/// `scratch` (with these flags V8 also writes an `isolate-*-v8.log` into its working
/// directory).
fn node_cmd(pair: &NetPair, side: Side, node: &Path, scratch: &Scratch, args: &[&str]) -> Command {
    let mut all = vec!["--perf-basic-prof", "--interpreted-frames-native-stack"];
    all.extend_from_slice(args);
    let mut cmd = pair.exec(side, node, &all);
    cmd.current_dir(scratch.path("."));
    cmd
}

/// The groups of pid `pid` in `snap`.
fn groups_of(snap: &Value, pid: u32) -> Vec<&Value> {
    snap["groups"]
        .as_array()
        .map(|gs| {
            gs.iter()
                .filter(|g| g["pid"].as_u64() == Some(u64::from(pid)))
                .collect()
        })
        .unwrap_or_default()
}

fn strs(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|s| {
            s.as_str()
                .unwrap_or_else(|| panic!("not a string: {s}"))
                .to_string()
        })
        .collect()
}

/// Waits for a snapshot where pid `pid` has exactly one CLOSE_WAIT group, of `n` sockets, that
/// satisfies `done`; returns that group. Panics with the last snapshot seen otherwise.
fn wait_group(
    tracer: &mut Tracer,
    pid: u32,
    n: usize,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let snap = tracer.wait_for_json_line(what, SNAPSHOT_BOUND, |s| {
        let gs = groups_of(s, pid);
        gs.len() == 1
            && gs[0]["kind"] == "close_wait"
            && gs[0]["sockets"].as_u64() == Some(n as u64)
            && done(gs[0])
    });
    groups_of(&snap, pid)[0].clone()
}

/// `tcpdrive connect` from the client side: `n` request/reply/close cycles to `addr`.
fn request_and_close(pair: &NetPair, addr: &str, n: usize) {
    let out = output_with_timeout(
        pair.exec(
            Side::Client,
            &tcpdrive(),
            &["connect", addr, "--count", &n.to_string()],
        ),
        60,
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "connect {addr}: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        find_line(&text, "DONE").expect("DONE line")[2..],
        [n.to_string(), "0".to_string()],
        "every request answered: {text}"
    );
}

/// The checks every handler group passes: `n` sockets, the process's own CLOSE_WAIT fds, both
/// code paths seen, the first use a send whose stack holds the perf-map frame of `function`.
fn check_handler_group(g: &Value, pid: u32, fds: &[u32], function: &str, location: Option<&str>) {
    assert_eq!(g["sockets"].as_u64(), Some(fds.len() as u64), "{g:#}");
    let mut got: Vec<u32> = g["fds"]
        .as_array()
        .expect("fds")
        .iter()
        .map(|f| f.as_u64().expect("fd") as u32)
        .collect();
    got.sort_unstable();
    assert_eq!(got, fds, "the fds of {pid} in CLOSE_WAIT: {g:#}");
    assert_eq!(g["leaked_by"]["function"], function, "{g:#}");
    match location {
        Some(l) => assert_eq!(g["leaked_by"]["location"], l, "{g:#}"),
        None => assert!(g["leaked_by"]["location"].is_null(), "{g:#}"),
    }
    assert!(g.get("leaked_by_unknown").is_none(), "{g:#}");
    assert_eq!(g["code_path_seen"], true, "{g:#}");
    assert_eq!(g["first_use_seen"], true, "{g:#}");
    assert_eq!(g["first_used_by"], "send", "{g:#}");
    let used = strs(&g["first_used_at"]);
    assert!(
        used.iter().any(
            |f| f.contains(function.rsplit('.').next().unwrap_or(function))
                && f.ends_with("(perf map)")
        ),
        "the first use's stack has the handler's perf-map frame: {used:#?}"
    );
}

#[test]
fn root_leaks_names_the_node_handler_that_never_ends_its_sockets() {
    let test = "root_leaks_names_the_node_handler_that_never_ends_its_sockets";
    if !require_root(test) {
        return;
    }
    let Some(node) = runtime_or_skip(test, "node") else {
        return;
    };
    let line = marked_line("leaky_server.js", "HANDLER_LINE");
    let pair = NetPair::new();
    let (ip, port) = (pair.server_v4(), unique_port());
    let addr = endpoint(IpAddr::V4(ip), port);
    let mut tracer = Tracer::start(LEAKS);
    let scratch = Scratch::new("node-server");
    let srv = ReadyChild::spawn(node_cmd(
        &pair,
        Side::Server,
        &node,
        &scratch,
        &[
            &fixture("leaky_server.js"),
            &ip.to_string(),
            &port.to_string(),
        ],
    ));
    let pid = srv.pid();
    request_and_close(&pair, &addr, N);
    let fds = wait_fds_in_state(pid, TCP_CLOSE_WAIT, N, STATE_BOUND);

    let g = wait_group(&mut tracer, pid, N, "the node handler's group", |g| {
        g["leaked_by"].is_object()
    });
    let location = format!("leaky_server.js:{line}");
    check_handler_group(&g, pid, &fds, "handleConnectionForgetsEnd", Some(&location));
    assert_eq!(g["comm"], "node", "{g:#}");
    assert_eq!(g["opened_by"], "accept", "{g:#}");
    // The opening code path is the event loop's: accept4 from libuv, no JavaScript.
    let opened = strs(&g["stack"]);
    assert!(
        opened.iter().any(|f| f.starts_with("uv__server_io")),
        "accept() from libuv's loop: {opened:#?}"
    );
    assert!(
        !opened
            .iter()
            .any(|f| f.contains("handleConnectionForgetsEnd")),
        "{opened:#?}"
    );

    // The text form leads with the handler.
    let (status, stdout, stderr) = tracer.stop_output();
    assert!(
        status.success(),
        "netwatch leaks exited {status}:\n{stderr}"
    );
    assert!(stdout.contains("\"leaked_by\""), "{stdout}");
    drop(srv);
}

#[test]
fn root_leaks_text_leads_with_the_node_handler() {
    let test = "root_leaks_text_leads_with_the_node_handler";
    if !require_root(test) {
        return;
    }
    let Some(node) = runtime_or_skip(test, "node") else {
        return;
    };
    let line = marked_line("leaky_server.js", "HANDLER_LINE");
    let pair = NetPair::new();
    let (ip, port) = (pair.server_v4(), unique_port());
    let addr = endpoint(IpAddr::V4(ip), port);
    let tracer = Tracer::start(&["leaks", "--min-age", "1s", "--interval", "1s"]);
    let scratch = Scratch::new("node-server");
    let srv = ReadyChild::spawn(node_cmd(
        &pair,
        Side::Server,
        &node,
        &scratch,
        &[
            &fixture("leaky_server.js"),
            &ip.to_string(),
            &port.to_string(),
        ],
    ));
    let pid = srv.pid();
    request_and_close(&pair, &addr, N);
    wait_fds_in_state(pid, TCP_CLOSE_WAIT, N, STATE_BOUND);
    let want = format!("leaked by `handleConnectionForgetsEnd` (leaky_server.js:{line})");
    let header = format!("PID {pid} node");
    let shown = eventually(SNAPSHOT_BOUND, || {
        tracer
            .stdout_lines_so_far()
            .iter()
            .any(|l| l.trim() == want)
    });
    let (status, stdout, stderr) = tracer.stop_output();
    assert!(
        shown,
        "no `{want}` within {SNAPSHOT_BOUND:?}:\n{stdout}\n{stderr}"
    );
    assert!(
        status.success(),
        "netwatch leaks exited {status}:\n{stderr}"
    );
    // In the block of the server's group: its header, the headline, both code paths.
    let block = stdout
        .split("\n\n")
        .filter(|b| b.starts_with(&header))
        .last()
        .unwrap_or_else(|| panic!("no block for {header}:\n{stdout}"));
    let lines: Vec<&str> = block.lines().collect();
    assert!(
        lines[1].contains(&format!("{N} sockets in CLOSE_WAIT")),
        "{block}"
    );
    assert_eq!(lines[2], format!("  {want}"), "{block}");
    assert_eq!(lines[3], "  opened by accept() at:", "{block}");
    assert!(block.contains("\n  first used by a send at:\n"), "{block}");
    drop(srv);
}

#[test]
fn root_leaks_names_the_node_client_that_never_reads_its_replies() {
    let test = "root_leaks_names_the_node_client_that_never_reads_its_replies";
    if !require_root(test) {
        return;
    }
    let Some(node) = runtime_or_skip(test, "node") else {
        return;
    };
    let line = marked_line("leaky_client.js", "HANDLER_LINE");
    let pair = NetPair::new();
    let (ip, port) = (pair.server_v4(), unique_port());
    let addr = endpoint(IpAddr::V4(ip), port);
    // The server answers each request and closes first.
    let srv = ReadyChild::spawn(pair.exec(
        Side::Server,
        &tcpdrive(),
        &["serve-close-first", &addr, "--count", &N.to_string()],
    ));
    let mut tracer = Tracer::start(LEAKS);
    let scratch = Scratch::new("node-client");
    let client = ReadyChild::spawn(node_cmd(
        &pair,
        Side::Client,
        &node,
        &scratch,
        &[
            &fixture("leaky_client.js"),
            &ip.to_string(),
            &port.to_string(),
            &N.to_string(),
        ],
    ));
    let pid = client.pid();
    let fds = wait_fds_in_state(pid, TCP_CLOSE_WAIT, N, STATE_BOUND);
    let g = wait_group(&mut tracer, pid, N, "the node client's group", |g| {
        g["leaked_by"].is_object()
    });
    let location = format!("leaky_client.js:{line}");
    check_handler_group(&g, pid, &fds, "requestWithoutReadingReply", Some(&location));
    assert_eq!(g["opened_by"], "connect", "{g:#}");
    drop(client);
    drop(srv);
}

/// `tests/fixtures/LeakyPool.java` compiled once into cargo's per-target scratch directory;
/// returns the class path.
fn leaky_pool_classes(javac: &Path) -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("leaky-pool-classes");
            std::fs::create_dir_all(&dir).expect("class directory");
            let mut cmd = Command::new(javac);
            cmd.arg("-d").arg(&dir).arg(fixture("LeakyPool.java"));
            let out = output_with_timeout(cmd, 120);
            assert!(
                out.status.success(),
                "javac: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            dir
        })
        .clone()
}

#[test]
fn root_leaks_names_the_java_pool_handler_once_the_jvm_writes_its_perf_map() {
    let test = "root_leaks_names_the_java_pool_handler_once_the_jvm_writes_its_perf_map";
    if !require_root(test) {
        return;
    }
    let (Some(java), Some(javac), Some(jcmd)) = (
        runtime_or_skip(test, "java"),
        runtime_or_skip(test, "javac"),
        runtime_or_skip(test, "jcmd"),
    ) else {
        return;
    };
    let classes = leaky_pool_classes(&javac);
    let pair = NetPair::new();
    let (ip, port) = (pair.server_v4(), unique_port());
    let addr = endpoint(IpAddr::V4(ip), port);
    let mut tracer = Tracer::start(LEAKS);
    let srv = ReadyChild::spawn(pair.exec(
        Side::Server,
        &java,
        &[
            "-XX:+PreserveFramePointer",
            "-Xcomp",
            "-XX:TieredStopAtLevel=1",
            "-XX:CompileCommand=quiet",
            "-XX:CompileCommand=compileonly,LeakyPool::*",
            "-XX:CompileCommand=dontinline,LeakyPool::*",
            "-cp",
            &classes.display().to_string(),
            "LeakyPool",
            &ip.to_string(),
            &port.to_string(),
        ],
    ));
    let pid = srv.pid();
    request_and_close(&pair, &addr, N);
    let fds = wait_fds_in_state(pid, TCP_CLOSE_WAIT, N, STATE_BOUND);

    // Before the JVM writes a perf map its compiled code has no names: netwatch says why.
    let g = wait_group(&mut tracer, pid, N, "the java group, not yet named", |g| {
        g["first_use_seen"] == true
    });
    assert!(g["leaked_by"].is_null(), "no perf map yet: {g:#}");
    let why = g["leaked_by_unknown"].as_str().unwrap_or_default();
    assert!(why.contains("Compiler.perfmap"), "{g:#}");

    // The operator asks the JVM for its perf map; the next snapshot names the handler.
    let mut cmd = Command::new(&jcmd);
    cmd.args([&pid.to_string(), "Compiler.perfmap"]);
    let out = output_with_timeout(cmd, 60);
    assert!(
        out.status.success(),
        "jcmd: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let g = wait_group(&mut tracer, pid, N, "the java handler's group", |g| {
        g["leaked_by"].is_object()
    });
    check_handler_group(&g, pid, &fds, "LeakyPool.handleForgetsClose", None);
    assert_eq!(g["opened_by"], "accept", "{g:#}");
    let used = strs(&g["first_used_at"]);
    // Innermost first: the platform's write path, then the handler, then the pool.
    let at = |needle: &str| used.iter().position(|f| f.contains(needle));
    let handler = at("LeakyPool.handleForgetsClose").expect("handler frame");
    assert!(used[0].contains("write") && handler > 0, "{used:#?}");
    assert!(
        at("libjvm.so").is_some_and(|i| i > handler),
        "the pool thread's JVM frames come after: {used:#?}"
    );
    drop(srv);
}

#[test]
fn root_leaks_says_python_311_frames_cannot_be_shown() {
    let test = "root_leaks_says_python_311_frames_cannot_be_shown";
    if !require_root(test) {
        return;
    }
    let Some(python) = runtime_or_skip(test, "python3.11") else {
        return;
    };
    let pair = NetPair::new();
    let (ip, port) = (pair.server_v4(), unique_port());
    let addr = endpoint(IpAddr::V4(ip), port);
    let mut tracer = Tracer::start(LEAKS);
    let srv = ReadyChild::spawn(pair.exec(
        Side::Server,
        &python,
        &[
            &fixture("leaky_server.py"),
            &ip.to_string(),
            &port.to_string(),
        ],
    ));
    let pid = srv.pid();
    request_and_close(&pair, &addr, N);
    let fds = wait_fds_in_state(pid, TCP_CLOSE_WAIT, N, STATE_BOUND);
    // Without an application frame, sockets are grouped by their stacks, which differ here
    // from accept to accept (the walk through CPython's frames is not reliable): all of the
    // server's groups together hold its N sockets, each saw its first use.
    let snap = tracer.wait_for_json_line("the python groups", SNAPSHOT_BOUND, |s| {
        let gs = groups_of(s, pid);
        gs.iter().filter_map(|g| g["sockets"].as_u64()).sum::<u64>() == N as u64
            && gs.iter().all(|g| g["first_use_seen"] == true)
    });
    let gs = groups_of(&snap, pid);
    let mut got: Vec<u32> = gs
        .iter()
        .flat_map(|g| g["fds"].as_array().expect("fds").clone())
        .map(|f| f.as_u64().expect("fd") as u32)
        .collect();
    got.sort_unstable();
    assert_eq!(got, fds, "{snap:#}");
    for g in gs {
        assert_eq!(g["kind"], "close_wait", "{g:#}");
        // What is shown today: no application frame, the reason, and the frames there are.
        assert!(g["leaked_by"].is_null(), "{g:#}");
        let why = g["leaked_by_unknown"].as_str().unwrap_or_default();
        assert!(
            why.starts_with("no application frame in this code path; Python:")
                && why.contains("Python 3.12")
                && why.contains("-X perf"),
            "{g:#}"
        );
        assert_eq!(g["first_used_by"], "send", "{g:#}");
        let used = strs(&g["first_used_at"]);
        assert!(
            used.first().is_some_and(|f| f.contains("send")),
            "the send is libc's: {used:#?}"
        );
        assert!(
            !used.iter().any(|f| f.contains("handle_forgets_close")),
            "{used:#?}"
        );
        let opened = strs(&g["stack"]);
        assert!(
            opened.first().is_some_and(|f| f.starts_with("accept4 ")),
            "{opened:#?}"
        );
    }
    drop(srv);
}

/// A tracefs view with every tracepoint netwatch uses but the first-use ones, as on Linux 6.1
/// (`sock_send_length` and `sock_recv_length` came in 6.3).
fn tracefs_without_first_use(scratch: &Scratch) -> PathBuf {
    let fake = scratch.path("tracefs");
    // Starting netwatch once mounts tracefs if needed.
    Tracer::start(&["trace", "--json", "--duration", "1s"]).wait_exit();
    let events = Path::new("/sys/kernel/tracing/events");
    for event in [
        "sock/inet_sock_set_state",
        "tcp/tcp_retransmit_skb",
        "tcp/tcp_retransmit_synack",
        "tcp/tcp_receive_reset",
        "tcp/tcp_send_reset",
        "tcp/tcp_destroy_sock",
        "tcp/tcp_rcv_space_adjust",
        "syscalls/sys_exit_accept4",
        "syscalls/sys_exit_accept",
    ] {
        let dir = fake.join("events").join(event);
        std::fs::create_dir_all(&dir).expect("fake tracefs");
        let format = std::fs::read(events.join(event).join("format"))
            .unwrap_or_else(|e| panic!("{event}: {e}"));
        std::fs::write(dir.join("format"), format).expect("fake format");
    }
    fake
}

#[test]
fn root_leaks_without_the_first_use_tracepoints_warns_and_shows_the_opening() {
    let test = "root_leaks_without_the_first_use_tracepoints_warns_and_shows_the_opening";
    if !require_root(test) {
        return;
    }
    let scratch = Scratch::new("no-first-use");
    let fake = tracefs_without_first_use(&scratch);
    let pair = NetPair::new();
    let (ip, port) = (pair.server_v4(), unique_port());
    let addr = endpoint(IpAddr::V4(ip), port);
    let mut tracer = Tracer::start_with(LEAKS, |c| {
        c.env("NETWATCH_TRACEFS", &fake);
    });
    let srv = ReadyChild::spawn(pair.exec(
        Side::Server,
        &build_fixture("leaky_server"),
        &[&ip.to_string(), &port.to_string()],
    ));
    let pid = srv.pid();
    let out = output_with_timeout(
        pair.exec(
            Side::Client,
            &tcpdrive(),
            &["connect-close", &addr, "--count", &N.to_string()],
        ),
        30,
    );
    assert!(out.status.success(), "connect-close {addr}");
    wait_fds_in_state(pid, TCP_CLOSE_WAIT, N, STATE_BOUND);
    let g = wait_group(&mut tracer, pid, N, "the C server's group", |g| {
        g["code_path_seen"] == true
    });
    // The opening's code path names the handler; the first use is not seen, and says so.
    assert_eq!(
        g["leaked_by"]["function"], "handle_conn_forgets_close",
        "{g:#}"
    );
    assert_eq!(g["first_use_seen"], false, "{g:#}");
    assert!(strs(&g["first_used_at"]).is_empty(), "{g:#}");
    let stderr = tracer.stderr_lines().join("\n");
    for event in ["sock:sock_send_length", "sock:sock_recv_length"] {
        assert!(
            stderr.contains(&format!(
                "warn: tracepoint {event} does not exist on this kernel"
            )),
            "a warning for {event}:\n{stderr}"
        );
    }
    assert!(
        stderr.contains("(8 of 10 tracepoints attached"),
        "the other eight attach:\n{stderr}"
    );
    let (status, _, stderr) = tracer.stop_output();
    assert!(
        status.success(),
        "netwatch leaks exited {status}:\n{stderr}"
    );
    drop(srv);
}
