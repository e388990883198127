//! Code paths of sockets (`netwatch trace --json --stacks`), as root, against a real C server
//! built for the test with frame pointers and debug info: the stack captured in the kernel at
//! accept() must name the server's accept-calling function with its source line, and its
//! callers.

use crate::support::{Scratch, Tracer, analyze, build_fixture, eventually, marked_line, tcpdrive};
use netwatch_tests::{NetPair, ReadyChild, Side, output_with_timeout, require_root, unique_port};
use serde_json::Value;

const CONNECTIONS: usize = 3;

fn frames(ev: &Value) -> Vec<&str> {
    ev["stack"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

#[test]
fn root_accept_stack_names_the_function_and_line_that_accepted() {
    if !require_root("root_accept_stack_names_the_function_and_line_that_accepted") {
        return;
    }
    let bin = build_fixture("leaky_server");
    let accept_line = marked_line("leaky_server.c", "ACCEPT_LINE");
    let pair = NetPair::new();
    let server = pair.server_v4().to_string();
    let port = unique_port();
    // Recorded too: a replay has no process to symbolize, so the stacks must be in the file.
    let scratch = Scratch::new("stacks-replay");
    let recording = scratch.path("stacks.nwr");
    let rec = recording.to_str().expect("UTF-8 path");
    let tracer = Tracer::start(&["trace", "--json", "--stacks", "--record", rec]);
    let srv = ReadyChild::spawn(pair.exec(Side::Server, &bin, &[&server, &port.to_string()]));
    for _ in 0..CONNECTIONS {
        // The server never answers: a connect that "unexpectedly" succeeds is what we want.
        let out = output_with_timeout(
            pair.exec(
                Side::Client,
                &tcpdrive(),
                &["connect-expect-fail", &format!("{server}:{port}")],
            ),
            20,
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains("CONNECTED"), "{stdout}");
    }
    // The server accepts after the client's connect() returned: wait (bounded) until netwatch
    // has printed each accept before stopping it.
    let pid = u64::from(srv.pid());
    let accepts_so_far = || {
        tracer
            .stdout_lines_so_far()
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|e| e["kind"] == "accept" && e["pid"].as_u64() == Some(pid))
            .count()
    };
    let all_traced = eventually(std::time::Duration::from_secs(10), || {
        accepts_so_far() >= CONNECTIONS
    });
    let done = tracer.stop();
    drop(srv);
    assert!(
        all_traced,
        "accepts by pid {pid} within 10 s; stdout:\n{}",
        done.stdout
    );

    let accepts: Vec<&Value> = done
        .events
        .iter()
        .filter(|e| e["kind"] == "accept" && e["pid"].as_u64() == Some(pid))
        .collect();
    assert_eq!(
        accepts.len(),
        CONNECTIONS,
        "accepts by pid {pid}; stdout:\n{}",
        done.stdout
    );
    let expected = format!("handle_conn_forgets_close (leaky_server.c:{accept_line})");
    for ev in &accepts {
        let f = frames(ev);
        assert!(ev["stack_id"].is_u64(), "no stack id: {ev}");
        assert!(f.contains(&expected.as_str()), "{expected} not in {f:?}");
        let at = |name: &str| {
            f.iter()
                .position(|fr| fr.starts_with(&format!("{name} (leaky_server.c:")))
                .unwrap_or_else(|| panic!("{name} not in {f:?}"))
        };
        let (h, s, m) = (
            at("handle_conn_forgets_close"),
            at("serve_forever"),
            at("main"),
        );
        assert!(h < s && s < m, "innermost first: {f:?}");
    }
    // One code path: the kernel deduplicated the three stacks into one id.
    let ids: std::collections::BTreeSet<_> =
        accepts.iter().map(|e| e["stack_id"].as_u64()).collect();
    assert_eq!(ids.len(), 1, "{ids:?}");
    // Events that do not open a socket carry no stack.
    assert!(
        done.events
            .iter()
            .filter(|e| e["kind"] == "destroy" || e["kind"] == "retransmit")
            .all(|e| e.get("stack").is_none()),
        "stack on an event other than accept/connect"
    );

    assert!(
        analyze(&recording, &["--json"]) == done.stdout,
        "the replay of `trace --json --stacks` differs from the live run (stacks not recorded?)"
    );
}

/// The `CLOSE -> SYN_SENT` events of process `pid` that `tracer` printed so far.
fn connects_of(tracer: &Tracer, pid: u64) -> Vec<Value> {
    tracer
        .stdout_lines_so_far()
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| {
            e["pid"].as_u64() == Some(pid)
                && e["kind"] == "state"
                && e["old_state"] == "CLOSE"
                && e["new_state"] == "SYN_SENT"
        })
        .collect()
}

/// The code path of a connecting client (`trace --json --stacks` on `CLOSE -> SYN_SENT`): the
/// function that called connect() and its line, then its caller; and `NETWATCH_STACKS=0`
/// switches capture off in the kernel: no event of the same workload carries a stack.
#[test]
fn root_connect_stack_names_the_connecting_function_and_stacks_0_captures_none() {
    if !require_root("root_connect_stack_names_the_connecting_function_and_stacks_0_captures_none")
    {
        return;
    }
    let bin = build_fixture("leaky_client");
    let connect_line = marked_line("leaky_client.c", "CONNECT_LINE");
    let pair = NetPair::new();
    let server = pair.server_v4().to_string();
    let port = unique_port();
    let addr = format!("{server}:{port}");
    let with = Tracer::start(&["trace", "--json", "--stacks"]);
    let without = Tracer::start_with(&["trace", "--json", "--stacks"], |c| {
        c.env("NETWATCH_STACKS", "0");
    });
    let n = CONNECTIONS.to_string();
    let _srv = ReadyChild::spawn(pair.exec(
        Side::Server,
        &tcpdrive(),
        &["serve-leak", &addr, "--count", &n],
    ));
    let cli = ReadyChild::spawn(pair.exec(Side::Client, &bin, &[&server, &port.to_string(), &n]));
    let pid = u64::from(cli.pid());
    let all_traced = eventually(std::time::Duration::from_secs(10), || {
        connects_of(&with, pid).len() >= CONNECTIONS
            && connects_of(&without, pid).len() >= CONNECTIONS
    });
    let (with, without) = (with.stop(), without.stop());
    drop(cli);
    assert!(
        all_traced,
        "connects by pid {pid} within 10 s:\n{}\n{}",
        with.stdout, without.stdout
    );

    let expected = format!("open_and_forget (leaky_client.c:{connect_line})");
    let connects: Vec<&Value> = with
        .events
        .iter()
        .filter(|e| {
            e["pid"].as_u64() == Some(pid)
                && e["old_state"] == "CLOSE"
                && e["new_state"] == "SYN_SENT"
        })
        .collect();
    assert_eq!(connects.len(), CONNECTIONS, "{}", with.stdout);
    for ev in &connects {
        assert!(ev["stack_id"].is_u64(), "no stack id: {ev}");
        let f = frames(ev);
        let open = f
            .iter()
            .position(|fr| *fr == expected)
            .unwrap_or_else(|| panic!("{expected} not in {f:?}"));
        let main = f
            .iter()
            .position(|fr| fr.starts_with("main (leaky_client.c:"))
            .unwrap_or_else(|| panic!("main not in {f:?}"));
        assert!(open < main, "innermost first: {f:?}");
    }

    let mine: Vec<&Value> = without
        .events
        .iter()
        .filter(|e| e["pid"].as_u64() == Some(pid))
        .collect();
    assert!(
        mine.len() >= CONNECTIONS * 2,
        "the run without stacks still traced: {mine:#?}"
    );
    for ev in mine {
        assert!(
            ev.get("stack_id").is_none() && ev.get("stack").is_none(),
            "a stack with NETWATCH_STACKS=0: {ev}"
        );
    }
}
