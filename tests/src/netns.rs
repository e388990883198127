//! Two network namespaces joined by a veth pair: a private network per test, with the kernel's
//! own per-namespace TCP counters as an exact oracle.

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::child::{output_with_input, output_with_timeout};

/// Which end of a [`NetPair`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// The namespace that connects: `10.231.<n>.1`, `fd31:<n>::1`.
    Client,
    /// The namespace that listens: `10.231.<n>.2`, `fd31:<n>::2`.
    Server,
}

/// Per-process counter making every [`NetPair`] of a process distinct (tests run in parallel
/// threads); the pid in the names makes them distinct across processes.
static NEXT_PAIR: AtomicU32 = AtomicU32::new(0);

/// Bound on each `ip`/`nft`/`cat` command the harness runs itself.
const CMD_TIMEOUT_SECS: u64 = 30;

/// Two fresh network namespaces (`nwt-<pid>-<n>-c` and `nwt-<pid>-<n>-s`) joined by a veth pair
/// (`nwc0` in the client namespace, `nws0` in the server namespace), with
/// `10.231.<n%256>.1/24` + `fd31:<n%256>::1/64` on the client side and `.2` / `::2` on the
/// server side, IPv6 added with `nodad` so the addresses are usable at once, `lo` up in both.
///
/// Why: traffic in a fresh namespace is only the test's own, so the namespace's kernel MIB
/// counters ([`NetPair::nstat`]) are an exact oracle for what a tracer must have seen, and
/// packet-drop rules ([`NetPair::nft`]) affect nothing else on the machine.
///
/// Created by [`NetPair::new`]; on drop (also while a test panics) every process still inside
/// either namespace is SIGKILLed and both namespaces are deleted, which removes the veth pair.
#[derive(Debug)]
pub struct NetPair {
    n: u32,
    client_ns: String,
    server_ns: String,
    /// Namespaces created so far, so a half-built pair is cleaned up too.
    created: Vec<String>,
}

impl NetPair {
    /// Veth interface name inside the client namespace.
    pub const CLIENT_IF: &'static str = "nwc0";
    /// Veth interface name inside the server namespace.
    pub const SERVER_IF: &'static str = "nws0";

    /// Creates the namespaces, the veth pair and the addresses, and waits (bounded, 5 s) until
    /// both veth ends are operationally up. Panics with `ip`'s stderr on any failure (needs
    /// root; call [`crate::require_root`] first); whatever was created is removed again.
    pub fn new() -> NetPair {
        let n = NEXT_PAIR.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        let mut pair = NetPair {
            n,
            client_ns: format!("nwt-{pid}-{n}-c"),
            server_ns: format!("nwt-{pid}-{n}-s"),
            created: Vec::new(),
        };
        for ns in [pair.client_ns.clone(), pair.server_ns.clone()] {
            ip(&["netns", "add", &ns]);
            pair.created.push(ns.clone());
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
        }
        let (c, s) = (pair.client_ns.clone(), pair.server_ns.clone());
        // Created directly inside the namespaces: fixed names cannot clash with the host's
        // interfaces or with another test's pair.
        ip(&[
            "-n",
            &c,
            "link",
            "add",
            Self::CLIENT_IF,
            "type",
            "veth",
            "peer",
            "name",
            Self::SERVER_IF,
            "netns",
            &s,
        ]);
        for side in [Side::Client, Side::Server] {
            let (ns, ifname) = (pair.ns(side).to_string(), pair.if_name(side));
            let v4 = format!("{}/24", pair.v4(side));
            let v6 = format!("{}/64", pair.v6(side));
            ip(&["-n", &ns, "addr", "add", &v4, "dev", ifname]);
            ip(&["-n", &ns, "-6", "addr", "add", &v6, "dev", ifname, "nodad"]);
            ip(&["-n", &ns, "link", "set", ifname, "up"]);
        }
        for side in [Side::Client, Side::Server] {
            pair.wait_link_up(side, Duration::from_secs(5));
        }
        pair
    }

    fn wait_link_up(&self, side: Side, bound: Duration) {
        let deadline = Instant::now() + bound;
        loop {
            let out = ip(&[
                "-n",
                self.ns(side),
                "-j",
                "link",
                "show",
                "dev",
                self.if_name(side),
            ]);
            let up = serde_json::from_str::<serde_json::Value>(&out)
                .ok()
                .and_then(|v| v.get(0)?.get("operstate")?.as_str().map(|s| s == "UP"))
                .unwrap_or(false);
            if up {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "{} in {} not UP within {bound:?}: {out}",
                    self.if_name(side),
                    self.ns(side)
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The pair's sequence number in this process (its subnet is `n % 256`).
    pub fn n(&self) -> u32 {
        self.n
    }

    fn idx(&self) -> u8 {
        (self.n % 256) as u8
    }

    /// Name of the client namespace (`nwt-<pid>-<n>-c`), for `ip netns exec` and the like.
    pub fn client_ns(&self) -> &str {
        &self.client_ns
    }

    /// Name of the server namespace (`nwt-<pid>-<n>-s`).
    pub fn server_ns(&self) -> &str {
        &self.server_ns
    }

    /// Namespace name of `side`.
    pub fn ns(&self, side: Side) -> &str {
        match side {
            Side::Client => &self.client_ns,
            Side::Server => &self.server_ns,
        }
    }

    /// The inode of `side`'s network namespace: what `/proc/<pid>/ns/net` shows as `net:[N]`
    /// for a process in it, and what netwatch writes as `netns` on every event and record of a
    /// socket there. Why: unlike the addresses (every process's first pair uses the same
    /// /24), it tells this pair's sockets from another test process's. Read with stat(2) on
    /// `/run/netns/<name>`, the namespace file `ip netns add` mounted there.
    pub fn netns_inode(&self, side: Side) -> u64 {
        let path = format!("/run/netns/{}", self.ns(side));
        std::os::unix::fs::MetadataExt::ino(
            &std::fs::metadata(&path).unwrap_or_else(|e| panic!("{path}: {e}")),
        )
    }

    /// Veth interface name of `side` inside its namespace.
    pub fn if_name(&self, side: Side) -> &'static str {
        match side {
            Side::Client => Self::CLIENT_IF,
            Side::Server => Self::SERVER_IF,
        }
    }

    /// `10.231.<n%256>.1`.
    pub fn client_v4(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 231, self.idx(), 1)
    }

    /// `10.231.<n%256>.2`.
    pub fn server_v4(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 231, self.idx(), 2)
    }

    /// `fd31:<n%256 in hex>::1`.
    pub fn client_v6(&self) -> Ipv6Addr {
        Ipv6Addr::new(0xfd31, self.idx() as u16, 0, 0, 0, 0, 0, 1)
    }

    /// `fd31:<n%256 in hex>::2`.
    pub fn server_v6(&self) -> Ipv6Addr {
        Ipv6Addr::new(0xfd31, self.idx() as u16, 0, 0, 0, 0, 0, 2)
    }

    /// IPv4 address of `side`.
    pub fn v4(&self, side: Side) -> Ipv4Addr {
        match side {
            Side::Client => self.client_v4(),
            Side::Server => self.server_v4(),
        }
    }

    /// IPv6 address of `side`.
    pub fn v6(&self, side: Side) -> Ipv6Addr {
        match side {
            Side::Client => self.client_v6(),
            Side::Server => self.server_v6(),
        }
    }

    /// A `Command` running `ip netns exec <ns> <program> <args...>`. `ip` execs the program
    /// after entering the namespace, so the spawned `Child`'s pid IS the program's pid: the pid a
    /// tracer must attribute the sockets to. Stdio is left to the caller.
    pub fn exec(&self, side: Side, program: &Path, args: &[&str]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.arg("netns")
            .arg("exec")
            .arg(self.ns(side))
            .arg(program)
            .args(args);
        cmd
    }

    /// Runs a one-off command (`args[0]` is the program) in `side`'s namespace, bounded to 30 s,
    /// and returns its stdout. Panics with its stderr if it fails. For `ss`, `ip`, `sysctl`, ...
    pub fn run(&self, side: Side, args: &[&str]) -> String {
        assert!(!args.is_empty(), "NetPair::run needs a program");
        let cmd = self.exec(side, Path::new(args[0]), &args[1..]);
        let out = output_with_timeout(cmd, CMD_TIMEOUT_SECS);
        if !out.status.success() {
            panic!(
                "`{args:?}` in {} failed ({}): {}",
                self.ns(side),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The namespace's kernel MIB counters, absolute values, keyed exactly as `nstat -az` names
    /// them: `TcpActiveOpens`, `TcpPassiveOpens`, `TcpAttemptFails`, `TcpEstabResets`,
    /// `TcpOutRsts`, `TcpRetransSegs`, `TcpCurrEstab`, `TcpExtTW`, `TcpExtListenOverflows`,
    /// `TcpExtListenDrops`, `IpExtInOctets`, `Ip6InReceives`, `UdpInDatagrams`, ...
    ///
    /// Read from `/proc/net/snmp`, `/proc/net/netstat` and `/proc/net/snmp6` with
    /// `ip netns exec <ns> cat ...` (`/proc/net` follows the reader's namespace), not with
    /// `nstat`: nstat keeps a history file per user (shared by all namespaces) and by default
    /// reports increments since its last run, which is wrong for an oracle. See
    /// [`parse_counters`] for the naming; [`counter_delta`] for before/after differences.
    pub fn nstat(&self, side: Side) -> HashMap<String, u64> {
        parse_counters(&self.run(
            side,
            &[
                "cat",
                "/proc/net/snmp",
                "/proc/net/netstat",
                "/proc/net/snmp6",
            ],
        ))
    }

    /// Loads an nftables ruleset into `side`'s namespace with `nft -f -` (bounded to 30 s);
    /// panics with nft's stderr and the ruleset if nft rejects it. The ruleset is plain nft
    /// syntax and can also delete things (`delete table inet t`). See [`drop_data_ruleset`].
    pub fn nft(&self, side: Side, ruleset: &str) {
        let cmd = self.exec(side, Path::new("nft"), &["-f", "-"]);
        let out = output_with_input(cmd, Some(ruleset.as_bytes()), CMD_TIMEOUT_SECS);
        let (status, err) = (out.status, out.stderr);
        if !status.success() {
            panic!(
                "nft in {} failed ({status}): {}\nruleset:\n{ruleset}",
                self.ns(side),
                String::from_utf8_lossy(&err)
            );
        }
    }
}

impl Default for NetPair {
    /// Same as [`NetPair::new`].
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for NetPair {
    /// Best effort, never panics (a panic while unwinding would abort the test binary).
    fn drop(&mut self) {
        for ns in self.created.drain(..).rev() {
            // Processes still in the namespace (a server of a test that panicked) would keep
            // the namespace, and so the veth pair, alive after `ip netns del`.
            if let Ok(out) = Command::new("ip")
                .args(["netns", "pids", &ns])
                .stderr(Stdio::null())
                .output()
            {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    if let Ok(pid) = pid.parse::<i32>()
                        && pid > 1
                    {
                        // SAFETY: kill(2) with a pid of a process in our own namespace.
                        unsafe { libc::kill(pid, libc::SIGKILL) };
                    }
                }
            }
            match Command::new("ip").args(["netns", "del", &ns]).output() {
                Ok(o) if o.status.success() => {}
                Ok(o) => eprintln!(
                    "netwatch-tests: ip netns del {ns}: {}",
                    String::from_utf8_lossy(&o.stderr)
                ),
                Err(e) => eprintln!("netwatch-tests: ip netns del {ns}: {e}"),
            }
        }
    }
}

/// Parses the text of `/proc/net/snmp`, `/proc/net/netstat` (pairs of `Prefix: names` /
/// `Prefix: values` lines, giving `<Prefix><Name>`, e.g. `Tcp:`+`ActiveOpens` ->
/// `TcpActiveOpens`, `TcpExt:`+`TW` -> `TcpExtTW`) and `/proc/net/snmp6` (`Name value` lines,
/// names used as they are, e.g. `Ip6InReceives`), concatenated in any order. These are the
/// names `nstat` prints. Values that are not unsigned integers are left out (`TcpMaxConn` is
/// `-1`).
pub fn parse_counters(text: &str) -> HashMap<String, u64> {
    let mut out = HashMap::new();
    let lines: Vec<&str> = text.lines().collect();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        if let Some((prefix, names)) = line.split_once(':')
            && !prefix.is_empty()
            && !prefix.contains(char::is_whitespace)
        {
            if let Some(next) = lines.get(i + 1)
                && let Some((p2, values)) = next.split_once(':')
                && p2 == prefix
            {
                for (name, value) in names.split_whitespace().zip(values.split_whitespace()) {
                    if let Ok(v) = value.parse::<u64>() {
                        out.insert(format!("{prefix}{name}"), v);
                    }
                }
                i += 2;
            } else {
                i += 1;
            }
            continue;
        }
        let mut fields = line.split_whitespace();
        if let (Some(name), Some(value), None) = (fields.next(), fields.next(), fields.next())
            && let Ok(v) = value.parse::<u64>()
        {
            out.insert(name.to_string(), v);
        }
        i += 1;
    }
    out
}

/// `after - before` for every counter in `after` (missing in `before` counts as 0; saturating),
/// for tests that read counters before and after some traffic.
pub fn counter_delta(
    before: &HashMap<String, u64>,
    after: &HashMap<String, u64>,
) -> HashMap<String, u64> {
    after
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                v.saturating_sub(before.get(k).copied().unwrap_or(0)),
            )
        })
        .collect()
}

/// An nftables ruleset (for [`NetPair::nft`], on the receiving side) creating table
/// `inet <table>` that drops every incoming TCP packet to `dport` longer than 200 bytes
/// (`meta length`, whole IP packet): segments carrying data are dropped, while the handshake
/// (SYN at most 80 bytes with IPv6), pure ACKs and FINs pass, so connections establish and
/// the sender retransmits. Works for IPv4 and IPv6. Remove it with
/// `pair.nft(side, &format!("delete table inet {table}"))` to let the data through.
pub fn drop_data_ruleset(table: &str, dport: u16) -> String {
    format!(
        "table inet {table} {{\n  chain input {{\n    type filter hook input priority 0; policy accept;\n    \
         meta l4proto tcp tcp dport {dport} meta length > 200 counter drop\n  }}\n}}\n"
    )
}

/// Runs `ip <args>` (bounded), returning stdout; panics with stderr on failure.
fn ip(args: &[&str]) -> String {
    let mut cmd = Command::new("ip");
    cmd.args(args);
    let out = output_with_timeout(cmd, CMD_TIMEOUT_SECS);
    if !out.status.success() {
        panic!(
            "`ip {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}
