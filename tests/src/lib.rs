//! Harness for netwatch's end-to-end tests: real BPF programs, real TCP traffic between
//! processes in network namespaces the test creates and removes.
//!
//! - [`NetPair`]: two namespaces joined by veth; per-namespace kernel counters
//!   ([`NetPair::nstat`]) as the oracle; nftables drop rules ([`NetPair::nft`]).
//! - [`ReadyChild`] / [`spawn_ready`]: servers that announce `READY <pid>`;
//!   [`wait_with_timeout`] / [`output_with_timeout`]: every wait is bounded.
//! - [`netwatch_bin`], [`tcpdrive`]: the binaries (built via cargo, or from env overrides).
//! - The `tcpdrive` binary of this package drives the traffic (see `src/bin/tcpdrive.rs`).
//!
//! Typical test:
//! ```no_run
//! use netwatch_tests::*;
//! use std::path::PathBuf;
//! if !require_root("my_test") { return; }
//! // In tests/tests.rs's modules also: PathBuf::from(env!("CARGO_BIN_EXE_tcpdrive"))
//! let drive: PathBuf = tcpdrive();
//! let pair = NetPair::new();
//! let port = unique_port();
//! let srv_addr = format!("{}:{port}", pair.server_v4());
//! let mut server = ReadyChild::spawn(pair.exec(Side::Server, &drive, &["serve", &srv_addr]));
//! let out = output_with_timeout(pair.exec(Side::Client, &drive, &["connect", &srv_addr]), 20);
//! assert!(out.status.success());
//! assert!(server.wait(10).success());
//! assert_eq!(pair.nstat(Side::Client)["TcpActiveOpens"], 1);
//! ```

mod bins;
mod child;
mod netns;
pub mod tracer;

pub use bins::{cargo_build_bin, netwatch_bin, tcpdrive, workspace_root};
pub use child::{READY_TIMEOUT, ReadyChild, output_with_timeout, spawn_ready, wait_with_timeout};
pub use netns::{NetPair, Side, counter_delta, drop_data_ruleset, parse_counters};

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

/// Whether the process runs as root (effective uid 0). Loading BPF programs and creating
/// network namespaces need it.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Call first in every root test: `if !require_root("name") { return; }`.
///
/// Returns true as root. Otherwise, when env `CI` is `true`, panics naming the test: CI runs as
/// root, so a root test that cannot run there must fail rather than pass silently. Elsewhere it
/// prints a loud `SKIPPED <test>: needs root` to stderr and returns false (a developer's
/// `cargo test` as a normal user still passes the rest).
pub fn require_root(test: &str) -> bool {
    if is_root() {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test}: needs root, and CI=true (CI must run the root tests as root)");
    }
    eprintln!("\n*** SKIPPED {test}: needs root ***\n");
    false
}

/// CLOCK_MONOTONIC now, in ns: the clock the kernel stamps netwatch's events with, so a test
/// (or tcpdrive) can say when something happened in the events' own time.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into the struct we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// A TCP port no other call in this process returns (until 40000 calls wrap around): an
/// atomic counter from `20000 + (pid % 1000) * 10`, kept within 20000..60000. Why: tests run in
/// parallel threads, and distinct ports keep their traffic, nft rules and tracer events apart
/// even where they share a namespace. (Each [`NetPair`] has its own port space anyway.)
pub fn unique_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    static BASE: OnceLock<u32> = OnceLock::new();
    let base = *BASE.get_or_init(|| (std::process::id() % 1000) * 10);
    let k = NEXT.fetch_add(1, Ordering::Relaxed);
    (20000 + (base + k) % 40000) as u16
}

/// The symbolic name of an errno value (`ECONNREFUSED`, `ETIMEDOUT`, ...), or `E<number>` for
/// one not in the table. Why: `tcpdrive` prints errors this way and tests match on the names,
/// which also are what a tracer reports.
pub fn errno_name(errno: i32) -> String {
    let name = match errno {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EINTR => "EINTR",
        libc::EIO => "EIO",
        libc::EBADF => "EBADF",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EFAULT => "EFAULT",
        libc::EINVAL => "EINVAL",
        libc::ENFILE => "ENFILE",
        libc::EMFILE => "EMFILE",
        libc::EPIPE => "EPIPE",
        libc::ENOTSOCK => "ENOTSOCK",
        libc::EPROTOTYPE => "EPROTOTYPE",
        libc::ENOPROTOOPT => "ENOPROTOOPT",
        libc::EPROTONOSUPPORT => "EPROTONOSUPPORT",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::EAFNOSUPPORT => "EAFNOSUPPORT",
        libc::EADDRINUSE => "EADDRINUSE",
        libc::EADDRNOTAVAIL => "EADDRNOTAVAIL",
        libc::ENETDOWN => "ENETDOWN",
        libc::ENETUNREACH => "ENETUNREACH",
        libc::ENETRESET => "ENETRESET",
        libc::ECONNABORTED => "ECONNABORTED",
        libc::ECONNRESET => "ECONNRESET",
        libc::ENOBUFS => "ENOBUFS",
        libc::EISCONN => "EISCONN",
        libc::ENOTCONN => "ENOTCONN",
        libc::ESHUTDOWN => "ESHUTDOWN",
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::ECONNREFUSED => "ECONNREFUSED",
        libc::EHOSTDOWN => "EHOSTDOWN",
        libc::EHOSTUNREACH => "EHOSTUNREACH",
        libc::EALREADY => "EALREADY",
        libc::EINPROGRESS => "EINPROGRESS",
        _ => return format!("E{errno}"),
    };
    name.to_string()
}

/// The whitespace-separated fields of the LAST line of `text` whose first field is `keyword`
/// (e.g. `find_line(&stdout, "DONE")` -> `["DONE", "<pid>", "<ok>", "<failed>"]`). Why: every
/// `tcpdrive` mode reports its result as one such line.
pub fn find_line<'a>(text: &'a str, keyword: &str) -> Option<Vec<&'a str>> {
    text.lines()
        .rev()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.first() == Some(&keyword))
}

/// Polls `f` every 20 ms until it returns true or `bound` passes; returns whether it did.
/// The tests' only way to wait for something: bounded, and checked.
pub fn eventually(bound: std::time::Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + bound;
    loop {
        if f() {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;
    use std::time::Duration;

    fn netns_list() -> String {
        let out = output_with_timeout(
            {
                let mut c = Command::new("ip");
                c.args(["netns", "list"]);
                c
            },
            10,
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn stdout(out: &std::process::Output) -> String {
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// One serve/connect exchange; returns the pair's namespace names (after dropping it).
    fn exchange(v6: bool) -> (String, String) {
        let drive = tcpdrive();
        let pair = NetPair::new();
        let port = unique_port();
        let addr = if v6 {
            format!("[{}]:{port}", pair.server_v6())
        } else {
            format!("{}:{port}", pair.server_v4())
        };
        let mut server = ReadyChild::spawn(pair.exec(Side::Server, &drive, &["serve", &addr]));
        assert_eq!(
            server.pid(),
            server.child_mut().id(),
            "ip netns exec must exec the program"
        );
        let out = output_with_timeout(pair.exec(Side::Client, &drive, &["connect", &addr]), 20);
        assert!(
            out.status.success(),
            "connect failed: {}{}",
            stdout(&out),
            String::from_utf8_lossy(&out.stderr)
        );
        let text = stdout(&out);
        let done = find_line(&text, "DONE").expect("DONE line");
        assert_eq!(&done[2..], ["1", "0"]);
        assert!(
            server.wait(10).success(),
            "server: {:?}",
            server.stdout_lines()
        );
        assert!(
            server
                .stdout_lines()
                .iter()
                .any(|l| l.starts_with("DONE ") && l.ends_with(" 1 0"))
        );
        let (c, s) = (pair.nstat(Side::Client), pair.nstat(Side::Server));
        assert_eq!(c["TcpActiveOpens"], 1, "client counters");
        assert_eq!(c["TcpPassiveOpens"], 0);
        assert_eq!(s["TcpPassiveOpens"], 1, "server counters");
        assert_eq!(s["TcpActiveOpens"], 0);
        assert_eq!(
            c["TcpAttemptFails"] + c["TcpEstabResets"] + s["TcpEstabResets"],
            0
        );
        // Nothing was lost (e.g. to neighbour discovery on a link not yet up).
        assert_eq!(c["TcpRetransSegs"] + s["TcpRetransSegs"], 0);
        // The client closed first, so it holds the TIME_WAIT socket.
        let tw = |side| {
            pair.run(side, &["ss", "-Htan", "state", "time-wait"])
                .lines()
                .count()
        };
        assert_eq!((tw(Side::Client), tw(Side::Server)), (1, 0));
        let names = (pair.client_ns().to_string(), pair.server_ns().to_string());
        drop(server);
        drop(pair);
        names
    }

    fn assert_gone((c, s): (String, String)) {
        let list = netns_list();
        assert!(
            !list.contains(&c) && !list.contains(&s),
            "namespaces left behind: {list}"
        );
    }

    #[test]
    fn exchange_ipv4_counts_one_open_each_side() {
        if !require_root("exchange_ipv4_counts_one_open_each_side") {
            return;
        }
        assert_gone(exchange(false));
    }

    #[test]
    fn exchange_ipv6_counts_one_open_each_side() {
        if !require_root("exchange_ipv6_counts_one_open_each_side") {
            return;
        }
        assert_gone(exchange(true));
    }

    #[test]
    fn server_closes_first() {
        if !require_root("server_closes_first") {
            return;
        }
        let drive = tcpdrive();
        let pair = NetPair::new();
        let addr = format!("{}:{}", pair.server_v4(), unique_port());
        let mut server = ReadyChild::spawn(pair.exec(
            Side::Server,
            &drive,
            &["serve-close-first", &addr, "--count", "3"],
        ));
        let out = output_with_timeout(
            pair.exec(Side::Client, &drive, &["connect", &addr, "--count", "3"]),
            20,
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(&find_line(&stdout(&out), "DONE").unwrap()[2..], ["3", "0"]);
        assert!(server.wait(10).success());
        // The active closer holds the TIME_WAIT sockets: here the server.
        let tw = |side| {
            pair.run(side, &["ss", "-Htan", "state", "time-wait"])
                .lines()
                .count()
        };
        assert_eq!((tw(Side::Server), tw(Side::Client)), (3, 0));
    }

    #[test]
    fn refused_connect_counts_attempt_fail() {
        if !require_root("refused_connect_counts_attempt_fail") {
            return;
        }
        let drive = tcpdrive();
        let pair = NetPair::new();
        let addr = format!("{}:{}", pair.server_v4(), unique_port());
        let out = output_with_timeout(
            pair.exec(Side::Client, &drive, &["connect-expect-fail", &addr]),
            20,
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = stdout(&out);
        let failed = find_line(&text, "FAILED").expect("FAILED line");
        assert_eq!(failed[2], "ECONNREFUSED");
        let c = pair.nstat(Side::Client);
        assert_eq!(c["TcpAttemptFails"], 1);
        assert_eq!(c["TcpActiveOpens"], 1);
        assert_eq!(pair.nstat(Side::Server)["TcpOutRsts"], 1);
        // The plain connect mode reports the same error and fails.
        let out = output_with_timeout(pair.exec(Side::Client, &drive, &["connect", &addr]), 20);
        assert_eq!(out.status.code(), Some(1));
        assert!(String::from_utf8_lossy(&out.stderr).contains("ECONNREFUSED"));
        assert_eq!(&find_line(&stdout(&out), "DONE").unwrap()[2..], ["0", "1"]);
    }

    #[test]
    fn dropped_syns_time_out() {
        if !require_root("dropped_syns_time_out") {
            return;
        }
        let drive = tcpdrive();
        let pair = NetPair::new();
        let port = unique_port();
        pair.nft(
            Side::Server,
            &format!("table inet t {{\n chain input {{\n type filter hook input priority 0;\n tcp dport {port} drop\n }}\n}}\n"),
        );
        let addr = format!("[{}]:{port}", pair.server_v6());
        let out = output_with_timeout(
            pair.exec(
                Side::Client,
                &drive,
                &["connect-expect-fail", &addr, "--timeout-ms", "1500"],
            ),
            20,
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(find_line(&stdout(&out), "FAILED").unwrap()[2], "ETIMEDOUT");
        // The SYN is sent at 0 ms and retransmitted at ~1 s.
        assert!(pair.nstat(Side::Client)["TcpRetransSegs"] >= 1);
    }

    #[test]
    fn dropped_data_is_retransmitted_ipv4() {
        if !require_root("dropped_data_is_retransmitted_ipv4") {
            return;
        }
        dropped_data_is_retransmitted(false);
    }

    #[test]
    fn dropped_data_is_retransmitted_ipv6() {
        if !require_root("dropped_data_is_retransmitted_ipv6") {
            return;
        }
        dropped_data_is_retransmitted(true);
    }

    fn dropped_data_is_retransmitted(v6: bool) {
        let drive = tcpdrive();
        let pair = NetPair::new();
        let port = unique_port();
        let addr = if v6 {
            format!("[{}]:{port}", pair.server_v6())
        } else {
            format!("{}:{port}", pair.server_v4())
        };
        let mut server = ReadyChild::spawn(pair.exec(Side::Server, &drive, &["serve", &addr]));
        pair.nft(Side::Server, &drop_data_ruleset("nwdrop", port));
        let mut sender = ReadyChild::spawn_background(pair.exec(
            Side::Client,
            &drive,
            &["send-slow", &addr, "--bytes", "20000"],
        ));
        // The handshake passes the rule, the data does not: the client retransmits.
        let retransmitted = eventually(Duration::from_secs(10), || {
            pair.nstat(Side::Client)["TcpRetransSegs"] > 0
        });
        let rules = pair.run(Side::Server, &["nft", "list", "table", "inet", "nwdrop"]);
        pair.nft(Side::Server, "delete table inet nwdrop");
        assert!(
            retransmitted,
            "no retransmission within 10 s; rules:\n{rules}"
        );
        assert!(
            rules.contains("counter packets") && !rules.contains("counter packets 0 "),
            "{rules}"
        );
        assert_eq!(pair.nstat(Side::Client)["TcpActiveOpens"], 1);
        // Without the rule the data gets through and everything completes.
        assert!(
            sender.wait(30).success(),
            "send-slow: {:?}",
            sender.stdout_lines()
        );
        let sent = sender.stdout_lines();
        let sent: Vec<&str> = sent
            .iter()
            .find(|l| l.starts_with("SENT "))
            .expect("SENT line")
            .split(' ')
            .collect();
        assert_eq!(sent[2..4], ["20000", "0"]);
        assert!(
            server.wait(10).success(),
            "server: {:?}",
            server.stdout_lines()
        );
    }

    #[test]
    fn churn_and_serve_forever() {
        if !require_root("churn_and_serve_forever") {
            return;
        }
        let drive = tcpdrive();
        let pair = NetPair::new();
        let addr = format!("{}:{}", pair.server_v4(), unique_port());
        let mut server =
            ReadyChild::spawn(pair.exec(Side::Server, &drive, &["serve-forever", &addr]));
        let out = output_with_timeout(
            pair.exec(
                Side::Client,
                &drive,
                &["churn", &addr, "--count", "200", "--parallel", "4"],
            ),
            60,
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = stdout(&out);
        let done = find_line(&text, "DONE").unwrap();
        assert_eq!(done[2..4], ["200", "0"]);
        assert!(eventually(Duration::from_secs(5), || pair
            .nstat(Side::Server)["TcpPassiveOpens"]
            == 200));
        assert_eq!(pair.nstat(Side::Client)["TcpActiveOpens"], 200);
        server.kill();
    }

    #[test]
    fn counter_names_match_nstat() {
        if !require_root("counter_names_match_nstat") {
            return;
        }
        let pair = NetPair::new();
        // -a absolute, -z zeros too, -s do not touch nstat's history file. Read before ours:
        // some names (Icmp6OutType143, an MLD report) appear only once such a packet was sent.
        let theirs: std::collections::HashMap<String, u64> = pair
            .run(Side::Client, &["nstat", "-asz"])
            .lines()
            .filter_map(|l| {
                let mut f = l.split_whitespace();
                Some((f.next()?.to_string(), f.next()?.parse().ok()?))
            })
            .collect();
        let ours = pair.nstat(Side::Client);
        for key in [
            "TcpActiveOpens",
            "TcpPassiveOpens",
            "TcpAttemptFails",
            "TcpEstabResets",
            "TcpOutRsts",
            "TcpRetransSegs",
            "TcpExtTW",
            "TcpExtListenOverflows",
            "Ip6InReceives",
        ] {
            assert!(ours.contains_key(key) && theirs.contains_key(key), "{key}");
        }
        // We read every counter nstat prints, and a few more: the constants and gauges nstat
        // leaves out (TcpRtoMin, TcpCurrEstab, IpForwarding, ...). The TCP ones have the same
        // values (no TCP traffic here; IPv6 neighbour discovery / MLD may still be going on).
        for (k, v) in &theirs {
            assert!(ours.contains_key(k), "{k}");
            if k.starts_with("Tcp") {
                assert_eq!(ours.get(k), Some(v), "{k}");
            }
        }
    }

    #[test]
    fn drop_cleans_up_after_a_panic() {
        if !require_root("drop_cleans_up_after_a_panic") {
            return;
        }
        let drive = tcpdrive();
        let leaked = std::sync::Mutex::new(None);
        let names = std::sync::Mutex::new(None);
        let result = std::panic::catch_unwind(|| {
            let pair = NetPair::new();
            *names.lock().unwrap() =
                Some((pair.client_ns().to_string(), pair.server_ns().to_string()));
            let addr = format!("{}:{}", pair.server_v4(), unique_port());
            // A plain Child: nothing but the NetPair's drop stops this server.
            let (child, _pid) =
                spawn_ready(pair.exec(Side::Server, &drive, &["serve-forever", &addr]));
            *leaked.lock().unwrap() = Some(child);
            panic!("test failure while a server runs");
        });
        assert!(result.is_err());
        let mut child = leaked.lock().unwrap().take().expect("server started");
        let status = wait_with_timeout(&mut child, 5);
        assert!(!status.success(), "server was killed: {status}");
        assert_gone(names.lock().unwrap().take().unwrap());
    }

    #[test]
    fn bad_arguments_exit_2() {
        // Needs no root: only argument parsing.
        let drive = tcpdrive();
        for args in [
            &[][..],
            &["serve"],
            &["serve", "nonsense"],
            &["connect", "10.0.0.1:1", "--bogus", "1"],
            &["churn", "10.0.0.1:1"],
        ] {
            let mut cmd = Command::new(&drive);
            cmd.args(args);
            let out = output_with_timeout(cmd, 10);
            assert_eq!(out.status.code(), Some(2), "{args:?}");
            assert!(String::from_utf8_lossy(&out.stderr).contains("usage:"));
        }
    }

    #[test]
    fn parse_counters_names() {
        let text = "Tcp: RtoAlgorithm MaxConn ActiveOpens\nTcp: 1 -1 7\n\
                    TcpExt: TW ListenOverflows\nTcpExt: 3 4\nIp6InReceives                   \t9\n";
        let m = parse_counters(text);
        assert_eq!(m["TcpActiveOpens"], 7);
        assert_eq!(m["TcpRtoAlgorithm"], 1);
        assert!(!m.contains_key("TcpMaxConn"));
        assert_eq!(m["TcpExtTW"], 3);
        assert_eq!(m["TcpExtListenOverflows"], 4);
        assert_eq!(m["Ip6InReceives"], 9);
    }

    #[test]
    fn ports_are_unique() {
        let a: Vec<u16> = (0..100).map(|_| unique_port()).collect();
        let set: std::collections::HashSet<_> = a.iter().collect();
        assert_eq!(set.len(), a.len());
        assert!(a.iter().all(|p| (20000..60000).contains(p)));
    }

    #[test]
    #[ignore = "builds netwatch (with its eBPF part); run explicitly"]
    fn netwatch_bin_builds() {
        let bin = netwatch_bin();
        assert!(bin.is_file(), "{}", bin.display());
    }
}
