//! Stuck sockets grouped the way a leak is fixed: one process, one handler (or, where no
//! application frame is known, one code path), one kind.
//!
//! The handler is the innermost application frame (`model::frames`) of the socket's first
//! send or receive, else of its opening: in an event loop or a pool the stacks around it
//! differ from socket to socket (which poll iteration, which worker), but the handler that
//! forgets to close them is one, and so is the group.
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};

use serde::Serialize;

use super::merge::Stuck;
use super::{Opener, StuckKind};
use crate::model::event::{Endpoint, UseCall};
use crate::model::frames::Headline;
use crate::model::names::Container;

/// What `netwatch leaks` prints at one moment (one JSON line with `--json`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Snapshot {
    /// Wall-clock time of the snapshot (RFC 3339, UTC).
    pub at: String,
    /// How long netwatch has watched the stream (0 for `--once`).
    pub watched_ms: f64,
    /// Sockets stuck for less than this are not shown.
    pub min_age_ms: f64,
    /// Biggest first.
    pub groups: Vec<Group>,
    /// Namespaces that could not be listed, and other reasons the picture may be partial.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// Sockets of one kind, held by one process, opened by one code path.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Group {
    pub kind: StuckKind,
    pub pid: Option<u32>,
    pub comm: Option<String>,
    /// The owner's cgroup path: its container or service.
    pub cgroup: Option<String>,
    /// The owner's container (`container_id`, `container`, `pod`, `namespace`), when it runs
    /// in one: named by the cgroup path and the runtime.
    #[serde(flatten)]
    pub container: Option<Container>,
    /// Inode of the sockets' network namespace, when the kernel listed them.
    pub netns: Option<u64>,
    pub opened_by: Option<Opener>,
    /// Whether netwatch saw the code path that opened them (it must have been running when
    /// connect() or accept() returned, with stack capture on).
    pub code_path_seen: bool,
    /// Symbolized user stack, innermost first; empty when not seen.
    pub stack: Vec<String>,
    /// The application frame the group is known by: the handler that leaks them.
    pub leaked_by: Option<Headline>,
    /// Without `leaked_by` but with a code path: why no application frame is shown.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leaked_by_unknown: Option<String>,
    /// Whether netwatch saw the first send or receive on them (code-path modes, Linux 6.3+).
    pub first_use_seen: bool,
    /// Which call that was.
    pub first_used_by: Option<UseCall>,
    /// Its symbolized user stack, innermost first (of the group's oldest socket when the
    /// group is made by its handler); empty when not seen.
    pub first_used_at: Vec<String>,
    pub sockets: usize,
    pub oldest_ms: f64,
    /// The oldest age is a lower bound (stuck before netwatch saw it).
    pub oldest_at_least: bool,
    /// Remote endpoints, most sockets first; many ports of one address fold to `addr:*`, many
    /// addresses of one /24 to `a.b.c.0/24:port`.
    pub peers: Vec<Peer>,
    /// The owner's fds holding these sockets, ascending.
    pub fds: Vec<u32>,
    /// Every socket of the group, oldest first.
    pub detail: Vec<Detail>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Peer {
    pub peer: String,
    pub sockets: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Detail {
    pub local: String,
    pub remote: String,
    pub age_ms: f64,
    pub at_least: bool,
    pub fds: Vec<u32>,
}

/// This many ports of one address print as `addr:*`; this many addresses of one IPv4 /24
/// with one port print as the /24.
const COLLAPSE_AT: usize = 3;

type Key = (
    StuckKind,
    Option<u32>,
    Option<String>,
    Option<String>,
    Option<u64>,
    Option<Opener>,
    PathKey,
);

/// What makes one code path for grouping: the handler where one is known, else the stacks.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum PathKey {
    Handler(Headline),
    Stacks(Option<Vec<String>>, Option<Vec<String>>),
}

impl PathKey {
    fn of(s: &Stuck) -> PathKey {
        match leaked_by(s) {
            Some(h) => PathKey::Handler(h.clone()),
            None => PathKey::Stacks(
                s.stack.as_ref().map(|p| p.frames.clone()),
                s.used.as_ref().map(|(_, p)| p.frames.clone()),
            ),
        }
    }
}

/// The handler of a stuck socket: the application frame of its first use, else of its
/// opening.
fn leaked_by(s: &Stuck) -> Option<&Headline> {
    s.used
        .as_ref()
        .and_then(|(_, p)| p.headline.as_ref())
        .or_else(|| s.stack.as_ref().and_then(|p| p.headline.as_ref()))
}

/// Groups the stuck sockets at least `min_age_ms` old, biggest group first (then oldest).
pub fn groups(stuck: Vec<Stuck>, min_age_ms: f64) -> Vec<Group> {
    let mut by_key: HashMap<Key, Vec<Stuck>> = HashMap::new();
    for s in stuck.into_iter().filter(|s| s.age_ms >= min_age_ms) {
        let key = (
            s.kind,
            s.owner.as_ref().map(|o| o.pid),
            s.owner.as_ref().map(|o| o.comm.clone()),
            s.owner.as_ref().and_then(|o| o.cgroup.clone()),
            s.netns,
            s.opened_by,
            PathKey::of(&s),
        );
        by_key.entry(key).or_default().push(s);
    }
    let mut groups: Vec<Group> = by_key.into_iter().map(|(k, v)| group(k, v)).collect();
    groups.sort_by(|a, b| {
        b.sockets
            .cmp(&a.sockets)
            .then(b.oldest_ms.total_cmp(&a.oldest_ms))
            .then(a.pid.cmp(&b.pid))
            .then(a.kind.cmp(&b.kind))
    });
    groups
}

fn group(key: Key, mut members: Vec<Stuck>) -> Group {
    let (kind, pid, comm, cgroup, netns, opened_by, _) = key;
    members.sort_by(|a, b| b.age_ms.total_cmp(&a.age_ms).then(a.local.cmp(&b.local)));
    let oldest = &members[0];
    // The stacks shown: the oldest member's (all members share them unless the group is
    // made by its handler).
    let stack = oldest.stack.as_ref();
    let used = oldest.used.as_ref();
    let leaked = leaked_by(oldest).cloned();
    let why_not = match (&leaked, used, stack) {
        (Some(_), _, _) => None,
        (None, Some((_, p)), _) | (None, None, Some(p)) => p.why_not.clone(),
        (None, None, None) => None,
    };
    let mut fds: Vec<u32> = members.iter().flat_map(|m| m.fds.iter().copied()).collect();
    fds.sort_unstable();
    fds.dedup();
    let container = cgroup
        .as_deref()
        .and_then(crate::host::containers::container_of_path)
        .map(|c| c.as_ref().clone());
    Group {
        kind,
        pid,
        comm,
        cgroup,
        container,
        netns,
        opened_by,
        code_path_seen: stack.is_some(),
        stack: stack.map(|p| p.frames.clone()).unwrap_or_default(),
        leaked_by: leaked,
        leaked_by_unknown: why_not,
        first_use_seen: used.is_some(),
        first_used_by: used.map(|(call, _)| *call),
        first_used_at: used.map(|(_, p)| p.frames.clone()).unwrap_or_default(),
        sockets: members.len(),
        oldest_ms: oldest.age_ms,
        oldest_at_least: oldest.at_least,
        peers: peers(members.iter().map(|m| m.remote)),
        fds,
        detail: members
            .iter()
            .map(|m| Detail {
                local: Endpoint(m.local.ip(), m.local.port()).to_string(),
                remote: Endpoint(m.remote.ip(), m.remote.port()).to_string(),
                age_ms: m.age_ms,
                at_least: m.at_least,
                fds: m.fds.clone(),
            })
            .collect(),
    }
}

/// Remote endpoints with their socket counts, most first, folded so that a few lines say
/// where the sockets go: an address seen on [`COLLAPSE_AT`] or more ports (a client's
/// ephemeral ports, on a server's sockets) prints as `addr:*`; [`COLLAPSE_AT`] or more IPv4
/// addresses of one /24 with the same port (or all `*`) print as `a.b.c.0/24:port`.
fn peers(remotes: impl Iterator<Item = SocketAddr>) -> Vec<Peer> {
    let mut counts: BTreeMap<SocketAddr, usize> = BTreeMap::new();
    for r in remotes {
        *counts.entry(r).or_default() += 1;
    }
    // Stage 1: many ports of one address -> `addr:*`.
    let mut by_ip: BTreeMap<IpAddr, Vec<(u16, usize)>> = BTreeMap::new();
    for (a, n) in counts {
        by_ip.entry(a.ip()).or_default().push((a.port(), n));
    }
    let mut entries: Vec<(IpAddr, Option<u16>, usize)> = Vec::new();
    for (ip, ports) in by_ip {
        if ports.len() >= COLLAPSE_AT {
            entries.push((ip, None, ports.iter().map(|(_, n)| n).sum()));
        } else {
            entries.extend(ports.into_iter().map(|(p, n)| (ip, Some(p), n)));
        }
    }
    // Stage 2: many IPv4 addresses of one /24 with one port (or `*`) -> `a.b.c.0/24:port`.
    let mut nets: BTreeMap<([u8; 3], Option<u16>), Vec<usize>> = BTreeMap::new();
    for (i, (ip, port, _)) in entries.iter().enumerate() {
        if let IpAddr::V4(v4) = ip {
            let o = v4.octets();
            nets.entry(([o[0], o[1], o[2]], *port)).or_default().push(i);
        }
    }
    let mut out: Vec<Peer> = Vec::new();
    let mut folded = vec![false; entries.len()];
    for ((net, port), members) in nets {
        if members.len() >= COLLAPSE_AT {
            out.push(Peer {
                peer: format!("{}.{}.{}.0/24:{}", net[0], net[1], net[2], port_text(port)),
                sockets: members.iter().map(|&i| entries[i].2).sum(),
            });
            for i in members {
                folded[i] = true;
            }
        }
    }
    out.extend(
        entries
            .iter()
            .zip(folded)
            .filter(|(_, folded)| !folded)
            .map(|((ip, port, n), _)| Peer {
                peer: Endpoint(*ip, port_text(*port)).to_string(),
                sockets: *n,
            }),
    );
    out.sort_by(|a, b| b.sockets.cmp(&a.sockets).then(a.peer.cmp(&b.peer)));
    out
}

fn port_text(port: Option<u16>) -> String {
    port.map_or_else(|| "*".to_string(), |p| p.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::leaks::merge::Owner;
    use crate::host::stacks::CodePath;
    use std::sync::Arc;

    fn stuck(pid: u32, remote: &str, age_ms: f64, fd: u32, stack: Option<&str>) -> Stuck {
        Stuck {
            kind: StuckKind::CloseWait,
            local: "10.0.0.1:80".parse().unwrap(),
            remote: remote.parse().unwrap(),
            netns: Some(1),
            age_ms,
            at_least: false,
            owner: Some(Owner {
                pid,
                comm: format!("p{pid}"),
                cgroup: None,
            }),
            fds: vec![fd],
            opened_by: Some(Opener::Accept),
            stack: stack.map(|f| {
                Arc::new(CodePath {
                    frames: vec![f.to_string()],
                    ..CodePath::default()
                })
            }),
            used: None,
        }
    }

    #[test]
    fn groups_by_process_and_code_path_biggest_first_and_drops_the_young() {
        let g = groups(
            vec![
                stuck(1, "10.0.3.1:443", 5000.0, 7, Some("a")),
                stuck(1, "10.0.3.2:443", 9000.0, 9, Some("a")),
                stuck(1, "10.0.3.3:443", 100.0, 11, Some("a")), // too young
                stuck(1, "10.0.4.9:8080", 3000.0, 12, Some("b")),
                stuck(2, "10.0.4.9:8080", 60000.0, 4, None),
            ],
            1000.0,
        );
        let shape: Vec<_> = g
            .iter()
            .map(|g| (g.pid, g.sockets, g.code_path_seen, g.stack.clone()))
            .collect();
        assert_eq!(
            shape,
            vec![
                (Some(1), 2, true, vec!["a".to_string()]),
                (Some(2), 1, false, vec![]),
                (Some(1), 1, true, vec!["b".to_string()]),
            ]
        );
        assert_eq!(g[0].oldest_ms, 9000.0);
        assert_eq!(g[0].fds, vec![7, 9]);
        assert_eq!(g[0].detail[0].remote, "10.0.3.2:443");
    }

    /// A code path through an event loop: different loop frames each time, one handler.
    fn through_loop(iteration: usize, handler: Option<&str>) -> Arc<CodePath> {
        Arc::new(CodePath {
            frames: vec![format!("uv__io_poll+{iteration} (node)")],
            headline: handler.map(|h| Headline {
                function: h.into(),
                location: Some("server.js:12".into()),
            }),
            why_not: handler
                .is_none()
                .then(|| "no application frame".to_string()),
        })
    }

    #[test]
    fn sockets_of_one_handler_make_one_group_whatever_the_loop_did() {
        let mut members: Vec<Stuck> = (0..1000)
            .map(|i| {
                let mut s = stuck(
                    1,
                    &format!("10.0.3.1:{}", 10_000 + i),
                    5000.0,
                    7 + i as u32,
                    None,
                );
                s.stack = Some(through_loop(i % 7, None));
                s.used = Some((UseCall::Send, through_loop(i % 5, Some("handleRequest"))));
                s
            })
            .collect();
        // Another handler of the same process, and a socket with no application frame at all.
        let mut other = stuck(1, "10.0.3.9:1", 9000.0, 3, None);
        other.used = Some((UseCall::Recv, through_loop(1, Some("pollFeed"))));
        let mut unknown = stuck(1, "10.0.3.9:2", 9500.0, 4, None);
        unknown.stack = Some(through_loop(3, None));
        members.extend([other, unknown]);
        let g = groups(members, 0.0);
        let shape: Vec<_> = g
            .iter()
            .map(|g| {
                (
                    g.sockets,
                    g.leaked_by.as_ref().map(|h| h.function.as_str()),
                    g.first_used_by,
                    g.leaked_by_unknown.is_some(),
                )
            })
            .collect();
        assert_eq!(
            shape,
            vec![
                (1000, Some("handleRequest"), Some(UseCall::Send), false),
                (1, None, None, true),
                (1, Some("pollFeed"), Some(UseCall::Recv), false),
            ]
        );
        assert!(g[0].first_use_seen && g[0].code_path_seen);
        assert_eq!(g[0].first_used_at.len(), 1);
    }

    #[test]
    fn peers_collapse_a_busy_slash_24() {
        let remotes = [
            "10.0.3.1:443",
            "10.0.3.2:443",
            "10.0.3.2:443",
            "10.0.3.9:443",
            "10.0.4.9:8080",
            "10.0.3.5:80",
        ]
        .map(|r| r.parse().unwrap());
        let p = peers(remotes.into_iter());
        let got: Vec<_> = p.iter().map(|p| (p.peer.as_str(), p.sockets)).collect();
        assert_eq!(
            got,
            vec![
                ("10.0.3.0/24:443", 4),
                ("10.0.3.5:80", 1),
                ("10.0.4.9:8080", 1)
            ]
        );
        let v6 = peers(["[fd00::1]:443".parse().unwrap()].into_iter());
        assert_eq!(v6[0].peer, "[fd00::1]:443");
    }

    #[test]
    fn peers_fold_a_clients_ephemeral_ports_then_its_neighbours() {
        let remotes = [
            "10.0.3.1:40001",
            "10.0.3.1:40002",
            "10.0.3.1:40003",
            "10.0.3.2:50001",
            "10.0.3.2:50002",
            "10.0.3.2:50003",
            "10.0.3.2:50004",
            "10.0.3.3:1",
            "10.0.3.3:2",
            "10.0.3.3:3",
            "[fd00::1]:1",
            "[fd00::1]:2",
            "[fd00::1]:3",
            "10.0.9.9:4",
        ]
        .map(|r| r.parse().unwrap());
        let p = peers(remotes.into_iter());
        let got: Vec<_> = p.iter().map(|p| (p.peer.as_str(), p.sockets)).collect();
        assert_eq!(
            got,
            vec![("10.0.3.0/24:*", 10), ("[fd00::1]:*", 3), ("10.0.9.9:4", 1)]
        );
    }
}
