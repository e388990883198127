//! Network namespaces the bench creates for its traffic, and deletes however it ends.
//!
//! Why namespaces even for loopback: a private namespace has its own TIME_WAIT table, port
//! range and sysctls, so tens of thousands of connections per run neither run out of ports nor
//! disturb (or get disturbed by) whatever else runs on the machine; the traffic still takes the
//! kernel's ordinary loopback path, and the tracers, which see every namespace, see it all.
//!
//! Names are `nwb-<xtask pid>-<role>`: a later bench deletes what a killed one left behind,
//! and never touches a namespace of a bench that is still running.

use std::{path::Path, process::Command};

use anyhow::{Context as _, Result};

use super::proc::pid_alive;
use crate::sys::{self, command, show};

/// The private addresses of the veth pair (client, server), only ever inside our namespaces.
pub const VETH_CLIENT: &str = "10.232.0.1";
pub const VETH_SERVER: &str = "10.232.0.2";

const PREFIX: &str = "nwb-";

/// Per-namespace settings so that each run can open tens of thousands of connections:
/// - `tcp_tw_reuse=1`: the side that closes first keeps each port in TIME_WAIT for 60 s;
///   this lets connect() reuse one after 1 s (loopback gets it by default, veth does not);
/// - a wider ephemeral port range, for the same reason;
/// - a TIME_WAIT table big enough for every run of the bench, so it never overflows mid-way
///   (that would change the workload and fill the kernel log).
const SYSCTLS: &[&str] = &[
    "net.ipv4.tcp_tw_reuse=1",
    "net.ipv4.ip_local_port_range=1024 65535",
    "net.ipv4.tcp_max_tw_buckets=2000000",
];

/// A network namespace that is deleted when dropped.
pub struct Netns {
    name: String,
}

impl Netns {
    /// `ip netns add NAME`, loopback up, [`SYSCTLS`] set.
    pub fn create(role: &str) -> Result<Netns> {
        let name = format!("{PREFIX}{}-{role}", std::process::id());
        sys::run(command("ip").args(["netns", "add", &name]))
            .with_context(|| format!("could not create network namespace {name}"))?;
        // From here on the guard deletes it, also if the next steps fail.
        let ns = Netns { name };
        sys::run(command("ip").args(["-n", &ns.name, "link", "set", "lo", "up"]))?;
        let mut sysctl = ns.exec(Path::new("sysctl"));
        sysctl.args(["-q", "-w"]).args(SYSCTLS);
        sys::run(&mut sysctl)?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `program` run inside this namespace (`ip netns exec` execs it: same pid).
    pub fn exec(&self, program: &Path) -> Command {
        let mut cmd = command("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let mut del = command("ip");
        del.args(["netns", "del", &self.name]);
        match del.output() {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!(
                "bench: warning: `{}` failed: {}",
                show(&del),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            Err(err) => eprintln!("bench: warning: could not run `{}`: {err}", show(&del)),
        }
    }
}

/// A veth pair between `client` and `server`, created inside them (nothing appears in the
/// caller's namespace), with [`VETH_CLIENT`] and [`VETH_SERVER`]; it goes with the namespaces.
pub fn veth_pair(client: &Netns, server: &Netns) -> Result<()> {
    let dev = "nwb0";
    sys::run(command("ip").args([
        "link",
        "add",
        "name",
        dev,
        "netns",
        client.name(),
        "type",
        "veth",
        "peer",
        "name",
        dev,
        "netns",
        server.name(),
    ]))
    .context("could not create the veth pair")?;
    for (ns, addr) in [(client, VETH_CLIENT), (server, VETH_SERVER)] {
        let cidr = format!("{addr}/24");
        sys::run(command("ip").args(["-n", ns.name(), "addr", "add", &cidr, "dev", dev]))?;
        sys::run(command("ip").args(["-n", ns.name(), "link", "set", dev, "up"]))?;
    }
    Ok(())
}

/// Deletes `nwb-<pid>-*` namespaces whose bench process is gone (killed with SIGKILL, or a
/// machine that rebooted with a persistent /run). Failures only warn: they do not stop a bench.
pub fn remove_stale() {
    let Ok(out) = command("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        // "nwb-1234-lo (id: 3)"
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(pid) = stale_owner(name) else {
            continue;
        };
        if pid_alive(pid) {
            continue;
        }
        eprintln!("bench: deleting namespace {name} left by an earlier bench (pid {pid})");
        let _ = command("ip").args(["netns", "del", name]).status();
    }
}

/// The pid in a bench namespace's name (`nwb-<pid>-<role>`).
fn stale_owner(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(PREFIX)?;
    let (pid, role) = rest.split_once('-')?;
    (!role.is_empty()).then_some(())?;
    pid.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_bench_namespaces_only() {
        assert_eq!(stale_owner("nwb-1234-lo"), Some(1234));
        assert_eq!(stale_owner("nwb-1234-"), None);
        assert_eq!(stale_owner("nw-1234-lo"), None);
        assert_eq!(stale_owner("nwb-x-lo"), None);
    }
}
